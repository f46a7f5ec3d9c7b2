"""The pure parts of the metrics: labels, the CPU ratio, folding values."""

from __future__ import annotations

import pytest

from gunitune.core.metrics import QUEUE_WAIT_BUCKETS, cpu_ratio, outcome, sum_values


@pytest.mark.parametrize(
    ("status", "label"),
    [(200, "ok"), (204, "ok"), (302, "ok"), (404, "client_error"), (429, "client_error"),
     (500, "error"), (503, "error"), (0, "ok")],
)  # fmt: skip
def test_outcome_of_a_status(status: int, label: str) -> None:
    assert outcome(status) == label


def test_cpu_ratio_is_cpu_seconds_per_wall_second() -> None:
    assert cpu_ratio(10.0, 100.0, 10.5, 101.0) == 0.5
    assert cpu_ratio(10.0, 100.0, 12.0, 101.0) == 2.0  # threads: more than one core
    assert cpu_ratio(10.0, 100.0, 9.0, 101.0) == 0.0  # never negative
    assert cpu_ratio(10.0, 100.0, 11.0, 100.0) == 0.0  # no time passed: no ratio


def test_sum_values_adds_per_key_across_files() -> None:
    archive = [("a", 3.0), ("b", 1.0)]
    dead = [("b", 2.0), ("c", 5.0)]
    assert sum_values([archive, dead]) == {"a": 3.0, "b": 3.0, "c": 5.0}
    assert list(sum_values([archive, dead])) == ["a", "b", "c"]
    assert sum_values([]) == {}


def test_buckets_are_increasing_and_cover_long_queues() -> None:
    assert list(QUEUE_WAIT_BUCKETS) == sorted(set(QUEUE_WAIT_BUCKETS))
    assert QUEUE_WAIT_BUCKETS[0] <= 0.001 and QUEUE_WAIT_BUCKETS[-1] >= 30
