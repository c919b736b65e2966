"""End to end: the virtual delivery agent (virtual_mailbox_domains, Maildir and mbox).

Mail for a virtual mailbox domain goes in over SMTP and comes out in the files
virtual_mailbox_maps names under virtual_mailbox_base, owned by the ids
virtual_uid_maps and virtual_gid_maps give (as root: uid and gid 5000, which no
account needs to have; as another user: that user's own ids).
"""

from __future__ import annotations

import fcntl
import os
import re
import subprocess
import time
from pathlib import Path

import pytest
from harness import IS_ROOT, Instance
from test_e2e_reload import reload_outlasting_qmgr

VUID = 5000 if IS_ROOT else os.getuid()
VGID = 5000 if IS_ROOT else os.getgid()

MESSAGE = (b"From: Carol <carol@example.org>\r\nSubject: virtual\r\n\r\n"
           b"From the start of a line\r\nbody\r\n")


def _virtual(new_instance, **extra: str) -> tuple[Instance, Path]:  # type: ignore[no-untyped-def]
    inst: Instance = new_instance(maildir=True)
    base = inst.base / "vmail"
    base.mkdir()
    os.chown(base, VUID, VGID)
    mailboxes = inst.write("etc/vmailbox", "alice@example.com example.com/alice/\n"
                                           "bob@example.com   example.com/bob\n"
                                           "@catchall.example catchall/\n")
    settings = {
        "virtual_mailbox_domains": "example.com, catchall.example",
        "virtual_mailbox_base": str(base),
        "virtual_mailbox_maps": f"texthash:{mailboxes}",
        "virtual_uid_maps": f"static:{VUID}",
        "virtual_gid_maps": f"static:{VGID}",
        "virtual_minimum_uid": "100" if VUID >= 100 else str(VUID),
    }
    settings.update(extra)
    inst.set(**settings)
    inst.start()
    return inst, base


def _maildir_files(maildir: Path) -> list[Path]:
    try:
        return sorted((maildir / "new").iterdir())
    except FileNotFoundError:
        return []


def test_maildir_and_mbox_delivery_as_the_mapped_owner(new_instance) -> None:  # type: ignore[no-untyped-def]
    inst, base = _virtual(new_instance)
    # same domain: qmgr may hand both over in one request (virtual_destination_recipient_limit)
    queue_id = inst.send("carol@example.org", ["alice@example.com", "bob@example.com"], MESSAGE)
    line = inst.wait_log(rf"{queue_id}: to=<alice@example\.com>, relay=virtual, delay=\S+, "
                         rf"delays=\S+, dsn=2\.0\.0, status=sent \(delivered to maildir\)")
    assert line
    bob = inst.wait_log(rf"{queue_id}: to=<bob@example\.com>, relay=virtual, .*dsn=2\.0\.0, "
                        rf"status=sent \(delivered to mailbox\)")
    pids = {re.search(r"postfix/virtual\[(\d+)\]", found[0]).group(1)  # type: ignore[union-attr]
            for found in (line, bob)}
    assert len(pids) == 1  # one virtual process delivered both
    (delivered,) = _maildir_files(base / "example.com" / "alice")
    data = delivered.read_bytes()
    assert data.startswith(b"Return-Path: <carol@example.org>\nX-Original-To: alice@example.com\n"
                           b"Delivered-To: alice@example.com\n")
    assert data.endswith(b"\n\nFrom the start of a line\nbody\n")
    st = delivered.stat()
    assert (st.st_uid, st.st_gid) == (VUID, VGID)
    assert st.st_mode & 0o777 == 0o600
    # the delivery marker (crash idempotence) names the file in new/, in virtual's own
    # directory (root's pid/ when root)
    (marker,) = [m for m in (inst.queue_dir / "pid" / "virtual-markers").iterdir()
                 if m.name.startswith(queue_id + ".")]
    assert marker.read_text() == delivered.name
    assert marker.stat().st_uid == os.geteuid()
    mbox = base / "example.com" / "bob"
    text = mbox.read_bytes()
    assert text.startswith(b"From carol@example.org ")
    assert b"\nDelivered-To: bob@example.com\n" in text
    assert text.endswith(b"\n\n>From the start of a line\nbody\n\n")
    assert (mbox.stat().st_uid, mbox.stat().st_gid) == (VUID, VGID)


def test_catchall_domain_entry_and_case(new_instance) -> None:  # type: ignore[no-untyped-def]
    inst, base = _virtual(new_instance)
    queue_id = inst.send("carol@example.org", "AnyOne@CatchAll.Example", MESSAGE)
    inst.wait_log(rf"{queue_id}: to=<AnyOne@CatchAll\.Example>, relay=virtual, .*"
                  rf"status=sent \(delivered to maildir\)")
    assert len(_maildir_files(base / "catchall")) == 1


def test_address_extension(new_instance) -> None:  # type: ignore[no-untyped-def]
    """With recipient_delimiter, user+ext@domain finds user@domain's mailbox and owner."""
    inst, base = _virtual(new_instance, recipient_delimiter="+")
    queue_id = inst.send("carol@example.org", "alice+lists@example.com", MESSAGE)
    inst.wait_log(rf"{queue_id}: to=<alice\+lists@example\.com>, relay=virtual, .*"
                  rf"status=sent \(delivered to maildir\)")
    (delivered,) = _maildir_files(base / "example.com" / "alice")
    assert b"\nDelivered-To: alice+lists@example.com\n" in delivered.read_bytes()


def test_unknown_mailbox_is_rejected_at_rcpt(new_instance) -> None:  # type: ignore[no-untyped-def]
    inst, _ = _virtual(new_instance)
    with inst.smtp() as client:
        client.ehlo()
        client.mail("carol@example.org")
        code, text = client.rcpt("nobody@example.com")
    assert code == 550
    assert text == (b"5.1.1 <nobody@example.com>: Recipient address rejected: "
                    b"User unknown in virtual mailbox table")
    inst.wait_log(r"NOQUEUE: reject: RCPT from \S+: 550 5\.1\.1 <nobody@example\.com>: "
                  r"Recipient address rejected: User unknown in virtual mailbox table;")


def test_uid_below_virtual_minimum_uid_defers(new_instance) -> None:  # type: ignore[no-untyped-def]
    inst, base = _virtual(new_instance, virtual_minimum_uid=str(VUID + 1))
    queue_id = inst.send("carol@example.org", "alice@example.com", MESSAGE)
    inst.wait_log(rf"warning: recipient alice@example\.com: bad uid {VUID} in virtual_uid_maps")
    inst.wait_log(rf"{queue_id}: to=<alice@example\.com>, relay=virtual, .*dsn=4\.3\.5, "
                  rf"status=deferred \(mail system configuration error\)")
    assert _maildir_files(base / "example.com" / "alice") == []


def test_mbox_symlink_is_not_followed(new_instance) -> None:  # type: ignore[no-untyped-def]
    """A link in place of an mbox is refused; Postfix's virtual defers that (4.2.0, its
    mbox_open default): the mailbox is the administrator's to fix."""
    inst, base = _virtual(new_instance)
    target = inst.base / "elsewhere"
    target.write_bytes(b"")
    (base / "example.com").mkdir()
    os.chown(base / "example.com", VUID, VGID)
    os.symlink(target, base / "example.com" / "bob")
    queue_id = inst.send("carol@example.org", "bob@example.com", MESSAGE)
    inst.wait_log(rf"{queue_id}: to=<bob@example\.com>, relay=virtual, .*dsn=4\.2\.0, "
                  rf"status=deferred \(delivery failed to mailbox "
                  rf"{re.escape(str(base))}/example\.com/bob: "
                  rf"file is a symbolic link\)")
    assert target.read_bytes() == b""


@pytest.mark.root
def test_delivery_runs_with_the_mapped_ids_not_root(new_instance) -> None:  # type: ignore[no-untyped-def]
    """A Maildir directory only root may write stays untouched: virtual writes as 5000."""
    if not IS_ROOT:
        pytest.skip("needs root")
    inst, base = _virtual(new_instance)
    locked = base / "example.com"
    locked.mkdir(mode=0o755)  # root's: uid 5000 cannot create alice/ in it
    queue_id = inst.send("carol@example.org", "alice@example.com", MESSAGE)
    inst.wait_log(rf"{queue_id}: to=<alice@example\.com>, relay=virtual, .*dsn=4\.2\.0, "
                  rf"status=deferred \(maildir delivery failed: create maildir file "
                  rf"{re.escape(str(locked))}/alice/tmp/[^/]+: Permission denied\)")
    inst.wait_log(rf"postfix/virtual\[\d+\]: warning: maildir access problem for "
                  rf"UID/GID={VUID}/{VGID}: create maildir file .*: Permission denied$")
    inst.wait_log(r"postfix/virtual\[\d+\]: warning: perhaps you need to create the maildirs")
    assert not (locked / "alice").exists()


@pytest.mark.root
def test_a_maildir_delivery_switches_credentials_four_times(new_instance, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The marker is claimed as root, in root's own directory, then the Maildir is written
    as the mapped ids: one switch of two calls each way and no setgroups (until
    2026-12-06 the marker was kept as mail_owner, a second switch)."""
    if not IS_ROOT:
        pytest.skip("needs root")
    inst, base = _virtual(new_instance)
    queue_id = inst.send("carol@example.org", "alice@example.com", MESSAGE)
    inst.wait_log(rf"{queue_id}: to=<alice@example\.com>, relay=virtual, .*status=sent")
    (pid,) = inst.daemons()["virtual"]
    trace = tmp_path / "strace.txt"
    strace = subprocess.Popen(["strace", "-qq", "-p", str(pid), "-o", str(trace), "-e",
                               "trace=setresuid,setresgid,setgroups"])
    try:
        sent = 1
        for _ in range(20):  # until a delivery shows in the trace
            queue_id = inst.send("carol@example.org", "alice@example.com", MESSAGE)
            sent += 1
            inst.wait_log(rf"{queue_id}: to=<alice@example\.com>, relay=virtual, .*status=sent")
            if trace.exists() and "setresuid" in trace.read_text():
                break
        before = len(trace.read_text().splitlines())
        for _ in range(2):
            queue_id = inst.send("carol@example.org", "alice@example.com", MESSAGE)
            sent += 1
            inst.wait_log(rf"{queue_id}: to=<alice@example\.com>, relay=virtual, .*status=sent")
    finally:
        strace.terminate()
        strace.wait(20)
    assert inst.daemons()["virtual"] == [pid]
    calls = trace.read_text().splitlines()[before:]
    assert len(calls) == 2 * 4, calls
    assert not [c for c in calls if "setgroups" in c], calls
    files = _maildir_files(base / "example.com" / "alice")
    assert len(files) == sent and {f.stat().st_uid for f in files} == {VUID}


def test_changed_table_restarts_the_daemons_that_use_it(new_instance) -> None:  # type: ignore[no-untyped-def]
    """postmap on a hash: table in use: the daemons log Postfix's line and restart on it."""
    inst, base = _virtual(new_instance)
    source = inst.write("etc/vhash", "alice@example.com example.com/alice/\n")
    inst.tool("postmap", str(source), check=True)
    inst.stop()
    inst.set(virtual_mailbox_maps=f"hash:{source}")
    inst.start()
    first = inst.send("carol@example.org", "alice@example.com", MESSAGE)
    inst.wait_log(rf"{first}: to=<alice@example\.com>, relay=virtual, .*status=sent")
    before = set(inst.daemons().get("virtual", []))
    source.write_text("alice@example.com example.com/alice/\ndave@example.com example.com/dave/\n")
    inst.tool("postmap", str(source), check=True)
    for daemon in ("smtpd", "virtual"):  # smtpd has it open for the RCPT check
        inst.wait_log(rf"postfix/{daemon}\[\d+\]: table hash:{re.escape(str(source))} "
                      rf"has changed -- restarting")
    second = inst.send("carol@example.org", "dave@example.com", MESSAGE)
    inst.wait_log(rf"{second}: to=<dave@example\.com>, relay=virtual, .*status=sent")
    assert len(_maildir_files(base / "example.com" / "dave")) == 1
    assert not before & set(inst.daemons().get("virtual", []))


def test_mailbox_limit_below_message_size_limit_is_fatal(new_instance) -> None:  # type: ignore[no-untyped-def]
    inst, base = _virtual(new_instance, virtual_mailbox_limit="1000")
    queue_id = inst.send("carol@example.org", "alice@example.com", MESSAGE)
    inst.wait_log(r"postfix/virtual\[\d+\]: fatal: configuration error: "
                  r"virtual_mailbox_limit is smaller than message_size_limit")
    assert queue_id in inst.queue_ids("active") + inst.queue_ids("deferred")
    assert _maildir_files(base / "example.com" / "alice") == []


def test_a_delivery_outlasting_the_old_qmgr_is_not_repeated(new_instance) -> None:  # type: ignore[no-untyped-def]
    """A reload while virtual waits for a locked mbox, the wait longer than the old
    qmgr stays for: virtual marks the recipient done in the queue file itself, so the
    new qmgr, which never hears the reply, does not deliver the message again."""
    inst, base = _virtual(new_instance, deliver_lock_attempts="60")
    mbox = base / "example.com" / "bob"
    mbox.parent.mkdir()
    mbox.touch(mode=0o600)
    for path in (mbox.parent, mbox):
        os.chown(path, VUID, VGID)
    with open(mbox, "r+b") as held:
        fcntl.lockf(held, fcntl.LOCK_EX)
        queue_id = inst.send("carol@example.org", "bob@example.com", MESSAGE)
        inst.wait_log(rf"{queue_id}: from=<carol@example\.org>, .*\(queue active\)")
        time.sleep(1)  # virtual is waiting for the lock
        reload_outlasting_qmgr(inst, queue_id, lambda: fcntl.lockf(held, fcntl.LOCK_UN))
    assert len(re.findall(rf"{queue_id}: to=<bob@example\.com>.*status=sent", inst.log())) == 1
    assert mbox.read_bytes().count(b"\nDelivered-To: bob@example.com\n") == 1
