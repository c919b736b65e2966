"""The maildrop reader's bounds (queue.maildrop): pointer records followed as a
requeued Postfix queue file needs them, a pointer loop refused at once with memory
that does not grow, content over message_size_limit refused, the content streamed."""

from __future__ import annotations

import tracemalloc

import pytest
from qf_helpers import pointer_loop, postfix_edited

from pymailsys.queue import maildrop
from pymailsys.queue import records as r


def submission(lines: list[bytes]) -> maildrop.Submission:
    return maildrop.Submission(sender="alice@example.org", recipients=["bob@example.org"],
                               lines=lines)


def text(data: bytes, size_limit: int = 0) -> bytes:
    """The content pickup streams to cleanup: parsed without it, then read again."""
    src = maildrop.RecordFile.of_bytes(data)
    sub = maildrop.parse_maildrop(src, size_limit=size_limit, lines=False)
    assert sub.lines == []
    return b"".join(maildrop.content_pieces(src, sub.content_offset, size_limit=size_limit,
                                            chunk=1000))


def test_a_pointer_loop_is_refused_without_replaying_it() -> None:
    data = pointer_loop(20)  # 40 KB; replayed 10,000 times it was 400 MB in memory
    for lines in (True, False):
        tracemalloc.start()
        try:
            with pytest.raises(maildrop.SubmissionError, match="^too many reverse jump records$"):
                maildrop.parse_maildrop(maildrop.RecordFile.of_bytes(data), lines=lines)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 2 * len(data) + (1 << 20), peak


def test_more_than_10000_reverse_jumps_are_refused() -> None:
    """Postfix's rec_goto limit, even when no record is read twice: a p record after
    M jumps to the last of 10,001 p records appended after E, each of which jumps
    back to the one before it, the first back to the content."""
    data = submission([b"Subject: s", b"", b"body"]).to_records()
    content = data.index(r.encode_record(r.REC_TYPE_MESG, b"")) + 2
    head, rest = data[:content], data[content:]

    def ptr(target: int) -> bytes:
        return r.encode_record(r.REC_TYPE_PTR, b"%15d" % target)

    size = len(ptr(0))
    hops = [len(head) + size + len(rest) + i * size for i in range(10_001)]
    chain = b"".join(ptr(before) for before in [len(head) + size] + hops[:-1])

    def jumping_back(n: int) -> bytes:
        return head + ptr(hops[n - 1]) + rest + chain

    assert maildrop.parse_maildrop(jumping_back(10_000)).lines == [b"Subject: s", b"", b"body"]
    with pytest.raises(maildrop.SubmissionError, match="^too many reverse jump records$"):
        maildrop.parse_maildrop(jumping_back(10_001))


def test_a_requeued_postfix_queue_file_is_read_through_its_pointers() -> None:
    lines = [b"Subject: the old one", b"To: bob@example.org", b"", b"body " * 1000, b"end"]
    data = postfix_edited(submission(lines).to_records(), b"Subject: the old one",
                          [b"Subject: new and longer", b"X-Milter: added"],
                          ["carol@example.org"])
    sub = maildrop.parse_maildrop(data)
    assert sub.sender == "alice@example.org"
    assert sub.recipients == ["bob@example.org", "carol@example.org"]
    want = [b"Subject: new and longer", b"X-Milter: added"] + lines[1:]
    assert sub.lines == want
    assert text(data) == b"".join(line + b"\n" for line in want)
    assert maildrop.parse_maildrop(data, size_limit=len(text(data))).lines == want


def test_content_over_the_size_limit_is_refused() -> None:
    one_long_line = submission([b"x" * 50_000]).to_records()  # 25 L records, then N
    many_lines = submission([b"y" * 100] * 500).to_records()
    for data in (one_long_line, many_lines):
        assert len(text(data, 60_000)) > 50_000
        with pytest.raises(maildrop.SubmissionError, match="^message file too big$"):
            maildrop.parse_maildrop(data, size_limit=40_000)
        src = maildrop.RecordFile.of_bytes(data)
        with pytest.raises(maildrop.SubmissionError, match="^message file too big$"):
            b"".join(maildrop.content_pieces(src, maildrop.parse_maildrop(data).content_offset,
                                             size_limit=40_000))
