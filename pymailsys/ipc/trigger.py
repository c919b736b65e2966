"""Triggers: wake a service by writing a few bytes to its socket or FIFO.

A trigger is a connection (Unix socket) or a write (FIFO) that carries one or
more request bytes and nothing else, as in Postfix: ``W`` wake up, and for qmgr
``I`` scan incoming, ``D`` scan deferred, ``A`` ignore deferred time stamps,
``F`` forget dead destinations. Delivery is best effort: a service that is not
running is not an error for the sender (the timer or the next start catches
up), so both functions return False instead of raising.

The endpoint lives in public/ or private/, which mail_owner writes, and the
sender may be root (master, ``postfix flush``, ``postqueue -f``): it must be a
FIFO or a socket itself, never a symbolic link; a FIFO is opened O_NOFOLLOW
and written only when the descriptor is a FIFO, so a trigger never writes into
a file or another FIFO that a planted link names.

Named queue files: cleanup tells qmgr which files it just queued with
``<HEX>`` records (the queue ID's bytes in lower-case hex, ``encode_named_ids``)
on its trigger connection, so qmgr need not rescan incoming/. The records use
none of the request letters. ``NamedIdReader`` takes them out of trigger reads,
which carry no connection identity and may cut a record in two: a cut-off head
waits for its tail; a record that cannot be completed is reported as damaged,
and the reader's owner then scans incoming/ instead.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import stat

WAKEUP = b"W"
SCAN_INCOMING = b"I"
SCAN_DEFERRED = b"D"
SCAN_ALL = b"A"
FORGET = b"F"


def send_trigger(path: str, data: bytes, timeout: float = 5.0) -> bool:
    """Blocking trigger; True when the bytes were handed over."""
    try:
        mode = os.lstat(path).st_mode
        if stat.S_ISFIFO(mode):
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
            try:
                if not stat.S_ISFIFO(os.fstat(fd).st_mode):
                    return False  # swapped after the lstat
                os.write(fd, data)
            finally:
                os.close(fd)
            return True
        if not stat.S_ISSOCK(mode):
            return False
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(path)
            sock.sendall(data)
        return True
    except OSError:
        return False


async def async_trigger(path: str, data: bytes) -> bool:
    """The same, without blocking the event loop on a socket."""
    try:
        mode = os.lstat(path).st_mode
        if stat.S_ISFIFO(mode):
            return send_trigger(path, data)
        if not stat.S_ISSOCK(mode):
            return False
        _, writer = await asyncio.open_unix_connection(path)
        writer.write(data)
        await writer.drain()
        writer.close()
        return True
    except OSError:
        return False


MAX_NAMED_RECORD = 256
_RECORD = re.compile(rb"<([0-9a-f]*)(>?)")
_RECORD_TAIL = re.compile(rb"([0-9a-f]*)(>?)")
_QUEUE_ID = re.compile(r"^[A-Za-z0-9_]{1,100}$")


def encode_named_ids(queue_ids: list[str]) -> bytes:
    """Trigger records that name new queue files: ``<HEX>`` per queue ID."""
    return b"".join(b"<" + qid.encode("ascii").hex().encode("ascii") + b">"
                    for qid in queue_ids)


def _unhex(data: bytes) -> str | None:
    try:
        text = bytes.fromhex(data.decode("ascii")).decode("ascii")
    except (ValueError, UnicodeDecodeError):
        return None
    return text if _QUEUE_ID.match(text) else None


class NamedIdReader:
    """Split trigger reads into request bytes and named queue IDs."""

    def __init__(self) -> None:
        self.partial = b""  # a record cut off at the end of the last read

    def feed(self, data: bytes) -> tuple[bytes, list[str], bool]:
        """(request bytes, queue IDs named, whether a record was damaged)."""
        damaged = False
        if self.partial:
            tail = _RECORD_TAIL.match(data)
            assert tail is not None
            if tail.group(2) or len(tail.group(1)) < len(data):
                if tail.group(2):
                    data = self.partial + data
                else:  # something else came first: the record's tail is lost
                    damaged = True
                self.partial = b""
            elif len(self.partial) + len(data) <= MAX_NAMED_RECORD:
                self.partial += data
                return b"", [], False
            else:
                self.partial = b""
                return b"", [], True
        rest = bytearray()
        ids: list[str] = []
        pos = 0
        for m in _RECORD.finditer(data):
            rest += data[pos:m.start()]
            pos = m.end()
            if not m.group(2):
                if m.end() == len(data) and len(m.group(0)) <= MAX_NAMED_RECORD:
                    self.partial = m.group(0)
                else:
                    damaged = True
                continue
            queue_id = _unhex(m.group(1))
            if queue_id is None:
                damaged = True
            else:
                ids.append(queue_id)
        rest += data[pos:]
        return bytes(rest), ids, damaged
