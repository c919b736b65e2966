"""Fuzz target: the SMTP command loop (daemons/smtpd session) over a real socket.

One smtpd (the real Smtpd and Session, with the fake cleanup of smtpd_helpers)
runs on a loopback port in a background event loop; each example connects,
sends command lines (known verbs with arbitrary arguments: NUL, CR, 8-bit,
overlong; and arbitrary lines), and reads the reply to each. Every line gets an
SMTP reply (or the connection ends right after a 221/421/521/554 goodbye), and no
exception escapes a session. A well-formed BDAT line is followed by its chunk
(a count over 65536 is sent as 0).

The suite runs a bounded, derandomized number of examples; a longer run:
``PYMAILSYS_FUZZ_EXAMPLES=100000 pytest -p no:cacheprovider tests/test_fuzz_smtpd.py``.
"""

from __future__ import annotations

import asyncio
import io
import os
import re
import socket
import threading
import traceback
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pymailsys.daemons.smtpd.handler import Smtpd
from pymailsys.daemons.smtpd.session import Session
from smtpd_helpers import FakeCleanup, make_config, start_sessions

from pymailsys import log
from pymailsys.ipc import attr

EXAMPLES = int(os.environ.get("PYMAILSYS_FUZZ_EXAMPLES", "300"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=EXAMPLES <= 300,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
VERBS = [b"HELO", b"EHLO", b"MAIL FROM:", b"RCPT TO:", b"DATA", b"RSET", b"NOOP", b"QUIT",
         b"VRFY", b"EXPN", b"ETRN", b"AUTH", b"STARTTLS", b"BDAT", b"HELP", b"XCLIENT"]
REPLY_TIMEOUT = 20.0
GOODBYE = re.compile(rb"^(221|421|521|554) ")
BDAT = re.compile(rb"(?i)BDAT[ \t]+(\d+)((?:[ \t]+LAST)?)[ \t]*")


class Server:
    """smtpd sessions on a loopback port, served by an event loop in a thread."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.escaped: list[str] = []
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.port = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self.ready.wait(30), "fuzz smtpd did not start"

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._start())
        self.ready.set()
        self.loop.run_forever()

    async def _start(self) -> None:
        (self.tmp / "public").mkdir(exist_ok=True)
        fake = FakeCleanup()
        self.cleanup = await asyncio.start_unix_server(
            lambda r, w: attr.serve_streamed(r, w, fake.handle), str(self.tmp / "public" / "cleanup"))
        cfg = make_config(self.tmp, smtpd_hard_error_limit="1000", smtpd_junk_command_limit="1000")
        log.init(cfg, "smtpd")
        self.smtpd = Smtpd(cfg)

        escaped = self.escaped

        class Recorded(Session):
            async def run(self, writer: asyncio.StreamWriter) -> None:
                try:
                    await super().run(writer)
                except Exception:  # what the server skeleton would log as "unexpected error"
                    escaped.append(traceback.format_exc())
                    writer.close()

        self.srv = await start_sessions(self.smtpd, Recorded)
        self.port = self.srv.sockets[0].getsockname()[1]

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("fuzz-smtpd"))
    yield srv
    srv.stop()


def _reply(f: io.BufferedReader) -> bytes:
    """One whole reply (its last line), b"" at end of stream."""
    while True:
        line = f.readline(8192)
        if not line:
            return b""
        assert re.match(rb"^\d\d\d[ -]", line), line
        if line[3:4] == b" ":
            return line


text = st.binary(max_size=300).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
special = st.sampled_from([b"\0", b"\r", b"<a\0b@x>", b'<"a\rb"@x>', b"<\xff@\xfe>", b"<>",
                           b"<a@b> SIZE=99999999999999999999", b"<a@b> BODY=8BITMIME",
                           b"x" * 5000, b" " * 600, b"<" * 300, b"\x1b[2J", b"\t"])
args = st.one_of(text, special, st.lists(st.one_of(text, special), max_size=3).map(b"".join))
commands = st.one_of(st.builds(lambda v, a: v + (b" " if not v.endswith(b":") else b"") + a,
                               st.sampled_from(VERBS), args),
                     text, special)


@FUZZ
@given(st.lists(commands, min_size=1, max_size=8))
def test_every_command_line_gets_a_reply(server: Server, lines: list[bytes]) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=REPLY_TIMEOUT) as sock:
        f = sock.makefile("rb")
        assert _reply(f).startswith(b"220 ")
        last = b""
        for line in lines:
            if m := BDAT.fullmatch(line.split(b"\0")[0]):
                count = int(m.group(1)) if int(m.group(1)) <= 65536 else 0
                line = b"BDAT %d%s\r\n" % (count, m.group(2)) + b"x" * count
            else:
                line += b"\r\n"
            try:
                sock.sendall(line)
                reply = _reply(f)
            except ConnectionError:
                reply = b""
            if not reply and GOODBYE.match(last):
                break  # the session said goodbye and closed: fine
            assert reply, f"no reply to {line[:80]!r} (after {last!r})"
            if reply.startswith(b"354 "):
                sock.sendall(b"fuzz\r\n.\r\n")
                reply = _reply(f)
                assert reply, "no reply after the message"
            last = reply
    assert server.escaped == [], server.escaped[0]
