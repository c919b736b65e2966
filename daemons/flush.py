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
      a line, without reading the log: a message deferred three times is
      there three times, as in Postfix); the smtp and lmtp delivery agents
      send it for each domain of a message they deferred.
    * ``send_site`` reads the log a line at a time, and each message it
      names that is still in deferred/ gets its time stamps reset and moves
      to incoming/, once however often it is named; the log is emptied (a
      message deferred again is added again) and qmgr is told to forget
      dead destinations and scan incoming/, so the mail goes out now rather
      than at its next retry.

    Master's wake-up (``W`` every 1000 seconds, master.cf's wakeup column;
    told from a request by its size, as Postfix's flush does: see
    pymailsys.server) refreshes the logs, as Postfix's flush_refresh_service:

    * a log that is not empty and was not read (by ``send_site`` or a
      refresh) for fast_flush_refresh_time is refreshed: each message it
      names that is still queued gets its time stamps set to now, so that
      qmgr's next deferred scan takes it (a ``send_site`` that neither moves
      it to incoming/ nor tells qmgr to forget dead destinations), and the
      log is emptied: IDs of mail delivered or bounced since go, and a
      message deferred again is added again;
    * a log that is empty and was not written for fast_flush_purge_time is
      removed (under its lock, so that an ``add`` racing with the removal
      writes to a new log instead of the removed one).

    A site not in fast_flush_domains gets ``DENY`` (postqueue: "Flush
    service is not configured for destination", smtpd: "459 <site>: service
    unavailable"); fast_flush_domains matches subdomains of its names when
    parent_domain_matches_subdomains lists it, as relay_domains.

SECURITY
    Runs as mail_owner; listens in public/ because postqueue (any user in
    authorized_flush_users) and smtpd talk to it. Postfix gates public/ with
    the postdrop group; here public/ is open to every local user, so the
    peer's uid (SO_PEERCRED) decides, as in showq and qmgr (the check in
    postqueue is a convenience):

    * the mail system (root, mail_owner, flush's own uid: ``access.trusted_peer``:
      smtpd's ETRN, the delivery agents' ``add``) makes any request, many on
      one connection (``attr.serve_pipelined``), which is closed once its
      requests are answered when flush goes away (a reload), so that a
      connection an smtpd of the old generation keeps open does not keep
      an old flush process running;
    * any other user is refused unless authorized_flush_users allows it
      (status 77, EX_NOPERM, and Postfix's ``User NAME(UID) is not allowed to
      flush the mail queue``, which postqueue prints as showq's refusal), and
      may then make only the requests postqueue makes for a user
      (``USER_REQUESTS``: ``send_site`` for ``-s``; ``-i`` does not come here);
      ``add`` or anything else is refused the same way and logged as a
      warning naming the uid. Such a user makes one small request
      (``USER_LIMITS``) per connection, read within ipc_timeout (else the
      connection closes: ``request not done within ipc_timeout``), and holds
      at most ``peers.PER_UID_CONNECTIONS`` connections
      (``TOTAL_CONNECTIONS`` for all users; one over is answered status 75,
      "try again later"). A wake-up (``W``, which refreshes and purges
      the logs) from such a user is logged and dropped by the server
      skeleton (``server.peer_is_mail_system``): it is master's to send.

    A site must be a host name
    or an address literal (no ``/``, at most 255 characters) and is folded
    to lower case before it names a file; a queue ID must be valid. Memory
    does not grow with a log: ``send_site`` streams it and remembers at most
    DUP_FILTER IDs.

CONFIGURATION PARAMETERS
    fast_flush_domains, parent_domain_matches_subdomains, queue_service_name,
    fast_flush_refresh_time, fast_flush_purge_time, ipc_timeout,
    authorized_flush_users, mail_owner.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import time
from collections.abc import Iterator
from typing import Any, BinaryIO

from pymailsys import log, server
from pymailsys.address.resolve import domain_list
from pymailsys.ipc import attr, peers, trigger
from pymailsys.ipc import flush as proto
from pymailsys.maps import TableError
from pymailsys.queue import spool as q
from pymailsys.server import Context
from pymailsys.submission import access

PROGRAM = "flush"
LINE_MAX = 256  # a longer line in a log is not a queue ID: read in pieces, each refused
DUP_FILTER = 10_000  # IDs one send remembers to skip duplicates (Postfix's FLUSH_DUP_FILTER_SIZE)
OPEN_TRIES = 3  # an add that finds its log removed by a purge opens it again
USER_REQUESTS = frozenset({proto.SEND_SITE})  # what postqueue asks for a user (-s)
USER_LIMITS = attr.Limits(attrs=4, value=proto.MAX_SITE, total=1024)  # a user's request


class FlushLogs:
    """The per-site logs under flush/ and the queue moves of ``send_site``."""

    def __init__(self, ctx: Context) -> None:
        self.spool = ctx.spool
        self.domains = domain_list(ctx.config, "fast_flush_domains")
        self.qmgr = ctx.spool.public(ctx.config.get("queue_service_name"))
        self.refresh_time = ctx.config.get_time("fast_flush_refresh_time")
        self.purge_time = ctx.config.get_time("fast_flush_purge_time")
        self.refreshing = False

    def path(self, site: str) -> str:
        return os.path.join(self.spool.dir(q.FLUSH), site)

    def eligible(self, site: str) -> bool:
        if site.startswith("["):
            return self.domains.match(site)
        return self.domains.match(site.rstrip("."))

    def add(self, site: str, queue_id: str) -> None:
        """Append the ID, as Postfix's flush_add_path: no reading of the log, so an add
        costs the same with a million IDs before it (``send`` drops the duplicates)."""
        for _ in range(OPEN_TRIES):
            fd = os.open(self.path(site), os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW,
                         0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)  # a send truncating the log waits for us
                if os.fstat(fd).st_nlink == 0:
                    continue  # a purge removed it while we waited for the lock
                os.write(fd, queue_id.encode() + b"\n")
                return
            finally:
                os.close(fd)
        raise OSError(f"fast flush logfile {site} removed {OPEN_TRIES} times in a row")

    def send(self, site: str) -> int:
        """Move the site's deferred messages to incoming/, each once; how many moved.

        The log is read a line at a time under its lock and emptied at the end. A
        message is moved only if it is still in deferred/ with a ctime from before
        this send began: a duplicate line for one moved already finds it gone, or
        back in deferred/ with a newer ctime after qmgr tried it. So no set of the
        log's IDs is needed; the bounded ``recent`` set only saves the system
        calls of the duplicates that come close together (Postfix's dup_filter).
        """
        try:
            fd = os.open(self.path(site), os.O_RDWR | os.O_NOFOLLOW)
        except FileNotFoundError:
            return 0
        moved = 0
        with os.fdopen(fd, "r+b") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            os.utime(f.fileno())  # the kernel's clock, as the ctimes it sets from now on
            started = os.fstat(f.fileno()).st_ctime
            for queue_id in self.queue_ids(f, site):
                moved += self.send_one(queue_id, started)
            f.truncate(0)
        return moved

    @staticmethod
    def queue_ids(f: BinaryIO, site: str) -> Iterator[str]:
        """The valid queue IDs of a locked log, read a line at a time; duplicates that
        come within DUP_FILTER IDs of each other only once."""
        recent: set[str] = set()
        for line in iter(lambda: f.readline(LINE_MAX), b""):
            queue_id = line.rstrip(b"\n").decode("ascii", "replace")
            if not q.valid_queue_id(queue_id):
                log.warning(f"bad queue id \"{log.printable(queue_id[:30])}...\" "
                            f"in fast flush logfile {site}")
                continue
            if queue_id in recent:
                continue
            if len(recent) >= DUP_FILTER:
                recent.clear()
            recent.add(queue_id)
            yield queue_id

    def send_one(self, queue_id: str, started: float) -> int:
        """1 if the message moved from deferred/ to incoming/, due now, else 0."""
        path = self.spool.path(q.DEFERRED, queue_id)
        try:
            if os.lstat(path).st_ctime >= started:
                return 0  # tried since this send began
            os.utime(path, (0, 0), follow_symlinks=False)
            self.spool.move(queue_id, q.DEFERRED, q.INCOMING)
        except FileNotFoundError:
            return 0  # delivered, bounced or already moved
        return 1

    def logs(self) -> list[str]:
        """The sites that have a log (other names in flush/ are left alone)."""
        with os.scandir(self.spool.dir(q.FLUSH)) as entries:
            return [e.name for e in entries
                    if proto.valid_site(e.name) and e.name == e.name.lower()]

    def refresh_one(self, site: str, now: float) -> None:
        """Purge the site's log if empty and unwritten for purge_time; refresh it if
        not empty and unread for refresh_time (see the module's DESCRIPTION)."""
        path = self.path(site)
        try:
            fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW)
        except FileNotFoundError:
            return
        with os.fdopen(fd, "r+b") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            st = os.fstat(f.fileno())
            if st.st_nlink == 0:
                return  # purged by someone else meanwhile
            if st.st_size == 0:
                if st.st_mtime + self.purge_time < now:
                    os.unlink(path)  # under the lock: a waiting add sees st_nlink 0
                return
            if st.st_atime + self.refresh_time >= now:
                return
            for queue_id in self.queue_ids(f, site):
                self.make_due(queue_id, now)
            f.truncate(0)
            os.utime(f.fileno(), (now, now))  # read now (noatime mounts update nothing)

    def make_due(self, queue_id: str, now: float) -> None:
        """Set the time stamps of a queued message to now: due at qmgr's next scan."""
        for queue in (q.DEFERRED, q.INCOMING):  # a send may just have moved it
            try:
                os.utime(self.spool.path(queue, queue_id), (now, now), follow_symlinks=False)
                return
            except FileNotFoundError:
                continue

    async def refresh(self) -> None:
        """Refresh or purge every log that is due, one at a time (each under its lock),
        letting requests through between logs; one refresh at a time."""
        if self.refreshing:
            return
        self.refreshing = True
        try:
            for site in self.logs():
                try:
                    self.refresh_one(site, time.time())
                except OSError as e:
                    log.warning(f"refresh fast flush logfile {site}: {e}")
                await asyncio.sleep(0)
        finally:
            self.refreshing = False


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
    uid = server.peer_uid(writer.get_extra_info("socket"))
    if access.trusted_peer(ctx.config, uid):
        async def handler(req: attr.AttrList) -> dict[str, Any]:
            return await handle(logs, req)

        await attr.serve_pipelined(reader, writer, handler, ctx.stopping)
        return
    reply = access.service_refusal(ctx.config, "authorized_flush_users", uid,
                                   "flush the mail queue")
    if reply is None:
        slots: peers.PeerSlots = ctx.state.setdefault("slots", peers.PeerSlots())
        if not slots.take(uid):
            reply = slots.refusal(uid, ctx.service)
        else:
            try:
                reply = await user_request(logs, reader, ctx, uid)
            finally:
                slots.give_back(uid)
    if reply is not None:
        writer.write(attr.encode(reply))
        await writer.drain()


async def user_request(logs: FlushLogs, reader: asyncio.StreamReader, ctx: Context,
                       uid: int) -> dict[str, Any] | None:
    """The one request of a user other than the mail system (SECURITY), its reply;
    None when none came whole within ipc_timeout."""
    timeout = ctx.config.get_time("ipc_timeout")
    try:
        req = await attr.read_attrs(reader, USER_LIMITS, timeout)
    except attr.RequestTimeout:
        log.warning(f"uid={uid}: request not done within ipc_timeout ({timeout}s)")
        return None
    except attr.ProtocolError as e:
        log.warning(f"uid={uid}: bad request: {e}")
        return None
    if req is None:
        return None
    request = req.text("request")
    if request not in USER_REQUESTS:
        why = f"flush request \"{log.printable(request[:100])}\" is the mail system's"
        log.warning(f"uid={uid}: {why}")
        return {"status": os.EX_NOPERM, "reason": why}
    return await handle(logs, req)


async def on_trigger(ctx: Context, data: bytes) -> None:
    """Master's wake-up (``W``, perhaps NUL-terminated): refresh the logs."""
    if data.rstrip(b"\0") != trigger.WAKEUP:
        log.warning(f"bad flush request: \"{log.printable(data.decode('latin-1'))}\"")
        return
    try:
        await ctx.state["logs"].refresh()
    except OSError as e:
        log.warning(f"refresh fast flush logfiles: {e}")


async def _start(ctx: Context) -> None:
    os.umask(0o077)
    ctx.state["logs"] = FlushLogs(ctx)


def main(argv: list[str] | None = None) -> None:
    server.run(PROGRAM, serve=serve, on_trigger=on_trigger, on_start=_start, argv=argv,
               trigger_by_size=True)


if __name__ == "__main__":
    main()
