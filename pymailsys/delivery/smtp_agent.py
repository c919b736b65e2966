"""The SMTP/LMTP delivery agent shared by the smtp and lmtp daemons.

NAME
    smtp_agent - deliver mail to other mail servers over SMTP or LMTP

SYNOPSIS
    server.run("smtp" | "lmtp", serve=smtp_agent.serve, on_start=smtp_agent.start,
               on_stop=smtp_agent.stop)     # pymailsys.daemons.smtp, pymailsys.daemons.lmtp

DESCRIPTION
    One client engine, two services, as Postfix's smtp(8) binary is also its
    lmtp(8): the program name (the master.cf command ``smtp`` or ``lmtp``,
    whose modules run the server skeleton under their name) or a service named ``lmtp``
    chooses the protocol and the parameter prefix (``smtp_*`` or ``lmtp_*``;
    ``smtp_helo_timeout`` is ``lmtp_lhlo_timeout``). It lives in the library
    because two daemons share it and a daemon never imports another.

    It serves the delivery-agent contract of ``pymailsys.ipc.services``
    (``pymailsys.delivery.agent``): a request names the queue file and
    carries up to ``<transport>_destination_recipient_limit`` recipients of
    one message for one nexthop. The nexthop is resolved into servers
    (``pymailsys.smtp.nexthop``: MX by preference, A/AAAA, ``[host]:port``,
    ``unix:/path`` for LMTP; each site of a list such as ``relayhost = [a]:587,
    [b]:587`` in turn, Postfix 3.5's), and they are tried in order
    (``pymailsys.smtp.client``): a server that cannot be reached, answers
    4xx to the greeting, HELO or MAIL FROM, or breaks the connection makes
    way for the next, within smtp_mx_session_limit sessions that got past
    the greeting; a 5xx to HELO (or MAIL FROM) is final, as Postfix 3.7's:
    the mail bounces, no other server nor fallback relay is tried. Then, as
    Postfix, each ``smtp_fallback_relay`` is a site of its own (its own TLS
    policy and session limit), tried also after a lookup error of the nexthop, but not when its mail loops back to us or
    we are one of its MX hosts. A hard lookup error (or loop) of the
    relayhost, or of the last fallback relay, is a configuration problem:
    deferred 4.3.5 with a warning "relayhost configuration problem" (or
    smtp_fallback_relay), not bounced. Per recipient: 2xx sent, 5xx bounced, 4xx
    tried again at the next server (as Postfix does), deferred when none is left; a message larger than the server's SIZE bounces (5.3.4). When
    no server took the mail, every recipient gets the last error (5xx:
    bounced, else deferred). The TLS policy of the nexthop
    (``pymailsys.smtp.tls``: smtp_tls_security_level, smtp_tls_policy_maps)
    applies to each server; a failed TLS handshake at level ``may`` is tried
    again without TLS on a new connection to the same server when the
    message waited at least minimal_backoff_time before this delivery
    attempt (so not on its first), as Postfix's
    PLAINTEXT_FALLBACK_OK_AFTER_STARTTLS_FAILURE, with its log line
    "QUEUEID: Cannot start TLS: handshake failure"; else it waits (4.7.5).
    Likewise a TLS session at ``may`` that is lost or times out with
    recipients left is tried again in plaintext on the same server
    ("QUEUEID: lost connection with ...", Postfix's
    PLAINTEXT_FALLBACK_OK_AFTER_TLS_SESSION_FAILURE).

    The flush service (``pymailsys.ipc.flush``) hears of each recipient
    domain of a message that stays deferred, when fast_flush_domains is
    set, as Postfix's delivery agents tell it (defer_append's flush_add), so
    that ETRN and ``postqueue -s`` can send that mail at once.

    A connection that delivered is kept (after RSET) for the same nexthop
    (with smtp_connection_cache_on_demand, or when the nexthop's domain is in
    smtp_connection_cache_destinations)
    for smtp_connection_cache_time_limit seconds of idleness and reused for
    the next request until smtp_connection_reuse_time_limit has passed since
    it was opened; the log line of a delivery over a reused connection
    carries ``conn_use=N``.

    A success is "relayed" in a delivery status notice (NOTIFY=SUCCESS),
    except from an LMTP server that announced no DSN when lmtp_assume_final
    is set: that is the final delivery, "delivered", as Postfix's lmtp. A
    server that announced DSN takes NOTIFY over and sends its own. The
    reply names the relay of such a success, so that the notice says
    ``delivery via host[addr]:port: 250 ...`` as Postfix's.

    One log line per recipient, as Postfix writes it::

        ID: to=<r>, relay=host[addr]:port, conn_use=2, delay=0.5,
            delays=0.01/0/0.2/0.3, dsn=2.0.0, status=sent (250 2.0.0 Ok: queued as X)

SECURITY
    Runs as mail_owner (``-u``). The request comes from qmgr over private/;
    every field of it is checked as local checks its own
    (``DeliveryRequest.checked``) and the queue file is opened with
    ``Spool.open_queue_file``, read-write: each recipient sent is marked done
    in it before the reply (``QueueContent.mark_sent``), as Postfix's smtp
    does, so that a qmgr gone meanwhile (a reload) is not followed by a second
    delivery. Server
    replies reach the log with control characters replaced, and have bounded
    length.

CONFIGURATION PARAMETERS
    smtp_helo_name (lmtp_lhlo_name), smtp_tcp_port, smtp_bind_address,
    smtp_bind_address6, smtp_bind_address_enforce, smtp_connect_timeout,
    smtp_helo_timeout, smtp_mail_timeout, smtp_rcpt_timeout,
    smtp_data_init_timeout, smtp_data_xfer_timeout, smtp_data_done_timeout,
    smtp_quit_timeout, smtp_starttls_timeout, smtp_skip_5xx_greeting,
    smtp_discard_ehlo_keywords (lmtp_discard_lhlo_keywords), smtp_mx_address_limit,
    smtp_mx_session_limit, smtp_fallback_relay, smtp_host_lookup,
    smtp_dns_support_level, disable_dns_lookups, smtp_randomize_addresses,
    smtp_address_preference, minimal_backoff_time,
    smtp_connection_cache_on_demand, smtp_connection_cache_destinations,
    smtp_connection_cache_time_limit, smtp_connection_reuse_time_limit,
    smtp_tls_security_level, smtp_tls_policy_maps, smtp_tls_CAfile,
    smtp_tls_CApath, smtp_tls_protocols, smtp_tls_mandatory_protocols,
    smtp_tls_ciphers, smtp_tls_mandatory_ciphers, smtp_tls_verify_cert_match,
    smtp_tls_secure_cert_match, smtp_tls_loglevel, smtp_tls_servername
    (``pymailsys.smtp.tls``) (each also as lmtp_*), inet_protocols, inet_interfaces (the source address
    when it has one non-loopback address of the peer's family), proxy_interfaces,
    myhostname, fast_flush_domains, flush_service_name, ipc_timeout,
    lmtp_assume_final, disable_mime_output_conversion, mime_nesting_limit,
    mime_boundary_length_limit, header_size_limit (the 8-bit to quoted-printable
    conversion for a server without 8BITMIME: ``pymailsys.content.downgrade``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import os
import socket
import time
from dataclasses import dataclass
from typing import Any

from pymailsys import log
from pymailsys.address import networks
from pymailsys.address.resolve import DomainList
from pymailsys.config import Config
from pymailsys.content import downgrade
from pymailsys.delivery.agent import (
    ContentError,
    DeliveryRequest,
    DeliveryResult,
    QueueContent,
    batch_reply,
    log_line,
    refusal,
    request_recipients,
)
from pymailsys.dsn import NOTIFY_SUCCESS, ret_name
from pymailsys.ipc import flush, services
from pymailsys.ipc.attr import AttrList, AttrValue, ProtocolError, serve_pipelined
from pymailsys.ipc.services import STATUS_BOUNCED, STATUS_DEFERRED, STATUS_SENT
from pymailsys.log import printable
from pymailsys.maps import TableError
from pymailsys.queue import spool as q
from pymailsys.queue.queue_file import Recipient
from pymailsys.queue.status_log import ACTION_DELIVERED, ACTION_RELAYED
from pymailsys.rfc822 import quote_822_local
from pymailsys.smtp import client, ehlo_mask, nexthop, tls

CACHE_SWEEP = 1.0
MAX_ENVID = 100  # RFC 3461
# the queue file's encoding (Postfix's "8bit"; pymailsys's smtpd and pickup say "8bitmime")
_ENCODINGS = {"8bit": "8bit", "8bitmime": "8bit", "7bit": "7bit"}


def param_name(protocol: str, suffix: str) -> str:
    """The parameter of this protocol: ``smtp_<suffix>``, or its ``lmtp_`` name."""
    if protocol == "lmtp":
        suffix = {"helo_timeout": "lhlo_timeout", "helo_name": "lhlo_name",
                  "discard_ehlo_keywords": "discard_lhlo_keywords"}.get(suffix, suffix)
    return f"{protocol}_{suffix}"


@dataclass
class Request:
    queue_name: str
    queue_id: str
    data_offset: int
    content_size: int
    arrival_time: float
    active_time: float
    sender: str
    nexthop: str
    encoding: str  # "8bit", "7bit" or "" (not declared)
    recipients: list[Recipient]
    start_time: float
    dsn_envid: str = ""
    dsn_ret: str = ""  # "FULL", "HDRS" or ""
    smtputf8: int = 0  # the queue file's SMTPUTF8 flags
    hop: DeliveryResult | None = None  # set when no server of the nexthop could be reached
    flags: int = 0  # DEL_REQ_FLAG_* (DeliveryRequest.flags)

    @classmethod
    def from_attrs(cls, attrs: AttrList) -> Request:
        """Parse and check a request (ValueError, ProtocolError): the message's fields and
        every recipient's pass ``DeliveryRequest.checked``, as local's do."""
        first = DeliveryRequest.from_attrs(attrs)
        recipients = request_recipients(attrs)
        for rc in recipients:
            dataclasses.replace(first, rcpt=rc.address, orig_rcpt=rc.orig,
                                rcpt_offset=rc.offset, dsn_notify=rc.notify,
                                dsn_orcpt=rc.dsn_orcpt).checked()
        smtputf8 = attrs.number("smtputf8")
        if not 0 <= smtputf8 <= 15:
            raise ValueError(f"smtputf8 flags out of range: {smtputf8}")
        envid = attrs.text("dsn_envid")
        if len(envid) > MAX_ENVID:
            raise ValueError(f"dsn_envid longer than {MAX_ENVID} characters")
        return cls(first.queue_name, first.queue_id, first.data_offset, first.content_size,
                   first.arrival_time, first.active_time, first.sender, first.nexthop,
                   _ENCODINGS.get(attrs.text("encoding").lower(), ""), recipients,
                   first.start_time, envid,
                   ret_name(attrs.number("dsn_ret")), smtputf8, flags=first.flags)


@dataclass
class _Sites:
    """Which site of a delivery (the nexthop, or a fallback relay) is being tried, and
    its sessions, which smtp_mx_session_limit counts per site, as Postfix."""

    fallback: bool = False
    sessions: int = 0
    exhausted: bool = False
    plain_again: bool = False  # the TLS session broke: plaintext to the same server next

    def begin(self, fallback: bool) -> None:
        self.fallback, self.sessions, self.exhausted = fallback, 0, False


@dataclass
class _Cached:
    session: client.Session
    opened: float
    idle_since: float


class Agent:
    def __init__(self, config: Config, spool: q.Spool, protocol: str) -> None:
        self.config = config
        self.spool = spool
        self.protocol = protocol
        self.lmtp = protocol == "lmtp"
        self.assume_final = self.lmtp and config.get_bool("lmtp_assume_final")

        def get(suffix: str) -> str:
            return config.get(param_name(protocol, suffix))

        def seconds(suffix: str) -> float:
            return float(config.get_time(param_name(protocol, suffix)))

        self.settings = client.Settings(
            helo_name=get("helo_name"), lmtp=self.lmtp,
            timeouts=client.Timeouts(
                connect=seconds("connect_timeout"), helo=seconds("helo_timeout"),
                mail=seconds("mail_timeout"), rcpt=seconds("rcpt_timeout"),
                data_init=seconds("data_init_timeout"), data_xfer=seconds("data_xfer_timeout"),
                data_done=seconds("data_done_timeout"), quit=seconds("quit_timeout"),
                starttls=seconds("starttls_timeout")),
            skip_5xx_greeting=config.get_bool(param_name(protocol, "skip_5xx_greeting")),
            discard_ehlo=ehlo_mask.discarded(
                config.get_list(param_name(protocol, "discard_ehlo_keywords"))),
            reply_limit=max(config.get_int("line_length_limit"), 1),
            source=_source_addresses(config, protocol),
            bind_enforce=config.get_bool(param_name(protocol, "bind_address_enforce")),
            mime_downgrade=not config.get_bool("disable_mime_output_conversion"),
            mime_limits=downgrade.Limits(config.get_int("mime_nesting_limit"),
                                         config.get_int("mime_boundary_length_limit"),
                                         config.get_size("header_size_limit")))
        try:
            self.tls = tls.ClientTls.from_config(config, protocol)
        except TableError as e:  # a table that cannot be opened: fatal, as Postfix's
            log.fatal(f"{param_name(protocol, 'tls_policy_maps')}: {e}")
        try:
            self.default_port = nexthop.port_number(get("tcp_port"))
        except nexthop.RouteError as e:  # as Postfix's find_inet_port: fatal
            log.fatal(f"{param_name(protocol, 'tcp_port')}: {e.text}")
        self.session_limit = config.get_int(param_name(protocol, "mx_session_limit"))
        self.min_backoff = float(config.get_time("minimal_backoff_time"))
        self.fallback = config.get_list(param_name(protocol, "fallback_relay"))
        self.relayhost = config.get("relayhost").strip()
        self.cache_idle = seconds("connection_cache_time_limit")
        self.cache_on_demand = config.get_bool(param_name(protocol, "connection_cache_on_demand"))
        name = param_name(protocol, "connection_cache_destinations")
        self.cache_destinations = DomainList(config.get_list(name), name=name, strings=True)
        self.reuse_limit = seconds("connection_reuse_time_limit")
        protocols = {p.lower() for p in config.get_list("inet_protocols")}
        families = ("ipv4", "ipv6") if "all" in protocols else tuple(
            f for f in ("ipv4", "ipv6") if f in protocols)
        dns_level = config.get(param_name(protocol, "dns_support_level")).strip().lower() \
            or ("disabled" if config.get_bool("disable_dns_lookups") else "enabled")
        if dns_level == "dnssec":
            log.warning(f"{param_name(protocol, 'dns_support_level')} = dnssec: no validating "
                        f"resolver: using \"enabled\"")
        use_dns = dns_level != "disabled"  # else native lookups only, as Postfix
        lookups = {m.lower() for m in config.get_list(param_name(protocol, "host_lookup"))}
        self.policy = nexthop.Policy(
            families=families or ("ipv4",), dns=use_dns,
            host_dns=use_dns and "dns" in lookups, native="native" in lookups or not use_dns,
            randomize=config.get_bool(param_name(protocol, "randomize_addresses")),
            address_preference=config.get(param_name(protocol, "address_preference")).lower(),
            address_limit=config.get_int(param_name(protocol, "mx_address_limit")),
            myhostname=config.get("myhostname"),
            own_addresses=frozenset(networks.interface_addresses(config)))
        self.cache: dict[str, list[_Cached]] = {}
        self.flush = flush.FlushClient(spool.public(config.get("flush_service_name")),
                                       float(config.get_time("ipc_timeout")),
                                       enabled=bool(config.get_list("fast_flush_domains")))

    # --- the service -------------------------------------------------------------

    async def handle(self, attrs: AttrList) -> list[tuple[str, AttrValue]]:
        try:
            req = Request.from_attrs(attrs)
        except (ProtocolError, ValueError) as e:
            return refusal(attrs, e, max(len(attrs.all("rcpt")), 1))
        try:
            results = await self.deliver(req)
        except Exception as e:  # a bug must not stall the pipelined connection
            log.error(f"{self.protocol}: unexpected error: {e!r}")
            results = [DeliveryResult.deferred(f"{self.protocol} delivery agent error")
                       ] * len(req.recipients)
        await self.note_deferred(req, results)
        return batch_reply(results, req.hop)

    async def note_deferred(self, req: Request, results: list[DeliveryResult]) -> None:
        """Tell the flush service which recipient domains this message now waits for
        (Postfix's defer_append calls flush_add), so that ETRN and postqueue -s find it."""
        if not self.flush.enabled:
            return
        domains = {rc.address.rpartition("@")[2].lower()
                   for rc, result in zip(req.recipients, results, strict=True)
                   if result.status == services.STATUS_DEFERRED and "@" in rc.address}
        for domain in sorted(d for d in domains if flush.valid_site(d)):
            await self.flush.add(domain, req.queue_id)

    async def deliver(self, req: Request) -> list[DeliveryResult]:
        path = self.spool.path(req.queue_name, req.queue_id)
        try:
            fd = self.spool.open_queue_file(req.queue_name, req.queue_id, writable=True)
            content = QueueContent(path, req.data_offset, fd=fd,
                                   rcpt_offsets=[rc.offset for rc in req.recipients])
            with content:
                results = await self.transfer(req, content)
                for rc, result in zip(req.recipients, results, strict=True):
                    content.mark_sent(req.queue_id, rc.address, rc.offset, rc.notify, req.flags,
                                      result)
                return results
        except (q.QueueAccessError, ContentError) as e:
            log.warning(f"{req.queue_id}: {e}")
            result = DeliveryResult.unreadable(e if isinstance(e, ContentError) else None)
            return self.finish(req, [result] * len(req.recipients),
                               ["none"] * len(req.recipients))

    async def transfer(self, req: Request, content: QueueContent) -> list[DeliveryResult]:
        """Try the destination's servers in order until one took the mail."""
        count = len(req.recipients)
        results: list[DeliveryResult | None] = [None] * count
        relays = ["none"] * count
        uses = [0] * count
        conn_time = 0.0
        try:
            dests = nexthop.parse_list(req.nexthop, self.lmtp, self.default_port)
        except nexthop.RouteError as e:
            log.warning(e.text)  # as Postfix's smtp client, which stops on it
            return self.finish(req, [_route_result(e)] * count, relays)
        try:
            policy = self.tls.policy(req.nexthop)
        except tls.PolicyError as e:
            return self.finish(req, [DeliveryResult.deferred(e.text, e.dsn)] * count, relays)
        last: client.SessionError | nexthop.RouteError | None = None
        last_relay = "none"
        sessions = 0
        cacheable = self.caches(dests[0].host)
        sites = _Sites()
        soft: dict[int, DeliveryResult] = {}  # 4xx from a server: kept for the next one
        # as Postfix's PREACTIVE_DELAY >= var_min_backoff_time: not on a first attempt
        plain_retry = req.active_time - req.arrival_time >= self.min_backoff
        async with contextlib.aclosing(self.sessions(req.nexthop, dests, policy, sites,
                                                     req.queue_id if plain_retry else "")) \
                as attempts:
            async for peer, session, error in attempts:
                if error is not None:
                    if not (isinstance(error, nexthop.RouteError) and error.permanent
                            and last is not None and not last.permanent):
                        last = error  # a site not found does not undo another's soft error
                    last_relay = peer.relay if peer is not None and isinstance(
                        error, client.SessionError) and error.connected else "none"
                    if isinstance(error, client.SessionError) and not error.retry_other:
                        break
                    continue
                assert session is not None and peer is not None
                sessions += 1
                sites.sessions += 1
                if self.session_limit and sites.sessions >= self.session_limit:
                    sites.exhausted = True  # this site is done; a fallback relay is not
                conn_time = conn_time or (time.time() - req.start_time)
                pending = [i for i in range(count) if results[i] is None]
                env = client.Envelope(
                    req.sender, [req.recipients[i].address for i in pending], req.content_size,
                    req.encoding, req.dsn_ret, req.dsn_envid,
                    [_orcpt(req.recipients[i]) for i in pending],
                    [req.recipients[i].notify for i in pending], req.smtputf8)
                try:
                    outcome = await session.send(env, content.text())
                except client.SessionError as e:
                    last, last_relay = e, peer.relay
                    if e.outcome is not None:  # what its replies decided stands
                        for n, i in enumerate(pending[:len(e.outcome.replies)]):
                            if e.outcome.replies[n] is not None:
                                relays[i], uses[i] = peer.relay, session.uses
                                self._take(i, e.outcome, n, peer, session, results, soft)
                    await self.release(req.nexthop, session, keep=False)
                    if not e.retry_other or all(r is not None for r in results):
                        break
                    if plain_retry and session.tls_info and session.tls.level == "may" \
                            and e.reply is None and e.dsn == "4.4.2":
                        # a TLS session lost or timed out, as Postfix's
                        # PLAINTEXT_FALLBACK_OK_AFTER_TLS_SESSION_FAILURE
                        log.info(f"{req.queue_id}: {e.text}")
                        sites.plain_again = True
                    continue
                except BaseException:  # a bug, or a cancel: no socket is left open
                    session.close()
                    raise
                for n, i in enumerate(pending):
                    relays[i], uses[i] = peer.relay, session.uses
                    self._take(i, outcome, n, peer, session, results, soft)
                await self.release(req.nexthop, session, keep=True, cache=cacheable)
                if all(r is not None for r in results):
                    break
        final: list[DeliveryResult] = []
        for i in range(count):
            found = results[i] or soft.get(i)
            if found is None:
                found, relays[i] = self._site_failure(last, req.nexthop, sites), last_relay
            final.append(found)
        if sessions == 0 and not soft and isinstance(last, client.SessionError) \
                and not final[0].final:
            req.hop = final[0]  # no server reached: tell qmgr the site is failing
        return self.finish(req, final, relays, uses, conn_time)

    def _site_failure(self, last: client.SessionError | nexthop.RouteError | None,
                      key: str, sites: _Sites) -> DeliveryResult:
        """The result of recipients no server took. As Postfix's smtp_connect_inet, a
        hard lookup error (or loop) of a fallback relay, or of the relayhost, is a
        configuration problem: deferred (4.3.5), with a warning, not bounced."""
        result = _failure(last)
        if not isinstance(last, nexthop.RouteError) or result.status != STATUS_BOUNCED:
            return result
        if sites.fallback:
            where = param_name(self.protocol, "fallback_relay")
        elif not self.lmtp and self.relayhost and key.strip() == self.relayhost:
            where = "relayhost"
        else:
            return result
        log.warning(f"{where} configuration problem")
        return DeliveryResult.deferred(last.text, "4.3.5")

    def _take(self, i: int, outcome: client.Outcome, n: int, peer: client.Peer,
              session: client.Session, results: list[DeliveryResult | None],
              soft: dict[int, DeliveryResult]) -> None:
        """Recipient i's result from entry n of a transaction's outcome: final, or (a 4xx
        from the server) kept in ``soft`` while the next server may take it, as Postfix."""
        reply = outcome.replies[n]
        result = _result_of(reply, outcome.reasons[n], outcome.dsns[n], peer.name,
                            session.offers_dsn, self.assume_final)
        if reply is not None and result.status == STATUS_DEFERRED:
            soft[i] = result
        else:
            results[i] = result

    def finish(self, req: Request, results: list[DeliveryResult], relays: list[str],
               uses: list[int] | None = None, conn_time: float = 0.0) -> list[DeliveryResult]:
        """Log each recipient's result; one sent to a recipient who asked NOTIFY=SUCCESS
        (not passed on) names its relay, for the success notice's ``delivery via``."""
        now = time.time()
        for i, (rc, result) in enumerate(zip(req.recipients, results, strict=True)):
            log.info(log_line(req.queue_id, rc.address, rc.orig, relays[i], req.arrival_time,
                              req.active_time, req.start_time, result, now, conn_time,
                              uses[i] if uses else 0))
            if rc.notify & NOTIFY_SUCCESS and result.status == STATUS_SENT \
                    and not result.passed_on:
                results[i] = dataclasses.replace(result, relay=relays[i])
        return results

    # --- servers, sessions and the connection cache ------------------------------

    async def sessions(self, key: str, dests: list[nexthop.Destination],  # type: ignore[no-untyped-def]
                       policy: tls.Policy, sites: _Sites, plain_retry: str = ""):
        """Yield (peer, session, None) for each usable session, best server first, or
        (None, None, error) for a server or lookup that failed. The sites are the nexthop's
        (each of a list such as ``relayhost = [a]:587, [b]:587`` in turn, Postfix 3.5's)
        and then each smtp_fallback_relay, as Postfix's smtp_connect_inet: the fallback
        relays also after a lookup error of the nexthop, but not when its mail loops
        back to us or we are one of its MX hosts; ``sites`` says which is being tried,
        and a site whose sessions reached smtp_mx_session_limit (``exhausted``) makes way
        for the next. ``plain_retry``, the queue id or empty: whether a failed handshake
        at level may is tried again in plaintext (module docstring)."""
        sites.begin(fallback=False)
        cached = self.take_cached(key)
        if cached is not None:
            yield cached.peer, cached, None
            sites.plain_again = False  # a cached session's server is tried anew below
        routes: list[tuple[nexthop.Destination, tls.Policy]] = [(d, policy) for d in dests]
        for relay in self.fallback:
            try:  # a fallback relay has its own TLS policy, as in Postfix
                routes.append((nexthop.parse(relay, self.lmtp, self.default_port),
                               self.tls.policy(relay)))
            except (nexthop.RouteError, tls.PolicyError) as e:
                log.warning(f"{param_name(self.protocol, 'fallback_relay')} {relay}: {e.text}")
        for n, (site, site_policy) in enumerate(routes):
            if n:
                sites.begin(fallback=n >= len(dests))
            try:
                route = await nexthop.servers(site, self.policy)
            except nexthop.RouteError as e:
                yield None, None, e
                if e.dsn.endswith(".4.6") or e.text.startswith("unable to find primary"):
                    return  # as Postfix: the fallback would only make a loop worse
                continue
            peer_policy, domain = site_policy, site.host
            if site.path:  # as Postfix's smtp_connect_local: a required level stays
                domain = self.policy.myhostname
                if site_policy.level == "may":
                    log.warning("smtp_connect_local: opportunistic TLS encryption is not "
                                "appropriate for unix-domain destinations.")
                    peer_policy = tls.Policy()
            for peer in route.peers:
                if sites.exhausted:
                    break
                session, error = await self.open(peer, peer_policy, domain)
                if error is not None and error.tls_failed and peer_policy.level == "may" \
                        and plain_retry:  # as Postfix: plaintext to the same server
                    log.info(f"{plain_retry}: {error.text}")
                    session, error = await self.open(peer, tls.Policy(), domain)
                if error is not None:
                    yield peer, None, error
                    continue
                yield peer, session, None
                if sites.plain_again:  # as Postfix's RETRY_AS_PLAINTEXT
                    sites.plain_again = False
                    session, error = await self.open(peer, tls.Policy(), domain)
                    yield (peer, None, error) if error is not None else (peer, session, None)
            if route.found_self:
                return  # we are an MX host of the destination: no fallback relay

    async def open(self, peer: client.Peer, policy: tls.Policy, domain: str) -> tuple[
            client.Session | None, client.SessionError | None]:
        """A session past the greeting and EHLO (and STARTTLS), or why not."""
        try:
            session = await client.connect(peer, self.settings, policy, domain)
        except client.SessionError as e:
            return None, e
        try:
            await session.hello()
        except client.SessionError as e:
            session.close()
            return None, e
        except BaseException:  # a bug, or a cancel: no socket is left open
            session.close()
            raise
        return session, None

    def take_cached(self, key: str) -> client.Session | None:
        entries = self.cache.get(key)
        while entries:
            entry = entries.pop()
            if not entry.session.broken:
                return entry.session
        return None

    def caches(self, domain: str) -> bool:
        """Whether connections to this nexthop domain are kept, as Postfix's
        smtp_cache_policy: those of smtp_connection_cache_destinations always, the others
        with smtp_connection_cache_on_demand."""
        if self.cache_destinations:
            try:
                if self.cache_destinations.match(domain):
                    return True
            except TableError as e:
                log.warning(f"{self.cache_destinations.name}: {e}")
        return self.cache_on_demand

    async def release(self, key: str, session: client.Session, keep: bool,
                      cache: bool = True) -> None:
        """Return a session to the cache (after RSET, when ``cache``) or close it."""
        opened = session.opened
        if keep and cache and time.monotonic() - opened < self.reuse_limit and self.cache_idle > 0 \
                and await session.reset():
            self.cache.setdefault(key, []).append(_Cached(session, opened, time.monotonic()))
            return
        if keep:
            await session.quit()
        else:
            session.close()

    async def sweep(self) -> None:
        """Close cached connections idle for longer than the cache time limit. Each
        leaves the cache before its QUIT: a delivery taking it while QUIT awaits the
        reply would read the same stream (RuntimeError: readuntil() called while
        another coroutine is already waiting)."""
        now = time.monotonic()
        expired: list[_Cached] = []
        for key in list(self.cache):
            keep = []
            for entry in self.cache[key]:
                if now - entry.idle_since >= self.cache_idle or entry.session.broken:
                    expired.append(entry)
                else:
                    keep.append(entry)
            if keep:
                self.cache[key] = keep
            else:
                del self.cache[key]
        for entry in expired:
            await entry.session.quit()

    async def close_all(self) -> None:
        entries = [entry for cached in self.cache.values() for entry in cached]
        self.cache.clear()
        for entry in entries:
            await entry.session.quit()


def _result_of(reply: client.Reply | None, reason: str, status: str, server: str = "",
               offers_dsn: bool = False, assume_final: bool = False) -> DeliveryResult:
    """A recipient's result from the client's verdict (``Outcome``): its reply (None: the
    connection broke mid-transaction), reason and enhanced status, which alone decides
    (2: sent, 5: bounced, else deferred; a 2xx reply can come with a failure, as a 250
    to DATA), with the DSN details: the server and its reply; a success is "relayed"
    ("delivered" with assume_final from a server without DSN), and a server that
    announced DSN took the sender's NOTIFY over (as Postfix's smtp)."""
    if reply is None:
        return DeliveryResult.deferred(reason, "4.4.2")
    sent = status.startswith("2")
    verdict = STATUS_SENT if sent else STATUS_BOUNCED if status.startswith("5") \
        else STATUS_DEFERRED
    success = ACTION_DELIVERED if assume_final and not offers_dsn else ACTION_RELAYED
    return DeliveryResult(verdict, status, reason,
                          action=success if sent else "", mta=server,
                          diag=str(reply), passed_on=sent and offers_dsn)


def _source_addresses(config: Config, protocol: str) -> dict[int, str]:
    """{family: the address to connect from}: smtp_bind_address and smtp_bind_address6
    (``[addr]`` or ``addr``; anything else is fatal, as Postfix's smtp_connect_addr), else
    inet_interfaces' only non-loopback address of the family."""
    source = networks.source_addresses(config)
    for family, suffix, version in ((socket.AF_INET, "bind_address", 4),
                                    (socket.AF_INET6, "bind_address6", 6)):
        name = param_name(protocol, suffix)
        text = config.get(name).strip()
        if not text:
            continue
        bare = text[1:-1] if text.startswith("[") and text.endswith("]") else text
        try:
            addr = ipaddress.ip_address(bare)
        except ValueError:
            addr = None
        if addr is None or addr.version != version:
            log.fatal(f"bad {name} parameter: {printable(text)}")
        source[family] = str(addr)
    return source


def _orcpt(rc: Recipient) -> str:
    """ORCPT as Postfix sends it: the recorded one, else rfc822; and the original address."""
    if rc.dsn_orcpt:
        return rc.dsn_orcpt
    return f"rfc822;{quote_822_local(rc.orig)}" if rc.orig else ""


def _route_result(e: nexthop.RouteError) -> DeliveryResult:
    return (DeliveryResult.bounced if e.permanent else DeliveryResult.deferred)(e.text, e.dsn)


def _failure(error: client.SessionError | nexthop.RouteError | None) -> DeliveryResult:
    if error is None:
        return DeliveryResult.deferred("no server to deliver to", "4.4.1")
    if isinstance(error, nexthop.RouteError):
        return _route_result(error)
    if error.permanent:
        if error.reply is not None:
            return DeliveryResult(STATUS_BOUNCED, error.dsn, error.text, diag=str(error.reply))
        return DeliveryResult.bounced(error.text, error.dsn)
    return DeliveryResult.deferred(error.text, error.dsn if error.dsn[0] == "4" else "4.4.2")


def protocol_of(program: str, service: str) -> str:
    return "lmtp" if "lmtp" in (program, service) else "smtp"


# The server skeleton's callbacks (pymailsys.server, which sits above this layer;
# ``ctx`` is its Context).

async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, ctx: Any) -> None:
    agent: Agent = ctx.state["agent"]
    await serve_pipelined(reader, writer, agent.handle)


async def start(ctx: Any) -> None:
    os.umask(0o077)
    agent = Agent(ctx.config, ctx.spool, protocol_of(ctx.program, ctx.service))
    ctx.state["agent"] = agent

    async def sweeper() -> None:
        while not ctx.stopping.is_set():
            await asyncio.sleep(CACHE_SWEEP)
            await agent.sweep()

    ctx.state["sweeper"] = asyncio.ensure_future(sweeper())


async def stop(ctx: Any) -> None:
    task = ctx.state.get("sweeper")
    if task is not None:
        task.cancel()
    agent: Agent | None = ctx.state.get("agent")
    if agent is not None:
        await agent.close_all()
        await agent.flush.close()
