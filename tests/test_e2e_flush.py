"""The fast flush service: deferred mail for a site in fast_flush_domains goes out when
asked, through ``postqueue -s``, ``sendmail -qR`` and smtpd's ETRN, as Postfix's flush(8).

The peer is Postfix's smtp-sink answering 450 to RCPT until it is restarted without that;
the instance's retry times are Postfix's (minutes), so delivery within the test's wait
comes from the flush request.
"""

from __future__ import annotations

import os
import re
import time

from harness import Instance, wait_until
from qf_helpers import match_owner, queue_files
from test_e2e_outbound import Sink, sink  # noqa: F401 (the fixture)

SITE = "remote.example"


def deferred_to_sink(new_instance, peer: Sink) -> Instance:  # type: ignore[no-untyped-def]
    peer.start("-r", "RCPT")
    inst: Instance = new_instance()
    inst.set(relay_domains=SITE,
             transport_maps=f"inline:{{ {SITE}=relay:[127.0.0.1]:{peer.port} }}")
    inst.start()
    return inst


def defer_one(inst: Instance, rcpt: str) -> str:
    queue_id = inst.send("alice@example.org", rcpt, b"Subject: later\r\n\r\nx\r\n")
    inst.wait_log(rf"{queue_id}: to=<{re.escape(rcpt)}>, .*dsn=4\.3\.0, status=deferred")
    wait_until(lambda: queue_id in inst.queue_ids("deferred"), 30, what="the file in deferred/")
    wait_until(lambda: queue_id in _flush_log(inst), 30, what="the queue ID in flush/")
    return queue_id


def _flush_log(inst: Instance) -> str:
    path = inst.queue_dir / "flush" / SITE
    return path.read_text() if path.exists() else ""


def test_postqueue_s_and_sendmail_qR_deliver_a_sites_deferred_mail(new_instance, sink) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    inst = deferred_to_sink(new_instance, sink)
    first = defer_one(inst, f"a@{SITE}")
    listing = inst.tool("mailq", check=True).stdout
    assert first in listing and "said: 450 4.3.0 Error: command failed" in listing
    sink.stop()
    sink.start()  # the peer recovers
    inst.tool("postqueue", "-s", SITE, check=True)
    inst.wait_log(rf"{first}: to=<a@{SITE}>, .*status=sent \(250 2\.0\.0 Ok")
    sink.stop()
    sink.start("-r", "RCPT")
    second = defer_one(inst, f"b@{SITE}")
    sink.stop()
    sink.start()
    inst.tool("sendmail", "-qR" + SITE, check=True)
    inst.wait_log(rf"{second}: to=<b@{SITE}>, .*status=sent")
    wait_until(inst.queue_empty, 30, what="an empty queue")


def test_a_site_not_in_fast_flush_domains_is_refused(new_instance, sink) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    inst = deferred_to_sink(new_instance, sink)
    done = inst.tool("postqueue", "-s", "other.example")
    assert done.returncode == 69
    assert 'postqueue: fatal: Flush service is not configured for destination "other.example"' \
        in done.stderr
    bad = inst.tool("postqueue", "-s", "no/such")
    assert bad.returncode == 64
    assert 'postqueue: fatal: Cannot flush mail queue - invalid destination: "no/such"' \
        in bad.stderr
    with inst.smtp() as client:
        client.ehlo()
        assert "etrn" in client.esmtp_features
        assert client.docmd("ETRN", "other.example") == (
            459, b"<other.example>: service unavailable")
        assert client.docmd("ETRN", "a/b") == (501, b"Error: invalid parameter syntax")
        assert client.docmd("ETRN") == (500, b"Syntax: ETRN domain")
    inst.wait_log(r"postfix/smtpd\[\d+\]: warning: reject: ETRN other\.example\.\.\. from "
                  r"localhost\[127\.0\.0\.1\]")


def test_etrn_delivers_a_sites_deferred_mail(new_instance, sink) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    inst = deferred_to_sink(new_instance, sink)
    queue_id = defer_one(inst, f"c@{SITE}")
    sink.stop()
    sink.start()
    with inst.smtp() as client:
        client.ehlo()
        assert client.docmd("ETRN", SITE) == (250, b"Queuing started")
    inst.wait_log(rf"{queue_id}: to=<c@{SITE}>, .*status=sent")
    assert _flush_log(inst) == ""


def test_master_wakeup_refreshes_unread_logs_and_purges_unused_empty_ones(new_instance, sink) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    """fast_flush_refresh_time and fast_flush_purge_time, on master's wake-up of flush
    (every second here): a log unread for longer than the refresh time makes its
    messages due and is emptied (IDs of mail no longer queued go with it); an empty
    log unwritten for longer than the purge time is removed; younger logs stay."""
    sink.start()
    inst: Instance = new_instance()
    inst.set(relay_domains=SITE, queue_run_delay="1s",
             fast_flush_refresh_time="60s", fast_flush_purge_time="60s",
             transport_maps=f"inline:{{ {SITE}=relay:[127.0.0.1]:{sink.port} }}")
    master_cf = inst.config_dir / "master.cf"
    text, found = re.subn(r"(?m)^(flush\s+unix\s+\S+\s+\S+\s+\S+\s+)1000\?", r"\g<1>1",
                          master_cf.read_text())
    assert found == 1
    master_cf.write_text(text)
    inst.postfix("check")  # the spool
    now = time.time()
    stale = queue_files(inst.queue_dir, "deferred", "alice@example.org",
                        [f"s1@{SITE}", f"s2@{SITE}"], [b"Subject: stale", b"", b"x"],
                        arrival=now - 7200, mtime=now + 86400)  # not due: only a flush sends them
    (fresh,) = queue_files(inst.queue_dir, "deferred", "alice@example.org", [f"f@{SITE}"],
                           [b"Subject: fresh", b"", b"x"], arrival=now - 7200, mtime=now + 86400)
    logs = inst.queue_dir / "flush"
    old, young = now - 3600, now
    for site, content, when in (
            (SITE, f"{stale[0]}\n{stale[1]}\n{stale[0]}\n3F1A2B4C5D\nbad id!\n", old),
            ("fresh.example", f"{fresh}\n", young),
            ("unused.example", "", old),
            ("recent.example", "", young)):
        (logs / site).write_text(content)
        os.utime(logs / site, (when, when))
    match_owner(inst.queue_dir, "flush")
    inst.start()
    inst.wait_log(rf"({stale[0]}|{stale[1]}): to=<s\d@{re.escape(SITE)}>, .*status=sent",
                  count=2, timeout=60)
    wait_until(lambda: not (logs / "unused.example").exists(), 30, what="the unused log removed")
    assert (logs / SITE).read_bytes() == b""
    assert (logs / "fresh.example").read_text() == f"{fresh}\n"
    assert (logs / "recent.example").exists()
    assert fresh in inst.queue_ids("deferred")
    inst.wait_log(r'postfix/flush\[\d+\]: warning: bad queue id "bad id!\.\.\." in fast flush '
                  rf"logfile {re.escape(SITE)}")
