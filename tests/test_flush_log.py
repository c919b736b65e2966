"""The fast flush log with a large backlog for one site (issue #15 item 3): ``add``
appends without reading the log, as Postfix's flush, and ``postqueue -s`` reads it
once, streaming, and sends each message once however often it is named."""

from __future__ import annotations

import re
import time
from collections import Counter

from harness import Instance, wait_until
from qf_helpers import queue_files
from test_e2e_outbound import Sink, sink  # noqa: F401 (the fixture)

from pymailsys.ipc import attr
from pymailsys.ipc import flush as proto

SITE = "remote.example"
MESSAGES = 2000
DEFERRALS = 10  # each message was deferred this often since the last flush


def test_a_site_log_of_many_deferrals_sends_each_message_once(  # type: ignore[no-untyped-def]
        new_instance, sink: Sink) -> None:  # noqa: F811
    sink.start()
    inst: Instance = new_instance()
    inst.set(relay_domains=SITE, queue_run_delay="3600s",
             transport_maps=f"inline:{{ {SITE}=relay:[127.0.0.1]:{sink.port} }}")
    inst.postfix("check")
    now = time.time()
    ids = queue_files(inst.queue_dir, "deferred", "alice@example.org",
                      (f"d{i}@{SITE}" for i in range(MESSAGES)),
                      [b"Subject: backlog", b"", b"x"], arrival=now - 3600,
                      mtime=now + 86400)  # not due: only the flush sends them
    inst.start()
    with attr.SyncAttrClient(str(inst.queue_dir / "public" / "flush"), timeout=60) as client:
        for _round in range(DEFERRALS):
            for queue_id in ids:
                reply = client.request({"request": proto.ADD, "site": SITE,
                                        "queue_id": queue_id})
                assert reply.number("status", proto.FAIL) == proto.OK
    log_path = inst.queue_dir / "flush" / SITE
    assert len(log_path.read_bytes().splitlines()) == MESSAGES * DEFERRALS  # as Postfix keeps it

    inst.tool("postqueue", "-s", SITE, check=True)
    sent = re.compile(rf"postfix/relay/smtp\[\d+\]: (\w+): to=<d\d+@{re.escape(SITE)}>.*status=sent")
    inst.wait_log(sent.pattern, count=MESSAGES, timeout=600)
    wait_until(inst.queue_empty, 120, what="an empty queue")
    tries = Counter(m.group(1) for m in sent.finditer(inst.log()))
    assert sorted(tries) == sorted(ids) and set(tries.values()) == {1}
    assert log_path.read_bytes() == b""
