"""qmgr: the queue manager.

NAME
    qmgr - move mail from the queue to the delivery agents

SYNOPSIS
    python3 -m pymailsys.daemons.qmgr [generic daemon options]
    (master.cf: ``qmgr unix n - n 300 1 qmgr``)

DESCRIPTION
    qmgr is a resident trigger server on ``public/qmgr``. At start it moves
    every file in active/ back to incoming/ (crash recovery), then scans
    incoming/ and deferred/. cleanup names each new file in its trigger as
    ``<HEX>`` (the queue ID in lower-case hex, ``pymailsys.ipc.trigger.encode_named_ids``):
    qmgr takes those files without scanning incoming/ (a record cut off or
    damaged in transit falls back to a scan), while there is room at once, in
    the loop turn that reads the trigger, which also writes their first
    delivery requests to agents already connected. Trigger bytes: ``I`` scan incoming, ``D`` scan
    deferred, ``A`` ignore deferred time stamps on the next deferred scan,
    ``F`` forget dead destinations, ``W`` wake up: scan
    incoming, and deferred once every ``queue_run_delay`` (also on its own
    timer).

    A scan (``pymailsys.queue.scan``) reads its queue directory as it goes
    and takes every complete file (mode 0700) not already in the active
    queue: from deferred/ only files whose mtime (the next try) has come,
    unless ``A`` (then each file once: not those that came back during the
    scan); from incoming/ files whose mtime is not in the future (a file
    found locked is put back with mtime now + 60 s). At most
    ``qmgr_message_active_limit`` messages are active at once; while there
    is room, qmgr admits the files cleanup named first, then one file of the
    incoming scan and one of the deferred scan in turn (Postfix's
    qmgr_loop), so mail that arrives during a scan of a million deferred
    messages waits for one free slot, not for the scan. A scan asked for
    while one of the same queue runs starts when that one ends (a flush
    restarts a deferred scan that honours time stamps).

    Per message: rename into active/, open, ``flock`` exclusive and
    non-blocking (held by someone else: ``ID: skipped, still being
    delivered``, retried in 60 s), read the envelope once (a malformed file
    goes to corrupt/ with ``warning: saving corrupt file``; so does one whose
    content or later recipients turn out damaged, once its requests are
    answered and its bounce notice tried: a delivery agent's or the bounce
    service's reply says ``corrupt``, as Postfix's agents mark such a file
    for its qmgr_active_done; a file that cannot
    be opened or read for the system's reasons, such as too many open files,
    goes back to the queue it came from and is retried in 60 s), downgrade the lock
    to shared (delivery agents take shared locks), remove an old defer log and
    log ``ID: from=<s>, size=N, nrcpt=M (queue active)``. Every pending
    recipient is resolved (``pymailsys.address.resolve``, with the sender for
    sender_dependent_relayhost_maps; an answer is reused for 30 s, as Postfix's
    resolve client does, ``resolve.ResolveCache``), and from then on is the
    address resolved (``user%host@ourdomain`` is ``user@host``, as Postfix's
    qmgr updates it: the agent and the log see it), or, when the message has a content
    filter (the last L record: content_filter or a FILTER action), routed
    to the filter's transport and nexthop (``filter_route``: an empty
    nexthop is default_filter_nexthop, else the recipient's domain, else
    myhostname), and handed to the agent that serves
    ``private/TRANSPORT``. An agent that cannot be reached (no socket there,
    as for a transport that master.cf lacks: not looked for while qmgr holds a
    connection to it; the connection refused, or closed before the hello's
    answer) throttles its transport as Postfix's qmgr does: one warning
    (``connect to transport private/NAME: No such file or directory``, or
    ``private/NAME socket: premature disconnect``), and its recipients, those
    waiting and those that come within transport_retry_time, are deferred untried
    with ``mail transport unavailable`` (4.3.0). qmgr plays Postfix's error, retry and discard agents itself:
    transport ``error`` bounces with its nexthop text (``4.X.Y text`` too, as
    5.0.0), ``retry`` defers with it (4.0.0 when it has no code), transport
    ``discard`` is ``status=sent`` with the nexthop as the reason. A
    recipient whose transport is in ``defer_transports`` is deferred untried
    (``dsn=4.3.2, status=deferred (deferred transport)``), unless a flush
    took its message: a scan after trigger ``F`` (``postqueue -f``,
    ``sendmail -q``, the flush service), or a file with the group read bit
    (``postqueue -i``: its dead destinations are also tried again; qmgr
    clears the bit), as Postfix's QMGR_FLUSH_DFXP and QMGR_FLUSH_EACH.
    The flush service hears of each message with recipients qmgr deferred
    itself (here, for a dead destination, an unavailable transport...): one
    ``add`` per recipient domain once the attempt is over, as Postfix's
    defer_append calls flush_add, so that ETRN and ``postqueue -s`` release
    it (when fast_flush_domains is not empty).

    Scheduling (``pymailsys.queue.scheduler``, Postfix's SCHEDULING and
    CONCURRENCY): the recipients of a message are grouped per destination
    (transport and nexthop; the recipient itself for a transport whose
    ``<transport>_destination_recipient_limit`` is 1, such as local) into
    requests of at most that many recipients (smtp and lmtp: 50 in one
    request and one SMTP transaction), and queued per destination. The
    dispatcher hands them out round-robin over transports and, within a
    transport, over destinations, so 1000 messages (or recipients) for one
    destination do not hold back another. A destination has a concurrency
    window: ``<transport>_initial_destination_concurrency`` at first, up to
    ``<transport>_destination_concurrency_limit``, moved by
    ``..._positive_feedback`` per delivery and ``..._negative_feedback`` per
    site failure (a reply whose ``hop_reason`` says no server of the nexthop
    could be reached); after ``..._failed_cohort_limit`` failed cohorts the
    destination is dead: its waiting recipients, and any that come for it
    until ``minimal_backoff_time`` has passed, are deferred untried
    (``status=deferred (delivery temporarily suspended: REASON)``, logged by
    qmgr). Then it is tried again with a window of 1. ``F`` forgets every
    dead destination. ``<transport>_destination_rate_delay`` (else
    ``default_destination_rate_delay``) above 0 makes the transport's
    destinations take one delivery at a time, with that pause after each
    (Postfix's rate-limited queues: a failed cohort still defers what waits
    for the destination, but it is tried again after the pause). At most the transport's process limit of requests
    are in flight (master.cf's maxproc of its unix service, ``-`` being
    ``default_process_limit``, and never more than that: as many deliveries
    at once as Postfix's agent processes make), over long-lived pipelined
    connections (``AgentPool``: master starts one agent process per
    connection for one-client agents such as local, and no more than that
    limit: a connection beyond it would wait for ever for its agent), with
    the message's common attributes built once. Each request goes to the
    least-loaded connection; when all are busy another is opened, up to
    that limit;
    connections beyond ``AGENT_CONNECTIONS`` that stay idle for
    ``max_idle`` are closed. qmgr opens each agent connection with the hello
    ``protocol=delivery_request_protocol`` (``pymailsys.ipc.attr``: Postfix's
    agents send it unasked) and reads the answer before its first request;
    on a connection whose agent says it serves one request at a time
    (``requests_at_once=1``: local, or any agent on ``attr.serve_sequential``),
    while a destination's window is full, its next request is written behind
    each of its deliveries in flight, so the agent goes from one delivery to
    the next without waiting for qmgr; such a request counts in the window only once
    the one ahead of it is answered (``scheduler.take_behind``). When the
    agent dies both are deferred (``unknown mail transport error``); when it
    closes the connection after its reply to the first (a local process that
    is going away reads nothing more), the second is sent again, as is a
    request whose agent said goodbye without reading it (``attr.NotRead``).
    A request sent again ``RESEND_LIMIT`` times and still not read (a local
    that restarts in a loop) is taken for a broken agent, as Postfix's qmgr
    takes one that crashed: its recipients are deferred (``dsn=4.3.0``,
    ``unknown mail transport error``), qmgr warns ``transport NAME failure --
    see a previous warning/fatal/panic logfile record for the problem
    description``, and mail for that transport is deferred untried, with the
    same words, for ``transport_retry_time`` or until a request in flight to
    it gets its reply (Postfix's qmgr_transport_throttle).

    Memory: at most ``qmgr_message_active_limit`` messages are active and
    at most ``qmgr_message_recipient_limit`` recipients are in memory: a
    message with more is read in slices (at least
    ``qmgr_message_recipient_minimum`` recipients at a time), the next slice
    once every request of the previous one is answered and there is room,
    and no further message is taken while the recipient limit is reached.
    Each active message's file stays open: qmgr raises its soft open-file
    limit to the hard one and takes no more messages than that limit, less
    ``FD_RESERVE``, allows (logging once that it binds).
    A message's next slice also waits while a transport its previous slice
    went to holds ``<transport>_recipient_limit`` recipients in memory.

    Replies: sent and bounced mark the recipient done in place (R -> D);
    bounced appends to bounce/ID, deferred to defer/ID (Postfix's status-log
    format, ``pymailsys.queue.status_log``). A recipient is marked done only
    after the entry for the notice it is owed (bounce/ID, or trace/ID for
    NOTIFY=SUCCESS) is written and fsynced; when that write fails (a full disk)
    it is deferred instead, ``status=deferred (bounce or trace service
    failure)``, as Postfix's bounce_append and sent(). A broken agent connection defers the
    recipient (``unknown mail transport error``) and qmgr logs the line.

    When every request is answered: a bounce log is turned into one
    non-delivery notification by the bounce service (``nondelivery`` asks
    private/bounce, which writes the DSN through public/cleanup; a failing
    notification keeps the message and its bounce log for the next run). Then, no recipient left: unlink the file and its logs,
    ``ID: removed`` (without fsync: a crash before the unlink repeats a
    delivery, which local recognises); recipients deferred: past ``maximal_queue_lifetime``
    (``bounce_queue_lifetime`` for <>, never longer than the former: Postfix's
    warning, then the adjustment), or at once for a file ``postsuper -e``
    marked (mode g+x: no recipient is tried again, each is deferred as
    ``message is administratively expired`` unless a defer log from the last
    attempt gives the reasons; ``status=force-expired``), they bounce with their defer reasons
    (``status=expired, returned to sender``), else the file moves to deferred/
    with mtime now + clamp(now - arrival, minimal_backoff_time,
    maximal_backoff_time) (when it cannot, or the attempt cannot be finished,
    back to incoming/ or deferred/ for a later try: never left in active/).

    Stopping: on ``postfix reload`` qmgr takes no new message, waits up to
    10 s for the replies of deliveries in flight, and exits; on SIGTERM it
    exits at once. A message with a delivery still unanswered then is left
    as it is in active/ (no move to deferred/, no log line: Postfix's qmgr
    exits at once, leaving it there; the agent logs its result and marks a
    recipient it delivered done in the file). The next qmgr moves what is
    left in active/ back to incoming/.

    Agents do not write status logs themselves: qmgr does, from their replies.
    DSN: a sent recipient with NOTIFY=SUCCESS (unless the next hop took the
    NOTIFY over, ``passed_on``) goes to the trace log (trace/ID, action
    delivered, or relayed as the agent says; its reason ``delivery via RELAY:
    ...`` when the agent names its relay, as Postfix's trace_append), and
    finish() asks the bounce
    service for the success notice (request ``trace``). A message deferred
    past its delay warning time (the W record cleanup writes when
    delay_warning_time is set) brings the sender one delay notice (request
    ``warn``, from defer/ID), after which the W record is set to 0 in place.

SECURITY
    qmgr runs as mail_owner (master.cf ``-u``); it reads queue files and talks
    to agents over private/, it never touches mailboxes. public/qmgr is open
    to every local user: a peer (SO_PEERCRED) other than root, mail_owner or
    qmgr's own uid is a flush request, refused unless authorized_flush_users
    allows it, limited to one read of request letters within
    ``peers.USER_TRIGGER_TIMEOUT`` and to ``peers.PER_UID_CONNECTIONS``
    connections at once.

CONFIGURATION PARAMETERS
    info_log_address_format (``from=<…>`` and ``to=<…>``: ``log.address``),
    authorized_flush_users, defer_transports, fast_flush_domains,
    flush_service_name, ipc_timeout, queue_run_delay, minimal_backoff_time, maximal_backoff_time,
    transport_retry_time, maximal_queue_lifetime, bounce_queue_lifetime,
    qmgr_message_active_limit, qmgr_message_recipient_limit, qmgr_message_recipient_minimum,
    default_process_limit, default_destination_concurrency_limit,
    default_destination_recipient_limit, default_recipient_limit,
    initial_destination_concurrency,
    default_destination_concurrency_positive_feedback,
    default_destination_concurrency_negative_feedback,
    default_destination_concurrency_failed_cohort_limit,
    default_destination_rate_delay, destination_concurrency_feedback_debug (each default_* also as
    <transport>_*, e.g. local_destination_recipient_limit), 2bounce_notice_recipient, myhostname,
    myorigin, default_filter_nexthop, hash_queue_depth, hash_queue_names, allow_min_user (no: recipients
    starting with "-" bounce with 5.1.3 before any agent sees them).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import resource
import stat
import time
from collections import deque
from dataclasses import dataclass, field, replace
from typing import NamedTuple

from pymailsys import dsn, log, server
from pymailsys.address import resolve
from pymailsys.config import Config, ConfigError, master_cf, params
from pymailsys.delivery.agent import (
    DEL_REQ_FLAG_DEFAULT,
    DeliveryResult,
    batch_request_attrs,
    hop_failure,
    log_line,
    message_attrs,
    request_attrs,
    results_from_attrs,
    says_corrupt,
)
from pymailsys.ipc import flush, peers, trigger
from pymailsys.ipc.attr import (
    REQUESTS_AT_ONCE,
    AttrClient,
    AttrList,
    AttrValue,
    NotRead,
    ProtocolError,
    RequestTimeout,
)
from pymailsys.ipc.services import BOUNCE, STATUS_BOUNCED, STATUS_DEFERRED, split_content_filter
from pymailsys.queue import scheduler, status_log
from pymailsys.queue import spool as q
from pymailsys.queue.queue_file import (
    Envelope,
    QueueFileError,
    Recipient,
    clear_warning,
    mark_done,
    read_envelope_fd,
)
from pymailsys.queue.scan import QueueScan
from pymailsys.submission import access

PROGRAM = "qmgr"
STOP_DRAIN = 10.0  # seconds for deliveries in flight when qmgr is told to go
LOCKED_RETRY = 60.0
FD_RESERVE = 256  # descriptors kept for sockets, tables, logs and files awaiting close
AGENT_CONNECTIONS = max(2, min(4, os.cpu_count() or 2))
RESEND_LIMIT = 3  # times a request its agent did not read is sent again (Qmgr.answered)
TRANSPORT_UNAVAILABLE = "mail transport unavailable"
TRANSPORT_ERROR = "unknown mail transport error"
TRANSPORT_FAILURE = ("transport {} failure -- see a previous warning/fatal/panic logfile "
                     "record for the problem description")  # Postfix's qmgr_deliver_update
SUSPENDED = "delivery temporarily suspended"
FORCE_EXPIRED = "message is administratively expired"  # Postfix's qmgr_message.c
BOUNCE_LOG_FAILURE = "bounce or trace service failure"  # Postfix's words, bounce.c and sent.c
TRACE_LOG_FAILURE = "trace service failed"
ERROR_TRANSPORT = "error"
RETRY_TRANSPORT = "retry"
DISCARD_TRANSPORT = "discard"
INTERNAL_TRANSPORTS = (ERROR_TRANSPORT, RETRY_TRANSPORT, DISCARD_TRANSPORT)
DEFERRED_TRANSPORT = "4.3.2 deferred transport"  # Postfix's qmgr_message_resolve
RESOLVER_FAILURE = "address resolver failure"  # 4.3.0: the resolver logged why
DELIVERY_PROTOCOL = "delivery_request_protocol"  # the hello qmgr opens agent connections with
FLUSH_SITES_HELD = 100  # sites of one message remembered before the flush service is told


# immutable, so made once: a frozen dataclass costs Python some 15,000 instructions to make
TRANSPORT_ERROR_RESULT = DeliveryResult.deferred(TRANSPORT_ERROR)


class Route(NamedTuple):
    """Where a recipient goes (one per recipient: a named tuple, which Python makes
    in a fifth of the instructions of a frozen dataclass)."""

    transport: str
    nexthop: str
    error: str = ""  # set when resolution failed: defer with this text


def route(r: resolve.Resolved) -> Route:
    """Where a recipient goes, from the resolver's answer."""
    if r.failed:
        return Route(r.transport, r.nexthop, RESOLVER_FAILURE)
    return Route(r.transport, r.nexthop)


def filter_route(content_filter: str, address: str, default_nexthop: str,
                 myhostname: str) -> Route:
    """Where a message with a content filter sends a recipient (Postfix's qmgr: the
    filter overrides the resolver for every recipient, local ones too): its transport,
    and its nexthop, or default_filter_nexthop, or the recipient's domain, or myhostname."""
    split = split_content_filter(content_filter)
    if split is None:
        return Route("", "", f"bad content filter: {log.printable(content_filter)[:100]}")
    transport, nexthop = split
    domain = address.rpartition("@")[2] if "@" in address else ""
    return Route(transport, nexthop or default_nexthop or domain or myhostname)


def _number(text: str) -> int:
    return int(text) if text.isdigit() else 0


def internal_result(where: Route) -> DeliveryResult:
    """The result of Postfix's error, retry and discard agents, which qmgr plays itself.

    error: bounced, the nexthop ``X.Y.Z text`` (or just text: 5.0.0). A code of
    another class is 5.0.0 with Postfix's warning ``bounce_append: ignoring dsn
    code "4.7.1"``: Debian's Postfix 3.7 bounces ``error:4.7.1 text`` too.
    retry: the same, deferred (just text: 4.0.0; a code other than 4.X.Y is
    4.0.0, with defer_append's warning).
    discard: sent, with the nexthop (or "discarded") as the reason.
    """
    if where.transport == DISCARD_TRANSPORT:
        return DeliveryResult.sent(where.nexthop or "discarded", "2.0.0")
    retry = where.transport == RETRY_TRANSPORT
    default = "4.0.0" if retry else "5.0.0"
    code, _, text = where.nexthop.partition(" ")
    if not (code[:1] in ("2", "4", "5") and code.count(".") == 2):
        code, text = default, where.nexthop
    elif code[0] != default[0]:
        log.warning(f'{"defer" if retry else "bounce"}_append: ignoring dsn code "{code}"')
        code = default
    return (DeliveryResult.deferred if retry else DeliveryResult.bounced)(text, code)


@dataclass
class Message:
    queue_id: str
    path: str
    fd: int
    env: Envelope
    active_time: float
    common: list[tuple[str, AttrValue]]
    fresh: bool = False  # named by cleanup's trigger: no status logs can exist yet
    deferred: int = 0
    sent: int = 0
    bounced: int = 0
    traced: int = 0  # sent recipients in the trace log (NOTIFY=SUCCESS)
    entries: int = 0  # entries of it in the scheduler or in flight
    loaded: int = 0  # its recipients in memory (qmgr_message_recipient_limit)
    transports: set[str] = field(default_factory=set)  # those its last slice went to
    corrupt: bool = False  # an agent (or the bounce service) found the file damaged
    forced: bool = False  # postsuper -e: returned to the sender now (force-expired)
    flushed: bool = False  # taken for a flush: defer_transports does not hold it back
    unthrottle: bool = False  # postqueue -i: its dead destinations are tried again
    flush_sites: set[str] = field(default_factory=set)  # of recipients qmgr deferred itself


@dataclass
class Entry:
    """A delivery request waiting in the scheduler: recipients of one message for one
    destination, at most the transport's destination recipient limit."""

    msg: Message
    nexthop: str
    rcpts: list[Recipient]
    resent: int = 0  # times sent again because its agent went away without reading it


class Unreachable(ProtocolError):
    """An agent that could not be reached: no connection, or one closed (or timed out)
    before the hello's answer; nothing of the request went out."""

    def __init__(self, cause: ProtocolError | OSError) -> None:
        super().__init__(str(cause))
        self.cause = cause

    def warning(self, transport: str) -> str:
        """Postfix's qmgr warning for it."""
        if isinstance(self.cause, OSError):
            return (f"connect to transport {q.PRIVATE}/{transport}: "
                    f"{self.cause.strerror or self.cause}")
        if isinstance(self.cause, RequestTimeout):
            return f"timeout connecting to transport: {transport}"
        return f"{q.PRIVATE}/{transport} socket: premature disconnect"


class _Conn:
    __slots__ = ("client", "load", "last_used")

    def __init__(self, client: AttrClient) -> None:
        self.client = client
        self.load = 0
        self.last_used = time.monotonic()

    @property
    def sequential(self) -> bool:
        """The agent said, when qmgr connected, that it serves one request at a time
        (``attr.serve_sequential``, such as local's): a request written behind the
        one in progress waits in the agent."""
        greeting = self.client.greeting
        return greeting is not None and greeting.raw(REQUESTS_AT_ONCE) == b"1"


class _Lane:
    """One delivery in flight on an agent connection, and the entry sent behind it."""

    __slots__ = ("dest", "conn", "behind")

    def __init__(self, dest: scheduler.Destination[Entry], conn: _Conn) -> None:
        self.dest = dest
        self.conn = conn
        self.behind: tuple[Entry, tuple[float, asyncio.Future[AttrList]]] | None = None


class AgentPool:
    """Long-lived pipelined connections to one transport's socket, one per busy agent.

    A request goes to the least-loaded connection; when every connection is busy
    and there are fewer than ``limit``, a new one is opened (master starts one
    agent process per connection for one-client agents such as local), so the
    number of agents working in parallel follows the concurrency qmgr wants.
    Each connection opens with the hello (``DELIVERY_PROTOCOL``), whose answer
    says whether the agent serves one request at a time (``_Conn.sequential``).
    ``reap`` closes connections beyond ``keep`` that stayed idle.
    """

    def __init__(self, path: str, limit: int, timeout: float,
                 keep: int = AGENT_CONNECTIONS) -> None:
        self.path = path
        self.limit = max(limit, 1)
        self.timeout = timeout
        self.keep = max(min(keep, self.limit), 1)
        self.conns: list[_Conn] = []

    def take(self) -> _Conn:
        """The connection for a new delivery (counted until ``give_back``)."""
        best: _Conn | None = None
        for c in self.conns:
            if best is None or c.load < best.load:
                best = c
                if c.load == 0:
                    break
        if best is None or (best.load > 0 and len(self.conns) < self.limit):
            best = _Conn(AttrClient(self.path, self.timeout, hello=DELIVERY_PROTOCOL))
            self.conns.append(best)
        best.load += 1
        return best

    def give_back(self, conn: _Conn) -> None:
        conn.load -= 1
        conn.last_used = time.monotonic()

    async def reap(self, idle: float) -> None:
        """Close connections beyond ``keep`` that have been idle for ``idle`` seconds."""
        now = time.monotonic()
        for c in list(self.conns):
            if len(self.conns) <= self.keep:
                break
            if c.load == 0 and now - c.last_used >= idle:
                self.conns.remove(c)
                await c.client.close()

    async def close(self) -> None:
        for c in self.conns:
            await c.client.close()


class Qmgr:
    def __init__(self, ctx: server.Context) -> None:
        self.ctx = ctx
        # made in the running loop: asyncio.get_running_loop() costs Python 3.11 a getpid
        # system call each time (spawn asked for it once per delivery)
        self.loop = asyncio.get_running_loop()
        cfg = ctx.config
        self.config = cfg
        self.spool = ctx.spool
        self.queue_run_delay = cfg.get_time("queue_run_delay")
        self.min_backoff = cfg.get_time("minimal_backoff_time")
        self.max_backoff = cfg.get_time("maximal_backoff_time")
        self.transport_retry = cfg.get_time("transport_retry_time")
        # transport: (until when (monotonic), the reason): throttle_transport
        self.dead_transports: dict[str, tuple[float, str]] = {}
        self.max_lifetime = cfg.get_time("maximal_queue_lifetime")
        self.bounce_lifetime = cfg.get_time("bounce_queue_lifetime")
        if self.bounce_lifetime > self.max_lifetime:  # as Postfix's qmgr_post_init
            log.warning("bounce_queue_lifetime is larger than maximal_queue_lifetime - "
                        "adjusting bounce_queue_lifetime")
            self.bounce_lifetime = self.max_lifetime
        self.allow_min_user = cfg.get_bool("allow_min_user")
        self.defer_transports = frozenset(cfg.get_list("defer_transports"))
        self.filter_nexthop = cfg.get("default_filter_nexthop"), cfg.get("myhostname")
        self.routes = resolve.ResolveCache(cfg)
        # local(8) delivers one recipient per request
        self.local_transport = cfg.get("local_transport").partition(":")[0].strip()
        self.active_limit = max(cfg.get_int("qmgr_message_active_limit"), 1)
        self.open_file_budget = _open_file_budget()
        self.open_file_warned = False
        self.process_limit = max(cfg.get_int("default_process_limit"), 1)
        self.agent_limits = _agent_process_limits(cfg, self.process_limit)
        self.ipc_timeout = float(cfg.get_time("ipc_timeout"))
        self.active: dict[str, Message] = {}
        self.slot_free = asyncio.Event()
        self.pools: dict[str, AgentPool] = {}
        # lanes of sequential agents with nothing behind their request (Qmgr.fill)
        self.open_lanes: dict[scheduler.Destination[Entry], list[_Lane]] = {}
        self.rcpt_limit = max(cfg.get_int("qmgr_message_recipient_limit"), 1)
        self.rcpt_minimum = max(cfg.get_int("qmgr_message_recipient_minimum"), 1)
        self.rcpt_loaded = 0
        self.transport_loaded: dict[str, int] = {}
        self.hungry: deque[Message] = deque()  # waiting for room to read more recipients
        self._policies: dict[str, scheduler.Policy] = {}
        debug = log.info if cfg.get_bool("destination_concurrency_feedback_debug") else None
        self.sched: scheduler.Scheduler[Entry] = scheduler.Scheduler(
            self.policy, float(self.min_backoff), debug=debug)
        self.sched_wake = asyncio.Event()
        self.resume_timer: asyncio.TimerHandle | None = None  # the next rate-delay pause's end
        self.policy("")  # a bad default is fatal at start, not at the first delivery
        self.bounce = AttrClient(self.spool.private(BOUNCE), timeout=300, hello=BOUNCE)
        self.flush = flush.FlushClient(self.spool.public(cfg.get("flush_service_name")),
                                       self.ipc_timeout,
                                       enabled=bool(cfg.get_list("fast_flush_domains")))
        self.want_incoming = False
        self.want_deferred = False
        self.ignore_time = False
        # the scans running (Qmgr.scanner), and the queues whose next scan is a
        # flush (trigger F: defer_transports is lifted for the files it takes)
        self.scans: dict[str, QueueScan | None] = {q.INCOMING: None, q.DEFERRED: None}
        self.flush_next: set[str] = set()
        self.wake = asyncio.Event()
        self.last_deferred_scan = 0.0
        self.tasks: set[asyncio.Task[None]] = set()
        self._limits: dict[str, tuple[int, int]] = {}
        self.max_idle = float(cfg.get_time("max_idle"))
        # queue IDs named by cleanup after its trigger byte, not yet taken
        self.named: deque[str] = deque()
        self.id_reader = trigger.NamedIdReader()
        self.recently_removed: deque[str] = deque(maxlen=4096)

    # --- parameters per transport ---------------------------------------------------

    def limits(self, transport: str) -> tuple[int, int]:
        """(recipients per request, in-memory recipients) for a transport. local_transport's
        takes one recipient per request whatever its limit says (``postfix check`` warns)."""
        cached = self._limits.get(transport)
        if cached is None:
            per_request = max(self._transport_int(transport, "destination_recipient_limit",
                                                  "default_destination_recipient_limit"), 1)
            if transport == self.local_transport:
                per_request = 1
            cached = (per_request, max(self._transport_int(transport, "recipient_limit",
                                                           "default_recipient_limit"), 1))
            self._limits[transport] = cached
        return cached

    def policy(self, transport: str) -> scheduler.Policy:
        """A transport's scheduling parameters (``<transport>_...``, else the defaults);
        a feedback value Postfix would not take is fatal, as in Postfix."""
        cached = self._policies.get(transport)
        if cached is not None:
            return cached

        def feedback(suffix: str, default: str) -> scheduler.Feedback:
            name = f"{transport}_{suffix}"
            if not (self.config.is_set(name) or name in params.PARAMS):
                name = default
            try:
                return scheduler.parse_feedback(self.config.get(name))
            except ValueError as e:
                log.fatal(f"{name}: {e}")

        limit = max(self._transport_int(transport, "destination_concurrency_limit",
                                        "default_destination_concurrency_limit"), 0)
        rate_delay = self._transport_time(transport, "destination_rate_delay",
                                          "default_destination_rate_delay")
        if rate_delay > 0:  # as Postfix: a rate-limited destination has one delivery at a time
            limit = 1
        initial = max(self._transport_int(transport, "initial_destination_concurrency",
                                          "initial_destination_concurrency"), 1)
        policy = scheduler.Policy(
            concurrency_limit=limit,
            initial=min(initial, limit) if limit else initial,  # as Postfix: within the limit
            positive=feedback("destination_concurrency_positive_feedback",
                              "default_destination_concurrency_positive_feedback"),
            negative=feedback("destination_concurrency_negative_feedback",
                              "default_destination_concurrency_negative_feedback"),
            cohort_limit=max(self._transport_int(
                transport, "destination_concurrency_failed_cohort_limit",
                "default_destination_concurrency_failed_cohort_limit"), 0),
            process_limit=self.agent_limits.get(transport, self.process_limit),
            rate_delay=float(rate_delay))
        self._policies[transport] = policy
        return policy

    def _transport_int(self, transport: str, suffix: str, default: str) -> int:
        return self.config.get_int(self._transport_param(transport, suffix, default))

    def _transport_time(self, transport: str, suffix: str, default: str) -> int:
        return self.config.get_time(self._transport_param(transport, suffix, default))

    def _transport_param(self, transport: str, suffix: str, default: str) -> str:
        """``<transport>_<suffix>`` when set or declared, else the default's name."""
        name = f"{transport}_{suffix}"
        if transport and (self.config.is_set(name) or name in params.PARAMS):
            return name
        return default

    def pool(self, transport: str) -> AgentPool:
        p = self.pools.get(transport)
        if p is None:
            p = AgentPool(self.spool.private(transport),
                          self.agent_limits.get(transport, self.process_limit), self.ipc_timeout)
            self.pools[transport] = p
        return p

    # --- start, triggers, scans ---------------------------------------------------------

    def recover(self) -> None:
        for queue_id in self.spool.scan(q.ACTIVE):
            try:
                self.spool.move(queue_id, q.ACTIVE, q.INCOMING)
            except OSError as e:
                log.warning(f"{queue_id}: cannot move from active to incoming: {e.strerror}")

    def trigger(self, data: bytes) -> None:
        if self.id_reader.partial or b"<" in data:
            data = self._named_ids(data)
        for byte in data:
            ch = chr(byte)
            if ch == "I":
                self.want_incoming = True
            elif ch == "D":
                self.want_deferred = True
            elif ch == "A":
                self.ignore_time = True
            elif ch == "F":
                self.sched.forget_dead()
                self.dead_transports.clear()  # as Postfix's qmgr_enable_all
                self.sched_wake.set()
                # as Postfix's QMGR_FLUSH_DFXP: the scans running and the next ones
                self.flush_next.update((q.INCOMING, q.DEFERRED))
                for scan in self.scans.values():
                    if scan is not None:
                        scan.flush = True
            elif ch == "W":
                self.want_incoming = True
                if time.time() - self.last_deferred_scan >= self.queue_run_delay:
                    self.want_deferred = True
        if self.want_incoming or self.want_deferred or self.named:
            self.wake.set()  # else the scanner has nothing to do: leave it asleep

    def _named_ids(self, data: bytes) -> bytes:
        """Take the queue IDs cleanup named out of trigger bytes; return the rest."""
        rest, ids, damaged = self.id_reader.feed(data)
        if damaged:
            self.want_incoming = True  # a damaged record: look for the file
        self.named.extend(ids)
        if len(self.named) > self.active_limit:
            self.named.clear()
            self.want_incoming = True
        if self.named and not self.ctx.stopping.is_set():
            self.take_named()  # now, not a loop turn later in the scanner
        if self.named:
            self.wake.set()
        return rest

    def take_named(self) -> None:
        """Take the files cleanup named, as far as the active limit allows."""
        while self.named and self.room():
            queue_id = self.named.popleft()
            if queue_id in self.active or not q.valid_queue_id(queue_id):
                continue
            path = self.spool.path(q.INCOMING, queue_id)
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                if queue_id not in self.recently_removed:
                    self.want_incoming = True  # not a file we know: scan instead
                continue
            if not stat.S_ISREG(st.st_mode) or not q.is_complete(st.st_mode) \
                    or st.st_mtime > time.time() + 1:
                self.want_incoming = True
                continue
            self.take(queue_id, q.INCOMING, fresh=True)

    async def scanner(self) -> None:
        """Admit messages while there is room (Postfix's qmgr_loop): the files cleanup
        named first, then one file from the incoming scan and one from the deferred
        scan in turn, so that new mail is not held back by a long deferred queue."""
        scans = self.scans
        order = (q.INCOMING, q.DEFERRED)
        while not self.ctx.stopping.is_set():
            self.start_scans(scans)
            if not self.named and scans[q.INCOMING] is None and scans[q.DEFERRED] is None:
                await self.wake.wait()
                self.wake.clear()
                continue
            if not self.room():
                self.slot_free.clear()
                await self.slot_free.wait()
                continue
            if self.named:
                self.take_named()
            else:
                for queue in order:
                    scan = scans[queue]
                    queue_id = scan.next(self.active) if scan is not None else None
                    if scan is None or queue_id is None:
                        scans[queue] = None
                        continue
                    if queue_id:  # else: nothing due among the entries looked at so far
                        self.take(queue_id, queue, flushed=scan.flush)
                    break
                order = order[::-1]
            await asyncio.sleep(0)  # deliveries and replies run between admissions

    def start_scans(self, scans: dict[str, QueueScan | None]) -> None:
        """Start the scans asked for. A scan asked for while one of the same queue runs
        starts when it ends, except that a flush (``A``) restarts a timed deferred scan."""
        if self.want_incoming and scans[q.INCOMING] is None:
            self.want_incoming = False
            scans[q.INCOMING] = self._scan(q.INCOMING)
        running = scans[q.DEFERRED]
        if self.want_deferred and (running is None
                                   or (self.ignore_time and not running.ignore_time)):
            self.want_deferred = False
            scans[q.DEFERRED] = self._scan(q.DEFERRED, self.ignore_time)
            self.ignore_time = False
            self.last_deferred_scan = time.time()

    def _scan(self, queue: str, ignore_time: bool = False) -> QueueScan:
        scan = QueueScan(self.spool, queue, ignore_time)
        if queue in self.flush_next:
            self.flush_next.discard(queue)
            scan.flush = True
        return scan

    async def timer(self) -> None:
        while not self.ctx.stopping.is_set():
            await asyncio.sleep(max(self.queue_run_delay, 1))
            self.trigger(b"W")

    async def reaper(self) -> None:
        """Let agent processes that qmgr no longer needs go (their max_idle applies)."""
        idle = max(self.max_idle, 1.0)
        while not self.ctx.stopping.is_set():
            await asyncio.sleep(min(idle, 60.0))
            for p in list(self.pools.values()):
                await p.reap(idle)
            self.sched.prune()

    def spawn(self, coro) -> None:  # type: ignore[no-untyped-def]
        # the loop's create_task, not ensure_future: that one first asks whether the
        # coroutine is a future, an AttributeError raised and caught per delivery
        task = self.loop.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            log.error(f"qmgr: unexpected error: {exc!r}")

    # --- one message ------------------------------------------------------------------

    def take(self, queue_id: str, queue: str, fresh: bool = False, flushed: bool = False) -> None:
        """Move a file into the active queue and start its deliveries; ``flushed``: a
        flush's scan took it (defer_transports does not hold it back)."""
        try:
            path = self.spool.move(queue_id, queue, q.ACTIVE)
        except FileNotFoundError:
            return
        except OSError as e:
            log.warning(f"{queue_id}: cannot move from {queue} to active: {e.strerror}")
            return
        now = time.time()
        try:
            fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW)
        except OSError as e:
            log.warning(f"{queue_id}: open {path}: {e.strerror}")
            self.put_back(queue_id, queue)
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            log.info(f"{queue_id}: skipped, still being delivered")
            self.put_back(queue_id, q.INCOMING)
            return
        try:
            env = read_envelope_fd(fd, queue_id, path, rcpt_limit=self.slice_size())
        except QueueFileError as e:
            os.close(fd)
            self.corrupt(queue_id, str(e))
            return
        except OSError as e:  # the system's trouble (EMFILE, EIO, ...), not the file's
            os.close(fd)
            log.warning(f"{queue_id}: read {path}: {e.strerror}")
            self.put_back(queue_id, queue)
            return
        fcntl.flock(fd, fcntl.LOCK_SH)
        mode = os.fstat(fd).st_mode
        forced = bool(mode & q.MODE_EXPIRE)
        unthrottle = bool(mode & q.MODE_UNTHROTTLE)
        if unthrottle:  # postqueue -i: this attempt only (Postfix's MAYBE_UPDATE_MODE)
            try:
                os.fchmod(fd, stat.S_IMODE(mode) & ~q.MODE_UNTHROTTLE)
            except OSError as e:
                log.warning(f"{queue_id}: cannot update the file mode: {e.strerror}")
        # postsuper -e: as Postfix, a defer log from the last attempt is the notice's
        # text, and no recipient is tried again; without one, each is deferred here
        # ("administratively expired") and the message is then returned as expired
        keep_log = forced and _not_empty(self.spool.path(q.DEFER, queue_id))
        if not fresh and not keep_log:
            status_log.remove(self.spool, q.DEFER, queue_id)
        log.info(f"{queue_id}: from=<{log.address(env.sender)}>, size={env.message_size}, "
                 f"nrcpt={env.rcpt_pending} (queue active)")
        common = message_attrs(q.ACTIVE, queue_id, env.data_offset, env.content_size,
                               env.arrival, now, env.sender, flags=DEL_REQ_FLAG_DEFAULT,
                               encoding=env.attrs.get("encoding", ""),
                               dsn_envid=env.attrs.get("dsn_envid", ""),
                               dsn_ret=_number(env.attrs.get("dsn_ret", "")),
                               smtputf8=env.smtputf8)
        msg = Message(queue_id, path, fd, env, now, common, fresh, forced=forced,
                      flushed=flushed or unthrottle, unthrottle=unthrottle)
        self.active[queue_id] = msg
        if keep_log:
            msg.deferred, env.rcpt_more = 1, 0
            self.enqueue(msg, [])
            return
        self.enqueue(msg, env.recipients, dispatch_now=True)

    def put_back(self, queue_id: str, queue: str) -> None:
        """Return a file qmgr could not take to queue, to be tried in LOCKED_RETRY seconds."""
        try:
            path = self.spool.move(queue_id, q.ACTIVE, queue)
            later = time.time() + LOCKED_RETRY
            os.utime(path, (later, later))
        except OSError as e:
            log.warning(f"{queue_id}: cannot move back to {queue}: {e.strerror}")
            return
        self.loop.call_later(
            LOCKED_RETRY + 1, self.trigger, b"I" if queue == q.INCOMING else b"D")

    def corrupt(self, queue_id: str, why: str) -> None:
        log.warning(f"{queue_id}: {why}")
        log.warning(f'saving corrupt file "{queue_id}" from queue "{q.ACTIVE}" to queue '
                    f'"{q.CORRUPT}"')
        try:
            self.spool.move(queue_id, q.ACTIVE, q.CORRUPT)
        except OSError as e:
            log.warning(f"{queue_id}: cannot move to corrupt: {e.strerror}")

    # --- recipients in slices, entries in the scheduler ------------------------------

    def room(self) -> bool:
        """Room for one more message: qmgr_message_active_limit and qmgr_message_recipient_limit,
        and a descriptor for its file (each active message's file stays open)."""
        if len(self.active) >= self.open_file_budget:
            if not self.open_file_warned and self.open_file_budget < self.active_limit:
                self.open_file_warned = True
                log.warning(f"{len(self.active)} messages active: the open file limit "
                            f"({self.open_file_budget + FD_RESERVE}) allows no more, although "
                            f"qmgr_message_active_limit is {self.active_limit}; raise the "
                            f"limit (ulimit -n) to use it")
            return False
        return len(self.active) < self.active_limit and self.rcpt_loaded < self.rcpt_limit

    def slice_size(self) -> int:
        """How many recipients the next read may bring into memory."""
        return max(self.rcpt_limit - self.rcpt_loaded, self.rcpt_minimum)

    def enqueue(self, msg: Message, rcpts: list[Recipient], dispatch_now: bool = False) -> None:
        """Route a slice of a message's recipients and queue them per destination, in
        requests of at most the transport's destination recipient limit; those qmgr
        answers itself (and those for a dead destination) are recorded at once. The
        requests go out in this loop turn with ``dispatch_now``, else the dispatcher
        task sends them (one wake-up of it fewer on the way to the agent)."""
        self._load(msg, len(rcpts))
        groups: dict[tuple[str, str], tuple[scheduler.Destination[Entry], Entry]] = {}
        for rc in rcpts:
            where = self.route_of(msg, rc)
            if where is None:
                self._unload(msg, 1)
                continue
            per_request, _ = self.limits(where.transport)
            name = (rc.address if per_request == 1 else where.nexthop).lower()
            group = groups.get((where.transport, name))
            if group is None:
                dest = self.sched.destination(where.transport, name)
                if dest.dead and msg.unthrottle:
                    self.sched.forget(dest)  # as Postfix's QMGR_FLUSH_EACH
                if dest.dead:
                    self.suspend(msg, [rc], dest)
                    self._unload(msg, 1)
                    continue
                group = groups[(where.transport, name)] = (dest, Entry(msg, where.nexthop, []))
                msg.transports.add(where.transport)
            group[1].rcpts.append(rc)
            self.transport_loaded[where.transport] = \
                self.transport_loaded.get(where.transport, 0) + 1
            if len(group[1].rcpts) >= per_request:
                self._queue(*group)
                del groups[(where.transport, name)]
        for group in groups.values():
            self._queue(*group)
        if dispatch_now:
            self.dispatch()
        elif groups or msg.entries:
            self.sched_wake.set()
        if not msg.entries:
            self.slice_done(msg)

    def _queue(self, dest: scheduler.Destination[Entry], entry: Entry) -> None:
        entry.msg.entries += 1
        self.sched.add(dest, entry)
        lanes = self.open_lanes.get(dest)
        if lanes:
            self.fill(lanes[0])

    def _load(self, msg: Message, count: int) -> None:
        msg.loaded += count
        self.rcpt_loaded += count

    def _unload(self, msg: Message, count: int, transport: str = "") -> None:
        msg.loaded -= count
        self.rcpt_loaded -= count
        if transport:
            self.transport_loaded[transport] -= count

    def suspend(self, msg: Message, rcpts: list[Recipient],
                dest: scheduler.Destination[Entry]) -> None:
        """Defer recipients for a dead destination, untried, with its last reason."""
        start = time.time()
        result = DeliveryResult.deferred(f"{SUSPENDED}: {dest.reason}", dest.dsn)
        for rc in rcpts:
            self.record(msg, rc, result, "none", start)

    def entry_done(self, entry: Entry, transport: str) -> None:
        msg = entry.msg
        self._unload(msg, len(entry.rcpts), transport)
        msg.entries -= 1
        if msg.entries == 0:
            self.slice_done(msg)
        self.feed_hungry()

    def slice_done(self, msg: Message) -> None:
        """Every entry of the message's slice is answered: read the next slice, or finish."""
        if msg.env.rcpt_more:
            if self.slice_room(msg):
                self.next_slice(msg)
            else:
                self.hungry.append(msg)
            return
        if msg.fresh and msg.sent and not (msg.deferred or msg.bounced or msg.traced):
            self.remove(msg)  # the common case: no status log can exist, nothing to ask
            self.release(msg)
            return
        self.spawn(self.complete(msg))

    def slice_room(self, msg: Message) -> bool:
        return self.rcpt_loaded < self.rcpt_limit and all(
            self.transport_loaded.get(t, 0) < self.limits(t)[1] for t in msg.transports)

    def feed_hungry(self) -> None:
        for _ in range(len(self.hungry)):
            if self.rcpt_loaded >= self.rcpt_limit:
                break
            msg = self.hungry.popleft()
            if self.slice_room(msg):
                self.next_slice(msg)
            else:
                self.hungry.append(msg)
        if self.room():
            self.slot_free.set()

    def next_slice(self, msg: Message) -> None:
        try:
            env = read_envelope_fd(msg.fd, msg.queue_id, msg.path,
                                   rcpt_from=msg.env.rcpt_more, rcpt_limit=self.slice_size())
        except (QueueFileError, OSError) as e:  # it was read before: leave it to the next run
            log.warning(f"{msg.queue_id}: cannot read more recipients: {e}")
            msg.corrupt = isinstance(e, QueueFileError)  # damaged: to corrupt/ when done
            msg.deferred += 1
            msg.env.rcpt_more = 0
            self.spawn(self.complete(msg))
            return
        msg.env.recipients = env.recipients
        msg.env.rcpt_more = env.rcpt_more
        msg.transports.clear()
        self.enqueue(msg, env.recipients)

    async def complete(self, msg: Message) -> None:
        removed = False
        try:
            removed = await self.finish(msg)
        except Exception as e:  # a status log that cannot be read (EIO): later, not never
            log.warning(f"{msg.queue_id}: cannot finish the delivery attempt: {e}")
            self.defer_message(msg, time.time())
        finally:
            if not removed:
                with contextlib.suppress(OSError):
                    os.close(msg.fd)
            self.release(msg)
        if msg.flush_sites and not removed:
            await self.tell_flush(msg)

    def release(self, msg: Message) -> None:
        """The message is no longer active: its slot is free."""
        self.active.pop(msg.queue_id, None)
        self.slot_free.set()

    async def dispatcher(self) -> None:
        """Start the deliveries the scheduler allows, as they become allowed."""
        while not self.ctx.stopping.is_set():
            await self.sched_wake.wait()
            self.dispatch()

    def dispatch(self) -> None:
        """Start every delivery the scheduler allows now, each request written at once
        on an open connection. Not while a reply is being recorded: an entry sent
        behind the answered one takes its place first (``deliver``)."""
        self._resume()
        while (picked := self.sched.next()) is not None:
            dest, entry = picked
            lane = _Lane(dest, self.pool(dest.transport.name).take())
            try:
                sent = time.time(), lane.conn.client.submit(self._request(entry))
            except ProtocolError:  # not connected yet: the lane connects first
                self.spawn(self.deliver(lane, entry, None))
            else:
                self.spawn(self.deliver(lane, entry, sent))
        self.sched_wake.clear()

    def _resume(self) -> None:
        """End the rate-delay pauses that are over; wake the dispatcher when the next ends."""
        resume_at = self.sched.resume_due()
        if resume_at is None:
            return
        loop = self.loop
        when = loop.time() + max(resume_at - time.monotonic(), 0.0)
        if self.resume_timer is not None:
            if self.resume_timer.when() <= when and not self.resume_timer.cancelled():
                return
            self.resume_timer.cancel()
        self.resume_timer = loop.call_at(when, self._resume_wake)

    def _resume_wake(self) -> None:
        self.resume_timer = None
        self.sched_wake.set()

    def route_of(self, msg: Message, rc: Recipient) -> Route | None:
        """Where a recipient goes, or None when qmgr has recorded its result itself
        (allow_min_user, resolver failure, the error and discard transports, a
        transport that is not running)."""
        start = time.time()
        if msg.forced:
            self.record(msg, rc, DeliveryResult.deferred(FORCE_EXPIRED, "4.7.0"), "none", start)
            return None
        try:
            if msg.env.content_filter:
                where = filter_route(msg.env.content_filter, rc.address, *self.filter_nexthop)
            else:
                resolved = self.routes.resolve(rc.address, msg.env.sender)
                where = route(resolved)
                if not resolved.failed and resolved.recipient \
                        and resolved.recipient != rc.address:
                    # As Postfix's qmgr: the agent gets the address as resolved, the one
                    # smtpd judged (user%host@ourdomain is user@host), never the spelling
                    # that a next hop could route elsewhere.
                    rc.address = resolved.recipient
        except Exception as e:  # the resolver's tables: defer, never bounce
            where = Route("", "", f"address resolver failure: {e}")
        if rc.address.startswith("-") and not self.allow_min_user:
            # As Postfix's qmgr: no agent or command ever sees an address that a
            # careless pipe command would take for an option.
            self.record(msg, rc, DeliveryResult.bounced("bad address syntax", "5.1.3"), "none",
                        start)
            return None
        if where.error:
            self.record(msg, rc, DeliveryResult.deferred(where.error), "none", start)
            return None
        if where.transport in self.defer_transports and not msg.flushed:
            where = Route(RETRY_TRANSPORT, DEFERRED_TRANSPORT)
        if where.transport in INTERNAL_TRANSPORTS:
            self.record(msg, rc, internal_result(where), "none", start)
            return None
        dead = self.transport_dead(where.transport) if self.dead_transports else ""
        if not dead and not self.transport_available(where.transport):
            missing = Unreachable(OSError(errno.ENOENT, os.strerror(errno.ENOENT)))
            self.throttle_transport(where.transport, TRANSPORT_UNAVAILABLE,
                                    missing.warning(where.transport))
            dead = TRANSPORT_UNAVAILABLE
        if dead:
            self.record(msg, rc, DeliveryResult.deferred(dead), "none", start)
            return None
        return where

    def transport_available(self, transport: str) -> bool:
        """An agent serves the transport: qmgr holds a connection to it, or its socket
        is there (private/TRANSPORT)."""
        pool = self.pools.get(transport)
        if pool is not None:
            for c in pool.conns:  # not any(generator): one left unfinished costs a GeneratorExit
                if c.client.connected:
                    return True
        return os.path.exists(self.spool.private(transport))

    def transport_dead(self, transport: str) -> str:
        """Why the transport is throttled (``throttle_transport``) while its time is not
        over, else ""."""
        dead = self.dead_transports.get(transport)
        if dead is None:
            return ""
        if time.monotonic() < dead[0]:
            return dead[1]
        del self.dead_transports[transport]
        return ""

    def throttle_transport(self, transport: str, reason: str = TRANSPORT_ERROR,
                           warning: str = "") -> None:
        """Its agent failed for good, as Postfix's qmgr_transport_throttle: it cannot be
        reached (``mail transport unavailable``: no private/TRANSPORT, the connection
        refused, or closed before the hello's answer), or (``unknown mail transport
        error``) it went away without reading a request, again and again. Log the
        warning (by default Postfix's "transport X failure"), defer what waits for the
        transport with the reason and send it nothing for ``transport_retry_time``
        (its recipients meanwhile are deferred untried, with the same reason), or
        until a request in flight to it gets its reply."""
        log.warning(warning or TRANSPORT_FAILURE.format(transport))
        if self.transport_dead(transport):
            return
        self.dead_transports[transport] = (time.monotonic() + self.transport_retry, reason)
        start = time.time()
        for entry in self.sched.take_transport(transport):
            for rc in entry.rcpts:
                self.record(entry.msg, rc, DeliveryResult.deferred(reason), "none", start)
            self.entry_done(entry, transport)

    async def deliver(self, lane: _Lane, entry: Entry,
                      sent: tuple[float, asyncio.Future[AttrList]] | None) -> None:
        """Deliveries to one destination over one agent connection (a lane): this entry
        (its request already written when ``sent`` is given) and, when the agent serves
        one request at a time (``_Conn.sequential``), the destination's next entry
        sent behind it, as soon as there is one while its window is full (``fill``), so
        that the agent goes from one request to the next without waiting for qmgr. An
        entry sent behind is in flight in the scheduler's count only once the one ahead
        of it is answered."""
        dest = lane.dest
        pool = self.pool(dest.transport.name)
        replied = False  # the request ahead got its reply
        try:
            if sent is None:
                sent = await self._send(lane.conn, entry)
            while True:
                if lane.conn.sequential and not sent[1].done():
                    self.fill(lane)
                    if lane.behind is None:
                        self.open_lanes.setdefault(dest, []).append(lane)
                try:
                    replied = await self.answered(dest, entry, *sent, lane, replied)
                finally:
                    self._close_lane(lane)
                    if lane.behind is not None:
                        self.sched.promote(dest)
                        lane.conn.load -= 1
                if lane.behind is None:
                    return
                (entry, sent), lane.behind = lane.behind, None
        except BaseException:
            if lane.behind is not None:  # its reply still comes: have it recorded
                self.spawn(self.answered(dest, lane.behind[0], *lane.behind[1]))
            raise
        finally:
            pool.give_back(lane.conn)

    def fill(self, lane: _Lane) -> None:
        """Send the destination's next entry behind the lane's request in flight, if the
        scheduler has one for it (``Scheduler.take_behind``)."""
        if self.ctx.stopping.is_set():
            return
        entry = self.sched.take_behind(lane.dest)
        if entry is None:
            return
        self._close_lane(lane)
        lane.conn.load += 1
        start = time.time()
        try:
            lane.behind = entry, (start, lane.conn.client.submit(self._request(entry)))
        except ProtocolError as e:  # the connection just broke: this entry defers with it
            failed: asyncio.Future[AttrList] = self.loop.create_future()
            failed.set_exception(e)
            lane.behind = entry, (start, failed)

    def _close_lane(self, lane: _Lane) -> None:
        lanes = self.open_lanes.get(lane.dest)
        if lanes and lane in lanes:
            lanes.remove(lane)
            if not lanes:
                del self.open_lanes[lane.dest]

    @staticmethod
    def _request(entry: Entry) -> list[tuple[str, AttrValue]]:
        msg, rcpts = entry.msg, entry.rcpts
        if len(rcpts) == 1:
            rc = rcpts[0]
            return request_attrs(msg.common, entry.nexthop, rc.address, rc.orig, rc.offset,
                                 rc.notify, rc.dsn_orcpt)
        return batch_request_attrs(msg.common, entry.nexthop, rcpts)

    async def _send(self, conn: _Conn, entry: Entry) -> tuple[float, asyncio.Future[AttrList]]:
        """Write an entry's request on a connection: (when, the future of its reply).

        A connection that an agent going away (master started it just before a
        reload) took and closed or reset without answering the hello is opened again
        by the client itself (``attr.CONNECT_ATTEMPTS``): nothing but the hello went
        out on it, so the mail is not deferred for a backoff over a reload. What
        still fails here is no reload's race (no agent listening: master keeps its
        sockets over a reload; or none answering the hello within ipc_timeout): the
        agent cannot be reached (``Unreachable``), and ``answered`` throttles its
        transport."""
        start = time.time()
        try:
            return start, await conn.client.send(self._request(entry))
        except (ProtocolError, OSError) as e:
            failed: asyncio.Future[AttrList] = self.loop.create_future()
            failed.set_exception(Unreachable(e))
            return start, failed

    async def answered(self, dest: scheduler.Destination[Entry], entry: Entry, start: float,
                       reply_future: asyncio.Future[AttrList], lane: _Lane | None = None,
                       behind_reply: bool = False) -> bool:
        """An entry's reply, recorded per recipient; it is the destination's concurrency
        feedback; True when it came. A broken connection defers the entry's recipients
        (``unknown mail transport error``) with Postfix's warning ``private/NAME socket:
        malformed response`` (or ``ID: timeout receiving delivery status from
        transport: NAME``), except for an entry sent behind a request that got its
        reply (``behind_reply``): a sequential agent that goes away reads nothing more
        (a reload, a changed table), so that entry goes back to the scheduler, to be sent again; so does
        one whose agent said it went away without reading it (``attr.NotRead``: its
        goodbye crossed our request), up to ``RESEND_LIMIT`` times: then its agent is
        taken for a broken one (``throttle_transport``). The lane that carried it takes
        no entry behind it once the reply is in (``fill``). An entry still unanswered
        when qmgr stops (``_on_stop``) leaves its message as it is, in active/, for
        the next qmgr, as Postfix's qmgr does when it exits."""
        msg, rcpts, transport = entry.msg, entry.rcpts, dest.transport.name
        released = requeued = abandoned = False
        try:
            try:
                reply = await reply_future
            except asyncio.CancelledError:
                abandoned = self.ctx.stopping.is_set()
                raise
            except Unreachable as e:  # as Postfix's qmgr_deliver: the transport is throttled
                self.throttle_transport(transport, TRANSPORT_UNAVAILABLE, e.warning(transport))
                for rc in rcpts:
                    self.record(msg, rc, DeliveryResult.deferred(TRANSPORT_UNAVAILABLE), "none",
                                start)
                return False
            except (ProtocolError, OSError) as e:
                if self.ctx.verbose:
                    log.info(f"{msg.queue_id}: {transport}: {e}")
                unread = behind_reply or isinstance(e, NotRead)
                if unread and entry.resent < RESEND_LIMIT and not dest.dead \
                        and not self.transport_dead(transport):
                    entry.resent += 1
                    requeued = True
                    return False
                if unread and entry.resent >= RESEND_LIMIT:
                    self.throttle_transport(transport)
                elif not unread:  # the agent went away, or timed out, with the request
                    log.warning(f"{msg.queue_id}: timeout receiving delivery status from "
                                f"transport: {transport}" if isinstance(e, RequestTimeout)
                                else f"{q.PRIVATE}/{transport} socket: malformed response")
                for rc in rcpts:
                    self.record(msg, rc, TRANSPORT_ERROR_RESULT, "none", start)
                return False
            finally:
                if lane is not None:
                    self._close_lane(lane)
            if self.dead_transports:  # as Postfix's qmgr: a reply revives the transport
                self.dead_transports.pop(transport, None)
            if says_corrupt(reply):
                msg.corrupt = True
            results = results_from_attrs(reply, len(rcpts),
                                         TRANSPORT_ERROR_RESULT)
            relay = "none" if reply.number("refused") else None  # the agent logged no line
            for rc, result in zip(rcpts, results, strict=True):
                self.record(msg, rc, result, relay, start)
            hop = hop_failure(reply)
            released = True
            if hop is None:
                self.sched.success(dest)
                return True
            for waiting in self.sched.failure(dest, hop.dsn, hop.reason):
                self.suspend(waiting.msg, waiting.rcpts, dest)
                self.entry_done(waiting, transport)
            return True
        finally:
            if not released:  # no word on the destination (the agent failed, or qmgr did)
                self.sched.release(dest)
            if requeued:
                self.sched.retry(dest, entry)
            elif not abandoned:
                self.entry_done(entry, transport)
            self.sched_wake.set()

    def record(self, msg: Message, rc: Recipient, result: DeliveryResult, relay: str | None,
               start: float) -> None:
        """Act on one result; relay set means qmgr logs the line (the agent did not)."""
        if relay is not None:
            log.info(log_line(msg.queue_id, rc.address, rc.orig, relay, msg.env.arrival,
                              msg.active_time, start, result))
        if result.status == STATUS_DEFERRED:
            msg.deferred += 1
            self._append(q.DEFER, msg, rc, result, status_log.ACTION_DELAYED)
            if relay is not None and self.flush.enabled:  # qmgr's own deferral
                self._note_flush_site(msg, rc.address)
            return
        # The recipient is done only once the notice it is owed is in its status log:
        # else it is deferred, as Postfix's bounce_append and sent do.
        if result.status == STATUS_BOUNCED:
            if not self._append(q.BOUNCE, msg, rc, result, status_log.ACTION_FAILED):
                self.record(msg, rc, DeliveryResult.deferred(BOUNCE_LOG_FAILURE, "4.3.0"),
                            "none", start)
                return
            msg.bounced += 1
        else:
            if rc.notify & dsn.NOTIFY_SUCCESS and not result.passed_on:
                traced = result if not result.relay else replace(  # as Postfix's trace_append
                    result, reason=f"delivery via {result.relay}: {result.reason}")
                if not self._append(q.TRACE, msg, rc, traced,
                                    result.action or status_log.ACTION_DELIVERED):
                    self.record(msg, rc, DeliveryResult.deferred(
                        f"{msg.queue_id}: {TRACE_LOG_FAILURE}", "4.3.0"), "none", start)
                    return
                msg.traced += 1
            msg.sent += 1
        try:
            mark_done(msg.fd, rc.offset)
        except OSError as e:
            log.warning(f"{msg.queue_id}: cannot mark recipient {rc.address} done: {e.strerror}")
        rc.done = True

    def _note_flush_site(self, msg: Message, address: str) -> None:
        """Remember the site a recipient qmgr deferred waits for, for the flush service
        (Postfix's defer_append calls flush_add, the agents' deferrals and the retry
        agent's alike: mail that defer_transports or a dead destination holds back
        goes out on ETRN or postqueue -s). Told once the attempt is over (the file is
        in deferred/ then), or now when a message has many such sites."""
        site = flush.recipient_site(address)
        if site is None:
            return
        msg.flush_sites.add(site)
        if len(msg.flush_sites) >= FLUSH_SITES_HELD:
            self.spawn(self.tell_flush(msg))

    async def tell_flush(self, msg: Message) -> None:
        sites, msg.flush_sites = msg.flush_sites, set()
        for site in sorted(sites):
            await self.flush.add(site, msg.queue_id)

    def _append(self, queue: str, msg: Message, rc: Recipient, result: DeliveryResult,
                action: str) -> bool:
        """Append the result's entries to the message's status log; False (warned)
        when one cannot be written."""
        for i, (address, dsn_code, reason) in enumerate(result.entries(rc.address)):
            entry = status_log.Entry(address, dsn_code, action, reason,  # local: per member
                                     original_recipient=rc.orig, offset=rc.offset,
                                     dsn_orig_rcpt=rc.dsn_orcpt, notify_flags=rc.notify)
            if i == 0:  # the diagnostic is the first member's (local's others: none)
                entry.set_remote(result.mta, result.diag, result.diag_type)
            try:
                # A lost defer entry loses only the reason mailq shows (the recipient is
                # still pending), so it is not fsynced on the event loop; bounce and trace
                # entries, which stand for notices owed once the recipient is done, are.
                status_log.append_queue(self.spool, queue, msg.queue_id, entry,
                                        sync=queue != q.DEFER)
            except OSError as e:
                log.warning(f"{msg.queue_id}: cannot update {queue} log: {e.strerror}")
                return False
        return True

    async def finish(self, msg: Message) -> bool:
        """Remove, defer or bounce a message; True when the file is being removed
        (its descriptor then belongs to the remover)."""
        queue_id = msg.queue_id
        now = time.time()
        env = msg.env
        bounce_path = self.spool.path(q.BOUNCE, queue_id)
        if os.path.exists(bounce_path):
            entries = status_log.read(bounce_path)
            if await self.nondelivery(msg, entries, expired=False):
                status_log.remove(self.spool, q.BOUNCE, queue_id)
            elif not msg.corrupt:
                self.defer_message(msg, now)
                return False
        if msg.corrupt:  # as Postfix's qmgr_active_done: after the bounce, before the rest
            return self.save_corrupt(msg)
        if os.path.exists(self.spool.path(q.TRACE, queue_id)):
            if not await self.notify(msg, "trace", q.TRACE):
                return self.save_corrupt(msg) if msg.corrupt else self.defer_message(msg, now)
            status_log.remove(self.spool, q.TRACE, queue_id)
        if msg.deferred or any(not rc.done for rc in env.recipients):
            lifetime = self.max_lifetime if env.sender else self.bounce_lifetime
            if now - env.arrival < lifetime and not msg.forced:
                if env.warn_time and now >= env.warn_time and msg.deferred:
                    await self.delay_warning(msg)
                return self.save_corrupt(msg) if msg.corrupt else self.defer_message(msg, now)
            log.info(f"{queue_id}: from=<{log.address(env.sender)}>, "
                     f"status={'force-expired' if msg.forced else 'expired'}, returned to sender")
            entries = status_log.read(self.spool.path(q.DEFER, queue_id))
            if not entries:
                entries = [status_log.Entry(rc.address, "4.4.7", status_log.ACTION_FAILED,
                                            "message expired", rc.orig, rc.offset)
                           for rc in env.recipients if not rc.done]
            if not await self.nondelivery(msg, entries, expired=True):
                return self.save_corrupt(msg) if msg.corrupt else self.defer_message(msg, now)
        for queue in q.LOG_QUEUES:
            status_log.remove(self.spool, queue, queue_id)
        self.remove(msg)
        return True

    def remove(self, msg: Message) -> None:
        """Unlink the queue file, close it and log ``removed``. No fsync: a crash
        before the unlink may repeat a delivery, and local recognises its own
        earlier Maildir write. On the event loop: for a small file this costs less
        CPU than waking a worker thread for it (measured, tests/bench/qmgr_rate.py)."""
        self.recently_removed.append(msg.queue_id)
        try:
            os.unlink(msg.path)
        except FileNotFoundError:
            pass
        except OSError as e:
            log.warning(f"{msg.queue_id}: remove {msg.path}: {e.strerror}")
        try:  # not contextlib.suppress: its object and two calls cost more than the close
            os.close(msg.fd)
        except OSError:
            pass
        log.info(f"{msg.queue_id}: removed")

    def defer_message(self, msg: Message, now: float) -> bool:
        """Move the message to deferred/ until its next try; False (not removed). When
        it cannot go there (a hashed subdirectory that cannot be made), it goes back
        to incoming/ for a try in LOCKED_RETRY seconds: a file left in active/ would
        wait for the next start of qmgr."""
        # as Postfix's qmgr_active: the age, at most maximal_backoff_time and at least
        # minimal_backoff_time (which wins when the two disagree)
        delay = max(min(now - msg.env.arrival, self.max_backoff), self.min_backoff)
        try:
            path = self.spool.move(msg.queue_id, q.ACTIVE, q.DEFERRED)
            os.utime(path, (now, now + delay))
        except OSError as e:
            log.warning(f"{msg.queue_id}: cannot move to deferred: {e.strerror}")
            if os.path.lexists(msg.path):  # else gone already (postsuper -d)
                self.put_back(msg.queue_id, q.INCOMING)
        return False

    def save_corrupt(self, msg: Message) -> bool:
        """A delivery agent or the bounce service could not read the damaged file: it
        goes to corrupt/ for a human to look at, never retried or removed; False."""
        self.corrupt(msg.queue_id, "queue file is damaged: a delivery agent could not read it")
        return False

    # --- non-delivery notifications: the bounce service ------------------------------

    async def nondelivery(self, msg: Message, entries: list[status_log.Entry],
                          expired: bool) -> bool:
        """Ask private/bounce to return entries to the sender; True when done
        (a notification queued, or deliberately dropped), False to retry later."""
        if not entries:
            return True
        return await self.notify(msg, "flush", q.DEFER if expired else q.BOUNCE, expired)

    async def notify(self, msg: Message, request: str, which: str, expired: bool = False) -> bool:
        """Ask private/bounce for a notice from a status log: ``flush`` (failures),
        ``warn`` (delays), ``trace`` (successes); True when done (queued, or
        nothing to send), False to retry later."""
        try:
            reply = await self.bounce.request({
                "request": request, "queue_id": msg.queue_id, "queue_name": q.ACTIVE,
                "log": which, "expired": int(expired)})
        except (ProtocolError, OSError) as e:
            log.warning(f"{msg.queue_id}: bounce service: {e}")
            return False
        if says_corrupt(reply):
            msg.corrupt = True
        return reply.number("status", -1) == 0

    async def delay_warning(self, msg: Message) -> None:
        """delay_warning_time has passed: warn the sender of the delayed recipients
        once (Postfix: the W record is then set to 0), else try again next time."""
        if await self.notify(msg, "warn", q.DEFER):
            try:
                clear_warning(msg.fd, msg.env)
            except OSError as e:
                log.warning(f"{msg.queue_id}: cannot update the warning time: {e.strerror}")


def _not_empty(path: str) -> bool:
    try:
        return os.stat(path).st_size > 0
    except OSError:
        return False


def _agent_process_limits(cfg: Config, default: int) -> dict[str, int]:
    """master.cf's process limit of each unix service that has one below ``default``
    (``-`` is default_process_limit, 0 none): master starts no more agents than that."""
    path = os.path.join(cfg.config_dir, "master.cf")
    try:
        entries = master_cf.parse_file(path)
    except (ConfigError, OSError) as e:
        log.warning(f"{path}: {e}: every transport's process limit is default_process_limit")
        return {}
    limits = {e.name: e.maxproc for e in entries if e.type == "unix"}  # a later entry wins
    return {name: limit for name, limit in limits.items() if limit and limit < default}


def _open_file_budget() -> int:
    """Raise the soft open-file limit to the hard one (a non-root login often has
    1024 of 20000 or more) and return how many queue files qmgr may keep open."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (OSError, ValueError) as e:
            log.warning(f"cannot raise the open file limit from {soft} to {hard}: {e}")
    if soft == resource.RLIM_INFINITY:
        return 1 << 30
    return max(soft - FD_RESERVE, 16)


async def _on_trigger(ctx: server.Context, data: bytes) -> None:
    ctx.state["qmgr"].trigger(data)


USER_REQUESTS = frozenset(b"WIDAF")


async def _serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 ctx: server.Context) -> None:
    """public/qmgr: the mail system's triggers as they come; anyone else is a flush
    request that authorized_flush_users must allow (request letters only, one read)."""
    uid = server.peer_uid(writer.get_extra_info("socket"))
    if access.trusted_peer(ctx.config, uid):
        await server.read_triggers(reader, writer, ctx, lambda data: _on_trigger(ctx, data))
        return
    if access.service_refusal(ctx.config, "authorized_flush_users", uid,
                              "flush the mail queue") is not None:
        return  # a trigger has no reply: the warning is all
    slots: peers.PeerSlots = ctx.state.setdefault("slots", peers.PeerSlots())
    if not slots.take(uid):
        slots.refusal(uid, ctx.service)
        return
    try:
        data = await asyncio.wait_for(reader.read(64), peers.USER_TRIGGER_TIMEOUT)
    except TimeoutError:
        return
    finally:
        slots.give_back(uid)
    await _on_trigger(ctx, bytes(b for b in data if b in USER_REQUESTS))


async def _on_start(ctx: server.Context) -> None:
    mgr = Qmgr(ctx)
    ctx.state["qmgr"] = mgr
    mgr.recover()
    ctx.state["scanner"] = asyncio.ensure_future(mgr.scanner())
    ctx.state["timer"] = asyncio.ensure_future(mgr.timer())
    ctx.state["reaper"] = asyncio.ensure_future(mgr.reaper())
    ctx.state["dispatcher"] = asyncio.ensure_future(mgr.dispatcher())
    mgr.trigger(b"ID")  # everything in incoming; deferred mail whose time has come


async def _on_stop(ctx: server.Context) -> None:
    """Take no new message; unless terminated, give the deliveries in flight
    STOP_DRAIN seconds to answer (so their results are recorded), then go:
    what is left in active/ the next qmgr recovers. qmgr is one process
    (maxproc 1): after a reload the new one starts when this one has exited."""
    for name in ("scanner", "timer", "reaper", "dispatcher"):
        task = ctx.state.get(name)
        if task is not None:
            task.cancel()
    mgr = ctx.state.get("qmgr")
    if mgr is not None and mgr.tasks and not ctx.terminated:
        await asyncio.wait(set(mgr.tasks), timeout=STOP_DRAIN)


def main(argv: list[str] | None = None) -> None:
    server.run(PROGRAM, serve=_serve, on_trigger=_on_trigger, on_start=_on_start,
               on_stop=_on_stop, resident=True, argv=argv)


if __name__ == "__main__":
    main()
