"""SMTP smuggling (CVE-2023-51764): only <CR><LF>.<CR><LF> ends DATA; bare <LF> handling."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from smtpd_helpers import smtpd_server

SMUGGLE_ENDS = [b"\n.\n", b"\r.\n", b"\n.\r\n", b"\r\n.\r", b"\r\n.\n"]


@pytest.mark.parametrize("fake_end", SMUGGLE_ENDS, ids=repr)
def test_fake_end_of_data_never_makes_a_second_message(tmp_path: Path, fake_end: bytes) -> None:
    async def go() -> None:
        async with smtpd_server(tmp_path) as (fake, c, _):
            await c.reply()
            await c.cmd("EHLO h\r\n")
            await c.cmd("MAIL FROM:<a@b.c>\r\n")
            await c.cmd("RCPT TO:<root>\r\n")
            assert (await c.cmd("DATA\r\n")).startswith("354")
            payload = (b"Subject: first\r\n\r\nbody" + fake_end +
                       b"MAIL FROM:<evil@x.example>\r\nRCPT TO:<root>\r\nDATA\r\n"
                       b"Subject: smuggled\r\n\r\nsecond\r\n.\r\n")
            assert (await c.cmd(payload)).startswith("250 2.0.0 Ok: queued as")
            assert await c.cmd("QUIT\r\n") == "221 2.0.0 Bye"
            assert len(fake.requests) == 1
            content = fake.requests[0].raw("content")
            assert content is not None and b"smuggled" in content  # part of message one
    asyncio.run(go())


def test_normalize_content(tmp_path: Path) -> None:
    async def go() -> None:
        async with smtpd_server(tmp_path) as (fake, c, _):
            await c.reply()
            await c.cmd("EHLO h\r\n")
            await c.cmd("MAIL FROM:<a@b.c>\r\n")
            await c.cmd("RCPT TO:<root>\r\n")
            await c.cmd("DATA\r\n")
            data = (b"A1\n.\nA2\r.\nA3\n.\r\nA4\r\n.\rA5\r\n..\r\nA6\r\n..\nA7\r\n.x\r\n"
                    + b"L" * 2000 + b"\r\n\xff\xfe\r\n.\r\n")
            assert (await c.cmd(data)).startswith("250 ")
            # As Postfix 3.7 with smtpd_forbid_bare_newline=normalize stores it.
            assert fake.requests[0].raw("content") == (
                b"A1\nA2\r.\nA3\nA4\n\rA5\n.\nA6\n.\nA7\nx\n" + b"L" * 2000 + b"\n\xff\xfe\n")
    asyncio.run(go())


def test_reject_mode(tmp_path: Path) -> None:
    async def go() -> None:
        async with smtpd_server(tmp_path, smtpd_forbid_bare_newline="reject",
                                smtpd_forbid_bare_newline_exclusions="") as (fake, c, maillog):
            await c.reply()
            await c.cmd("EHLO h\r\n")
            await c.cmd("MAIL FROM:<a@b.c>\r\n")
            await c.cmd("RCPT TO:<root>\r\n")
            await c.cmd("DATA\r\n")
            assert await c.cmd(b"x\ny\r\n.\r\n") == "550 5.5.2 mx.example Error: bare <LF> received"
            assert not fake.requests
            assert await c.cmd(b"NOOP\n") == "550 5.5.2 mx.example Error: bare <LF> received"
            assert await c.closed()
        assert "reject: END-OF-MESSAGE from localhost[127.0.0.1]: bare <LF> received" in \
            maillog.read_text()
    asyncio.run(go())


# A bare <LF> deep in a big message, in a piece that goes on to cleanup before the end.
BIG_WITH_BARE_LF = (b"Subject: big\r\n\r\n" + (b"x" * 78 + b"\r\n") * 3000
                    + b"late\nline\r\n" + (b"y" * 78 + b"\r\n") * 100 + b".\r\n")


@pytest.mark.parametrize("mode, exclusions, refused", [
    ("normalize", "", False), ("no", "", False), ("reject", "", True),
    ("reject", "$mynetworks", False),  # the client is exempt
], ids=["normalize", "no", "reject", "reject-exempt"])
def test_bare_lf_in_a_streamed_piece_by_setting(tmp_path: Path, mode: str, exclusions: str,
                                                 refused: bool) -> None:
    async def go() -> None:
        async with smtpd_server(tmp_path, smtpd_forbid_bare_newline=mode,
                                smtpd_forbid_bare_newline_exclusions=exclusions) as (fake, c, _):
            await c.reply()
            await c.cmd("EHLO h\r\n")
            await c.cmd("MAIL FROM:<a@b.c>\r\n")
            await c.cmd("RCPT TO:<root>\r\n")
            await c.cmd("DATA\r\n")
            reply = await c.cmd(BIG_WITH_BARE_LF)
            if refused:
                assert reply == "550 5.5.2 mx.example Error: bare <LF> received"
                assert not fake.requests
                return
            assert reply.startswith("250 2.0.0 Ok: queued as")
            assert fake.streamed == 1
            assert fake.requests[0].raw("content") == \
                BIG_WITH_BARE_LF[:-3].replace(b"\r\n", b"\n")
    asyncio.run(go())


def test_unauth_pipelining_disconnects(tmp_path: Path) -> None:
    async def go() -> None:
        async with smtpd_server(tmp_path) as (fake, c, maillog):
            await c.reply()
            await c.cmd("EHLO h\r\n")
            # PIPELINING allows MAIL+RCPT+DATA in one go, but nothing after DATA before 354.
            c.writer.write(b"MAIL FROM:<a@b.c>\r\nRCPT TO:<root>\r\nDATA\r\nSubject: x\r\n\r\n")
            assert await c.reply() == "250 2.1.0 Ok"
            assert await c.reply() == "250 2.1.5 Ok"
            assert await c.reply() == "554 5.5.0 Error: SMTP protocol synchronization"
            assert await c.closed()
            assert not fake.requests
        assert "improper command pipelining after DATA from localhost[127.0.0.1]: Subject: x" in \
            maillog.read_text()

    async def helo_client() -> None:
        async with smtpd_server(tmp_path) as (fake, c, _):
            await c.reply()
            await c.cmd("HELO h\r\n")  # no ESMTP: no pipelining at all
            c.writer.write(b"MAIL FROM:<a@b.c>\r\nRCPT TO:<root>\r\n")
            assert await c.reply() == "554 5.5.0 Error: SMTP protocol synchronization"
    asyncio.run(go())
    asyncio.run(helo_client())
