"""access(5) actions in smtpd, end to end: the reply, the log line, the queue file or mailbox.

One instance, one access table keyed by address extensions of the test user
(recipient_delimiter = +), each naming one action.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from harness import ME, Instance

SENDER = "alice@example.org"
TAIL = rf"from=<alice@example\.org> to=<{ME}\+(\w+)@localhost> proto=ESMTP helo=<client\.example>"


@pytest.fixture(scope="module")
def inst() -> Iterator[Instance]:
    inst = Instance()
    table = inst.write("etc/access", f"""\
{ME}+hold@localhost HOLD
{ME}+discard@localhost DISCARD
{ME}+redirect@localhost REDIRECT {ME}+target@localhost
{ME}+bcc@localhost BCC {ME}+copy@localhost
{ME}+warn@localhost WARN watch this one
{ME}+info@localhost INFO just so you know
{ME}+prepend@localhost PREPEND X-Tagged: by the access table
{ME}+dip@localhost DEFER_IF_PERMIT 4.7.0 Try again later
{ME}+dir@localhost DEFER_IF_REJECT Not sure yet
{ME}+filter@localhost FILTER smtp:[127.0.0.1]:10025
{ME}+nocolon@localhost FILTER scanner
""")
    second = inst.write("etc/access2", f"{ME}+dir@localhost REJECT Refused\n")
    inst.set(recipient_delimiter="+",
             smtpd_recipient_restrictions=f"check_recipient_access texthash:{table}, "
             f"check_recipient_access texthash:{second}, permit_mynetworks, "
             "reject_unauth_destination")
    inst.start()
    yield inst
    inst.cleanup()


def test_hold_puts_the_message_on_hold(inst: Instance) -> None:
    queue_id = inst.send(SENDER, f"{ME}+hold@localhost", "Subject: hold\r\n\r\nheld\r\n")
    inst.wait_log(rf"NOQUEUE: hold: RCPT from localhost\[127\.0\.0\.1\]: <{ME}\+hold@localhost>: "
                  rf"Recipient address triggers HOLD action; {TAIL}")
    assert queue_id in inst.queue_ids("hold")
    show = inst.tool("postcat", "-q", queue_id, check=True).stdout
    assert "Subject: hold" in show


def test_discard_accepts_and_drops(inst: Instance) -> None:
    queue_id = inst.send(SENDER, f"{ME}+discard@localhost", "Subject: discard\r\n\r\ngone\r\n")
    inst.wait_log(rf"NOQUEUE: discard: RCPT from localhost\[127\.0\.0\.1\]: "
                  rf"<{ME}\+discard@localhost>: Recipient address triggers DISCARD action; {TAIL}")
    inst.wait_log(rf"{queue_id}: client=localhost")
    assert not any(queue_id in inst.queue_ids(q) for q in ("incoming", "active", "deferred",
                                                           "hold"))
    assert f"{queue_id}: to=" not in inst.log()


def test_redirect_bcc_prepend_deliver(inst: Instance) -> None:
    inst.send(SENDER, f"{ME}+redirect@localhost", "Subject: redirected\r\n\r\nthere\r\n")
    inst.send(SENDER, f"{ME}+bcc@localhost", "Subject: copied\r\n\r\ncopy\r\n")
    inst.send(SENDER, f"{ME}+prepend@localhost", "Subject: tagged\r\n\r\ntag\r\n")
    inst.wait_log(rf"NOQUEUE: redirect: RCPT from localhost\[127\.0\.0\.1\]: "
                  rf"<{ME}\+redirect@localhost>: Recipient address triggers REDIRECT "
                  rf"{ME}\+target@localhost; {TAIL}")
    inst.wait_log(rf"NOQUEUE: bcc: RCPT from localhost\[127\.0\.0\.1\]: <{ME}\+bcc@localhost>: "
                  rf"Recipient address triggers BCC {ME}\+copy@localhost; {TAIL}")
    inst.wait_log(rf"to=<{ME}\+target@localhost>, orig_to=<{ME}\+redirect@localhost>, "
                  r".*status=sent")
    inst.wait_log(rf"to=<{ME}\+copy@localhost>, .*status=sent")
    inst.wait_log(rf"to=<{ME}\+bcc@localhost>, .*status=sent")
    msgs = inst.wait_maildir(4)
    redirected = [m for m in msgs if b"Subject: redirected" in m]
    assert len(redirected) == 1 and f"Delivered-To: {ME}+target@localhost".encode() in redirected[0]
    copies = [m for m in msgs if b"Subject: copied" in m]
    assert len(copies) == 2
    tagged = [m for m in msgs if b"Subject: tagged" in m]
    assert len(tagged) == 1
    headers = tagged[0].split(b"\n\n")[0].decode()
    assert re.search(r"X-Tagged: by the access table\nReceived: from client\.example", headers)


def test_warn_and_info_log_and_accept(inst: Instance) -> None:
    with inst.smtp() as c:
        c.ehlo()
        c.mail(SENDER)
        assert c.rcpt(f"{ME}+warn@localhost")[0] == 250
        assert c.rcpt(f"{ME}+info@localhost")[0] == 250
    inst.wait_log(r"NOQUEUE: warn: RCPT from localhost\[127\.0\.0\.1\]: watch this one; " + TAIL)
    inst.wait_log(r"NOQUEUE: info: RCPT from localhost\[127\.0\.0\.1\]: just so you know; " + TAIL)


def test_deferred_decisions_and_filter(inst: Instance) -> None:
    with inst.smtp() as c:
        c.ehlo()
        c.mail(SENDER)
        # DEFER_IF_PERMIT: the rest permits (mynetworks), so the recipient is deferred
        assert c.rcpt(f"{ME}+dip@localhost") == (
            450, f"4.7.0 <{ME}+dip@localhost>: Recipient address rejected: Try again "
                 "later".encode())
        # DEFER_IF_REJECT: a later REJECT becomes the deferral
        assert c.rcpt(f"{ME}+dir@localhost") == (
            450, f"4.7.1 <{ME}+dir@localhost>: Recipient address rejected: Not sure "
                 "yet".encode())
        # FILTER: kept for the message (test_e2e_content_filter follows it to the filter);
        # without transport:destination it is skipped with Postfix's warning
        assert c.rcpt(f"{ME}+filter@localhost")[0] == 250
        assert c.rcpt(f"{ME}+nocolon@localhost")[0] == 250
        assert c.rcpt(f"{ME}@localhost")[0] == 250
    inst.wait_log(rf"NOQUEUE: filter: RCPT from localhost\[127\.0\.0\.1\]: <{ME}\+filter@localhost>: "
                  r"Recipient address triggers FILTER smtp:\[127\.0\.0\.1\]:10025; "
                  + TAIL.replace(r"(\w+)", "filter"))
    inst.wait_log(r'warning: access table texthash:\S+ entry "FILTER scanner" requires '
                  "transport:destination")
    inst.wait_log(r"NOQUEUE: reject: RCPT from localhost\[127\.0\.0\.1\]: 450 4\.7\.0 "
                  rf"<{ME}\+dip@localhost>: Recipient address rejected: Try again later; " + TAIL)
