"""smtpd input: command lines and DATA, read in bulk from one client stream.

NAME
    stream - the SMTP server's input buffer

SYNOPSIS
    buf = InputBuffer(reader)
    buf.attach(transport)                   # from now on the protocol calls buf.feed(data),
                                            # buf.feed_eof(exc) instead of the reader's
    line = await buf.readline(limit)        # one command line, terminator stripped
    buf.pending()                           # more input already here (pipelining check)
    data = await buf.read_data(size_limit, sink)  # DATA up to <CR><LF>.<CR><LF>,
                                            # passed on to sink in bounded pieces

DESCRIPTION
    The session owns its buffer (instead of asyncio's line reader) so that it
    can see whether a client pipelined more input, and so that DATA is read in
    large chunks and searched with C-speed ``find``/``replace`` instead of one
    Python call per line. Once attached (``attach``), the protocol hands what
    arrives straight to the buffer, without the StreamReader in between (what
    the reader held moves over); as with the reader, the transport stops
    reading while more than PAUSE_AT bytes wait unread, and resumes once a
    read took them.

    Command lines end in <LF>; a <CR> before it is dropped. ``bare_lf`` tells
    whether the last line ended in a bare <LF>. A line longer than ``limit``
    is returned truncated; the rest of it is read and discarded.

    DATA (``read_data``), SMTP smuggling (CVE-2023-51764) safe:

    * the only end of data is <CR><LF>.<CR><LF>, the first <CR><LF> being the
      one that ended the DATA command line or the previous content line; so
      "<LF>.<LF>", "<CR>.<LF>", "<LF>.<CR><LF>", "<CR><LF>.<CR>" never end it;
    * bare <LF> is a line end (Postfix's smtpd_forbid_bare_newline=normalize);
      a lone "." line that is not the end of data is dropped, as Postfix does;
      ``Data.bare_lf`` tells whether there was one, when the caller asked
      (``find_bare_lf``: only smtpd_forbid_bare_newline = reject needs it, and
      looking costs a scan of every byte);
    * <CR><LF> becomes <LF>; a bare <CR> stays as it is; one leading "." is
      removed from lines that start with "." (dot-stuffing); 8-bit bytes and
      long lines pass unchanged;
    * content is not held whole: once STREAM_AT bytes wait, the complete
      lines among them (or, inside a longer line, its part so far) go to the
      sink, so a session holds at most about STREAM_AT + CHUNK bytes of DATA;
    * beyond ``size_limit`` bytes the content is discarded while reading goes
      on to the end of data (``Data.too_big``), so the client gets its 552 in
      step with the protocol;
    * what the client sent after the end of data stays in the buffer for the
      next command.

REFUSES
    End of stream: ``asyncio.IncompleteReadError`` (``bytes_read`` tells how
    much DATA had arrived, for Postfix's "lost connection after DATA (N
    bytes)"); smtpd_timeout inside DATA: ``DataTimeout``, a TimeoutError with
    the same ``bytes_read`` (for "timeout after DATA (N bytes)").
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

CHUNK = 65536
PAUSE_AT = 2 * CHUNK  # attached: bytes received and not yet read that pause the transport
STREAM_AT = 65536  # DATA bytes that wait before a piece goes on
_END = b"\r\n.\r\n"
_BARE_CR = re.compile(rb"\r(?!\n)")
Sink = Callable[[bytes], Awaitable[None]]


class ConnectionLost(asyncio.IncompleteReadError):
    """The client went away; bytes_read counts DATA bytes received so far."""

    def __init__(self, bytes_read: int = 0) -> None:
        super().__init__(b"", None)
        self.bytes_read = bytes_read


class DataTimeout(TimeoutError):
    """smtpd_timeout passed inside DATA; bytes_read counts DATA bytes received so far."""

    def __init__(self, bytes_read: int) -> None:
        super().__init__()
        self.bytes_read = bytes_read


@dataclass
class Data:
    content: bytes  # LF line ends, un-dot-stuffed
    size: int  # bytes received, terminator excluded
    too_big: bool
    bare_lf: bool  # a bare <LF> was seen (False when not looked for)


class InputBuffer:
    """A client's unread input."""

    __slots__ = ("reader", "buf", "pos", "bare_lf", "timeout", "deadline", "timer", "task",
                 "expired", "loop", "attached", "transport", "inbox", "eof", "error", "waiter",
                 "paused")

    def __init__(self, reader: asyncio.StreamReader, timeout: float = 0.0,
                 loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.reader = reader
        self.buf = bytearray()
        self.pos = 0
        self.bare_lf = False
        self.timeout = timeout  # per read; TimeoutError when it passes
        self.deadline = 0.0  # while a read waits: when it times out
        self.timer: asyncio.TimerHandle | None = None
        self.task: asyncio.Task[object] | None = None
        self.expired = False
        self.loop = loop  # the running loop (None: found at the first read)
        self.attached = False  # the protocol feeds input here, the reader is done with
        self.transport: asyncio.BaseTransport | None = None
        self.inbox: bytes | bytearray = b""  # attached: received, not yet read
        self.eof = False
        self.error: BaseException | None = None  # how the connection was lost, if not cleanly
        self.waiter: asyncio.Future[None] | None = None
        self.paused = False

    def attach(self, transport: asyncio.BaseTransport | None) -> None:
        """Take input from feed()/feed_eof() from now on; what the reader holds moves
        here first."""
        reader = self.reader
        held = reader._buffer  # type: ignore[attr-defined]  # no public way to take it
        self.inbox = bytes(held)
        held.clear()
        self.eof = reader.at_eof()
        self.error = reader.exception()
        self.transport = transport
        self.attached = True
        if reader._paused:  # type: ignore[attr-defined]  # the transport stays paused: ours now
            reader._paused = False  # type: ignore[attr-defined]
            self.paused = True

    def feed(self, data: bytes) -> None:
        """What the connection received (the protocol's data_received)."""
        inbox = self.inbox
        if not inbox:
            self.inbox = data
        else:
            if not isinstance(inbox, bytearray):
                inbox = self.inbox = bytearray(inbox)
            inbox += data
            if len(inbox) > PAUSE_AT and not self.paused and self.transport is not None:
                try:
                    self.transport.pause_reading()  # type: ignore[attr-defined]
                    self.paused = True
                except (AttributeError, NotImplementedError, RuntimeError):
                    pass
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def feed_eof(self, error: BaseException | None = None) -> None:
        """The end of input (eof_received), or the connection lost (with its error)."""
        self.eof = True
        if error is not None and self.error is None:
            self.error = error
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _resume(self) -> None:
        self.paused = False
        transport = self.transport
        if transport is not None and not transport.is_closing():
            try:
                transport.resume_reading()  # type: ignore[attr-defined]
            except (AttributeError, NotImplementedError, RuntimeError):
                pass

    def _take(self) -> bytes:
        """Attached, the inbox not empty: up to CHUNK bytes of it."""
        data = self.inbox
        if len(data) > CHUNK:
            chunk = bytes(data[:CHUNK])
            if isinstance(data, bytearray):
                del data[:CHUNK]  # cheap: a bytearray drops its head in place
            else:
                self.inbox = data[CHUNK:]
        else:
            chunk = data if isinstance(data, bytes) else bytes(data)
            self.inbox = b""
        if self.paused and len(self.inbox) <= CHUNK:
            self._resume()
        return chunk

    async def _read(self) -> bytes:
        """One read of up to CHUNK bytes (b"" at the end); TimeoutError after
        ``timeout`` seconds. Attached, what the inbox holds, waiting for some.

        Instead of a timer per read (asyncio.timeout: an object, a timer armed
        and cancelled, per command), one timer per session is armed at the
        first read that waits and, when it fires early, re-armed for the current
        read's deadline. The owner calls ``close()`` to drop it. The wait is
        here, not in a coroutine of its own: one fewer to make and to resume
        through for every command line.
        """
        attached = self.attached
        if attached and self.inbox:  # here already: no wait, so no deadline
            return self._take()
        loop = self.loop
        if loop is None:
            loop = self.loop = asyncio.get_running_loop()
        if self.timeout:
            self.deadline = loop.time() + self.timeout
            if self.timer is None:
                self.task = asyncio.current_task(loop)
                self.timer = loop.call_at(self.deadline, self._on_timer)
        try:
            if not attached:
                return await self.reader.read(CHUNK)
            while not self.inbox:
                if self.error is not None:
                    raise self.error
                if self.eof:
                    return b""
                if self.paused:  # nothing left to read (STARTTLS dropped it): take more
                    self._resume()
                waiter = self.waiter = loop.create_future()
                try:
                    await waiter
                finally:
                    self.waiter = None
            return self._take()
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

    async def read_exact(self, count: int, sink: Sink | None) -> None:
        """The next ``count`` bytes, passed to ``sink`` (None: dropped) in pieces of at
        most CHUNK as they arrive (a BDAT chunk). ConnectionLost if the client goes."""
        while count:
            if self.pos >= len(self.buf):
                await self._fill()
            take = min(count, len(self.buf) - self.pos, CHUNK)
            if sink is not None:
                await sink(bytes(self.buf[self.pos:self.pos + take]))
            self.pos += take
            count -= take

    def discard(self) -> None:
        """Drop every byte received and not yet read (STARTTLS: plaintext sent ahead)."""
        self.buf.clear()
        self.pos = 0
        self.inbox = b""
        self.reader._buffer.clear()  # type: ignore[attr-defined]  # no public way to drop it

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
        buf = self.buf
        while True:
            end = buf.find(b"\n", self.pos)
            if end >= 0:
                break
            if len(buf) - self.pos > limit:
                line = bytes(buf[self.pos:self.pos + limit])
                self.pos = len(buf)
                await self._skip_rest_of_line()
                return line
            # _fill, inline: a coroutine fewer for every command line
            if self.pos:
                del buf[:self.pos]
                self.pos = 0
            chunk = await self._read()
            if not chunk:
                raise ConnectionLost(0)
            buf += chunk
        start = self.pos
        self.pos = end + 1
        if end > start and buf[end - 1] == 13:
            self.bare_lf = False
            end -= 1
        else:
            self.bare_lf = True
        if end - start > limit:
            end = start + limit
        return bytes(buf[start:end])

    async def _skip_rest_of_line(self) -> None:
        while True:
            await self._fill()
            end = self.buf.find(b"\n", self.pos)
            if end >= 0:
                self.pos = end + 1
                return
            self.pos = len(self.buf)

    async def read_data(self, size_limit: int, sink: Sink | None = None,
                        stream_at: int = STREAM_AT, find_bare_lf: bool = True) -> Data:
        """Read DATA through <CR><LF>.<CR><LF> (see the module docstring).

        Content is handed to ``sink`` in pieces as it arrives, once ``stream_at``
        bytes wait (a piece ends at a line end, or mid-line inside a line
        longer than that); ``Data.content`` is the rest. Without a sink the
        pieces are kept and joined (tests, small tools). ``find_bare_lf``
        False: ``Data.bare_lf`` stays False, and no byte is scanned for it.
        """
        kept: list[bytes] = []
        if sink is None:
            async def keep(piece: bytes) -> None:
                kept.append(piece)
            sink = keep
        # acc starts with the line end before its first content byte (``lead``
        # bytes: at first the <CR><LF> that ended the DATA command line), or
        # with no lead when a long line was cut in the middle.
        acc = bytearray(b"\r\n")
        acc += self.buf[self.pos:]
        self.buf.clear()
        self.pos = 0
        lead = 2
        search_from = 0
        size = 0  # content bytes received before acc[lead:]
        too_big = False
        bare_lf = False
        while True:
            # "." first: one memchr pass, where the five-byte search is forty times
            # slower and content without a dot (base64) is common
            idx = acc.find(_END, search_from) if acc.find(b".", search_from) >= 0 else -1
            if idx >= 0:
                break
            if len(acc) >= stream_at:
                if size_limit and size + len(acc) - lead > size_limit:
                    too_big = True
                if too_big:  # discard, but keep what may be the start of the end
                    drop = len(acc) - 4
                    if drop > lead:
                        size += drop - lead
                        del acc[:drop]
                        lead = 0
                elif (where := _cut(acc, lead)) is not None:
                    cut, piece_end = where
                    with memoryview(acc) as view:
                        piece = bytes(view[:piece_end])
                    if find_bare_lf and not bare_lf:
                        bare_lf = _has_bare_lf(piece)
                    size += piece_end - lead
                    await sink(_normalize(piece, lead))
                    lead = piece_end - cut
                    del acc[:cut]
            search_from = max(0, len(acc) - 4)
            try:
                chunk = await self._read()
            except TimeoutError:
                raise DataTimeout(size + len(acc) - lead) from None
            if not chunk:
                raise ConnectionLost(size + len(acc) - lead)
            acc += chunk
        self.buf += acc[idx + 5:]
        del acc[idx + 2:]
        size += len(acc) - lead
        if too_big or (size_limit and size > size_limit):
            return Data(b"", size, True, bare_lf)
        if find_bare_lf and not bare_lf:
            bare_lf = _has_bare_lf(acc)
        rest = _normalize(bytes(acc), lead)
        if kept:
            kept.append(rest)
            rest = b"".join(kept)
        return Data(rest, size, False, bare_lf)


def _cut(acc: bytearray, lead: int) -> tuple[int, int] | None:
    """Where to cut a long acc: (start of what stays, end of the piece that goes).

    After the last line end: the piece ends with that line end, and what stays
    starts with it (the next piece's lead, so that <CR><LF>.<CR><LF> is still
    seen whole). With no line end (one long line), in the middle: what stays
    keeps a trailing <CR>, which may begin a <CR><LF>. None while the line
    is too short to tell: its start must go with the piece (for
    dot-stuffing), and "." or ".<CR>" after a <CR><LF> lead may still become
    the end of data.
    """
    nl = acc.rfind(b"\n", lead)
    if nl >= 0:
        cut = nl - 1 if nl > 0 and acc[nl - 1] == 13 else nl
        return cut, nl + 1
    if len(acc) - lead < 3:
        return None
    end = len(acc) - 1 if acc[-1] == 13 else len(acc)
    return end, end


def _has_bare_lf(data: bytes | bytearray) -> bool:
    # an LF left once every <CR><LF> is gone (replace and find: a fourth of count(b"\n"))
    return b"\n" in data.replace(b"\r\n", b"")


def _normalize(raw: bytes, lead: int) -> bytes:
    """Raw DATA lines (each ending in <CR><LF> or <LF>, the last maybe unfinished),
    after ``lead`` bytes of line end (0: they continue a line): LF lines, unstuffed."""
    # The lead, <CR><LF> or <LF>, becomes the "\n" before the first line; with no
    # lead the first byte continues a line, and no "\n" stands before it.
    # Byte searches run at memchr speed and two-byte ones ten times slower: with no
    # bare <CR>, dropping every <CR> is the same as <CR><LF> -> <LF>; and content
    # without a "." (base64) needs no look for dot-stuffing.
    if _BARE_CR.search(raw) is None:
        text = raw.replace(b"\r", b"")
    else:
        text = raw.replace(b"\r\n", b"\n")
    if b"." in text and b"\n." in text:
        while b"\n.\n" in text:  # lone dots that did not end the data: dropped
            text = text.replace(b"\n.\n", b"\n")
        text = text.replace(b"\n.", b"\n")
    return text[1:] if lead else text
