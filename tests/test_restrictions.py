"""pymailsys.smtp.restrictions: list semantics, Postfix's replies, access tables, the start-up check."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from pymailsys import config
from pymailsys.address import resolve
from pymailsys.smtp import restrictions
from pymailsys.smtp.restrictions import DEFER, OK, REJECT, Request


def engine(**values: str) -> restrictions.Engine:
    base = {"myhostname": "mx.example", "mydestination": "$myhostname, localhost",
            "inet_interfaces": "loopback-only", "alias_maps": "", "mynetworks": "10.0.0.0/8"}
    base.update(values)
    return restrictions.Engine(config.Config("/nonexistent", base))


def rcpt(e: restrictions.Engine, recipient: str, addr: str = "192.0.2.1",
         sender: str = "s@example.org", helo: str = "client.example") -> restrictions.Result | None:
    req = Request(client_addr=addr, client_name="unknown", helo=helo, sender=sender,
                  recipient=recipient, protocol="ESMTP")
    return asyncio.run(e.check_rcpt(req))


def test_default_relay_control() -> None:
    e = engine()
    r = rcpt(e, "x@foreign.example")
    assert r is not None and r.action == DEFER
    assert str(r.reply) == "454 4.7.1 <x@foreign.example>: Relay access denied"
    assert rcpt(e, "x@foreign.example", addr="10.1.2.3") is None  # permit_mynetworks
    assert rcpt(e, "root@mx.example") is None
    r = rcpt(e, "nosuch@mx.example", addr="10.1.2.3")  # relay OK does not skip the user check
    assert r is not None and str(r.reply) == ("550 5.1.1 <nosuch@mx.example>: Recipient address "
                                              "rejected: User unknown in local recipient table")


def test_reject_unauth_destination_and_codes() -> None:
    e = engine(smtpd_relay_restrictions="permit_mynetworks reject_unauth_destination",
               unknown_local_recipient_reject_code="450")
    r = rcpt(e, "x@foreign.example")
    assert r is not None and r.action == REJECT
    assert str(r.reply) == "554 5.7.1 <x@foreign.example>: Relay access denied"
    r = rcpt(e, "nosuch@localhost")
    assert r is not None and r.action == DEFER and str(r.reply).startswith("450 4.1.1 ")


def test_empty_local_recipient_maps_accepts_anyone() -> None:
    assert rcpt(engine(local_recipient_maps=""), "nosuch@mx.example") is None


def test_a_recipient_is_resolved_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """reject_unauth_destination and the unknown-recipient check share one answer, and
    the next RCPT for the same address reuses it (Postfix's resolve client)."""
    e = engine(local_recipient_maps="inline:{root=yes}")
    asked: list[str] = []
    real = e.resolved.resolver.resolve

    def counted(address: str, sender: str | None = None) -> resolve.Resolved:
        asked.append(address)
        return real(address, sender)

    monkeypatch.setattr(e.resolved.resolver, "resolve", counted)
    assert rcpt(e, "root@mx.example") is None
    assert rcpt(e, "root@mx.example") is None
    r = rcpt(e, "nosuch@mx.example")
    assert r is not None and "User unknown in local recipient table" in str(r.reply)
    assert asked == ["root@mx.example", "nosuch@mx.example"]


def test_table_error_is_temporary() -> None:
    e = engine(local_recipient_maps="hash:/nonexistent/users")
    r = rcpt(e, "someone@mx.example")
    assert r is not None and str(r.reply) == "451 4.3.0 <someone@mx.example>: Temporary lookup failure"


def test_access_tables(tmp_path: Path) -> None:
    t = tmp_path / "access"
    t.write_text("bad@x.example REJECT\ntmp@x.example DEFER\ncode@x.example 521 nope\n"
                 "dsn@x.example 550 5.1.2 gone\nrej2@x.example REJECT go away\n"
                 "ok@x.example OK\npm@x.example permit_mynetworks reject\n"
                 "sub.example REJECT dom\nnum@x.example 200\n")
    e = engine(smtpd_recipient_restrictions=f"check_recipient_access texthash:{t}, "
               "reject_unauth_destination", smtpd_relay_restrictions="")
    cases = {
        "bad@x.example": "554 5.7.1 <bad@x.example>: Recipient address rejected: Access denied",
        "tmp@x.example": "450 4.7.1 <tmp@x.example>: Recipient address rejected: Access denied",
        "code@x.example": "521 5.7.1 <code@x.example>: Recipient address rejected: nope",
        "dsn@x.example": "550 5.1.2 <dsn@x.example>: Recipient address rejected: gone",
        "rej2@x.example": "554 5.7.1 <rej2@x.example>: Recipient address rejected: go away",
        "pm@x.example": "554 5.7.1 <pm@x.example>: Recipient address rejected: Access denied",
        "a@b.sub.example": "554 5.7.1 <a@b.sub.example>: Recipient address rejected: dom",
        "zz@x.example": "554 5.7.1 <zz@x.example>: Relay access denied",
    }
    for address, reply in cases.items():
        r = rcpt(e, address)
        assert r is not None and str(r.reply) == reply, address
    assert rcpt(e, "ok@x.example") is None
    assert rcpt(e, "num@x.example") is None
    assert rcpt(e, "pm@x.example", addr="10.0.0.1") is None


def test_client_helo_sender_checks_run_at_rcpt() -> None:
    e = engine(smtpd_client_restrictions="check_client_access inline:{192.0.2.1=REJECT}",
               smtpd_relay_restrictions="permit")
    r = rcpt(e, "root@mx.example")
    assert r is not None and str(r.reply) == \
        "554 5.7.1 <unknown[192.0.2.1]>: Client host rejected: Access denied"
    e = engine(smtpd_helo_restrictions="reject_invalid_helo_hostname, reject_non_fqdn_helo_hostname",
               smtpd_sender_restrictions="reject_non_fqdn_sender")
    r = rcpt(e, "root@mx.example", helo="foo")
    assert r is not None and str(r.reply) == \
        "504 5.5.2 <foo>: Helo command rejected: need fully-qualified hostname"
    r = rcpt(e, "root@mx.example", helo="f_o@o.x")
    assert r is not None and str(r.reply) == "501 5.5.2 <f_o@o.x>: Helo command rejected: Invalid name"
    r = rcpt(e, "root@mx.example", sender="a")
    assert r is not None and str(r.reply) == \
        "504 5.5.2 <a>: Sender address rejected: need fully-qualified address"
    e = engine(smtpd_sender_restrictions="check_sender_access inline:{<>=REJECT}")
    r = rcpt(e, "root@mx.example", sender="")
    assert r is not None and str(r.reply) == "554 5.7.1 <>: Sender address rejected: Access denied"


def test_first_decision_ends_only_its_list() -> None:
    e = engine(smtpd_client_restrictions="permit",
               smtpd_relay_restrictions="permit_mynetworks, defer_unauth_destination",
               smtpd_recipient_restrictions="permit, reject")
    r = rcpt(e, "x@foreign.example")  # client "permit" does not skip the relay list
    assert r is not None and r.reply is not None and r.reply.code == 454
    assert asyncio.run(e.evaluate("smtpd_recipient_restrictions",
                                  Request("192.0.2.1", recipient="x@y"))) == restrictions.Result(OK)


def test_startup_checks() -> None:
    with pytest.raises(ValueError, match="specify at least one working instance of: "
                       "reject_unauth_destination, defer_unauth_destination, reject, defer, "
                       "defer_if_permit or check_relay_domains"):
        engine(smtpd_relay_restrictions="permit_mynetworks").check_relay_config()
    engine().check_relay_config()
    with pytest.raises(ValueError, match="unknown smtpd restriction"):
        engine(smtpd_recipient_restrictions="no_such_thing")


def test_dns_list_arguments_and_reply_filters() -> None:
    from pymailsys.smtp import dnsxl
    f = dnsxl.ReplyFilter.parse("127.0.[0..2;5].[2;4..5]")
    assert f.matches(dnsxl.Listing(("127.0.5.4",), ""))
    assert not f.matches(dnsxl.Listing(("127.0.3.4", "127.0.0.3"), ""))
    assert dnsxl.client_query("192.0.2.5", "bl.example") == "5.2.0.192.bl.example"
    assert dnsxl.client_query("2001:db8::1", "bl.example").startswith("1.0.0.0.")
    assert dnsxl.domain_query("[192.0.2.1]", "rhs.example") is None
    assert dnsxl.domain_query("host.123", "rhs.example") is None
    with pytest.raises(ValueError, match="RBL reply error"):
        engine(smtpd_client_restrictions="reject_rbl_client bl.example=127.0.0.[2..x]")
    with pytest.raises(ValueError, match="requires domain name argument"):
        engine(smtpd_client_restrictions="reject_rbl_client")


def test_deferred_decisions() -> None:
    e = engine(smtpd_recipient_restrictions="defer_if_permit, permit_mynetworks, "
               "reject_unauth_destination")
    r = rcpt(e, "root@mx.example", addr="10.1.2.3")  # permitted: the deferral stands
    assert r is not None and str(r.reply) == ("450 4.7.1 <root@mx.example>: Recipient address "
                                              "rejected: defer_if_permit requested")
    e = engine(smtpd_relay_restrictions="",
               smtpd_recipient_restrictions="defer_if_reject, reject_unauth_destination")
    r = rcpt(e, "x@foreign.example")  # a 5xx becomes the deferral
    assert r is not None and r.action == DEFER and str(r.reply) == (
        "450 4.7.1 <x@foreign.example>: Recipient address rejected: defer_if_reject requested")
    assert rcpt(e, "root@mx.example") is None


def test_mail_access_tables_see_the_resolved_address() -> None:
    """check_sender_access asks for the sender as cleanup will queue it (a bare local
    part with @$myorigin), in lower case; allow_untrusted_routing = yes lets an OK pass
    a recipient that is still routed."""
    e = engine(myorigin="origin.example",
               smtpd_sender_restrictions="check_sender_access inline:{joe@origin.example=REJECT}")
    r = rcpt(e, "root@mx.example", sender="JOE")
    assert r is not None and str(r.reply) == \
        "554 5.7.1 <JOE>: Sender address rejected: Access denied"
    for allow, expected in (("no", "554 5.7.1 <x@foreign.example@relay.example>: Relay access "
                                   "denied"), ("yes", None)):
        e = engine(relay_domains="relay.example", allow_untrusted_routing=allow,
                   smtpd_relay_restrictions="check_recipient_access inline:{relay.example=OK}, "
                   "reject_unauth_destination")
        r = rcpt(e, "x@foreign.example@relay.example")
        assert (str(r.reply) if r is not None else None) == expected, allow
    # permit_auth_destination's routed recipient, as Postfix: denied unless allowed
    for allow, expected in (("no", "554 5.7.1 <x%foreign.example@relay.example>: Relay access "
                                   "denied"), ("yes", None)):
        e = engine(relay_domains="relay.example", allow_untrusted_routing=allow,
                   smtpd_relay_restrictions="reject_unauth_destination")
        r = rcpt(e, "x%foreign.example@relay.example")
        assert (str(r.reply) if r is not None else None) == expected, allow
