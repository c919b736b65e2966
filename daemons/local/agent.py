"""The local agent's state and its dispatch: one request in, one logged result out.

``LocalAgent`` holds the settings read once from main.cf, the alias tables,
the cleanup client and the Maildir delivery markers (kept as mail_owner in
``$data_directory/local-markers``: that directory is mail_owner's, so root
never creates, reads or removes anything in it). ``handle`` turns one
delivery request into one reply and never raises (a bug defers the recipient
instead of stalling qmgr's pipelined connection). ``deliver`` runs Postfix's
order for one recipient: the Delivered-To loop check, ``alias_maps``
(``alias``), then the account (``deliver_user``: its ``.forward``
(``forward``), else its mailbox (``mailbox``)). Every result a path returns
is logged by ``done``, once per delivery attempt, as Postfix logs one line per
alias member.
"""

from __future__ import annotations

import contextlib
import os
import pwd
from collections.abc import Iterator
from dataclasses import dataclass

from pymailsys.daemons.local import alias, forward
from pymailsys.daemons.local import mailbox as user_mailbox

from pymailsys import log, privileges, server
from pymailsys.delivery import mailbox
from pymailsys.delivery.agent import (
    ContentError,
    DeliveryRequest,
    DeliveryResult,
    QueueContent,
    log_line,
    message_attrs,
    request_attrs,
)
from pymailsys.ipc.attr import AttrClient, AttrList, AttrPool, ProtocolError
from pymailsys.ipc.services import CLEANUP
from pymailsys.maps import Maps, TableError
from pymailsys.queue import spool as queue_mod


@dataclass
class Recipient:
    address: str  # as in the request
    user: str  # local part without extension, lower case
    extension: str
    localpart: str  # user[+extension], lower case
    domain: str


class LocalAgent:
    def __init__(self, ctx: server.Context) -> None:
        self.ctx = ctx
        cfg = ctx.config
        self.config = cfg
        self.spool = ctx.spool
        self.delimiters = cfg.get("recipient_delimiter")
        self.home_mailbox = cfg.get("home_mailbox")
        # raw: $home, $user, $extension... are the recipient's, expanded per delivery
        self.forward_path = cfg.raw("forward_path") or ""
        self.forward_filter = set(cfg.get("forward_expansion_filter"))
        self.mailbox_command = cfg.raw("mailbox_command") or ""
        self.spool_dir = cfg.get("mail_spool_directory")
        self.locks = cfg.get_list("mailbox_delivery_lock")
        self.lock_attempts = cfg.get_int("deliver_lock_attempts")
        self.lock_delay = float(cfg.get_time("deliver_lock_delay"))
        self.stale = float(cfg.get_time("stale_lock_time"))
        self.size_limit = cfg.get_size("mailbox_size_limit")
        self.strict_owner = cfg.get_bool("strict_mailbox_ownership")
        self.command_time_limit = float(cfg.get_time("command_time_limit"))
        self.allow_commands = {x.lower() for x in cfg.get_list("allow_mail_to_commands")}
        self.allow_files = {x.lower() for x in cfg.get_list("allow_mail_to_files")}
        self.hostname = cfg.get("myhostname")
        self.destinations = {d.lower() for d in cfg.get_list("mydestination")}
        self.root = privileges.running_as_root()
        self.me = privileges.current_user()
        self.alias_error: str | None = None
        try:
            self.aliases: Maps | None = Maps(cfg, "alias_maps")
        except TableError as e:
            self.aliases = None
            self.alias_error = str(e)
            log.warning(f"alias_maps: {e}")
        self.cleanup = AttrPool(self.spool.public(CLEANUP), timeout=300)
        self.mailbox_transport = cfg.get("mailbox_transport").strip()
        self.fallback_transport = cfg.get("fallback_transport").strip()
        self.ipc_timeout = float(cfg.get_time("ipc_timeout"))
        self.transports: dict[str, AttrClient] = {}
        self.markers: mailbox.MarkerStore | None = None
        marker_dir = os.path.join(cfg.get("data_directory"), "local-markers")
        try:
            # kept as data_directory's owner: root never works in mail_owner's directory
            self.marker_owner = privileges.mail_owner(cfg) if self.root else self.me
            markers = mailbox.MarkerStore(marker_dir, self.as_marker_owner)
            markers.create()
            self.markers = markers
        except (OSError, privileges.PrivilegeError) as e:
            log.warning(f"delivery markers in {marker_dir}: {e}; Maildir redelivery after a "
                        f"crash may store a second copy")

    @contextlib.contextmanager
    def as_marker_owner(self) -> Iterator[None]:
        """Act as mail_owner for marker work, from root or from a recipient's rights."""
        with privileges.as_self(), privileges.as_user(self.marker_owner.uid,
                                                      self.marker_owner.gid):
            yield

    # --- the service ------------------------------------------------------------

    async def handle(self, attrs: AttrList) -> dict[str, str]:
        try:
            return await self._handle(attrs)
        except Exception as e:  # a bug must not stall the pipelined connection
            log.error(f"local: unexpected error: {e!r}")
            return DeliveryResult.deferred("local delivery agent error").reply()

    async def _handle(self, attrs: AttrList) -> dict[str, str]:
        try:
            count = len(attrs.all("rcpt"))
            if count > 1:  # local_destination_recipient_limit must stay 1
                raise ValueError(f"{count} recipients: local delivers one per request")
            req = DeliveryRequest.from_attrs(attrs)
        except (ProtocolError, ValueError) as e:
            log.warning(f"bad delivery request: {e}")
            return DeliveryResult.deferred("bad delivery request").reply()
        path = self.spool.path(req.queue_name, req.queue_id)
        try:
            fd = self.spool.open_queue_file(req.queue_name, req.queue_id)
        except queue_mod.QueueAccessError as e:
            log.warning(f"{req.queue_id}: {e}")
            return self.done(req, DeliveryResult.deferred("cannot read queue file")).reply()
        try:
            content = QueueContent(path, req.data_offset, fd=fd)
        except ContentError as e:
            log.warning(f"{req.queue_id}: {e}")
            return self.done(req, DeliveryResult.deferred("cannot read queue file")).reply()
        with content:
            try:
                result = await self.deliver(req, content)
            except ContentError as e:
                log.warning(f"{req.queue_id}: {e}")
                result = self.done(req, DeliveryResult.deferred("cannot read queue file"))
        return result.reply()

    def done(self, req: DeliveryRequest, result: DeliveryResult) -> DeliveryResult:
        """Log a delivery attempt's result (Postfix's per-recipient line) and return it."""
        log.info(log_line(req.queue_id, req.rcpt, req.orig_rcpt, "local", req.arrival_time,
                          req.active_time, req.start_time, result))
        return result

    def parse_recipient(self, address: str) -> Recipient:
        local, at, domain = address.rpartition("@")
        if not at:
            local, domain = address, ""
        localpart = local.lower()
        user, extension = localpart, ""
        if self.delimiters:
            for i, ch in enumerate(localpart):
                if ch in self.delimiters and i > 0:
                    user, extension = localpart[:i], localpart[i + 1:]
                    break
        return Recipient(address, user, extension, localpart, domain.lower())

    def prepended(self, req: DeliveryRequest, from_line: bool) -> bytes:
        """The From_ line (optional) and the headers every delivery prepends."""
        headers = mailbox.prepended_headers(req.sender, req.orig_rcpt or req.rcpt, req.rcpt)
        return (mailbox.from_line(req.sender) if from_line else b"") + headers

    def file_user(self, rights: privileges.UserIds | None = None) -> privileges.UserIds:
        """The rights for commands and files: an alias's (rights None) are default_privs;
        a user's (.forward, mailbox_command) are the user's, except that uid 0 becomes
        default_privs too."""
        if not self.root:
            return self.me
        if rights is None or rights.uid == 0:
            return privileges.default_privs(self.config)
        return rights

    # --- Postfix's order -------------------------------------------------------------

    async def deliver(self, req: DeliveryRequest, content: QueueContent) -> DeliveryResult:
        rcpt = self.parse_recipient(req.rcpt)
        loop_key = req.rcpt.lower().encode("utf-8", "surrogateescape")
        for h in content.header_lines():
            if h[:13].lower() == b"delivered-to:" and h[13:].strip().lower() == loop_key:
                return self.done(req, DeliveryResult.bounced(
                    f"mail forwarding loop for {req.rcpt}", "5.4.6"))
        if self.alias_error is not None:
            return self.done(req, DeliveryResult.deferred("alias database unavailable"))
        value = None
        if self.aliases:
            try:
                if rcpt.extension:
                    value = self.aliases.find(rcpt.localpart)
                if value is None:
                    value = self.aliases.find(rcpt.user)
            except TableError as e:
                log.warning(f"alias_maps lookup of {rcpt.user}: {e}")
                return self.done(req, DeliveryResult.deferred("alias database unavailable"))
        if value is not None:
            return await alias.expand(self, req, rcpt, value, content)
        return await self.deliver_user(req, rcpt, content)

    async def deliver_user(self, req: DeliveryRequest, rcpt: Recipient, content: QueueContent,
                           use_forward: bool = True) -> DeliveryResult:
        """The account's .forward file if it has one (unless use_forward is false), else
        its mailbox; the result is logged."""
        if use_forward and self.forward_path:
            result = await forward.deliver(self, req, rcpt, content)
            if result is not None:
                return result
        if self.mailbox_transport:
            return await self.pass_to(self.mailbox_transport, req)
        if self.fallback_transport and not _is_account(rcpt.user):
            return await self.pass_to(self.fallback_transport, req)
        return self.done(req, await user_mailbox.deliver(self, req, rcpt, content))

    async def pass_to(self, spec: str, req: DeliveryRequest) -> DeliveryResult:
        """Hand the recipient to another delivery agent (Postfix's deliver_pass): its
        reply is the result, and it has logged the delivery; failing to reach it defers."""
        transport, _, nexthop = spec.partition(":")
        client = self.transports.get(transport)
        if client is None:
            client = AttrClient(self.spool.private(transport), timeout=self.ipc_timeout)
            self.transports[transport] = client
        common = message_attrs(req.queue_name, req.queue_id, req.data_offset,
                               req.content_size, req.arrival_time, req.active_time,
                               req.sender, req.flags)
        attrs = request_attrs(common, nexthop or req.nexthop, req.rcpt, req.orig_rcpt,
                              req.rcpt_offset, req.dsn_notify, req.dsn_orcpt)
        try:
            reply = await client.request(attrs)
        except (ProtocolError, OSError):
            return self.done(req, DeliveryResult.deferred("mail transport unavailable"))
        return DeliveryResult.from_attrs(reply)

    # --- markers ----------------------------------------------------------------------

    def collect_markers(self) -> int:
        """Remove markers whose queue file no longer exists; returns how many."""
        if self.markers is None:
            return 0
        removed = 0
        queues = (queue_mod.INCOMING, queue_mod.ACTIVE, queue_mod.DEFERRED, queue_mod.HOLD)
        for key in self.markers.keys():
            queue_id = key.split(".", 1)[0]
            if not queue_mod.valid_queue_id(queue_id):
                continue  # not a marker: not ours to remove
            if self.spool.find(queue_id, queues) is None:
                self.markers.remove(key)
                removed += 1
        return removed


def _is_account(user: str) -> bool:
    try:
        pwd.getpwnam(user)
    except KeyError:
        return False
    return True
