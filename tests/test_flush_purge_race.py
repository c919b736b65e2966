"""The flush daemon removes an empty log under its lock (fast_flush_purge_time), and an
``add`` that was waiting for that lock writes to a new log instead of the removed one
(Postfix's flush, which removes without the lock, can lose that queue ID). In process,
on a real spool, with the add in a thread really blocked on the lock (/proc/locks)."""

from __future__ import annotations

import fcntl
import os
import threading
import time
from pathlib import Path

from harness import wait_until
from pymailsys.daemons.flush import FlushLogs
from qf_helpers import make_spool

from pymailsys.queue import spool as queue

SITE = "remote.example"
QUEUE_ID = "3F1A2B4C5D"


def test_an_add_waiting_for_a_purge_writes_to_a_new_log(tmp_path: Path) -> None:
    _etc, spool_dir = make_spool(tmp_path)
    logs = FlushLogs.__new__(FlushLogs)  # the log part needs only the spool and the times
    logs.spool = queue.Spool(str(spool_dir))
    logs.purge_time = 60
    path = logs.path(SITE)
    Path(path).write_bytes(b"")
    old = time.time() - 3600
    os.utime(path, (old, old))
    inode = os.stat(path).st_ino

    purger = os.open(path, os.O_RDWR)
    fcntl.flock(purger, fcntl.LOCK_EX)  # refresh_one holds the lock while it removes
    adder = threading.Thread(target=logs.add, args=(SITE, QUEUE_ID))
    adder.start()

    def add_is_waiting() -> bool:
        with open("/proc/locks") as f:
            return any("-> FLOCK" in line and f":{inode} " in line for line in f)

    try:
        wait_until(add_is_waiting, 10, what="the add blocked on the log's lock")
        os.unlink(path)
    finally:
        os.close(purger)
        adder.join(10)
    assert not adder.is_alive()
    assert Path(path).read_bytes() == QUEUE_ID.encode() + b"\n"
