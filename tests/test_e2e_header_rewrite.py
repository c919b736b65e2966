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


def _from_header_over_smtp(inst: Instance, subject: str) -> tuple[str, list[bytes]]:
    """Start inst, send it "From: Someone <someone>" over SMTP from 127.0.0.1: ($myorigin,
    the header block as it arrived)."""
    origin = str(inst.tool("postconf", "-hx", "myorigin", check=True).stdout.strip())
    inst.start()
    inst.send("sender@example.org", f"{ME}@{origin}",
              f"From: Someone <someone>\nSubject: {subject}\n\nx\n")
    return origin, _header_block(_find(inst, subject.encode()))


def test_local_header_rewrite_clients_tables_and_invalid_words(new_instance) -> None:  # type: ignore[no-untyped-def]
    # Postfix's smtpd_check_rewrite: a bare type:table (the pop-before-smtp form) looks the
    # client address up; "permit" is no restriction it knows: a warning, and skipped
    inst: Instance = new_instance(maildir=True)
    table = inst.write("etc/rewrite_clients", "127.0.0.1 OK\n")
    inst.set(local_header_rewrite_clients=f"permit, texthash:{table}")
    origin, headers = _from_header_over_smtp(inst, "table-client")
    assert f"From: Someone <someone@{origin}>".encode() in headers
    inst.wait_log(r"warning: parameter local_header_rewrite_clients: invalid request: permit")


def test_local_header_rewrite_clients_only_postfix_words(new_instance) -> None:  # type: ignore[no-untyped-def]
    # "permit" alone does not make every client local, as it would in a restriction list
    inst: Instance = new_instance(maildir=True, settings={"local_header_rewrite_clients": "permit"})
    _, headers = _from_header_over_smtp(inst, "permit-client")
    assert b"From: Someone <someone>" in headers


def test_local_header_rewrite_clients_table_failure_defers_mail_from(new_instance) -> None:  # type: ignore[no-untyped-def]
    inst: Instance = new_instance(maildir=True, settings={
        "local_header_rewrite_clients": "check_address_map fail:broken"})
    inst.start()
    with inst.smtp() as client:
        client.ehlo()
        assert client.mail("sender@example.org") == (451, b"4.3.0 Temporary lookup error")
    inst.wait_log(r"NOQUEUE: reject: MAIL from \S+: 451 4\.3\.0 Temporary lookup error; "
                  r"proto=ESMTP helo=<client\.example>")
