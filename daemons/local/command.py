"""Delivery to a command (``|command`` in an alias or .forward, and mailbox_command).

Takes the command text and the rights it runs with (``LocalAgent.file_user``);
promises Postfix's pipe-to-command semantics: ``/bin/sh -c`` only when the
command contains shell metacharacters (else split on white space and executed
directly), in the queue directory (Postfix's local works there and
command_execution_directory is empty by default) with local's umask (077),
the environment as Postfix's local sets it: PATH=/usr/bin:/bin, LOGNAME, USER
(the recipient's user part: an alias's name), SENDER, RECIPIENT, LOCAL, and
DOMAIN, EXTENSION, ORIGINAL_RECIPIENT when not empty; HOME and SHELL only with
a user's rights (.forward, mailbox_command: the user's; an alias's command
gets neither); CLIENT_ADDRESS, CLIENT_HELO, CLIENT_HOSTNAME, CLIENT_PROTOCOL,
SASL_METHOD, SASL_SENDER and SASL_USERNAME from the queue file's attributes
(the client's as smtpd logged them; the AUTH login that smtpd hands to cleanup)
when set. Every one of those values has
the characters outside ``command_expansion_filter`` replaced with ``_``, as
Postfix censors them (a value a client chose never reaches a shell raw); TZ,
MAIL_CONFIG and LANG come from local's environment unchanged
(export_environment's default). The From_ line and prepended headers go before
the message (no >From quoting); the command runs in a new session, killed as a
whole after ``command_time_limit``; it writes no file larger than
mailbox_size_limit (a write past it fails with EFBIG, as under Postfix's local,
whose file size limit its commands inherit with SIGXFSZ ignored; a command that
cannot be found then fails with the shell's status 127). Exit 0 is success;
output starting with ``X.Y.Z`` decides; 75 (EX_TEMPFAIL), 71 (EX_OSERR) and
death by a signal defer; any other status bounces with the command's output
(at most 1000 bytes of it in the reason).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
from collections.abc import Iterable
from typing import TYPE_CHECKING

from pymailsys.daemons.local import results

from pymailsys import privileges
from pymailsys.delivery.agent import DeliveryRequest, DeliveryResult, QueueContent
from pymailsys.delivery.mailbox import plain_text

if TYPE_CHECKING:
    from pymailsys.daemons.local.agent import LocalAgent, Recipient

EXPORTED = ("TZ", "MAIL_CONFIG", "LANG")  # Postfix's default export_environment
# Postfix's local exports these from the delivery request, which qmgr fills from the
# queue file's attributes (the log_ forms: what smtpd logged, XFORWARD included)
CLIENT_ENVIRONMENT = (("CLIENT_HOSTNAME", "log_client_name"),
                      ("CLIENT_ADDRESS", "log_client_address"),
                      ("CLIENT_HELO", "log_helo_name"), ("CLIENT_PROTOCOL", "log_protocol_name"),
                      ("SASL_METHOD", "sasl_method"), ("SASL_SENDER", "sasl_sender"),
                      ("SASL_USERNAME", "sasl_username"))
DEFAULT_PATH = "/usr/bin:/bin"  # Postfix's _PATH_DEFPATH
SHELL_METACHARS = set("`~!#$^&*()=|\\{}[];:'\"<>?\n\r")
# Run a command with SIGXFSZ ignored (it survives exec, as under Postfix's local), so
# that a write past mailbox_size_limit fails with EFBIG instead of killing it.
XFSZ_IGNORED = ("/bin/sh", "-c", "trap '' XFSZ; exec \"$@\"", "sh")
OUTPUT_KEPT = 4096  # of a command's output, for the DSN and the log
EX_OSERR = 71
EX_TEMPFAIL = 75
_DSN_RE = re.compile(rb"^\s*([245]\.\d{1,3}\.\d{1,3})\b")


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
    if any(ch in SHELL_METACHARS for ch in command):
        argv = ["/bin/sh", "-c", command]
    else:
        argv = command.split()
    if not argv:
        return DeliveryResult.bounced("empty command", "5.3.5")
    if agent.size_limit:
        argv = [*XFSZ_IGNORED, *argv]
    env = environment(agent, req, rcpt, rights, content)
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, env=env, cwd=agent.spool.root,
            start_new_session=True,
            **privileges.subprocess_ids(ids, agent.size_limit))  # type: ignore[arg-type]
    except OSError as e:
        return DeliveryResult.deferred(f"cannot execute command \"{command}\": {e.strerror}")
    try:
        output = await asyncio.wait_for(_converse(proc, data), agent.command_time_limit)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        return DeliveryResult.deferred(f'Command time limit exceeded: "{command}"')
    status = proc.returncode or 0
    text = output[:1000].decode("utf-8", "replace").strip().replace("\n", " ")
    detail = f". Command output: {text}" if text else ""
    if status == 0:
        return DeliveryResult.sent(f"delivered to command: {command}")
    m = _DSN_RE.match(output)
    if status < 0:
        return DeliveryResult.deferred(f'Command died with signal {-status}: "{command}"'
                                       + detail)
    if m is not None:
        dsn = m.group(1).decode()
        if dsn.startswith("2"):
            return DeliveryResult.sent(f"delivered to command: {command}", dsn)
        return DeliveryResult.from_dsn(dsn, text)
    reason = f'Command died with status {status}: "{command}"' + detail
    if status in (EX_TEMPFAIL, EX_OSERR):
        return DeliveryResult.deferred(reason, "4.3.0")
    return DeliveryResult.bounced(reason, "5.3.0")


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
    optional = [("DOMAIN", rcpt.domain), ("EXTENSION", rcpt.extension),
                ("ORIGINAL_RECIPIENT", req.orig_rcpt)]
    optional += [(name, attributes.get(attr, "")) for name, attr in CLIENT_ENVIRONMENT]
    env.update((name, value) for name, value in optional if value)
    allowed = agent.command_filter
    env = {name: "".join(ch if ch in allowed else "_" for ch in value)
           for name, value in env.items()}
    env.update((name, os.environ[name]) for name in EXPORTED if name in os.environ)
    env["PATH"] = DEFAULT_PATH
    return env


async def _converse(proc: asyncio.subprocess.Process, data: Iterable[bytes]) -> bytes:
    """Feed data to a command a chunk at a time and collect its output (bounded); a
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

    async def first_output() -> bytes:  # the rest is read and dropped
        kept = bytearray()
        while chunk := await stdout.read(65536):
            if len(kept) < OUTPUT_KEPT:
                kept += chunk[:OUTPUT_KEPT - len(kept)]
        return bytes(kept)

    _, output = await asyncio.gather(feed(), first_output())
    await proc.wait()
    return output
