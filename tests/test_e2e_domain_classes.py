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


def _rcpt_replies(inst: Instance, recipients: list[str]) -> dict[str, tuple[int, bytes]]:
    """The RCPT reply to each recipient, in one transaction."""
    with inst.smtp() as client:
        client.ehlo("x")
        client.mail("a@b.example")
        return {rcpt: client.rcpt(rcpt) for rcpt in recipients}


def test_domain_in_two_classes_warns_once_per_recipient(new_instance) -> None:  # type: ignore[no-untyped-def]
    inst: Instance = new_instance()
    inst.set(mydestination="localhost, dup.example, dup3.example",
             virtual_alias_domains="dup.example, dup2.example",
             virtual_mailbox_domains="dup2.example, dup3.example",
             relay_domains="dup2.example, localhost")
    inst.start()
    replies = _rcpt_replies(inst, ["u@dup.example", "u@dup.example", "v@dup.example",
                                   "u@dup2.example", "u@dup3.example", "u@localhost"])
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


def test_parent_domain_matches_subdomains_decides_which_lists_match_subdomains(new_instance) -> None:  # type: ignore[no-untyped-def]
    """relay_domains left out of parent_domain_matches_subdomains: its bare name no longer
    covers subdomains (Relay access denied), only ".name" does. mydestination put in it
    changes nothing: it is a string list in Postfix 3.7 (resolve_local), and Debian's
    Postfix answers 454 4.7.1 Relay access denied for nobody-here@host.local.example."""
    inst: Instance = new_instance()
    inst.set(mynetworks="192.0.2.0/24",  # not the test client: relaying is not permitted
             relay_domains="relay.example, .dotted.example",
             mydestination="localhost, local.example",
             parent_domain_matches_subdomains="mydestination")
    inst.start()
    replies = _rcpt_replies(inst, ["u@relay.example", "u@sub.relay.example",
                                   "u@sub.dotted.example", "nobody-here@host.local.example"])
    assert replies["u@relay.example"][0] == 250
    assert replies["u@sub.relay.example"] == (
        454, b"4.7.1 <u@sub.relay.example>: Relay access denied")
    assert replies["u@sub.dotted.example"][0] == 250
    assert replies["nobody-here@host.local.example"] == (
        454, b"4.7.1 <nobody-here@host.local.example>: Relay access denied")


def test_relay_domains_matches_subdomains_by_default(new_instance) -> None:  # type: ignore[no-untyped-def]
    inst: Instance = new_instance()
    inst.set(mynetworks="192.0.2.0/24", relay_domains="relay.example, .dotted.example")
    inst.start()
    replies = _rcpt_replies(inst, ["u@sub.relay.example", "u@sub.dotted.example",
                                   "u@host.localhost"])
    # as Postfix's match_hostname in parent style: ".name" matches nothing more
    assert {rcpt: code for rcpt, (code, _text) in replies.items()} == {"u@sub.relay.example": 250, "u@sub.dotted.example": 454,
                       "u@host.localhost": 454}


def test_local_and_virtual_domain_lists_match_whole_domains_only(new_instance) -> None:  # type: ignore[no-untyped-def]
    """Debian's Postfix 3.7 with these settings: mydestination, virtual_alias_domains and
    virtual_mailbox_domains are string lists, so ".vm.example" or a table key
    ".pdest.example" match no real domain (Relay access denied), a table key matches its
    domain (local wins over virtual, with the nag), localhost.$mydomain is local."""
    inst: Instance = new_instance()
    table = inst.write("etc/domains", "dest.example x\n.pdest.example x\n")
    empty = inst.write("etc/empty", "")
    inst.set(mynetworks="192.0.2.0/24", myhostname="mx.example", mydomain="mx.example",
             mydestination=f"localhost.$mydomain, texthash:{table}",
             virtual_mailbox_domains=f".vm.example, texthash:{table}",
             virtual_mailbox_maps=f"texthash:{empty}", virtual_alias_domains=".va.example",
             local_recipient_maps=f"texthash:{empty}")
    inst.start()
    replies = _rcpt_replies(inst, ["u@sub.vm.example", "u@sub.va.example", "u@localhost.mx.example",
                                   "u@dest.example", "u@sub.dest.example", "u@x.pdest.example"])
    denied = {rcpt: (454, f"4.7.1 <{rcpt}>: Relay access denied".encode())
              for rcpt in ["u@sub.vm.example", "u@sub.va.example", "u@sub.dest.example",
                           "u@x.pdest.example"]}
    unknown = {rcpt: (550, f"5.1.1 <{rcpt}>: Recipient address rejected: User unknown in local "
                           "recipient table".encode())
               for rcpt in ["u@localhost.mx.example", "u@dest.example"]}
    assert replies == {**denied, **unknown}
    inst.wait_log(r"disconnect from .* quit=1")
    warned = [m.groups() for line in inst.log().splitlines() if (m := WARNING.search(line))]
    assert warned == [("dest.example", "mydestination", "virtual_mailbox_domains")]
