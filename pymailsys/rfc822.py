"""The RFC 822/5322 address grammar: quoting, unquoting and tokens, done one way.

Postfix keeps an address in two forms: *internal* (unquoted: ``john doe@x``,
the form queue files, tables and logs use) and *external* (quoted as RFC 5322
requires: ``"john doe"@x``, the form of headers, SMTP and mailq). This module
is the one place that converts between them and reads external addresses:

* ``quote_822_local(addr)``: internal -> external, as Postfix's
  quote_822_local(): a local part that is not a dot-string is put in double
  quotes, with ``"``, ``\\`` and CR escaped by a backslash; 8-bit characters
  pass as they are; a source route (``@a,@b:``) before the local part is kept
  and not quoted; the domain (after the last ``@``) is never touched.
* ``unquote_822_local(addr)``: external -> internal, as Postfix's
  unquote_822_local(): quotes and backslash escapes are removed up to the last
  ``@`` that is not inside quotes; a source route and the domain stay as written.
* ``strip_source_route(addr)``: ``@a,@b:user@c`` -> ``user@c`` (text before
  the first ``:`` of an address that starts with ``@``).
* ``scan(text, limit)``: tok822 tokens of an address or address list:
  atoms (backslash escapes kept), "quoted strings", (nested comments),
  [domain literals] and the operators ``()<>@,;:.[]``; white space and line
  breaks only separate. With a limit, tokens beyond it are dropped (Postfix's
  header_address_token_limit) and the caller is told. An unterminated quoted
  string, comment or domain literal raises ``Unparsable``. Linear in the text.
* ``internalize(tokens)``: the internal form of one address's tokens
  (comments dropped, quotes and escapes removed), as Postfix's
  tok822_internalize().

Pure functions; no I/O, no configuration.
"""

from __future__ import annotations

# RFC 822 specials that make a local part need quoting (quote_822_local.c).
_NEEDS_QUOTE = frozenset('()<>@,;:\\"[] ')
_ESCAPED_IN_QUOTES = frozenset('"\\\r')
OPERATORS = frozenset("()<>@,;:.[]")
WORDS = frozenset(("atom", "qstr", "domlit"))

# (kind, text, start, end): kind is "atom", "qstr", "comment", "domlit" or the
# operator character itself; text is the token as written.
Token = tuple[str, str, int, int]


class Unparsable(ValueError):
    """An unterminated quoted string, comment or domain literal."""


def _local_part_start(addr: str) -> int:
    if addr.startswith("@"):
        colon = addr.find(":")
        if colon >= 0:
            return colon + 1
    return 0


def strip_source_route(addr: str) -> str:
    """``@a,@b:user@c`` -> ``user@c``; any other address as it is."""
    return addr[_local_part_start(addr):]


def is_822_dot_string(local: str) -> bool:
    """True when a local part needs no quoting (Postfix's is_822_dot_string, 8-bit clean)."""
    if not local or local[0] == "." or local[-1] == "." or ".." in local:
        return False
    for ch in local:
        if ch in _NEEDS_QUOTE or ord(ch) < 32 or ord(ch) == 127:
            return False
    return True


def quote_822_local(addr: str) -> str:
    """External form: quote the local part when it is not a dot-string."""
    start = _local_part_start(addr)
    end = addr.rfind("@", start)
    if end < 0:
        end = len(addr)
    local = addr[start:end]
    if is_822_dot_string(local):
        return addr
    quoted = "".join("\\" + ch if ch in _ESCAPED_IN_QUOTES else ch for ch in local)
    return f'{addr[:start]}"{quoted}"{addr[end:]}'


def unquote_822_local(addr: str) -> str:
    """Internal form: remove the quoting of the local part."""
    start = _local_part_start(addr)
    if '"' not in addr and "\\" not in addr:
        return addr
    out: list[str] = [addr[:start]]
    in_quote = False
    bare_at = -1  # index in out / in addr of the last @ outside quotes
    bare_at_src = -1
    i, n = start, len(addr)
    while i < n:
        ch = addr[i]
        if ch == '"':
            in_quote = not in_quote
            i += 1
            continue
        if ch == "@" and not in_quote:
            bare_at, bare_at_src = len(out), i
        elif ch == "\\":
            if i + 1 == n:
                i += 1
                continue
            i += 1
            ch = addr[i]
        out.append(ch)
        i += 1
    if bare_at >= 0:
        del out[bare_at:]
        out.append(addr[bare_at_src:])
    return "".join(out)


def scan(text: str, limit: int = 0) -> tuple[list[Token], bool]:
    """tok822 tokens of text; with a limit, at most that many and whether more were dropped."""
    out: list[Token] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch in " \t\r\n":
            i += 1
            continue
        if limit and len(out) >= limit:
            return out, True
        start = i
        if ch == "(":
            level, i = 1, i + 1
            while i < n and level:
                c = text[i]
                if c == "\\":
                    i += 1
                elif c == "(":
                    level += 1
                elif c == ")":
                    level -= 1
                i += 1
            if level:
                raise Unparsable(text)
            kind = "comment"
        elif ch in '"[':
            close = '"' if ch == '"' else "]"
            i += 1
            while i < n and text[i] != close:
                i += 2 if text[i] == "\\" else 1
            if i >= n:
                raise Unparsable(text)
            i += 1
            kind = "qstr" if ch == '"' else "domlit"
        elif ch in OPERATORS:
            i += 1
            kind = ch
        else:
            while i < n and text[i] not in OPERATORS and text[i] not in ' \t\r\n"':
                i += 2 if text[i] == "\\" else 1
            i = min(i, n)
            kind = "atom"
        out.append((kind, text[start:i], start, i))
    return out, False


def _unescape(text: str) -> str:
    if "\\" not in text:
        return text
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        if text[i] == "\\" and i + 1 < n:
            i += 1
        out.append(text[i])
        i += 1
    return "".join(out)


def internalize(tokens: list[Token]) -> str:
    """The internal form of one address's tokens: comments dropped, quoting removed."""
    parts: list[str] = []
    for kind, text, _, _ in tokens:
        if kind == "comment":
            continue
        if kind == "qstr":
            parts.append(_unescape(text[1:-1]))
        elif kind == "atom":
            parts.append(_unescape(text))
        else:
            parts.append(text)
    return "".join(parts)
