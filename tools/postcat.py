"""postcat - show Postfix queue file contents.

SYNOPSIS
    postcat [-bdefhoqrv] [-c config_dir] [-s offset] [files...]

DESCRIPTION
    Prints queue files in human-readable form, byte for byte as Postfix's
    postcat: ``*** ENVELOPE RECORDS path ***``, one ``label: value`` line per
    envelope record (times through asctime), ``*** MESSAGE CONTENTS path
    ***``, the message lines, ``*** HEADER EXTRACTED path ***``, the
    extracted records, ``*** MESSAGE FILE END path ***``.

    -b body, -h header, -e envelope (default: all three); -o record offsets;
    -d decimal record types; -f file names; -q search the queues (maildrop,
    incoming, active, deferred, hold, saved) for the named queue IDs; -r
    records in file order (with -v, pointer records are not followed);
    -s offset skip to an offset; -v also show pointer and padding records and
    label text records. Without files, standard input is read.

DIAGNOSTICS
    ``postcat: fatal: ...`` and exit 1 for unreadable files or a record read
    error; ``warning: PATH: input is not a valid queue file`` for foreign
    input.

CONFIGURATION PARAMETERS
    queue_directory, hash_queue_names, hash_queue_depth.

SECURITY
    With -q (usually as root) a queue file is opened below queue_directory
    without following a symbolic link in any directory or the file, and it
    must be a regular file with one link: mail_owner writes those directories.
"""

from __future__ import annotations

import os
import re
import sys
import time

import click

from pymailsys import cli, log
from pymailsys import config as config_mod
from pymailsys.queue import records as r
from pymailsys.queue import spool as queue

PRINT_ENV, PRINT_HEADER, PRINT_BODY = 1, 2, 4
PRINT_ALL = PRINT_ENV | PRINT_HEADER | PRINT_BODY
PRINT_OFFSET, PRINT_DEC, PRINT_PATH, RAW = 8, 16, 32, 64

SEARCH_QUEUES = (queue.MAILDROP, queue.INCOMING, queue.ACTIVE, queue.DEFERRED, queue.HOLD,
                 queue.SAVED)
ENVELOPE_TYPES = b"MCTcFILSDRO/WVA>K<ion"
_HEADER_RE = re.compile(rb"^[\x21-\x39\x3b-\x7e]+[ \t]*:")

ST_ENV, ST_HEADER, ST_BODY = 0, 1, 2


def _asctime(seconds: int) -> bytes:
    return (time.asctime(time.localtime(seconds)) + "\n").encode()


def _is_header(line: bytes) -> bool:
    return bool(_HEADER_RE.match(line))


def postcat(data: bytes, path: str, flags: int, verbose: bool, out: list[bytes],
            start_offset: int = 0) -> None:
    name = path.encode("utf-8", "surrogateescape")

    def prefix(offset: int, rtype: bytes) -> bytes:
        p = b""
        if flags & PRINT_PATH:
            p += name + b": "
        if flags & PRINT_OFFSET:
            p += b"%9d " % offset
        if flags & PRINT_DEC:
            p += b"%3d " % rtype[0]
        return p

    def marker(offset: int, rtype: bytes, text: bytes) -> None:
        out.append(prefix(offset, rtype) + b"*** " + text + b" " + name + b" ***\n")

    def label(rtype: bytes) -> bytes:
        return r.REC_TYPES.get(rtype, "unknown").encode()

    jumps = 0

    def follow(pointer: bytes) -> int:
        """Where a pointer record points (0: nowhere); too many jumps are fatal."""
        nonlocal jumps
        target = _ptr(pointer)
        if target:
            jumps += 1
            if jumps > 100000:
                log.fatal("bad pointer record, or input is not seekable")
        return target

    offset = start_offset
    if start_offset == 0 and data:
        if data[0:1] not in [bytes([c]) for c in ENVELOPE_TYPES]:
            log.warning(f"{path}: input is not a valid queue file")
            return
    if start_offset == 0 and flags & PRINT_ENV:
        out.append(b"*** ENVELOPE RECORDS " + name + b" ***\n")
    state = ST_ENV
    do_print = flags & PRINT_ENV
    prev_type = b""
    size_seen = False
    end = len(data)
    while offset < end:
        try:
            rtype, payload, nxt = r.decode_record(data, offset, 1 << 30)
        except r.RecordError:
            log.fatal("record read error")
        here = offset
        offset = nxt
        if not verbose:
            if rtype == r.REC_TYPE_DTXT:
                continue
            if rtype == r.REC_TYPE_PTR:
                offset = follow(payload) or offset
                continue
        if rtype in (r.REC_TYPE_CONT, r.REC_TYPE_NORM):
            if (state == ST_HEADER and flags & (PRINT_HEADER | PRINT_BODY)
                    and prev_type != r.REC_TYPE_CONT
                    and not (_is_header(payload) or payload[:1] in (b" ", b"\t"))):
                state = ST_BODY
                do_print = flags & PRINT_BODY
                if not do_print and not flags & PRINT_ENV:
                    break
        elif rtype == r.REC_TYPE_MESG:
            if state != ST_ENV:
                log.warning(f"{path}: out-of-order message content marker")
            if flags & PRINT_ENV:
                marker(here, rtype, b"MESSAGE CONTENTS")
            state = ST_HEADER
            do_print = flags & PRINT_HEADER
            continue
        elif rtype == r.REC_TYPE_XTRA:
            if state not in (ST_HEADER, ST_BODY):
                log.warning(f"{path}: out-of-order extracted segment marker")
            if do_print and prev_type == r.REC_TYPE_CONT:
                out.append(b"\n")
            if flags & PRINT_ENV:
                marker(here, rtype, b"HEADER EXTRACTED")
            state = ST_ENV
            do_print = flags & PRINT_ENV
            if not do_print:
                break
            continue
        elif rtype == r.REC_TYPE_END:
            if state != ST_ENV:
                log.warning(f"{path}: out-of-order message end marker")
            if flags & PRINT_ENV:
                marker(here, rtype, b"MESSAGE FILE END")
            if flags & RAW:
                continue
            break
        elif rtype == r.REC_TYPE_PTR:
            if do_print:
                out.append(prefix(here, rtype) + label(rtype) + b": " + payload + b"\n")
            if not flags & RAW:
                offset = follow(payload) or offset
            continue
        elif rtype == r.REC_TYPE_SIZE:
            if do_print:
                out.append(prefix(here, rtype) + label(rtype) + b": " + payload + b"\n")
            if path.startswith(queue.MAILDROP + "/"):
                continue
            if size_seen:
                log.warning("file contains multiple size records")
            else:
                size_seen = True
                fields = payload.split()
                try:
                    data_size, data_offset = int(fields[0]), int(fields[1])
                except (ValueError, IndexError):
                    data_size = data_offset = -1
                if data_offset <= 0 or data_size <= 0:
                    log.warning(f"invalid size record: {payload[:100].decode('ascii', 'replace')}")
                if not flags & PRINT_ENV and data_offset > 0:
                    offset = data_offset
                    state = ST_HEADER
                    do_print = flags & PRINT_HEADER
            continue
        if not do_print:
            continue
        line = prefix(here, rtype)
        if rtype == r.REC_TYPE_TIME:
            try:
                sec = int(payload.split()[0])
            except (ValueError, IndexError):
                sec = 0
            line += label(rtype) + b": " + _asctime(sec)
        elif rtype == r.REC_TYPE_WARN:
            try:
                sec = int(payload.strip() or b"0")
            except ValueError:
                sec = 0
            line += label(rtype) + b": " + _asctime(sec)
        elif rtype == r.REC_TYPE_CONT:
            if state == ST_ENV:
                line += label(rtype) + b": "
            elif verbose:
                line += b"unterminated_text: "
            line += payload
            if state == ST_ENV or verbose or flags & PRINT_OFFSET:
                rtype = b"\0"
                line += b"\n"
        elif rtype == r.REC_TYPE_NORM:
            if verbose:
                line += label(rtype) + b": "
            line += payload + b"\n"
        elif rtype == r.REC_TYPE_DTXT:
            line += label(rtype) + b": " + payload + b"\n"
        elif rtype == r.REC_TYPE_ATTR:
            attr_name, sep, value = payload.partition(b"=")
            if not sep or not attr_name:
                log.warning(f"{path}: malformed attribute: missing '=' after attribute name: "
                            f"{payload[:100].decode('utf-8', 'replace')}")
                continue
            if attr_name == b"create_time":
                try:
                    sec = int(value)
                except ValueError:
                    sec = 0
                line += b"create_time: " + _asctime(sec)
            else:
                line += label(rtype) + b": " + attr_name + b"=" + value + b"\n"
        else:
            line += label(rtype) + b": " + payload + b"\n"
        out.append(line)
        prev_type = rtype


def _ptr(payload: bytes) -> int:
    try:
        return max(int(payload.strip() or b"0"), 0)
    except ValueError:
        log.fatal("bad pointer record, or input is not seekable")


def open_in_queues(spool: queue.Spool, queue_id: str) -> tuple[str, int]:
    """(path shown, descriptor) of the queue file in the first SEARCH_QUEUES queue that
    has it, opened without following links (``Spool.open_queue_file``): root runs
    this in directories that mail_owner (and in maildrop/, any user) can write."""
    for qname in SEARCH_QUEUES:
        try:
            fd = spool.open_queue_file(qname, queue_id, complete=False)
        except queue.QueueFileMissing:
            continue
        except queue.QueueAccessError as e:
            log.fatal(f"open queue file {queue_id}: {e}")
        return os.path.relpath(spool.path(qname, queue_id), "."), fd
    log.fatal(f"open queue file {queue_id}: No such file or directory")


@click.command(context_settings={"help_option_names": []})
@click.option("-b", "body", is_flag=True)
@click.option("-c", "config_dir")
@click.option("-d", "dec", is_flag=True)
@click.option("-e", "env", is_flag=True)
@click.option("-f", "fname", is_flag=True)
@click.option("-h", "header", is_flag=True)
@click.option("-o", "offsets", is_flag=True)
@click.option("-q", "search", is_flag=True)
@click.option("-r", "raw", is_flag=True)
@click.option("-s", "skip")
@click.option("-v", "verbose", count=True)
@click.argument("files", nargs=-1)
def command(body: bool, config_dir: str | None, dec: bool, env: bool, fname: bool, header: bool,
            offsets: bool, search: bool, raw: bool, skip: str | None, verbose: int,
            files: tuple[str, ...]) -> None:
    flags = (PRINT_BODY if body else 0) | (PRINT_ENV if env else 0) | \
        (PRINT_HEADER if header else 0) | (PRINT_DEC if dec else 0) | \
        (PRINT_PATH if fname else 0) | (PRINT_OFFSET if offsets else 0) | (RAW if raw else 0)
    if not flags & PRINT_ALL:
        flags |= PRINT_ALL
    start = 0
    if skip is not None:
        if not skip.isdigit():
            log.fatal(f"bad offset: {skip}")
        start = int(skip)
    try:
        cfg = config_mod.load(config_dir)
        log.init(cfg, "postcat", stderr=True)
    except (config_mod.ConfigError, OSError) as e:
        log.fatal(str(e))
    todo: list[tuple[str, str | int]] = []  # (shown path, path or open descriptor)
    if not files:
        todo.append(("stdin", "-"))
    elif search:
        qdir = cfg.get("queue_directory")
        try:
            os.chdir(qdir)
        except OSError as e:
            log.fatal(f"chdir {qdir}: {e.strerror}")
        spool = queue.Spool.from_config(cfg, root=".")
        for qid in files:
            if not queue.valid_queue_id(qid):
                log.fatal(f"bad mail queue ID: {qid}")
            todo.append(open_in_queues(spool, qid))
    else:
        todo = [(f, f) for f in files]
    for shown, path in todo:
        try:
            if path == "-":
                data = sys.stdin.buffer.read()
            else:
                with open(path, "rb") as fh:
                    data = fh.read()
        except OSError as e:
            log.fatal(f"open {shown}: {e.strerror}")
        out: list[bytes] = []
        if start and path != "-" and start > len(data):
            start_here = len(data)
        else:
            start_here = start
        try:
            postcat(data, shown, flags, verbose > 0, out, start_here)
        finally:
            try:
                sys.stdout.buffer.write(b"".join(out))
                sys.stdout.buffer.flush()
            except BrokenPipeError:
                pass


def main(argv: list[str] | None = None) -> int:
    return cli.run(command, "postcat",
                       "usage: postcat [-bdefhoqv] [-c config_dir] [-s offset] [files...]", argv)


if __name__ == "__main__":
    sys.exit(main())
