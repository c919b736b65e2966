"""End to end: local(8) delivers alias members in place, as Postfix does.

A message to a nested alias (postmaster -> staff -> the test user) keeps its
one queue ID: one log line per member with ``orig_to=<the address as
received>``, one Delivered-To and ``X-Original-To:`` the recipient as received
in the mailbox, and no "forwarded as". A list delivers its local members in
place, once each, bounces an unknown member as "expanded from" the list, and
forwards only its remote member, as one new message.
"""

from __future__ import annotations

import re

from harness import ME, Instance, wait_until

BODY = b"Subject: alias test\r\n\r\nhello\r\n"


def _instance(new_instance, aliases: str) -> Instance:  # type: ignore[no-untyped-def]
    inst = new_instance(maildir=True)
    inst.write("etc/aliases", aliases)
    inst.tool("newaliases", check=True)
    inst.start()
    return inst  # type: ignore[no-any-return]


def test_nested_alias_is_delivered_in_place(new_instance) -> None:  # type: ignore[no-untyped-def]
    inst = _instance(new_instance, f"postmaster: staff\nstaff: {ME}\n")
    qid = inst.send("sender@example.org", "postmaster@localhost", BODY)
    inst.wait_log(rf"{qid}: to=<{ME}@[^>]+>, orig_to=<postmaster@localhost>, relay=local, "
                  r"delay=[\d.]+, delays=[\d./]+, dsn=2\.0\.0, status=sent \(delivered to maildir\)")
    inst.wait_log(rf"{qid}: removed")
    (msg,) = inst.wait_maildir(1)
    assert msg.startswith(b"Return-Path: <sender@example.org>\n"
                          b"X-Original-To: postmaster@localhost\n"
                          b"Delivered-To: postmaster@localhost\n")
    assert msg.count(b"\nDelivered-To:") == 1
    assert msg.count(b"\nReceived:") == 1  # smtpd's only: the message was not re-queued
    assert msg.endswith(b"\nhello\n")
    log = inst.log()
    assert "forwarded as" not in log
    assert len(re.findall(r"qmgr\[\d+\]: \w+: from=", log)) == 1


def test_list_members_in_place_duplicates_once_unknown_bounces(new_instance) -> None:  # type: ignore[no-untyped-def]
    inst = _instance(new_instance, f"postmaster: {ME}\nstaff: {ME}\n"
                                   f"list: {ME}, staff, nosuchuser, far@remote.example, "
                                   f"nosuchother\n")
    qid = inst.send(f"{ME}@localhost", "list@localhost", BODY)
    inst.wait_log(rf"{qid}: to=<{ME}@[^>]+>, orig_to=<list@localhost>, relay=local, .*"
                  r"status=sent \(delivered to maildir\)")
    inst.wait_log(rf"{qid}: to=<nosuchuser@[^>]+>, orig_to=<list@localhost>, relay=local, .*"
                  r'dsn=5\.1\.1, status=bounced \(unknown user: "nosuchuser"\)')
    (line,) = inst.wait_log(rf"{qid}: to=<list@localhost>, relay=local, .*dsn=2\.0\.0, "
                            r"status=sent \(forwarded as \w+\)")
    new_id = re.search(r"forwarded as (\w+)", line).group(1)  # type: ignore[union-attr]
    inst.wait_log(rf"{new_id}: from=<{ME}@[^>]+>, size=\d+, nrcpt=1 \(queue active\)")
    # the test user once (named directly and through staff), then the list's bounce notice
    # (the forwarded copy to far@remote.example may bounce too, in a notice of its own that
    # can arrive first: the list's names the list message's queue ID)
    def list_notice() -> bytes | None:
        return next((m for m in inst.maildir_messages() if b"Undelivered Mail" in m
                     and f"\nX-Postfix-Queue-ID: {qid}\n".encode() in m), None)

    notice = wait_until(list_notice, 60, what="the list's bounce notice")
    assert isinstance(notice, bytes)
    # the status log names each member, expanded from the list as received: one entry
    # per bounced member, as Postfix's local appends them
    for member in (b"nosuchuser", b"nosuchother"):
        assert re.search(rb"\n<" + member + rb"@[^>]+> \(expanded from <list@localhost>\): "
                         rb"unknown user:", notice), notice
        assert re.search(rb"\nFinal-Recipient: rfc822; " + member + rb"@[^\n]+\n"
                         rb"Original-Recipient: rfc822; ?list@localhost\n", notice), notice
    log = inst.log()
    assert len(re.findall(rf"{qid}: to=<{ME}@", log)) == 1


def test_owner_alias_gets_the_bounces_of_list_members(new_instance) -> None:  # type: ignore[no-untyped-def]
    """With owner-list, the members leave as one copy whose sender is owner-list (as
    Postfix's local): an unknown member's bounce goes to the owner, not to the sender."""
    inst = _instance(new_instance, f"list: {ME}, nosuchuser\nowner-list: {ME}\n")
    qid = inst.send("alice@example.org", "list@localhost", BODY)
    (line,) = inst.wait_log(rf"{qid}: to=<list@localhost>, relay=local, .*dsn=2\.0\.0, "
                            r"status=sent \(forwarded as \w+\)")
    copy = re.search(r"forwarded as (\w+)", line).group(1)  # type: ignore[union-attr]
    inst.wait_log(rf"{copy}: from=<owner-list@[^>]+>")
    inst.wait_log(rf'{copy}: to=<nosuchuser@[^>]+>, orig_to=<list@localhost>, relay=local, '
                  r'.*dsn=5\.1\.1, status=bounced \(unknown user: "nosuchuser"\)')
    msgs = inst.wait_maildir(2)
    (notice,) = [m for m in msgs if b"Undelivered Mail" in m]
    assert re.search(rb"\nTo: owner-list@", notice), notice
    (copied,) = [m for m in msgs if b"Undelivered Mail" not in m]
    assert re.match(rb"Return-Path: <owner-list@[^>]+>\n", copied), copied
    assert copied.endswith(b"\nhello\n")
    assert "to=<alice@example.org>" not in inst.log()


def test_duplicate_filter_limit_zero_remembers_every_member(new_instance) -> None:  # type: ignore[no-untyped-def]
    # Postfix's been_here: a limit of 0 is no limit (not "remember nothing"): a member
    # named twice is delivered once
    inst = new_instance(maildir=True, settings={"duplicate_filter_limit": "0"})
    inst.write("etc/aliases", f"dupes: {ME}, staff\nstaff: {ME}\n")
    inst.tool("newaliases", check=True)
    inst.start()
    qid = inst.send("sender@example.org", "dupes@localhost", BODY)
    inst.wait_log(rf"{qid}: removed")
    assert len(inst.maildir_messages()) == 1
    assert len(inst.wait_log(rf"{qid}: to=<{ME}@")) == 1
