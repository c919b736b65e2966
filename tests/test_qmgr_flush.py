"""qmgr's flush semantics against a real instance: defer_transports (mail waits in
deferred/ until a flush), ``postqueue -i`` and ``postqueue -f``, and the ``retry:``
transport, as Postfix's qmgr_message_resolve and error(8) in its retry role."""

from __future__ import annotations

import re
import time

from harness import Instance, free_port, wait_until
from test_e2e_outbound import Sink, sink  # noqa: F401 (the fixture)

SITE = "remote.example"
BODY = b"Subject: later\r\n\r\nbody\r\n"


def _deferred(inst: Instance, queue_id: str, rcpt: str, dsn: str, reason: str) -> None:
    inst.wait_log(rf"{queue_id}: to=<{re.escape(rcpt)}>, relay=none, .*dsn={re.escape(dsn)}, "
                  rf"status=deferred \({re.escape(reason)}\)")
    wait_until(lambda: queue_id in inst.queue_ids("deferred"), 30, what="the file in deferred/")


def relaying_to(new_instance, peer: Sink, setting: str, value: str) -> Instance:  # type: ignore[no-untyped-def]
    """A started instance that relays SITE to the peer, with one setting, which
    ``postfix check`` takes without a word (not "not implemented yet: ignored")."""
    peer.start()
    inst: Instance = new_instance()
    inst.set(relay_domains=SITE, transport_maps=f"inline:{{ {SITE}=relay:[127.0.0.1]:{peer.port} }}",
             **{setting: value})
    inst.start()
    assert setting not in inst.postfix("check").stderr
    return inst


def test_defer_transports_holds_mail_until_a_flush(new_instance, sink) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    """Mail for a transport in defer_transports is deferred untried ("4.3.2 deferred
    transport"); ``postqueue -i ID`` delivers that message, ``postqueue -f`` the rest;
    the flush does not lift the setting for mail that comes later."""
    inst = relaying_to(new_instance, sink, "defer_transports", "relay")
    first = inst.send("alice@example.org", f"a@{SITE}", BODY)
    second = inst.send("alice@example.org", f"b@{SITE}", BODY)
    for queue_id, rcpt in ((first, f"a@{SITE}"), (second, f"b@{SITE}")):
        _deferred(inst, queue_id, rcpt, "4.3.2", "deferred transport")
    listing = inst.tool("mailq", check=True).stdout
    assert "(deferred transport)" in listing
    assert sink.dumps() == []

    inst.tool("postqueue", "-i", second, check=True)
    inst.wait_log(rf"{second}: to=<b@{SITE}>, relay=127\.0\.0\.1\[127\.0\.0\.1\]:{sink.port}, "
                  r".*status=sent")
    wait_until(lambda: second not in inst.queue_ids("deferred"), 30, what="the second delivered")
    assert first in inst.queue_ids("deferred")
    (path,) = (inst.queue_dir / "deferred").rglob(first)
    assert path.stat().st_mode & 0o7777 == 0o700

    inst.tool("postqueue", "-f", check=True)
    inst.wait_log(rf"{first}: to=<a@{SITE}>, relay=127\.0\.0\.1\[127\.0\.0\.1\]:{sink.port}, "
                  r".*status=sent")
    assert len(sink.wait_dumps(2)) == 2

    third = inst.send("alice@example.org", f"c@{SITE}", BODY)
    _deferred(inst, third, f"c@{SITE}", "4.3.2", "deferred transport")


def test_retry_transport_defers_with_its_nexthop_text(new_instance) -> None:  # type: ignore[no-untyped-def]
    """transport ``retry:4.7.1 text`` defers with that code and text, ``retry:text`` with
    4.0.0, as Postfix's error(8) serving master.cf's retry service; never "mail
    transport unavailable"."""
    inst: Instance = new_instance()
    inst.set(relay_domains="r.example, s.example",
             smtpd_reject_unlisted_recipient="no",  # else refused at RCPT, as Postfix's smtpd
             transport_maps="inline:{ {r.example=retry:4.7.1 try later}, "
                            "{s.example=retry:not now} }")
    inst.start()
    coded = inst.send("alice@example.org", "u@r.example", BODY)
    plain = inst.send("alice@example.org", "u@s.example", BODY)
    _deferred(inst, coded, "u@r.example", "4.7.1", "try later")
    _deferred(inst, plain, "u@s.example", "4.0.0", "not now")
    listing = inst.tool("mailq", check=True).stdout
    assert "(try later)" in listing and "(not now)" in listing
    assert "transport unavailable" not in inst.log()


def test_destination_rate_delay_spaces_deliveries_to_one_destination(new_instance, sink) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    """default_destination_rate_delay = 2s: three messages for one destination go out
    one at a time, at least 2 s apart, as Postfix's rate-limited queues."""
    inst = relaying_to(new_instance, sink, "default_destination_rate_delay", "2s")
    started = time.monotonic()
    ids = [inst.send("alice@example.org", f"u{i}@{SITE}", BODY) for i in range(3)]
    for queue_id in ids:
        inst.wait_log(rf"{queue_id}: to=<u\d@{SITE}>, .*status=sent", timeout=30)
    assert time.monotonic() - started >= 4
    assert len(sink.wait_dumps(3)) == 3


def test_postqueue_i_tries_a_dead_destination_again(new_instance) -> None:  # type: ignore[no-untyped-def]
    """A destination that refused connections (a whole cohort: its window is 1 here) is
    dead for minimal_backoff_time (300 s);
    ``postqueue -i ID`` delivers that message now once the peer is back (Postfix's
    flush marks the file, and its qmgr unthrottles the message's destinations), while
    other mail for it keeps its time."""
    port = free_port()  # nothing listens: connections to it are refused
    peer = Sink(port)
    try:
        inst: Instance = new_instance()
        inst.set(relay_domains=SITE, initial_destination_concurrency="1",
                 transport_maps=f"inline:{{ {SITE}=relay:[127.0.0.1]:{port} }}")
        inst.start()
        first = inst.send("alice@example.org", f"a@{SITE}", BODY)
        inst.wait_log(rf"{first}: to=<a@{SITE}>, .*status=deferred \(connect to .*refused\)")
        wait_until(lambda: first in inst.queue_ids("deferred"), 30, what="the file in deferred/")
        second = inst.send("alice@example.org", f"b@{SITE}", BODY)
        _deferred(inst, second, f"b@{SITE}", "4.4.1", "delivery temporarily suspended: "
                  f"connect to 127.0.0.1[127.0.0.1]:{port}: Connection refused")
        peer.start()  # the peer is back
        inst.tool("postqueue", "-i", second, check=True)
        inst.wait_log(rf"{second}: to=<b@{SITE}>, relay=127\.0\.0\.1.*status=sent")
        assert first in inst.queue_ids("deferred")
    finally:
        peer.stop()


def test_mail_held_by_defer_transports_goes_out_on_postqueue_s(new_instance, sink) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    """Postfix's ETRN_README set-up: defer_transports holds a site's mail, and the site
    asks for it (``postqueue -s``, as ETRN): qmgr told the flush service of the
    message it deferred itself, so the site's flush log names it."""
    inst = relaying_to(new_instance, sink, "defer_transports", "relay")
    queue_id = inst.send("alice@example.org", f"a@{SITE}", BODY)
    _deferred(inst, queue_id, f"a@{SITE}", "4.3.2", "deferred transport")
    flush_log = inst.queue_dir / "flush" / SITE
    wait_until(lambda: flush_log.exists() and queue_id in flush_log.read_text(), 30,
               what="the queue ID in the site's flush log")
    inst.tool("postqueue", "-s", SITE, check=True)
    inst.wait_log(rf"{queue_id}: to=<a@{SITE}>, relay=127\.0\.0\.1\[127\.0\.0\.1\]:{sink.port}, "
                  r".*status=sent")
    wait_until(inst.queue_empty, 30, what="an empty queue")
