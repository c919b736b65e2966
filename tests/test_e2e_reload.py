"""postfix reload with mail in the system: the old generation goes, mail keeps flowing.

After a bounce the daemons hold connections to each other (qmgr to local and
bounce, bounce to cleanup, cleanup to qmgr). A reload must still let every old
process finish and exit, and the new qmgr must start and deliver.
"""

from __future__ import annotations

import os
import re
import smtplib
import threading
import time
from collections.abc import Callable

from harness import ME, Instance, wait_until
from scripted_smtp import ScriptedServer

BOUNCE = b"Subject: please bounce\r\n\r\nbody\r\n"


def _children(inst: Instance) -> set[int]:
    """The running daemons of the instance, master excluded."""
    return {pid for name, pids in inst.daemons().items() if name != "master" for pid in pids}


def _bounce(inst: Instance, dsn_count: int) -> None:
    queue_id = inst.send(f"{ME}@localhost", "bouncer@localhost", BOUNCE)
    inst.wait_log(rf"postfix/bounce\[\d+\]: {queue_id}: sender non-delivery notification")
    inst.wait_log(rf"{queue_id}: removed")
    inst.wait_maildir(dsn_count)


def _reload_and_wait_for_the_old_generation(inst: Instance) -> float:
    old = _children(inst)
    assert old
    started = time.monotonic()
    inst.postfix("reload")
    wait_until(lambda: not any(os.path.exists(f"/proc/{pid}") for pid in old), 60,
               what=f"the old generation {sorted(old)} to exit")
    elapsed = time.monotonic() - started
    print(f"old generation ({len(old)} processes) exited {elapsed:.2f} s after reload")
    return elapsed


def test_reload_after_a_bounce_keeps_mail_flowing(new_instance) -> None:  # type: ignore[no-untyped-def]
    inst: Instance = new_instance(maildir=True)
    inst.write("etc/aliases", f"postmaster: {ME}\nbouncer: |/bin/false\n")
    inst.tool("newaliases", check=True)
    inst.start()
    _bounce(inst, 1)
    _reload_and_wait_for_the_old_generation(inst)
    queue_id = inst.send(f"{ME}@localhost", f"{ME}@localhost", b"Subject: after reload\r\n\r\nx\r\n")
    inst.wait_log(rf"{queue_id}: to=<{ME}@localhost>, .*status=sent")
    _bounce(inst, 3)
    _reload_and_wait_for_the_old_generation(inst)
    queue_id = inst.send(f"{ME}@localhost", f"{ME}@localhost", b"Subject: second\r\n\r\ny\r\n")
    inst.wait_log(rf"{queue_id}: to=<{ME}@localhost>, .*status=sent")
    subjects = [re.search(rb"\nSubject: ([^\n]*)", m).group(1)  # type: ignore[union-attr]
                for m in inst.wait_maildir(4)]
    assert subjects.count(b"after reload") == 1 and subjects.count(b"second") == 1
    assert "killed by signal" not in inst.log()


def test_reload_during_a_delivery_records_it_once(new_instance) -> None:  # type: ignore[no-untyped-def]
    """The old qmgr waits for the delivery in flight, records it, then goes."""
    inst: Instance = new_instance(maildir=True)
    shared = inst.base / "cmd"  # the command runs as default_privs
    shared.mkdir()
    os.chmod(shared, 0o1777)
    gate = shared / "gate"
    started = shared / "started"
    os.mkfifo(gate)
    os.chmod(gate, 0o666)
    inst.write("etc/aliases", f"postmaster: {ME}\n"
                              f'slow: "|touch {started}; read line < {gate}"\n')
    inst.tool("newaliases", check=True)
    inst.start()
    queue_id = inst.send(f"{ME}@localhost", "slow@localhost", b"Subject: slow\r\n\r\nz\r\n")
    wait_until(started.exists, 60, what="the delivery command to start")
    old = _children(inst)
    inst.postfix("reload")
    inst.wait_log(r"postfix/master\[\d+\]: reload")
    with open(gate, "w") as f:  # let the command finish after the reload
        f.write("go\n")
    wait_until(lambda: not any(os.path.exists(f"/proc/{pid}") for pid in old), 60,
               what="the old generation to exit")
    inst.wait_log(rf"{queue_id}: removed")
    assert len(re.findall(rf"{queue_id}: to=<slow@localhost>.*status=sent", inst.log())) == 1
    queue_id = inst.send(f"{ME}@localhost", f"{ME}@localhost", b"Subject: next\r\n\r\nx\r\n")
    inst.wait_log(rf"{queue_id}: to=<{ME}@localhost>, .*status=sent")


def test_reloads_under_smtp_load_lose_no_transaction_and_defer_nothing(new_instance) -> None:  # type: ignore[no-untyped-def]
    """Reloads while three clients send: every message gets its 250, is delivered once
    and is never deferred. An old cleanup or local that went away used to close its
    idle connection just as smtpd or qmgr wrote a request on it (now: the goodbye,
    pymailsys.ipc.attr): the client got 451, or the mail waited out a backoff."""
    inst: Instance = new_instance(maildir=True)
    inst.start()
    errors: list[str] = []
    per_client = 30

    def load(client: int) -> None:
        for i in range(per_client):
            try:
                with smtplib.SMTP("127.0.0.1", inst.port, timeout=30) as s:
                    s.sendmail(f"{ME}@localhost", [f"{ME}@localhost"],
                               f"Subject: c{client} m{i}\r\n\r\nx\r\n")
            except (smtplib.SMTPException, OSError) as e:
                errors.append(repr(e))

    clients = [threading.Thread(target=load, args=(n,)) for n in range(3)]
    for t in clients:
        t.start()
    for _ in range(20):
        inst.postfix("reload")
        time.sleep(0.1)
    for t in clients:
        t.join(120)
    assert errors == []
    subjects = sorted(re.search(rb"\nSubject: ([^\n]*)", m).group(1)  # type: ignore[union-attr]
                      for m in inst.wait_maildir(3 * per_client))
    assert subjects == sorted(f"c{c} m{i}".encode() for c in range(3) for i in range(per_client))
    log = inst.log()
    assert "status=deferred" not in log
    assert "connect to cleanup service" not in log


def reload_outlasting_qmgr(inst: Instance, queue_id: str, finish: Callable[[], None]) -> None:
    """Reload while a delivery of queue_id is in flight, and let it end only after the
    old qmgr has given up waiting for it (STOP_DRAIN) and gone, leaving the file in
    active/ for the new qmgr, as Postfix's qmgr does: never in deferred/ (a silent move
    there kept a delivered message in mailq, with no reason, until its backoff); then
    have the new qmgr look at the file at once (postqueue -f: no wait for
    LOCKED_RETRY) until it is removed."""
    (old_qmgr,) = inst.daemons()["qmgr"]
    inst.postfix("reload")
    wait_until(lambda: not os.path.exists(f"/proc/{old_qmgr}"), 60,
               what="the old qmgr to give up waiting and exit")
    inst.wait_log(rf"{queue_id}: skipped, still being delivered")  # by the new qmgr
    assert inst.queue_ids("deferred") == []
    finish()
    inst.wait_log(rf"{queue_id}: to=<.*status=sent")
    inst.tool("postqueue", "-f", check=True)
    inst.wait_log(rf"{queue_id}: removed")


def test_a_delivery_outlasting_the_old_qmgr_is_not_repeated_local(new_instance) -> None:  # type: ignore[no-untyped-def]
    """A pipe alias still running when the old qmgr exits: local marks the recipient
    done in the queue file itself (Postfix's deliver_completed), so the new qmgr, which
    never hears the reply, does not run the command again."""
    inst: Instance = new_instance(maildir=True)
    shared = inst.base / "cmd"  # the command runs as default_privs
    shared.mkdir()
    os.chmod(shared, 0o1777)
    gate, started, released, runs = (shared / n for n in ("gate", "started", "released", "runs"))
    os.mkfifo(gate)
    os.chmod(gate, 0o666)
    inst.write("etc/aliases", f"postmaster: {ME}\n"
                              f'slow: "|touch {started}; test -e {released} || read line < {gate}'
                              f'; echo ran >> {runs}"\n')
    inst.tool("newaliases", check=True)
    inst.start()
    queue_id = inst.send(f"{ME}@localhost", "slow@localhost", b"Subject: slow\r\n\r\nz\r\n")
    wait_until(started.exists, 60, what="the delivery command to start")

    def finish() -> None:
        released.touch()
        with open(gate, "w") as f:
            f.write("go\n")

    reload_outlasting_qmgr(inst, queue_id, finish)
    assert len(re.findall(rf"{queue_id}: to=<slow@localhost>.*status=sent", inst.log())) == 1
    assert runs.read_text() == "ran\n"


def test_a_delivery_outlasting_the_old_qmgr_is_not_repeated_smtp(new_instance) -> None:  # type: ignore[no-untyped-def]
    """The same with the smtp agent and a server slow to answer the end of data: the
    message is sent once."""
    release = threading.Event()

    def slow_eod(line: bytes) -> bytes:
        release.wait(120)
        return b"250 2.0.0 Ok: queued as SLOW\r\n"

    with ScriptedServer(eod=slow_eod) as server:
        inst: Instance = new_instance(maildir=True)
        inst.set(transport_maps=f"inline:{{ slow.example=smtp:[127.0.0.1]:{server.port} }}")
        inst.start()
        queue_id = inst.send(f"{ME}@localhost", "x@slow.example", b"Subject: slow\r\n\r\nz\r\n")
        server.wait_for(b".\r\n")
        try:
            reload_outlasting_qmgr(inst, queue_id, release.set)
        finally:
            release.set()
        assert len(re.findall(rf"{queue_id}: to=<x@slow\.example>.*status=sent",
                              inst.log())) == 1
        assert server.received.count(b".\r\n") == 1
