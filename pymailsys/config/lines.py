"""Logical lines, as Postfix's readllines() reads main.cf and every table source.

``logical_lines(text, warn)`` yields ``(first line number, logical line)``.
Promises Postfix's rules (util/readlline.c), the same for main.cf, aliases and
the sources of texthash, cidr, regexp and pcre tables:

* lines end at ``\\n`` only; a CR before it is text, as in Postfix;
* a line that is empty, white space only, or whose first non-blank character
  is ``#`` is skipped, and does not end the logical line it sits in;
* a line that starts with white space continues the logical line before it:
  it is appended as it is, leading white space included and no newline
  (``a`` + ``<TAB>b`` gives ``a<TAB>b``); nothing else is trimmed, callers
  trim what their syntax says (``name = value``, ``key value``);
* a logical line that would start with white space (continuation text before
  any other text) is skipped after ``warn(lineno, text)``, Postfix's "logical
  line must not start with whitespace"; callers may refuse it instead.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

LeadingSpace = Callable[[int, str], None]
BLANK = " \t\r\f\v"  # Postfix's ISSPACE() within a line: ASCII white space, no newline
_BLANK = BLANK


def physical_lines(text: str) -> list[str]:
    """text's lines as Postfix reads them: split at ``\n`` only, every other character
    kept (CR, form feed, U+2028, ...); no empty last line for a final ``\n``."""
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return lines


def logical_lines(text: str, warn: LeadingSpace | None = None) -> Iterator[tuple[int, str]]:
    """Postfix's readllines() over text: (first line number, logical line)."""
    current: list[str] = []
    start = 0
    for lineno, line in enumerate(text.split("\n"), 1):
        stripped = line.lstrip(_BLANK)
        if not stripped or stripped[0] == "#":
            continue
        if line[0] in _BLANK:
            if not current:
                start = lineno
            current.append(line)
            continue
        yield from _finish(start, current, warn)
        current, start = [line], lineno
    yield from _finish(start, current, warn)


def _finish(start: int, parts: list[str], warn: LeadingSpace | None) -> Iterator[tuple[int, str]]:
    if not parts:
        return
    line = "".join(parts)
    if line[0] in _BLANK:
        if warn is not None:
            warn(start, line)
        return
    yield start, line


SPACE = BLANK + "\n"  # Postfix's ISSPACE()


def split_nameval(text: str) -> tuple[str, str]:
    """``name = value`` as Postfix's split_nameval() takes it apart (main.cf lines,
    ``postconf -e``): the name is what precedes the first white space or ``=`` and
    may hold any other character (``my-param``, ``a.b``); white space around the
    name and the value is Postfix's ASCII white space. ValueError with Postfix's
    reason (``missing attribute name``, ``missing '=' after attribute name``)."""
    rest = text.lstrip(SPACE)
    if not rest or rest[0] == "=":
        raise ValueError("missing attribute name")
    end = 0
    while end < len(rest) and rest[end] not in SPACE and rest[end] != "=":
        end += 1
    after = rest[end:].lstrip(SPACE)
    if not after.startswith("="):
        raise ValueError("missing '=' after attribute name")
    return rest[:end], after[1:].strip(SPACE)
