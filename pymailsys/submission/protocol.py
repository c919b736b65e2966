"""protocol - the live submission request on public/pickup.

A client connects to ``public/pickup``, writes the single byte ``s``
(``SUBMIT_MAGIC``; a trigger is an upper-case byte such as ``W``) and then
one attribute list (``pymailsys.ipc.attr``)::

    request  "submit"
    sender, full_name, rcpt (repeated), xrcpt (repeated: from -t),
    content (the message, lines ended by LF), encoding, envid,
    ret (int), notify (int), rewrite_context ("local" | "remote"),
    rcpt_notify (repeated, one per rcpt then xrcpt: each recipient's own
    NOTIFY, as smtpd -S takes it; when absent, notify is every recipient's),
    rcpt_orcpt (likewise: each recipient's ORCPT, "rfc822;addr" or "")

pickup takes the submitter's uid from the kernel (SO_PEERCRED), never from
the request, and replies only after cleanup answered::

    status   0, or the sysexits.h code the client exits with
             (EX_NOPERM 77, EX_DATAERR 65, EX_TEMPFAIL 75, ...)
    reason   text for the user when status != 0
    queue_id when status == 0

``to_attrs`` builds the request; ``from_attrs`` validates one
(``SubmissionError`` for anything out of bounds: unknown request, no sender
or recipient, a null or line break in an envelope value, a value longer
than the line limit, content over message_size_limit, too many recipients).
"""

from __future__ import annotations

from collections.abc import Iterator

from pymailsys.dsn import NOTIFY_MASK, valid_orcpt
from pymailsys.ipc import attr
from pymailsys.queue.maildrop import (
    MAX_RECIPIENTS,
    Submission,
    SubmissionError,
    check_envelope,
)

SUBMIT_MAGIC = b"s"


def to_attrs(sub: Submission) -> list[tuple[str, attr.AttrValue]]:
    """The request but its content, which goes last (``handoff.submit_stream``)."""
    out: list[tuple[str, attr.AttrValue]] = [("request", "submit"), ("sender", sub.sender)]
    if sub.full_name:
        out.append(("full_name", sub.full_name))
    out += [("rcpt", a) for a in sub.recipients]
    out += [("xrcpt", a) for a in sub.extracted]
    for name, value in (("encoding", sub.encoding), ("envid", sub.envid),
                        ("rewrite_context", sub.rewrite_context)):
        if value:
            out.append((name, value))
    if sub.ret:
        out.append(("ret", sub.ret))
    if sub.notify:
        out.append(("notify", sub.notify))
    if sub.notifies:
        out += [("rcpt_notify", n) for n in sub.recipient_notifies()]
    if any(sub.dsn_orcpts):
        out += [("rcpt_orcpt", o) for o in sub.recipient_orcpts()]
    return out


def from_attrs(req: attr.AttrList, max_size: int = 0, line_limit: int = 2048) -> Submission:
    """The stream form, validated."""
    if req.text("request") != "submit":
        raise SubmissionError(f"unknown request: {req.text('request')!r}")
    if "sender" not in req:
        raise SubmissionError("no sender")
    content = req.raw("content") or b""
    if max_size and len(content) > max_size:
        raise SubmissionError("message file too big")
    sub = Submission(sender=req.text("sender"), full_name=req.text("full_name"),
                     recipients=req.all("rcpt"), extracted=req.all("xrcpt"),
                     encoding=req.text("encoding"), envid=req.text("envid"),
                     ret=req.number("ret"), notify=req.number("notify"),
                     rewrite_context=req.text("rewrite_context", "local"))
    if sub.encoding not in ("", "7bit", "8bit"):
        raise SubmissionError(f"bad encoding: {sub.encoding}")
    if sub.rewrite_context not in ("local", "remote"):
        raise SubmissionError(f"bad rewrite context: {sub.rewrite_context}")
    try:
        sub.notifies = [int(n) for n in req.all("rcpt_notify")]
    except ValueError:
        raise SubmissionError("bad rcpt_notify") from None
    if sub.notifies and len(sub.notifies) != len(sub.all_recipients()):
        raise SubmissionError("rcpt_notify does not match the recipients")
    if not all(0 <= n <= NOTIFY_MASK for n in [sub.notify, *sub.notifies]):
        raise SubmissionError("bad notify flags")
    sub.dsn_orcpts = req.all("rcpt_orcpt")
    if sub.dsn_orcpts and len(sub.dsn_orcpts) != len(sub.all_recipients()):
        raise SubmissionError("rcpt_orcpt does not match the recipients")
    if not all(o == "" or valid_orcpt(o) for o in sub.dsn_orcpts):
        raise SubmissionError("bad rcpt_orcpt")
    check_envelope(sub, line_limit)
    if not sub.all_recipients():
        raise SubmissionError("no recipients")
    if len(sub.all_recipients()) > MAX_RECIPIENTS:
        raise SubmissionError("too many recipients")
    return sub


def content_pieces(req: attr.AttrList, chunk: int) -> Iterator[bytes]:
    """A request's content as LF-terminated text in pieces of about ``chunk`` bytes,
    never a line at a time: one object per piece, whatever the lines are like."""
    content = req.raw("content") or b""
    if not content:
        yield b""
        return
    for start in range(0, len(content), chunk):
        yield content[start:start + chunk]
    if not content.endswith(b"\n"):
        yield b"\n"
