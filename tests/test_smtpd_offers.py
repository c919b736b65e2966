"""smtpd offers only what works: EHLO keywords, DSN parameters, empty aliases."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

from harness import ME, Instance, wait_until
from smtpd_helpers import smtpd_server


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def test_ehlo_offers_dsn_and_etrn_and_refuses_what_is_ignored(tmp_path: Path) -> None:
    async def go() -> None:
        async with smtpd_server(tmp_path) as (fake, c, maillog):
            await c.reply()
            words = [line[4:] for line in (await c.cmd("EHLO client.example\r\n")).splitlines()]
            assert "DSN" in words and "ETRN" in words
            assert await c.cmd("MAIL FROM:<a@b.c> RET=HDRS ENVID=x SMTPUTF8\r\n") == \
                "250 2.1.0 Ok"
            assert await c.cmd("RCPT TO:<root@mx.example> FOO=1\r\n") == \
                "555 5.5.4 Unsupported option: FOO=1"
            assert await c.cmd("RSET\r\n") == "250 2.0.0 Ok"
            # Postfix's ETRN without fast_flush_domains for that domain
            assert await c.cmd("ETRN example.com\r\n") == "459 <example.com>: service unavailable"
    run(go())


def test_discarded_dsn_is_neither_offered_nor_accepted(tmp_path: Path) -> None:
    async def go() -> None:
        async with smtpd_server(tmp_path, smtpd_discard_ehlo_keywords="dsn") as (
                fake, c, maillog):
            await c.reply()
            words = [line[4:] for line in (await c.cmd("EHLO client.example\r\n")).splitlines()]
            assert "DSN" not in words
            # Postfix's reply for MAIL's DSN parameters too (checked against Debian's Postfix)
            for param in ("RET=HDRS", "ENVID=x", "RET=BAD"):
                assert await c.cmd(f"MAIL FROM:<a@b.c> {param}\r\n") == \
                    "501 5.7.1 DSN support is disabled"
            assert await c.cmd("MAIL FROM:<a@b.c>\r\n") == "250 2.1.0 Ok"
            assert await c.cmd("RCPT TO:<root@mx.example> NOTIFY=NEVER\r\n") == \
                "501 5.7.1 DSN support is disabled"
            assert await c.cmd("RCPT TO:<root@mx.example> ORCPT=rfc822;x@y\r\n") == \
                "501 5.7.1 DSN support is disabled"
    run(go())


def test_discarded_smtputf8_is_neither_offered_nor_accepted(tmp_path: Path) -> None:
    async def go() -> None:
        async with smtpd_server(tmp_path, smtpd_discard_ehlo_keywords="smtputf8, vrfy") as (
                fake, c, maillog):
            await c.reply()
            words = [line[4:] for line in (await c.cmd("EHLO client.example\r\n")).splitlines()]
            assert words == ["mx.example", "PIPELINING", "SIZE 10240000", "ETRN",
                             "ENHANCEDSTATUSCODES", "8BITMIME", "DSN", "CHUNKING"]
            assert await c.cmd("MAIL FROM:<a@b.c> SMTPUTF8\r\n") == \
                "555 5.5.4 Unsupported option: SMTPUTF8"
    run(go())


def test_alias_without_value_is_an_unknown_recipient(new_instance) -> None:  # type: ignore[no-untyped-def]
    inst = new_instance()
    aliases = inst.config_dir / "aliases"
    aliases.write_text(f"empty:\nblank:   \nfull: {ME}\n")
    result = inst.tool("newaliases", check=True)
    assert f"{aliases}, line 1: need name:value pair" in result.stderr
    assert f"{aliases}, line 2: need name:value pair" in result.stderr
    assert inst.tool("postmap", "-q", "empty", f"hash:{aliases}").returncode == 1
    inst.start()
    with inst.smtp() as c:
        c.ehlo()
        c.mail("someone@example.org")
        for name in ("empty", "blank"):
            assert c.rcpt(f"{name}@localhost") == (
                550, f"5.1.1 <{name}@localhost>: Recipient address rejected: "
                     f"User unknown in local recipient table".encode())
        assert c.rcpt("full@localhost")[0] == 250


def test_discarded_ehlo_keywords_are_logged_as_postfix_logs_them(new_instance) -> None:  # type: ignore[no-untyped-def]
    """Postfix's smtpd logs ``discarding EHLO keywords: PIPELINING DSN`` at each EHLO
    (not at HELO), naming the keywords it knows in its own order; with
    ``silent-discard`` or ENHANCEDSTATUSCODES among them it logs nothing (checked
    against Debian's Postfix 3.7)."""
    inst = new_instance()
    inst.set(smtpd_discard_ehlo_keywords="dsn, foo, Pipelining")
    inst.start()
    with inst.smtp() as c:
        assert b"PIPELINING" not in c.ehlo()[1]
        c.ehlo()
        c.helo()
    lines = inst.wait_log(r"postfix/smtpd\[\d+\]: disconnect from .* helo=1 ehlo=2 quit=1")
    assert lines
    found = re.findall(r"^.* postfix/smtpd\[\d+\]: discarding EHLO keywords: .*$", inst.log(), re.M)
    assert [line.split(": ", 1)[1] for line in found] == \
        ["discarding EHLO keywords: PIPELINING DSN"] * 2
    inst.set(smtpd_discard_ehlo_keywords="silent-discard, dsn")
    inst.postfix("reload")

    def ehlo() -> bytes:
        with inst.smtp() as c:
            return c.ehlo()[1]

    wait_until(lambda: b"PIPELINING" in ehlo(), 30, what="smtpd with the new setting")
    disconnect = r"postfix/smtpd\[\d+\]: disconnect from .* ehlo=1 quit=1"
    wait_until(lambda: re.search(disconnect, inst.log()), 30)  # the last one's line
    before = len(inst.log())
    assert b"DSN" not in ehlo()
    inst.wait_log(disconnect, count=len(re.findall(disconnect, inst.log()[:before])) + 1)
    assert "discarding EHLO keywords" not in inst.log()[before:]


def test_mail_is_refused_when_the_queue_cannot_keep_queue_minfree(new_instance) -> None:  # type: ignore[no-untyped-def]
    """As Postfix's smtpd (checked against Debian's Postfix 3.7): MAIL gets 452 4.3.1 when
    the queue's file system has less free space than queue_minfree, logged as a
    reject without from=<> and with Postfix's warning; it was taken, and the
    message refused only once sent."""
    inst = new_instance()
    inst.set(queue_minfree="100000000000000")  # 100 TB
    _mail_is_refused_for_space(inst)


def _mail_is_refused_for_space(inst: Instance) -> None:
    """Started, inst refuses MAIL with 452 4.3.1, logged as Postfix's smtpd_check_queue
    logs it: a reject without from=<>, and the warning."""
    inst.start()
    with inst.smtp() as c:
        c.ehlo()
        assert c.mail("sender@example.org") == (452, b"4.3.1 Insufficient system storage")
    inst.wait_log(r"postfix/smtpd\[\d+\]: NOQUEUE: reject: MAIL from localhost\[127\.0\.0\.1\]: "
                  r"452 4\.3\.1 Insufficient system storage; proto=ESMTP helo=<client\.example>")
    inst.wait_log(r"postfix/smtpd\[\d+\]: warning: not enough free space in mail queue: \d+ "
                  r"bytes < 1\.5\*message size limit")


def test_mail_is_refused_when_the_queue_cannot_hold_one_and_a_half_size_limits(  # type: ignore[no-untyped-def]
        new_instance) -> None:
    """Postfix 3.7's smtpd_check_queue weighs message_size_limit, not the client's SIZE=:
    a limit larger than two thirds of the free space gets 452 4.3.1 at MAIL even
    without SIZE=, and a SIZE= within the limit is taken however much it is."""
    inst = new_instance()
    inst.set(queue_minfree="0", message_size_limit="100000000000000")  # 100 TB
    _mail_is_refused_for_space(inst)
    inst.stop()
    inst.set(message_size_limit="0")
    inst.start()
    with inst.smtp() as c:
        c.ehlo()
        assert c.mail("sender@example.org", ["SIZE=99999999999999"])[0] == 250
