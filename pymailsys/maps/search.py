"""Postfix's key search orders for address, domain and client lookups.

Takes a ``maps.Maps`` (or anything with ``find(key, partial=False)``) and a
key; promises Postfix's search order, the first key that a table knows wins,
and a ``maps.TableError`` from any table propagates (the caller defers: an
error is never "not found"). The first key is a FULL lookup (every table); the
keys derived from it (parents, ``@domain``, shortened addresses...) are
PARTIAL lookups, asked only of fixed-key tables, never of regexp, pcre or cidr
tables, as in Postfix.

find_address / lookup_address (mail_addr_find: canonical, virtual, generic,
relocated, *_recipient_maps), for ``user+ext@domain`` with delimiter ``+``:

    user+ext@domain, user@domain,
    user+ext, user                 (only when local_domain is true, or no domain)
    @domain                        (at_domain, default on)

lookup_mail_access (check_mail_access: smtpd sender/recipient access maps):

    user+ext@domain, user@domain, domain and its parents (see lookup_domain),
    user+ext@, user@

lookup_domain (check_domain_access): ``sub.example.com``, then the parent
domains: ``example.com``, ``com`` when the table's parameter is listed in
``parent_domain_matches_subdomains`` (parent_style=True), else
``.example.com``, ``.com``.

lookup_transport (transport_maps): ``user+ext@domain``, ``user@domain``,
``domain``, parents as lookup_domain, then ``*`` (a FULL lookup: a regexp or
pcre table is asked for it too, as Postfix).

lookup_ip (check_addr_access): ``192.0.2.7``, ``192.0.2``, ``192.0``, ``192``;
IPv6 is cut at each ``:`` from the right the same way.

lookup_client (check_namadr_access): the client name as lookup_domain, then
its address as lookup_ip.

Extensions: the extension is the part of the local part after the first
character that is in the delimiter set; ``postmaster``, ``MAILER-DAEMON`` and
``double-bounce``, ``owner-foo`` and ``foo-request`` (when ``-`` is a
delimiter) are never split, nor a local part whose first character is a
delimiter.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

from pymailsys.config import Config


class _Finder(Protocol):
    def find(self, key: str, partial: bool = False) -> str | None: ...


class AddressMatch(NamedTuple):  # not a frozen dataclass: its __init__ costs 2.6 k instructions
    value: str
    key: str  # the key that matched
    extension: str | None  # the address extension the matched key did not contain


def split_extension(localpart: str, delimiter: str,
                    trailing: bool = False) -> tuple[str, str | None]:
    """(bare local part, extension or None), Postfix's split_addr(). ``trailing``: a
    delimiter as the last character splits off an empty extension, as split_addr
    itself does (local(8)'s recipient; the table lookups here leave such a local part
    whole)."""
    if not delimiter or (len(delimiter) == 1 and delimiter not in localpart):
        return localpart, None  # the common case, in one test
    lower = localpart.lower()
    if lower in ("postmaster", "mailer-daemon", "double-bounce"):
        return localpart, None
    if "-" in delimiter and (lower.startswith("owner-") or
                             (len(lower) > 8 and lower.endswith("-request"))):
        return localpart, None
    for i, ch in enumerate(localpart):
        if ch in delimiter:
            if i == 0 or (i == len(localpart) - 1 and not trailing):
                return localpart, None
            return localpart[:i], localpart[i + 1:]
    return localpart, None


def parent_style(config: Config, param: str) -> bool:
    """True when param is listed in parent_domain_matches_subdomains."""
    return param in config.get_list("parent_domain_matches_subdomains")


def find_address(maps: _Finder, address: str, *, local_domain: bool, delimiter: str = "",
                 at_domain: bool = True) -> AddressMatch | None:
    """mail_addr_find(): the first of Postfix's keys for address that is found."""
    localpart, at, domain = address.rpartition("@")
    if not at:
        localpart, domain = address, ""
    bare, ext = split_extension(localpart, delimiter)
    keys: list[tuple[str, str | None]] = [(address, None)]
    if ext is not None:
        keys.append((f"{bare}@{domain}" if at else bare, ext))
    if at and (local_domain or not domain):
        keys.append((localpart, None))
        if ext is not None:
            keys.append((bare, ext))
    if at and domain and at_domain:
        keys.append(("@" + domain, None))
    seen: set[str] = set()
    for n, (key, unmatched) in enumerate(keys):
        if key in seen:
            continue
        seen.add(key)
        value = maps.find(key, partial=n > 0)
        if value is not None:
            return AddressMatch(value, key, unmatched)
    return None


def lookup_address(maps: _Finder, address: str, local_domain: bool, delimiter: str = "",
                   at_domain: bool = True) -> str | None:
    """The value of find_address, or None."""
    match = find_address(maps, address, local_domain=local_domain, delimiter=delimiter,
                         at_domain=at_domain)
    return match.value if match else None


def domain_keys(domain: str, parent_style: bool = True) -> list[str]:
    """The domain and its parents, in Postfix's check_domain_access order."""
    name = domain.rstrip(".")
    if not name:
        return []
    labels = name.split(".")
    keys = [name]
    for i in range(1, len(labels)):
        parent = ".".join(labels[i:])
        keys.append(parent if parent_style else "." + parent)
    return keys


def lookup_domain(maps: _Finder, domain: str, parent_style: bool = True,
                  full: bool = True) -> str | None:
    """check_domain_access(): the domain, then its parents (PARTIAL)."""
    for n, key in enumerate(domain_keys(domain, parent_style)):
        value = maps.find(key, partial=n > 0 or not full)
        if value is not None:
            return value
    return None


def ip_keys(addr: str) -> list[str]:
    """192.0.2.7, 192.0.2, 192.0, 192 (IPv6: cut at ':' from the right)."""
    delim = ":" if ":" in addr else "."
    keys = [addr]
    while delim in addr:
        addr = addr[:addr.rindex(delim)]
        if addr:
            keys.append(addr)
    return keys


def lookup_ip(maps: _Finder, addr: str) -> str | None:
    """check_addr_access(): the address, then shorter prefixes (PARTIAL)."""
    for n, key in enumerate(ip_keys(addr)):
        value = maps.find(key, partial=n > 0)
        if value is not None:
            return value
    return None


def lookup_client(maps: _Finder, name: str, addr: str, parent_style: bool = True) -> str | None:
    """check_namadr_access(): client name and parents, then the address."""
    value = lookup_domain(maps, name, parent_style) if name else None
    if value is not None:
        return value
    return lookup_ip(maps, addr)


def lookup_mail_access(maps: _Finder, address: str, delimiter: str = "",
                       parent_style: bool = True) -> str | None:
    """check_mail_access(): address, bare address, domain+parents, user@ forms."""
    localpart, at, domain = address.rpartition("@")
    if not at:
        localpart, domain = address, ""
    bare, ext = split_extension(localpart, delimiter)
    value = maps.find(address)
    if value is None and ext is not None:
        value = maps.find(f"{bare}@{domain}" if at else bare, partial=True)
    if value is None and domain:
        value = lookup_domain(maps, domain, parent_style, full=False)
    if value is None and at:
        value = maps.find(localpart + "@", partial=True)
        if value is None and ext is not None:
            value = maps.find(bare + "@", partial=True)
    return value


def lookup_transport(maps: _Finder, address: str, delimiter: str = "",
                     parent_style: bool = False) -> str | None:
    """transport(5) order: address, bare address, domain, parents, then ``*``."""
    localpart, at, domain = address.rpartition("@")
    if not at:
        localpart, domain = address, ""
    bare, ext = split_extension(localpart, delimiter)
    value = maps.find(address)
    if value is None and ext is not None and at:
        value = maps.find(f"{bare}@{domain}", partial=True)
    if value is None and domain:
        value = lookup_domain(maps, domain, parent_style, full=False)
    if value is None:  # a FULL lookup, as Postfix's transport_wildcard_init: regexp too
        value = maps.find("*")
    return value
