"""local (root) against a less privileged process: crafted delivery requests, a hostile
data_directory, hostile :include: and .forward files.

Runs the real local daemon standalone (test_qmgr's ``Standalone``) and talks to
``private/local`` with the library's attribute client, the way qmgr (mail_owner)
does; checks replies, log lines and what exists on disk afterwards.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path

import pytest
from harness import ME
from test_qmgr import BODY, Standalone, standalone_systems

from pymailsys import config, privileges, server
from pymailsys.delivery.agent import (
    DEL_REQ_FLAG_DEFAULT,
    MAX_MEMBERS,
    DeliveryRequest,
    DeliveryResult,
    batch_request_attrs,
    message_attrs,
    request_attrs,
)
from pymailsys.ipc.attr import AttrList, ProtocolError, SyncAttrClient
from pymailsys.queue import spool
from pymailsys.queue.queue_file import read_envelope


@pytest.fixture
def system():  # type: ignore[no-untyped-def]
    yield from standalone_systems()


@pytest.fixture
def outside() -> object:
    """A root-only directory outside the spool, as the attacker's target."""
    path = Path(tempfile.mkdtemp(prefix="pymailsys-target-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_queue_names_and_ids_are_postfix_formats() -> None:
    assert spool.valid_queue_name("active") and spool.valid_queue_name("deferred")
    for bad in ("/etc", "..", "active/..", "", "pid", "public", "private", "Active"):
        assert not spool.valid_queue_name(bad), bad
    short = spool.short_queue_id(999_999, 2**64 - 1)
    long = spool.long_queue_id(int(time.time()), 999_999, 2**64 - 1)
    assert spool.valid_queue_id(short) and spool.valid_queue_id(long)
    assert spool.valid_queue_id(spool.short_queue_id(0, 1))
    for bad in ("../../x", "ABC", "abcdef12", "3F2A11C0D7E/", "3F2A11C0D7E\n", "",
                "A" * 22, "4ZxQ2BcD3F", "4ZxQ2BcD3Fz" + "1" * 13, "4ZxQ2BcD3Fzz", "_3F2A11C"):
        assert not spool.valid_queue_id(bad), bad


def _request(**fields: object) -> AttrList:
    base = dict(queue_name="active", queue_id="3F2A11C0D7E", data_offset=100, content_size=10,
                arrival_time="1.0", active_time="2.0", sender="a@b", nexthop="h",
                rcpt="c@d", orig_rcpt="c@d", rcpt_offset=50, flags=0)
    base.update(fields)
    return AttrList([(k, str(v).encode()) for k, v in base.items()])


def test_every_request_field_is_checked() -> None:
    assert DeliveryRequest.from_attrs(_request()).queue_id == "3F2A11C0D7E"
    for bad in ({"queue_name": "/etc"}, {"queue_id": "../../x"}, {"data_offset": -1},
                {"data_offset": 0}, {"rcpt_offset": 2**41}, {"content_size": -5},
                {"arrival_time": "nan"}, {"active_time": "1e400"}, {"arrival_time": "-1"},
                {"rcpt": ""}, {"rcpt": "a@b\nX-Injected: 1"}, {"sender": "x\x00y"},
                {"orig_rcpt": "o" * 5000}, {"dsn_notify": 16}, {"flags": -1},
                {"flags": 1 << 16}, {"nexthop": "h\r"}):
        with pytest.raises(ValueError):
            DeliveryRequest.from_attrs(_request(**bad))
    for name in ("sender", "rcpt", "orig_rcpt", "dsn_orcpt", "nexthop"):  # the one at fault
        for value, problem in (("a\x7fb", "control characters"), ("o" * 4097, "longer")):
            with pytest.raises(ValueError, match=f"^{name} .*{problem}"):
                DeliveryRequest.from_attrs(_request(**{name: value}))
    with pytest.raises(ProtocolError, match="data_offset: not a number"):
        DeliveryRequest.from_attrs(_request(data_offset="12x"))
    with pytest.raises(ValueError, match="^could not convert string to float: 'x'$"):
        DeliveryRequest.from_attrs(_request(arrival_time="x", rcpt_offset="y"))  # the first
    with pytest.raises(ProtocolError, match="content_size: not a number"):
        DeliveryRequest.from_attrs(_request(content_size="z", active_time="x", flags="y"))
    twice = _request()
    twice.pairs.append(("sender", b"second@b"))
    assert DeliveryRequest.from_attrs(twice).sender == "a@b"  # the first, as AttrList.text


def test_reply_members_are_checked_before_the_status_log() -> None:
    """qmgr (mail_owner) reads local's reply members into the status logs and bounces:
    each address bounded and free of control characters, each DSN code of the reply
    status's class, reasons bounded, at most MAX_MEMBERS; anything else is left out."""
    def reply(status: str, *members: tuple[str, str, str], rcpt: str = "m@x") -> AttrList:
        pairs = [("status", status), ("dsn", "5.1.1"), ("reason", "r"), ("rcpt", rcpt)]
        for address, dsn, reason in members:
            pairs += [("also_rcpt", address), ("also_dsn", dsn), ("also_reason", reason)]
        return AttrList([(k, v.encode()) for k, v in pairs])

    good = ("n@x", "5.1.1", 'unknown user: "n"')
    result = DeliveryResult.from_attrs(reply("bounced", good, ("a\nb@x", "5.1.1", "r"),
                                             ("o" * 5000, "5.1.1", "r"), ("c@x", "4.1.1", "r"),
                                             ("d@x", "5.1.1; x", "r"), ("e@x", "5.1.1", "x\ry")))
    assert result.entries("list@x") == [("m@x", "5.1.1", "r"), good, ("e@x", "5.1.1", "x y")]
    many = DeliveryResult.from_attrs(reply("bounced", *[good] * (MAX_MEMBERS + 5)))
    assert len(many.also) == MAX_MEMBERS
    assert DeliveryResult.from_attrs(reply("sent", good)).also == ()
    assert DeliveryResult.from_attrs(reply("bounced", rcpt="x\n@y")).entries("l@x")[0][0] == "l@x"


def _ask(s: Standalone, attrs: list) -> str:  # type: ignore[type-arg]
    with SyncAttrClient(str(s.queue_dir / "private" / "local")) as client:
        return client.request(attrs).text("status")


def _planted(s: Standalone, outside: Path) -> tuple[str, list]:  # type: ignore[type-arg]
    """A genuine queue file copied to the attacker's directory, and a request for it."""
    qid = s.queue("alice@example.org", [f"{ME}@localhost"], BODY, kick=False)
    env = read_envelope(str(s.queue_dir / "incoming" / qid))
    evil = outside / "evil"
    evil.mkdir()
    shutil.copy2(s.queue_dir / "incoming" / qid, evil / qid)
    os.unlink(s.queue_dir / "incoming" / qid)
    rc = env.recipients[0]
    common = message_attrs("active", qid, env.data_offset, env.content_size, env.arrival,
                           time.time(), env.sender)
    return qid, request_attrs(common, "test.example", rc.address, rc.orig, rc.offset)


def _with(attrs: list, **changes: str) -> list:  # type: ignore[type-arg]
    return [(k, changes.get(k, v)) for k, v in attrs]


@pytest.mark.root
def test_crafted_queue_name_and_id_are_refused(system, outside: Path) -> None:  # type: ignore[no-untyped-def]
    """The issue's attack: an absolute queue_name and a queue_id with ../ ."""
    s = system()
    s.start("local")
    qid, attrs = _planted(s, outside)
    target = outside / "root-only"
    target.mkdir(mode=0o700)
    depth = "../" * 12
    assert _ask(s, _with(attrs, queue_name=str(outside / "evil"))) == "deferred"
    s.wait_log(rf"warning: (?:\w+: )?bad delivery request: malformed queue name: '{outside}/evil'")
    assert _ask(s, _with(attrs, queue_id=f"{depth}{target}/x")) == "deferred"
    s.wait_log(r"warning: (?:\w+: )?bad delivery request: malformed queue id: '\.\./")
    assert _ask(s, _with(attrs, queue_name=str(outside / "evil"),
                         queue_id=f"{depth}{target}/x")) == "deferred"
    assert _ask(s, _with(attrs, rcpt=f"{ME}@localhost\nX-Evil: 1")) == "deferred"
    s.wait_log(r"warning: \w+: bad delivery request: rcpt contains control characters")
    assert list(target.iterdir()) == []
    assert s.maildir_messages() == []
    assert f"{qid}: to=" not in s.log()


@pytest.mark.root
def test_symlinks_and_links_in_the_queue_are_refused(system, outside: Path) -> None:  # type: ignore[no-untyped-def]
    """A valid name that leads out of the queue: a symlinked file, a symlinked hash
    directory, a hard link to a file elsewhere; a FIFO does not hang local."""
    s = system()
    s.start("local")
    qid, attrs = _planted(s, outside)
    evil_file = outside / "evil" / qid
    active = s.queue_dir / "active" / qid
    os.symlink(evil_file, active)
    assert _ask(s, attrs) == "deferred"
    s.wait_log(rf"warning: {qid}: open active/{qid}: Too many levels of symbolic links")
    active.unlink()
    os.link(evil_file, active)
    assert _ask(s, attrs) == "deferred"
    s.wait_log(rf"warning: {qid}: active/{qid}: uid 0: file has 2 links")
    active.unlink()
    os.mkfifo(active, 0o700)
    assert _ask(s, attrs) == "deferred"
    s.wait_log(rf"warning: {qid}: active/{qid}: uid 0: not a regular file")
    active.unlink()
    hashed = s.queue_dir / "deferred" / spool.hash_prefix(qid, 1)[0]
    shutil.rmtree(hashed, ignore_errors=True)
    os.symlink(outside / "evil", hashed)
    assert _ask(s, _with(attrs, queue_name="deferred")) == "deferred"
    s.wait_log(rf"warning: {qid}: open deferred/{qid}: Not a directory")
    assert s.maildir_messages() == []


@pytest.mark.root
def test_a_queue_directory_replaced_after_local_kept_it_open(system, outside: Path) -> None:  # type: ignore[no-untyped-def]
    """local keeps active/ open after its first delivery (one openat per queue file).
    mail_owner replacing active/ with a symbolic link afterwards gains nothing: the file
    is not in the directory local holds, local looks again without following links and
    defers; a real directory put in its place (a restore) is used from then on."""
    s = system()
    s.start("local")
    first = s.active_request("alice@example.org", f"{ME}@localhost", BODY)[1]
    assert _ask(s, first) == "sent"
    qid, attrs = _planted(s, outside)
    active = s.queue_dir / "active"
    active.rename(s.queue_dir / "active.old")
    os.symlink(outside / "evil", active)
    assert _ask(s, attrs) == "deferred"
    s.wait_log(rf"warning: {qid}: open active/{qid}: (Too many levels of symbolic links|Not a "
               r"directory)")
    active.unlink()
    active.mkdir(mode=0o700)
    shutil.copy2(outside / "evil" / qid, active / qid)
    assert _ask(s, attrs) == "sent"
    assert len(s.maildir_messages()) == 2


def test_kept_queue_directories_open_relative_to_what_was_opened(tmp_path: Path) -> None:
    """Spool.keep_queue_dirs: once a queue directory is open, its files are opened relative
    to that descriptor (the queue_directory path moved away does not matter); a file
    that is not there makes it look again at the path, once."""
    root = tmp_path / "spool"
    for queue in ("active", "deferred"):
        (root / queue).mkdir(parents=True)
    qids = ["3F2A11C0D7E", "4A2B11C0D7F"]
    for qid in qids:
        (root / "active" / qid).write_bytes(b"x")
        os.chmod(root / "active" / qid, 0o700)
    kept = spool.Spool(str(root))
    kept.keep_queue_dirs()
    os.close(kept.open_queue_file("active", qids[0]))
    fds = len(os.listdir("/proc/self/fd"))
    root.rename(tmp_path / "moved")
    os.close(kept.open_queue_file("active", qids[1]))
    with pytest.raises(spool.QueueAccessError, match="No such file"):
        spool.Spool(str(root)).open_queue_file("active", qids[1])  # what a fresh open sees
    assert len(os.listdir("/proc/self/fd")) == fds
    (tmp_path / "moved").rename(root)
    (root / "active").rename(tmp_path / "old-active")
    (root / "active").mkdir()
    (tmp_path / "old-active" / qids[0]).rename(root / "active" / qids[0])
    os.close(kept.open_queue_file("active", qids[0]))  # not in the kept one: looked again
    with pytest.raises(spool.QueueFileMissing):
        kept.open_queue_file("active", qids[1])
    assert len(os.listdir("/proc/self/fd")) == fds


@pytest.mark.root
def test_marker_directory_is_roots_own_and_no_other_is_used(system, outside: Path) -> None:  # type: ignore[no-untyped-def]
    """Issue #11.2: local (root) never works in a directory another account can write.
    Its markers live in root's pid/ (root's, 0700), not in mail_owner's data_directory,
    and need no switch to mail_owner. A marker directory that is not root's alone (a
    symbolic link to elsewhere, a directory mail_owner owns) is refused with a warning
    when local starts: local then delivers without markers, and reads, writes and removes
    nothing there."""
    s = system()
    s.start()
    qid = s.queue("alice@example.org", [f"{ME}@localhost"], BODY)
    s.wait_log(rf"{qid}: removed")
    markers = s.queue_dir / "pid" / "local-markers"
    (marker,) = markers.iterdir()
    st = markers.stat()
    assert (st.st_uid, st.st_mode & 0o777, marker.stat().st_uid) == (0, 0o700, 0)
    assert not (s.base / "data" / "local-markers").exists()
    outside.chmod(0o755)
    victims = outside / "victims"
    victims.mkdir(mode=0o755)
    names = ["important.conf", "3F2A11C0D7E.1700000000123456.211.0badf00d"]
    for name in names:
        (victims / name).write_text("keep me\n")
    owner = privileges.mail_owner(config.load(str(s.etc)))
    shutil.rmtree(markers)
    os.symlink(victims, markers)
    refusal = r"warning: delivery markers in \S+/pid/local-markers: .*; Maildir redelivery"
    s.kill("local", 15)
    s.start("local")
    s.wait_log(refusal)
    qid = s.queue("alice@example.org", [f"{ME}@localhost"], BODY)
    s.wait_log(rf"{qid}: to=<{ME}@localhost>, .*status=sent \(delivered to maildir\)")
    os.unlink(markers)
    markers.mkdir(mode=0o700)
    os.chown(markers, owner.uid, owner.gid)
    s.kill("local", 15)
    s.start("local")
    s.wait_log(refusal.replace(": .*;", rf": .*owner {owner.uid}.*;"))
    qid = s.queue("alice@example.org", [f"{ME}@localhost"], BODY)
    s.wait_log(rf"{qid}: to=<{ME}@localhost>, .*status=sent \(delivered to maildir\)")
    assert sorted(p.name for p in victims.iterdir()) == sorted(names)
    assert list(markers.iterdir()) == []
    assert len(s.maildir_messages()) == 3


def _vm_hwm_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


@pytest.mark.root
def test_hostile_include_files_fail_promptly_and_small(system, outside: Path) -> None:  # type: ignore[no-untyped-def]
    """Issue #11.6: a 512 MB sparse :include: file, a FIFO, a relative path."""
    outside.chmod(0o755)  # default_privs reads the include files
    sparse = outside / "sparse"
    with open(sparse, "wb") as f:
        f.truncate(512 << 20)
    sparse.chmod(0o644)
    fifo = outside / "fifo"
    os.mkfifo(fifo, 0o644)
    s = system()
    s.aliases(f"big: :include:{sparse}\npipe: :include:{fifo}\nrel: :include:lists/x\n")
    s.start()
    # the sender is told only "mail system configuration error"; the log says why
    # (Postfix's deliver_include): no path or reason of ours in a bounce
    for name, warning in (("big", rf"cannot open include file {sparse}: larger than "
                                  r"4194304 bytes"),
                          ("pipe", rf":include: file {fifo} is not a regular file"),
                          ("rel", r":include:lists/x uses a relative path")):
        qid = s.queue("alice@example.org", [f"{name}@localhost"], BODY)
        s.wait_log(rf"{qid}: to=<{name}@localhost>, relay=local, .*dsn=5\.3\.5, "
                   r"status=bounced \(mail system configuration error\)")
        s.wait_log(rf"postfix/local\[\d+\]: warning: {warning}$")
    assert _vm_hwm_kib(s.procs["local"].pid) < 256 * 1024
    assert s.maildir_messages() == []


@pytest.mark.root
def test_hostile_forward_files_are_ignored_with_a_warning(system, outside: Path) -> None:  # type: ignore[no-untyped-def]
    """A .forward that is a huge sparse file or a FIFO: a warning, the mailbox gets the mail."""
    outside.chmod(0o755)
    forward = outside / f"{ME}.forward"
    with open(forward, "wb") as f:
        f.truncate(512 << 20)
    s = system(forward_path=f"{outside}/$user.forward")
    s.start()
    qid = s.queue("alice@example.org", [f"{ME}@localhost"], BODY)
    s.wait_log(rf"warning: file {forward} is larger than 4194304 bytes")
    s.wait_log(rf"{qid}: to=<{ME}@localhost>, .*status=sent \(delivered to maildir\)")
    forward.unlink()
    os.mkfifo(forward, 0o644)
    qid = s.queue("alice@example.org", [f"{ME}@localhost"], BODY)
    s.wait_log(rf"warning: file {forward} is not a regular file")
    s.wait_log(rf"{qid}: to=<{ME}@localhost>, .*status=sent \(delivered to maildir\)")
    assert _vm_hwm_kib(s.procs["local"].pid) < 256 * 1024
    assert len(s.maildir_messages()) == 2


@pytest.mark.root
def test_alias_table_source_that_is_a_fifo_defers(system, outside: Path) -> None:  # type: ignore[no-untyped-def]
    """A texthash alias table whose source is a FIFO: local starts, warns, and defers."""
    fifo = outside / "aliases"
    os.mkfifo(fifo, 0o644)
    s = system(alias_maps=f"texthash:{fifo}")
    s.start()
    qid = s.queue("alice@example.org", [f"{ME}@localhost"], BODY)
    s.wait_log(rf"warning: alias_maps: .*open {fifo}: not a regular file")
    s.wait_log(rf"{qid}: to=<{ME}@localhost>, .*status=deferred \(alias database unavailable\)")


def test_bounded_read_refuses_what_is_not_a_small_regular_file(tmp_path: Path) -> None:
    from pymailsys.bounded_read import FileRefused, read_bounded

    small = tmp_path / "small"
    small.write_bytes(b"a" * 100)
    data, st = read_bounded(str(small), 100, 5)
    assert data == b"a" * 100 and st.st_size == 100
    with pytest.raises(FileRefused, match="larger than 99 bytes"):
        read_bounded(str(small), 99, 5)
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(FileRefused, match="not a regular file"):
        read_bounded(str(tmp_path / "fifo"), 100, 5)
    with pytest.raises(FileRefused, match="not a regular file"):
        read_bounded(str(tmp_path), 100, 5)
    (tmp_path / "link").symlink_to(small)
    assert read_bounded(str(tmp_path / "link"), 100, 5)[0] == data
    with pytest.raises(OSError):
        read_bounded(str(tmp_path / "link"), 100, 5, follow_links=False)


def test_non_finite_times_are_refused_without_a_traceback(system) -> None:  # type: ignore[no-untyped-def]
    """Issue #11.13, local's side: a NaN or infinite time in a request (from a queue file
    with such a T record) is refused with a warning; the connection goes on serving."""
    s = system()
    s.start("local")
    qid, good = s.active_request("alice@example.org", f"{ME}@localhost", BODY)
    with SyncAttrClient(str(s.queue_dir / "private" / "local")) as client:
        for bad in ("nan", "inf", "-inf", "1e400"):
            assert client.request(_with(good, arrival_time=bad)).text("status") == "deferred"
        assert client.request(_with(good, active_time="nan")).text("status") == "deferred"
        assert client.request(good).text("status") == "sent"
    s.wait_log(r"warning: \w+: bad delivery request: arrival_time out of range: nan")
    s.wait_log(r"warning: \w+: bad delivery request: active_time out of range: nan")
    assert "Traceback" not in (s.base / "log" / "local.err").read_text()
    assert len(s.maildir_messages()) == 1


def test_oversized_request_closes_the_connection_and_local_goes_on(system) -> None:  # type: ignore[no-untyped-def]
    """A delivery request beyond REQUEST_LIMITS is not read into memory: the connection
    is closed (qmgr defers); the next connection is served."""
    s = system()
    s.start("local")
    qid, good = s.active_request("alice@example.org", f"{ME}@localhost", BODY)
    sock = str(s.queue_dir / "private" / "local")
    with SyncAttrClient(sock) as client, pytest.raises((ProtocolError, OSError)):
        client.request(_with(good, sender="x" * (1 << 20)))
    with SyncAttrClient(sock) as client, pytest.raises((ProtocolError, OSError)):
        client.request(good + [(f"extra{i}", "1") for i in range(100)])
    with SyncAttrClient(sock) as client:
        assert client.request(good).text("status") == "sent"
    assert len(s.maildir_messages()) == 1


def test_a_request_for_several_recipients_is_refused(system) -> None:  # type: ignore[no-untyped-def]
    """local delivers one recipient per request (local_destination_recipient_limit 1): a
    batch is refused with a warning, never delivered to its first recipient only."""
    s = system()
    s.start("local")
    qid = s.queue("alice@example.org", [f"{ME}@localhost", "other@localhost"], BODY,
                  kick=False)
    path = s.spool.move(qid, "incoming", "active")
    env = read_envelope(path)
    common = message_attrs("active", qid, env.data_offset, env.content_size, env.arrival,
                           time.time(), env.sender)
    batch = batch_request_attrs(common, "test.example", env.recipients)
    with SyncAttrClient(str(s.queue_dir / "private" / "local")) as client:
        assert client.request(batch).text("status") == "deferred"
    s.wait_log(r"warning: \w+: bad delivery request: 2 recipients: local delivers one per request")
    assert s.maildir_messages() == []


@pytest.mark.root
def test_local_marks_only_the_delivered_recipients_own_record_done(system) -> None:  # type: ignore[no-untyped-def]
    """local (root) marks a delivered recipient done in the queue file itself, at the
    offset qmgr (mail_owner) sent: only when the bytes there are that recipient's R
    record. A forged offset (another recipient's record, another record, inside a
    record, past the end of the file) is refused with a warning and nothing is written;
    the mail is still delivered. A record already done is left as it is. A request
    without DEL_REQ_FLAG_SUCCESS marks nothing."""
    s = system()
    s.start("local")
    mine, other = f"{ME}@localhost", "other@localhost"
    qid = s.queue("alice@example.org", [mine, other], BODY, kick=False)
    path = Path(s.spool.move(qid, "incoming", "active"))
    env = read_envelope(str(path))
    original = path.read_bytes()
    rc, rc_other = env.recipients
    sender_record = original.index(b"S" + bytes([len(env.sender)]) + env.sender.encode())
    unflagged = message_attrs("active", qid, env.data_offset, env.content_size, env.arrival,
                              time.time(), env.sender)
    assert _ask(s, request_attrs(unflagged, "test.example", rc.address, rc.orig, rc.offset)) \
        == "sent"
    common = message_attrs("active", qid, env.data_offset, env.content_size, env.arrival,
                           time.time(), env.sender, flags=DEL_REQ_FLAG_DEFAULT)
    for forged in (rc_other.offset, sender_record, rc.offset + 1, 1, len(original),
                   len(original) + 100):
        assert _ask(s, request_attrs(common, "test.example", rc.address, rc.orig, forged)) \
            == "sent"
        s.wait_log(rf"warning: {qid}: not marking recipient {re.escape(mine)} done: offset "
                   rf"{forged} is not its recipient record")
        assert path.read_bytes() == original
    assert _ask(s, request_attrs(common, "test.example", rc.address, rc.orig, rc.offset)) \
        == "sent"
    marked = original[:rc.offset] + b"D" + original[rc.offset + 1:]
    assert path.read_bytes() == marked
    assert [r.done for r in read_envelope(str(path)).recipients] == [True, False]
    assert _ask(s, request_attrs(common, "test.example", rc.address, rc.orig, rc.offset)) \
        == "sent"
    assert path.read_bytes() == marked
    assert s.log().count("not marking recipient") == 6
    assert len(s.maildir_messages()) == 7  # the repeat: the same Maildir delivery key


class _Recorder:
    """A Unix socket at path that records the uid (SO_PEERCRED) of each client and
    hangs up on it."""

    def __init__(self, path: Path) -> None:
        self.uids: list[int] = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        os.chmod(path, 0o666)
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.running = True
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while self.running:
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            with conn:
                self.uids.append(server.peer_uid(conn))

    def close(self) -> None:
        self.running = False
        self.thread.join(5)
        self.sock.close()


@pytest.mark.root
def test_transport_sockets_are_reached_with_mail_owners_rights(system, outside: Path) -> None:  # type: ignore[no-untyped-def]
    """private/ and public/ are mail_owner's: local (root) connects there to a
    mailbox_transport (and to cleanup) with mail_owner's effective ids, so a link that
    mail_owner plants in private/ reaches no socket that only root could reach, and a
    server sees mail_owner's uid, not root's."""
    s = system(mailbox_transport="planted")
    s.start("local")
    owner = privileges.mail_owner(config.load(str(s.etc)))
    hidden = outside / "root-only"
    hidden.mkdir(mode=0o700)
    reachable = outside / "open"
    reachable.mkdir(mode=0o755)
    outside.chmod(0o755)
    recorders = [_Recorder(hidden / "sock"), _Recorder(reachable / "sock")]
    try:
        for recorder in recorders:
            planted = s.queue_dir / "private" / "planted"
            planted.unlink(missing_ok=True)
            os.symlink(recorder.sock.getsockname(), planted)
            attrs = s.active_request("alice@example.org", f"{ME}@localhost", BODY)[1]
            assert _ask(s, attrs) == "deferred"
    finally:
        for recorder in recorders:
            recorder.close()
    assert recorders[0].uids == []
    # a server that hangs up before the hello's answer is tried again (attr.CONNECT_ATTEMPTS)
    assert recorders[1].uids and set(recorders[1].uids) == {owner.uid}
    s.wait_log(r"status=deferred \(mail transport unavailable\)", count=2)

