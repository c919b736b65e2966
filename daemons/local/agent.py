"""The local agent's state and its dispatch: one request in, one logged result out.

``LocalAgent`` holds the settings read once from main.cf, the alias tables,
the cleanup client and the Maildir delivery markers (in
``$queue_directory/$process_id_directory/local-markers``, local's own directory,
``mailbox.open_markers``). ``handle`` turns one
delivery request into one reply and never raises (a bug defers the recipient
instead of stalling qmgr's pipelined connection). ``deliver`` runs Postfix's
local(8) for one recipient and everything it expands to, in one ``Session``:
``deliver_recipient`` (duplicates, the Delivered-To loop
check), ``deliver_switch`` (``alias_maps`` through ``alias``, forwarding for
members of .forward, :include: and owner- lists, the ``.forward`` through
``forward``, else ``deliver_mailbox``). Each level's attributes are a
``Level`` passed down by value. Every result is logged once
(``Session.done``), one line per member; the reply is ``Session.outcome``.
"""

from __future__ import annotations

import os
import pwd
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import cached_property

from pymailsys.daemons.local import alias, biff, forward, results, unknown
from pymailsys.daemons.local import mailbox as user_mailbox

from pymailsys import log, passwd, privileges, server
from pymailsys.address.resolve import resolver_for
from pymailsys.address.rewrite import CONTEXT_LOCAL, RewriteContext
from pymailsys.config import split_list
from pymailsys.delivery import mailbox
from pymailsys.delivery.agent import (
    DEL_REQ_FLAG_SUCCESS,
    ContentError,
    DeliveryRequest,
    DeliveryResult,
    QueueContent,
    log_line,
    message_attrs,
    refusal,
    request_attrs,
)
from pymailsys.dsn import NOTIFY_SUCCESS
from pymailsys.ipc.attr import AttrClient, AttrList, AttrPool, AttrValue, ProtocolError
from pymailsys.ipc.services import STATUS_BOUNCED, STATUS_DEFERRED, STATUS_SENT
from pymailsys.maps import Maps, TableError
from pymailsys.maps.search import split_extension
from pymailsys.queue import spool as queue_mod

_SERVICE_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # a master.cf unix service
RELAY = "local"  # the relay= of local's log lines, and of its success notices
CONNECT_TIMEOUT = 10.0  # seconds a connect to cleanup or a transport waits for a full backlog


@dataclass
class Recipient:
    address: str  # as in the request
    user: str  # local part without extension, lower case
    extension: str
    localpart: str  # user[+extension], lower case
    domain: str
    delivered: str = ""  # the Delivered-To address (empty: the address itself)

    @property
    def has_extension(self) -> bool:
        """Whether the local part was split (``user+``: an empty extension, which Postfix
        still exports as EXTENSION and expands as $extension)."""
        return len(self.localpart) > len(self.user)

    @cached_property
    def account(self) -> pwd.struct_passwd | None:
        """The UNIX account named by ``user`` (None: there is none), taken once per
        recipient of a request: its .forward and its mailbox see the same account
        (``passwd.ACCOUNTS``: the next request sees any change to /etc/passwd)."""
        return passwd.ACCOUNTS.find(self.user)


@dataclass(frozen=True)
class Level:
    """Postfix's per-level delivery attributes, passed down by value as its msg_attr
    and usr_attr are: a deeper level never changes what a shallower one sees."""

    req: DeliveryRequest  # rcpt: the address at this level; orig_rcpt: as received
    delivered: str  # Delivered-To (frozen_delivered_to: the request's recipient)
    sender: str  # the envelope sender of forwarded copies (an owner- alias changes it)
    level: int = 0
    exp_type: str = ""  # alias, forward, include ("" for the request's recipient)
    exp_from: str = ""  # the alias or user being expanded (not looked up again)
    owner: str = ""  # set: members that are not this user are forwarded, not delivered
    rights: privileges.UserIds | None = None  # for commands, files (None: default_privs,
    # a root-owned alias table's)
    unmatched: str = ""  # "+ext": spliced into this expansion's addresses (Postfix's
    # msg_attr.unmatched, per propagate_unmatched_extensions)

    def deeper(self, by: int = 1, **changes: object) -> Level:
        """This level ``by`` deeper (Postfix's state.level++ on entering deliver_recipient,
        deliver_switch, deliver_alias, deliver_include, deliver_dotforward and
        deliver_resolve_tree; 0: the same level, other attributes), with ``changes``."""
        # not dataclasses.replace: this runs several times per delivery, at a third the cost
        return Level(**{**self.__dict__, "level": self.level + by, **changes})


class Session:
    """What one request's expansion shares across its levels: the message, the
    Delivered-To loop keys, the duplicate filter (Postfix's been_here, case-folded,
    remembering at most duplicate_filter_limit keys, 0: all), the addresses to forward (grouped by
    Delivered-To and sender, as Postfix's forward_append) and every result."""

    def __init__(self, req: DeliveryRequest, content: QueueContent,
                 log_result: Callable[[DeliveryRequest, DeliveryResult], DeliveryResult],
                 loop_keys: set[str], dup_limit: int) -> None:
        self.req = req
        self.content = content
        self.log_result = log_result
        self.loop_keys = loop_keys
        self.dup_limit = dup_limit
        self.seen: set[str] = set()
        self.forwards: dict[tuple[str, str], list[tuple[str, str]]] = {}
        self.results: list[tuple[DeliveryRequest, DeliveryResult]] = []
        self.expanded = ""  # the action of an alias's success notice (NOTIFY=SUCCESS)

    def been_here(self, key: str) -> bool:
        """Whether key was seen in this request (case-folded, as Postfix's local
        been_here_init(..., BH_FLAG_FOLD)); duplicate_filter_limit 0 remembers all."""
        key = key.lower()
        if key in self.seen:
            return True
        if self.dup_limit <= 0 or len(self.seen) < self.dup_limit:
            self.seen.add(key)
        return False

    def done(self, req: DeliveryRequest, result: DeliveryResult) -> None:
        """Log a result (Postfix's per-recipient line) and keep it."""
        self.record(req, self.log_result(req, result))

    def record(self, req: DeliveryRequest, result: DeliveryResult) -> None:
        """Keep a result that is already logged (by another agent)."""
        self.results.append((req, result))

    def outcome(self) -> DeliveryResult:
        """The one result for the request's recipient: any deferral, else any bounce,
        else the first result (``alias expanded`` when an alias of the recipient's
        expanded for a NOTIFY=SUCCESS notice: qmgr writes only its trace entry); ``rcpt`` names the member it concerns and ``also`` the
        other members with that status (deferred or bounced): each is a status-log
        entry "expanded from" the request's original recipient, as Postfix's local
        appends one per member."""
        for status in (STATUS_DEFERRED, STATUS_BOUNCED, STATUS_SENT):
            members = [(req, r) for req, r in self.results if r.status == status]
            if members:
                if status == STATUS_SENT and self.expanded:  # the alias's, as Postfix
                    return DeliveryResult(STATUS_SENT, "2.0.0", "alias expanded",
                                          self.expanded)
                (req, result), *more = members
                also = () if status == STATUS_SENT else \
                    tuple((m.rcpt, r.dsn, r.reason) for m, r in more)
                member = self.member(req)
                if (member, also) == (result.rcpt, result.also):
                    return result  # the common case: one result, the request's own
                return replace(result, rcpt=member, also=also)
        return DeliveryResult.sent("delivered")  # nothing new: every target a duplicate

    def member(self, req: DeliveryRequest) -> str:
        """The member a result concerns; "" for the request's own recipient."""
        return req.rcpt if req.rcpt != self.req.rcpt else ""


@dataclass
class UserTable:
    """One of local(8)'s per-user tables (mailbox_transport_maps, mailbox_command_maps,
    fallback_transport_maps), asked for the user name as Postfix asks them
    (``maps_find(table, msg_attr.user)``: no domain, no extension). ``find`` gives the
    value, None (not found) or TableError, after a warning: a table that cannot be
    opened or cannot answer defers the mail, never counts as not found."""

    param: str
    maps: Maps | None
    error: str = ""

    @classmethod
    def open(cls, param: str, opener: Callable[[], Maps]) -> UserTable:
        try:
            return cls(param, opener())
        except TableError as e:
            log.warning(f"{param}: {e}")
            return cls(param, None, str(e))

    def find(self, user: str) -> str | None:
        if self.maps is None:
            log.warning(f"{self.param} lookup of {user}: {self.error}")
            raise TableError(self.error)
        try:
            return self.maps.find(user)
        except TableError as e:
            log.warning(f"{self.param} lookup of {user}: {e}")
            raise


class LocalAgent:
    def __init__(self, ctx: server.Context) -> None:
        self.ctx = ctx
        cfg = ctx.config
        self.config = cfg
        self.spool = ctx.spool
        self.spool.keep_queue_dirs()  # one openat per queue file
        self.delimiters = cfg.get("recipient_delimiter")
        self.home_mailbox = cfg.get("home_mailbox")
        # raw: $home, $user, $extension... are the recipient's, expanded per delivery
        self.forward_path = tuple(split_list(cfg.raw("forward_path") or ""))
        self.forward_filter = frozenset(cfg.get("forward_expansion_filter"))
        self.mailbox_command = cfg.raw("mailbox_command") or ""
        self.spool_dir = cfg.get("mail_spool_directory")
        self.locks = cfg.get_list("mailbox_delivery_lock")
        self.lock_attempts = cfg.get_int("deliver_lock_attempts")
        self.lock_delay = float(cfg.get_time("deliver_lock_delay"))
        self.stale = float(cfg.get_time("stale_lock_time"))
        self.size_limit = cfg.get_size("mailbox_size_limit")
        self.strict_owner = cfg.get_bool("strict_mailbox_ownership")
        self.command_time_limit = float(cfg.get_time("command_time_limit"))
        self.command_shell = cfg.get("local_command_shell").split()  # [] = Postfix's default
        self.command_filter = frozenset(cfg.get("command_expansion_filter"))
        self.allow_commands = {x.lower() for x in cfg.get_list("allow_mail_to_commands")}
        self.allow_files = {x.lower() for x in cfg.get_list("allow_mail_to_files")}
        self.propagate = {x.lower() for x in cfg.get_list("propagate_unmatched_extensions")}
        self.hostname = cfg.get("myhostname")
        self.service = ctx.service  # a member resolving to this transport is delivered here
        self.rewrite_context = RewriteContext.from_config(cfg, CONTEXT_LOCAL)
        self.resolver = resolver_for(cfg)
        self.dup_limit = cfg.get_int("duplicate_filter_limit")
        self.keep_orcpt = cfg.get_bool("enable_original_recipient")  # X-Original-To:
        self.root = privileges.running_as_root()
        self.me = privileges.current_user()
        self.alias_error: str | None = None
        try:
            self.aliases: Maps | None = Maps(cfg, "alias_maps", regsub=False)
        except TableError as e:
            self.aliases = None
            self.alias_error = str(e)
            log.warning(f"alias_maps: {e}")
        # connections into public/ and private/ (mail_owner's directories) are made
        # with mail_owner's rights: a link planted there leads root nowhere
        self.ipc_rights = privileges.mail_owner(cfg) if self.root else None
        self.cleanup = AttrPool(self.spool.public(cfg.get("cleanup_service_name")), timeout=300,
                                connector=self.connect)
        self.mailbox_transport = cfg.get("mailbox_transport").strip()
        self.fallback_transport = cfg.get("fallback_transport").strip()
        self.mailbox_transport_maps = UserTable.open(
            "mailbox_transport_maps", lambda: Maps(cfg, "mailbox_transport_maps", regsub=False))
        self.mailbox_command_maps = UserTable.open(
            "mailbox_command_maps", lambda: Maps(cfg, "mailbox_command_maps", regsub=False))
        self.fallback_transport_maps = UserTable.open(
            "fallback_transport_maps", lambda: Maps(cfg, "fallback_transport_maps", regsub=False))
        # raw: $user, $local, $extension... are the recipient's, expanded per delivery
        self.luser_relay = (cfg.raw("luser_relay") or "").strip()
        self.ipc_timeout = float(cfg.get_time("ipc_timeout"))
        self.transports: dict[str, AttrClient] = {}
        self.markers = mailbox.open_markers(cfg, "local-markers")
        self.biff = biff.Biff(cfg)  # comsat notices after mbox deliveries

    def connect(self, path: str) -> socket.socket:
        """A connection to a mail system socket, made with mail_owner's rights when
        root (``privileges.connect_unix``)."""
        return privileges.connect_unix(path, self.ipc_rights, CONNECT_TIMEOUT)

    # --- the service ------------------------------------------------------------

    async def handle(self, attrs: AttrList) -> list[tuple[str, AttrValue]]:
        try:
            return await self._handle(attrs)
        except Exception as e:  # a bug must not stall the pipelined connection
            log.error(f"local: unexpected error: {e!r}")
            return DeliveryResult.deferred("local delivery agent error").reply()

    async def _handle(self, attrs: AttrList) -> list[tuple[str, AttrValue]]:
        try:
            count = len(attrs.all("rcpt"))
            if count > 1:  # local_destination_recipient_limit must stay 1
                raise ValueError(f"{count} recipients: local delivers one per request")
            req = DeliveryRequest.from_attrs(attrs)
        except (ProtocolError, ValueError) as e:
            return refusal(attrs, e, 1)
        path = self.spool.path(req.queue_name, req.queue_id)
        try:
            fd = self.spool.open_queue_file(req.queue_name, req.queue_id, writable=True)
        except queue_mod.QueueAccessError as e:
            log.warning(f"{req.queue_id}: {e}")
            return self.done(req, DeliveryResult.unreadable()).reply()
        try:
            content = QueueContent(path, req.data_offset, fd=fd, rcpt_offsets=(req.rcpt_offset,))
        except ContentError as e:
            log.warning(f"{req.queue_id}: {e}")
            return self.done(req, DeliveryResult.unreadable(e)).reply()
        with content:
            try:
                result = await self.deliver(req, content)
            except ContentError as e:
                log.warning(f"{req.queue_id}: {e}")
                result = self.done(req, DeliveryResult.unreadable(e))
            content.mark_sent(req.queue_id, req.rcpt, req.rcpt_offset, req.dsn_notify, req.flags,
                              result)
        if req.dsn_notify & NOTIFY_SUCCESS and result.status == STATUS_SENT:
            result = replace(result, relay=RELAY)  # the success notice names who delivered
        return result.reply()

    def done(self, req: DeliveryRequest, result: DeliveryResult,
             relay: str = RELAY) -> DeliveryResult:
        """Log a delivery attempt's result (Postfix's per-recipient line) and return it."""
        log.info(log_line(req.queue_id, req.rcpt, req.orig_rcpt, relay, req.arrival_time,
                          req.active_time, req.start_time, result))
        return result

    def parse_recipient(self, address: str, delivered: str = "",
                        queue_id: str | None = None) -> Recipient:
        """The recipient's local part (lower case) split as Postfix's local splits it
        (``split_addr``: postmaster, MAILER-DAEMON, double-bounce, and owner-NAME and
        NAME-request when ``-`` is a delimiter, stay whole). An extension with a
        ``/`` is dropped, and the local part cut to the user, with Postfix's warning
        (when ``queue_id`` is given: once per recipient): it would name a path in
        $EXTENSION, forward_path, or a command's folder."""
        local, at, domain = address.rpartition("@")
        if not at:
            local, domain = address, ""
        localpart = local.lower()
        user, extension = localpart, ""
        if self.delimiters:
            user, found = split_extension(localpart, self.delimiters, trailing=True)
            if found is not None and "/" in found:
                if queue_id is not None:
                    log.warning(f"{queue_id}: address with illegal extension: {localpart}")
                localpart, found = user, None
            extension = found or ""
        return Recipient(address, user, extension, localpart, domain.lower(), delivered)

    def prepended(self, req: DeliveryRequest, rcpt: Recipient, from_line: bool) -> bytes:
        """The From_ line (optional) and the headers every delivery prepends."""
        headers = mailbox.prepended_headers(
            req.sender, (req.orig_rcpt or req.rcpt) if self.keep_orcpt else None,
            rcpt.delivered or req.rcpt)
        return (mailbox.from_line(req.sender) if from_line else b"") + headers

    def file_user(self, rights: privileges.UserIds | None = None) -> privileges.UserIds:
        """The rights for commands and files: a root-owned alias table's (rights None)
        are default_privs; a user's (.forward, mailbox_command, an alias table or
        :include: file the user owns) are the user's, except that uid 0 becomes
        default_privs' uid and gid 0 default_privs' group, each on its own (Postfix's
        command.c and file.c: neither id stays privileged; an account with uid 0 and
        group 1002 runs as nobody with group 1002)."""
        if not self.root:
            return self.me
        if rights is None:
            return privileges.default_privs(self.config)
        if rights.uid == 0 or rights.gid == 0:
            nobody = privileges.default_privs(self.config)
            return replace(rights, uid=rights.uid or nobody.uid, gid=rights.gid or nobody.gid)
        return rights

    # --- Postfix's order -------------------------------------------------------------

    async def deliver(self, req: DeliveryRequest, content: QueueContent) -> DeliveryResult:
        """Deliver one recipient of the request and everything it expands to; the one
        result for qmgr (``Session.outcome``)."""
        loop_keys = set()
        if content.headers_may_contain(b"delivered-to:"):
            for h in content.header_lines():
                if h[:13].lower() == b"delivered-to:":
                    loop_keys.add(h[13:].strip().lower().decode("utf-8", "surrogateescape"))
        session = Session(req, content, self.done, loop_keys, self.dup_limit)
        await self.deliver_recipient(session, Level(req, req.rcpt, req.sender))
        await alias.forward_finish(self, session)
        return session.outcome()

    async def deliver_recipient(self, s: Session, lvl: Level) -> None:
        """Postfix's deliver_recipient: duplicates, the Delivered-To loop check, then
        ``deliver_switch``."""
        lvl = lvl.deeper()
        address = lvl.req.rcpt
        # no nesting limit here, as Postfix 3.7: every way back here passes deliver_alias's
        # (an alias database loop) or an :include:'s, or a .forward that is read only once
        if s.been_here(f"recipient {lvl.level} {address.lower()}"):
            return
        if mailbox.delivered_to_key(address) in s.loop_keys:
            s.done(lvl.req, DeliveryResult.bounced(f"mail forwarding loop for {address}",
                                                   "5.4.6"))
            return
        rcpt = self.parse_recipient(address, lvl.delivered, lvl.req.queue_id)
        if not rcpt.user:
            s.done(lvl.req, DeliveryResult.bounced(f'null username in "{address}"', "5.1.3"))
            return
        await self.deliver_switch(s, lvl, rcpt)

    async def deliver_switch(self, s: Session, lvl: Level, rcpt: Recipient) -> None:
        """``\\user``: the mailbox; else alias_maps (``user+extension``, then ``user``);
        members of a .forward, an :include: or an owner- list that are not this user are
        forwarded; else the .forward file, else the mailbox. An extension that the alias
        or .forward found did not match is added to their addresses when
        propagate_unmatched_extensions lists ``alias`` or ``forward`` (and ``include``
        for an :include: in them), as Postfix's local."""
        lvl = lvl.deeper(unmatched="")
        if rcpt.address.startswith("\\"):
            plain = rcpt.address[1:]
            lvl = replace(lvl, req=replace(lvl.req, rcpt=plain))
            await self.deliver_mailbox(s, lvl, self.parse_recipient(plain, lvl.delivered,
                                                                    lvl.req.queue_id))
            return
        if self.alias_error is not None:
            s.done(lvl.req, DeliveryResult.deferred("alias database unavailable"))
            return
        names = [rcpt.localpart, rcpt.user] if rcpt.has_extension else [rcpt.localpart]
        for name in names:
            if self.aliases is None or name == lvl.exp_from:
                continue
            try:
                found = self.aliases.find_table(name)
            except TableError as e:
                log.warning(f"alias_maps lookup of {name}: {e}")
                s.done(lvl.req, DeliveryResult.deferred("alias database unavailable"))
                return
            if found is not None:
                # found for the bare user: its members get the extension, when asked to
                unmatched = rcpt.localpart[len(rcpt.user):] if (
                    name != rcpt.localpart and alias.ALIAS in self.propagate) else ""
                await alias.deliver_alias(self, s, lvl, name, *found, unmatched=unmatched)
                return
        if (lvl.owner and lvl.owner != rcpt.user) or lvl.exp_type == alias.INCLUDE:
            alias.indirect(s, lvl)
            return
        if self.forward_path and await forward.deliver(self, s, lvl, rcpt):
            return
        await self.deliver_mailbox(s, lvl, rcpt)

    async def deliver_mailbox(self, s: Session, lvl: Level, rcpt: Recipient) -> None:
        """Postfix's deliver_mailbox, once per request and local part: a transport from
        mailbox_transport_maps or mailbox_transport, for every recipient; else, for a
        UNIX account, its mailbox (``mailbox``: mailbox_command_maps, mailbox_command,
        home_mailbox, the spool); else ``unknown``."""
        if s.been_here(f"mailbox {rcpt.localpart}"):
            return
        if await self.delegate(s, lvl, rcpt, self.mailbox_transport_maps,
                               self.mailbox_transport):
            return
        if rcpt.account is None:
            await unknown.deliver(self, s, lvl, rcpt)
        else:
            s.done(lvl.req, await user_mailbox.deliver(self, lvl.req, rcpt, s.content))

    async def delegate(self, s: Session, lvl: Level, rcpt: Recipient, table: UserTable,
                       transport: str) -> bool:
        """Hand the recipient to the transport that ``table`` gives for the user name,
        else to ``transport`` (``pass_to``); False when there is none. A table that
        cannot answer defers the recipient."""
        try:
            transport = table.find(rcpt.user) or transport
        except TableError:
            s.done(lvl.req, results.TABLE_FAILURE)
            return True
        if not transport:
            return False
        s.record(lvl.req, await self.pass_to(transport, lvl.req))
        return True

    async def pass_to(self, spec: str, req: DeliveryRequest) -> DeliveryResult:
        """Hand the recipient to another delivery agent (Postfix's deliver_pass): its
        reply is the result, and it has logged the delivery; failing to reach it defers
        (``relay=none``, as Postfix logs it). Logs Postfix's ``passing <ADDR> to
        transport=NAME`` first.
        The transport must be a plain service name (a table value can come from a
        regexp over the recipient: no path reaches private/), and only services whose
        socket exists are kept open, so the open clients stay within master.cf's."""
        transport, _, nexthop = spec.partition(":")
        if not _SERVICE_NAME_RE.fullmatch(transport):
            log.warning(f"{req.queue_id}: invalid transport name: {transport!r}")
            return self.done(req, results.CONFIG_ERROR)
        log.info(f"{req.queue_id}: passing <{log.address(req.rcpt)}> to transport={transport}")
        unavailable = DeliveryResult.deferred("mail transport unavailable")
        client = self.transports.get(transport)
        if client is None:
            path = self.spool.private(transport)
            if not os.path.exists(path):
                return self.done(req, unavailable, relay="none")
            client = AttrClient(path, timeout=self.ipc_timeout, hello=transport,
                                connector=self.connect)
            self.transports[transport] = client
        # without DEL_REQ_FLAG_SUCCESS: the other agent does not mark the recipient done
        # in the queue file; local does, once every address it expanded to is delivered
        common = message_attrs(req.queue_name, req.queue_id, req.data_offset,
                               req.content_size, req.arrival_time, req.active_time,
                               req.sender, req.flags & ~DEL_REQ_FLAG_SUCCESS)
        attrs = request_attrs(common, nexthop or req.nexthop, req.rcpt, req.orig_rcpt,
                              req.rcpt_offset, req.dsn_notify, req.dsn_orcpt)
        try:
            reply = await client.request(attrs)
        except (ProtocolError, OSError):
            return self.done(req, unavailable, relay="none")
        return DeliveryResult.from_attrs(reply)
