"""Alias expansion in place: an alias value, a .forward file's or an :include: file's contents.

Takes one level's attributes (``agent.Level``) and a value (a comma list);
promises Postfix's local(8) expansion within the request being delivered
(one queue ID, one logged line per member, ``to=<member>, orig_to=<the
recipient as received>``):

* ``deliver_alias``: the alias's members get the rights of the table that
  answered (``Maps.find_table``, ``Table.owner``) for commands and files:
  default_privs' for a table of root's (or one without a file), its owner's
  (uid, primary gid, home and shell) for a table another user owns, so that
  the owner of one alias table never gets default_privs' account (a local
  that does not run as root switches to nobody: every table counts as root's); a table
  whose owner is unknown (a union of two users' tables) or has no account
  defers (4.3.0) with Postfix's warning; an ``owner-NAME`` alias makes its address the sender of
  forwarded copies (and members that are local users are then forwarded too);
  nesting deeper than ``MAX_LEVEL`` bounces (5.4.6) as an alias database loop
  (``alias database loop for NAME``, where Postfix 3.7 stops: four levels per
  alias, as its deliver_recipient, deliver_switch, deliver_alias and
  deliver_resolve_tree count them);
  a value naming nobody defers (4.3.0) with Postfix's warning; an alias of the
  request's recipient who asked NOTIFY=SUCCESS is what the success notice
  reports (``alias expanded``, action expanded, or delivered for an
  owner- list), not its members;
* ``|command`` runs through ``command`` and ``/file`` (``/dir/`` = Maildir)
  through ``file`` (``~/file``: in the home of the user whose rights these are,
  a .forward's; in an alias, or as ``~user/file``, a configuration error, 5.3.5,
  with Postfix's warning), each only when its origin (alias, forward, include) is in
  allow_mail_to_commands / allow_mail_to_files (otherwise 5.7.1), each once
  per request and rights;
* ``:include:/path`` is expanded once per request and rights; under root's
  rights (a root-owned alias table, root's .forward) a file that another user
  owns (as root's stat sees it) is read, and its members run, with that
  owner's rights (an owner without an account defers, 4.3.5, with Postfix's
  warnings; a file whose owner changed meanwhile defers), root's own file is
  read with default_privs' rights and keeps the level's; under a user's
  rights it is read, and runs, with those (a user cannot borrow another's
  rights by including the other's file);
  the path must be absolute and name a regular file of at most FILE_SIZE_LIMIT
  bytes, read within FILE_READ_TIMEOUT (a FIFO, a device, a huge or sparse file
  bounce as a configuration error, 5.3.5; a slow read defers); one that is
  missing or its reader may not open bounces too (5.3.5), with Postfix's
  warning (``unable to lookup :include: file``, ``cannot open include file``,
  ``:include: file PATH is not a regular file``); its members that
  are not aliases are forwarded;
* an address is rewritten (myorigin) and resolved as qmgr would, then gets the
  level's unmatched extension (propagate_unmatched_extensions): one that
  resolves to this local transport is delivered here (``agent.deliver_recipient``:
  its own aliases, .forward and mailbox), any other is forwarded (``indirect``);
* ``forward_finish``: the forwarded addresses leave as one new message per
  Delivered-To and sender, through ``public/cleanup``, with a ``Delivered-To:``
  header, logged once as ``status=sent (forwarded as NEWID)`` for the
  request's recipient; nothing is forwarded when a delivery of the same
  request was deferred (the next attempt expands again, as Postfix).
"""

from __future__ import annotations

import os
import stat
from dataclasses import replace
from typing import TYPE_CHECKING

from pymailsys.daemons.local import command, file, results

from pymailsys import log, privileges, rfc822
from pymailsys.address.rewrite import rewrite_address
from pymailsys.bounded_read import FileRefused, read_bounded
from pymailsys.delivery.agent import DeliveryRequest, DeliveryResult, QueueContent
from pymailsys.delivery.mailbox import plain_text
from pymailsys.dsn import NOTIFY_SUCCESS
from pymailsys.ipc.attr import AttrValue, ProtocolError, request_streamed
from pymailsys.ipc.services import CLEANUP_FLAG_MAP_OK, CLEANUP_OK, STATUS_DEFERRED
from pymailsys.maps import Table, TableError
from pymailsys.queue.status_log import ACTION_DELIVERED, ACTION_EXPANDED

if TYPE_CHECKING:
    from pymailsys.daemons.local.agent import Level, LocalAgent, Session

MAX_LEVEL = 100  # Postfix's nesting limit for aliases (and, as later Postfix, includes)
FILE_SIZE_LIMIT = 1 << 22  # bytes of an :include: or .forward file
FILE_READ_TIMEOUT = 30.0  # seconds to read one
ALIAS = "alias"
FORWARD = "forward"
INCLUDE = "include"


def value_of_lines(text: str) -> str:
    """An alias value from a file's lines (.forward, :include:): comments and blanks out."""
    return ", ".join(line.strip() for line in text.splitlines()
                     if line.strip() and not line.lstrip().startswith("#"))


async def deliver_alias(agent: LocalAgent, s: Session, lvl: Level, name: str,
                        value: str, table: Table, unmatched: str = "") -> None:
    """Expand the alias ``name`` (found with ``value`` in ``table``) in place, with the
    rights of the table's owner; ``unmatched`` (``+ext``) goes into its addresses."""
    lvl = lvl.deeper()
    if lvl.level > MAX_LEVEL:
        log.warning(f"alias database loop for {name}")
        s.done(lvl.req, DeliveryResult.bounced(f"alias database loop for {name}", "5.4.6"))
        return
    rights = None  # a table of root's (or, not run as root, of anyone's): default_privs
    if table.owner is None:
        log.warning(f"deliver_alias: no owner UID for alias database {table.spec}")
        s.done(lvl.req, DeliveryResult.deferred("mail system configuration error", "4.3.0"))
        return
    if table.owner != 0 and agent.root:
        rights = privileges.account_of(table.owner)
        if rights is None:
            log.warning(f"cannot find alias database owner for {table.spec}")
            s.done(lvl.req, DeliveryResult.deferred("cannot find alias database owner",
                                                    "4.3.0"))
            return
    owner, sender = lvl.owner, lvl.sender
    try:
        owner_value = agent.aliases.find(f"owner-{name}") if agent.aliases else None
    except TableError as e:
        log.warning(f"alias_maps lookup of owner-{name}: {e}")
        s.done(lvl.req, DeliveryResult.deferred("alias database unavailable"))
        return
    if owner_value is not None:
        owner = sender = rewrite_address(f"owner-{name}", agent.rewrite_context)
    if not lvl.exp_type and lvl.req.dsn_notify & NOTIFY_SUCCESS:
        # the request's own recipient: the success notice is this alias's (Postfix's
        # deliver_alias takes SUCCESS from its members' NOTIFY)
        s.expanded = ACTION_DELIVERED if owner_value is not None else ACTION_EXPANDED
    member = lvl.deeper(0, exp_type=ALIAS, exp_from=name, owner=owner, sender=sender,
                        rights=rights, unmatched=unmatched)
    if not await expand(agent, s, member, value):
        log.warning(f"no recipient in alias lookup result for {name}")
        s.done(lvl.req, DeliveryResult.deferred("alias database unavailable"))


async def expand(agent: LocalAgent, s: Session, lvl: Level, value: str) -> int:
    """Deliver each member of a value (Postfix's deliver_token_string); how many."""
    items = rfc822.address_list(value)
    for item in items:
        await deliver_token(agent, s, lvl, item)
    return len(items)


async def deliver_token(agent: LocalAgent, s: Session, lvl: Level, item: str) -> None:
    req, rights = lvl.req, lvl.rights
    rcpt = agent.parse_recipient(req.rcpt, lvl.delivered)
    if item.startswith("~"):  # ~/path: a file in the home of whose rights these are
        problem = "bad home directory syntax" if item[1:2] != "/" else \
            "unknown home directory" if rights is None else ""
        if problem:  # as Postfix's deliver_token_home: ~user, or no user (an alias)
            log.warning(f"{problem} for: {item}")
            s.done(req, DeliveryResult.bounced(results.CONFIG_ERROR_TEXT, "5.3.5"))
            return
        assert rights is not None
        item = item[1:] if rights.home == "/" else rights.home + item[1:]
    if item.startswith("|"):
        if lvl.exp_type not in agent.allow_commands:
            s.done(req, DeliveryResult.bounced("mail to command is restricted", "5.7.1"))
        elif not s.been_here(f"command {_uid(agent, rights)} {item[1:]}"):
            s.done(req, await command.deliver(agent, req, rcpt, item[1:], s.content, rights))
    elif item.startswith("/"):
        if lvl.exp_type not in agent.allow_files:
            s.done(req, DeliveryResult.bounced("mail to file is restricted", "5.7.1"))
        elif not s.been_here(f"file {_uid(agent, rights)} {item}"):
            s.done(req, file.deliver(agent, req, rcpt, item, s.content, rights))
    elif item.lower().startswith(":include:"):
        await include(agent, s, lvl, item[9:].strip())
    elif item:
        await deliver_address(agent, s, lvl, item)


def _uid(agent: LocalAgent, rights: privileges.UserIds | None) -> int:
    """The uid commands and files run with, for duplicate keys (-1: none can be had; the
    delivery then reports why)."""
    try:
        return agent.file_user(rights).uid
    except privileges.PrivilegeError:
        return -1


async def deliver_address(agent: LocalAgent, s: Session, lvl: Level, address: str) -> None:
    """Rewrite and resolve a member as cleanup and qmgr would; deliver it here when it
    resolves to this transport, else forward it (Postfix's deliver_resolve_tree)."""
    lvl = lvl.deeper()
    resolved = agent.resolver.resolve(rewrite_address(address, agent.rewrite_context))
    if resolved.failed:
        s.done(lvl.req, DeliveryResult.deferred("address resolver failure"))
        return
    recipient = resolved.recipient
    if lvl.unmatched:  # propagate_unmatched_extensions: before the last @, as Postfix
        local, at, domain = recipient.rpartition("@")
        recipient = f"{local}{lvl.unmatched}@{domain}" if at else recipient + lvl.unmatched
    member = replace(lvl, req=replace(lvl.req, rcpt=recipient,
                                      orig_rcpt=lvl.req.orig_rcpt or s.req.rcpt))
    if resolved.transport == agent.service:
        await agent.deliver_recipient(s, member)
    else:
        indirect(s, member)


def indirect(s: Session, lvl: Level) -> None:
    """Add the level's address to the copy forwarded for its Delivered-To and sender."""
    address = lvl.req.rcpt
    if s.been_here(f"indirect {address.lower()}"):
        return
    orig = lvl.req.orig_rcpt or s.req.rcpt
    s.forwards.setdefault((lvl.delivered, lvl.sender), []).append((address, orig))


async def include(agent: LocalAgent, s: Session, lvl: Level, path: str) -> None:
    """Expand an :include: file, an absolute path to a regular file of at most
    FILE_SIZE_LIMIT bytes (``read_file``), with the rights of its alias or .forward,
    or of its owner when those are root's (Postfix's deliver_include)."""
    lvl = lvl.deeper()
    req = lvl.req
    rights = lvl.rights
    if lvl.level > MAX_LEVEL:
        log.warning(f"include nesting limit exceeded for {path}")
        s.done(req, DeliveryResult.bounced(f"alias database loop for {path}", "5.4.6"))
        return
    if not path.startswith("/"):
        log.warning(f":include:{path} uses a relative path")
        s.done(req, DeliveryResult.bounced(results.CONFIG_ERROR_TEXT, "5.3.5"))
        return
    owner = -1  # the owner root's stat saw (-1: not asked, the rights are a user's)
    by_root = agent.root and (rights is None or rights.uid == 0)  # who stats it first
    try:
        ids = agent.file_user(rights)
        if s.been_here(f"include {ids.uid} {path}"):
            return
        if by_root:
            # never default_privs for a file another user wrote: its owner's rights
            owner = os.stat(path).st_uid
            if owner != 0:
                rights = privileges.account_of(owner)
                if rights is None:
                    log.warning(f"cannot find username for uid {owner}")
                    log.warning(f"{path}: cannot find :include: file owner username")
                    s.done(req, results.CONFIG_ERROR)
                    return
                ids = agent.file_user(rights)
        with privileges.as_user(ids.uid, ids.gid):
            text, st = read_file(path)
    except (privileges.PrivilegeError, OSError, FileRefused) as e:
        # the details go to the log, not to the sender (Postfix's deliver_include)
        found = results.failure(e)
        problem = "" if isinstance(e, privileges.PrivilegeError) else \
            _include_problem(path, e, None if by_root else ids)
        if problem:  # as Postfix: a file that is not there or not one to read bounces
            log.warning(problem)
            s.done(req, DeliveryResult.bounced(results.CONFIG_ERROR_TEXT, "5.3.5"))
            return
        detail = found.reason.removeprefix(results.CONFIG_ERROR_TEXT + ": ")
        log.warning(f"cannot open include file {path}: {detail}")
        s.done(req, DeliveryResult.from_dsn(found.dsn, results.CONFIG_ERROR_TEXT))
        return
    if owner >= 0 and st.st_uid != owner:  # replaced between the stat and the open
        log.warning(f"include file {path} changed owner while it was opened")
        s.done(req, DeliveryResult.deferred(results.CONFIG_ERROR_TEXT, "4.3.5"))
        return
    if st.st_mode & stat.S_IWOTH:
        log.warning(f":include: file {path} is world writable")
        s.done(req, DeliveryResult.bounced(results.CONFIG_ERROR_TEXT, "5.3.5"))
        return
    unmatched = lvl.unmatched if INCLUDE in agent.propagate else ""
    await expand(agent, s, lvl.deeper(0, exp_type=INCLUDE, owner=lvl.owner or req.rcpt,
                                      rights=rights, unmatched=unmatched), value_of_lines(text))


def _include_problem(path: str, error: Exception,
                     reader: privileges.UserIds | None) -> str:
    """Postfix's warning for an :include: file it stats, then opens, as ``reader`` (None:
    root) and cannot use; "" for a failure it has no such words for (a read time limit,
    a change of rights, a file too large: ours). Only failures pay for the stat."""
    if isinstance(error, FileRefused):
        return f":include: file {path} is not a regular file" if str(error) == \
            "not a regular file" else ""
    if not isinstance(error, OSError) or isinstance(error, TimeoutError):
        return ""
    try:
        if reader is None:
            os.stat(path)
        else:
            with privileges.as_user(reader.uid, reader.gid):
                os.stat(path)
    except OSError as e:
        return f"unable to lookup :include: file {path}: {e.strerror}"
    except privileges.PrivilegeError:
        return ""
    return f"cannot open include file {path}: {error.strerror}"


def read_file(path: str, follow_links: bool = True) -> tuple[str, os.stat_result]:
    """An :include: or .forward file's text and stat, as ``bounded_read`` reads it (raises
    OSError, FileRefused, TimeoutError). Called with the reader's rights in place."""
    data, st = read_bounded(path, FILE_SIZE_LIMIT, FILE_READ_TIMEOUT, follow_links)
    return data.decode("utf-8", "surrogateescape"), st


async def forward_finish(agent: LocalAgent, s: Session) -> None:
    """Send the forwarded copies, one per Delivered-To and sender, each logged for the
    request's recipient; none when a delivery of this request was deferred."""
    if any(r.status == STATUS_DEFERRED for _, r in s.results):
        return
    for (delivered, sender), members in s.forwards.items():
        result = await resubmit(agent, s.req, delivered, sender, members, s.content)
        s.done(s.req, result)
        if not result.final:
            return


async def resubmit(agent: LocalAgent, req: DeliveryRequest, delivered: str, sender: str,
                   members: list[tuple[str, str]], content: QueueContent) -> DeliveryResult:
    """Forward to members (address, original recipient): one new message through
    cleanup, with Delivered-To."""
    header = f"Delivered-To: {delivered.lower()}\n".encode("utf-8", "surrogateescape")
    attrs: list[tuple[str, AttrValue]] = [("origin", "local"), ("sender", sender)]
    attrs += [("rcpt", address) for address, _ in members]
    attrs += [("orcpt", orig) for _, orig in members]
    attrs += [("rewrite_context", "local"), ("flags", CLEANUP_FLAG_MAP_OK)]
    try:
        reply = await request_streamed(agent.cleanup, attrs, "content",
                                       plain_text(header, content.text()))
    except (ProtocolError, OSError) as e:
        log.warning(f"{req.queue_id}: cleanup service: {e}")
        return DeliveryResult.deferred("unable to forward message")
    if reply.number("status", -1) != CLEANUP_OK:
        dsn = reply.text("dsn") or "4.3.0"
        return DeliveryResult.from_dsn("4.3.0" if dsn[:2] == "2." else dsn,
                                reply.text("reason") or "cleanup error")
    return DeliveryResult.sent(f"forwarded as {reply.text('queue_id')}")
