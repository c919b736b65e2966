"""Delivery to a command (``|command`` in an alias or .forward, and mailbox_command).

Takes the command text and the rights it runs with (``LocalAgent.file_user``);
promises Postfix's pipe-to-command semantics: ``/bin/sh -c`` only when the
command contains a character outside Postfix's plain set (letters, digits,
``!@%-_=+:,./``, blanks) or its first word is no program on PATH (a shell
builtin), else split on blanks and executed directly (with local_command_shell
set, every command runs as that shell's last argument: ``/usr/sbin/smrsh -c
COMMAND``, as Postfix's pipe_command runs it), in the queue directory
(Postfix's local works there and command_execution_directory is empty by
default) with local's umask (077),
the environment as Postfix's local sets it: PATH=/usr/bin:/bin, LOGNAME, USER
(the recipient's user part: an alias's name), SENDER, RECIPIENT, LOCAL, and
DOMAIN, ORIGINAL_RECIPIENT when not empty, EXTENSION when the address has a
delimiter (empty for ``user+``); HOME and SHELL only with
a user's rights (.forward, mailbox_command: the user's; an alias's command
gets neither); ENVID (the DSN envelope ID, MAIL FROM ... ENVID=),
CLIENT_ADDRESS, CLIENT_HELO, CLIENT_HOSTNAME, CLIENT_PROTOCOL, SASL_METHOD,
SASL_SENDER and SASL_USERNAME from the queue file's attributes (the client's
as smtpd logged them; the AUTH login that smtpd hands to cleanup) when set. Every one of those values has
the characters outside ``command_expansion_filter`` replaced with ``_``, as
Postfix censors them (a value a client chose never reaches a shell raw); TZ,
MAIL_CONFIG and LANG come from local's environment unchanged
(export_environment's default). The From_ line and prepended headers go before
the message (no >From quoting); the command runs in a new session, killed as a
whole after ``command_time_limit``; it writes no file larger than
mailbox_size_limit (a write past it fails with EFBIG, as under Postfix's local,
whose file size limit its commands inherit with SIGXFSZ ignored). A program
that cannot be executed defers, ``temporary failure. Command output: local:
fatal: execvp PROGRAM: ERROR``, as Postfix's child reports it. The verdict is
Postfix's pipe_command's (``outcome``): exit 0 is success; a command killed at
the time limit bounces (5.3.0), one killed by a signal defers; output starting
with ``X.Y.Z`` decides; a sysexits.h status maps through Postfix's table (75
EX_TEMPFAIL and 71 EX_OSERR defer, 67 EX_NOUSER bounces 5.1.1 ``user
unknown``...); any other status bounces, 5.3.0. The reason carries the first
4096 bytes of the command's output, unprintable characters replaced.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
from collections.abc import Iterable
from dataclasses import replace
from typing import TYPE_CHECKING

from pymailsys.daemons.local import results

from pymailsys import log, privileges
from pymailsys.delivery.agent import DIAG_UNIX, DeliveryRequest, DeliveryResult, QueueContent
from pymailsys.delivery.mailbox import plain_text

if TYPE_CHECKING:
    from pymailsys.daemons.local.agent import LocalAgent, Recipient

EXPORTED = ("TZ", "MAIL_CONFIG", "LANG")  # Postfix's default export_environment
# Postfix's local exports these from the delivery request, which qmgr fills from the
# queue file's attributes (the log_ forms: what smtpd logged, XFORWARD included)
CLIENT_ENVIRONMENT = (("ENVID", "dsn_envid"),  # the DSN envelope ID (MAIL FROM ... ENVID=)
                      ("CLIENT_HOSTNAME", "log_client_name"),
                      ("CLIENT_ADDRESS", "log_client_address"),
                      ("CLIENT_HELO", "log_helo_name"), ("CLIENT_PROTOCOL", "log_protocol_name"),
                      ("SASL_METHOD", "sasl_method"), ("SASL_SENDER", "sasl_sender"),
                      ("SASL_USERNAME", "sasl_username"))
DEFAULT_PATH = "/usr/bin:/bin"  # Postfix's _PATH_DEFPATH
# Postfix's exec_command: a command of only these characters (and a word) is split on
# blanks and executed directly; anything else goes to the shell (shell_or_direct)
PLAIN_CHARS = frozenset("1234567890!@%-_=+:,./abcdefghijklmnopqrstuvwxyz"
                        "ABCDEFGHIJKLMNOPQRSTUVWXYZ \t")
# Run a command with SIGXFSZ ignored (it survives exec, as under Postfix's local), so
# that a write past mailbox_size_limit fails with EFBIG instead of killing it. A
# program that cannot be executed says so as Postfix's child does (its execvp failure
# is fatal, EX_TEMPFAIL): the shell's own exec failure would be status 127, a bounce.
XFSZ_IGNORED = ("/bin/sh", "-c", 'trap "" XFSZ; case $1 in */*) [ -f "$1" ] && [ -x "$1" ];; '
                '*) command -v "$1" >/dev/null;; esac && exec "$@"; [ -e "$1" ] && '
                'e="Permission denied" || e="No such file or directory"; '
                'printf "local: fatal: execvp %s: %s\\n" "$1" "$e"; exit 75', "sh")
OUTPUT_KEPT = 4096  # of a command's output, for the DSN and the log (Postfix's VSTREAM_BUFSIZE)
_TO_SPACE = str.maketrans("\t\n", "  ")
# Postfix's dsn_valid: a status at the very start, then the end or white space
_DSN_RE = re.compile(r"([245]\.\d{1,3}\.\d{1,3})(?=\s|$)")
EX_SOFTWARE = 70
EX_TEMPFAIL = 75
# Postfix's sys_exits table: a sysexits.h exit status -> (enhanced status, text)
SYS_EXITS = {
    64: ("5.3.0", "command line usage error"),  # EX_USAGE
    65: ("5.6.0", "data format error"),  # EX_DATAERR
    66: ("5.3.0", "cannot open input"),  # EX_NOINPUT
    67: ("5.1.1", "user unknown"),  # EX_NOUSER
    68: ("5.1.2", "host name unknown"),  # EX_NOHOST
    69: ("5.3.0", "service unavailable"),  # EX_UNAVAILABLE
    70: ("5.3.0", "internal software error"),  # EX_SOFTWARE
    71: ("4.3.0", "system resource problem"),  # EX_OSERR
    72: ("5.3.0", "critical OS file missing"),  # EX_OSFILE
    73: ("5.2.0", "can't create user output file"),  # EX_CANTCREAT
    74: ("5.3.0", "input/output error"),  # EX_IOERR
    75: ("4.3.0", "temporary failure"),  # EX_TEMPFAIL
    76: ("5.5.0", "remote error in protocol"),  # EX_PROTOCOL
    77: ("5.7.0", "permission denied"),  # EX_NOPERM
    78: ("5.3.5", "local configuration error"),  # EX_CONFIG
}


async def deliver(agent: LocalAgent, req: DeliveryRequest, rcpt: Recipient, command: str,
                  content: QueueContent,
                  rights: privileges.UserIds | None = None) -> DeliveryResult:
    command = command.strip()
    if command.startswith('"') and command.endswith('"'):
        command = command[1:-1]
    try:
        ids = agent.file_user(rights)
    except privileges.PrivilegeError as e:
        return results.failure(e)
    data = plain_text(agent.prepended(req, rcpt, True), content.text())
    argv = [*agent.command_shell, command] if agent.command_shell else shell_or_direct(command)
    if agent.size_limit:
        argv = [*XFSZ_IGNORED, *argv]
    env = environment(agent, req, rcpt, rights, content)
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, env=env, cwd=agent.spool.root,
            start_new_session=True,
            **privileges.subprocess_ids(ids, agent.size_limit))  # type: ignore[arg-type]
    except OSError as e:  # as Postfix's child: a fatal execvp error, EX_TEMPFAIL
        return outcome(command, EX_TEMPFAIL,
                       f"local: fatal: execvp {argv[0]}: {e.strerror}\n".encode())
    output = bytearray()
    try:
        await asyncio.wait_for(_converse(proc, data, output), agent.command_time_limit)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        return outcome(command, None, bytes(output))
    return outcome(command, proc.returncode or 0, bytes(output))


def shell_or_direct(command: str) -> list[str]:
    """Postfix's exec_command: a command without shell magic is split on blanks and
    executed; with magic, or naming no program on PATH (a shell builtin such as
    ``exit 75``), or empty (an alias ``|``: the shell's success, as Postfix 3.7), it runs
    as ``/bin/sh -c COMMAND``."""
    if all(ch in PLAIN_CHARS for ch in command) and command.strip(" \t"):
        argv = command.split()
        if "/" in argv[0] or shutil.which(argv[0], path=DEFAULT_PATH) is not None:
            return argv
    return ["sh", "-c", command]  # as Postfix's execl(_PATH_BSHELL, "sh", ...): messages
    # from the shell say "sh: 1: ...", not "/bin/sh: 1: ..." (PATH is DEFAULT_PATH)


def outcome(command: str, status: int | None, output: bytes) -> DeliveryResult:
    """Postfix's pipe_command verdict on a command that exited with ``status`` (negative:
    killed by that signal; None: killed at command_time_limit) after writing ``output``.

    The output (at most ``OUTPUT_KEPT`` bytes) has tabs and newlines turned into
    spaces and every other unprintable character into ``_``, as Postfix's
    translit and printable do, before it goes into a reason: nothing a command
    writes reaches a log line, a status log or a bounce raw. Exit 0 is success.
    Otherwise, in Postfix's order: the time limit bounces (5.3.0 ``Command time
    limit exceeded``), a signal defers (4.3.0), output that starts with ``X.Y.Z``
    gives the status (2.x.x becomes 5.0.0) and the text after it, a sysexits.h
    status its table's status and text (EX_TEMPFAIL, EX_OSERR defer; EX_NOUSER
    5.1.1 ...), any other status bounces (5.3.0 ``Command died with status N``).
    A failure's Diagnostic-Code is ``x-unix;`` and the output (the text after a
    status the output gave), or without output what the exit status means
    (``unknown mail system error N`` for one sysexits.h does not define;
    ``internal software error`` for the time limit and a signal), as Postfix's."""
    text = log.printable(output[:OUTPUT_KEPT].decode("utf-8", "surrogateescape")
                         .translate(_TO_SPACE), "_")
    detail = f". Command output: {text}" if text else ""
    if status == 0:
        return DeliveryResult.sent(f"delivered to command: {command}")
    if status is None:
        result = DeliveryResult.bounced(f'Command time limit exceeded: "{command}"{detail}',
                                        "5.3.0")
        return _unix(result, text or SYS_EXITS[EX_SOFTWARE][1])
    if status < 0:
        result = DeliveryResult.deferred(f'Command died with signal {-status}: "{command}"'
                                         f"{detail}", "4.3.0")
        return _unix(result, text or SYS_EXITS[EX_SOFTWARE][1])
    m = _DSN_RE.match(text)
    if m is not None:  # a 2.x.x status cannot bounce: Postfix's bounce_append makes it 5.0.0
        dsn = m.group(1) if m.group(1)[0] != "2" else "5.0.0"
        reason = text[m.end():].lstrip(" ")
        return _unix(DeliveryResult.from_dsn(dsn, reason), reason)
    if status in SYS_EXITS:
        dsn, meaning = SYS_EXITS[status]
        return _unix(DeliveryResult.from_dsn(dsn, meaning + detail), text or meaning)
    result = DeliveryResult.bounced(f'Command died with status {status}: "{command}"{detail}',
                                    "5.3.0")
    return _unix(result, text or f"unknown mail system error {status}")


def _unix(result: DeliveryResult, diag: str) -> DeliveryResult:
    """A command's failure with its Diagnostic-Code ``x-unix; diag``: its output, else
    what its exit status means (Postfix's pipe_command, dsb_unix)."""
    return replace(result, diag=diag, diag_type=DIAG_UNIX)


def environment(agent: LocalAgent, req: DeliveryRequest, rcpt: Recipient,
                rights: privileges.UserIds | None, content: QueueContent) -> dict[str, str]:
    """The command's environment: Postfix's variables, censored by
    command_expansion_filter, then PATH and export_environment's names."""
    env: dict[str, str] = {}
    if rights is not None:  # a user's (.forward, mailbox_command), even when uid 0 runs as nobody
        env.update(HOME=rights.home, SHELL=rights.shell)
    env.update(LOGNAME=rcpt.user, USER=rcpt.user, SENDER=req.sender, RECIPIENT=req.rcpt,
               LOCAL=rcpt.localpart)
    attributes = content.attributes()
    if rcpt.has_extension:  # "user+": EXTENSION is there, empty, as Postfix exports it
        env["EXTENSION"] = rcpt.extension
    optional = [("DOMAIN", rcpt.domain), ("ORIGINAL_RECIPIENT", req.orig_rcpt)]
    optional += [(name, attributes.get(attr, "")) for name, attr in CLIENT_ENVIRONMENT]
    env.update((name, value) for name, value in optional if value)
    allowed = agent.command_filter
    env = {name: "".join(ch if ch in allowed else "_" for ch in value)
           for name, value in env.items()}
    env.update((name, os.environ[name]) for name in EXPORTED if name in os.environ)
    env["PATH"] = DEFAULT_PATH
    return env


async def _converse(proc: asyncio.subprocess.Process, data: Iterable[bytes],
                    kept: bytearray) -> None:
    """Feed data to a command a chunk at a time and collect the first ``OUTPUT_KEPT``
    bytes of its output in ``kept`` (what came before a time limit stays there); a
    command may stop reading early."""
    assert proc.stdin is not None and proc.stdout is not None
    stdin, stdout = proc.stdin, proc.stdout

    async def feed() -> None:
        try:
            for chunk in data:
                stdin.write(chunk)
                await stdin.drain()
        except (BrokenPipeError, ConnectionResetError, RuntimeError):
            pass  # the command exited or closed its input (uvloop: RuntimeError)
        finally:
            with contextlib.suppress(Exception):
                stdin.close()

    async def first_output() -> None:  # the rest is read and dropped
        while chunk := await stdout.read(65536):
            if len(kept) < OUTPUT_KEPT:
                kept.extend(chunk[:OUTPUT_KEPT - len(kept)])

    await asyncio.gather(feed(), first_output())
    await proc.wait()
