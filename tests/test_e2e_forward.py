"""End to end: .forward files and mailbox_command on a real instance (root only).

Each test makes accounts with home directories under the instance's directory
(mode 0755, so local as the user and mail_owner can reach them), writes their
.forward files as they would, sends over SMTP and checks the log, the Maildirs
and the files commands wrote.
"""

from __future__ import annotations

import os
import pwd
import re
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import IS_ROOT, Instance, wait_until

pytestmark = pytest.mark.root

BODY = b"Subject: forward test\r\n\r\nhello\r\n"  # smtplib sends bytes as they are


@pytest.fixture
def inst(new_instance) -> Instance:  # type: ignore[no-untyped-def]
    if not IS_ROOT:
        pytest.skip("needs root")
    return new_instance(maildir=True)  # type: ignore[no-any-return]


@pytest.fixture
def make_user(inst: Instance) -> Iterator:  # type: ignore[type-arg]
    """make_user() -> (name, home): an account with a home under the instance directory."""
    made: list[str] = []
    homes = inst.base / "home"
    homes.mkdir(exist_ok=True)
    os.chmod(homes, 0o755)

    def make() -> tuple[str, Path]:
        name = "pmf" + uuid.uuid4().hex[:8]
        home = homes / name
        subprocess.run(["useradd", "--home-dir", str(home), "--shell", "/bin/sh", name],
                       check=True)
        made.append(name)
        pw = pwd.getpwnam(name)
        home.mkdir()
        os.chown(home, pw.pw_uid, pw.pw_gid)
        os.chmod(home, 0o755)
        return name, home

    yield make
    for name in made:
        subprocess.run(["userdel", name], check=False)


def write_forward(home: Path, text: str, mode: int = 0o644, name: str = ".forward") -> Path:
    pw = pwd.getpwnam(home.name)
    path = home / name
    path.write_text(text)
    os.chown(path, pw.pw_uid, pw.pw_gid)
    os.chmod(path, mode)
    return path


def forwarded_to(inst: Instance, qid: str, rcpt: str, member: str) -> None:
    """qid's rcpt was forwarded, and the copy delivered to member's maildir (both
    addresses as log patterns)."""
    (line,) = inst.wait_log(rf"{qid}: to=<{rcpt}>, relay=local, .*dsn=2\.0\.0, "
                            r"status=sent \(forwarded as \w+\)")
    new_id = re.search(r"forwarded as (\w+)", line).group(1)  # type: ignore[union-attr]
    inst.wait_log(rf"{new_id}: to=<{member}>, orig_to=<{rcpt}>, relay=local, "
                  r".*status=sent \(delivered to maildir\)")


def test_forward_to_another_address(inst: Instance, make_user) -> None:  # type: ignore[no-untyped-def]
    alice, alice_home = make_user()
    bob, _ = make_user()
    write_forward(alice_home, f"# my mail goes to bob\n{bob}@localhost\n")
    inst.start()
    qid = inst.send("sender@example.org", f"{alice}@localhost", BODY)
    forwarded_to(inst, qid, f"{alice}@localhost", f"{bob}@localhost")
    (msg,) = inst.wait_maildir(1, bob)
    assert msg.startswith(b"Return-Path: <sender@example.org>\n")
    assert f"Delivered-To: {alice}@localhost\n".encode() in msg
    assert msg.endswith(b"\nhello\n")
    assert inst.maildir_messages(alice) == []


def test_forward_to_command_runs_as_the_user(inst: Instance, make_user) -> None:  # type: ignore[no-untyped-def]
    alice, home = make_user()
    pw = pwd.getpwnam(alice)
    write_forward(home, f'"|cat > {home}/out; id -u > {home}/uid; echo $HOME > {home}/home"\n')
    inst.start()
    qid = inst.send("sender@example.org", f"{alice}@localhost", BODY)
    inst.wait_log(rf"{qid}: to=<{alice}@localhost>, relay=local, .*status=sent "
                  rf"\(delivered to command: cat > {home}/out; ")
    inst.wait_log(rf"{qid}: removed")
    out = (home / "out").read_bytes()
    assert out.startswith(b"From sender@example.org  ")
    assert f"Delivered-To: {alice}@localhost\n".encode() in out
    assert b"Subject: forward test\n" in out and out.endswith(b"\n\nhello\n")
    assert (home / "uid").read_text().strip() == str(pw.pw_uid)
    assert (home / "home").read_text().strip() == str(home)
    st = os.stat(home / "out")
    assert (st.st_uid, st.st_gid) == (pw.pw_uid, pw.pw_gid)
    assert inst.maildir_messages(alice) == []


def test_forward_backslash_user_keeps_a_copy(inst: Instance, make_user) -> None:  # type: ignore[no-untyped-def]
    alice, home = make_user()
    bob, _ = make_user()
    write_forward(home, f"\\{alice}, {bob}@localhost\n")
    inst.start()
    qid = inst.send("sender@example.org", f"{alice}@localhost", BODY)
    # "\\alice" is alice@$myorigin, delivered in place under the same queue ID
    inst.wait_log(rf"{qid}: to=<{alice}@[^>]+>, orig_to=<{alice}@localhost>, relay=local, "
                  r".*status=sent \(delivered to maildir\)")
    inst.wait_log(rf"{qid}: to=<{alice}@localhost>, relay=local, .*status=sent "
                  r"\(forwarded as \w+\)")
    (own,) = inst.wait_maildir(1, alice)
    (copy,) = inst.wait_maildir(1, bob)
    assert own.endswith(b"\nhello\n") and copy.endswith(b"\nhello\n")
    # the user's own copy is written as the user
    (path,) = list((inst.maildir(alice) / "new").iterdir())
    assert os.stat(path).st_uid == pwd.getpwnam(alice).pw_uid


def test_forward_naming_the_user_itself_goes_to_the_mailbox(inst: Instance, make_user) -> None:  # type: ignore[no-untyped-def]
    alice, home = make_user()
    write_forward(home, f"{alice}@localhost\n")
    inst.start()
    qid = inst.send("sender@example.org", f"{alice}@localhost", BODY)
    inst.wait_log(rf"{qid}: to=<{alice}@localhost>, .*status=sent \(delivered to maildir\)")
    assert len(inst.wait_maildir(1, alice)) == 1
    assert "forwarded as" not in inst.log()


def test_forward_extension_file_first(inst: Instance, make_user) -> None:  # type: ignore[no-untyped-def]
    alice, home = make_user()
    bob, _ = make_user()
    inst.set(recipient_delimiter="+")
    write_forward(home, f"{bob}@localhost\n", name=".forward+lists")
    write_forward(home, "")  # empty: no forwarding
    inst.start()
    qid = inst.send("sender@example.org", f"{alice}+lists@localhost", BODY)
    inst.wait_log(rf"{qid}: to=<{alice}\+lists@localhost>, .*status=sent \(forwarded as \w+\)")
    inst.wait_maildir(1, bob)
    qid = inst.send("sender@example.org", f"{alice}@localhost", BODY)
    inst.wait_log(rf"{qid}: to=<{alice}@localhost>, .*status=sent \(delivered to maildir\)")
    inst.wait_maildir(1, alice)


def test_unsafe_forward_is_ignored_with_a_warning(inst: Instance, make_user) -> None:  # type: ignore[no-untyped-def]
    alice, home = make_user()
    bob, _ = make_user()
    path = write_forward(home, f"{bob}@localhost\n", mode=0o666)
    inst.start()
    qid = inst.send("sender@example.org", f"{alice}@localhost", BODY)
    inst.wait_log(rf"postfix/local\[\d+\]: warning: file {path} is world writable")
    inst.wait_log(rf"{qid}: to=<{alice}@localhost>, .*status=sent \(delivered to maildir\)")
    assert len(inst.wait_maildir(1, alice)) == 1
    assert inst.maildir_messages(bob) == []
    # owned by someone else (not root, not the user): ignored too
    os.chmod(path, 0o644)
    os.chown(path, pwd.getpwnam(bob).pw_uid, -1)
    qid = inst.send("sender@example.org", f"{alice}@localhost", BODY)
    inst.wait_log(rf"warning: file {path} has bad owner uid {pwd.getpwnam(bob).pw_uid}")
    inst.wait_log(rf"{qid}: to=<{alice}@localhost>, .*status=sent \(delivered to maildir\)")
    assert inst.maildir_messages(bob) == []


def test_mailbox_command(inst: Instance, make_user) -> None:  # type: ignore[no-untyped-def]
    alice, home = make_user()
    pw = pwd.getpwnam(alice)
    inst.set(mailbox_command='/bin/sh -c \'cat > "$HOME/delivered"; echo "$USER $RECIPIENT" '
                             '> "$HOME/env"\'')
    inst.start()
    qid = inst.send("sender@example.org", f"{alice}@localhost", BODY)
    inst.wait_log(rf"{qid}: to=<{alice}@localhost>, relay=local, .*status=sent "
                  r"\(delivered to command: /bin/sh -c ")
    wait_until(lambda: (home / "env").exists(), 10, what="the command's env file")
    out = (home / "delivered").read_bytes()
    assert out.startswith(b"From sender@example.org  ") and out.endswith(b"\n\nhello\n")
    assert (home / "env").read_text().strip() == f"{alice} {alice}@localhost"
    assert os.stat(home / "delivered").st_uid == pw.pw_uid
    assert inst.maildir_messages(alice) == []


def test_mailbox_command_tempfail_defers(inst: Instance, make_user) -> None:  # type: ignore[no-untyped-def]
    alice, _ = make_user()
    inst.set(mailbox_command="/bin/sh -c 'exit 75'")
    inst.start()
    qid = inst.send("sender@example.org", f"{alice}@localhost", BODY)
    inst.wait_log(rf"{qid}: to=<{alice}@localhost>, .*dsn=4\.3\.0, status=deferred "
                  r"\(temporary failure\)")


def test_home_mailbox_mbox(inst: Instance, make_user) -> None:  # type: ignore[no-untyped-def]
    alice, home = make_user()
    inst.set(home_mailbox="Mailbox")
    inst.start()
    qid = inst.send("sender@example.org", f"{alice}@localhost", BODY)
    inst.wait_log(rf"{qid}: to=<{alice}@localhost>, .*status=sent \(delivered to mailbox\)")
    box = (home / "Mailbox").read_bytes()
    assert box.startswith(b"From sender@example.org  ") and box.endswith(b"hello\n\n")
    st = os.stat(home / "Mailbox")
    assert (st.st_uid, st.st_mode & 0o777) == (pwd.getpwnam(alice).pw_uid, 0o600)


def test_forward_members_get_the_unmatched_extension_when_asked(inst: Instance, make_user) -> None:  # type: ignore[no-untyped-def]
    """propagate_unmatched_extensions = ... forward: alice+tag's plain .forward hands bob
    the extension (bob+tag), as Postfix's dotforward.c."""
    alice, alice_home = make_user()
    bob, _ = make_user()
    write_forward(alice_home, f"{bob}@localhost\n")
    inst.set(recipient_delimiter="+", propagate_unmatched_extensions="canonical, virtual, forward")
    inst.start()
    qid = inst.send("sender@example.org", f"{alice}+tag@localhost", BODY)
    forwarded_to(inst, qid, rf"{alice}\+tag@localhost", rf"{bob}\+tag@localhost")


def test_forward_to_a_file_in_the_home(inst: Instance, make_user) -> None:  # type: ignore[no-untyped-def]
    """``~/file`` in a .forward is that file in the user's home (Postfix's
    deliver_token_home), written with the user's rights."""
    alice, home = make_user()
    write_forward(home, "~/saved\n")
    inst.start()
    qid = inst.send("sender@example.org", f"{alice}@localhost", BODY)
    inst.wait_log(rf"{qid}: to=<{alice}@localhost>, relay=local, .*dsn=2\.0\.0, "
                  rf"status=sent \(delivered to file: {home}/saved\)")
    saved = home / "saved"  # an mbox file, the user's
    assert (saved.stat().st_uid, saved.read_bytes()[:24]) == (
        pwd.getpwnam(alice).pw_uid, b"From sender@example.org ")
