"""pickup: maildrop files written while the system is down, a malformed one set aside,
live submissions over public/pickup with the submitter's uid from the kernel."""

from __future__ import annotations

import os
import pwd

import pytest
from harness import ME, Instance, wait_until

pytestmark = pytest.mark.root


def msg(subject: str) -> str:
    return f"To: {ME}@localhost\nSubject: {subject}\n\ntext of {subject}\n"


def test_maildrop_while_down_and_malformed_file(new_instance) -> None:  # type: ignore[no-untyped-def]
    inst: Instance = new_instance(maildir=True)
    inst.postfix("check", check=False)
    assert inst.tool("sendmail", "-t", input=msg("first")).returncode == 0
    bad = inst.queue_dir / "maildrop" / "BADF11E01"
    bad.write_bytes(b"T\x0c1 2\x00garbage-not-records")
    os.chmod(bad, 0o744)
    assert inst.tool("sendmail", "-t", input=msg("second")).returncode == 0
    assert len(os.listdir(inst.queue_dir / "maildrop")) == 3
    inst.start(wait_smtp=False)
    inst.wait_log(r"postfix/pickup\[\d+\]: \w+: uid=0 from=<root>", count=2)
    inst.wait_log(r"warning: .*BADF11E01: uid=0: .* -- file moved to corrupt/")
    assert (inst.queue_dir / "corrupt" / "BADF11E01").exists()
    wait_until(lambda: not os.listdir(inst.queue_dir / "maildrop"), 30, what="empty maildrop")


def test_user_submits_live_with_any_sender(new_instance, python_user) -> None:  # type: ignore[no-untyped-def]
    inst: Instance = new_instance(maildir=True)
    inst.start(wait_smtp=False)
    os.chmod(inst.queue_dir / "public", 0o711)  # design.md: public/ reachable without setgid
    wait_until(lambda: (inst.queue_dir / "public" / "pickup").exists(), 30, what="pickup socket")
    uid = pwd.getpwnam(python_user).pw_uid
    r = inst.tool("sendmail", "-f", "other@example.org", "-i", f"{ME}@localhost",
                  input=msg("from a user"), user=python_user)
    assert r.returncode == 0, r.stderr
    inst.wait_log(rf"postfix/pickup\[\d+\]: \w+: uid={uid} from=<other@example.org>")
    assert not os.listdir(inst.queue_dir / "maildrop")  # live, not through the maildrop
    r = inst.tool("sendmail", "-t", input=msg("mail style"), user=python_user)
    assert r.returncode == 0, r.stderr
    inst.wait_log(rf"uid={uid} from=<{python_user}>")


