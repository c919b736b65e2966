"""smtpd protocol: Postfix's replies and log lines, against a fake cleanup peer."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from smtpd_helpers import smtpd_server


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def test_session_replies_and_queueing(tmp_path: Path) -> None:
    async def go() -> None:
        async with smtpd_server(tmp_path) as (fake, c, maillog):
            assert await c.reply() == "220 mx.example ESMTP Postfix"
            ehlo = await c.cmd("EHLO client.example\r\n")
            assert ehlo.splitlines() == [
                "250-mx.example", "250-PIPELINING", "250-SIZE 10240000", "250-VRFY", "250-ETRN",
                "250-ENHANCEDSTATUSCODES", "250-8BITMIME", "250-DSN", "250-SMTPUTF8",
                "250 CHUNKING"]
            assert await c.cmd("RCPT TO:<root>\r\n") == "503 5.5.1 Error: need MAIL command"
            assert await c.cmd("DATA\r\n") == "503 5.5.1 Error: need RCPT command"
            assert await c.cmd("MAIL FROM:<a b@c>\r\n") == "501 5.1.7 Bad sender address syntax"
            assert await c.cmd("MAIL FROM:\r\n") == "501 5.5.4 Syntax: MAIL FROM:<address>"
            assert await c.cmd("MAIL FROM:<a@b.c> SIZE=99999999\r\n") == \
                "552 5.3.4 Message size exceeds fixed limit"
            assert await c.cmd("MAIL FROM:<a@b.c> FOO=bar\r\n") == \
                "555 5.5.4 Unsupported option: FOO=bar"
            assert await c.cmd("MAIL FROM:<a@b.c> BODY=8BITMIME\r\n") == "250 2.1.0 Ok"
            assert await c.cmd("MAIL FROM:<a@b.c>\r\n") == "503 5.5.1 Error: nested MAIL command"
            assert await c.cmd("DATA\r\n") == "554 5.5.1 Error: no valid recipients"
            assert await c.cmd("RCPT TO:<>\r\n") == "501 5.1.3 Bad recipient address syntax"
            assert await c.cmd("RCPT TO:<nosuchuser@mx.example>\r\n") == (
                "550 5.1.1 <nosuchuser@mx.example>: Recipient address rejected: "
                "User unknown in local recipient table")
            assert await c.cmd("RCPT TO:<root@mx.example>\r\n") == "250 2.1.5 Ok"
            assert await c.cmd("RCPT TO:<@x,@y:root@localhost>\r\n") == "250 2.1.5 Ok"
            assert await c.cmd("DATA\r\n") == "354 End data with <CR><LF>.<CR><LF>"
            body = b"Subject: t\r\n\r\n..dot\r\n8bit \xe9\r\n" + b"x" * 5000 + b"\r\n.\r\n"
            assert await c.cmd(body) == "250 2.0.0 Ok: queued as A0000"
            assert await c.cmd("NOOP\r\n") == "250 2.0.0 Ok"
            assert await c.cmd("RSET\r\n") == "250 2.0.0 Ok"
            assert await c.cmd("VRFY root\r\n") == "252 2.0.0 root"
            assert await c.cmd("HELP\r\n") == "500 5.5.2 Error: command not recognized"
            assert await c.cmd("\r\n") == "500 5.5.2 Error: bad syntax"
            assert await c.cmd("QUIT\r\n") == "221 2.0.0 Bye"
            assert await c.closed()
            req = fake.requests[0]
            assert req.text("origin") == "smtpd" and req.text("sender") == "a@b.c"
            assert req.all("rcpt") == ["root@mx.example", "root@localhost"]
            assert req.raw("content") == b"Subject: t\n\n.dot\n8bit \xe9\n" + b"x" * 5000 + b"\n"
            assert req.text("encoding") == "8bitmime" and req.text("protocol") == "ESMTP"
            assert req.text("client_name") == "localhost"
            assert req.text("client_addr") == "127.0.0.1"
            assert req.text("helo_name") == "client.example"
            assert req.text("rewrite_context") == "local"  # permit_inet_interfaces
        await asyncio.sleep(0.05)
        log = maillog.read_text()
        assert "connect from localhost[127.0.0.1]" in log
        assert "A0000: client=localhost[127.0.0.1]" in log
        assert ("NOQUEUE: reject: RCPT from localhost[127.0.0.1]: 550 5.1.1 "
                "<nosuchuser@mx.example>: Recipient address rejected: User unknown in local "
                "recipient table; from=<a@b.c> to=<nosuchuser@mx.example> proto=ESMTP "
                "helo=<client.example>") in log
        assert ("disconnect from localhost[127.0.0.1] ehlo=1 mail=1/6 rcpt=2/5 data=1/3 rset=1 "
                "noop=1 vrfy=1 quit=1 unknown=0/1 commands=9/20") in log
    run(go())


def test_relay_control_and_mynetworks(tmp_path: Path) -> None:
    async def go() -> None:
        async with smtpd_server(tmp_path, mynetworks="10.0.0.0/8") as (fake, c, maillog):
            await c.reply()
            await c.cmd("HELO h\r\n")
            await c.cmd("MAIL FROM:<a@b.c>\r\n")
            assert await c.cmd("RCPT TO:<x@foreign.example>\r\n") == \
                "454 4.7.1 <x@foreign.example>: Relay access denied"
            assert await c.cmd("RCPT TO:<u%foreign.example@mx.example>\r\n") == \
                "454 4.7.1 <u%foreign.example@mx.example>: Relay access denied"
        log = maillog.read_text()
        assert ("NOQUEUE: reject: RCPT from localhost[127.0.0.1]: 454 4.7.1 <x@foreign.example>: "
                "Relay access denied; from=<a@b.c> to=<x@foreign.example> proto=SMTP helo=<h>") in log
        async with smtpd_server(tmp_path, mynetworks="10.0.0.0/8",
                                smtpd_relay_restrictions="permit_mynetworks, "
                                "reject_unauth_destination") as (fake, c, _):
            await c.reply()
            await c.cmd("MAIL FROM:<a@b.c>\r\n")
            assert await c.cmd("RCPT TO:<x@foreign.example>\r\n") == \
                "554 5.7.1 <x@foreign.example>: Relay access denied"
        async with smtpd_server(tmp_path, mynetworks="127.0.0.0/8") as (fake, c, _):
            await c.reply()
            await c.cmd("MAIL FROM:<a@b.c>\r\n")
            assert await c.cmd("RCPT TO:<x@foreign.example>\r\n") == "250 2.1.5 Ok"
    run(go())


def test_limits_and_errors(tmp_path: Path) -> None:
    async def go() -> None:
        async with smtpd_server(tmp_path, smtpd_recipient_limit="2", message_size_limit="100",
                                smtpd_hard_error_limit="3") as (fake, c, maillog):
            await c.reply()
            await c.cmd("EHLO h\r\n")
            await c.cmd("MAIL FROM:<a@b.c>\r\n")
            assert await c.cmd("RCPT TO:<root>\r\n") == "250 2.1.5 Ok"
            assert await c.cmd("RCPT TO:<root>\r\n") == "250 2.1.5 Ok"
            assert await c.cmd("RCPT TO:<root>\r\n") == "452 4.5.3 Error: too many recipients"
            await c.cmd("DATA\r\n")
            assert await c.cmd(b"x" * 500 + b"\r\n.\r\n") == \
                "552 5.3.4 Message size exceeds fixed limit"
            assert not fake.requests
            assert await c.cmd("FOO\r\n") == "500 5.5.2 Error: command not recognized"
            assert await c.cmd("BAR\r\n") == "500 5.5.2 Error: command not recognized"
            assert await c.cmd("NOOP\r\n") == "421 4.7.0 mx.example Error: too many errors"
            assert await c.closed()
        assert "too many errors after UNKNOWN from localhost[127.0.0.1]" in maillog.read_text()
    run(go())


@pytest.mark.parametrize("junk", ["EHLO h", "HELO h", "NOOP", "RSET", "VRFY root"])
def test_junk_command_limit_counts_as_postfix(tmp_path: Path, junk: str) -> None:
    """Postfix's smtpd_junk_command_limit: HELO and EHLO count as NOOP, RSET, VRFY and
    ETRN do (an EHLO flood is not free), and a command is an error once more than the
    limit went before it (checked against Debian's Postfix: with limit 2 and hard limit
    3, the 7th such command gets 421)."""
    async def go() -> None:
        async with smtpd_server(tmp_path, smtpd_junk_command_limit="2",
                                smtpd_hard_error_limit="3") as (fake, c, maillog):
            await c.reply()
            for _ in range(6):
                assert (await c.cmd(f"{junk}\r\n")).split("\n")[-1][:3] in ("250", "252")
            assert await c.cmd(f"{junk}\r\n") == "421 4.7.0 mx.example Error: too many errors"
            assert await c.closed()
    run(go())


def test_cleanup_failures(tmp_path: Path) -> None:
    async def go() -> None:
        async with smtpd_server(tmp_path) as (fake, c, maillog):
            fake.status = 451
            await c.reply()
            await c.cmd("EHLO h\r\n")
            await c.cmd("MAIL FROM:<a@b.c>\r\n")
            await c.cmd("RCPT TO:<root>\r\n")
            await c.cmd("DATA\r\n")
            assert await c.cmd("x\r\n.\r\n") == "451 4.3.0 Error: internal error"
        async with smtpd_server(tmp_path, cleanup_up=False) as (fake, c, maillog):
            await c.reply()
            await c.cmd("MAIL FROM:<a@b.c>\r\n")
            await c.cmd("RCPT TO:<root>\r\n")
            await c.cmd("DATA\r\n")
            assert await c.cmd("x\r\n.\r\n") == "451 4.3.0 Error: queue file write error"
        assert "warning: connect to cleanup service" in maillog.read_text()
    run(go())


def test_lost_connection_is_logged(tmp_path: Path) -> None:
    async def go() -> None:
        async with smtpd_server(tmp_path) as (fake, c, maillog):
            await c.reply()
            await c.cmd("EHLO h\r\n")
            await c.cmd("MAIL FROM:<a@b.c>\r\n")
            await c.cmd("RCPT TO:<root>\r\n")
            await c.cmd("DATA\r\n")
            c.writer.write(b"12345")
            await c.writer.drain()
            c.writer.close()
            for _ in range(100):
                if "disconnect from" in maillog.read_text():
                    break
                await asyncio.sleep(0.02)
        log = maillog.read_text()
        assert "lost connection after DATA (5 bytes) from localhost[127.0.0.1]" in log
        assert "disconnect from localhost[127.0.0.1] ehlo=1 mail=1 rcpt=1 data=0/1 commands=3/4" in log
    run(go())


def test_smtpd_timeout_per_read(tmp_path: Path) -> None:
    """smtpd_timeout bounds each wait for input, not the session: slow but steady
    clients go on; a client that stops gets Postfix's 421 and log line."""
    async def go() -> None:
        async with smtpd_server(tmp_path, smtpd_timeout="1s") as (fake, c, maillog):
            assert await c.reply() == "220 mx.example ESMTP Postfix"
            for cmd in ("EHLO client.example\r\n", "NOOP\r\n", "NOOP\r\n", "NOOP\r\n"):
                await asyncio.sleep(0.4)  # together more than smtpd_timeout
                assert (await c.cmd(cmd)).splitlines()[-1] in ("250 CHUNKING", "250 2.0.0 Ok")
            assert await c.cmd("MAIL FROM:<a@b.c>\r\n") == "250 2.1.0 Ok"
            assert await c.reply() == "421 4.4.2 mx.example Error: timeout exceeded"
            assert await c.closed()
        await asyncio.sleep(0.05)
        log = maillog.read_text()
        assert "postfix/smtpd[" in log
        assert "]: timeout after MAIL from localhost[127.0.0.1]\n" in log
        assert ("]: disconnect from localhost[127.0.0.1] ehlo=1 mail=1 noop=3 commands=5\n"
                in log)
    run(go())


def test_timeout_inside_data_logs_the_bytes_received(tmp_path: Path) -> None:
    """Postfix's "timeout after DATA (N bytes)" (checked against Debian's Postfix), as
    for a lost connection; the message is withdrawn."""
    async def go() -> None:
        async with smtpd_server(tmp_path, smtpd_timeout="1s") as (fake, c, maillog):
            await c.reply()
            for cmd in ("EHLO h\r\n", "MAIL FROM:<a@b.c>\r\n", "RCPT TO:<root>\r\n"):
                await c.cmd(cmd)
            assert await c.cmd("DATA\r\n") == "354 End data with <CR><LF>.<CR><LF>"
            assert await c.cmd(b"Subject: x\r\n\r\n") == \
                "421 4.4.2 mx.example Error: timeout exceeded"
            assert await c.closed()
            assert fake.requests == []
        await asyncio.sleep(0.05)
        log = maillog.read_text()
        assert "timeout after DATA (14 bytes) from localhost[127.0.0.1]\n" in log
    run(go())


@pytest.mark.parametrize("smtputf8", ["yes", "no"])
def test_vrfy_takes_rfc6531s_smtputf8_as_postfix(tmp_path: Path, smtputf8: str) -> None:
    """VRFY address SMTPUTF8 (RFC 6531), with Postfix's replies (checked against
    Debian's Postfix): the keyword is not part of the address, and allows UTF-8 in it."""
    async def go() -> None:
        async with smtpd_server(tmp_path, smtputf8_enable=smtputf8) as (fake, c, maillog):
            await c.reply()
            await c.cmd("EHLO client.example\r\n")
            syntax = "501 5.5.4 Syntax: VRFY address" + (" [SMTPUTF8]" if smtputf8 == "yes"
                                                         else "")
            assert await c.cmd("VRFY\r\n") == syntax
            if smtputf8 == "yes":
                assert await c.cmd("VRFY SMTPUTF8\r\n") == syntax
                assert await c.cmd("VRFY root smtputf8\r\n") == "252 2.0.0 root"
                assert await c.cmd("VRFY r\u00f4ot@mx.example SMTPUTF8\r\n") == (
                    "550 5.1.1 <r\u00f4ot@mx.example>: Recipient address rejected: "
                    "User unknown in local recipient table")
            else:
                assert await c.cmd("VRFY root SMTPUTF8\r\n") == \
                    "501 5.1.3 Bad recipient address syntax"
    run(go())
