"""Network address lists: mynetworks, inet_interfaces, and the host's own addresses.

NAME
    netaddr - match client addresses against Postfix address lists

SYNOPSIS
    nets = netaddr.mynetworks(config)          # an AddressList, built once
    nets.match("127.0.0.1", "localhost")       # True / False, TableError
    netaddr.AddressList(["10.0.0.0/8", "!10.1.0.0/16", "[::1]/128"])
    netaddr.interface_addresses(config)        # inet_interfaces + proxy_interfaces

DESCRIPTION
    An ``AddressList`` holds Postfix's address-list patterns, tried left to
    right; the first pattern that matches decides:

    * ``a.b.c.d`` and ``a.b.c.d/n`` (IPv4 CIDR); ``[v6]``, ``[v6]/n`` and the
      same without brackets (IPv6); IPv4-mapped IPv6 clients match IPv4
      patterns. A CIDR with host bits set is refused (as Postfix does).
    * ``!pattern`` negates: a match there means "not in the list".
    * ``/file/name``: the file's patterns (white space or commas, ``#``
      comments), inserted in place; ``!/file/name`` negates each of them (and
      those of the files it names).
    * ``type:table``: the client address is looked up, then the client name
      (and, in a fixed-key table, its parent domains as below); found means
      match (the value is ignored). A table error raises
      ``maps.TableError``: the caller defers, it never treats it as no match.
    * anything else is a host name: it matches the client name; ``.domain``
      matches subdomains. In a list named in parent_domain_matches_subdomains
      (by default mynetworks, not smtpd_client_event_limit_exceptions nor
      smtpd_sasl_exceptions_networks) a bare name matches subdomains too and
      ``.domain`` does not, as Postfix's match_hostname.

    A list of networks and names alone keeps its answers (by address and
    name, at most MEMO_LIMIT of them: they never change); one with a table
    looks again each time.

    ``address_list(config, name)``: the list of parameter name, in its
    parent_domain_matches_subdomains style. ``mynetworks(config)``: the
    parameter; when it is not set, the configuration computes it from
    ``mynetworks_style``, inet_interfaces and inet_protocols as Postfix does
    (``pymailsys.config.mynetworks``).

    ``interface_addresses(config)``: the addresses of ``inet_interfaces``
    (``all``: every interface; ``loopback-only``: 127.0.0.1 and ::1) plus
    ``proxy_interfaces``, as normalized IP strings; resolve.py uses them to
    recognise ``user@[ip]`` as local. ``source_addresses(config)``: the
    address the SMTP client sends from, per family: the one address of that
    family inet_interfaces has, when it has exactly one and it is not a
    loopback address (Postfix's smtp_connect_addr).

REFUSES
    A malformed pattern raises ``ValueError`` naming it (a configuration
    error: the daemon reports it and exits).
"""

from __future__ import annotations

import functools
import ipaddress
import socket
from collections.abc import Iterable

from pymailsys import config as config_mod
from pymailsys import maps
from pymailsys.config.mynetworks import local_interfaces
from pymailsys.maps.search import domain_keys, parent_style

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
MEMO_LIMIT = 1024  # answers an AddressList keeps (emptied when full)


@functools.lru_cache(maxsize=4096)
def parse_address(text: str) -> IPAddress | None:
    """An IP address from a client string (brackets, IPv6 scope and ipv6: prefix allowed).

    Cached: the same client address is parsed for every check of a session
    (mynetworks once per RCPT); the answers are immutable.
    """
    t = text.strip()
    if t.startswith("[") and t.endswith("]"):
        t = t[1:-1]
    if t[:5].lower() == "ipv6:":
        t = t[5:]
    t = t.split("%", 1)[0]
    try:
        addr = ipaddress.ip_address(t)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def parse_network(pattern: str) -> IPNetwork | None:
    """A network from a CIDR or address pattern, None if it is not one (a name)."""
    p = pattern
    prefix = ""
    if p.startswith("["):
        end = p.find("]")
        if end < 0:
            raise ValueError(f'missing "]" in "{pattern}"')
        addr, rest = p[1:end], p[end + 1:]
        if rest and not rest.startswith("/"):
            raise ValueError(f'bad address pattern: "{pattern}"')
        prefix = rest
    else:
        addr, sep, plen = p.partition("/")
        prefix = sep + plen
        if ":" not in addr and not all(c.isdigit() or c == "." for c in addr):
            return None
        if not addr:
            return None
    try:
        net = ipaddress.ip_network(addr + prefix, strict=True)
    except ValueError as e:
        raise ValueError(f'bad net/mask pattern: "{pattern}": {e}') from None
    if isinstance(net, ipaddress.IPv6Network) and net.network_address.ipv4_mapped is not None \
            and net.prefixlen >= 96:
        v4 = net.network_address.ipv4_mapped
        return ipaddress.ip_network(f"{v4}/{net.prefixlen - 96}")
    return net


class AddressList:
    """Postfix's address list (namadr_list): ordered patterns, first match decides."""

    def __init__(self, patterns: Iterable[str], parent_style: bool = True) -> None:
        self.parent_style = parent_style  # parent_domain_matches_subdomains lists it
        self.items: list[tuple[bool, str, object]] = []
        # answers by (address, name) while the list is networks and names only, whose
        # answers never change (smtpd asks mynetworks twice per message, some 3,000
        # instructions each); None once a table is in it
        self._memo: dict[tuple[str, str], bool] | None = {}
        for pattern in patterns:
            self._add(pattern)

    def _add(self, pattern: str) -> None:
        negate = False
        while pattern.startswith("!"):
            negate = not negate
            pattern = pattern[1:]
        if not pattern:
            raise ValueError("empty pattern after '!'")
        if pattern.startswith("/"):
            # as Postfix: !/file negates every pattern of the file, those of files it
            # names included (a pattern's own ! then makes it positive again)
            for sub in _read_pattern_file(pattern):
                self._add(("!" if negate else "") + sub)
            return
        if ":" in pattern and not pattern.startswith("[") and _looks_like_table(pattern):
            self.items.append((negate, "table", maps.open_table(pattern)))
            self._memo = None  # a table's answers may change
            return
        net = parse_network(pattern)
        if net is not None:
            self.items.append((negate, "net", net))
        else:
            self.items.append((negate, "name", pattern.lower()))

    def __bool__(self) -> bool:
        return bool(self.items)

    def match(self, addr: str, name: str = "") -> bool:
        """True when the client (address, name) is in the list; TableError on lookup failure."""
        memo = self._memo
        if memo is None:
            return self._match(addr, name)
        key = (addr, name)
        hit = memo.get(key)
        if hit is None:
            if len(memo) >= MEMO_LIMIT:
                memo.clear()
            hit = memo[key] = self._match(addr, name)
        return hit

    def _match(self, addr: str, name: str) -> bool:
        ip = parse_address(addr)
        lname = name.lower().rstrip(".")
        for negate, kind, value in self.items:
            if kind == "net":
                hit = ip is not None and ip.version == value.version and ip in value  # type: ignore[attr-defined,operator]
            elif kind == "name":
                pat = str(value)
                if not lname or lname == "unknown":
                    hit = False
                elif lname == pat:
                    hit = True
                elif self.parent_style:
                    hit = lname.endswith("." + pat)
                else:
                    hit = pat.startswith(".") and lname.endswith(pat)
            else:
                table = value
                assert isinstance(table, maps.Table)
                hit = table.lookup(str(ip) if ip is not None else addr) is not None
                if not hit and lname and lname != "unknown":
                    keys = domain_keys(lname, self.parent_style)
                    hit = any(table.lookup(key) is not None
                              for key in (keys if table.fixed else keys[:1]))
            if hit:
                return not negate
        return False

    def __repr__(self) -> str:
        return f"AddressList({self.items!r})"


def _looks_like_table(pattern: str) -> bool:
    type_name = pattern.split(":", 1)[0]
    return type_name.isalnum() and not type_name.isdigit() and \
        not all(c in "0123456789abcdefABCDEF" for c in type_name)


def _read_pattern_file(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            text = f.read()
    except OSError as e:
        raise ValueError(f"open {path}: {e.strerror}") from None
    out: list[str] = []
    for line in text.splitlines():
        line = line.split("#", 1)[0]
        out.extend(config_mod.split_list(line))
    return out


def mynetworks_patterns(config: config_mod.Config) -> list[str]:
    """The mynetworks patterns (computed from mynetworks_style when unset: ``config``)."""
    return config.get_list("mynetworks")


def address_list(config: config_mod.Config, name: str) -> AddressList:
    """The address list of parameter name, in its parent_domain_matches_subdomains style."""
    return AddressList(config.get_list(name), parent_style(config, name))


def mynetworks(config: config_mod.Config) -> AddressList:
    return address_list(config, "mynetworks")


def interface_addresses(config: config_mod.Config, proxy: bool = True) -> set[str]:
    """Normalized IP strings of inet_interfaces plus (with proxy) proxy_interfaces."""
    out: set[str] = set()
    names = config.get_list("inet_interfaces")
    if proxy:
        names += config.get_list("proxy_interfaces")
    for name in names:
        low = name.lower()
        if low == "all":
            out.update(str(i.ip) for i in local_interfaces())
        elif low == "loopback-only":
            out.update(("127.0.0.1", "::1"))
        else:
            ip = parse_address(name)
            if ip is not None:
                out.add(str(ip))
                continue
            try:
                for info in socket.getaddrinfo(name, None, proto=socket.IPPROTO_TCP):
                    a = parse_address(str(info[4][0]))
                    if a is not None:
                        out.add(str(a))
            except OSError:
                pass
    return out


def source_addresses(config: config_mod.Config) -> dict[int, str]:
    """{address family: the address to bind} for outbound connections (see above)."""
    by_family: dict[int, list[IPAddress]] = {}
    for text in interface_addresses(config, proxy=False):
        ip = ipaddress.ip_address(text)
        family = socket.AF_INET if ip.version == 4 else socket.AF_INET6
        by_family.setdefault(family, []).append(ip)
    return {family: str(ips[0]) for family, ips in by_family.items()
            if len(ips) == 1 and not ips[0].is_loopback}


def is_loopback(addr: str) -> bool:
    ip = parse_address(addr)
    return ip is not None and ip.is_loopback
