"""Figures, the markdown table and the plot of a storm run; no processes, no sockets.

Everything here works on fixed inputs (request results or ``result.json``), so it
is unit-tested and a report can be redrawn later:
``python -m benchmarks.report results/<timestamp>``.
"""

from __future__ import annotations

import json
import re
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.figures import latency_figures
from benchmarks.loadclient import RequestResult

__all__ = [
    "cpu_limit",
    "fmt_seconds",
    "io_limit",
    "is_valid",
    "main",
    "outcomes",
    "parse_wrk",
    "plot",
    "ratio",
    "render_report",
    "request_figures",
    "throughput",
    "write_report",
    "wrk_figures",
]


def io_limit(workers: int, connections_per_worker: int, io_seconds: float) -> float | None:
    """Requests/s when every DB connection the configuration allows sleeps ``io_seconds``.

    None when unbounded (an IO time of 0 or unlimited overflow, signalled as < 1 connection).
    """
    if io_seconds <= 0 or connections_per_worker < 1 or workers < 1:
        return None
    return workers * connections_per_worker / io_seconds


def cpu_limit(cores: int, cpu_seconds: float) -> float | None:
    """Requests/s when every usable core does nothing but one request after another."""
    return cores / cpu_seconds if cpu_seconds > 0 and cores > 0 else None


def throughput(valid: int, span: float | None) -> float:
    """Valid responses per second over ``span`` (storm start to last valid completion)."""
    return valid / span if valid and span and span > 0 else 0.0


def ratio(value: float, limit: float | None) -> float | None:
    """``value`` as a fraction of ``limit`` (None when there is no limit)."""
    return value / limit if limit else None


def is_valid(r: RequestResult) -> bool:
    """A complete response with status 200 and exactly the expected body."""
    return r.error is None and r.status == 200 and r.body_ok


def outcomes(results: Sequence[RequestResult]) -> dict[str, Any]:
    """Count valid responses, 503s, other (invalid) responses and connection errors.

    Valid means status 200 with the expected body. ``invalid`` maps a status (or
    ``"200 bad body"``) to a count; ``errors`` maps a client error kind to a count.
    """
    invalid: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    valid = shed = 0
    for r in results:
        if r.error is not None:
            errors[r.error] += 1
        elif is_valid(r):
            valid += 1
        elif r.status == 503:
            shed += 1
        else:
            invalid["200 bad body" if r.status == 200 else str(r.status)] += 1
    return {
        "valid": valid,
        "status_503": shed,
        "invalid": dict(sorted(invalid.items())),
        "errors": dict(sorted(errors.items())),
    }


def request_figures(results: Sequence[RequestResult], limit: float | None) -> dict[str, Any]:
    """Every client-side figure of one storm (or trickle), JSON-ready.

    Latency percentiles cover all requests, failures included (a reset after 30 s
    costs the user 30 s). ``valid_done``/``failed_done`` are completion times in
    seconds since the first request started, for the completions plot.
    """
    figures: dict[str, Any] = {"requests": len(results), **outcomes(results)}
    figures.update(latency_figures([r.latency for r in results]))
    t0 = min((r.started for r in results), default=0.0)
    done = sorted(r.finished - t0 for r in results if is_valid(r))
    failed = sorted(r.finished - t0 for r in results if not is_valid(r))
    span = done[-1] if done else None
    figures["span"] = span
    figures["throughput"] = throughput(len(done), span)
    figures["limit"] = limit
    figures["ratio"] = ratio(figures["throughput"], limit)
    figures["valid_done"] = [round(t, 4) for t in done]
    figures["failed_done"] = [round(t, 4) for t in failed]
    figures["latencies"] = sorted(round(r.latency, 4) for r in results)
    return figures


_WRK_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def _wrk_seconds(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if not match:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(match.group(1)) * _WRK_UNITS[match.group(2)]


def parse_wrk(output: str) -> dict[str, Any]:
    """Requests, errors, req/s and latency (p50/p99/max, seconds) from ``wrk --latency``."""
    total = re.search(r"(\d+) requests in ([\d.]+\w+)", output)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    if not total or not rps:
        raise ValueError("wrk output has no 'N requests in' / 'Requests/sec' lines")
    dist = dict(re.findall(r"^\s+(50|75|90|99)%\s+([\d.]+\w+)", output, re.MULTILINE))
    stats = re.search(r"Latency\s+([\d.]+\w+)\s+([\d.]+\w+)\s+([\d.]+\w+)", output)
    socket = re.search(r"connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    kinds = ("connect", "read", "write", "timeout")
    errors = dict(zip(kinds, map(int, socket.groups()), strict=True)) if socket else {}
    requests = int(total.group(1))
    return {
        "requests": requests,
        "duration": _wrk_seconds(total.group(2)),
        "requests_per_s": float(rps.group(1)),
        "non_2xx": int(non2xx.group(1)) if non2xx else 0,
        "errors": {k: v for k, v in errors.items() if v},
        "p50": _wrk_seconds(dist["50"]) if "50" in dist else None,
        "p99": _wrk_seconds(dist["99"]) if "99" in dist else None,
        "max": _wrk_seconds(stats.group(3)) if stats else None,
    }


def wrk_figures(wrk: dict[str, Any]) -> dict[str, Any]:
    """``parse_wrk`` output in the shape of :func:`request_figures` (no per-request data).

    wrk keeps connections alive and does not check bodies: valid = 2xx/3xx answers.
    """
    errors = dict(wrk["errors"])
    valid = max(0, wrk["requests"] - wrk["non_2xx"] - errors.get("read", 0))
    rate = valid / wrk["duration"] if wrk["duration"] > 0 else 0.0
    invalid = {"non-2xx": wrk["non_2xx"]} if wrk["non_2xx"] else {}
    return {
        "requests": wrk["requests"], "valid": valid, "status_503": 0, "invalid": invalid,
        "errors": errors, "p50": wrk["p50"], "p90": None, "p99": wrk["p99"], "max": wrk["max"],
        "mean": None, "span": wrk["duration"], "throughput": rate, "limit": None,
        "ratio": None, "tool": "wrk",
    }  # fmt: skip


def fmt_seconds(value: float | None) -> str:
    """``0.0123`` -> ``12.3 ms``, ``12.345`` -> ``12.3 s``; ``-`` for None."""
    if value is None:
        return "-"
    if value < 1:
        return f"{value * 1000:.3g} ms"
    return f"{value:.3g} s" if value < 100 else f"{value:.0f} s"


def _fmt_rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}" if value < 1000 else f"{value:.0f}"


def _kinds(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items()) or "0"


# Markdown header lines; a row is a list of cells in the same order.
CLIENT_HEADER = (
    "| config | scenario | requests | valid 200 | invalid | conn errors | 503 | worker timeouts"
    " | p50 | p99 | max | throughput/s | limit/s | ratio |"
)
SERVER_HEADER = (
    "| config | scenario | workers | DB conns allowed | peak DB conns | peak accept queue"
    " | WORKER TIMEOUT | extra worker boots | QueuePool errors |"
)


def _table(header: str, rows: Sequence[Sequence[str]]) -> list[str]:
    columns = header.count("|") - 1
    lines = [header, "|" + "---|" * columns]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _client_row(config: str, scenario: str, f: dict[str, Any], server: dict[str, Any]) -> list[str]:
    return [
        config, scenario, str(f["requests"]), str(f["valid"]), _kinds(f["invalid"]),
        _kinds(f["errors"]), str(f["status_503"]), str(server.get("worker_timeouts", "-")),
        fmt_seconds(f["p50"]), fmt_seconds(f["p99"]), fmt_seconds(f["max"]),
        _fmt_rate(f["throughput"]), _fmt_rate(f["limit"]),
        "-" if f["ratio"] is None else f"{f['ratio']:.2f}",
    ]  # fmt: skip


def render_report(result: dict[str, Any]) -> str:
    """The markdown report of a ``result.json`` document: two tables and the notes."""
    rows, server_rows = [], []
    for run in result["runs"]:
        name, scen, server = run["config"], run["scenario"], run.get("server", {})
        if run.get("skipped"):
            rows.append([name, scen, f"skipped: {run['skipped']}", *["-"] * 11])
            continue
        rows.append(_client_row(name, scen, run["storm"], server))
        if run.get("trickle"):
            rows.append(
                _client_row(
                    name, f"{scen}: {run.get('trickle_path', 'trickle')}", run["trickle"], {}
                )
            )
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
        "Settings: " + ", ".join(f"{k}={v}" for k, v in result["settings"].items()),
        "",
        *_table(CLIENT_HEADER, rows),
        "",
        *_table(SERVER_HEADER, server_rows),
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
        notes.append(f"CPU seconds per /cpu request, measured unloaded: {fmt_seconds(cpu)}.")
    hello = {r["config"]: r["storm"] for r in result["runs"]
             if r["scenario"] == "hello" and not r.get("skipped")}  # fmt: skip
    base, tuned = hello.get("hand-tuned"), hello.get("gunitune")
    if base and tuned and base["throughput"]:
        notes.append(
            f"hello overhead: gunitune serves {tuned['throughput'] / base['throughput']:.2f}x "
            f"hand-tuned's requests/s (same worker count), p50 {fmt_seconds(tuned['p50'])} vs "
            f"{fmt_seconds(base['p50'])}."
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
        for run in (r for r in runs if r["scenario"] == scen):
            style = styles.get(run["config"], {})
            f = run["storm"]
            valid, failed = f.get("valid_done", []), f.get("failed_done", [])
            top.step([0, *valid], range(len(valid) + 1), where="post", **style,
                     label=f"{run['config']} valid")  # fmt: skip
            if failed:
                top.step([0, *failed], range(len(failed) + 1), where="post", **style,
                         linestyle=":", label=f"{run['config']} failed")  # fmt: skip
            cdf = (run.get("trickle") or f).get("latencies", [])
            if cdf:
                ys = [(i + 1) / len(cdf) for i in range(len(cdf))]
                bottom.plot(cdf, ys, **style, label=run["config"])
        path_label = next((r.get("trickle_path") for r in runs if r["scenario"] == scen), None)
        top.set(title=f"{scen}: completions over time", xlabel="seconds since storm start",
                ylabel="cumulative responses")  # fmt: skip
        which = f"{path_label} (trickle)" if path_label else "all requests"
        bottom.set(title=f"{scen}: latency CDF, {which}", xlabel="latency (s)",
                   ylabel="fraction of requests", xscale="log")  # fmt: skip
        # Plain numbers on the log axis (0.01, 0.1, 1) rather than powers of ten.
        bottom.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        bottom.xaxis.set_minor_formatter(NullFormatter())
        for ax in (top, bottom):
            ax.grid(alpha=0.3)
            if ax.has_data():
                ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(result: dict[str, Any], out_dir: Path) -> str:
    """Write ``report.md`` and ``storm.png`` into ``out_dir``; return the markdown."""
    text = render_report(result)
    (out_dir / "report.md").write_text(text)
    plot(result, out_dir / "storm.png")
    return text


def main(argv: Sequence[str] | None = None) -> int:
    """Redraw ``report.md`` and ``storm.png`` from a results directory's ``result.json``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m benchmarks.report results/<timestamp>", file=sys.stderr)
        return 2
    out_dir = Path(args[0])
    print(write_report(json.loads((out_dir / "result.json").read_text()), out_dir))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
