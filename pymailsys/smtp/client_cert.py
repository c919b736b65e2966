"""SMTP client certificates on smtpd's side, as Postfix asks for and reads them.

NAME
    client_cert - what a client certificate says, trusted or not

SYNOPSIS
    openssl.accept_any_certificate(context)        # smtpd_tls_ask_ccert / _req_ccert
    peer = client_cert.read(ssl_object, "sha256")  # after the handshake: ClientCert | None

DESCRIPTION
    Postfix asks with SSL_VERIFY_PEER and a verify callback that accepts every
    certificate; afterwards SSL_get_verify_result says whether it was verified
    against smtpd_tls_CAfile/CApath ("Trusted") or not ("Untrusted"). An
    untrusted certificate still carries a fingerprint, which is what
    relay_clientcerts and check_ccert_access match. Python's ssl module has
    no verify callback: with CERT_OPTIONAL a certificate that does not verify
    ends the handshake. Postfix's callback is therefore set through
    ``pymailsys.smtp.openssl`` (``accept_any_certificate``), and ``read`` asks
    it for the verify result; when OpenSSL cannot be reached as expected,
    the certificate is untrusted.

    ``read`` gives Postfix's facts of a certificate: the subject and issuer
    CommonName (the issuer's organization when it has no CN), the
    fingerprint of the DER certificate and of its public key (DER
    SubjectPublicKeyInfo) with smtpd_tls_fingerprint_digest, written as
    Postfix does (``AB:CD:...``, upper case), and whether it is trusted. The
    certificate is parsed with ``cryptography``, imported on the first
    certificate: it costs every smtpd about 7 MB, and most never see one.

REFUSES
    ``digest`` names other than md5, sha1, sha224, sha256, sha384, sha512
    (``ValueError``).
"""

from __future__ import annotations

import hashlib
import ssl
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pymailsys.smtp import openssl

if TYPE_CHECKING:
    from cryptography import x509

DIGESTS = ("md5", "sha1", "sha224", "sha256", "sha384", "sha512")


@dataclass(frozen=True)
class ClientCert:
    subject_cn: str
    issuer_cn: str
    fingerprint: str
    pubkey_fingerprint: str
    trusted: bool
    verify_error: str = ""  # OpenSSL's reason when not trusted


def read(ssl_object: ssl.SSLObject, digest: str) -> ClientCert | None:
    """The client's certificate (None when it sent none)."""
    der = ssl_object.getpeercert(binary_form=True)
    if not der:
        return None
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
    from cryptography.x509.oid import NameOID

    cert = x509.load_der_x509_certificate(der)
    spki = cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    trusted, error = openssl.verify_result(ssl_object)
    return ClientCert(
        subject_cn=_name_text(cert.subject, (NameOID.COMMON_NAME,)),
        issuer_cn=_name_text(cert.issuer, (NameOID.COMMON_NAME, NameOID.ORGANIZATION_NAME)),
        fingerprint=fingerprint(der, digest), pubkey_fingerprint=fingerprint(spki, digest),
        trusted=trusted, verify_error=error)


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
