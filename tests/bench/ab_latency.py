#!/usr/bin/env python3
"""Two pymailsys builds, or a build and Postfix (or the floor), side by side: idle
latency probes, alternating one by one.

Usage (as root, from the repository, with either venv's python):

    python tests/bench/ab_latency.py VENV_A VENV_B [--messages 300] [--gap 0.02] [--trace]
                                     [--fs ext4|root|...] [--json FILE]

VENV_A and VENV_B are virtual environments with pymailsys installed (an
editable install of a worktree each: the two builds to compare); either may be
the word ``postfix`` instead, for compare.py's Postfix system (Debian's
package), so that the goal's connect -> Maildir latency is compared with
probes interleaved as well; or ``floor``, for latency_floor.py's bare Python
pipeline with our hops and fsyncs (compare.FloorSystem): against a build, each
step's difference is what our features and our way of doing them cost; against
Postfix, how far below Postfix a Python pipeline can be on this machine. Both
instances are created as compare.py's local scenario does (same settings,
Maildir delivery to one throw-away account, each its own cgroup), started at
once and warmed up, each on a scratch filesystem of its own (``--one-fs``: both
on one). Then --messages times: one compare.py
latency probe (smtplib, connect to the file in Maildir/new) to each, the first
of the pair alternating, and ``--gap`` seconds of pause after each probe
(compare.py's PROBE_GAP, 20 ms, by default). Both wait idle while the other is
probed, so each side's processes sit idle for the gap plus the other side's probe
before each of their own.

Why a gap: the goal's latency is that of a message to an idle system, and the
pause before a probe is part of what is measured. With ``--gap 0`` (the two sides
probed back to back, each idle only for the other's probe) pymailsys against
Postfix was 1.00-1.12 x over six runs of 2026-12-06, and 1.13-1.14 x with the
default 20 ms. Against the floor, dropping the gap made neither side faster (README).

Why a filesystem each: on one, the two share a journal, and each side's first
fsync of a probe also commits what the other side left uncommitted after its
last probe (its unlinks, renames and links: the journal commits every 5 s
otherwise), so a change to what a build leaves behind shows up on both sides.
Against Postfix it made no difference (2026-12-06: paired ratio 1.137 apart,
1.144 on one filesystem); a change to what a build leaves for the journal needs it.

Why: a change worth 1-5% of the idle latency is below what compare.py's runs
can show (its per-round latency moves by about 20%, and this machine drifts by
10% between runs a few minutes apart); probes interleaved one by one see the
same drift, so their paired ratio shows the change itself (2026-12-05, #15:
its 300 pairs told 1% and 3% apart where runs of latency_path.py did not).

It prints each build's median latency, the ratio of the medians, the median
of the paired ratios (B/A) and each half's medians (a drift shows there); the
median of each step of the probe for each side and their difference (connect
-> 220, EHLO, MAIL, RCPT, DATA with the content -> 250, 250 -> Maildir:
compare.py's LATENCY_STEPS, which add up to each probe's latency), so that a
difference in the total shows where in the SMTP session or after it it is;
with --trace, also the median of each stage of the message's path for each
build, from ``perf trace -a`` of six system calls (latency_path.py's stages:
connect -> cleanup's fsync, the fsync, -> qmgr's rename, -> local's fsync,
that fsync, -> the link). --json writes every probe's latency and steps.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import compare  # noqa: E402  (the benchmark's systems, load and probe)
import latency_path  # noqa: E402  (the traced stages)

POSTFIX = "postfix"  # a side that is compare.py's Postfix system, not a venv
FLOOR = "floor"  # a side that is latency_floor.py's bare pipeline (compare.FloorSystem)
SYSTEM_SIDES = (POSTFIX, FLOOR)


def build_class(label: str, python: str) -> type[compare.PymailsysSystem]:
    """A PymailsysSystem that runs the build of ``python`` under ``label``."""
    return type(f"Build_{label}", (compare.PymailsysSystem,), {"label": label, "python": python})


def summary(a: list[float], b: list[float]) -> dict[str, float]:
    """Medians, ratio of the medians and median paired ratio (B/A) of paired probes, and
    each half's medians."""
    half = len(a) // 2
    return {"a": statistics.median(a), "b": statistics.median(b),
            "ratio_of_medians": statistics.median(b) / statistics.median(a),
            "paired_ratio": statistics.median(y / x for x, y in zip(a, b, strict=True)),
            "a_first_half": statistics.median(a[:half] or a),
            "a_second_half": statistics.median(a[half:]),
            "b_first_half": statistics.median(b[:half] or b),
            "b_second_half": statistics.median(b[half:])}


STEP_HEADINGS = {"banner": "banner", "ehlo": "EHLO", "mail": "MAIL", "rcpt": "RCPT",
                 "data": "DATA..250", "delivery": "250..Maildir"}


def step_table(labels: list[str], steps: dict[str, dict[str, list[float]]]) -> list[str]:
    """Lines of a table: each side's median of each step (µs), then B - A."""
    medians = {label: {name: statistics.median(steps[label][name]) * 1000
                       for name in compare.LATENCY_STEPS} for label in labels}
    width = max(len(label) for label in labels) + 5
    heads = [STEP_HEADINGS[name] for name in compare.LATENCY_STEPS]
    lines = ["step medians (us)".ljust(width) + "".join(f"{h:>14}" for h in heads)]
    for label, side in zip(labels, "AB", strict=True):
        lines.append(f"{label} ({side})".ljust(width)
                     + "".join(f"{medians[label][name]:14.0f}" for name in compare.LATENCY_STEPS))
    a, b = medians[labels[0]], medians[labels[1]]
    lines.append("B - A".ljust(width)
                 + "".join(f"{b[name] - a[name]:+14.0f}" for name in compare.LATENCY_STEPS))
    return lines


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("a", help="the venv of build A, or postfix")
    p.add_argument("b", help="the venv of build B, or postfix")
    p.add_argument("--messages", type=int, default=300, help="probes per build")
    p.add_argument("--gap", type=float, default=compare.PROBE_GAP,
                   help="seconds of pause after each probe (default: compare.py's 0.02)")
    p.add_argument("--size", type=int, default=2048)
    p.add_argument("--trace", action="store_true", help="also the stages, from perf trace")
    p.add_argument("--json", help="write every probe's latency here")
    p.add_argument("--one-fs", action="store_true",
                   help="both sides on one scratch filesystem (one journal), as before 2026-12-06")
    compare.add_fs_argument(p)
    args = compare.with_load_defaults(p.parse_args())
    if args.gap < 0:
        p.error(f"--gap {args.gap}: a pause cannot be negative")
    args.sessions = 2
    if os.geteuid() != 0:
        print("ab_latency.py: run as root", file=sys.stderr)
        return 2
    if args.trace and shutil.which("perf") is None:
        print("ab_latency.py: perf not found (apt install linux-perf)", file=sys.stderr)
        return 2
    labels = []
    if args.a == args.b and args.a in SYSTEM_SIDES:
        print(f"ab_latency.py: {args.a} against itself: give a pymailsys build or the "
              f"other of {', '.join(SYSTEM_SIDES)}", file=sys.stderr)
        return 2
    for venv in (args.a, args.b):
        if venv in SYSTEM_SIDES:
            labels.append(venv)
            continue
        python = str(Path(venv) / "bin" / "python")
        if not os.access(python, os.X_OK):
            print(f"ab_latency.py: {python}: not found", file=sys.stderr)
            return 2
        label = Path(venv).resolve().name
        label = label if label not in labels and label not in SYSTEM_SIDES else label + "-b"
        labels.append(label)
        compare.SYSTEMS[label] = build_class(label, python)
    latencies: dict[str, list[float]] = {label: [] for label in labels}
    steps: dict[str, dict[str, list[float]]] = {
        label: {name: [] for name in compare.LATENCY_STEPS} for label in labels}
    stages: dict[str, dict[str, float]] = {}
    filesystems: dict[str, str] = {}

    def body(systems: list[compare.System], args: argparse.Namespace,
             scen: compare.Scenario) -> None:
        for system in systems:
            where = system.filesystem
            assert where is not None  # scratch_systems gives every system one
            filesystems[system.label] = where.device or where.path
            system.reset_mailbox()
            system.start()
        try:
            for system in systems:
                latency_path.warm_up(system, args, scen)
            order: list[str] = []
            trace = systems[0].base.parent / "trace"
            with latency_path.perf_trace(trace) if args.trace else contextlib.nullcontext():
                for n in range(args.messages):
                    for system in (systems if n % 2 == 0 else systems[::-1]):
                        result = compare.RunResult(system.label, 1, 1)
                        compare.latency_run(system, result, 1, args.size, scen, args.gap)
                        latencies[system.label].append(result.latencies_ms[0])
                        for name, times in result.latency_steps_ms.items():
                            steps[system.label][name] += times
                        order.append(system.label)
            if args.trace:
                pids = {pid: latency_path.role(pid) for s in systems for pid in s.group.pids()}
                probes = latency_path.stages(trace, pids, os.getpid(), complete_only=False)
                k = min(len(probes), len(order))  # perf may have missed the first connects
                paired = list(zip(probes[len(probes) - k:], order[len(order) - k:], strict=True))
                for label in labels:
                    mine = [pr for pr, who in paired
                            if who == label and all(key in pr for key in latency_path.STAGES)]
                    if mine:
                        stages[label] = latency_path.stage_medians(mine)
        finally:
            for system in systems:
                with contextlib.suppress(compare.BenchError, OSError):
                    system.stop()

    rc = compare.on_scratch_systems("ab_latency.py", labels, "pymailsys-ab-", args, body,
                                    separate=not args.one_fs)
    a, b = latencies[labels[0]], latencies[labels[1]]
    if rc != 0 or not a or len(a) != len(b):
        return rc or 1
    s = summary(a, b)
    print(f"{labels[0]} (A): median {s['a']:.3f} ms   {labels[1]} (B): median {s['b']:.3f} ms   "
          f"{len(a)} probes each, {args.gap * 1000:g} ms apart")
    print(f"B/A: ratio of the medians {s['ratio_of_medians']:.3f}, "
          f"median of the paired ratios {s['paired_ratio']:.3f}")
    print(f"halves: A {s['a_first_half']:.3f} {s['a_second_half']:.3f} ms, "
          f"B {s['b_first_half']:.3f} {s['b_second_half']:.3f} ms")
    for line in step_table(labels, steps):
        print(line)
    print("filesystems: " + ", ".join(f"{label} on {filesystems[label]}" for label in labels)
          + (" (one journal)" if len(set(filesystems.values())) == 1 else " (a journal each)"))
    for label, row in stages.items():
        print(f"{label}: " + ", ".join(f"{name} {us:.0f} us" for name, us in row.items()))
    if args.json:
        Path(args.json).write_text(json.dumps({"latencies_ms": latencies, "steps_ms": steps,
                                               "summary": s, "stages_us": stages,
                                               "filesystems": filesystems, "gap_s": args.gap},
                                              indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
