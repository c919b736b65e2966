"""Benchmark: cleanup's CPU per message in-process, without the socket and the event
loop's I/O, for A/B comparisons of its per-message Python work.

Usage: python3 tests/bench/cleanup_cpu.py [--messages N] [--rounds R] [--profile N]
                                          [--stage handle|assemble]

Builds a ``Cleanup`` service on a temporary spool (under /dev/shm when it exists,
so the fsync costs little and the figure is the Python work) with the
benchmark's settings, and runs N smtpd-style requests for a message like
smtp-source's 2 KB ones (five header lines, equal-length body lines):
``handle`` (the whole path: queue file created, written, fsynced, qmgr kick
queued) or ``assemble`` (the records only, no I/O). Prints the process CPU
time per message of each round and their median; ``--profile N`` prints
cProfile's top N functions by own time for one more round instead.
Timing only; nothing here is a pass/fail test.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from pymailsys.daemons.cleanup import Cleanup

from pymailsys import config as config_mod
from pymailsys import server
from pymailsys.ipc.attr import AttrList
from pymailsys.queue.spool import Spool

SPOOL_DIRS = ("incoming", "hold", "active", "deferred", "public", "private", "bounce")


def _body(size: int) -> bytes:
    line = b"La La La La La La La La La La La La La La La La La La La La La La La La La\n"
    return line * (size // len(line))


def request(i: int, body: bytes) -> AttrList:
    content = (b"From: <sender@example.org>\nTo: <benchuser@localhost>\n"
               b"Date: Sat, 05 Dec 2026 14:00:00 +0000\n"
               b"Message-Id: <%04x.0001.0002@client.example.org>\nSubject: test\n\n" % i) + body
    pairs = [("origin", "smtpd"), ("sender", "sender@example.org"),
             ("rcpt", "benchuser@localhost"), ("orcpt", "benchuser@localhost"),
             ("client_name", "localhost"), ("client_addr", "127.0.0.1"),
             ("client_port", "40000"), ("helo_name", "localhost"),
             ("reverse_client_name", "localhost"), ("protocol", "ESMTP"),
             ("rewrite_context", "local"), ("received_with", "ESMTP"),
             ("received_comment", ""), ("flags", "50"), ("encoding", ""), ("content", content)]
    return AttrList([(n, v if isinstance(v, bytes) else v.encode()) for n, v in pairs])


def build(base: Path) -> Cleanup:
    spool = base / "spool"
    for d in SPOOL_DIRS:
        (spool / d).mkdir(parents=True)
    (base / "etc").mkdir()
    (base / "etc" / "main.cf").write_text(
        f"queue_directory = {spool}\nmyhostname = mx.example.com\nmydomain = example.com\n"
        f"maillog_file = {base}/maillog\n")
    cfg = config_mod.load(str(base / "etc"))
    return Cleanup(server.Context(cfg, Spool.from_config(cfg), "cleanup", "cleanup", "unix", []))


def one_round(service: Cleanup, n: int, stage: str, body: bytes) -> float:
    reqs = [request(i, body) for i in range(n)]
    incoming = service.ctx.spool.dir("incoming")

    async def handle_all() -> None:
        for req in reqs:
            reply = await service.handle(req, None)
            assert reply["status"] == 0, reply

    start = time.process_time()
    if stage == "handle":
        asyncio.run(handle_all())
    else:
        for i, req in enumerate(reqs):
            service.assemble(req, f"4A1B2C3D{i % 1000:03d}", 1787380113.25)
    cpu = time.process_time() - start
    for name in os.listdir(incoming):
        path = os.path.join(incoming, name)
        if os.path.isdir(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)
    return cpu / n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--stage", choices=["handle", "assemble"], default="handle")
    ap.add_argument("--profile", type=int, default=0, metavar="TOP")
    args = ap.parse_args()
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
    base = Path(tempfile.mkdtemp(prefix="bench-cleanup-cpu-", dir=shm))
    body = _body(args.size)
    try:
        service = build(base)
        service.qmgr.persistent = False  # no qmgr: the kick's connection attempt fails fast
        one_round(service, 50, args.stage, body)  # warm: first-use paths
        if args.profile:
            prof = cProfile.Profile()
            prof.enable()
            one_round(service, args.messages, args.stage, body)
            prof.disable()
            pstats.Stats(prof).sort_stats("tottime").print_stats(args.profile)
            return
        figures = [one_round(service, args.messages, args.stage, body) * 1e6
                   for _ in range(args.rounds)]
        print(f"{args.stage}: " + " ".join(f"{f:.1f}" for f in figures)
              + f" us/message; median {statistics.median(figures):.1f}")
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
