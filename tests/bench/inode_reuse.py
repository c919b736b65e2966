#!/usr/bin/env python3
"""What creating a file costs right after many were deleted, on this machine's filesystem.

Usage (as root for --sync; from the repository):

    python3 tests/bench/inode_reuse.py [--dir /tmp] [--files 5000] [--rounds 3]

In a new directory under --dir it creates --files empty files (open, close)
and measures the system CPU of this process per create; then, --rounds times,
deletes them all and creates as many new ones at once ("after a delete"),
and finally deletes them, ``sync``s, waits RECENTCY_WAIT seconds and creates
them again ("after sync + wait"). It prints microseconds of system time per
create for each step.

Why: ext4 without a journal (this machine's root filesystem: no jbd2 task in
/sys/fs/ext4/DEV/journal_task) checks, for every free inode it could give a
new file, whether that inode was deleted in the last 5 seconds, or in the
last 305 seconds while its inode-table block is still dirty
(``recently_deleted()`` in fs/ext4/ialloc.c, used by ``find_inode_bit()``
only when there is no journal), and skips it. After a mass delete a create
walks past every such inode of its directory's group, one buffer-cache
lookup each. With a journal the check is not made. compare.py's rounds paid
this: each round started by deleting the previous round's Maildir (5,300
files) and ran while its own queue files were being deleted.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RECENTCY_WAIT = 6.0  # ext4's RECENTCY_MIN is 5 s (fs/ext4/ialloc.c)


def system_seconds() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_stime


def create(directory: Path, names: list[str]) -> float:
    """System seconds spent creating the files `names` (empty) in `directory`."""
    t0 = system_seconds()
    for name in names:
        os.close(os.open(directory / name, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    return system_seconds() - t0


def delete(directory: Path, names: list[str]) -> None:
    for name in names:
        os.unlink(directory / name)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dir", default="/tmp", help="where the scratch directory goes (/tmp)")
    p.add_argument("--files", type=int, default=5000)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    if args.files <= 0 or args.rounds <= 0:
        p.error("--files and --rounds must be positive")
    base = Path(tempfile.mkdtemp(prefix="pymailsys-inode-reuse-", dir=args.dir))
    serial = 0

    def fresh_names() -> list[str]:
        nonlocal serial
        serial += 1
        return [f"f{serial}.{i}" for i in range(args.files)]

    def show(what: str, seconds: float) -> None:
        print(f"  {what:<34} {seconds * 1e6 / args.files:8.1f} us system per create", flush=True)

    try:
        print(f"{args.files} creates in {base}:")
        names = fresh_names()
        show("first, in a new directory", create(base, names))
        for _ in range(args.rounds):
            delete(base, names)
            names = fresh_names()
            show("right after deleting as many", create(base, names))
        for _ in range(args.rounds):
            delete(base, names)
            subprocess.run(["sync"], check=False, timeout=300)
            time.sleep(RECENTCY_WAIT)
            names = fresh_names()
            show(f"after delete, sync, {RECENTCY_WAIT:.0f} s", create(base, names))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
