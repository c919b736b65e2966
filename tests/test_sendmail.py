"""sendmail: message reading, -t, exit codes, and the maildrop file when the system is down."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
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
    """Every fatal error exits 75, as Debian's Postfix 3.7 sendmail (its msg_cleanup
    handler): usage errors, a user not allowed to submit, an unsupported request. These
    were 64, 69 and 77, the sysexits.h values its source names but never exits with."""
    etc, spool = make_spool(tmp_path)
    none = tool("sendmail", "-C", str(etc), "-t", input=b"Subject: no rcpt\n\nx\n")
    assert none.returncode == 75
    assert b"No recipient addresses found in message header" in none.stderr
    norcpt = tool("sendmail", "-C", str(etc), input=b"Subject: no rcpt\n\nx\n")
    assert norcpt.returncode == 75
    assert b"Recipient addresses must be specified on the command line or via the -t option" \
        in norcpt.stderr
    assert tool("sendmail", "-C", str(etc), "-B", "9BIT", "a@b").returncode == 75
    assert tool("sendmail", "-C", str(etc), "-bv", "a@b").returncode == 75
    assert tool("sendmail", "-C", str(etc), "-q30m").returncode == 0
    assert maildrop_files(spool) == []
    denied_etc, _ = make_spool(tmp_path / "denied", authorized_submit_users="")
    denied = tool("sendmail", "-C", str(denied_etc), "a@b", input=b"x\n")
    assert denied.returncode == 75
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


ESC_ADDRESSES = [(["-f", "a\x1b[2J@example.com", "user@example.com"], b"", b"-f option specified malformed sender: a?[2J@example.com"),
                 (["user\x1b[2J@example.com"], b"", b"Bad recipient address syntax: user?[2J@example.com"),
                 (["-t"], b"To: user\x1b[2J@example.com\n", b"Bad recipient address syntax: user?[2J@example.com")]


def test_control_characters_in_envelope_addresses_are_refused_up_front(tmp_path: Path) -> None:
    """The delivery agents refuse an address with a control character; sendmail must not
    take one in (that mail sat deferred for days): exit 75 with the reason, no file."""
    etc, spool = make_spool(tmp_path)
    for args, header, reason in ESC_ADDRESSES:
        out = tool("sendmail", "-C", str(etc), *args, input=header + b"Subject: x\n\nb\n")
        assert out.returncode == 75, (args, out.returncode, out.stderr)
        assert b"sendmail: fatal: " in out.stderr and reason in out.stderr, out.stderr
        assert b"\x1b" not in out.stderr
        assert maildrop_files(spool) == []


def test_maildrop_reader_refuses_a_control_character_in_an_address() -> None:
    for sub in (maildrop.Submission(sender="a\x1b[2J@example.com", recipients=["r@example.com"]),
                maildrop.Submission(sender="u", recipients=["r\x1b[2J@example.com"]),
                maildrop.Submission(sender="u", extracted=["r\x07@example.com"])):
        try:
            maildrop.parse_maildrop(sub.to_records())
        except maildrop.SubmissionError as e:
            assert "control character in" in str(e)
            continue
        raise AssertionError(f"accepted {sub}")


def test_full_name_with_a_line_break_is_text(tmp_path: Path) -> None:
    """As Postfix's sendmail: -F is the From: header's text, never a reason to refuse."""
    etc, spool = make_spool(tmp_path)
    out = tool("sendmail", "-C", str(etc), "-F", "Evil\nBcc: x\x1b", "user@example.com",
               input=b"Subject: x\n\nb\n")
    assert out.returncode == 0, out.stderr
    [path] = maildrop_files(spool)
    sub = maildrop.parse_maildrop(path.read_bytes())
    assert sub.full_name == "Evil Bcc: x" and sub.recipients == ["user@example.com"]


def test_input_over_message_size_limit_is_refused_without_a_file(tmp_path: Path) -> None:
    """As Postfix: ``message file too big``, exit 75, nothing left in maildrop/."""
    etc, spool = make_spool(tmp_path, message_size_limit="100000")
    for args in ([], ["-t"]):
        out = tool("sendmail", "-C", str(etc), *args, "user@example.com",
                   input=b"To: a@example.com\n\n" + b"y\n" * 60_000)
        assert out.returncode == 75, out.stderr
        assert out.stderr.endswith(b"sendmail: fatal: root(0): message file too big\n") \
            or b"): message file too big" in out.stderr, out.stderr
        assert maildrop_files(spool) == []


PEAK = """
import resource, subprocess, sys
with open(sys.argv[1], "rb") as f:
    r = subprocess.run(sys.argv[2:], stdin=f, capture_output=True)
sys.stdout.write(f"{r.returncode} {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}")
"""


def test_sendmail_memory_does_not_grow_with_the_lines(tmp_path: Path) -> None:
    """6.6 MB of 3-byte lines took sendmail to 437 MB (a Python object a line); written
    to the maildrop file as it is read, it stays near the interpreter's own size. The
    file holds the message byte for byte."""
    etc, spool = make_spool(tmp_path)
    body = b"ab\n" * 2_200_000
    src = tmp_path / "input"
    src.write_bytes(b"Subject: short lines\n\n" + body)
    for args in ([], ["-t"]):
        measured = subprocess.run(
            [sys.executable, "-c", PEAK, str(src), sys.executable, "-m", "pymailsys.tools.sendmail",
             "-C", str(etc), *args, "user@example.com"],
            capture_output=True, check=True, cwd="/")
        status, peak_kb = measured.stdout.split()
        assert status == b"0", measured
        assert int(peak_kb) < 80 * 1024, f"sendmail peaked at {int(peak_kb) // 1024} MB"
        [path] = maildrop_files(spool)
        sub = maildrop.parse_maildrop(path.read_bytes())
        assert sub.content() == b"Subject: short lines\n\n" + body
        path.unlink()


def test_a_signal_while_reading_leaves_no_maildrop_file(tmp_path: Path) -> None:
    """Killed while the message comes in (hangup, interrupt, quit, terminate), sendmail
    removes the maildrop file it was writing and dies by the signal, as Postfix's postdrop
    removes its file. The 0644 file stayed in maildrop/ for good (pickup takes only
    complete files), and an interrupt printed a traceback."""
    import signal
    import time

    etc, spool = make_spool(tmp_path)
    signals = (signal.SIGHUP, signal.SIGINT, signal.SIGQUIT, signal.SIGTERM)

    def default_handling() -> None:
        # A job started in the background (nohup, &) ignores SIGHUP and SIGINT, and
        # sendmail keeps an ignored signal ignored: give it default handling here.
        for sig in signals:
            signal.signal(sig, signal.SIG_DFL)

    for signum in signals:
        proc = subprocess.Popen([sys.executable, "-m", "pymailsys.tools.sendmail", "-C", str(etc),
                                 "user@example.com"], stdin=subprocess.PIPE,
                                stderr=subprocess.PIPE, cwd="/", preexec_fn=default_handling)
        assert proc.stdin is not None and proc.stderr is not None
        proc.stdin.write(b"Subject: cut short\n\n" + b"x" * 100_000 + b"\n")
        proc.stdin.flush()
        deadline = time.monotonic() + 30
        while not maildrop_files(spool) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert maildrop_files(spool), "sendmail wrote no maildrop file"
        proc.send_signal(signum)
        assert proc.wait(timeout=30) == -signum
        assert b"Traceback" not in proc.stderr.read()
        proc.stdin.close()
        proc.stderr.close()
        assert maildrop_files(spool) == [], signum


def test_usage_errors_read_as_postfix(tmp_path: Path) -> None:
    """An unknown option or one without its value: getopt's line and Postfix's usage line
    (exit 75), for sendmail and mailq alike. It was one line of click's own wording."""
    etc, spool = make_spool(tmp_path)
    for args, complaint in ((["-z", "user@example.com"], b"invalid option -- 'z'"),
                            (["-tz"], b"invalid option -- 'z'"),
                            (["--help"], b"invalid option -- '-'"),
                            (["-f"], b"option requires an argument -- 'f'")):
        out = tool("sendmail", "-C", str(etc), *args, input=b"Subject: x\n\nb\n")
        assert out.returncode == 75, (args, out.stderr)
        assert out.stderr == (b"sendmail: " + complaint + b"\n"
                              b"sendmail: fatal: usage: sendmail [options]\n"), out.stderr
    out = tool("mailq", "-C", str(etc), "-z")
    assert out.returncode == 75
    assert out.stderr == b"mailq: invalid option -- 'z'\nmailq: fatal: usage: mailq [options]\n"
    assert maildrop_files(spool) == []


def test_a_delivery_report_request_is_refused(tmp_path: Path) -> None:
    """One -v asks Postfix's sendmail for a report of the first delivery attempt
    ("Mail Delivery Status Report will be mailed to <sender>."). There is no such report
    here: refused (75, as -bv) instead of taking the mail and never sending the report."""
    etc, spool = make_spool(tmp_path)
    out = tool("sendmail", "-C", str(etc), "-v", "user@example.com", input=b"Subject: x\n\nb\n")
    assert out.returncode == 75, out.stderr
    assert out.stderr == b"sendmail: fatal: -v (mail delivery status report) is not supported\n"
    assert maildrop_files(spool) == []


def test_closed_standard_streams_are_dev_null(tmp_path: Path) -> None:
    """Started with standard input, output or error closed (a daemon's child, cron), as
    Postfix's sendmail: each is /dev/null. A closed input was a traceback and exit 1 instead
    of an empty message; a closed error stream turned every fatal error into exit 1, and
    mailq's listing into a traceback."""
    etc, spool = make_spool(tmp_path)
    base = [sys.executable, "-m", "pymailsys.tools.sendmail", "-C", str(etc)]

    def closed(redirect: str, *args: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(["sh", "-c", f'exec "$@" {redirect}', "sh", *base, *args],
                              stdin=subprocess.DEVNULL, capture_output=True, cwd="/",
                              timeout=60)

    out = closed("<&-", "user@example.com")
    assert out.returncode == 0 and out.stderr == b"", out.stderr
    [path] = maildrop_files(spool)
    assert maildrop.parse_maildrop(path.read_bytes()).lines == []
    path.unlink()
    assert closed("2>&-", "-t").returncode == 75
    listing = closed(">&-", "-bp")
    assert b"Traceback" not in listing.stderr
    assert listing.returncode == (0 if os.geteuid() == 0 else 69), listing.stderr
    assert maildrop_files(spool) == []


def test_a_configuration_directory_without_main_cf_is_refused(tmp_path: Path) -> None:
    """As Postfix's sendmail: ``fatal: open DIR/main.cf: No such file or directory`` (75).
    A mistyped -C or MAIL_CONFIG used to run on the built-in defaults, submitting the mail
    to whatever instance those name (/var/spool/pymailsys)."""
    empty = tmp_path / "no-config"
    empty.mkdir()
    for args, env in ((["-C", str(empty)], None), ([], {"MAIL_CONFIG": str(empty)})):
        out = tool("sendmail", *args, "user@example.com", input=b"Subject: x\n\nb\n", env=env)
        assert out.returncode == 75, out.stderr
        assert out.stderr == (f"sendmail: fatal: open {empty}/main.cf: "
                              "No such file or directory\n").encode()


def test_what_pickup_would_refuse_is_refused_up_front(tmp_path: Path) -> None:
    """With the system down, an envelope value pickup refuses (a record over the line
    limit: a long -F, recipient or -t address) was written to maildrop/ and sendmail
    exited 0; pickup then moved the file to corrupt/ and the mail was lost. Now it is
    refused (75) as a live submission is, and no file is left."""
    etc, spool = make_spool(tmp_path)
    long_name = "N" * 5000
    long_rcpt = "u" * 3000 + "@example.com"
    for args, header in ((["-F", long_name, "user@example.com"], b""), ([long_rcpt], b""),
                         (["-t"], f"To: {long_rcpt}\n".encode())):
        out = tool("sendmail", "-C", str(etc), *args, input=header + b"Subject: x\n\nb\n")
        assert out.returncode == 75, (args[0], out.stderr)
        assert b"): malformed submission: '" in out.stderr and b"' value too long\n" in out.stderr
        assert maildrop_files(spool) == []


def test_sendmail_bs_full_name_is_one_line(tmp_path: Path) -> None:
    """sendmail -bs takes the full name from $NAME or GECOS, as sendmail does, and
    makes it one line: with a line break in it, the maildrop file written while the
    system is down was one pickup refuses (corrupt/, the mail lost)."""
    etc, spool = make_spool(tmp_path)
    conversation = (b"HELO client.example\r\nMAIL FROM:<me@example.com>\r\n"
                    b"RCPT TO:<user@example.com>\r\nDATA\r\nSubject: x\r\n\r\nb\r\n.\r\nQUIT\r\n")
    out = tool("sendmail", "-C", str(etc), "-bs", input=conversation,
               env={"NAME": "Two\nLines\x1b[2J"})
    assert out.returncode == 0 and b"250 2.0.0 Ok: queued as " in out.stdout, out.stdout
    [path] = maildrop_files(spool)
    assert maildrop.parse_maildrop(path.read_bytes()).full_name == "Two Lines [2J"
