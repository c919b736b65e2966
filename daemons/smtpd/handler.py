"""smtpd's per-process state and its glue to the restrictions and to cleanup.

``Smtpd(config)`` is built once per process (the skeleton's on_start): the
parameters smtpd reads, the pre-formatted greeting and EHLO reply, the
restriction Engine (start-up fatal on a bad list: ``ValueError``), the
client limits (pymailsys.smtp.limits, with ONE anvil client), and ONE
AttrPool to public/cleanup shared by all sessions. ``new_message()`` starts
a ``Message``: its content goes to cleanup as DATA arrives (pymailsys.ipc.services
contract), and its end gives the SMTP reply.
``name_client(req)`` sets the client's names (``name_known_client``, without
a coroutine, when they need no lookup): ``localhost`` for loopback
addresses without a lookup, else a forward-confirmed reverse lookup
(pymailsys.smtp.dns_client_name) when smtpd_peername_lookup is on, else
``unknown``. A message carries the access(5) actions its restrictions
asked for (``req.actions``) to cleanup: HOLD and DISCARD as flags, REDIRECT
as the envelope recipient (the original kept as orcpt), BCC as extra
recipients with NOTIFY=NEVER, PREPEND as header lines above Received:,
FILTER as ``filter``; every message carries smtpd's content_filter (as
Postfix's smtpd sends its REC_TYPE_FILT). ``rewrite_context(req)`` (at MAIL
FROM) reads local_header_rewrite_clients as Postfix's smtpd_check_rewrite:
permit_inet_interfaces, permit_mynetworks, permit_sasl_authenticated,
permit_tls_clientcerts, permit_tls_all_clientcerts, and ``type:table`` (or
``check_address_map type:table``) where the client address is looked up; any
other word is a warning and is skipped; a table that cannot answer is a
TableError (451 4.3.0 to MAIL FROM).
"""

from __future__ import annotations

import functools
import os
import time
from dataclasses import dataclass, field
from typing import Protocol

from aiosmtpd.proxy_protocol import AF, V2_CMD, ProxyData
from pymailsys.daemons.smtpd import transcript

from pymailsys import config as config_mod
from pymailsys import dsn, log
from pymailsys.address import networks as netaddr
from pymailsys.address.resolve import DomainList
from pymailsys.ipc import attr, flush, services
from pymailsys.maps import Maps
from pymailsys.smtp import dns_client_name, ehlo_mask, restrictions, sasl, tls_server
from pymailsys.smtp.limits import ClientLimits

QUEUE_WRITE_ERROR = "451 4.3.0 Error: queue file write error"
# the restrictions local_header_rewrite_clients takes besides tables (smtpd_check_rewrite)
REWRITE_PERMITS = frozenset(("permit_inet_interfaces", "permit_mynetworks",
                             "permit_sasl_authenticated", "permit_tls_clientcerts",
                             "permit_tls_all_clientcerts"))
_LOOPBACK_NAME = dns_client_name.ClientName("localhost", dns_client_name.OK, "localhost",
                                            dns_client_name.OK)
_NOT_LOOKED_UP = dns_client_name.ClientName()
# per process, by client address string (answers never change; a few hundred bytes each)
_is_loopback = functools.lru_cache(maxsize=1024)(netaddr.is_loopback)


@dataclass
class Envelope:
    """One mail transaction."""

    sender: str = ""
    recipients: list[str] = field(default_factory=list)
    orig_recipients: list[str] = field(default_factory=list)
    body: str = ""  # BODY= lower-cased ("7bit", "8bitmime"); "" without one, as Postfix
    size: int = 0
    ret: str = ""  # "FULL", "HDRS" or ""
    envid: str = ""  # decoded from xtext
    smtputf8: bool = False
    notifies: list[int] = field(default_factory=list)  # per recipient, as pymailsys.dsn
    dsn_orcpts: list[str] = field(default_factory=list)  # per recipient, "type;address"
    received_with: str = ""  # Received: "with" (ESMTPS, UTF8SMTPSA, ...): set at DATA
    received_comment: str = ""  # Received: lines after "from" (TLS, authenticated sender)
    rewrite_context: str = "remote"  # local_header_rewrite_clients' verdict, at MAIL FROM


class Smtpd:
    stand_alone = False  # smtpd -S: one session on standard input, no anvil

    def __init__(self, config: config_mod.Config) -> None:
        self.config = config
        self.cleanup_flags = services.receive_flags(config)
        self.content_filter = config.get("content_filter")
        self.myhostname = config.get("myhostname")
        self.banner = f"220 {config.get('smtpd_banner')}\r\n".encode("utf-8", "surrogateescape")
        self.size_limit = config.get_size("message_size_limit")
        self.queue_minfree = config.get_size("queue_minfree")
        self.queue_directory = config.get("queue_directory")
        self._space = (float("-inf"), 0, 1)  # when asked, free blocks, block size
        self.rcpt_limit = config.get_int("smtpd_recipient_limit")
        self.rcpt_overshoot = config.get_int("smtpd_recipient_overshoot_limit")
        self.timeout = float(config.get_time("smtpd_timeout"))
        self.error_sleep = float(config.get_time("smtpd_error_sleep_time"))
        self.soft_limit = config.get_int("smtpd_soft_error_limit")
        self.hard_limit = config.get_int("smtpd_hard_error_limit")
        self.junk_limit = config.get_int("smtpd_junk_command_limit")
        self.line_limit = max(config.get_int("line_length_limit"), 512)
        self.helo_required = config.get_bool("smtpd_helo_required")
        self.vrfy_disabled = config.get_bool("disable_vrfy_command")
        self.forbidden_commands = DomainList(config.get_list("smtpd_forbidden_commands"),
                                             name="smtpd_forbidden_commands", strings=True)
        self.discard_ehlo = ehlo_mask.discarded(config.get_list("smtpd_discard_ehlo_keywords"))
        # none with ENHANCEDSTATUSCODES discarded: Postfix's smtpd logs none then
        self.discard_ehlo_notice = "" if "enhancedstatuscodes" in self.discard_ehlo \
            else ehlo_mask.discard_notice(self.discard_ehlo)
        self.smtputf8 = config.get_bool("smtputf8_enable")
        self.strict_rfc821 = config.get_bool("strict_rfc821_envelopes")
        self.peername_lookup = config.get_bool("smtpd_peername_lookup")
        self.delay_reject = config.get_bool("smtpd_delay_reject")
        self.forbid_unauth_pipelining = config.get_bool("smtpd_forbid_unauth_pipelining")
        mode = config.get("smtpd_forbid_bare_newline").strip().lower()
        if mode in ("yes", "true"):
            mode = "normalize"
        if mode not in ("no", "false", "normalize", "reject", "note"):
            raise ValueError(f"invalid smtpd_forbid_bare_newline value: {mode}")
        self.bare_newline = mode
        self.bare_newline_exclusions = netaddr.address_list(config, "smtpd_forbid_bare_newline_exclusions")
        self.engine = restrictions.Engine(config)
        self.engine.check_relay_config()
        # an empty list decides nothing: DATA and the end of data skip a check of it
        self.data_checked = self.engine.runs("smtpd_data_restrictions")
        self.end_of_data_checked = self.engine.runs("smtpd_end_of_data_restrictions")
        self.local_rewrite = self._parse_local_rewrite(
            config.get_list("local_header_rewrite_clients"))
        self._rewrite_tables: dict[str, Maps] = {}
        self.limits = ClientLimits(config, self.engine.mynetworks, counted=not self.stand_alone)
        # smtpd -S speaks on pipes: no TLS there (its settings are not read)
        self.tls = tls_server.ServerTLS.off() if self.stand_alone else \
            tls_server.ServerTLS.from_config(config)
        self.tls_required = self.tls.required
        self.starttls_offered = self.tls.context is not None and not self.tls.wrappermode \
            and "starttls" not in self.discard_ehlo
        self.sasl: sasl.DovecotAuth | None = None
        if config.get_bool("smtpd_sasl_auth_enable") and not self.stand_alone:
            self.sasl = self._sasl_server(config)
        self.sasl_exceptions = netaddr.address_list(config, "smtpd_sasl_exceptions_networks")
        config.get("smtpd_sasl_local_domain")  # the realm: not sent to Dovecot (sasl.py)
        self.sasl_options = config.get_list("smtpd_sasl_security_options")
        self.sasl_tls_options = config.get_list("smtpd_sasl_tls_security_options")
        sasl.check_security_options(self.sasl_options + self.sasl_tls_options)
        self.sasl_authenticated_header = config.get_bool("smtpd_sasl_authenticated_header")
        self.sasl_response_limit = config.get_int("smtpd_sasl_response_limit")  # >= 12288
        self.broken_sasl_clients = config.get_bool("broken_sasl_auth_clients")
        proxy = config.get("smtpd_upstream_proxy_protocol").strip().lower()
        if proxy not in ("", "haproxy"):
            raise ValueError(f"unsupported smtpd_upstream_proxy_protocol type: {proxy}")
        self.proxy_timeout = float(config.get_time("smtpd_upstream_proxy_timeout")) \
            if proxy and not self.stand_alone else 0.0
        self._ehlo_replies: dict[tuple[bool, tuple[str, ...]], bytes] = {}
        self.ehlo_reply = self._ehlo_reply(self.starttls_offered)
        self.ehlo_reply_tls = self._ehlo_reply(False)
        path = os.path.join(config.get("queue_directory"), "public",
                            config.get("cleanup_service_name"))
        self.cleanup = attr.AttrPool(path, timeout=float(config.get_time("ipc_timeout")))
        self.notices = transcript.Notices(config, self.cleanup)
        self.flush = flush.FlushClient(
            os.path.join(config.get("queue_directory"), "public",
                         config.get("flush_service_name")),
            float(config.get_time("ipc_timeout")),
            enabled=bool(config.get_list("fast_flush_domains")))

    def queue_space_short(self) -> int | None:
        """Postfix 3.7's smtpd_check_queue at MAIL: the queue file system's free bytes
        when it has no more than queue_minfree free, or less than 1.5 times
        message_size_limit (in blocks, as Postfix's), else None. The client's SIZE=
        plays no part (Postfix 2's check did: 3.7 takes any SIZE= within the limit).
        The file system is asked at most once a second."""
        now = time.monotonic()
        asked, free, block = self._space
        if now - asked >= 1.0:
            try:
                st = os.statvfs(self.queue_directory)
            except OSError:
                return None
            free, block = st.f_bavail, st.f_frsize or 1
            self._space = (now, free, block)
        if self.queue_minfree // block >= free or self.size_limit // block >= free / 1.5:
            return free * block
        return None

    @staticmethod
    def _sasl_server(config: config_mod.Config) -> sasl.DovecotAuth:
        kind = config.get("smtpd_sasl_type").strip().lower()
        if kind != "dovecot":
            raise ValueError(f"unsupported SASL server implementation: {kind} "
                             "(smtpd_sasl_type = dovecot is the one there is)")
        path = config.get("smtpd_sasl_path").strip()
        if path.startswith("inet:"):
            sasl.inet_address(path)  # ValueError (smtpd refuses) if malformed
        else:
            path = path.removeprefix("unix:")
            if not os.path.isabs(path):
                path = os.path.join(config.get("queue_directory"), path)
        mechanism_filter = DomainList(config.get_list("smtpd_sasl_mechanism_filter"))
        return sasl.DovecotAuth(path, sasl.AUTH_TIMEOUT,
                                config.get("smtpd_sasl_service").strip() or "smtp",
                                mechanism_filter.match if mechanism_filter else None)

    def ehlo_reply_for(self, starttls: bool, mechanisms: list[str]) -> bytes:
        """The EHLO reply with STARTTLS or not and these AUTH mechanisms (cached)."""
        key = (starttls, tuple(mechanisms))
        reply = self._ehlo_replies.get(key)
        if reply is None:
            reply = self._ehlo_replies[key] = self._ehlo_reply(starttls, mechanisms)
        return reply

    def _ehlo_reply(self, starttls: bool, mechanisms: list[str] | tuple[str, ...] = ()) -> bytes:
        words = ["PIPELINING", f"SIZE {self.size_limit}" if self.size_limit else "SIZE"]
        if not self.vrfy_disabled:
            words.append("VRFY")
        words.append("ETRN")
        if starttls:
            words.append("STARTTLS")
        if mechanisms:
            words.append("AUTH " + " ".join(mechanisms))
            if self.broken_sasl_clients:
                words.append("AUTH=" + " ".join(mechanisms))
        words += ["ENHANCEDSTATUSCODES", "8BITMIME", "DSN"]
        if self.smtputf8:
            words.append("SMTPUTF8")
        words.append("CHUNKING")
        words = [w for w in words if w.split()[0].split("=")[0].lower() not in self.discard_ehlo]
        lines = [self.myhostname] + words
        out = [f"250-{line}" for line in lines[:-1]] + [f"250 {lines[-1]}"]
        return ("\r\n".join(out) + "\r\n").encode()

    async def handle_PROXY(self, server: object, session: object, envelope: object,
                           proxy_data: ProxyData) -> bool:
        """aiosmtpd's PROXY hook: a header smtpd can use (a TCP client, or a LOCAL or
        UNKNOWN one, which stands for the proxy itself)."""
        return proxy_data.command == V2_CMD.LOCAL or proxy_data.family in (
            AF.INET, AF.INET6, AF.UNSPEC)

    async def close(self) -> None:
        await self.engine.close()
        await self.cleanup.close()
        await self.flush.close()
        await self.limits.close()
        if self.sasl is not None:
            self.sasl.close()

    def name_known_client(self, req: restrictions.Request) -> bool:
        """Set the client's names when they need no lookup (a loopback client, or
        smtpd_peername_lookup off); False: name_client must look them up."""
        if _is_loopback(req.client_addr):
            _set_names(req, _LOOPBACK_NAME)
        elif not self.peername_lookup:
            _set_names(req, _NOT_LOOKED_UP)
        else:
            return False
        return True

    async def name_client(self, req: restrictions.Request) -> None:
        if not self.name_known_client(req):
            _set_names(req, await dns_client_name.lookup(req.client_addr, timeout=10))

    def _parse_local_rewrite(self, words: list[str]) -> list[tuple[str, object]]:
        """local_header_rewrite_clients as Postfix's smtpd_check_rewrite reads it: the
        REWRITE_PERMITS, and tables (``type:name`` alone or after check_address_map)
        in which the client address is looked up; any other word is warned about and
        skipped. A table is opened at first use (a missing one then defers the mail)."""
        steps: list[tuple[str, object]] = []
        i = 0
        while i < len(words):
            word = words[i]
            i += 1
            if word.lower() == "check_address_map":
                if i >= len(words) or ":" not in words[i]:
                    raise ValueError("local_header_rewrite_clients: check_address_map "
                                     "requires a type:table argument")
                word = words[i]
                i += 1
            if ":" in word:
                steps.append(("table", word))
            elif word.lower() in REWRITE_PERMITS:
                steps.append(("permit", self.engine.parse([word.lower()])))
            else:
                log.warning(f"parameter local_header_rewrite_clients: invalid request: "
                            f"{log.printable(word)}")
        return steps

    async def rewrite_context(self, req: restrictions.Request) -> str:
        """``local`` when local_header_rewrite_clients lets the client's headers be
        rewritten as a local submission's, else ``remote``; TableError when a table
        cannot answer (the caller answers MAIL FROM with 451 4.3.0, as Postfix)."""
        for kind, what in self.local_rewrite:
            if kind == "table":
                spec = str(what)
                tables = self._rewrite_tables.get(spec)
                if tables is None:
                    tables = self._rewrite_tables[spec] = Maps(None, specs=[spec])
                if tables.find(req.client_addr) is not None:
                    return "local"
                continue
            result = await self.engine.run_entries(what, req)  # type: ignore[arg-type]
            if result is not None and result.action == restrictions.OK:
                return "local"
        return "remote"

    def new_message(self, env: Envelope, req: restrictions.Request,
                    context: str) -> QueueMessage:
        """Where one message's content goes as DATA arrives (stand-alone mode: elsewhere)."""
        return Message(self, env, req, context)


def _set_names(req: restrictions.Request, found: dns_client_name.ClientName) -> None:
    req.client_name, req.client_name_status = found.name, found.status
    req.reverse_client_name = found.reverse_name
    req.reverse_client_name_status = found.reverse_status


class QueueMessage(Protocol):
    """One message on its way into the queue: content pieces, then the SMTP reply."""

    async def feed(self, piece: bytes) -> None: ...

    async def finish(self, rest: bytes) -> tuple[str, str]: ...

    def abort(self) -> None: ...


class Message:
    """One message on its way to cleanup (the pymailsys.ipc.services cleanup contract).

    ``feed(piece)`` passes content on as DATA arrives: the first piece opens a
    streamed request on a connection of its own, with the envelope; a message
    that ends before any piece was fed goes as one request on the shared
    connection. ``finish(rest)`` sends the rest and returns (SMTP reply, queue
    ID or ""); ``abort()`` withdraws a message the client will not get
    queued (cleanup removes its file); it never blocks.
    """

    __slots__ = ("smtpd", "env", "req", "context", "stream", "failed", "streamed_actions")

    def __init__(self, smtpd: Smtpd, env: Envelope, req: restrictions.Request,
                 context: str) -> None:
        self.smtpd = smtpd
        self.env = env
        self.req = req
        self.context = context
        self.stream: attr.RequestStream | None = None
        self.failed = False  # cleanup could not be reached: the rest is dropped
        # what of req.actions the streamed envelope carried (hold, discard, redirect, bcc
        # count): smtpd_end_of_data_restrictions may add to them after it went out
        self.streamed_actions: tuple[bool, bool, str, int] = (False, False, "", 0)

    def _envelope(self) -> list[tuple[str, attr.AttrValue]]:
        env = self.env
        req = self.req
        actions = req.actions
        flags = self.smtpd.cleanup_flags
        if actions.hold:
            flags |= services.CLEANUP_FLAG_HOLD
        if actions.discard:
            flags |= services.CLEANUP_FLAG_DISCARD
        rcpts = ([actions.redirect] * len(env.recipients) if actions.redirect
                 else env.recipients)
        request: list[tuple[str, attr.AttrValue]] = [("origin", "smtpd"), ("sender", env.sender)]
        request += [("rcpt", r) for r in rcpts + actions.bcc]
        request += [("orcpt", o) for o in env.orig_recipients + actions.bcc]
        request += [("prepend", line) for line in actions.prepend]
        request += [
            ("client_name", req.client_name), ("client_addr", req.client_addr),
            ("client_port", req.client_port), ("helo_name", req.helo),
            ("reverse_client_name", req.reverse_name),
            ("protocol", req.protocol), ("rewrite_context", self.context),
            ("received_with", env.received_with), ("received_comment", env.received_comment),
            ("flags", flags), ("encoding", env.body),
        ]
        if self.smtpd.content_filter:
            request.append(("content_filter", self.smtpd.content_filter))
        if actions.filter:
            request.append(("filter", actions.filter))
        if req.sasl_method:
            request += [("sasl_method", req.sasl_method), ("sasl_username", req.sasl_username)]
        if req.sasl_sender:
            request.append(("sasl_sender", req.sasl_sender))
        if env.smtputf8:
            request.append(("smtputf8", 1))
        if any(env.notifies) or actions.bcc:  # an access BCC copy: NOTIFY=NEVER, as Postfix
            notifies = env.notifies or [0] * len(rcpts)
            request += [("notify", n) for n in notifies + [dsn.NOTIFY_NEVER] * len(actions.bcc)]
        if any(env.dsn_orcpts):
            request += [("dsn_orcpt", o) for o in env.dsn_orcpts + [""] * len(actions.bcc)]
        if env.ret:
            request.append(("ret", env.ret))
        if env.envid:
            request.append(("envid", env.envid))
        return request

    async def feed(self, piece: bytes) -> None:
        if self.failed:
            return
        try:
            if self.stream is None:
                actions = self.req.actions
                self.streamed_actions = (actions.hold, actions.discard, actions.redirect,
                                         len(actions.bcc))
                self.stream = await self.smtpd.cleanup.stream(
                    self._envelope() + [("content", piece), (attr.MORE, 1)])
            else:
                await self.stream.send([("content", piece), (attr.MORE, 1)])
        except (attr.ProtocolError, OSError) as e:
            log.warning(f"connect to cleanup service {self.smtpd.cleanup.path}: {e}")
            self.abort()
            self.failed = True

    def _late_actions(self) -> list[tuple[str, attr.AttrValue]]:
        """For a streamed message: what smtpd_end_of_data_restrictions decided after its
        envelope went out (services.py: the last list's flags, redirect, bcc, filter)."""
        actions = self.req.actions
        hold, discard, redirect, bcc_count = self.streamed_actions
        flags = ((services.CLEANUP_FLAG_HOLD if actions.hold and not hold else 0)
                 | (services.CLEANUP_FLAG_DISCARD if actions.discard and not discard else 0))
        late: list[tuple[str, attr.AttrValue]] = [("flags", flags)] if flags else []
        if actions.redirect != redirect:
            late.append(("redirect", actions.redirect))
        late += [("bcc", address) for address in actions.bcc[bcc_count:]]
        if actions.filter:
            late.append(("filter", actions.filter))
        return late

    async def finish(self, rest: bytes) -> tuple[str, str]:
        """Hand over the rest of the message: (SMTP reply, queue ID or "")."""
        if self.failed:
            return QUEUE_WRITE_ERROR, ""
        try:
            if self.stream is None:
                reply = await self.smtpd.cleanup.request(self._envelope() + [("content", rest)])
            else:
                reply = await self.stream.finish([("content", rest), *self._late_actions()])
        except (attr.ProtocolError, OSError) as e:
            log.warning(f"connect to cleanup service {self.smtpd.cleanup.path}: {e}")
            return QUEUE_WRITE_ERROR, ""
        status = reply.number("status", -1)
        if status == services.CLEANUP_OK:
            queue_id = reply.text("queue_id")
            return f"250 2.0.0 Ok: queued as {queue_id}", queue_id
        if status < 400 or status > 599:
            return QUEUE_WRITE_ERROR, ""
        dsn = reply.text("dsn") or ("4.3.0" if status < 500 else "5.3.0")
        reason = reply.text("reason") or "Error: queue file write error"
        return f"{status} {dsn} {reason}", ""

    def abort(self) -> None:
        if self.stream is not None:
            self.stream.abort([("abort", 1)])
            self.stream = None
