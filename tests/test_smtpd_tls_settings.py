"""smtpd TLS settings as Postfix obeys them: whose cipher order wins
(tls_preempt_cipherlist) and the DHE ciphers' parameters (smtpd_tls_dh1024_param_file),
with TLS 1.2 clients over STARTTLS (smtplib) and smtps (openssl s_client), and the
handshake deadline (smtpd_starttls_timeout), against a real instance."""

from __future__ import annotations

import re
import smtplib
import ssl
import subprocess
from pathlib import Path

from conftest import require_tool
from harness import Instance
from smtpd_helpers import RawSMTP
from test_smtpd_tls import client_context, smtps_service, tls_instance

# the client's preference first; grade medium sorts by @STRENGTH: AES256 first
CLIENT_ORDER = "ECDHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-AES256-GCM-SHA384"
DHE = "DHE-RSA-AES128-GCM-SHA256"


def starttls_cipher(port: int, ciphers: str) -> str:
    ctx = client_context()
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(ciphers)
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as c:
        c.starttls(context=ctx)
        cipher = c.sock.cipher()  # type: ignore[union-attr]
        assert cipher is not None
        return cipher[0]


def s_client(port: int, ciphers: str) -> tuple[str, str]:
    """The cipher and the server's temporary key (``DH, 2048 bits``) of an smtps session."""
    result = subprocess.run(
        [require_tool("openssl"), "s_client", "-tls1_2", "-cipher", ciphers, "-crlf",
         "-ign_eof", "-connect", f"127.0.0.1:{port}"],
        input=b"QUIT\n", capture_output=True, timeout=60)
    out = result.stdout.decode()
    assert "221 2.0.0 Bye" in out, out + result.stderr.decode()
    cipher = re.search(r", Cipher is (\S+)", out)
    key = re.search(r"Server Temp Key: (.*)", out)
    assert cipher and key, out
    return cipher.group(1), key.group(1).strip()


def test_tls_preempt_cipherlist_decides_whose_order_wins(new_instance, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Postfix's default (no): the client's order; yes: the server's (Python's ssl
    prefers the server's unless told otherwise)."""
    inst: Instance = tls_instance(new_instance, tmp_path, smtpd_tls_security_level="may")
    smtps_no = smtps_service(inst)
    smtps_yes = smtps_service(inst, "tls_preempt_cipherlist=yes")
    inst.start()
    assert starttls_cipher(inst.port, CLIENT_ORDER) == "ECDHE-RSA-AES128-GCM-SHA256"
    assert s_client(smtps_no, CLIENT_ORDER)[0] == "ECDHE-RSA-AES128-GCM-SHA256"
    assert s_client(smtps_yes, CLIENT_ORDER)[0] == "ECDHE-RSA-AES256-GCM-SHA384"
    assert "tls_preempt_cipherlist" not in inst.log()  # no "not implemented" warning


def test_dhe_ciphers_and_smtpd_tls_dh1024_param_file(new_instance, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """As Postfix with OpenSSL 3: DHE works with no parameter file (OpenSSL's group for
    a 2048-bit RSA key), a file's parameters are used, and a missing file is a warning
    and the built-in choice."""
    dh3072 = tmp_path / "dh3072.pem"
    subprocess.run([require_tool("openssl"), "genpkey", "-genparam", "-algorithm", "DH",
                    "-pkeyopt", "dh_param:ffdhe3072", "-out", str(dh3072)],
                   check=True, capture_output=True)
    inst: Instance = tls_instance(new_instance, tmp_path, smtpd_tls_security_level="may")
    with_file = smtps_service(inst, f"smtpd_tls_dh1024_param_file={dh3072}")
    missing = smtps_service(inst, f"smtpd_tls_dh1024_param_file={tmp_path}/absent.pem")
    inst.start()
    assert starttls_cipher(inst.port, DHE) == DHE
    assert s_client(with_file, DHE) == (DHE, "DH, 3072 bits")
    assert s_client(missing, DHE) == (DHE, "DH, 2048 bits")
    inst.wait_log(rf'warning: error opening DH parameter file "{re.escape(str(tmp_path))}'
                  r'/absent\.pem": No such file or directory -- using compiled-in defaults')
    assert "smtpd_tls_dh1024_param_file is not implemented" not in inst.log()


def test_a_stalled_starttls_handshake_ends_at_smtpd_starttls_timeout(new_instance, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A client that says STARTTLS and then nothing is dropped at the deadline, with
    Postfix's lines (SSL_accept error ...: Connection timed out, lost connection)."""
    inst: Instance = tls_instance(new_instance, tmp_path, smtpd_tls_security_level="may",
                                  smtpd_starttls_timeout="2s")
    inst.start()
    with RawSMTP(inst.port) as c:
        assert c.reply().startswith(b"220 ")
        c.send(b"EHLO client.example\r\n")
        assert c.reply().startswith(b"250 ")
        c.send(b"STARTTLS\r\n")
        assert c.reply() == b"220 2.0.0 Ready to start TLS\r\n"
        assert c.file.read() == b""  # closed by the server, long before our own timeout
    inst.wait_log(r"smtpd\[\d+\]: SSL_accept error from localhost\[127\.0\.0\.1\]: "
                  r"Connection timed out$")
    inst.wait_log(r"lost connection after STARTTLS from localhost\[127\.0\.0\.1\]$")
