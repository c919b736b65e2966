"""A setting is obeyed or refused: bad values stop check/start/reload, nothing is ignored silently.

Real instances, the real ``postfix`` command: a bad value is fatal at ``postfix
check`` and ``postfix start`` and makes ``postfix reload`` refuse while the
running system keeps its configuration and delivers; an unimplemented parameter
is a warning at check, start and reload; a setting smtpd cannot honour makes
smtpd (only smtpd) refuse to run while local mail still flows.
"""

from __future__ import annotations

import os
import re
import signal
import socket

from harness import ME, Instance, wait_until

FATAL_SIZE = "bad numerical configuration: message_size_limit = 10M"
FATAL_STYLE = 'unknown mynetworks mask style value "subnett" in "subnett"'


def _main_cf_line(inst: Instance, text: str) -> int:
    lines = (inst.config_dir / "main.cf").read_text().splitlines()
    return lines.index(text) + 1


def _start_warns(inst: Instance, setting: str, warning: str) -> None:
    """Start inst; postfix start warns about main.cf's line ``setting``: ``warning``."""
    line = _main_cf_line(inst, setting)
    result = inst.postfix("start")
    inst.running = True
    assert (f"postfix/postfix-script: warning: {inst.config_dir}/main.cf, line {line}: "
            f"{warning}\n") in result.stderr, result.stderr


def test_check_and_start_name_file_line_and_parameter(new_instance) -> None:  # type: ignore[no-untyped-def]
    inst: Instance = new_instance()
    inst.set(message_size_limit="10M", mynetworks_style="subnett")
    main_cf = inst.config_dir / "main.cf"
    size_line = _main_cf_line(inst, "message_size_limit = 10M")
    style_line = _main_cf_line(inst, "mynetworks_style = subnett")
    for command in ("check", "start"):
        result = inst.postfix(command, check=False)
        assert result.returncode == 1, result.stderr
        assert (f"postfix/postfix-script: fatal: {main_cf}, line {size_line}: {FATAL_SIZE}\n"
                in result.stderr)
        assert (f"postfix/postfix-script: fatal: {main_cf}, line {style_line}: {FATAL_STYLE}\n"
                in result.stderr)
        assert "Traceback" not in result.stderr
    assert "starting the Postfix mail system" not in inst.log()
    assert inst.postfix("status", check=False).returncode == 1
    inst.wait_log(rf"postfix/postfix-script\[\d+\]: fatal: {re.escape(str(main_cf))}, line "
                  rf"{size_line}: {re.escape(FATAL_SIZE)}", count=2)


def test_reload_with_a_bad_value_is_refused_and_mail_keeps_flowing(new_instance) -> None:  # type: ignore[no-untyped-def]
    inst: Instance = new_instance(maildir=True)
    inst.start()
    first = inst.send("sender@example.org", f"{ME}@localhost", b"Subject: before\r\n\r\nhi\r\n")
    inst.wait_log(rf"{first}: to=<{ME}@localhost>.*status=sent")
    inst.set(message_size_limit="10M")
    line = _main_cf_line(inst, "message_size_limit = 10M")
    result = inst.postfix("reload", check=False)
    assert result.returncode == 1
    assert f"fatal: {inst.config_dir}/main.cf, line {line}: {FATAL_SIZE}" in result.stderr
    assert "refreshing the Postfix mail system" not in result.stderr
    # master was never told: no new generation, and mail still goes in over SMTP and out
    queue_id = inst.send("sender@example.org", f"{ME}@localhost", b"Subject: after\r\n\r\nstill here\r\n")
    inst.wait_log(rf"{queue_id}: to=<{ME}@localhost>.*status=sent")
    assert len(inst.wait_maildir(2)) == 2
    assert "reload -- version" not in inst.log()
    # SIGHUP straight to master (no postfix command): master checks too and keeps what it runs
    master_pid = int((inst.queue_dir / "pid" / "master.pid").read_text())
    os.kill(master_pid, signal.SIGHUP)
    inst.wait_log(rf"postfix/master\[{master_pid}\]: error: {re.escape(str(inst.config_dir))}/main.cf, "
                  rf"line {line}: {re.escape(FATAL_SIZE)} -- configuration not reloaded")
    third = inst.send("sender@example.org", f"{ME}@localhost", b"Subject: third\r\n\r\nyes\r\n")
    inst.wait_log(rf"{third}: to=<{ME}@localhost>.*status=sent")
    assert "reload -- version" not in inst.log()
    # Daemons started from now on run on what master checked, not on the bad file.
    running = (inst.queue_dir / "pid" / "running.main.cf").read_text()
    assert "10M" not in running and "message_size_limit" not in running
    for name, pids in inst.daemons().items():
        if name != "master":
            for pid in pids:
                os.kill(pid, signal.SIGTERM)
    wait_until(lambda: set(inst.daemons()) <= {"master", "qmgr", "pickup"}, 30,
               what="the children to exit")
    fourth = inst.send("sender@example.org", f"{ME}@localhost", b"Subject: cold\r\n\r\nyes\r\n")
    inst.wait_log(rf"{fourth}: to=<{ME}@localhost>.*status=sent")
    assert len(inst.wait_maildir(4)) == 4
    assert "bad numerical configuration" not in "".join(
        line for line in inst.log().splitlines(keepends=True) if "postfix-script" not in line
        and "configuration not reloaded" not in line)


def test_unimplemented_parameters_warn_at_check_start_and_reload(new_instance) -> None:  # type: ignore[no-untyped-def]
    inst: Instance = new_instance(maildir=True)
    inst.set(ipc_idle="10s", sun_mailtool_compatibility="yes")  # declared _todo; a Postfix name left out
    master_cf = inst.config_dir / "master.cf"
    master = master_cf.read_text()
    master, n = re.subn(r"(?m)^(pickup\s.*)$", r"\1\n  -o daemon_timeout=100s", master)
    assert n == 1
    master_cf.write_text(master)
    pickup_line = master.splitlines().index(next(x for x in master.splitlines()
                                                 if x.startswith("pickup"))) + 1
    line = _main_cf_line(inst, "ipc_idle = 10s")
    header_warning = (f"warning: {inst.config_dir}/main.cf, line {line}: parameter ipc_idle "
                      "is not implemented yet: ignored")
    bcc_warning = (f"warning: file {master_cf}: line {pickup_line}: parameter daemon_timeout is not "
                   "implemented yet: ignored")
    postfix_warning = (f"warning: {inst.config_dir}/main.cf, line "
                       f"{_main_cf_line(inst, 'sun_mailtool_compatibility = yes')}: parameter "
                       "sun_mailtool_compatibility is not implemented yet: ignored")
    for command in ("check", "start", "reload"):
        result = inst.postfix(command)
        if command == "start":
            inst.running = True
        assert f"postfix/postfix-script: {header_warning}\n" in result.stderr, (command, result.stderr)
        assert f"postfix/postfix-script: {postfix_warning}\n" in result.stderr, (command, result.stderr)
        assert f"postfix/postfix-script: {bcc_warning}\n" in result.stderr, (command, result.stderr)
    inst.wait_log(rf"postfix/postfix-script\[\d+\]: {re.escape(header_warning)}", count=3)
    # warnings do not stop anything: mail flows
    queue_id = inst.send("sender@example.org", f"{ME}@localhost", b"Subject: w\r\n\r\nbody\r\n")
    inst.wait_log(rf"{queue_id}: to=<{ME}@localhost>.*status=sent")



def test_misspelt_names_warn_at_check_start_and_reload(new_instance) -> None:  # type: ignore[no-untyped-def]
    """A main.cf or master.cf -o name that nothing knows reaches no code: check, start and
    reload say so, as Postfix's postconf does when postfix-script runs it."""
    inst: Instance = new_instance(maildir=True)
    inst.set(smtpd_tls_securty_level="encrypt")
    master_cf = inst.config_dir / "master.cf"
    master = master_cf.read_text()
    master, n = re.subn(rf"(?m)^(127\.0\.0\.1:{inst.port}\s+inet\s.*)$",
                        r"\1\n  -o smtpd_helo_requried=yes", master)
    assert n == 1
    master_cf.write_text(master)
    warnings = [f"warning: {inst.config_dir}/main.cf: unused parameter: "
                "smtpd_tls_securty_level=encrypt",
                f"warning: {master_cf}: unused parameter: smtpd_helo_requried=yes"]
    for command in ("check", "start", "reload"):
        result = inst.postfix(command)
        if command == "start":
            inst.running = True
        for warning in warnings:
            assert f"postfix/postfix-script: {warning}\n" in result.stderr, (command, result.stderr)
    queue_id = inst.send("sender@example.org", f"{ME}@localhost", b"Subject: w\r\n\r\nbody\r\n")
    inst.wait_log(rf"{queue_id}: to=<{ME}@localhost>.*status=sent")


def test_smtpd_refuses_milters_while_local_mail_is_delivered(new_instance) -> None:  # type: ignore[no-untyped-def]
    inst: Instance = new_instance(maildir=True)
    inst.set(smtpd_milters="inet:127.0.0.1:8891")
    _start_warns(inst, "smtpd_milters = inet:127.0.0.1:8891",
                 "smtpd_milters = inet:127.0.0.1:8891 is not supported yet: service smtpd will "
                 "refuse to run")
    # a client gets no banner: the connection is closed, promptly (not a silent wait)
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", inst.port), timeout=30) as s:
            s.settimeout(30)
            assert s.recv(512) == b""
    inst.wait_log(r"postfix/smtpd\[\d+\]: fatal: smtpd_milters = inet:127\.0\.0\.1:8891 is not "
                  r"supported yet: refusing to run")
    inst.wait_log(r"postfix/master\[\d+\]: warning: \S+smtpd: bad command startup -- throttling")
    # the rest of the system runs: sendmail mail is delivered locally
    result = inst.tool("sendmail", "-f", "root@localhost", f"{ME}@localhost",
                       input="Subject: local\n\nstill delivered\n")
    assert result.returncode == 0, result.stderr
    (delivered,) = inst.wait_maildir(1)
    assert b"still delivered" in delivered
    # master did not spin: smtpd tried once in this throttle period
    assert len(re.findall(r"smtpd\[\d+\]: fatal: smtpd_milters", inst.log())) == 1
    assert "Traceback" not in inst.log()


def test_local_takes_one_recipient_per_request_whatever_the_limit_says(new_instance) -> None:  # type: ignore[no-untyped-def]
    """local_destination_recipient_limit above 1 (legal in Postfix) is warned about and
    qmgr still hands local one recipient per request: both recipients are delivered."""
    inst: Instance = new_instance(maildir=True)
    inst.set(local_destination_recipient_limit="10")
    inst.write("etc/aliases", f"team: {ME}@localhost\n")
    inst.tool("newaliases", check=True)
    _start_warns(inst, "local_destination_recipient_limit = 10",
                 "parameter local_destination_recipient_limit: local delivers one recipient per "
                 "request: ignored")
    queue_id = inst.send("sender@example.org", [f"{ME}@localhost", "team@localhost"],
                         b"Subject: two\r\n\r\nbody\r\n")
    inst.wait_log(rf"{queue_id}: to=<{ME}@localhost>, relay=local, .*status=sent")
    inst.wait_log(rf"{queue_id}: to=<{ME}@localhost>, orig_to=<team@localhost>, relay=local, "
                  r".*status=sent")
    assert len(inst.wait_maildir(2)) == 2


def test_cleanup_service_name_is_where_local_and_bounce_post_too(new_instance) -> None:  # type: ignore[no-untyped-def]
    """With the cleanup service renamed (master.cf and cleanup_service_name), local's
    forwarded copies and bounce's notifications go there, as Postfix's forward.c and
    post_mail.c do: nothing asks for public/cleanup any more."""
    inst: Instance = new_instance(maildir=True)
    master_cf = inst.config_dir / "master.cf"
    master, n = re.subn(r"(?m)^cleanup(\s+unix\s)", r"mycleanup\1", master_cf.read_text())
    assert n == 1
    master_cf.write_text(master)
    inst.set(cleanup_service_name="mycleanup", local_recipient_maps="",
             transport_maps="inline:{ remote.example=smtp:[127.0.0.1]:9 }")
    inst.write("etc/aliases", "away: friend@remote.example\n")
    inst.tool("newaliases", check=True)
    inst.start()
    queue_id = inst.send("sender@example.org", "away@localhost", b"Subject: fwd\r\n\r\nbody\r\n")
    inst.wait_log(rf"{queue_id}: to=<away@localhost>, relay=local, .*status=sent "
                  r"\(forwarded as \w+\)")
    queue_id = inst.send(f"{ME}@localhost", "nosuchuser@localhost", b"Subject: b\r\n\r\nbody\r\n")
    inst.wait_log(rf"{queue_id}: to=<nosuchuser@localhost>, relay=local, .*status=bounced")
    inst.wait_log(rf"postfix/bounce\[\d+\]: {queue_id}: sender non-delivery notification: \w+")
    (notice,) = inst.wait_maildir(1)
    assert b"Undelivered Mail Returned to Sender" in notice
    assert not (inst.queue_dir / "public" / "cleanup").exists()
