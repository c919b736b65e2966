"""cleanup rewrites address headers in the local context only: a local submission
(sendmail -t) arrives with its unqualified header addresses qualified with $myorigin; an SMTP
client outside local_header_rewrite_clients (here: empty) gets its headers through untouched
(remote_header_rewrite_domain is empty)."""

from __future__ import annotations

import pytest
from harness import ME, Instance, wait_until

pytestmark = pytest.mark.root


def _find(inst: Instance, subject: bytes) -> bytes:
    def hit() -> bytes:
        for m in inst.maildir_messages():
            if b"\nSubject: " + subject + b"\n" in m:
                return m
        return b""

    return wait_until(hit, 60, what=f"message {subject!r} in the Maildir")


def _header_block(msg: bytes) -> list[bytes]:
    return msg.split(b"\n\n", 1)[0].split(b"\n")


def test_local_submission_headers_are_qualified(new_instance) -> None:  # type: ignore[no-untyped-def]
    inst: Instance = new_instance(maildir=True)
    origin = inst.tool("postconf", "-hx", "myorigin", check=True).stdout.strip()
    assert origin
    inst.start()
    r = inst.tool("sendmail", "-t", input=(
        f"From: Someone <someone>\nTo: {ME}\nCc: \"Team, Local\" <{ME}> (a comment)\n"
        "Subject: local-headers\n\nbody\n"))
    assert r.returncode == 0, r.stderr
    headers = _header_block(_find(inst, b"local-headers"))
    assert f"From: Someone <someone@{origin}>".encode() in headers
    assert f"To: {ME}@{origin}".encode() in headers
    assert f'Cc: "Team, Local" <{ME}@{origin}>(a comment)'.encode() in headers


def test_smtp_client_outside_local_header_rewrite_clients_is_untouched(new_instance) -> None:  # type: ignore[no-untyped-def]
    inst: Instance = new_instance(maildir=True, settings={"local_header_rewrite_clients": ""})
    origin = inst.tool("postconf", "-hx", "myorigin", check=True).stdout.strip()
    inst.start()
    inst.send("sender@example.org", f"{ME}@{origin}",
              f"From: Someone <someone>\nTo: {ME}, Other <other>\nSubject: remote-headers\n\nx\n")
    headers = _header_block(_find(inst, b"remote-headers"))
    assert b"From: Someone <someone>" in headers
    assert f"To: {ME}, Other <other>".encode() in headers


def test_smtp_client_in_local_header_rewrite_clients_is_rewritten(new_instance) -> None:  # type: ignore[no-untyped-def]
    # the default, permit_inet_interfaces: the client connects to our own 127.0.0.1
    inst: Instance = new_instance(maildir=True)
    origin = inst.tool("postconf", "-hx", "myorigin", check=True).stdout.strip()
    inst.start()
    inst.send("sender@example.org", f"{ME}@{origin}",
              f"From: Someone <someone>\nTo: {ME}\nSubject: local-client\n\nx\n")
    headers = _header_block(_find(inst, b"local-client"))
    assert f"From: Someone <someone@{origin}>".encode() in headers
    assert f"To: {ME}@{origin}".encode() in headers
