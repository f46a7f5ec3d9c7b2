"""``python -m benchmarks.storm --quick`` end to end: it must tell the configurations apart.

Runs in process against the session PostgreSQL (DATABASE_URL given, so the
benchmark starts no cluster of its own); about a minute on 2 cores.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from benchmarks import storm
from benchmarks.postgres import PostgresCluster

pytestmark = pytest.mark.integration


def _failed(run: dict[str, Any]) -> bool:
    f = run["storm"]
    return bool(f["valid"] < f["requests"] or run["server"]["worker_timeouts"] > 0)


def test_quick_storm_tells_configurations_apart(postgres: PostgresCluster, tmp_path: Path) -> None:
    out = tmp_path / "results"
    options = storm.parse_args(["--quick", "--scenario", "io,cpu", "--out", str(out)])
    result = storm.run_benchmark(options, environ={"DATABASE_URL": postgres.app_url}, quiet=True)

    assert result["database"]["own_cluster"] is False
    runs = {(r["config"], r["scenario"]): r for r in result["runs"]}
    assert set(runs) == {(c, s) for c in ("stock", "hand-tuned", "gunitune") for s in ("io", "cpu")}
    skipped = {k: r["skipped"] for k, r in runs.items() if r.get("skipped")}
    assert not skipped, skipped
    summary = {k: (r["storm"]["valid"], r["storm"]["invalid"], r["storm"]["errors"],
                   r["server"]) for k, r in runs.items()}  # fmt: skip

    # Stock breaks for real reasons in at least one scenario (QueuePool timeouts on
    # /io, resets or worker kills on /cpu).
    assert any(_failed(runs["stock", s]) for s in ("io", "cpu")), summary
    # gunitune answers every request, correctly, without a worker being killed.
    for scenario in ("io", "cpu"):
        run = runs["gunitune", scenario]
        f = run["storm"]
        assert f["valid"] == f["requests"] == 300, summary
        assert (f["invalid"], f["errors"], f["status_503"]) == ({}, {}, 0), summary
        assert run["server"]["worker_timeouts"] == 0, summary
        assert run["server"]["queuepool_errors"] == 0, summary
        assert f["ratio"] is not None and f["ratio"] > 0

    # Every figure lands in the three output files.
    assert (out / "result.json").is_file()
    assert (out / "storm.png").read_bytes().startswith(b"\x89PNG")
    report = (out / "report.md").read_text()
    assert "| gunitune | cpu | 300 | 300 |" in report


def test_quick_mixed_io_reports_probe_figures(postgres: PostgresCluster, tmp_path: Path) -> None:
    """The lanes scenario end to end (~20 s): figures present, not their values, which
    depend on the library under test."""
    out = tmp_path / "lanes"
    argv = ["--quick", "--scenario", "mixed-io", "--requests", "150", "--out", str(out)]
    result = storm.run_benchmark(
        storm.parse_args(argv), environ={"DATABASE_URL": postgres.app_url}, quiet=True
    )

    runs = {r["config"]: r for r in result["runs"]}
    # Without --only the lanes scenarios compare hand-tuned with gunitune.
    assert set(runs) == {"hand-tuned", "gunitune"}
    for run in runs.values():
        assert not run.get("skipped"), run
        f = run["storm"]
        assert f["requests"] == 150 and f["limit"] > 0 and f["ratio"] is not None
        assert "failure_kinds" in f and f["connected"] + f["never_connected"] == 150
        assert set(run["probes"]) == {"/health", "/fast"}
        for probe in run["probes"].values():
            assert probe["requests"] >= 1
            assert {"failures", "failure_kinds", "p50", "p99", "max", "series"} <= set(probe)
        # Every worker the server ran is in the per-worker completions.
        assert len(run["per_worker"]["completions"]) >= run["workers"]
    report = (out / "report.md").read_text()
    assert "### mixed-io" in report and "| gunitune | probe /health |" in report
    assert (out / "storm.png").read_bytes().startswith(b"\x89PNG")


def test_adaptive_scenarios_report_limits(postgres: PostgresCluster, tmp_path: Path) -> None:
    """knee and switch end to end, small (~1 min): figures present, not their values,
    which depend on the library under test."""
    out = tmp_path / "adaptive"
    argv = ["--scenario", "knee,switch", "--requests", "100", "--switch-seconds", "3",
            "--switch-clients", "40", "--deadline", "60", "--out", str(out)]  # fmt: skip
    result = storm.run_benchmark(
        storm.parse_args(argv), environ={"DATABASE_URL": postgres.app_url}, quiet=True
    )

    runs = {(r["config"], r["scenario"]): r for r in result["runs"]}
    # Without --only they compare hand-tuned with gunitune, like the lanes scenarios.
    assert set(runs) == {(c, s) for c in ("hand-tuned", "gunitune") for s in ("knee", "switch")}
    for (config, scenario), run in runs.items():
        assert not run.get("skipped"), run
        if scenario == "knee":
            assert run["storm"]["requests"] == 100
            assert run["active_queries"]["samples"] > 0
            assert set(run["probes"]) == {"/health", "/fast"}
        else:
            assert [p["kind"] for p in run["switch"]["phases"]] == ["io", "cpu", "io"]
            assert run["switch"]["per_second"] and run["storm"]["requests"] > 0
        # Only gunitune has a stats view: its limits per worker, every lane's.
        assert ("limits" in run) == (config == "gunitune")
        for worker in run.get("limits", {}).get("workers", {}).values():
            assert set(worker) == {"t", "fast", "slow", "cpu", "lane"}
            assert all(v is not None for lane in ("fast", "slow", "cpu") for v in worker[lane])
    switch_limits = runs["gunitune", "switch"]["limits"]["workers"].values()
    assert {lane for w in switch_limits for lane in w["lane"]} - {None}  # /work's lane
    assert len(result["adaptive_checks"]["knee"]) == 3
    report = (out / "report.md").read_text()
    assert "### knee" in report and "### switch" in report
    assert (out / "adaptive.png").read_bytes().startswith(b"\x89PNG")
