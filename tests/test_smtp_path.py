"""pymailsys.smtp.path: MAIL FROM/RCPT TO paths as Postfix's smtpd (3.7) reads them.

The expectations were taken from Debian's Postfix 3.7 smtpd: its reply to each
path (250 or 501) and the recipient it wrote to the queue file.
"""

from __future__ import annotations

import pytest
from harness import ME
from hypothesis import given, settings
from hypothesis import strategies as st

from pymailsys.smtp.path import _scan_tokens, parse_path, smtp_tokens

# path -> internal address (None: 501 bad address syntax), strict_rfc821_envelopes = no
POSTFIX_37 = [
    ('<"a\\"b"@r.example>', 'a"b@r.example'),
    ('<"a b"@r.example>', "a b@r.example"),
    ("<@r1,@r2:u@r.example>", "u@r.example"),
    ("<@r1:>", ""),
    ("u@r.example", "u@r.example"),
    ('<"a@b"@r.example>', "a@b@r.example"),
    ('<a\\"b@r.example>', 'a"b@r.example'),
    ("<a\\ b@r.example>", "a b@r.example"),
    ("<a b@r.example>", None),
    ("<a@r.example", None),
    ("a@r.example>", "a@r.example"),
    ("<<a@r.example>>", "a@r.example"),
    ("<@r1>", "@r1"),
    ("<@:u@r.example>", "u@r.example"),
    ('<"a\\rb"@r.example>', "arb@r.example"),
    ('<a@"r".example>', "a@r.example"),
    ("<a(c)@r.example>", "a@r.example"),
    ("<a@r.example>junk", None),
    ("<>", ""),
    ("<a@[1.2.3.4]>", "a@[1.2.3.4]"),
    ("<u@r.example.>", "u@r.example."),
    (" <u@r.example>", "u@r.example"),
]


@pytest.mark.parametrize(("path", "address"), POSTFIX_37)
def test_paths_as_postfix(path: str, address: str | None) -> None:
    parsed = parse_path("TO:" + path, "TO:", False)
    assert (parsed[1] if parsed else None) == address


def test_strict_rfc821_envelopes() -> None:
    assert parse_path("FROM:<a@b>", "FROM:", True) == ("a@b", "a@b", [])
    for path in ("a@b", "x<a@b>", "<@r1>", "<a,@b>"):
        assert parse_path("FROM:" + path, "FROM:", True) == (path, None, []), path
    assert parse_path("FROM:x<a@b>", "FROM:", False) == ("x<a@b>", "a@b", [])


def test_parameters_and_keyword() -> None:
    assert parse_path('from:<"a b"@c>  SIZE=10 BODY=8BITMIME', "FROM:", False) == (
        '"a b"@c', "a b@c", ["SIZE=10", "BODY=8BITMIME"])
    assert parse_path("TO:", "TO:", False) is None
    with pytest.raises(ValueError):
        parse_path("<a@b>", "TO:", False)
    assert smtp_tokens('<"a >" b> x "y z"') == ['<"a >" b>', "x", '"y z"']
    assert smtp_tokens('<a "b>') is None


def test_smtpd_takes_odd_paths_as_postfix(new_instance) -> None:  # type: ignore[no-untyped-def]
    from test_smtpd_e2e import maildir_messages, session
    inst = new_instance()
    inst.start()
    replies = session(inst, [
        b"EHLO x\r\n", b"MAIL FROM:<@relay.example:s@example.org>\r\n",
        f"RCPT TO:<<{ME}@localhost>>\r\n".encode(), f"RCPT TO:<{ME}(c)@localhost>\r\n".encode(),
        f"RCPT TO:<{ME}@localhost>junk\r\n".encode(),
        b"DATA\r\n", b"Subject: paths\r\n\r\nhi\r\n.\r\n", b"QUIT\r\n"])
    assert [r.split("\n")[-1][:3] for r in replies] == [
        "220", "250", "250", "250", "250", "501", "354", "250", "221"]
    # Two RCPTs name the same mailbox with different original recipients: how many
    # copies arrive, and when, is not this test's business; the first one is enough.
    msg = maildir_messages(inst, 1)[0]
    assert b"Return-Path: <s@example.org>" in msg


@settings(max_examples=500, deadline=None, database=None, derandomize=True)
@given(st.text(alphabet='ab@.<>" \\\t\x01é', max_size=24))
def test_the_fast_word_split_gives_the_tokens_of_the_full_scan(text: str) -> None:
    """smtp_tokens splits plain arguments at spaces; whatever it takes that way, the
    character-by-character scan (quotes, escapes, nested brackets) agrees."""
    assert smtp_tokens(text) == _scan_tokens(text)
