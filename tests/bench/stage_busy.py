#!/usr/bin/env python3
"""Which daemon bounds the rate: each pymailsys process's time asleep and in fsync
under compare.py's load.

Usage (as root, from the repository; needs bpftrace):

    python tests/bench/stage_busy.py [VENV] [--messages 5000] [--sessions 10] [--fs ext4]

Creates and starts one pymailsys instance as compare.py's local scenario does
(VENV's build, else this python's), warms it up, then sends ``--messages`` over
``--sessions`` smtp-source sessions while bpftrace sums, per process of the
instance's cgroup, the time its threads spent in epoll waits (asleep: nothing to
do) and in fsync/fdatasync, in half-second slices. Only the slices that fall
wholly inside the load, less its first second and last half second, count. It
prints each process's share of that window asleep and in fsync; what is left is
on a CPU or waiting for one. A process asleep for almost none of the window is
the stage that bounds the rate; one asleep most of the time has room to spare.
Figures are in the README (Benchmark). Postfix's processes are short-lived and
many per role, so this tool measures pymailsys only. A process with a thread of its
own (a syncing thread) can be asleep on its loop while the thread is in fsync: its
shares then add up to more than the whole.
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ab_latency  # noqa: E402
import compare  # noqa: E402
import latency_path  # noqa: E402

SLICE_S = 0.5
PROGRAM = """
tracepoint:syscalls:sys_enter_epoll_wait,tracepoint:syscalls:sys_enter_epoll_pwait,
tracepoint:syscalls:sys_enter_epoll_pwait2 /cgroup == cgroupid("CGROUP")/ { @ew[tid] = nsecs; }
tracepoint:syscalls:sys_exit_epoll_wait,tracepoint:syscalls:sys_exit_epoll_pwait,
tracepoint:syscalls:sys_exit_epoll_pwait2 /@ew[tid]/ {
    @asleep[pid] = sum(nsecs - @ew[tid]); delete(@ew[tid]); }
tracepoint:syscalls:sys_enter_fsync,tracepoint:syscalls:sys_enter_fdatasync
    /cgroup == cgroupid("CGROUP")/ { @fs[tid] = nsecs; }
tracepoint:syscalls:sys_exit_fsync,tracepoint:syscalls:sys_exit_fdatasync /@fs[tid]/ {
    @fsync[pid] = sum(nsecs - @fs[tid]); delete(@fs[tid]); }
interval:ms:500 { printf("slice %lld\\n", nsecs); print(@asleep); print(@fsync);
    clear(@asleep); clear(@fsync); }
"""
SLICE_RE = re.compile(r"^slice (\d+)$")
ENTRY_RE = re.compile(r"^@(asleep|fsync)\[(\d+)\]: (\d+)$")


def shares(trace: str, start_ns: int, end_ns: int) -> tuple[float, dict[int, dict[str, float]]]:
    """(window seconds, pid -> {"asleep": share, "fsync": share}) over the slices that
    ended inside [start_ns + SLICE, end_ns]: a slice's sums are of calls that returned
    in it."""
    totals: dict[int, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    slices = 0
    counting = False
    for line in trace.splitlines():
        m = SLICE_RE.match(line)
        if m:
            ends = int(m.group(1))
            counting = start_ns + SLICE_S * 1e9 <= ends <= end_ns
            slices += counting
            continue
        m = ENTRY_RE.match(line)
        if m and counting:
            totals[int(m.group(2))][m.group(1)] += int(m.group(3))
    window = slices * SLICE_S
    if not window:
        raise compare.BenchError("the load was too short for one whole slice")
    return window, {pid: {k: v / 1e9 / window for k, v in c.items()} for pid, c in totals.items()}


def body(system: compare.System, args: argparse.Namespace, scen: compare.Scenario) -> None:
    if system.group.path is None or system.group.kind != "v2":
        raise compare.BenchError("needs a cgroup v2 of its own for the instance")
    system.reset_mailbox()
    system.start()
    latency_path.warm_up(system, args, scen)
    with tempfile.TemporaryDirectory(prefix="stage-busy-") as tmp:
        script = Path(tmp) / "busy.bt"
        script.write_text(PROGRAM.replace("CGROUP", str(system.group.path)))
        out = Path(tmp) / "busy.out"
        with open(out, "w") as sink:
            tracer = subprocess.Popen(["bpftrace", str(script)], stdout=sink,
                                      stderr=subprocess.DEVNULL)
        try:
            compare.wait_until(lambda: "Attaching" in out.read_text(), 60, what="bpftrace")
            time.sleep(1.0)
            started = time.monotonic_ns()
            result = compare.RunResult(system.label, 1, args.messages)
            compare.load_run(system, result, args, scen)
            ended = time.monotonic_ns()
        finally:
            tracer.terminate()
            tracer.wait(30)
        trace = out.read_text()
    window, by_pid = shares(trace, started + 10**9, ended - 5 * 10**8)
    print(f"{system.label}: {args.messages} messages over {args.sessions} sessions in "
          f"{(ended - started) / 1e9:.2f} s ({args.messages / ((ended - started) / 1e9):.0f}/s); "
          f"window {window:.1f} s in the middle of the load")
    print(f"  {'process':<16} {'asleep':>7} {'in fsync':>9} {'the rest':>9}")
    for pid in sorted(by_pid, key=lambda p: (latency_path.role(p), p)):
        asleep, fsync = by_pid[pid].get("asleep", 0.0), by_pid[pid].get("fsync", 0.0)
        name = f"{latency_path.role(pid) or 'gone'}[{pid}]"
        print(f"  {name:<16} {asleep:>6.0%} {fsync:>9.0%} {max(0.0, 1 - asleep - fsync):>9.0%}")
    system.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("venv", nargs="?", help="a venv with the build to measure "
                        "(default: this python's)")
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--sessions", type=int, default=10)
    parser.add_argument("--size", type=int, default=2048)
    compare.add_fs_argument(parser)
    args = compare.with_load_defaults(parser.parse_args())
    if shutil.which("bpftrace") is None:
        print("stage_busy.py: needs bpftrace (apt-get install bpftrace)", file=sys.stderr)
        return 1
    name = "pymailsys"
    if args.venv:
        name = Path(args.venv).name
        compare.SYSTEMS[name] = ab_latency.build_class(name, str(Path(args.venv) / "bin" / "python"))
    return compare.on_scratch_system("stage_busy.py", name, "pymailsys-busy-", args, body)


if __name__ == "__main__":
    sys.exit(main())
