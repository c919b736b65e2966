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
    original message's headers from its queue file (a shared lock: qmgr holds
    the file), writes one RFC 3464 report in Postfix's words (From
    ``MAILER-DAEMON (Mail Delivery System)``, Subject ``Undelivered Mail
    Returned to Sender``, sender ``<>``) and submits it through
    ``public/cleanup``. The status log is left for qmgr to remove once the
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

import fcntl
import os
import time

from pymailsys import log, server
from pymailsys.ipc import attr
from pymailsys.ipc.attr import AttrClient, AttrList, ProtocolError
from pymailsys.ipc.services import CLEANUP, CLEANUP_FLAG_MAP_OK, CLEANUP_OK
from pymailsys.queue import spool as q
from pymailsys.queue import status_log
from pymailsys.queue.queue_file import Envelope, QueueFileError, content_lines, read_envelope_bytes

PROGRAM = "bounce"


class Bounce:
    def __init__(self, ctx: server.Context) -> None:
        self.ctx = ctx
        self.config = ctx.config
        self.spool = ctx.spool
        self.cleanup = AttrClient(ctx.spool.public(CLEANUP))
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
            env, headers = self.original(queue_name, queue_id)
        except (OSError, QueueFileError) as e:
            log.warning(f"{queue_id}: cannot read the original message: {e}")
            return {"status": -1}
        if not entries:
            entries = [status_log.Entry(rc.address, "4.4.7", status_log.ACTION_FAILED,
                                        "message expired", rc.orig, rc.offset)
                       for rc in env.recipients if not rc.done]
        return await self.notify(queue_id, env, entries, headers, bool(request.number("expired")))

    def original(self, queue_name: str, queue_id: str) -> tuple[Envelope, list[bytes]]:
        path = self.spool.path(queue_name, queue_id)
        with open(path, "rb") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_SH)
            data = f.read()
        env = read_envelope_bytes(data, queue_id, path)
        headers: list[bytes] = []
        for line in content_lines(data, env.data_offset):
            if not line:
                break
            headers.append(line)
        return env, headers

    async def notify(self, queue_id: str, env: Envelope, entries: list[status_log.Entry],
                     headers: list[bytes], expired: bool) -> dict[str, object]:
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
        content = nondelivery_message(self.config.get("myhostname"), queue_id, env, entries,
                                      headers, rcpt, expired, self.size_limit)
        try:
            reply = await self.cleanup.request({
                "origin": "bounce", "sender": sender, "rcpt": [rcpt], "content": content,
                "rewrite_context": "local", "flags": CLEANUP_FLAG_MAP_OK})
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


def nondelivery_message(host: str, queue_id: str, env: Envelope,
                        entries: list[status_log.Entry], headers: list[bytes], to: str,
                        expired: bool, size_limit: int = 50000) -> bytes:
    """An RFC 3464 report in Postfix's words, with the original headers."""
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
    lines += ["", f"--{boundary}", "Content-Description: Undelivered Message Headers",
              "Content-Type: text/rfc822-headers", "Content-Transfer-Encoding: 8bit", ""]
    text = "\n".join(lines).encode("utf-8", "surrogateescape") + b"\n"
    attached = b"".join(h + b"\n" for h in headers)
    if size_limit and len(attached) > size_limit:
        attached = attached[:size_limit].rsplit(b"\n", 1)[0] + b"\n"
    text += attached
    text += f"\n--{boundary}--\n".encode()
    return text


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
