"""Benchmark: cleanup requests per second on one pipelined connection.

Usage: python3 tests/bench/cleanup_rate.py [--messages N] [--window W] [--mode MODE]...
                                             [--context remote|local] [--callgrind]
                                             [--callgrind-out DIR]

Starts the real cleanup daemon standalone (-L) on a temporary spool on the same
file system as the working tree (a real disk, so fsync costs what it costs),
plus a trigger server on public/qmgr, and pushes N smtpd-style requests
(about 1.5 KB each) over one AttrClient connection with at most W requests in
flight (``--context local``: in the local rewriting context, as smtpd gives
clients on loopback, so that cleanup rewrites the address headers). Modes:
``grouped`` (the default daemon), ``ungrouped`` (one fsync at a time on the
event loop), ``trigger-per-batch`` (a new qmgr connection per batch instead of
one kept open). Prints requests/s and cleanup's CPU seconds.
With ``--callgrind`` cleanup runs under valgrind's callgrind and the figure is
its instructions per message (user space only, and nearly free of the shared
machine's noise: tests/bench/smtpd_cpu.py's ``instructions``).
Timing only; nothing here is a pass/fail test.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from callgrind import instructions  # noqa: E402
from proc_cpu import cpu_seconds  # noqa: E402

from pymailsys.ipc.attr import AttrClient, SyncAttrClient  # noqa: E402

TESTS = Path(__file__).resolve().parents[1]
MODES = {
    "grouped": {},
    "ungrouped": {"PYMAILSYS_CLEANUP_UNGROUPED": "1"},
    "trigger-per-batch": {"PYMAILSYS_CLEANUP_TRIGGER_PER_BATCH": "1"},
}
BODY = b"".join(b"line %d of a typical message body, some text to make it look real\n" % i
                for i in range(20))


async def _push(path: str, n: int, window: int, context: str = "remote") -> float:
    client = AttrClient(path)
    sem = asyncio.Semaphore(window)

    async def one(i: int) -> None:
        async with sem:
            reply = await client.request({
                "origin": "smtpd", "sender": "alice@example.org", "rcpt": ["bob@example.com"],
                "content": b"From: alice@example.org\nTo: bob@example.com\nSubject: %d\n"
                           b"Message-ID: <%d@example.org>\n\n" % (i, i) + BODY,
                "client_name": "c.example", "client_addr": "192.0.2.1", "client_port": "1",
                "helo_name": "c.example", "protocol": "ESMTP", "rewrite_context": context})
            assert reply.number("status") == 0, reply

    start = time.perf_counter()
    await asyncio.gather(*[one(i) for i in range(n)])
    elapsed = time.perf_counter() - start
    await client.close()
    return elapsed


def run(mode: str, n: int, window: int, callgrind: bool = False,
        context: str = "remote", callgrind_out: Path | None = None) -> None:
    base = Path(tempfile.mkdtemp(prefix="bench-cleanup-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        spool = base / "spool"
        for d in ("incoming", "hold", "public", "private", "active", "deferred"):
            (spool / d).mkdir(parents=True)
        (base / "etc").mkdir()
        (base / "etc" / "main.cf").write_text(
            f"queue_directory = {spool}\nmyhostname = mx.example.com\n"
            f"maillog_file = {base}/maillog\n")
        qmgr = spool / "public" / "qmgr"
        procs.append(subprocess.Popen([sys.executable, str(TESTS / "pmsfixtures" / "triggerlog.py"),
                                       "-c", str(base / "etc"), "-n", "qmgr", "-L", str(qmgr)]))
        sock = str(spool / "public" / "cleanup")
        argv = [sys.executable, "-m", "pymailsys.daemons.cleanup", "-c", str(base / "etc"),
                "-L", sock]
        if callgrind:
            argv = ["valgrind", "--tool=callgrind", "--quiet",
                    f"--callgrind-out-file={base}/callgrind.%p"] + argv
        cleanup = subprocess.Popen(argv, env={**os.environ, **MODES[mode]})
        procs.append(cleanup)
        for _ in range(6000 if callgrind else 300):
            try:
                SyncAttrClient(sock).close()
                break
            except OSError:
                time.sleep(0.05)
        if callgrind:
            asyncio.run(_push(sock, 20, window, context))  # warm: imports and first-use paths
            subprocess.run(["callgrind_control", "--zero", str(cleanup.pid)], check=True,
                           capture_output=True, timeout=120)
        cpu0 = sum(cpu_seconds(cleanup.pid))
        elapsed = asyncio.run(_push(sock, n, window, context))
        cpu = sum(cpu_seconds(cleanup.pid)) - cpu0
        if callgrind:
            print(f"{mode:18s} n={n} window={window:3d}: "
                  f"{instructions(base, cleanup.pid) / n / 1e6:.3f} M instructions/message "
                  "(callgrind)")
            if callgrind_out:
                callgrind_out.mkdir(parents=True, exist_ok=True)
                for dump in base.glob(f"callgrind.{cleanup.pid}*"):
                    shutil.copy(dump, callgrind_out / f"{dump.name}.{mode}.w{window}")
            return
        time.sleep(0.3)
        triggers = (base / "maillog").read_text().count("trigger 'I'")
        print(f"{mode:18s} n={n} window={window:3d}: {n / elapsed:7.0f} req/s, "
              f"cleanup CPU {cpu / n * 1e3:.3f} ms/msg, qmgr wake-ups {triggers}")
    finally:
        for p in procs:
            p.terminate()
            p.wait()
        shutil.rmtree(base, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--window", type=int, action="append")
    ap.add_argument("--mode", action="append", choices=sorted(MODES))
    ap.add_argument("--context", choices=["remote", "local"], default="remote",
                    help="the requests' rewrite_context (local: address headers rewritten, as "
                         "for smtp-source on loopback in compare.py)")
    ap.add_argument("--callgrind", action="store_true",
                    help="instructions per message under callgrind instead of CPU time")
    ap.add_argument("--callgrind-out", type=Path, metavar="DIR",
                    help="with --callgrind: keep the dumps in DIR (for callgrind_annotate)")
    args = ap.parse_args()
    for window in args.window or [1, 20, 100]:
        for mode in args.mode or ["ungrouped", "grouped", "trigger-per-batch"]:
            run(mode, args.messages, window, args.callgrind, args.context,
                args.callgrind_out)


if __name__ == "__main__":
    main()
