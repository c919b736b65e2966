"""From a delivery request's nexthop to the servers to try, in order.

NAME
    nexthop - parse a nexthop and look up its servers (MX, A/AAAA)

SYNOPSIS
    dest = nexthop.parse("[relay.example]:587", lmtp=False, default_port=25)
    dests = nexthop.parse_list("[a.example]:587, [b.example]:587", False, 25)
    route = await nexthop.servers(dest, policy)    # route.peers, route.found_self

DESCRIPTION
    ``parse`` takes Postfix's nexthop forms: ``domain`` (MX lookup),
    ``domain:port``, ``[host]`` and ``[host]:port`` (no MX lookup),
    an optional ``inet:`` prefix, and for LMTP ``unix:/path`` (LMTP never
    looks up MX records). A missing port is the protocol's (smtp_tcp_port,
    lmtp_tcp_port). ``parse_list`` takes a list of those, separated by commas
    or spaces (relayhost, a transport nexthop: Postfix 3.5 and later), to be
    tried in order.

    ``servers`` returns a ``Route``: ``Peer``s for ``pymailsys.smtp.client``
    (and ``found_self``: this machine is one of the MX hosts); for a
    domain, the addresses of its MX hosts by preference (``dns.mx_hosts``),
    or of the domain itself when it has no MX record (or does not exist: the
    address lookup decides, as Postfix); with ``Policy.dns`` off
    (smtp_dns_support_level = disabled, disable_dns_lookups) no MX lookup at
    all. Addresses come from the DNS and/or, with ``Policy.native``
    (smtp_host_lookup = native), the system's name service (/etc/hosts),
    which is asked when the DNS does not know the name. Addresses of equal
    preference are shuffled (``Policy.randomize``: smtp_randomize_addresses)
    and then, with ``Policy.address_preference`` (smtp_address_preference)
    ipv4 or ipv6, that family's come first; at most
    ``Policy.address_limit`` addresses (smtp_mx_address_limit, 0 = no limit).
    Loop detection (``Destination.loop_detect``: SMTP to port 25, as
    Postfix's SMTP_MISC_FLAG_LOOP_DETECT): when one of the MX hosts is this
    machine (its name is myhostname or one of its addresses is ours), only
    MX hosts of better preference are kept; when none is left: ``RouteError``
    "mail for D loops back to myself" (5.4.6), or, when the best MX hosts did
    not resolve, "unable to find primary relay for D" (4.4.4: we are a backup
    MX, and the primary will be back). A domain without MX, or a ``[host]``,
    whose address is ours is the same loop (5.4.6), as Postfix's
    smtp_host_addr. A null MX (a record whose host is the root, even among
    others, as Postfix's dns_lookup): ``RouteError`` "Domain D does not
    accept mail (nullMX)" (5.1.0, Postfix's status). A failed lookup:
    ``RouteError`` with the DNS text and 4.4.3 or 5.4.4 (``dns.DnsError``).
    An MX host that does not resolve (or has no address record: a hard
    error, "Host found but no data record of requested type") is skipped;
    when none resolves ("warning: no MX host for D has a valid address
    record"), the first temporary error is the route's (a soft error
    dominates hard ones, as Postfix), else the last permanent one.

REFUSES
    What Postfix's host_port() refuses, each a configuration error that
    defers (``RouteError``, 4.3.5, in Postfix's words: ``missing host
    information in server description: [] ``...): no host, no ``]``,
    anything but ``:port`` after it, a malformed ``[ipv6:...]``, a host that
    is neither a host name nor an address, a port that is not 1-65535 or a
    known service name. ``[host]:`` and ``host:`` take the default port.
"""

from __future__ import annotations

import ipaddress
import random
import socket
from dataclasses import dataclass, field

from pymailsys import log
from pymailsys.address.resolve import valid_hostname
from pymailsys.smtp import dns
from pymailsys.smtp.client import Peer


class RouteError(Exception):
    def __init__(self, text: str, dsn: str) -> None:
        super().__init__(text)
        self.text = text
        self.dsn = dsn

    @property
    def permanent(self) -> bool:
        return self.dsn.startswith("5")


@dataclass(frozen=True)
class Destination:
    host: str = ""
    port: int = 0
    use_mx: bool = True
    path: str = ""
    loop_detect: bool = False  # SMTP to port 25: mail to our own address is a loop


@dataclass(frozen=True)
class Route:
    peers: list[Peer]
    found_self: bool = False  # we are an MX host: no fallback relay, as Postfix's i_am_mx


@dataclass(frozen=True)
class Policy:
    families: tuple[str, ...] = ("ipv4", "ipv6")
    dns: bool = True  # MX lookups (smtp_dns_support_level, disable_dns_lookups)
    host_dns: bool = True  # addresses from the DNS (smtp_host_lookup = dns)
    native: bool = False  # addresses from the system's name service (smtp_host_lookup)
    randomize: bool = False  # smtp_randomize_addresses: shuffle equal-preference addresses
    address_preference: str = "any"  # smtp_address_preference: ipv4, ipv6 or any
    address_limit: int = 5
    myhostname: str = ""
    own_addresses: frozenset[str] = field(default_factory=frozenset)


def port_number(port: str, nexthop: str = "") -> int:
    """A port number (1-65535) or service name (``smtp``); RouteError when it is neither."""
    if port[:1].isdigit():
        if not port.isdigit():
            raise RouteError(f"garbage after numerical service in server description: {nexthop}",
                             "4.3.5")
        if not 0 < int(port) < 65536:
            raise RouteError(f"bad network port: {port} for destination: {nexthop}", "4.3.5")
        return int(port)
    try:
        return socket.getservbyname(port, "tcp")
    except (OSError, UnicodeError, ValueError):
        raise RouteError(f"unknown service: {port}/tcp", "4.3.5") from None


def _bad(problem: str, nexthop: str) -> RouteError:
    """A nexthop Postfix's host_port() refuses (its smtp client stops: the mail waits)."""
    return RouteError(f"{problem} in server description: {nexthop}", "4.3.5")


def parse(nexthop: str, lmtp: bool, default_port: int) -> Destination:
    text = nexthop.strip()
    if text.startswith("unix:"):
        if not lmtp or not text[5:]:
            raise RouteError(f"bad nexthop: {nexthop}", "4.3.5")
        return Destination(path=text[5:], use_mx=False)
    if text.startswith("inet:"):
        text = text[5:]
    use_mx = not lmtp
    port = default_port
    if text.startswith("["):
        host, close, rest = text[1:].partition("]")
        if not close:
            raise _bad('missing "]"', nexthop)
        use_mx = False
        if rest.startswith(":"):
            rest = rest[1:]
            if rest:
                port = port_number(rest, nexthop)
        elif rest:
            raise _bad('garbage after "]"', nexthop)
        if host.lower().startswith("ipv6:"):
            host = host[5:]
            if not _is_address(host, 6):
                raise _bad("malformed IPv6 address", nexthop)
    else:
        host, colon, rest = text.rpartition(":") if text.count(":") == 1 else ("", "", text)
        if colon:
            if rest:
                port = port_number(rest, nexthop)
        else:
            host = rest
    if not host:
        raise _bad("missing host information", nexthop)
    if host.isascii() and not valid_hostname(host.rstrip(".")) and not _is_address(host):
        raise _bad("valid hostname or network address required", nexthop)
    return Destination(host=host.rstrip(".").lower(), port=port, use_mx=use_mx,
                       loop_detect=not lmtp and port == 25)


def parse_list(nexthop: str, lmtp: bool, default_port: int) -> list[Destination]:
    """A nexthop that lists destinations (``[a]:587, [b]:587``: Postfix 3.5 and later),
    each as ``parse`` takes it, in order; RouteError for the first one it refuses."""
    sites = nexthop.replace(",", " ").split()
    if len(sites) <= 1:
        return [parse(nexthop, lmtp, default_port)]
    return [parse(site, lmtp, default_port) for site in sites]


def _is_address(text: str, version: int = 0) -> bool:
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return False
    return not version or ip.version == version


async def servers(dest: Destination, policy: Policy) -> Route:
    """The servers to try for a destination, best first; see the module docstring."""
    if dest.path:
        return Route([Peer(policy.myhostname, path=dest.path)])
    hosts: list[tuple[int, str]] = []
    if dest.use_mx and policy.dns:
        try:
            hosts = await dns.mx_hosts(dest.host)
        except dns.DnsError as e:
            if not e.permanent:
                raise RouteError(e.text, e.dsn) from None
            # NXDOMAIN: the address lookup decides, as Postfix's DNS_NOTFOUND
        if dns.is_null_mx(hosts):
            raise RouteError(f"Domain {dest.host} does not accept mail (nullMX)", "5.1.0")
    if not hosts:
        try:
            addrs = await _addresses(dest.host, policy)
        except dns.DnsError as e:
            raise RouteError(e.text, e.dsn) from None
        if not addrs:
            raise RouteError(_no_data(dest.host, "A"), "5.4.4")
        if dest.loop_detect and any(a in policy.own_addresses for a in addrs):
            raise RouteError(f"mail for {dest.host} loops back to myself", "5.4.6")
        return Route(_limit(_ordered([(0, Peer(dest.host, a, dest.port)) for a in addrs],
                                     policy), policy.address_limit))
    peers: list[tuple[int, Peer]] = []
    error: dns.DnsError | None = None
    own_pref: int | None = None
    best_found: int | None = None  # the preference of the first MX host that resolved
    for pref, host in hosts:
        if own_pref is not None and pref >= own_pref:
            break
        if len(peers) >= dns.RR_LIST_LIMIT:  # as Postfix's smtp_addr_list: enough
            break
        try:
            addrs = await _addresses(host, policy)
        except dns.DnsError as e:
            if error is None or error.permanent:  # a soft error dominates, as Postfix
                error = e
            continue
        if not addrs:  # the name exists without an address: a hard error, as Postfix
            if error is None or error.permanent:
                error = dns.DnsError(host, "A" if "ipv4" in policy.families else "AAAA", True,
                                     _no_data(host, "A" if "ipv4" in policy.families
                                              else "AAAA"))
            continue
        if best_found is None:
            best_found = pref
        if dest.loop_detect and (host.lower() == policy.myhostname.lower() or any(
                a in policy.own_addresses for a in addrs)):
            own_pref = pref
            peers = [(p, peer) for p, peer in peers if p < pref]
            continue
        peers += [(pref, Peer(host, a, dest.port)) for a in addrs]
    if own_pref is not None and not peers:
        if best_found != hosts[0][0]:
            raise RouteError(f"unable to find primary relay for {dest.host}", "4.4.4")
        raise RouteError(f"mail for {dest.host} loops back to myself", "5.4.6")
    if not peers:
        log.warning(f"no MX host for {dest.host} has a valid address record")
        if error is not None:
            raise RouteError(error.text, error.dsn)
        raise RouteError(f"Host or domain name not found. Name service error for "
                         f"name={dest.host} type=MX: no usable MX host", "4.4.3")
    return Route(_limit(_ordered(peers, policy), policy.address_limit), own_pref is not None)


async def _addresses(host: str, policy: Policy) -> list[str]:
    """A host's addresses by the lookup methods of the policy, as Postfix's smtp_addr_one:
    the DNS, then (when the DNS does not know the name) the system's name service."""
    if policy.host_dns:
        try:
            addrs = await dns.host_addresses(host, policy.families)
        except dns.DnsError as e:
            if not policy.native or not e.permanent:
                raise
            addrs = []
        if addrs or not policy.native:
            return addrs
    return await dns.native_addresses(host, policy.families)


def _no_data(name: str, rtype: str) -> str:
    return (f"Host or domain name not found. Name service error for name={name} "
            f"type={rtype}: Host found but no data record of requested type")


def _ordered(peers: list[tuple[int, Peer]], policy: Policy) -> list[Peer]:
    """By preference, as Postfix's smtp_domain_addr: shuffled first with
    smtp_randomize_addresses, and within a preference the family of
    smtp_address_preference first (``any``: no order)."""
    if policy.randomize:
        random.shuffle(peers)

    def key(entry: tuple[int, Peer]) -> tuple[int, int]:
        v6 = ":" in entry[1].addr
        first = {"ipv4": not v6, "ipv6": v6}.get(policy.address_preference, True)
        return entry[0], 0 if first else 1

    return [peer for _, peer in sorted(peers, key=key)]


def _limit(peers: list[Peer], limit: int) -> list[Peer]:
    return peers[:limit] if limit > 0 else peers
