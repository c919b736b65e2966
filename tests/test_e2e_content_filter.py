"""After-queue content filtering (Postfix's FILTER_README "advanced content filter"), end to end.

One instance: ``content_filter = scan:[127.0.0.1]:P1`` in main.cf, master.cf's
``scan unix - - n - 10 smtp`` (``-o smtp_send_xforward_command=yes``: warned
as not implemented), and a re-injection smtpd on 127.0.0.1:P2 with
``-o content_filter=`` and the receive_override_options FILTER_README gives.
The test runs two real filters (aiosmtpd servers): the one on P1 adds
``X-Scanned: yes`` and re-injects the message with smtplib into P2, answering
with the re-injection's own reply; the one on P3, named by an access FILTER
action (clients from 127.0.0.2) and by a header_checks FILTER (``Subject: scan
me``), adds ``X-Scanned: other``. A recipient extension makes a filter answer
``451`` (``+busy``) or ``554`` (``+virus``) instead. As root, the same traffic
also goes through Debian's Postfix with the same configuration
(tests/postfix_peer.py), and what a user sees is compared.
"""

from __future__ import annotations

import asyncio
import re
import smtplib
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from conftest import require_tool
from harness import IS_ROOT, ME, Instance, free_port, wait_until
from postfix_peer import PostfixPeer
from pymailsys.daemons.qmgr import Route, filter_route

from pymailsys.ipc.services import split_content_filter

SENDER = f"{ME}@localhost"
OVERRIDES = "no_unknown_recipient_checks,no_header_body_checks,no_milters,no_address_mappings"


@dataclass
class Filter:
    """A content filter: tags the message, re-injects it on port ``reinject``."""

    tag: str
    reinject: int
    seen: list[tuple[str, list[str]]] = field(default_factory=list)

    async def handle_DATA(self, server, session, envelope) -> str:  # type: ignore[no-untyped-def]
        rcpts = list(envelope.rcpt_tos)
        self.seen.append((envelope.mail_from, rcpts))
        if any("+busy@" in r for r in rcpts):
            return "451 4.7.1 Scanner busy"
        if any("+virus@" in r for r in rcpts):
            return "554 5.7.1 Virus found"
        content = f"X-Scanned: {self.tag}\r\n".encode() + envelope.original_content
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, self._reinject, envelope.mail_from, rcpts,
                                          content)

    def _reinject(self, sender: str, rcpts: list[str], content: bytes) -> str:
        try:
            with smtplib.SMTP("127.0.0.1", self.reinject, timeout=30) as c:
                c.ehlo("filter.example")
                c.mail(sender)
                for rcpt in rcpts:
                    c.rcpt(rcpt)
                code, text = c.data(content)
        except (smtplib.SMTPException, OSError) as e:
            return f"451 4.3.0 re-injection failed: {e}"
        return f"{code} {text.decode()}"


class Filters:
    """The two filters (scan on p1, other on p3) re-injecting on p2, and the
    configuration that uses them, the same for pymailsys and Debian's Postfix."""

    def __init__(self) -> None:
        self.p1, self.p2, self.p3 = free_port(), free_port(), free_port()
        self.scan, self.other = Filter("yes", self.p2), Filter("other", self.p2)
        self.controllers = [
            Controller(self.scan, hostname="127.0.0.1", port=self.p1,
                       server_hostname="scan.example"),
            Controller(self.other, hostname="127.0.0.1", port=self.p3,
                       server_hostname="other.example")]
        for c in self.controllers:
            c.start()

    def stop(self) -> None:
        for c in self.controllers:
            c.stop()

    def configure(self, etc: Path, extra_master_cf: str = "") -> None:
        """main.cf settings, master.cf services and the tables, under etc."""
        (etc / "clients").write_text(f"127.0.0.2 FILTER scan:[127.0.0.1]:{self.p3}\n")
        (etc / "eod_clients").write_text(f"127.0.0.3 FILTER scan:[127.0.0.1]:{self.p3}\n")
        (etc / "header_checks").write_text(
            f"/^Subject: scan me/ FILTER scan:[127.0.0.1]:{self.p3}\n")
        with open(etc / "main.cf", "a") as f:
            f.write(f"""\
content_filter = scan:[127.0.0.1]:{self.p1}
smtpd_client_restrictions = check_client_access texthash:{etc}/clients
smtpd_end_of_data_restrictions = check_client_access texthash:{etc}/eod_clients
header_checks = regexp:{etc}/header_checks
recipient_delimiter = +
""")
        with open(etc / "master.cf", "a") as f:
            f.write(f"""\
scan      unix  -       -       n       -       10      smtp
  -o smtp_send_xforward_command=yes
127.0.0.1:{self.p2} inet n  -       n       -       -       smtpd
  -o content_filter=
  -o receive_override_options={OVERRIDES}
  -o smtpd_client_restrictions=
  -o smtpd_end_of_data_restrictions=
  -o mynetworks=127.0.0.0/8
  -o smtpd_recipient_restrictions=permit_mynetworks,reject
""" + extra_master_cf)


@dataclass
class Setup:
    inst: Instance
    f: Filters
    p4: int  # an smtpd whose content_filter names no transport


@pytest.fixture(scope="module")
def setup() -> Iterator[Setup]:
    filters = Filters()
    p4 = free_port()
    inst = Instance()
    filters.configure(inst.config_dir, f"""\
127.0.0.1:{p4} inet n  -       n       -       -       smtpd
  -o content_filter=../private/x:y
""")
    inst.start()
    yield Setup(inst, filters, p4)
    inst.cleanup()
    filters.stop()


def _delivered(inst: Instance, subject: bytes) -> bytes:
    def found() -> list[bytes]:
        return [m for m in inst.maildir_messages() if b"Subject: " + subject + b"\n" in m]
    [message] = wait_until(found, 60, what=f"delivery of {subject!r}")
    return message


def _send_from_127_0_0_2(inst: Instance, rcpt: str, subject: bytes, body: bytes = b"x\r\n",
                         source: str = "127.0.0.2") -> str:
    """Send as the client whose access entry says FILTER (at RCPT; 127.0.0.3: at the
    end of the message); the queue ID."""
    with smtplib.SMTP("127.0.0.1", inst.port, timeout=30, source_address=(source, 0)) as c:
        c.ehlo("client.example")
        c.mail(SENDER)
        assert c.rcpt(rcpt)[0] == 250
        code, text = c.data(b"Subject: " + subject + b"\r\n\r\n" + body)
    assert code == 250, text
    return text.decode().rsplit(" ", 1)[1]


def _passed_other_filter(setup: Setup, queue_id: str, subject: bytes) -> str:
    """The delivered message's headers once the FILTER actions' filter (p3) had it once."""
    setup.inst.wait_log(rf"{queue_id}: to=<{ME}@localhost>, relay=127\.0\.0\.1\[127\.0\.0\.1\]:"
                        rf"{setup.f.p3}, .*status=sent")
    headers = _header_block(_delivered(setup.inst, subject))
    assert headers.count("X-Scanned: other") == 1
    return headers


def _header_block(message: bytes) -> str:
    return message.split(b"\n\n", 1)[0].decode()


def test_content_filter_scans_and_reinjected_mail_is_delivered(setup: Setup) -> None:
    inst = setup.inst
    queue_id = inst.send(SENDER, f"{ME}@localhost", "Subject: hello\r\n\r\nclean\r\n")
    # the local recipient goes to the filter, not to local
    lines = inst.wait_log(rf"postfix/smtp\[\d+\]: {queue_id}: to=<{ME}@localhost>, "
                          rf"relay=127\.0\.0\.1\[127\.0\.0\.1\]:{setup.f.p1}, .*dsn=2\.0\.0, "
                          r"status=sent \(250 2\.0\.0 Ok: queued as ([0-9A-Za-z]+)\)")
    reinjected = re.search(r"queued as ([0-9A-Za-z]+)\)", lines[0]).group(1)  # type: ignore[union-attr]
    assert reinjected != queue_id
    inst.wait_log(rf"{reinjected}: client=localhost\[127\.0\.0\.1\]")
    inst.wait_log(rf"postfix/local\[\d+\]: {reinjected}: to=<{ME}@localhost>, relay=local, "
                  r".*status=sent \(delivered to maildir\)")
    inst.wait_log(rf"{reinjected}: removed")
    message = _delivered(inst, b"hello")
    headers = _header_block(message)
    assert headers.count("X-Scanned: yes") == 1 and "X-Scanned: other" not in headers
    received = re.findall(r"^Received: .*(?:\n[ \t].*)*", headers, re.M)
    assert len(received) == 2  # the filter's hop back in, then the client's hop
    assert received[0].startswith("Received: from filter.example (localhost [127.0.0.1])")
    assert f"id {reinjected}" in received[0] and f"id {queue_id}" in received[1]
    assert f"{queue_id}: to=<{ME}@localhost>, relay=local" not in inst.log()
    # XFORWARD is not built: the setting is named, never silently taken
    inst.wait_log(r"warning: file \S+/master\.cf: line \d+: parameter smtp_send_xforward_command "
                  "is not implemented yet: ignored")


def test_filter_4xx_defers_and_5xx_bounces(setup: Setup) -> None:
    inst = setup.inst
    busy = inst.send(SENDER, f"{ME}+busy@localhost", "Subject: busy\r\n\r\nlater\r\n")
    inst.wait_log(rf"{busy}: to=<{ME}\+busy@localhost>, relay=127\.0\.0\.1\[127\.0\.0\.1\]:"
                  rf"{setup.f.p1}, .*dsn=4\.7\.1, status=deferred \(host 127\.0\.0\.1"
                  r"\[127\.0\.0\.1\] said: 451 4\.7\.1 Scanner busy \(in reply to end of DATA "
                  r"command\)\)")
    wait_until(lambda: busy in inst.queue_ids("deferred"), 30, what="deferred queue file")
    listing = inst.tool("mailq", check=True).stdout
    assert busy in listing and "Scanner busy" in listing
    show = inst.tool("postcat", "-q", busy, check=True).stdout
    assert f"content_filter: scan:[127.0.0.1]:{setup.f.p1}\n" in show

    virus = inst.send(SENDER, f"{ME}+virus@localhost", "Subject: virus\r\n\r\nbad\r\n")
    inst.wait_log(rf"{virus}: to=<{ME}\+virus@localhost>, relay=127\.0\.0\.1\[127\.0\.0\.1\]:"
                  rf"{setup.f.p1}, .*dsn=5\.7\.1, status=bounced \(host 127\.0\.0\.1"
                  r"\[127\.0\.0\.1\] said: 554 5\.7\.1 Virus found")
    # the notice is not filtered: bounce does not send a content filter to cleanup
    notice = _delivered(inst, b"Undelivered Mail Returned to Sender")
    assert b"Virus found" in notice and b"X-Scanned" not in _header_block(notice).encode()


def test_access_filter_action_overrides_content_filter(setup: Setup) -> None:
    inst = setup.inst
    queue_id = _send_from_127_0_0_2(inst, f"{ME}@localhost", b"by access")
    inst.wait_log(r"NOQUEUE: filter: RCPT from localhost\[127\.0\.0\.2\]: <localhost\[127\.0\.0\.2\]>: Client host "
                  rf"triggers FILTER scan:\[127\.0\.0\.1\]:{setup.f.p3}; from=<{SENDER}> "
                  rf"to=<{ME}@localhost> proto=ESMTP helo=<client\.example>")
    headers = _passed_other_filter(setup, queue_id, b"by access")
    assert "X-Scanned: yes" not in headers


@pytest.mark.parametrize("size", [10, 300_000])
def test_end_of_data_filter_action(setup: Setup, size: int) -> None:
    """FILTER from smtpd_end_of_data_restrictions reaches cleanup, also when the
    content went on to cleanup before the end of the message."""
    inst = setup.inst
    subject = f"eod {size}".encode()
    body = (b"y" * 99 + b"\r\n") * (size // 101 + 1)
    queue_id = _send_from_127_0_0_2(inst, f"{ME}@localhost", subject, body, "127.0.0.3")
    inst.wait_log(r": filter: END-OF-MESSAGE from localhost\[127\.0\.0\.3\]: "
                  r"<localhost\[127\.0\.0\.3\]>: Client host triggers FILTER "
                  rf"scan:\[127\.0\.0\.1\]:{setup.f.p3}; from=<{SENDER}> to=<{ME}@localhost> "
                  r"proto=ESMTP helo=<client\.example>")
    assert "X-Scanned: yes" not in _passed_other_filter(setup, queue_id, subject)


def test_header_checks_filter_action(setup: Setup) -> None:
    inst = setup.inst
    queue_id = inst.send(SENDER, f"{ME}@localhost", "Subject: scan me\r\n\r\nplease\r\n")
    inst.wait_log(rf"{queue_id}: filter: header Subject: scan me from localhost\[127\.0\.0\.1\];"
                  rf" from=<{SENDER}> to=<{ME}@localhost> proto=ESMTP helo=<[^>]*>: "
                  rf"scan:\[127\.0\.0\.1\]:{setup.f.p3}$")
    # the re-injection smtpd has no_header_body_checks: no second FILTER, no loop
    _passed_other_filter(setup, queue_id, b"scan me")


def test_postsuper_requeue_drops_filter_actions(setup: Setup) -> None:
    """postsuper -r: pickup drops the file's L records and gives it its own
    content_filter (postsuper(1)); an access FILTER no longer applies."""
    inst = setup.inst
    queue_id = _send_from_127_0_0_2(inst, f"{ME}+busy@localhost", b"requeue me")
    inst.wait_log(rf"{queue_id}: to=<{ME}\+busy@localhost>, relay=127\.0\.0\.1\[127\.0\.0\.1\]:"
                  rf"{setup.f.p3}, .*status=deferred")
    wait_until(lambda: queue_id in inst.queue_ids("deferred"), 30, what="deferred queue file")
    show = inst.tool("postcat", "-q", queue_id, check=True).stdout
    # content_filter in the envelope, the FILTER action after the content: the last one wins
    assert re.search(rf"content_filter: scan:\[127\.0\.0\.1\]:{setup.f.p1}\n(.*\n)*\*\*\* "
                     rf"MESSAGE CONTENTS (.*\n)*\*\*\* HEADER EXTRACTED .*\n"
                     rf"content_filter: scan:\[127\.0\.0\.1\]:{setup.f.p3}\n", show), show
    inst.tool("postsuper", "-r", queue_id, check=True)
    inst.tool("postqueue", "-f", check=True)  # wakes pickup now rather than on its timer
    [line] = inst.wait_log(rf": uid=\d+ from=<{SENDER}> orig_id={queue_id}$")
    new_id = line.split(": uid=")[0].rsplit(" ", 1)[1]
    inst.wait_log(rf"{new_id}: to=<{ME}\+busy@localhost>, relay=127\.0\.0\.1\[127\.0\.0\.1\]:"
                  rf"{setup.f.p1}, .*status=deferred")
    wait_until(lambda: new_id in inst.queue_ids("deferred"), 30, what="deferred queue file")
    show = inst.tool("postcat", "-q", new_id, check=True).stdout
    assert re.findall(r"^content_filter: .*$", show, re.M) == [
        f"content_filter: scan:[127.0.0.1]:{setup.f.p1}"], show


def test_a_filter_that_names_no_transport_is_refused(setup: Setup) -> None:
    inst = setup.inst
    with smtplib.SMTP("127.0.0.1", setup.p4, timeout=30) as c:
        c.ehlo("client.example")
        c.mail(SENDER)
        assert c.rcpt(f"{ME}@localhost")[0] == 250
        assert c.data(b"Subject: nowhere\r\n\r\nx\r\n") == (
            451, b"4.3.5 Server configuration error")
    inst.wait_log(r"warning: cleanup: bad content filter from smtpd: \.\./private/x:y -- "
                  "message not accepted")


def test_filter_nexthop_and_transport_names() -> None:
    assert split_content_filter("scan:[127.0.0.1]:10025") == ("scan", "[127.0.0.1]:10025")
    assert split_content_filter("scan") == ("scan", "")
    for bad in ("", ":x", "../x:y", "a/b:c", "scan:a b", "scan:\x1b", "s" * 1001):
        assert split_content_filter(bad) is None, bad
    # Postfix's qmgr: an empty nexthop is default_filter_nexthop, the domain, myhostname
    assert filter_route("scan:", "u@example.org", "", "mx.example") == Route("scan", "example.org")
    assert filter_route("scan", "u@example.org", "[10.0.0.1]", "h") == Route("scan", "[10.0.0.1]")
    assert filter_route("scan", "postmaster", "", "mx.example") == Route("scan", "mx.example")
    assert filter_route("a/b:c", "u@x", "", "h").error.startswith("bad content filter")


class _Side:
    """What the comparison with Debian's Postfix drives: the mail system's smtpd
    port, log, commands (``-c`` its configuration) and delivered messages."""

    def __init__(self, port: int, rcpt: str, wait_log, tool, messages) -> None:  # type: ignore[no-untyped-def]
        self.port, self.rcpt = port, rcpt
        self.wait_log, self.tool, self.messages = wait_log, tool, messages

    def send(self, subject: str, rcpt: str, source: str = "127.0.0.1") -> str:
        with smtplib.SMTP("127.0.0.1", self.port, timeout=30, source_address=(source, 0)) as c:
            c.ehlo("client.example")
            c.mail("sender@example.org")
            assert c.rcpt(rcpt)[0] == 250
            code, text = c.data(f"Subject: {subject}\r\n\r\nx\r\n".encode())
        assert code == 250, text
        return text.decode().rsplit(" ", 1)[1]

    def deferred_by(self, queue_id: str, port: int) -> None:
        self.wait_log(rf"{queue_id}: to=<[^>]+>, relay=127\.0\.0\.1\[127\.0\.0\.1\]:{port}, "
                      r".*status=deferred")

    def observe(self, f: Filters) -> dict[str, object]:
        """The traffic of the tests above, as a user would see it (ports by name)."""
        name = {str(f.p1): "P1", str(f.p3): "P3"}
        local, _, domain = self.rcpt.partition("@")
        busy = f"{local}+busy@{domain}"

        def filters(queue_id: str) -> list[str]:
            """The L records, and the labels of the first four records: where L stands."""
            out = self.tool("postcat", "-e", "-q", queue_id)
            return [re.sub(r"\d+$", lambda m: name.get(m.group(), "?"), line)
                    for line in re.findall(r"^content_filter: .*$", out, re.M)
                    ] + re.findall(r"^(\w+):", out, re.M)[:4]

        seen: dict[str, object] = {}
        self.send("compare plain", self.rcpt)
        message = wait_until(lambda: [m for m in self.messages()
                                      if b"Subject: compare plain\n" in m], 60,
                             what="the filtered message")[0]
        seen["trace headers"] = re.findall(r"^(Received|X-Scanned):", _header_block(message),
                                           re.M)
        queue_id = self.send("compare requeue", busy, "127.0.0.2")
        self.deferred_by(queue_id, f.p3)
        wait_until(lambda: queue_id in self.tool("postqueue", "-p"), 30, what="the deferred message")
        listing = self.tool("postqueue", "-p").split(queue_id, 1)[1].splitlines()
        seen["mailq reason"] = listing[1].strip()
        seen["filters"] = filters(queue_id)
        self.tool("postsuper", "-r", queue_id)
        self.tool("postqueue", "-f")
        [line] = self.wait_log(rf": uid=\d+ from=<sender@example\.org> orig_id={queue_id}")
        requeued = line.split(": uid=")[0].rsplit(" ", 1)[1]
        self.deferred_by(requeued, f.p1)
        seen["filters after postsuper -r"] = filters(requeued)
        return seen


@pytest.mark.skipif(not IS_ROOT, reason="Debian's Postfix runs as root (its master)")
def test_the_same_traffic_through_debian_postfix(setup: Setup) -> None:
    """Headers, the deferral reason in mailq, the L records postcat shows before and
    after postsuper -r: the same as Debian's Postfix with the same configuration."""
    require_tool("/usr/sbin/postfix")
    inst = setup.inst
    ours = _Side(inst.port, f"{ME}@localhost", inst.wait_log,
                 lambda *args: inst.tool(*args, check=True).stdout, inst.maildir_messages
                 ).observe(setup.f)
    filters = Filters()
    peer = PostfixPeer(free_port())
    try:
        filters.configure(peer.etc)
        peer.start()

        def tool(name: str, *args: str) -> str:
            return subprocess.run([f"/usr/sbin/{name}", "-c", str(peer.etc), *args],
                                  capture_output=True, text=True, check=True,
                                  timeout=60).stdout
        theirs = _Side(peer.port, "u@remote.example", peer.wait_log, tool, peer.messages
                       ).observe(filters)
    finally:
        peer.stop()
        filters.stop()
    assert ours == theirs, (ours, theirs)
    assert ours["trace headers"] == ["Received", "X-Scanned", "Received"]
    assert ours["filters"] == ["content_filter: scan:[127.0.0.1]:P1",
                               "content_filter: scan:[127.0.0.1]:P3", "message_size",
                               "message_arrival_time", "create_time", "content_filter"]
    assert ours["filters after postsuper -r"] == ["content_filter: scan:[127.0.0.1]:P1",
                                                  "message_size", "content_filter",
                                                  "message_arrival_time", "create_time"]
