"""bounce - delivery status notifications (Postfix's bounce(8), defer(8), trace(8)).

SYNOPSIS
    master.cf: ``bounce unix - - n - 0 bounce`` (also ``defer`` and ``trace``)

DESCRIPTION
    qmgr asks this service, over ``private/bounce``, for one notification
    about one message, from one of its status logs::

        request: request      "flush" (failures), "warn" (delays) or "trace"
                              (successes)
                 queue_id     the original message
                 queue_name   where its queue file is (normally "active")
                 log          the status log: "bounce", "defer" or "trace"
                 expired      1 when the message expired in the queue (flush
                              from the defer log: every entry is a failure, and
                              every pending recipient the log does not name is
                              added as "message expired": qmgr then removes the
                              message)
        reply:   status       0: done (a notice queued, or nothing to send on
                              purpose); -1: try again later
                 corrupt      (with -1) the original's queue file is damaged
                 queue_id     the sender notice's queue ID, when one was sent

    The service reads the status log and the original message from its queue
    file (a shared lock: qmgr holds the file), writes the notice with
    ``report`` (Postfix's templates and layout) and submits it through
    ``public/cleanup``, streamed. The status log is left for qmgr to remove.

    Who gets what, as Postfix's bounce daemon:

    - flush: the sender gets "Undelivered Mail Returned to Sender" (sender
      ``<>``) about the recipients whose NOTIFY includes FAILURE (or is not
      given), with the original (RET, default FULL); nothing when no
      recipient asked. With ``bounce`` in notify_classes, bounce_notice_recipient
      gets a "Postmaster Copy: Undelivered Mail" with the headers of every
      failed recipient's message. A failed bounce (sender ``<>``) goes, with
      ``bounce`` or ``2bounce`` in notify_classes, to 2bounce_notice_recipient
      (from double_bounce_sender), else it is dropped; a failed double bounce
      is dropped with a warning.
    - warn: the sender gets "Delayed Mail (still being retried)" about the
      recipients whose NOTIFY includes DELAY (or is not given), with the
      headers (RET, default HDRS); with ``delay`` in notify_classes,
      delay_notice_recipient gets "Postmaster Warning: Delayed Mail".
      A delayed bounce goes to delay_notice_recipient only with ``delay``.
    - trace: the sender gets "Successful Mail Delivery Report" about the
      recipients whose NOTIFY includes SUCCESS (RET, default HDRS). A bounce
      or a double bounce gets none.

DIAGNOSTICS
    ``ID: sender non-delivery notification: NEWID``, ``ID: postmaster
    non-delivery notification: NEWID``, ``ID: sender delay notification:
    NEWID``, ``ID: postmaster delay notification: NEWID``, ``ID: sender
    delivery status notification: NEWID``; warnings when cleanup cannot take
    a notification (the reply is then -1 and qmgr retries).

SECURITY
    Runs as mail_owner. Reads only files in the queue directory.

CONFIGURATION PARAMETERS
    myhostname, myorigin, notify_classes, bounce_notice_recipient,
    2bounce_notice_recipient, delay_notice_recipient, double_bounce_sender,
    bounce_size_limit, delay_warning_time, maximal_queue_lifetime, cleanup_service_name.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

from pymailsys.daemons.bounce import report

from pymailsys import dsn, log, server
from pymailsys.delivery.agent import CORRUPT, ContentError, QueueContent
from pymailsys.ipc import attr
from pymailsys.ipc.attr import AttrList, AttrPool, AttrValue, ProtocolError, request_streamed
from pymailsys.ipc.services import CLEANUP_FLAG_MAP_OK, CLEANUP_OK
from pymailsys.queue import spool as q
from pymailsys.queue import status_log
from pymailsys.queue.queue_file import Recipient

PROGRAM = "bounce"


@dataclass(frozen=True)
class Send:
    """One notice to queue: its template, sender, recipient and how much original."""

    template: report.Template
    sender: str
    to: str
    kind: str  # the log line's word: "sender" or "postmaster"
    postmaster_copy: bool
    ret: int


_NOTICE_NAME = {"failure": "non-delivery notification", "delay": "delay notification",
                "success": "delivery status notification"}
_REQUESTS = {"flush": report.FAILURE, "warn": report.DELAY, "trace": report.SUCCESS}
_LOGS = (q.BOUNCE, q.DEFER, q.TRACE)


def unlisted(recipients: list[Recipient], entries: list[status_log.Entry]) -> list[
        status_log.Entry]:
    """Entries for the pending recipients that no entry names (by its R record's offset,
    else by address): an expired message is removed once its notice is queued, so a
    recipient whose defer entry could not be written (a full disk) is returned as
    expired, never dropped."""
    offsets = {e.offset for e in entries if e.offset}
    addresses = {e.recipient for e in entries if not e.offset}
    return [status_log.Entry(rc.address, "4.4.7", status_log.ACTION_FAILED, "message expired",
                             rc.orig, rc.offset, rc.dsn_orcpt, rc.notify)
            for rc in recipients if not rc.done
            and (rc.offset not in offsets if rc.offset else rc.address not in addresses)]


def unreadable(error: ContentError) -> dict[str, object]:
    """The reply when the original cannot be read: try again later, unless it is damaged
    (``corrupt``: qmgr saves it to corrupt/ instead of asking again forever)."""
    return {"status": -1, CORRUPT: 1} if error.damaged else {"status": -1}


class Bounce:
    def __init__(self, ctx: server.Context) -> None:
        self.ctx = ctx
        config = ctx.config
        self.config = config
        self.spool = ctx.spool
        self.cleanup = AttrPool(ctx.spool.public(config.get("cleanup_service_name")))
        self.size_limit = config.get_size("bounce_size_limit")
        self.classes = frozenset(c.lower() for c in config.get_list("notify_classes"))
        self.host = config.get("myhostname")
        self.origin = config.get("myorigin")
        self.double_bounce = f"{config.get('double_bounce_sender')}@{self.origin}"
        self.delay_warning = config.get_time("delay_warning_time")
        self.lifetime = config.get_time("maximal_queue_lifetime")

    async def handle(self, request: AttrList) -> dict[str, object]:
        queue_id = request.text("queue_id")
        template = _REQUESTS.get(request.text("request"))
        which = request.text("log", q.BOUNCE)
        queue_name = request.text("queue_name", q.ACTIVE)
        if template is None or which not in _LOGS or not q.valid_queue_id(queue_id) \
                or not q.valid_queue_name(queue_name):
            log.warning(f"{PROGRAM}: bad request: {request!r}")
            return {"status": -1}
        entries = status_log.read(self.spool.path(which, queue_id))
        expired = bool(request.number("expired"))
        if expired:
            for e in entries:
                e.action = status_log.ACTION_FAILED
        try:
            original = QueueContent(self.spool.path(queue_name, queue_id))
        except ContentError as e:
            log.warning(f"{queue_id}: cannot read the original message: {e}")
            return unreadable(e)
        with original:
            env = original.envelope
            assert env is not None
            if template is report.FAILURE and (expired or not entries):
                entries += unlisted(env.recipients, entries)
            if expired:
                for entry in entries:
                    if not entry.reason.startswith("delivery"):
                        entry.reason = f"delivery temporarily suspended: {entry.reason}"
            try:
                return await self.notify(queue_id, original, template, entries)
            except ContentError as e:
                log.warning(f"{queue_id}: cannot read the original message: {e}")
                return unreadable(e)

    def plan(self, queue_id: str, sender: str, template: report.Template,
             ret: int) -> list[Send]:
        """Who gets a notice, as Postfix's bounce daemon decides (module docstring)."""
        sender_ret = ret or (dsn.RET_FULL if template is report.FAILURE else dsn.RET_HDRS)
        if sender.lower() == self.double_bounce.lower():
            if template is report.FAILURE:
                log.warning(f"{queue_id}: undeliverable postmaster notification discarded")
            return []
        if template is report.SUCCESS:
            return [] if not sender else [Send(template, "", sender, "sender", False, sender_ret)]
        if template is report.FAILURE:
            if not sender:
                if not self.classes & {"bounce", "2bounce"}:
                    log.info(f"{queue_id}: discarding undeliverable bounce (sender <>)")
                    return []
                return [Send(template, self.double_bounce,
                             self.config.get("2bounce_notice_recipient"), "postmaster", True,
                             dsn.RET_FULL)]
            out = [Send(template, "", sender, "sender", False, sender_ret)]
            if "bounce" in self.classes:
                out.append(Send(template, self.double_bounce,
                                self.config.get("bounce_notice_recipient"), "postmaster", True,
                                dsn.RET_HDRS))
            return out
        postmaster = Send(template, self.double_bounce,
                          self.config.get("delay_notice_recipient"), "postmaster", True,
                          dsn.RET_HDRS)
        if not sender:
            return [postmaster] if "delay" in self.classes else []
        out = [Send(template, "", sender, "sender", False, sender_ret)]
        return out + [postmaster] if "delay" in self.classes else out

    async def notify(self, queue_id: str, original: QueueContent, template: report.Template,
                     entries: list[status_log.Entry]) -> dict[str, object]:
        env = original.envelope
        assert env is not None
        ret_text = env.attrs.get("dsn_ret", "")
        ret = int(ret_text) if ret_text in (str(dsn.RET_FULL), str(dsn.RET_HDRS)) else 0
        reply: dict[str, object] = {"status": 0}
        for n, send in enumerate(self.plan(queue_id, env.sender, template, ret)):
            # a postmaster copy reports every recipient; the sender only those who asked
            chosen = entries if send.postmaster_copy else report.wanted(template, entries)
            if not chosen or not send.to:
                continue
            notice = report.Notice(template, queue_id, send.to, self.host, self.origin,
                                   send.postmaster_copy, send.ret, self.size_limit,
                                   self.delay_warning, self.lifetime)
            new_id = await self.submit(queue_id, send, report.write(notice, original, chosen))
            if new_id is None:
                if n == 0:
                    return {"status": -1}  # a postmaster copy is not worth a repeat
                continue
            if n == 0:
                reply["queue_id"] = new_id
        return reply

    async def submit(self, queue_id: str, send: Send, content: Iterator[bytes]) -> str | None:
        """Queue one notice through cleanup; its queue ID, or None after a warning."""
        what = f"{send.kind} {_NOTICE_NAME[send.template.kind]}"
        attrs: list[tuple[str, AttrValue]] = [
            ("origin", "bounce"), ("sender", send.sender), ("rcpt", send.to),
            ("rewrite_context", "local"), ("flags", CLEANUP_FLAG_MAP_OK)]
        try:
            reply = await request_streamed(self.cleanup, attrs, "content", content)
        except (ProtocolError, OSError) as e:
            log.warning(f"{queue_id}: {what}: cleanup: {e}")
            return None
        if reply.number("status", -1) != CLEANUP_OK:
            log.warning(f"{queue_id}: {what}: {reply.text('dsn')} {reply.text('reason')}")
            return None
        new_id = reply.text("queue_id")
        log.info(f"{queue_id}: {what}: {new_id}")
        return new_id


async def _start(ctx: server.Context) -> None:
    ctx.state["bounce"] = Bounce(ctx)


async def _stop(ctx: server.Context) -> None:
    service: Bounce | None = ctx.state.get("bounce")
    if service is not None:
        await service.cleanup.close()


async def serve(reader, writer, ctx: server.Context) -> None:  # type: ignore[no-untyped-def]
    service: Bounce = ctx.state["bounce"]
    await attr.serve_pipelined(reader, writer, service.handle, ctx.stopping)


def main(argv: list[str] | None = None) -> None:
    os.umask(0o077)
    server.run(PROGRAM, serve=serve, on_start=_start, on_stop=_stop, argv=argv)


if __name__ == "__main__":
    main()
