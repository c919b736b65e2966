"""qmgr with the real cleanup and local daemons, run standalone (``-L``) on a throw-away spool.

``Standalone`` starts cleanup, qmgr and local by hand (no master, no smtpd),
puts queue files into incoming/ the way cleanup does (QueueFileBuilder, fchmod
0700, fsync) or submits through public/cleanup, and checks what a user would:
mailbox bytes, log lines, queue directories, status logs.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import ME, MailView, wait_until

from pymailsys.delivery.agent import message_attrs, request_attrs
from pymailsys.ipc import trigger
from pymailsys.ipc.attr import AttrValue
from pymailsys.queue import status_log
from pymailsys.queue.queue_file import QueueFileBuilder, read_envelope
from pymailsys.queue.spool import Spool

TRANSPORT_ERROR = "unknown mail transport error"
SOCKETS = {"cleanup": "public/cleanup", "qmgr": "public/qmgr", "local": "private/local",
           "bounce": "private/bounce"}


class Standalone(MailView):
    def __init__(self, base: Path | None = None, maildir: bool = True, **settings: str) -> None:
        self.base = Path(base or tempfile.mkdtemp(prefix="pymailsys-qmgr-", dir="/tmp"))
        os.chmod(self.base, 0o755)
        for sub in ("etc", "mail", "log"):
            (self.base / sub).mkdir(exist_ok=True)
        os.chmod(self.base / "mail", 0o1777)
        self.etc = self.base / "etc"
        self.queue_dir = self.base / "spool"
        self.mail_dir = self.base / "mail"
        self.log_path = self.base / "log" / "maillog"
        self.watch()
        self.aliases("postmaster: root\n")
        from pymailsys.instance import shipped

        (self.etc / "master.cf").write_text(shipped("master.cf"))  # qmgr reads its commands
        values = {
            "queue_directory": str(self.queue_dir),
            "data_directory": str(self.base / "data"),
            "mail_spool_directory": f"{self.mail_dir}{'/' if maildir else ''}",
            "maillog_file": str(self.log_path),
            "maillog_file_prefixes": str(self.base),
            "myhostname": "test.example",
            "mydestination": "$myhostname, localhost",
            "alias_maps": f"hash:{self.etc / 'aliases'}",
            "minimal_backoff_time": "1s",
            "maximal_backoff_time": "2s",
        }
        values.update(settings)
        self.set(**values)
        from pymailsys import config
        from pymailsys.queue import setup as spool_setup

        spool_setup.create_missing(config.load(str(self.etc)))
        self.spool = Spool(str(self.queue_dir))
        self.procs: dict[str, subprocess.Popen] = {}

    def aliases(self, text: str) -> None:
        """Write etc/aliases and index it as postalias does."""
        from pymailsys.instance import build_aliases_db

        (self.etc / "aliases").write_text(text)
        build_aliases_db(str(self.etc / "aliases"))

    def set(self, **values: str) -> None:
        with open(self.etc / "main.cf", "a") as f:
            for k, v in values.items():
                f.write(f"{k} = {v}\n")

    def start(self, *names: str) -> None:
        for name in names or ("cleanup", "local", "bounce", "qmgr"):
            sock = self.queue_dir / SOCKETS[name]
            if sock.exists():
                sock.unlink()
            self.procs[name] = subprocess.Popen(
                [sys.executable, "-m", f"pymailsys.daemons.{name}", "-c", str(self.etc),
                 "-n", name, "-L", str(sock)],
                stdout=subprocess.DEVNULL, stderr=open(self.base / "log" / f"{name}.err", "ab"))
            wait_until(sock.exists, 20, what=f"{name} socket")

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs.pop(name)
        proc.send_signal(sig)
        proc.wait(20)
        if sig == signal.SIGKILL:
            (self.queue_dir / SOCKETS[name]).unlink(missing_ok=True)

    def stop(self) -> None:
        for name in list(self.procs):
            self.kill(name, signal.SIGTERM)

    def queue(self, sender: str, rcpts: list[str], text: bytes, kick: bool = True) -> str:
        b = QueueFileBuilder(time.time())
        b.sender(sender)
        for r in rcpts:
            b.recipient(r, orig=r)
        for line in text.split(b"\n")[:-1] if text.endswith(b"\n") else text.split(b"\n"):
            b.line(line)
        qid, path, fd = self.spool.create_queue_file("incoming")
        os.write(fd, b.build())
        os.fchmod(fd, 0o700)
        os.fsync(fd)
        os.close(fd)
        if kick:
            self.trigger(b"I")
        return qid

    def active_request(self, sender: str, rcpt: str, text: bytes) -> tuple[str, list[tuple[str, AttrValue]]]:
        """A message queued and moved to active/, and local's delivery request for its
        one recipient (what qmgr would send)."""
        qid = self.queue(sender, [rcpt], text, kick=False)
        env = read_envelope(self.spool.move(qid, "incoming", "active"))
        rc = env.recipients[0]
        common = message_attrs("active", qid, env.data_offset, env.content_size, env.arrival,
                               time.time(), env.sender)
        return qid, request_attrs(common, "test.example", rc.address, rc.orig, rc.offset)

    def trigger(self, data: bytes) -> bool:
        return trigger.send_trigger(str(self.queue_dir / "public" / "qmgr"), data)

    def queue_empty(self) -> bool:
        return not any(self.queue_ids(q) for q in ("incoming", "active", "deferred"))

    def cleanup(self) -> None:
        for proc in self.procs.values():
            proc.kill()
            proc.wait(10)
        self.procs.clear()
        self.unwatch()
        subprocess.run(["rm", "-rf", str(self.base)], check=False)


def standalone_systems():  # type: ignore[no-untyped-def]
    """A factory of Standalone systems, all removed afterwards (body of the fixtures)."""
    made: list[Standalone] = []

    def make(**kwargs: object) -> Standalone:
        s = Standalone(**kwargs)  # type: ignore[arg-type]
        made.append(s)
        return s

    yield make
    for s in made:
        s.cleanup()


@pytest.fixture
def system():  # type: ignore[no-untyped-def]
    yield from standalone_systems()


BODY = b"Subject: hello\nFrom: a@example.org\n\nline one\nFrom here\n.dot\n"


def test_delivery_to_maildir_exact_bytes_and_removal(system) -> None:  # type: ignore[no-untyped-def]
    s = system()
    s.start()
    qid = s.queue("alice@example.org", [f"{ME}@localhost"], BODY)
    s.wait_log(rf"{qid}: removed")
    (msg,) = s.maildir_messages()
    assert msg == (f"Return-Path: <alice@example.org>\nX-Original-To: {ME}@localhost\n"
                   f"Delivered-To: {ME}@localhost\n").encode() + BODY
    log = s.log()
    assert re.search(rf"postfix/qmgr\[\d+\]: {qid}: from=<alice@example\.org>, size=\d+, nrcpt=1 "
                     r"\(queue active\)", log)
    assert re.search(rf"postfix/local\[\d+\]: {qid}: to=<{ME}@localhost>, relay=local, "
                     r"delay=[\d.]+, delays=[\d.]+/[\d.]+/0/[\d.]+, dsn=2\.0\.0, "
                     r"status=sent \(delivered to maildir\)", log)
    assert s.queue_empty()


def test_unavailable_transport_defers_with_status_log_and_backoff(system) -> None:  # type: ignore[no-untyped-def]
    s = system(minimal_backoff_time="300s", maximal_backoff_time="4000s")
    s.start("qmgr")
    qid = s.queue("alice@example.org", ["bob@remote.example", f"{ME}@localhost"], BODY)
    s.wait_log(rf"{qid}: to=<bob@remote\.example>, relay=none, .*dsn=4\.3\.0, "
               r"status=deferred \(mail transport unavailable\)")
    s.wait_log(rf"{qid}: to=<{ME}@localhost>, relay=none, .*status=deferred \(mail transport unavailable\)")
    path = s.queue_dir / "deferred" / qid[0] / qid
    wait_until(path.exists, 20, what="hashed deferred file")
    assert 290 < os.stat(path).st_mtime - time.time() <= 300
    entries = status_log.read(str(s.queue_dir / "defer" / qid[0] / qid))
    assert [e.recipient for e in entries] == ["bob@remote.example", f"{ME}@localhost"]
    assert entries[0].action == "delayed" and entries[0].status == "4.3.0"
    env = read_envelope(str(path))
    assert entries[0].offset == env.recipients[0].offset
    assert not any(r.done for r in env.recipients)


def test_many_recipients_are_read_in_slices(system) -> None:  # type: ignore[no-untyped-def]
    """qmgr_message_recipient_limit 10: 60 recipients go through in slices of 10, each
    recipient once; the deferred half stays pending in the file, the rest is marked done."""
    s = system(qmgr_message_recipient_limit="10", qmgr_message_recipient_minimum="10",
               transport_maps="inline:{ gone.example=discard:gone, {later.example=retry:4.4.1 "
                              "try later} }")
    s.start("qmgr")
    rcpts = [f"r{i}@{'gone' if i % 2 else 'later'}.example" for i in range(60)]
    qid = s.queue("alice@example.org", rcpts, BODY)
    path = s.queue_dir / "deferred" / qid[0] / qid
    wait_until(path.exists, 30, what="the file in deferred/")
    log = s.log()
    assert re.search(rf"{qid}: from=<alice@example\.org>, size=\d+, nrcpt=60 \(queue active\)", log)
    sent = re.findall(rf"{qid}: to=<(r\d+)@gone\.example>, relay=none, .*status=sent \(gone\)", log)
    later = re.findall(rf"{qid}: to=<(r\d+)@later\.example>, relay=none, .*dsn=4\.4\.1, "
                       r"status=deferred \(try later\)", log)
    assert sorted(sent) == sorted(f"r{i}" for i in range(1, 60, 2))
    assert sorted(later) == sorted(f"r{i}" for i in range(0, 60, 2))
    env = read_envelope(str(path))
    assert [r.address for r in env.recipients if not r.done] == rcpts[::2]
    entries = status_log.read(str(s.queue_dir / "defer" / qid[0] / qid))
    assert [e.recipient for e in entries] == rcpts[::2]


def test_deferred_mail_survives_restart_and_is_delivered(system) -> None:  # type: ignore[no-untyped-def]
    s = system()
    s.set(alias_maps=f"hash:{s.base}/no-such-aliases")  # local defers: the table cannot answer
    s.start()
    qid = s.queue("alice@example.org", [f"{ME}@localhost"], BODY)
    s.wait_log(rf"{qid}: to=<{ME}@localhost>, .*dsn=4\.3\.0, status=deferred "
               r"\(alias database unavailable\)")
    wait_until(lambda: qid in s.queue_ids("deferred"), 20, what="deferred file")
    s.stop()
    assert qid in s.queue_ids("deferred")
    assert s.maildir_messages() == []
    s.set(alias_maps="")
    s.start()
    s.trigger(b"AD")
    s.wait_log(rf"{qid}: to=<{ME}@localhost>, .*status=sent \(delivered to maildir\)")
    s.wait_log(rf"{qid}: removed")
    (msg,) = s.maildir_messages()
    assert msg.endswith(BODY)
    assert not s.queue_ids("defer")


def test_recipient_starting_with_dash_never_reaches_an_agent(system) -> None:  # type: ignore[no-untyped-def]
    """allow_min_user = no: qmgr bounces "-x" itself (a pipe command could take it for an option)."""
    s = system()
    s.start()
    qid = s.queue("alice@example.org", ["-oQ/tmp/x@localhost", f"{ME}@localhost"], BODY)
    s.wait_log(rf"{qid}: to=<-oQ/tmp/x@localhost>, relay=none, .*dsn=5\.1\.3, "
               r"status=bounced \(bad address syntax\)")
    s.wait_log(rf"{qid}: removed")
    assert "-oQ/tmp/x" not in "\n".join(
        line for line in s.log().splitlines() if "postfix/local[" in line)
    assert len(s.maildir_messages()) == 1


def test_bounce_sends_dsn_through_cleanup(system) -> None:  # type: ignore[no-untyped-def]
    s = system()
    s.start()
    qid = s.queue("alice@example.org", ["nosuchuser@localhost", f"{ME}@localhost"], BODY)
    s.wait_log(rf"{qid}: to=<nosuchuser@localhost>, relay=local, .*dsn=5\.1\.1, "
               r'status=bounced \(unknown user: "nosuchuser"\)')
    (line,) = s.wait_log(rf"{qid}: sender non-delivery notification: \w+")
    new_id = line.rsplit(" ", 1)[1]
    s.wait_log(rf"{qid}: removed")
    # the DSN goes to alice@example.org: remote, so it waits in deferred/
    s.wait_log(rf"{new_id}: from=<>, size=\d+, nrcpt=1 \(queue active\)")
    s.wait_log(rf"{new_id}: to=<alice@example\.org>, relay=none, .*status=deferred")
    wait_until(lambda: new_id in s.queue_ids("deferred"), 20, what="DSN deferred")
    (path,) = [p for p in (s.queue_dir / "deferred").rglob(new_id)]
    data = path.read_bytes()
    assert b"Subject: Undelivered Mail Returned to Sender" in data
    assert b"From: Mail Delivery System <MAILER-DAEMON@test.example>" in data
    assert b"<nosuchuser@localhost>: unknown user: \"nosuchuser\"" in data
    assert b"Subject: hello" in data  # the original headers
    assert read_envelope(str(path)).sender == ""
    assert len(s.maildir_messages()) == 1


def test_failed_bounce_goes_to_2bounce_recipient(system) -> None:  # type: ignore[no-untyped-def]
    s = system()
    s.set(**{"2bounce_notice_recipient": f"{ME}@localhost", "notify_classes": "2bounce"})
    s.start()
    qid = s.queue("", ["nosuchuser@localhost"], BODY)
    s.wait_log(rf"{qid}: postmaster non-delivery notification: \w+")
    wait_until(lambda: s.maildir_messages(), 30, what="postmaster copy")
    (msg,) = s.maildir_messages()
    assert b"Subject: Postmaster Copy: Undelivered Mail" in msg
    assert msg.startswith(b"Return-Path: <double-bounce@test.example>\n")


def test_bounce_of_a_bounce_is_dropped_by_default(system) -> None:  # type: ignore[no-untyped-def]
    s = system()
    s.start()  # notify_classes has neither bounce nor 2bounce by default
    qid = s.queue("", ["nosuchuser@localhost"], BODY)
    s.wait_log(rf"{qid}: discarding undeliverable bounce")
    s.wait_log(rf"{qid}: removed")
    assert "non-delivery notification" not in s.log()


def test_expired_mail_is_returned(system) -> None:  # type: ignore[no-untyped-def]
    s = system(maximal_queue_lifetime="0")
    s.start()
    qid = s.queue("alice@example.org", ["bob@remote.example"], BODY)
    s.wait_log(rf"{qid}: from=<alice@example\.org>, status=expired, returned to sender")
    s.wait_log(rf"{qid}: sender non-delivery notification: \w+")
    s.wait_log(rf"{qid}: removed")


def test_corrupt_and_incomplete_files(system) -> None:  # type: ignore[no-untyped-def]
    s = system()
    s.start()
    bad = s.queue_dir / "incoming" / "ABCDEF12345"
    bad.write_bytes(b"C\x05hello garbage")
    os.chmod(bad, 0o700)
    half = s.queue_dir / "incoming" / "ABCDEF99999"
    half.write_bytes(b"")
    os.chmod(half, 0o600)
    s.trigger(b"I")
    s.wait_log(r'warning: saving corrupt file "ABCDEF12345" from queue "active" to queue "corrupt"')
    assert (s.queue_dir / "corrupt" / "ABCDEF12345").exists()
    time.sleep(0.5)
    assert half.exists()
    assert "ABCDEF99999" not in s.log()


def test_locked_file_is_skipped_and_put_back(system) -> None:  # type: ignore[no-untyped-def]
    import fcntl

    s = system()
    # Queued and locked while qmgr is stopped, so no scan of qmgr's can take the file
    # before the lock is held.
    qid = s.queue("alice@example.org", [f"{ME}@localhost"], BODY, kick=False)
    fd = os.open(s.spool.path("incoming", qid), os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_SH)  # a delivery agent of an earlier qmgr is still at work
    try:
        s.start("qmgr")
        s.trigger(b"I")
        s.wait_log(rf"{qid}: skipped, still being delivered")
        path = s.spool.path("incoming", qid)
        wait_until(lambda: os.path.exists(path), 10, what="file back in incoming")
        assert os.stat(path).st_mtime > time.time() + 30
    finally:
        os.close(fd)


def test_recovery_moves_active_back(system) -> None:  # type: ignore[no-untyped-def]
    s = system()
    qid = s.queue("alice@example.org", [f"{ME}@localhost"], BODY, kick=False)
    s.spool.move(qid, "incoming", "active")
    s.start()
    s.wait_log(rf"{qid}: removed")
    assert len(s.maildir_messages()) == 1


def test_crash_qmgr_and_local_under_load(system) -> None:  # type: ignore[no-untyped-def]
    """kill -9 qmgr, then local, during a 500-message run: all delivered, no duplicates."""
    s = system()
    s.start()
    total = 500
    tokens = [f"crash-{i:03d}" for i in range(total)]
    for i, token in enumerate(tokens):
        s.queue("load@example.org", [f"{ME}@localhost"], f"Subject: {token}\n\n{token}\n".encode(),
                kick=(i % 50 == 49))
    wait_until(lambda: len(s.maildir_messages()) >= 150, 120, interval=0.02, what="150 delivered")
    s.kill("qmgr")
    s.start("qmgr")
    wait_until(lambda: len(s.maildir_messages()) >= 300, 120, interval=0.02, what="300 delivered")
    s.kill("local")
    s.start("local")
    s.trigger(b"FADI")

    def subjects() -> list[str]:
        out = []
        for msg in s.maildir_messages():
            m = re.search(rb"^Subject: (crash-\d+)$", msg, re.M)
            if m:
                out.append(m.group(1).decode())
        return out

    def done() -> bool:
        s.trigger(b"AD")
        return set(tokens) <= set(subjects())

    wait_until(done, 180, interval=1.0, what="every message delivered")
    got = subjects()
    duplicates = len(got) - len(set(got))
    log = s.log()
    sent_lines = len(re.findall(r"status=sent \(delivered to maildir\)", log))
    transport_errors = log.count(TRANSPORT_ERROR)
    print(f"\nstandalone crash test: queued={total} delivered={len(set(got))} "
          f"duplicates={duplicates} agent-sent-lines={sent_lines} "
          f"requests-lost-with-local={transport_errors} skipped-locked={log.count('skipped, still')}")
    assert duplicates == 0
    wait_until(s.queue_empty, 60, what="empty queue")


def test_agent_pool_opens_a_connection_per_busy_agent(tmp_path: Path) -> None:
    """Requests go to an idle connection; all busy: a new one, up to the limit."""
    import asyncio

    from pymailsys.daemons.qmgr import AgentPool

    from pymailsys.ipc.attr import serve_pipelined

    async def run() -> tuple[int, int, list[int]]:
        path = str(tmp_path / "agent")
        clients: list[int] = []
        busy = 0
        peak = 0

        async def handler(attrs):  # type: ignore[no-untyped-def]
            nonlocal busy, peak
            busy += 1
            peak = max(peak, busy)
            await asyncio.sleep(0.05)
            busy -= 1
            return {"status": 0}

        async def serve(reader, writer):  # type: ignore[no-untyped-def]
            clients.append(1)
            await serve_pipelined(reader, writer, handler)

        srv = await asyncio.start_unix_server(serve, path)
        pool = AgentPool(path, limit=3, timeout=10, keep=1)

        async def request() -> None:
            conn = pool.take()
            try:
                await (await conn.client.send([("x", "1")]))
            finally:
                pool.give_back(conn)

        await asyncio.gather(*(request() for _ in range(6)))
        opened = len(pool.conns)
        loads = [c.load for c in pool.conns]
        await pool.reap(0)
        left = len(pool.conns)
        await pool.close()
        srv.close()
        return opened, left, [peak, len(clients)] + loads

    opened, left, info = asyncio.run(run())
    assert opened == 3, info  # never more than the limit
    assert info[1] == 3, info  # three agents, requests spread over them
    assert left == 1  # idle connections beyond "keep" are closed


SLOW_COMMAND = """#!/bin/sh
# One delivery: note its start, wait (bounded) until OUT/go exists, keep the message.
echo "start $$" >> OUT/events
i=0
while [ ! -e OUT/go ] && [ $i -lt 1200 ]; do sleep 0.05; i=$((i + 1)); done
cat > OUT/msg.$$
echo "end $$" >> OUT/events
"""


@pytest.fixture
def slow_command() -> Iterator[tuple[Path, Path]]:
    """A mailbox_command that holds each delivery until ``go`` exists, and the directory
    it writes to, which any user can reach (a command for root runs as default_privs)."""
    top = Path(tempfile.mkdtemp(prefix="pymailsys-slowcmd-", dir="/tmp"))
    os.chmod(top, 0o755)
    yield _slow_command(top)
    shutil.rmtree(top, ignore_errors=True)


def _slow_command(top: Path) -> tuple[Path, Path]:
    out = top / "out"
    out.mkdir()
    os.chmod(out, 0o1777)
    script = top / "deliver.sh"
    script.write_text(SLOW_COMMAND.replace("OUT", str(out)))
    script.chmod(0o755)
    return script, out


def events(out: Path) -> list[str]:
    path = out / "events"
    return path.read_text().split() if path.exists() else []


def test_concurrency_limit_1_holds_with_requests_queued_behind(system, slow_command) -> None:  # type: ignore[no-untyped-def]
    """local_destination_concurrency_limit = 1: while one delivery runs, the next ones
    wait (the next one queued in local's connection), never two at once."""
    script, out = slow_command
    s = system(local_destination_concurrency_limit="1", mailbox_command=str(script))
    s.start()
    qids = [s.queue("alice@example.org", [f"{ME}@localhost"], f"Subject: m{i}\n\nm{i}\n".encode())
            for i in range(4)]
    wait_until(lambda: len(events(out)) >= 2, 20, what="the first delivery running")
    wait_until(lambda: len(s.queue_ids("active")) == 4, 20, what="all four active")
    assert events(out)[::2] == ["start"]  # the others wait, though all are active
    (out / "go").touch()
    for qid in qids:
        s.wait_log(rf"{qid}: removed")
    seen = events(out)
    assert seen[::2] == ["start", "end"] * 4, seen  # one at a time, never two
    assert len(list(out.glob("msg.*"))) == 4


def test_local_killed_with_a_request_queued_behind(system, slow_command) -> None:  # type: ignore[no-untyped-def]
    """kill -9 local while it delivers one message and the next is queued in its
    connection: both are deferred, neither lost, and each is delivered exactly once."""
    script, out = slow_command
    s = system(local_destination_concurrency_limit="1", mailbox_command=str(script))
    s.start()
    first = s.queue("alice@example.org", [f"{ME}@localhost"], b"Subject: first\n\nfirst\n")
    wait_until(lambda: len(events(out)) >= 2, 20, what="the first delivery running")
    second = s.queue("alice@example.org", [f"{ME}@localhost"], b"Subject: second\n\nsecond\n")
    wait_until(lambda: second in s.queue_ids("active"), 20, what="the second active")
    s.kill("local")
    os.kill(int(events(out)[1]), signal.SIGKILL)  # local's command: it never wrote
    for qid in (first, second):
        s.wait_log(rf"{qid}: to=<{ME}@localhost>, relay=none, .*"
                   rf"status=deferred \({TRANSPORT_ERROR}\)")
    assert not list(out.glob("msg.*"))
    (out / "go").touch()
    s.start("local")

    def delivered() -> bool:
        s.trigger(b"AD")
        return s.queue_empty()

    wait_until(delivered, 60, interval=0.5, what="both delivered")
    bodies = sorted(p.read_bytes().rsplit(b"\n\n", 1)[1] for p in out.glob("msg.*"))
    assert bodies == [b"first\n", b"second\n"]  # each exactly once


def test_local_going_away_leaves_the_request_behind_to_another(new_instance, slow_command) -> None:  # type: ignore[no-untyped-def]
    """A local process that restarts (its alias table changed) while a request is queued
    behind its delivery in progress reads no further request: qmgr sends that one to a
    new local process at once, neither deferred nor lost."""
    script, out = slow_command
    inst = new_instance(maildir=True)
    inst.set(local_destination_concurrency_limit="1", mailbox_command=str(script))
    inst.start()
    first = inst.send("alice@example.org", f"{ME}@localhost", b"Subject: first\r\n\r\nfirst\r\n")
    wait_until(lambda: len(events(out)) >= 2, 20, what="the first delivery running")
    second = inst.send("alice@example.org", f"{ME}@localhost", b"Subject: second\r\n\r\nsecond\r\n")
    wait_until(lambda: second in inst.queue_ids("active"), 20, what="the second active")
    aliases = inst.config_dir / "aliases"
    aliases.write_text(aliases.read_text() + "someone: root\n")
    inst.tool("postalias", str(aliases), check=True)
    inst.wait_log(r"postfix/local\[\d+\]: table .*aliases has changed -- restarting")
    (out / "go").touch()
    lines = [inst.wait_log(rf"postfix/local\[\d+\]: {qid}: to=<{ME}@localhost>, relay=local, "
                           r".*status=sent")[0] for qid in (first, second)]
    pids = [re.search(r"local\[(\d+)\]", line).group(1) for line in lines]  # type: ignore[union-attr]
    assert pids[0] != pids[1]  # the old process read nothing after its last reply
    assert "status=deferred" not in inst.log()
    assert sorted(p.read_bytes().rsplit(b"\n\n", 1)[1] for p in out.glob("msg.*")) \
        == [b"first\n", b"second\n"]


def test_spool_paths(tmp_path: Path) -> None:
    flat = Spool(str(tmp_path) + "/")
    assert flat.path("active", "9211D235F71") == f"{tmp_path}/active/9211D235F71"
    hashed = Spool(str(tmp_path), ["deferred"], 2)
    assert hashed.path("deferred", "9211D235F71") == f"{tmp_path}/deferred/9/2/9211D235F71"
    assert hashed.path("incoming", "9211D235F71") == f"{tmp_path}/incoming/9211D235F71"


def test_hello_answered_by_the_serve_loop_with_how_many_requests_at_once(tmp_path: Path) -> None:
    """A connection that opens with the hello gets the server loop's answer first:
    requests_at_once 1 from serve_sequential (and serve_pipelined with max_pending=1),
    0 from serve_pipelined; a client without the hello sees nothing new, and a hello
    list later on a connection is an ordinary request."""
    import asyncio

    from pymailsys.ipc import attr

    async def handler(request: attr.AttrList) -> list[tuple[str, attr.AttrValue]]:
        return [("seen", len(request.pairs))]

    async def run() -> list[object]:
        stopping = asyncio.Event()
        loops = {
            "sequential": lambda r, w: attr.serve_sequential(r, w, handler, stopping),
            "pipelined": lambda r, w: attr.serve_pipelined(r, w, handler),
            "one": lambda r, w: attr.serve_pipelined(r, w, handler, max_pending=1),
        }
        servers = [await asyncio.start_unix_server(serve, str(tmp_path / name))
                   for name, serve in loops.items()]
        out: list[object] = []
        for name in loops:
            client = attr.AttrClient(str(tmp_path / name), timeout=10, hello="x_protocol")
            reply = await client.request([("a", "1"), ("b", "2")])
            assert client.greeting is not None
            out.append((name, client.greeting.text("protocol"),
                        client.greeting.number("requests_at_once"), reply.number("seen")))
            await client.close()
        plain = attr.AttrClient(str(tmp_path / "sequential"), timeout=10)
        out.append((await plain.request([("a", "1")])).number("seen"))
        out.append((await plain.request([("protocol", "x")])).number("seen"))
        out.append(plain.greeting)
        await plain.close()
        stopping.set()
        for server in servers:
            server.close()
            await server.wait_closed()
        return out

    assert asyncio.run(run()) == [("sequential", "x_protocol", 1, 2),
                                  ("pipelined", "x_protocol", 0, 2),
                                  ("one", "x_protocol", 1, 2), 1, 1, None]


STUB_MAIN = """
async def main():
    server = await asyncio.start_unix_server(serve, sys.argv[1])
    async with server:
        await server.serve_forever()

asyncio.run(main())
"""


@contextlib.contextmanager
def stub_agent(s: Standalone, serve: str, *args: str) -> Iterator[None]:
    """A delivery agent for transport ``slow``: a process running ``serve`` (the source
    of ``async def serve(reader, writer)``) on private/slow, given ``args``."""
    sock = s.queue_dir / "private" / "slow"
    stub = subprocess.Popen([sys.executable, "-c", serve + STUB_MAIN, str(sock), *args])
    s.procs["slow"] = stub
    try:
        wait_until(sock.exists, 20, what="the agent's socket")
        yield
    finally:
        s.procs.pop("slow", None)
        stub.kill()
        stub.wait(10)


SEQUENTIAL_STUB = """
import asyncio, sys
from pymailsys.ipc import attr

async def serve(reader, writer):
    async def handle(req):
        if not done:
            done.append(1)
            for _ in range(200):  # bounded: 10 s for qmgr to write the next request
                if reader._buffer:
                    break
                await asyncio.sleep(0.05)
            with open(sys.argv[2], "w") as f:
                f.write("behind" if reader._buffer else "alone")
        return [("status", "sent"), ("dsn", "2.0.0"), ("reason", "delivered")]
    await attr.serve_sequential(reader, writer, handle, asyncio.Event())

done = []
"""


def test_a_request_goes_behind_on_any_agent_that_says_it_serves_one_at_a_time(system) -> None:  # type: ignore[no-untyped-def]
    """The property is the agent's word, not its master.cf command: a transport
    ``slow`` whose agent serves one request at a time (its hello answer) gets the
    destination's next request written behind the one in progress."""
    s = system(local_transport="slow", slow_destination_concurrency_limit="1")
    result = s.base / "behind"
    with stub_agent(s, SEQUENTIAL_STUB, str(result)):
        s.start("qmgr")
        qids = [s.queue("alice@example.org", [f"{ME}@localhost"], b"Subject: m\n\nm\n")
                for _ in range(2)]
        for qid in qids:
            s.wait_log(rf"{qid}: removed")
        assert result.read_text() == "behind"


GOING_AWAY_STUB = """
import asyncio, sys
from pymailsys.ipc import attr

async def serve(reader, writer):
    connections.append(1)
    if len(connections) == 1:  # the agent goes away before it answers the hello:
        if sys.argv[2] == "eof":  # having read it (qmgr reads end of file)
            await attr.read_attrs(reader)
        else:  # leaving it unread (qmgr's read fails: connection reset)
            writer.transport.pause_reading()
            await asyncio.sleep(0.5)
        writer.close()
        return
    async def handle(req):
        return [("status", "sent"), ("dsn", "2.0.0"), ("reason", "delivered")]
    await attr.serve_sequential(reader, writer, handle, asyncio.Event())

connections = []
"""


@pytest.mark.parametrize("ending", ["eof", "reset"])
def test_an_agent_that_goes_away_before_its_hello_defers_nothing(system, ending) -> None:  # type: ignore[no-untyped-def]
    """An agent that master started just before a reload may take qmgr's connection and
    go away without answering the hello (seen with 30 reloads in 3 s under load: four
    messages deferred, ``unknown mail transport error``), qmgr then reading end of
    file, or a reset when the agent left the hello unread. Nothing but the
    hello went out on that connection, so qmgr opens another one rather than defer
    the mail for a backoff."""
    s = system(local_transport="slow")
    with stub_agent(s, GOING_AWAY_STUB, ending):
        s.start("qmgr")
        qid = s.queue("alice@example.org", [f"{ME}@localhost"], b"Subject: m\n\nm\n")
        s.wait_log(rf"{qid}: removed")
        assert "status=deferred" not in s.log()


READ_NOTHING_STUB = """
import asyncio, sys
from pymailsys.ipc import attr

async def serve(reader, writer):
    hello = await attr.read_attrs(reader)
    if hello is None:
        return
    writer.write(attr.encode([hello.pairs[0], ("requests_at_once", 1)]))
    if await attr.read_attrs(reader) is not None:  # a local restarting: it reads nothing
        with open(sys.argv[2], "a") as f:
            f.write("request\\n")
        writer.write(attr.encode([(attr.GOODBYE, attr.GOODBYE_READ_NOTHING)]))
    writer.close()
"""


def test_an_agent_that_never_reads_a_request_gets_it_a_bounded_number_of_times(system) -> None:  # type: ignore[no-untyped-def]
    """An agent that says goodbye (``read_nothing``) to every request, as a local that
    restarts in a loop would: qmgr sends the request again a few times, then defers its
    recipient as Postfix's qmgr does for a delivery agent that went away (``4.3.0``,
    ``unknown mail transport error``, the warning that names the transport) and leaves
    the transport alone for ``transport_retry_time``: mail for it meanwhile is deferred
    untried, and the agent sees no further request."""
    s = system(local_transport="slow", transport_retry_time="1h")
    seen = s.base / "requests"

    def requests() -> int:
        return len(seen.read_text().splitlines()) if seen.exists() else 0

    with stub_agent(s, READ_NOTHING_STUB, str(seen)):
        s.start("qmgr")
        first = s.queue("alice@example.org", [f"{ME}@localhost"], b"Subject: m\n\nm\n")
        s.wait_log(rf"{first}: to=<{ME}@localhost>, relay=none, .*dsn=4\.3\.0, "
                   rf"status=deferred \({TRANSPORT_ERROR}\)", timeout=20)
        s.wait_log(r"warning: transport slow failure -- see a previous warning/fatal/panic "
                   r"logfile record for the problem description")
        tried = requests()
        assert 1 < tried <= 5
        second = s.queue("alice@example.org", [f"{ME}@localhost"], b"Subject: n\n\nn\n")
        s.wait_log(rf"{second}: to=<{ME}@localhost>, relay=none, .*dsn=4\.3\.0, "
                   rf"status=deferred \({TRANSPORT_ERROR}\)")
        assert requests() == tried
        assert sorted(s.queue_ids("deferred")) == sorted([first, second])
