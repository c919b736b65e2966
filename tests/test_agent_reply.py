"""qmgr's reading of an agent's reply (delivery/agent.py ``results_from_attrs``):
what a well-formed reply says per recipient, and what a short or mismatched one
turns into (``missing``, no DSN details, a deferral for an unknown status)."""

from __future__ import annotations

from pymailsys.delivery.agent import DeliveryResult, batch_reply, results_from_attrs
from pymailsys.ipc.attr import AttrList

MISSING = DeliveryResult.deferred("delivery temporarily suspended: transport error")


def reply(pairs: list[tuple[str, str]]) -> AttrList:
    """The AttrList qmgr reads, from the pairs an agent writes."""
    return AttrList([(name, value.encode()) for name, value in pairs])


def test_one_recipient_with_its_member_and_more_members() -> None:
    result = DeliveryResult("bounced", "5.1.1", "unknown user: \"x\"", rcpt="x@example.org",
                            also=(("y@example.org", "5.1.1", "unknown user: \"y\""),))
    (got,) = results_from_attrs(reply([(n, str(v)) for n, v in result.reply()]), 1, MISSING)
    assert got == result


def test_a_batch_keeps_the_order_and_the_dsn_details() -> None:
    results = [DeliveryResult.sent("250 ok", "2.0.0"),
               DeliveryResult("sent", "2.0.0", "250 ok", "relayed", "mx.example.org",
                              "250 2.0.0 ok", True),
               DeliveryResult.deferred("451 later", "4.4.1")]
    pairs = [(n, str(v)) for n, v in batch_reply(results)]
    got = results_from_attrs(reply(pairs), 3, MISSING)
    assert got[1] == results[1]
    assert [(g.status, g.dsn, g.reason) for g in got] == [
        (r.status, r.dsn, r.reason) for r in results]
    assert got[0].mta == "" and got[2].passed_on is False


def test_a_short_reply_leaves_the_rest_missing_and_drops_uneven_details() -> None:
    pairs = [("status", "sent"), ("dsn", "2.0.0"), ("reason", "ok"), ("action", "relayed"),
             ("status", "sent"), ("dsn", "2.0.0")]
    got = results_from_attrs(reply(pairs), 3, MISSING)
    assert got[0] == DeliveryResult("sent", "2.0.0", "ok")  # details of 1 of 3: none kept
    assert got[1] is MISSING and got[2] is MISSING


def test_an_unknown_status_defers_and_a_bad_member_is_not_named() -> None:
    pairs = [("status", "delivered"), ("dsn", "2.0.0"), ("reason", "ok"),
             ("status", "sent"), ("dsn", "2.0.0"), ("reason", "ok"),
             ("rcpt", "a@example.org"), ("rcpt", "b\x01@example.org")]
    got = results_from_attrs(reply(pairs), 2, MISSING)
    assert got[0] == DeliveryResult.deferred("unknown delivery status 'delivered'")
    assert got[1] == DeliveryResult("sent", "2.0.0", "ok", rcpt="")


def test_a_three_attribute_reply_reads_as_the_long_way_does() -> None:
    """The shortcut for status, dsn and reason alone gives what the column-by-column way
    gives the same reply with an attribute more that it ignores."""
    names = ["status", "dsn", "reason", "rcpt"]
    values = [b"sent", b"deferred", b"bounced", b"delivered", b"Sent", b"", b"5.1.1",
              b"4.4.1 \xff later", b"sent\x00"]
    for first in names:
        for second in names:
            for third in names:
                for a in values:
                    for b in values[5:]:
                        pairs = [(first, a), (second, b), (third, b"why \xfe")]
                        short = results_from_attrs(AttrList(pairs), 1, MISSING)
                        long = results_from_attrs(AttrList([*pairs, ("unused", b"x")]), 1,
                                                  MISSING)
                        assert short == long, pairs
                        assert results_from_attrs(AttrList(pairs), 2, MISSING) == \
                            results_from_attrs(AttrList([*pairs, ("unused", b"x")]), 2, MISSING)
