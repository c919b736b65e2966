"""Per-message status logs: ``defer/ID``, ``bounce/ID`` (and ``trace/ID``).

Postfix's format: per recipient, ``name=value`` lines followed by one empty
line, in this order (absent fields left out)::

    recipient=bob@example.com
    original_recipient=Bob@example.com
    offset=211
    dsn_orig_rcpt=rfc822;bob@example.com
    notify_flags=0
    status=4.3.0
    action=delayed
    reason=mail transport unavailable

A remote server's answer adds ``mta_type=dns``, ``mta_mname=host``,
``diag_type=smtp`` and ``diag_text=550 5.1.1 ...`` (``Entry.set_remote``; they
are in ``Entry.extra`` once read); a local command's failure ``diag_type=x-unix``
and its output (or what its exit status means) as ``diag_text``. The trace log holds the sent recipients
whose sender asked for a success notice (action delivered or relayed).

``append`` adds one entry with one write on an O_APPEND descriptor and fsyncs
it (Postfix: status logs are appended, then fsynced); a write that stops short
(a full file system) goes on until it fails, and a failed write or fsync
truncates the log back to its length before and raises ``OSError``, as
Postfix's bounce_append_service does: the caller knows the entry is not
there, and no torn entry stays to swallow the next one. ``read`` parses a log into
``Entry`` values and ignores a torn last entry (a crash in mid-write); showq and
the bounce service read logs this way. Values are single lines: CR and LF in a
reason are replaced by spaces on write.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field

from pymailsys.queue.spool import Spool

ACTION_DELAYED = "delayed"
ACTION_FAILED = "failed"
ACTION_DELIVERED = "delivered"
ACTION_EXPANDED = "expanded"
ACTION_RELAYED = "relayed"

_ORDER = ("recipient", "original_recipient", "offset", "dsn_orig_rcpt", "notify_flags", "status",
          "diag_type", "diag_text", "mta_type", "mta_mname", "action", "reason")


@dataclass
class Entry:
    recipient: str
    status: str
    action: str
    reason: str
    original_recipient: str = ""
    offset: int = 0
    dsn_orig_rcpt: str = ""
    notify_flags: int = 0
    extra: dict[str, str] = field(default_factory=dict)

    def set_remote(self, mta: str, diag: str, diag_type: str = "") -> None:
        """Record the remote server (Remote-MTA ``dns; name``) and its reply
        (Diagnostic-Code ``smtp; reply``, or ``diag_type; diag``), when there was one."""
        if mta:
            self.extra.update(mta_type="dns", mta_mname=mta)
        if diag:
            self.extra.update(diag_type=diag_type or "smtp", diag_text=diag)

    def encode(self) -> bytes:
        values: dict[str, str] = {
            "recipient": self.recipient,
            "original_recipient": self.original_recipient,
            "offset": str(self.offset),
            "dsn_orig_rcpt": self.dsn_orig_rcpt,
            "notify_flags": str(self.notify_flags),
            "status": self.status,
            "action": self.action,
            "reason": self.reason,
        }
        values.update(self.extra)
        out = []
        for name in _ORDER + tuple(k for k in values if k not in _ORDER):
            value = values.get(name, "")
            if value == "" and name not in ("recipient", "status", "action", "reason"):
                continue
            value = value.replace("\r", " ").replace("\n", " ")
            out.append(f"{name}={value}\n")
        out.append("\n")
        return "".join(out).encode("utf-8", "surrogateescape")


def append(path: str, entry: Entry, sync: bool = True) -> None:
    """Append one entry to the log at path (created 0600 when missing); OSError, and
    the log as it was, when the entry cannot be written (or synced) whole."""
    data = memoryview(entry.encode())
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        before = os.fstat(fd).st_size
        try:
            while data:
                data = data[os.write(fd, data):]
            if sync:
                os.fsync(fd)
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, before)
            raise
    finally:
        os.close(fd)


def append_queue(spool: Spool, queue: str, queue_id: str, entry: Entry, sync: bool = True) -> None:
    """Append to spool queue/ID, creating hashed subdirectories when needed."""
    path = spool.path(queue, queue_id)
    try:
        append(path, entry, sync)
    except FileNotFoundError:
        spool.ensure_hash_dirs(queue, queue_id)
        append(path, entry, sync)


def parse(data: bytes) -> list[Entry]:
    entries: list[Entry] = []
    text = data.decode("utf-8", "surrogateescape")
    blocks = text.split("\n\n")
    complete = text.endswith("\n\n")
    if not complete:
        blocks = blocks[:-1]  # a torn last entry
    for block in blocks:
        fields: dict[str, str] = {}
        for line in block.strip("\n").split("\n"):
            if not line:
                continue
            name, sep, value = line.partition("=")
            if sep:
                fields[name] = value
        if "recipient" not in fields:
            continue
        known = {"recipient", "original_recipient", "offset", "dsn_orig_rcpt", "notify_flags",
                 "status", "action", "reason"}
        try:
            offset = int(fields.get("offset", "0") or 0)
            notify = int(fields.get("notify_flags", "0") or 0)
        except ValueError:
            continue
        entries.append(Entry(
            recipient=fields["recipient"], status=fields.get("status", ""),
            action=fields.get("action", ""), reason=fields.get("reason", ""),
            original_recipient=fields.get("original_recipient", ""), offset=offset,
            dsn_orig_rcpt=fields.get("dsn_orig_rcpt", ""), notify_flags=notify,
            extra={k: v for k, v in fields.items() if k not in known}))
    return entries


def read(path: str) -> list[Entry]:
    """The entries of a status log; [] when it does not exist."""
    try:
        with open(path, "rb") as f:
            return parse(f.read())
    except FileNotFoundError:
        return []


def remove(spool: Spool, queue: str, queue_id: str) -> None:
    try:
        os.unlink(spool.path(queue, queue_id))
    except FileNotFoundError:
        pass
