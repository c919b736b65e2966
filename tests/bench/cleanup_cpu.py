"""Benchmark: cleanup's CPU per message in-process, without the socket and the event
loop's I/O, for A/B comparisons of its per-message Python work.

Usage: python3 tests/bench/cleanup_cpu.py [--messages N] [--rounds R] [--profile N]
                                          [--stage handle|assemble]
                                          [--cold | --idle SECONDS]

Builds a ``Cleanup`` service on a temporary spool (under /dev/shm when it exists,
so the fsync costs little and the figure is the Python work) with the
benchmark's settings, on the daemons' event loop (``server._use_fast_loop``), and runs N smtpd-style requests for a message like
smtp-source's 2 KB ones (five header lines, equal-length body lines):
``handle`` (the whole path: queue file created, written, fsynced, qmgr kick
queued) or ``assemble`` (the records only, no I/O). Prints the process CPU
time per message of each round and their median; ``--profile N`` prints
cProfile's top N functions by own time for one more round instead.

``--cold`` times each request from cold caches instead: before each one the
process writes to every cache line of a buffer larger than this machine's
last-level cache (``COLD_BUFFER``) and maps and unmaps a fresh one, which
evicts the code, data and address translations the request needs, as the
pause between two messages at an idle site does (the
``latency`` figure of compare.py and ab_latency.py). It prints the median wall
time of one request (the eviction left out). On the reference machine a
request took about 105 us warm and 470-500 us cold (2026-12-06): in a
message's latency Python's cost is what it touches, not only what it runs,
and this figure follows that cost without the noise of an end-to-end run.
``--idle SECONDS`` sleeps that long before each request instead of evicting:
what merely being idle costs on the machine at hand. On the reference machine
(a 2-vCPU virtual machine, 2026-12-06) a request took 139 us back to back, 183
after 1 ms asleep, 495 after 5 ms, 615 after 20 ms and 650 after 100 ms; with
the CPUs held out of their halt state (/dev/cpu_dma_latency at 0) 127, 301
after 5 ms and 514 after 20 ms: while a process sleeps, something outside the
virtual machine costs it its caches (or its clock speed).
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
from collections.abc import Callable
from pathlib import Path

from pymailsys.daemons.cleanup import Cleanup

from pymailsys import config as config_mod
from pymailsys import server
from pymailsys.ipc.attr import AttrList
from pymailsys.queue.spool import Spool

COLD_BUFFER = 96 << 20  # larger than the last-level cache of any machine we run on
SPOOL_DIRS = ("incoming", "hold", "active", "deferred", "public", "private", "bounce")


def _body(size: int) -> bytes:
    line = b"La La La La La La La La La La La La La La La La La La La La La La La La La\n"
    return line * (size // len(line))


def request(i: int, body: bytes) -> AttrList:
    content = (b"From: <sender@example.org>\nTo: <benchuser@localhost>\n"
               b"Date: Sat, 05 Dec 2026 14:00:00 +0000\n"
               b"Message-Id: <%04x.0001.0002@client.example.org>\nSubject: test\n\n" % i) + body
    pairs: list[tuple[str, str | bytes]] = [
        ("origin", "smtpd"), ("sender", "sender@example.org"),
        ("rcpt", "benchuser@localhost"), ("orcpt", "benchuser@localhost"),
        ("client_name", "localhost"), ("client_addr", "127.0.0.1"),
        ("client_port", "40000"), ("helo_name", "localhost"),
        ("reverse_client_name", "localhost"), ("protocol", "ESMTP"),
        ("rewrite_context", "local"), ("received_with", "ESMTP"),
        ("received_comment", ""), ("flags", "50"), ("encoding", ""), ("content", content),
    ]
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
    """CPU seconds per message, all requests back to back."""
    reqs = [request(i, body) for i in range(n)]

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
    _empty_incoming(service)
    return cpu / n


def cold_round(service: Cleanup, n: int, stage: str, body: bytes,
               pause: Callable[[], None]) -> float:
    """The median wall seconds of one request, each after ``pause()``."""
    reqs = [request(i, body) for i in range(n)]
    times: list[float] = []

    async def handle_all() -> None:
        for req in reqs:
            pause()
            start = time.perf_counter()
            reply = await service.handle(req, None)
            times.append(time.perf_counter() - start)
            assert reply["status"] == 0, reply

    if stage == "handle":
        asyncio.run(handle_all())
    else:
        for i, req in enumerate(reqs):
            pause()
            start = time.perf_counter()
            service.assemble(req, f"4A1B2C3D{i % 1000:03d}", 1787380113.25)
            times.append(time.perf_counter() - start)
    _empty_incoming(service)
    return statistics.median(times)


def evict_caches(buffer: bytearray) -> None:
    """Write every cache line of ``buffer``, from a new 1/64-size buffer: allocating and
    freeing that also costs the process its TLB entries, as a switch to another
    process can."""
    buffer[::64] = bytes(len(buffer) // 64)


def _empty_incoming(service: Cleanup) -> None:
    incoming = service.ctx.spool.dir("incoming")
    for name in os.listdir(incoming):
        path = os.path.join(incoming, name)
        if os.path.isdir(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--stage", choices=["handle", "assemble"], default="handle")
    ap.add_argument("--profile", type=int, default=0, metavar="TOP")
    before = ap.add_mutually_exclusive_group()
    before.add_argument("--cold", action="store_true",
                        help="each request from evicted caches; the median wall time of one")
    before.add_argument("--idle", type=float, metavar="SECONDS",
                        help="each request after sleeping SECONDS; the median wall time of one")
    args = ap.parse_args()
    if args.idle is not None and args.idle < 0:
        ap.error("--idle: a pause cannot be negative")
    server._use_fast_loop()  # the daemons' event loop (uvloop when installed), warm or cold
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
        pause: Callable[[], None] | None = None
        unit = "us/message"
        if args.cold:
            evict = bytearray(COLD_BUFFER)
            pause, unit = (lambda: evict_caches(evict)), "us/request, cold caches (median)"
        elif args.idle is not None:
            idle = args.idle
            pause, unit = (lambda: time.sleep(idle)), f"us/request, {idle:g} s idle before each (median)"
        figures = [(cold_round(service, args.messages, args.stage, body, pause)
                    if pause is not None else one_round(service, args.messages, args.stage, body))
                   * 1e6 for _ in range(args.rounds)]
        print(f"{args.stage}: " + " ".join(f"{f:.1f}" for f in figures)
              + f" {unit}; median {statistics.median(figures):.1f}")
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
