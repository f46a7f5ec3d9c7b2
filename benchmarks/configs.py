"""What the storm benchmark runs: its settings, the server configurations, the scenarios.

Three configurations of the same demo app, side by side:

* ``stock``: ``-k gevent`` with Gunicorn's defaults (1 worker, 1000 worker
  connections), the app without gunitune. What the seed ran.
* ``hand-tuned``: the seed's manual fix, ``-k gevent`` with ``workers = CPUs + 1``
  and ``worker_connections = pool_size + max_overflow``, still without gunitune.
* ``gunitune``: ``-c python:gunitune.conf`` and the extension on.

Every configuration gets the same demo app, pool and worker timeout, and
Gunicorn's control socket off (parallel servers would fight over one path).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from benchmarks.postgres import app_driver
from benchmarks.server import control_socket_disable_args, stock_args
from gunitune.database_url import parse

__all__ = [
    "ADAPTIVE",
    "ADAPTIVE_SCENARIOS",
    "CONFIG_NAMES",
    "DEFAULTS",
    "DEMO",
    "LANE_CONFIGS",
    "LANE_SCENARIOS",
    "PROBES",
    "QUICK",
    "SCENARIO_NAMES",
    "STATS_PATH",
    "BenchSettings",
    "Scenario",
    "ServerConfig",
    "build_configs",
    "make_scenario",
    "scenario_settings",
    "server_environ",
]

CONFIG_NAMES = ("stock", "hand-tuned", "gunitune")
# The lanes scenarios (benchmarks/README.md): does a cheap request get through?
LANE_SCENARIOS = ("mixed-io", "mixed-cpu", "burst", "hello-wrk")
# The adaptive-limit scenarios (benchmarks/README.md): do the lane limits find the knee
# of the database and follow a route that changes cost?
ADAPTIVE_SCENARIOS = ("knee", "switch")
SCENARIO_NAMES = ("io", "cpu", "mixed", "hello", *LANE_SCENARIOS, *ADAPTIVE_SCENARIOS)
# What the lanes and adaptive scenarios compare unless --only says otherwise.
LANE_CONFIGS = ("hand-tuned", "gunitune")
# Where gunitune's stats view answers in the adaptive scenarios (their limits over time).
STATS_PATH = "/_gunitune/stats"
IO_BODY = b"hello there!\n"
FAST_BODY = b"1\n"
HEALTH_BODY = b"ok\n"
# The mixed scenarios' probes: no database at all, and the cheapest query.
PROBES = (("/health", HEALTH_BODY), ("/fast", FAST_BODY))
APP = "demo_app:app"

# Variables that would silently change a configuration if inherited from the shell.
_INHERITED_PREFIXES = ("GUNITUNE_", "DEMO_")
_INHERITED_NAMES = ("WEB_CONCURRENCY", "GUNICORN_CMD_ARGS", "DATABASE_URL")


@dataclass(frozen=True)
class BenchSettings:
    """One benchmark invocation's parameters (seconds unless noted)."""

    requests: int = 3000
    io_seconds: float = 5.0
    cpu_loop: int = 100_000_000
    workers: int | None = None
    pool_size: int = 5
    max_overflow: int = 10
    pool_timeout: float = 30.0
    timeout: int = 30
    deadline: float = 600.0
    global_deadline: float = 4800.0
    trickle_rate: float = 5.0
    hello_requests: int = 20_000
    hello_concurrency: int = 50
    wrk_duration: float = 10.0
    quick: bool = False
    probe_rate: float = 4.0  # mixed-io/-cpu: requests/s of each probe route
    mixed_cpu_seconds: float = 0.06  # mixed-cpu: /cpu's loop is sized to this CPU time
    mixed_cpu_loop: int | None = None  # mixed-cpu: that loop given instead of calibrated
    burst_requests: int = 10_000
    burst_io_seconds: float = 0.4
    wrk_rounds: int = 3  # hello-wrk: alternating runs per configuration
    dbcpu_rows: int = 300_000  # knee: /dbcpu's generate_series length (~25 ms of DB CPU)
    switch_seconds: float = 20.0  # switch: length of each phase (io, cpu, io)
    switch_clients: int = 200  # switch: closed-loop clients, one request at a time each
    switch_io_seconds: float = 0.2  # switch: pg_sleep of /work?kind=io
    stats_path: str = ""  # gunitune's GUNITUNE_STATS_PATH (set by the adaptive scenarios)

    @property
    def connections_per_worker(self) -> int:
        """What one worker's pool can hold (unlimited overflow counted as pool_size)."""
        return self.pool_size + max(self.max_overflow, 0)


DEFAULTS = BenchSettings()

# Small enough for CI (~1 min for io+cpu), yet stock still fails for real reasons:
# 300 concurrent /io requests of 0.5 s need 10 s on stock's 15 connections, so the
# requests still queued in SQLAlchemy's pool after 5 s get QueuePool timeouts (500s);
# 300 /cpu requests of ~0.05 s are 15 s of CPU hoarded by stock's single worker,
# whose event loop stalls for seconds at a time (connections reset). The pool
# timeout is not lower because gunitune's 503 queue timeout is half of it: at 2 s,
# gunitune shed 1-7 of the 300 /cpu requests in about one run out of three here.
QUICK = dataclasses.replace(
    DEFAULTS,
    requests=300,
    io_seconds=0.5,
    cpu_loop=3_000_000,
    pool_timeout=5.0,
    timeout=10,
    deadline=120.0,
    global_deadline=900.0,
    trickle_rate=20.0,
    hello_requests=3000,
    wrk_duration=3.0,
    quick=True,
    burst_requests=500,
    wrk_rounds=2,
)

# `--demo`: one mixed-io storm, hand-tuned vs gunitune, in about 2-3 minutes on 2
# cores. 3 workers x (4 + 6) connections / 0.5 s = 60 /io per second, so the 1500
# requests take 25 s at best: long enough for the probes' latency to tell.
DEMO = dataclasses.replace(
    DEFAULTS,
    requests=1500,
    io_seconds=0.5,
    pool_size=4,
    max_overflow=6,
    deadline=180.0,
    global_deadline=600.0,
)

# The adaptive scenarios alone (no --quick/--demo): knee's storm of 1500 /dbcpu
# queries (~25 ms of DB CPU each) on 3 workers x (4 + 6) connections, so the
# hand-tuned fix runs up to 30 queries at once on 2 cores.
ADAPTIVE = dataclasses.replace(DEFAULTS, requests=1500, pool_size=4, max_overflow=6)


@dataclass(frozen=True)
class ServerConfig:
    """How to start one configuration with ``benchmarks.server.GunicornProcess``."""

    name: str
    description: str
    config: str | None
    args: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)


def demo_env(s: BenchSettings) -> dict[str, str]:
    """The demo app's ``DEMO_*`` environment (identical for every configuration)."""
    return {
        "DEMO_POOL_SIZE": str(s.pool_size),
        "DEMO_MAX_OVERFLOW": str(s.max_overflow),
        "DEMO_POOL_TIMEOUT": str(s.pool_timeout),
        "DEMO_IO_SECONDS": str(s.io_seconds),
        "DEMO_CPU_LOOP": str(s.cpu_loop),
        "DEMO_DBCPU_ROWS": str(s.dbcpu_rows),
        # psycogreen's patch, as any gevent + psycopg2 app has it: the configurations
        # differ in Gunicorn settings and gunitune, not in whether the driver blocks.
        "DEMO_GREEN": "on",
    }


def build_configs(
    s: BenchSettings, cpus: int, only: tuple[str, ...] = CONFIG_NAMES
) -> list[ServerConfig]:
    """The configurations named in ``only``, in ``CONFIG_NAMES`` order."""
    app_env = demo_env(s)
    hand_workers = s.workers if s.workers is not None else cpus + 1
    gunitune_env = {
        **app_env,
        "DEMO_GUNITUNE": "on",
        "GUNITUNE_POOL_SIZE": str(s.pool_size),
        "GUNITUNE_MAX_OVERFLOW": str(s.max_overflow),
        "GUNITUNE_POOL_TIMEOUT": str(s.pool_timeout),
        "GUNITUNE_TIMEOUT": str(s.timeout),
    }
    if s.workers is not None:
        gunitune_env["GUNITUNE_WORKERS"] = str(s.workers)
    if s.stats_path:
        gunitune_env["GUNITUNE_STATS_PATH"] = s.stats_path
    configs = [
        ServerConfig(
            "stock",
            "-k gevent, Gunicorn defaults (1 worker, 1000 worker connections)",
            None,
            tuple(stock_args(timeout=s.timeout)),
            {**app_env, "DEMO_GUNITUNE": "off"},
        ),
        ServerConfig(
            "hand-tuned",
            f"-k gevent, {hand_workers} workers, {s.connections_per_worker} worker connections",
            None,
            tuple(stock_args(hand_workers, s.connections_per_worker, s.timeout)),
            {**app_env, "DEMO_GUNITUNE": "off"},
        ),
        ServerConfig(
            "gunitune",
            "-c python:gunitune.conf, GuniTune extension on",
            "python:gunitune.conf",
            control_socket_disable_args(),
            gunitune_env,
        ),
    ]
    return [c for c in configs if c.name in only]


def server_environ(config: ServerConfig, database_url: str) -> dict[str, str]:
    """This process's environment without inherited tuning knobs, plus the config's."""
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(_INHERITED_PREFIXES) and k not in _INHERITED_NAMES
    }
    # The demo's driver: psycopg2 unless PG_DRIVER=psycopg names psycopg 3; a URL
    # that already names a driver keeps it.
    url = parse(database_url)
    if url.drivername in ("postgres", "postgresql"):
        url = url.set(drivername=f"postgresql+{app_driver()}")
    app_url = url.render_as_string(hide_password=False)
    return {**base, "PYTHONUNBUFFERED": "1", **config.env, "DATABASE_URL": app_url}


@dataclass(frozen=True)
class Scenario:
    """A load shape: a storm on ``path``, optionally with a trickle on ``trickle_path``."""

    name: str
    path: str
    expected_body: bytes
    trickle_path: str | None = None
    trickle_body: bytes | None = None
    closed_loop: bool = False  # hello: fixed requests at moderate concurrency
    probes: tuple[tuple[str, bytes], ...] = ()  # mixed-io/-cpu: (path, body) at probe_rate


def cpu_body(cpu_loop: int) -> bytes:
    """``str(sum(range(n)))`` as the demo returns it, without spending the CPU."""
    return str(cpu_loop * (cpu_loop - 1) // 2 if cpu_loop > 0 else 0).encode()


def make_scenario(name: str, s: BenchSettings) -> Scenario:
    """The scenario called ``name`` for these settings."""
    if name == "io":
        return Scenario("io", "/io", IO_BODY)
    if name == "cpu":
        return Scenario("cpu", "/cpu", cpu_body(s.cpu_loop))
    if name == "mixed":
        return Scenario("mixed", "/io", IO_BODY, "/fast", FAST_BODY)
    if name == "hello":
        return Scenario("hello", "/hello", IO_BODY, closed_loop=True)
    if name == "mixed-io":
        return Scenario(name, "/io", IO_BODY, probes=PROBES)
    if name == "mixed-cpu":
        return Scenario(name, "/cpu", cpu_body(s.cpu_loop), probes=PROBES)
    if name == "burst":
        return Scenario(name, "/io", IO_BODY)
    if name == "hello-wrk":
        return Scenario(name, "/hello", IO_BODY, closed_loop=True)
    if name == "knee":
        return Scenario(name, "/dbcpu", f"{max(s.dbcpu_rows, 0)}\n".encode(), probes=PROBES)
    if name == "switch":
        # Its path takes ?kind=io or ?kind=cpu by phase; each kind has its own body.
        return Scenario(name, "/work", IO_BODY)
    raise ValueError(f"unknown scenario {name!r}: expected one of {', '.join(SCENARIO_NAMES)}")


def scenario_settings(
    name: str, s: BenchSettings, cpus: int, cpu_loop: int | None = None
) -> BenchSettings:
    """The settings a scenario's servers and load use: ``s`` with its own sizes.

    ``burst`` has its own storm size and IO time; ``mixed-cpu`` its own loop
    (``cpu_loop``, calibrated by the caller); ``hello-wrk`` pins both
    configurations to the same worker count, which an overhead figure needs.
    ``knee`` and ``switch`` open gunitune's stats view (their limits over time);
    ``switch`` has its own IO time and the calibrated loop too.
    """
    if name == "knee":
        return dataclasses.replace(s, stats_path=STATS_PATH)
    if name == "switch":
        loop = cpu_loop if cpu_loop is not None else s.cpu_loop
        return dataclasses.replace(
            s, stats_path=STATS_PATH, io_seconds=s.switch_io_seconds, cpu_loop=loop
        )
    if name == "burst":
        return dataclasses.replace(s, requests=s.burst_requests, io_seconds=s.burst_io_seconds)
    if name == "mixed-cpu" and cpu_loop is not None:
        return dataclasses.replace(s, cpu_loop=cpu_loop)
    if name == "hello-wrk" and s.workers is None:
        return dataclasses.replace(s, workers=cpus + 1)
    return s
