"""BDAT (RFC 3030) content: the chunks of one message, passed on as LF lines.

``Chunks(message, size_limit)`` takes each chunk's bytes as they arrive
(``feed``, the sink of ``stream.InputBuffer.read_exact``) and passes them on
to the message (``handler.QueueMessage``) in bounded pieces:

* <CR><LF> and a bare <LF> end a line (a bare <LF> is counted in
  ``bare_lf``, for smtpd_forbid_bare_newline = reject); lines go on with
  <LF> ends, as DATA's do; a bare <CR> stays content; there is no
  dot-stuffing and no end-of-data line (the count says where a chunk ends);
* ``size`` is Postfix's count for the ``250 2.0.0 Ok: N bytes queued as
  ID`` reply to BDAT LAST: every line counts its text plus 2, so a message
  whose lines all end in <CR><LF> counts its bytes, and an unfinished last
  line is finished with <CR><LF>, as Postfix does (``end``);
* beyond ``size_limit`` (message_size_limit) nothing more goes on
  (``too_big``); the message is withdrawn.

``fail()`` withdraws the message; ``failed`` chunks that follow are read and
dropped (Postfix's ``551 5.0.0 Discarded N bytes after earlier error``).
"""

from __future__ import annotations

from pymailsys.daemons.smtpd.handler import QueueMessage

PIECE = 65536  # content that waits before it goes on to the message


class Chunks:
    __slots__ = ("message", "size_limit", "size", "bare_lf", "too_big", "failed", "_cr",
                 "_pending", "_at_line_start")

    def __init__(self, message: QueueMessage | None, size_limit: int) -> None:
        self.message = message
        self.size_limit = size_limit
        self.size = 0
        self.bare_lf = False
        self.too_big = False
        self.failed = message is None
        self._cr = False  # the last byte fed was a <CR> (maybe half of a <CR><LF>)
        self._pending = bytearray()  # converted content not yet passed on
        self._at_line_start = True

    async def feed(self, raw: bytes) -> None:
        if self.failed or self.too_big or not raw:
            return
        data = raw
        if self._cr:
            data = b"\r" + data
        self._cr = data.endswith(b"\r")
        if self._cr:
            data = data[:-1]
        crlf = data.count(b"\r\n")
        lf = data.count(b"\n")
        if lf != crlf:
            self.bare_lf = True
        # text bytes plus 2 per line end: <CR><LF> counts as it is, a bare <LF> as 2
        self.size += len(data) + (lf - crlf)
        text = data.replace(b"\r\n", b"\n") if crlf else data
        if text:
            self._at_line_start = text.endswith(b"\n")
        self._pending += text
        if self.size_limit and self.size > self.size_limit:
            self.too_big = True
            self.fail()
            return
        if len(self._pending) >= PIECE and self.message is not None:
            piece = bytes(self._pending)
            self._pending.clear()
            await self.message.feed(piece)

    def end(self) -> tuple[bytes, int, bool]:
        """After LAST: (the rest of the content, Postfix's byte count, bare <LF> seen)."""
        if self._cr:  # a <CR> at the very end is text
            self._pending += b"\r"
            self.size += 1
            self._cr = False
            self._at_line_start = False
        if not self._at_line_start:  # the unfinished last line gets its end
            self._pending += b"\n"
            self.size += 2
            self._at_line_start = True
        rest = bytes(self._pending)
        self._pending.clear()
        return rest, self.size, self.bare_lf

    def fail(self) -> None:
        self.failed = True
        self.abort()

    def abort(self) -> None:
        self._pending.clear()
        if self.message is not None:
            self.message.abort()
            self.message = None
