"""Relay control end to end: a client outside mynetworks, without AUTH, against a real
instance whose relayhost is a scripted SMTP server on loopback. Whatever smtpd accepts
and then sends to that server is mail relayed for a stranger, so each test asserts the
reply and what happened to the mail: delivered here (``relay=local``), or nothing at the
relayhost.

The instance: mydestination has ourdomain.example, myorigin is remote.example (a domain
this host is not the destination of, as on a host whose domain's mail goes elsewhere),
recipient_delimiter is ``+``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from harness import ME, Instance
from scripted_smtp import ScriptedServer

SENDER = "alice@client.example"
RELAY_DENIED = re.compile(rb"5\.7\.1 <.*>: Relay access denied")


@dataclass
class Setup:
    inst: Instance
    sink: ScriptedServer

    def relayed(self) -> list[bytes]:
        """The RCPT commands the relayhost has seen."""
        return [line for line in self.sink.received if line.upper().startswith(b"RCPT")]


@pytest.fixture(scope="module")
def setup() -> Iterator[Setup]:
    with ScriptedServer() as sink:
        inst = Instance()
        try:
            inst.set(mynetworks="192.0.2.0/24",  # the client, 127.0.0.1, is a stranger
                     relayhost=f"[127.0.0.1]:{sink.port}",
                     mydestination="$myhostname, localhost, ourdomain.example",
                     myorigin="remote.example", recipient_delimiter="+",
                     smtpd_error_sleep_time="0", smtpd_soft_error_limit="100",
                     smtpd_hard_error_limit="100",
                     smtpd_relay_restrictions="permit_mynetworks, reject_unauth_destination")
            inst.start()
            yield Setup(inst, sink)
        finally:
            inst.cleanup()


def rcpt_replies(inst: Instance, recipients: list[str]) -> dict[str, tuple[int, bytes]]:
    """RCPT TO:<r> for each r, in one transaction that is then reset."""
    with inst.smtp() as c:
        c.ehlo()
        c.mail(SENDER, ["SMTPUTF8"])  # smtplib then sends UTF-8
        replies = {r: c.rcpt(r) for r in recipients}
        c.rset()
    return replies


def test_bare_local_part_is_judged_as_cleanup_queues_it(setup: Setup) -> None:
    """``RCPT TO:<user>`` becomes user@$myorigin in cleanup; when myorigin is not ours,
    that is relaying (Postfix's smtpd rewrites before it resolves and says so)."""
    inst = setup.inst
    for recipient in (ME, f"@ourdomain.example,@x.example:{ME}"):
        with inst.smtp() as c:
            c.ehlo()
            c.mail(SENDER)
            code, text = c.rcpt(recipient)
            assert code == 554 and RELAY_DENIED.fullmatch(text), (recipient, code, text)
    inst.wait_log(rf"NOQUEUE: reject: RCPT from localhost\[127\.0\.0\.1\]: 554 5\.7\.1 <{ME}>: "
                  rf"Relay access denied; from=<{SENDER}> to=<{ME}> ")
    # ours stays ours: delivered here, nothing for the relayhost
    inst.send(SENDER, f"{ME}@ourdomain.example", b"Subject: ours\r\n\r\nhi\r\n")
    inst.wait_log(rf"to=<{ME}@ourdomain\.example>, relay=local, .*status=sent")
    assert setup.relayed() == []


CLASSIC_FORMS = [
    f"{ME}%remote.example@ourdomain.example",  # percent hack
    f"remote.example!{ME}@ourdomain.example",  # bang path
    f"@ourdomain.example:{ME}@remote.example",  # source route
    f'"{ME}@remote.example"@ourdomain.example',  # quoted local part
    f'"{ME}%remote.example"@ourdomain.example',
    f'"remote.example!{ME}"@ourdomain.example',
    f"{ME}@remote.example@ourdomain.example",
    f"{ME}@remote.example.",  # trailing dot
    f"{ME}@REMOTE.EXAMPLE",
    f"{ME}@[192.0.2.1]",  # an address literal not ours
    f"{ME}%remote.example@[127.0.0.1]",  # routed through one that is
    f"{ME}%remote.example",  # routing operators without a domain
    f"remote.example!{ME}",
    f"{ME}@127.0.0.1",  # a bare address is no literal
    f"{ME}@remote.example.ourdomain.example",
    f"{ME}@üb.example",
]


def test_classic_relay_address_forms_are_denied(setup: Setup) -> None:
    replies = rcpt_replies(setup.inst, CLASSIC_FORMS)
    for form, (code, text) in replies.items():
        assert code == 554 and RELAY_DENIED.fullmatch(text), (form, code, text)
    time.sleep(1)
    assert setup.relayed() == []
