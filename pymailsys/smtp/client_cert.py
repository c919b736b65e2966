"""SMTP client certificates on smtpd's side, as Postfix asks for and reads them.

NAME
    client_cert - ask for a client certificate, keep any, tell trusted from untrusted

SYNOPSIS
    client_cert.ask(context)                      # smtpd_tls_ask_ccert / _req_ccert
    peer = client_cert.read(ssl_object, "sha256")  # after the handshake: ClientCert | None

DESCRIPTION
    Postfix asks with SSL_VERIFY_PEER and a verify callback that accepts every
    certificate; afterwards SSL_get_verify_result says whether it was verified
    against smtpd_tls_CAfile/CApath ("Trusted") or not ("Untrusted"). An
    untrusted certificate still carries a fingerprint, which is what
    relay_clientcerts and check_ccert_access match. Python's ssl module has
    no verify callback: with CERT_OPTIONAL a certificate that does not verify
    ends the handshake. ``ask`` therefore sets Postfix's callback on the
    context's SSL_CTX with ctypes, from the libssl this process's ssl module
    is linked with; ``read`` asks that libssl for the verify result of the
    connection. Both pointers are checked before use (the SSL_CTX must report
    the verify mode just set, an SSL must belong to that SSL_CTX); when the
    check fails, ``ask`` raises ``Unsupported`` (smtpd refuses the setting)
    and ``read`` calls the certificate untrusted.

    ``read`` gives Postfix's facts of a certificate: the subject and issuer
    CommonName (the issuer's organization when it has no CN), the
    fingerprint of the DER certificate and of its public key (DER
    SubjectPublicKeyInfo) with smtpd_tls_fingerprint_digest, written as
    Postfix does (``AB:CD:...``, upper case), and whether it is trusted. The
    certificate is parsed with ``cryptography``.

REFUSES
    ``digest`` names other than md5, sha1, sha224, sha256, sha384, sha512
    (``ValueError``).
"""

from __future__ import annotations

import ctypes
import hashlib
import ssl
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import NameOID

DIGESTS = ("md5", "sha1", "sha224", "sha256", "sha384", "sha512")
_SSL_VERIFY_PEER = 1
_X509_V_OK = 0
# CPython's _ssl objects: PySSLContext holds its SSL_CTX right after the object head,
# PySSLSocket its SSL after one more pointer (the weak reference to its socket).
_HEAD = object.__basicsize__
_SSL_OFFSET = _HEAD + ctypes.sizeof(ctypes.c_void_p)


class Unsupported(Exception):
    """This Python's ssl module cannot be given a verify callback."""


@dataclass(frozen=True)
class ClientCert:
    subject_cn: str
    issuer_cn: str
    fingerprint: str
    pubkey_fingerprint: str
    trusted: bool
    verify_error: str = ""  # OpenSSL's reason when not trusted


_VerifyCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_void_p)


def _accept_any(preverify_ok: int, store: int | None) -> int:
    return 1  # Postfix's tls_verify_certificate_callback: judge later, by the verify result


_ACCEPT_ANY = _VerifyCallback(_accept_any)  # kept alive for the process's lifetime
_libssl: ctypes.CDLL | None = None


def _openssl() -> ctypes.CDLL:
    """The libssl that Python's _ssl module is linked with (found in /proc/self/maps)."""
    global _libssl
    if _libssl is not None:
        return _libssl
    path = ""
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            for line in maps:
                name = line.rstrip("\n").rpartition(" ")[2]
                if "/libssl.so" in name:
                    path = name
                    break
    except OSError:
        pass
    if not path:
        raise Unsupported("cannot find the libssl of Python's ssl module")
    lib = ctypes.CDLL(path)
    lib.OpenSSL_version.argtypes = [ctypes.c_int]
    lib.OpenSSL_version.restype = ctypes.c_char_p
    if lib.OpenSSL_version(0).decode("ascii", "replace") != ssl.OPENSSL_VERSION:
        raise Unsupported(f"{path} is not the OpenSSL of Python's ssl module")
    lib.SSL_CTX_set_verify.argtypes = [ctypes.c_void_p, ctypes.c_int, _VerifyCallback]
    lib.SSL_CTX_set_verify.restype = None
    lib.SSL_CTX_get_verify_mode.argtypes = [ctypes.c_void_p]
    lib.SSL_CTX_get_verify_mode.restype = ctypes.c_int
    lib.SSL_get_SSL_CTX.argtypes = [ctypes.c_void_p]
    lib.SSL_get_SSL_CTX.restype = ctypes.c_void_p
    lib.SSL_get_verify_result.argtypes = [ctypes.c_void_p]
    lib.SSL_get_verify_result.restype = ctypes.c_long
    lib.X509_verify_cert_error_string.argtypes = [ctypes.c_long]
    lib.X509_verify_cert_error_string.restype = ctypes.c_char_p
    _libssl = lib
    return lib


def _pointer(obj: object, offset: int = _HEAD) -> int:
    return ctypes.c_void_p.from_address(id(obj) + offset).value or 0


def ask(context: ssl.SSLContext) -> None:
    """Make ``context`` ask every client for a certificate and keep any it gets."""
    context.verify_mode = ssl.CERT_OPTIONAL  # last: Python's setter drops a callback
    lib = _openssl()
    ctx = _pointer(context)
    if not ctx or lib.SSL_CTX_get_verify_mode(ctx) != _SSL_VERIFY_PEER:
        raise Unsupported("cannot reach the SSL_CTX of Python's SSLContext")
    lib.SSL_CTX_set_verify(ctx, _SSL_VERIFY_PEER, _ACCEPT_ANY)
    _asking[id(context)] = ctx


_asking: dict[int, int] = {}  # id(SSLContext) -> its SSL_CTX, for the check in read()


def read(ssl_object: ssl.SSLObject, digest: str) -> ClientCert | None:
    """The client's certificate (None when it sent none)."""
    der = ssl_object.getpeercert(binary_form=True)
    if not der:
        return None
    cert = x509.load_der_x509_certificate(der)
    spki = cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    trusted, error = _verify_result(ssl_object)
    return ClientCert(
        subject_cn=_name_text(cert.subject, (NameOID.COMMON_NAME,)),
        issuer_cn=_name_text(cert.issuer, (NameOID.COMMON_NAME, NameOID.ORGANIZATION_NAME)),
        fingerprint=fingerprint(der, digest), pubkey_fingerprint=fingerprint(spki, digest),
        trusted=trusted, verify_error=error)


def _verify_result(ssl_object: ssl.SSLObject) -> tuple[bool, str]:
    ctx = _asking.get(id(ssl_object.context))
    inner = getattr(ssl_object, "_sslobj", None)
    if ctx is None or inner is None or _libssl is None:
        return False, "verify result unavailable"
    ssl_ptr = _pointer(inner, _SSL_OFFSET)
    if not ssl_ptr or _libssl.SSL_get_SSL_CTX(ssl_ptr) != ctx:
        return False, "verify result unavailable"
    result = _libssl.SSL_get_verify_result(ssl_ptr)
    if result == _X509_V_OK:
        return True, ""
    return False, (_libssl.X509_verify_cert_error_string(result) or b"").decode("ascii",
                                                                                 "replace")


def _name_text(name: x509.Name, oids: tuple[x509.ObjectIdentifier, ...]) -> str:
    for oid in oids:
        values = name.get_attributes_for_oid(oid)
        if values:
            value = values[0].value
            return value if isinstance(value, str) else value.decode("utf-8", "replace")
    return ""


def fingerprint(data: bytes, digest: str) -> str:
    """Postfix's fingerprint text: the digest in upper-case hex pairs joined by ':'."""
    if digest.lower() not in DIGESTS:
        raise ValueError(f"unsupported fingerprint digest: {digest}")
    return hashlib.new(digest.lower(), data).digest().hex(":").upper()
