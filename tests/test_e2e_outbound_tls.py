"""Client TLS: the smtp agent against STARTTLS peers with certificates made by the test.

Peers are aiosmtpd servers offering STARTTLS with certificates from a throw-away CA
(made with the openssl command): one signed by the CA for peer.example, and one
self-signed. The CA file lives in the instance's directory, where the smtp daemon
(mail_owner) can read it. What is asserted is what an administrator checks: the log
lines, the deferral reasons, and whether the peer received anything.
"""

from __future__ import annotations

import re
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP
from harness import ME, Instance, free_port
from scripted_smtp import EHLO, STALL, ScriptedServer

from pymailsys.maps import Maps
from pymailsys.smtp import tls

LOCAL = f"{ME}@localhost"
ADDR = r"127\.0\.0\.1\[127\.0\.0\.1\]"


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


class Pki:
    """A throw-away CA, a certificate it signed for peer.example, and a self-signed one."""

    def __init__(self, where: Path) -> None:
        self.dir = where
        self.ca_key, self.ca = where / "ca.key", where / "ca.pem"
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(self.ca_key),
                 "-out", str(self.ca), "-days", "2", "-subj", "/CN=Throw-away Test CA")
        self.signed = self._leaf("peer", "peer.example", signed=True)
        self.rogue = self._leaf("rogue", "peer.example", signed=False)

    def _leaf(self, name: str, host: str, signed: bool) -> tuple[Path, Path]:
        key, cert = self.dir / f"{name}.key", self.dir / f"{name}.pem"
        ext = self.dir / f"{name}.ext"
        ext.write_text(f"subjectAltName = DNS:{host}, DNS:*.wild.example\n")
        if not signed:
            _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
                     "-out", str(cert), "-days", "2", "-subj", f"/CN={host}",
                     "-addext", f"subjectAltName = DNS:{host}")
            return key, cert
        csr = self.dir / f"{name}.csr"
        _openssl("req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
                 "-out", str(csr), "-subj", f"/CN={host}")
        _openssl("x509", "-req", "-in", str(csr), "-CA", str(self.ca), "-CAkey",
                 str(self.ca_key), "-CAcreateserial", "-out", str(cert), "-days", "2",
                 "-extfile", str(ext))
        return key, cert


class Recorder:
    def __init__(self) -> None:
        self.over_tls: list[bool] = []

    async def handle_DATA(self, server, session, envelope) -> str:  # type: ignore[no-untyped-def]
        self.over_tls.append(session.ssl is not None)
        return "250 2.0.0 Ok: queued as TLSPEER1"


class Peer:
    def __init__(self, key_cert: tuple[Path, Path]) -> None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(key_cert[1]), str(key_cert[0]))
        self.recorder = Recorder()
        self.port = free_port()
        self.controller = Controller(self.recorder, hostname="127.0.0.1", port=self.port,
                                     server_hostname="peer.example", tls_context=context)
        self.controller.start()

    @property
    def nexthop(self) -> str:
        return f"[127.0.0.1]:{self.port}"


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path)


@pytest.fixture
def peers(pki: Pki) -> Iterator[dict[str, Peer]]:
    made = {"signed": Peer(pki.signed), "rogue": Peer(pki.rogue)}
    yield made
    for peer in made.values():
        peer.controller.stop()


def instance_with_ca(new_instance, pki: Pki, **settings: str) -> Instance:  # type: ignore[no-untyped-def]
    inst: Instance = new_instance()
    ca = inst.write("etc/tls/ca.pem", pki.ca.read_text())
    inst.set(smtp_tls_CAfile=str(ca), smtp_tls_loglevel="1", **settings)
    return inst


def test_secure_with_a_policy_match_is_verified(new_instance, pki, peers) -> None:  # type: ignore[no-untyped-def]
    peer = peers["signed"]
    inst = instance_with_ca(
        new_instance, pki,
        smtp_tls_policy_maps=f"inline:{{ {{{peer.nexthop} = secure match=nothing.example:"
                             f"peer.example}} }}",
        transport_maps=f"inline:{{ ok.example=smtp:{peer.nexthop} }}")
    inst.start()
    queue_id = inst.send(LOCAL, "x@ok.example", b"Subject: verified\r\n\r\nbody\r\n")
    inst.wait_log(rf"postfix/smtp\[\d+\]: Verified TLS connection established to "
                  rf"{ADDR}:{peer.port}: TLSv1\.[23] with cipher \S+ \(\d+/\d+ bits\)")
    inst.wait_log(rf"{queue_id}: to=<x@ok.example>, .*status=sent \(250 2\.0\.0 Ok: queued "
                  rf"as TLSPEER1\)")
    assert peer.recorder.over_tls == [True]


@pytest.mark.parametrize("level", ["may", "encrypt"])
def test_may_and_encrypt_say_trusted_when_the_cafile_verifies_the_chain(
        new_instance, pki, peers, level) -> None:  # type: ignore[no-untyped-def]
    """Postfix checks the chain at may and encrypt too, for the log: the peer signed by
    smtp_tls_CAfile's CA is Trusted, the self-signed one Untrusted; both get the mail."""
    signed, rogue = peers["signed"], peers["rogue"]
    inst = instance_with_ca(new_instance, pki, smtp_tls_security_level=level,
                            transport_maps=f"inline:{{ ca.example=smtp:{signed.nexthop}, "
                                           f"self.example=smtp:{rogue.nexthop} }}")
    inst.start()
    queue_id = inst.send(LOCAL, ["a@ca.example", "b@self.example"], b"Subject: t\r\n\r\nbody\r\n")
    inst.wait_log(rf"postfix/smtp\[\d+\]: Trusted TLS connection established to "
                  rf"{ADDR}:{signed.port}: TLSv1\.[23] with cipher \S+ \(\d+/\d+ bits\)")
    inst.wait_log(rf"postfix/smtp\[\d+\]: Untrusted TLS connection established to "
                  rf"{ADDR}:{rogue.port}: TLSv1\.[23] with cipher")
    inst.wait_log(rf"{queue_id}: to=<a@ca.example>, .*status=sent")
    inst.wait_log(rf"{queue_id}: to=<b@self.example>, .*status=sent")
    assert signed.recorder.over_tls == [True] and rogue.recorder.over_tls == [True]


@pytest.mark.parametrize("peer_name, settings, logged, reason", [
    ("rogue", {"smtp_tls_security_level": "verify", "smtp_tls_verify_cert_match": "peer.example"},
     r"server certificate verification failed for {addr}: num=\d+:self.signed certificate",
     "Server certificate not trusted"),
    # The default smtp_tls_secure_cert_match is nexthop, dot-nexthop: the nexthop here
    # is 127.0.0.1, which the certificate for peer.example does not name.
    ("signed", {"smtp_tls_security_level": "secure"},
     r"Trusted TLS connection established to {addr}: TLSv1\.[23]",
     "Server certificate not verified"),
])
def test_verify_and_secure_defer_what_they_cannot_verify(
        new_instance, pki, peers, peer_name, settings, logged, reason) -> None:  # type: ignore[no-untyped-def]
    peer = peers[peer_name]
    inst = instance_with_ca(new_instance, pki, **settings,
                            transport_maps=f"inline:{{ x.example=smtp:{peer.nexthop} }}")
    inst.start()
    queue_id = inst.send(LOCAL, "x@x.example", b"Subject: not verified\r\n\r\nbody\r\n")
    inst.wait_log(r"postfix/smtp\[\d+\]: " + logged.format(addr=f"{ADDR}:{peer.port}"))
    inst.wait_log(rf"{queue_id}: to=<x@x\.example>, relay={ADDR}:{peer.port}, .*dsn=4\.7\.5, "
                  rf"status=deferred \({reason}\)")
    assert peer.recorder.over_tls == []


def test_policy_table_levels_protocols_and_errors(new_instance, pki, peers) -> None:  # type: ignore[no-untyped-def]
    """Per-destination policies over a global 'verify' that would defer both peers:
    'encrypt protocols=<=TLSv1.2' crosses in TLS 1.2 to the rogue peer, 'none'
    crosses in plaintext, and a bad entry defers with Postfix's reason and warning."""
    signed, rogue = peers["signed"], peers["rogue"]
    nexthop_plain = f"[127.0.0.1]:{signed.port}"
    inst = instance_with_ca(
        new_instance, pki, smtp_tls_security_level="verify",
        smtp_tls_policy_maps=(f"inline:{{ {{{rogue.nexthop} = encrypt protocols=<=TLSv1.2}}, "
                              f"{{{nexthop_plain} = none}}, "
                              "{broken.example = encrypt match=peer.example} }"),
        transport_maps=(f"inline:{{ old.example=smtp:{rogue.nexthop}, "
                        f"plain.example=smtp:{nexthop_plain}, "
                        f"broken.example=smtp:broken.example }}"))
    inst.start()
    queue_id = inst.send(LOCAL, ["a@old.example", "b@plain.example", "c@broken.example"],
                         b"Subject: policies\r\n\r\nbody\r\n")
    inst.wait_log(rf"Untrusted TLS connection established to {ADDR}:{rogue.port}: TLSv1\.2 "
                  rf"with cipher")
    inst.wait_log(rf"{queue_id}: to=<a@old.example>, .*status=sent")
    inst.wait_log(rf"{queue_id}: to=<b@plain.example>, .*status=sent")
    assert rogue.recorder.over_tls == [True] and signed.recorder.over_tls == [False]
    inst.wait_log(r'warning: smtp_tls_policy_maps, next-hop destination "broken.example": '
                  r'attribute "match" invalid at security level "encrypt"')
    inst.wait_log(rf"{queue_id}: to=<c@broken.example>, relay=none, .*dsn=4\.7\.5, "
                  rf"status=deferred \(client TLS configuration problem\)")


def test_cipher_grades_are_the_cipherlist_parameters(new_instance, pki, peers) -> None:  # type: ignore[no-untyped-def]
    """smtp_tls_mandatory_ciphers = medium means tls_medium_cipherlist, as in smtpd and
    Postfix: a list of one TLS 1.2 cipher is the cipher used."""
    rogue = peers["rogue"]
    inst = instance_with_ca(new_instance, pki, smtp_tls_security_level="encrypt",
                            smtp_tls_mandatory_protocols="TLSv1.2",
                            tls_medium_cipherlist="ECDHE-RSA-AES128-GCM-SHA256",
                            relayhost=rogue.nexthop)
    inst.start()
    queue_id = inst.send(LOCAL, "x@remote.example", b"Subject: cipher\r\n\r\nbody\r\n")
    inst.wait_log(rf"Untrusted TLS connection established to {ADDR}:{rogue.port}: TLSv1\.2 "
                  r"with cipher ECDHE-RSA-AES128-GCM-SHA256 \(128/128 bits\)")
    inst.wait_log(rf"{queue_id}: to=<x@remote\.example>, .*status=sent")


@pytest.mark.parametrize("exclusion, used", [
    ({"smtp_tls_mandatory_exclude_ciphers": "AES256"}, "ECDHE-RSA-AES128-GCM-SHA256"),
    ({"smtp_tls_exclude_ciphers": "AES128"}, "ECDHE-RSA-AES256-GCM-SHA384"),
    ({"smtp_tls_mandatory_exclude_ciphers": "AES256", "POLICY": "encrypt exclude=AES128"},
     "ECDHE-RSA-AES256-GCM-SHA384"),  # the table's exclude= replaces the parameters
])
def test_cipher_exclusions(new_instance, pki, peers, exclusion, used) -> None:  # type: ignore[no-untyped-def]
    """smtp_tls_exclude_ciphers, smtp_tls_mandatory_exclude_ciphers and a policy entry's
    exclude= take ciphers out of the grade's list, as Postfix's set_cipher_grade."""
    rogue = peers["rogue"]
    settings = dict(exclusion)
    entry = settings.pop("POLICY", "")
    if entry:
        settings["smtp_tls_policy_maps"] = f"inline:{{ {{{rogue.nexthop} = {entry}}} }}"
    inst = instance_with_ca(new_instance, pki, smtp_tls_security_level="encrypt",
                            smtp_tls_mandatory_protocols="TLSv1.2",
                            tls_medium_cipherlist="ECDHE-RSA-AES128-GCM-SHA256:"
                                                  "ECDHE-RSA-AES256-GCM-SHA384",
                            relayhost=rogue.nexthop, **settings)
    inst.start()
    queue_id = inst.send(LOCAL, "x@remote.example", b"Subject: cipher\r\n\r\nbody\r\n")
    inst.wait_log(rf"Untrusted TLS connection established to {ADDR}:{rogue.port}: TLSv1\.2 "
                  rf"with cipher {used} ")
    inst.wait_log(rf"{queue_id}: to=<x@remote\.example>, .*status=sent")


@pytest.mark.parametrize("settings, delivered", [
    ({"smtp_use_tls": "yes"}, True),                                      # may
    ({"smtp_enforce_tls": "yes", "smtp_tls_enforce_peername": "no"}, True),  # encrypt
    ({"smtp_enforce_tls": "yes"}, False),                                 # verify
])
def test_obsolete_tls_parameters_set_the_level(new_instance, pki, peers, settings,
                                               delivered) -> None:  # type: ignore[no-untyped-def]
    """With smtp_tls_security_level empty, Postfix's smtp_use_tls and smtp_enforce_tls
    decide: may, encrypt, or (smtp_tls_enforce_peername = yes) verify."""
    rogue = peers["rogue"]
    inst = instance_with_ca(new_instance, pki, relayhost=rogue.nexthop, **settings)
    inst.start()
    queue_id = inst.send(LOCAL, "x@remote.example", b"Subject: obsolete\r\n\r\nbody\r\n")
    if delivered:
        inst.wait_log(rf"Untrusted TLS connection established to {ADDR}:{rogue.port}: TLSv1")
        inst.wait_log(rf"{queue_id}: to=<x@remote\.example>, .*status=sent")
        assert rogue.recorder.over_tls == [True]
    else:
        inst.wait_log(rf"{queue_id}: to=<x@remote\.example>, .*dsn=4\.7\.5, status=deferred "
                      r"\(Server certificate not trusted\)")
        assert rogue.recorder.over_tls == []


def test_dane_without_dnssec_is_may(new_instance, pki, peers) -> None:  # type: ignore[no-untyped-def]
    rogue = peers["rogue"]
    inst = instance_with_ca(new_instance, pki, smtp_tls_security_level="dane",
                            relayhost=rogue.nexthop)
    inst.start()
    queue_id = inst.send(LOCAL, "x@remote.example", b"Subject: dane\r\n\r\nbody\r\n")
    inst.wait_log(r"warning: smtp_tls_security_level = dane: DNSSEC is not available")
    inst.wait_log(rf"Untrusted TLS connection established to {ADDR}:{rogue.port}")
    inst.wait_log(rf"{queue_id}: to=<x@remote.example>, .*status=sent")
    assert not re.search(r"smtp\[\d+\]: fatal:", inst.log())


# --- the policy code in memory --------------------------------------------------------

@pytest.mark.parametrize("spec, lowest, highest", [
    (">=TLSv1.2", "TLSv1_2", "TLSv1_3"),
    ("!SSLv2, !SSLv3, !TLSv1, !TLSv1.1", "TLSv1_2", "TLSv1_3"),
    ("<=TLSv1.2", "TLSv1", "TLSv1_2"),
    ("TLSv1.3", "TLSv1_3", "TLSv1_3"),
    (">=TLSv1.2:!TLSv1.3", "TLSv1_2", "TLSv1_2"),
])
def test_protocol_lists(spec: str, lowest: str, highest: str) -> None:
    assert tls.protocol_range(spec) == (ssl.TLSVersion[lowest], ssl.TLSVersion[highest])


@pytest.mark.parametrize("spec", ["TLSv9", ">=TLSv1.3:!TLSv1.3", "SSLv3"])
def test_protocol_lists_refused(spec: str) -> None:
    with pytest.raises(ValueError):
        tls.protocol_range(spec)


CERT = {"subject": ((("commonName", "cn.example"),),),
        "subjectAltName": (("DNS", "mx1.example.com"), ("DNS", "*.wild.example.com"),
                           ("IP Address", "192.0.2.1"))}


@pytest.mark.parametrize("patterns, hostname, nexthop, ok", [
    (("hostname",), "mx1.example.com", "example.com", True),
    (("hostname",), "MX1.Example.COM", "example.com", True),
    (("hostname",), "mx2.example.com", "example.com", False),
    (("nexthop",), "mx2.example.com", "mx1.example.com", True),
    (("nexthop", "dot-nexthop"), "mx2.example.com", "example.com", True),
    (("dot-nexthop",), "x", "wild.example.com", True),   # *.wild.example.com
    (("hostname",), "a.wild.example.com", "", True),
    (("hostname",), "a.b.wild.example.com", "", False),  # one label only
    (("cn.example",), "x", "y", False),                  # CN is not used beside SANs
    (("192.0.2.1",), "192.0.2.1", "", False),           # names only
    ((".example.com",), "x", "y", True),
])
def test_certificate_name_matching(patterns, hostname, nexthop, ok) -> None:  # type: ignore[no-untyped-def]
    policy = tls.Policy("secure", patterns)
    assert policy.matches(CERT, hostname, nexthop) is ok


def _client_tls(entries: str) -> tls.ClientTls:
    return tls.ClientTls("smtp", "may", ("hostname",), ("nexthop", "dot-nexthop"),
                         ">=TLSv1", ">=TLSv1", "medium", "medium", "", "", 0,
                         Maps(None, None, [f"inline:{{ {entries} }}"]))


def test_policy_lookup_order() -> None:
    client_tls = _client_tls("{example.com = encrypt}, {.example.com = secure match=x.example}, "
                             "{[relay.example]:587 = none}, {.relay.example = encrypt}")
    assert client_tls.policy("example.com").level == "encrypt"
    sub = client_tls.policy("a.b.example.com")
    assert (sub.level, sub.matches_wanted) == ("secure", ("x.example",))
    assert client_tls.policy("[relay.example]:587").level == "none"
    # an explicit [host]:port nexthop is looked up verbatim, without parent domains
    assert client_tls.policy("[mx.relay.example]:25").level == "may"
    other = client_tls.policy("other.example")
    assert (other.level, other.protocols, other.grade) == ("may", ">=TLSv1", "medium")


@pytest.mark.parametrize("entry", ["bogus", "verify match=", "may match=x", "encrypt foo=bar",
                                   "encrypt protocols=TLSv9", "encrypt ciphers=null",
                                   "encrypt protocols=TLSv1.2 protocols=TLSv1.3",
                                   "fingerprint match=AA:BB", "encrypt exclude=!RC4",
                                   "encrypt exclude=a exclude=b"])
def test_bad_policy_entries_defer(entry: str) -> None:
    with pytest.raises(tls.PolicyError) as caught:
        _client_tls(f"{{bad.example = {entry}}}").policy("bad.example")
    assert (caught.value.text, caught.value.dsn) == ("client TLS configuration problem", "4.7.5")


class _RefusingStarttls(SMTP):
    async def smtp_STARTTLS(self, arg: str) -> None:
        await self.push("454 4.7.0 TLS not available due to local problem")


class _RefusingController(Controller):
    def factory(self) -> SMTP:
        return _RefusingStarttls(self.handler, **self.SMTP_kwargs)


def _starttls_peer(context: ssl.SSLContext, refusing: bool) -> Controller:
    kind = _RefusingController if refusing else Controller
    peer = kind(Recorder(), hostname="127.0.0.1", port=free_port(), tls_context=context)
    peer.start()
    return peer


def test_starttls_refused_or_failing(new_instance, pki) -> None:  # type: ignore[no-untyped-def]
    """Servers that refuse STARTTLS, and servers whose handshake fails (they speak TLSv1.3
    only; the policy allows up to TLSv1.2): at level may the mail goes in plaintext, at
    encrypt it waits with Postfix's reasons. After a failed handshake at may, as Debian's
    Postfix 3.7, the first attempt waits too, and a later one (the message waited
    minimal_backoff_time) goes in plaintext on a new connection."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(pki.signed[1]), str(pki.signed[0]))
    strict = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    strict.load_cert_chain(str(pki.signed[1]), str(pki.signed[0]))
    strict.minimum_version = ssl.TLSVersion.TLSv1_3
    # name: (peer, policy)
    cases = {"r-enc": (_starttls_peer(context, True), "encrypt"),
             "r-may": (_starttls_peer(context, True), "may"),
             "s-enc": (_starttls_peer(strict, False), "encrypt protocols=<=TLSv1.2"),
             "s-may": (_starttls_peer(strict, False), "may protocols=<=TLSv1.2")}
    try:
        policies = ", ".join(f"{{[127.0.0.1]:{peer.port} = {policy}}}"
                             for peer, policy in cases.values())
        routes = ", ".join(f"{name}.example=smtp:[127.0.0.1]:{peer.port}"
                           for name, (peer, _) in cases.items())
        inst = instance_with_ca(new_instance, pki, smtp_tls_policy_maps=f"inline:{{ {policies} }}",
                                transport_maps=f"inline:{{ {routes} }}",
                                minimal_backoff_time="2s", maximal_backoff_time="4s",
                                queue_run_delay="1s")
        inst.set(smtp_tls_loglevel="0")
        inst.start()
        queue_id = inst.send(LOCAL, [f"x@{name}.example" for name in cases],
                             b"Subject: tls?\r\n\r\nbody\r\n")
        inst.wait_log(rf"{queue_id}: to=<x@r-enc\.example>, .*dsn=4\.7\.0, status=deferred "
                      rf"\(TLS is required, but host {ADDR} refused to start TLS: 454 4\.7\.0 "
                      rf"TLS not available due to local problem\)")
        inst.wait_log(rf"{queue_id}: to=<x@r-may\.example>, .*status=sent")
        inst.wait_log(rf"{queue_id}: to=<x@s-enc\.example>, relay=\S+:\d+, .*dsn=4\.7\.5, "
                      rf"status=deferred \(Cannot start TLS: handshake failure\)")
        s_enc = cases["s-enc"][0].port  # the peer closes: as Postfix, at any log level
        inst.wait_log(rf"postfix/smtp\[\d+\]: SSL_connect error to {ADDR}:{s_enc}: lost connection$")
        inst.wait_log(rf"{queue_id}: to=<x@s-may\.example>, .*dsn=4\.7\.5, "
                      rf"status=deferred \(Cannot start TLS: handshake failure\)")
        inst.wait_log(rf"postfix/smtp\[\d+\]: {queue_id}: Cannot start TLS: handshake failure$")
        inst.wait_log(rf"{queue_id}: to=<x@s-may\.example>, .*status=sent")
        over_tls = {name: peer.handler.over_tls for name, (peer, _) in cases.items()}
        assert over_tls == {"r-enc": [], "r-may": [False], "s-enc": [], "s-may": [False]}
    finally:
        for peer, _ in cases.values():
            peer.stop()


STARTTLS_EHLO = EHLO.replace(b"250 8BITMIME", b"250-8BITMIME\r\n250 STARTTLS")


def test_a_stalled_handshake_ends_at_smtp_starttls_timeout(new_instance) -> None:  # type: ignore[no-untyped-def]
    """A server (SMTP, and LMTP) that answers STARTTLS and then never answers the
    handshake: the handshake ends after smtp_starttls_timeout (lmtp_starttls_timeout), not
    after the helo timeout, with Postfix's "SSL_connect error ...: Connection timed out"
    (at smtp_tls_loglevel 0 too) and the mail waits, as Debian's Postfix 3.7 does."""
    stall = b"220 2.0.0 Ready to start TLS\r\n" + STALL
    with ScriptedServer(ehlo=STARTTLS_EHLO, starttls=stall) as smtp, \
            ScriptedServer(ehlo=STARTTLS_EHLO, starttls=stall) as lmtp:
        inst: Instance = new_instance()
        inst.set(smtp_tls_security_level="encrypt", lmtp_tls_security_level="encrypt",
                 smtp_starttls_timeout="2s", lmtp_starttls_timeout="2s",
                 smtp_helo_timeout="120s", lmtp_lhlo_timeout="120s",
                 transport_maps=f"inline:{{ smtp.example=smtp:[127.0.0.1]:{smtp.port}, "
                                f"lmtp.example=lmtp:inet:127.0.0.1:{lmtp.port} }}")
        inst.start()
        queue_id = inst.send(LOCAL, ["x@smtp.example", "x@lmtp.example"],
                             b"Subject: stalled\r\n\r\nbody\r\n")
        for name, server in (("smtp", smtp), ("lmtp", lmtp)):
            inst.wait_log(rf"postfix/{name}\[\d+\]: SSL_connect error to {ADDR}:{server.port}: "
                          r"Connection timed out", timeout=20)
            inst.wait_log(rf"{queue_id}: to=<x@{name}\.example>, relay={ADDR}:{server.port}, "
                          r".*dsn=4\.7\.5, status=deferred \(Cannot start TLS: handshake "
                          r"failure\)", timeout=20)
            assert not any(line.startswith(b"MAIL") for line in server.received)


class _SniPeer:
    """A STARTTLS peer that records the server name each handshake asked for (None: no
    SNI), with Python's sni_callback."""

    def __init__(self, pki: Pki) -> None:
        self.names: list[str | None] = []
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(pki.signed[1]), str(pki.signed[0]))
        context.sni_callback = lambda _sock, name, _context: self.names.append(name)  # type: ignore[assignment, func-returns-value]
        self.controller = _starttls_peer(context, refusing=False)
        self.port = self.controller.port


def test_sni_only_when_smtp_tls_servername_asks(new_instance, pki) -> None:  # type: ignore[no-untyped-def]
    """As Postfix: no SNI by default; smtp_tls_servername = hostname sends the server's
    name, a policy entry's servername= its name; a name that is not a hostname is a
    configuration problem (4.7.5) with Postfix's warning."""
    peers = {name: _SniPeer(pki) for name in ("none", "host", "table", "bad")}
    try:
        inst = instance_with_ca(
            new_instance, pki,
            smtp_tls_security_level="may",
            smtp_tls_policy_maps=f"inline:{{ {{[localhost]:{peers['table'].port} = may "
                                 f"servername=sni.example}} }}",
            transport_maps="inline:{ " + ", ".join([
                f"none.example=native:[localhost]:{peers['none'].port}",
                f"host.example=byname:[localhost]:{peers['host'].port}",
                f"table.example=native:[localhost]:{peers['table'].port}",
                f"bad.example=badname:[localhost]:{peers['bad'].port}"]) + " }")
        with open(inst.config_dir / "master.cf", "a") as f:  # localhost from /etc/hosts
            f.write("native unix - - n - - smtp -o smtp_host_lookup=native\n"
                    "byname unix - - n - - smtp -o smtp_host_lookup=native "
                    "-o smtp_tls_servername=hostname\n"
                    "badname unix - - n - - smtp -o smtp_host_lookup=native "
                    "-o smtp_tls_servername=-bad-\n")
        inst.start()
        queue_id = inst.send(LOCAL, [f"x@{name}.example" for name in peers],
                             b"Subject: sni\r\n\r\nbody\r\n")
        for name in ("none", "host", "table"):
            inst.wait_log(rf"{queue_id}: to=<x@{name}\.example>, .*status=sent")
        inst.wait_log(r'postfix/smtp\[\d+\]: warning: "smtp_tls_servername = -bad-" '
                      r"specifies an invalid hostname")
        inst.wait_log(rf"{queue_id}: to=<x@bad\.example>, .*dsn=4\.7\.5, status=deferred "
                      r"\(client TLS configuration problem\)")
        assert {name: peer.names for name, peer in peers.items()} == {
            "none": [None], "host": ["localhost"], "table": ["sni.example"], "bad": []}
    finally:
        for peer in peers.values():
            peer.controller.stop()


@pytest.mark.parametrize(("servername", "sni"), [
    ("", None), ("hostname", "mx.example.com"), ("nexthop", "example.com"),
    ("other.example", "other.example"), ("b\u00fccher.example", "xn--bcher-kva.example"),
])
def test_sni_name(servername: str, sni: str | None) -> None:
    assert tls.Policy("may", servername=servername).sni("mx.example.com", "example.com") == sni


@pytest.mark.parametrize("entry", ["may servername=a servername=b", "may servername=-x-"])
def test_bad_servername_entries(entry: str) -> None:
    with pytest.raises(tls.PolicyError):
        _client_tls(f"{{example.com = {entry}}}").policy("example.com")


class _DropsTls:
    """A handler that hangs up at MAIL FROM over TLS, and takes mail in plaintext."""

    def __init__(self) -> None:
        self.over_tls: list[bool] = []

    async def handle_MAIL(self, server, session, envelope, address, options) -> str:  # type: ignore[no-untyped-def]
        if session.ssl is not None:
            server.transport.close()
            return "421 4.3.2 bye"
        envelope.mail_from = address
        return "250 2.1.0 Ok"

    async def handle_DATA(self, server, session, envelope) -> str:  # type: ignore[no-untyped-def]
        self.over_tls.append(session.ssl is not None)
        return "250 2.0.0 Ok: queued as DROPPER"


def test_a_tls_session_lost_at_may_goes_plaintext_on_a_later_attempt(new_instance, pki) -> None:  # type: ignore[no-untyped-def]
    """A server that hangs up after the TLS handshake: at level may the first attempt
    waits, and a later one (the message waited minimal_backoff_time) logs the loss and
    goes again in plaintext to the same server, as Debian's Postfix 3.7 does."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(pki.signed[1]), str(pki.signed[0]))
    handler = _DropsTls()
    peer = Controller(handler, hostname="127.0.0.1", port=free_port(), tls_context=context)
    peer.start()
    try:
        inst: Instance = new_instance()
        inst.set(smtp_tls_security_level="may", minimal_backoff_time="2s",
                 maximal_backoff_time="4s", queue_run_delay="1s",
                 transport_maps=f"inline:{{ drop.example=smtp:[127.0.0.1]:{peer.port} }}")
        inst.start()
        queue_id = inst.send(LOCAL, "x@drop.example", b"Subject: drop\r\n\r\nbody\r\n")
        lost = rf"lost connection with {ADDR} while sending MAIL FROM"
        inst.wait_log(rf"{queue_id}: to=<x@drop\.example>, .*dsn=4\.4\.2, status=deferred "
                      rf"\({lost}")
        inst.wait_log(rf"postfix/smtp\[\d+\]: {queue_id}: {lost}")
        inst.wait_log(rf"{queue_id}: to=<x@drop\.example>, .*status=sent \(250 2\.0\.0 Ok: "
                      r"queued as DROPPER\)")
        assert handler.over_tls == [False]
    finally:
        peer.stop()
