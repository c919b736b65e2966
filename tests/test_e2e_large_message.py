"""Large messages: delivered byte for byte, bounced whole, with memory that does not grow.

A real instance takes big messages over several SMTP sessions at once; the
assertions read what a user or an operator would check: the Maildir bytes, the
returned DSN, and each daemon's peak memory (VmHWM in /proc/PID/status), which
must stay far below the content in flight, because content is streamed from
smtpd through cleanup to the queue file and from the queue file to the mailbox
in bounded chunks instead of being held whole.
"""

from __future__ import annotations

import threading

from harness import ME, Instance

MB = 1 << 20


def _vm_hwm(pid: int) -> int:
    """Peak resident memory of a process, bytes (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _peaks(inst: Instance, names: tuple[str, ...]) -> dict[str, int]:
    daemons = inst.daemons()
    return {name: max((_vm_hwm(pid) for pid in daemons.get(name, [])), default=0)
            for name in names}


def _message(n: int, size: int) -> bytes:
    """Long and short lines, a line starting with a dot and one with From, CRLF ends
    (smtplib dot-stuffs it on the wire, smtpd takes the stuffing off)."""
    head = (b"Subject: large %d\r\nMessage-ID: <large%d@example.org>\r\n\r\n" % (n, n)
            + b".leading dot\r\nFrom the middle\r\n")
    long_line = b"L" * 100_000 + b"\r\n"
    short = b"".join(b"s%d\r\n" % i for i in range(20_000))
    body = bytearray(head)
    while len(body) < size:
        body += long_line + short
    return bytes(body)


def _body(message: bytes) -> bytes:
    """The body (after the first empty line), LF line ends: what a mailbox must hold."""
    return message.replace(b"\r\n", b"\n").split(b"\n\n", 1)[1]


def test_large_messages_over_concurrent_sessions(new_instance) -> None:  # type: ignore[no-untyped-def]
    inst: Instance = new_instance(maildir=True, settings={"message_size_limit": str(40 * MB)})
    inst.start()
    inst.send(f"{ME}@localhost", f"{ME}@localhost", b"Subject: warm up\r\n\r\nhi\r\n")
    inst.wait_maildir(1)
    names = ("smtpd", "cleanup", "qmgr", "local")
    before = _peaks(inst, names)
    sessions = 4
    size = 8 * MB
    messages = [_message(n, size) for n in range(sessions)]
    barrier = threading.Barrier(sessions)
    errors: list[BaseException] = []

    def send(n: int) -> None:
        try:
            with inst.smtp(timeout=300) as client:
                client.ehlo()
                client.mail(f"{ME}@localhost")
                client.rcpt(f"{ME}@localhost")
                barrier.wait(timeout=60)
                code, text = client.data(messages[n])
                assert code == 250, text
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=send, args=(n,)) for n in range(sessions)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert not errors, errors
    got = inst.wait_maildir(1 + sessions, timeout=300)
    after = _peaks(inst, names)
    for n in range(sessions):
        (stored,) = [m for m in got if b"Subject: large %d\n" % n in m]
        # Headers were added (Received:, Date:, ...); the body is there byte for byte.
        assert b"\nMessage-ID: <large%d@example.org>\n" % n in stored
        assert _body(stored) == _body(messages[n])
    # 32 MB were in flight at once; no daemon's peak grew by more than a few buffers
    # (held whole, each message alone would have added 8 MB and more).
    for name in names:
        assert after[name] - before[name] < 12 * MB, (name, before, after)
    # qmgr reads only the envelope and the extracted records, never the content.
    assert after["qmgr"] - before["qmgr"] < 4 * MB, (before, after)


def test_ten_mb_of_base64_lines_arrive_byte_for_byte(new_instance) -> None:  # type: ignore[no-untyped-def]
    """Runs of equal-length lines (a base64 attachment, smtp-source's fixed lines) take
    the bulk paths of cleanup and local; the Maildir holds exactly what was sent."""
    import base64
    import random
    inst: Instance = new_instance(maildir=True, settings={"message_size_limit": str(40 * MB)})
    inst.start()
    blob = base64.encodebytes(random.Random(10).randbytes(7 * MB)).replace(b"\n", b"\r\n")
    message = (b"Subject: base64\r\nMIME-Version: 1.0\r\n"
               b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n"
               b"Content-Type: text/plain\r\n\r\nsee attached\r\n--b\r\n"
               b"Content-Type: application/octet-stream\r\n"
               b"Content-Transfer-Encoding: base64\r\n\r\n" + blob + b"--b--\r\n"
               + (b"X" * 78 + b"\r\n") * 12_000)
    assert len(message) > 10 * 1000 * 1000
    with inst.smtp(timeout=300) as client:
        client.sendmail(f"{ME}@localhost", [f"{ME}@localhost"], message)
    (stored,) = inst.wait_maildir(1, timeout=300)
    assert _body(stored) == _body(message)


def test_bounce_of_a_large_message_returns_it_whole(new_instance) -> None:  # type: ignore[no-untyped-def]
    inst: Instance = new_instance(maildir=True, settings={
        "message_size_limit": str(40 * MB), "bounce_size_limit": str(40 * MB)})
    inst.write("etc/aliases", f"postmaster: {ME}\nbouncer: |/bin/false\n")
    inst.tool("newaliases", check=True)
    inst.start()
    small = inst.send(f"{ME}@localhost", "bouncer@localhost", b"Subject: small\r\n\r\nx\r\n")
    inst.wait_log(rf"postfix/bounce\[\d+\]: {small}: sender non-delivery notification: \w+")
    inst.wait_maildir(1)
    before = _peaks(inst, ("bounce",))["bounce"]
    message = _message(0, 12 * MB)
    queue_id = inst.send(f"{ME}@localhost", "bouncer@localhost", message)
    inst.wait_log(rf"postfix/bounce\[\d+\]: {queue_id}: sender non-delivery notification: \w+")
    after = _peaks(inst, ("bounce",))["bounce"]
    got = inst.wait_maildir(2, timeout=300)
    (dsn,) = [m for m in got if b"Message-ID: <large0@example.org>" in m]
    assert b"\nContent-Description: Undelivered Message\nContent-Type: message/rfc822\n" in dsn
    original = dsn.split(b"Content-Type: message/rfc822\nContent-Transfer-Encoding: 8bit\n\n")[1]
    assert b"\nMessage-ID: <large0@example.org>\n" in original
    assert _body(original) == _body(message) + b"\n--" + dsn.rsplit(b"\n--", 1)[1]
    assert before and after - before < 6 * MB, (before, after)  # the 12 MB went by in chunks


def test_bounce_over_bounce_size_limit_returns_the_headers(new_instance) -> None:  # type: ignore[no-untyped-def]
    inst: Instance = new_instance(maildir=True, settings={"bounce_size_limit": "50000"})
    inst.write("etc/aliases", f"postmaster: {ME}\nbouncer: |/bin/false\n")
    inst.tool("newaliases", check=True)
    inst.start()
    message = _message(1, 200_000)
    queue_id = inst.send(f"{ME}@localhost", "bouncer@localhost", message)
    inst.wait_log(rf"postfix/bounce\[\d+\]: {queue_id}: sender non-delivery notification: \w+")
    (dsn,) = inst.wait_maildir(1, timeout=120)
    assert (b"\nContent-Description: Undelivered Message Headers\n"
            b"Content-Type: text/rfc822-headers\n") in dsn
    assert b"\nSubject: large 1\nMessage-ID: <large1@example.org>\n" in dsn
    assert b"leading dot" not in dsn and b"L" * 1000 not in dsn
