"""SMTP AUTH through Dovecot's authentication server (Postfix's smtpd_sasl_type = dovecot).

``DovecotAuth(path, timeout)`` talks Dovecot's auth client protocol (version
1) over the unix socket ``path`` (smtpd_sasl_path; a relative path is under
the queue directory, as in Postfix; ``unix:`` before it is allowed) or, for
``inet:host:port``, over TCP (Dovecot's ``inet_listener`` of its auth
service, as Postfix's Dovecot client allows):

* handshake: we send ``VERSION 1 0`` and ``CPID pid``; the server sends
  ``VERSION``, one ``MECH name flags...`` line per mechanism, ``SPID``,
  ``CUID``, ``COOKIE`` and ``DONE``. ``mechanisms()`` gives the mechanisms
  (cached for the process once read), ``offered(mechs, options)`` those that
  the security options (smtpd_sasl_security_options: noanonymous,
  noplaintext, noactive, nodictionary, mutual_auth, forward_secrecy) allow;
  a ``private`` mechanism is never offered.
* ONE connection per process, as Postfix's xsasl_dovecot keeps it: opened
  at the first need, shared by every session of the process, each AUTH a
  request ID of its own (a reader task hands each reply to its request);
  a lost connection fails the requests waiting on it and is reopened for
  the next one (once more at once for an AUTH, as Postfix retries);
* one conversation per AUTH command: ``AUTH id mech service=SERVICE
  nologin lip= rip= [secured] [resp=]`` (SERVICE: smtpd_sasl_service),
  then the server's ``CONT id challenge`` (the client's next line goes back
  as ``CONT id response``), ``OK id user=...`` or ``FAIL id [reason=...]
  [user=...]``; an OK without a user name or a CONT without a challenge is
  a failure (``Authentication backend error``), as in Postfix;
* ``mechanism_filter`` (smtpd_sasl_mechanism_filter, a callable on the
  name) keeps some of the server's mechanisms; when it keeps none the
  server is as good as unreachable (Postfix's fatal ``discards all
  mechanisms`` becomes a warning and no AUTH, so that one bad setting does
  not end the other sessions of the process);
* smtpd_sasl_local_domain (the realm) is not sent: Postfix's Dovecot client
  does not send it either (Dovecot takes the realm from the login).

Every request waits for its reply within ``timeout`` (smtpd gives
``AUTH_TIMEOUT``, Postfix's fixed 10 seconds, after which the client gets
454, not a session held as long as the auth server stalls); every line is
bounded in length; the server's words are kept printable. Failures to reach the server are
``Outcome(temporary=True)`` (Postfix's 454), never an exception.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from pymailsys import log

VERSION_MAJOR = 1
AUTH_TIMEOUT = 10.0  # seconds, as Postfix's xsasl_dovecot_server.c: connect, each reply
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


def inet_address(path: str) -> tuple[str, int]:
    """``inet:host:port`` (``inet:[v6addr]:port``) as host and port; ValueError if malformed."""
    host, _, port = path.removeprefix("inet:").rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"invalid smtpd_sasl_path value: {path} (inet:host:port)")
    return host, int(port)


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
    """The process's client of Dovecot's auth server: one connection, many conversations."""

    def __init__(self, path: str, timeout: float, service: str = "smtp",
                 mechanism_filter: Callable[[str], bool] | None = None) -> None:
        self.path = path
        self.timeout = timeout
        self.service = service
        self.mechanism_filter = mechanism_filter
        self._mechanisms: list[Mechanism] | None = None
        self._conn: _Connection | None = None
        self._connecting: asyncio.Lock | None = None
        self._request_ids = 0
        self.connections_opened = 0  # for tests and the curious

    async def mechanisms(self) -> list[Mechanism]:
        """The server's mechanisms that smtpd_sasl_mechanism_filter keeps (read once per
        process); AuthServerError if the server is unreachable or the filter keeps none."""
        if self._mechanisms is None:
            conn = await self._connection()
            kept = [m for m in conn.mechanisms
                    if self.mechanism_filter is None or self.mechanism_filter(m.name)]
            if not kept:
                names = " ".join(m.name for m in conn.mechanisms)
                raise AuthServerError(f"smtpd_sasl_mechanism_filter discards all mechanisms "
                                      f"in '{names}'")
            self._mechanisms = kept
        return self._mechanisms

    async def _connection(self) -> _Connection:
        """The shared connection, (re)opened when there is none or it was lost."""
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._conn is None or self._conn.lost:
                self._conn = await _Connection.open(self.path, self.timeout)
                self.connections_opened += 1
            return self._conn

    async def start(self, mechanism: str, initial: str | None, client_addr: str,
                    server_addr: str, secured: bool) -> tuple[Conversation | None, Outcome]:
        """Open a conversation: its first step (and the conversation, while it goes on)."""
        fields = [mechanism, f"service={self.service}", "nologin", f"lip={server_addr}",
                  f"rip={client_addr}"]
        if secured:
            fields.append("secured")
        if initial is not None:
            fields.append(f"resp={initial}")
        for attempt in range(2):  # as Postfix: a lost connection is reopened once
            try:
                conn = await self._connection()
            except AuthServerError as e:
                log.warning(f"SASL: Connect to Dovecot auth socket '{self.path}' failed: {e}")
                return None, Outcome(failed=True, temporary=True,
                                     reason="Can't connect to authentication server")
            if conn.lost and attempt == 0:
                continue
            self._request_ids += 1
            conversation = Conversation(conn, self._request_ids)
            outcome = await conversation.send("AUTH", fields)
            return (conversation if outcome.challenge is not None else None), outcome
        return None, Outcome(failed=True, temporary=True,
                             reason="Can't connect to authentication server")

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class Conversation:
    """One authentication in progress: a request ID on the shared connection."""

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
            return Outcome(failed=True, temporary=True,
                           reason="Connection lost to authentication server")
        verb, args = reply
        values = dict(a.partition("=")[::2] for a in args if "=" in a)
        if verb == "CONT":
            if not args:  # as Postfix: a failure, not an empty challenge
                log.warning("missing Dovecot server CONT reply field")
                return Outcome(failed=True, reason="Authentication backend error")
            return Outcome(challenge=log.printable(args[0]))
        if verb == "OK":
            if not values.get("user"):  # as Postfix: no login without a name to log it by
                log.warning("missing Dovecot server OK username field")
                return Outcome(failed=True, reason="Authentication backend error")
            return Outcome(username=log.printable(values["user"]), extra=values)
        return Outcome(failed=True, reason=log.printable(values.get("reason", "")),
                       temporary="temp" in args,
                       fail_user=log.printable(values.get("user", "")))

    def close(self) -> None:
        """The conversation is over (the connection stays for the next one)."""
        self.conn.forget(self.id)


class _Connection:
    """The connection to the auth server: a reader task hands each reply to the request
    it names; a lost connection fails every request waiting on it."""

    def __init__(self, path: str, timeout: float, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.path = path
        self.timeout = timeout
        self.reader = reader
        self.writer = writer
        self.mechanisms: list[Mechanism] = []
        self.lost = False
        self._waiting: dict[int, asyncio.Future[tuple[str, list[str]]]] = {}
        self._reading: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, path: str, timeout: float) -> _Connection:
        try:
            async with asyncio.timeout(timeout):
                if path.startswith("inet:"):
                    host, port = inet_address(path)
                    reader, writer = await asyncio.open_connection(host, port, limit=LINE_LIMIT)
                else:
                    reader, writer = await asyncio.open_unix_connection(path, limit=LINE_LIMIT)
        except (OSError, TimeoutError) as e:
            raise AuthServerError(getattr(e, "strerror", None) or "timed out") from None
        conn = cls(path, timeout, reader, writer)
        try:
            await conn._handshake()
        except AuthServerError:
            conn.close()
            raise
        conn._reading = asyncio.get_running_loop().create_task(conn._read_replies())
        return conn

    async def _handshake(self) -> None:
        self.writer.write(f"VERSION\t{VERSION_MAJOR}\t0\nCPID\t{os.getpid()}\n".encode())
        while True:
            async with asyncio.timeout(self.timeout):
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
            line = await self.reader.readline()
        except (OSError, ValueError, asyncio.LimitOverrunError) as e:
            raise AuthServerError(f"read: {e or type(e).__name__}") from None
        if not line.endswith(b"\n"):
            raise AuthServerError("connection lost")
        return line[:-1].decode("utf-8", "surrogateescape").split("\t")

    async def _read_replies(self) -> None:
        error = AuthServerError("connection lost")
        try:
            while True:
                words = await self._line()
                if words[0] in ("OK", "CONT", "FAIL") and len(words) >= 2 \
                        and words[1].isdigit():
                    waiter = self._waiting.pop(int(words[1]), None)
                    if waiter is not None and not waiter.done():
                        waiter.set_result((words[0], words[2:]))
        except AuthServerError as e:
            error = e
        finally:
            self.lost = True
            for waiter in self._waiting.values():
                if not waiter.done():
                    waiter.set_exception(error)
            self._waiting.clear()
            self.close()

    async def exchange(self, request: bytes, request_id: int) -> tuple[str, list[str]]:
        """Send one request; the server's reply to it (OK, CONT or FAIL and its fields)."""
        if self.lost:
            raise AuthServerError("connection lost")
        waiter = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = waiter
        self.writer.write(request)
        try:
            async with asyncio.timeout(self.timeout):
                return await waiter
        except TimeoutError:
            raise AuthServerError("read: timeout") from None
        finally:
            self._waiting.pop(request_id, None)

    def forget(self, request_id: int) -> None:
        self._waiting.pop(request_id, None)

    def close(self) -> None:
        self.lost = True
        if not self.writer.is_closing():
            self.writer.close()
        if self._reading is not None and self._reading is not asyncio.current_task():
            self._reading.cancel()
