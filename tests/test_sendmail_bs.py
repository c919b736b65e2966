"""sendmail -bs is smtpd in stand-alone mode (smtpd -S) on standard input and output:
smtpd's replies and address checks, and each message a local submission by the
calling user (pickup learns the uid from the kernel)."""

from __future__ import annotations

import pwd
import re
import subprocess
import sys

import pytest
from harness import ME, Instance, wait_until


class StdioSmtp:
    """Drive ``sendmail -bs`` one command at a time (no pipelining)."""

    def __init__(self, argv: list[str]) -> None:
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, cwd="/")

    def reply(self) -> str:
        assert self.proc.stdout is not None
        lines: list[str] = []
        while True:
            line = self.proc.stdout.readline().decode()
            assert line, f"sendmail -bs ended; replies so far: {lines}"
            lines.append(line.rstrip("\r\n"))
            if re.match(r"\d{3} ", line):
                return "\n".join(lines)

    def send(self, line: str) -> str:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\r\n")
        self.proc.stdin.flush()
        return self.reply()

    def close(self) -> int:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        return self.proc.wait(timeout=60)


def bs_argv(inst: Instance, user: str | None) -> list[str]:
    argv = [sys.executable, "-m", "pymailsys.tools.sendmail", "-C", str(inst.config_dir), "-bs"]
    return ["runuser", "-u", user, "--", *argv] if user else argv


def converse(inst: Instance, user: str | None, sender: str) -> tuple[list[str], int]:
    smtp = StdioSmtp(bs_argv(inst, user))
    try:
        replies = [smtp.reply()]
        for line in ("EHLO client.example", "FROB x", f"MAIL FROM:<{sender}>",
                     "RCPT TO:<bad address@>", f"RCPT TO:<{ME}@localhost>", "DATA"):
            replies.append(smtp.send(line))
        assert smtp.proc.stdin is not None
        smtp.proc.stdin.write(b"Subject: via -bs\r\n\r\n..dot-stuffed\r\nbody\r\n.\r\n")
        smtp.proc.stdin.flush()
        replies.append(smtp.reply())
        replies.append(smtp.send("QUIT"))
    finally:
        status = smtp.close()
    return replies, status


def check_conversation(replies: list[str]) -> None:
    banner, ehlo, unknown, mail, bad_rcpt, rcpt, data, queued, quit_ = replies
    assert banner.startswith("220 ")
    assert ehlo.startswith("250-") and "\n250 " in ehlo
    assert unknown == "500 5.5.2 Error: command not recognized"
    assert mail == "250 2.1.0 Ok"
    assert bad_rcpt.startswith("501 5.1.3 Bad recipient address syntax")
    assert rcpt == "250 2.1.5 Ok"
    assert data.startswith("354 ")
    assert re.match(r"250 2\.0\.0 Ok: queued as \w+$", queued), queued
    assert quit_ == "221 2.0.0 Bye"


def test_sendmail_bs_is_smtpd_and_submits_as_the_caller(instance: Instance) -> None:
    uid = pwd.getpwnam(ME).pw_uid
    replies, status = converse(instance, None, f"{ME}@localhost")
    assert status == 0
    check_conversation(replies)
    msgs = instance.wait_maildir(1)
    assert msgs[0].endswith(b"\n.dot-stuffed\nbody\n")
    assert re.search(rf"Received: by \S+ \(Postfix, from userid {uid}\)".encode(), msgs[0])
    instance.wait_log(rf"postfix/pickup\[\d+\]: \w+: uid={uid} from=<{ME}@localhost>")


@pytest.mark.root
def test_sendmail_bs_as_a_user(new_instance, python_user) -> None:  # type: ignore[no-untyped-def]
    inst: Instance = new_instance(maildir=True)
    inst.start()
    uid = pwd.getpwnam(python_user).pw_uid
    replies, status = converse(inst, python_user, f"{python_user}@localhost")
    assert status == 0
    check_conversation(replies)
    [msg] = inst.wait_maildir(1)
    assert msg.startswith(f"Return-Path: <{python_user}@localhost>\n".encode())
    assert re.search(rf"Received: by \S+ \(Postfix, from userid {uid}\)".encode(), msg)
    inst.wait_log(rf"postfix/pickup\[\d+\]: \w+: uid={uid} from=<{python_user}@localhost>")
    wait_until(lambda: inst.queue_empty(), 30, what="an empty queue")


def test_sendmail_bs_reads_and_writes_plain_files(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Standard input and output need not be pipes: a file, or /dev/null."""
    from qf_helpers import make_spool

    etc, _spool = make_spool(tmp_path)
    argv = [sys.executable, "-m", "pymailsys.tools.sendmail", "-C", str(etc), "-bs"]
    (tmp_path / "in").write_bytes(b"HELO client.example\r\n")
    with open(tmp_path / "in", "rb") as stdin, open(tmp_path / "out", "wb") as stdout:
        done = subprocess.run(argv, stdin=stdin, stdout=stdout, stderr=subprocess.PIPE,
                              timeout=60, cwd="/")
    assert done.returncode == 0, done.stderr
    lines = (tmp_path / "out").read_bytes().split(b"\r\n")
    assert lines[0].startswith(b"220 ") and lines[1].startswith(b"250 ")
    empty = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=60,
                           cwd="/")
    assert empty.returncode == 0 and empty.stdout.startswith(b"220 "), empty.stderr
    assert b"Traceback" not in empty.stderr


def at_once(inst: Instance, hello: str, subject: str) -> bytes:
    """The whole conversation written to ``sendmail -bs`` in one go; its replies."""
    conversation = (f"{hello} client.example\r\nMAIL FROM:<{ME}@localhost>\r\n"
                    f"RCPT TO:<{ME}@localhost>\r\nDATA\r\nSubject: {subject}\r\n\r\n"
                    "body\r\n.\r\nQUIT\r\n").encode()
    done = subprocess.run(bs_argv(inst, None), input=conversation, capture_output=True,
                          timeout=60, cwd="/")
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_sendmail_bs_takes_the_whole_conversation_at_once(instance: Instance) -> None:
    """A program writes its SMTP conversation to ``sendmail -bs`` in one go, as Postfix's
    stand-alone smtpd allows (no pipelining check there): every command is answered and
    the message delivered. It was answered ``554 5.5.0 Error: SMTP protocol
    synchronization`` after the greeting, and the message was lost to the program."""
    for hello in ("HELO", "EHLO"):
        replies = at_once(instance, hello, f"at once {hello}")
        codes = [line[:4] for line in replies.split(b"\r\n") if line[3:4] == b" "]
        assert codes == [b"220 ", b"250 ", b"250 ", b"250 ", b"354 ", b"250 ", b"221 "], replies
        assert b"Ok: queued as " in replies
    msgs = instance.wait_maildir(2)
    assert {re.search(rb"\nSubject: (.*)\n", m).group(1) for m in msgs} == {  # type: ignore[union-attr]
        b"at once HELO", b"at once EHLO"}


def test_sendmail_bs_writes_smtpds_received_header(instance: Instance) -> None:
    """As Postfix's smtpd -S: below pickup's Received: header, smtpd's own, with the
    HELO name, localhost [127.0.0.1], the protocol, the maildrop file's queue ID and the
    one recipient. There was only pickup's, and no trace of the SMTP conversation."""
    at_once(instance, "EHLO", "traced")
    [msg] = instance.wait_maildir(1)
    uid = pwd.getpwnam(ME).pw_uid
    assert re.search(
        rf"\nReceived: by (\S+) \(Postfix, from userid {uid}\)\n\tid \w+; [^\n]+\n"
        rf"Received: from client\.example \(localhost \[127\.0\.0\.1\]\)\n"
        rf"\tby \1 \(Postfix\) with ESMTP id \w+\n"
        rf"\tfor <{ME}@localhost>; \w\w\w, [ \d]\d \w\w\w \d{{4}} [\d:]{{8}} [+-]\d{{4}} \(\w+\)\n"
        rf"Subject: traced\n".encode(), msg), msg[:600]
