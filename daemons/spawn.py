"""spawn - run an external command for each connection to a master.cf service (Postfix's spawn(8)).

SYNOPSIS
    master.cf:
        policy  unix  -  n  n  -  0  spawn
          user=nobody argv=/usr/bin/policy-server --option

DESCRIPTION
    For every client connection, spawn runs the command given after
    ``argv=`` (executed directly, no shell; an argument in ``{ }`` may hold
    white space) with the rights of ``user=name`` or ``user=name:group``,
    the connection as its standard input, output and error, working
    directory /, a new session, and an environment of PATH=/usr/bin:/bin
    plus TZ and LANG when set. The command is killed (SIGKILL, its whole
    session) after ``SERVICE_time_limit`` seconds (SERVICE: the master.cf
    service name, e.g. policy_time_limit; default command_time_limit). An
    abnormal end is logged as Postfix does: ``warning: command CMD exit
    status N`` or ``warning: command CMD killed by signal N``.

SECURITY
    Runs as root (master.cf unprivileged column ``n``) only to start the
    command as its user: it refuses (fatal at start) a missing user, root,
    and mail_owner, as Postfix's spawn does. It reads nothing from the
    client: the socket goes to the command untouched
    (``server.run(serve_connection=...)``).

CONFIGURATION PARAMETERS
    command_time_limit, SERVICE_time_limit, mail_owner.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import os
import pwd
import signal
import socket

from pymailsys import config as config_mod
from pymailsys import log, privileges, server
from pymailsys.server import Context

PATH = "/usr/bin:/bin"


def command_attributes(words: list[str], config: config_mod.Config) -> tuple[
        privileges.UserIds, list[str]]:
    """(the user, the argv) from master.cf's ``user=... argv=...``; ValueError as Postfix's fatal."""
    user_spec = ""
    argv: list[str] = []
    i = 0
    while i < len(words):
        word = words[i]
        if word.startswith("user="):
            user_spec = word[5:]
        elif word.startswith("argv="):
            argv = _braced([word[5:], *words[i + 1:]])
            break
        else:
            raise ValueError(f"unknown command attribute: {word}")
        i += 1
    if not argv or not argv[0]:
        raise ValueError("missing argv= command-line attribute")
    if not user_spec:
        raise ValueError("missing user= command-line attribute")
    name, _, group = user_spec.partition(":")
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        raise ValueError(f"unknown user name: {name}") from None
    gid = pw.pw_gid
    if group:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            raise ValueError(f"unknown group name: {group}") from None
    if pw.pw_uid == 0 or gid == 0:
        raise ValueError(f"request to deliver as root: user={user_spec}")
    owner = config.get("mail_owner")
    if pw.pw_name == owner:
        raise ValueError(f"request to deliver as mail system owner: user={user_spec}")
    return privileges.UserIds(pw.pw_name, pw.pw_uid, gid, pw.pw_dir, pw.pw_shell), argv


def _braced(words: list[str]) -> list[str]:
    """Postfix's { } grouping: ``{ a b }`` is one argument ``a b``."""
    out: list[str] = []
    group: list[str] | None = None
    for word in words:
        if group is None and word.startswith("{"):
            group = []
            word = word[1:]
        if group is None:
            out.append(word)
            continue
        closed = word.endswith("}")
        if closed:
            word = word[:-1]
        if word:
            group.append(word)
        if closed:
            out.append(" ".join(group))
            group = None
    if group is not None:
        raise ValueError("missing '}' in argv= command-line attribute")
    return out


def time_limit(config: config_mod.Config, service: str) -> float:
    value = config.raw(f"{service}_time_limit")
    if value is None:
        return float(config.get_time("command_time_limit"))
    return float(config_mod.parse_time(config.expand(value), "s", f"{service}_time_limit"))


async def _start(ctx: Context) -> None:
    try:
        user, argv = command_attributes(ctx.args, ctx.config)
        limit = time_limit(ctx.config, ctx.service)
    except (ValueError, config_mod.ConfigError) as e:
        log.fatal(str(e))
    ctx.state["command"] = (user, argv, limit)


async def serve_connection(conn: socket.socket, ctx: Context) -> None:
    user, argv, limit = ctx.state["command"]
    env = {"PATH": PATH}
    for name in ("TZ", "LANG"):
        if name in os.environ:
            env[name] = os.environ[name]
    conn.setblocking(True)
    fd = conn.fileno()
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=fd, stdout=fd, stderr=fd, env=env, cwd="/", start_new_session=True,
            **privileges.subprocess_ids(user))  # type: ignore[arg-type]
    except OSError as e:
        log.warning(f"{argv[0]}: {e.strerror}")
        return
    finally:
        conn.close()  # the command holds the connection now
    try:
        status = await asyncio.wait_for(proc.wait(), limit)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        status = await proc.wait()
    if status > 0:
        log.warning(f"command {argv[0]} exit status {status}")
    elif status < 0:
        log.warning(f"command {argv[0]} killed by signal {-status}")


def main() -> None:
    server.run("spawn", serve_connection=serve_connection, on_start=_start)


if __name__ == "__main__":
    main()
