"""Queue files: building them (cleanup) and reading them (qmgr, agents, tools).

``QueueFileBuilder`` assembles a whole queue file in memory in Postfix's record
order (C T A A [F] S A... per recipient [A] [O] R, M, N/L content lines, X,
extracted records, E) and computes the fixed-width C record's fields: content
size, data offset (first record after M), recipient count, qmgr flags, content
length, SMTPUTF8 flags. The caller writes the bytes, fchmods the file to
``queue.MODE_COMPLETE`` and fsyncs it before anyone is told it exists. A
writer that streams the content to the file itself takes the pieces instead:
``envelope()``, ``size_record()`` (fixed width: it may be written last, over
a placeholder of the same length) and ``trailer()``.

``read_envelope`` parses a file's envelope and extracted records into an
``Envelope`` (sender, recipients with the offsets of their R records and done
state, arrival time, named attributes, data offset, and the content filter:
the last ``L`` record outside the content, as Postfix's qmgr reads it). It refuses
(``QueueFileError``) a file with a malformed or unknown record, no final E, no
C record first, or no sender, and a number that is not plain decimal digits in
range: the T record must be ``seconds [microseconds]`` (so no NaN, infinity,
sign, exponent or ``_``), W, notify_flags and the C record's fields likewise.
``content_lines`` yields the message text, joining
L continuation records (and refuses content that is not N/L records up to X);
``content_records`` reads the same from an open file a block at a time,
``content_text`` the text itself in pieces, decoded in bulk, and
``read_envelope_fd`` the envelope without the content. ``mark_done`` rewrites one recipient's type byte
R -> D in place (no fsync needed: a crash may repeat a delivery, never lose one);
``clear_warning`` sets the W record (delay warning time) to 0 in place.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterator
from dataclasses import dataclass, field

from pymailsys.queue import records as r


class QueueFileError(Exception):
    """A queue file that is not complete or not well formed."""


@dataclass
class Recipient:
    address: str
    orig: str = ""
    offset: int = 0
    done: bool = False
    notify: int = 0
    dsn_orcpt: str = ""


@dataclass
class Envelope:
    queue_id: str
    path: str
    sizes: list[int]
    arrival: float
    sender: str
    full_name: str = ""
    recipients: list[Recipient] = field(default_factory=list)
    attrs: dict[str, str] = field(default_factory=dict)
    data_offset: int = 0
    xtra_offset: int = 0
    warn_time: int = 0
    warn_offset: int = 0  # where the W record starts (0: none)
    warn_length: int = 0  # its payload's length
    file_size: int = 0
    content_filter: str = ""  # transport[:nexthop] from the last L record outside the content
    # a slice (rcpt_limit): the offset of the first pending recipient left out (0: none),
    # and how many recipients are pending in the whole file
    rcpt_more: int = 0
    rcpt_pending: int = 0

    @property
    def content_size(self) -> int:
        return self.sizes[0] if self.sizes else 0

    @property
    def smtputf8(self) -> int:
        """The SMTPUTF8 flags of the size record (``records.SMTPUTF8_*``)."""
        return self.sizes[5] if len(self.sizes) >= 6 else 0

    @property
    def message_size(self) -> int:
        """The size Postfix reports (size=, mailq): content length if known."""
        if len(self.sizes) >= 5 and self.sizes[4] > 0:
            return self.sizes[4]
        return self.content_size

    def pending(self) -> list[Recipient]:
        return [rc for rc in self.recipients if not rc.done]


_MAX_NUMBER = 1 << 62  # beyond any time, size or flag word a queue file holds


def number(text: bytes | str, what: str) -> int:
    """A queue file's decimal number: ASCII digits only, bounded; QueueFileError otherwise."""
    raw = text.encode("utf-8", "surrogateescape") if isinstance(text, str) else text
    raw = raw.strip(b" ")
    if not raw or not raw.isdigit() or len(raw) > 19 or (value := int(raw)) > _MAX_NUMBER:
        raise QueueFileError(f"bad {what}: {raw[:40]!r}")
    return value


def _arrival(payload: bytes) -> float:
    parts = payload.split()
    if len(parts) == 2:  # cleanup's: seconds and microseconds, checked as number() would
        sec, usec = parts
        if sec.isdigit() and usec.isdigit() and len(sec) <= 18 and len(usec) <= 6:
            return int(sec) + int(usec) / 1e6
    if not 1 <= len(parts) <= 2:
        raise QueueFileError(f"bad time record: {payload[:40]!r}")
    seconds = number(parts[0], "time record")
    micros = number(parts[1], "time record") if len(parts) > 1 else 0
    if micros >= 1_000_000:
        raise QueueFileError(f"bad time record: {payload[:40]!r}")
    return seconds + micros / 1e6


def _attr_record(name: str, value: str) -> bytes:
    payload = f"{name}={value}".encode("utf-8", "surrogateescape")
    n = len(payload)
    return r.REC_TYPE_ATTR + (r.SHORT_LENGTHS[n] if n < 128 else r.encode_varint(n)) + payload


_ATTR_HEADS = [r.REC_TYPE_ATTR + length for length in r.SHORT_LENGTHS]
# the empty M, X and E records every file has
_MESG_RECORD = r.encode_record(r.REC_TYPE_MESG, b"")
_XTRA_RECORD = r.encode_record(r.REC_TYPE_XTRA, b"")
_END_RECORD = r.encode_record(r.REC_TYPE_END, b"")


class QueueFileBuilder:
    """Collect envelope, content and extracted records; ``build`` returns the bytes."""

    def __init__(self, arrival: float) -> None:
        self.arrival = arrival
        self._head: list[bytes] = []
        self._content: list[bytes] = []
        self._extracted: list[bytes] = []
        self._rcpt_count = 0
        self._rcpt_records: list[int] = []  # indexes of the envelope's R records in _head
        self._content_length = 0
        self.qmgr_flags = 0
        self.smtputf8 = 0
        sec = int(arrival)
        usec = int((arrival - sec) * 1_000_000)
        self._head.append(r.encode_record(r.REC_TYPE_TIME, b"%d %d" % (sec, usec)))
        self.attr("create_time", str(sec))

    def attr(self, name: str, value: str) -> None:
        self._head.append(_attr_record(name, value))

    def attrs(self, items: list[tuple[str, str]]) -> None:
        """A records for (name, value) pairs, in order: ``attr`` for many at once."""
        append = self._head.append
        heads = _ATTR_HEADS
        for name, value in items:
            payload = f"{name}={value}".encode("utf-8", "surrogateescape")
            n = len(payload)
            append(heads[n] + payload if n < 128
                   else r.REC_TYPE_ATTR + r.encode_varint(n) + payload)

    def full_name(self, name: str) -> None:
        self._head.append(r.encode_record(r.REC_TYPE_FULL, name.encode("utf-8", "surrogateescape")))

    def sender(self, address: str) -> None:
        self._head.append(r.encode_record(r.REC_TYPE_FROM, address.encode("utf-8", "surrogateescape")))

    def recipient(self, address: str, orig: str = "", notify: int = 0, dsn_orcpt: str = "",
                  extracted: bool = False) -> None:
        """One recipient: in the envelope, or (``extracted``) after the content."""
        out = self._extracted if extracted else self._head
        if dsn_orcpt:
            out.append(_attr_record("dsn_orig_rcpt", dsn_orcpt))
        if notify:
            out.append(_attr_record("notify_flags", str(notify)))
        if orig:
            out.append(r.encode_record(r.REC_TYPE_ORCP, orig.encode("utf-8", "surrogateescape")))
        if not extracted:
            self._rcpt_records.append(len(self._head))
        out.append(r.encode_record(r.REC_TYPE_RCPT, address.encode("utf-8", "surrogateescape")))
        self._rcpt_count += 1

    def recipient_offsets(self) -> list[int]:
        """The file offsets of the envelope's R records (to mark them done in place)."""
        offsets = []
        position = r.SIZE_RECORD_LENGTH + 2
        wanted = iter(self._rcpt_records)
        next_index = next(wanted, -1)
        for i, record in enumerate(self._head):
            if i == next_index:
                offsets.append(position)
                next_index = next(wanted, -1)
            position += len(record)
        return offsets

    def line(self, text: bytes, limit: int = 2048) -> None:
        """One line of message content, without its line terminator."""
        self._content.append(r.text_records(text, limit))
        self._content_length += len(text) + 2

    def record(self, rec_type: bytes, payload: bytes) -> None:
        """Any other envelope record, in call order (e.g. W, V, pre-encoded by the caller)."""
        self._head.append(r.encode_record(rec_type, payload))

    def content_filter(self, value: str, extracted: bool = False, first: bool = False) -> None:
        """An L record: main.cf's content_filter in the envelope (after the time records,
        where Postfix's smtpd puts it, or ``first``, before them, where its pickup does),
        or an access or header/body checks FILTER action (``extracted``) after the
        content, where it wins. Call it before any recipient."""
        record = r.encode_record(r.REC_TYPE_FILT, value.encode("utf-8", "surrogateescape"))
        if extracted:
            self._extracted.append(record)
        elif first:
            assert not self._rcpt_records
            self._head.insert(0, record)
        else:
            self._head.append(record)

    def extracted_attr(self, name: str, value: str) -> None:
        self._extracted.append(r.encode_record(r.REC_TYPE_ATTR, f"{name}={value}".encode()))

    def build(self) -> bytes:
        return b"".join(self.parts())

    def envelope(self) -> bytes:
        """The records after the C record, up to and including M (the data offset follows)."""
        return b"".join(self._head) + _MESG_RECORD

    def size_record(self, envelope: bytes, content_size: int, content_length: int) -> bytes:
        """The fixed-width C record for content written elsewhere (a streaming writer)."""
        data_offset = r.SIZE_RECORD_LENGTH + 2 + len(envelope)
        size_rec = r.message_size_record(content_size, data_offset, self._rcpt_count,
                                         self.qmgr_flags, content_length, self.smtputf8)
        assert len(size_rec) == r.SIZE_RECORD_LENGTH + 2
        return size_rec

    def trailer(self) -> bytes:
        """X, the extracted records, E: what follows the content."""
        return _XTRA_RECORD + b"".join(self._extracted) + _END_RECORD

    def parts(self) -> list[bytes]:
        """The file as a list of byte strings (for os.writev: the content is not copied)."""
        envelope = self.envelope()
        size_rec = self.size_record(envelope, sum(map(len, self._content)), self._content_length)
        return [size_rec, envelope, *self._content, self.trailer()]


# The envelope reader's record types, as the numbers that indexing bytes gives.
_SIZE, _TIME, _FULL, _FROM, _FILT, _WARN = (t[0] for t in (
    r.REC_TYPE_SIZE, r.REC_TYPE_TIME, r.REC_TYPE_FULL, r.REC_TYPE_FROM, r.REC_TYPE_FILT,
    r.REC_TYPE_WARN))
_ATTR, _ORCP, _RCPT, _DONE, _DRCP = (t[0] for t in (
    r.REC_TYPE_ATTR, r.REC_TYPE_ORCP, r.REC_TYPE_RCPT, r.REC_TYPE_DONE, r.REC_TYPE_DRCP))
_MESG, _END = r.REC_TYPE_MESG[0], r.REC_TYPE_END[0]
_KNOWN_TYPES = frozenset(rtype[0] for rtype in r.REC_TYPES)
_NO_EXTRACTED = r.REC_TYPE_XTRA + b"\0" + r.REC_TYPE_END + b"\0"  # X, E: most files' end


def _read_records(data: bytes, offset: int, env: Envelope, last: int, rcpt_from: int,
                  rcpt_limit: int, orig: str = "", notify: int = 0,
                  orcpt: str = "") -> tuple[int, str, int, str, bool]:
    """Read records into ``env`` from ``offset`` up to and including the first of type
    ``last`` (M: the envelope; E: the extracted records): the offset of that record (-1
    when the data ends first), the recipient's records read after the last recipient
    (orig, notify, orcpt: they apply to the first one of the next part), and whether
    a sender record was read.

    One loop, no generator or call per record (they were most of the cost of a file's
    reading: ``tests/bench/qmgr_functions.py``): the common record (a known type, a
    one-byte length, whole before the end) is decoded inline, every other one by
    ``records.decode_record``, so the same records pass and the same errors
    (``RecordError``) stop the reading as ``records.iter_records``. The A, O and R/D/``/``
    records make up recipients, in both parts: dsn_orig_rcpt, notify_flags and O apply
    to the next recipient, other attributes to the message. L is the content filter in both; T, F, S and W count
    only in the envelope; other records are passed over.

    ``rcpt_limit`` > 0 takes a slice of the recipients: only pending ones whose R
    record is at ``rcpt_from`` or after, at most ``rcpt_limit``; every pending one is
    counted (``rcpt_pending``) and ``rcpt_more`` is the first left out."""
    end = len(data)
    known = _KNOWN_TYPES
    attrs = env.attrs
    recipients = env.recipients
    envelope = last == _MESG
    have_sender = False
    while offset < end:
        rtype = data[offset]
        if rtype in known and offset + 1 < end and (length := data[offset + 1]) < 0x80 \
                and (nxt := offset + 2 + length) <= end:
            payload = data[offset + 2:nxt]
        else:
            rtype_bytes, payload, nxt = r.decode_record(data, offset)
            rtype = rtype_bytes[0]
        if rtype == _ATTR:
            name, _, value = payload.decode("utf-8", "surrogateescape").partition("=")
            if name == "dsn_orig_rcpt":
                orcpt = value
            elif name == "notify_flags":
                notify = number(value, "notify_flags") if value else 0
            else:
                attrs[name] = value
        elif rtype == _RCPT or rtype == _DONE or rtype == _DRCP:
            pending = rtype == _RCPT
            env.rcpt_pending += pending
            if rcpt_limit <= 0 or (pending and offset >= rcpt_from
                                   and len(recipients) < rcpt_limit):
                recipients.append(Recipient(payload.decode("utf-8", "surrogateescape"), orig,
                                            offset, not pending, notify, orcpt))
            elif pending and offset >= rcpt_from:  # past the slice's limit
                env.rcpt_more = env.rcpt_more or offset
            orig, notify, orcpt = "", 0, ""
        elif rtype == _ORCP:
            orig = payload.decode("utf-8", "surrogateescape")
        elif rtype == last:
            return offset, orig, notify, orcpt, have_sender
        elif rtype == _FILT:
            env.content_filter = payload.decode("utf-8", "surrogateescape")
        elif not envelope:
            pass
        elif rtype == _TIME:
            env.arrival = _arrival(payload)
        elif rtype == _FULL:
            env.full_name = payload.decode("utf-8", "surrogateescape")
        elif rtype == _FROM:
            env.sender = payload.decode("utf-8", "surrogateescape")
            have_sender = True
        elif rtype == _WARN:
            env.warn_time = number(payload, "warning time") if payload.strip() else 0
            env.warn_offset, env.warn_length = offset, len(payload)
        offset = nxt
    return -1, orig, notify, orcpt, have_sender


def read_envelope_bytes(data: bytes, queue_id: str = "", path: str = "",
                        rcpt_from: int = 0, rcpt_limit: int = 0) -> Envelope:
    """Parse envelope and extracted records of a whole queue file held in memory.

    ``rcpt_limit`` > 0 reads a slice of the recipients (qmgr with a message of many):
    only pending ones whose R record is at ``rcpt_from`` or after, at most
    ``rcpt_limit``; ``rcpt_more`` says where the next slice starts."""
    end = len(data)
    env = Envelope(queue_id, path, [], 0.0, "")
    env.file_size = end
    try:
        if not end:
            raise QueueFileError("no message content record")
        if data[0] == _SIZE and end > 1 and (length := data[1]) < 0x80 and 2 + length <= end:
            payload, offset = data[2:2 + length], 2 + length
        else:
            rtype, payload, offset = r.decode_record(data, 0)
            if rtype != r.REC_TYPE_SIZE:
                raise QueueFileError("first record is not a size record")
        env.sizes = sizes = r.parse_size_record(payload)
        offset, orig, notify, orcpt, have_sender = _read_records(
            data, offset, env, _MESG, rcpt_from, rcpt_limit)
        if offset < 0:
            raise QueueFileError("no message content record")
        env.data_offset = offset + 2
        if len(sizes) >= 2 and sizes[1] > 0:
            env.data_offset = sizes[1]
        xtra = env.data_offset + sizes[0]
        while data[xtra:xtra + 1] in (r.REC_TYPE_PTR, r.REC_TYPE_DTXT):
            xtra = r.decode_record(data, xtra)[2]
        if xtra > end or data[xtra:xtra + 1] != r.REC_TYPE_XTRA:
            raise QueueFileError("content size does not point at the extracted records")
        env.xtra_offset = xtra
        if data[xtra:xtra + 4] != _NO_EXTRACTED and _read_records(
                data, xtra, env, _END, rcpt_from, rcpt_limit, orig, notify, orcpt)[0] < 0:
            raise QueueFileError("no end-of-message record")
    except (r.RecordError, ValueError, IndexError) as e:
        raise QueueFileError(str(e)) from None
    if not have_sender:
        raise QueueFileError("no sender record")
    return env


def read_envelope(path: str, queue_id: str | None = None) -> Envelope:
    with open(path, "rb") as f:
        data = f.read()
    return read_envelope_bytes(data, queue_id or os.path.basename(path), path)


SMALL_FILE = 32768  # read whole; larger files are mapped


def read_envelope_fd(fd: int, queue_id: str = "", path: str = "",
                     rcpt_from: int = 0, rcpt_limit: int = 0) -> Envelope:
    """``read_envelope_bytes`` on an open file without reading its content.

    A file of less than ``SMALL_FILE`` bytes (most mail) is read whole with one
    pread; a larger one is mapped, and only the pages of the envelope and
    extracted records are touched: memory does not grow with the message.
    """
    head = os.pread(fd, SMALL_FILE, 0)
    if len(head) < SMALL_FILE:
        return read_envelope_bytes(head, queue_id, path, rcpt_from, rcpt_limit)
    size = os.fstat(fd).st_size
    with mmap.mmap(fd, size, access=mmap.ACCESS_READ) as data:
        return read_envelope_bytes(data, queue_id, path,  # type: ignore[arg-type]
                                   rcpt_from, rcpt_limit)


def content_records(fd: int, offset: int, block: int = 65536,
                    head: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
    """(type, payload) of the N and L content records from offset up to the X record,
    read a block at a time with pread (no shared file position), so memory stays
    bounded whatever the message size. ``head``: the file's first bytes from offset,
    already read (not read again). p and w records are skipped; ``QueueFileError``
    as ``content_lines``."""
    buf = head
    pos = 0
    at = offset + len(head)  # file offset of buf's end
    norm, cont, xtra = r.REC_TYPE_NORM, r.REC_TYPE_CONT, r.REC_TYPE_XTRA
    n_byte, l_byte = norm[0], cont[0]
    while True:
        # the common record, an N or L record shorter than 128 bytes (a one-byte
        # length) that lies whole in buf, decoded inline; everything else below
        if pos + 1 < len(buf):
            length = buf[pos + 1]
            end = pos + 2 + length
            if length < 0x80 and end <= len(buf) and (buf[pos] == n_byte or buf[pos] == l_byte):
                yield (norm if buf[pos] == n_byte else cont), buf[pos + 2:end]
                pos = end
                continue
        try:
            rtype, payload, nxt = r.decode_record(buf, pos)
        except r.RecordError as e:
            if not e.incomplete:
                raise QueueFileError(str(e)) from None
            buf, at = _read_on(fd, buf, pos, at, block)
            pos = 0
            continue
        pos = nxt
        if rtype == norm or rtype == cont:
            yield rtype, payload
        elif rtype == xtra:
            return
        elif rtype != r.REC_TYPE_PTR and rtype != r.REC_TYPE_DTXT:
            raise QueueFileError(f"unexpected record type {rtype!r} in message content")


def _read_on(fd: int, buf: bytes, pos: int, at: int, size: int) -> tuple[bytes, int]:
    """A record at buf[pos:] goes on past ``at`` (the file offset of buf's end): that rest
    with the next ``size`` bytes read at ``at``, and the new end's offset.
    ``QueueFileError`` when the file ends first (content without an X record); called
    while a ``RecordError`` is handled, which the caller's error does not chain to."""
    more = os.pread(fd, size, at)
    if not more:
        if pos >= len(buf):
            raise QueueFileError(
                "message content ends without an extracted-information record") from None
        raise QueueFileError(f"truncated record at offset {at - (len(buf) - pos)}") from None
    return buf[pos:] + more, at + len(more)


RUN = 16  # records of one length in a row that make content_text try a bulk decode
SPAN = 4096  # bytes of records content_text decodes one at a time between such tries
XTRA_EMPTY = r.REC_TYPE_XTRA + b"\x00"  # the X record that ends the content, as written


def _equal_records(buf: bytes, pos: int, end: int, step: int) -> int:
    """How many records from pos on, whole before end, repeat the record head at pos
    (type byte and a one-byte length: each is ``step`` bytes long); 0 when fewer than RUN.
    The heads are checked at every step, so the count is exact whatever the payloads;
    the RUNth record's head is looked at first (most tries fail there)."""
    many = (end - pos) // step
    if many < RUN:
        return 0
    at = pos + (RUN - 1) * step
    if buf[at] != buf[pos] or buf[at + 1] != buf[pos + 1]:
        return 0
    stop = pos + many * step
    kinds, lengths = buf[pos:stop:step], buf[pos + 1:stop:step]
    count = many - max(len(kinds.lstrip(kinds[:1])), len(lengths.lstrip(lengths[:1])))
    return count if count >= RUN else 0


def content_text(fd: int, offset: int, chunk: int = 65536, head: bytes = b"") -> Iterator[bytes]:
    """The message content from offset up to the X record as text, lines ending in LF,
    in pieces of about ``chunk`` bytes that end at a line end or after an L record's
    piece; content that ends inside a line still ends in LF. Read ``chunk`` bytes at a
    time with pread (after ``head``, the first bytes from offset when the caller has
    read them already), so memory stays bounded as with ``content_records``, and
    refused the same way (``QueueFileError``).

    Most records are lines: N records with a one- or two-byte length. Lines of one
    length under 128 in a row (base64, fixed-width text) are found by looking at every
    record head at once (``_equal_records``, tried where two lines of one length follow
    each other) and decoded with bytearray slice operations; other N records in a tight
    loop, joined once; the usual X record after them (``X``, empty) is known by its two
    bytes; every other record (L, p, w, another X, or a longer length) goes through
    ``records.decode_record`` and its checks. (``tests/bench/large_message_paths.py``.)
    """
    n_byte = r.REC_TYPE_NORM[0]
    norm, cont, xtra = r.REC_TYPE_NORM, r.REC_TYPE_CONT, r.REC_TYPE_XTRA
    buf = head
    pos = 0
    at = offset + len(head)  # file offset of buf's end
    out: list[bytes | bytearray] = []  # text not yet handed out
    size = 0
    ends = True  # the last record ended a line
    while True:
        end = len(buf)
        last = -1  # the length of the line before, when a run of that length may follow
        while pos + 1 < end and buf[pos] == n_byte:
            step = buf[pos + 1] + 2
            count = _equal_records(buf, pos, end, step) if step < 0x82 else 0
            if count:  # T L payload, ...: T -> LF, L dropped, then the first LF to the end
                stop = pos + count * step
                text = bytearray(buf[pos:stop])
                text[::step] = b"\n" * count
                del text[1::step]
                del text[0]
                text.append(10)
                out.append(text)
                size += stop - pos
                pos = stop
            else:
                lines: list[bytes] = []
                append = lines.append
                start = pos
                span = min(end, pos + SPAN)
                try:  # an IndexError: the record at pos goes on in the next block
                    while buf[pos] == n_byte:
                        length = buf[pos + 1]
                        if length < 0x80:
                            if length == last:  # two of one length: a run may start here
                                break
                            last = length
                            nxt = pos + 2 + length
                        elif buf[pos + 2] < 0x80:  # two length bytes: lines of 128 to 16383
                            length = (length & 0x7F) | buf[pos + 2] << 7
                            nxt = pos + 3 + length
                        else:
                            break
                        if nxt > span:
                            break
                        append(buf[nxt - length:nxt])
                        pos = nxt
                except IndexError:
                    pass
                last = -1  # tried at pos (above), or not a run: not again before the next pair
                if not lines:  # the record at pos goes on in the next block
                    break
                append(b"")
                out.append(b"\n".join(lines))
                size += pos - start
            ends = True
            if size >= chunk:
                yield b"".join(out)
                out = []
                size = 0
        if buf[pos:pos + 2] == XTRA_EMPTY:  # the X record after the text, as cleanup writes it
            if not ends:
                out.append(b"\n")
            if out:
                yield b"".join(out)
            return
        try:
            rtype, payload, nxt = r.decode_record(buf, pos)
        except r.RecordError as e:
            if not e.incomplete:
                raise QueueFileError(str(e)) from None
            buf, at = _read_on(fd, buf, pos, at, chunk)
            pos = 0
            continue
        pos = nxt
        if rtype == norm:
            out += (payload, b"\n")
            size += len(payload) + 1
            ends = True
        elif rtype == cont:
            out.append(payload)
            size += len(payload)
            ends = False
        elif rtype == xtra:
            if not ends:
                out.append(b"\n")
            if out:
                yield b"".join(out)
            return
        elif rtype != r.REC_TYPE_PTR and rtype != r.REC_TYPE_DTXT:
            raise QueueFileError(f"unexpected record type {rtype!r} in message content")
        if size >= chunk:
            yield b"".join(out)
            out = []
            size = 0


def content_lines(data: bytes | memoryview, offset: int = 0) -> Iterator[bytes]:
    """The message lines (no terminators), from the records at offset up to the X record.

    offset is the data offset (``Envelope.data_offset``), or 0 when data starts
    there. L records are joined to the N record that ends them; p and w records
    are skipped. ``QueueFileError`` for any other record, a damaged record, or
    content that ends without an X record.
    """
    partial: list[bytes] = []
    try:
        for _offset, rtype, payload in r.iter_records(data, offset):
            if rtype == r.REC_TYPE_NORM:
                if partial:
                    partial.append(payload)
                    yield b"".join(partial)
                    partial = []
                else:
                    yield payload
            elif rtype == r.REC_TYPE_CONT:
                partial.append(payload)
            elif rtype == r.REC_TYPE_XTRA:
                break
            elif rtype == r.REC_TYPE_PTR or rtype == r.REC_TYPE_DTXT:
                continue
            else:
                raise QueueFileError(f"unexpected record type {rtype!r} in message content")
        else:
            raise QueueFileError("message content ends without an extracted-information record")
    except r.RecordError as e:
        raise QueueFileError(str(e)) from None
    if partial:
        yield b"".join(partial)


def mark_done(fd: int, offset: int) -> None:
    """Mark the recipient whose R record starts at offset as done."""
    os.pwrite(fd, r.REC_TYPE_DONE, offset)


def clear_warning(fd: int, env: Envelope) -> None:
    """Set the delay warning time (W record) to 0 in place, as Postfix's qmgr does once
    the warning is sent: it is sent once per message."""
    if env.warn_offset and env.warn_length:
        payload = f"{0:{env.warn_length}d}".encode()
        os.pwrite(fd, r.encode_record(r.REC_TYPE_WARN, payload), env.warn_offset)
    env.warn_time = 0
