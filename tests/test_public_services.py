"""The public services decide for themselves: showq, flush, qmgr's flush trigger and pickup
check the peer's uid (SO_PEERCRED), bound what one user may hold (connections,
attributes, value sizes, time), and keep answering everyone else. The clients
here talk to the sockets directly, as a hostile local user would, not through
postqueue or sendmail."""

from __future__ import annotations

import json
import os
import pwd
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from harness import ME, Instance, wait_until
from qf_helpers import match_owner, queue_files
from test_e2e_outbound import Sink, sink  # noqa: F401 (the fixture)

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


def started(new_instance, inst: Instance | None = None, **settings: str) -> Instance:  # type: ignore[no-untyped-def]
    """A started instance (``inst``, or a new one with Maildir delivery) whose public
    services every local user can reach, as in a system with a world-readable spool."""
    if inst is None:
        inst = new_instance(maildir=True)
    if settings:
        inst.set(**settings)
    inst.start()
    os.chmod(inst.queue_dir / "public", 0o711)
    os.chmod(inst.queue_dir, 0o755)
    for name in ("showq", "pickup", "qmgr", "flush"):
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


FLUSH_SITE = "remote.example"
FLUSH_REQUESTS = r'''
import sys
from pymailsys.ipc import attr
path, site = sys.argv[1], sys.argv[2]
for request in ({"request": "send_site", "site": site},
                {"request": "add", "site": site, "queue_id": "3F2A11C0D7E"},
                {"request": "add\nfake: line", "site": site},
                {"request": "purge", "site": site}):
    with attr.SyncAttrClient(path, timeout=30) as client:
        reply = client.request(request)
    print(reply.text("status"), reply.text("reason"), sep="|")
'''


def flush_instance(new_instance, peer: Sink, **settings: str) -> tuple[Instance, str]:  # type: ignore[no-untyped-def]
    """An instance with one deferred message for FLUSH_SITE (not due for a day, so only
    a flush sends it) named in the site's flush log; smtp-sink (``peer``) takes it."""
    peer.start()
    inst: Instance = new_instance(maildir=True)
    inst.set(relay_domains=FLUSH_SITE,
             transport_maps=f"inline:{{ {FLUSH_SITE}=relay:[127.0.0.1]:{peer.port} }}",
             **settings)
    inst.postfix("check")
    now = time.time()
    (queue_id,) = queue_files(inst.queue_dir, "deferred", "alice@example.org",
                              [f"a@{FLUSH_SITE}"], [b"Subject: waiting", b"", b"x"],
                              arrival=now - 3600, mtime=now + 86400)
    (inst.queue_dir / "flush" / FLUSH_SITE).write_text(f"{queue_id}\n")
    match_owner(inst.queue_dir, "flush")
    started(new_instance, inst=inst)
    return inst, queue_id


@pytest.mark.root
def test_flush_refuses_a_user_that_authorized_flush_users_refuses_but_etrn_works(
        new_instance, python_user, sink) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    """authorized_flush_users = root: the user is refused by the flush service itself,
    not only by postqueue; smtpd (the mail system) still sends the site's mail on ETRN."""
    inst, queue_id = flush_instance(new_instance, sink, authorized_flush_users="root")
    uid = pwd.getpwnam(python_user).pw_uid
    flush_log = inst.queue_dir / "flush" / FLUSH_SITE
    before = flush_log.read_bytes()
    refused = f"User {python_user}({uid}) is not allowed to flush the mail queue"
    out = as_user(python_user, FLUSH_REQUESTS, str(inst.queue_dir / "public" / "flush"),
                  FLUSH_SITE).decode().splitlines()
    assert out == [f"77|{refused}"] * 4
    inst.wait_log(rf"postfix/flush\[\d+\]: warning: uid={uid}: {re.escape(refused)}", count=4)
    done = inst.tool("postqueue", "-s", FLUSH_SITE, user=python_user)
    assert done.returncode == 77 and f"postqueue: fatal: {refused}" in done.stderr
    assert flush_log.read_bytes() == before
    assert queue_id in inst.queue_ids("deferred")
    with inst.smtp() as client:
        client.ehlo()
        assert client.docmd("ETRN", FLUSH_SITE) == (250, b"Queuing started")
    inst.wait_log(rf"{queue_id}: to=<a@{FLUSH_SITE}>, .*status=sent")


@pytest.mark.root
def test_an_authorized_user_may_flush_a_site_and_nothing_else(
        new_instance, python_user, sink) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    """A user that authorized_flush_users allows makes postqueue's requests (send_site);
    add, and anything else, is the mail system's: refused and logged, control
    characters replaced."""
    inst, queue_id = flush_instance(new_instance, sink, authorized_flush_users=python_user)
    uid = pwd.getpwnam(python_user).pw_uid
    flush_log = inst.queue_dir / "flush" / FLUSH_SITE
    inst.tool("postqueue", "-s", FLUSH_SITE, user=python_user, check=True)
    inst.wait_log(rf"{queue_id}: to=<a@{FLUSH_SITE}>, .*status=sent")
    assert flush_log.read_bytes() == b""
    out = as_user(python_user, FLUSH_REQUESTS, str(inst.queue_dir / "public" / "flush"),
                  FLUSH_SITE).decode().splitlines()
    assert out[0] == "0|"  # send_site, as postqueue -s
    assert out[1:] == [f'77|flush request "{r}" is the mail system\'s'
                       for r in ("add", "add?fake: line", "purge")]
    for request in ("add", r"add\?fake: line", "purge"):
        inst.wait_log(rf'postfix/flush\[\d+\]: warning: uid={uid}: flush request "{request}" '
                      r"is the mail system's")
    assert "\nfake: line" not in inst.log()
    assert flush_log.read_bytes() == b""


SLOW_FLUSH_CLIENTS = r'''
import json, select, socket, sys, time
path, count = sys.argv[1], int(sys.argv[2])
socks = []
for _ in range(count):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    s.sendall(b"request\0\x09send_site")  # and then nothing: not a whole request
    socks.append(s)
    time.sleep(0.05)
got = {s.fileno(): b"" for s in socks}
open_ = set(got)
end = time.monotonic() + 40
while open_ and time.monotonic() < end:
    ready, _, _ = select.select(list(open_), [], [], 1)
    for fd in ready:
        s = next(s for s in socks if s.fileno() == fd)
        chunk = s.recv(4096)
        if chunk:
            got[fd] += chunk
        else:
            open_.discard(fd)
print(json.dumps({"still_open": len(open_),
                  "replies": [v.decode("latin-1") for v in got.values() if v]}))
'''


@pytest.mark.root
def test_a_slow_flush_client_is_dropped_at_ipc_timeout_and_holds_few_slots(
        new_instance, python_user, sink) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    inst, _ = flush_instance(new_instance, sink, ipc_timeout="3s")
    uid = pwd.getpwnam(python_user).pw_uid
    result = json.loads(as_user(python_user, SLOW_FLUSH_CLIENTS,
                                str(inst.queue_dir / "public" / "flush"),
                                str(peers.PER_UID_CONNECTIONS + 1)))
    assert result["still_open"] == 0  # every connection was closed by flush
    assert result["replies"] == [attr.encode({"status": os.EX_TEMPFAIL, "reason": (
        "too many connections, try again later")}).decode("latin-1")]
    inst.wait_log(rf"postfix/flush\[\d+\]: warning: uid={uid}: too many connections to flush")
    inst.wait_log(rf"postfix/flush\[\d+\]: warning: uid={uid}: request not done within "
                  r"ipc_timeout \(3s\)", count=peers.PER_UID_CONNECTIONS)


@pytest.mark.root
def test_only_the_mail_system_wakes_flush_up(new_instance, python_user, sink) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    """A wake-up refreshes every log that is due (master's, every 1000 s); a user's
    W on public/flush is refused, so the log it would have emptied stays."""
    inst, queue_id = flush_instance(new_instance, sink, fast_flush_refresh_time="60s")
    uid = pwd.getpwnam(python_user).pw_uid
    flush_log = inst.queue_dir / "flush" / FLUSH_SITE
    old = time.time() - 3600
    os.utime(flush_log, (old, old))  # unread for an hour: due for a refresh
    as_user(python_user, CLIENT, str(inst.queue_dir / "public" / "flush"), input=b"W")
    inst.wait_log(rf"postfix/flush\[\d+\]: warning: uid={uid}: flush: wake-up request refused: "
                  r"only the mail system may send it")
    assert flush_log.read_text() == f"{queue_id}\n"
