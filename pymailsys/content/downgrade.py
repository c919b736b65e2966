"""8-bit MIME content made 7-bit for a server that does not offer 8BITMIME.

Postfix's mime_state with MIME_OPT_DOWNGRADE | MIME_OPT_REPORT_NESTING, as its
smtp client uses it when disable_mime_output_conversion is off, the server
does not announce 8BITMIME and the message was not declared 7bit.

``Downgrade(limits)``: ``feed(chunk)`` takes the message (lines ending in LF,
a line possibly split between chunks) and returns the converted text ready so
far, ``end()`` the rest. What changes, as in Postfix:

* a header block (the primary one, a multipart part's, an attached
  message's) whose Content-Transfer-Encoding is 8bit or binary loses that
  header and gets ``Content-Transfer-Encoding: quoted-printable`` after its
  last header (``7bit`` for a multipart or a message other than
  message/global), and its body is quoted-printable encoded: every byte
  outside 33-126 but space and TAB, and every ``=``, becomes ``=XY``; a line
  gets a soft break (``=``) before the character that follows 73 or more
  output characters; a space or TAB that ends a line is encoded;
* ``Name : value`` becomes ``Name: value``; a primary header block that ends
  at a line that is not empty gets an empty line after it;
* everything else (7-bit parts, base64, headers with 8-bit bytes) goes as it
  came.

The MIME structure is followed as cleanup's ``pymailsys.content.mime`` does:
Content-Type multipart/* with boundary= opens parts (a multipart/digest's
parts default to message/rfc822), message/rfc822 starts with a header block.
A multipart deeper than mime_nesting_limit allows raises ``MimeError``
(5.6.0 "MIME nesting exceeds safety limit": the message bounces, as Postfix's
smtp_mime_fail). Bounded: a line goes through in pieces of at most PIECE
bytes (as Postfix's queue-file records), a header keeps at most
header_size_limit bytes (the rest of a longer one is dropped, as Postfix's
mime_state does), at most mime_nesting_limit + 2 boundaries of at most
mime_boundary_length_limit bytes are remembered.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

PIECE = 4096  # bytes of a long line handled at a time

# content types and subtypes (Postfix's MIME_CTYPE_*, MIME_STYPE_*)
_TEXT, _MESSAGE, _MULTIPART, _OTHER = range(4)
_PLAIN, _OTHER_SUB, _RFC822, _PARTIAL, _EXTERNAL, _GLOBAL = range(6)
# encodings, which are domains too when they say nothing more than that
_7BIT, _8BIT, _BINARY, _QP, _BASE64 = range(5)
_ENCODINGS = {b"7bit": (_7BIT, _7BIT), b"8bit": (_8BIT, _8BIT), b"binary": (_BINARY, _BINARY),
              b"base64": (_BASE64, _7BIT), b"quoted-printable": (_QP, _7BIT)}
_MESSAGE_SUBTYPES = {b"rfc822": _RFC822, b"partial": _PARTIAL, b"external-body": _EXTERNAL,
                     b"global": _GLOBAL}
# header states (Postfix's MIME_STATE_*)
_PRIMARY, _PART, _NESTED, _BODY = range(4)

_HEADER_NAME = re.compile(rb"([!-9;-~]+)[ \t]*:")
_TOKEN = rb'[^\x00- ()<>@,;:\\"/\[\]?=\x7f-\xff]+'
_TYPE = re.compile(rb"[ \t\n]*(" + _TOKEN + rb")[ \t\n]*(?:/[ \t\n]*(" + _TOKEN + rb"))?")
_BOUNDARY = re.compile(rb"""[;\s]boundary[ \t\n]*=[ \t\n]*(?:"([^"]*)"|([^\s;"]+))""", re.I)
_QP_ESCAPE = re.compile(rb"[^\t -<>-~]")


def _qp_escape(m: re.Match[bytes]) -> bytes:
    return b"=%02X" % m.group()[0]


class MimeError(Exception):
    """The content cannot be converted: ``dsn`` and ``text`` say why (the message bounces)."""

    def __init__(self, dsn: str, text: str) -> None:
        super().__init__(text)
        self.dsn = dsn
        self.text = text


@dataclass(frozen=True)
class Limits:
    nesting: int = 100  # mime_nesting_limit
    boundary: int = 2048  # mime_boundary_length_limit
    header: int = 102400  # header_size_limit


class Downgrade:
    def __init__(self, limits: Limits | None = None) -> None:
        self.limits = limits or Limits()
        self.state = _PRIMARY
        self.ctype, self.stype, self.encoding, self.domain = _TEXT, _PLAIN, _7BIT, _7BIT
        self.stack: list[tuple[int, int, bytes]] = []  # (default type, subtype, boundary)
        self.header: list[bytes] = []  # the header being collected, its lines
        self.header_len = 0
        self.prev_cont = False  # the last piece did not end its line
        self.qp = b""  # encoded output of a line in progress (quoted-printable)
        self.partial = b""
        self.out: list[bytes] = []

    def feed(self, chunk: bytes) -> bytes:
        data = self.partial + chunk if self.partial else chunk
        lines = data.split(b"\n")
        last = lines.pop()
        for line in lines:
            while len(line) > PIECE:
                self._record(line[:PIECE], True)
                line = line[PIECE:]
            self._record(line, False)
        while len(last) > PIECE:
            self._record(last[:PIECE], True)
            last = last[PIECE:]
        self.partial = last
        return self._take()

    def end(self) -> bytes:
        if self.partial or self.prev_cont:  # a last line without LF is ended
            self._record(self.partial, False)
            self.partial = b""
        if self.state != _BODY:
            self._flush_header()
            self._end_of_headers()
        return self._take()

    def _take(self) -> bytes:
        out = b"".join(self.out)
        self.out = []
        return out

    # -- headers -----------------------------------------------------------------------------

    def _record(self, text: bytes, cont: bool) -> None:
        """One line, or one piece of a long line (cont: the line goes on)."""
        if self.state != _BODY:
            if self.header:
                if self.prev_cont or text[:1] in (b" ", b"\t"):
                    if self.header_len < self.limits.header:
                        if self.prev_cont:
                            self.header[-1] += text
                        else:
                            self.header.append(text)
                        self.header_len += len(text) + (not self.prev_cont)
                    self.prev_cont = cont
                    return
                self._flush_header()
            m = _HEADER_NAME.match(text)
            if m is not None:
                rest = text[m.end(1):].lstrip(b" \t")  # "Name : value" -> "Name: value"
                self.header = [m.group(1) + rest]
                self.header_len = len(self.header[0])
                self.prev_cont = cont
                return
            self._end_of_headers()
            if text or cont:  # a header block that ends at a line that is not empty
                if self.state == _PRIMARY:
                    self.out.append(b"\n")
                self.state = _BODY
            else:
                self._after_empty_line()
        self._body(text, cont)

    def _flush_header(self) -> None:
        lines = self.header
        if not lines:
            return
        self.header, self.header_len = [], 0
        name, _, value = lines[0].partition(b":")
        name = name.lower()
        value = b"\n".join([value, *lines[1:]])
        if name == b"content-type":
            self._content_type(value)
        elif name == b"content-transfer-encoding":
            m = _TYPE.match(value)
            found = _ENCODINGS.get(m.group(1).lower()) if m else None
            if found is not None:
                self.encoding, self.domain = found
            if self.domain != _7BIT:
                return  # replaced at the end of the header block
        self.out.append(b"\n".join(lines) + b"\n")

    def _content_type(self, value: bytes) -> None:
        m = _TYPE.match(value)
        if m is None:
            return
        kind = m.group(1).lower()
        sub = (m.group(2) or b"").lower()
        if kind == b"text":
            self.ctype, self.stype = _TEXT, _PLAIN if sub == b"plain" else _OTHER_SUB
        elif kind == b"message":
            self.ctype, self.stype = _MESSAGE, _MESSAGE_SUBTYPES.get(sub, _OTHER_SUB)
        elif kind == b"multipart":
            self.ctype = _MULTIPART
            default = (_MESSAGE, _RFC822) if sub == b"digest" else (_TEXT, _PLAIN)
            for b in _BOUNDARY.finditer(b";" + value):
                if len(self.stack) > self.limits.nesting + 1:
                    raise MimeError("5.6.0", "MIME nesting exceeds safety limit")
                boundary = b.group(1) if b.group(1) is not None else b.group(2)
                self.stack.append((*default, boundary[:self.limits.boundary]))
        else:
            self.ctype = _OTHER

    def _end_of_headers(self) -> None:
        """A header block ended: the encoding header that replaces an 8-bit one."""
        if self.domain != _7BIT:
            seven = (self.ctype == _MESSAGE and self.stype != _GLOBAL) or self.ctype == _MULTIPART
            self.out.append(b"Content-Transfer-Encoding: "
                            + (b"7bit\n" if seven else b"quoted-printable\n"))

    def _after_empty_line(self) -> None:
        """What follows the empty line that ended a header block."""
        if self.ctype == _MESSAGE and (self.stype == _RFC822 or (
                self.stype == _GLOBAL and self.domain == _7BIT)):
            self._set(_NESTED, _TEXT, _PLAIN)
        elif self.ctype == _MULTIPART:
            self._set(_BODY, _OTHER, _OTHER_SUB)
        else:
            self.state = _BODY

    def _set(self, state: int, ctype: int, stype: int) -> None:
        self.state, self.ctype, self.stype = state, ctype, stype
        self.encoding = self.domain = _7BIT

    # -- bodies ------------------------------------------------------------------------------

    def _body(self, text: bytes, cont: bool) -> None:
        if self.stack and not self.prev_cont and len(text) > 2 and text[:2] == b"--":
            for depth in range(len(self.stack) - 1, -1, -1):
                ctype, stype, boundary = self.stack[depth]
                if text.startswith(boundary, 2):
                    del self.stack[depth + 1:]
                    if text.startswith(b"--", 2 + len(boundary)):
                        del self.stack[depth]
                        self._set(_BODY, _OTHER, _OTHER_SUB)
                    else:
                        self._set(_PART, ctype, stype)
                    break
        self.prev_cont = cont
        if self.domain == _7BIT:
            self.out.append(text if cont else text + b"\n")
        else:
            self._quoted_printable(text, cont)

    def _quoted_printable(self, text: bytes, cont: bool) -> None:
        """Postfix's mime_state_downgrade: a soft line break before the character that
        follows 73 or more output characters; a space or TAB that ends a line encoded."""
        data = self.qp + _QP_ESCAPE.sub(_qp_escape, text)
        start = 0
        while True:
            cut = start + 73
            while cut < len(data) and (data[cut - 1] == 61 or data[cut - 2] == 61):
                cut += 1  # not inside an =XY
            if cut >= len(data):
                break
            self.out.append(data[start:cut] + b"=\n")
            start = cut
        rest = data[start:]
        if cont:
            self.qp = rest
            return
        self.qp = b""
        if rest[-1:] in (b" ", b"\t"):
            rest = rest[:-1] + b"=%02X" % rest[-1]
        self.out.append(rest + b"\n")
