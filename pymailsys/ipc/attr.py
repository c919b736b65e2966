"""The internal protocol: attribute lists over Unix stream sockets.

Grammar of one message (request or reply)::

    message   = *attribute terminator
    attribute = name NUL length value      ; name: 1*(printable ASCII but NUL)
    length    = varint                      ; base-128, low 7 bits first
    value     = length OCTETs               ; any bytes, NUL included
    terminator = NUL                        ; an empty name ends the list

A name may repeat (recipients travel as repeated ``rcpt`` attributes; ``encode``
sends a list or tuple of values as one attribute per value). Values are bytes;
``AttrList`` converts them on read (``text``, ``number``, ``all``).

One connection carries many requests. A client may pipeline: it sends requests
without waiting, and the server answers them in the order they came, even
though it may work on several at once (``serve_pipelined``). ``AttrClient`` is
the asyncio client: one long-lived connection, reopened when it breaks, with
requests pipelined over it. ``SyncAttrClient`` is the blocking client for
commands.

Streamed requests (``serve_streamed``, ``AttrClient.stream``, ``AttrPool``):
a request whose ``more`` attribute is non-zero continues in follow-up lists
on the same connection, each with ``more`` again, the last one without it.
The server hands the follow-ups to the request's handler as it reads them
(``FollowUps``: at most one list waits, so a slow handler slows the sender
down instead of filling memory) and sends the one reply after the last
follow-up was read. A client streams on a connection that nobody else uses
until the last list is written (``AttrPool`` keeps a connection per
concurrent stream and shares the others for plain requests).

Hello: a client may open a connection with a list whose only attribute is
``protocol`` (``HELLO``; Postfix's agents send ``protocol=delivery_request_protocol``
unasked, ours answer when asked, so that other clients see nothing new). The
server loop answers it itself, before any request, with the same ``protocol``
and ``requests_at_once``: how many requests it works on at once (1:
``serve_sequential``, or ``serve_pipelined`` with ``max_pending=1``; 0: no fixed
bound). ``AttrClient(hello=...)`` sends it and keeps the answer (``greeting``);
qmgr queues a request behind one in progress only on a connection whose agent
says 1.

Goodbye: a server that is going away (``stopping``: a reload, a changed table)
closes a connection once every request read so far has its reply. A client
could have written its next request at that very moment: closed unread, it
would fail (smtpd's 451, qmgr's deferral) although nothing was wrong. So on a
connection that opened with the hello the server writes ``goodbye`` (a list of
that one attribute, never a reply) once no request is unanswered, and the
client writes nothing more on that connection (its next request opens a new
one, to a process of the new generation). The value says what becomes of the
requests the client wrote before it read the goodbye:

* ``GOODBYE_SERVES_REST`` (``serve_pipelined``, ``serve_streamed``): the server
  goes on reading and answers them, until the client closes the connection,
  which it does once they have their replies, or until nothing came for
  ``GOODBYE_GRACE`` seconds. A stream that smtpd had begun still reaches cleanup.
* ``GOODBYE_READ_NOTHING`` (``serve_sequential``): the server closes at once and
  has read none of them (local restarting for a changed table must not deliver
  with the old one); the client fails them with ``NotRead``, so that their
  sender may send them again elsewhere (qmgr puts them back in its queue).

A connection without the hello is closed as before: a client such as a command's
``SyncAttrClient`` would take a goodbye for its reply.

Refuses (``ProtocolError``): a name over 256 bytes, a connection that ends
mid-message, a length that is not a base-128 number within
``records.VARINT_MAX_SHIFT`` (the one varint codec, shared with the queue file
records). A reader takes ``Limits``: at most so many attributes, bytes per
value and bytes per list (``LimitExceeded``, a ProtocolError, names the limit;
an oversized value is refused from its length, before any of it is read), and
an optional deadline for the whole list (``RequestTimeout``). Services that
any local user can reach (pickup, showq, flush) pass tight limits and ipc_timeout;
``DEFAULT_LIMITS`` (``MAX_VALUE`` per value and per list) is for peers of the
mail system itself. A list that is already whole in the reader's buffer (most
are) is decoded from it in one pass, with the same limits, instead of one await
per attribute (``tests/bench/attr_rate.py``: 48 -> 25 us for smtpd's request
to cleanup).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import socket
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from typing import Any

from pymailsys.queue.records import (
    VARINT_MAX_SHIFT,
    RecordError,
    VarintIncomplete,
    decode_varint,
    encode_varint,
)

MAX_NAME = 256
MAX_VALUE = 1 << 30

AttrValue = str | bytes | int
# What ``encode`` takes for one name: a value, or a list or tuple of values, each sent as
# an attribute of that name (the list types are spelled out: list is invariant).
AttrValues = (AttrValue | list[str] | list[bytes] | list[int] | list[AttrValue]
              | tuple[AttrValue, ...])
# An attribute list to send: (name, values) pairs, or a dict of them.
Attrs = Iterable[tuple[str, AttrValues]] | dict[str, Any]


class ProtocolError(Exception):
    """The peer broke the attribute protocol or went away mid-message."""


class LimitExceeded(ProtocolError):
    """A list with more attributes, or longer values, than the reader allows."""


class RequestTimeout(ProtocolError):
    """The list did not arrive whole within the reader's deadline."""


@dataclass(frozen=True)
class Limits:
    """What one attribute list may hold: attributes, bytes per value, bytes in all."""

    attrs: int = 1_000_000
    value: int = MAX_VALUE
    total: int = MAX_VALUE

    def check(self, count: int, name: str, length: int, total: int) -> None:
        """LimitExceeded when attribute number ``count`` (``length`` bytes, the list
        ``total`` bytes so far with it) is one too many."""
        if count > self.attrs:
            raise LimitExceeded(f"more than {self.attrs} attributes")
        if length > self.value:
            raise LimitExceeded(f"attribute {name}: {length} bytes, over the limit of "
                                f"{self.value}")
        if total > self.total:
            raise LimitExceeded(f"request of more than {self.total} bytes")


DEFAULT_LIMITS = Limits()


class AttrList:
    """A received attribute list: ordered (name, value) pairs with typed getters."""

    __slots__ = ("pairs",)

    def __init__(self, pairs: list[tuple[str, bytes]]) -> None:
        self.pairs = pairs

    def raw(self, name: str, default: bytes | None = None) -> bytes | None:
        for n, v in self.pairs:
            if n == name:
                return v
        return default

    def text(self, name: str, default: str = "") -> str:
        v = self.raw(name)
        return default if v is None else v.decode("utf-8", "surrogateescape")

    def number(self, name: str, default: int = 0) -> int:
        v = self.raw(name)
        if v is None:
            return default
        try:
            return int(v)
        except ValueError:
            raise ProtocolError(f"attribute {name}: not a number: {v!r}") from None

    def all(self, name: str) -> list[str]:
        return [v.decode("utf-8", "surrogateescape") for n, v in self.pairs if n == name]

    def first_values(self) -> dict[str, bytes]:
        """Each name's first value, as ``raw`` finds it: for a reader of many
        attributes, one pass instead of a search of the list per name."""
        return dict(reversed(self.pairs))

    def __contains__(self, name: object) -> bool:
        return any(n == name for n, _ in self.pairs)

    def __repr__(self) -> str:
        return f"AttrList({self.pairs!r})"


def _as_bytes(value: AttrValue) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, int):
        return str(value).encode()
    return value.encode("utf-8", "surrogateescape")


_ONE_BYTE_LENGTHS = [bytes((n,)) for n in range(128)]


def encode(attrs: Attrs) -> bytes:
    """Encode one attribute list, terminator included."""
    items = attrs.items() if isinstance(attrs, dict) else attrs
    parts: list[bytes] = []
    extend = parts.extend
    keys = _KEYS
    lengths = _ONE_BYTE_LENGTHS
    for name, value in items:
        try:
            key = keys[name]
        except KeyError:
            key = _key(name)
        # The common types first, each tested once: a request to an agent has a dozen
        # values (this order and the one extend per value cost 40% fewer instructions
        # than a loop over each name's values, qmgr's request 53,600 -> 32,000).
        if type(value) is str:
            data = value.encode("utf-8", "surrogateescape")
        elif type(value) is int:
            data = b"%d" % value  # as _as_bytes: str(value).encode(), for a plain int
        elif type(value) is bytes:
            data = value
        elif isinstance(value, (list, tuple)):
            for v in value:
                data = _as_bytes(v)
                n = len(data)
                extend((key, lengths[n] if n < 128 else encode_varint(n), data))
            continue
        else:
            data = _as_bytes(value)
        n = len(data)
        extend((key, lengths[n] if n < 128 else encode_varint(n), data))
    parts.append(b"\0")
    return b"".join(parts)


_KEYS: dict[str, bytes] = {}  # attribute name -> its encoded form, for the names in use


def _key(name: str) -> bytes:
    key = name.encode() + b"\0"
    if len(_KEYS) < 256:  # the protocol's names; a peer's odd names are not kept
        _KEYS[name] = key
    return key


async def _read_length(reader: asyncio.StreamReader) -> int:
    data = bytearray()
    while True:
        data += await reader.readexactly(1)
        try:
            return decode_varint(data)[0]
        except VarintIncomplete:
            continue
        except RecordError:
            raise ProtocolError("bad length") from None


async def read_attrs(reader: asyncio.StreamReader, limits: Limits = DEFAULT_LIMITS,
                     timeout: float | None = None) -> AttrList | None:
    """Read one attribute list; None on a clean end of stream before it starts.

    ``timeout`` bounds the whole list, the wait for its first byte included.
    """
    if timeout is None:  # asyncio.timeout(None) costs as much as decoding a short list
        return await _read_list(reader, limits)
    try:
        async with asyncio.timeout(timeout):
            return await _read_list(reader, limits)
    except TimeoutError:
        raise RequestTimeout(f"no complete request within {timeout:g}s") from None


async def _read_list(reader: asyncio.StreamReader, limits: Limits) -> AttrList | None:
    inner: Any = reader  # its internals (_FAST_READER)
    if _FAST_READER and type(reader) is asyncio.StreamReader and inner._exception is None:
        if not inner._buffer and not inner._eof:
            # readuntil's own wait, without its search for the first name (_take_buffered
            # makes that): a wait for the first bytes, then one pass over the buffer
            await inner._wait_for_data("readuntil")
        whole = _take_buffered(inner, limits)
        if whole is not None:
            return whole
    pairs: list[tuple[str, bytes]] = []
    total = 0
    first = True
    try:
        while True:
            name_bytes = await reader.readuntil(b"\0")
            if first and not name_bytes:
                return None
            first = False
            if name_bytes == b"\0":
                return AttrList(pairs)
            if len(name_bytes) > MAX_NAME:
                raise ProtocolError("attribute name too long")
            name = name_bytes[:-1].decode("ascii", "replace")
            length = await _read_length(reader)
            total += len(name_bytes) + length
            limits.check(len(pairs) + 1, name, length, total)
            value = await reader.readexactly(length) if length else b""
            pairs.append((name, value))
    except asyncio.IncompleteReadError as e:
        if first and not e.partial:
            return None
        raise ProtocolError("connection closed in mid-message") from None
    except asyncio.LimitOverrunError:
        raise ProtocolError("attribute name too long") from None


# asyncio.StreamReader's internals that _read_list uses (CPython's, unchanged since 3.7);
# a reader without them, or of another class, is always read the slow way
_FAST_READER = all(hasattr(asyncio.StreamReader, method)
                   for method in ("_wait_for_data", "_maybe_resume_transport"))
_WINDOW = 1 << 20  # bytes copied for a first try (a list of smtpd's 64 KB pieces is longer)


def _take_buffered(reader: Any, limits: Limits) -> AttrList | None:
    """A list taken whole from the reader's buffer, in one pass, without an await per
    attribute (most lists arrive in one piece). None, with nothing taken, when it is
    not whole or anything in it is amiss: the attribute-by-attribute reader then takes
    it and raises the same errors as always. It is tried once per list: what it looks
    at before giving up costs one pass over the buffer (which the reader's limit
    bounds), not one per attribute. The pass reads a copy of the buffer as bytes (the
    first _WINDOW bytes, then all of it if the list is longer): indexing and slicing
    bytes cost less than a memoryview's slices, each a view object before its copy."""
    buf = reader._buffer
    size = len(buf)
    if size <= _WINDOW:
        data = bytes(buf)
    else:
        with memoryview(buf) as view:
            data = bytes(view[:_WINDOW])
    taken = _parse_whole(data, limits)
    if taken is None and len(data) < size:
        data = bytes(buf)
        taken = _parse_whole(data, limits)
    if taken is None:
        return None
    pairs, end = taken
    del buf[:end]
    reader._maybe_resume_transport()
    return AttrList(pairs)


def _parse_whole(data: bytes, limits: Limits) -> tuple[list[tuple[str, bytes]], int] | None:
    """The list at the start of ``data`` and the offset after its terminator; None when
    it is not all there, or breaks the grammar or ``limits`` (the reader's checks, made
    once at the end: the counts only grow)."""
    pairs: list[tuple[str, bytes]] = []
    append = pairs.append
    find = data.find
    varint_bytes = 0  # beyond the first of each length
    nul = find(b"\0", 0, MAX_NAME)
    if nul <= 0:  # an empty list, or a name too long or not all there: the long way
        return None
    name = data[:nul].decode("ascii", "replace")
    pos = nul + 1
    try:
        while True:
            length = data[pos]  # records.decode_varint, inline; IndexError: not all there
            pos += 1
            if length & 0x80:
                length &= 0x7F
                shift = 0
                while True:
                    shift += 7
                    if shift > VARINT_MAX_SHIFT:
                        return None
                    byte = data[pos]
                    pos += 1
                    varint_bytes += 1
                    length |= (byte & 0x7F) << shift
                    if not byte & 0x80:
                        break
            start = pos
            pos += length
            append((name, data[start:pos]))
            # a value that runs past the data leaves pos past it: find answers -1
            nul = find(b"\0", pos, pos + MAX_NAME)
            if nul == pos:
                break
            if nul < 0:
                return None
            name = data[pos:nul].decode("ascii", "replace")
            pos = nul + 1
    except IndexError:
        return None
    # as the reader counts: each name with its NUL, and its value
    total = pos - len(pairs) - varint_bytes
    if len(pairs) > limits.attrs or total > limits.total:
        return None
    if limits.value < total and any(len(value) > limits.value for _, value in pairs):
        return None
    return pairs, pos + 1


HELLO = "protocol"  # the one attribute of a client's opening list (module docstring)
REQUESTS_AT_ONCE = "requests_at_once"
GOODBYE = "goodbye"  # the server is going away (module docstring)
GOODBYE_SERVES_REST = b"serves_rest"
GOODBYE_READ_NOTHING = b"read_nothing"
GOODBYE_GRACE = 5.0  # seconds a server that said goodbye waits for the client's next list


def _goodbye(attrs: AttrList) -> bytes | None:
    """The value of a goodbye list, else None."""
    if len(attrs.pairs) == 1 and attrs.pairs[0][0] == GOODBYE:
        return attrs.pairs[0][1]
    return None


class NotRead(ProtocolError):
    """The server said goodbye without reading this request: it may be sent again."""

Reply = Attrs
# coroutine functions: each request's handler runs as a task of its own (loop.create_task)
Handler = Callable[[AttrList], Coroutine[Any, Any, Reply]]
StreamHandler = Callable[[AttrList, "FollowUps | None"], Coroutine[Any, Any, Reply]]
MORE = "more"


def continues(attrs: AttrList) -> bool:
    """Whether a list of a streamed request is followed by another."""
    flag = attrs.raw(MORE)
    return flag is not None and flag not in (b"", b"0")


class FollowUps:
    """The follow-up lists of one streamed request, in the order they arrive."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[AttrList | None] = asyncio.Queue(maxsize=1)
        self.ended = asyncio.Event()  # the last list was read, or the connection failed
        self._broken = False
        self._abandoned = False

    async def get(self) -> AttrList | None:
        """The next list; None after the last. ProtocolError when the connection broke."""
        item = await self._queue.get()
        if item is None and self._broken:
            raise ProtocolError("connection closed in mid-stream")
        return item

    async def _put(self, item: AttrList, last: bool) -> None:
        if not self._abandoned:
            await self._queue.put(item)
            if last:
                await self._queue.put(None)
        if last:
            self.ended.set()

    def _drop_pending(self) -> None:
        while not self._queue.empty():
            self._queue.get_nowait()

    def abandon_when_done(self, _handler: asyncio.Future[Any]) -> None:
        """The handler is done: whatever still comes is read and dropped."""
        self._abandoned = True
        self._drop_pending()

    def _fail(self) -> None:
        self._broken = True
        self._drop_pending()
        self._queue.put_nowait(None)
        self.ended.set()


async def serve_pipelined(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                          handler: Handler, stopping: asyncio.Event | None = None,
                          limits: Limits = DEFAULT_LIMITS,
                          max_pending: int | None = None) -> None:
    """Serve requests on one connection: handle them concurrently, reply in order.

    ``limits`` bounds each request; with ``max_pending``, no further request is
    read while that many are unanswered (until they all are).

    Once ``stopping`` is set (the server is going away) the connection is
    closed as soon as every request read so far has its reply: an idle
    client connection never keeps a stopping server alive. The client sees
    end of file and reconnects (``AttrClient`` does) for its next request.
    A connection that opened with the hello gets the goodbye instead (the
    module docstring).
    """
    await _serve(reader, writer, lambda request, _follow: handler(request), False, stopping,
                 limits, max_pending)


async def serve_sequential(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                           handler: Handler, stopping: asyncio.Event,
                           limits: Limits = DEFAULT_LIMITS) -> None:
    """Serve requests one at a time, in order: the next is read once the last is
    answered, so a client may queue a request behind the one in progress.

    Once ``stopping`` is set no further request is read: the connection closes
    after the reply to the last one read, and a request the client queued behind
    it stays unread; on a connection that opened with the hello the server says
    so first (``GOODBYE_READ_NOTHING``, the module docstring).

    The reading task runs the handler and writes the reply itself: no task, event
    or turn of the loop per request (local's deliveries, one after another).
    """
    busy = greeted = False

    def close() -> None:
        if greeted and not writer.is_closing():
            writer.write(encode([(GOODBYE, GOODBYE_READ_NOTHING)]))
        writer.close()  # our reader then sees end of file

    async def close_when_idle() -> None:
        await stopping.wait()
        await asyncio.sleep(0)  # a request read in this turn of the loop counts too
        if not busy:
            close()

    closer = asyncio.ensure_future(close_when_idle())
    first = True
    try:
        while not stopping.is_set():
            request = await _read_list(reader, limits)  # read_attrs without a timeout
            if request is None:
                break
            busy = True
            greeting = _hello_answer(request, 1) if first else None
            first = False
            greeted = greeted or greeting is not None
            writer.write(encode(greeting if greeting is not None else await handler(request)))
            await writer.drain()
            busy = False
    except (ProtocolError, ConnectionError):
        pass
    finally:
        closer.cancel()
        close()


async def serve_streamed(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                         handler: StreamHandler, stopping: asyncio.Event | None = None,
                         limits: Limits = DEFAULT_LIMITS,
                         max_pending: int | None = None) -> None:
    """``serve_pipelined`` for a service whose requests may continue in follow-ups.

    The handler gets the request and its ``FollowUps`` (None when the request
    is one list); the reply goes out only after the last follow-up was read.
    ``limits`` bounds each list, the request and every follow-up alike.
    """
    await _serve(reader, writer, handler, True, stopping, limits, max_pending)


def _hello_answer(request: AttrList, at_once: int) -> Reply | None:
    """The server loop's answer when a connection's first list is the hello
    (the module docstring), else None."""
    if len(request.pairs) == 1 and request.pairs[0][0] == HELLO:
        return [(HELLO, request.pairs[0][1]), (REQUESTS_AT_ONCE, at_once)]
    return None


async def _reply_after(task: asyncio.Future[Reply], follow: FollowUps) -> Reply:
    try:
        return await task
    finally:
        await follow.ended.wait()


async def _serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 handler: StreamHandler, streamed: bool, stopping: asyncio.Event | None,
                 limits: Limits, max_pending: int | None) -> None:
    pending: collections.deque[asyncio.Future[Any]] = collections.deque()
    # the replier's wait for work: a future of the loop asked once, not an asyncio.Event,
    # whose wait asks asyncio for the running loop (a getpid system call on 3.11)
    loop = asyncio.get_running_loop()
    idle: asyncio.Future[None] | None = None

    def wake() -> None:
        if idle is not None and not idle.done():
            idle.set_result(None)

    done_reading = False
    follow: FollowUps | None = None
    unanswered = 0
    answered = asyncio.Event()
    answered.set()

    async def replier() -> None:
        nonlocal unanswered, idle
        while True:
            while not pending:
                if done_reading:
                    return
                idle = loop.create_future()
                try:
                    await idle
                finally:
                    idle = None
            replies = [encode(await pending.popleft())]
            unanswered -= 1
            try:  # the replies that are ready too (a group of fsyncs ends): one write
                while pending and pending[0].done():
                    replies.append(encode(pending.popleft().result()))
                    unanswered -= 1
            finally:
                writer.write(b"".join(replies))
            if not pending:
                await writer.drain()
                if unanswered == 0:
                    answered.set()

    greeted = said_goodbye = False
    reads = 0

    async def close_when_answered(stopping: asyncio.Event) -> None:
        nonlocal said_goodbye
        await stopping.wait()
        while True:
            await answered.wait()
            await asyncio.sleep(0)  # a request read in this turn of the loop counts too
            if answered.is_set():
                break
        if not greeted:
            writer.close()  # our reader then sees end of file
            return
        said_goodbye = True
        writer.write(encode([(GOODBYE, GOODBYE_SERVES_REST)]))
        before = reads
        await asyncio.sleep(GOODBYE_GRACE)
        if reads == before:  # else the reading loop waits at most GOODBYE_GRACE
            writer.close()

    # loop.create_task, not asyncio.ensure_future, per request: that one looks the loop up
    # (a getpid system call in 3.11) and tests for a future by catching an AttributeError
    reply_task = loop.create_task(replier())
    closer = loop.create_task(close_when_answered(stopping)) if stopping else None
    first = True
    try:
        while True:
            if max_pending is not None and unanswered >= max_pending:
                await answered.wait()
            request = await (read_attrs(reader, limits, GOODBYE_GRACE) if said_goodbye
                             else _read_list(reader, limits))
            if request is None:
                break
            reads += 1
            unanswered += 1
            answered.clear()
            if first:
                first = False
                hello = _hello_answer(request, max_pending or 0)
                if hello is not None:
                    greeted = True
                    greeting = loop.create_future()
                    greeting.set_result(hello)
                    pending.append(greeting)
                    wake()
                    continue
            if not (streamed and continues(request)):
                pending.append(loop.create_task(handler(request, None)))
                wake()
                continue
            follow = FollowUps()
            task = asyncio.ensure_future(handler(request, follow))
            task.add_done_callback(follow.abandon_when_done)
            pending.append(asyncio.ensure_future(_reply_after(task, follow)))
            wake()
            while True:
                part = await read_attrs(reader, limits)
                if part is None:
                    raise ProtocolError("connection closed in mid-stream")
                last = not continues(part)
                await follow._put(part, last)
                if last:
                    break
            follow = None
    except (ProtocolError, ConnectionError):
        pass
    finally:
        if follow is not None:
            follow._fail()
        done_reading = True
        wake()
        try:
            await reply_task
        except (ConnectionError, ProtocolError):
            pass
        if closer is not None:
            closer.cancel()
        writer.close()


Connector = Callable[[str], socket.socket]  # a path to a connected Unix stream socket


class _ClosedBeforeGreeting(ProtocolError):
    pass


CONNECT_ATTEMPTS = 3  # connections closed (or reset) before the greeting, before giving up


class _Connection:
    """One connection of an AttrClient: its replies come in the order of ``waiting``.

    ``retired``: the server said goodbye (``GOODBYE``); no new request goes on it,
    and it is closed once the requests already written have their replies. ``loop``:
    the one it runs on, asked once (asyncio.get_running_loop() makes a getpid system
    call each time on Python 3.11)."""

    __slots__ = ("writer", "waiting", "retired", "loop")

    def __init__(self, writer: asyncio.StreamWriter, loop: asyncio.AbstractEventLoop) -> None:
        self.writer = writer
        self.loop = loop
        self.waiting: collections.deque[asyncio.Future[AttrList]] = collections.deque()
        self.retired = False

    @property
    def usable(self) -> bool:
        return not self.retired and not self.writer.is_closing()

    def fail(self, error: BaseException) -> None:
        self.writer.close()
        while self.waiting:
            fut = self.waiting.popleft()
            if not fut.done():
                kind = type(error) if isinstance(error, (NotRead, RequestTimeout)) \
                    else ProtocolError
                fut.set_exception(kind(str(error)))


class AttrClient:
    """A long-lived, pipelined asyncio client for one Unix socket path."""

    def __init__(self, path: str, timeout: float = 3600.0, hello: str = "",
                 connector: Connector | None = None) -> None:
        """``hello``: open each connection with the hello list (the module docstring),
        and keep the server's answer in ``greeting`` before any request is written;
        such a connection also takes the server's goodbye (the module docstring).
        ``connector``: how a connection is made (``privileges.connect_unix``: with
        other rights than the process's); OSError when it cannot be."""
        self.path = path
        self.timeout = timeout
        self.hello = hello
        self.connector = connector
        self.greeting: AttrList | None = None
        self._conn: _Connection | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._connect_lock = asyncio.Lock()

    async def _ensure_connected(self) -> _Connection:
        conn = self._conn
        if conn is not None and conn.usable:  # the common case: no lock
            return conn
        async with self._connect_lock:
            if self._conn is None or not self._conn.usable:
                for attempt in range(1, CONNECT_ATTEMPTS + 1):
                    if self.connector is None:
                        reader, writer = await asyncio.open_unix_connection(self.path,
                                                                            limit=1 << 20)
                    else:
                        reader, writer = await asyncio.open_unix_connection(
                            sock=self.connector(self.path), limit=1 << 20)
                    if not self.hello:
                        break
                    try:
                        self.greeting = await self._greeting(reader, writer)
                        break
                    except _ClosedBeforeGreeting:
                        # accepted by a process that was just then going away (a
                        # reload): it read nothing, so the next process may serve us
                        if attempt == CONNECT_ATTEMPTS:
                            raise
                self._conn = _Connection(writer, asyncio.get_running_loop())
                self._reader_task = asyncio.ensure_future(self._read_replies(reader, self._conn))
            return self._conn

    async def _greeting(self, reader: asyncio.StreamReader,
                        writer: asyncio.StreamWriter) -> AttrList:
        """Send the hello and read the answer (within ``timeout``): whatever the
        server replies is its answer; no connection is left half open. A connection
        that ends before the answer, at end of file or reset (the server left our
        hello unread) or a broken pipe, is ``_ClosedBeforeGreeting``: nothing but the
        hello went out on it, so ``_ensure_connected`` may open another."""
        try:
            writer.write(encode([(HELLO, self.hello)]))
            greeting: AttrList | None = None
            with contextlib.suppress(ConnectionError):  # reset (hello unread), broken pipe
                greeting = await read_attrs(reader, timeout=self.timeout)
            if greeting is None:
                raise _ClosedBeforeGreeting(f"{self.path}: connection closed before the greeting")
            return greeting
        except BaseException:
            writer.close()
            raise

    async def _read_replies(self, reader: asyncio.StreamReader, conn: _Connection) -> None:
        error: BaseException = ProtocolError(f"{self.path}: connection closed")
        try:
            while True:
                reply = await _read_list(reader, DEFAULT_LIMITS)  # read_attrs, no timeout
                if reply is None:
                    break
                goodbye = _goodbye(reply) if self.hello else None
                if goodbye == GOODBYE_READ_NOTHING:
                    error = NotRead(f"{self.path}: the server went away before reading it")
                    break
                if goodbye is not None:
                    conn.retired = True  # the next request opens a new connection
                else:
                    if not conn.waiting:
                        raise ProtocolError(f"{self.path}: unexpected reply")
                    fut = conn.waiting.popleft()
                    if not fut.done():
                        fut.set_result(reply)
                if conn.retired and not conn.waiting:
                    conn.writer.close()  # the server sees end of file and goes
                    break
        except (ProtocolError, ConnectionError) as e:
            error = e
        self._fail(conn, error)

    def _fail(self, conn: _Connection, error: BaseException) -> None:
        if self._conn is conn:
            self._conn = None
        conn.fail(error)

    async def request(self, attrs: Attrs) -> AttrList:
        """Send one request and wait for its reply. Raises ProtocolError or OSError.

        A caller that is cancelled leaves its place in the queue of replies (the
        reply is read and dropped); past ``timeout`` every request waiting on the
        connection fails (``RequestTimeout``) and the connection is closed."""
        conn = self._conn
        if conn is None or not conn.usable:
            conn = await self._ensure_connected()
        loop = conn.loop
        fut: asyncio.Future[AttrList] = loop.create_future()
        conn.waiting.append(fut)
        conn.writer.write(encode(attrs))
        timer = loop.call_later(self.timeout, self._expire, conn, fut)
        try:
            await conn.writer.drain()
            return await fut
        except ConnectionError as e:
            self._fail(conn, e)
            if fut.done() and not fut.cancelled():
                fut.exception()  # failed already by the reader: ours to report, not asyncio's
            raise ProtocolError(f"{self.path}: {e}") from None
        finally:
            timer.cancel()

    async def send(self, attrs: Attrs) -> asyncio.Future[AttrList]:
        """``submit``, connecting first if need be (raises OSError when it cannot)."""
        await self._ensure_connected()
        return self.submit(attrs)

    def submit(self, attrs: Attrs) -> asyncio.Future[AttrList]:
        """Write one request on the open connection now and return the future of its
        reply, without waiting for the write buffer to drain: for a caller that queues
        a bounded number of requests and wants the next one written before it reads
        the reply to the last. The future fails with ProtocolError as ``request``
        does (the connection closes, or ``timeout`` passes); ProtocolError at once
        when the connection is not open (or its server said goodbye), NotRead at
        once when this write finds the server gone (a broken pipe: it closed the
        connection, after its goodbye, before the request reached it)."""
        conn = self._conn
        if conn is None or not conn.usable:
            raise ProtocolError(f"{self.path}: not connected")
        conn.writer.write(encode(attrs))
        if conn.writer.is_closing():  # the write failed: the transport closes
            raise NotRead(f"{self.path}: the server went away before reading it")
        fut: asyncio.Future[AttrList] = conn.loop.create_future()
        conn.waiting.append(fut)
        timer = conn.loop.call_later(self.timeout, self._expire, conn, fut)
        fut.add_done_callback(lambda _: timer.cancel())
        return fut

    def _expire(self, conn: _Connection, fut: asyncio.Future[AttrList]) -> None:
        if not fut.done():
            self._fail(conn, RequestTimeout(f"{self.path}: timeout"))

    async def stream(self, attrs: Attrs) -> RequestStream:
        """Send the first list of a streamed request (it must carry ``more``).

        The caller keeps this connection to itself until ``RequestStream.finish``
        or ``abort``. Raises ProtocolError or OSError.
        """
        conn = await self._ensure_connected()
        fut: asyncio.Future[AttrList] = conn.loop.create_future()
        conn.waiting.append(fut)
        stream = RequestStream(self, conn, fut)
        await stream.send(attrs)
        return stream

    async def close(self) -> None:
        self.close_now()

    def close_now(self) -> None:
        if self._conn is not None:
            self._conn.writer.close()
            self._conn = None

    @property
    def idle(self) -> bool:
        return self._conn is None or not self._conn.waiting

    @property
    def connected(self) -> bool:
        """The connection is open (a request can be ``submit``ted now)."""
        return self._conn is not None and self._conn.usable


class RequestStream:
    """One streamed request in progress on an AttrClient's connection."""

    def __init__(self, client: AttrClient, conn: _Connection,
                 reply: asyncio.Future[AttrList]) -> None:
        self.client = client
        self.conn = conn
        self.writer = conn.writer
        self.reply = reply
        self.open = True
        self.on_release: Callable[[], None] | None = None
        # A reply that is never awaited (abort, a broken stream) must not be reported.
        reply.add_done_callback(lambda f: f.cancelled() or f.exception())

    async def send(self, attrs: Attrs) -> None:
        """One more list; waits while the connection's send buffer is full."""
        if self.writer.is_closing():
            raise ProtocolError(f"{self.client.path}: connection closed in mid-stream")
        self.writer.write(encode(attrs))
        try:
            await self.writer.drain()
        except ConnectionError as e:
            self.client._fail(self.conn, e)
            raise ProtocolError(f"{self.client.path}: {e}") from None

    async def finish(self, attrs: Attrs) -> AttrList:
        """The last list (without ``more``), then the request's reply."""
        try:
            await self.send(attrs)
        finally:
            self._release()
        try:
            return await asyncio.wait_for(asyncio.shield(self.reply), self.client.timeout)
        except TimeoutError as e:
            self.client._fail(self.conn, e)
            raise ProtocolError(f"{self.client.path}: timeout") from None

    def abort(self, attrs: Attrs) -> None:
        """End the stream with ``attrs`` without waiting for the reply (never blocks)."""
        if self.open and not self.writer.is_closing():
            self.writer.write(encode(attrs))
        self._release()

    def _release(self) -> None:
        if self.open:
            self.open = False
            if self.on_release is not None:
                self.on_release()


class AttrPool:
    """Connections to one Unix socket path: shared for requests, one per open stream.

    ``request`` pipelines on the first connection that no stream holds;
    ``stream`` takes a connection of its own (opening one when all are held)
    until the stream's last list is written. Beyond ``keep_idle`` idle
    connections, a connection is closed once its stream's reply arrived. Each
    connection opens with the hello (the socket's name as ``protocol``), so that
    a server going away says goodbye on it rather than closing it under a request.
    """

    def __init__(self, path: str, timeout: float = 3600.0, keep_idle: int = 4,
                 connector: Connector | None = None) -> None:
        self.path = path
        self.timeout = timeout
        self.keep_idle = keep_idle
        self.connector = connector
        self.hello = os.path.basename(path)
        self._clients: list[AttrClient] = []
        self._held: set[AttrClient] = set()

    def _free(self) -> AttrClient:
        for client in self._clients:
            if client not in self._held:
                return client
        client = AttrClient(self.path, self.timeout, hello=self.hello, connector=self.connector)
        self._clients.append(client)
        return client

    async def request(self, attrs: Attrs) -> AttrList:
        return await self._free().request(attrs)

    async def stream(self, attrs: Attrs) -> RequestStream:
        """A streamed request on a connection of its own (``AttrClient.stream``)."""
        client = self._free()
        self._held.add(client)
        try:
            stream = await client.stream(attrs)
        except BaseException:
            self._held.discard(client)
            raise
        stream.on_release = lambda: self._held.discard(client)
        stream.reply.add_done_callback(lambda _f: self._trim(client))
        return stream

    def _trim(self, client: AttrClient) -> None:
        if client in self._held or not client.idle or client not in self._clients:
            return
        idle = sum(1 for c in self._clients if c not in self._held and c.idle)
        if idle > self.keep_idle:
            self._clients.remove(client)
            client.close_now()

    async def close(self) -> None:
        for client in self._clients:
            client.close_now()
        self._clients.clear()
        self._held.clear()


async def request_streamed(pool: AttrPool, attrs: list[tuple[str, AttrValue]], name: str,
                           pieces: Iterable[bytes]) -> AttrList:
    """A request whose attribute ``name`` is sent in ``pieces``: one plain request when
    there is only one, else a streamed request (``more``) with a piece per list."""
    it = iter(pieces)
    first = next(it, b"")
    second = next(it, None)
    if second is None:
        return await pool.request(attrs + [(name, first)])
    stream = await pool.stream(attrs + [(name, first), (MORE, 1)])
    try:
        piece = second
        for following in it:
            await stream.send([(name, piece), (MORE, 1)])
            piece = following
    except BaseException:
        stream.abort([("abort", 1)])
        raise
    return await stream.finish([(name, piece)])


class SyncAttrClient:
    """A blocking client: one connection, one request at a time (for commands)."""

    def __init__(self, path: str, timeout: float = 60.0,
                 connect_timeout: float | None = None) -> None:
        """Connect within ``connect_timeout`` (default ``timeout``); each later send
        or receive waits at most ``timeout``."""
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.sock.settimeout(timeout if connect_timeout is None else connect_timeout)
            self.sock.connect(path)
            self.sock.settimeout(timeout)
        except BaseException:
            self.sock.close()
            raise
        self._buf = bytearray()

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ProtocolError("connection closed in mid-message")
        self._buf += chunk

    def _take_until_nul(self) -> bytes:
        while True:
            i = self._buf.find(b"\0")
            if i >= 0:
                out = bytes(self._buf[:i])
                del self._buf[:i + 1]
                return out
            if len(self._buf) > MAX_NAME:
                raise ProtocolError("attribute name too long")
            self._fill()

    def _take(self, n: int) -> bytes:
        while len(self._buf) < n:
            self._fill()
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    def _take_length(self) -> int:
        data = bytearray()
        while True:
            data += self._take(1)
            try:
                return decode_varint(data)[0]
            except VarintIncomplete:
                continue
            except RecordError:
                raise ProtocolError("bad length") from None

    def read(self, limits: Limits = DEFAULT_LIMITS) -> AttrList:
        pairs: list[tuple[str, bytes]] = []
        total = 0
        while True:
            name_bytes = self._take_until_nul()
            if not name_bytes:
                return AttrList(pairs)
            name = name_bytes.decode("ascii", "replace")
            length = self._take_length()
            total += len(name_bytes) + 1 + length
            limits.check(len(pairs) + 1, name, length, total)
            pairs.append((name, self._take(length)))

    def request(self, attrs: Attrs) -> AttrList:
        self.sock.sendall(encode(attrs))
        return self.read()

    def request_with_value(self, attrs: Attrs, name: str, length: int,
                           pieces: Iterable[bytes]) -> AttrList:
        """A request whose last attribute ``name`` is ``length`` bytes sent as
        ``pieces`` come (a message read from a file): memory is one piece.
        ProtocolError when the pieces do not add up to ``length``."""
        self.sock.sendall(encode(attrs)[:-1] + (_KEYS.get(name) or _key(name))
                          + encode_varint(length))
        sent = 0
        for piece in pieces:
            sent += len(piece)
            if sent > length:
                break
            self.sock.sendall(piece)
        if sent != length:
            raise ProtocolError(f"attribute {name}: {sent} bytes sent, {length} announced")
        self.sock.sendall(b"\0")
        return self.read()

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> SyncAttrClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
