"""smtpd SMTP AUTH through a real Dovecot auth server (passwd-file users), with
swaks and smtplib, on the submission service of Debian's stock master.cf.

The test runs its own Dovecot (Debian's dovecot-core) with its own base_dir,
a passwd-file passdb and ``service auth { unix_listener }`` at the instance's
private/auth (smtpd_sasl_path = private/auth, relative to the queue
directory). Root only: Dovecot's master runs as root.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import smtplib
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import require_tool
from harness import ME, Instance, free_port, stop_process, wait_until
from test_smtpd_tls import client_context, make_cert

from pymailsys.smtp import sasl

pytestmark = pytest.mark.root

PASSWORD = "wonderland"


class DovecotAuth:
    """Dovecot with only its auth service, listening at ``socket``."""

    def __init__(self, socket: Path, extra: str = "") -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="dovecot-auth-"))
        os.chmod(self.dir, 0o755)
        self.socket = socket
        (self.dir / "users").write_text(f"alice:{{PLAIN}}{PASSWORD}\n"
                                        f"bob:{{PLAIN}}builder\n")
        self.conf = self.dir / "dovecot.conf"
        self.conf.write_text(f"""
base_dir = {self.dir}/run
state_dir = {self.dir}/state
log_path = {self.dir}/dovecot.log
protocols = imap
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
{extra}
passdb {{
  driver = passwd-file
  args = {self.dir}/users
}}
userdb {{
  driver = static
  args = uid=nobody gid=nogroup home=/nonexistent
}}
service imap-login {{
  inet_listener imap {{
    port = 0
  }}
}}
service auth {{
  unix_listener {socket} {{
    mode = 0666
  }}
}}
service stats {{
  unix_listener stats-reader {{
    mode = 0600
  }}
  unix_listener stats-writer {{
    mode = 0600
  }}
}}
""")
        self.proc = subprocess.Popen([require_tool("/usr/sbin/dovecot"), "-F", "-c",
                                      str(self.conf)], stdout=subprocess.DEVNULL)
        wait_until(socket.exists, 30, what="Dovecot's auth socket")

    def stop(self) -> None:
        stop_process(self.proc)
        shutil.rmtree(self.dir, ignore_errors=True)


def stock_submission(inst: Instance, port: int, name: str) -> str:
    """Debian's commented-out ``submission``/``submissions`` entry, uncommented, on port."""
    text = Path("/usr/share/postfix/master.cf.dist").read_text()
    m = re.search(rf"(?ms)^#{name}\s+inet.*?(?=^#\S)", text)
    assert m, f"no {name} entry in master.cf.dist"
    lines = []
    for line in m.group(0).splitlines():
        if line.startswith("#  -o") or line.startswith(f"#{name}"):
            lines.append(line[1:])
    entry = "\n".join(lines)
    entry = re.sub(rf"^{name}(\s+)", f"127.0.0.1:{port}\\1", entry)
    return entry + "\n"


@pytest.fixture
def submission(new_instance, tmp_path: Path) -> Iterator[tuple[Instance, int, int]]:  # type: ignore[no-untyped-def]
    """An instance with Debian's stock submission (587) and submissions (465) services
    on free ports, TLS certificates, and Dovecot's auth server at private/auth."""
    cert, key = make_cert(tmp_path)
    inst: Instance = new_instance(maildir=True)
    inst.set(smtpd_tls_cert_file=str(cert), smtpd_tls_key_file=str(key),
             smtpd_sasl_type="dovecot", smtpd_sasl_path="private/auth",
             mynetworks="192.0.2.0/24")  # the test client is not trusted by address
    sub_port, subs_port = free_port(), free_port()
    master_cf = inst.config_dir / "master.cf"
    master_cf.write_text(master_cf.read_text() + stock_submission(inst, sub_port, "submission")
                         + stock_submission(inst, subs_port, "submissions"))
    inst.start()  # makes private/, where Dovecot's socket goes
    dovecot = DovecotAuth(inst.queue_dir / "private" / "auth")
    try:
        yield inst, sub_port, subs_port
    finally:
        inst.stop()
        dovecot.stop()


def swaks(port: int, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([require_tool("swaks"), "--server", f"127.0.0.1:{port}",
                           "--from", "alice@example.org", "--to", "friend@remote.example",
                           *args], capture_output=True, text=True, timeout=60)


def test_submission_offers_auth_only_after_starttls_and_relays_for_the_user(submission) -> None:  # type: ignore[no-untyped-def]
    inst, port, smtps_port = submission
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as c:
        c.ehlo("mua.example")
        assert c.has_extn("starttls") and not c.has_extn("auth")
        assert c.docmd("AUTH PLAIN") == (530, b"5.7.0 Must issue a STARTTLS command first")
        assert c.mail("alice@example.org") == (530, b"5.7.0 Must issue a STARTTLS command first")
        c.starttls(context=client_context())
        c.ehlo("mua.example")
        assert c.esmtp_features["auth"].split() == ["PLAIN", "LOGIN"]
    result = swaks(port, "--tls", "--auth", "PLAIN", "--auth-user", "alice",
                   "--auth-password", PASSWORD, "--to", f"{ME}@localhost",
                   "--header", "Subject: submitted")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "<~  235 2.7.0 Authentication successful" in result.stdout
    (msg,) = inst.wait_maildir(1)
    assert b"with ESMTPSA id" in msg
    inst.wait_log(r"postfix/submission/smtpd\[\d+\]: \w+: client=localhost\[127\.0\.0\.1\], "
                  r"sasl_method=PLAIN, sasl_username=alice")
    # LOGIN (challenges and responses) on submissions (smtps), relaying to a remote domain
    result = swaks(smtps_port, "--tls-on-connect", "--auth", "LOGIN",
                   "--auth-user", "bob", "--auth-password", "builder", "--quit-after", "RCPT")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "<~  250 2.1.5 Ok" in result.stdout


def test_encrypt_offers_auth_only_after_starttls(new_instance, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """smtpd_tls_security_level = encrypt implies smtpd_tls_auth_only, as in Postfix."""
    cert, key = make_cert(tmp_path)
    inst: Instance = new_instance(maildir=True)
    inst.set(smtpd_tls_cert_file=str(cert), smtpd_tls_key_file=str(key),
             smtpd_tls_security_level="encrypt", smtpd_sasl_auth_enable="yes",
             smtpd_sasl_type="dovecot", smtpd_sasl_path="private/auth",
             smtpd_sasl_security_options="noanonymous, noplaintext",
             smtpd_sasl_tls_security_options="noanonymous")
    inst.start()
    dovecot = DovecotAuth(inst.queue_dir / "private" / "auth")
    try:
        with smtplib.SMTP("127.0.0.1", inst.port, timeout=30) as c:
            c.ehlo("mua.example")
            assert not c.has_extn("auth")
            c.starttls(context=client_context())
            c.ehlo("mua.example")
            assert c.esmtp_features["auth"].split() == ["PLAIN", "LOGIN"]
            c.login("alice", PASSWORD)
    finally:
        inst.stop()
        dovecot.stop()


def test_security_options_filter_the_mechanisms() -> None:
    mechs = [sasl.Mechanism("PLAIN", frozenset({"plaintext"})),
             sasl.Mechanism("ANONYMOUS", frozenset({"anonymous"})),
             sasl.Mechanism("SCRAM-SHA-1", frozenset({"mutual-auth"})),
             sasl.Mechanism("SECRET", frozenset({"private"}))]
    assert sasl.offered(mechs, ["noanonymous"]) == ["PLAIN", "SCRAM-SHA-1"]
    assert sasl.offered(mechs, ["noanonymous", "noplaintext"]) == ["SCRAM-SHA-1"]
    assert sasl.offered(mechs, ["mutual_auth"]) == ["SCRAM-SHA-1"]
    assert sasl.offered(mechs, []) == ["PLAIN", "ANONYMOUS", "SCRAM-SHA-1"]


def test_a_wrong_password_never_opens_relaying(submission) -> None:  # type: ignore[no-untyped-def]
    inst, port, _ = submission
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as c:
        c.ehlo("mua.example")
        c.starttls(context=client_context())
        c.ehlo("mua.example")
        wrong = base64.b64encode(b"\0alice\0guess").decode()
        assert c.docmd("AUTH", f"PLAIN {wrong}") == (
            535, b"5.7.8 Error: authentication failed:")  # an empty reason, as Dovecot gives
        assert c.mail("alice@example.org") == (250, b"2.1.0 Ok")
        code, text = c.rcpt("friend@remote.example")
        assert (code, text) == (554, b"5.7.1 <friend@remote.example>: Recipient address "
                                     b"rejected: Access denied")
        assert c.docmd("RSET")[0] == 250
        assert c.docmd("AUTH", "CRAM-MD5")[0] == 535  # not offered by Dovecot here
        assert c.docmd("AUTH", "PLAIN")[0] == 334
        assert c.docmd("*") == (501, b"5.7.0 Authentication aborted")
    inst.wait_log(r"warning: localhost\[127\.0\.0\.1\]: SASL PLAIN authentication failed: "
                  r"\(reason unavailable\), sasl_username=alice$")
    inst.wait_log(r"warning: localhost\[127\.0\.0\.1\]: SASL PLAIN authentication aborted")
    result = swaks(port, "--tls", "--auth", "LOGIN", "--auth-user", "alice",
                   "--auth-password", "guess")
    assert result.returncode != 0
    assert "<~* 535 5.7.8 Error: authentication failed: UGFzc3dvcmQ6" in result.stdout


def test_sender_login_maps_reject_a_sender_the_user_does_not_own(new_instance, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    inst: Instance = new_instance(maildir=True)
    (tmp_path / "logins").write_text("alice@example.org alice\nbob@example.org bob\n")
    inst.set(smtpd_sasl_auth_enable="yes", smtpd_sasl_type="dovecot",
             smtpd_sasl_path="private/auth", mynetworks="192.0.2.0/24",
             smtpd_sender_login_maps=f"texthash:{tmp_path}/logins",
             smtpd_sender_restrictions="reject_sender_login_mismatch",
             smtpd_sasl_authenticated_header="yes", broken_sasl_auth_clients="yes")
    inst.start()
    dovecot = DovecotAuth(inst.queue_dir / "private" / "auth")
    try:
        with smtplib.SMTP("127.0.0.1", inst.port, timeout=30) as c:
            code, text = c.ehlo("mua.example")
            assert b"\nAUTH PLAIN LOGIN\nAUTH=PLAIN LOGIN\n" in text
            # smtpd_delay_reject (the default): sender restrictions answer at RCPT
            assert c.mail("alice@example.org") == (250, b"2.1.0 Ok")
            assert c.rcpt("friend@remote.example") == (
                553, b"5.7.1 <alice@example.org>: Sender address rejected: not logged in")
            c.rset()
            c.login("alice", PASSWORD)
            assert c.mail("bob@example.org") == (250, b"2.1.0 Ok")
            assert c.rcpt("friend@remote.example") == (
                553, b"5.7.1 <bob@example.org>: Sender address rejected: not owned by user alice")
            c.rset()
            assert c.mail("alice@example.org") == (250, b"2.1.0 Ok")
            assert c.rcpt("friend@remote.example") == (250, b"2.1.5 Ok")
        inst.wait_log(r"NOQUEUE: reject: RCPT from localhost\[127\.0\.0\.1\]: 553 5\.7\.1 "
                      r"<bob@example\.org>: Sender address rejected: not owned by user alice; "
                      r"from=<bob@example\.org> to=<friend@remote\.example>")
        c2 = smtplib.SMTP("127.0.0.1", inst.port, timeout=30)
        c2.login("alice", PASSWORD)
        c2.sendmail("alice@example.org", [f"{ME}@localhost"], b"Subject: mine\r\n\r\nbody\r\n")
        c2.quit()
        (msg,) = inst.wait_maildir(1)
        assert b"\n\t(Authenticated sender: alice)\n\tby " in msg
        assert b"with ESMTPA id" in msg
    finally:
        inst.stop()
        dovecot.stop()
