"""qmgr's queue scans: one pass over incoming/ or deferred/, a file at a time.

As Postfix's qmgr_scan: a ``QueueScan`` reads its queue directory (hashed
subdirectories included) as it goes, with ``spool.walk_files``, so that a
scan of a million-message queue holds no list of it, and ``next`` hands out
the next file that may enter the active queue: a complete regular file whose
name is a queue ID not already active (the caller's ``skip``); from deferred/
only once its next try (the mtime) has come, unless the scan ignores time
stamps (``postqueue -f``, qmgr's trigger ``A``): then every file that was
there when the scan began, and none that came back after it began (a newer
ctime: a message the flush already tried); from incoming/ any file whose mtime
is at most a second ahead (qmgr puts a file it found locked back with an mtime
a minute ahead). Files come in directory order, as in Postfix, not by age.
``flush`` is the caller's mark that a flush asked for the scan (qmgr then
lifts defer_transports for the files it takes).
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Container

from pymailsys.queue import spool as q

LOOK_AT = 256  # directory entries one call of QueueScan.next looks at, at most


class QueueScan:
    def __init__(self, spool: q.Spool, queue: str, ignore_time: bool = False) -> None:
        self.queue = queue
        self.ignore_time = ignore_time
        self.flush = False  # the caller's mark: a flush asked for this scan (trigger F)
        self.started = time.time()
        self._entries = q.walk_files(spool.dir(queue),
                                     descend=queue in spool.hashed and spool.depth > 0)

    def next(self, skip: Container[str], budget: int = LOOK_AT) -> str | None:
        """The queue ID of the next file to take; "" when ``budget`` entries were looked
        at without one (the caller lets other work run before it asks again: a pass
        over a million files that are not due does not hold up qmgr); None when the
        pass is over."""
        for entry in self._entries:
            if self._may_take(entry, skip):
                return entry.name
            budget -= 1
            if budget <= 0:  # only after looking at the entry: none is passed over unseen
                return ""
        return None

    def _may_take(self, entry: os.DirEntry[str], skip: Container[str]) -> bool:
        name = entry.name
        if name in skip or not q.valid_queue_id(name):
            return False
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            return False
        if not stat.S_ISREG(st.st_mode) or not q.is_complete(st.st_mode):
            return False
        if self.queue == q.DEFERRED:
            if self.ignore_time:
                return st.st_ctime < self.started
            return st.st_mtime <= time.time()
        return st.st_mtime <= time.time() + 1
