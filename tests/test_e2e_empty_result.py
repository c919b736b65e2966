"""End to end: an access table rule without a result is a configuration error, as in Postfix.

Debian's Postfix 3.7, check_recipient_access regexp:ra with the rule ``/^empty@/``:

    warning: regexp map .../ra, line 1: no replacement text: using empty string
    warning: regexp:.../ra lookup of empty@remote.example returns an empty string result
    warning: regexp:.../ra should return NO RESULT in case of NOT FOUND
    NOQUEUE: reject: RCPT from ...: 451 4.3.5 <empty@remote.example>: Recipient address
    rejected: Server configuration error; ...
"""

from __future__ import annotations

import re

from harness import Instance


def test_access_rule_without_result_defers_with_server_configuration_error(new_instance) -> None:  # type: ignore[no-untyped-def]
    inst: Instance = new_instance()
    table = inst.write("etc/ra", "/^empty@/\n")
    inst.set(relay_domains="remote.example",
             smtpd_recipient_restrictions=f"check_recipient_access regexp:{table}, "
                                          "permit_mynetworks, reject")
    inst.start()
    with inst.smtp() as client:
        client.ehlo("x")
        client.mail("a@b.example")
        reply = client.rcpt("empty@remote.example")
        assert client.rcpt("u@remote.example")[0] == 250
    assert reply == (451, b"4.3.5 <empty@remote.example>: Recipient address rejected: "
                          b"Server configuration error")
    inst.wait_log(r"NOQUEUE: reject: RCPT from .*: 451 4\.3\.5 <empty@remote\.example>: "
                  r"Recipient address rejected: Server configuration error;")
    warnings = re.findall(r"postfix/smtpd\[\d+\]: warning: (.*)", inst.log())
    spec = f"regexp:{table}"
    assert warnings == [
        f"regexp map {table}, line 1: no replacement text: using empty string",
        f"{spec} lookup of empty@remote.example returns an empty string result",
        f"{spec} should return NO RESULT in case of NOT FOUND",
    ]
