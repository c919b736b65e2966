"""End to end: a domain listed in two address classes draws Postfix's warning.

Debian's Postfix 3.7 with the configuration below (trivial-rewrite, once per
distinct recipient: its resolve client remembers the last answer) logs:

    warning: do not list domain dup.example in BOTH mydestination and virtual_alias_domains
    warning: do not list domain dup2.example in BOTH virtual_alias_domains and virtual_mailbox_domains
    warning: do not list domain dup2.example in BOTH virtual_alias_domains and relay_domains
    warning: do not list domain dup3.example in BOTH mydestination and virtual_mailbox_domains

and nothing for localhost, listed in mydestination and relay_domains. The
replies are those of the class that wins (local before the virtual classes).
"""

from __future__ import annotations

import re

from harness import Instance

WARNING = re.compile(r"warning: do not list domain (\S+) in BOTH (\S+) and (\S+)$")


def test_domain_in_two_classes_warns_once_per_recipient(new_instance) -> None:  # type: ignore[no-untyped-def]
    inst: Instance = new_instance()
    inst.set(mydestination="localhost, dup.example, dup3.example",
             virtual_alias_domains="dup.example, dup2.example",
             virtual_mailbox_domains="dup2.example, dup3.example",
             relay_domains="dup2.example, localhost")
    inst.start()
    with inst.smtp() as client:
        client.ehlo("x")
        client.mail("a@b.example")
        replies = {rcpt: client.rcpt(rcpt) for rcpt in
                   ["u@dup.example", "u@dup.example", "v@dup.example", "u@dup2.example",
                    "u@dup3.example", "u@localhost"]}
    assert replies["u@dup2.example"][0] == 550
    assert b"User unknown in virtual alias table" in replies["u@dup2.example"][1]
    assert b"User unknown in local recipient table" in replies["u@dup3.example"][1]
    inst.wait_log(r"disconnect from .* quit=1")
    warned = [m.groups() for line in inst.log().splitlines() if (m := WARNING.search(line))]
    assert warned == [
        ("dup.example", "mydestination", "virtual_alias_domains"),
        ("dup.example", "mydestination", "virtual_alias_domains"),
        ("dup2.example", "virtual_alias_domains", "virtual_mailbox_domains"),
        ("dup2.example", "virtual_alias_domains", "relay_domains"),
        ("dup3.example", "mydestination", "virtual_mailbox_domains"),
    ]


def test_helpful_warnings_no_silences_them(new_instance) -> None:  # type: ignore[no-untyped-def]
    inst: Instance = new_instance()
    inst.set(mydestination="localhost, dup.example", virtual_alias_domains="dup.example",
             helpful_warnings="no")
    inst.start()
    with inst.smtp() as client:
        client.ehlo("x")
        client.mail("a@b.example")
        client.rcpt("u@dup.example")
    inst.wait_log(r"disconnect from .* quit=1")
    assert "do not list domain" not in inst.log()
