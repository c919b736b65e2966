"""DNS-based restrictions and client names against a real DNS server, in a network namespace (root).

The namespace's resolver is Debian's dnsmasq serving a test DNS list zone
(bl.test: 127.0.0.2 listed with a TXT reason, 127.0.0.3 listed with a code
that the reply filter leaves out), names with and without A/MX records, a
null MX, PTR records for non-loopback addresses on the namespace's lo, and two zones
(slow.test and 78.10.in-addr.arpa) forwarded to a server that drops every
query: DNS timeouts. The pymailsys instance runs inside the namespace;
clients connect from the namespace's addresses with Python's smtplib.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator

import pytest
from conftest import require_tool
from harness import ME, PYTHON, Instance, wait_until
from netns_helper import Netns

pytestmark = pytest.mark.root

GOOD, FORGED, NO_PTR, SLOW_PTR = "10.77.0.5", "10.77.0.6", "10.77.0.7", "10.78.0.8"
BLACKHOLE = "127.0.0.53"  # binds UDP port 53 and never answers

CLIENT = """
import json, smtplib, sys
src, port, helo, sender, rcpt = sys.argv[1:6]
c = smtplib.SMTP(timeout=120, source_address=(src, 0), local_hostname=helo)
c.connect("127.0.0.1", int(port))
out = [c.ehlo(), c.mail(sender), c.rcpt(rcpt)]
c.quit()
print(json.dumps([[code, text.decode()] for code, text in out[1:]]))
"""


@pytest.fixture(scope="module")
def dns_instance() -> Iterator[tuple[Netns, Instance]]:
    require_tool("/usr/sbin/dnsmasq")
    ns = Netns()
    inst: Instance | None = None
    try:
        for addr in (GOOD, FORGED, NO_PTR, SLOW_PTR):  # client addresses that are not loopback
            ns.run(["ip", "addr", "add", f"{addr}/32", "dev", "lo"])
        ns.spawn([PYTHON, "-c", "import socket, time; s = socket.socket(socket.AF_INET, "
                  f"socket.SOCK_DGRAM); s.bind(('{BLACKHOLE}', 53)); time.sleep(900)"])
        ns.spawn(["dnsmasq", "--no-daemon", "--no-resolv", "--no-hosts", "--port=53",
                  "--listen-address=127.0.0.1", "--bind-interfaces", "--local=/test/",
                  "--local=/77.10.in-addr.arpa/",
                  "--host-record=2.0.0.127.bl.test,127.0.0.2",
                  "--txt-record=2.0.0.127.bl.test,Listed for testing",
                  "--host-record=3.0.0.127.bl.test,127.0.0.10",
                  "--host-record=4.0.0.127.bl.test,127.0.0.2",
                  "--host-record=4.0.0.127.wl.test,127.0.0.2",
                  "--host-record=spam.test.rhs.test,127.0.0.2",
                  "--host-record=spam.test,127.0.0.10",
                  f"--host-record=good.test,{GOOD}", "--host-record=probe.test,127.0.0.1",
                  "--ptr-record=6.0.77.10.in-addr.arpa,forged.test",
                  "--host-record=forged.test,10.77.0.99",
                  "--mx-host=mx.test,mx1.mx.test,10", "--host-record=mx1.mx.test,127.0.0.10",
                  "--dns-rr=null.test,15,000000",
                  f"--server=/slow.test/{BLACKHOLE}", f"--server=/78.10.in-addr.arpa/{BLACKHOLE}"])
        probe = [PYTHON, "-c", "import dns.resolver; dns.resolver.resolve('good.test', 'A')"]
        wait_until(lambda: subprocess.run(ns.argv(probe), capture_output=True).returncode == 0,
                   30, what="dnsmasq in the namespace")
        inst = Instance()
        helo_access = inst.write("etc/helo_access", "probe.test reject_rbl_client slow.test\n")
        rbl_replies = inst.write("etc/rbl_replies", "rhs.test $rbl_code 5.7.1 Sender domain "
                                 "of <$rbl_what> is listed at $rbl_domain\n")
        inst.set(inet_protocols="ipv4", unknown_client_reject_code="550",
                 unknown_address_reject_code="550",
                 rbl_reply_maps=f"texthash:{rbl_replies}",
                 smtpd_client_restrictions="permit_dnswl_client wl.test, "
                 "reject_rbl_client bl.test=127.0.0.[2..4], reject_unknown_client_hostname",
                 smtpd_helo_restrictions=f"check_helo_access texthash:{helo_access}, "
                 "reject_unknown_helo_hostname",
                 smtpd_sender_restrictions="reject_rhsbl_sender rhs.test, "
                 "reject_unknown_sender_domain")
        ns.run([PYTHON, "-m", "pymailsys.tools.postfix", "-c", str(inst.config_dir), "start"],
               cwd="/")
        inst.running = True
        port = inst.port
        wait_until(lambda: ns.listening("127.0.0.1", port), 30, what="smtpd in the namespace")
        yield ns, inst
    finally:
        if inst is not None:
            inst.cleanup()
        ns.close()


def rcpt_reply(env: tuple[Netns, Instance], src: str = "127.0.0.1", helo: str = "good.test",
               sender: str = "alice@mx.test") -> tuple[int, str]:
    """The reply to RCPT TO:<ME@localhost> (MAIL's must be 250) of a client at src."""
    ns, inst = env
    out = ns.run([PYTHON, "-c", CLIENT, src, str(inst.port), helo, sender, f"{ME}@localhost"],
                 capture_output=True, text=True, timeout=180)
    mail, rcpt = json.loads(out.stdout)
    assert mail[0] == 250, mail
    return rcpt[0], rcpt[1]


def test_listed_client_gets_the_rbl_reply(dns_instance) -> None:  # type: ignore[no-untyped-def]
    assert rcpt_reply(dns_instance, "127.0.0.2") == (
        554, "5.7.1 Service unavailable; Client host [127.0.0.2] blocked using bl.test; "
             "Listed for testing")
    _, inst = dns_instance
    inst.wait_log(r"NOQUEUE: reject: RCPT from localhost\[127\.0\.0\.2\]: 554 5\.7\.1 Service "
                  r"unavailable; Client host \[127\.0\.0\.2\] blocked using bl\.test; Listed for "
                  rf"testing; from=<alice@mx\.test> to=<{ME}@localhost> proto=ESMTP "
                  r"helo=<good\.test>")
    # listed, but with a code outside the reply filter: not refused
    assert rcpt_reply(dns_instance, "127.0.0.3")[0] == 250
    # listed in bl.test too, but permit_dnswl_client comes first
    assert rcpt_reply(dns_instance, "127.0.0.4")[0] == 250


def test_rhsbl_sender_with_rbl_reply_maps(dns_instance) -> None:  # type: ignore[no-untyped-def]
    assert rcpt_reply(dns_instance, sender="eve@spam.test") == (
        554, "5.7.1 Sender domain of <eve@spam.test> is listed at rhs.test")


def test_rbl_timeout_gives_the_benefit_of_the_doubt(dns_instance) -> None:  # type: ignore[no-untyped-def]
    # As Postfix's rbl_pagein: an unavailable list neither blocks nor allows mail by itself
    assert rcpt_reply(dns_instance, helo="probe.test")[0] == 250
    _, inst = dns_instance
    inst.wait_log(r"warning: 1\.0\.0\.127\.slow\.test: RBL lookup error: Host or domain name not "
                  r"found\. Name service error for name=1\.0\.0\.127\.slow\.test type=A: Host not "
                  r"found, try again")


def test_unknown_sender_domain_and_dns_timeout(dns_instance) -> None:  # type: ignore[no-untyped-def]
    assert rcpt_reply(dns_instance, sender="bob@slow.test") == (
        450, "4.1.8 <bob@slow.test>: Sender address rejected: Domain not found")
    assert rcpt_reply(dns_instance, sender="bob@nonexistent.test") == (
        550, "5.1.8 <bob@nonexistent.test>: Sender address rejected: Domain not found")
    assert rcpt_reply(dns_instance, sender="bob@null.test") == (
        550, "5.7.27 <bob@null.test>: Sender address rejected: Domain null.test does not accept "
             "mail (nullMX)")


def test_unknown_helo_hostname(dns_instance) -> None:  # type: ignore[no-untyped-def]
    assert rcpt_reply(dns_instance, helo="nonexistent.test") == (
        450, "4.7.1 <nonexistent.test>: Helo command rejected: Host not found")


def test_client_names(dns_instance) -> None:  # type: ignore[no-untyped-def]
    _, inst = dns_instance
    assert rcpt_reply(dns_instance, GOOD)[0] == 250
    inst.wait_log(rf"connect from good\.test\[{GOOD}\]")
    assert rcpt_reply(dns_instance, FORGED) == (
        550, f"5.7.25 Client host rejected: cannot find your hostname, [{FORGED}]")
    inst.wait_log(rf"warning: hostname forged\.test does not resolve to address {FORGED}")
    assert rcpt_reply(dns_instance, NO_PTR) == (
        550, f"5.7.25 Client host rejected: cannot find your hostname, [{NO_PTR}]")
    # a DNS timeout is not "unknown": 450 whatever unknown_client_reject_code says
    assert rcpt_reply(dns_instance, SLOW_PTR) == (
        450, f"4.7.25 Client host rejected: cannot find your hostname, [{SLOW_PTR}]")
    inst.wait_log(rf"connect from unknown\[{SLOW_PTR}\]")
