"""smtpd TLS: STARTTLS and smtps with real clients (smtplib, openssl s_client, swaks)
against a real instance, with a certificate made by openssl in the test."""

from __future__ import annotations

import smtplib
import socket
import ssl
import subprocess
from pathlib import Path

import pytest
from conftest import require_tool
from harness import ME, Instance, free_port
from smtpd_helpers import RawSMTP

from pymailsys import config
from pymailsys.smtp import openssl, tls_server


def make_cert(directory: Path, name: str = "mx.example") -> tuple[Path, Path]:
    """A self-signed certificate and its key, made with openssl."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run([require_tool("openssl"), "req", "-x509", "-newkey", "rsa:2048", "-nodes",
                    "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", f"/CN={name}"],
                   check=True, capture_output=True)
    return cert, key


def tls_instance(new_instance, tmp_path: Path, **settings: str) -> Instance:  # type: ignore[no-untyped-def]
    cert, key = make_cert(tmp_path)
    inst: Instance = new_instance(maildir=True)
    inst.set(smtpd_tls_cert_file=str(cert), smtpd_tls_key_file=str(key), **settings)
    return inst


def smtps_service(inst: Instance, *options: str) -> int:
    """An smtps (wrapper mode) service in master.cf, on a free port it returns."""
    port = free_port()
    master_cf = inst.config_dir / "master.cf"
    master_cf.write_text(master_cf.read_text() + f"127.0.0.1:{port} inet n - n - - smtpd\n"
                         "  -o syslog_name=postfix/smtps -o smtpd_tls_wrappermode=yes\n"
                         + "".join(f"  -o {option}\n" for option in options))
    return port


def client_context() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def test_starttls_with_smtplib_logs_and_received(new_instance, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    inst = tls_instance(new_instance, tmp_path, smtpd_tls_security_level="may",
                        smtpd_tls_loglevel="1", smtpd_tls_received_header="yes")
    inst.start()
    with inst.smtp() as c:
        c.ehlo("client.example")
        assert c.has_extn("starttls")
        assert c.starttls(context=client_context())[0] == 220
        c.ehlo("client.example")
        assert not c.has_extn("starttls")
        c.sendmail("alice@example.org", [f"{ME}@localhost"], b"Subject: tls\r\n\r\nsecret\r\n")
    (msg,) = inst.wait_maildir(1)
    assert b"with ESMTPS id" in msg
    assert b"(using TLSv1.3 with cipher TLS_" in msg
    assert b"\n\t(No client certificate requested)\n" in msg
    inst.wait_log(r"smtpd\[\d+\]: Anonymous TLS connection established from "
                  r"localhost\[127\.0\.0\.1\]: TLSv1\.3 with cipher TLS_\w+ \(\d+/\d+ bits\)")
    inst.wait_log(r"disconnect from localhost\[127\.0\.0\.1\] ehlo=2 starttls=1 mail=1 rcpt=1 "
                  r"data=1 quit=1 commands=7")


def test_starttls_with_openssl_s_client_and_swaks(new_instance, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # s_client sends its lines as they come: pipelined, which needs no EHLO keyword here
    inst = tls_instance(new_instance, tmp_path, smtpd_tls_security_level="may",
                        smtpd_forbid_unauth_pipelining="no")
    inst.start()
    s_client = subprocess.run(
        [require_tool("openssl"), "s_client", "-starttls", "smtp", "-crlf", "-quiet",
         "-connect", f"127.0.0.1:{inst.port}"],
        input=b"EHLO s-client.example\nNOOP\nQUIT\n", capture_output=True, timeout=60)
    out = s_client.stdout.decode()
    assert "250-PIPELINING" in out and "250 2.0.0 Ok" in out and "221 2.0.0 Bye" in out, out
    assert "STARTTLS" not in out  # not offered again inside TLS
    swaks = require_tool("swaks")
    result = subprocess.run(
        [swaks, "--server", f"127.0.0.1:{inst.port}", "--tls", "--from", "bob@example.org",
         "--to", f"{ME}@localhost", "--header", "Subject: via swaks tls", "--body", "hello"],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "<-  220 2.0.0 Ready to start TLS" in result.stdout
    (msg,) = inst.wait_maildir(1)
    assert b"Subject: via swaks tls" in msg and b"with ESMTPS id" in msg
    assert b"(using " not in msg  # smtpd_tls_received_header = no
    assert "TLS connection established" not in inst.log()  # smtpd_tls_loglevel = 0


def test_plaintext_pipelined_behind_starttls_is_discarded(new_instance, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """CVE-2011-0411: a command sent in the same write as STARTTLS is never executed;
    as Postfix, smtpd_forbid_unauth_pipelining (yes) does not end the session for it:
    STARTTLS is not a last-in-group command there."""
    inst = tls_instance(new_instance, tmp_path, smtpd_tls_security_level="may")
    inst.start()
    with socket.create_connection(("127.0.0.1", inst.port), timeout=30) as raw:
        f = raw.makefile("rb")
        assert f.readline().startswith(b"220 ")
        raw.sendall(b"EHLO client.example\r\n")
        while not f.readline().startswith(b"250 "):
            pass
        raw.sendall(b"STARTTLS\r\nRSET\r\n")
        assert f.readline() == b"220 2.0.0 Ready to start TLS\r\n"
        with client_context().wrap_socket(raw, server_hostname="mx.example") as tls:
            tls.sendall(b"NOOP\r\n")
            first = tls.recv(4096)
            assert first == b"250 2.0.0 Ok\r\n"
            tls.sendall(b"QUIT\r\n")
            assert tls.recv(4096) == b"221 2.0.0 Bye\r\n"
    inst.wait_log(r"disconnect from localhost\[127\.0\.0\.1\] ehlo=1 starttls=1 noop=1 quit=1 "
                  r"commands=4")
    assert "rset=" not in inst.log()


def test_encrypt_requires_starttls_before_mail(new_instance, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    inst = tls_instance(new_instance, tmp_path, smtpd_tls_security_level="encrypt")
    inst.start()
    with inst.smtp() as c:
        c.ehlo("client.example")
        assert c.has_extn("starttls")
        assert c.mail("alice@example.org") == (530, b"5.7.0 Must issue a STARTTLS command first")
        assert c.starttls(context=client_context())[0] == 220
        c.ehlo("client.example")
        assert c.mail("alice@example.org") == (250, b"2.1.0 Ok")
        assert c.rcpt(f"{ME}@localhost") == (250, b"2.1.5 Ok")
        assert c.data(b"Subject: encrypted\r\n\r\nbody\r\n")[0] == 250
    (msg,) = inst.wait_maildir(1)
    assert b"with ESMTPS id" in msg


def test_smtps_wrappermode_service(new_instance, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    inst = tls_instance(new_instance, tmp_path)
    port = smtps_service(inst)
    inst.start()
    with smtplib.SMTP_SSL("127.0.0.1", port, context=client_context(), timeout=30) as c:
        assert c.ehlo("client.example")[0] == 250
        assert not c.has_extn("starttls")
        c.sendmail("alice@example.org", [f"{ME}@localhost"], b"Subject: smtps\r\n\r\nbody\r\n")
    (msg,) = inst.wait_maildir(1)
    assert b"with ESMTPS id" in msg
    inst.wait_log(r"postfix/smtps/smtpd\[\d+\]: disconnect from localhost\[127\.0\.0\.1\]")


def test_the_server_context_follows_the_settings(tmp_path: Path) -> None:
    cert, key = make_cert(tmp_path)
    base = {"smtpd_tls_cert_file": str(cert), "smtpd_tls_key_file": str(key)}
    tls = tls_server.ServerTLS.from_config(config.Config(str(tmp_path), {
        **base, "smtpd_tls_security_level": "encrypt", "smtpd_tls_mandatory_protocols": ">=TLSv1.3"}))
    assert tls.required and tls.context is not None
    assert tls.context.minimum_version == ssl.TLSVersion.TLSv1_3
    may = tls_server.ServerTLS.from_config(config.Config(str(tmp_path), {
        **base, "smtpd_use_tls": "yes", "smtpd_tls_protocols": "<=TLSv1.2",
        "smtpd_tls_exclude_ciphers": "aNULL, RC4, AES256"}))
    assert may.level == "may" and not may.required and may.context is not None
    assert may.context.maximum_version == ssl.TLSVersion.TLSv1_2
    assert not any("AES256" in c["name"] and c["protocol"] != "TLSv1.3"
                   for c in may.context.get_ciphers())
    with pytest.raises(ValueError, match='invalid TLS protocol ">=TLSv9"'):
        tls_server.ServerTLS.from_config(config.Config(str(tmp_path), {
            **base, "smtpd_tls_security_level": "may", "smtpd_tls_protocols": ">=TLSv9"}))
    with pytest.raises(ValueError, match="no server certificate"):
        tls_server.ServerTLS.from_config(config.Config(str(tmp_path), {
            "smtpd_tls_security_level": "encrypt"}))
    with pytest.raises(ValueError, match="cannot load the TLS server certificate"):
        tls_server.ServerTLS.from_config(config.Config(str(tmp_path), {
            "smtpd_tls_security_level": "encrypt", "smtpd_tls_cert_file": str(tmp_path / "no")}))
    unloadable = tls_server.ServerTLS.from_config(config.Config(str(tmp_path), {
        "smtpd_tls_security_level": "may", "smtpd_tls_cert_file": str(tmp_path / "none")}))
    assert unloadable.context is None and unloadable.level == "none"
    chain = tmp_path / "chain.pem"  # smtpd_tls_chain_files: key and certificate in one file
    chain.write_bytes(key.read_bytes() + cert.read_bytes())
    chained = tls_server.ServerTLS.from_config(config.Config(str(tmp_path), {
        "smtpd_tls_security_level": "may", "smtpd_tls_chain_files": str(chain),
        "smtpd_tls_ciphers": "high"}))
    assert chained.context is not None and chained.level == "may"
    off = tls_server.ServerTLS.from_config(config.Config(str(tmp_path), {}))
    assert off.context is None and off.level == "none"


def test_a_failed_smtps_handshake_is_logged_as_postfix(new_instance, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    inst = tls_instance(new_instance, tmp_path)
    port = smtps_service(inst)
    inst.start()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(b"EHLO plaintext.example\r\n")  # not a TLS client hello
        s.recv(512)
    with socket.create_connection(("127.0.0.1", port), timeout=30):
        pass  # gone before the handshake
    pfx = r"postfix/smtps/smtpd\[\d+\]: "
    inst.wait_log(pfx + r"SSL_accept error from localhost\[127\.0\.0\.1\]: -1")
    inst.wait_log(pfx + r"warning: TLS library problem: .*(WRONG_VERSION_NUMBER|wrong version)")
    inst.wait_log(pfx + r"SSL_accept error from localhost\[127\.0\.0\.1\]: lost connection")
    inst.wait_log(pfx + r"lost connection after CONNECT from localhost\[127\.0\.0\.1\]", count=2)
    inst.wait_log(pfx + r"disconnect from localhost\[127\.0\.0\.1\] commands=0/0", count=2)
    inst.wait_log(pfx + r"connect from localhost\[127\.0\.0\.1\]", count=2)


def _tls_session(ctx: ssl.SSLContext, port: int,
                 session: ssl.SSLSession | None = None) -> tuple[ssl.SSLSession, bool]:
    """STARTTLS by hand, offering ``session``: the session to resume next time, and whether
    this one was resumed."""
    with RawSMTP(port) as raw:
        raw.reply()
        raw.send(b"EHLO client.example\r\n")
        raw.reply()
        raw.send(b"STARTTLS\r\n")
        assert raw.reply().startswith(b"220 ")
        with ctx.wrap_socket(raw.sock, session=session) as tls:
            tls.sendall(b"EHLO client.example\r\n")
            g = tls.makefile("rb")
            while g.readline()[3:4] == b"-":  # the ticket comes with the reply
                pass
            tls.sendall(b"QUIT\r\n")
            g.readline()
            assert tls.session is not None and tls.session_reused is not None
            return tls.session, tls.session_reused


def test_session_resumption_and_its_timeout(new_instance, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """TLS 1.3 tickets resume a session with the same smtpd; an admin's
    smtpd_tls_session_cache_database does not make smtpd refuse; a timeout of 0 turns
    resumption off."""
    inst = tls_instance(new_instance, tmp_path, smtpd_tls_security_level="may",
                        smtpd_tls_session_cache_database="btree:${data_directory}/smtpd_scache")
    no_resume = free_port()
    master_cf = inst.config_dir / "master.cf"
    master_cf.write_text(master_cf.read_text() + f"127.0.0.1:{no_resume} inet n - n - - smtpd\n"
                         "  -o smtpd_tls_session_cache_timeout=0\n")
    inst.start()
    ctx = client_context()
    session, reused = _tls_session(ctx, inst.port)
    assert not reused
    _, reused = _tls_session(ctx, inst.port, session)
    assert reused
    session, _ = _tls_session(ctx, no_resume)
    _, reused = _tls_session(ctx, no_resume, session)
    assert not reused
    assert "refusing to run" not in inst.log()
    server = tls_server.ServerTLS.from_config(config.Config(str(tmp_path), {
        "smtpd_tls_cert_file": str(tmp_path / "cert.pem"),
        "smtpd_tls_key_file": str(tmp_path / "key.pem"), "smtpd_tls_security_level": "may",
        "smtpd_tls_session_cache_timeout": "2h"})).context
    assert server is not None and openssl.session_timeout(server) == 7200


def test_session_timeout_out_of_reach_does_not_stop_tls(tmp_path: Path, monkeypatch,  # type: ignore[no-untyped-def]
                                                        capsys) -> None:
    """Where this Python's ssl internals cannot be reached (another build, another
    layout) the session timeout is logged as not applied; TLS itself still runs."""
    cert, key = make_cert(tmp_path)

    def unsupported(context: object, seconds: int) -> None:
        raise openssl.Unsupported("no SSL_CTX where expected")

    monkeypatch.setattr(openssl, "set_session_timeout", unsupported)
    server = tls_server.ServerTLS.from_config(config.Config(str(tmp_path), {
        "smtpd_tls_cert_file": str(cert), "smtpd_tls_key_file": str(key),
        "smtpd_tls_security_level": "may"})).context
    assert server is not None
