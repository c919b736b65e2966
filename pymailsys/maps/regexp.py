"""regexp: and pcre: lookup tables (Postfix's regexp_table(5) and pcre_table(5)).

Takes a file of rules, read once when the table is opened:

    /pattern/flags result        first matching rule wins
    !/pattern/flags result       the rule matches when the pattern does not
    if /pattern/flags            the rules up to the matching endif are only
    ...                          tried when the pattern matches (if !/p/: when
    endif                        it does not); if/endif nest

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
lookaround. It starts case-insensitive; ``i`` toggles that, ``m``
multi-line, ``s`` dot matches newline, ``x`` extended syntax, ``A`` anchored
at the start, ``E`` ``$`` matches only at the very end, ``U`` ungreedy; ``X``
is ignored with Postfix's warning ``ignoring obsolete regexp option "X"``.
Keys that are not valid UTF-8 match no pcre rule.

The result may use ``$1``..``$9`` (and ``${n}``, ``$(n)``) for the text of a
parenthesised group (empty when the group did not take part), and ``$$`` for
``$``. A rule with a bad pattern, an unknown flag, a non-numeric or out of
range ``$n``, or ``$n`` in a negated rule is skipped with Postfix's warning
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


@dataclass
class _Rule:
    line: int
    search: Matcher
    negate: bool
    result: str | None = None  # None: an "if" rule
    end: int = 0  # for "if": index of the rule after the matching endif
    unless: Matcher | None = None  # regexp's second pattern: the rule matches only when it does not
    substitutes: bool = False  # the result copies text of the key ($1...)


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
        text, self.owner = read_source(name)
        self.rules: list[_Rule] = []
        self._load(text)

    # loading --------------------------------------------------------------
    def _warn(self, line: int, text: str) -> None:
        log.warning(f"{self.kind} map {self.name}, line {line}: {text}")

    def _load(self, text: str) -> None:
        open_ifs: list[int] = []
        for lineno, line in logical_lines(text, self.name):
            word = line.split(None, 1)[0].lower() if line else ""
            if word == "endif":
                if not open_ifs:
                    self._warn(lineno, "ignoring ENDIF without matching IF")
                    continue
                self.rules[open_ifs.pop()].end = len(self.rules)
                continue
            is_if = word == "if" and len(line) > 2 and line[2].isspace()
            body = line[2:].lstrip() if is_if else line
            try:
                negate, compiled, rest, adjoined = self._pattern(lineno, body)
                if is_if:
                    if rest:
                        self._warn(lineno, f'ignoring extra text after IF statement: "{rest}"')
                    open_ifs.append(len(self.rules))
                    self.rules.append(_Rule(lineno, compiled.search, negate))
                    continue
                unless = None
                if adjoined and not negate:
                    _, second, rest, _ = self._pattern(lineno, rest[1:], allow_negation=False)
                    unless = second.search
                result = self._check_result(lineno, rest, negate, compiled.groups)
            except _SkipRule:
                if is_if:
                    # Postfix skips the whole block of a broken IF.
                    open_ifs.append(len(self.rules))
                    self.rules.append(_Rule(lineno, _never, False))
                continue
            self.rules.append(_Rule(lineno, compiled.search, negate, result, unless=unless,
                                    substitutes=_substitutes(result)))
        for index in open_ifs:
            self._warn(self.rules[index].line, "IF has no matching ENDIF")
            self.rules[index].end = len(self.rules)

    def _pattern(self, lineno: int, text: str,
                 allow_negation: bool = True) -> tuple[bool, _Compiled, str, bool]:
        """(negated, compiled pattern, the text after it and its flags, whether that text
        is a ``!`` right after the flags: regexp's second pattern)."""
        negate = False
        i = 0
        while allow_negation and i < len(text) and (
                text[i] == "!" or (negate and text[i].isspace())):
            if text[i] == "!":
                negate = not negate
            i += 1
        if i >= len(text):
            self._warn(lineno, "no regexp pattern")
            raise _SkipRule
        delim = text[i]
        i += 1
        start = i
        while i < len(text) and text[i] != delim:
            if text[i] == "\\" and i + 1 < len(text):
                i += 1
            i += 1
        if i >= len(text):
            self._warn(lineno, "no closing regexp delimiter")
            raise _SkipRule
        source = text[start:i]
        if delim != "/":
            source = source.replace("\\" + delim, delim)
        i += 1
        flag_end = i
        while flag_end < len(text) and not text[flag_end].isspace() and not (
                self.kind == "regexp" and allow_negation and text[flag_end] == "!"):
            flag_end += 1
        flags_text = text[i:flag_end]
        rest = text[flag_end:]
        adjoined = rest.startswith("!")
        return negate, self._compile(lineno, source, flags_text), rest.strip(), adjoined

    def _compile(self, lineno: int, source: str, flags_text: str) -> _Compiled:
        flags = re.IGNORECASE
        if self.kind == "regexp":
            # POSIX without REG_NEWLINE: "." matches a newline (a folded header's);
            # "m" sets REG_NEWLINE: "^" and "$" at every line, "." stops at one.
            flags |= re.DOTALL
            extended = True
            for f in flags_text:
                if f == "i":
                    flags ^= re.IGNORECASE
                elif f == "m":
                    flags ^= re.MULTILINE | re.DOTALL
                elif f == "x":
                    extended = not extended
                else:
                    self._warn(lineno, f'unknown regexp option "{f}": skipping this rule')
                    raise _SkipRule
            try:
                regex = re.compile(posix_to_python(source, extended), flags)
            except re.error as e:
                self._warn(lineno, _posix_error(e))
                raise _SkipRule from None
            return _Compiled(regex.search, regex.groups)
        return self._compile_pcre(lineno, source, flags_text)

    def _compile_pcre(self, lineno: int, source: str, flags_text: str) -> _Compiled:
        options = int(pcre2.IGNORECASE)
        anchored = False
        for f in flags_text:
            if f == "i":
                options ^= pcre2.IGNORECASE
            elif f == "m":
                options |= pcre2.MULTILINE
            elif f == "s":
                options |= pcre2.DOTALL
            elif f == "x":
                options |= pcre2.VERBOSE
            elif f == "A":
                anchored = True
            elif f == "E":
                options |= PCRE2_DOLLAR_ENDONLY
            elif f == "U":
                options |= PCRE2_UNGREEDY
            elif f == "X":
                self._warn(lineno, 'ignoring obsolete regexp option "X"')
            else:
                self._warn(lineno, f'unknown regexp option "{f}": skipping this rule')
                raise _SkipRule
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
        return _Compiled(search, regex.groups)

    def _check_result(self, lineno: int, result: str, negate: bool, groups: int) -> str:
        if not result:
            self._warn(lineno, "no replacement text: using empty string")
            return ""
        for m in _REF_RE.finditer(result):
            name = m.group(1) or m.group(2) or m.group(3)
            if name is None:
                continue
            if not name.isdigit():
                self._warn(lineno, f'non-numeric replacement index "{name}"')
                self._warn(lineno, "bad replacement syntax: skipping this rule")
                raise _SkipRule
            if negate:
                self._warn(lineno, "$number found in negative match replacement text: "
                           "skipping this rule")
                raise _SkipRule
            if int(name) > groups:
                self._warn(lineno, f'out of range replacement index "{name}": skipping this rule')
                raise _SkipRule
        return result

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
                rule = replace(rule, search=_never, unless=None)
            restricted.rules.append(rule)
        return restricted

    # lookup ---------------------------------------------------------------
    def lookup(self, key: str) -> str | None:
        i = 0
        rules = self.rules
        while i < len(rules):
            rule = rules[i]
            m = rule.search(key)
            matched = (m is None) if rule.negate else (m is not None)
            if matched and rule.unless is not None and rule.unless(key) is not None:
                matched = False
            if rule.result is None:
                i = i + 1 if matched else rule.end
                continue
            if matched:
                if m is None or rule.negate:
                    return rule.result.replace("$$", "$")
                return _substitute(rule.result, m)
            i += 1
        return None


_REF_RE = re.compile(r"\$(?:\$|\{([^}]*)\}|\(([^)]*)\)|([A-Za-z0-9_]+))")


def _substitutes(result: str) -> bool:
    """Whether a (checked) result copies text of the key: a ``$n`` other than ``$$``."""
    return any(ref.group(1) or ref.group(2) or ref.group(3) for ref in _REF_RE.finditer(result))


def _substitute(result: str, m: Any) -> str:
    def repl(ref: re.Match[str]) -> str:
        name = ref.group(1) or ref.group(2) or ref.group(3)
        if name is None:
            return "$"
        return m.group(int(name)) or ""
    return _REF_RE.sub(repl, result)


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
