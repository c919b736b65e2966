#!/usr/bin/env python3
"""Where compare.py's latency goes: one idle message's path, stage by stage, both systems.

Usage (as root, from the repository, with the venv's python; perf installed):

    python tests/bench/latency_path.py [--system both|NAME,...] [--messages 200]
                                       [--rounds 2] [--fs ext4|root|...] [--no-trace]

It creates the throw-away systems as compare.py does (its local scenario, on the
filesystem --fs; --system: pymailsys and Postfix, or any of compare.py's systems,
``floor`` among them, latency_floor.py's bare pipeline, whose daemons have the same
names) and, --rounds times, for each system in turn: starts it, warms it
up, and sends --messages single messages one at a time with compare.py's latency
probe (smtplib, each after the last reached the Maildir). It prints per system:

* the median connect -> Maildir and connect -> 250 latency of those probes;
* per daemon (processes grouped by program), the CPU time per message and the
  time per message its threads waited for a CPU while runnable, from
  /proc/PID/task/*/schedstat (nothing is traced: the probes run as in compare.py);
* unless --no-trace: a second set of probes under ``perf trace -a`` of six system
  calls only (connect, fsync, rename, renameat2, link, linkat: a few per message,
  so the tracing costs each system little), and the median of each stage:

      connect -> fsync      client connects .. cleanup starts the queue file's fsync
      fsync                 the queue file's fsync (a journal commit)
      fsync -> rename       .. qmgr renames the file into active/
      rename -> fsync       .. local starts the Maildir file's fsync
      fsync                 the Maildir file's fsync
      fsync -> link         .. local links it into new/

The stages are the same moments in both systems, so they say which part of the
path differs. What it found (2026-12-05, #15): the two fsyncs are about 45% of
the path and cost the two systems the same; pymailsys spent its extra time in
qmgr and local between the rename and the Maildir fsync (Python CPU: at idle
every daemon runs from cold caches, at two to three times its CPU per message
under load), and its daemons waited longer for a CPU (two cores: the client,
smtpd, cleanup, qmgr and local take turns).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import compare  # noqa: E402  (the benchmark's systems, load and probe)

TRACED = "connect,fsync,rename,renameat2,link,linkat"
ROLES = ("qmgr", "local", "cleanup", "smtpd", "master", "trivial-rewrite", "postlogd",
         "proxymap", "pickup", "anvil", "bounce", "showq")
STAGES = ("connect", "fsync0", "fsync1", "rename", "mfsync0", "mfsync1", "link")
STAGE_NAMES = {("connect", "fsync0"): "connect -> fsync", ("fsync0", "fsync1"): "fsync",
               ("fsync1", "rename"): "fsync -> rename", ("rename", "mfsync0"): "rename -> fsync",
               ("mfsync0", "mfsync1"): "fsync (Maildir)", ("mfsync1", "link"): "fsync -> link"}
# perf trace's line: "TIME ( DUR ms): COMM/PID NAME(ARGS) = RET", a call interrupted by
# another thread's line resumed as "COMM/PID  ... [continued]: NAME()) = RET" (start time)
LINE_RE = re.compile(r"^\s*(\d+\.\d+) \(\s*([\d.]+) ms\): \S+/(\d+)\s+"
                     r"(?:\.\.\. \[continued\]: )?(\w+)\(")


def role(pid: int) -> str:
    """The program a process of the instance runs (pymailsys: the daemon's module)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            words = f.read().split(b"\0")
    except OSError:
        return ""
    return role_of(" ".join(w.decode("utf-8", "replace") for w in words[:4]))


def role_of(command: str) -> str:
    """The program of a command line's first words: Postfix's (``/usr/lib/postfix/sbin/
    qmgr``, ``qmgr -l``), pymailsys's (``python -m pymailsys.daemons.qmgr``) or the
    floor's (``python latency_floor.py qmgr BASE``); "other" for anything else."""
    for name in ROLES:
        if re.search(rf"(?:daemons\.|^|/|latency_floor\.py ){re.escape(name)}\b", command):
            return name
    return "other"


def schedstat(system: compare.System) -> dict[int, tuple[str, int, int]]:
    """pid -> (role, ns on a CPU, ns runnable but waiting for one), threads summed."""
    out = {}
    for pid in system.group.pids():
        run = wait = 0
        try:
            for task in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                    fields = f.read().split()
                run += int(fields[0])
                wait += int(fields[1])
        except OSError:
            continue
        out[pid] = (role(pid), run, wait)
    return out


def per_daemon(before: dict[int, tuple[str, int, int]], after: dict[int, tuple[str, int, int]],
               messages: int) -> dict[str, tuple[float, float]]:
    """role -> (CPU us per message, runnable-waiting us per message); a process that
    ended meanwhile is missing (Postfix's processes end after max_use requests)."""
    totals: dict[str, list[int]] = {}
    for pid, (name, run, wait) in after.items():
        _, run0, wait0 = before.get(pid, (name, 0, 0))
        t = totals.setdefault(name, [0, 0])
        t[0] += run - run0
        t[1] += wait - wait0
    return {name: (run / messages / 1000, wait / messages / 1000)
            for name, (run, wait) in totals.items()}


def stages(trace: Path, pids: dict[int, str], client: int,
           complete_only: bool = True) -> list[dict[str, float]]:
    """Each probe's moments (ms, perf's clock) from the trace of the six calls, one per
    client connect; only those with every moment unless not ``complete_only``."""
    calls = []
    for line in trace.read_text(errors="replace").splitlines():
        m = LINE_RE.match(line)
        if m is None:
            continue
        pid = int(m.group(3))
        who = "client" if pid == client else pids.get(pid, "")
        if who:
            calls.append((float(m.group(1)), float(m.group(2)), who, m.group(4)))
    calls.sort()
    probes: list[dict[str, float]] = []
    current: dict[str, float] | None = None
    for start, duration, who, name in calls:
        if who == "client" and name == "connect":
            current = {"connect": start}
            probes.append(current)
        elif current is None:
            continue
        elif who == "cleanup" and name == "fsync" and "fsync0" not in current:
            current["fsync0"], current["fsync1"] = start, start + duration
        elif who == "qmgr" and name in ("rename", "renameat2") and "fsync1" in current \
                and "rename" not in current:
            current["rename"] = start
        elif who == "local" and name == "fsync" and "rename" in current \
                and "mfsync0" not in current:
            current["mfsync0"], current["mfsync1"] = start, start + duration
        elif who == "local" and name in ("link", "linkat") and "mfsync1" in current \
                and "link" not in current:
            current["link"] = start
    if not complete_only:
        return probes
    return [p for p in probes if all(k in p for k in STAGES)]


def stage_medians(probes: list[dict[str, float]]) -> dict[str, float]:
    """The median of each stage, in µs, over complete probes (``stages``); {} for none."""
    if not probes:
        return {}
    return {name: statistics.median((p[b] - p[a]) * 1000 for p in probes)
            for (a, b), name in STAGE_NAMES.items()}


@contextlib.contextmanager
def perf_trace(out: Path) -> Iterator[None]:
    """``perf trace -a`` of the TRACED calls into ``out`` while the block runs (the block
    starts once perf has had time to attach)."""
    perf = subprocess.Popen(["perf", "trace", "-a", "-e", TRACED, "--time", "-o", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(1.5)  # perf attaches
        yield
        time.sleep(0.2)  # the last calls reach the file
    finally:
        perf.terminate()
        perf.wait(60)


def warm_up(system: compare.System, args: argparse.Namespace, scen: compare.Scenario) -> None:
    """A started system's warm-up before probes: 50 messages of load, 5 probes."""
    warm = argparse.Namespace(**{**vars(args), "messages": 50})
    compare.load_run(system, compare.RunResult(system.label, 0, 50), warm, scen)
    compare.latency_run(system, compare.RunResult(system.label, 0, 5), 5, args.size, scen)


def probe(system: compare.System, args: argparse.Namespace, scen: compare.Scenario,
          ) -> compare.RunResult:
    result = compare.RunResult(system.label, 1, args.messages)
    compare.latency_run(system, result, args.messages, args.size, scen)
    return result


def measure(system: compare.System, args: argparse.Namespace, scen: compare.Scenario,
            top: Path) -> dict[str, object]:
    system.reset_mailbox()
    system.start()
    try:
        warm_up(system, args, scen)
        before = schedstat(system)
        result = probe(system, args, scen)
        daemons = per_daemon(before, schedstat(system), args.messages)
        row: dict[str, object] = {"latency_ms": result.latency_median_ms,
                                  "accept_ms": result.accept_latency_median_ms,
                                  "daemons": daemons}
        if not args.no_trace:
            pids = {pid: name for pid, (name, _, _) in schedstat(system).items()}
            trace = top / f"trace-{system.label}"
            with perf_trace(trace):
                traced = probe(system, args, scen)
            for pid in system.group.pids():  # Postfix's processes started meanwhile
                pids.setdefault(pid, role(pid))
            found = stages(trace, pids, os.getpid())
            row["traced_latency_ms"] = traced.latency_median_ms
            row["stages_us"] = stage_medians(found)
            row["traced_messages"] = len(found)
        return row
    finally:
        system.stop()


def report(rows: dict[str, list[dict[str, object]]]) -> None:
    for label, runs in rows.items():
        lat = [float(r["latency_ms"]) for r in runs]  # type: ignore[arg-type]
        acc = [float(r["accept_ms"]) for r in runs]  # type: ignore[arg-type]
        print(f"{label}: latency connect -> Maildir {' '.join(f'{x:.2f}' for x in lat)} ms, "
              f"connect -> 250 {' '.join(f'{x:.2f}' for x in acc)} ms (median of each run)")
        names = sorted({n for r in runs for n in r["daemons"]})  # type: ignore[attr-defined]
        for name in names:
            cells = [r["daemons"].get(name) for r in runs]  # type: ignore[attr-defined]
            text = "  ".join(f"{c[0]:6.0f} / {c[1]:5.0f}" if c else "     -" for c in cells)
            print(f"    {name:<16} CPU / waiting for a CPU, us per message: {text}")
        for stage in STAGE_NAMES.values():
            values = [r.get("stages_us", {}).get(stage) for r in runs]  # type: ignore[attr-defined]
            if any(v is not None for v in values):
                print(f"    {stage:<18} " + "  ".join(
                    f"{v:7.0f} us" if v is not None else "      -" for v in values))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--system", default="both",
                   help="both (pymailsys and postfix), or compare.py's systems, comma-separated: "
                        "pymailsys, postfix, floor (latency_floor.py)")
    p.add_argument("--messages", type=int, default=200)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--size", type=int, default=2048)
    p.add_argument("--no-trace", action="store_true", help="skip the perf trace stage timings")
    p.add_argument("--json", help="also write the figures here")
    compare.add_fs_argument(p)
    args = compare.with_load_defaults(p.parse_args())
    args.sessions = 2
    if os.geteuid() != 0:
        print("latency_path.py: run as root", file=sys.stderr)
        return 2
    if not args.no_trace and shutil.which("perf") is None:
        print("latency_path.py: perf not found (apt install linux-perf), or --no-trace",
              file=sys.stderr)
        return 2
    names = ["pymailsys", "postfix"] if args.system == "both" else args.system.split(",")
    unknown = [name for name in names if name not in compare.SYSTEMS]
    if unknown or len(set(names)) != len(names):
        print(f"latency_path.py: --system {args.system}: give distinct names of "
              f"{', '.join(compare.SYSTEMS)}", file=sys.stderr)
        return 2
    rows: dict[str, list[dict[str, object]]] = {}

    def body(systems: list[compare.System], args: argparse.Namespace,
             scen: compare.Scenario) -> None:
        top = systems[0].base.parent
        for n in range(args.rounds):
            for system in (systems if n % 2 == 0 else systems[::-1]):
                rows.setdefault(system.label, []).append(measure(system, args, scen, top))
        report(rows)
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=1))

    return compare.on_scratch_systems("latency_path.py", names, "pymailsys-lpath-", args, body)


if __name__ == "__main__":
    sys.exit(main())
