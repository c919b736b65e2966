"""Mailbox writers: mbox files and Maildir directories (local; virtual later).

Takes what to store (bytes, or an iterable of chunks that is read once, as
it is written: a message never has to be whole in memory) and a destination;
promises Postfix's formats and safety rules, and classifies every failure as ``MailboxError(dsn, text)``
(``dsn`` 4.x.x: try again later; 5.x.x: final). The caller chooses the rights:
it calls these functions with the recipient's effective uid and gid already in
place (``privileges.as_user``).

mbox (``deliver_mbox``):
  * the message is ``From SENDER  asctime`` (``MAILER-DAEMON`` for ``<>``), the
    prepended headers, the message with lines that start with ``From `` quoted
    as ``>From ``, and one empty line (``mbox_text``);
  * the file is never opened through a symbolic link (lstat, then O_NOFOLLOW),
    except one that root owns in a directory that root owns and nobody else can
    write (Postfix's safe_open: the administrator's link), must be a regular
    file with one hard link, and the descriptor must be the file lstat (or, for
    such a link, stat) saw; a new file is created with O_EXCL, mode 0600; a
    refusal reads as Postfix's safe_open and local say it (``file is a symbolic
    link``, ``file has 2 hard links``, ``cannot open file: Is a directory``,
    ``destination PATH is not a regular file``, ``cannot create file
    exclusively: ERROR``);
    ``expect_uid`` refuses a file owned by someone else (4.2.0 ``destination
    PATH is not owned by recipient`` and Postfix's warning, as
    strict_mailbox_ownership); ``chown_to`` gives a file created here to the
    recipient (when root creates it in a spool directory), and ``write_as``
    gives the write itself the recipient's rights (quotas);
  * locks from ``mailbox_delivery_lock``: ``dotlock`` (``PATH.lock`` made with
    O_EXCL before the open, removed when older than stale_lock_time) and
    ``fcntl`` or ``flock`` on the open file; retried ``attempts`` times
    ``delay`` seconds apart; a lock that cannot be had defers (4.2.0);
  * ``to_file`` (a /file of an alias or .forward, as Postfix's deliver_file):
    a file with an execute bit is refused, 5.7.1, and a character device
    (/dev/null) is written to as it is;
  * the append is fsynced; on any write error (or an error reading the
    chunks, or mailbox_size_limit reached) the file is truncated back to its
    old size and the error is reported.

Maildir (``deliver_maildir``): tmp/, new/, cur/ are made 0700 when missing;
the message (no From_ line, no quoting) is written to tmp/, fsynced, then
hard-linked into new/ as ``TIME.V<dev hex>I<inode hex>M<usec>.HOST`` and the
tmp/ name removed. A failure to create or link the file that its errno does
not classify (``errno_dsn``) gets ``create_dsn``: Postfix's local(8) bounces it
(5.2.0: the Maildir is the user's), its virtual(8) defers it (4.2.0, the
default here: the Maildir is the administrator's); the text names the file,
``create maildir file PATH: ERROR``. A write or fsync failure is ``error
writing message: ERROR``, 5.3.0 unless its errno says otherwise, as Postfix's
mail_copy, for mbox files too. ``MailboxError.errno`` keeps the errno: for
EACCES an agent logs ``maildir_access_warnings`` with the ids it wrote with,
as Postfix's agents do.

Crash idempotence (``key`` and ``marker``): a redelivery of the same queue
file, recipient and destination after a crash must not store a second copy.
The tmp/ name is then derived from the key (queue ID, arrival time in
microseconds, recipient offset, destination), and a marker named by the key
is claimed (made empty, O_EXCL, and kept open) before the tmp/ file is made;
the final name is written into it after the tmp/ file is fsynced and before
it is linked into new/. On a delivery with a key:

  * no marker, or an empty one: any tmp/ file of that name is debris of an
    attempt that never reached new/ (the name is recorded first): remove it
    and deliver afresh;
  * marker, tmp/ file with two links: the earlier attempt linked it; remove
    the tmp/ name, report success, write nothing;
  * marker, tmp/ file with one link: the earlier attempt stopped between the
    marker and the link: the file is complete (fsynced before the marker):
    link it now;
  * marker, no tmp/ file: the earlier attempt finished; report success.

So a copy is stored exactly once whatever the moment of a kill -9. A power
failure can lose a marker that was not synced: then the mail may come twice,
never zero times. Markers live outside the Maildir, in a directory of the
agent's own (``MarkerStore``: opened once and refused unless only the agent's
user can write it; each marker made, read and removed relative to that
descriptor with the agent's own rights, so a delivery switches rights only
for the Maildir; ``open_markers``: ``$queue_directory/$process_id_directory/
NAME``, root's own directory when the agent runs as root) and are removed
once the queue file is gone (``collect_markers``, the agent's background
task until it stops: a sweep every ``MARKER_GC_INTERVAL``, 10 s, that gives the
event loop a turn every ``COLLECT_PER_TURN`` markers).
A missing tmp/ or new/ is made when the create or the link finds it missing
(as Postfix does), not checked before every delivery. The claimed marker is
also a lock (flock, exclusive) until the recorded name is linked: a second
attempt of the same key at the same time (an agent still delivering after
qmgr restarted and sent the recipient again) waits for the first, at most
``MARKER_LOCK_WAIT`` seconds (then 4.3.0), and then follows the cases above;
without it both would write the same tmp/ name, and one could link the
other's file while it is still being written.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import socket
import stat
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager

from pymailsys import log
from pymailsys.config import Config
from pymailsys.queue import spool as queue_mod
from pymailsys.queue.spool import Spool, valid_queue_id
from pymailsys.rfc822 import quote_822_local

MAILER_DAEMON = "MAILER-DAEMON"
MARKER_LOCK_WAIT = 10.0  # seconds a delivery waits for another attempt's marker lock


class MailboxError(Exception):
    """A delivery to a mailbox failed: dsn (4.x.x temporary, 5.x.x final) and text;
    ``errno`` when a system call's error decided it."""

    def __init__(self, dsn: str, text: str, errno: int | None = None) -> None:
        super().__init__(text)
        self.dsn = dsn
        self.text = text
        self.errno = errno

    @property
    def temporary(self) -> bool:
        return self.dsn.startswith("4")


def size_limit_error(config: Config, name: str) -> str | None:
    """Postfix's fatal text when the mailbox limit name (mailbox_size_limit,
    virtual_mailbox_limit) is on and message_size_limit is off or larger: a
    mailbox that can never take a message, or a queue file the agent could not
    update (local and virtual check it at start); None when they fit."""
    limit, message_limit = config.get_size(name), config.get_size("message_size_limit")
    if not limit:
        return None
    if not message_limit:
        return f"configuration error: {name} is limited but message_size_limit is unlimited"
    if limit < message_limit:
        return f"configuration error: {name} is smaller than message_size_limit"
    return None


def errno_dsn(err: int | None, default: str) -> str:
    """Postfix's mbox_dsn: the enhanced status for a file-system error."""
    if err in (errno.EAGAIN, errno.ESTALE):
        return "4.2.0"
    if err == errno.ENOSPC:
        return "4.3.0"
    if err in (errno.EDQUOT, errno.EFBIG):
        return "5.2.2"
    return default


# --- the text that goes in ----------------------------------------------------

def from_line(sender: str, when: float | None = None) -> bytes:
    """The mbox ``From `` line: the sender quoted as mail_copy quotes it."""
    stamp = time.asctime(time.localtime(time.time() if when is None else when))
    return (f"From {quote_822_local(sender) if sender else MAILER_DAEMON}  {stamp}\n"
            .encode("utf-8", "surrogateescape"))


def delivered_to_key(address: str) -> str:
    """An address (internal form) as a ``Delivered-To:`` header value: quoted as
    mail_copy writes it, lower case. The local and virtual loop checks look the
    recipient up in this form, as Postfix's delivered_hdr_find quotes it."""
    return quote_822_local(address).lower()


def prepended_headers(sender: str, orig_rcpt: str | None, delivered_to: str | None) -> bytes:
    """Return-Path, X-Original-To, Delivered-To (Postfix's mail_copy order).

    Every address (internal form) is quoted as mail_copy quotes it, so that a
    local part with a space or a special stays one address, and keeps its case
    (mail_copy folds none; only a forwarded copy's Delivered-To is folded):
    ``Return-Path: <"john doe"@example.net>``, ``X-Original-To: "john doe"@example.net``,
    ``Delivered-To: "John Doe"@Example.NET``."""
    out = [f"Return-Path: <{quote_822_local(sender) if sender else ''}>\n"]
    if orig_rcpt is not None:
        out.append(f"X-Original-To: {quote_822_local(orig_rcpt)}\n")
    if delivered_to is not None:
        out.append(f"Delivered-To: {quote_822_local(delivered_to)}\n")
    return "".join(out).encode("utf-8", "surrogateescape")


def from_quoted(text: Iterable[bytes]) -> Iterator[bytes]:
    """Message text chunks with each line that starts with ``From `` quoted as ``>From ``.

    A chunk ends at a line end or after an L record's piece (never inside the
    first five bytes of a line), so a line start is either a chunk's start
    after a line end or right after an LF inside a chunk.
    """
    at_line_start = True
    for chunk in text:
        if not chunk:
            continue
        if b"\nFrom " in chunk:
            chunk = chunk.replace(b"\nFrom ", b"\n>From ")
        if at_line_start and chunk.startswith(b"From "):
            chunk = b">" + chunk
        at_line_start = chunk.endswith(b"\n")
        yield chunk


def mbox_text(from_: bytes, headers: bytes, text: Iterable[bytes]) -> Iterator[bytes]:
    """From_ line, headers, the message text with >From quoting, one empty line."""
    yield from_ + headers
    yield from from_quoted(text)
    yield b"\n"


def plain_text(headers: bytes, text: Iterable[bytes]) -> Iterator[bytes]:
    """Headers and the message text as it is (Maildir, commands without From_)."""
    yield headers
    yield from text


WRITE_SIZE = 65536  # small chunks (the prepended headers, short messages) go in one write


def _write_chunks(fd: int, data: Iterable[bytes], room: int) -> None:
    """Write every chunk, gathered into writes of about WRITE_SIZE bytes; MailboxError
    5.2.2 before the total passes ``room`` (0: no limit)."""
    written = 0
    pending: list[bytes] = []
    size = 0
    for chunk in data:
        written += len(chunk)
        if room and written > room:
            raise MailboxError("5.2.2", "error writing message: File too large")
        pending.append(chunk)
        size += len(chunk)
        if size >= WRITE_SIZE:
            _write_all(fd, pending)
            pending, size = [], 0
    if pending:
        _write_all(fd, pending)


def _write_all(fd: int, chunks: list[bytes]) -> None:
    view = memoryview(chunks[0] if len(chunks) == 1 else b"".join(chunks))
    while view:
        n = os.write(fd, view)
        view = view[n:]


# --- mbox ------------------------------------------------------------------------

def _os_error(e: OSError, default: str, what: str) -> MailboxError:
    return MailboxError(errno_dsn(e.errno, default), f"{what}: {e.strerror}", e.errno)


WRITE_ERROR_DSN = "5.3.0"  # Postfix's mail_copy: "error writing message", unless errno decides


def maildir_access_warnings(error: MailboxError, uid: int, gid: int) -> None:
    """Postfix's two warnings for a Maildir delivery that failed with EACCES."""
    if error.errno == errno.EACCES:
        log.warning(f"maildir access problem for UID/GID={uid}/{gid}: {error.text}")
        log.warning("perhaps you need to create the maildirs in advance")


@contextlib.contextmanager
def dotlock(path: str, attempts: int = 20, delay: float = 1.0,
            stale: float = 500.0, may_fail: bool = False, dsn: str = "5.2.0") -> Iterator[None]:
    """Hold ``PATH.lock``. A lock held by another process past the attempts defers
    (4.2.0); one older than ``stale`` is removed; any other failure to create it
    (EACCES in a directory the writer cannot write, a stale lock it may not remove,
    ...) is a warning when ``may_fail`` (Postfix's MBOX_DOT_LOCK_MAY_FAIL, for
    deliveries to files named in aliases and .forward) and the kernel locks alone
    protect the file, else an error (Postfix's words and errno: ``unable to create
    lock file PATH.lock: Operation not permitted``)."""
    lock = path + ".lock"
    for attempt in range(max(attempts, 1)):
        try:
            fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            break
        except FileExistsError:
            try:
                if time.time() - os.lstat(lock).st_mtime > stale:
                    os.unlink(lock)
                    continue
            except FileNotFoundError:
                continue
            except OSError as e:  # a stale lock the writer may not remove (another's, in
                failure = e  # a sticky directory): Postfix gives up with that errno
            else:
                if attempt + 1 < attempts:
                    time.sleep(delay)
                continue
        except OSError as e:
            failure = e
        if not may_fail:
            raise _os_error(failure, dsn, f"unable to create lock file {lock}") from None
        log.warning(f"unable to create lock file {lock}: {failure.strerror}")
        yield
        return
    else:
        raise MailboxError("4.2.0", f"unable to create lock file {lock}: "
                                    f"{os.strerror(errno.EEXIST)}", errno.EEXIST)
    os.close(fd)
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock)


def _regular_or_absent(path: str) -> bool:
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return True


def _kernel_lock(fd: int, method: str, attempts: int, delay: float) -> None:
    for attempt in range(max(attempts, 1)):
        try:
            if method == "flock":
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            else:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise _os_error(e, "4.2.0", "unable to lock for exclusive access") from None
        if attempt + 1 < attempts:
            time.sleep(delay)
    raise MailboxError("4.2.0", "unable to lock for exclusive access: Resource temporarily unavailable")


def _trusted_link(path: str, link: os.stat_result) -> bool:
    """Postfix's safe_open exception: a symbolic link that root owns, in a directory
    that root owns and nobody else can write (the administrator's link, say
    /var/mail/alice to /home/alice/mbox). "NEVER, NEVER, make exceptions for symlinks
    owned by a non-root user"."""
    if link.st_uid != 0:
        return False
    try:
        parent = os.stat(os.path.dirname(path) or ".")  # not lstat, as Postfix
    except OSError:
        return False
    return parent.st_uid == 0 and not parent.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def open_mailbox(path: str, expect_uid: int | None = None,
                 chown_to: tuple[int, int] | None = None, devices: bool = False,
                 dsn: str = "5.2.0") -> int:
    """Open (or create) a mailbox file for appending with Postfix's safety checks
    (safe_open): a symbolic link only when ``_trusted_link``, then checked as the file
    it leads to; ``devices``: a character device (/dev/null) is taken too. ``dsn``:
    the status of a refusal, or of a failure its errno does not decide (Postfix's
    mbox_open def_dsn: local's 5.2.0, virtual's 4.2.0)."""
    try:
        before: os.stat_result | None = os.lstat(path)
    except FileNotFoundError:
        before = None
    except OSError as e:
        raise _os_error(e, dsn, "cannot open file") from None
    nofollow = os.O_NOFOLLOW
    if before is not None and stat.S_ISLNK(before.st_mode):
        if not _trusted_link(path, before):
            raise MailboxError(dsn, "file is a symbolic link")
        try:
            before = os.stat(path)
        except OSError as e:  # a dangling link is never created through
            raise _os_error(e, dsn, "cannot open file") from None
        nofollow = 0
    if before is not None:
        if stat.S_ISDIR(before.st_mode):  # Postfix's open for writing fails: EISDIR
            raise MailboxError(errno_dsn(errno.EISDIR, dsn),
                               f"cannot open file: {os.strerror(errno.EISDIR)}", errno.EISDIR)
        if not (stat.S_ISREG(before.st_mode) or devices and stat.S_ISCHR(before.st_mode)):
            raise MailboxError(dsn, f"destination {path} is not a regular file")
        if before.st_nlink != 1:
            raise MailboxError(dsn, f"file has {before.st_nlink} hard links")
        flags = os.O_WRONLY | os.O_APPEND | nofollow | os.O_NOCTTY | os.O_NONBLOCK
        try:
            fd = os.open(path, flags)
        except OSError as e:
            raise _os_error(e, dsn, "cannot open file") from None
        after = os.fstat(fd)
        if (after.st_dev, after.st_ino) != (before.st_dev, before.st_ino) or after.st_nlink != 1 \
                or stat.S_IFMT(after.st_mode) != stat.S_IFMT(before.st_mode):
            os.close(fd)
            raise MailboxError("4.2.0", "file status changed unexpectedly")
        if expect_uid is not None and after.st_uid != expect_uid:
            os.close(fd)
            log.warning('specify "strict_mailbox_ownership = no" to ignore mailbox '
                        'ownership mismatch')
            raise MailboxError("4.2.0", f"destination {path} is not owned by recipient")
        os.set_blocking(fd, True)
        return fd
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_NOCTTY
    try:
        fd = os.open(path, flags, 0o600)
    except OSError as e:
        raise _os_error(e, dsn, "cannot create file exclusively") from None
    if chown_to is not None:
        try:
            os.fchown(fd, chown_to[0], chown_to[1])
        except OSError as e:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(path)
            raise _os_error(e, "4.2.0", f"cannot change ownership of {path}") from None
    return fd


def deliver_mbox(path: str, data: bytes | Iterable[bytes], *, expect_uid: int | None = None,
                 chown_to: tuple[int, int] | None = None,
                 locks: Iterable[str] = ("fcntl", "dotlock"), size_limit: int = 0,
                 attempts: int = 20, delay: float = 1.0, stale: float = 500.0,
                 dotlock_may_fail: bool = False, to_file: bool = False,
                 write_as: Callable[[], AbstractContextManager[object]] | None = None,
                 dsn: str = "5.2.0") -> int:
    """Append data (already in mbox form; bytes or chunks) to the mailbox at path; the
    offset at which it starts (the file's old size; 0 for a device).

    ``write_as``: a context-manager factory for the rights the message is written
    (and truncated back) with once the file is open and locked, when those differ
    from the caller's (Postfix's spool delivery: open with the spool directory's
    rights, root's or the mail group's, write as the recipient so that quotas and
    the blocks reserved for root count against the recipient).

    As Postfix's mbox_open, only a regular file (or one not there yet) is
    dot-locked, so /dev/null never gets a /dev/null.lock. ``to_file`` (Postfix's
    deliver_file, for a /file of an alias or .forward): a file with an execute bit
    is refused, 5.7.1 ``file is executable``, and left as it was (mail appended to
    a script would run as whoever runs the script), and a character device
    (/dev/null) is written as it is, without kernel locks, size limit or fsync.
    ``dsn``: the status of a lock, open or create failure that its errno does not
    decide (``open_mailbox``; local 5.2.0, virtual 4.2.0)."""
    methods = [m.strip().lower() for m in locks]
    with contextlib.ExitStack() as stack:
        if "dotlock" in methods and _regular_or_absent(path):
            stack.enter_context(dotlock(path, attempts, delay, stale, dotlock_may_fail, dsn))
        fd = open_mailbox(path, expect_uid, chown_to, devices=to_file, dsn=dsn)
        stack.callback(os.close, fd)
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):  # a device: no locks, size or sync to speak of
            with (write_as or contextlib.nullcontext)():
                try:
                    _write_chunks(fd, [data] if isinstance(data, bytes) else data, 0)
                except OSError as e:
                    raise _os_error(e, WRITE_ERROR_DSN, "error writing message") from None
            return 0
        if to_file and mode & 0o111:
            raise MailboxError("5.7.1", "file is executable")
        for method in methods:
            if method in ("fcntl", "flock"):
                _kernel_lock(fd, method, attempts, delay)
        size = os.fstat(fd).st_size
        if size_limit and size >= size_limit:
            raise MailboxError("5.2.2", "error writing message: File too large")
        with (write_as or contextlib.nullcontext)():
            try:
                _write_chunks(fd, [data] if isinstance(data, bytes) else data,
                              size_limit - size if size_limit else 0)
                os.fsync(fd)
            except BaseException as e:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, size)
                if isinstance(e, OSError):
                    raise _os_error(e, WRITE_ERROR_DSN, "error writing message") from None
                raise
    return size


# --- Maildir ---------------------------------------------------------------------

def _hostname(host: str | None) -> str:
    name = host or socket.gethostname()
    return name.replace("/", "\\057").replace(":", "\\072")


def _marker_value(raw: bytes) -> str | None:
    """A marker's final name; None for an empty marker (killed between its claim and its
    record: no delivery yet) or anything that is not a plain file name."""
    value = raw.decode("utf-8", "surrogateescape")
    if not value or "/" in value or value.startswith(".") or "\0" in value:
        return None
    return value


def _lock_marker(fd: int, path: str) -> None:
    """flock a claimed marker, waiting (MARKER_LOCK_WAIT at most) for an attempt of the
    same key that holds it; OSError EAGAIN after that."""
    deadline = 0.0
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            now = time.monotonic()
            if not deadline:
                deadline = now + MARKER_LOCK_WAIT
            elif now >= deadline:
                raise OSError(errno.EAGAIN, f"{path}: another delivery holds it") from None
            time.sleep(0.002)


COLLECT_PER_TURN = 16  # markers searched or removed between two turns of the event loop (~0.5 ms)


class MarkerStore:
    """Delivery markers for crash-idempotent Maildir delivery (see the module docstring),
    in ``directory``, which ``open`` makes and opens. Keys are plain names
    (``delivery_key``), used relative to the directory's descriptor. A marker's value is
    only trusted as a plain file name (no ``/``, no leading dot); anything else counts
    as no marker.
    """

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.fd = -1

    def open(self) -> None:
        """Make the directory (0700) if it is missing and open it; OSError when it cannot
        be, or when it is not a directory of this process's user that nobody else can
        write (a symbolic link in its place is not followed). From then on, whatever
        happens to its name, the store works in the directory it checked."""
        with contextlib.suppress(FileExistsError):
            os.mkdir(self.directory, 0o700)
        fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        st = os.fstat(fd)
        if st.st_uid != os.geteuid() or st.st_mode & 0o022:
            os.close(fd)
            raise OSError(errno.EPERM, f"not a directory that only uid {os.geteuid()} can "
                                       f"write (owner {st.st_uid}, mode "
                                       f"{stat.S_IMODE(st.st_mode):04o})", self.directory)
        if self.fd >= 0:
            os.close(self.fd)
        self.fd = fd

    def path(self, key: str) -> str:
        return os.path.join(self.directory, key)

    def get(self, key: str) -> str | None:
        """The final name recorded under key; None when there is no (complete) marker."""
        try:
            fd = os.open(key, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=self.fd)
        except OSError:
            return None  # none, or not one this store made (then claim() fails)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None
            return _marker_value(os.read(fd, 256))
        finally:
            os.close(fd)

    def claim(self, key: str) -> tuple[str | None, int]:
        """Before a delivery under key: (the final name an earlier attempt recorded, -1),
        else (None, fd): an open, empty marker, made here or left empty by an attempt
        that stopped before its link, locked (flock) until the caller closes it;
        an attempt of the same key that holds it is waited for (``MARKER_LOCK_WAIT``).
        OSError when neither can be had."""
        flags = os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            fd = os.open(key, flags | os.O_CREAT | os.O_EXCL, 0o600, dir_fd=self.fd)
        except FileExistsError:
            fd = os.open(key, flags, dir_fd=self.fd)
        try:
            _lock_marker(fd, self.path(key))
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise OSError(errno.EINVAL, f"{self.path(key)} is not a regular file")
            if st.st_size:
                done = _marker_value(os.pread(fd, 256, 0))
                if done is not None:
                    os.close(fd)
                    return done, -1
                os.ftruncate(fd, 0)
        except BaseException:
            os.close(fd)
            raise
        return None, fd

    @staticmethod
    def record(fd: int, value: str) -> None:
        """Write the final name into a marker from ``claim`` (still open and locked: the
        caller closes it once the name is linked)."""
        os.write(fd, value.encode("utf-8", "surrogateescape"))

    def keys(self) -> list[str]:
        return os.listdir(self.fd)

    def remove(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(key, dir_fd=self.fd)

    async def collect(self, queued: Callable[[str], bool], per_turn: int = COLLECT_PER_TURN) -> int:
        """Remove the markers whose queue file is gone (``queued(queue_id)`` false); how many.
        A name that does not start with a queue ID is no marker and is left alone. The
        event loop gets a turn after every ``per_turn`` markers searched or removed, so
        that a large directory never holds up the deliveries (one search costs up to
        four ``stat`` calls: 50,000 markers took 1.4 s in one go).

        A queue file can move to a queue that the search has already passed while it
        searches (a flush moves deferred to incoming, a restarted qmgr active to
        incoming), so a marker is removed only when a second search, after the whole
        round, finds its file gone too: a file escapes both only by moving backwards
        twice within one round, and a duplicate needs a crash besides."""
        work = 0

        async def turn() -> None:
            nonlocal work
            work += 1
            if work % per_turn == 0:
                await asyncio.sleep(0)

        candidates = []
        for key in self.keys():
            queue_id = key.split(".", 1)[0]
            if valid_queue_id(queue_id):
                if not queued(queue_id):
                    candidates.append(key)
                await turn()
        stale = []
        for key in candidates:
            if not queued(key.split(".", 1)[0]):
                stale.append(key)
            await turn()
        for key in stale:
            self.remove(key)
            await turn()
        return len(stale)


# A sweep every 10 s keeps the directory small under load: at 800 deliveries a second a
# minute's markers are 50,000 names (on a new ext4 each marker then cost 20 us to make
# instead of 15, and their removal came as one burst of journal work); an empty
# directory costs one listdir.
MARKER_GC_INTERVAL = 10.0
# the queues a delivery can come from: a marker of a file in none of them is stale
MARKER_QUEUES = (queue_mod.INCOMING, queue_mod.ACTIVE, queue_mod.DEFERRED, queue_mod.HOLD)


def open_markers(config: Config, name: str) -> MarkerStore | None:
    """An agent's markers in ``$queue_directory/$process_id_directory/name`` (root's
    directory when the agent runs as root, as Postfix's pid/ is: nobody else can plant a
    link or a file there), made and used with the agent's own rights; None, with a
    warning, when that directory cannot be made or is not the agent's alone."""
    directory = os.path.join(queue_mod.process_id_directory(config), name)
    markers = MarkerStore(directory)
    try:
        markers.open()
    except OSError as e:
        log.warning(f"delivery markers in {directory}: {e.strerror}; Maildir redelivery "
                    f"after a crash may store a second copy")
        return None
    return markers


def queued_anywhere(spool: Spool, queue_id: str) -> bool:
    """Whether queue_id has a file in one of ``MARKER_QUEUES``. Only "no such file"
    counts as absent: any other error (a directory that cannot be searched, an I/O
    error) answers "queued", so that a marker is never removed on a doubt."""
    for queue in MARKER_QUEUES:
        try:
            os.stat(spool.path(queue, queue_id))
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError:
            return True
        return True
    return False


async def collect_markers(markers: MarkerStore | None, spool: Spool, stopping: asyncio.Event,
                          interval: float = MARKER_GC_INTERVAL) -> None:
    """Until ``stopping`` is set: every ``interval`` seconds, remove the markers whose
    queue file is in none of ``MARKER_QUEUES``; a failure is a warning and the next
    round tries again."""
    if markers is None:
        return
    while not stopping.is_set():
        try:
            await markers.collect(lambda queue_id: queued_anywhere(spool, queue_id))
        except OSError as e:
            log.warning(f"delivery markers: {e}")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), interval)


def delivery_key(queue_id: str, arrival: float, rcpt_offset: int, destination: str) -> str:
    """A name that identifies one delivery of one queue-file recipient to one place."""
    crc = zlib.crc32(destination.encode("utf-8", "surrogateescape"))
    return f"{queue_id}.{int(round(arrival * 1_000_000))}.{rcpt_offset}.{crc:08x}"


_counter = 0


def make_maildir(maildir: str) -> None:
    """Make tmp/, new/ and cur/ (0700) where missing; OSError when one cannot be made."""
    for sub in ("tmp", "new", "cur"):
        os.makedirs(os.path.join(maildir, sub), mode=0o700, exist_ok=True)


def _create(tmp: str, maildir: str, create_dsn: str, debris: bool = False) -> int:
    """O_EXCL create in tmp/; a missing Maildir is made on the way (as Postfix does).
    ``debris``: a file of that name is what an earlier attempt left before its marker
    (the name comes from the delivery key): remove it and create afresh. A failure,
    that of making the Maildir included, names the file, as Postfix's."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
    try:
        try:
            return os.open(tmp, flags, 0o600)
        except FileNotFoundError:
            make_maildir(maildir)
        except FileExistsError:
            if not debris:
                raise
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        return os.open(tmp, flags, 0o600)
    except OSError as e:
        raise _os_error(e, create_dsn, f"create maildir file {tmp}") from None


def deliver_maildir(maildir: str, data: bytes | Iterable[bytes], *, host: str | None = None, key: str | None = None,
                    marker: MarkerStore | None = None, size_limit: int = 0,
                    rights: Callable[[], AbstractContextManager[object]] | None = None,
                    create_dsn: str = "4.2.0") -> str:
    """Store data (bytes or chunks) as one new message in maildir; the new/ file's path.

    ``rights``: a context-manager factory giving the recipient's rights for the
    Maildir work (None: the caller has put them in place). The marker is claimed with
    the caller's own rights, the store's (its directory is the agent's own), before
    the recipient's are taken: a delivery with a marker must give ``rights``.
    ``create_dsn``: the status of a failure to create or link the file that its
    errno does not decide (local 5.2.0, virtual 4.2.0: see the module docstring)."""
    global _counter
    host = _hostname(host)
    base = maildir if maildir.endswith("/") or not maildir else maildir + "/"  # as os.path.join
    tmpdir = base + "tmp"
    newdir = base + "new"
    as_recipient = rights or contextlib.nullcontext
    marker_fd = -1
    if key is not None and marker is not None:
        tmp = f"{tmpdir}/{key}.{host}"
        try:
            done, marker_fd = marker.claim(key)
        except OSError as e:
            raise _os_error(e, "4.3.0", f"cannot record delivery marker {key}") from None
        if done is not None:
            with as_recipient():
                return _finish_marked(tmp, f"{newdir}/{done}", create_dsn)
    else:
        _counter += 1
        tmp = f"{tmpdir}/{int(time.time())}.P{os.getpid()}Q{_counter}.{host}"
    stored = False
    try:
        with as_recipient():
            stored = True  # from here _store closes marker_fd on every path
            return _store(maildir, tmp, newdir, host, data, size_limit, marker_fd, create_dsn)
    finally:
        if not stored and marker_fd >= 0:
            os.close(marker_fd)


def _store(maildir: str, tmp: str, newdir: str, host: str, data: bytes | Iterable[bytes],
           size_limit: int, marker_fd: int, create_dsn: str) -> str:
    """Write tmp/, fsync it, record its final name in the claimed marker (marker_fd, -1
    for none: closed here on every path; one not recorded stays empty, "no delivery
    yet"), link it into new/, remove the tmp/ name; the new/ file's path. Between the
    fsync and the link (the delivery) only the marker's write: both descriptors are
    closed after the link, the marker's (its lock) last."""
    use_marker = marker_fd >= 0
    try:
        fd = _create(tmp, maildir, create_dsn, debris=use_marker)
    except BaseException:
        if use_marker:
            os.close(marker_fd)
        raise
    try:
        try:
            _write_chunks(fd, [data] if isinstance(data, bytes) else data, size_limit)
            st = os.fstat(fd)
            os.fsync(fd)
        except BaseException as e:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            if isinstance(e, OSError):
                raise _os_error(e, WRITE_ERROR_DSN, "error writing message") from None
            raise
        now = time.time()
        name = f"{int(now)}.V{st.st_dev:x}I{st.st_ino:x}M{int((now % 1) * 1_000_000)}.{host}"
        final = f"{newdir}/{name}"
        if use_marker:
            try:
                MarkerStore.record(marker_fd, name)
            except OSError as e:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise _os_error(e, "4.3.0", f"cannot record delivery marker for {tmp}") from None
        try:
            try:
                os.link(tmp, final)
            except FileNotFoundError:
                make_maildir(maildir)
                os.link(tmp, final)
        except OSError as e:
            if not use_marker:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
            raise _os_error(e, create_dsn, f"create maildir file {final}") from None
    finally:
        try:
            os.close(fd)
        finally:
            if use_marker:
                os.close(marker_fd)
    with contextlib.suppress(OSError):
        os.unlink(tmp)
    return final


def _finish_marked(tmp: str, final: str, create_dsn: str) -> str:
    """Complete or confirm an earlier attempt that reached its marker."""
    try:
        st = os.lstat(tmp)
    except FileNotFoundError:
        return final  # finished earlier
    if st.st_nlink < 2:
        try:
            try:
                os.link(tmp, final)
            except FileNotFoundError:
                make_maildir(os.path.dirname(os.path.dirname(final)))
                os.link(tmp, final)
        except FileExistsError:
            pass
        except OSError as e:
            raise _os_error(e, create_dsn, f"create maildir file {final}") from None
    with contextlib.suppress(OSError):
        os.unlink(tmp)
    return final
