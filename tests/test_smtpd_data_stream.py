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

from pymailsys.daemons.smtpd.stream import InputBuffer
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
