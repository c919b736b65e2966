"""pickup - local mail pickup: maildrop files and live submissions to cleanup.

SYNOPSIS
    pickup [generic daemon options]     (master.cf: pickup unix n - n 60 1 pickup)

DESCRIPTION
    pickup listens on ``public/pickup``. What a client writes first decides
    what the connection is:

    * an upper-case trigger byte (``W``, from master's wakeup timer, from
      ``postqueue -f``, from sendmail after a maildrop write): pickup scans
      ``maildrop/``. It also scans once at start-up. Master starts pickup
      on demand (its wake-up only while maildrop/ holds a file), and pickup
      exits after max_idle seconds without a client.
    * the byte ``s`` followed by one attribute list: a live submission from
      sendmail (``pymailsys.submission.protocol`` describes the request and reply).
      The submitter's uid comes from the kernel (SO_PEERCRED).

    For every complete maildrop file (regular, one link, mode 0744 / owner
    bits rwx) pickup reads the records strictly (``queue.maildrop.parse_maildrop``),
    takes the submitter's uid from the file owner (never from the content),
    applies authorized_submit_users and local_login_sender_maps, and hands
    the message to cleanup (origin ``pickup``), its content read from the
    file again as it is sent (``maildrop.content_pieces``), never whole. The file is removed only
    after cleanup replied that the message is queued. A file written by
    mail_owner without o+r (``postsuper -r``) is requeued mail: its sender
    stands, and the log line names ``orig_id=``. A file's content filter
    records (L) are dropped, requeued or not: every message gets pickup's
    own content_filter instead (Postfix's pickup, postsuper(1) ``-r``).

    A malformed file is moved to ``corrupt/`` with a warning; the other
    files still go through. A file cleanup cannot take now (cleanup down,
    4xx) stays for the next scan.

    Log lines as Postfix's pickup: ``QUEUEID: uid=1000 from=<user>`` (and
    ``orig_id=OLDID`` for requeued mail).

SECURITY
    Runs as mail_owner. Maildrop files are hostile input: bounded record
    lengths, only the record types Postfix's pickup allows, one sender and
    at least one recipient required, no symlinks, no hard links; pointer
    records are followed (a requeued queue file has them) but a pointer loop
    is ``too many reverse jump records``, and content over
    message_size_limit is ``message file too big``: both go to corrupt/.
    Memory does not grow with the file.
    Connections are hostile too: a user other than root, mail_owner or
    pickup's own uid holds at most ``peers.PER_UID_CONNECTIONS`` connections
    (``TOTAL_CONNECTIONS`` for all users); one over the limit is answered
    EX_TEMPFAIL at once, so that sendmail writes to maildrop/ instead of
    waiting. The first byte must come, and a submission must arrive whole,
    within ipc_timeout; a submission holds at most MAX_RECIPIENTS
    recipients and content up to message_size_limit (``request_limits``),
    refused from the announced length before it is read.

CONFIGURATION PARAMETERS
    authorized_submit_users, local_login_sender_maps, line_length_limit,
    message_size_limit, ipc_timeout, mail_owner, cleanup_service_name,
    content_filter (every message, a requeued one too, as Postfix's pickup),
    info_log_address_format (how ``from=<…>`` shows the sender: ``log.address``).
"""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import Iterable
from typing import Any

from pymailsys import log, maps, privileges, server
from pymailsys.ipc import attr, peers, services
from pymailsys.queue import maildrop
from pymailsys.queue import spool as queue
from pymailsys.server import Context
from pymailsys.submission import access, protocol


class Pickup:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        cfg = ctx.config
        self.line_limit = max(cfg.get_int("line_length_limit"), 2048)
        self.size_limit = cfg.get_size("message_size_limit")
        self.cleanup_flags = services.receive_flags(cfg) | services.CLEANUP_FLAG_BOUNCE
        self.content_filter = cfg.get("content_filter")
        self.cleanup = attr.AttrPool(ctx.spool.public(cfg.get("cleanup_service_name")))
        try:
            self.owner_uid = privileges.mail_owner(cfg).uid
        except privileges.PrivilegeError:
            self.owner_uid = os.getuid()
        if os.getuid() != 0 and os.getuid() != self.owner_uid:
            self.owner_uid = os.getuid()  # unprivileged instance: everything runs as us
        self.scanning = False
        self.again = False
        self.slots = peers.PeerSlots()

    # --- cleanup hand-off -------------------------------------------------------
    async def to_cleanup(self, sub: maildrop.Submission, uid: int, content: Iterable[bytes],
                         orig_id: str = "") -> attr.AttrList:
        """Hand a message to cleanup, its ``content`` in pieces (services.CONTENT_CHUNK).
        An exception from ``content`` aborts the request (cleanup queues nothing) and
        goes on to the caller."""
        req: list[tuple[str, Any]] = [
            ("origin", "pickup"), ("sender", sub.sender),
        ]
        req += [("rcpt", a) for a in sub.all_recipients()]
        if orig_id and any(sub.orig_recipients):
            req += [("orcpt", o) for o in sub.orig_recipients]
        req += [("uid", uid), ("rewrite_context", sub.rewrite_context or "local"),
                ("flags", self.cleanup_flags)]
        if sub.full_name:
            req.append(("full_name", sub.full_name))
        if sub.encoding:
            req.append(("encoding", "8bitmime" if sub.encoding == "8bit" else sub.encoding))
        notifies = sub.recipient_notifies()
        if any(notifies):
            req += [("notify", n) for n in notifies]
        if any(sub.dsn_orcpts):
            req += [("dsn_orcpt", o) for o in sub.recipient_orcpts()]
        if sub.envid:
            req.append(("envid", sub.envid))
        if sub.ret:
            req.append(("ret", sub.ret))
        if orig_id:
            req.append(("orig_id", orig_id))
        if self.content_filter:  # a requeued file's own L records were dropped (maildrop)
            req.append(("content_filter", self.content_filter))
        return await attr.request_streamed(self.cleanup, req, "content", content)

    def check_access(self, uid: int, sender: str) -> tuple[int, str]:
        """(sysexits status, reason) for this submitter and sender."""
        cfg = self.ctx.config
        try:
            refused = access.user_acl(cfg, "authorized_submit_users", uid)
        except maps.TableError as e:
            return os.EX_TEMPFAIL, f"authorized_submit_users lookup error: {e}"
        if refused is not None:
            return os.EX_NOPERM, f"User {refused}({uid}) is not allowed to submit mail"
        try:
            if not access.login_sender_ok(cfg, uid, sender):
                return os.EX_NOPERM, f"not authorized to use sender='{sender}'"
        except maps.TableError:
            return os.EX_TEMPFAIL, (f"local_login_sender_maps table lookup error for "
                                    f"'{cfg.get('local_login_sender_maps')}'")
        return os.EX_OK, ""

    # --- live submissions ----------------------------------------------------------
    def request_limits(self) -> attr.Limits:
        """A submission: the content up to message_size_limit, the envelope beside it."""
        content = self.size_limit or attr.MAX_VALUE
        return attr.Limits(attrs=maildrop.MAX_RECIPIENTS + 32, value=content,
                           total=content + (4 << 20))

    async def submit(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     uid: int) -> None:
        try:
            req = await attr.read_attrs(reader, self.request_limits(),
                                        self.ctx.config.get_time("ipc_timeout"))
        except attr.ProtocolError as e:
            log.warning(f"uid={uid}: malformed submission: {e}")
            return
        if req is None:
            return
        reply = await self.handle_submission(req, uid)
        writer.write(attr.encode(reply))
        await writer.drain()

    async def handle_submission(self, req: attr.AttrList, uid: int) -> dict[str, Any]:
        try:
            sub = protocol.from_attrs(req, self.size_limit, self.line_limit)
        except maildrop.SubmissionError as e:
            log.warning(f"uid={uid}: malformed submission: {e}")
            return {"status": e.status, "reason": f"malformed submission: {e}"}
        status, reason = self.check_access(uid, sub.sender)
        if status:
            if status == os.EX_NOPERM:
                log.warning(f"uid={uid}: {reason}")
            return {"status": status, "reason": reason}
        try:
            reply = await self.to_cleanup(
                sub, uid, protocol.content_pieces(req, services.CONTENT_CHUNK))
        except (attr.ProtocolError, OSError) as e:
            log.warning(f"connect to cleanup service: {e}")
            return {"status": os.EX_TEMPFAIL, "reason": "queue file write error"}
        code = reply.number("status", 451)
        if code != services.CLEANUP_OK:
            reason = reply.text("reason") or "queue file write error"
            return {"status": os.EX_TEMPFAIL if code < 500 else os.EX_UNAVAILABLE,
                    "reason": reason}
        queue_id = reply.text("queue_id")
        log.info(f"{queue_id}: uid={uid} from=<{log.address(sub.sender)}>")
        return {"status": 0, "queue_id": queue_id}

    # --- maildrop -------------------------------------------------------------------
    async def scan(self) -> None:
        """Scan maildrop until a pass removes nothing (coalesces concurrent requests)."""
        if self.scanning:
            self.again = True
            return
        self.scanning = True
        try:
            while True:
                self.again = False
                removed = await self.scan_once()
                if not removed and not self.again:
                    break
        finally:
            self.scanning = False

    async def scan_once(self) -> int:
        """One pass over maildrop/ in directory order, as Postfix's scan_dir: the
        directory is read as the pass goes (no list of it), so 100,000 files
        dropped while the system was down cost pickup no more memory than ten."""
        spool = self.ctx.spool
        removed = 0
        for name in spool.scan(queue.MAILDROP):
            if self.ctx.stopping.is_set():
                break
            result = await self.pickup_file(name, spool.path(queue.MAILDROP, name))
            if result == "removed":
                removed += 1
            elif result == "stop":
                break
        return removed

    def set_aside(self, name: str, path: str, uid: int, why: str) -> None:
        log.warning(f"{path}: uid={uid}: {why} -- file moved to {queue.CORRUPT}/")
        try:
            self.ctx.spool.move(name, queue.MAILDROP, queue.CORRUPT)
        except OSError as e:
            log.warning(f"rename {path} to {queue.CORRUPT}/: {e.strerror}; removing it")
            self.remove(path)

    @staticmethod
    def remove(path: str) -> bool:
        try:
            os.unlink(path)
            return True
        except FileNotFoundError:
            return False
        except OSError as e:
            log.warning(f"remove {path}: {e.strerror}")
            return False

    async def pickup_file(self, name: str, path: str) -> str:
        """'removed', 'kept', 'skipped' or 'stop' (cleanup is unavailable)."""
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return "skipped"
        if not stat.S_ISREG(st.st_mode) or not queue.is_complete(st.st_mode):
            return "skipped"
        if st.st_nlink > 1:
            log.warning(f"{path}: uid {st.st_uid}: file has {st.st_nlink} links")
            return "skipped"
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except FileNotFoundError:
            return "skipped"
        except OSError as e:
            log.warning(f"open input file {path}: {e.strerror}")
            return "skipped"
        try:
            return await self.pickup_open_file(name, path, fd, st)
        finally:
            os.close(fd)

    async def pickup_open_file(self, name: str, path: str, fd: int, st: os.stat_result) -> str:
        """``pickup_file`` once the file is open: parsed without keeping its content,
        which goes to cleanup as it is read again (``maildrop.content_pieces``)."""
        fst = os.fstat(fd)
        if (fst.st_dev, fst.st_ino) != (st.st_dev, st.st_ino):
            return "skipped"
        uid = fst.st_uid
        limit = (self.size_limit * 2 + (1 << 20)) if self.size_limit else 0
        if limit and fst.st_size > limit:
            self.set_aside(name, path, uid, "message file too big")
            return "kept"
        src = maildrop.RecordFile.of_fd(fd, fst.st_size)
        requeued = uid == self.owner_uid and not (fst.st_mode & stat.S_IROTH)
        try:
            sub = maildrop.parse_maildrop(src, self.line_limit, requeued, self.size_limit,
                                          lines=False)
        except maildrop.SubmissionError as e:
            self.set_aside(name, path, uid, str(e))
            return "kept"
        if not sub.all_recipients():
            if not requeued:
                log.warning(f"{path}: uid={uid}: no recipients")
            return "removed" if self.remove(path) else "kept"
        if not requeued:
            status, reason = self.check_access(uid, sub.sender)
            if status == os.EX_TEMPFAIL:
                log.warning(f"{path}: uid={uid}: {reason}")
                return "kept"
            if status:
                log.warning(f"{path}: uid={uid}: {reason} -- message discarded")
                return "removed" if self.remove(path) else "kept"
        content = maildrop.content_pieces(src, sub.content_offset, self.line_limit,
                                          self.size_limit, services.CONTENT_CHUNK)
        try:
            reply = await self.to_cleanup(sub, uid, content, name if requeued else "")
        except maildrop.SubmissionError as e:  # the file changed since it was parsed
            self.set_aside(name, path, uid, str(e))
            return "kept"
        except (attr.ProtocolError, OSError) as e:
            log.warning(f"connect to cleanup service: {e}")
            return "stop"
        code = reply.number("status", 451)
        if code != services.CLEANUP_OK:
            reason = reply.text("reason")
            log.warning(f"{path}: error writing queue file: {code} {reason}")
            if code >= 500:
                return "removed" if self.remove(path) else "kept"
            return "stop"
        queue_id = reply.text("queue_id")
        if requeued:
            log.info(f"{queue_id}: uid={uid} from=<{log.address(sub.sender)}> orig_id={name}")
        else:
            log.info(f"{queue_id}: uid={uid} from=<{log.address(sub.sender)}>")
        return "removed" if self.remove(path) else "kept"


def _pickup(ctx: Context) -> Pickup:
    p = ctx.state.get("pickup")
    if p is None:
        p = ctx.state["pickup"] = Pickup(ctx)
    return p  # type: ignore[no-any-return]


async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, ctx: Context) -> None:
    p = _pickup(ctx)
    try:
        uid = server.peer_uid(writer.get_extra_info("socket"))
    except (OSError, AttributeError) as e:
        log.warning(f"cannot get client credentials: {e}")
        return
    trusted = access.trusted_peer(ctx.config, uid)
    if not trusted and not p.slots.take(uid):
        writer.write(attr.encode(p.slots.refusal(uid, ctx.service)))
        await writer.drain()
        return
    try:
        await serve_client(p, reader, writer, uid)
    finally:
        if not trusted:
            p.slots.give_back(uid)


async def serve_client(p: Pickup, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                       uid: int) -> None:
    timeout = p.ctx.config.get_time("ipc_timeout")
    try:
        first = await asyncio.wait_for(reader.read(1), timeout)
    except TimeoutError:
        log.warning(f"uid={uid}: nothing sent within ipc_timeout ({timeout}s)")
        return
    if not first:
        return
    if first == protocol.SUBMIT_MAGIC:
        await p.submit(reader, writer, uid)
        return
    # a trigger: the rest of the bytes (bounded), then a scan
    try:
        await asyncio.wait_for(reader.read(1024), timeout=1.0)
    except TimeoutError:
        pass
    writer.close()
    server.background(p.scan())


async def on_trigger(ctx: Context, data: bytes) -> None:
    await _pickup(ctx).scan()


async def on_start(ctx: Context) -> None:
    server.background(_pickup(ctx).scan())


async def on_stop(ctx: Context) -> None:
    p = ctx.state.get("pickup")
    if p is not None:
        await p.cleanup.close()


def main(argv: list[str] | None = None) -> None:
    server.run("pickup", serve=serve, on_trigger=on_trigger, on_start=on_start,
               on_stop=on_stop, argv=argv)


if __name__ == "__main__":
    main()
