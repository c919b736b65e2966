"""sendmail: message reading, -t, exit codes, and the maildrop file when the system is down."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from qf_helpers import make_spool, tool

from pymailsys.queue import maildrop


def maildrop_files(spool: Path) -> list[Path]:
    return sorted((spool / "maildrop").iterdir())


def test_down_system_gets_a_maildrop_file(tmp_path: Path) -> None:
    etc, spool = make_spool(tmp_path)
    msg = (b"From old-style line\r\nSubject: hi\r\nTo: a@example.com, B <b@example.com>\r\n"
           b"Bcc: secret@example.com\r\n\r\nbody\r\n.\r\nnot this\r\n")
    out = tool("sendmail", "-C", str(etc), "-t", "-f", "<me@example.org>", "-F", "Me Myself",
               input=msg)
    assert out.returncode == 0, out.stderr
    [path] = maildrop_files(spool)
    st = path.stat()
    assert stat.S_IMODE(st.st_mode) == 0o744 and st.st_uid == os.getuid()
    sub = maildrop.parse_maildrop(path.read_bytes())
    assert sub.sender == "me@example.org" and sub.full_name == "Me Myself"
    assert sub.extracted == ["a@example.com", "b@example.com", "secret@example.com"]
    assert sub.lines == [b"Subject: hi", b"To: a@example.com, B <b@example.com>", b"", b"body"]


def test_dot_rule_off_with_i_and_command_line_recipients(tmp_path: Path) -> None:
    etc, spool = make_spool(tmp_path)
    out = tool("sendmail", "-C", str(etc), "-oi", "x@example.com, Y <y@example.com>",
               input=b"Subject: s\n\n.\nafter\n")
    assert out.returncode == 0, out.stderr
    sub = maildrop.parse_maildrop(maildrop_files(spool)[0].read_bytes())
    assert sub.recipients == ["x@example.com", "y@example.com"]
    assert sub.lines == [b"Subject: s", b"", b".", b"after"]


def test_exit_codes(tmp_path: Path) -> None:
    etc, spool = make_spool(tmp_path)
    none = tool("sendmail", "-C", str(etc), "-t", input=b"Subject: no rcpt\n\nx\n")
    assert none.returncode == 64
    assert b"No recipient addresses found in message header" in none.stderr
    norcpt = tool("sendmail", "-C", str(etc), input=b"Subject: no rcpt\n\nx\n")
    assert norcpt.returncode == 64
    assert b"Recipient addresses must be specified on the command line or via the -t option" \
        in norcpt.stderr
    assert tool("sendmail", "-C", str(etc), "-B", "9BIT", "a@b").returncode == 64
    assert tool("sendmail", "-C", str(etc), "-bv", "a@b").returncode == 69
    assert tool("sendmail", "-C", str(etc), "-q30m").returncode == 0
    assert maildrop_files(spool) == []
    denied_etc, _ = make_spool(tmp_path / "denied", authorized_submit_users="")
    denied = tool("sendmail", "-C", str(denied_etc), "a@b", input=b"x\n")
    assert denied.returncode == 77
    assert b"is not allowed to submit mail" in denied.stderr


def test_strict_maildrop_reader_refuses_junk() -> None:
    good = maildrop.Submission(sender="u", recipients=["r@example.com"], lines=[b"x"]).to_records()
    assert maildrop.parse_maildrop(good).recipients == ["r@example.com"]
    for bad in (good[:-2], b"Z\x00" + good, good.replace(b"S\x01u", b"S\x01u" + b"S\x01v"),
                good.replace(b"R\x0dr@example.com", b"R\x0dr@exa\nple.com")):
        try:
            maildrop.parse_maildrop(bad)
        except maildrop.SubmissionError:
            continue
        raise AssertionError(f"accepted {bad!r}")


def test_queue_modes_run_postqueue(tmp_path: Path) -> None:
    """-bp, mailq and -q are postqueue's answers (sendmail runs postqueue, as Postfix's does)."""
    etc, _spool = make_spool(tmp_path)
    flush = tool("sendmail", "-C", str(etc), "-q")
    assert flush.returncode == 69, flush.stderr
    assert b"postqueue: fatal: Cannot flush mail queue - mail system is down" in flush.stderr
    for listing in (tool("sendmail", "-C", str(etc), "-bp"), tool("mailq", "-C", str(etc))):
        if os.geteuid() == 0:
            assert listing.returncode == 0, listing.stderr
            assert listing.stdout == b"Mail queue is empty\n"
            assert b"postqueue: warning: Mail system is down" in listing.stderr
        else:
            assert listing.returncode == 69
            assert b"Queue report unavailable - mail system is down" in listing.stderr
    bad = tool("sendmail", "-C", str(etc), "-qIno/such")
    assert bad.returncode == 64
    assert b'postqueue: fatal: Cannot flush queue ID - invalid name: "no/such"' in bad.stderr
