"""message - sendmail's input: the message on standard input and its addresses.

``read_text`` reads the message as Postfix's sendmail does (rec_streamlf_get):
a piece of at most line_length_limit bytes at a time, so no line, however
long, is ever whole in memory; ``Recipients`` implements ``sendmail -t`` as the
pieces go by (To/Cc/Bcc, or the Resent- set when present; Bcc headers
removed), holding one header at a time; addresses in a header value or
command-line argument are ``rfc822.address_list``'s (Postfix's tok822
rules); ``parse_sender`` reads the ``-f`` value. No I/O but the stream
handed in.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO

from pymailsys import rfc822

Piece = tuple[bytes, bool]  # text without its LF, and whether it ends the line


class InputError(Exception):
    """Standard input could not be read."""


FIX_EOL = {"always": True, "strict": None, "never": False}  # sendmail_fix_line_endings


def read_text(stream: BinaryIO, dot_rule: bool, line_limit: int = 2048,
              fix_eol: str = "always") -> Iterator[Piece]:
    """The message on ``stream`` in pieces of at most ``line_limit`` bytes, as
    Postfix's sendmail reads it: (text, ends_line), the LF dropped.

    Stops at end of file, or at a line with a lone "." when dot_rule; drops
    CRs at line ends as sendmail_fix_line_endings (``fix_eol``, a key of FIX_EOL)
    says: from every line (always), from every line when the first line ends in
    CRLF (strict), or never; skips leading ``From `` (and ``>From ``) lines. A
    line longer than line_limit comes in pieces, all but the last with ends_line
    false.
    """
    strip_cr = FIX_EOL[fix_eol]
    skip_from = True
    continued = False  # the previous piece did not end its line
    limit = max(line_limit, 1)
    while True:
        try:
            raw = stream.readline(limit)
        except OSError as e:
            raise InputError(e.strerror or str(e)) from e
        if not raw:
            return
        ends = raw.endswith(b"\n")
        text = raw[:-1] if ends else raw
        if ends and strip_cr is None:
            strip_cr = text.endswith(b"\r")
        if skip_from:
            if ends and not continued and text.lstrip(b">").startswith(b"From "):
                continue
            skip_from = False
        if ends and strip_cr:
            text = text.rstrip(b"\r")
        if dot_rule and ends and not continued and text == b".":
            return
        # a last line without LF ends the message: it is a line all the same
        ends = ends or len(raw) < limit
        yield text, ends
        continued = not ends


RCPT_HEADERS = ("to", "cc", "bcc")
RESENT_HEADERS = ("resent-to", "resent-cc", "resent-bcc")
BCC_HEADERS = ("bcc", "resent-bcc")


class HeaderTooLong(Exception):
    """A header of the message is longer than the limit ``Recipients`` was given."""


class TooManyRecipients(Exception):
    """The headers name more recipients than the limit ``Recipients`` was given."""


class Recipients:
    """sendmail -t, as the message goes by: ``feed`` each piece and pass on what it
    returns, then ``end``; ``addresses()`` are the recipients from To/Cc/Bcc, or
    from Resent-To/Cc/Bcc when there is any Resent- one of those. Bcc and
    Resent-Bcc headers are not passed on. One header is held at a time, at most
    ``header_limit`` bytes (``HeaderTooLong``), and at most ``max_addresses``
    addresses are kept (``TooManyRecipients`` at the header that goes over), so that
    memory does not grow with the headers; after the headers, pieces pass straight
    through."""

    def __init__(self, header_limit: int = 102400, max_addresses: int = 0) -> None:
        self.header_limit = header_limit
        self.max_addresses = max_addresses
        self.in_headers = True
        self.held: list[Piece] = []  # the header being read, its lines in pieces
        self.held_size = 0
        self.line_open = False  # the last held piece did not end its line
        self.found: dict[bool, list[str]] = {False: [], True: []}  # resent or not
        self.resent = False

    def feed(self, piece: Piece) -> list[Piece]:
        if not self.in_headers:
            return [piece]
        text, ends = piece
        if self.line_open:  # the rest of a held line
            return self._hold(piece)
        if self.held and text[:1] in (b" ", b"\t"):  # a continuation line
            return self._hold(piece)
        out = self._release()
        name, sep, _ = text.partition(b":")
        if text == b"" or not sep or not name.strip() or b" " in name.strip() \
                or text[:1] in (b" ", b"\t"):
            self.in_headers = False  # the end of the headers: this goes on as it is
            return [*out, piece]
        return out + self._hold(piece)

    def end(self) -> list[Piece]:
        out = self._release()
        self.in_headers = False
        return out

    def addresses(self) -> list[str]:
        return self.found[self.resent]

    def _hold(self, piece: Piece) -> list[Piece]:
        self.held.append(piece)
        self.held_size += len(piece[0]) + 1
        if self.held_size > self.header_limit:
            raise HeaderTooLong("message header length exceeds safety limit")
        self.line_open = not piece[1]
        return []

    def _release(self) -> list[Piece]:
        """The held header: its recipients noted, its pieces passed on unless a Bcc."""
        held, self.held, self.held_size, self.line_open = self.held, [], 0, False
        if not held:
            return []
        lines = b"".join(t + (b"\n" if e else b"") for t, e in held).split(b"\n")
        name, _, value = lines[0].partition(b":")
        hname = name.strip().decode("ascii", "replace").lower()
        if hname in RCPT_HEADERS or hname in RESENT_HEADERS:
            resent = hname in RESENT_HEADERS
            self.resent = self.resent or resent
            text = b" ".join(p.strip() for p in [value, *lines[1:]] if p.strip())
            self.found[resent].extend(rfc822.address_list(
                text.decode("utf-8", "surrogateescape")))
            if self.max_addresses and len(self.found[resent]) > self.max_addresses:
                raise TooManyRecipients("too many recipients")
        return [] if hname in BCC_HEADERS else held


def parse_sender(text: str) -> str:
    """-f value: the first address in it ("<>" is the null sender)."""
    t = text.strip()
    if t in ("", "<>"):
        return ""
    found = rfc822.address_list(t)
    return found[0] if found else t.strip("<>")
