"""local: the local delivery agent.

NAME
    local - deliver mail to local accounts, aliases, commands and files

SYNOPSIS
    python3 -m pymailsys.daemons.local [generic daemon options]
    (master.cf: ``local unix - n n - - local``)

DESCRIPTION
    local serves ``private/local`` with the delivery-request contract of
    ``pymailsys.ipc.services``: one request per recipient, pipelined on a long-lived
    connection from qmgr, one reply (sent, deferred or bounced) per request, and
    one Postfix log line per delivery. Requests are served one at a time, in
    order (``pymailsys.ipc.attr.serve_sequential``): the next is read once the
    reply to the last is written, so one local process is one delivery in
    parallel (qmgr queues a destination's next request behind the one in
    progress and counts it in the destination's concurrency only once it
    starts). A local process that is going away (reload, a changed table)
    reads no further request: qmgr sends the one left unread to another. The message is read from the queue file
    named in the request (under a shared lock), from the data offset on; the
    envelope travels in the request and is not re-read.

    Per recipient (local part lower-cased, ``recipient_delimiter`` splitting
    ``user+extension`` as Postfix's split_addr: postmaster, MAILER-DAEMON,
    owner-NAME and NAME-request stay whole; an extension with a ``/`` is
    dropped with Postfix's warning, ``address with illegal extension``):

    1. a ``Delivered-To:`` header equal to the recipient (quoted as the header
       carries it, ``"john doe"@example.net``; case blind) bounces the mail with
       5.4.6 ``mail forwarding loop for ADDR``;
    2. ``alias_maps`` is searched for ``user+extension``, then ``user``. An alias
       value is a comma list, expanded in place as Postfix's local(8) does
       (``alias``): an address is rewritten and resolved; one that resolves to
       this transport is delivered within the same request and queue ID (its
       own aliases, .forward, mailbox), logged ``to=<member>, orig_to=<the
       recipient as received>``; the others leave as one new message through
       ``public/cleanup`` (per Delivered-To and sender) with a ``Delivered-To:``
       header, logged ``status=sent (forwarded as NEWID)``. Duplicates are
       delivered once (duplicate_filter_limit), alias nesting is limited
       (100 levels, an alias database loop), an ``owner-NAME`` alias becomes the sender of the forwarded
       copy. ``|command``, ``/file`` (``/dir/`` = Maildir) and
       ``:include:/path`` (its members that are not aliases are forwarded;
       commands and files from includes only when
       ``allow_mail_to_commands``/``allow_mail_to_files`` list ``include``),
       with the rights described under SECURITY.
       A table that cannot answer defers the mail (4.3.0). The reply's
       ``rcpt`` names the member whose bounce or deferral decided the result,
       ``also_rcpt``/``also_dsn``/``also_reason`` every other member with that
       status: qmgr appends one status-log entry per member, as Postfix's
       local does, so a bounce notice lists each unknown member;
    3. the account's ``.forward``: the first ``forward_path`` entry that exists
       (``$home``, ``$user``, ``$shell``, ``$local``, ``$domain``, ``$recipient``,
       ``$extension``, ``$recipient_delimiter``, ``${name?value}``,
       ``${name:value}``; an entry naming an undefined one is skipped; values
       pass ``forward_expansion_filter``), looked up and read as the user (as
       root, only an lstat that finds no entry at all skips that). As
       Postfix, a file that is not a regular file, is owned by neither the user
       nor root, or is world-writable is ignored with a warning; one that names
       nobody (empty, comments only) means no forwarding. Its contents are an
       alias value (origin ``forward`` for allow_mail_to_commands/_files);
       commands, files and includes run with the user's rights (uid 0:
       default_privs); an address naming the user itself, or ``\\user``, goes
       to the mailbox (loop guard); other addresses are forwarded;
    4. the mailbox (once per local part): the transport that
       ``mailbox_transport_maps`` gives for the user name, else
       ``mailbox_transport`` (``transport:nexthop``, e.g.
       ``lmtp:unix:/run/dovecot/lmtp``), whether or not the user is a UNIX
       account: as Postfix's deliver_pass, the request goes over
       ``private/TRANSPORT``, that agent logs the delivery and its reply is
       local's. Else, for a UNIX account (``mailbox``): the command
       ``mailbox_command_maps`` gives for the user name, else
       ``mailbox_command`` (no ``$name`` expansion, as Postfix; run as the user
       like a .forward command, same environment and exit codes), else
       ``home_mailbox`` (relative to the home directory; ``/`` at the end =
       Maildir), else ``mail_spool_directory/USER`` (``/`` at the end of the
       directory = Maildir);
    5. a user that is no account (``unknown``): the transport that
       ``fallback_transport_maps`` gives for the user name, else
       ``fallback_transport``, handed on as above; else ``luser_relay``
       (``$user``, ``$local``, ``$extension``, ``$domain``, ``$recipient``...
       expanded), delivered in place or forwarded as an alias member is;
       else ``postmaster`` and ``MAILER-DAEMON`` are discarded with
       ``required alias not found``; else it bounces with 5.1.1 ``unknown
       user: "name"``. The per-user tables are asked for the user name only
       (no domain, no extension), as Postfix asks them; one that cannot
       answer defers (4.3.0 ``table lookup failure``).

    Prepended: mbox ``From SENDER  DATE``, ``Return-Path:``, ``X-Original-To:``
    (only with enable_original_recipient, as Postfix's mail_copy), ``Delivered-To:`` (each address quoted as Postfix's mail_copy quotes it:
    ``Return-Path: <"john doe"@example.net>``), the message with ``>From `` quoting and an empty last
    line; Maildir the same headers without the From_ line and quoting; commands
    the From_ line and headers, no quoting.

    Commands run through ``/bin/sh -c`` only when they contain shell
    magic or start with a shell builtin (Postfix's exec_command), with SHELL HOME USER LOGNAME LOCAL EXTENSION DOMAIN
    RECIPIENT SENDER ORIGINAL_RECIPIENT, ENVID, CLIENT_ADDRESS CLIENT_HELO
    CLIENT_HOSTNAME CLIENT_PROTOCOL SASL_METHOD SASL_SENDER SASL_USERNAME
    (from the queue file's attributes, when set), all censored by
    command_expansion_filter, and PATH in the environment, killed after
    ``command_time_limit``, writing no file larger than mailbox_size_limit
    (as Postfix's file size limit). Exit 0 is success; output starting with ``X.Y.Z``
    decides; a sysexits.h status maps as Postfix's table maps it (75
    EX_TEMPFAIL and 71 EX_OSERR defer, 67 EX_NOUSER bounces 5.1.1 ...); death
    by a signal defers, the time limit bounces; any other status bounces with
    the command's output (unprintable characters replaced).

    Maildir deliveries are crash-idempotent (``pymailsys.delivery.mailbox``): markers
    under ``$queue_directory/$process_id_directory/local-markers`` record which
    (queue file, recipient, Maildir) deliveries reached their final step; they
    are removed once the queue file is gone. That directory is root's (in
    root's pid/, made 0700), so local keeps its markers with its own rights, no
    switch per delivery, and removes only names that start with a queue ID.

    A mailbox_size_limit (other than 0) below message_size_limit, or with
    message_size_limit 0, is fatal at start, as in Postfix: ``configuration
    error: mailbox_size_limit is smaller than message_size_limit``.

SECURITY
    local runs as root when the system runs as root (master.cf unprivileged
    column ``n``), and trusts neither qmgr's requests nor the directories
    mail_owner owns:

    * run as root, local refuses to start (fatal, in Postfix's words) when
      default_privs or mail_owner is unknown or has user or group ID 0, or
      when the two share a user or group (``privileges.check_accounts``);
    * a request is read within ``REQUEST_LIMITS``, one at a time; every field is checked before use
      (``DeliveryRequest.checked``: queue name and ID formats, ranges, finite
      times, no control characters in addresses; one recipient per request);
      a bad request is refused with a warning and a deferral;
    * the queue file is opened relative to the queue directory without
      following a symbolic link anywhere, as a regular complete file with one
      link (``Spool.open_queue_file``), read-write: a delivered recipient is
      marked done in it before the reply, as Postfix's local does
      (``QueueContent.mark_sent``: one type byte, R to D, and only where the
      offset qmgr sent holds that recipient's R record);
    * connections to ``public/cleanup`` (forwarding) and ``private/TRANSPORT``
      (mailbox_transport, fallback_transport) are made with mail_owner's
      effective ids (``privileges.connect_unix``): those directories are
      mail_owner's, and a link planted there reaches only what mail_owner could;
    * delivery markers live in a directory of local's own, checked when it is
      opened (local's owner, nobody else can write it, no symbolic link) and used
      through that descriptor; root never works in data_directory;
    * a regexp or pcre rule of alias_maps, mailbox_command_maps,
      mailbox_transport_maps or fallback_transport_maps whose result uses
      ``$1``... is skipped with Postfix's warning (``regular expression
      substitution is not allowed``, DICT_FLAG_NO_REGSUB): what a sender puts
      in an address never becomes part of a command, a file name, an
      :include: path or a transport;
    * .forward and :include: files and alias table sources are read as
      ``pymailsys.bounded_read`` reads: regular files only, bounded in size
      and time, never blocking on a FIFO.

    Mailbox and Maildir writes happen with the recipient's effective uid and
    gid (in the spool directory: a world-writable directory gives the
    recipient's ids, a group-writable one the recipient's uid and the
    directory's group, otherwise root creates the file and gives it to the
    recipient). Commands and files run as Postfix's local runs them: from an
    alias in a root-owned table (or one without a file: static, inline) as
    ``default_privs``; from an alias in a table another user owns as that
    owner (an unknown owner defers); from an :include: file that another user
    owns, listed with root's rights, as the file's owner (read with those
    rights; a root-owned one is read as default_privs); from .forward files
    and mailbox_command as the recipient. The owner of one table or file never
    gets default_privs' account, and uid 0 or gid 0 never runs a command or
    writes a file (they become default_privs' ids). Mailbox files
    are never opened through symbolic links, must be regular files with one
    link, and are created with O_EXCL mode 0600. Run as another user, local
    defers mail for every account but its own.

CONFIGURATION PARAMETERS
    alias_maps, recipient_delimiter, forward_path, forward_expansion_filter,
    mailbox_command, home_mailbox, mail_spool_directory,
    mailbox_delivery_lock, deliver_lock_attempts, deliver_lock_delay,
    stale_lock_time, mailbox_size_limit, strict_mailbox_ownership,
    command_time_limit, command_expansion_filter, local_command_shell,
    allow_mail_to_commands, allow_mail_to_files,
    mailbox_transport, mailbox_transport_maps, mailbox_command_maps,
    fallback_transport, fallback_transport_maps, luser_relay, ipc_timeout,
    propagate_unmatched_extensions (alias, forward, include),
    default_privs, myhostname, myorigin, duplicate_filter_limit, enable_original_recipient,
    queue_directory,
    cleanup_service_name (forwarded mail),
    process_id_directory, info_log_address_format (``to=<…>, orig_to=<…>``),
    biff (a comsat notice after each mbox delivery), inet_protocols.

MODULES
    agent (state, dispatch, logging), alias (alias values, :include:,
    forwarding), forward (.forward, forward_path expansion), mailbox (the
    account's mailbox, mailbox_command), unknown (fallback transports,
    luser_relay), command (|command), file (/file, /dir/), biff (comsat
    notices), results (the one failure-to-result mapping).
"""

from __future__ import annotations

import asyncio
import os

from pymailsys.daemons.local.agent import LocalAgent

from pymailsys import log, privileges, server
from pymailsys.delivery import mailbox
from pymailsys.delivery.agent import REQUEST_LIMITS
from pymailsys.ipc.attr import serve_sequential

PROGRAM = "local"


async def _serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 ctx: server.Context) -> None:
    agent: LocalAgent = ctx.state["agent"]
    await serve_sequential(reader, writer, server.counting_requests(agent.handle, ctx),
                           ctx.stopping, limits=REQUEST_LIMITS)


async def _start(ctx: server.Context) -> None:
    if privileges.running_as_root():
        try:  # as Postfix's programs at start-up: default_privs never root's or mail_owner's
            privileges.check_accounts(ctx.config)
        except privileges.PrivilegeError as e:
            log.fatal(str(e))
    error = mailbox.size_limit_error(ctx.config, "mailbox_size_limit")
    if error is not None:
        log.fatal(error)
    agent = LocalAgent(ctx)
    ctx.state["agent"] = agent
    ctx.state["gc"] = server.background(
        mailbox.collect_markers(agent.markers, ctx.spool, ctx.stopping))


def main(argv: list[str] | None = None) -> None:
    os.umask(0o077)
    server.run(PROGRAM, serve=_serve, on_start=_start, client_limit=1, argv=argv,
               uses_are_requests=True)
