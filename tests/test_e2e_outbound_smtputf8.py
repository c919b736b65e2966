"""SMTPUTF8 on the way out: smtpd and cleanup record that the client asked for it and
where the message needs it; the smtp agent passes it on to a peer that offers it, and
bounces the message (5.6.7) for a peer that does not when the message needs it.

Peers: aiosmtpd servers, one with SMTPUTF8 and one without.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from aiosmtpd.controller import Controller
from harness import ME, Instance, free_port

LOCAL = f"{ME}@localhost"


class Recorder:
    def __init__(self) -> None:
        self.envelopes: list[tuple[str, list[str], list[str], bytes]] = []

    async def handle_DATA(self, server, session, envelope) -> str:  # type: ignore[no-untyped-def]
        self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos),
                               list(envelope.mail_options), envelope.original_content))
        return "250 2.0.0 Ok: queued as UTF8PEER"


@pytest.fixture
def utf8_peers() -> Iterator[dict[str, tuple[Controller, Recorder]]]:
    made = {}
    for name, enabled in (("utf8", True), ("ascii", False)):
        recorder = Recorder()
        controller = Controller(recorder, hostname="127.0.0.1", port=free_port(),
                                server_hostname=f"{name}.peer.example", enable_SMTPUTF8=enabled)
        controller.start()
        made[name] = (controller, recorder)
    yield made
    for controller, _ in made.values():
        controller.stop()


def send(inst: Instance, sender: str, rcpts: list[str], message: bytes) -> None:
    with inst.smtp() as client:
        client.ehlo()
        client.sendmail(sender, rcpts, message, mail_options=["SMTPUTF8", "BODY=8BITMIME"])


def test_smtputf8_passed_on_or_bounced_with_postfix_reason(new_instance, utf8_peers) -> None:  # type: ignore[no-untyped-def]
    utf8, utf8_rec = utf8_peers["utf8"]
    ascii_peer, ascii_rec = utf8_peers["ascii"]
    inst: Instance = new_instance()
    inst.set(transport_maps=f"inline:{{ utf8.example=smtp:[127.0.0.1]:{utf8.port}, "
                            f"ascii.example=smtp:[127.0.0.1]:{ascii_peer.port} }}")
    inst.start()
    subject = "Subject: Grüße\r\n\r\nbody\r\n".encode()
    # UTF-8 in the envelope: crosses with SMTPUTF8 to the peer that offers it
    send(inst, LOCAL, ["jürgen@utf8.example"], subject)
    inst.wait_log(r"to=<jürgen@utf8\.example>, .*status=sent \(250 2\.0\.0 Ok: queued as "
                  r"UTF8PEER\)")
    (sender, rcpts, options, content) = utf8_rec.envelopes[0]
    assert rcpts == ["jürgen@utf8.example"] and "SMTPUTF8" in options
    assert "Subject: Grüße".encode() in content
    # the same to a peer without SMTPUTF8: not sent, bounced as Postfix does
    send(inst, LOCAL, ["jürgen@ascii.example"], subject)
    relay = rf"relay=127\.0\.0\.1\[127\.0\.0\.1\]:{ascii_peer.port}"
    inst.wait_log(rf"to=<jürgen@ascii\.example>, {relay}, .*dsn=5\.6\.7, status=bounced "
                  r"\(SMTPUTF8 is required, but was not offered by host "
                  r"127\.0\.0\.1\[127\.0\.0\.1\]\)")
    # UTF-8 only in a header: needed all the same
    send(inst, LOCAL, ["plain@ascii.example"], subject)
    inst.wait_log(rf"to=<plain@ascii\.example>, {relay}, .*dsn=5\.6\.7, status=bounced "
                  r"\(SMTPUTF8 is required")
    # asked for, but nothing in the message needs it: sent, without SMTPUTF8
    send(inst, LOCAL, ["ascii@ascii.example"], b"Subject: plain\r\n\r\nbody\r\n")
    inst.wait_log(r"to=<ascii@ascii\.example>, .*status=sent \(250 2\.0\.0 Ok: queued as "
                  r"UTF8PEER\)")
    assert [e[1] for e in ascii_rec.envelopes] == [["ascii@ascii.example"]]
    assert "SMTPUTF8" not in ascii_rec.envelopes[0][2]
    # not asked for: UTF-8 in a header is sent as it is (8BITMIME), as Postfix does
    with inst.smtp() as client:
        client.ehlo()
        client.sendmail(LOCAL, ["raw@ascii.example"], subject, mail_options=["BODY=8BITMIME"])
    inst.wait_log(r"to=<raw@ascii\.example>, .*status=sent")
    assert "Subject: Grüße".encode() in ascii_rec.envelopes[1][3]


def test_sendmail_mail_asks_for_smtputf8_by_itself(new_instance, utf8_peers) -> None:  # type: ignore[no-untyped-def]
    """smtputf8_autodetect_classes (default: sendmail, verify): mail from the sendmail
    command with UTF-8 asks for SMTPUTF8 without being told, ASCII mail does not."""
    utf8, utf8_rec = utf8_peers["utf8"]
    ascii_peer, ascii_rec = utf8_peers["ascii"]
    inst: Instance = new_instance()
    inst.set(transport_maps=f"inline:{{ utf8.example=smtp:[127.0.0.1]:{utf8.port}, "
                            f"ascii.example=smtp:[127.0.0.1]:{ascii_peer.port} }}")
    inst.start()
    for rcpt in ("jörg@utf8.example", "jörg@ascii.example", "plain@ascii.example"):
        inst.tool("sendmail", "-f", "alice@example.org", rcpt,
                  input="Subject: from sendmail\n\nbody\n", check=True)
    inst.wait_log(r"to=<jörg@utf8\.example>, .*status=sent")
    assert "SMTPUTF8" in utf8_rec.envelopes[0][2]
    inst.wait_log(r"to=<jörg@ascii\.example>, .*dsn=5\.6\.7, status=bounced \(SMTPUTF8 is "
                  r"required, but was not offered by host 127\.0\.0\.1\[127\.0\.0\.1\]\)")
    inst.wait_log(r"to=<plain@ascii\.example>, .*status=sent")
    assert "SMTPUTF8" not in ascii_rec.envelopes[0][2]
