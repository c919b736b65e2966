#!/usr/bin/env python3
"""Benchmark: the attribute protocol's CPU cost per request, in one process.

Usage: python3 tests/bench/attr_rate.py [--requests N] [--rounds K]

Two figures, each the median of K rounds of CPU time (time.process_time):

- decode: ``read_attrs`` of a list like smtpd's request to cleanup (25
  attributes, 2 KB of content) from a StreamReader that holds it whole;
- round trip: ``AttrClient.request`` to a ``serve_pipelined`` server on a Unix
  socket in the same process (uvloop), a request like qmgr's to local, the reply
  like local's: encode, write, read and decode on both sides.

Timing only; nothing here is a pass/fail test.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time

from pymailsys.ipc import attr

CLEANUP_REQUEST: list[tuple[str, attr.AttrValue]] = [
    ("origin", "smtpd"), ("sender", "alice@example.org"), ("rcpt", "bob@example.com"),
    ("notify", "0"), ("orcpt", "bob@example.com"), ("dsn_orcpt", ""), ("flags", 3),
    ("client_name", "client.example.org"), ("client_addr", "192.0.2.1"),
    ("client_port", "40000"), ("helo_name", "client.example.org"), ("protocol", "ESMTP"),
    ("rewrite_context", "remote"), ("encoding", ""), ("smtputf8", 0), ("envid", ""),
    ("ret", ""), ("received_with", "ESMTP"), ("reverse_client_name", "client.example.org"),
    ("sasl_method", ""), ("sasl_username", ""), ("sasl_sender", ""), ("full_name", ""),
    ("queue_id_hint", ""), ("content", b"Subject: x\n\n" + b"x" * 2000 + b"\n"),
]
AGENT_REQUEST: list[tuple[str, attr.AttrValue]] = [
    ("queue_name", "active"), ("queue_id", "04BE226C605"), ("offset", 580), ("size", 2363),
    ("arrival", 1796461380), ("active", 1796461380), ("sender", "alice@example.org"),
    ("encoding", ""), ("dsn_envid", ""), ("dsn_ret", 0), ("smtputf8", 0),
    ("nexthop", "test.example"), ("rcpt", "bob@test.example"), ("orcpt", "bob@test.example"),
    ("rcpt_offset", 640), ("notify", 0), ("dsn_orcpt", ""),
]
REPLY = {"status": "sent", "dsn": "2.0.0", "reason": "delivered to maildir"}


async def decode(n: int) -> float:
    data = attr.encode(CLEANUP_REQUEST)
    reader = asyncio.StreamReader(limit=1 << 20)
    start = time.process_time()
    for _ in range(n):
        reader.feed_data(data)
        await attr.read_attrs(reader)
    return (time.process_time() - start) / n


async def round_trip(n: int) -> float:
    async def handler(_request: attr.AttrList) -> dict[str, str]:
        return REPLY

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "sock")
        server = await asyncio.start_unix_server(
            lambda r, w: attr.serve_pipelined(r, w, handler), path=path)
        client = attr.AttrClient(path)
        await client.request(AGENT_REQUEST)
        start = time.process_time()
        for _ in range(n):
            await client.request(AGENT_REQUEST)
        cpu = (time.process_time() - start) / n
        await client.close()
        await asyncio.sleep(0.1)  # the server side sees end of file and ends
        server.close()
    return cpu


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    try:
        import uvloop  # type: ignore[import-not-found]
        uvloop.install()
    except ImportError:
        pass
    dec = [asyncio.run(decode(args.requests)) for _ in range(args.rounds)]
    trip = [asyncio.run(round_trip(args.requests)) for _ in range(args.rounds)]
    print(f"decode of a cleanup request: {1e6 * statistics.median(dec):.1f} us CPU; "
          f"agent request round trip: {1e6 * statistics.median(trip):.1f} us CPU "
          f"(medians of {args.rounds} rounds of {args.requests})")


if __name__ == "__main__":
    main()
