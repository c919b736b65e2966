#!/usr/bin/env python3
"""The floor: what a bare Python mail pipeline with our hops reaches, as a yardstick.

Usage (from the repository, with the venv's python; normally run by compare.py's
``floor`` system, so that ab_latency.py and compare.py can probe it beside
Postfix and a pymailsys build):

    python tests/bench/latency_floor.py start BASE PORT UID GID MAILDIR
    python tests/bench/latency_floor.py stop BASE

``start`` starts four processes, each one uvloop event loop, as pymailsys and
Postfix split the work: smtpd on 127.0.0.1:PORT -> cleanup (one Unix stream that
stays open) -> qmgr (a trigger line per file) -> local (a request, a reply), and
returns once smtpd listens; their pids go to BASE/floor.pids (smtpd's also to
BASE/spool/floor.pid), what they print to stderr to BASE/log/ROLE.err. ``stop``
sends each SIGTERM. Per message they do what our durability rules demand and the
kernel work both real systems do:

* smtpd: the SMTP dialogue (EHLO, MAIL, RCPT, DATA, RSET, NOOP, QUIT; any
  address accepted), the content un-dot-stuffed, handed to cleanup; the 250
  after cleanup's reply;
* cleanup: a file in spool/incoming made with O_EXCL and renamed to its inode
  number, the envelope, a Received: header and the content written, fchmod
  0700, fsync, then the name announced to qmgr and the reply sent;
* qmgr: the file renamed into spool/active, read, a request to local, the file
  removed after local's reply;
* local: the file read, effective gid and uid switched to UID/GID (when run as
  root), the message written to MAILDIR/tmp with O_EXCL, fsynced, linked into
  MAILDIR/new, the tmp name removed, root's rights back, the reply;
* each daemon writes one log line per message to BASE/log/maillog.

Everything else a mail system does is left out: no address rewriting, lookups
or restrictions, no header parsing, no scheduling, bounces or retries, no
delivery markers, no limits, one message at a time per daemon, and no error
handling beyond what keeps a run going. So its latency is a lower bound for a
Python pipeline with this process structure on this machine, not something to
deploy; the difference between it and a pymailsys build, step by step, is the
cost of our features and of how we do them.

What it showed (2026-12-06, #15, ab_latency.py, 200 paired idle probes): the
floor at 3.3 ms connect -> Maildir against Postfix's 4.3 ms (0.78x) and a
pymailsys build's 4.9 ms (1.48x the floor).
"""

from __future__ import annotations

import asyncio
import os
import signal
import struct
import sys
import time
from typing import cast

import uvloop

ROLES = ("local", "qmgr", "cleanup", "smtpd")  # started in this order: each needs the last


class Floor:
    """One daemon's paths under BASE and its log."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.log_fd = os.open(f"{base}/log/maillog", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.prefix = f"floor/{{}}[{os.getpid()}]: "

    def log(self, role: str, text: str) -> None:
        stamp = time.strftime("%b %d %H:%M:%S")
        os.write(self.log_fd, f"{stamp} localhost {self.prefix.format(role)}{text}\n".encode())

    def socket(self, role: str) -> str:
        return f"{self.base}/{role}.sock"


def frame(data: bytes) -> bytes:
    return struct.pack("!I", len(data)) + data


class Framed(asyncio.Protocol):
    """Length-prefixed messages; ``message`` is called for each one that is complete."""

    transport: asyncio.Transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.buf = bytearray()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while len(self.buf) >= 4:
            (n,) = struct.unpack_from("!I", self.buf)
            if len(self.buf) < 4 + n:
                return
            msg = bytes(self.buf[4:4 + n])
            del self.buf[:4 + n]
            self.message(msg)

    def message(self, msg: bytes) -> None:
        raise NotImplementedError


class Client(Framed):
    """A connection that stays open; replies come in the order of the requests."""

    def __init__(self) -> None:
        self.waiting: list[asyncio.Future[bytes]] = []

    def message(self, msg: bytes) -> None:
        self.waiting.pop(0).set_result(msg)

    async def ask(self, data: bytes) -> bytes:
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.waiting.append(fut)
        self.transport.write(frame(data))
        return await fut


# --- smtpd -------------------------------------------------------------------------------

class Smtp(asyncio.Protocol):
    transport: asyncio.Transport

    def __init__(self, floor: Floor, cleanup: Client) -> None:
        self.floor = floor
        self.cleanup = cleanup

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.buf = bytearray()
        self.in_data = False
        self.sender = b""
        self.rcpts: list[bytes] = []
        self.transport.write(b"220 floor ESMTP\r\n")
        self.client = f"localhost[{transport.get_extra_info('peername')[0]}]"
        self.floor.log("smtpd", f"connect from {self.client}")

    def data_received(self, data: bytes) -> None:
        self.buf += data
        self.process()

    def process(self) -> None:
        write = self.transport.write
        while True:
            if self.in_data:
                end = self.buf.find(b"\r\n.\r\n")
                if end < 0:
                    return
                content = bytes(self.buf[:end + 2]).replace(b"\r\n", b"\n")
                content = content[1:] if content.startswith(b".") else content
                del self.buf[:end + 5]
                self.in_data = False
                asyncio.ensure_future(self.queue(content.replace(b"\n..", b"\n.")))
                return  # the next command waits for the 250
            nl = self.buf.find(b"\n")
            if nl < 0:
                return
            line = bytes(self.buf[:nl]).rstrip(b"\r")
            del self.buf[:nl + 1]
            verb = line[:4].upper()
            if verb == b"EHLO":
                write(b"250-floor\r\n250-PIPELINING\r\n250 8BITMIME\r\n")
            elif verb == b"HELO":
                write(b"250 floor\r\n")
            elif verb == b"MAIL":
                self.sender = line[10:].strip(b"<> ")
                self.rcpts = []
                write(b"250 2.1.0 Ok\r\n")
            elif verb == b"RCPT":
                self.rcpts.append(line[8:].strip(b"<> "))
                write(b"250 2.1.5 Ok\r\n")
            elif verb == b"DATA":
                self.in_data = True
                write(b"354 End data with <CR><LF>.<CR><LF>\r\n")
            elif verb == b"QUIT":
                write(b"221 2.0.0 Bye\r\n")
                self.transport.close()
                return
            elif verb in (b"RSET", b"NOOP"):
                write(b"250 2.0.0 Ok\r\n")
            else:
                write(b"502 5.5.2 Error: command not recognized\r\n")

    async def queue(self, content: bytes) -> None:
        queue_id = await self.cleanup.ask(
            self.sender + b"\0" + b",".join(self.rcpts) + b"\0" + content)
        self.transport.write(b"250 2.0.0 Ok: queued as " + queue_id + b"\r\n")
        self.floor.log("smtpd", f"{queue_id.decode()}: client={self.client}")
        self.process()  # what the client pipelined after the end of data


async def smtpd(floor: Floor, port: int) -> None:
    loop = asyncio.get_running_loop()
    _, cleanup = await loop.create_unix_connection(Client, floor.socket("cleanup"))
    server = await loop.create_server(lambda: Smtp(floor, cleanup), "127.0.0.1", port)
    open(floor.socket("smtpd"), "w").close()  # listening: start() may return
    await server.serve_forever()


# --- cleanup -----------------------------------------------------------------------------

class Cleanup(Framed):
    def __init__(self, floor: Floor, qmgr: asyncio.Transport) -> None:
        self.floor = floor
        self.qmgr = qmgr

    def message(self, msg: bytes) -> None:
        sender, rcpts, content = msg.split(b"\0", 2)
        incoming = f"{self.floor.base}/spool/incoming"
        temporary = f"{incoming}/t{os.getpid()}.{time.monotonic_ns()}"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        queue_id = f"{os.fstat(fd).st_ino:X}"
        os.rename(temporary, f"{incoming}/{queue_id}")
        date = time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime())
        received = (f"Received: by floor with ESMTP id {queue_id}\n"
                    f"\tfor <{rcpts.decode()}>; {date}\n").encode()
        os.write(fd, b"S" + sender + b"\nR" + rcpts + b"\n\n" + received + content)
        os.fchmod(fd, 0o700)
        os.fsync(fd)
        os.close(fd)
        self.qmgr.write(queue_id.encode() + b"\n")
        self.transport.write(frame(queue_id.encode()))
        self.floor.log("cleanup", f"{queue_id}: message-id=<>")


async def cleanup(floor: Floor) -> None:
    loop = asyncio.get_running_loop()
    qmgr, _ = await loop.create_unix_connection(asyncio.Protocol, floor.socket("qmgr"))
    server = await loop.create_unix_server(lambda: Cleanup(floor, qmgr), floor.socket("cleanup"))
    await server.serve_forever()


# --- qmgr --------------------------------------------------------------------------------

class Trigger(asyncio.Protocol):
    def __init__(self, floor: Floor, local: Client) -> None:
        self.floor = floor
        self.local = local
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        self.buf += data
        *names, self.buf = self.buf.split(b"\n")
        for name in names:
            asyncio.ensure_future(self.deliver(name.decode()))

    async def deliver(self, queue_id: str) -> None:
        active = f"{self.floor.base}/spool/active/{queue_id}"
        os.rename(f"{self.floor.base}/spool/incoming/{queue_id}", active)
        with open(active, "rb") as f:
            sender, rcpts = f.read(4096).split(b"\n", 2)[:2]
        self.floor.log("qmgr", f"{queue_id}: from=<{sender[1:].decode()}>, nrcpt=1 (queue active)")
        if await self.local.ask(queue_id.encode() + b"\0" + rcpts[1:]) == b"ok":
            os.unlink(active)
            self.floor.log("qmgr", f"{queue_id}: removed")


async def qmgr(floor: Floor) -> None:
    loop = asyncio.get_running_loop()
    _, local = await loop.create_unix_connection(Client, floor.socket("local"))
    server = await loop.create_unix_server(lambda: Trigger(floor, local), floor.socket("qmgr"))
    await server.serve_forever()


# --- local -------------------------------------------------------------------------------

class Local(Framed):
    def __init__(self, floor: Floor, uid: int, gid: int, maildir: str) -> None:
        self.floor = floor
        self.uid, self.gid, self.maildir = uid, gid, maildir
        self.switch = os.geteuid() == 0 and uid != 0
        self.count = 0

    def message(self, msg: bytes) -> None:
        queue_id, rcpt = msg.decode().split("\0")
        with open(f"{self.floor.base}/spool/active/{queue_id}", "rb") as f:
            content = f.read().split(b"\n\n", 1)[1]
        self.count += 1
        now = time.time_ns() // 1000
        name = f"{now // 1000000}.M{now % 1000000}P{os.getpid()}Q{self.count}.floor"
        if self.switch:
            os.setegid(self.gid)
            os.seteuid(self.uid)
        try:
            temporary = f"{self.maildir}/tmp/{name}"
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.write(fd, b"Delivered-To: " + rcpt.encode() + b"\n" + content)
            os.fsync(fd)
            os.close(fd)
            os.link(temporary, f"{self.maildir}/new/{name}")
            os.unlink(temporary)
        finally:
            if self.switch:
                os.seteuid(0)
                os.setegid(0)
        self.transport.write(frame(b"ok"))
        self.floor.log("local", f"{queue_id}: to=<{rcpt}>, relay=local, status=sent "
                                "(delivered to maildir)")


async def local(floor: Floor, uid: int, gid: int, maildir: str) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_unix_server(lambda: Local(floor, uid, gid, maildir),
                                           floor.socket("local"))
    await server.serve_forever()


# --- start and stop ----------------------------------------------------------------------

def start(base: str, port: str, uid: str, gid: str, maildir: str) -> None:
    for sub in ("spool/incoming", "spool/active", "log"):
        os.makedirs(f"{base}/{sub}", exist_ok=True)
    pids = []
    for role in ROLES:
        path = f"{base}/{role}.sock"
        if os.path.exists(path):
            os.unlink(path)
        args = {"local": [uid, gid, maildir], "smtpd": [port]}.get(role, [])
        pid = os.fork()
        if pid == 0:
            os.setsid()
            null = os.open(os.devnull, os.O_RDWR)
            err = os.open(f"{base}/log/{role}.err", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            for fd, to in ((0, null), (1, null), (2, err)):
                os.dup2(to, fd)
            os.execv(sys.executable, [sys.executable, __file__, role, base, *args])
        pids.append(pid)
        for _ in range(1000):  # each listens before the next one connects to it
            if os.path.exists(path):
                break
            time.sleep(0.01)
        else:
            for started in pids:
                os.kill(started, signal.SIGTERM)
            raise SystemExit(f"latency_floor.py: {role} did not start (see {base}/log)")
    with open(f"{base}/floor.pids", "w") as f:
        f.write(" ".join(map(str, pids)) + "\n")
    with open(f"{base}/spool/floor.pid", "w") as f:
        f.write(f"{pids[-1]}\n")


def stop(base: str) -> None:
    with open(f"{base}/floor.pids") as f:
        for pid in f.read().split():
            try:
                os.kill(int(pid), signal.SIGTERM)
            except ProcessLookupError:
                pass


def main(argv: list[str]) -> None:
    if len(argv) < 2:
        raise SystemExit(__doc__.split("\n\n")[1])
    command, base, rest = argv[0], argv[1], argv[2:]
    if command == "start":
        start(base, *rest)
        return
    if command == "stop":
        stop(base)
        return
    uvloop.install()
    floor = Floor(base)
    if command == "smtpd":
        asyncio.run(smtpd(floor, int(rest[0])))
    elif command == "cleanup":
        asyncio.run(cleanup(floor))
    elif command == "qmgr":
        asyncio.run(qmgr(floor))
    elif command == "local":
        asyncio.run(local(floor, int(rest[0]), int(rest[1]), rest[2]))
    else:
        raise SystemExit(f"latency_floor.py: unknown command {command!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
