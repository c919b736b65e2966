"""Reading a file that someone else controls: a regular file, bounded in size and time.

``read_bounded(path, limit, timeout, follow_links)`` is how a process that may run
as root reads a file named by configuration or owned by a user (a .forward file,
an :include: file, a lookup table's source): the open never blocks (O_NONBLOCK:
a FIFO or a device cannot hang it), the file must be a regular file (fstat on
the open descriptor, so no race with a rename), larger than ``limit`` bytes it
is refused before a byte is read (a sparse file of any apparent size costs
nothing), and it is read in chunks with a deadline, never more than ``limit``
bytes in memory. ``follow_links=False`` adds O_NOFOLLOW for callers that refuse
symbolic links; ``keep_atime=True`` opens with ``open_keeping_atime``. Returns the
bytes and the descriptor's stat.

``open_keeping_atime(path, flags)`` opens without updating the file's access time
(O_NOATIME) where the kernel allows it (the file's owner, or root), else as
usual: for a reader of many files, such as a queue listing, that would otherwise
make each inode it reads dirty and give the filesystem's journal one write per
file.

Failures: ``OSError`` from the open (ENOENT, EACCES, ELOOP...) as it is;
``FileRefused`` (not a regular file, too large) is final: the file must be
fixed; ``TimeoutError`` when the deadline passes. Their texts do not repeat
the path: the caller says which file it was.
"""

from __future__ import annotations

import errno
import os
import stat
import time

CHUNK = 65536


class FileRefused(Exception):
    """The file is not one to read: the text says why (not a regular file, too large)."""


def open_keeping_atime(path: str, flags: int) -> int:
    """os.open(path, flags | O_NOATIME); without O_NOATIME when the caller may not use it
    (EPERM: neither the file's owner nor privileged)."""
    try:
        return os.open(path, flags | os.O_NOATIME)
    except PermissionError as e:
        if e.errno != errno.EPERM:
            raise
    return os.open(path, flags)


def read_bounded(path: str, limit: int, timeout: float, follow_links: bool = True,
                 keep_atime: bool = False) -> tuple[bytes, os.stat_result]:
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY
    if not follow_links:
        flags |= os.O_NOFOLLOW
    deadline = time.monotonic() + timeout
    fd = open_keeping_atime(path, flags) if keep_atime else os.open(path, flags)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise FileRefused("not a regular file")
        if st.st_size > limit:
            raise FileRefused(f"larger than {limit} bytes")
        chunks: list[bytes] = []
        total = 0
        while True:
            if time.monotonic() > deadline:
                raise TimeoutError(f"read time limit of {timeout:g}s exceeded")
            chunk = os.read(fd, min(CHUNK, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:  # it grew after the fstat
                raise FileRefused(f"larger than {limit} bytes")
        return b"".join(chunks), st
    finally:
        os.close(fd)
