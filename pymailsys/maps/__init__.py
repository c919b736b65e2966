"""Lookup tables: one registry of ``type:name`` tables, and lists of them.

``open_table("hash:/etc/aliases")`` returns a ``Table`` whose ``lookup(key)``
has Postfix's three outcomes: a string (found), ``None`` (not found), or a
``TableError`` raised (the table could not answer: the caller defers, it never
treats this as not found). Tables are opened once per process and cached;
indexed files are reopened when postmap/postalias replaced them, and
``changed_table()`` names the first one replaced since this process opened it
(the server skeleton then restarts the daemon, as Postfix's do).

``Maps(config, "alias_maps")`` is a parameter's list of tables searched in
order (Postfix's maps_find): the first table that finds the key wins;
``find_table`` also names that table, whose ``owner`` (``maps.base``) local
needs for an alias's delivery rights. A table
that answers an empty string (a regexp or pcre rule without a result) is a
configuration error, as in Postfix: two warnings (``PARAM lookup of KEY
returns an empty string result``, ``PARAM should return NO RESULT in case of
NOT FOUND``) and ``TableConfigError`` (a ``TableError``), so the caller defers.

Registered types here: ``hash``, ``btree``, ``lmdb`` (all indexed with lmdb in
``name.lmdb``, keys folded to lower case, stored with a trailing NUL),
``texthash``, ``inline``, ``static``, ``unix:passwd.byname``, ``proxy:`` (a
prefix dropped once proxy_read_maps allows the table, ``configure``: tables
are read in-process, so the table behind it, its owner included, is the one
used; a table it does not allow fails every lookup, as Postfix's proxymap
refuses it). The owner of an indexed table
is that of ``name.lmdb``, as opened (Postfix: of the .db file), of a texthash,
regexp, pcre or cidr table that of its source; tables without a file are
root's. Other types
register themselves with ``@register("type")``; an unknown type raises
``TableError`` naming it.

Source files (``read_source`` reads one, ``iter_source`` parses it): ``key
value`` lines, ``#`` comments and blank lines ignored, leading whitespace
continues a line, a key ends at white space outside ``"quotes"`` and not after
a backslash, and keeps them (as Postfix's postmap does). Alias files
(``iter_alias_source``): ``name: value, value``, the name read as RFC 822
tokens and folded to lower case. Both name the file and line in their errors.
A texthash table with a duplicate key fails every lookup, as Postfix's does
in the daemons (``DUPLICATE_WARN``: postmap -q warns instead).
"""

from __future__ import annotations

import contextlib
import copy
import errno
import hashlib
import os
import signal
import stat
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

from pymailsys import config as config_mod
from pymailsys import log, passwd, rfc822
from pymailsys.maps.base import (
    REGISTRY,
    Table,
    TableConfigError,
    TableError,
    Warn,
    combined_owner,
    default_warn,
    logical_lines,
    read_source,
    register,
    split_spec,
)
from pymailsys.maps.base import balanced_end as _balanced_end
from pymailsys.maps.base import extpar as _extpar

_cache: dict[str, Table] = {}
_without_regsub: dict[str, Table] = {}  # open_table(spec, regsub=False)


def open_table(spec: str, regsub: bool = True) -> Table:
    """The table named by type:name (cached per process). ``regsub=False`` opens it as
    Postfix opens the tables of security-sensitive parameters (DICT_FLAG_NO_REGSUB:
    local's alias_maps and per-user tables, virtual's mailbox and owner tables): a
    regexp or pcre rule whose result copies text of the key (``$1``) is skipped with
    Postfix's warning, so that what a sender puts in an address never becomes part
    of a command, a path or a uid (``Table.without_regsub``)."""
    spec = spec.strip()
    if not regsub:
        found = _without_regsub.get(spec)
        if found is None:
            found = _without_regsub[spec] = open_table(spec).without_regsub()
        return found
    table = _cache.get(spec)
    if table is not None:
        return table
    type_name, name = split_spec(spec)
    if type_name == "proxy":
        while name.startswith("proxy:"):
            name = name[len("proxy:"):]
        if _proxy_denied(name):
            table = DeniedTable(type_name, name)
        else:
            table = open_table(name)
    else:
        factory = REGISTRY.get(type_name)
        if factory is None:
            raise TableError(f"unsupported dictionary type: {type_name}")
        table = factory(type_name, name)
    _cache[spec] = table
    return table


_proxy_config: config_mod.Config | None = None  # None: not configured (every proxy: table)
_proxy_allowed: frozenset[str] | None = None  # computed at the first proxy: table
_utf8 = False  # smtputf8_enable, once configured: source lines must be UTF-8


def configure(config: config_mod.Config) -> None:
    """Settings of main.cf that tables follow from now on in this process (the server
    skeleton, postmap and newaliases call this once the configuration is loaded):
    the ``proxy:`` tables that may be read, those proxy_read_maps names with
    ``proxy:`` in front, as Postfix's proxymap serves only them (worked out when
    the first ``proxy:`` table is opened); and with smtputf8_enable, a table source
    line that is not UTF-8 is skipped with Postfix's warning (``PATH, line N:
    non-UTF-8 input "LINE" -- ignoring this line``)."""
    global _proxy_config, _proxy_allowed, _utf8
    _proxy_config, _proxy_allowed = config, None
    _utf8 = config.get_bool("smtputf8_enable")


def _proxy_denied(name: str) -> bool:
    """Whether proxy_read_maps leaves out the table ``proxy:name`` (``configure``)."""
    global _proxy_allowed
    if _proxy_config is None:
        return False
    if _proxy_allowed is None:
        allowed = set()
        for word in _proxy_config.get_list("proxy_read_maps"):
            if word.startswith("proxy:"):
                while word.startswith("proxy:"):
                    word = word[len("proxy:"):]
                allowed.add(word)
        _proxy_allowed = frozenset(allowed)
    return name not in _proxy_allowed


def _not_utf8(line: str) -> bool:
    try:
        line.encode("utf-8")
    except UnicodeEncodeError:  # a byte that was not UTF-8, kept as a surrogate escape
        return True
    return False


class DeniedTable(Table):
    """A ``proxy:`` table that proxy_read_maps does not list: every lookup fails, with
    Postfix's warning (``proxy:hash:/x is unavailable. proxymap service is not
    configured for table "hash:/x"``), so that mail waits until the setting is fixed."""

    owner = 0

    def lookup(self, key: str) -> str | None:
        reason = f'proxymap service is not configured for table "{self.name}"'
        log.warning(f"{self.spec} is unavailable. {reason}")
        raise TableError(f"{self.spec} is unavailable. {reason}")


def changed_table() -> str | None:
    """The first open table whose file has changed since this process opened it
    (``type:name``), or None: Postfix's dict_changed_name(), which the server
    skeleton asks between requests to restart the daemon."""
    for table in _cache.values():
        if table.changed():
            return table.spec
    return None


class Maps:
    """A list of tables from a parameter value, searched in order."""

    def __init__(self, config: config_mod.Config | None, param: str | None = None,
                 specs: list[str] | None = None, regsub: bool = True) -> None:
        if specs is None:
            assert config is not None and param is not None
            specs = config.get_list(param)
        self.param = param or ""
        self.specs = [s for s in specs if s]
        self.tables = [open_table(s, regsub) for s in self.specs]

    def __bool__(self) -> bool:
        return bool(self.tables)

    def find(self, key: str, partial: bool = False) -> str | None:
        """First table that finds key; TableError if a table fails first.

        ``partial`` is Postfix's PARTIAL lookup flag: the key is a derived
        one (a parent domain, a shortened IP address, ``@domain``...), and
        only fixed-key tables are asked, never regexp, pcre or cidr tables.
        """
        found = self.find_table(key, partial)
        return found[0] if found is not None else None

    def find_table(self, key: str, partial: bool = False) -> tuple[str, Table] | None:
        """``find``'s value with the table that answered it (Postfix's alias lookup
        asks each table in turn for this: whose the value is, ``Table.owner``)."""
        for table in self.tables:
            if partial and not table.fixed:
                continue
            k = key.lower() if table.fold else key
            value = table.lookup(k)
            if value == "":
                # a regexp or pcre rule without (or with an empty) result
                title = self.param or table.spec
                log.warning(f"{title} lookup of {key} returns an empty string result")
                log.warning(f"{title} should return NO RESULT in case of NOT FOUND")
                raise TableConfigError(f"{title} lookup of {key} returns an empty string result")
            if value is not None:
                return value, table
        return None


_C_SPACE = " \t\n\r\f\v"  # C's isspace()


def iter_source(text: str, path: str, warn: Warn | None = None,
                suffix: str = "") -> Iterator[tuple[int, str, str]]:
    """postmap source, as Postfix's postmap (and texthash) reads it: (line, key, value).

    The key ends at the first white space that is not inside double quotes and not
    after a backslash, and keeps its quotes and backslashes (``"a b"c`` and ``a\\ b``
    are keys); the value is the rest, trimmed. Lines are yielded as they are read,
    so a caller's duplicate warnings come in line order. Skipped with Postfix's
    warnings (``suffix`` is appended, texthash's `` -- ignoring this line``): a line
    with an unbalanced quote (``PATH, line N: unbalanced '"' in 'LINE' -- ignoring
    this line``), a line without a key or value (``PATH, line N: expected format:
    key whitespace value``), a line that is not UTF-8 when ``configure`` says so. A key that ends in ``:`` is kept with Postfix's
    warning ``record is in "key: value" format; is this an alias file?``.
    """
    warn = warn or default_warn
    for lineno, line in logical_lines(text, path):
        if _utf8 and _not_utf8(line):
            warn(f'{path}, line {lineno}: non-UTF-8 input "{line}" -- ignoring this line')
            continue
        in_quotes = False

        def in_key(ch: str) -> bool:
            nonlocal in_quotes
            if ch == '"':
                in_quotes = not in_quotes
            return in_quotes or ch not in _C_SPACE
        _, i = _collect(line, 0, in_key)
        if in_quotes:
            warn(f"{path}, line {lineno}: unbalanced '\"' in '{line}' -- ignoring this line")
            continue
        key, value = line[:i], line[i + 1:].strip(_C_SPACE)
        if not key or not value:
            warn(f"{path}, line {lineno}: expected format: key whitespace value{suffix}")
            continue
        if key.endswith(":"):
            warn(f'{path}, line {lineno}: record is in "key: value" format; is this an alias file?')
        yield lineno, key, value


def parse_source(text: str, path: str, warn: Warn | None = None) -> list[tuple[int, str, str]]:
    """``iter_source`` as a list."""
    return list(iter_source(text, path, warn))


def iter_alias_source(text: str, path: str,
                      warn: Warn | None = None) -> Iterator[tuple[int, str, str]]:
    """aliases(5), as Postfix's postalias reads it: (line, lower-cased name, value).

    The line is read as RFC 822 tokens (``alias_name``); the name is the tokens
    before the first ``:`` in internal form (quotes and backslashes removed:
    ``"a b"``, ``a\\:b`` are the names ``a b``, ``a:b``), the value the tokens
    after it, re-spaced as postalias stores them (``rfc822.externalize_list``:
    ``b,c   d`` -> ``b, c d``). Skipped with Postfix's warnings: a line without
    a name, a ``:`` or a value, or with a ``,`` in the name (``PATH, line N: need
    name:value pair``, so ``name:`` is no alias), and a name with ``@`` or ``%``
    (``PATH, line N: name must be local``), and a line that is not UTF-8 when
    ``configure`` says so.
    """
    warn = warn or default_warn
    for lineno, line in logical_lines(text, path):
        if _utf8 and _not_utf8(line):
            warn(f'{path}, line {lineno}: non-UTF-8 input "{line}" -- ignoring this line')
            continue
        tokens, colon_end = alias_name(line)
        if colon_end < 0 or not tokens or not line[colon_end:].strip(" \t\r\n") or any(
                kind == "," for kind, _ in tokens):
            warn(f"{path}, line {lineno}: need name:value pair")
            continue
        if any(kind in ("@", "%") for kind, _ in tokens):
            warn(f"{path}, line {lineno}: name must be local")
            continue
        name = ""
        for n, (kind, word) in enumerate(tokens):
            name += word
            nxt = tokens[n + 1][0] if n + 1 < len(tokens) else ""
            if nxt == "<" or (kind in _NAME_WORDS and nxt in _NAME_WORDS):
                name += " "
        yield lineno, name.lower(), rfc822.externalize_list(line[colon_end:])


def parse_alias_source(text: str, path: str, warn: Warn | None = None) -> list[tuple[int, str, str]]:
    """``iter_alias_source`` as a list."""
    return list(iter_alias_source(text, path, warn))


_ALIAS_OPERATORS = "|%!()<>@,;:.[]"  # tok822's operators (the RFC 822 specials and |%!)
_NAME_WORDS = ("atom", "qstr", "comment", "domlit")


def alias_name(line: str) -> tuple[list[tuple[str, str]], int]:
    """The tokens of an aliases(5) line before its first ``:`` as Postfix's tok822_scan
    makes them ((kind, internal text): kind ``atom``, ``qstr``, ``comment``,
    ``domlit`` or the operator), and the index after that ``:`` (-1: none). An
    unterminated quoted string, comment or literal runs to the end of the line."""
    tokens: list[tuple[str, str]] = []
    i, n = 0, len(line)
    while i < n:
        ch = line[i]
        if ch in " \t\r\n":
            i += 1
        elif ch == "(":
            start, level, i = i, 1, i + 1
            while i < n and level:
                if line[i] == "\\":
                    i += 1
                elif line[i] == "(":
                    level += 1
                elif line[i] == ")":
                    level -= 1
                i += 1
            tokens.append(("comment", line[start:i]))
        elif ch in '"[':
            close = '"' if ch == '"' else "]"
            word, i = _collect(line, i + 1, close.__ne__)
            i += 1  # the closing quote or bracket
            tokens.append(("qstr", word) if ch == '"' else ("domlit", f"[{word}]"))
        elif ch != "\\" and ch in _ALIAS_OPERATORS:
            if ch == ":":
                return tokens, i + 1
            tokens.append((ch, ch))
            i += 1
        else:
            word, i = _collect(line, i, lambda c: c not in " \t\r\n" and c not in _ALIAS_OPERATORS)
            tokens.append(("atom", word))
    return tokens, -1


def _collect(line: str, i: int, more: Callable[[str], bool]) -> tuple[str, int]:
    """tok822's COLLECT: characters while ``more`` (a backslash takes the next one as
    it is); white space becomes a space."""
    out: list[str] = []
    n = len(line)
    while i < n:
        ch = line[i]
        if ch == "\\":
            i += 1
            if i >= n:
                break
            ch = line[i]
        elif not more(ch):
            break
        out.append(" " if ch in " \t\r\n" else ch)
        i += 1
    return "".join(out), i


# --- table types ---------------------------------------------------------------

class StaticTable(Table):
    """static:value, or static:{ value with spaces } (Postfix's dict_static)."""

    fold = False
    owner = 0

    def __init__(self, type_name: str, name: str) -> None:
        super().__init__(type_name, name)
        self.value = name
        if name.startswith("{"):
            try:
                self.value = _extpar(name)
            except ValueError as e:
                raise TableError(f"bad static:name syntax: {e}") from None

    def lookup(self, key: str) -> str | None:
        return self.value


class InlineTable(Table):
    """inline:{ key=value, { key = value with spaces } } (Postfix's dict_inline); a
    table that does not parse, or has no entry, is refused with Postfix's reason."""

    owner = 0

    def __init__(self, type_name: str, name: str) -> None:
        super().__init__(type_name, name)
        need = f'"inline:{name}"; need "inline:{{name=value...}}"'
        if not name.startswith("{") or _balanced_end(name) != len(name) or len(name) < 3:
            raise TableError(f"bad syntax: {need}")
        self.data: dict[str, str] = {}
        for item in config_mod.split_list(name[1:-1]):
            item = item.strip()
            if item.startswith("{"):
                try:
                    item = _extpar(item)
                except ValueError as e:
                    raise TableError(f"{e}: {need}") from None
            key, sep, value = item.partition("=")
            if not sep:
                raise TableError(f"missing '=' after attribute name: {need}")
            self.data[key.strip().lower()] = value.strip()
        if not self.data:
            raise TableError(f"empty table: {need}")

    def lookup(self, key: str) -> str | None:
        return self.data.get(key)


# postmap -q opens tables as Postfix's postmap does, with DICT_FLAG_DUP_WARN: a texthash
# table's duplicate keys are warned about and the first is kept. The daemons open them
# without it: a texthash table with a duplicate key fails every lookup (tools/postmap
# sets this before it opens a table).
DUPLICATE_WARN = False


class TextHashTable(Table):
    """texthash:/path: the source read into memory when opened (Postfix's dict_thash).
    A duplicate key is warned about (``PATH, line N: duplicate entry: "KEY"``) and the
    first kept when ``DUPLICATE_WARN``; otherwise the table is what Postfix makes of
    it, one that fails every lookup (``texthash:PATH is unavailable. PATH, line N:
    duplicate entry: "KEY"``), so that mail waits instead of taking either value."""

    def __init__(self, type_name: str, name: str) -> None:
        super().__init__(type_name, name)
        text, self.owner = read_source(name)
        self.data: dict[str, str] = {}
        self.unavailable: str | None = None
        for lineno, k, v in iter_source(text, name, suffix=" -- ignoring this line"):
            folded = k.lower()
            if folded not in self.data:
                self.data[folded] = v
                continue
            duplicate = f'{name}, line {lineno}: duplicate entry: "{k}"'
            if not DUPLICATE_WARN:
                self.data = {}
                self.unavailable = duplicate
                break
            log.warning(duplicate)

    def lookup(self, key: str) -> str | None:
        if self.unavailable is not None:
            log.warning(f"{self.spec} is unavailable. {self.unavailable}")
            raise TableError(f"{self.spec} is unavailable. {self.unavailable}")
        return self.data.get(key)


class PasswdTable(Table):
    """unix:passwd.byname: getpwnam(), through the process's account cache
    (``passwd.ACCOUNTS``: kept while /etc/passwd is unchanged, "not found" for at most
    ``passwd.MISSING_TTL`` seconds).
    The value is the passwd line, ``name:passwd:uid:gid:gecos:dir:shell``."""

    fold = False
    owner = 0

    def __init__(self, type_name: str, name: str) -> None:
        super().__init__(type_name, name)
        if name != "passwd.byname":
            raise TableError(f"unix:{name}: unknown table (only passwd.byname)")

    def lookup(self, key: str) -> str | None:
        pw = passwd.ACCOUNTS.find(key, passwd.MISSING_TTL)
        if pw is None:
            return None
        return (f"{pw.pw_name}:{pw.pw_passwd}:{pw.pw_uid}:{pw.pw_gid}:{pw.pw_gecos}:"
                f"{pw.pw_dir}:{pw.pw_shell}")


class LmdbTable(Table):
    """hash:, btree:, lmdb: tables: name.lmdb built by postmap/postalias."""

    RECHECK = 1.0

    def __init__(self, type_name: str, name: str) -> None:
        super().__init__(type_name, name)
        self.path = name + ".lmdb"
        self.env: Any = None
        self.ident: tuple[int, int] | None = None
        self.checked = 0.0
        self._open()
        self.first_ident = self.ident

    def _open(self) -> None:
        """Open the file, then lmdb on that very file (through /proc/self/fd where
        there is one), so that its identity and owner are those of what is read."""
        import lmdb

        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError as e:
            raise TableError(f"open database {self.path}: {e.strerror}") from e
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise TableError(f"open database {self.path}: not a regular file")
            by_fd = f"/proc/self/fd/{fd}"
            env = lmdb.open(by_fd if os.path.exists(by_fd) else self.path, subdir=False,
                            readonly=True, lock=False, max_dbs=0)
        except OSError as e:
            raise TableError(f"open database {self.path}: {e.strerror}") from e
        except lmdb.Error as e:
            raise TableError(f"open database {self.path}: {e}") from e
        finally:
            os.close(fd)
        if self.env is not None:
            self.env.close()
        self.env = env
        self.lmdb_error = lmdb.Error  # lookup's: lmdb is imported when the first table opens
        self.ident = (st.st_dev, st.st_ino)
        self.owner = st.st_uid
        self.checked = time.monotonic()

    def _maybe_reopen(self) -> None:
        now = time.monotonic()
        if now - self.checked < self.RECHECK:
            return
        self.checked = now
        try:
            st = os.stat(self.path)
        except OSError:
            return
        if (st.st_dev, st.st_ino) != self.ident:
            self._open()

    def changed(self) -> bool:
        """Replaced, or removed: Postfix's dict_changed_name() also reports a table
        whose file has no link left, so that the next process finds it missing and
        defers, instead of this one answering from a table that is gone."""
        try:
            st = os.stat(self.path)
        except OSError:
            return True
        return (st.st_dev, st.st_ino) != self.first_ident

    def lookup(self, key: str) -> str | None:
        if time.monotonic() - self.checked >= self.RECHECK:
            self._maybe_reopen()
        assert self.env is not None
        k = key.encode("utf-8", "surrogateescape")
        try:
            with self.env.begin() as txn:
                if k and len(k) < LMDB_MAX_KEY and k[0]:
                    # nearly every key: neither it nor it with its NUL is long
                    # (LONG_KEY_TAG starts with a NUL), nor empty: lmdb_get's own tests
                    value = txn.get(k + b"\0")
                    if value is None:
                        value = txn.get(k)
                else:
                    value = lmdb_get(txn, k + b"\0")
                    if value is None:
                        value = lmdb_get(txn, k)
        except self.lmdb_error as e:
            raise TableError(f"{self.spec}: lookup error: {e}") from e
        if value is None:
            return None
        return bytes(value).rstrip(b"\0").decode("utf-8", "surrogateescape")


# lmdb keys are at most 511 bytes; Postfix's hash: has no such limit. A longer
# key is stored under LONG_KEY_TAG + sha256(key) with the full key in front of
# its value (4-byte length, key, value), and a lookup verifies it. A key that
# itself starts with the tag (only possible with a NUL in the key) goes the same
# way, so a stored key of that form is never ambiguous. Keys up to the limit,
# i.e. nearly all, are stored and looked up as before at the cost of one
# length test.
LMDB_MAX_KEY = 511
LONG_KEY_TAG = b"\0pymailsys-long-key\0"


def _is_long(k: bytes) -> bool:
    return len(k) > LMDB_MAX_KEY or k.startswith(LONG_KEY_TAG)


def lmdb_record(k: bytes, v: bytes) -> tuple[bytes, bytes]:
    """The (key, value) pair stored in lmdb for the table entry k -> v."""
    if not _is_long(k):
        return k, v
    return LONG_KEY_TAG + hashlib.sha256(k).digest(), len(k).to_bytes(4, "big") + k + v


def lmdb_entry(k: bytes, v: bytes) -> tuple[bytes, bytes]:
    """The table entry (key, value) of a stored lmdb pair (lmdb_record reversed)."""
    if not k.startswith(LONG_KEY_TAG) or len(v) < 4:
        return k, v
    n = int.from_bytes(v[:4], "big")
    return v[4:4 + n], v[4 + n:]


def lmdb_get(txn: Any, k: bytes) -> bytes | None:
    """The value stored for key k in an lmdb read transaction, or None."""
    if not _is_long(k):
        return txn.get(k) if k else None  # lmdb refuses an empty key (MDB_BAD_VALSIZE)
    raw = txn.get(lmdb_record(k, b"")[0])
    if raw is None:
        return None
    raw = bytes(raw)
    n = int.from_bytes(raw[:4], "big")
    return raw[4 + n:] if raw[4:4 + n] == k else None


def write_lmdb(path: str, items: list[tuple[str, str]], *, fold: bool = True,
               nul: bool = True, mode: int | None = None) -> None:
    """Build path atomically (temporary file, then rename) from key/value pairs.

    The table may sit in a directory another account can write (postmap runs as
    root for a root-owned source, as Postfix's does): the temporary file is new
    (O_EXCL under an unpredictable name), lmdb writes it through the descriptor
    (/proc/self/fd), its mode is set with fchmod, and it is renamed into place
    only while the name still holds it, so no link planted there is followed.
    Keys longer than lmdb's 511 bytes are stored as described at LMDB_MAX_KEY.
    lmdb's own errors (e.g. lmdb.MapFullError) propagate as lmdb.Error.
    """
    records = []
    for key, value in items:
        k = (key.lower() if fold else key).encode("utf-8", "surrogateescape")
        v = value.encode("utf-8", "surrogateescape")
        if nul:
            k, v = k + b"\0", v + b"\0"
        records.append(lmdb_record(k, v))
    # room for the data, page overhead, and a whole overflow page per large value
    size = sum(len(k) + len(v) + 64 + (4096 if len(v) > 1024 else 0) for k, v in records)
    # As Postfix (sigdelay() around the update): a termination signal that comes
    # while the file is written waits until it is complete and renamed, so an
    # interrupted postmap leaves the old or the new table and no temporary file.
    # SIGKILL cannot be blocked; after one a NAME.lmdb.XXXX.tmp may remain.
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _DEFERRED_SIGNALS)
    try:
        _write_lmdb_file(path, records, size, mode)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)


_DEFERRED_SIGNALS = {signal.SIGHUP, signal.SIGINT, signal.SIGQUIT, signal.SIGTERM}


def _write_lmdb_file(path: str, records: list[tuple[bytes, bytes]], size: int,
                     mode: int | None) -> None:
    import lmdb

    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp",
                               dir=os.path.dirname(path) or ".")
    try:
        by_fd = f"/proc/self/fd/{fd}"
        env = lmdb.open(by_fd if os.path.exists(by_fd) else tmp, subdir=False,
                        map_size=max(1 << 20, size * 4), lock=False, metasync=False, sync=False)
        try:
            with env.begin(write=True) as txn:
                for k, v in records:
                    txn.put(k, v)
            env.sync(True)
        finally:
            env.close()
        os.fchmod(fd, mode if mode is not None else 0o644 & ~_umask())
        ours, there = os.fstat(fd), os.lstat(tmp)
        if (ours.st_dev, ours.st_ino) != (there.st_dev, there.st_ino):
            raise OSError(errno.EEXIST, f"{tmp} was replaced while it was written")
        os.rename(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)  # removes a link, never what it names
        raise
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def split_composite(type_name: str, name: str) -> list[str]:
    """The member tables of unionmap:{a, b} or pipemap:{a, b}."""
    body = name.strip()
    if not (body.startswith("{") and body.endswith("}")):
        raise TableError(f"{type_name}:{name}: need {type_name}:{{type:name, ...}}")
    specs = [s.strip() for s in config_mod.split_list(body[1:-1]) if s.strip()]
    specs = [s[1:-1].strip() if s.startswith("{") and s.endswith("}") else s for s in specs]
    if not specs:
        raise TableError(f"{type_name}:{name}: empty table list")
    return specs


def _member_lookup(table: Table, key: str) -> str | None:
    return table.lookup(key.lower() if table.fold else key)


class UnionTable(Table):
    """unionmap:{a, b, ...}: every member's result, comma-joined; not found if none."""

    fold = False

    def __init__(self, type_name: str, name: str) -> None:
        super().__init__(type_name, name)
        self.members = [open_table(s) for s in split_composite(type_name, name)]
        self.fixed = all(t.fixed for t in self.members)
        self.owner = combined_owner(self.members)

    def lookup(self, key: str) -> str | None:
        found = [v for v in (_member_lookup(t, key) for t in self.members) if v is not None]
        return ",".join(found) if found else None

    def without_regsub(self) -> Table:
        return _members_without_regsub(self)


class PipeTable(Table):
    """pipemap:{a, b, ...}: each member's result is the next member's key."""

    fold = False

    def __init__(self, type_name: str, name: str) -> None:
        super().__init__(type_name, name)
        self.members = [open_table(s) for s in split_composite(type_name, name)]
        self.fixed = all(t.fixed for t in self.members)
        self.owner = combined_owner(self.members)

    def lookup(self, key: str) -> str | None:
        value: str | None = key
        for table in self.members:
            assert value is not None
            value = _member_lookup(table, value)
            if value is None:
                return None
        return value

    def without_regsub(self) -> Table:
        return _members_without_regsub(self)


def _members_without_regsub(table: UnionTable | PipeTable) -> Table:
    """A composite table whose members are opened with ``regsub=False``."""
    members = [open_table(member.spec, regsub=False) for member in table.members]
    if all(new is old for new, old in zip(members, table.members, strict=True)):
        return table
    restricted = copy.copy(table)
    restricted.members = members
    return restricted


class RandTable(Table):
    """randmap:{a, b, ...}: one of the values at random, whatever the key."""

    fold = False
    owner = 0

    def __init__(self, type_name: str, name: str) -> None:
        super().__init__(type_name, name)
        body = name.strip()
        if not (body.startswith("{") and body.endswith("}")):
            raise TableError(f"randmap:{name}: need randmap:{{value, ...}}")
        self.values = [v[1:-1].strip() if v.startswith("{") else v
                       for v in config_mod.split_list(body[1:-1])]
        if not self.values:
            raise TableError(f"randmap:{name}: empty value list")

    def lookup(self, key: str) -> str | None:
        import random

        return random.choice(self.values)


class FailTable(Table):
    """fail:name: every lookup fails (a table error), for tests and placeholders."""

    owner = 0

    def lookup(self, key: str) -> str | None:
        raise TableError(f"fail:{self.name}: table lookup failed")


class EnvironTable(Table):
    """environ:name: the process environment."""

    fold = False
    owner = 0

    def lookup(self, key: str) -> str | None:
        return os.environ.get(key)


register("unionmap")(UnionTable)
register("pipemap")(PipeTable)
register("randmap")(RandTable)
register("fail")(FailTable)
register("environ")(EnvironTable)
register("static")(StaticTable)
register("inline")(InlineTable)
register("texthash")(TextHashTable)
register("unix")(PasswdTable)
register("hash", "btree", "lmdb")(LmdbTable)

# Pattern and address tables live in their own modules; importing them registers them.
from pymailsys.maps import cidr as _maps_cidr  # noqa: E402,F401
from pymailsys.maps import regexp as _maps_regexp  # noqa: E402,F401
