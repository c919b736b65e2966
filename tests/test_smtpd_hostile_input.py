"""smtpd against hostile command input: NUL, CR, 8-bit bytes, overlong lines, garbage.

Every command line gets an SMTP reply and the session goes on; no client
input raises out of a session (no "Traceback", no "internal error" in the
log); control characters never reach the log or a header raw. Replies are
Postfix 3.7's (checked against Debian's Postfix on a loopback port).
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest
from harness import ME, Instance
from pymailsys.daemons.smtpd.handler import Smtpd
from pymailsys.daemons.smtpd.session import Session
from smtpd_helpers import Client, make_config, smtpd_server, start_sessions
from test_smtpd_e2e import maildir_messages, session

from pymailsys import log

COMMANDS = [b"HELO", b"EHLO", b"MAIL FROM:", b"RCPT TO:", b"VRFY", b"EXPN", b"NOOP", b"RSET",
            b"DATA", b"AUTH", b"STARTTLS", b"ETRN", b"XYZZY", b""]
ARGUMENTS = [b"<\"a\0b\"@mx.example>", b"a\0b", b"\0", b"<\"a\rb\"@mx.example>", b"a\rb",
             b"\r", b"<\xe9\xff@mx.example>", b"\xe9", b"\xc3\xa9t\xc3\xa9", b"\x01\x1b[2J",
             b"<" + b"x" * 5000 + b"@mx.example>", b"y" * 10000]
REPLY = re.compile(r"^\d{3}[ -]")


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


@pytest.mark.parametrize("smtputf8", ["yes", "no"])
def test_every_command_with_hostile_arguments_gets_a_reply(tmp_path: Path,
                                                            smtputf8: str) -> None:
    async def go() -> None:
        # (no smtpd_forbidden_commands: its regexp would end the session at the first
        # line that starts with "<"; test_forbidden_commands_end_the_session has those)
        async with smtpd_server(tmp_path, smtputf8_enable=smtputf8,
                                smtpd_forbidden_commands="",
                                smtpd_hard_error_limit="100000",
                                smtpd_junk_command_limit="100000") as (fake, c, maillog):
            await c.reply()
            for verb in COMMANDS:
                for arg in ARGUMENTS:
                    assert (await c.cmd("RSET\r\n")).startswith("250")
                    assert (await c.cmd("MAIL FROM:<s@example.org>\r\n")).startswith("250")
                    line = verb + (b" " if verb and not verb.endswith(b":") else b"") + arg
                    reply = await c.cmd(line + b"\r\n")
                    assert REPLY.match(reply), (line[:60], reply)
                    assert "<EOF>" not in reply, (line[:60], reply)
            for raw in (b"\0", b"\0\0\0", b"\xff\xfe", b"\x1b[31m", b"z" * 20000, b"\r\r\r"):
                reply = await c.cmd(raw + b"\r\n")
                assert REPLY.match(reply) and "<EOF>" not in reply, (raw[:20], reply)
            assert await c.cmd("QUIT\0junk\r\n") == "221 2.0.0 Bye"
        await asyncio.sleep(0.05)
        log = maillog.read_bytes()
        assert b"Traceback" not in log and b"internal error" not in log
        assert not re.search(rb"[\x00-\x08\x0b-\x1f\x7f]", log), "raw control character in the log"
    run(go())


def test_bdat_with_a_hostile_count_ends_the_session_as_in_postfix(tmp_path: Path) -> None:
    """BDAT's count says how many bytes follow: one that cannot be read means the
    rest of the stream cannot be told apart, so Postfix says 521 and hangs up."""
    async def go() -> None:
        for n, arg in enumerate(ARGUMENTS + [b"99999999999999999999", b"5 FIRST"]):
            async with smtpd_server(tmp_path / str(n)) as (fake, c, maillog):
                await c.reply()
                reply = await c.cmd(b"BDAT " + arg + b"\r\n")
                if reply == "500 5.5.2 Error: bad UTF-8 syntax":  # refused as a line, first
                    continue
                assert reply == "521 5.5.4 Syntax: BDAT count [LAST]", arg
                assert await c.closed()
            assert b"Traceback" not in maillog.read_bytes()
    run(go())


def test_postfix_replies_to_nul_cr_and_bad_utf8(tmp_path: Path) -> None:
    async def go() -> None:
        async with smtpd_server(tmp_path) as (fake, c, maillog):
            await c.reply()
            assert await c.cmd(b"EHLO a\0b\r\n") != ""
            assert await c.cmd(b"HELO a\xe9b\r\n") == "500 5.5.2 Error: bad UTF-8 syntax"
            assert await c.cmd(b"HELO a\rb\r\n") == "250 mx.example"
            assert await c.cmd(b"MAIL FROM:<a\0b@x>\r\n") == "501 5.1.7 Bad sender address syntax"
            assert await c.cmd(b"MAIL FROM:<\"a\0b\"@x>\r\n") == \
                "501 5.1.7 Bad sender address syntax"
            assert await c.cmd(b"MAIL FROM:<\"a\x01b\"@x>\r\n") == \
                "501 5.1.7 Bad sender address syntax"
            assert await c.cmd(b"MAIL FROM:<\"a\rb\"@x>\r\n") == "250 2.1.0 Ok"
            assert await c.cmd(b"RCPT TO:<\"a\0b\"@mx.example>\r\n") == \
                "501 5.1.3 Bad recipient address syntax"
            assert await c.cmd(b"RCPT TO:<\"root\x7f\"@mx.example>\r\n") == \
                "501 5.1.3 Bad recipient address syntax"
            assert await c.cmd(b"RCPT TO:<root\0@mx.example>\r\n") == \
                "501 5.1.3 Bad recipient address syntax"
            assert await c.cmd(b"RCPT TO:<\xff\xfe@mx.example>\r\n") == \
                "500 5.5.2 Error: bad UTF-8 syntax"
            assert await c.cmd(b"RCPT TO:<root@mx.example>\r\n") == "250 2.1.5 Ok"
            assert await c.cmd(b"VRFY root\0b\r\n") == "252 2.0.0 root"
            assert await c.cmd(b"NOOP \0\r\n") == "250 2.0.0 Ok"
            assert await c.cmd(b"RSET \r\r\n") == "250 2.0.0 Ok"
            assert await c.cmd(b"\0\r\n") == "500 5.5.2 Error: bad syntax"
            assert await c.cmd(b"EXPN root\r\n") == "500 5.5.2 Error: command not recognized"
            assert await c.cmd(b"NOOP " + b"x" * 3000 + b"\r\n") == "250 2.0.0 Ok"
            assert await c.cmd("QUIT\r\n") == "221 2.0.0 Bye"
        await asyncio.sleep(0.05)
        log = maillog.read_text()
        assert "warning: localhost[127.0.0.1]: request longer than 2048: NOOP xxx" in log
        assert "Traceback" not in log
    run(go())


def test_cr_in_helo_and_sender_never_reaches_headers_or_log(instance: Instance) -> None:
    replies = session(instance, [
        b"HELO a\rb\r\n", b"MAIL FROM:<\"s\rt\"@example.org>\r\n",
        f"RCPT TO:<{ME}@localhost>\r\n".encode(),
        b"RCPT TO:<\"x\0y\"@localhost>\r\n", b"VRFY a\0b\r\n", b"DATA\r\n",
        b"Subject: cr test\r\n\r\nbody\r\n.\r\n", b"QUIT\r\n"])
    assert replies[1].startswith("250 ")
    assert replies[2:5] == ["250 2.1.0 Ok", "250 2.1.5 Ok", "501 5.1.3 Bad recipient address syntax"]
    assert replies[-2].startswith("250 2.0.0 Ok: queued as")
    msg = maildir_messages(instance, 1)[0]
    head = msg.split(b"\n\n", 1)[0]
    assert b"\r" not in head
    # (Postfix writes <"s t"@example.org>: quoting is the address grammar's business)
    assert re.match(rb'Return-Path: <"?s t"?@example.org>\n', head)
    assert b"Received: from a?b (localhost [127.0.0.1])" in head
    instance.wait_log(r"status=sent")
    log = instance.log_path.read_bytes()
    assert b"\r" not in log and b"\0" not in log
    assert b"Traceback" not in log and b"internal error" not in log


def test_an_unexpected_exception_ends_the_session_with_421_and_one_warning(
        tmp_path: Path) -> None:
    """The last line of defence: a bug in a command costs the session, not the process."""
    class BuggySession(Session):
        async def smtp_NOOP(self, arg: str) -> bool:
            raise KeyError(arg)

    async def go() -> None:
        cfg = make_config(tmp_path)
        log.init(cfg, "smtpd")
        smtpd = Smtpd(cfg)

        srv = await start_sessions(smtpd, BuggySession)
        c = Client(*await asyncio.open_connection("127.0.0.1", srv.sockets[0].getsockname()[1]))
        try:
            await c.reply()
            assert await c.cmd("NOOP boom\r\n") == "421 4.3.0 mx.example Error: internal error"
            assert await c.closed()
        finally:
            srv.close()
            await smtpd.close()
        await asyncio.sleep(0.05)
        log_text = (tmp_path / "maillog").read_text()
        assert ("warning: internal error after NOOP from localhost[127.0.0.1]: "
                "KeyError: 'boom' (test_smtpd_hostile_input.py, line ") in log_text
        assert "Traceback" not in log_text
        assert "disconnect from localhost[127.0.0.1] noop=0/1 commands=0/1" in log_text
    run(go())


def test_size_parameter_takes_ascii_digits_only_as_postfix(tmp_path: Path) -> None:
    """SIZE= as Postfix's alldig() and off_cvt_string(): "²" (which str.isdigit takes and
    int() refuses) and "٣" are bad syntax, not an internal error or a size of 3; a size
    beyond an off_t is over the file system's limit."""
    async def go() -> None:
        async with smtpd_server(tmp_path, message_size_limit="0") as (fake, c, maillog):
            await c.reply()
            await c.cmd("EHLO client.example\r\n")
            for value in ("\u00b2", "\u0663", "abc", "", "-1", "1e3"):
                assert await c.cmd(f"MAIL FROM:<a@b.c> SIZE={value}\r\n") == \
                    "501 5.5.4 Bad message size syntax", value
            for value in ("9223372036854775808", "9" * 3000):
                assert await c.cmd(f"MAIL FROM:<a@b.c> SIZE={value}\r\n") == \
                    "552 5.3.4 Message size exceeds file system imposed limit"
            assert await c.cmd("MAIL FROM:<a@b.c> SIZE\r\n") == \
                "555 5.5.4 Unsupported option: SIZE"
            assert await c.cmd("MAIL FROM:<a@b.c> SIZE=009223372036854775807\r\n") == \
                "250 2.1.0 Ok"
            assert await c.cmd("QUIT\r\n") == "221 2.0.0 Bye"
        await asyncio.sleep(0.05)
        assert b"internal error" not in maillog.read_bytes()
    run(go())


def test_bdat_count_takes_ascii_digits_only_and_is_logged_when_malformed(
        tmp_path: Path) -> None:
    async def go() -> None:
        async with smtpd_server(tmp_path) as (fake, c, maillog):
            await c.reply()
            await c.cmd("EHLO client.example\r\n")
            assert await c.cmd("BDAT \u0663\r\nabc") == "521 5.5.4 Syntax: BDAT count [LAST]"
            assert await c.closed()
        await asyncio.sleep(0.05)
        assert ("warning: NOQUEUE: malformed BDAT command syntax from localhost[127.0.0.1]: "
                "BDAT \u0663") in maillog.read_text()
    run(go())


@pytest.mark.parametrize("line", [b"GET / HTTP/1.1", b"post /cgi HTTP/1.0", b"CONNECT mx:25",
                                  b"\x16\x03\x01\x02\x05", b"Subject: hi", b"<p>",
                                  b"X-Mailer:x"])
def test_forbidden_commands_end_the_session(tmp_path: Path, line: bytes) -> None:
    """Postfix's smtpd_forbidden_commands (CONNECT GET POST, and by its regexp any command
    that does not start with a letter) and a header name in place of a command: an HTTP
    request or mail content is not answered line by line, the session ends."""
    async def go() -> None:
        async with smtpd_server(tmp_path) as (fake, c, maillog):
            await c.reply()
            assert await c.cmd(line + b"\r\n") == \
                "221 2.7.0 Error: I can break rules, too. Goodbye."
            assert await c.closed()
        await asyncio.sleep(0.05)
        text = maillog.read_text()
        assert ("warning: non-SMTP command from localhost[127.0.0.1]: "
                + log.escape(line)) in text
        assert "disconnect from localhost[127.0.0.1] unknown=0/1 commands=0/1" in text
    run(go())


def test_forbidden_commands_as_configured(tmp_path: Path) -> None:
    async def go() -> None:
        async with smtpd_server(tmp_path, smtpd_forbidden_commands="XYZZY") as (
                fake, c, maillog):
            await c.reply()
            assert await c.cmd("GET / HTTP/1.1\r\n") == "500 5.5.2 Error: command not recognized"
            assert await c.cmd("NOOP\r\n") == "250 2.0.0 Ok"
            assert await c.cmd("xyzzy\r\n") == "221 2.7.0 Error: I can break rules, too. Goodbye."
            assert await c.closed()
    run(go())
