"""pymailsys.address.networks: mynetworks patterns and their matching, as Postfix's address lists."""

from __future__ import annotations

from pathlib import Path

import pytest

from pymailsys import config
from pymailsys.address import networks as netaddr


def test_cidr_ipv4_ipv6_and_mapped() -> None:
    nets = netaddr.AddressList(["10.0.0.0/8", "[::1]/128", "192.0.2.7", "[2001:db8::]/32"])
    assert nets.match("10.2.3.4")
    assert not nets.match("11.0.0.1")
    assert nets.match("::1")
    assert nets.match("192.0.2.7") and not nets.match("192.0.2.8")
    assert nets.match("2001:db8:1::5")
    assert nets.match("::ffff:10.1.1.1")  # IPv4-mapped client


def test_negation_first_match_wins() -> None:
    nets = netaddr.AddressList(["!10.1.0.0/16", "10.0.0.0/8"])
    assert not nets.match("10.1.2.3")
    assert nets.match("10.2.2.3")
    # Postfix order: the first match decides, so a later negation is never reached.
    assert netaddr.AddressList(["10.0.0.0/8", "!10.1.0.0/16"]).match("10.1.2.3")


def test_name_patterns_match_subdomains_as_parent_domain_matches_subdomains_says() -> None:
    def mynetworks(**values: str) -> netaddr.AddressList:
        return netaddr.mynetworks(config.Config("/nonexistent", {"mynetworks": "trusted.example",
                                                                 **values}))
    assert mynetworks().match("192.0.2.1", "host.trusted.example")  # Postfix's default
    strict = mynetworks(parent_domain_matches_subdomains="relay_domains")
    assert not strict.match("192.0.2.1", "host.trusted.example")
    assert strict.match("192.0.2.1", "trusted.example")


def test_host_bits_refused() -> None:
    with pytest.raises(ValueError, match="bad net/mask"):
        netaddr.AddressList(["10.0.0.1/8"])


def test_file_and_table_and_names(tmp_path: Path) -> None:
    f = tmp_path / "nets"
    f.write_text("# trusted\n192.0.2.0/24, 198.51.100.0/24\n!203.0.113.9 203.0.113.0/24\n")
    nets = netaddr.AddressList([str(f)])
    assert nets.match("198.51.100.1")
    assert not nets.match("203.0.113.9")
    assert nets.match("203.0.113.10")
    t = netaddr.AddressList(["inline:{127.0.0.1=yes, mx.example=yes}"])
    assert t.match("127.0.0.1") and not t.match("127.0.0.2")
    assert t.match("127.0.0.2", "mx.example")
    # Postfix's match_hostname: a list in parent_domain_matches_subdomains (mynetworks by
    # default) matches subdomains of a bare name, and a ".name" only as written ...
    names = netaddr.AddressList(["example.com", ".sub.org"])
    assert names.match("1.2.3.4", "mail.example.com")
    assert not names.match("1.2.3.4", "a.sub.org") and not names.match("1.2.3.4", "sub.org")
    assert not names.match("1.2.3.4", "unknown")
    # ... any other list matches subdomains through ".name" only
    exact = netaddr.AddressList(["example.com", ".sub.org"], parent_style=False)
    assert exact.match("1.2.3.4", "example.com") and not exact.match("1.2.3.4", "mail.example.com")
    assert exact.match("1.2.3.4", "a.sub.org") and not exact.match("1.2.3.4", "sub.org")


def test_mynetworks_styles() -> None:
    cfg = config.Config("/nonexistent", {"mynetworks_style": "host"})
    host = netaddr.mynetworks_patterns(cfg)
    assert "127.0.0.1/32" in host and "[::1]/128" in host
    assert netaddr.mynetworks(cfg).match("127.0.0.1")
    assert not netaddr.mynetworks(cfg).match("127.0.0.2")
    sub = netaddr.mynetworks_patterns(config.Config("/nonexistent", {"mynetworks_style": "subnet"}))
    assert "127.0.0.0/8" in sub
    cls = netaddr.mynetworks_patterns(config.Config("/nonexistent", {"mynetworks_style": "class"}))
    assert "127.0.0.0/8" in cls
    explicit = config.Config("/nonexistent", {"mynetworks": "10.0.0.0/8"})
    assert netaddr.mynetworks_patterns(explicit) == ["10.0.0.0/8"]


def test_interface_addresses() -> None:
    cfg = config.Config("/nonexistent", {"inet_interfaces": "loopback-only",
                                         "proxy_interfaces": "192.0.2.99"})
    assert netaddr.interface_addresses(cfg) == {"127.0.0.1", "::1", "192.0.2.99"}
    assert "127.0.0.1" in netaddr.interface_addresses(config.Config("/nonexistent", {}))


def test_answers_are_kept_only_for_a_list_without_a_table(monkeypatch: pytest.MonkeyPatch) -> None:
    nets = netaddr.AddressList(["10.0.0.0/8", "!192.0.2.0/24", "mx.example"])
    for _ in range(2):  # the kept answers are the answers
        assert nets.match("10.1.2.3") and not nets.match("192.0.2.1", "mx.example")
        assert nets.match("198.51.100.1", "mx.example") and not nets.match("198.51.100.1")
    for n in range(netaddr.MEMO_LIMIT + 10):  # bounded
        nets.match(f"10.0.{n // 256}.{n % 256}")
    assert len(nets._memo or ()) <= netaddr.MEMO_LIMIT
    # a table's answers may change: a list with one asks it every time
    listed = netaddr.AddressList(["10.0.0.0/8", "inline:{192.0.2.1=yes}"])
    assert listed.match("192.0.2.1")
    monkeypatch.setattr(listed.items[1][2], "lookup", lambda key: None)
    assert not listed.match("192.0.2.1") and listed.match("10.9.9.9")
