"""cleanup's header pass keeps memory that does not grow with the header names a client sends.

A message of many distinct header names (``X-H0000000: v`` ... under message_size_limit),
or one that repeats Message-Id: again and again, must not make ``ContentPass`` remember
one entry per header: it remembers only the names the end of the header block asks
about (Message-Id, Date, From and their Resent- forms) and at most MESSAGE_IDS_KEPT
Message-Id: values, as Postfix's cleanup keeps a fixed bitmap of the header types it
knows. Measured with tracemalloc around the feeding, the input generated a piece at a
time so that only what the pass keeps adds up; then the same thing end to end: such a
message through a real instance reaches the mailbox intact and its log keeps Postfix's
``message-id=`` lines.
"""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from harness import ME, Instance, wait_until
from pymailsys.daemons.cleanup import headers as hdr

from pymailsys import config, log
from pymailsys.content import checks as hbc

HEADERS = 100_000  # ~1.6 MB of headers: the old pass kept ~8 MB for these
BOUND = 1 << 20  # what the pass may hold at its peak, input piece and records included
PIECE = 65536


def _distinct(i: int) -> bytes:
    return b"X-H%07d: v\n" % i


def _message_id(i: int) -> bytes:
    return b"Message-Id: <%07d@example.org>\n" % i


def _pieces(header: Callable[[int], bytes], count: int) -> Iterator[bytes]:
    """The header block, then an empty line and a body, PIECE bytes at a time."""
    piece = bytearray()
    for i in range(count):
        piece += header(i)
        if len(piece) >= PIECE:
            yield bytes(piece)
            piece.clear()
    yield bytes(piece) + b"Subject: s\n\nbody\n"


def _job(add_missing: bool = False) -> hdr.HeaderJob:
    return hdr.HeaderJob(queue_id="4QTEST", myhostname="mx.example", created=0,
                         date="Thu,  1 Jan 1970 00:00:00 +0000 (UTC)", sender="s@example.org",
                         add_missing=add_missing)


def _peak(content: hdr.ContentPass, pieces: Iterator[bytes]) -> tuple[int, int]:
    """(peak bytes allocated while feeding, bytes still held at the end), records dropped."""
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for piece in pieces:
            content.feed(piece)
        content.end()
        current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak - base, current - base


@pytest.mark.parametrize("header", [_distinct, _message_id], ids=["distinct-names", "message-ids"])
def test_header_pass_memory_does_not_grow_with_the_headers(
        header: Callable[[int], bytes]) -> None:
    content = hdr.ContentPass(["Received: x"], _job(), frozenset(), 2048, 102400, False)
    peak, held = _peak(content, _pieces(header, HEADERS))
    assert peak < BOUND, f"peak {peak} bytes for {HEADERS} headers"
    assert held < BOUND // 4, f"{held} bytes held after {HEADERS} headers"


def test_many_names_keep_the_checks_of_the_header_block_end() -> None:
    # From: seen among many others: only Message-Id: and Date: are added
    content = hdr.ContentPass(["Received: x"], _job(add_missing=True), frozenset(), 2048,
                              102400, False)
    for piece in _pieces(_distinct, 5000):
        content.feed(piece.replace(b"X-H0002500: v", b"From: a@example.org"))
    content.end()
    out = content.outcome
    assert out.added == ["Message-Id: <19700101000000.4QTEST@mx.example>",
                         "Date: Thu,  1 Jan 1970 00:00:00 +0000 (UTC)"]
    assert out.message_ids == ["<19700101000000.4QTEST@mx.example>"]
    assert out.hop_count == 1

    # a Resent- header among them: the Resent- forms, and the Message-Id: already there
    content = hdr.ContentPass([], _job(add_missing=True), frozenset(), 2048, 102400, False)
    content.feed(b"Message-Id: <m@x>\nDate: d\nFrom: f@x\n" + b"".join(map(_distinct, range(3000)))
                 + b"Resent-Date: r\n\n")
    content.end()
    assert content.outcome.added == ["Resent-Message-Id: <19700101000000.4QTEST@mx.example>",
                                     "Resent-From: s@example.org"]
    assert content.outcome.message_ids == ["<m@x>"]

    # no Message-Id: among many names, nothing added: message-id=<>
    content = hdr.ContentPass([], _job(), frozenset(), 2048, 102400, False)
    for piece in _pieces(_distinct, 3000):
        content.feed(piece)
    content.end()
    assert content.outcome.message_ids == ["<>"]
    assert content.outcome.added == []


def test_repeated_message_ids_are_kept_up_to_the_limit_and_counted() -> None:
    content = hdr.ContentPass([], _job(), frozenset(), 2048, 102400, False)
    records: list[bytes] = []
    for piece in _pieces(_message_id, 1000):
        records += content.feed(piece)
    records += content.end()
    kept = hdr.MESSAGE_IDS_KEPT
    assert content.outcome.message_ids == [f"<{i:07d}@example.org>" for i in range(kept)]
    assert content.outcome.message_ids_dropped == 1000 - kept
    assert b"".join(records).count(b"Message-Id: <") == 1000  # all of them written


def test_a_bcc_rule_matching_many_headers_adds_each_address_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "h").write_text("/^X-H00000/ BCC copy@example.org\n"
                                "/^X-H0001([0-9]+):/ BCC c$1@example.org\n")
    tables = hbc.CheckTables.from_config(
        config.Config("/nonexistent", {"header_checks": f"regexp:{tmp_path}/h"}))
    checks = hbc.MessageChecks(tables, hbc.Where("Q", "local", "s", "r"))
    warned: list[str] = []
    monkeypatch.setattr(log, "info", lambda line: None)
    monkeypatch.setattr(log, "warning", warned.append)
    content = hdr.ContentPass([], _job(), frozenset(), 2048, 102400, False, checks)
    # X-H0000000..X-H0000099 give one address 100 times; X-H0001000..X-H0001999 give
    # 1000 distinct ones: one more address than BCC_KEPT in all
    assert hbc.BCC_KEPT == 1000
    for piece in _pieces(_distinct, 2000):
        content.feed(piece)
    content.end()
    assert checks.bcc[0] == "copy@example.org"  # 100 matches, one recipient
    assert checks.bcc[1:] == [f"c{i:03d}@example.org" for i in range(hbc.BCC_KEPT - 1)]
    assert warned == [f"Q: more than {hbc.BCC_KEPT} BCC addresses from header/body checks "
                      "-- the rest not added"]


def test_message_with_many_distinct_header_names_is_delivered_intact(new_instance) -> None:  # type: ignore[no-untyped-def]
    inst: Instance = new_instance(maildir=True)
    inst.start()
    names = b"".join(b"X-H%07d: v%d\r\n" % (i, i) for i in range(20_000))
    mids = b"".join(b"Message-Id: <%d.many@example.org>\r\n" % i for i in range(40))
    head = (b"From: a@example.org\r\nSubject: many-names\r\n" + mids + names
            + b"Date: Thu, 1 Jan 2026 00:00:00 +0000\r\n")
    body = b"first body line\r\nX-Not-A-Header: in the body\r\n"
    queue_id = inst.send(f"{ME}@localhost", f"{ME}@localhost", head + b"\r\n" + body)

    def delivered() -> bytes:
        for m in inst.maildir_messages():
            if b"\nSubject: many-names\n" in m:
                return m
        return b""

    msg = wait_until(delivered, 60, what="the many-names message in the Maildir")
    got_head, got_body = msg.split(b"\n\n", 1)
    sent = head.replace(b"\r\n", b"\n")
    assert got_head.endswith(b"\n" + sent.rstrip(b"\n")), "header block changed"
    assert got_body == body.replace(b"\r\n", b"\n")
    lines = inst.wait_log(rf"{queue_id}: message-id=")
    assert lines[0].endswith(f"{queue_id}: message-id=<0.many@example.org>")
    kept = hdr.MESSAGE_IDS_KEPT
    inst.wait_log(rf"{queue_id}: message-id=<{kept - 1}\.many@example.org>")
    inst.wait_log(rf"warning: {queue_id}: {40 - kept} more Message-Id: headers not logged")
    assert f"message-id=<{kept}.many@example.org>" not in inst.log()
