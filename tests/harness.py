"""Test harness: a real, throw-away pymailsys instance on a free loopback port.

``Instance(tmpdir)`` writes an instance with ``pymailsys.instance.create`` (the
code of the quick start's ``instance create``, called in this process: test_postfix_command
and test_instance_links run the command) under a fresh directory: etc/ (main.cf,
master.cf, aliases), spool/, data/, mail/ (mailboxes), log/maillog. Extra
main.cf settings are appended (a later definition wins). ``start()`` runs
``postfix -c etc start`` and waits until smtpd answers; ``stop()`` runs
``postfix stop`` and then kills anything that still runs with this instance's
configuration directory on its command line, so a failed test leaves nothing
behind; ``cleanup()`` (after each test) kills master's process group and that at
once, and removes the directory.

Everything is driven through real commands and sockets: the tools run as
subprocesses (``tool``), mail goes in over SMTP (``smtp``), and assertions read
the mailbox files, the queue directories and the log (``MailView``, which
test_qmgr's standalone daemons share).

Evidence of a failed test: an instance is "live" from its creation until
``cleanup()`` (``MailView.watch``/``unwatch``); when a test fails in its
setup or its call, conftest's ``pytest_runtest_makereport`` attaches each live
system's ``evidence()`` to the failure report (shown under the failure, as a
section of its own): the tail of the maillog, the files in the queue and the
mailboxes with each message's Return-Path, X-Original-To and Subject. It is
bounded (EVIDENCE_* below) whatever the test left behind.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import random
import re
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from pymailsys import instance as instance_setup
from pymailsys.queue import spool

PYTHON = sys.executable
ME = pwd.getpwuid(os.getuid()).pw_name
IS_ROOT = os.geteuid() == 0


# Under pytest-xdist (scripts/check runs the suite in several worker processes) each
# worker draws the ports of its servers from a range of its own, below the kernel's
# ephemeral ports (32768-60999, which clients' source ports come from): a port one
# worker picked cannot be picked by another before its server binds it. conftest calls
# use_worker_ports in a worker; elsewhere (a benchmark or a pytest that a test starts)
# the kernel picks.
WORKER_PORTS = 1000  # each worker's range, 12000-21999 for ten (bench/compare.py: 22000 on)
_first_port = 0
_next_port = 0


def use_worker_ports(worker: int) -> None:
    """Draw free_port's ports from xdist worker number worker's range, from a random
    place in it (not in step with another run's worker)."""
    global _first_port, _next_port
    _first_port = 12000 + worker % 10 * WORKER_PORTS
    _next_port = random.randrange(WORKER_PORTS)


def free_port() -> int:
    """A loopback port nothing is bound to (under xdist, from this worker's range)."""
    global _next_port
    for _ in range(WORKER_PORTS if _first_port else 0):
        port = _first_port + _next_port
        _next_port = (_next_port + 1) % WORKER_PORTS
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def listening(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:port."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        return True
    except OSError:
        return False


_T = TypeVar("_T")


def wait_until(predicate: Callable[[], _T], timeout: float = 30.0, interval: float = 0.05,
               what: str = "condition") -> _T:
    """Poll predicate until it returns something true, and return that; fail after
    timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def cmdline(pid: int) -> list[str]:
    """The arguments of a running process ([] once it is gone)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


EVIDENCE_LOG_LINES = 80  # the maillog's last lines
EVIDENCE_LOG_BYTES = 64 * 1024  # read from the maillog's end to find them
EVIDENCE_LINE_CHARS = 300  # kept of each line
EVIDENCE_NAMES = 20  # files named per queue or mailbox directory
EVIDENCE_HEADER_BYTES = 8 * 1024  # read of each message for its headers
EVIDENCE_SHOWN_HEADERS = ("return-path", "x-original-to", "subject")
EVIDENCE_SYSTEMS = 4  # live systems whose evidence one report carries (the newest)

_live: list[MailView] = []


def live_systems() -> list[MailView]:
    """The systems made and not cleaned up yet, newest last."""
    return list(_live)


def _cut(line: str) -> str:
    return line if len(line) <= EVIDENCE_LINE_CHARS else line[:EVIDENCE_LINE_CHARS] + "..."


def _names(directory: Path) -> list[str]:
    """The files under directory (any depth), as paths relative to it, sorted."""
    found: list[str] = []
    for dirpath, _dirs, files in os.walk(directory):
        found.extend(os.path.relpath(os.path.join(dirpath, f), directory) for f in files)
    return sorted(found)


def _listed(names: list[str]) -> str:
    shown = ", ".join(names[:EVIDENCE_NAMES])
    more = len(names) - EVIDENCE_NAMES
    return f"{shown} (and {more} more)" if more > 0 else shown


def _headers_shown(path: Path) -> str:
    """The message's EVIDENCE_SHOWN_HEADERS, from its first EVIDENCE_HEADER_BYTES."""
    try:
        with open(path, "rb") as f:
            head = f.read(EVIDENCE_HEADER_BYTES).decode(errors="replace")
    except OSError as e:
        return f"({e.strerror})"
    shown = [line.strip() for line in head.split("\n\n", 1)[0].splitlines()
             if line.split(":", 1)[0].lower() in EVIDENCE_SHOWN_HEADERS]
    return _cut("; ".join(shown))


class MailView:
    """What a user would look at: the log, Maildirs, queue directories.

    Shared by ``Instance`` and test_qmgr's ``Standalone``; a class that mixes it in
    sets ``log_path``, ``mail_dir`` (mail_spool_directory) and ``queue_dir``, and
    calls ``watch()`` once they are set and ``unwatch()`` when it removes them.
    """

    log_path: Path
    mail_dir: Path
    queue_dir: Path

    def watch(self) -> None:
        _live.append(self)

    def unwatch(self) -> None:
        if self in _live:
            _live.remove(self)

    def evidence(self) -> str:
        """The maillog's tail, the queue's files and the mailboxes, bounded (EVIDENCE_*)."""
        out = [f"== maillog {self.log_path}, last {EVIDENCE_LOG_LINES} lines"]
        try:
            with open(self.log_path, "rb") as f:
                f.seek(max(0, os.fstat(f.fileno()).st_size - EVIDENCE_LOG_BYTES))
                tail = f.read().decode(errors="replace").splitlines()[-EVIDENCE_LOG_LINES:]
            out += [_cut(line) for line in tail]
        except OSError as e:
            out.append(f"({e.strerror})")
        out.append(f"== queue {self.queue_dir}")
        queued = [(queue, _names(self.queue_dir / queue))
                  for queue in spool.MESSAGE_QUEUES + spool.LOG_QUEUES]
        out += [f"{queue}: {_listed(names)}" for queue, names in queued if names] or ["(empty)"]
        out.append(f"== mailboxes {self.mail_dir}")
        try:
            boxes = sorted(self.mail_dir.iterdir())
        except OSError as e:
            boxes = []
            out.append(f"({e.strerror})")
        for box in boxes[:EVIDENCE_NAMES]:
            if not box.is_dir():
                out.append(f"{box.name}: mbox, {box.stat().st_size} bytes")
                continue
            for sub in ("tmp", "new", "cur"):
                names = _names(box / sub)
                out.append(f"{box.name}/{sub}: {len(names)} files")
                if sub != "tmp":
                    out += [f"  {name}: {_headers_shown(box / sub / name)}"
                            for name in names[:EVIDENCE_NAMES]]
        return "\n".join(out)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_log(self, pattern: str, timeout: float = 30, count: int = 1) -> list[str]:
        rx = re.compile(pattern)

        def found() -> list[str]:
            lines = [line for line in self.log().splitlines() if rx.search(line)]
            return lines if len(lines) >= count else []

        return wait_until(found, timeout, what=f"log line /{pattern}/ x{count}")

    def maildir(self, user: str = ME) -> Path:
        return self.mail_dir / user

    def maildir_messages(self, user: str = ME) -> list[bytes]:
        new = self.maildir(user) / "new"
        if not new.is_dir():
            return []
        return [p.read_bytes() for p in sorted(new.iterdir())]

    def queue_ids(self, queue: str) -> list[str]:
        out = []
        for _dirpath, _dirs, files in os.walk(self.queue_dir / queue):
            out.extend(files)
        return sorted(out)


class Instance(MailView):
    def __init__(self, base: Path | str | None = None, *, maildir: bool = True,
                 settings: dict[str, str] | None = None, port: int | None = None) -> None:
        if base is None:
            base = tempfile.mkdtemp(prefix="pymailsys-test-", dir="/tmp")
        self.base = Path(base)
        self.base.mkdir(parents=True, exist_ok=True)
        os.chmod(self.base, 0o755)
        self.port = port or free_port()
        self.use_maildir = maildir
        self.config_dir = self.base / "etc"
        self.queue_dir = self.base / "spool"
        self.mail_dir = self.base / "mail"
        self.log_path = self.base / "log" / "maillog"
        self.running = False
        try:
            instance_setup.create(str(self.base), port=self.port, host="127.0.0.1", maildir=maildir)
        except OSError as e:
            raise RuntimeError(f"instance create failed: {e.filename or self.base}: "
                               f"{e.strerror}") from e
        self.mail_dir.mkdir(exist_ok=True)
        os.chmod(self.mail_dir, 0o1777)
        self.watch()
        if settings:
            self.set(**settings)

    # configuration -----------------------------------------------------------
    def set(self, **settings: str) -> None:
        """Append main.cf settings (a later definition wins)."""
        with open(self.config_dir / "main.cf", "a") as f:
            for name, value in settings.items():
                f.write(f"{name} = {value}\n")

    def write(self, relative: str, text: str) -> Path:
        path = self.base / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    # commands ----------------------------------------------------------------
    def tool(self, name: str, *args: str, input: str | bytes | None = None,
             user: str | None = None, check: bool = False, timeout: float = 60,
             env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """Run one of our commands (python -m pymailsys.tools.NAME -c etc ARGS)."""
        module = {"mailq": "sendmail", "newaliases": "sendmail", "postalias": "postmap"}.get(name, name)
        argv = [PYTHON, "-m", f"pymailsys.tools.{module}"]
        if name in ("mailq", "newaliases"):
            argv = [PYTHON, "-c",
                    f"import sys; from pymailsys.tools.sendmail import {name}_main as m; "
                    f"sys.argv[0] = '{name}'; sys.exit(m())"]
        elif name == "postalias":
            argv = [PYTHON, "-c",
                    "import sys; from pymailsys.tools.postmap import postalias_main as m; "
                    "sys.argv[0] = 'postalias'; sys.exit(m())"]
        # sendmail and its aliases take Postfix's sendmail flag -C; the others take -c
        sendmail_like = name in ("sendmail", "mailq", "newaliases")
        argv += ["-C" if sendmail_like else "-c", str(self.config_dir)]
        argv += list(args)
        if user is not None and user != ME:
            argv = ["runuser", "-u", user, "--"] + argv
        full_env = dict(os.environ)
        full_env["MAIL_CONFIG"] = str(self.config_dir)
        if env:
            full_env.update(env)
        text = not isinstance(input, bytes)
        result = subprocess.run(argv, input=input, capture_output=True, text=text,
                                timeout=timeout, env=full_env, cwd="/")
        if check and result.returncode != 0:
            raise AssertionError(f"{name} {' '.join(args)} exited {result.returncode}:\n"
                                 f"{result.stdout}\n{result.stderr}")
        return result

    def postfix(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.tool("postfix", *args, check=check)

    def start(self, wait_smtp: bool = True) -> None:
        self.postfix("start")
        self.running = True
        if wait_smtp:
            wait_until(self._smtp_ready, 30, what=f"smtpd on port {self.port}")

    def _smtp_ready(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
                s.settimeout(10)
                return s.recv(512).startswith(b"220")
        except OSError:
            return False

    def stop(self) -> None:
        if self.running:
            self.postfix("stop", check=False)
            self.running = False
        self.kill_leftovers()

    def pids(self) -> list[int]:
        """Processes whose command line names this instance's config directory."""
        marker = str(self.config_dir)
        return [int(entry) for entry in os.listdir("/proc")
                if entry.isdigit() and int(entry) != os.getpid()
                and any(marker in arg for arg in cmdline(int(entry)))]

    def daemons(self) -> dict[str, list[int]]:
        """This instance's processes by daemon (``master``, ``smtpd``, ``qmgr``, ...)."""
        found: dict[str, list[int]] = {}
        for pid in self.pids():
            for arg in cmdline(pid):
                if arg.startswith("pymailsys.daemons."):
                    found.setdefault(arg.rsplit(".", 1)[1], []).append(pid)
        return found

    def kill_leftovers(self) -> None:
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def cleanup(self) -> None:
        """Stop at once and remove the instance. No ``postfix stop`` (its own Python
        process, and master's wait for its children): master's process group, then
        whatever still runs with this configuration directory, gets SIGKILL."""
        if self.running:
            self.running = False
            with contextlib.suppress(OSError, ValueError):
                pid = int((self.queue_dir / "pid" / "master.pid").read_text())
                if any(str(self.config_dir) == arg for arg in cmdline(pid)):  # not a stale pid
                    os.killpg(pid, signal.SIGKILL)
        self.kill_leftovers()
        self.unwatch()
        shutil.rmtree(self.base, ignore_errors=True)

    # SMTP --------------------------------------------------------------------
    def smtp(self, timeout: float = 30) -> smtplib.SMTP:
        return smtplib.SMTP("127.0.0.1", self.port, local_hostname="client.example", timeout=timeout)

    def send(self, sender: str, recipients: list[str] | str, message: bytes | str) -> str:
        """Send one message; returns the queue ID from the 250 reply."""
        if isinstance(recipients, str):
            recipients = [recipients]
        with self.smtp() as client:
            client.ehlo()
            client.mail(sender)
            for rcpt in recipients:
                code, text = client.rcpt(rcpt)
                if code != 250:
                    raise AssertionError(f"RCPT {rcpt}: {code} {text!r}")
            code, text = client.data(message)
            if code != 250:
                raise AssertionError(f"DATA: {code} {text!r}")
        m = re.search(rb"queued as (\w+)", text)
        assert m, text
        return m.group(1).decode()

    # what a user would look at (and MailView's) ------------------------------------
    def wait_maildir(self, count: int, user: str = ME, timeout: float = 60) -> list[bytes]:
        def enough() -> list[bytes]:
            msgs = self.maildir_messages(user)
            return msgs if len(msgs) >= count else []

        return wait_until(enough, timeout, what=f"{count} messages in {user}'s Maildir")

    def mbox(self, user: str = ME) -> bytes:
        try:
            return (self.mail_dir / user).read_bytes()
        except (FileNotFoundError, IsADirectoryError):
            return b""

    def queue_empty(self) -> bool:
        return not any(self.queue_ids(q) for q in ("incoming", "active", "deferred", "maildrop"))


@contextlib.contextmanager
def running_instance(**kwargs: object) -> Iterator[Instance]:
    inst = Instance(**kwargs)  # type: ignore[arg-type]
    try:
        inst.start()
        yield inst
    finally:
        inst.cleanup()


def have(program: str) -> bool:
    return shutil.which(program) is not None or os.path.exists(program)


def stop_process(proc: subprocess.Popen, timeout: float = 10) -> None:
    """Stop a server a test started (Dovecot, HAProxy): SIGTERM, then SIGKILL."""
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
