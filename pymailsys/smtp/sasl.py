"""SMTP AUTH through Dovecot's authentication server (Postfix's smtpd_sasl_type = dovecot).

``DovecotAuth(path, timeout)`` talks Dovecot's auth client protocol (version
1) over the unix socket ``path`` (smtpd_sasl_path; a relative path is under
the queue directory, as in Postfix):

* handshake: we send ``VERSION 1 0`` and ``CPID pid``; the server sends
  ``VERSION``, one ``MECH name flags...`` line per mechanism, ``SPID``,
  ``CUID``, ``COOKIE`` and ``DONE``. ``mechanisms()`` gives the mechanisms
  (cached for the process once read), ``offered(mechs, options)`` those that
  the security options (smtpd_sasl_security_options: noanonymous,
  noplaintext, noactive, nodictionary, mutual_auth, forward_secrecy) allow;
  a ``private`` mechanism is never offered.
* one conversation per AUTH command, on a connection of its own:
  ``AUTH id mech service=smtp nologin lip= rip= [secured] [resp=]``, then the
  server's ``CONT id challenge`` (the client's next line goes back as ``CONT
  id response``), ``OK id user=...`` or ``FAIL id [reason=...] [user=...]``.

Every read has a deadline (``timeout``) and a bounded line length; the
server's words are kept printable. Failures to reach the server are
``Outcome(temporary=True)`` (Postfix's 454), never an exception.
"""

from __future__ import annotations

import asyncio
import os
import re
from dataclasses import dataclass, field

from pymailsys import log

VERSION_MAJOR = 1
LINE_LIMIT = 65536  # a Dovecot line: a challenge or the MECH list, never near this
SECURITY_OPTIONS = {"noplaintext": "plaintext", "noactive": "active",
                    "nodictionary": "dictionary", "noanonymous": "anonymous",
                    "mutual_auth": "mutual-auth", "forward_secrecy": "forward-secrecy"}
_BASE64 = re.compile(r"[A-Za-z0-9+/=]*")


class AuthServerError(Exception):
    """Dovecot's auth server could not be reached or broke its protocol."""


@dataclass(frozen=True)
class Mechanism:
    name: str
    flags: frozenset[str]


@dataclass
class Outcome:
    """One step of a conversation: a challenge, success (username) or failure."""

    challenge: str | None = None  # CONT: base64 text for "334 "
    username: str = ""  # OK
    reason: str = ""  # FAIL: the server's reason (maybe empty)
    failed: bool = False
    temporary: bool = False  # the server could not be reached: 454
    fail_user: str = ""  # FAIL's user=, for the log
    extra: dict[str, str] = field(default_factory=dict)


def valid_base64(text: str) -> bool:
    return _BASE64.fullmatch(text) is not None


def check_security_options(words: list[str]) -> None:
    """ValueError on a word that smtpd_sasl_security_options does not know."""
    for word in words:
        if word.lower() not in SECURITY_OPTIONS:
            raise ValueError(f"unknown SASL security option: {word}")


def offered(mechanisms: list[Mechanism], options: list[str]) -> list[str]:
    """The names of the mechanisms the security options allow, in the server's order."""
    refused = set()
    wanted = set()
    for option in (o.lower() for o in options):
        if option in ("mutual_auth", "forward_secrecy"):
            wanted.add(SECURITY_OPTIONS[option])
        elif option in SECURITY_OPTIONS:
            refused.add(SECURITY_OPTIONS[option])
    return [m.name for m in mechanisms
            if "private" not in m.flags and not (m.flags & refused) and wanted <= m.flags]


class DovecotAuth:
    def __init__(self, path: str, timeout: float) -> None:
        self.path = path
        self.timeout = timeout
        self._mechanisms: list[Mechanism] | None = None
        self._request_ids = 0

    async def mechanisms(self) -> list[Mechanism]:
        """The server's mechanisms (read once per process); AuthServerError if unreachable."""
        if self._mechanisms is None:
            conn = await _Connection.open(self.path, self.timeout)
            conn.close()
            self._mechanisms = conn.mechanisms
        return self._mechanisms

    async def start(self, mechanism: str, initial: str | None, client_addr: str,
                    server_addr: str, secured: bool) -> tuple[Conversation | None, Outcome]:
        """Open a conversation: its first step (and the conversation, while it goes on)."""
        try:
            conn = await _Connection.open(self.path, self.timeout)
        except AuthServerError as e:
            log.warning(f"SASL: Connect to {self.path} failed: {e}")
            return None, Outcome(failed=True, temporary=True,
                                 reason="Can't connect to authentication server")
        self._request_ids += 1
        conversation = Conversation(conn, self._request_ids)
        fields = [mechanism, "service=smtp", "nologin", f"lip={server_addr}",
                  f"rip={client_addr}"]
        if secured:
            fields.append("secured")
        if initial is not None:
            fields.append(f"resp={initial}")
        outcome = await conversation.send("AUTH", fields)
        return (conversation if outcome.challenge is not None else None), outcome


class Conversation:
    """One authentication in progress on its own connection."""

    def __init__(self, conn: _Connection, request_id: int) -> None:
        self.conn = conn
        self.id = request_id

    async def next(self, response: str) -> Outcome:
        return await self.send("CONT", [response])

    async def send(self, command: str, fields: list[str]) -> Outcome:
        try:
            line = "\t".join([command, str(self.id)] + fields) + "\n"
            reply = await self.conn.exchange(line.encode("utf-8", "surrogateescape"), self.id)
        except AuthServerError as e:
            log.warning(f"SASL: {self.conn.path}: {e}")
            self.close()
            return Outcome(failed=True, temporary=True,
                           reason="Connection lost to authentication server")
        verb, args = reply
        values = dict(a.partition("=")[::2] for a in args if "=" in a)
        if verb == "CONT":
            return Outcome(challenge=log.printable(args[0] if args else ""))
        self.close()
        if verb == "OK":
            return Outcome(username=log.printable(values.get("user", "")), extra=values)
        return Outcome(failed=True, reason=log.printable(values.get("reason", "")),
                       temporary="temp" in args,
                       fail_user=log.printable(values.get("user", "")))

    def close(self) -> None:
        self.conn.close()


class _Connection:
    def __init__(self, path: str, timeout: float, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.path = path
        self.timeout = timeout
        self.reader = reader
        self.writer = writer
        self.mechanisms: list[Mechanism] = []

    @classmethod
    async def open(cls, path: str, timeout: float) -> _Connection:
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_unix_connection(path, limit=LINE_LIMIT)
        except (OSError, TimeoutError) as e:
            raise AuthServerError(getattr(e, "strerror", None) or "timed out") from None
        conn = cls(path, timeout, reader, writer)
        try:
            await conn._handshake()
        except AuthServerError:
            conn.close()
            raise
        return conn

    async def _handshake(self) -> None:
        self.writer.write(f"VERSION\t{VERSION_MAJOR}\t0\nCPID\t{os.getpid()}\n".encode())
        while True:
            words = await self._line()
            if words[0] == "VERSION":
                if len(words) < 2 or words[1] != str(VERSION_MAJOR):
                    raise AuthServerError(f"unsupported protocol version {words[1:2]}")
            elif words[0] == "MECH" and len(words) >= 2:
                self.mechanisms.append(Mechanism(log.printable(words[1]).upper(),
                                                 frozenset(w.lower() for w in words[2:])))
            elif words[0] == "DONE":
                break
        if not self.mechanisms:
            raise AuthServerError("no MECH lines: is this Dovecot's auth client socket?")

    async def _line(self) -> list[str]:
        try:
            async with asyncio.timeout(self.timeout):
                line = await self.reader.readline()
        except (OSError, TimeoutError, ValueError, asyncio.LimitOverrunError) as e:
            raise AuthServerError(f"read: {e or type(e).__name__}") from None
        if not line.endswith(b"\n"):
            raise AuthServerError("connection lost")
        return line[:-1].decode("utf-8", "surrogateescape").split("\t")

    async def exchange(self, request: bytes, request_id: int) -> tuple[str, list[str]]:
        """Send one request; the server's reply to it (OK, CONT or FAIL and its fields)."""
        self.writer.write(request)
        while True:
            words = await self._line()
            if words[0] in ("OK", "CONT", "FAIL") and len(words) >= 2 \
                    and words[1] == str(request_id):
                return words[0], words[2:]

    def close(self) -> None:
        if not self.writer.is_closing():
            self.writer.close()
