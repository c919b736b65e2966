"""Outbound delivery routed by DNS, in a network namespace of its own (root).

The test creates a network namespace with its own /etc/netns/NAME/resolv.conf
(``ip netns exec`` mounts it over /etc/resolv.conf, which the smtp agent reads
as Postfix does), starts a real DNS server in it (Debian's dnsmasq, serving
the test zone from its command line: MX, A, AAAA, a null MX, a domain whose
forwarder does not answer, so that dnsmasq replies SERVFAIL) and smtp-sink
peers on the namespace's loopback addresses (one IPv6), port 25. The pymailsys instance
runs inside the namespace; mail goes in with the sendmail command, over the
instance's Unix sockets, which do not depend on the network namespace.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from conftest import require_tool
from harness import PYTHON, Instance, wait_until
from netns_helper import Netns

pytestmark = pytest.mark.root

MX1, MX2, AHOST, SELF, SOFT = "127.0.0.10", "127.0.0.11", "127.0.0.12", "127.0.0.1", "127.0.0.13"
V6HOST = "fd00::25"  # on the namespace's loopback: the only address of v6only.test (AAAA)


@pytest.fixture
def netns() -> Iterator[Netns]:
    require_tool("/usr/sbin/dnsmasq")
    ns = Netns()
    try:
        ns.run(["ip", "-6", "addr", "add", f"{V6HOST}/128", "dev", "lo"])
        with open("/etc/hosts") as system, open(f"{ns.etc}/hosts", "w") as hosts:
            hosts.write(system.read() + f"\n{AHOST} hostsonly.test\n")  # not in the DNS
        ns.spawn(["dnsmasq", "--no-daemon", "--no-resolv", "--no-hosts", "--port=53",
                  "--listen-address=127.0.0.1", "--bind-interfaces", "--local=/test/",
                  "--mx-host=mx.test,mx1.mx.test,10", "--mx-host=mx.test,mx2.mx.test,20",
                  "--mx-host=deadmx.test,mx1.mx.test,10",
                  "--mx-host=soft.test,mx1.soft.test,10", "--mx-host=soft.test,mx2.mx.test,20",
                  f"--host-record=mx1.soft.test,{SOFT}",
                  f"--host-record=mx1.mx.test,{MX1}", f"--host-record=mx2.mx.test,{MX2}",
                  f"--host-record=amx.test,{AHOST}", f"--host-record=v6only.test,{V6HOST}",
                  "--mx-host=self.test,me.self.test,10", "--mx-host=self.test,mx2.mx.test,20",
                  f"--host-record=me.self.test,{SELF}",
                  # the better MX does not resolve (SERVFAIL), the other is us
                  "--mx-host=prim.test,mx.fail.test,10", "--mx-host=prim.test,me.self.test,20",
                  # one MX host fails temporarily, the other does not exist
                  "--mx-host=mixed.test,mx.fail.test,10", "--mx-host=mixed.test,gone.test,20",
                  f"--host-record=aself.test,{SELF}",  # no MX, the A record is us
                  f"--host-record=dual.test,{AHOST},{V6HOST}",  # both families, both sinks
                  # the only MX host exists but has no address record
                  "--mx-host=noaddr.test,mx.noaddr.test,10", "--txt-record=mx.noaddr.test,x",
                  "--dns-rr=null.test,15,000000",  # preference 0, the root: a null MX
                  "--dns-rr=halfnull.test,15,000000",  # a null MX among other MX records
                  "--mx-host=halfnull.test,mx2.mx.test,20",
                  # more MX records than Postfix takes (100)
                  "--mx-host=big.test,mx2.mx.test,0",
                  *[f"--mx-host=big.test,h{i}.big.test,{i + 1}" for i in range(120)],
                  "--server=/fail.test/127.0.0.99"])  # nobody answers there: SERVFAIL
        sink = require_tool("/usr/sbin/smtp-sink")
        for addr in (MX2, AHOST, f"[{V6HOST}]"):  # MX1 has nothing listening: refused
            ns.spawn([sink, "-u", "nobody", f"{addr}:25", "10"])
        ns.spawn([sink, "-u", "nobody", "-r", "RCPT", f"{SOFT}:25", "10"])  # 450 to RCPT
        for addr in (MX2, AHOST, SOFT, V6HOST):
            wait_until(lambda a=addr: ns.listening(a, 25), 30,  # type: ignore[misc]
                       what=f"smtp-sink on {addr}")
        yield ns
    finally:
        ns.close()


def _started(new_instance, netns: Netns, **settings: str) -> Instance:  # type: ignore[no-untyped-def]
    """A new instance with these settings, started inside the namespace."""
    inst: Instance = new_instance()
    inst.set(**settings)
    netns.run([PYTHON, "-m", "pymailsys.tools.postfix", "-c", str(inst.config_dir), "start"],
              cwd="/")
    inst.running = True
    return inst


def test_routing_by_dns(new_instance, netns) -> None:  # type: ignore[no-untyped-def]
    inst = _started(new_instance, netns, inet_protocols="ipv4", maximal_queue_lifetime="1h")
    rcpts = ["a@mx.test", "b@amx.test", "c@null.test", "d@fail.test", "e@nonexistent.test",
             "f@self.test", "g@soft.test", "i@prim.test", "j@mixed.test", "k@aself.test",
             "m@halfnull.test", "o@noaddr.test", "x@big.test"]
    inst.tool("sendmail", "-f", "alice@example.org", *rcpts,
              input="Subject: dns\n\nrouted by DNS\n", check=True)
    # MX by preference: mx1 refuses, mx2 takes it
    inst.wait_log(r"to=<a@mx\.test>, relay=mx2\.mx\.test\[127\.0\.0\.11\]:25, .*status=sent")
    # a 4xx to RCPT at the first MX: the second MX gets the recipient
    inst.wait_log(r"to=<g@soft\.test>, relay=mx2\.mx\.test\[127\.0\.0\.11\]:25, .*status=sent")
    # no MX: the A record
    inst.wait_log(r"to=<b@amx\.test>, relay=amx\.test\[127\.0\.0\.12\]:25, .*status=sent")
    inst.wait_log(r"to=<c@null\.test>, relay=none, .*dsn=5\.1\.0, status=bounced "
                  r"\(Domain null\.test does not accept mail \(nullMX\)\)")
    # a null MX record among others makes the whole answer a null MX, as Postfix
    inst.wait_log(r"to=<m@halfnull\.test>, relay=none, .*dsn=5\.1\.0, status=bounced "
                  r"\(Domain halfnull\.test does not accept mail \(nullMX\)\)")
    inst.wait_log(r"to=<d@fail\.test>, relay=none, .*dsn=4\.4\.3, status=deferred \(Host or "
                  r"domain name not found\. Name service error for name=fail\.test type=MX: "
                  r"Host not found, try again\)")
    inst.wait_log(r"to=<e@nonexistent\.test>, relay=none, .*dsn=5\.4\.4, status=bounced \(Host "
                  r"or domain name not found\. Name service error for name=nonexistent\.test "
                  r"type=A: Host not found\)")  # as Postfix: NXDOMAIN for MX, then A
    # we are the best MX of self.test: only better MX hosts would do, and there are none
    inst.wait_log(r"to=<f@self\.test>, relay=none, .*dsn=5\.4\.6, status=bounced "
                  r"\(mail for self\.test loops back to myself\)")
    # we are a backup MX and the primary does not resolve now: wait, as Postfix
    inst.wait_log(r"to=<i@prim\.test>, relay=none, .*dsn=4\.4\.4, status=deferred "
                  r"\(unable to find primary relay for prim\.test\)")
    # a temporary lookup failure of one MX host outweighs another's NXDOMAIN: no bounce
    inst.wait_log(r"to=<j@mixed\.test>, relay=none, .*dsn=4\.4\.3, status=deferred \(Host or "
                  r"domain name not found\. Name service error for name=mx\.fail\.test type=A: "
                  r"Host not found, try again\)")
    # no MX host with an address: a hard error, as Postfix (not deferred for days)
    inst.wait_log(r"warning: no MX host for noaddr\.test has a valid address record")
    inst.wait_log(r"to=<o@noaddr\.test>, relay=none, .*dsn=5\.4\.4, status=bounced \(Host or "
                  r"domain name not found\. Name service error for name=mx\.noaddr\.test type=A: "
                  r"Host found but no data record of requested type\)")
    # a huge MX answer: cut at 100 records in answer order, as Postfix (which of them
    # survive is the DNS server's order), and the delivery ends at once
    inst.wait_log(r"warning: DNS record count limit \(100\) exceeded -- dropping excess "
                  r"record\(s\) after qname=big\.test qtype=MX")
    inst.wait_log(r"to=<x@big\.test>, .*status=(sent|bounced)")
    # no MX, and the domain's address is ours: a loop, not a connection to ourselves
    inst.wait_log(r"to=<k@aself\.test>, relay=none, .*dsn=5\.4\.6, status=bounced "
                  r"\(mail for aself\.test loops back to myself\)")


def test_fallback_relay_when_every_mx_is_down(new_instance, netns) -> None:  # type: ignore[no-untyped-def]
    inst = _started(new_instance, netns, inet_protocols="ipv4", smtp_fallback_relay=f"[{AHOST}]:25")
    inst.tool("sendmail", "-f", "alice@example.org", "h@deadmx.test", "n@nonexistent.test",
              input="Subject: fallback\n\nvia the fallback relay\n", check=True)
    inst.wait_log(r"to=<h@deadmx\.test>, relay=127\.0\.0\.12\[127\.0\.0\.12\]:25, "
                  r".*status=sent")
    # as Postfix: the fallback relay is for destinations that cannot be found, too
    inst.wait_log(r"to=<n@nonexistent\.test>, relay=127\.0\.0\.12\[127\.0\.0\.12\]:25, "
                  r".*status=sent")


def test_aaaa_only_destination(new_instance, netns) -> None:  # type: ignore[no-untyped-def]
    """No MX and only an AAAA record: delivered over IPv6 with inet_protocols = all."""
    inst = _started(new_instance, netns, inet_protocols="all")
    inst.tool("sendmail", "-f", "alice@example.org", "v@v6only.test",
              input="Subject: v6\n\nover IPv6\n", check=True)
    inst.wait_log(r"to=<v@v6only\.test>, relay=v6only\.test\[fd00::25\]:25, .*status=sent")


def test_relayhost_lookup_failure_defers_and_literal_loops(new_instance, netns) -> None:  # type: ignore[no-untyped-def]
    """As Postfix: a relayhost that does not resolve is a configuration problem (4.3.5,
    deferred, not bounced); a [literal] nexthop on port 25 that is us is a loop (5.4.6);
    an IPv6 literal with inet_protocols = ipv4 is not used."""
    inst = _started(new_instance, netns, inet_protocols="ipv4", relayhost="[gone.test]",
                    transport_maps=f"inline:{{ loop.example=smtp:[{SELF}], "
                                   f"v6.example=smtp:[{V6HOST}] }}")
    inst.tool("sendmail", "-f", "alice@example.org", "r@remote.example", "l@loop.example",
              "w@v6.example", input="Subject: relayhost\n\nnowhere\n", check=True)
    inst.wait_log(r"warning: relayhost configuration problem")
    inst.wait_log(r"to=<r@remote\.example>, relay=none, .*dsn=4\.3\.5, status=deferred "
                  r"\(Host or domain name not found\. Name service error for name=gone\.test "
                  r"type=A: Host not found\)")
    inst.wait_log(r"to=<l@loop\.example>, relay=none, .*dsn=5\.4\.6, status=bounced "
                  r"\(mail for 127\.0\.0\.1 loops back to myself\)")
    # inet_protocols = ipv4: an IPv6 literal is not reachable (a sink listens there)
    inst.wait_log(r"to=<w@v6\.example>, relay=none, .*dsn=5\.4\.4, status=bounced \(Host or "
                  r"domain name not found\. Name service error for name=fd00::25 type=A: Host "
                  r"not found\)")


def test_session_limit_is_per_site_and_fallback_relay_still_tried(new_instance, netns) -> None:  # type: ignore[no-untyped-def]
    """smtp_mx_session_limit counts the sessions of one site: once the MX hosts used it
    up, the fallback relay still gets the mail, as Postfix's smtp_connect_inet."""
    inst = _started(new_instance, netns, inet_protocols="ipv4", smtp_mx_session_limit="1",
                    smtp_fallback_relay=f"[{AHOST}]:25")
    inst.tool("sendmail", "-f", "alice@example.org", "s@soft.test",
              input="Subject: limit\n\nto the fallback\n", check=True)
    inst.wait_log(r"to=<s@soft\.test>, relay=127\.0\.0\.12\[127\.0\.0\.12\]:25, "
                  r".*status=sent")


@pytest.mark.parametrize("settings, mx_test", [
    # the DNS first (MX records too), then /etc/hosts for a name the DNS does not know
    ({"smtp_host_lookup": "dns, native"},
     r"relay=mx2\.mx\.test\[127\.0\.0\.11\]:25, .*status=sent"),
    # no MX lookup: addresses from the system's name service alone; mx.test has none
    ({"disable_dns_lookups": "yes"},
     r"relay=none, .*dsn=5\.4\.4, status=bounced \(unable to look up host mx\.test: "),
])
def test_host_lookup_native_and_dns_disabled(new_instance, netns, settings, mx_test) -> None:  # type: ignore[no-untyped-def]
    """smtp_host_lookup = native and disable_dns_lookups are obeyed, as Postfix's
    smtp_addr_one and smtp_connect_inet."""
    inst = _started(new_instance, netns, inet_protocols="ipv4", **settings)
    inst.tool("sendmail", "-f", "alice@example.org", "p@hostsonly.test", "q@mx.test",
              input="Subject: native\n\nfrom /etc/hosts\n", check=True)
    inst.wait_log(r"to=<p@hostsonly\.test>, relay=hostsonly\.test\[127\.0\.0\.12\]:25, "
                  r".*status=sent")
    inst.wait_log(r"to=<q@mx\.test>, " + mx_test)


@pytest.mark.parametrize("preference, relays", [
    ("ipv6", {f"[{V6HOST}]"}),
    ("ipv4", {f"[{AHOST}]"}),
    ("any", {f"[{V6HOST}]", f"[{AHOST}]"}),  # smtp_randomize_addresses: both, in time
])
def test_address_preference_and_randomized_addresses(new_instance, netns, preference,
                                                      relays) -> None:  # type: ignore[no-untyped-def]
    """smtp_address_preference puts a family first; with "any" the addresses of equal
    preference are shuffled (smtp_randomize_addresses), as Postfix's smtp_domain_addr."""
    inst = _started(new_instance, netns, inet_protocols="all", smtp_address_preference=preference,
                    smtp_connection_cache_on_demand="no")
    count = 16  # with "any", one address for all of them: a chance of 2 in 65536
    for i in range(count):
        inst.tool("sendmail", "-f", "alice@example.org", f"u{i}@dual.test",
                  input=f"Subject: {i}\n\nwhich family?\n", check=True)
    lines = inst.wait_log(r"to=<u\d+@dual\.test>, relay=dual\.test\[\S+\]:25, .*status=sent",
                          count=count)
    assert {re.search(r"relay=dual\.test(\[\S+\]):25", line).group(1)  # type: ignore[union-attr]
            for line in lines} == relays
