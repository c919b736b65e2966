"""regexp: and pcre: lookup tables (Postfix's regexp_table(5) and pcre_table(5)).

Takes a file of rules, read once when the table is opened:

    /pattern/flags result        first matching rule wins
    !/pattern/flags result       the rule matches when the pattern does not
    if /pattern/flags            the rules up to the matching endif are only
    ...                          tried when the pattern matches (if !/p/: when
    endif                        it does not); if/endif nest

A line that starts with a letter or digit and is not ``if`` or ``endif`` is
ignored with Postfix's warning ``ignoring unrecognized request``. An ``if``
whose pattern is broken is no ``if``, as in Postfix: the rules after it apply
unconditionally and its ``endif`` is ignored with a warning.

The delimiter is the first character after the optional ``!`` (usually ``/``);
a backslash before it keeps it in the pattern. ``#`` lines and blank lines are
ignored and a line that starts with white space continues the line before it.

regexp (POSIX regular expressions, run on Python's ``re``: POSIX classes
such as ``[[:digit:]]`` and the GNU word anchors ``\\<`` ``\\>`` are
translated) starts case-insensitive with extended syntax; ``i`` toggles case
sensitivity, ``x`` toggles extended syntax (POSIX basic syntax when off), ``m``
toggles multi-line mode (POSIX's REG_NEWLINE: without it ``.`` matches the
newline of a folded header, with it ``^`` and ``$`` match at each line and
``.`` does not match a newline). A regexp rule may have a second pattern that must not
match: ``/pattern1/flags!/pattern2/flags result`` (no white space before the
``!``; ``$n`` refers to the first pattern's groups; not in an ``if``).

pcre runs on PCRE2 itself (the ``pcre2`` binding), so pcre_table(5) syntax
works as in Postfix: named groups, ``(?-i)``, ``\\Q...\\E``, POSIX classes,
lookaround. It starts case-insensitive and with ``.`` matching a newline
(PCRE2_DOTALL, as Postfix: a folded header's), and each flag toggles: ``i``
case, ``m`` multi-line, ``s`` dot matches newline, ``x`` extended syntax,
``A`` anchored at the start, ``E`` ``$`` matches only at the very end, ``U``
ungreedy; ``X``
is ignored with Postfix's warning ``ignoring obsolete regexp option "X"``.
Keys that are not valid UTF-8 match no pcre rule; nor does a key that runs
into PCRE2's limits (``pcre map NAME, line N: match limit exceeded``, as
Postfix warns). regexp rules run on Python's ``re``, which has no such limit
(nor has POSIX regexec in Postfix): a catastrophic pattern takes its time.

The result may use ``$1``..``$9`` (and ``${n}``, ``$(n)``) for the text of a
parenthesised group (empty when the group did not take part), and ``$$`` for
``$``, read as Postfix's mac_parse reads it. A rule with a bad pattern, an
unknown flag, a reference that is not a number from 1 to the number of groups,
an unclosed ``${`` or a ``$`` without a name, or ``$n`` in a negated rule is
skipped with Postfix's warning
(``regexp map /etc/x, line 3: ...: skipping this rule``); the rest of the
table still works. ``without_regsub`` skips the rules with ``$n`` the same way
(a security-sensitive parameter's table: ``maps.open_table``). Lookup keys are not folded to lower case: case is the
pattern's business, and ``$n`` copies the key's own text. These are pattern
tables: the address search order asks them only with the full key.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import pcre2

from pymailsys import log
from pymailsys.maps.base import Table, logical_lines, read_source, register

_POSIX_CLASSES = {
    "alpha": "a-zA-Z", "digit": "0-9", "alnum": "a-zA-Z0-9", "upper": "A-Z", "lower": "a-z",
    "space": r" \t\n\r\f\v", "blank": r" \t", "punct": r"!-/:-@\[-`{-~", "xdigit": "0-9A-Fa-f",
    "cntrl": r"\x00-\x1f\x7f", "print": r"\x20-\x7e", "graph": r"\x21-\x7e",
}


def posix_to_python(pattern: str, extended: bool = True) -> str:
    """Translate a POSIX (GNU) regular expression into Python's re syntax."""
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        ch = pattern[i]
        if ch == "[":
            j = i + 1
            body: list[str] = []
            if j < n and pattern[j] == "^":
                body.append("^")
                j += 1
            if j < n and pattern[j] == "]":
                body.append(r"\]")
                j += 1
            while j < n and pattern[j] != "]":
                if pattern.startswith("[:", j):
                    end = pattern.find(":]", j + 2)
                    if end < 0:
                        raise re.error("unterminated character class")
                    cls = pattern[j + 2:end]
                    if cls not in _POSIX_CLASSES:
                        raise re.error(f"invalid character class {cls!r}")
                    body.append(_POSIX_CLASSES[cls])
                    j = end + 2
                    continue
                c = pattern[j]
                body.append("\\" + c if c in "\\[" else c)
                j += 1
            if j >= n:
                raise re.error("Unmatched [, [^, [:, [., or [=")
            out.append("[" + "".join(body) + "]")
            i = j + 1
            continue
        if ch == "\\" and i + 1 < n:
            nxt = pattern[i + 1]
            if nxt in "<>":
                out.append(r"\b")
            elif nxt == "'":
                out.append(r"\Z")
            elif nxt == "`":
                out.append(r"\A")
            elif not extended and nxt in "(){}|+?":
                out.append(nxt)
            elif nxt.isdigit() or nxt in "wWsSbB":
                out.append("\\" + nxt)
            else:
                out.append(re.escape(nxt))
            i += 2
            continue
        if not extended and ch in "(){}|+?":
            out.append("\\" + ch)
        else:
            out.append(ch)
        i += 1
    return "".join(out)


Matcher = Callable[[str], Any]  # a compiled pattern's search (or match): a match or None

# PCRE2 compile options that the pcre2 binding has no flag name for (pcre2.h)
PCRE2_DOLLAR_ENDONLY = 0x00000010
PCRE2_UNGREEDY = 0x00040000


@dataclass
class _Compiled:
    search: Matcher
    groups: int


Part = str | int  # replacement text: literal text, or the number of a group ($n)


@dataclass
class _Rule:
    line: int
    search: Matcher
    match: bool  # False: the rule matches when the pattern does not (``!/p/``)
    parts: list[Part] | None = None  # the result; None: an "if" rule
    end: int = 0  # for "if": index of the rule after the matching endif
    second: Matcher | None = None  # regexp's second pattern (``/p1/!/p2/``)
    second_match: bool = True

    @property
    def substitutes(self) -> bool:
        """Whether the result copies text of the key (a ``$n``)."""
        return any(isinstance(part, int) for part in self.parts or ())


@dataclass
class _Pattern:
    match: bool
    source: str
    flags: str


def _never(_key: str) -> None:
    return None


class _SkipRule(Exception):
    pass


class RegexpTable(Table):
    """regexp:/path and pcre:/path."""

    fold = False
    fixed = False
    kind = "regexp"

    def __init__(self, type_name: str, name: str) -> None:
        super().__init__(type_name, name)
        self.kind = "pcre" if type_name == "pcre" else "regexp"
        text, self.owner = read_source(name, inline=True)
        self.rules: list[_Rule] = []
        self._load(text)

    # loading (Postfix's dict_regexp_parseline, dict_pcre_parse_rule) ----------
    def _warn(self, line: int, text: str) -> None:
        log.warning(f"{self.kind} map {self.name}, line {line}: {text}")

    def _load(self, text: str) -> None:
        open_ifs: list[int] = []
        for lineno, line in logical_lines(text, self.name):
            line = line.rstrip()
            if not line:
                continue
            try:
                rule = self._parse_line(lineno, line, len(open_ifs))
            except _SkipRule:
                continue
            if rule is None:  # ENDIF
                self.rules[open_ifs.pop()].end = len(self.rules)
                continue
            if rule.parts is None:
                open_ifs.append(len(self.rules))
            self.rules.append(rule)
        for index in reversed(open_ifs):  # the innermost first, as Postfix
            self._warn(self.rules[index].line, "IF has no matching ENDIF")
            self.rules[index].end = len(self.rules)

    def _parse_line(self, lineno: int, line: str, nesting: int) -> _Rule | None:
        """One rule, or None for an ENDIF; _SkipRule (warned) for a line that is no rule.
        A broken IF is no rule either: the lines up to its ENDIF then apply unconditionally
        and that ENDIF is ignored with a warning, as in Postfix."""
        if not _ascii_alnum(line[0]):
            first, rest = self._get_pattern(lineno, line)
            second = None
            if self.kind == "regexp" and rest.startswith("!"):
                second, rest = self._get_pattern(lineno, rest)
            rest = rest.lstrip()
            if not rest:
                self._warn(lineno, "no replacement text: using empty string")
            parts = self._replacement(lineno, rest)
            max_sub = max((p for p in parts if isinstance(p, int)), default=0)
            if max_sub and not first.match:
                self._warn(lineno, "$number found in negative match replacement text: "
                           "skipping this rule")
                raise _SkipRule
            compiled = self._compile(lineno, first)
            if max_sub > compiled.groups:
                self._warn(lineno, f'out of range replacement index "{max_sub}": '
                           "skipping this rule")
                raise _SkipRule
            rule = _Rule(lineno, compiled.search, first.match, parts)
            if second is not None:
                rule.second = self._compile(lineno, second).search
                rule.second_match = second.match
            return rule
        if line[:2].lower() == "if" and not _ascii_alnum(line[2:3] or " "):
            pattern, rest = self._get_pattern(lineno, line[2:].lstrip())
            rest = rest.lstrip()
            if rest:
                self._warn(lineno, f'ignoring extra text after IF statement: "{rest}"')
                self._warn(lineno, "do not prepend whitespace to statements between IF and ENDIF")
            return _Rule(lineno, self._compile(lineno, pattern).search, pattern.match)
        if line[:5].lower() == "endif" and not _ascii_alnum(line[5:6] or " "):
            if nesting == 0:
                self._warn(lineno, "ignoring ENDIF without matching IF")
                raise _SkipRule
            if line[5:].strip():
                self._warn(lineno, "ignoring extra text after ENDIF")
            return None
        self._warn(lineno, "ignoring unrecognized request")
        raise _SkipRule

    def _get_pattern(self, lineno: int, text: str) -> tuple[_Pattern, str]:
        """``!`` marks (each toggles; white space between is skipped), a pattern between
        two delimiters (the first character; a backslash keeps one in the pattern) and
        its flags (up to white space, for regexp also up to a ``!``); and the text after."""
        match = True
        i, n = 0, len(text)
        while i < n and (text[i] == "!" or text[i].isspace()):
            if text[i] == "!":
                match = not match
            i += 1
        if i >= n:
            self._warn(lineno, "no regexp: skipping this rule")
            raise _SkipRule
        delim = text[i]
        i += 1
        start = i
        while i < n and text[i] != delim:
            if text[i] == "\\" and i + 1 < n:
                i += 1
            i += 1
        if i >= n:
            what = "ignoring" if self.kind == "pcre" else "skipping"
            self._warn(lineno, f'no closing regexp delimiter "{delim}": {what} this rule')
            raise _SkipRule
        source = text[start:i]
        if delim != "/":
            source = source.replace("\\" + delim, delim)
        i += 1
        flag_end = i
        while flag_end < n and not text[flag_end].isspace() and not (
                self.kind == "regexp" and text[flag_end] == "!"):
            flag_end += 1
        flags = text[i:flag_end]
        known = "imx" if self.kind == "regexp" else "imsxAEUX"
        for f in flags:
            if f == "X" and self.kind == "pcre":
                self._warn(lineno, 'ignoring obsolete regexp option "X"')
            elif f not in known:
                self._warn(lineno, f'unknown regexp option "{f}": skipping this rule')
                raise _SkipRule
        return _Pattern(match, source, flags), text[flag_end:]

    def _replacement(self, lineno: int, text: str) -> list[Part]:
        """The result text as Postfix's mac_parse reads it, each ``$n`` checked as
        dict_regexp_prescan does; a bad one skips the rule with Postfix's warnings."""
        def check(name: str) -> bool:
            if not _ascii_digits(name):
                self._warn(lineno, f'non-numeric replacement index "{name}"')
                return False
            if int(name) < 1:
                dash = "-" if self.kind == "regexp" else " "
                self._warn(lineno, f'out{dash}of{dash}range replacement index "{name}"')
                return False
            return True
        parts = mac_parse(text, check)
        if parts is None:
            self._warn(lineno, "bad replacement syntax: skipping this rule")
            raise _SkipRule
        return parts

    def _compile(self, lineno: int, pattern: _Pattern) -> _Compiled:
        if self.kind == "pcre":
            return self._compile_pcre(lineno, pattern.source, pattern.flags)
        # POSIX without REG_NEWLINE: "." matches a newline (a folded header's);
        # "m" sets REG_NEWLINE: "^" and "$" at every line, "." stops at one.
        flags = re.IGNORECASE | re.DOTALL
        extended = True
        for f in pattern.flags:
            if f == "i":
                flags ^= re.IGNORECASE
            elif f == "m":
                flags ^= re.MULTILINE | re.DOTALL
            elif f == "x":
                extended = not extended
        try:
            regex = re.compile(posix_to_python(pattern.source, extended), flags)
        except re.error as e:
            self._warn(lineno, _posix_error(e))
            raise _SkipRule from None
        return _Compiled(regex.search, regex.groups)

    def _compile_pcre(self, lineno: int, source: str, flags_text: str) -> _Compiled:
        # Postfix's defaults are caseless and dotall; each flag toggles its option
        options = int(pcre2.IGNORECASE) | int(pcre2.DOTALL)
        anchored = False
        toggles = {"i": int(pcre2.IGNORECASE), "m": int(pcre2.MULTILINE),
                   "s": int(pcre2.DOTALL), "x": int(pcre2.VERBOSE),
                   "E": PCRE2_DOLLAR_ENDONLY, "U": PCRE2_UNGREEDY}
        for f in flags_text:
            if f == "A":
                anchored = not anchored
            elif f in toggles:
                options ^= toggles[f]
        try:
            regex = pcre2.compile(source, options)
        except (pcre2.error, UnicodeError) as e:
            pos = getattr(e, "pos", 0) or 0
            msg = getattr(e, "msg", str(e)).split("; ", 1)[-1]
            self._warn(lineno, f"error in regex at offset {pos}: {msg}")
            raise _SkipRule from None
        method = regex.match if anchored else regex.search

        def search(key: str) -> Any:
            try:
                return method(key)
            except UnicodeError:  # not valid UTF-8: Postfix's PCRE2 matches nothing either
                return None
            except pcre2.LibraryError as e:  # e.g. PCRE2's match limit: no match, as Postfix
                self._warn(lineno, str(e))
                return None
        return _Compiled(search, regex.groups)

    def without_regsub(self) -> RegexpTable:
        """This table with each rule whose result uses ``$n`` skipped, with Postfix's
        warning (DICT_FLAG_NO_REGSUB: see ``maps.open_table``); the rules keep their
        places, so if/endif blocks stay as they were."""
        if not any(rule.substitutes for rule in self.rules):
            return self
        restricted = copy.copy(self)
        restricted.rules = []
        for rule in self.rules:
            if rule.substitutes:
                self._warn(rule.line, "regular expression substitution is not allowed: "
                                      "skipping this rule")
                rule = replace(rule, search=_never, match=True, second=None)
            restricted.rules.append(rule)
        return restricted

    # lookup ---------------------------------------------------------------
    def lookup(self, key: str) -> str | None:
        i = 0
        rules = self.rules
        while i < len(rules):
            rule = rules[i]
            m = rule.search(key)
            matched = (m is not None) == rule.match
            if matched and rule.second is not None:
                matched = (rule.second(key) is not None) == rule.second_match
            if rule.parts is None:
                i = i + 1 if matched else rule.end
                continue
            if matched:
                return "".join(part if isinstance(part, str) else (m.group(part) or "")
                               for part in rule.parts)
            i += 1
        return None


def _ascii_alnum(ch: str) -> bool:
    return ch.isascii() and ch.isalnum()


def _ascii_digits(text: str) -> bool:
    return text.isascii() and text.isdigit()


def mac_parse(text: str, check: Callable[[str], bool]) -> list[Part] | None:
    """Postfix's mac_parse() of a result text: its parts, or None when it does not
    parse. ``$$`` is a ``$``; ``$name`` (letters, digits, ``_``), ``${name}`` and
    ``$(name)`` (nesting counted) are references, each given to ``check``. A
    reference that is not closed or has no name ends the parse with Postfix's
    warning; so does a ``${...}`` after a name that ``check`` refused."""
    parts: list[Part] = []
    buf: list[str] = []
    ok = True
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch != "$":
            buf.append(ch)
            i += 1
            continue
        if text[i + 1:i + 2] == "$":
            buf.append("$")
            i += 2
            continue
        if buf:
            parts.append("".join(buf))
            buf = []
        i += 1
        opener = text[i:i + 1]
        if opener in ("(", "{"):
            closer = ")" if opener == "(" else "}"
            level, j = 1, i + 1
            while level > 0:
                if j >= n:
                    log.warning(f'truncated macro reference: "{text}"')
                    return None
                if text[j] == opener:
                    level += 1
                elif text[j] == closer:
                    level -= 1
                j += 1
            if not ok:
                return None
            name, i = text[i + 1:j - 1], j
        else:
            j = i
            while j < n and (_ascii_alnum(text[j]) or text[j] == "_"):
                j += 1
            name, i = text[i:j], j
        if not name:
            log.warning(f'empty macro name: "{text}"')
            return None
        if check(name):
            parts.append(int(name))
        else:
            ok = False
    if not ok:
        return None
    if buf:
        parts.append("".join(buf))
    return parts


def _posix_error(e: re.error) -> str:
    msg = e.msg
    if "missing )" in msg:
        return "Unmatched ( or \\("
    if "unbalanced parenthesis" in msg:
        return "Unmatched ) or \\)"
    if "unterminated character set" in msg:
        return "Unmatched [, [^, [:, [., or [="
    return msg


register("regexp", "pcre")(RegexpTable)
