"""local: mailbox formats, aliases (addresses, commands, files), loops, errors, privileges.

Runs the real cleanup, qmgr and local standalone (see test_qmgr.Standalone);
root-only tests use conftest's ``throwaway_user`` account.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import re
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import local_account
from harness import IS_ROOT, wait_until
from test_qmgr import BODY, ME, Standalone, standalone_systems

from pymailsys.delivery import mailbox
from pymailsys.ipc.attr import SyncAttrClient


@pytest.fixture
def system():  # type: ignore[no-untyped-def]
    yield from standalone_systems()


def _shared_dir() -> str:
    """A directory everyone may write (default_privs and test users must reach it)."""
    path = f"/tmp/pymailsys-local-{uuid.uuid4().hex[:8]}"
    os.mkdir(path)
    os.chmod(path, 0o1777)
    return path


def test_mbox_exact_bytes(system) -> None:  # type: ignore[no-untyped-def]
    s = system(maildir=False)
    s.start()
    qid = s.queue("alice@example.org", [f"{ME}@localhost"], BODY)
    s.wait_log(rf"{qid}: to=<{ME}@localhost>, relay=local, .*status=sent \(delivered to mailbox\)")
    qid2 = s.queue("", [f"{ME}@localhost"], b"Subject: two\n\nsecond\n")
    s.wait_log(rf"{qid2}: removed")
    box = (s.mail_dir / ME).read_bytes()
    first, second = re.split(rb"\n(?=From MAILER-DAEMON  )", box)
    head, rest = first.split(b"\n", 1)
    assert re.fullmatch(rb"From alice@example\.org  \w{3} \w{3} [ \d]\d \d\d:\d\d:\d\d \d{4}", head)
    assert rest == (f"Return-Path: <alice@example.org>\nX-Original-To: {ME}@localhost\n"
                    f"Delivered-To: {ME}@localhost\n").encode() + BODY.replace(
                        b"\nFrom here", b"\n>From here")  # its blank line went to the split
    assert second.split(b"\n", 1)[1].startswith(b"Return-Path: <>\n")
    assert box.endswith(b"second\n\n")
    assert os.stat(s.mail_dir / ME).st_mode & 0o777 == 0o600


def _biff_notices(comsat: socket.socket, seconds: float) -> Iterator[bytes]:
    """The datagrams comsat receives within ``seconds``."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        comsat.settimeout(left)
        try:
            yield comsat.recv(100)
        except TimeoutError:
            return


@pytest.mark.skipif(not IS_ROOT, reason="binds the biff port, 512/udp")
def test_biff_notices_after_mbox_deliveries(system) -> None:  # type: ignore[no-untyped-def]
    """biff = yes (Postfix's default): after each mbox delivery one datagram NAME@OFFSET
    and a null byte to localhost's biff service, as Debian's Postfix sends it; biff = no:
    none. Tests running beside this one (pytest-xdist) may notify the same port for
    their own mailboxes of the same name: each mailbox here starts at a size of its
    own, so that its notices are told apart by their offset."""
    def prefilled(inst: Standalone) -> int:
        size = int.from_bytes(os.urandom(3), "big") + 1000  # an offset no other test has
        (inst.mail_dir / ME).write_bytes(b"x" * (size - 1) + b"\n")
        os.chmod(inst.mail_dir / ME, 0o600)
        return size

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as comsat:
        try:
            comsat.bind(("127.0.0.1", 512))
        except OSError as e:
            pytest.skip(f"biff port: {e}")
        s = system(maildir=False)
        s.start()
        offset = prefilled(s)  # where each new message starts: the mailbox's size before it
        for _ in range(2):
            qid = s.queue("alice@example.org", [f"{ME}@localhost"], BODY)
            s.wait_log(rf"{qid}: to=<{ME}@localhost>, relay=local, .*status=sent ")
            expected = f"{ME}@{offset}\0".encode()
            assert expected in _biff_notices(comsat, 10)  # stops at the first match
            offset = os.path.getsize(s.mail_dir / ME)
        quiet = system(maildir=False, biff="no")
        quiet.start()
        quiet_offset = prefilled(quiet)
        qid = quiet.queue("alice@example.org", [f"{ME}@localhost"], BODY)
        quiet.wait_log(rf"{qid}: to=<{ME}@localhost>, relay=local, .*status=sent ")
        assert os.path.getsize(quiet.mail_dir / ME) > quiet_offset
        assert f"{ME}@{quiet_offset}\0".encode() not in list(_biff_notices(comsat, 1))


def test_mailbox_refusals_read_as_postfix(system) -> None:  # type: ignore[no-untyped-def]
    """An mbox that is a symbolic link, has two hard links or is a directory bounces,
    and one locked by another process defers, each in the words Debian's Postfix logs."""
    s = system(maildir=False, deliver_lock_attempts="1")
    s.start()
    box = s.mail_dir / ME
    (s.mail_dir / "target").write_bytes(b"")
    cases = {
        "file is a symbolic link": lambda: os.symlink(s.mail_dir / "target", box),
        "file has 2 hard links": lambda: os.link(s.mail_dir / "target", box),
        "cannot open file: Is a directory": lambda: box.mkdir(),
        f"unable to create lock file {box}.lock: File exists":
            lambda: (box.write_bytes(b""), (s.mail_dir / f"{ME}.lock").write_bytes(b"")),
    }
    for text, make in cases.items():
        make()
        qid = s.queue("alice@example.org", [f"{ME}@localhost"], BODY)
        status = "deferred" if "lock" in text else "bounced"
        s.wait_log(rf"{qid}: to=<{ME}@localhost>, relay=local, .*status={status} "
                   rf"\(cannot update mailbox {re.escape(str(box))} for user {ME}\. "
                   rf"{re.escape(text)}\)$")
        if box.is_dir() and not box.is_symlink():
            box.rmdir()
        else:
            box.unlink()
    assert (s.mail_dir / "target").read_bytes() == b""


def test_alias_members_of_one_maildir_each_get_a_copy(system) -> None:  # type: ignore[no-untyped-def]
    """An alias list naming "user" and "user+ext": two mailbox deliveries in one request,
    two copies in the Maildir, as Debian's Postfix stores them (each logged)."""
    s = system(recipient_delimiter="+")
    s.aliases(f"list: {ME}, {ME}+x\n")
    s.start()
    qid = s.queue("alice@example.org", ["list@localhost"], BODY)
    s.wait_log(rf"{qid}: to=<{ME}(\+x)?@[^>]+>, orig_to=<list@localhost>, relay=local, .*"
               r"status=sent \(delivered to maildir\)", count=2)
    s.wait_log(rf"{qid}: removed")
    assert len(s.maildir_messages()) == 2


def test_delivered_to_keeps_the_recipients_case(system) -> None:  # type: ignore[no-untyped-def]
    """Postfix's mail_copy writes Delivered-To as the recipient came, case and all (only
    the copies local forwards get a case-folded one); the loop check stays case-blind."""
    s = system(maildir=False)
    s.start()
    qid = s.queue("alice@example.org", [f"{ME.upper()}@LocalHost"], BODY)
    s.wait_log(rf"{qid}: to=<{ME.upper()}@LocalHost>, relay=local, .*status=sent ")
    assert f"\nX-Original-To: {ME.upper()}@LocalHost\nDelivered-To: {ME.upper()}@LocalHost\n" \
        in (s.mail_dir / ME).read_text()
    qid = s.queue("alice@example.org", [f"{ME.upper()}@LocalHost"],
                  f"Delivered-To: {ME}@localhost\n\nlooped\n".encode())
    s.wait_log(rf"{qid}: to=<{ME.upper()}@LocalHost>, relay=local, .*dsn=5\.4\.6, "
               rf"status=bounced \(mail forwarding loop for {ME.upper()}@LocalHost\)")


def test_delivered_to_loop_bounces(system) -> None:  # type: ignore[no-untyped-def]
    s = system()
    s.start()
    text = f"Delivered-To: {ME}@localhost\nSubject: loop\n\nx\n".encode()
    qid = s.queue("alice@example.org", [f"{ME}@localhost"], text)
    s.wait_log(rf"{qid}: to=<{ME}@localhost>, .*dsn=5\.4\.6, status=bounced "
               rf"\(mail forwarding loop for {ME}@localhost\)")
    assert s.maildir_messages() == []


def test_recipient_delimiter_extension(system) -> None:  # type: ignore[no-untyped-def]
    s = system(recipient_delimiter="+")
    s.start()
    qid = s.queue("alice@example.org", [f"{ME.upper()}+Box@localhost"], BODY)
    s.wait_log(rf"{qid}: to=<{ME.upper()}\+Box@localhost>, .*status=sent \(delivered to maildir\)")
    (msg,) = s.maildir_messages()
    assert f"Delivered-To: {ME.upper()}+Box@localhost\n".encode() in msg  # as Postfix: case kept


def test_alias_delivers_local_members_in_place_and_forwards_the_rest(system) -> None:  # type: ignore[no-untyped-def]
    s = system()
    s.aliases(f"team: {ME}@localhost, other@remote.example\n")
    s.start()
    qid = s.queue("alice@example.org", ["team@localhost"], BODY)
    s.wait_log(rf"{qid}: to=<{ME}@localhost>, orig_to=<team@localhost>, relay=local, .*"
               r"dsn=2\.0\.0, status=sent \(delivered to maildir\)")
    (line,) = s.wait_log(rf"{qid}: to=<team@localhost>, relay=local, .*dsn=2\.0\.0, "
                         r"status=sent \(forwarded as \w+\)")
    new_id = re.search(r"forwarded as (\w+)", line).group(1)  # type: ignore[union-attr]
    s.wait_log(rf"{new_id}: from=<alice@example\.org>, size=\d+, nrcpt=1 \(queue active\)")
    (msg,) = s.maildir_messages()
    assert msg.startswith(b"Return-Path: <alice@example.org>\nX-Original-To: team@localhost\n"
                          b"Delivered-To: team@localhost\n")
    assert msg.count(b"Delivered-To:") == 1
    assert msg.endswith(b"\nline one\nFrom here\n.dot\n")


def test_alias_self_reference_and_file(system) -> None:  # type: ignore[no-untyped-def]
    shared = _shared_dir()
    try:
        s = system()
        s.aliases(f"{ME}: {ME}, {shared}/archive\n")
        s.start()
        qid = s.queue("alice@example.org", [f"{ME}@localhost"], BODY)
        s.wait_log(rf"{qid}: to=<{ME}@localhost>, .*status=sent \(delivered to file: {shared}/archive\)")
        # the member "ME" is ME@myorigin, delivered in place to the mailbox
        s.wait_log(rf"{qid}: to=<{ME}@test\.example>, orig_to=<{ME}@localhost>, .*"
                   r"status=sent \(delivered to maildir\)")
        archive = open(f"{shared}/archive", "rb").read()
        assert archive.startswith(b"From alice@example.org  ")
        assert b"\n>From here\n" in archive
        if IS_ROOT:
            assert os.stat(f"{shared}/archive").st_uid == pwd.getpwnam("nobody").pw_uid
        assert len(s.maildir_messages()) == 1
    finally:
        subprocess.run(["rm", "-rf", shared], check=False)


def test_alias_to_dev_null_is_delivered(system) -> None:  # type: ignore[no-untyped-def]
    """Postfix's deliver_file writes to a character device as it is (``devnull:
    /dev/null``, a common alias): no dot lock beside it, no fsync; a mailbox is still
    only a regular file."""
    s = system()
    s.aliases("devnull: /dev/null\n")
    s.start()
    qid = s.queue("alice@example.org", ["devnull@localhost"], BODY)
    s.wait_log(rf"{qid}: to=<devnull@localhost>, relay=local, .*dsn=2\.0\.0, "
               r"status=sent \(delivered to file: /dev/null\)")
    assert not os.path.exists("/dev/null.lock")
    with pytest.raises(mailbox.MailboxError, match="destination /dev/null is not a regular file"):
        mailbox.deliver_mbox("/dev/null", b"x", locks=["fcntl"])


def test_alias_commands_exit_codes(system) -> None:  # type: ignore[no-untyped-def]
    shared = _shared_dir()
    try:
        s = system()
        s.aliases(
            f'ok: "|cat > {shared}/out; id -u > {shared}/uid"\n'
            "tempfail: \"|/bin/sh -c 'exit 75'\"\n"
            'fail: "|echo something broke; exit 1"\n'
            'dsn: "|echo 5.1.1 no such mailbox here; exit 67"\n')
        s.start()
        qid = s.queue("alice@example.org", ["ok@localhost"], BODY)
        s.wait_log(rf"{qid}: to=<ok@localhost>, .*status=sent \(delivered to command: cat > ")
        out = open(f"{shared}/out", "rb").read()
        assert out.startswith(b"From alice@example.org  ")
        assert b"\nReturn-Path: <alice@example.org>\nX-Original-To: ok@localhost\n" \
               b"Delivered-To: ok@localhost\n" in out
        assert out.endswith(BODY)  # no >From quoting for commands
        expected_uid = pwd.getpwnam("nobody").pw_uid if IS_ROOT else os.getuid()
        assert open(f"{shared}/uid").read().strip() == str(expected_uid)
        qid = s.queue("alice@example.org", ["tempfail@localhost"], BODY)
        s.wait_log(rf"{qid}: to=<tempfail@localhost>, .*dsn=4\.3\.0, status=deferred "
                   r"\(temporary failure\)")
        qid = s.queue("alice@example.org", ["fail@localhost"], BODY)
        s.wait_log(rf"{qid}: to=<fail@localhost>, .*dsn=5\.3\.0, status=bounced \(Command died "
                   r'with status 1: "echo something broke; exit 1"\. Command output: something broke \)')
        qid = s.queue("alice@example.org", ["dsn@localhost"], BODY)
        s.wait_log(rf"{qid}: to=<dsn@localhost>, .*dsn=5\.1\.1, status=bounced "
                   r"\(no such mailbox here \)")
    finally:
        subprocess.run(["rm", "-rf", shared], check=False)


def test_alias_command_verdicts_as_postfix(system) -> None:  # type: ignore[no-untyped-def]
    """Postfix's pipe_command verdicts, as Debian's Postfix 3.7 logs them for the same
    aliases: sysexits.h statuses through its table (with the output after the text), a
    2.x.x status on failure bounces 5.0.0, the time limit bounces with the output so
    far, output is printable (tabs, newlines: spaces; other controls: _), a program
    that cannot be executed defers, a shell builtin runs in the shell."""
    s = system(command_time_limit="2s")
    s.aliases(
        "nouser: \"|/bin/sh -c 'echo no such person; exit 67'\"\n"
        "usage: \"|/bin/sh -c 'exit 64'\"\n"
        "oserr: \"|/bin/sh -c 'exit 71'\"\n"
        "other: \"|/bin/sh -c 'exit 200'\"\n"
        "two: \"|/bin/sh -c 'echo 2.0.0 fine; exit 1'\"\n"
        "quota: \"|/bin/sh -c 'echo 4.2.2 over quota; exit 1'\"\n"
        "ctl: \"|/bin/sh -c 'printf \\\"a\\\\tb\\\\033c\\\\rd\\\"; exit 1'\"\n"
        "slow: \"|/bin/sh -c 'echo slow; exec sleep 30'\"\n"
        "noexec: |/nonexistent/prog\n"
        "builtin: \"|exit 67\"\n"
        "shell: \"|=x\"\n")
    s.start()
    expected = {
        "nouser": r"dsn=5\.1\.1, status=bounced \(user unknown\. Command output: no such person \)",
        "usage": r"dsn=5\.3\.0, status=bounced \(command line usage error\)",
        "oserr": r"dsn=4\.3\.0, status=deferred \(system resource problem\)",
        "other": r'dsn=5\.3\.0, status=bounced \(Command died with status 200: "/bin/sh -c \'exit 200\'"\)',
        "two": r"dsn=5\.0\.0, status=bounced \(fine \)",
        "quota": r"dsn=4\.2\.2, status=deferred \(over quota \)",
        "ctl": r'dsn=5\.3\.0, status=bounced \(Command died with status 1: .*Command output: a b_c_d\)',
        "slow": r'dsn=5\.3\.0, status=bounced \(Command time limit exceeded: "/bin/sh -c '
                r"'echo slow; exec sleep 30'\"\. Command output: slow \)",
        "noexec": r"dsn=4\.3\.0, status=deferred \(temporary failure\. Command output: local: "
                  r"fatal: execvp /nonexistent/prog: No such file or directory \)",
        "builtin": r"dsn=5\.1\.1, status=bounced \(user unknown\)",  # sh -c, as exec_command
        "shell": r'dsn=5\.3\.0, status=bounced \(Command died with status 127: "=x"\. Command '
                 r"output: sh: 1: =x: not found \)",  # the shell is "sh", as Postfix runs it
    }
    qids = {name: s.queue("alice@example.org", [f"{name}@localhost"], BODY) for name in expected}
    for name, verdict in expected.items():
        s.wait_log(rf"{qids[name]}: to=<{name}@localhost>, relay=local, .*{verdict}$")


def test_extension_split_as_postfix(system) -> None:  # type: ignore[no-untyped-def]
    """Postfix's local splits the local part with split_addr and drops an extension with
    a "/" (its warning; LOCAL cut to the user, no EXTENSION): a mailbox_command such as
    ``procmail -a "$EXTENSION"`` never gets a path. NAME-request (and owner-NAME) stay
    whole when "-" is a delimiter: not a user's extension. ``user+`` has an empty
    EXTENSION."""
    shared = _shared_dir()
    try:
        s = system(recipient_delimiter="+-",
                   mailbox_command=f"/bin/sh -c 'env > {shared}/env-\"$LOCAL\"'")
        s.start()
        qid = s.queue("alice@example.org", [f"{ME}+../../x@localhost"], BODY)
        s.wait_log(rf"warning: {qid}: address with illegal extension: {ME}\+\.\./\.\./x$")
        s.wait_log(rf"{qid}: to=<\"{ME}\+\.\./\.\./x\"@localhost>, relay=local, .*status=sent "
                   r"\(delivered to command: ")
        env = dict(line.split("=", 1) for line in Path(f"{shared}/env-{ME}").read_text().splitlines()
                   if "=" in line)
        assert (env["LOCAL"], env["USER"], "EXTENSION" in env) == (ME, ME, False)
        qid = s.queue("alice@example.org", [f"{ME}+a-b@localhost"], BODY)
        s.wait_log(rf"{qid}: to=<{ME}\+a-b@localhost>, relay=local, .*status=sent ")
        env = dict(line.split("=", 1) for line in
                   Path(f"{shared}/env-{ME}+a-b").read_text().splitlines() if "=" in line)
        assert env["EXTENSION"] == "a-b"
        qid = s.queue("alice@example.org", [f"{ME}+@localhost"], BODY)  # split, empty extension
        s.wait_log(rf"{qid}: to=<{ME}\+@localhost>, relay=local, .*status=sent ")
        env = dict(line.split("=", 1) for line in
                   Path(f"{shared}/env-{ME}+").read_text().splitlines() if "=" in line)
        assert (env["USER"], env["EXTENSION"]) == (ME, "")
        qid = s.queue("alice@example.org", [f"{ME}-list-request@localhost"], BODY)
        s.wait_log(rf"{qid}: to=<{ME}-list-request@localhost>, relay=local, .*dsn=5\.1\.1, "
                   rf'status=bounced \(unknown user: "{ME}-list-request"\)')
    finally:
        subprocess.run(["rm", "-rf", shared], check=False)


def test_local_command_shell_runs_every_command(system) -> None:  # type: ignore[no-untyped-def]
    """local_command_shell (an smrsh, say): every command, plain or with shell magic,
    runs as the shell's last argument, as Postfix's pipe_command runs it."""
    shared = _shared_dir()
    try:
        shell = Path(shared) / "myshell"
        shell.write_text(f"#!/bin/sh\nprintf '%s|' \"$@\" > {shared}/args-$$\nexec /bin/sh \"$@\"\n")
        shell.chmod(0o755)
        s = system(local_command_shell=f"{shell} -c")
        s.aliases('plain: |/bin/true\nmagic: "|echo hi; exit 67"\n')
        s.start()
        qid = s.queue("alice@example.org", ["plain@localhost"], BODY)
        s.wait_log(rf"{qid}: to=<plain@localhost>, relay=local, .*status=sent "
                   r"\(delivered to command: /bin/true\)")
        qid = s.queue("alice@example.org", ["magic@localhost"], BODY)
        s.wait_log(rf"{qid}: to=<magic@localhost>, relay=local, .*dsn=5\.1\.1, status=bounced "
                   r"\(user unknown\. Command output: hi \)")
        assert sorted(p.read_text() for p in Path(shared).glob("args-*")) == [
            "-c|/bin/true|", "-c|echo hi; exit 67|"]
    finally:
        subprocess.run(["rm", "-rf", shared], check=False)


def test_alias_table_error_defers(system) -> None:  # type: ignore[no-untyped-def]
    s = system(alias_maps="hash:/nonexistent/aliases")
    s.start()
    qid = s.queue("alice@example.org", [f"{ME}@localhost"], BODY)
    s.wait_log(rf"{qid}: to=<{ME}@localhost>, .*dsn=4\.3\.0, status=deferred "
               r"\(alias database unavailable\)")
    assert s.maildir_messages() == []


def test_unknown_user_bounces(system) -> None:  # type: ignore[no-untyped-def]
    s = system()
    s.start("local", "qmgr")
    qid = s.queue("alice@example.org", ["no-such-user-x@localhost"], BODY)
    s.wait_log(rf'{qid}: to=<no-such-user-x@localhost>, .*dsn=5\.1\.1, status=bounced '
               r'\(unknown user: "no-such-user-x"\)')


def test_same_request_twice_stores_one_copy(system) -> None:  # type: ignore[no-untyped-def]
    """What a redelivery after a crash looks like to local: the same queue file and recipient."""
    s = system()
    s.start("local")
    qid, attrs = s.active_request("alice@example.org", f"{ME}@localhost", BODY)
    with SyncAttrClient(str(s.queue_dir / "private" / "local")) as client:
        first = client.request(attrs)
        second = client.request(attrs)
    assert first.text("status") == second.text("status") == "sent"
    assert len(s.maildir_messages()) == 1
    s.wait_log(rf"{qid}: to=<{ME}@localhost>, .*status=sent \(delivered to maildir\)", count=2)


@pytest.mark.accounts
def test_a_maildir_that_cannot_be_made_bounces_as_postfix_local(system) -> None:  # type: ignore[no-untyped-def]
    """Postfix's local(8): 5.2.0, the tmp/ file named, and two warnings for EACCES
    (virtual(8) defers the same failure: tests/test_e2e_virtual.py)."""
    with contextlib.ExitStack() as stack:
        user = stack.enter_context(local_account("pmt" + uuid.uuid4().hex[:8])) if IS_ROOT else ME
        pw = pwd.getpwnam(user)
        s = system()
        locked = s.mail_dir / user
        locked.mkdir(mode=0o555)  # its owner (root, or we when not root) may not write: EACCES
        locked.chmod(0o555)
        s.start()
        qid = s.queue("alice@example.org", [f"{user}@localhost"], BODY)
        tmp = re.escape(f"{locked}/tmp/")
        s.wait_log(rf"{qid}: to=<{user}@localhost>, relay=local, .*dsn=5\.2\.0, status=bounced "
                   rf"\(maildir delivery failed: create maildir file {tmp}[^/]+: Permission denied\)")
        s.wait_log(rf"postfix/local\[\d+\]: warning: maildir access problem for "
                   rf"UID/GID={pw.pw_uid}/{pw.pw_gid}: create maildir file {tmp}[^/]+: "
                   r"Permission denied$")
        s.wait_log(r"postfix/local\[\d+\]: warning: perhaps you need to create the maildirs "
                   r"in advance$")
        s.wait_log(rf"{qid}: removed")
        assert os.listdir(locked) == []


def test_an_alias_maildir_under_a_file_bounces_as_postfix_local(system) -> None:  # type: ignore[no-untyped-def]
    """A ``/dir/`` of an alias goes through the same Maildir code as the mailbox."""
    shared = _shared_dir()
    try:
        (Path(shared) / "plain").write_text("a file, not a directory\n")
        s = system()
        s.aliases(f"archive: {shared}/plain/Maildir/\n")
        s.start()
        qid = s.queue("alice@example.org", ["archive@localhost"], BODY)
        tmp = re.escape(f"{shared}/plain/Maildir/tmp/")
        s.wait_log(rf"{qid}: to=<archive@localhost>, relay=local, .*dsn=5\.2\.0, status=bounced "
                   rf"\(maildir delivery failed: create maildir file {tmp}[^/]+: Not a directory\)")
        assert "maildir access problem" not in s.log()
    finally:
        subprocess.run(["rm", "-rf", shared], check=False)


# --- privileges (root) ---------------------------------------------------------------

@pytest.mark.root
def test_stale_dotlock_the_recipient_may_not_remove(system, throwaway_user: str) -> None:  # type: ignore[no-untyped-def]
    """A stale PATH.lock of root's in the sticky spool: the recipient may not remove it;
    Debian's Postfix bounces with the errno (5.2.0 ``unable to create lock file ...:
    Operation not permitted``); it was an unexpected error and a deferral."""
    s = system(maildir=False, stale_lock_time="1s", deliver_lock_attempts="2",
               deliver_lock_delay="1s")
    lock = s.mail_dir / f"{throwaway_user}.lock"
    lock.write_bytes(b"")
    os.utime(lock, (time.time() - 60, time.time() - 60))
    s.start()
    qid = s.queue("alice@example.org", [f"{throwaway_user}@localhost"], BODY)
    s.wait_log(rf"{qid}: to=<{throwaway_user}@localhost>, relay=local, .*dsn=5\.2\.0, "
               rf"status=bounced \(cannot update mailbox {re.escape(str(s.mail_dir))}/"
               rf"{throwaway_user} for user {throwaway_user}\. unable to create lock file "
               rf"{re.escape(str(lock))}: Operation not permitted\)$")
    assert "unexpected error" not in s.log()
    assert lock.exists() and not (s.mail_dir / throwaway_user).exists()


def test_maildir_written_as_the_recipient(system, throwaway_user: str) -> None:  # type: ignore[no-untyped-def]
    s = system()
    s.start()
    pw = pwd.getpwnam(throwaway_user)
    qid = s.queue("alice@example.org", [f"{throwaway_user}@localhost"], BODY)
    s.wait_log(rf"{qid}: to=<{throwaway_user}@localhost>, .*status=sent \(delivered to maildir\)")
    (path,) = list((s.mail_dir / throwaway_user / "new").iterdir())
    for p in (path, s.mail_dir / throwaway_user, s.mail_dir / throwaway_user / "tmp"):
        st = os.stat(p)
        assert (st.st_uid, st.st_gid) == (pw.pw_uid, pw.pw_gid), p


@pytest.mark.root
def test_mbox_written_as_the_recipient_and_symlink_refused(system, throwaway_user: str) -> None:  # type: ignore[no-untyped-def]
    s = system(maildir=False)
    s.start()
    pw = pwd.getpwnam(throwaway_user)
    qid = s.queue("alice@example.org", [f"{throwaway_user}@localhost"], BODY)
    s.wait_log(rf"{qid}: to=<{throwaway_user}@localhost>, .*status=sent \(delivered to mailbox\)")
    st = os.stat(s.mail_dir / throwaway_user)
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (pw.pw_uid, pw.pw_gid, 0o600)
    os.unlink(s.mail_dir / throwaway_user)
    target = s.base / "target"
    target.write_bytes(b"")
    os.symlink(target, s.mail_dir / throwaway_user)
    qid = s.queue("alice@example.org", [f"{throwaway_user}@localhost"], BODY)
    s.wait_log(rf"{qid}: to=<{throwaway_user}@localhost>, .*status=bounced \(cannot update mailbox "
               r".*file is a symbolic link\)")
    assert target.read_bytes() == b""


@pytest.mark.root
def test_group_writable_spool_mailbox_keeps_the_spool_group(system, throwaway_user: str) -> None:  # type: ignore[no-untyped-def]
    """A spool directory writable by its group (Debian's /var/mail, root:mail 2775): the
    mailbox is made with the recipient's uid and the spool's group, and keeps that
    group (Postfix chowns only what root made); the message is written as the
    recipient."""
    s = system(maildir=False)
    mail_gid = grp.getgrnam("mail").gr_gid
    os.chown(s.mail_dir, 0, mail_gid)
    os.chmod(s.mail_dir, 0o2775)
    s.start()
    pw = pwd.getpwnam(throwaway_user)
    qid = s.queue("alice@example.org", [f"{throwaway_user}@localhost"], BODY)
    s.wait_log(rf"{qid}: to=<{throwaway_user}@localhost>, .*status=sent \(delivered to mailbox\)")
    st = os.stat(s.mail_dir / throwaway_user)
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (pw.pw_uid, mail_gid, 0o600)
    assert (s.mail_dir / throwaway_user).read_bytes().startswith(b"From alice@example.org ")


@pytest.mark.root
def test_a_mailbox_planted_by_another_user_gets_nothing(system, throwaway_user: str) -> None:  # type: ignore[no-untyped-def]
    """In a world-writable spool another user can make the recipient's mailbox first:
    strict_mailbox_ownership defers the mail with Postfix's words and warning, and the
    planted file stays empty."""
    s = system(maildir=False)
    s.start()
    planted = s.mail_dir / throwaway_user
    planted.write_bytes(b"")
    os.chown(planted, 65534, 65534)
    planted.chmod(0o666)  # so that the recipient can write it: its mail would be readable
    qid = s.queue("alice@example.org", [f"{throwaway_user}@localhost"], BODY)
    s.wait_log(r'postfix/local\[\d+\]: warning: specify "strict_mailbox_ownership = no" to '
               r"ignore mailbox ownership mismatch")
    s.wait_log(rf"{qid}: to=<{throwaway_user}@localhost>, .*dsn=4\.2\.0, status=deferred "
               rf"\(cannot update mailbox {re.escape(str(planted))} for user {throwaway_user}\. "
               rf"destination {re.escape(str(planted))} is not owned by recipient\)")
    assert planted.read_bytes() == b""


@pytest.mark.root
def test_group_writable_spool_root_creates_and_chowns(system, throwaway_user: str) -> None:  # type: ignore[no-untyped-def]
    s = system(maildir=False)
    os.chmod(s.mail_dir, 0o755)  # like a root-owned /var/mail without group write
    s.start()
    pw = pwd.getpwnam(throwaway_user)
    qid = s.queue("alice@example.org", [f"{throwaway_user}@localhost"], BODY)
    s.wait_log(rf"{qid}: to=<{throwaway_user}@localhost>, .*status=sent \(delivered to mailbox\)")
    st = os.stat(s.mail_dir / throwaway_user)
    assert (st.st_uid, st.st_gid) == (pw.pw_uid, pw.pw_gid)
    wait_until(lambda: not (s.mail_dir / f"{throwaway_user}.lock").exists(), 5, what="dotlock removed")


@pytest.mark.root
def test_root_spool_mbox_is_written_as_the_recipient(system, throwaway_user: str) -> None:  # type: ignore[no-untyped-def]
    """A spool directory only root can write: root opens (or creates) the mailbox, as
    Postfix, but the message is written and synced with the recipient's ids (Postfix's
    "write the file as the recipient, so that file quota work"); before, root wrote it,
    past the user's quota and into the blocks reserved for root."""
    s = system(maildir=False)
    os.chmod(s.mail_dir, 0o755)
    s.start("local")
    uid = pwd.getpwnam(throwaway_user).pw_uid
    calls = _traced_deliveries(s, throwaway_user, "write,fsync", count=1)
    to_user = next(i for i, c in enumerate(calls) if c.startswith(f"setresuid(-1, {uid}, -1)"))
    back = next(i for i, c in enumerate(calls)
                if i > to_user and c.startswith("setresuid(-1, 0, -1)"))
    assert [c for c in calls[to_user:back] if c.startswith('write(') and
            '"From alice@example.org ' in c], calls
    assert [c for c in calls[to_user:back] if c.startswith("fsync(")], calls
    st = os.stat(s.mail_dir / throwaway_user)
    assert (st.st_uid, st.st_mode & 0o777) == (uid, 0o600)


def test_standalone_is_importable() -> None:
    assert Standalone is not None


def test_delivery_markers_are_removed_once_the_queue_file_is_gone(system) -> None:  # type: ignore[no-untyped-def]
    """A running local sweeps its markers every MARKER_GC_INTERVAL (10 s): under load a
    minute's worth piled up and one sweep of them held deliveries up for seconds. A
    local that starts sweeps at once (what an earlier process left)."""
    s = system()
    s.start()
    qid = s.queue("alice@example.org", [f"{ME}@localhost"], BODY)
    s.wait_log(rf"{qid}: removed")
    markers = s.queue_dir / "pid" / "local-markers"
    assert [p.name.split(".")[0] for p in markers.iterdir()] == [qid]
    wait_until(lambda: not list(markers.iterdir()), 25, what="markers collected by local")
    qid = s.queue("alice@example.org", [f"{ME}@localhost"], BODY)
    s.wait_log(rf"{qid}: removed")
    assert [p.name.split(".")[0] for p in markers.iterdir()] == [qid]
    s.kill("local", 15)
    s.start("local")
    wait_until(lambda: not list(markers.iterdir()), 5, what="markers collected at start")


def test_forward_path_expansion_as_postfix_local_expand() -> None:
    from pymailsys.daemons.local.forward import local_expand

    allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_+=./")
    attrs = {"home": "/home/bob", "user": "bob", "recipient_delimiter": "+"}
    default = "$home/.forward${recipient_delimiter}${extension}"
    # no extension: the entry refers to an undefined attribute and is skipped
    assert local_expand(default, attrs, allowed) is None
    assert local_expand("$home/.forward", attrs, allowed) == "/home/bob/.forward"
    assert local_expand(default, {**attrs, "extension": "lists"}, allowed) == (
        "/home/bob/.forward+lists")
    assert local_expand("${extension?+$extension}x", attrs, allowed) == "x"
    assert local_expand("${extension:none}", attrs, allowed) == "none"
    assert local_expand("$$HOME", attrs, allowed) == "$HOME"
    # characters outside forward_expansion_filter become "_"
    assert local_expand("/x/$extension", {"extension": "a b;c"}, allowed) == "/x/a_b_c"
    assert local_expand("${broken", attrs, allowed) is None



def test_forward_paths_are_expanded_once_per_recipient_attributes() -> None:
    """forward_paths: the entries local_expand keeps, in order, remembered per attribute
    set: the next message to the same recipient is not expanded again; other attributes
    (another home, an extension) are."""
    from pymailsys.daemons.local.forward import forward_paths

    allowed = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_+=./")
    entries = ("$home/.forward${recipient_delimiter}${extension}", "", "$home/.forward")
    bob = (("user", "bob"), ("home", "/home/bob"))
    forward_paths.cache_clear()
    assert forward_paths(entries, bob, allowed) == ("/home/bob/.forward",)
    assert forward_paths(entries, bob, allowed) == ("/home/bob/.forward",)
    assert forward_paths.cache_info().hits == 1
    moved = (("user", "bob"), ("home", "/srv/bob"))
    assert forward_paths(entries, moved, allowed) == ("/srv/bob/.forward",)
    lists = (*bob, ("extension", "lists"), ("recipient_delimiter", "+"))
    assert forward_paths(entries, lists, allowed) == ("/home/bob/.forward+lists",
                                                      "/home/bob/.forward")
    assert forward_paths.cache_info().misses == 3

@pytest.mark.root
@pytest.mark.passwd_unchanged
def test_an_unchanged_passwd_file_is_not_read_again(system, throwaway_user: str) -> None:  # type: ignore[no-untyped-def]
    """The account of the last deliveries is reused while /etc/passwd is unchanged: one
    stat of it per delivery, no open (getpwnam opened and parsed the whole file each
    time)."""
    s = system()
    s.start("local")
    calls = _traced_deliveries(s, throwaway_user, "openat,newfstatat,stat")
    assert not [c for c in calls if c.startswith("openat") and "/etc/passwd" in c], calls
    assert len([c for c in calls if '"/etc/passwd"' in c]) == 2, calls


@pytest.mark.root
def test_account_is_looked_up_afresh_for_each_delivery(system, throwaway_user: str) -> None:  # type: ignore[no-untyped-def]
    """local looks the account up once per request (its .forward and mailbox agree) and
    reuses it only while /etc/passwd is unchanged: a home directory moved between two
    deliveries gets the second."""
    s = system()
    s.set(home_mailbox="Maildir/")
    s.start()
    pw = pwd.getpwnam(throwaway_user)
    homes = [s.base / "home-one", s.base / "home-two"]
    for home in homes:
        home.mkdir()
        os.chown(home, pw.pw_uid, pw.pw_gid)
    for home in homes:
        subprocess.run(["usermod", "-d", str(home), throwaway_user], check=True)
        qid = s.queue("alice@example.org", [f"{throwaway_user}@localhost"], BODY)
        s.wait_log(rf"{qid}: to=<{throwaway_user}@localhost>, .*status=sent "
                   r"\(delivered to maildir\)")
    for home in homes:
        (path,) = list((home / "Maildir" / "new").iterdir())
        assert os.stat(path).st_uid == pw.pw_uid


def _traced_deliveries(s, user: str, calls: str, count: int = 2) -> list[str]:  # type: ignore[no-untyped-def]
    """The system calls ``calls`` (strace's ``trace=`` list) that local makes for ``count``
    Maildir deliveries to ``user``, each request sent alone."""
    requests = [s.active_request("alice@example.org", f"{user}@localhost", BODY)[1]
                for _ in range(10 + count)]
    trace = s.base / "strace.txt"
    pid = s.procs["local"].pid
    with SyncAttrClient(str(s.queue_dir / "private" / "local")) as client:
        strace = subprocess.Popen(["strace", "-qq", "-p", str(pid), "-o",
                                   str(trace), "-e", f"trace={calls},setresuid"])
        try:
            for _ in range(200):  # strace attaches slowly on a busy machine: up to 20 s
                status = Path(f"/proc/{pid}/status").read_text()
                if re.search(r"^TracerPid:\s*[1-9]", status, re.M):
                    break
                time.sleep(0.1)
            attached = False
            while requests and not attached:  # until a delivery shows in the trace
                assert client.request(requests.pop()).text("status") == "sent"
                attached = trace.exists() and "setresuid" in trace.read_text()
            assert len(requests) >= count, "strace did not attach"
            before = len(trace.read_text().splitlines())
            for attrs in requests[:count]:
                assert client.request(attrs).text("status") == "sent"
        finally:
            strace.terminate()
            strace.wait(20)
    return trace.read_text().splitlines()[before:]


@pytest.mark.root
def test_a_small_message_is_read_from_its_queue_file_once(system, throwaway_user: str) -> None:  # type: ignore[no-untyped-def]
    """The Delivered-To scan and the Maildir copy of a message that fits in one read share
    that read: one pread of the queue file per delivery and, besides the fstat of the open,
    no other call on it (the data offset's check against the size is that read)."""
    s = system()
    s.start("local")
    calls = _traced_deliveries(s, throwaway_user, "pread64,read,fstat,newfstatat")
    preads = [c for c in calls if c.startswith("pread64(")]
    assert len(preads) == 2, calls
    fd = preads[0].split("(", 1)[1].split(",", 1)[0]  # the queue file's descriptor
    on_file = [c.split("(", 1)[0] for c in calls if c.split("(", 1)[1].startswith(f"{fd},")]
    assert sorted(on_file) == ["newfstatat", "newfstatat", "pread64", "pread64"], calls


@pytest.mark.root
def test_a_request_is_served_in_the_turn_of_the_loop_that_reads_it(system, throwaway_user: str) -> None:  # type: ignore[no-untyped-def]
    """local reads a request, delivers and replies without going back to the event loop
    (before, the handler ran as a task one turn later: a second epoll_pwait per delivery):
    the one wait per delivery is for the next request. Counted from the first delivery's
    first credential switch to the last delivery's last one, so the waits before the
    first and after the last (racing strace's attach and detach) are not counted."""
    s = system()
    s.start("local")
    calls = _traced_deliveries(s, throwaway_user, "epoll_pwait,epoll_wait", count=3)
    switches = [i for i, c in enumerate(calls) if c.startswith("setresuid(")]
    assert len(switches) >= 3 * 2, calls
    between = calls[switches[0]:switches[-1]]
    assert len([c for c in between if c.startswith("epoll")]) == 2, calls


@pytest.mark.root
def test_a_maildir_delivery_switches_credentials_four_times(system, throwaway_user: str) -> None:  # type: ignore[no-untyped-def]
    """Each credential system call costs the kernel a new credential set (about 2 µs, a
    sixth of local's system time before). A Maildir delivery as root to an account
    without a .forward makes one switch of two calls each way, to the recipient for the
    Maildir: none for the marker (root's own, in root's pid/: before 2026-12-06 kept as
    mail_owner, a second switch), none for the .forward lookup (root's lstat finds no
    entry: nothing to look up as the user); no setgroups while root has no
    supplementary groups. The mail is still stored as the recipient, the marker as
    root in root's directory."""
    s = system()
    s.start("local")
    calls = _traced_deliveries(s, throwaway_user, "setresgid,setgroups")
    assert len(calls) == 2 * 4, calls
    assert not [c for c in calls if "setgroups" in c], calls
    new = s.mail_dir / throwaway_user / "new"
    assert {p.stat().st_uid for p in new.iterdir()} == {pwd.getpwnam(throwaway_user).pw_uid}
    markers = s.queue_dir / "pid" / "local-markers"
    assert {p.stat().st_uid for p in markers.iterdir()} == {0}
