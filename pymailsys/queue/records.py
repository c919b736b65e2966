"""Postfix queue-file records: the record-type table and one reader/writer.

A record is one type byte, the payload length as a base-128 varint (low seven
bits first, high bit set on every byte but the last), then the payload, which
may hold any byte. A queue file is a sequence of records that a complete file
ends with ``E``. This is exactly Postfix's ``rec_put``/``rec_get`` format, so a
file written here reads in Postfix's ``postcat`` and the other way round.

Promises: ``encode_record`` and ``iter_records`` are exact inverses;
``iter_records`` refuses (``RecordError``) a record type outside ``REC_TYPES``,
a payload over ``max_length`` and a truncated record, and never reads past the
end. ``encode_varint``/``decode_varint`` are the one base-128 codec, with its
length limit, that the attribute protocol (``pymailsys.ipc.attr``) uses too.
``message_size_record`` formats the fixed-width ``C`` record that is
rewritten in place once the sizes are known.

``L`` is two record types, told apart by where it stands: in the message
content a chunk of a long line (REC_TYPE_CONT, ``unterminated_text``); in
the envelope or the extracted records the content filter
(REC_TYPE_FILT, ``content_filter``: ``transport:nexthop``, the last one read
wins), which is how ``postcat`` labels it there.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO

# Record types, as in Postfix's global/rec_type.h: type byte -> postcat label.
REC_TYPE_SIZE = b"C"
REC_TYPE_TIME = b"T"
REC_TYPE_CTIME = b"c"
REC_TYPE_FULL = b"F"
REC_TYPE_INSP = b"I"
REC_TYPE_FILT = b"L"
REC_TYPE_FROM = b"S"
REC_TYPE_DONE = b"D"
REC_TYPE_DRCP = b"/"
REC_TYPE_RCPT = b"R"
REC_TYPE_ORCP = b"O"
REC_TYPE_WARN = b"W"
REC_TYPE_ATTR = b"A"
REC_TYPE_KILL = b"K"
REC_TYPE_RDR = b">"
REC_TYPE_FLGS = b"f"
REC_TYPE_DELAY = b"d"
REC_TYPE_RRTO = b"r"
REC_TYPE_ERTO = b"e"
REC_TYPE_PRIO = b"P"
REC_TYPE_PTR = b"p"
REC_TYPE_VERP = b"V"
REC_TYPE_DSN_RET = b"<"
REC_TYPE_DSN_ENVID = b"i"
REC_TYPE_DSN_ORCPT = b"o"
REC_TYPE_DSN_NOTIFY = b"n"
REC_TYPE_MESG = b"M"
REC_TYPE_CONT = b"L"
REC_TYPE_NORM = b"N"
REC_TYPE_DTXT = b"w"
REC_TYPE_XTRA = b"X"
REC_TYPE_RRTO_OLD = b"r"
REC_TYPE_END = b"E"
REC_TYPE_MILT_COUNT = b"m"

REC_TYPES: dict[bytes, str] = {
    b"C": "message_size",
    b"T": "message_arrival_time",
    b"c": "create_time",
    b"F": "sender_fullname",
    b"I": "content_inspector",
    b"L": "content_filter",  # outside the content; REC_TYPE_CONT there: unterminated_text
    b"S": "sender",
    b"D": "done_recipient",
    b"/": "canceled_recipient",
    b"R": "recipient",
    b"O": "original_recipient",
    b"W": "warning_message_time",
    b"A": "named_attribute",
    b"K": "killed",
    b">": "redirect_to",
    b"f": "flags",
    b"d": "delay",
    b"r": "return_receipt",
    b"e": "errors_to",
    b"P": "priority",
    b"p": "pointer_record",
    b"V": "verp_delimiters",
    b"<": "dsn_return_flags",
    b"i": "dsn_envelope_id",
    b"o": "dsn_original_recipient",
    b"n": "dsn_notify_flags",
    b"M": "message_content",
    b"N": "regular_text",
    b"w": "padding",
    b"X": "extracted_info",
    b"E": "message_end",
    b"m": "milter_count",
}

DEFAULT_MAX_LENGTH = 1 << 24


class RecordError(ValueError):
    """A malformed, unknown, oversized or truncated record (``incomplete``: the data
    ends inside the record, so more of it may complete the record)."""

    def __init__(self, message: str, incomplete: bool = False) -> None:
        super().__init__(message)
        self.incomplete = incomplete


VARINT_MAX_SHIFT = 35  # at most six bytes: lengths below 2**42


class VarintIncomplete(RecordError):
    """The data ends inside a base-128 number (more bytes may complete it)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, incomplete=True)


SHORT_LENGTHS = [bytes((n,)) for n in range(128)]  # the base-128 form of every n < 128


def encode_varint(n: int) -> bytes:
    """``n`` as a base-128 number: low seven bits first, high bit on all but the last byte."""
    if 0 <= n < 128:
        return SHORT_LENGTHS[n]
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def decode_varint(data: bytes | bytearray | memoryview, pos: int = 0) -> tuple[int, int]:
    """The base-128 number at ``pos`` and the offset after it.

    ``VarintIncomplete`` when the data ends inside the number; ``RecordError``
    when it runs past ``VARINT_MAX_SHIFT`` (the one limit every reader shares).
    """
    value = shift = 0
    end = len(data)
    while True:
        if pos >= end:
            raise VarintIncomplete("truncated base-128 length")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > VARINT_MAX_SHIFT:
            raise RecordError("base-128 length too long")


def encode_record(rec_type: bytes, payload: bytes) -> bytes:
    n = len(payload)
    return rec_type + (SHORT_LENGTHS[n] if n < 128 else encode_varint(n)) + payload


def decode_record(data: bytes | memoryview, offset: int,
                  max_length: int = DEFAULT_MAX_LENGTH) -> tuple[bytes, bytes, int]:
    """Decode the record at offset: (type, payload, offset of the next record)."""
    end = len(data)
    if offset >= end:
        raise RecordError("unexpected end of file", incomplete=True)
    rec_type = bytes(data[offset:offset + 1])
    if rec_type not in REC_TYPES:
        raise RecordError(f"unknown record type {rec_type!r} at offset {offset}")
    try:
        length, pos = decode_varint(data, offset + 1)
    except VarintIncomplete:
        raise RecordError(f"truncated record length at offset {offset}", incomplete=True) from None
    except RecordError:
        raise RecordError(f"bad record length at offset {offset}") from None
    if length > max_length:
        raise RecordError(f"record at offset {offset} is too long: {length} bytes")
    if pos + length > end:
        raise RecordError(f"truncated record at offset {offset}", incomplete=True)
    return rec_type, bytes(data[pos:pos + length]), pos + length


def iter_records(data: bytes | memoryview, offset: int = 0,
                 max_length: int = DEFAULT_MAX_LENGTH) -> Iterator[tuple[int, bytes, bytes]]:
    """Yield (offset, type, payload) for every record from offset to the end."""
    end = len(data)
    while offset < end:
        rec_type, payload, nxt = decode_record(data, offset, max_length)
        yield offset, rec_type, payload
        offset = nxt


def read_file_records(f: BinaryIO, max_length: int = DEFAULT_MAX_LENGTH) -> list[tuple[int, bytes, bytes]]:
    f.seek(0)
    return list(iter_records(f.read(), 0, max_length))


SIZE_FIELD_WIDTH = 15
SIZE_RECORD_LENGTH = 6 * SIZE_FIELD_WIDTH + 5


# The SMTPUTF8 field of the size record (Postfix's smtputf8.h): the client asked for
# SMTPUTF8, and where the message has UTF-8 (cleanup records these only when asked).
SMTPUTF8_REQUESTED = 1 << 0
SMTPUTF8_HEADER = 1 << 1
SMTPUTF8_SENDER = 1 << 2
SMTPUTF8_RECIPIENT = 1 << 3


def message_size_record(content_size: int, data_offset: int, rcpt_count: int,
                        qmgr_flags: int = 0, content_length: int = 0, smtputf8: int = 0) -> bytes:
    """The fixed-width C record: six %15ld fields (SIZE_FIELD_WIDTH) separated by spaces."""
    return encode_record(REC_TYPE_SIZE, b"%15d %15d %15d %15d %15d %15d" % (
        content_size, data_offset, rcpt_count, qmgr_flags, content_length, smtputf8))


def parse_size_record(payload: bytes) -> list[int]:
    """The C record's fields: plain decimal digits, at most 18 each (RecordError otherwise)."""
    fields = payload.split()
    # the fields joined are digits only when each is (none is empty): one test, no loop;
    # no field is longer than all of them together (18 digits, as a file's usually are)
    digits = b"".join(fields)
    if not fields or not digits.isdigit() or (len(digits) > 18 and max(map(len, fields)) > 18):
        raise RecordError(f"bad message_size record {payload[:100]!r}")
    return list(map(int, fields))


def text_records(line: bytes, line_length_limit: int = 2048) -> bytes:
    """Encode one line of message text (without its terminator) as L* N records."""
    if len(line) <= line_length_limit:
        return encode_record(REC_TYPE_NORM, line)
    out = bytearray()
    while len(line) > line_length_limit:
        out += encode_record(REC_TYPE_CONT, line[:line_length_limit])
        line = line[line_length_limit:]
    out += encode_record(REC_TYPE_NORM, line)
    return bytes(out)
