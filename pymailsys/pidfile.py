"""pidfile: the master's pid file, its format and its lock.

NAME
    pidfile - write, lock and read master.pid

SYNOPSIS
    path = pidfile.master_pid_path(cfg)     # spool.process_id_directory(cfg)/master.pid
    fd = pidfile.lock(path, pid)            # master: create, lock, write; keep fd open
    pid = pidfile.holder(path)              # anyone: pid of the lock holder, or None
    pid = pidfile.master_pid(cfg)           # holder(master_pid_path(cfg))

DESCRIPTION
    The pid file holds the pid right-aligned in 32 columns plus a newline
    (Postfix's format) and stays flock()ed exclusively for as long as the
    process that wrote it runs; the lock, not the file, says that master is
    running (a file left by a killed master is not locked).

    ``lock`` opens (creating it mode 0644) and locks the file without
    waiting, then replaces its contents with ``pid``; the caller keeps the
    returned descriptor open to hold the lock.

    ``holder`` answers "is master running, and which pid": None when the
    file is absent, unreadable or not locked; the pid in it when it is
    locked (-1 when the locked file does not hold a number yet).

SECURITY
    Both open the file without following a symbolic link (O_NOFOLLOW) or
    waiting on a FIFO (O_NONBLOCK), and accept only a regular file: master
    runs as root, and ``postfix status`` or ``stop`` should not hang or
    write through a link should the pid directory ever be writable by
    another account (``postfix check`` warns about its owner and mode).

DIAGNOSTICS
    ``lock`` raises ``PidFileError`` with Postfix's texts: ``open lock file
    PATH: cannot open file: REASON`` or ``open lock file PATH: unable to set
    exclusive lock: REASON`` (another master holds it).

SEE ALSO
    pymailsys.daemons.master (writes it), pymailsys.tools.postfix (reads it).
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat

from pymailsys.config import Config
from pymailsys.queue import spool

WIDTH = 32


class PidFileError(Exception):
    """The pid file could not be opened or locked (text as Postfix words it)."""


def master_pid_path(cfg: Config) -> str:
    """queue_directory/process_id_directory/master.pid."""
    return os.path.join(spool.process_id_directory(cfg), "master.pid")


def master_pid(cfg: Config) -> int | None:
    """The pid of the running master (pid file present and locked), else None."""
    return holder(master_pid_path(cfg))


def _open(path: str, flags: int) -> int:
    """Open a pid file without following a link or waiting on a FIFO; regular files only."""
    fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY, 0o644)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, "not a regular file")
    return fd


def lock(path: str, pid: int) -> int:
    """Create or open ``path``, lock it exclusively (no wait), write ``pid``; the open fd."""
    try:
        fd = _open(path, os.O_RDWR | os.O_CREAT)
    except OSError as e:
        raise PidFileError(f"open lock file {path}: cannot open file: {e.strerror}") from e
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        raise PidFileError(
            f"open lock file {path}: unable to set exclusive lock: {e.strerror}") from e
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{pid:>{WIDTH}}\n".encode(), 0)
    return fd


def holder(path: str) -> int | None:
    """The pid of the process that holds the lock on ``path``, or None when none does."""
    try:
        fd = _open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.read(fd, 64).decode("ascii", "replace").strip()
            return int(text) if text.isdigit() else -1
        except OSError:
            return None
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
