"""smtpd BDAT/CHUNKING (RFC 3030): Postfix 3.7's replies (checked against Debian's
Postfix), the content as cleanup gets it, limits; one message end to end; and
``with UTF8SMTP`` in Received: for SMTPUTF8 mail (the other half of the item)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from harness import ME, Instance
from smtpd_helpers import RawSMTP, smtpd_server


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


TRANSACTION = ["EHLO client.example\r\n", "MAIL FROM:<a@b.c>\r\n", "RCPT TO:<root@mx.example>\r\n"]


def test_chunks_make_one_message_with_postfix_byte_counts(tmp_path: Path) -> None:
    async def go() -> None:
        async with smtpd_server(tmp_path) as (fake, c, maillog):
            await c.reply()
            for cmd in TRANSACTION:
                assert (await c.cmd(cmd)).split("\n")[-1][:3] == "250"
            assert await c.cmd(b"BDAT 10\r\nSubject: x") == "250 2.0.0 Ok: 10 bytes"
            # each chunk's reply counts its bytes; the last one the message's, where a
            # bare <LF> counts 2 and the unfinished last line gets its <CR><LF>, as in Postfix
            assert await c.cmd(b"BDAT 23\r\n\r\n\r\n.dot stays\r\nbare\nlf") == \
                "250 2.0.0 Ok: 23 bytes"
            assert await c.cmd(b"BDAT 0 LAST\r\n") == "250 2.0.0 Ok: 36 bytes queued as A0000"
            # after LAST: a new transaction
            assert await c.cmd(b"BDAT 3\r\nabc") == "503 5.5.1 Error: need RCPT command"
            assert await c.cmd(b"BDAT 2 LAST\r\nde") == \
                "551 5.0.0 Discarded 2 bytes after earlier error"
            assert await c.cmd("NOOP\r\n") == "250 2.0.0 Ok"
            # a refused chunk without LAST: chunks are skipped up to LAST (or RSET), and
            # MAIL waits for that, as in Postfix
            assert await c.cmd(b"BDAT 3\r\nabc") == "503 5.5.1 Error: need RCPT command"
            assert await c.cmd("MAIL FROM:<a@b.c>\r\n") == "503 5.5.1 Error: MAIL after BDAT"
            assert await c.cmd("RCPT TO:<root@mx.example>\r\n") == \
                "503 5.5.1 Error: need MAIL command"
            assert await c.cmd(b"BDAT 1 LAST\r\nx") == \
                "551 5.0.0 Discarded 1 bytes after earlier error"
            assert await c.cmd("MAIL FROM:<a@b.c>\r\n") == "250 2.1.0 Ok"
            assert await c.cmd("QUIT\r\n") == "221 2.0.0 Bye"
            (req,) = fake.requests
            assert req.raw("content") == b"Subject: x\n\n.dot stays\nbare\nlf\n"
        await asyncio.sleep(0.05)
        assert ("disconnect from localhost[127.0.0.1] ehlo=1 mail=2/3 rcpt=1/2 bdat=3/7 noop=1 "
                "quit=1 commands=9/15") in maillog.read_text()
    run(go())


def test_what_postfix_refuses_around_bdat(tmp_path: Path) -> None:
    async def go() -> None:
        async with smtpd_server(tmp_path) as (fake, c, maillog):
            await c.reply()
            for cmd in TRANSACTION:
                await c.cmd(cmd)
            assert await c.cmd(b"BDAT 5\r\nhello") == "250 2.0.0 Ok: 5 bytes"
            assert await c.cmd("DATA\r\n") == "503 5.5.1 Error: DATA after BDAT"
            assert await c.cmd("RCPT TO:<root@mx.example>\r\n") == \
                "503 5.5.1 Error: RCPT after BDAT"
            assert await c.cmd("MAIL FROM:<c@d.e>\r\n") == "503 5.5.1 Error: nested MAIL command"
            assert await c.cmd(b"BDAT 0 LAST\r\n") == "250 2.0.0 Ok: 7 bytes queued as A0000"
            # RSET in the middle withdraws the message
            for cmd in TRANSACTION[1:]:
                await c.cmd(cmd)
            assert await c.cmd(b"BDAT 3\r\nabc") == "250 2.0.0 Ok: 3 bytes"
            assert await c.cmd("RSET\r\n") == "250 2.0.0 Ok"
            # a bare <LF> ends a line, a lone <CR> at the end is text; what is left over
            # after the count is the next command
            for cmd in TRANSACTION[1:]:
                await c.cmd(cmd)
            assert await c.cmd(b"BDAT 15 LAST\r\nSubject: a\nb\r\n\r\n") == \
                "250 2.0.0 Ok: 18 bytes queued as A0001"
            assert await c.reply() == "500 5.5.2 Error: bad syntax"
            assert await c.cmd(b"BDAT\r\n") == "521 5.5.4 Syntax: BDAT count [LAST]"
            assert await c.closed()
            assert [r.raw("content") for r in fake.requests] == [
                b"hello\n", b"Subject: a\nb\n\r\n"]
    run(go())


def test_no_valid_recipients_and_size_limit(tmp_path: Path) -> None:
    async def go() -> None:
        async with smtpd_server(tmp_path, message_size_limit="1000") as (fake, c, maillog):
            await c.reply()
            await c.cmd(TRANSACTION[0])
            await c.cmd(TRANSACTION[1])
            assert await c.cmd(b"BDAT 4 LAST\r\nabcd") == "554 5.5.1 Error: no valid recipients"
            await c.cmd(TRANSACTION[1])
            await c.cmd(TRANSACTION[2])
            assert await c.cmd(b"BDAT 600\r\n" + b"x" * 600) == "250 2.0.0 Ok: 600 bytes"
            assert await c.cmd(b"BDAT 600\r\n" + b"y" * 600) == \
                "552 5.3.4 Chunk exceeds message size limit"
            assert await c.cmd(b"BDAT 5 LAST\r\nzzzzz") == \
                "551 5.0.0 Discarded 5 bytes after earlier error"
            assert await c.cmd("MAIL FROM:<a@b.c>\r\n") == "250 2.1.0 Ok"
            assert fake.requests == []
    run(go())


def test_discarded_chunking_is_not_offered_and_bdat_ends_the_session(tmp_path: Path) -> None:
    async def go() -> None:
        async with smtpd_server(tmp_path, smtpd_discard_ehlo_keywords="chunking") as (
                fake, c, maillog):
            await c.reply()
            assert "CHUNKING" not in await c.cmd(TRANSACTION[0])
            assert await c.cmd(b"BDAT 4\r\n") == "521 5.5.1 Error: command not implemented"
            assert await c.closed()
        await asyncio.sleep(0.05)
        assert "disconnect from localhost[127.0.0.1] ehlo=1 bdat=0/1 commands=1/2" in \
            maillog.read_text()
    run(go())


def test_bdat_message_delivered(instance: Instance) -> None:
    body = b"Subject: chunked\r\n\r\n.not unstuffed\r\nend\r\n"
    with RawSMTP(instance.port) as s:
        reply = s.reply
        assert reply().startswith(b"220 ")
        s.send(b"EHLO client.example\r\n")
        assert reply() == b"250 CHUNKING\r\n"
        s.send(b"MAIL FROM:<alice@example.org>\r\n" + f"RCPT TO:<{ME}@localhost>\r\n".encode()
                  + b"BDAT %d LAST\r\n" % len(body) + body)
        assert reply() == b"250 2.1.0 Ok\r\n"
        assert reply() == b"250 2.1.5 Ok\r\n"
        assert reply().startswith(b"250 2.0.0 Ok: %d bytes queued as " % len(body))
    (msg,) = instance.wait_maildir(1)
    assert msg.endswith(b"\n.not unstuffed\nend\n")
    assert b"with ESMTP id" in msg


def test_smtputf8_mail_is_received_with_utf8smtp(instance: Instance) -> None:
    with instance.smtp() as c:
        c.ehlo("client.example")
        c.sendmail("alice@example.org", [f"{ME}@localhost"],
                   "Subject: grüße\r\n\r\nbody\r\n".encode(), mail_options=["SMTPUTF8"])
    (msg,) = instance.wait_maildir(1)
    assert b"with UTF8SMTP id" in msg


def test_a_chunk_over_the_size_limit_with_a_real_client(new_instance) -> None:  # type: ignore[no-untyped-def]
    """Raw BDAT on a real instance: Postfix's 552 for the chunk that would take the message
    over message_size_limit (judged before it is read), the rest discarded up to LAST;
    a null BDAT request refused; then a message that fits is queued and delivered."""
    inst: Instance = new_instance(maildir=True)
    inst.set(message_size_limit="2000")
    inst.start()
    with RawSMTP(inst.port) as s:
        reply = s.reply
        assert reply().startswith(b"220 ")
        s.send(b"EHLO client.example\r\n")
        assert reply() == b"250 CHUNKING\r\n"
        s.send(b"MAIL FROM:<alice@example.org>\r\n"
                  + f"RCPT TO:<{ME}@localhost>\r\n".encode()
                  + b"BDAT 1500\r\n" + b"x" * 1500
                  + b"BDAT 1000\r\n" + b"y" * 1000
                  + b"BDAT 10 LAST\r\n" + b"z" * 10)
        assert reply() == b"250 2.1.0 Ok\r\n"
        assert reply() == b"250 2.1.5 Ok\r\n"
        assert reply() == b"250 2.0.0 Ok: 1500 bytes\r\n"
        assert reply() == b"552 5.3.4 Chunk exceeds message size limit\r\n"
        assert reply() == b"551 5.0.0 Discarded 10 bytes after earlier error\r\n"
        body = b"Subject: fits\r\n\r\nsmall\r\n"
        s.send(b"MAIL FROM:<alice@example.org>\r\n" + f"RCPT TO:<{ME}@localhost>\r\n".encode()
                  + b"BDAT 0\r\n" + b"BDAT 3 LAST\r\nabc" + b"RSET\r\n"
                  + b"MAIL FROM:<alice@example.org>\r\n" + f"RCPT TO:<{ME}@localhost>\r\n".encode()
                  + b"BDAT %d LAST\r\n" % len(body) + body)
        assert reply() == b"250 2.1.0 Ok\r\n"
        assert reply() == b"250 2.1.5 Ok\r\n"
        assert reply() == b"551 5.7.1 Null BDAT request\r\n"
        assert reply() == b"551 5.0.0 Discarded 3 bytes after earlier error\r\n"
        assert reply() == b"250 2.0.0 Ok\r\n"
        assert reply() == b"250 2.1.0 Ok\r\n"
        assert reply() == b"250 2.1.5 Ok\r\n"
        assert reply().startswith(b"250 2.0.0 Ok: %d bytes queued as " % len(body))
    (msg,) = inst.wait_maildir(1)
    assert msg.endswith(b"\nsmall\n")
    inst.wait_log(r"warning: NOQUEUE: BDAT request from localhost\[127\.0\.0\.1\] exceeds "
                  r"message size limit")
    inst.wait_log(r"warning: NOQUEUE: null BDAT request from localhost\[127\.0\.0\.1\]")
