"""qmgr's in-memory scheduler: destinations, round-robin, concurrency feedback, dead sites.

Postfix's qmgr(8) "SCHEDULING" and "CONCURRENCY" rules as a plain data
structure, with no I/O, no clock of its own beyond the one it is given and no
idea of what an entry is (qmgr's delivery requests: recipients of one message
for one destination).

A destination is one (transport, name) pair; the name is the nexthop, or the
recipient for transports that take one recipient per request (local). Each
holds its waiting entries in arrival order. ``next()`` hands out one entry at a
time: the transports in turn, and within a transport its destinations in
turn, so one destination with many entries (1000 messages for one site, or
one message with 1000 recipients) never holds back another.

Concurrency per destination is a window: at most ``window`` entries of it in
flight, and at most ``process_limit`` of a transport. The window starts at
``initial`` and follows feedback, as Postfix's qmgr_queue_unthrottle and
qmgr_queue_throttle do: each delivery that did not report a site failure
adds ``positive(window)`` to a success score, and every whole unit raises the
window by one up to ``concurrency_limit`` (0: none), as long as the window is
in use; a site failure (the agent could not reach the destination at all)
subtracts ``negative(window)``, every whole unit lowering the window by one
(not below 1), and adds 1/window to the failed-cohort score. When that score
reaches ``cohort_limit`` (0: never), the destination is dead: its waiting
entries are handed back to the caller (who defers them, "delivery
temporarily suspended"), and entries for it are refused (``dead``) until
``backoff`` seconds have passed; then it is tried again with a window of 1,
and its first success brings back the initial window. A success reported by
a delivery that was still in flight also revives a dead destination.
``forget_dead()`` (``postqueue -f``) forgets every dead destination,
``forget(dest)`` (``postqueue -i``) one.

Rate delay (Postfix's ``<transport>_destination_rate_delay``): with
``rate_delay`` above 0 a destination has one delivery at a time (the caller
gives such a policy a concurrency limit of 1) and, after each one ends, is
suspended for that many seconds, as Postfix's qmgr_queue_suspend; a
destination that this delivery made dead is revived first (its waiting
entries were handed back), as Postfix's qmgr_entry_done unthrottles it.
``resume_due()`` makes the destinations whose pause is over runnable again
and returns when the next pause ends (the caller's timer); nothing is sent
behind a delivery to such a destination.

Queued behind a delivery: for an agent that serves one request at a time
per connection, the caller may send a destination's next entry behind one
of its deliveries in flight (``take_behind``: at most one per delivery in
flight, only while the window is full and never for a dead destination),
so that the agent goes on without
waiting for the caller between the two. Such an entry is not in flight:
it counts in ``behind``, not in ``busy``, until the delivery ahead of it
ends and the caller calls ``promote``, when it takes that delivery's place.
The parallel deliveries to a destination thus never exceed the number of
its deliveries in flight, which the window bounds as before. An entry the
agent never read (it went away after its last reply) goes back first in its
queue with ``retry``.

Feedback values are Postfix's: a number in (0, 1], ``1/concurrency`` or
``1/sqrt_concurrency`` (``parse_feedback``; ValueError for anything else).

Memory: destinations with nothing waiting, nothing in flight and no dead
status are dropped by ``prune()``; every other structure holds only what is
waiting or in flight.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")
EPSILON = 1e-5
Feedback = Callable[[int], float]


def parse_feedback(text: str) -> Feedback:
    """Postfix's feedback syntax: ``1/concurrency``, ``1/sqrt_concurrency`` or a number in (0, 1]."""
    value = text.strip().lower()
    if value in ("1/concurrency", "1/win"):
        return lambda window: 1.0 / max(window, 1)
    if value in ("1/sqrt_concurrency", "1/sqrt_win"):
        return lambda window: 1.0 / math.sqrt(max(window, 1))
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"bad feedback value: {text}") from None
    if not (0 < number <= 1) or not math.isfinite(number):
        raise ValueError(f"feedback value out of range (0, 1]: {text}")
    return lambda window: number


@dataclass(frozen=True)
class Policy:
    """One transport's scheduling parameters."""

    concurrency_limit: int = 20  # 0: no limit
    initial: int = 5
    positive: Feedback = parse_feedback("1")
    negative: Feedback = parse_feedback("1")
    cohort_limit: int = 1  # 0: never declared dead
    process_limit: int = 100
    rate_delay: float = 0.0  # > 0: pause after each delivery to a destination


class Destination(Generic[T]):
    """One (transport, name) queue: its waiting entries and concurrency state."""

    def __init__(self, transport: Transport[T], name: str) -> None:
        self.transport = transport
        self.name = name
        self.window = max(transport.policy.initial, 1)
        self.busy = 0
        self.behind = 0  # entries sent behind a delivery in flight (take_behind)
        self.waiting: deque[T] = deque()
        self.success = 0.0
        self.failure = 0.0
        self.fail_cohorts = 0.0
        self.dead_until = 0.0  # > 0: dead until then (the scheduler's clock)
        self.resume_at = 0.0  # > 0: suspended until then (rate delay)
        self.probing = False  # tried again after being dead: window 1 until a success
        self.dsn = ""  # why it is dead
        self.reason = ""
        self.queued = False  # in transport.ready (lazily: checked when taken out)

    @property
    def dead(self) -> bool:
        return self.dead_until > 0

    def runnable(self) -> bool:
        return bool(self.waiting) and self.busy < self.window and not self.dead \
            and not self.resume_at


class Transport(Generic[T]):
    def __init__(self, name: str, policy: Policy) -> None:
        self.name = name
        self.policy = policy
        self.destinations: dict[str, Destination[T]] = {}
        self.ready: deque[Destination[T]] = deque()
        self.busy = 0
        self.queued = False  # in the scheduler's rotation

    def runnable(self) -> bool:
        return bool(self.ready) and self.busy < self.policy.process_limit


class Scheduler(Generic[T]):
    """Entries per destination, handed out round-robin within each one's window."""

    def __init__(self, policy_of: Callable[[str], Policy], backoff: float,
                 clock: Callable[[], float] = time.monotonic,
                 debug: Callable[[str], None] | None = None) -> None:
        self.policy_of = policy_of
        self.backoff = backoff
        self.clock = clock
        self.debug = debug
        self.transports: dict[str, Transport[T]] = {}
        self.rotation: deque[Transport[T]] = deque()
        self.suspended: set[Destination[T]] = set()  # rate delay

    def destination(self, transport: str, name: str) -> Destination[T]:
        """The destination (created when new); a dead one whose backoff has ended is
        tried again, with a window of 1."""
        t = self.transports.get(transport)
        if t is None:
            t = self.transports[transport] = Transport(transport, self.policy_of(transport))
        d = t.destinations.get(name)
        if d is None:
            d = t.destinations[name] = Destination(t, name)
        elif d.dead and self.clock() >= d.dead_until:
            d.dead_until = 0.0
            d.window, d.probing = 1, True
            d.success = d.failure = d.fail_cohorts = 0.0
            self._debug("resume", d)
        return d

    def add(self, dest: Destination[T], entry: T) -> None:
        """Queue an entry; the caller has checked that the destination is not dead."""
        if dest.dead:
            raise ValueError(f"destination {dest.name} is dead")
        dest.waiting.append(entry)
        self._ready(dest)

    def next(self) -> tuple[Destination[T], T] | None:
        """The next entry to deliver (now counted in flight), or None when every
        destination with waiting entries is at its window or its transport at its limit."""
        while self.rotation:
            t = self.rotation.popleft()
            t.queued = False
            if t.busy >= t.policy.process_limit:
                continue  # back in the rotation when one of its deliveries ends
            while t.ready:
                d = t.ready.popleft()
                d.queued = False
                if d.runnable():
                    entry = d.waiting.popleft()
                    d.busy += 1
                    t.busy += 1
                    self._ready(d)
                    self._rotate(t)
                    return d, entry
        return None

    def take_behind(self, dest: Destination[T]) -> T | None:
        """The destination's next entry, to be sent behind one of its deliveries in
        flight; None when nothing waits, the destination is dead, each delivery in
        flight already has one behind it, or the window is not exactly full (with
        room, ``next`` starts the entry as a delivery of its own; past it, after
        negative feedback, the deliveries in flight drain down to the window)."""
        if not dest.waiting or dest.dead or dest.behind >= dest.busy \
                or dest.busy != dest.window or dest.transport.policy.rate_delay > 0:
            return None
        dest.behind += 1
        return dest.waiting.popleft()

    def promote(self, dest: Destination[T]) -> None:
        """The delivery ahead of an entry taken with ``take_behind`` has ended (its
        feedback given): that entry is now in flight in its place."""
        dest.behind -= 1
        dest.busy += 1
        dest.transport.busy += 1

    def retry(self, dest: Destination[T], entry: T) -> None:
        """Put an entry back first in its destination's queue: it was sent, but the
        agent went away without reading it. The caller has checked that the
        destination is not dead."""
        if dest.dead:
            raise ValueError(f"destination {dest.name} is dead")
        dest.waiting.appendleft(entry)
        self._ready(dest)

    def success(self, dest: Destination[T]) -> None:
        """A delivery ended without a site failure: positive feedback, then release."""
        policy = dest.transport.policy
        if dest.dead or dest.probing:
            dest.dead_until, dest.probing = 0.0, False
            dest.window = max(policy.initial, 1)
            dest.success = dest.failure = dest.fail_cohorts = 0.0
            self._debug("revive", dest)
        elif policy.concurrency_limit == 0 or dest.window < policy.concurrency_limit:
            if dest.window < dest.busy + policy.initial:
                feedback = policy.positive(dest.window)
                dest.success += feedback
                while dest.success + feedback / 2 >= 1:  # as Postfix: room for rounding
                    dest.window += 1
                    dest.success -= 1
                    self._debug("unthrottle", dest)
            dest.failure = 0.0
        dest.fail_cohorts = 0.0
        self._release(dest)

    def failure(self, dest: Destination[T], dsn: str, reason: str) -> list[T]:
        """A delivery reported that the destination cannot be reached: negative feedback,
        then release. Returns the waiting entries when this made the destination dead
        (the caller defers them with the reason); they are no longer queued."""
        policy = dest.transport.policy
        dropped: list[T] = []
        if not dest.dead:
            dest.fail_cohorts += 1.0 / max(dest.window, 1)
            if policy.cohort_limit > 0 and dest.fail_cohorts + EPSILON >= policy.cohort_limit:
                dest.dead_until = self.clock() + self.backoff
                dest.probing = False
                dest.dsn, dest.reason = dsn, reason
                dropped = list(dest.waiting)
                dest.waiting.clear()
                self._debug("dead", dest)
            else:
                feedback = policy.negative(dest.window)
                dest.failure -= feedback
                while dest.failure + feedback / 2 < 0:
                    dest.window -= 1
                    dest.failure += 1
                dest.window = max(dest.window, 1)
                dest.success = 0.0
                self._debug("throttle", dest)
        self._release(dest)
        return dropped

    def take_transport(self, transport: str) -> list[T]:
        """Every entry waiting for the transport's destinations, no longer queued (the
        caller defers them: the transport is dead)."""
        t = self.transports.get(transport)
        if t is None:
            return []
        dropped: list[T] = []
        for d in t.destinations.values():
            dropped.extend(d.waiting)
            d.waiting.clear()
        return dropped

    def release(self, dest: Destination[T]) -> None:
        """A delivery ended with no word on the destination (the agent itself failed)."""
        self._release(dest)

    def forget_dead(self) -> None:
        """Forget every dead destination (``postqueue -f``): the next entry is tried at once."""
        for t in self.transports.values():
            for d in t.destinations.values():
                self.forget(d)

    def forget(self, dest: Destination[T]) -> None:
        """Forget that a destination is dead (``postqueue -i`` of a message for it)."""
        if dest.dead:
            dest.dead_until, dest.probing = 0.0, False
            dest.window = max(dest.transport.policy.initial, 1)
            dest.success = dest.failure = dest.fail_cohorts = 0.0
            self._ready(dest)

    def prune(self) -> None:
        """Drop destinations with nothing waiting or in flight whose dead time (if any) is over."""
        now = self.clock()
        for t in list(self.transports.values()):
            for name, d in list(t.destinations.items()):
                if not d.waiting and not d.busy and not d.behind and not d.resume_at \
                        and not (d.dead and now < d.dead_until):
                    del t.destinations[name]
            if not t.destinations and not t.busy:
                del self.transports[t.name]

    def waiting(self) -> int:
        return sum(len(d.waiting) for t in self.transports.values()
                   for d in t.destinations.values())

    # --- internals ---------------------------------------------------------------

    def resume_due(self) -> float | None:
        """End the pauses that are over (their destinations may run again); the clock
        time at which the next one ends, or None when no destination is paused."""
        if not self.suspended:
            return None
        now = self.clock()
        for d in [d for d in self.suspended if d.resume_at <= now]:
            self.suspended.discard(d)
            d.resume_at = 0.0
            self._ready(d)
        return min((d.resume_at for d in self.suspended), default=None)

    def _release(self, dest: Destination[T]) -> None:
        dest.busy -= 1
        dest.transport.busy -= 1
        delay = dest.transport.policy.rate_delay
        if delay > 0:
            if dest.dead:  # as Postfix's qmgr_entry_done: the pause replaces the dead time
                dest.dead_until, dest.probing = 0.0, False
                dest.window = 1
                dest.success = dest.failure = dest.fail_cohorts = 0.0
            if dest.busy == 0:
                dest.resume_at = self.clock() + delay
                self.suspended.add(dest)
        self._ready(dest)
        self._rotate(dest.transport)

    def _ready(self, dest: Destination[T]) -> None:
        if not dest.queued and dest.runnable():
            dest.queued = True
            dest.transport.ready.append(dest)
            self._rotate(dest.transport)

    def _rotate(self, t: Transport[T]) -> None:
        if not t.queued and t.runnable():
            t.queued = True
            self.rotation.append(t)

    def _debug(self, what: str, d: Destination[T]) -> None:
        if self.debug is not None:
            self.debug(f"qmgr_queue_{what}: queue {d.transport.name}:{d.name}: "
                       f"limit {d.transport.policy.concurrency_limit} window {d.window} "
                       f"busy {d.busy} success {d.success:g} failure {d.failure:g} "
                       f"fail_cohorts {d.fail_cohorts:g}")
