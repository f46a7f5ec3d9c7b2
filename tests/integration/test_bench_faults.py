"""``python -m benchmarks.faults --quick --fault proxy`` end to end: the harness runs every
scenario and writes its report, whatever gunitune does (targets: tests/integration/test_faults.py).

About a minute on 2 cores; it starts (and stops) its own PostgreSQL cluster.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import psutil
import pytest

from benchmarks import faults
from benchmarks.fault_figures import OUTCOMES

pytestmark = pytest.mark.integration


def test_quick_fault_benchmark_reports_every_scenario(tmp_path: Path) -> None:
    children_before = {p.pid for p in psutil.Process().children(recursive=True)}
    out = tmp_path / "faults"
    options = faults.parse_args(["--quick", "--fault", "proxy", "--out", str(out)])
    result = faults.run_benchmark(options, quiet=True)

    runs = result["scenarios"]
    assert list(runs) == ["restart", "cold", "blackhole", "reload"]
    for name, run in runs.items():
        assert not str(run.get("error", "")).startswith("harness"), (name, run.get("traceback"))
        assert run["targets"] and all(t["result"] in ("pass", "FAIL") for t in run["targets"])
    for name in ("restart", "blackhole", "reload"):
        run = runs[name]
        if "error" in run:  # the server did not start: said so, with its reason
            assert run["error"].startswith(("master exited rc=", "not ready after")), run
            continue
        storm = run["storm"]
        assert storm["requests"] == 200 and sum(storm[k] for k in OUTCOMES) == 200
        assert len(run["timeline"]) == 200 and run["probes"]["/fast"]["requests"] > 10
        assert run["server"]["workers_before"], run["server"]
    restart, blackhole = runs["restart"], runs["blackhole"]
    if "events" in restart:  # the fault really happened, on schedule
        assert 1.4 < restart["events"]["down"] < restart["events"]["back"]
    if "events" in blackhole:
        assert blackhole["events"]["back"] - blackhole["events"]["drop"] == pytest.approx(4, 0.1)
        assert blackhole["probes"]["/health"]["requests"] > 10
    cold = runs["cold"]
    assert cold["master_started"] or cold["start_error"].startswith(
        ("master exited rc=", "not ready after")
    ), cold

    saved = json.loads((out / "result.json").read_text())
    assert saved["scenarios"].keys() == runs.keys()
    report = (out / "report.md").read_text()
    for name in runs:
        assert f"### {name}" in report
    assert report.count("| target (issue 10) | wanted | measured | result |") == 4
    assert (out / "faults.png").read_bytes().startswith(b"\x89PNG")
    # Nothing left behind: no server, no cluster, no proxy thread.
    children_after = {p.pid for p in psutil.Process().children(recursive=True)}
    assert children_after <= children_before, children_after - children_before
    assert not [t for t in threading.enumerate() if t.name.startswith("fault-proxy")]
