#!/usr/bin/env python3
"""Which daemon bounds the rate: each pymailsys process's time asleep, in fsync, on a
CPU and waiting for one under compare.py's load, and the journal commits it costs.

Usage (as root, from the repository; needs bpftrace):

    python tests/bench/stage_busy.py [VENV | postfix] [--messages 5000] [--sessions 10]
                                     [--fs ext4]

Creates and starts one instance as compare.py's local scenario does (VENV's build,
else this python's; ``postfix``: compare.py's Postfix), warms it up, then sends
``--messages`` over ``--sessions`` smtp-source sessions while bpftrace sums, per
process of the instance's cgroup, the time its threads spent in epoll waits (asleep:
nothing to do) and in fsync/fdatasync, in half-second slices. Only the slices that
fall wholly inside the load, less its first second and last half second, count. It
prints each process's share of that window asleep and in fsync; what is left is on
a CPU or waiting for one, and each process's CPU time and time waiting for a CPU
per message over the whole load (``/proc/PID/task/*/schedstat``) say which. A
process asleep for almost none of the window is the stage that bounds the rate; one
asleep most of the time has room to spare. A process with a thread of its own (a
syncing thread) can be asleep on its loop while the thread is in fsync: its shares
then add up to more than the whole.

For either system it also counts the journal commits of the instance's filesystem
during the whole load (jbd2's start and end of commit on its device): commits per
message, their mean length, and the share of the load's time in which one ran. Every
fsync waits for a commit, and the journal runs one at a time, so fewer commits per
message (more fsyncs sharing each) is what lets more messages through. Postfix's
processes are short-lived and many per role, so the per-process table is for
pymailsys only. Figures are in the README (Benchmark).
"""

from __future__ import annotations

import argparse
import collections
import os
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
tracepoint:jbd2:jbd2_start_commit /args->dev == DEVICE/ { @commit_at[args->transaction] = nsecs; }
tracepoint:jbd2:jbd2_end_commit /@commit_at[args->transaction]/ {
    printf("commit %lld %lld\\n", @commit_at[args->transaction], nsecs);
    delete(@commit_at[args->transaction]); }
END { clear(@commit_at); clear(@ew); clear(@fs); }
"""
SLICE_RE = re.compile(r"^slice (\d+)$")
ENTRY_RE = re.compile(r"^@(asleep|fsync)\[(\d+)\]: (\d+)$")
COMMIT_RE = re.compile(r"^commit (\d+) (\d+)$", re.M)


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


def commits(trace: str, start_ns: int, end_ns: int) -> tuple[int, float, float]:
    """(journal commits that ended inside [start_ns, end_ns], their mean length in µs,
    the share of the span in which a commit ran: each commit's time clipped to it)."""
    count = 0
    total_ns = running_ns = 0
    for m in COMMIT_RE.finditer(trace):
        began, ended = int(m.group(1)), int(m.group(2))
        if start_ns <= ended <= end_ns:
            count += 1
            total_ns += ended - began
        running_ns += max(0, min(ended, end_ns) - max(began, start_ns))
    mean_us = total_ns / count / 1000 if count else 0.0
    return count, mean_us, running_ns / (end_ns - start_ns)


def kernel_device(path: Path) -> int:
    """The kernel's dev_t (major << 20 | minor, as jbd2's tracepoints give it) of the
    filesystem that holds path."""
    st_dev = os.stat(path).st_dev
    return (os.major(st_dev) << 20) | os.minor(st_dev)


def body(system: compare.System, args: argparse.Namespace, scen: compare.Scenario) -> None:
    if system.group.path is None or system.group.kind != "v2":
        raise compare.BenchError("needs a cgroup v2 of its own for the instance")
    system.reset_mailbox()
    system.start()
    latency_path.warm_up(system, args, scen)
    with tempfile.TemporaryDirectory(prefix="stage-busy-") as tmp:
        script = Path(tmp) / "busy.bt"
        script.write_text(PROGRAM.replace("CGROUP", str(system.group.path))
                          .replace("DEVICE", str(kernel_device(system.base))))
        out, err = Path(tmp) / "busy.out", Path(tmp) / "busy.err"
        with open(out, "w") as sink, open(err, "w") as errors:
            tracer = subprocess.Popen(["bpftrace", str(script)], stdout=sink, stderr=errors)
        try:
            compare.wait_until(lambda: "Attaching" in out.read_text() or tracer.poll() is not None,
                               60, what="bpftrace")
            time.sleep(1.0)
            if tracer.poll() is not None:  # e.g. a kernel without syscall tracepoints
                raise compare.BenchError("bpftrace could not attach its probes:\n"
                                         + err.read_text().strip())
            sched0 = latency_path.schedstat(system)
            started = time.monotonic_ns()
            result = compare.RunResult(system.label, 1, args.messages)
            compare.load_run(system, result, args, scen)
            ended = time.monotonic_ns()
            sched1 = latency_path.schedstat(system)
        finally:
            tracer.terminate()
            tracer.wait(30)
        trace = out.read_text()
    seconds = (ended - started) / 1e9
    print(f"{system.label}: {args.messages} messages over {args.sessions} sessions in "
          f"{seconds:.2f} s ({args.messages / seconds:.0f}/s)")
    count, mean_us, running = commits(trace, started, ended)
    print(f"  journal: {count} commits, {count / args.messages:.2f} per message, "
          f"{mean_us:.0f} µs each on average, one running {running:.0%} of the time")
    if system.label == "postfix":
        system.stop()
        return
    window, by_pid = shares(trace, started + 10**9, ended - 5 * 10**8)
    print(f"  per process, shares of a window of {window:.1f} s in the middle of the load; "
          "CPU and waiting for a CPU (µs per message) over the whole load:")
    print(f"  {'process':<16} {'asleep':>7} {'in fsync':>9} {'the rest':>9} {'CPU':>6} "
          f"{'waiting':>8}")
    for pid in sorted(by_pid, key=lambda p: (latency_path.role(p), p)):
        asleep, fsync = by_pid[pid].get("asleep", 0.0), by_pid[pid].get("fsync", 0.0)
        name = f"{latency_path.role(pid) or 'gone'}[{pid}]"
        _, run0, wait0 = sched0.get(pid, ("", 0, 0))
        _, run1, wait1 = sched1.get(pid, ("", run0, wait0))
        cpu_us = (run1 - run0) / args.messages / 1000
        wait_us = (wait1 - wait0) / args.messages / 1000
        print(f"  {name:<16} {asleep:>6.0%} {fsync:>9.0%} {max(0.0, 1 - asleep - fsync):>9.0%} "
              f"{cpu_us:>6.0f} {wait_us:>8.0f}")
    system.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("venv", nargs="?", help="a venv with the build to measure "
                        "(default: this python's), or postfix")
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--sessions", type=int, default=10)
    parser.add_argument("--size", type=int, default=2048)
    compare.add_fs_argument(parser)
    args = compare.with_load_defaults(parser.parse_args())
    if shutil.which("bpftrace") is None:
        print("stage_busy.py: needs bpftrace (apt-get install bpftrace)", file=sys.stderr)
        return 1
    name = "pymailsys"
    if args.venv == "postfix":
        name = "postfix"
    elif args.venv:
        name = Path(args.venv).name
        compare.SYSTEMS[name] = ab_latency.build_class(name, str(Path(args.venv) / "bin" / "python"))
    return compare.on_scratch_system("stage_busy.py", name, f"{name}-busy-", args, body)


if __name__ == "__main__":
    sys.exit(main())
