"""Fuzz target: the queue-file record reader (queue/records.py, queue/queue_file.py).

Arbitrary bytes, well-formed records in any order, and damaged copies of a
real queue file: every input reads as an envelope (and its content lines) or
is refused with QueueFileError (RecordError for the bare record reader), never
any other exception.

The suite runs a bounded, derandomized number of examples; a longer run:
``PYMAILSYS_FUZZ_EXAMPLES=100000 pytest -p no:cacheprovider tests/test_fuzz_queue_file.py``.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pymailsys.queue import records as r
from pymailsys.queue.queue_file import (
    QueueFileBuilder,
    QueueFileError,
    Recipient,
    content_lines,
    number,
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


def plain_read(data: bytes, rcpt_from: int = 0, rcpt_limit: int = 0) -> dict:
    """read_envelope_bytes written plainly, a record at a time from records.iter_records
    (its record decoding is inline, for speed): the envelope as a dict."""
    env: dict = {"queue_id": "FUZZ", "path": "/fuzz", "sizes": [], "arrival": 0.0,
                 "sender": "", "full_name": "", "recipients": [], "attrs": {}, "data_offset": 0,
                 "xtra_offset": 0, "warn_time": 0, "warn_offset": 0, "warn_length": 0,
                 "file_size": len(data), "content_filter": "", "rcpt_more": 0,
                 "rcpt_pending": 0}
    pending_rcpt: dict[str, Any] = {"orig": "", "notify": 0, "orcpt": ""}

    def recipient_record(offset: int, rtype: bytes, payload: bytes) -> bool:
        text = payload.decode("utf-8", "surrogateescape")
        if rtype == r.REC_TYPE_ATTR:
            name, _, value = text.partition("=")
            if name == "dsn_orig_rcpt":
                pending_rcpt["orcpt"] = value
            elif name == "notify_flags":
                pending_rcpt["notify"] = number(value, "notify_flags") if value else 0
            else:
                env["attrs"][name] = value
        elif rtype == r.REC_TYPE_ORCP:
            pending_rcpt["orig"] = text
        elif rtype in (r.REC_TYPE_RCPT, r.REC_TYPE_DONE, r.REC_TYPE_DRCP):
            pending = rtype == r.REC_TYPE_RCPT
            env["rcpt_pending"] += pending
            if rcpt_limit <= 0 or (pending and offset >= rcpt_from
                                   and len(env["recipients"]) < rcpt_limit):
                env["recipients"].append(dataclasses.asdict(Recipient(
                    text, pending_rcpt["orig"], offset, not pending, pending_rcpt["notify"],
                    pending_rcpt["orcpt"])))
            elif pending and offset >= rcpt_from:
                env["rcpt_more"] = env["rcpt_more"] or offset
            pending_rcpt.update(orig="", notify=0, orcpt="")
        else:
            return False
        return True

    have_sender = have_content = False
    try:
        for offset, rtype, payload in r.iter_records(data):
            text = payload.decode("utf-8", "surrogateescape")
            if offset == 0:
                if rtype != r.REC_TYPE_SIZE:
                    raise QueueFileError("first record is not a size record")
                env["sizes"] = r.parse_size_record(payload)
            elif recipient_record(offset, rtype, payload):
                pass
            elif rtype == r.REC_TYPE_TIME:
                parts = payload.split()
                if not 1 <= len(parts) <= 2:
                    raise QueueFileError(f"bad time record: {payload[:40]!r}")
                micros = number(parts[1], "time record") if len(parts) > 1 else 0
                if micros >= 1_000_000:
                    raise QueueFileError(f"bad time record: {payload[:40]!r}")
                env["arrival"] = number(parts[0], "time record") + micros / 1e6
            elif rtype == r.REC_TYPE_FULL:
                env["full_name"] = text
            elif rtype == r.REC_TYPE_FROM:
                env["sender"], have_sender = text, True
            elif rtype == r.REC_TYPE_FILT:
                env["content_filter"] = text
            elif rtype == r.REC_TYPE_WARN:
                env["warn_time"] = number(payload, "warning time") if payload.strip() else 0
                env["warn_offset"], env["warn_length"] = offset, len(payload)
            elif rtype == r.REC_TYPE_MESG:
                sizes = env["sizes"]
                env["data_offset"] = sizes[1] if len(sizes) >= 2 and sizes[1] > 0 else offset + 2
                xtra = env["data_offset"] + sizes[0]
                while data[xtra:xtra + 1] in (r.REC_TYPE_PTR, r.REC_TYPE_DTXT):
                    xtra = r.decode_record(data, xtra)[2]
                if xtra > len(data) or data[xtra:xtra + 1] != r.REC_TYPE_XTRA:
                    raise QueueFileError("content size does not point at the extracted records")
                env["xtra_offset"] = xtra
                for xoffset, xtype, xpayload in r.iter_records(data, xtra):
                    if xtype == r.REC_TYPE_END:
                        break
                    if xtype == r.REC_TYPE_FILT:
                        env["content_filter"] = xpayload.decode("utf-8", "surrogateescape")
                    else:
                        recipient_record(xoffset, xtype, xpayload)
                else:
                    raise QueueFileError("no end-of-message record")
                have_content = True
                break
        if not have_content:
            raise QueueFileError("no message content record")
    except (r.RecordError, ValueError, IndexError) as e:
        raise QueueFileError(str(e)) from None
    if not have_sender:
        raise QueueFileError("no sender record")
    return env


def outcome(reader, data: bytes, *args: int) -> dict | str:
    try:
        return reader(data, *args)
    except QueueFileError as e:
        return f"QueueFileError: {e}"


def same_records(data: bytes) -> None:
    """The envelope reader reads, and refuses, exactly as plain_read does (the slices of
    qmgr's reading too)."""
    for args in ((), (0, 1), (len(data) // 3, 1), (len(data) // 3, 2)):
        assert outcome(lambda d, *a: dataclasses.asdict(read_envelope_bytes(d, "FUZZ", "/fuzz", *a)),
                       data, *args) == outcome(plain_read, data, *args)


def test_the_sample_reads():
    env = read_envelope_bytes(SAMPLE, "FUZZ", "/fuzz")
    assert [rc.address for rc in env.recipients] == ["bob@example.org", "carol@example.org"]
    assert b"x" * 3000 in list(content_lines(SAMPLE, env.data_offset))


def test_records_after_the_content_read_as_plain_read_reads_them():
    """The extracted records go on from the envelope's: an O and notify_flags left over
    apply to the first recipient after the content; T, S and W count only before it."""
    e = r.encode_record
    envelope = b"".join([
        e(r.REC_TYPE_TIME, b"1795594109 500000"), e(r.REC_TYPE_FROM, b"alice@example.org"),
        e(r.REC_TYPE_ORCP, b"Bob@example.org"), e(r.REC_TYPE_RCPT, b"bob@example.org"),
        e(r.REC_TYPE_ATTR, b"notify_flags=8"), e(r.REC_TYPE_ORCP, b"Carol@example.org"),
        e(r.REC_TYPE_MESG, b"")])
    content = e(r.REC_TYPE_NORM, b"Subject: x") + e(r.REC_TYPE_NORM, b"")
    extracted = b"".join([
        e(r.REC_TYPE_XTRA, b""), e(r.REC_TYPE_RCPT, b"carol@example.org"),
        e(r.REC_TYPE_TIME, b"nan"), e(r.REC_TYPE_WARN, b"x"), e(r.REC_TYPE_FROM, b"eve@x"),
        e(r.REC_TYPE_ATTR, b"dsn_orig_rcpt=rfc822;dave@example.org"),
        e(r.REC_TYPE_DONE, b"dave@example.org"), e(r.REC_TYPE_FILT, b"smtp:[filter]"),
        e(r.REC_TYPE_END, b"")])
    size = r.message_size_record(len(content), r.SIZE_RECORD_LENGTH + 2 + len(envelope), 3)
    data = size + envelope + content + extracted
    env = read_envelope_bytes(data, "FUZZ", "/fuzz")
    assert [(rc.address, rc.orig, rc.notify, rc.dsn_orcpt, rc.done) for rc in env.recipients] == [
        ("bob@example.org", "Bob@example.org", 0, "", False),
        ("carol@example.org", "Carol@example.org", 8, "", False),
        ("dave@example.org", "", 0, "rfc822;dave@example.org", True)]
    assert (env.sender, env.warn_offset, env.content_filter) == ("alice@example.org", 0,
                                                                 "smtp:[filter]")
    assert env.rcpt_pending == 2
    same_records(data)
    for cut in range(len(data)):
        same_records(data[:cut])


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
