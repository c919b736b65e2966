"""cleanup's body records: Postfix's framing, one N record per line (L records for the
pieces of a line over line_length_limit), however the lines run and the content is cut.

``encode_text`` encodes runs of equal-length lines in bulk; it must give exactly the
records ``encode_lines`` gives one line at a time, including for runs broken by a
shorter line, lengths on both sides of the one-byte length (127/128) and lines
longer than the limit. ``ContentPass`` fed in pieces of any size must give the
records of the lines as they were sent.
"""

from __future__ import annotations

import random

import pytest
from pymailsys.daemons.cleanup import headers as hdr

from pymailsys.queue.records import text_records


def _text(rnd: random.Random, limit: int) -> bytes:
    lines: list[bytes] = []
    for _ in range(rnd.randint(0, 12)):
        if rnd.random() < 0.5:  # a run of one length, maybe broken by a shorter line
            length = rnd.choice((0, 1, 60, 76, 78, 127, 128, 300, limit, limit + 1))
            run = [bytes(rnd.choice(b"aN.\r") for _ in range(length))
                   for _ in range(rnd.randint(1, 200))]
            if run and rnd.random() < 0.4:
                run[rnd.randrange(len(run))] = b"short"[:rnd.randint(0, 5)]
            lines += run
        else:
            lines += [b"y" * rnd.choice((0, 3, 77, 129, 2 * limit + 5))
                      for _ in range(rnd.randint(1, 30))]
    return b"".join(line + b"\n" for line in lines)


def test_encode_lines_gives_one_record_per_line() -> None:
    """Lines all shorter than 128 bytes (one-byte lengths, encoded in bulk) and lines
    with a longer one among them give the records of text_records, line by line."""
    rnd = random.Random(6)
    for _ in range(200):
        lengths = (0, 1, 2, 76, 126, 127) if rnd.random() < 0.7 else (0, 127, 128, 300, 5000)
        lines = [b"x" * rnd.choice(lengths) for _ in range(rnd.randint(0, 40))]
        assert hdr.encode_lines(lines, 2048) == (
            b"".join(text_records(line, 2048) for line in lines),
            sum(len(line) + 2 for line in lines))


@pytest.mark.parametrize("span", [100, hdr.SPAN])  # short spans: runs after other lines
def test_encode_text_gives_the_records_of_encode_lines(monkeypatch: pytest.MonkeyPatch,
                                                       span: int) -> None:
    monkeypatch.setattr(hdr, "SPAN", span)
    rnd = random.Random(4)
    for _ in range(80):
        limit = rnd.choice((2048, 128, 200))  # Postfix's least line_length_limit is 512
        text = b"zz\n" + _text(rnd, limit)
        start = rnd.choice((0, 3))
        lines = text[start:-1].split(b"\n") if len(text) > start else []
        assert hdr.encode_text(text, start, len(text), limit) == hdr.encode_lines(lines, limit)


@pytest.mark.parametrize("span", [100, hdr.SPAN])
def test_content_pass_in_pieces_gives_one_record_per_line(monkeypatch: pytest.MonkeyPatch,
                                                          span: int) -> None:
    monkeypatch.setattr(hdr, "SPAN", span)
    rnd = random.Random(5)
    job = hdr.HeaderJob(queue_id="Q", myhostname="h", created=0, date="d", sender="s")
    for _ in range(40):
        limit = rnd.choice((2048, 128))
        body = _text(rnd, limit) + b"unfinished" * rnd.randint(0, 300)
        msg = b"Subject: s\n\n" + body
        content = hdr.ContentPass(["Received: x"], job, frozenset(), limit, 102400, False)
        out: list[bytes] = []
        pos = 0
        while pos < len(msg):
            step = rnd.choice((1, 7, 100, 4096, 65536, 300000))
            out += content.feed(msg[pos:pos + step])
            pos += step
        out += content.end()
        lines = [b"Received: x"] + msg.split(b"\n")
        if not lines[-1]:
            lines.pop()
        assert b"".join(out) == b"".join(text_records(line, limit) for line in lines)
        assert content.outcome.content_length == sum(len(line) + 2 for line in lines)
