"""virtual_alias_maps, canonical maps, masquerading and automatic BCC on a real instance.

texthash: tables (read as written, no postmap) map addresses as an administrator
would; mail goes in over SMTP and with sendmail; the assertions read the RCPT
replies, the log's ``to=<...>, orig_to=<...>`` lines and the headers of what
arrives in the Maildir (Return-Path is the envelope sender, Delivered-To the
final recipient).
"""

from __future__ import annotations

import re

import pytest
from harness import ME, Instance, wait_until

pytestmark = pytest.mark.root  # delivery to the current user's Maildir is checked as root


def _start(new_instance, tables: dict[str, str], **settings: str) -> tuple[Instance, str]:  # type: ignore[no-untyped-def]
    """A started instance; each table's text may name {me} and {origin}."""
    inst: Instance = new_instance(maildir=True, settings={"recipient_delimiter": "+"})
    origin = str(inst.tool("postconf", "-hx", "myorigin", check=True).stdout.strip())
    for param, text in tables.items():
        path = inst.write(f"etc/{param}", text.format(me=ME, origin=origin))
        inst.set(**{param: f"texthash:{path}"})
    inst.set(**{k: v.format(me=ME, origin=origin) for k, v in settings.items()})
    inst.start()
    return inst, origin


def _arrived(inst: Instance, subject: bytes, count: int = 1) -> list[bytes]:
    def hit() -> list[bytes]:
        found = [m for m in inst.maildir_messages() if b"\nSubject: " + subject + b"\n" in m]
        return found if len(found) >= count else []

    return wait_until(hit, 60, what=f"{count} message(s) {subject!r}")


def _delivered_to(messages: list[bytes]) -> list[str]:
    return sorted(re.search(rb"\nDelivered-To: (\S+)\n", m).group(1).decode()  # type: ignore[union-attr]
                  for m in messages)


VIRTUAL = """\
info@valias.example    {me}+info@{origin}, team@valias.example
team@valias.example    {me}+team@{origin}
{me}@localhost         {me}@localhost, {me}+copy@{origin}
loop1@valias.example   loop2@valias.example
loop2@valias.example   loop1@valias.example
@catch.example         {me}+catch@{origin}
"""


def test_virtual_alias_domains_and_maps(new_instance) -> None:  # type: ignore[no-untyped-def]
    inst, origin = _start(new_instance, {"virtual_alias_maps": VIRTUAL},
                          virtual_alias_domains="valias.example, catch.example",
                          virtual_alias_recursion_limit="20",
                          propagate_unmatched_extensions="canonical")
    with inst.smtp() as client:
        client.ehlo()
        client.mail("sender@example.org")
        assert client.rcpt("nobody@valias.example") == (
            550, b"5.1.1 <nobody@valias.example>: Recipient address rejected: "
                 b"User unknown in virtual alias table")
    inst.wait_log(r"NOQUEUE: reject: RCPT from .*: 550 5\.1\.1 <nobody@valias\.example>: "
                  r"Recipient address rejected: User unknown in virtual alias table; "
                  r"from=<sender@example\.org> to=<nobody@valias\.example> proto=ESMTP")

    # one to many, recursively; the original recipient is kept
    queue_id = inst.send("sender@example.org", "info@valias.example", "Subject: info\n\nx\n")
    assert _delivered_to(_arrived(inst, b"info", 2)) == [f"{ME}+info@{origin}",
                                                         f"{ME}+team@{origin}"]
    for who in ("info", "team"):
        inst.wait_log(rf"{queue_id}: to=<{ME}\+{who}@{re.escape(origin)}>, "
                      r"orig_to=<info@valias\.example>, .*status=sent")

    # an address that maps to itself stops there and keeps its copy
    inst.send("sender@example.org", f"{ME}@localhost", "Subject: self\n\nx\n")
    assert _delivered_to(_arrived(inst, b"self", 2)) == [f"{ME}+copy@{origin}", f"{ME}@localhost"]

    # the @domain catch-all
    inst.send("sender@example.org", "anyone@catch.example", "Subject: catch\n\nx\n")
    assert _delivered_to(_arrived(inst, b"catch")) == [f"{ME}+catch@{origin}"]

    # a loop: the recursion limit defers the message at DATA, as Postfix
    with inst.smtp() as client:
        client.ehlo()
        client.mail("sender@example.org")
        assert client.rcpt("loop1@valias.example")[0] == 250
        assert client.data("Subject: loop\n\nx\n") == (451, b"4.6.0 Alias expansion error")
    inst.wait_log(r"warning: [0-9A-F]+: unreasonable virtual_alias_maps map nesting for "
                  r"loop1@valias\.example -- message not accepted, try again later")


def test_no_address_mappings_for_a_service(new_instance) -> None:  # type: ignore[no-untyped-def]
    inst, origin = _start(new_instance, {"virtual_alias_maps": VIRTUAL},
                          receive_override_options="no_address_mappings")
    inst.send("sender@example.org", f"{ME}@localhost", "Subject: unmapped\n\nx\n")
    assert _delivered_to(_arrived(inst, b"unmapped")) == [f"{ME}@localhost"]


def test_canonical_maps_envelope_and_headers(new_instance) -> None:  # type: ignore[no-untyped-def]
    inst, origin = _start(new_instance, {
        "sender_canonical_maps": "{me}@{origin}  Boss.Person@{origin}\n",
        "recipient_canonical_maps": "team@{origin}  {me}+team@{origin}\n",
        "canonical_maps": "@old.example  {me}+old@{origin}\n"})
    r = inst.tool("sendmail", "-f", ME, "team", "someone@old.example",
                  input=f"From: {ME}\nTo: team, someone@old.example\nSubject: canon\n\nx\n")
    assert r.returncode == 0, r.stderr
    messages = _arrived(inst, b"canon", 2)
    assert _delivered_to(messages) == [f"{ME}+old@{origin}", f"{ME}+team@{origin}"]
    for m in messages:
        head = m.split(b"\n\n", 1)[0]
        assert f"Return-Path: <Boss.Person@{origin}>".encode() in head
        assert f"\nFrom: Boss.Person@{origin}\n".encode() in head
        assert f"\nTo: {ME}+team@{origin}, {ME}+old@{origin}\n".encode() in head
    inst.wait_log(rf"to=<{ME}\+team@{re.escape(origin)}>, orig_to=<team[^>]*>,.*status=sent")


def test_canonical_classes_limit_where_it_applies(new_instance) -> None:  # type: ignore[no-untyped-def]
    inst, origin = _start(new_instance, {"canonical_maps": "{me}@{origin}  Boss.Person@{origin}\n"},
                          canonical_classes="envelope_sender")
    inst.tool("sendmail", "-f", ME, ME, input=f"From: {ME}\nSubject: classes\n\nx\n", check=True)
    [m] = _arrived(inst, b"classes")
    assert f"Return-Path: <Boss.Person@{origin}>".encode() in m
    assert f"\nFrom: {ME}@{origin}\n".encode() in m


def test_masquerade_domains(new_instance) -> None:  # type: ignore[no-untyped-def]
    inst, origin = _start(new_instance, {}, masquerade_domains="!keep.example.com, example.com",
                          masquerade_exceptions="admin")
    inst.tool("sendmail", "-f", "someone@host.sub.example.com", ME,
              input="From: someone@host.sub.example.com\nCc: admin@host.example.com, "
                    "x@a.keep.example.com, y@keep.example.com\nSubject: masq\n\nx\n", check=True)
    [m] = _arrived(inst, b"masq")
    head = m.split(b"\n\n", 1)[0]
    assert b"Return-Path: <someone@example.com>" in head
    assert b"\nFrom: someone@example.com\n" in head
    assert b"\nCc: admin@host.example.com, x@a.keep.example.com, y@keep.example.com\n" in head


def test_always_bcc_and_bcc_maps(new_instance) -> None:  # type: ignore[no-untyped-def]
    inst, origin = _start(new_instance, {
        "sender_bcc_maps": "sender@example.org  {me}+sbcc@{origin}\n",
        "recipient_bcc_maps": "{me}@{origin}  {me}+rbcc@{origin}\n"},
        always_bcc="{me}+archive@{origin}")
    inst.send("sender@example.org", f"{ME}@{origin}", "Subject: bcc\n\nx\n")
    assert _delivered_to(_arrived(inst, b"bcc", 4)) == [
        f"{ME}+archive@{origin}", f"{ME}+rbcc@{origin}", f"{ME}+sbcc@{origin}", f"{ME}@{origin}"]


def test_canonical_loop_warns_and_delivers(new_instance) -> None:  # type: ignore[no-untyped-def]
    # Postfix's cleanup warns about canonical map nesting and accepts the message
    inst, origin = _start(new_instance, {
        "canonical_maps": "a@old.example  b@old.example\nb@old.example  a@old.example\n"})
    queue_id = inst.send("a@old.example", f"{ME}@{origin}", "Subject: canonloop\n\nx\n")
    assert _arrived(inst, b"canonloop")
    inst.wait_log(rf"warning: {queue_id}: unreasonable canonical_maps map nesting for "
                  r"a@old\.example -- message not accepted, try again later")


def test_at_domain_canonical_and_postfix_header_classes(new_instance) -> None:  # type: ignore[no-untyped-def]
    # "@old.example @ORIGIN" keeps the user (and its extension); Reply-To:,
    # Mail-Followup-To: and Return-Path: are header_sender addresses, Apparently-To:
    # a header_recipient one, as in Postfix's header_opts.c
    inst, origin = _start(new_instance, {
        "sender_canonical_maps": "{me}@{origin}  Boss.Person@{origin}\n",
        "canonical_maps": "@old.example  @{origin}\n"},
        message_drop_headers="bcc, content-length, resent-bcc")
    r = inst.tool("sendmail", "-f", ME, f"{ME}+tag@old.example", input=(
        f"From: {ME}\nReply-To: {ME}\nMail-Followup-To: {ME}\nReturn-Path: <{ME}>\n"
        f"To: {ME}+tag@old.example\nApparently-To: other@old.example\nSubject: classes2\n\nx\n"))
    assert r.returncode == 0, r.stderr
    [m] = _arrived(inst, b"classes2")
    head = m.split(b"\n\n", 1)[0].split(b"\n")
    assert f"Delivered-To: {ME}+tag@{origin}".encode() in head
    for name in ("From", "Reply-To", "Mail-Followup-To"):
        assert f"{name}: Boss.Person@{origin}".encode() in head
    assert head.count(f"Return-Path: <Boss.Person@{origin}>".encode()) == 2  # ours and its
    assert f"To: {ME}+tag@{origin}".encode() in head
    assert f"Apparently-To: other@{origin}".encode() in head
    inst.wait_log(rf"to=<{ME}\+tag@{re.escape(origin)}>, orig_to=<{ME}\+tag@old\.example>")


def _with_subject(inst: Instance, subject: bytes) -> list[bytes]:
    return [m for m in inst.maildir_messages() if b"\nSubject: " + subject + b"\n" in m]


def test_duplicates_are_case_insensitive(new_instance) -> None:  # type: ignore[no-untyped-def]
    inst, origin = _start(new_instance, {})
    queue_id = inst.send("sender@example.org", [f"{ME}@{origin}", f"{ME}@{origin.upper()}"],
                         "Subject: dup-case\n\nx\n")
    inst.wait_log(rf"{queue_id}: removed")
    [m] = _with_subject(inst, b"dup-case")
    assert f"\nX-Original-To: {ME}@{origin}\n".encode() in m


def test_duplicates_without_original_recipient(new_instance) -> None:  # type: ignore[no-untyped-def]
    # enable_original_recipient = no: two aliases of one address are one delivery, with
    # no X-Original-To:, and the log still names the original recipient (Postfix keeps
    # the O record); duplicate_filter_limit = 0 remembers every address
    inst, origin = _start(new_instance, {"virtual_alias_maps": (
        "a@valias.example  {me}@{origin}\nb@valias.example  {me}@{origin}\n")},
        virtual_alias_domains="valias.example", enable_original_recipient="no",
        duplicate_filter_limit="0")
    queue_id = inst.send("sender@example.org", ["a@valias.example", "b@valias.example",
                                                f"{ME}@{origin}", f"{ME}@{origin}"],
                         "Subject: dup-orig\n\nx\n")
    inst.wait_log(rf"{queue_id}: removed")
    [m] = _with_subject(inst, b"dup-orig")
    assert b"\nX-Original-To:" not in m.split(b"\n\n", 1)[0]
    [line] = inst.wait_log(rf"{queue_id}: to=<")
    assert f"to=<{ME}@{origin}>, orig_to=<a@valias.example>," in line
