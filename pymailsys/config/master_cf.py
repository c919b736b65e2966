"""master.cf: the service table, parsed exactly as Postfix's master does.

NAME
    master_cf - read and validate master.cf

SYNOPSIS
    entries = master_cf.parse_file(path)        # list[ServiceEntry], file order
    entries = master_cf.parse_text(text, path)

DESCRIPTION
    Takes master.cf text in Postfix's syntax and returns one ``ServiceEntry``
    per service, in file order.

    * ``#`` comment lines and blank lines are ignored; a line that starts with
      white space continues the logical line before it (comment lines inside a
      continued entry are skipped too).
    * Eight columns: service, type, private, unpriv, chroot, wakeup, maxproc,
      command + arguments. ``-`` selects the default: private ``y``, unpriv
      ``y``, chroot ``n``, wakeup ``0`` (never), maxproc
      ``$default_process_limit`` (kept as ``None`` here; the caller resolves
      it). maxproc ``0`` means no limit.
    * type is one of ``inet``, ``unix``, ``unix-dgram``, ``fifo``, ``pass``.
      An inet service is ``[host:]port`` (``[::1]:25`` for IPv6) and is never
      private; the other types name a path under ``queue_directory``:
      ``private/NAME`` when private is ``y``, ``public/NAME`` when ``n``.
    * wakeup is a number of seconds, optionally followed by ``?`` (wake up only
      after the service has been used).
    * Arguments: ``-o name=value``; ``-o { name = value with spaces }`` (white
      space around ``=`` and inside the braces trimmed); any other ``{ ... }``
      groups words into one argument (braces removed, outer space trimmed).
      Arguments are not ``$``-expanded here: the daemon expands ``-o`` values
      at use, like main.cf values.
    * A later entry with the same service name and type replaces the earlier
      one (it keeps the later entry's position).
    * ``ServiceEntry.columns`` keeps the private..maxproc columns as written
      (``-`` included), for ``postconf -M``, which prints them unresolved.

DIAGNOSTICS
    A malformed entry raises ``config.ConfigError`` whose text names the file
    and line: ``file /etc/pymailsys/master.cf: line 12: invalid type field
    "bar" in "foo bar n - - - - x"``.

SEE ALSO
    Postfix master(5); pymailsys.daemons.master, which runs the services.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from pymailsys.config import ConfigError

TYPES = ("inet", "unix", "unix-dgram", "fifo", "pass")
_WAKEUP_RE = re.compile(r"^(\d+)(\??)$")


@dataclass
class ServiceEntry:
    """One master.cf service, defaults applied (maxproc None = $default_process_limit)."""

    name: str
    type: str
    private: bool = True
    unpriv: bool = True
    chroot: bool = False
    wakeup: int = 0
    wakeup_after_use: bool = False  # the "N?" form
    maxproc: int | None = None
    command: str = ""
    args: list[str] = field(default_factory=list)
    columns: list[str] = field(default_factory=list)  # private..maxproc as written
    path: str = ""  # the file it came from
    line: int = 0   # the line its entry starts on

    @property
    def key(self) -> tuple[str, str]:
        return (self.name, self.type)

    def overrides(self) -> list[tuple[str, str]]:
        """The ``-o name=value`` pairs among the arguments, in order."""
        out: list[tuple[str, str]] = []
        args = self.args
        i = 0
        while i < len(args):
            if args[i] == "-o" and i + 1 < len(args):
                name, _, value = args[i + 1].partition("=")
                out.append((name.strip(), value.strip()))
                i += 2
                continue
            if args[i].startswith("-o") and len(args[i]) > 2:
                name, _, value = args[i][2:].partition("=")
                out.append((name.strip(), value.strip()))
            i += 1
        return out

    def socket_name(self, queue_directory: str) -> str:
        """The listener path of a unix/unix-dgram/fifo/pass service."""
        sub = "private" if self.private else "public"
        return os.path.join(queue_directory, sub, self.name)

    def inet_address(self) -> tuple[str | None, str]:
        """(host or None, port) of an inet service name ``[host:]port``."""
        return split_inet(self.name)

    def where(self) -> str:
        return f"file {self.path}: line {self.line}"


def split_inet(name: str) -> tuple[str | None, str]:
    """Split ``[host:]port`` (host may be ``[v6addr]``) into (host or None, port)."""
    if name.startswith("["):
        close = name.find("]")
        if close > 0 and name[close + 1:close + 2] == ":":
            return name[1:close], name[close + 2:]
    host, sep, port = name.rpartition(":")
    if not sep:
        return None, name
    return host.strip("[]") or None, port


def _logical_entries(text: str) -> list[tuple[int, str]]:
    """(first line number, joined text) for each entry; comments and blanks dropped."""
    out: list[tuple[int, str]] = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if raw[0].isspace() and out:
            start, prev = out[-1]
            out[-1] = (start, prev + " " + stripped)
            continue
        out.append((lineno, stripped))
    return out


def split_args(text: str, where: str = "") -> list[str]:
    """Split a command + arguments field: white space separates words, {...} groups.

    ``-o { name = value }`` becomes ``-o``, ``name=value``; another ``{ a b }``
    becomes the single word ``a b``.
    """
    words: list[str] = []
    i, n = 0, len(text)
    while i < n:
        if text[i].isspace():
            i += 1
            continue
        if text[i] == "{":
            depth, j = 0, i
            while j < n:
                if text[j] == "{":
                    depth += 1
                elif text[j] == "}":
                    depth -= 1
                    if depth == 0:
                        break
                j += 1
            if depth != 0:
                raise ConfigError(f"{where}: missing '}}' in \"{text[i:]}\"")
            inner = text[i + 1:j].strip()
            if j + 1 < n and not text[j + 1].isspace():
                raise ConfigError(f"{where}: syntax error after '}}' in \"{text[i:]}\"")
            if words and words[-1] == "-o":
                name, sep, value = inner.partition("=")
                if not sep:
                    raise ConfigError(f"{where}: missing '=' in \"-o {{{inner}}}\"")
                inner = f"{name.strip()}={value.strip()}"
            words.append(inner)
            i = j + 1
            continue
        j = i
        while j < n and not text[j].isspace():
            j += 1
        words.append(text[i:j])
        i = j
    return words


def _flag(value: str, column: str, default: bool, where: str, entry: str) -> bool:
    if value == "-":
        return default
    if value in ("y", "n"):
        return value == "y"
    raise ConfigError(f'{where}: invalid {column} field "{value}" in "{entry}"')


def parse_entry(text: str, path: str = "master.cf", line: int = 0) -> ServiceEntry:
    """Parse one logical master.cf entry (already joined)."""
    where = f"file {path}: line {line}"
    fields = text.split(None, 7)
    if len(fields) < 8:
        raise ConfigError(f"{where}: bad field count")
    name, kind, private, unpriv, chroot, wakeup, maxproc, command = fields
    if kind not in TYPES:
        raise ConfigError(f'{where}: invalid type field "{kind}" in "{text}"')
    entry = ServiceEntry(name=name, type=kind, path=path, line=line,
                         columns=[private, unpriv, chroot, wakeup, maxproc])
    entry.private = _flag(private, "private", True, where, text)
    entry.unpriv = _flag(unpriv, "unprivileged", True, where, text)
    entry.chroot = _flag(chroot, "chroot", False, where, text)
    if kind == "inet":
        entry.private = False
        host, port = split_inet(name)
        if not port or (host is not None and not host):
            raise ConfigError(f'{where}: invalid service field "{name}" in "{text}"')
    elif name.startswith("/") or ".." in name.split("/"):
        raise ConfigError(f'{where}: invalid service field "{name}" in "{text}"')
    if wakeup != "-":
        m = _WAKEUP_RE.match(wakeup)
        if not m:
            raise ConfigError(f'{where}: invalid wakeup field "{wakeup}" in "{text}"')
        entry.wakeup = int(m.group(1))
        entry.wakeup_after_use = bool(m.group(2))
    if maxproc != "-":
        if not maxproc.isdigit():
            raise ConfigError(f'{where}: invalid process_limit field "{maxproc}" in "{text}"')
        entry.maxproc = int(maxproc)
    words = split_args(command, where)
    if not words:
        raise ConfigError(f"{where}: bad field count")
    entry.command = words[0]
    entry.args = words[1:]
    i = 0
    while i < len(entry.args):
        if entry.args[i] == "-o":
            if i + 1 >= len(entry.args) or "=" not in entry.args[i + 1]:
                raise ConfigError(f'{where}: -o option requires name=value in "{text}"')
            i += 2
            continue
        i += 1
    return entry


def parse_text(text: str, path: str = "master.cf") -> list[ServiceEntry]:
    """All entries of a master.cf text; a later same name+type replaces an earlier one."""
    entries: dict[tuple[str, str], ServiceEntry] = {}
    for line, logical in _logical_entries(text):
        entry = parse_entry(logical, path, line)
        entries.pop(entry.key, None)
        entries[entry.key] = entry
    return list(entries.values())


def parse_file(path: str) -> list[ServiceEntry]:
    """Read and parse a master.cf file; a missing or unreadable file is a ConfigError."""
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(f"open {path}: {e.strerror}") from e
    return parse_text(text, path)
