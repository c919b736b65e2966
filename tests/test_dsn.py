"""Delivery status notifications end to end (RFC 3461/3464): a real instance, real SMTP
peers (Postfix's smtp-sink, answering 4xx or 5xx where told, with or without DSN), and
the notices read back from the Maildir with Python's email package."""

from __future__ import annotations

import email
import email.message
import email.policy
import re
from collections.abc import Iterator

import pytest
from harness import ME, Instance, free_port, wait_until
from test_e2e_outbound import Sink

LOCAL = f"{ME}@localhost"
ORIGINAL = b"Subject: the original\r\nMessage-ID: <orig-1@example.org>\r\n\r\nthe body\r\n"


@pytest.fixture
def sink() -> Iterator[Sink]:
    s = Sink(free_port())
    yield s
    s.stop()


class Report:
    """A notification as a user's mail reader sees it."""

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self.msg = email.message_from_bytes(raw, policy=email.policy.default)
        assert self.msg.get_content_type() == "multipart/report"
        assert self.msg.get_param("report-type") == "delivery-status"
        self.parts = list(self.msg.iter_parts())
        assert self.parts[1].get_content_type() == "message/delivery-status"
        blocks = self.parts[1].get_payload()
        assert isinstance(blocks, list)
        # the parser makes each header block of a delivery-status part a message
        messages = [b for b in blocks if isinstance(b, email.message.EmailMessage)]
        assert len(messages) == len(blocks)
        self.per_message = messages[0]
        self.recipients: list[email.message.EmailMessage] = messages[1:]

    @property
    def subject(self) -> str:
        return str(self.msg["Subject"])

    @property
    def text(self) -> str:
        return str(self.parts[0].get_content())

    @property
    def returned(self) -> email.message.MIMEPart:
        return self.parts[2]


def notices(inst: Instance, count: int) -> list[Report]:
    """The first count Maildir messages that are notifications (sender <>)."""
    def found() -> list[bytes]:
        msgs = [m for m in inst.maildir_messages() if m.startswith(b"Return-Path: <>\n")
                or m.startswith(b"Return-Path: <double-bounce@")]
        return msgs if len(msgs) >= count else []
    return [Report(m) for m in wait_until(found, 60, what=f"{count} notices")]


def send(inst: Instance, sender: str, rcpt: str, mail_options: tuple[str, ...] = (),
         rcpt_options: tuple[str, ...] = (), message: bytes = ORIGINAL) -> str:
    with inst.smtp() as client:
        client.ehlo()
        assert client.has_extn("dsn")
        code, _ = client.mail(sender, list(mail_options))
        assert code == 250
        code, _ = client.rcpt(rcpt, list(rcpt_options))
        assert code == 250
        code, text = client.data(message)
        assert code == 250
    m = re.search(rb"queued as (\w+)", text)
    assert m
    return m.group(1).decode()


@pytest.mark.parametrize("stage, command", [("RCPT", "RCPT TO"), (".", "end of DATA")])
def test_5xx_from_the_peer_returns_a_dsn_with_orcpt_envid_and_the_reply(
        new_instance, sink, stage, command) -> None:  # type: ignore[no-untyped-def]
    sink.start("-f", stage)
    inst: Instance = new_instance()
    inst.set(relayhost=f"[127.0.0.1]:{sink.port}")
    inst.start()
    queue_id = send(inst, LOCAL, "nobody@remote.example", ("ENVID=env+2B1", "RET=FULL"),
                    ("NOTIFY=FAILURE", "ORCPT=rfc822;Someone+2Bx@remote.example"))
    inst.wait_log(rf"{queue_id}: sender non-delivery notification: \w+")
    (dsn,) = notices(inst, 1)
    assert dsn.subject == "Undelivered Mail Returned to Sender"
    assert str(dsn.msg["From"]).startswith("Mail Delivery System <MAILER-DAEMON@")
    assert "<nobody@remote.example>: host 127.0.0.1[127.0.0.1] said: 500 5.3.0" in dsn.text
    assert dsn.per_message["Original-Envelope-Id"] == "env+1"
    assert dsn.per_message["X-Postfix-Queue-ID"] == queue_id
    assert dsn.per_message["X-Postfix-Sender"] == f"rfc822; {LOCAL}"
    assert dsn.per_message["Reporting-MTA"].startswith("dns; ")
    assert dsn.per_message["Arrival-Date"]
    (rcpt,) = dsn.recipients
    assert rcpt["Final-Recipient"] == "rfc822; nobody@remote.example"
    assert rcpt["Original-Recipient"] == "rfc822;Someone+x@remote.example"
    assert rcpt["Action"] == "failed" and rcpt["Status"] == "5.3.0"
    assert rcpt["Remote-MTA"] == "dns; 127.0.0.1"
    assert rcpt["Diagnostic-Code"] == "smtp; 500 5.3.0 Error: command failed"
    assert dsn.returned.get_content_type() == "message/rfc822"
    assert b"Message-ID: <orig-1@example.org>" in dsn.raw and b"\nthe body\n" in dsn.raw
    wait_until(inst.queue_empty, 30, what="an empty queue")


def test_notify_never_gets_nothing_and_ret_hdrs_gets_headers(new_instance, sink) -> None:  # type: ignore[no-untyped-def]
    sink.start("-f", "RCPT")
    inst: Instance = new_instance()
    inst.set(relayhost=f"[127.0.0.1]:{sink.port}")
    inst.start()
    never = send(inst, LOCAL, "never@remote.example", rcpt_options=("NOTIFY=NEVER",))
    inst.wait_log(rf"{never}: to=<never@remote\.example>, .*status=bounced")
    inst.wait_log(rf"{never}: removed")
    hdrs = send(inst, LOCAL, "hdrs@remote.example", ("RET=HDRS",))
    inst.wait_log(rf"{hdrs}: removed")
    (dsn,) = notices(inst, 1)
    assert [r["Final-Recipient"] for r in dsn.recipients] == ["rfc822; hdrs@remote.example"]
    assert dsn.returned.get_content_type() == "text/rfc822-headers"
    assert b"Subject: the original" in dsn.raw and b"the body" not in dsn.raw
    assert f"{never}: sender non-delivery notification" not in inst.log()


def test_success_notices_delivered_relayed_and_passed_on(new_instance, sink) -> None:  # type: ignore[no-untyped-def]
    sink.start("-N")  # a peer that does not announce DSN
    dsn_sink = Sink(free_port())
    dsn_sink.start()
    try:
        inst: Instance = new_instance()
        inst.set(transport_maps=f"inline:{{ plain.example=smtp:[127.0.0.1]:{sink.port}, "
                                f"dsn.example=smtp:[127.0.0.1]:{dsn_sink.port} }}")
        inst.start()
        local = send(inst, LOCAL, LOCAL, ("ENVID=e1",), ("NOTIFY=SUCCESS",))
        inst.wait_log(rf"{local}: sender delivery status notification: \w+")
        relayed = send(inst, LOCAL, "r@plain.example", (), ("NOTIFY=SUCCESS,FAILURE",))
        inst.wait_log(rf"{relayed}: sender delivery status notification: \w+")
        passed = send(inst, LOCAL, "p@dsn.example", (), ("NOTIFY=SUCCESS",))
        inst.wait_log(rf"{passed}: removed")
        (dump,) = dsn_sink.wait_dumps(1)
        assert re.search(rb"^X-Rcpt-Args: <p@dsn.example> .*NOTIFY=SUCCESS$", dump, re.M)
        reports = notices(inst, 2)
        by_id = {r.per_message["X-Postfix-Queue-ID"]: r for r in reports}
        assert set(by_id) == {local, relayed}  # the DSN peer took the NOTIFY over
        for r in reports:
            assert r.subject == "Successful Mail Delivery Report"
            assert "Your message was successfully delivered" in r.text
            assert r.returned.get_content_type() == "text/rfc822-headers"  # RET default
        (mine,) = by_id[local].recipients
        assert mine["Final-Recipient"] == f"rfc822; {LOCAL}"
        assert mine["Action"] == "delivered" and mine["Status"] == "2.0.0"
        assert by_id[local].per_message["Original-Envelope-Id"] == "e1"
        (theirs,) = by_id[relayed].recipients
        assert theirs["Action"] == "relayed" and theirs["Remote-MTA"] == "dns; 127.0.0.1"
        assert str(theirs["Diagnostic-Code"]).startswith("smtp; 250 2.0.0")
    finally:
        dsn_sink.stop()


def test_the_null_sender_never_gets_a_notice(new_instance, sink) -> None:  # type: ignore[no-untyped-def]
    sink.start("-f", "RCPT")
    inst: Instance = new_instance()
    inst.set(relayhost=f"[127.0.0.1]:{sink.port}")
    inst.start()
    ok = send(inst, "", LOCAL, (), ("NOTIFY=SUCCESS",))
    failed = send(inst, "", "gone@remote.example", (), ("NOTIFY=FAILURE",))
    inst.wait_log(rf"{ok}: removed")
    inst.wait_log(rf"{failed}: discarding undeliverable bounce")
    inst.wait_log(rf"{failed}: removed")
    log = inst.log()
    assert "notification:" not in log
    wait_until(inst.queue_empty, 30, what="an empty queue")


def test_delay_warning_is_sent_once(new_instance, sink) -> None:  # type: ignore[no-untyped-def]
    sink.start("-r", "RCPT")  # 4xx: deferred
    inst: Instance = new_instance()
    inst.set(relayhost=f"[127.0.0.1]:{sink.port}", delay_warning_time="1s",
             maximal_queue_lifetime="2d")
    inst.start()
    queue_id = send(inst, LOCAL, "later@remote.example", ("RET=FULL",))
    warned = rf"{queue_id}: sender delay notification: \w+"
    deferred = rf"{queue_id}: to=<later@remote\.example>, .*status=deferred"

    def retry(runs: int) -> None:
        """Flush once the file is back in deferred/ (a flush before that would miss it)."""
        wait_until(lambda: queue_id in inst.queue_ids("deferred"), 30, what="deferred again")
        inst.tool("postqueue", "-f", check=True)
        inst.wait_log(deferred, count=runs)

    inst.wait_log(deferred)
    runs = 1
    while not re.search(warned, inst.log()) and runs < 30:
        runs += 1
        retry(runs)
    for _ in range(2):  # two more tries: no second warning
        runs += 1
        retry(runs)
    assert len(re.findall(warned, inst.log())) == 1
    (dsn,) = notices(inst, 1)
    assert dsn.subject == "Delayed Mail (still being retried)"
    assert "THIS IS A WARNING ONLY" in dsn.text and "until it is 2 day(s) old" in dsn.text
    (rcpt,) = dsn.recipients
    assert rcpt["Action"] == "delayed" and str(rcpt["Status"]).startswith("4.")
    assert rcpt["Will-Retry-Until"]
    assert dsn.returned.get_content_type() == "message/rfc822"  # RET=FULL asked
    assert queue_id in inst.queue_ids("deferred")


def test_postmaster_copy_and_double_bounce(new_instance, sink) -> None:  # type: ignore[no-untyped-def]
    sink.start("-f", "RCPT")
    inst: Instance = new_instance()
    inst.set(relayhost=f"[127.0.0.1]:{sink.port}", notify_classes="bounce, 2bounce",
             bounce_notice_recipient=LOCAL, **{"2bounce_notice_recipient": LOCAL})
    inst.start()
    single = send(inst, LOCAL, "a@remote.example")
    inst.wait_log(rf"{single}: sender non-delivery notification: \w+")
    inst.wait_log(rf"{single}: postmaster non-delivery notification: \w+")
    double = send(inst, "", "b@remote.example")
    inst.wait_log(rf"{double}: postmaster non-delivery notification: \w+")
    reports = notices(inst, 3)
    subjects = sorted(r.subject for r in reports)
    assert subjects == ["Postmaster Copy: Undelivered Mail", "Postmaster Copy: Undelivered Mail",
                        "Undelivered Mail Returned to Sender"]
    for r in reports:
        if r.subject.startswith("Postmaster"):
            assert r.msg["Auto-Submitted"] == "auto-generated"
            assert r.raw.startswith(b"Return-Path: <double-bounce@")
            assert "I'm sorry" not in r.text


def test_a_failed_double_bounce_is_never_bounced_again(new_instance, sink) -> None:  # type: ignore[no-untyped-def]
    sink.start("-f", "RCPT")
    inst: Instance = new_instance()
    inst.set(relayhost=f"[127.0.0.1]:{sink.port}", notify_classes="2bounce",
             **{"2bounce_notice_recipient": "postmaster@remote.example"})
    inst.start()
    queue_id = send(inst, "", "c@remote.example")
    (line,) = inst.wait_log(rf"{queue_id}: postmaster non-delivery notification: \w+")
    double = line.rsplit(" ", 1)[1]
    inst.wait_log(rf"{double}: to=<postmaster@remote\.example>, .*status=bounced")
    inst.wait_log(rf"warning: {double}: undeliverable postmaster notification discarded")
    inst.wait_log(rf"{double}: removed")
    wait_until(inst.queue_empty, 30, what="an empty queue")
    assert inst.log().count("notification: ") == 1


def test_sendmail_dsn_options_are_recorded(new_instance, sink) -> None:  # type: ignore[no-untyped-def]
    sink.start()  # announces DSN
    inst: Instance = new_instance()
    inst.set(transport_maps=f"inline:{{ remote.example=smtp:[127.0.0.1]:{sink.port} }}")
    inst.start()
    inst.tool("sendmail", "-f", LOCAL, "-N", "success", "-R", "hdrs", "-V", "env+2", LOCAL,
              input="Subject: by sendmail\n\nbody\n", check=True)
    (line,) = inst.wait_log(r"\w+: sender delivery status notification: \w+")
    (dsn,) = notices(inst, 1)
    assert dsn.per_message["Original-Envelope-Id"] == "env+2"
    assert dsn.returned.get_content_type() == "text/rfc822-headers"
    assert dsn.recipients[0]["Action"] == "delivered"
    inst.tool("sendmail", "-f", LOCAL, "-N", "delay,failure", "-R", "full", "-V", "x=y",
              "r@remote.example", input="Subject: passed on\n\nbody\n", check=True)
    inst.wait_log(r"to=<r@remote\.example>, .*status=sent")  # smtp-sink fills its dump meanwhile
    (dump,) = sink.wait_dumps(1)
    assert re.search(rb"^X-Mail-Args: <" + LOCAL.encode() + rb"> ENVID=x\+3Dy RET=FULL$",
                     dump, re.M)
    assert re.search(rb"^X-Rcpt-Args: <r@remote.example> .*NOTIFY=FAILURE,DELAY$", dump, re.M)


def test_sendmail_bs_keeps_each_recipients_notify(new_instance, sink) -> None:  # type: ignore[no-untyped-def]
    """smtpd in stand-alone mode hands its message over as a local submission: every
    recipient keeps its own NOTIFY and ORCPT, and the ENVID and RET of MAIL."""
    from test_sendmail_bs import StdioSmtp, bs_argv

    sink.start()  # announces DSN
    inst: Instance = new_instance()
    inst.set(transport_maps=f"inline:{{ remote.example=smtp:[127.0.0.1]:{sink.port} }}")
    inst.start()
    smtp = StdioSmtp(bs_argv(inst, None))
    try:
        smtp.reply()
        for line in ("EHLO client.example", f"MAIL FROM:<{LOCAL}> ENVID=bs+2B1 RET=HDRS",
                     "RCPT TO:<a@remote.example> NOTIFY=SUCCESS ORCPT=rfc822;List+2Ba@remote.example",
                     "RCPT TO:<b@remote.example> NOTIFY=NEVER", "RCPT TO:<c@remote.example>"):
            assert smtp.send(line).startswith("250")
        assert smtp.send("DATA").startswith("354")
        assert smtp.send("Subject: via -bs\r\n\r\nbody\r\n.").startswith("250")
        smtp.send("QUIT")
    finally:
        smtp.close()
    # smtp-sink fills its dump while the transaction runs: read it once all were sent
    inst.wait_log(r"to=<[abc]@remote\.example>, .*status=sent", count=3)
    (dump,) = sink.wait_dumps(1)
    assert re.search(rb"^X-Mail-Args: <" + LOCAL.encode() + rb"> ENVID=bs\+2B1 RET=HDRS$",
                     dump, re.M)
    args = re.findall(rb"^X-Rcpt-Args: <([^>]*)> ?(.*)$", dump, re.M)
    notify = {rcpt: re.search(rb"NOTIFY=(\S+)", rest) for rcpt, rest in args}
    assert {k: v.group(1) if v else None for k, v in notify.items()} == {
        b"a@remote.example": b"SUCCESS", b"b@remote.example": b"NEVER", b"c@remote.example": None}
    assert re.search(rb"^X-Rcpt-Args: <a@remote.example> ORCPT=rfc822;List\+2Ba@remote.example ",
                     dump, re.M)


@pytest.mark.parametrize("assume_final, action", [("no", "relayed"), ("yes", "delivered")])
def test_lmtp_assume_final_makes_a_success_notice_say_delivered(
        new_instance, sink, assume_final, action) -> None:  # type: ignore[no-untyped-def]
    sink.start("-L", "-N")  # an LMTP server that does not announce DSN
    inst: Instance = new_instance()
    inst.set(transport_maps=f"inline:{{ store.example=lmtp:inet:127.0.0.1:{sink.port} }}",
             lmtp_assume_final=assume_final)
    inst.start()
    queue_id = send(inst, LOCAL, "u@store.example", (), ("NOTIFY=SUCCESS",))
    inst.wait_log(rf"postfix/lmtp\[\d+\]: {queue_id}: to=<u@store\.example>, .*status=sent")
    inst.wait_log(rf"{queue_id}: sender delivery status notification: \w+")
    (report,) = notices(inst, 1)
    (rcpt,) = report.recipients
    assert rcpt["Action"] == action and str(rcpt["Status"]).startswith("2.")
    assert rcpt["Final-Recipient"] == "rfc822; u@store.example"
    # Postfix's mail_date(): the day padded with a space, the zone's name in parentheses
    assert re.search(rb"^Arrival-Date: (Mon|Tue|Wed|Thu|Fri|Sat|Sun), [ 123]\d [A-Z][a-z]{2} "
                     rb"\d{4} \d\d:\d\d:\d\d [+-]\d{4} \(\w+\)$", report.raw, re.M), report.raw
