"""``metrics-dashboard.png``: the Grafana dashboard's panels, drawn from real scrapes.

``python -m benchmarks.metrics_dashboard [--out docs/benchmarks/metrics-dashboard.png]``

Starts a private PostgreSQL and a real Gunicorn (``-c python:gunitune.conf``,
2 workers, ``GUNITUNE_METRICS_PATH=/metrics``, a small pool and a 2 s queue
timeout so the storm queues and sheds), scrapes ``/metrics`` every 0.5 s on
loopback while a load runs: /fast and /hello at 20/s each throughout, /cpu at
4/s, and a storm of ``--storm`` /io requests at once after 5 s. Then evaluates
the queries of ``docs/grafana-dashboard.json`` on the scrapes
(:mod:`benchmarks.promql_lite`) and draws each panel with matplotlib. Grafana
itself is not involved: this is not a Grafana screenshot.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import math
import threading
import time
from collections import Counter
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from benchmarks.lanes import calibrate_cpu_loop
from benchmarks.loadclient import RequestResult, storm, trickle
from benchmarks.postgres import start_cluster
from benchmarks.promql_lite import Scrape, evaluate, legend
from benchmarks.server import REPO_ROOT, GunicornProcess

__all__ = ["main"]

DASHBOARD = REPO_ROOT / "docs" / "grafana-dashboard.json"
OUT = REPO_ROOT / "docs" / "benchmarks" / "metrics-dashboard.png"
HOST = "127.0.0.1"
SCRAPE_EVERY = 0.5
RATE_WINDOW = 2.0  # $__rate_interval: four scrapes
DURATION = 30.0
STORM_AT = 5.0


def _scraper(port: int, t0: float, out: list[Scrape], stop: threading.Event) -> None:
    while not stop.is_set():
        conn = http.client.HTTPConnection(HOST, port, timeout=10)
        started = time.monotonic()
        try:
            conn.request("GET", "/metrics", headers={"Connection": "close"})
            text = conn.getresponse().read().decode()
            t = started - t0
            samples = [
                (s.name, s.labels, s.value)
                for family in text_string_to_metric_families(text)
                for s in family.samples
            ]
            out.append((t, samples))
        except (OSError, http.client.HTTPException):
            pass  # a missed scrape is a gap, as in Prometheus
        finally:
            conn.close()
        # Pacing: a scrape interval is a schedule, not a condition to await.
        stop.wait(SCRAPE_EVERY)


async def _load(port: int, n_storm: int) -> list[RequestResult]:
    async def delayed_storm() -> list[RequestResult]:
        await asyncio.sleep(STORM_AT)  # the schedule of the load, not a condition
        return await storm(HOST, port, "/io", n_storm, timeout=60)

    parts = await asyncio.gather(
        trickle(HOST, port, "/fast", 20, DURATION, timeout=60),
        trickle(HOST, port, "/hello", 20, DURATION, timeout=60),
        trickle(HOST, port, "/cpu", 4, DURATION, timeout=60),
        delayed_storm(),
    )
    return [r for part in parts for r in part]


def _draw(scrapes: list[Scrape], out: Path, caption: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = json.loads(DASHBOARD.read_text())["panels"]
    fig, axes = plt.subplots(3, 2, figsize=(13, 11), sharex=True)
    for panel, ax in zip(panels, axes.flat, strict=False):
        for target in panel["targets"]:
            for labels, points in sorted(evaluate(target["expr"], scrapes, RATE_WINDOW).items()):
                ts = sorted(points)
                ys = [points[t] for t in ts]
                if not any(y and not math.isnan(y) for y in ys):
                    continue  # a series that stays 0 (or NaN) would only hide the others
                ax.plot(ts, ys, label=legend(target["legendFormat"], labels), linewidth=1.2)
        ax.set_title(panel["title"], fontsize=10)
        ax.axvline(STORM_AT, color="grey", linestyle=":", linewidth=0.8)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="upper right")
        unit = panel["fieldConfig"]["defaults"]["unit"]
        ax.set_ylabel({"reqps": "requests/s", "s": "seconds", "percentunit": "cores"}.get(unit, ""))
    for ax in axes[-1]:
        ax.set_xlabel("seconds (dotted: the /io storm starts)")
    fig.suptitle("docs/grafana-dashboard.json's panels, drawn from real /metrics scrapes")
    fig.text(0.5, 0.005, caption, ha="center", fontsize=8, wrap=True)
    fig.tight_layout(rect=(0, 0.03, 1, 0.97))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--storm", type=int, default=1500)
    parser.add_argument("--dump", type=Path, help="also write the scrapes as JSON here")
    args = parser.parse_args(argv)
    cpu_loop = calibrate_cpu_loop(0.05)
    with start_cluster() as pg:
        env = {
            "DATABASE_URL": pg.url,
            "GUNITUNE_WORKERS": "2",
            "GUNITUNE_METRICS_PATH": "/metrics",
            "GUNITUNE_QUEUE_TIMEOUT": "2",
            "GUNITUNE_PRESSURE_INTERVAL": str(SCRAPE_EVERY),
            "GUNITUNE_POOL_SIZE": "3",
            "GUNITUNE_MAX_OVERFLOW": "2",
            "DEMO_POOL_SIZE": "3",
            "DEMO_MAX_OVERFLOW": "2",
            "DEMO_IO_SECONDS": "0.2",
            "DEMO_CPU_LOOP": str(cpu_loop),
        }
        with GunicornProcess(config="python:gunitune.conf", env=env) as server:
            scrapes: list[Scrape] = []
            stop = threading.Event()
            t0 = time.monotonic()
            thread = threading.Thread(target=_scraper, args=(server.port, t0, scrapes, stop))
            thread.start()
            try:
                results = asyncio.run(_load(server.port, args.storm))
                time.sleep(2 * SCRAPE_EVERY)  # two more scrapes: the tail of the rates
            finally:
                stop.set()
                thread.join()
    statuses = Counter(str(r.status or r.error) for r in results)
    last = {(n, tuple(sorted(lab.items()))): v for n, lab, v in scrapes[-1][1]}
    counted = sum(v for (n, _), v in last.items() if n == "gunitune_requests_total")
    caption = (
        f"Rendered by benchmarks/metrics_dashboard.py from {len(scrapes)} real scrapes of /metrics "
        f"(every {SCRAPE_EVERY} s; $__rate_interval = {RATE_WINDOW:g} s), not a Grafana "
        f"screenshot. 2-CPU VM, `python -m benchmarks.metrics_dashboard`; "
        f"the client sent {len(results)} requests {dict(statuses)}, the last scrape "
        f"counts {counted:.0f}. Series that stay 0 are left out."
    )
    if args.dump:
        dumped = [[t, [list(s) for s in samples]] for t, samples in scrapes]
        args.dump.write_text(json.dumps(dumped))
    _draw(scrapes, args.out, caption)
    print(caption)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
