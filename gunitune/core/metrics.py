"""Pure parts of the Prometheus metrics: label values, buckets, the CPU ratio, and
the arithmetic of folding a dead worker's counters into an archive.

prometheus_client's multiprocess mode keeps one file per metric type and pid
(``counter_<pid>.db``, ``gauge_livesum_<pid>.db``...). A dead worker's gauge
files are dropped (``mark_process_dead``) but its counter and histogram files
must stay, or the totals would fall. With ``max_requests`` recycling they pile
up and every scrape reads them all, so the master folds them into one archive
file per type: values under the same key add up (a multiprocess histogram
stores per-bucket counts, not cumulative ones, so they add up too).
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = [
    "ARCHIVE",
    "ARCHIVED_TYPES",
    "CLIENT_GONE",
    "DB_UNAVAILABLE",
    "OUTCOMES",
    "QUEUE_TIMEOUT",
    "QUEUE_WAIT_BUCKETS",
    "SHED",
    "SHED_REASONS",
    "SHUTTING_DOWN",
    "cpu_ratio",
    "outcome",
    "sum_values",
]

OK, CLIENT_ERROR, ERROR, SHED, CLIENT_GONE = "ok", "client_error", "error", "shed", "client_gone"
OUTCOMES = (OK, CLIENT_ERROR, ERROR, SHED, CLIENT_GONE)
QUEUE_TIMEOUT, SHUTTING_DOWN = "queue_timeout", "shutting_down"
DB_UNAVAILABLE = "db_unavailable"  # the database is away: waited out, or the query was cut
SHED_REASONS = (QUEUE_TIMEOUT, SHUTTING_DOWN, DB_UNAVAILABLE)
# Seconds: from a loop turn (1 ms) to a long queue; the default
# GUNITUNE_QUEUE_TIMEOUT is off, so waits of tens of seconds are possible.
QUEUE_WAIT_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)
# The pid part of the archive files' names: never a pid, so never a live worker's file.
ARCHIVE = "archive"
ARCHIVED_TYPES = ("counter", "histogram", "summary")


def outcome(status: int) -> str:
    """The ``outcome`` label of a response the app produced (not one gunitune shed)."""
    if status >= 500:
        return ERROR
    if status >= 400:
        return CLIENT_ERROR
    return OK


def cpu_ratio(cpu_before: float, wall_before: float, cpu_now: float, wall_now: float) -> float:
    """CPU seconds per wall second between two readings (1.0: one core busy all along)."""
    wall = wall_now - wall_before
    if wall <= 0:
        return 0.0
    return max(0.0, cpu_now - cpu_before) / wall


def sum_values(files: Iterable[Iterable[tuple[str, float]]]) -> dict[str, float]:
    """Per key, the sum of the values of every file (keys in first-seen order)."""
    total: dict[str, float] = {}
    for values in files:
        for key, value in values:
            total[key] = total.get(key, 0.0) + value
    return total
