"""What smtps reads before its TLS handshake: the PROXY header, straight off the socket.

``SocketReader(sock, deadline)`` is the reader aiosmtpd's PROXY parser
(``aiosmtpd.proxy_protocol.get_proxy``) needs: ``readexactly(n)``, ``read(n)``
(at most n) and ``readuntil(b"\n")`` (a v1 line, byte by byte, at most
``V1_LIMIT`` bytes) take from the raw socket nothing beyond what they
return, so the TLS handshake that
follows (HAProxy in front of smtps: PROXY header first, then TLS) starts at
the right byte. It never reads more than ``LIMIT`` bytes in all (a v2 header
with its TLVs fits), and ends with ``TimeoutError`` at ``deadline`` (the
loop's clock) and ``asyncio.IncompleteReadError`` at end of input.
"""

from __future__ import annotations

import asyncio
import socket

LIMIT = 16 + 65535  # a PROXY v2 header: 16 bytes and a 16-bit length
V1_LIMIT = 108  # one more than a v1 line may have: the parser says "too long"


class SocketReader:
    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.deadline = deadline
        self.taken = 0

    async def read(self, n: int = -1) -> bytes:
        if n <= 0 or self.taken + n > LIMIT:
            raise asyncio.IncompleteReadError(b"", n)
        async with asyncio.timeout_at(self.deadline):
            piece = await asyncio.get_running_loop().sock_recv(self.sock, n)
        self.taken += len(piece)
        return piece

    async def readexactly(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            piece = await self.read(n - len(data))
            if not piece:
                raise asyncio.IncompleteReadError(data, n)
            data += piece
        return data

    async def readuntil(self, separator: bytes = b"\n") -> bytes:
        data = b""
        while not data.endswith(separator) and len(data) < V1_LIMIT:
            data += await self.readexactly(1)
        return data
