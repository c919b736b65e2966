"""flush - the fast flush service: which deferred messages wait for which site.

NAME
    flush - per-destination logs of deferred mail, for ETRN and ``postqueue -s``

SYNOPSIS
    python3 -m pymailsys.daemons.flush [generic daemon options]
    (master.cf: ``flush unix n - n 1000? 0 flush``)

DESCRIPTION
    As Postfix's flush(8), on ``public/flush`` with the protocol of
    ``pymailsys.ipc.flush``. For a site (a recipient domain, or an address
    literal) in fast_flush_domains:

    * ``add`` appends the queue ID to the site's log ``flush/SITE`` (one ID
      a line); the smtp and lmtp delivery agents send it for each domain of
      a message they deferred.
    * ``send_site`` reads the log, and each message it names that is still
      in deferred/ gets its time stamps reset and moves to incoming/; the
      log is emptied (a message deferred again is added again) and qmgr is
      told to forget dead destinations and scan incoming/, so the mail goes
      out now rather than at its next retry.

    A site not in fast_flush_domains gets ``DENY`` (postqueue: "Flush
    service is not configured for destination", smtpd: "459 <site>: service
    unavailable"); fast_flush_domains matches subdomains of its names when
    parent_domain_matches_subdomains lists it, as relay_domains.

SECURITY
    Runs as mail_owner; listens in public/ because postqueue (any user in
    authorized_flush_users) and smtpd talk to it. A site must be a host name
    or an address literal (no ``/``, at most 255 characters) and is folded
    to lower case before it names a file; a queue ID must be valid. A log
    holds each ID once (an ``add`` of an ID already there appends nothing),
    so it stays as small as the deferred queue for the site.

CONFIGURATION PARAMETERS
    fast_flush_domains, parent_domain_matches_subdomains, queue_service_name.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
from typing import Any

from pymailsys import log, server
from pymailsys.address.resolve import DomainList
from pymailsys.ipc import attr, trigger
from pymailsys.ipc import flush as proto
from pymailsys.maps import TableError
from pymailsys.maps.search import parent_style
from pymailsys.queue import spool as q
from pymailsys.server import Context

PROGRAM = "flush"


class FlushLogs:
    """The per-site logs under flush/ and the queue moves of ``send_site``."""

    def __init__(self, ctx: Context) -> None:
        self.spool = ctx.spool
        self.domains = DomainList(ctx.config.get_list("fast_flush_domains"),
                                  parent_matches=parent_style(ctx.config, "fast_flush_domains"))
        self.qmgr = ctx.spool.public(ctx.config.get("queue_service_name"))

    def path(self, site: str) -> str:
        return os.path.join(self.spool.dir(q.FLUSH), site)

    def eligible(self, site: str) -> bool:
        if site.startswith("["):
            return self.domains.match(site)
        return self.domains.match(site.rstrip("."))

    def add(self, site: str, queue_id: str) -> None:
        fd = os.open(self.path(site), os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW,
                     0o600)
        with os.fdopen(fd, "r+b") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            f.seek(0)
            if queue_id.encode() + b"\n" in set(f):
                return
            f.write(queue_id.encode() + b"\n")

    def take(self, site: str) -> list[str]:
        """The IDs in the site's log, once each, and the log emptied."""
        try:
            fd = os.open(self.path(site), os.O_RDWR | os.O_NOFOLLOW)
        except FileNotFoundError:
            return []
        with os.fdopen(fd, "r+b") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            ids = list(dict.fromkeys(line.strip().decode("ascii", "replace") for line in f))
            f.truncate(0)
        return [i for i in ids if q.valid_queue_id(i)]

    def send(self, site: str) -> int:
        """Move the site's deferred messages to incoming/; how many moved."""
        moved = 0
        for queue_id in self.take(site):
            path = self.spool.path(q.DEFERRED, queue_id)
            try:
                os.utime(path, (0, 0), follow_symlinks=False)
                self.spool.move(queue_id, q.DEFERRED, q.INCOMING)
            except FileNotFoundError:
                continue  # delivered, bounced or already moved
            moved += 1
        return moved


async def handle(logs: FlushLogs, req: attr.AttrList) -> dict[str, Any]:
    request = req.text("request")
    site = req.text("site").lower()
    if request not in (proto.ADD, proto.SEND_SITE) or not proto.valid_site(site):
        log.warning(f"bad flush request: \"{log.printable(request[:100])}\" "
                    f"site \"{log.printable(site[:100])}\"")
        return {"status": proto.BAD}
    try:
        eligible = logs.eligible(site)
    except TableError as e:
        log.warning(f"fast_flush_domains: {e}")
        return {"status": proto.FAIL}
    if not eligible:
        return {"status": proto.DENY}
    try:
        if request == proto.ADD:
            queue_id = req.text("queue_id")
            if not q.valid_queue_id(queue_id):
                return {"status": proto.BAD}
            logs.add(site, queue_id)
            return {"status": proto.OK}
        moved = logs.send(site)
    except OSError as e:
        log.warning(f"flush {request} {site}: {e}")
        return {"status": proto.FAIL}
    if moved:
        await trigger.async_trigger(logs.qmgr, trigger.FORGET + trigger.SCAN_INCOMING)
    return {"status": proto.OK}


async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                ctx: Context) -> None:
    logs: FlushLogs = ctx.state["logs"]

    async def handler(req: attr.AttrList) -> dict[str, Any]:
        return await handle(logs, req)

    await attr.serve_pipelined(reader, writer, handler)


async def _start(ctx: Context) -> None:
    os.umask(0o077)
    ctx.state["logs"] = FlushLogs(ctx)


def main(argv: list[str] | None = None) -> None:
    server.run(PROGRAM, serve=serve, on_start=_start, argv=argv)


if __name__ == "__main__":
    main()
