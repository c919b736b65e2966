"""Which lines of a message are MIME part headers, attached-message headers or body.

Postfix's mime_state, reduced to what the content checks need: the caller
feeds each header block's complete headers (``header``), says when a header
block ends (``end_headers``) and hands every line of the body state to
``body_line``; ``state`` then says whether the next lines are ``BODY``, the
headers of a multipart part (``MULTIPART``: mime_header_checks) or the
headers of an attached message (``NESTED``: nested_header_checks).

* ``Content-Type: multipart/...; boundary=B`` opens a multipart body: a body
  line ``--B`` starts a part (its header block follows), ``--B--`` ends it;
  each such header of a header block, and each boundary= of one, opens one
  (Postfix's mime_state pushes them all), the last Content-Type giving the type;
  a boundary of an enclosing multipart also closes the inner ones;
* ``Content-Type: message/rfc822`` (or message/global) makes the body, or the
  part's body, an attached message: a header block first, whatever its
  Content-Transfer-Encoding says (Postfix parses the headers of a base64
  message/rfc822 too);
* a part of a ``multipart/digest`` without a Content-Type of its own is a
  message/rfc822 (RFC 2046 5.1.5), other parts are text/plain;
* a header block ends at an empty line or at the first line that is neither
  a header nor a continuation (the caller decides that and calls
  ``end_headers(blank)``); only one that ended at an empty line can be
  followed by an attached message's headers, as in Postfix's mime_state.

With ``disabled`` (disable_mime_input_processing) no Content-Type is
followed: every line after the primary header block is body, as Postfix's
MIME_OPT_DISABLE_MIME.

Bounded: at most ``nesting_limit`` + 2 boundaries are remembered, as in
Postfix's mime_state (whose depth counter starts at -1 and is compared with
the limit before each push), each cut at ``boundary_limit`` bytes
(mime_boundary_length_limit: a line that starts with the cut boundary matches,
as in Postfix); the work per line
is linear in its length times the nesting depth. A multipart header that would
go deeper is not followed (its parts are body text) and ``header`` returns True:
the caller reports Postfix's "MIME nesting exceeds safety limit" when it wants
to (cleanup does when header checks or a strict_* setting are in use, as
Postfix's MIME_OPT_REPORT_NESTING).

The Content-Transfer-Encoding of each header block is followed as Postfix's
mime_state does (7bit, 8bit, binary, base64, quoted-printable; anything else
leaves it as it was): ``seven_bit`` says whether the body lines that follow
are announced as (or default to) 7bit (not 8bit, binary, base64 or
quoted-printable), for strict_8bitmime_body; a new part,
an attached message's header block and a multipart's own body start again at
7bit. With ``check_domain`` (strict_mime_encoding_domain) ``end_headers``
returns the encoding a multipart, message/rfc822, message/partial or
message/external-body must not have (Postfix's MIME_ERR_ENCODING_DOMAIN).
"""

from __future__ import annotations

import re

BODY = "body"
MULTIPART = "multipart"
NESTED = "nested"

_TYPE = re.compile(rb"[ \t\n]*([!-~]+?)[ \t\n]*(?:;|$)")
_BOUNDARY = re.compile(rb"""[;\s]boundary[ \t\n]*=[ \t\n]*(?:"([^"]*)"|([^\s;"]+))""", re.I)
_NESTED_TYPES = (b"message/rfc822", b"message/global")
_ENCODING = re.compile(rb"[ \t\n]*([^\x00- ()<>@,;:\\\"/\[\]?=\x7f-\xff]+)")
# RFC 2045's encodings -> their domain (8bit, binary and 7bit are their own)
_DOMAINS = {b"7bit": b"7bit", b"8bit": b"8bit", b"binary": b"binary", b"base64": b"7bit",
            b"quoted-printable": b"7bit"}
_IDENTITY_ONLY = (b"message/rfc822",)  # may not say base64 or quoted-printable
_SEVEN_BIT_ONLY = (b"message/partial", b"message/external-body")  # may say only 7bit


class MimeState:
    def __init__(self, nesting_limit: int = 100, boundary_limit: int = 2048,
                 disabled: bool = False, check_domain: bool = False) -> None:
        self.check_domain = check_domain  # strict_mime_encoding_domain
        self.disabled = disabled  # disable_mime_input_processing: all is body after the top
        self.nesting_limit = max(nesting_limit, 0)
        self.boundary_limit = max(boundary_limit, 1)  # mime_boundary_length_limit
        self.boundaries: list[bytes] = []
        self._digests: list[bool] = []  # per boundary: a multipart/digest (parts default to message/rfc822)
        self.state = BODY
        self._nested = False  # the header block in progress announced an attached message
        # ... and the multipart boundaries its Content-Type headers gave (each header's,
        # each boundary= of one: Postfix's mime_state pushes them all), with whether
        # that multipart is a multipart/digest
        self._pending: list[tuple[bytes, bool]] = []
        self._kind = b""  # ... whose Content-Type is this type/subtype (lower case)
        self.encoding = b"7bit"  # the Content-Transfer-Encoding of the block, then of its body
        self.seven_bit = True  # that encoding's domain is 7bit

    def _encoding_header(self, first: bytes, lines: list[bytes]) -> None:
        """A Content-Transfer-Encoding header: its encoding, when it is one RFC 2045 names."""
        name, colon, value = first.partition(b":")
        if not colon or name.rstrip(b" \t").lower() != b"content-transfer-encoding":
            return
        m = _ENCODING.match(b"\n".join([value, *lines[1:]]))
        encoding = m.group(1).lower() if m else b""
        if encoding in _DOMAINS:
            self.encoding = encoding
            self.seven_bit = encoding == b"7bit"

    def _reset_encoding(self) -> None:
        self.encoding = b"7bit"
        self.seven_bit = True

    def header(self, lines: list[bytes]) -> bool:
        """One complete header of the header block in progress (its lines, no line ends);
        True when it opens a multipart deeper than the nesting limit allows."""
        first = lines[0]
        if self.disabled or first[:8].lower() != b"content-":
            return False
        if first[8:12].lower() != b"type":
            if first[8:17].lower() == b"transfer-":
                self._encoding_header(first, lines)
            return False
        name, colon, value = first.partition(b":")
        if not colon or name.rstrip(b" \t").lower() != b"content-type":
            return False
        value = b"\n".join([value, *lines[1:]])
        m = _TYPE.match(value)
        kind = m.group(1).lower() if m else b""
        self._kind = kind
        self._nested = kind in _NESTED_TYPES
        if kind.startswith(b"multipart/"):
            digest = kind == b"multipart/digest"
            for b in _BOUNDARY.finditer(b";" + value):
                if len(self.boundaries) + len(self._pending) > self.nesting_limit + 1:
                    return True
                found = b.group(1) if b.group(1) is not None else b.group(2)
                if found:
                    self._pending.append((found[:self.boundary_limit], digest))
        return False

    def end_headers(self, blank: bool = True) -> bytes:
        """The header block in progress ended (at an empty line when blank):
        what its Content-Type says comes next. With ``check_domain``, the
        encoding it should not have said (b"": none)."""
        nested, pending, kind = self._nested, self._pending, self._kind
        self._nested, self._pending, self._kind = False, [], b""
        wrong = b""
        if self.check_domain and kind:
            encoding = self.encoding
            if kind.startswith(b"multipart/") or kind in _IDENTITY_ONLY:
                wrong = encoding if _DOMAINS[encoding] != encoding else b""
            elif kind in _SEVEN_BIT_ONLY and _DOMAINS[encoding] != b"7bit":
                wrong = encoding
        for boundary, digest in pending:
            self.boundaries.append(boundary)
            self._digests.append(digest)
        if nested and blank:
            self.state = NESTED
            self._reset_encoding()
            return wrong
        self.state = BODY
        if blank and kind.startswith(b"multipart/"):  # the prolog: 7bit
            self._reset_encoding()
        return wrong

    def body_line(self, line: bytes) -> bool:
        """One body line; True when it is a boundary that starts a part (headers follow)."""
        if not self.boundaries or not line.startswith(b"--"):
            return False
        for depth in range(len(self.boundaries) - 1, -1, -1):
            b = self.boundaries[depth]
            if line.startswith(b, 2):
                rest = line[2 + len(b):]
                self._reset_encoding()
                if rest.startswith(b"--"):
                    del self.boundaries[depth:], self._digests[depth:]
                    return False
                del self.boundaries[depth + 1:], self._digests[depth + 1:]
                self.state = MULTIPART
                self._nested = self._digests[depth]  # the part's default Content-Type
                self._kind = b"message/rfc822" if self._nested else b""
                return True
        return False
