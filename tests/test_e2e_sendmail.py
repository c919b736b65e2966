"""A non-root account submits with sendmail; the mail arrives with the right envelope sender,
live and through the maildrop while the system is down."""

from __future__ import annotations

import os
import pwd
import re
import time

import pytest
from harness import ME, Instance, wait_until

pytestmark = pytest.mark.root


def _find(inst: Instance, subject: bytes) -> bytes:
    def hit() -> bytes:
        for m in inst.maildir_messages():
            if b"\nSubject: " + subject + b"\n" in m or m.startswith(b"Subject: " + subject):
                return m
        return b""

    return wait_until(hit, 60, what=f"message {subject!r} in the Maildir")


def test_user_sendmail_live_and_while_down(new_instance, python_user) -> None:  # type: ignore[no-untyped-def]
    inst: Instance = new_instance(maildir=True)
    uid = pwd.getpwnam(python_user).pw_uid
    inst.start()

    # sendmail -t: recipients from the header, the user's own address as sender
    r = inst.tool("sendmail", "-t", user=python_user,
                  input=f"To: {ME}@localhost\nBcc: {ME}@localhost\nSubject: t-flag\n\nbody t\n")
    assert r.returncode == 0, r.stderr
    msg = _find(inst, b"t-flag")
    assert re.match(rf"Return-Path: <{python_user}@[^>]+>\n".encode(), msg), msg[:200]
    assert re.search(rf"Received: by \S+ \(Postfix, from userid {uid}\)\n\tid \w+; ".encode(), msg)
    assert b"\nBcc:" not in msg  # Bcc never reaches a recipient
    assert re.search(rb"\nMessage-Id: <\d{14}\.\w+@", msg) and b"\nDate: " in msg

    # sendmail -f other -i rcpt: the given sender, and a lone "." is text
    r = inst.tool("sendmail", "-f", "other@example.org", "-i", f"{ME}@localhost", user=python_user,
                  input="Subject: f-flag\n\nbefore\n.\nafter\n")
    assert r.returncode == 0, r.stderr
    msg = _find(inst, b"f-flag")
    assert msg.startswith(b"Return-Path: <other@example.org>\n")
    assert msg.endswith(b"\nbefore\n.\nafter\n")

    # mail(1)-style: recipients as arguments, a lone "." ends the input
    r = inst.tool("sendmail", f"{ME}@localhost", user=python_user,
                  input="Subject: plain\n\nkept\n.\nnot read\n")
    assert r.returncode == 0, r.stderr
    msg = _find(inst, b"plain")
    assert msg.endswith(b"\nkept\n") and b"not read" not in msg

    # the system is down: the message waits in maildrop/, owned by the user
    inst.stop()
    r = inst.tool("sendmail", "-i", f"{ME}@localhost", user=python_user,
                  input="Subject: while-down\n\nqueued while down\n")
    assert r.returncode == 0, r.stderr
    (name,) = os.listdir(inst.queue_dir / "maildrop")
    assert os.stat(inst.queue_dir / "maildrop" / name).st_uid == uid
    inst.start()
    msg = _find(inst, b"while-down")
    assert re.match(rf"Return-Path: <{python_user}@[^>]+>\n".encode(), msg)
    inst.wait_log(rf"postfix/pickup\[\d+\]: \w+: uid={uid} from=<{python_user}>")
    wait_until(lambda: not os.listdir(inst.queue_dir / "maildrop"), 30, what="an empty maildrop")


def test_a_request_the_agent_refuses_gets_a_status_line(new_instance) -> None:  # type: ignore[no-untyped-def]
    """A queued message whose sender local refuses (ESC, from before submissions were
    checked): local's warning names the queue ID and qmgr logs the recipient's
    ``status=deferred`` line, instead of a silent deferral for days."""
    from qf_helpers import match_owner, queue_file

    inst: Instance = new_instance(maildir=True)
    inst.postfix("check", check=False)
    qid = queue_file(inst.queue_dir, "incoming", "a\x1b[2J@example.com", [f"{ME}@localhost"],
                     [b"Subject: esc", b"", b"x"], arrival=time.time())
    match_owner(inst.queue_dir, "incoming")
    inst.start(wait_smtp=False)
    inst.wait_log(rf"postfix/local\[\d+\]: warning: {qid}: bad delivery request: "
                  r"sender contains control characters")
    inst.wait_log(rf"postfix/qmgr\[\d+\]: {qid}: to=<{ME}@localhost>, relay=none, .*"
                  r"status=deferred \(bad delivery request\)")
