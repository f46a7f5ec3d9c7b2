"""Limit algorithms: the adaptive accept window, route classification, Retry-After."""

from __future__ import annotations

import math

import pytest

from gunitune.core.limits import AcceptWindow, RouteProfiles, retry_after_seconds

# --- AcceptWindow -------------------------------------------------------------


def test_window_starts_at_capacity() -> None:
    window = AcceptWindow(capacity=15, floor=1, cpu_budget=3.0)
    assert window.window == 15
    assert window.target() == 15
    assert window.samples == 0


@pytest.mark.parametrize(
    ("cpu", "expected"),
    [
        (0.5, 6),  # floor(3.0 / 0.5)
        (1.0, 3),
        (0.7, 4),  # floor(4.28)
        (0.25, 12),
        (2.9, 1),
    ],
)
def test_cpu_heavy_sample_shrinks_to_budget_over_cpu(cpu: float, expected: int) -> None:
    window = AcceptWindow(capacity=15, floor=1, cpu_budget=3.0)
    assert window.on_sample(cpu, wall_seconds=cpu * 2) == expected
    assert window.window == expected
    assert window.window == math.floor(3.0 / cpu)


def test_window_never_below_floor() -> None:
    window = AcceptWindow(capacity=15, floor=2, cpu_budget=3.0)
    assert window.on_sample(10.0, 10.0) == 2  # floor(0.3) = 0, held at the floor
    for _ in range(20):
        window.on_sample(100.0, 100.0)
    assert window.window == 2


def test_window_never_above_capacity() -> None:
    window = AcceptWindow(capacity=15, floor=1, cpu_budget=3.0)
    assert window.on_sample(0.001, 0.5) == 15  # 3000 affordable, capped
    assert window.on_sample(0.0, 0.5) == 15


def test_zero_or_negative_cpu_keeps_the_window_open() -> None:
    window = AcceptWindow(capacity=15, cpu_budget=3.0)
    assert window.on_sample(-1.0, 0.1) == 15
    assert window.cpu_per_request == 0.0


def test_wall_time_does_not_move_the_window() -> None:
    a = AcceptWindow(capacity=15, cpu_budget=3.0)
    b = AcceptWindow(capacity=15, cpu_budget=3.0)
    assert a.on_sample(0.5, 0.5) == b.on_sample(0.5, 30.0)


def test_ewma_smoothing() -> None:
    window = AcceptWindow(capacity=100, floor=1, cpu_budget=3.0, smoothing=0.3)
    window.on_sample(0.1, 0.1)
    assert window.cpu_per_request == pytest.approx(0.1)  # first sample taken as is
    window.on_sample(1.0, 1.0)
    assert window.cpu_per_request == pytest.approx(0.1 + 0.3 * (1.0 - 0.1))
    assert window.window == math.floor(3.0 / 0.37)
    assert window.samples == 2


def test_one_slow_request_does_not_close_the_window() -> None:
    window = AcceptWindow(capacity=50, floor=1, cpu_budget=3.0, smoothing=0.3)
    for _ in range(10):
        window.on_sample(0.01, 0.2)
    assert window.window == 50
    window.on_sample(3.0, 3.0)  # alone, this would give floor(3/3) = 1
    assert window.window > 1
    assert window.window == math.floor(3.0 / (0.01 + 0.3 * (3.0 - 0.01)))


def test_window_reopens_when_work_turns_io_bound() -> None:
    window = AcceptWindow(capacity=15, floor=1, cpu_budget=3.0, smoothing=0.3)
    window.on_sample(1.0, 1.0)
    assert window.window == 3
    seen = [window.on_sample(0.0, 0.5) for _ in range(30)]
    assert seen == sorted(seen)  # opens monotonically
    assert seen[-1] == 15


def test_floor_above_capacity_is_clamped() -> None:
    window = AcceptWindow(capacity=2, floor=5)
    assert window.floor == 2
    assert window.on_sample(100.0, 100.0) == 2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"capacity": 0}, "capacity=0 is invalid"),
        ({"capacity": 3, "floor": 0}, "floor=0 is invalid"),
        ({"capacity": 3, "cpu_budget": 0.0}, "cpu_budget=0.0 is invalid"),
        ({"capacity": 3, "cpu_budget": float("nan")}, "cpu_budget=nan is invalid"),
    ],
)
def test_invalid_construction(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AcceptWindow(**kwargs)  # type: ignore[arg-type]


def test_resize_follows_new_capacity() -> None:
    window = AcceptWindow(capacity=15, floor=1, cpu_budget=3.0)
    assert window.resize(30) == 30  # no samples yet: fully open
    window.on_sample(0.5, 0.5)
    assert window.window == 6
    assert window.resize(4) == 4  # the CPU estimate allows 6, the new ceiling 4
    assert window.resize(40) == 6  # back to what the CPU estimate allows
    assert window.capacity == 40


def test_resize_below_floor_lowers_the_floor() -> None:
    window = AcceptWindow(capacity=10, floor=3, cpu_budget=3.0)
    window.on_sample(100.0, 100.0)
    assert window.window == 3
    assert window.resize(2) == 2
    assert window.floor == 2


def test_resize_rejects_zero() -> None:
    window = AcceptWindow(capacity=10)
    with pytest.raises(ValueError, match="capacity=0 is invalid"):
        window.resize(0)
    assert window.capacity == 10


def test_resize_down_then_up_restores_floor() -> None:
    window = AcceptWindow(capacity=10, floor=3, cpu_budget=3.0)
    window.on_sample(100.0, 100.0)
    window.resize(2)
    assert window.resize(10) == 3


# --- RouteProfiles ------------------------------------------------------------


def test_unknown_route_is_not_cpu_bound() -> None:
    profiles = RouteProfiles()
    assert profiles.is_cpu_bound("/never-seen") is False
    assert profiles.snapshot() == {}


def test_classification_threshold_is_strict() -> None:
    profiles = RouteProfiles(threshold=0.5, min_cpu_seconds=0.02)
    profiles.add("/half", cpu_seconds=0.5, wall_seconds=1.0)
    profiles.add("/more", cpu_seconds=0.51, wall_seconds=1.0)
    profiles.add("/io", cpu_seconds=0.01, wall_seconds=1.0)
    assert profiles.is_cpu_bound("/half") is False
    assert profiles.is_cpu_bound("/more") is True
    assert profiles.is_cpu_bound("/io") is False


def test_custom_threshold() -> None:
    profiles = RouteProfiles(threshold=0.2)
    profiles.add("/r", cpu_seconds=0.3, wall_seconds=1.0)
    assert profiles.is_cpu_bound("/r") is True
    strict = RouteProfiles(threshold=0.9)
    strict.add("/r", cpu_seconds=0.3, wall_seconds=1.0)
    assert strict.is_cpu_bound("/r") is False


def test_short_requests_are_never_cpu_bound() -> None:
    profiles = RouteProfiles(threshold=0.5, min_cpu_seconds=0.02)
    profiles.add("/tiny", cpu_seconds=0.019, wall_seconds=0.02)  # 95% CPU, but 19 ms
    profiles.add("/edge", cpu_seconds=0.02, wall_seconds=0.021)
    assert profiles.routes["/tiny"].cpu_ratio > 0.9
    assert profiles.is_cpu_bound("/tiny") is False
    assert profiles.is_cpu_bound("/edge") is True


def test_ratio_is_capped_and_zero_wall_is_zero() -> None:
    profiles = RouteProfiles()
    assert profiles.add("/over", cpu_seconds=2.0, wall_seconds=1.0).cpu_ratio == 1.0
    assert profiles.add("/instant", cpu_seconds=0.5, wall_seconds=0.0).cpu_ratio == 0.0
    assert profiles.is_cpu_bound("/instant") is False


def test_profile_smoothing_keeps_class_through_one_outlier() -> None:
    profiles = RouteProfiles(threshold=0.5, smoothing=0.3)
    for _ in range(5):
        profiles.add("/cpu", cpu_seconds=0.9, wall_seconds=1.0)
    profile = profiles.add("/cpu", cpu_seconds=0.0, wall_seconds=1.0)
    assert profile.cpu_ratio == pytest.approx(0.9 * 0.7)
    assert profile.samples == 6
    assert profiles.is_cpu_bound("/cpu") is True


def test_snapshot() -> None:
    profiles = RouteProfiles()
    profiles.add("/cpu", cpu_seconds=0.08, wall_seconds=0.1)
    assert profiles.snapshot() == {
        "/cpu": {
            "cpu_ratio": 0.8,
            "cpu_ms": 80.0,
            "wall_ms": 100.0,
            "samples": 1,
            "cpu_bound": True,
        }
    }


# --- retry_after_seconds ------------------------------------------------------


@pytest.mark.parametrize(
    ("waiting", "capacity", "per_request", "expected"),
    [
        (10, 5, 2.0, 4),  # 2 rounds of 2 s
        (3, 2, 1.0, 2),  # 1.5 s rounded up
        (0, 5, 2.0, 1),  # clamped to low
        (1, 100, 0.01, 1),
        (1000, 1, 1.0, 60),  # clamped to high
        (5, 1, -3.0, 1),  # negative latency counts as 0
    ],
)
def test_retry_after(waiting: int, capacity: int, per_request: float, expected: int) -> None:
    assert retry_after_seconds(waiting, capacity, per_request) == expected


def test_retry_after_custom_bounds() -> None:
    assert retry_after_seconds(0, 5, 1.0, low=5, high=10) == 5
    assert retry_after_seconds(100, 1, 1.0, low=5, high=10) == 10
    assert retry_after_seconds(7, 1, 1.0, low=5, high=10) == 7


@pytest.mark.parametrize("capacity", [0, -1])
def test_retry_after_without_capacity_is_high(capacity: int) -> None:
    assert retry_after_seconds(0, capacity, 1.0) == 60
    assert retry_after_seconds(0, capacity, 1.0, high=30) == 30
