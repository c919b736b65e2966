"""End to end: local(8)'s per-user tables and its catch-all for unknown users, as Postfix.

mailbox_command_maps, mailbox_transport_maps and fallback_transport_maps are
asked for the user name (no domain, no extension) and win over the parameter
without ``_maps``; a table that cannot answer defers (4.3.0 ``table lookup
failure``). luser_relay takes mail for users that are neither aliases nor
accounts, ``$local`` and friends expanded, delivered in place under the same
queue ID; smtpd still rejects such users at RCPT while local_recipient_maps
is set. postmaster without an alias is discarded with Postfix's warning. The
hand-offs go to smtp-sink in LMTP mode (test_e2e_lmtp's ``LmtpSink``).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import ME, Instance, wait_until
from test_e2e_lmtp import LmtpSink

BODY = b"Subject: local maps\r\n\r\nhello\r\n"
NOWHERE = "lmtp:unix:/nonexistent/lmtp"  # a transport that would defer if it were used


@pytest.fixture
def sink() -> Iterator[LmtpSink]:
    s = LmtpSink("unix:SOCKET")
    yield s
    s.stop()
    shutil.rmtree(s.dir, ignore_errors=True)


@pytest.fixture
def outdir() -> Iterator[Path]:
    """A directory any user can write (commands for root run as default_privs)."""
    path = Path(tempfile.mkdtemp(prefix="pymailsys-cmdout-", dir="/tmp"))
    os.chmod(path, 0o1777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_mailbox_command_maps_by_user_name_before_mailbox_command(new_instance, outdir: Path) -> None:  # type: ignore[no-untyped-def]
    inst: Instance = new_instance(maildir=True)
    table = inst.write("etc/commands", f"{ME}@localhost cat > {outdir}/address\n"
                                       f"{ME}+ext cat > {outdir}/extension\n"
                                       f"{ME} cat > {outdir}/user\n")
    inst.set(mailbox_command_maps=f"texthash:{table}",
             mailbox_command=f"cat > {outdir}/default", recipient_delimiter="+")
    inst.start()
    qid = inst.send("alice@example.org", f"{ME}+ext@localhost", BODY)
    inst.wait_log(rf"postfix/local\[\d+\]: {qid}: to=<{ME}\+ext@localhost>, relay=local, .*"
                  rf"dsn=2\.0\.0, status=sent \(delivered to command: cat > "
                  rf"{re.escape(str(outdir))}/user\)")
    assert sorted(p.name for p in outdir.iterdir()) == ["user"]
    data = (outdir / "user").read_bytes()
    assert data.startswith(b"From alice@example.org ")
    assert f"\nX-Original-To: {ME}+ext@localhost\n".encode() in data
    assert data.endswith(b"\nhello\n")
    assert not inst.maildir_messages()


def test_a_table_that_cannot_answer_defers(new_instance) -> None:  # type: ignore[no-untyped-def]
    inst: Instance = new_instance(maildir=True)
    inst.set(mailbox_command_maps=f"hash:{inst.base}/etc/no-such-table")
    inst.start()
    qid = inst.send("alice@example.org", f"{ME}@localhost", BODY)
    inst.wait_log(rf"postfix/local\[\d+\]: warning: mailbox_command_maps lookup of {ME}: ")
    inst.wait_log(rf"{qid}: to=<{ME}@localhost>, relay=local, .*dsn=4\.3\.0, "
                  r"status=deferred \(table lookup failure\)")
    assert not inst.maildir_messages()


def test_mailbox_transport_maps_before_mailbox_transport(new_instance, sink: LmtpSink) -> None:  # type: ignore[no-untyped-def]
    inst: Instance = new_instance(maildir=True)
    inst.set(mailbox_transport_maps=f"inline:{{ {ME}=lmtp:unix:{sink.socket} }}",
             mailbox_transport=NOWHERE)
    inst.start()
    rcpt = f"{ME}@localhost"
    qid = inst.send("alice@example.org", rcpt, BODY)
    inst.wait_log(rf"postfix/lmtp\[\d+\]: {qid}: to=<{rcpt}>, relay=\S+"
                  rf"\[{re.escape(str(sink.socket))}\], .*status=sent")
    (dump,) = wait_until(sink.dumps, 10, what="the LMTP transaction")
    assert re.search(rb"^X-Rcpt-Args: <" + rcpt.encode() + rb">", dump, re.M)
    wait_until(inst.queue_empty, 30, what="an empty queue")
    assert not inst.maildir_messages()


def test_fallback_transport_maps_for_unknown_users_only(new_instance, sink: LmtpSink) -> None:  # type: ignore[no-untyped-def]
    inst: Instance = new_instance(maildir=True)
    inst.set(local_recipient_maps="",
             fallback_transport_maps=f"inline:{{ ghost=lmtp:unix:{sink.socket} }}",
             fallback_transport=NOWHERE)
    inst.start()
    qid = inst.send("alice@example.org", ["ghost@localhost", f"{ME}@localhost"], BODY)
    inst.wait_log(rf"postfix/lmtp\[\d+\]: {qid}: to=<ghost@localhost>, relay=\S+"
                  rf"\[{re.escape(str(sink.socket))}\], .*status=sent")
    inst.wait_log(rf"postfix/local\[\d+\]: {qid}: to=<{ME}@localhost>, relay=local, .*"
                  r"status=sent \(delivered to maildir\)")
    (dump,) = wait_until(sink.dumps, 10, what="the LMTP transaction")
    assert re.findall(rb"^X-Rcpt-Args: <([^>]*)>", dump, re.M) == [b"ghost@localhost"]
    (msg,) = inst.wait_maildir(1)
    assert msg.startswith(f"Return-Path: <alice@example.org>\nX-Original-To: {ME}@localhost\n"
                          .encode())


def test_smtpd_rejects_unknown_users_despite_luser_relay(new_instance) -> None:  # type: ignore[no-untyped-def]
    inst: Instance = new_instance(maildir=True)
    inst.set(luser_relay=f"{ME}@localhost")  # local_recipient_maps keeps its default
    inst.start()
    with inst.smtp() as client:
        client.ehlo()
        client.mail("alice@example.org")
        code, text = client.rcpt("ghost@localhost")
    assert (code, text) == (550, b"5.1.1 <ghost@localhost>: Recipient address rejected: "
                                 b"User unknown in local recipient table")


def test_luser_relay_delivers_unknown_users_in_place(new_instance) -> None:  # type: ignore[no-untyped-def]
    inst: Instance = new_instance(maildir=True)
    inst.set(local_recipient_maps="", recipient_delimiter="+",
             luser_relay=f"{ME}+$local@localhost")
    inst.start()
    qid = inst.send("alice@example.org", "ghost+e@localhost", BODY)
    inst.wait_log(rf"postfix/local\[\d+\]: {qid}: to=<{ME}\+ghost\+e@localhost>, "
                  r"orig_to=<ghost\+e@localhost>, relay=local, .*dsn=2\.0\.0, "
                  r"status=sent \(delivered to maildir\)")
    (msg,) = inst.wait_maildir(1)
    assert msg.startswith(b"Return-Path: <alice@example.org>\n"
                          b"X-Original-To: ghost+e@localhost\n"
                          b"Delivered-To: ghost+e@localhost\n")
    assert msg.endswith(b"\nhello\n")
    inst.wait_log(rf"{qid}: removed")
    assert "forwarded as" not in inst.log()
    # an account is not relayed
    qid = inst.send("alice@example.org", f"{ME}@localhost", BODY)
    inst.wait_log(rf"{qid}: to=<{ME}@localhost>, relay=local, .*status=sent \(delivered to "
                  r"maildir\)")


def test_luser_relay_to_another_domain_forwards(new_instance) -> None:  # type: ignore[no-untyped-def]
    inst: Instance = new_instance(maildir=True)
    inst.set(local_recipient_maps="", luser_relay="$user@remote.example",
             relayhost="[127.0.0.1]:9")  # nothing listens: the copy waits in the queue
    inst.start()
    qid = inst.send("alice@example.org", "ghost@localhost", BODY)
    (line,) = inst.wait_log(rf"postfix/local\[\d+\]: {qid}: to=<ghost@localhost>, "
                            r"relay=local, .*dsn=2\.0\.0, status=sent \(forwarded as \w+\)")
    new = re.search(r"forwarded as (\w+)", line).group(1)  # type: ignore[union-attr]
    inst.wait_log(rf"{new}: to=<ghost@remote\.example>, .*status=deferred")


def test_postmaster_without_alias_is_discarded_with_a_warning(new_instance) -> None:  # type: ignore[no-untyped-def]
    inst: Instance = new_instance(maildir=True)
    inst.write("etc/aliases", "staff: nobody\n")
    inst.tool("newaliases", check=True)
    inst.set(local_recipient_maps="")
    inst.start()
    qid = inst.send("alice@example.org", "postmaster@localhost", BODY)
    inst.wait_log(r"postfix/local\[\d+\]: warning: required alias not found: postmaster")
    inst.wait_log(rf"{qid}: to=<postmaster@localhost>, relay=local, .*dsn=2\.0\.0, "
                  r"status=sent \(discarded\)")
    inst.wait_log(rf"{qid}: removed")
    qid = inst.send("alice@example.org", "ghost@localhost", BODY)  # any other name bounces
    inst.wait_log(rf'{qid}: to=<ghost@localhost>, relay=local, .*dsn=5\.1\.1, '
                  r'status=bounced \(unknown user: "ghost"\)')


def test_a_transport_name_that_is_a_path_is_refused(new_instance) -> None:  # type: ignore[no-untyped-def]
    """A transport from a table (a regexp may build it from the recipient) names a service
    in private/, never a path: local (root) connects to nothing else."""
    inst: Instance = new_instance(maildir=True)
    inst.set(mailbox_transport_maps=f"inline:{{ {ME}=../public/pickup }}")
    inst.start()
    qid = inst.send("alice@example.org", f"{ME}@localhost", BODY)
    inst.wait_log(rf"postfix/local\[\d+\]: warning: {qid}: invalid transport name: "
                  r"'\.\./public/pickup'")
    inst.wait_log(rf"{qid}: to=<{ME}@localhost>, relay=local, .*dsn=4\.3\.5, "
                  r"status=deferred \(mail system configuration error\)")
    assert not inst.maildir_messages()


def test_luser_relay_recipient_delimiter_is_the_one_in_the_address(new_instance) -> None:  # type: ignore[no-untyped-def]
    """As Postfix 2.11 and later: $recipient_delimiter is the delimiter the address has,
    undefined without one (not recipient_delimiter's first character)."""
    inst: Instance = new_instance(maildir=True)
    inst.set(local_recipient_maps="", recipient_delimiter="+-",
             luser_relay=f"{ME}+$recipient_delimiter${{recipient_delimiter:none}}$extension"
                         "@localhost")
    inst.start()
    plain = inst.send("alice@example.org", "ghost@localhost", BODY)
    dashed = inst.send("alice@example.org", "ghost-x@localhost", BODY)
    inst.wait_log(rf"{plain}: to=<{ME}\+none@localhost>, orig_to=<ghost@localhost>, "
                  r"relay=local, .*status=sent")
    inst.wait_log(rf"{dashed}: to=<{ME}\+-x@localhost>, orig_to=<ghost-x@localhost>, "
                  r"relay=local, .*status=sent")
