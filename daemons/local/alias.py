"""Alias expansion: an alias value, a .forward file's or an :include: file's contents.

Takes a value (a comma list) and the rights its commands and files get
(None: default_privs, as for an alias from alias_maps); promises one logged
result per member and one combined result (``results.worst``):

* ``|command`` runs through ``command`` and ``/file`` (``/dir/`` = Maildir)
  through ``file``, each only when its origin (alias, forward, include) is in
  allow_mail_to_commands / allow_mail_to_files (otherwise 5.7.1);
* ``:include:/path`` is read with the same rights and expanded as one more
  level (at most 10: a deeper nesting bounces as an alias loop); the path
  must be absolute and name a regular file of at most FILE_SIZE_LIMIT bytes,
  read within FILE_READ_TIMEOUT (a FIFO, a device, a huge or sparse file
  bounce as a configuration error, 5.3.5; a slow read defers);
* addresses are re-submitted together through ``public/cleanup`` as one new
  message with the same envelope sender and content and a ``Delivered-To:``
  header (``resubmit``); an address that names the user itself goes to the
  user (from an alias: its .forward, then the mailbox; from a .forward or as
  ``\\user``: the mailbox) instead, which breaks the loop.
"""

from __future__ import annotations

import os
import stat
from typing import TYPE_CHECKING

from pymailsys.daemons.local import command, file, results

from pymailsys import log, privileges, rfc822
from pymailsys.bounded_read import FileRefused, read_bounded
from pymailsys.delivery.agent import DeliveryRequest, DeliveryResult, QueueContent
from pymailsys.delivery.mailbox import plain_text
from pymailsys.ipc.attr import AttrValue, ProtocolError, request_streamed
from pymailsys.ipc.services import CLEANUP_FLAG_MAP_OK, CLEANUP_OK

if TYPE_CHECKING:
    from pymailsys.daemons.local.agent import LocalAgent, Recipient

MAX_DEPTH = 10
FILE_SIZE_LIMIT = 1 << 22  # bytes of an :include: or .forward file
FILE_READ_TIMEOUT = 30.0  # seconds to read one


def value_of_lines(text: str) -> str:
    """An alias value from a file's lines (.forward, :include:): comments and blanks out."""
    return ", ".join(line.strip() for line in text.splitlines()
                     if line.strip() and not line.lstrip().startswith("#"))


async def expand(agent: LocalAgent, req: DeliveryRequest, rcpt: Recipient, value: str,
                 content: QueueContent, origin: str = "alias", depth: int = 0,
                 rights: privileges.UserIds | None = None) -> DeliveryResult:
    """Expand an alias value (or .forward or :include: contents). ``rights``: the user
    whose rights commands, files and includes get (None: default_privs, as for an
    alias); ``origin`` (alias, forward, include) is checked against
    allow_mail_to_commands/_files."""
    addresses: list[str] = []
    done: list[DeliveryResult] = []
    skip_forward = origin != "alias"
    for item in rfc822.address_list(value):
        if item.startswith("|"):
            if origin not in agent.allow_commands:
                done.append(agent.done(req, DeliveryResult.bounced(
                    "mail to command is restricted", "5.7.1")))
                continue
            done.append(agent.done(req, await command.deliver(
                agent, req, rcpt, item[1:], content, rights)))
        elif item.startswith("/"):
            if origin not in agent.allow_files:
                done.append(agent.done(req, DeliveryResult.bounced(
                    "mail to file is restricted", "5.7.1")))
                continue
            done.append(agent.done(req, file.deliver(agent, req, item, content, rights)))
        elif item.lower().startswith(":include:"):
            if depth >= MAX_DEPTH:
                done.append(agent.done(req, DeliveryResult.bounced(
                    f"alias database loop for {rcpt.user}", "5.4.6")))
                continue
            done.append(await include(agent, req, rcpt, item[9:].strip(), content, depth,
                                      rights))
        elif item:
            addresses.append(item)
    self_reference = False
    others: list[str] = []
    for addr in addresses:
        # \user: that user's mailbox, no further alias or .forward expansion
        backslash = addr.startswith("\\")
        addr = addr.lstrip("\\")
        if not addr:
            continue
        local, at, domain = addr.rpartition("@")
        if not at:
            local, domain = addr, ""
        if local.lower() == rcpt.user and (not domain or domain.lower() in agent.destinations):
            self_reference = True  # loop guard: the user's own mailbox
            if backslash or origin != "alias":
                skip_forward = True
        else:
            others.append(addr)
    if others:
        done.append(agent.done(req, await resubmit(agent, req, others, content)))
    if self_reference:
        # from an alias, the user's .forward still applies (Postfix's alias "joe: joe,
        # ..." keeps a copy for joe); from a .forward or with \user, the mailbox
        done.append(await agent.deliver_user(req, rcpt, content, use_forward=not skip_forward))
    if not done:
        return DeliveryResult.sent("alias expanded to nothing")
    return results.worst(done)


async def include(agent: LocalAgent, req: DeliveryRequest, rcpt: Recipient, path: str,
                  content: QueueContent, depth: int,
                  rights: privileges.UserIds | None = None) -> DeliveryResult:
    """Expand an :include: file, read with the rights of its alias or .forward: an
    absolute path to a regular file of at most FILE_SIZE_LIMIT bytes (``read_file``)."""
    if not path.startswith("/"):
        return agent.done(req, DeliveryResult.bounced(
            f"mail system configuration error: include file {path} is not an absolute path",
            "5.3.5"))
    try:
        ids = agent.file_user(rights)
        with privileges.as_user(ids.uid, ids.gid):
            text, st = read_file(path)
    except (privileges.PrivilegeError, OSError, FileRefused) as e:
        return agent.done(req, results.failure(e, f"cannot open include file {path}: "))
    if st.st_mode & stat.S_IWOTH:
        return agent.done(req, DeliveryResult.bounced(
            f"mail system configuration error: include file {path} is world writable",
            "5.3.5"))
    return await expand(agent, req, rcpt, value_of_lines(text), content, "include", depth + 1,
                        rights)


def read_file(path: str, follow_links: bool = True) -> tuple[str, os.stat_result]:
    """An :include: or .forward file's text and stat, as ``bounded_read`` reads it (raises
    OSError, FileRefused, TimeoutError). Called with the reader's rights in place."""
    data, st = read_bounded(path, FILE_SIZE_LIMIT, FILE_READ_TIMEOUT, follow_links)
    return data.decode("utf-8", "surrogateescape"), st


async def resubmit(agent: LocalAgent, req: DeliveryRequest, addresses: list[str],
                   content: QueueContent) -> DeliveryResult:
    """Forward to addresses: one new message through cleanup, with Delivered-To."""
    delivered = f"Delivered-To: {req.rcpt.lower()}\n".encode("utf-8", "surrogateescape")
    attrs: list[tuple[str, AttrValue]] = [("origin", "local"), ("sender", req.sender)]
    attrs += [("rcpt", a) for a in addresses]
    attrs += [("rewrite_context", "local"), ("flags", CLEANUP_FLAG_MAP_OK)]
    try:
        reply = await request_streamed(agent.cleanup, attrs, "content",
                                       plain_text(delivered, content.text()))
    except (ProtocolError, OSError) as e:
        log.warning(f"{req.queue_id}: cleanup service: {e}")
        return DeliveryResult.deferred("mail forwarding failed: cleanup service unavailable")
    if reply.number("status", -1) != CLEANUP_OK:
        dsn = reply.text("dsn") or "4.3.0"
        return results.from_dsn("4.3.0" if dsn[:2] == "2." else dsn,
                                reply.text("reason") or "cleanup error")
    return DeliveryResult.sent(f"forwarded as {reply.text('queue_id')}")
