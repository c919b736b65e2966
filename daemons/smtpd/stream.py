"""smtpd input: command lines and DATA, read in bulk from one client stream.

NAME
    stream - the SMTP server's input buffer

SYNOPSIS
    buf = InputBuffer(reader)
    line = await buf.readline(limit)        # one command line, terminator stripped
    buf.pending()                           # more input already here (pipelining check)
    data = await buf.read_data(size_limit)  # DATA up to <CR><LF>.<CR><LF>

DESCRIPTION
    The session owns its buffer (instead of asyncio's line reader) so that it
    can see whether a client pipelined more input, and so that DATA is read in
    large chunks and searched with C-speed ``find``/``replace`` instead of one
    Python call per line.

    Command lines end in <LF>; a <CR> before it is dropped. ``bare_lf`` tells
    whether the last line ended in a bare <LF>. A line longer than ``limit``
    is returned truncated; the rest of it is read and discarded.

    DATA (``read_data``), SMTP smuggling (CVE-2023-51764) safe:

    * the only end of data is <CR><LF>.<CR><LF>, the first <CR><LF> being the
      one that ended the DATA command line or the previous content line; so
      "<LF>.<LF>", "<CR>.<LF>", "<LF>.<CR><LF>", "<CR><LF>.<CR>" never end it;
    * bare <LF> is a line end (Postfix's smtpd_forbid_bare_newline=normalize);
      a lone "." line that is not the end of data is dropped, as Postfix does;
    * <CR><LF> becomes <LF>; a bare <CR> stays as it is; one leading "." is
      removed from lines that start with "." (dot-stuffing); 8-bit bytes and
      long lines pass unchanged;
    * beyond ``size_limit`` bytes the content is discarded while reading goes
      on to the end of data (``Data.too_big``), so the client gets its 552 in
      step with the protocol;
    * what the client sent after the end of data stays in the buffer for the
      next command.

REFUSES
    End of stream: ``asyncio.IncompleteReadError`` (``bytes_read`` tells how
    much DATA had arrived, for Postfix's "lost connection after DATA (N
    bytes)").
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

CHUNK = 65536
_END = b"\r\n.\r\n"


class ConnectionLost(asyncio.IncompleteReadError):
    """The client went away; bytes_read counts DATA bytes received so far."""

    def __init__(self, bytes_read: int = 0) -> None:
        super().__init__(b"", None)
        self.bytes_read = bytes_read


@dataclass
class Data:
    content: bytes  # LF line ends, un-dot-stuffed
    size: int  # bytes received, terminator excluded
    too_big: bool
    bare_lf: bool  # a bare <LF> was seen


class InputBuffer:
    """A client's unread input."""

    __slots__ = ("reader", "buf", "pos", "bare_lf", "timeout", "deadline", "timer", "task",
                 "expired", "loop")

    def __init__(self, reader: asyncio.StreamReader, timeout: float = 0.0) -> None:
        self.reader = reader
        self.buf = bytearray()
        self.pos = 0
        self.bare_lf = False
        self.timeout = timeout  # per read; TimeoutError when it passes
        self.deadline = 0.0  # while a read waits: when it times out
        self.timer: asyncio.TimerHandle | None = None
        self.task: asyncio.Task[object] | None = None
        self.expired = False
        self.loop: asyncio.AbstractEventLoop | None = None

    async def _read(self) -> bytes:
        """One read of up to CHUNK bytes; TimeoutError after ``timeout`` seconds.

        Instead of a timer per read (asyncio.timeout: an object, a timer armed
        and cancelled, per command), one timer per session is armed at the
        first read and, when it fires early, re-armed for the current read's
        deadline. The owner calls ``close()`` to drop it.
        """
        if not self.timeout:
            return await self.reader.read(CHUNK)
        loop = self.loop
        if loop is None:
            loop = self.loop = asyncio.get_running_loop()
        self.deadline = loop.time() + self.timeout
        if self.timer is None:
            self.task = asyncio.current_task(loop)
            self.timer = loop.call_at(self.deadline, self._on_timer)
        try:
            return await self.reader.read(CHUNK)
        except asyncio.CancelledError:
            if self.expired and self.task is not None:
                self.expired = False
                self.task.uncancel()
                raise TimeoutError from None
            raise
        finally:
            self.deadline = 0.0

    def _on_timer(self) -> None:
        self.timer = None
        if not self.deadline or self.task is None:
            return  # no read waits: the next one re-arms
        loop = self.loop
        assert loop is not None
        if loop.time() >= self.deadline:
            self.expired = True
            self.task.cancel()
        else:
            self.timer = loop.call_at(self.deadline, self._on_timer)

    def close(self) -> None:
        """Drop the timer (it would keep this buffer alive until it fires)."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.task = None

    def pending(self) -> bool:
        return len(self.buf) > self.pos

    def peek_line(self) -> bytes:
        """The start of the next pending input (for logging pipelining violations)."""
        end = self.buf.find(b"\n", self.pos)
        stop = end if end >= 0 else len(self.buf)
        return bytes(self.buf[self.pos:min(stop, self.pos + 100)]).rstrip(b"\r")

    async def _fill(self, data_bytes: int = 0) -> None:
        if self.pos:
            del self.buf[:self.pos]
            self.pos = 0
        chunk = await self._read()
        if not chunk:
            raise ConnectionLost(data_bytes)
        self.buf += chunk

    async def readline(self, limit: int) -> bytes:
        while True:
            end = self.buf.find(b"\n", self.pos)
            if end >= 0:
                break
            if len(self.buf) - self.pos > limit:
                line = bytes(self.buf[self.pos:self.pos + limit])
                self.pos = len(self.buf)
                await self._skip_rest_of_line()
                return line
            await self._fill()
        start = self.pos
        self.pos = end + 1
        if end > start and self.buf[end - 1] == 13:
            self.bare_lf = False
            end -= 1
        else:
            self.bare_lf = True
        if end - start > limit:
            end = start + limit
        return bytes(self.buf[start:end])

    async def _skip_rest_of_line(self) -> None:
        while True:
            await self._fill()
            end = self.buf.find(b"\n", self.pos)
            if end >= 0:
                self.pos = end + 1
                return
            self.pos = len(self.buf)

    async def read_data(self, size_limit: int) -> Data:
        """Read DATA through <CR><LF>.<CR><LF> (see the module docstring)."""
        # acc starts with the <CR><LF> that ended the DATA command line.
        acc = bytearray(b"\r\n")
        acc += self.buf[self.pos:]
        self.buf.clear()
        self.pos = 0
        search_from = 0
        dropped = 0  # bytes discarded because the message is too big
        too_big = False
        bare_lf = False
        while True:
            idx = acc.find(_END, search_from)
            if idx >= 0:
                break
            if size_limit and len(acc) > size_limit + 2:
                too_big = True
                bare_lf = bare_lf or _has_bare_lf(acc[:-4])
                keep = acc[-4:]
                dropped += len(acc) - 4
                acc = bytearray(keep)
            search_from = max(0, len(acc) - 4)
            chunk = await self._read()
            if not chunk:
                raise ConnectionLost(dropped + len(acc) - 2)
            acc += chunk
        self.buf += acc[idx + 5:]
        del acc[idx + 2:]
        size = dropped + len(acc) - 2
        if size_limit and size > size_limit:
            too_big = True
        bare_lf = bare_lf or _has_bare_lf(acc)
        if too_big:
            return Data(b"", size, True, bare_lf)
        return Data(_normalize(acc), size, False, bare_lf)


def _has_bare_lf(data: bytes | bytearray) -> bool:
    return data.count(b"\n") != data.count(b"\r\n")


def _normalize(acc: bytearray) -> bytes:
    """acc = <CR><LF> + raw lines (each ending in <CR><LF> or <LF>): LF lines, unstuffed."""
    text = bytes(acc).replace(b"\r\n", b"\n")
    # text starts with "\n" (the virtual line end before the first line).
    if b"\n.\n" in text:
        while b"\n.\n" in text:  # lone dots that did not end the data: dropped
            text = text.replace(b"\n.\n", b"\n")
    if b"\n." in text:
        text = text.replace(b"\n.", b"\n")
    return text[1:]
