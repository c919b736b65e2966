"""Fuzz target: the attribute-protocol decoder (pymailsys/ipc/attr.py).

Arbitrary bytes on a stream: every input decodes to attribute lists, a clean
end, or ProtocolError, never another exception. Declared lengths up to the
varint's limit are refused or waited for without allocating them: a peer that
claims a gigabyte and sends ten bytes costs ten bytes.

The suite runs a bounded, derandomized number of examples; a longer run:
``PYMAILSYS_FUZZ_EXAMPLES=100000 pytest -p no:cacheprovider tests/test_fuzz_attr.py``.
"""

from __future__ import annotations

import asyncio
import os
import tracemalloc

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pymailsys.ipc import attr
from pymailsys.queue.records import encode_varint

EXAMPLES = int(os.environ.get("PYMAILSYS_FUZZ_EXAMPLES", "300"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=EXAMPLES <= 300,
                suppress_health_check=[HealthCheck.too_slow])
MAX_LISTS = 10_000  # a bound on the decoding loop, far above what the inputs can hold


def decode_stream(data: bytes) -> list[attr.AttrList]:
    """Every attribute list in data, as a server reads them, then end of stream."""

    async def run() -> list[attr.AttrList]:
        reader = asyncio.StreamReader(limit=1 << 16)
        reader.feed_data(data)
        reader.feed_eof()
        out: list[attr.AttrList] = []
        for _ in range(MAX_LISTS):
            try:
                got = await attr.read_attrs(reader)
            except attr.ProtocolError:
                break
            if got is None:
                break
            out.append(got)
            for name, value in got.pairs:
                assert isinstance(name, str) and isinstance(value, bytes)
                try:
                    got.number(name)
                except attr.ProtocolError:
                    pass
        return out

    return asyncio.run(run())


names = st.one_of(st.sampled_from([b"status", b"queue_id", b"rcpt", b"sender", b"size"]),
                  st.binary(min_size=1, max_size=300).map(lambda b: b.replace(b"\0", b"x")))
lengths = st.one_of(st.integers(0, 40), st.integers(0, 1 << 42))
attributes = st.builds(lambda n, length, v: n + b"\0" + encode_varint(length) + v,
                       names, lengths, st.binary(max_size=40))
messages = st.builds(lambda items, end: b"".join(items) + (b"\0" if end else b""),
                     st.lists(attributes, max_size=6), st.booleans())


def test_round_trip():
    data = attr.encode({"status": 0, "rcpt": ["a@x", "b@y"], "blob": b"\0\xff"})
    (got,) = decode_stream(data)
    assert got.number("status") == 0 and got.all("rcpt") == ["a@x", "b@y"]
    assert got.raw("blob") == b"\0\xff"


@FUZZ
@given(st.binary(max_size=4096))
def test_arbitrary_bytes(data: bytes) -> None:
    decode_stream(data)


@FUZZ
@given(st.lists(messages, max_size=5))
def test_well_formed_framing_with_wild_lengths(parts: list[bytes]) -> None:
    decode_stream(b"".join(parts))


@pytest.mark.parametrize("length", [attr.MAX_VALUE, attr.MAX_VALUE + 1, 1 << 35, (1 << 42) - 1])
def test_a_declared_huge_length_is_not_allocated(length: int) -> None:
    data = b"rcpt\0" + encode_varint(length) + b"0123456789"
    tracemalloc.start()
    try:
        assert decode_stream(data) == []
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20


def test_an_overlong_varint_is_refused():
    assert decode_stream(b"rcpt\0" + b"\xff" * 12 + b"\0") == []


def read_all(data: bytes, limits: attr.Limits) -> tuple[list[list[tuple[str, bytes]]], str]:
    """Every list a server reads from data, and how the reading ended (the error's
    message, or "end")."""

    async def run() -> tuple[list[list[tuple[str, bytes]]], str]:
        reader = asyncio.StreamReader(limit=1 << 16)
        reader.feed_data(data)
        reader.feed_eof()
        out: list[list[tuple[str, bytes]]] = []
        for _ in range(MAX_LISTS):
            try:
                got = await attr.read_attrs(reader, limits)
            except attr.ProtocolError as e:
                return out, f"{type(e).__name__}: {e}"
            if got is None:
                return out, "end"
            out.append(got.pairs)
        return out, "too many lists"

    return asyncio.run(run())


LIMITS = [attr.DEFAULT_LIMITS, attr.Limits(attrs=3, value=30, total=60),
          attr.Limits(attrs=2, value=1000, total=1000), attr.Limits(attrs=100, value=5, total=12)]


@FUZZ
@given(st.lists(st.one_of(messages, st.binary(max_size=20)), max_size=5),
       st.sampled_from(LIMITS))
def test_the_one_pass_decoder_reads_what_the_attribute_by_attribute_reader_reads(
        parts: list[bytes], limits: attr.Limits) -> None:
    """The same lists and the same refusal (its class and message), with limits or
    without, whether a list is taken whole from the buffer or attribute by attribute."""
    data = b"".join(parts)
    fast = read_all(data, limits)
    try:
        attr._FAST_READER = False
        slow = read_all(data, limits)
    finally:
        attr._FAST_READER = True
    assert fast == slow


def test_the_one_pass_decoder_counts_long_lengths_and_limits_as_the_reader_does() -> None:
    big = b"v" * 300  # a two-byte length
    data = attr.encode([("a", big), ("b", "x"), ("c", big)])
    total = 2 + 300 + 2 + 1 + 2 + 300
    assert read_all(data, attr.Limits(total=total)) == (
        [[("a", big), ("b", b"x"), ("c", big)]], "end")
    assert read_all(data, attr.Limits(total=total - 1))[1] \
        == f"LimitExceeded: request of more than {total - 1} bytes"
    assert read_all(data, attr.Limits(value=299))[1] \
        == "LimitExceeded: attribute a: 300 bytes, over the limit of 299"
    assert read_all(data, attr.Limits(attrs=2))[1] == "LimitExceeded: more than 2 attributes"


def test_a_list_of_many_attributes_is_looked_at_once_before_the_slow_way(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Over the attribute limit: refused, and the one-pass decoder was tried once for the
    list, not once per attribute (which made 20,000 attributes cost 20,000 passes)."""
    calls = []
    real = attr._take_buffered

    def counted(*args):  # type: ignore[no-untyped-def]
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(attr, "_take_buffered", counted)
    data = b"".join(b"rcpt\0\x01a" for _ in range(20000)) + b"\0"

    async def run() -> str:
        reader = asyncio.StreamReader(limit=1 << 16)
        reader.feed_data(data)
        reader.feed_eof()
        try:
            await attr.read_attrs(reader, attr.Limits(attrs=1000))
        except attr.LimitExceeded as e:
            return str(e)
        return "accepted"

    assert asyncio.run(run()) == "more than 1000 attributes"
    assert len(calls) == 1


@given(st.lists(st.tuples(st.sampled_from(["a", "b", "rcpt", "sender"]), st.binary(max_size=8)),
                max_size=12))
def test_first_values_is_what_raw_finds(pairs: list[tuple[str, bytes]]) -> None:
    """A repeated name's first value wins in first_values, as in raw and the getters
    built on it (cleanup and the delivery request read through first_values)."""
    attrs = attr.AttrList(pairs)
    first = attrs.first_values()
    assert first == {name: attrs.raw(name) for name, _ in pairs}
