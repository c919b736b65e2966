"""pymailsys.queue.scheduler: round-robin, concurrency windows, feedback, dead destinations."""

from __future__ import annotations

import pytest

from pymailsys.queue.scheduler import Policy, Scheduler, parse_feedback


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(clock: Clock | None = None, **policy: object) -> Scheduler[str]:
    p = Policy(**policy)  # type: ignore[arg-type]
    return Scheduler(lambda transport: p, backoff=300, clock=clock or Clock())


def drain(s: Scheduler[str]) -> list[str]:
    out = []
    while (picked := s.next()) is not None:
        out.append(picked[1])
    return out


def test_destinations_and_transports_take_turns() -> None:
    s = make(initial=100, concurrency_limit=100)
    big = s.destination("smtp", "big.example")
    for i in range(5):
        s.add(big, f"big{i}")
    s.add(s.destination("smtp", "small.example"), "small")
    s.add(s.destination("local", "user"), "local")
    order = drain(s)
    # one 5-entry destination does not hold back the others: both come within the first three
    assert set(order[:3]) == {"big0", "small", "local"}
    assert sorted(order) == sorted(["big0", "big1", "big2", "big3", "big4", "small", "local"])


def test_window_limits_entries_in_flight_and_grows_with_success() -> None:
    s = make(initial=2, concurrency_limit=4)
    d = s.destination("smtp", "example.org")
    for i in range(10):
        s.add(d, str(i))
    assert len(drain(s)) == 2
    s.success(d)  # window 3: two may start (one freed, one more allowed)
    assert d.window == 3
    assert len(drain(s)) == 2
    for _ in range(3):
        s.success(d)
    assert d.window == 4  # capped at the limit
    drain(s)
    assert d.busy == 4


def test_fractional_positive_feedback() -> None:
    s = make(initial=2, concurrency_limit=20, positive=parse_feedback("1/concurrency"))
    d = s.destination("smtp", "example.org")
    for i in range(4):
        s.add(d, str(i))
    drain(s)
    s.success(d)
    assert d.window == 2  # +1/2 so far
    drain(s)
    s.success(d)
    assert d.window == 3


def test_site_failures_shrink_the_window_then_a_failed_cohort_kills_the_destination() -> None:
    clock = Clock()
    s = make(clock, initial=4, cohort_limit=1)
    d = s.destination("smtp", "dead.example")
    for i in range(10):
        s.add(d, str(i))
    assert len(drain(s)) == 4
    why = "connect to dead.example: Connection timed out"
    assert s.failure(d, "4.4.1", why) == [] and d.window == 3  # cohort score 1/4
    assert s.failure(d, "4.4.1", why) == [] and d.window == 2  # 1/4 + 1/3
    assert not d.dead
    dropped = s.failure(d, "4.4.1", why)  # + 1/2: a whole cohort failed
    assert d.dead and dropped == ["4", "5", "6", "7", "8", "9"]
    assert s.failure(d, "4.4.1", why) == [] and d.busy == 0  # the last one in flight
    assert d.reason.startswith("connect to")
    with pytest.raises(ValueError):
        s.add(d, "late")
    assert s.destination("smtp", "dead.example").dead  # still within the backoff
    clock.now += 300
    again = s.destination("smtp", "dead.example")
    assert not again.dead and again.window == 1
    s.add(again, "a")
    s.add(again, "b")
    assert drain(s) == ["a"]  # concurrency 1 while it is tried again
    s.success(again)
    assert again.window == 4 and drain(s) == ["b"]


def test_a_dead_destination_does_not_stop_the_others_and_forget_dead() -> None:
    s = make(initial=1, cohort_limit=1)
    dead = s.destination("smtp", "dead.example")
    s.add(dead, "d1")
    s.add(dead, "d2")
    s.add(s.destination("smtp", "ok.example"), "ok1")
    first = s.next()
    assert first is not None
    picked = [first[1]]
    if first[0] is dead:
        assert s.failure(dead, "4.4.1", "timeout") == ["d2"]
    picked += drain(s)
    assert "ok1" in picked and dead.dead
    s.forget_dead()
    d = s.destination("smtp", "dead.example")
    assert not d.dead
    s.add(d, "d3")
    assert drain(s) == ["d3"]


def test_process_limit_per_transport_and_prune() -> None:
    s = make(initial=10, process_limit=2)
    for name in ("a", "b", "c"):
        s.add(s.destination("smtp", name), name)
    s.add(s.destination("local", "u"), "u")
    assert sorted(drain(s)) == ["a", "b", "u"]
    smtp_busy = [d for d in s.transports["smtp"].destinations.values() if d.busy]
    s.success(smtp_busy[0])
    assert drain(s) == ["c"]
    for t in list(s.transports.values()):
        for d in list(t.destinations.values()):
            while d.busy:
                s.success(d)
    s.prune()
    assert s.transports == {}


@pytest.mark.parametrize("text", ["0", "2", "-1", "nan", "1/x", ""])
def test_bad_feedback_values_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_feedback(text)


def test_entries_sent_behind_take_a_place_in_flight_only_when_promoted() -> None:
    """take_behind: one entry behind each delivery in flight, only while the window is
    full; it counts in flight (busy) once promoted, so the window is never exceeded."""
    s = make(initial=2, concurrency_limit=2)
    d = s.destination("local", "user")
    for i in range(6):
        s.add(d, f"m{i}")
    assert s.take_behind(d) is None  # nothing in flight: next() starts it instead
    assert s.next() == (d, "m0")
    assert s.take_behind(d) is None  # the window has room: m1 starts as a delivery of its own
    assert s.next() == (d, "m1")
    assert [s.take_behind(d), s.take_behind(d), s.take_behind(d)] == ["m2", "m3", None]
    assert (d.busy, d.behind) == (2, 2)
    assert s.next() is None  # the window is full: the rest waits
    s.success(d)  # m0 answered: m2, sent behind it, takes its place
    s.promote(d)
    assert (d.busy, d.behind, d.window) == (2, 1, 2)
    assert s.next() is None
    assert s.take_behind(d) == "m4"
    s.failure(d, "4.4.1", "no route")  # m1: the window drops to 1 ...
    s.promote(d)  # ... m3 was already sent: it is the delivery in flight in m1's place
    assert (d.busy, d.behind, d.window) == (2, 1, 1)
    assert s.take_behind(d) is None  # past the window: what is in flight drains first
    s.success(d)  # m2: m4 takes its place
    s.promote(d)
    s.success(d)  # m3, nothing behind it; the successes have grown the window again
    assert (d.busy, d.behind, d.window) == (1, 0, 2)
    assert s.take_behind(d) is None and drain(s) == ["m5"]  # room: a delivery of its own
    s.success(d)
    s.success(d)
    assert (d.busy, d.behind) == (0, 0)


def test_nothing_is_sent_behind_a_dead_destination() -> None:
    s = make(initial=1, concurrency_limit=1, cohort_limit=1)
    d = s.destination("local", "user")
    for i in range(3):
        s.add(d, f"m{i}")
    assert s.next() == (d, "m0")
    assert s.take_behind(d) == "m1"
    assert s.failure(d, "4.4.1", "no route") == ["m2"]  # dead: the waiting entry comes back
    s.promote(d)  # m1 was already sent
    assert s.take_behind(d) is None
    s.success(d)  # its success revives the destination, as any delivery in flight would
    assert not d.dead and (d.busy, d.behind) == (0, 0)


def test_retry_puts_an_unread_entry_back_first() -> None:
    s = make(initial=1, concurrency_limit=1)
    d = s.destination("local", "user")
    for i in range(3):
        s.add(d, f"m{i}")
    assert s.next() == (d, "m0")
    assert s.take_behind(d) == "m1"
    s.success(d)  # m0 answered; then the agent closed the connection without reading m1
    s.promote(d)
    s.release(d)
    s.retry(d, "m1")
    assert (d.busy, d.behind) == (0, 0)
    assert drain(s) == ["m1"]


def test_take_transport_hands_back_what_waits_for_every_destination_of_it() -> None:
    s = make(initial=1, concurrency_limit=1)
    alice, bob = s.destination("local", "alice"), s.destination("local", "bob")
    other = s.destination("smtp", "example.org")
    for d, name in ((alice, "a"), (bob, "b"), (other, "o")):
        for i in range(2):
            s.add(d, f"{name}{i}")
    assert s.next() == (alice, "a0")
    assert sorted(s.take_transport("local")) == ["a1", "b0", "b1"]
    assert s.take_transport("nothing") == []
    s.release(alice)
    assert drain(s) == ["o0"]


def test_rate_delay_pauses_a_destination_after_each_delivery() -> None:
    """Postfix's destination_rate_delay: one delivery at a time, then a pause for that
    destination only; a failed cohort defers what waits, and the pause ends the dead time."""
    clock = Clock()
    s = make(clock, initial=1, concurrency_limit=1, rate_delay=10)
    d = s.destination("smtp", "slow.example")
    other = s.destination("smtp", "other.example")
    for i in range(3):
        s.add(d, f"slow{i}")
    s.add(other, "other")
    assert sorted(drain(s)) == ["other", "slow0"]
    s.success(d)
    assert drain(s) == [] and s.resume_due() == clock.now + 10
    clock.now += 9.5
    assert s.resume_due() == clock.now + 0.5 and drain(s) == []
    clock.now += 0.5
    assert s.resume_due() is None
    assert drain(s) == ["slow1"]
    assert s.take_behind(d) is None  # nothing queued behind a rate-limited delivery
    assert s.failure(d, "4.4.1", "connection refused") == ["slow2"]  # dead: waiting deferred
    assert not d.dead and s.resume_due() == clock.now + 10
    s.add(s.destination("smtp", "slow.example"), "slow3")  # taken, not refused as dead
    clock.now += 10
    s.resume_due()
    assert drain(s) == ["slow3"]
    s.success(d)
    s.prune()  # a destination in its pause is kept, so the pause holds for new mail
    assert "slow.example" in s.transports["smtp"].destinations
