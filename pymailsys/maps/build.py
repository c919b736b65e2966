"""Building and editing indexed tables: the library half of postmap and postalias.

NAME
    mapbuild - build, update, query and dump hash:/btree:/lmdb: tables

SYNOPSIS
    build_table("hash:/etc/pymailsys/transport")      # postmap
    build_aliases("hash:/etc/aliases")                # postalias, newaliases
    add_entries(spec, [(key, value)], aliases=False)  # postmap -i
    delete_key(spec, key) -> bool                     # postmap -d
    dump_table(spec) -> list[(key, value)]            # postmap -s (indexed, texthash, inline)

DESCRIPTION
    An indexed table ``type:name`` (type hash, btree or lmdb; a name without a
    type gets ``default_type``, normally main.cf's default_database_type) lives
    in one lmdb file ``name.lmdb`` next to its source ``name``. Every change
    writes a complete new file under a temporary name and renames it into
    place, so a reader sees the old table or the new one, never a mix; the
    table readers in ``maps`` notice the new file by its inode.

    Sources: ``build_table`` reads ``key whitespace value`` lines
    (``maps.iter_source``), ``build_aliases`` reads aliases(5) lines
    (``maps.iter_alias_source``, names folded to lower case) and adds the
    ``@`` -> ``@`` entry that Postfix's postalias adds. Keys are folded to
    lower case unless ``fold=False`` (postmap -f); ``nul`` stores keys and
    values with a trailing NUL (the default; postmap -n turns it off).

    Duplicates (``dup``): ``"warn"`` keeps the first entry and warns
    ``NAME.lmdb: duplicate entry: "key"`` (Postfix's default), ``"replace"``
    keeps the last (postmap -r), ``"ignore"`` keeps the first silently (-w).

    Permissions, as Postfix's postmap: the new file is mode 0600 plus the
    source's group and other read bits (``inherit_mode=False``: 0644 minus the
    umask); when the caller is root and the source belongs to another user, the
    file is created with that user's and group's rights (``as_owner=False``
    keeps root's, postmap -o).

DIAGNOSTICS
    Malformed source lines are skipped with a warning naming the file and line
    (through ``warn``, by default ``log.warning``). Anything that stops the
    job raises ``BuildError`` with Postfix's text, e.g. ``open /x: No such
    file or directory`` or ``unsupported dictionary type: regexp does not
    support bulk-mode creation``; commands print it as ``postmap: fatal: ...``.

SECURITY
    Runs with the caller's privileges; as root it switches the effective uid
    and gid to the source file's owner for the duration of the write (not in
    a threaded process).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Callable, Iterable, Iterator

import lmdb  # imported before any privilege change: the source owner may not read site-packages

from pymailsys import maps

try:  # newer py-lmdb imports this lazily inside lmdb.open(); load it while we can
    import lmdb._envid  # noqa: F401
except ImportError:
    pass

INDEXED_TYPES = ("hash", "btree", "lmdb")

Warn = Callable[[str], None]


class BuildError(Exception):
    """The table could not be built or changed; the text is Postfix's message."""


def _warn_default(text: str) -> None:
    from pymailsys import log

    log.warning(text)


def split_table_spec(spec: str, default_type: str = "hash") -> tuple[str, str]:
    """(type, name) of ``[type:]name``."""
    type_name, sep, name = spec.partition(":")
    if not sep or "/" in type_name:
        return default_type, spec
    return type_name, name


def _require_indexed(type_name: str) -> None:
    if type_name in INDEXED_TYPES:
        return
    if type_name in maps.REGISTRY:
        raise BuildError(f"unsupported dictionary type: {type_name} does not support "
                         "bulk-mode creation.")
    raise BuildError(f"unsupported dictionary type: {type_name}")


def _mode_from_source(st: os.stat_result | None, inherit_mode: bool) -> int:
    if st is None or not inherit_mode:
        umask = os.umask(0o022)
        os.umask(umask)
        return 0o644 & ~umask
    return 0o600 | (st.st_mode & 0o044)


@contextlib.contextmanager
def _as_user(st: os.stat_result | None, as_owner: bool) -> Iterator[None]:
    """As root, run the body with the source owner's effective uid and gid."""
    if not as_owner or st is None or os.geteuid() != 0 or st.st_uid == 0:
        yield
        return
    old_gid = os.getegid()
    old_groups = os.getgroups()
    os.setgroups([st.st_gid])
    os.setegid(st.st_gid)
    os.seteuid(st.st_uid)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(old_gid)
        os.setgroups(old_groups)


@contextlib.contextmanager
def _locked(path: str) -> Iterator[None]:
    """An exclusive lock on path (the source file) while the table changes."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _read_source(path: str) -> tuple[str, os.stat_result]:
    try:
        with open(path, encoding="utf-8", errors="surrogateescape", newline="") as f:
            return f.read(), os.fstat(f.fileno())
    except OSError as e:
        raise BuildError(f"open {path}: {e.strerror}") from None


def _dedupe(entries: Iterable[tuple[str, str]], fold: bool, dup: str, db_path: str,
            warn: Warn, existing: dict[str, str] | None = None) -> dict[str, str]:
    data: dict[str, str] = dict(existing or {})
    for key, value in entries:
        k = key.lower() if fold else key
        if k in data:
            if dup == "replace":
                data[k] = value
            elif dup == "warn":
                warn(f'{db_path}: duplicate entry: "{k}"')
            continue
        data[k] = value
    return data


def read_lmdb(path: str) -> dict[str, str]:
    """All key/value pairs of an lmdb table file (NULs stripped); {} when absent."""
    if not os.path.exists(path):
        return {}
    try:
        env = lmdb.open(path, subdir=False, readonly=True, lock=False)
    except lmdb.Error as e:
        raise BuildError(f"open database {path}: {e}") from None
    out: dict[str, str] = {}
    try:
        with env.begin() as txn:
            for raw_k, raw_v in txn.cursor():
                k, v = maps.lmdb_entry(bytes(raw_k), bytes(raw_v))
                key = k.rstrip(b"\0").decode("utf-8", "surrogateescape")
                out[key] = v.rstrip(b"\0").decode("utf-8", "surrogateescape")
    except lmdb.Error as e:
        raise BuildError(f"read database {path}: {e}") from None
    finally:
        env.close()
    return out


def _write(path: str, data: dict[str, str], nul: bool, mode: int) -> None:
    try:
        maps.write_lmdb(path, list(data.items()), fold=False, nul=nul, mode=mode)
    except OSError as e:
        raise BuildError(f"open database {path}: {e.strerror}") from None
    except lmdb.Error as e:  # MapFullError, BadValsizeError (an empty key with -n), ...
        raise BuildError(f"write database {path}: {e}") from None


def build_table(spec: str, *, default_type: str = "hash", fold: bool = True, nul: bool = True,
                dup: str = "warn", inherit_mode: bool = True, as_owner: bool = True,
                warn: Warn | None = None, aliases: bool = False) -> int:
    """postmap [type:]file: build file.lmdb from file; returns the number of entries."""
    warn = warn or _warn_default
    type_name, name = split_table_spec(spec, default_type)
    _require_indexed(type_name)
    text, st = _read_source(name)
    db_path = name + ".lmdb"
    # read lazily: a duplicate's warning comes in line order, as Postfix's
    if aliases:
        parsed = maps.iter_alias_source(text, name, warn)
    else:
        parsed = maps.iter_source(text, name, warn)
    data = _dedupe(((k, v) for _, k, v in parsed), fold, dup, db_path, warn)
    if aliases:
        data.setdefault("@", "@")
    with _locked(name), _as_user(st, as_owner):
        _write(db_path, data, nul, _mode_from_source(st, inherit_mode))
    return len(data)


def build_aliases(spec: str, **kwargs: object) -> int:
    """postalias / newaliases: build one alias database from its aliases(5) source.

    ``newaliases`` calls this once per entry of main.cf's alias_database
    (``config.get_list("alias_database")``); keyword arguments as build_table.
    """
    return build_table(spec, aliases=True, **kwargs)  # type: ignore[arg-type]


def _existing_stat(name: str) -> os.stat_result | None:
    try:
        return os.stat(name)
    except OSError:
        return None


def add_entries(spec: str, entries: Iterable[tuple[str, str]], *, default_type: str = "hash",
                fold: bool = True, nul: bool = True, dup: str = "warn",
                inherit_mode: bool = True, as_owner: bool = True,
                warn: Warn | None = None) -> int:
    """postmap -i: add entries to an existing table (created when missing)."""
    warn = warn or _warn_default
    type_name, name = split_table_spec(spec, default_type)
    _require_indexed(type_name)
    db_path = name + ".lmdb"
    st = _existing_stat(name)
    with _locked(name), _as_user(st, as_owner):
        existing = read_lmdb(db_path)
        data = _dedupe(entries, fold, dup, db_path, warn, existing)
        _write(db_path, data, nul, _db_mode(db_path, st, inherit_mode))
    return len(data)


def _db_mode(db_path: str, st: os.stat_result | None, inherit_mode: bool) -> int:
    try:
        return os.stat(db_path).st_mode & 0o7777
    except OSError:
        return _mode_from_source(st, inherit_mode)


def delete_key(spec: str, key: str, *, default_type: str = "hash", fold: bool = True,
               nul: bool = True, as_owner: bool = True) -> bool:
    """postmap -d: remove key; True when it was there."""
    type_name, name = split_table_spec(spec, default_type)
    _require_indexed(type_name)
    db_path = name + ".lmdb"
    if not os.path.exists(db_path):
        raise BuildError(f"open database {db_path}: No such file or directory")
    st = _existing_stat(name)
    k = key.lower() if fold else key
    with _locked(name), _as_user(st, as_owner):
        data = read_lmdb(db_path)
        if k not in data:
            return False
        del data[k]
        _write(db_path, data, nul, _db_mode(db_path, st, True))
    return True


def dump_table(spec: str, *, default_type: str = "hash") -> list[tuple[str, str]]:
    """postmap -s: every entry of an indexed or texthash/inline table, in key order."""
    type_name, name = split_table_spec(spec, default_type)
    if type_name in INDEXED_TYPES:
        db_path = name + ".lmdb"
        if not os.path.exists(db_path):
            raise BuildError(f"open database {db_path}: No such file or directory")
        return sorted(read_lmdb(db_path).items())
    try:
        table = maps.open_table(f"{type_name}:{name}")
    except maps.TableError as e:
        raise BuildError(str(e)) from None
    data = getattr(table, "data", None)
    if isinstance(data, dict):
        return list(data.items())
    # pattern, static, composite... tables cannot be listed: Postfix's words
    raise BuildError(f"table {type_name}:{name}: sequence operation is not supported")
