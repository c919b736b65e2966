"""End to end: where trivial-rewrite's rules send mail, compared with Debian's Postfix 3.7.

With relayhost = [127.0.0.1]:9 (nothing listening) and this transport table

    colon.example      :
    err.example        error:
    retry.example      retry:

Postfix logs, for mail to each:

    to=<u@colon.example>, relay=none, ..., dsn=4.4.1, status=deferred (connect to 127.0.0.1[127.0.0.1]:9: Connection refused)
    to=<u@err.example>, relay=none, ..., dsn=5.0.0, status=bounced (Address is undeliverable)
    to=<u@retry.example>, relay=none, ..., dsn=4.0.0, status=deferred (Address is undeliverable)

(``:`` keeps the transport and the nexthop, relayhost included; an error or retry
transport without a nexthop has no reason of its own).
"""

from __future__ import annotations

import re

import pytest
from harness import ME, Instance, free_port
from test_e2e_outbound import sink  # noqa: F401 (the fixture: a running smtp-sink)

MESSAGE = b"Subject: x\r\n\r\nx\r\n"


def test_empty_transport_entries_keep_or_reset_what_postfix_does(new_instance, sink) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    sink.start()
    inst: Instance = new_instance()
    table = inst.write("etc/transport", "colon.example :\nerr.example error:\n"
                                        "retry.example retry:\n")
    inst.set(relayhost=f"[127.0.0.1]:{sink.port}", transport_maps=f"texthash:{table}")
    inst.start()
    # submitted with sendmail: smtpd refuses the last two (550 5.1.1 / 450 4.1.1 ...
    # Recipient address rejected: Address is undeliverable), as Postfix's does
    inst.tool("sendmail", "-f", "alice@example.org", "u@colon.example", "u@err.example",
              "u@retry.example", input="Subject: x\n\nx\n", check=True)
    inst.wait_log(rf"\w+: to=<u@colon.example>, relay=127\.0\.0\.1\[127\.0\.0\.1\]:"
                  rf"{sink.port}, .*status=sent")
    inst.wait_log(r"\w+: to=<u@err.example>, relay=none, .*dsn=5\.0\.0, "
                  r"status=bounced \(Address is undeliverable\)")
    inst.wait_log(r"\w+: to=<u@retry.example>, relay=none, .*dsn=4\.0\.0, "
                  r"status=deferred \(Address is undeliverable\)")
    with inst.smtp() as client:
        client.ehlo("x")
        client.mail("alice@example.org")
        assert client.rcpt("u@err.example") == (
            550, b"5.1.1 <u@err.example>: Recipient address rejected: Address is undeliverable")
        assert client.rcpt("u@retry.example") == (
            450, b"4.1.1 <u@retry.example>: Recipient address rejected: Address is undeliverable")


def test_sender_dependent_relayhost_takes_extensions_off_and_dunno_means_relayhost(  # type: ignore[no-untyped-def]
        new_instance, sink) -> None:  # noqa: F811
    """Postfix 3.7: the sender is looked up as mail_addr_find() does (user+ext@domain, then
    user@domain, then @domain); DUNNO is no relayhost of its own: $relayhost applies."""
    sink.start()
    inst: Instance = new_instance()
    dead = free_port()
    inst.set(relayhost=f"[127.0.0.1]:{dead}", recipient_delimiter="+",
             sender_dependent_relayhost_maps=f"inline:{{ b@s.example=[127.0.0.1]:{sink.port}, "
                                             "d@s.example=DUNNO }")
    inst.start()
    tagged = inst.send("b+tag@s.example", "x@remote.example", MESSAGE)
    inst.wait_log(rf"{tagged}: to=<x@remote.example>, relay=127\.0\.0\.1\[127\.0\.0\.1\]:"
                  rf"{sink.port}, .*status=sent")
    dunno = inst.send("d@s.example", "y@remote.example", MESSAGE)
    inst.wait_log(rf"{dunno}: to=<y@remote.example>, relay=none, .*status=deferred "
                  rf"\(connect to 127\.0\.0\.1\[127\.0\.0\.1\]:{dead}: Connection refused\)")


def test_sender_dependent_default_transport_and_relayhost_precedence(new_instance, sink) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    """As Debian's Postfix 3.7 with relayhost = [127.0.0.1]:DEAD and the table below:
    s1 goes to its own nexthop, s2 (DUNNO) by default_transport to relayhost, s3+e (found
    with its extension) to the error transport, anyone at y.example by relay to relayhost:

        to=<u@r1.example>, ... status=deferred (connect to 127.0.0.1[127.0.0.1]:8: ...)
        to=<u@r2.example>, ... status=deferred (connect to 127.0.0.1[127.0.0.1]:9: ...)
        to=<u@r3.example>, relay=none, ... dsn=5.7.1, status=bounced (nope)
        to=<u@r4.example>, ... status=deferred (connect to 127.0.0.1[127.0.0.1]:9: ...)
    """
    sink.start()
    inst: Instance = new_instance()
    dead = free_port()
    table = inst.write("etc/sdd", f"s1@x.example smtp:[127.0.0.1]:{sink.port}\n"
                                  "s2@x.example DUNNO\ns3+e@x.example error:5.7.1 nope\n"
                                  "@y.example relay\n")
    inst.set(relayhost=f"[127.0.0.1]:{dead}", recipient_delimiter="+",
             sender_dependent_default_transport_maps=f"texthash:{table}")
    inst.start()
    own = inst.send("s1@x.example", "u@r1.example", MESSAGE)
    inst.wait_log(rf"{own}: to=<u@r1.example>, relay=127\.0\.0\.1\[127\.0\.0\.1\]:"
                  rf"{sink.port}, .*status=sent")
    refused = rf"status=deferred \(connect to 127\.0\.0\.1\[127\.0\.0\.1\]:{dead}: Connection refused\)"
    dunno = inst.send("s2@x.example", "u@r2.example", MESSAGE)
    inst.wait_log(rf"postfix/smtp\[\d+\]: {dunno}: to=<u@r2.example>, relay=none, .*{refused}")
    inst.tool("sendmail", "-f", "s3+e@x.example", "u@r3.example", input="Subject: x\n\nx\n",
              check=True)
    inst.wait_log(r"\w+: to=<u@r3.example>, relay=none, .*dsn=5\.7\.1, status=bounced \(nope\)")
    relayed = inst.send("q@y.example", "u@r4.example", MESSAGE)
    inst.wait_log(rf"{relayed}: to=<u@r4.example>, relay=none, .*{refused}")
    with inst.smtp() as client:  # smtpd resolves with the sender, as Postfix's
        client.ehlo("x")
        client.mail("s3+e@x.example")
        assert client.rcpt("u@r3.example") == (
            550, b"5.7.1 <u@r3.example>: Recipient address rejected: nope")
    assert "sender_dependent_default_transport_maps is not implemented" not in inst.log()


def test_a_transport_table_that_cannot_be_read_defers_with_postfix_words(new_instance) -> None:  # type: ignore[no-untyped-def]
    """Debian's Postfix 3.7 with transport_maps = hash:/nonexistent/transport, for mail
    submitted with sendmail (smtpd would answer 451 4.3.0 Temporary lookup failure):

        trivial-rewrite: warning: hash:/nonexistent/transport is unavailable. open database ...
        trivial-rewrite: warning: transport_maps lookup failure
        error: ID: to=<u@x.example>, relay=none, ..., dsn=4.3.0, status=deferred (address resolver failure)
    """
    inst: Instance = new_instance()
    inst.set(transport_maps=f"hash:{inst.base}/etc/missing")
    inst.start()
    with inst.smtp() as client:
        client.ehlo("x")
        client.mail("alice@example.org")
        assert client.rcpt("u@x.example") == (
            451, b"4.3.0 <u@x.example>: Temporary lookup failure")
    inst.tool("sendmail", "-f", "alice@example.org", "u@x.example", input="Subject: x\n\nx\n",
              check=True)
    inst.wait_log(r"postfix/qmgr\[\d+\]: \w+: to=<u@x\.example>, relay=none, .*dsn=4\.3\.0, "
                  r"status=deferred \(address resolver failure\)")
    for daemon in ("smtpd", "qmgr"):
        assert re.search(rf"postfix/{daemon}\[\d+\]: warning: transport_maps lookup failure$",
                         inst.log(), re.M)
    assert re.search(r"warning: transport_maps: open database .*/etc/missing\.lmdb: No such file",
                     inst.log())


def test_relocated_relay_recipients_and_error_transports_are_refused_at_rcpt(new_instance) -> None:  # type: ignore[no-untyped-def]
    """The RCPT replies of Debian's Postfix 3.7 with the same settings (its
    check_rcpt_maps refuses what resolves to the error or retry transport, and
    relay_domains recipients that relay_recipient_maps does not list)."""
    inst: Instance = new_instance()
    relocated = inst.write("etc/relocated", "gone@localhost new@else.example\n"
                                            "old@relay.example other@x.example\n"
                                            "moved@va.example there@x.example\n")
    relay_rcpts = inst.write("etc/relay_recipients", "ok@relay.example x\n")
    transport = inst.write("etc/transport", "err.example error:5.7.9 nope\n"
                                            "retry.example retry:4.2.2 later\n")
    inst.set(relay_domains="relay.example", relocated_maps=f"texthash:{relocated}",
             relay_recipient_maps=f"texthash:{relay_rcpts}", transport_maps=f"texthash:{transport}",
             local_recipient_maps="", virtual_alias_domains="va.example")
    inst.start()
    expected = {
        "gone@localhost": (550, b"5.1.6 <gone@localhost>: Recipient address rejected: "
                                b"User has moved to new@else.example"),
        "old@relay.example": (550, b"5.1.6 <old@relay.example>: Recipient address rejected: "
                                   b"User has moved to other@x.example"),
        "ok@relay.example": (250, b"2.1.5 Ok"),
        "nok@relay.example": (550, b"5.1.1 <nok@relay.example>: Recipient address rejected: "
                                   b"User unknown in relay recipient table"),
        "u@err.example": (550, b"5.7.9 <u@err.example>: Recipient address rejected: nope"),
        "u@retry.example": (450, b"4.2.2 <u@retry.example>: Recipient address rejected: later"),
        "moved@va.example": (550, b"5.1.6 <moved@va.example>: Recipient address rejected: "
                                  b"User has moved to there@x.example"),
        "who@va.example": (550, b"5.1.1 <who@va.example>: Recipient address rejected: "
                                b"User unknown in virtual alias table"),
    }
    with inst.smtp() as client:
        client.ehlo("x")
        client.mail("alice@example.org")
        assert {rcpt: client.rcpt(rcpt) for rcpt in expected} == expected
    assert "is not implemented" not in inst.log() and "refusing to run" not in inst.log()


def test_relocated_mail_from_a_local_submission_bounces_with_the_new_address(new_instance) -> None:  # type: ignore[no-untyped-def]
    """What smtpd cannot refuse (sendmail) bounces as Postfix's error agent does:
    ``to=<gone@localhost>, relay=none, ..., dsn=5.1.6, status=bounced (User has moved to
    new@else.example)``."""
    inst: Instance = new_instance()
    relocated = inst.write("etc/relocated", "gone@localhost new@else.example\n")
    inst.set(relocated_maps=f"texthash:{relocated}")
    inst.start()
    inst.tool("sendmail", "-f", "alice@example.org", "gone@localhost",
              input="Subject: x\n\nx\n", check=True)
    inst.wait_log(r"\w+: to=<gone@localhost>, relay=none, .*dsn=5\.1\.6, "
                  r"status=bounced \(User has moved to new@else\.example\)")


def test_a_transport_nexthop_typo_defers_with_a_warning(new_instance) -> None:  # type: ignore[no-untyped-def]
    """Debian's Postfix 3.7 smtp client stops on such a nexthop (``fatal: missing host
    information in server description: []``, ``fatal: bad network port: 99999 for
    destination: [127.0.0.1]:99999``) and the mail is deferred; it never bounces."""
    inst: Instance = new_instance()
    table = inst.write("etc/transport", "empty.example smtp:[]\n"
                                        "port.example smtp:[127.0.0.1]:99999\n"
                                        "name.example smtp:bad!host\n")
    inst.set(transport_maps=f"texthash:{table}")
    inst.start()
    queue_id = inst.send("alice@example.org", ["u@empty.example", "u@port.example",
                                               "u@name.example"], MESSAGE)
    for domain, problem in [
            ("empty", r"missing host information in server description: \[\]"),
            ("port", r"bad network port: 99999 for destination: \[127\.0\.0\.1\]:99999"),
            ("name", r"valid hostname or network address required in server description: "
                     r"bad!host")]:
        inst.wait_log(rf"{queue_id}: to=<u@{domain}\.example>, relay=none, .*dsn=4\.3\.5, "
                      rf"status=deferred \({problem}\)")
        inst.wait_log(rf"postfix/smtp\[\d+\]: warning: {problem}$")
    assert "status=bounced" not in inst.log()


def test_a_null_transport_setting_is_named_and_the_mail_waits(new_instance) -> None:  # type: ignore[no-untyped-def]
    """default_transport = :[127.0.0.1]:9 (a nexthop without a transport): Debian's
    Postfix 3.7 logs ``trivial-rewrite: warning: file /etc/postfix/main.cf: parameter
    default_transport: null transport is not allowed`` and keeps the mail."""
    inst: Instance = new_instance()
    inst.set(default_transport=":[127.0.0.1]:9")
    inst.start()
    inst.tool("sendmail", "-f", "alice@example.org", "u@r1.example", input="Subject: x\n\nx\n",
              check=True)
    inst.wait_log(r"postfix/qmgr\[\d+\]: " + re.escape(
        f"warning: file {inst.config_dir}/main.cf: parameter default_transport: null "
        "transport is not allowed"))
    inst.wait_log(r"\w+: to=<u@r1\.example>, relay=none, .*dsn=4\.3\.0, "
                  r"status=deferred \(address resolver failure\)")


def test_recipients_that_tables_rewrite_or_postfix_absorbs_are_not_unknown(new_instance) -> None:  # type: ignore[no-untyped-def]
    """Debian's Postfix 3.7 with local_recipient_maps listing nobody takes a local
    recipient that virtual_alias_maps, canonical_maps or recipient_canonical_maps
    rewrites, and postmaster, MAILER-DAEMON and double-bounce (its check_rcpt_maps);
    everyone else is 550 5.1.1 User unknown in local recipient table. The rewritten
    recipient is delivered."""
    inst: Instance = new_instance()
    empty = inst.write("etc/empty", "")
    inst.set(local_recipient_maps=f"texthash:{empty}",
             virtual_alias_maps=f"inline:{{va@localhost={ME}@localhost}}",
             canonical_maps="inline:{can@localhost=root}",
             recipient_canonical_maps="inline:{rcan@localhost=root}")
    inst.start()
    taken = ["va@localhost", "can@localhost", "rcan@localhost", "postmaster@localhost",
             "MAILER-DAEMON@localhost", "double-bounce@localhost"]
    with inst.smtp() as client:
        client.ehlo("x")
        client.mail("alice@example.org")
        replies = {rcpt: client.rcpt(rcpt) for rcpt in [*taken, "no@localhost"]}
    assert replies == {**{rcpt: (250, b"2.1.5 Ok") for rcpt in taken},
                       "no@localhost": (550, b"5.1.1 <no@localhost>: Recipient address "
                                             b"rejected: User unknown in local recipient table")}
    inst.send("alice@example.org", "va@localhost", MESSAGE)
    assert inst.wait_maildir(1)


def test_virtual_mailbox_domains_without_a_mailbox_table_take_anyone(new_instance) -> None:  # type: ignore[no-untyped-def]
    """virtual_mailbox_domains with an LMTP virtual_transport and no virtual_mailbox_maps
    (the store knows its users): Debian's Postfix 3.7 takes any recipient there (its
    check_rcpt_maps asks virtual_mailbox_maps only when it is set)."""
    inst: Instance = new_instance()
    inst.set(virtual_mailbox_domains="store.example", virtual_transport="lmtp:[127.0.0.1]:9")
    inst.start()
    with inst.smtp() as client:
        client.ehlo("x")
        client.mail("alice@example.org")
        assert client.rcpt("anyone@store.example") == (250, b"2.1.5 Ok")


def test_a_relayhost_list_is_tried_in_order(new_instance, sink) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    """relayhost = [127.0.0.1]:DEAD, [127.0.0.1]:SINK (a list: Postfix 3.5 and later):
    the first refuses the connection, the second takes the mail."""
    sink.start()
    inst: Instance = new_instance()
    dead = free_port()
    inst.set(relayhost=f"[127.0.0.1]:{dead}, [127.0.0.1]:{sink.port}")
    inst.start()
    queue_id = inst.send("alice@example.org", "x@remote.example", MESSAGE)
    inst.wait_log(rf"{queue_id}: to=<x@remote.example>, relay=127\.0\.0\.1\[127\.0\.0\.1\]:"
                  rf"{sink.port}, .*status=sent")


def _throttled_transport(inst: Instance, transport: str, warning: str) -> None:
    """Two messages for a transport whose agent cannot be reached, one after the other:
    as Debian's Postfix 3.7's qmgr (qmgr_deliver: the transport throttled), one warning,
    then each recipient deferred ``mail transport unavailable`` (4.3.0), which mailq
    shows; the second untried, without a second warning."""
    table = inst.write("etc/transport", f"t.example {transport}:\n")
    inst.set(transport_maps=f"texthash:{table}")
    inst.start()
    for rcpt in ("u0@t.example", "u1@t.example"):
        queue_id = inst.send("alice@example.org", rcpt, MESSAGE)
        inst.wait_log(rf"{queue_id}: to=<{re.escape(rcpt)}>, relay=none, .*dsn=4\.3\.0, "
                      r"status=deferred \(mail transport unavailable\)$")
    assert len(re.findall(rf"postfix/qmgr\[\d+\]: warning: {re.escape(warning)}$",
                          inst.log(), re.M)) == 1, inst.log()
    assert inst.tool("mailq").stdout.count("(mail transport unavailable)") == 2
    # A flush revives dead transports at once, as Postfix's QMGR_REQ_FLUSH_DEAD
    # (qmgr_enable_all), not after transport_retry_time (60 s): they are tried again.
    assert inst.tool("postqueue", "-f").returncode == 0
    inst.wait_log(rf"postfix/qmgr\[\d+\]: warning: {re.escape(warning)}$", timeout=30, count=2)


def test_a_transport_that_master_cf_lacks_is_throttled(new_instance) -> None:  # type: ignore[no-untyped-def]
    """transport_maps names ``nosuch:``, which master.cf lacks: Postfix 3.7 logs
    ``warning: connect to transport private/nosuch: No such file or directory``."""
    _throttled_transport(new_instance(), "nosuch",
                         "connect to transport private/nosuch: No such file or directory")


@pytest.mark.root  # spawn's user=nobody
def test_an_agent_that_dies_before_reading_throttles_its_transport(new_instance) -> None:  # type: ignore[no-untyped-def]
    """An agent that closes the connection unread (spawn running /bin/true): its
    transport is throttled and its mail deferred ``mail transport unavailable``, as
    Postfix 3.7's (whose qmgr, writing first, says ``write to process (crash): Broken
    pipe``; ours sends a hello first and says so as Postfix does for a disconnect
    before the agent's first word)."""
    inst: Instance = new_instance()
    with open(inst.config_dir / "master.cf", "a") as f:
        f.write("crash unix - n n - - spawn user=nobody argv=/bin/true\n")
    _throttled_transport(inst, "crash", "private/crash socket: premature disconnect")


# An agent that answers qmgr's hello (attr.py's framing), reads its request for a
# second and dies without a reply.
DYING_AGENT = """#!/bin/sh
printf 'protocol\\000\\031delivery_request_protocolrequests_at_once\\000\\0011\\000'
exec timeout 1 cat >/dev/null
"""


@pytest.mark.root  # spawn's user=nobody
def test_an_agent_that_dies_with_a_request_is_named_in_a_warning(new_instance) -> None:  # type: ignore[no-untyped-def]
    """As Debian's Postfix 3.7's qmgr (qmgr_deliver_final_reply), a warning names the
    agent's socket: ``private/crash socket: malformed response``. (Postfix then moves
    the message to deferred/ without a word on its recipients; ours defers them
    ``unknown mail transport error``, the reason Postfix's qmgr has for it.)"""
    inst: Instance = new_instance()
    agent = inst.write("etc/dying-agent", DYING_AGENT)
    agent.chmod(0o755)
    with open(inst.config_dir / "master.cf", "a") as f:
        f.write(f"crash unix - n n - - spawn user=nobody argv={agent}\n")
    table = inst.write("etc/transport", "t.example crash:\n")
    inst.set(transport_maps=f"texthash:{table}")
    inst.start()
    queue_id = inst.send("alice@example.org", "u@t.example", MESSAGE)
    inst.wait_log(r"postfix/qmgr\[\d+\]: warning: private/crash socket: malformed response$")
    inst.wait_log(rf"{queue_id}: to=<u@t\.example>, relay=none, .*dsn=4\.3\.0, "
                  r"status=deferred \(unknown mail transport error\)$")
