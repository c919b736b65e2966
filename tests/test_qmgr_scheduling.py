"""qmgr's scheduler end to end: a dead destination does not hold back a healthy one.

A "dead" peer is a socket on 127.0.0.1 that the test listens on and never
serves: the kernel completes the connection and the smtp agent waits for a
greeting that never comes (smtp_helo_timeout, shortened here). The healthy
peer is Postfix's smtp-sink. The dead destination's backlog is written
straight into deferred/ with the library's queue-file writer.
"""

from __future__ import annotations

import re
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest
from harness import PYTHON, Instance, free_port, wait_until
from qf_helpers import queue_files
from test_e2e_outbound import Sink

TIMEOUT = 20  # smtp_helo_timeout for the dead peer
SUSPENDED = re.compile(r"postfix/qmgr\[\d+\]: (\w+): to=<d\d+@dead\.example>, relay=none, "
                       r"delay=[\d.]+, delays=[\d./]+, dsn=4\.\d\.\d, "
                       r"status=deferred \(delivery temporarily suspended: (.+)\)$", re.M)
TRIED = re.compile(r"postfix/smtp\[\d+\]: \w+: to=<d\d+@dead\.example>, .*status=deferred \((.+)\)$",
                   re.M)


@pytest.fixture
def silent_peer() -> Iterator[int]:
    """A port whose connections are accepted by the kernel and never answered."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(4096)
    yield s.getsockname()[1]
    s.close()


@pytest.fixture
def sink() -> Iterator[Sink]:
    s = Sink(free_port())
    yield s
    s.stop()


def dead_setup(inst: Instance, dead_port: int, healthy_port: int, backlog: int) -> None:
    inst.set(transport_maps=f"inline:{{ dead.example=smtp:[127.0.0.1]:{dead_port}, "
                            f"healthy.example=smtp:[127.0.0.1]:{healthy_port} }}",
             smtp_helo_timeout=f"{TIMEOUT}s", smtp_connect_timeout=f"{TIMEOUT}s")
    inst.postfix("check")  # creates the spool's directories
    queue_files(inst.queue_dir, "deferred", "alice@example.org",
                [f"d{i}@dead.example" for i in range(backlog)], [b"Subject: backlog", b"", b"x"],
                arrival=time.time())


@pytest.mark.parametrize("backlog", [0, 1000])
def test_a_dead_destination_does_not_delay_a_healthy_one(new_instance, sink, silent_peer,  # type: ignore[no-untyped-def]
                                                        backlog: int) -> None:
    sink.start()
    inst: Instance = new_instance()
    dead_setup(inst, silent_peer, sink.port, backlog)
    inst.start()
    if backlog:  # qmgr has taken the backlog: a cohort of it now waits for the dead peer
        inst.wait_log(r"nrcpt=1 \(queue active\)", count=backlog, timeout=120)
    started = time.monotonic()
    queue_id = inst.send("alice@example.org", "h@healthy.example", b"Subject: healthy\r\n\r\nx\r\n")
    inst.wait_log(rf"{queue_id}: to=<h@healthy\.example>, .*status=sent", timeout=120)
    print(f"\nhealthy message delivered {time.monotonic() - started:.2f} s after submission "
          f"with {backlog} messages for a dead destination")
    # delivered while the dead destination's first cohort was still waiting for a greeting
    # (head-of-line blocking would have made it wait for 1000 / 20 x TIMEOUT seconds)
    assert not SUSPENDED.search(inst.log())
    sink.wait_dumps(1)
    if not backlog:
        return
    # The dead site was tried by one cohort, then declared dead: the rest was deferred
    # untried, with the reason of the last failure, as Postfix logs it.
    wait_until(lambda: len(inst.queue_ids("deferred")) == backlog, 120,
               what="the backlog back in deferred/")
    log = inst.log()
    tried = TRIED.findall(log)
    suspended = SUSPENDED.findall(log)
    assert 1 <= len(tried) <= 20
    assert len(suspended) + len(tried) == backlog
    assert all(reason == suspended[0][1] for _qid, reason in suspended)
    assert "timed out" in suspended[0][1]


def test_postqueue_f_forgets_a_dead_destination(new_instance) -> None:  # type: ignore[no-untyped-def]
    """Dead for minimal_backoff_time (300 s here): only ``postqueue -f`` (its F trigger)
    lets the mail go as soon as the peer is back."""
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # connections to it are refused
    sink = Sink(port)
    try:
        inst: Instance = new_instance()
        dead_setup(inst, port, port, 30)
        inst.start()
        wait_until(lambda: SUSPENDED.search(inst.log()) and
                   len(inst.queue_ids("deferred")) == 30, 120, what="the destination dead")
        assert "Connection refused" in SUSPENDED.findall(inst.log())[0][1]
        sink.start()  # the peer is back
        inst.tool("postqueue", "-f", check=True)
        inst.wait_log(r"to=<d\d+@dead\.example>, relay=127\.0\.0\.1.*status=sent", count=30,
                      timeout=120)
        wait_until(inst.queue_empty, 60, what="an empty queue")
    finally:
        sink.stop()


def test_a_backlog_beyond_the_open_file_limit_is_delivered_not_corrupted(new_instance, sink) -> None:  # type: ignore[no-untyped-def]
    """qmgr keeps each active message's file open: under a hard limit of 300 descriptors
    (a non-root login's soft limit is often 1024) it takes what the limit allows, says
    so once, and delivers the rest as files close; no file is sent to corrupt/."""
    sink.start()
    inst: Instance = new_instance()
    inst.set(relayhost=f"[127.0.0.1]:{sink.port}")
    inst.postfix("check")
    backlog = 400
    queue_files(inst.queue_dir, "deferred", "alice@example.org",
                [f"r{i}@remote.example" for i in range(backlog)], [b"Subject: backlog", b"", b"x"],
                arrival=time.time())
    subprocess.run(["prlimit", "--nofile=300:300", PYTHON, "-m", "pymailsys.tools.postfix",
                    "-c", str(inst.config_dir), "start"], check=True, capture_output=True)
    inst.running = True
    inst.wait_log(r"to=<r\d+@remote\.example>, relay=127\.0\.0\.1.*status=sent", count=backlog,
                  timeout=180)
    wait_until(inst.queue_empty, 60, what="an empty queue")
    log = inst.log()
    assert not inst.queue_ids("corrupt")
    assert "saving corrupt file" not in log
    assert re.search(r"postfix/qmgr\[\d+\]: warning: \d+ messages active: the open file limit "
                     r"\(300\) allows no more, although qmgr_message_active_limit is 20000", log)
    assert len(re.findall(r"warning: \d+ messages active: the open file limit", log)) == 1
