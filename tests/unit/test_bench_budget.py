"""The budget benchmark's figures and report, on fixed inputs."""

from __future__ import annotations

from pathlib import Path

from benchmarks.budget_report import figures, write_report
from benchmarks.loadclient import RequestResult
from benchmarks.pg_watch import ConnectionWatch


def _result(i: int, ok: bool, started: float, finished: float) -> RequestResult:
    return RequestResult(i, "/io", status=200 if ok else 500, body_ok=ok,
                         started=started, finished=finished)  # fmt: skip


def _watch(peak: int) -> ConnectionWatch:
    watch = ConnectionWatch(connect=None)
    watch.peak, watch.peak_tagged, watch.series = peak, peak, [(10.5, peak)]
    return watch


def test_figures_count_valid_throughput_and_peak() -> None:
    results = [_result(i, i != 3, 10.0, 10.0 + 0.5 * (i + 1)) for i in range(4)]
    row = figures("gunitune", results, _watch(27), t0=10.0)
    assert (row["valid"], row["requests"], row["failed"]) == (3, 4, {"500": 1})
    assert row["throughput"] == 1.5  # 3 valid over the storm's 2 s
    assert row["peak_connections"] == 27 and row["connections"] == [(0.5, 27)]
    assert row["finished"] == [0.5, 1.0, 1.5]


def test_report_compares_with_hand_tuned(tmp_path: Path) -> None:
    base = {"scenario": "budget", "requests": 2, "failed": {}, "p50": 1, "p99": 2, "budget": 97}
    rows = [
        {**base, "config": "hand-tuned", "valid": 2, "throughput": 80.0, "peak_connections": 45},
        {**base, "config": "gunitune", "valid": 2, "throughput": 150.0, "peak_connections": 81},
    ]
    write_report(tmp_path / "r.md", rows, {"cpus": 2, "driver": "psycopg2", "when": "now"})
    text = (tmp_path / "r.md").read_text()
    assert "| gunitune | 2 / 2 | 0 | 150.0/s | 1.88x | 1 s / 2 s | 81 (97) |" in text
