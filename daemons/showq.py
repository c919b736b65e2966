"""showq - list the mail queue for mailq / postqueue -p / postqueue -j.

SYNOPSIS
    showq [generic daemon options]      (master.cf: showq unix n - n - - showq)

DESCRIPTION
    showq answers on ``public/showq``, so that users who cannot read the
    spool still get a queue listing. One request and one reply per
    connection (``services.py``)::

        request: request "list", format "text" | "json"
        reply:   status 0, listing <the whole mailq text or JSON lines>
                 or status 77 (EX_NOPERM) and reason, for a user that
                 authorized_mailq_users refuses

    The listing is built by ``pymailsys.queue.listing`` from maildrop,
    active, incoming, deferred and hold, in Postfix's layout; postqueue's
    direct mode (root, system down) uses the same code, so both print the
    same bytes.

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
import os
import time
from typing import Any

from pymailsys import log, maps, server
from pymailsys.ipc import attr, peers
from pymailsys.queue import listing as showq_format
from pymailsys.server import Context
from pymailsys.submission import access

REQUEST_LIMITS = attr.Limits(attrs=8, value=64, total=512)


def handle(ctx: Context, req: attr.AttrList, deadline: float) -> dict[str, Any]:
    if req.text("request", "list") != "list":
        return {"status": 1, "reason": f"unknown request: {req.text('request')}"}
    fmt = req.text("format", "text")
    if fmt not in ("text", "json"):
        return {"status": 1, "reason": f"unknown format: {fmt}"}
    cfg = ctx.config
    limit = cfg.get_size("message_size_limit")
    # synchronous on purpose: a thread pool would import modules after the privilege
    # drop, when the interpreter's own files may no longer be readable
    text = showq_format.listing(ctx.spool, fmt, cfg.get_bool("enable_long_queue_ids"),
                                cfg.get("empty_address_recipient"),
                                2 * limit + (1 << 20) if limit else showq_format.MAX_FILE_READ,
                                deadline)
    return {"status": 0, "listing": text.encode("utf-8", "surrogateescape")}


def refusal(ctx: Context, uid: int) -> dict[str, Any] | None:
    """The reply for a peer that may not list the queue, else None."""
    try:
        refused = access.service_acl(ctx.config, "authorized_mailq_users", uid)
    except maps.TableError as e:
        log.warning(f"uid={uid}: authorized_mailq_users lookup error: {e}")
        return {"status": os.EX_TEMPFAIL, "reason": "authorized_mailq_users lookup error"}
    if refused is None:
        return None
    why = f"User {refused}({uid}) is not allowed to view the mail queue"
    log.warning(f"uid={uid}: {why}")
    return {"status": os.EX_NOPERM, "reason": why}


async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, ctx: Context) -> None:
    uid = server.peer_uid(writer.get_extra_info("socket"))
    reply = refusal(ctx, uid)
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
            writer.write(attr.encode(handle(ctx, req, time.monotonic() + timeout)))
            await writer.drain()
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
