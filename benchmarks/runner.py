"""One benchmark run: start a configuration, load it with a scenario, collect, stop.

The load is the harness's one-attempt client (:func:`benchmarks.loadclient.request_once`):
a storm opens every connection at once, one request each, never retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import psycopg2

from benchmarks import storm_figures
from benchmarks.configs import BenchSettings, Scenario, ServerConfig, server_environ
from benchmarks.loadclient import RequestResult, request_once
from benchmarks.probes import Progress, ServerProbe
from benchmarks.server import GunicornProcess
from gunitune.database_url import parse

__all__ = ["HOST", "Measure", "libpq_url", "run_one", "server_figures", "warm_up"]

HOST = "127.0.0.1"
Results = list[RequestResult]
# (server, label, scenario, settings, database url, deadline, cores, CPU s/request) -> figures
Measure = Callable[
    [GunicornProcess, str, Scenario, BenchSettings, str, float, int, float | None],
    dict[str, Any],
]


def libpq_url(url: str) -> str:
    """``postgres://`` / ``postgresql+driver://`` as the plain URL psycopg2 accepts.

    Through SQLAlchemy's URL (:func:`gunitune.database_url.parse`), so a password
    with a raw ``@`` or ``/`` comes out percent-encoded, as libpq wants it.
    """
    return parse(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def _storm(
    port: int, scen: Scenario, s: BenchSettings, deadline: float, progress: Progress
) -> tuple[Results, Results]:
    end = time.monotonic() + deadline

    async def one(path: str, i: int, body: bytes | None, counted: bool) -> RequestResult:
        res = await request_once(
            HOST, port, path, i, expected_body=body, timeout=end - time.monotonic()
        )
        if counted:
            progress.add(storm_figures.is_valid(res))
        return res

    # Every coroutine exists before the first runs: the connects go out together,
    # like the seed's shell loop of background curls.
    storm = asyncio.ensure_future(
        asyncio.gather(*(one(scen.path, i, scen.expected_body, True) for i in range(s.requests)))
    )
    trickle: list[asyncio.Future[RequestResult]] = []
    if scen.trickle_path is not None:
        # Open loop until the storm is over: a stalled server shows up as latency,
        # not as fewer /fast requests. It starts once the storm's connects are out.
        start = time.monotonic() + min(0.5, s.io_seconds)
        while not storm.done() and time.monotonic() < end:
            due = start + len(trickle) / s.trickle_rate
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(storm), max(0.0, due - time.monotonic()))
            if not storm.done():
                coro = one(scen.trickle_path, len(trickle), scen.trickle_body, False)
                trickle.append(asyncio.ensure_future(coro))
    return list(await storm), list(await asyncio.gather(*trickle))


async def _closed_loop(
    port: int, scen: Scenario, s: BenchSettings, deadline: float, progress: Progress
) -> Results:
    # `hello`: a fixed number of requests, `hello_concurrency` in flight at a time,
    # each on a fresh connection like the storms (keep-alive would flatter nobody).
    end = time.monotonic() + deadline
    todo = iter(range(s.hello_requests))
    results: Results = []

    async def lane() -> None:
        for i in todo:
            res = await request_once(
                HOST, port, scen.path, i, expected_body=scen.expected_body,
                timeout=max(0.0, min(30.0, end - time.monotonic())),
            )  # fmt: skip
            progress.add(storm_figures.is_valid(res))
            results.append(res)

    await asyncio.gather(*(lane() for _ in range(s.hello_concurrency)))
    return sorted(results, key=lambda r: r.index)


def _run_wrk(port: int, scen: Scenario, s: BenchSettings) -> dict[str, Any]:
    url = f"http://{HOST}:{port}{scen.path}"
    cmd = ["wrk", "-t2", f"-c{s.hello_concurrency}", f"-d{s.wrk_duration:g}s", "--latency", url]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=s.wrk_duration + 60)
    return storm_figures.wrk_figures(storm_figures.parse_wrk(out.stdout))


def warm_up(server: GunicornProcess, timeout: float = 20) -> None:
    """Wait until every worker has answered: the storm must not find one still importing."""
    workers, seen = set(server.worker_pids()), set()
    end = time.monotonic() + timeout

    async def batch() -> None:
        batch = [request_once(HOST, server.port, "/hello", i, timeout=5) for i in range(20)]
        for res in await asyncio.gather(*batch):
            seen.add(int(res.headers.get("x-served-by", "0")))

    while not workers <= seen and time.monotonic() < end:
        asyncio.run(batch())


_SESSIONS = (
    "SELECT {} FROM pg_stat_activity WHERE datname = current_database()"
    " AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
)


def _sessions(url: str) -> int:
    conn = psycopg2.connect(url, connect_timeout=10)
    with contextlib.closing(conn), conn.cursor() as cur:
        cur.execute(_SESSIONS.format("count(*)"))
        return int((cur.fetchone() or (0,))[0])


def _drain(url: str, own_cluster: bool, wait: float, baseline: int) -> int:
    """Wait until the app's DB sessions are back to ``baseline``; return how many more remain.

    A killed worker's backend sleeps on in pg_sleep; in our own cluster (where every
    session is ours) leftovers are terminated so the next run's peak is its own.
    """
    end = time.monotonic() + wait
    with contextlib.closing(psycopg2.connect(url, connect_timeout=10)) as conn:
        conn.autocommit = True
        with conn.cursor() as cur:
            while True:
                cur.execute(_SESSIONS.format("count(*)"))
                left = max(0, int((cur.fetchone() or (0,))[0]) - baseline)
                if not left or time.monotonic() > end:
                    break
                time.sleep(0.25)
            if left and own_cluster:
                cur.execute(_SESSIONS.format("pg_terminate_backend(pid)"))
    return left


def _limit(
    scen: Scenario, s: BenchSettings, workers: int, cores: int, cpu: float | None
) -> float | None:
    if scen.name in ("io", "mixed") and s.max_overflow >= 0:
        return storm_figures.io_limit(workers, s.connections_per_worker, s.io_seconds)
    if scen.name == "cpu" and cpu is not None:
        return storm_figures.cpu_limit(cores, cpu)
    return None


def _measure(
    server: GunicornProcess,
    label: str,
    scen: Scenario,
    s: BenchSettings,
    url: str,
    deadline: float,
    cores: int,
    cpu_seconds: float | None,
) -> dict[str, Any]:
    run: dict[str, Any] = {}
    workers = server.expected_workers or 1
    probe = ServerProbe(url, server.port).start()
    boots_before = server.count("Booting worker")
    storm: Results | None = None
    trickle: Results = []
    try:
        total = s.hello_requests if scen.closed_loop else s.requests
        with Progress(label, total) as progress:
            if scen.closed_loop and shutil.which("wrk"):
                run["storm"] = _run_wrk(server.port, scen, s)
            elif scen.closed_loop:
                storm = asyncio.run(_closed_loop(server.port, scen, s, deadline, progress))
            else:
                storm, trickle = asyncio.run(_storm(server.port, scen, s, deadline, progress))
    finally:
        probe.stop()
    limit = _limit(scen, s, workers, cores, cpu_seconds)
    if storm is not None:
        run["storm"] = storm_figures.request_figures(storm, limit)
    if scen.trickle_path is not None:
        run["trickle_path"] = scen.trickle_path
        run["trickle"] = storm_figures.request_figures(trickle, None)
    run.update(server_figures(server, probe, s, boots_before))
    return run


def server_figures(
    server: GunicornProcess, probe: ServerProbe, s: BenchSettings, boots_before: int
) -> dict[str, Any]:
    """The server table's figures of a run whose load just ended, plus worker counts."""
    workers = server.expected_workers or 1
    return {
        # Counted as soon as the load is over: the shutdown must not add to them.
        "server": {
            "worker_timeouts": server.count("WORKER TIMEOUT"),
            "extra_worker_boots": server.count("Booting worker") - boots_before,
            "queuepool_errors": server.count("QueuePool limit"),
            "peak_db_connections": probe.peak_db,
            "peak_accept_queue": probe.peak_queue,
            "probe_samples": probe.samples,
        },
        "workers": workers,
        "db_connections_allowed": workers * s.connections_per_worker,
    }


def run_one(
    server_config: ServerConfig,
    scen: Scenario,
    s: BenchSettings,
    url: str,
    *,
    deadline: float,
    log_path: Path,
    cpu_seconds: float | None,
    cores: int,
    own_cluster: bool,
    measure: Measure | None = None,
) -> dict[str, Any]:
    """Start ``server_config``, run ``scen`` against it within ``deadline`` s, stop it.

    ``measure`` loads the server and returns the run's figures (default: the
    io/cpu/mixed/hello load of this module; the lanes scenarios bring their own).
    """
    run: dict[str, Any] = {"config": server_config.name, "scenario": scen.name}
    if deadline < 10:
        return {**run, "skipped": "global deadline reached"}
    server = GunicornProcess(
        config=server_config.config, args=server_config.args, log_path=log_path
    )
    # Built from scratch, not merged into os.environ: a GUNITUNE_* or DEMO_* left
    # in the shell must not leak into the stock configuration.
    server.env = server_environ(server_config, url)
    baseline = _sessions(url)  # other clients of a shared DATABASE_URL
    # Our previous server is gone by now, so CPU use here is someone else's: the
    # report flags runs that started on a busy machine.
    run["cpu_busy_before"] = psutil.cpu_percent(interval=1.0)
    try:
        server.start(ready_timeout=min(60.0, deadline), probe_path="/hello")
        warm_up(server)
    except (RuntimeError, TimeoutError) as exc:
        # A configuration that cannot boot is a result, not a reason to drop the others.
        server.stop(grace=5)
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return {**run, "skipped": f"server did not start ({first_line}); log: {log_path}"}
    # What the master (and so its workers) got: a storm needs one fd per connection.
    with contextlib.suppress(psutil.Error):
        run["server_nofile"] = psutil.Process(server.pid).rlimit(psutil.RLIMIT_NOFILE)[0]
    try:
        run.update(
            (measure or _measure)(
                server,
                f"{server_config.name} {scen.name}",
                scen,
                s,
                url,
                deadline,
                cores,
                cpu_seconds,
            )
        )
        run.update(argv=server.argv[1:], log=str(log_path))
    finally:
        server.stop(grace=5)
    run["server"]["db_connections_before"] = baseline
    run["server"]["leftover_db_connections"] = _drain(url, own_cluster, s.io_seconds + 5, baseline)
    return run
