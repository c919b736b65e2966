#!/usr/bin/env python3
"""CPU per MB of the per-byte steps a large message takes through pymailsys (issue #15 goal 4).

Usage (any user, from the repository, with the venv's python):

    python3 tests/bench/large_message_paths.py [--size 10000000] [--line 78] [--varied]
                                               [--repeat 3]

A message of ``--size`` bytes in lines of ``--line`` characters (smtp-source -l
sends 78-character lines) is run, in process and without I/O to other
processes, through the functions each daemon calls per byte, and the CPU time
(time.process_time, best of --repeat) is printed per MB:

- smtpd: ``_normalize`` on 64 KB pieces of the DATA stream, and ``_has_bare_lf``,
  which only smtpd_forbid_bare_newline = reject pays (daemons/smtpd/stream.py);
- cleanup: ``ContentPass``'s body work on 64 KB chunks: ``encode_text``, which encodes
  runs of equal-length lines in bulk, against splitting into lines and
  ``encode_lines`` as before (daemons/cleanup/headers.py);
- local: the queue file's content read back as LF text, as Maildir delivery
  reads it: the per-record ``content_records`` joined as ``QueueContent.text``
  did before, and ``content_text``, the bulk decoder it uses now
  (pymailsys/queue/queue_file.py).

The figures isolate Python's per-line cost from kernel and IPC cost; compare.py
--scenario large and profile_daemons.py --size 10000000 give the end-to-end ones.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable

from pymailsys.daemons.cleanup.headers import encode_lines, encode_text
from pymailsys.daemons.smtpd.stream import _has_bare_lf, _normalize

from pymailsys.queue import records as r
from pymailsys.queue.queue_file import content_records, content_text

CHUNK = 65536


def message(size: int, line: int, varied: bool = False) -> bytes:
    """Lines of ``line`` characters, or (varied) of 1 to 2 * line - 1, as text has them."""
    body = bytearray()
    n = 0
    while len(body) < size:
        n += 1
        text = str(n).encode()
        width = (n * 37) % (2 * line - 1) + 1 if varied else line
        body += text + b"X" * max(width - len(text), 0) + b"\r\n"
    return bytes(body[:size - 2]) + b"\r\n"


def smtpd(data: bytes) -> None:
    for i in range(0, len(data), CHUNK):
        _normalize(data[i:i + CHUNK], 2)


def smtpd_bare_lf(data: bytes) -> None:
    for i in range(0, len(data), CHUNK):
        _has_bare_lf(data[i:i + CHUNK])


def cleanup_lines(data: bytes) -> None:
    text = data.replace(b"\r\n", b"\n")
    partial = b""
    for i in range(0, len(text), CHUNK):
        lines = (partial + text[i:i + CHUNK]).split(b"\n")
        partial = lines.pop()
        encode_lines(lines, 2048)


def cleanup_text(data: bytes) -> None:
    text = data.replace(b"\r\n", b"\n")
    partial = b""
    for i in range(0, len(text), CHUNK):
        piece = partial + text[i:i + CHUNK]
        stop = piece.rfind(b"\n") + 1
        encode_text(piece, 0, stop, 2048)
        partial = piece[stop:]


def queue_file(data: bytes) -> tuple[int, int]:
    lines = data.replace(b"\r\n", b"\n").split(b"\n")[:-1]
    records = encode_lines(lines, 2048)[0] + r.encode_record(r.REC_TYPE_XTRA, b"")
    fd, path = tempfile.mkstemp(prefix="large-paths-")
    os.unlink(path)
    os.write(fd, records)
    return fd, 0


def local_records(fd: int, offset: int) -> int:
    """content_records joined into LF text, as QueueContent.text did before content_text."""
    out: list[bytes] = []
    size = 0
    total = 0
    for rtype, payload in content_records(fd, offset):
        out.append(payload)
        size += len(payload)
        if rtype == r.REC_TYPE_NORM:
            out.append(b"\n")
            size += 1
        if size >= CHUNK:
            total += len(b"".join(out))
            out, size = [], 0
    return total + len(b"".join(out))


def local_text(fd: int, offset: int) -> int:
    return sum(len(chunk) for chunk in content_text(fd, offset, CHUNK))


def best(repeat: int, work: Callable[[], object]) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.process_time()
        work()
        times.append(time.process_time() - t0)
    return min(times)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=10_000_000)
    p.add_argument("--line", type=int, default=78, help="characters per line (78)")
    p.add_argument("--varied", action="store_true",
                   help="lines of 1 to 2 * --line - 1 characters instead of all --line")
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args(argv)
    data = message(args.size, args.line, args.varied)
    mb = len(data) / 1e6
    fd, offset = queue_file(data)
    try:
        if local_records(fd, offset) != local_text(fd, offset):
            raise SystemExit("content_text decodes differently from content_records")
        steps = [("smtpd: _normalize", lambda: smtpd(data)),
                 ("smtpd: _has_bare_lf (reject only)", lambda: smtpd_bare_lf(data)),
                 ("cleanup: split + encode_lines (before)", lambda: cleanup_lines(data)),
                 ("cleanup: encode_text", lambda: cleanup_text(data)),
                 ("local: content_records + join (before)", lambda: local_records(fd, offset)),
                 ("local: content_text", lambda: local_text(fd, offset))]
        shape = f"1 to {2 * args.line - 1}" if args.varied else f"{args.line}"
        print(f"{len(data)} bytes in lines of {shape} characters; CPU ms per MB, best of "
              f"{args.repeat}:")
        for label, work in steps:
            print(f"  {label:<40} {1000 * best(args.repeat, work) / mb:7.2f}")
    finally:
        os.close(fd)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
