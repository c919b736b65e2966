"""End to end: envelope addresses in log lines, as info_log_address_format says.

Postfix (3.5 and later, ``info_log_address_format = external``) logs every
``from=<…>``, ``to=<…>`` and ``orig_to=<…>`` in the external form: a local
part that is not a dot-string is quoted (``"john doe"@example.net``), so that
a local part a client chose cannot pass for other fields of the line in a log
parser. With ``internal`` it logs the address as the queue keeps it,
unquoted. The empty sender is ``from=<>`` either way.

Mail goes in over SMTP with smtplib; the maillog is read as an administrator
reads it, line by line, each line matched whole after its tag.
"""

from __future__ import annotations

import re

from harness import ME, Instance

SENDER = '"a X-Inj1: 1"@example.com'
SENDER_INTERNAL = "a X-Inj1: 1@example.com"
ALIAS = '"john doe"@localhost'
ALIAS_INTERNAL = "john doe@localhost"
UNKNOWN = '"no body"@localhost'
UNKNOWN_INTERNAL = "no body@localhost"
# a local part that imitates the rest of a delivery line
FORGED = '"x>, status=sent (delivered"@localhost'

MESSAGE = b"Subject: quoted addresses\r\n\r\nhello\r\n"


def _instance(new_instance, **settings: str) -> Instance:  # type: ignore[no-untyped-def]
    inst: Instance = new_instance(maildir=True)
    inst.write("etc/aliases", f'postmaster: {ME}\n"john doe": {ME}\n')
    if settings:
        inst.set(**settings)
    inst.tool("newaliases", check=True)
    inst.start()
    return inst


def _send(inst: Instance, sender: str, recipient: str) -> str:
    """MAIL FROM and RCPT TO exactly as given (smtplib would re-quote them)."""
    with inst.smtp() as client:
        client.ehlo()
        code, text = client.docmd(f"MAIL FROM:<{sender}>")
        assert code == 250, text
        code, text = client.docmd(f"RCPT TO:<{recipient}>")
        assert code == 250, text
        code, text = client.data(MESSAGE)
        assert code == 250, text
    m = re.search(rb"queued as (\w+)", text)
    assert m, text
    return m.group(1).decode()


def _reject(inst: Instance, sender: str, recipient: str) -> tuple[int, bytes]:
    with inst.smtp() as client:
        client.ehlo()
        code, text = client.docmd(f"MAIL FROM:<{sender}>")
        assert code == 250, text
        return client.docmd(f"RCPT TO:<{recipient}>")


def _line(inst: Instance, program: str, text: str) -> str:
    """The one log line of program whose text (after ``postfix/program[pid]: ``) matches."""
    pattern = rf"postfix/{program}\[\d+\]: {text}$"
    (line,) = inst.wait_log(pattern)
    return line


def _delivered(inst: Instance, queue_id: str, orig_to: str) -> str:
    return _line(inst, "local", rf"{queue_id}: to=<{re.escape(ME)}@[^>]+>, "
                 rf"orig_to=<{re.escape(orig_to)}>, relay=local, delay=\S+, delays=\S+, "
                 rf"dsn=2\.0\.0, status=sent \(delivered to maildir\)")


def test_quoted_local_parts_logged_external_by_default(new_instance) -> None:  # type: ignore[no-untyped-def]
    inst = _instance(new_instance)
    queue_id = _send(inst, SENDER, ALIAS)
    (delivered,) = inst.wait_maildir(1)
    assert b'\nX-Original-To: "john doe"@localhost\n' in delivered
    _line(inst, "qmgr", rf"{queue_id}: from=<{re.escape(SENDER)}>, size=\d+, nrcpt=1 \(queue active\)")
    _delivered(inst, queue_id, ALIAS)
    assert SENDER_INTERNAL not in inst.log()
    assert ALIAS_INTERNAL not in inst.log()


def test_internal_format_logs_the_queue_form(new_instance) -> None:  # type: ignore[no-untyped-def]
    inst = _instance(new_instance, info_log_address_format="internal")
    check = inst.postfix("check")
    assert "info_log_address_format" not in check.stdout + check.stderr
    queue_id = _send(inst, SENDER, ALIAS)
    (delivered,) = inst.wait_maildir(1)
    assert b'\nX-Original-To: "john doe"@localhost\n' in delivered  # a header, not a log line
    _line(inst, "qmgr", rf"{queue_id}: from=<{re.escape(SENDER_INTERNAL)}>, size=\d+, "
          rf"nrcpt=1 \(queue active\)")
    _delivered(inst, queue_id, ALIAS_INTERNAL)
    assert "info_log_address_format" not in inst.log()


def test_rejected_recipient_logged_quoted_empty_sender_empty(new_instance) -> None:  # type: ignore[no-untyped-def]
    inst = _instance(new_instance)
    code, _text = _reject(inst, SENDER, UNKNOWN)
    assert code == 550
    code, _text = _reject(inst, "", FORGED)
    assert code == 550
    tail = r" proto=ESMTP helo=<client\.example>"
    _line(inst, "smtpd", r"NOQUEUE: reject: RCPT from \S+: 550 5\.1\.1 .*; "
          rf"from=<{re.escape(SENDER)}> to=<{re.escape(UNKNOWN)}>{tail}")
    _line(inst, "smtpd", r"NOQUEUE: reject: RCPT from \S+: 550 5\.1\.1 .*; "
          rf"from=<> to=<{re.escape(FORGED)}>{tail}")


def test_bad_format_refused_naming_file_and_line(new_instance) -> None:  # type: ignore[no-untyped-def]
    inst: Instance = new_instance(maildir=True)
    inst.set(info_log_address_format="quoted")
    lines = (inst.config_dir / "main.cf").read_text().splitlines()
    check = inst.postfix("check", check=False)
    assert check.returncode != 0
    assert (f"{inst.config_dir / 'main.cf'}, line {len(lines)}: "
            f'unknown info_log_address_format value "quoted"') in check.stdout + check.stderr
    start = inst.postfix("start", check=False)
    assert start.returncode != 0
