"""Limiter: database lanes, the CPU lane, timeouts, interruptions, shutdown, counters.

Concurrent requests are threads with the limiter's threading primitives; the
timeout arithmetic runs on a fake clock with a scripted wake-up event; waits
interrupted the way gevent interrupts them (kill, Timeout) use real greenlets.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import gevent
import pytest
from gevent.event import Event

from gunitune.core.lanes import CPU, EXEMPT, FAST, LANES, SLOW
from gunitune.limiter import ClientGone, Limiter, Moved, Rejected, Ticket
from tests.unit.helpers import resolved, wait_until

SHUTTING_DOWN = "the worker is shutting down"
TIMED_OUT = "no slot free within GUNITUNE_QUEUE_TIMEOUT"


class FakeClock:
    """A clock the test (or a scripted wait) moves by hand."""

    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Counter:
    """A callable that counts its calls (heartbeat, yield)."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> None:
        self.calls += 1


class Boom(Exception):
    """What a failing heartbeat or yield raises (a gevent Timeout in real life)."""


class Script:
    """Wake-up events for one thread: each wait runs the next step, on a fake clock.

    A step may hand a slot over (release a ticket: that sets the waiting event)
    and move the clock; a wait whose event is still unset after its step lasted
    its whole timeout.
    """

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.steps: list[Callable[[], object]] = []
        self.timeouts: list[float | None] = []

    def event(self) -> ScriptedEvent:
        return ScriptedEvent(self)


class ScriptedEvent:
    def __init__(self, script: Script) -> None:
        self.script = script
        self.is_set = False

    def set(self) -> None:
        self.is_set = True

    def wait(self, timeout: float | None = None) -> bool:
        self.script.timeouts.append(timeout)
        self.script.steps.pop(0)()
        if not self.is_set:
            assert timeout is not None, "this wait would never end"
            self.script.clock.now += timeout
        return self.is_set


def make(capacity: int = 2, config: dict[str, Any] | None = None, **kwargs: Any) -> Limiter:
    kwargs.setdefault("yield_to_loop", Counter())
    return Limiter(resolved(capacity, config), **kwargs)


def scripted(
    capacity: int = 1, config: dict[str, Any] | None = None, **kwargs: Any
) -> tuple[Limiter, Script]:
    script = Script(FakeClock())

    def one_loop_turn() -> None:
        script.clock.now += 0.001

    kwargs.setdefault("yield_to_loop", one_loop_turn)
    limiter = make(capacity, config, clock=script.clock, event_factory=script.event, **kwargs)
    return limiter, script


class Request(threading.Thread):
    """One request acquiring in its own thread; keeps its ticket or its exception."""

    def __init__(self, limiter: Limiter, lane: str, **kwargs: Any) -> None:
        super().__init__(daemon=True)
        self.limiter, self.lane, self.kwargs = limiter, lane, kwargs
        self.ticket: Ticket | None = None
        self.error: BaseException | None = None
        self.done = threading.Event()

    def run(self) -> None:
        try:
            self.ticket = self.limiter.acquire(self.lane, **self.kwargs)
        except Exception as exc:
            self.error = exc
        finally:
            self.done.set()

    def outcome(self) -> Ticket | BaseException:
        self.join(timeout=5)
        assert not self.is_alive(), "the request is still waiting"
        result = self.ticket if self.ticket is not None else self.error
        assert result is not None
        return result


def queued(limiter: Limiter, lane: str, **kwargs: Any) -> Request:
    """Start a request in a thread and return once it waits in a queue."""
    before = limiter.waiting()
    request = Request(limiter, lane, **kwargs)
    request.start()
    wait_until(lambda: limiter.waiting() == before + 1 or request.done.is_set())
    assert not request.done.is_set(), f"not queued: {request.outcome()!r}"
    return request


# --- free slots -------------------------------------------------------------------


def test_free_slot_is_granted_at_once_and_given_back_on_release() -> None:
    limiter = make(capacity=2, clock=FakeClock())
    ticket = limiter.acquire(FAST, route="/r")
    assert ticket == Ticket(lane=FAST, db=True, cpu=False, waited=0.0, concurrent=1)
    fast = limiter.stats()["lanes"][FAST]
    assert (fast["in_use"], fast["admitted"], fast["waiting"]) == (1, 1, 0)
    limiter.release(ticket)
    assert limiter.db.used == 0


def test_exempt_request_takes_no_database_slot_even_when_all_are_held() -> None:
    limiter = make(capacity=1)
    limiter.acquire(SLOW)
    ticket = limiter.acquire(EXEMPT)
    assert (ticket.db, ticket.cpu) == (False, False)
    assert limiter.db.used == 1
    limiter.release(ticket)
    assert limiter.db.used == 1
    assert limiter.stats()["lanes"][EXEMPT]["admitted"] == 1


def test_io_request_neither_beats_nor_yields() -> None:
    beats, yields = Counter(), Counter()
    limiter = make(heartbeat=beats, yield_to_loop=yields)
    limiter.release(limiter.acquire(FAST))
    assert (beats.calls, yields.calls) == (0, 0)


# --- queueing -----------------------------------------------------------------------


def test_queued_requests_get_released_slots_in_arrival_order() -> None:
    limiter = make(capacity=1)
    holder = limiter.acquire(FAST)
    first = queued(limiter, FAST)
    second = queued(limiter, FAST)
    limiter.release(holder)
    got_first = first.outcome()
    assert isinstance(got_first, Ticket)
    assert second.is_alive()  # still queued: one slot
    limiter.release(got_first)
    assert isinstance(second.outcome(), Ticket)
    assert limiter.stats()["lanes"][FAST]["admitted"] == 3


def test_released_slot_goes_to_the_queued_request_not_to_a_newcomer() -> None:
    limiter = make(capacity=1)
    holder = limiter.acquire(FAST)
    waiting = queued(limiter, FAST)
    limiter.release(holder)
    # Handed over before the waiter even ran: nothing is free for a newcomer.
    assert limiter.db.in_use(FAST) == 1
    assert limiter.db.try_acquire(FAST) is False
    assert isinstance(waiting.outcome(), Ticket)


def test_fast_request_is_served_before_earlier_slow_ones_when_slow_borrowed_the_pool() -> None:
    limiter = make(capacity=4)  # fast guaranteed 1 slot, slow 2
    slow_tickets = [limiter.acquire(SLOW) for _ in range(4)]
    slow = queued(limiter, SLOW)
    fast = queued(limiter, FAST)
    limiter.release(slow_tickets.pop())
    assert isinstance(fast.outcome(), Ticket)
    assert slow.is_alive()
    limiter.release(slow_tickets.pop())
    assert isinstance(slow.outcome(), Ticket)


# --- the CPU lane -------------------------------------------------------------------


def test_cpu_request_takes_the_cpu_lane_before_its_database_slot() -> None:
    limiter: Limiter
    seen: list[tuple[int, int]] = []

    def yield_to_loop() -> None:
        seen.append((limiter.cpu.used, limiter.db.used))

    limiter = make(yield_to_loop=yield_to_loop)
    ticket = limiter.acquire(FAST, cpu=True)
    assert seen == [(1, 0)]  # it yields holding the CPU lane, before any database slot
    assert (ticket.cpu, ticket.db, ticket.lane) == (True, True, FAST)
    assert (limiter.cpu.used, limiter.db.used) == (1, 1)
    limiter.release(ticket)
    assert (limiter.cpu.used, limiter.db.used) == (0, 0)


def test_cpu_request_lets_fast_database_requests_in_flight_finish_first() -> None:
    limiter: Limiter
    fast: list[Ticket] = []
    turns: list[int] = []

    def yield_to_loop() -> None:
        # The loop's turn: the fast request's database round trips go on, and
        # on the third turn it is done.
        turns.append(limiter.fast_in_flight)
        if len(turns) == 3:
            limiter.release(fast.pop())

    limiter = make(capacity=4, config={"GUNITUNE_CPU_CONCURRENCY": 2}, yield_to_loop=yield_to_loop)
    fast.append(limiter.acquire(FAST))
    ticket = limiter.acquire(EXEMPT, cpu=True)
    assert turns == [1, 1, 1]  # the CPU work started only once the fast request was done
    assert ticket.cpu and limiter.fast_in_flight == 0
    # A CPU-bound request's own fast slot is not fast work to wait for.
    limiter.release(ticket)
    cpu_with_db = limiter.acquire(FAST, cpu=True)
    assert limiter.acquire(EXEMPT, cpu=True).cpu and turns == [1, 1, 1, 0, 0]
    limiter.release(cpu_with_db)


def test_cpu_request_waits_for_fast_requests_only_so_long() -> None:
    clock = FakeClock()

    def yield_to_loop() -> None:
        clock.now += 0.01

    limiter = make(capacity=4, clock=clock, yield_to_loop=yield_to_loop)
    never_done = limiter.acquire(FAST)
    started = clock.now
    ticket = limiter.acquire(EXEMPT, cpu=True)
    # A steady stream of fast requests cannot starve CPU work: 10 ms at most.
    assert ticket.cpu and 0.01 <= clock.now - started <= 0.03
    limiter.release(never_done)


def test_cpu_request_holds_no_database_slot_while_it_waits_for_the_cpu_lane() -> None:
    limiter = make(capacity=2)
    running = limiter.acquire(FAST, cpu=True)
    waiting = queued(limiter, FAST, cpu=True)
    assert limiter.cpu.waiting() == 1
    assert limiter.db.used == 1  # only the running one's
    io = limiter.acquire(FAST)  # the free slot serves an IO request meanwhile
    limiter.release(io)
    limiter.release(running)
    ticket = waiting.outcome()
    assert isinstance(ticket, Ticket)
    assert (ticket.cpu, ticket.db) == (True, True)
    assert (limiter.cpu.used, limiter.db.used) == (1, 1)


def test_cpu_concurrency_sets_how_many_run_through_the_cpu_lane() -> None:
    limiter, script = scripted(
        capacity=5, config={"GUNITUNE_CPU_CONCURRENCY": 2, "GUNITUNE_QUEUE_TIMEOUT": 1}
    )
    limiter.acquire(FAST, cpu=True)
    limiter.acquire(SLOW, cpu=True)
    script.steps.append(lambda: None)
    with pytest.raises(Rejected) as info:
        limiter.acquire(FAST, cpu=True)
    assert info.value.lane == CPU
    assert limiter.db.used == 2
    limiter.acquire(FAST)  # IO requests still pass
    assert limiter.db.used == 3


def test_cpu_lane_beats_the_heartbeat_on_entry_and_exit_at_most_once_per_interval() -> None:
    clock, beats, yields = FakeClock(), Counter(), Counter()
    # GUNITUNE_TIMEOUT 30 s: a beat at most every second.
    limiter = make(clock=clock, heartbeat=beats, yield_to_loop=yields)
    first = limiter.acquire(FAST, cpu=True)
    assert (beats.calls, yields.calls) == (1, 1)
    clock.now += 0.5
    limiter.release(first)
    assert beats.calls == 1  # too soon after the last beat
    clock.now += 0.5
    limiter.release(limiter.acquire(FAST, cpu=True))
    assert (beats.calls, yields.calls) == (2, 2)


def test_progress_beats_at_most_once_per_tenth_of_the_heartbeat_timeout() -> None:
    clock, beats = FakeClock(), Counter()
    limiter = make(config={"GUNITUNE_TIMEOUT": 5}, clock=clock, heartbeat=beats)
    for _ in range(3):
        limiter.progress()
    assert beats.calls == 1
    clock.now += 0.4
    limiter.progress()
    assert beats.calls == 1  # 0.4 s < 5 s / 10
    clock.now += 0.1
    limiter.progress()
    assert beats.calls == 2


def test_progress_without_heartbeat_does_nothing() -> None:
    make(heartbeat=None).progress()


# --- the queue timeout --------------------------------------------------------------


def test_request_is_rejected_after_the_queue_timeout_leaving_nothing_behind() -> None:
    limiter, script = scripted(capacity=1, config={"GUNITUNE_QUEUE_TIMEOUT": 2.5})
    holder = limiter.acquire(FAST)
    script.steps.append(lambda: None)  # nobody releases
    with pytest.raises(Rejected) as info:
        limiter.acquire(FAST)
    assert (info.value.reason, str(info.value)) == (TIMED_OUT, TIMED_OUT)
    assert (info.value.lane, info.value.waited) == (FAST, 2.5)
    assert script.timeouts == [2.5]
    assert limiter.waiting() == 0
    assert limiter.stats()["lanes"][FAST]["rejected"] == 1
    limiter.release(holder)
    assert limiter.acquire(FAST).waited == 0.0  # the slot is usable again


def test_queue_timeout_off_waits_as_long_as_it_takes() -> None:
    limiter, script = scripted(capacity=1)
    assert limiter.queue_timeout is None
    holder = limiter.acquire(FAST)

    def released_after_a_while() -> None:
        script.clock.now += 75.0
        limiter.release(holder)

    script.steps.append(released_after_a_while)
    ticket = limiter.acquire(FAST)
    assert script.timeouts == [None]
    assert ticket.waited == 75.0


def test_database_wait_gets_only_what_the_cpu_lane_left_of_the_queue_timeout() -> None:
    limiter, script = scripted(capacity=1, config={"GUNITUNE_QUEUE_TIMEOUT": 1.0})
    cpu_holder = limiter.acquire(EXEMPT, cpu=True)
    limiter.acquire(FAST)  # holds the only database slot

    def cpu_lane_frees_after_0_3_s() -> None:
        script.clock.now += 0.3
        limiter.release(cpu_holder)

    script.steps += [cpu_lane_frees_after_0_3_s, lambda: None]
    with pytest.raises(Rejected) as info:
        limiter.acquire(FAST, cpu=True)
    # 0.3 s for the CPU lane, 1 ms for the loop's turn, 10 ms for the fast
    # request holding the slot: the database wait gets the rest of the second.
    assert script.timeouts == [1.0, pytest.approx(0.689, abs=0.002)]
    assert (info.value.lane, info.value.waited) == (FAST, pytest.approx(1.0))
    assert limiter.cpu.used == 0  # the CPU lane it got came back
    assert limiter.db.used == 1


def test_wait_after_the_deadline_passed_is_zero_not_negative() -> None:
    limiter, script = scripted(capacity=1, config={"GUNITUNE_QUEUE_TIMEOUT": 1.0})
    cpu_holder = limiter.acquire(EXEMPT, cpu=True)
    limiter.acquire(FAST)

    def cpu_lane_frees_too_late() -> None:
        script.clock.now += 2.0
        limiter.release(cpu_holder)

    script.steps += [cpu_lane_frees_too_late, lambda: None]
    with pytest.raises(Rejected):
        limiter.acquire(FAST, cpu=True)
    assert script.timeouts == [1.0, 0.0]


# --- interrupted waits give their slots back -----------------------------------------


def gevent_limiter(capacity: int = 1, **kwargs: Any) -> Limiter:
    return make(capacity, event_factory=Event, **kwargs)


def wait_green(condition: Callable[[], bool]) -> None:
    """Let other greenlets run until ``condition`` holds."""
    for _ in range(1000):
        if condition():
            return
        gevent.sleep(0)
    raise AssertionError("condition not reached")


def test_killed_waiter_leaves_its_queue() -> None:
    limiter = gevent_limiter(capacity=1)
    holder = limiter.acquire(FAST)
    waiter = gevent.spawn(limiter.acquire, FAST)
    wait_green(lambda: limiter.waiting() == 1)
    waiter.kill()
    assert limiter.waiting() == 0
    limiter.release(holder)
    assert limiter.db.used == 0


def test_wait_interrupted_after_the_hand_off_gives_the_slot_back() -> None:
    limiter, script = scripted(capacity=1)
    holder = limiter.acquire(FAST)

    def handed_over_then_interrupted() -> None:
        limiter.release(holder)  # the slot is this waiter's now, but it has no ticket
        raise Boom  # e.g. GreenletExit or a deadline, before the waiter woke up

    script.steps.append(handed_over_then_interrupted)
    with pytest.raises(Boom):
        limiter.acquire(FAST)
    assert limiter.db.used == 0
    assert limiter.acquire(FAST).waited == 0.0


def test_deadline_during_the_database_wait_gives_the_cpu_lane_back() -> None:
    limiter = gevent_limiter(capacity=1)
    limiter.acquire(FAST)  # holds the only database slot

    def with_deadline() -> None:
        with gevent.Timeout(0.01):  # e.g. a request-deadline middleware
            limiter.acquire(FAST, cpu=True)

    waiter = gevent.spawn(with_deadline)
    waiter.join(timeout=5)
    assert isinstance(waiter.exception, gevent.Timeout)
    assert (limiter.cpu.used, limiter.waiting()) == (0, 0)
    assert limiter.db.used == 1


def test_failing_yield_after_the_cpu_lane_gives_it_back() -> None:
    def failing_yield() -> None:
        raise Boom

    limiter = make(capacity=1, yield_to_loop=failing_yield)
    with pytest.raises(Boom):
        limiter.acquire(FAST, cpu=True)
    assert (limiter.cpu.used, limiter.db.used) == (0, 0)
    assert limiter.stats()["lanes"][CPU]["admitted"] == 0


def test_failing_heartbeat_on_release_still_frees_both_slots() -> None:
    clock = FakeClock()
    failing = False

    def heartbeat() -> None:
        if failing:
            raise Boom

    limiter = make(capacity=1, clock=clock, heartbeat=heartbeat)
    ticket = limiter.acquire(FAST, cpu=True)
    failing = True
    clock.now += 10
    with pytest.raises(Boom):
        limiter.release(ticket)
    assert (limiter.cpu.used, limiter.db.used) == (0, 0)


def test_slot_handed_over_while_a_timed_out_waiter_gives_up_is_not_lost() -> None:
    class TimesOut:
        def wait(self, timeout: float | None = None) -> bool:
            return False

        def set(self) -> None:
            pass

    limiter = make(capacity=1, config={"GUNITUNE_QUEUE_TIMEOUT": 5}, event_factory=TimesOut)
    holder = limiter.acquire(FAST)
    lock, me, entered = limiter._lock, threading.get_ident(), []

    class ReleaseJustBeforeTheLock:
        """Another thread releases right as the timed-out waiter goes to cancel its wait."""

        def __enter__(self) -> Any:
            if threading.get_ident() == me:
                entered.append(1)
                if len(entered) == 2:  # 1: enqueue, 2: give up
                    other = threading.Thread(target=limiter.release, args=(holder,))
                    other.start()
                    other.join()
            return lock.__enter__()

        def __exit__(self, *exc: object) -> Any:
            return lock.__exit__(*exc)

    limiter._lock = ReleaseJustBeforeTheLock()
    with pytest.raises(Rejected):
        limiter.acquire(FAST)
    assert limiter.db.used == 0, "the released slot went to a request that had left"


# --- a client that left ------------------------------------------------------------


def test_granted_request_whose_client_left_passes_the_slot_to_the_next() -> None:
    limiter = make(capacity=1)
    holder = limiter.acquire(FAST)
    gone = queued(limiter, FAST, route="/r", client_gone=lambda: True)
    still_there = queued(limiter, FAST, client_gone=lambda: False)
    limiter.release(holder)
    error = gone.outcome()
    assert isinstance(error, ClientGone)
    assert str(error) == "/r"
    assert isinstance(still_there.outcome(), Ticket)
    fast = limiter.stats()["lanes"][FAST]
    assert (fast["client_gone"], fast["admitted"], fast["in_use"]) == (1, 2, 1)


# --- shutdown -----------------------------------------------------------------------


def test_refuse_waiting_rejects_every_queued_request_and_every_later_one() -> None:
    limiter = make(capacity=1)
    holder = limiter.acquire(FAST, cpu=True)
    for_slot = queued(limiter, SLOW)
    for_cpu = queued(limiter, FAST, cpu=True)
    assert limiter.refuse_waiting() == 2
    for request in (for_slot, for_cpu):
        error = request.outcome()
        assert isinstance(error, Rejected)
        assert error.reason == SHUTTING_DOWN
    with pytest.raises(Rejected) as info:
        limiter.acquire(FAST)
    assert (info.value.reason, info.value.waited) == (SHUTTING_DOWN, 0.0)
    assert limiter.stats()["refusing"] is True
    limiter.release(holder)  # what runs still finishes
    assert (limiter.db.used, limiter.cpu.used) == (0, 0)
    assert limiter.acquire(EXEMPT).db is False  # health checks are still answered
    rejected = {lane: figures["rejected"] for lane, figures in limiter.stats()["lanes"].items()}
    assert rejected == {EXEMPT: 0, FAST: 1, SLOW: 1, CPU: 1}


# --- a route that changes lanes --------------------------------------------------------


def test_reroute_moves_the_route_waiters_out_of_other_lanes_only() -> None:
    limiter = make(capacity=1)
    limiter.acquire(FAST)
    in_fast = queued(limiter, FAST, route="/r")
    in_slow = queued(limiter, SLOW, route="/r")
    other = queued(limiter, FAST, route="/other")
    assert limiter.reroute("/r", SLOW, cpu=False) == 1
    assert isinstance(in_fast.outcome(), Moved)
    assert limiter.waiting() == 2
    assert in_slow.is_alive() and other.is_alive()
    limiter.refuse_waiting()
    assert isinstance(in_slow.outcome(), Rejected)
    assert isinstance(other.outcome(), Rejected)
    assert limiter.stats()["lanes"][FAST]["rejected"] == 1  # Moved is not a rejection


def test_reroute_takes_waiters_out_of_the_cpu_lane_once_the_route_is_not_cpu_bound() -> None:
    limiter = make(capacity=2)
    limiter.acquire(FAST, cpu=True)
    waiting = queued(limiter, FAST, cpu=True, route="/r")
    assert limiter.reroute("/r", FAST, cpu=True) == 0  # still CPU-bound: keeps its place
    assert limiter.reroute("/r", FAST, cpu=False) == 1
    assert isinstance(waiting.outcome(), Moved)
    assert limiter.db.used == 1  # it never held a database slot


def test_reroute_sends_database_waiters_of_a_route_turned_cpu_bound_to_the_cpu_lane() -> None:
    limiter = make(capacity=1)
    limiter.acquire(FAST)
    waiting = queued(limiter, FAST, route="/r")
    assert limiter.reroute("/r", FAST, cpu=True) == 1  # same database lane, but CPU-bound now
    assert isinstance(waiting.outcome(), Moved)


def test_a_failing_client_check_gives_the_handed_over_slot_back() -> None:
    limiter = make(capacity=1)
    holder = limiter.acquire(FAST)

    def broken_check() -> bool:
        raise RuntimeError("socket gone strange")

    waiting = queued(limiter, FAST, client_gone=broken_check)
    limiter.release(holder)
    assert isinstance(waiting.outcome(), RuntimeError)
    assert limiter.db.used == 0  # not leaked


# --- counters and stats ---------------------------------------------------------------


def test_admissions_count_under_the_cpu_lane_or_the_database_lane() -> None:
    limiter = make(capacity=5)
    for lane, cpu in ((FAST, False), (FAST, False), (SLOW, False), (EXEMPT, False)):
        limiter.release(limiter.acquire(lane, cpu=cpu))
    limiter.release(limiter.acquire(SLOW, cpu=True))
    admitted = {lane: figures["admitted"] for lane, figures in limiter.stats()["lanes"].items()}
    assert admitted == {EXEMPT: 1, FAST: 2, SLOW: 1, CPU: 1}


def test_stats_report_limits_slots_and_queues_per_lane() -> None:
    limiter = make(capacity=4, config={"GUNITUNE_CPU_CONCURRENCY": 2})
    limiter.acquire(SLOW, cpu=True)
    stats = limiter.stats()
    assert {k: v for k, v in stats.items() if k not in ("lanes", "adaptive")} == {
        "db_limit": 4,
        "db_in_use": 1,
        "db_capacity_source": "the app's default engine",
        "cpu_concurrency": 2,
        "queue_timeout": None,
        "refusing": False,
    }
    assert list(stats["lanes"]) == list(LANES)
    assert stats["lanes"][EXEMPT] == {"admitted": 0, "rejected": 0, "client_gone": 0}
    assert stats["lanes"][SLOW] == {
        "admitted": 0,
        "rejected": 0,
        "client_gone": 0,
        "in_use": 1,
        "guaranteed": 2,
        "waiting": 0,
        "limit": 4,
    }
    assert stats["adaptive"]["limit"] == 4
    assert stats["lanes"][CPU] == {
        "admitted": 1,
        "rejected": 0,
        "client_gone": 0,
        "in_use": 1,
        "guaranteed": 2,
        "waiting": 0,
        "limit": 2,
    }


def test_stats_include_the_gate_once_a_worker_sets_it() -> None:
    limiter = make()
    assert "gate" not in limiter.stats()
    limiter.gate_stats = lambda: {"held_requests": 7}
    assert limiter.stats()["gate"] == {"held_requests": 7}


def test_fast_share_setting_sets_the_fast_lane_guarantee() -> None:
    limiter = make(capacity=10, config={"GUNITUNE_FAST_SHARE": 0.5})
    assert (limiter.db.guaranteed(FAST), limiter.db.guaranteed(SLOW)) == (5, 5)


# --- the adaptive database limit ------------------------------------------------------


def test_learn_lowers_the_database_limit_on_drops_and_the_scheduler_follows() -> None:
    limiter = make(capacity=8)
    ticket = limiter.acquire(SLOW)
    limiter.learn(ticket, "/q", 0.01, dropped=True)
    limiter.release(ticket)
    assert limiter.db.limit == 6  # 8 x DROP_BACKOFF
    assert limiter.stats()["lanes"][SLOW]["limit"] == 6
    assert limiter.stats()["adaptive"]["drops"] == 1


def test_raised_limit_grants_queued_requests_at_once() -> None:
    limiter = make(capacity=4)
    held = limiter.acquire(SLOW)
    for _ in range(3):  # down to 1 slot: drops
        limiter.learn(held, "/q", 0.01, dropped=True)
    assert limiter.db.limit == 1
    waiting = queued(limiter, SLOW)
    # A good sample while the slot is saturated raises the limit by one: the
    # queued request gets the new slot without waiting for a release.
    limiter.learn(held, "/q", 0.01, dropped=False)
    assert limiter.db.limit == 2
    assert isinstance(waiting.outcome(), Ticket)
    limiter.release(held)


def test_adaptive_off_keeps_the_pool_as_the_limit() -> None:
    limiter = make(capacity=4, config={"GUNITUNE_ADAPTIVE": "off"})
    ticket = limiter.acquire(FAST)
    limiter.learn(ticket, "/q", 0.01, dropped=True)
    limiter.release(ticket)
    assert limiter.db.limit == 4
    assert limiter.stats()["adaptive"] is None


def test_requests_without_a_database_slot_teach_nothing() -> None:
    limiter = make(capacity=4)
    ticket = limiter.acquire(EXEMPT)
    limiter.learn(ticket, "/health", 0.0, dropped=True)
    assert limiter.db.limit == 4


def test_a_slot_given_back_unused_ends_an_expired_probe() -> None:
    clock = FakeClock()
    limiter = make(capacity=10, clock=clock)
    clock.now = 1.0  # just after a probe period's start: a first guess is probed at once
    tickets = [limiter.acquire(SLOW) for _ in range(10)]
    limiter.learn(tickets[0], "/q", 0.5, dropped=False)
    limiter.release(tickets[0])
    assert limiter.db.limit == 1  # probing
    assert limiter.adaptive is not None and limiter.adaptive.limit.probe is not None
    until = limiter.adaptive.limit.probe.until
    clock.now = until - 0.001
    limiter.release(tickets[1])  # this one never queried: no sample
    assert limiter.db.limit == 1
    clock.now = until
    limiter.release(tickets[2])
    assert limiter.db.limit == 10
    for ticket in tickets[3:]:
        limiter.release(ticket)
