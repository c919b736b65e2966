"""Triggers: wake a service by writing a few bytes to its socket or FIFO.

A trigger is a connection (Unix socket) or a write (FIFO) that carries one or
more request bytes and nothing else, as in Postfix: ``W`` wake up, and for qmgr
``I`` scan incoming, ``D`` scan deferred, ``A`` ignore deferred time stamps,
``F`` forget dead destinations. Delivery is best effort: a service that is not
running is not an error for the sender (the timer or the next start catches
up), so both functions return False instead of raising.
"""

from __future__ import annotations

import asyncio
import os
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
        if stat.S_ISFIFO(os.stat(path).st_mode):
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
            return True
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
        if stat.S_ISFIFO(os.stat(path).st_mode):
            return send_trigger(path, data)
        _, writer = await asyncio.open_unix_connection(path)
        writer.write(data)
        await writer.drain()
        writer.close()
        return True
    except OSError:
        return False
