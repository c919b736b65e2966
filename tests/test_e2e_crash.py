"""Durability: kill -9 qmgr and then local under load; nothing acknowledged is lost."""

from __future__ import annotations

import os
import re
import signal
import smtplib
import threading

from harness import ME, Instance, wait_until

RCPT = f"{ME}@localhost"
SESSIONS = 10
PER_SESSION = 50


def test_kill_qmgr_and_local_under_load(instance: Instance) -> None:
    accepted: list[str] = []
    lock = threading.Lock()
    errors: list[str] = []

    def session(n: int) -> None:
        try:
            with instance.smtp(timeout=120) as client:
                client.ehlo()
                for i in range(PER_SESSION):
                    token = f"crash-{n:02d}-{i:03d}"
                    client.mail("load@example.org")
                    client.rcpt(RCPT)
                    code, text = client.data(f"Subject: {token}\r\n\r\n{token}\r\n".encode())
                    if code == 250:
                        with lock:
                            accepted.append(token)
                    client.rset()
        except (OSError, smtplib.SMTPException) as e:
            errors.append(f"session {n}: {e!r}")

    threads = [threading.Thread(target=session, args=(n,)) for n in range(SESSIONS)]
    for t in threads:
        t.start()
    killed = {"qmgr": 0, "local": 0}
    wait_until(lambda: len(accepted) >= 150 or not any(t.is_alive() for t in threads), 120,
               what="150 accepted messages")
    for pid in instance.daemons().get("qmgr", []):
        os.kill(pid, signal.SIGKILL)
        killed["qmgr"] += 1
    wait_until(lambda: len(accepted) >= 300 or not any(t.is_alive() for t in threads), 120,
               what="300 accepted messages")
    for pid in instance.daemons().get("local", []):
        os.kill(pid, signal.SIGKILL)
        killed["local"] += 1
    for t in threads:
        t.join(300)
    assert not errors, errors
    assert len(accepted) == SESSIONS * PER_SESSION
    assert killed["qmgr"] >= 1 and killed["local"] >= 1, killed

    # qmgr comes back on its wake-up timer or the next trigger; nudge it like an admin would
    instance.tool("postqueue", "-f")

    def all_delivered() -> bool:
        subjects = _subjects(instance)
        return set(accepted) <= set(subjects)

    wait_until(all_delivered, 180, interval=0.5, what="every accepted message in the Maildir")
    subjects = _subjects(instance)
    duplicates = len(subjects) - len(set(subjects))
    print(f"\ncrash test: accepted={len(accepted)} delivered={len(set(subjects))} "
          f"duplicates={duplicates} killed={killed}")
    # a redelivery after a crash recognises its own earlier Maildir write
    assert duplicates == 0
    wait_until(instance.queue_empty, 60, what="an empty queue")


def _subjects(inst: Instance) -> list[str]:
    out = []
    for msg in inst.maildir_messages():
        m = re.search(rb"^Subject: (crash-\d+-\d+)$", msg, re.M)
        if m:
            out.append(m.group(1).decode())
    return out
