"""The Grafana dashboard's queries: about gunitune's real metric names, and the mini
PromQL that draws them (benchmarks/promql_lite.py) on fixed scrapes."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from benchmarks.promql_lite import Scrape, evaluate, legend
from gunitune.flask_ext import GuniTune
from tests.unit.test_flask_ext import Made, made, make_app

__all__ = ["made"]  # the fixture, used by name

DASHBOARD = Path(__file__).resolve().parents[2] / "docs" / "grafana-dashboard.json"


def exprs() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [t["expr"] for p in panels for t in p["targets"]]


def test_every_dashboard_query_names_a_metric_gunitune_exports(
    tmp_path: Path, made: Made
) -> None:
    app, db = make_app(tmp_path, made, {"GUNITUNE_METRICS_PATH": "/metrics"})
    GuniTune(app, db)
    client = app.test_client()
    client.get("/io")
    text = client.get("/metrics").text
    exported = set(re.findall(r"^(gunitune_\w+)", text, re.M))
    used = {name for e in exprs() for name in re.findall(r"\bgunitune_\w+", e)}
    assert used and used <= exported, used - exported
    panels = json.loads(DASHBOARD.read_text())["panels"]
    assert len(panels) == 6


@pytest.mark.parametrize("expr", exprs())
def test_promql_lite_evaluates_every_dashboard_query(expr: str) -> None:
    evaluate(expr, [], 2.0)  # raises on what it does not support


def scrapes(*points: tuple[float, list[tuple[str, dict[str, str], float]]]) -> list[Scrape]:
    return list(points)


def test_rate_sum_by_and_counter_reset() -> None:
    s = scrapes(
        (0.0, [("req_total", {"lane": "fast", "route": "/a"}, 0.0),
               ("req_total", {"lane": "fast", "route": "/b"}, 10.0)]),
        (1.0, [("req_total", {"lane": "fast", "route": "/a"}, 4.0),
               ("req_total", {"lane": "fast", "route": "/b"}, 12.0)]),
        (2.0, [("req_total", {"lane": "fast", "route": "/a"}, 2.0),  # restarted: 2 more
               ("req_total", {"lane": "fast", "route": "/b"}, 14.0)]),
    )  # fmt: skip
    out = evaluate("sum by (lane) (rate(req_total[$__rate_interval]))", s, 2.0)
    assert out == {(("lane", "fast"),): {1.0: 6.0, 2.0: (4 + 2 + 4) / 2}}
    assert evaluate("sum(req_total)", s, 2.0) == {(): {0.0: 10.0, 1.0: 16.0, 2.0: 16.0}}


def test_histogram_quantile_interpolates_like_prometheus() -> None:
    counts = (("0.1", 50.0), ("1.0", 90.0), ("+Inf", 100.0))
    buckets = [("w_bucket", {"le": le}, c) for le, c in counts]
    zeros = [(n, lab, 0.0) for n, lab, _ in buckets]
    s = scrapes((0.0, zeros), (1.0, buckets))
    q = "histogram_quantile(0.5, sum by (le) (rate(w_bucket[2s])))"
    assert evaluate(q, s, 2.0)[()][1.0] == pytest.approx(0.1)
    p70 = evaluate(q.replace("0.5", "0.7"), s, 2.0)[()][1.0]
    assert p70 == pytest.approx(0.1 + 0.9 * (70 - 50) / 40)
    p99 = evaluate(q.replace("0.5", "0.99"), s, 2.0)[()][1.0]
    assert p99 == pytest.approx(1.0)  # in +Inf: the highest finite bound
    empty = scrapes((0.0, zeros), (1.0, zeros))
    assert math.isnan(evaluate(q, empty, 2.0)[()][1.0])


def test_legend_substitutes_labels() -> None:
    assert legend("{{lane}} {{outcome}}", (("lane", "slow"), ("outcome", "shed"))) == "slow shed"
    assert legend("pid {{pid}}", ()) == "pid "


def test_unsupported_queries_are_refused() -> None:
    with pytest.raises(ValueError, match="unsupported"):
        evaluate("avg(x)", [], 2.0)
