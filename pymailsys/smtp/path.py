"""The SMTP path parser: MAIL FROM / RCPT TO arguments as Postfix's smtpd reads them.

``parse_path(arg, keyword, strict)`` takes what follows the verb
(``FROM:<a@b> SIZE=10``) and returns ``(given, address, params)``: the
address token as the client sent it without its outer ``<>``, the address in
internal form (``pymailsys.rfc822``: quotes and escapes removed, a source
route ``@a,@b:`` dropped, comments dropped), and the ESMTP parameters.
For an address that is bad syntax it returns ``(token, None, params)``, the
token whole as the client sent it (Postfix's smtpd logs it in a warning);
it returns None when there is no path or a quote or ``<`` is not closed
(Postfix's smtpd replies without a warning), and raises ValueError when the
keyword (``FROM:``/``TO:``) is missing, which is a command syntax error.

The steps are Postfix's (smtpd_token.c, then extract_addr() in smtpd.c):

1. the argument is split into tokens at white space, except inside
   ``"quoted strings"`` and ``<...>`` (quotes nest inside brackets; a
   backslash escapes the next character); the first token is the path, the
   others are parameters; a path whose quote or bracket is never closed is
   bad syntax;
2. one pair of ``<>`` around the whole path is removed; then a source route
   (text up to the first ``:`` when the path starts with ``@``) is dropped;
3. the rest is read with the RFC 822 tokenizer (``rfc822.scan``): brackets
   are ignored, comments dropped; more than one address (two words without
   an operator between them, or a list) is bad syntax, as is anything but an
   address in brackets when ``strict`` (strict_rfc821_envelopes), and, with
   ``strict``, an address that still starts with ``@``.

The empty address (``<>``) is returned as ``""``; whether it is allowed is
the caller's decision (MAIL yes, RCPT no); so is what to do with control
characters (smtpd's session refuses them). Linear in the length of arg.
"""

from __future__ import annotations

from pymailsys import rfc822

_BRACKETS = frozenset("<>")
_SEPARATORS = frozenset(",;:")
# a path inside <> without any of these reads as itself
_PLAIN = frozenset('"\\()<>,;:[] \t\r\n\f\v')


def smtp_tokens(text: str) -> list[str] | None:
    """Postfix's smtpd_token(): white-space separated tokens; None when a quote or
    ``<`` is not closed."""
    # The common case (printable ASCII, no quote or backslash, at most one <...>
    # without a space inside): the tokens are the words between spaces.
    if text.isascii() and text.isprintable() and '"' not in text and "\\" not in text:
        lt = text.find("<")
        if lt < 0 or (text.count("<") == 1 and (gt := text.find(">", lt)) > 0
                      and " " not in text[lt:gt]):
            return [word for word in text.split(" ") if word]
    return _scan_tokens(text)


def _scan_tokens(text: str) -> list[str] | None:
    """smtp_tokens, character by character."""
    tokens: list[str] = []
    current: list[str] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        i += 1
        if ch in " \t\r\n\f\v":
            if current:
                tokens.append("".join(current))
                current = []
            continue
        current.append(ch)
        if ch == "\\":
            if i < n:
                current.append(text[i])
                i += 1
        elif ch in '<"':
            # read to the closing character; quotes nest inside <>
            wanted = [">" if ch == "<" else '"']
            while i < n and wanted:
                c = text[i]
                i += 1
                current.append(c)
                if c == "\\":
                    if i < n:
                        current.append(text[i])
                        i += 1
                elif c == wanted[-1]:
                    wanted.pop()
                elif c == '"':
                    wanted.append('"')
                elif c == "<" and wanted[-1] == ">":
                    wanted.append(">")
            if wanted:
                return None
    if current:
        tokens.append("".join(current))
    return tokens


def extract_address(token: str, strict: bool) -> str | None:
    """The internal form of one SMTP path token (Postfix's extract_addr), None if bad."""
    text = token[1:-1] if len(token) >= 2 and token[0] == "<" and token[-1] == ">" else token
    if text is not token and (not text or (text[0] != "@" and _PLAIN.isdisjoint(text))):
        return text  # <user@domain>: nothing to parse (the common case, twice as fast)
    text = rfc822.strip_source_route(text)
    try:
        tokens, _ = rfc822.scan(text)
    except rfc822.Unparsable:
        return None
    bracketed = any(tok[0] == "<" for tok in tokens)
    runs: list[list[rfc822.Token]] = [[]]
    non_addr = depth = 0
    closed = False  # words after a <route-addr> are further addresses
    prev = ""
    for tok in tokens:
        kind = tok[0]
        if kind == "comment":
            continue
        if kind in _BRACKETS:
            depth += 1 if kind == "<" else -1
            closed = closed or kind == ">"
            runs.append([])
        elif bracketed and depth <= 0 and not closed:
            non_addr += 1  # the phrase before a <route-addr>
        elif kind in _SEPARATORS:
            non_addr += 1
            runs.append([])
        else:
            if kind in rfc822.WORDS and prev in rfc822.WORDS:
                runs.append([])  # two words without an operator: two addresses
            runs[-1].append(tok)
        prev = kind
    addresses = [run for run in runs if run]
    if len(addresses) > 1:
        return None
    address = addresses[0] if addresses else []
    if strict and (non_addr or not token.startswith("<")):
        return None
    internal = rfc822.internalize(address)
    if strict and internal.startswith("@"):
        return None
    return internal


def parse_path(arg: str, keyword: str,
               strict: bool) -> tuple[str, str | None, list[str]] | None:
    """'FROM:<a@b> SIZE=1' -> (given path, internal address, params); (token, None,
    params): bad address syntax; None: no path, or one not closed.

    Raises ValueError when the keyword itself is missing (a syntax error of
    the command, not of the address).
    """
    if arg[:len(keyword)].upper() != keyword:
        raise ValueError(keyword)
    tokens = smtp_tokens(arg[len(keyword):])
    if not tokens:
        return None
    token, params = tokens[0], tokens[1:]
    address = extract_address(token, strict)
    if address is None:
        return token, None, params
    given = token[1:-1] if len(token) >= 2 and token[0] == "<" and token[-1] == ">" else token
    return given, address, params
