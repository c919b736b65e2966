"""smtpd's TLS: the server side of STARTTLS and of smtps, from Postfix's smtpd_tls_* settings.

``ServerTLS.from_config(config)`` reads them once per process:

* the level: smtpd_tls_security_level (``none``, ``may``: STARTTLS offered,
  ``encrypt``: required before MAIL), else the obsolete smtpd_enforce_tls
  (encrypt) and smtpd_use_tls (may); smtpd_tls_wrappermode (smtps, port 465:
  TLS from the first byte) needs a certificate as encrypt does;
* the certificate: smtpd_tls_chain_files (PEM files each holding a key and its
  chain), else smtpd_tls_cert_file with smtpd_tls_key_file;
* protocols and ciphers: at ``encrypt`` the mandatory ones
  (smtpd_tls_mandatory_protocols, smtpd_tls_mandatory_ciphers, plus
  smtpd_tls_mandatory_exclude_ciphers), else smtpd_tls_protocols and
  smtpd_tls_ciphers; smtpd_tls_exclude_ciphers at every level. A protocols
  setting is read by the client's parser (``pymailsys.smtp.tls.protocol_range``:
  ``>=TLSv1.2``, ``!SSLv3``, ``TLSv1.2 TLSv1.3``); a cipher grade is the
  OpenSSL string of its ``tls_GRADE_cipherlist`` parameter, less the
  exclusions (``cipher_list``);
* smtpd_tls_auth_only (implied by encrypt, as in Postfix),
  smtpd_tls_received_header, smtpd_tls_loglevel,
  smtpd_starttls_timeout.

``context`` is None when TLS is off. A level that requires TLS without a
usable certificate, an unknown protocol or cipher grade is ``ValueError``
(smtpd refuses to start); at ``may`` a certificate that is missing or cannot
be loaded turns TLS off with a warning (``disabling TLS support``), as in
Postfix.

``summary(ssl_object, client)`` is Postfix's ``Anonymous TLS connection
established from ...`` line and ``received_comment`` the text that
smtpd_tls_received_header adds to Received:.
"""

from __future__ import annotations

import ssl
import warnings
from dataclasses import dataclass

from pymailsys import config as config_mod
from pymailsys import log
from pymailsys.smtp import tls

LEVELS = ("none", "may", "encrypt")
GRADES = {"high": "tls_high_cipherlist", "medium": "tls_medium_cipherlist",
          "low": "tls_low_cipherlist", "export": "tls_export_cipherlist",
          "null": "tls_null_cipherlist"}


@dataclass(frozen=True)
class ServerTLS:
    level: str  # none, may, encrypt
    wrappermode: bool
    context: ssl.SSLContext | None
    auth_only: bool
    received_header: bool
    loglevel: int
    handshake_timeout: float

    @property
    def required(self) -> bool:
        """TLS before mail: encrypt, or smtps (wrapper mode)."""
        return self.context is not None and (self.level == "encrypt" or self.wrappermode)

    @classmethod
    def off(cls) -> ServerTLS:
        return cls("none", False, None, False, False, 0, 300.0)

    @classmethod
    def from_config(cls, config: config_mod.Config) -> ServerTLS:
        level = config.get("smtpd_tls_security_level").strip().lower()
        if not level:
            level = ("encrypt" if config.get_bool("smtpd_enforce_tls")
                     else "may" if config.get_bool("smtpd_use_tls") else "none")
        if level not in LEVELS:
            raise ValueError(f"invalid smtpd_tls_security_level value: {level}")
        wrappermode = config.get_bool("smtpd_tls_wrappermode")
        context = None
        if level != "none" or wrappermode:
            context = _context(config, mandatory=level == "encrypt" or wrappermode,
                               required=level == "encrypt" or wrappermode)
        loglevel = config.get_int("smtpd_tls_loglevel")
        return cls(level if context is not None else "none", wrappermode, context,
                   config.get_bool("smtpd_tls_auth_only") or level == "encrypt",
                   config.get_bool("smtpd_tls_received_header"), loglevel,
                   float(config.get_time("smtpd_starttls_timeout")))


def _context(config: config_mod.Config, mandatory: bool, required: bool) -> ssl.SSLContext | None:
    chain_files = config.get_list("smtpd_tls_chain_files")
    cert = config.get("smtpd_tls_cert_file").strip()
    key = config.get("smtpd_tls_key_file").strip() or cert
    if not chain_files and not cert:
        if required:
            raise ValueError("TLS is required (smtpd_tls_security_level = encrypt or "
                             "smtpd_tls_wrappermode) but no server certificate is configured "
                             "(smtpd_tls_chain_files or smtpd_tls_cert_file)")
        log.warning("No server certs available. TLS won't be enabled")
        return None
    prefix = "smtpd_tls_mandatory_" if mandatory else "smtpd_tls_"
    low, high = tls.protocol_range(
        config.get("smtpd_tls_mandatory_protocols" if mandatory else "smtpd_tls_protocols"))
    excludes = config.get_list("smtpd_tls_exclude_ciphers")
    if mandatory:
        excludes += config.get_list("smtpd_tls_mandatory_exclude_ciphers")
    grade = config.get("smtpd_tls_mandatory_ciphers" if mandatory else "smtpd_tls_ciphers")
    ciphers = cipher_list(config, grade, excludes)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with warnings.catch_warnings():  # Postfix's default >=TLSv1 names a deprecated version
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version, context.maximum_version = low, high
    try:
        context.set_ciphers(ciphers)
    except ssl.SSLError as e:
        raise ValueError(f"{prefix}ciphers: no cipher left in \"{ciphers}\": {e}") from None
    try:
        if chain_files:
            for path in chain_files:
                context.load_cert_chain(path)
        else:
            context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as e:
        what = ", ".join(chain_files) if chain_files else f"{cert} / {key}"
        if required:
            raise ValueError(f"cannot load the TLS server certificate from {what}: {e}") \
                from None
        # as Postfix at "may" (Debian's main.cf names a snakeoil pair that may be absent)
        log.warning(f'cannot load the TLS server certificate from "{what}": {e}: '
                    "disabling TLS support")
        return None
    context.options |= ssl.OP_NO_COMPRESSION
    return context


def cipher_list(config: config_mod.Config, grade: str, excludes: list[str]) -> str:
    """The OpenSSL cipher string of a grade (its tls_GRADE_cipherlist) without ``excludes``."""
    grade = grade.strip().lower()
    if grade not in GRADES:
        raise ValueError(f'invalid TLS cipher grade: "{grade}"')
    return config.get(GRADES[grade]) + "".join(f":!{name}" for name in excludes)


def cipher_text(ssl_object: ssl.SSLObject) -> str:
    """``TLSv1.3 with cipher NAME (256/256 bits)``, as Postfix logs it."""
    cipher = ssl_object.cipher()
    name, bits = (cipher[0], cipher[2]) if cipher else ("unknown", 0)
    return f"{ssl_object.version()} with cipher {name} ({bits}/{bits} bits)"


def summary(ssl_object: ssl.SSLObject, client: str) -> str:
    """Postfix's log line for a new TLS session (no client certificate is asked for)."""
    return f"Anonymous TLS connection established from {client}: {cipher_text(ssl_object)}"


def received_comment(ssl_object: ssl.SSLObject) -> str:
    """What smtpd_tls_received_header adds to Received: (after the ``from`` part)."""
    return f"(using {cipher_text(ssl_object)})\n(No client certificate requested)"
