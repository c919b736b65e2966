"""The fast flush service contract and its clients: per-destination logs of deferred mail.

flush (daemons/flush.py, master.cf ``flush unix n - n 1000? 0 flush``) answers on
``public/flush`` (pymailsys.ipc.attr), as Postfix's flush(8)::

    request=add       site=S queue_id=Q  ->  status=N
    request=send_site site=S             ->  status=N

``add`` comes from the smtp and lmtp delivery agents for each recipient domain
of a deferred message, and from qmgr for the recipients it defers itself
(``recipient_site``); ``send_site`` from ``postqueue -s`` (``sendmail -qR``)
and smtpd's ETRN. Statuses are Postfix's FLUSH_STAT_*: ``OK``, ``BAD`` (a
malformed request, or a site that is neither a host name nor an address
literal), ``DENY`` (the site is not in fast_flush_domains) and ``FAIL``.
A local user other than the mail system may ask only ``send_site`` (the
service checks its uid, see daemons/flush.py), and is refused as showq
refuses: ``NOPERM`` (77, EX_NOPERM: authorized_flush_users, or a request
that is the mail system's) or ``TEMPFAIL`` (75, EX_TEMPFAIL: too many
connections), each with a ``reason`` to print.

Clients take the socket path (``Spool.public(flush_service_name)``) and
return a status and never raise: a flush service that cannot be
reached or answers badly is ``FAIL`` (and the async client logs why). As
Postfix's flush_clnt, they answer ``DENY`` without asking when
fast_flush_domains is empty.
"""

from __future__ import annotations

import os
import re

from pymailsys import log
from pymailsys.ipc import attr

ADD = "add"
SEND_SITE = "send_site"

FAIL = -1
OK = 0
BAD = 3
DENY = 4
NOPERM = os.EX_NOPERM  # a refused user: with a reason
TEMPFAIL = os.EX_TEMPFAIL  # a user over its connection limit: with a reason

MAX_SITE = 255

_HOST_RE = re.compile(r"^(?=.{1,255}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                      r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$")
_LITERAL_RE = re.compile(r"^\[(?:[0-9.]{7,15}|(?:IPv6:)?[0-9A-Fa-f:.]{2,45})\]$")


def valid_site(site: str) -> bool:
    """A host name or an address literal (``[192.0.2.1]``), as Postfix's valid_hostname
    and valid_mailhost_literal."""
    return bool(_HOST_RE.match(site) or _LITERAL_RE.match(site))


def recipient_site(address: str) -> str | None:
    """The site a deferred recipient's message waits for (its domain, lower case), or
    None when it has none that could name a flush log."""
    domain = address.rpartition("@")[2].lower() if "@" in address else ""
    return domain if domain and valid_site(domain) else None


def send_site(path: str, site: str, timeout: float, enabled: bool = True) -> tuple[int, str]:
    """Blocking ``send_site`` for commands (postqueue -s): the status and the reason
    that comes with a refusal; ``enabled``: fast_flush_domains is not empty."""
    if not enabled:
        return DENY, ""
    try:
        with attr.SyncAttrClient(path, timeout=timeout) as client:
            reply = client.request({"request": SEND_SITE, "site": site})
    except (attr.ProtocolError, OSError):
        return FAIL, ""
    return reply.number("status", FAIL), reply.text("reason")


class FlushClient:
    """The asyncio client (smtpd's ETRN, the delivery agents' ``add``), one
    connection per process, opened when first needed."""

    def __init__(self, path: str, timeout: float, enabled: bool = True) -> None:
        self._client = attr.AttrClient(path, timeout=timeout, hello=os.path.basename(path))
        self.enabled = enabled  # fast_flush_domains is not empty

    async def _ask(self, request: dict[str, str]) -> int:
        if not self.enabled:
            return DENY
        try:
            reply = await self._client.request(request)
        except (attr.ProtocolError, OSError) as e:
            log.warning(f"problem talking to service {self._client.path}: {e}")
            return FAIL
        return reply.number("status", FAIL)

    async def add(self, site: str, queue_id: str) -> int:
        return await self._ask({"request": ADD, "site": site, "queue_id": queue_id})

    async def send_site(self, site: str) -> int:
        return await self._ask({"request": SEND_SITE, "site": site})

    async def close(self) -> None:
        await self._client.close()
