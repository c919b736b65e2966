"""cleanup's queue writing: grouped fsync, and the qmgr wake-up on one connection.

``QueueWriter.create()`` makes a new file in incoming/ (``Spool.create_queue_file``:
O_EXCL, fstat, rename to the queue ID) and returns (queue_id, path, fd).
``await QueueWriter.commit(fd, path, parts, queue, patches)`` writes the parts with
``os.writev`` (looping on short writes), writes each (offset, bytes) patch over
what is there (a recipient marked done), fchmods the file to MODE_COMPLETE
(0700), moves it to ``queue`` when that is not incoming (hold), and then waits
for the fsync that covers this file. fsyncs are grouped: at the end of the
event-loop turn, every file committed in that turn has its write-back started
at once (``sync_file_range(SYNC_FILE_RANGE_WRITE)``: their blocks are
allocated in the same journal transaction), then all of them are fsynced at
the same time, the first on the event loop and each other one by a helper
thread (``FSYNC_HELPERS`` at most), and closed; every caller resumes only
after the fsync of its *own* file returned. Why at the same time: an fsync
that finds its file's transaction already committed (by the fsync before it)
must send a cache flush of its own to the disk (ext4: ``blkdev_issue_flush``
in ``ext4_sync_file``), so one-after-the-other fsyncs of a group of N cost one
commit and N-1 extra flushes; fsyncs that wait together share the commit and
its flush (issue #15, compare.py's relay scenario: 44% fewer flushes, 31%
fewer commits, 1.08x the rate). A group of one file is fsynced on the event
loop alone. A commit that nothing else could join, because its message is the
only one the caller has in progress (``messages``, counted by cleanup from the
moment each request is read, before its handler first runs), is synced at once,
in the commit itself, instead of a turn of the loop later: the usual case at
idle, where the wait for a turn, the future and the turn after it for the
caller's resumption cost two turns of the loop per message (two epoll_pwait
and a getpid system call). The group runs on the event loop, which
waits for the last fsync: requests that arrive meanwhile wait in their
sockets and make the next group. Letting the loop go on while a thread syncs
the group cost more than it saved (a thread wake-up and a loop wake-up per
group: cleanup's CPU per message 1.26 -> 0.83 ms one message at a time, the
same with 10 in flight; tests/bench/cleanup_rate.py; and the delivery agents
starved, issue #15).

``ContentFile(fd, envelope)`` collects a file's records as a message streams
in: they stay in memory up to ``FLUSH_AT`` bytes and are then written out, so
a big message never sits whole in memory; a placeholder of the C record's
fixed width goes first and ``finish`` writes the real one over it (or puts it
in place when nothing was written yet: the usual small message costs one
writev at commit).

Promises: ``commit`` returns only when the file is written, complete, in its
final place and fsynced. On any error it closes and unlinks the file and
raises ``OSError``; a failed fsync is never retried. A file already announced
may have been taken by qmgr by then: it is unlinked under every name it can
have moved to (incoming/, active/, deferred/), with a warning that a delivery
may have begun; the client is told to try again, so the failure costs at
worst a duplicate, never a loss. ``discard(fd, path)`` removes a file that
will not be committed; ``remove(path)`` one that was.

``QmgrTrigger.announce(queue_ids)`` tells qmgr about new files in incoming/:
one write on a connection to public/qmgr that stays open (the trigger server
reads bytes until end of file). cleanup announces from the writer's
``announce`` callback, the moment a file is written, complete (mode 0700) and
in incoming/, before its fsync: qmgr and the delivery agent do their work
while the fsync waits for the disk, instead of after it (at idle the journal
commit is a millisecond in which the CPU has nothing else to do; issue #15:
connect -> Maildir 0.895x the build that announced after the fsync). The
client's 250 still waits for the fsync of its own file. Nothing new is
allowed by this: a scan of incoming/ (qmgr's timer, ``postqueue -f``) has
always been able to take a complete file before its fsync returned. A
delivery that ends before the fsync is as safe as any other: the Maildir
file has its own fsync, and should the queue file's fsync fail, the client is
told to try again (a duplicate at worst, as when a 250 is lost on the way).
Each file
is named as ``<HEX>``, the queue ID in lower-case hex
(``pymailsys.ipc.trigger.encode_named_ids``): qmgr
then takes the file without scanning incoming/. The record uses no byte that
is a trigger request (``I`` ``W`` ``D`` ``A`` ``F``), so plain trigger bytes from
postqueue and master keep working on the same socket, and a record that a
read cuts in two only makes qmgr scan incoming/ instead. Without a persistent
connection a plain ``I`` is sent. A broken or refused connection is reopened on the
next announcement; a qmgr that is not running is not an error (its timer catches up).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ctypes
import os
from collections.abc import Callable, Sequence

from pymailsys import log, server
from pymailsys.ipc import trigger
from pymailsys.queue import records as r
from pymailsys.queue import spool as q

FLUSH_AT = 256 * 1024


def _write_all(fd: int, parts: list[bytes]) -> None:
    """Write the parts in order: one writev when the kernel takes them all (the usual
    small file), else on from where a short write stopped."""
    n = 0
    if len(parts) <= 1024:
        n = os.writev(fd, parts)
        if n == sum(map(len, parts)):
            return
    views = [memoryview(p) for p in parts if p]
    while True:
        while n and views:
            first = len(views[0])
            if n >= first:
                n -= first
                views.pop(0)
            else:
                views[0] = views[0][n:]
                n = 0
        if not views:
            return
        n = os.writev(fd, views[:1024])


def _fsync_close(fd: int) -> None:
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


SYNC_FILE_RANGE_WRITE = 2


def _writeback_starter():  # type: ignore[no-untyped-def]
    """sync_file_range(fd, 0, 0, WRITE) where the C library has it, else None."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_start_writeback = _writeback_starter()


# a commit waiting for its fsync: (fd, future, queue ID to announce or None)
_Pending = tuple[int, asyncio.Future[None], str | None]


FSYNC_HELPERS = 16
_helpers: concurrent.futures.ThreadPoolExecutor | None = None


def _fsync_error(fd: int) -> OSError | None:
    try:
        os.fsync(fd)
    except OSError as e:
        return e
    return None


def _fsync_concurrently(fds: list[int]) -> list[OSError | None]:
    """fsync every file at the same time (the first here, the others on helper
    threads), so that they wait for one journal commit; each file's error or None.
    Without a helper thread (none can be started) the rest are fsynced here."""
    global _helpers
    if _helpers is None:
        _helpers = concurrent.futures.ThreadPoolExecutor(FSYNC_HELPERS, "fsync")
    pending: list[concurrent.futures.Future[OSError | None]] = []
    for fd in fds[1:]:
        try:
            pending.append(_helpers.submit(_fsync_error, fd))
        except RuntimeError:
            break
    errors = [_fsync_error(fds[0])] + [p.result() for p in pending]
    return errors + [_fsync_error(fd) for fd in fds[len(errors):]]


def _close_synced(fd: int, error: OSError | None) -> None:
    """Close a file after its fsync (``error``: how that went). A file whose fsync
    returned is durable: an error closing it is logged, not the commit's failure
    (qmgr may already have taken the file)."""
    try:
        os.close(fd)
    except OSError as e:
        if error is None:
            log.warning(f"close a queue file after its fsync: {e.strerror}")


def _sync_group(batch: list[_Pending]) -> None:
    """Start the write-back of every file, then fsync them all at the same time;
    then close each (``_close_synced``) and settle its future."""
    fds = [fd for fd, _fut, _notify in batch]
    if len(fds) == 1:
        errors = [_fsync_error(fds[0])]
    else:
        if _start_writeback is not None:
            for fd in fds:
                _start_writeback(fd, 0, 0, SYNC_FILE_RANGE_WRITE)
        errors = _fsync_concurrently(fds)
    for (fd, fut, _notify), error in zip(batch, errors, strict=True):
        _close_synced(fd, error)
        if fut.done():
            continue
        if error is None:
            fut.set_result(None)
        else:
            fut.set_exception(error)


_SIZE_PLACEHOLDER = r.message_size_record(0, 0, 0)  # the C record's width, written over


class ContentFile:
    """The records of one queue file as its content arrives (see the module docstring)."""

    def __init__(self, fd: int, envelope: bytes) -> None:
        self.fd = fd
        self.parts: list[bytes] = [_SIZE_PLACEHOLDER, envelope]
        self.buffered = len(_SIZE_PLACEHOLDER) + len(envelope)
        self.written = 0
        self.content_size = 0
        self.too_big = False

    def add(self, records: list[bytes]) -> None:
        """Content records, in file order; written out once FLUSH_AT bytes wait."""
        size = sum(map(len, records))
        self.parts += records
        self.content_size += size
        self.buffered += size
        if self.buffered >= FLUSH_AT:
            _write_all(self.fd, self.parts)
            self.written += self.buffered
            self.parts = []
            self.buffered = 0

    def finish(self, size_record: bytes, trailer: bytes) -> list[bytes]:
        """Put the real C record in place; the parts still to be written (commit)."""
        if self.written:
            os.pwrite(self.fd, size_record, 0)
        else:
            self.parts[0] = size_record
        self.parts.append(trailer)
        self.buffered += len(trailer)
        return self.parts

    @property
    def file_size(self) -> int:
        return self.written + self.buffered


class QueueWriter:
    """Creates queue files and commits them with grouped fsyncs."""

    def __init__(self, spool: q.Spool, grouped: bool = True,
                 announce: Callable[[list[str]], None] | None = None) -> None:
        self.spool = spool
        # the event loop of every commit, set by a caller that has only one (else looked
        # up per commit: asyncio.get_running_loop is a getpid system call on Python 3.11)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.grouped = grouped
        self.announce = announce
        self._batch: list[_Pending] = []
        self._scheduled = False
        self.batches = 0
        self.files = 0
        # messages the caller has in progress, counted from when each request was read
        # (0: not counted); at 1 a commit is alone: nothing can join its group
        self.messages = 0

    def create(self) -> tuple[str, str, int]:
        return self.spool.create_queue_file(q.INCOMING)

    @staticmethod
    def discard(fd: int, path: str) -> None:
        try:
            os.close(fd)
        except OSError:
            pass
        QueueWriter.remove(path)

    async def commit(self, fd: int, path: str, parts: list[bytes],
                     queue: str = q.INCOMING, patches: Sequence[tuple[int, bytes]] = (),
                     notify: str | None = None) -> str:
        """Write, patch (offset, bytes) in place, mark complete, place, fsync; the final
        path. ``notify`` (a queue ID, for a file in incoming/) goes to the writer's
        ``announce`` callback with the others of its fsync group, once they are all
        complete and before their fsyncs start."""
        try:
            _write_all(fd, parts)
            for offset, data in patches:
                os.pwrite(fd, data, offset)
            os.fchmod(fd, q.MODE_COMPLETE)
            if queue != q.INCOMING:
                queue_id = os.path.basename(path)
                new = self.spool.path(queue, queue_id)
                self.spool.ensure_hash_dirs(queue, queue_id)
                os.rename(path, new)
                path = new
        except OSError:
            self.discard(fd, path)
            raise
        if not self.grouped:  # the baseline: one fsync per commit, at once
            if notify is not None and self.announce is not None:
                self.announce([notify])
            try:
                _fsync_close(fd)
            except OSError:
                self._failed(path, notify)
                raise
            return path
        if self.messages == 1 and not self._batch:  # alone: a group of one, synced now
            if notify is not None and self.announce is not None:
                self.announce([notify])
            self.batches += 1
            self.files += 1
            error = _fsync_error(fd)
            _close_synced(fd, error)
            if error is not None:
                self._failed(path, notify)
                raise error
            return path
        loop = self.loop or asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._batch.append((fd, fut, notify))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        try:
            await fut
        except OSError:
            self._failed(path, notify)
            raise
        return path

    def _flush(self) -> None:
        self._scheduled = False
        batch, self._batch = self._batch, []
        if not batch:
            return
        announced = [notify for _fd, _fut, notify in batch if notify is not None]
        if announced and self.announce is not None:
            self.announce(announced)
        self.batches += 1
        self.files += len(batch)
        _sync_group(batch)

    def _failed(self, path: str, announced: str | None) -> None:
        """A file whose fsync failed is removed and never trusted; one that qmgr was
        told about may have moved on already, so every name it can have now goes."""
        self.remove(path)
        if announced is None:
            return
        for queue in (q.ACTIVE, q.DEFERRED):
            moved = self.spool.path(queue, announced)
            if os.path.lexists(moved):
                log.warning(f"{announced}: queue file sync failed after qmgr took it: "
                            f"removed from {queue}; a delivery may already have begun "
                            f"(the client is told to try again)")
                self.remove(moved)

    @staticmethod
    def remove(path: str) -> None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as e:
            log.warning(f"remove {path}: {e.strerror}")



class QmgrTrigger:
    """New files' names for qmgr, on a long-lived connection to public/qmgr."""

    def __init__(self, path: str, persistent: bool = True) -> None:
        self.path = path
        self.persistent = persistent
        self._writer: asyncio.StreamWriter | None = None
        self._watch: asyncio.Task[None] | None = None
        self._wanted = False
        self._sending = False
        self._ids: list[str] = []
        self._plain = False
        self.sent = 0

    def announce(self, queue_ids: list[str]) -> None:
        """Tell qmgr about new files: at once, in one write, on an open connection, else
        by a task that connects first (and takes what is announced meanwhile)."""
        if not self.persistent:
            self._plain = True
        else:
            self._ids += queue_ids
        self._wanted = True
        if self._sending:
            return  # the sending task takes them
        writer = self._writer
        if self.persistent and writer is not None and not writer.is_closing():
            self._wanted = False
            self._write(writer)
            return
        self._sending = True
        server.background(self._send())

    def _write(self, writer: asyncio.StreamWriter) -> None:
        ids, self._ids = self._ids, []
        plain, self._plain = self._plain, False
        if not ids and not plain:
            return
        writer.write((trigger.SCAN_INCOMING if plain else b"") + trigger.encode_named_ids(ids))
        self.sent += 1

    async def _send(self) -> None:
        try:
            while self._wanted:
                self._wanted = False
                if not self.persistent:
                    self._ids, self._plain = [], False
                    if await trigger.async_trigger(self.path, trigger.SCAN_INCOMING):
                        self.sent += 1
                    continue
                writer = await self._connection()
                if writer is None:  # qmgr is not there: its start-up scan finds the files
                    self._ids, self._plain = [], False
                    continue
                self._write(writer)
        finally:
            self._sending = False

    async def _connection(self) -> asyncio.StreamWriter | None:
        if self._writer is not None and not self._writer.is_closing():
            return self._writer
        try:
            reader, self._writer = await asyncio.open_unix_connection(self.path)
        except OSError:
            self._writer = None
            return None
        self._watch = asyncio.ensure_future(self._watch_eof(reader, self._writer))
        return self._writer

    async def _watch_eof(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """qmgr never writes; end of file or an error means it went away: reconnect next time."""
        try:
            await reader.read(1)
        except (OSError, asyncio.CancelledError):
            pass
        writer.close()
        if self._writer is writer:
            self._writer = None

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._watch is not None:
            self._watch.cancel()
