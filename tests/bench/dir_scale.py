"""Benchmark: what a queue file costs the kernel as its directory grows (issue #15 item 3).

Usage: python3 tests/bench/dir_scale.py [--sizes 625,6250,62500] [--cycles 20000] [--runs 2]

qmgr's CPU per message in a ``postqueue -f`` of a large deferred queue rose from
0.30 ms at 100 k messages to 0.41 ms at 1 M (tests/bench/queue_scale.py). With
hash_queue_depth 1 a deferred queue of Q messages is 16 directories of Q/16
files each (and as many defer logs), so 10 k, 100 k and 1 M messages are 625,
6,250 and 62,500 files a directory. This repeats, for each size, the file
operations qmgr makes per message of that flush on files of such a directory,
without qmgr: lstat in deferred/, rename to active/, open and read, unlink of
the defer log (qmgr's take), rename back, utime, a new defer log written (the
deferral). It prints user and system CPU microseconds per cycle
(tests/bench/proc_cpu.py) and the wall-clock time per cycle, sizes
alternating, ``--runs`` times: system time that grows with the size is the
directory's cost in the kernel; user time is Python's and should stay flat;
wall time far above the CPU time is time blocked in the kernel (the journal).

Files are written just before (hot in the page and inode caches), as in
queue_scale.py. With ``--cold`` the data pages of every file are dropped from
the page cache before each run (``os.sync`` once, then POSIX_FADV_DONTNEED per
file: only this benchmark's files), so that each read of a queue file and each
append to a defer log goes to the disk, as when a queue outgrows the memory
the page cache can have; keep ``--cycles`` at most the smallest size then, or
later cycles find the files warm again. Disk: about 8 kB (two blocks) per
file, twice the largest size.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from proc_cpu import cpu_seconds  # noqa: E402

CONTENT = b"x" * 1500  # about a small queue file
REASON = b"reason=connect to 127.0.0.1[127.0.0.1]:1: Connection refused\n"


def make_dir(base: Path, size: int) -> tuple[Path, Path, Path]:
    deferred, defer, active = base / "deferred", base / "defer", base / "active"
    for d in (deferred, defer, active):
        d.mkdir()
    for i in range(size):
        name = f"{i:010X}"
        (deferred / name).write_bytes(CONTENT)
        (defer / name).write_bytes(REASON)
    return deferred, defer, active


def evict(*dirs: Path) -> None:
    """Drop the data pages of every file in dirs from the page cache."""
    os.sync()  # dirty pages are not dropped
    for d in dirs:
        with os.scandir(d) as it:
            for entry in it:
                fd = os.open(entry.path, os.O_RDONLY)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                os.close(fd)


def cycles(deferred: Path, defer: Path, active: Path, count: int) -> tuple[float, float, float]:
    """(user, system, wall) microseconds per cycle over ``count`` cycles in scan order."""
    with os.scandir(deferred) as it:
        names = [e.name for e in it]
    me = os.getpid()
    user0, system0 = cpu_seconds(me)
    t0 = time.monotonic()
    done = 0
    while done < count:
        for name in names[:count - done]:
            src, tmp = os.path.join(deferred, name), os.path.join(active, name)
            os.lstat(src)
            os.rename(src, tmp)
            fd = os.open(tmp, os.O_RDONLY)
            os.read(fd, 4096)
            os.close(fd)
            log = os.path.join(defer, name)
            os.unlink(log)
            os.rename(tmp, src)
            now = time.time()
            os.utime(src, (now, now + 3600))
            fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            os.write(fd, REASON)
            os.close(fd)
        done += min(len(names), count - done)
    wall = time.monotonic() - t0
    user1, system1 = cpu_seconds(me)
    return ((user1 - user0) / count * 1e6, (system1 - system0) / count * 1e6,
            wall / count * 1e6)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="625,6250,62500")
    ap.add_argument("--cycles", type=int, default=20_000)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--dir", default="/tmp", help="where the directories go (the spool's disk)")
    ap.add_argument("--cold", action="store_true", help="drop the files' pages before each run")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    base = Path(tempfile.mkdtemp(prefix="dir-scale-", dir=args.dir))
    try:
        dirs = {}
        for size in sizes:
            (base / str(size)).mkdir()
            t0 = time.monotonic()
            dirs[size] = make_dir(base / str(size), size)
            print(f"{size} files a directory: written in {time.monotonic() - t0:.1f} s", flush=True)
        results: dict[int, list[tuple[float, float, float]]] = {size: [] for size in sizes}
        for run in range(args.runs):
            for size in sizes:
                if args.cold:
                    evict(dirs[size][0], dirs[size][1])
                user, system, wall = cycles(*dirs[size], args.cycles)
                results[size].append((user, system, wall))
                print(f"run {run + 1}: {size} files a directory: {user:.1f} us user + "
                      f"{system:.1f} us system per cycle, {wall:.1f} us wall", flush=True)
        for size in sizes:
            user, system, wall = (statistics.median(r[i] for r in results[size]) for i in range(3))
            print(f"median {size}: user {user:.1f} us, system {system:.1f} us, "
                  f"total {user + system:.1f} us CPU, {wall:.1f} us wall per cycle", flush=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
