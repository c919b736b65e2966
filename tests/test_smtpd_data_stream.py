"""smtpd DATA goes on to cleanup in bounded pieces, byte for byte what whole reading gives.

The DATA reader (``stream.InputBuffer.read_data``) is driven on a real asyncio
stream with the input cut at random places; the pieces it hands on, joined,
must equal what it returns when nothing is streamed. A real smtpd session
with the test cleanup peer then shows a big message arriving as a streamed
request (more than one list) with its content intact.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

from pymailsys.daemons.smtpd.stream import CHUNK, PAUSE_AT, InputBuffer, _normalize
from smtpd_helpers import smtpd_server


async def _read(data: bytes, stream_at: int, cut: int) -> tuple[bytes, int, bool, int]:
    reader = asyncio.StreamReader()

    async def feed() -> None:  # the input arrives a few bytes at a time
        for i in range(0, len(data), cut):
            reader.feed_data(data[i:i + cut])
            await asyncio.sleep(0)
        reader.feed_eof()

    feeder = asyncio.ensure_future(feed())
    pieces: list[bytes] = []

    async def sink(piece: bytes) -> None:
        pieces.append(piece)

    got = await InputBuffer(reader).read_data(0, sink, stream_at)
    await feeder
    return b"".join(pieces) + got.content, got.size, got.bare_lf, len(pieces)


def test_pieces_join_to_the_whole_content() -> None:
    rnd = random.Random(7)
    words = [b"a", b"\r\n", b"\n", b"\r", b".", b"..", b"\r\n.\n", b"From x", b"y" * 70]
    streamed = 0
    for _ in range(400):
        body = b"".join(rnd.choice(words) for _ in range(rnd.randint(0, 120)))
        if b"\r\n.\r\n" in b"\r\n" + body:
            continue
        data = body + b"\r\n.\r\nQUIT\r\n"
        whole = asyncio.run(_read(data, 1 << 30, len(data)))
        for stream_at in (1, 5, 33):
            got = asyncio.run(_read(data, stream_at, rnd.randint(1, 40)))
            assert got[:3] == whole[:3], (body, stream_at)
            streamed += got[3] > 1
    assert streamed > 100  # the pieces really were many


def _plain_normalize(raw: bytes, lead: int) -> bytes:
    """What _normalize promises, said the slow way: <CR><LF> -> <LF>, a lone-dot line
    dropped, one leading dot removed, the lead's line end dropped."""
    text = raw.replace(b"\r\n", b"\n")
    while b"\n.\n" in text:
        text = text.replace(b"\n.\n", b"\n")
    text = text.replace(b"\n.", b"\n")
    return text[1:] if lead else text


def test_normalize_fast_paths_give_what_the_plain_definition_gives() -> None:
    # Its fast paths (every <CR> dropped when none is bare; no dot-stuffing look without
    # a "."): bare <CR>s, <CR><CR><LF>, dots and none, a <CR> at the very end.
    rnd = random.Random(11)
    words = [b"abc", b"\r\n", b"\n", b"\r", b".", b"\r\r\n", b"QUJD" * 19, b"\r\n.."]
    kinds = set()
    for _ in range(3000):
        lead = rnd.choice((0, 1, 2))
        raw = {0: b"", 1: b"\n", 2: b"\r\n"}[lead] + b"".join(
            rnd.choice(words) for _ in range(rnd.randint(0, 40)))
        assert _normalize(raw, lead) == _plain_normalize(raw, lead), (raw, lead)
        kinds.add((b"\r" in raw.replace(b"\r\n", b""), b"." in raw))
    assert len(kinds) == 4  # with and without a bare <CR>, with and without a dot


def test_an_attached_buffer_holds_a_flood_to_its_bound_and_loses_nothing() -> None:
    """Attached to a real TCP connection, the buffer takes what arrives from the
    protocol; a client that sends far more than is read gets the transport paused
    (what waits stays near PAUSE_AT), and reading on resumes it: every byte arrives,
    in order, and the end of input is seen."""
    payload = bytes(range(256)) * (4 * 4096)  # 4 MiB

    async def go() -> tuple[bytes, int, bool]:
        loop = asyncio.get_running_loop()
        attached: asyncio.Future[InputBuffer] = loop.create_future()

        class Protocol(asyncio.Protocol):
            buf: InputBuffer

            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                self.buf = InputBuffer(asyncio.StreamReader())
                self.buf.attach(transport)
                attached.set_result(self.buf)

            def data_received(self, data: bytes) -> None:
                self.buf.feed(data)

            def eof_received(self) -> bool:
                self.buf.feed_eof()
                return True

            def connection_lost(self, exc: Exception | None) -> None:
                self.buf.feed_eof(exc)

        server = await loop.create_server(Protocol, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(payload)
        writer.write_eof()
        buf = await attached
        for _ in range(500):  # until the kernel's buffers are full and the transport paused
            if buf.paused:
                break
            await asyncio.sleep(0.01)
        waiting = len(buf.inbox)
        paused = buf.paused
        pieces: list[bytes] = []

        async def sink(piece: bytes) -> None:
            pieces.append(piece)

        await buf.read_exact(len(payload), sink)
        try:
            await buf.read_exact(1, None)
        except asyncio.IncompleteReadError:
            pass
        else:
            raise AssertionError("no end of input after the payload")
        writer.close()
        server.close()
        return b"".join(pieces), waiting, paused

    data, waiting, paused = asyncio.run(go())
    assert paused and waiting <= PAUSE_AT + 4 * CHUNK  # + one read of the transport
    assert data == payload


def test_big_message_reaches_cleanup_as_a_stream(tmp_path: Path) -> None:
    lines = [b"Subject: big", b"", b"." * 3, b"x" * 100_000, b"short"] + [
        b"line %d" % i for i in range(200_000)]
    raw = b"\r\n".join(lines) + b"\r\n"
    expected = b"\n".join(lines[:2] + [b".."] + lines[3:]) + b"\n"

    async def go() -> None:
        async with smtpd_server(tmp_path, message_size_limit="0") as (fake, c, _):
            await c.reply()
            await c.cmd("EHLO h\r\n")
            await c.cmd("MAIL FROM:<a@b.c>\r\n")
            await c.cmd("RCPT TO:<root>\r\n")
            assert (await c.cmd("DATA\r\n")).startswith("354")
            assert (await c.cmd(raw + b".\r\n")).startswith("250 2.0.0 Ok: queued as ")
            assert fake.streamed == 1
            assert fake.requests[0].raw("content") == expected

    asyncio.run(go())


def test_too_big_stream_is_withdrawn(tmp_path: Path) -> None:
    """552 for a message that outgrows message_size_limit after it started streaming:
    cleanup is told to drop it, and the session goes on."""
    big = b"Subject: big\r\n\r\n" + b"0123456789abcdef\r\n" * 40_000

    async def go() -> None:
        async with smtpd_server(tmp_path, message_size_limit="200000") as (fake, c, _):
            await c.reply()
            await c.cmd("EHLO h\r\n")
            await c.cmd("MAIL FROM:<a@b.c>\r\n")
            await c.cmd("RCPT TO:<root>\r\n")
            await c.cmd("DATA\r\n")
            assert (await c.cmd(big + b".\r\n")).startswith("552 5.3.4 ")
            await c.cmd("MAIL FROM:<a@b.c>\r\n")
            await c.cmd("RCPT TO:<root>\r\n")
            await c.cmd("DATA\r\n")
            assert (await c.cmd(b"Subject: small\r\n\r\nhi\r\n.\r\n")).startswith("250 ")
            assert fake.aborted == 1
            assert [r.raw("content") for r in fake.requests] == [b"Subject: small\n\nhi\n"]

    asyncio.run(go())
