"""showq - list the mail queue for mailq / postqueue -p / postqueue -j.

SYNOPSIS
    showq [generic daemon options]      (master.cf: showq unix n - n - - showq)

DESCRIPTION
    showq answers on ``public/showq``, so that users who cannot read the
    spool still get a queue listing. One request per connection, answered
    by a stream of attribute lists (``services.py``)::

        request: request "list", format "text" | "json"
        reply:   status 0, listing <piece>, more 1
                 listing <piece>, more 1          (any number)
                 listing <empty>                  (no "more": the end)
                 or status 77 (EX_NOPERM) and reason, for a user that
                 authorized_mailq_users refuses; status 1 and reason for a
                 request it does not know

    The listing is read and rendered by ``pymailsys.queue.listing`` from
    maildrop, active, incoming, deferred and hold, in Postfix's layout, a
    piece (the first message, then ``listing.CHUNK`` bytes) at a time as the
    scan goes: the first lines leave before the second queue file is read, and memory does not grow
    with the queue (the transport's write buffer bounds what waits for a slow
    reader). postqueue's direct mode (root, system down) uses the same code,
    so both print the same bytes.

SECURITY
    Runs as mail_owner; reads queue files and status logs only; shows
    envelope data, never message content. The peer's uid (SO_PEERCRED)
    decides: root, mail_owner and showq's own uid always may list, anyone
    else only as authorized_mailq_users allows (the check in postqueue is a
    convenience). A user holds at most ``peers.PER_UID_CONNECTIONS``
    connections (``TOTAL_CONNECTIONS`` for all users); one over the limit is
    answered "try again later" at once. A request is tiny (``REQUEST_LIMITS``)
    and each client's whole turn (request, listing, reply) must end within
    ipc_timeout. maildrop files are opened without following links or
    blocking (``queue.listing``).

CONFIGURATION PARAMETERS
    authorized_mailq_users, ipc_timeout, message_size_limit, mail_owner,
    enable_long_queue_ids, empty_address_recipient, queue_directory.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from pymailsys import log, server
from pymailsys.ipc import attr, peers
from pymailsys.queue import listing as showq_format
from pymailsys.server import Context
from pymailsys.submission import access

REQUEST_LIMITS = attr.Limits(attrs=8, value=64, total=512)


def bad_request(req: attr.AttrList) -> dict[str, Any] | None:
    """The reply to a request showq does not serve, else None."""
    if req.text("request", "list") != "list":
        return {"status": 1, "reason": f"unknown request: {req.text('request')}"}
    if req.text("format", "text") not in ("text", "json"):
        return {"status": 1, "reason": f"unknown format: {req.text('format')}"}
    return None


async def send_listing(writer: asyncio.StreamWriter, ctx: Context, fmt: str,
                       deadline: float) -> None:
    """Stream the listing, each piece as soon as it is read, waiting for the reader
    between pieces; an empty piece without ``more`` ends it."""
    cfg = ctx.config
    limit = cfg.get_size("message_size_limit")
    # the scan is synchronous on purpose: a thread pool would import modules after the
    # privilege drop, when the interpreter's own files may no longer be readable
    chunks = showq_format.listing_chunks(
        ctx.spool, fmt, cfg.get_bool("enable_long_queue_ids"), cfg.get("empty_address_recipient"),
        2 * limit + (1 << 20) if limit else showq_format.MAX_FILE_READ, deadline)
    head: dict[str, Any] = {"status": 0}
    for chunk in chunks:
        writer.write(attr.encode({**head, "listing": chunk, "more": 1}))
        head = {}
        await writer.drain()
    writer.write(attr.encode({**head, "listing": b""}))
    await writer.drain()


async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, ctx: Context) -> None:
    uid = server.peer_uid(writer.get_extra_info("socket"))
    reply = access.service_refusal(ctx.config, "authorized_mailq_users", uid,
                                   "view the mail queue")
    if reply is not None:
        writer.write(attr.encode(reply))
        await writer.drain()
        return
    slots: peers.PeerSlots = ctx.state.setdefault("slots", peers.PeerSlots())
    trusted = access.trusted_peer(ctx.config, uid)
    if not trusted and not slots.take(uid):
        writer.write(attr.encode(slots.refusal(uid, ctx.service)))
        await writer.drain()
        return
    timeout = ctx.config.get_time("ipc_timeout")
    try:
        async with asyncio.timeout(timeout):
            req = await attr.read_attrs(reader, REQUEST_LIMITS)
            if req is None:
                return
            reply = bad_request(req)
            if reply is not None:
                writer.write(attr.encode(reply))
                await writer.drain()
                return
            await send_listing(writer, ctx, req.text("format", "text"),
                               time.monotonic() + timeout)
    except attr.ProtocolError as e:
        log.warning(f"uid={uid}: bad request: {e}")
    except TimeoutError:
        log.warning(f"uid={uid}: request not done within ipc_timeout ({timeout}s)")
    finally:
        if not trusted:
            slots.give_back(uid)


def main(argv: list[str] | None = None) -> None:
    server.run("showq", serve=serve, argv=argv)


if __name__ == "__main__":
    main()
