"""DNS facts for smtpd's restrictions: DNS allow/deny lists and whether a name exists.

NAME
    dnsxl - DNSBL/DNSWL/RHSBL queries and host/domain existence, as Postfix asks them

SYNOPSIS
    listed = dnsxl.ReplyFilter.parse("127.0.0.[2..4]")   # ValueError on junk
    query = dnsxl.client_query("192.0.2.5", "zen.example")   # "5.2.0.192.zen.example"
    query = dnsxl.domain_query("example.com", "dbl.example")  # None: not to be asked
    found = await dnsxl.lookup(query)          # Listing, or None (not listed)
    state = await dnsxl.host_state("mx.example.com")     # OK, NOT_FOUND or RETRY
    state = await dnsxl.mailhost_state("example.com")    # also NULL_MX

DESCRIPTION
    ``lookup`` asks for the A records of a list query; a name that does not
    exist or has no A record is not listed (``None``). A listed name's TXT
    records, joined with `` / `` and cut at 500 characters as Postfix does,
    are the reason. Any other DNS failure (SERVFAIL, timeout) raises
    ``dns.DnsError`` (temporary) after Postfix's warning ``QUERY: RBL
    lookup error: Host or domain name not found. Name service error for
    name=QUERY type=A: Host not found, try again``.

    ``ReplyFilter`` is the ``domain=pattern`` part of a list restriction
    (Postfix's ip_match syntax: four octets, each a number or a bracketed
    list of numbers and ``low..high`` ranges separated by ``;``), and
    ``matches`` tells whether one of a listing's addresses fits.

    ``client_query`` reverses an IPv4 address octet by octet, an IPv6
    address nibble by nibble. ``domain_query`` takes a domain (the caller
    has checked it is a valid hostname) and gives None where Postfix does
    not ask: an address literal, a name whose last label is all digits.

    ``host_state`` (reject_unknown_helo_hostname,
    reject_unknown_client_hostname's cousin) is OK when the name has an A,
    AAAA or MX record (a null MX counts); ``mailhost_state``
    (reject_unknown_sender/recipient_domain) tries MX, then A and AAAA, and
    reports a null MX apart. NOT_FOUND is a name that does not exist or has
    none of them; RETRY a temporary failure with no answer found.

REFUSES
    A malformed reply filter: ``ValueError`` (start-up fatal, as Postfix's
    "RBL reply error").
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from pymailsys import log
from pymailsys.smtp import dns

OK = "OK"
NOT_FOUND = "NOT_FOUND"
RETRY = "RETRY"
NULL_MX = "NULL_MX"

TXT_LIMIT = 500
_OCTET_RE = re.compile(r"^(\d{1,3})$|^\[([0-9.;]+)\]$")


@dataclass(frozen=True)
class Listing:
    addresses: tuple[str, ...]
    reason: str  # the TXT records, "" when there are none


@dataclass(frozen=True)
class ReplyFilter:
    """The addresses a list reply must have to count (``=127.0.0.[2..4]``)."""

    octets: tuple[frozenset[int], ...]

    @classmethod
    def parse(cls, pattern: str) -> ReplyFilter:
        parts = re.split(r"\.(?![^\[]*\])", pattern)  # dots outside [...]
        if len(parts) != 4:
            raise ValueError(f"RBL reply error: bad address pattern: {pattern}")
        octets = []
        for part in parts:
            m = _OCTET_RE.match(part)
            if not m:
                raise ValueError(f"RBL reply error: bad address pattern: {pattern}")
            if m.group(1) is not None:
                values = {int(m.group(1))}
            else:
                values = set()
                for item in m.group(2).split(";"):
                    low, sep, high = item.partition("..")
                    if not low.isdigit() or (sep and not high.isdigit()):
                        raise ValueError(f"RBL reply error: bad address pattern: {pattern}")
                    values.update(range(int(low), int(high if sep else low) + 1))
            if any(v > 255 for v in values):
                raise ValueError(f"RBL reply error: bad address pattern: {pattern}")
            octets.append(frozenset(values))
        return cls(tuple(octets))

    def matches(self, listing: Listing) -> bool:
        for addr in listing.addresses:
            parts = addr.split(".")
            if len(parts) == 4 and all(int(p) in o for p, o in zip(parts, self.octets,
                                                                     strict=True)):
                return True
        return False


def client_query(addr: str, list_domain: str) -> str:
    ip = ipaddress.ip_address(addr)
    if ip.version == 6:
        labels = reversed(f"{int(ip):032x}")
    else:
        labels = reversed(str(ip).split("."))
    return ".".join([*labels, list_domain])


def domain_query(domain: str, list_domain: str) -> str | None:
    """The query for a (valid) hostname, None where Postfix does not ask."""
    domain = domain.rstrip(".")
    if not domain or domain.startswith("[") or domain.rpartition(".")[2].isdigit():
        return None
    return f"{domain}.{list_domain}"


async def lookup(query: str) -> Listing | None:
    """The listing of one query name, None when not listed; ``dns.DnsError`` when unsure."""
    try:
        records = await dns.query(query, "A")
    except dns.DnsError as e:
        if e.permanent:
            return None
        log.warning(f"{query}: RBL lookup error: {e.text}")
        raise
    if not records:
        return None
    reason = ""
    try:
        texts = await dns.query(query, "TXT")
    except dns.DnsError:
        texts = []
    for rr in texts:
        piece = b"".join(rr.strings).decode("utf-8", "replace")
        reason = f"{reason} / {piece}" if reason else piece
        if len(reason) >= TXT_LIMIT:
            break
    return Listing(tuple(rr.address for rr in records), log.printable(reason[:TXT_LIMIT]))


async def _state(name: str, rtypes: tuple[str, ...], null_mx_apart: bool) -> str:
    retry = False
    for rtype in rtypes:
        try:
            records = await dns.query(name, rtype)
        except dns.DnsError as e:
            if e.permanent:
                return NOT_FOUND
            retry = True
            continue
        if not records:
            continue
        if rtype == "MX" and null_mx_apart and len(records) == 1 \
                and records[0].exchange.to_text() in ("", "."):
            return NULL_MX
        return OK
    return RETRY if retry else NOT_FOUND


async def host_state(name: str) -> str:
    """OK when the name has an A, AAAA or MX record; NOT_FOUND; RETRY."""
    return await _state(name.rstrip("."), ("A", "AAAA", "MX"), null_mx_apart=False)


async def mailhost_state(domain: str) -> str:
    """OK when the domain has MX, A or AAAA records; NULL_MX; NOT_FOUND; RETRY."""
    return await _state(domain.rstrip("."), ("MX", "A", "AAAA"), null_mx_apart=True)
