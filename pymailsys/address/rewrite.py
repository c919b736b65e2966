"""Address rewriting as Postfix's trivial-rewrite does it (the "rewrite" half, not "resolve").

Takes an address in internal form (unquoted: ``john doe@example.com``, ``""``
for the null address) and a ``RewriteContext`` (the parameter values of one
rewriting context), and returns the rewritten address in internal form. The
steps are Postfix's ``rewrite_tree`` (trivial-rewrite/rewrite.c), in order:

1. the empty address stays empty; a lone ``@`` becomes empty;
2. a source route is stripped: ``@a,@b:user@c`` -> ``user@c``;
3. an address without ``@``: with ``swap_bangpath``, ``host!user`` ->
   ``user@host`` (first ``!``); else with ``allow_percent_hack``,
   ``user%host`` -> ``user@host`` (last ``%``); else, with
   ``append_at_myorigin`` and a non-empty origin, ``user`` -> ``user@origin``;
4. with ``append_dot_mydomain`` and a non-empty domain, ``user@host`` (host
   without a dot and not a ``[literal]``) -> ``user@host.domain``;
5. one trailing dot is stripped from the domain (``user@host.`` -> ``user@host``).

``!``, ``%`` and ``@`` inside a quoted local part do not count, exactly as
Postfix's quote-then-tokenize does. The percent hack for ``user%host@local``
is *not* here: Postfix does that when it resolves a local address (resolve.c).

Contexts (``RewriteContext.from_config``): ``local`` uses ``$myorigin`` and
``$mydomain``; ``remote`` uses ``$remote_header_rewrite_domain`` for both
(empty: nothing is appended). Envelope addresses are always rewritten in the
local context (Postfix's cleanup_addr.c); the remote context is for headers.

Pure functions, no I/O, no configuration reads after ``from_config``.
"""

from __future__ import annotations

from dataclasses import dataclass

from pymailsys.rfc822 import WORDS, Token, Unparsable, quote_822_local, scan, unquote_822_local

CONTEXT_LOCAL = "local"
CONTEXT_REMOTE = "remote"

# Characters that end an atom when tokenizing the external form (tok822).
_TOKEN_SPECIALS = frozenset('()<>@,;:\\".[]!%')
# Characters that never occur in a plain "user@domain" address.
_NOT_SIMPLE = frozenset('"\\()<>,;:[] !%\t\r\n')


@dataclass(frozen=True)
class RewriteContext:
    """The parameter values one rewriting context uses."""

    origin: str  # appended to addresses without @ (empty: nothing)
    domain: str  # appended to host names without a dot (with append_dot_mydomain)
    swap_bangpath: bool = True
    percent_hack: bool = True
    append_at_myorigin: bool = True
    append_dot_mydomain: bool = False
    header_token_limit: int = 10240  # header_address_token_limit (0: no limit)

    @classmethod
    def from_config(cls, config, context: str = CONTEXT_LOCAL) -> RewriteContext:  # type: ignore[no-untyped-def]
        if context == CONTEXT_REMOTE:
            origin = domain = config.get("remote_header_rewrite_domain")
        else:
            origin, domain = config.get("myorigin"), config.get("mydomain")
        return cls(origin=origin, domain=domain,
                   swap_bangpath=config.get_bool("swap_bangpath"),
                   percent_hack=config.get_bool("allow_percent_hack"),
                   append_at_myorigin=config.get_bool("append_at_myorigin"),
                   append_dot_mydomain=config.get_bool("append_dot_mydomain"),
                   header_token_limit=config.get_int("header_address_token_limit"))


def _tokenize(text: str) -> list[str]:
    """tok822-style tokens of an external-form address: atoms, "quoted", [literal], specials."""
    tokens: list[str] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            tokens.append(text[i:j + 1])
            i = j + 1
        elif ch == "[":
            j = text.find("]", i)
            j = n - 1 if j < 0 else j
            tokens.append(text[i:j + 1])
            i = j + 1
        elif ch in _TOKEN_SPECIALS:
            tokens.append(ch)
            i += 1
        elif ch in " \t":
            i += 1
        else:
            j = i
            while j < n and text[j] not in _TOKEN_SPECIALS and text[j] not in " \t":
                j += 1
            tokens.append(text[i:j])
            i = j
    return tokens


def _rfind(tokens: list[str], tok: str) -> int:
    for i in range(len(tokens) - 1, -1, -1):
        if tokens[i] == tok:
            return i
    return -1


def rewrite_tokens(tokens: list[str], ctx: RewriteContext) -> list[str]:
    """Postfix's rewrite_tree on a token list (external form)."""
    if not tokens or tokens == ['""']:
        return tokens
    if tokens == ["@"]:
        return ['""']
    if tokens[0] == "@" and ":" in tokens:
        colon = tokens.index(":")
        if colon != len(tokens) - 1:
            tokens = tokens[colon + 1:]
    if "@" not in tokens:
        if ctx.swap_bangpath and "!" in tokens:
            bang = tokens.index("!")
            tokens = tokens[bang + 1:] + ["@"] + tokens[:bang]
        elif ctx.percent_hack and "%" in tokens:
            pct = _rfind(tokens, "%")
            tokens = tokens[:pct] + ["@"] + tokens[pct + 1:]
        elif ctx.append_at_myorigin and ctx.origin:
            tokens = tokens + ["@"] + _tokenize(ctx.origin)
    if ctx.append_dot_mydomain and ctx.domain:
        at = _rfind(tokens, "@")
        if at >= 0 and at != len(tokens) - 1:
            rest = tokens[at + 1:]
            if "." not in rest and not any(t.startswith("[") for t in rest):
                tokens = tokens + ["."] + _tokenize(ctx.domain)
    if len(tokens) >= 2 and tokens[-1] == "." and tokens[-2] not in (".", "@"):
        tokens = tokens[:-1]
    return tokens


def rewrite_external(addr: str, ctx: RewriteContext) -> str:
    """Rewrite an address in external (quoted) form."""
    return "".join(rewrite_tokens(_tokenize(addr), ctx))


def rewrite_address(addr: str, ctx: RewriteContext) -> str:
    """Rewrite an address in internal form; the result is in internal form."""
    if not addr:
        return addr
    # Fast paths for the common shapes; the same result as the general path.
    if not ctx.append_dot_mydomain and addr[-1] != "." and not _NOT_SIMPLE.intersection(addr):
        at = addr.rfind("@")
        if at > 0 and addr[0] != "@" and addr.find("@") == at and _plain_local(addr[:at]):
            return addr
        if at < 0 and _plain_local(addr):
            return f"{addr}@{ctx.origin}" if ctx.append_at_myorigin and ctx.origin else addr
    result = rewrite_external(quote_822_local(addr), ctx)
    if result == '""':
        return ""
    return unquote_822_local(result)


def _plain_local(local: str) -> bool:
    return bool(local) and local[0] != "." and local[-1] != "." and ".." not in local


# -- address headers ----------------------------------------------------------
#
# Postfix's cleanup parses an address header (tok822_parse), rewrites every
# address in it, and when one changed re-serializes the whole list with one
# address per line (cleanup then folds those lines). The model here:
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
# * output spacing as tok822_externalize: a space before ``<``, after ``:`` of
#   a group, and between two non-operators; a newline after each ``,``.
#
# An unterminated quoted string, comment or domain literal, or a ``<`` without
# ``>``, makes the header unparsable: it is then left alone.

_NON_OPS = frozenset(("atom", "qstr", "domlit", "comment", "addr", "phrase"))


def _join_tokens(tokens: list[Token]) -> str:
    """External form of an address's tokens (a space only between two words)."""
    parts: list[str] = []
    prev = ""
    for kind, text, _, _ in tokens:
        if prev in WORDS and kind in WORDS:
            parts.append(" ")
        parts.append(text)
        prev = kind
    return "".join(parts)


def _elements(text: str, tokens: list[Token],
              truncated: bool = False) -> list[list[str]]:
    """The parse: a list of [kind, text] (kind "addr" for an address to rewrite).

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
                out.append(["addr", _join_tokens(current)])
                out.append([",", ","])
                current = []
            current.append(tok)
            prev = tok[0]
        if current:
            out.append(["addr", _join_tokens(current)])
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
                out.append(["addr", _join_tokens(addr)])
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


def rewrite_header_value(value: str, ctx: RewriteContext) -> str | None:
    """Rewrite every address in an address header's value (after ``Name:``).

    Returns the new value with a newline after each comma (one address per
    line, for the caller's folding), or None when no address changed or the
    value is unparsable (the header is then kept as it was). Tokens beyond
    ``ctx.header_token_limit`` (header_address_token_limit) are dropped, as
    Postfix's cleanup drops them; the header is then always re-written. The
    work is linear in the length of the value.
    """
    try:
        tokens, truncated = scan(value, ctx.header_token_limit)
        elements = _elements(value, tokens, truncated)
    except Unparsable:
        return None
    changed = truncated
    for element in elements:
        if element[0] != "addr":
            continue
        before = element[1]
        after = rewrite_external(before, ctx)
        changed |= after != before
        element[1] = quote_822_local(unquote_822_local(after))
    if not changed:
        return None
    parts: list[str] = []
    for i, (kind, text) in enumerate(elements):
        parts.append(text)
        if kind == ",":
            parts.append("\n")
            continue
        if i + 1 == len(elements):
            break
        nxt = elements[i + 1][0]
        if kind == "group" or nxt == "<" or (kind in _NON_OPS and nxt in _NON_OPS):
            parts.append(" ")
    return "".join(parts)
