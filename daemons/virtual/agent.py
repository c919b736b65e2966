"""The virtual agent's settings and its delivery of one request.

``VirtualAgent`` reads its parameters and opens its tables once; ``handle``
turns one delivery request (one or more recipients of one message) into one
reply with a status per recipient, logs one Postfix line per recipient, and
never raises (a bug defers the request instead of stalling qmgr's pipelined
connection). ``deliver_one`` is Postfix's virtual deliver_mailbox for one
recipient: loop check, mailbox lookup, owner lookup, the write as that owner.
Maildir deliveries are crash-idempotent as local's are
(``pymailsys.delivery.mailbox``): markers in virtual's own directory,
``$queue_directory/$process_id_directory/virtual-markers`` (``mailbox.open_markers``),
removed by ``mailbox.collect_markers`` once the queue file is gone.
"""

from __future__ import annotations

import dataclasses
import re

from pymailsys import log, privileges
from pymailsys.config import Config
from pymailsys.delivery import mailbox
from pymailsys.delivery.agent import (
    ContentError,
    DeliveryRequest,
    DeliveryResult,
    QueueContent,
    batch_reply,
    log_result,
    refusal,
    request_recipients,
)
from pymailsys.ipc.attr import AttrList, AttrValue, ProtocolError
from pymailsys.maps import Maps, TableError
from pymailsys.maps import search as addr_lookup
from pymailsys.queue.spool import QueueAccessError, Spool

RELAY = "virtual"
CONFIG_ERROR = "mail system configuration error"
# Postfix's virtual: an mbox it cannot lock, open or create defers (mbox_open's def_dsn):
# the mailbox is the administrator's to fix, not the sender's problem
MBOX_DSN = "4.2.0"


class _Defer(Exception):
    """A recipient's delivery stops here with a deferral (4.3.5) after a warning."""


class VirtualAgent:
    def __init__(self, config: Config, spool: Spool) -> None:
        self.spool = spool
        self.base = config.get("virtual_mailbox_base")
        self.minimum_uid = config.get_int("virtual_minimum_uid")
        self.size_limit = config.get_size("virtual_mailbox_limit")
        self.locks = config.get_list("virtual_mailbox_lock")
        self.lock_attempts = config.get_int("deliver_lock_attempts")
        self.lock_delay = float(config.get_time("deliver_lock_delay"))
        self.stale = float(config.get_time("stale_lock_time"))
        self.strict_owner = config.get_bool("strict_mailbox_ownership")
        self.hostname = config.get("myhostname")
        self.delimiter = config.get("recipient_delimiter")
        self.keep_orcpt = config.get_bool("enable_original_recipient")  # X-Original-To:
        self.root = privileges.running_as_root()
        self.me = privileges.current_user()
        self.markers = mailbox.open_markers(config, "virtual-markers")
        self.table_error = ""
        try:
            self.mailboxes = Maps(config, "virtual_mailbox_maps", regsub=False)
            self.uids = Maps(config, "virtual_uid_maps", regsub=False)
            self.gids = Maps(config, "virtual_gid_maps", regsub=False)
        except TableError as e:
            self.table_error = str(e)
            log.warning(f"virtual: {e}")

    # --- the service ------------------------------------------------------------

    async def handle(self, attrs: AttrList) -> list[tuple[str, AttrValue]]:
        count = max(len(attrs.all("rcpt")), 1)
        try:
            first = DeliveryRequest.from_attrs(attrs)
            requests = [dataclasses.replace(first, rcpt=rc.address, orig_rcpt=rc.orig,
                                            rcpt_offset=rc.offset, dsn_notify=rc.notify,
                                            dsn_orcpt=rc.dsn_orcpt).checked()
                        for rc in request_recipients(attrs)]
        except (ProtocolError, ValueError) as e:
            return refusal(attrs, e, count)
        try:
            results = self.deliver(first, requests)
        except Exception as e:  # a bug must not stall the pipelined connection
            log.error(f"virtual: unexpected error: {e!r}")
            results = [DeliveryResult.deferred("virtual delivery agent error")] * len(requests)
        return batch_reply(results)

    def deliver(self, first: DeliveryRequest,
                requests: list[DeliveryRequest]) -> list[DeliveryResult]:
        """Every recipient of the request, each result logged."""
        path = self.spool.path(first.queue_name, first.queue_id)
        content: QueueContent | None = None
        unreadable = DeliveryResult.unreadable()
        try:
            fd = self.spool.open_queue_file(first.queue_name, first.queue_id, writable=True)
            content = QueueContent(path, first.data_offset, fd=fd,
                                   rcpt_offsets=[req.rcpt_offset for req in requests])
        except (QueueAccessError, ContentError) as e:
            log.warning(f"{first.queue_id}: {e}")
            if isinstance(e, ContentError):
                unreadable = DeliveryResult.unreadable(e)
        results = []
        try:
            for req in requests:
                if content is None:
                    result = unreadable
                else:
                    try:
                        result = self.deliver_one(req, content)
                    except ContentError as e:
                        log.warning(f"{req.queue_id}: {e}")
                        result = DeliveryResult.unreadable(e)
                    except Exception as e:  # a bug defers this recipient, not those done
                        log.error(f"virtual: unexpected error: {e!r}")
                        result = DeliveryResult.deferred("virtual delivery agent error")
                    content.mark_sent(req.queue_id, req.rcpt, req.rcpt_offset, req.dsn_notify,
                                      req.flags, result)
                log_result(req, RELAY, result)
                results.append(result)
        finally:
            if content is not None:
                content.close()
        return results

    # --- one recipient ------------------------------------------------------------

    def deliver_one(self, req: DeliveryRequest, content: QueueContent) -> DeliveryResult:
        user = req.rcpt.lower()
        loop_key = mailbox.delivered_to_key(req.rcpt).encode("utf-8", "surrogateescape")
        for h in content.header_lines():
            if h[:13].lower() == b"delivered-to:" and h[13:].strip().lower() == loop_key:
                return DeliveryResult.bounced(f"mail forwarding loop for {req.rcpt}", "5.4.6")
        try:
            if self.table_error:
                raise _Defer
            if not self.base.startswith("/"):
                log.error(f"do not specify relative pathname: virtual_mailbox_base = {self.base}")
                raise _Defer
            name = self._find(self.mailboxes, user, "table virtual_mailbox_maps: lookup")
            if name is None:
                return DeliveryResult.bounced(f'unknown user: "{user}"', "5.1.1")
            path = f"{self.base}/{name}"
            if "/../" in path[len(self.base):]:  # as Postfix: no way up out of the base
                log.warning(f"recipient {user}: bad mailbox path {name} in virtual_mailbox_maps")
                raise _Defer
            # never uid 0, whatever a -o override says: root writes nothing here
            uid = self._owner_id(self.uids, "virtual_uid_maps", user, max(self.minimum_uid, 1),
                                 "uid")
            gid = self._owner_id(self.gids, "virtual_gid_maps", user, 1, "gid")
        except _Defer:
            return DeliveryResult.deferred(CONFIG_ERROR, "4.3.5")
        if not self.root and uid != self.me.uid:
            return DeliveryResult.deferred(
                f"cannot deliver as uid {uid}: the mail system runs as {self.me.name}")
        return self.write(req, path, uid, gid, content)

    def _find(self, maps: Maps, user: str, what: str) -> str | None:
        """mail_addr_find(): ``user+ext@domain``, ``user@domain``, then ``@domain``."""
        try:
            return addr_lookup.lookup_address(maps, user, local_domain=False,
                                              delimiter=self.delimiter)
        except TableError as e:
            log.warning(f"{what} {user}: {e}")
            raise _Defer from None

    def _owner_id(self, maps: Maps, param: str, user: str, minimum: int, what: str) -> int:
        value = self._find(maps, user, f"table {param}: lookup")
        if value is None:
            log.warning(f"recipient {user}: not found in {param}")
            raise _Defer
        number = _strtoul(value)
        if number is None or number >= ID_NONE or number < minimum:
            log.warning(f"recipient {user}: bad {what} {value} in {param}")
            raise _Defer
        return number

    def write(self, req: DeliveryRequest, path: str, uid: int, gid: int,
              content: QueueContent) -> DeliveryResult:
        """Store the message as uid/gid: a Maildir with its marker claimed first, with
        virtual's own rights (``deliver_maildir``'s ``rights``: the recipient's are taken
        after the claim), an mbox file inside the recipient's ids."""
        headers = mailbox.prepended_headers(
            req.sender, (req.orig_rcpt or req.rcpt) if self.keep_orcpt else None, req.rcpt)
        maildir = path.endswith("/")
        try:
            if maildir:
                key = mailbox.delivery_key(req.queue_id, req.arrival_time, req.rcpt_offset, path)
                mailbox.deliver_maildir(path, mailbox.plain_text(headers, content.text()),
                                        host=self.hostname, key=key, marker=self.markers,
                                        size_limit=self.size_limit,
                                        rights=lambda: privileges.as_user(uid, gid, [gid]))
                return DeliveryResult.sent("delivered to maildir")
            with privileges.as_user(uid, gid, [gid]):
                data = mailbox.mbox_text(mailbox.from_line(req.sender), headers, content.text())
                mailbox.deliver_mbox(path, data, expect_uid=uid if self.strict_owner else None,
                                     locks=self.locks, size_limit=self.size_limit,
                                     attempts=self.lock_attempts, delay=self.lock_delay,
                                     stale=self.stale, dsn=MBOX_DSN)
                return DeliveryResult.sent("delivered to mailbox")
        except mailbox.MailboxError as e:
            if maildir:
                mailbox.maildir_access_warnings(e, uid, gid)
            prefix = "maildir delivery failed: " if maildir else \
                f"delivery failed to mailbox {path}: "
            return DeliveryResult.from_dsn(e.dsn, prefix + e.text)
        except privileges.PrivilegeError as e:
            return DeliveryResult.deferred(str(e))


ID_NONE = 0xFFFFFFFF  # (uid_t) -1: "no change" to the kernel; ids from here on are no ids
_STRTOUL_RE = re.compile(r"[ \t\n\v\f\r]*([+-]?)([0-9]+)")


def _strtoul(text: str) -> int | None:
    """Postfix's owner-id parse (sane_strtoul, base 10, the whole text): the number, or
    None when text has anything after it or is out of an unsigned long's range; a
    leading ``-`` wraps around as in C. "" is 0, as strtoul leaves it."""
    if not text:
        return 0
    m = _STRTOUL_RE.fullmatch(text)
    if m is None:
        return None
    number = int(m.group(2))
    if number >= 1 << 64:
        return None
    return (-number) % (1 << 64) if m.group(1) == "-" else number
