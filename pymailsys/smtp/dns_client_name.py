"""The SMTP client's name: a reverse lookup confirmed by a forward lookup, as Postfix's smtpd.

NAME
    dns_client_name - smtpd's client hostname lookup

SYNOPSIS
    found = await dns_client_name.lookup("192.0.2.5", timeout=10)
    found.name, found.status                  # "mx.example.com", OK
    found.reverse_name, found.reverse_status  # the PTR name alone

DESCRIPTION
    ``lookup`` asks the DNS (``pymailsys.smtp.dns``'s resolver, reading
    /etc/resolv.conf) for the PTR record of the address, then for the A (or
    AAAA) records of that name. As Postfix's smtpd_peer.c:

    * ``reverse_name`` is the PTR name, or ``unknown`` (no PTR record, a
      name that is not a valid hostname or is all numeric, or a failed
      lookup); ``reverse_status`` says which: OK, PERM or TEMP.
    * ``name`` is the PTR name only when its forward lookup lists the
      address; else ``unknown`` with status FORGED (the name does not
      resolve to the address, warned as Postfix does: ``hostname N does not
      resolve to address A``) or TEMP (the forward lookup failed for now).

    TEMP is not PERM: reject_unknown_client_hostname answers 450 for it
    whatever unknown_client_reject_code says. Each lookup is bounded by
    ``timeout`` seconds; running out of time is TEMP.

REFUSES
    Nothing; a malformed answer is treated as no answer.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import dns.reversename

from pymailsys import log
from pymailsys.address import networks as netaddr
from pymailsys.smtp import dns as smtp_dns
from pymailsys.smtp.restrictions import valid_hostname

OK = "OK"
TEMP = "TEMP"
PERM = "PERM"
FORGED = "FORGED"

UNKNOWN = "unknown"


@dataclass(frozen=True)
class ClientName:
    name: str = UNKNOWN
    status: str = PERM
    reverse_name: str = UNKNOWN
    reverse_status: str = PERM


def _acceptable(name: str) -> bool:
    """A PTR name Postfix would take: a valid hostname, not all numeric, not an address."""
    if not name or netaddr.parse_address(name) is not None:
        return False
    return valid_hostname(name) and not name.replace(".", "").isdigit()


async def _lookup(name: str, rtype: str, timeout: float) -> list:  # type: ignore[type-arg]
    async with asyncio.timeout(timeout):
        return await smtp_dns.query(name, rtype)


async def lookup(addr: str, timeout: float) -> ClientName:
    """The client's names and how they were found; see the module docstring."""
    ip = netaddr.parse_address(addr)
    if ip is None:
        return ClientName()
    try:
        ptrs = await _lookup(dns.reversename.from_address(str(ip)).to_text(), "PTR", timeout)
    except smtp_dns.DnsError as e:
        return ClientName() if e.permanent else ClientName(status=TEMP, reverse_status=TEMP)
    except TimeoutError:
        return ClientName(status=TEMP, reverse_status=TEMP)
    names = [rr.target.to_text(omit_final_dot=True).lower() for rr in ptrs]
    names = [n for n in names if _acceptable(n)]
    if not names:
        return ClientName()
    name = names[0]
    rtype = "AAAA" if ip.version == 6 else "A"
    try:
        addrs = await _lookup(name, rtype, timeout)
    except (smtp_dns.DnsError, TimeoutError) as e:
        temporary = not isinstance(e, smtp_dns.DnsError) or not e.permanent
        reason = "Temporary failure in name resolution" if temporary else "Name or service not known"
        log.warning(f"hostname {name} does not resolve to address {addr}: {reason}")
        return ClientName(status=TEMP if temporary else FORGED, reverse_name=name,
                          reverse_status=OK)
    if any(netaddr.parse_address(rr.address) == ip for rr in addrs):
        return ClientName(name, OK, name, OK)
    log.warning(f"hostname {name} does not resolve to address {addr}")
    return ClientName(status=FORGED, reverse_name=name, reverse_status=OK)
