"""Helpers for smtpd protocol tests: smtpd sessions in-process, a fake cleanup peer, and
a raw client for a real instance (``RawSMTP``).

The fake cleanup is a test double for the cleanup daemon: it listens on
``public/cleanup`` of a temporary queue directory and speaks the
pymailsys.ipc.services cleanup contract with pymailsys.ipc.attr, recording requests.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from pymailsys.daemons.smtpd.handler import Smtpd
from pymailsys.daemons.smtpd.session import Session

from pymailsys import config, server
from pymailsys.ipc import attr


@dataclass
class FakeCleanup:
    requests: list[attr.AttrList] = field(default_factory=list)
    status: int = 0
    streamed: int = 0  # requests that came in more than one list
    aborted: int = 0  # streamed requests the client withdrew
    ids: itertools.count = field(default_factory=lambda: itertools.count(0xA0000))

    async def handle(self, req: attr.AttrList, more: attr.FollowUps | None) -> dict[str, object]:
        """Record the request, a streamed one with its content joined (and None if aborted)."""
        if more is not None:
            self.streamed += 1
            pieces = [req.raw("content") or b""]
            while (part := await more.get()) is not None:
                if "abort" in part:
                    self.aborted += 1
                    return {"status": 451, "dsn": "4.3.0", "reason": "Error: aborted"}
                pieces.append(part.raw("content") or b"")
            pairs = [(n, v) for n, v in req.pairs if n not in ("content", attr.MORE)]
            req = attr.AttrList(pairs + [("content", b"".join(pieces))])
        self.requests.append(req)
        if self.status:
            return {"status": self.status, "dsn": "4.3.0", "reason": "Error: internal error"}
        return {"status": 0, "dsn": "2.0.0", "queue_id": f"{next(self.ids):X}"}


def make_config(tmp: Path, **values: str) -> config.Config:
    base = {"queue_directory": str(tmp), "myhostname": "mx.example",
            "mydestination": "$myhostname, localhost", "alias_maps": "",
            "inet_interfaces": "loopback-only", "smtpd_error_sleep_time": "0",
            "maillog_file": str(tmp / "maillog")}
    base.update(values)
    return config.Config(str(tmp), base)


class Client:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def reply(self) -> str:
        lines = []
        while True:
            line = await asyncio.wait_for(self.reader.readline(), 10)
            if not line:
                lines.append("<EOF>")
                break
            lines.append(line.decode(errors="replace").rstrip("\r\n"))
            if len(line) >= 4 and line[3:4] == b" ":
                break
        return "\n".join(lines)

    async def cmd(self, data: str | bytes) -> str:
        self.writer.write(data.encode() if isinstance(data, str) else data)
        return await self.reply()

    async def closed(self) -> bool:
        return await asyncio.wait_for(self.reader.read(), 10) == b""


async def start_sessions(smtpd: Smtpd, session_class: type[Session] = Session,
                         host: str = "127.0.0.1", port: int = 0) -> asyncio.Server:
    """smtpd sessions on host:port (0: a free one), each the protocol of its connection."""
    loop = asyncio.get_running_loop()

    def protocol() -> Session:
        reader = asyncio.StreamReader(limit=server.STREAM_LIMIT)
        session: Session = session_class(smtpd, reader, lambda r, w: session.run(w))
        return session

    return await loop.create_server(protocol, host, port)


@asynccontextmanager
async def smtpd_server(tmp: Path, cleanup_up: bool = True,
                       **values: str) -> AsyncIterator[tuple[FakeCleanup, Client, Path]]:
    """A fake cleanup on tmp/public/cleanup, an smtpd on a free port, and one connected client."""
    os.makedirs(tmp / "public", exist_ok=True)
    fake = FakeCleanup()
    cleanup_srv = await asyncio.start_unix_server(
        lambda r, w: attr.serve_streamed(r, w, fake.handle), str(tmp / "public" / "cleanup"))
    if not cleanup_up:
        cleanup_srv.close()
        os.unlink(tmp / "public" / "cleanup")
    from pymailsys import log
    cfg = make_config(tmp, **values)
    log.init(cfg, "smtpd")
    smtpd = Smtpd(cfg)

    srv = await start_sessions(smtpd)
    port = srv.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    client = Client(reader, writer)
    try:
        yield fake, client, tmp / "maillog"
    finally:
        writer.close()
        srv.close()
        cleanup_srv.close()
        await smtpd.close()


class RawSMTP:
    """A client that sends bytes as they are (pipelined commands, BDAT chunks) to a real
    smtpd on ``port`` and reads one reply at a time (the last line of a multi-line one);
    from the loopback address ``source`` when given."""

    def __init__(self, port: int, source: str | None = None) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30,
                                             source_address=(source, 0) if source else None)
        self.file = self.sock.makefile("rb")

    def __enter__(self) -> RawSMTP:
        return self

    def __exit__(self, *exc: object) -> None:
        self.file.close()
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self) -> bytes:
        while (line := self.file.readline())[3:4] == b"-":
            pass
        return line
