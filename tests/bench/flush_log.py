"""Benchmark: the flush daemon's per-site log (issue #15 item 3), in process.

Usage: python3 tests/bench/flush_log.py [--ids 20000] [--rounds 1] [--module daemons/flush.py]

Appends ``--rounds`` x ``--ids`` queue IDs to one site's log with
``FlushLogs.add`` (a backlog deferred that often), then ``FlushLogs.send``
reads it: prints the CPU time per add, the send's CPU time and its peak of
Python allocations (tracemalloc). No queue files exist, so send moves nothing
and the figure is the log's cost. ``--module`` loads another version of
daemons/flush.py (``git show REV:daemons/flush.py > /tmp/old.py``) for an A/B.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS))

from qf_helpers import make_spool  # noqa: E402

from pymailsys.queue import spool as queue  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ids", type=int, default=20_000)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--module", default=str(TESTS.parent / "daemons" / "flush.py"))
    args = ap.parse_args()
    spec = importlib.util.spec_from_file_location("flush_under_test", args.module)
    assert spec is not None and spec.loader is not None
    flush = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(flush)
    base = Path(tempfile.mkdtemp(prefix="flush-log-", dir="/work" if os.path.isdir("/work")
                                 else None))
    try:
        _etc, spool_dir = make_spool(base)
        logs = flush.FlushLogs.__new__(flush.FlushLogs)  # the log part needs only the spool
        logs.spool = queue.Spool(str(spool_dir))
        ids = [f"4{i:010d}" for i in range(args.ids)]
        t0 = time.process_time()
        for _round in range(args.rounds):
            for queue_id in ids:
                logs.add("site.example", queue_id)
        added = time.process_time() - t0
        size = os.path.getsize(logs.path("site.example"))
        tracemalloc.start()
        t0 = time.process_time()
        logs.send("site.example")
        sent = time.process_time() - t0
        peak = tracemalloc.get_traced_memory()[1]
        adds = args.ids * args.rounds
        print(f"{args.module}: {adds} adds ({args.ids} IDs x {args.rounds}): "
              f"{added / adds * 1e6:.0f} us CPU each; log {size} bytes; "
              f"send {sent:.2f} s CPU, tracemalloc peak {peak // 1024} kB")
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
