"""Without maillog_file, every daemon logs to syslog (facility mail) in Postfix's format."""

from __future__ import annotations

import os
import re
import socket
import threading
import time

import pytest
from harness import ME, Instance

pytestmark = pytest.mark.root

SYSLOG_SOCKET = "/dev/log"


def test_logs_go_to_syslog_with_postfix_tags(new_instance) -> None:  # type: ignore[no-untyped-def]
    if os.path.exists(SYSLOG_SOCKET):
        pytest.skip("a system syslog daemon owns /dev/log")
    sink = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sink.bind(SYSLOG_SOCKET)
    os.chmod(SYSLOG_SOCKET, 0o666)
    sink.settimeout(0.5)
    lines: list[str] = []
    stop = threading.Event()

    def read() -> None:  # like a syslog daemon: read all the time, or loggers block
        while not stop.is_set():
            try:
                lines.append(sink.recv(65536).decode("utf-8", "replace"))
            except TimeoutError:
                continue

    reader = threading.Thread(target=read)
    reader.start()
    try:
        inst: Instance = new_instance(settings={"maillog_file": ""})
        inst.start()
        queue_id = inst.send("alice@example.org", f"{ME}@localhost", b"Subject: s\r\n\r\nhi\r\n")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any(f"{queue_id}: removed" in x for x in lines):
            time.sleep(0.1)
        inst.stop()
    finally:
        stop.set()
        reader.join(10)
        sink.close()
        os.unlink(SYSLOG_SOCKET)
    text = "\n".join(lines)
    # <22> = facility mail (2) * 8 + severity info (6)
    assert re.search(r"^<22>\w{3} [ \d]\d \d\d:\d\d:\d\d postfix/smtpd\[\d+\]: connect from localhost\[127\.0\.0\.1\]$",
                     text, re.M), text
    assert re.search(rf"postfix/cleanup\[\d+\]: {queue_id}: message-id=<", text)
    assert re.search(rf"postfix/qmgr\[\d+\]: {queue_id}: from=<alice@example\.org>, size=\d+, nrcpt=1 \(queue active\)", text)
    assert re.search(rf"postfix/local\[\d+\]: {queue_id}: to=<{ME}@localhost>, relay=local, .*status=sent", text)
    assert re.search(rf"postfix/qmgr\[\d+\]: {queue_id}: removed", text)
    assert not inst.log_path.exists() or f"{queue_id}" not in inst.log()
