"""smtpd SMTP AUTH at its edges, against a real Dovecot auth server (see test_smtpd_sasl),
or, where no real Dovecot misbehaves as needed, a small auth server written here.

Root only: Dovecot's master runs as root.
"""

from __future__ import annotations

import base64
import re
import smtplib
import socketserver
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import Instance, free_port, listening, wait_until
from smtpd_helpers import RawSMTP
from test_smtpd_sasl import PASSWORD, DovecotAuth
from test_smtpd_tls import client_context, make_cert

pytestmark = pytest.mark.root

PLAIN = base64.b64encode(f"\0alice\0{PASSWORD}".encode()).decode()
WRONG = base64.b64encode(b"\0alice\0guess").decode()


def sasl_instance(new_instance, tmp_path: Path, **settings: str) -> Instance:  # type: ignore[no-untyped-def]
    """AUTH through Dovecot at private/auth (not started), STARTTLS offered; the test
    client is not in mynetworks, so only a login lets it relay."""
    cert, key = make_cert(tmp_path)
    inst: Instance = new_instance(maildir=True)
    inst.set(**{"smtpd_tls_cert_file": str(cert), "smtpd_tls_key_file": str(key),
                "smtpd_tls_security_level": "may", "smtpd_sasl_auth_enable": "yes",
                "smtpd_sasl_type": "dovecot", "smtpd_sasl_path": "private/auth",
                "mynetworks": "192.0.2.0/24", **settings})
    return inst


@pytest.fixture
def with_dovecot(new_instance, tmp_path: Path) -> Iterator[Instance]:  # type: ignore[no-untyped-def]
    """A started sasl_instance with Dovecot's auth server up."""
    inst = sasl_instance(new_instance, tmp_path)
    inst.start()
    dovecot = DovecotAuth(inst.queue_dir / "private" / "auth")
    try:
        yield inst
    finally:
        inst.stop()
        dovecot.stop()


def test_starttls_forgets_a_plaintext_login(with_dovecot: Instance) -> None:
    """RFC 3207 4.2 and Postfix's smtpd_sasl_auth_reset: after STARTTLS the client is
    no longer logged in (it may log in again), and cannot relay until it does."""
    with smtplib.SMTP("127.0.0.1", with_dovecot.port, timeout=30) as c:
        c.ehlo("mua.example")
        assert c.docmd("AUTH", f"PLAIN {PLAIN}") == (235, b"2.7.0 Authentication successful")
        c.starttls(context=client_context())
        c.ehlo("mua.example")
        assert c.mail("alice@example.org") == (250, b"2.1.0 Ok")
        code, text = c.rcpt("friend@remote.example")
        assert code in (454, 554) and b"Relay access denied" in text, (code, text)
        c.rset()
        assert c.docmd("AUTH", f"PLAIN {PLAIN}") == (235, b"2.7.0 Authentication successful")
        assert c.mail("alice@example.org") == (250, b"2.1.0 Ok")
        assert c.rcpt("friend@remote.example") == (250, b"2.1.5 Ok")


def test_mail_may_follow_auth_plain_in_one_write(with_dovecot: Instance) -> None:
    """RFC 4954 section 4: AUTH PLAIN with its initial response need not end a pipelined
    group; with smtpd_forbid_unauth_pipelining (yes) the session goes on, as Postfix's."""
    with RawSMTP(with_dovecot.port) as c:
        assert c.reply().startswith(b"220 ")
        c.send(b"EHLO mua.example\r\n")
        assert c.reply().startswith(b"250 ")
        c.send(f"AUTH PLAIN {PLAIN}\r\nMAIL FROM:<alice@example.org>\r\n"
               "RCPT TO:<friend@remote.example>\r\nQUIT\r\n".encode())
        assert c.reply() == b"235 2.7.0 Authentication successful\r\n"
        assert c.reply() == b"250 2.1.0 Ok\r\n"
        assert c.reply() == b"250 2.1.5 Ok\r\n"
        assert c.reply() == b"221 2.0.0 Bye\r\n"
    assert "improper command pipelining" not in with_dovecot.log()


def test_an_over_long_response_is_refused_not_cut(with_dovecot: Instance) -> None:
    """Postfix's smtpd_chat_query_limit: a response over smtpd_sasl_response_limit ends
    the AUTH with 500 5.5.6 (it is not cut short and passed on to Dovecot)."""
    with smtplib.SMTP("127.0.0.1", with_dovecot.port, timeout=30) as c:
        c.ehlo("mua.example")
        assert c.docmd("AUTH", "LOGIN")[0] == 334
        assert c.docmd("QUFB" * 4000) == (500, b"5.5.6 SASL response limit exceeded")
        assert c.noop() == (250, b"2.0.0 Ok")  # the session goes on, in step
        assert c.docmd("AUTH", f"PLAIN {PLAIN}") == (235, b"2.7.0 Authentication successful")
    with_dovecot.wait_log(r"warning: localhost\[127\.0\.0\.1\]: request longer than 12288: "
                          r"(QUFB){7}QU\.\.\.$")


def test_a_down_auth_server_is_a_temporary_failure(new_instance, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """With Dovecot down, AUTH gets 454 (never a permanent 535), with Postfix's warning;
    once Dovecot is up, the same session logs in. An unknown mechanism is named in
    the 535 reply, as the client spelled it."""
    inst = sasl_instance(new_instance, tmp_path)
    inst.start()
    dovecot = None
    try:
        with smtplib.SMTP("127.0.0.1", inst.port, timeout=30) as c:
            c.ehlo("mua.example")
            assert not c.has_extn("auth")
            assert c.docmd("AUTH", f"PLAIN {PLAIN}") == (
                454, b"4.7.0 Temporary authentication failure: "
                     b"Can't connect to authentication server")
            dovecot = DovecotAuth(inst.queue_dir / "private" / "auth")
            assert c.docmd("AUTH", "cram-md5") == (
                535, b"5.7.8 Error: authentication failed: "
                     b"Invalid authentication mechanism: 'cram-md5'")
            assert c.docmd("AUTH", f"plain {PLAIN}") == (235, b"2.7.0 Authentication successful")
            assert c.mail("alice@example.org") == (250, b"2.1.0 Ok")
            assert c.rcpt("friend@remote.example") == (250, b"2.1.5 Ok")
        inst.wait_log(r"warning: SASL: Connect to Dovecot auth socket "
                      rf"'{re.escape(str(inst.queue_dir))}/private/auth' failed: "
                      r"No such file or directory")
        inst.wait_log(r"warning: localhost\[127\.0\.0\.1\]: SASL PLAIN authentication failed: "
                      r"Can't connect to authentication server, sasl_username=\(unavailable\)")
        inst.wait_log(r"warning: localhost\[127\.0\.0\.1\]: SASL cram-md5 authentication "
                      r"failed: Invalid authentication mechanism: 'cram-md5'")
    finally:
        inst.stop()
        if dovecot is not None:
            dovecot.stop()


def test_a_slow_auth_server_gets_postfix_deadline(new_instance, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Dovecot answers a failed login only after auth_failure_delay (here 20s): smtpd
    gives up after Postfix's 10 seconds with 454, not after ipc_timeout (an hour)."""
    inst = sasl_instance(new_instance, tmp_path)
    inst.start()
    dovecot = DovecotAuth(inst.queue_dir / "private" / "auth", extra="auth_failure_delay = 20 secs")
    try:
        with smtplib.SMTP("127.0.0.1", inst.port, timeout=60) as c:
            c.ehlo("mua.example")
            assert c.docmd("AUTH", f"PLAIN {WRONG}") == (
                454, b"4.7.0 Temporary authentication failure: "
                     b"Connection lost to authentication server")
            assert c.docmd("AUTH", f"PLAIN {PLAIN}") == (235, b"2.7.0 Authentication successful")
    finally:
        inst.stop()
        dovecot.stop()


class NamelessOK(socketserver.StreamRequestHandler):
    """An auth server that breaks the protocol: OK without user=."""

    def handle(self) -> None:
        self.wfile.write(b"VERSION\t1\t2\nMECH\tPLAIN\tplaintext\nSPID\t1\nCUID\t1\n"
                         b"COOKIE\t00\nDONE\n")
        for line in self.rfile:
            words = line.decode().rstrip("\n").split("\t")
            if words[0] == "AUTH":
                self.wfile.write(f"OK\t{words[1]}\n".encode())


def test_an_ok_without_a_user_name_is_no_login(new_instance, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """As Postfix's xsasl_dovecot: "missing Dovecot server OK username field", and 535
    Authentication backend error, never 235 for nobody."""
    inst = sasl_instance(new_instance, tmp_path)
    inst.start()
    path = inst.queue_dir / "private" / "auth"
    server = socketserver.ThreadingUnixStreamServer(str(path), NamelessOK)
    server.daemon_threads = True
    path.chmod(0o666)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with smtplib.SMTP("127.0.0.1", inst.port, timeout=30) as c:
            c.ehlo("mua.example")
            assert c.docmd("AUTH", f"PLAIN {PLAIN}") == (
                535, b"5.7.8 Error: authentication failed: Authentication backend error")
            assert c.mail("alice@example.org") == (250, b"2.1.0 Ok")
            assert b"Relay access denied" in c.rcpt("friend@remote.example")[1]
        inst.wait_log(r"warning: missing Dovecot server OK username field")
    finally:
        inst.stop()
        server.shutdown()
        server.server_close()


def test_smtpd_sasl_path_inet_reaches_a_tcp_auth_listener(new_instance, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """smtpd_sasl_path = inet:host:port, as Postfix's Dovecot client takes it: Dovecot's
    auth service on TCP (an inet_listener)."""
    port = free_port()
    inst = sasl_instance(new_instance, tmp_path, smtpd_sasl_path=f"inet:127.0.0.1:{port}")
    inst.start()
    dovecot = DovecotAuth(inst.queue_dir / "private" / "auth", extra=(
        f"service auth {{\n  inet_listener auth-tcp {{\n    address = 127.0.0.1\n"
        f"    port = {port}\n  }}\n}}"))
    try:
        wait_until(lambda: listening(port), 30, what="Dovecot's auth TCP listener")
        with smtplib.SMTP("127.0.0.1", inst.port, timeout=30) as c:
            c.ehlo("mua.example")
            assert c.esmtp_features["auth"].split() == ["PLAIN", "LOGIN"]
            assert c.docmd("AUTH", f"PLAIN {PLAIN}") == (235, b"2.7.0 Authentication successful")
    finally:
        inst.stop()
        dovecot.stop()
