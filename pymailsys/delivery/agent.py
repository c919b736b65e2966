"""The delivery-agent interface shared by local (and later virtual, smtp, lmtp).

qmgr sends one delivery request per recipient (for local; per batch later)
as an attribute list (``services.py`` names the attributes). This module turns
the list into a ``DeliveryRequest``, gives an agent the message content, and
turns the agent's ``DeliveryResult`` back into the reply and into Postfix's log
line::

    QUEUEID: to=<rcpt>, orig_to=<orig>, relay=local, delay=0.12,
        delays=a/b/c/d, dsn=2.0.0, status=sent (delivered to mailbox)

The addresses are shown as ``log.address`` formats them
(info_log_address_format: ``to=<"john doe"@example.net>`` by default).

``delays``: a = before the active queue (active_time - arrival), b = in the
active queue before the agent started, c = connection setup, d = transfer.

A result is one of three values, never free text: ``sent``, ``deferred`` (a
temporary failure: the recipient stays in the queue) or ``bounced`` (final).
An agent module supplies ``deliver(request) -> DeliveryResult``.

``request_attrs`` is the other side: qmgr builds the common part of a request
once per message (``message_attrs``) and adds the recipient part per request,
so nothing is re-parsed per recipient. A request may carry several
recipients (``batch_request_attrs``; agents whose transport has a
destination recipient limit above 1, such as smtp and lmtp): the recipient
attributes repeat, all five for each recipient, in order
(``request_recipients``; orig_rcpt, dsn_notify and dsn_orcpt may be left
out for all), and the reply repeats status, dsn and reason in
the same order (``batch_reply``, ``results_from_attrs``), with the DSN details
(action, mta, diag, diag_type, passed_on) for each when any result has them.

``QueueContent`` opens the queue file named by a request, takes a shared flock
(qmgr holds an exclusive one only while it picks the file up), and reads the
message from the data offset up to the X record a block at a time
(``queue_file.content_text``), as often as the agent delivers it: memory
does not grow with the message. It refuses a file that is gone, locked
exclusively or malformed (``ContentError``: the caller defers). A malformed
file (``ContentError.damaged``) is no reason to try again: the agent's
reply says ``corrupt`` (``DeliveryResult.unreadable``, once per reply), and
qmgr saves the file to corrupt/ when the message's deliveries are done, as
Postfix's agents mark a damaged file for its qmgr (mark_corrupt). An agent marks
each recipient it delivered done in the file itself before it replies
(``QueueContent.mark_sent``, Postfix's deliver_completed): the reply may reach
no one (a qmgr that a reload made exit during a long delivery).
"""

from __future__ import annotations

import fcntl
import math
import os
import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from pymailsys import log
from pymailsys.dsn import NOTIFY_MASK, NOTIFY_SUCCESS
from pymailsys.ipc.attr import AttrList, AttrValue, Limits, ProtocolError
from pymailsys.ipc.services import STATUS_BOUNCED, STATUS_DEFERRED, STATUS_SENT
from pymailsys.queue import spool
from pymailsys.queue.queue_file import (
    Envelope,
    QueueFileError,
    Recipient,
    content_records,
    content_text,
    mark_done,
    read_envelope_fd,
)
from pymailsys.queue.records import REC_TYPE_DONE, REC_TYPE_NORM, REC_TYPE_RCPT, encode_record
from pymailsys.rfc822 import has_control

CHUNK = 65536
RCPT_AREA = 16384  # bytes before the data offset the first read takes in, for mark_sent

MAX_OFFSET = 1 << 40  # queue-file offsets and sizes: far above message_size_limit
MAX_TIME = 1 << 40  # seconds since the epoch
MAX_ADDRESS_LENGTH = 4096
DEL_REQ_FLAG_MASK = 0xFFFF  # Postfix's DEL_REQ_FLAG_* bits
DEL_REQ_FLAG_SUCCESS = 1 << 0  # the agent marks a recipient it delivered done in the file
DEL_REQ_FLAG_BOUNCE = 1 << 1  # (unused, as in Postfix)
DEL_REQ_FLAG_DEFAULT = DEL_REQ_FLAG_SUCCESS | DEL_REQ_FLAG_BOUNCE  # what qmgr sends
# what one delivery request may hold on the wire (read before any field is checked)
REQUEST_LIMITS = Limits(attrs=64, value=MAX_ADDRESS_LENGTH, total=1 << 16)
MAX_PENDING = 100  # unanswered requests on one connection before reading pauses
# a reply's alias members beside its own result: at most this many, each field bounded
MAX_MEMBERS = 1000
MAX_REASON_LENGTH = 4096
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
_DSN_RE = re.compile(r"[245]\.\d{1,3}\.\d{1,3}")


CORRUPT = "corrupt"  # a reply attribute: the queue file is damaged


class ContentError(Exception):
    """The queue file named by a request could not be read; ``damaged`` when the file
    itself is malformed (not the system's trouble, which may pass)."""

    def __init__(self, text: str, damaged: bool = False) -> None:
        super().__init__(text)
        self.damaged = damaged


@dataclass
class DeliveryRequest:
    queue_name: str
    queue_id: str
    data_offset: int
    content_size: int
    arrival_time: float
    active_time: float
    sender: str
    nexthop: str
    rcpt: str
    orig_rcpt: str
    rcpt_offset: int
    dsn_notify: int = 0
    dsn_orcpt: str = ""
    flags: int = 0
    start_time: float = 0.0

    @classmethod
    def from_attrs(cls, attrs: AttrList) -> DeliveryRequest:
        values = attrs.first_values()
        get = values.get
        try:
            data_offset, content_size, rcpt_offset, dsn_notify, flags = [
                int(get(name, 0)) for name in _NUMBERS]  # absent is 0
            queue_name, queue_id, arrival, active, sender, nexthop, rcpt, orig_rcpt, dsn_orcpt = [
                get(name, b"").decode("utf-8", "surrogateescape") for name in _TEXTS]
            arrival_time, active_time = float(arrival or 0), float(active or 0)
        except ValueError:  # the first field at fault, in the fields' order, names itself
            for name in _NUMBERS_AND_TIMES:
                if name in _NUMBERS:
                    _number(values, name)  # a ProtocolError
                else:
                    float(_text(values, name) or 0)
            raise
        return cls(queue_name, queue_id, data_offset, content_size, arrival_time, active_time,
                   sender, nexthop, rcpt, orig_rcpt, rcpt_offset, dsn_notify, dsn_orcpt, flags,
                   time.time()).checked()

    def checked(self) -> DeliveryRequest:
        """Refuse (ValueError) a request whose fields are out of their range.

        A delivery agent may run as root and the request comes from qmgr
        (mail_owner): every field is checked before it is used, as Postfix's
        deliver_request_get and mail_open_ok do, and more: queue name and ID as
        ``spool.valid_queue_name``/``valid_queue_id``; offsets and sizes
        non-negative and bounded; times finite; addresses bounded and free of
        control characters (they go into headers and log lines); flags and
        dsn_notify within their bit masks. Each group is tested at once, field by
        field only to name the one at fault.
        """
        if not spool.valid_queue_name(self.queue_name):
            raise ValueError(f"malformed queue name: {self.queue_name!r}")
        if not spool.valid_queue_id(self.queue_id):
            raise ValueError(f"malformed queue id: {self.queue_id!r}")
        if not (0 <= self.data_offset <= MAX_OFFSET and 0 <= self.content_size <= MAX_OFFSET
                and 0 <= self.rcpt_offset <= MAX_OFFSET):
            for name in ("data_offset", "content_size", "rcpt_offset"):
                value = getattr(self, name)
                if not 0 <= value <= MAX_OFFSET:
                    raise ValueError(f"{name} out of range: {value}")
        if self.data_offset == 0:
            raise ValueError("data_offset out of range: 0")
        # a NaN fails every comparison and an infinity the upper bound: finite when in range
        if not (0 <= self.arrival_time <= MAX_TIME and 0 <= self.active_time <= MAX_TIME):
            for name in ("arrival_time", "active_time"):
                value = getattr(self, name)
                if not (math.isfinite(value) and 0 <= value <= MAX_TIME):
                    raise ValueError(f"{name} out of range: {value}")
        if not self.rcpt:
            raise ValueError("empty recipient")
        joined = "".join((self.sender, self.rcpt, self.orig_rcpt, self.dsn_orcpt, self.nexthop))
        if len(joined) > MAX_ADDRESS_LENGTH or has_control(joined):  # each is no longer
            for name in ("sender", "rcpt", "orig_rcpt", "dsn_orcpt", "nexthop"):
                value = getattr(self, name)
                if len(value) > MAX_ADDRESS_LENGTH:
                    raise ValueError(f"{name} longer than {MAX_ADDRESS_LENGTH} characters")
                if has_control(value):
                    raise ValueError(f"{name} contains control characters: {value!r}")
        if not (0 <= self.dsn_notify <= NOTIFY_MASK and 0 <= self.flags <= DEL_REQ_FLAG_MASK):
            if not 0 <= self.dsn_notify <= NOTIFY_MASK:
                raise ValueError(f"dsn_notify out of range: {self.dsn_notify}")
            raise ValueError(f"flags out of range: {self.flags}")
        return self


# a request's attributes as DeliveryRequest.from_attrs reads them, in its fields' order
_NUMBERS = ("data_offset", "content_size", "rcpt_offset", "dsn_notify", "flags")
_TEXTS = ("queue_name", "queue_id", "arrival_time", "active_time", "sender", "nexthop", "rcpt",
          "orig_rcpt", "dsn_orcpt")
_NUMBERS_AND_TIMES = ("data_offset", "content_size", "arrival_time", "active_time",
                      "rcpt_offset", "dsn_notify", "flags")


def _text(values: dict[str, bytes], name: str) -> str:
    value = values.get(name)
    return "" if value is None else value.decode("utf-8", "surrogateescape")


def _number(values: dict[str, bytes], name: str) -> int:
    """As ``AttrList.number``: absent is 0, anything but a number a ProtocolError."""
    value = values.get(name)
    if value is None:
        return 0
    try:
        return int(value)
    except ValueError:
        raise ProtocolError(f"attribute {name}: not a number: {value!r}") from None


def message_attrs(queue_name: str, queue_id: str, data_offset: int, content_size: int,
                  arrival_time: float, active_time: float, sender: str,
                  flags: int = 0, encoding: str = "", dsn_envid: str = "",
                  dsn_ret: int = 0, smtputf8: int = 0) -> list[tuple[str, AttrValue]]:
    """The part of a request that is the same for every recipient of one message
    (``encoding``, ``dsn_envid``, ``dsn_ret`` and ``smtputf8`` only when set)."""
    out: list[tuple[str, AttrValue]] = [
        ("queue_name", queue_name), ("queue_id", queue_id), ("data_offset", data_offset),
        ("content_size", content_size), ("arrival_time", f"{arrival_time:.6f}"),
        ("active_time", f"{active_time:.6f}"), ("sender", sender), ("flags", flags)]
    if encoding:
        out.append(("encoding", encoding))
    if dsn_envid:
        out.append(("dsn_envid", dsn_envid))
    if dsn_ret:
        out.append(("dsn_ret", dsn_ret))
    if smtputf8:
        out.append(("smtputf8", smtputf8))
    return out


def request_attrs(common: list[tuple[str, AttrValue]], nexthop: str, rcpt: str, orig_rcpt: str,
                  rcpt_offset: int, dsn_notify: int = 0,
                  dsn_orcpt: str = "") -> list[tuple[str, AttrValue]]:
    out = list(common)
    out += [("nexthop", nexthop), ("rcpt", rcpt), ("orig_rcpt", orig_rcpt),
            ("rcpt_offset", rcpt_offset)]
    if dsn_notify:
        out.append(("dsn_notify", dsn_notify))
    if dsn_orcpt:
        out.append(("dsn_orcpt", dsn_orcpt))
    return out


def batch_request_attrs(common: list[tuple[str, AttrValue]], nexthop: str,
                        recipients: list[Recipient]) -> list[tuple[str, AttrValue]]:
    """A request for several recipients of one message to one nexthop."""
    out = list(common)
    out.append(("nexthop", nexthop))
    for rc in recipients:
        out += [("rcpt", rc.address), ("orig_rcpt", rc.orig), ("rcpt_offset", rc.offset),
                ("dsn_notify", rc.notify), ("dsn_orcpt", rc.dsn_orcpt)]
    return out


def request_recipients(attrs: AttrList) -> list[Recipient]:
    """The recipients of a (batch) request, in order; ProtocolError when they do not line up."""
    columns = [attrs.all(name) for name in
               ("rcpt", "orig_rcpt", "rcpt_offset", "dsn_notify", "dsn_orcpt")]
    count = len(columns[0])
    for i in (1, 3, 4):  # optional: absent for every recipient means the default
        if not columns[i]:
            columns[i] = ["0" if i == 3 else ""] * count
    if count == 0 or any(len(c) != count for c in columns):
        raise ProtocolError("recipient attributes do not line up")
    try:
        return [Recipient(a, o, int(off), False, int(n or 0), orcpt)
                for a, o, off, n, orcpt in zip(*columns, strict=True)]
    except ValueError:
        raise ProtocolError("recipient offset or notify flags not a number") from None


DIAG_UNIX = "x-unix"  # a diag that is a local command's output, not an SMTP reply


@dataclass(frozen=True, init=False)
class DeliveryResult:
    """What became of one recipient. The DSN details are optional: ``action`` when
    not the status's own ("relayed" from smtp), ``mta`` and ``diag`` the remote
    server's name and reply (Remote-MTA, Diagnostic-Code ``smtp; ...``; with
    ``diag_type`` ``x-unix``, local's command output, as Postfix's dsb_unix), and
    ``passed_on`` when the next hop announced DSN and took over the sender's NOTIFY
    (RFC 3461 5.2.2: no success notice from here)."""

    status: str
    dsn: str
    reason: str
    action: str = ""
    mta: str = ""
    diag: str = ""
    passed_on: bool = False
    # the address the result concerns when it is not the request's recipient (local: an
    # alias or .forward member); the status log names it, expanded from the recipient
    rcpt: str = ""
    # local: more members with this same status, each (address, dsn, reason): each gets
    # its own status-log entry, as Postfix's local appends one per member
    also: tuple[tuple[str, str, str], ...] = ()
    # the queue file is damaged: qmgr saves it to corrupt/ (the reply's ``corrupt``)
    corrupt: bool = False
    diag_type: str = ""  # of diag: "" for smtp, else "x-unix"
    # who delivered, for a success notice ("delivery via RELAY: reason", Postfix's
    # trace_append): set only for a recipient who asked NOTIFY=SUCCESS
    relay: str = ""

    def __init__(self, status: str, dsn: str, reason: str, action: str = "", mta: str = "",
                 diag: str = "", passed_on: bool = False, rcpt: str = "",
                 also: tuple[tuple[str, str, str], ...] = (), corrupt: bool = False,
                 diag_type: str = "", relay: str = "") -> None:
        # The fields in their order (init=False: this __init__), since the one dataclass
        # makes for a frozen class sets each with object.__setattr__, which costs Python
        # 2.3 times the instructions (15,000: a result per delivery and per reply).
        self.__dict__.update(status=status, dsn=dsn, reason=reason, action=action, mta=mta,
                             diag=diag, passed_on=passed_on, rcpt=rcpt, also=also,
                             corrupt=corrupt, diag_type=diag_type, relay=relay)

    @classmethod
    def sent(cls, reason: str, dsn: str = "2.0.0") -> DeliveryResult:
        return cls(STATUS_SENT, dsn, reason)

    @classmethod
    def deferred(cls, reason: str, dsn: str = "4.3.0") -> DeliveryResult:
        return cls(STATUS_DEFERRED, dsn, reason)

    @classmethod
    def bounced(cls, reason: str, dsn: str = "5.3.0") -> DeliveryResult:
        return cls(STATUS_BOUNCED, dsn, reason)

    @classmethod
    def unreadable(cls, error: ContentError | None = None) -> DeliveryResult:
        """Deferred: the queue file could not be read; ``corrupt`` when it is damaged."""
        return cls(STATUS_DEFERRED, "4.3.0", "cannot read queue file",
                   corrupt=error is not None and error.damaged)

    @classmethod
    def from_dsn(cls, dsn: str, reason: str) -> DeliveryResult:
        """A result from an enhanced status code, its class deciding: 2.x.x sent,
        5.x.x bounced, anything else deferred (4.3.0 when the code is not 4.x.x), so a
        failure never turns into a bounce by accident."""
        if dsn[:2] == "2.":
            return cls.sent(reason, dsn)
        if dsn[:2] == "5.":
            return cls.bounced(reason, dsn)
        return cls.deferred(reason, dsn if dsn[:2] == "4." else "4.3.0")

    @classmethod
    def from_attrs(cls, attrs: AttrList) -> DeliveryResult:
        status = attrs.text("status")
        if status not in (STATUS_SENT, STATUS_DEFERRED, STATUS_BOUNCED):
            return cls.deferred(f"unknown delivery status {status!r}")
        return cls(status, attrs.text("dsn"), attrs.text("reason"), attrs.text("action"),
                   attrs.text("mta"), attrs.text("diag"), attrs.text("passed_on") == "1",
                   rcpt=_address(attrs.text("rcpt")), also=_members(attrs, status),
                   diag_type=_diag_type(attrs.text("diag_type")),
                   relay=_address(attrs.text("relay")))

    @property
    def final(self) -> bool:
        return self.status != STATUS_DEFERRED

    @property
    def has_detail(self) -> bool:
        return bool(self.action or self.mta or self.diag or self.passed_on)

    def detail_attrs(self) -> list[tuple[str, str]]:
        return [("action", self.action), ("mta", self.mta), ("diag", self.diag),
                ("diag_type", self.diag_type), ("passed_on", "1" if self.passed_on else "0")]

    def reply(self) -> list[tuple[str, AttrValue]]:
        out: list[tuple[str, AttrValue]] = [
            ("status", self.status), ("dsn", self.dsn), ("reason", self.reason)]
        if self.has_detail:
            out += self.detail_attrs()
        if self.rcpt:
            out.append(("rcpt", self.rcpt))
        if self.relay:
            out.append(("relay", self.relay))
        for address, dsn, reason in self.also:
            out += [("also_rcpt", address), ("also_dsn", dsn), ("also_reason", reason)]
        if self.corrupt:
            out.append((CORRUPT, "1"))
        return out

    def entries(self, rcpt: str) -> list[tuple[str, str, str]]:
        """(address, dsn, reason) of each status-log entry this result makes for the
        request's recipient ``rcpt``."""
        return [(self.rcpt or rcpt, self.dsn, self.reason), *self.also]


def _address(value: str) -> str:
    """A member address from a reply, or "" (the request's recipient) when it is too
    long or holds control characters: it goes into the status log and the bounce."""
    if len(value) > MAX_ADDRESS_LENGTH or _CONTROL_RE.search(value):
        return ""
    return value


def _diag_type(value: str) -> str:
    """A reply's diag_type: x-unix, else "" (smtp)."""
    return value if value == DIAG_UNIX else ""


def _members(attrs: AttrList, status: str) -> tuple[tuple[str, str, str], ...]:
    """The ``also_*`` members of a reply with ``status`` (deferred or bounced): at most
    MAX_MEMBERS, each a bounded address free of control characters, a DSN code of that
    status's class and a bounded reason; none when the columns do not line up."""
    if status == STATUS_SENT:
        return ()
    columns = [attrs.all(name) for name in ("also_rcpt", "also_dsn", "also_reason")]
    if len({len(c) for c in columns}) != 1:
        return ()
    out: list[tuple[str, str, str]] = []
    for address, dsn, reason in zip(*columns, strict=True):
        if len(out) == MAX_MEMBERS:
            break
        if (not address or _address(address) != address or not _DSN_RE.fullmatch(dsn)
                or dsn[0] != ("4" if status == STATUS_DEFERRED else "5")):
            continue
        out.append((address, dsn, _CONTROL_RE.sub(" ", reason[:MAX_REASON_LENGTH])))
    return tuple(out)


BAD_REQUEST = "bad delivery request"


def refusal(attrs: AttrList, error: Exception, count: int) -> list[tuple[str, AttrValue]]:
    """The reply to a request refused as malformed (``DeliveryRequest.checked``): the
    warning logged with the request's queue ID when it is one, each of its ``count``
    recipients deferred "bad delivery request", and ``refused`` 1, which tells qmgr
    that no status line was logged for them, so that qmgr logs it."""
    queue_id = attrs.text("queue_id")
    prefix = f"{queue_id}: " if spool.valid_queue_id(queue_id) else ""
    log.warning(f"{prefix}{BAD_REQUEST}: {error}")
    return [*batch_reply([DeliveryResult.deferred(BAD_REQUEST)] * count), ("refused", 1)]


def batch_reply(results: list[DeliveryResult],
                hop: DeliveryResult | None = None) -> list[tuple[str, AttrValue]]:
    """The reply to a batch request: status, dsn, reason per recipient, in order,
    and the DSN details for every recipient when any has them, as the relay of a success
    to be reported (``relay``, "" for the others); ``hop``: the nexthop itself could not
    be reached (``hop_dsn``, ``hop_reason``)."""
    detail = any(r.has_detail for r in results)
    relayed = any(r.relay for r in results)
    out: list[tuple[str, AttrValue]] = []
    for r in results:
        out += [("status", r.status), ("dsn", r.dsn), ("reason", r.reason)]
        if detail:
            out += r.detail_attrs()
        if relayed:
            out.append(("relay", r.relay))
    if hop is not None:
        out += [("hop_dsn", hop.dsn), ("hop_reason", hop.reason)]
    if any(r.corrupt for r in results):
        out.append((CORRUPT, "1"))
    return out


def says_corrupt(attrs: AttrList) -> bool:
    """Whether an agent's reply says the queue file is damaged."""
    return attrs.raw(CORRUPT) is not None


def hop_failure(attrs: AttrList) -> DeliveryResult | None:
    """The reply's word that the whole destination is failing (deferred), or None."""
    reason = attrs.text("hop_reason")
    if not reason:
        return None
    dsn = attrs.text("hop_dsn")
    return DeliveryResult.deferred(reason, dsn if dsn.startswith("4.") else "4.4.1")


_STATUS_BYTES = {s.encode(): s for s in (STATUS_SENT, STATUS_DEFERRED, STATUS_BOUNCED)}
_RESULT_COLUMNS = ("status", "dsn", "reason", "action", "mta", "diag", "diag_type", "passed_on",
                   "rcpt", "relay")


def results_from_attrs(attrs: AttrList, count: int,
                       missing: DeliveryResult) -> list[DeliveryResult]:
    """The results of a request for count recipients; ``missing`` for any the reply lacks
    (``rcpt``, when the reply names one per recipient: the member a result concerns).
    The reply's columns are gathered in one pass over it (it was one per column:
    ``tests/bench/qmgr_functions.py --function reply``). The reply to one recipient
    that is status, dsn and reason alone (local's to nearly every request) is read
    at once: the long way gives it the same result."""
    pairs = attrs.pairs
    if count == 1 and len(pairs) == 3:
        (n1, status), (n2, dsn), (n3, reason) = pairs
        if n1 == "status" and n2 == "dsn" and n3 == "reason" and status in _STATUS_BYTES:
            return [DeliveryResult(_STATUS_BYTES[status], dsn.decode("utf-8", "surrogateescape"),
                                   reason.decode("utf-8", "surrogateescape"))]
    columns: dict[str, list[str]] = {name: [] for name in _RESULT_COLUMNS}
    for name, value in attrs.pairs:
        column = columns.get(name)
        if column is not None:
            column.append(value.decode("utf-8", "surrogateescape"))
    statuses, dsns, reasons = columns["status"], columns["dsn"], columns["reason"]
    actions, mtas, diags, passed = (columns["action"], columns["mta"], columns["diag"],
                                    columns["passed_on"])
    if (len(actions) != count or len(mtas) != count or len(diags) != count
            or len(passed) != count):  # not any(generator): a GeneratorExit when it stops early
        actions = mtas = diags = [""] * count
        passed = ["0"] * count
    diag_types = columns["diag_type"]
    if len(diag_types) != count:
        diag_types = [""] * count
    members, relays = columns["rcpt"], columns["relay"]
    if len(members) != count:
        members = [""] * count
    if len(relays) != count:
        relays = [""] * count
    answered = min(len(statuses), len(dsns), len(reasons))
    out = []
    for i in range(count):
        if i >= answered:
            out.append(missing)
        elif statuses[i] not in (STATUS_SENT, STATUS_DEFERRED, STATUS_BOUNCED):
            out.append(DeliveryResult.deferred(f"unknown delivery status {statuses[i]!r}"))
        else:
            out.append(DeliveryResult(statuses[i], dsns[i], reasons[i], actions[i], mtas[i],
                                      diags[i], passed[i] == "1",
                                      rcpt=_address(members[i]) if members[i] else "",
                                      also=_members(attrs, statuses[i]) if count == 1 else (),
                                      diag_type=_diag_type(diag_types[i]),
                                      relay=_address(relays[i])))
    return out


def log_line(queue_id: str, rcpt: str, orig_rcpt: str, relay: str, arrival: float,
             active: float, start: float, result: DeliveryResult, now: float | None = None,
             conn: float = 0.0, conn_use: int = 0) -> str:
    """Postfix's per-recipient delivery log line (without the tag); ``conn_use`` (> 1)
    says which use of a cached connection carried it."""
    if now is None:
        now = time.time()
    fmt = log.format_delay
    a = max(active - arrival, 0.0) if active else 0.0
    b = max(start - active, 0.0) if active else 0.0
    d = max(now - start - conn, 0.0)
    orig = f", orig_to=<{log.address(orig_rcpt)}>" if orig_rcpt and orig_rcpt != rcpt else ""
    use = f", conn_use={conn_use}" if conn_use > 1 else ""
    return (f"{queue_id}: to=<{log.address(rcpt)}>{orig}, relay={relay}{use}, "
            f"delay={fmt(max(now - arrival, 0.0))}, "
            f"delays={fmt(a)}/{fmt(b)}/{fmt(conn)}/{fmt(d)}, dsn={result.dsn}, "
            f"status={result.status} ({result.reason})")


def log_result(request: DeliveryRequest, relay: str, result: DeliveryResult) -> None:
    log.info(log_line(request.queue_id, request.rcpt, request.orig_rcpt, relay,
                      request.arrival_time, request.active_time, request.start_time, result))


class QueueContent:
    """An open, shared-locked queue file whose message is read on demand; close() releases it.

    ``text()`` gives the message as LF-terminated lines in chunks of about
    CHUNK bytes, read from the file each time it is called (one delivery after
    another, never the whole message in memory); ``header_lines()`` the
    primary header lines; ``attributes()`` the envelope's named attributes.
    They raise ``ContentError`` for a damaged file.

    The first CHUNK bytes from the data offset are read once, when the file is
    opened (a data offset at or past the end is refused then). When that read
    reaches the end of the file (most mail), the text is decoded from it once, at
    the first ``text()`` or ``header_lines()``, and kept: every delivery of the
    request and the header scan use the same bytes, at most CHUNK of them. A
    larger message keeps only those first raw bytes, for the first block of each
    pass over it.
    """

    def __init__(self, path: str, data_offset: int | None = None,
                 fd: int | None = None, rcpt_offsets: Iterable[int] = ()) -> None:
        """data_offset None: read the envelope (``self.envelope``) and take it from there.
        ``fd``: the queue file already open (``Spool.open_queue_file``); it is owned
        from here on. ``rcpt_offsets``: the R records ``mark_sent`` will check; those
        at most RCPT_AREA bytes before the data offset (most) come in the first read."""
        if fd is None:
            try:
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
            except OSError as e:
                raise ContentError(f"open queue file {path}: {e.strerror}") from None
        self.fd = fd
        self.envelope: Envelope | None = None
        try:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError as e:
                raise ContentError(f"lock queue file {path}: {e.strerror}") from None
            if data_offset is None:
                try:
                    self.envelope = read_envelope_fd(self.fd, os.path.basename(path), path)
                except (QueueFileError, ValueError) as e:
                    raise ContentError(f"queue file {path}: {e}", damaged=True) from None
                data_offset = self.envelope.data_offset
            start = min((o for o in rcpt_offsets if 0 < o < data_offset
                         and data_offset - o <= RCPT_AREA), default=data_offset)
            head = os.pread(self.fd, CHUNK + data_offset - start, start) \
                if data_offset > 0 else b""
            self._rcpt_start = start
            self._rcpt_area = head[:data_offset - start]
            head = head[data_offset - start:]
            if not head:
                raise ContentError(f"queue file {path}: bad data offset {data_offset}",
                                   damaged=True)
        except OSError as e:
            os.close(self.fd)
            raise ContentError(f"read queue file {path}: {e.strerror}") from None
        except BaseException:
            os.close(self.fd)
            raise
        self.path = path
        self.data_offset = data_offset
        self._head = head
        self._whole = len(head) < CHUNK  # the read reached the end: the message is all here
        self._text: bytes | None = None  # the decoded text, once read, when _whole
        self._attributes: dict[str, str] | None = None

    def attributes(self) -> dict[str, str]:
        """The queue file's named attributes (``client_address``, ``log_helo_name``...),
        read from its envelope once, without its recipients."""
        if self.envelope is not None:
            return self.envelope.attrs
        if self._attributes is None:
            try:
                envelope = read_envelope_fd(self.fd, os.path.basename(self.path), self.path,
                                            rcpt_limit=1)
            except OSError as e:
                raise ContentError(f"queue file {self.path}: {e}") from None
            except (QueueFileError, ValueError) as e:
                raise ContentError(f"queue file {self.path}: {e}", damaged=True) from None
            self._attributes = envelope.attrs
        return self._attributes

    def _records(self) -> Iterator[tuple[bytes, bytes]]:
        try:
            yield from content_records(self.fd, self.data_offset, CHUNK, self._head)
        except OSError as e:
            raise ContentError(f"queue file {self.path}: {e}") from None
        except QueueFileError as e:
            raise ContentError(f"queue file {self.path}: {e}", damaged=True) from None

    def _decoded(self, chunk: int) -> Iterator[bytes]:
        try:
            yield from content_text(self.fd, self.data_offset, chunk, self._head)
        except OSError as e:
            raise ContentError(f"queue file {self.path}: {e}") from None
        except QueueFileError as e:
            raise ContentError(f"queue file {self.path}: {e}", damaged=True) from None

    def _whole_text(self) -> bytes | None:
        """The whole text of a message that the first read took in; None for a larger one."""
        if self._text is None and self._whole:
            self._text = b"".join(self._decoded(CHUNK))
            self._head = b""  # decoded: the raw bytes are not needed again
        return self._text

    def text(self, chunk: int = CHUNK) -> Iterator[bytes]:
        """The message, lines ending in LF, in chunks that end at a line end or, inside a
        line longer than a chunk, after one of its L records (``content_text``); a
        message that the first read took in whole comes as one chunk."""
        whole = self._whole_text()
        if whole is None:
            yield from self._decoded(chunk)
        elif whole:
            yield whole

    def headers_may_contain(self, lowercase: bytes) -> bool:
        """False only when the primary headers of a message that the first read took in
        whole do not contain ``lowercase`` in any case: a header scan can be skipped."""
        whole = self._whole_text()
        if whole is None:
            return True
        end = whole.find(b"\n\n")
        return lowercase in (whole if end < 0 else whole[:end + 1]).lower()

    def header_lines(self, limit: int = 1 << 20) -> Iterator[bytes]:
        """The primary header lines (a line's first ``limit`` bytes), up to the empty line."""
        whole = self._whole_text()
        if whole is not None:
            start = 0
            while (end := whole.find(b"\n", start)) > start:
                yield whole[start:min(end, start + limit)]
                start = end + 1
            return
        line: list[bytes] = []
        size = 0
        for rtype, payload in self._records():
            if size < limit:
                line.append(payload)
                size += len(payload)
            if rtype == REC_TYPE_NORM:
                whole = b"".join(line)
                if not whole:
                    return
                yield whole
                line = []
                size = 0

    def mark_sent(self, queue_id: str, rcpt: str, offset: int, notify: int, flags: int,
                  result: DeliveryResult) -> None:
        """Mark a recipient that was just delivered done in the queue file, before the
        reply, as Postfix's agents do (deliver_completed): a qmgr that is gone by the time
        the reply comes (a reload during a long delivery) cannot have the next one
        deliver it again. The file must be open read-write
        (``Spool.open_queue_file(writable=True)``); qmgr marks it again, harmlessly.

        Only when the request's flags ask for it (DEL_REQ_FLAG_SUCCESS: qmgr sets it,
        local clears it when it passes an address an alias expanded to to another
        agent) and for a result that needs nothing more from qmgr: sent, without
        NOTIFY=SUCCESS (qmgr writes the success notice's trace log first). A bounced
        or deferred recipient stays for qmgr: its notice goes through qmgr's status
        logs.

        The offset comes from qmgr (mail_owner) and this agent may be root: the bytes
        there must be this recipient's R record (or its D record: done already), inside
        the file and past its first record; anything else is refused and logged. Only
        the type byte is written: one pwrite, no fsync (a crash may repeat a delivery,
        never lose one), and a pread only for a record that the first read did not
        take in (``rcpt_offsets``)."""
        if (result.status != STATUS_SENT or notify & NOTIFY_SUCCESS
                or not flags & DEL_REQ_FLAG_SUCCESS):
            return
        expected = encode_record(REC_TYPE_RCPT, rcpt.encode("utf-8", "surrogateescape"))
        at = offset - self._rcpt_start
        try:
            if 0 <= at and at + len(expected) <= len(self._rcpt_area):
                found = self._rcpt_area[at:at + len(expected)]
            else:
                found = os.pread(self.fd, len(expected), offset) if offset > 0 else b""
        except OSError as e:
            log.warning(f"{queue_id}: cannot mark recipient {rcpt} done: {e.strerror}")
            return
        if found[1:] != expected[1:] or found[:1] not in (REC_TYPE_RCPT, REC_TYPE_DONE):
            log.warning(f"{queue_id}: not marking recipient {rcpt} done: offset {offset} "
                        f"is not its recipient record")
            return
        if found[:1] == REC_TYPE_DONE:
            return
        try:
            mark_done(self.fd, offset)
        except OSError as e:
            log.warning(f"{queue_id}: cannot mark recipient {rcpt} done: {e.strerror}")

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> QueueContent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
