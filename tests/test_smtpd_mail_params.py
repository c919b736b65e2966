"""MAIL FROM and RCPT TO parameters on a real instance, as Debian's Postfix 3.7 answers them.

Each expected reply was read off Postfix 3.7's smtpd (tests/postfix_peer.py) given the
same commands; the notes say which of its checks makes the difference.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator

import pytest
from harness import ME, Instance, wait_until

RCPT = f"{ME}@localhost"


@pytest.fixture(scope="module")
def inst() -> Iterator[Instance]:
    inst = Instance(settings={"recipient_delimiter": "+"})
    inst.start()
    yield inst
    inst.cleanup()


def replies(inst: Instance, *commands: bytes | str) -> list[str]:
    """The reply to each command (after EHLO), one connection; bytes go as they are."""
    with socket.create_connection(("127.0.0.1", inst.port), timeout=30) as s:
        f = s.makefile("rb")

        def reply() -> str:
            lines = [f.readline()]
            while lines[-1][3:4] == b"-":
                lines.append(f.readline())
            return b"".join(lines).decode("utf-8", "replace").rstrip("\r\n")

        reply()
        out = []
        for command in ("EHLO client.example", *commands):
            s.sendall((command.encode() if isinstance(command, str) else command) + b"\r\n")
            out.append(reply())
        return out[1:]


def notice(inst: Instance, subject: bytes) -> bytes:
    """The delivery notice (sender <>) about the message with this subject, in the Maildir."""
    def found() -> list[bytes]:
        return [m for m in inst.maildir_messages()
                if m.startswith(b"Return-Path: <>\n") and b"\n" + subject + b"\n" in m]
    (report,) = wait_until(found, 60, what=f"a notice about {subject!r}")
    return report


def test_auth_parameter_is_taken_with_sasl_off(inst: Instance) -> None:
    # Postfix's smtpd takes AUTH= whether or not smtpd_sasl_auth_enable is on,
    # logs it (sasl_sender=) and refuses a second one, but AUTH=<> sets nothing
    assert replies(inst, "MAIL FROM:<a@b.example> AUTH=<>") == ["250 2.1.0 Ok"]
    assert replies(inst, "MAIL FROM:<a@b.example> AUTH=<> AUTH=<>") == ["250 2.1.0 Ok"]
    assert replies(inst, "MAIL FROM:<a@b.example> AUTH=x AUTH=<>") == [
        "503 5.5.4 Error: multiple AUTH= options"]
    assert replies(inst, "MAIL FROM:<a@b.example> AUTH") == [
        "555 5.5.4 Unsupported option: AUTH"]
    assert replies(inst, "MAIL FROM:<a@b.example> AUTH=x+41y", f"RCPT TO:<{RCPT}>", "DATA",
                   "Subject: auth\r\n\r\nhi\r\n.")[-1].startswith("250 2.0.0 Ok: queued as")
    inst.wait_log(r"client=localhost\[127\.0\.0\.1\], sasl_sender=x\+41y$")


def test_envid_is_xtext_as_postfix_reads_it(inst: Instance) -> None:
    # xtext_unquote(): + and two hex digits of either case, every other character (= too)
    # as it is; then printable ASCII, of any length (RFC 3461's 100 is sendmail -V's)
    for bad in ("a+zz", "a+2", "a+0Ab", "a\xe9", "a+C3+A9", "+00"):
        assert replies(inst, f"MAIL FROM:<a@b.example> ENVID={bad}") == [
            "501 5.5.4 Bad ENVID parameter syntax"], bad
    envid = "id+2bx=y" + "z" * 200
    done = replies(inst, f"MAIL FROM:<{RCPT}> ENVID={envid}", f"RCPT TO:<{RCPT}> NOTIFY=SUCCESS",
                   "DATA", "Subject: envid\r\n\r\nhi\r\n.")
    assert done[0] == "250 2.1.0 Ok" and done[-1].startswith("250 2.0.0 Ok: queued as")
    queue_id = done[-1].rsplit(" ", 1)[1]
    inst.wait_log(rf"{queue_id}: sender delivery status notification: \w+")
    report = notice(inst, b"Subject: envid")
    assert b"\nOriginal-Envelope-Id: id+x=y" + b"z" * 200 + b"\n" in report


def test_orcpt_is_read_as_postfix_reads_it(inst: Instance) -> None:
    # a type, then the address in xtext (unitext for utf-8): no length limit, no
    # printable check (the report shows "?" for a control character, as Postfix's)
    for bad in ("rfc822", ";a@b.example", "rfc822;a+zz@b.example", "utf-8;a\\x{zz}@b.example",
                "utf-8;a\\x{110000}@b.example", "utf-8;a\\x{41"):
        assert replies(inst, "MAIL FROM:<a@b.example>", f"RCPT TO:<{RCPT}> ORCPT={bad}")[1] == (
            "501 5.5.4 Error: Bad ORCPT parameter syntax"), bad
    orcpts = ["rfc822;List+2ba=x+C3+a9+0A@b.example", "utf-8;\\x{E9}t\\x{E9}+41@b.example",
              "rfc822;" + "y" * 600, "rfc822;"]
    done = replies(inst, f"MAIL FROM:<{RCPT}>", *(
        f"RCPT TO:<{ME}+{i}@localhost> NOTIFY=SUCCESS ORCPT={o}" for i, o in enumerate(orcpts)),
        "DATA", "Subject: orcpt\r\n\r\nhi\r\n.")
    assert done[1:5] == ["250 2.1.5 Ok"] * 4 and done[-1].startswith("250 2.0.0 Ok: queued as")
    queue_id = done[-1].rsplit(" ", 1)[1]
    inst.wait_log(rf"{queue_id}: sender delivery status notification: \w+")
    report = notice(inst, b"Subject: orcpt")
    shown = re.findall(rb"^Original-Recipient: (.*)$", report, re.M)
    assert sorted(shown) == sorted([
        "rfc822;List+a=x\u00e9?@b.example".encode(), "utf-8;\u00e9t\u00e9+41@b.example".encode(),
        b"rfc822;" + b"y" * 600, b"rfc822;"])


def test_a_known_parameter_without_its_value_is_unsupported(inst: Instance) -> None:
    # Postfix's smtpd matches "RET=", "ENVID=", "NOTIFY=", "ORCPT=", "AUTH=" and
    # "SMTPUTF8" as they are: RET alone, or SMTPUTF8=, is an unknown option
    for param in ("RET", "ENVID", "SMTPUTF8=", "SMTPUTF8=x"):
        assert replies(inst, f"MAIL FROM:<a@b.example> {param}") == [
            f"555 5.5.4 Unsupported option: {param}"], param
    for param in ("NOTIFY", "ORCPT"):
        assert replies(inst, "MAIL FROM:<a@b.example>", f"RCPT TO:<{RCPT}> {param}")[1] == (
            f"555 5.5.4 Unsupported option: {param}"), param
    assert replies(inst, "MAIL FROM:<a@b.example> SMTPUTF8 smtputf8") == ["250 2.1.0 Ok"]


def test_notify_skips_empty_words(inst: Instance) -> None:
    # Postfix's dsn_notify_mask() reads the list with name_mask_opt(): ",," is no word
    done = replies(inst, f"MAIL FROM:<{RCPT}>", f"RCPT TO:<{ME}+n@localhost> NOTIFY=,success,,",
                   f"RCPT TO:<{ME}+m@localhost> NOTIFY=,", "DATA",
                   "Subject: notify\r\n\r\nhi\r\n.")
    assert done[1:3] == ["250 2.1.5 Ok", "501 5.5.4 Error: Bad NOTIFY parameter syntax"]
    assert done[-1].startswith("250 2.0.0 Ok: queued as")
    report = notice(inst, b"Subject: notify")
    assert b"\nFinal-Recipient: rfc822; " + f"{ME}+n@localhost".encode() + b"\n" in report
    assert b"\nAction: delivered\n" in report


def test_size_over_the_limit_is_a_logged_reject(inst: Instance) -> None:
    # Postfix's smtpd_check_size() rejects through smtpd_check_reject(): a NOQUEUE line
    assert replies(inst, "MAIL FROM:<big@b.example> SIZE=10240001") == [
        "552 5.3.4 Message size exceeds fixed limit"]
    inst.wait_log(r"NOQUEUE: reject: MAIL from localhost\[127\.0\.0\.1\]: 552 5\.3\.4 Message "
                  r"size exceeds fixed limit; from=<big@b\.example> proto=ESMTP "
                  r"helo=<client\.example>$")


def test_two_addresses_in_a_path_are_a_logged_warning(inst: Instance) -> None:
    # Postfix's extract_addr() warns about the token as sent, a parameter glued on too
    assert replies(inst, "MAIL FROM:<warn@b.example>SIZE=5") == [
        "501 5.1.7 Bad sender address syntax"]
    assert replies(inst, "MAIL FROM:<a@b.example>", f"RCPT TO:<{RCPT}>NOTIFY=NEVER")[1] == (
        "501 5.1.3 Bad recipient address syntax")
    for where, token in (("MAIL", r"<warn@b\.example>SIZE=5"), ("RCPT", rf"<{RCPT}>NOTIFY=NEVER")):
        inst.wait_log(rf"warning: Illegal address syntax from localhost\[127\.0\.0\.1\] in "
                      rf"{where} command: {token}$")
