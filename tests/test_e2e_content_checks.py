"""header_checks, mime_header_checks, nested_header_checks and body_checks on a real instance.

Each test writes a regexp: table as an administrator would, sends mail over SMTP
(or with sendmail) and checks what a user sees: the reply to DATA, the log lines
in Postfix's words, the queue (hold/, mailq's ``!``) and the bytes that arrive in
the Maildir.
"""

from __future__ import annotations

import re

import pytest
from harness import ME, Instance, wait_until

pytestmark = pytest.mark.root  # delivery to the current user's Maildir is checked as root


def _instance(new_instance, header: str = "", body: str = "", **settings: str) -> Instance:  # type: ignore[no-untyped-def]
    """A started instance with these tables ({origin} in them: $myorigin)."""
    inst: Instance = new_instance(maildir=True, settings={"recipient_delimiter": "+", **settings})
    origin = _origin(inst)
    if header:
        header = header.replace("{origin}", origin)
        inst.set(header_checks=f"regexp:{inst.write('etc/header_checks', header)}")
    if body:
        inst.set(body_checks=f"regexp:{inst.write('etc/body_checks', body)}")
    inst.start()
    return inst


def _origin(inst: Instance) -> str:
    return str(inst.tool("postconf", "-hx", "myorigin", check=True).stdout.strip())


def _data_reply(inst: Instance, rcpt: str, message: str | bytes) -> tuple[int, bytes]:
    """The reply to DATA (bytes: lines end in LF, sent as CRLF)."""
    if isinstance(message, bytes):
        message = message.replace(b"\n", b"\r\n")
    with inst.smtp() as client:
        client.ehlo()
        client.mail("sender@example.org")
        client.rcpt(rcpt)
        return client.data(message)


def _arrived(inst: Instance, subject: bytes, count: int = 1) -> list[bytes]:
    def hit() -> list[bytes]:
        found = [m for m in inst.maildir_messages() if b"\nSubject: " + subject + b"\n" in m]
        return found if len(found) >= count else []

    return wait_until(hit, 60, what=f"{count} message(s) {subject!r}")


def test_header_reject_refuses_the_message_at_data(new_instance) -> None:  # type: ignore[no-untyped-def]
    inst = _instance(new_instance, header="/^Subject:.*spam/ REJECT No spam please\n"
                                          "/^X-Default:/ REJECT\n")
    rcpt = f"{ME}@{_origin(inst)}"
    code, text = _data_reply(inst, rcpt, "Subject: buy spam now\n\nbody\n")
    assert (code, text) == (550, b"5.7.1 No spam please")
    line = inst.wait_log(r"reject: header Subject: buy spam now")[0]
    assert re.search(r": [0-9A-F]+: reject: header Subject: buy spam now from "
                     r"[^ ]+\[127\.0\.0\.1\]; from=<sender@example\.org> to=<" + re.escape(rcpt)
                     + r"> proto=ESMTP helo=<client\.example>: 5\.7\.1 No spam please$", line), line
    code, text = _data_reply(inst, rcpt, "X-Default: yes\nSubject: x\n\nbody\n")
    assert (code, text) == (550, b"5.7.1 message content rejected")
    assert inst.queue_empty() and not inst.queue_ids("hold")
    assert not inst.maildir_messages()


def test_hold_discard_and_logged_actions(new_instance) -> None:  # type: ignore[no-untyped-def]
    inst = _instance(new_instance, header="/^Subject: hold me/ HOLD waiting for review\n"
                                          "/^Subject: drop me/ DISCARD not wanted\n"
                                          "/^Subject: warn me/ WARN looks odd\n"
                                          "/^Subject: info me/ INFO noted\n")
    rcpt = f"{ME}@{_origin(inst)}"
    held = inst.send("sender@example.org", rcpt, "Subject: hold me\n\nbody\n")
    inst.wait_log(rf"{held}: hold: header Subject: hold me from .*: waiting for review$")
    assert inst.queue_ids("hold") == [held]
    listing = inst.tool("mailq", check=True).stdout
    assert re.search(rf"^{held}!", listing, re.M), listing
    dropped = inst.send("sender@example.org", rcpt, "Subject: drop me\n\nbody\n")
    inst.wait_log(rf"{dropped}: discard: header Subject: drop me from .*: not wanted$")
    inst.send("sender@example.org", rcpt, "Subject: warn me\n\nbody\n")
    inst.wait_log(r": warning: header Subject: warn me from .*: looks odd$")
    inst.send("sender@example.org", rcpt, "Subject: info me\n\nbody\n")
    inst.wait_log(r": info: header Subject: info me from .*: noted$")
    _arrived(inst, b"warn me")
    _arrived(inst, b"info me")
    assert not [m for m in inst.maildir_messages() if b"drop me" in m or b"hold me" in m]
    assert dropped not in inst.queue_ids("incoming") + inst.queue_ids("active")


def test_redirect_bcc_prepend_replace_ignore_change_what_arrives(new_instance) -> None:  # type: ignore[no-untyped-def]
    inst = _instance(new_instance, header=(
        "/^Subject: redirect me/ REDIRECT " + ME + "+redirected@{origin}\n"
        "/^Subject: copy me/ BCC " + ME + "+copy@{origin}\n"
        "/^Subject: bad target/ REDIRECT nowhere\n"
        "/^X-Secret:/ IGNORE\n"
        "/^X-Mailer: (.*)/ REPLACE X-Mailer: hidden ($1)\n"
        "/^Subject: tag me/ PREPEND X-Tagged: yes\n"), body=(
        "/^password=/ REPLACE password=<removed>\n"
        "/^drop this line/ IGNORE\n"))
    origin = _origin(inst)
    rcpt = f"{ME}+orig@{origin}"
    inst.send("sender@example.org", rcpt, "Subject: redirect me\n\nbody\n")
    [redirected] = _arrived(inst, b"redirect me")
    assert f"Delivered-To: {ME}+redirected@{origin}\n".encode() in redirected
    inst.wait_log(rf"to=<{ME}\+redirected@{re.escape(origin)}>, orig_to=<{ME}\+orig@"
                  rf"{re.escape(origin)}>, .*status=sent")
    inst.wait_log(r": redirect: header Subject: redirect me from .*: " + ME + r"\+redirected@")
    inst.send("sender@example.org", rcpt, "Subject: bad target\n\nbody\n")
    _arrived(inst, b"bad target")
    inst.wait_log(r'warning: bad REDIRECT target "nowhere" in header_checks map -- need user@domain')

    inst.send("sender@example.org", rcpt, "Subject: copy me\n\nbody\n")
    copies = _arrived(inst, b"copy me", 2)
    delivered = sorted(re.search(rb"Delivered-To: (\S+)\n", m).group(1) for m in copies)  # type: ignore[union-attr]
    assert delivered == sorted([f"{ME}+copy@{origin}".encode(), rcpt.encode()])

    inst.send("sender@example.org", rcpt,
              "Subject: tag me\nX-Secret: 42\nX-Mailer: Mutt 2.0\n\n"
              "first\npassword=hunter2\ndrop this line\nlast\n")
    [msg] = _arrived(inst, b"tag me")
    head, body = msg.split(b"\n\n", 1)
    assert b"\nX-Tagged: yes\nSubject: tag me\n" in head + b"\n"
    assert b"X-Secret" not in head
    assert b"\nX-Mailer: hidden (Mutt 2.0)" in head
    assert body == b"first\npassword=<removed>\nlast\n"
    inst.wait_log(r": replace: body password=hunter2 from .*: password=<removed>$")


def test_strip_deletes_and_logs(new_instance) -> None:  # type: ignore[no-untyped-def]
    """STRIP (Postfix 3.7's cleanup_act): IGNORE with a log line."""
    inst = _instance(new_instance, header="/^X-Tracking:/ STRIP no tracking\n",
                     body="/^unsubscribe-pixel/ STRIP\n")
    rcpt = f"{ME}@{_origin(inst)}"
    inst.send("sender@example.org", rcpt,
              "Subject: stripped\nX-Tracking: 1234\n\nhello\nunsubscribe-pixel here\nbye\n")
    [msg] = _arrived(inst, b"stripped")
    head, body = msg.split(b"\n\n", 1)
    assert b"X-Tracking" not in head and body == b"hello\nbye\n"
    inst.wait_log(r": [0-9A-F]+: strip: header X-Tracking: 1234 from [^ ]+\[127\.0\.0\.1\]; "
                  r"from=<sender@example\.org> to=<[^>]+> proto=ESMTP helo=<[^>]+>: no tracking$")
    inst.wait_log(r": [0-9A-F]+: strip: body unsubscribe-pixel here from .*helo=<[^>]+>$")
    assert "unknown command" not in inst.log()


def test_mime_part_and_attached_message_headers(new_instance) -> None:  # type: ignore[no-untyped-def]
    inst = _instance(new_instance, header="/^Content-Type: application\\/x-msdownload/ REJECT "
                                          "Attachment type not allowed\n"
                                          "/^Subject: inner spam/ REJECT nested spam\n")
    rcpt = f"{ME}@{_origin(inst)}"
    mime = ("MIME-Version: 1.0\nSubject: with attachment\n"
            "Content-Type: multipart/mixed; boundary=\"XX\"\n\npreamble\n"
            "--XX\nContent-Type: text/plain\n\nhello\n"
            "--XX\nContent-Type: application/x-msdownload;\n name=x.exe\n\nTVqQ\n--XX--\n")
    code, text = _data_reply(inst, rcpt, mime)
    assert (code, text) == (550, b"5.7.1 Attachment type not allowed")
    nested = ("MIME-Version: 1.0\nSubject: forwarded\n"
              "Content-Type: multipart/mixed; boundary=b1\n\n"
              "--b1\nContent-Type: message/rfc822\n\nSubject: inner spam\nFrom: x@y\n\ninner body\n"
              "--b1--\n")
    code, text = _data_reply(inst, rcpt, nested)
    assert (code, text) == (550, b"5.7.1 nested spam")
    # the same lines in a body (not a header block) are not headers
    plain = "Subject: plain\n\nContent-Type: application/x-msdownload\nSubject: inner spam\n"
    inst.send("sender@example.org", rcpt, plain)
    _arrived(inst, b"plain")


def _nested_multiparts(depth: int) -> str:
    """A message of depth + 1 multiparts, each the only part of the one around it, and in
    the innermost a part whose header says X-Inner: evil."""
    text = "Subject: nest\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=b0\n\n"
    for i in range(depth):
        text += f"--b{i}\nContent-Type: multipart/mixed; boundary=b{i + 1}\n\n"
    text += f"--b{depth}\nContent-Type: text/plain\nX-Inner: evil\n\nbody\n--b{depth}--\n"
    return text + "".join(f"--b{i}--\n" for i in range(depth - 1, -1, -1))


def test_mime_nesting_past_the_limit_is_rejected_as_postfix(new_instance) -> None:  # type: ignore[no-untyped-def]
    """Debian's Postfix 3.7 with mime_nesting_limit = 3 follows five multiparts (its depth
    counter starts at -1) and rejects a sixth while header checks are in use, so that a
    deep part cannot hide a header from them; with body_checks alone it says nothing."""
    inst = _instance(new_instance, header="/^X-Inner: evil/ REJECT inner header\n",
                     mime_nesting_limit="3")
    rcpt = f"{ME}@{_origin(inst)}"
    assert _data_reply(inst, rcpt, _nested_multiparts(4)) == (550, b"5.7.1 inner header")
    code, text = _data_reply(inst, rcpt, _nested_multiparts(5))
    assert (code, text) == (550, b"5.6.0 MIME nesting exceeds safety limit")
    line = inst.wait_log(r"reject: mime-error")[0]
    assert re.search(r"postfix/cleanup\[\d+\]: [0-9A-F]+: reject: mime-error MIME nesting exceeds "
                     r"safety limit: Content-Type: multipart/mixed; boundary=b5 from "
                     r"[^ ]+\[127\.0\.0\.1\]; from=<sender@example\.org> to=<"
                     + re.escape(rcpt) + ">$", line), line
    assert inst.queue_empty() and not inst.maildir_messages()


def test_a_later_header_reject_wins_over_mime_nesting(new_instance) -> None:  # type: ignore[no-untyped-def]
    """Debian's Postfix 3.7 logs the nesting error and goes on checking: a header rule
    that rejects further down gives the reply, since a MIME error rejects only once the
    content ended without one."""
    inst = _instance(new_instance, header="/^X-Late: evil/ REJECT late header\n",
                     mime_nesting_limit="3")
    rcpt = f"{ME}@{_origin(inst)}"
    deep = _nested_multiparts(5).rsplit("--b0--\n", 1)[0]
    code, text = _data_reply(inst, rcpt, deep + "--b0\nX-Late: evil\n\nx\n--b0--\n")
    assert (code, text) == (550, b"5.7.1 late header")
    inst.wait_log(r"reject: mime-error MIME nesting exceeds safety limit: Content-Type: "
                  r"multipart/mixed; boundary=b5 from ")
    inst.wait_log(r"reject: header X-Late: evil from .*: 5\.7\.1 late header$")


def test_mime_nesting_with_body_checks_alone_is_not_reported(new_instance) -> None:  # type: ignore[no-untyped-def]
    inst = _instance(new_instance, body="/^never matches/ REJECT\n", mime_nesting_limit="3",
                     header_checks="", mime_header_checks="", nested_header_checks="")
    rcpt = f"{ME}@{_origin(inst)}"
    inst.send("sender@example.org", rcpt, _nested_multiparts(5))
    _arrived(inst, b"nest")
    assert "mime-error" not in inst.log()


def test_mime_boundary_length_limit_cuts_the_boundary(new_instance) -> None:  # type: ignore[no-untyped-def]
    """A boundary is remembered up to mime_boundary_length_limit bytes: a line that starts
    with that much of it opens a part, as in Postfix's mime_state."""
    inst = _instance(new_instance, header="/^X-Part: evil/ REJECT part header\n",
                     mime_boundary_length_limit="5")
    rcpt = f"{ME}@{_origin(inst)}"
    text = ("Subject: cut\nContent-Type: multipart/mixed; boundary=abcdefgh\n\n"
            "--abcdeZZZ\nX-Part: evil\n\nbody\n")
    assert _data_reply(inst, rcpt, text) == (550, b"5.7.1 part header")


def test_every_multipart_boundary_of_a_header_block_opens_parts(new_instance) -> None:  # type: ignore[no-untyped-def]
    """As Debian's Postfix 3.7: a multipart Content-Type opens its parts even when a later
    Content-Type of the same block says text/plain, and so does each boundary= of one
    header, so a part header cannot hide behind a second Content-Type."""
    inst = _instance(new_instance, header="/^X-Part: evil/ REJECT part header\n")
    rcpt = f"{ME}@{_origin(inst)}"
    part = "\n--BB\nX-Part: evil\n\nx\n--BB--\n"
    two = "Subject: two\nContent-Type: multipart/mixed; boundary=BB\nContent-Type: text/plain\n"
    params = "Subject: params\nContent-Type: multipart/mixed; boundary=AA; boundary=BB\n"
    assert _data_reply(inst, rcpt, two + part) == (550, b"5.7.1 part header")
    assert _data_reply(inst, rcpt, params + part) == (550, b"5.7.1 part header")
    inst.send("sender@example.org", rcpt, "Subject: one\nContent-Type: text/plain\n" + part)
    _arrived(inst, b"one")


def test_disable_mime_input_processing_makes_part_headers_body(new_instance) -> None:  # type: ignore[no-untyped-def]
    """As Postfix's MIME_OPT_DISABLE_MIME: after the primary header block all is body, so
    a part's header meets body_checks, not the header checks."""
    inst = _instance(new_instance, header="/^X-Part: evil/ REJECT part header\n",
                     body="/^X-Part: worse/ REJECT part header as body\n",
                     disable_mime_input_processing="yes")
    rcpt = f"{ME}@{_origin(inst)}"
    text = ("Subject: {}\nContent-Type: multipart/mixed; boundary=BB\n\n"
            "--BB\nX-Part: {}\n\nbody\n--BB--\n")
    assert _data_reply(inst, rcpt, text.format("worse", "worse")) == (
        550, b"5.7.1 part header as body")
    inst.send("sender@example.org", rcpt, text.format("evil", "evil"))
    _arrived(inst, b"evil")


def test_no_header_body_checks_for_a_service(new_instance) -> None:  # type: ignore[no-untyped-def]
    inst = _instance(new_instance, header="/^Subject: spam/ REJECT\n",
                     receive_override_options="no_header_body_checks")
    rcpt = f"{ME}@{_origin(inst)}"
    inst.send("sender@example.org", rcpt, "Subject: spam\n\nbody\n")
    _arrived(inst, b"spam")


def test_sendmail_rejected_message_bounces_to_the_sender(new_instance) -> None:  # type: ignore[no-untyped-def]
    inst = _instance(new_instance, header="/^Subject: local spam/ REJECT No spam please\n")
    origin = _origin(inst)
    r = inst.tool("sendmail", "-f", f"{ME}@{origin}", f"{ME}+to@{origin}",
                  input="Subject: local spam\n\nbody\n")
    assert r.returncode == 0, r.stderr
    [bounce] = _arrived(inst, b"Undelivered Mail Returned to Sender")
    assert b"No spam please" in bounce
    inst.wait_log(r": reject: header Subject: local spam from local; from=<")
    assert not [m for m in inst.maildir_messages() if b"Delivered-To: " + ME.encode() + b"+to@" in m]


def test_sendmail_message_with_a_mime_error_bounces_to_the_sender(new_instance) -> None:  # type: ignore[no-untyped-def]
    """pickup's mail is checked too (CLEANUP_FLAG_FILTER): a strict_7bit_headers error
    returns it to its sender with the 5.6.0 reason, logged as Debian's Postfix 3.7 does."""
    inst = _instance(new_instance, strict_7bit_headers="yes")
    origin = _origin(inst)
    r = inst.tool("sendmail", "-f", f"{ME}@{origin}", f"{ME}+to@{origin}",
                  input=b"Subject: caf\xc3\xa9\n\nbody\n")
    assert r.returncode == 0, r.stderr
    [bounce] = _arrived(inst, b"Undelivered Mail Returned to Sender")
    assert b"improper use of 8-bit data in message header" in bounce
    inst.wait_log(r": reject: mime-error improper use of 8-bit data in message header: "
                  r"Subject: café from local; from=<")
    inst.wait_log(r"to=<" + re.escape(f"{ME}+to@{origin}") + r">, relay=none, .*dsn=5\.6\.0, "
                  r"status=bounced \(improper use of 8-bit data in message header\)$")


def test_smtp_reply_when_the_reject_text_is_temporary(new_instance) -> None:  # type: ignore[no-untyped-def]
    inst = _instance(new_instance, header="/^Subject: later/ REJECT 4.7.1 Try again later\n")
    code, text = _data_reply(inst, f"{ME}@{_origin(inst)}", "Subject: later\n\nx\n")
    assert (code, text) == (451, b"4.7.1 Try again later")


def test_rule_without_a_result_is_a_configuration_error(new_instance) -> None:  # type: ignore[no-untyped-def]
    """An empty result (a rule with no action) defers the message, with Postfix 3.7's warnings."""
    inst = _instance(new_instance, header="/^Subject: empty/\n")
    code, text = _data_reply(inst, f"{ME}@{_origin(inst)}", "Subject: empty here\n\nx\n")
    assert (code, text) == (451, b"4.3.0 Error: queue file write error")
    inst.wait_log(r"postfix/cleanup\[\d+\]: warning: [0-9A-F]+: header_checks map lookup problem "
                  r"-- message not accepted, try again later$")
    log = inst.log()
    assert re.search(r"postfix/cleanup\[\d+\]: warning: header_checks lookup of Subject: empty here "
                     r"returns an empty string result\n.*postfix/cleanup\[\d+\]: warning: "
                     r"header_checks should return NO RESULT in case of NOT FOUND\n", log), log


def _send(inst: Instance, rcpt: str, message: bytes) -> str:
    return inst.send("sender@example.org", rcpt, message.replace(b"\n", b"\r\n"))


_HEADER_8BIT = b"5.6.0 improper use of 8-bit data in message header"
_BODY_8BIT = b"5.6.0 improper use of 8-bit data in message body"
_DOMAIN = b"5.6.0 invalid message/* or multipart/* encoding domain"


def _mime_error(rcpt: str, what: str) -> str:
    """Postfix's cleanup_mime_error_callback line, as Debian's Postfix 3.7 logs it."""
    return (r"postfix/cleanup\[\d+\]: [0-9A-F]+: reject: mime-error " + re.escape(what)
            + r" from [^ ]+\[127\.0\.0\.1\]; from=<sender@example\.org> to=<"
            + re.escape(rcpt) + ">$")


def test_strict_8bitmime_refuses_8bit_headers_and_undeclared_8bit_bodies(new_instance) -> None:  # type: ignore[no-untyped-def]
    """strict_8bitmime (no header or body tables): as Debian's Postfix 3.7, 8-bit bytes in
    any header, or in a body (part) whose Content-Transfer-Encoding is not 8bit or binary,
    refuse the message with 550 5.6.0 and a mime-error line; the header error wins."""
    inst = _instance(new_instance, strict_8bitmime="yes")
    rcpt = f"{ME}@{_origin(inst)}"
    assert _data_reply(inst, rcpt, b"Subject: caf\xc3\xa9\n\nbody\n") == (550, _HEADER_8BIT)
    inst.wait_log(_mime_error(rcpt, "improper use of 8-bit data in message header: "
                                    "Subject: café"))
    assert _data_reply(inst, rcpt, b"Subject: b8\n\ncaf\xc3\xa9 body\n") == (550, _BODY_8BIT)
    inst.wait_log(_mime_error(rcpt, "improper use of 8-bit data in message body: café body"))
    part = (b"Subject: p8\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=BB\n\n"
            b"--BB\nContent-Type: text/plain\n%s\nsp\xc3\xa4t\n--BB--\n")
    assert _data_reply(inst, rcpt, part % b"") == (550, _BODY_8BIT)
    assert _data_reply(inst, rcpt, part % b"X-N: caf\xc3\xa9\n") == (550, _HEADER_8BIT)
    assert _data_reply(inst, rcpt, b"Subject: both \xc3\xa9\n\nbody \xc3\xa9\n") == (
        550, _HEADER_8BIT)
    assert inst.queue_empty() and not inst.maildir_messages()
    _send(inst, rcpt,
              b"Subject: declared\nContent-Transfer-Encoding: 8bit\n\ncaf\xc3\xa9\n")
    _send(inst, rcpt, part.replace(b"p8", b"declared part")
              % b"Content-Transfer-Encoding: 8bit\n")
    _arrived(inst, b"declared")
    _arrived(inst, b"declared part")


def test_strict_7bit_headers_and_strict_8bitmime_body_each_alone(new_instance) -> None:  # type: ignore[no-untyped-def]
    inst = _instance(new_instance, strict_7bit_headers="yes")
    rcpt = f"{ME}@{_origin(inst)}"
    assert _data_reply(inst, rcpt, b"Subject: caf\xc3\xa9\n\nbody\n") == (550, _HEADER_8BIT)
    _send(inst, rcpt, b"Subject: body only\n\ncaf\xc3\xa9\n")
    _arrived(inst, b"body only")
    inst.stop()
    inst = _instance(new_instance, strict_8bitmime_body="yes")
    assert _data_reply(inst, rcpt, b"Subject: b\n\ncaf\xc3\xa9\n") == (550, _BODY_8BIT)
    _send(inst, rcpt, b"Subject: header only \xc3\xa9\n\nbody\n")
    _arrived(inst, b"header only \xc3\xa9")


def test_strict_mime_encoding_domain(new_instance) -> None:  # type: ignore[no-untyped-def]
    """strict_mime_encoding_domain: a multipart or message/rfc822 that says base64 or
    quoted-printable, or a message/partial that says 8bit, is refused as Postfix 3.7 does
    (the encoding named in lower case in the log line)."""
    inst = _instance(new_instance, strict_mime_encoding_domain="yes")
    rcpt = f"{ME}@{_origin(inst)}"
    multipart = (b"Subject: mp\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=BB\n"
                 b"Content-Transfer-Encoding: Base64\n\n--BB\n\nx\n--BB--\n")
    assert _data_reply(inst, rcpt, multipart) == (550, _DOMAIN)
    inst.wait_log(_mime_error(rcpt, "invalid message/* or multipart/* encoding domain: base64"))
    attached = (b"Subject: m\nMIME-Version: 1.0\nContent-Type: message/rfc822\n"
                b"Content-Transfer-Encoding: quoted-printable\n\nSubject: in\n\nx\n")
    assert _data_reply(inst, rcpt, attached) == (550, _DOMAIN)
    partial = (b"Subject: pa\nMIME-Version: 1.0\nContent-Type: message/partial; id=1; number=1\n"
               b"Content-Transfer-Encoding: 8bit\n\nx\n")
    assert _data_reply(inst, rcpt, partial) == (550, _DOMAIN)
    inner = (b"Subject: pm\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=BB\n\n"
             b"--BB\nContent-Type: multipart/alternative; boundary=CC\n"
             b"Content-Transfer-Encoding: base64\n\n--CC\n\nx\n--CC--\n--BB--\n")
    assert _data_reply(inst, rcpt, inner) == (550, _DOMAIN)
    assert inst.queue_empty()
    _send(inst, rcpt, b"Subject: fine\nMIME-Version: 1.0\n"
              b"Content-Type: multipart/mixed; boundary=BB\nContent-Transfer-Encoding: 8bit\n\n"
              b"--BB\nContent-Transfer-Encoding: base64\n\neA==\n--BB--\n")
    _arrived(inst, b"fine")
    assert "mime-error" not in inst.log().split("base64 from")[-1]


def test_strict_settings_leave_local_forwarding_alone(new_instance) -> None:  # type: ignore[no-untyped-def]
    """As Postfix, the strict_* settings apply with CLEANUP_FLAG_FILTER only, and with
    receive_override_options = no_header_body_checks they are off."""
    inst = _instance(new_instance, strict_8bitmime="yes",
                     receive_override_options="no_header_body_checks")
    rcpt = f"{ME}@{_origin(inst)}"
    _send(inst, rcpt, b"Subject: caf\xc3\xa9 ok\n\ncaf\xc3\xa9\n")
    _arrived(inst, b"caf\xc3\xa9 ok")
