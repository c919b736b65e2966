"""received - the Received: headers Postfix writes, one function per writer.

``received_smtpd`` is smtpd's (cleanup writes it from what smtpd sent, and smtpd in
stand-alone mode, ``sendmail -bs``, into the message it submits), ``received_pickup``
pickup's for local submissions, ``received_local`` the one of mail Postfix itself
posts. Each returns the header's lines, folded as Postfix folds them.
"""

from __future__ import annotations

from pymailsys.rfc822 import quote_822_local


def received_smtpd(helo: str, name: str, addr: str, protocol: str, myhostname: str,
                   mail_name: str, queue_id: str, rcpt: str | None, date: str,
                   comment: str = "") -> list[str]:
    """smtpd's Received: header; ``for <rcpt>`` only when there is exactly one recipient;
    ``comment`` (smtpd's TLS and authentication notes) are lines after the first."""
    name = name or "unknown"
    rfc_addr = f"IPv6:{addr}" if ":" in addr else addr
    by = f"\tby {myhostname} ({mail_name})"
    if protocol:
        by += f" with {protocol}"
    by += f" id {queue_id}"
    first = f"Received: from {helo or name} ({name} [{rfc_addr}])"
    if comment:
        first += "\n\t" + "\n\t".join(line.strip() for line in comment.splitlines())
    if rcpt is not None:
        return [first, by, f"\tfor <{quote_822_local(rcpt)}>; {date}"]
    return [first, by + ";", f"\t{date}"]


def received_pickup(myhostname: str, mail_name: str, uid: int, queue_id: str,
                    date: str) -> list[str]:
    """pickup's Received: header."""
    return [f"Received: by {myhostname} ({mail_name}, from userid {uid})",
            f"\tid {queue_id}; {date}"]


def received_local(myhostname: str, mail_name: str, queue_id: str, date: str) -> list[str]:
    """The Received: header of mail that Postfix itself posts (bounces, forwarding)."""
    return [f"Received: by {myhostname} ({mail_name})", f"\tid {queue_id}; {date}"]
