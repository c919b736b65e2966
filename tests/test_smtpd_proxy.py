"""smtpd behind a real HAProxy (Debian's haproxy) with the PROXY protocol, v1 and v2:
the client smtpd logs, checks and names in Received: is the one HAProxy reports.

The client connects from 127.0.0.2 (a loopback address of its own) to HAProxy,
which connects to smtpd from 127.0.0.1. mynetworks holds only 127.0.0.2, so
relaying works only if smtpd's restrictions see the original client.
"""

from __future__ import annotations

import asyncio
import smtplib
import socket
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import require_tool
from harness import ME, Instance, free_port, listening, stop_process, wait_until
from smtpd_helpers import smtpd_server

CLIENT = "127.0.0.2"


class HAProxy:
    """HAProxy in front of backend_port: v2_port sends PROXY v2, v1_port v1. With
    dual_stack it listens on one IPv6 socket for IPv4 too, so that an IPv4 client is
    ::ffff:a.b.c.d in its headers."""

    def __init__(self, directory: Path, backend_port: int, dual_stack: bool = False) -> None:
        self.v2_port, self.v1_port = free_port(), free_port()
        bind = ":::{} v4v6" if dual_stack else "127.0.0.1:{}"
        cfg = directory / "haproxy.cfg"
        cfg.write_text(f"""
defaults
    mode tcp
    timeout connect 10s
    timeout client 60s
    timeout server 60s

frontend smtp_v2
    bind {bind.format(self.v2_port)}
    default_backend smtpd_v2

frontend smtp_v1
    bind {bind.format(self.v1_port)}
    default_backend smtpd_v1

backend smtpd_v2
    server s1 127.0.0.1:{backend_port} send-proxy-v2

backend smtpd_v1
    server s1 127.0.0.1:{backend_port} send-proxy
""")
        self.proc = subprocess.Popen([require_tool("/usr/sbin/haproxy"), "-f", str(cfg), "-db"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: listening(self.v2_port) and listening(self.v1_port), 30,
                   what="haproxy's listeners")

    def stop(self) -> None:
        stop_process(self.proc)


@pytest.fixture
def proxied(new_instance, tmp_path: Path) -> Iterator[tuple[Instance, HAProxy]]:  # type: ignore[no-untyped-def]
    inst: Instance = new_instance(maildir=True)
    inst.set(smtpd_upstream_proxy_protocol="haproxy", mynetworks=f"{CLIENT}/32")
    inst.start(wait_smtp=False)
    wait_until(lambda: listening(inst.port), 30, what="smtpd's port")
    haproxy = HAProxy(tmp_path, inst.port)
    try:
        yield inst, haproxy
    finally:
        haproxy.stop()


@pytest.mark.parametrize("version", ["v2", "v1"])
def test_the_original_client_in_log_restrictions_and_received(proxied, version: str) -> None:  # type: ignore[no-untyped-def]
    inst, haproxy = proxied
    port = haproxy.v2_port if version == "v2" else haproxy.v1_port
    with smtplib.SMTP("127.0.0.1", port, source_address=(CLIENT, 0), timeout=30) as c:
        c.ehlo("client.example")
        c.mail("alice@example.org")
        assert c.rcpt("bob@remote.example") == (250, b"2.1.5 Ok")  # mynetworks: relay
        assert c.rcpt(f"{ME}@localhost") == (250, b"2.1.5 Ok")
        c.rset()
        c.sendmail("alice@example.org", [f"{ME}@localhost"], b"Subject: proxied\r\n\r\nbody\r\n")
    (msg,) = inst.wait_maildir(1)
    assert f"Received: from client.example (localhost [{CLIENT}])".encode() in msg
    inst.wait_log(rf"smtpd\[\d+\]: connect from localhost\[{CLIENT}\]")
    inst.wait_log(rf"smtpd\[\d+\]: \w+: client=localhost\[{CLIENT}\]")
    assert "client=localhost[127.0.0.1]" not in inst.log()


def test_an_ipv4_client_in_ipv6_form_is_the_ipv4_client(new_instance, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """HAProxy on a dual-stack socket names an IPv4 client ::ffff:a.b.c.d; smtpd takes
    it as a.b.c.d, as Postfix does, so that an access table keyed by that address applies
    (it was passed by) and the log names the client as every other line does."""
    inst: Instance = new_instance(maildir=True)
    inst.set(smtpd_upstream_proxy_protocol="haproxy", mynetworks="127.0.0.1/32",
             smtpd_client_restrictions=f"check_client_access inline:{{{CLIENT}=REJECT}}")
    inst.start(wait_smtp=False)
    wait_until(lambda: listening(inst.port), 30, what="smtpd's port")
    haproxy = HAProxy(tmp_path, inst.port, dual_stack=True)
    try:
        for port in (haproxy.v2_port, haproxy.v1_port):
            with smtplib.SMTP("127.0.0.1", port, source_address=(CLIENT, 0), timeout=30) as c:
                c.ehlo("client.example")
                c.mail("alice@example.org")
                assert c.rcpt(f"{ME}@localhost") == (
                    554, f"5.7.1 <localhost[{CLIENT}]>: Client host rejected: Access "
                         "denied".encode())
        inst.wait_log(rf"smtpd\[\d+\]: connect from localhost\[{CLIENT}\]", count=2)
        assert "ffff" not in inst.log()
    finally:
        haproxy.stop()


def test_a_client_gone_before_the_banner_is_a_lost_connection(new_instance) -> None:  # type: ignore[no-untyped-def]
    """A PROXY header, then a reset: the banner is written after the client went away
    (as HAProxy does for a client that connects and leaves at once). That is a lost
    connection, not an internal error with a postmaster notice (which once landed in
    the Maildir of the test above as a second message)."""
    inst: Instance = new_instance(maildir=True)
    inst.set(smtpd_upstream_proxy_protocol="haproxy")
    inst.start(wait_smtp=False)
    wait_until(lambda: listening(inst.port), 30, what="smtpd's port")
    attempts = 20
    for _ in range(attempts):
        with socket.create_connection(("127.0.0.1", inst.port), timeout=30) as s:
            s.sendall(f"PROXY TCP4 {CLIENT} 127.0.0.1 4000 25\r\n".encode())
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    inst.wait_log(rf"smtpd\[\d+\]: disconnect from localhost\[{CLIENT}\]", count=attempts)
    assert "internal error" not in inst.log()
    assert inst.log().count(f"lost connection after CONNECT from localhost[{CLIENT}]") == attempts
    # no notice to postmaster (root's Maildir, or this user's): only the next message comes
    with smtplib.SMTP() as c:
        c.sock = socket.create_connection(("127.0.0.1", inst.port), timeout=30)
        c.sock.sendall(f"PROXY TCP4 {CLIENT} 127.0.0.1 4000 25\r\n".encode())
        assert c.getreply()[0] == 220
        c.sendmail("alice@example.org", [f"{ME}@localhost"], b"Subject: after\r\n\r\nbody\r\n")
    (msg,) = inst.wait_maildir(1)
    assert b"Subject: after" in msg


def test_no_proxy_header_in_time(tmp_path: Path) -> None:
    async def go() -> None:
        async with smtpd_server(tmp_path, smtpd_upstream_proxy_protocol="haproxy",
                                smtpd_upstream_proxy_timeout="1s") as (fake, c, maillog):
            assert await c.reply() == "<EOF>"  # silence: no banner, closed at the deadline
        await asyncio.sleep(0.05)
        assert "warning: haproxy read: timeout error" in maillog.read_text()
    asyncio.run(go())


def test_without_a_proxy_header_the_connection_is_dropped(proxied) -> None:  # type: ignore[no-untyped-def]
    inst, _ = proxied
    with socket.create_connection(("127.0.0.1", inst.port), timeout=30) as s:
        s.sendall(b"EHLO direct.example\r\n")
        assert s.recv(512) == b""  # no banner, no reply: not a PROXY header
    inst.wait_log(r"smtpd\[\d+\]: warning: haproxy read: PROXY unrecognized signature")
    assert "direct.example" not in inst.log()


def test_haproxy_in_front_of_smtps(new_instance, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """smtpd_upstream_proxy_protocol with smtpd_tls_wrappermode: the PROXY header comes in
    plaintext, then the TLS handshake; the client is HAProxy's client."""
    from test_smtpd_tls import client_context, make_cert, smtps_service
    cert, key = make_cert(tmp_path)
    inst: Instance = new_instance(maildir=True)
    inst.set(mynetworks=f"{CLIENT}/32", smtpd_tls_cert_file=str(cert),
             smtpd_tls_key_file=str(key), smtpd_tls_loglevel="1")
    smtps = smtps_service(inst, "smtpd_upstream_proxy_protocol=haproxy")
    inst.start()
    haproxy = HAProxy(tmp_path, smtps)
    try:
        for port in (haproxy.v2_port, haproxy.v1_port):
            with smtplib.SMTP_SSL("127.0.0.1", port, source_address=(CLIENT, 0),
                                  context=client_context(), timeout=30) as c:
                c.ehlo("client.example")
                c.mail("alice@example.org")
                assert c.rcpt("bob@remote.example") == (250, b"2.1.5 Ok")  # mynetworks
                c.rset()
                c.sendmail("alice@example.org", [f"{ME}@localhost"],
                           b"Subject: proxied smtps\r\n\r\nbody\r\n")
        msgs = inst.wait_maildir(2)
        assert all(f"(localhost [{CLIENT}])".encode() in m and b"with ESMTPS id" in m
                   for m in msgs)
        inst.wait_log(rf"postfix/smtps/smtpd\[\d+\]: Anonymous TLS connection established "
                      rf"from localhost\[{CLIENT}\]", count=2)
        # without a PROXY header: dropped before any TLS
        with socket.create_connection(("127.0.0.1", smtps), timeout=30) as s:
            s.sendall(b"\x16\x03\x01\x00\x05hello")
            try:
                assert s.recv(512) == b""
            except ConnectionResetError:  # closed with the hello unread
                pass
        inst.wait_log(r"postfix/smtps/smtpd\[\d+\]: warning: haproxy read: "
                      r"PROXY unrecognized signature")
    finally:
        haproxy.stop()
