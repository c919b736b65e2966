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
