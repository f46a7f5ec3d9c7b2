"""Route profiles (what a worker learns, which lane a route takes) and Retry-After."""

from __future__ import annotations

import math

import pytest

from gunitune.core.lanes import CPU, EXEMPT, FAST, SLOW
from gunitune.core.limits import (
    DECAY_SECONDS,
    NO_DB_STREAK,
    SAMPLE_INTERVAL,
    SCOUT_SECONDS,
    WARMUP_SAMPLES,
    RouteProfiles,
    retry_after_seconds,
)

# --- RouteProfiles: sampling ----------------------------------------------------


def test_unknown_route_gets_a_fresh_fast_profile() -> None:
    profiles = RouteProfiles()
    assert profiles.snapshot() == {}
    profile = profiles.get("/never-seen")
    assert (profile.lane, profile.db_lane, profile.samples, profile.seen) == (FAST, FAST, 0, 0)
    assert profiles.get("/never-seen") is profile


def test_every_request_is_measured_while_warming_up_then_one_per_interval() -> None:
    profiles = RouteProfiles()
    profile = profiles.get("/r")
    for _ in range(WARMUP_SAMPLES):
        assert profiles.should_measure(profile, 0.0) is True
        profiles.add("/r", 0.001, 0.01, used_db=True)
    # 100 requests a second for 2 s: one measured per interval.
    later = [profiles.should_measure(profile, i / 100) for i in range(1, 201)]
    # About ten a second (a sample falls due between two requests, not on one).
    assert 2 / SAMPLE_INTERVAL - 2 <= later.count(True) <= 2 / SAMPLE_INTERVAL, later.count(True)
    assert profile.seen == WARMUP_SAMPLES + 200


def test_requests_not_measured_yet_keep_being_measured_past_the_warmup_count() -> None:
    profiles = RouteProfiles()
    profile = profiles.get("/r")
    # Many requests arrive before any finishes: all of them are measured.
    assert all(profiles.should_measure(profile, 0.0) for _ in range(3 * WARMUP_SAMPLES))


# --- RouteProfiles: lanes of a new route -----------------------------------------


def test_first_request_of_a_new_route_is_fast_and_later_ones_slow_until_measured() -> None:
    profiles = RouteProfiles()
    profile = profiles.get("/new")
    profiles.should_measure(profile, 0.0)
    assert profiles.lanes_for(profile) == (FAST, False)
    profiles.should_measure(profile, 0.0)  # arrives while the first one still runs
    assert profiles.lanes_for(profile) == (SLOW, False)
    profiles.add("/new", 0.001, 0.01, used_db=True)  # the first one finished: fast
    profiles.should_measure(profile, 0.0)
    assert profiles.lanes_for(profile) == (FAST, False)


# --- RouteProfiles: classification --------------------------------------------


@pytest.mark.parametrize(
    ("wall", "lane"), [(0.01, FAST), (0.1, FAST), (0.100001, SLOW), (2.0, SLOW)]
)
def test_database_route_is_fast_up_to_fast_seconds(wall: float, lane: str) -> None:
    profiles = RouteProfiles(fast_seconds=0.1)
    assert profiles.add("/db", 0.0, wall, used_db=True) == lane
    assert profiles.lanes_for(profiles.get("/db")) == (lane, False)


def test_fast_seconds_setting_moves_the_boundary() -> None:
    profiles = RouteProfiles(fast_seconds=1.0)
    assert profiles.add("/db", 0.0, 0.5, used_db=True) == FAST


def test_route_without_database_becomes_exempt_after_a_streak() -> None:
    profiles = RouteProfiles()
    for _ in range(NO_DB_STREAK - 1):
        assert profiles.add("/health", 0.0, 0.001, used_db=False) == FAST
    assert profiles.add("/health", 0.0, 0.001, used_db=False) == EXEMPT
    assert profiles.lanes_for(profiles.get("/health")) == (EXEMPT, False)


def test_one_database_request_breaks_the_no_database_streak() -> None:
    profiles = RouteProfiles()
    for used_db in (False, False, True, False, False):
        lane = profiles.add("/cached", 0.0, 0.001, used_db=used_db)
    assert lane == FAST
    assert profiles.add("/cached", 0.0, 0.001, used_db=False) == EXEMPT


def test_exempt_route_that_checks_out_a_connection_goes_back_to_a_database_lane() -> None:
    profiles = RouteProfiles(fast_seconds=0.1)
    for _ in range(NO_DB_STREAK):
        profiles.add("/mostly-cached", 0.0, 0.5, used_db=False)
    assert profiles.get("/mostly-cached").lane == EXEMPT
    assert profiles.saw_database("/mostly-cached") == SLOW
    assert profiles.lanes_for(profiles.get("/mostly-cached")) == (SLOW, False)


def test_saw_database_on_a_route_never_measured_keeps_it_fast() -> None:
    profiles = RouteProfiles()
    assert profiles.saw_database("/new") == FAST


def test_cpu_threshold_is_strict() -> None:
    profiles = RouteProfiles(threshold=0.5, min_cpu_seconds=0.02)
    assert profiles.add("/half", 0.5, 1.0, used_db=True) == SLOW
    assert profiles.add("/more", 0.51, 1.0, used_db=True) == CPU
    assert profiles.add("/io", 0.01, 1.0, used_db=True) == SLOW


def test_custom_cpu_threshold() -> None:
    assert RouteProfiles(threshold=0.2).add("/r", 0.3, 1.0, used_db=True) == CPU
    assert RouteProfiles(threshold=0.9).add("/r", 0.3, 1.0, used_db=True) == SLOW


def test_short_requests_are_never_cpu_bound() -> None:
    profiles = RouteProfiles(threshold=0.5, min_cpu_seconds=0.02)
    assert profiles.add("/tiny", 0.019, 0.02, used_db=True) == FAST  # 95 % CPU, but 19 ms
    assert profiles.routes["/tiny"].cpu_ratio > 0.9
    assert profiles.add("/edge", 0.02, 0.021, used_db=True) == CPU


def test_cpu_bound_route_keeps_its_database_lane_for_after_the_cpu_lane() -> None:
    profiles = RouteProfiles(threshold=0.5, fast_seconds=0.1)
    profiles.add("/report", 0.4, 0.5, used_db=True)
    profile = profiles.get("/report")
    assert (profile.lane, profile.db_lane) == (CPU, SLOW)
    assert profiles.lanes_for(profile) == (SLOW, True)


def test_cpu_bound_route_without_database_takes_only_the_cpu_lane() -> None:
    profiles = RouteProfiles(threshold=0.5)
    for _ in range(NO_DB_STREAK):
        profiles.add("/render", 0.09, 0.1, used_db=False)
    profile = profiles.get("/render")
    assert (profile.lane, profile.db_lane) == (CPU, EXEMPT)
    assert profiles.lanes_for(profile) == (EXEMPT, True)


def test_ratio_is_capped_at_one_and_zero_wall_counts_as_no_cpu() -> None:
    profiles = RouteProfiles()
    profiles.add("/over", 2.0, 1.0, used_db=True)
    assert profiles.routes["/over"].cpu_ratio == 1.0
    assert profiles.add("/instant", 0.5, 0.0, used_db=True) == FAST
    assert profiles.routes["/instant"].cpu_ratio == 0.0


def test_smoothing_keeps_the_lane_through_one_outlier() -> None:
    profiles = RouteProfiles(threshold=0.5, smoothing=0.3)
    for _ in range(5):
        profiles.add("/cpu", 0.9, 1.0, used_db=True)
    assert profiles.add("/cpu", 0.0, 1.0, used_db=True) == CPU
    profile = profiles.get("/cpu")
    assert profile.cpu_ratio == pytest.approx(0.9 * 0.7)
    assert profile.cpu_seconds == pytest.approx(0.9 * 0.7)
    assert profile.samples == 6


def test_lane_follows_a_route_that_turns_io_bound() -> None:
    profiles = RouteProfiles(threshold=0.5, smoothing=0.3)
    profiles.add("/r", 0.9, 1.0, used_db=True)
    lanes = [profiles.add("/r", 0.0, 0.02, used_db=True) for _ in range(10)]
    assert lanes[0] == CPU
    assert lanes[-1] == FAST


def test_frequent_samples_weigh_the_smoothing_factor_each() -> None:
    profiles = RouteProfiles(smoothing=0.3)
    profiles.add("/r", 0.0, 1.0, used_db=True, now=100.0)
    profiles.add("/r", 0.0, 0.0, used_db=True, now=100.01)
    assert profiles.get("/r").wall_seconds == pytest.approx(0.7)


def test_a_sample_after_a_pause_weighs_by_the_time_elapsed() -> None:
    profiles = RouteProfiles(smoothing=0.3)
    profiles.add("/r", 0.0, 1.0, used_db=True, now=100.0)
    profiles.add("/r", 0.0, 0.0, used_db=True, now=100.0 + DECAY_SECONDS)
    assert profiles.get("/r").wall_seconds == pytest.approx(math.exp(-1))


@pytest.mark.parametrize("factor", [10.0, 0.1])
def test_a_rarely_sampled_route_whose_cost_changes_tenfold_changes_lane_within_seconds(
    factor: float,
) -> None:
    """A sample every 3 s with a small smoothing: only the time decay moves it in time."""
    profiles = RouteProfiles(fast_seconds=0.1, smoothing=0.05)
    before, after = (0.03, 0.3) if factor > 1 else (0.3, 0.03)
    now = 0.0
    for _ in range(20):
        now += 3.0
        profiles.add("/r", 0.0, before, used_db=True, now=now)
    first_lane = profiles.get("/r").lane
    switched = now
    while profiles.get("/r").lane == first_lane:
        now += 3.0
        profiles.add("/r", 0.0, after, used_db=True, now=now)
        assert now - switched <= 10, "still in its old lane 10 s after the change"


def test_a_route_enters_the_fast_lane_at_half_the_bound_it_leaves_it_at() -> None:
    profiles = RouteProfiles(fast_seconds=0.1, smoothing=1.0)
    assert profiles.add("/r", 0.0, 0.09, used_db=True) == FAST
    assert profiles.add("/r", 0.0, 0.11, used_db=True) == SLOW
    assert profiles.add("/r", 0.0, 0.09, used_db=True) == SLOW  # not back yet
    assert profiles.add("/r", 0.0, 0.05, used_db=True) == FAST


def test_a_slow_route_scouts_one_request_at_a_time_while_warming_up() -> None:
    profiles = RouteProfiles(fast_seconds=0.1)
    profiles.add("/r", 0.0, 0.5, used_db=True, now=0.0)
    profile = profiles.get("/r")
    assert profile.lane == SLOW
    assert profiles.take_scout(profile, 0.1)
    assert not profiles.take_scout(profile, 0.2)  # one in flight already
    profiles.scout_done(profile)
    assert profiles.take_scout(profile, 0.3)


def test_a_warm_slow_route_scouts_every_scout_seconds() -> None:
    profiles = RouteProfiles(fast_seconds=0.1)
    for i in range(WARMUP_SAMPLES):
        profiles.add("/r", 0.0, 0.5, used_db=True, now=float(i))
    profile = profiles.get("/r")
    assert profiles.take_scout(profile, 10.0)
    profiles.scout_done(profile)
    assert not profiles.take_scout(profile, 10.0 + SCOUT_SECONDS / 2)
    assert profiles.take_scout(profile, 10.0 + SCOUT_SECONDS)


@pytest.mark.parametrize("wall", [0.05, 0.5])
def test_fast_cpu_and_exempt_routes_never_scout(wall: float) -> None:
    profiles = RouteProfiles(fast_seconds=0.1)
    profiles.add("/fast", 0.0, 0.01, used_db=True)
    profiles.add("/cpu", wall * 0.9, wall, used_db=True)
    for _ in range(NO_DB_STREAK):
        profiles.add("/nodb", 0.0, 0.5, used_db=False)
    for route in ("/fast", "/cpu", "/nodb"):
        assert not profiles.take_scout(profiles.get(route), 100.0), route


def test_snapshot_reports_lane_measurements_and_counts() -> None:
    profiles = RouteProfiles()
    profile = profiles.get("/cpu")
    profiles.should_measure(profile, 0.0)
    profiles.add("/cpu", 0.08, 0.1, used_db=True)
    assert profiles.snapshot() == {
        "/cpu": {
            "lane": CPU,
            "cpu_ratio": 0.8,
            "cpu_ms": 80.0,
            "wall_ms": 100.0,
            "samples": 1,
            "requests": 1,
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
