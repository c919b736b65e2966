"""echo: a minimal stream service for master tests.

Each client gets one line ``pid=PID service=NAME`` and then its own lines
echoed back until it closes. ``-o echo_fail=yes`` (or an ``exit`` argument)
makes the daemon exit with status 1 before it reports its status, to test
throttling.
"""

from __future__ import annotations

import asyncio
import os
import sys

from pymailsys import server


async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                ctx: server.Context) -> None:
    writer.write(f"pid={os.getpid()} service={ctx.service} args={' '.join(ctx.args)}\n".encode())
    await writer.drain()
    while line := await reader.readline():
        writer.write(line)
        await writer.drain()


if __name__ == "__main__":
    if "exit" in sys.argv[1:]:
        sys.exit(1)
    server.run("echo", serve=serve, client_limit=1)
