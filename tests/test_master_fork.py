"""Children forked from master's preloaded image look and behave as exec'd ones did.

Each child of a running instance holds only its own descriptors (the plan
of pymailsys.ipc.master_status, never master's pid file, selector, wake-up
pipe, other services' listeners or other children's status pipes); its
/proc/PID/cmdline and /proc/PID/environ read as for ``python3 -P -m
pymailsys.daemons.NAME ...`` with the environment import_environment
allows; a reload's new main.cf reaches new children. As root the children
run as mail_owner and root reads their /proc entries.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import smtplib
import subprocess
from pathlib import Path

from harness import IS_ROOT, ME, PYTHON, Instance, cmdline, wait_until


def descriptors(pid: int) -> dict[int, str]:
    out = {}
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            out[int(name)] = os.readlink(f"/proc/{pid}/fd/{name}")
        except FileNotFoundError:
            pass
    return out


def environ(pid: int) -> list[str]:
    with open(f"/proc/{pid}/environ", "rb") as f:
        return [e.decode() for e in f.read().split(b"\0") if e]


def shared_dirty_kb(pid: int) -> int:
    with open(f"/proc/{pid}/smaps_rollup") as f:
        return sum(int(line.split()[1]) for line in f if line.startswith("Shared_Dirty:"))


def memory_holds(pid: int, needle: bytes) -> bool:
    """True when needle is anywhere in the process's readable memory (root reads it)."""
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", 0) as mem:
        for line in maps:
            span, perms = line.split()[:2]
            if not perms.startswith("r") or line.rstrip().endswith("[vsyscall]"):
                continue
            start, end = (int(x, 16) for x in span.split("-"))
            try:
                mem.seek(start)
                if needle in mem.read(end - start):
                    return True
            except OSError:
                continue
    return False


def master_pid(inst: Instance) -> int:
    return int((inst.queue_dir / "pid" / "master.pid").read_text())


def test_children_hold_only_their_own_descriptors(new_instance) -> None:  # type: ignore[no-untyped-def]
    inst = new_instance(maildir=True)
    inst.start()
    inst.send("a@example.com", [f"{ME}@localhost"], "Subject: fds\n\nhi\n")
    # pickup runs on demand: a local submission starts it
    assert inst.tool("sendmail", "-t", input=f"To: {ME}@localhost\n\nhi\n").returncode == 0
    inst.wait_maildir(2)
    master = master_pid(inst)
    with open(f"/proc/{master}/status") as f:  # a fork copies only the calling thread
        assert "Threads:\t1\n" in f.read()
    master_fds = descriptors(master)
    # what only master has open: pipes, sockets, the pid file (not /dev/null, not the log)
    masters_own = {link for link in master_fds.values()
                   if link.startswith(("pipe:", "socket:")) or link.endswith("master.pid")}
    daemons = inst.daemons()
    for name in ("smtpd", "cleanup", "qmgr", "local", "pickup"):
        assert daemons.get(name), (name, daemons)
    for name, pids in daemons.items():
        if name == "master":
            continue
        for pid in pids:
            fds = descriptors(pid)
            shared = {fd: link for fd, link in fds.items() if link in masters_own}
            # stderr relay, lifeline, status pipe, and the listeners from fd 6 on
            assert set(shared) <= {2, 4, 5} | {fd for fd in shared if fd >= 6}, (name, fds)
            assert {2, 4, 5} <= set(shared), (name, fds)
            listeners = [link for fd, link in shared.items() if fd >= 6]
            assert all(link.startswith("socket:") for link in listeners), (name, fds)
            assert len(listeners) == 1, (name, fds)  # one listener per service here
            assert not any(link.endswith("master.pid") for link in fds.values()), (name, fds)
            assert sum(link == "anon_inode:[eventpoll]" for link in fds.values()) == 1, (name, fds)
            assert fds[0] == fds[1] == "/dev/null"
            # forked, not exec'd: master's preloaded heap is shared, not copied
            assert shared_dirty_kb(pid) >= 4096, (name, shared_dirty_kb(pid))
    # each child logs under its own pid, not master's
    smtpd = daemons["smtpd"][0]
    inst.wait_log(rf"postfix/smtpd\[{smtpd}\]: connect from localhost")
    assert not re.search(rf"postfix/(smtpd|cleanup|qmgr|local)\[{master}\]", inst.log())


def test_cmdline_names_the_daemon_module(new_instance) -> None:  # type: ignore[no-untyped-def]
    inst = new_instance(maildir=True)
    inst.start()
    daemons = inst.daemons()
    (smtpd,) = daemons["smtpd"]
    assert cmdline(smtpd)[1:] == ["-P", "-m", "pymailsys.daemons.smtpd", "-c", str(inst.config_dir),
                                  "-n", f"127.0.0.1:{inst.port}", "-t", "inet", "-u", "-p", "100"]
    (qmgr,) = daemons["qmgr"]
    assert cmdline(qmgr)[1:] == ["-P", "-m", "pymailsys.daemons.qmgr", "-c", str(inst.config_dir),
                                 "-n", "qmgr", "-t", "unix", "-u", "-l"]
    out = subprocess.run(["ps", "-ww", "-o", "args=", "-p", str(qmgr)], capture_output=True,
                         text=True).stdout.strip()
    assert out.endswith(f"-m pymailsys.daemons.qmgr -c {inst.config_dir} -n qmgr -t unix -u -l")


def test_import_environment_and_reload_reach_new_children(new_instance) -> None:  # type: ignore[no-untyped-def]
    inst = new_instance(maildir=True)
    inst.set(import_environment="MAIL_CONFIG LANG=C FORKSPAWN_SETTING=one")
    inst.tool("postfix", "start", check=True, env={"FORKSPAWN_SECRET": "not-for-children"})
    inst.running = True
    wait_until(inst._smtp_ready, what="smtpd")
    (first,) = inst.daemons()["smtpd"]
    env = environ(first)
    assert "FORKSPAWN_SETTING=one" in env
    assert "LANG=C" in env
    assert not [e for e in env if "FORKSPAWN_SECRET" in e or e.startswith("HOME=")]
    # master was started with it, and re-executed itself without it: no trace in a child
    assert "FORKSPAWN_SECRET" not in " ".join(environ(master_pid(inst)))
    if IS_ROOT:
        assert memory_holds(first, b"FORKSPAWN_SETTING=one")  # the search does find things
        assert not memory_holds(first, b"not-for-children")

    inst.set(import_environment="MAIL_CONFIG LANG=C FORKSPAWN_SETTING=two")
    inst.postfix("reload")
    inst.wait_log(r"postfix/master\[\d+\]: reload -- version")

    def new_smtpd() -> int | None:
        with smtplib.SMTP("127.0.0.1", inst.port, timeout=30) as s:
            s.noop()
        pids = [p for p in inst.daemons().get("smtpd", []) if p != first]
        return pids[0] if pids else None

    second = wait_until(new_smtpd, what="an smtpd of the new generation")
    assert isinstance(second, int)
    assert "FORKSPAWN_SETTING=two" in environ(second)
    assert "GENERATION=2" in environ(second)


def test_preload_covers_what_the_daemons_import() -> None:
    """Master's preload holds every daemon: importing one afterwards loads nothing new."""
    script = (
        "import sys\n"
        "from pymailsys.daemons.master import forking\n"
        "forking.preload()\n"
        "before = set(sys.modules)\n"
        "for name in ('smtpd', 'cleanup', 'qmgr', 'local', 'pickup', 'bounce', 'smtp',\n"
        "             'virtual', 'showq', 'anvil', 'flush', 'spawn', 'lmtp'):\n"
        "    __import__('pymailsys.daemons.' + name)\n"
        "print(' '.join(sorted(set(sys.modules) - before)))\n")
    result = subprocess.run([PYTHON, "-P", "-c", script], capture_output=True, text=True,
                            timeout=120, cwd="/")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [], result.stdout


def test_a_daemons_main_is_what_python_m_runs() -> None:
    """Master's child calls the preloaded module's main(): its entry point must do only that."""
    from pymailsys.daemons.master import forking

    for module in forking.daemon_modules():
        spec = importlib.util.find_spec(module)
        assert spec is not None and spec.origin is not None, module
        path = Path(spec.origin)
        if path.name == "__init__.py":
            tree = ast.parse((path.parent / "__main__.py").read_text())
            body = [n for n in tree.body if not isinstance(n, ast.Expr)
                    or not isinstance(n.value, ast.Constant)]
            assert [ast.unparse(n) for n in body] == [f"from {module} import main", "main()"], path
        else:
            tree = ast.parse(path.read_text())
            guards = [n for n in tree.body if isinstance(n, ast.If)
                      and ast.unparse(n.test) == "__name__ == '__main__'"]
            assert [ast.unparse(n.body[0]) for n in guards] == ["main()"], path
            assert all(len(n.body) == 1 and not n.orelse for n in guards), path
