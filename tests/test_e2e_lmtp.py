"""LMTP delivery: the lmtp service against Postfix's smtp-sink in LMTP mode (-L).

smtp-sink -L answers LHLO and gives one reply per recipient after the end of
data, over a Unix socket or TCP; it dumps each transaction with its envelope.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import tempfile
import weakref
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import require_tool
from harness import IS_ROOT, ME, Instance, free_port, wait_until

from pymailsys.queue.queue_file import read_envelope
from pymailsys.queue.spool import Spool


class LmtpSink:
    def __init__(self, listen: str) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="lmtp-sink-"))
        weakref.finalize(self, shutil.rmtree, self.dir, ignore_errors=True)  # and its dumps
        os.chmod(self.dir, 0o1777)
        self.socket = self.dir / "lmtp"
        self.listen = listen.replace("SOCKET", str(self.socket))
        argv = [require_tool("/usr/sbin/smtp-sink"), "-L"]
        if IS_ROOT:
            argv += ["-u", "nobody"]
        argv += ["-d", f"{self.dir}/dump/%H%M%S.", self.listen, "10"]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
        if self.listen.startswith("unix:"):
            wait_until(self.socket.exists, 10, what="the LMTP socket")
            os.chmod(self.socket, 0o666)  # smtp-sink made it as root; the agent is mail_owner

    def dumps(self) -> list[bytes]:
        d = self.dir / "dump"
        return [p.read_bytes() for p in sorted(d.iterdir())] if d.exists() else []

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            return s.recv(3) == b"220"
    except OSError:
        return False


@pytest.fixture
def lmtp_sink() -> Iterator[list[LmtpSink]]:
    made: list[LmtpSink] = []

    class Factory(list):
        def __call__(self, listen: str) -> LmtpSink:
            s = LmtpSink(listen)
            made.append(s)
            return s

    yield Factory()  # type: ignore[misc]
    for s in made:
        s.stop()


def test_mailbox_transport_lmtp_unix(new_instance, lmtp_sink) -> None:  # type: ignore[no-untyped-def]
    sink = lmtp_sink("unix:SOCKET")
    inst: Instance = new_instance()
    inst.set(mailbox_transport=f"lmtp:unix:{sink.socket}")
    inst.start()
    rcpt = f"{ME}@localhost"
    queue_id = inst.send("alice@example.org", rcpt, "Subject: to the store\r\n\r\nGrüße\r\n".encode())
    (line,) = inst.wait_log(rf"postfix/lmtp\[\d+\]: {queue_id}: to=<{rcpt}>, relay=\S+"
                            rf"\[{re.escape(str(sink.socket))}\], delay=.*dsn=2\.\d\.\d, status=sent")
    wait_until(sink.dumps, 10, what="the LMTP transaction")
    (dump,) = sink.dumps()
    assert b"X-Client-Proto: LMTP" in dump
    assert re.search(rb"^X-Rcpt-Args: <" + rcpt.encode() + rb">", dump, re.M)
    assert dump.rstrip(b"\n").endswith("Grüße".encode())
    wait_until(inst.queue_empty, 30, what="an empty queue")
    assert not inst.maildir_messages()  # nothing went to the local mailbox
    assert "postfix/local" not in line
    # local says it passed the recipient on, as Postfix's deliver_pass logs it
    inst.wait_log(rf"postfix/local\[\d+\]: {queue_id}: passing <{rcpt}> to transport=lmtp$")


def test_mailbox_transport_that_is_not_there_defers(new_instance) -> None:  # type: ignore[no-untyped-def]
    """A mailbox_transport with no service: deferred, logged relay=none as Postfix's
    deliver_pass logs a transport it cannot reach."""
    inst: Instance = new_instance()
    inst.set(mailbox_transport="nosuch")
    inst.start()
    rcpt = f"{ME}@localhost"
    queue_id = inst.send("alice@example.org", rcpt, b"Subject: nowhere\r\n\r\nx\r\n")
    inst.wait_log(rf"postfix/local\[\d+\]: {queue_id}: passing <{rcpt}> to transport=nosuch$")
    inst.wait_log(rf"postfix/local\[\d+\]: {queue_id}: to=<{rcpt}>, relay=none, .*dsn=4\.3\.0, "
                  r"status=deferred \(mail transport unavailable\)$")


def test_lmtp_unix_obeys_a_required_tls_level(new_instance, lmtp_sink) -> None:  # type: ignore[no-untyped-def]
    """lmtp_tls_security_level = encrypt holds over a Unix socket too: a server that does
    not offer STARTTLS gets nothing in plaintext, as Postfix's smtp_connect_local (which
    only turns "may" into "none" there)."""
    sink = lmtp_sink("unix:SOCKET")
    inst: Instance = new_instance()
    inst.set(mailbox_transport=f"lmtp:unix:{sink.socket}", lmtp_tls_security_level="encrypt")
    inst.start()
    rcpt = f"{ME}@localhost"
    queue_id = inst.send("alice@example.org", rcpt, b"Subject: secret\r\n\r\nsecret\r\n")
    inst.wait_log(rf"postfix/lmtp\[\d+\]: {queue_id}: to=<{rcpt}>, relay=\S+\[{re.escape(str(sink.socket))}\], "
                  rf".*dsn=4\.7\.4, "
                  rf"status=deferred \(TLS is required, but was not offered by host \S+"
                  rf"\[{re.escape(str(sink.socket))}\]\)")
    assert not sink.dumps()


def test_lmtp_inet_transport_several_recipients(new_instance, lmtp_sink) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    sink = lmtp_sink(f"127.0.0.1:{port}")
    wait_until(lambda: _answers(port), 10, what="smtp-sink listening")
    inst: Instance = new_instance()
    inst.set(transport_maps=f"inline:{{ store.example=lmtp:inet:127.0.0.1:{port} }}")
    inst.start()
    rcpts = ["one@store.example", "two@store.example"]
    queue_id = inst.send("alice@example.org", rcpts, b"Subject: two\r\n\r\nfor both\r\n")
    for r in rcpts:
        inst.wait_log(rf"postfix/lmtp\[\d+\]: {queue_id}: to=<{r}>, relay=127\.0\.0\.1"
                      rf"\[127\.0\.0\.1\]:{port}, .*status=sent")
    (dump,) = wait_until(sink.dumps, 10, what="the LMTP transaction")
    assert re.findall(rb"^X-Rcpt-Args: <([^>]*)>", dump, re.M) == [r.encode() for r in rcpts]


def test_an_address_local_passes_on_is_not_marked_done_by_the_other_agent(new_instance, lmtp_sink) -> None:  # type: ignore[no-untyped-def]
    """An alias of a recipient to its own mailbox (through mailbox_transport, LMTP) and
    to a command that fails for now: lmtp delivers the mailbox copy but must not mark
    the recipient done in the queue file (local passes the address without
    DEL_REQ_FLAG_SUCCESS); the command's copy is deferred, so the recipient stays in
    the queue for the next try, not lost."""
    sink = lmtp_sink("unix:SOCKET")
    inst: Instance = new_instance()
    inst.write("etc/aliases", f'postmaster: {ME}\n{ME}: \\{ME}@localhost, "|true; exit 75"\n')
    inst.tool("newaliases", check=True)
    inst.set(mailbox_transport=f"lmtp:unix:{sink.socket}")
    inst.start()
    rcpt = f"{ME}@localhost"
    queue_id = inst.send("alice@example.org", rcpt, b"Subject: two copies\r\n\r\nx\r\n")
    inst.wait_log(rf"postfix/lmtp\[\d+\]: {queue_id}: to=<{rcpt}>, .*status=sent")
    inst.wait_log(rf"postfix/local\[\d+\]: {queue_id}: to=<{rcpt}>, .*status=deferred")
    wait_until(lambda: inst.queue_ids("deferred"), 30, what="the message deferred")
    env = read_envelope(Spool(str(inst.queue_dir)).path("deferred", queue_id))
    assert [(rc.address, rc.done) for rc in env.recipients] == [(rcpt, False)]
    assert "not marking recipient" not in inst.log()
