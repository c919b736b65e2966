"""bounce - the non-delivery notification service (Postfix's bounce(8)).

SYNOPSIS
    master.cf: ``bounce unix - - n - 0 bounce`` (also ``defer`` and ``trace``)

DESCRIPTION
    qmgr asks this service, over ``private/bounce``, to return a message's
    failed recipients to its sender. One request per message::

        request: request      "flush"
                 queue_id     the original message
                 queue_name   where its queue file is (normally "active")
                 log          "bounce" (permanent failures) or "defer" (the
                              recipients of an expired message)
                 expired      1 when the message expired in the queue
        reply:   status       0: the notification is queued, or was dropped on
                              purpose (a bounce of a bounce with no
                              2bounce_notice_recipient); -1: try again later
                 queue_id     the notification's queue ID, when one was sent

    The service reads the status log (``bounce/ID`` or ``defer/ID``) and the
    original message from its queue file (a shared lock: qmgr holds the file),
    writes one RFC 3464 report in Postfix's words (From
    ``MAILER-DAEMON (Mail Delivery System)``, Subject ``Undelivered Mail
    Returned to Sender``, sender ``<>``) and submits it through
    ``public/cleanup``, streamed: the original goes along as it is read, a
    chunk at a time, whole (message/rfc822) unless RET=HDRS was asked or it
    is larger than bounce_size_limit, else its headers (text/rfc822-headers).
    The status log is left for qmgr to remove once the
    reply says 0. A failed bounce (sender ``<>``) goes to
    2bounce_notice_recipient from ``double-bounce@$myorigin``; a failed
    double bounce is dropped with a log line.

DIAGNOSTICS
    ``ID: sender non-delivery notification: NEWID``,
    ``ID: postmaster non-delivery notification: NEWID``, warnings when cleanup
    cannot take the notification (the reply is then -1 and qmgr retries).

SECURITY
    Runs as mail_owner. Reads only files in the queue directory.

CONFIGURATION PARAMETERS
    myhostname, myorigin, 2bounce_notice_recipient, bounce_size_limit.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

from pymailsys import log, server
from pymailsys.delivery.agent import ContentError, QueueContent
from pymailsys.ipc import attr
from pymailsys.ipc.attr import AttrList, AttrPool, AttrValue, ProtocolError, request_streamed
from pymailsys.ipc.services import CLEANUP, CLEANUP_FLAG_MAP_OK, CLEANUP_OK
from pymailsys.queue import spool as q
from pymailsys.queue import status_log

PROGRAM = "bounce"


class Bounce:
    def __init__(self, ctx: server.Context) -> None:
        self.ctx = ctx
        self.config = ctx.config
        self.spool = ctx.spool
        self.cleanup = AttrPool(ctx.spool.public(CLEANUP))
        self.size_limit = ctx.config.get_size("bounce_size_limit")

    async def handle(self, request: AttrList) -> dict[str, object]:
        queue_id = request.text("queue_id")
        if request.text("request") != "flush" or not q.valid_queue_id(queue_id):
            log.warning(f"{PROGRAM}: bad request: {request!r}")
            return {"status": -1}
        queue_name = request.text("queue_name", q.ACTIVE)
        which = q.DEFER if request.text("log") == "defer" else q.BOUNCE
        entries = status_log.read(self.spool.path(which, queue_id))
        if which == q.DEFER:
            for e in entries:
                e.action = status_log.ACTION_FAILED
        try:
            original = QueueContent(self.spool.path(queue_name, queue_id))
        except ContentError as e:
            log.warning(f"{queue_id}: cannot read the original message: {e}")
            return {"status": -1}
        with original:
            env = original.envelope
            assert env is not None
            if not entries:
                entries = [status_log.Entry(rc.address, "4.4.7", status_log.ACTION_FAILED,
                                            "message expired", rc.orig, rc.offset)
                           for rc in env.recipients if not rc.done]
            try:
                return await self.notify(queue_id, original, entries,
                                         bool(request.number("expired")))
            except ContentError as e:
                log.warning(f"{queue_id}: cannot read the original message: {e}")
                return {"status": -1}

    async def notify(self, queue_id: str, original: QueueContent,
                     entries: list[status_log.Entry], expired: bool) -> dict[str, object]:
        env = original.envelope
        assert env is not None
        double_bounce = "double-bounce@" + self.config.get("myorigin")
        if env.sender == "":
            notice = self.config.get("2bounce_notice_recipient")
            if not notice:
                log.info(f"{queue_id}: discarding undeliverable bounce (sender <>)")
                return {"status": 0}
            sender, rcpt, kind = double_bounce, notice, "postmaster"
        elif env.sender.lower() == double_bounce.lower():
            log.info(f"{queue_id}: discarding undeliverable postmaster notification")
            return {"status": 0}
        else:
            sender, rcpt, kind = "", env.sender, "sender"
        content = nondelivery_message(self.config.get("myhostname"), queue_id, original, entries,
                                      rcpt, expired, self.size_limit)
        attrs: list[tuple[str, AttrValue]] = [
            ("origin", "bounce"), ("sender", sender), ("rcpt", rcpt),
            ("rewrite_context", "local"), ("flags", CLEANUP_FLAG_MAP_OK)]
        try:
            reply = await request_streamed(self.cleanup, attrs, "content", content)
        except (ProtocolError, OSError) as e:
            log.warning(f"{queue_id}: {kind} non-delivery notification: cleanup: {e}")
            return {"status": -1}
        if reply.number("status", -1) != CLEANUP_OK:
            log.warning(f"{queue_id}: {kind} non-delivery notification: "
                        f"{reply.text('dsn')} {reply.text('reason')}")
            return {"status": -1}
        new_id = reply.text("queue_id")
        log.info(f"{queue_id}: {kind} non-delivery notification: {new_id}")
        return {"status": 0, "queue_id": new_id}


def nondelivery_message(host: str, queue_id: str, original: QueueContent,
                        entries: list[status_log.Entry], to: str, expired: bool,
                        size_limit: int = 50000) -> Iterator[bytes]:
    """An RFC 3464 report in Postfix's words, then the original message: whole
    (message/rfc822) unless the sender asked for headers (RET=HDRS) or it is larger
    than size_limit; else its headers (text/rfc822-headers), at most size_limit bytes.
    The original is read from the queue file as the report goes out, a chunk at a time."""
    env = original.envelope
    assert env is not None
    now = time.time()
    date = time.strftime("%a, %d %b %Y %H:%M:%S %z", time.localtime(now))
    arrival = time.strftime("%a, %d %b %Y %H:%M:%S %z", time.localtime(env.arrival))
    boundary = f"{queue_id}.{int(now)}/{host}"
    lines = [
        f"From: MAILER-DAEMON@{host} (Mail Delivery System)",
        "Subject: Undelivered Mail Returned to Sender",
        f"To: {to}",
        f"Date: {date}",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status;\n\tboundary="{boundary}"',
        "Content-Transfer-Encoding: 8bit",
        "",
        "This is a MIME-encapsulated message.",
        "",
        f"--{boundary}",
        "Content-Description: Notification",
        "Content-Type: text/plain; charset=utf-8",
        "",
        f"This is the mail system at host {host}.",
        "",
        "I'm sorry to have to inform you that your message could not",
        "be delivered to one or more recipients. It's attached below.",
        "",
        "For further assistance, please send mail to postmaster.",
        "",
        "If you do so, please include this problem report. You can",
        "delete your own text from the attached returned message.",
        "",
        "                   The mail system",
        "",
    ]
    for e in entries:
        why = e.reason
        if expired and not why.startswith("delivery"):
            why = f"delivery temporarily suspended: {why}"
        lines.append(f"<{e.recipient}>: {why}")
    lines += ["", f"--{boundary}", "Content-Description: Delivery report",
              "Content-Type: message/delivery-status", "",
              f"Reporting-MTA: dns; {host}", f"X-Postfix-Queue-ID: {queue_id}",
              f"X-Postfix-Sender: rfc822; {env.sender}", f"Arrival-Date: {arrival}"]
    for e in entries:
        lines += ["", f"Final-Recipient: rfc822; {e.recipient}"]
        if e.original_recipient:
            lines.append(f"Original-Recipient: rfc822;{e.original_recipient}")
        lines += ["Action: failed", f"Status: {e.status}",
                  f"Diagnostic-Code: X-Postfix; {e.reason}"]
    whole = env.attrs.get("dsn_ret") != "2" and not (size_limit and env.message_size > size_limit)
    if whole:
        lines += ["", f"--{boundary}", "Content-Description: Undelivered Message",
                  "Content-Type: message/rfc822", "Content-Transfer-Encoding: 8bit", ""]
    else:
        lines += ["", f"--{boundary}", "Content-Description: Undelivered Message Headers",
                  "Content-Type: text/rfc822-headers", "Content-Transfer-Encoding: 8bit", ""]
    yield "\n".join(lines).encode("utf-8", "surrogateescape") + b"\n"
    if whole:
        yield from original.text()
    else:
        attached = bytearray()
        for header in original.header_lines():
            if size_limit and len(attached) + len(header) + 1 > size_limit:
                break
            attached += header + b"\n"
        yield bytes(attached)
    yield f"\n--{boundary}--\n".encode()


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
