"""End to end: SMTP in, local delivery out, checked byte for byte in the mailbox."""

from __future__ import annotations

import re
import subprocess

from conftest import require_tool
from harness import ME, Instance

RCPT = f"{ME}@localhost"


def _split_added_headers(delivered: bytes, original: bytes) -> bytes:
    """What the system put in front of the original message (which must follow intact)."""
    assert delivered.endswith(original), delivered[-400:]
    return delivered[: len(delivered) - len(original)]


def _check_added(prefix: bytes, queue_id: str, sender: str, helo: str) -> None:
    text = prefix.decode()
    lines = text.splitlines()
    assert lines[0] == f"Return-Path: <{sender}>"
    assert f"Delivered-To: {RCPT}" in lines
    assert re.search(
        rf"Received: from {re.escape(helo)} \(\S+ \[127\.0\.0\.1\]\)\n"
        rf"\tby \S+ \(Postfix\) with E?SMTP id {queue_id}\n"
        rf"\tfor <{re.escape(RCPT)}>; \w{{3}}, +\d+ \w{{3}} \d{{4}} \d\d:\d\d:\d\d [+-]\d{{4}} \(\S+\)\n",
        text), text


MESSAGE = (
    b"From: Alice <alice@example.org>\n"
    b"To: <" + RCPT.encode() + b">\n"
    b"Subject: bytes survive\n"
    b"Message-ID: <e2e-1@example.org>\n"
    b"Date: Wed, 25 Nov 2026 08:00:00 +0000\n"
    b"MIME-Version: 1.0\n"
    b"Content-Type: text/plain; charset=utf-8\n"
    b"Content-Transfer-Encoding: 8bit\n"
    b"\n"
    b"8-bit: gr\xc3\xbc\xc3\x9fe, \xe2\x82\xac\n"
    b".a line that starts with a dot\n"
    b"..two dots\n"
    b"From the start of a line\n"
    + b"x" * 998 + b"\n"
    b"last line\n"
)


def _smtp_send(inst: Instance, message: bytes) -> str:
    return inst.send("alice@example.org", RCPT, message.replace(b"\n", b"\r\n"))


def test_smtplib_to_maildir_exact_bytes(instance: Instance) -> None:
    queue_id = _smtp_send(instance, MESSAGE)
    (delivered,) = instance.wait_maildir(1)
    prefix = _split_added_headers(delivered, MESSAGE)
    _check_added(prefix, queue_id, "alice@example.org", "client.example")
    instance.wait_log(rf"{queue_id}: to=<{re.escape(RCPT)}>, relay=local, .*status=sent \(delivered to maildir\)")
    instance.wait_log(rf"{queue_id}: removed")
    assert instance.queue_empty()


def test_smtplib_to_mbox_exact_bytes(mbox_instance: Instance) -> None:
    inst = mbox_instance
    queue_id = _smtp_send(inst, MESSAGE)
    inst.wait_log(rf"{queue_id}: removed")
    box = inst.mbox()
    assert re.match(rb"From alice@example\.org  \w{3} \w{3} [ \d]\d \d\d:\d\d:\d\d \d{4}\n", box), box[:80]
    first_line_end = box.index(b"\n") + 1
    body = box[first_line_end:]
    # mbox quoting: a line starting with "From " gets ">", and a blank line ends the message
    quoted = MESSAGE.replace(b"\nFrom the start", b"\n>From the start") + b"\n"
    prefix = _split_added_headers(body, quoted)
    _check_added(prefix, queue_id, "alice@example.org", "client.example")
    inst.wait_log(rf"{queue_id}: to=<{re.escape(RCPT)}>, relay=local, .*status=sent \(delivered to mailbox\)")


def test_two_messages_append_to_mbox(mbox_instance: Instance) -> None:
    inst = mbox_instance
    first = _smtp_send(inst, b"Subject: one\n\nfirst\n")
    inst.wait_log(rf"{first}: removed")
    second = _smtp_send(inst, b"Subject: two\n\nsecond\n")
    inst.wait_log(rf"{second}: removed")
    box = inst.mbox()
    assert len(re.findall(rb"^From alice@example\.org  ", box, re.M)) == 2
    assert box.index(b"first\n") < box.index(b"second\n")


def test_swaks_delivers(instance: Instance) -> None:
    swaks = require_tool("swaks")
    result = subprocess.run(
        [swaks, "--server", f"127.0.0.1:{instance.port}", "--from", "bob@example.org",
         "--to", RCPT, "--helo", "swaks.example", "--header", "Subject: via swaks",
         "--body", "hello from swaks"],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    m = re.search(r"<-  250 2\.0\.0 Ok: queued as (\w+)", result.stdout)
    assert m, result.stdout
    (delivered,) = instance.wait_maildir(1)
    assert b"Subject: via swaks" in delivered
    assert b"hello from swaks" in delivered
    assert f"with ESMTP id {m.group(1)}".encode() in delivered


def test_missing_headers_added_for_local_clients(instance: Instance) -> None:
    # 127.0.0.1 is an inet_interfaces address: local_header_rewrite_clients = permit_inet_interfaces
    queue_id = _smtp_send(instance, b"Subject: bare\n\nno From, Date or Message-ID\n")
    (delivered,) = instance.wait_maildir(1)
    assert re.search(rb"\nMessage-Id: <\d{14}\." + queue_id.encode() + rb"@[^>]+>\n", delivered), delivered
    assert re.search(rb"\nDate: \w{3}, +\d+ \w{3} \d{4} \d\d:\d\d:\d\d [+-]\d{4}", delivered)
    instance.wait_log(rf"{queue_id}: message-id=<\d{{14}}\.{queue_id}@")


def test_missing_headers_not_added_for_remote_clients(new_instance) -> None:  # type: ignore[no-untyped-def]
    inst = new_instance(settings={"local_header_rewrite_clients": ""})
    inst.start()
    queue_id = _smtp_send(inst, b"Subject: bare\n\nno From, Date or Message-ID\n")
    (delivered,) = inst.wait_maildir(1)
    assert b"\nMessage-Id:" not in delivered and b"\nDate:" not in delivered
    inst.wait_log(rf"{queue_id}: message-id=")


def test_local_process_limit_is_how_many_deliveries_run_at_once(new_instance) -> None:  # type: ignore[no-untyped-def]
    """master.cf's maxproc for local (1 here): qmgr makes one local delivery at a time,
    as Postfix's one local process would, and opens no connection that no local
    process will ever take (the deliveries sent on it would wait for ipc_timeout)."""
    inst: Instance = new_instance(maildir=True)
    master_cf = inst.config_dir / "master.cf"
    text, n = re.subn(r"(?m)^(local\s+unix(?:\s+\S+){4}\s+)-(\s+local)", r"\g<1>1\2",
                      master_cf.read_text())
    assert n == 1
    master_cf.write_text(text)
    inst.write("etc/aliases", f"postmaster: {ME}\n" + "".join(f"a{i}: {ME}\n" for i in range(4)))
    inst.tool("newaliases", check=True)
    inst.start()
    queue_id = inst.send(f"{ME}@localhost", [f"a{i}@localhost" for i in range(4)],
                         b"Subject: four\r\n\r\nx\r\n")
    inst.wait_log(rf"{queue_id}: removed", timeout=40)
    sent = re.findall(rf"{queue_id}: to=<[^>]*>, orig_to=<a\d@localhost>, .*status=sent",
                      inst.log())
    assert len(sent) == 4
