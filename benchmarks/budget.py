"""``python -m benchmarks.budget``: one database's connection budget, used (issue 9).

* ``budget``: a PostgreSQL with ``max_connections=100``, the demo app on
  SQLAlchemy's default pool (5 + 10), ``--requests`` concurrent ``/io``
  (``pg_sleep(--io-seconds)``). ``hand-tuned``: ``-k gevent``, CPUs + 1 workers,
  15 worker connections (45 connections). ``gunitune``: ``-c python:gunitune.conf``
  with ``GUNITUNE_POOL=auto`` (the same workers; each pool sized from the budget).
* ``fleet``: a PostgreSQL with ``max_connections=40``, two Gunicorn masters on two
  loopback ports standing for two hosts, 2 workers each, a storm on both at
  once. ``hand-tuned``: both straight on PostgreSQL with the default pools
  (2 x 2 x 15 = 60 > 37). ``gunitune+pgbouncer``: ``GUNITUNE_HOSTS=2``,
  ``GUNITUNE_POOL=auto``, through Debian's PgBouncer in transaction mode set
  from ``gunitune plan --pgbouncer``.

Writes ``result.json``, ``report.md`` and ``budget.png`` under ``--out``
(default ``results/budget-<UTC timestamp>/``); every process it starts is stopped by PID.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from benchmarks.budget_report import figures, write_png, write_report
from benchmarks.loadclient import RequestResult, run_storm
from benchmarks.pg_watch import ConnectionWatch
from benchmarks.pgbouncer import start_pgbouncer
from benchmarks.postgres import PostgresCluster, app_driver, start_cluster
from benchmarks.server import GunicornProcess, control_socket_disable_args, stock_args
from gunitune.core.budget import ServerBudget
from gunitune.core.cpus import usable_cpus
from gunitune.core.fleet import fleet_share, pgbouncer_plan

__all__ = ["main"]

IO_BODY = b"hello there!\n"
SCENARIOS = ("budget", "fleet")


def _app_url(url: str) -> str:
    return url.replace("postgresql://", f"postgresql+{app_driver()}://", 1)


def _env(url: str, io_seconds: float, **extra: str) -> dict[str, str]:
    import os

    base = {k: v for k, v in os.environ.items() if not k.startswith(("GUNITUNE_", "DEMO_"))}
    return {**base, "DATABASE_URL": _app_url(url), "DEMO_IO_SECONDS": str(io_seconds),
            "DEMO_GREEN": "on", **extra}  # fmt: skip


@contextlib.contextmanager
def _servers(specs: Sequence[tuple[str | None, list[str], dict[str, str]]], out: Path,
             name: str) -> Iterator[list[GunicornProcess]]:  # fmt: skip
    started: list[GunicornProcess] = []
    try:
        for i, (config, args, env) in enumerate(specs):
            proc = GunicornProcess("demo_app:app", config, args, env,
                                   log_path=out / f"{name}-{i}.log")  # fmt: skip
            started.append(proc)
            proc.start(ready_timeout=120, probe_path="/health")
        yield started
    finally:
        for proc in started:
            proc.stop()


def _storm_all(servers: list[GunicornProcess], n: int, watch_connect: Any,
               timeout: float) -> tuple[list[list[RequestResult]], ConnectionWatch]:  # fmt: skip
    results: list[list[RequestResult]] = [[] for _ in servers]

    def storm(i: int) -> None:
        results[i] = run_storm("127.0.0.1", servers[i].port, "/io", n,
                               expected_body=IO_BODY, timeout=timeout)  # fmt: skip

    with ConnectionWatch(watch_connect) as watch:
        threads = [threading.Thread(target=storm, args=(i,)) for i in range(len(servers))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    return results, watch


def _run(name: str, config: str, servers: list[GunicornProcess], n: int,
         cluster: PostgresCluster, timeout: float) -> dict[str, Any]:  # fmt: skip
    t0 = time.monotonic()
    results, watch = _storm_all(servers, n, cluster.connect, timeout)
    row = figures(config, [r for rs in results for r in rs], watch, t0)
    row["scenario"] = name
    row["logs_too_many_clients"] = sum(s.count("too many clients") for s in servers)
    return row


def budget(args: argparse.Namespace, out: Path) -> list[dict[str, Any]]:
    """1 host, max_connections=100, the default pool: hand-tuned vs GUNITUNE_POOL=auto."""
    workers = usable_cpus().count + 1
    rows = []
    with start_cluster(max_connections=100) as pg:
        hand = (None, stock_args(workers, 15, 30), _env(pg.url, args.io_seconds,
                                                         DEMO_GUNITUNE="off"))  # fmt: skip
        tuned = ("python:gunitune.conf", list(control_socket_disable_args()),
                 _env(pg.url, args.io_seconds, GUNITUNE_POOL="auto",
                      GUNITUNE_WORKERS=str(workers)))  # fmt: skip
        for config, spec in (("hand-tuned", hand), ("gunitune", tuned)):
            with _servers([spec], out, f"budget-{config}") as servers:
                row = _run("budget", config, servers, args.requests, pg, args.timeout)
            row["connections_allowed"] = workers * 15 if config == "hand-tuned" else None
            row["budget"] = 100 - 3
            rows.append(row)
    return rows


def fleet(args: argparse.Namespace, out: Path) -> list[dict[str, Any]]:
    """2 hosts, max_connections=40: straight on PostgreSQL vs PgBouncer + GUNITUNE_HOSTS=2."""
    hosts, workers, n = 2, 2, args.fleet_requests
    share = fleet_share(ServerBudget(40, 3, 0, 0), hosts=hosts, workers=workers)
    plan = pgbouncer_plan(share, timeout=30)
    rows = []
    with start_cluster(max_connections=40) as pg:
        hand = [(None, stock_args(workers, 15, 30),
                 _env(pg.url, args.fleet_io_seconds, DEMO_GUNITUNE="off"))] * hosts  # fmt: skip
        with _servers(hand, out, "fleet-hand-tuned") as servers:
            rows.append(_run("fleet", "hand-tuned", servers, n, pg, args.timeout))
        with start_pgbouncer(pg, default_pool_size=plan.default_pool_size,
                             max_db_connections=plan.max_db_connections,
                             max_client_conn=plan.max_client_conn,
                             query_wait_timeout=plan.query_wait_timeout) as bouncer:  # fmt: skip
            tuned = [("python:gunitune.conf", list(control_socket_disable_args()),
                      _env(bouncer.url, args.fleet_io_seconds, GUNITUNE_POOL="auto",
                           GUNITUNE_HOSTS=str(hosts), GUNITUNE_WORKERS=str(workers)))] * hosts
            with _servers(tuned, out, "fleet-gunitune") as servers:
                row = _run("fleet", "gunitune+pgbouncer", servers, n, pg, args.timeout)
            row["pgbouncer"] = plan.ini_lines()
            row["pgbouncer_too_many_clients"] = bouncer.log_text().count("too many clients")
            rows.append(row)
    for row in rows:
        row["budget"] = 40 - 3
        row["per_worker_share"] = share.per_worker
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    """Run the scenarios, write the results."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.budget", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--scenario", default="budget,fleet", help="budget, fleet (default: both)")
    p.add_argument("--requests", type=int, default=1500, help="budget: storm size (1500)")
    p.add_argument("--io-seconds", type=float, default=0.5, help="budget: pg_sleep (0.5)")
    p.add_argument("--fleet-requests", type=int, default=600, help="fleet: per host (600)")
    p.add_argument("--fleet-io-seconds", type=float, default=0.2, help="fleet: pg_sleep (0.2)")
    p.add_argument("--timeout", type=float, default=300, help="client timeout per request")
    p.add_argument("--out", type=Path, help="results directory")
    args = p.parse_args(argv)
    names = [n.strip() for n in args.scenario.split(",") if n.strip()]
    if not names or set(names) - set(SCENARIOS):
        p.error(f"--scenario={args.scenario!r}: expected some of {', '.join(SCENARIOS)}")
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    out = args.out or Path("results") / f"budget-{stamp}"
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    for name in names:
        rows += budget(args, out) if name == "budget" else fleet(args, out)
    meta = {"argv": list(argv) if argv is not None else None, "cpus": usable_cpus().count,
            "driver": app_driver(), "when": stamp}  # fmt: skip
    (out / "result.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    write_report(out / "report.md", rows, meta)
    write_png(out / "budget.png", rows)
    print((out / "report.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
