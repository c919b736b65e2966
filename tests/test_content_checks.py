"""cleanup's content pass with header_checks and body_checks: the MIME classes and the records.

A table that matches nothing must leave every record as the pass without checks
writes it, whatever the message shape (long lines, multipart, attached
messages) and however it is cut into pieces; rules then see each line in the
class Postfix gives it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pymailsys.daemons.cleanup import headers as hdr

from pymailsys import config, log
from pymailsys.content import checks as hbc

LONG = b"x" * 5000
MESSAGES = [
    b"Subject: plain\n\nbody\n" + LONG + b"\nend",
    b"Subject: mime\nContent-Type: multipart/mixed;\n boundary=\"AB\"\n\npre\n--AB\n"
    b"Content-Type: text/plain\n\npart one\n" + LONG + b"\n--AB\nContent-Type: message/rfc822\n\n"
    b"Subject: inner\nContent-Type: multipart/alternative; boundary=in\n\n--in\n"
    b"Content-Type: text/html\n\n<p>\n--in--\n--AB--\nepilogue\n",
    b"Content-Type: message/rfc822\n\nSubject: attached\nX-Long: " + LONG + b"\n\ninner body\n",
]


def _records(msg: bytes, step: int, tables: hbc.CheckTables | None,
             seen: list[str] | None = None) -> bytes:
    job = hdr.HeaderJob(queue_id="Q", myhostname="h", created=0, date="d", sender="s")
    checks = hbc.MessageChecks(tables, hbc.Where("Q", "local", "s", "r")) if tables else None
    content = hdr.ContentPass(["Received: x"], job, frozenset(), 2048, 102400, True, checks)
    out = []
    for i in range(0, len(msg), step):
        out += content.feed(msg[i:i + step])
    out += content.end()
    return b"".join(out)


def _tables(tmp_path: Path, header: str, body: str, **more: str) -> hbc.CheckTables:
    (tmp_path / "h").write_text(header)
    (tmp_path / "b").write_text(body)
    values = {"header_checks": f"regexp:{tmp_path}/h", "body_checks": f"regexp:{tmp_path}/b",
              **more}
    return hbc.CheckTables.from_config(config.Config("/nonexistent", values))


@pytest.mark.parametrize("limit", ["51200", "100", "0"])
@pytest.mark.parametrize("step", [1, 7, 2048, 2049, 65536])
@pytest.mark.parametrize("msg", MESSAGES)
def test_tables_that_match_nothing_change_nothing(tmp_path: Path, msg: bytes, step: int,
                                                  limit: str) -> None:
    tables = _tables(tmp_path, "/^X-Nothing:/ REJECT\n", "/^never matches$/ REJECT\n",
                     body_checks_size_limit=limit)
    assert _records(msg, step, tables) == _records(msg, 65536, None)


def test_each_line_is_checked_in_its_class(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "mh").write_text("/^Content-Type: text\\/html/ WARN mime part\n")
    tables = _tables(tmp_path, "/^Subject: inner/ WARN nested\n/^Content-Type: text\\/html/ WARN part\n"
                               "/^Subject: mime/ WARN primary\n",
                     "/^<p>/ WARN body\n/^Subject:/ WARN body subject\n",
                     mime_header_checks="regexp:" + str(tmp_path / "mh"))
    where = hbc.Where("Q", "local", "s", "r")
    job = hdr.HeaderJob(queue_id="Q", myhostname="h", created=0, date="d", sender="s")
    checks = hbc.MessageChecks(tables, where)
    logged: list[str] = []
    monkeypatch.setattr(log, "info", logged.append)
    content = hdr.ContentPass([], job, frozenset(), 2048, 102400, True, checks)
    content.feed(MESSAGES[1])
    content.end()
    assert [line.split(": ", 2)[1:] for line in logged] == [
        ["warning", "header Subject: mime from local; from=<s> to=<r>: primary"],
        # nested_header_checks is $header_checks by default
        ["warning", "header Subject: inner from local; from=<s> to=<r>: nested"],
        ["warning", "header Content-Type: text/html from local; from=<s> to=<r>: mime part"],
        ["warning", "body <p> from local; from=<s> to=<r>: body"],
    ]
    assert not checks.reject


# Observed with Debian's Postfix 3.7 (cleanup, the three tables each "/^(.*)$/ WARN class"):
# MIME headers go to mime_header_checks in every header block; an attached message's
# headers are nested ones whatever its Content-Transfer-Encoding; a multipart/digest
# part without a Content-Type is a message/rfc822; a part header block that ends at a
# line which is not a header is followed by body, not by attached headers.
DIGEST_AND_ATTACHMENTS = b"""\
From: a@b.example
Subject: top
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="OUT"

--OUT
Content-Type: text/plain
X-Part: one

hello
--OUT
Content-Type: message/rfc822
X-Part: two

Subject: attached
Content-Type: text/plain

attached body
--OUT
Content-Type: message/rfc822
Content-Transfer-Encoding: base64
X-Part: three

Subject: attached-b64

body3
--OUT
Content-Type: multipart/digest; boundary="DIG"
X-Part: four

--DIG
X-Digest-Part: d1

Subject: digest-one

digest body 1
--DIG
Content-Type: text/plain
X-Digest-Part: d2

Subject: not-nested
--DIG--
--OUT
Content-Type: message/rfc822
X-Part: five
garbage line
Subject: after-garbage

--OUT--
"""
POSTFIX_CLASSES = [
    ("primary", "Received: x"), ("primary", "From: a@b.example"), ("primary", "Subject: top"),
    ("mime", "MIME-Version: 1.0"), ("mime", 'Content-Type: multipart/mixed; boundary="OUT"'),
    ("mime", "Content-Type: text/plain"), ("mime", "X-Part: one"),
    ("mime", "Content-Type: message/rfc822"), ("mime", "X-Part: two"),
    ("nested", "Subject: attached"), ("mime", "Content-Type: text/plain"),
    ("mime", "Content-Type: message/rfc822"), ("mime", "Content-Transfer-Encoding: base64"),
    ("mime", "X-Part: three"), ("nested", "Subject: attached-b64"),
    ("mime", 'Content-Type: multipart/digest; boundary="DIG"'), ("mime", "X-Part: four"),
    ("mime", "X-Digest-Part: d1"), ("nested", "Subject: digest-one"),
    ("mime", "Content-Type: text/plain"), ("mime", "X-Digest-Part: d2"),
    ("mime", "Content-Type: message/rfc822"), ("mime", "X-Part: five"),
]


@pytest.mark.parametrize("step", [1, 5, 65536])
def test_header_classes_as_postfix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                   step: int) -> None:
    for name in ("primary", "mime", "nested"):
        (tmp_path / name).write_text(f"/^(.*)$/ WARN {name}\n")
    tables = hbc.CheckTables.from_config(config.Config("/nonexistent", {
        "header_checks": f"regexp:{tmp_path}/primary",
        "mime_header_checks": f"regexp:{tmp_path}/mime",
        "nested_header_checks": f"regexp:{tmp_path}/nested"}))
    logged: list[str] = []
    monkeypatch.setattr(log, "info", logged.append)
    _records(DIGEST_AND_ATTACHMENTS, step, tables)
    seen = []
    for line in logged:
        text, _, name = line.rpartition(": ")
        seen.append((name, text.split(": warning: header ", 1)[1].split(" from local;")[0]))
    assert seen == POSTFIX_CLASSES


_MP = b"Subject: %s\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=BB\n%s\n"
_BODY_8BIT = "5.6.0 improper use of 8-bit data in message body"
_DOMAIN = "5.6.0 invalid message/* or multipart/* encoding domain"
# Observed with Debian's Postfix 3.7 (strict_8bitmime_body and strict_mime_encoding_domain):
# the reply to each message ("" accepted). A body counts as 7bit unless its block says
# 8bit, binary, base64 or quoted-printable; a part, an attached message, a multipart's
# prolog and its epilogue start again at 7bit; a block that ends at a line which is no
# header keeps its encoding for that line and what follows.
STRICT_CASES = [
    (_MP % (b"b64", b"") + b"--BB\nContent-Transfer-Encoding: base64\n\n\xc3\xa9\n--BB--\n", ""),
    (_MP % (b"qp", b"") + b"--BB\nContent-Transfer-Encoding: quoted-printable\n\n\xc3\xa9\n"
     b"--BB--\n", ""),
    (_MP % (b"prolog", b"Content-Transfer-Encoding: 8bit\n") + b"pro \xc3\xa9\n--BB\n\nx\n--BB--\n",
     _BODY_8BIT),
    (_MP % (b"2nd", b"") + b"--BB\nContent-Transfer-Encoding: 8bit\n\n\xc3\xa9\n--BB\n\n\xc3\xa9\n"
     b"--BB--\n", _BODY_8BIT),
    (_MP % (b"1st", b"") + b"--BB\nContent-Transfer-Encoding: 8bit\n\n\xc3\xa9\n--BB--\n", ""),
    (_MP % (b"epilogue", b"Content-Transfer-Encoding: 8bit\n") + b"--BB\n\nx\n--BB--\nepi \xc3\xa9\n",
     _BODY_8BIT),
    (b"Subject: n\nContent-Type: message/rfc822\nContent-Transfer-Encoding: 8bit\n\n"
     b"Subject: in\n\n\xc3\xa9\n", _BODY_8BIT),
    (b"Subject: n\nContent-Type: message/rfc822\nContent-Transfer-Encoding: 8bit\n\n"
     b"Subject: in\nContent-Transfer-Encoding: binary\n\n\xc3\xa9\n", ""),
    (b"Subject: c\nContent-Transfer-Encoding:  8BIT (yes)\n\n\xc3\xa9\n", ""),
    (b"Subject: u\nContent-Transfer-Encoding: x-weird\n\n\xc3\xa9\n", _BODY_8BIT),
    (b"Subject: g\nContent-Transfer-Encoding: 8bit\nnot a header \xc3\xa9\n\xc3\xa9\n", ""),
    (_MP % (b"pg", b"") + b"--BB\nContent-Transfer-Encoding: 8bit\nno header \xc3\xa9\n--BB--\n", ""),
    (b"Subject: p\nContent-Type: message/partial; id=1\n"
     b"Content-Transfer-Encoding: quoted-printable\n\nx\n", ""),
    (b"Subject: r\nContent-Type: message/rfc822\nContent-Transfer-Encoding: binary\n\n"
     b"Subject: in\n\nx\n", ""),
    (_MP.replace(b"mixed", b"digest") % (b"d", b"") + b"--BB\nContent-Transfer-Encoding: base64\n\n"
     b"Subject: x\n\nx\n--BB--\n", _DOMAIN),
    (_MP % (b"end", b"") + b"--BB\nContent-Type: multipart/mixed; boundary=CC\n"
     b"Content-Transfer-Encoding: base64\n", _DOMAIN),
]


@pytest.mark.parametrize("step", [1, 3, 65536])
@pytest.mark.parametrize(("msg", "reply"), STRICT_CASES)
def test_strict_body_and_domain_as_postfix(msg: bytes, reply: str, step: int) -> None:
    tables = hbc.CheckTables.from_config(config.Config("/nonexistent", {
        "strict_8bitmime_body": "yes", "strict_mime_encoding_domain": "yes"}))
    checks = hbc.MessageChecks(tables, hbc.Where("Q", "local", "s", "r"))
    # the records are those of the pass without checks: only the verdict differs
    assert _records(msg, step, tables) == _records(msg, 65536, None)
    job = hdr.HeaderJob(queue_id="Q", myhostname="h", created=0, date="d", sender="s")
    content = hdr.ContentPass(["Received: x"], job, frozenset(), 2048, 102400, True, checks)
    for i in range(0, len(msg), step):
        content.feed(msg[i:i + step])
    content.end()
    assert checks.reject == reply


def test_no_mime_state_without_tables_or_strict_settings() -> None:
    """cleanup follows the MIME structure only when something needs it: with the defaults
    (no table, no strict_* setting) there is no MessageChecks and no MimeState."""
    job = hdr.HeaderJob(queue_id="Q", myhostname="h", created=0, date="d", sender="s")
    tables = hbc.CheckTables.from_config(config.Config("/nonexistent", {}))
    assert not tables.active
    for name in ("strict_7bit_headers", "strict_8bitmime", "strict_8bitmime_body",
                 "strict_mime_encoding_domain"):
        strict = hbc.CheckTables.from_config(config.Config("/nonexistent", {name: "yes"}))
        assert strict.active and strict.report_nesting, name
        content = hdr.ContentPass([], job, frozenset(), 2048, 102400, True,
                                  hbc.MessageChecks(strict, hbc.Where("Q", "local", "s", "r")))
        assert content.mime is not None, name
        off = hbc.CheckTables.from_config(config.Config("/nonexistent", {
            name: "yes", "disable_mime_input_processing": "yes"}))
        assert not off.active, name


def _detect(msg: bytes, step: int) -> tuple[bytes, bool]:
    """The records and says_8bit of the pass with detect_8bit alone (no checks)."""
    job = hdr.HeaderJob(queue_id="Q", myhostname="h", created=0, date="d", sender="s")
    content = hdr.ContentPass(["Received: x"], job, frozenset(), 2048, 102400, True,
                              detect_8bit=True)
    out = []
    for i in range(0, len(msg), step):
        out += content.feed(msg[i:i + step])
    out += content.end()
    return b"".join(out), content.outcome.says_8bit


_DETECT_PART = (b"Subject: p\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=BB\n\n"
                b"pre\n--BB\nContent-Type: text/plain\n\n" + LONG + b"\n--BB\n"
                b"Content-Transfer-Encoding: %s\n\nx\n--BB--\n")


@pytest.mark.parametrize("step", [1, 7, 2049, 65536])
@pytest.mark.parametrize(("msg", "says_8bit"), [
    *((m, False) for m in MESSAGES), (DIGEST_AND_ATTACHMENTS, False),
    *((m, False) for m, _ in STRICT_CASES[:2]), *((m, True) for m, _ in STRICT_CASES[2:8]),
    (_DETECT_PART % b"binary", True), (_DETECT_PART % b"BINARY", True),
    (_DETECT_PART % b"binary (no)", False), (_DETECT_PART % b"7bit", False),
    (b"Subject: a\nContent-Type: message/rfc822\n\nSubject: in\n"
     b"Content-Transfer-Encoding: 8bit\n\nx\n", True),
    (b"Subject: a\nContent-Type: text/plain\n\n--BB\nContent-Transfer-Encoding: 8bit\n\nx\n",
     False),
])
def test_detect_8bit_finds_part_headers_and_changes_no_record(msg: bytes, says_8bit: bool,
                                                              step: int) -> None:
    """detect_8bit_encoding_header without any check: the MIME structure is followed for
    part and attached-message headers (as Postfix's cleanup_header_callback sees them), and
    the records are those of the pass that follows nothing."""
    records, found = _detect(msg, step)
    assert found == says_8bit
    assert records == _records(msg, 65536, None)


def test_detect_8bit_follows_mime_only_for_a_message_with_parts() -> None:
    """The scan for part headers costs nothing for a message whose primary header block
    has no Content-Type, or one that announces neither parts nor an attached message."""
    job = hdr.HeaderJob(queue_id="Q", myhostname="h", created=0, date="d", sender="s")
    for msg, follows in [(b"Subject: s\n\nx\n", False),
                         (b"Subject: s\nContent-Type: text/plain\n\nx\n", False),
                         (_DETECT_PART % b"7bit", True)]:
        content = hdr.ContentPass([], job, frozenset(), 2048, 102400, True, detect_8bit=True)
        content.feed(b"Subject: s\nFrom: a@b.example\nTo: c@d.example\n")
        assert content.mime is None  # nothing made for headers that are no Content-Type
        content.feed(msg[:msg.index(b"\n\n") + 2])
        assert (content.mime is not None) == follows, msg
