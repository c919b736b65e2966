"""Lookup tables as a running instance uses them: what a client sees when a table
is not what it should be.

* A texthash table with a duplicate key is, in Postfix's daemons (which open tables
  without DICT_FLAG_DUP_WARN), a table that fails every lookup: smtpd answers
  ``451 4.3.0 <rcpt>: Temporary lookup failure`` and logs ``texthash:PATH is
  unavailable. PATH, line N: duplicate entry: "KEY"``; it never takes either value.
* A ``proxy:`` table that proxy_read_maps does not list fails every lookup, as
  Postfix's proxymap refuses it (``proxymap service is not configured for table``).
* A cidr table's broken ``if`` is no ``if``: the rules after it apply, with Postfix's
  warning.
* An indexed table whose file is removed makes smtpd restart, as Postfix's
  dict_changed_name() does, and the next smtpd defers: mail is not judged by a
  table that is gone.
"""

from __future__ import annotations

import os
import re
import smtplib
from collections.abc import Iterator

import pytest
from harness import Instance, wait_until

SENDER = "alice@client.example"


@pytest.fixture(scope="module")
def inst() -> Iterator[Instance]:
    inst = Instance()
    try:
        dup = inst.write("etc/dup_access", "dup@x.example REJECT first\n"
                                           "DUP@x.example OK second\n")
        clients = inst.write("etc/clients.cidr", "if 127.0.0.0/8 extra\n"
                                                 "127.0.0.2 REJECT no if\n"
                                                 "endif\n")
        senders = inst.write("etc/senders", f"{SENDER} OK\n")
        gone = inst.write("etc/gone_access", "gone@x.example OK\n")
        inst.tool("postmap", f"hash:{gone}", check=True)
        inst.set(smtpd_error_sleep_time="0", smtpd_soft_error_limit="100",
                 smtpd_hard_error_limit="100",
                 smtpd_recipient_restrictions=(
                     f"check_recipient_access hash:{gone}, "
                     f"check_recipient_access texthash:{dup}, permit_mynetworks, "
                     "reject_unauth_destination"),
                 smtpd_sender_restrictions=(
                     "check_sender_access inline:{<>=OK}, "
                     f"check_client_access cidr:{clients}, "
                     f"check_sender_access proxy:texthash:{senders}"),
                 # not $smtpd_sender_restrictions: its proxy: table is not served
                 proxy_read_maps="$local_recipient_maps $smtpd_recipient_restrictions")
        inst.start()
        yield inst
    finally:
        inst.cleanup()


def rcpt(inst: Instance, recipient: str, sender: str = SENDER,
         source: str = "127.0.0.1") -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", inst.port, local_hostname="client.example", timeout=30,
                      source_address=(source, 0)) as c:
        c.ehlo()
        c.mail(sender)
        return c.rcpt(recipient)


def test_texthash_with_a_duplicate_key_defers(inst: Instance) -> None:
    code, text = rcpt(inst, "someone@x.example", sender="")
    assert (code, text) == (451, b"4.3.0 <someone@x.example>: Temporary lookup failure")
    inst.wait_log(re.escape(f"warning: texthash:{inst.base}/etc/dup_access is unavailable. "
                            f'{inst.base}/etc/dup_access, line 2: duplicate entry: "DUP@x.example"'))


def test_proxy_table_not_in_proxy_read_maps_defers(inst: Instance) -> None:
    code, text = rcpt(inst, "someone@x.example")
    assert code == 451 and text.endswith(b"Temporary lookup failure"), text
    inst.wait_log(re.escape(f"warning: proxy:texthash:{inst.base}/etc/senders is unavailable. "
                            "proxymap service is not configured for table "
                            f'"texthash:{inst.base}/etc/senders"'))


def test_cidr_broken_if_is_no_if(inst: Instance) -> None:
    code, text = rcpt(inst, "someone@x.example", source="127.0.0.2")
    assert code == 554 and text.endswith(b"Client host rejected: no if"), text
    inst.wait_log(re.escape(f"warning: cidr map {inst.base}/etc/clients.cidr, line 1: bad mask "
                            'value in "127.0.0.0/8 extra": skipping this rule'))


def test_a_removed_indexed_table_restarts_smtpd_which_defers(inst: Instance) -> None:
    """Last in this module: it takes a table away."""
    assert rcpt(inst, "gone@x.example", sender="")[0] == 250
    os.unlink(inst.base / "etc" / "gone_access.lmdb")
    inst.wait_log(re.escape(f"table hash:{inst.base}/etc/gone_access has changed -- restarting"))

    def deferred() -> tuple[int, bytes] | None:
        reply = rcpt(inst, "gone@x.example", sender="")
        return reply if reply[0] != 250 else None
    assert wait_until(deferred, 30, what="a deferral") == (
        451, b"4.3.0 <gone@x.example>: Temporary lookup failure")
