#!/usr/bin/env python3
"""local's CPU per delivery, alone: one real local daemon, requests sent one at a time.

Usage (as root, from the repository, with the venv's python):

    python tests/bench/local_cpu.py [--messages 2000] [--size 2048] [--rounds 3] [--strace]

It creates a throw-away account and a standalone spool (tests/test_qmgr.py's
``Standalone``: no master, no smtpd, cleanup or qmgr), queues --messages
messages of about --size bytes to the account and moves them to active/, starts
local, then sends it one delivery request per message (what qmgr sends) on one
connection, waiting for each reply. Delivery is to the account's Maildir under
mail_spool_directory, so each delivery switches to the account, as in the
compare.py scenario. It prints local's CPU from /proc (user and system
ms/delivery) and the median wall time of one request; with --strace, the
system calls per delivery (``strace -c`` attached for the last round); with
--tmpfs, spool and Maildir live in /dev/shm, so that disk and journal waits
(fsync, file creation under other processes' load) leave the figures. Only
local runs, so other load on the machine moves these figures far less than an
end-to-end run's; still compare A and B alternately. With --callgrind, local
runs under valgrind's callgrind and the figure is instructions per delivery
(user space only; independent of the machine's other load): use fewer
--messages (200), it runs about fifty times slower. With --cold, the client
and local share one CPU and, before each request, the client evicts that
CPU's caches as cleanup_cpu.py --cold does: the median request is then a
delivery from cold caches, as at an idle site. With --cprofile FILE, local runs
under cProfile (CPU time) and leaves its statistics in FILE (``python -m pstats
FILE``); its CPU figures then include the profiler's. After each delivery
its queue file and delivery marker are removed (what qmgr and local's sweep would
do): local's sweep every 10 s, which searches the queues for every marker it finds,
then has next to nothing to search (a sweep of hundreds of markers that landed in a
round added up to 15% to it). --callgrind-out DIR keeps callgrind's dumps
(callgrind_annotate).
"""

from __future__ import annotations

import argparse
import os
import pwd
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from callgrind import instructions  # noqa: E402
from cleanup_cpu import COLD_BUFFER, evict_caches  # noqa: E402
from proc_cpu import cpu_seconds, profiled_command  # noqa: E402
from test_qmgr import SOCKETS, Standalone  # noqa: E402  (the tests' standalone spool)

from pymailsys.ipc.attr import SyncAttrClient  # noqa: E402


def body(size: int) -> bytes:
    head = b"Subject: local_cpu\nFrom: a@example.org\nTo: b@example.org\n\n"
    line = b"x" * 71 + b"\n"
    return head + line * max((size - len(head)) // len(line), 1)


def one_round(s: Standalone, user: str, args: argparse.Namespace, trace: bool) -> dict[str, float]:
    queued = [s.active_request("alice@example.org", f"{user}@localhost", body(args.size))
              for _ in range(args.messages)]
    markers = s.queue_dir / "pid" / "local-markers"
    pid = s.procs["local"].pid
    strace = None
    if trace:
        out = s.base / "strace.txt"
        strace = subprocess.Popen(["strace", "-c", "-f", "-p", str(pid), "-o", str(out)],
                                  stderr=subprocess.DEVNULL)
        time.sleep(1.0)
    walls = []
    evict = bytearray(COLD_BUFFER) if args.cold else None
    if evict is not None:  # local's caches are the ones the client evicts
        cpu = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpu})
        os.sched_setaffinity(pid, {cpu})
    with SyncAttrClient(str(s.queue_dir / "private" / "local")) as client:
        if args.callgrind:
            subprocess.run(["callgrind_control", "--zero", str(pid)], check=True,
                           capture_output=True, timeout=120)
        user0, sys0 = cpu_seconds(pid)
        for queue_id, attrs in queued:
            if evict is not None:
                evict_caches(evict)
            t = time.perf_counter()
            reply = client.request(attrs)
            walls.append(time.perf_counter() - t)
            if reply.text("status") != "sent":
                raise SystemExit(f"local_cpu.py: delivery failed: {reply.text('reason')}")
            # what qmgr and local's sweep remove: the queue file and its delivery
            # marker, so that the sweep every 10 s finds next to nothing to search
            os.unlink(s.spool.path("active", queue_id))
            for marker in markers.glob(f"{queue_id}.*"):
                marker.unlink()
        user1, sys1 = cpu_seconds(pid)
    n = args.messages
    result = {"user_ms": (user1 - user0) * 1000 / n, "system_ms": (sys1 - sys0) * 1000 / n,
              "wall_ms": statistics.median(walls) * 1000}
    if args.callgrind:
        result["instructions"] = instructions(s.base, pid) / n
    if strace is not None:
        strace.terminate()
        strace.wait(30)
        calls = 0
        for line in (s.base / "strace.txt").read_text().splitlines():
            parts = line.split()
            if len(parts) >= 5 and parts[3].isdigit() and parts[-1] != "total":
                calls += int(parts[3])
                print(f"    {parts[-1]:<16} {int(parts[3]) / n:6.2f}/delivery")
        result["syscalls"] = calls / n
    return result


def start_wrapped(s: Standalone, command: list[str], what: str) -> None:
    """Standalone.start("local") with local's command line given (under callgrind, under
    cProfile); waits, bounded, until it listens."""
    sock = s.queue_dir / SOCKETS["local"]
    sock.unlink(missing_ok=True)
    s.procs["local"] = subprocess.Popen(
        [*command, "-c", str(s.etc), "-n", "local", "-L", str(sock)],
        stdout=subprocess.DEVNULL, stderr=open(s.base / "log" / "local.err", "ab"))
    for _ in range(1200):  # bounded: valgrind starts Python slowly
        if sock.exists():
            return
        time.sleep(0.1)
    raise SystemExit(f"local_cpu.py: local did not start {what}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--messages", type=int, default=2000)
    p.add_argument("--size", type=int, default=2048)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--strace", action="store_true", help="count system calls in the last round")
    p.add_argument("--callgrind", action="store_true",
                   help="instructions per delivery under callgrind (valgrind) instead of CPU time")
    p.add_argument("--callgrind-out", type=Path, metavar="DIR",
                   help="keep callgrind's dumps there (for callgrind_annotate)")
    p.add_argument("--cold", action="store_true",
                   help="each request from evicted caches (client and local on one CPU)")
    p.add_argument("--cprofile", metavar="FILE",
                   help="run local under cProfile and leave its statistics in FILE "
                        "(python -m pstats FILE); the CPU figures then include the profiler")
    p.add_argument("--tmpfs", action="store_true",
                   help="spool and Maildir in /dev/shm: no disk, no journal, fsync free; "
                        "leaves local's own work (Python and system calls)")
    args = p.parse_args()
    if args.cprofile:
        args.cprofile = os.path.abspath(args.cprofile)
    if args.callgrind_out:
        args.callgrind_out = args.callgrind_out.resolve()
    # local runs with "python -m", which puts the current directory first on its path:
    # from a checkout it would import that checkout's library whatever the venv
    os.chdir("/")
    if os.geteuid() != 0:
        print("local_cpu.py: run as root (local switches to the recipient)", file=sys.stderr)
        return 2
    user = "lcpu" + uuid.uuid4().hex[:8]
    subprocess.run(["useradd", "--no-create-home", "--home-dir", f"/nonexistent/{user}",
                    "--shell", "/usr/sbin/nologin", user], check=True)
    s = Standalone(Path(tempfile.mkdtemp(prefix="pymailsys-local-cpu-", dir="/dev/shm"))
                   if args.tmpfs else None)
    try:
        pwd.getpwnam(user)
        if args.callgrind:
            start_wrapped(s, ["valgrind", "--tool=callgrind", "--quiet",
                              f"--callgrind-out-file={s.base}/callgrind.%p",
                              sys.executable, "-m", "pymailsys.daemons.local"], "under callgrind")
            one_round(s, user, argparse.Namespace(**{**vars(args), "messages": 20,
                                                     "callgrind": False}), False)  # warm
        elif args.cprofile:
            start_wrapped(s, profiled_command("pymailsys.daemons.local", args.cprofile), "under cProfile")
        else:
            s.start("local")
        rounds = []
        for i in range(args.rounds):
            r = one_round(s, user, args, args.strace and i == args.rounds - 1)
            rounds.append(r)
            print(f"round {i + 1}: local user {r['user_ms']:.3f} + system {r['system_ms']:.3f} "
                  f"= {r['user_ms'] + r['system_ms']:.3f} ms/delivery, median request "
                  f"{r['wall_ms']:.2f} ms" + (f", {r['syscalls']:.1f} system calls/delivery"
                                              if "syscalls" in r else "")
                  + (f", {r['instructions'] / 1e6:.3f} M instructions/delivery (callgrind)"
                     if "instructions" in r else ""))
        cpu = [r["user_ms"] + r["system_ms"] for r in rounds]
        if args.callgrind:
            print(f"median of {len(rounds)} rounds: "
                  f"{statistics.median(r['instructions'] for r in rounds) / 1e6:.3f} M "
                  "instructions/delivery (callgrind)")
        print(f"median of {len(rounds)} rounds: local {statistics.median(cpu):.3f} ms/delivery "
              f"(user {statistics.median(r['user_ms'] for r in rounds):.3f}, system "
              f"{statistics.median(r['system_ms'] for r in rounds):.3f}), median request "
              f"{statistics.median(r['wall_ms'] for r in rounds):.2f} ms")
    finally:
        if args.callgrind_out:
            args.callgrind_out.mkdir(parents=True, exist_ok=True)
            for dump in s.base.glob("callgrind.*"):
                shutil.copy(dump, args.callgrind_out)
        if args.cprofile:
            s.stop()  # SIGTERM: the profiler writes its statistics on the way out
        s.cleanup()
        subprocess.run(["userdel", user], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
