"""The public services decide for themselves: showq, qmgr's flush trigger and pickup
check the peer's uid (SO_PEERCRED), bound what one user may hold (connections,
attributes, value sizes, time), and keep answering everyone else. The clients
here talk to the sockets directly, as a hostile local user would, not through
postqueue or sendmail."""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from harness import ME, Instance, wait_until

from pymailsys.ipc import attr, peers
from pymailsys.queue import listing, records

CLIENT = r'''
import socket, sys
path, request = sys.argv[1], sys.stdin.buffer.read()
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(30)
s.connect(path)
try:
    s.sendall(request)
except (BrokenPipeError, ConnectionResetError):
    pass  # the service refused before reading it all
data = b""
while chunk := s.recv(65536):
    data += chunk
sys.stdout.buffer.write(data)
'''


def as_user(user: str, code: str, *args: str, input: bytes = b"", timeout: float = 60) -> bytes:
    """Run a Python snippet as ``user``; its standard output."""
    result = subprocess.run(["runuser", "-u", user, "--", sys.executable, "-c", code, *args],
                            input=input, capture_output=True, timeout=timeout, cwd="/")
    assert result.returncode == 0, result.stderr
    return result.stdout


def started(new_instance, **settings: str) -> Instance:  # type: ignore[no-untyped-def]
    inst: Instance = new_instance(maildir=True)
    if settings:
        inst.set(**settings)
    inst.start()
    os.chmod(inst.queue_dir / "public", 0o711)
    os.chmod(inst.queue_dir, 0o755)
    for name in ("showq", "pickup", "qmgr"):
        wait_until((inst.queue_dir / "public" / name).exists, 30,
                   what=f"public/{name}")
    return inst


LIST = attr.encode({"request": "list", "format": "text"})


@pytest.mark.root
def test_showq_refuses_a_user_that_authorized_mailq_users_refuses(new_instance,
                                                                  python_user) -> None:  # type: ignore[no-untyped-def]
    inst = started(new_instance, authorized_mailq_users=f"!{python_user}, static:anyone")
    showq = str(inst.queue_dir / "public" / "showq")
    uid = pwd.getpwnam(python_user).pw_uid
    denied = as_user(python_user, CLIENT, showq, input=LIST)
    assert b"status\0\x0277" in denied and b"listing\0" not in denied
    assert f"User {python_user}({uid}) is not allowed to view the mail queue".encode() in denied
    inst.wait_log(rf"postfix/showq\[\d+\]: warning: uid={uid}: User {python_user}\({uid}\) "
                  r"is not allowed to view the mail queue")
    allowed = subprocess.run([sys.executable, "-c", CLIENT, showq], input=LIST,
                             capture_output=True, timeout=60).stdout
    assert allowed.startswith(b"status\0\x010") and b"Mail queue is empty" in allowed


@pytest.mark.root
def test_qmgr_refuses_a_flush_that_authorized_flush_users_refuses(new_instance,
                                                                 python_user) -> None:  # type: ignore[no-untyped-def]
    inst = started(new_instance, authorized_flush_users=f"!{python_user}, static:anyone")
    uid = pwd.getpwnam(python_user).pw_uid
    as_user(python_user, CLIENT, str(inst.queue_dir / "public" / "qmgr"), input=b"FADI")
    inst.wait_log(rf"postfix/qmgr\[\d+\]: warning: uid={uid}: User {python_user}\({uid}\) "
                  r"is not allowed to flush the mail queue")


FLIPPER = r'''
import os, sys, time
maildrop, fifo, stop = sys.argv[1], sys.argv[2], sys.argv[3]
names = [f"FLIP{i:06X}" for i in range(40)]
end = time.monotonic() + 120
while not os.path.exists(stop) and time.monotonic() < end:
    for name in names:
        path = os.path.join(maildrop, name)
        try:
            os.symlink(fifo, path + ".l")
            os.rename(path + ".l", path)
            fd = os.open(path + ".r", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o744)
            os.write(fd, b"T\x0b1 000000000E\x00")
            os.fchmod(fd, 0o744)
            os.close(fd)
            os.rename(path + ".r", path)
        except OSError:
            for leftover in (path + ".l", path + ".r"):
                try:
                    os.unlink(leftover)
                except OSError:
                    pass
'''


@pytest.mark.root
def test_mailq_answers_while_a_user_flips_maildrop_files_to_fifos(new_instance,
                                                                  python_user) -> None:  # type: ignore[no-untyped-def]
    inst = started(new_instance)
    work = Path(tempfile.mkdtemp(prefix="pms-flip-", dir="/tmp"))
    pw = pwd.getpwnam(python_user)
    os.chown(work, pw.pw_uid, pw.pw_gid)
    fifo, stop = work / "fifo", work / "stop"
    as_user(python_user, f"import os; os.mkfifo({str(fifo)!r}, 0o666)")
    flipper = subprocess.Popen(["runuser", "-u", python_user, "--", sys.executable, "-c",
                                FLIPPER, str(inst.queue_dir / "maildrop"), str(fifo), str(stop)],
                               cwd="/")
    try:
        for _ in range(5):
            for user in (ME, python_user):
                out = inst.tool("mailq", user=user, timeout=60)
                assert out.returncode == 0, out.stderr
    finally:
        stop.touch()
        flipper.wait(timeout=60)
        subprocess.run(["rm", "-rf", str(work)], check=False)


HOLDER = r'''
import os, resource, socket, sys, time
path, count, stop = sys.argv[1], int(sys.argv[2]), sys.argv[3]
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
held = []
for _ in range(count):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.setblocking(False)
    try:
        s.connect(path)
    except (BlockingIOError, InterruptedError):
        pass
    except OSError:
        s.close()
        continue
    held.append(s)
print(len(held), flush=True)
end = time.monotonic() + 120
while not os.path.exists(stop) and time.monotonic() < end:
    time.sleep(0.1)
'''


@pytest.mark.root
def test_one_user_holding_pickup_connections_does_not_stop_other_submissions(
        new_instance, python_user) -> None:  # type: ignore[no-untyped-def]
    inst = started(new_instance)
    uid = pwd.getpwnam(python_user).pw_uid
    work = Path(tempfile.mkdtemp(prefix="pms-hold-", dir="/tmp"))
    os.chmod(work, 0o755)
    stop = work / "stop"
    holder = subprocess.Popen(["runuser", "-u", python_user, "--", sys.executable, "-c", HOLDER,
                               str(inst.queue_dir / "public" / "pickup"), "1100", str(stop)],
                              stdout=subprocess.PIPE, text=True, cwd="/")
    try:
        assert holder.stdout is not None
        assert int(holder.stdout.readline()) > peers.PER_UID_CONNECTIONS
        inst.wait_log(rf"postfix/pickup\[\d+\]: warning: uid={uid}: too many connections to "
                      r"pickup")
        out = inst.tool("sendmail", "-i", f"{ME}@localhost", timeout=60,
                        input="Subject: through\n\nother users still submit\n")
        assert out.returncode == 0, out.stderr
        wait_until(lambda: any(b"Subject: through" in m for m in inst.maildir_messages()), 60,
                   what="the message in the Maildir")
    finally:
        stop.touch()
        holder.wait(timeout=60)
        subprocess.run(["rm", "-rf", str(work)], check=False)


@pytest.mark.root
def test_pickup_refuses_an_oversized_value_before_reading_it(new_instance,
                                                             python_user) -> None:  # type: ignore[no-untyped-def]
    inst = started(new_instance, message_size_limit="100000")
    uid = pwd.getpwnam(python_user).pw_uid
    pickup = str(inst.queue_dir / "public" / "pickup")
    # a content value announced at 1 GiB, of which nothing follows: pickup must answer
    # (close) at once instead of waiting for, and buffering, the value
    head = b"s" + b"request\0\x06submit" + b"content\0" + records.encode_varint(1 << 30)
    as_user(python_user, CLIENT, pickup, input=head)
    inst.wait_log(rf"postfix/pickup\[\d+\]: warning: uid={uid}: malformed submission: "
                  r"attribute content: 1073741824 bytes, over the limit of 100000")
    many = b"s" + b"".join(b"rcpt\0\x01a" for _ in range(20000)) + b"\0"
    as_user(python_user, CLIENT, pickup, input=many)
    inst.wait_log(rf"postfix/pickup\[\d+\]: warning: uid={uid}: malformed submission: "
                  r"more than \d+ attributes")


@pytest.mark.root
def test_an_idle_pickup_connection_is_closed_after_ipc_timeout(new_instance,
                                                               python_user) -> None:  # type: ignore[no-untyped-def]
    inst = started(new_instance, ipc_timeout="2s")
    uid = pwd.getpwnam(python_user).pw_uid
    as_user(python_user, CLIENT, str(inst.queue_dir / "public" / "pickup"), input=b"")
    inst.wait_log(rf"postfix/pickup\[\d+\]: warning: uid={uid}: nothing sent within ipc_timeout")


def test_listing_opens_only_complete_regular_files(tmp_path: Path) -> None:
    """What showq opens in maildrop/: never through a link, never a FIFO (which
    would block the open), never an incomplete file; and only so many bytes."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o744)
    (tmp_path / "link").symlink_to(fifo)
    regular = tmp_path / "regular"
    regular.write_bytes(b"x" * 100)
    os.chmod(regular, 0o744)
    for name in ("fifo", "link"):
        assert listing.read_queue_file(str(tmp_path / name), 1 << 20) is None
    data, st = listing.read_queue_file(str(regular), 10) or (b"", None)
    assert data == b"x" * 10 and st is not None and st.st_size == 100
    os.chmod(regular, 0o644)  # not complete
    assert listing.read_queue_file(str(regular), 1 << 20) is None


def test_peer_slots() -> None:
    slots = peers.PeerSlots(per_uid=2, total=3)
    assert slots.take(1) and slots.take(1) and not slots.take(1)
    assert slots.first_refusal(1) and not slots.first_refusal(1)
    assert slots.take(2) and not slots.take(3)  # the total is reached
    slots.give_back(1)
    assert slots.take(3) and not slots.take(1)
    assert slots.first_refusal(1)  # a slot came back in between
