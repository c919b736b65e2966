"""DSN parameters (RFC 3461): the library's parsing, and smtpd taking them at MAIL and RCPT."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from smtpd_helpers import smtpd_server

from pymailsys import dsn


def test_notify_words_ret_and_xtext() -> None:
    assert dsn.parse_notify("success,Delay") == dsn.NOTIFY_SUCCESS | dsn.NOTIFY_DELAY
    assert dsn.parse_notify("NEVER") == dsn.NOTIFY_NEVER
    assert dsn.parse_notify("success failure", blanks=True) == 6
    assert dsn.parse_notify("SUCCESS,,FAILURE,") == dsn.NOTIFY_SUCCESS | dsn.NOTIFY_FAILURE
    for bad in ("", ",", "NEVER,SUCCESS", "SOMETIMES", "success failure"):
        with pytest.raises(ValueError):
            dsn.parse_notify(bad)
    assert dsn.notify_names(dsn.NOTIFY_SUCCESS | dsn.NOTIFY_FAILURE) == "SUCCESS,FAILURE"
    assert dsn.wants(0, dsn.NOTIFY_FAILURE) and dsn.wants(0, dsn.NOTIFY_DELAY)
    assert not dsn.wants(0, dsn.NOTIFY_SUCCESS) and not dsn.wants(1, dsn.NOTIFY_FAILURE)
    assert dsn.parse_ret("hdrs") == dsn.RET_HDRS and dsn.ret_name(dsn.RET_FULL) == "FULL"
    with pytest.raises(ValueError):
        dsn.parse_ret("SOME")
    assert dsn.xtext_encode("a+b=c d") == "a+2Bb+3Dc+20d"
    assert dsn.xtext_decode("a+2Bb+3Dc+20d") == "a+b=c d"
    # as Postfix's xtext_unquote: hex digits of either case, other characters as they are
    assert dsn.xtext_decode("a+2bb=c+c3+A9") == "a+b=c\u00e9"
    for bad in ("a+2", "a+zz", "a++41", "a+"):
        with pytest.raises(ValueError):
            dsn.xtext_decode(bad)
    assert dsn.parse_envid("id+2B1") == "id+1"
    assert dsn.parse_envid("x" * 101) == "x" * 101  # smtpd: no limit; sendmail -V: 100
    assert not dsn.valid_envid("x" * 101) and dsn.valid_envid("x" * 101, None)
    for bad in ("", "+0A", "+00", "a+00b", "a+C3+A9"):
        with pytest.raises(ValueError):
            dsn.parse_envid(bad)
    assert dsn.parse_orcpt("rfc822;bob+2Bx@example.org") == "rfc822;bob+x@example.org"
    assert dsn.orcpt_param("rfc822;bob+x@example.org") == "rfc822;bob+2Bx@example.org"
    # as Postfix's smtpd: no printable check (shown as ?), empty address, utf-8 in unitext
    assert dsn.parse_orcpt("rfc822;a+0Db") == "rfc822;a?b"
    assert dsn.parse_orcpt("rfc822;") == "rfc822;"
    assert dsn.parse_orcpt("UTF-8;\\x{E9}+2B\\x{}") == "UTF-8;\u00e9+2B?"
    assert dsn.orcpt_param("utf-8;\u00e9+b=c\\") == "utf-8;\\x{E9}\\x{2B}b\\x{3D}c\\x{5C}"
    assert dsn.valid_orcpt("utf-8;\u00e9") and not dsn.valid_orcpt("rfc822;a\nb")
    for bad in ("bob@example.org", ";bob", "rfc822;a+zz", "utf-8;\\x{zz}", "utf-8;\\x{41",
                "utf-8;\\x{110000}"):
        with pytest.raises(ValueError):
            dsn.parse_orcpt(bad)


def test_smtpd_takes_dsn_parameters_and_keeps_them_decoded(tmp_path: Path) -> None:
    async def go() -> None:
        async with smtpd_server(tmp_path) as (fake, c, maillog):
            await c.reply()
            assert "250-DSN" in (await c.cmd("EHLO client.example\r\n")).splitlines()
            assert await c.cmd("MAIL FROM:<a@b.c> ENVID=x+2By RET=SOME\r\n") == \
                "501 5.5.4 Bad RET parameter syntax"
            assert await c.cmd("MAIL FROM:<a@b.c> ENVID=x+zz\r\n") == \
                "501 5.5.4 Bad ENVID parameter syntax"
            assert await c.cmd("MAIL FROM:<a@b.c> RET=FULL RET=HDRS\r\n") == \
                "501 5.5.4 Bad RET parameter syntax"  # twice: Postfix's reply
            assert await c.cmd("MAIL FROM:<a@b.c> ENVID=a ENVID=b\r\n") == \
                "501 5.5.4 Bad ENVID parameter syntax"
            assert await c.cmd("MAIL FROM:<a@b.c> ENVID=x+2By RET=hdrs\r\n") == "250 2.1.0 Ok"
            assert await c.cmd("RCPT TO:<root@mx.example> NOTIFY=SOMETIMES\r\n") == \
                "501 5.5.4 Error: Bad NOTIFY parameter syntax"
            assert await c.cmd("RCPT TO:<root@mx.example> NOTIFY=NEVER,DELAY\r\n") == \
                "501 5.5.4 Error: Bad NOTIFY parameter syntax"
            assert await c.cmd("RCPT TO:<root@mx.example> ORCPT=bob\r\n") == \
                "501 5.5.4 Error: Bad ORCPT parameter syntax"
            assert await c.cmd("RCPT TO:<root@mx.example> NOTIFY=SUCCESS,DELAY "
                               "ORCPT=rfc822;Bob+2Bx@mx.example\r\n") == "250 2.1.5 Ok"
            assert await c.cmd("RCPT TO:<root@localhost>\r\n") == "250 2.1.5 Ok"
            assert await c.cmd("DATA\r\n") == "354 End data with <CR><LF>.<CR><LF>"
            assert (await c.cmd("Subject: x\r\n\r\nbody\r\n.\r\n")).startswith("250 2.0.0 Ok")
            (req,) = fake.requests
            assert req.all("rcpt") == ["root@mx.example", "root@localhost"]
            assert req.all("notify") == [str(dsn.NOTIFY_SUCCESS | dsn.NOTIFY_DELAY), "0"]
            assert req.all("dsn_orcpt") == ["rfc822;Bob+x@mx.example", ""]
            assert req.text("envid") == "x+y" and req.text("ret") == "HDRS"
    asyncio.run(go())


def test_report_words_expanded_from_and_wrapping(tmp_path: Path) -> None:
    """The bounce service's report: Postfix's "(expanded from <alias>)", the recipients
    a sender did not ask about left out, long lines wrapped, a large original cut to
    its headers (bounce_size_limit)."""
    import email
    import email.message
    import email.policy

    from pymailsys.daemons.bounce import report
    from qf_helpers import make_spool, queue_file

    from pymailsys.delivery.agent import QueueContent
    from pymailsys.queue import status_log

    _, spool = make_spool(tmp_path)
    body = [b"Subject: big", b""] + [b"x" * 70] * 20
    qid = queue_file(spool, "active", "alice@example.org", ["bob@example.org"], body)
    long_reason = "host mx.example[192.0.2.1] said: 550 5.1.1 " + "no such user here " * 6
    member = status_log.Entry("bob@example.org", "5.1.1", "failed", long_reason,
                              original_recipient="team@example.org", notify_flags=0)
    member.set_remote("mx.example", "550 5.1.1 " + "no such user here " * 6)
    silent = status_log.Entry("carol@example.org", "5.1.1", "failed", "gone",
                              notify_flags=dsn.NOTIFY_NEVER)
    entries = report.wanted(report.FAILURE, [member, silent])
    assert entries == [member]
    notice = report.Notice(report.FAILURE, qid, "alice@example.org", "mx.example",
                           "example.org", size_limit=1000)
    with QueueContent(str(spool / "active" / qid)) as original:
        raw = b"".join(report.write(notice, original, entries))
    assert b"\n<bob@example.org> (expanded from <team@example.org>): host" in raw
    assert all(len(line) <= 79 for line in raw.split(b"\n")[:60] if not line.startswith(b"--"))
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    status = list(msg.iter_parts())[1].get_payload()
    assert isinstance(status, list)
    (rcpt,) = status[1:]
    assert isinstance(rcpt, email.message.EmailMessage)  # a header block, parsed as a message
    assert rcpt["Original-Recipient"] == "rfc822;team@example.org"
    assert str(rcpt["Diagnostic-Code"]).startswith("smtp; 550 5.1.1 no such user here")
    assert rcpt["Remote-MTA"] == "dns; mx.example"
    returned = list(msg.iter_parts())[2]
    assert returned.get_content_type() == "text/rfc822-headers"  # over bounce_size_limit
    assert b"Subject: big" in raw and b"x" * 70 not in raw


def test_maildrop_file_keeps_each_recipients_notify_and_orcpt() -> None:
    from pymailsys.queue import maildrop

    sub = maildrop.Submission("a@example.org", ["b@example.org", "c@example.org"],
                              extracted=["d@example.org"], lines=[b"Subject: x", b"", b"y"],
                              notifies=[dsn.NOTIFY_SUCCESS, 0, dsn.NOTIFY_NEVER],
                              dsn_orcpts=["rfc822;list@example.org", "", "rfc822;d@example.org"])
    back = maildrop.parse_maildrop(sub.to_records())
    assert back.recipient_notifies() == [dsn.NOTIFY_SUCCESS, 0, dsn.NOTIFY_NEVER]
    assert back.recipient_orcpts() == ["rfc822;list@example.org", "", "rfc822;d@example.org"]
    forged = maildrop.Submission("a@example.org", ["b@example.org"], dsn_orcpts=["no-type"])
    assert maildrop.parse_maildrop(forged.to_records()).recipient_orcpts() == [""]
    every = maildrop.Submission("a@example.org", ["b@example.org"], notify=dsn.NOTIFY_DELAY)
    assert maildrop.parse_maildrop(every.to_records()).recipient_notifies() == [dsn.NOTIFY_DELAY]
