"""Debian's Postfix as the receiving MTA (tests/postfix_peer.py): relayhost delivery with
the envelope, an 8-bit body and 8-bit headers intact, several recipients in one
transaction, several messages over one cached connection, and the null sender relayed.

Over STARTTLS, at security level secure: the certificate from the test's throw-away CA
is verified. Postfix's master needs root: skipped otherwise (CI runs as root).
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from conftest import require_tool
from harness import IS_ROOT, Instance, free_port, wait_until
from postfix_peer import PostfixPeer
from test_e2e_outbound_tls import Pki

pytestmark = pytest.mark.skipif(not IS_ROOT, reason="Postfix's master needs root")

SENDER = "alice@example.org"
BODY_8BIT = "Grüße aus Köln\r\n.leading dot\r\n".encode()


@pytest.fixture
def postfix_peer() -> Iterator[PostfixPeer]:
    require_tool("/usr/sbin/postfix")
    peer = PostfixPeer(free_port())
    peer.start()
    yield peer
    peer.stop()


def _by_recipient(messages: list[bytes]) -> dict[str, bytes]:
    out = {}
    for m in messages:
        found = re.search(rb"^Delivered-To: (\S+)\n", m, re.M)
        assert found, m[:300]
        out[found.group(1).decode()] = m
    return out


def test_relayhost_delivery_to_debian_postfix(new_instance, postfix_peer) -> None:  # type: ignore[no-untyped-def]
    peer = postfix_peer
    probes = len(_connects(peer))  # the fixture's own (PostfixPeer.start)
    inst: Instance = new_instance()
    inst.set(relayhost=f"[127.0.0.1]:{peer.port}", smtp_connection_cache_time_limit="60s")
    inst.start()
    relay = rf"relay=127\.0\.0\.1\[127\.0\.0\.1\]:{peer.port}"
    rcpts = ["a@remote.example", "b@remote.example", "c@other.example"]
    message = (b"From: Alice <alice@example.org>\r\nSubject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\n"
               b"X-Raw: \xc3\xa4\r\n\r\n" + BODY_8BIT)
    with inst.smtp() as client:
        client.ehlo()
        client.sendmail(SENDER, rcpts, message, mail_options=["BODY=8BITMIME"])
    for r in rcpts:
        inst.wait_log(rf"to=<{re.escape(r)}>, {relay}, .*dsn=2\.0\.0, status=sent \(250 2\.0\.0 "
                      rf"Ok: queued as \w+\)")
    # one transaction: Postfix queued one message with three recipients
    peer.wait_log(rf"postfix/qmgr\[\d+\]: \w+: from=<{SENDER}>, size=\d+, nrcpt=3 "
                  r"\(queue active\)")
    got = _by_recipient(wait_until(lambda: peer.messages() if len(peer.messages()) >= 3 else [],
                                   60, what="three messages in Postfix's Maildir"))
    assert sorted(got) == sorted(rcpts)
    for m in got.values():
        head, _, body = m.partition(b"\n\n")
        assert head.startswith(f"Return-Path: <{SENDER}>\n".encode())
        assert b"\nX-Raw: \xc3\xa4\n" in head  # 8-bit header intact
        assert b"\nSubject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\n" in head
        assert body == BODY_8BIT.replace(b"\r\n", b"\n")

    # several messages over the cached connection, and the null sender relayed
    for i in range(3):
        queue_id = inst.send(SENDER if i < 2 else "", f"n{i}@remote.example",
                             f"Subject: {i}\r\n\r\nm{i}\r\n")
        inst.wait_log(rf"{queue_id}: to=<n{i}@remote\.example>, {relay}, "
                      rf"conn_use={i + 2}, delay=.*status=sent")
    got = _by_recipient(wait_until(lambda: peer.messages() if len(peer.messages()) >= 6 else [],
                                   60, what="six messages in Postfix's Maildir"))
    assert got["n2@remote.example"].startswith(b"Return-Path: <>\n")
    assert got["n0@remote.example"].startswith(f"Return-Path: <{SENDER}>\n".encode())
    assert len(_connects(peer)) == probes + 1  # one connection carried all four


def _connects(peer: PostfixPeer) -> list[str]:
    return re.findall(r"postfix/smtpd\[\d+\]: connect from", peer.log())


def test_secure_tls_to_debian_postfix(new_instance, tmp_path) -> None:  # type: ignore[no-untyped-def]
    require_tool("/usr/sbin/postfix")
    pki = Pki(tmp_path)
    peer = PostfixPeer(free_port(), tls_key_cert=pki.signed)
    peer.start()
    try:
        inst: Instance = new_instance()
        ca = inst.write("etc/tls/ca.pem", pki.ca.read_text())
        nexthop = f"[127.0.0.1]:{peer.port}"
        inst.set(relayhost=nexthop, smtp_tls_CAfile=str(ca), smtp_tls_loglevel="1",
                 smtp_tls_policy_maps=f"inline:{{ {{{nexthop} = secure match=peer.example}} }}")
        inst.start()
        queue_id = inst.send(SENDER, "t@remote.example", b"Subject: tls\r\n\r\nsecret\r\n")
        inst.wait_log(rf"postfix/smtp\[\d+\]: Verified TLS connection established to "
                      rf"127\.0\.0\.1\[127\.0\.0\.1\]:{peer.port}: TLSv1\.[23] with cipher \S+ "
                      rf"\(\d+/\d+ bits\)")
        inst.wait_log(rf"{queue_id}: to=<t@remote\.example>, .*status=sent")
        peer.wait_log(r"postfix/smtpd\[\d+\]: Anonymous TLS connection established from "
                      r"\S+\[127\.0\.0\.1\]: TLSv1\.[23]")
        (message,) = wait_until(peer.messages, 60, what="the message in Postfix's Maildir")
        assert message.endswith(b"\n\nsecret\n")
    finally:
        peer.stop()
