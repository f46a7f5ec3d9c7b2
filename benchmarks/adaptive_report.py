"""The adaptive scenarios' part of the report: their tables, checks and ``adaptive.png``.

Called by :mod:`benchmarks.report` for the runs of ``knee`` and ``switch``; reads
only ``result.json`` material and the server logs it names, so
``python -m benchmarks.report <dir>`` redraws it. The plot: :mod:`benchmarks.adaptive_plot`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from benchmarks import adaptive_figures as af
from benchmarks import adaptive_log as alog
from benchmarks.adaptive_plot import LANE_ORDER, plot_adaptive
from benchmarks.configs import ADAPTIVE_SCENARIOS
from benchmarks.report_format import fmt_rate, fmt_seconds, kinds, table

__all__ = ["KNEE_HEADER", "SWITCH_HEADER", "adaptive_sections", "plot_adaptive"]

KNEE_HEADER = (
    "| config | requests | valid 200 | failures | throughput/s | limit/s | ratio"
    " | active queries mean | p95 | max | /fast p50 | /fast p99 | /health p99"
    " | WORKER TIMEOUT | lane limits seen |"
)
SWITCH_HEADER = (
    "| config | phase | seconds | requests | valid 200 | steady/s | best/s | settle"
    " | WORKER TIMEOUT | /work lanes seen |"
)


def _num(value: float | None, digits: str = ".1f") -> str:
    return "-" if value is None else format(value, digits)


def _range(name: str, values: Iterable[Any]) -> list[str]:
    found = [v for v in values if v is not None]
    if not found:
        return []
    low, high = min(found), max(found)
    return [f"{name} {low}" if low == high else f"{name} {low}–{high}"]


def _limits_seen(run: dict[str, Any]) -> str:
    """``database 1–10 (log), cpu 1`` or, without log lines, ``fast 2–4, slow 3–10, cpu 1``
    over every stats sample; ``-`` without any."""
    workers = run.get("limits", {}).get("workers", {}).values()
    logged = alog.run_log_series(run)["limits"].values()
    parts = _range("database", (v for w in logged for v in w["value"]))
    if parts:
        parts[0] += " (log)"
    for lane in af.LIMIT_LANES if not parts else ("cpu",):
        parts += _range(lane, (v for w in workers for v in w[lane]))
    return ", ".join(parts) or "-"


def _lanes_seen(run: dict[str, Any]) -> str:
    """The lanes the route was in: from the log's ``route_lane`` lines, else the stats."""
    logged = alog.run_log_series(run)["lanes"].values()
    seen = {lane for w in logged for lane in w["value"]}
    if not seen:
        workers = run.get("limits", {}).get("workers", {}).values()
        seen = {lane for w in workers for lane in w["lane"]}
    return ", ".join(lane for lane in LANE_ORDER if lane in seen) or "-"


def _knee_row(run: dict[str, Any]) -> list[str]:
    f, a, probes = run["storm"], run["active_queries"], run.get("probes", {})
    fast, health = probes.get("/fast", {}), probes.get("/health", {})
    return [
        run["config"], str(f["requests"]), str(f["valid"]), kinds(f.get("failure_kinds", {})),
        fmt_rate(f["throughput"]), fmt_rate(f["limit"]), _num(f["ratio"], ".2f"),
        _num(a["mean"]), _num(a["p95"]), str(a["max"] if a["max"] is not None else "-"),
        fmt_seconds(fast.get("p50")), fmt_seconds(fast.get("p99")),
        fmt_seconds(health.get("p99")), str(run["server"]["worker_timeouts"]), _limits_seen(run),
    ]  # fmt: skip


def _switch_rows(run: dict[str, Any]) -> list[list[str]]:
    f, sw = run["storm"], run["switch"]
    pct = 100 * f["valid"] / f["requests"] if f["requests"] else 0.0
    rows = [[
        run["config"], "all", f"0–{sw['phases'][-1]['end']:g}" if sw["phases"] else "-",
        str(f["requests"]), f"{f['valid']} ({pct:.1f} %)", "-", "-", "-",
        str(run["server"]["worker_timeouts"]), _lanes_seen(run),
    ]]  # fmt: skip
    for ph in sw["phases"]:
        settle = "never" if ph["settle"] is None else fmt_seconds(ph["settle"])
        rows.append([
            run["config"], ph["kind"], f"{ph['start']:g}–{ph['end']:g}", str(ph["requests"]),
            str(ph["valid"]), _num(ph["steady"], "g"), fmt_rate(sw["best"].get(ph["kind"])),
            settle, "-", "-",
        ])  # fmt: skip
    return rows


def _check_lines(found: Iterable[dict[str, Any]], prefix: str = "") -> list[str]:
    lines = []
    for c in found:
        value = c["value"]
        shown = "-" if value is None else f"{value:.3g}"
        lines.append(f"* {'PASS' if c['pass'] else '**FAIL**'} {prefix}{c['check']}: {shown}")
    return lines


def _source_note(runs: Sequence[dict[str, Any]]) -> list[str]:
    sources: dict[str, int] = {}
    for run in runs:
        for key, n in run.get("limits", {}).get("sources", {}).items():
            sources[key] = sources.get(key, 0) + n
    events = sum(alog.run_log_series(run)["events"] for run in runs)
    if events:
        log = (
            f"Database limits per worker (table, adaptive.png): {events} `db_limit` lines "
            "of the server log, each worker logging a change at most once a second."
        )
    else:
        log = (
            "No `db_limit` lines in the server log (or no `load_wall_start`): limits per "
            "worker are the stats polls', which mostly reach the least loaded worker."
        )
    if not sources:
        return ["", log] if events else []
    if sources.get("fallback"):
        return ["", f"Lane limits: {sources['fallback']} of {sum(sources.values())} stats "
                "answers had no `limiter.lanes.<lane>.limit`; shown instead: `db_limit` "
                "(fast, slow) and `cpu_concurrency` (cpu).", "", log]  # fmt: skip
    return ["", f"Lane limits: `limiter.lanes.<lane>.limit`, {sources['lanes']} stats answers.",
            "", log]  # fmt: skip


def _drain_notes(runs: Sequence[dict[str, Any]]) -> list[str]:
    """The in-flight drain after each switch, and phases too short to show a steady level."""
    notes = []
    for run in runs:
        for ph in run["switch"]["phases"]:
            drain = ph.get("drain")
            if drain is None:
                continue
            short = drain > (ph["end"] - ph["start"]) / 2
            notes.append(
                f"* {run['config']}, {ph['kind']} from {ph['start']:g} s: the "
                f"{run['switch']['clients']} requests queued at the switch take "
                f"{fmt_seconds(drain)} to drain at the previous rate; served in order, a floor "
                "under the settle time"
                + (" (**over half the phase: its steady level is not one**)." if short else ".")
            )  # fmt: skip
    return ["", *notes] if notes else []


def adaptive_sections(result: dict[str, Any]) -> list[str]:
    """A markdown section per adaptive scenario that ran: table, checks, notes."""
    lines: list[str] = []
    found = af.checks(result)
    for scen in ADAPTIVE_SCENARIOS:
        runs = [r for r in result["runs"] if r["scenario"] == scen]
        if not runs:
            continue
        done = [r for r in runs if not r.get("skipped")]
        header = KNEE_HEADER if scen == "knee" else SWITCH_HEADER
        cols = header.count("|") - 1
        rows = [[r["config"], f"skipped: {r['skipped']}", *["-"] * (cols - 2)]
                for r in runs if r.get("skipped")]  # fmt: skip
        for r in done:
            rows += [_knee_row(r)] if scen == "knee" else _switch_rows(r)
        lines += ["", f"### {scen}", "", *table(header, rows)]
        if scen == "knee":
            q = result.get("knee_query")
            if q:
                lines += ["", f"One /dbcpu query alone ({q['rows']} rows): "
                          f"{fmt_seconds(q['seconds'])} (median of {q['n']}, "
                          f"{fmt_seconds(q['min'])} to {fmt_seconds(q['max'])}); "
                          "limit = CPUs / that."]  # fmt: skip
            checks = found.get("knee", [])
            lines += ["", "Targets, gunitune against hand-tuned:", "", *_check_lines(checks)]
            if not checks:
                lines.append("* needs a hand-tuned and a gunitune run")
        else:
            cal = result.get("switch_cpu")
            if cal:
                lines += ["", f"/work?kind=cpu loop {cal['cpu_loop']}, "
                          f"{fmt_seconds(cal['cpu_seconds_per_request'])} of CPU unloaded. "
                          "Steady = median valid completions per second over the phase's "
                          "second half; settle = seconds from the phase's start until the "
                          "rolling 1-s throughput stays within ±20 % of it; best = every DB "
                          "connection busy (io) or every CPU (cpu)."]  # fmt: skip
            lines += _drain_notes(done)
            lines += ["", "Targets:", ""]
            for config, checks in found.get("switch", {}).items():
                lines += _check_lines(checks, f"{config}: ")
        lines += _source_note(done)
    return lines
