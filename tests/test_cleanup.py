"""cleanup: the real daemon, started standalone (-L) on a temporary spool.

Requests go in over public/cleanup with the library's attribute clients; the
assertions read what a user would check: the reply, the queue file (mode,
pymailsys's reader, and Debian's own /usr/sbin/postcat), the log lines, and the
qmgr wake-up that arrives on public/qmgr (served by the skeleton's trigger mode).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import bench_module, require_tool
from harness import wait_until

from pymailsys import config as config_mod
from pymailsys import server
from pymailsys.ipc.attr import AttrClient, SyncAttrClient, encode
from pymailsys.queue.queue_file import content_lines, read_envelope, read_envelope_bytes
from pymailsys.queue.spool import Spool

POSTCAT = "/usr/sbin/postcat"
HERE = Path(__file__).parent
GOLDEN = HERE / "golden" / "cleanup_smtpd.queue"
SPOOL_DIRS = ("incoming", "active", "deferred", "hold", "corrupt", "maildrop", "public",
              "private", "pid", "bounce", "defer", "trace", "saved", "flush")


@dataclass
class Setup:
    base: Path
    etc: Path
    spool: Path
    pfetc: Path
    log: Path
    procs: list[subprocess.Popen[bytes]]

    @property
    def socket(self) -> str:
        return str(self.spool / "public" / "cleanup")

    def log_text(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def incoming(self, queue_id: str) -> Path:
        return self.spool / "incoming" / queue_id

    def postcat(self, path: Path) -> str:
        out = subprocess.run([require_tool(POSTCAT), "-c", str(self.pfetc), str(path)],
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        return out.stdout


def _write_config(base: Path, extra: str = "") -> Setup:
    etc, spool, pfetc = base / "etc", base / "spool", base / "pfetc"
    for d in (etc, pfetc):
        d.mkdir()
    for name in SPOOL_DIRS:
        (spool / name).mkdir(parents=True)
    (pfetc / "main.cf").write_text("")
    log = base / "maillog"
    (etc / "main.cf").write_text(
        f"queue_directory = {spool}\n"
        "myhostname = mx.example.com\n"
        "mydomain = example.com\n"
        "myorigin = $myhostname\n"
        f"maillog_file = {log}\n"
        "message_size_limit = 100000\n" + extra)
    return Setup(base, etc, spool, pfetc, log, [])


def _start(setup: Setup, *args: str, env: dict[str, str] | None = None,
           prefix: tuple[str, ...] = ()) -> None:
    """Python with ``args``, run under ``prefix`` (a tracer) when given."""
    proc = subprocess.Popen([*prefix, sys.executable, *args], env={**os.environ, **(env or {})},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    setup.procs.append(proc)


@pytest.fixture(scope="module")
def cleanup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    setup = _write_config(tmp_path_factory.mktemp("cleanup"))
    qmgr = str(setup.spool / "public" / "qmgr")
    _start(setup, str(HERE / "pmsfixtures" / "triggerlog.py"), "-c", str(setup.etc), "-n", "qmgr",
           "-L", qmgr)
    wait_until(lambda: os.path.exists(qmgr), timeout=30, what="qmgr trigger socket")
    _start_cleanup(setup, env={"TZ": "Australia/Sydney"})
    yield setup
    for proc in setup.procs:
        proc.terminate()
    for proc in setup.procs:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _start_cleanup(setup: Setup, env: dict[str, str] | None = None,
                   prefix: tuple[str, ...] = (), timeout: float = 30) -> None:
    """The cleanup daemon standalone on setup's public/cleanup (under ``prefix``, a
    tracer, when given), once it answers."""
    _start(setup, "-m", "pymailsys.daemons.cleanup", "-c", str(setup.etc), "-L", setup.socket,
           env=env, prefix=prefix)

    def ready() -> bool:
        try:
            SyncAttrClient(setup.socket, timeout=5).close()
            return True
        except OSError:
            return False

    wait_until(ready, timeout=timeout, what="cleanup socket")


def _smtpd_request(**over: object) -> dict[str, object]:
    req: dict[str, object] = {
        "origin": "smtpd", "sender": "alice@example.org", "rcpt": ["bob@example.com"],
        "content": (b"From: Alice <alice@example.org>\nTo: bob@example.com\n"
                    b"Subject: test\nDate: Sat, 22 Aug 2026 16:28:33 +1000\n"
                    b"Message-ID: <m1@example.org>\n\nbody line\n"),
        "client_name": "client.example.org", "client_addr": "192.0.2.1",
        "client_port": "40000", "helo_name": "helo.example.org", "protocol": "ESMTP",
        "rewrite_context": "remote", "flags": 0, "encoding": "",
    }
    req.update(over)
    return req


def _pickup_request(**over: object) -> dict[str, object]:
    req: dict[str, object] = {
        "origin": "pickup", "sender": "alice", "rcpt": ["bob"], "uid": 1000,
        "full_name": "Alice Example", "rewrite_context": "local", "flags": 0,
        "content": b"Subject: local test\n\nhello\n",
    }
    req.update(over)
    return req


def _send(setup: Setup, req: dict[str, object]) -> dict[str, str]:
    with SyncAttrClient(setup.socket) as client:
        reply = client.request(req)
    return {n: v.decode() for n, v in reply.pairs}


def _content(postcat_out: str) -> str:
    return postcat_out.split("*** MESSAGE CONTENTS", 1)[1].split("\n", 1)[1].split(
        "*** HEADER EXTRACTED", 1)[0]


def test_pickup_gets_received_message_id_date_from(cleanup: Setup) -> None:
    reply = _send(cleanup, _pickup_request(rcpt=["bob", "bob", "carol@example.net"]))
    assert reply["status"] == "0" and reply["dsn"] == "2.0.0"
    qid = reply["queue_id"]
    path = cleanup.incoming(qid)
    assert stat.S_IMODE(path.stat().st_mode) == 0o700
    env = read_envelope(str(path))
    assert env.sender == "alice@mx.example.com"
    assert [r.address for r in env.recipients] == ["bob@mx.example.com", "carol@example.net"]
    assert env.full_name == "Alice Example"
    assert env.attrs["rewrite_context"] == "local"

    out = cleanup.postcat(path)
    assert "sender: alice@mx.example.com\n" in out
    assert "sender_fullname: Alice Example\n" in out
    assert "recipient: bob@mx.example.com\n" in out and "original_recipient: bob\n" in out
    assert out.count("\nrecipient: ") == 2
    text = _content(out)
    lines = text.splitlines()
    assert lines[0] == "Received: by mx.example.com (Postfix, from userid 1000)"
    assert re.fullmatch(rf"\tid {qid}; \w\w\w, [ \d]\d \w\w\w \d{{4}} \d\d:\d\d:\d\d "
                        r"\+1[01]00 \(AE[SD]T\)", lines[1])
    assert lines[2] == "Subject: local test"
    assert re.fullmatch(rf"Message-Id: <\d{{14}}\.{qid}@mx\.example\.com>", lines[3])
    assert lines[4].startswith("Date: ") and lines[4][6:] == lines[1].split("; ", 1)[1]
    assert lines[5] == "From: Alice Example <alice@mx.example.com>"
    assert lines[6:] == ["", "hello"]
    mid = lines[3].split(": ", 1)[1]
    assert "postfix/cleanup[" in cleanup.log_text()
    assert f"]: {qid}: message-id={mid}\n" in cleanup.log_text()


def test_smtpd_keeps_headers_and_prepends_received(cleanup: Setup) -> None:
    reply = _send(cleanup, _smtpd_request(content=(
        b"From: Alice <alice@example.org>\nTo: bob@example.com\nBcc: hidden@example.org\n"
        b"Return-Path: <x@y>\nSubject: test\n  folded\nDate: Sat, 22 Aug 2026 16:28:33 +1000\n"
        b"Message-ID: <m1@example.org>\n\nbody line\nBcc: stays in the body\n")))
    assert reply["status"] == "0"
    qid = reply["queue_id"]
    out = cleanup.postcat(cleanup.incoming(qid))
    assert "sender: alice@example.org\n" in out
    for rec in ("log_client_name=client.example.org", "log_client_address=192.0.2.1",
                "log_client_port=40000", "log_message_origin=client.example.org[192.0.2.1]",
                "log_helo_name=helo.example.org", "log_protocol_name=ESMTP",
                "client_address=192.0.2.1", "rewrite_context=remote"):
        assert f"named_attribute: {rec}\n" in out
    lines = _content(out).splitlines()
    assert lines[0] == "Received: from helo.example.org (client.example.org [192.0.2.1])"
    assert lines[1] == f"\tby mx.example.com (Postfix) with ESMTP id {qid}"
    assert re.fullmatch(r"\tfor <bob@example\.com>; .* \(AE[SD]T\)", lines[2])
    assert lines[3:] == ["From: Alice <alice@example.org>", "To: bob@example.com",
                         "Subject: test", "  folded", "Date: Sat, 22 Aug 2026 16:28:33 +1000",
                         "Message-ID: <m1@example.org>", "", "body line",
                         "Bcc: stays in the body"]
    assert f"{qid}: message-id=<m1@example.org>\n" in cleanup.log_text()


def test_runs_of_equal_lines_read_back_in_debian_postcat(cleanup: Setup) -> None:
    """Lines of one length in a row (base64) are encoded in bulk: Postfix's own postcat
    reads them back line for line, with a shorter line inside a run, lines of 127 and 128
    bytes (one and two length bytes) and lines over line_length_limit."""
    b64 = [bytes(b"ABCN%c" % (i % 26 + 65)) * 15 + b"L" for i in range(500)]
    body = (b64[:200] + [b"short"] + b64[200:] + [b"=" * 20] + [b"N" * 127] * 40
            + [b"\x80" * 128] * 40 + [b"x" * 2100] * 20 + [b""] * 30 + [b"end"])
    content = b"Subject: runs\n\n" + b"".join(line + b"\n" for line in body)
    reply = _send(cleanup, _smtpd_request(content=content))
    assert reply["status"] == "0", reply
    out = subprocess.run([require_tool(POSTCAT), "-c", str(cleanup.pfetc),
                          str(cleanup.incoming(reply["queue_id"]))], capture_output=True,
                         timeout=30)
    assert out.returncode == 0, out.stderr
    text = out.stdout.split(b"*** MESSAGE CONTENTS", 1)[1].split(b"\n", 1)[1].split(
        b"*** HEADER EXTRACTED", 1)[0]
    assert text.split(b"\n")[3:-1] == [b"Subject: runs", b"", *body]


def test_smtpd_several_recipients_and_no_message_id(cleanup: Setup) -> None:
    reply = _send(cleanup, _smtpd_request(
        rcpt=["bob@example.com", "carol@example.com", "bob@example.com"],
        client_addr="2001:db8::1", protocol="SMTP", content=b"Subject: x\n\nno ids here\n"))
    assert reply["status"] == "0"
    qid = reply["queue_id"]
    path = cleanup.incoming(qid)
    env = read_envelope(str(path))
    assert [r.address for r in env.recipients] == ["bob@example.com", "carol@example.com"]
    out = cleanup.postcat(path)
    assert "named_attribute: log_client_address=IPv6:2001:db8::1\n" in out
    lines = _content(out).splitlines()
    assert lines[0] == "Received: from helo.example.org (client.example.org [IPv6:2001:db8::1])"
    assert lines[1] == f"\tby mx.example.com (Postfix) with SMTP id {qid};"
    assert re.fullmatch(r"\t\w\w\w, .* \(AE[SD]T\)", lines[2])
    # remote submission: nothing added
    assert lines[3:] == ["Subject: x", "", "no ids here"]
    assert f"{qid}: message-id=<>\n" in cleanup.log_text()


def test_envelope_rewriting(cleanup: Setup) -> None:
    reply = _send(cleanup, _pickup_request(
        sender="MAILER-DAEMON", rcpt=["host.example!user", "joe%other.example", "@r1,@r2:x@y.example",
                                      "dot@end.example."]))
    env = read_envelope(str(cleanup.incoming(reply["queue_id"])))
    assert env.sender == ""
    assert [r.address for r in env.recipients] == [
        "user@host.example", "joe@other.example", "x@y.example", "dot@end.example"]
    assert [r.orig for r in env.recipients][0] == "host.example!user"
    out = cleanup.postcat(cleanup.incoming(reply["queue_id"]))
    assert "sender: \n" in out
    assert "\nFrom: MAILER-DAEMON\n" in _content(out)


def test_too_big_is_refused_and_leaves_no_file(cleanup: Setup) -> None:
    before = set(os.listdir(cleanup.spool / "incoming"))
    reply = _send(cleanup, _smtpd_request(content=b"Subject: big\n\n" + b"x" * 99 + b"\n" * 1000
                                          + b"y" * 1000 * 150))
    assert (reply["status"], reply["dsn"], reply["reason"]) == (
        "552", "5.3.4", "Error: message file too big")
    assert "queue_id" not in reply
    assert set(os.listdir(cleanup.spool / "incoming")) == before
    assert re.search(r"warning: [0-9A-F]+: queue file size limit exceeded", cleanup.log_text())


def test_too_many_hops(cleanup: Setup) -> None:
    before = set(os.listdir(cleanup.spool / "incoming"))
    hops = b"".join(b"Received: from h%d by x; Sat, 22 Aug 2026 16:28:33 +1000\n" % i
                    for i in range(49))
    reply = _send(cleanup, _smtpd_request(content=hops + b"Subject: loop\n\nbody\n"))
    assert (reply["status"], reply["dsn"], reply["reason"]) == (
        "554", "5.4.0", "Error: too many hops")
    assert set(os.listdir(cleanup.spool / "incoming")) == before
    assert re.search(r"warning: [0-9A-F]+: message rejected: hopcount exceeded", cleanup.log_text())
    # one hop fewer passes
    reply = _send(cleanup, _smtpd_request(content=hops[hops.index(b"\n") + 1:] + b"\nbody\n"))
    assert reply["status"] == "0"


def test_hold_flag_puts_the_file_in_hold(cleanup: Setup) -> None:
    reply = _send(cleanup, _smtpd_request(flags=4))
    qid = reply["queue_id"]
    assert not cleanup.incoming(qid).exists()
    held = cleanup.spool / "hold" / qid
    assert stat.S_IMODE(held.stat().st_mode) == 0o700
    assert "recipient: bob@example.com\n" in cleanup.postcat(held)


def test_no_recipients(cleanup: Setup) -> None:
    reply = _send(cleanup, _smtpd_request(rcpt=[]))
    assert (reply["status"], reply["dsn"]) == ("550", "5.1.0")


def test_long_lines_are_split_into_records(cleanup: Setup) -> None:
    long_line = b"z" * 5000
    reply = _send(cleanup, _smtpd_request(content=b"Subject: long\n\n" + long_line + b"\nend\n"))
    path = cleanup.incoming(reply["queue_id"])
    assert long_line.decode() + "\nend\n" in cleanup.postcat(path)
    data = path.read_bytes()
    assert data.count(b"L\x80\x10" + b"z" * 2048) == 2  # two full 2048-byte L records


def test_twenty_pipelined_requests_on_one_connection(cleanup: Setup) -> None:
    async def run() -> list[dict[str, str]]:
        client = AttrClient(cleanup.socket)
        try:
            replies = await asyncio.gather(*[
                client.request(_smtpd_request(content=f"Subject: n{i}\n\nmessage {i}\n".encode()))
                for i in range(20)])
        finally:
            await client.close()
        return [{n: v.decode() for n, v in r.pairs} for r in replies]

    replies = asyncio.run(run())
    ids = [r["queue_id"] for r in replies]
    assert all(r["status"] == "0" for r in replies)
    assert len(set(ids)) == 20
    for i, qid in enumerate(ids):  # each reply belongs to its own request
        data = cleanup.incoming(qid).read_bytes()
        assert f"Subject: n{i}".encode() in data and f"message {i}".encode() in data
        assert read_envelope_bytes(data).sender == "alice@example.org"


def test_qmgr_is_woken_on_public_qmgr(cleanup: Setup) -> None:
    """The trigger names the new file: ``<queue ID in lower-case hex>``, no plain letters."""
    reply = _send(cleanup, _smtpd_request())
    record = "<" + reply["queue_id"].encode().hex() + ">"
    wait_until(lambda: "postfix/triggerlog[" in cleanup.log_text()
               and record in cleanup.log_text(), timeout=30, what="qmgr trigger")
    assert set(record[1:-1]) <= set("0123456789abcdef")


def test_named_ids_survive_a_cut_and_plain_bytes() -> None:
    """qmgr takes named IDs from trigger reads cut anywhere; plain bytes still count."""
    from pymailsys.ipc.trigger import NamedIdReader, encode_named_ids

    ids = ["4ZxQ2BcD3Fz1", "3F2A11C0D7E"]
    data = encode_named_ids(ids)
    assert not set(data) & set(b"IWDAF")
    for cut in range(len(data) + 1):
        reader = NamedIdReader()
        rest1, ids1, bad1 = reader.feed(data[:cut])
        rest2, ids2, bad2 = reader.feed(data[cut:] + b"W")
        assert (rest1, rest2) == (b"", b"W")
        assert ids1 + ids2 == ids and not bad1 and not bad2
    # a record interrupted by another client's bytes: those still count, and it is damaged
    reader = NamedIdReader()
    reader.feed(data[:5])
    rest, found, damaged = reader.feed(b"AD")
    assert damaged and rest == b"AD" and found == []


# -- pure parts -----------------------------------------------------------------


def _with_tz(tz: str) -> Iterator[None]:
    old = os.environ.get("TZ")
    os.environ["TZ"] = tz
    time.tzset()
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TZ", None)
        else:
            os.environ["TZ"] = old
        time.tzset()


@pytest.fixture
def sydney() -> Iterator[None]:
    yield from _with_tz("Australia/Sydney")


def test_mail_date_is_postfix_format(sydney: None) -> None:
    from pymailsys.mail_date import mail_date

    assert mail_date(1787380113) == "Sat, 22 Aug 2026 16:28:33 +1000 (AEST)"
    assert mail_date(1788220800) == "Tue,  1 Sep 2026 10:00:00 +1000 (AEST)"
    assert mail_date(1798722000) == "Fri,  1 Jan 2027 00:00:00 +1100 (AEDT)"


@pytest.mark.parametrize(("zone", "when", "text"), [
    # offsets with seconds: Postfix's minutes follow the time's seconds, and a negative
    # offset under an hour loses its sign (Postfix's hours/minutes arithmetic)
    ("Europe/Amsterdam", -1262303980, "Wed,  1 Jan 1930 00:19:52 +0019 (AMT)"),
    ("Europe/Amsterdam", -1262303960, "Wed,  1 Jan 1930 00:20:12 +0020 (AMT)"),
    ("Africa/Monrovia", 0, "Wed, 31 Dec 1969 23:15:30 +0045 (MMT)"),
    ("Asia/Kathmandu", 1787380113, "Sat, 22 Aug 2026 12:13:33 +0545 (+0545)"),
    ("America/St_Johns", 1798722000, "Thu, 31 Dec 2026 09:30:00 -0330 (NST)"),
    ("America/New_York", 1772953199, "Sun,  8 Mar 2026 01:59:59 -0500 (EST)"),
    ("America/New_York", 1772953200, "Sun,  8 Mar 2026 03:00:00 -0400 (EDT)"),
    ("Pacific/Kiritimati", 1787380113, "Sat, 22 Aug 2026 20:28:33 +1400 (+14)"),
    ("Etc/GMT+12", 1787380113, "Fri, 21 Aug 2026 18:28:33 -1200 (-12)"),
])
def test_mail_date_offset_and_zone_as_postfix_computes_them(zone: str, when: int,
                                                           text: str) -> None:
    """The offset and zone name come from one localtime() where its offset is whole
    minutes, else from Postfix's comparison of local and UTC times: either way the
    text of Postfix 3.7's mail_date() (these from the comparison for every case).
    (mail_date's own cache of the last second would ignore the change of zone.)"""
    from pymailsys.mail_date import _format

    with contextlib.contextmanager(_with_tz)(zone):
        assert _format(when) == text


def test_golden_queue_file_bytes(tmp_path: Path, sydney: None) -> None:
    """For fixed inputs (queue ID, clock, time zone) the file is byte for byte the same."""
    from pymailsys.daemons.cleanup import Cleanup

    from pymailsys.ipc.attr import AttrList

    setup = _write_config(tmp_path)
    cfg = config_mod.load(str(setup.etc))
    ctx = server.Context(cfg, Spool.from_config(cfg), "cleanup", "cleanup", "unix", [])
    service = Cleanup(ctx)
    req = _smtpd_request(rcpt=["bob@example.com", "carol"], notify=["6", "0"],
                         envid="env-1", ret="HDRS", encoding="8bitmime")
    pairs = [(name, v if isinstance(v, bytes) else str(v).encode())
             for name, value in req.items()
             for v in (value if isinstance(value, list) else [value])]
    data, outcome = service.assemble(AttrList(pairs), "4A1B2C3D4E5", 1787380113.25)
    assert outcome.message_ids == ["<m1@example.org>"]
    if os.environ.get("PYMAILSYS_REGOLD"):
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_bytes(data)
    assert data == GOLDEN.read_bytes()
    path = tmp_path / "4A1B2C3D4E5"
    path.write_bytes(data)
    out = setup.postcat(path)
    assert "named_attribute: dsn_envid=env-1\nnamed_attribute: dsn_ret=2\nsender: alice@example.org\n" in out
    assert "named_attribute: notify_flags=6\noriginal_recipient: bob@example.com\n" in out
    assert "recipient: carol@mx.example.com\n" in out
    assert "\tfor" not in out


@pytest.mark.root
def test_write_error_is_451_and_leaves_no_file(tmp_path: Path) -> None:
    """A full queue file system: the write fails, the client gets 451, the file is gone."""
    spool = tmp_path / "spool"
    spool.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(spool)], check=True)
    setup: Setup | None = None
    try:
        setup = _write_config(tmp_path, "message_size_limit = 10240000\n")
        _start(setup, "-m", "pymailsys.daemons.cleanup", "-c", str(setup.etc), "-L", setup.socket)
        wait_until(lambda: os.path.exists(setup.socket), timeout=30, what="cleanup socket")
        time.sleep(0.2)
        reply = _send(setup, _smtpd_request(content=b"Subject: big\n\n" + b"x" * 100 * 5000))
        assert (reply["status"], reply["dsn"], reply["reason"]) == (
            "451", "4.3.0", "Error: queue file write error")
        assert os.listdir(setup.spool / "incoming") == []
        assert re.search(r"warning: [0-9A-F]+: write queue file: No space left on device",
                         setup.log_text())
        # the next message that fits is accepted
        assert _send(setup, _smtpd_request())["status"] == "0"
    finally:
        if setup is not None:
            for proc in setup.procs:
                proc.terminate()
                proc.wait(timeout=10)
        subprocess.run(["umount", str(spool)], check=False)


def test_commits_of_one_event_loop_turn_are_synced_as_one_group(tmp_path: Path) -> None:
    """Many commits at once: one group of fsyncs, and each returns with its file
    complete, in place and written."""
    import asyncio

    from pymailsys.daemons.cleanup.writer import QueueWriter

    from pymailsys.queue import spool as q

    (tmp_path / q.INCOMING).mkdir()
    (tmp_path / q.HOLD).mkdir()
    spool = q.Spool(str(tmp_path))

    writer = QueueWriter(spool)

    async def run() -> list[str]:
        async def one(n: int) -> str:
            _qid, path, fd = writer.create()
            return await writer.commit(fd, path, [b"file %d\n" % n],
                                       q.HOLD if n == 0 else q.INCOMING)
        return await asyncio.gather(*(one(n) for n in range(20)))

    paths = asyncio.run(run())
    assert (writer.batches, writer.files) == (1, 20)
    assert "/hold/" in paths[0] and all("/incoming/" in p for p in paths[1:])
    for n, p in enumerate(paths):
        assert Path(p).read_bytes() == b"file %d\n" % n
        assert q.is_complete(os.stat(p).st_mode)


def _device_flushes(device: str) -> int:
    """The flush requests a block device has completed (its stat file's 16th field)."""
    fields = Path(f"/sys/block/{os.path.basename(device)}/stat").read_text().split()
    return int(fields[15])


@pytest.mark.root
def test_the_files_of_a_group_share_one_journal_commit_and_its_flush() -> None:
    """The fsyncs of one group run at the same time, so on a journaled ext4 they
    wait for one commit and its cache flush. Done one after the other, every fsync
    after the first finds its transaction committed and sends a flush of its own:
    a group of 16 files would cost at least 17 flushes (a commit's, then one per
    later file); at the same time they cost fewer than one per file."""
    from pymailsys.daemons.cleanup.writer import QueueWriter

    from pymailsys.queue import spool as q

    require_tool("losetup")
    compare = bench_module("compare")
    with compare.scratch_filesystem("ext4") as fs:
        (Path(fs.path) / q.INCOMING).mkdir()
        writer = QueueWriter(Spool(fs.path))

        async def group() -> list[str]:
            async def one(n: int) -> str:
                _qid, path, fd = writer.create()
                return await writer.commit(fd, path, [b"file %d\n" % n])
            return await asyncio.gather(*(one(n) for n in range(16)))

        flushes = []
        for _ in range(3):
            before = _device_flushes(fs.device)
            paths = asyncio.run(group())
            flushes.append(_device_flushes(fs.device) - before)
            assert [Path(p).read_bytes() for p in paths] == [b"file %d\n" % n for n in range(16)]
    assert (writer.batches, writer.files) == (3, 48)
    assert min(flushes) < 16, flushes


def _announced(spool: Spool, grouped: bool) -> tuple[list[list[str]], dict[str, tuple[bool, bytes]],
                                                    list[tuple[str, bool]]]:
    """Six commits, every second one naming its file: the ``announce`` calls, what each
    named file was (complete, content) when announced, and per commit (queue ID,
    whether it was announced when the commit returned)."""
    from pymailsys.daemons.cleanup.writer import QueueWriter

    from pymailsys.queue import spool as q

    calls: list[list[str]] = []
    seen: dict[str, tuple[bool, bytes]] = {}

    def announce(ids: list[str]) -> None:
        calls.append(list(ids))
        for qid in ids:
            path = spool.path(q.INCOMING, qid)
            seen[qid] = (q.is_complete(os.stat(path).st_mode), Path(path).read_bytes())

    writer = QueueWriter(spool, grouped=grouped, announce=announce)

    async def one(n: int) -> tuple[str, bool]:
        qid, path, fd = writer.create()
        await writer.commit(fd, path, [b"file %d\n" % n], notify=qid if n % 2 else None)
        return qid, qid in seen

    async def run() -> list[tuple[str, bool]]:
        return list(await asyncio.gather(*(one(n) for n in range(6))))

    return calls, seen, asyncio.run(run())


def test_a_file_is_announced_complete_once_per_group_before_its_commit_returns(
        tmp_path: Path) -> None:
    """``announce`` hears the queue ID of each file that asked for it (not of the
    others), in one call per fsync group, when the file is written and complete
    (0700) in incoming/ and before its commit returns: qmgr can take it while the
    fsync runs."""
    (tmp_path / "incoming").mkdir()
    spool = Spool(str(tmp_path))
    for grouped in (True, False):
        calls, seen, results = _announced(spool, grouped)
        wanted = [qid for n, (qid, _) in enumerate(results) if n % 2]
        assert [qid for call in calls for qid in call] == wanted
        assert len(calls) == (1 if grouped else 3)
        for n, (qid, seen_at_return) in enumerate(results):
            assert seen_at_return == bool(n % 2)
            if n % 2:
                assert seen[qid] == (True, b"file %d\n" % n)


def _listen_as_qmgr(setup: Setup) -> socket.socket:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(setup.spool / "public" / "qmgr"))
    listener.listen(1)
    return listener


def _traced_after_a_first_message(setup: Setup, listener: socket.socket, trace: Path,
                                  calls: str) -> socket.socket:
    """cleanup started under strace (``calls`` traced into ``trace``) and given a first
    message: the trigger connection to ``listener`` that it opens on that message's
    announcement and keeps, once strace has shown the announcement."""
    _start_cleanup(setup, prefix=(require_tool("strace"), "-f", "-qq", "-s", "400", "-o",
                                  str(trace), "-e", f"trace={calls}"), timeout=60)
    first = _send(setup, _smtpd_request())
    conn, _ = listener.accept()
    first_record = "<" + first["queue_id"].encode().hex() + ">"
    wait_until(lambda: first_record in trace.read_text(errors="replace"),
               timeout=30, what="the first announcement")
    return conn


def _stop_traced(setup: Setup) -> None:
    """Stop daemons started under strace: strace ends when the daemon it runs does."""
    for proc in setup.procs:
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
        for pid in (children.read_text().split() if children.exists() else []):
            os.kill(int(pid), signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_qmgr_is_told_before_the_fsync_and_the_client_after_it(tmp_path: Path) -> None:
    """In the running daemon (traced by strace): the new file's name goes to qmgr
    before cleanup fsyncs the file, and the reply to the client only after that
    fsync returned."""
    setup = _write_config(tmp_path)
    trace = tmp_path / "strace.txt"
    listener = _listen_as_qmgr(setup)
    try:
        conn = _traced_after_a_first_message(setup, listener, trace,
                                             "fsync,fdatasync,write,writev,sendmsg,sendto")
        reply = _send(setup, _smtpd_request())
        assert reply["status"] == "0"
        record = "<" + reply["queue_id"].encode().hex() + ">"
        lines: list[str] = []

        def traced() -> bool:
            lines[:] = trace.read_text(errors="replace").splitlines()
            return any(record in line for line in lines) and any(
                "queue_id" in line and reply["queue_id"] in line for line in lines)

        wait_until(traced, timeout=30, what="the trigger and the reply in strace's output")
        told = next(i for i, line in enumerate(lines) if record in line)
        answered = next(i for i, line in enumerate(lines)
                        if "queue_id" in line and reply["queue_id"] in line)
        begun = max(i for i, line in enumerate(lines) if "message-id=" in line)
        synced = [i for i, line in enumerate(lines)
                  if i > begun and re.search(r"\bf(data)?sync\(", line)]
        assert synced and begun < told < synced[0] < answered, "\n".join(lines[-40:])
        conn.close()
    finally:
        listener.close()
        _stop_traced(setup)


def test_requests_read_together_make_one_fsync_group_and_a_lone_one_its_own(
        tmp_path: Path) -> None:
    """In the running daemon (traced by strace): requests that arrive together are one
    fsync group, qmgr told of all their files in one write (a message counts as in
    progress from when its request is read, before its handler first runs); a request
    alone in cleanup is synced at once, still named to qmgr before its fsync and
    answered after it."""
    setup = _write_config(tmp_path)
    trace = tmp_path / "strace.txt"
    listener = _listen_as_qmgr(setup)

    def record(queue_id: str) -> str:
        return "<" + queue_id.encode().hex() + ">"

    def traced(*records: str) -> list[str]:
        lines: list[str] = []

        def found() -> bool:
            lines[:] = trace.read_text(errors="replace").splitlines()
            return all(any(r in line for line in lines) for r in records)

        wait_until(found, timeout=30, what="the announcements in strace's output")
        return lines

    try:
        conn = _traced_after_a_first_message(setup, listener, trace, "fsync,write")
        with SyncAttrClient(setup.socket) as client:
            client.sock.sendall(b"".join(encode(_smtpd_request(
                content=f"Subject: n{i}\n\nmessage {i}\n".encode())) for i in range(5)))
            replies = [{n: v.decode() for n, v in client.read().pairs} for _ in range(5)]
        assert [r["status"] for r in replies] == ["0"] * 5
        together = [record(r["queue_id"]) for r in replies]
        lines = traced(*together)
        assert any(all(r in line for r in together) for line in lines), "\n".join(lines[-40:])
        lone = _send(setup, _smtpd_request())
        assert lone["status"] == "0"
        lines = traced(record(lone["queue_id"]))
        told = next(i for i, line in enumerate(lines) if record(lone["queue_id"]) in line)
        assert not any(r in lines[told] for r in together)
        answered = next(i for i, line in enumerate(lines)
                        if "queue_id" in line and lone["queue_id"] in line)
        synced = [i for i, line in enumerate(lines) if i > told and re.search(r"\bfsync\(", line)]
        assert synced and synced[0] < answered, "\n".join(lines[-40:])
        conn.close()
    finally:
        listener.close()
        _stop_traced(setup)


def test_a_message_stops_counting_as_in_progress_however_it_ends(tmp_path: Path) -> None:
    """cleanup counts a message in progress from when its request is read until its
    reply, accepted, refused or failed (a count left too high would put every later
    lone message through the grouped path, a turn of the loop slower)."""
    from pymailsys.daemons.cleanup import Cleanup

    from pymailsys.ipc.attr import AttrList

    setup = _write_config(tmp_path)
    cfg = config_mod.load(str(setup.etc))
    service = Cleanup(server.Context(cfg, Spool.from_config(cfg), "cleanup", "cleanup",
                                     "unix", []))

    def attrs(req: dict[str, object]) -> AttrList:
        return AttrList([(name, v if isinstance(v, bytes) else str(v).encode())
                         for name, value in req.items()
                         for v in (value if isinstance(value, list) else [value])])

    async def run() -> list[object]:
        requests = [_smtpd_request(), _smtpd_request(rcpt=[]),
                    _smtpd_request(content=b"x" * 200000), _smtpd_request(abort="1")]
        coroutines = [service.received(attrs(req), None) for req in requests]
        assert service.writer.messages == 4
        statuses = []
        for coroutine in coroutines:
            statuses.append((await coroutine)["status"])
        return statuses

    assert asyncio.run(run()) == [0, 550, 552, 451]
    assert service.writer.messages == 0


# -- header address rewriting ---------------------------------------------------------------

REWRITE_HEADERS = (
    b"From: \"Doe, Jane\" <jane> (the boss)\n"
    b"To: bob, Alice <alice>\n"
    b"Cc: Friends: carol, dave@other.example;, undisclosed-recipients:;\n"
    b"Reply-To:   kept@example.net  (spacing as written)\n"
    b"Resent-To: <@relay.example:erin@dest.example>\n"
    b"Errors-To: \"unterminated <x>\n"
    b"X-Not-Address: frank\n"
    b"Subject: mail for bob\n")


def test_local_submission_rewrites_address_headers(cleanup: Setup) -> None:
    """Local context: each address as the envelope, display names, comments, groups kept."""
    reply = _send(cleanup, _pickup_request(content=REWRITE_HEADERS + b"\nTo: body is not headers\n"))
    assert reply["status"] == "0"
    lines = _content(cleanup.postcat(cleanup.incoming(reply["queue_id"]))).splitlines()
    assert lines[2:11] == [
        'From: "Doe, Jane" <jane@mx.example.com>(the boss)',  # tok822 spacing
        "To: bob@mx.example.com, Alice <alice@mx.example.com>",
        "Cc: Friends: carol@mx.example.com, dave@other.example;,",
        "\tundisclosed-recipients: ;",  # folded at 70 columns, a space after a group's colon
        "Reply-To:   kept@example.net  (spacing as written)",  # nothing changed: untouched
        "Resent-To: <erin@dest.example>",  # source route stripped
        'Errors-To: "unterminated <x>',  # unparsable: left alone
        "X-Not-Address: frank",
        "Subject: mail for bob"]
    assert lines[-2:] == ["", "To: body is not headers"]


def test_rewritten_long_header_is_folded_as_postfix(cleanup: Setup) -> None:
    to = ", ".join(f"user{n}" for n in range(1, 8)).encode()
    reply = _send(cleanup, _pickup_request(content=b"To: " + to + b"\nSubject: s\n\nx\n"))
    lines = _content(cleanup.postcat(cleanup.incoming(reply["queue_id"]))).splitlines()
    assert lines[2:6] == [
        "To: user1@mx.example.com, user2@mx.example.com, user3@mx.example.com,",
        "\tuser4@mx.example.com, user5@mx.example.com, user6@mx.example.com,",
        "\tuser7@mx.example.com",
        "Subject: s"]


def test_folded_input_header_is_unfolded_and_refolded(cleanup: Setup) -> None:
    reply = _send(cleanup, _pickup_request(
        content=b"Cc: Alice\n  Example <alice>,\n\tbob (Bob)\nSubject: s\n\nx\n"))
    lines = _content(cleanup.postcat(cleanup.incoming(reply["queue_id"]))).splitlines()
    assert lines[2:4] == [
        "Cc: Alice  Example <alice@mx.example.com>, bob@mx.example.com (Bob)", "Subject: s"]


def test_remote_client_headers_untouched_without_remote_domain(cleanup: Setup) -> None:
    content = b"From: Someone <someone>\nTo: bob, Alice <alice>\nSubject: s\n\nx\n"
    reply = _send(cleanup, _smtpd_request(content=content))
    lines = _content(cleanup.postcat(cleanup.incoming(reply["queue_id"]))).splitlines()
    assert lines[3:] == content.decode().splitlines()


def test_smtpd_client_in_local_context_gets_headers_rewritten(cleanup: Setup) -> None:
    reply = _send(cleanup, _smtpd_request(
        rewrite_context="local", content=b"From: Someone <someone>\nTo: bob\n\nx\n"))
    lines = _content(cleanup.postcat(cleanup.incoming(reply["queue_id"]))).splitlines()
    assert lines[3:5] == ["From: Someone <someone@mx.example.com>", "To: bob@mx.example.com"]


def test_address_headers_seen_before_are_kept_bounded_and_only_without_tables(
        tmp_path: Path) -> None:
    """cleanup keeps a rewritten address header for the next message that has the same one
    (at most CACHED_HEADERS, each at most CACHED_HEADER_BYTES); never while canonical
    mapping reads a table, whose answer may differ from one message to the next."""
    from pymailsys.daemons.cleanup import Cleanup
    from pymailsys.daemons.cleanup import headers as hdr

    from pymailsys.ipc import services
    from pymailsys.ipc.attr import AttrList

    def service(base: Path, extra: str = "") -> Cleanup:
        base.mkdir()
        cfg = config_mod.load(str(_write_config(base, extra).etc))
        return Cleanup(server.Context(cfg, Spool.from_config(cfg), "cleanup", "cleanup",
                                      "unix", []))

    def headers(svc: Cleanup, content: bytes) -> list[bytes]:
        req = _smtpd_request(rewrite_context="local", content=content,
                             flags=services.CLEANUP_FLAG_MAP_OK)
        pairs = [(name, str(v).encode() if not isinstance(v, bytes) else v)
                 for name, value in req.items()
                 for v in (value if isinstance(value, list) else [value])]
        data, _ = svc.assemble(AttrList(pairs), "4A1B2C3D4E5", 1787380113.25)
        lines = list(content_lines(data, read_envelope_bytes(data).data_offset))[3:]
        return lines[:lines.index(b"")]

    long_to = b"To: " + b", ".join(b"user%d" % n for n in range(80))
    assert len(long_to) > hdr.CACHED_HEADER_BYTES
    content = b"From: Someone <someone>\n" + long_to + b"\nSubject: s\n\nx\n"
    plain = service(tmp_path / "plain")
    first = headers(plain, content)
    assert first[0] == b"From: Someone <someone@mx.example.com>"
    assert first[1].startswith(b"To: user0@mx.example.com, user1@mx.example.com,")
    assert headers(plain, content) == first
    (cache,) = plain.header_caches.values()
    assert list(cache) == [(b"From: Someone <someone>",)]  # the long To: is not kept
    for n in range(hdr.CACHED_HEADERS + 20):
        assert headers(plain, b"From: u%d\n\nx\n" % n)[0] == b"From: u%d@mx.example.com" % n
        assert len(cache) <= hdr.CACHED_HEADERS

    table = tmp_path / "canonical"
    table.write_text("someone boss@example.net\n")
    mapped = service(tmp_path / "mapped", f"canonical_maps = texthash:{table}\n")
    for _ in range(2):
        assert headers(mapped, content)[0] == b"From: Someone <boss@example.net>"
    assert not mapped.header_caches


def test_remote_header_rewrite_domain(tmp_path: Path) -> None:
    """Remote context with remote_header_rewrite_domain: only that domain is appended."""
    setup = _write_config(tmp_path, "remote_header_rewrite_domain = remote.example\n"
                                    "message_drop_headers = content-length\n")
    try:
        _start_cleanup(setup)
        reply = _send(setup, _smtpd_request(
            sender="someone", rcpt=["bob"],
            content=b"From: Someone <someone>\nTo: bob, carol@example.org\nBcc: hidden\n\nx\n"))
        assert reply["status"] == "0"
        out = setup.postcat(setup.incoming(reply["queue_id"]))
        assert "sender: someone@mx.example.com\n" in out  # the envelope stays local
        lines = _content(out).splitlines()
        assert lines[3:6] == ["From: Someone <someone@remote.example>",
                              "To: bob@remote.example, carol@example.org",
                              "Bcc: hidden@remote.example"]
    finally:
        for proc in setup.procs:
            proc.terminate()
            proc.wait(timeout=10)


# -- streamed requests (content in follow-up lists) -------------------------------------------

STREAM_CONTENT = (b"From: Alice <alice@example.org>\nSubject: streamed\n\tcontinued\n"
                  b"Message-ID: <s1@example.org>\n\n" + b"w" * 5000 + b"\nshort\n\n"
                  + b"".join(b"line %d\n" % i for i in range(3000)) + b"v" * 4096 + b"\nlast")


def _stream(setup: Setup, first: dict[str, object], pieces: list[bytes],
            last: dict[str, object] | None = None) -> dict[str, str]:
    """A streamed request: first list (more=1), the pieces, then ``last`` or an end."""
    with SyncAttrClient(setup.socket) as client:
        client.sock.sendall(encode({**first, "more": 1}))
        for piece in pieces:
            client.sock.sendall(encode({"content": piece, "more": 1}))
        client.sock.sendall(encode(last if last is not None else {"content": b""}))
        reply = client.read()
    return {n: v.decode() for n, v in reply.pairs}


def _cut(data: bytes, seed: int) -> list[bytes]:
    rnd = random.Random(seed)
    pieces = []
    while data:
        n = rnd.choice((1, 2, 7, 100, 2047, 2048, 2049, 6000))
        pieces.append(data[:n])
        data = data[n:]
    return pieces


def test_streamed_content_makes_the_same_file(cleanup: Setup) -> None:
    """Pieces cut anywhere (mid-line, inside long lines) give the records of one whole request."""
    whole = _send(cleanup, _smtpd_request(content=STREAM_CONTENT))
    expected = cleanup.incoming(whole["queue_id"]).read_bytes()
    for seed in range(3):
        pieces = _cut(STREAM_CONTENT, seed)
        reply = _stream(cleanup, _smtpd_request(content=pieces[0]), pieces[1:])
        assert reply["status"] == "0"
        path = cleanup.incoming(reply["queue_id"])
        got = path.read_bytes()
        # The same but for the queue ID and the time stamps of the two arrivals.
        env_a, env_b = read_envelope_bytes(expected), read_envelope_bytes(got)
        del env_a.sizes[1], env_b.sizes[1]  # the data offset: the T record's width varies
        assert env_a.sizes == env_b.sizes
        def body(data: bytes, env: object) -> list[bytes]:
            return list(content_lines(data, env.data_offset))[3:]  # type: ignore[attr-defined]
        assert body(got, env_b) == body(expected, env_a)
        assert _content(cleanup.postcat(path)).endswith("v" * 4096 + "\nlast\n")


def test_withdrawn_or_broken_stream_leaves_no_file(cleanup: Setup) -> None:
    before = set(os.listdir(cleanup.spool / "incoming"))
    reply = _stream(cleanup, _smtpd_request(content=b"Subject: x\n\n"), [b"a" * 70000],
                    last={"abort": 1})
    assert reply["status"] == "451"
    with SyncAttrClient(cleanup.socket) as client:  # the client goes away mid-stream
        client.sock.sendall(encode({**_smtpd_request(content=b"Subject: y\n\n"), "more": 1}))
        client.sock.sendall(encode({"content": b"b" * 70000, "more": 1}))
    wait_until(lambda: set(os.listdir(cleanup.spool / "incoming")) == before, timeout=30,
               what="no new queue file")
    assert _send(cleanup, _smtpd_request())["status"] == "0"


def test_a_streams_last_list_may_only_hold_or_discard(cleanup: Setup) -> None:
    """smtpd's end-of-data decisions come in a stream's last list: HOLD and DISCARD are
    obeyed there, every other flag bit is ignored (they were settled by the envelope),
    so the file is the one a stream without them makes."""
    from pymailsys.ipc import services

    head = _smtpd_request(content=b"Subject: late\n\n")
    held = _stream(cleanup, head, [b"a" * 100], last={"content": b"", "flags":
                                                     services.CLEANUP_FLAG_HOLD})
    assert (cleanup.spool / "hold" / held["queue_id"]).exists()
    assert not cleanup.incoming(held["queue_id"]).exists()
    gone = _stream(cleanup, head, [b"a" * 100], last={"content": b"", "flags":
                                                     services.CLEANUP_FLAG_DISCARD})
    assert gone["status"] == "0"
    assert not any((cleanup.spool / q / gone["queue_id"]).exists() for q in ("incoming", "hold"))
    others = (services.CLEANUP_FLAG_BOUNCE | services.CLEANUP_FLAG_FILTER
              | services.CLEANUP_FLAG_BCC_OK | services.CLEANUP_FLAG_MAP_OK)
    plain = _stream(cleanup, head, [b"a" * 100])
    odd = _stream(cleanup, head, [b"a" * 100], last={"content": b"", "flags": others})
    assert odd["status"] == "0" and cleanup.incoming(odd["queue_id"]).exists()
    env_plain = read_envelope_bytes(cleanup.incoming(plain["queue_id"]).read_bytes())
    env_odd = read_envelope_bytes(cleanup.incoming(odd["queue_id"]).read_bytes())
    assert env_odd.recipients == env_plain.recipients and env_odd.sizes == env_plain.sizes


def test_streamed_too_big_is_refused(cleanup: Setup) -> None:
    before = set(os.listdir(cleanup.spool / "incoming"))
    reply = _stream(cleanup, _smtpd_request(content=b"Subject: big\n\n"), [b"y" * 60000] * 3)
    assert (reply["status"], reply["dsn"]) == ("552", "5.3.4")
    assert set(os.listdir(cleanup.spool / "incoming")) == before


def test_stalled_stream_is_dropped_after_ipc_timeout(tmp_path: Path) -> None:
    """A client that stops in mid-stream does not keep its queue file: after ipc_timeout
    the message is refused (451) and the file removed."""
    setup = _write_config(tmp_path, "ipc_timeout = 1s\n")
    try:
        _start_cleanup(setup)
        with SyncAttrClient(setup.socket, timeout=60) as client:
            client.sock.sendall(encode({**_smtpd_request(content=b"Subject: x\n\n"), "more": 1}))
            client.sock.sendall(encode({"content": b"a" * 1000 + b"\n", "more": 1}))
            wait_until(lambda: "timeout reading the content" in setup.log_text(), timeout=30,
                       what="the stalled stream dropped")
            assert os.listdir(setup.spool / "incoming") == []
            client.sock.sendall(encode({"content": b"the rest"}))  # too late
            reply = client.read()
        assert reply.text("status") == "451"
    finally:
        for proc in setup.procs:
            proc.terminate()
            proc.wait(timeout=10)


# -- header limits and content cleaning (in process: the same code as the daemon) ------------

@pytest.fixture
def service_with(tmp_path: Path) -> Iterator[Callable[..., tuple[bytes, list[bytes]]]]:
    """Run one request through cleanup's assembly with extra main.cf lines: (file, lines)."""
    from pymailsys.daemons.cleanup import Cleanup

    from pymailsys.ipc.attr import AttrList

    services: list[Cleanup] = []

    def run(content: bytes, extra: str = "") -> tuple[bytes, list[bytes]]:
        base = tmp_path / f"s{len(services)}"
        base.mkdir()
        setup = _write_config(base, extra)
        cfg = config_mod.load(str(setup.etc))
        service = Cleanup(server.Context(cfg, Spool.from_config(cfg), "cleanup", "cleanup",
                                         "unix", []))
        services.append(service)
        req = _smtpd_request(content=content)
        pairs = [(name, v if isinstance(v, bytes) else str(v).encode())
                 for name, value in req.items()
                 for v in (value if isinstance(value, list) else [value])]
        data, _outcome = service.assemble(AttrList(pairs), "4A1B2C3D4E5", 1787380113.25)
        env = read_envelope_bytes(data)
        return data, list(content_lines(data, env.data_offset))[3:]  # after our Received:

    yield run


def test_header_longer_than_header_size_limit_is_truncated(service_with) -> None:  # type: ignore[no-untyped-def]
    long_to = b"To: " + b", ".join(b"user%d@example.org" % i for i in range(200))
    folded = b"X-Folded: start\n" + b"".join(b"\tcontinuation %d\n" % i for i in range(100))
    content = (b"Subject: s\n" + long_to + b"\n" + folded + b"X-After: kept\n\nbody\n")
    # line_length_limit's least value is 512, as in Postfix.
    _data, lines = service_with(content, "header_size_limit = 1000\nline_length_limit = 600\n")
    # To: is one long line: the 600-byte pieces that start before 1000 bytes are kept.
    assert lines[1] == long_to[:1200]
    # X-Folded: lines are kept while the header is under 1000 bytes, later ones dropped.
    kept = [ln for ln in lines if ln.startswith(b"\tcontinuation")]
    assert kept and len(kept) < 100 and lines[2] == b"X-Folded: start"
    assert sum(len(ln) + 1 for ln in [b"X-Folded: start", *kept[:-1]]) < 1000
    assert lines[-3:] == [b"X-After: kept", b"", b"body"]
    _data, lines = service_with(content)  # the default limit keeps everything
    assert lines[:-3] == content.split(b"\n")[:-4]


def test_stray_cr_in_content_becomes_a_space(service_with) -> None:  # type: ignore[no-untyped-def]
    content = b"Subject: a\rb\nX-Tail: end\r\n\nbody\rline\nlast\r\n"
    _data, lines = service_with(content)
    assert lines == [b"Subject: a b", b"X-Tail: end ", b"", b"body line", b"last "]
    _data, lines = service_with(content, "cleanup_replace_stray_cr_lf = no\n")
    assert lines == [b"Subject: a\rb", b"X-Tail: end\r", b"", b"body\rline", b"last\r"]


def test_header_block_ends_at_a_line_that_is_not_a_header(service_with) -> None:  # type: ignore[no-untyped-def]
    content = b"Subject: s\nnot a header line\nFrom: looks@like.a.header\n\nbody\n"
    data, lines = service_with(content)
    # as Postfix's mime_state: an empty line goes in before the line that ended the headers
    assert lines == [b"Subject: s", b"", b"not a header line", b"From: looks@like.a.header", b"",
                     b"body"]


def test_qmgr_is_told_before_the_client_is_answered(tmp_path: Path) -> None:
    """On the open trigger connection the new file's name is written before the reply:
    qmgr can start on it while the client still waits for its 250."""
    setup = _write_config(tmp_path)
    listener = _listen_as_qmgr(setup)
    listener.settimeout(30)
    try:
        _start_cleanup(setup)
        first = _send(setup, _smtpd_request())
        conn, _ = listener.accept()  # cleanup connects on its first announcement and stays
        conn.settimeout(30)
        record = b"<" + first["queue_id"].encode().hex().encode() + b">"
        got = b""
        for _ in range(100):
            if record in got:
                break
            got += conn.recv(4096)
        assert record in got
        second = _send(setup, _smtpd_request())
        conn.setblocking(False)
        assert conn.recv(4096) == b"<" + second["queue_id"].encode().hex().encode() + b">"
        conn.close()
    finally:
        listener.close()
        for proc in setup.procs:
            proc.terminate()
            proc.wait(timeout=10)


def test_queue_file_rename_never_replaces_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """create_queue_file renames its temporary file to the queue ID only where no file has
    that name: with renameat2(RENAME_NOREPLACE), and with the look-then-rename fallback."""
    from pymailsys.queue import spool

    for fallback in (False, True):
        if fallback:
            monkeypatch.setattr(spool, "_noreplace", [None])
        src, dst = tmp_path / f"src{fallback}", tmp_path / f"dst{fallback}"
        src.write_text("new")
        dst.write_text("old")
        assert not spool.rename_noreplace(str(src), str(dst))
        assert dst.read_text() == "old" and src.read_text() == "new"
        dst.unlink()
        assert spool.rename_noreplace(str(src), str(dst))
        assert dst.read_text() == "new" and not src.exists()
        with pytest.raises(FileNotFoundError):
            spool.rename_noreplace(str(src), str(tmp_path / "other"))
    sp = spool.Spool(str(tmp_path))
    (tmp_path / "incoming").mkdir()
    ids = set()
    for _ in range(50):
        queue_id, path, fd = sp.create_queue_file("incoming")
        os.close(fd)
        assert path == str(tmp_path / "incoming" / queue_id) and spool.valid_queue_id(queue_id)
        ids.add(queue_id)
    assert sorted(os.listdir(tmp_path / "incoming")) == sorted(ids)


def test_queue_file_write_goes_on_after_a_short_write(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """cleanup writes a queue file with one writev; when the kernel takes less, it writes
    the rest from where that stopped (every byte once, in order)."""
    from pymailsys.daemons.cleanup import writer

    real = os.writev
    parts = [bytes([n]) * (n % 37) for n in range(1, 200)]
    for limit in (1, 7, 1000, 1 << 20):
        def short(fd: int, buffers: list[bytes], limit: int = limit) -> int:
            return real(fd, [b"".join(bytes(b) for b in buffers)[:limit]])
        monkeypatch.setattr(writer.os, "writev", short)
        path = tmp_path / f"file{limit}"
        fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
        writer._write_all(fd, parts)
        os.close(fd)
        assert path.read_bytes() == b"".join(parts)
