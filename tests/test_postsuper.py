"""postsuper: -h/-H/-d/-r on single IDs, ALL and stdin lists; busy files are skipped."""

from __future__ import annotations

import fcntl
import os
import subprocess
from pathlib import Path

import pytest
from qf_helpers import make_spool, queue_file, tool

from pymailsys.queue import spool as queue

pytestmark = pytest.mark.root


def ids(spool: Path, qname: str) -> list[str]:
    return sorted(f for _d, _s, fs in os.walk(spool / qname) for f in fs)


def test_single_ids(tmp_path: Path) -> None:
    etc, spool = make_spool(tmp_path)
    a = queue_file(spool, "deferred", "a@x", ["r@y"], [b"x"])
    out = tool("postsuper", "-c", str(etc), "-h", a)
    assert out.returncode == 0, out.stderr
    assert out.stderr.decode().splitlines() == [f"postsuper: {a}: placed on hold",
                                                "postsuper: Placed on hold: 1 message"]
    assert ids(spool, "hold") == [a]
    out = tool("postsuper", "-c", str(etc), "-H", a)
    assert f"postsuper: {a}: released from hold" in out.stderr.decode()
    assert ids(spool, "deferred") == [a] and Path(queue.Spool(str(spool)).path("deferred", a)).exists()
    out = tool("postsuper", "-c", str(etc), "-r", a)
    assert "Requeued: 1 message" in out.stderr.decode()
    assert ids(spool, "maildrop") == [a]
    out = tool("postsuper", "-c", str(etc), "-d", a)
    assert out.stderr.decode().splitlines() == [f"postsuper: {a}: removed",
                                                "postsuper: Deleted: 1 message"]
    assert ids(spool, "maildrop") == []
    log = (tmp_path / "maillog").read_text()
    assert "postfix/postsuper[" in log and f"{a}: removed" in log


def test_all_stdin_and_queue_names(tmp_path: Path) -> None:
    etc, spool = make_spool(tmp_path)
    d = [queue_file(spool, "deferred", "a@x", ["r@y"], [b"x"]) for _ in range(3)]
    act = queue_file(spool, "active", "a@x", ["r@y"], [b"x"])
    out = tool("postsuper", "-c", str(etc), "-h", "ALL", "deferred")
    assert "Placed on hold: 3 messages" in out.stderr.decode()
    assert ids(spool, "hold") == sorted(d) and ids(spool, "active") == [act]
    out = tool("postsuper", "-c", str(etc), "-H", "-", input=f"{d[0]}\n{d[1]}\n".encode())
    assert "Released from hold: 2 messages" in out.stderr.decode()
    out = tool("postsuper", "-c", str(etc), "-d", "ALL")
    assert "Deleted: 4 messages" in out.stderr.decode()
    assert not any(ids(spool, q) for q in ("hold", "deferred", "active"))


def _delete_while_delivered(etc: Path, spool: Path, queue_id: str) -> subprocess.CompletedProcess:
    """postsuper -d of an active file that a delivery agent holds (its shared lock)."""
    fd = os.open(queue.Spool(str(spool)).path("active", queue_id), os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_SH)
    try:
        return tool("postsuper", "-c", str(etc), "-d", queue_id)
    finally:
        os.close(fd)


def test_busy_file_is_skipped(tmp_path: Path) -> None:
    etc, spool = make_spool(tmp_path)
    a = queue_file(spool, "active", "a@x", ["r@y"], [b"x"])
    out = _delete_while_delivered(etc, spool, a)
    assert f"{a}: skipped, still being delivered" in out.stderr.decode()
    assert "Deleted: 0 messages" in out.stderr.decode()
    assert ids(spool, "active") == [a]


def test_warnings_are_printed_once(tmp_path: Path) -> None:
    """Each warning once on stderr (log.init's stderr copy), as Postfix prints it."""
    etc, spool = make_spool(tmp_path)
    a = queue_file(spool, "active", "a@x", ["r@y"], [b"x"])
    bad = "postsuper: warning: invalid mail queue id: ../../etc/passwd"
    out = tool("postsuper", "-c", str(etc), "-d", "../../etc/passwd")
    assert out.stderr.decode().splitlines().count(bad) == 1, out.stderr
    out = tool("postsuper", "-c", str(etc), "-d", "")
    assert out.stderr.decode().splitlines().count(
        "postsuper: warning: invalid mail queue id: ") == 1, out.stderr
    out = tool("postsuper", "-c", str(etc), "-h", "-", input=b"../../etc/passwd\n")
    assert out.stderr.decode().splitlines().count(bad) == 1, out.stderr
    out = _delete_while_delivered(etc, spool, a)
    busy = f"postsuper: warning: {a}: skipped, still being delivered"
    assert out.stderr.decode().splitlines().count(busy) == 1, out.stderr
