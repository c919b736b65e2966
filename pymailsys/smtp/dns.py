"""DNS lookups for the SMTP client, with dnspython's asyncio resolver.

NAME
    dns - MX and address lookups with Postfix's three outcomes

SYNOPSIS
    hosts = await dns.mx_hosts("example.com")     # [(preference, name)], [] = no MX
    addrs = await dns.host_addresses("mx.example.com", families)
    records = await dns.query("2.0.0.127.zen.example", "A")  # dnspython rdata, [] = none

DESCRIPTION
    The resolver reads /etc/resolv.conf as Postfix does (dnspython's
    ``dns.asyncresolver.Resolver``, made once per process; in a network
    namespace ``ip netns exec`` puts that namespace's resolv.conf there).

    At most RR_LIST_LIMIT (100) records of an answer are used, the rest
    dropped with Postfix's warning "DNS record count limit (100) exceeded --
    dropping excess record(s) after qname=N qtype=T", so that a hostile
    domain's answer does not make one delivery try thousands of hosts.

    ``mx_hosts`` returns the MX records sorted by preference, records of
    equal preference in random order (as Postfix shuffles them), ``[]`` when
    the name exists but has no MX records, and ``[(pref, "")]`` for a null
    MX (RFC 7505: a single record whose exchange is the root). Raises
    ``DnsError``: ``permanent`` for a name that does not exist (NXDOMAIN,
    5.4.4), temporary for everything else (SERVFAIL, timeouts, no servers:
    4.4.3), with Postfix's text ``Host or domain name not found. Name service
    error for name=N type=T: Host not found[, try again]``.

    ``host_addresses`` returns the IPv4 and/or IPv6 addresses of a name
    (``families``: "ipv4", "ipv6"), IPv4 first; ``[]`` when the name has
    none of them; an address literal is returned as itself, when its family is
    enabled (else it is a name not found, as Postfix). Errors as above.
    ``native_addresses`` asks the system's name service instead (getaddrinfo,
    which reads /etc/hosts), for smtp_host_lookup = native.

REFUSES
    Nothing: every answer is taken as the resolver gives it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
import socket

import dns.asyncresolver
import dns.exception
import dns.resolver

from pymailsys import log

NOT_FOUND = "Host not found"
RR_LIST_LIMIT = 100  # records kept of one answer (Postfix's var_dns_rr_list_limit)
TRY_AGAIN = "Host not found, try again"

_resolver: dns.asyncresolver.Resolver | None = None


class DnsError(Exception):
    """A lookup failed: permanent (the name does not exist) or temporary."""

    def __init__(self, name: str, rtype: str, permanent: bool, text: str = "",
                 status: str = "") -> None:
        self.name = name
        self.rtype = rtype
        self.permanent = permanent
        self.text = text or (f"Host or domain name not found. Name service error for "
                             f"name={name} type={rtype}: "
                             f"{NOT_FOUND if permanent else TRY_AGAIN}")
        self.status = status  # an enhanced status other than 5.4.4 / 4.4.3
        super().__init__(self.text)

    @property
    def dsn(self) -> str:
        return self.status or ("5.4.4" if self.permanent else "4.4.3")


def resolver() -> dns.asyncresolver.Resolver:
    """The process's resolver, configured from /etc/resolv.conf on first use."""
    global _resolver
    if _resolver is None:
        try:
            _resolver = dns.asyncresolver.Resolver()
        except dns.resolver.NoResolverConfiguration:
            _resolver = dns.asyncresolver.Resolver(configure=False)
    return _resolver


async def query(name: str, rtype: str) -> list:  # type: ignore[type-arg]
    """The records of one type; [] when the name exists without them; else ``DnsError``."""
    try:
        answer = await resolver().resolve(name, rtype, search=False)
    except dns.resolver.NXDOMAIN:
        raise DnsError(name, rtype, permanent=True) from None
    except dns.resolver.NoAnswer:
        return []
    except (dns.resolver.NoNameservers, dns.exception.Timeout, dns.resolver.NoResolverConfiguration,
            dns.exception.DNSException):
        raise DnsError(name, rtype, permanent=False) from None
    return list(answer)


def _limited(records: list, name: str, rtype: str) -> list:  # type: ignore[type-arg]
    """At most RR_LIST_LIMIT records, in answer order, as Postfix's dns_rr_append."""
    if len(records) <= RR_LIST_LIMIT:
        return records
    log.warning(f"DNS record count limit ({RR_LIST_LIMIT}) exceeded -- dropping excess "
                f"record(s) after qname={name} qtype={rtype}")
    return records[:RR_LIST_LIMIT]


async def mx_hosts(domain: str) -> list[tuple[int, str]]:
    """MX records by preference, equal preferences shuffled; see the module docstring."""
    records = _limited(await query(domain, "MX"), domain, "MX")
    by_pref: dict[int, list[str]] = {}
    for rr in records:
        name = rr.exchange.to_text(omit_final_dot=True)
        by_pref.setdefault(int(rr.preference), []).append("" if name in ("", ".") else name)
    out: list[tuple[int, str]] = []
    for pref in sorted(by_pref):
        names = by_pref[pref]
        random.shuffle(names)
        out += [(pref, n) for n in names]
    return out


async def native_addresses(host: str, families: tuple[str, ...] = ("ipv4", "ipv6"),
                           soft: bool = False) -> list[str]:
    """The addresses of a host from the system's name service (getaddrinfo: /etc/hosts,
    then DNS, as nsswitch.conf says), Postfix's smtp_host_lookup = native. ``DnsError``
    with Postfix's text "unable to look up host H: ..." (4.4.4 for a name that is not
    found when ``soft``, a soft DNS error having come first, or for EAI_AGAIN, else
    5.4.4; 4.3.0 or 5.3.0 for other failures) or "H: host not found" when it has no
    address of ``families``."""
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, None,
                                                             type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        nohost = e.errno in (socket.EAI_AGAIN, socket.EAI_NONAME,
                             getattr(socket, "EAI_NODATA", socket.EAI_NONAME))
        soft = soft or e.errno in (socket.EAI_AGAIN, socket.EAI_MEMORY, socket.EAI_SYSTEM)
        status = ("4.4.4" if nohost else "4.3.0") if soft else ("5.4.4" if nohost else "5.3.0")
        raise DnsError(host, "A", not soft, f"unable to look up host {host}: {e.strerror}",
                       status) from None
    wanted = {socket.AF_INET: "ipv4", socket.AF_INET6: "ipv6"}
    out: list[str] = []
    for family, _, _, _, sockaddr in infos:
        addr = str(sockaddr[0]).split("%")[0]
        if wanted.get(family) in families and addr not in out:
            out.append(addr)
    if not out:
        raise DnsError(host, "A", not soft, f"{host}: host not found",
                       "4.4.4" if soft else "5.4.4")
    return out


def is_null_mx(hosts: list[tuple[int, str]]) -> bool:
    """A null MX among the records (RFC 7505): as Postfix's dns_lookup, any record whose
    host is the root makes the whole answer a null MX."""
    return any(name == "" for _, name in hosts)


async def host_addresses(host: str, families: tuple[str, ...] = ("ipv4", "ipv6")) -> list[str]:
    """The addresses of a host name (or the literal itself); see the module docstring."""
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is not None:  # as Postfix: only of an enabled family (inet_protocols)
        if f"ipv{literal.version}" in families:
            return [str(literal)]
        raise DnsError(host, "A" if "ipv4" in families else "AAAA", permanent=True)
    out: list[str] = []
    error: DnsError | None = None
    for family, rtype in (("ipv4", "A"), ("ipv6", "AAAA")):
        if family not in families:
            continue
        try:
            out += [rr.address for rr in _limited(await query(host, rtype), host, rtype)]
        except DnsError as e:
            if e.permanent:
                raise
            error = e
    if not out and error is not None:
        raise error
    return out
