"""One SMTP session: Postfix's command protocol on aiosmtpd's SMTP protocol.

``Session(smtpd, reader)`` is the asyncio protocol of one client connection
(an ``aiosmtpd.smtp.SMTP``); ``await session.run(writer)`` speaks SMTP with
the client until QUIT, a hang-up, a timeout or too many errors, and logs what
Postfix logs.

From aiosmtpd it takes the protocol object on the transport (which
STARTTLS moves onto the TLS transport with ``loop.start_tls``), the verb
dispatch table (``smtp_VERB`` methods), its per-connection ``Session``
(peer, ssl, authentication, PROXY data), ``AuthResult`` for the outcome of
AUTH, the PROXY protocol reader (``aiosmtpd.proxy_protocol.get_proxy``) and
the handler hooks (``handle_PROXY`` of ``handler.Smtpd`` judges a header).
It overrides:

* ``__init__``: aiosmtpd's constructor reflects over the class and the
  handler at every connection (about 80 us) and builds a StreamReader of its
  own; what it computes is cached per class, and the skeleton's reader is
  used (one protocol object per connection, no second reader);
* ``connection_made``/``connection_lost``/``eof_received``: the server
  skeleton (or smtpd -S) runs the session as its own task; the end of a
  connection reaches the command loop through the reader and is logged as
  Postfix logs it instead of cancelling the task;
* the command loop (``_handle_client``): Postfix's replies, error counting
  (smtpd_soft/hard_error_limit, error sleep), junk-command limit, the
  smtpd_forbid_unauth_pipelining check, per-command counters for the
  ``disconnect from`` line, timeouts answered ``421 4.4.2`` with Postfix's
  ``timeout after`` line (``stream.InputBuffer``: one timer per session), no
  debug logging;
* DATA: read in bulk by ``stream.InputBuffer.read_data`` (end only at
  <CR><LF>.<CR><LF>), not line by line, and passed on to cleanup in
  bounded pieces as it arrives (``handler.Message``);
* ``push`` (cost): no drain while pipelined input waits;
* every verb: Postfix's replies and checks (aiosmtpd's differ in wording);
  STARTTLS drops what was sent after it (CVE-2011-0411) and upgrades with
  ``loop.start_tls`` (the loop's public API, with smtpd_starttls_timeout as
  the handshake deadline) instead of aiosmtpd's hand-wired SSLProtocol; AUTH talks to Dovecot (``pymailsys.smtp.sasl``)
  instead of aiosmtpd's ``auth_MECH`` methods, since the mechanisms are
  Dovecot's; BDAT (which aiosmtpd lacks) streams its chunks (``chunks``);
* address parsing: ``pymailsys.smtp.path`` (Postfix's rules: ``<>`` optional
  unless strict_rfc821_envelopes, source routes dropped, quoted local parts).

What a client sends never raises out of a session, and never reaches a
header or the log raw:

* a command line ends at its first NUL (Postfix reads commands as C
  strings): ``RCPT TO:<"a<NUL>b"@x>`` is ``RCPT TO:<"a``, a bad address;
* with smtputf8_enable, a line that is not UTF-8 gets ``500 5.5.2 Error:
  bad UTF-8 syntax``; a line over line_length_limit is cut there, the rest
  skipped, with Postfix's ``request longer than`` warning;
* the HELO name is kept ``log.printable`` (control characters become
  ``?``), as Postfix's smtpd keeps it, so Received: shows ``from a?b``;
* in an envelope address, TAB, CR and LF (possible only inside quotes)
  become a space, as Postfix's address tokenizer makes them; any other
  control character makes the address bad syntax (501 5.1.7 / 5.1.3);
* an unexpected exception ends the session with ``421 4.3.0 HOST Error:
  internal error`` and one warning line naming it, never a traceback;
* a client that goes away is ``lost connection after WHERE``, however the
  loop reports a reply written too late (uvloop raises RuntimeError on a
  closed transport; asyncio drops the write): never an internal error, so
  never a postmaster notice (notify_classes ``software``).

Replies are Postfix's, byte for byte (checked against Postfix 3.7).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import socket
import ssl
import traceback
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

from aiosmtpd.proxy_protocol import AF, V2_CMD, AsyncReader, get_proxy
from aiosmtpd.smtp import SMTP, AuthResult
from aiosmtpd.smtp import Session as SMTPSession
from pymailsys.daemons.smtpd.before_tls import SocketReader
from pymailsys.daemons.smtpd.chunks import Chunks
from pymailsys.daemons.smtpd.handler import Envelope, QueueMessage, Smtpd
from pymailsys.daemons.smtpd.stream import ConnectionLost, DataTimeout, InputBuffer

from pymailsys import dsn, log, maps
from pymailsys.address import networks as netaddr
from pymailsys.ipc import flush
from pymailsys.rfc822 import envelope_address
from pymailsys.smtp import restrictions, sasl, tls_server
from pymailsys.smtp.path import extract_address, parse_path

# Postfix's command table order, for the "disconnect from" line.
COUNTED = ("helo", "ehlo", "starttls", "auth", "mail", "rcpt", "data", "bdat", "rset", "noop",
           "vrfy", "etrn", "quit", "unknown")
# What smtpd_forbid_unauth_pipelining flags when input follows it: Postfix's
# SMTPD_CMD_FLAG_LAST commands (RFC 2920's last-in-group ones that smtpd has). Not
# STARTTLS (what follows is dropped unread), not AUTH (RFC 4954 section 4: AUTH PLAIN
# with its initial response may be followed by MAIL), not ETRN or QUIT, as Postfix.
LAST_IN_GROUP = frozenset(("EHLO", "HELO", "DATA", "VRFY", "NOOP"))
COUNT_ORDER = {name: i for i, name in enumerate(COUNTED)}
_COUNT_NAMES = {name.upper(): name for name in COUNTED}  # a verb's counter
# Postfix's SMTPD_CMD_FLAG_LIMIT commands, counted toward smtpd_junk_command_limit
JUNK = frozenset(("HELO", "EHLO", "NOOP", "VRFY", "ETRN", "RSET"))
# ASCII digits only (re.ASCII), as Postfix's alldig(): not "٣"
_BDAT_ARGS = re.compile(r"(\d+)(?:[ \t]+(LAST))?", re.IGNORECASE | re.ASCII)
OFF_T_MAX = 2**63 - 1  # Postfix's off_cvt_string() refuses a number beyond an off_t
# What a client may send before STARTTLS when TLS is required (Postfix's PRE_TLS commands).
PRE_TLS = frozenset(("HELO", "EHLO", "STARTTLS", "NOOP", "QUIT"))
# Postfix's reply to a DSN parameter when smtpd_discard_ehlo_keywords has "dsn".
DSN_DISABLED = "501 5.7.1 DSN support is disabled"

Verb = Callable[["Session", str], Awaitable[bool]]

# aiosmtpd logs through the logging module; smtpd logs Postfix's lines itself.
logging.getLogger("mail.log").addHandler(logging.NullHandler())
logging.getLogger("mail.log").propagate = False


class Hangup(Exception):
    """The session ends here (421, protocol violation). Not for QUIT, the end of nearly
    every session: an exception raised through the session's coroutines costs about
    13 k instructions a frame (Python 3.11 makes a frame object of each one it passes)."""


class Session(SMTP):
    _verbs: ClassVar[dict[str, Verb]] = {}
    _hooks_by_handler: ClassVar[dict[type, dict[str, Callable[..., Any]]]] = {}
    session: SMTPSession  # from __init__ on, never None
    _writer: asyncio.StreamWriter  # from run() on, the client's (None once it ended)
    _out: asyncio.WriteTransport  # _writer's transport
    _write: Callable[[bytes], None]  # _out.write, recorded in the transcript

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        cls._verbs = _verb_table(cls)

    def __init__(self, smtpd: Smtpd, reader: asyncio.StreamReader,
                 connected: Callable[[asyncio.StreamReader, asyncio.StreamWriter],
                                     Awaitable[None]] | None = None) -> None:
        """``connected(reader, writer)``, if given, runs as a task once the connection
        is made, as with asyncio.start_server (tests); the skeleton calls run() itself."""
        # Not SMTP.__init__ (cost: it reflects over class and handler per connection):
        # the same attributes, with the verb and hook tables cached per class.
        # the reader's loop, the running one (asking for it costs a getpid() call)
        loop = reader._loop  # type: ignore[attr-defined]
        asyncio.StreamReaderProtocol.__init__(self, reader, connected, loop=loop)
        self.loop = loop
        self._reader = reader
        self.smtpd = smtpd
        self.event_handler = smtpd
        self.hostname = smtpd.myhostname
        self._handle_hooks = self._hooks_for(type(smtpd))
        self._smtp_methods = self._verbs
        self._auth_methods = {}
        self.session = SMTPSession(loop)
        self.envelope = None
        self.transport = None
        self.input = InputBuffer(reader, smtpd.timeout, loop)
        self.req = restrictions.Request(client_addr="127.0.0.1", client_port="0")
        self.env: Envelope | None = None
        self.counts: dict[str, list[int]] = {}
        self.error_count = 0
        self.junk = 0
        self.where = "CONNECT"
        self.rcpt_overshoot = 0
        self.rcpt_tried = 0
        self.bare_lf_exempt: bool | None = None
        # smtpd_delay_reject = no and smtpd_client_restrictions refused the client at
        # connect: every command but QUIT gets 503 (Postfix's state->access_denied)
        self.access_denied = False
        self.anvil_ident: str | None = None  # set: this session's events go to anvil
        self.ssl_object: ssl.SSLObject | None = None  # once TLS is on
        self.chunks: Chunks | None = None  # BDAT: the message in progress
        self.transcript = smtpd.notices.start()  # notify_classes: the postmaster's copy
        self.proxied = False  # the PROXY header was read before the TLS handshake (smtps)
        self.client = self.req.client  # NAME[ADDR] for the log, once the client is named

    @classmethod
    def _hooks_for(cls, handler: type) -> dict[str, Callable[..., Any]]:
        hooks = cls._hooks_by_handler.get(handler)
        if hooks is None:
            hooks = cls._hooks_by_handler[handler] = {
                name[len("handle_"):]: getattr(handler, name)
                for name in dir(handler) if name.startswith("handle_")}
        return hooks

    async def _call_handler_hook(self, command: str, *args: Any) -> Any:
        # Not SMTP's (cost): the hooks are cached per handler class, so they are unbound.
        hook = self._handle_hooks.get(command)
        if hook is None:
            return None
        return await hook(self.event_handler, self, self.session, self.envelope, *args)

    # --- the connection ----------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Not SMTP's: the skeleton runs the session (run()) as a task of its own.
        asyncio.StreamReaderProtocol.connection_made(self, transport)
        self.transport = transport
        self.session.peer = transport.get_extra_info("peername")

    def connection_lost(self, exc: Exception | None) -> None:
        # Not SMTP's: the command loop sees the end on its reader and logs it as Postfix.
        asyncio.StreamReaderProtocol.connection_lost(self, exc)
        if self.input.attached:
            self.input.feed_eof(exc)
        self.transport = None

    def eof_received(self) -> bool | None:
        # Not SMTP's (which cancels the command loop): the reader sees the end of input.
        if self.input.attached:
            self.input.feed_eof()
        return asyncio.StreamReaderProtocol.eof_received(self)

    def data_received(self, data: bytes) -> None:
        # Once the session runs, input goes to its buffer, not through the StreamReader.
        if self.input.attached:
            self.input.feed(data)
        else:
            asyncio.StreamReaderProtocol.data_received(self, data)

    # --- output ------------------------------------------------------------------
    async def push(self, status: str | bytes) -> None:  # type: ignore[override]
        # Not SMTP's (cost): no drain while pipelined input waits; UTF-8 kept as given.
        # _must_drain, inline: a call fewer for each reply
        data = status if isinstance(status, bytes) else status.encode("utf-8", "surrogateescape")
        self._write(data + b"\r\n")
        input_ = self.input
        if len(input_.buf) <= input_.pos:  # no pipelined input waits
            out = self._out
            if out.is_closing() or out.get_write_buffer_size():
                await self._writer.drain()

    def _must_drain(self) -> bool:
        """Whether to await StreamWriter.drain() after a reply: not while pipelined
        input waits; else only when it has something to do (it waits only while the
        transport's buffer is over its high-water mark, and raises only once the
        connection is closing): with the reply already in the kernel, no."""
        if len(self.input.buf) > self.input.pos:  # input.pending(), inline
            return False
        out = self._out
        return out.is_closing() or bool(out.get_write_buffer_size())

    async def reply_error(self, text: str) -> bool:
        """An error reply: counted, and delayed once the soft limit is reached."""
        self.error_count += 1
        if self.error_count >= self.smtpd.soft_limit and self.smtpd.error_sleep:
            await asyncio.sleep(self.smtpd.error_sleep)
        await self.push(text)
        return False

    # --- the session --------------------------------------------------------------
    async def run(self, writer: asyncio.StreamWriter) -> None:
        """The whole session, on ``writer`` (whose transport carries this protocol, or
        for smtpd -S a pipe of its own)."""
        smtpd = self.smtpd
        self._writer = writer
        self._out = writer.transport
        self._write = self.transcript.watch(writer)  # writer.transport.write, recorded
        if not self.proxied:
            out = self._out  # StreamWriter.get_extra_info is the transport's
            self._addresses(out.get_extra_info("peername"), out.get_extra_info("sockname"))
            if smtpd.proxy_timeout and not await self._upstream_proxy(self._reader):
                writer.close()
                return
        self.input.attach(self.transport)
        if not smtpd.name_known_client(self.req):  # a coroutine only for a DNS lookup
            await smtpd.name_client(self.req)
        self.client = self.req.client
        try:
            self.anvil_ident = smtpd.limits.ident(self.req.client_addr, self.req.client_name)
            if self.anvil_ident is None and not smtpd.tls.wrappermode and smtpd.delay_reject:
                # Nothing can refuse the client now: the banner first, so that it goes on
                # while the connection is logged (nothing of this session logs in between;
                # a client already gone is still logged as connected, then as lost).
                try:
                    self._write(smtpd.banner)
                finally:
                    log.info(f"connect from {self.client}")
            else:
                log.info(f"connect from {self.client}")
                if self.anvil_ident is not None:
                    refusal = await smtpd.limits.connect(self.anvil_ident, self.req.client_addr,
                                                         self.client)
                    if refusal is not None:
                        await self.push(refusal)
                        raise Hangup
                if smtpd.tls.wrappermode:  # the skeleton made the handshake (server.run tls=)
                    self._tls_established(writer.get_extra_info("ssl_object"))
                    await self._require_client_cert()
                self._write(await self._greeting())
            await self._handle_client()
        except ConnectionLost as e:
            self._lost_connection(e.bytes_read)
        except (ConnectionError, asyncio.IncompleteReadError):
            self._lost_connection()
        except TimeoutError as e:
            self.transcript.reason = "timeout"
            if isinstance(e, DataTimeout) and self.where == "DATA":
                log.info(f"timeout after DATA ({e.bytes_read} bytes) from {self.client}")
            else:
                log.info(f"timeout after {self.where} from {self.client}")
            try:
                self._write(
                    f"421 4.4.2 {smtpd.myhostname} Error: timeout exceeded\r\n".encode())
            except (ConnectionError, RuntimeError):
                pass
        except Hangup:
            pass
        except Exception as e:  # a bug must not cost more than this session
            if isinstance(e, RuntimeError) and self._writer.transport.is_closing():
                self._lost_connection()  # uvloop: a reply written after the client went away
            else:
                self._internal_error(e)
        finally:
            self.input.close()
            log.info(f"disconnect from {self.client}{self._stats()}")
            if self.transcript.due():  # a coroutine only for a notice
                await self.transcript.finish(self.client)
            if self.anvil_ident is not None:
                await smtpd.limits.disconnect(self.anvil_ident)
            try:
                if not self._writer.is_closing():
                    self._writer.close()
            except (ConnectionError, RuntimeError):
                pass
            self._release()

    def _release(self) -> None:
        """After the session: drop the references that tie its objects in cycles, so that
        reference counting frees them once the connection is gone, and the cyclic
        collector, whose passes cost every session, has nothing of it to find."""
        self.transcript.unwatch(self._writer)
        self._writer = self._out = self._write = None  # type: ignore[assignment]

    def _addresses(self, peer: object, local: object) -> None:
        if isinstance(peer, tuple) and len(peer) >= 2:
            self.req.client_addr, self.req.client_port = str(peer[0]), str(peer[1])
        else:
            self.req.client_addr, self.req.client_port = "127.0.0.1", "0"
        if isinstance(local, tuple) and len(local) >= 2:
            self.req.server_addr, self.req.server_port = str(local[0]), str(local[1])

    # --- smtps: what the server skeleton asks before and after its TLS handshake ----
    async def before_tls(self, sock: socket.socket) -> bool:
        """smtps behind HAProxy: the PROXY header comes before the TLS handshake, read
        exactly off the socket; False: there was none in time (the connection ends)."""
        if not self.smtpd.proxy_timeout:
            return True
        self._addresses(sock.getpeername(), sock.getsockname())
        reader = SocketReader(sock, self.loop.time() + self.smtpd.proxy_timeout)
        self.proxied = await self._upstream_proxy(reader)
        return self.proxied

    async def tls_failed(self, peer: object, local: object, error: Exception) -> None:
        """A failed smtps handshake, logged as Postfix's smtpd logs it."""
        if not self.proxied:
            self._addresses(peer, local)
        await self.smtpd.name_client(self.req)
        self.client = self.req.client
        log.info(f"connect from {self.client}")
        tls_server.log_accept_error(self.client, error)
        log.info(f"lost connection after CONNECT from {self.client}")
        log.info(f"disconnect from {self.client} commands=0/0")

    async def _upstream_proxy(self, reader: AsyncReader) -> bool:
        """smtpd_upstream_proxy_protocol = haproxy: the client is the one the PROXY header
        (v1 or v2, read with aiosmtpd's reader) names; False when there is none in time."""
        try:
            async with asyncio.timeout(self.smtpd.proxy_timeout):
                data = await get_proxy(reader)
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError) as e:
            log.warning(f"haproxy read: {'timeout error' if isinstance(e, TimeoutError) else 'lost connection'}")
            return False
        if not data.valid or not await self._call_handler_hook("PROXY", data):
            log.warning(f"haproxy read: {data.error or 'unsupported address family'}")
            return False
        self.session.proxy_data = data
        if data.command != V2_CMD.LOCAL and data.family in (AF.INET, AF.INET6):
            # as Postfix's haproxy_srvr: an IPv4 client in IPv6 form (::ffff:a.b.c.d, what
            # HAProxy on a dual-stack socket reports) is the IPv4 client a.b.c.d, for the
            # log and for every table keyed by its address
            self.req.client_addr = _plain_address(data.src_addr)
            self.req.client_port = str(data.src_port)
            self.req.server_addr = _plain_address(data.dst_addr)
            self.req.server_port = str(data.dst_port)
        return True

    def _lost_connection(self, data_bytes: int | None = None) -> None:
        self.transcript.reason = "lost connection"
        if self.where == "DATA" and data_bytes is not None:
            log.info(f"lost connection after DATA ({data_bytes} bytes) from {self.client}")
        else:
            log.info(f"lost connection after {self.where} from {self.client}")

    def _internal_error(self, e: Exception) -> None:
        frame = traceback.extract_tb(e.__traceback__)[-1]
        log.warning(f"internal error after {self.where} from {self.client}: "
                    f"{type(e).__name__}: {e} ({os.path.basename(frame.filename)}, "
                    f"line {frame.lineno})")
        try:
            self._write(
                f"421 4.3.0 {self.smtpd.myhostname} Error: internal error\r\n".encode())
        except (ConnectionError, RuntimeError):
            pass

    def _stats(self) -> str:
        parts = []
        ok_all = total_all = 0
        counts = self.counts
        for name in sorted(counts, key=COUNT_ORDER.__getitem__):
            ok, total = counts[name]
            ok_all += ok
            total_all += total
            parts.append(f" {name}={ok}" if ok == total else f" {name}={ok}/{total}")
        parts.append(f" commands={ok_all}" if ok_all == total_all and total_all
                     else f" commands={ok_all}/{total_all}")
        return "".join(parts)

    def _count(self, name: str, ok: bool) -> None:
        c = self.counts.get(name)
        if c is None:
            c = self.counts[name] = [0, 0]
        c[1] += 1
        if ok:
            c[0] += 1

    async def _handle_client(self) -> None:
        # Not SMTP's: Postfix's replies, error counting, pipelining check and timeouts.
        smtpd = self.smtpd
        verbs = self._verbs
        input_ = self.input
        counts = self.counts
        while True:
            if self.error_count >= smtpd.hard_limit:
                log.info(f"too many errors after {self.where} from {self.client}")
                await self.push(f"421 4.7.0 {smtpd.myhostname} Error: too many errors")
                raise Hangup
            line = await input_.readline(smtpd.line_limit)
            self.transcript.query(line)
            if self.input.bare_lf and smtpd.bare_newline == "reject" and not self._bare_lf_exempt():
                log.info(f"NOQUEUE: reject: {self.where} from {self.client}: bare <LF> received; "
                         f"{self._proto_helo()}")
                await self.push(f"550 5.5.2 {smtpd.myhostname} Error: bare <LF> received")
                raise Hangup
            if len(line) >= smtpd.line_limit:
                log.warning(f"{self.client}: request longer than {smtpd.line_limit}: "
                            f"{line[:30].decode('utf-8', 'replace')}...")
            nul = line.find(b"\0")
            if nul >= 0:
                line = line[:nul]
            if smtpd.smtputf8 and not line.isascii() and not _is_utf8(line):
                self.where = "UNKNOWN"
                self._count("unknown", False)
                await self.reply_error("500 5.5.2 Error: bad UTF-8 syntax")
                continue
            words = line.split(None, 1)
            if not words:
                await self.reply_error("500 5.5.2 Error: bad syntax")
                continue
            verb = words[0].upper().decode("ascii", "replace")
            arg_b = words[1] if len(words) > 1 else b""
            method = verbs.get(verb)
            if method is None and self._forbidden(words[0]):
                # an HTTP request or mail content sent as commands (a browser made to post
                # to port 25): the session ends here, as in Postfix
                log.warning(f"non-SMTP command from {self.client}: {log.escape(line)[:100]}")
                self.where = "UNKNOWN"
                self._count("unknown", False)
                await self.push("221 2.7.0 Error: I can break rules, too. Goodbye.")
                raise Hangup
            if self.access_denied and verb != "QUIT":
                self.where = verb if method is not None else "UNKNOWN"
                self._count(verb.lower() if method is not None else "unknown", False)
                await self.reply_error(f"503 5.7.0 Error: access denied for {self.client}")
                continue
            if method is None:
                self.where = "UNKNOWN"
                self._count("unknown", False)
                await self.reply_error("500 5.5.2 Error: command not recognized")
                continue
            # not in stand-alone mode (smtpd -S, sendmail -bs), as Postfix: a program writes
            # its whole conversation to sendmail's standard input at once
            if (smtpd.forbid_unauth_pipelining and not smtpd.stand_alone
                    and len(input_.buf) > input_.pos and verb != "BDAT"  # input_.pending()
                    and (not self.session.extended_smtp or verb in LAST_IN_GROUP)):
                nxt = self.input.peek_line().decode("utf-8", "replace")
                log.info(f"improper command pipelining after {verb} from {self.client}: {nxt}")
                self.where = verb
                await self.push("554 5.5.0 Error: SMTP protocol synchronization")
                raise Hangup
            if smtpd.tls_required and self.ssl_object is None and verb not in PRE_TLS:
                self._count(verb.lower(), False)
                await self.reply_error("530 5.7.0 Must issue a STARTTLS command first")
                continue
            if verb in JUNK:  # as Postfix: an error once more than the limit went before
                if self.junk > smtpd.junk_limit:
                    self.error_count += 1
                self.junk += 1
            self.where = verb
            arg = arg_b.decode("utf-8", "surrogateescape").strip()
            ok = False
            try:
                ok = await method(self, arg)
            finally:
                if verb != "QUIT":  # _count, inline
                    name = _COUNT_NAMES[verb]
                    c = counts.get(name)
                    if c is None:
                        c = counts[name] = [0, 0]
                    c[1] += 1
                    if ok:
                        c[0] += 1
            if verb == "QUIT":  # answered: the session ends here, by a return, not Hangup
                return

    def _forbidden(self, word: bytes) -> bool:
        """Whether an unknown command ends the session (Postfix's is_header() or
        smtpd_forbidden_commands; a table that cannot answer forbids nothing, as Postfix)."""
        colon = word.find(b":")
        if colon > 0 and all(33 <= c <= 126 for c in word[:colon]):
            return True  # a header name: mail content where a command should be
        try:
            return self.smtpd.forbidden_commands.match(word.decode("utf-8", "replace"))
        except maps.TableError as e:
            log.warning(f"smtpd_forbidden_commands: {e}")
            return False

    async def _greeting(self) -> bytes:
        """The banner; with smtpd_delay_reject = no, smtpd_client_restrictions run now,
        and a refusal is the greeting instead (as Postfix: not with -S)."""
        smtpd = self.smtpd
        if smtpd.delay_reject or smtpd.stand_alone:
            return smtpd.banner
        result = await smtpd.engine.check_client(self.req)
        if result is None or result.reply is None:
            return smtpd.banner
        self._log_reject("CONNECT", str(result.reply))
        self.access_denied = True
        self.error_count += 1
        return f"{result.reply}\r\n".encode("utf-8", "surrogateescape")

    def _bare_lf_exempt(self) -> bool:
        if self.bare_lf_exempt is None:
            try:
                self.bare_lf_exempt = self.smtpd.bare_newline_exclusions.match(
                    self.req.client_addr, self.req.client_name)
            except Exception as e:  # a table error: do not exempt
                log.warning(f"smtpd_forbid_bare_newline_exclusions: {e}")
                self.bare_lf_exempt = False
        return self.bare_lf_exempt

    def _proto_helo(self) -> str:
        text = f"proto={self.req.protocol}"
        if self.req.helo:
            text += f" helo=<{self.req.helo}>"
        return text

    def _log_reject(self, stage: str, reply: str, rcpt: str | None = None) -> None:
        self.transcript.rejected()
        env = f"from=<{log.address(self.req.sender)}> " if self.req.sender is not None else ""
        to = f"to=<{log.address(rcpt)}> " if rcpt is not None else ""
        log.info(f"NOQUEUE: reject: {stage} from {self.client}: {reply}; {env}{to}"
                 f"{self._proto_helo()}")

    def _sasl_log(self) -> str:
        """The SASL part of the ``client=`` line (smtpd_sasl_mail_log), each item when set."""
        req = self.req
        if not (req.sasl_method or req.sasl_username or req.sasl_sender):
            return ""  # the common case, without a generator's frame and a join
        return "".join(f", {name}={value}" for name, value in (
            ("sasl_method", req.sasl_method), ("sasl_username", req.sasl_username),
            ("sasl_sender", req.sasl_sender)) if value)

    def _reset(self) -> None:
        if self.chunks is not None:
            self.chunks.abort()
            self.chunks = None
        self.env = None
        self.req.actions.reset()
        self.req.size = self.req.recipient_count = 0
        self.req.sender = None
        self.req.sasl_sender = ""
        self.req.recipient = ""
        self.rcpt_overshoot = 0
        self.rcpt_tried = 0

    # --- commands --------------------------------------------------------------
    async def smtp_HELO(self, arg: str) -> bool:  # type: ignore[override]
        # Not SMTP's: Postfix's replies and checks.
        return await self._helo(arg, esmtp=False)

    async def smtp_EHLO(self, arg: str) -> bool:  # type: ignore[override]
        # Not SMTP's: Postfix's replies and checks.
        return await self._helo(arg, esmtp=True)

    async def _helo(self, arg: str, esmtp: bool) -> bool:
        if not arg:
            return await self.reply_error(f"501 Syntax: {'EHLO' if esmtp else 'HELO'} hostname")
        self._reset()
        self.req.helo = log.printable(arg)
        self.session.extended_smtp = esmtp
        self.session.host_name = self.req.helo
        self.req.protocol = "ESMTP" if esmtp else "SMTP"
        if not self.smtpd.delay_reject:
            result = await self.smtpd.engine.check_helo(self.req)
            if result is not None and result.reply is not None:
                self.req.helo = ""
                self._log_reject("EHLO" if esmtp else "HELO", str(result.reply))
                return await self.reply_error(str(result.reply))
        if esmtp:
            smtpd = self.smtpd
            if smtpd.discard_ehlo_notice:
                log.info(smtpd.discard_ehlo_notice)
            if smtpd.sasl is not None:
                self._write(smtpd.ehlo_reply_for(
                    self.ssl_object is None and smtpd.starttls_offered,
                    await self._auth_mechanisms(ehlo=True) or []))
            else:
                self._write(smtpd.ehlo_reply if self.ssl_object is None
                                   else smtpd.ehlo_reply_tls)
            if self._must_drain():
                await self._writer.drain()
        else:
            await self.push(f"250 {self.smtpd.myhostname}")
        return True

    async def smtp_MAIL(self, arg: str) -> bool:  # type: ignore[override]
        # Not SMTP's: Postfix's replies and checks.
        smtpd = self.smtpd
        if smtpd.helo_required and not self.req.helo:
            return await self.reply_error("503 5.5.1 Error: send HELO/EHLO first")
        if self.env is not None:
            return await self.reply_error("503 5.5.1 Error: nested MAIL command")
        if self.chunks is not None:  # refused chunks are skipped up to BDAT LAST or RSET
            return await self.reply_error("503 5.5.1 Error: MAIL after BDAT")
        if self.anvil_ident is not None:  # else not counted: no rate to ask anvil for
            refusal = await smtpd.limits.message(self.anvil_ident, self.req.client_addr,
                                                 self.client)
            if refusal is not None:
                return await self.reply_error(refusal)
        try:
            parsed = parse_path(arg, "FROM:", smtpd.strict_rfc821)
        except ValueError:
            return await self.reply_error("501 5.5.4 Syntax: MAIL FROM:<address>")
        if parsed is None:
            if not arg[5:].strip():
                return await self.reply_error("501 5.5.4 Syntax: MAIL FROM:<address>")
            return await self.reply_error("501 5.1.7 Bad sender address syntax")
        given, sender_given, params = parsed
        if sender_given is None:  # two addresses, or not strict_rfc821_envelopes
            self._illegal_syntax(given)
            return await self.reply_error("501 5.1.7 Bad sender address syntax")
        sender = envelope_address(sender_given)
        if sender is None or self._bad_syntax(sender, f"<{given}>", any(
                p.upper() == "SMTPUTF8" for p in params) and smtpd.smtputf8
                and "smtputf8" not in smtpd.discard_ehlo):
            return await self.reply_error("501 5.1.7 Bad sender address syntax")
        env = Envelope(sender=sender)
        sasl_sender: str | None = None  # AUTH=, as Postfix keeps it: printable, not decoded
        for param in params:
            name, eq, value = param.partition("=")
            uname = name.upper()
            if uname == "SIZE" and eq:
                # as Postfix's alldig() and off_cvt_string(): ASCII digits only (str.isdigit
                # takes "²", which int() refuses), and no more than an off_t holds
                if not value or not value.isascii() or not value.isdigit():
                    return await self.reply_error("501 5.5.4 Bad message size syntax")
                if len(value.lstrip("0")) > len(str(OFF_T_MAX)) or int(value) > OFF_T_MAX:
                    return await self.reply_error(
                        "552 5.3.4 Message size exceeds file system imposed limit")
                env.size = int(value)
            elif uname == "BODY" and value.upper() in ("7BIT", "8BITMIME"):
                env.body = value.lower()
            elif (uname == "SMTPUTF8" and not eq and smtpd.smtputf8
                  and "smtputf8" not in smtpd.discard_ehlo):
                env.smtputf8 = True
            elif uname in ("RET", "ENVID") and eq:  # as Postfix: "RET" alone is unsupported
                refusal = self._mail_dsn_param(env, uname, value)
                if refusal:
                    return await self.reply_error(refusal)
            elif uname == "AUTH" and eq:
                # as Postfix's smtpd_sasl_mail_opt(), SASL on or off: logged and queued
                # (sasl_sender=); AUTH=<> sets nothing, so it may come again
                if sasl_sender is not None:
                    return await self.reply_error("503 5.5.4 Error: multiple AUTH= options")
                if value != "<>":
                    sasl_sender = log.printable(value)
            else:
                return await self.reply_error(f"555 5.5.4 Unsupported option: {param}")
        if smtpd.size_limit and env.size > smtpd.size_limit:
            # a policy reject, as Postfix's smtpd_check_size: logged with the sender
            reply = "552 5.3.4 Message size exceeds fixed limit"
            self.req.sender = sender
            self._log_reject("MAIL", reply)
            self.req.sender = None
            return await self.reply_error(reply)
        free = None if smtpd.stand_alone else smtpd.queue_space_short()
        if free is not None:  # as Postfix's smtpd_check_queue: logged without from=<>
            reply = "452 4.3.1 Insufficient system storage"
            self._log_reject("MAIL", reply)
            log.warning(f"not enough free space in mail queue: {free} bytes < "
                        "1.5*message size limit")
            return await self.reply_error(reply)
        self.req.sender = sender
        self.req.sasl_sender = sasl_sender or ""
        self.req.size = env.size
        if not smtpd.delay_reject:  # the client list ran at connect
            result = await smtpd.engine.check_sender(self.req)
            if result is not None and result.reply is not None:
                self._log_reject("MAIL", str(result.reply))
                self.req.sender = None
                return await self.reply_error(str(result.reply))
        try:  # local_header_rewrite_clients, at MAIL FROM as Postfix's smtpd_check_rewrite
            env.rewrite_context = await smtpd.rewrite_context(self.req)
        except maps.TableError as e:
            log.warning(f"local_header_rewrite_clients: {e}")
            self.req.sender = None  # Postfix logs this one without from=<>
            self._log_reject("MAIL", "451 4.3.0 Temporary lookup error")
            return await self.reply_error("451 4.3.0 Temporary lookup error")
        self.env = env
        await self.push("250 2.1.0 Ok")
        return True

    def _bad_syntax(self, address: str, given: str, smtputf8: bool) -> bool:
        """An address whose domain is no domain (Postfix's smtpd_check_addr, not in
        sendmail -bs mode): warned about with ``given``, the client's text, as Postfix."""
        if self.smtpd.stand_alone or not self.smtpd.engine.bad_syntax(address, smtputf8):
            return False
        self._illegal_syntax(given)
        return True

    def _illegal_syntax(self, given: str) -> None:
        """Postfix's extract_addr() warning about the address token the client sent."""
        log.warning(f"Illegal address syntax from {self.client} in {self.where} command: "
                    f"{log.printable(given)}")

    def _mail_dsn_param(self, env: Envelope, name: str, value: str) -> str:
        """Take MAIL's RET or ENVID (ENVID kept decoded); the refusal, or ""."""
        if "dsn" in self.smtpd.discard_ehlo:
            return DSN_DISABLED
        if (env.ret if name == "RET" else env.envid):  # twice: as Postfix, bad syntax
            return f"501 5.5.4 Bad {name} parameter syntax"
        try:
            if name == "RET":
                env.ret = dsn.ret_name(dsn.parse_ret(value))
            else:
                env.envid = dsn.parse_envid(value)
        except ValueError:
            return f"501 5.5.4 Bad {name} parameter syntax"
        return ""

    async def smtp_RCPT(self, arg: str) -> bool:  # type: ignore[override]
        # Not SMTP's: Postfix's replies and checks.
        smtpd = self.smtpd
        env = self.env
        if env is None:
            return await self.reply_error("503 5.5.1 Error: need MAIL command")
        if self.chunks is not None:
            return await self.reply_error("503 5.5.1 Error: RCPT after BDAT")
        if self.anvil_ident is not None:  # else not counted: no rate to ask anvil for
            refusal = await smtpd.limits.recipient(self.anvil_ident, self.req.client_addr,
                                                   self.client)
            if refusal is not None:
                return await self.reply_error(refusal)
        try:
            parsed = parse_path(arg, "TO:", smtpd.strict_rfc821)
        except ValueError:
            return await self.reply_error("501 5.5.4 Syntax: RCPT TO:<address>")
        if parsed is None:
            if not arg[3:].strip():
                return await self.reply_error("501 5.5.4 Syntax: RCPT TO:<address>")
            return await self.reply_error("501 5.1.3 Bad recipient address syntax")
        given, rcpt_given, params = parsed
        if not rcpt_given:  # bad syntax (the token as sent), or <>
            self._illegal_syntax(given if rcpt_given is None else f"<{given}>")
            return await self.reply_error("501 5.1.3 Bad recipient address syntax")
        rcpt = envelope_address(rcpt_given)
        if rcpt is None or self._bad_syntax(rcpt, f"<{given}>", env.smtputf8):
            return await self.reply_error("501 5.1.3 Bad recipient address syntax")
        notify, orcpt = 0, ""
        for param in params:
            name, eq, value = param.partition("=")
            uname = name.upper()
            if uname not in ("NOTIFY", "ORCPT") or not eq:
                return await self.reply_error(f"555 5.5.4 Unsupported option: {param}")
            if "dsn" in smtpd.discard_ehlo:
                return await self.reply_error(DSN_DISABLED)
            try:
                if uname == "NOTIFY":
                    if notify:
                        raise ValueError("twice")
                    notify = dsn.parse_notify(value)
                else:
                    if orcpt:
                        raise ValueError("twice")
                    orcpt = dsn.parse_orcpt(value)
            except ValueError:
                return await self.reply_error(f"501 5.5.4 Error: Bad {uname} parameter syntax")
        if smtpd.rcpt_limit and len(env.recipients) >= smtpd.rcpt_limit:
            self.rcpt_overshoot += 1
            if self.rcpt_overshoot <= smtpd.rcpt_overshoot:
                await self.push("452 4.5.3 Error: too many recipients")
                return True
            return await self.reply_error("452 4.5.3 Error: too many recipients")
        self.rcpt_tried += 1
        self.req.recipient = rcpt
        result = await smtpd.engine.check_rcpt(self.req)
        if result is not None and result.reply is not None:
            reply = str(result.reply)
            self._log_reject("RCPT", reply, rcpt)
            return await self.reply_error(reply)
        env.recipients.append(rcpt)
        # the original recipient in internal form, as Postfix's smtpd hands it
        # to cleanup (orig_to=<…> and X-Original-To quote it again)
        env.orig_recipients.append(rcpt)
        env.notifies.append(notify)
        env.dsn_orcpts.append(orcpt)
        await self.push("250 2.1.5 Ok")
        return True

    async def smtp_DATA(self, arg: str) -> bool:  # type: ignore[override]
        # Not SMTP's: Postfix's replies and checks.
        smtpd = self.smtpd
        env = self.env
        if env is None or not env.recipients:
            if env is None:
                return await self.reply_error("503 5.5.1 Error: need RCPT command")
            return await self.reply_error("554 5.5.1 Error: no valid recipients")
        if self.chunks is not None:
            return await self.reply_error("503 5.5.1 Error: DATA after BDAT")
        if arg:
            return await self.reply_error("501 5.5.4 Syntax: DATA")
        self.req.recipient_count = len(env.recipients)
        if smtpd.data_checked:
            result = await smtpd.engine.check_data(self.req)
            if result is not None and result.reply is not None:
                self._log_reject("DATA", str(result.reply))
                return await self.reply_error(str(result.reply))
        self._received_header_parts(env)
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        message = smtpd.new_message(env, self.req, env.rewrite_context)
        try:
            data = await self.input.read_data(
                smtpd.size_limit, message.feed,
                find_bare_lf=smtpd.bare_newline == "reject" and not self._bare_lf_exempt())
        except BaseException:
            message.abort()
            raise
        self.where = "END-OF-MESSAGE"
        if data.too_big:
            message.abort()
            self._reset()
            return await self.reply_error("552 5.3.4 Message size exceeds fixed limit")
        return await self._end_of_message(env, message, data.content, data.bare_lf,
                                          received=data.size)

    async def _end_of_message(self, env: Envelope, message: QueueMessage, rest: bytes,
                              bare_lf: bool, size: int | None = None,
                              received: int = 0) -> bool:
        """The checks at the end of a message, then the queue's reply (DATA, BDAT LAST);
        with ``size`` (BDAT), Postfix's ``Ok: N bytes queued as ID``. The policy
        request's size is now what was received (Postfix's act_size)."""
        smtpd = self.smtpd
        self.req.size = size if size is not None else received
        if bare_lf and smtpd.bare_newline == "reject" and not self._bare_lf_exempt():
            message.abort()
            rcpts = env.recipients
            self._log_reject("END-OF-MESSAGE", "bare <LF> received",
                             rcpts[0] if len(rcpts) == 1 else None)
            self._reset()
            return await self.reply_error(
                f"550 5.5.2 {smtpd.myhostname} Error: bare <LF> received")
        if smtpd.end_of_data_checked:
            result = await smtpd.engine.check_end_of_data(self.req)
            if result is not None and result.reply is not None:
                message.abort()
                self._log_reject("END-OF-MESSAGE", str(result.reply))
                self._reset()
                return await self.reply_error(str(result.reply))
        reply, queue_id = await message.finish(rest)
        sasl_log = self._sasl_log()
        self._reset()
        if not queue_id:
            return await self.reply_error(reply)
        self.error_count = 0
        self.junk = 0
        if size is not None:
            reply = f"250 2.0.0 Ok: {size} bytes queued as {queue_id}"
        # the client's wait ends before the log line is written
        self._write(reply.encode("utf-8", "surrogateescape") + b"\r\n")
        log.info(f"{queue_id}: client={self.client}{sasl_log}")
        if self._must_drain():
            await self._writer.drain()
        return True

    async def smtp_BDAT(self, arg: str) -> bool:
        """RFC 3030 as Postfix: BDAT count [LAST]; the chunk follows the command line."""
        smtpd = self.smtpd
        if "chunking" in smtpd.discard_ehlo:
            await self.reply_error("521 5.5.1 Error: command not implemented")
            raise Hangup
        m = _BDAT_ARGS.fullmatch(arg)
        if m is None or len(m.group(1).lstrip("0")) > len(str(OFF_T_MAX)) \
                or int(m.group(1)) > OFF_T_MAX:
            log.warning(f"NOQUEUE: malformed BDAT command syntax from {self.client}: "
                        f"{log.printable(f'BDAT {arg}'[:100])}")
            await self.reply_error("521 5.5.4 Syntax: BDAT count [LAST]")
            raise Hangup
        count, last = int(m.group(1)), m.group(2) is not None
        chunks = self.chunks
        env = self.env
        error = None
        if count == 0 and not last:
            log.warning(f"NOQUEUE: null BDAT request from {self.client}")
            error = "551 5.7.1 Null BDAT request"
        elif chunks is not None and chunks.failed:
            error = f"551 5.0.0 Discarded {count} bytes after earlier error"
        elif env is None:
            error = "503 5.5.1 Error: need RCPT command"
        elif not env.recipients:
            error = "554 5.5.1 Error: no valid recipients"
        elif chunks is None:
            self.req.recipient_count = len(env.recipients)
            result = await smtpd.engine.check_data(self.req)
            if result is not None and result.reply is not None:
                self._log_reject("DATA", str(result.reply))
                error = str(result.reply)
            else:
                self._received_header_parts(env)
                chunks = self.chunks = Chunks(smtpd.new_message(
                    env, self.req, env.rewrite_context), smtpd.size_limit)
        if error is None and chunks is not None and smtpd.size_limit \
                and chunks.size > smtpd.size_limit - count:  # before reading it, as Postfix
            log.warning(f"NOQUEUE: BDAT request from {self.client} exceeds message size limit")
            error = "552 5.3.4 Chunk exceeds message size limit"
        if error is not None or chunks is None:
            await self.input.read_exact(count, None)
            self._chunk_failed(last)
            return await self.reply_error(error or "451 4.3.0 Error: internal error")
        try:
            await self.input.read_exact(count, chunks.feed)
        except BaseException:
            self._reset()
            raise
        if chunks.too_big:  # bare <LF>s count 2: the chunk's bytes can still go over
            self._chunk_failed(last)
            return await self.reply_error("552 5.3.4 Chunk exceeds message size limit")
        if not last:
            await self.push(f"250 2.0.0 Ok: {count} bytes")  # this chunk's, as Postfix
            return True
        self.where = "END-OF-MESSAGE"
        assert env is not None and chunks.message is not None
        rest, size, bare_lf = chunks.end()
        self.chunks = None  # the message is the end of message's business now
        return await self._end_of_message(env, chunks.message, rest, bare_lf, size)

    def _chunk_failed(self, last: bool) -> None:
        """After a refused chunk, later ones are dropped up to LAST, which ends the mail
        transaction."""
        if last:
            self._reset()
            return
        if self.chunks is None:
            self.chunks = Chunks(None, 0)
        self.chunks.fail()

    def _received_header_parts(self, env: Envelope) -> None:
        """Received:'s "with" (RFC 3848: S for TLS, A for AUTH, on ESMTP only) and comments."""
        proto = self.req.protocol
        with_ = "UTF8SMTP" if env.smtputf8 else proto
        if proto == "ESMTP":
            with_ += ("S" if self.ssl_object is not None else "") + \
                ("A" if self.req.sasl_username else "")
        env.received_with = with_
        comments = []
        if self.req.tls is not None and self.smtpd.tls.received_header:
            comments.append(tls_server.received_comment(self.req.tls))
        if self.req.sasl_username and self.smtpd.sasl_authenticated_header:
            comments.append(f"(Authenticated sender: {_comment_text(self.req.sasl_username)})")
        env.received_comment = "\n".join(comments)

    async def smtp_RSET(self, arg: str) -> bool:  # type: ignore[override]
        # Not SMTP's: Postfix's replies and checks.
        if arg:
            return await self.reply_error("501 5.5.4 Syntax: RSET")
        self._reset()
        await self.push("250 2.0.0 Ok")
        return True

    async def smtp_NOOP(self, arg: str) -> bool:  # type: ignore[override]
        # Not SMTP's: Postfix's replies and checks.
        await self.push("250 2.0.0 Ok")
        return True

    async def smtp_QUIT(self, arg: str) -> bool:  # type: ignore[override]
        # Not SMTP's: Postfix's replies and checks.
        self._count("quit", True)
        self._write(b"221 2.0.0 Bye\r\n")
        if self._must_drain():  # else nothing for drain() to do (close() sends the rest)
            try:
                await self._writer.drain()
            except ConnectionError:
                pass
        return True  # the session ends (_handle_client)

    async def smtp_VRFY(self, arg: str) -> bool:  # type: ignore[override]
        # Not SMTP's: Postfix's replies and checks.
        if self.smtpd.vrfy_disabled:
            return await self.reply_error("502 5.5.1 VRFY command is disabled")
        smtputf8 = False  # RFC 6531's VRFY address SMTPUTF8, as Postfix takes it
        words = arg.rsplit(None, 1)
        if (self.smtpd.smtputf8 and "smtputf8" not in self.smtpd.discard_ehlo and words
                and words[-1].upper() == "SMTPUTF8"):
            arg, smtputf8 = arg[:len(arg) - len(words[-1])].rstrip(), True
        if not arg:
            return await self.reply_error(
                f"501 5.5.4 Syntax: VRFY address{' [SMTPUTF8]' if self.smtpd.smtputf8 else ''}")
        refusal = await self.smtpd.limits.recipient(self.anvil_ident, self.req.client_addr,
                                                    self.client)
        if refusal is not None:
            return await self.reply_error(refusal)
        addr = extract_address(arg, False)
        if addr:
            addr = envelope_address(addr)
        if not addr or self._bad_syntax(addr, arg, smtputf8):
            return await self.reply_error("501 5.1.3 Bad recipient address syntax")
        if not self.smtpd.stand_alone:
            # Postfix's smtpd_check_rcpt, every list RCPT runs: a client refused there
            # learns nothing here; what access actions ask (HOLD, ...) is no message's
            req = self.req
            saved = req.recipient, req.actions
            req.recipient, req.actions = addr, restrictions.MessageActions()
            try:
                result = await self.smtpd.engine.check_rcpt(req, restrictions.WHERE_VRFY)
            finally:
                req.recipient, req.actions = saved
            if result is not None and result.reply is not None:
                self._log_reject("VRFY", str(result.reply), addr)
                return await self.reply_error(str(result.reply))
        await self.push(f"252 2.0.0 {arg}")
        return True

    async def smtp_ETRN(self, arg: str) -> bool:
        if not self.req.helo:
            return await self.reply_error("503 Error: send HELO/EHLO first")
        if self.env is not None:
            return await self.reply_error("503 Error: MAIL transaction in progress")
        if not arg or len(arg.split()) != 1:
            return await self.reply_error("500 Syntax: ETRN domain")
        if arg[0] in "@#":  # as Postfix
            arg = arg[1:]
        if self.smtpd.stand_alone:
            log.warning('do not use ETRN in "sendmail -bs" mode')
            return await self.reply_error("458 Unable to queue messages")
        if not flush.valid_site(arg):
            return await self.reply_error("501 Error: invalid parameter syntax")
        self.req.etrn_domain = arg
        try:
            result = await self.smtpd.engine.check_etrn(self.req)
        finally:
            self.req.etrn_domain = ""
        if result is not None and result.reply is not None:
            self._log_reject("ETRN", str(result.reply))
            return await self.reply_error(str(result.reply))
        status = await self.smtpd.flush.send_site(arg)  # the flush service (ipc.flush)
        if status == flush.OK:
            await self.push("250 Queuing started")
            return True
        if status == flush.DENY:
            log.warning(f"reject: ETRN {arg[:100]}... from {self.client}")
            return await self.reply_error(f"459 <{arg}>: service unavailable")
        log.warning(f"bad ETRN {arg[:100]}... from {self.client}" if status == flush.BAD
                    else "unable to talk to fast flush service")
        return await self.reply_error("458 Unable to queue messages")

    async def _auth_mechanisms(self, ehlo: bool = False) -> list[str] | None:
        """The mechanisms this session may use now (none before TLS with smtpd_tls_auth_only);
        for the EHLO reply, none to smtpd_sasl_exceptions_networks (AUTH still works).
        None when the auth server cannot tell them (unreachable: a temporary failure)."""
        smtpd = self.smtpd
        if smtpd.sasl is None or "auth" in smtpd.discard_ehlo \
                or (smtpd.tls.auth_only and self.ssl_object is None):
            return []
        if ehlo and smtpd.sasl_exceptions:
            try:
                if smtpd.sasl_exceptions.match(self.req.client_addr, self.req.client_name):
                    return []
            except maps.TableError as e:  # as Postfix: not an exception, AUTH is offered
                log.warning(f"smtpd_sasl_exceptions_networks: {e}")
        try:
            mechanisms = await smtpd.sasl.mechanisms()
        except sasl.AuthServerError as e:
            log.warning(f"SASL: Connect to Dovecot auth socket '{smtpd.sasl.path}' failed: {e}")
            return None
        return sasl.offered(mechanisms, smtpd.sasl_tls_options if self.ssl_object is not None
                            else smtpd.sasl_options)

    async def smtp_AUTH(self, arg: str) -> bool:  # type: ignore[override]
        # Not SMTP's: Postfix's replies, and Dovecot's auth server behind the mechanisms.
        smtpd = self.smtpd
        if smtpd.helo_required and not self.req.helo:
            return await self.reply_error("503 5.5.1 Error: send HELO/EHLO first")
        if smtpd.sasl is None or "auth" in smtpd.discard_ehlo:
            return await self.reply_error("503 5.5.1 Error: authentication not enabled")
        if self.env is not None:
            return await self.reply_error("503 5.5.1 Error: MAIL transaction in progress")
        if smtpd.tls.auth_only and self.ssl_object is None:
            return await self.reply_error(
                "504 5.5.4 Encryption required for requested authentication mechanism")
        if self.req.sasl_username:
            return await self.reply_error("503 5.5.1 Error: already authenticated")
        words = arg.split()
        if not 1 <= len(words) <= 2:
            return await self.reply_error("501 5.5.4 Syntax: AUTH mechanism")
        initial = words[1] if len(words) == 2 else None
        if initial == "=":
            initial = ""
        result = await self._converse(words[0], initial)
        if result.success:
            self.req.sasl_username = self.session.login_data = str(result.auth_data)
            self.session.authenticated = True
            self.session.auth_data = result.auth_data
            self.req.sasl_method = log.printable(words[0])  # as the client named it, as Postfix
            await self.push("235 2.7.0 Authentication successful")
            return True
        if result.handled:  # aborted: already answered
            return False
        return await self.reply_error(str(result.message))

    async def _converse(self, given: str, initial: str | None) -> AuthResult:
        """One SASL conversation with Dovecot (mechanism ``given``, in the client's case):
        334 challenges until OK or FAIL."""
        smtpd = self.smtpd
        mechanism = given.upper()
        named = log.printable(given[:100])
        assert smtpd.sasl is not None
        conversation = None
        mechanisms = await self._auth_mechanisms()
        if mechanisms is None:  # the server is down: 454, never a permanent 535
            outcome = sasl.Outcome(failed=True, temporary=True,
                                   reason="Can't connect to authentication server")
        elif mechanism not in mechanisms:
            outcome = sasl.Outcome(failed=True, reason="Invalid authentication mechanism: "
                                   f"'{named}'")
        elif initial is not None and not sasl.valid_base64(initial):
            outcome = sasl.Outcome(failed=True, reason="Invalid base64 data in initial response")
        else:
            conversation, outcome = await smtpd.sasl.start(
                mechanism, initial, self.req.client_addr, self.req.server_addr or "127.0.0.1",
                secured=self.ssl_object is not None)
        last_challenge = ""
        try:
            while outcome.challenge is not None and conversation is not None:
                last_challenge = outcome.challenge
                await self.push(f"334 {outcome.challenge}")
                line = await self.input.readline(smtpd.sasl_response_limit)
                if len(line) >= smtpd.sasl_response_limit:  # as Postfix: not cut and sent on
                    log.warning(f"{self.client}: request longer than "
                                f"{smtpd.sasl_response_limit}: "
                                f"{log.printable(line[:30].decode('ascii', 'replace'))}...")
                    await self.reply_error("500 5.5.6 SASL response limit exceeded")
                    return AuthResult(success=False, handled=True)
                response = line.decode("ascii", "replace").strip()
                if response == "*":
                    log.warning(f"{self.client}: SASL {named} authentication aborted")
                    await self.reply_error("501 5.7.0 Authentication aborted")
                    return AuthResult(success=False, handled=True)
                if not sasl.valid_base64(response):
                    outcome = sasl.Outcome(failed=True,
                                           reason="Invalid base64 data in continued response")
                    break
                outcome = await conversation.next(response)
        finally:
            if conversation is not None:
                conversation.close()
        if not outcome.failed:
            return AuthResult(success=True, auth_data=outcome.username)
        reason = outcome.reason or last_challenge
        log.warning(f"{self.client}: SASL {named} authentication "
                    f"failed: {reason or '(reason unavailable)'}, "
                    f"sasl_username={outcome.fail_user[:100] or '(unavailable)'}")
        if outcome.temporary:
            return AuthResult(success=False, handled=False,
                              message=f"454 4.7.0 Temporary authentication failure: {reason}")
        return AuthResult(success=False, handled=False,
                          message=f"535 5.7.8 Error: authentication failed: {reason}")

    async def smtp_STARTTLS(self, arg: str) -> bool:  # type: ignore[override]
        # Not SMTP's: Postfix's replies; loop.start_tls instead of a hand-made SSLProtocol.
        if arg:
            return await self.reply_error("501 5.5.4 Syntax: STARTTLS")
        if self.ssl_object is not None:
            return await self.reply_error("554 5.5.1 Error: TLS already active")
        if not self.smtpd.starttls_offered:
            return await self.reply_error("502 5.5.1 Error: command not implemented")
        self._write(b"220 2.0.0 Ready to start TLS\r\n")
        # RFC 3207 section 4.2: forget what the client said before TLS (HELO, MAIL
        # and, as Postfix's smtpd_sasl_auth_reset, a login made in plaintext)
        self._reset()
        self.req.helo = ""
        self.req.protocol = "SMTP"
        self.session.extended_smtp = False
        self.req.sasl_username = self.req.sasl_method = ""
        self.session.authenticated = False
        self.session.login_data = self.session.auth_data = None
        await self._start_tls()
        return True

    async def _start_tls(self) -> None:
        """TLS on this connection (after STARTTLS's 220, or at once in wrapper mode).

        Whatever the client sent in plaintext after the STARTTLS line is dropped
        unread (CVE-2011-0411): nothing in the buffers survives the switch. A
        failed handshake ends the session, as in Postfix."""
        self.input.discard()
        transport = self._writer.transport
        tls = self.smtpd.tls
        assert tls.context is not None
        try:
            new = await self.loop.start_tls(transport, self, tls.context, server_side=True,
                                            ssl_handshake_timeout=tls.handshake_timeout)
        except (OSError, TimeoutError) as e:
            tls_server.log_accept_error(self.client, e)
            raise ConnectionLost() from None
        if new is None:
            raise ConnectionLost()
        self.transport = self.input.transport = new
        self._writer = asyncio.StreamWriter(new, self, self._reader, self.loop)
        # as asyncio's StreamWriter.start_tls does (it takes only client-side protocols)
        self._replace_writer(self._writer)  # type: ignore[attr-defined]
        self._out = new
        self._write = self.transcript.watch(self._writer)
        self._tls_established(new.get_extra_info("ssl_object"))
        await self._require_client_cert()

    def _tls_established(self, ssl_object: ssl.SSLObject | None) -> None:
        if ssl_object is None:  # not TLS after all: end here rather than go on in plaintext
            raise ConnectionLost()
        self.ssl_object = ssl_object
        self.session.ssl = {"ssl_object": ssl_object}
        tls = self.smtpd.tls
        peer = self.req.tls = tls.peer(ssl_object)
        if tls.loglevel >= 2 and peer.cert is not None:
            log.info(tls_server.cert_line(peer, self.client))
        if tls.loglevel >= 1:
            log.info(tls_server.summary(peer, self.client))

    async def _require_client_cert(self) -> None:
        """smtpd_tls_req_ccert: without a trusted certificate the session ends with 421
        (after the next command line, as Postfix, unless in wrapper mode)."""
        peer = self.req.tls
        if not self.smtpd.tls.req_ccert or peer is None or peer.trusted:
            return
        why = "Client certificate not trusted" if peer.cert is not None \
            else "No client certificate presented"
        log.info(f"NOQUEUE: abort: TLS from {self.client}: {why}")
        if not self.smtpd.tls.wrappermode:
            await self.input.readline(self.smtpd.line_limit)
        await self.push(f"421 4.7.1 {self.smtpd.myhostname} Error: {why}")
        raise Hangup


def _plain_address(addr: object) -> str:
    """An address from a PROXY header as text, an IPv4-mapped IPv6 one in IPv4 form."""
    ip = netaddr.parse_address(str(addr))
    return str(ip) if ip is not None else str(addr)


def _comment_text(text: str) -> str:
    """Text safe inside a header comment: printable, parentheses balanced or dropped."""
    text = log.printable(text)
    if text.count("(") != text.count(")"):
        text = text.replace("(", "").replace(")", "")
    return text.replace("\\", "")


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _verb_table(cls: type) -> dict[str, Verb]:
    # Only the verbs this module implements: others (HELP, EXPN, ...)
    # are not Postfix commands and answer "command not recognized".
    names = ("HELO", "EHLO", "MAIL", "RCPT", "DATA", "BDAT", "RSET", "NOOP", "QUIT", "VRFY", "ETRN",
             "AUTH", "STARTTLS")
    return {name: getattr(cls, f"smtp_{name}") for name in names}


Session._verbs = _verb_table(Session)
