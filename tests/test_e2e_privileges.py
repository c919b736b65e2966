"""Privilege separation, checked in /proc and on disk (root only, as CI runs)."""

from __future__ import annotations

import os
import pwd

import pytest
from harness import Instance, wait_until

pytestmark = pytest.mark.root


def _status(pid: int) -> dict[str, str]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            out[key] = value.strip()
    return out


def test_each_daemon_runs_as_the_design_says(instance: Instance, throwaway_user: str) -> None:
    owner = pwd.getpwnam("postfix")
    instance.send("a@example.org", f"{throwaway_user}@localhost", b"Subject: uid check\r\n\r\nhi\r\n")
    wait_until(lambda: instance.maildir_messages(throwaway_user), 60, what="delivery")
    daemons = instance.daemons()
    for name in ("master", "smtpd", "cleanup", "qmgr", "local"):
        assert name in daemons, (name, daemons)
    for name, pids in daemons.items():
        for pid in pids:
            st = _status(pid)
            uids = st["Uid"].split()
            if name in ("master", "local", "virtual"):
                assert uids[0] == "0" and uids[1] == "0", (name, st["Uid"])
            else:
                assert set(uids) == {str(owner.pw_uid)}, (name, st["Uid"])
                assert st["Groups"] == "", (name, st["Groups"])


def test_local_writes_as_the_recipient(instance: Instance, throwaway_user: str) -> None:
    pw = pwd.getpwnam(throwaway_user)
    instance.send("a@example.org", f"{throwaway_user}@localhost", b"Subject: owner\r\n\r\nhi\r\n")
    wait_until(lambda: instance.maildir_messages(throwaway_user), 60, what="delivery")
    new = instance.maildir(throwaway_user) / "new"
    (path,) = list(new.iterdir())
    st = os.stat(path)
    assert (st.st_uid, st.st_gid) == (pw.pw_uid, pw.pw_gid)
    assert os.stat(instance.maildir(throwaway_user)).st_uid == pw.pw_uid


def test_symlinked_mbox_is_refused(mbox_instance: Instance, throwaway_user: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    inst = mbox_instance
    target = tmp_path / "target"
    target.write_bytes(b"")
    os.symlink(target, inst.mail_dir / throwaway_user)
    queue_id = inst.send("a@example.org", f"{throwaway_user}@localhost", b"Subject: link\r\n\r\nhi\r\n")
    inst.wait_log(rf"{queue_id}: to=<{throwaway_user}@localhost>.*status=(deferred|bounced)")
    assert target.read_bytes() == b""
