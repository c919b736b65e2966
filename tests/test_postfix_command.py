"""The postfix command and instance creation, as a user runs them."""

from __future__ import annotations

import grp
import os
import pwd
import socket
import subprocess
import sys

import pytest
from harness import IS_ROOT, ME, Instance

from pymailsys.queue.spool import SPOOL_DIRS

pytestmark = pytest.mark.usefixtures("pmsfixtures_importable")


ECHO = "echo unix n - n - - pmsfixtures.echo\n"


def test_instance_create_writes_an_embedded_configuration(tmp_path) -> None:  # type: ignore[no-untyped-def]
    base = tmp_path / "inst"
    result = subprocess.run([sys.executable, "-m", "pymailsys.tools.instance", "create", str(base),
                             "--port", "2999", "--host", "127.0.0.1", "--maildir"],
                            capture_output=True, text=True, check=True)
    lines = result.stdout.splitlines()
    for name in ("main.cf", "master.cf", "aliases"):
        assert str(base / "etc" / name) in lines
    main = (base / "etc" / "main.cf").read_text()
    for setting in (f"config_directory = {base}/etc", f"queue_directory = {base}/spool",
                    f"data_directory = {base}/data", f"mail_spool_directory = {base}/mail/",
                    f"maillog_file = {base}/log/maillog", "inet_interfaces = 127.0.0.1",
                    "mydestination = $myhostname, localhost.$mydomain, localhost",
                    f"alias_maps = hash:{base}/etc/aliases",
                    f"alias_database = hash:{base}/etc/aliases"):
        assert setting + "\n" in main
    assert ("mail_owner = " + ME + "\n" in main) == (not IS_ROOT)
    assert "\n127.0.0.1:2999 inet  n" in (base / "etc" / "master.cf").read_text()
    assert "postmaster:\troot" in (base / "etc" / "aliases").read_text()
    mbox = tmp_path / "mbox"
    subprocess.run([sys.executable, "-m", "pymailsys.tools.instance", "create", str(mbox)],
                   capture_output=True, check=True)
    assert f"mail_spool_directory = {mbox}/mail\n" in (mbox / "etc" / "main.cf").read_text()
    assert "\n127.0.0.1:2525 inet" in (mbox / "etc" / "master.cf").read_text()


def test_check_creates_the_queue_tree_with_postfix_modes(new_instance) -> None:  # type: ignore[no-untyped-def]
    inst: Instance = new_instance()
    assert not inst.queue_dir.exists()
    result = inst.postfix("check")
    assert result.returncode == 0
    assert "warning" not in result.stderr
    top = os.stat(inst.queue_dir)
    assert top.st_mode & 0o7777 == 0o755
    if IS_ROOT:
        owner = pwd.getpwnam("postfix")
        roles = {"root": (0, 0), "mail_owner": (owner.pw_uid, owner.pw_gid),
                 "setgid_group": (None, grp.getgrnam("postdrop").gr_gid)}
        assert (top.st_uid, top.st_gid) == (0, 0)
    for d in SPOOL_DIRS:
        st = os.stat(inst.queue_dir / d.name)
        assert st.st_mode & 0o7777 == d.mode, d.name
        if IS_ROOT:
            assert st.st_uid == roles[d.owner][0], d.name
            assert st.st_gid == roles[d.group][1 if d.group != "setgid_group" else 1], d.name
        else:
            assert (st.st_uid, st.st_gid) == (os.getuid(), os.getgid()), d.name
    data = os.stat(inst.base / "data")
    assert data.st_mode & 0o7777 == 0o700
    assert data.st_uid == (pwd.getpwnam("postfix").pw_uid if IS_ROOT else os.getuid())
    log = os.stat(inst.log_path)
    assert log.st_uid == (pwd.getpwnam("postfix").pw_uid if IS_ROOT else os.getuid())


def test_check_warns_and_set_permissions_fixes(new_instance) -> None:  # type: ignore[no-untyped-def]
    inst: Instance = new_instance()
    inst.postfix("check")
    os.chmod(inst.queue_dir / "incoming", 0o775)
    result = inst.postfix("check")
    assert result.returncode == 0
    path = inst.queue_dir / "incoming"
    assert f"postfix/postfix-script: warning: group or other writable: {path}" in result.stderr
    assert f"warning: wrong permissions 0775 (should be 0700): {path}" in result.stderr
    if IS_ROOT:
        os.chown(inst.queue_dir / "hold", 0, 0)
        assert f"warning: not owned by postfix: {inst.queue_dir / 'hold'}" in inst.postfix("check").stderr
    inst.postfix("set-permissions")
    assert os.stat(path).st_mode & 0o7777 == 0o700
    assert "warning" not in inst.postfix("check").stderr


def test_start_stop_status_abort_messages_and_exit_codes(new_instance) -> None:  # type: ignore[no-untyped-def]
    inst: Instance = new_instance()
    inst.write("etc/master.cf", ECHO)
    status = inst.postfix("status", check=False)
    assert status.returncode == 1
    assert "postfix/postfix-script: the Postfix mail system is not running" in status.stderr
    stop = inst.postfix("stop", check=False)
    assert stop.returncode == 1
    assert "postfix/postfix-script: fatal: the Postfix mail system is not running" in stop.stderr
    assert inst.postfix("reload", check=False).returncode == 1
    start = inst.postfix("start")
    inst.running = True
    assert "postfix/postfix-script: starting the Postfix mail system" in start.stderr
    again = inst.postfix("start", check=False)
    assert again.returncode == 1
    assert "postfix/postfix-script: fatal: the Postfix mail system is already running" in again.stderr
    # MAIL_CONFIG selects the instance when -c is absent.
    env = dict(os.environ, MAIL_CONFIG=str(inst.config_dir))
    by_env = subprocess.run([sys.executable, "-m", "pymailsys.tools.postfix", "status"],
                            capture_output=True, text=True, env=env)
    assert by_env.returncode == 0 and "is running: PID:" in by_env.stderr
    abort = inst.postfix("abort")
    assert "aborting the Postfix mail system" in abort.stderr
    from harness import wait_until
    wait_until(lambda: inst.pids() == [], what="master gone after abort")
    assert inst.postfix("status", check=False).returncode == 1
    inst.running = False
    log = inst.log()
    assert "postfix/postfix-script" in log and "starting the Postfix mail system" in log


def test_start_failure_is_reported(new_instance) -> None:  # type: ignore[no-untyped-def]
    inst: Instance = new_instance()
    inst.write("etc/master.cf", f"{inst.port} inet n - n - - pmsfixtures.echo\n")
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", inst.port))
        squatter.listen(1)
        result = inst.postfix("start", check=False)
    assert result.returncode == 1
    assert f"postfix/master: fatal: bind 127.0.0.1 port {inst.port}: Address already in use" in result.stderr
    assert "postfix/postfix-script: fatal: mail system startup failed" in result.stderr
    assert inst.postfix("status", check=False).returncode == 1
    assert inst.pids() == []


def test_malformed_master_cf_is_fatal_naming_file_and_line(new_instance) -> None:  # type: ignore[no-untyped-def]
    inst: Instance = new_instance()
    inst.write("etc/master.cf", "# services\nsmtp inet n - n - - smtpd\nbad unix n - n x - echo\n")
    for command in ("check", "start"):
        result = inst.postfix(command, check=False)
        assert result.returncode == 1
        assert (f"postfix/postfix-script: fatal: file {inst.config_dir}/master.cf: line 3: "
                'invalid wakeup field "x"') in result.stderr
    assert inst.pids() == []


def test_missing_configuration_and_unknown_command(tmp_path) -> None:  # type: ignore[no-untyped-def]
    run = [sys.executable, "-m", "pymailsys.tools.postfix"]
    missing = subprocess.run(run + ["-c", str(tmp_path), "status"], capture_output=True, text=True)
    assert missing.returncode == 1
    assert f"postfix: fatal: open {tmp_path}/main.cf: No such file or directory" in missing.stderr
    (tmp_path / "main.cf").write_text(f"queue_directory = {tmp_path}/spool\nmail_owner = {ME}\n")
    unknown = subprocess.run(run + ["-c", str(tmp_path), "frobnicate"], capture_output=True, text=True)
    assert unknown.returncode == 1
    assert "fatal: unknown command: 'frobnicate'" in unknown.stderr


def test_flush_when_down_fails(new_instance) -> None:  # type: ignore[no-untyped-def]
    inst: Instance = new_instance()
    inst.postfix("check")
    assert inst.postfix("flush", check=False).returncode != 0


@pytest.mark.root
def test_postfix_is_reserved_for_the_superuser(new_instance) -> None:  # type: ignore[no-untyped-def]
    inst: Instance = new_instance()
    probe = subprocess.run(["runuser", "-u", "nobody", "--", sys.executable, "-c", "import pymailsys"],
                           capture_output=True, cwd="/")
    if probe.returncode != 0:
        pytest.skip(f"{sys.executable} with pymailsys is not usable by nobody")
    result = subprocess.run(["runuser", "-u", "nobody", "--", sys.executable, "-m",
                             "pymailsys.tools.postfix", "-c", str(inst.config_dir), "check"],
                            capture_output=True, text=True, cwd="/")
    assert result.returncode == 1
    assert "postfix: fatal: the postfix command is reserved for the superuser" in result.stderr
