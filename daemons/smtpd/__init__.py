"""smtpd - the SMTP server.

NAME
    smtpd - Postfix-compatible SMTP server

SYNOPSIS
    python3 -m pymailsys.daemons.smtpd [generic daemon options]   (from master.cf)
    python3 -m pymailsys.daemons.smtpd -c DIR -t inet -L 127.0.0.1:2525   (by hand)
    python3 -m pymailsys.daemons.smtpd -S [-c DIR]   (stand-alone: sendmail -bs)

DESCRIPTION
    Accepts SMTP connections on the socket master hands over and passes each
    message to cleanup (``public/$cleanup_service_name``) over one long-lived,
    pipelined attribute connection per process (pymailsys.ipc.attr.AttrClient),
    following the cleanup contract in pymailsys.ipc.services. A client gets
    ``250 2.0.0 Ok: queued as ID`` only after cleanup replied status 0, that
    is, after the queue file is fsynced.

    Layout: ``session`` is the protocol (an aiosmtpd.smtp.SMTP with
    Postfix's replies, the protocol of each accepted connection), ``stream`` reads
    command lines and DATA in bulk, ``handler`` is the glue to the
    restrictions (pymailsys.smtp.restrictions) and to cleanup.

    Stand-alone mode (``-S``, what ``sendmail -bs`` runs, as Postfix's
    sendmail runs ``smtpd -S``): one session on standard input and output,
    with the caller's privileges, the client being ``localhost[127.0.0.1]``.
    Each message is a local submission by the caller (``LocalSubmission``:
    live over public/pickup, which takes the uid from the kernel, else a
    maildrop file, as sendmail does) instead of a cleanup request.

    Commands: HELO, EHLO, MAIL, RCPT, DATA, RSET, NOOP, QUIT, VRFY, ETRN,
    STARTTLS, AUTH; anything else gets ``500 5.5.2 Error: command not
    recognized``, as Postfix does. With smtpd_delay_reject = no,
    smtpd_client_restrictions run at connect (helo at HELO, sender at MAIL):
    a refusal is the greeting (``NOQUEUE: reject: CONNECT from ...``), and
    every later command but QUIT gets ``503 5.7.0 Error: access denied for
    CLIENT``, as Postfix; with the default yes they all run at RCPT. VRFY
    (unless disable_vrfy_command) runs what RCPT runs, as Postfix's
    smtpd_check_rcpt, and answers ``252 2.0.0 ADDRESS`` when nothing refuses.

    TLS (pymailsys.smtp.tls_server): STARTTLS at smtpd_tls_security_level
    may or encrypt (``530 5.7.0 Must issue a STARTTLS command first`` before
    it), TLS from the first byte with smtpd_tls_wrappermode (smtps, made by
    the server skeleton before the session starts). Plaintext pipelined
    after STARTTLS is dropped unread (CVE-2011-0411), and STARTTLS makes the
    session forget HELO, MAIL and a plaintext login (RFC 3207, Postfix's
    smtpd_sasl_auth_reset). Client certificates
    (smtpd_tls_ask_ccert, smtpd_tls_req_ccert at encrypt: ``421 4.7.1 HOST
    Error: No client certificate presented`` after the next command, as
    Postfix) feed the Received: comment, check_ccert_access,
    permit_tls_clientcerts, permit_tls_all_clientcerts and the ccert_*
    policy attributes.

    SASL (pymailsys.smtp.sasl): smtpd_sasl_auth_enable with smtpd_sasl_type =
    dovecot; the mechanisms Dovecot's auth server offers, less
    smtpd_sasl_security_options (after TLS: smtpd_sasl_tls_security_options),
    none before TLS with smtpd_tls_auth_only (or at level encrypt), those
    smtpd_sasl_mechanism_filter keeps; EHLO announces none to
    smtpd_sasl_exceptions_networks (AUTH still works there, as in Postfix).
    The login is what permit_sasl_authenticated and the sender-login
    restrictions see; it goes to cleanup with MAIL FROM's AUTH= (sasl_method,
    sasl_username, sasl_sender: named attributes of the queue file, the
    ``client=`` log line and policy requests, as Postfix). MAIL's AUTH= is
    taken with SASL off too, as Postfix's smtpd_sasl_mail_opt(). A response
    longer than smtpd_sasl_response_limit gets ``500 5.5.6 SASL response limit
    exceeded``; an auth server that is down, or silent for Postfix's 10
    seconds, gets ``454 4.7.0 Temporary authentication failure: ...``.

    PROXY protocol: with smtpd_upstream_proxy_protocol = haproxy, a v1 or v2
    header (aiosmtpd's reader, within smtpd_upstream_proxy_timeout) names the
    client (an IPv4-mapped IPv6 address in IPv4 form, as Postfix); a
    connection without one is dropped with ``warning: haproxy read: ...``.

    EHLO offers only what works: PIPELINING, SIZE, VRFY, ETRN, STARTTLS, AUTH,
    ENHANCEDSTATUSCODES, 8BITMIME, DSN, SMTPUTF8, CHUNKING, less
    smtpd_discard_ehlo_keywords (each EHLO then logs Postfix's ``discarding EHLO
    keywords: PIPELINING DSN``, unless the list has silent-discard or
    enhancedstatuscodes). DSN (RFC 3461): MAIL takes RET= and ENVID=
    (kept decoded from xtext), RCPT takes NOTIFY= and ORCPT=
    (``pymailsys.dsn``; a bad value gets ``501 5.5.4``); with "dsn"
    discarded, RCPT's NOTIFY and ORCPT get Postfix's ``501 5.7.1 DSN support
    is disabled``. MAIL's
    SMTPUTF8 goes to cleanup, which notes where the message needs it. An
    address that resolves to no valid domain (``user@``, ``user@a..b``,
    ``user@127.0.0.1``, ``user@[::1]``; a domain in UTF-8 without SMTPUTF8)
    gets ``501 5.1.7 Bad sender address syntax`` / ``501 5.1.3 Bad recipient
    address syntax`` and Postfix's ``warning: Illegal address syntax from
    CLIENT in RCPT command: <...>`` (not with -S). ETRN
    asks the flush service (``pymailsys.ipc.flush``) to send the site's
    deferred mail: ``250 Queuing started``, ``459 <site>: service
    unavailable`` for a site outside fast_flush_domains, ``458 Unable to
    queue messages`` otherwise, as Postfix, once smtpd_etrn_restrictions
    (after the client and helo lists with smtpd_delay_reject) let it by:
    ``554 5.7.1 <site>: Etrn command rejected: Access denied``.

SECURITY
    Runs as mail_owner (``-u``); the TLS key and the sender login tables are
    opened before the privilege drop. DATA ends only at <CR><LF>.<CR><LF>
    (smtpd_forbid_bare_newline, CVE-2023-51764); smtpd_forbid_unauth_pipelining
    disconnects clients that send ahead where RFC 2920 does not allow it.
    An unknown command in smtpd_forbidden_commands (CONNECT, GET, POST, and
    by its regexp one that does not start with a letter), or one that looks
    like a header name, ends the session with Postfix's ``221 2.7.0 Error: I
    can break rules, too. Goodbye.`` and ``warning: non-SMTP command from
    NAME[ADDR]: LINE``: a browser made to post to port 25 gets no further.
    No DNS lookups for loopback clients.

DIAGNOSTICS
    Postfix's log lines: ``connect from NAME[ADDR]``, ``ID: client=NAME[ADDR]``
    (``, sasl_method=M, sasl_username=U`` after AUTH), ``Anonymous TLS
    connection established from NAME[ADDR]: TLSv1.3 with cipher ...``
    (smtpd_tls_loglevel 1), ``warning: NAME[ADDR]: SASL M authentication
    failed: ...``,
    ``NOQUEUE: reject: RCPT from NAME[ADDR]: REPLY; from=<s> to=<r>
    proto=ESMTP helo=<h>``, ``lost connection after CMD from NAME[ADDR]``,
    ``timeout after CMD from NAME[ADDR]``, ``too many errors after CMD from
    NAME[ADDR]``, ``warning: Connection concurrency limit exceeded: N from
    NAME[ADDR] for service SVC`` (and the other limits' warnings), ``disconnect from NAME[ADDR] ehlo=1 mail=1 ... commands=N``.
    A restriction list that cannot be parsed, or relay control missing from
    both smtpd_relay_restrictions and smtpd_recipient_restrictions, is fatal
    at start-up.

CONFIGURATION PARAMETERS
    info_log_address_format (``from=<…> to=<…>`` in reject lines: ``log.address``),
    notify_classes, error_notice_recipient, smtpd_history_flush_threshold
    (the postmaster's transcripts: ``transcript``),
    smtpd_banner, myhostname, mail_name, message_size_limit,
    queue_minfree (MAIL: ``452 4.3.1 Insufficient system storage`` and Postfix's
    ``not enough free space in mail queue`` warning when the queue's file
    system cannot keep it free, or holds less than 1.5 times message_size_limit),
    smtpd_recipient_limit, smtpd_recipient_overshoot_limit, smtpd_timeout,
    smtpd_error_sleep_time, smtpd_soft_error_limit, smtpd_hard_error_limit,
    smtpd_junk_command_limit, smtpd_forbidden_commands, smtpd_helo_required, smtpd_delay_reject,
    smtpd_client_restrictions, smtpd_helo_restrictions,
    smtpd_sender_restrictions, smtpd_relay_restrictions,
    smtpd_recipient_restrictions, smtpd_data_restrictions,
    smtpd_end_of_data_restrictions, smtpd_etrn_restrictions, smtpd_reject_unlisted_recipient,
    smtpd_reject_unlisted_sender, local_recipient_maps, mynetworks,
    mynetworks_style, smtpd_forbid_bare_newline,
    smtpd_forbid_bare_newline_exclusions, smtpd_forbid_unauth_pipelining,
    smtpd_discard_ehlo_keywords, disable_vrfy_command, smtputf8_enable,
    smtpd_peername_lookup, strict_rfc821_envelopes, local_header_rewrite_clients,
    smtpd_tls_* and tls_preempt_cipherlist (see pymailsys.smtp.tls_server),
    relay_clientcerts, smtpd_sasl_auth_enable,
    smtpd_sasl_type, smtpd_sasl_path, smtpd_sasl_security_options,
    smtpd_sasl_tls_security_options, smtpd_sasl_service, smtpd_sasl_local_domain,
    smtpd_sasl_exceptions_networks, smtpd_sasl_mechanism_filter,
    smtpd_sasl_authenticated_header,
    smtpd_sasl_response_limit, broken_sasl_auth_clients, smtpd_sender_login_maps,
    smtpd_upstream_proxy_protocol, smtpd_upstream_proxy_timeout,
    cleanup_service_name, ipc_timeout, fast_flush_domains, flush_service_name,
    content_filter (sent to cleanup with every message);
    the client limits counted by anvil
    (pymailsys.smtp.limits): smtpd_client_connection_count_limit,
    smtpd_client_connection_rate_limit, smtpd_client_message_rate_limit,
    smtpd_client_recipient_rate_limit, smtpd_client_event_limit_exceptions;
    the reply codes reject_code, defer_code,
    relay_domains_reject_code, access_map_reject_code, access_map_defer_code,
    unknown_local_recipient_reject_code, non_fqdn_reject_code,
    invalid_hostname_reject_code.

SEE ALSO
    pymailsys.smtp.restrictions, pymailsys.address.resolve, pymailsys.address.networks, Postfix smtpd(8).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import stat
import sys
import threading
import time
from collections.abc import Awaitable
from typing import Any

from pymailsys.daemons.smtpd.handler import QUEUE_WRITE_ERROR, Envelope, Smtpd
from pymailsys.daemons.smtpd.session import Session

from pymailsys import config as config_mod
from pymailsys import log, maps, server
from pymailsys.content.received import received_smtpd
from pymailsys.dsn import parse_ret
from pymailsys.mail_date import mail_date
from pymailsys.queue import maildrop
from pymailsys.smtp import restrictions
from pymailsys.submission import handoff, login

PROGRAM = "smtpd"


def _pre_init(config: config_mod.Config) -> Smtpd:
    """Before the privilege drop: parse the restrictions and open their tables."""
    _preload_fast_loop()
    try:
        smtpd = Smtpd(config)
    except (ValueError, maps.TableError, config_mod.ConfigError) as e:
        log.fatal(str(e))
    smtpd.engine.preopen()
    return smtpd


def _preload_fast_loop() -> None:
    """Import uvloop while we can: server.run picks it up after the privilege drop,
    when mail_owner may no longer be able to read the interpreter's site-packages
    (the import then fails quietly and the slower default loop runs)."""
    if os.environ.get("PYMAILSYS_NO_UVLOOP"):
        return
    try:
        import uvloop  # type: ignore[import-not-found]  # noqa: F401
    except ImportError:
        pass


async def _start(ctx: server.Context) -> None:
    ctx.state["smtpd"] = ctx.state["pre_init"]


async def _stop(ctx: server.Context) -> None:
    smtpd: Smtpd | None = ctx.state.get("smtpd")
    if smtpd is not None:
        await smtpd.close()


def _session(reader: asyncio.StreamReader, ctx: server.Context) -> Session:
    return Session(ctx.state["smtpd"], reader)


def _wrapper_tls(ctx: server.Context) -> tuple[ssl.SSLContext, float] | None:
    """smtps (smtpd_tls_wrappermode): TLS from the first byte, before the session."""
    tls = ctx.state["smtpd"].tls
    return (tls.context, tls.handshake_timeout) if tls.wrappermode and tls.context else None


def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
          ctx: server.Context) -> Awaitable[None]:
    """The session's run itself, not a coroutine that awaits it: every wake-up of the
    session resumes one frame fewer."""
    session = writer.transport.get_protocol()
    assert isinstance(session, Session)
    return session.run(writer)


# --- stand-alone mode (smtpd -S, sendmail -bs) ------------------------------------------

class LocalSubmission(Smtpd):
    """smtpd -S: the queue backend is a local submission by the calling user."""

    stand_alone = True

    def new_message(self, env: Envelope, req: restrictions.Request,
                    context: str) -> LocalMessage:
        return LocalMessage(self.config, env, req)


class LocalMessage:
    """One message of a stand-alone session: its pieces are gathered (the caller's own
    process, up to message_size_limit), then handed off as one local submission, with
    smtpd's Received: header on top (``from HELO (localhost [127.0.0.1])``, the maildrop
    file's queue ID), as Postfix's smtpd -S writes it."""

    def __init__(self, config: config_mod.Config, env: Envelope,
                 req: restrictions.Request) -> None:
        self.config = config
        self.env = env
        self.req = req
        self.pieces: list[bytes] = []

    def received(self, queue_id: str) -> list[bytes]:
        env, req = self.env, self.req
        lines = received_smtpd(
            req.helo, req.client_name, req.client_addr, env.received_with or req.protocol,
            self.config.get("myhostname"), self.config.get("mail_name"), queue_id,
            env.recipients[0] if len(env.recipients) == 1 else None, mail_date(time.time()),
            env.received_comment)
        return [part.encode("utf-8", "surrogateescape")
                for line in lines for part in line.split("\n")]

    async def feed(self, piece: bytes) -> None:
        self.pieces.append(piece)

    def abort(self) -> None:
        self.pieces.clear()

    async def finish(self, rest: bytes) -> tuple[str, str]:
        env = self.env
        content = b"".join(self.pieces) + rest
        self.pieces.clear()
        uid = os.getuid()
        lines = content.split(b"\n")
        if lines and lines[-1] == b"":
            lines.pop()
        sub = maildrop.Submission(
            sender=env.sender, recipients=list(env.recipients), lines=lines,
            full_name=login.clean_full_name(login.default_full_name(uid)), envid=env.envid, notifies=list(env.notifies),
            dsn_orcpts=list(env.dsn_orcpts),
            encoding="8bit" if env.body == "8bitmime" else "7bit" if env.body == "7bit" else "",
            ret=parse_ret(env.ret) if env.ret else 0)
        try:
            queue_id = await asyncio.to_thread(handoff.hand_off, self.config, sub, uid,
                                               self.received)
        except handoff.Refused as e:
            if e.status == os.EX_TEMPFAIL:
                return f"451 4.3.0 Error: {e.reason}", ""
            dsn = "5.7.1" if e.status == os.EX_NOPERM else "5.3.0"
            return f"554 {dsn} Error: {e.reason}", ""
        except OSError as e:
            log.warning(f"local submission failed: {e}")
            return QUEUE_WRITE_ERROR, ""
        return f"250 2.0.0 Ok: queued as {queue_id}", queue_id


def standalone(argv: list[str]) -> None:
    """One SMTP session on standard input and output, as the calling user."""
    log.init_stderr_only(PROGRAM)
    flags, overrides, _rest = server.parse_args(argv)
    try:
        config = config_mod.load(flags.get("-c"), overrides)
        if config.get("maillog_file") == "/dev/stdout":  # stdout is the SMTP stream
            config = config_mod.load(flags.get("-c"), {**overrides, "maillog_file": "/dev/stderr"})
        log.init(config, PROGRAM)
        smtpd = LocalSubmission(config)
    except (ValueError, maps.TableError, config_mod.ConfigError, OSError) as e:
        log.fatal(str(e))
    asyncio.run(_stdio_session(smtpd))


async def _stdio_session(smtpd: Smtpd) -> None:
    loop = asyncio.get_running_loop()
    pumps: list[threading.Thread] = []
    reader = asyncio.StreamReader(limit=1 << 20)
    session = Session(smtpd, reader)
    await loop.connect_read_pipe(lambda: session, _event_capable(sys.stdin.fileno(), True, pumps))
    transport, protocol = await loop.connect_write_pipe(
        asyncio.streams.FlowControlMixin, _event_capable(sys.stdout.fileno(), False, pumps))
    writer = asyncio.StreamWriter(transport, protocol, reader, loop)
    try:
        await session.run(writer)
    finally:
        await smtpd.close()
        transport.close()
        for pump in pumps:
            if pump.name == "stdout":  # what the session wrote must reach the file
                await asyncio.to_thread(pump.join, 30)


def _event_capable(fd: int, reading: bool, pumps: list[threading.Thread]) -> Any:
    """``fd`` when the event loop can watch it (pipe, socket, terminal); for
    anything else (a file, /dev/null), one end of a socket pair that a thread
    copies to or from it."""
    mode = os.fstat(fd).st_mode
    if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or os.isatty(fd):
        return os.fdopen(fd, "rb" if reading else "wb", buffering=0, closefd=False)
    ours, theirs = socket.socketpair()

    def copy_in() -> None:
        with theirs, contextlib.suppress(OSError):  # the session may end before the input
            while chunk := os.read(fd, 65536):
                theirs.sendall(chunk)

    def copy_out() -> None:
        with theirs, contextlib.suppress(OSError):
            while chunk := theirs.recv(65536):
                os.write(fd, chunk)

    pump = threading.Thread(target=copy_in if reading else copy_out, daemon=True,
                            name="stdin" if reading else "stdout")
    pump.start()
    pumps.append(pump)
    return ours


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if "-S" in args:
        standalone(args)
        return
    server.run(PROGRAM, serve=serve, pre_init=_pre_init, on_start=_start, on_stop=_stop,
               clients_are_processes=True,
               argv=argv, protocol=_session, tls=_wrapper_tls)
