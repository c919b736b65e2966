"""smtpd_etrn_restrictions, and what a policy server is told at each stage, on a real
instance: a policy server of the test's own records every request (ETRN with its
etrn_domain; DATA and END-OF-MESSAGE with the recipient count and, at the end, the
size received; BDAT reported as DATA, as Postfix; the TLS protocol and cipher)."""

from __future__ import annotations

import smtplib
from pathlib import Path

from harness import ME, Instance, free_port
from policy_recorder import PolicyRecorder
from smtpd_helpers import RawSMTP
from test_smtpd_tls import client_context, make_cert

SITE = "remote.example"


def test_etrn_restrictions(new_instance) -> None:  # type: ignore[no-untyped-def]
    inst: Instance = new_instance(maildir=True)
    access = inst.write("etc/etrn_access", "blocked.example REJECT\nother.example 450 Not now\n")
    strangers = free_port()
    with PolicyRecorder() as policy:
        inst.set(relay_domains=SITE, mynetworks="127.0.0.0/8",
                 smtpd_etrn_restrictions=f"check_policy_service {policy.spec}, "
                 f"check_etrn_access texthash:{access}, permit_mynetworks, reject")
        master_cf = inst.config_dir / "master.cf"
        master_cf.write_text(master_cf.read_text() + f"127.0.0.1:{strangers} inet n - n - - "
                             "smtpd\n  -o mynetworks=192.0.2.0/24\n")
        inst.start()
        with inst.smtp() as c:
            c.ehlo("client.example")
            assert c.docmd("ETRN", SITE) == (250, b"Queuing started")
            assert c.docmd("ETRN", "blocked.example") == (
                554, b"5.7.1 <blocked.example>: Etrn command rejected: Access denied")
            assert c.docmd("ETRN", "@other.example") == (
                450, b"4.7.1 <other.example>: Etrn command rejected: Not now")
        with smtplib.SMTP("127.0.0.1", strangers, timeout=30) as c:
            c.ehlo("client.example")
            assert c.docmd("ETRN", SITE) == (
                554, b"5.7.1 <remote.example>: Etrn command rejected: Access denied")
        inst.wait_log(r"NOQUEUE: reject: ETRN from localhost\[127\.0\.0\.1\]: 554 5\.7\.1 "
                      r"<blocked\.example>: Etrn command rejected: Access denied; proto=ESMTP "
                      r"helo=<client\.example>")
        requests = policy.wait(4)
        assert [(r["protocol_state"], r["etrn_domain"]) for r in requests] == [
            ("ETRN", SITE), ("ETRN", "blocked.example"), ("ETRN", "other.example"),
            ("ETRN", SITE)]


def test_policy_requests_at_data_and_end_of_message(new_instance, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cert, key = make_cert(tmp_path)
    inst: Instance = new_instance(maildir=True)
    with PolicyRecorder() as policy:
        inst.set(smtpd_tls_cert_file=str(cert), smtpd_tls_key_file=str(key),
                 smtpd_tls_security_level="may", recipient_delimiter="+",
                 smtpd_data_restrictions=f"check_policy_service {policy.spec}",
                 smtpd_end_of_data_restrictions=f"check_policy_service {policy.spec}")
        inst.start()
        body = b"Subject: measured\r\n\r\n" + b"line\r\n" * 10
        with inst.smtp() as c:
            c.starttls(context=client_context())
            c.ehlo("client.example")
            c.sendmail("alice@example.org", [f"{ME}@localhost", f"{ME}+2@localhost"], body)
        data, eom = policy.wait(2)
        assert (data["protocol_state"], data["recipient_count"]) == ("DATA", "2")
        assert (eom["protocol_state"], eom["recipient_count"]) == ("END-OF-MESSAGE", "2")
        assert eom["size"] == str(len(body))
        assert data["instance"] == eom["instance"]
        for request in (data, eom):
            assert request["encryption_protocol"] == "TLSv1.3"
            assert request["encryption_cipher"].startswith("TLS_")
            assert request["encryption_keysize"] in ("128", "256")
            assert request["ccert_fingerprint"] == ""  # not asked for
        # BDAT is DATA to a policy server, as in Postfix
        with RawSMTP(inst.port) as s:
            s.reply()
            s.send(b"EHLO client.example\r\n")
            s.reply()
            s.send(b"MAIL FROM:<alice@example.org>\r\n" + f"RCPT TO:<{ME}@localhost>\r\n"
                      .encode() + b"BDAT %d LAST\r\n" % len(body) + body)
            for _ in range(3):
                assert s.reply().startswith(b"250 ")
        bdat, bdat_eom = policy.wait(4)[2:]
        assert (bdat["protocol_state"], bdat["recipient_count"]) == ("DATA", "1")
        assert (bdat_eom["protocol_state"], bdat_eom["size"]) == ("END-OF-MESSAGE",
                                                                  str(len(body)))
        assert bdat_eom["encryption_protocol"] == ""  # this one was plaintext
        inst.wait_maildir(3)
