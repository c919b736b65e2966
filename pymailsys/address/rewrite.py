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

import re
from collections.abc import Callable
from dataclasses import dataclass

from pymailsys.rfc822 import Unparsable, parse_list, quote_822_local, scan, unquote_822_local

CONTEXT_LOCAL = "local"
CONTEXT_REMOTE = "remote"

_ROUTE_OPS = re.compile(r"([!%])")
# A plain address, which rewriting leaves as it is (or, without a domain, gives
# @origin): a local part of dot-separated runs, then @ and a domain that does not end
# in a dot, none of it with a second @ or a character that a plain address never has.
_NOT_PLAIN = re.escape('"\\()<>,;:[] !%\t\r\n@')
_PLAIN = re.compile(rf"[^{_NOT_PLAIN}.]+(?:\.[^{_NOT_PLAIN}.]+)*(@(?:[^{_NOT_PLAIN}]*[^{_NOT_PLAIN}.])?)?")


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
    """The tokens rewriting looks at: rfc822.scan's, with ``!`` and ``%`` split out of
    atoms (the bang path and percent hack operators)."""
    try:
        scanned, _ = scan(text)
    except Unparsable:
        return [text]
    tokens: list[str] = []
    for kind, token, _, _ in scanned:
        if kind == "atom" and ("!" in token or "%" in token):
            tokens.extend(part for part in _ROUTE_OPS.split(token) if part)
        else:
            tokens.append(token)
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
    # One match for the common shapes; the same result as the general path.
    if not ctx.append_dot_mydomain and (plain := _PLAIN.fullmatch(addr)) is not None:
        if plain.lastindex or not (ctx.append_at_myorigin and ctx.origin):
            return addr
        return f"{addr}@{ctx.origin}"
    return _rewrite_parsed(addr, ctx)


def _rewrite_parsed(addr: str, ctx: RewriteContext) -> str:
    """rewrite_address the long way: quoted, tokenized, rewritten, unquoted."""
    result = rewrite_external(quote_822_local(addr), ctx)
    if result == '""':
        return ""
    return unquote_822_local(result)


# -- address headers ----------------------------------------------------------
#
# Postfix's cleanup parses an address header (tok822_parse: rfc822.parse_list),
# rewrites every address in it, and when one changed re-serializes the whole
# list with one address per line (cleanup then folds those lines), spaced as
# tok822_externalize: a space before ``<``, after ``:`` of a group, and between
# two non-operators; a newline after each ``,``.

_NON_OPS = frozenset(("atom", "qstr", "domlit", "comment", "addr", "phrase"))


def rewrite_header_value(value: str, ctx: RewriteContext,
                         mapper: Callable[[str], str] | None = None) -> str | None:
    """Rewrite every address in an address header's value (after ``Name:``).

    Returns the new value with a newline after each comma (one address per
    line, for the caller's folding), or None when no address changed or the
    value is unparsable (the header is then kept as it was). Tokens beyond
    ``ctx.header_token_limit`` (header_address_token_limit) are dropped, as
    Postfix's cleanup drops them; the header is then always re-written. The
    work is linear in the length of the value. ``mapper`` (cleanup's canonical
    mapping and masquerading) then maps each rewritten address in internal form.
    """
    try:
        tokens, truncated = scan(value, ctx.header_token_limit)
        elements = parse_list(value, tokens, truncated)
    except Unparsable:
        return None
    changed = truncated
    for element in elements:
        if element[0] != "addr":
            continue
        before = element[1]
        after = rewrite_external(before, ctx)
        internal = unquote_822_local(after)
        mapped = mapper(internal) if mapper is not None else internal
        changed |= after != before or mapped != internal
        element[1] = quote_822_local(mapped)
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
