"""A scripted SMTP/LMTP server on 127.0.0.1 for outbound tests: it answers each command
line with a reply the test chose (any bytes: odd codes, 2xx where 3xx belongs, huge
multi-line replies), one reply per line read so that pipelining works, and records
what it received. Runs an asyncio server in a thread of the test process.

    with ScriptedServer(data=b"250 2.0.0 no thanks\\r\\n") as server:
        ... route a domain to smtp:[127.0.0.1]:{server.port} ...
        server.wait_for(b".\\r\\n")

An answer that ends with ``HANG_UP`` is written without it and the server then closes
the connection; so does a 421 reply (RFC 5321: the server closes the channel). One that
ends with ``STALL`` is written without it and the server then neither reads nor writes
(a STARTTLS peer that never answers the handshake: ``starttls=b"220 go ahead\r\n" +
STALL``).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from types import TracebackType

from harness import wait_until

HANG_UP = b"<hang up>"
STALL = b"<stall>"
EHLO = b"250-scripted.example\r\n250-PIPELINING\r\n250-SIZE 10000000\r\n250 8BITMIME\r\n"
Answer = bytes | Callable[[bytes], bytes]


class ScriptedServer:
    def __init__(self, *, banner: bytes = b"220 scripted.example ESMTP\r\n", ehlo: bytes = EHLO,
                 helo: bytes = b"250 scripted.example\r\n",
                 starttls: bytes = b"502 5.5.2 Error: command not recognized\r\n",
                 mail: Answer = b"250 2.1.0 Ok\r\n", rcpt: Answer = b"250 2.1.5 Ok\r\n",
                 data: bytes = b"354 End data with <CR><LF>.<CR><LF>\r\n",
                 eod: Answer = b"250 2.0.0 Ok: queued as SCRIPTED\r\n") -> None:
        self.banner, self.ehlo, self.helo, self.mail, self.rcpt = banner, ehlo, helo, mail, rcpt
        self.data, self.eod, self.starttls = data, eod, starttls
        self.received: list[bytes] = []  # every line, in order, all sessions
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def __enter__(self) -> ScriptedServer:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._session, "127.0.0.1", 0, limit=1 << 20),
            self._loop).result(10)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        server = self._server

        async def close() -> None:
            if server is not None:
                server.close()
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    @staticmethod
    async def _reply(writer: asyncio.StreamWriter, reply: bytes) -> bool:
        """Write a reply; False when the server hangs up after it (``HANG_UP``, 421)."""
        hang_up = reply.endswith(HANG_UP)
        stall = reply.endswith(STALL)
        reply = reply.removesuffix(HANG_UP).removesuffix(STALL)
        last = reply[reply.rstrip(b"\r\n").rfind(b"\n") + 1:]
        if reply:
            writer.write(reply)
            await writer.drain()
        if stall:
            await asyncio.Event().wait()  # until the server is closed
        return not (hang_up or last.startswith(b"421 "))

    def wait_for(self, line: bytes, timeout: float = 30) -> None:
        wait_until(lambda: line in self.received, timeout, what=f"{line!r} at the server")

    @staticmethod
    def _answer(answer: Answer, line: bytes) -> bytes:
        return answer(line) if callable(answer) else answer

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            in_data = False
            reply = self.banner
            while await self._reply(writer, reply):
                line = await reader.readline()
                if not line:
                    break
                self.received.append(line)
                if in_data:
                    reply = b""
                    if line == b".\r\n":
                        in_data = False
                        reply = self._answer(self.eod, line)
                    continue
                verb = line[:4].upper()
                if verb in (b"EHLO", b"LHLO"):
                    reply = self.ehlo
                elif verb == b"HELO":
                    reply = self.helo
                elif verb == b"MAIL":
                    reply = self._answer(self.mail, line)
                elif verb == b"RCPT":
                    reply = self._answer(self.rcpt, line)
                elif verb == b"DATA":
                    reply = self.data
                    in_data = self.data.startswith(b"3")
                elif line[:8].upper() == b"STARTTLS":
                    reply = self.starttls
                elif verb in (b"RSET", b"NOOP"):
                    reply = b"250 2.0.0 Ok\r\n"
                elif verb == b"QUIT":
                    reply = b"221 2.0.0 Bye\r\n" + HANG_UP
                else:
                    reply = b"502 5.5.2 Error: command not recognized\r\n"
        except (ConnectionError, OSError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
            self._tasks.discard(task)
