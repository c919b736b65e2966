"""Outbound delivery against servers whose replies are out of protocol: the smtp agent
reads them as Postfix's smtp(8) does (smtp_proto.c, smtp_chat.c, smtp_trouble.c).

Peers: ``scripted_smtp.ScriptedServer``, answering each command with the reply the
test chose.
"""

from __future__ import annotations

import email
import email.policy
import re
import time

from harness import ME, Instance, free_port
from scripted_smtp import HANG_UP, ScriptedServer

LOCAL = f"{ME}@localhost"
FAST = {f"smtp_{name}_timeout": "20s" for name in
        ("helo", "mail", "rcpt", "data_init", "data_xfer", "data_done", "quit")}


def route(inst: Instance, lmtp: dict[str, ScriptedServer] | None = None,
          **servers: ScriptedServer) -> None:
    """Route <name>.example to each server (by LMTP for those in ``lmtp``), with short
    timeouts."""
    maps = [f"{name}.example=smtp:[127.0.0.1]:{s.port}" for name, s in servers.items()]
    maps += [f"{name}.example=lmtp:inet:127.0.0.1:{s.port}" for name, s in (lmtp or {}).items()]
    lmtp_fast = {name.replace("smtp_", "lmtp_", 1): value for name, value in FAST.items()}
    inst.set(transport_maps=f"inline:{{ {', '.join(maps)} }}", **FAST, **lmtp_fast)


def bounce_fields(message: bytes) -> str:
    msg = email.message_from_bytes(message, policy=email.policy.default)
    (status,) = [p for p in msg.walk() if p.get_content_type() == "message/delivery-status"]
    return status.as_string()


def test_a_2xx_reply_to_data_is_a_protocol_error_not_a_delivery(new_instance) -> None:  # type: ignore[no-untyped-def]
    """A 250 to DATA (PIPELINING or not): nothing was sent, so the recipient bounces with
    Postfix's "Protocol error" and 5.5.0; never status=sent. The session is not cached:
    QUIT, not RSET."""
    no_pipelining = b"250-scripted.example\r\n250 8BITMIME\r\n"
    with ScriptedServer(data=b"250 2.0.0 I did not want it\r\n") as piped, \
            ScriptedServer(data=b"250 2.0.0 I did not want it\r\n", ehlo=no_pipelining) as plain:
        inst: Instance = new_instance()
        route(inst, piped=piped, plain=plain)
        inst.set(smtp_connection_cache_time_limit="30s")
        inst.start()
        for name, server in (("piped", piped), ("plain", plain)):
            queue_id = inst.send(LOCAL, f"x@{name}.example", b"Subject: lost?\r\n\r\nbody\r\n")
            inst.wait_log(rf"{queue_id}: to=<x@{name}\.example>, relay=127\.0\.0\.1\[127\.0\.0\.1\]"
                          rf":{server.port}, .*dsn=5\.5\.0, status=bounced \(Protocol error: host "
                          r"127\.0\.0\.1\[127\.0\.0\.1\] said: 250 2\.0\.0 I did not want it "
                          r"\(in reply to DATA command\)\)")
            assert f"{queue_id}: to=<x@{name}.example>" not in "".join(
                line for line in inst.log().splitlines() if "status=sent" in line)
            server.wait_for(b"QUIT\r\n")
            assert b"RSET\r\n" not in server.received
        bounces = inst.wait_maildir(2)
        for message in bounces:
            fields = bounce_fields(message)
            assert "Status: 5.5.0" in fields and "Action: failed" in fields
            assert "Subject: lost?" in message.decode()  # the message came back


def test_extra_replies_read_as_the_data_reply_do_not_deliver(new_instance) -> None:  # type: ignore[no-untyped-def]
    """A server that sends more replies than commands: with PIPELINING a spare 250 is
    taken as the DATA reply; the recipient bounces (Protocol error), not sent."""
    with ScriptedServer(rcpt=b"250 2.1.5 Ok\r\n250 2.0.0 extra\r\n") as server:
        inst: Instance = new_instance()
        route(inst, extra=server)
        inst.start()
        queue_id = inst.send(LOCAL, "x@extra.example", b"Subject: extra\r\n\r\nbody\r\n")
        inst.wait_log(rf"{queue_id}: to=<x@extra\.example>, .*dsn=5\.5\.0, status=bounced "
                      r"\(Protocol error: .* said: 250 2\.0\.0 extra \(in reply to DATA")


def test_reply_codes_out_of_class_are_hard_failures(new_instance) -> None:  # type: ignore[no-untyped-def]
    """699 and 199 to RCPT TO, 354 to the end of data: Postfix's status 5.5.0 (no enhanced
    status is taken from a reply whose class is not 2, 4 or 5), a bounce rather than a
    retry forever. A multi-line reply's code and status are its last line's."""
    no_data = b"554 5.5.1 Error: no valid recipients\r\n"
    with ScriptedServer(rcpt=b"699 6.9.9 weird\r\n", data=no_data) as c699, \
            ScriptedServer(rcpt=b"199 odd\r\n", data=no_data) as c199, \
            ScriptedServer(eod=b"354 more please\r\n") as eod354, \
            ScriptedServer(rcpt=b"250-5.1.1 first line\r\n550 5.1.2 last line\r\n",
                           data=no_data) as multi:
        inst: Instance = new_instance()
        route(inst, c699=c699, c199=c199, eod354=eod354, multi=multi)
        inst.start()
        expect = {
            "c699": r"host .* said: 699 6\.9\.9 weird \(in reply to RCPT TO command\)",
            "c199": r"host .* said: 199 odd \(in reply to RCPT TO command\)",
            "eod354": r"host .* said: 354 more please \(in reply to end of DATA command\)",
        }
        ids = {name: inst.send(LOCAL, f"x@{name}.example", b"Subject: odd\r\n\r\nx\r\n")
               for name in (*expect, "multi")}
        for name, reason in expect.items():
            inst.wait_log(rf"{ids[name]}: to=<x@{name}\.example>, .*dsn=5\.5\.0, "
                          rf"status=bounced \({reason}\)")
        inst.wait_log(rf"{ids['multi']}: to=<x@multi\.example>, .*dsn=5\.1\.2, status=bounced "
                      r"\(host .* said: 550 5\.1\.1 first line 5\.1\.2 last line ")
        assert "X.0.0" not in inst.log() and "dsn=6." not in inst.log()
        assert "dsn=1." not in inst.log() and "dsn=3." not in inst.log()


def test_354_after_every_recipient_refused_gets_just_a_dot(new_instance) -> None:  # type: ignore[no-untyped-def]
    """PIPELINING, every RCPT TO refused, and still 354 to DATA: the client ends the data
    with just "." (RFC 2197, as Postfix) instead of RSET into the data, and the recipient
    bounces at once, not after a timeout."""
    with ScriptedServer(rcpt=b"550 5.1.1 nope\r\n", data=b"354 go ahead anyway\r\n") as server:
        inst: Instance = new_instance()
        route(inst, dot=server)
        inst.start()
        queue_id = inst.send(LOCAL, "x@dot.example", b"Subject: dot\r\n\r\nx\r\n")
        (line,) = inst.wait_log(rf"{queue_id}: to=<x@dot\.example>, .*dsn=5\.1\.1, "
                                r"status=bounced \(host .* said: 550 5\.1\.1 nope "
                                r"\(in reply to RCPT TO command\)\)", timeout=15)
        delay = float(re.search(r" delay=([\d.]+),", line).group(1))  # type: ignore[union-attr]
        assert delay < 5, line  # the timeouts are 20s
        server.wait_for(b"QUIT\r\n", timeout=10)
        data = server.received.index(b"DATA\r\n")
        assert server.received[data + 1] == b".\r\n"
        assert b"Subject: dot\r\n" not in server.received


def test_a_bad_size_limit_is_warned_about_and_ignored(new_instance) -> None:  # type: ignore[no-untyped-def]
    """SIZE with a value that is not ASCII digits ("²", or Arabic-Indic digits that
    Python's int() would read as 12): Postfix's warning, no limit, and the mail goes."""
    def ehlo(size: str) -> bytes:
        return f"250-scripted.example\r\n250-PIPELINING\r\n250 SIZE {size}\r\n".encode()
    with ScriptedServer(ehlo=ehlo("\u00b2")) as sup, \
            ScriptedServer(ehlo=ehlo("\u0661\u0662")) as arabic:
        inst: Instance = new_instance()
        route(inst, sup=sup, arabic=arabic)
        inst.start()
        for name, server, word in (("sup", sup, "\u00b2"), ("arabic", arabic, "\u0661\u0662")):
            queue_id = inst.send(LOCAL, f"x@{name}.example",
                                 b"Subject: size\r\n\r\n" + b"more than twelve bytes\r\n" * 3)
            inst.wait_log(rf"{queue_id}: to=<x@{name}\.example>, .*dsn=2\.0\.0, status=sent "
                          r"\(250 2\.0\.0 Ok: queued as SCRIPTED\)")
            inst.wait_log(rf'warning: bad EHLO SIZE limit "{word}" from '
                          rf"127\.0\.0\.1\[127\.0\.0\.1\]:{server.port}")
            assert b"more than twelve bytes\r\n" in server.received
        assert "delivery agent error" not in inst.log()


def test_a_huge_multi_line_reply_is_kept_short(new_instance) -> None:  # type: ignore[no-untyped-def]
    """A 5xx reply of 100 lines of 4000 bytes (400 KB): as Postfix, about
    line_length_limit (2048) characters of it are kept - in the log line and the bounce's
    Diagnostic-Code - and the rest is read and skipped, with a warning."""
    huge = b"".join(b"550-5.7.1 L%03d" % i + b"x" * 3986 + b"\r\n" for i in range(99)) \
        + b"550 5.7.1 end\r\n"
    with ScriptedServer(rcpt=huge, data=b"554 5.5.1 no valid recipients\r\n") as server:
        inst: Instance = new_instance()
        route(inst, huge=server)
        inst.start()
        queue_id = inst.send(LOCAL, "x@huge.example", b"Subject: huge\r\n\r\nx\r\n")
        (line,) = inst.wait_log(rf"{queue_id}: to=<x@huge\.example>, .*dsn=5\.7\.1, "
                                r"status=bounced \(host .* said: 550 5\.7\.1 L000x")
        assert len(line) < 4096 + 300, len(line)
        assert "L000" in line and "L010" not in line
        inst.wait_log(r"warning: 127\.0\.0\.1\[127\.0\.0\.1\]:\d+: multi-line response longer "
                      r"than 2048 ")
        (bounce,) = inst.wait_maildir(1)
        fields = bounce_fields(bounce)
        assert "Status: 5.7.1" in fields
        diagnostic = fields[fields.index("Diagnostic-Code:"):]
        diagnostic = diagnostic[:diagnostic.index("\n\n") if "\n\n" in diagnostic else None]
        assert 2000 < len(diagnostic) < 4096 + 300, len(diagnostic)
        assert len(bounce) < 20000, len(bounce)


def test_replies_before_a_broken_session_still_decide(new_instance) -> None:  # type: ignore[no-untyped-def]
    """As Postfix marks each recipient as its reply comes (smtp_rcpt_fail/_done): a
    recipient refused with 5xx bounces though the session breaks later; one refused with
    421 (the server then closes) is deferred with that reply's text, not "lost
    connection"; only the recipients no reply decided get the lost connection. With
    LMTP, a recipient whose end-of-data reply was 250 is delivered (not sent again)
    when the connection breaks before the next recipient's reply."""
    def rcpt(line: bytes) -> bytes:
        return b"550 5.1.1 no such user\r\n" if line.startswith(b"RCPT TO:<gone@") \
            else b"250 2.1.5 Ok\r\n"
    lmtp_ehlo = b"250-scripted.example\r\n250 PIPELINING\r\n"
    with ScriptedServer(rcpt=rcpt, data=HANG_UP) as broken, \
            ScriptedServer(rcpt=b"421 4.3.2 Service shutting down\r\n") as closing, \
            ScriptedServer(ehlo=lmtp_ehlo, eod=b"250 2.0.0 first stored\r\n" + HANG_UP) as lmtp:
        inst: Instance = new_instance()
        route(inst, lmtp={"lmtp": lmtp}, broken=broken, closing=closing)
        inst.start()
        broken_id = inst.send(LOCAL, ["gone@broken.example", "here@broken.example"],
                              b"Subject: broken\r\n\r\nx\r\n")
        closing_id = inst.send(LOCAL, "x@closing.example", b"Subject: closing\r\n\r\nx\r\n")
        lmtp_id = inst.send(LOCAL, ["a@lmtp.example", "b@lmtp.example"],
                            b"Subject: lmtp\r\n\r\nx\r\n")
        inst.wait_log(rf"{broken_id}: to=<gone@broken\.example>, .*dsn=5\.1\.1, status=bounced "
                      r"\(host 127\.0\.0\.1\[127\.0\.0\.1\] said: 550 5\.1\.1 no such user "
                      r"\(in reply to RCPT TO command\)\)")
        inst.wait_log(rf"{broken_id}: to=<here@broken\.example>, .*dsn=4\.4\.2, status=deferred "
                      r"\(lost connection with 127\.0\.0\.1\[127\.0\.0\.1\] while sending DATA "
                      r"command\)")
        inst.wait_log(rf"{closing_id}: to=<x@closing\.example>, .*dsn=4\.3\.2, status=deferred "
                      r"\(host 127\.0\.0\.1\[127\.0\.0\.1\] said: 421 4\.3\.2 Service shutting "
                      r"down \(in reply to RCPT TO command\)\)")
        inst.wait_log(rf"{lmtp_id}: to=<a@lmtp\.example>, .*dsn=2\.0\.0, status=sent "
                      r"\(250 2\.0\.0 first stored\)")
        inst.wait_log(rf"{lmtp_id}: to=<b@lmtp\.example>, .*dsn=4\.4\.2, status=deferred "
                      r"\(lost connection with .* while sending end of data")
        (bounce,) = inst.wait_maildir(1)
        assert "Final-Recipient: rfc822; gone@broken.example" in bounce_fields(bounce)
        assert "here@broken.example" not in bounce_fields(bounce)


def test_a_refused_hello_is_refused_to_talk_to_me(new_instance) -> None:  # type: ignore[no-untyped-def]
    """A 421 to EHLO, or a refused LHLO: Postfix's "host ... refused to talk to me: ..."
    (smtp_helo), as for a refused greeting."""
    with ScriptedServer(ehlo=b"421 4.3.2 too busy\r\n") as busy, \
            ScriptedServer(ehlo=b"550 5.7.1 not you\r\n") as lmtp:
        inst: Instance = new_instance()
        route(inst, lmtp={"lmtp": lmtp}, busy=busy)
        inst.start()
        busy_id = inst.send(LOCAL, "x@busy.example", b"Subject: busy\r\n\r\nx\r\n")
        lmtp_id = inst.send(LOCAL, "x@lmtp.example", b"Subject: lmtp\r\n\r\nx\r\n")
        inst.wait_log(rf"{busy_id}: to=<x@busy\.example>, .*dsn=4\.3\.2, status=deferred "
                      r"\(host 127\.0\.0\.1\[127\.0\.0\.1\] refused to talk to me: 421 4\.3\.2 "
                      r"too busy\)")
        inst.wait_log(rf"{lmtp_id}: to=<x@lmtp\.example>, .*dsn=5\.7\.1, status=bounced "
                      r"\(host 127\.0\.0\.1\[127\.0\.0\.1\] refused to talk to me: 550 5\.7\.1 "
                      r"not you\)")


def test_reply_text_as_postfix_keeps_it(new_instance) -> None:  # type: ignore[no-untyped-def]
    """Bytes that are not UTF-8 in a reply become "?" (Postfix's printable()), not
    U+FFFD; the text kept is line_length_limit long (here 600), not a fixed 2048."""
    long_reply = b"550-5.7.1 " + b"a" * 1000 + b"\r\n550 5.7.1 " + b"b" * 1000 + b"\r\n"
    with ScriptedServer(rcpt=b"550 5.1.1 caf\xe9 closed\r\n") as latin1, \
            ScriptedServer(rcpt=long_reply) as long:
        inst: Instance = new_instance()
        route(inst, latin1=latin1, long=long)
        inst.set(line_length_limit="600")
        inst.start()
        latin1_id = inst.send(LOCAL, "x@latin1.example", b"Subject: l\r\n\r\nx\r\n")
        long_id = inst.send(LOCAL, "x@long.example", b"Subject: l\r\n\r\nx\r\n")
        inst.wait_log(rf"{latin1_id}: to=<x@latin1\.example>, .*dsn=5\.1\.1, status=bounced "
                      r"\(host .* said: 550 5\.1\.1 caf\? closed \(in reply to RCPT TO")
        (line,) = inst.wait_log(rf"{long_id}: to=<x@long\.example>, .*status=bounced")
        assert "a" * 590 in line and "a" * 601 not in line and "bbb" not in line, line
        assert "\ufffd" not in inst.log()


def test_end_of_data_reply_waits_smtp_data_done_timeout(new_instance) -> None:  # type: ignore[no-untyped-def]
    """smtp_data_done_timeout bounds the wait for the end-of-data reply: a server slower
    than that defers the mail with Postfix's reason (the message may arrive twice)."""
    def slow(_line: bytes) -> bytes:
        time.sleep(6)  # the server's thread: this session only
        return b"250 2.0.0 Ok: too late\r\n"

    with ScriptedServer(eod=slow) as server:
        inst: Instance = new_instance()
        route(inst, slow=server)
        inst.set(smtp_data_done_timeout="2s")
        inst.start()
        queue_id = inst.send(LOCAL, "x@slow.example", b"Subject: slow\r\n\r\nbody\r\n")
        (line,) = inst.wait_log(rf"{queue_id}: to=<x@slow\.example>, relay=127\.0\.0\.1"
                                rf"\[127\.0\.0\.1\]:{server.port}, .*dsn=4\.4\.2, "
                                r"status=deferred \(conversation with 127\.0\.0\.1\[127\.0\.0\.1\] "
                                r"timed out while sending end of data -- message may be sent "
                                r"more than once\)")
        delay = float(re.search(r"delay=([\d.]+)", line).group(1))  # type: ignore[union-attr]
        assert delay < 5.5


def test_a_5xx_to_helo_bounces_without_trying_the_fallback_relay(new_instance) -> None:  # type: ignore[no-untyped-def]
    """A server that refuses EHLO and HELO with 5xx: the mail bounces with that reply, and
    smtp_fallback_relay is not tried, as Debian's Postfix 3.7 does (its smtp_helo failure
    is final); a 5xx greeting (smtp_skip_5xx_greeting) does make way for it."""
    with ScriptedServer(ehlo=b"550 5.7.1 no ehlo\r\n", helo=b"550 5.7.1 no helo\r\n") as refusing, \
            ScriptedServer(banner=b"554 5.7.1 go away\r\n") as greeting, \
            ScriptedServer() as fallback:
        inst: Instance = new_instance()
        route(inst, refusing=refusing, greeting=greeting)
        inst.set(smtp_fallback_relay=f"[127.0.0.1]:{fallback.port}")
        inst.start()
        refused_id = inst.send(LOCAL, "x@refusing.example", b"Subject: r\r\n\r\nx\r\n")
        inst.wait_log(rf"{refused_id}: to=<x@refusing\.example>, relay=127\.0\.0\.1\[127\.0\.0\.1\]"
                      rf":{refusing.port}, .*dsn=5\.7\.1, status=bounced \(host 127\.0\.0\.1"
                      r"\[127\.0\.0\.1\] refused to talk to me: 550 5\.7\.1 no helo\)")
        greeting_id = inst.send(LOCAL, "x@greeting.example", b"Subject: g\r\n\r\nx\r\n")
        inst.wait_log(rf"{greeting_id}: to=<x@greeting\.example>, relay=127\.0\.0\.1"
                      rf"\[127\.0\.0\.1\]:{fallback.port}, .*status=sent")
        assert b"RCPT TO:<x@refusing.example>\r\n" not in fallback.received


def test_a_5xx_from_smtp_fallback_relay_bounces(new_instance) -> None:  # type: ignore[no-untyped-def]
    """The nexthop cannot be reached and smtp_fallback_relay refuses: its 5xx to RCPT TO
    or MAIL FROM bounces with its status, and its 5xx greeting waits (4.7.1,
    smtp_skip_5xx_greeting), as Debian's Postfix 3.7 does with the same servers (audit:
    nothing to change)."""
    closed = free_port()
    with ScriptedServer(rcpt=b"550 5.1.1 fallback says no rcpt\r\n") as rcpt, \
            ScriptedServer(mail=b"553 5.7.1 fallback says no mail\r\n") as mail, \
            ScriptedServer(banner=b"554 5.7.1 go away\r\n") as greeting:
        inst: Instance = new_instance()
        fallbacks = {"rcpt": rcpt, "mail": mail, "greeting": greeting}
        inst.set(**FAST, transport_maps="inline:{ " + ", ".join(
            f"{name}.example=fb{name}:[127.0.0.1]:{closed}" for name in fallbacks) + " }")
        with open(inst.config_dir / "master.cf", "a") as f:
            f.writelines(f"fb{name} unix - - n - - smtp -o smtp_fallback_relay="
                         f"[127.0.0.1]:{server.port}\n" for name, server in fallbacks.items())
        inst.start()
        ids = {name: inst.send(LOCAL, f"x@{name}.example", b"Subject: f\r\n\r\nx\r\n")
               for name in fallbacks}
        relay = r"relay=127\.0\.0\.1\[127\.0\.0\.1\]"
        inst.wait_log(rf"{ids['rcpt']}: to=<x@rcpt\.example>, {relay}:{rcpt.port}, .*dsn=5\.1\.1, "
                      r"status=bounced \(host 127\.0\.0\.1\[127\.0\.0\.1\] said: 550 5\.1\.1 "
                      r"fallback says no rcpt \(in reply to RCPT TO command\)\)")
        inst.wait_log(rf"{ids['mail']}: to=<x@mail\.example>, {relay}:{mail.port}, .*dsn=5\.7\.1, "
                      r"status=bounced \(host 127\.0\.0\.1\[127\.0\.0\.1\] said: 553 5\.7\.1 "
                      r"fallback says no mail \(in reply to MAIL FROM command\)\)")
        inst.wait_log(rf"{ids['greeting']}: to=<x@greeting\.example>, {relay}:{greeting.port}, "
                      r".*dsn=4\.7\.1, status=deferred \(host 127\.0\.0\.1\[127\.0\.0\.1\] "
                      r"refused to talk to me: 554 5\.7\.1 go away\)")


def test_discarded_ehlo_keywords_are_not_used_and_are_logged(new_instance) -> None:  # type: ignore[no-untyped-def]
    """smtp_discard_ehlo_keywords: the client takes the server's SIZE, DSN and PIPELINING
    as not offered (MAIL FROM goes without SIZE= and RET=) and logs Postfix's
    ``discarding EHLO keywords: PIPELINING SIZE DSN`` at the EHLO; it was ignored."""
    ehlo = b"250-scripted.example\r\n250-PIPELINING\r\n250-SIZE 10000000\r\n250-DSN\r\n250 8BITMIME\r\n"
    with ScriptedServer(ehlo=ehlo) as server:
        inst: Instance = new_instance()
        route(inst, kept=server)
        inst.set(smtp_discard_ehlo_keywords="dsn, foo, Pipelining, size")
        inst.start()
        with inst.smtp() as c:
            c.ehlo()
            c.mail(LOCAL, ["RET=HDRS"])
            c.rcpt("x@kept.example")
            c.data(b"Subject: kept\r\n\r\nbody\r\n")
        server.wait_for(b".\r\n")
        inst.wait_log(r"postfix/smtp\[\d+\]: discarding EHLO keywords: PIPELINING SIZE DSN$")
        mail = [line for line in server.received if line.upper().startswith(b"MAIL FROM:")]
        assert mail == [f"MAIL FROM:<{LOCAL}>\r\n".encode()], mail
