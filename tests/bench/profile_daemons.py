#!/usr/bin/env python3
"""Profile every pymailsys daemon under the benchmark's load, with py-spy.

Usage (as root, from the repository):

    python3 tests/bench/profile_daemons.py [--messages 5000] [--sessions 10] [--size 2048]
                                           [--rate 200] [--top 15] [--out bench-profile]

It builds the same throw-away pymailsys instance as tests/bench/compare.py
(same main.cf settings, account ``benchuser``, Maildir delivery), starts it in
its own cgroup, warms it up with a few messages (so that the daemons master
spawns on demand exist), then runs ``py-spy record --subprocesses`` on the
master (which follows every child, including those spawned during the run)
while ``/usr/sbin/smtp-source`` sends the load, and stops py-spy when the
Maildir holds every message and the queue is empty.

It writes to --out (created; kept after the run):

- ``pyspy.raw``: py-spy's collapsed stacks (``--format raw``), one line per
  stack with its sample count; feed it to flamegraph.pl or speedscope;
- ``profile.txt``: per daemon (grouped by the ``pymailsys.daemons.NAME``
  module on each process's command line): CPU from /proc (ms per message, and
  per MB for messages of 100 kB or more: ``--size 10000000 --messages 30
  --sessions 2`` for issue #15 goal 4), samples, and the top functions by
  self time (the frame on CPU) and by inclusive time (anywhere on the stack);
  the same is printed on stdout. Under CPU contention py-spy also counts
  time spent waiting for a CPU, so read shares from the tables and absolute
  cost from the CPU lines.

py-spy is installed with pip when missing. It samples without stopping the
processes (``--nonblocking``) unless --blocking is given. Samples count only
time on CPU (idle threads are left out), so the tables show where CPU goes.
The file name is not ``profile.py`` on purpose: that would shadow the
standard library's ``profile`` module for anything run from this directory.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import compare  # noqa: E402  (the benchmark's instance and load code)
from proc_cpu import cpu_of, proc_stat  # noqa: E402

PROCESS_FRAME = re.compile(r'^process (\d+):"(.*)"$')
DAEMON_RE = re.compile(r"pymailsys[./]daemons[./](\w+)")
LINE_RE = re.compile(r"^(.*) \(([^()]*?)(?::\d+)?\)$")


def ensure_py_spy() -> str:
    found = shutil.which("py-spy")
    if found:
        return found
    compare.note("installing py-spy with pip")
    compare.run([sys.executable, "-m", "pip", "install", "-q", "py-spy"], timeout=600)
    found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not os.access(found, os.X_OK):
        raise compare.BenchError("pip install py-spy did not provide a py-spy command")
    return found


def daemon_name(cmdline: str) -> str:
    m = DAEMON_RE.search(cmdline)
    if m:
        return m.group(1)
    return cmdline.split()[0].rsplit("/", 1)[-1] if cmdline else "?"


def short_frame(frame: str) -> str:
    """'func (path/to/file.py:123)' -> 'func (file.py)', so that lines of one function add up."""
    m = LINE_RE.match(frame)
    if not m:
        return frame
    name, where = m.groups()
    where = where.rsplit("/", 1)[-1]
    return f"{name} ({where})"


class CpuByDaemon:
    """Samples utime+stime of every process in the system's group while the load runs.

    Per daemon name: CPU seconds used during the run by every process seen
    (exited ones up to their last sample, so a slight undercount) and how
    many processes there were; this is CPU only, unlike py-spy's samples.
    """

    def __init__(self, system: compare.System, interval: float = 0.2) -> None:
        self.system = system
        self.interval = interval
        self.first: dict[int, tuple[float, float]] = {}
        self.last: dict[int, tuple[float, float]] = {}
        self.name: dict[int, str] = {}
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.started = False

    def sample(self) -> None:
        for pid in self.system.group.pids():
            fields = proc_stat(pid)
            if not fields:
                continue
            cpu = cpu_of(fields)
            if pid not in self.name:
                with contextlib.suppress(OSError):
                    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
                    self.name[pid] = daemon_name(cmdline.decode(errors="replace"))
                # A process born during the run counts from zero, one alive before from now.
                self.first[pid] = cpu if self.started else (0.0, 0.0)
            self.last[pid] = cpu

    def loop(self) -> None:
        while not self.stop_event.wait(self.interval):
            self.sample()

    def __enter__(self) -> CpuByDaemon:
        self.started = True
        self.sample()
        self.started = False
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_event.set()
        self.thread.join()
        self.sample()

    def totals(self) -> dict[str, tuple[float, float, int]]:
        """Per daemon: (user seconds, system seconds, processes)."""
        out: dict[str, tuple[float, float, int]] = {}
        for pid, (user, system) in self.last.items():
            name = self.name.get(pid, "?")
            first = self.first.get(pid, (0.0, 0.0))
            u, s, count = out.get(name, (0.0, 0.0, 0))
            out[name] = (u + user - first[0], s + system - first[1], count + 1)
        return out


def parse_raw(text: str) -> dict[str, dict[str, collections.Counter[str]]]:
    """Per daemon: 'total' samples, 'self' and 'inclusive' counters of functions."""
    out: dict[str, dict[str, collections.Counter[str]]] = {}
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        owner, start = "?", 0
        for i, frame in enumerate(frames):
            m = PROCESS_FRAME.match(frame)
            if m:
                owner, start = daemon_name(m.group(2)), i + 1
        code = [short_frame(f) for f in frames[start:]]
        if not code:
            continue
        entry = out.setdefault(owner, {"total": collections.Counter(), "self": collections.Counter(),
                                       "inclusive": collections.Counter(),
                                       "lines": collections.Counter()})
        entry["total"]["samples"] += count
        entry["self"][code[-1]] += count
        entry["lines"][frames[-1]] += count
        for frame in set(code):
            entry["inclusive"][frame] += count
    return out


def format_profile(profile: dict[str, dict[str, collections.Counter[str]]], top: int,
                   rate: int, cpu: dict[str, tuple[float, float, int]] | None = None,
                   messages: int = 0, size: int = 0) -> str:
    lines = []
    order = sorted(profile, key=lambda d: -profile[d]["total"]["samples"])
    grand = sum(profile[d]["total"]["samples"] for d in order) or 1
    if cpu:
        lines.append("CPU by daemon during the load (from /proc, all its processes):")
        for name, (user, system, count) in sorted(cpu.items(), key=lambda kv: -(kv[1][0] + kv[1][1])):
            seconds = user + system
            per = f"  {1000 * seconds / messages:5.2f} ms/message" if messages else ""
            if messages and size >= 100_000:
                per += f"  {1000 * seconds / (messages * size / 1e6):6.2f} ms/MB"
            lines.append(f"  {name:<16} {seconds:7.2f} s CPU (user {user:6.2f}, system {system:6.2f})"
                         f"{per}  {count:4d} process(es)")
        lines.append("")
    if not profile:
        return "\n".join(lines)
    lines.append(f"py-spy samples at {rate}/s per process (1 sample = {1000 / rate:.0f} ms on CPU "
                 "or blocked in a system call such as fsync; idle waits left out):")
    for name in order:
        total = profile[name]["total"]["samples"]
        lines.append(f"  {name:<12} {total:7d} samples  {100 * total / grand:5.1f}%  "
                     f"~{total / rate:.1f} s active")
    for name in order:
        total = profile[name]["total"]["samples"] or 1
        lines += ["", f"== {name}: {profile[name]['total']['samples']} samples"]
        lines.append(f"   top {top} by self time:")
        for func, count in profile[name]["self"].most_common(top):
            lines.append(f"   {100 * count / total:5.1f}%  {func}")
        lines.append(f"   top {top} lines by self time:")
        for where, count in profile[name]["lines"].most_common(top):
            lines.append(f"   {100 * count / total:5.1f}%  {where}")
        lines.append(f"   top {top} by inclusive time:")
        for func, count in profile[name]["inclusive"].most_common(top):
            lines.append(f"   {100 * count / total:5.1f}%  {func}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--messages", type=int, default=5000)
    p.add_argument("--sessions", type=int, default=10)
    p.add_argument("--size", type=int, default=2048)
    p.add_argument("--rate", type=int, default=200, help="py-spy samples per second (200)")
    p.add_argument("--top", type=int, default=15, help="functions per table (15)")
    p.add_argument("--out", type=Path, default=Path("bench-profile"),
                   help="output directory (bench-profile)")
    p.add_argument("--blocking", action="store_true", help="let py-spy pause processes to sample")
    p.add_argument("--reuse-connections", action="store_true", help="smtp-source -d")
    p.add_argument("--stall-timeout", type=float, default=60.0)
    p.add_argument("--keep", action="store_true", help="keep the instance's temp dir")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                   help="extra main.cf setting for the profiled system (experiments)")
    p.add_argument("--system", choices=["pymailsys", "postfix"], default="pymailsys",
                   help="postfix: only the CPU-by-daemon table, for comparison (no py-spy)")
    compare.add_fs_argument(p)
    args = compare.with_load_defaults(p.parse_args(argv))
    if os.geteuid() != 0:
        print("profile_daemons.py: run as root (py-spy attaches to daemons of other users)",
              file=sys.stderr)
        return 2
    py_spy = ensure_py_spy() if args.system == "pymailsys" else ""
    args.out.mkdir(parents=True, exist_ok=True)
    raw_path = args.out / "pyspy.raw"
    extra = {}
    for item in args.set:
        name, sep, value = item.partition("=")
        if not sep:
            p.error(f"--set {item!r}: expected NAME=VALUE")
        extra[name.strip()] = value.strip()

    def profile_and_write(system: compare.System, args: argparse.Namespace,
                          scen: compare.Scenario) -> None:
        text = profile_run(system, args, scen, py_spy, raw_path)
        (args.out / "profile.txt").write_text(text + "\n")
        print(text)
        compare.note(f"wrote {args.out / 'profile.txt'}" + (f" and {raw_path}" if py_spy else ""))

    return compare.on_scratch_system("profile_daemons.py", args.system, "pymailsys-profile-",
                                     args, profile_and_write,
                                     prepare=lambda s: s.extra.update(extra))


def profile_run(system: compare.System, args: argparse.Namespace, scen: compare.Scenario,
                py_spy: str, raw_path: Path) -> str:
    """Warm the system up, then one load under py-spy (if given) and CpuByDaemon; the report."""
    system.reset_mailbox()
    system.start()
    # Warm up, so that the on-demand daemons exist (py-spy follows new ones too).
    warm_messages = 20 if args.size < 1_000_000 else 2
    warm = argparse.Namespace(**{**vars(args), "messages": warm_messages, "sessions": 2})
    compare.load_run(system, compare.RunResult(system.label, 0, warm_messages), warm, scen)
    system.reset_mailbox()
    master = system.master_pid()
    if master is None and py_spy:
        raise compare.BenchError("pymailsys: no pid in pid/master.pid")
    spy_argv = [py_spy, "record", "--subprocesses", "-p", str(master), "-r", str(args.rate),
                "--format", "raw", "-o", str(raw_path)]
    if not args.blocking:
        spy_argv.append("--nonblocking")
    spy = None
    try:
        if py_spy:
            compare.note(f"profiling: {' '.join(spy_argv)}")
            spy = subprocess.Popen(spy_argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True)
            time.sleep(1.0)
            if spy.poll() is not None:
                raise compare.BenchError(f"py-spy exited at once: {spy.communicate()[0]}")
        result = compare.RunResult(system.label, 1, args.messages)
        with CpuByDaemon(system) as cpu_by_daemon:
            compare.load_run(system, result, args, scen)
        profile: dict[str, dict[str, collections.Counter[str]]] = {}
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            try:
                spy_out = spy.communicate(timeout=60)[0]
            except subprocess.TimeoutExpired as exc:
                raise compare.BenchError("py-spy did not stop within 60s of SIGINT") from exc
            spy = None
            if not raw_path.exists():
                raise compare.BenchError(f"py-spy wrote no {raw_path}:\n{spy_out}")
            profile = parse_raw(raw_path.read_text(errors="replace"))
    finally:
        if spy is not None and spy.poll() is None:
            spy.kill()
            spy.wait()
    return (f"{args.system} under smtp-source load{' (py-spy)' if py_spy else ''}: {args.messages} "
            f"messages of {args.size} bytes over {args.sessions} sessions"
            + (f"; settings: {', '.join(args.set)}" if args.set else "") + "\n"
            f"under profiling: accepted {result.accepted_per_s:.0f}/s, delivered "
            f"{result.delivered_per_s:.0f}/s, CPU {result.cpu_s_per_1000:.2f} s per 1,000 "
            f"messages (user {result.cpu_user_s:.2f} s, system {result.cpu_system_s:.2f} s)\n"
            + format_profile(profile, args.top, args.rate, cpu_by_daemon.totals(),
                             args.messages, args.size))


if __name__ == "__main__":
    sys.exit(main())
