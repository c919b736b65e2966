"""Outbound delivery: the smtp agent against real SMTP peers on loopback.

Peers: Postfix's smtp-sink (Debian's postfix package; it dumps each transaction
with its envelope as X-Mail-Args / X-Rcpt-Args headers, and answers 4xx or 5xx
at chosen commands) and an aiosmtpd server run by the test.
"""

from __future__ import annotations

import email
import email.policy
import os
import re
import shutil
import socket
import ssl
import subprocess
import tempfile
import weakref
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from conftest import require_tool
from harness import IS_ROOT, ME, Instance, free_port, wait_until

from pymailsys.config.mynetworks import local_interfaces

LOCAL = f"{ME}@localhost"
BODY_8BIT = "Grüße aus Köln\r\n.leading dot\r\n".encode()


class Sink:
    """A running smtp-sink on 127.0.0.1:port that dumps every transaction to a file."""

    def __init__(self, port: int, *options: str) -> None:
        self.port = port
        self.dir = Path(tempfile.mkdtemp(prefix="sink-"))
        weakref.finalize(self, shutil.rmtree, self.dir, ignore_errors=True)  # and its dumps
        os.chmod(self.dir, 0o1777)
        self.options = options
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, *options: str) -> None:
        argv = [require_tool("/usr/sbin/smtp-sink")]
        if IS_ROOT:
            argv += ["-u", "nobody"]
        argv += [*(options or self.options), "-d", f"{self.dir}/%H%M%S.",
                 f"127.0.0.1:{self.port}", "10"]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
        wait_until(self._listening, 10, what="smtp-sink listening")

    def _listening(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
                return s.recv(100)[:3].isdigit()  # a greeting (220, or a refusal)
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def dumps(self) -> list[bytes]:
        return [p.read_bytes() for p in sorted(self.dir.iterdir()) if p.is_file()]

    def wait_dumps(self, count: int) -> list[bytes]:
        """The dumps once there are count of them; call it after the log says the
        deliveries were sent (smtp-sink fills a dump while the transaction runs)."""
        def enough() -> list[bytes]:
            d = self.dumps()
            return d if len(d) >= count else []
        return wait_until(enough, 30, what=f"{count} transactions at smtp-sink")


@pytest.fixture
def sink() -> Iterator[Sink]:
    s = Sink(free_port())
    yield s
    s.stop()


def relay_to(inst: Instance, port: int, **settings: str) -> None:
    inst.set(relayhost=f"[127.0.0.1]:{port}", **settings)


def test_relayhost_envelope_8bit_and_recipients_in_one_transaction(new_instance, sink) -> None:  # type: ignore[no-untyped-def]
    sink.start()
    inst: Instance = new_instance()
    relay_to(inst, sink.port)
    inst.start()
    rcpts = ["a@remote.example", "b@remote.example", "c@other.example"]
    message = (b"From: Alice <alice@example.org>\r\nSubject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\n"
               b"X-Raw: \xc3\xa4\r\n\r\n" + BODY_8BIT)
    with inst.smtp() as client:
        client.ehlo()
        client.sendmail("alice@example.org", rcpts, message, mail_options=["BODY=8BITMIME"])
    for r in rcpts:
        inst.wait_log(rf"postfix/smtp\[\d+\]: \w+: to=<{re.escape(r)}>, "
                      rf"relay=127\.0\.0\.1\[127\.0\.0\.1\]:{sink.port}, delay=[\d.]+, "
                      rf"delays=[\d.]+/[\d.]+/[\d.]+/[\d.]+, dsn=2\.0\.0, status=sent \(250 2\.0\.0 Ok\)")
    (dump,) = sink.wait_dumps(1)
    head, _, body = dump.partition(b"\n\n")
    assert re.search(rb"^X-Mail-Args: <alice@example.org> BODY=8BITMIME$", head, re.M)
    assert re.findall(rb"^X-Rcpt-Args: <([^>]*)>", head, re.M) == [r.encode() for r in rcpts]
    assert b"\nX-Raw: \xc3\xa4\n" in head  # 8-bit header intact
    # the peer undoes dot-stuffing and ends its dump with an empty line
    assert body == BODY_8BIT.replace(b"\r\n", b"\n") + b"\n"
    wait_until(inst.queue_empty, 30, what="an empty queue")


def test_helo_fallback_without_esmtp(new_instance, sink) -> None:  # type: ignore[no-untyped-def]
    sink.start("-f", "EHLO")  # EHLO rejected with 500; -f also turns PIPELINING off
    inst: Instance = new_instance()
    relay_to(inst, sink.port)
    inst.start()
    with inst.smtp() as client:
        client.ehlo()
        client.sendmail("alice@example.org", ["a@remote.example", "b@remote.example"],
                        b"Subject: plain\r\n\r\n" + BODY_8BIT, mail_options=["BODY=8BITMIME"])
    inst.wait_log(r"to=<b@remote\.example>, .*status=sent")
    (dump,) = sink.wait_dumps(1)
    head, _, body = dump.partition(b"\n\n")
    assert b"\nX-Client-Proto: SMTP\n" in head  # HELO, not EHLO
    assert re.search(rb"^X-Mail-Args: <alice@example.org>$", head, re.M)  # no ESMTP parameters
    assert re.findall(rb"^X-Rcpt-Args: <([^>]*)>", head, re.M) == [b"a@remote.example",
                                                                   b"b@remote.example"]
    assert body == BODY_8BIT.replace(b"\r\n", b"\n") + b"\n"


def test_dsn_parameters_are_passed_on(new_instance, sink) -> None:  # type: ignore[no-untyped-def]
    sink.start()  # smtp-sink offers DSN
    inst: Instance = new_instance()
    relay_to(inst, sink.port)
    inst.start()
    inst.tool("sendmail", "-f", "alice@example.org", "-N", "success,failure",
              "r@remote.example", input="Subject: dsn\n\nx\n", check=True)
    inst.wait_log(r"to=<r@remote\.example>, .*status=sent")
    (dump,) = sink.wait_dumps(1)
    assert re.search(rb"^X-Rcpt-Args: <r@remote.example> ORCPT=rfc822;r@remote.example "
                     rb"NOTIFY=SUCCESS,FAILURE$", dump, re.M)
    with inst.smtp() as client:
        client.ehlo()
        client.sendmail("alice@example.org", ["s@remote.example"], b"Subject: ret\r\n\r\nx\r\n",
                        mail_options=["RET=HDRS", "ENVID=env1"])
    inst.wait_log(r"to=<s@remote\.example>, .*status=sent")
    (dump,) = [d for d in sink.wait_dumps(2) if b"<s@remote.example>" in d]
    assert re.search(rb"^X-Mail-Args: <alice@example.org> ENVID=env1 RET=HDRS$", dump, re.M)


def test_success_notice_says_delivery_via_the_relay(new_instance, sink) -> None:  # type: ignore[no-untyped-def]
    """NOTIFY=SUCCESS relayed to a server without DSN: as Debian's Postfix 3.7, the notice
    says ``delivery via HOST[ADDR]:PORT: REPLY`` in its text (smtp_rcpt_done's trace),
    Action: relayed, the server as Remote-MTA and its reply as the Diagnostic-Code; the
    log line keeps the reply."""
    sink.start("-N")  # no DSN: the success notice is ours to send
    inst: Instance = new_instance()
    relay_to(inst, sink.port)
    inst.start()
    with inst.smtp() as client:
        client.ehlo()
        client.mail(LOCAL)
        client.rcpt("r@remote.example", ["NOTIFY=SUCCESS"])
        client.rcpt("s@remote.example")  # in the same transaction, not in the notice
        client.data(b"Subject: success\r\n\r\nx\r\n")
    relay = f"127.0.0.1[127.0.0.1]:{sink.port}"
    inst.wait_log(rf"to=<r@remote\.example>, relay={re.escape(relay)}, .*status=sent "
                  r"\(250 2\.0\.0 Ok\)$")
    (notice,) = inst.wait_maildir(1)
    assert f"\n<r@remote.example>: delivery via {relay}: 250 2.0.0 Ok\n".encode() in notice
    assert b"s@remote.example" not in notice
    assert (b"\nAction: relayed\nStatus: 2.0.0\nRemote-MTA: dns; 127.0.0.1\n"
            b"Diagnostic-Code: smtp; 250 2.0.0 Ok\n") in notice, notice


def test_large_message_streams_intact(new_instance, sink) -> None:  # type: ignore[no-untyped-def]
    """Read from the queue file in chunks: lines split between chunks, and dots at the
    start of lines anywhere, arrive as they were sent."""
    sink.start()
    inst: Instance = new_instance()
    relay_to(inst, sink.port)
    inst.start()
    long_line = b"L" * 150_000
    body = b"".join(b".dot %d\r\n%s\r\n" % (i, b"x" * (i % 997)) for i in range(3000))
    body += long_line + b"\r\n.last\r\n"
    queue_id = inst.send("alice@example.org", "big@remote.example",
                         b"Subject: big\r\n\r\n" + body)
    inst.wait_log(rf"{queue_id}: to=<big@remote.example>, .*status=sent")
    (dump,) = sink.wait_dumps(1)
    assert dump.partition(b"\n\n")[2] == body.replace(b"\r\n", b"\n") + b"\n"


@pytest.mark.parametrize("settings, reused", [
    ({}, True),
    ({"smtp_connection_cache_on_demand": "no"}, False),
    ({"smtp_connection_cache_on_demand": "no",
      "smtp_connection_cache_destinations": "other.example, 127.0.0.1"}, True),
])
def test_cached_connection_is_reused(new_instance, sink, settings, reused) -> None:  # type: ignore[no-untyped-def]
    """A connection that delivered is kept for the next request, as Postfix: with
    smtp_connection_cache_on_demand, or for smtp_connection_cache_destinations."""
    sink.start()
    inst: Instance = new_instance()
    relay_to(inst, sink.port, smtp_connection_cache_time_limit="60s", **settings)
    inst.start()
    for i in range(3):
        queue_id = inst.send("alice@example.org", f"r{i}@remote.example",
                             f"Subject: {i}\r\n\r\nm{i}\r\n")
        use = f", conn_use={i + 1}" if i and reused else ""
        inst.wait_log(rf"{queue_id}: to=<r{i}@remote.example>, relay=127\.0\.0\.1\[127\.0\.0\.1\]:"
                      rf"{sink.port}{use}, delay=.*status=sent")
    sink.wait_dumps(3)


def test_4xx_defers_with_reason_in_mailq_then_flush_delivers(new_instance, sink) -> None:  # type: ignore[no-untyped-def]
    sink.start("-r", "RCPT")
    inst: Instance = new_instance()
    relay_to(inst, sink.port)
    inst.start()
    queue_id = inst.send("alice@example.org", "later@remote.example", b"Subject: x\r\n\r\nx\r\n")
    reason = (r"host 127\.0\.0\.1\[127\.0\.0\.1\] said: 450 4\.3\.0 Error: command failed "
              r"\(in reply to RCPT TO command\)")
    inst.wait_log(rf"{queue_id}: to=<later@remote.example>, relay=127\.0\.0\.1\[127\.0\.0\.1\]:"
                  rf"{sink.port}, .*dsn=4\.3\.0, status=deferred \({reason}\)")
    wait_until(lambda: queue_id in inst.queue_ids("deferred"), 30, what="the file in deferred/")
    listing = inst.tool("mailq", check=True).stdout
    assert queue_id in listing and "(host 127.0.0.1[127.0.0.1] said: 450 4.3.0 Error:" in listing
    sink.stop()
    sink.start()
    inst.tool("postqueue", "-f", check=True)
    inst.wait_log(rf"{queue_id}: to=<later@remote.example>, .*status=sent")
    wait_until(inst.queue_empty, 30, what="an empty queue")


@pytest.mark.parametrize("stage, command", [("RCPT", "RCPT TO"), (".", "end of DATA")])
def test_5xx_bounces_to_sender_with_a_dsn(new_instance, sink, stage, command) -> None:  # type: ignore[no-untyped-def]
    sink.start("-f", stage)
    inst: Instance = new_instance()
    relay_to(inst, sink.port)
    inst.start()
    queue_id = inst.send(LOCAL, "nobody@remote.example",
                         b"Subject: doomed\r\nMessage-ID: <d1@example.org>\r\n\r\nbody\r\n")
    inst.wait_log(rf"{queue_id}: to=<nobody@remote.example>, relay=127\.0\.0\.1\[127\.0\.0\.1\]:"
                  rf"{sink.port}, .*dsn=5\.3\.0, status=bounced \(host 127\.0\.0\.1\[127\.0\.0\.1\] "
                  rf"said: 500 5\.3\.0 Error: command failed \(in reply to {command} command\)\)")
    (dsn,) = inst.wait_maildir(1)
    msg = email.message_from_bytes(dsn, policy=email.policy.default)
    assert msg.get_content_type() == "multipart/report"
    parts = list(msg.iter_parts())
    status = parts[1]
    assert status.get_content_type() == "message/delivery-status"
    fields = status.as_string()
    assert "Final-Recipient: rfc822; nobody@remote.example" in fields
    assert "Action: failed" in fields and "Status: 5.3.0" in fields
    assert "Remote-MTA: dns; 127.0.0.1" in fields or "Diagnostic-Code" in fields
    assert b"Message-ID: <d1@example.org>" in dsn
    wait_until(inst.queue_empty, 30, what="an empty queue")


class _Recorder:
    def __init__(self) -> None:
        self.envelopes: list[tuple[str, list[str], bytes, list[str]]] = []
        self.over_tls: list[bool] = []
        self.clients: list[str] = []  # the address each message came from

    async def handle_DATA(self, server, session, envelope) -> str:  # type: ignore[no-untyped-def]
        self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos),
                               envelope.original_content, list(envelope.mail_options)))
        self.over_tls.append(session.ssl is not None)
        self.clients.append(session.peer[0])
        return "250 2.0.0 Ok: queued as AIOSMTPD1"


@pytest.fixture
def aiosmtpd_peer() -> Iterator[tuple[Controller, _Recorder]]:
    recorder = _Recorder()
    controller = Controller(recorder, hostname="127.0.0.1", port=free_port(),
                            server_hostname="peer.example", data_size_limit=100_000)
    controller.start()
    yield controller, recorder
    controller.stop()


def test_aiosmtpd_peer_and_size_limit(new_instance, aiosmtpd_peer) -> None:  # type: ignore[no-untyped-def]
    controller, recorder = aiosmtpd_peer
    inst: Instance = new_instance()
    inst.set(transport_maps=f"inline:{{ big.example=relay:[127.0.0.1]:{controller.port}, "
                            f"small.example=smtp:[127.0.0.1]:{controller.port} }}")
    inst.start()
    queue_id = inst.send(LOCAL, ["x@small.example", "y@small.example"],
                         b"Subject: hi\r\n\r\nsmall\r\n")
    inst.wait_log(rf"postfix/smtp\[\d+\]: {queue_id}: to=<x@small.example>, relay=127\.0\.0\.1"
                  rf"\[127\.0\.0\.1\]:{controller.port}, .*status=sent \(250 2\.0\.0 Ok: "
                  rf"queued as AIOSMTPD1\)")
    (sender, rcpts, content, options) = recorder.envelopes[0]
    assert (sender, rcpts) == (LOCAL, ["x@small.example", "y@small.example"])
    assert content.endswith(b"\r\n\r\nsmall\r\n") and b"Subject: hi\r\n" in content
    assert any(o.startswith("SIZE=") for o in options)
    big = b"Subject: big\r\n\r\n" + (b"x" * 998 + b"\r\n") * 120
    queue_id = inst.send(LOCAL, "z@big.example", big)
    inst.wait_log(rf"{queue_id}: to=<z@big.example>, relay=127\.0\.0\.1\[127\.0\.0\.1\]:"
                  rf"{controller.port}, .*dsn=5\.3\.4, status=bounced \(message size \d+ exceeds "
                  rf"size limit 100000 of server 127\.0\.0\.1\[127\.0\.0\.1\]\)")
    assert len(recorder.envelopes) == 1


def test_the_only_address_of_inet_interfaces_is_the_source(new_instance, aiosmtpd_peer) -> None:  # type: ignore[no-untyped-def]
    """inet_interfaces with one non-loopback IPv4 address: the smtp client connects from
    it, as Postfix's (a loopback address, or several, leave the choice to the kernel)."""
    own = [str(i.ip) for i in local_interfaces() if i.version == 4 and not i.ip.is_loopback]
    if not own:
        pytest.skip("no non-loopback IPv4 address on this machine")
    controller, recorder = aiosmtpd_peer
    inst: Instance = new_instance()
    inst.set(inet_interfaces=own[0], mynetworks="127.0.0.0/8",
             transport_maps=f"inline:{{ x.example=smtp:[127.0.0.1]:{controller.port} }}")
    inst.start()
    queue_id = inst.send(LOCAL, "u@x.example", b"Subject: source\r\n\r\nbody\r\n")
    inst.wait_log(rf"{queue_id}: to=<u@x\.example>, .*status=sent")
    inst.set(inet_interfaces=f"127.0.0.1, {own[0]}")
    inst.postfix("reload")
    wait_until(lambda: "reload -- version" in inst.log(), what="the reload")
    queue_id = inst.send(LOCAL, "v@x.example", b"Subject: source\r\n\r\nbody\r\n")
    inst.wait_log(rf"{queue_id}: to=<v@x\.example>, .*status=sent")
    assert recorder.clients == [own[0], "127.0.0.1"]


def test_smtp_bind_address_is_the_source(new_instance, aiosmtpd_peer) -> None:  # type: ignore[no-untyped-def]
    """smtp_bind_address: the smtp client connects from it; one it cannot bind, with
    smtp_bind_address_enforce, defers (4.4.0 "server configuration error"), and a value
    that is not an IPv4 address stops the smtp service, as Postfix's smtp_connect_addr."""
    controller, recorder = aiosmtpd_peer
    inst: Instance = new_instance()
    inst.set(smtp_bind_address="[127.0.0.2]",
             transport_maps=f"inline:{{ x.example=smtp:[127.0.0.1]:{controller.port} }}")
    inst.start()
    queue_id = inst.send(LOCAL, "u@x.example", b"Subject: bind\r\n\r\nbody\r\n")
    inst.wait_log(rf"{queue_id}: to=<u@x\.example>, .*status=sent")
    assert recorder.clients == ["127.0.0.2"]
    inst.set(smtp_bind_address="192.0.2.1", smtp_bind_address_enforce="yes")
    inst.postfix("reload")
    wait_until(lambda: "reload -- version" in inst.log(), what="the reload")
    queue_id = inst.send(LOCAL, "v@x.example", b"Subject: bind\r\n\r\nbody\r\n")
    inst.wait_log(r"warning: smtp_connect_addr: bind 192\.0\.2\.1: ")
    inst.wait_log(rf"{queue_id}: to=<v@x\.example>, relay=none, .*dsn=4\.4\.0, "
                  rf"status=deferred \(server configuration error\)")
    inst.set(smtp_bind_address="::1", smtp_bind_address_enforce="no")
    inst.postfix("reload")
    wait_until(lambda: inst.log().count("reload -- version") >= 2, what="the second reload")
    inst.send(LOCAL, "w@x.example", b"Subject: bind\r\n\r\nbody\r\n")
    inst.wait_log(r"fatal: bad smtp_bind_address parameter: ::1")
    assert len(recorder.clients) == 1


@pytest.mark.parametrize("settings, fatal", [
    ({"smtp_tcp_port": "nosuchservice"}, r"smtp_tcp_port: unknown service: nosuchservice/tcp"),
    ({"smtp_tls_policy_maps": "inline:{ x.example = encrypt }"},
     r"smtp_tls_policy_maps: missing '=' after attribute name"),
])
def test_bad_client_settings_are_fatal_not_a_traceback(new_instance, settings, fatal) -> None:  # type: ignore[no-untyped-def]
    """smtp_tcp_port that is neither a number nor a service name, or a
    smtp_tls_policy_maps table that cannot be opened, stops the smtp service with a clear
    fatal line, as Postfix's find_inet_port and maps_create; the mail waits in the queue."""
    inst: Instance = new_instance()
    inst.set(relayhost="[127.0.0.1]", **settings)
    inst.start()
    queue_id = inst.send(LOCAL, "x@remote.example", b"Subject: fatal\r\n\r\nbody\r\n")
    inst.wait_log(r"postfix/smtp\[\d+\]: fatal: " + fatal)
    assert "Traceback" not in inst.log()
    assert queue_id in inst.tool("postqueue", "-p").stdout


def test_unreachable_relayhost_defers(new_instance) -> None:  # type: ignore[no-untyped-def]
    inst: Instance = new_instance()
    port = free_port()  # nothing listens there
    relay_to(inst, port)
    inst.start()
    queue_id = inst.send("alice@example.org", "x@remote.example", b"Subject: x\r\n\r\nx\r\n")
    inst.wait_log(rf"{queue_id}: to=<x@remote.example>, relay=none, .*dsn=4\.4\.1, "
                  rf"status=deferred \(connect to 127\.0\.0\.1\[127\.0\.0\.1\]:{port}: "
                  rf"Connection refused\)")


def test_error_and_discard_transports(new_instance) -> None:  # type: ignore[no-untyped-def]
    """As Debian's Postfix 3.7's error(8): ``error:X.Y.Z text`` bounces with that code,
    and with a 4.X.Y code too, as 5.0.0 with bounce_append's warning (it is never a
    deferral); ``retry:`` with a 5.X.Y code defers as 4.0.0, with defer_append's."""
    inst: Instance = new_instance()
    inst.set(transport_maps="inline:{ {gone.example=error:5.1.2 no such domain}, "
                            "void.example=discard:, {later.example=error:4.3.2 not now}, "
                            "{soon.example=retry:5.7.1 try again} }",
             smtpd_reject_unlisted_recipient="no")  # else refused at RCPT, as Postfix's smtpd
    inst.start()
    queue_id = inst.send("alice@example.org",
                         ["a@gone.example", "b@void.example", "c@later.example",
                          "d@soon.example"],
                         b"Subject: x\r\n\r\nx\r\n")
    inst.wait_log(rf"{queue_id}: to=<a@gone.example>, relay=none, .*dsn=5\.1\.2, "
                  rf"status=bounced \(no such domain\)")
    inst.wait_log(rf"{queue_id}: to=<b@void.example>, relay=none, .*dsn=2\.0\.0, "
                  rf"status=sent \(void.example\)")
    inst.wait_log(r'postfix/qmgr\[\d+\]: warning: bounce_append: ignoring dsn code "4\.3\.2"$')
    inst.wait_log(rf"{queue_id}: to=<c@later.example>, relay=none, .*dsn=5\.0\.0, "
                  rf"status=bounced \(not now\)")
    inst.wait_log(r'postfix/qmgr\[\d+\]: warning: defer_append: ignoring dsn code "5\.7\.1"$')
    inst.wait_log(rf"{queue_id}: to=<d@soon.example>, relay=none, .*dsn=4\.0\.0, "
                  rf"status=deferred \(try again\)")


def test_sender_dependent_relayhost(new_instance, sink) -> None:  # type: ignore[no-untyped-def]
    sink.start()
    inst: Instance = new_instance()
    dead = free_port()
    inst.set(relayhost=f"[127.0.0.1]:{dead}",
             sender_dependent_relayhost_maps=f"inline:{{ @special.example=[127.0.0.1]:{sink.port} }}")
    inst.start()
    queue_id = inst.send("bob@special.example", "x@remote.example", b"Subject: x\r\n\r\nx\r\n")
    inst.wait_log(rf"{queue_id}: to=<x@remote.example>, relay=127\.0\.0\.1\[127\.0\.0\.1\]:"
                  rf"{sink.port}, .*status=sent")
    other = inst.send("carol@example.org", "y@remote.example", b"Subject: y\r\n\r\ny\r\n")
    inst.wait_log(rf"{other}: to=<y@remote.example>, relay=none, .*status=deferred "
                  rf"\(connect to 127\.0\.0\.1\[127\.0\.0\.1\]:{dead}: Connection refused\)")


def test_tls_encrypt_crosses_in_tls_and_waits_for_a_peer_without_starttls(  # type: ignore[no-untyped-def]
        new_instance, aiosmtpd_peer, tmp_path) -> None:
    plain, plain_recorder = aiosmtpd_peer
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                    str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=peer.example"],
                   check=True, capture_output=True)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(cert), str(key))
    recorder = _Recorder()
    tls_peer = Controller(recorder, hostname="127.0.0.1", port=free_port(),
                          server_hostname="peer.example", tls_context=context)
    tls_peer.start()
    try:
        inst: Instance = new_instance()
        inst.set(smtp_tls_security_level="encrypt", smtp_tls_loglevel="1",
                 transport_maps=f"inline:{{ tls.example=smtp:[127.0.0.1]:{tls_peer.port}, "
                                f"plain.example=smtp:[127.0.0.1]:{plain.port} }}")
        inst.start()
        queue_id = inst.send(LOCAL, ["x@tls.example", "y@plain.example"],
                             b"Subject: secret\r\n\r\nfor your eyes only\r\n")
        inst.wait_log(rf"postfix/smtp\[\d+\]: Untrusted TLS connection established to "
                      rf"127\.0\.0\.1\[127\.0\.0\.1\]:{tls_peer.port}: TLSv1\.[23] with cipher \S+ "
                      rf"\(\d+/\d+ bits\)")
        inst.wait_log(rf"{queue_id}: to=<x@tls.example>, .*status=sent \(250 2\.0\.0 Ok")
        assert recorder.over_tls == [True]
        inst.wait_log(rf"{queue_id}: to=<y@plain.example>, relay=127\.0\.0\.1\[127\.0\.0\.1\]:"
                      rf"{plain.port}, .*dsn=4\.7\.4, "
                      rf"status=deferred \(TLS is required, but was not offered by host "
                      rf"127\.0\.0\.1\[127\.0\.0\.1\]\)")
        assert plain_recorder.envelopes == []  # nothing crossed in plaintext
    finally:
        tls_peer.stop()


# (sink options, expected status, dsn, the reason's tail) for a peer failing at one stage
STAGES = {
    "connect4": (("-r", "CONNECT"), "deferred", r"4\.3\.0",
                 r"refused to talk to me: 450 4\.3\.0 Error: command failed"),
    "connect5": (("-f", "CONNECT"), "deferred", r"4\.3\.0",  # smtp_skip_5xx_greeting
                 r"refused to talk to me: 500 5\.3\.0 Error: command failed"),
    "mail4": (("-r", "MAIL"), "deferred", r"4\.3\.0", r"\(in reply to MAIL FROM command\)"),
    "mail5": (("-f", "MAIL"), "bounced", r"5\.3\.0", r"\(in reply to MAIL FROM command\)"),
    "data4": (("-r", "DATA"), "deferred", r"4\.3\.0", r"\(in reply to DATA command\)"),
    "data5": (("-f", "DATA"), "bounced", r"5\.3\.0", r"\(in reply to DATA command\)"),
    "dot4": (("-r", "."), "deferred", r"4\.3\.0", r"\(in reply to end of DATA command\)"),
    "hangup": (("-q", "."), "deferred", r"4\.4\.2",
               r"lost connection with 127\.0\.0\.1\[127\.0\.0\.1\] while sending end of data "
               r"-- message may be sent more than once"),
}


def test_peers_failing_at_each_stage(new_instance) -> None:  # type: ignore[no-untyped-def]
    """smtp-sink answering 4xx or 5xx (or hanging up) at each stage of the session: the
    recipient is deferred or bounced with Postfix's reason and enhanced status."""
    sinks = {name: Sink(free_port(), *options) for name, (options, *_rest) in STAGES.items()}
    try:
        for s in sinks.values():
            s.start()
        inst: Instance = new_instance()
        routes = ", ".join(f"{name}.example=smtp:[127.0.0.1]:{s.port}" for name, s in sinks.items())
        inst.set(transport_maps=f"inline:{{ {routes} }}")
        inst.start()
        ids = {name: inst.send(LOCAL, f"x@{name}.example", b"Subject: stage\r\n\r\nx\r\n")
               for name in STAGES}
        for name, (_options, status, dsn, reason) in STAGES.items():
            inst.wait_log(rf"{ids[name]}: to=<x@{name}\.example>, .*dsn={dsn}, "
                          rf"status={status} \(.*{reason}\)")
    finally:
        for s in sinks.values():
            s.stop()


def test_servers_that_never_answer(new_instance) -> None:  # type: ignore[no-untyped-def]
    """Two silent peers made with plain sockets that never accept: one whose accept queue
    is full (listen(0) and one connection already waiting), so that the kernel drops our
    SYNs and the connect times out; one with room in its queue, so that the connection
    opens and the greeting never comes. Both defer with Postfix's reasons."""
    full = socket.socket()
    full.bind(("127.0.0.1", 0))
    full.listen(0)
    filler = socket.create_connection(full.getsockname())
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(5)
    try:
        full_port, silent_port = full.getsockname()[1], silent.getsockname()[1]
        inst: Instance = new_instance()
        inst.set(smtp_connect_timeout="2s", smtp_helo_timeout="2s",
                 transport_maps=f"inline:{{ full.example=smtp:[127.0.0.1]:{full_port}, "
                                f"silent.example=smtp:[127.0.0.1]:{silent_port} }}")
        inst.start()
        queue_id = inst.send(LOCAL, ["x@full.example", "y@silent.example"],
                             b"Subject: hello?\r\n\r\nx\r\n")
        inst.wait_log(rf"{queue_id}: to=<x@full\.example>, relay=none, .*dsn=4\.4\.1, "
                      rf"status=deferred \(connect to 127\.0\.0\.1\[127\.0\.0\.1\]:{full_port}: "
                      rf"Connection timed out\)")
        inst.wait_log(rf"{queue_id}: to=<y@silent\.example>, .*dsn=4\.4\.2, status=deferred "
                      rf"\(conversation with 127\.0\.0\.1\[127\.0\.0\.1\] timed out while "
                      rf"receiving the initial server greeting\)")
    finally:
        for s in (filler, full, silent):
            s.close()


def test_a_second_pymailsys_instance_as_the_peer(new_instance) -> None:  # type: ignore[no-untyped-def]
    """Relayed to another pymailsys instance, which delivers to its local maildir: the
    envelope sender arrives as Return-Path, the 8-bit body and headers intact."""
    peer: Instance = new_instance()
    peer.set(mydestination="peer.example, localhost", myhostname="peer.example")
    peer.start()
    inst: Instance = new_instance()
    relay_to(inst, peer.port)
    inst.start()
    message = b"Subject: hop\r\nX-Raw: \xc3\xa4\r\n\r\n" + BODY_8BIT
    with inst.smtp() as client:
        client.ehlo()
        client.sendmail("alice@example.org", [f"{ME}@peer.example"], message,
                        mail_options=["BODY=8BITMIME"])
    inst.wait_log(rf"to=<{ME}@peer\.example>, relay=127\.0\.0\.1\[127\.0\.0\.1\]:{peer.port}, "
                  rf".*status=sent \(250 2\.0\.0 Ok: queued as \w+\)")
    peer.wait_log(rf"to=<{ME}@peer\.example>, relay=local, .*status=sent")
    (got,) = peer.wait_maildir(1)
    head, _, body = got.partition(b"\n\n")
    assert head.startswith(b"Return-Path: <alice@example.org>\n")
    assert b"\nX-Raw: \xc3\xa4\n" in head
    assert body == BODY_8BIT.replace(b"\r\n", b"\n")


MIME_8BIT = ("Subject: mime\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=BB\n\n"
             "--BB\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n"
             "Grüße = 1 \n.dot\n--BB--\n").encode()


@pytest.mark.parametrize("disabled", [False, True])
def test_8bit_mime_to_a_server_without_8bitmime(new_instance, sink, disabled: bool) -> None:  # type: ignore[no-untyped-def]
    """As Postfix: a part declared 8bit goes quoted-printable to a server that does not
    offer 8BITMIME (the rest as it was), unless disable_mime_output_conversion = yes."""
    sink.start("-8")
    inst: Instance = new_instance()
    relay_to(inst, sink.port, disable_mime_output_conversion="yes" if disabled else "no")
    inst.start()
    with inst.smtp() as client:
        client.ehlo()
        client.sendmail("alice@example.org", ["a@remote.example"], MIME_8BIT,
                        mail_options=["BODY=8BITMIME"])
    inst.wait_log(r"to=<a@remote\.example>, .*status=sent")
    (dump,) = sink.wait_dumps(1)
    assert re.search(rb"^X-Mail-Args: <alice@example.org>$", dump, re.M)  # no BODY=
    body = dump.split(b"\nContent-Type: text/plain; charset=utf-8\n", 1)[1].rstrip(b"\n")
    if disabled:
        assert body == "Content-Transfer-Encoding: 8bit\n\nGrüße = 1 \n.dot\n--BB--".encode()
    else:
        assert body == (b"Content-Transfer-Encoding: quoted-printable\n\n"
                        b"Gr=C3=BC=C3=9Fe =3D 1=20\n.dot\n--BB--")


def test_8bit_mime_nested_too_deep_to_convert_bounces(new_instance, sink) -> None:  # type: ignore[no-untyped-def]
    sink.start("-8")
    inst: Instance = new_instance()
    relay_to(inst, sink.port, mime_nesting_limit="1")
    inst.start()
    text = "Subject: deep\nContent-Type: multipart/mixed; boundary=b0\n\n"
    for i in range(3):
        text += f"--b{i}\nContent-Type: multipart/mixed; boundary=b{i + 1}\n\n"
    with inst.smtp() as client:
        client.ehlo()
        client.sendmail("alice@example.org", ["a@remote.example"], text.encode(),
                        mail_options=["BODY=8BITMIME"])
    inst.wait_log(r"to=<a@remote\.example>, relay=127\.0\.0\.1\[127\.0\.0\.1\]:\d+, .*dsn=5\.6\.0, "
                  r"status=bounced \(MIME nesting exceeds safety limit\)")
    # smtp-sink opens a dump at MAIL FROM and removes it when the session ends without
    # the final dot: the hang-up may reach it after the bounce is logged
    wait_until(lambda: not sink.dumps(), 10, what="smtp-sink to drop the unfinished transaction")


def test_body_parameter_passed_on_as_declared(new_instance, sink) -> None:  # type: ignore[no-untyped-def]
    """BODY=7BIT goes on as BODY=7BIT, and mail without BODY= goes without one, as Postfix."""
    sink.start()
    inst: Instance = new_instance()
    relay_to(inst, sink.port)
    inst.start()
    for options in ([], ["BODY=7BIT"]):
        with inst.smtp() as client:
            client.ehlo()
            client.sendmail("alice@example.org", ["a@remote.example"], b"Subject: s\r\n\r\nx\r\n",
                            mail_options=options)
    inst.wait_log(r"to=<a@remote\.example>, .*status=sent", count=2)
    args = sorted(re.search(rb"^X-Mail-Args: (.*)$", d, re.M).group(1)  # type: ignore[union-attr]
                  for d in sink.wait_dumps(2))
    assert args == [b"<alice@example.org>", b"<alice@example.org> BODY=7BIT"]


def _mail_args(inst: Instance, sink: Sink, sent: list[tuple[list[str], bytes]]) -> list[bytes]:
    """The X-Mail-Args smtp-sink saw for each message sent in turn (BODY= as relayed)."""
    args = []
    seen = sink.dumps()
    for i, (options, message) in enumerate(sent):
        with inst.smtp() as client:
            client.ehlo()
            client.sendmail("alice@example.org", ["a@remote.example"],
                            message.replace(b"\n", b"\r\n"), mail_options=options)
        inst.wait_log(r"to=<a@remote\.example>, .*status=sent", count=i + 1)
        dumps = sink.wait_dumps(len(seen) + 1)
        [dump] = [d for d in dumps if d not in seen]  # smtp-sink names dumps by the second
        seen = dumps
        args.append(re.search(rb"^X-Mail-Args: (.*)$", dump, re.M).group(1))  # type: ignore[union-attr]
    return args


def test_detect_8bit_encoding_header(new_instance, sink) -> None:  # type: ignore[no-untyped-def]
    """As Debian's Postfix 3.7's cleanup (postcat shows its encoding=8bit): a
    Content-Transfer-Encoding: 8bit or binary header (the whole value, any case) makes the
    message 8-bit whatever BODY= said, so it is relayed with BODY=8BITMIME; not with
    detect_8bit_encoding_header = no. Headers of MIME parts count too, whether or not
    cleanup follows the MIME structure for header checks."""
    sink.start()
    primary = b"Subject: s\nContent-Transfer-Encoding: %s\n\nx\n"
    part = (b"Subject: p\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=BB\n\n"
            b"--BB\nContent-Transfer-Encoding: binary\n\nx\n--BB--\n")
    sent = [(["BODY=7BIT"], primary % b"8bit"), ([], primary % b"8BIT"),
            (["BODY=7BIT"], primary % b"8bit (comment)"), (["BODY=7BIT"], part)]
    expected = [b"<alice@example.org> BODY=8BITMIME", b"<alice@example.org> BODY=8BITMIME",
                b"<alice@example.org> BODY=7BIT", b"<alice@example.org> BODY=8BITMIME"]
    inst: Instance = new_instance()
    relay_to(inst, sink.port)
    inst.start()
    assert _mail_args(inst, sink, sent) == expected
    inst.stop()
    inst = new_instance()
    never = "regexp:" + str(inst.write("etc/header_checks", "/^X-Never:/ WARN\n"))
    relay_to(inst, sink.port, detect_8bit_encoding_header="no", header_checks=never)
    inst.start()
    assert _mail_args(inst, sink, [(["BODY=7BIT"], primary % b"8bit"), (["BODY=7BIT"], part)]
                      ) == [b"<alice@example.org> BODY=7BIT"] * 2
    inst.stop()
    inst = new_instance()
    never = "regexp:" + str(inst.write("etc/header_checks", "/^X-Never:/ WARN\n"))
    relay_to(inst, sink.port, header_checks=never)
    inst.start()
    assert _mail_args(inst, sink, [(["BODY=7BIT"], part)]) == [b"<alice@example.org> BODY=8BITMIME"]
