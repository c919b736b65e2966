"""Relay control end to end: a client outside mynetworks, without AUTH, against a real
instance whose relayhost is a scripted SMTP server on loopback. Whatever smtpd accepts
and then sends to that server is mail relayed for a stranger, so each test asserts the
reply and what happened to the mail: delivered here (``relay=local``), or nothing at the
relayhost.

The instance: mydestination has ourdomain.example, myorigin is remote.example (a domain
this host is not the destination of, as on a host whose domain's mail goes elsewhere),
relay_domains is relay.example, an access table says OK for both domains (as old
configurations did before relay_domains), parent_domain_matches_subdomains lists neither
relay_domains nor smtpd_access_maps, recipient_delimiter is ``+``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from harness import ME, Instance
from policy_recorder import PolicyRecorder
from scripted_smtp import ScriptedServer
from smtpd_helpers import RawSMTP

SENDER = "alice@client.example"
RELAY_DENIED = re.compile(rb"5\.7\.1 <.*>: Relay access denied")


@dataclass
class Setup:
    inst: Instance
    sink: ScriptedServer
    policy: PolicyRecorder

    def relayed(self) -> list[bytes]:
        """The RCPT commands the relayhost has seen, but for the notices to postmaster
        (@$myorigin) that a server configuration error sends (notify_classes software)."""
        return [line for line in self.sink.received if line.upper().startswith(b"RCPT")
                and line != b"RCPT TO:<postmaster@remote.example>\r\n"]


@pytest.fixture(scope="module")
def setup() -> Iterator[Setup]:
    with ScriptedServer() as sink:
        inst = Instance()
        try:
            # the classic relay_domains of old: "our domains OK" in an access table
            relay_table = inst.write("etc/relay_access", """\
two@remote.example 250 2.0.0 fine
ourdomain.example OK
relay.example OK
""")
            rcpt_table = inst.write("etc/rcpt_access", f"""\
{ME}+typo@ourdomain.example REJCT spam trap
{ME}+tab@ourdomain.example REJECT\tspam trap
{ME}+table@ourdomain.example check_client_access inline:{{127.0.0.1=OK}}
""")
            with PolicyRecorder(path=str(inst.base / "policy.sock")) as policy:
                inst.set(mynetworks="192.0.2.0/24",  # the client, 127.0.0.1, is a stranger
                         relayhost=f"[127.0.0.1]:{sink.port}",
                         mydestination="$myhostname, localhost, ourdomain.example",
                         myorigin="remote.example", recipient_delimiter="+",
                         smtpd_error_sleep_time="0", smtpd_soft_error_limit="100",
                         smtpd_hard_error_limit="100", relay_domains="relay.example",
                         # as Postfix's default, but for relay_domains and access tables
                         parent_domain_matches_subdomains="debug_peer_list,"
                         "fast_flush_domains,mynetworks",
                         smtpd_relay_restrictions=f"check_recipient_access texthash:"
                         f"{relay_table}, permit_mynetworks, reject_unauth_destination",
                         smtpd_recipient_restrictions=f"check_recipient_access texthash:"
                         f"{rcpt_table}, check_policy_service {policy.spec}")
                inst.start()
                yield Setup(inst, sink, policy)
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
    before = setup.relayed()
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
    assert setup.relayed() == before


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
    f"{ME}@remote.example.ourdomain.example",
    f"{ME}@üb.example",
]


def test_classic_relay_address_forms_are_denied(setup: Setup) -> None:
    before = setup.relayed()
    replies = rcpt_replies(setup.inst, CLASSIC_FORMS)
    for form, (code, text) in replies.items():
        assert code == 554 and RELAY_DENIED.fullmatch(text), (form, code, text)
    time.sleep(1)
    assert setup.relayed() == before


def test_an_access_table_is_asked_for_the_address_as_delivered(setup: Setup) -> None:
    """``ourdomain.example OK`` in a recipient access table: Postfix asks the table for
    the resolved address (user%remote@ourdomain is user@remote: not found), and an OK
    for a recipient that stays routed (user@remote@relay.example) counts as DUNNO. Asked
    as the client spelled it, the OK let every routing form through to remote.example."""
    before = setup.relayed()
    forms = [f"{ME}%remote.example@ourdomain.example", f"remote.example!{ME}@ourdomain.example",
             f'"{ME}@remote.example"@ourdomain.example', f'"{ME}@remote.example"@relay.example',
             f"{ME}%remote.example@relay.example"]
    replies = rcpt_replies(setup.inst, forms)
    for form, (code, text) in replies.items():
        assert code == 554 and RELAY_DENIED.fullmatch(text), (form, code, text)
    time.sleep(1)
    assert setup.relayed() == before


def test_relay_domains_without_parent_matching_takes_no_subdomain(setup: Setup) -> None:
    """relay_domains = relay.example, not in parent_domain_matches_subdomains: relay
    for relay.example only (Postfix's match_parent_style), not for sub.relay.example."""
    before = setup.relayed()
    inst = setup.inst
    replies = rcpt_replies(inst, ["u@sub.relay.example"])
    assert replies == {"u@sub.relay.example": (
        554, b"5.7.1 <u@sub.relay.example>: Relay access denied")}
    inst.send(SENDER, "u@relay.example", b"Subject: relayed\r\n\r\nhi\r\n")
    inst.wait_log(r"to=<u@relay\.example>, relay=127\.0\.0\.1\[127\.0\.0\.1\]:\d+, .*status=sent")
    assert setup.relayed() == before + [b"RCPT TO:<u@relay.example>\r\n"]


BAD_SYNTAX_FORMS = [
    f"{ME}@",  # no domain
    f"{ME}@@ourdomain.example",  # ours, then no domain
    f"{ME}@ourdomain.example..",  # only one trailing dot goes
    f"{ME}@.ourdomain.example",
    f"{ME}@127.0.0.1",  # a bare address is no literal
    f"{ME}@[127.1]",
    f"{ME}@[::1]",  # IPv6 needs its tag: [IPv6:::1]
    f"{ME}%ourdomain.example..@ourdomain.example",  # what is left after ours goes
]


def test_addresses_that_resolve_to_no_domain_are_bad_syntax(setup: Setup) -> None:
    """Postfix's smtpd_check_addr: 501 when the address resolves to no valid domain
    (these went to a local user, as ourdomain.example.. did)."""
    inst = setup.inst
    replies = rcpt_replies(inst, BAD_SYNTAX_FORMS)
    for form, reply in replies.items():
        assert reply == (501, b"5.1.3 Bad recipient address syntax"), form
    inst.wait_log(rf"warning: Illegal address syntax from localhost\[127\.0\.0\.1\] in RCPT "
                  rf"command: <{ME}@ourdomain\.example\.\.>")
    with inst.smtp() as c:
        c.ehlo()
        assert c.mail("alice@client.example.") == (250, b"2.1.0 Ok")
        c.rset()
        assert c.mail("alice@") == (501, b"5.1.7 Bad sender address syntax")
        # without SMTPUTF8, no domain in UTF-8 (smtplib cannot send it otherwise)
        c.send("MAIL FROM:<a@client.example>\r\nRCPT TO:<u@\u00fcb.example>\r\n".encode())
        assert c.getreply() == (250, b"2.1.0 Ok")
        assert c.getreply() == (501, b"5.1.3 Bad recipient address syntax")


def test_access_values_that_are_no_action_are_server_errors(setup: Setup) -> None:
    """As Postfix's check_table_result: an unknown action, a ``2NN`` reply and a value
    naming a table are ``451 4.3.5 Server configuration error``, never a pass; an action
    ends at a tab as at a space."""
    before = setup.relayed()
    inst = setup.inst
    replies = rcpt_replies(inst, ["two@remote.example", f"{ME}+typo@ourdomain.example",
                                  f"{ME}+table@ourdomain.example", f"{ME}+tab@ourdomain.example"])
    error = (451, b"4.3.5 Server configuration error")
    assert replies == {
        "two@remote.example": error,
        f"{ME}+typo@ourdomain.example": error,
        f"{ME}+table@ourdomain.example": error,
        f"{ME}+tab@ourdomain.example": (554, f"5.7.1 <{ME}+tab@ourdomain.example>: Recipient "
                                             "address rejected: spam trap".encode()),
    }
    inst.wait_log(r"NOQUEUE: reject: RCPT from localhost\[127\.0\.0\.1\]: 451 4\.3\.5 Server "
                  rf"configuration error; from=<{SENDER}> to=<two@remote\.example> ")
    inst.wait_log(r'warning: unknown smtpd restriction: "250"')
    inst.wait_log(r'warning: unknown smtpd restriction: "REJCT"')
    inst.wait_log(r"warning: access table texthash:\S+ has entry with lookup table: "
                  r"check_client_access inline:\{127\.0\.0\.1=OK\}")
    time.sleep(1)
    assert setup.relayed() == before


def test_a_policy_reply_that_recurses_is_a_server_error(setup: Setup) -> None:
    """A policy server answering a restriction list that asks it again: Postfix stops
    after 100 levels with 451 4.3.5."""
    policy = setup.policy
    policy.action = f"check_policy_service {policy.spec}"
    try:
        replies = rcpt_replies(setup.inst, [f"{ME}@ourdomain.example"])
    finally:
        policy.action = "dunno"
    assert replies == {f"{ME}@ourdomain.example": (451, b"4.3.5 Server configuration error")}
    setup.inst.wait_log(rf"warning: access table {re.escape(policy.spec)} entry "
                        rf"check_policy_service {re.escape(policy.spec)} causes unreasonable "
                        "recursion")


def test_a_negated_pattern_file_negates_the_files_it_names(new_instance) -> None:  # type: ignore[no-untyped-def]
    """mynetworks = !/outer, where outer names /inner with two networks: both are out
    of mynetworks (Postfix puts the ! before every pattern the files give). The second
    one, the client's, once came out trusted, and a stranger could relay."""
    inst: Instance = new_instance()
    inner = inst.write("etc/inner_networks", "192.0.2.0/24\n127.0.0.1\n")
    outer = inst.write("etc/outer_networks", f"{inner}\n")
    inst.set(mynetworks=f"!{outer}",
             smtpd_relay_restrictions="permit_mynetworks, reject_unauth_destination")
    inst.start()
    replies = rcpt_replies(inst, ["bob@remote.example", f"{ME}@localhost"])
    assert replies["bob@remote.example"] == (554, b"5.7.1 <bob@remote.example>: Relay access "
                                                  b"denied")
    assert replies[f"{ME}@localhost"][0] == 250


def test_routing_operators_this_host_does_not_take_are_still_routing(new_instance) -> None:  # type: ignore[no-untyped-def]
    """allow_percent_hack = no, and local mail goes on to a mail hub (local_transport
    smtp:, no local_recipient_maps): user%remote@ourdomain is not rewritten here, but
    the hub may route it, so it is no destination of ours (Postfix's ROUTED flag holds
    for every address class). It once went to the hub as it was."""
    with ScriptedServer() as hub:
        inst: Instance = new_instance()
        inst.set(mynetworks="192.0.2.0/24", allow_percent_hack="no",
                 mydestination="$myhostname, localhost, ourdomain.example",
                 local_transport=f"smtp:[127.0.0.1]:{hub.port}", local_recipient_maps="",
                 smtpd_relay_restrictions="permit_mynetworks, reject_unauth_destination")
        inst.start()
        replies = rcpt_replies(inst, ["root%remote.example@ourdomain.example"])
        assert replies == {"root%remote.example@ourdomain.example": (
            554, b"5.7.1 <root%remote.example@ourdomain.example>: Relay access denied")}
        inst.send(SENDER, "root@ourdomain.example", b"Subject: for the hub\r\n\r\nhi\r\n")
        inst.wait_log(r"to=<root@ourdomain\.example>, relay=127\.0\.0\.1\[127\.0\.0\.1\]:\d+, "
                      r".*status=sent")
        # an empty local part is MAILER-DAEMON (Postfix's resolve), and goes on as such
        inst.send(SENDER, "@ourdomain.example", b"Subject: nobody\r\n\r\nhi\r\n")
        inst.wait_log(r'to=<MAILER-DAEMON@ourdomain\.example>, orig_to=<""@ourdomain\.example>, '
                      r"relay=127\.0\.0\.1\[127\.0\.0\.1\]:\d+, .*status=sent")
        assert [line for line in hub.received if line.startswith(b"RCPT")] == [
            b"RCPT TO:<root@ourdomain.example>\r\n",
            b"RCPT TO:<MAILER-DAEMON@ourdomain.example>\r\n"]


def test_accepted_mail_goes_where_smtpd_judged_it_to_go(setup: Setup) -> None:
    """user%ourdomain@ourdomain and "user@ourdomain"@ourdomain are user@ourdomain for
    smtpd (a known user: accepted); the agent must get that address, as Postfix's qmgr
    hands it on, not the spelling the client sent: local once bounced those as unknown
    users, to a sender anyone can forge (the bounce went out through the relayhost)."""
    inst = setup.inst
    before = setup.relayed()
    forms = [f"{ME}%ourdomain.example@ourdomain.example", f'"{ME}@ourdomain.example"@ourdomain.example',
             f"ourdomain.example!{ME}@ourdomain.example"]
    for form in forms:
        with inst.smtp() as c:
            c.ehlo()
            c.mail(SENDER)
            assert c.rcpt(form)[0] == 250, form
            assert c.data(f"Subject: {form}\r\n\r\nhi\r\n".encode())[0] == 250
    inst.wait_log(rf"to=<{ME}@ourdomain\.example>, orig_to=<.*ourdomain\.example>, relay=local, "
                  r".*status=sent", count=3)
    time.sleep(1)
    assert "status=bounced" not in inst.log()
    assert setup.relayed() == before


def test_no_command_changes_who_the_client_is(setup: Setup) -> None:
    """Without smtpd_upstream_proxy_protocol a PROXY line is no header, and XCLIENT and
    XFORWARD are not offered to anyone: each is an unknown command, and the stranger
    stays a stranger."""
    with RawSMTP(setup.inst.port) as s:
        s.reply()  # the banner
        for line in (b"PROXY TCP4 192.0.2.1 127.0.0.1 4000 25", b"XCLIENT ADDR=192.0.2.1",
                     b"XFORWARD ADDR=192.0.2.1"):
            s.send(line + b"\r\n")
            assert s.reply() == b"500 5.5.2 Error: command not recognized\r\n", line
        s.send(b"EHLO client.example\r\n")
        assert s.reply().startswith(b"250 ")
        s.send(b"MAIL FROM:<a@client.example>\r\nRCPT TO:<bob@remote.example>\r\n")
        assert s.reply() == b"250 2.1.0 Ok\r\n"
        assert s.reply() == b"554 5.7.1 <bob@remote.example>: Relay access denied\r\n"
    setup.inst.wait_log(r"NOQUEUE: reject: RCPT from localhost\[127\.0\.0\.1\]: 554 5\.7\.1 "
                        r"<bob@remote\.example>: Relay access denied")


def test_recipient_checks_in_the_client_and_sender_lists_apply_at_rcpt(new_instance) -> None:  # type: ignore[no-untyped-def]
    """With smtpd_delay_reject (the default) the client, helo and sender lists run at
    RCPT, and Postfix runs a recipient check in them whenever it has the recipient:
    reject_unauth_destination in smtpd_client_restrictions answers 554 before the
    default relay list's 454; check_recipient_access in smtpd_sender_restrictions keeps
    a protected address from strangers. Both were passed over as DUNNO."""
    inst: Instance = new_instance()
    table = inst.write("etc/protected", f"{ME}@localhost REJECT internal only\n")
    inst.set(mynetworks="192.0.2.0/24",
             smtpd_client_restrictions="permit_mynetworks, reject_unauth_destination",
             smtpd_sender_restrictions=f"permit_mynetworks, check_recipient_access "
                                       f"texthash:{table}")
    inst.start()
    assert rcpt_replies(inst, ["bob@remote.example", f"{ME}@localhost"]) == {
        "bob@remote.example": (554, b"5.7.1 <bob@remote.example>: Relay access denied"),
        f"{ME}@localhost": (554, f"5.7.1 <{ME}@localhost>: Recipient address rejected: "
                                 "internal only".encode())}


def test_without_delay_reject_a_refused_client_gets_nothing_but_quit(new_instance) -> None:  # type: ignore[no-untyped-def]
    """smtpd_delay_reject = no: smtpd_client_restrictions run at connect, as in Postfix;
    a refusal is the greeting, and every command but QUIT (AUTH, VRFY, ETRN, EHLO, ...)
    gets 503. The client list ran only at MAIL, so a refused client could still VRFY
    addresses or try passwords."""
    inst: Instance = new_instance()
    inst.set(smtpd_delay_reject="no", smtpd_error_sleep_time="0",
             smtpd_client_restrictions="check_client_access inline:{127.0.0.2=REJECT}")
    inst.start()
    with RawSMTP(inst.port, source="127.0.0.2") as s:
        assert s.reply() == (b"554 5.7.1 <localhost[127.0.0.2]>: Client host rejected: "
                             b"Access denied\r\n")
        for command in (b"EHLO client.example", b"VRFY root", b"ETRN example.com",
                        b"AUTH PLAIN AGZvbwBiYXI=", b"MAIL FROM:<a@client.example>", b"BOGUS"):
            s.send(command + b"\r\n")
            assert s.reply() == b"503 5.7.0 Error: access denied for localhost[127.0.0.2]\r\n"
        s.send(b"QUIT\r\n")
        assert s.reply() == b"221 2.0.0 Bye\r\n"
    inst.wait_log(r"NOQUEUE: reject: CONNECT from localhost\[127\.0\.0\.2\]: 554 5\.7\.1 "
                  r"<localhost\[127\.0\.0\.2\]>: Client host rejected: Access denied; proto=SMTP")
    # any other client: the banner, and mail as usual
    inst.send(SENDER, f"{ME}@localhost", b"Subject: welcome\r\n\r\nhi\r\n")


def test_vrfy_runs_the_recipient_checks(setup: Setup) -> None:
    """VRFY answers as RCPT would, as Postfix's smtpd_check_rcpt: a stranger learns
    nothing a refusal hides (the relay decision, an access table's REJECT, a policy
    server's answer); only the local recipient check ran."""
    with RawSMTP(setup.inst.port) as s:
        s.reply()
        for command, reply in (
                (b"VRFY bob@remote.example",
                 b"554 5.7.1 <bob@remote.example>: Relay access denied"),
                (f"VRFY {ME}+tab@ourdomain.example".encode(),
                 f"554 5.7.1 <{ME}+tab@ourdomain.example>: Recipient address rejected: spam "
                 "trap".encode()),
                (f"VRFY {ME}@ourdomain.example".encode(),
                 f"252 2.0.0 {ME}@ourdomain.example".encode()),
                (b"VRFY nosuch@ourdomain.example",
                 b"550 5.1.1 <nosuch@ourdomain.example>: Recipient address rejected: User "
                 b"unknown in local recipient table"),
                (f"VRFY {ME}@".encode(), b"501 5.1.3 Bad recipient address syntax")):
            s.send(command + b"\r\n")
            assert s.reply() == reply + b"\r\n", command
    setup.inst.wait_log(r"NOQUEUE: reject: VRFY from localhost\[127\.0\.0\.1\]: 554 5\.7\.1 "
                        r"<bob@remote\.example>: Relay access denied; to=<bob@remote\.example> ")
