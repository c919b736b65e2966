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
* tls_preempt_cipherlist: the server's cipher order or (no, the default)
  the client's, as in Postfix; smtpd_tls_dh1024_param_file: the DHE
  ciphers' parameters (empty: OpenSSL's choice, as Postfix with OpenSSL 3);
* smtpd_tls_auth_only (implied by encrypt, as in Postfix),
  smtpd_tls_received_header, smtpd_tls_loglevel,
  smtpd_starttls_timeout;
* client certificates (``pymailsys.smtp.client_cert``, ``pymailsys.smtp.openssl``):
  smtpd_tls_ask_ccert
  asks every client for one; smtpd_tls_req_ccert requires a trusted one
  where TLS is required, at level encrypt or in wrapper mode (elsewhere it
  draws Postfix's warning ``Can't require client certs unless TLS is
  required`` and does nothing, as in Postfix); smtpd_tls_CAfile and
  smtpd_tls_CApath are what a certificate must verify against to be
  trusted (the CAfile's names are not sent as the list of acceptable CAs,
  which Python cannot set); smtpd_tls_fingerprint_digest names the digest
  of the fingerprints. While asking, aNULL ciphers are excluded, as Postfix.

Session resumption: Postfix shares a server session cache between its
smtpd processes through tlsmgr (smtpd_tls_session_cache_database) and
issues RFC 5077 session tickets. Python's ssl module cannot share a server
cache between processes, so smtpd_tls_session_cache_database is accepted
and not opened: each smtpd process resumes the sessions of its own OpenSSL
cache and of the tickets it issued (their key is the process's own, which
Python cannot share either), so a client resumes only with the process it
met before. smtpd_tls_session_cache_timeout is obeyed (SSL_CTX_set_timeout, through
``pymailsys.smtp.openssl``: how long a cached session or a ticket resumes);
0 turns resumption off (no tickets, no cache), as in Postfix. Where this
Python's ssl module cannot be reached that way (``openssl.Unsupported``) the
timeout is logged as not applied and TLS runs on: a session's lifetime is
not a security setting, so it never stops TLS (client certificates, which
are, refuse instead).

``context`` is None when TLS is off. A level that requires TLS without a
usable certificate, an unknown protocol or cipher grade is ``ValueError``
(smtpd refuses to start); at ``may`` a certificate that is missing or cannot
be loaded turns TLS off with a warning (``disabling TLS support``), as in
Postfix.

``peer(ssl_object)`` gives what smtpd keeps of a session (``SessionTLS``:
protocol, cipher, its bits, the client certificate if asked for and sent);
``summary(peer, client)`` is Postfix's ``Anonymous``/``Untrusted``/
``Trusted TLS connection established from ...`` line, ``cert_line`` the
smtpd_tls_loglevel 2 line naming the certificate, and ``received_comment``
the text that smtpd_tls_received_header adds to Received:.
"""

from __future__ import annotations

import asyncio
import ssl
import warnings
from dataclasses import dataclass

from pymailsys import config as config_mod
from pymailsys import log
from pymailsys.smtp import client_cert, openssl, tls

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
    ask_ccert: bool = False
    req_ccert: bool = False  # a trusted client certificate or no session (TLS required)
    fingerprint_digest: str = "sha256"

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
        req_ccert = config.get_bool("smtpd_tls_req_ccert")
        if req_ccert and level != "encrypt" and not wrappermode:  # TLS is not required
            log.warning("Can't require client certs unless TLS is required")
            req_ccert = False
        ask_ccert = config.get_bool("smtpd_tls_ask_ccert") or req_ccert
        digest = config.get("smtpd_tls_fingerprint_digest").strip().lower()
        if digest not in client_cert.DIGESTS:
            raise ValueError(f"invalid smtpd_tls_fingerprint_digest value: {digest}")
        context = None
        if level != "none" or wrappermode:
            context = _context(config, mandatory=level == "encrypt" or wrappermode,
                               required=level == "encrypt" or wrappermode, ask_ccert=ask_ccert)
        loglevel = config.get_int("smtpd_tls_loglevel")
        return cls(level if context is not None else "none", wrappermode, context,
                   config.get_bool("smtpd_tls_auth_only") or level == "encrypt",
                   config.get_bool("smtpd_tls_received_header"), loglevel,
                   float(config.get_time("smtpd_starttls_timeout")),
                   ask_ccert and context is not None, req_ccert and context is not None, digest)

    def peer(self, ssl_object: ssl.SSLObject) -> SessionTLS:
        """What the session keeps of its TLS: protocol, cipher, the client certificate."""
        cipher = ssl_object.cipher()
        cert = client_cert.read(ssl_object, self.fingerprint_digest) if self.ask_ccert \
            else None
        return SessionTLS(ssl_object.version() or "", cipher[0] if cipher else "unknown",
                          cipher[2] if cipher else 0, self.ask_ccert, cert)


@dataclass(frozen=True)
class SessionTLS:
    """One session's TLS, as the log, Received:, restrictions and policy requests see it."""

    protocol: str
    cipher: str
    bits: int
    asked: bool  # a client certificate was asked for
    cert: client_cert.ClientCert | None

    @property
    def trusted(self) -> bool:
        return self.cert is not None and self.cert.trusted


def _context(config: config_mod.Config, mandatory: bool, required: bool,
             ask_ccert: bool) -> ssl.SSLContext | None:
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
    if ask_ccert:  # as Postfix: a client certificate needs an authenticated server
        excludes.append("aNULL")
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
    _dh_parameters(context, config)
    # tls_preempt_cipherlist: Python turns server preference on by default; Postfix's
    # default (no) lets the client's order decide
    if config.get_bool("tls_preempt_cipherlist"):
        context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    else:
        context.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    _session_resumption(context, config)
    if ask_ccert:
        cafile = config.get("smtpd_tls_CAfile").strip()
        capath = config.get("smtpd_tls_CApath").strip()
        if cafile or capath:
            try:
                context.load_verify_locations(cafile or None, capath or None)
            except (OSError, ssl.SSLError) as e:
                log.warning(f"cannot load Certification Authority data from "
                            f"{cafile or capath}: {e}")  # as Postfix: nothing is trusted then
        try:
            openssl.accept_any_certificate(context)
        except openssl.Unsupported as e:
            raise ValueError(f"smtpd_tls_ask_ccert/smtpd_tls_req_ccert: {e}") from None
    return context


def _dh_parameters(context: ssl.SSLContext, config: config_mod.Config) -> None:
    """smtpd_tls_dh1024_param_file: the FFDHE parameters of the DHE ciphers, from the
    file, else (empty, ``auto``, or a file that cannot be loaded, with Postfix's
    warning) chosen by OpenSSL, as Postfix with OpenSSL 3."""
    path = config.get("smtpd_tls_dh1024_param_file").strip()
    if path and path != "auto":
        try:
            context.load_dh_params(path)
            return
        except ssl.SSLError:
            log.warning(f'error decoding DH parameters from file "{path}" '
                        "-- using compiled-in defaults")
        except OSError as e:
            log.warning(f'error opening DH parameter file "{path}": '
                        f"{e.strerror or e} -- using compiled-in defaults")
    try:
        openssl.dh_auto(context)
    except openssl.Unsupported as e:
        # a cipher family less, not a weaker one: TLS goes on with ECDHE and TLS 1.3
        log.warning(f"error configuring auto DH parameters: {e}: no DHE cipher")


def _session_resumption(context: ssl.SSLContext, config: config_mod.Config) -> None:
    """smtpd_tls_session_cache_timeout: how long a session can be resumed (0: never)."""
    config.get("smtpd_tls_session_cache_database")  # not opened: see the module docstring
    timeout = config.get_time("smtpd_tls_session_cache_timeout")
    try:
        if timeout > 0:
            openssl.set_session_timeout(context, timeout)
        else:
            context.options |= ssl.OP_NO_TICKET
            context.num_tickets = 0
            openssl.session_cache_off(context)
    except openssl.Unsupported as e:
        # session lifetime is not a security setting: TLS must not stop for it
        log.warning(f"smtpd_tls_session_cache_timeout = {timeout}: {e}; "
                    f"OpenSSL's own session timeout applies")


def cipher_list(config: config_mod.Config, grade: str, excludes: list[str]) -> str:
    """The OpenSSL cipher string of a grade (its tls_GRADE_cipherlist) without ``excludes``."""
    grade = grade.strip().lower()
    if grade not in GRADES:
        raise ValueError(f'invalid TLS cipher grade: "{grade}"')
    return config.get(GRADES[grade]) + "".join(f":!{name}" for name in excludes)


def cipher_text(peer: SessionTLS) -> str:
    """``TLSv1.3 with cipher NAME (256/256 bits)``, as Postfix logs it."""
    return f"{peer.protocol} with cipher {peer.cipher} ({peer.bits}/{peer.bits} bits)"


def summary(peer: SessionTLS, client: str) -> str:
    """Postfix's log line for a new TLS session (tls_log_summary)."""
    kind = "Anonymous" if peer.cert is None else "Trusted" if peer.trusted else "Untrusted"
    return f"{kind} TLS connection established from {client}: {cipher_text(peer)}"


def cert_line(peer: SessionTLS, client: str) -> str:
    """smtpd_tls_loglevel 2: the client certificate's names and fingerprints."""
    cert = peer.cert
    assert cert is not None
    return log.printable(f"{client}: subject_CN={cert.subject_cn}, issuer={cert.issuer_cn}, "
                         f"fingerprint={cert.fingerprint}, "
                         f"pkey_fingerprint={cert.pubkey_fingerprint}")


def log_accept_error(client: str, error: BaseException) -> None:
    """Postfix's lines for a failed server handshake: ``SSL_accept error from NAME[ADDR]:
    lost connection`` (the client went away), ``: Connection timed out``, or ``: -1``
    and ``warning: TLS library problem: ...`` (OpenSSL refused)."""
    if isinstance(error, (ssl.SSLEOFError, ssl.SSLZeroReturnError, ConnectionResetError,
                          BrokenPipeError, asyncio.IncompleteReadError)):
        log.info(f"SSL_accept error from {client}: lost connection")
    elif isinstance(error, ssl.SSLError):
        log.info(f"SSL_accept error from {client}: -1")
        log.warning(f"TLS library problem: {log.printable(str(error))}")
    elif isinstance(error, TimeoutError) or "taking longer" in str(error):
        log.info(f"SSL_accept error from {client}: Connection timed out")
    else:
        reason = getattr(error, "strerror", None) or str(error) or "lost connection"
        log.info(f"SSL_accept error from {client}: {log.printable(reason)}")


def received_comment(peer: SessionTLS) -> str:
    """What smtpd_tls_received_header adds to Received: (after the ``from`` part)."""
    cert = peer.cert
    if cert is not None:
        verified = "verified OK" if cert.trusted else "not verified"
        who = f'(Client CN "{_comment_safe(cert.subject_cn)}", Issuer ' \
              f'"{_comment_safe(cert.issuer_cn)}" ({verified}))'
    elif peer.asked:
        who = "(Client did not present a certificate)"
    else:
        who = "(No client certificate requested)"
    return f"(using {cipher_text(peer)})\n{who}"


def _comment_safe(text: str) -> str:
    """Postfix's comment_sanitize, roughly: printable, no quotes, parentheses or backslash."""
    return log.printable(text).translate(str.maketrans("", "", '"()\\'))
