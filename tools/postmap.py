"""postmap, postalias - build, query and edit lookup tables.

SYNOPSIS
    postmap [-Nbfhimnoprsuvw] [-c config_dir] [-d key] [-q key] [type:]file...
    postalias [-Nfinoprsuvw] [-c config_dir] [-d key] [-q key] [type:]file...

DESCRIPTION
    Without -d, -q or -s, each file is (re)built into ``file.lmdb`` from its
    source (postmap: ``key whitespace value`` lines; postalias: aliases(5)
    ``name: value, ...`` with names folded to lower case, plus the ``@`` entry).
    A type-less file gets main.cf's default_database_type. The build logic is
    in ``pymailsys.maps.build`` (build_table, build_aliases), which newaliases
    shares.

    -N / -n     store keys and values with / without a trailing NUL (default: with)
    -f          do not fold keys to lower case (build and query)
    -i          incremental: add ``key value`` lines from standard input
    -o          as root, do not switch to the source file's owner
    -p          do not copy the source file's read permissions
    -r / -w     on duplicate keys keep the last / keep the first silently
                (default: keep the first and warn ``duplicate entry: "key"``)
    -q key      print the value of key in the first table that has it; exit 0
                when found, 1 when not. ``-q -`` reads keys from standard input,
                one a line as it is (white space and empty lines are keys too),
                and prints ``key<TAB>value`` for each key found; an empty value
                (a regexp rule without a result) is printed with Postfix's two
                warnings (``empty string result is not allowed``)
    -d key      delete key from each table (``-d -``: keys from standard input);
                exit 0 when a key was deleted, 1 otherwise
    -s          print every entry (``key<TAB>value``; postalias ``key:<TAB>value``) of
                an indexed, texthash or inline table; another is refused with
                Postfix's ``table T:N: sequence operation is not supported``
    -h / -b     with ``-q -``: standard input is a message; query its primary
                headers (a folded header is one key, its line breaks kept) /
                its body lines (after the header block, which ends at an empty
                line or at a line that is no header; either way the body starts
                with an empty line), as Postfix's postmap without -m
    -m          MIME parsing for -h and -b: refused (not built); without -h or
                -b ignored with Postfix's warning
    -c dir      configuration directory (else $MAIL_CONFIG, else /etc/pymailsys)
    -u -U -v    accepted for compatibility, no effect

DIAGNOSTICS
    Problems go to standard error as ``postmap: warning: ...`` (malformed
    lines, duplicates) or ``postmap: fatal: ...`` with exit status 1, e.g.
    ``postmap: fatal: open /etc/x: No such file or directory``.

SECURITY
    Run by root on a file owned by someone else, the table is written with
    that user's rights (see mapbuild). Nothing is setuid.

CONFIGURATION PARAMETERS
    default_database_type, alias_database (newaliases), config_directory.
"""

from __future__ import annotations

import getopt
import os
import re
import signal
import sys
from collections.abc import Collection, Iterable, Iterator

from pymailsys import config as config_mod
from pymailsys import log, maps
from pymailsys.maps import build as mapbuild

_OPTS = "Nbc:d:fFhimnopq:rsuUvw"


def _usage(program: str) -> None:
    log.fatal(f"usage: {program} [-bfFhimnNoprsuUvw] [-c config_dir] [-d key] [-q key] "
              "[map_type:]file...")


def _query_table(table: maps.Table, key: str, fold: bool) -> str | None:
    k = key.lower() if (fold and table.fold) else key
    value = table.lookup(k)
    if value == "":  # printed all the same, as Postfix's postmap does
        log.warning(f"table {table.spec}: key {key}: empty string result is not allowed")
        log.warning(f"table {table.spec} should return NO RESULT in case of NOT FOUND")
    return value


def _open(spec: str, default_type: str) -> maps.Table:
    type_name, name = mapbuild.split_table_spec(spec, default_type)
    try:
        return maps.open_table(f"{type_name}:{name}")
    except maps.TableError as e:
        log.fatal(str(e))


def run(program: str, argv: list[str]) -> int:
    log.init_stderr_only(program)
    maps.DUPLICATE_WARN = True  # as Postfix's postmap opens tables (DICT_FLAG_DUP_WARN)
    aliases = program == "postalias"
    try:
        opts, files = getopt.gnu_getopt(argv, _OPTS)
    except getopt.GetoptError as e:
        sys.stderr.write(f"{program}: {e.msg}\n")
        _usage(program)
    config_dir = None
    fold, nul, incremental, as_owner, inherit = True, True, False, True, True
    dup = "warn"
    query: str | None = None
    delete: str | None = None
    dump = False
    message_keys: set[str] = set()
    for opt, arg in opts:
        if opt == "-c":
            config_dir = arg
        elif opt == "-N":
            nul = True
        elif opt == "-n":
            nul = False
        elif opt == "-f":
            fold = False
        elif opt == "-i":
            incremental = True
        elif opt == "-o":
            as_owner = False
        elif opt == "-p":
            inherit = False
        elif opt == "-r":
            dup = "replace"
        elif opt == "-w":
            dup = "ignore"
        elif opt == "-q":
            query = arg
        elif opt == "-d":
            delete = arg
        elif opt == "-s":
            dump = True
        elif opt in ("-h", "-b", "-m"):
            message_keys.add(opt)
    if sum(x is not None and x is not False for x in (query, delete, dump or None)) > 1:
        log.fatal("specify only one of -s -q or -d")
    if not files:
        _usage(program)
    if message_keys and query != "-":
        log.fatal('specify -b -h or -m only with "-q -"')
    if message_keys == {"-m"}:
        log.warning("ignoring -m option without -b or -h")
        message_keys.clear()
    elif "-m" in message_keys:
        log.fatal("-m (MIME parsing of the message) is not supported")
    try:
        cfg = config_mod.load(config_dir)
        default_type = cfg.get("default_database_type") or "hash"
        maps.configure(cfg)  # proxy_read_maps, smtputf8_enable
    except config_mod.ConfigError as e:
        log.fatal(str(e))
    try:
        if query is not None:
            return _do_query(query, files, default_type, fold, message_keys)
        if delete is not None:
            keys = _stdin_keys() if delete == "-" else [delete]
            found = False
            for spec in files:
                for key in keys:
                    found |= mapbuild.delete_key(spec, key, default_type=default_type,
                                                 fold=fold, nul=nul, as_owner=as_owner)
            return 0 if found else 1
        if dump:
            sep = ":\t" if aliases else "\t"
            for spec in files:
                for key, value in mapbuild.dump_table(spec, default_type=default_type):
                    sys.stdout.write(f"{key}{sep}{value}\n")
            return 0
        if incremental:
            text = sys.stdin.read()
            if aliases:
                entries = [(k, v) for _, k, v in maps.parse_alias_source(text, "stdin")]
            else:
                entries = [(k, v) for _, k, v in maps.parse_source(text, "stdin")]
            for spec in files:
                mapbuild.add_entries(spec, entries, default_type=default_type, fold=fold,
                                     nul=nul, dup=dup, inherit_mode=inherit, as_owner=as_owner)
            return 0
        for spec in files:
            mapbuild.build_table(spec, default_type=default_type, fold=fold, nul=nul, dup=dup,
                                 inherit_mode=inherit, as_owner=as_owner, aliases=aliases)
    except mapbuild.BuildError as e:
        log.fatal(str(e))
    except maps.TableError as e:
        log.fatal(str(e))
    return 0


def _stdin_keys() -> list[str]:
    return [line.rstrip("\n") for line in sys.stdin if line.strip()]


def _message_keys(lines: Iterable[str], headers: bool, body: bool) -> Iterator[str]:
    """The keys of a message for -h (primary headers, a folded one joined with its line
    breaks) and -b (body lines), as Postfix's postmap makes them without MIME parsing."""
    header: str | None = None
    in_headers = True
    for line in lines:
        if in_headers:
            if header is not None and line[:1] in (" ", "\t"):
                header += "\n" + line
                continue
            if header is not None and headers:
                yield header
            header = None
            if _HEADER.match(line):
                header = line
                continue
            in_headers = False
            if not body:
                return
            yield ""  # the body starts with an empty line, the one that ended the headers or not
            if line == "":
                continue
        yield line
    if header is not None and headers:
        yield header


_HEADER = re.compile(r"[!-9;-~]+[ \t]*:")


def _do_query(key: str, files: list[str], default_type: str, fold: bool,
              message_keys: Collection[str] = ()) -> int:
    tables = [_open(spec, default_type) for spec in files]
    if key != "-":
        for table in tables:
            value = _query_table(table, key, fold)
            if value is not None:
                sys.stdout.write(value + "\n")
                return 0
        return 1
    found = False
    keys: Iterable[str] = (line.rstrip("\n") for line in sys.stdin)
    if message_keys:
        keys = _message_keys(keys, "-h" in message_keys, "-b" in message_keys)
    for k in keys:  # each line as it is, an empty one too, as Postfix's postmap
        for table in tables:
            value = _query_table(table, k, fold)
            if value is not None:
                sys.stdout.write(f"{k}\t{value}\n")
                found = True
                break
    return 0 if found else 1


def _run_interruptible(program: str) -> int:
    """run(); on SIGINT (KeyboardInterrupt) die by the signal, without a traceback.

    Table writes block SIGINT until the new file is in place (maps.write_lmdb),
    so what remains is the old table or the new one and no temporary file."""
    try:
        return run(program, sys.argv[1:])
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
        return 130  # not reached


def main() -> None:
    sys.exit(_run_interruptible("postmap"))


def postalias_main() -> None:
    sys.exit(_run_interruptible("postalias"))


if __name__ == "__main__":
    main()
