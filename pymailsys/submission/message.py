"""message - sendmail's input: the message on standard input and its addresses.

``read_message`` reads message lines as Postfix's sendmail does;
addresses in a header value or command-line argument are
``rfc822.address_list``'s (Postfix's tok822 rules); ``header_recipients`` implements ``sendmail -t`` (To/Cc/Bcc, or
the Resent- set when present; Bcc headers removed); ``parse_sender``
reads the ``-f`` value. Pure functions over bytes and text: no I/O but the
stream handed in.
"""

from __future__ import annotations

from typing import BinaryIO

from pymailsys import rfc822


def read_message(stream: BinaryIO, dot_rule: bool) -> list[bytes]:
    """Message lines from stdin, as Postfix's sendmail reads them.

    Stops at end of file, or at a line with a lone "." when dot_rule; drops
    CR at line ends when the first line ends in CRLF; skips leading
    ``From `` (and ``>From ``) lines.
    """
    lines: list[bytes] = []
    strip_cr: bool | None = None
    skip_from = True
    for raw in stream:
        line = raw[:-1] if raw.endswith(b"\n") else raw
        if strip_cr is None:
            strip_cr = line.endswith(b"\r")
        if skip_from:
            if line.lstrip(b">").startswith(b"From "):
                continue
            skip_from = False
        if strip_cr:
            line = line.rstrip(b"\r")
        if dot_rule and line == b".":
            break
        lines.append(line)
    return lines




RCPT_HEADERS = ("to", "cc", "bcc")
RESENT_HEADERS = ("resent-to", "resent-cc", "resent-bcc")


def header_recipients(lines: list[bytes]) -> tuple[list[str], list[bytes]]:
    """sendmail -t: recipients from To/Cc/Bcc (Resent-* when present), and the
    lines with Bcc and Resent-Bcc headers removed."""
    headers: list[tuple[str, str, int, int]] = []  # name, value, first line, end
    i = 0
    n = len(lines)
    while i < n:
        line = lines[i]
        if line == b"" or line[:1] in (b" ", b"\t"):
            break
        hname, sep, value = line.partition(b":")
        if not sep or not hname.strip() or b" " in hname.strip():
            break
        j = i + 1
        parts = [value]
        while j < n and lines[j][:1] in (b" ", b"\t"):
            parts.append(lines[j])
            j += 1
        headers.append((hname.strip().decode("ascii", "replace").lower(),
                        b" ".join(p.strip() for p in parts).decode("utf-8", "surrogateescape"),
                        i, j))
        i = j
    resent = any(h[0] in RESENT_HEADERS for h in headers)
    wanted = RESENT_HEADERS if resent else RCPT_HEADERS
    rcpts: list[str] = []
    for hdr, text, _s, _e in headers:
        if hdr in wanted:
            rcpts.extend(rfc822.address_list(text))
    drop: set[int] = set()
    for hdr, _text, s, e in headers:
        if hdr in ("bcc", "resent-bcc"):
            drop.update(range(s, e))
    kept = [line for k, line in enumerate(lines) if k not in drop]
    return rcpts, kept


def parse_sender(text: str) -> str:
    """-f value: the first address in it ("<>" is the null sender)."""
    t = text.strip()
    if t in ("", "<>"):
        return ""
    found = rfc822.address_list(t)
    return found[0] if found else t.strip("<>")
