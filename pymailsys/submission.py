"""Local mail submission: what sendmail hands to the mail system, and how.

NAME
    submission - the sendmail -> pickup hand-off, without setuid or setgid

DESCRIPTION
    A local user's message travels as a ``Submission`` (envelope sender, full
    name, recipients, recipients extracted from headers by ``-t``, message
    lines, DSN and encoding options). It reaches the mail system one of two
    ways, and pickup treats both the same:

    1. **Stream** (the system runs): sendmail connects to ``public/pickup``,
       writes the single byte ``s`` (``SUBMIT_MAGIC``; a trigger would be an
       upper-case byte such as ``W``) and then one attribute list
       (``pymailsys.ipc.attr``)::

           request  "submit"
           sender, full_name, rcpt (repeated), xrcpt (repeated: from -t),
           content (the message, lines ended by LF), encoding, envid,
           ret (int), notify (int), rewrite_context ("local" | "remote")

       pickup learns the submitter's uid from the kernel (``SO_PEERCRED``),
       never from the request, applies ``authorized_submit_users`` and
       ``local_login_sender_maps``, hands the message to cleanup and replies
       only after cleanup answered::

           status   0, or the sysexits.h code sendmail exits with
                    (EX_NOPERM 77, EX_DATAERR 65, EX_TEMPFAIL 75, ...)
           reason   text for the user when status != 0
           queue_id when status == 0

    2. **Maildrop file** (the system is down, or the socket refuses us): the
       records Postfix's postdrop writes (T, then envelope A F S R, M,
       content N/L, X, extracted R, E) in ``maildrop/`` under a queue ID,
       mode 0644 while written, 0744 (complete) after the fsync. The file
       owner is the submitter. pickup reads it later (``parse_maildrop``).

    ``parse_maildrop`` is the strict reader pickup applies to files that any
    local user could have written: only the record types Postfix's pickup
    allows in each section, each record no longer than a bound, exactly one
    sender, at least one recipient, a final E. Anything else raises
    ``SubmissionError``. Times inside the file are ignored (the file's mtime
    and owner are what count).

    ``user_acl`` and ``login_sender_ok`` implement Postfix's
    authorized_*_users string lists and local_login_sender_maps.

SECURITY
    Nothing in a submission is trusted: the uid comes from SO_PEERCRED or the
    file owner; record types, lengths and counts are bounded; named
    attributes are limited to the DSN/encoding/rewrite set postdrop allows.
"""

from __future__ import annotations

import email.utils
import os
import pwd
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import BinaryIO

from pymailsys import maps
from pymailsys.config import Config
from pymailsys.ipc import attr
from pymailsys.queue import records as r
from pymailsys.queue import spool as queue

# sysexits.h
EX_OK = 0
EX_USAGE = 64
EX_DATAERR = 65
EX_NOUSER = 67
EX_UNAVAILABLE = 69
EX_SOFTWARE = 70
EX_OSERR = 71
EX_CANTCREAT = 73
EX_IOERR = 74
EX_TEMPFAIL = 75
EX_NOPERM = 77
EX_CONFIG = 78

SUBMIT_MAGIC = b"s"
TRIGGER_BYTES = b"WIDAF"

# named attributes (Postfix mail_proto.h)
ATTR_ENVID = "envelope_id"
ATTR_RET = "ret_flags"
ATTR_NOTIFY = "notify_flags"
ATTR_RWR = "rewrite_context"
ATTR_ENCODING = "encoding"
ATTR_TRACE = "trace_flags"

DSN_RET_FULL = 1
DSN_RET_HDRS = 2
DSN_NOTIFY_NEVER = 1
DSN_NOTIFY_SUCCESS = 2
DSN_NOTIFY_FAILURE = 4
DSN_NOTIFY_DELAY = 8

# what Postfix's pickup accepts per section (rec_type.h), PTR/padding handled apart
ENVELOPE_TYPES = b"MCTcFILSDRO/WVA>K<ion"
CONTENT_TYPES = b"XLNw"
EXTRACT_TYPES = b"EDRO/PreAFIL>Kon"
MAX_RECIPIENTS = 10000


class SubmissionError(Exception):
    """A malformed submission (maildrop file or request)."""


@dataclass
class Submission:
    sender: str
    recipients: list[str] = field(default_factory=list)
    extracted: list[str] = field(default_factory=list)
    lines: list[bytes] = field(default_factory=list)
    full_name: str = ""
    encoding: str = ""
    envid: str = ""
    ret: int = 0
    notify: int = 0
    rewrite_context: str = "local"
    orig_recipients: list[str] = field(default_factory=list)

    def all_recipients(self) -> list[str]:
        return self.recipients + self.extracted

    def content(self) -> bytes:
        return b"".join(line + b"\n" for line in self.lines)

    # stream form ------------------------------------------------------------
    def to_attrs(self) -> list[tuple[str, attr.AttrValue]]:
        out: list[tuple[str, attr.AttrValue]] = [("request", "submit"), ("sender", self.sender)]
        if self.full_name:
            out.append(("full_name", self.full_name))
        out += [("rcpt", a) for a in self.recipients]
        out += [("xrcpt", a) for a in self.extracted]
        for name, value in (("encoding", self.encoding), ("envid", self.envid),
                            ("rewrite_context", self.rewrite_context)):
            if value:
                out.append((name, value))
        if self.ret:
            out.append(("ret", self.ret))
        if self.notify:
            out.append(("notify", self.notify))
        out.append(("content", self.content()))
        return out

    # maildrop form ----------------------------------------------------------
    def to_records(self, arrival: float | None = None, line_limit: int = 2048) -> bytes:
        now = time.time() if arrival is None else arrival
        sec = int(now)
        out = [r.encode_record(r.REC_TYPE_TIME, f"{sec} {int((now - sec) * 1e6)}".encode())]

        def a(name: str, value: str) -> None:
            out.append(r.encode_record(r.REC_TYPE_ATTR, f"{name}={value}".encode(
                "utf-8", "surrogateescape")))

        def rec(rtype: bytes, text: str) -> None:
            out.append(r.encode_record(rtype, text.encode("utf-8", "surrogateescape")))

        if self.envid:
            a(ATTR_ENVID, self.envid)
        if self.ret:
            a(ATTR_RET, str(self.ret))
        a(ATTR_RWR, self.rewrite_context or "local")
        if self.full_name:
            rec(r.REC_TYPE_FULL, self.full_name)
        rec(r.REC_TYPE_FROM, self.sender)
        if self.encoding:
            a(ATTR_ENCODING, self.encoding)
        for rcpt in self.recipients:
            if self.notify:
                a(ATTR_NOTIFY, str(self.notify))
            rec(r.REC_TYPE_RCPT, rcpt)
        out.append(r.encode_record(r.REC_TYPE_MESG, b""))
        for line in self.lines:
            out.append(r.text_records(line, line_limit))
        out.append(r.encode_record(r.REC_TYPE_XTRA, b""))
        for rcpt in self.extracted:
            if self.notify:
                a(ATTR_NOTIFY, str(self.notify))
            rec(r.REC_TYPE_RCPT, rcpt)
        out.append(r.encode_record(r.REC_TYPE_END, b""))
        return b"".join(out)


def _text(payload: bytes) -> str:
    return payload.decode("utf-8", "surrogateescape")


def _check_envelope_text(rtype: bytes, payload: bytes) -> None:
    if b"\r" in payload or b"\n" in payload or b"\0" in payload:
        raise SubmissionError(
            f"null or line break in '{r.REC_TYPES.get(rtype, '?')}' record")


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
    for value in [sub.sender, sub.full_name, sub.envid, *sub.all_recipients()]:
        _check_envelope_text(b"S", value.encode("utf-8", "surrogateescape"))
        if len(value) > line_limit:
            raise SubmissionError("envelope record too long")
    if sub.encoding not in ("", "7bit", "8bit"):
        raise SubmissionError(f"bad encoding: {sub.encoding}")
    if sub.rewrite_context not in ("local", "remote"):
        raise SubmissionError(f"bad rewrite context: {sub.rewrite_context}")
    if not sub.all_recipients():
        raise SubmissionError("no recipients")
    if len(sub.all_recipients()) > MAX_RECIPIENTS:
        raise SubmissionError("too many recipients")
    if content.endswith(b"\n"):
        content = content[:-1]
    sub.lines = content.split(b"\n") if content else []
    return sub


def iter_following_pointers(data: bytes, max_length: int) -> Iterable[tuple[bytes, bytes]]:
    """(type, payload) in logical order: p records followed, w padding skipped."""
    offset = 0
    jumps = 0
    end = len(data)
    while offset < end:
        rtype, payload, nxt = r.decode_record(data, offset, max_length)
        if rtype == r.REC_TYPE_PTR:
            try:
                target = int(payload.strip() or b"0")
            except ValueError:
                raise SubmissionError("malformed pointer record") from None
            if target > 0:
                jumps += 1
                if jumps > 10000 or target >= end:
                    raise SubmissionError("bad pointer record")
                offset = target
            else:
                offset = nxt
            continue
        if rtype == r.REC_TYPE_DTXT:
            offset = nxt
            continue
        yield rtype, payload
        if rtype == r.REC_TYPE_END:
            return
        offset = nxt


def parse_maildrop(data: bytes, line_limit: int = 2048, requeued: bool = False) -> Submission:
    """A maildrop file (postdrop format, or a whole queue file after postsuper -r)."""
    max_length = max(line_limit, 2048)
    sub = Submission(sender="")
    senders = 0
    section = 0  # 0 envelope, 1 content, 2 extracted
    allowed = (ENVELOPE_TYPES, CONTENT_TYPES, EXTRACT_TYPES)
    partial: list[bytes] = []
    notify = 0
    orig = ""
    ended = False
    try:
        for rtype, payload in iter_following_pointers(data, max_length):
            if rtype not in allowed[section]:
                raise SubmissionError(
                    f"unexpected or malformed record type {rtype[0]}")
            if section == 1:
                if rtype == r.REC_TYPE_XTRA:
                    if partial:
                        sub.lines.append(b"".join(partial))
                        partial = []
                    section = 2
                elif rtype == r.REC_TYPE_CONT:
                    partial.append(payload)
                elif rtype == r.REC_TYPE_NORM:
                    partial.append(payload)
                    sub.lines.append(b"".join(partial))
                    partial = []
                if len(sub.lines) > 10_000_000:
                    raise SubmissionError("too many lines")
                continue
            if rtype == r.REC_TYPE_MESG:
                if section != 0:
                    raise SubmissionError("unexpected message content record")
                section = 1
                continue
            if rtype == r.REC_TYPE_END:
                ended = True
                break
            _check_envelope_text(rtype, payload)
            if rtype == r.REC_TYPE_FROM:
                senders += 1
                if senders > 1:
                    raise SubmissionError("duplicate sender record")
                sub.sender = _text(payload)
            elif rtype == r.REC_TYPE_FULL:
                sub.full_name = _text(payload)
            elif rtype == r.REC_TYPE_ORCP:
                orig = _text(payload)
            elif rtype == r.REC_TYPE_RCPT:
                (sub.recipients if section == 0 else sub.extracted).append(_text(payload))
                sub.orig_recipients.append(orig)
                orig = ""
                if len(sub.all_recipients()) > MAX_RECIPIENTS:
                    raise SubmissionError("too many recipients")
            elif rtype in (r.REC_TYPE_DONE, r.REC_TYPE_DRCP):
                orig = ""
            elif rtype == r.REC_TYPE_ATTR:
                name, sep, value = _text(payload).partition("=")
                if not sep:
                    continue
                if name == ATTR_NOTIFY:
                    notify = int(value) if value.isdigit() else 0
                    sub.notify = sub.notify or notify
                elif name == ATTR_ENVID:
                    sub.envid = value
                elif name == ATTR_RET:
                    sub.ret = int(value) if value.isdigit() else 0
                elif name == ATTR_ENCODING and value in ("7bit", "8bit", ""):
                    sub.encoding = value
                elif name == ATTR_RWR and value in ("local", "remote"):
                    sub.rewrite_context = value
                # other named attributes (client info of a requeued file) are dropped
    except r.RecordError as e:
        raise SubmissionError(str(e)) from None
    if not ended:
        raise SubmissionError("no end-of-message record")
    if senders == 0:
        raise SubmissionError("no envelope sender")
    if section != 2:
        raise SubmissionError("no message content")
    return sub


# --- access control ---------------------------------------------------------------

def login_name(uid: int) -> str | None:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


def user_acl(config: Config, param: str, uid: int) -> str | None:
    """None when uid may (Postfix check_user_acl_byuid), else the user name refused."""
    acl = config.get(param).strip()
    if acl.startswith("static:"):
        return None
    name = login_name(uid) or "unknown"
    for pattern in config.get_list(param):
        negate = pattern.startswith("!")
        if negate:
            pattern = pattern[1:]
        matched = False
        if pattern.startswith("/"):
            try:
                with open(pattern) as f:
                    words = f.read().split()
            except OSError:
                words = []
            matched = name.lower() in (w.lower() for w in words)
        elif ":" in pattern:
            matched = maps.Maps(None, specs=[pattern]).find(name) is not None
        else:
            matched = pattern.lower() == name.lower()
        if matched:
            return name if negate else None
    return name


def login_sender_ok(config: Config, uid: int, sender: str) -> bool:
    """local_login_sender_maps: may this user use this envelope sender?

    Raises maps.TableError when a table cannot answer (the caller defers).
    """
    specs = config.get_list("local_login_sender_maps")
    user = login_name(uid) or f"uid:{uid}"
    patterns = maps.Maps(None, specs=specs).find(user)
    if patterns is None:
        return False
    delim = config.get("recipient_delimiter")
    null_key = config.get("empty_address_local_login_sender_maps_lookup_key")
    for pattern in patterns.replace(",", " ").split():
        if pattern.startswith("@"):
            at = sender.rfind("@")
            if at >= 0 and sender[at:].lower() == pattern.lower():
                return True
        elif pattern == "*":
            return True
        elif pattern.lower() == null_key.lower():
            if sender == "":
                return True
        else:
            local, sep, domain = sender.rpartition("@") if "@" in sender else (sender, "", "")
            if delim and local:
                for d in delim:
                    if d in local:
                        local = local.split(d, 1)[0]
                        break
            stripped = f"{local}@{domain}" if sep else local
            if pattern.lower() == stripped.lower():
                return True
    return False


# --- message input (sendmail) -----------------------------------------------------

def read_message(stream: BinaryIO, dot_rule: bool) -> list[bytes]:
    """Message lines from stdin, as Postfix's sendmail reads them.

    Stops at end of file, or at a line with a lone "." when dot_rule; drops
    CR at line ends when the first line ends in CRLF; skips leading
    ``From `` (and ``>From ``) lines.
    """
    lines: list[bytes] = []
    strip_cr: bool | None = None
    skip_from = True
    for raw in stream:
        line = raw[:-1] if raw.endswith(b"\n") else raw
        if strip_cr is None:
            strip_cr = line.endswith(b"\r")
        if skip_from:
            if line.lstrip(b">").startswith(b"From "):
                continue
            skip_from = False
        if strip_cr:
            line = line.rstrip(b"\r")
        if dot_rule and line == b".":
            break
        lines.append(line)
    return lines


def parse_address_list(text: str) -> list[str]:
    """Addresses in a header value or a command-line argument ("a, b <c>")."""
    out = []
    for _name, address in email.utils.getaddresses([text]):
        if address:
            out.append(address)
    return out


RCPT_HEADERS = ("to", "cc", "bcc")
RESENT_HEADERS = ("resent-to", "resent-cc", "resent-bcc")


def header_recipients(lines: list[bytes]) -> tuple[list[str], list[bytes]]:
    """sendmail -t: recipients from To/Cc/Bcc (Resent-* when present), and the
    lines with Bcc and Resent-Bcc headers removed."""
    headers: list[tuple[str, str, int, int]] = []  # name, value, first line, end
    i = 0
    n = len(lines)
    while i < n:
        line = lines[i]
        if line == b"" or line[:1] in (b" ", b"\t"):
            break
        hname, sep, value = line.partition(b":")
        if not sep or not hname.strip() or b" " in hname.strip():
            break
        j = i + 1
        parts = [value]
        while j < n and lines[j][:1] in (b" ", b"\t"):
            parts.append(lines[j])
            j += 1
        headers.append((hname.strip().decode("ascii", "replace").lower(),
                        b" ".join(p.strip() for p in parts).decode("utf-8", "surrogateescape"),
                        i, j))
        i = j
    resent = any(h[0] in RESENT_HEADERS for h in headers)
    wanted = RESENT_HEADERS if resent else RCPT_HEADERS
    rcpts: list[str] = []
    for hdr, text, _s, _e in headers:
        if hdr in wanted:
            rcpts.extend(parse_address_list(text))
    drop: set[int] = set()
    for hdr, _text, s, e in headers:
        if hdr in ("bcc", "resent-bcc"):
            drop.update(range(s, e))
    kept = [line for k, line in enumerate(lines) if k not in drop]
    return rcpts, kept


def parse_sender(text: str) -> str:
    """-f value: the first address in it ("<>" is the null sender)."""
    t = text.strip()
    if t in ("", "<>"):
        return ""
    found = parse_address_list(t)
    return found[0] if found else t.strip("<>")


def default_full_name(uid: int) -> str:
    name = os.environ.get("NAME")
    if name:
        return name
    try:
        pw = pwd.getpwuid(uid)
    except KeyError:
        return ""
    gecos = pw.pw_gecos.split(",", 1)[0]
    return gecos.replace("&", pw.pw_name.capitalize())


# --- hand-off ----------------------------------------------------------------------

class SystemDown(Exception):
    """The pickup socket is absent or refuses connections."""


def submit_stream(path: str, sub: Submission, timeout: float = 3600.0) -> attr.AttrList:
    """Submit over public/pickup; SystemDown when nobody listens there."""
    try:
        client = attr.SyncAttrClient(path, timeout=timeout)
    except (FileNotFoundError, ConnectionRefusedError, PermissionError, NotADirectoryError) as e:
        raise SystemDown(str(e)) from e
    with client:
        client.sock.sendall(SUBMIT_MAGIC)
        return client.request(sub.to_attrs())


def write_maildrop(spool: queue.Spool, sub: Submission, line_limit: int = 2048) -> str:
    """Write a complete maildrop file (0644 while written, 0744 after fsync)."""
    old = os.umask(0o022)
    try:
        queue_id, path, fd = spool.create_queue_file(queue.MAILDROP, queue.MAILDROP_WRITING)
    finally:
        os.umask(old)
    try:
        data = sub.to_records(line_limit=line_limit)
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fchmod(fd, queue.MAILDROP_COMPLETE)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        try:
            os.unlink(path)
        except OSError:
            pass
        raise
    os.close(fd)
    return queue_id
