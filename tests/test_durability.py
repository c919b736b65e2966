"""Durability under real faults: nothing acknowledged is lost, no notice owed is dropped.

Faults are injected for real (as root): a queue, status-log or mailbox directory on a
small tmpfs that is full (ENOSPC) or out of inodes, the spool on ext4 on a loop device
whose disk stops taking writes (a failing fsync), queue files damaged on disk, kill -9
of a daemon in mid-request, postsuper and postqueue racing qmgr, postfix stop in
mid-delivery. The daemons are the real ones (``test_qmgr.Standalone``: cleanup,
qmgr, local and bounce without master; or a whole ``harness.Instance``), and the
assertions are what a user sees: replies, log lines, queue directories, mailboxes.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import signal
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from harness import ME, Instance, wait_until
from test_qmgr import BODY, Standalone, events, slow_command, standalone_systems  # noqa: F401 (the fixture)

from pymailsys.ipc import trigger
from pymailsys.queue import status_log
from pymailsys.queue.maildrop import Submission, write_maildrop
from pymailsys.queue.queue_file import read_envelope
from pymailsys.queue.spool import Spool

Mount = Callable[[Path, str], Path]


@contextlib.contextmanager
def _tmpfs(directory: Path, size: str, inodes: int = 0) -> Iterator[Path]:
    """A tmpfs of ``size`` (and at most ``inodes`` inodes) mounted on directory, with
    its owner and mode."""
    st = directory.stat()
    options = f"size={size},mode={stat.S_IMODE(st.st_mode):o},uid={st.st_uid},gid={st.st_gid}"
    if inodes:
        options += f",nr_inodes={inodes}"
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(directory)], check=True)
    try:
        yield directory
    finally:
        subprocess.run(["umount", "-l", str(directory)], check=False)


@pytest.fixture
def system():  # type: ignore[no-untyped-def]
    yield from standalone_systems()


@pytest.fixture
def tmpfs(system) -> Iterator[Mount]:  # type: ignore[no-untyped-def]
    """Mount small file systems on a system's directories; unmounted before the
    system is removed (this fixture is set up after ``system``, so torn down first)."""
    with contextlib.ExitStack() as stack:
        yield lambda directory, size: stack.enter_context(_tmpfs(directory, size))


def fill(directory: Path) -> Path:
    """Fill the file system of directory to the last block; the filler file."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as e:
        assert e.errno == errno.ENOSPC, e
    finally:
        os.close(fd)
    return filler


def leave_one_inode(directory: Path) -> list[Path]:
    """Use every inode of directory's file system but one, with empty files there."""
    fillers: list[Path] = []
    with contextlib.suppress(OSError):
        while True:
            fillers.append(directory / f"filler{len(fillers)}")
            fillers[-1].touch()
    fillers.pop()  # the one that failed
    fillers.pop().unlink()
    return fillers


@contextlib.contextmanager
def _spool_on_tmpfs(inst: Instance) -> Iterator[None]:
    """Start an instance whose queue directory is a small tmpfs (256 inodes); stop it
    before the tmpfs goes. Unless the test sets it, message_size_limit is 4 MB: smtpd
    refuses MAIL (452 4.3.1, as Postfix 3.7's) when the queue's file system holds less
    than 1.5 times the limit, and 8 MB is less than 1.5 times the default 10 MB."""
    if "message_size_limit" not in (inst.config_dir / "main.cf").read_text():
        inst.set(message_size_limit=str(4 << 20))
    inst.queue_dir.mkdir(mode=0o755)
    with _tmpfs(inst.queue_dir, "8m", inodes=256):
        inst.start()
        try:
            yield
        finally:
            inst.stop()


@contextlib.contextmanager
def _ext4_on_a_full_disk(mountpoint: Path) -> Iterator[Callable[[bool], None]]:
    """An ext4 file system on a loop device mounted on mountpoint, whose backing file
    lies on a small tmpfs; yields ``full(True)`` to fill that tmpfs (from then on the
    file system's writes to its disk fail: an fsync answers an error, though the
    writes before it went into the page cache) and ``full(False)`` to make room."""
    backing = Path(tempfile.mkdtemp(prefix="pymailsys-disk-", dir="/tmp"))
    with contextlib.ExitStack() as stack:
        stack.callback(backing.rmdir)
        stack.enter_context(_tmpfs(backing, "48m"))
        image = backing / "disk.img"
        with open(image, "wb") as f:
            f.truncate(96 << 20)  # sparse: written as the file system is
        subprocess.run(["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0",
                        str(image)], check=True)
        loop = subprocess.run(["losetup", "-f", "--show", str(image)], check=True,
                              capture_output=True, text=True).stdout.strip()
        stack.callback(subprocess.run, ["losetup", "-d", loop], check=False)
        # commit=300: no periodic journal commit while the disk is full (one that fails
        # aborts the journal and leaves the file system read-only after the room is back)
        subprocess.run(["mount", "-o", "errors=continue,commit=300", loop, str(mountpoint)],
                       check=True)
        stack.callback(subprocess.run, ["umount", "-l", str(mountpoint)], check=False)
        filler = backing / "filler"

        def full(yes: bool) -> None:
            if yes:
                subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=1M"],
                               capture_output=True, check=False)
            else:
                filler.unlink()

        yield full


def data_reply(inst: Instance, message: bytes) -> tuple[int, bytes]:
    """The reply to a message from ME to ME over SMTP, whatever it is."""
    with inst.smtp() as client:
        client.ehlo()
        client.mail(f"{ME}@localhost")
        client.rcpt(f"{ME}@localhost")
        return client.data(message)


# --- status logs --------------------------------------------------------------------

@pytest.mark.root
def test_a_status_log_entry_that_does_not_fit_is_refused_whole(tmp_path: Path) -> None:
    """The disk fills up in the middle of an entry: the write stops short. The append
    fails, and the log is as it was, so that the next entry is not torn with it."""
    logs = tmp_path / "defer"
    logs.mkdir()
    with _tmpfs(logs, "4k"):
        path = str(logs / "ABCDEF12345")
        first = status_log.Entry("a@example.org", "4.0.0", "delayed", "x" * 4000)
        status_log.append(path, first)
        size = os.path.getsize(path)
        second = status_log.Entry("b@example.org", "4.4.1", "delayed", "connection refused")
        with pytest.raises(OSError) as e:
            status_log.append(path, second)
        assert e.value.errno == errno.ENOSPC
        assert os.path.getsize(path) == size
        subprocess.run(["mount", "-o", "remount,size=64k", str(logs)], check=True)
        status_log.append(path, second)
        assert [(x.recipient, x.status, x.reason) for x in status_log.read(path)] == [
            ("a@example.org", "4.0.0", "x" * 4000),
            ("b@example.org", "4.4.1", "connection refused")]


# --- qmgr -----------------------------------------------------------------------------

@pytest.mark.root
def test_a_bounce_that_cannot_be_logged_is_deferred_not_dropped(
        system, tmpfs: Mount) -> None:  # type: ignore[no-untyped-def]
    """bounce/ is full: the recipient's bounce cannot be recorded, so it is not marked
    done but deferred (Postfix: ``bounce or trace service failure``); once there is
    room, the next attempt bounces it and the sender gets the notice."""
    s: Standalone = system()
    filler = fill(tmpfs(s.queue_dir / "bounce", "16k"))
    s.start()
    qid = s.queue(f"{ME}@localhost", ["nosuchuser@localhost"], BODY)
    s.wait_log(rf"{qid}: to=<nosuchuser@localhost>, relay=none, .*dsn=4\.3\.0, "
               r"status=deferred \(bounce or trace service failure\)")
    s.wait_log(rf"warning: {qid}: cannot update bounce log: No space left on device")
    wait_until(lambda: qid in s.queue_ids("deferred"), 20, what="the message in deferred/")
    assert not re.search(rf"{qid}: removed", s.log())
    assert s.maildir_messages() == []

    filler.unlink()
    s.trigger(b"AD")
    s.wait_log(rf"{qid}: sender non-delivery notification: \w+")
    s.wait_log(rf"{qid}: removed")
    (notice,) = wait_until(s.maildir_messages, 30, what="the notice in the Maildir")
    assert b"\nSubject: Undelivered Mail Returned to Sender\n" in notice
    assert b'<nosuchuser@localhost>: unknown user: "nosuchuser"' in notice


@pytest.mark.root
def test_an_expired_message_returns_every_recipient_its_defer_log_misses(
        system, tmpfs: Mount) -> None:  # type: ignore[no-untyped-def]
    """defer/ fills up while a message's recipients are deferred: the log names only
    the first of them. The message expires (maximal_queue_lifetime = 0) and is
    removed; the notice lists every recipient, not only those the log names."""
    s: Standalone = system(maximal_queue_lifetime="0")
    defer = tmpfs(s.queue_dir / "defer", "16k")
    filler = fill(defer)
    os.truncate(filler, filler.stat().st_size - 4096)  # room for a page of entries
    s.start()
    rcpts = [f"r{n:02d}@remote.example" for n in range(40)]  # no smtp agent: all defer
    qid = s.queue(f"{ME}@localhost", rcpts, BODY)
    s.wait_log(rf"warning: {qid}: cannot update defer log: No space left on device")
    s.wait_log(rf"{qid}: from=<{ME}@localhost>, status=expired, returned to sender")
    s.wait_log(rf"{qid}: sender non-delivery notification: \w+")
    s.wait_log(rf"{qid}: removed")
    (notice,) = wait_until(s.maildir_messages, 30, what="the notice in the Maildir")
    assert b"\nSubject: Undelivered Mail Returned to Sender\n" in notice
    returned = re.findall(rb"\nFinal-Recipient: rfc822; (r\d\d@remote\.example)\n", notice)
    assert sorted(r.decode() for r in returned) == rcpts


def test_a_file_whose_content_an_agent_finds_damaged_goes_to_corrupt(system) -> None:  # type: ignore[no-untyped-def]
    """The envelope reads well, the content does not (a record with no type): local
    defers, and qmgr saves the file to corrupt/ for a human, as Postfix does, instead
    of trying it again and again (its bounce, at expiry, could not read it either)."""
    s: Standalone = system()
    qid = s.queue("alice@example.org", [f"{ME}@localhost"], BODY, kick=False)
    path = s.spool.path("incoming", qid)
    data = bytearray(Path(path).read_bytes())
    data[read_envelope(path).data_offset] = 0xFF  # the first content record's type
    Path(path).write_bytes(bytes(data))
    s.start()
    s.trigger(b"I")
    s.wait_log(rf"{qid}: to=<{ME}@localhost>, relay=local, .*status=deferred "
               r"\(cannot read queue file\)")
    s.wait_log(rf'warning: saving corrupt file "{qid}" from queue "active" to queue "corrupt"')
    assert s.queue_ids("corrupt") == [qid]
    assert not s.queue_ids("deferred") and not s.queue_ids("active")
    assert Path(s.spool.path("corrupt", qid)).read_bytes() == bytes(data)  # kept as it was
    assert s.maildir_messages() == []


def test_a_queue_file_cut_short_goes_to_corrupt_never_away(system) -> None:  # type: ignore[no-untyped-def]
    """A complete queue file in deferred/ cut short on disk (a crash of the disk, not
    of the mail system): qmgr cannot read it, saves it to corrupt/ with a warning and
    goes on; it is never delivered in part, never deleted."""
    s: Standalone = system()
    qid = s.queue("alice@example.org", [f"{ME}@localhost"], BODY, kick=False)
    path = Path(s.spool.move(qid, "incoming", "deferred"))
    os.truncate(path, path.stat().st_size // 2)
    cut = path.read_bytes()
    s.start()
    s.trigger(b"AD")
    s.wait_log(rf'warning: saving corrupt file "{qid}" from queue "active" to queue "corrupt"')
    assert Path(s.spool.path("corrupt", qid)).read_bytes() == cut
    assert s.maildir_messages() == []
    assert not re.search(rf"{qid}: removed", s.log())


@pytest.mark.root
def test_a_bounce_service_killed_in_mid_request_leaves_the_message_deferred(
        system) -> None:  # type: ignore[no-untyped-def]
    """kill -9 of the bounce service while qmgr waits for it to queue a notice: the
    message stays (deferred), and once the service is back the notice goes out."""
    s: Standalone = system()
    s.start()
    os.kill(s.procs["bounce"].pid, signal.SIGSTOP)  # it takes qmgr's request, never answers
    qid = s.queue(f"{ME}@localhost", ["nosuchuser@localhost"], BODY)
    s.wait_log(rf"{qid}: to=<nosuchuser@localhost>, relay=local, .*status=bounced")
    wait_until(lambda: qid in s.queue_ids("active"), 10, what="the message active")
    s.kill("bounce")
    s.wait_log(rf"warning: {qid}: bounce service: ")
    wait_until(lambda: qid in s.queue_ids("deferred"), 20, what="the message in deferred/")
    assert not re.search(rf"{qid}: removed", s.log())
    s.start("bounce")
    s.trigger(b"AD")
    s.wait_log(rf"{qid}: sender non-delivery notification: \w+")
    s.wait_log(rf"{qid}: removed")
    (notice,) = wait_until(s.maildir_messages, 30, what="the notice in the Maildir")
    assert b'<nosuchuser@localhost>: unknown user: "nosuchuser"' in notice


def test_a_status_log_that_cannot_be_read_leaves_the_message_deferred(
        system) -> None:  # type: ignore[no-untyped-def]
    """qmgr cannot read the message's bounce log when it finishes the attempt (here a
    directory stands in its place): the message is deferred for a later try, not left
    in active/ until qmgr's next start."""
    s: Standalone = system()
    qid = s.queue(f"{ME}@localhost", ["nosuchuser@localhost"], BODY, kick=False)
    (s.queue_dir / "bounce" / qid).mkdir()
    s.start()
    s.trigger(b"I")
    s.wait_log(rf"warning: {qid}: cannot finish the delivery attempt: .*Is a directory")
    wait_until(lambda: qid in s.queue_ids("deferred"), 20, what="the message in deferred/")
    assert qid not in s.queue_ids("active")


# --- local ------------------------------------------------------------------------------

@pytest.mark.root
def test_an_mbox_append_that_fills_the_disk_leaves_the_mailbox_as_it_was(
        system, tmpfs: Mount) -> None:  # type: ignore[no-untyped-def]
    """The mailbox's file system fills up in the middle of a message: local truncates
    the mbox back to its old length (earlier mail intact, no partial message) and
    defers; once there is room the message is appended whole, once."""
    s: Standalone = system(maildir=False)
    tmpfs(s.mail_dir, "256k")
    s.start()
    first = s.queue("alice@example.org", [f"{ME}@localhost"], b"Subject: first\n\nfirst\n")
    s.wait_log(rf"{first}: removed")
    before = (s.mail_dir / ME).read_bytes()
    filler = fill(s.mail_dir)
    body = b"".join(b"line %05d of a message bigger than the room left\n" % n for n in range(400))
    second = s.queue("alice@example.org", [f"{ME}@localhost"], b"Subject: second\n\n" + body)
    s.wait_log(rf"{second}: to=<{ME}@localhost>, relay=local, .*dsn=4\.3\.0, status=deferred "
               r"\(cannot update mailbox .*error writing message: No space left on device\)")
    assert (s.mail_dir / ME).read_bytes() == before
    filler.unlink()
    s.trigger(b"AD")
    s.wait_log(rf"{second}: removed")
    after = (s.mail_dir / ME).read_bytes()
    assert after.startswith(before)
    added = after[len(before):]
    assert added.count(b"\nSubject: second\n") == 1 and added.endswith(body + b"\n")


@pytest.mark.root
def test_a_maildir_delivery_that_fills_the_disk_leaves_nothing_in_new(
        system, tmpfs: Mount) -> None:  # type: ignore[no-untyped-def]
    """The Maildir's file system fills up while the message is written to tmp/: the
    delivery defers, new/ never sees a partial file and tmp/ keeps none; once there
    is room the message arrives whole, once."""
    s: Standalone = system()
    tmpfs(s.mail_dir, "256k")
    s.start()
    first = s.queue("alice@example.org", [f"{ME}@localhost"], b"Subject: first\n\nfirst\n")
    s.wait_log(rf"{first}: removed")
    filler = fill(s.mail_dir)
    body = b"".join(b"line %05d of a message bigger than the room left\n" % n for n in range(400))
    second = s.queue("alice@example.org", [f"{ME}@localhost"], b"Subject: second\n\n" + body)
    s.wait_log(rf"{second}: to=<{ME}@localhost>, relay=local, .*dsn=4\.3\.0, status=deferred "
               r"\(.*No space left on device\)")
    assert [m.count(b"\nSubject: first\n") for m in s.maildir_messages()] == [1]
    assert os.listdir(s.maildir() / "tmp") == []
    filler.unlink()
    s.trigger(b"AD")
    s.wait_log(rf"{second}: removed")
    (old, new) = sorted(s.maildir_messages(), key=len)
    assert b"\nSubject: first\n" in old and new.endswith(b"\n\n" + body)
    assert os.listdir(s.maildir() / "tmp") == []


# --- pickup and cleanup ---

@pytest.mark.root
def test_a_queue_file_that_cannot_be_named_leaves_no_file_behind(
        new_instance) -> None:  # type: ignore[no-untyped-def]
    """incoming/ is hashed and the spool's file system has one inode left: cleanup
    creates its temporary file, then cannot make the hashed subdirectory for the
    final name. The client gets 451 and the temporary file is gone (it stayed, and
    its descriptor stayed open in cleanup, one of each per refused message)."""
    inst = new_instance(maildir=True, settings={"hash_queue_names": "deferred, defer, incoming"})
    with _spool_on_tmpfs(inst):
        incoming = inst.queue_dir / "incoming"
        fillers = leave_one_inode(incoming)  # room for the temporary file, none for a directory
        assert data_reply(inst, b"Subject: no room\r\n\r\nbody\r\n") == (
            451, b"4.3.0 Error: queue file write error")
        assert sorted(os.listdir(incoming)) == sorted(f.name for f in fillers)
        for f in fillers:
            f.unlink()
        inst.send(f"{ME}@localhost", f"{ME}@localhost", b"Subject: room\r\n\r\nbody\r\n")
        wait_until(lambda: [m for m in inst.maildir_messages() if b"\nSubject: room\n" in m],
                   30, what="the next message delivered")  # beside postmaster's 451 notice


@pytest.mark.root
def test_a_queue_file_whose_fsync_fails_is_refused_and_removed(
        new_instance) -> None:  # type: ignore[no-untyped-def]
    """The spool's disk stops taking writes: cleanup's write goes into the page cache,
    its fsync fails. The client gets 451 (never 250), and no file of the message is
    left where qmgr could take it (qmgr may have taken it before the fsync: at worst
    a duplicate once the client sends again). With room again, the message is taken."""
    inst = new_instance(maildir=True)
    inst.queue_dir.mkdir(mode=0o755)
    with _ext4_on_a_full_disk(inst.queue_dir) as full:
        inst.start()
        try:
            full(True)
            assert data_reply(inst, b"Subject: no disk\r\n\r\nbody\r\n") == (
                451, b"4.3.0 Error: queue file write error")
            (line,) = inst.wait_log(r"warning: \w+: write queue file: No space left on device")
            qid = line.split("warning: ", 1)[1].split(":", 1)[0]
            for queue in ("incoming", "active", "deferred", "hold"):
                assert qid not in inst.queue_ids(queue), queue
            full(False)
            inst.send(f"{ME}@localhost", f"{ME}@localhost", b"Subject: disk\r\n\r\nbody\r\n")
            wait_until(lambda: [m for m in inst.maildir_messages() if b"\nSubject: disk\n" in m],
                       30, what="the next message delivered")
        finally:
            inst.stop()


@pytest.mark.root
def test_queue_minfree_refuses_with_452_and_leaves_no_file(
        new_instance) -> None:  # type: ignore[no-untyped-def]
    """Less room in the spool than queue_minfree: smtpd refuses MAIL with 452, as
    Postfix's; and where smtpd does not look (``-o queue_minfree=0 -o
    message_size_limit=0`` on its service: an 8 MB spool is short of 1.5 times 10 MB),
    cleanup refuses the message with 452 before a queue file is made, never accepted
    and dropped."""
    inst = new_instance(maildir=True, settings={"queue_minfree": str(64 << 20)})
    with _spool_on_tmpfs(inst):
        with inst.smtp() as client:
            client.ehlo()
            assert client.mail(f"{ME}@localhost") == (452, b"4.3.1 Insufficient system storage")
    inst.queue_dir.rmdir()  # the tmpfs's mount point, made anew
    master_cf = inst.config_dir / "master.cf"
    master_cf.write_text(re.sub(r"^(\S+ +inet .* smtpd)$",
                                r"\1 -o queue_minfree=0 -o message_size_limit=0",
                                master_cf.read_text(), count=1, flags=re.M))
    with _spool_on_tmpfs(inst):
        assert data_reply(inst, b"Subject: no room\r\n\r\nbody\r\n") == (
            452, b"4.3.1 Error: Insufficient system storage")
        for queue in ("incoming", "active", "deferred", "hold"):
            assert inst.queue_ids(queue) == [], queue


def test_a_maildrop_message_with_too_many_hops_is_returned_not_dropped(
        new_instance) -> None:  # type: ignore[no-untyped-def]
    """sendmail said yes (the message waits in maildrop/ while the system is down);
    cleanup then refuses it for too many hops. pickup removes the file, so the
    message goes back to its sender (Postfix's cleanup_bounce), not into nothing."""
    inst = new_instance(maildir=True, settings={"hopcount_limit": "5"})
    inst.start()
    inst.stop()
    received = "".join(f"Received: from hop{n}.example by hop{n + 1}.example;"
                       f" Mon, 7 Dec 2026 08:0{n}:00 +0000\n" for n in range(6))
    r = inst.tool("sendmail", "-f", f"{ME}@localhost", "-i", f"{ME}@localhost",
                  input=f"{received}Subject: looping\n\nbody\n")
    assert r.returncode == 0, r.stderr
    maildrop = inst.queue_dir / "maildrop"
    assert len(os.listdir(maildrop)) == 1
    inst.start()
    (line,) = inst.wait_log(r"warning: (\w+): message rejected: hopcount exceeded")
    qid = re.search(r"warning: (\w+): message", line).group(1)  # type: ignore[union-attr]
    inst.wait_log(rf"{qid}: to=<{ME}@localhost>, relay=none, .*dsn=5\.4\.0, "
                  r"status=bounced \(too many hops\)")
    inst.wait_log(rf"{qid}: sender non-delivery notification: \w+")
    (notice,) = inst.wait_maildir(1)
    assert b"\nSubject: Undelivered Mail Returned to Sender\n" in notice
    assert f"<{ME}@localhost>: too many hops".encode() in notice
    assert b"\nSubject: looping\n" in notice  # the original comes back with it
    wait_until(lambda: not os.listdir(maildrop), 30, what="an empty maildrop")
    assert "error writing queue file" not in inst.log()



def test_a_maildrop_message_whose_queue_file_is_too_big_is_returned_not_dropped(
        new_instance) -> None:  # type: ignore[no-untyped-def]
    """The content is under message_size_limit (pickup lets it through), its queue file,
    with the records' overhead and the envelope, is not: cleanup refuses it (552), and
    it goes back to its sender instead of being removed with a warning."""
    inst = new_instance(maildir=True, settings={  # the notice returns the headers only
        "message_size_limit": "3000", "bounce_size_limit": "100"})
    inst.start()
    inst.stop()
    body = "\n" * 1450  # 1450 bytes of content, 2900 in records (2 bytes per empty line)
    r = inst.tool("sendmail", "-f", f"{ME}@localhost", "-i", f"{ME}@localhost",
                  input=f"Subject: records\n\n{body}")
    assert r.returncode == 0, r.stderr
    inst.start()
    (line,) = inst.wait_log(r"warning: (\w+): queue file size limit exceeded")
    qid = line.split("warning: ", 1)[1].split(":", 1)[0]
    inst.wait_log(rf"{qid}: to=<{ME}@localhost>, relay=none, .*dsn=5\.3\.4, "
                  r"status=bounced \(message file too big\)")
    inst.wait_log(rf"{qid}: sender non-delivery notification: \w+")
    (notice,) = inst.wait_maildir(1)
    assert f"<{ME}@localhost>: message file too big".encode() in notice
    wait_until(lambda: not os.listdir(inst.queue_dir / "maildrop"), 30, what="an empty maildrop")


def test_cleanup_killed_in_mid_message_is_a_451_never_a_250(
        new_instance) -> None:  # type: ignore[no-untyped-def]
    """kill -9 of cleanup while smtpd waits for it to queue a message: the client gets
    a 4xx (and may send again), no queue file of it is left, and the next message,
    to a cleanup that master started anew, is taken."""
    inst = new_instance(maildir=True)
    inst.start()
    warm = inst.send(f"{ME}@localhost", f"{ME}@localhost", b"Subject: warm\r\n\r\nup\r\n")
    inst.wait_log(rf"{warm}: removed")  # cleanup is connected to smtpd and to qmgr
    (cleanup,) = inst.daemons()["cleanup"]
    os.kill(cleanup, signal.SIGSTOP)  # it takes smtpd's request and never answers
    replies: list[tuple[int, bytes]] = []
    sender = threading.Thread(target=lambda: replies.append(
        data_reply(inst, b"Subject: lost\r\n\r\nbody\r\n")))
    sender.start()
    time.sleep(1.0)  # the message on its way to cleanup (a 250 later would fail the test)
    os.kill(cleanup, signal.SIGKILL)
    sender.join(60)
    ((code, _text),) = replies
    assert 400 <= code < 500, replies
    # no queue file of it left (once the postmaster's notice of smtpd's error, which the
    # new cleanup queues about when the reply comes, has been delivered and removed)
    wait_until(lambda: not any(inst.queue_ids(q) for q in ("incoming", "active", "deferred",
                                                           "hold")),
               30, what="no queue file of the lost message")
    inst.send(f"{ME}@localhost", f"{ME}@localhost", b"Subject: after\r\n\r\nbody\r\n")
    wait_until(lambda: [m for m in inst.maildir_messages() if b"\nSubject: after\n" in m],
               30, what="the next message delivered")
    assert not [m for m in inst.maildir_messages() if b"\nSubject: lost\n" in m]


def test_a_maildrop_file_stays_until_cleanup_has_queued_it(
        new_instance) -> None:  # type: ignore[no-untyped-def]
    """pickup hands a maildrop file to cleanup, and cleanup is killed before it answers:
    the file stays in maildrop/ and goes through once cleanup is back."""
    inst = new_instance(maildir=True)
    inst.start()
    # a first submission: pickup and cleanup running, pickup connected to this cleanup
    assert inst.tool("sendmail", "-i", f"{ME}@localhost", input="Subject: warm\n\nup\n"
                     ).returncode == 0
    inst.wait_maildir(1)
    (cleanup,) = inst.daemons()["cleanup"]
    os.kill(cleanup, signal.SIGSTOP)
    spool = Spool(str(inst.queue_dir))
    name = write_maildrop(spool, Submission(sender=f"{ME}@localhost",
                                            recipients=[f"{ME}@localhost"],
                                            lines=[b"Subject: dropped", b"", b"body"]))
    assert trigger.send_trigger(spool.public("pickup"), trigger.WAKEUP)
    time.sleep(1.0)  # pickup's request on its way to the stopped cleanup
    os.kill(cleanup, signal.SIGKILL)
    inst.wait_log(r"postfix/pickup\[\d+\]: warning: connect to cleanup service")
    assert os.listdir(inst.queue_dir / "maildrop") == [name]
    assert trigger.send_trigger(spool.public("pickup"), trigger.WAKEUP)
    wait_until(lambda: [m for m in inst.maildir_messages() if b"\nSubject: dropped\n" in m],
               30, what="the maildrop message delivered")
    wait_until(lambda: not os.listdir(inst.queue_dir / "maildrop"), 30, what="an empty maildrop")


@pytest.mark.root
def test_sendmail_on_a_full_maildrop_fails_and_leaves_no_file(
        new_instance) -> None:  # type: ignore[no-untyped-def]
    """The system is down and maildrop/ is full: sendmail says so (exit 75) instead of
    0, and leaves no file behind; with room again, the same command is taken."""
    inst = new_instance(maildir=True)
    inst.start()
    inst.stop()
    maildrop = inst.queue_dir / "maildrop"
    message = "Subject: full\n\n" + "a line of a message that does not fit\n" * 200
    with _tmpfs(maildrop, "64k"):
        filler = fill(maildrop)
        r = inst.tool("sendmail", "-i", f"{ME}@localhost", input=message)
        assert r.returncode == os.EX_TEMPFAIL, (r.returncode, r.stderr)
        assert "error writing queue file: No space left on device" in r.stderr
        assert os.listdir(maildrop) == [filler.name]
        filler.unlink()
        r = inst.tool("sendmail", "-i", f"{ME}@localhost", input=message)
        assert r.returncode == 0, r.stderr
        assert len(os.listdir(maildrop)) == 1


# --- postsuper and postqueue against qmgr ----------------------------------------------

def test_postsuper_and_a_flush_leave_a_message_in_delivery_alone(
        new_instance, slow_command) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    """While local delivers a message (qmgr holds its file locked), postsuper -d, -h,
    -r and -e, one by one and for ALL, skip it, and a flush does not take it a second
    time: it is delivered exactly once and then removed, nothing left anywhere."""
    script, out = slow_command
    inst = new_instance(maildir=True, settings={"mailbox_command": str(script)})
    inst.start()
    qid = inst.send(f"{ME}@localhost", f"{ME}@localhost", b"Subject: busy\r\n\r\nbusy\r\n")
    wait_until(lambda: len(events(out)) >= 2, 30, what="the delivery running")
    for args in (("-d", qid), ("-h", qid), ("-r", qid), ("-e", qid),
                 ("-d", "ALL"), ("-h", "ALL"), ("-r", "ALL"), ("-e", "ALL")):
        r = inst.tool("postsuper", *args)
        assert f"{qid}: skipped, still being delivered" in r.stderr, (args, r.stderr)
    assert inst.tool("postsuper", "-H", "ALL").returncode == 0  # nothing on hold
    assert inst.tool("postqueue", "-f").returncode == 0
    assert inst.queue_ids("active") == [qid]
    (out / "go").touch()
    inst.wait_log(rf"{qid}: removed")
    assert len(list(out.glob("msg.*"))) == 1
    assert events(out)[::2] == ["start", "end"]
    for queue in ("maildrop", "incoming", "active", "deferred", "hold", "corrupt"):
        assert inst.queue_ids(queue) == [], queue


def test_postsuper_e_returns_a_deferred_message_to_its_sender(
        new_instance) -> None:  # type: ignore[no-untyped-def]
    """postsuper -e (and -f for a message on hold) marks a message expired: at its
    next attempt qmgr returns it to the sender, ``status=force-expired``, with the
    reasons of its last attempt, or 'message is administratively expired' when it
    had none, instead of trying its recipients again and again."""
    inst = new_instance(maildir=True, settings={
        "default_transport": "retry:4.4.1 remote site down",
        "smtpd_reject_unlisted_recipient": "no",  # else refused at RCPT, as Postfix's smtpd
        "header_checks": "regexp:${config_directory}/header_checks"})
    inst.write("etc/header_checks", "/^Subject: hold me/ HOLD\n")
    inst.start()
    deferred = inst.send(f"{ME}@localhost", "bob@remote.example",
                         b"Subject: try me\r\n\r\nbody\r\n")
    inst.wait_log(rf"{deferred}: to=<bob@remote\.example>, .*status=deferred \(remote site down\)")
    wait_until(lambda: deferred in inst.queue_ids("deferred"), 20, what="the message deferred")
    held = inst.send(f"{ME}@localhost", "carol@remote.example",
                     b"Subject: hold me\r\n\r\nbody\r\n")
    wait_until(lambda: held in inst.queue_ids("hold"), 20, what="the message on hold")
    assert f"{deferred}: expired" in inst.tool("postsuper", "-e", deferred).stderr
    assert f"{held}: released from hold" in inst.tool("postsuper", "-f", held).stderr
    inst.tool("postqueue", "-f", check=True)
    for qid in (deferred, held):
        inst.wait_log(rf"{qid}: from=<{ME}@localhost>, status=force-expired, returned to sender")
        inst.wait_log(rf"{qid}: removed")
    notices = inst.wait_maildir(2)
    words = [b" ".join(n.split()) for n in notices]  # report lines wrap at 79 columns
    (first,) = [n for n in words if b"<bob@remote.example>:" in n]
    assert b"remote site down" in first
    (second,) = [n for n in words if b"<carol@remote.example>:" in n]
    assert b"message is administratively expired" in second
    assert inst.log().count(f"{deferred}: to=<bob@remote.example>") == 1  # not tried again


def test_postsuper_does_not_release_a_rejected_message_on_its_way_back(
        new_instance) -> None:  # type: ignore[no-untyped-def]
    """A local submission that header_checks rejects waits in hold/ while the bounce
    service returns it to its sender. postsuper -H (and -r) meanwhile skip it: a
    release would have delivered the message that was refused."""
    inst = new_instance(maildir=True, settings={
        "header_checks": "regexp:${config_directory}/header_checks"})
    inst.write("etc/header_checks", "/^Subject: reject me/ REJECT 5.7.1 not this one\n")
    inst.start()

    def submit(subject: str) -> subprocess.CompletedProcess:
        return inst.tool("sendmail", "-i", f"{ME}@localhost",
                         input=f"Subject: {subject}\n\nbody\n")

    assert submit("reject me first").returncode == 0  # a bounce service is running now
    inst.wait_maildir(1)
    bounce = inst.daemons()["bounce"]
    for pid in bounce:
        os.kill(pid, signal.SIGSTOP)  # it takes cleanup's next request, answers later
    done: list[subprocess.CompletedProcess] = []
    sender = threading.Thread(target=lambda: done.append(submit("reject me second")))
    sender.start()
    try:
        (held,) = wait_until(lambda: inst.queue_ids("hold"), 30, what="the file in hold/")
        for args in (("-H", "ALL"), ("-H", held), ("-r", held)):
            r = inst.tool("postsuper", *args)
            assert f"{held}: skipped, still being delivered" in r.stderr, (args, r.stderr)
    finally:
        for pid in bounce:
            os.kill(pid, signal.SIGCONT)
        sender.join(60)
    assert done[0].returncode == 0, done[0].stderr
    notices = inst.wait_maildir(2)
    assert all(b"\nSubject: Undelivered Mail Returned to Sender\n" in n for n in notices)
    assert not re.search(rf"{held}: to=<{ME}@localhost>, relay=local", inst.log())
    for queue in ("hold", "deferred", "maildrop", "incoming", "active"):
        assert inst.queue_ids(queue) == [], queue


def test_postfix_stop_while_a_message_is_delivered_loses_nothing(
        new_instance, slow_command) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    """postfix stop while local runs a delivery that has not finished: after a start
    the message is delivered (a second time at worst, never zero times) and removed."""
    script, out = slow_command
    inst = new_instance(maildir=True, settings={"mailbox_command": str(script)})
    inst.start()
    qid = inst.send(f"{ME}@localhost", f"{ME}@localhost", b"Subject: stop\r\n\r\nstop\r\n")
    wait_until(lambda: len(events(out)) >= 2, 30, what="the delivery running")
    inst.stop()
    assert qid in inst.queue_ids("active") + inst.queue_ids("incoming") + inst.queue_ids(
        "deferred")
    (out / "go").touch()
    inst.start()
    inst.tool("postqueue", "-f", check=True)
    inst.wait_log(rf"{qid}: removed", timeout=90)
    assert 1 <= len(list(out.glob("msg.*"))) <= 2


@pytest.mark.root
def test_a_message_that_cannot_move_to_deferred_is_not_left_in_active(
        new_instance) -> None:  # type: ignore[no-untyped-def]
    """The spool's file system has no inode left when a deferred message should go to
    deferred/ (whose hashed subdirectory is not there yet): qmgr puts it back in
    incoming/ for a later try, instead of leaving it in active/ until its next start."""
    inst = new_instance(maildir=True, settings={
        "default_transport": "retry:4.4.1 remote site down",
        "smtpd_reject_unlisted_recipient": "no"})  # else refused at RCPT, as Postfix's smtpd
    with _spool_on_tmpfs(inst):
        incoming = inst.queue_dir / "incoming"
        fillers = leave_one_inode(incoming)  # room for the queue file, none for deferred/'s subdirectory
        qid = inst.send(f"{ME}@localhost", "bob@remote.example", b"Subject: x\r\n\r\nbody\r\n")
        inst.wait_log(rf"warning: {qid}: cannot move to deferred: No space left on device")
        wait_until(lambda: qid in inst.queue_ids("incoming"), 20, what="the file back in incoming/")
        assert qid not in inst.queue_ids("active")
        for f in fillers:
            f.unlink()
        os.utime(incoming / qid)  # its try is due now, not in a minute
        inst.tool("postqueue", "-f", check=True)
        wait_until(lambda: qid in inst.queue_ids("deferred"), 30, what="the message deferred")
