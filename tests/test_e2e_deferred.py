"""Deferred mail survives a stop and start, and is delivered once the problem is gone."""

from __future__ import annotations

import os
import time

from harness import ME, Instance, wait_until

RCPT = f"{ME}@localhost"


def test_deferred_survives_restart_and_is_delivered(new_instance) -> None:  # type: ignore[no-untyped-def]
    inst: Instance = new_instance(maildir=True)
    spool = inst.base / "spool-mail"
    spool.mkdir()
    os.chmod(spool, 0o1777)
    # an alias table that cannot answer: local defers every local recipient (4.3.0);
    # smtpd's recipient check leaves it out, or RCPT would get the 451
    inst.set(mail_spool_directory=f"{spool}/", alias_maps=f"hash:{inst.base}/no-such-aliases",
             local_recipient_maps="proxy:unix:passwd.byname")
    inst.start()
    queue_id = inst.send("alice@example.org", RCPT, b"Subject: later\r\n\r\ndeliver me later\r\n")
    inst.wait_log(rf"{queue_id}: to=<{RCPT}>.*dsn=4\.3\.0, status=deferred "
                  r"\(alias database unavailable\)")
    wait_until(lambda: queue_id in inst.queue_ids("deferred"), 30, what="the file in deferred/")

    inst.stop()
    assert queue_id in inst.queue_ids("deferred")
    assert not (spool / ME).exists()

    inst.set(alias_maps="")
    inst.start()
    inst.postfix("flush")
    inst.wait_log(rf"{queue_id}: to=<{RCPT}>.*status=sent")
    new = spool / ME / "new"
    (path,) = list(new.iterdir())
    delivered = path.read_bytes()
    assert b"\nSubject: later\n" in delivered
    assert delivered.endswith(b"\n\ndeliver me later\n")
    wait_until(inst.queue_empty, 30, what="an empty queue")


def test_bounce_queue_lifetime_is_at_most_maximal_queue_lifetime(new_instance) -> None:  # type: ignore[no-untyped-def]
    """maximal_queue_lifetime = 0 with the default bounce_queue_lifetime (5d): qmgr warns
    and adjusts, as Postfix's qmgr, so a bounce is tried once too and then expires."""
    inst: Instance = new_instance(maildir=True)
    inst.set(maximal_queue_lifetime="0", transport_maps="inline:{ x.example=smtp:[127.0.0.1]:9 }")
    inst.start()
    queue_id = inst.send("", "u@x.example", b"Subject: a bounce\r\n\r\nundeliverable\r\n")
    inst.wait_log(r"postfix/qmgr\[\d+\]: warning: bounce_queue_lifetime is larger than "
                  r"maximal_queue_lifetime - adjusting bounce_queue_lifetime")
    inst.wait_log(rf"{queue_id}: to=<u@x\.example>, .*status=deferred")
    inst.wait_log(rf"{queue_id}: from=<>, status=expired, returned to sender")
    wait_until(lambda: queue_id not in inst.queue_ids("deferred"), 30,
               what="the expired bounce to leave the queue")


def test_minimal_backoff_time_wins_over_a_smaller_maximal_backoff_time(new_instance) -> None:  # type: ignore[no-untyped-def]
    """Postfix's qmgr clamps a deferred message's wait to maximal_backoff_time, then to
    minimal_backoff_time: the file's time of next attempt is at least the minimum."""
    inst: Instance = new_instance(maildir=True)
    inst.set(minimal_backoff_time="2000s", maximal_backoff_time="100s",
             transport_maps="inline:{ x.example=smtp:[127.0.0.1]:9 }")
    inst.start()
    queue_id = inst.send("alice@example.org", "u@x.example", b"Subject: later\r\n\r\nbody\r\n")
    inst.wait_log(rf"{queue_id}: to=<u@x\.example>, .*status=deferred")
    wait_until(lambda: queue_id in inst.queue_ids("deferred"), 30, what="the file in deferred/")
    (path,) = (inst.queue_dir / "deferred").rglob(queue_id)
    assert path.stat().st_mtime - time.time() > 1000
