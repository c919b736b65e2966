"""main.cf: reading, expansion and typed access to parameters.

Takes a configuration directory (``-c dir``, else ``$MAIL_CONFIG``, else
``/etc/pymailsys``) and reads ``main.cf`` in Postfix's syntax: ``name = value``,
blanks around ``=`` and at the end ignored, ``#`` comment lines and blank lines
ignored, a line that starts with white space continues the one before, the last
definition wins (``Config.overridden`` keeps Postfix's warning for each earlier
one, which daemons log at start and ``postfix check`` prints).

Values are expanded at use, never at read time: ``$name``, ``${name}``,
``$(name)``, ``${name?value}``, ``${name?{value}}``, ``${name:value}``,
``${name:{value}}``, ``${name?{v1}:{v2}}``, ``${{a} op {b} ? {v1} : {v2}}`` with
op one of ``== != < <= > >=`` (numeric when both sides are digits) and
``<level <=level >level >=level`` (compatibility levels), and ``$$`` for ``$``.
An undefined name expands to the empty string. A ``myorigin`` that names a file
(Debian's main.cf has ``myorigin = /etc/mailname``) is that file's first line,
as Debian's Postfix takes it (``get``; ``postconf`` shows the name). An unset ``mynetworks`` is
computed from mynetworks_style, inet_interfaces and inet_protocols, as
Postfix computes it (``config.mynetworks``), so ``$mynetworks`` and ``postconf
mynetworks`` give the networks in force. ``MacroExpander`` is that engine
(Postfix's mac_expand) for any lookup: local's forward_path expansion uses it
with the recipient's attributes, no recursion and forward_expansion_filter.

Promises: ``get`` returns the expanded value of a parameter declared in
``params.PARAMS`` (from main.cf, ``-o`` overrides, or the built-in default) and
refuses undeclared names; ``get_int``/``get_bool``/``get_time``/``get_size``/
``get_list`` convert or raise ``ConfigError`` naming the parameter and where it
was set (``origin``: the main.cf line, or the master.cf entry of an override).
A malformed main.cf line raises ``ConfigError`` naming the file and line.
``pymailsys.config.validate`` checks every value against the parameter table.

Daemons started by master read the copy of main.cf that master checked and runs
on (``running_text``: the file named by ``$PYMAILSYS_RUNNING_MAIN_CF``, which
master sets for its children), so an edited main.cf takes effect at ``postfix
reload`` and a reload that master refused never reaches a new child.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping

from pymailsys.config import mynetworks, params
from pymailsys.config.lines import SPACE, logical_lines, split_nameval

DEFAULT_CONFIG_DIR = "/etc/pymailsys"
RUNNING_COPY_ENV = "PYMAILSYS_RUNNING_MAIN_CF"

_NAME_RE = re.compile(r"[A-Za-z0-9_]+")
_TIME_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_SIZE_RE = re.compile(r"^\s*(\d+)\s*$")
_INT_RE = re.compile(r"^\s*(-?\d+)\s*$")


class ConfigError(Exception):
    """A configuration problem; the message names the file and line when there is one."""


class UnknownParameter(KeyError):
    """Code asked for a parameter that params.PARAMS does not declare."""


def resolve_config_dir(cli_value: str | None = None) -> str:
    """The configuration directory: -c value, else MAIL_CONFIG, else the default."""
    return cli_value or os.environ.get("MAIL_CONFIG") or DEFAULT_CONFIG_DIR


def read_main_cf(path: str) -> str:
    """main.cf's text ('' when there is none); ConfigError when it cannot be read."""
    try:
        with open(path, encoding="utf-8", errors="surrogateescape", newline="") as f:
            return f.read()
    except FileNotFoundError:
        return ""
    except OSError as e:
        raise ConfigError(f"open {path}: {e.strerror}") from e


def running_text() -> str | None:
    """The text of master's checked copy of main.cf, for its children; None without one."""
    path = os.environ.get(RUNNING_COPY_ENV)
    if not path:
        return None
    try:
        with open(path, encoding="utf-8", errors="surrogateescape", newline="") as f:
            return f.read()
    except OSError:
        return None


def parse_main_cf(path: str, text: str | None = None
                  ) -> tuple[dict[str, str], dict[str, int], list[str]]:
    """Parse main.cf (or its text, named path) into (values, line numbers, overridden).
    Missing: empty. ``overridden`` has Postfix's warning for each name set again
    (``PATH, line N: overriding earlier entry: name=earlier value``)."""
    values: dict[str, str] = {}
    lines: dict[str, int] = {}
    overridden: list[str] = []
    if text is None:
        text = read_main_cf(path)
    def leading_space(lineno: int, line: str) -> None:
        raise ConfigError(f'{path}, line {lineno}: text before the first parameter: "{line.strip()}"')

    for lineno, logical in logical_lines(text, leading_space):
        # Postfix's rule: any name up to white space or "=" (my-param too; it is an
        # "unused parameter" unless something uses it).
        try:
            name, value = split_nameval(logical)
        except ValueError as e:
            raise ConfigError(f'{path}, line {lineno}: {e}: "{logical.strip(SPACE)}"') from None
        if name in values:
            overridden.append(f"{path}, line {lineno}: overriding earlier entry: "
                              f"{name}={values[name]}")
        values[name] = value
        lines[name] = lineno
    return values, lines, overridden


def split_list(value: str) -> list[str]:
    """Split a list value on commas and white space, keeping {braced groups} whole."""
    out: list[str] = []
    depth = 0
    word: list[str] = []
    for ch in value:
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        if depth == 0 and (ch == "," or ch.isspace()):
            if word:
                out.append("".join(word))
                word = []
            continue
        word.append(ch)
    if word:
        out.append("".join(word))
    return out


def parse_time(value: str, unit: str = "s", name: str = "") -> int:
    v = value.strip()
    m = re.fullmatch(r"(\d+)([smhdw]?)", v)
    if not m:
        raise ConfigError(f"parameter {name}: bad time value or unit: {value}")
    return int(m.group(1)) * _TIME_UNITS[m.group(2) or unit]


class Config:
    """One loaded configuration: main.cf values plus overrides, expanded at use."""

    def __init__(self, config_dir: str, values: Mapping[str, str],
                 lines: Mapping[str, int] | None = None,
                 origins: Mapping[str, str] | None = None) -> None:
        self.config_dir = config_dir
        self.main_cf = os.path.join(config_dir, "main.cf")
        self._values = dict(values)
        self._lines = dict(lines or {})
        self._origins = dict(origins or {})  # where an override came from, e.g. a master.cf line
        self._cache: dict[str, str] = {}
        self._computed_mynetworks: str | None = None
        self.overridden: list[str] = []  # main.cf lines that set a name again (load)

    # raw access -----------------------------------------------------------
    def explicit(self) -> dict[str, str]:
        """Parameters set in main.cf (or overrides), unexpanded, in file order."""
        return dict(self._values)

    def is_set(self, name: str) -> bool:
        return name in self._values

    def raw(self, name: str) -> str | None:
        """Unexpanded value: explicit, else the built-in default, else None."""
        if name in self._values:
            return self._values[name]
        if name == "mynetworks":
            return self._mynetworks()
        if name in params.PARAMS:
            return params.default_of(name)
        return None

    def _mynetworks(self) -> str:
        """mynetworks when main.cf leaves it unset: computed as Postfix does, once."""
        if self._computed_mynetworks is None:
            self._computed_mynetworks = mynetworks.computed(
                self.get("mynetworks_style"), self.get_list("inet_interfaces"),
                self.get_list("inet_protocols"))
        return self._computed_mynetworks

    def with_overrides(self, overrides: Mapping[str, str], origin: str = "") -> Config:
        """This configuration with overrides (set at origin, e.g. ``file F: line N``)."""
        values = dict(self._values)
        values.update(overrides)
        lines = {name: line for name, line in self._lines.items() if name not in overrides}
        origins = {name: where for name, where in self._origins.items() if name not in overrides}
        if origin:
            origins.update(dict.fromkeys(overrides, origin))
        cfg = Config(self.config_dir, values, lines, origins)
        cfg.overridden = self.overridden
        return cfg

    # expanded access ------------------------------------------------------
    def get(self, name: str) -> str:
        if name not in params.PARAMS and name not in self._values:
            raise UnknownParameter(name)
        cached = self._cache.get(name)
        if cached is None:
            cached = MacroExpander(self.raw).expand(self.raw(name) or "", (name,))
            if name == "myorigin" and cached.startswith("/"):
                cached = _origin_from_file(cached)
            self._cache[name] = cached
        return cached

    def get_int(self, name: str) -> int:
        value = self.get(name)
        m = _INT_RE.match(value)
        if not m:
            raise ConfigError(f'{self._where(name)}bad numerical configuration: {name} = {value}')
        return int(m.group(1))

    def get_size(self, name: str) -> int:
        value = self.get(name)
        m = _SIZE_RE.match(value)
        if not m:
            raise ConfigError(f'{self._where(name)}bad numerical configuration: {name} = {value}')
        return int(m.group(1))

    def get_bool(self, name: str) -> bool:
        value = self.get(name).lower()
        if value in ("yes", "true", "1"):
            return True
        if value in ("no", "false", "0"):
            return False
        raise ConfigError(f'{self._where(name)}bad boolean configuration: {name} = {value}')

    def get_time(self, name: str) -> int:
        unit = params.PARAMS[name].unit if name in params.PARAMS else "s"
        try:
            return parse_time(self.get(name), unit, name)
        except ConfigError as e:
            raise ConfigError(self._where(name) + str(e)) from None

    def get_list(self, name: str) -> list[str]:
        return split_list(self.get(name))

    def origin(self, name: str) -> str:
        """Where name was set: ``/etc/pymailsys/main.cf, line 12``, an override's origin, or ''."""
        if name in self._origins:
            return self._origins[name]
        line = self._lines.get(name)
        return f"{self.main_cf}, line {line}" if line else ""

    def _where(self, name: str) -> str:
        origin = self.origin(name)
        return f"{origin}: " if origin else ""

    # expansion ------------------------------------------------------------
    def expand(self, text: str) -> str:
        """Expand $name references in text against this configuration (undefined: empty)."""
        return MacroExpander(self.raw).expand(text)


def _origin_from_file(path: str) -> str:
    """myorigin given as a file name (Debian's ``myorigin = /etc/mailname``): its first
    line, blanks trimmed, as Debian's Postfix reads it; ConfigError in its words when
    the file cannot be read or that line is empty."""
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            line = f.readline(1024).strip()
    except OSError as e:
        raise ConfigError(f"{path}: cannot open file: {e.strerror}") from None
    if not line:
        raise ConfigError(f"myorigin file {path} is empty")
    return line


# --- $name expansion (Postfix's mac_expand) -----------------------------------------

Lookup = Callable[[str], "str | None"]


class MacroExpander:
    """Postfix's mac_expand over one lookup: ``expand(text)`` -> the expanded text.

    ``lookup(name)`` returns a value or None (undefined). With ``recurse``
    (main.cf), a looked-up value is itself expanded, and a name that refers
    back to itself is a ``ConfigError``; without it (local_expand), values are
    taken as they are and, with ``allowed``, every character of a value not in
    ``allowed`` becomes ``_`` (the expansion filter). ``${name?text}`` gives
    text when the value is non-empty, ``${name:text}`` when it is undefined or
    empty; text is expanded in turn. A plain ``$name`` of an undefined name
    expands to nothing and sets ``undefined`` (local_expand then skips the
    entry). A syntax error (an unmatched bracket, a bad name, a bad
    comparison) is a ``ConfigError``.
    """

    def __init__(self, lookup: Lookup, recurse: bool = True,
                 allowed: frozenset[str] | set[str] | None = None) -> None:
        self.lookup = lookup
        self.recurse = recurse
        self.allowed = allowed
        self.undefined = False

    def expand(self, text: str, seen: tuple[str, ...] = ()) -> str:
        if "$" not in text:
            return text
        out: list[str] = []
        i, n = 0, len(text)
        while i < n:
            ch = text[i]
            if ch != "$":
                j = text.find("$", i)
                if j < 0:
                    j = n
                out.append(text[i:j])
                i = j
                continue
            if i + 1 >= n:
                out.append("$")
                break
            nxt = text[i + 1]
            if nxt == "$":
                out.append("$")
                i += 2
            elif nxt in "{(":
                close = _matching(text, i + 1)
                if close < 0:
                    raise ConfigError(f'unmatched "{nxt}" in "{text}"')
                out.append(self._braced(text[i + 2:close], seen))
                i = close + 1
            else:
                m = _NAME_RE.match(text, i + 1)
                if not m:
                    out.append("$")
                    i += 1
                    continue
                out.append(self._value(m.group(0), seen, plain=True))
                i = m.end()
        return "".join(out)

    def _value(self, name: str, seen: tuple[str, ...], plain: bool = False) -> str:
        if name in seen:
            raise ConfigError(f"recursive parameter expansion: {' -> '.join(seen + (name,))}")
        value = self.lookup(name)
        if value is None:
            if plain:
                self.undefined = True
            return ""
        if self.recurse:
            return self.expand(value, seen + (name,))
        if self.allowed is not None and not self.allowed.issuperset(value):
            value = "".join(c if c in self.allowed else "_" for c in value)
        return value

    def _braced(self, inner: str, seen: tuple[str, ...]) -> str:
        if inner.startswith("{"):
            return self._conditional(inner, seen)
        m = _NAME_RE.match(inner)
        if not m:
            raise ConfigError(f'bad parameter reference "${{{inner}}}"')
        name = m.group(0)
        rest = inner[m.end():]
        if not rest:
            return self._value(name, seen, plain=True)
        op, arg = rest[0], rest[1:]
        if op not in "?:":
            raise ConfigError(f'bad parameter reference "${{{inner}}}"')
        value = self._value(name, seen)
        if op == "?":
            if arg.startswith("{"):
                first_end = _matching(arg, 0)
                then = arg[1:first_end]
                tail = arg[first_end + 1:].strip()
                if tail.startswith(":"):
                    other = _unbrace(tail[1:].strip())
                    return self.expand(then if value else other, seen)
                return self.expand(then, seen) if value else ""
            return self.expand(arg, seen) if value else ""
        return "" if value else self.expand(_unbrace(arg), seen)

    def _conditional(self, inner: str, seen: tuple[str, ...]) -> str:
        end_a = _matching(inner, 0)
        if end_a < 0:
            raise ConfigError(f'unmatched "{{" in "${{{inner}}}"')
        left = self.expand(inner[1:end_a], seen).strip()
        rest = inner[end_a + 1:].lstrip()
        m = re.match(r"(==|!=|<=level|>=level|<level|>level|<=|>=|<|>)\s*", rest)
        if not m:
            raise ConfigError(f'bad comparison in "${{{inner}}}"')
        op = m.group(1)
        rest = rest[m.end():]
        end_b = _matching(rest, 0) if rest.startswith("{") else -1
        if end_b < 0:
            raise ConfigError(f'bad comparison in "${{{inner}}}"')
        right = self.expand(rest[1:end_b], seen).strip()
        rest = rest[end_b + 1:].strip()
        if not rest.startswith("?"):
            raise ConfigError(f'missing "?" in "${{{inner}}}"')
        rest = rest[1:].strip()
        end_t = _matching(rest, 0) if rest.startswith("{") else -1
        if end_t < 0:
            raise ConfigError(f'bad comparison in "${{{inner}}}"')
        then = rest[1:end_t]
        rest = rest[end_t + 1:].strip()
        other = _unbrace(rest[1:].strip()) if rest.startswith(":") else ""
        return self.expand(then if _compare(left, op, right) else other, seen)


def _matching(text: str, open_at: int) -> int:
    """Index of the bracket closing the one at open_at, or -1."""
    opener = text[open_at]
    closer = "}" if opener == "{" else ")"
    depth = 0
    for j in range(open_at, len(text)):
        if text[j] == opener:
            depth += 1
        elif text[j] == closer:
            depth -= 1
            if depth == 0:
                return j
    return -1


def _unbrace(text: str) -> str:
    text = text.strip()
    if text.startswith("{") and _matching(text, 0) == len(text) - 1:
        return text[1:-1]
    return text


def _level(value: str) -> tuple[int, ...]:
    parts = re.findall(r"\d+", value) or ["0"]
    return tuple(int(p) for p in parts)


def _compare(left: str, op: str, right: str) -> bool:
    if op.endswith("level"):
        a, b = _level(left), _level(right)
        op = op[:-5]
    elif left.isdigit() and right.isdigit():
        a, b = int(left), int(right)  # type: ignore[assignment]
    else:
        a, b = left, right  # type: ignore[assignment]
    return {
        "==": a == b, "!=": a != b, "<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b,
    }[op]


def load(config_dir: str | None = None, overrides: Mapping[str, str] | None = None,
         text: str | None = None) -> Config:
    """Load main.cf from config_dir (resolved as -c / MAIL_CONFIG / default), or its text."""
    directory = resolve_config_dir(config_dir)
    values, lines, overridden = parse_main_cf(os.path.join(directory, "main.cf"), text)
    values.setdefault("config_directory", directory)
    cfg = Config(directory, values, lines)
    cfg.overridden = overridden
    return cfg.with_overrides(overrides) if overrides else cfg
