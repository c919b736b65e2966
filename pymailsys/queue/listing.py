"""The queue listing: what showq reads from the spool, and mailq's two layouts.

``scan_queue(spool, ...)`` walks maildrop, active, incoming, deferred and hold
(Postfix's showq order, directory order inside a queue) and yields one
``QueuedMessage`` per readable, complete queue file as it reads it (memory does
not grow with the queue: a million-message queue streams), read the way Postfix's
showq reads it: arrival time from the first T record (else the file mtime),
size from the first field of the C record (maildrop files: the file size),
the sender (the null sender shown as ``empty_address_recipient``), then the
recipients of the defer and bounce logs with their reasons, then the file's
pending R recipients not already listed (a log's recipient and an R record
are one recipient when they are shown alike, as in Postfix's showq duplicate
filter: each is listed once). Every string a listing shows (sender,
recipients, original recipients, reasons) is made printable (``log.printable``:
'?' for each unprintable character, as Postfix's postqueue reads showq with
ATTR_FLAG_PRINTABLE), so no envelope address or remote server's reply takes an
escape sequence to the administrator's terminal, in mailq or in JSON; addresses
are first quoted as RFC 5322 local parts where needed
(``rfc822.quote_822_local``). A
file that cannot be read is skipped; a damaged one ends at the damage, as in
Postfix. Files in maildrop/ belong to their users: a file is opened without
following links or waiting on a FIFO, judged by what was opened (a complete
regular file), and read up to a bound (``max_size``); the defer and bounce
logs the same way (mail_owner writes them; root lists the queue when the
system is down); ``deadline`` bounds a whole scan. Files are read without
updating their access times where the reader may (``open_keeping_atime``:
mail_owner's queue files and logs, any file for root): otherwise a listing
dirties every inode it reads, and at a million messages the journal's work for
two million inodes made mailq twice as slow per message.

``listing_chunks`` is what showq sends and postqueue prints: the listing in
pieces of about ``CHUNK`` bytes, each produced as the scan reaches it.
``text_pieces`` renders Postfix's ``postqueue -p`` (mailq) layout byte for
byte, one piece per message (the format strings of Postfix's showq_compat.c: headings, ID with ``*``
active, ``!`` hold and ``#`` forced expiry marks, size, asctime cut to 20
characters, right-aligned ``(reason)`` lines when the reason changes, blank
line between messages, ``-- N Kbytes in M Requests.`` or ``Mail queue is
empty``). ``json_pieces`` renders ``postqueue -j`` (showq_json.c): one JSON
object per line with Postfix's field names and its string escaping.
``format_text`` and ``format_json`` join the pieces of a short listing.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from pymailsys.bounded_read import FileRefused, open_keeping_atime, read_bounded
from pymailsys.log import printable
from pymailsys.queue import records as r
from pymailsys.queue import spool as queue
from pymailsys.queue import status_log
from pymailsys.rfc822 import quote_822_local

SHOWQ_QUEUES = (queue.MAILDROP, queue.ACTIVE, queue.INCOMING, queue.DEFERRED, queue.HOLD)
MAX_FILE_READ = 2 * 10240000 + (1 << 20)  # bytes read of one file (default message_size_limit)
STATUS_LOG_TIMEOUT = 10.0  # seconds to read one defer or bounce log
CHUNK = 1 << 16  # bytes of listing per piece that showq sends

S_STRING_FORMAT = "%-11s %7s %-20s %s\n"
S_SENDER_FORMAT = "%-11s %7ld %20.20s %s\n"
S_HEADINGS = ("-Queue ID-", "--Size--", "----Arrival Time----", "-Sender/Recipient-------")
L_STRING_FORMAT = "%-17s %8s %-19s %s\n"
L_SENDER_FORMAT = "%-17s %8ld %19.19s %s\n"
L_HEADINGS = ("----Queue ID-----", "--Size--", "---Arrival Time----", "--Sender/Recipient------")


@dataclass
class Rcpt:
    orig: str
    address: str
    log_class: str = ""
    why: str = ""


@dataclass
class QueuedMessage:
    queue_name: str
    queue_id: str
    arrival: int
    size: int
    forced_expire: bool
    sender: str
    recipients: list[Rcpt] = field(default_factory=list)


def _show_addr(addr: str, empty: str) -> str:
    """An address as mailq shows it: the local part quoted where RFC 5322 needs it,
    every unprintable character '?' (an envelope address or a remote server's
    reason may carry terminal escapes), the empty address as ``empty``."""
    return printable(quote_822_local(addr or empty))


def _show_orig(addr: str) -> str:
    """An original recipient as showq sends it: shown as an address, empty kept empty."""
    return printable(quote_822_local(addr)) if addr else ""


def read_queue_file(path: str, max_size: int) -> tuple[bytes, os.stat_result] | None:
    """The first ``max_size`` bytes of a complete regular queue file, and its status.

    Never follows a symbolic link, never waits on a FIFO or device (O_NONBLOCK),
    and judges the file it opened (fstat), not the name: a user may swap a
    maildrop file between the check and the open.
    """
    try:
        fd = open_keeping_atime(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or not queue.is_complete(st.st_mode):
            return None
        chunks = []
        left = max_size
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks), st
    except OSError:
        return None
    finally:
        os.close(fd)


def read_status_log(path: str, max_size: int) -> list[status_log.Entry]:
    """The entries of a defer or bounce log, read as queue files are (no links, regular
    files only, bounded); [] when it cannot be read, as Postfix's showq skips it."""
    try:
        data, _st = read_bounded(path, max_size, STATUS_LOG_TIMEOUT, follow_links=False,
                                 keep_atime=True)
    except (OSError, FileRefused, TimeoutError):
        return []
    return status_log.parse(data)


def read_message(spool: queue.Spool, queue_name: str, queue_id: str, path: str,
                 empty_addr: str = "MAILER-DAEMON",
                 max_size: int = MAX_FILE_READ) -> QueuedMessage | None:
    found = read_queue_file(path, max_size)
    if found is None:
        return None
    data, st = found
    arrival = 0
    size = st.st_size
    size_ok = False
    msg: QueuedMessage | None = None
    seen: set[str] = set()
    orig: str | None = None
    offset = 0
    end = len(data)
    while offset < end:
        try:
            rtype, payload, nxt = r.decode_record(data, offset)
        except r.RecordError:
            break
        text = payload.decode("utf-8", "surrogateescape")
        if rtype == r.REC_TYPE_TIME:
            if arrival == 0:
                try:
                    arrival = int(text.split()[0])
                except (ValueError, IndexError):
                    arrival = 0
        elif rtype == r.REC_TYPE_SIZE:
            if not size_ok and queue_name != queue.MAILDROP:
                fields = text.split()
                if fields and all(c in "0123456789 " for c in text) and int(fields[0]) >= 0:
                    size = int(fields[0])
                    size_ok = True
        elif rtype == r.REC_TYPE_FROM:
            if msg is not None:
                break  # duplicate sender: skip the remainder
            msg = QueuedMessage(queue_name, queue_id, arrival if arrival > 0 else int(st.st_mtime),
                                size, bool(st.st_mode & queue.MODE_EXPIRE), _show_addr(text, empty_addr))
            for log_class in (queue.DEFER, queue.BOUNCE):
                for entry in read_status_log(spool.path(log_class, queue_id), max_size):
                    # shown as the R records below are, and remembered in that form:
                    # Postfix's showq matches the log's recipient (not the original
                    # recipient) against each R record's printable quoted form
                    shown = _show_addr(entry.recipient, empty_addr)
                    seen.add(shown)
                    msg.recipients.append(Rcpt(_show_orig(entry.original_recipient), shown,
                                               log_class, printable(entry.reason)))
        elif rtype == r.REC_TYPE_ORCP:
            if msg is None:
                break
            orig = printable(quote_822_local(text))
        elif rtype == r.REC_TYPE_RCPT:
            if msg is None:
                break
            shown = _show_addr(text, empty_addr)
            if shown not in seen:
                msg.recipients.append(Rcpt(orig if orig is not None else shown, shown))
            orig = None
        elif rtype in (r.REC_TYPE_DONE, r.REC_TYPE_DRCP):
            orig = None
        elif rtype == r.REC_TYPE_MESG:
            if size_ok:
                nxt = nxt + size
        elif rtype == r.REC_TYPE_END:
            break
        offset = nxt
    return msg


def scan_queue(spool: queue.Spool, empty_addr: str = "MAILER-DAEMON",
               queues: Iterable[str] = SHOWQ_QUEUES, max_size: int = MAX_FILE_READ,
               deadline: float | None = None) -> Iterator[QueuedMessage]:
    """Every listable message, one at a time; TimeoutError once time.monotonic()
    passes ``deadline``."""
    for queue_name in queues:
        for queue_id in spool.scan(queue_name):
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError("queue listing took too long")
            msg = read_message(spool, queue_name, queue_id, spool.path(queue_name, queue_id),
                               empty_addr, max_size)
            if msg is not None:
                yield msg


def text_pieces(messages: Iterable[QueuedMessage], long_ids: bool = False) -> Iterator[str]:
    """The mailq text: the headings with the first message, one piece per message,
    then the count line (or ``Mail queue is empty``)."""
    string_fmt = L_STRING_FORMAT if long_ids else S_STRING_FORMAT
    sender_fmt = L_SENDER_FORMAT if long_ids else S_SENDER_FORMAT
    total = 0
    count = 0
    for msg in messages:
        out: list[str] = []
        if count > 0:
            out.append("\n")
        else:
            out.append(string_fmt % (L_HEADINGS if long_ids else S_HEADINGS))
        ident = msg.queue_id
        if msg.queue_name == queue.ACTIVE:
            ident += "*"
        elif msg.queue_name == queue.HOLD:
            ident += "!"
        if msg.forced_expire:
            ident += "#"
        out.append(sender_fmt % (ident, msg.size, time.asctime(time.localtime(msg.arrival)),
                                 msg.sender))
        saved = ""
        for rc in msg.recipients:
            if rc.why != saved:
                saved = rc.why
                show = saved or "reason unavailable"
                out.append(" " * max(76 - len(show), 0) + f"({show})\n")
            out.append(string_fmt % ("", "", "", rc.address))
        total += msg.size
        count += 1
        yield "".join(out)
    if not count:
        yield "Mail queue is empty\n"
    else:
        yield f"\n-- {total // 1024} Kbytes in {count} Request{'' if count == 1 else 's'}.\n"


def format_text(messages: Iterable[QueuedMessage], long_ids: bool = False) -> str:
    return "".join(text_pieces(messages, long_ids))


def quote_for_json(text: str) -> str:
    out = []
    for c in text:
        o = ord(c)
        if o < 32 or o == 127:
            out.append({"\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r",
                        "\t": "\\t"}.get(c, f"\\u{o:04X}"))
        elif c in ('\\', '"'):
            out.append("\\" + c)
        else:
            out.append(c)
    return printable("".join(out))


def json_pieces(messages: Iterable[QueuedMessage]) -> Iterator[str]:
    """postqueue -j: one JSON line per message."""
    q = quote_for_json
    for msg in messages:
        parts = [
            "{",
            f'"queue_name": "{q(msg.queue_name)}", ',
            f'"queue_id": "{q(msg.queue_id)}", ',
            f'"arrival_time": {msg.arrival}, ',
            f'"message_size": {msg.size}, ',
            f'"forced_expire": {"true" if msg.forced_expire else "false"}, ',
            f'"sender": "{q(msg.sender)}", ',
            '"recipients": [',
        ]
        rcpts = []
        for rc in msg.recipients:
            # Postfix 3.7's fields (orig_address came with 3.11)
            item = f'{{"address": "{q(rc.address)}"'
            if rc.why:
                key = {"defer": "delay_reason", "bounce": "bounce_reason"}.get(
                    rc.log_class, "other_reason")
                item += f', "{key}": "{q(rc.why)}"'
            rcpts.append(item + "}")
        parts.append(", ".join(rcpts))
        parts.append("]}\n")
        yield "".join(parts)


def format_json(messages: Iterable[QueuedMessage]) -> str:
    return "".join(json_pieces(messages))


def listing_chunks(spool: queue.Spool, fmt: str, long_ids: bool = False,
                   empty_addr: str = "MAILER-DAEMON", max_size: int = MAX_FILE_READ,
                   deadline: float | None = None) -> Iterator[bytes]:
    """The listing ("text" or "json") as it is read: the first message at once, then
    pieces of about CHUNK bytes."""
    messages = scan_queue(spool, empty_addr, max_size=max_size, deadline=deadline)
    pieces = json_pieces(messages) if fmt == "json" else text_pieces(messages, long_ids)
    buf: list[bytes] = []
    size = 0
    first = True
    for piece in pieces:
        data = piece.encode("utf-8", "surrogateescape")
        buf.append(data)
        size += len(data)
        if size >= CHUNK or first:
            yield b"".join(buf)
            buf, size, first = [], 0, False
    if buf:
        yield b"".join(buf)
