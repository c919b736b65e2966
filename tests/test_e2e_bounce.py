"""A permanent failure comes back to the sender as a DSN written by the bounce service."""

from __future__ import annotations

import re

from harness import ME, Instance


def test_failed_alias_command_bounces_to_sender(new_instance) -> None:  # type: ignore[no-untyped-def]
    inst: Instance = new_instance(maildir=True)
    inst.write("etc/aliases", f"postmaster: {ME}\nbouncer: |/bin/false\n")
    inst.tool("newaliases", check=True)
    inst.start()
    queue_id = inst.send(f"{ME}@localhost", "bouncer@localhost",
                         b"Subject: please bounce\r\nMessage-ID: <b1@example.org>\r\n\r\nbody\r\n")
    inst.wait_log(rf"postfix/local\[\d+\]: {queue_id}: to=<bouncer@localhost>, .*status=bounced")
    (line,) = inst.wait_log(
        rf"postfix/bounce\[\d+\]: {queue_id}: sender non-delivery notification: \w+")
    dsn_id = line.rsplit(" ", 1)[1]
    inst.wait_log(rf"{queue_id}: removed")
    (dsn,) = inst.wait_maildir(1)
    assert dsn.startswith(b"Return-Path: <>\n")
    assert b"\nFrom: Mail Delivery System <MAILER-DAEMON@" in dsn
    assert b"\nSubject: Undelivered Mail Returned to Sender\n" in dsn
    assert re.search(rb"\nContent-Type: multipart/report; report-type=delivery-status;", dsn)
    assert b"\n<bouncer@localhost>: " in dsn
    assert b"\nFinal-Recipient: rfc822; bouncer@localhost\n" in dsn
    assert b"\nAction: failed\n" in dsn and re.search(rb"\nStatus: 5\.\d\.\d+\n", dsn)
    assert b"\nMessage-ID: <b1@example.org>\n" in dsn  # the original headers come back
    inst.wait_log(rf"{dsn_id}: from=<>, size=\d+, nrcpt=1 \(queue active\)")


def _header(msg: bytes, name: bytes) -> list[bytes]:
    head = msg.split(b"\n\n", 1)[0]
    return [line.split(b":", 1)[1].strip() for line in head.split(b"\n")
            if line.lower().startswith(name.lower() + b":")]


def test_quoted_sender_stays_one_address(new_instance) -> None:  # type: ignore[no-untyped-def]
    """A sender whose local part needs quotes ("q s"@localhost) is written quoted, as
    Postfix's bounce_notify_util.c and mail_copy write it: in the notice's To: and
    X-Postfix-Sender:, and in Return-Path:/Delivered-To: of a local delivery. Unquoted,
    ``To: q s@localhost`` read as two addresses, one of them the local user q."""
    inst: Instance = new_instance(maildir=True)
    inst.write("etc/aliases", f'postmaster: {ME}\nbouncer: |/bin/false\n"q s": {ME}\n'
                              f"q: {ME}\ns: {ME}\n")
    inst.tool("newaliases", check=True)
    inst.start()
    queue_id = inst.send('"q s"@localhost', "bouncer@localhost",
                         b"Subject: please bounce\r\n\r\nbody\r\n")
    (line,) = inst.wait_log(
        rf"postfix/bounce\[\d+\]: {queue_id}: sender non-delivery notification: \w+")
    dsn_id = line.rsplit(" ", 1)[1]
    inst.wait_log(rf'{dsn_id}: to=<{ME}@[^>]+>, orig_to=<"q s"@localhost>, .*status=sent')
    (dsn,) = inst.wait_maildir(1)
    assert _header(dsn, b"To") == [b'"q s"@localhost']
    assert b'\nX-Postfix-Sender: rfc822; "q s"@localhost\n' in dsn
    assert b'\nReturn-Path: <"q s"@localhost>\n' in dsn  # the attached original's
    # delivered to that recipient only: its own alias, never q's or s's
    assert _header(dsn, b"X-Original-To") == [b'"q s"@localhost']
    assert _header(dsn, b"Delivered-To") == [b'"q s"@localhost']
    assert not re.search(rb"to=<[qs]@", inst.log().encode())

    # a plain local delivery from that sender: Return-Path and the From_-less Maildir
    mail_id = inst.send('"q s"@localhost', '"q s"@localhost', b"Subject: plain\r\n\r\nhi\r\n")
    inst.wait_log(rf'{mail_id}: to=<{ME}@[^>]+>, orig_to=<"q s"@localhost>, .*status=sent')
    (plain,) = [m for m in inst.wait_maildir(2) if b"\nSubject: plain\n" in m]
    assert plain.startswith(b'Return-Path: <"q s"@localhost>\nX-Original-To: "q s"@localhost\n'
                            b'Delivered-To: "q s"@localhost\n'), plain[:200]
    assert not re.search(rb"to=<[qs]@", inst.log().encode())


def test_quoted_delivered_to_is_a_loop(new_instance) -> None:  # type: ignore[no-untyped-def]
    """The loop check looks the recipient up quoted, as the Delivered-To: header that
    local delivery writes carries it (Postfix's delivered_hdr_find)."""
    inst: Instance = new_instance(maildir=True)
    inst.write("etc/aliases", f'postmaster: {ME}\n"q s": {ME}\n')
    inst.tool("newaliases", check=True)
    inst.start()
    queue_id = inst.send(f"{ME}@localhost", '"q s"@localhost',
                         b'Delivered-To: "Q S"@localhost\r\nSubject: looped\r\n\r\nhi\r\n')
    inst.wait_log(rf'postfix/local\[\d+\]: {queue_id}: to=<"q s"@localhost>, .*status=bounced '
                  r"\(mail forwarding loop for q s@localhost\)")


def _bouncer_notice(inst: Instance) -> bytes:
    """The notice for a message to an alias whose command fails."""
    inst.write("etc/aliases", f"postmaster: {ME}\nbouncer: |/bin/false\n")
    inst.tool("newaliases", check=True)
    inst.start()
    queue_id = inst.send(f"{ME}@localhost", "bouncer@localhost", b"Subject: x\r\n\r\nbody\r\n")
    inst.wait_log(rf"postfix/bounce\[\d+\]: {queue_id}: sender non-delivery notification: \w+")
    (dsn,) = inst.wait_maildir(1)
    return dsn


def test_notice_headers_in_postfix_order(new_instance) -> None:  # type: ignore[no-untyped-def]
    """Debian's Postfix 3.7's notice: its bounce writes Date first (cleanup adds only the
    Received before it and the Message-Id after)."""
    dsn = _bouncer_notice(new_instance(maildir=True))
    head = dsn.split(b"\n\n", 1)[0]
    names = [line.split(b":", 1)[0] for line in head.split(b"\n") if line[:1] not in b" \t"]
    assert names == [b"Return-Path", b"X-Original-To", b"Delivered-To", b"Received", b"Date",
                     b"From", b"Subject", b"To", b"Auto-Submitted", b"MIME-Version",
                     b"Content-Type", b"Content-Transfer-Encoding", b"Message-Id"], names


def test_notification_part_is_8bit(new_instance) -> None:  # type: ignore[no-untyped-def]
    """The text part says its Content-Transfer-Encoding, 8bit, as the notice's does
    (Debian's Postfix 3.7, whatever BODY= the original came with)."""
    dsn = _bouncer_notice(new_instance(maildir=True))
    assert b"\nContent-Description: Notification\nContent-Type: text/plain; charset=utf-8\n" \
           b"Content-Transfer-Encoding: 8bit\n\nThis is the mail system at host " in dsn, dsn
