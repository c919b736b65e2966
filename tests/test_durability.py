"""Durability under real faults: nothing acknowledged is lost, no notice owed is dropped.

Faults are injected for real: a status-log directory on a small tmpfs that is full
(ENOSPC), queue files cut short or damaged on disk. The daemons are the real ones
(``test_qmgr.Standalone``: cleanup, qmgr, local and bounce without master), and the
assertions are what a user sees: log lines, queue directories, mailbox contents.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from harness import ME, wait_until
from test_qmgr import BODY, Standalone, standalone_systems

from pymailsys.queue import status_log
from pymailsys.queue.queue_file import read_envelope

Mount = Callable[[Path, str], Path]


@contextlib.contextmanager
def _tmpfs(directory: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted on directory, with its owner and mode."""
    st = directory.stat()
    options = f"size={size},mode={stat.S_IMODE(st.st_mode):o},uid={st.st_uid},gid={st.st_gid}"
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


# --- pickup and cleanup ------------------------------------------------------------

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
