"""Service names, attribute names and the request/reply contracts between processes.

Every internal conversation is an attribute list (``pymailsys.ipc.attr``) over a
Unix stream socket under queue_directory: ``public/NAME`` or ``private/NAME``.
This module is the one place that names them; the contracts below are what
each server promises its clients.

cleanup (``public/cleanup``), one request per message, streamed
(``pymailsys.ipc.attr.serve_streamed``)::

    request: origin        "smtpd" | "pickup" | "bounce" | "local" | "notify"
                           (who submits; notify: smtpd's postmaster transcripts)
             sender        envelope sender, "" for <>
             rcpt          repeated: envelope recipients, in order
             orcpt         repeated, optional: original recipients (same order)
             content       the message: header, empty line, body; lines end in
                           LF (smtpd has already removed CR and dot-stuffing);
                           or its first piece, when ``more`` follows
             more          1: the content continues in follow-up lists
                           ``{content: piece, more: 1}``, the last one without
                           ``more``; pieces are any size up to CONTENT_CHUNK and
                           may end mid-line. A follow-up ``{abort: 1}`` instead
                           ends the message unqueued (the client refused it
                           after DATA); its reply is 451 and nobody reads it.
             client_name, client_addr, client_port, helo_name, protocol,
             reverse_client_name
                           (smtpd: for Received: and the A records)
             sasl_method, sasl_username, sasl_sender   (smtpd, optional: the
                           AUTH login and MAIL FROM's AUTH=; named attributes of
                           the queue file, as Postfix's)
             prepend       repeated, optional (smtpd: access PREPEND): one
                           header line each, put above the Received: header
             received_with, received_comment   (smtpd, optional: Received:'s
                           "with" when it differs from protocol, ESMTPSA or
                           UTF8SMTP; comment lines after its first line, the TLS
                           cipher and the authenticated sender)
             uid           (pickup: submitting user, for Received: and From:)
             full_name     (pickup: sender full name, -F)
             rewrite_context  "local" | "remote"
             flags         int, CLEANUP_FLAG_* below
             encoding      "7bit" | "8bitmime" (BODY=; none without it; the queue file says "8bit")
             notify, envid, ret   (DSN parameters, optional)
             orig_id       (pickup: the maildrop file's name, for postsuper -r)
             content_filter  optional (smtpd, pickup: their content_filter):
                           ``transport[:nexthop]``, the envelope's L record
             filter        optional (smtpd: the last access FILTER action;
                           again in the last follow-up when one came at the end
                           of the message, which then counts): an L record
                           after the content, which wins over content_filter
                           (a header/body checks FILTER follows and wins again);
                           either one not ``split_content_filter``-able is
                           refused (451 4.3.5), never dropped
             (last follow-up of a streamed message, smtpd: what its
             smtpd_end_of_data_restrictions decided after the envelope went out)
             flags         CLEANUP_FLAG_HOLD and/or CLEANUP_FLAG_DISCARD (other
                           bits are ignored)
             redirect      REDIRECT: the message goes to this address instead of
                           the envelope's recipients (they are marked done)
             bcc           repeated: BCC, extra recipients with NOTIFY=NEVER
    reply:   status        0 = queued; else the SMTP reply code (451, 552, 554)
             dsn           "2.0.0" | "4.3.0" | "5.3.4" | ...
             reason        text for the client ("Error: queue file write error")
             queue_id      set when status is 0

    cleanup writes the records to the queue file in incoming/ as the pieces
    arrive (memory per message stays bounded), fsyncs it after the last one,
    and only then replies status 0. Then it triggers qmgr on ``public/qmgr``, naming the new
    files (``pymailsys.ipc.trigger.encode_named_ids``; a plain ``I`` when it cannot).

qmgr (``public/qmgr``): a trigger service; bytes as in ``pymailsys.ipc.trigger``.

local (``private/local``), one request per recipient (delivery request)::

    request: queue_name, queue_id   where the queue file is (normally active)
             data_offset            offset of the first record after M
             content_size           for the log's size
             arrival_time           float seconds, from the T record
             active_time            float seconds, when qmgr took the file
             sender                 "" for <>
             nexthop                the resolved nexthop (local: myhostname)
             rcpt                   the recipient address
             orig_rcpt              original recipient (O record), may be ""
             rcpt_offset            offset of its R record (for done marks)
             dsn_notify, dsn_orcpt  optional
             flags                  int
    reply:   status    "sent" | "deferred" | "bounced"
             dsn       "2.0.0", "4.2.0", "5.1.1", ...
             reason    "delivered to mailbox", "delivered to maildir", ...
             hop_dsn, hop_reason   optional, once per reply: the agent could
                       reach none of the nexthop's servers (connection,
                       greeting or HELO failed), so the whole destination
                       is failing, not just these recipients (Postfix's
                       "hop status"). qmgr takes it as negative
                       concurrency feedback and may declare the
                       destination dead; a reply without it is positive
                       feedback (``pymailsys.queue.scheduler``)
             rcpt      optional: the alias or .forward member the result concerns
                       (local: the member whose bounce or deferral decided it)
             also_rcpt, also_dsn, also_reason
                       repeated, optional (local, one-recipient replies): more
                       members with the same status (deferred or bounced); qmgr
                       keeps at most delivery.agent.MAX_MEMBERS of them, each a
                       bounded address without control characters and a DSN
                       code of the status's class

             refused   optional: 1 when the agent refused the request as
                       malformed (``delivery.agent.refusal``): every recipient
                       deferred "bad delivery request", no line logged for them

    The agent logs the ``to=<...>, relay=..., delay=..., status=...`` line itself
    (but for a ``refused`` request: then qmgr logs it, ``relay=none``);
    qmgr marks the recipient done (R -> D in place) for sent and bounced, keeps
    it for deferred, and appends bounced/deferred reasons to bounce/ID, defer/ID
    (recipient: the reply's ``rcpt`` when given, original_recipient: orig_rcpt; one
    entry more per ``also_rcpt``).

showq (``public/showq``): request ``{request: "list", format: "text" | "json"}``,
reply ``{status: 0, listing: <bytes>, more: 1}``, then ``{listing: <bytes>, more: 1}``
any number of times, then ``{listing: ""}``: the mailq text or JSON lines in
pieces, streamed as the queue is read.

pickup (``public/pickup``): a trigger service (``W``), and the submission
service for sendmail: a connection starting with ``s`` carries one
submission (``pymailsys.submission.protocol``); the submitter's uid comes from
SO_PEERCRED.

bounce (``private/bounce``), one request per message whose failed recipients
go back to the sender::

    request: request "flush", queue_id, queue_name, log ("bounce" | "defer"),
             expired (0 | 1)
    reply:   status 0 (notification queued or deliberately dropped) | -1 (retry),
             queue_id of the notification
"""

from __future__ import annotations

CLEANUP = "cleanup"
QMGR = "qmgr"
PICKUP = "pickup"
SHOWQ = "showq"
LOCAL = "local"
BOUNCE = "bounce"
VIRTUAL = "virtual"
SMTP = "smtp"


def split_content_filter(value: str) -> tuple[str, str] | None:
    """(transport, nexthop) of a content filter ``transport[:nexthop]`` (split at the
    first colon, as Postfix's qmgr; nexthop may be empty), or None when the transport
    cannot name a master.cf service under private/ (empty, ``.``, ``..``, a ``/``),
    or the value has a space or a control character or is longer than 1000."""
    if len(value) > 1000 or not value.isprintable() or any(c.isspace() for c in value):
        return None
    transport, _, nexthop = value.partition(":")
    if not transport or transport in (".", "..") or "/" in transport:
        return None
    return transport, nexthop


# cleanup flags
CLEANUP_FLAG_NONE = 0
CLEANUP_FLAG_BOUNCE = 1 << 0  # bounce unrecoverable mail instead of keeping it
CLEANUP_FLAG_FILTER = 1 << 1  # header/body checks apply
CLEANUP_FLAG_HOLD = 1 << 2  # place the message on hold
CLEANUP_FLAG_DISCARD = 1 << 3  # accept the message, then throw it away (access DISCARD)
CLEANUP_FLAG_BCC_OK = 1 << 4  # always_bcc, sender_bcc_maps and recipient_bcc_maps apply
CLEANUP_FLAG_MAP_OK = 1 << 5  # canonical/virtual mapping applies
# mail from outside the mail system (smtpd, pickup); bounces and forwarding get MAP_OK only
CLEANUP_FLAG_MASK_EXTERNAL = CLEANUP_FLAG_FILTER | CLEANUP_FLAG_BCC_OK | CLEANUP_FLAG_MAP_OK


def receive_flags(config, flags: int = CLEANUP_FLAG_MASK_EXTERNAL) -> int:  # type: ignore[no-untyped-def]
    """The cleanup flags of a receiving service (smtpd, pickup) after its
    receive_override_options (Postfix's input_transp_cleanup): no_address_mappings
    turns off canonical, virtual alias, masquerading and automatic BCC;
    no_header_body_checks turns off header_checks and body_checks."""
    options = config.get_list("receive_override_options")
    if "no_address_mappings" in options:
        flags &= ~(CLEANUP_FLAG_BCC_OK | CLEANUP_FLAG_MAP_OK)
    if "no_header_body_checks" in options:
        flags &= ~CLEANUP_FLAG_FILTER
    return flags

# delivery results
STATUS_SENT = "sent"
STATUS_DEFERRED = "deferred"
STATUS_BOUNCED = "bounced"

# cleanup reply codes
CLEANUP_OK = 0
# the largest content piece a client sends cleanup in one list
CONTENT_CHUNK = 64 * 1024
