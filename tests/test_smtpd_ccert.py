"""smtpd client certificates with real clients (smtplib with a client certificate,
swaks --tls-cert) against a real instance: smtpd_tls_ask_ccert, smtpd_tls_req_ccert,
smtpd_tls_CAfile, the fingerprints (smtpd_tls_fingerprint_digest), check_ccert_access,
permit_tls_clientcerts with relay_clientcerts, permit_tls_all_clientcerts, Postfix's
log lines and Received: comments, and the ccert_*/encryption_* policy attributes.
Certificates are made by openssl in the test: a CA, a client certificate it signed,
self-signed ones."""

from __future__ import annotations

import smtplib
import socket
import ssl
import subprocess
from pathlib import Path

import pytest
from conftest import require_tool
from harness import ME, Instance, free_port
from policy_recorder import PolicyRecorder
from test_smtpd_tls import make_cert, smtps_service

OPENSSL = "openssl"


def _openssl(*args: str, input: bytes | None = None) -> bytes:
    return subprocess.run([require_tool(OPENSSL), *args], check=True, capture_output=True,
                          input=input).stdout


def client_cert(directory: Path, name: str, ca: tuple[Path, Path] | None = None) -> tuple[Path, Path]:
    """A client certificate for CN=name: self-signed, or signed by ca (cert, key)."""
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    if ca is None:
        _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                 "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2",
                 "-subj", f"/CN={name}")
    else:
        csr = directory / f"{name}.csr"
        _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                 "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={name}")
        _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]),
                 "-CAcreateserial", "-out", str(cert), "-days", "2")
    return cert, key


def fingerprints(cert: Path) -> tuple[str, str]:
    """(certificate, public key) SHA-256 fingerprints as Postfix writes them, by openssl."""
    text = _openssl("x509", "-in", str(cert), "-noout", "-fingerprint", "-sha256").decode()
    fpr = text.strip().partition("=")[2]
    pubkey = _openssl("x509", "-in", str(cert), "-noout", "-pubkey")
    der = _openssl("pkey", "-pubin", "-outform", "DER", input=pubkey)
    digest = _openssl("dgst", "-sha256", "-binary", input=der)
    return fpr, digest.hex(":").upper()


def with_cert(cert: tuple[Path, Path] | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if cert is not None:
        ctx.load_cert_chain(str(cert[0]), str(cert[1]))
    return ctx


@pytest.fixture
def certs(tmp_path: Path) -> dict[str, tuple[Path, Path]]:
    ca = tmp_path / "ca.pem", tmp_path / "ca.key"
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca[1]),
             "-out", str(ca[0]), "-days", "2", "-subj", "/CN=Test CA")
    return {"ca": ca, "trusted": client_cert(tmp_path, "trusted.example", ca),
            "listed": client_cert(tmp_path, "listed.example"),
            "blocked": client_cert(tmp_path, "blocked.example")}


def test_client_certificates(new_instance, tmp_path: Path, certs) -> None:  # type: ignore[no-untyped-def]
    server_cert, server_key = make_cert(tmp_path)
    listed_fpr, _ = fingerprints(certs["listed"][0])
    _, blocked_pkey_fpr = fingerprints(certs["blocked"][0])
    trusted_fpr, trusted_pkey_fpr = fingerprints(certs["trusted"][0])
    inst: Instance = new_instance(maildir=True)
    relay = inst.write("etc/relay_clientcerts", f"{listed_fpr} listed.example\n")
    ccert = inst.write("etc/ccert_access", f"{blocked_pkey_fpr} REJECT\n")
    all_port, req_port = free_port(), free_port()
    with PolicyRecorder() as policy:
        inst.set(smtpd_tls_cert_file=str(server_cert), smtpd_tls_key_file=str(server_key),
                 smtpd_tls_security_level="may", smtpd_tls_ask_ccert="yes",
                 smtpd_tls_CAfile=str(certs["ca"][0]), smtpd_tls_loglevel="2",
                 smtpd_tls_received_header="yes", mynetworks="192.0.2.0/24",
                 relay_clientcerts=f"texthash:{relay}",
                 smtpd_relay_restrictions=f"check_ccert_access texthash:{ccert}, "
                 "permit_tls_clientcerts, reject_unauth_destination",
                 smtpd_recipient_restrictions=f"check_policy_service {policy.spec}")
        master_cf = inst.config_dir / "master.cf"
        master_cf.write_text(
            master_cf.read_text()
            + f"127.0.0.1:{all_port} inet n - n - - smtpd\n"
            "  -o smtpd_relay_restrictions=permit_tls_all_clientcerts,"
            "reject_unauth_destination\n"
            f"127.0.0.1:{req_port} inet n - n - - smtpd\n"
            "  -o smtpd_tls_security_level=encrypt -o smtpd_tls_req_ccert=yes "
            "-o smtpd_tls_ask_ccert=no\n")
        smtps_req = smtps_service(inst, "smtpd_tls_req_ccert=yes", "smtpd_tls_ask_ccert=no")
        inst.start()

        # a self-signed certificate that relay_clientcerts lists: relaying, untrusted
        swaks = subprocess.run(
            [require_tool("swaks"), "--server", f"127.0.0.1:{inst.port}", "--tls",
             "--tls-cert", str(certs["listed"][0]), "--tls-key", str(certs["listed"][1]),
             "--from", "a@example.org", "--to", "friend@remote.example",
             "--quit-after", "RCPT"], capture_output=True, text=True, timeout=60)
        assert "<~  250 2.1.5 Ok" in swaks.stdout, swaks.stdout + swaks.stderr
        inst.wait_log(r"Untrusted TLS connection established from localhost\[127\.0\.0\.1\]: "
                      r"TLSv1\.3 with cipher \S+ \(\d+/\d+ bits\)")
        inst.wait_log(rf"localhost\[127\.0\.0\.1\]: subject_CN=listed\.example, "
                      rf"issuer=listed\.example, fingerprint={listed_fpr}, pkey_fingerprint=")
        (request,) = policy.at("RCPT")
        assert request["ccert_fingerprint"] == listed_fpr
        assert request["ccert_subject"] == request["ccert_issuer"] == ""  # not trusted
        assert request["encryption_protocol"] == "TLSv1.3"
        assert request["encryption_cipher"] and int(request["encryption_keysize"]) >= 128

        # a trusted certificate not listed: no relaying here, relaying on permit_tls_all
        with smtplib.SMTP("127.0.0.1", inst.port, timeout=30) as c:
            c.starttls(context=with_cert(certs["trusted"]))
            c.ehlo("client.example")
            c.mail("a@example.org")
            code, text = c.rcpt("friend@remote.example")
            assert code == 554 and b"Relay access denied" in text
            c.rset()
            c.sendmail("a@example.org", [f"{ME}@localhost"], b"Subject: trusted\r\n\r\nhi\r\n")
        request = policy.at("RCPT")[1]
        assert (request["ccert_subject"], request["ccert_issuer"]) == ("trusted.example",
                                                                       "Test+20CA")  # xtext
        assert (request["ccert_fingerprint"], request["ccert_pubkey_fingerprint"]) == (
            trusted_fpr, trusted_pkey_fpr)
        (msg,) = inst.wait_maildir(1)
        assert b'(Client CN "trusted.example", Issuer "Test CA" (verified OK))' in msg
        inst.wait_log(r"Trusted TLS connection established from localhost\[127\.0\.0\.1\]")
        with smtplib.SMTP("127.0.0.1", all_port, timeout=30) as c:
            c.starttls(context=with_cert(certs["trusted"]))
            c.ehlo("client.example")
            c.mail("a@example.org")
            assert c.rcpt("friend@remote.example") == (250, b"2.1.5 Ok")
        # untrusted and not listed: no (a listed one would pass here too, as in Postfix)
        with smtplib.SMTP("127.0.0.1", all_port, timeout=30) as c:
            c.starttls(context=with_cert(certs["blocked"]))
            c.ehlo("client.example")
            c.mail("a@example.org")
            assert c.rcpt("friend@remote.example")[0] == 554

        # check_ccert_access matches the public key fingerprint
        with smtplib.SMTP("127.0.0.1", inst.port, timeout=30) as c:
            c.starttls(context=with_cert(certs["blocked"]))
            c.ehlo("client.example")
            c.mail("a@example.org")
            assert c.rcpt(f"{ME}@localhost") == (
                554, b"5.7.1 <blocked.example>: Client certificate rejected: Access denied")
        inst.wait_log(r"NOQUEUE: reject: RCPT from localhost\[127\.0\.0\.1\]: 554 5\.7\.1 "
                      r"<blocked\.example>: Client certificate rejected: Access denied;")

        # no certificate: anonymous, and Received: says the client sent none
        with smtplib.SMTP("127.0.0.1", inst.port, timeout=30) as c:
            c.starttls(context=with_cert(None))
            c.sendmail("a@example.org", [f"{ME}@localhost"], b"Subject: none\r\n\r\nhi\r\n")
        msgs = inst.wait_maildir(2)
        assert any(b"(Client did not present a certificate)" in m for m in msgs)
        inst.wait_log(r"Anonymous TLS connection established from localhost\[127\.0\.0\.1\]")

        # smtpd_tls_req_ccert at encrypt: a trusted certificate or 421
        for cert, why in ((certs["listed"], b"Client certificate not trusted"),
                          (None, b"No client certificate presented")):
            with smtplib.SMTP("127.0.0.1", req_port, timeout=30) as c:
                c.starttls(context=with_cert(cert))
                assert c.docmd("EHLO", "client.example") == (
                    421, b"4.7.1 " + _hostname(inst) + b" Error: " + why)
            inst.wait_log(r"NOQUEUE: abort: TLS from localhost\[127\.0\.0\.1\]: "
                          + why.decode())
        with smtplib.SMTP("127.0.0.1", req_port, timeout=30) as c:
            c.starttls(context=with_cert(certs["trusted"]))
            c.ehlo("client.example")
            assert c.mail("a@example.org") == (250, b"2.1.0 Ok")
        # smtps requires TLS too: 421 instead of the greeting
        for cert, greeting in ((None, b"421 4.7.1 " + _hostname(inst)
                                + b" Error: No client certificate presented\r\n"),
                               (certs["trusted"], b"220 ")):
            with socket.create_connection(("127.0.0.1", smtps_req), timeout=30) as raw, \
                    with_cert(cert).wrap_socket(raw) as tls:
                assert tls.makefile("rb").readline().startswith(greeting)


def _hostname(inst: Instance) -> bytes:
    return inst.tool("postconf", "-h", "myhostname").stdout.strip().encode()
