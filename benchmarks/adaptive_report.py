"""The adaptive scenarios' part of the report: their tables, checks and ``adaptive.png``.

Called by :mod:`benchmarks.report` for the runs of ``knee`` and ``switch``; reads
only ``result.json`` material, so ``python -m benchmarks.report <dir>`` redraws it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from benchmarks import adaptive_figures as af
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
LANE_ORDER = ("exempt", "fast", "slow", "cpu")
CONFIG_COLOURS = {"stock": "tab:red", "hand-tuned": "tab:orange", "gunitune": "tab:green"}
LANE_STYLES = {"fast": "-", "slow": "-", "cpu": ":"}


def _nan(values: Iterable[Any]) -> list[float]:
    # A missing sample is a gap in the line, not a crash in matplotlib.
    return [float("nan") if v is None else float(v) for v in values]


def _num(value: float | None, digits: str = ".1f") -> str:
    return "-" if value is None else format(value, digits)


def _limits_seen(run: dict[str, Any]) -> str:
    """``fast 2–4, slow 3–10, cpu 1`` over every worker's samples; ``-`` without any."""
    workers = run.get("limits", {}).get("workers", {}).values()
    parts = []
    for lane in af.LIMIT_LANES:
        values = [v for w in workers for v in w[lane] if v is not None]
        if values:
            low, high = min(values), max(values)
            parts.append(f"{lane} {low}" if low == high else f"{lane} {low}–{high}")
    return ", ".join(parts) or "-"


def _lanes_seen(run: dict[str, Any]) -> str:
    workers = run.get("limits", {}).get("workers", {}).values()
    seen = {lane for w in workers for lane in w["lane"] if lane is not None}
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
    if not sources:
        return []
    if sources.get("fallback"):
        return ["", f"Lane limits: {sources['fallback']} of {sum(sources.values())} stats "
                "answers had no `limiter.lanes.<lane>.limit`; shown instead: `db_limit` "
                "(fast, slow) and `cpu_concurrency` (cpu)."]  # fmt: skip
    return ["", f"Lane limits: `limiter.lanes.<lane>.limit`, {sources['lanes']} stats answers."]


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


def _worker_limits(ax: Any, run: dict[str, Any] | None, scen: str) -> None:
    if run is None or not run.get("limits", {}).get("workers"):
        ax.text(0.5, 0.5, "no gunitune stats", ha="center", transform=ax.transAxes)
    else:
        for i, (pid, w) in enumerate(sorted(run["limits"]["workers"].items())):
            # The fast and slow lanes share one database limit: drawn once.
            for lane, name in (("slow", "database"), ("cpu", "cpu")):
                ax.step(w["t"], _nan(w[lane]), where="post", color=f"C{i}",
                        linestyle=LANE_STYLES[lane], label=f"{pid} {name}")  # fmt: skip
    ax.set(title=f"{scen}: gunitune limits per worker (database: fast and slow lanes together)",
           xlabel="seconds since load start", ylabel="concurrency limit")  # fmt: skip


def _knee_panels(axes: Sequence[Any], runs: list[dict[str, Any]]) -> None:
    for run in runs:
        colour = CONFIG_COLOURS.get(run["config"])
        series = run["active_queries"]["series"]
        axes[0].step([p[0] for p in series], [p[1] for p in series], where="post",
                     color=colour, label=run["config"])  # fmt: skip
        fast = run.get("probes", {}).get("/fast", {}).get("series", [])
        axes[2].plot([p[0] for p in fast], [p[1] for p in fast], marker="x", markersize=3,
                     linewidth=0.8, color=colour, label=f"{run['config']} /fast")  # fmt: skip
    axes[0].set(title="knee: queries PostgreSQL runs at once", xlabel="seconds since storm start",
                ylabel="active queries")  # fmt: skip
    axes[2].set(title="knee: /fast probe latency", xlabel="seconds since storm start (sent)",
                ylabel="latency (s)", yscale="log")  # fmt: skip


def _switch_panels(axes: Sequence[Any], runs: list[dict[str, Any]]) -> None:
    for run in runs:
        colour, sw = CONFIG_COLOURS.get(run["config"]), run["switch"]
        counts = sw["per_second"]
        axes[0].step(range(len(counts) + 1), [*counts, counts[-1] if counts else 0], where="post",
                     color=colour, label=run["config"])  # fmt: skip
        for ph in sw["phases"]:
            if ph["steady"] is not None:
                axes[0].hlines(ph["steady"], ph["start"], ph["end"], colors=colour,
                               linestyles="--", linewidth=0.8)  # fmt: skip
            if ph["settle"] is not None:
                axes[0].axvline(ph["start"] + ph["settle"], color=colour, linestyle=":")
    phases = runs[0]["switch"]["phases"] if runs else []
    for ph in phases[1:]:
        for ax in axes:
            ax.axvline(ph["start"], color="grey", linewidth=0.8)
    tuned = next((r for r in runs if r.get("limits")), None)
    if tuned is not None:
        for i, (pid, w) in enumerate(sorted(tuned["limits"]["workers"].items())):
            ys = [LANE_ORDER.index(v) if v in LANE_ORDER else None for v in w["lane"]]
            axes[2].step(w["t"], _nan(ys), where="post", color=f"C{i}", label=str(pid))
    axes[2].set_yticks(range(len(LANE_ORDER)), LANE_ORDER)
    axes[0].set(title="switch: valid responses per second (io | cpu | io)",
                xlabel="seconds since load start", ylabel="responses/s")  # fmt: skip
    axes[2].set(title="switch: lane of /work per gunitune worker",
                xlabel="seconds since load start", ylabel="lane")  # fmt: skip


def plot_adaptive(result: dict[str, Any], path: Path) -> bool:
    """Draw ``adaptive.png`` (one column per adaptive scenario); False when none ran."""
    runs = [r for r in result["runs"] if not r.get("skipped")]
    scenarios = [s for s in ADAPTIVE_SCENARIOS if any(r["scenario"] == s for r in runs)]
    if not scenarios:
        return False
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers and in CI
    import matplotlib.pyplot as plt

    fig, grid = plt.subplots(3, len(scenarios), figsize=(7 * len(scenarios), 11), squeeze=False)
    for col, scen in enumerate(scenarios):
        axes = [grid[row][col] for row in range(3)]
        scen_runs = [r for r in runs if r["scenario"] == scen]
        (_knee_panels if scen == "knee" else _switch_panels)(axes, scen_runs)
        _worker_limits(axes[1], next((r for r in scen_runs if r.get("limits")), None), scen)
        for ax in axes:
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize="x-small", ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
