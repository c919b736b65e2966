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
* ``parse_list(text, tokens)``: an address list as Postfix's tok822_parse
  reads it (groups, ``phrase <addr>``, comments, missing commas);
  ``address_list(text)`` its addresses in internal form (alias values,
  .forward files, sendmail recipients), ``externalize_list(text)`` the list
  re-spaced as postalias stores it.
* ``envelope_address(addr)``: the one rule for an envelope address, wherever
  it enters (smtpd's MAIL FROM and RCPT TO, sendmail's -f, command line and
  -t headers, a maildrop file or live submission that pickup takes in):
  TAB, CR and LF become a space, as Postfix's address tokenizer makes them
  (possible only inside quotes); any other ASCII control character or DEL
  makes it no address (None). ``has_control(text)`` says whether a text holds
  one of those: the delivery agents refuse such an address in a request.

Pure functions; no I/O, no configuration.
"""

from __future__ import annotations

import re

# RFC 822 specials that make a local part need quoting (quote_822_local.c).
# One search instead of a loop per character: every address a daemon logs or
# writes goes through is_822_dot_string, several times per delivery.
_NOT_DOT_STRING = re.compile(r'[()<>@,;:\\"\[\] \x00-\x1f\x7f]|\.\.|^\.|\.\Z')
# An address that quote_822_local leaves as it is, in one match: a dot-string local
# part (no source route) and at most one @ (the domain is never touched)
_ATOM = r'[^()<>@,;:\\"\[\] \x00-\x1f\x7f.]+'
_PLAIN_ADDRESS = re.compile(rf"{_ATOM}(?:\.{_ATOM})*(?:@[^@]*)?\Z")
_ESCAPED_IN_QUOTES = frozenset('"\\\r')
OPERATORS = frozenset("()<>@,;:.[]")
WORDS = frozenset(("atom", "qstr", "domlit"))
# tok822_externalize: a space after a word, comment or ">" when a word, comment
# or "<" follows, and after every comma
_SPACED = WORDS | {"comment", ">"}
_SPACE_BEFORE = WORDS | {"comment", "<"}
_QUOTED_WHITESPACE = str.maketrans("\t\r\n", "   ")
_CONTROL = re.compile("[\x00-\x1f\x7f]")

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
    return bool(local) and _NOT_DOT_STRING.search(local) is None


def quote_822_local(addr: str) -> str:
    """External form: quote the local part when it is not a dot-string.

    The answers for addresses up to MEMO_ADDRESS_LENGTH long are kept (at most
    MEMO_LIMIT, then forgotten at once): local asks for its recipient's, sender's and
    original recipient's five times per delivery (headers, duplicate key, log line).
    """
    quoted = _QUOTED.get(addr)
    if quoted is not None:
        return quoted
    # most addresses: nothing to quote
    quoted = addr if _PLAIN_ADDRESS.match(addr) is not None else _quoted(addr)
    if len(addr) <= MEMO_ADDRESS_LENGTH:
        if len(_QUOTED) >= MEMO_LIMIT:
            _QUOTED.clear()
        _QUOTED[addr] = quoted
    return quoted


MEMO_LIMIT = 1024
MEMO_ADDRESS_LENGTH = 256
_QUOTED: dict[str, str] = {}  # quote_822_local's answers


def _quoted(addr: str) -> str:
    """quote_822_local the long way: any address (a source route, several @)."""
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


def internalize(tokens: list[Token], atoms_as_written: bool = False) -> str:
    """The internal form of one address's tokens: comments dropped, quoting removed
    (with ``atoms_as_written``, only that of quoted strings)."""
    parts: list[str] = []
    for kind, text, _, _ in tokens:
        if kind == "comment":
            continue
        if kind == "qstr":
            parts.append(_unescape(text[1:-1]))
        elif kind == "atom" and not atoms_as_written:
            parts.append(_unescape(text))
        else:
            parts.append(text)
    return "".join(parts)


# -- address lists (tok822_parse) -------------------------------------------------
#
# An address list (an address header, an alias value, a sendmail argument) is
# read as Postfix's tok822_parse reads it. The model:
#
# * tokens: atoms, "quoted strings", (comments, nested), [domain literals], and
#   the operators ()<>@,;:.[]; white space and line breaks separate tokens;
# * a ``:`` outside <> followed later by a ``;`` opens a group; its name is
#   everything since the previous ``,``;
# * ``phrase <route-addr>``: the address is what is inside <> (comments there
#   stay inside, behind it); the phrase is kept as written (unfolded) -- Postfix
#   re-spaces it (``B. Goode`` -> ``B.Goode``), this keeps display names intact;
#   words after the ``>`` are further addresses (a comma is added);
# * otherwise the words of a list element are addresses; two words in a row
#   without an operator between are two addresses (Postfix adds the missing
#   comma); the element's comments move behind its last address;
#
# An unterminated quoted string, comment or domain literal, or a ``<`` without
# ``>``, makes the list unparsable (``Unparsable``); in a list cut by a token
# limit, a ``<`` left open at the end is part of a plain address instead.


def join_tokens(tokens: list[Token]) -> str:
    """External form of an address's tokens (a space only between two words)."""
    parts: list[str] = []
    prev = ""
    for kind, text, _, _ in tokens:
        if prev in WORDS and kind in WORDS:
            parts.append(" ")
        parts.append(text)
        prev = kind
    return "".join(parts)


def parse_list(text: str, tokens: list[Token], truncated: bool = False) -> list[list[str]]:
    """Postfix's tok822_parse of an address list: [kind, text] elements in order.

    Kinds: "addr" (an address, external form), "phrase" (a display name as
    written), "comment", "group" (the ``:`` that opens a group), and the
    operators ``<``, ``>``, ``,`` and ``;``. Raises ``Unparsable`` (see below).

    In a truncated token list a ``<`` left open at the end is part of a
    plain address (``<b`` -> ``"<b"@domain``), as Postfix's parser makes it.
    """
    out: list[list[str]] = []
    depth = 0
    last_semi = max((i for i, t in enumerate(tokens) if t[0] == ";"), default=-1)
    seg: list[Token] = []
    in_group = False

    def phrase(part: list[Token]) -> None:
        if part:
            raw = text[part[0][2]:part[-1][3]].replace("\r", "").replace("\n", "")
            out.append(["phrase", raw])

    def plain(part: list[Token]) -> None:
        # Words are addresses (a missing comma between two words is added);
        # the comments move behind the last one, in their order.
        current: list[Token] = []
        prev = ""
        for tok in part:
            if tok[0] == "comment":
                continue
            if prev in WORDS and tok[0] in WORDS and current:
                out.append(["addr", join_tokens(current)])
                out.append([",", ","])
                current = []
            current.append(tok)
            prev = tok[0]
        if current:
            out.append(["addr", join_tokens(current)])
        out.extend(["comment", t[1]] for t in part if t[0] == "comment")

    def finish() -> None:
        # One pass over the element: each "phrase <addr>" is found by scanning
        # forward from where the previous one ended (never by re-slicing what
        # is left, which made <a><a><a>... quadratic).
        rest = list(seg)
        seg.clear()
        pos, n = 0, len(rest)
        while pos < n:
            lt = pos
            while lt < n and rest[lt][0] != "<":
                if rest[lt][0] == ">":
                    raise Unparsable
                lt += 1
            if lt == n:
                tail = rest[pos:]
                if any(t[0] != "comment" for t in tail) and out and out[-1][0] == ">":
                    out.append([",", ","])
                plain(tail)
                return
            gt = lt + 1
            while gt < n and rest[gt][0] != ">":
                gt += 1
            if gt == n:
                if not truncated:
                    raise Unparsable
                if out and out[-1][0] == ">":
                    out.append([",", ","])
                plain(rest[pos:])
                return
            phrase(rest[pos:lt])
            inner = rest[lt + 1:gt]
            out.append(["<", "<"])
            addr = [t for t in inner if t[0] != "comment"]
            if addr:
                out.append(["addr", join_tokens(addr)])
            # comments inside <> stay there, behind the address
            out.extend(["comment", t[1]] for t in inner if t[0] == "comment")
            out.append([">", ">"])
            pos = gt + 1

    for i, tok in enumerate(tokens):
        kind = tok[0]
        if kind == "<":
            depth += 1
        elif kind == ">":
            depth = max(depth - 1, 0)
        if depth == 0 and kind == ",":
            finish()
            out.append([",", ","])
        elif (depth == 0 and kind == ":" and not in_group
              and last_semi > i):
            phrase(seg)
            seg.clear()
            out.append(["group", ":"])
            in_group = True
        elif depth == 0 and kind == ";":
            finish()
            out.append([";", ";"])
            in_group = False
        else:
            seg.append(tok)
    finish()
    return out


def address_list(text: str) -> list[str]:
    """The addresses of an address list (an alias value, a .forward line, a sendmail
    recipient argument or To: header), in order, as Postfix's tok822_parse finds them.

    Display names, comments and group names are not addresses; two words
    without a comma between them are two addresses (so ``|cmd arg`` is two:
    a command with white space must be quoted, ``"|cmd arg"``, as Postfix
    requires). Each address is in internal form with the quotes of quoted
    strings removed; atoms stay as written, so ``\\user`` keeps the backslash
    that means "this user's mailbox" to local. An unparsable list (an
    unterminated quote) is one address, the whole text stripped.
    """
    try:
        tokens, _ = scan(text)
        elements = parse_list(text, tokens)
    except Unparsable:
        return [text.strip()] if text.strip() else []
    out = []
    for kind, value in elements:
        if kind == "addr":
            out.append(internalize(scan(value)[0], atoms_as_written=True))
    return [address for address in out if address]


def externalize_list(text: str) -> str:
    """An address list re-spaced as postalias stores it (tok822_externalize): ", "
    after each comma, one space between two words and before ``<``, none around
    other operators (``b,c   d`` -> ``b, c d``, ``a@ b . c`` -> ``a@b.c``).
    An unparsable list is returned stripped, as it is."""
    try:
        tokens, _ = scan(text)
    except Unparsable:
        return text.strip()
    parts: list[str] = []
    prev = ","
    for kind, token, _, _ in tokens:
        if parts and (prev == "," or (prev in _SPACED and kind in _SPACE_BEFORE)):
            parts.append(" ")
        parts.append(token)
        prev = kind
    return "".join(parts)


def has_control(text: str) -> bool:
    """True when ``text`` holds an ASCII control character (TAB, CR, LF, NUL...) or DEL."""
    return _CONTROL.search(text) is not None


def envelope_address(addr: str) -> str | None:
    """An envelope address as the mail system takes it in: TAB/CR/LF made spaces;
    None if it holds any other control character (bad address syntax)."""
    if addr.isprintable():
        return addr
    addr = addr.translate(_QUOTED_WHITESPACE)
    return None if has_control(addr) else addr
