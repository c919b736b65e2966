#!/usr/bin/env python3
"""Per-process memory and start time of a pymailsys instance: what master's fork saves.

Usage (as root, from the repository, with the python of the venv to measure):

    python3 tests/bench/fork_memory.py [--starts 5] [--messages 3000] [--sessions 10]

It builds compare.py's local-delivery instance, then:

- starts and stops it ``--starts`` times, timing ``postfix start`` until
  smtpd answers with 220 (wall clock and the CPU the instance's processes
  used meanwhile), and prints the median;
- after a start, the PSS of each process idle, then the peak PSS of each
  daemon (and of the whole instance) while smtp-source sends ``--messages``
  messages and local delivers them, as a table by daemon (processes are
  named by the ``pymailsys.daemons.NAME`` module of their command line),
  with the private memory (mapped by no other process: what the daemon
  copied or allocated after the fork) at that peak.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import compare  # noqa: E402  (the benchmark's instance and load code)

DAEMON_RE = re.compile(rb"pymailsys\.daemons\.(\w+)")


def memory_kb(pid: int) -> tuple[int, int]:
    """(PSS, private) kB of a process: private is what no other process maps."""
    pss = private = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    pss = int(line.split()[1])
                elif line.startswith(("Private_Clean:", "Private_Dirty:")):
                    private += int(line.split()[1])
    except OSError:
        pass
    return pss, private


def name_of(pid: int) -> str:
    try:
        m = DAEMON_RE.search(Path(f"/proc/{pid}/cmdline").read_bytes())
    except OSError:
        return "?"
    return m.group(1).decode() if m else "?"


def by_daemon(pids: list[int]) -> dict[str, tuple[int, int, int]]:
    """daemon -> (processes, PSS kB summed, private kB summed)."""
    out: dict[str, tuple[int, int, int]] = {}
    for pid in pids:
        n, kb, priv = out.get(name_of(pid), (0, 0, 0))
        pss, private = memory_kb(pid)
        out[name_of(pid)] = (n + 1, kb + pss, priv + private)
    return out


def timed_start(system: compare.System) -> tuple[float, float]:
    cpu0 = system.group.cpu()
    t0 = time.monotonic()
    system.start()
    wall = time.monotonic() - t0
    cpu1 = system.group.cpu()
    return wall, (cpu1[0] - cpu0[0]) + (cpu1[1] - cpu0[1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--starts", type=int, default=5)
    p.add_argument("--messages", type=int, default=3000)
    p.add_argument("--sessions", type=int, default=10)
    p.add_argument("--size", type=int, default=2048)
    compare.add_fs_argument(p)
    args = p.parse_args()
    if os.geteuid() != 0:
        print("fork_memory.py: run as root", file=sys.stderr)
        return 2
    return compare.on_scratch_system("fork_memory.py", "pymailsys", "pymailsys-forkmem-", args,
                                     measure)


def measure(system: compare.System, args: argparse.Namespace, scen: compare.Scenario) -> None:
    """Timed starts, then PSS by daemon idle and under one load; printed."""
    system.reset_mailbox()
    starts = []
    for _ in range(args.starts):
        starts.append(timed_start(system))
        system.stop()
    walls = [w for w, _c in starts]
    cpus = [c for _w, c in starts]
    print(f"start until 220: median {statistics.median(walls) * 1000:.0f} ms wall, "
          f"{statistics.median(cpus) * 1000:.0f} ms CPU "
          f"(runs: {', '.join(f'{w * 1000:.0f}/{c * 1000:.0f}' for w, c in starts)})")
    system.start()
    time.sleep(2.0)
    idle = by_daemon(system.group.pids())
    argv = compare.smtp_source_argv(system.port, args.messages, args.sessions, args.size,
                                    scen.recipient)
    source = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peak: dict[str, tuple[int, int, int]] = {}
    total_peak = 0
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        now = by_daemon(system.group.pids())
        total_peak = max(total_peak, sum(kb for _n, kb, _p in now.values()))
        for name, sample in now.items():
            if sample[1] > peak.get(name, (0, 0, 0))[1]:
                peak[name] = sample
        if (source.poll() is not None and system.delivered() >= args.messages
                and system.queued() == 0):
            break
        time.sleep(0.25)
    source.wait()
    print(f"{'daemon':10} {'idle procs':>10} {'idle PSS MB':>12} {'load procs':>10} "
          f"{'peak PSS MB':>12} {'private MB':>11}")
    for name in sorted(set(idle) | set(peak)):
        i, pk = idle.get(name, (0, 0, 0)), peak.get(name, (0, 0, 0))
        print(f"{name:10} {i[0]:>10} {i[1] / 1024:>12.1f} {pk[0]:>10} {pk[1] / 1024:>12.1f} "
              f"{pk[2] / 1024:>11.1f}")
    print(f"{'total':10} {sum(n for n, _, _ in idle.values()):>10} "
          f"{sum(kb for _, kb, _ in idle.values()) / 1024:>12.1f} {'':>10} "
          f"{total_peak / 1024:>12.1f}  (peak of the sum; private: at each daemon's peak)")
    print(f"delivered {system.delivered()} of {args.messages}")


if __name__ == "__main__":
    sys.exit(main())
