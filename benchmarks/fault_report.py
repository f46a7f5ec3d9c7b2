"""The fault benchmark's report: ``report.md`` (figures and a pass/fail row per target)
and ``faults.png`` (each storm request's latency at its finish time, probes, the fault)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from benchmarks.report_format import fmt_seconds, table

__all__ = ["markdown", "plot", "write_report"]

_COLORS = {"200": "tab:green", "503+RA": "tab:orange", "503": "gold", "500": "tab:red",
           "other": "tab:purple", "reset": "black", "timeout": "tab:gray",
           "refused": "tab:brown", "error": "tab:pink"}  # fmt: skip
_FAULT_SPANS = {"restart": ("down", "back_done"), "blackhole": ("drop", "back_done")}


def _value(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3g}"
    if isinstance(v, (dict, list)):
        return json.dumps(v)
    return str(v).replace("|", "\\|")


def _counts_row(label: str, c: Mapping[str, Any]) -> list[str]:
    lat = c["latency"]
    return [label, str(c["requests"]), str(c["200"]), str(c["503+RA"]), str(c["503"]),
            str(c["500"]), str(c["other"]), str(c["reset"]), str(c["timeout"]),
            str(c["refused"] + c["error"]), fmt_seconds(lat["p50"]),
            fmt_seconds(lat["max"])]  # fmt: skip


def _scenario(name: str, run: Mapping[str, Any]) -> list[str]:
    lines = [f"### {name}", ""]
    if run.get("error") and "storm" not in run:
        lines += [f"**Not run to the end:** {run['error']}", ""]
    if "storm" in run:
        header = ("| requests | n | 200 | 503+RA | 503 | 500 | other | reset | timeout "
                  "| refused/error | p50 | max |")  # fmt: skip
        rows = [_counts_row("storm /io", run["storm"])]
        rows += [_counts_row(f"probe {p}", c) for p, c in run.get("probes", {}).items()]
        lines += [*table(header, rows), ""]
        srv = run["server"]
        facts = {
            "workers (before → after)": f"{srv['workers_before']} → {srv['workers_after']}",
            "worker boots during the run": srv["boots_during"],
            "500 tracebacks in the server log": srv["tracebacks"],
            "first exception": srv["first_exception"],
            "events (s since the storm began)": run["events"],
            "time to full service after the DB returns": run.get("full_service_s", "-"),
        }
        if "during_drop" in run:
            facts["DB requests open in the drop"] = run["during_drop"]["outcomes"]
            facts["their longest wait from the drop"] = run["during_drop"]["max_wait"]
            hd = run["health_during_drop"]
            facts["/health during the drop: p50 / max / not 200"] = (
                f"{fmt_seconds(hd['latency']['p50'])} / {fmt_seconds(hd['latency']['max'])}"
                f" / {hd['requests'] - hd['200']}"
            )
        lines += [*table("| figure | value |", [[k, _value(v)] for k, v in facts.items()]), ""]
    if name == "cold":
        facts = {k: run.get(k) for k in ("master_started", "start_error", "health",
                                          "db_route_down", "after_back",
                                          "master_alive_at_end", "master_rc")}  # fmt: skip
        lines += [*table("| figure | value |", [[k, _value(v)] for k, v in facts.items()]), ""]
    rows = [[t["target"], t["wanted"], _value(t["value"]), t["result"]] for t in run["targets"]]
    lines += [*table("| target (issue 10) | wanted | measured | result |", rows), ""]
    return lines


def markdown(result: Mapping[str, Any]) -> str:
    """The whole report as Markdown."""
    s = result["settings"]
    lines = [
        "# Faults under load (issue 10)", "",
        f"`{' '.join(result['command'])}` on {result['machine']['cpus']} CPUs, "
        f"PostgreSQL {result['database']['server_version']}, started {result['started']}.",
        f"Storm: {s['requests']} × `/io` (pg_sleep {s['io_seconds']:g} s) at once, pool "
        f"{s['pool_size']} + {s['max_overflow']}, probes every {s['probe_interval']:g} s. "
        "Definitions: docs/benchmarks/faults.md.", "",
    ]  # fmt: skip
    for name, run in result["scenarios"].items():
        lines += _scenario(name, run)
    return "\n".join(lines)


def plot(result: Mapping[str, Any], path: Path) -> bool:
    """One panel per storm scenario; False when there is nothing to draw."""
    runs = {n: r for n, r in result["scenarios"].items() if r.get("timeline")}
    if not runs:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(runs), 1, figsize=(12, 3.4 * len(runs)), squeeze=False)
    for ax, (name, run) in zip(axes[:, 0], runs.items(), strict=True):
        for outcome, color in _COLORS.items():
            pts = [(f, f - s) for s, f, o in run["timeline"] if o == outcome]
            if pts:
                ax.scatter(*zip(*pts, strict=True), s=6, color=color, label=f"/io {outcome}")
        for probe, marker in (("/fast", "x"), ("/health", "+")):
            series = run.get("probes", {}).get(probe, {}).get("series", [])
            if series:
                xs = [t + lat for t, lat, _ in series]
                colors = [_COLORS[o] for _, _, o in series]
                ax.scatter(xs, [lat for _, lat, _ in series], s=14, marker=marker, c=colors,
                           label=f"probe {probe}")  # fmt: skip
        span = _FAULT_SPANS.get(name)
        if span and all(k in run["events"] for k in span):
            ax.axvspan(run["events"][span[0]], run["events"][span[1]], color="tab:red",
                       alpha=0.12, label="database away")  # fmt: skip
        if name == "reload" and "hup" in run["events"]:
            ax.axvline(run["events"]["hup"], color="tab:blue", linestyle="--", label="SIGHUP")
        ax.set_yscale("log")
        ax.set_title(f"{name}: latency of each request at its finish time")
        ax.set_xlabel("seconds since the storm began")
        ax.set_ylabel("latency (s)")
        # Outside the axes: the points fill every corner of a fault's panel.
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1), markerscale=2)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def write_report(result: Mapping[str, Any], out_dir: Path) -> str:
    """Write report.md and faults.png (when there is a storm) under ``out_dir``."""
    text = markdown(result)
    (out_dir / "report.md").write_text(text + "\n")
    plot(result, out_dir / "faults.png")
    return text
