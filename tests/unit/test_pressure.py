"""Unit tests of the pure pressure monitor, driven with a hand-held clock."""

from __future__ import annotations

import pytest

from gunitune.core.errors import ConfigError
from gunitune.core.pressure import (
    PoolSnapshot,
    PressureMonitor,
    PressureState,
    Transition,
    WaitWindow,
)

OK = PressureState.OK
PRESSURED = PressureState.PRESSURED
SATURATED = PressureState.SATURATED
SHEDDING = PressureState.SHEDDING

# capacity 3 = pool_size 2 + max_overflow 1
IDLE = PoolSnapshot(capacity=3, pool_size=2, checked_out=0, overflow_in_use=0, waiters=0)
BUSY = PoolSnapshot(capacity=3, pool_size=2, checked_out=2, overflow_in_use=0, waiters=0)
OVERFLOW = PoolSnapshot(capacity=3, pool_size=2, checked_out=3, overflow_in_use=1, waiters=0)
QUEUED = PoolSnapshot(capacity=3, pool_size=2, checked_out=1, overflow_in_use=0, waiters=2)
FULL = PoolSnapshot(capacity=3, pool_size=2, checked_out=3, overflow_in_use=1, waiters=4)


def monitor(**kw: float) -> PressureMonitor:
    kw.setdefault("min_event_interval", 1.0)
    kw.setdefault("calm_seconds", 2.0)
    return PressureMonitor(**kw)


def states(t: Transition | None) -> tuple[PressureState, PressureState] | None:
    return None if t is None else (t.from_state, t.to_state)


# --- classification -------------------------------------------------------


@pytest.mark.parametrize(
    ("snap", "expected"),
    [
        (IDLE, OK),
        (BUSY, OK),
        (OVERFLOW, PRESSURED),
        (QUEUED, PRESSURED),
        (FULL, SATURATED),
        # Full but nobody waiting: busy, not saturated.
        (PoolSnapshot(3, 2, 3, 1, 0), PRESSURED),
        # Unknown capacity (0) is never saturated.
        (PoolSnapshot(0, 0, 50, 0, 3), PRESSURED),
    ],
)
def test_classify(snap: PoolSnapshot, expected: PressureState) -> None:
    assert monitor().classify(snap, now=0.0) is expected


def test_recent_shed_classifies_shedding_until_calm() -> None:
    m = monitor()
    m.record_shed(now=10.0)
    assert m.classify(IDLE, now=11.9) is SHEDDING
    assert m.classify(IDLE, now=12.0) is OK


def test_severity_order_is_declaration_order() -> None:
    assert [s.severity for s in (OK, PRESSURED, SATURATED, SHEDDING)] == [0, 1, 2, 3]
    assert OK.value == "ok" and SHEDDING == "shedding"


def test_snapshot_rejects_negative_counts() -> None:
    with pytest.raises(ValueError, match="waiters"):
        PoolSnapshot(3, 2, 0, 0, -1)


# --- escalation and rate limiting -----------------------------------------


def test_escalation_is_reported_at_once() -> None:
    m = monitor()
    assert m.observe(IDLE, now=0.0) is None
    t = m.observe(FULL, now=0.1)
    assert states(t) == (OK, SATURATED)
    assert t is not None and t.is_escalation
    assert (t.checked_out, t.capacity, t.overflow_in_use, t.waiters) == (3, 3, 1, 4)
    assert m.state is SATURATED


def test_escalations_are_rate_limited_and_latest_state_wins() -> None:
    m = monitor(min_event_interval=1.0)
    assert states(m.observe(QUEUED, now=0.0)) == (OK, PRESSURED)
    assert m.observe(FULL, now=0.5) is None  # suppressed: too soon
    assert m.state is PRESSURED
    m.record_shed(now=0.8)
    assert m.observe(FULL, now=0.9) is None  # still too soon
    # Interval over: one event straight to the latest state.
    assert states(m.observe(FULL, now=1.0)) == (PRESSURED, SHEDDING)


def test_suppressed_escalation_that_subsides_is_not_reported_late() -> None:
    m = monitor(min_event_interval=1.0)
    m.observe(QUEUED, now=0.0)
    assert m.observe(FULL, now=0.3) is None
    assert m.observe(QUEUED, now=1.2) is None  # back to PRESSURED: nothing to say
    assert m.stats(now=1.2)["transitions"] == 1


# --- hysteresis and de-escalation -----------------------------------------


def test_deescalation_waits_for_calm_seconds() -> None:
    m = monitor(calm_seconds=2.0)
    m.observe(FULL, now=0.0)
    assert m.observe(IDLE, now=5.0) is None  # calm starts here
    assert m.observe(IDLE, now=6.9) is None
    t = m.observe(IDLE, now=7.0)
    assert states(t) == (SATURATED, OK)
    assert t is not None and not t.is_escalation


def test_flapping_below_calm_seconds_produces_no_events() -> None:
    m = monitor(min_event_interval=0.0, calm_seconds=2.0)
    assert states(m.observe(QUEUED, now=0.0)) == (OK, PRESSURED)
    for i in range(1, 40):
        snap = IDLE if i % 2 else QUEUED
        assert m.observe(snap, now=i * 0.5) is None
    assert m.state is PRESSURED


def test_return_to_ok_without_new_traffic() -> None:
    """A periodic timer re-observing the same idle snapshot ends the storm."""
    m = monitor(calm_seconds=2.0)
    m.observe(FULL, now=0.0)
    for _ in range(3):
        m.record_shed(now=0.5)
    assert states(m.observe(FULL, now=1.5)) == (SATURATED, SHEDDING)
    # Traffic stops: the timer sees the same idle snapshot over and over.
    ticks = [m.observe(IDLE, now=2.0 + i * 0.25) for i in range(20)]
    reported = [(states(t), t.at) for t in ticks if t is not None]
    # No shed since 0.5 -> leave SHEDDING at 2.5; the pool has been idle only
    # since 2.0, so OK is reported once that has held 2 s, at 4.0.
    assert reported == [((SHEDDING, SATURATED), 2.5), ((SATURATED, OK), 4.0)]
    assert m.state is OK
    assert m.observe(IDLE, now=60.0) is None  # and it stays quiet


def test_leaving_shedding_is_timed_from_last_shed() -> None:
    m = monitor(min_event_interval=0.0, calm_seconds=2.0)
    m.observe(IDLE, now=0.0)
    m.record_shed(now=1.0)
    assert states(m.observe(IDLE, now=1.0)) == (OK, SHEDDING)
    assert m.observe(IDLE, now=2.9) is None
    # Not 2 s of "shed recently" plus 2 s more of calm.
    assert states(m.observe(IDLE, now=3.0)) == (SHEDDING, OK)


def test_deescalation_steps_through_levels_that_held() -> None:
    m = monitor(min_event_interval=0.0, calm_seconds=2.0)
    m.observe(FULL, now=0.0)
    m.observe(QUEUED, now=1.0)  # below SATURATED from here
    assert states(m.observe(QUEUED, now=3.0)) == (SATURATED, PRESSURED)
    m.observe(IDLE, now=3.5)
    assert m.observe(IDLE, now=5.4) is None
    assert states(m.observe(IDLE, now=5.5)) == (PRESSURED, OK)


def test_deescalation_is_also_rate_limited() -> None:
    m = monitor(min_event_interval=5.0, calm_seconds=1.0)
    m.observe(QUEUED, now=0.0)
    m.observe(IDLE, now=0.5)
    assert m.observe(IDLE, now=2.0) is None  # calm held, but interval not over
    assert states(m.observe(IDLE, now=5.0)) == (PRESSURED, OK)


def test_transition_carries_window_numbers() -> None:
    m = monitor()
    for value in (0.01, 0.02, 0.03, 0.04, 1.0):
        m.record_wait(value, now=0.0)
    m.record_connect(now=0.0)
    m.record_connect(now=0.0)
    m.record_invalidate(now=0.0)
    m.record_shed(now=0.0)
    t = m.observe(FULL, now=0.0)
    assert t is not None
    assert t.wait_p50 == pytest.approx(0.03)
    assert t.wait_p99 == pytest.approx(0.04 + 0.96 * 0.96)
    assert (t.sheds_in_window, t.connections_opened, t.invalidated) == (1, 2, 1)


# --- wait window -----------------------------------------------------------


def test_percentiles_interpolate_linearly() -> None:
    w = WaitWindow(10.0)
    for value in (1.0, 2.0, 3.0, 4.0):
        w.add(value, now=0.0)
    assert w.percentile(0, now=0.0) == 1.0
    assert w.percentile(100, now=0.0) == 4.0
    assert w.percentile(50, now=0.0) == pytest.approx(2.5)
    assert w.percentile(90, now=0.0) == pytest.approx(3.7)
    assert w.count(now=0.0) == 4


def test_percentiles_match_hand_computed_ranks() -> None:
    w = WaitWindow(10.0)
    for value in (0.5, 0.1, 0.4, 0.2, 0.3):
        w.add(value, now=0.0)
    # rank = q/100 * 4 over 0.1..0.5, then a straight line between neighbours.
    got = [w.percentile(q, now=0.0) for q in (0, 10, 25, 62, 99, 100)]
    assert got == pytest.approx([0.1, 0.14, 0.2, 0.348, 0.496, 0.5])


def test_percentile_of_one_wait_is_that_wait_at_every_q() -> None:
    w = WaitWindow(10.0)
    w.add(0.25, now=0.0)
    assert [w.percentile(q, now=0.0) for q in (0, 1, 50, 99, 100)] == [0.25] * 5
    with pytest.raises(ValueError, match="whole number"):
        w.percentile(99.5, now=0.0)  # type: ignore[arg-type]


def test_percentile_of_empty_window_is_zero_and_q_is_checked() -> None:
    w = WaitWindow(10.0)
    assert w.percentile(99, now=0.0) == 0.0
    with pytest.raises(ValueError):
        w.percentile(101, now=0.0)


def test_window_expires_old_samples() -> None:
    w = WaitWindow(10.0)
    w.add(5.0, now=0.0)
    w.add(1.0, now=6.0)
    assert w.count(now=9.9) == 2
    assert w.count(now=10.0) == 1
    assert w.percentile(50, now=10.0) == 1.0
    assert w.count(now=16.0) == 0


def test_window_memory_is_bounded() -> None:
    w = WaitWindow(10.0, max_samples=100)
    for i in range(1000):
        w.add(float(i), now=0.0)
    assert w.count(now=0.0) == 100
    assert w.percentile(0, now=0.0) == 900.0  # the oldest went first


def test_negative_wait_counts_as_zero() -> None:
    w = WaitWindow(1.0)
    w.add(-0.5, now=0.0)
    assert w.percentile(50, now=0.0) == 0.0


def test_sheds_in_window_expire_but_total_does_not() -> None:
    m = monitor(window_seconds=10.0)
    for i in range(5):
        m.record_shed(now=float(i))
    assert m.stats(now=4.0)["sheds_in_window"] == 5
    assert m.stats(now=12.0)["sheds_in_window"] == 2
    stats = m.stats(now=30.0)
    assert (stats["sheds_in_window"], stats["sheds_total"]) == (0, 5)


# --- stats and config --------------------------------------------------------


def test_stats_keys_and_values() -> None:
    m = monitor()
    m.record_wait(0.2, now=0.0)
    m.record_connect(now=0.0)
    m.observe(OVERFLOW, now=0.0)
    stats = m.stats(now=0.0)
    assert set(stats) == {
        "state",
        "checked_out",
        "capacity",
        "pool_size",
        "overflow_in_use",
        "waiters",
        "wait_p50_ms",
        "wait_p99_ms",
        "waits_in_window",
        "sheds_total",
        "sheds_in_window",
        "connections_opened",
        "connections_invalidated",
        "transitions",
    }
    assert stats["state"] == "pressured"
    assert (stats["checked_out"], stats["capacity"], stats["pool_size"]) == (3, 3, 2)
    assert stats["wait_p50_ms"] == pytest.approx(200.0)
    assert (stats["waits_in_window"], stats["connections_opened"], stats["transitions"]) == (
        1,
        1,
        1,
    )


@pytest.mark.parametrize(
    "kw",
    [{"window_seconds": 0.0}, {"min_event_interval": -1.0}, {"calm_seconds": -0.1}],
)
def test_bad_settings_raise_config_error(kw: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        PressureMonitor(**kw)
