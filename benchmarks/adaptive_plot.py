"""``adaptive.png``: the adaptive scenarios' plot, one column per scenario that ran.

Rows: what the load saw (knee: queries PostgreSQL runs at once; switch: valid
responses per second), gunitune's database limit per worker, and knee's
``/fast`` latency or switch's lane of ``/work`` per worker. The per-worker rows
come from the server log (:mod:`benchmarks.adaptive_log`): every worker logs
its own changes, where the stats polls mostly reach the least loaded worker.
A run without such log lines (or without ``load_wall_start``) falls back to the
stats polls. Reads only ``result.json`` material and the logs it names.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from benchmarks import adaptive_log as alog
from benchmarks.configs import ADAPTIVE_SCENARIOS

__all__ = ["LANE_ORDER", "plot_adaptive"]

LANE_ORDER = ("exempt", "fast", "slow", "cpu")
CONFIG_COLOURS = {"stock": "tab:red", "hand-tuned": "tab:orange", "gunitune": "tab:green"}
LANE_STYLES = {"fast": "-", "slow": "-", "cpu": ":"}
Run = dict[str, Any]


def _nan(values: Iterable[Any]) -> list[float]:
    # A missing sample is a gap in the line, not a crash in matplotlib.
    return [float("nan") if v is None else float(v) for v in values]


def _lane_index(lane: Any) -> int | None:
    return LANE_ORDER.index(lane) if lane in LANE_ORDER else None


def _load_end(run: Run) -> float:
    """Where the load ended, in seconds since its start: the log's lines are held until there."""
    sw = run.get("switch")
    if sw is not None:
        return float(max([len(sw["per_second"]), *(ph["end"] for ph in sw["phases"])]))
    return float(run["storm"].get("span") or 0.0)


def _logged(runs: Sequence[Run], base: Path, kind: str) -> tuple[Run | None, alog.Steps]:
    """The first run whose log has ``kind`` (``limits``, ``lanes``) steps, and them; else
    the first run with stats-poll limits (the fallback) and no steps."""
    for run in runs:
        steps: alog.Steps = alog.run_log_series(run, base)[kind]
        if steps:
            return run, steps
    return next((r for r in runs if r.get("limits")), None), {}


def _log_steps(
    ax: Any, steps: Mapping[str, Mapping[str, list[Any]]], end: float,
    ys: Callable[[Any], Any] | None = None,
) -> None:  # fmt: skip
    """One step line per worker pid, held until ``end``; its ``probing`` rows marked."""
    marked = False
    for i, (pid, cols) in enumerate(sorted(steps.items())):
        values = _nan(cols["value"] if ys is None else map(ys, cols["value"]))
        t = [*cols["t"], max(end, cols["t"][-1])]
        # Workers often share a limit: the first ones drawn wider show under the later.
        ax.step(t, [*values, values[-1]], where="post", color=f"C{i}", label=str(pid),
                linewidth=max(1.0, 3.0 - 0.7 * i))  # fmt: skip
        probes = [(x, y) for x, y, p in zip(cols["t"], values, cols["probing"], strict=True) if p]
        if probes:
            ax.plot([x for x, _y in probes], [y for _x, y in probes], "v", color=f"C{i}",
                    markeredgecolor="black", label=None if marked else "probing")  # fmt: skip
            marked = True


def _worker_limits(ax: Any, runs: Sequence[Run], scen: str, base: Path) -> None:
    run, steps = _logged(runs, base, "limits")
    if run is not None and steps:
        _log_steps(ax, steps, _load_end(run))
        ax.set(title=f"{scen}: gunitune database limit per worker (server log)",
               xlabel="seconds since load start", ylabel="database limit")  # fmt: skip
        return
    if run is None:
        ax.text(0.5, 0.5, "no gunitune log or stats", ha="center", transform=ax.transAxes)
    else:
        for i, (pid, w) in enumerate(sorted(run["limits"]["workers"].items())):
            # The fast and slow lanes share one database limit: drawn once.
            for lane, name in (("slow", "database"), ("cpu", "cpu")):
                ax.step(w["t"], _nan(w[lane]), where="post", color=f"C{i}",
                        linestyle=LANE_STYLES[lane], label=f"{pid} {name}")  # fmt: skip
    ax.set(title=f"{scen}: gunitune limits per worker (stats polls; database: fast and slow)",
           xlabel="seconds since load start", ylabel="concurrency limit")  # fmt: skip


def _knee_panels(axes: Sequence[Any], runs: Sequence[Run], _base: Path) -> None:
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


def _switch_panels(axes: Sequence[Any], runs: Sequence[Run], base: Path) -> None:
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
    tuned, steps = _logged(runs, base, "lanes")
    if tuned is not None and steps:
        _log_steps(axes[2], steps, _load_end(tuned), _lane_index)
    elif tuned is not None:
        for i, (pid, w) in enumerate(sorted(tuned["limits"]["workers"].items())):
            ys = [_lane_index(v) for v in w["lane"]]
            axes[2].step(w["t"], _nan(ys), where="post", color=f"C{i}", label=str(pid))
    axes[2].set_yticks(range(len(LANE_ORDER)), LANE_ORDER)
    axes[0].set(title="switch: valid responses per second (io | cpu | io)",
                xlabel="seconds since load start", ylabel="responses/s")  # fmt: skip
    source = "server log" if steps else "stats polls"
    axes[2].set(title=f"switch: lane of /work per gunitune worker ({source})",
                xlabel="seconds since load start", ylabel="lane")  # fmt: skip


def plot_adaptive(result: dict[str, Any], path: Path) -> bool:
    """Draw ``adaptive.png`` (one column per adaptive scenario); False when none ran.

    A log no longer where the run says is looked for in ``path``'s directory's ``logs``.
    """
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
        (_knee_panels if scen == "knee" else _switch_panels)(axes, scen_runs, path.parent)
        _worker_limits(axes[1], scen_runs, scen, path.parent)
        for ax in axes:
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize="x-small", ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
