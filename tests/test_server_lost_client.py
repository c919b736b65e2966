"""The server skeleton and a client that goes away: a reply written to a TCP connection
the client has reset (uvloop raises RuntimeError, asyncio drops the write) is no
"unexpected error" and no traceback in the log, and the service serves on.

smtpd handles this itself; any other service master runs on an inet socket goes
through the skeleton's client handling: here cleanup, as an administrator may put
it on a loopback port in master.cf.
"""

from __future__ import annotations

import os
import socket
import struct
import time
from pathlib import Path

from harness import free_port, listening, wait_until
from test_cleanup import _smtpd_request

from pymailsys.ipc.attr import SyncAttrClient, encode


def _queued(queue_dir: Path) -> set[str]:
    """The queue files in incoming/ and active/, read in that order: cleanup names a
    file to qmgr before its fsync, so qmgr may move it on before a poll of incoming/
    sees it, and then it is in active/ until its delivery ends."""
    return set(os.listdir(queue_dir / "incoming")) | set(os.listdir(queue_dir / "active"))


def test_a_client_reset_before_its_reply_is_no_error(new_instance) -> None:  # type: ignore[no-untyped-def]
    inst = new_instance()
    port = free_port()
    master_cf = inst.base / "etc" / "master.cf"
    master_cf.write_text(master_cf.read_text()
                         + f"127.0.0.1:{port} inet n - n - - cleanup\n")
    inst.start()
    wait_until(lambda: listening(port), 30, what="cleanup on its inet port")
    data = encode(_smtpd_request())
    reset = 0
    for _ in range(10):
        before = _queued(inst.queue_dir)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(data)
            deadline = time.monotonic() + 10
            new: set[str] = set()
            while not new and time.monotonic() < deadline:
                new = _queued(inst.queue_dir) - before  # cleanup has the request, its reply not yet
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        reset += bool(new)
    assert reset == 10
    with SyncAttrClient(str(inst.queue_dir / "public" / "cleanup")) as client:
        assert client.request(_smtpd_request()).text("status") == "0"
    time.sleep(1.0)
    log = inst.log()
    assert "unexpected error" not in log and "Traceback" not in log, log[-3000:]
