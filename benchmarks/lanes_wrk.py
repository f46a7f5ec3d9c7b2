"""``hello-wrk``: gunitune's overhead on the trivial ``/hello``, wrk in alternating rounds.

Both servers run at the same time, each started once and warmed up; then
``wrk -t2 -c50 -d<secs> --latency`` (keep-alive) runs against hand-tuned,
gunitune, hand-tuned, gunitune... ``wrk_rounds`` times each. Alternating spreads
a drift of the machine (a neighbour, a throttled CPU) over both instead of
charging it to whichever ran second. Figures: every round's requests/s and the
ratio of the medians, gunitune / hand-tuned.

Without ``wrk`` on PATH the scenario is skipped and the report says so: a Python
client would measure its own cost and a fresh connection per request, a
different figure that must not pass for this one.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

from benchmarks.configs import BenchSettings, ServerConfig, server_environ
from benchmarks.lane_figures import wrk_comparison
from benchmarks.runner import HOST, warm_up
from benchmarks.server import GunicornProcess
from benchmarks.storm_figures import parse_wrk, wrk_figures

__all__ = ["WRK_MISSING", "run_hello_wrk", "wrk_once"]

SCENARIO = "hello-wrk"
WRK_MISSING = "wrk is not on PATH (apt-get install wrk); no other client stands in for it"
# Discarded run per server before the rounds: first connections, lazy imports, caches.
WARM_UP_SECONDS = 2.0


def wrk_once(port: int, s: BenchSettings, seconds: float) -> dict[str, Any]:
    """One ``wrk --latency`` run on ``/hello``, parsed (raises ValueError on bad output)."""
    url = f"http://{HOST}:{port}/hello"
    cmd = ["wrk", "-t2", f"-c{s.hello_concurrency}", f"-d{seconds:g}s", "--latency", url]
    # run() kills wrk if it overruns: no process outlives the call.
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    return parse_wrk(out.stdout)


def _needed(servers: list[ServerConfig], s: BenchSettings) -> float:
    # Boot + warm-up (~30 s) per server, then every round with wrk's own start-up.
    return len(servers) * (30 + WARM_UP_SECONDS + s.wrk_rounds * (s.wrk_duration + 2))


def run_hello_wrk(
    servers: list[ServerConfig], s: BenchSettings, url: str, logs: Path, deadline: float
) -> list[dict[str, Any]]:
    """One run document per configuration: its rounds, median and ratio to hand-tuned."""
    base = [{"config": c.name, "scenario": SCENARIO} for c in servers]
    if shutil.which("wrk") is None:
        return [{**b, "skipped": WRK_MISSING} for b in base]
    if _needed(servers, s) > deadline:
        return [{**b, "skipped": "global deadline reached"} for b in base]
    procs: dict[str, GunicornProcess] = {}
    rounds: dict[str, list[dict[str, Any]]] = {c.name: [] for c in servers}
    try:
        for c in servers:
            log = logs / f"{c.name}-hello-wrk.log"
            proc = GunicornProcess(config=c.config, args=c.args, log_path=log)
            # Built from scratch like run_one's: no GUNITUNE_*/DEMO_* from the shell.
            proc.env = server_environ(c, url)
            procs[c.name] = proc
            proc.start(ready_timeout=60, probe_path="/hello")
            warm_up(proc)
            wrk_once(proc.port, s, min(WARM_UP_SECONDS, s.wrk_duration))
        for i in range(s.wrk_rounds):
            for c in servers:
                figures = wrk_once(procs[c.name].port, s, s.wrk_duration)
                rounds[c.name].append({"round": i, **figures})
        timeouts = {name: p.count("WORKER TIMEOUT") for name, p in procs.items()}
    except (RuntimeError, TimeoutError, ValueError, subprocess.SubprocessError) as exc:
        # One server missing makes the comparison meaningless: report both as skipped.
        first_line = (str(exc).splitlines() or [type(exc).__name__])[0]
        return [{**b, "skipped": f"hello-wrk failed ({first_line}); logs: {logs}"} for b in base]
    finally:
        for proc in procs.values():
            proc.stop(grace=5)
    comparison = wrk_comparison(
        {name: [r["requests_per_s"] for r in rs] for name, rs in rounds.items()}
    )
    runs = []
    for c, b in zip(servers, base, strict=True):
        ordered = sorted(rounds[c.name], key=lambda r: r["requests_per_s"])
        proc = procs[c.name]
        runs.append({
            **b,
            "wrk_rounds": rounds[c.name],
            "median_rps": comparison["median_rps"].get(c.name),
            "ratio_gunitune_to_hand_tuned": comparison["ratio"],
            # The median round in the shape of the other scenarios' figures.
            "storm": wrk_figures(ordered[len(ordered) // 2]),
            "server": {"worker_timeouts": timeouts[c.name]},
            "workers": proc.expected_workers,
            "argv": proc.argv[1:],
            "log": str(proc.log_path),
        })  # fmt: skip
    return runs
