#!/usr/bin/env python3
"""Local delivery alone: how fast each system empties a queue when nothing arrives.

Usage (as root, from the repository):

    python3 tests/bench/drain_rate.py [--messages 3000] [--rounds 3] [--warmup 300]
                                      [--systems postfix,pymailsys]

compare.py's local scenario measures accept and delivery at once: on a 2-CPU
machine each system's delivery then shares the CPUs with its own smtpd and
cleanup. This tool takes the accept side out. On compare.py's scratch
filesystem, with the same two instances, each round and system (alternating):
start, hold every message at RCPT (``smtpd_recipient_restrictions =
check_client_access static:HOLD, ...``: the HOLD action, so the messages wait
in hold/), send a ``--warmup`` batch, release it (``postsuper -H ALL``,
``postqueue -f``) and wait for it, then send ``--messages`` with smtp-source
into hold/ and time the second release: from ``postqueue -f`` to the last
file in Maildir/new with the queue empty. Delivery runs as in compare.py
(``local_destination_concurrency_limit = 2`` to the one recipient, Maildir).
It prints per round the rate, the system's CPU per message over that window
(its cgroup: qmgr, local and the rest) and the scratch filesystem's journal
commits per message (``/proc/fs/jbd2/DEV-8/info``), then each system's
median and the ratio pymailsys/Postfix. Timing only; nothing here is a
pass/fail test.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import compare  # noqa: E402

HOLD_ALL = "check_client_access static:HOLD, permit_mynetworks, reject"
COMMITS_RE = re.compile(r"^(\d+) transactions")


def journal_commits(system: compare.System) -> int:
    """Transactions the scratch filesystem's journal has committed (0 without one)."""
    device = system.filesystem.device if system.filesystem else ""
    if not device:
        return 0
    info = Path(f"/proc/fs/jbd2/{Path(device).name}-8/info")
    try:
        match = COMMITS_RE.match(info.read_text())
    except OSError:
        return 0
    return int(match.group(1)) if match else 0


def hold(system: compare.System, count: int, recipient: str) -> None:
    """Send count messages with smtp-source; wait until all of them are in hold/."""
    compare.run(compare.smtp_source_argv(system.port, count, 10, 2048, recipient),
                timeout=600, cwd="/")
    compare.wait_until(lambda: system.in_queue("hold") >= count, 60,
                       f"{system.label}: {count} held")


def release(system: compare.System, count: int, timeout: float) -> tuple[float, float, int]:
    """Release hold/ and time the delivery of count messages: (seconds, CPU seconds of
    the system's cgroup, journal commits)."""
    before = system.delivered()
    commits0, cpu0 = journal_commits(system), sum(system.group.cpu())
    system.tool("postsuper", "-H", "ALL")
    t0 = time.monotonic()
    system.tool("postqueue", "-f")
    while system.delivered() - before < count or system.queued() > 0:
        if time.monotonic() - t0 > timeout:
            raise compare.BenchError(f"{system.label}: {system.delivered() - before}/{count} "
                                     f"delivered after {timeout:.0f}s\n{system.log_tail()}")
        time.sleep(0.01)
    seconds = time.monotonic() - t0
    return seconds, sum(system.group.cpu()) - cpu0, journal_commits(system) - commits0


def body(systems: list[compare.System], args: argparse.Namespace,
         scen: compare.Scenario) -> None:
    rates: dict[str, list[float]] = {s.label: [] for s in systems}
    for rnd in range(1, args.rounds + 1):
        order = systems if rnd % 2 else systems[::-1]
        for system in order:
            system.clear_queue()
            system.reset_mailbox()
            compare.settle(system.base)
            system.start()
            try:
                time.sleep(1.0)
                if args.warmup > 0:
                    hold(system, args.warmup, scen.recipient)
                    release(system, args.warmup, args.timeout)
                hold(system, args.messages, scen.recipient)
                seconds, cpu, commits = release(system, args.messages, args.timeout)
            finally:
                system.stop()
            rate = args.messages / seconds
            rates[system.label].append(rate)
            print(f"{system.label:<10} round {rnd}: {args.messages} delivered in {seconds:.2f} s "
                  f"= {rate:.0f}/s, CPU {cpu * 1000 / args.messages:.3f} ms/message, "
                  f"{commits / args.messages:.2f} journal commits/message", flush=True)
    for label, values in rates.items():
        print(f"{label:<10} median {statistics.median(values):.0f}/s "
              f"[{min(values):.0f}-{max(values):.0f}]")
    if len(rates) == 2 and all(rates.values()):
        ratios = [b / a for a, b in zip(rates["postfix"], rates["pymailsys"], strict=True)]
        print(f"pymailsys/postfix: median of the paired ratios {statistics.median(ratios):.2f}")


def prepare(system: compare.System) -> None:
    system.extra["smtpd_recipient_restrictions"] = HOLD_ALL


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=300,
                        help="messages held and released before the measured batch")
    parser.add_argument("--systems", default="postfix,pymailsys",
                        help="comma-separated: postfix, pymailsys or both")
    parser.add_argument("--timeout", type=float, default=300.0,
                        help="seconds a release may take before the run fails")
    compare.add_fs_argument(parser)
    args = parser.parse_args(argv)
    names = [name.strip() for name in args.systems.split(",") if name.strip()]
    if not names or any(name not in ("postfix", "pymailsys") for name in names):
        parser.error("--systems takes postfix, pymailsys or both")
    return compare.on_scratch_systems("drain_rate.py", names, "pymailsys-drain-", args, body,
                                      prepare=prepare)


if __name__ == "__main__":
    sys.exit(main())
