"""The internal protocol: attribute lists over Unix stream sockets.

Grammar of one message (request or reply)::

    message   = *attribute terminator
    attribute = name NUL length value      ; name: 1*(printable ASCII but NUL)
    length    = varint                      ; base-128, low 7 bits first
    value     = length OCTETs               ; any bytes, NUL included
    terminator = NUL                        ; an empty name ends the list

A name may repeat (recipients travel as repeated ``rcpt`` attributes). Values
are bytes; ``AttrList`` converts them on read (``text``, ``number``, ``all``).

One connection carries many requests. A client may pipeline: it sends requests
without waiting, and the server answers them in the order they came, even
though it may work on several at once (``serve_pipelined``). ``AttrClient`` is
the asyncio client: one long-lived connection, reopened when it breaks, with
requests pipelined over it. ``SyncAttrClient`` is the blocking client for
commands.

Refuses (``ProtocolError``): a name over 256 bytes, a connection that ends
mid-message, a length that is not a base-128 number within
``records.VARINT_MAX_SHIFT`` (the one varint codec, shared with the queue file
records). A reader takes ``Limits``: at most so many attributes, bytes per
value and bytes per list (``LimitExceeded``, a ProtocolError, names the limit;
an oversized value is refused from its length, before any of it is read), and
an optional deadline for the whole list (``RequestTimeout``). Services that
any local user can reach (pickup, showq) pass tight limits and ipc_timeout;
``DEFAULT_LIMITS`` (``MAX_VALUE`` per value and per list) is for peers of the
mail system itself.
"""

from __future__ import annotations

import asyncio
import collections
import socket
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from pymailsys.queue.records import RecordError, VarintIncomplete, decode_varint, encode_varint

MAX_NAME = 256
MAX_VALUE = 1 << 30

AttrValue = str | bytes | int


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


def encode(attrs: Iterable[tuple[str, AttrValue]] | dict[str, Any]) -> bytes:
    """Encode one attribute list, terminator included."""
    items = attrs.items() if isinstance(attrs, dict) else attrs
    out = bytearray()
    for name, value in items:
        if isinstance(value, (list, tuple)):
            for v in value:
                data = _as_bytes(v)
                out += name.encode() + b"\0" + encode_varint(len(data)) + data
            continue
        data = _as_bytes(value)
        out += name.encode() + b"\0" + encode_varint(len(data)) + data
    out += b"\0"
    return bytes(out)


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
    try:
        async with asyncio.timeout(timeout):
            return await _read_list(reader, limits)
    except TimeoutError:
        raise RequestTimeout(f"no complete request within {timeout:g}s") from None


async def _read_list(reader: asyncio.StreamReader, limits: Limits) -> AttrList | None:
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


Handler = Callable[[AttrList], Awaitable[Iterable[tuple[str, AttrValue]] | dict[str, Any]]]


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
    """
    pending: collections.deque[asyncio.Task[Any]] = collections.deque()
    wake = asyncio.Event()
    done_reading = False
    unanswered = 0
    answered = asyncio.Event()
    answered.set()

    async def replier() -> None:
        nonlocal unanswered
        while True:
            while not pending:
                if done_reading:
                    return
                wake.clear()
                await wake.wait()
            task = pending.popleft()
            reply = await task
            writer.write(encode(reply))
            unanswered -= 1
            if not pending:
                await writer.drain()
                if unanswered == 0:
                    answered.set()

    async def close_when_answered(stopping: asyncio.Event) -> None:
        await stopping.wait()
        while True:
            await answered.wait()
            await asyncio.sleep(0)  # a request read in this turn of the loop counts too
            if answered.is_set():
                break
        writer.close()  # our reader then sees end of file

    reply_task = asyncio.ensure_future(replier())
    closer = asyncio.ensure_future(close_when_answered(stopping)) if stopping else None
    try:
        while True:
            if max_pending is not None and unanswered >= max_pending:
                await answered.wait()
            request = await read_attrs(reader, limits)
            if request is None:
                break
            unanswered += 1
            answered.clear()
            pending.append(asyncio.ensure_future(handler(request)))
            wake.set()
    except (ProtocolError, ConnectionError):
        pass
    finally:
        done_reading = True
        wake.set()
        try:
            await reply_task
        except (ConnectionError, ProtocolError):
            pass
        if closer is not None:
            closer.cancel()
        writer.close()


class AttrClient:
    """A long-lived, pipelined asyncio client for one Unix socket path."""

    def __init__(self, path: str, timeout: float = 3600.0) -> None:
        self.path = path
        self.timeout = timeout
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._waiting: collections.deque[asyncio.Future[AttrList]] = collections.deque()
        self._reader_task: asyncio.Task[None] | None = None
        self._connect_lock = asyncio.Lock()

    async def _ensure_connected(self) -> asyncio.StreamWriter:
        async with self._connect_lock:
            if self._writer is None or self._writer.is_closing():
                self._reader, self._writer = await asyncio.open_unix_connection(
                    self.path, limit=1 << 20)
                self._reader_task = asyncio.ensure_future(self._read_replies(self._reader))
            return self._writer

    async def _read_replies(self, reader: asyncio.StreamReader) -> None:
        error: BaseException = ProtocolError(f"{self.path}: connection closed")
        try:
            while True:
                reply = await read_attrs(reader)
                if reply is None:
                    break
                if not self._waiting:
                    raise ProtocolError(f"{self.path}: unexpected reply")
                fut = self._waiting.popleft()
                if not fut.done():
                    fut.set_result(reply)
        except (ProtocolError, ConnectionError) as e:
            error = e
        self._fail_all(error)

    def _fail_all(self, error: BaseException) -> None:
        if self._writer is not None:
            self._writer.close()
        self._writer = None
        while self._waiting:
            fut = self._waiting.popleft()
            if not fut.done():
                fut.set_exception(ProtocolError(str(error)))

    async def request(self, attrs: Iterable[tuple[str, AttrValue]] | dict[str, Any]) -> AttrList:
        """Send one request and wait for its reply. Raises ProtocolError or OSError."""
        writer = await self._ensure_connected()
        fut: asyncio.Future[AttrList] = asyncio.get_running_loop().create_future()
        self._waiting.append(fut)
        writer.write(encode(attrs))
        try:
            await writer.drain()
            return await asyncio.wait_for(asyncio.shield(fut), self.timeout)
        except (TimeoutError, ConnectionError) as e:
            self._fail_all(e)
            raise ProtocolError(f"{self.path}: {e or 'timeout'}") from None

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


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

    def request(self, attrs: Iterable[tuple[str, AttrValue]] | dict[str, Any]) -> AttrList:
        self.sock.sendall(encode(attrs))
        return self.read()

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> SyncAttrClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
