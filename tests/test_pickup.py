"""pickup: maildrop files written while the system is down, a malformed one set aside,
live submissions over public/pickup with the submitter's uid from the kernel; a hostile
file (a pointer loop, content over message_size_limit) set aside with pickup's memory
unchanged, a requeued queue file with Postfix's pointer records delivered whole."""

from __future__ import annotations

import os
import pwd
import re
import subprocess
import sys
from pathlib import Path

import pytest
from harness import ME, Instance, wait_until
from qf_helpers import pointer_loop, postfix_edited

from pymailsys.queue import maildrop, spool

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




def peak_memory_kb(pid: int) -> int:
    """The process's resident high-water mark (VmHWM), in kB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmHWM for {pid}")


def running_pickup(inst: Instance) -> tuple[int, int]:
    """Start pickup with a live submission; (its pid, its VmHWM in kB) once it is idle."""
    assert inst.tool("sendmail", "-t", input=msg("wake pickup")).returncode == 0
    inst.wait_log(r"postfix/pickup\[\d+\]: \w+: uid=0 from=<root>")
    [pid] = inst.daemons()["pickup"]
    return pid, peak_memory_kb(pid)


def drop_as(user: str, inst: Instance, data: bytes) -> tuple[str, int]:
    """A complete maildrop file written by ``user`` as any local user can (maildrop/ is
    1733): (its name, the user's uid)."""
    name = spool.short_queue_id(123456, 987654)
    path = inst.queue_dir / "maildrop" / name
    script = (f"import os, sys; fd = os.open({str(path)!r}, os.O_WRONLY | os.O_CREAT | "
              "os.O_EXCL, 0o644); os.write(fd, sys.stdin.buffer.read()); os.fchmod(fd, 0o744)")
    subprocess.run(["runuser", "-u", user, "--", sys.executable, "-c", script], input=data,
                   check=True, cwd="/")
    return name, pwd.getpwnam(user).pw_uid


def test_pointer_loop_is_set_aside_and_pickup_memory_stays(new_instance, python_user) -> None:  # type: ignore[no-untyped-def]
    """The audit's file: 40 KB whose p record points back into its content. Replayed
    10,000 times, kept in memory, it took pickup to 400 MB before it was refused."""
    inst: Instance = new_instance(maildir=True)
    inst.start(wait_smtp=False)
    pid, before = running_pickup(inst)
    name, uid = drop_as(python_user, inst, pointer_loop(20))
    inst.tool("postqueue", "-f", check=True)
    inst.wait_log(rf"postfix/pickup\[{pid}\]: warning: \S*{name}: uid={uid}: "
                  r"too many reverse jump records -- file moved to corrupt/$")
    assert (inst.queue_dir / "corrupt" / name).exists()
    assert peak_memory_kb(pid) - before < 16 * 1024, (before, peak_memory_kb(pid))


def test_content_over_message_size_limit_is_set_aside(new_instance, python_user) -> None:  # type: ignore[no-untyped-def]
    """One 150 KB line (75 L records, then N) with a 100 KB limit: refused by pickup,
    which stops reading there, not handed to cleanup."""
    inst: Instance = new_instance(maildir=True, settings={"message_size_limit": "100000"})
    inst.start(wait_smtp=False)
    pid, _before = running_pickup(inst)
    sub = maildrop.Submission(sender=python_user, recipients=[f"{ME}@localhost"],
                              lines=[b"Subject: long", b"", b"x" * 150_000])
    name, uid = drop_as(python_user, inst, sub.to_records())
    inst.tool("postqueue", "-f", check=True)
    inst.wait_log(rf"postfix/pickup\[{pid}\]: warning: \S*{name}: uid={uid}: "
                  r"message file too big -- file moved to corrupt/$")
    assert (inst.queue_dir / "corrupt" / name).exists()
    assert "cleanup" not in inst.log().split(name, 1)[1]


def test_requeued_queue_file_with_pointers_is_delivered_whole(new_instance) -> None:  # type: ignore[no-untyped-def]
    """A held queue file edited as Postfix's cleanup edits one for a milter (a recipient
    and a header appended after E, reached through p records, with jumps back), then
    ``postsuper -r``: pickup follows the pointers, and streams the 7 MB content to
    cleanup without holding it (its memory stays where it was)."""
    inst: Instance = new_instance(maildir=True, settings={"recipient_delimiter": "+"})
    checks = inst.write("etc/header_checks", "/^Subject: hold me please$/ HOLD\n")
    inst.set(header_checks=f"regexp:{checks}")
    inst.start()
    body = "".join(f"l{i:07d}\r\n" for i in range(700_000))
    queue_id = inst.send("alice@example.org", f"{ME}@localhost",
                         f"Subject: hold me please\r\nTo: {ME}@localhost\r\n\r\n{body}")
    held = inst.queue_dir / "hold" / queue_id
    wait_until(held.exists, 60, what="the held queue file")
    pid, before = running_pickup(inst)
    inst.wait_maildir(1)
    edited = postfix_edited(held.read_bytes(), b"Subject: hold me please",
                            [b"Subject: released", b"X-Milter: added"], [f"{ME}+added@localhost"])
    with open(held, "r+b") as f:  # in place: owner and mode stay mail_owner's, 0700
        f.write(edited)
        f.truncate()
    inst.tool("postsuper", "-r", queue_id, check=True)
    inst.tool("postqueue", "-f", check=True)
    inst.wait_log(rf"postfix/pickup\[{pid}\]: \w+: uid=\d+ from=<alice@example.org> "
                  rf"orig_id={queue_id}$")
    copies = [m for m in inst.wait_maildir(3, timeout=120) if b"X-Milter: added\n" in m]
    assert len(copies) == 2
    for message in copies:
        head, _, text = message.partition(b"\n\n")
        assert b"\nSubject: released\n" in head and b"hold me" not in head
        assert text == body.replace("\r\n", "\n").encode()
    assert {re.search(rb"^X-Original-To: (.*)$", m, re.M).group(1) for m in copies} == {  # type: ignore[union-attr]
        f"{ME}@localhost".encode(), f"{ME}+added@localhost".encode()}
    assert peak_memory_kb(pid) - before < 16 * 1024, (before, peak_memory_kb(pid))


def test_maildrop_file_with_a_control_character_in_an_address_is_set_aside(new_instance, python_user) -> None:  # type: ignore[no-untyped-def]
    """A file written straight into maildrop/ (not by sendmail, which refuses them) with
    ESC in its sender or recipient: corrupt/, as other malformed files, never queued
    for the delivery agents to refuse."""
    inst: Instance = new_instance(maildir=True)
    inst.start(wait_smtp=False)
    pid, _ = running_pickup(inst)
    for sub, record in ((maildrop.Submission(sender="a\x1b[2J@example.com",
                                             recipients=[f"{ME}@localhost"]), "sender"),
                        (maildrop.Submission(sender=python_user,
                                             recipients=[f"{ME}\x1b[2J@localhost"]), "recipient")):
        sub.lines = [b"Subject: esc", b"", b"x"]
        name, uid = drop_as(python_user, inst, sub.to_records())
        inst.tool("postqueue", "-f", check=True)
        inst.wait_log(rf"postfix/pickup\[{pid}\]: warning: \S*{name}: uid={uid}: "
                      rf"control character in '{record}' record -- file moved to corrupt/$")
        os.rename(inst.queue_dir / "corrupt" / name, inst.queue_dir / "corrupt" / f"{name}.{record}")
    assert f"uid={pwd.getpwnam(python_user).pw_uid} from=" not in inst.log()


def test_live_submission_with_a_control_character_is_refused(new_instance, python_user) -> None:  # type: ignore[no-untyped-def]
    """sendmail refuses it before it reaches pickup: exit 75, nothing queued."""
    inst: Instance = new_instance(maildir=True)
    inst.start(wait_smtp=False)
    running_pickup(inst)
    for args in (["-f", "a\x1b[2J@example.com", f"{ME}@localhost"], [f"{ME}\x1b[2J@localhost"]):
        r = inst.tool("sendmail", *args, input=msg("esc"), user=python_user)
        assert r.returncode == 75, r.stderr
        assert "malformed sender" in r.stderr or "Bad recipient address syntax" in r.stderr
    assert not os.listdir(inst.queue_dir / "maildrop")
    assert inst.tool("postqueue", "-p").stdout.strip() == "Mail queue is empty"


def test_live_submission_of_5_mb_is_delivered_byte_for_byte(new_instance, python_user) -> None:  # type: ignore[no-untyped-def]
    inst: Instance = new_instance(maildir=True)
    inst.start(wait_smtp=False)
    running_pickup(inst)
    body = b"".join(b"line %07d of a large message\n" % i for i in range(170_000))
    assert len(body) > 5_000_000
    r = inst.tool("sendmail", "-i", f"{ME}@localhost", input=b"Subject: big\n\n" + body,
                  user=python_user)
    assert r.returncode == 0, r.stderr
    assert not os.listdir(inst.queue_dir / "maildrop")
    got = wait_until(lambda: [m for m in inst.maildir_messages() if b"\nSubject: big\n" in m],
                     60, what="the large message")
    assert got[0].endswith(b"\n\n" + body)
