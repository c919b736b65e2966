#!/usr/bin/env python3
"""CPU per message of cleanup and qmgr (per thread), without a profiler attached.

Usage (as root, from the repository, with the venv's python):

    python tests/bench/pipeline_cpu.py [--messages 3000] [--runs 2] [--sessions 10]
                                       [--size 2048] [--strace]

It builds the same throw-away instance as tests/bench/compare.py (Maildir
delivery to ``benchuser``), warms it up, then runs the smtp-source load
``--runs`` times and prints, per run, the CPU ms/message of every daemon and of
each thread of cleanup and qmgr (from /proc/PID/task: the fsync and close
threads apart from the event loop), and the medians over the runs. With
``--strace`` an extra run is made under ``strace -f -c`` attached to cleanup
and qmgr, and the system calls per message of each are printed (strace slows
them down: that run's CPU figures are not reported). ``--latency N`` sends N
probes one at a time after the runs (compare.py's latency_run) and prints the
medians of connect->250 and connect->Maildir.

For an A/B of a change run it before and after, alternately; no py-spy is
attached, so the figures are those of the daemons alone. Timing only; nothing
here is a pass/fail test.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import compare  # noqa: E402
import profile_daemons  # noqa: E402
from proc_cpu import cpu_seconds, thread_name  # noqa: E402

WATCHED = ("cleanup", "qmgr")
STRACE_LINE = re.compile(r"^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(\w+)\s*$")


def daemon_pids(system: compare.System) -> dict[str, int]:
    out: dict[str, int] = {}
    for pid in system.group.pids():
        with contextlib.suppress(OSError):
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            name = profile_daemons.daemon_name(cmd)
            if name in WATCHED:
                out[name] = pid
    return out


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds per thread name (comm) of a process."""
    out: dict[str, float] = {}
    with contextlib.suppress(OSError):
        for tid in map(int, os.listdir(f"/proc/{pid}/task")):
            with contextlib.suppress(ProcessLookupError):
                cpu = sum(cpu_seconds(pid, tid))
                name = "loop" if tid == pid else thread_name(pid, tid)
                out[name] = out.get(name, 0.0) + cpu
    return out


def one_run(system: compare.System, args: argparse.Namespace,
            scen: compare.Scenario) -> dict[str, float]:
    pids = daemon_pids(system)
    before = {name: thread_cpu(pid) for name, pid in pids.items()}
    result = compare.RunResult(system.label, 1, args.messages)
    with profile_daemons.CpuByDaemon(system) as cpu:
        compare.load_run(system, result, args, scen)
    system.reset_mailbox()
    per = {name: 1000 * (u + s) / args.messages for name, (u, s, _) in cpu.totals().items()}
    for name, pid in pids.items():
        after = thread_cpu(pid)
        for thread, seconds in after.items():
            per[f"{name}/{thread}"] = 1000 * (seconds - before[name].get(thread, 0.0)) / args.messages
    per["total"] = 1000 * (result.cpu_user_s + result.cpu_system_s) / args.messages
    return per


def strace_run(system: compare.System, args: argparse.Namespace,
               scen: compare.Scenario) -> str:
    if shutil.which("strace") is None:
        compare.run(["apt-get", "install", "-y", "-qq", "strace"], timeout=600)
    lines = []
    tracers = {}
    for name, pid in daemon_pids(system).items():
        out = Path(tempfile.mkstemp(prefix=f"strace-{name}-")[1])
        tracers[name] = (subprocess.Popen(["strace", "-f", "-c", "-o", str(out), "-p", str(pid)],
                                          stderr=subprocess.DEVNULL), out)
    time.sleep(1.0)
    result = compare.RunResult(system.label, 1, args.messages)
    compare.load_run(system, result, args, scen)
    system.reset_mailbox()
    for name, (proc, out) in tracers.items():
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
        calls = []
        for line in out.read_text().splitlines():
            m = STRACE_LINE.match(line)
            if m and m.group(2) != "total":
                calls.append((int(m.group(1)), m.group(2)))
        total = sum(c for c, _ in calls)
        lines.append(f"{name}: {total / args.messages:.1f} system calls per message")
        for count, call in sorted(calls, reverse=True):
            if count / args.messages >= 0.05:
                lines.append(f"   {count / args.messages:6.2f}  {call}")
        out.unlink()
    return "\n".join(lines)


def spy_run(system: compare.System, args: argparse.Namespace,
            scen: compare.Scenario, out_dir: Path) -> str:
    """A run with ``py-spy record --gil`` on cleanup and qmgr: where their Python time goes."""
    py_spy = profile_daemons.ensure_py_spy()
    spies = {}
    for name, pid in daemon_pids(system).items():
        raw = out_dir / f"{name}.raw"
        spies[name] = (subprocess.Popen([py_spy, "record", "--gil", "--nonblocking", "-r", "250",
                                         "--format", "raw", "-o", str(raw), "-p", str(pid)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL), raw)
    time.sleep(1.0)
    result = compare.RunResult(system.label, 1, args.messages)
    compare.load_run(system, result, args, scen)
    system.reset_mailbox()
    texts = []
    for name, (proc, raw) in spies.items():
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
        profile = profile_daemons.parse_raw(raw.read_text(errors="replace"))
        texts.append(f"==== {name} (py-spy --gil: Python time holding the GIL)")
        texts.append(profile_daemons.format_profile(profile, args.top, 250))
    return "\n".join(texts)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--messages", type=int, default=3000)
    p.add_argument("--runs", type=int, default=2)
    p.add_argument("--sessions", type=int, default=10)
    p.add_argument("--size", type=int, default=2048)
    p.add_argument("--strace", action="store_true")
    p.add_argument("--spy", type=Path, metavar="DIR",
                   help="an extra run under py-spy --gil; raw stacks and tables to DIR")
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--latency", type=int, default=0, metavar="N",
                   help="then N probes one at a time: median connect->250 and connect->Maildir")
    p.add_argument("--stall-timeout", type=float, default=60.0)
    compare.add_fs_argument(p)
    args = compare.with_load_defaults(p.parse_args(argv))
    if os.geteuid() != 0:
        print("pipeline_cpu.py: run as root", file=sys.stderr)
        return 2
    return compare.on_scratch_system("pipeline_cpu.py", "pymailsys", "pymailsys-pipeline-", args,
                                     measure)


def measure(system: compare.System, args: argparse.Namespace, scen: compare.Scenario) -> None:
    """Warm up, then the runs, probes, strace and py-spy runs that args ask for; printed."""
    system.reset_mailbox()
    system.start()
    warm = argparse.Namespace(**{**vars(args), "messages": 50, "sessions": 2})
    compare.load_run(system, compare.RunResult(system.label, 0, 50), warm, scen)
    system.reset_mailbox()
    runs = []
    for i in range(args.runs):
        per = one_run(system, args, scen)
        runs.append(per)
        print(f"run {i + 1}: " + ", ".join(f"{k} {v:.3f}" for k, v in sorted(per.items())),
              flush=True)
    keys = sorted({k for r in runs for k in r})
    print(f"medians over {args.runs} runs of {args.messages} messages (CPU ms/message):")
    for k in keys:
        print(f"  {k:<24} {statistics.median(r.get(k, 0.0) for r in runs):.3f}")
    if args.latency:
        probe = compare.RunResult(system.label, 1, args.latency)
        compare.latency_run(system, probe, args.latency, args.size, scen)
        print(f"latency over {args.latency} probes: connect->250 median "
              f"{probe.accept_latency_median_ms:.2f} ms, connect->Maildir median "
              f"{probe.latency_median_ms:.2f} ms (p90 {probe.latency_p90_ms:.2f})")
    if args.strace:
        print(strace_run(system, args, scen))
    if args.spy:
        args.spy.mkdir(parents=True, exist_ok=True)
        text = spy_run(system, args, scen, args.spy)
        (args.spy / "profile.txt").write_text(text + "\n")
        print(text)


if __name__ == "__main__":
    sys.exit(main())
