"""cleanup's message content work: the primary header block, added headers, records.

Takes the message content (header, empty line, body; lines end in LF) in
pieces of any size as it arrives (``ContentPass``), the Received: header lines
this cleanup prepends, and the per-message facts (``HeaderJob``); gives back
the queue-file content records (N/L records, Postfix's record framing, long
lines split at line_length_limit) as soon as they are known, and a
``HeaderOutcome``: the Received: count, the ``message-id=`` log values, the
lines that were added, the content length.

What it does, as Postfix 3.7's cleanup_message.c does:

* the primary header block is the lines from the top up to the first empty
  line or the first line that is neither a header (``name:``) nor a
  continuation of one; the body starts there, untouched;
* a header longer than header_size_limit is truncated (the lines, or pieces
  of line_length_limit, that start past the limit are dropped); each header
  is passed on as soon as the next line shows it complete, so only one
  header is ever held;
* with cleanup_replace_stray_cr_lf each stray CR becomes a space;
* every Received: header is counted (ours first) before any is dropped;
* headers named in message_drop_headers are removed (case-insensitive);
* with a ``header_rewrite`` context, each address in an address header
  (``ADDRESS_HEADERS``) is rewritten as an envelope address
  (``pymailsys.address.rewrite.rewrite_header_value``), then passed to
  ``header_map`` (canonical mapping, masquerading: ``SENDER_HEADERS`` as
  sender addresses, the others as recipients); when one changed, the header
  is re-emitted as ``Name: addr,`` one address per line, joined while the line
  stays under 70 columns, continuation lines starting with a TAB
  (cleanup_fold_header); otherwise, or when unparsable, it is kept as it was;
  with a ``header_cache`` (given only while that rewriting reads no table, so
  that its result depends on the header alone) a header of at most
  CACHED_HEADER_BYTES is looked up there first and its result kept (at most
  CACHED_HEADERS: the cache is emptied when full), since the same From: and
  To: come again and again;
* with ``detect_8bit`` (detect_8bit_encoding_header, for a message not
  declared 8-bit) a Content-Transfer-Encoding: 8bit or binary header is
  reported (``says_8bit``): in the primary header block, and in MIME part and
  attached-message header blocks (without checks, the MIME structure is then
  followed only when the primary header block announced parts or an attached
  message, and only until such a header is found; the body goes in bulk
  between lines that start with "--");
* every Message-Id: value, up to MESSAGE_IDS_KEPT of them, is reported for the
  ``QUEUEID: message-id=...`` log (the rest only counted);
* with ``add_missing`` (local submissions, or always_add_missing_headers) the
  missing ``(Resent-)Message-Id: <YYYYMMDDhhmmss.QUEUEID@myhostname>`` (UTC of
  file creation; long queue IDs ``<QUEUEID@myhostname>``), ``(Resent-)Date:``
  (``pymailsys.mail_date``: local time) and ``(Resent-)From:`` are appended after the
  last header, the Resent- forms once a Resent- header was seen;
  ``message-id=<>`` is reported when no Message-Id: remains known.

Refuses nothing itself: the caller compares ``hop_count`` with hopcount_limit
and the file size with message_size_limit. Pure: no I/O, no configuration.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from pymailsys.address.rewrite import RewriteContext, rewrite_header_value
from pymailsys.content import checks as hbc
from pymailsys.content.mime import BODY, MimeState
from pymailsys.queue import records as r
from pymailsys.rfc822 import quote_822_local

_HEADER_NAME = re.compile(rb"([!-9;-~]+)[ \t]*:")
_RESENT = frozenset(b"resent-" + n for n in (b"bcc", b"cc", b"date", b"from", b"message-id",
                                            b"reply-to", b"sender", b"to"))
# The header names whose presence the end of the header block asks about (add_missing,
# message-id=<>): the only names a ContentPass remembers, as Postfix's cleanup keeps a
# fixed bitmap of the header types it knows, so that memory never depends on the names
# a client sends.
_REMEMBERED = frozenset((b"message-id", b"resent-message-id", b"date", b"resent-date",
                         b"from", b"resent-from"))
# The Message-Id: values kept for the ``message-id=`` log lines; a message that repeats
# the header more often has the rest counted (``HeaderOutcome.message_ids_dropped``).
MESSAGE_IDS_KEPT = 16
# The tables of a MIME walk that checks nothing (ContentPass.scan_only).
_NO_TABLES = hbc.CheckTables({hbc.PRIMARY: None, hbc.MULTIPART: None, hbc.NESTED: None}, None, 0)
# One-byte record headers for short N records: b"N" + length.
_N_HEAD = [r.REC_TYPE_NORM + length for length in r.SHORT_LENGTHS]
_PHRASE_SPECIALS = frozenset('()<>@,;:\\".[]')
# The headers whose addresses cleanup rewrites (Postfix's header_opts.c: HDR_OPT_SENDER
# and HDR_OPT_RECIP).
ADDRESS_HEADERS = frozenset(n.encode() for n in (
    "from", "sender", "reply-to", "to", "cc", "bcc", "errors-to", "return-receipt-to",
    "resent-from", "resent-sender", "resent-to", "resent-cc", "resent-bcc", "resent-reply-to",
    "disposition-notification-to", "mail-followup-to", "return-path", "apparently-to"))
# Of those, the ones canonical mapping and masquerading treat as sender addresses
# (header_sender); the others are header_recipient.
SENDER_HEADERS = frozenset(n.encode() for n in (
    "from", "sender", "reply-to", "errors-to", "return-receipt-to", "resent-from",
    "resent-sender", "disposition-notification-to", "mail-followup-to", "return-path"))


def phrase(full_name: str) -> str:
    """A full name as an RFC 5322 phrase (quoted when needed, RFC 2047 when not ASCII)."""
    text = " ".join(full_name.replace("\x7f", " ").translate(
        {c: " " for c in range(32)}).split())
    if not text:
        return ""
    if not text.isascii():
        raw = text.encode("utf-8", "surrogateescape")
        enc = "".join(chr(b) if (48 <= b <= 57 or 65 <= b <= 90 or 97 <= b <= 122) else
                      "_" if b == 32 else f"={b:02X}" for b in raw)
        return f"=?utf-8?q?{enc}?="
    if _PHRASE_SPECIALS.intersection(text):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return text


def from_header(resent: str, sender: str, full_name: str, hfrom_standard: bool = True) -> list[str]:
    """The added From: header, folded as cleanup_fold_header does."""
    addr = quote_822_local(sender or "MAILER-DAEMON")
    name = phrase(full_name) if sender else ""
    if not name:
        return [f"{resent}From: {addr}"]
    if hfrom_standard:
        parts = [f"{resent}From: {name}", f"<{addr}>"]
    else:
        parts = [f"{resent}From: {addr}", f"({name})"]
    if len(parts[0]) + 1 + len(parts[1]) < 70:
        return [parts[0] + " " + parts[1]]
    return [parts[0], "\t" + parts[1]]


# An address header's lines -> its rewritten lines (None: kept as it was).
HeaderCache = dict[tuple[bytes, ...], list[bytes] | None]
CACHED_HEADERS = 256  # a HeaderCache is emptied when it holds this many
CACHED_HEADER_BYTES = 512  # longer headers are rewritten each time, never kept


@dataclass
class HeaderJob:
    """Per-message facts the header pass needs."""

    queue_id: str
    myhostname: str
    created: float  # queue file creation time (Message-Id)
    date: str  # mail_date of the arrival time (Date:)
    sender: str  # rewritten envelope sender, "" for <>
    full_name: str = ""
    add_missing: bool = False
    long_queue_ids: bool = False
    hfrom_standard: bool = True
    # The header rewriting context: None leaves address headers untouched.
    header_rewrite: RewriteContext | None = None
    # With it, canonical mapping and masquerading: (address, is a sender header) -> address.
    header_map: Callable[[str, bool], str] | None = None
    # Rewritten address headers kept across messages (``HeaderCache``); None: none kept.
    header_cache: HeaderCache | None = None


@dataclass
class HeaderOutcome:
    content_length: int = 0  # sum over lines of len(line) + 2 (C record field 5)
    hop_count: int = 0
    message_ids: list[str] = field(default_factory=list)  # values to log, in order
    message_ids_dropped: int = 0  # Message-Id: values past MESSAGE_IDS_KEPT, not kept
    added: list[str] = field(default_factory=list)  # header lines added (not Received)
    utf8_headers: bool = False  # a header of the message has non-ASCII bytes
    says_8bit: bool = False  # a Content-Transfer-Encoding: 8bit or binary header (detect_8bit)


def encode_lines(lines: list[bytes], limit: int) -> tuple[bytes, int]:
    """N/L records for lines without terminators: (records, content_length share)."""
    lengths = list(map(len, lines))
    if lengths and max(lengths) < 128:  # the usual text: heads and lines interleaved, in C
        records = lines * 2
        records[::2] = map(_N_HEAD.__getitem__, lengths)
        records[1::2] = lines
        return b"".join(records), sum(lengths) + 2 * len(lines)
    out: list[bytes] = []
    append = out.append
    head = _N_HEAD
    total = 0
    for line in lines:
        n = len(line)
        total += n
        if n < 128:
            append(head[n])
            append(line)
        else:
            append(r.text_records(line, limit))
    return b"".join(out), total + 2 * len(lines)


RUN = 16  # lines of one length in a row that encode_text encodes in bulk
SPAN = 65536  # bytes of lines encode_text encodes one at a time between tries
BULK_AT = 16384  # body text from which ContentPass looks for such runs at all


def _equal_lines(data: bytes, start: int, stop: int, length: int) -> tuple[bytes, int]:
    """The N records of the lines from start on, in data[start:stop], that are ``length``
    bytes long (each ends in LF), and how many lines that is, when RUN or more are;
    else (b"", 0).

    A stride slice shows the LF where each line of that length ends; the records are
    then made with one ``replace`` (each LF becomes the next record's head), whose
    output length tells whether there was any other LF (a shorter line) in between:
    then the first half is tried, and so on. (bytes.count of one byte
    is four times slower than replace here; see tests/bench/large_message_paths.py.)
    """
    step = length + 1
    many = (stop - start) // step
    if many < RUN or data[start + length:start + RUN * step:step] != b"\n" * RUN:
        return b"", 0
    strided = data[start + length:start + many * step:step]
    count = many - len(strided.lstrip(b"\n"))  # lines whose LF is where it should be
    head = r.REC_TYPE_NORM + r.encode_varint(length)
    while count >= RUN:
        end = start + count * step
        records = data[start:end - 1].replace(b"\n", head)
        if len(records) == end - 1 - start + (count - 1) * (len(head) - 1):
            return head + records, count
        count //= 2  # a shorter line inside: try the first half (the rest comes later)
    return b"", 0


def encode_text(data: bytes, start: int, stop: int, limit: int) -> tuple[bytes, int]:
    """N/L records for the lines in data[start:stop], which ends with LF: (records,
    content_length share), as ``encode_lines`` gives them. Runs of lines of one length
    (base64, fixed-width text) become records in bulk (``_equal_lines``); other lines
    go through ``encode_lines``, SPAN bytes at a time."""
    out: list[bytes] = []
    lines = 0
    pos = start
    while pos < stop:
        length = data.find(b"\n", pos) - pos
        second = pos + 2 * length + 1  # where the next line ends if it is as long
        if length <= limit and second < stop and data[second] == 10:
            records, count = _equal_lines(data, pos, stop, length)
            if count:
                out.append(records)
                lines += count
                pos += count * (length + 1)
                continue
        end = data.rfind(b"\n", pos, min(stop, pos + SPAN)) + 1
        if end <= pos:  # one line longer than SPAN
            end = pos + length + 1
        some = (data if pos == 0 and end == len(data) else data[pos:end]).split(b"\n")
        some.pop()  # the empty string after the last LF
        out.append(encode_lines(some, limit)[0])
        lines += len(some)
        pos = end
    return b"".join(out), stop - start + lines


def fold_address_list(header: str) -> list[str]:
    """cleanup_fold_header: one address per input line, joined while under 70 columns.

    ``header`` is ``Name: value`` with a newline after each comma; continuation
    lines get a leading TAB (cleanup_out_header).
    """
    lines: list[str] = []
    for piece in header.split("\n"):
        if lines and len(lines[-1]) + 1 + len(piece) < 70:
            lines[-1] += " " + piece
        else:
            lines.append(piece)
    return [lines[0]] + [ln if ln[:1] in (" ", "\t") else "\t" + ln for ln in lines[1:]]


def rewrite_address_header(lines: list[bytes], name_end: int, ctx: RewriteContext,
                           mapper: Callable[[str], str] | None = None) -> list[bytes] | None:
    """The lines of a rewritten address header, or None when it stays as it was."""
    first = lines[0]
    colon = first.find(b":", name_end)
    value = b"\n".join([first[colon + 1:], *lines[1:]]).decode("utf-8", "surrogateescape")
    new = rewrite_header_value(value, ctx, mapper)
    if new is None:
        return None
    name = first[:name_end].decode("utf-8", "surrogateescape")
    return [line.encode("utf-8", "surrogateescape")
            for line in fold_address_list(f"{name}: {new}")]


class ContentPass:
    """The message content, fed in pieces of any size, as queue-file content records.

    ``feed(data)`` and ``end()`` return the records that are ready, in file
    order; ``outcome`` holds what the header pass learned. Memory stays
    bounded whatever the input: one unfinished line is kept only up to
    line_length_limit (longer lines leave as L records), and one header up
    to ``header_limit`` bytes (a longer header is truncated: the text after
    the limit is dropped, as Postfix's mime_state does). Of the header
    names only the few the end of the header block asks about are
    remembered (``_REMEMBERED``), and at most MESSAGE_IDS_KEPT Message-Id:
    values, so that neither many distinct names nor one repeated header
    makes it grow. With
    ``replace_stray_cr`` every CR in the content becomes a space
    (cleanup_replace_stray_cr_lf; content lines end in LF, so every CR left
    is a stray one).
    """

    def __init__(self, received: list[str], job: HeaderJob, drop: frozenset[bytes],
                 line_limit: int, header_limit: int, replace_stray_cr: bool = True,
                 checks: hbc.MessageChecks | None = None, mime_nesting_limit: int = 100,
                 mime_boundary_limit: int = 2048, mime_disabled: bool = False,
                 detect_8bit: bool = False) -> None:
        self.job = job
        # detect_8bit_encoding_header, for a message not declared 8-bit: looking for a
        # Content-Transfer-Encoding: 8bit or binary header until one is found
        self.detect_8bit = detect_8bit
        self.checks = checks
        # Lines past the primary header go one by one through the MIME state and the checks.
        self.mime = (MimeState(mime_nesting_limit, mime_boundary_limit, mime_disabled,
                               checks.tables.strict_domain)
                     if checks is not None and checks.tables.mime_aware else None)
        # The checks the MIME walk applies: ``checks``, or none at all while the MIME
        # structure is followed only to find part headers for detect_8bit (``scan_only``:
        # a MIME state sees the primary block's Content-Type, and goes on past it only
        # when that announced parts or an attached message; the body goes in bulk between the
        # lines that start with "--").
        self.walk = checks
        self.scan_only = self.mime is None and detect_8bit and not mime_disabled
        self.mime_limits = (mime_nesting_limit, mime_boundary_limit)  # for a scan's MimeState
        # strict_8bitmime_body: body lines of a 7bit part are looked at for 8-bit bytes
        self.strict_body = checks is not None and checks.tables.strict_body
        self.part: list[bytes] = []  # the MIME part or attached-message header being collected
        self.part_len = 0
        self.part_mid_line = False
        self.body_mid_line = False  # the last body piece did not end its line
        self.separator_pending = False  # the primary header block ended, its empty line is next
        self.plain_rest = False  # the rest of the body needs no line-by-line look
        self.drop = drop
        self.line_limit = max(line_limit, 1)
        self.header_limit = max(header_limit, 1)
        self.replace_stray_cr = replace_stray_cr
        self.outcome = HeaderOutcome(hop_count=1)  # our own Received: is the first hop
        self.seen: set[bytes] = set()  # of _REMEMBERED only: bounded whatever the input
        self.resent = False
        self.in_headers = True
        self.ready: list[bytes] = []  # records not yet handed out
        self.partial = b""  # the unfinished last line of the input so far
        self.continued = False  # L records of the unfinished line were handed out already
        self.current: list[bytes] = []  # the lines of the header being collected
        self.current_len = 0
        self.current_name = b""
        self.name_end = 0
        self.mid_line = False  # the header's last line has not ended yet
        headers: list[list[bytes]] = []  # the added headers (smtpd's PREPENDs, Received:)
        for line in received:
            raw = line.encode("utf-8", "surrogateescape")
            if headers and raw[:1] in (b" ", b"\t"):
                headers[-1].append(raw)
            else:
                headers.append([raw])
        for lines in headers:
            kept: list[bytes] | None = lines
            if checks is not None:
                prepend, kept = checks.header(hbc.PRIMARY, lines)
                self._emit_header(prepend)
            if kept:
                self._emit_header(kept)

    def feed(self, data: bytes) -> list[bytes]:
        if self.replace_stray_cr and b"\r" in data:
            data = data.replace(b"\r", b" ")
        if self.partial:
            data = self.partial + data
            self.partial = b""
        if self.in_headers:
            data = self._headers(data)
        if data:
            self._body_any(data)
        return self._take()

    def end(self) -> list[bytes]:
        if self.in_headers:
            rest, self.partial = self.partial, b""
            if rest and not self._head_piece(rest, True):
                self._body_any(rest)
            if self.in_headers:
                self._end_headers()
        if self.mime is not None and not self.plain_rest:
            if self.partial or self.body_mid_line:
                self._piece(self.partial, True)
                self.partial = b""
            if self.part:
                self._flush_part()
            if self.mime.state != BODY:  # the content ended in a header block
                self._end_block(blank=False)
        elif self.partial or self.continued:
            self._emit_body_line(self.partial)
            self.partial = b""
        if self.checks is not None:
            self.checks.finish()
        return self._take()

    def _take(self) -> list[bytes]:
        out, self.ready = self.ready, []
        return out

    # -- the primary header block --------------------------------------------------------

    def _headers(self, data: bytes) -> bytes:
        """Take header lines from data; the rest (the body's start) is returned."""
        limit = self.line_limit
        pos = 0
        n = len(data)
        while pos < n:
            nl = data.find(b"\n", pos)
            end = n if nl < 0 else nl
            while end - pos > limit:  # a long line goes in pieces, as L records would
                if not self._head_piece(data[pos:pos + limit], False):
                    return data[pos:]
                pos += limit
            if nl < 0:
                self.partial = data[pos:]
                return b""
            if not self._head_piece(data[pos:nl], True):
                return data[pos:]
            pos = nl + 1
        return b""

    def _head_piece(self, piece: bytes, ends_line: bool) -> bool:
        """One piece of a header line; False when the header block ended before it."""
        if self.mid_line:
            if self.current_len < self.header_limit:
                self.current[-1] += piece
                self.current_len += len(piece)
        elif piece[:1] in (b" ", b"\t"):
            if not self.current:
                self._end_headers(blank=False)
                return False
            if self.current_len < self.header_limit:
                self.current.append(piece)
                self.current_len += len(piece) + 1
        else:
            m = _HEADER_NAME.match(piece) if piece else None
            if m is None:
                self._end_headers(blank=not piece)
                return False
            self._flush_header()
            self.current = [piece]
            self.current_len = len(piece)
            self.current_name = m.group(1).lower()
            self.name_end = m.end(1)
        self.mid_line = not ends_line
        return True

    def _flush_header(self) -> None:
        lines: list[bytes] | None
        lines, self.current = self.current, []
        if not lines:
            return
        name = self.current_name
        name_end = self.name_end
        if self.scan_only:
            if name == b"content-type":  # the MIME state starts at the first Content-Type
                if self.mime is None:
                    self.mime = MimeState(*self.mime_limits)
                self.mime.header(lines)
        elif self.checks is not None:
            if self.mime is not None and self.mime.header(lines):
                self.checks.mime_nesting(lines)
            prepend, lines = self.checks.header(hbc.PRIMARY, lines)
            self._emit_header(prepend)
            if lines is None:
                return
            m = _HEADER_NAME.match(lines[0])
            if m is None:  # a REPLACE text is always a header: cannot happen
                self._emit_header(lines)
                return
            name, name_end = m.group(1).lower(), m.end(1)
        out = self.outcome
        if name in _REMEMBERED:
            self.seen.add(name)
        if not out.utf8_headers and not b"".join(lines).isascii():
            out.utf8_headers = True
        if name == b"received":
            out.hop_count += 1
        elif name == b"message-id":
            if len(out.message_ids) < MESSAGE_IDS_KEPT:
                colon = lines[0].find(b":")
                value = b"".join([lines[0][colon + 1:], *lines[1:]]).lstrip(b" \t")
                out.message_ids.append(value.decode("utf-8", "surrogateescape"))
            else:
                out.message_ids_dropped += 1
        if name in _RESENT:
            self.resent = True
        if self.detect_8bit and name == b"content-transfer-encoding":
            self._detect_8bit(lines)
        if name in self.drop:
            return
        rewrite_ctx = self.job.header_rewrite
        if rewrite_ctx is not None and name in ADDRESS_HEADERS:
            cache = self.job.header_cache
            if cache is not None and sum(map(len, lines)) <= CACHED_HEADER_BYTES:
                key = tuple(lines)
                if key in cache:
                    new = cache[key]
                else:
                    new = self._rewrite(lines, name, name_end, rewrite_ctx)
                    if len(cache) >= CACHED_HEADERS:
                        cache.clear()
                    cache[key] = new
            else:
                new = self._rewrite(lines, name, name_end, rewrite_ctx)
            if new is not None:
                lines = new
        self._emit_header(lines)

    def _rewrite(self, lines: list[bytes], name: bytes, name_end: int,
                 ctx: RewriteContext) -> list[bytes] | None:
        header_map = self.job.header_map
        mapper = None
        if header_map is not None:
            is_sender = name in SENDER_HEADERS

            def mapper(addr: str) -> str:
                return header_map(addr, is_sender)
        return rewrite_address_header(lines, name_end, ctx, mapper)

    def _end_headers(self, blank: bool = True) -> None:
        """The primary header block ended: at an empty line or the input's end when blank,
        else at a line that is no header (an empty body line is inserted before it)."""
        self._flush_header()
        self.in_headers = False
        self.mid_line = False
        job = self.job
        out = self.outcome
        seen = self.seen
        if job.add_missing:
            resent = self.resent
            prefix = "Resent-" if resent else ""
            mid_name = b"resent-message-id" if resent else b"message-id"
            if mid_name not in seen:
                if job.long_queue_ids:
                    mid = f"{job.queue_id}@{job.myhostname}"
                else:
                    stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime(int(job.created)))
                    mid = f"{stamp}.{job.queue_id}@{job.myhostname}"
                out.added.append(f"{prefix}Message-Id: <{mid}>")
                if resent:
                    seen.add(b"resent-message-id")
                else:
                    out.message_ids.append(f"<{mid}>")
                    seen.add(b"message-id")
            if (b"resent-date" if resent else b"date") not in seen:
                out.added.append(f"{prefix}Date: {job.date}")
            if (b"resent-from" if resent else b"from") not in seen:
                out.added.extend(from_header(prefix, job.sender, job.full_name, job.hfrom_standard))
        if b"message-id" not in seen:
            out.message_ids.append("<>")
        if out.added:
            self._emit_header([s.encode("utf-8", "surrogateescape") for s in out.added])
        if not blank:
            # a line that is no header ended the block: as Postfix's mime_state, an empty
            # line goes out first, so that line is body text and not part of the headers
            self._emit_body_line(b"")
        if self.mime is not None:
            if self.walk is None:  # scan_only: a MIME walk only when part headers can follow
                self.mime.end_headers(blank)
                if not self.detect_8bit or self.mime.state == BODY and not self.mime.boundaries:
                    self.mime = None
                    self.scan_only = False
                    return
                self.walk = hbc.MessageChecks(_NO_TABLES, hbc.Where(job.queue_id, "", "", None))
            else:
                self._end_block(blank)
            self.separator_pending = blank

    def _emit_header(self, lines: list[bytes]) -> None:
        ready = self.ready
        limit = self.line_limit
        length = 0
        for line in lines:
            n = len(line)
            ready.append(_N_HEAD[n] + line if n < 128 else r.text_records(line, limit))
            length += n + 2
        self.outcome.content_length += length

    # -- the body ----------------------------------------------------------------------------

    def _body(self, data: bytes) -> None:
        if len(data) < BULK_AT:  # a small message: looking for runs costs more than it saves
            lines = data.split(b"\n")
            last = lines.pop()
            if lines:
                if self.continued:
                    self.continued = False
                    self._emit_body_line(lines[0])
                    del lines[0]
                records, length = encode_lines(lines, self.line_limit)
                if records:
                    self.ready.append(records)
                self.outcome.content_length += length
        else:  # runs of lines of one length (base64) in bulk
            start = 0
            if self.continued and (nl := data.find(b"\n")) >= 0:
                self.continued = False
                self._emit_body_line(data[:nl])
                start = nl + 1
            stop = data.rfind(b"\n") + 1
            if stop > start:
                records, length = encode_text(data, start, stop, self.line_limit)
                self.ready.append(records)
                self.outcome.content_length += length
            last = data[max(start, stop):]
        limit = self.line_limit
        if len(last) > limit:  # an unfinished long line: its full pieces leave now
            keep = (len(last) - 1) % limit + 1
            head = last[:-keep]
            self.ready.extend(r.encode_record(r.REC_TYPE_CONT, head[i:i + limit])
                              for i in range(0, len(head), limit))
            self.outcome.content_length += len(head)
            self.continued = True
            last = last[-keep:]
        self.partial = last

    def _emit_body_line(self, line: bytes) -> None:
        self.ready.append(r.text_records(line, self.line_limit))
        self.outcome.content_length += len(line) + 2

    # -- the body, line by line, with the MIME structure and the content checks ----------

    def _body_any(self, data: bytes) -> None:
        """The body, line by line while the MIME structure or body_checks need it; in bulk
        once nothing can change any more (no multipart open, body_checks done or absent)."""
        if self.mime is not None and not self.plain_rest:
            checks = self.walk
            assert checks is not None
            mime = self.mime
            body_done = ((checks.tables.body is None or checks.stopped or
                          0 < checks.tables.body_limit <= checks.body_seen)
                         and not (self.strict_body and mime.seven_bit
                                  and hbc.MIME_8BIT_BODY not in checks.mime_errors))
            self.plain_rest = (body_done and (mime.state == BODY and not mime.boundaries
                                              or self.scan_only and not self.detect_8bit)
                               and not self.body_mid_line and not self.separator_pending
                               and not self.part)
            if not self.plain_rest:
                if self.scan_only:
                    self._body_scan(data)
                else:
                    self._body_checked(data)
                return
        self._body(data)

    def _body_scan(self, data: bytes) -> None:
        """The body while only part headers are looked for (``scan_only``): the lines
        up to the next one that starts with "--" go in bulk while the MIME state is in
        a body, the others line by line, as ``_body_checked``."""
        mime = self.mime
        assert mime is not None
        pos = 0
        n = len(data)
        while pos < n:
            if (mime.state == BODY and not self.body_mid_line and not self.separator_pending
                    and not self.part and not data.startswith(b"--", pos)):
                dashes = data.find(b"\n--", pos)
                end = dashes + 1 if dashes >= 0 else data.rfind(b"\n", pos) + 1
                if end > pos:  # whole lines, none a boundary
                    self._body(data[pos:end])
                    pos = end
                    continue
            nl = data.find(b"\n", pos)
            if nl < 0:
                self._body_checked(data[pos:])
                return
            self._body_checked(data[pos:nl + 1])
            pos = nl + 1

    def _body_checked(self, data: bytes) -> None:
        lines = data.split(b"\n")
        last = lines.pop()
        limit = self.line_limit
        for line in lines:
            while len(line) > limit:
                self._piece(line[:limit], False)
                line = line[limit:]
            self._piece(line, True)
        while len(last) > limit:  # an unfinished long line: its full pieces go now
            self._piece(last[:limit], False)
            last = last[limit:]
        self.partial = last

    def _piece(self, piece: bytes, ends_line: bool) -> None:
        """One line, or one piece of a long line, after the primary header block."""
        mime = self.mime
        checks = self.walk
        assert mime is not None and checks is not None
        if self.separator_pending:  # the empty line after the primary header block
            self.separator_pending = False
            if not piece and ends_line:
                self._emit_body_line(piece)
                return
        if mime.state != BODY:
            if self._part_piece(piece, ends_line):
                return
            self._flush_part()
            self._end_block(blank=not piece and ends_line)
            checks.new_part()
            if not piece and ends_line:  # the empty line that ends a header block
                self._emit_body_line(piece)
                return
        if self.strict_body and mime.seven_bit and not piece.isascii():
            checks.mime_error(hbc.MIME_8BIT_BODY, piece)
        if not self.body_mid_line and mime.body_line(piece):
            checks.new_part()
        self.body_mid_line = not ends_line
        prepend, kept = checks.body(piece)
        for line in prepend:
            self._emit_body_line(line)
        if kept is None:
            return
        if ends_line:
            self._emit_body_line(kept)
        else:
            self.ready.append(r.encode_record(r.REC_TYPE_CONT, kept))
            self.outcome.content_length += len(kept)

    def _end_block(self, blank: bool) -> None:
        """A header block ended (at an empty line when blank): the MIME state goes on,
        and an encoding it should not have said is a MIME error (strict_mime_encoding_domain)."""
        assert self.mime is not None and self.walk is not None
        wrong = self.mime.end_headers(blank)
        if wrong:
            self.walk.mime_error(hbc.MIME_ENCODING_DOMAIN, wrong)

    def _part_piece(self, piece: bytes, ends_line: bool) -> bool:
        """A piece of a MIME part's or attached message's header; False: the block ended."""
        if self.part_mid_line:
            self._part_add(piece, False)
        elif piece[:1] in (b" ", b"\t") and self.part:
            self._part_add(piece, True)
        elif piece and _HEADER_NAME.match(piece):
            self._flush_part()
            self.part, self.part_len = [piece], len(piece)
        else:
            return False
        self.part_mid_line = not ends_line
        return True

    def _part_add(self, piece: bytes, new_line: bool) -> None:
        if self.part_len >= self.header_limit:  # truncated, as the primary header block
            return
        if new_line:
            self.part.append(piece)
            self.part_len += len(piece) + 1
        else:
            self.part[-1] += piece
            self.part_len += len(piece)

    def _flush_part(self) -> None:
        lines, self.part, self.part_len = self.part, [], 0
        if not lines:
            return
        mime = self.mime
        checks = self.walk
        assert mime is not None and checks is not None
        if mime.header(lines):
            checks.mime_nesting(lines)
        prepend, kept = checks.header(mime.state, lines)
        if kept and self.detect_8bit:
            m = _HEADER_NAME.match(kept[0])
            if m is not None and m.group(1).lower() == b"content-transfer-encoding":
                self._detect_8bit(kept)
        for line in [*prepend, *(kept or [])]:
            self._emit_body_line(line)

    def _detect_8bit(self, lines: list[bytes]) -> None:
        """A Content-Transfer-Encoding header (as header_checks left it): 8bit or binary,
        the whole value after leading white space, in any case, makes the message 8-bit,
        as Postfix's cleanup_header_callback."""
        value = b"\n".join(lines).partition(b":")[2].lstrip(b" \t\n\r\v\f").lower()
        if value in (b"8bit", b"binary"):
            self.outcome.says_8bit = True
            self.detect_8bit = False
