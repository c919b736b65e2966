"""Fuzz target: the queue-file record reader (queue/records.py, queue/queue_file.py).

Arbitrary bytes, well-formed records in any order, and damaged copies of a
real queue file: every input reads as an envelope (and its content lines) or
is refused with QueueFileError (RecordError for the bare record reader), never
any other exception.

The suite runs a bounded, derandomized number of examples; a longer run:
``PYMAILSYS_FUZZ_EXAMPLES=100000 pytest -p no:cacheprovider tests/test_fuzz_queue_file.py``.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pymailsys.queue import records as r
from pymailsys.queue.queue_file import (
    QueueFileBuilder,
    QueueFileError,
    _records,
    content_lines,
    read_envelope_bytes,
)

EXAMPLES = int(os.environ.get("PYMAILSYS_FUZZ_EXAMPLES", "300"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=EXAMPLES <= 300,
                suppress_health_check=[HealthCheck.too_slow])


def _sample() -> bytes:
    b = QueueFileBuilder(1795594109.5)
    b.attr("rewrite_context", "local")
    b.sender("alice@example.org")
    b.recipient("bob@example.org")
    b.recipient("carol@example.org")
    b.line(b"Subject: sample")
    b.line(b"")
    b.line(b"x" * 3000)
    return b.build()


SAMPLE = _sample()

numbers = st.sampled_from([b"0", b"1", b"17", b"1795594109 500000", b"nan", b"inf", b"-1",
                           b"1e9", b"999999999999999999999999", b" 5 ", b"1_0", b"\xd9\xa1"])
payloads = st.one_of(st.binary(max_size=64), numbers,
                     st.builds(lambda a, b: a + b"=" + b, st.sampled_from(
                         [b"notify_flags", b"dsn_orig_rcpt", b"rewrite_context", b"x"]), numbers))
records = st.builds(r.encode_record, st.sampled_from(sorted(r.REC_TYPES)), payloads)


def read_all(data: bytes) -> None:
    """What qmgr, local and bounce do with a file: envelope, then every content line."""
    try:
        env = read_envelope_bytes(data, "FUZZ", "/fuzz")
        for line in content_lines(data, env.data_offset):
            assert isinstance(line, bytes)
    except QueueFileError:
        return
    assert all(isinstance(rc.address, str) for rc in env.recipients)
    assert env.arrival == env.arrival  # never NaN


def decoded(reader, data: bytes, offset: int = 0) -> tuple[list, str]:
    """The records a reader yields from offset and the error that stopped it ("" at the end)."""
    out: list = []
    try:
        for record in reader(data, offset):
            out.append(record)
    except r.RecordError as e:
        return out, f"{e} {e.incomplete}"
    return out, ""


def same_records(data: bytes) -> None:
    """The envelope reader's inline decoder passes and refuses exactly what iter_records does."""
    for offset in (0, len(data) // 2):
        assert decoded(_records, data, offset) == decoded(r.iter_records, data, offset)


def test_the_sample_reads():
    env = read_envelope_bytes(SAMPLE, "FUZZ", "/fuzz")
    assert [rc.address for rc in env.recipients] == ["bob@example.org", "carol@example.org"]
    assert b"x" * 3000 in list(content_lines(SAMPLE, env.data_offset))


@FUZZ
@given(st.binary(max_size=4096))
def test_arbitrary_bytes(data: bytes) -> None:
    read_all(data)
    same_records(data)
    try:
        for _offset, rec_type, payload in r.iter_records(data):
            assert rec_type in r.REC_TYPES and isinstance(payload, bytes)
    except r.RecordError:
        pass


@FUZZ
@given(st.lists(records, max_size=30), st.booleans())
def test_well_formed_records_in_any_order(recs: list[bytes], sized: bool) -> None:
    body = b"".join(recs)
    if sized:  # a plausible C record first, so the reader goes past it
        size = r.message_size_record(len(body) // 2, 20 + len(body) // 3, 1)
        body = size + body
    read_all(body)
    same_records(body)


@FUZZ
@given(st.lists(st.tuples(st.integers(0, len(SAMPLE) - 1), st.integers(0, 255)), min_size=1,
                max_size=8),
       st.integers(0, len(SAMPLE)))
def test_damaged_copies_of_a_real_file(flips: list[tuple[int, int]], cut: int) -> None:
    data = bytearray(SAMPLE)
    for at, value in flips:
        data[at] = value
    read_all(bytes(data))
    read_all(bytes(data[:cut]))
    same_records(bytes(data))
    same_records(bytes(data[:cut]))


@FUZZ
@given(st.lists(st.tuples(st.text(max_size=20), st.text(max_size=200)), max_size=8))
def test_attrs_writes_the_records_of_attr(items: list[tuple[str, str]]) -> None:
    """QueueFileBuilder.attrs (cleanup's many A records at once) gives the bytes of one
    attr call per pair: lengths on both sides of one byte (127/128), any text."""
    one, many = QueueFileBuilder(1795594109.5), QueueFileBuilder(1795594109.5)
    for name, value in items:
        one.attr(name, value)
    many.attrs(items)
    assert many.build() == one.build()
