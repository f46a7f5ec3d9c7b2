"""Figures, report and picture of :mod:`benchmarks.budget`.

* **valid**: status 200 with the expected body; everything else is counted by
  its status or client error.
* **throughput**: valid responses / (last finish - first start) of the storm.
* **peak connections**: the most client backends PostgreSQL had at once,
  polled in ``pg_stat_activity`` every 50 ms (the poller's own excluded).
"""

from __future__ import annotations

import statistics
from collections import Counter
from pathlib import Path
from typing import Any

from benchmarks.loadclient import RequestResult
from benchmarks.pg_watch import ConnectionWatch

__all__ = ["figures", "write_png", "write_report"]


def _pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def figures(config: str, results: list[RequestResult], watch: ConnectionWatch,
            t0: float) -> dict[str, Any]:  # fmt: skip
    """One configuration's row."""
    valid = [r for r in results if r.status == 200 and r.body_ok]
    failed = Counter(r.error or str(r.status) for r in results if not (r.status == 200
                                                                        and r.body_ok))
    span = max((r.finished for r in results), default=t0) - min(
        (r.started for r in results), default=t0)
    finished = [r.finished - t0 for r in valid]
    latencies = [r.finished - r.started for r in valid]
    return {
        "config": config,
        "requests": len(results),
        "valid": len(valid),
        "failed": dict(failed),
        "throughput": round(len(valid) / span, 2) if span > 0 else 0.0,
        "p50": round(statistics.median(latencies), 2) if latencies else None,
        "p99": round(_pct(latencies, 0.99), 2) if latencies else None,
        "peak_connections": watch.peak,
        "peak_tagged": watch.peak_tagged,
        "connections": [(round(t - t0, 2), n) for t, n in watch.series],
        "finished": sorted(round(f, 3) for f in finished),
    }


def write_report(path: Path, rows: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    """Markdown: one table per scenario, gunitune's throughput against hand-tuned's."""
    lines = [f"# Budget benchmark ({meta['cpus']} CPUs, driver {meta['driver']},"
             f" {meta['when']})", ""]  # fmt: skip
    for scenario in dict.fromkeys(r["scenario"] for r in rows):
        group = [r for r in rows if r["scenario"] == scenario]
        base = next((r for r in group if r["config"] == "hand-tuned"), None)
        lines += [f"## {scenario}", "",
                  "| config | valid | failed | throughput | vs hand-tuned | p50 / p99 |"
                  " peak connections (budget) |",
                  "|---|---|---|---|---|---|---|"]  # fmt: skip
        for r in group:
            ratio = (f"{r['throughput'] / base['throughput']:.2f}x"
                     if base and base["throughput"] else "-")  # fmt: skip
            failed = ", ".join(f"{n} {k}" for k, n in r["failed"].items()) or "0"
            lines.append(
                f"| {r['config']} | {r['valid']} / {r['requests']} | {failed} |"
                f" {r['throughput']:.1f}/s | {ratio} | {r['p50']} s / {r['p99']} s |"
                f" {r['peak_connections']} ({r['budget']}) |"
            )
        for r in group:
            if r.get("pgbouncer"):
                lines += ["", f"PgBouncer ({r['config']}): " + "; ".join(r["pgbouncer"])]
        lines.append("")
    path.write_text("\n".join(lines))


def write_png(path: Path, rows: list[dict[str, Any]]) -> None:
    """Per scenario: valid completions per second, and PostgreSQL's connections."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers and in CI
    import matplotlib.pyplot as plt

    scenarios = list(dict.fromkeys(r["scenario"] for r in rows))
    fig, axes = plt.subplots(2, len(scenarios), figsize=(6 * len(scenarios), 6), squeeze=False)
    for col, scenario in enumerate(scenarios):
        top, bottom = axes[0][col], axes[1][col]
        for r in (r for r in rows if r["scenario"] == scenario):
            per_second = Counter(int(f) for f in r["finished"])
            xs = list(range(max(per_second, default=0) + 1))
            top.plot(xs, [per_second.get(x, 0) for x in xs], label=r["config"])
            if r["connections"]:
                ts, ns = zip(*r["connections"], strict=True)
                bottom.plot(ts, ns, label=r["config"])
        budget = next(r["budget"] for r in rows if r["scenario"] == scenario)
        bottom.axhline(budget, color="red", linestyle="--", label="max_connections - reserved")
        top.set_title(f"{scenario}: valid responses per second")
        bottom.set_title(f"{scenario}: PostgreSQL client connections")
        bottom.set_xlabel("seconds since the storm started")
        top.legend()
        bottom.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
