"""Golden tests for the record codec and the attribute protocol framing."""

from __future__ import annotations

import asyncio
import math
import socket
from collections.abc import Awaitable, Callable

import pytest

from pymailsys.ipc import attr
from pymailsys.queue import records


def test_varint_low_bits_first() -> None:
    assert records.encode_varint(0) == b"\x00"
    assert records.encode_varint(127) == b"\x7f"
    assert records.encode_varint(128) == b"\x80\x01"
    assert records.encode_varint(300) == b"\xac\x02"


def test_record_roundtrip_and_refusals() -> None:
    data = records.encode_record(b"N", b"hello\0world") + records.encode_record(b"E", b"")
    assert list(records.iter_records(data)) == [(0, b"N", b"hello\0world"), (13, b"E", b"")]
    with pytest.raises(records.RecordError):
        list(records.iter_records(b"Z\x00"))
    with pytest.raises(records.RecordError):
        list(records.iter_records(b"N\x05abc"))
    with pytest.raises(records.RecordError):
        list(records.iter_records(records.encode_record(b"N", b"x" * 10), max_length=5))


def test_attr_encoding_is_stable() -> None:
    assert attr.encode([("a", "b"), ("rcpt", ["x", "y"]), ("n", 5)]) == (
        b"a\0\x01b" b"rcpt\0\x01x" b"rcpt\0\x01y" b"n\0\x015" b"\0")


def test_attr_pipelined_roundtrip(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = str(tmp_path / "sock")

    async def handler(request: attr.AttrList) -> dict[str, object]:
        delay = request.number("delay")
        await asyncio.sleep(delay / 1000)
        return {"echo": request.raw("value") or b"", "n": request.number("n")}

    async def main() -> list[tuple[bytes, int]]:
        server = await asyncio.start_unix_server(
            lambda r, w: attr.serve_pipelined(r, w, handler), path=path)
        client = attr.AttrClient(path)
        # later requests finish first; replies must still come back in order
        replies = await asyncio.gather(*[
            client.request({"value": bytes([i, 0, 255]), "n": i, "delay": 20 - i})
            for i in range(20)])
        await client.close()
        server.close()
        return [(r.raw("echo") or b"", r.number("n")) for r in replies]

    out = asyncio.run(main())
    assert out == [(bytes([i, 0, 255]), i) for i in range(20)]


def _first_connection_stops(stopping: asyncio.Event, release: asyncio.Event,
                            connections: list[asyncio.Task[None]], sequential: bool = False,
                            ) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter],
                                          Awaitable[None]]:
    """A server callback for asyncio.start_unix_server: it records each connection's task
    in ``connections`` and serves it (pipelined, or sequential), only the first one seeing
    ``stopping``. A request with ``wait`` is answered once ``release`` is set; the reply
    is its ``n`` and the number of connections so far."""

    async def handler(request: attr.AttrList) -> dict[str, object]:
        if request.number("wait"):
            await release.wait()
        return {"n": request.number("n"), "connection": len(connections)}

    async def serve(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        first = not connections
        connections.append(asyncio.current_task())  # type: ignore[arg-type]
        if sequential:
            await attr.serve_sequential(r, w, handler, stopping if first else asyncio.Event())
        else:
            await attr.serve_pipelined(r, w, handler, stopping if first else None)

    return serve


def test_attr_server_going_away_answers_then_closes_and_the_client_reconnects(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A stopping server answers what it holds, then closes the connection; it is not
    kept alive by an idle client, and the client's next request opens a new one."""
    path = str(tmp_path / "sock")
    stopping = asyncio.Event()
    release = asyncio.Event()
    connections: list[asyncio.Task[None]] = []

    serve = _first_connection_stops(stopping, release, connections)

    async def main() -> tuple[int, int, bool, int]:
        server = await asyncio.start_unix_server(serve, path=path)
        client = attr.AttrClient(path)
        held = asyncio.ensure_future(client.request({"n": 1, "wait": 1}))
        while not connections:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        stopping.set()
        await asyncio.sleep(0.05)
        still_open = not connections[0].done()  # a request in hand: finish it first
        release.set()
        first = (await held).number("n")
        await asyncio.wait_for(connections[0], 10)  # then the idle connection goes
        second = (await client.request({"n": 2})).number("n")
        await client.close()
        server.close()
        return first, second, still_open, len(connections)

    assert asyncio.run(main()) == (1, 2, True, 2)


async def _raw_exchange(path: str, lists: list[bytes], after_hello: asyncio.Event,
                        go_on: asyncio.Event) -> bytes:
    """A client at the byte level: the hello, then (once ``go_on`` is set) ``lists``,
    and everything the server writes until it closes."""
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.setblocking(False)
        await loop.sock_connect(sock, path)
        await loop.sock_sendall(sock, attr.encode([(attr.HELLO, "test")]))
        received = b""
        while not (attr.REQUESTS_AT_ONCE.encode() in received and received.endswith(b"\0")):
            received += await asyncio.wait_for(loop.sock_recv(sock, 4096), 10)  # the greeting
        after_hello.set()
        await go_on.wait()
        try:
            for data in lists:
                await loop.sock_sendall(sock, data)
            sock.shutdown(socket.SHUT_WR)  # and no more: the server closes once it answered
        except OSError:
            pass  # the server closed first: what it wrote before is still to be read
        received = b""
        while chunk := await asyncio.wait_for(loop.sock_recv(sock, 4096), 10):
            received += chunk
        return received


@pytest.mark.parametrize("kind", ["pipelined", "streamed", "sequential"])
def test_a_server_going_away_says_goodbye_before_it_closes(
        tmp_path, kind) -> None:  # type: ignore[no-untyped-def]
    """A server going away (a reload) used to close an idle connection that opened
    with the hello, and a request its client wrote at that moment was lost: smtpd
    answered 451, qmgr deferred the mail. Now it says goodbye first: a pipelined
    server serves what still comes until the client closes; a sequential one (local)
    reads nothing more and says so, so that qmgr sends the request elsewhere."""
    path = str(tmp_path / "sock")
    stopping = asyncio.Event()
    read: list[int] = []

    async def handler(request: attr.AttrList) -> dict[str, object]:
        read.append(request.number("n"))
        return {"n": request.number("n")}

    async def streamed(request: attr.AttrList, follow: attr.FollowUps | None) -> dict[str, object]:
        total = request.number("n")
        while follow is not None and (part := await follow.get()) is not None:
            total += part.number("n")
        read.append(total)
        return {"n": total}

    async def serve(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        if kind == "pipelined":
            await attr.serve_pipelined(r, w, handler, stopping)
        elif kind == "streamed":
            await attr.serve_streamed(r, w, streamed, stopping)
        else:
            await attr.serve_sequential(r, w, handler, stopping)

    if kind == "streamed":
        lists = [attr.encode([("n", 40), (attr.MORE, 1)]), attr.encode([("n", 2)])]
    else:
        lists = [attr.encode([("n", 42)])]

    async def main() -> list[list[tuple[str, bytes]]]:
        server = await asyncio.start_unix_server(serve, path=path)
        after_hello, go_on = asyncio.Event(), asyncio.Event()
        exchange = asyncio.ensure_future(_raw_exchange(path, lists, after_hello, go_on))
        await after_hello.wait()
        stopping.set()
        await asyncio.sleep(0.1)  # the server has gone idle-and-stopping: goodbye or close
        go_on.set()
        received = await exchange
        server.close()
        reader = asyncio.StreamReader()
        reader.feed_data(received)
        reader.feed_eof()
        out = []
        while (attrs := await attr.read_attrs(reader)) is not None:
            out.append([(name, value) for name, value in attrs.pairs])
        return out

    out = asyncio.run(main())
    if kind == "sequential":
        assert out == [[("goodbye", b"read_nothing")]] and read == []
    else:
        assert out == [[("goodbye", b"serves_rest")], [("n", b"42")]] and read == [42]


def test_attr_client_leaves_a_connection_that_said_goodbye(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """After a pipelined server's goodbye the client's next request goes on a new
    connection (to the next process), the reply to one written before it still
    arrives on the old one, and the client closes the old one, so that the old
    server goes at once."""
    path = str(tmp_path / "sock")
    stopping = asyncio.Event()
    release = asyncio.Event()
    connections: list[asyncio.Task[None]] = []

    serve = _first_connection_stops(stopping, release, connections)

    async def main() -> tuple[int, int, float]:
        server = await asyncio.start_unix_server(serve, path=path)
        client = attr.AttrClient(path, hello="test")
        held = asyncio.ensure_future(client.request({"n": 1, "wait": 1}))
        while not connections:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        stopping.set()
        await asyncio.sleep(0.05)
        release.set()
        first = (await held).number("n")
        started = asyncio.get_running_loop().time()
        await asyncio.wait_for(connections[0], 10)  # the old server goes once we close
        gone_after = asyncio.get_running_loop().time() - started
        second = (await client.request({"n": 2})).number("n")
        await client.close()
        server.close()
        return first, second, gone_after

    first, second, gone_after = asyncio.run(main())
    assert (first, second) == (1, 2)
    assert gone_after < attr.GOODBYE_GRACE  # closed by the client, not by the grace period


def test_attr_client_fails_what_a_sequential_server_did_not_read(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A sequential server going away answers the request in progress, reads nothing
    after it and says so: the request queued behind fails with NotRead (qmgr sends it
    again), and the next request goes to a new connection."""
    path = str(tmp_path / "sock")
    stopping = asyncio.Event()
    release = asyncio.Event()
    connections: list[asyncio.Task[None]] = []

    serve = _first_connection_stops(stopping, release, connections, sequential=True)

    async def main() -> tuple[int, str, tuple[int, int]]:
        server = await asyncio.start_unix_server(serve, path=path)
        client = attr.AttrClient(path, hello="test")
        held = asyncio.ensure_future(client.request({"n": 1, "wait": 1}))
        while not connections:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        behind = client.submit({"n": 2})
        stopping.set()
        await asyncio.sleep(0.05)
        release.set()
        first = (await held).number("n")
        try:
            await behind
            fate = "answered"
        except attr.NotRead:
            fate = "not read"
        third = await client.request({"n": 3})
        await client.close()
        server.close()
        return first, fate, (third.number("n"), third.number("connection"))

    assert asyncio.run(main()) == (1, "not read", (3, 2))


def test_delay_format_matches_postfix() -> None:
    from pymailsys.log import format_delay

    assert [format_delay(x) for x in (0, 0.004, 0.011, 0.018, 0.33, 1.25, 12.7)] == [
        "0", "0", "0.01", "0.02", "0.33", "1.2", "12"]
    # around the shortcut for what rounds to 0.00, and the other boundaries
    assert [format_delay(x) for x in (math.nextafter(0.005, 0), 0.005, -1.0, 0.995,
                                      math.nextafter(1.0, 0), 9.96, 10.0)] == [
        "0", "0.01", "0", "0.99", "1", "10", "10"]


def test_attr_client_timeout_and_a_cancelled_caller(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A cancelled request gives up its place (the next caller gets its own reply);
    a request not answered within the client's timeout fails, and so does every
    other request waiting on that connection."""
    path = str(tmp_path / "sock")
    release = asyncio.Event()

    async def handler(request: attr.AttrList) -> dict[str, object]:
        if request.number("hang"):
            await asyncio.sleep(3600)
        if request.number("wait"):
            await release.wait()
        return {"n": request.number("n")}

    async def main() -> tuple[int, str, str]:
        server = await asyncio.start_unix_server(
            lambda r, w: attr.serve_pipelined(r, w, handler), path=path)
        client = attr.AttrClient(path, timeout=0.5)
        cancelled = asyncio.ensure_future(client.request({"n": 1, "wait": 1}))
        await asyncio.sleep(0.05)
        cancelled.cancel()
        following = asyncio.ensure_future(client.request({"n": 2}))
        await asyncio.sleep(0.05)
        release.set()
        second = (await following).number("n")
        errors = []
        for request in ({"n": 3, "hang": 1}, {"n": 4}):
            errors.append(asyncio.ensure_future(client.request(request)))
        texts = []
        for fut in errors:
            try:
                await fut
                texts.append("answered")
            except attr.ProtocolError as e:
                texts.append(str(e))
        await client.close()
        server.close()
        return second, texts[0], texts[1]

    second, hung, behind = asyncio.run(main())
    assert second == 2
    assert hung == f"{path}: timeout"
    assert behind == f"{path}: timeout"


def test_attr_client_request_on_a_connection_that_breaks_leaves_no_unretrieved_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A server that goes away while a large request is still being written: the
    request fails with ProtocolError, and asyncio reports no "Future exception was
    never retrieved" (seen in master's log as smtpd's stderr during reloads)."""
    import gc

    path = str(tmp_path / "s")
    reported: list[str] = []

    async def run() -> str:
        asyncio.get_running_loop().set_exception_handler(
            lambda _loop, context: reported.append(context["message"]))

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read(10)
            writer.transport.abort()  # a reset, with most of the request unread

        server = await asyncio.start_unix_server(serve, path)
        client = attr.AttrClient(path, timeout=10)
        try:
            await client.request([("data", b"x" * (8 << 20))])
        except attr.ProtocolError as e:
            outcome = type(e).__name__
        else:
            outcome = "answered"
        await client.close()
        server.close()
        await server.wait_closed()
        gc.collect()
        await asyncio.sleep(0.1)
        return outcome

    assert asyncio.run(run()) == "ProtocolError"
    gc.collect()
    assert not [m for m in reported if "never retrieved" in m], reported


def test_a_request_written_after_the_server_closed_is_not_read(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A sequential server (local) that goes away after its reply closes the
    connection; a request its client writes before it has seen that (qmgr sends
    the next delivery as soon as the reply is in) meets a broken pipe. The server
    cannot have read it: it fails with NotRead, so qmgr sends it again instead
    of deferring the mail (``unknown mail transport error``), as it used to
    every max_use deliveries."""
    path = str(tmp_path / "sock")

    async def main() -> str:
        loop = asyncio.get_running_loop()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(path)
        listener.listen()
        listener.setblocking(False)
        client = attr.AttrClient(path, hello="test")
        connecting = asyncio.ensure_future(client.send({"n": 1}))
        conn, _ = await loop.sock_accept(listener)
        await loop.sock_recv(conn, 4096)  # the hello
        await loop.sock_sendall(conn, attr.encode([(attr.HELLO, "test"),
                                                   (attr.REQUESTS_AT_ONCE, 1)]))
        first = await connecting
        await loop.sock_recv(conn, 4096)  # the request
        await loop.sock_sendall(conn, attr.encode([("n", 1)]))
        assert (await first).number("n") == 1
        conn.close()  # gone, before the client's reader has seen it
        listener.close()
        try:
            second = client.submit({"n": 2})
        except attr.NotRead:
            return "not read"
        try:
            await second
        except attr.ProtocolError as e:
            return f"failed: {e}"
        return "answered"

    assert asyncio.run(main()) == "not read"
