"""Benchmark: qmgr's time and peak memory with a large deferred queue.

Usage: python3 tests/bench/qmgr_memory.py [--messages 100000] [--active-limit 20000]
                                          [--recipient-limit 20000]

Starts a throw-away instance (tests/harness.py), writes N single-recipient
queue files straight into deferred/ with the library's queue-file writer (their
next try in the future, so qmgr leaves them alone), then runs ``postqueue -f``
and waits until qmgr has taken every message and put it back: the mail is for
a destination whose port refuses connections, so after one failed cohort the
destination is dead and the rest is deferred untried ("delivery temporarily
suspended"). Prints the time from ``postqueue -f`` until every message is back
in deferred/, and qmgr's peak resident memory (VmHWM in /proc/PID/status)
before and after. Timing and memory only; nothing here is a pass/fail test.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS))

from harness import Instance, wait_until  # noqa: E402
from qf_helpers import queue_files  # noqa: E402


def refused_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there: connections are refused at once
    return port


def vm(pid: int, field: str) -> int:
    """A /proc/PID/status field in kB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def count_files(inst: Instance, queue: str) -> int:
    return sum(len(files) for _d, _s, files in os.walk(inst.queue_dir / queue))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=100_000)
    ap.add_argument("--active-limit", type=int, default=20_000)
    ap.add_argument("--recipient-limit", type=int, default=20_000)
    args = ap.parse_args()
    inst = Instance()
    try:
        inst.set(transport_maps=f"inline:{{ dead.example=smtp:[127.0.0.1]:{refused_port()} }}",
                 qmgr_message_active_limit=str(args.active_limit),
                 qmgr_message_recipient_limit=str(args.recipient_limit),
                 queue_run_delay="3600s")
        inst.postfix("check")
        t0 = time.monotonic()
        now = time.time()
        queue_files(inst.queue_dir, "deferred", "alice@example.org",
                    [f"d{i}@dead.example" for i in range(args.messages)],
                    [b"Subject: backlog", b"", b"x" * 60], arrival=now, mtime=now + 86400)
        print(f"wrote {args.messages} queue files in {time.monotonic() - t0:.1f} s")
        inst.start()
        qmgr = inst.daemons()["qmgr"][0]
        print(f"qmgr idle: VmHWM {vm(qmgr, 'VmHWM')} kB, VmRSS {vm(qmgr, 'VmRSS')} kB")
        cpu0 = sum(int(x) for x in Path(f"/proc/{qmgr}/stat").read_text().split()[13:15])
        t0 = time.monotonic()
        inst.tool("postqueue", "-f", check=True)

        def done() -> bool:
            return count_files(inst, "active") == 0 and \
                inst.log().count("delivery temporarily suspended") + \
                inst.log().count("status=deferred (connect to") >= args.messages

        wait_until(done, 3600, interval=2, what="every message back in deferred/")
        took = time.monotonic() - t0
        cpu = (sum(int(x) for x in Path(f"/proc/{qmgr}/stat").read_text().split()[13:15])
               - cpu0) / os.sysconf("SC_CLK_TCK")
        print(f"{args.messages} messages through qmgr in {took:.1f} s "
              f"({args.messages / took:.0f}/s, qmgr CPU {cpu:.1f} s); "
              f"qmgr VmHWM {vm(qmgr, 'VmHWM')} kB, VmRSS {vm(qmgr, 'VmRSS')} kB; "
              f"deferred/ holds {count_files(inst, 'deferred')}")
    finally:
        inst.cleanup()


if __name__ == "__main__":
    main()
