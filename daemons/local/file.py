"""Delivery to a file named in an alias, .forward or :include: (``/path``, ``/dir/``).

Takes the path and the rights to write with (``LocalAgent.file_user``: never
uid 0); promises an mbox append with Postfix's locking and safety rules, or a
Maildir delivery when the path ends in ``/`` (``pymailsys.delivery.mailbox``),
done entirely with those rights; an executable file is refused (5.7.1 ``file
is executable``, as Postfix: mail appended to a script would run), and a
character device (``/dev/null``) is written to as Postfix writes it; failures map through ``results.failure``
(a Maildir's through ``results.maildir_failure``, as the mailbox's: Postfix's
local delivers a ``/dir/`` with the same code).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pymailsys.daemons.local import results

from pymailsys import privileges
from pymailsys.delivery import mailbox
from pymailsys.delivery.agent import DeliveryRequest, DeliveryResult, QueueContent

if TYPE_CHECKING:
    from pymailsys.daemons.local.agent import LocalAgent, Recipient


def deliver(agent: LocalAgent, req: DeliveryRequest, rcpt: Recipient, path: str,
            content: QueueContent,
            rights: privileges.UserIds | None = None) -> DeliveryResult:
    try:
        ids = agent.file_user(rights)
        with privileges.as_user(ids.uid, ids.gid):
            if path.endswith("/"):
                data = mailbox.plain_text(agent.prepended(req, rcpt, False), content.text())
                try:
                    mailbox.deliver_maildir(path, data, host=agent.hostname,
                                            size_limit=agent.size_limit,
                                            create_dsn=results.MAILDIR_CREATE_DSN)
                except mailbox.MailboxError as e:
                    return results.maildir_failure(e, ids.uid, ids.gid)
                return DeliveryResult.sent("delivered to maildir")
            data = mailbox.mbox_text(mailbox.from_line(req.sender),
                                     agent.prepended(req, rcpt, False), content.text())
            mailbox.deliver_mbox(path, data, locks=agent.locks, size_limit=agent.size_limit,
                                 attempts=agent.lock_attempts, delay=agent.lock_delay,
                                 stale=agent.stale, dotlock_may_fail=True,
                                 to_file=True)
    except (mailbox.MailboxError, privileges.PrivilegeError) as e:
        return results.failure(e, f"cannot append message to file {path}: ")
    return DeliveryResult.sent(f"delivered to file: {path}")
