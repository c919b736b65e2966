"""Delivery to the mailbox of a UNIX account: mailbox_command(_maps), home_mailbox, the spool.

Takes a recipient whose user part names an account (an unknown one bounces
with 5.1.1 ``unknown user: "name"``); promises, in Postfix's order, the
command ``mailbox_command_maps`` gives for the user name, else
``mailbox_command`` (no ``$name`` expansion either way; run as the user
through ``command``; a table that cannot answer defers, 4.3.0), else
``home_mailbox`` (relative to the home directory; ``/`` at the end =
Maildir), else ``mail_spool_directory/USER`` (``/`` at the end of
the directory = Maildir). Writes happen with the recipient's effective ids;
in the spool directory with Postfix's rights: a world-writable directory gives
the recipient's ids, a group-writable one the recipient's uid and the
directory's group (a new file keeps that group, as Postfix leaves it),
otherwise root creates the file and gives it to the recipient; either way the message itself is written with the recipient's
ids, as Postfix writes it, so that quotas apply. Maildir deliveries to the account are crash-idempotent (a delivery
key and the agent's marker store). Run as another user, local defers mail for
every account but its own.
"""

from __future__ import annotations

import os
import pwd
import stat
from typing import TYPE_CHECKING

from pymailsys.daemons.local import command, results

from pymailsys import privileges
from pymailsys.delivery import mailbox
from pymailsys.delivery.agent import DeliveryRequest, DeliveryResult, QueueContent
from pymailsys.maps import TableError

if TYPE_CHECKING:
    from pymailsys.daemons.local.agent import LocalAgent, Recipient


async def deliver(agent: LocalAgent, req: DeliveryRequest, rcpt: Recipient,
                  content: QueueContent) -> DeliveryResult:
    pw = rcpt.account
    if pw is None:
        return DeliveryResult.bounced(f'unknown user: "{rcpt.user}"', "5.1.1")
    if not agent.root and pw.pw_uid != agent.me.uid:
        return DeliveryResult.deferred(
            f"cannot deliver to user {pw.pw_name}: the mail system runs as {agent.me.name}")
    try:
        mailbox_command = agent.mailbox_command_maps.find(rcpt.user) or agent.mailbox_command
    except TableError:
        return results.TABLE_FAILURE
    if mailbox_command:  # as Postfix: no $name expansion, the shell's $HOME etc.
        return await command.deliver(agent, req, rcpt, mailbox_command, content,
                                     privileges.UserIds.from_pw(pw))
    return write(agent, req, rcpt, pw, content)


def write(agent: LocalAgent, req: DeliveryRequest, rcpt: Recipient, pw: pwd.struct_passwd,
          content: QueueContent) -> DeliveryResult:
    """Store the message in the account's mbox file or Maildir."""
    if agent.home_mailbox:
        # as Postfix: always below the home directory, a leading "/" or not
        path = f"{pw.pw_dir}/{agent.home_mailbox}"
        maildir = agent.home_mailbox.endswith("/")
        ids = (pw.pw_uid, pw.pw_gid, [pw.pw_gid])
        chown: tuple[int, int] | None = None
    else:
        maildir = agent.spool_dir.endswith("/")
        path = os.path.join(agent.spool_dir, pw.pw_name) + ("/" if maildir else "")
        ids, chown = spool_ids(agent, pw, maildir)
    headers = agent.prepended(req, rcpt, False)
    try:
        if maildir:
            # one key per local part: an alias list's "user" and "user+ext" (one request)
            # are two deliveries, as in Postfix, not one remembered twice
            key = mailbox.delivery_key(req.queue_id, req.arrival_time, req.rcpt_offset,
                                       f"{path}\0{rcpt.localpart}")
            mailbox.deliver_maildir(path, mailbox.plain_text(headers, content.text()),
                                    host=agent.hostname, key=key, marker=agent.markers,
                                    size_limit=agent.size_limit,
                                    rights=lambda: privileges.as_user(ids[0], ids[1], ids[2]),
                                    create_dsn=results.MAILDIR_CREATE_DSN)
            return DeliveryResult.sent("delivered to maildir")
        recipient = (pw.pw_uid, pw.pw_gid, [pw.pw_gid])
        with privileges.as_user(ids[0], ids[1], ids[2]):
            data = mailbox.mbox_text(mailbox.from_line(req.sender), headers, content.text())
            start = mailbox.deliver_mbox(path, data, chown_to=chown,
                                         expect_uid=pw.pw_uid if agent.strict_owner else None,
                                         locks=agent.locks, size_limit=agent.size_limit,
                                         attempts=agent.lock_attempts, delay=agent.lock_delay,
                                         stale=agent.stale,
                                         write_as=None if ids == recipient else
                                         lambda: privileges.as_user(*recipient))
        agent.biff.notify(pw.pw_name, start)
        return DeliveryResult.sent("delivered to mailbox")
    except mailbox.MailboxError as e:
        if maildir:
            return results.maildir_failure(e, ids[0], ids[1])
        return results.failure(e, f"cannot update mailbox {path} for user {pw.pw_name}. ")
    except privileges.PrivilegeError as e:
        return results.failure(e)


def spool_ids(agent: LocalAgent, pw: pwd.struct_passwd,
              maildir: bool) -> tuple[tuple[int, int, list[int]], tuple[int, int] | None]:
    """Postfix's spool rights: (euid, egid, groups) for the write, and a chown target."""
    user = (pw.pw_uid, pw.pw_gid, [pw.pw_gid])
    if not agent.root or maildir:  # a Maildir in the spool is always the recipient's
        return user, None
    try:
        st = os.stat(agent.spool_dir.rstrip("/") or "/")
    except OSError:
        return user, None
    if st.st_mode & stat.S_IWOTH:
        return user, None
    if st.st_mode & stat.S_IWGRP:  # as Postfix: the spool's group only, no chown
        return (pw.pw_uid, st.st_gid, [st.st_gid]), None
    return (0, 0, []), (pw.pw_uid, pw.pw_gid)
