"""The storm benchmark's markdown report and plot, from a ``result.json`` document.

No processes, no sockets: a report can be redrawn later with
``python -m benchmarks.report results/<timestamp>``.
"""

from __future__ import annotations

import argparse
import json
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.adaptive_report import adaptive_sections, plot_adaptive
from benchmarks.configs import LANE_SCENARIOS
from benchmarks.lanes_report import draw_panels, lane_sections
from benchmarks.report_format import fmt_rate, fmt_seconds, kinds, table

__all__ = ["fmt_seconds", "main", "plot", "render_report", "write_report"]


# CPU use (all cores, %) in the second before a run above which it is flagged.
BUSY_PERCENT = 25.0

# Markdown header lines; a row is a list of cells in the same order.
CLIENT_HEADER = (
    "| config | scenario | requests | valid 200 | invalid | conn errors | 503 | worker timeouts"
    " | p50 | p99 | max | throughput/s | limit/s | ratio |"
)
SERVER_HEADER = (
    "| config | scenario | workers | DB conns allowed | peak DB conns | peak accept queue"
    " | WORKER TIMEOUT | extra worker boots | QueuePool errors |"
)


def _client_row(config: str, scenario: str, f: dict[str, Any], server: dict[str, Any]) -> list[str]:
    return [
        config, scenario, str(f["requests"]), str(f["valid"]), kinds(f["invalid"]),
        kinds(f["errors"]), str(f["status_503"]), str(server.get("worker_timeouts", "-")),
        fmt_seconds(f["p50"]), fmt_seconds(f["p99"]), fmt_seconds(f["max"]),
        fmt_rate(f["throughput"]), fmt_rate(f["limit"]),
        "-" if f["ratio"] is None else f"{f['ratio']:.2f}",
    ]  # fmt: skip


def render_report(result: dict[str, Any]) -> str:
    """The markdown report of a ``result.json`` document: two tables and the notes."""
    rows, server_rows = [], []
    for run in result["runs"]:
        name, scen, server = run["config"], run["scenario"], run.get("server", {})
        if scen == "hello-wrk":
            continue  # wrk rounds, not a storm: only in its own table below
        if run.get("skipped"):
            rows.append([name, scen, f"skipped: {run['skipped']}", *["-"] * 11])
            continue
        rows.append(_client_row(name, scen, run["storm"], server))
        if run.get("trickle"):
            # The trickle's rate is set by the client, so its "throughput" says nothing.
            trickle = {**run["trickle"], "throughput": None}
            label = f"{scen}: {run.get('trickle_path', 'trickle')}"
            rows.append(_client_row(name, label, trickle, {}))
        server_rows.append([
            name, scen, str(run["workers"]), str(run["db_connections_allowed"]),
            str(server.get("peak_db_connections", "-")), str(server.get("peak_accept_queue", "-")),
            str(server.get("worker_timeouts", "-")), str(server.get("extra_worker_boots", "-")),
            str(server.get("queuepool_errors", "-")),
        ])  # fmt: skip
    m = result["machine"]
    lines = [
        f"# Storm benchmark {result['started']}",
        "",
        f"{m['cpus']} usable CPUs ({m['cpu_source']}), Python {m['python']}, "
        + ", ".join(f"{k} {v}" for k, v in m["versions"].items()),
        "",
        "Command: `" + shlex.join(result.get("command", ["?"])) + "`",
        "",
        "Settings: " + ", ".join(f"{k}={v}" for k, v in result["settings"].items()),
        "",
        *table(CLIENT_HEADER, rows),
        "",
        *table(SERVER_HEADER, server_rows),
        *lane_sections(result),
        *adaptive_sections(result),
        "",
        *_notes(result),
    ]
    return "\n".join(lines) + "\n"


def _notes(result: dict[str, Any]) -> list[str]:
    notes = [
        "Latencies cover every request, failures included. Throughput = valid responses / "
        "(storm start to last valid completion). IO limit = workers x (pool_size + "
        "max_overflow) / io_seconds; CPU limit = usable CPUs / CPU seconds of one request.",
    ]
    cpu = result.get("cpu_seconds_per_request")
    if cpu is not None:
        spread = result.get("cpu_samples")
        detail = (
            f" (median of {spread['n']}, {fmt_seconds(spread['min'])} to "
            f"{fmt_seconds(spread['max'])})"
            if spread
            else ""
        )
        notes.append(
            f"CPU seconds per /cpu request, measured unloaded: {fmt_seconds(cpu)}{detail}."
        )
    mixed_cpu = result.get("mixed_cpu")
    if mixed_cpu:
        spread = mixed_cpu["cpu_samples"]
        notes.append(
            f"mixed-cpu: /cpu loop {mixed_cpu['cpu_loop']}, "
            f"{fmt_seconds(mixed_cpu['cpu_seconds_per_request'])} of CPU unloaded (median of "
            f"{spread['n']}, {fmt_seconds(spread['min'])} to {fmt_seconds(spread['max'])})."
        )
    hello = {r["config"]: r["storm"] for r in result["runs"]
             if r["scenario"] == "hello" and not r.get("skipped")}  # fmt: skip
    base, tuned = hello.get("hand-tuned"), hello.get("gunitune")
    if base and tuned and base["throughput"]:
        notes.append(
            f"hello overhead: gunitune serves {tuned['throughput'] / base['throughput']:.2f}x "
            f"hand-tuned's requests/s (same worker count), p50 {fmt_seconds(tuned['p50'])} vs "
            f"{fmt_seconds(base['p50'])}."
        )
    busy = [f"{r['config']} {r['scenario']} ({r['cpu_busy_before']:.0f}%)" for r in result["runs"]
            if r.get("cpu_busy_before", 0) > BUSY_PERCENT]  # fmt: skip
    if busy:
        notes.append(
            "**The machine was busy before these runs started (CPU use in the second "
            f"before): {', '.join(busy)}; their figures are disturbed.**"
        )
    return [f"* {n}" for n in notes]


def plot(result: dict[str, Any], path: Path) -> None:
    """Completions over time (top) and latency CDFs (bottom), one column per scenario."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers and in CI
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullFormatter

    runs = [r for r in result["runs"] if not r.get("skipped")]
    scenarios = list(dict.fromkeys(r["scenario"] for r in runs)) or ["(none)"]
    fig, axes = plt.subplots(2, len(scenarios), figsize=(5.5 * len(scenarios), 8), squeeze=False)
    # hand-tuned is drawn wide and pale under the others: where two configurations
    # perform alike their lines coincide, and both must stay visible.
    styles: dict[str, dict[str, Any]] = {
        "stock": {"color": "tab:red", "linewidth": 1.5},
        "hand-tuned": {"color": "tab:orange", "linewidth": 4, "alpha": 0.5},
        "gunitune": {"color": "tab:green", "linewidth": 1.5},
    }
    for col, scen in enumerate(scenarios):
        top, bottom = axes[0][col], axes[1][col]
        scen_runs = [r for r in runs if r["scenario"] == scen]
        # hello-wrk has no per-request data: its panels are all lanes_report's.
        for run in scen_runs if scen != "hello-wrk" else []:
            style = styles.get(run["config"], {})
            f = run["storm"]
            valid, failed = f.get("valid_done", []), f.get("failed_done", [])
            top.step([0, *valid], range(len(valid) + 1), where="post", **style,
                     label=f"{run['config']} valid")  # fmt: skip
            if failed:
                top.step([0, *failed], range(len(failed) + 1), where="post", **style,
                         linestyle=":", label=f"{run['config']} failed")  # fmt: skip
            cdf = (run.get("trickle") or f).get("latencies", [])
            if cdf and scen not in LANE_SCENARIOS:
                ys = [(i + 1) / len(cdf) for i in range(len(cdf))]
                bottom.plot(cdf, ys, **style, label=run["config"])
        path_label = next((r.get("trickle_path") for r in scen_runs), None)
        top.set(title=f"{scen}: completions over time", xlabel="seconds since storm start",
                ylabel="cumulative responses")  # fmt: skip
        # Plain numbers on log axes (0.01, 0.1, 1) rather than powers of ten.
        plain = FuncFormatter(lambda v, _: f"{v:g}")
        if scen in LANE_SCENARIOS:
            draw_panels(scen, scen_runs, top, bottom, styles)
            bottom.yaxis.set_major_formatter(plain)
        else:
            which = f"{path_label} (trickle)" if path_label else "all requests"
            bottom.set(title=f"{scen}: latency CDF, {which}", xlabel="latency (s)",
                       ylabel="fraction of requests", xscale="log")  # fmt: skip
            bottom.xaxis.set_major_formatter(plain)
            bottom.xaxis.set_minor_formatter(NullFormatter())
        for ax in (top, bottom):
            ax.grid(alpha=0.3)
            if ax.has_data():
                ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(result: dict[str, Any], out_dir: Path) -> str:
    """Write ``report.md``, ``storm.png`` (and ``adaptive.png`` for knee/switch) into
    ``out_dir``; return the markdown."""
    text = render_report(result)
    (out_dir / "report.md").write_text(text)
    plot(result, out_dir / "storm.png")
    plot_adaptive(result, out_dir / "adaptive.png")
    return text


def main(argv: Sequence[str] | None = None) -> int:
    """Redraw ``report.md`` and the plots from a results directory's ``result.json``."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.report", description=main.__doc__)
    parser.add_argument("out_dir", type=Path, help="a results directory, results/<timestamp>")
    out_dir: Path = parser.parse_args(argv).out_dir
    print(write_report(json.loads((out_dir / "result.json").read_text()), out_dir))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
