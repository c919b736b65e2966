"""The client side of Postfix's SMTP access policy delegation (SMTPD_POLICY_README).

NAME
    policy - ask a policy server (check_policy_service) what to do

SYNOPSIS
    client = policy.Client("inet:127.0.0.1:10023", config)   # ValueError on a bad name
    action = await client.ask([("request", "smtpd_access_policy"), ...])
    await client.close()

DESCRIPTION
    A request is ``name=value`` lines ended by an empty line; the reply is
    ``action=...`` (and possibly other attributes, ignored) ended by an empty
    line. The server is ``inet:host:port``, ``unix:/path`` or
    ``unix:private/name`` (relative to queue_directory, as master.cf's
    policy services are), alone or in Postfix's braced form with settings of
    its own: ``{ inet:host:port, timeout=10s, max_idle=..., max_ttl=...,
    request_limit=..., try_limit=..., retry_delay=..., { default_action =
    451 4.3.5 text }, policy_context=... }`` (each overrides the
    smtpd_policy_service_NAME parameter).

    Connections are kept for the next request as Postfix's attr_clnt keeps
    them: closed after smtpd_policy_service_max_idle seconds without use,
    smtpd_policy_service_max_ttl seconds after they were opened, or
    smtpd_policy_service_request_limit requests (0: no limit). An idle
    connection is used by one request at a time; concurrent sessions open
    more.

    Each attempt (connect, send, read the reply) must end within
    smtpd_policy_service_timeout; a failed attempt is retried after
    smtpd_policy_service_retry_delay, up to smtpd_policy_service_try_limit
    attempts. After the last one ``ask`` logs Postfix's warning ``problem
    talking to server NAME: REASON`` and returns
    smtpd_policy_service_default_action (``451 4.3.5 Server configuration
    problem``), which the caller reads as an access(5) action like any other.

REFUSES
    A reply line over 4096 bytes, more than 100 reply lines or a reply
    without ``action=``: the attempt fails (never a traceback; memory
    bounded per reply). Request values are sent ``log.printable``.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass

from pymailsys import config as config_mod
from pymailsys import log

LINE_LIMIT = 4096
# the braced form's settings and the parameters they override
OPTIONS = {
    "timeout": "smtpd_policy_service_timeout",
    "max_idle": "smtpd_policy_service_max_idle",
    "max_ttl": "smtpd_policy_service_max_ttl",
    "request_limit": "smtpd_policy_service_request_limit",
    "try_limit": "smtpd_policy_service_try_limit",
    "retry_delay": "smtpd_policy_service_retry_delay",
    "default_action": "smtpd_policy_service_default_action",
    "policy_context": "smtpd_policy_service_policy_context",
}
LINES_LIMIT = 100


class PolicyError(Exception):
    pass


@dataclass
class _Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    opened: float
    last_used: float
    requests: int = 0

    def close(self) -> None:
        self.writer.close()


def parse_spec(spec: str) -> tuple[str, dict[str, str]]:
    """The server and its own settings: ``inet:h:p`` or Postfix's ``{ inet:h:p,
    timeout=10s, { default_action = 451 4.3.5 text } }``; ValueError on junk."""
    text = spec.strip()
    if not text.startswith("{"):
        return text, {}
    if not text.endswith("}"):
        raise ValueError(f"check_policy_service: missing '}}' in {spec}")
    items = _split_commas(text[1:-1])
    if not items:
        raise ValueError(f"check_policy_service: no server name in {spec}")
    options: dict[str, str] = {}
    for item in items[1:]:
        if item.startswith("{") and item.endswith("}"):
            item = item[1:-1].strip()
        name, sep, value = (part.strip() for part in item.partition("="))
        if not sep or name not in OPTIONS:
            raise ValueError(f'check_policy_service: unknown attribute "{item}" in {spec}')
        options[name] = value
    return items[0], options


def _split_commas(text: str) -> list[str]:
    """Items separated by commas outside inner { }."""
    items: list[str] = []
    depth = 0
    word: list[str] = []
    for ch in text:
        depth += (ch == "{") - (ch == "}")
        if ch == "," and depth == 0:
            items.append("".join(word).strip())
            word = []
        else:
            word.append(ch)
    items.append("".join(word).strip())
    return [item for item in items if item]


def endpoint(name: str, queue_directory: str) -> tuple[str, str, int]:
    """("inet", host, port) or ("unix", path, 0) for a policy server name."""
    kind, sep, rest = name.partition(":")
    if not sep:
        kind, rest = "unix", name
    if kind == "inet":
        host, _, port = rest.rpartition(":")
        host = host.strip("[]")
        if not host or not port.isdigit():
            raise ValueError(f"check_policy_service: bad server name: {name}")
        return "inet", host, int(port)
    if kind != "unix" or not rest:
        raise ValueError(f"check_policy_service: bad server name: {name}")
    return "unix", rest if rest.startswith("/") else os.path.join(queue_directory, rest), 0


class Client:
    """One policy server: kept connections, timeouts, retries; see the module docstring."""

    def __init__(self, spec: str, config: config_mod.Config) -> None:
        self.name, options = parse_spec(spec)
        self.connections_opened = 0  # for tests and the curious
        self.kind, self.host, self.port = endpoint(self.name, config.get("queue_directory"))

        def setting(option: str) -> str:
            return options.get(option) or config.get(OPTIONS[option])

        try:
            self.timeout = float(config_mod.parse_time(setting("timeout"), "s", "timeout"))
            self.max_idle = float(config_mod.parse_time(setting("max_idle"), "s", "max_idle"))
            self.max_ttl = float(config_mod.parse_time(setting("max_ttl"), "s", "max_ttl"))
            self.retry_delay = float(config_mod.parse_time(setting("retry_delay"), "s",
                                                           "retry_delay"))
            self.request_limit = int(setting("request_limit"))
            self.try_limit = max(1, int(setting("try_limit")))
        except (config_mod.ConfigError, ValueError) as e:
            raise ValueError(f"check_policy_service {self.name}: {e}") from None
        self.default_action = setting("default_action")
        self.policy_context = setting("policy_context")
        self._idle: list[_Connection] = []

    async def ask(self, attrs: list[tuple[str, str]]) -> str:
        """The server's action for one request, or the default action after failures."""
        if self.policy_context:
            attrs = attrs + [("policy_context", self.policy_context)]
        # a value never breaks the line protocol: control characters become "?"
        request = "".join(f"{n}={log.printable(v)}\n" for n, v in attrs).encode(
            "utf-8", "surrogateescape")
        request += b"\n"
        reason = ""
        for attempt in range(self.try_limit):
            if attempt:
                await asyncio.sleep(self.retry_delay)
            try:
                async with asyncio.timeout(self.timeout):
                    return await self._exchange(request)
            except TimeoutError:
                reason = "timeout"
            except OSError as e:
                reason = e.strerror or str(e)
            except asyncio.IncompleteReadError:
                reason = "lost connection"
            except PolicyError as e:
                reason = str(e)
        log.warning(f"problem talking to server {self.name}: {reason}")
        return self.default_action

    async def _exchange(self, request: bytes) -> str:
        conn = await self._connection()
        try:
            conn.writer.write(request)
            await conn.writer.drain()
            action = await self._reply(conn.reader)
        except BaseException:
            conn.close()
            raise
        conn.requests += 1
        conn.last_used = time.monotonic()
        if self.request_limit and conn.requests >= self.request_limit:
            conn.close()
        else:
            self._idle.append(conn)
        return action

    async def _connection(self) -> _Connection:
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()
            if (now - conn.last_used < self.max_idle and now - conn.opened < self.max_ttl
                    and not conn.reader.at_eof()):
                return conn
            conn.close()
        self.connections_opened += 1
        if self.kind == "inet":
            reader, writer = await asyncio.open_connection(self.host, self.port,
                                                           limit=LINE_LIMIT)
        else:
            reader, writer = await asyncio.open_unix_connection(self.host, limit=LINE_LIMIT)
        return _Connection(reader, writer, now, now)

    @staticmethod
    async def _reply(reader: asyncio.StreamReader) -> str:
        action: str | None = None
        for _ in range(LINES_LIMIT):
            try:
                line = await reader.readuntil(b"\n")
            except asyncio.LimitOverrunError:
                raise PolicyError("reply line too long") from None
            text = line.decode("utf-8", "replace").rstrip("\r\n")
            if not text:
                if action is None:
                    raise PolicyError("reply without action attribute")
                return action
            name, sep, value = text.partition("=")
            if sep and name == "action":
                action = value
        raise PolicyError("reply too long")

    async def close(self) -> None:
        for conn in self._idle:
            conn.close()
        self._idle.clear()
