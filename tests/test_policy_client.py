"""pymailsys.smtp.policy against a real socket server: kept connections, limits, retries."""

from __future__ import annotations

import asyncio

import pytest

from pymailsys import config
from pymailsys.smtp import policy


def client(port: int, **values: str) -> policy.Client:
    base = {"queue_directory": "/nonexistent", "smtpd_policy_service_retry_delay": "0s"}
    base.update(values)
    return policy.Client(f"inet:127.0.0.1:{port}", config.Config("/nonexistent", base))


async def serve(replies: list[bytes]) -> tuple[asyncio.Server, list[list[str]]]:
    """A policy server answering each request with the next reply; the requests it saw."""
    seen: list[list[str]] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            lines: list[str] = []
            while (line := (await reader.readline()).decode()) not in ("\n", ""):
                lines.append(line.rstrip("\n"))
            if not lines:
                break
            seen.append(lines)
            writer.write(replies[min(len(seen), len(replies)) - 1])
            await writer.drain()
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0), seen


def test_connections_kept_and_limited() -> None:
    async def run() -> None:
        server, seen = await serve([b"action=DUNNO\n\n"])
        port = server.sockets[0].getsockname()[1]
        kept = client(port)
        for _ in range(3):
            assert await kept.ask([("request", "smtpd_access_policy"), ("x", "a\nb")]) == "DUNNO"
        assert kept.connections_opened == 1
        assert seen[0] == ["request=smtpd_access_policy", "x=a?b"]  # no line breaks through
        limited = client(port, smtpd_policy_service_request_limit="1")
        for _ in range(3):
            await limited.ask([("request", "smtpd_access_policy")])
        assert limited.connections_opened == 3
        await kept.close()
        await limited.close()
        server.close()
    asyncio.run(run())


def test_bad_replies_and_unreachable_server_give_the_default_action() -> None:
    async def run() -> None:
        server, seen = await serve([b"no_action=here\n\n", b"x" * 5000 + b"\n\n"])
        port = server.sockets[0].getsockname()[1]
        c = client(port, smtpd_policy_service_try_limit="2")
        assert await c.ask([("request", "smtpd_access_policy")]) == (
            "451 4.3.5 Server configuration problem")
        assert len(seen) == 2  # two attempts
        server.close()
        await server.wait_closed()
        gone = client(port, smtpd_policy_service_try_limit="1",
                      smtpd_policy_service_default_action="DEFER try later")
        assert await gone.ask([("request", "smtpd_access_policy")]) == "DEFER try later"
    asyncio.run(run())


def test_braced_form_overrides_the_parameters() -> None:
    cfg = config.Config("/nonexistent", {"queue_directory": "/var/spool/x"})
    c = policy.Client("{ unix:private/policy, timeout=10s, try_limit=1, "
                      "{ default_action = 451 4.3.5 Try later, please }, policy_context=x }", cfg)
    assert (c.host, c.timeout, c.try_limit) == ("/var/spool/x/private/policy", 10.0, 1)
    assert c.default_action == "451 4.3.5 Try later, please" and c.policy_context == "x"
    assert c.max_idle == 300.0  # the parameter's default where the braces say nothing
    for bad in ("{ inet:127.0.0.1:1, colour=blue }", "{ inet:127.0.0.1:1, timeout=soon }",
                "{ inet:127.0.0.1:1", "inet:nohost"):
        with pytest.raises(ValueError, match="check_policy_service"):
            policy.Client(bad, cfg)
