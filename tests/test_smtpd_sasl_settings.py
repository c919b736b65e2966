"""smtpd's SASL settings against a real Dovecot auth server: smtpd_sasl_service,
smtpd_sasl_mechanism_filter, smtpd_sasl_exceptions_networks, one auth connection per
smtpd process, and the login (sasl_method, sasl_username, MAIL FROM's AUTH= as
sasl_sender) in the client= log line, the queue file and policy requests.

Root only: Dovecot's master runs as root (see test_smtpd_sasl).
"""

from __future__ import annotations

import base64
import re
import smtplib
import subprocess
from pathlib import Path

import pytest
from conftest import require_tool
from harness import ME, Instance, free_port
from policy_recorder import PolicyRecorder
from test_smtpd_sasl import PASSWORD, DovecotAuth

pytestmark = pytest.mark.root

PLAIN = base64.b64encode(f"\0alice\0{PASSWORD}".encode()).decode()


def test_sasl_settings_and_the_login_everywhere(new_instance, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    inst: Instance = new_instance(maildir=True)
    hold = inst.write("etc/hold", f"{ME}+hold@localhost HOLD\n")
    exempt_port = free_port()
    with PolicyRecorder() as policy:
        inst.set(smtpd_sasl_auth_enable="yes", smtpd_sasl_type="dovecot",
                 smtpd_sasl_path="private/auth", smtpd_sasl_service="pymailsys-test",
                 smtpd_sasl_mechanism_filter="!login, static:rest",
                 smtpd_sasl_local_domain="example.org", recipient_delimiter="+",
                 mynetworks="192.0.2.0/24",
                 smtpd_recipient_restrictions=f"check_policy_service {policy.spec}, "
                 f"check_recipient_access texthash:{hold}, permit_sasl_authenticated, "
                 "reject_unauth_destination",
                 smtpd_end_of_data_restrictions=f"check_policy_service {policy.spec}")
        master_cf = inst.config_dir / "master.cf"
        master_cf.write_text(master_cf.read_text() + f"127.0.0.1:{exempt_port} inet n - n - - "
                             "smtpd\n  -o smtpd_sasl_exceptions_networks=127.0.0.0/8\n")
        inst.start()
        dovecot = DovecotAuth(inst.queue_dir / "private" / "auth",
                              extra="auth_debug = yes\nauth_verbose = yes")
        try:
            with smtplib.SMTP("127.0.0.1", inst.port, timeout=30) as c:
                c.ehlo("mua.example")
                assert c.esmtp_features["auth"].split() == ["PLAIN"]  # LOGIN filtered out
                assert c.docmd("AUTH", "LOGIN") == (
                    535, b"5.7.8 Error: authentication failed: "
                         b"Invalid authentication mechanism: 'LOGIN'")
                assert c.docmd("AUTH", f"PLAIN {PLAIN}") == (
                    235, b"2.7.0 Authentication successful")
                assert c.docmd("MAIL FROM:<alice@example.org> AUTH=<alice@example.org>") == (
                    250, b"2.1.0 Ok")
                assert c.rcpt(f"{ME}+hold@localhost") == (250, b"2.1.5 Ok")
                code, text = c.data(b"Subject: held\r\n\r\nbody\r\n")
                assert code == 250, text
                queue_id = text.decode().rsplit(" ", 1)[1]
                assert c.docmd("MAIL FROM:<alice@example.org> AUTH=x AUTH=<>") == (
                    503, b"5.5.4 Error: multiple AUTH= options")
            # a second session of the same process shares the auth server connection
            with smtplib.SMTP("127.0.0.1", inst.port, timeout=30) as c:
                c.ehlo("mua.example")
                assert c.docmd("AUTH", f"PLAIN {PLAIN}")[0] == 235
            # AUTH is not announced to smtpd_sasl_exceptions_networks, but works
            with smtplib.SMTP("127.0.0.1", exempt_port, timeout=30) as c:
                c.ehlo("mua.example")
                assert not c.has_extn("auth")
                assert c.docmd("AUTH", f"PLAIN {PLAIN}")[0] == 235
            inst.wait_log(rf"postfix/smtpd\[\d+\]: {queue_id}: client=localhost\[127\.0\.0\.1\], "
                          r"sasl_method=PLAIN, sasl_username=alice, "
                          r"sasl_sender=<alice@example\.org>$")
            # the queue file has them as named attributes (Postfix's postcat and ours)
            path = next(inst.queue_dir.glob(f"hold/**/{queue_id}"))
            (tmp_path / "pfetc").mkdir()
            (tmp_path / "pfetc" / "main.cf").write_text("")
            debian = subprocess.run([require_tool("/usr/sbin/postcat"), "-c",
                                     str(tmp_path / "pfetc"), str(path)],
                                    capture_output=True, text=True, timeout=30)
            assert debian.returncode == 0, debian.stderr
            for shown in (debian.stdout, inst.tool("postcat", "-q", queue_id).stdout):
                assert "named_attribute: sasl_method=PLAIN\n" in shown
                assert "named_attribute: sasl_username=alice\n" in shown
                assert "named_attribute: sasl_sender=<alice@example.org>\n" in shown
            (rcpt,) = policy.at("RCPT")
            assert (rcpt["sasl_method"], rcpt["sasl_username"], rcpt["sasl_sender"]) == (
                "PLAIN", "alice", "<alice@example.org>")
            (eom,) = policy.at("END-OF-MESSAGE")
            assert eom["sasl_username"] == "alice"
            # Dovecot saw the service name, and request 2 came on the first connection
            log = (dovecot.dir / "dovecot.log").read_text()
            auths = re.findall(r"client in: AUTH\t(\d+)\t(\w+)\tservice=([\w-]+)", log)
            assert ("1", "PLAIN", "pymailsys-test") in auths, log
            assert ("2", "PLAIN", "pymailsys-test") in auths, log
        finally:
            inst.stop()
            dovecot.stop()
