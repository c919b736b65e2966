"""The one mapping from a failure to a delivery result, for every delivery path.

Takes an exception raised while delivering (``MailboxError`` from the mailbox
writers, ``PrivilegeError`` from a change of rights, ``OSError`` from the file
system) or an enhanced status code with its text, and promises a
``DeliveryResult`` (``DeliveryResult.from_dsn``: 2.x.x sent, 4.x.x deferred,
5.x.x bounced; anything else, an unknown or missing code, defers with 4.3.0,
so a failure never turns into a bounce by accident); ``TABLE_FAILURE`` when a
per-user table cannot answer, ``CONFIG_ERROR`` when a setting cannot be used;
``maildir_failure`` for a Maildir delivery (the mailbox's or a ``/dir/`` of an
alias or .forward), as Postfix's local: ``maildir delivery failed: ...``, a
Maildir that cannot be made or linked into bounces (``MAILDIR_CREATE_DSN``
5.2.0, unless its errno is a temporary one), and EACCES adds Postfix's two
warnings naming the ids the delivery wrote with.
"""

from __future__ import annotations

import errno

from pymailsys import privileges
from pymailsys.bounded_read import FileRefused
from pymailsys.delivery.agent import DeliveryResult
from pymailsys.delivery.mailbox import MailboxError, errno_dsn, maildir_access_warnings

# a per-user table (mailbox_transport_maps...) that cannot answer: Postfix's words
TABLE_FAILURE = DeliveryResult.deferred("table lookup failure", "4.3.0")
# a setting that cannot be used as it stands (details in a warning)
CONFIG_ERROR_TEXT = "mail system configuration error"  # all a sender is told; details: the log
CONFIG_ERROR = DeliveryResult.deferred(CONFIG_ERROR_TEXT, "4.3.5")
# Postfix's local(8): a Maildir it cannot create or link into is the user's problem, final
MAILDIR_CREATE_DSN = "5.2.0"


def maildir_failure(error: MailboxError, uid: int, gid: int) -> DeliveryResult:
    """The result of a failed Maildir delivery made with uid/gid (see the module docstring)."""
    maildir_access_warnings(error, uid, gid)
    return failure(error, "maildir delivery failed: ")


def failure(error: Exception, what: str = "") -> DeliveryResult:
    """The result for an exception raised by a delivery path; ``what`` prefixes the text.

    A missing file (ENOENT) and a file ``bounded_read`` refuses (not a regular
    file, too large) are final (5.3.5: a configuration names something that is
    not there or not usable, as Postfix's :include: handling); other
    file-system errors, a read time limit included, use Postfix's mbox_dsn
    classification, defaulting to 4.3.0.
    """
    if isinstance(error, MailboxError):
        dsn, text = error.dsn, error.text
    elif isinstance(error, FileRefused):
        dsn, text = "5.3.5", f"mail system configuration error: {error}"
    elif isinstance(error, privileges.PrivilegeError):
        dsn, text = "4.3.0", str(error)
    elif isinstance(error, OSError):
        default = "5.3.5" if error.errno == errno.ENOENT else "4.3.0"
        dsn, text = errno_dsn(error.errno, default), error.strerror or str(error)
    else:
        dsn, text = "4.3.0", str(error)
    return DeliveryResult.from_dsn(dsn, what + text)
