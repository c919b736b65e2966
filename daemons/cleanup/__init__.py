"""cleanup - canonicalize and enqueue Internet mail (Postfix's cleanup(8)).

SYNOPSIS
    python3 -m pymailsys.daemons.cleanup [generic daemon options]
    (started by master from master.cf: ``cleanup unix n - n - 0 cleanup``)

DESCRIPTION
    The only writer of queue files. It serves ``public/cleanup`` with the
    request/reply contract in ``pymailsys.ipc.services`` (one request per
    message, its content in the request or streamed in follow-up lists;
    clients keep connections open and pipeline requests, which are handled
    concurrently and answered in order). master.cf's maxproc (other than 0,
    unlimited, as shipped) is how many messages it takes at once, as
    Postfix's one message per cleanup process: a request beyond that waits
    for one to end (with master's ``has reached its process limit`` warning
    at most once per 1000 s); connections are not counted, since clients keep
    idle ones. For each message it:

    * rewrites the envelope sender and recipients in the local context
      (``pymailsys.address.rewrite``: source routes, bang paths, the percent hack,
      ``@$myorigin``); a sender of MAILER-DAEMON@$myorigin becomes <>; an
      empty recipient becomes $empty_address_recipient; duplicate recipients
      are removed, case-insensitively, as Postfix's duplicate filter: the same
      address with the same original recipient and DSN attributes (only the
      same address with enable_original_recipient = no); the first
      duplicate_filter_limit are remembered (0: all); every recipient keeps
      its original recipient in its O record (orig_to= in the logs);
    * with CLEANUP_FLAG_MAP_OK (not with receive_override_options =
      no_address_mappings), maps them as Postfix's cleanup
      (``pymailsys.address.mapping``): sender_canonical_maps or
      recipient_canonical_maps, then canonical_maps (canonical_classes), then
      masquerade_domains (masquerade_classes, masquerade_exceptions), then each
      recipient's virtual alias expansion (virtual_alias_maps: recursive, one
      address to many, the original recipient kept in its O record); a table
      failure or a virtual alias limit defers the message; with
      CLEANUP_FLAG_BCC_OK (smtpd, pickup: not bounces or forwarding) adds
      sender_bcc_maps, recipient_bcc_maps and always_bcc recipients (DSN
      NOTIFY=NEVER);
    * rewrites the addresses in the primary header block's address headers
      (From:, To:, Cc:, Resent-*, ...) in the message's rewrite_context: local
      as the envelope; remote only with remote_header_rewrite_domain (empty:
      headers untouched), then maps them with the header classes of the
      canonical maps and masquerading; a changed header is re-serialized and folded as
      Postfix does (``headers``);
    * prepends the Received: header of its origin (smtpd, pickup with the
      submitting uid, bounce/local), counts Received: headers against
      hopcount_limit, drops message_drop_headers, and adds a missing
      Message-Id:, Date: and From: for local submissions (rewrite_context
      local) or with always_add_missing_headers (``headers``); truncates a
      header longer than header_size_limit and, with
      cleanup_replace_stray_cr_lf, turns each stray CR into a space;
    * with CLEANUP_FLAG_FILTER (smtpd, pickup; not with receive_override_options
      = no_header_body_checks), applies header_checks to the primary headers
      (its own Received: included), mime_header_checks and nested_header_checks
      to MIME part and attached-message headers, and body_checks to body lines
      (``pymailsys.content``): REJECT refuses the message with the rule's text
      (a local submission, CLEANUP_FLAG_BOUNCE, is returned to its sender
      through the bounce service instead), DISCARD accepts and drops it, HOLD
      places it in hold/, FILTER names the content filter (an L record after
      the content, logged ``QUEUEID: filter: header ...``; the last one wins),
      REDIRECT marks every envelope recipient done and adds the target in
      their place, BCC adds a recipient; both as extracted recipients;
      with the same flag, the strict_* settings refuse 8-bit headers, 8-bit
      body text of a 7bit part and encodings a multipart or message/* may not
      have (``pymailsys.content.checks``: Postfix's MIME errors); cleanup
      follows the MIME structure only when a table or strict_* setting needs it,
      or detect_8bit_encoding_header for a multipart not declared 8-bit;
    * writes the content filter as Postfix does: the client's
      ``content_filter`` (smtpd's or pickup's content_filter, master.cf
      ``-o`` overrides included) as the envelope's L record after the time
      records (pickup's: before them, where Postfix's pickup writes it),
      smtpd's access FILTER action (the request's, or its last follow-up's
      when smtpd_end_of_data_restrictions gave it) and then the header/body
      checks' FILTER as L records after the content, so that qmgr, which
      takes the last one, routes every recipient to that
      ``transport:nexthop``; a value that cannot name a transport is refused
      (451 4.3.5 "Server configuration error", ``warning: cleanup: bad
      content filter ...``);
    * writes the queue file in incoming/ in Postfix's record order as the
      content arrives (``headers.ContentPass`` holds at most one header and
      one unfinished line; ``writer.ContentFile`` writes past 256 KB), so
      memory does not grow with the message (hold/ with
      CLEANUP_FLAG_HOLD); then marks it complete (0700), names it to qmgr
      (once per batch, on a connection to public/qmgr that stays open), and
      fsyncs it, grouped with the other files of the same event-loop turn
      (``writer``): qmgr and the delivery agent work while the fsync waits
      for the disk; it answers status 0 only after the fsync that covers its
      own file returned (a failed one: 451, the file removed wherever qmgr
      had moved it, at worst a duplicate once the client retries).

DIAGNOSTICS
    Replies (status, dsn, reason): 0 2.0.0 queued (or discarded); 550 and the
    REJECT rule's DSN and text ("5.7.1 message content rejected" without
    one), 451 for a 4.x.x text; 550 5.6.0 and Postfix's text for a MIME error
    ("improper use of 8-bit data in message header", logged ``QUEUEID: reject:
    mime-error TEXT: HEADER from ORIGIN; from=<s> to=<r>``); 451 4.6.0 "Alias expansion error" (a virtual
    alias loop or limit, logged ``warning: QUEUEID: unreasonable
    virtual_alias_maps map nesting for ADDR -- message not accepted, try again
    later``); 451 4.3.0 "Error: queue
    file write error" (the file is removed, never acknowledged); 451 4.3.5
    "Server configuration error" (a content filter that names no transport); 452 4.3.1
    "Error: Insufficient system storage" (queue_minfree); 550 5.1.0 "Error: no
    recipients specified"; 552 5.3.4 "Error: message file too big" (the queue
    file would exceed message_size_limit); 554 5.4.0 "Error: too many hops".
    With CLEANUP_FLAG_BOUNCE (pickup: sendmail's mail and ``postsuper -r``,
    whose maildrop file pickup removes once cleanup answers), the last two
    are returned to the sender through the bounce service instead
    (``status=bounced (too many hops)``) and the reply is status 0, as
    Postfix's cleanup_bounce does for them.
    Logs as Postfix's cleanup: ``QUEUEID: message-id=<...>`` (``<>`` when
    none), ``warning: QUEUEID: message rejected: hopcount exceeded``,
    ``warning: QUEUEID: queue file size limit exceeded``, ``warning: QUEUEID:
    write queue file: ...``; past the first 16 (``headers.MESSAGE_IDS_KEPT``)
    message-id= lines of one message, ``warning: QUEUEID: N more Message-Id:
    headers not logged``.

SECURITY
    Runs as mail_owner, never root; trusts the content of requests only as
    data. Files are created 0600 and become 0700 when complete.

CONFIGURATION PARAMETERS
    myhostname, myorigin, mydomain, mail_name, append_at_myorigin,
    append_dot_mydomain, swap_bangpath, allow_percent_hack,
    remote_header_rewrite_domain, empty_address_recipient, duplicate_filter_limit,
    hopcount_limit, message_drop_headers, always_add_missing_headers, header_from_format,
    line_length_limit, header_size_limit, cleanup_replace_stray_cr_lf, message_size_limit,
    header_checks, mime_header_checks, nested_header_checks, body_checks,
    body_checks_size_limit, mime_nesting_limit, mime_boundary_length_limit,
    disable_mime_input_processing (no MIME part or attached-message headers: every
    line after the primary header block is body to body_checks; no MIME error),
    strict_7bit_headers, strict_8bitmime, strict_8bitmime_body,
    strict_mime_encoding_domain, detect_8bit_encoding_header (a message not declared
    BODY=8BITMIME whose Content-Transfer-Encoding header says 8bit or binary gets
    ``encoding=8bit`` after its content, as Postfix's cleanup: relayed with
    BODY=8BITMIME, or made 7-bit for a server without 8BITMIME; MIME part and
    attached-message headers count too),
    canonical_maps, sender_canonical_maps,
    recipient_canonical_maps, canonical_classes, masquerade_domains,
    masquerade_exceptions, masquerade_classes, virtual_alias_maps,
    virtual_alias_recursion_limit, virtual_alias_expansion_limit,
    virtual_alias_address_length_limit, propagate_unmatched_extensions, recipient_delimiter,
    always_bcc, sender_bcc_maps, recipient_bcc_maps,
    queue_minfree, delay_warning_time, ipc_timeout (the longest wait for the next
    piece of a streamed message),
    enable_original_recipient, enable_long_queue_ids, queue_service_name,
    smtputf8_enable, smtputf8_autodetect_classes.
    All are read once at start-up; a reload restarts the process.

SEE ALSO
    pymailsys.ipc.services (the contract), the headers and writer modules,
    pymailsys.address.rewrite, pymailsys.queue.queue_file (record order).
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import time
from collections.abc import Coroutine
from typing import Any

from pymailsys.daemons.cleanup import headers as hdr
from pymailsys.daemons.cleanup.writer import ContentFile, QmgrTrigger, QueueWriter

from pymailsys import dsn, log, server
from pymailsys.address import mapping
from pymailsys.address.rewrite import CONTEXT_LOCAL, CONTEXT_REMOTE, RewriteContext, rewrite_address
from pymailsys.content import checks as hbc
from pymailsys.content import received as rcv
from pymailsys.delivery import agent
from pymailsys.ipc import attr, services
from pymailsys.mail_date import mail_date
from pymailsys.queue import records as r
from pymailsys.queue import spool as q
from pymailsys.queue import status_log
from pymailsys.queue.queue_file import QueueFileBuilder

PROGRAM = "cleanup"


# the smtputf8_autodetect_classes class of each origin
_ORIGIN_CLASS = {"pickup": "sendmail", "smtpd": "smtpd", "bounce": "bounce", "local": "forward",
                 "notify": "notify"}


def _size_record(builder: QueueFileBuilder, envelope: bytes, content_size: int,
                 outcome: hdr.HeaderOutcome, detect_utf8: bool) -> bytes:
    """The C record. When cleanup looks for UTF-8 (``Cleanup.detects_utf8``), it notes
    a header with UTF-8 (SMTPUTF8_HEADER), and a message that has UTF-8 somewhere asks
    for SMTPUTF8 even if its client did not (autodetection), as Postfix's cleanup."""
    if detect_utf8:
        if outcome.utf8_headers:
            builder.smtputf8 |= r.SMTPUTF8_HEADER
        if builder.smtputf8:
            builder.smtputf8 |= r.SMTPUTF8_REQUESTED
    return builder.size_record(envelope, content_size, outcome.content_length)


def _reply(status: int, dsn: str, text: str) -> dict[str, Any]:
    return {"status": status, "dsn": dsn, "reason": f"Error: {text}"}


ERR_WRITE = (451, "4.3.0", "queue file write error")
ERR_STORAGE = (452, "4.3.1", "Insufficient system storage")
ERR_NORCPT = (550, "5.1.0", "no recipients specified")
ERR_SIZE = (552, "5.3.4", "message file too big")
ERR_HOPS = (554, "5.4.0", "too many hops")
ERR_PROTO = (451, "4.3.0", "internal protocol error")
ERR_ABORTED = (451, "4.3.0", "message aborted by the client")
FILTER_REFUSED = {"status": 451, "dsn": "4.3.5", "reason": "Server configuration error"}
# what a streamed message's last list may add to its flags (smtpd_end_of_data_restrictions)
LATE_FLAGS = services.CLEANUP_FLAG_HOLD | services.CLEANUP_FLAG_DISCARD


class Settings:
    """The parameters cleanup reads, read once."""

    def __init__(self, config) -> None:  # type: ignore[no-untyped-def]
        self.myhostname = config.get("myhostname")
        self.mail_name = config.get("mail_name")
        self.local = RewriteContext.from_config(config, CONTEXT_LOCAL)
        remote = RewriteContext.from_config(config, CONTEXT_REMOTE)
        # Remote mail's headers are rewritten only with a remote_header_rewrite_domain.
        self.remote: RewriteContext | None = remote if remote.origin else None
        self.empty_rcpt = config.get("empty_address_recipient") or "MAILER-DAEMON"
        self.mailer_daemon = rewrite_address("MAILER-DAEMON", self.local).lower()
        self.dup_limit = config.get_int("duplicate_filter_limit")
        self.hop_limit = config.get_int("hopcount_limit")
        self.drop = frozenset(n.lower().encode() for n in config.get_list("message_drop_headers"))
        self.always_add = config.get_bool("always_add_missing_headers")
        self.hfrom_standard = config.get("header_from_format").strip().lower() != "obsolete"
        self.line_limit = max(config.get_int("line_length_limit"), 1)
        self.header_limit = config.get_size("header_size_limit")
        self.replace_stray_cr = config.get_bool("cleanup_replace_stray_cr_lf")
        self.size_limit = config.get_size("message_size_limit")
        self.minfree = config.get_size("queue_minfree")
        self.delay_warning = config.get_time("delay_warning_time")
        self.keep_orcpt = config.get_bool("enable_original_recipient")
        self.long_ids = config.get_bool("enable_long_queue_ids")
        self.qmgr_service = config.get("queue_service_name")
        self.ipc_timeout = float(config.get_time("ipc_timeout"))
        self.utf8_autodetect = frozenset(
            c.lower() for c in config.get_list("smtputf8_autodetect_classes")
        ) if config.get_bool("smtputf8_enable") else frozenset()
        self.checks = hbc.CheckTables.from_config(config)
        self.checks_active = self.checks.active
        self.mapper = mapping.Mapper(config)
        self.mime_nesting_limit = config.get_int("mime_nesting_limit")
        self.mime_boundary_limit = config.get_int("mime_boundary_length_limit")
        self.mime_disabled = config.get_bool("disable_mime_input_processing")
        self.detect_8bit = config.get_bool("detect_8bit_encoding_header")


Rcpt = tuple[str, str, int, str]  # (recipient, original recipient, notify, dsn_orcpt)


def _notify_value(text: str) -> int:
    """A recipient's NOTIFY bit mask as smtpd and pickup send it (0: none, or not one)."""
    value = int(text) if text.isdigit() else 0
    return value if value <= dsn.NOTIFY_MASK else 0


def _ret_value(text: str) -> int:
    """RET as smtpd ("FULL", "HDRS") or pickup (the number) sends it (0: none, or not one)."""
    text = text.strip()
    if text in (str(dsn.RET_FULL), str(dsn.RET_HDRS)):
        return int(text)
    try:
        return dsn.parse_ret(text) if text else 0
    except ValueError:
        return 0


class _Request(attr.AttrList):
    """A request's (or follow-up's) attributes, each looked up in a dict made once instead
    of by a scan of the list (cleanup asks for some 40 of them per message); the same
    answers as AttrList's: a name's first value, and all of its values in order."""

    __slots__ = ("first", "unique")

    def __init__(self, pairs: list[tuple[str, bytes]]) -> None:
        self.pairs = pairs
        self.first = dict(reversed(pairs))
        self.unique = len(self.first) == len(pairs)  # no name twice (one recipient)

    def raw(self, name: str, default: bytes | None = None) -> bytes | None:
        return self.first.get(name, default)

    def all(self, name: str) -> list[str]:
        if not self.unique:
            return super().all(name)
        value = self.first.get(name)
        return [] if value is None else [value.decode("utf-8", "surrogateescape")]


# the request's text attributes that envelope() reads: for every message, for smtpd's
_ENVELOPE_TEXTS = ("origin", "rewrite_context", "sender", "full_name", "content_filter", "envid",
                   "ret", "encoding")
_SASL_TEXTS = ("sasl_method", "sasl_username", "sasl_sender")
_SMTPD_TEXTS = ("client_name", "client_addr", "client_port", "helo_name", "protocol",
                "reverse_client_name", "received_with", "received_comment")


def _texts(first: dict[str, bytes], names: tuple[str, ...]) -> list[str]:
    """The named attributes' first values as text ("" when absent), in one pass."""
    return [first.get(name, b"").decode("utf-8", "surrogateescape") for name in names]


def _logged(result: tuple[str, list[str]], queue_id: str) -> str:
    """A mapped address; its warnings (a multi-valued canonical entry) are logged."""
    address, warnings = result
    for text in warnings:
        log.warning(f"{queue_id}: {text}")
    return address


class Cleanup:
    """The service: one ``handle`` call per request."""

    def __init__(self, ctx: server.Context, *, grouped: bool = True,
                 persistent_trigger: bool = True) -> None:
        self.ctx = ctx
        self.s = Settings(ctx.config)
        self.qmgr = QmgrTrigger(ctx.spool.public(self.s.qmgr_service), persistent_trigger)
        self.writer = QueueWriter(ctx.spool, grouped=grouped,
                                  announce=self.qmgr.announce)
        self.bounce = attr.AttrPool(ctx.spool.private(services.BOUNCE))
        # master.cf's maxproc: messages in progress, as many as Postfix's cleanup processes
        self.slots = asyncio.Semaphore(ctx.process_limit) if ctx.process_limit else None
        self._space_checked = 0.0
        self._space_ok = True
        # (rewrite context, mapped) -> rewritten address headers seen before, for as long as
        # their rewriting reads no table (headers.HeaderCache: bounded)
        self.header_caches: dict[tuple[str, bool], hdr.HeaderCache] = {}

    # -- envelope -----------------------------------------------------------

    def _sender(self, sender: str, flags: int, queue_id: str) -> str:
        clean = rewrite_address(sender, self.s.local)
        if clean and clean.lower() == self.s.mailer_daemon:
            return ""
        if clean and flags & services.CLEANUP_FLAG_MAP_OK:
            clean = _logged(self.s.mapper.sender(clean), queue_id)
        return clean

    def _recipients(self, req: attr.AttrList, rcpts: list[str], sender: str, flags: int,
                    queue_id: str) -> list[Rcpt]:
        """(recipient, original, notify, dsn_orcpt) after rewriting, canonical mapping,
        masquerading and virtual alias expansion (CLEANUP_FLAG_MAP_OK), the automatic
        BCC recipients (CLEANUP_FLAG_BCC_OK), and duplicate removal. MappingError when
        a table cannot answer or a limit is reached."""
        origs = req.all("orcpt")
        notifies = req.all("notify")
        dsn_orcpts = req.all("dsn_orcpt")
        n = len(rcpts)
        tables = self.s.mapper
        if (n == 1 and (tables.recipients_kept or not flags & services.CLEANUP_FLAG_MAP_OK)
                and (tables.no_bcc or not flags & services.CLEANUP_FLAG_BCC_OK)):
            # the usual case: one recipient that no table changes, nothing to add to it
            # (what the general way below makes of it, with no duplicate to filter)
            raw = rcpts[0]
            return [(rewrite_address(raw or self.s.empty_rcpt, self.s.local),
                     origs[0] if len(origs) == 1 else raw,
                     _notify_value(notifies[0]) if notifies else 0,
                     dsn_orcpts[0] if len(dsn_orcpts) == 1 else "")]
        if len(origs) != n:
            origs = rcpts
        if len(notifies) == n:
            notify_of = [_notify_value(v) for v in notifies]
        else:
            one = _notify_value(notifies[0]) if notifies else 0
            notify_of = [one] * n
        if len(dsn_orcpts) != n:
            dsn_orcpts = [""] * n
        # Postfix's duplicate filter (been_here, case-folded): with enable_original_recipient
        # the original recipient and the DSN attributes tell two recipients apart, without
        # it only the address does; duplicate_filter_limit 0 remembers them all
        seen: set[str] = set()
        limit = self.s.dup_limit
        keep_orcpt = self.s.keep_orcpt
        out = []
        local = self.s.local
        mapper = self.s.mapper if flags & services.CLEANUP_FLAG_MAP_OK else None
        mapped: list[str] = []

        def add(clean: str, orig: str, notify: int, dsn_orcpt: str) -> None:
            for address in mapper.expand(clean) if mapper is not None else [clean]:
                key = (f"{dsn_orcpt}\n{notify}\n{orig}\n{address}" if keep_orcpt
                       else address).lower()
                if key in seen:
                    continue
                if limit <= 0 or len(seen) < limit:
                    seen.add(key)
                out.append((address, orig, notify, dsn_orcpt))

        for raw, orig, notify, dsn_orcpt in zip(rcpts, origs, notify_of, dsn_orcpts, strict=True):
            clean = rewrite_address(raw or self.s.empty_rcpt, local)
            if mapper is not None:
                clean = _logged(mapper.recipient(clean), queue_id)
            mapped.append(clean)
            add(clean, orig, notify, dsn_orcpt)
        if flags & services.CLEANUP_FLAG_BCC_OK:
            for bcc in self.s.mapper.bcc(sender, mapped):
                clean = rewrite_address(bcc, local)
                if mapper is not None:
                    clean = _logged(mapper.recipient(clean), queue_id)
                add(clean, clean, dsn.NOTIFY_NEVER, "")
        return out

    def _space(self) -> bool:
        if self.s.minfree <= 0:
            return True
        now = time.monotonic()
        if now - self._space_checked >= 1.0:
            self._space_checked = now
            try:
                st = os.statvfs(self.ctx.spool.dir(q.INCOMING))
                self._space_ok = st.f_bavail * st.f_frsize >= self.s.minfree
            except OSError:
                self._space_ok = True
        return self._space_ok

    # -- one message --------------------------------------------------------

    def envelope(self, req: attr.AttrList, queue_id: str, now: float) -> tuple[
            QueueFileBuilder, hdr.ContentPass, list[Rcpt], bool]:
        """The queue file's envelope records and the content pass for one request
        (``content.checks``: the header and body checks' verdicts, when they apply),
        the recipients written, and whether cleanup looks for UTF-8 (``detects_utf8``)."""
        s = self.s
        if not isinstance(req, _Request):
            req = _Request(req.pairs)
        first = req.first
        (origin, context, sender, full_name, content_filter, envid, ret,
         encoding) = _texts(first, _ENVELOPE_TEXTS)
        context = context or (CONTEXT_REMOTE if origin == "smtpd" else CONTEXT_LOCAL)
        flags = req.number("flags")
        sender = self._sender(sender, flags, queue_id)
        raw_rcpts = req.all("rcpt")
        recipients = self._recipients(req, raw_rcpts, sender, flags, queue_id)
        date = mail_date(now)

        b = QueueFileBuilder(now)
        if content_filter:
            b.content_filter(content_filter, first=origin == "pickup")
        attrs = [("rewrite_context", context)]
        if origin == "smtpd":  # as Postfix's smtpd sends them: the login, then AUTH=
            for name in _SASL_TEXTS:
                raw = first.get(name)
                value = log.printable(raw.decode("utf-8", "surrogateescape")) if raw else ""
                if value:
                    attrs.append((name, value))
        if dsn.valid_envid(envid, None):  # as Postfix's cleanup: no length limit
            attrs.append(("dsn_envid", envid))
        ret_value = _ret_value(ret)
        if ret_value:
            attrs.append(("dsn_ret", str(ret_value)))
        if origin in ("bounce", "local", "notify"):
            attrs.append(("log_message_origin", "local"))
        b.attrs(attrs)
        if full_name:
            b.full_name(full_name)
        b.sender(sender)
        encoding = encoding.lower()
        attrs = []
        if encoding:  # Postfix's values: a Postfix qmgr and smtp read the file too
            attrs.append(("encoding", "8bit" if encoding == "8bitmime" else encoding))
        where_origin, where_protocol, where_helo = "local", "", ""  # for the checks' log lines
        if origin == "smtpd":
            (name, addr, port, helo, proto, reverse_name, received_with,
             comment) = _texts(first, _SMTPD_TEXTS)
            name = name or "unknown"
            proto = proto or "SMTP"
            origin_text = f"{name}[{addr}]"
            attrs += [("log_client_name", name),
                      ("log_client_address", f"IPv6:{addr}" if ":" in addr else addr),
                      ("log_client_port", port), ("log_message_origin", origin_text)]
            if helo:
                attrs.append(("log_helo_name", helo))
            attrs += [("log_protocol_name", proto), ("client_name", name),
                      ("reverse_client_name", reverse_name or name), ("client_address", addr),
                      ("client_port", port)]
            if helo:
                attrs.append(("helo_name", helo))
            attrs += [("protocol_name", proto),
                      ("client_address_type", "10" if ":" in addr else "2")]
            where_origin, where_protocol, where_helo = origin_text, proto, helo
            received = rcv.received_smtpd(helo, name, addr, received_with or proto,
                                          s.myhostname, s.mail_name, queue_id,
                                          raw_rcpts[0] if len(raw_rcpts) == 1 else None, date,
                                          "\n".join(log.printable(line.strip()) for line in
                                                    comment.splitlines()))
            # smtpd's access PREPEND headers go above its Received:, one printable line each
            received = [line for line in req.all("prepend")
                        if line.isprintable() and ":" in line] + received
        elif origin == "pickup":
            received = rcv.received_pickup(s.myhostname, s.mail_name, req.number("uid"),
                                           queue_id, date)
        else:
            received = rcv.received_local(s.myhostname, s.mail_name, queue_id, date)
        if attrs:
            b.attrs(attrs)
        if s.delay_warning > 0 and sender:
            b.record(r.REC_TYPE_WARN, b"%15d" % (int(now) + s.delay_warning))
        for clean, orig, notify, dsn_orcpt in recipients:
            b.recipient(clean, orig, notify, dsn_orcpt)
        smtputf8 = req.number("smtputf8")
        detect_utf8 = self.detects_utf8(smtputf8, origin)
        if detect_utf8:  # note where the message needs SMTPUTF8
            b.smtputf8 = ((r.SMTPUTF8_REQUESTED if smtputf8 else 0)
                          | (0 if sender.isascii() else r.SMTPUTF8_SENDER)
                          | (0 if all(rc[0].isascii() for rc in recipients)
                             else r.SMTPUTF8_RECIPIENT))

        header_rewrite = s.local if context == CONTEXT_LOCAL else s.remote
        header_map = None
        if header_rewrite is not None and flags & services.CLEANUP_FLAG_MAP_OK:
            mapper = s.mapper

            def header_map(addr: str, is_sender: bool) -> str:
                step = mapper.sender if is_sender else mapper.recipient
                return _logged(step(addr, mapping.HEADER), queue_id)
        header_cache = None
        if header_rewrite is not None and (header_map is None or s.mapper.headers_without_tables):
            header_cache = self.header_caches.setdefault((context, header_map is not None), {})
        job = hdr.HeaderJob(queue_id=queue_id, myhostname=s.myhostname, created=now, date=date,
                            sender=sender, full_name=full_name,
                            add_missing=context == CONTEXT_LOCAL or s.always_add,
                            long_queue_ids=s.long_ids, hfrom_standard=s.hfrom_standard,
                            header_rewrite=header_rewrite, header_map=header_map,
                            header_cache=header_cache)
        checks = None
        if flags & services.CLEANUP_FLAG_FILTER and s.checks_active:
            checks = hbc.MessageChecks(s.checks, hbc.Where(
                queue_id, where_origin, sender, recipients[0][0] if recipients else None,
                where_protocol, where_helo))
        content = hdr.ContentPass(received, job, s.drop, s.line_limit, s.header_limit,
                                  s.replace_stray_cr, checks, s.mime_nesting_limit,
                                  s.mime_boundary_limit, s.mime_disabled,
                                  s.detect_8bit and encoding not in ("8bit", "8bitmime"))
        return b, content, recipients, detect_utf8

    def detects_utf8(self, smtputf8: int, origin: str) -> bool:
        """Whether cleanup looks for UTF-8 in a message: its client asked for SMTPUTF8,
        or its origin's class is in smtputf8_autodetect_classes."""
        detect = self.s.utf8_autodetect
        return bool(smtputf8) or "all" in detect or _ORIGIN_CLASS.get(origin, "") in detect

    def assemble(self, req: attr.AttrList, queue_id: str, now: float) -> tuple[
            bytes, hdr.HeaderOutcome]:
        """The whole queue file for a one-list request (pure but for the clock it is given)."""
        req = _Request(req.pairs)
        builder, content, _, detect_utf8 = self.envelope(req, queue_id, now)
        records = content.feed(req.raw("content") or b"") + content.end()
        if content.outcome.says_8bit:
            builder.extracted_attr("encoding", "8bit")
        if req.text("filter"):
            builder.content_filter(req.text("filter"), extracted=True)
        envelope = builder.envelope()
        body = b"".join(records)
        size_rec = _size_record(builder, envelope, len(body), content.outcome, detect_utf8)
        return size_rec + envelope + body + builder.trailer(), content.outcome

    def received(self, req: attr.AttrList,
                 more: attr.FollowUps | None) -> Coroutine[Any, Any, dict[str, Any]]:
        """attr's handler, called as a request is read (its task runs a turn of the loop
        later): the message counts as in progress from now, so that a commit knows
        whether any other message could join its fsync group in the same turn
        (``QueueWriter.messages``); then ``handle``, within maxproc's slots."""
        self.writer.messages += 1
        return self._counted(req, more)

    async def _counted(self, req: attr.AttrList, more: attr.FollowUps | None) -> dict[str, Any]:
        try:
            if self.slots is None:
                return await self.handle(req, more)
            if self.slots.locked():
                server.warn_process_limit(self.ctx)
            async with self.slots:
                return await self.handle(req, more)
        finally:
            self.writer.messages -= 1

    async def handle(self, req: attr.AttrList, more: attr.FollowUps | None) -> dict[str, Any]:
        """One message: ``req`` and, for a streamed one, its follow-ups (services.py)."""
        s = self.s
        req = _Request(req.pairs)
        if req.raw("rcpt") is None:
            return _reply(*ERR_NORCPT)
        flags = req.number("flags")
        if self._bad_filter(req):
            return dict(FILTER_REFUSED)
        if not self._space():
            return _reply(*ERR_STORAGE)
        try:
            queue_id, path, fd = self.writer.create()
        except OSError as e:
            log.warning(f"{PROGRAM}: create file {self.ctx.spool.dir(q.INCOMING)}: {e.strerror}")
            return _reply(*ERR_WRITE)
        try:
            arrival = time.time()
            builder, content, recipients, detect_utf8 = self.envelope(req, queue_id, arrival)
            envelope = builder.envelope()
            out = ContentFile(fd, envelope)
            received = 0
            smtpd_filter = ""
            late_redirect = ""  # smtpd_end_of_data_restrictions, after a streamed envelope
            late_bcc: list[str] = []
            part: attr.AttrList | None = req
            while part is not None:
                if part.raw("abort") is not None:  # the client refused the message after all
                    self.writer.discard(fd, path)
                    return _reply(*ERR_ABORTED)
                if part is not req:
                    if self._bad_filter(part):
                        self.writer.discard(fd, path)
                        return dict(FILTER_REFUSED)
                    flags |= part.number("flags") & LATE_FLAGS
                    late_redirect = part.text("redirect") or late_redirect
                    late_bcc += part.all("bcc")
                smtpd_filter = part.text("filter") or smtpd_filter
                chunk = part.raw("content") or b""
                received += len(chunk)
                if s.size_limit and received > s.size_limit:
                    out.too_big = True
                if not out.too_big:
                    out.add(content.feed(chunk))
                nxt = (await asyncio.wait_for(more.get(), s.ipc_timeout)
                       if more is not None else None)
                part = _Request(nxt.pairs) if nxt is not None else None
            if out.too_big:
                self.writer.discard(fd, path)
                log.warning(f"{queue_id}: queue file size limit exceeded")
                return _reply(*ERR_SIZE)
            out.add(content.end())
            if content.outcome.says_8bit:  # after the envelope's, so it wins (qmgr)
                builder.extracted_attr("encoding", "8bit")
            if smtpd_filter:  # smtpd's access FILTER: first after the content
                builder.content_filter(smtpd_filter, extracted=True)
            outcome = content.outcome
            verdict = content.checks
            patches: list[tuple[int, bytes]] = []
            # A local submission that the checks reject goes back to its sender (cleanup_bounce).
            bounce = (verdict is not None and verdict.reject.startswith("5")
                      and bool(flags & services.CLEANUP_FLAG_BOUNCE))
            if verdict is not None and not bounce:
                if verdict.failed or verdict.reject or verdict.discard:
                    self.writer.discard(fd, path)
                    return self._refused(verdict, queue_id)
                patches = self._content_actions(builder, verdict.filter,
                                                late_redirect or verdict.redirect,
                                                verdict.bcc + late_bcc, recipients, queue_id,
                                                flags)
            elif late_redirect or late_bcc:
                patches = self._content_actions(builder, "", late_redirect, late_bcc,
                                                recipients, queue_id, flags)
            size_rec = _size_record(builder, envelope, out.content_size, outcome, detect_utf8)
            parts = out.finish(size_rec, builder.trailer())
        except (attr.ProtocolError, TimeoutError) as e:
            self.writer.discard(fd, path)
            log.warning(f"{queue_id}: message rejected: {str(e) or 'timeout reading the content'}")
            return _reply(*ERR_PROTO)
        except mapping.MappingError as e:
            self.writer.discard(fd, path)
            log.warning(f"{queue_id}: {e} -- message not accepted, try again later")
            if e.alias:
                return {"status": 451, "dsn": "4.6.0", "reason": "Alias expansion error"}
            return _reply(*ERR_WRITE)
        except OSError as e:
            self.writer.discard(fd, path)
            log.warning(f"{queue_id}: write queue file: {e.strerror}")
            return _reply(*ERR_WRITE)
        except BaseException:
            self.writer.discard(fd, path)
            raise
        for mid in outcome.message_ids:
            log.info(f"{queue_id}: message-id={mid}")
        if outcome.message_ids_dropped:
            log.warning(f"{queue_id}: {outcome.message_ids_dropped} more Message-Id: headers "
                        "not logged")
        refusal = None
        if outcome.hop_count >= s.hop_limit:
            log.warning(f"{queue_id}: message rejected: hopcount exceeded")
            refusal = ERR_HOPS
        elif s.size_limit and out.file_size > s.size_limit:
            log.warning(f"{queue_id}: queue file size limit exceeded")
            refusal = ERR_SIZE
        if refusal is not None:
            if flags & services.CLEANUP_FLAG_BOUNCE:  # Postfix's CAN_BOUNCE: to the sender
                return await self._bounce(fd, path, parts, queue_id, recipients,
                                          builder.recipient_offsets(),
                                          f"{refusal[1]} {refusal[2]}", arrival)
            self.writer.discard(fd, path)
            return _reply(*refusal)
        if flags & services.CLEANUP_FLAG_DISCARD:  # smtpd's access DISCARD: accepted, dropped
            self.writer.discard(fd, path)
            return {"status": services.CLEANUP_OK, "dsn": "2.0.0", "reason": "",
                    "queue_id": queue_id}
        if bounce:
            assert verdict is not None
            return await self._bounce(fd, path, parts, queue_id, recipients,
                                      builder.recipient_offsets(), verdict.reject, arrival)
        hold = bool(flags & services.CLEANUP_FLAG_HOLD)
        hold |= verdict is not None and verdict.hold
        try:
            await self.writer.commit(fd, path, parts, q.HOLD if hold else q.INCOMING, patches,
                                     notify=None if hold else queue_id)
        except OSError as e:
            log.warning(f"{queue_id}: write queue file: {e.strerror}")
            return _reply(*ERR_WRITE)
        return {"status": services.CLEANUP_OK, "dsn": "2.0.0", "reason": "", "queue_id": queue_id}


    @staticmethod
    def _bad_filter(part: attr.AttrList) -> bool:
        """A content_filter or FILTER that names no transport (warned: refused, not dropped)."""
        for name in ("content_filter", "filter"):
            value = part.text(name)
            if value and services.split_content_filter(value) is None:
                log.warning(f"{PROGRAM}: bad content filter from {part.text('origin') or 'smtpd'}: "
                            f"{log.printable(value)[:100]} -- message not accepted")
                return True
        return False

    # -- header_checks and body_checks ----------------------------------------------------

    @staticmethod
    def _refused(verdict: hbc.MessageChecks, queue_id: str) -> dict[str, Any]:
        """The reply for a message the checks rejected, discarded, or could not check."""
        if verdict.failed:
            return _reply(*ERR_WRITE)
        if verdict.reject:
            dsn, _, text = verdict.reject.partition(" ")
            return {"status": 451 if dsn[0] == "4" else 550, "dsn": dsn, "reason": text}
        return {"status": services.CLEANUP_OK, "dsn": "2.0.0", "reason": "", "queue_id": queue_id}

    def _content_actions(self, builder: QueueFileBuilder, content_filter: str, redirect: str,
                         bcc: list[str], recipients: list[Rcpt], queue_id: str,
                         flags: int) -> list[tuple[int, bytes]]:
        """Actions decided after the envelope was written (header/body checks, smtpd's
        end of data): FILTER: the last L record; REDIRECT and BCC: extracted
        recipients, and for REDIRECT the envelope's recipients marked done."""
        patches: list[tuple[int, bytes]] = []
        if content_filter:
            builder.content_filter(content_filter, extracted=True)
        if redirect:
            target = rewrite_address(redirect, self.s.local)
            for (clean, orig, notify, dsn_orcpt), offset in zip(
                    recipients, builder.recipient_offsets(), strict=True):
                builder.recipient(target, orig or clean, notify, dsn_orcpt, extracted=True)
                patches.append((offset, r.REC_TYPE_DONE))
        for address in bcc:
            clean = rewrite_address(address, self.s.local)
            if flags & services.CLEANUP_FLAG_MAP_OK:
                clean = _logged(self.s.mapper.recipient(clean), queue_id)
            for each in (self.s.mapper.expand(clean) if flags & services.CLEANUP_FLAG_MAP_OK
                         else [clean]):
                builder.recipient(each, clean, dsn.NOTIFY_NEVER, extracted=True)
        return patches


    async def _bounce(self, fd: int, path: str, parts: list[bytes], queue_id: str,
                      recipients: list[Rcpt], offsets: list[int], reason: str,
                      arrival: float) -> dict[str, Any]:
        """Return a rejected message to its sender through the bounce service: the file
        waits in hold/ (where qmgr does not look) with a bounce log naming every recipient,
        and both are removed once bounce has queued the notification. All that while
        the file is locked (shared, as a delivery agent locks it; the bounce service's
        shared lock goes with it), so that ``postsuper -H`` or ``-r`` skips it instead of
        releasing a rejected message for delivery."""
        try:
            lock = _shared_lock(fd)
        except OSError as e:
            self.writer.discard(fd, path)
            log.warning(f"{queue_id}: write queue file: {e.strerror}")
            return _reply(*ERR_WRITE)
        try:
            await self.writer.commit(fd, path, parts, q.HOLD)
        except BaseException as e:
            os.close(lock)
            if not isinstance(e, OSError):
                raise
            log.warning(f"{queue_id}: write queue file: {e.strerror}")
            return _reply(*ERR_WRITE)
        dsn, _, text = reason.partition(" ")
        spool = self.ctx.spool
        try:
            for (clean, orig, notify, dsn_orcpt), offset in zip(recipients, offsets, strict=True):
                status_log.append_queue(spool, q.BOUNCE, queue_id, status_log.Entry(
                    clean, dsn, status_log.ACTION_FAILED, text, orig, offset, dsn_orcpt, notify))
            result = agent.DeliveryResult(services.STATUS_BOUNCED, dsn, text)
            for clean, orig, _, _ in recipients:
                log.info(agent.log_line(queue_id, clean, orig, "none", arrival, 0.0, arrival,
                                        result))
            reply = await self.bounce.request({"request": "flush", "queue_id": queue_id,
                                               "queue_name": q.HOLD, "log": "bounce"})
            status = reply.number("status", -1)
        except (OSError, attr.ProtocolError) as e:
            log.warning(f"{queue_id}: bounce service: {e}")
            status = -1
        finally:
            status_log.remove(spool, q.BOUNCE, queue_id)
            QueueWriter.remove(spool.path(q.HOLD, queue_id))
            os.close(lock)
        if status != 0:
            return _reply(*ERR_WRITE)
        return {"status": services.CLEANUP_OK, "dsn": "2.0.0", "reason": "", "queue_id": queue_id}


def _shared_lock(fd: int) -> int:
    """A second descriptor of fd's open file, holding a shared lock on it: the lock lasts
    until that descriptor is closed, whatever becomes of fd."""
    lock = os.dup(fd)
    try:
        fcntl.flock(lock, fcntl.LOCK_SH)
    except OSError:
        os.close(lock)
        raise
    return lock


async def _start(ctx: server.Context) -> None:
    grouped = os.environ.get("PYMAILSYS_CLEANUP_UNGROUPED") is None
    persistent = os.environ.get("PYMAILSYS_CLEANUP_TRIGGER_PER_BATCH") is None
    ctx.state["cleanup"] = service = Cleanup(ctx, grouped=grouped, persistent_trigger=persistent)
    service.writer.loop = asyncio.get_running_loop()  # the daemon's one loop


async def _stop(ctx: server.Context) -> None:
    service: Cleanup | None = ctx.state.get("cleanup")
    if service is not None:
        await service.qmgr.close()
        await service.bounce.close()


async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                ctx: server.Context) -> None:
    service: Cleanup = ctx.state["cleanup"]
    if not server.peer_is_mail_system(writer, ctx.config):
        log.warning(f"{PROGRAM}: refused a connection from an unprivileged local user")
        return
    await attr.serve_streamed(reader, writer, service.received, ctx.stopping)


def main(argv: list[str] | None = None) -> None:
    server.run(PROGRAM, serve=serve, on_start=_start, on_stop=_stop, argv=argv)

