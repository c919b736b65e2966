"""local: what alias commands and file aliases see, as Debian's Postfix 3.7 gives it.

Measured on Debian's Postfix (an alias ``|/bin/sh -c 'env; pwd; umask; id'``):
the command runs as default_privs in the queue directory with umask 0077, and
its environment has PATH=/usr/bin:/bin, USER and LOGNAME (the alias name),
LOCAL, DOMAIN, RECIPIENT, SENDER, ORIGINAL_RECIPIENT, no HOME and no SHELL
(the alias has no user), no EXTENSION (none given), and the client's
CLIENT_ADDRESS, CLIENT_HELO, CLIENT_HOSTNAME, CLIENT_PROTOCOL (and, as Postfix
3.9 and later, ENVID); every value censored by command_expansion_filter. A file alias in a
directory the writer cannot write delivers with a warning about the dot-lock
(Postfix's MBOX_DOT_LOCK_MAY_FAIL for files named in aliases).
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import tempfile
from pathlib import Path

from harness import IS_ROOT, ME, Instance, wait_until

BODY = b"Subject: fidelity\r\n\r\nhello\r\n"


def _outdir() -> Path:
    out = Path(tempfile.mkdtemp(prefix="local-fidelity-"))
    os.chmod(out, 0o1777)  # the command writes as default_privs
    return out


def test_alias_command_environment_directory_and_umask(new_instance) -> None:  # type: ignore[no-untyped-def]
    out = _outdir()
    try:
        inst: Instance = new_instance(maildir=True)
        inst.write("etc/aliases", f"envtest: \"|/bin/sh -c 'env > {out}/env; pwd > {out}/pwd; "
                                  f"umask > {out}/umask'\"\n")
        inst.tool("newaliases", check=True)
        inst.start()
        qid = inst.send("sender@example.org", "envtest@localhost", BODY)
        inst.wait_log(rf"{qid}: to=<envtest@localhost>, relay=local, .*status=sent "
                      r"\(delivered to command: ")
        env = dict(line.split("=", 1) for line in (out / "env").read_text().splitlines()
                   if "=" in line)
        assert {k: env.get(k) for k in ("PATH", "USER", "LOGNAME", "LOCAL", "DOMAIN",
                                        "RECIPIENT", "SENDER", "ORIGINAL_RECIPIENT")} == {
            "PATH": "/usr/bin:/bin", "USER": "envtest", "LOGNAME": "envtest",
            "LOCAL": "envtest", "DOMAIN": "localhost", "RECIPIENT": "envtest@localhost",
            "SENDER": "sender@example.org", "ORIGINAL_RECIPIENT": "envtest@localhost"}
        assert "HOME" not in env and "SHELL" not in env and "EXTENSION" not in env
        assert (out / "pwd").read_text().strip() == os.path.realpath(inst.queue_dir)
        assert (out / "umask").read_text().strip() == "0077"
        # the client as smtpd logged it, from the queue file's attributes; no AUTH, no SASL_*
        # (smtpd logs it after its 250, which can follow the delivery: README)
        (line,) = inst.wait_log(rf"{qid}: client=[^\[]+\[127\.0\.0\.1\]")
        (client,) = re.findall(rf"{qid}: client=([^\[]+)\[127\.0\.0\.1\]", line)
        assert {k: v for k, v in env.items() if k.startswith(("CLIENT_", "SASL_"))} == {
            "CLIENT_ADDRESS": "127.0.0.1", "CLIENT_HOSTNAME": client,
            "CLIENT_HELO": "client.example", "CLIENT_PROTOCOL": "ESMTP"}
        # values pass command_expansion_filter: what a client chose never reaches a shell raw
        qid = inst.send("o'brien@example.org", "envtest@localhost", BODY)
        inst.wait_log(rf"{qid}: to=<envtest@localhost>, relay=local, .*status=sent ")
        env = dict(line.split("=", 1) for line in (out / "env").read_text().splitlines()
                   if "=" in line)
        assert env["SENDER"] == "o_brien@example.org"
        # the DSN envelope ID (Postfix 3.9 and later export it, censored as the others)
        with inst.smtp() as client:
            client.ehlo()
            client.mail("sender@example.org", ["ENVID=ab+2Bc;d"])
            client.rcpt("envtest@localhost")
            code, text = client.data(BODY)
        qid = re.search(r"queued as (\w+)", text.decode()).group(1)  # type: ignore[union-attr]
        inst.wait_log(rf"{qid}: to=<envtest@localhost>, relay=local, .*status=sent ")
        env = dict(line.split("=", 1) for line in (out / "env").read_text().splitlines()
                   if "=" in line)
        assert env["ENVID"] == "ab+c_d"
    finally:
        shutil.rmtree(out, ignore_errors=True)


def test_file_alias_delivers_when_the_dotlock_cannot_be_made(new_instance) -> None:  # type: ignore[no-untyped-def]
    spool = Path(tempfile.mkdtemp(prefix="local-registry-"))
    registry = spool / "registry"
    try:
        registry.write_bytes(b"")
        registry.chmod(0o600)
        if IS_ROOT:  # the alias writes as default_privs, who cannot write the directory
            nobody = pwd.getpwnam("nobody")
            os.chown(registry, nobody.pw_uid, nobody.pw_gid)
            spool.chmod(0o755)
        else:
            spool.chmod(0o555)
        inst: Instance = new_instance(maildir=True)
        inst.write("etc/aliases", f"registry: {registry}\n")
        inst.tool("newaliases", check=True)
        inst.start()
        qid = inst.send("sender@example.org", "registry@localhost", BODY)
        inst.wait_log(rf"warning: unable to create lock file {registry}\.lock: Permission denied")
        inst.wait_log(rf"{qid}: to=<registry@localhost>, relay=local, .*dsn=2\.0\.0, "
                      rf"status=sent \(delivered to file: {registry}\)")
        data = registry.read_bytes()
        assert data.startswith(b"From sender@example.org  ") and data.endswith(b"\nhello\n\n")
        assert not (spool / "registry.lock").exists()
    finally:
        spool.chmod(0o755)
        shutil.rmtree(spool, ignore_errors=True)


def test_alias_command_writes_no_file_past_mailbox_size_limit(new_instance) -> None:  # type: ignore[no-untyped-def]
    """Postfix's local sets mailbox_size_limit as its file size limit, which its commands
    inherit with SIGXFSZ ignored: a write past it fails (EFBIG), the command says so."""
    out = _outdir()
    try:
        inst: Instance = new_instance(maildir=True)
        inst.set(message_size_limit="20000", mailbox_size_limit="20000")
        inst.write("etc/aliases", f"big: \"|/bin/sh -c 'head -c 30000 /dev/zero > {out}/big'\"\n")
        inst.tool("newaliases", check=True)
        inst.start()
        qid = inst.send("sender@example.org", "big@localhost", BODY)
        inst.wait_log(rf"{qid}: to=<big@localhost>, relay=local, .*dsn=5\.3\.0, status=bounced "
                      r"\(Command died with status 1: .*File too large")
        assert (out / "big").stat().st_size == 20000
    finally:
        shutil.rmtree(out, ignore_errors=True)


def test_mailbox_size_limit_below_message_size_limit_is_fatal(new_instance) -> None:  # type: ignore[no-untyped-def]
    inst: Instance = new_instance(maildir=True)
    inst.set(mailbox_size_limit="1000")  # message_size_limit: 10240000
    inst.start()
    qid = inst.send("sender@example.org", f"{ME}@localhost", BODY)
    inst.wait_log(r"postfix/local\[\d+\]: fatal: configuration error: mailbox_size_limit is "
                  r"smaller than message_size_limit")
    assert qid in inst.queue_ids("active") + inst.queue_ids("deferred")
    assert not inst.maildir_messages()


def test_propagate_unmatched_extensions_alias_and_include(new_instance) -> None:  # type: ignore[no-untyped-def]
    """An alias found for the bare user hands its members the unmatched extension when
    propagate_unmatched_extensions lists alias; an :include: in it (whose members are
    forwarded) only when it lists include too (Postfix's local: recipient.c, include.c,
    resolve.c)."""
    out = _outdir()
    try:
        (out / "staff").write_text(f"{ME}@localhost\n")
        inst: Instance = new_instance(maildir=True)
        inst.set(recipient_delimiter="+", propagate_unmatched_extensions="canonical, alias")
        inst.write("etc/aliases", f"team: {ME}@localhost\nstaff: :include:{out}/staff\n")
        inst.tool("newaliases", check=True)
        inst.start()
        for rcpt, delivered in (("team+sales", f"{ME}+sales"), ("team", ME)):
            qid = inst.send("sender@example.org", f"{rcpt}@localhost", BODY)
            inst.wait_log(rf"{qid}: to=<{re.escape(delivered)}@localhost>, orig_to=<"
                          rf"{re.escape(rcpt)}@localhost>, relay=local, .*status=sent "
                          r"\(delivered to maildir\)")

        def included_delivered_to() -> str:
            qid = inst.send("sender@example.org", "staff+ops@localhost", BODY)
            (line,) = inst.wait_log(rf"{qid}: to=<staff\+ops@localhost>, relay=local, .*"
                                    r"status=sent \(forwarded as \w+\)")
            new_id = line.rsplit(" ", 1)[1].rstrip(")")
            (line,) = inst.wait_log(rf"{new_id}: to=<[^>]*>, orig_to=<staff\+ops@localhost>, "
                                    r"relay=local, .*status=sent \(delivered to maildir\)")
            return line.split("to=<", 1)[1].split(">", 1)[0]

        assert included_delivered_to() == f"{ME}@localhost"
        inst.set(propagate_unmatched_extensions="alias, include")
        inst.postfix("reload")
        wait_until(lambda: "reload -- version" in inst.log(), what="the reload")
        wait_until(lambda: included_delivered_to() == f"{ME}+ops@localhost", 30,
                   what="the forwarded copy with the extension")
    finally:
        shutil.rmtree(out, ignore_errors=True)


def _dsn_fields(dsn: bytes) -> list[bytes]:
    """The message/delivery-status part's per-recipient lines, continuation lines joined."""
    report = dsn.split(b"Content-Type: message/delivery-status\n\n", 1)[1].split(b"\n--", 1)[0]
    return [line for line in report.replace(b"\n    ", b" ").split(b"\n")
            if line.startswith((b"Final-Recipient:", b"Original-Recipient:", b"Status:",
                                b"Diagnostic-Code:"))]


def test_failed_command_diagnostic_code_is_x_unix(new_instance) -> None:  # type: ignore[no-untyped-def]
    """As Debian's Postfix 3.7 (pipe_command's dsb_unix): a failed alias command's
    Diagnostic-Code is ``x-unix;`` with its output, or without output what its exit
    status means; the reason in the text part stays the whole story."""
    inst: Instance = new_instance(maildir=True)
    inst.write("etc/aliases", f"postmaster: {ME}\n"
                              "talks: \"|/bin/sh -c 'echo some output; exit 1'\"\n"
                              "mute: |/bin/false\n"
                              "unknown: \"|/bin/sh -c 'exit 67'\"\n")
    inst.tool("newaliases", check=True)
    inst.start()
    qid = inst.send(f"{ME}@localhost", ["talks@localhost", "mute@localhost",
                                        "unknown@localhost"], BODY)
    inst.wait_log(rf"postfix/bounce\[\d+\]: {qid}: sender non-delivery notification: ")
    (dsn,) = inst.wait_maildir(1)
    assert b'\n<talks@localhost>: Command died with status 1: "/bin/sh -c \'echo some output;' \
           b"\n    exit 1'\". Command output: some output\n" in dsn
    fields = b"\n".join(_dsn_fields(dsn))
    for rcpt, status, diag in ((b"talks", b"5.3.0", b"some output"),
                               (b"mute", b"5.3.0", b"unknown mail system error 1"),
                               (b"unknown", b"5.1.1", b"user unknown")):
        assert re.search(rb"Final-Recipient: rfc822; " + rcpt + rb"@localhost\n"
                         rb"Original-Recipient: [^\n]+\nStatus: " + re.escape(status) +
                         rb"\nDiagnostic-Code: x-unix; " + re.escape(diag) + rb"\n", fields + b"\n"
                         ), fields


def _send_notify_success(inst: Instance, rcpt: str, *others: str) -> str:
    """Send BODY to rcpt with NOTIFY=SUCCESS (and to others without); the queue ID."""
    with inst.smtp() as client:
        client.ehlo()
        client.mail(f"{ME}@localhost")
        client.rcpt(rcpt, ["NOTIFY=SUCCESS"])
        for other in others:
            client.rcpt(other)
        code, text = client.data(BODY)
    return re.search(r"queued as (\w+)", text.decode()).group(1)  # type: ignore[union-attr]


def test_original_recipient_has_no_space_after_rfc822(new_instance) -> None:  # type: ignore[no-untyped-def]
    """Postfix 3.7's bounce writes ``Original-Recipient: rfc822;ADDRESS`` (no space, unlike
    Final-Recipient) in failure, delay and success notices alike."""
    inst: Instance = new_instance(maildir=True)
    inst.write("etc/aliases", f"postmaster: {ME}\nmute: |/bin/false\n")
    inst.tool("newaliases", check=True)
    inst.start()
    _send_notify_success(inst, f"{ME}@localhost", "mute@localhost")
    notices = wait_until(lambda: [m for m in inst.maildir_messages()
                                  if b"\nFinal-Recipient: " in m] if len(
        inst.maildir_messages()) >= 3 else [], 60, what="the success and failure notices")
    fields = sorted(b"\n".join(line for line in _dsn_fields(m) if b"-Recipient:" in line)
                    for m in notices)
    assert fields == sorted([
        f"Final-Recipient: rfc822; {ME}@localhost\nOriginal-Recipient: rfc822;{ME}@localhost"
        .encode(),
        b"Final-Recipient: rfc822; mute@localhost\nOriginal-Recipient: rfc822;mute@localhost"
    ]), fields


def test_alias_loop_is_an_alias_database_loop(new_instance) -> None:  # type: ignore[no-untyped-def]
    """Debian's Postfix 3.7 stops an alias loop (a -> b -> a), or a chain of aliases too
    long, in deliver_alias at level 101 and up, four levels per alias: the warning, the
    bounce and its status name the alias where it stopped (here loopb, and c26 of a chain
    of 40). An alias that names itself is the user's own mailbox (here none: unknown)."""
    inst: Instance = new_instance(maildir=True)
    chain = "".join(f"c{i}: c{i + 1}\n" for i in range(1, 40))
    inst.write("etc/aliases", f"postmaster: {ME}\nloopa: loopb\nloopb: loopa\n"
                              f"selfref: selfref\n{chain}")
    inst.tool("newaliases", check=True)
    inst.start()
    for rcpt, stopped in (("loopa", "loopb"), ("c1", "c26")):
        qid = inst.send(f"{ME}@localhost", f"{rcpt}@localhost", BODY)
        inst.wait_log(rf"postfix/local\[\d+\]: warning: alias database loop for {stopped}$")
        inst.wait_log(rf"{qid}: to=<{stopped}@[^>]+>, orig_to=<{rcpt}@localhost>, relay=local, "
                      rf".*dsn=5\.4\.6, status=bounced \(alias database loop for {stopped}\)$")
    qid = inst.send(f"{ME}@localhost", "selfref@localhost", BODY)
    inst.wait_log(rf"{qid}: to=<selfref@[^>]+>, orig_to=<selfref@localhost>, relay=local, "
                  r'.*dsn=5\.1\.1, status=bounced \(unknown user: "selfref"\)$')
    dsns = inst.wait_maildir(3)
    (loop,) = [m for m in dsns if b"(expanded from <loopa@localhost>)" in m]
    assert re.search(rb"\n<loopb@[^>]+> \(expanded from <loopa@localhost>\): alias database "
                     rb"loop for loopb\n", loop.replace(b"\n    ", b" ")), loop
    assert b"\nStatus: 5.4.6\nDiagnostic-Code: X-Postfix; alias database loop for loopb\n" in loop
    assert "nesting" not in inst.log()


def test_empty_alias_command_is_delivered(new_instance) -> None:  # type: ignore[no-untyped-def]
    """An alias to an empty command (``|``, or quoted ``"|"``) runs ``sh -c ''`` under
    Debian's Postfix 3.7, which succeeds: sent, ``delivered to command: ``, no bounce."""
    inst: Instance = new_instance(maildir=True)
    inst.write("etc/aliases", f"postmaster: {ME}\nempty: |\nquoted: \"|\"\n")
    inst.tool("newaliases", check=True)
    inst.start()
    for rcpt in ("empty", "quoted"):
        qid = inst.send(f"{ME}@localhost", f"{rcpt}@localhost", BODY)
        inst.wait_log(rf"{qid}: to=<{rcpt}@localhost>, relay=local, .*dsn=2\.0\.0, status=sent "
                      r"\(delivered to command: \)$")
        inst.wait_log(rf"{qid}: removed")
    assert "bounce" not in inst.log() and not inst.maildir_messages()


def test_include_file_problems_bounce_with_postfix_warnings(new_instance) -> None:  # type: ignore[no-untyped-def]
    """As Debian's Postfix 3.7's deliver_include: a missing :include: file ("unable to
    lookup"), one its reader may not open ("cannot open", a bounce, not a deferral) and a
    directory ("is not a regular file") each bounce 5.3.5 "mail system configuration
    error", the warning saying why."""
    out = Path(tempfile.mkdtemp(prefix="local-include-"))
    try:
        out.chmod(0o755)
        closed = out / "closed"
        closed.write_text(f"{ME}\n")
        closed.chmod(0)
        if IS_ROOT:  # read with its owner's rights, who may not
            nobody = pwd.getpwnam("nobody")
            os.chown(closed, nobody.pw_uid, nobody.pw_gid)
        inst: Instance = new_instance(maildir=True)
        inst.write("etc/aliases", f"postmaster: {ME}\nmissing: :include:{out}/missing\n"
                                  f"closed: :include:{closed}\ndirectory: :include:{out}\n")
        inst.tool("newaliases", check=True)
        inst.start()
        for rcpt, warning in (
                ("missing", f"unable to lookup :include: file {out}/missing: "
                            "No such file or directory"),
                ("closed", f"cannot open include file {closed}: Permission denied"),
                ("directory", f":include: file {out} is not a regular file")):
            qid = inst.send(f"{ME}@localhost", f"{rcpt}@localhost", BODY)
            inst.wait_log(rf"postfix/local\[\d+\]: warning: {re.escape(warning)}$")
            inst.wait_log(rf"{qid}: to=<{rcpt}@localhost>, relay=local, .*dsn=5\.3\.5, "
                          r"status=bounced \(mail system configuration error\)$")
    finally:
        shutil.rmtree(out, ignore_errors=True)


def test_success_notice_says_delivery_via_local(new_instance) -> None:  # type: ignore[no-untyped-def]
    """Postfix 3.7's success notice (trace_append) says who delivered: ``delivery via
    local: delivered to maildir``, in the text and the Diagnostic-Code; the log line keeps
    the plain reason."""
    inst: Instance = new_instance(maildir=True)
    inst.start()
    qid = _send_notify_success(inst, f"{ME}@localhost")
    inst.wait_log(rf"{qid}: to=<{ME}@localhost>, relay=local, .*status=sent "
                  r"\(delivered to maildir\)$")
    (notice,) = [m for m in inst.wait_maildir(2) if b"\nAction: delivered\n" in m]
    assert f"\n<{ME}@localhost>: delivery via local: delivered to maildir\n".encode() in notice
    assert b"\nDiagnostic-Code: X-Postfix; delivery via local: delivered to maildir\n" in notice


def test_success_notice_for_an_alias_is_expanded(new_instance) -> None:  # type: ignore[no-untyped-def]
    """NOTIFY=SUCCESS to an alias: as Debian's Postfix 3.7, the notice reports the alias
    itself (Action: expanded, ``alias expanded``), not its members, whose deliveries are
    logged as ever."""
    inst: Instance = new_instance(maildir=True)
    inst.write("etc/aliases", f"postmaster: {ME}\nteam: {ME}\n")
    inst.tool("newaliases", check=True)
    inst.start()
    qid = _send_notify_success(inst, "team@localhost")
    inst.wait_log(rf"{qid}: to=<{ME}@[^>]+>, orig_to=<team@localhost>, relay=local, "
                  r".*status=sent \(delivered to maildir\)$")
    (notice,) = [m for m in inst.wait_maildir(2) if b"\nFinal-Recipient: " in m]
    assert b"\n<team@localhost>: delivery via local: alias expanded\n" in notice, notice
    assert [b"\n".join(_dsn_fields(notice))] == [
        b"Final-Recipient: rfc822; team@localhost\nOriginal-Recipient: rfc822;team@localhost\n"
        b"Status: 2.0.0\nDiagnostic-Code: X-Postfix; delivery via local: alias expanded"]
    assert b"\nAction: expanded\n" in notice


def test_home_file_in_an_alias_is_a_configuration_error(new_instance) -> None:  # type: ignore[no-untyped-def]
    """``~/file`` names a file in the home of the user whose rights a .forward has; an
    alias has no such user, and ``~user/file`` is not supported: Postfix 3.7's
    deliver_token_home warns and bounces 5.3.5 (it was taken for an address)."""
    inst: Instance = new_instance(maildir=True)
    inst.write("etc/aliases", f"postmaster: {ME}\ntilde: ~/x\nother: ~nobody/x\n")
    inst.tool("newaliases", check=True)
    inst.start()
    for rcpt, warning in (("tilde", "unknown home directory for: ~/x"),
                          ("other", "bad home directory syntax for: ~nobody/x")):
        qid = inst.send(f"{ME}@localhost", f"{rcpt}@localhost", BODY)
        inst.wait_log(rf"postfix/local\[\d+\]: warning: {re.escape(warning)}$")
        inst.wait_log(rf"{qid}: to=<{rcpt}@localhost>, relay=local, .*dsn=5\.3\.5, "
                      r"status=bounced \(mail system configuration error\)$")
