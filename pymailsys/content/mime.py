"""Which lines of a message are MIME part headers, attached-message headers or body.

Postfix's mime_state, reduced to what the content checks need: the caller
feeds each header block's complete headers (``header``), says when a header
block ends (``end_headers``) and hands every line of the body state to
``body_line``; ``state`` then says whether the next lines are ``BODY``, the
headers of a multipart part (``MULTIPART``: mime_header_checks) or the
headers of an attached message (``NESTED``: nested_header_checks).

* ``Content-Type: multipart/...; boundary=B`` opens a multipart body: a body
  line ``--B`` starts a part (its header block follows), ``--B--`` ends it;
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
to (cleanup does when header checks are in use, as Postfix's
MIME_OPT_REPORT_NESTING).
"""

from __future__ import annotations

import re

BODY = "body"
MULTIPART = "multipart"
NESTED = "nested"

_TYPE = re.compile(rb"[ \t\n]*([!-~]+?)[ \t\n]*(?:;|$)")
_BOUNDARY = re.compile(rb"""[;\s]boundary[ \t\n]*=[ \t\n]*(?:"([^"]*)"|([^\s;"]+))""", re.I)
_NESTED_TYPES = (b"message/rfc822", b"message/global")


class MimeState:
    def __init__(self, nesting_limit: int = 100, boundary_limit: int = 2048,
                 disabled: bool = False) -> None:
        self.disabled = disabled  # disable_mime_input_processing: all is body after the top
        self.nesting_limit = max(nesting_limit, 0)
        self.boundary_limit = max(boundary_limit, 1)  # mime_boundary_length_limit
        self.boundaries: list[bytes] = []
        self._digests: list[bool] = []  # per boundary: a multipart/digest (parts default to message/rfc822)
        self.state = BODY
        self._nested = False  # the header block in progress announced an attached message
        self._boundary: bytes | None = None  # ... or a multipart body with this boundary
        self._digest = False  # ... that is a multipart/digest

    def header(self, lines: list[bytes]) -> bool:
        """One complete header of the header block in progress (its lines, no line ends);
        True when it opens a multipart deeper than the nesting limit allows."""
        first = lines[0]
        if self.disabled or not first[:13].lower().startswith(b"content-type"):
            return False
        name, colon, value = first.partition(b":")
        if not colon or name.rstrip(b" \t").lower() != b"content-type":
            return False
        value = b"\n".join([value, *lines[1:]])
        m = _TYPE.match(value)
        kind = m.group(1).lower() if m else b""
        self._nested = kind in _NESTED_TYPES
        self._boundary = None
        self._digest = kind == b"multipart/digest"
        if kind.startswith(b"multipart/"):
            b = _BOUNDARY.search(b";" + value)
            if b is not None:
                if len(self.boundaries) > self.nesting_limit + 1:
                    return True
                found = b.group(1) if b.group(1) is not None else b.group(2)
                self._boundary = found[:self.boundary_limit]
        return False

    def end_headers(self, blank: bool = True) -> None:
        """The header block in progress ended (at an empty line when blank):
        what its Content-Type says comes next."""
        nested, boundary, digest = self._nested, self._boundary, self._digest
        self._nested, self._boundary, self._digest = False, None, False
        if nested and blank:
            self.state = NESTED
            return
        self.state = BODY
        if boundary:
            self.boundaries.append(boundary)
            self._digests.append(digest)

    def body_line(self, line: bytes) -> bool:
        """One body line; True when it is a boundary that starts a part (headers follow)."""
        if not self.boundaries or not line.startswith(b"--"):
            return False
        for depth in range(len(self.boundaries) - 1, -1, -1):
            b = self.boundaries[depth]
            if line.startswith(b, 2):
                rest = line[2 + len(b):]
                if rest.startswith(b"--"):
                    del self.boundaries[depth:], self._digests[depth:]
                    return False
                del self.boundaries[depth + 1:], self._digests[depth + 1:]
                self.state = MULTIPART
                self._nested = self._digests[depth]  # the part's default Content-Type
                return True
        return False
