"""The spool: queue names, directory layout, queue IDs and queue-file paths.

Takes a queue_directory and the hashing parameters; promises Postfix's layout:
the queue subdirectories with Postfix's owners and modes (``SPOOL_DIRS``), queue
IDs in Postfix's short or long format, and the path of a queue file in a
(possibly hashed) queue. ``valid_queue_name`` and ``valid_queue_id`` accept
only Postfix's queue names and the two queue-ID formats; ``open_queue_file``
is how a process that trusts neither its request nor the queue directories
(a root delivery agent) opens a queue file. ``create_queue_file`` makes a new file the way
Postfix's mail_queue_enter does: O_EXCL under a temporary name, fstat for the
inode, rename to the queue ID (retrying on collision: ``rename_noreplace``, one
renameat2 call that never replaces a file), so the name is unique while the
file exists; when that fails (a hashed subdirectory that cannot be made) the
temporary file is removed and its descriptor closed before the error goes on.

Completeness: a queue file is complete when its mode has the owner execute bit
(``MODE_COMPLETE``, 0700); cleanup creates files 0600 and fchmods them to 0700
after the final record and before the fsync. Readers skip incomplete files.
``postsuper -e`` adds the group execute bit (``MODE_EXPIRE``, 0010): qmgr
returns such a message to its sender at its next attempt (force-expired).
``postqueue -i`` adds the group read bit (``MODE_UNTHROTTLE``, 0040): qmgr
tries such a message's destinations even when they are dead and ignores
defer_transports for it, then clears the bit.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
import stat
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pymailsys.config import Config

INCOMING = "incoming"
ACTIVE = "active"
DEFERRED = "deferred"
HOLD = "hold"
CORRUPT = "corrupt"
MAILDROP = "maildrop"
BOUNCE = "bounce"
DEFER = "defer"
TRACE = "trace"
SAVED = "saved"
FLUSH = "flush"
PUBLIC = "public"
PRIVATE = "private"
PID = "pid"

MESSAGE_QUEUES = (INCOMING, ACTIVE, DEFERRED, HOLD, CORRUPT, MAILDROP, SAVED)
LOG_QUEUES = (BOUNCE, DEFER, TRACE)

MODE_WRITING = 0o600
MODE_COMPLETE = 0o700
MODE_EXPIRE = 0o010  # g+x: forced expiry (Postfix's MAIL_QUEUE_STAT_EXPIRE)
MODE_UNTHROTTLE = 0o040  # g+r: flushed by ID (Postfix's MAIL_QUEUE_STAT_UNTHROTTLE)
MAILDROP_WRITING = 0o644
MAILDROP_COMPLETE = 0o744


@dataclass(frozen=True)
class SpoolDir:
    name: str
    owner: str  # "root" or "mail_owner"
    group: str  # "root", "mail_owner" or "setgid_group"
    mode: int


# Postfix's postfix-files, for the queue directory.
SPOOL_DIRS: tuple[SpoolDir, ...] = (
    SpoolDir(PID, "root", "root", 0o755),
    SpoolDir(MAILDROP, "mail_owner", "setgid_group", 0o1733),
    SpoolDir(INCOMING, "mail_owner", "mail_owner", 0o700),
    SpoolDir(ACTIVE, "mail_owner", "mail_owner", 0o700),
    SpoolDir(DEFERRED, "mail_owner", "mail_owner", 0o700),
    SpoolDir(HOLD, "mail_owner", "mail_owner", 0o700),
    SpoolDir(CORRUPT, "mail_owner", "mail_owner", 0o700),
    SpoolDir(BOUNCE, "mail_owner", "mail_owner", 0o700),
    SpoolDir(DEFER, "mail_owner", "mail_owner", 0o700),
    SpoolDir(TRACE, "mail_owner", "mail_owner", 0o700),
    SpoolDir(FLUSH, "mail_owner", "mail_owner", 0o700),
    SpoolDir(SAVED, "mail_owner", "mail_owner", 0o700),
    SpoolDir(PRIVATE, "mail_owner", "mail_owner", 0o700),
    # Postfix: 0710 with setgid postdrop/postqueue. pymailsys has no setgid programs:
    # public/ is searchable by everyone and each public service checks SO_PEERCRED.
    SpoolDir(PUBLIC, "mail_owner", "setgid_group", 0o711),
)

BASE52 = "0123456789BCDFGHJKLMNPQRSTVWXYZbcdfghjklmnpqrstvwxyz"
BASE51 = BASE52[:51]

# Postfix's two formats: short = 5 hex digits of microseconds + the inode in hex
# (64 bits: at most 16 digits); long = 6 base-52 digits of seconds, 4 of
# microseconds, "z", the inode in base 51 (64 bits: at most 12 digits).
_SHORT_ID_RE = re.compile(r"[0-9A-F]{6,21}")
_LONG_ID_RE = re.compile(f"[{BASE52}]{{10}}z[{BASE51}]{{1,12}}")

# Postfix's queue names (mail_queue.h); pid/, public/ and private/ hold no queue files.
QUEUE_NAMES = frozenset((INCOMING, ACTIVE, DEFERRED, HOLD, CORRUPT, MAILDROP, BOUNCE, DEFER,
                         TRACE, SAVED, FLUSH))


class QueueAccessError(Exception):
    """A queue file may not be opened: a malformed queue name or ID, an unsafe file, or
    an error from the file system (the text says which)."""


class QueueFileMissing(QueueAccessError):
    """The queue file (or a directory on its way) does not exist."""


def process_id_directory(config: Config) -> str:
    """queue_directory/process_id_directory: root's directory for the running system's
    files (master.pid, running.main.cf, the delivery agents' markers)."""
    return os.path.join(config.get("queue_directory"), config.get("process_id_directory"))


def valid_queue_name(name: str) -> bool:
    """True for the fixed set of Postfix queue names."""
    return name in QUEUE_NAMES


def valid_queue_id(name: str) -> bool:
    """True for a queue ID in Postfix's short or long format (alphabet and length)."""
    return bool(_SHORT_ID_RE.fullmatch(name) or _LONG_ID_RE.fullmatch(name))


def _encode(n: int, digits: str, width: int) -> str:
    base = len(digits)
    out = []
    while n:
        n, r = divmod(n, base)
        out.append(digits[r])
    s = "".join(reversed(out)) or "0"
    return s.rjust(width, "0")


def short_queue_id(usec: int, inode: int) -> str:
    return f"{usec:05X}{inode:X}"


def long_queue_id(sec: int, usec: int, inode: int) -> str:
    return _encode(sec, BASE52, 6) + _encode(usec, BASE52, 4) + "z" + _encode(inode, BASE51, 1)


def hash_prefix(queue_id: str, depth: int) -> list[str]:
    """The hashed subdirectory names for a queue ID (Postfix's mail_queue_dir)."""
    if depth <= 0:
        return []
    if _LONG_ID_RE.fullmatch(queue_id):
        usec_part = queue_id[6:10]
        usec = 0
        for ch in usec_part:
            usec = usec * 52 + BASE52.index(ch)
        key = f"{usec:05X}"
    else:
        key = queue_id
    return [key[i] if i < len(key) else "_" for i in range(depth)]


# this process's ID for temporary file names, asked once (and again in a forked child),
# not with a system call per queue file
_pid = [os.getpid()]
os.register_at_fork(after_in_child=lambda: _pid.__setitem__(0, os.getpid()))


class Spool:
    """Paths in one queue_directory, with the hashing settings applied."""

    def __init__(self, queue_directory: str, hash_queue_names: list[str] | None = None,
                 hash_queue_depth: int = 1, long_ids: bool = False) -> None:
        self.root = queue_directory
        self._prefix = os.path.join(queue_directory, "")
        self.hashed = set(hash_queue_names if hash_queue_names is not None else (DEFERRED, DEFER))
        self.depth = hash_queue_depth
        self.long_ids = long_ids
        self._kept: dict[str, int] | None = None  # keep_queue_dirs: queue -> descriptor

    @classmethod
    def from_config(cls, config, root: str | None = None) -> Spool:  # type: ignore[no-untyped-def]
        """The spool of config's queue_directory; ``root`` names it otherwise (``"."``
        for a process that chdir'ed there and then gave up the rights to its parents)."""
        return cls(root if root is not None else config.get("queue_directory"),
                   config.get_list("hash_queue_names"),
                   config.get_int("hash_queue_depth"), config.get_bool("enable_long_queue_ids"))

    def dir(self, queue: str) -> str:
        return f"{self._prefix}{queue}"  # os.path.join's result, for a queue's name

    def path(self, queue: str, queue_id: str) -> str:
        if queue in self.hashed and self.depth > 0:
            return os.path.join(self.root, queue, *hash_prefix(queue_id, self.depth), queue_id)
        return f"{self._prefix}{queue}/{queue_id}"  # once or more per message: no join

    def keep_queue_dirs(self) -> None:
        """From now on keep each queue directory open once ``open_queue_file`` has opened
        it (a long-lived agent: one openat per queue file instead of five calls). The
        directory is opened exactly as each time before; one that is gone or replaced
        since (a queue file not found in it) is opened afresh once."""
        if self._kept is None:
            self._kept = {}

    def open_queue_file(self, queue: str, queue_id: str, complete: bool = True,
                        writable: bool = False) -> int:
        """Open a complete queue file read-only (``writable``: read-write, for a delivery
        agent that marks the recipients it delivered done, as Postfix's deliver_request
        opens it), as Postfix's mail_open_ok allows it.

        For a process that trusts neither the request naming the file nor the
        directories below queue_directory (a root agent: mail_owner owns them):
        the name must be a queue name and the ID a queue ID; every directory below
        queue_directory and the file are opened relative to the one above with
        O_NOFOLLOW (a symbolic link anywhere is refused), the file with
        O_NONBLOCK (a FIFO cannot hang the caller); it must be a regular file
        with one link and (unless ``complete`` is false: postcat shows files being
        written) the complete mode. Returns the descriptor; raises QueueFileMissing
        when it is not there, QueueAccessError otherwise.
        """
        if not valid_queue_name(queue):
            raise QueueAccessError(f"malformed queue name: {queue!r}")
        if not valid_queue_id(queue_id):
            raise QueueAccessError(f"malformed queue id: {queue_id!r}")
        kept = self._kept
        if kept is None:
            queue_fd = self._open_queue_dir(queue, queue_id)
            try:
                fd = self._open_below(queue_fd, queue, queue_id, writable)
            finally:
                os.close(queue_fd)
        else:
            try:
                fd = self._open_below(kept[queue], queue, queue_id, writable)
            except (KeyError, QueueFileMissing):
                if queue in kept:
                    os.close(kept.pop(queue))
                kept[queue] = self._open_queue_dir(queue, queue_id)
                fd = self._open_below(kept[queue], queue, queue_id, writable)
        st = os.fstat(fd)
        problem = ("not a regular file" if not stat.S_ISREG(st.st_mode)
                   else f"file has {st.st_nlink} links" if st.st_nlink != 1
                   else "file is not complete" if complete and not is_complete(st.st_mode)
                   else "")
        if problem:
            os.close(fd)
            raise QueueAccessError(f"{queue}/{queue_id}: uid {st.st_uid}: {problem}")
        return fd

    def _open_queue_dir(self, queue: str, queue_id: str) -> int:
        """A new descriptor of queue_directory/queue, the queue opened with O_NOFOLLOW."""
        try:
            root_fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as e:
            raise QueueAccessError(f"open {self.root}: {e.strerror}") from None
        try:
            return os.open(queue, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=root_fd)
        except OSError as e:
            error = QueueFileMissing if e.errno == errno.ENOENT else QueueAccessError
            raise error(f"open {queue}/{queue_id}: {e.strerror}") from None
        finally:
            os.close(root_fd)

    def _open_below(self, queue_fd: int, queue: str, queue_id: str,
                    writable: bool = False) -> int:
        """The queue file, its hash directories and itself opened relative to the queue's
        descriptor with O_NOFOLLOW (queue_fd stays open); read-write when ``writable``."""
        dir_fd = queue_fd
        try:
            if queue in self.hashed:
                for part in hash_prefix(queue_id, self.depth):
                    fd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW,
                                 dir_fd=dir_fd)
                    if dir_fd != queue_fd:
                        os.close(dir_fd)
                    dir_fd = fd
            return os.open(queue_id, (os.O_RDWR if writable else os.O_RDONLY) | os.O_NOFOLLOW
                           | os.O_NONBLOCK | os.O_NOCTTY, dir_fd=dir_fd)
        except OSError as e:
            error = QueueFileMissing if e.errno == errno.ENOENT else QueueAccessError
            raise error(f"open {queue}/{queue_id}: {e.strerror}") from None
        finally:
            if dir_fd != queue_fd:
                os.close(dir_fd)

    def socket_path(self, private: bool, service: str) -> str:
        return os.path.join(self.root, PRIVATE if private else PUBLIC, service)

    def public(self, service: str) -> str:
        return os.path.join(self.root, PUBLIC, service)

    def private(self, service: str) -> str:
        return os.path.join(self.root, PRIVATE, service)

    def ensure_hash_dirs(self, queue: str, queue_id: str) -> None:
        if queue in self.hashed and self.depth > 0:
            os.makedirs(os.path.dirname(self.path(queue, queue_id)), mode=0o700, exist_ok=True)

    def move(self, queue_id: str, src: str, dst: str) -> str:
        """Rename a queue file (or status log) between queues; returns the new path."""
        new = self.path(dst, queue_id)
        try:
            os.rename(self.path(src, queue_id), new)
        except FileNotFoundError:
            if dst in self.hashed:
                self.ensure_hash_dirs(dst, queue_id)
                os.rename(self.path(src, queue_id), new)
            else:
                raise
        return new

    def scan(self, queue: str) -> Iterator[str]:
        """Queue IDs present in a queue (hashed subdirectories included), as the
        directories are read: a scan holds no list of the queue."""
        hashed = queue in self.hashed and self.depth > 0
        for entry in walk_files(self.dir(queue), descend=hashed):
            if valid_queue_id(entry.name) and entry.is_file(follow_symlinks=False):
                yield entry.name

    def create_queue_file(self, queue: str, mode: int = MODE_WRITING) -> tuple[str, str, int]:
        """Create a new, empty queue file: (queue_id, path, fd). The fd is open for writing."""
        directory = self.dir(queue)
        pid = _pid[0]
        while True:
            now = time.time()
            sec = int(now)
            usec = int((now - sec) * 1_000_000)
            temp = f"{directory}/{usec}.{pid}"
            try:
                fd = os.open(temp, os.O_CREAT | os.O_EXCL | os.O_RDWR, mode)
            except FileExistsError:
                continue
            try:
                inode = os.fstat(fd).st_ino
                while True:
                    queue_id = (long_queue_id(sec, usec, inode) if self.long_ids
                                else short_queue_id(usec, inode))
                    final = self.path(queue, queue_id)
                    if queue in self.hashed:
                        self.ensure_hash_dirs(queue, queue_id)
                    if rename_noreplace(temp, final):
                        return queue_id, final, fd
                    now = time.time()
                    sec = int(now)
                    usec = int((now - sec) * 1_000_000)
            except BaseException:  # no file and no descriptor left behind
                os.close(fd)
                with contextlib.suppress(OSError):
                    os.unlink(temp)
                raise


AT_FDCWD = -100
RENAME_NOREPLACE = 1


def _renameat2():  # type: ignore[no-untyped-def]
    """renameat2(2) where the C library has it, else None. It is called with ints and
    bytes only, which ctypes passes as C ints and char pointers by itself: argtypes
    would convert each argument through its type's from_param, 2,000 instructions a
    call more (a queue file per message in cleanup)."""
    try:
        return ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None


_noreplace = [_renameat2()]  # [None] once the kernel or file system refused the flag
_FS_ENCODING = (sys.getfilesystemencoding(), sys.getfilesystemencodeerrors())  # os.fsencode's


def rename_noreplace(src: str, dst: str) -> bool:
    """Rename src to dst unless dst exists (then False, and src stays). One atomic
    renameat2(RENAME_NOREPLACE) where the kernel and file system have it; else a look
    for dst, then rename(2) (a file made in between would be replaced)."""
    fn = _noreplace[0]
    if fn is not None:
        if fn(AT_FDCWD, src.encode(*_FS_ENCODING), AT_FDCWD, dst.encode(*_FS_ENCODING),
              RENAME_NOREPLACE) == 0:
            return True
        err = ctypes.get_errno()
        if err == errno.EEXIST:
            return False
        if err not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise OSError(err, os.strerror(err), src, None, dst)
        _noreplace[0] = None
    if os.path.exists(dst):
        return False
    os.rename(src, dst)
    return True


def walk_files(directory: str, descend: bool = True) -> Iterator[os.DirEntry[str]]:
    """Every entry below ``directory`` that is not a directory (subdirectories too when
    ``descend``; symbolic links are not followed), yielded as ``os.scandir`` reads it,
    like Postfix's scan_dir: memory does not grow with the number of files. A
    directory that cannot be read (missing, vanished, not ours) is empty, as in
    os.walk."""
    try:
        it = os.scandir(directory)
    except OSError:
        return
    with it:
        while True:
            try:
                entry = next(it)
            except (StopIteration, OSError):
                return
            try:
                is_dir = entry.is_dir(follow_symlinks=False)
            except OSError:
                is_dir = False
            if not is_dir:
                yield entry
            elif descend:
                yield from walk_files(entry.path, descend)


def is_complete(mode: int) -> bool:
    return (mode & 0o700) == MODE_COMPLETE
