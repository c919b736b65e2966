"""virtual: the virtual mailbox delivery agent (Postfix's virtual(8)).

NAME
    virtual - deliver mail to mailboxes of virtual domains

SYNOPSIS
    python3 -m pymailsys.daemons.virtual [generic daemon options]
    (master.cf: ``virtual unix - n n - - virtual``)

DESCRIPTION
    virtual serves ``private/virtual`` with the delivery-request contract of
    ``pymailsys.ipc.services`` (one or more recipients per request, up to
    virtual_destination_recipient_limit; one status per recipient in the
    reply), for the recipients that trivial-rewrite resolves to the class
    "virtual mailbox" (virtual_mailbox_domains, routed to virtual_transport).

    Per recipient (the address lower-cased; with recipient_delimiter,
    ``user+ext@domain`` is looked up, then ``user@domain``, as Postfix's
    mail_addr_find):

    1. a ``Delivered-To:`` header equal to the recipient (quoted as the header
       carries it; case blind) bounces the mail with 5.4.6 ``mail forwarding
       loop for ADDR``;
    2. ``virtual_mailbox_maps`` (Postfix's address search order: ``user@domain``,
       ``@domain``) names the mailbox relative to ``virtual_mailbox_base``; a
       name that ends in ``/`` is a Maildir, anything else an mbox file. Not
       found: bounced, 5.1.1 ``unknown user: "ADDR"``; the owner tables are
       searched the same way;
    3. ``virtual_uid_maps`` and ``virtual_gid_maps`` (often ``static:5000``)
       give the owner, each a decimal number and nothing else (as Postfix
       parses it); a value that is not, a uid below ``virtual_minimum_uid``,
       a gid of 0, or an id of 4294967295 ((uid_t) -1) or more defers with
       4.3.5 ``mail system configuration error`` and the warning
       ``recipient ADDR: bad uid N in virtual_uid_maps``; a missing entry the
       same with ``recipient ADDR: not found in virtual_uid_maps``. A mailbox
       name that puts ``/../`` in the path below ``virtual_mailbox_base``
       defers the same way (``recipient ADDR: bad mailbox path NAME in
       virtual_mailbox_maps``);
    4. the message is written with that uid and gid as effective ids: mbox
       with the From_ line, ``>From`` quoting and ``virtual_mailbox_lock``
       locks; Maildir through tmp/ into new/ (the directories are made when
       missing; crash-idempotent through delivery markers in virtual's own
       ``$queue_directory/$process_id_directory/virtual-markers``). Both prepend
       ``Return-Path:``, ``X-Original-To:`` (with enable_original_recipient) and
       ``Delivered-To:``, and
       ``virtual_mailbox_limit`` bounds the file.

    A table that cannot answer defers (4.3.5, ``mail system configuration
    error``), as does a relative virtual_mailbox_base. A virtual_mailbox_limit
    (other than 0) below message_size_limit, or with message_size_limit 0, is
    fatal at start, as in Postfix: ``configuration error: virtual_mailbox_limit
    is smaller than message_size_limit``. Every delivery is
    logged as Postfix logs it: ``QUEUEID: to=<ADDR>, relay=virtual, delay=...,
    dsn=2.0.0, status=sent (delivered to maildir)``.

SECURITY
    virtual runs as root when the system does (master.cf unprivileged column
    ``n``) and trusts nothing qmgr sends: every recipient of a request passes
    ``DeliveryRequest.checked``, the queue file is opened relative to the
    queue directory without following links (``Spool.open_queue_file``),
    read-write: a delivered recipient is marked done in it before the reply
    (``QueueContent.mark_sent``: only over that recipient's own R record).
    A regexp or pcre rule of virtual_mailbox_maps, virtual_uid_maps or
    virtual_gid_maps whose result uses ``$1``... is skipped with Postfix's
    warning (``regular expression substitution is not allowed``): an address
    never chooses a path or an owner.
    Mailboxes are opened and created with the mapped uid and gid as
    effective ids (never as root: uid 0 is below any virtual_minimum_uid
    that Postfix accepts, and a mapping to 0 defers); an mbox file is never
    opened through a symbolic link and must be a regular file with one link;
    Maildir files are created with O_EXCL and O_NOFOLLOW. Run as another
    user, virtual defers mail for every uid but its own.

CONFIGURATION PARAMETERS
    virtual_mailbox_maps, virtual_mailbox_base, virtual_uid_maps,
    virtual_gid_maps, virtual_minimum_uid, virtual_mailbox_limit,
    virtual_mailbox_lock, message_size_limit, deliver_lock_attempts, deliver_lock_delay,
    stale_lock_time, strict_mailbox_ownership, recipient_delimiter, myhostname,
    enable_original_recipient, queue_directory, process_id_directory.

MODULES
    agent (settings, per-recipient delivery, logging).
"""

from __future__ import annotations

import asyncio
import os

from pymailsys.daemons.virtual.agent import VirtualAgent

from pymailsys import log, server
from pymailsys.delivery import mailbox
from pymailsys.delivery.agent import MAX_ADDRESS_LENGTH, MAX_PENDING
from pymailsys.ipc.attr import Limits, serve_pipelined

PROGRAM = "virtual"
MAX_RECIPIENTS = 1000  # per request: far above virtual_destination_recipient_limit
# a request on the wire: the message part and five attributes per recipient
BATCH_LIMITS = Limits(attrs=32 + 5 * MAX_RECIPIENTS, value=MAX_ADDRESS_LENGTH,
                      total=(MAX_ADDRESS_LENGTH + 256) * 3 * MAX_RECIPIENTS)


async def _serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 ctx: server.Context) -> None:
    agent: VirtualAgent = ctx.state["agent"]
    await serve_pipelined(reader, writer, server.counting_requests(agent.handle, ctx),
                          ctx.stopping, limits=BATCH_LIMITS, max_pending=MAX_PENDING)


async def _start(ctx: server.Context) -> None:
    error = mailbox.size_limit_error(ctx.config, "virtual_mailbox_limit")
    if error is not None:
        log.fatal(error)
    agent = VirtualAgent(ctx.config, ctx.spool)
    ctx.state["agent"] = agent
    ctx.state["gc"] = server.background(
        mailbox.collect_markers(agent.markers, ctx.spool, ctx.stopping))


def main(argv: list[str] | None = None) -> None:
    os.umask(0o077)
    server.run(PROGRAM, serve=_serve, on_start=_start, client_limit=1, argv=argv,
               uses_are_requests=True)
