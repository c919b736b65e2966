"""Nexthop forms of the smtp and lmtp agents (pymailsys.smtp.nexthop.parse)."""

from __future__ import annotations

import pytest

from pymailsys.smtp.nexthop import Destination, RouteError, parse, parse_list


@pytest.mark.parametrize("text, lmtp, expected", [
    ("example.com", False, Destination("example.com", 25, True, loop_detect=True)),
    ("Example.COM.", False, Destination("example.com", 25, True, loop_detect=True)),
    ("example.com:2525", False, Destination("example.com", 2525, True)),
    ("[mail.example.com]", False, Destination("mail.example.com", 25, False, loop_detect=True)),
    ("[127.0.0.1]:587", False, Destination("127.0.0.1", 587, False)),
    ("inet:[127.0.0.1]:smtp", False, Destination("127.0.0.1", 25, False, loop_detect=True)),
    ("[ipv6:::1]:26", False, Destination("::1", 26, False)),
    ("mailstore.example", True, Destination("mailstore.example", 24, False)),
    ("inet:127.0.0.1:2424", True, Destination("127.0.0.1", 2424, False)),
    ("unix:/run/dovecot/lmtp", True, Destination(path="/run/dovecot/lmtp", use_mx=False)),
])
def test_nexthop_forms(text: str, lmtp: bool, expected: Destination) -> None:
    assert parse(text, lmtp, 24 if lmtp else 25) == expected


@pytest.mark.parametrize("text, lmtp", [
    ("unix:/tmp/sock", False),  # unix: is LMTP's only
    ("[host", False),
    ("[host]x", False),
    ("example.com:nosuchservice", False),
    ("", False),
])
def test_bad_nexthops_are_refused(text: str, lmtp: bool) -> None:
    with pytest.raises(RouteError):
        parse(text, lmtp, 25)


@pytest.mark.parametrize("text, problem", [
    ("[]", "missing host information in server description: []"),
    (":25", "missing host information in server description: :25"),
    ("[127.0.0.1]:99999", "bad network port: 99999 for destination: [127.0.0.1]:99999"),
    ("[127.0.0.1]:0", "bad network port: 0 for destination: [127.0.0.1]:0"),
    ("[127.0.0.1]:25x", "garbage after numerical service in server description: [127.0.0.1]:25x"),
    ("[ipv6:1.2.3.4]", "malformed IPv6 address in server description: [ipv6:1.2.3.4]"),
    ("bad!host", "valid hostname or network address required in server description: bad!host"),
    ("[host", 'missing "]" in server description: [host'),
])
def test_nexthop_configuration_errors_defer_in_postfix_words(text: str, problem: str) -> None:
    """Postfix's host_port() refusals: its smtp client stops on them, so the mail waits
    (never a bounce for a typo in a transport table)."""
    with pytest.raises(RouteError) as caught:
        parse(text, False, 25)
    assert (caught.value.text, caught.value.dsn) == (problem, "4.3.5")


def test_an_empty_port_is_the_default() -> None:
    assert parse("[127.0.0.1]:", False, 25) == Destination("127.0.0.1", 25, False,
                                                           loop_detect=True)
    assert parse("relay.example:", False, 25) == Destination("relay.example", 25, True,
                                                             loop_detect=True)


def test_a_nexthop_list_is_its_sites_in_order() -> None:
    assert parse_list("[a.example]:587, [b.example]:587  c.example", False, 25) == [
        Destination("a.example", 587, False), Destination("b.example", 587, False),
        Destination("c.example", 25, True, loop_detect=True)]
    assert parse_list("[a.example]", False, 25) == [
        Destination("a.example", 25, False, loop_detect=True)]
    with pytest.raises(RouteError):
        parse_list("[a.example], [b", False, 25)
