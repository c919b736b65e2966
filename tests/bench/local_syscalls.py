#!/usr/bin/env python3
"""System calls of the local delivery agent per Maildir delivery, pymailsys or Postfix.

Usage (as root, from the repository, with the venv's python):

    python tests/bench/local_syscalls.py [--system pymailsys|postfix] [--messages 300]
                                         [--sessions 2] [--show 1] [--daemon local|cleanup]

It starts a throw-away instance of the chosen system as compare.py does (its
local scenario: Maildir delivery to a throw-away account), warms it up, then
attaches ``strace -f -ff`` to master and every process of the instance, sends
--messages messages with smtp-source and counts, for the processes that run
the local agent (Postfix: those that exec .../local; pymailsys: those whose
command line names ``pymailsys.daemons.local``), every system call per
delivered message, by name. Postfix's local exits after max_use (100)
deliveries and a new one starts: its start-up and exit are counted too, and
printed apart ("lifecycle"), so the steady per-delivery list can be read
beside ours. With --show N it prints the complete call sequence of one
delivery (the Nth from the end that reads a request and writes a reply) of
each system, with paths shortened, for the side-by-side list. strace slows
every traced process several-fold: only the counts mean anything, not the
rates. ``--daemon cleanup`` counts cleanup's calls instead, per message
queued (Postfix's cleanup also exits after max_use; its lifecycle is apart
likewise).
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import compare  # noqa: E402  (the benchmark's systems and load)

CALL_RE = re.compile(r"^(?:\d+ )?(?:<\.\.\. )?([a-z_0-9]+)[( ]")
# the processes of each daemon --daemon can name (Postfix's program, or our module)
DAEMON_RE = {name: re.compile(rf"postfix/sbin/{name}\b|pymailsys\.daemons\.{name}\b|postfix/{name}\b")
             for name in ("local", "cleanup")}


def traced_pids(system: compare.System) -> list[int]:
    return system.group.pids()


def identity(pid: int) -> str:
    """The program a process runs and its command line ("" once it is gone)."""
    try:
        return (os.readlink(f"/proc/{pid}/exe") + " "
                + Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " "))
    except OSError:
        return ""


def is_daemon(trace: Path, pid: int, cmdlines: dict[int, str], daemon: str = "local") -> bool:
    pattern = DAEMON_RE[daemon]
    if pattern.search(cmdlines.get(pid, "")):
        return True
    with trace.open(errors="replace") as f:
        for line in f:
            if line.startswith("execve(") and pattern.search(line):
                return True
    return False


def calls(trace: Path) -> list[tuple[str, str]]:
    """(name, line) of every completed call (an ``unfinished`` half counts once)."""
    out = []
    for line in trace.read_text(errors="replace").splitlines():
        if "resumed>" in line or line.startswith(("+++", "---")):
            continue
        m = CALL_RE.match(line)
        if m:
            out.append((m.group(1), line))
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--system", choices=["pymailsys", "postfix"], default="pymailsys")
    p.add_argument("--messages", type=int, default=300)
    p.add_argument("--sessions", type=int, default=2)
    p.add_argument("--size", type=int, default=2048)
    p.add_argument("--show", type=int, default=0, help="print the calls of one delivery")
    p.add_argument("--daemon", choices=sorted(DAEMON_RE), default="local",
                   help="count this daemon's calls instead (cleanup: per message queued)")
    p.add_argument("--keep", action="store_true", help="keep the traces (printed path)")
    compare.add_fs_argument(p)
    args = compare.with_load_defaults(p.parse_args())
    if os.geteuid() != 0:
        print("local_syscalls.py: run as root", file=sys.stderr)
        return 2
    return compare.on_scratch_system("local_syscalls.py", args.system, "pymailsys-lsys-", args,
                                     count_calls)


def count_calls(system: compare.System, args: argparse.Namespace, scen: compare.Scenario) -> None:
    """Trace one load of `system` and print the local agent's system calls per delivery."""
    strace = None
    try:
        system.reset_mailbox()
        system.start()
        warm = argparse.Namespace(**{**vars(args), "messages": 50})
        compare.load_run(system, compare.RunResult(system.label, 0, 50), warm, scen)
        pids = traced_pids(system)
        cmdlines = {pid: identity(pid) for pid in pids}
        out = system.base.parent / "trace"
        out.mkdir()
        argv = ["strace", "-f", "-ff", "-s", "96", "-o", str(out / "t")]
        for pid in pids:
            argv += ["-p", str(pid)]
        strace = subprocess.Popen(argv, stderr=subprocess.DEVNULL)
        time.sleep(2.0)
        compare.load_run(system, compare.RunResult(system.label, 1, args.messages), args, scen)
        time.sleep(1.0)
        for pid in traced_pids(system):  # children born during the run
            cmdlines.setdefault(pid, identity(pid))
        strace.terminate()
        strace.wait(60)
        strace = None
        counts: collections.Counter[str] = collections.Counter()
        lifecycle: collections.Counter[str] = collections.Counter()
        sequences: list[list[str]] = []
        processes = 0
        for trace in sorted(out.iterdir()):
            pid = int(trace.name.rsplit(".", 1)[1])
            if not is_daemon(trace, pid, cmdlines, args.daemon):
                continue
            processes += 1
            seq = calls(trace)
            for name, _line in seq:
                counts[name] += 1
            # lifecycle: before the first request is read and after the last reply
            starts = [i for i, (n, line) in enumerate(seq)
                      if n in ("read", "recvfrom") and ("queue_name" in line or "flags" in line)]
            if starts:
                for name, _line in seq[:starts[0]]:
                    lifecycle[name] += 1
                for a, b in zip(starts, starts[1:], strict=False):
                    sequences.append([line for _n, line in seq[a:b]])
        n = args.messages
        total = sum(counts.values())
        print(f"{args.system}: {processes} {args.daemon} processes traced, {n} messages: "
              f"{total / n:.1f} system calls per delivery (all, lifecycle included: "
              f"{sum(lifecycle.values()) / n:.1f} per delivery before the first request)")
        for name, count in counts.most_common():
            print(f"    {name:<18} {count / n:6.2f}  (lifecycle {lifecycle[name] / n:5.2f})")
        if args.show and len(sequences) >= args.show:
            one = sequences[-args.show]
            print(f"one delivery, {len(one)} calls:")
            for text in one:
                text = text.replace(str(system.base), "DIR")
                print("    " + re.sub(r"^\d+ +", "", text)[:160])
    finally:
        if strace is not None:
            strace.kill()
            strace.wait()


if __name__ == "__main__":
    sys.exit(main())
