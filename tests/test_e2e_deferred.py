"""Deferred mail survives a stop and start, and is delivered once the problem is gone."""

from __future__ import annotations

import os

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
