"""The anvil service contract and its client: connection counts and event rates.

anvil (daemons/anvil.py, master.cf ``anvil unix - - n - 1 anvil``) counts, for
each ``ident`` (``service:client-address``, as Postfix's anvil_clnt forms it),
the client's simultaneous connections and its connections, messages,
recipients and new TLS sessions per anvil_rate_time_unit, across all the
processes that report to it. Requests and replies (pymailsys.ipc.attr on
``private/anvil``), as Postfix's anvil(8)::

    request=connect    ident=S  ->  status=0 count=N rate=N
    request=disconnect ident=S  ->  status=0
    request=message    ident=S  ->  status=0 rate=N
    request=recipient  ident=S  ->  status=0 rate=N
    request=newtls     ident=S  ->  status=0 rate=N
    request=lookup     ident=S  ->  status=0 count=N rate=N mail=N rcpt=N newtls=N

An unknown request gets ``status=-1``. A connection's connects that were not
disconnected when it closes are disconnected then (a crashed smtpd frees its
counts).

``AnvilClient(queue_directory)`` is the asyncio client: one long-lived,
pipelined connection per process. Each call returns the reply's numbers, or
None when anvil cannot be reached or answered badly; the caller then goes
on without limits, as Postfix's smtpd does, and the client has logged why.
"""

from __future__ import annotations

import os

from pymailsys import log
from pymailsys.ipc import attr

SERVICE = "anvil"

CONNECT = "connect"
DISCONNECT = "disconnect"
MESSAGE = "message"
RECIPIENT = "recipient"
NEWTLS = "newtls"
LOOKUP = "lookup"
REQUESTS = (CONNECT, DISCONNECT, MESSAGE, RECIPIENT, NEWTLS, LOOKUP)

STATUS_OK = 0
STATUS_FAIL = -1

MAX_IDENT = 1024


def ident(service: str, client_addr: str) -> str:
    """Postfix's ANVIL_IDENT: ``service:address``, printable."""
    return log.printable(f"{service}:{client_addr}")


class AnvilClient:
    def __init__(self, queue_directory: str, timeout: float) -> None:
        self._client = attr.AttrClient(os.path.join(queue_directory, "private", SERVICE),
                                       timeout=timeout, hello=SERVICE)

    @property
    def path(self) -> str:
        return self._client.path

    async def _ask(self, request: str, who: str, *names: str) -> tuple[int, ...] | None:
        try:
            reply = await self._client.request({"request": request, "ident": who})
            if reply.number("status", STATUS_FAIL) != STATUS_OK:
                raise attr.ProtocolError(f"request {request} failed")
            return tuple(reply.number(name) for name in names)
        except (attr.ProtocolError, OSError) as e:
            log.warning(f"problem talking to service {self.path}: {e}")
            return None

    async def connect(self, who: str) -> tuple[int, int] | None:
        """Register a connection: (simultaneous count, connection rate)."""
        got = await self._ask(CONNECT, who, "count", "rate")
        return None if got is None else (got[0], got[1])

    async def disconnect(self, who: str) -> None:
        await self._ask(DISCONNECT, who)

    async def rate(self, event: str, who: str) -> int | None:
        """Register a MESSAGE (MAIL), RECIPIENT (RCPT, VRFY) or NEWTLS event: its rate."""
        got = await self._ask(event, who, "rate")
        return None if got is None else got[0]

    async def close(self) -> None:
        await self._client.close()
