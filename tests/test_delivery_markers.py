"""MarkerStore: claim and record a delivery's marker; collect removes the markers of queue
files that are gone, nothing else."""

from __future__ import annotations

import asyncio
import itertools
import os

import pytest

from pymailsys.delivery import mailbox
from pymailsys.queue import spool as queue


def _put(store: mailbox.MarkerStore, key: str, value: str) -> None:
    done, fd = store.claim(key)
    assert done is None
    store.record(fd, value)
    os.close(fd)


def test_claim_gives_an_empty_marker_once_then_the_recorded_name(tmp_path) -> None:  # type: ignore[no-untyped-def]
    store = mailbox.MarkerStore(str(tmp_path / "markers"))
    store.open()
    key = "3C2B020CBB2.1764900000000000.120.0a1b2c3d"
    done, fd = store.claim(key)
    assert done is None and store.get(key) is None  # empty until recorded: no delivery yet
    os.close(fd)  # the attempt stopped before its link
    done, fd = store.claim(key)  # the empty marker is taken again, emptied
    assert done is None
    store.record(fd, "1.V1I2M3.host")
    os.close(fd)  # the caller's close, after its link, releases the lock
    assert store.claim(key) == ("1.V1I2M3.host", -1)


def test_a_claimed_marker_is_a_lock_until_closed(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A second attempt of the same key waits for the first to record its name and close
    the marker (after its link; then it finishes what was recorded), and gives up with
    EAGAIN after MARKER_LOCK_WAIT."""
    import errno
    import threading
    import time

    store = mailbox.MarkerStore(str(tmp_path / "markers"))
    store.open()
    key = "3C2B020CBB2.1764900000000000.120.0a1b2c3d"
    done, fd = store.claim(key)
    assert done is None
    second: list[tuple[str | None, int]] = []
    waiter = threading.Thread(target=lambda: second.append(store.claim(key)))
    waiter.start()
    time.sleep(0.3)
    assert second == []  # still waiting for the first attempt
    store.record(fd, "1.V1I2M3.host")
    time.sleep(0.2)
    assert second == []  # recorded, not yet linked: still held
    os.close(fd)  # the caller's close, after its link, releases the lock
    waiter.join(10)
    assert second == [("1.V1I2M3.host", -1)]

    other = "3C2B020CBB2.1764900000000000.121.0a1b2c3d"
    done, fd = store.claim(other)
    monkeypatch.setattr(mailbox, "MARKER_LOCK_WAIT", 0.2)
    with pytest.raises(OSError) as refused:
        store.claim(other)
    assert refused.value.errno == errno.EAGAIN
    os.close(fd)


def test_claim_refuses_a_marker_that_is_no_regular_file_without_blocking(tmp_path) -> None:  # type: ignore[no-untyped-def]
    store = mailbox.MarkerStore(str(tmp_path / "markers"))
    store.open()
    key = "3C2B020CBB2.1764900000000000.120.0a1b2c3d"
    os.mkfifo(store.path(key))  # no reader: a blocking open would hang the agent
    with pytest.raises(OSError):
        store.claim(key)


def test_collect_removes_only_markers_of_queue_files_that_are_gone(tmp_path) -> None:  # type: ignore[no-untyped-def]
    store = mailbox.MarkerStore(str(tmp_path / "markers"))
    store.open()
    _put(store, "3C2B020CBB2.1764900000000000.120.0a1b2c3d", "1.V1I2M3.host")
    _put(store, "4D3C131DCC3.1764900000000000.120.0a1b2c3d", "2.V1I2M3.host")
    (tmp_path / "markers" / "not-a-marker").write_text("x")
    removed = asyncio.run(store.collect(lambda queue_id: queue_id == "4D3C131DCC3"))
    assert removed == 1
    assert sorted(store.keys()) == ["4D3C131DCC3.1764900000000000.120.0a1b2c3d", "not-a-marker"]


def test_collect_gives_the_event_loop_turns_while_it_searches(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A sweep of many markers must not hold up the agent's deliveries: between slices
    of ``per_turn`` markers searched or removed, other work of the event loop runs."""
    store = mailbox.MarkerStore(str(tmp_path / "markers"))
    store.open()
    for n in range(10):
        _put(store, f"{0x3C2B020CBB2 + n:011X}.1764900000000000.120.0a1b2c3d", "1.V1I2M3.host")
    searched = 0
    seen_by_other_work: list[int] = []

    def queued(queue_id: str) -> bool:
        nonlocal searched
        searched += 1
        return False

    async def other_work(stop: asyncio.Event) -> None:
        while not stop.is_set():
            seen_by_other_work.append(searched)
            await asyncio.sleep(0)

    async def sweep() -> int:
        stop = asyncio.Event()
        worker = asyncio.ensure_future(other_work(stop))
        await asyncio.sleep(0)
        removed = await store.collect(queued, per_turn=3)
        stop.set()
        await worker
        return removed

    assert asyncio.run(sweep()) == 10
    assert store.keys() == []
    # 10 first searches, 10 second ones, 10 removals: a turn after every third
    assert len(set(seen_by_other_work)) >= 6
    assert max(b - a for a, b in itertools.pairwise(seen_by_other_work)) <= 3


def test_open_refuses_a_directory_that_is_not_the_agents_alone(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A marker directory must be the agent's own: a symbolic link in its place is not
    followed, and one that others can write is refused; the store keeps working in the
    directory it checked whatever later happens to the name."""
    import errno

    target = tmp_path / "elsewhere"
    target.mkdir(mode=0o700)
    os.symlink(target, tmp_path / "linked")
    with pytest.raises(OSError) as linked:
        mailbox.MarkerStore(str(tmp_path / "linked")).open()
    assert linked.value.errno in (errno.ELOOP, errno.ENOTDIR)
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(OSError) as writable:
        mailbox.MarkerStore(str(shared)).open()
    assert writable.value.errno == errno.EPERM and "mode 0777" in (writable.value.strerror or "")
    assert os.listdir(target) == [] and os.listdir(shared) == []

    store = mailbox.MarkerStore(str(tmp_path / "markers"))
    store.open()
    assert (tmp_path / "markers").stat().st_mode & 0o777 == 0o700
    os.rename(tmp_path / "markers", tmp_path / "moved")
    os.symlink(target, tmp_path / "markers")
    _put(store, "3C2B020CBB2.1764900000000000.120.0a1b2c3d", "1.V1I2M3.host")
    assert os.listdir(tmp_path / "moved") == ["3C2B020CBB2.1764900000000000.120.0a1b2c3d"]
    assert os.listdir(target) == []


@pytest.mark.root
def test_open_refuses_a_directory_of_another_user(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Run as root: a marker directory that mail_owner (or anyone but root) owns is not
    root's to work in."""
    import errno
    import pwd

    other = tmp_path / "theirs"
    other.mkdir(mode=0o700)
    os.chown(other, pwd.getpwnam("nobody").pw_uid, -1)
    with pytest.raises(OSError) as refused:
        mailbox.MarkerStore(str(other)).open()
    assert refused.value.errno == errno.EPERM


def test_collect_keeps_a_marker_whose_file_moved_during_the_search(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A flush moves a file from deferred/ to incoming/ after the search passed incoming/:
    the first search misses it. The marker stays, because the second search finds it."""
    store = mailbox.MarkerStore(str(tmp_path / "markers"))
    store.open()
    _put(store, "3C2B020CBB2.1764900000000000.120.0a1b2c3d", "1.V1I2M3.host")
    _put(store, "4D3C131DCC3.1764900000000000.120.0a1b2c3d", "2.V1I2M3.host")
    asked: list[str] = []

    def queued(queue_id: str) -> bool:
        asked.append(queue_id)
        # the first is missed once (it moved), then found; the second is gone
        return queue_id == "3C2B020CBB2" and asked.count(queue_id) > 1

    assert asyncio.run(store.collect(queued)) == 1
    assert store.keys() == ["3C2B020CBB2.1764900000000000.120.0a1b2c3d"]
    assert asked.count("4D3C131DCC3") == 2  # gone in both searches


def test_queued_anywhere_answers_queued_on_any_doubt(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Only "no such file" means gone: a hashed directory that cannot be searched (here a
    symbolic-link loop, ELOOP even for root) must not make a deferred message look gone."""
    spool = queue.Spool(str(tmp_path))
    queue_id = "3C2B020CBB2"
    for name in mailbox.MARKER_QUEUES:
        os.makedirs(spool.dir(name))
    assert not mailbox.queued_anywhere(spool, queue_id)
    deferred = spool.path(queue.DEFERRED, queue_id)
    os.makedirs(os.path.dirname(deferred))
    with open(deferred, "w"):
        pass
    assert mailbox.queued_anywhere(spool, queue_id)
    os.unlink(deferred)
    assert not mailbox.queued_anywhere(spool, queue_id)
    os.rmdir(os.path.dirname(deferred))
    os.symlink(os.path.basename(os.path.dirname(deferred)), os.path.dirname(deferred))
    assert mailbox.queued_anywhere(spool, queue_id)
