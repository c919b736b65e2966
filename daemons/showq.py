"""showq - list the mail queue for mailq / postqueue -p / postqueue -j.

SYNOPSIS
    showq [generic daemon options]      (master.cf: showq unix n - n - - showq)

DESCRIPTION
    showq answers on ``public/showq``, so that users who cannot read the
    spool still get a queue listing. Request and reply (``services.py``)::

        request: request "list", format "text" | "json"
        reply:   status 0, listing <the whole mailq text or JSON lines>

    The listing is built by ``pymailsys.queue.listing`` from maildrop,
    active, incoming, deferred and hold, in Postfix's layout; postqueue's
    direct mode (root, system down) uses the same code, so both print the
    same bytes.

SECURITY
    Runs as mail_owner; reads queue files and status logs only; shows
    envelope data, never message content.

CONFIGURATION PARAMETERS
    enable_long_queue_ids, empty_address_recipient, queue_directory.
"""

from __future__ import annotations

import asyncio
from typing import Any

from pymailsys import server
from pymailsys.ipc import attr
from pymailsys.queue import listing as showq_format
from pymailsys.server import Context


async def handle(ctx: Context, req: attr.AttrList) -> dict[str, Any]:
    if req.text("request", "list") != "list":
        return {"status": 1, "reason": f"unknown request: {req.text('request')}"}
    fmt = req.text("format", "text")
    if fmt not in ("text", "json"):
        return {"status": 1, "reason": f"unknown format: {fmt}"}
    cfg = ctx.config
    # synchronous on purpose: a thread pool would import modules after the privilege
    # drop, when the interpreter's own files may no longer be readable
    text = showq_format.listing(ctx.spool, fmt, cfg.get_bool("enable_long_queue_ids"),
                                cfg.get("empty_address_recipient"))
    return {"status": 0, "listing": text.encode("utf-8", "surrogateescape")}


async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, ctx: Context) -> None:
    async def handler(req: attr.AttrList) -> dict[str, Any]:
        return await handle(ctx, req)

    await attr.serve_pipelined(reader, writer, handler, ctx.stopping)


def main(argv: list[str] | None = None) -> None:
    server.run("showq", serve=serve, argv=argv)


if __name__ == "__main__":
    main()
