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

from harness import Instance
from test_e2e_outbound import sink  # noqa: F401 (the fixture: a running smtp-sink)

MESSAGE = b"Subject: x\r\n\r\nx\r\n"


def test_empty_transport_entries_keep_or_reset_what_postfix_does(new_instance, sink) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    sink.start()
    inst: Instance = new_instance()
    table = inst.write("etc/transport", "colon.example :\nerr.example error:\n"
                                        "retry.example retry:\n")
    inst.set(relayhost=f"[127.0.0.1]:{sink.port}", transport_maps=f"texthash:{table}")
    inst.start()
    queue_id = inst.send("alice@example.org", ["u@colon.example", "u@err.example",
                                               "u@retry.example"], MESSAGE)
    inst.wait_log(rf"{queue_id}: to=<u@colon.example>, relay=127\.0\.0\.1\[127\.0\.0\.1\]:"
                  rf"{sink.port}, .*status=sent")
    inst.wait_log(rf"{queue_id}: to=<u@err.example>, relay=none, .*dsn=5\.0\.0, "
                  rf"status=bounced \(Address is undeliverable\)")
    inst.wait_log(rf"{queue_id}: to=<u@retry.example>, relay=none, .*dsn=4\.0\.0, "
                  rf"status=deferred \(Address is undeliverable\)")
