"""The lanes scenarios' part of the report: a markdown table each, and their plot panels.

Called by :mod:`benchmarks.report` for the runs of ``mixed-io``, ``mixed-cpu``,
``burst`` and ``hello-wrk``; reads only ``result.json`` material, so
``python -m benchmarks.report <dir>`` redraws it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from benchmarks.configs import LANE_SCENARIOS
from benchmarks.report_format import fmt_rate, fmt_seconds, kinds, table

__all__ = ["MIXED_HEADER", "draw_panels", "lane_sections"]

MIXED_HEADER = (
    "| config | load | requests | valid 200 | failures | p50 | p99 | max | throughput/s"
    " | limit/s | ratio | WORKER TIMEOUT | completions per worker | max spread |"
)
BURST_HEADER = (
    "| config | requests | valid 200 | resets | other failures | connect p50 | connect p99"
    " | connect max | never connected | latency p99 | peak accept queue"
    " | listen queue overflows"
    " | peak RSS per worker | RSS per held connection |"
)
MIB = 1024 * 1024


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _mixed_rows(run: dict[str, Any]) -> list[list[str]]:
    f, server, spread = run["storm"], run.get("server", {}), run.get("per_worker", {})
    per_worker = ", ".join(str(n) for n in spread.get("completions", {}).values()) or "-"
    max_spread = spread.get("max_spread")
    rows = [[
        run["config"], f"storm {run.get('path', '')}".strip(), str(f["requests"]), str(f["valid"]),
        kinds(f.get("failure_kinds", {})), fmt_seconds(f["p50"]), fmt_seconds(f["p99"]),
        fmt_seconds(f["max"]), fmt_rate(f["throughput"]), fmt_rate(f["limit"]), _ratio(f["ratio"]),
        str(server.get("worker_timeouts", "-")), per_worker,
        "-" if max_spread is None else f"{max_spread:.0%}",
    ]]  # fmt: skip
    for path, p in run.get("probes", {}).items():
        rows.append([
            run["config"], f"probe {path}", str(p["requests"]), str(p["valid"]),
            kinds(p["failure_kinds"]), fmt_seconds(p["p50"]), fmt_seconds(p["p99"]),
            fmt_seconds(p["max"]), *["-"] * 6,
        ])  # fmt: skip
    return rows


def _mib(values: Sequence[float]) -> str:
    return ", ".join(f"{v / MIB:.0f}" for v in values) + " MiB" if values else "-"


def _burst_row(run: dict[str, Any]) -> list[str]:
    f, server = run["storm"], run.get("server", {})
    failures = dict(f.get("failure_kinds", {}))
    resets = failures.pop("reset", 0)
    workers = run.get("memory", {}).get("workers", {}).values()
    costs = [w["rss_per_connection"] for w in workers if w["rss_per_connection"] is not None]
    return [
        run["config"], str(f["requests"]), str(f["valid"]), str(resets), kinds(failures),
        fmt_seconds(f.get("connect_p50")), fmt_seconds(f.get("connect_p99")),
        fmt_seconds(f.get("connect_max")), str(f.get("never_connected", "-")),
        fmt_seconds(f["p99"]), str(server.get("peak_accept_queue", "-")),
        str(run.get("listen_overflows", {}).get("ListenOverflows", "-")),
        _mib([w["peak_rss"] for w in workers]),
        ", ".join(f"{c / 1024:.0f}" for c in costs) + " KiB" if costs else "-",
    ]  # fmt: skip


def _wrk_section(runs: list[dict[str, Any]]) -> list[str]:
    rounds = max((len(r.get("wrk_rounds", [])) for r in runs), default=0)
    header = (
        "| config | workers | "
        + "".join(f"round {i + 1} req/s | " for i in range(rounds))
        + "median req/s | median round p50 | p99 | socket errors / non-2xx |"
    )
    rows = []
    for run in runs:
        if run.get("skipped"):
            rows.append([run["config"], f"skipped: {run['skipped']}", *["-"] * (rounds + 4)])
            continue
        f = run["storm"]  # the median round
        problems = {**f["errors"], **f["invalid"]}
        rows.append([
            run["config"], str(run.get("workers", "-")),
            *(fmt_rate(r["requests_per_s"]) for r in run["wrk_rounds"]),
            fmt_rate(run["median_rps"]), fmt_seconds(f["p50"]), fmt_seconds(f["p99"]),
            kinds(problems),
        ])  # fmt: skip
    done = [r for r in runs if not r.get("skipped")]
    ratio = done[0].get("ratio_gunitune_to_hand_tuned") if done else None
    lines = table(header, rows)
    if ratio is not None:
        lines += ["", f"gunitune / hand-tuned, ratio of the median requests/s: **{ratio:.2f}**"]
    return lines


def _skipped(run: dict[str, Any], columns: int) -> list[str]:
    return [run["config"], f"skipped: {run['skipped']}", *["-"] * (columns - 2)]


def lane_sections(result: dict[str, Any]) -> list[str]:
    """A markdown section per lanes scenario that ran: heading, table, what it ran with."""
    lines: list[str] = []
    overrides = result.get("scenario_settings", {})
    for scen in LANE_SCENARIOS:
        runs = [r for r in result["runs"] if r["scenario"] == scen]
        if not runs:
            continue
        lines += ["", f"### {scen}", ""]
        if scen == "hello-wrk":
            lines += _wrk_section(runs)
        elif scen == "burst":
            cols = BURST_HEADER.count("|") - 1
            rows = [_skipped(r, cols) if r.get("skipped") else _burst_row(r) for r in runs]
            lines += table(BURST_HEADER, rows)
        else:
            cols = MIXED_HEADER.count("|") - 1
            rows = []
            for r in runs:
                rows += [_skipped(r, cols)] if r.get("skipped") else _mixed_rows(r)
            lines += table(MIXED_HEADER, rows)
        if scen in overrides:
            lines += ["", "Run with: " + ", ".join(f"{k}={v}" for k, v in overrides[scen].items())]
    return lines


def draw_panels(scen: str, runs: list[dict[str, Any]], top: Any, bottom: Any, styles: Any) -> None:
    """The bottom panel (and hello-wrk's top) of a lanes scenario's plot column.

    mixed-*: each probe's latency against the time it was sent, one colour per
    configuration (/health: circles, solid; /fast: crosses, dashed); burst: connect-time CDF;
    hello-wrk: requests/s of every round, in the order they ran.
    """
    for run in runs:
        style = styles.get(run["config"], {})
        colour = {"color": style.get("color")}
        if scen.startswith("mixed-"):
            for path, p in run.get("probes", {}).items():
                xs = [pt[0] for pt in p["series"]]
                ys = [pt[1] for pt in p["series"]]
                health = path == "/health"
                bottom.plot(xs, ys, marker="o" if health else "x", markersize=3, linewidth=0.8,
                            linestyle="-" if health else "--", **colour,
                            label=f"{run['config']} {path}")  # fmt: skip
        elif scen == "burst":
            cdf = run["storm"].get("connect_times", [])
            if cdf:
                ys = [(i + 1) / len(cdf) for i in range(len(cdf))]
                bottom.plot(cdf, ys, **style, label=run["config"])
        elif scen == "hello-wrk":
            rps = [r["requests_per_s"] for r in run.get("wrk_rounds", [])]
            top.plot(range(1, len(rps) + 1), rps, marker="o", **colour, label=run["config"])
    if scen.startswith("mixed-"):
        bottom.set(title=f"{scen}: probe latency while the storm runs", yscale="log",
                   xlabel="seconds since storm start (probe sent)",
                   ylabel="latency (s)")  # fmt: skip
    elif scen == "burst":
        bottom.set(title="burst: TCP connect time CDF", xlabel="connect time (s)",
                   ylabel="fraction of connected requests")  # fmt: skip
    elif scen == "hello-wrk":
        top.set(title="hello-wrk: wrk requests/s per round (alternating)", xlabel="round",
                ylabel="requests/s")  # fmt: skip
        rounds = max((len(r.get("wrk_rounds", [])) for r in runs), default=0)
        top.set_xticks(range(1, rounds + 1))
        bottom.set_axis_off()
