#!/usr/bin/env python3
"""Why later rounds of compare.py cost more CPU than the first: one system, round after round.

Usage (as root, from the repository, with the venv's python):

    python tests/bench/round_drift.py [--system pymailsys|postfix] [--rounds 4]
                                      [--messages 5000] [--between none|wait|fresh]
                                      [--fs ext4|root|ext4-discard|ext4-nojournal|tmpfs]
                                      [--perf 1,4 [--inodes]] [--perf-out DIR]

It creates one throw-away system as compare.py does (scratch_systems, on the
filesystem --fs: see compare.scratch_filesystem) and runs compare.py's round
(one_run: queue and Maildir emptied, syncfs, start, warm-up, measured
smtp-source load, stop) --rounds times in a row, printing the user and system
CPU of each measured load from the system's cgroup. Between rounds, besides
what one_run does, it does what --between says: ``none``: nothing; ``wait``:
sleep --wait seconds; ``fresh``: destroy the instance and create a new one
(new spool directories, new log, on a new filesystem), to see whether anything
of the instance grows.

``--perf 1,4`` records ``perf record -a -g`` during those rounds (warm-up
included) and prints the kernel functions where the system's threads spent
their system time, as shares of their samples; with ``--inodes`` it records
the ext4 inode allocation and free tracepoints instead and prints how many
inodes the system's threads allocate and free per message. ``--perf-out``
keeps the perf.data files. CPU times, not rates: the machine is shared.

What it found (2026-12-05, README "Benchmarks"): on this machine's root
filesystem (ext4 without a journal) the system time per round grows for both
systems, because ext4 without a journal skips recently deleted inodes when it
allocates one (``recently_deleted()`` in fs/ext4/ialloc.c, and
tests/bench/inode_reuse.py); on a scratch ext4 with a journal it does not.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import compare  # noqa: E402  (the benchmark's systems, load and setup)


def perf_summary(data: Path, tids: set[int], top: int = 20) -> str:
    """Kernel symbols by self time, as shares of the samples of the system's threads."""
    out = compare.run(["perf", "script", "-i", str(data), "-F", "tid,ip,sym,dso", "-G"],
                      check=False, timeout=600).stdout
    samples = kernel = 0
    symbols: collections.Counter[str] = collections.Counter()
    for line in out.splitlines():
        fields = line.split()
        if len(fields) < 3 or not fields[0].isdigit() or int(fields[0]) not in tids:
            continue
        samples += 1
        if fields[-1] == "([kernel.kallsyms])":
            kernel += 1
            symbols[fields[2]] += 1
    if not samples:
        return "  perf: no samples of the system's threads"
    lines = [f"  perf: {samples} samples of the system's threads, kernel {100 * kernel / samples:.1f}%;"
             " top kernel symbols (share of all its samples):"]
    lines += [f"    {100 * count / samples:5.2f}%  {sym}" for sym, count in symbols.most_common(top)]
    return "\n".join(lines)


INODE_EVENTS = ("ext4:ext4_allocate_inode", "ext4:ext4_free_inode")


def inode_counts(data: Path, tids: set[int], messages: int) -> str:
    """Inodes allocated and freed per message by the system's threads (warm-up included)."""
    out = compare.run(["perf", "script", "-i", str(data), "-F", "tid,event"], check=False,
                      timeout=600).stdout
    counts = dict.fromkeys(INODE_EVENTS, 0)
    for line in out.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0].isdigit() and int(fields[0]) in tids:
            event = fields[1].rstrip(":")
            if event in counts:
                counts[event] += 1
    return "  perf: per message " + ", ".join(
        f"{event.split('_', 1)[1]} {count / messages:.2f}" for event, count in counts.items())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--system", choices=list(compare.SYSTEMS), default="pymailsys")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--messages", type=int, default=5000)
    p.add_argument("--sessions", type=int, default=10)
    p.add_argument("--size", type=int, default=2048)
    p.add_argument("--warmup", type=int, default=300)
    p.add_argument("--between", choices=["none", "wait", "fresh"], default="none")
    p.add_argument("--wait", type=float, default=30.0, help="seconds idle between rounds "
                   "with --between wait (30)")
    compare.add_fs_argument(p)
    p.add_argument("--perf", default="", help="rounds to record with perf, e.g. 1,4")
    p.add_argument("--perf-out", type=Path, help="keep the perf.data files here")
    p.add_argument("--inodes", action="store_true",
                   help="with --perf: count the inodes the system's processes allocate and free "
                        "per message (ext4 tracepoints) instead of sampling the kernel")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("round_drift.py: run as root", file=sys.stderr)
        return 2
    load = compare.parse_args(["--messages", str(args.messages), "--sessions", str(args.sessions),
                               "--size", str(args.size), "--warmup", str(args.warmup),
                               "--latency", "0"])
    perf_rounds = {int(x) for x in args.perf.split(",") if x.strip()}
    perf_dir = args.perf_out or Path(tempfile.mkdtemp(prefix="pymailsys-drift-perf-"))
    perf_dir.mkdir(parents=True, exist_ok=True)
    scen = compare.scenario("local")
    rows = []
    try:
        stack = contextlib.ExitStack()
        with stack:
            (system,) = stack.enter_context(compare.scratch_systems(
                [args.system], scen, "pymailsys-drift-", fs=args.fs))
            where = system.filesystem
            for rnd in range(1, args.rounds + 1):
                if rnd > 1 and args.between == "wait":
                    time.sleep(args.wait)
                if rnd > 1 and args.between == "fresh":
                    stack.close()
                    stack = contextlib.ExitStack()
                    (system,) = stack.enter_context(compare.scratch_systems(
                        [args.system], scen, "pymailsys-drift-", fs=args.fs))
                perf = Perf(perf_dir / f"round-{rnd}.data", system,
                            ["-e", ",".join(INODE_EVENTS)] if args.inodes else ["-g"]
                            ) if rnd in perf_rounds else None
                with perf or contextlib.nullcontext():
                    result = compare.one_run(system, rnd, load, scen)
                rows.append(result)
                print(f"round {rnd}: user {result.cpu_user_s:.2f} s, system "
                      f"{result.cpu_system_s:.2f} s, per 1000: {result.cpu_s_per_1000:.2f} s; "
                      f"other load {result.other_cpu_cores:.2f} CPUs", flush=True)
                if perf is not None and args.inodes:
                    print(inode_counts(perf.path, perf.tids, args.messages + args.warmup),
                          flush=True)
                elif perf is not None:
                    print(perf_summary(perf.path, perf.tids), flush=True)
    except compare.BenchError as exc:
        print(f"round_drift.py: {exc}", file=sys.stderr)
        return 1
    print(f"{args.system} on {where.description if where else args.fs}; between rounds: "
          f"{args.between}; {args.messages} messages per round")
    for r in rows:
        print(f"  round {r.round}: user {r.cpu_user_s:6.2f} s  system {r.cpu_system_s:6.2f} s  "
              f"(syncfs {r.settle_s:4.1f} s, other {r.other_cpu_cores:.2f} CPUs)")
    if not args.perf_out:
        shutil.rmtree(perf_dir, ignore_errors=True)
    return 0


class Perf:
    """perf record -a -g while a round runs, and the threads of the system seen meanwhile."""

    def __init__(self, path: Path, system: compare.System, events: list[str]) -> None:
        self.path = path
        self.system = system
        self.events = events
        self.tids: set[int] = set()
        self.stop = threading.Event()
        self.proc: subprocess.Popen | None = None
        self.thread = threading.Thread(target=self.watch, daemon=True)

    def watch(self) -> None:
        while not self.stop.wait(0.05):
            for pid in self.system.group.pids():
                with contextlib.suppress(OSError):
                    self.tids.update(int(t) for t in os.listdir(f"/proc/{pid}/task"))

    def __enter__(self) -> Perf:
        self.proc = subprocess.Popen(["perf", "record", "-q", "-a", "-o", str(self.path),
                                      *self.events],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()
        if self.proc is not None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


if __name__ == "__main__":
    sys.exit(main())
