"""smtpd's postmaster transcripts (notify_classes policy, protocol, resource, software...).

In memory against a fake cleanup: the notice's envelope and text, as Postfix's
smtpd_chat_notify writes them; end to end: the postmaster's Maildir gets the
transcript of a session with a rejected RCPT.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest
from harness import ME, Instance
from pymailsys.daemons.smtpd import transcript
from smtpd_helpers import FakeCleanup, smtpd_server


@pytest.mark.parametrize("reply, rejected, expected", [
    ("554 5.7.1 <x@y>: Relay access denied", True, "policy"),
    ("450 4.7.1 <h>: Helo command rejected: Host not found", True, "policy"),
    ("504 5.5.2 <h>: Helo command rejected: need fully-qualified hostname", True, "policy"),
    ("452 4.5.3 Error: too many recipients", False, "policy"),
    ("451 4.3.0 <x@y>: Temporary lookup failure", True, "data"),
    ("451 4.3.5 Server configuration problem", True, "software"),
    ("451 4.3.0 Error: internal error", False, "software"),
    ("451 4.3.0 Error: queue file write error", False, "resource"),
    ("452 4.3.1 Insufficient system storage", False, "resource"),
    ("552 5.3.4 Message size exceeds fixed limit", False, "bounce"),
    ("500 5.5.2 Error: command not recognized", False, "protocol"),
    ("503 5.5.1 Error: need MAIL command", False, "protocol"),
    ("554 5.5.0 Error: SMTP protocol synchronization", False, "protocol"),
    ("421 4.4.2 mx Error: timeout exceeded", False, None),
    ("250 2.0.0 Ok", False, None),
])
def test_error_classes(reply: str, rejected: bool, expected: str | None) -> None:
    assert transcript.error_class(reply, rejected) == expected


async def _notice(fake: FakeCleanup) -> str:
    """The content of the notify request, once smtpd sent it (bounded wait)."""
    for _ in range(500):
        found = [r for r in fake.requests if r.text("origin") == "notify"]
        if found:
            (req,) = found
            assert req.text("sender") == "double-bounce@mx.example"
            assert req.all("rcpt") == ["postmaster"]
            return (req.raw("content") or b"").decode()
        await asyncio.sleep(0.02)
    raise AssertionError("no postmaster notice")


def test_a_rejected_rcpt_and_a_bad_command_make_a_transcript(tmp_path: Path) -> None:
    long_arg = "x" * 60 + " " + "y" * 30

    async def go() -> str:
        async with smtpd_server(tmp_path, notify_classes="policy, protocol",
                                mynetworks="10.0.0.0/8") as (fake, c, _):
            await c.reply()
            await c.cmd("EHLO client.example\r\n")
            await c.cmd("MAIL FROM:<a@b.c>\r\n")
            await c.cmd("RCPT TO:<x@foreign.example>\r\n")
            await c.cmd(f"BOGUS\x01 {long_arg}\r\n")
            await c.cmd("QUIT\r\n")
            return await _notice(fake)

    text = asyncio.run(go())
    head, _, body = text.partition("\n\n")
    assert head.splitlines() == [
        "From: MAILER-DAEMON (Mail Delivery System)", "To: postmaster (Postmaster)",
        "Subject: Postfix SMTP server: errors from localhost[127.0.0.1]"]
    lines = body.splitlines()
    assert lines[:3] == ["Transcript of session follows.", "", " Out: 220 mx.example ESMTP Postfix"]
    assert " In:  EHLO client.example" in lines and " Out: 250-mx.example" in lines
    assert " In:  RCPT TO:<x@foreign.example>" in lines
    assert " Out: 454 4.7.1 <x@foreign.example>: Relay access denied" in lines
    # control characters become ?, long lines wrap at 78 with a 4-space indent
    assert f" In:  BOGUS? {'x' * 60}" in lines and f"     {'y' * 30}" in lines
    assert " Out: 500 5.5.2 Error: command not recognized" in lines
    assert lines[-4:] == [" Out: 221 2.0.0 Bye", "", "", "For other details, see the local mail logfile"]


def test_a_cleanup_failure_is_reported_by_default(tmp_path: Path) -> None:
    """notify_classes defaults to resource, software: cleanup's 451 4.3.0 is one of them."""
    async def go() -> str:
        async with smtpd_server(tmp_path) as (fake, c, _):
            fake.status = 451
            await c.reply()
            await c.cmd("MAIL FROM:<a@b.c>\r\n")
            await c.cmd("RCPT TO:<root>\r\n")
            await c.cmd("DATA\r\n")
            assert await c.cmd("x\r\n.\r\n") == "451 4.3.0 Error: internal error"
            fake.status = 0
            await c.cmd("QUIT\r\n")
            return await _notice(fake)

    assert " Out: 451 4.3.0 Error: internal error\n" in asyncio.run(go())


class _ProtocolClassConfig:
    """Just what Notices reads: notify_classes = protocol, a history threshold."""

    def __init__(self, history_flush_threshold: int) -> None:
        self.threshold = history_flush_threshold

    def get_list(self, name: str) -> list[str]:
        return ["protocol"]

    def get(self, name: str) -> str:
        return "x"

    def get_int(self, name: str) -> int:
        return self.threshold


class _Discard:
    """A writer (and its transport) that drops what it is given (the transcript
    records it)."""

    @property
    def transport(self) -> _Discard:
        return self

    def write(self, data: bytes) -> None:
        pass


def test_errors_outside_notify_classes_send_nothing() -> None:
    notices = transcript.Notices(_ProtocolClassConfig(100), None)  # type: ignore[arg-type]
    t = notices.start()
    reply = t.watch(_Discard())  # type: ignore[arg-type]
    t.query(b"RCPT TO:<x@y>\r\n")
    t.rejected()
    reply(b"554 5.7.1 <x@y>: Relay access denied\r\n")
    assert t.errors == {"policy"} and not t.due()
    reply(b"503 5.5.1 Error: need MAIL command\r\n")
    assert t.due()


def test_the_postmaster_gets_the_transcript_of_a_rejected_rcpt(new_instance) -> None:  # type: ignore[no-untyped-def]
    inst: Instance = new_instance(maildir=True)
    inst.write("etc/aliases", f"postmaster: {ME}\n")
    inst.tool("newaliases", check=True)
    inst.set(notify_classes="policy")
    inst.start()
    with inst.smtp() as client:
        client.ehlo()
        client.mail(f"{ME}@localhost")
        code, _ = client.rcpt("nosuchuser@localhost")
        assert code == 550
    (notice,) = inst.wait_maildir(1)
    connect = inst.wait_log(r"postfix/smtpd\[\d+\]: connect from \S+")[-1]
    client_name = connect.rsplit(" ", 1)[1]
    assert notice.startswith(b"Return-Path: <double-bounce@")
    assert f"\nSubject: Postfix SMTP server: errors from {client_name}\n".encode() in notice
    assert re.search(rb"\nFrom: MAILER-DAEMON@\S+ \(Mail Delivery System\)\n", notice)
    assert b"\nTranscript of session follows.\n" in notice
    assert b"\n In:  rcpt TO:<nosuchuser@localhost>\n" in notice  # as smtplib sends it
    assert (b"\n Out: 550 5.1.1 <nosuchuser@localhost>: Recipient address rejected: User\n"
            b"     unknown in local recipient table\n") in notice
    assert b"\nFor other details, see the local mail logfile\n" in notice


def test_history_is_kept_as_sent_and_counted_in_lines() -> None:
    """Replies are kept whole and decoded only for a notice: a multi-line reply counts
    its lines towards smtpd_history_flush_threshold, a queued message clears a longer
    history, and the notice shows each line on its own, made printable."""
    t = transcript.Notices(_ProtocolClassConfig(3), None).start()  # type: ignore[arg-type]
    reply = t.watch(_Discard())  # type: ignore[arg-type]
    t.query(b"EHLO client.example")
    reply(b"250-mx.example\r\n250-PIPELINING\r\n250 8BITMIME\r\n")
    assert t.line_count == 4
    reply(b"250 2.0.0 Ok: queued as 4AbC\r\n")  # over the threshold: cleared
    assert t.history == [] and t.line_count == 0
    t.query(b"MAIL FROM:<\xc3\xa9\x01@x>")
    reply(b"501 5.5.4 Syntax: MAIL FROM:<address>\r\n")
    assert list(t.history_lines()) == ["In:  MAIL FROM:<\u00e9\x01@x>",
                                       "Out: 501 5.5.4 Syntax: MAIL FROM:<address>"]
    assert t.due() and " In:  MAIL FROM:<\u00e9?@x>" in list(t.lines("c[1.2.3.4]"))


def test_history_keeps_the_order_across_batches() -> None:
    """Commands and replies are noted and taken into the history in batches
    (transcript.EVENT_BATCH); the history is the same, in the order they went by."""
    t = transcript.Notices(_ProtocolClassConfig(1000), None).start()  # type: ignore[arg-type]
    reply = t.watch(_Discard())  # type: ignore[arg-type]
    expected = []
    for n in range(transcript.EVENT_BATCH + 3):
        t.query(f"NOOP {n}".encode())
        reply(f"250 2.0.0 Ok {n}\r\n".encode())
        expected += [f"In:  NOOP {n}", f"Out: 250 2.0.0 Ok {n}"]
    t.rejected()
    reply(b"554 5.7.1 <x@y>: Relay access denied\r\n")
    expected.append("Out: 554 5.7.1 <x@y>: Relay access denied")
    assert list(t.history_lines()) == expected
    assert t.errors == {"policy"} and t.line_count == len(expected)
