"""A large deferred queue (issue #15 item 3): the listing streams and is complete,
postsuper -d ALL removes every message, and qmgr admits new mail while it is
still working through the backlog; a maildrop/ full of files written while the
system was down is picked up whole, pickup's memory not growing with it; a
listing leaves the access times of what it reads alone. The figures at 10 k to 1 M messages come
from tests/bench/queue_scale.py; these tests hold no timing."""

from __future__ import annotations

import inspect
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

import pytest
from harness import ME, Instance
from qf_helpers import make_spool, queue_files
from test_public_services import as_user
from test_qmgr_scheduling import silent_peer  # noqa: F401 (a fixture)

from pymailsys.ipc import attr
from pymailsys.queue import listing, maildrop
from pymailsys.queue import spool as queue
from pymailsys.queue.scan import QueueScan

COUNT = 3000
BACKLOG = 500
REASON = "connect to dead.example[192.0.2.1]:25: Connection refused"
BODY = [b"Subject: backlog", b"", b"x" * 60]


def backlog(queue_dir: Path) -> list[str]:
    now = time.time()
    return queue_files(queue_dir, "deferred", "alice@example.org",
                       (f"d{i}@dead.example" for i in range(COUNT)), BODY,
                       arrival=now - 3600, mtime=now + 86400, reason=REASON)


def test_the_listing_is_read_as_it_is_sent(tmp_path: Path) -> None:
    """The scan is a generator: the first piece exists before the queue is read to
    its end, so what is removed after the first piece is not listed."""
    _etc, spool_dir = make_spool(tmp_path)
    backlog(spool_dir)
    spool = queue.Spool(str(spool_dir))
    assert inspect.isgenerator(spool.scan(queue.DEFERRED))
    assert inspect.isgenerator(listing.scan_queue(spool))
    chunks = listing.listing_chunks(spool, "text")
    first = next(chunks)
    assert first.startswith(b"-Queue ID-  --Size--")
    for entry in queue.walk_files(str(spool_dir / "deferred")):
        Path(entry.path).unlink()
    rest = b"".join(chunks)
    listed = int(re.findall(rb"-- \d+ Kbytes in (\d+) Requests?\.", rest)[0])
    assert 0 < listed < COUNT
    assert len(first) <= listing.CHUNK + 1024


def _age(path: str, now: float) -> float:
    """Make path's access time older than its modification time, so that a read under
    relatime updates it; the access time set."""
    atime = int(now) - 7200
    os.utime(path, (atime, int(now) - 3600))
    return atime


def test_a_listing_leaves_the_access_times_of_what_it_reads_alone(tmp_path: Path) -> None:
    """At a million messages the atime updates of a listing (two million dirty inodes
    for the journal) made mailq twice as slow per message as at 100,000."""
    _etc, spool_dir = make_spool(tmp_path)
    now = time.time()
    ids = queue_files(spool_dir, "deferred", "alice@example.org",
                      (f"d{i}@dead.example" for i in range(3)), BODY,
                      arrival=now - 3600, reason=REASON)
    spool = queue.Spool(str(spool_dir))
    read = [spool.path(q, queue_id) for queue_id in ids for q in (queue.DEFERRED, queue.DEFER)]
    control = str(tmp_path / "control")
    Path(control).write_bytes(b"x")
    control_atime = _age(control, now)
    with open(control, "rb") as f:
        f.read()
    if os.stat(control).st_atime == control_atime:
        pytest.skip("this filesystem does not update access times on read")
    atimes = {path: _age(path, now) for path in read}
    text = listing.format_text(listing.scan_queue(spool))
    assert "-- 0 Kbytes in 3 Requests." in text and text.count(f"({REASON})") == 3
    assert {path: os.stat(path).st_atime for path in read} == atimes


READ_WITHOUT_OWNING = """
import errno, os, sys
from pymailsys.bounded_read import open_keeping_atime
from pymailsys.queue import listing
path = sys.argv[1]
try:
    os.close(os.open(path, os.O_RDONLY | os.O_NOATIME))
    print("O_NOATIME allowed")
except PermissionError as e:
    print("EPERM" if e.errno == errno.EPERM else e.strerror)
print(os.read(open_keeping_atime(path, os.O_RDONLY), 100).decode())
print(listing.read_queue_file(path, 100) is not None)
"""


@pytest.mark.root
def test_a_file_of_another_user_is_still_read_without_o_noatime(python_user: str) -> None:
    """O_NOATIME is only for the file's owner (or root): maildrop files belong to their
    submitters, and showq, as mail_owner, must still list them."""
    work = tempfile.mkdtemp(prefix="noatime-")
    try:
        os.chmod(work, 0o755)
        path = os.path.join(work, "ABCDEF")
        Path(path).write_bytes(b"a file of root's")
        os.chmod(path, 0o744)
        out = as_user(python_user, READ_WITHOUT_OWNING, path).decode().splitlines()
        assert out == ["EPERM", "a file of root's", "True"]
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_a_scan_passes_over_no_file_when_its_budget_runs_out(tmp_path: Path) -> None:
    """qmgr asks its scan for the next file with a budget of entries to look at; when the
    budget ran out, the entry that ended it must still be there for the next call (it
    was dropped: a flush could pass over a message)."""
    _etc, spool_dir = make_spool(tmp_path)
    now = time.time()
    ids = queue_files(spool_dir, "deferred", "alice@example.org",
                      (f"d{i}@dead.example" for i in range(200)), BODY,
                      arrival=now - 3600, mtime=now - 60)
    active = set(ids[::2])  # every other message is already in the active queue
    scan = QueueScan(queue.Spool(str(spool_dir)), queue.DEFERRED)
    taken: list[str] = []
    for _ in range(10 * len(ids)):
        queue_id = scan.next(active, budget=1)
        if queue_id is None:
            break
        if queue_id:
            taken.append(queue_id)
    assert sorted(taken) == sorted(set(ids) - active)


def test_mailq_lists_and_postsuper_deletes_a_large_queue(new_instance) -> None:  # type: ignore[no-untyped-def]
    inst: Instance = new_instance()
    inst.set(queue_run_delay="3600s")
    inst.postfix("check")
    ids = backlog(inst.queue_dir)
    inst.start()
    out = inst.tool("mailq", check=True, timeout=300).stdout
    size = int(re.findall(r"^(\w+) +(\d+) ", out, re.M)[0][1])
    assert out.endswith(f"\n-- {COUNT * size // 1024} Kbytes in {COUNT} Requests.\n"), out[-300:]
    assert sorted(re.findall(r"^([0-9A-F]+) ", out, re.M)) == sorted(ids)
    assert out.count(f"({REASON})\n") == COUNT
    assert len(re.findall(r"^ {41}d\d+@dead\.example$", out, re.M)) == COUNT
    # showq sent it in pieces, each with "more" but the last
    with attr.SyncAttrClient(str(inst.queue_dir / "public" / "showq"), timeout=60) as client:
        reply = client.request({"request": "list", "format": "text"})
        pieces = [reply]
        while attr.continues(reply):
            reply = client.read()
            pieces.append(reply)
    assert pieces[0].raw("status") == b"0" and len(pieces) > 1
    assert b"".join(p.raw("listing") or b"" for p in pieces).decode() == out

    deleted = inst.tool("postsuper", "-d", "ALL", check=True, timeout=300)
    assert deleted.stderr.endswith(f"postsuper: Deleted: {COUNT} messages\n"), deleted.stderr[-300:]
    assert inst.queue_ids("deferred") == [] and inst.queue_ids("defer") == []
    assert inst.tool("mailq", check=True).stdout == "Mail queue is empty\n"


def test_new_mail_is_taken_before_the_deferred_scan_ends(new_instance,  # type: ignore[no-untyped-def]
                                                         silent_peer: int) -> None:  # noqa: F811
    """500 deferred messages are due when qmgr starts, for a peer that never greets:
    the active queue (limit 10) fills with them and waits out the greeting timeout.
    A message submitted meanwhile takes the first free slot, ahead of the rest of
    the deferred scan (as Postfix's qmgr alternates its incoming and deferred scans):
    it is taken before the last of the backlog, and delivered."""
    inst: Instance = new_instance()
    inst.set(transport_maps=f"inline:{{ dead.example=smtp:[127.0.0.1]:{silent_peer} }}",
             smtp_helo_timeout="10s", smtp_connect_timeout="10s",
             qmgr_message_active_limit="10", queue_run_delay="3600s")
    inst.postfix("check")
    now = time.time()
    queue_files(inst.queue_dir, "deferred", "alice@example.org",
                (f"d{i}@dead.example" for i in range(BACKLOG)), BODY, arrival=now - 3600,
                mtime=now - 60, reason=REASON)
    inst.start()
    inst.wait_log(r"nrcpt=1 \(queue active\)")
    queue_id = inst.send("alice@example.org", f"{ME}@localhost", b"Subject: new\r\n\r\nx\r\n")
    inst.wait_log(rf"{queue_id}: to=<{ME}@localhost>.*status=sent", timeout=600)
    inst.wait_log(r"nrcpt=1 \(queue active\)", count=BACKLOG + 1, timeout=600)
    lines = inst.log().splitlines()
    taken = [i for i, line in enumerate(lines)
             if re.search(r"from=<alice@example\.org>, size=\d+, nrcpt=1 \(queue active\)", line)]
    new_mail = next(i for i in taken if f" {queue_id}: from=" in lines[i])
    assert new_mail < taken[-1], "the new message waited for the whole deferred scan"


DROPPED = 2000
PICKUP_VMHWM_KB = 64 << 10  # generous: a pickup process is about 27 MB; a list of the
# directory sorted in memory grew it by about 70 bytes a file


def test_a_full_maildrop_is_picked_up_in_bounded_memory(new_instance) -> None:  # type: ignore[no-untyped-def]
    inst: Instance = new_instance()
    (inst.base / "hold.regexp").write_text("/^Subject: dropped/ HOLD\n")
    inst.set(header_checks=f"regexp:{inst.base / 'hold.regexp'}")  # no deliveries to wait for
    inst.postfix("check")
    spool = queue.Spool(str(inst.queue_dir))
    for i in range(DROPPED):
        maildrop.write_maildrop(spool, maildrop.Submission(
            sender="alice", recipients=[f"m{i}@example.org"],
            lines=[b"Subject: dropped", b"", b"text"]))
    inst.start(wait_smtp=False)
    inst.wait_log(r"postfix/pickup\[\d+\]: \w+: uid=\d+ from=<alice>", count=DROPPED,
                  timeout=600)
    assert not list((inst.queue_dir / "maildrop").iterdir())
    assert len(inst.queue_ids("hold")) == DROPPED
    pickup = inst.daemons()["pickup"]
    assert len(pickup) == 1  # the process that read the whole directory
    status = Path(f"/proc/{pickup[0]}/status").read_text()
    hwm = int(re.findall(r"^VmHWM:\s+(\d+) kB", status, re.M)[0])
    assert hwm < PICKUP_VMHWM_KB
