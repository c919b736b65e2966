"""Client TLS policy: which security level a destination gets, and how its server is judged.

NAME
    tls - the smtp/lmtp client's TLS policy, as Postfix's smtp_tls_* settings

SYNOPSIS
    client_tls = tls.ClientTls.from_config(config, "smtp")   # or "lmtp"
    policy = client_tls.policy("example.com")   # tls.Policy; PolicyError
    context = policy.context()                  # ssl.SSLContext for start_tls
    ok = policy.matches(peer_cert, hostname, nexthop_domain)
    text = tls.summary("Verified", "mx.example.com[192.0.2.1]:25", ssl_object)

DESCRIPTION
    ``ClientTls.policy`` gives the policy of one nexthop, as Postfix's
    smtp_tls_sess_alloc: the first of ``<prefix>_tls_policy_maps`` to find
    the nexthop (verbatim, e.g. ``[relay.example]:587``; a bare domain is
    also looked up as its parent domains ``.example.com``, ``.com``),
    otherwise the global ``<prefix>_tls_security_level`` (when that is empty,
    the obsolete ``<prefix>_enforce_tls = yes`` means verify, or encrypt with
    ``<prefix>_tls_enforce_peername = no``, and ``<prefix>_use_tls = yes``
    means may, as Postfix's smtp_tls_policy.c). A table entry is
    ``level [match=name:name...] [protocols=...] [ciphers=...] [exclude=...]
    [servername=...]``.

    SNI, as Postfix 3.4+: the TLS server name goes in the handshake only when
    ``<prefix>_tls_servername`` (or a table entry's ``servername=``) is set:
    ``hostname`` sends the server's name (the MX host), ``nexthop`` the
    nexthop domain, anything else that very name (``Policy.sni``); a name
    that is not a valid hostname makes the policy "client TLS configuration
    problem". Postfix sends no SNI by default, and neither does pymailsys.

    Levels: ``none`` (no STARTTLS), ``may`` (STARTTLS when offered, no
    verification), ``encrypt`` (TLS required, no verification), ``verify``
    (TLS required, the certificate chain must be trusted - smtp_tls_CAfile,
    smtp_tls_CApath; the system's CAs are not used, as Postfix with
    tls_append_default_CA = no - and a DNS name of the certificate must
    match smtp_tls_verify_cert_match, default ``hostname``) and ``secure``
    (the same with smtp_tls_secure_cert_match, default ``nexthop,
    dot-nexthop``). ``dane`` without DNSSEC (pymailsys has no validating
    resolver) is ``may``, as Postfix's documented fallback when DNSSEC is
    not available; ``dane-only`` and ``fingerprint`` are refused by the
    parameter table (the service refuses to run) and, from a policy table,
    are a configuration problem for that destination.

    Match patterns (``match=`` separated by ``:``): ``hostname`` (the
    server's name, e.g. the MX host), ``nexthop`` (the nexthop domain),
    ``dot-nexthop`` (any subdomain of it), a name, or ``.domain`` (any
    subdomain). A certificate's names are its DNS subjectAltNames, else its
    CommonName; ``*.example.com`` stands for one label.

    Protocols (``<prefix>_tls_protocols`` at ``may``,
    ``<prefix>_tls_mandatory_protocols`` above): ``>=TLSv1.2``,
    ``<=TLSv1.3``, ``!SSLv2, !SSLv3, !TLSv1``, or names to allow, separated
    by commas, spaces or colons. Ciphers: the grades ``high``, ``medium``,
    ``low`` and ``export`` are the OpenSSL lists tls_high_cipherlist,
    tls_medium_cipherlist, tls_low_cipherlist and tls_export_cipherlist (as
    smtpd's); ``null`` never. Cipher exclusions (``!name`` appended to the
    list, as Postfix's tls_set_ciphers): ``<prefix>_tls_exclude_ciphers``,
    and from ``encrypt`` up ``<prefix>_tls_mandatory_exclude_ciphers`` too,
    unless the table's ``exclude=`` replaces them; ``eNULL`` at encrypt,
    ``aNULL`` at verify and secure (set_cipher_grade).

    ``summary`` is Postfix's log line (smtp_tls_loglevel >= 1): ``Untrusted
    TLS connection established to host[addr]:25: TLSv1.3 with cipher
    TLS_AES_256_GCM_SHA384 (256/256 bits)``; ``Trusted`` when the chain
    verified, ``Verified`` when the name matched too, ``Anonymous`` with no
    certificate. At ``may`` and ``encrypt`` the handshake verifies nothing
    (a certificate that does not verify must not stop it, and Python's ssl
    cannot verify without failing the handshake); when the line is logged
    and smtp_tls_CAfile or smtp_tls_CApath is set, ``chain_trusted`` checks
    the chain the peer sent afterwards, as Postfix does at those levels,
    with ``openssl verify`` (those CAs only, purpose sslserver, under
    VERIFY_TIMEOUT): ``Trusted`` when it verifies, else ``Untrusted``.

REFUSES
    A policy table entry with an unknown level or attribute, a repeated or
    empty attribute, ``match=`` below ``verify``, or a protocol or cipher
    grade it cannot express: ``PolicyError`` "client TLS configuration
    problem" (4.7.5), with Postfix's warning logged; a table that cannot
    answer: "Temporary lookup error" (4.3.0).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ssl
import tempfile
import warnings
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from pymailsys import log
from pymailsys.address.resolve import valid_hostname
from pymailsys.config import Config, params, split_list
from pymailsys.maps import Maps, TableError

LEVELS = ("none", "may", "encrypt", "dane", "dane-only", "fingerprint", "verify", "secure")
VERIFYING = ("verify", "secure")
_UNSUPPORTED = ("dane-only", "fingerprint")

_VERSIONS = {"SSLv2": 0, "SSLv3": 1, "TLSv1": 2, "TLSv1.1": 3, "TLSv1.2": 4, "TLSv1.3": 5}
_SSL_VERSIONS = {2: ssl.TLSVersion.TLSv1, 3: ssl.TLSVersion.TLSv1_1, 4: ssl.TLSVersion.TLSv1_2,
                 5: ssl.TLSVersion.TLSv1_3}
GRADES = ("high", "medium", "low", "export")  # each the OpenSSL list tls_<grade>_cipherlist


def _default_cipherlists() -> dict[str, str]:
    return {grade: params.default_of(f"tls_{grade}_cipherlist") for grade in GRADES}


class PolicyError(Exception):
    """No usable policy for a destination: defer with ``text`` and ``dsn``."""

    def __init__(self, text: str, dsn: str) -> None:
        super().__init__(text)
        self.text = text
        self.dsn = dsn


def _bad_policy() -> PolicyError:
    return PolicyError("client TLS configuration problem", "4.7.5")


def protocol_range(spec: str) -> tuple[ssl.TLSVersion, ssl.TLSVersion]:
    """The lowest and highest TLS version a protocol list allows (ValueError)."""
    allowed = set(_VERSIONS.values())
    included: set[int] = set()
    for word in spec.replace(":", " ").replace(",", " ").split():
        for op in (">=", "<=", "!", ""):
            if word.startswith(op):
                name = word[len(op):]
                break
        if name not in _VERSIONS:
            raise ValueError(f'invalid TLS protocol "{word}"')
        number = _VERSIONS[name]
        if op == ">=":
            allowed = {v for v in allowed if v >= number}
        elif op == "<=":
            allowed = {v for v in allowed if v <= number}
        elif op == "!":
            allowed.discard(number)
        else:
            included.add(number)
    if included:
        allowed &= included
    usable = sorted(v for v in allowed if v in _SSL_VERSIONS)
    if not usable:
        raise ValueError(f'no TLS protocol left in "{spec}"')
    return _SSL_VERSIONS[usable[0]], _SSL_VERSIONS[usable[-1]]


@functools.cache
def _context(verify: bool, protocols: str, ciphers: str, ca_file: str,
             ca_path: str) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False  # names are matched by Policy.matches, as Postfix does
    context.verify_mode = ssl.CERT_REQUIRED if verify else ssl.CERT_NONE
    lowest, highest = protocol_range(protocols)
    with warnings.catch_warnings():  # TLSv1 and TLSv1.1 are deprecated names; still honoured
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = lowest
        context.maximum_version = highest
    if not ciphers:
        raise ValueError("no cipher list")
    context.set_ciphers(ciphers)
    if verify and (ca_file or ca_path):
        context.load_verify_locations(cafile=ca_file or None, capath=ca_path or None)
    return context


@dataclass(frozen=True)
class Policy:
    """One destination's TLS policy."""

    level: str = "none"
    matches_wanted: tuple[str, ...] = ()
    protocols: str = ""
    grade: str = "medium"
    ca_file: str = ""
    ca_path: str = ""
    loglevel: int = 0
    ciphers: str = ""  # the grade's OpenSSL cipher list (tls_<grade>_cipherlist)
    servername: str = ""  # smtp_tls_servername or servername=: "", hostname, nexthop or a name

    @property
    def required(self) -> bool:
        return self.level in ("encrypt", *VERIFYING)

    @property
    def verifies(self) -> bool:
        return self.level in VERIFYING

    def context(self) -> ssl.SSLContext:
        """The SSL context for this policy (cached per process)."""
        return _context(self.verifies, self.protocols, self.ciphers, self.ca_file, self.ca_path)

    def sni(self, hostname: str, nexthop: str) -> str | None:
        """The name to send in the handshake (None: no SNI), as Postfix's tls_auth_enable:
        ``hostname`` is the server's name, ``nexthop`` the nexthop domain; a name that is
        not ASCII goes as its A-label."""
        name = {"hostname": hostname, "nexthop": nexthop}.get(self.servername,
                                                            self.servername)
        if not name:
            return None
        if not name.isascii():
            try:
                name = name.encode("idna").decode("ascii")
            except UnicodeError:
                pass
        return name

    def matches(self, cert: dict[str, Any], hostname: str, nexthop: str) -> bool:
        """Whether a verified certificate names the server as the match patterns ask."""
        names = cert_names(cert)
        for pattern in self.matches_wanted:
            want = pattern.lower()
            if want == "hostname":
                targets = [hostname]
            elif want == "nexthop":
                targets = [nexthop]
            elif want == "dot-nexthop":
                targets = ["." + nexthop]
            else:
                targets = [want]
            if any(_name_matches(t.lower().rstrip("."), n) for t in targets if t for n in names):
                return True
        return False


def cert_names(cert: dict[str, Any]) -> list[str]:
    """The DNS subjectAltNames of a certificate (``getpeercert()``), else its CommonName."""
    names = [value.lower().rstrip(".") for kind, value in cert.get("subjectAltName", ())
             if kind == "DNS"]
    if names:
        return names
    return [value.lower() for rdn in cert.get("subject", ()) for key, value in rdn
            if key == "commonName"]


def _name_matches(pattern: str, name: str) -> bool:
    if pattern.startswith("."):
        return name.endswith(pattern) and len(name) > len(pattern)
    if name == pattern:
        return True
    return name.startswith("*.") and "." in pattern and pattern.split(".", 1)[1] == name[2:]


OPENSSL = "openssl"
VERIFY_TIMEOUT = 10.0  # seconds for openssl verify


async def chain_trusted(tls: ssl.SSLObject, ca_file: str, ca_path: str) -> bool:
    """Whether the certificate chain the peer sent, taken unverified in the handshake,
    verifies against ca_file and ca_path (False when there are none or it cannot tell)."""
    chain = _peer_chain(tls)
    if not chain or not (ca_file or ca_path):
        return False
    args = [OPENSSL, "verify", "-purpose", "sslserver", "-no-CAstore",
            *(["-CAfile", ca_file] if ca_file else ["-no-CAfile"]),
            *(["-CApath", ca_path] if ca_path else ["-no-CApath"])]
    with tempfile.NamedTemporaryFile("w", suffix=".pem") as untrusted:
        if len(chain) > 1:
            untrusted.write("".join(chain[1:]))
            untrusted.flush()
            args += ["-untrusted", untrusted.name]
        try:
            proc = await asyncio.create_subprocess_exec(
                *args, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL)
        except OSError:
            return False
        try:
            await asyncio.wait_for(proc.communicate(chain[0].encode()), VERIFY_TIMEOUT)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            return False
    return proc.returncode == 0


def _peer_chain(tls: ssl.SSLObject) -> list[str]:
    """The peer's certificates in PEM, leaf first (only the leaf where the ssl module
    cannot give the chain: before Python 3.13 the chain is a private method)."""
    get_chain = (getattr(tls, "get_unverified_chain", None)
                 or getattr(getattr(tls, "_sslobj", None), "get_unverified_chain", None))
    if get_chain is not None:
        certs = get_chain() or []
        pems = [c if isinstance(c, str) else ssl.DER_cert_to_PEM_cert(c) if isinstance(c, bytes)
                else c.public_bytes(1) for c in certs]  # 1: _ssl.ENCODING_PEM
        if pems:
            return pems
    leaf = tls.getpeercert(binary_form=True)
    return [ssl.DER_cert_to_PEM_cert(leaf)] if leaf else []


def summary(trust: str, relay: str, tls: ssl.SSLObject) -> str:
    cipher = tls.cipher() or ("", "", 0)
    return (f"{trust} TLS connection established to {relay}: {tls.version()} with cipher "
            f"{cipher[0]} ({cipher[2]}/{cipher[2]} bits)")


@dataclass(frozen=True)
class ClientTls:
    """The smtp_tls_* (or lmtp_tls_*) settings of one delivery agent."""

    prefix: str
    level: str
    verify_match: tuple[str, ...]
    secure_match: tuple[str, ...]
    protocols: str
    mandatory_protocols: str
    ciphers: str
    mandatory_ciphers: str
    ca_file: str
    ca_path: str
    loglevel: int
    policy_maps: Maps | None
    exclude: str = ""  # <prefix>_tls_exclude_ciphers
    mandatory_exclude: str = ""  # <prefix>_tls_mandatory_exclude_ciphers
    servername: str = ""  # <prefix>_tls_servername
    cipherlists: dict[str, str] = field(default_factory=_default_cipherlists)  # grade -> list

    @classmethod
    def from_config(cls, config: Config, prefix: str) -> ClientTls:
        def get(suffix: str) -> str:
            return config.get(f"{prefix}_{suffix}").strip()

        def flag(suffix: str) -> bool:
            return config.get_bool(f"{prefix}_{suffix}")

        level = get("tls_security_level").lower()
        if not level:  # Postfix's smtp_tls_policy.c: the obsolete parameters decide
            if flag("enforce_tls"):
                level = "verify" if flag("tls_enforce_peername") else "encrypt"
            else:
                level = "may" if flag("use_tls") else "none"
        if level == "dane":
            log.warning(f"{prefix}_tls_security_level = dane: DNSSEC is not available "
                        f"(no validating resolver): using security level \"may\"")
            level = "may"
        maps = Maps(config, None, split_list(get("tls_policy_maps")))
        return cls(prefix, level,
                   tuple(split_list(get("tls_verify_cert_match").replace(":", " "))),
                   tuple(split_list(get("tls_secure_cert_match").replace(":", " "))),
                   get("tls_protocols"), get("tls_mandatory_protocols"),
                   get("tls_ciphers").lower(), get("tls_mandatory_ciphers").lower(),
                   get("tls_CAfile"), get("tls_CApath"),
                   int(get("tls_loglevel") or 0),
                   maps if maps else None,
                   get("tls_exclude_ciphers"), get("tls_mandatory_exclude_ciphers"),
                   get("tls_servername"),
                   {grade: config.get(f"tls_{grade}_cipherlist").strip() for grade in GRADES})

    def policy(self, nexthop: str) -> Policy:
        """The policy for a request's nexthop; PolicyError (see the module docstring)."""
        level, protocols, grade, servername = self.level, "", "", ""
        exclude: str | None = None
        matches: tuple[str, ...] = ()
        found = self._lookup(nexthop.strip().lower())
        if found is not None:
            level, matches, protocols, grade, exclude, servername = found
        if level in _UNSUPPORTED:
            log.warning(f"{self.prefix}_tls_security_level {level} for {nexthop} is not "
                        f"supported")
            raise _bad_policy()
        if not matches:
            matches = self.verify_match if level == "verify" else self.secure_match \
                if level == "secure" else ()
        if not protocols:
            protocols = self.protocols if level == "may" else self.mandatory_protocols
        if not grade:
            grade = self.ciphers if level == "may" else self.mandatory_ciphers
        if exclude is None:  # as Postfix's set_cipher_grade: the table's replaces these
            exclude = self.exclude if level == "may" else \
                f"{self.exclude} {self.mandatory_exclude}"
        exclude += {"encrypt": " eNULL", "verify": " aNULL", "secure": " aNULL"}.get(level, "")
        ciphers = self.cipherlists.get(grade.lower(), "")
        for word in exclude.replace(":", " ").replace(",", " ").split():
            if word[0] in "!+-@":
                log.warning(f"{self.prefix} TLS policy for {nexthop}: invalid unary '!+-@' in "
                            f"cipher exclusion: {word}")
                raise _bad_policy()
            ciphers += f":!{word}" if ciphers else ""
        if level != "none" and not servername:  # as Postfix's policy_create
            servername = self.servername
            if servername and not valid_hostname(servername):
                log.warning(f'"{self.prefix}_tls_servername = {servername}" specifies an '
                            f"invalid hostname")
                raise _bad_policy()
        policy = Policy(level, tuple(matches), protocols, grade, self.ca_file, self.ca_path,
                        self.loglevel, ciphers, servername)
        if level != "none":
            try:
                policy.context()
            except (ValueError, KeyError, ssl.SSLError, OSError) as e:
                log.warning(f"{self.prefix} TLS policy for {nexthop}: {e}")
                raise _bad_policy() from None
        return policy

    def _lookup(self, site: str) -> _Entry | None:
        """Postfix's tls_policy_lookup: the nexthop, then (for a bare domain) its parents."""
        if self.policy_maps is None:
            return None
        keys = [site]
        if not any(c in site for c in "[]:"):
            keys += ["." + ".".join(site.split(".")[i:]) for i in range(1, site.count(".") + 1)]
        for key in keys:
            where = f"{self.prefix}_tls_policy_maps, next-hop destination \"{key}\""
            try:
                value = self.policy_maps.find(key, partial=key != site)
            except TableError:
                log.warning(f"{where}: policy table lookup error")
                raise PolicyError("Temporary lookup error", "4.3.0") from None
            if value is not None:
                return _parse_entry(value, where)
        return None


class _Entry(NamedTuple):
    """One policy table entry."""

    level: str
    matches: tuple[str, ...]
    protocols: str
    grade: str
    exclude: str | None  # None: not given
    servername: str


def _parse_entry(value: str, where: str) -> _Entry:
    """One policy table entry, checked as Postfix's tls_policy_lookup_one."""
    words = value.replace(",", " ").split()
    if not words:
        log.warning(f"{where}: invalid empty policy")
        raise _bad_policy()
    level = words[0].lower()
    if level not in LEVELS:
        log.warning(f'{where}: invalid security level "{words[0]}"')
        raise _bad_policy()
    if level == "dane":
        level = "may"
    if level == "none":
        for word in words[1:]:
            log.warning(f'{where}: ignoring attribute "{word}" with TLS disabled')
        return _Entry(level, (), "", "", None, "")
    matches: list[str] = []
    protocols = grade = servername = ""
    exclude: str | None = None
    for word in words[1:]:
        name, eq, val = word.partition("=")
        name = name.lower()
        if not eq:
            log.warning(f'{where}: malformed attribute/value pair "{word}": missing "="')
            raise _bad_policy()
        if not val:
            log.warning(f'{where}: attribute "{name}" has empty value')
            raise _bad_policy()
        if name == "match":
            if level not in VERIFYING:
                log.warning(f'{where}: attribute "{name}" invalid at security level "{level}"')
                raise _bad_policy()
            matches += [m for m in val.split(":") if m]
        elif name == "exclude":
            if exclude is not None:
                log.warning(f'{where}: attribute "{name}" is specified multiple times')
                raise _bad_policy()
            exclude = val
        elif name == "servername":
            if servername:
                log.warning(f'{where}: attribute "{name}" is specified multiple times')
                raise _bad_policy()
            if not valid_hostname(val):
                log.warning(f'{where}: "{name}={val}" specifies an invalid hostname')
                raise _bad_policy()
            servername = val
        elif name in ("protocols", "ciphers"):
            if (protocols if name == "protocols" else grade):
                log.warning(f'{where}: attribute "{name}" is specified multiple times')
                raise _bad_policy()
            if name == "protocols":
                protocols = val
            else:
                grade = val.lower()
        else:
            log.warning(f'{where}: invalid attribute name: "{name}"')
            raise _bad_policy()
    return _Entry(level, tuple(matches), protocols, grade, exclude, servername)
