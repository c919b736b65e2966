"""pymailsys.address.resolve: address classes, transports and next hops as Postfix's trivial-rewrite."""

from __future__ import annotations

from pathlib import Path

import pytest

from pymailsys import config
from pymailsys.address import resolve


def cfg(**values: str) -> config.Config:
    base = {"myhostname": "mx.example", "mydestination": "$myhostname, localhost",
            "inet_interfaces": "loopback-only"}
    base.update(values)
    return config.Config("/nonexistent", base)


def test_classes_in_order() -> None:
    c = cfg(relay_domains="relay.example", virtual_alias_domains="va.example",
            virtual_mailbox_domains="vm.example")
    r = resolve.resolve(c, "root@mx.example")
    assert (r.class_, r.transport, r.nexthop, r.recipient) == ("local", "local", "mx.example",
                                                                "root@mx.example")
    r = resolve.resolve(c, "u@va.example")
    assert (r.class_, r.transport, r.nexthop) == ("alias", "error",
                                                  "5.1.1 User unknown in virtual alias table")
    r = resolve.resolve(c, "u@vm.example")
    assert (r.class_, r.transport, r.nexthop) == ("virtual", "virtual", "vm.example")
    r = resolve.resolve(c, "u@sub.relay.example")  # relay_domains matches subdomains
    assert (r.class_, r.transport, r.nexthop) == ("relay", "relay", "sub.relay.example")
    r = resolve.resolve(c, "u@elsewhere.example")
    assert (r.class_, r.transport, r.nexthop, r.flags) == ("default", "smtp", "elsewhere.example", 0)


def test_bare_localpart_trailing_dot_and_case() -> None:
    c = cfg()
    assert resolve.resolve(c, "root").recipient == "root@mx.example"
    r = resolve.resolve(c, "root@MX.Example.")
    assert r.class_ == "local" and r.recipient == "root@MX.Example"


def test_ip_literal_of_our_interfaces_is_local() -> None:
    c = cfg()
    assert resolve.resolve(c, "root@[127.0.0.1]").class_ == "local"
    assert resolve.resolve(c, "root@[192.0.2.200]").class_ == "default"


def test_routed_addresses() -> None:
    """ROUTED, as Postfix's resolve_addr sets it: routing operators left in the local
    part of the result, whatever its class; the rewriting that led there does not count
    (the result's class says where it goes)."""
    c = cfg(relay_domains="relay.example")
    r = resolve.resolve(c, "u%elsewhere.example@mx.example")  # percent hack on a local domain
    assert r.class_ == "default" and r.recipient == "u@elsewhere.example" and not r.routed
    r = resolve.resolve(c, "u%relay.example@mx.example")
    assert r.class_ == "relay" and r.recipient == "u@relay.example" and not r.routed
    r = resolve.resolve(c, "u%x@relay.example")  # sender-specified routing via a relay domain
    assert r.class_ == "relay" and r.routed
    r = resolve.resolve(c, "u@x.example@relay.example")
    assert r.class_ == "relay" and r.routed
    r = resolve.resolve(c, "u@x.example@mx.example")
    assert r.class_ == "default" and r.recipient == "u@x.example"
    r = resolve.resolve(c, "x.example!u")
    assert r.recipient == "u@x.example" and r.class_ == "default"
    r = resolve.resolve(c, "@a,@b:root@mx.example")  # source route dropped
    assert r.class_ == "local" and not r.routed
    r = resolve.resolve(c, "@a:u@relay.example")
    assert r.class_ == "relay" and not r.routed
    # operators this system does not take are routing all the same: the next hop may
    r = resolve.resolve(cfg(allow_percent_hack="no"), "u%x@mx.example")
    assert r.class_ == "local" and r.recipient == "u%x@mx.example" and r.routed
    r = resolve.resolve(cfg(swap_bangpath="no"), "x!u@mx.example")
    assert r.class_ == "local" and r.recipient == "x!u@mx.example" and r.routed


def test_transports_relayhost_and_transport_maps(tmp_path: Path) -> None:
    c = cfg(relayhost="[smarthost.example]", relay_domains="relay.example",
            default_transport="smtp:[fallback.example]",
            transport_maps="inline:{t.example=smtp:[192.0.2.1]:2525, "
                           "n.example=lmtp:, .p.example=relay:}")
    assert resolve.resolve(c, "u@relay.example").nexthop == "[smarthost.example]"
    assert resolve.resolve(c, "u@other.example").nexthop == "[fallback.example]"
    r = resolve.resolve(c, "u@t.example")
    assert (r.transport, r.nexthop) == ("smtp", "[192.0.2.1]:2525")
    r = resolve.resolve(c, "u@n.example")
    assert (r.transport, r.nexthop) == ("lmtp", "n.example")
    r = resolve.resolve(c, "u@a.p.example")
    assert (r.transport, r.nexthop) == ("relay", "a.p.example")


def test_domain_lists_tables_files_negation(tmp_path: Path) -> None:
    f = tmp_path / "domains"
    f.write_text("file.example # comment\n")
    c = cfg(mydestination=f"!no.example, .sub.example, {f}, inline:{{tab.example=1}}")
    assert resolve.resolve(c, "u@file.example").class_ == "local"
    # mydestination is a string list (Postfix 3.7's resolve_local): ".sub.example" is no
    # pattern for subdomains there (Debian's Postfix: Relay access denied for a.sub.example)
    assert resolve.resolve(c, "u@a.sub.example").class_ == "default"
    assert resolve.resolve(c, "u@sub.example").class_ == "default"
    assert resolve.resolve(c, "u@tab.example").class_ == "local"
    assert resolve.resolve(c, "u@no.example").class_ == "default"


def test_table_failure_is_flagged_not_not_found() -> None:
    c = cfg(mydestination="hash:/nonexistent/table")
    r = resolve.resolve(c, "u@x.example")
    assert r.failed and "nonexistent" in r.error


def test_cache_reuses_an_answer_but_not_a_failure(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """An answer is reused for RESOLVE_TTL, as Postfix's resolve client; a table that
    did not answer is asked again; the sender is part of the key only with
    sender_dependent_relayhost_maps, and there the null sender is not no sender."""
    base = {"transport_maps": "inline:{a.example=smtp:[192.0.2.1]}"}
    cache = resolve.ResolveCache(cfg(**base))
    first = cache.resolve("u@a.example", "s@x.example")
    assert (first.transport, first.nexthop) == ("smtp", "[192.0.2.1]")
    assert cache.resolve("u@a.example", "t@x.example") is first
    assert cache.resolve("u@a.example") is first
    assert cache.resolve("v@a.example", "s@x.example") is not first
    monkeypatch.setattr(resolve, "RESOLVE_TTL", -1.0)  # expired as soon as kept
    cache.answers.clear()
    again = cache.resolve("u@a.example", "s@x.example")
    assert cache.resolve("u@a.example", "s@x.example") is not again

    broken = resolve.ResolveCache(cfg(transport_maps=f"hash:{tmp_path / 'missing'}"))
    assert broken.resolve("u@a.example", "").failed
    assert not broken.answers

    by_sender = resolve.ResolveCache(cfg(
        **base, sender_dependent_relayhost_maps="inline:{s@x.example=[192.0.2.9], <>=[192.0.2.8]}"))
    assert by_sender.resolve("u@b.example", "s@x.example").nexthop == "[192.0.2.9]"
    assert by_sender.resolve("u@b.example", "t@x.example").nexthop == "b.example"
    assert by_sender.resolve("u@b.example", "").nexthop == "[192.0.2.8]"
    assert by_sender.resolve("u@b.example").nexthop == "b.example"


def test_cache_keeps_at_most_its_size(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(resolve, "RESOLVE_CACHE_SIZE", 3)
    cache = resolve.ResolveCache(cfg())
    for n in range(10):
        cache.resolve(f"u{n}@mx.example")
        assert len(cache.answers) <= 3


def test_an_empty_local_part_is_mailer_daemon() -> None:
    """As Postfix's resolve_addr: @ourdomain (also ""@ourdomain) is
    $empty_address_recipient at that domain, resolved again."""
    r = resolve.resolve(cfg(), "@mx.example")
    assert r.class_ == "local" and r.recipient == "MAILER-DAEMON@mx.example"
    r = resolve.resolve(cfg(empty_address_recipient="postmaster@elsewhere.example"), "@mx.example")
    assert r.class_ == "default" and r.recipient == "postmaster@elsewhere.example"


def test_bad_address_syntax_goes_to_the_error_transport() -> None:
    """Postfix's RESOLVE_FLAG_ERROR: a domain that is no host name and no address literal
    (or none at all) is ``error:5.1.3 bad address syntax``; one trailing dot goes."""
    c = cfg()
    for address in ("u@", "u@@mx.example", "u@mx.example..", "u@.example", "u@127.0.0.1",
                    "u@[127.1]", "u@[::1]", "u@-x.example", "u%bad..example@mx.example",
                    "u@\u00fcb.example"):
        r = resolve.resolve(cfg(smtputf8_enable="no"), address)
        assert r.bad_syntax and (r.transport, r.nexthop) == ("error", resolve.BAD_SYNTAX), address
    assert resolve.resolve(c, "u@\u00fcb.example").class_ == "default"  # with smtputf8_enable
    r = resolve.resolve(c, "root@mx.example.")
    assert r.class_ == "local" and not r.bad_syntax
    for literal in ("[127.0.0.01]", "[IPv6:::1]", "[ipv6:::ffff:127.0.0.1]"):  # ours
        assert resolve.resolve(c, f"root@{literal}").class_ == "local", literal
    assert resolve.resolve(c, "u@[192.0.2.1]").class_ == "default"


def test_transport_wildcard_is_asked_of_every_table_and_local_nexthop_is_the_domain(
        tmp_path: Path) -> None:
    """Postfix's transport_wildcard_init looks ``*`` up FULL (a regexp table sees it);
    without a nexthop in local_transport, a local recipient's is its domain."""
    table = tmp_path / "transport.re"
    table.write_text("/^\\*$/ smtp:[star.example]\n/@z\\.example$/ smtp:[z.example]\n")
    c = cfg(transport_maps=f"regexp:{table}")
    assert resolve.resolve(c, "u@z.example").nexthop == "[z.example]"
    assert resolve.resolve(c, "u@q.example").nexthop == "[star.example]"
    r = resolve.resolve(cfg(local_transport="local"), "u@localhost")
    assert (r.class_, r.transport, r.nexthop) == ("local", "local", "localhost")


def test_transport_maps_extensions_and_parent_style() -> None:
    """transport(5): user+ext@domain, then user@domain; a parent domain matches
    through ``.parent``, or as a bare name when parent_domain_matches_subdomains lists
    transport_maps."""
    table = "inline:{u@x.example=smtp:[a.example], .y.example=smtp:[b.example], " \
            "z.example=smtp:[c.example]}"
    c = cfg(transport_maps=table, recipient_delimiter="+")
    assert resolve.resolve(c, "u+tag@x.example").nexthop == "[a.example]"
    assert resolve.resolve(c, "u@sub.y.example").nexthop == "[b.example]"
    assert resolve.resolve(c, "u@y.example").nexthop == "y.example"
    assert resolve.resolve(c, "u@sub.z.example").nexthop == "sub.z.example"
    c = cfg(transport_maps=table, parent_domain_matches_subdomains="transport_maps")
    assert resolve.resolve(c, "u@sub.z.example").nexthop == "[c.example]"
