"""triggerlog: a trigger service for master tests; logs every trigger it receives.

Log line: ``postfix/triggerlog[PID]: trigger 'W' on SERVICE``. With a ``fatal``
argument it then fails (``fatal: told to fail``, exit status 1), as a daemon that
fails soon after its start would.
"""

from __future__ import annotations

from pymailsys import log, server


async def on_trigger(ctx: server.Context, data: bytes) -> None:
    log.info(f"trigger {data.decode('ascii', 'replace')!r} on {ctx.service}")
    if "fatal" in ctx.args:
        log.fatal("told to fail")


if __name__ == "__main__":
    server.run("triggerlog", on_trigger=on_trigger, resident=True)
