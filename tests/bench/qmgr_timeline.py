#!/usr/bin/env python3
"""The path of one message after cleanup's fsync, system call by system call, pymailsys or Postfix.

Usage (as root, from the repository, with the venv's python):

    python tests/bench/qmgr_timeline.py [--system pymailsys|postfix] [--messages 10] [--show 1]

It starts a throw-away instance of the chosen system as compare.py does (its local
scenario: Maildir delivery to a throw-away account), warms it up, attaches
``strace -f -ff -ttt -T`` to every process of the instance and sends --messages
single messages one at a time, each after the last reached the Maildir (compare.py's
latency probe). For each message it finds, in the traces of cleanup, qmgr and
local, these moments and prints the microseconds between them and the number of
qmgr's system calls and event-loop waits (epoll_wait) in each stretch:

    fsync       cleanup's last fsync before qmgr takes the file
    trigger     cleanup's last write before qmgr wakes
    wake        qmgr's wait returns (the trigger arrived)
    take        qmgr renames the file into active/
    request     qmgr's first write after the take (the request to local)
    reply       local's last write before qmgr removes the file (its reply)
    reply-wake  qmgr's first wait that returns after the reply
    unlink      qmgr unlinks the file in active/

strace slows every traced process several-fold: the counts and the order mean
something, the microseconds only relative to each other within one system.
--show N prints qmgr's and local's calls for the Nth message from the end.
--load N then sends N messages with smtp-source (compare.py's load, --sessions
at once) under ``strace -c`` of qmgr alone and prints its system calls per
message, by name.
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

import compare  # noqa: E402  (the benchmark's systems and load)
from local_syscalls import identity  # noqa: E402

LINE_RE = re.compile(r"^(\d+\.\d+) (?:<\.\.\. )?([a-z_0-9]+)[( ](.*?)(?:<(\d+\.\d+)>)?$")
ROLE_RE = re.compile(r"(?:pymailsys\.daemons\.|postfix/sbin/|postfix/)(qmgr|local|cleanup)\b")
WAITS = ("epoll_wait", "epoll_pwait", "select", "pselect6", "poll")
WRITES = ("write", "writev", "sendto", "sendmsg")


class Call:
    __slots__ = ("start", "end", "name", "text")

    def __init__(self, start: float, end: float, name: str, text: str) -> None:
        self.start, self.end, self.name, self.text = start, end, name, text


def read_trace(path: Path) -> list[Call]:
    """The completed calls of one process (an interrupted call is taken at its resumption)."""
    out = []
    pending: dict[str, float] = {}
    for line in path.read_text(errors="replace").splitlines():
        m = LINE_RE.match(line)
        if not m:
            continue
        t, name, text, dur = float(m.group(1)), m.group(2), m.group(3), m.group(4)
        if "<unfinished" in text:
            pending[name] = t
            continue
        start = pending.pop(name, t) if "resumed>" in line else t
        out.append(Call(start, t + float(dur or 0), name, text))
    return out


def role_of(trace: Path, pid: int, cmdlines: dict[int, str]) -> str:
    m = ROLE_RE.search(cmdlines.get(pid, ""))
    if m:
        return m.group(1)
    with trace.open(errors="replace") as f:
        for line in f:
            if "execve(" in line:
                m = ROLE_RE.search(line)
                if m:
                    return m.group(1)
    return ""


def last_before(calls: list[Call], t: float, names: tuple[str, ...]) -> Call | None:
    found = None
    for c in calls:  # not sorted by end: calls of several processes (two locals)
        if c.end <= t and c.name in names and (found is None or c.end > found.end):
            found = c
    return found


def first_after(calls: list[Call], t: float, names: tuple[str, ...],
                needle: str = "") -> Call | None:
    for c in calls:
        if c.start >= t and c.name in names and needle in c.text:
            return c
    return None


def between(calls: list[Call], a: float, b: float) -> list[Call]:
    return [c for c in calls if a <= c.start and c.end <= b]


def timelines(roles: dict[str, list[Call]]) -> list[dict[str, float | int]]:
    qmgr, local, cleanup = roles["qmgr"], roles.get("local", []), roles.get("cleanup", [])
    out = []
    for take in (c for c in qmgr if c.name in ("rename", "renameat", "renameat2")
                 and "active" in c.text.split(",", 1)[-1]):
        wake = last_before(qmgr, take.start, WAITS)
        request = first_after(qmgr, take.end, WRITES)
        unlink = first_after(qmgr, take.end, ("unlink", "unlinkat"), "active")
        if wake is None or request is None or unlink is None:
            continue
        reply = last_before(local, unlink.start, WRITES)
        if reply is None or reply.end < request.start:
            continue
        reply_wake = first_after(qmgr, reply.end, WAITS)
        fsync = last_before(cleanup, take.start, ("fsync", "fdatasync"))
        trigger = last_before(cleanup, wake.end, WRITES)
        if reply_wake is None:
            continue
        out.append({
            "fsync->wake": wake.end - fsync.end if fsync else float("nan"),
            "trigger->wake": wake.end - trigger.end if trigger else float("nan"),
            "wake->request": request.end - wake.end,
            "calls wake->request": len(between(qmgr, wake.end, request.end)),
            "waits wake->request": sum(c.name in WAITS for c in between(qmgr, wake.end,
                                                                         request.start)),
            "request->reply": reply.end - request.end,
            "reply->unlink": unlink.end - reply.end,
            "calls reply->unlink": len(between(qmgr, reply_wake.start, unlink.end)),
            "waits reply->unlink": sum(c.name in WAITS for c in between(qmgr, reply.end,
                                                                         unlink.start)),
            "_from": wake.end, "_to": unlink.end,
        })
    return out


def roles_pids(system: compare.System) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for pid in system.group.pids():
        m = ROLE_RE.search(identity(pid))
        if m:
            out.setdefault(m.group(1), []).append(pid)
    return out


def count_qmgr_calls(system: compare.System, pids: dict[str, list[int]],
                     args: argparse.Namespace, scen: compare.Scenario, top: Path) -> None:
    """``strace -c`` of qmgr over a load of args.load messages: calls per message."""
    out = top / "count"
    strace = subprocess.Popen(["strace", "-c", "-o", str(out), "-p", str(pids["qmgr"][0])],
                              stderr=subprocess.DEVNULL)
    try:
        time.sleep(1.0)
        load = argparse.Namespace(**{**vars(args), "messages": args.load})
        compare.load_run(system, compare.RunResult(system.label, 2, args.load), load, scen)
        time.sleep(1.0)
    finally:
        strace.terminate()
        strace.wait(60)
    print(f"{args.system}: qmgr system calls per message over {args.load} messages "
          f"({args.sessions} sessions at once)")
    total = 0
    for line in out.read_text().splitlines():
        fields = line.split()
        if len(fields) >= 5 and fields[3].isdigit() and fields[-1] != "total":
            calls = int(fields[3])
            total += calls
            print(f"    {fields[-1]:<18} {calls / args.load:6.2f}")
    print(f"    {'all':<18} {total / args.load:6.2f}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--system", choices=["pymailsys", "postfix"], default="pymailsys")
    p.add_argument("--messages", type=int, default=10)
    p.add_argument("--size", type=int, default=2048)
    p.add_argument("--show", type=int, default=0, help="print the calls of one message")
    p.add_argument("--keep", action="store_true", help="keep the traces (printed path)")
    p.add_argument("--load", type=int, default=0, help="then count qmgr's calls over N messages")
    p.add_argument("--sessions", type=int, default=2)
    compare.add_fs_argument(p)
    args = compare.with_load_defaults(p.parse_args())
    if os.geteuid() != 0:
        print("qmgr_timeline.py: run as root", file=sys.stderr)
        return 2
    return compare.on_scratch_system("qmgr_timeline.py", args.system, "pymailsys-qtl-", args,
                                     follow)


def follow(system: compare.System, args: argparse.Namespace, scen: compare.Scenario) -> None:
    """Warm up, trace args.messages single messages, print the medians (and, with
    --show, one message's calls; with --load, qmgr's calls per message under load)."""
    top = system.base.parent
    system.reset_mailbox()
    system.start()
    warm = argparse.Namespace(**{**vars(args), "messages": 50})
    compare.load_run(system, compare.RunResult(system.label, 0, 50), warm, scen)
    compare.latency_run(system, compare.RunResult(system.label, 0, 3), 3, args.size, scen)
    pids = system.group.pids()
    cmdlines = {pid: identity(pid) for pid in pids}
    out = top / "trace"
    out.mkdir()
    argv = ["strace", "-f", "-ff", "-ttt", "-T", "-s", "64", "-o", str(out / "t")]
    for pid in pids:
        argv += ["-p", str(pid)]
    strace = subprocess.Popen(argv, stderr=subprocess.DEVNULL)
    try:
        time.sleep(2.0)
        compare.latency_run(system, compare.RunResult(system.label, 1, args.messages),
                            args.messages, args.size, scen)
        time.sleep(0.5)
        for pid in system.group.pids():
            cmdlines.setdefault(pid, identity(pid))
    finally:
        strace.terminate()
        strace.wait(60)
    roles: dict[str, list[Call]] = {}
    for trace in sorted(out.iterdir()):
        pid = int(trace.name.rsplit(".", 1)[1])
        role = role_of(trace, pid, cmdlines)
        if role:
            roles.setdefault(role, []).extend(read_trace(trace))
    for calls in roles.values():
        calls.sort(key=lambda c: c.start)
    rows = timelines(roles)
    print(f"{args.system}: {len(rows)} of {args.messages} messages followed "
          f"(medians, microseconds under strace)")
    for key in rows[0] if rows else ():
        if key.startswith("_"):
            continue
        values = [r[key] for r in rows]
        scale = 1 if key.startswith(("calls", "waits")) else 1e6
        print(f"    {key:<22} {statistics.median(values) * scale:9.0f}   "
              f"(min {min(values) * scale:.0f}, max {max(values) * scale:.0f})")
    if args.show and len(rows) >= args.show:
        row = rows[-args.show]
        merged = sorted(((c, role) for role in ("qmgr", "local", "cleanup")
                         for c in roles.get(role, [])), key=lambda x: x[0].start)
        t0 = float(row["_from"])
        for c, role in merged:
            if t0 - 0.002 <= c.start <= float(row["_to"]):
                text = c.text.replace(str(system.base), "DIR")[:110]
                print(f"  {1e6 * (c.start - t0):8.0f} {role:<7} {c.name} {text}")
    if args.load:
        count_qmgr_calls(system, roles_pids(system), args, scen, top)


if __name__ == "__main__":
    sys.exit(main())
