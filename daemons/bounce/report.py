"""Delivery status notifications (RFC 3464) in Postfix's words and layout.

``Template`` holds what Postfix's bounce templates hold (``postconf -t``):
the From, Subject and postmaster Subject, and the text; ``FAILURE``,
``DELAY`` and ``SUCCESS`` are Postfix's built-in ones, their text with
$myhostname, $delay_warning_time_hours and $maximal_queue_lifetime_days
filled in by ``Template.text``.

``write(notice, original, entries)`` yields one notification, ready for
cleanup (which adds Message-Id): headers (Date, From, Subject — the
postmaster subject for a postmaster copy —, To, Auto-Submitted, MIME), a
multipart/report with the text (the template's, left out of a postmaster
copy), one ``<rcpt> (expanded from <orig>): reason`` line per recipient,
the message/delivery-status part (Reporting-MTA, Original-Envelope-Id, X-Postfix-Queue-ID, X-Postfix-Sender,
Arrival-Date; per recipient Final-Recipient, Original-Recipient, Action,
Status, Remote-MTA, Diagnostic-Code ``smtp; reply`` or ``X-Postfix;
reason``, Will-Retry-Until for a delay), then the original: whole
(message/rfc822) for RET=FULL, else its headers (text/rfc822-headers),
and only its headers when it is larger than bounce_size_limit. As in
Postfix's bounce_notify_util.c, ``To:``, ``X-Postfix-Sender:`` and the
attached original's ``Return-Path:`` carry the address in its external form
(``rfc822.quote_822_local``: ``To: "q s"@localhost``, never the two addresses
``q s@localhost`` reads as), a null sender there as ``MAILER-DAEMON@$myhostname``;
Final-Recipient, Original-Recipient and the ``<rcpt> (expanded from <orig>)``
lines carry them as stored (internal form), as Postfix's do. The original
is read from the queue file as the notice goes out, a chunk at a time.
Long report lines wrap at 79 columns with a 4-space indent, as Postfix's.
"""

from __future__ import annotations

import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass

from pymailsys import dsn
from pymailsys.delivery.agent import QueueContent
from pymailsys.mail_date import mail_date
from pymailsys.queue import status_log
from pymailsys.rfc822 import quote_822_local

_BOILERPLATE_END = """
For further assistance, please send mail to postmaster.

If you do so, please include this problem report. You can
delete your own text from the attached returned message.

                   The mail system"""


@dataclass(frozen=True)
class Template:
    kind: str  # "failure", "delay" or "success"
    subject: str
    postmaster_subject: str
    body: str
    notify: int  # the NOTIFY bit a recipient must have asked for

    def text(self, host: str, delay_warning: int, lifetime: int) -> str:
        return (self.body.replace("$myhostname", host)
                .replace("$delay_warning_time_hours", str(delay_warning // 3600))
                .replace("$maximal_queue_lifetime_days", str(lifetime // 86400)))


FAILURE = Template("failure", "Undelivered Mail Returned to Sender",
                   "Postmaster Copy: Undelivered Mail", """\
This is the mail system at host $myhostname.

I'm sorry to have to inform you that your message could not
be delivered to one or more recipients. It's attached below.
""" + _BOILERPLATE_END, dsn.NOTIFY_FAILURE)

DELAY = Template("delay", "Delayed Mail (still being retried)",
                 "Postmaster Warning: Delayed Mail", """\
This is the mail system at host $myhostname.

####################################################################
# THIS IS A WARNING ONLY.  YOU DO NOT NEED TO RESEND YOUR MESSAGE. #
####################################################################

Your message could not be delivered for more than $delay_warning_time_hours hour(s).
It will be retried until it is $maximal_queue_lifetime_days day(s) old.
""" + _BOILERPLATE_END, dsn.NOTIFY_DELAY)

SUCCESS = Template("success", "Successful Mail Delivery Report", "", """\
This is the mail system at host $myhostname.

Your message was successfully delivered to the destination(s)
listed below. If the message was delivered to mailbox you will
receive no further notifications. Otherwise you may still receive
notifications of mail delivery errors from other systems.

                   The mail system""", dsn.NOTIFY_SUCCESS)


@dataclass(frozen=True)
class Notice:
    """One notification to write: which template, for whom, and how."""

    template: Template
    queue_id: str
    to: str
    host: str  # myhostname: Reporting-MTA, the text
    origin: str  # myorigin: the From address's domain
    postmaster_copy: bool = False
    ret: int = dsn.RET_FULL  # how much of the original
    size_limit: int = 50000
    delay_warning: int = 0
    lifetime: int = 0  # maximal_queue_lifetime, seconds


def wanted(template: Template, entries: list[status_log.Entry]) -> list[status_log.Entry]:
    """The entries whose NOTIFY asks for this kind of notice."""
    return [e for e in entries if dsn.wants(e.notify_flags, template.notify)]


def _wrap(line: str) -> list[str]:
    return textwrap.wrap(line, 79, subsequent_indent="    ", break_long_words=False,
                         break_on_hyphens=False) or [line]


def _expanded_from(e: status_log.Entry) -> str:
    orig = e.original_recipient
    return f" (expanded from <{orig}>)" if orig and orig.lower() != e.recipient.lower() else ""


def _recipient_fields(notice: Notice, e: status_log.Entry, arrival: float) -> list[str]:
    out = ["", f"Final-Recipient: rfc822; {e.recipient}"]
    if e.dsn_orig_rcpt:
        out.append(f"Original-Recipient: {e.dsn_orig_rcpt}")
    elif e.original_recipient:
        out.append(f"Original-Recipient: rfc822;{e.original_recipient}")  # no space, as Postfix
    action = status_log.ACTION_FAILED if notice.template is FAILURE else e.action
    out += [f"Action: {action}", f"Status: {e.status}"]
    mta_type, mta_name = e.extra.get("mta_type", ""), e.extra.get("mta_mname", "")
    if mta_type and mta_name:
        out += _wrap(f"Remote-MTA: {mta_type}; {mta_name}")
    diag_type, diag_text = e.extra.get("diag_type", ""), e.extra.get("diag_text", "")
    if diag_type and diag_text:
        out += _wrap(f"Diagnostic-Code: {diag_type}; {diag_text}")
    else:
        out += _wrap(f"Diagnostic-Code: X-Postfix; {e.reason}")
    if notice.template is DELAY:
        out.append(f"Will-Retry-Until: {mail_date(arrival + notice.lifetime)}")
    return out


def write(notice: Notice, original: QueueContent,
          entries: list[status_log.Entry]) -> Iterator[bytes]:
    """The notification, as LF-terminated lines in chunks (see the module docstring)."""
    env = original.envelope
    assert env is not None
    template = notice.template
    now = time.time()
    boundary = f"{notice.queue_id}.{int(now)}/{notice.host}"
    subject = template.postmaster_subject if notice.postmaster_copy else template.subject
    # external (quoted) forms, as bounce_notify_util.c: "q s"@x, not two addresses;
    # the original's null sender is named as Postfix's mail_addr_mail_daemon() names it
    sender = quote_822_local(env.sender) if env.sender else f"MAILER-DAEMON@{notice.host}"
    lines = [
        f"Date: {mail_date(now)}",  # first, as Postfix 3.7's bounce writes it
        f"From: Mail Delivery System <MAILER-DAEMON@{notice.origin}>",
        f"Subject: {subject}",
        f"To: {quote_822_local(notice.to)}",
        f"Auto-Submitted: {'auto-generated' if notice.postmaster_copy else 'auto-replied'}",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status;\n\tboundary="{boundary}"',
        "Content-Transfer-Encoding: 8bit",
        "",
        "This is a MIME-encapsulated message.",
        "",
        f"--{boundary}",
        "Content-Description: Notification",
        "Content-Type: text/plain; charset=utf-8",
        "Content-Transfer-Encoding: 8bit",  # as the whole notice's, as Postfix 3.7's
        "",
    ]
    if not notice.postmaster_copy:
        lines.append(template.text(notice.host, notice.delay_warning, notice.lifetime))
    for e in entries:
        lines += ["", *_wrap(f"<{e.recipient}>{_expanded_from(e)}: {e.reason}")]
    lines += ["", f"--{boundary}", "Content-Description: Delivery report",
              "Content-Type: message/delivery-status", "",
              f"Reporting-MTA: dns; {notice.host}"]
    envid = env.attrs.get("dsn_envid", "")
    if envid:
        lines.append(f"Original-Envelope-Id: {envid}")
    lines.append(f"X-Postfix-Queue-ID: {notice.queue_id}")
    lines.append(f"X-Postfix-Sender: rfc822; {sender}")
    lines.append(f"Arrival-Date: {mail_date(env.arrival)}")
    for e in entries:
        lines += _recipient_fields(notice, e, env.arrival)
    ret = notice.ret
    if notice.size_limit and env.message_size > notice.size_limit:
        ret = dsn.RET_HDRS  # as Postfix: never cut a message in the middle
    undelivered = "Undelivered " if template is not SUCCESS else ""
    if ret == dsn.RET_FULL:
        lines += ["", f"--{boundary}", f"Content-Description: {undelivered}Message",
                  "Content-Type: message/rfc822", "Content-Transfer-Encoding: 8bit", ""]
    else:
        lines += ["", f"--{boundary}", f"Content-Description: {undelivered}Message Headers",
                  "Content-Type: text/rfc822-headers", "Content-Transfer-Encoding: 8bit", ""]
    lines.append(f"Return-Path: <{sender}>")
    yield "\n".join(lines).encode("utf-8", "surrogateescape") + b"\n"
    if ret == dsn.RET_FULL:
        yield from original.text()
    else:
        for header in original.header_lines():
            yield header + b"\n"
    yield f"\n--{boundary}--\n".encode()
