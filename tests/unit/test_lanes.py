"""LaneScheduler: FIFO hand-off per lane, guarantees, borrowing, moves, refusal, limits."""

from __future__ import annotations

import pytest

from gunitune.core.lanes import CPU, FAST, SLOW, LaneScheduler, Waiter, db_shares


def scheduler(limit: int, fast_share: float = 0.3) -> LaneScheduler:
    return LaneScheduler(limit, db_shares(fast_share))


def queue(lanes: LaneScheduler, lane: str, route: str = "/r") -> Waiter:
    """A request that found no free slot and queues (what the limiter does)."""
    assert lanes.try_acquire(lane) is False
    waiter = Waiter(lane, route)
    lanes.enqueue(waiter)
    return waiter


def test_free_slots_are_taken_at_once_up_to_the_limit() -> None:
    lanes = scheduler(2)
    assert lanes.try_acquire(FAST) is True
    assert lanes.try_acquire(SLOW) is True
    assert lanes.try_acquire(FAST) is False
    assert (lanes.used, lanes.in_use(FAST), lanes.in_use(SLOW)) == (2, 1, 1)


def test_waiters_of_one_lane_are_served_in_arrival_order() -> None:
    lanes = scheduler(1)
    assert lanes.try_acquire(FAST)
    first, second, third = (queue(lanes, FAST) for _ in range(3))
    assert lanes.release(FAST) is first
    assert lanes.release(FAST) is second
    assert lanes.release(FAST) is third
    assert lanes.release(FAST) is None
    assert lanes.used == 0


def test_released_slot_is_handed_to_the_waiter_so_a_newcomer_cannot_take_it() -> None:
    lanes = scheduler(1)
    assert lanes.try_acquire(FAST)
    waiter = queue(lanes, FAST)
    handed = lanes.release(FAST)
    assert handed is waiter
    assert waiter.granted is True
    assert lanes.in_use(FAST) == 1  # counted for the waiter before it even wakes
    assert lanes.try_acquire(FAST) is False  # the newcomer queues: no barging
    assert lanes.waiting() == 0


def test_lane_under_its_guarantee_is_served_before_earlier_waiters_of_a_lane_over_it() -> None:
    lanes = scheduler(4)  # fast guaranteed 1, slow 2
    for _ in range(4):
        assert lanes.try_acquire(SLOW)  # a slow storm borrows every slot
    slow_waiter = queue(lanes, SLOW)
    fast_waiter = queue(lanes, FAST)  # arrives later, but its lane holds nothing
    assert lanes.release(SLOW) is fast_waiter
    assert lanes.release(SLOW) is slow_waiter
    assert (lanes.in_use(FAST), lanes.in_use(SLOW)) == (1, 3)


def test_lane_under_its_guarantee_wins_over_an_earlier_waiter_of_a_borrowing_lane() -> None:
    lanes = scheduler(10)  # fast guaranteed 3, slow 7
    for _ in range(5):
        assert lanes.try_acquire(FAST)
    for _ in range(5):
        assert lanes.try_acquire(SLOW)
    fast_waiter = queue(lanes, FAST)
    slow_waiter = queue(lanes, SLOW)
    # Fast borrows (4 of its 3 after the release), slow holds 5 of its 7: slow first.
    assert lanes.release(FAST) is slow_waiter
    assert lanes.release(SLOW) is fast_waiter


def test_lanes_over_their_guarantee_go_by_the_smallest_part_of_their_share_used() -> None:
    lanes = LaneScheduler(10, {"a": 0.25, "b": 0.25, "c": 0.25})  # 2 guaranteed each
    for lane, held in (("a", 5), ("b", 3), ("c", 2)):
        for _ in range(held):
            assert lanes.try_acquire(lane)
    waiters = {lane: queue(lanes, lane) for lane in ("a", "b", "c")}
    # After the release: a 4 of 2, b 3 of 2, c 2 of 2: c uses the least of its share.
    assert lanes.release("a") is waiters["c"]
    # Now a, b and c all hold 3 of 2: a tie goes to the lane declared first.
    assert lanes.release("a") is waiters["a"]
    assert lanes.release("a") is waiters["b"]


def test_a_storm_in_one_lane_borrows_every_slot_the_other_leaves_unused() -> None:
    lanes = scheduler(10)
    assert all(lanes.try_acquire(SLOW) for _ in range(10))
    assert lanes.in_use(SLOW) == 10 > lanes.guaranteed(SLOW)
    # Nothing is kept idle for the fast lane: a fast request queues, first in line.
    fast_waiter = queue(lanes, FAST)
    queue(lanes, SLOW)
    assert lanes.release(SLOW) is fast_waiter


@pytest.mark.parametrize(
    ("limit", "fast", "slow"),
    [(1, 1, 1), (2, 1, 1), (4, 1, 2), (10, 3, 7), (100, 30, 70)],
)
def test_guarantee_is_the_floor_of_the_share_but_at_least_one(
    limit: int, fast: int, slow: int
) -> None:
    lanes = scheduler(limit)
    assert (lanes.guaranteed(FAST), lanes.guaranteed(SLOW)) == (fast, slow)


def test_cancelled_waiter_leaves_its_queue() -> None:
    lanes = scheduler(1)
    assert lanes.try_acquire(FAST)
    gave_up = queue(lanes, FAST)
    stays = queue(lanes, FAST)
    lanes.cancel(gave_up)
    assert lanes.waiting(FAST) == 1
    assert lanes.release(FAST) is stays


def test_cancel_after_the_grant_keeps_the_slot_counted() -> None:
    lanes = scheduler(1)
    assert lanes.try_acquire(FAST)
    waiter = queue(lanes, FAST)
    lanes.release(FAST)
    lanes.cancel(waiter)  # whoever ends the wait must give the slot back itself
    assert lanes.in_use(FAST) == 1


def test_take_route_takes_its_waiters_from_other_lanes_in_arrival_order() -> None:
    lanes = scheduler(1)
    assert lanes.try_acquire(FAST)
    a1 = queue(lanes, FAST, "/a")
    b1 = queue(lanes, FAST, "/b")
    a2 = queue(lanes, SLOW, "/a")
    a3 = queue(lanes, FAST, "/a")
    assert lanes.take_route("/a") == [a1, a2, a3]
    assert (lanes.waiting(FAST), lanes.waiting(SLOW)) == (1, 0)
    assert lanes.release(FAST) is b1


def test_take_route_leaves_the_waiters_already_in_the_kept_lane() -> None:
    lanes = scheduler(1)
    assert lanes.try_acquire(FAST)
    in_fast = queue(lanes, FAST, "/a")
    in_slow = queue(lanes, SLOW, "/a")
    assert lanes.take_route("/a", keep=SLOW) == [in_fast]
    assert lanes.waiting(SLOW) == 1
    assert lanes.release(FAST) is in_slow
    assert lanes.take_route("/unknown") == []


def test_refuse_all_empties_every_queue_and_marks_the_waiters() -> None:
    lanes = scheduler(1)
    assert lanes.try_acquire(FAST)
    waiters = [queue(lanes, FAST), queue(lanes, SLOW), queue(lanes, FAST)]
    refused = lanes.refuse_all()
    assert sorted(refused, key=lambda w: w.seq) == waiters
    assert all(w.refused and not w.granted for w in waiters)
    assert lanes.waiting() == 0
    assert lanes.used == 1  # running requests keep their slot
    assert lanes.release(FAST) is None


def test_growing_the_limit_grants_the_waiters_it_makes_room_for() -> None:
    lanes = scheduler(1)
    assert lanes.try_acquire(FAST)
    first, second, third = (queue(lanes, FAST) for _ in range(3))
    assert lanes.set_limit(3) == [first, second]
    assert first.granted and second.granted and not third.granted
    assert (lanes.used, lanes.waiting()) == (3, 1)


def test_shrinking_the_limit_drops_released_slots_until_under_it() -> None:
    lanes = scheduler(3)
    for _ in range(3):
        assert lanes.try_acquire(FAST)
    waiter = queue(lanes, FAST)
    assert lanes.set_limit(1) == []
    assert lanes.release(FAST) is None  # 2 left in use, limit 1: this slot is gone
    assert lanes.release(FAST) is None
    assert lanes.release(FAST) is waiter


def test_snapshot_per_lane() -> None:
    lanes = scheduler(4)
    assert lanes.try_acquire(SLOW)
    assert lanes.snapshot() == {
        FAST: {"in_use": 0, "guaranteed": 1, "waiting": 0},
        SLOW: {"in_use": 1, "guaranteed": 2, "waiting": 0},
    }
    assert lanes.lanes == (FAST, SLOW)


def test_single_lane_scheduler_is_a_fifo_semaphore() -> None:
    cpu = LaneScheduler(1, {CPU: 1.0})
    assert cpu.try_acquire(CPU)
    first, second = queue(cpu, CPU), queue(cpu, CPU)
    assert cpu.release(CPU) is first
    assert cpu.release(CPU) is second


@pytest.mark.parametrize(
    ("limit", "shares", "message"),
    [
        (0, {FAST: 1.0}, "limit=0 is invalid: expected an integer >= 1"),
        (1, {}, "shares is empty"),
        (1, {FAST: 0.0}, "share of lane 'fast'=0.0 is invalid: expected 0 < share <= 1"),
        (1, {SLOW: 1.5}, "share of lane 'slow'=1.5 is invalid"),
    ],
)
def test_bad_construction_names_the_value(
    limit: int, shares: dict[str, float], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        LaneScheduler(limit, shares)


def test_set_limit_below_one_is_refused_and_keeps_the_limit() -> None:
    lanes = scheduler(2)
    with pytest.raises(ValueError, match="limit=0 is invalid"):
        lanes.set_limit(0)
    assert lanes.limit == 2


def test_db_shares_split_the_pool_between_fast_and_slow() -> None:
    assert db_shares(0.3) == {FAST: 0.3, SLOW: pytest.approx(0.7)}


@pytest.mark.parametrize("share", [0.0, 1.0, -0.1, 1.5])
def test_db_shares_refuse_a_share_outside_zero_one(share: float) -> None:
    with pytest.raises(ValueError, match=rf"fast_share={share!r} is invalid"):
        db_shares(share)


def test_a_preferred_lane_is_served_first_whatever_its_share() -> None:
    """A probe's lane: at limit 1 the fast lane would otherwise take every turn."""
    scheduler = LaneScheduler(1, db_shares(0.3))
    assert scheduler.try_acquire(FAST)
    slow, fast = Waiter(SLOW, "/report"), Waiter(FAST, "/q")
    scheduler.enqueue(slow)
    scheduler.enqueue(fast)
    scheduler.preferred = SLOW
    assert scheduler.release(FAST) is slow
    scheduler.preferred = None
    assert scheduler.release(SLOW) is fast
