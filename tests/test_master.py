"""master with real processes: listeners, on-demand children, restarts, wake-ups, reload, stop.

Services are the test daemons in tests/pmsfixtures (a master.cf command with a
dot is a full module name) next to the real ones where a test says so.
"""

from __future__ import annotations

import fcntl
import os
import pwd
import re
import signal
import socket
import stat
import subprocess
import sys
import time

import pytest
from harness import IS_ROOT, ME, Instance, cmdline, wait_until

pytestmark = pytest.mark.usefixtures("pmsfixtures_importable")


def make(new_instance, master: str, **settings: str) -> Instance:  # type: ignore[no-untyped-def]
    inst = new_instance(maildir=True, settings=settings or None)
    inst.write("etc/master.cf", master)
    return inst


def master_pid(inst: Instance) -> int:
    return int((inst.queue_dir / "pid" / "master.pid").read_text())


def service_pids(inst: Instance, service: str) -> list[int]:
    out = []
    for pid in inst.pids():
        args = cmdline(pid)
        if "-n" in args and args[args.index("-n") + 1] == service:
            out.append(pid)
    return out


def echo_unix(inst: Instance, service: str) -> tuple[int, str]:
    """Connect to an echo service: (pid of the child that answered, its args)."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(20)
        s.connect(str(inst.queue_dir / "public" / service))
        return _greeting(s)


def echo_inet(port: int) -> tuple[int, str]:
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        return _greeting(s)


def _greeting(s: socket.socket) -> tuple[int, str]:
    data = b""
    while not data.endswith(b"\n"):
        chunk = s.recv(256)
        if not chunk:
            break
        data += chunk
    m = re.match(rb"pid=(\d+) service=\S+ args=(.*)\n", data)
    assert m, data
    s.sendall(b"ping\n")
    assert s.recv(16) == b"ping\n"
    return int(m.group(1)), m.group(2).decode()


ECHO = ("echo      unix  n       -       n       -       2       pmsfixtures.echo\n"
        "{port}   inet  n       -       n       -       -       pmsfixtures.echo\n")


def test_start_status_pid_file_and_children(new_instance) -> None:  # type: ignore[no-untyped-def]
    inst = make(new_instance, "")
    inst.write("etc/master.cf", ECHO.format(port=inst.port))
    inst.start(wait_smtp=False)
    pid = master_pid(inst)
    status = inst.postfix("status")
    assert f"the Postfix mail system is running: PID: {pid}" in status.stderr
    text = (inst.queue_dir / "pid" / "master.pid").read_text()
    assert text == f"{pid:>32}\n"
    with open(inst.queue_dir / "pid" / "master.pid") as f, pytest.raises(BlockingIOError):
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    assert cmdline(pid)[1:4] == ["-P", "-m", "pymailsys.daemons.master"]
    inst.wait_log(rf"postfix/master\[{pid}\]: daemon started -- version \S+, "
                  rf"configuration {re.escape(str(inst.config_dir))}$")
    child, _args = echo_unix(inst, "echo")
    args = cmdline(child)
    assert args[1:4] == ["-P", "-m", "pmsfixtures.echo"]
    # -p: the process limit (master.cf's 2; "-" is default_process_limit), which
    # smtpd applies to its clients and cleanup to its messages
    assert args[4:] == ["-c", str(inst.config_dir), "-n", "echo", "-t", "unix", "-u",
                        "-p", "2"]
    inet_child, _ = echo_inet(inst.port)  # a bare port binds inet_interfaces (127.0.0.1)
    assert cmdline(inet_child)[4:] == ["-c", str(inst.config_dir), "-n", str(inst.port), "-t",
                                      "inet", "-u", "-p", "100"]
    with open(f"/proc/{child}/status") as f:
        uid = int(next(line for line in f if line.startswith("Uid:")).split()[1])
    if IS_ROOT:
        assert uid == pwd.getpwnam("postfix").pw_uid
        assert "not running as root" not in inst.log()
    else:
        assert uid == os.getuid()
        inst.wait_log(rf"postfix/master\[{pid}\]: warning: not running as root: "
                      rf"all services run as user {ME}")
    mode = os.stat(inst.queue_dir / "public" / "echo").st_mode & 0o777
    assert mode == 0o666


def test_killed_child_is_restarted_on_next_connection(new_instance) -> None:  # type: ignore[no-untyped-def]
    inst = make(new_instance, "")
    inst.write("etc/master.cf", ECHO.format(port=inst.port))
    inst.start(wait_smtp=False)
    first, _ = echo_unix(inst, "echo")
    os.kill(first, signal.SIGKILL)
    inst.wait_log(rf"postfix/master\[\d+\]: warning: process /\S+/pmsfixtures.echo pid {first} "
                  r"killed by signal 9")
    second, _ = echo_unix(inst, "echo")
    assert second != first
    assert "bad command startup" not in inst.log()


def test_bad_command_startup_throttles(new_instance) -> None:  # type: ignore[no-untyped-def]
    inst = make(new_instance, "", service_throttle_time="2s")
    inst.write("etc/master.cf",
               "broken unix n - n - - pmsfixtures.echo exit\n" + ECHO.format(port=inst.port))
    inst.start(wait_smtp=False)
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(inst.queue_dir / "public" / "broken"))
        inst.wait_log(r"warning: process /\S+/pmsfixtures.echo pid \d+ exit status 1")
        inst.wait_log(r"warning: /\S+/pmsfixtures.echo: bad command startup -- throttling")
        # After service_throttle_time master tries again (an internal client still waits).
        inst.wait_log(r"bad command startup -- throttling", count=2)
    # Other services are not affected.
    echo_unix(inst, "echo")
    assert master_pid(inst) in inst.pids()


def test_stock_master_cf_with_unknown_services_starts(new_instance) -> None:  # type: ignore[no-untyped-def]
    inst = new_instance(maildir=True)
    with open(inst.config_dir / "master.cf", "a") as f:
        f.write("echo unix n - n - - pmsfixtures.echo\n"
                "nosuch unix n - n - - pmsfixtures.nosuch\n")
    inst.start(wait_smtp=False)
    pattern = r"postfix/master\[\d+\]: warning: services not available yet, left out: (.*)$"
    line = inst.wait_log(pattern)[0]
    left_out = re.search(pattern, line).group(1).split(", ")  # type: ignore[union-attr]
    for service in ("tlsmgr", "scache", "maildrop", "rewrite", "postlog"):
        assert service in left_out
    assert "smtpd" not in left_out and "echo" not in left_out and "anvil" not in left_out
    assert len(re.findall("not available yet", inst.log())) == 1
    # a full module name that does not exist is a mistake, named with its line
    inst.wait_log(rf"postfix/master\[\d+\]: warning: file {re.escape(str(inst.config_dir))}"
                  r"/master.cf: line \d+: service nosuch/unix: no module pmsfixtures.nosuch "
                  r"-- service disabled")
    inst.postfix("reload")
    inst.wait_log(pattern, count=2)
    assert not (inst.queue_dir / "private" / "scache").exists()
    assert inst.postfix("status").returncode == 0
    echo_unix(inst, "echo")


TRIGGERS = ("trig      unix  n       -       n       1       1       pmsfixtures.triggerlog\n"
            "fifotrig  fifo  n       -       n       1       1       pmsfixtures.triggerlog\n"
            "later     unix  n       -       n       1?      1       pmsfixtures.triggerlog\n")


def test_wakeup_services_start_at_once_and_are_woken(new_instance) -> None:  # type: ignore[no-untyped-def]
    inst = make(new_instance, TRIGGERS)
    inst.start(wait_smtp=False)
    inst.wait_log(r"postfix/triggerlog\[\d+\]: trigger 'W' on trig$", count=2)
    inst.wait_log(r"postfix/triggerlog\[\d+\]: trigger 'W' on fifotrig$", count=2)
    fifo = inst.queue_dir / "public" / "fifotrig"
    assert os.stat(fifo).st_mode & 0o777 == 0o622
    # "1?" wakes up only after first use: nothing runs until a client came.
    assert service_pids(inst, "later") == []
    assert "on later" not in inst.log()
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(inst.queue_dir / "public" / "later"))
        s.sendall(b"I")
    inst.wait_log(r"trigger 'I' on later$")
    inst.wait_log(r"trigger 'W' on later$")


def test_a_wakeup_service_failing_after_its_start_is_no_fork_loop(new_instance) -> None:  # type: ignore[no-untyped-def]
    """A resident service that fails soon after it started (as qmgr on a bad setting
    it reads only when mail comes) is replaced at once only once per
    service_throttle_time; after that at its next wake-up or client, as Postfix's
    master starts one: never a fork loop."""
    inst = make(new_instance, "trig unix n - n 300 1 pmsfixtures.triggerlog fatal\n")
    inst.start(wait_smtp=False)
    failed = r"warning: process /\S+/pmsfixtures.triggerlog pid \d+ exit status 1$"
    inst.wait_log(failed, count=2)  # the first process and its one replacement
    time.sleep(3)
    assert len([line for line in inst.log().splitlines() if re.search(failed, line)]) == 2
    assert service_pids(inst, "trig") == []
    # a client still starts one on demand
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(inst.queue_dir / "public" / "trig"))
        s.sendall(b"I")
    inst.wait_log(r"trigger 'I' on trig$")
    inst.wait_log(failed, count=3)


def test_wakeup_service_is_kept_running(new_instance) -> None:  # type: ignore[no-untyped-def]
    inst = make(new_instance, TRIGGERS)
    inst.start(wait_smtp=False)
    running: list[int] = wait_until(lambda: service_pids(inst, "trig"),
                                    what="trig running")
    first = running[0]
    inst.wait_log(rf"postfix/triggerlog\[{first}\]: trigger 'W' on trig$")  # started up
    os.kill(first, signal.SIGKILL)
    second = wait_until(lambda: [p for p in service_pids(inst, "trig") if p != first],
                        what="trig restarted")
    assert second


def test_reload_rereads_configuration(new_instance) -> None:  # type: ignore[no-untyped-def]
    inst = make(new_instance, "")
    inst.write("etc/master.cf", "echo unix n - n - - pmsfixtures.echo one\n"
                                "gone unix n - n - - pmsfixtures.echo\n")
    inst.start(wait_smtp=False)
    assert echo_unix(inst, "echo")[1] == "one"
    assert echo_unix(inst, "gone")
    old_master = master_pid(inst)
    inst.write("etc/master.cf", "echo unix n - n - - pmsfixtures.echo two\n"
                                "added unix n - n - - pmsfixtures.echo\n"
                                f"{inst.port} inet n - n - - pmsfixtures.echo\n")
    result = inst.postfix("reload")
    assert "refreshing the Postfix mail system" in result.stderr
    inst.wait_log(rf"postfix/master\[{old_master}\]: reload -- version \S+, configuration "
                  rf"{re.escape(str(inst.config_dir))}$")
    wait_until(lambda: echo_unix(inst, "echo")[1] == "two", what="new generation serving")
    assert echo_unix(inst, "added")
    assert echo_inet(inst.port)

    def refused() -> bool:
        try:
            echo_unix(inst, "gone")
        except (ConnectionRefusedError, FileNotFoundError):
            return True
        return False

    wait_until(refused, what="removed service closed")
    assert master_pid(inst) == old_master


def test_stop_leaves_no_processes(new_instance) -> None:  # type: ignore[no-untyped-def]
    inst = make(new_instance, TRIGGERS)
    inst.write("etc/master.cf", TRIGGERS + ECHO.format(port=inst.port))
    inst.start(wait_smtp=False)
    with socket.socket(socket.AF_UNIX) as busy:
        busy.connect(str(inst.queue_dir / "public" / "echo"))
        busy.recv(100)
        echo_inet(inst.port)
        assert len(inst.pids()) >= 4
        pid = master_pid(inst)
        result = inst.postfix("stop")
        assert "stopping the Postfix mail system" in result.stderr
        assert inst.pids() == []
    inst.running = False
    inst.wait_log(rf"postfix/master\[{pid}\]: terminating on signal 15$")
    assert inst.postfix("status", check=False).returncode == 1


def test_start_fg_runs_master_in_the_foreground(new_instance) -> None:  # type: ignore[no-untyped-def]
    inst = make(new_instance, TRIGGERS)
    env = dict(os.environ, MAIL_CONFIG=str(inst.config_dir))
    proc = subprocess.Popen([sys.executable, "-m", "pymailsys.tools.postfix", "start-fg"],
                            env=env, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: inst.postfix("status", check=False).returncode == 0, what="master up")
        assert master_pid(inst) == proc.pid  # postfix became master
        inst.wait_log(r"trigger 'W' on trig$")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        wait_until(lambda: inst.pids() == [], what="children gone")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_master_uses_no_cpu_when_idle(new_instance) -> None:  # type: ignore[no-untyped-def]
    inst = make(new_instance, "")
    inst.write("etc/master.cf", ECHO.format(port=inst.port))
    inst.start(wait_smtp=False)
    pid = master_pid(inst)

    def cpu_ticks() -> int:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])

    before = cpu_ticks()
    time.sleep(1.0)
    # A busy loop would burn ~100 ticks in a second; an idle select burns none.
    assert cpu_ticks() - before <= 5


def test_reload_with_a_broken_master_cf_keeps_the_old_configuration(new_instance) -> None:  # type: ignore[no-untyped-def]
    inst = make(new_instance, "echo unix n - n - - pmsfixtures.echo one\n")
    inst.start(wait_smtp=False)
    pid = master_pid(inst)
    inst.write("etc/master.cf", "echo unix n - n - - pmsfixtures.echo two\nbroken unix\n")
    result = inst.postfix("reload", check=False)  # the command checks first and refuses
    assert result.returncode == 1 and "line 2: bad field count" in result.stderr
    os.kill(pid, signal.SIGHUP)  # and master checks on its own
    inst.wait_log(rf"postfix/master\[{pid}\]: error: file {re.escape(str(inst.config_dir))}"
                  r"/master.cf: line 2: bad field count -- configuration not reloaded$")
    assert echo_unix(inst, "echo")[1] == "one"
    assert inst.postfix("status").returncode == 0


def test_a_pymailsys_folder_where_postfix_start_runs_shadows_nothing(new_instance, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """An administrator's checkout (or any folder named pymailsys) in the current directory."""
    inst = new_instance(maildir=True)
    shadow = tmp_path / "pymailsys"
    shadow.mkdir()
    (shadow / "__init__.py").write_text("raise ImportError('shadowed by the current directory')\n")
    os.chmod(tmp_path, 0o755)
    postfix = os.path.join(os.path.dirname(sys.executable), "postfix")
    result = subprocess.run([postfix, "-c", str(inst.config_dir), "start"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    inst.running = True
    queue_id = inst.send("alice@example.org", f"{ME}@localhost",
                         b"Subject: not shadowed\r\n\r\nhello\r\n")
    (delivered,) = inst.wait_maildir(1)
    assert b"Subject: not shadowed" in delivered
    inst.wait_log(rf"{queue_id}: to=<{ME}@localhost>, .*status=sent")
    assert "shadowed" not in inst.log().replace("not shadowed", "")
    for pid in inst.pids():
        assert os.readlink(f"/proc/{pid}/cwd") == str(inst.queue_dir)
        assert cmdline(pid)[1:3] == ["-P", "-m"]


@pytest.mark.root
def test_sockets_and_fifos_are_made_with_mail_owner_rights(new_instance, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Links planted in public/ and private/ (mail_owner's) do not steer root."""
    inst = make(new_instance, "")
    inst.write("etc/master.cf", ECHO.format(port=inst.port) + TRIGGERS)
    postfix = pwd.getpwnam("postfix")
    inst.postfix("check")  # makes the queue directories
    targets = {}
    for name in ("echo", "fifotrig"):
        target = tmp_path / f"root-{name}"
        target.write_text("root's own\n")
        os.chmod(target, 0o600)
        targets[name] = target
        (inst.queue_dir / "public" / name).symlink_to(target)
    inst.start(wait_smtp=False)
    for name, target in targets.items():
        st = os.stat(target)
        assert (st.st_uid, st.st_mode & 0o7777) == (0, 0o600)
        assert target.read_text() == "root's own\n"
        made = os.lstat(inst.queue_dir / "public" / name)
        assert (made.st_uid, made.st_gid) == (postfix.pw_uid, postfix.pw_gid)
    assert stat.S_ISSOCK(os.lstat(inst.queue_dir / "public" / "echo").st_mode)
    assert os.lstat(inst.queue_dir / "public" / "echo").st_mode & 0o777 == 0o666
    assert stat.S_ISFIFO(os.lstat(inst.queue_dir / "public" / "fifotrig").st_mode)
    assert os.lstat(inst.queue_dir / "public" / "fifotrig").st_mode & 0o777 == 0o622
    echo_unix(inst, "echo")


@pytest.mark.root
def test_wakeups_connect_with_mail_owner_rights(new_instance) -> None:  # type: ignore[no-untyped-def]
    """A wake-up socket that mail_owner replaced by a link to root's socket: root is not used."""
    inst = make(new_instance, "")
    inst.write("etc/master.cf",
               "w1 unix n - n 1 1 pmsfixtures.triggerlog\n"
               "w2 unix n - n 1 1 pmsfixtures.triggerlog\n")
    inst.start(wait_smtp=False)
    inst.wait_log(r"trigger 'W' on w2")
    private = inst.base / "root-only"  # the instance's base is open to mail_owner
    private.mkdir(mode=0o700)
    shared = inst.base / "shared"
    shared.mkdir(mode=0o755)
    root_sock = socket.socket(socket.AF_UNIX)
    root_sock.bind(str(private / "sock"))
    root_sock.listen(10)
    root_sock.setblocking(False)
    probe = socket.socket(socket.AF_UNIX)
    probe.bind(str(shared / "sock"))
    os.chmod(shared / "sock", 0o666)
    probe.listen(10)
    probe.settimeout(30)
    # mail_owner's move: both wake-up paths now lead elsewhere; w1 is woken before w2
    for name, target in (("w1", private / "sock"), ("w2", shared / "sock")):
        link = inst.queue_dir / "public" / name
        os.unlink(link)
        link.symlink_to(target)
    for _ in range(2):  # two whole rounds of wake-ups after the links were planted
        conn, _ = probe.accept()
        conn.close()
    with pytest.raises(BlockingIOError):
        root_sock.accept()
    root_sock.close()
    probe.close()


def test_child_stderr_is_logged_without_control_characters(new_instance) -> None:  # type: ignore[no-untyped-def]
    inst = make(new_instance, "noisy unix n - n - - pmsfixtures.noisy\n")
    inst.start(wait_smtp=False)
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(inst.queue_dir / "public" / "noisy"))
    inst.wait_log(r"postfix/master\[\d+\]: warning: daemon stderr: noisy: \?\[31mred\? and\?more$")
    assert "\x1b" not in inst.log() and "\x07" not in inst.log()


def test_old_generation_child_outstaying_its_grace_is_ended(new_instance, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A client that never lets go keeps its old child only for the grace period (60 s;
    the harness's PYMAILSYS_OLD_GENERATION_GRACE makes it 6 s here): meanwhile the new
    generation serves and the old child lives on; then master terminates the old child."""
    monkeypatch.setenv("PYMAILSYS_OLD_GENERATION_GRACE", "6")
    inst = make(new_instance, "echo unix n - n - - pmsfixtures.echo\n")
    inst.start(wait_smtp=False)
    with socket.socket(socket.AF_UNIX) as held:
        held.settimeout(20)
        held.connect(str(inst.queue_dir / "public" / "echo"))
        old_pid, _ = _greeting(held)
        reloaded = time.monotonic()
        inst.postfix("reload")
        inst.wait_log(r"postfix/master\[\d+\]: reload")
        new_pid, _ = echo_unix(inst, "echo")
        assert new_pid != old_pid
        assert os.path.exists(f"/proc/{old_pid}") or time.monotonic() - reloaded >= 6
        inst.wait_log(rf"postfix/master\[\d+\]: warning: process /\S+/pmsfixtures.echo pid "
                      rf"{old_pid} still running 6s after reload -- terminating", timeout=60)
        assert time.monotonic() - reloaded >= 6
        wait_until(lambda: not os.path.exists(f"/proc/{old_pid}"), 30,
                   what="the old child to exit")
        assert held.recv(16) == b""


@pytest.mark.parametrize("value", ["soon", "0", "-5", "nan", "inf"])
def test_bad_old_generation_grace_is_a_clear_start_up_error(new_instance, monkeypatch, value) -> None:  # type: ignore[no-untyped-def]
    """A PYMAILSYS_OLD_GENERATION_GRACE that is not a number of seconds above 0 stops
    master at start-up with a message naming it, not a traceback."""
    monkeypatch.setenv("PYMAILSYS_OLD_GENERATION_GRACE", value)
    inst = make(new_instance, "echo unix n - n - - pmsfixtures.echo\n")
    result = inst.postfix("start", check=False)
    assert result.returncode != 0
    assert f"bad PYMAILSYS_OLD_GENERATION_GRACE value: '{value}'" in result.stderr
    assert "Traceback" not in result.stderr + inst.log()
    assert not inst.pids()


def test_pickup_runs_on_demand_and_exits_when_idle(new_instance) -> None:  # type: ignore[no-untyped-def]
    """No pickup while maildrop/ is empty; sendmail starts it, it exits after max_idle,
    and a file that reaches maildrop/ without a trigger is taken at the next wake-up."""
    inst = new_instance(maildir=True, settings={"max_idle": "2s"})
    master_cf = inst.config_dir / "master.cf"
    text = re.sub(r"(?m)^(pickup(?:\s+\S+){4}\s+)60(\s)", r"\g<1>1\2", master_cf.read_text())
    assert text != master_cf.read_text()
    master_cf.write_text(text + "trig unix n - n 1 1 pmsfixtures.triggerlog\n")
    inst.start()
    inst.wait_log(r"trigger 'W' on trig$", count=3)  # two rounds of wake-ups since the start
    assert "pickup" not in inst.daemons()
    mail = f"To: {ME}@localhost\nSubject: live\n\nstarts pickup\n"
    assert inst.tool("sendmail", "-t", input=mail).returncode == 0
    inst.wait_log(r"postfix/pickup\[\d+\]: \w+: uid=\d+ from=<")
    inst.wait_maildir(1)
    wait_until(lambda: "pickup" not in inst.daemons(), what="the idle pickup gone")
    from pymailsys import config
    from pymailsys.queue.maildrop import Submission, write_maildrop
    from pymailsys.queue.spool import Spool

    spool = Spool.from_config(config.load(str(inst.config_dir)))
    write_maildrop(spool, Submission(sender=ME, recipients=[f"{ME}@localhost"],
                                     lines=[b"Subject: dropped", b"", b"no trigger"]))
    assert any(b"no trigger" in m for m in inst.wait_maildir(2))
    assert not re.search(r"pickup.* (exit status|killed by signal)", inst.log())
