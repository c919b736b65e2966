"""mbox and Maildir writing: formats, locks, refusals, crash idempotence; status logs."""

from __future__ import annotations

import contextlib
import errno
import os
import random
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from pymailsys import privileges
from pymailsys.delivery import mailbox
from pymailsys.delivery.agent import DeliveryResult, log_line
from pymailsys.queue import status_log
from pymailsys.queue.queue_file import content_lines
from pymailsys.queue.records import encode_record, text_records


def _text(lines: list[bytes]) -> list[bytes]:
    """Message text as the delivery agent hands it on: LF-terminated lines in chunks."""
    return [b"".join(line + b"\n" for line in lines)]


def _mbox_data(lines: list[bytes], sender: str = "alice@example.org") -> bytes:
    return b"".join(mailbox.mbox_text(mailbox.from_line(sender), mailbox.prepended_headers(
        sender, "Bob@example.com", "bob@example.com"), _text(lines)))


def test_mbox_format_and_from_quoting(tmp_path) -> None:  # type: ignore[no-untyped-def]
    box = tmp_path / "bob"
    lines = [b"Subject: hi", b"", b"From me", b"From: not a header here", b">From already", b"end"]
    mailbox.deliver_mbox(str(box), _mbox_data(lines), locks=["fcntl", "dotlock"])
    data = box.read_bytes()
    assert re.match(rb"From alice@example\.org  \w{3} \w{3} [ \d]\d \d\d:\d\d:\d\d \d{4}\n", data)
    rest = data.split(b"\n", 1)[1]
    assert rest == (b"Return-Path: <alice@example.org>\n"
                    b"X-Original-To: Bob@example.com\n"
                    b"Delivered-To: bob@example.com\n"
                    b"Subject: hi\n\n>From me\nFrom: not a header here\n>From already\nend\n\n")
    assert os.stat(box).st_mode & 0o777 == 0o600
    assert not os.path.exists(str(box) + ".lock")


def test_mbox_null_sender_is_mailer_daemon() -> None:
    assert mailbox.from_line("").startswith(b"From MAILER-DAEMON  ")


def test_mbox_appends(tmp_path) -> None:  # type: ignore[no-untyped-def]
    box = str(tmp_path / "bob")
    mailbox.deliver_mbox(box, _mbox_data([b"one"]))
    mailbox.deliver_mbox(box, _mbox_data([b"two"]))
    data = open(box, "rb").read()
    assert data.count(b"\nFrom alice") + data.startswith(b"From alice") == 2
    assert data.index(b"one\n") < data.index(b"two\n")


def test_mbox_refuses_symlink(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A user's link (here: not root's) is never followed, wherever it is."""
    target = tmp_path / "target"
    target.write_bytes(b"")
    os.symlink(target, tmp_path / "bob")
    if os.geteuid() == 0:
        os.lchown(tmp_path / "bob", 65534, 65534)
    with pytest.raises(mailbox.MailboxError) as e:
        mailbox.deliver_mbox(str(tmp_path / "bob"), _mbox_data([b"x"]))
    assert e.value.text == "file is a symbolic link"
    assert target.read_bytes() == b""


@pytest.mark.root
def test_mbox_follows_only_roots_link_in_roots_own_directory(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Postfix's safe_open: a link that root owns, in a directory that root owns and
    nobody else can write, is followed (the administrator's /var/mail/alice ->
    /home/alice/mbox) and its target checked as a mailbox is; the same link in a
    directory others can write, or a dangling one, is refused."""
    target = tmp_path / "target"
    target.write_bytes(b"")
    spool = tmp_path / "spool"
    spool.mkdir(mode=0o755)
    os.symlink(target, spool / "alice")
    mailbox.deliver_mbox(str(spool / "alice"), _mbox_data([b"x"]), expect_uid=0)
    assert target.read_bytes().startswith(b"From alice@example.org ")
    with pytest.raises(mailbox.MailboxError, match="is not owned by recipient"):
        mailbox.deliver_mbox(str(spool / "alice"), _mbox_data([b"x"]), expect_uid=1)
    os.link(target, tmp_path / "second")
    with pytest.raises(mailbox.MailboxError, match="2 hard links"):
        mailbox.deliver_mbox(str(spool / "alice"), _mbox_data([b"x"]))
    os.unlink(tmp_path / "second")
    os.symlink(tmp_path / "nowhere", spool / "dangling")
    with pytest.raises(mailbox.MailboxError, match="No such file"):
        mailbox.deliver_mbox(str(spool / "dangling"), _mbox_data([b"x"]))
    assert not (tmp_path / "nowhere").exists()
    size = target.stat().st_size
    for mode in (0o775, 0o1777):
        spool.chmod(mode)
        with pytest.raises(mailbox.MailboxError, match="file is a symbolic link"):
            mailbox.deliver_mbox(str(spool / "alice"), _mbox_data([b"x"]))
    assert target.stat().st_size == size


def test_mbox_refuses_dangling_symlink(tmp_path) -> None:  # type: ignore[no-untyped-def]
    os.symlink(tmp_path / "nowhere", tmp_path / "bob")
    with pytest.raises(mailbox.MailboxError):
        mailbox.deliver_mbox(str(tmp_path / "bob"), _mbox_data([b"x"]))
    assert not (tmp_path / "nowhere").exists()


def test_mbox_refuses_hard_link_and_non_regular(tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "other").write_bytes(b"")
    os.link(tmp_path / "other", tmp_path / "bob")
    with pytest.raises(mailbox.MailboxError) as e:
        mailbox.deliver_mbox(str(tmp_path / "bob"), _mbox_data([b"x"]))
    assert e.value.text == "file has 2 hard links"  # Postfix's safe_open words
    (tmp_path / "dir").mkdir()
    with pytest.raises(mailbox.MailboxError) as e:
        mailbox.deliver_mbox(str(tmp_path / "dir"), _mbox_data([b"x"]))
    assert e.value.text == "cannot open file: Is a directory"
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(mailbox.MailboxError) as e:
        mailbox.deliver_mbox(str(tmp_path / "fifo"), _mbox_data([b"x"]))
    assert e.value.text == f"destination {tmp_path}/fifo is not a regular file"


def test_mbox_wrong_owner_defers(tmp_path) -> None:  # type: ignore[no-untyped-def]
    box = tmp_path / "bob"
    box.write_bytes(b"")
    with pytest.raises(mailbox.MailboxError) as e:
        mailbox.deliver_mbox(str(box), _mbox_data([b"x"]), expect_uid=os.getuid() + 1)
    assert e.value.temporary


def test_mbox_dotlock_held_defers(tmp_path) -> None:  # type: ignore[no-untyped-def]
    box = tmp_path / "bob"
    (tmp_path / "bob.lock").write_bytes(b"")
    with pytest.raises(mailbox.MailboxError) as e:
        mailbox.deliver_mbox(str(box), _mbox_data([b"x"]), attempts=2, delay=0.01)
    assert e.value.dsn == "4.2.0"
    assert not box.exists()


def test_mbox_stale_dotlock_is_removed(tmp_path) -> None:  # type: ignore[no-untyped-def]
    lock = tmp_path / "bob.lock"
    lock.write_bytes(b"")
    old = time.time() - 1000
    os.utime(lock, (old, old))
    mailbox.deliver_mbox(str(tmp_path / "bob"), _mbox_data([b"x"]), stale=500)
    assert (tmp_path / "bob").exists()


def test_mbox_fcntl_lock_waits(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import fcntl
    import multiprocessing

    box = tmp_path / "bob"
    box.write_bytes(b"")
    ready = multiprocessing.Event()
    release = multiprocessing.Event()

    def holder() -> None:
        fd = os.open(box, os.O_WRONLY)
        fcntl.lockf(fd, fcntl.LOCK_EX)
        ready.set()
        release.wait(10)
        os.close(fd)

    p = multiprocessing.Process(target=holder)
    p.start()
    ready.wait(10)
    with pytest.raises(mailbox.MailboxError) as e:
        mailbox.deliver_mbox(str(box), _mbox_data([b"x"]), locks=["fcntl"], attempts=2, delay=0.01)
    assert e.value.temporary
    threading.Timer(0.2, release.set).start()
    mailbox.deliver_mbox(str(box), _mbox_data([b"x"]), locks=["fcntl"], attempts=50, delay=0.05)
    p.join(10)
    assert box.read_bytes().endswith(b"x\n\n")


def test_mbox_size_limit_bounces_and_keeps_old_content(tmp_path) -> None:  # type: ignore[no-untyped-def]
    box = tmp_path / "bob"
    mailbox.deliver_mbox(str(box), _mbox_data([b"small"]))
    before = box.read_bytes()
    with pytest.raises(mailbox.MailboxError) as e:
        mailbox.deliver_mbox(str(box), _mbox_data([b"x" * 5000]), size_limit=len(before) + 100)
    assert e.value.dsn == "5.2.2"
    assert box.read_bytes() == before


def test_maildir_naming_and_bytes(tmp_path) -> None:  # type: ignore[no-untyped-def]
    md = str(tmp_path / "Maildir")
    data = mailbox.plain_text(mailbox.prepended_headers("a@b", "c@d", "c@d"),
                              _text([b"Subject: s", b"", b"From x"]))
    final = mailbox.deliver_maildir(md, data, host="mx.example")
    st = os.stat(final)
    assert re.fullmatch(rf"\d+\.V{st.st_dev:x}I{st.st_ino:x}M\d+\.mx\.example", os.path.basename(final))
    assert os.path.dirname(final) == os.path.join(md, "new")
    assert open(final, "rb").read() == (b"Return-Path: <a@b>\nX-Original-To: c@d\nDelivered-To: c@d\n"
                                        b"Subject: s\n\nFrom x\n")
    assert os.listdir(os.path.join(md, "tmp")) == []
    for sub in ("tmp", "new", "cur"):
        assert os.stat(os.path.join(md, sub)).st_mode & 0o777 == 0o700
    assert st.st_mode & 0o777 == 0o600


def test_maildir_parts_are_made_when_missing(tmp_path) -> None:  # type: ignore[no-untyped-def]
    md = tmp_path / "Maildir"
    (md / "tmp").mkdir(parents=True)  # new/ and cur/ missing: made at the link
    final = mailbox.deliver_maildir(str(md), b"one\n")
    assert open(final, "rb").read() == b"one\n"
    assert sorted(os.listdir(md)) == ["cur", "new", "tmp"]
    os.rmdir(md / "tmp")  # tmp/ missing: made at the create
    mailbox.deliver_maildir(str(md), b"two\n")
    assert len(os.listdir(md / "new")) == 2 and os.listdir(md / "tmp") == []


def test_maildir_under_a_file_is_temporary(tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(mailbox.MailboxError) as e:
        mailbox.deliver_maildir(str(tmp_path / "file" / "Maildir"), b"x\n")
    assert e.value.dsn == "4.2.0"


def test_maildir_create_failure_takes_the_callers_status_and_names_the_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """local passes 5.2.0 (Postfix's local bounces); the text names the tmp/ file even
    when it was making the directories that failed, as Postfix's does."""
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(mailbox.MailboxError) as e:
        mailbox.deliver_maildir(str(tmp_path / "file" / "Maildir"), b"x\n", create_dsn="5.2.0")
    assert e.value.dsn == "5.2.0"
    assert e.value.errno == errno.ENOTDIR
    assert re.fullmatch(rf"create maildir file {re.escape(str(tmp_path))}/file/Maildir/tmp/"
                        r"[^/]+: Not a directory", e.value.text)


def test_maildir_write_failure_is_error_writing_message(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Postfix's mail_copy words; the errno decides the status (EFBIG: 5.2.2), and no
    tmp/ file is left. RLIMIT_FSIZE makes the write fail, in a child process."""
    md = tmp_path / "Maildir"
    code = (
        "import resource, signal, sys\n"
        "from pymailsys.delivery import mailbox\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))\n"
        "try:\n"
        f"    mailbox.deliver_maildir({str(md)!r}, b'x' * 100_000, create_dsn='5.2.0')\n"
        "except mailbox.MailboxError as e:\n"
        "    print(e.dsn, e.text)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    assert out == "5.2.2 error writing message: File too large\n"
    assert os.listdir(md / "tmp") == [] and os.listdir(md / "new") == []


def _marked(tmp_path):  # type: ignore[no-untyped-def]
    md = str(tmp_path / "Maildir")
    store = mailbox.MarkerStore(str(tmp_path / "markers"))
    store.open()
    key = mailbox.delivery_key("3F2A11C0D7E", 1700000000.123456, 211, md)
    return md, store, key


def test_maildir_redelivery_after_success_writes_nothing(tmp_path) -> None:  # type: ignore[no-untyped-def]
    md, store, key = _marked(tmp_path)
    first = mailbox.deliver_maildir(md, b"one\n", key=key, marker=store)
    again = mailbox.deliver_maildir(md, b"one\n", key=key, marker=store)
    assert again == first
    assert len(os.listdir(os.path.join(md, "new"))) == 1
    assert os.listdir(os.path.join(md, "tmp")) == []
    other = mailbox.delivery_key("3F2A11C0D7E", 1700000000.123456, 300, md)
    mailbox.deliver_maildir(md, b"two\n", key=other, marker=store)
    assert len(os.listdir(os.path.join(md, "new"))) == 2


def test_maildir_crash_after_link_before_tmp_unlink(tmp_path) -> None:  # type: ignore[no-untyped-def]
    md, store, key = _marked(tmp_path)
    final = mailbox.deliver_maildir(md, b"one\n", key=key, marker=store)
    tmp = os.path.join(md, "tmp", f"{key}.{mailbox._hostname(None)}")
    os.link(final, tmp)  # as if killed between link() and unlink()
    assert mailbox.deliver_maildir(md, b"one\n", key=key, marker=store) == final
    assert os.listdir(os.path.join(md, "new")) == [os.path.basename(final)]
    assert os.listdir(os.path.join(md, "tmp")) == []


def test_maildir_crash_after_marker_before_link(tmp_path) -> None:  # type: ignore[no-untyped-def]
    md, store, key = _marked(tmp_path)
    final = mailbox.deliver_maildir(md, b"one\n", key=key, marker=store)
    tmp = os.path.join(md, "tmp", f"{key}.{mailbox._hostname(None)}")
    os.rename(final, tmp)  # as if killed after the marker, before link()
    assert mailbox.deliver_maildir(md, b"one\n", key=key, marker=store) == final
    assert open(final, "rb").read() == b"one\n"
    assert os.listdir(os.path.join(md, "tmp")) == []


def test_maildir_crash_before_marker_redelivers(tmp_path) -> None:  # type: ignore[no-untyped-def]
    md, store, key = _marked(tmp_path)
    mailbox.make_maildir(md)
    tmp = os.path.join(md, "tmp", f"{key}.{mailbox._hostname(None)}")
    with open(tmp, "wb") as f:
        f.write(b"half")  # killed while writing: no marker yet
    final = mailbox.deliver_maildir(md, b"whole\n", key=key, marker=store)
    assert open(final, "rb").read() == b"whole\n"
    assert len(os.listdir(os.path.join(md, "new"))) == 1
    assert os.listdir(os.path.join(md, "tmp")) == []


def test_maildir_crash_after_claim_before_record_redelivers_once(tmp_path) -> None:  # type: ignore[no-untyped-def]
    md, store, key = _marked(tmp_path)
    mailbox.make_maildir(md)
    _done, fd = store.claim(key)
    os.close(fd)  # killed while writing tmp/: the marker stays empty
    tmp = os.path.join(md, "tmp", f"{key}.{mailbox._hostname(None)}")
    with open(tmp, "wb") as f:
        f.write(b"half")
    final = mailbox.deliver_maildir(md, b"whole\n", key=key, marker=store)
    assert open(final, "rb").read() == b"whole\n"
    assert mailbox.deliver_maildir(md, b"whole\n", key=key, marker=store) == final
    assert os.listdir(os.path.join(md, "new")) == [os.path.basename(final)]
    assert os.listdir(os.path.join(md, "tmp")) == []


def test_status_log_format_and_torn_tail(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = str(tmp_path / "ID")
    status_log.append(path, status_log.Entry("bob@example.com", "4.3.0", "delayed",
                                             "mail transport\nunavailable", offset=211))
    text = open(path).read()
    assert text == ("recipient=bob@example.com\noffset=211\nnotify_flags=0\nstatus=4.3.0\n"
                    "action=delayed\nreason=mail transport unavailable\n\n")
    with open(path, "a") as f:
        f.write("recipient=torn@example.com\nstatus=4.")
    (entry,) = status_log.read(path)
    assert (entry.recipient, entry.offset, entry.reason) == ("bob@example.com", 211,
                                                             "mail transport unavailable")


def test_content_records_and_log_line() -> None:
    data = (text_records(b"Subject: x") + text_records(b"") + text_records(b"a" * 5000, 2048)
            + encode_record(b"X", b"") + encode_record(b"E", b""))
    assert list(content_lines(data)) == [b"Subject: x", b"", b"a" * 5000]
    line = log_line("ABC", "bob@h", "Bob@h", "local", 100.0, 100.5, 100.6,
                    DeliveryResult.sent("delivered to maildir"), now=100.72)
    assert line == ("ABC: to=<bob@h>, orig_to=<Bob@h>, relay=local, delay=0.72, "
                    "delays=0.5/0.1/0/0.12, dsn=2.0.0, status=sent (delivered to maildir)")


def test_from_quoting_sees_line_starts_across_chunks(tmp_path) -> None:  # type: ignore[no-untyped-def]
    chunks = [b"From a\nx\n", b"From b\nFrom c\n", b"yy", b"From not a line start\n"]
    assert b"".join(mailbox.from_quoted(chunks)) == (
        b">From a\nx\n>From b\n>From c\nyyFrom not a line start\n")


def test_chunked_writes_stop_at_the_size_limit_and_leave_nothing(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A message given in chunks is checked against the limit as it is written."""
    box = tmp_path / "bob"
    mailbox.deliver_mbox(str(box), _mbox_data([b"small"]))
    before = box.read_bytes()
    chunks = [b"x" * 1000 + b"\n"] * 50
    with pytest.raises(mailbox.MailboxError) as e:
        mailbox.deliver_mbox(str(box), iter(chunks), size_limit=len(before) + 20_000)
    assert e.value.dsn == "5.2.2" and box.read_bytes() == before
    md = tmp_path / "Maildir"
    with pytest.raises(mailbox.MailboxError) as e:
        mailbox.deliver_maildir(str(md), iter(chunks), size_limit=20_000)
    assert e.value.dsn == "5.2.2"
    assert os.listdir(md / "tmp") == [] and os.listdir(md / "new") == []
    final = mailbox.deliver_maildir(str(md), iter(chunks))
    assert open(final, "rb").read() == b"".join(chunks)


def test_an_error_reading_the_chunks_truncates_the_mbox_back(tmp_path) -> None:  # type: ignore[no-untyped-def]
    box = tmp_path / "bob"
    mailbox.deliver_mbox(str(box), _mbox_data([b"first"]))
    before = box.read_bytes()

    def broken() -> Iterator[bytes]:
        yield b"From x  Thu Jan  1 00:00:00 2026\n" + b"y" * 70000 + b"\n"
        raise ValueError("queue file went bad")

    with pytest.raises(ValueError):
        mailbox.deliver_mbox(str(box), broken())
    assert box.read_bytes() == before


def test_content_text_is_content_lines_in_pieces_of_any_size(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The bulk decoder gives the lines content_lines gives, LF-ended, whatever the block
    size; each piece ends at a line end or after an L record; p and w records are skipped;
    a damaged or short file is refused."""
    from pymailsys.queue.queue_file import QueueFileError, content_text

    rnd = random.Random(15)
    for _ in range(60):
        lines = [bytes(rnd.choice(b"ab\r.N\x80") for _ in range(rnd.choice((0, 1, 5, 127, 128,
                                                                             300, 5000))))
                 for _ in range(rnd.randint(0, 40))]
        for _ in range(rnd.randint(0, 3)):  # runs of lines of one length (base64 and such)
            length = rnd.choice((0, 1, 76, 78, 127))
            at = rnd.randint(0, len(lines))  # payloads that look like record heads too
            lines[at:at] = [bytes(rnd.choice(b"NLX" + bytes((length,))) for _ in range(length))
                            for _ in range(rnd.randint(10, 300))]
        content = b"".join(text_records(line, 2048) for line in lines)
        if lines and rnd.random() < 0.3:  # a pointer and padding between the lines
            content += encode_record(b"p", b"0" * 15) + encode_record(b"w", b"")
        unfinished = rnd.random() < 0.3
        if unfinished:  # content that ends inside a line: an L record last
            content += encode_record(b"L", b"tail")
            lines.append(b"tail")
        data = b"head" + content + encode_record(b"X", b"") + encode_record(b"E", b"")
        path = tmp_path / "qf"
        path.write_bytes(data)
        expected = b"".join(line + b"\n" for line in content_lines(data, 4))
        assert expected == b"".join(line + b"\n" for line in lines)
        ends: set[int] = set()  # where a piece may end: after a line or an L record's piece
        at = 0
        for line in lines:
            ends.update(at + i for i in range(2048, len(line), 2048))
            at += len(line) + 1
            ends.add(at)
        if unfinished:
            ends.add(at - 1)
        fd = os.open(path, os.O_RDONLY)
        try:
            for block in (7, 333, 4096, 65536):
                pieces = list(content_text(fd, 4, block))
                assert b"".join(pieces) == expected
                assert {len(b"".join(pieces[:i + 1])) for i in range(len(pieces))} <= ends
            os.truncate(path, len(data) - 2)  # no E: the X record is still there
            assert b"".join(content_text(fd, 4, 100)) == expected
            os.truncate(path, 4 + len(content) - 1 if content else 4)
            with pytest.raises(QueueFileError):
                list(content_text(fd, 4, 100))
        finally:
            os.close(fd)
    path.write_bytes(b"head" + text_records(b"x") + encode_record(b"R", b"a@b") + b"XE")
    fd = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(QueueFileError, match="unexpected record type"):
            list(content_text(fd, 4))
    finally:
        os.close(fd)


def test_queue_content_reads_a_small_message_once_and_a_large_one_in_blocks(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """QueueContent gives the same header lines and text whether the first read takes the
    whole message in (then decoded once and kept) or not (then read in blocks on each
    pass): messages around CHUNK bytes, with and without a header section, twice each. A
    data offset at or past the end of the file is refused when it is opened."""
    from pymailsys.delivery.agent import CHUNK, ContentError, QueueContent

    line = b"y" * 99
    for body_lines in (0, 1, CHUNK // 101 - 3, CHUNK // 101, CHUNK // 101 + 1, 3 * CHUNK // 101):
        for headers in ([b"Subject: x", b"Delivered-To: a@b", b"X-Long: " + b"z" * 3000],
                        [b"not: a header section end"], []):
            lines = [*headers, b"", *[line] * body_lines] if headers else [line] * body_lines
            if not lines:
                continue
            data = (b"head" + b"".join(text_records(x, 2048) for x in lines)
                    + encode_record(b"X", b"") + encode_record(b"E", b""))
            path = tmp_path / "qf"
            path.write_bytes(data)
            expected_text = b"".join(x + b"\n" for x in lines)
            expected_headers = lines[:lines.index(b"")] if b"" in lines else lines
            with QueueContent(str(path), 4) as content:
                for _ in range(2):
                    assert list(content.header_lines()) == expected_headers
                    assert b"".join(content.text()) == expected_text
            with QueueContent(str(path), 4) as content:
                assert b"".join(content.text()) == expected_text
    for offset in (len(data), len(data) + 10):
        with pytest.raises(ContentError, match="bad data offset"):
            QueueContent(str(path), offset)


def test_a_header_scan_is_skipped_only_when_no_header_can_match(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """``headers_may_contain`` (local's Delivered-To loop check) says False only when no
    primary header line starts with the text, in any case: a header in odd case or
    after others counts, the same text in the body does not, and a message larger than
    the first read is always scanned."""
    from pymailsys.delivery.agent import CHUNK, QueueContent

    needle = b"delivered-to:"
    cases = [
        ([b"Subject: x", b"dELIVERED-tO: me@here"], [b"body"], True),
        ([b"Delivered-To: me@here"], [], True),
        ([b"Subject: x"], [b"Delivered-To: me@here"], False),
        ([b"Subject: x", b"X-Delivered-To: me@here"], [b"b"], True),  # a cheap yes: scanned
        ([b"Subject: no such header"], [b"x"], False),
        ([b"Subject: big"], [b"Delivered-To: in the body", b"y" * 99] * (2 * CHUNK // 100), True),
    ]
    for headers, body, expected in cases:
        lines = [*headers, b"", *body]
        path = tmp_path / "qf"
        path.write_bytes(b"head" + b"".join(text_records(x, 2048) for x in lines)
                         + encode_record(b"X", b"") + encode_record(b"E", b""))
        with QueueContent(str(path), 4) as content:
            assert content.headers_may_contain(needle) is expected, headers
            if not expected:
                assert not any(h.lower().startswith(needle) for h in content.header_lines())


def test_content_records_read_in_blocks_of_any_size(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Records that straddle read blocks come out whole; a file cut short is refused."""
    from pymailsys.queue.queue_file import QueueFileError, content_records

    lines = [b"Subject: x", b"", b"a" * 5000, b"short", b"b" * 300]
    content = b"".join(text_records(line, 2048) for line in lines)
    path = tmp_path / "qf"
    path.write_bytes(b"head" + content + encode_record(b"X", b"") + encode_record(b"E", b""))
    fd = os.open(path, os.O_RDONLY)
    try:
        for block in (1, 3, 100, 65536):
            records = list(content_records(fd, 4, block))
            joined = b"".join(p + (b"\n" if t == b"N" else b"") for t, p in records)
            assert joined == b"".join(line + b"\n" for line in lines)
        os.truncate(path, 4 + len(content) - 10)
        with pytest.raises(QueueFileError):
            list(content_records(fd, 4, 100))
    finally:
        os.close(fd)


def test_maildir_rights_come_after_the_marker_claim(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """With ``rights`` the marker is claimed with the caller's rights first, then the Maildir
    work runs with them; rights that cannot be had leave the marker empty and closed (no
    delivery yet), and the next attempt delivers once."""
    md, store, key = _marked(tmp_path)
    seen: list[list[str]] = []

    @contextlib.contextmanager
    def recipient() -> Iterator[None]:
        seen.append(os.listdir(store.directory))
        yield

    final = mailbox.deliver_maildir(md, b"one\n", key=key, marker=store, rights=recipient)
    assert seen == [[key]] and store.get(key) == os.path.basename(final)
    assert mailbox.deliver_maildir(md, b"one\n", key=key, marker=store, rights=recipient) == final

    def refused() -> contextlib.AbstractContextManager[None]:
        raise privileges.PrivilegeError("cannot switch to uid 12345 gid 12345")

    other = mailbox.delivery_key("3F2A11C0D7E", 1700000000.123456, 300, md)
    fds = len(os.listdir("/proc/self/fd"))
    with pytest.raises(privileges.PrivilegeError):
        mailbox.deliver_maildir(md, b"two\n", key=other, marker=store, rights=refused)
    assert len(os.listdir("/proc/self/fd")) == fds and store.get(other) is None
    second = mailbox.deliver_maildir(md, b"two\n", key=other, marker=store, rights=recipient)
    assert sorted(os.listdir(os.path.join(md, "new"))) == sorted(
        os.path.basename(p) for p in (final, second))


def test_prepended_addresses_are_quoted_as_mail_copy() -> None:
    """mail_copy quotes every address it prepends: one address, never two."""
    assert mailbox.from_line('q s@localhost').startswith(b'From "q s"@localhost  ')
    assert mailbox.prepended_headers("q s@localhost", "a.b@x", "Q S@localhost") == (
        b'Return-Path: <"q s"@localhost>\nX-Original-To: a.b@x\n'
        b'Delivered-To: "Q S"@localhost\n')  # mail_copy keeps the case
    assert mailbox.prepended_headers("", None, None) == b"Return-Path: <>\n"


def test_queue_content_marks_only_sent_recipients_done_near_or_far(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """``QueueContent.mark_sent`` turns a sent recipient's R record into D in the file;
    a recipient near the data offset is checked against the first read, one far before it
    (a message of many recipients) with a read of its own. Deferred or bounced
    recipients, and those that asked for NOTIFY=SUCCESS (qmgr writes that trace first),
    are left for qmgr; so is every recipient of a request without DEL_REQ_FLAG_SUCCESS
    (local passing an address an alias expanded to)."""
    from pymailsys.delivery.agent import DEL_REQ_FLAG_DEFAULT, RCPT_AREA, QueueContent
    from pymailsys.dsn import NOTIFY_SUCCESS
    from pymailsys.queue.queue_file import QueueFileBuilder, read_envelope

    b = QueueFileBuilder(time.time())
    b.sender("s@example.org")
    count = RCPT_AREA // 20
    for i in range(count):
        b.recipient(f"r{i}@example.com", orig=f"r{i}@example.com",
                    notify=NOTIFY_SUCCESS if i == count - 2 else 0)
    b.line(b"Subject: many")
    path = tmp_path / "qf"
    path.write_bytes(b.build())
    env = read_envelope(str(path))
    far, *_, success, near = env.recipients
    deferred, bounced, unflagged = env.recipients[1:4]
    assert env.data_offset - far.offset > RCPT_AREA >= env.data_offset - near.offset
    before = path.read_bytes()
    fd = os.open(path, os.O_RDWR)
    sent = DeliveryResult.sent("delivered")
    with QueueContent(str(path), env.data_offset, fd=fd,
                      rcpt_offsets=[rc.offset for rc in env.recipients]) as content:
        for rc, result in ((far, sent), (near, sent), (success, sent),
                           (deferred, DeliveryResult.deferred("later")),
                           (bounced, DeliveryResult.bounced("no"))):
            content.mark_sent(env.queue_id, rc.address, rc.offset, rc.notify,
                              DEL_REQ_FLAG_DEFAULT, result)
        content.mark_sent(env.queue_id, unflagged.address, unflagged.offset, 0, 0, sent)
        assert b"".join(content.text()) == b"Subject: many\n"
    after = path.read_bytes()
    assert [i for i in range(len(after)) if after[i] != before[i]] == [far.offset, near.offset]
    assert {rc.address for rc in read_envelope(str(path)).recipients if rc.done} == \
        {far.address, near.address}
