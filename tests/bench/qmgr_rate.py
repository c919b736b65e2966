#!/usr/bin/env python3
"""Benchmark: qmgr's CPU per message, with an agent that answers at once.

Usage: python3 tests/bench/qmgr_rate.py [--messages N] [--rate R] [--runs K]

Starts the real qmgr standalone (-L) on a temporary spool (tests/test_qmgr.py's
``Standalone``) and, on private/local, a stand-in agent (another process) that
answers every request "sent" without delivering, so that only qmgr's work is
measured. Then it queues N one-recipient messages of about 2 KB the way cleanup
does, R per second: each file written, made complete and named to qmgr on one
trigger connection that stays open (``<HEX>`` records). It waits until every
file is gone and prints qmgr's CPU ms/message (user + system, from /proc) and
the wall time. With ``--callgrind`` qmgr runs under valgrind's callgrind and the
figure is its instructions per message (user space only, nearly free of the
shared machine's noise). ``--cprofile FILE`` runs qmgr under cProfile and leaves
its statistics in FILE (``python -m pstats FILE``) to see where the time goes. Timing only; nothing here is a pass/fail test.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS))
sys.path.insert(0, str(TESTS / "bench"))

from callgrind import instructions  # noqa: E402
from proc_cpu import cpu_seconds, profiled_command  # noqa: E402
from test_qmgr import Standalone  # noqa: E402

from pymailsys.ipc import trigger  # noqa: E402
from pymailsys.queue.queue_file import QueueFileBuilder  # noqa: E402

AGENT = """
import asyncio, sys
from pymailsys.ipc import attr

async def handle(req):
    n = max(len(req.all("rcpt")), 1)
    return [("status", ["sent"] * n), ("dsn", ["2.0.0"] * n), ("reason", ["delivered"] * n)]

async def serve(reader, writer):
    await attr.serve_pipelined(reader, writer, handle)

async def main():
    server = await asyncio.start_unix_server(serve, sys.argv[1])
    async with server:
        await server.serve_forever()

asyncio.run(main())
"""
BODY = b"".join(b"line %d of a typical message body, some text to make it look real" % i
                for i in range(28))


def queue_file(setup: Standalone, n: int) -> str:
    b = QueueFileBuilder(time.time())
    b.sender("alice@example.org")
    b.recipient("benchuser@test.example", orig="benchuser@test.example")
    for line in (b"From: alice@example.org", b"To: benchuser@test.example",
                 b"Subject: %d" % n, b"") + tuple(BODY.split(b"\n")):
        b.line(line)
    qid, _path, fd = setup.spool.create_queue_file("incoming")
    os.write(fd, b.build())
    os.fchmod(fd, 0o700)
    os.close(fd)
    return qid


def wait_empty(setup: Standalone, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and (os.listdir(setup.queue_dir / "incoming")
                                           or os.listdir(setup.queue_dir / "active")):
        time.sleep(0.02)


def one_run(args: argparse.Namespace) -> tuple[float, float]:
    setup = Standalone(local_destination_recipient_limit="1")
    agent = None
    try:
        sock = setup.queue_dir / "private" / "local"
        agent = subprocess.Popen([sys.executable, "-c", AGENT, str(sock)])
        for _ in range(200):
            if sock.exists():
                break
            time.sleep(0.05)
        qmgr_sock = setup.queue_dir / "public" / "qmgr"
        command = (profiled_command("pymailsys.daemons.qmgr", args.cprofile) if args.cprofile
                   else [sys.executable, "-m", "pymailsys.daemons.qmgr"])
        argv = [*command, "-c", str(setup.etc), "-n", "qmgr", "-L", str(qmgr_sock)]
        if args.callgrind:
            argv = ["valgrind", "--tool=callgrind", "--quiet",
                    f"--callgrind-out-file={setup.base}/callgrind.%p"] + argv
        setup.procs["qmgr"] = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
        pid = setup.procs["qmgr"].pid
        for _ in range(6000):
            if qmgr_sock.exists():
                break
            time.sleep(0.05)
        kick = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        kick.connect(str(qmgr_sock))
        if args.callgrind or args.cprofile:  # warm up (first-use paths), then count from zero
            for n in range(20):
                kick.sendall(trigger.encode_named_ids([queue_file(setup, n)]))
            wait_empty(setup, 600)
            if args.callgrind:
                subprocess.run(["callgrind_control", "--zero", str(pid)], check=True,
                               capture_output=True, timeout=120)
        time.sleep(0.5)
        cpu0, t0 = sum(cpu_seconds(pid)), time.monotonic()
        interval = 1.0 / args.rate
        next_at = t0
        for n in range(args.messages):
            kick.sendall(trigger.encode_named_ids([queue_file(setup, n)]))
            next_at += interval
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        wait_empty(setup, 600 if args.callgrind else 120)
        wall = time.monotonic() - t0
        cpu = sum(cpu_seconds(pid)) - cpu0
        kick.close()
        if args.callgrind:
            count = instructions(setup.base, pid)
            if args.callgrind_out:
                out = Path(args.callgrind_out)
                out.mkdir(parents=True, exist_ok=True)
                for dump in setup.base.glob(f"callgrind.{pid}*"):
                    shutil.copy(dump, out)
            return count / args.messages / 1e6, wall
        return 1000 * cpu / args.messages, wall
    finally:
        setup.stop()
        if agent is not None:
            agent.terminate()
            agent.wait()
        shutil.rmtree(setup.base, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--rate", type=float, default=400.0)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--callgrind", action="store_true",
                    help="instructions per message under callgrind instead of CPU time")
    ap.add_argument("--callgrind-out", metavar="DIR",
                    help="with --callgrind, keep callgrind's dumps in DIR (callgrind_annotate "
                         "on the last one: the measured messages' functions)")
    ap.add_argument("--cprofile", metavar="FILE",
                    help="run qmgr under cProfile, its statistics written to FILE at the end "
                         "(the warm-up messages included)")
    args = ap.parse_args()
    results = []
    for _ in range(args.runs):
        per, wall = one_run(args)
        results.append(per)
        unit = "M instructions/msg (callgrind)" if args.callgrind else "ms CPU/msg"
        print(f"qmgr n={args.messages} rate={args.rate:.0f}/s: {per:.3f} {unit}, "
              f"wall {wall:.1f} s", flush=True)
    print(f"median qmgr {statistics.median(results):.3f} {unit} over {args.runs} runs")


if __name__ == "__main__":
    main()
