"""maildrop - the record file a local submission leaves in maildrop/.

NAME
    maildrop - Postfix's postdrop file format: write it, read it strictly

DESCRIPTION
    A local user's message is a ``Submission`` (envelope sender, full name,
    recipients, recipients extracted from headers by ``sendmail -t``,
    message lines, DSN and encoding options). When the mail system is down
    it waits in ``maildrop/`` as the records Postfix's postdrop writes::

        T  arrival time
        A  named attributes (envelope_id, ret_flags, rewrite_context,
           encoding; notify_flags and dsn_orig_rcpt before each recipient:
           its own NOTIFY and ORCPT)
        N  full name, S sender, R recipients
        M  then content: N (line), L (line continued)
        X  then the extracted R records
        E  end

    ``Submission.to_records`` encodes that form; ``write_maildrop`` stores it
    under a new queue ID, mode 0644 while written and 0744 (complete) after
    the fsync; the file owner is the submitter.

    ``parse_maildrop`` is the strict reader pickup and postdrop apply to files
    any local user could have written: only the record types Postfix's
    pickup allows in each section, each record no longer than a bound,
    exactly one sender, at most MAX_RECIPIENTS recipients, a final E.
    Anything else raises ``SubmissionError``. Times inside the file are
    ignored (the file's mtime and owner are what count). A whole queue file
    (after ``postsuper -r``) reads the same way; its client attributes are
    dropped, its pointer records are followed (``iter_following_pointers``).

    A file is read from a ``RecordFile`` (an open file, read with pread a block
    at a time, or bytes), never whole: records passed may not add up to more
    than the file's size (a pointer loop), nor jump back more than Postfix's
    10,000 times, nor the content exceed message_size_limit. Pickup parses a
    file without keeping its content (``lines=False``), then streams the
    content to cleanup with ``content_pieces``: memory stays a block, one
    record and the envelope whatever the file holds.

SECURITY
    Nothing in the file is trusted: the uid comes from the file owner; record
    types, lengths, counts, pointer jumps and content size are bounded; named attributes are limited to
    the DSN/encoding/rewrite set postdrop writes; no envelope value carries
    a null or a line break, and no address a control character of any kind
    (``rfc822.envelope_address``, the rule smtpd and sendmail apply).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from pymailsys.dsn import valid_orcpt
from pymailsys.queue import records as r
from pymailsys.queue import spool as queue
from pymailsys.rfc822 import envelope_address

# named attributes (Postfix mail_proto.h)
ATTR_ENVID = "envelope_id"
ATTR_RET = "ret_flags"
ATTR_NOTIFY = "notify_flags"
ATTR_ORCPT = "dsn_orig_rcpt"
ATTR_RWR = "rewrite_context"
ATTR_ENCODING = "encoding"
ATTR_TRACE = "trace_flags"

# what Postfix's pickup accepts per section (rec_type.h), PTR/padding handled apart
ENVELOPE_TYPES = b"MCTcFILSDRO/WVA>K<ion"
CONTENT_TYPES = b"XLNw"
EXTRACT_TYPES = b"EDRO/PreAFIL>Kon"
MAX_RECIPIENTS = 10000


class SubmissionError(Exception):
    """A malformed submission (maildrop file or request). ``status``: the sysexits.h
    code for the submitter, EX_DATAERR when the fault is an envelope value the user
    gave (an address with a control character), EX_SOFTWARE otherwise."""

    def __init__(self, reason: str, status: int = os.EX_SOFTWARE) -> None:
        super().__init__(reason)
        self.status = status


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
    notify: int = 0  # NOTIFY for every recipient without its own in ``notifies``
    rewrite_context: str = "local"
    orig_recipients: list[str] = field(default_factory=list)
    notifies: list[int] = field(default_factory=list)  # per recipient, in all_recipients order
    dsn_orcpts: list[str] = field(default_factory=list)  # ORCPT ("rfc822;addr"), likewise
    content_offset: int = 0  # a maildrop file's first record after M (parse_maildrop)
    content_size: int = 0  # its content as ``content_pieces`` sends it (parse_maildrop)

    def all_recipients(self) -> list[str]:
        return self.recipients + self.extracted

    def recipient_orcpts(self) -> list[str]:
        """The ORCPT of each recipient ("" when none), in all_recipients order."""
        count = len(self.recipients) + len(self.extracted)
        return [self.dsn_orcpts[i] if i < len(self.dsn_orcpts) else "" for i in range(count)]

    def recipient_notifies(self) -> list[int]:
        """The NOTIFY flags of each recipient, in all_recipients order."""
        count = len(self.recipients) + len(self.extracted)
        return [self.notifies[i] if i < len(self.notifies) else self.notify
                for i in range(count)]

    def content(self) -> bytes:
        return b"".join(line + b"\n" for line in self.lines)

    def envelope_records(self, arrival: float | None = None) -> bytes:
        """The records before the content: T, A, F, S, the recipients, and M."""
        now = time.time() if arrival is None else arrival
        sec = int(now)
        out = [r.encode_record(r.REC_TYPE_TIME, f"{sec} {int((now - sec) * 1e6)}".encode())]
        if self.envid:
            out.append(_attr(ATTR_ENVID, self.envid))
        if self.ret:
            out.append(_attr(ATTR_RET, str(self.ret)))
        out.append(_attr(ATTR_RWR, self.rewrite_context or "local"))
        if self.full_name:
            out.append(_rec(r.REC_TYPE_FULL, self.full_name))
        out.append(_rec(r.REC_TYPE_FROM, self.sender))
        if self.encoding:
            out.append(_attr(ATTR_ENCODING, self.encoding))
        out += self._recipient_records(self.recipients, 0)
        out.append(r.encode_record(r.REC_TYPE_MESG, b""))
        return b"".join(out)

    def extracted_records(self) -> bytes:
        """The records after the content: X, the extracted recipients, and E."""
        out = [r.encode_record(r.REC_TYPE_XTRA, b"")]
        out += self._recipient_records(self.extracted, len(self.recipients))
        out.append(r.encode_record(r.REC_TYPE_END, b""))
        return b"".join(out)

    def _recipient_records(self, rcpts: list[str], first: int) -> list[bytes]:
        notifies, orcpts = self.recipient_notifies(), self.recipient_orcpts()
        out = []
        for i, rcpt in enumerate(rcpts, first):
            if orcpts[i]:
                out.append(_attr(ATTR_ORCPT, orcpts[i]))
            if notifies[i]:
                out.append(_attr(ATTR_NOTIFY, str(notifies[i])))
            out.append(_rec(r.REC_TYPE_RCPT, rcpt))
        return out

    def to_records(self, arrival: float | None = None, line_limit: int = 2048) -> bytes:
        """The maildrop file form."""
        return b"".join([self.envelope_records(arrival),
                         *(r.text_records(line, line_limit) for line in self.lines),
                         self.extracted_records()])


def _rec(rtype: bytes, text: str) -> bytes:
    return r.encode_record(rtype, text.encode("utf-8", "surrogateescape"))


def _attr(name: str, value: str) -> bytes:
    return _rec(r.REC_TYPE_ATTR, f"{name}={value}")


def _text(payload: bytes) -> str:
    return payload.decode("utf-8", "surrogateescape")


ADDRESS_TYPES = (r.REC_TYPE_FROM, r.REC_TYPE_RCPT, r.REC_TYPE_ORCP)


def check_envelope_text(rtype: bytes, payload: bytes, name: str = "") -> None:
    """SubmissionError when an envelope value carries a null or a line break, or an
    address (sender, recipient, original recipient) is not one by the rule every
    way in applies (``rfc822.envelope_address``: no control character). ``name``
    is what the error calls the value (the record type's name when not given)."""
    label = name or r.REC_TYPES.get(rtype, "?")
    if b"\r" in payload or b"\n" in payload or b"\0" in payload:
        raise SubmissionError(f"null or line break in '{label}' record", os.EX_DATAERR)
    if rtype in ADDRESS_TYPES:
        text = _text(payload)
        if envelope_address(text) != text:
            raise SubmissionError(f"control character in '{label}' record", os.EX_DATAERR)


def check_envelope(sub: Submission, line_limit: int = 2048) -> None:
    """SubmissionError (EX_DATAERR) unless every envelope value of ``sub`` passes
    ``check_envelope_text`` and its record is at most max(line_limit, 2048) bytes: what
    ``parse_maildrop`` and a live submission take. A writer checks first, so that no
    file it completes is one pickup refuses (moved to corrupt/, the mail lost)."""
    limit = max(line_limit, 2048)
    fields = [("sender", r.REC_TYPE_FROM, sub.sender, ""),
              ("full_name", r.REC_TYPE_FULL, sub.full_name, ""),
              ("envid", r.REC_TYPE_ATTR, sub.envid, f"{ATTR_ENVID}=")]
    fields += [("rcpt", r.REC_TYPE_RCPT, a, "") for a in sub.recipients]
    fields += [("xrcpt", r.REC_TYPE_RCPT, a, "") for a in sub.extracted]
    fields += [("rcpt_orcpt", r.REC_TYPE_ATTR, o, f"{ATTR_ORCPT}=") for o in sub.dsn_orcpts]
    for name, rtype, value, prefix in fields:
        payload = value.encode("utf-8", "surrogateescape")
        check_envelope_text(rtype, payload, name)
        if len(prefix) + len(payload) > limit:
            raise SubmissionError(f"'{name}' value too long", os.EX_DATAERR)


REVERSE_JUMP_LIMIT = 10000  # Postfix's rec_goto: at most this many jumps back
BLOCK = 65536  # the most read at once
FIRST_READ = 512  # read after a jump; doubled on each read that follows on


class RecordFile:
    """The first ``size`` bytes of a record file, read at offsets: an open file (pread,
    no shared file position) or bytes in memory. Nothing at or past ``size`` is read,
    so a file that grows while it is read stays the size it had when it was opened."""

    def __init__(self, read: Callable[[int, int], bytes], size: int) -> None:
        self.read = read  # (length, offset) -> at most length bytes
        self.size = size

    @classmethod
    def of_bytes(cls, data: bytes) -> RecordFile:
        return cls(lambda length, offset: data[offset:offset + length], len(data))

    @classmethod
    def of_fd(cls, fd: int, size: int) -> RecordFile:
        return cls(lambda length, offset: os.pread(fd, length, offset), size)


def iter_following_pointers(src: RecordFile, max_length: int,
                            start: int = 0) -> Iterator[tuple[bytes, bytes, int]]:
    """(type, payload, offset of the next record) in logical order from ``start``:
    p records followed, w padding skipped, up to and with the E record.

    The file is read a block at a time, never whole. A file that cleanup wrote
    (legitimate forward pointers, and reverse jumps back from records appended at
    its end) passes each record once, so the records passed, pointer and padding
    records counted, never add up to more than the file's size: reading more than
    that, or more than REVERSE_JUMP_LIMIT jumps back (Postfix's rec_goto), is a
    pointer loop and raises ``SubmissionError("too many reverse jump records")``.
    A pointer past the end is ``bad pointer record``; a damaged record raises
    ``records.RecordError``. Memory is a block and one record; time and bytes read
    grow with the file's size only.
    """
    end = src.size
    buf = b""
    base = start  # file offset of buf[0]
    pos = 0  # where the next record starts in buf
    want = FIRST_READ
    passed = 0  # bytes of records passed, to be no more than the file holds
    reverse = 0
    while base + pos < end:
        try:
            rtype, payload, nxt = r.decode_record(buf, pos, max_length)
        except r.RecordError as e:
            at = base + len(buf)
            if not e.incomplete or at >= end:
                if e.incomplete:
                    raise r.RecordError(f"truncated record at offset {base + pos}") from None
                raise
            more = src.read(min(want, end - at), at)
            if not more:
                raise r.RecordError(f"truncated record at offset {base + pos}") from None
            buf = buf[pos:] + more
            base += pos
            pos = 0
            want = min(want * 2, BLOCK)
            continue
        here = base + pos
        passed += nxt - pos
        if passed > end:
            raise SubmissionError("too many reverse jump records")
        pos = nxt
        if rtype == r.REC_TYPE_PTR:
            digits = payload.strip() or b"0"
            if not digits.isdigit():
                raise SubmissionError("malformed pointer record")
            target = int(digits)
            if target == 0:  # a placeholder
                continue
            if target >= end:
                raise SubmissionError("bad pointer record")
            if target <= here:
                reverse += 1
                if reverse > REVERSE_JUMP_LIMIT:
                    raise SubmissionError("too many reverse jump records")
            if base <= target < base + len(buf):
                pos = target - base
            else:
                buf, base, pos, want = b"", target, 0, FIRST_READ
            continue
        if rtype == r.REC_TYPE_DTXT:
            continue
        yield rtype, payload, base + pos
        if rtype == r.REC_TYPE_END:
            return


def parse_maildrop(data: bytes | RecordFile, line_limit: int = 2048, requeued: bool = False,
                   size_limit: int = 0, lines: bool = True) -> Submission:
    """A maildrop file (postdrop format, or a whole queue file after postsuper -r).

    ``size_limit`` > 0 (message_size_limit): content of more bytes (a line's
    payloads with its LF, as ``content_pieces`` sends them) is refused, ``message
    file too big``. ``lines`` false: the content is checked and measured but not
    kept (``sub.lines`` stays empty); ``sub.content_offset`` says where
    ``content_pieces`` reads it from, ``sub.content_size`` how many bytes it gives."""
    src = RecordFile.of_bytes(data) if isinstance(data, bytes) else data
    max_length = max(line_limit, 2048)
    sub = Submission(sender="")
    senders = 0
    section = 0  # 0 envelope, 1 content, 2 extracted
    allowed = (ENVELOPE_TYPES, CONTENT_TYPES, EXTRACT_TYPES)
    partial: list[bytes] = []
    content_size = 0
    line_ended = True
    notify = 0
    orcpt = ""
    orig = ""
    ended = False
    try:
        for rtype, payload, nxt in iter_following_pointers(src, max_length):
            if rtype not in allowed[section]:
                raise SubmissionError(
                    f"unexpected or malformed record type {rtype[0]}")
            if section == 1:
                if rtype == r.REC_TYPE_XTRA:
                    if partial:
                        sub.lines.append(b"".join(partial))
                        partial = []
                    # a last line of L records gets its LF from content_pieces
                    sub.content_size = content_size + (not line_ended)
                    section = 2
                    continue
                content_size += len(payload) + (rtype == r.REC_TYPE_NORM)
                line_ended = rtype == r.REC_TYPE_NORM
                if size_limit and content_size > size_limit:
                    raise SubmissionError("message file too big")
                if not lines:
                    continue
                if rtype == r.REC_TYPE_CONT:
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
                sub.content_offset = nxt
                continue
            if rtype == r.REC_TYPE_END:
                ended = True
                break
            check_envelope_text(rtype, payload)
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
                sub.notifies.append(notify)
                sub.dsn_orcpts.append(orcpt)
                orig, notify, orcpt = "", 0, ""
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
                elif name == ATTR_ORCPT:
                    orcpt = value if valid_orcpt(value) else ""
                elif name == ATTR_ENVID:
                    sub.envid = value
                elif name == ATTR_RET:
                    sub.ret = int(value) if value.isdigit() else 0
                elif name == ATTR_ENCODING and value in ("7bit", "8bit", ""):
                    sub.encoding = value
                elif name == ATTR_RWR and value in ("local", "remote"):
                    sub.rewrite_context = value
                # other named attributes (client info of a requeued file) are dropped
            # L (a requeued file's content filter) is dropped too: pickup sends its own
    except r.RecordError as e:
        raise SubmissionError(str(e)) from None
    if not ended:
        raise SubmissionError("no end-of-message record")
    if senders == 0:
        raise SubmissionError("no envelope sender")
    if section != 2:
        raise SubmissionError("no message content")
    return sub


def content_pieces(src: RecordFile, offset: int, line_limit: int = 2048, size_limit: int = 0,
                   chunk: int = 65536) -> Iterator[bytes]:
    """The content that ``parse_maildrop`` found at ``offset`` (``sub.content_offset``),
    as LF-terminated text in pieces of about ``chunk`` bytes, read as it goes: what
    pickup streams to cleanup. The file is read again, so it is checked again the
    same way (record types, pointers, ``size_limit``): ``SubmissionError`` part way
    when it changed in between. A last line of L records without its N ends in LF."""
    max_length = max(line_limit, 2048)
    out: list[bytes] = []
    size = 0  # bytes in out
    total = 0
    ends = True  # the last record ended a line
    try:
        for rtype, payload, _nxt in iter_following_pointers(src, max_length, offset):
            if rtype == r.REC_TYPE_XTRA:
                if not ends:
                    out.append(b"\n")
                if out:
                    yield b"".join(out)
                return
            if rtype == r.REC_TYPE_NORM:
                out += (payload, b"\n")
                size += len(payload) + 1
                ends = True
            elif rtype == r.REC_TYPE_CONT:
                out.append(payload)
                size += len(payload)
                ends = False
            else:
                raise SubmissionError(f"unexpected or malformed record type {rtype[0]}")
            total += len(payload) + ends
            if size_limit and total > size_limit:
                raise SubmissionError("message file too big")
            if size >= chunk:
                yield b"".join(out)
                out = []
                size = 0
    except r.RecordError as e:
        raise SubmissionError(str(e)) from None
    raise SubmissionError("no message content")


class TooBig(Exception):
    """The content went over the size limit a ``MaildropFile`` was given."""


class MaildropFile:
    """A maildrop file written as the message comes: ``create`` it (mode 0644, so
    pickup leaves it alone), ``begin`` with the envelope, ``text`` for each piece
    of content, ``end`` with the extracted recipients, then ``complete`` it (0744
    after the fsync: pickup's to take) or ``discard`` it (unlinked). Memory is one
    buffer of at most BLOCK bytes, whatever the message's size; content over
    ``size_limit`` bytes (LFs counted, as pickup and cleanup count it) raises
    ``TooBig`` the moment it gets there. ``content_pieces`` reads the content back
    as text (a live submission sends it from here). postdrop, whose input is records
    already, writes them with ``records`` (the file's size, not the content's, bounded)
    and reads them back with ``check``. The file belongs to the caller."""

    def __init__(self, queue_id: str, path: str, fd: int, line_limit: int = 2048,
                 size_limit: int = 0) -> None:
        self.queue_id, self.path, self.fd = queue_id, path, fd
        self.line_limit = max(line_limit, 1)
        self.size_limit = size_limit
        self.content_offset = 0
        self.content_size = 0
        self.size = 0  # bytes written to the file
        self.buf = bytearray()
        self.line_open = False  # the last piece did not end its line

    @classmethod
    def create(cls, spool: queue.Spool, line_limit: int = 2048,
               size_limit: int = 0) -> MaildropFile:
        old = os.umask(0o022)
        try:
            queue_id, path, fd = spool.create_queue_file(queue.MAILDROP, queue.MAILDROP_WRITING)
        finally:
            os.umask(old)
        return cls(queue_id, path, fd, line_limit, size_limit)

    def _put(self, data: bytes) -> None:
        self.buf += data
        if len(self.buf) >= BLOCK:
            self.flush()

    def flush(self) -> None:
        view = memoryview(self.buf)
        while view:
            written = os.write(self.fd, view)
            view = view[written:]
        self.size += len(self.buf)
        view.release()
        self.buf.clear()

    def begin(self, sub: Submission) -> None:
        self._put(sub.envelope_records())
        self.content_offset = self.size + len(self.buf)

    def records(self, data: bytes) -> None:
        """Record bytes as they come (postdrop's input), unchecked until ``check``; more
        than ``size_limit`` bytes in the file raise ``TooBig`` (Postfix's postdrop limits
        the file's size to message_size_limit)."""
        if self.size_limit and self.size + len(self.buf) + len(data) > self.size_limit:
            raise TooBig("File too large")
        self._put(data)

    def check(self) -> Submission:
        """The file that ``records`` wrote, flushed and read as pickup reads it
        (``parse_maildrop``, content not kept; ``SubmissionError``): its envelope, and
        ``content_pieces`` reads its content."""
        self.flush()
        sub = parse_maildrop(RecordFile.of_fd(self.fd, self.size), self.line_limit,
                             size_limit=self.size_limit, lines=False)
        self.content_offset, self.content_size = sub.content_offset, sub.content_size
        return sub

    def text(self, piece: bytes, ends_line: bool = True) -> None:
        """One piece of content: a whole line (without its LF), or with ``ends_line``
        false the first part of a line that goes on in the next piece."""
        self.content_size += len(piece) + ends_line
        if self.size_limit and self.content_size > self.size_limit:
            raise TooBig("message file too big")
        while len(piece) > self.line_limit:
            self._put(r.encode_record(r.REC_TYPE_CONT, piece[:self.line_limit]))
            piece = piece[self.line_limit:]
        self._put(r.encode_record(r.REC_TYPE_NORM if ends_line else r.REC_TYPE_CONT, piece))
        self.line_open = not ends_line

    def end(self, sub: Submission) -> None:
        """The records after the content (``sub.extracted``), written out (no fsync)."""
        self._put(sub.extracted_records())
        self.flush()

    def content_pieces(self, chunk: int = 65536) -> Iterator[bytes]:
        """The content as LF-terminated text, about ``chunk`` bytes at a time."""
        return content_pieces(RecordFile.of_fd(self.fd, self.size), self.content_offset,
                              max(self.line_limit, 2048), 0, chunk)

    def complete(self) -> None:
        """Mark the file complete (0744) once it is on disk, and close it."""
        try:
            os.fchmod(self.fd, queue.MAILDROP_COMPLETE)
            os.fsync(self.fd)
        finally:
            os.close(self.fd)
            self.fd = -1

    def discard(self) -> None:
        """Close and remove the file (a refused or failed submission)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        try:
            os.unlink(self.path)
        except OSError:
            pass


def write_maildrop(spool: queue.Spool, sub: Submission, line_limit: int = 2048) -> str:
    """Write a complete maildrop file (0644 while written, 0744 after fsync)."""
    drop = MaildropFile.create(spool, line_limit)
    try:
        drop.begin(sub)
        for line in sub.lines:
            drop.text(line)
        drop.end(sub)
        drop.complete()
    except BaseException:
        drop.discard()
        raise
    return drop.queue_id
