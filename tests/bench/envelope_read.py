#!/usr/bin/env python3
"""Instructions per ``read_envelope_fd`` call on a fixed queue file like cleanup writes for SMTP mail.

Usage (from the repository, with the venv's python; valgrind installed):

    python tests/bench/envelope_read.py [--calls 2000] [--recipients 1]

The queue file has the attributes cleanup records for an SMTP client, a W record,
the given number of recipients and a 1 kB body. The script runs itself twice under
``valgrind --tool=callgrind`` (no calls, then --calls calls) and prints the
difference in instructions divided by --calls: stable on a loaded machine, unlike
time. ``--inner N`` (used by those runs) just reads the file N times.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile

from pymailsys.queue import records as r
from pymailsys.queue.queue_file import QueueFileBuilder, read_envelope_fd


def queue_file(recipients: int) -> bytes:
    b = QueueFileBuilder(1_765_000_000.123456)
    b.attr("rewrite_context", "remote")
    for name, value in (("log_client_name", "localhost"), ("log_client_address", "127.0.0.1"),
                        ("log_client_port", "40000"), ("log_message_origin", "localhost[127.0.0.1]"),
                        ("log_helo_name", "client.example"), ("log_protocol_name", "ESMTP"),
                        ("client_name", "localhost"), ("reverse_client_name", "localhost"),
                        ("client_address", "127.0.0.1"), ("client_port", "40000"),
                        ("helo_name", "client.example"), ("protocol_name", "ESMTP"),
                        ("client_address_type", "2")):
        b.attr(name, value)
    b.record(r.REC_TYPE_WARN, f"{1_765_014_400:15d}".encode())
    b.sender("sender@example.org")
    for i in range(recipients):
        b.recipient(f"user{i}@example.com", orig=f"user{i}@example.com", notify=0)
    b.line(b"Subject: bench")
    b.line(b"")
    for _ in range(16):
        b.line(b"x" * 62)
    return b.build()


def inner(calls: int, recipients: int) -> None:
    with tempfile.TemporaryFile() as f:
        f.write(queue_file(recipients))
        f.flush()
        for _ in range(calls):
            read_envelope_fd(f.fileno(), "4ABCDEF", "active/4ABCDEF")


def instructions(calls: int, recipients: int) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "cg.out")
        subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                        sys.executable, "-P", __file__, "--inner", str(calls),
                        "--recipients", str(recipients)],
                       check=True, capture_output=True, timeout=600)
        with open(out, errors="replace") as f:
            for line in f:
                m = re.match(r"(?:summary|totals): (\d+)", line)
                if m:
                    return int(m.group(1))
    raise RuntimeError("no totals in callgrind's output")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--recipients", type=int, default=1)
    ap.add_argument("--inner", type=int, default=-1)
    args = ap.parse_args()
    if args.inner >= 0:
        inner(args.inner, args.recipients)
        return
    base = instructions(0, args.recipients)
    total = instructions(args.calls, args.recipients)
    print(f"read_envelope_fd: {(total - base) / args.calls:,.0f} instructions per call "
          f"({args.recipients} recipient(s), {args.calls} calls)")


if __name__ == "__main__":
    main()
