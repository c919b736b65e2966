#!/usr/bin/env python3
"""Instructions per call of qmgr's per-message functions on fixed input: stable under load.

Usage (from the repository, with the venv's python; valgrind installed):

    python tests/bench/qmgr_functions.py [--function envelope|reply] [--calls 2000] [--recipients 1]

envelope: ``read_envelope_fd`` on a queue file like the one cleanup writes for SMTP
mail (the attributes of an SMTP client, a W record, --recipients recipients, a 1 kB
body). reply: ``results_from_attrs`` on local's reply for --recipients recipients
(status, dsn, reason each). The script runs itself twice under ``valgrind
--tool=callgrind`` (no calls, then --calls calls) and prints the difference in
instructions divided by --calls, unlike time stable on a loaded machine.
``--inner N`` (used by those runs) just makes the N calls.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile

from pymailsys.delivery.agent import DeliveryResult, batch_reply, results_from_attrs
from pymailsys.ipc.attr import AttrList
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


def inner(function: str, calls: int, recipients: int) -> None:
    if function == "reply":
        sent = DeliveryResult.sent("delivered to maildir")
        reply = AttrList([(name, str(value).encode())
                          for name, value in batch_reply([sent] * recipients)])
        missing = DeliveryResult.deferred("transport error")
        for _ in range(calls):
            results_from_attrs(reply, recipients, missing)
        return
    with tempfile.TemporaryFile() as f:
        f.write(queue_file(recipients))
        f.flush()
        for _ in range(calls):
            read_envelope_fd(f.fileno(), "4ABCDEF", "active/4ABCDEF")


def instructions(function: str, calls: int, recipients: int) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "cg.out")
        subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                        sys.executable, "-P", __file__, "--function", function,
                        "--inner", str(calls),
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
    ap.add_argument("--function", choices=("envelope", "reply"), default="envelope")
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--recipients", type=int, default=1)
    ap.add_argument("--inner", type=int, default=-1)
    args = ap.parse_args()
    if args.inner >= 0:
        inner(args.function, args.inner, args.recipients)
        return
    base = instructions(args.function, 0, args.recipients)
    total = instructions(args.function, args.calls, args.recipients)
    name = {"envelope": "read_envelope_fd", "reply": "results_from_attrs"}[args.function]
    print(f"{name}: {(total - base) / args.calls:,.0f} instructions per call "
          f"({args.recipients} recipient(s), {args.calls} calls)")


if __name__ == "__main__":
    main()
