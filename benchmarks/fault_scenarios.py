"""The four fault scenarios of :mod:`benchmarks.faults` (issue 10, "faults under load").

Each ``run_<name>(ctx)`` starts ``gunicorn -c python:gunitune.conf demo_app:app``
on the context's PostgreSQL, loads it, breaks and heals the database on a fixed
schedule and returns its figures with one pass/fail row per target of the issue.
A server that misbehaves (exits at start, hangs, answers 500) is a result, never an
exception; the fault is lifted and every process started is stopped before return.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import fault_figures as ff
from benchmarks.configs import FAST_BODY, HEALTH_BODY, BenchSettings, build_configs, server_environ
from benchmarks.fault_load import Load, Scenario, proxied, run_load, start_server, wait_for_200
from benchmarks.loadclient import request_once
from benchmarks.postgres import PostgresCluster
from benchmarks.runner import HOST
from benchmarks.server import GunicornProcess

__all__ = ["QUICK", "SCENARIOS", "TARGETS", "Ctx", "FaultSettings"]

# The targets.
TARGETS = {"ok_share": 0.95, "full_service_s": 5.0, "cold_serve_s": 5.0}
# blackhole's GUNITUNE_QUEUE_TIMEOUT unless --queue-timeout says otherwise: its target
# ("503 within the queue timeout") needs one, and gunitune's default is off.
BLACKHOLE_QUEUE_TIMEOUT = 5.0
QUEUE_SLACK = 1.0  # blackhole: seconds allowed beyond the queue timeout


@dataclass(frozen=True)
class FaultSettings:
    """One invocation's parameters (seconds unless noted)."""

    requests: int = 1200
    io_seconds: float = 0.4  # /io's pg_sleep
    pool_size: int = 4
    max_overflow: int = 6
    pool_timeout: float = 30.0
    workers: int | None = None  # None: gunitune decides
    fault: str = "stop"  # restart, cold: "stop" (pg_ctl stop -m fast) or "proxy" (refuse+reset)
    fault_at: float = 4.0  # seconds into the storm (restart, blackhole) or SIGHUP (reload)
    outage: float = 4.0  # restart: database started again this long after it was stopped
    drop_seconds: float = 30.0  # blackhole: length of the drop
    queue_timeout: float | None = None  # GUNITUNE_QUEUE_TIMEOUT (blackhole: 5 unless given)
    probe_interval: float = 0.2
    recovery_window: float = 10.0  # probing goes on this long after the database returns
    request_timeout: float = 90.0  # client timeout of a storm request
    probe_timeout: float = 30.0
    max_requests: int = 200  # reload: --max-requests
    max_requests_jitter: int = 50
    cold_wait: float = 30.0  # cold: longest wait for the DB route once PostgreSQL is back
    quick: bool = False


QUICK = FaultSettings(
    requests=200, fault_at=1.5, outage=2.0, drop_seconds=4.0, recovery_window=6.0,
    request_timeout=40.0, probe_timeout=15.0, max_requests=30, max_requests_jitter=10,
    cold_wait=15.0, quick=True,
)  # fmt: skip


@dataclass
class Ctx:
    """What every scenario runs against: the cluster, the settings, where logs go."""

    cluster: PostgresCluster
    s: FaultSettings
    logs: Path

    def server_env(self, url: str, queue_timeout: float | None) -> tuple[list[str], dict[str, str]]:
        """Gunicorn's extra args and environment: the storm benchmark's gunitune config."""
        s = self.s
        bench = BenchSettings(io_seconds=s.io_seconds, pool_size=s.pool_size,
                              max_overflow=s.max_overflow, pool_timeout=s.pool_timeout,
                              workers=s.workers)  # fmt: skip
        config = build_configs(bench, 1, ("gunitune",))[0]
        env = server_environ(config, url)
        if queue_timeout is not None:
            env["GUNITUNE_QUEUE_TIMEOUT"] = str(queue_timeout)
        return list(config.args), env


def _storm_scenario(s: FaultSettings) -> Scenario:
    return Scenario(s.requests, s.request_timeout, s.probe_interval, s.probe_timeout,
                    s.recovery_window)  # fmt: skip


def _run(
    ctx: Ctx, name: str, url: str, queue_timeout: float | None, extra_args: list[str],
    actions: Callable[[GunicornProcess], list[Any]], health: bool = False,
) -> tuple[dict[str, Any], Load | None]:  # fmt: skip
    """Start the server, run the load with ``actions(server)``, stop it: (figures, load)."""
    args, env = ctx.server_env(url, queue_timeout)
    server, failed = start_server([*args, *extra_args], env, ctx.logs / f"{name}.log")
    if failed is not None:
        return {"error": failed, "log": str(server.log_path)}, None
    try:
        pids, boots = server.worker_pids(), server.count("Booting worker")
        load = run_load(server, _storm_scenario(ctx.s), actions(server), health)
        log = server.log_text()
        srv = ff.log_figures(log, pids, server.worker_pids())
        srv["boots_during"] = log.count("Booting worker") - boots
        srv["master_alive"] = server.is_running()
    finally:
        server.stop()
    run: dict[str, Any] = {"workers": len(pids), "log": str(server.log_path), "server": srv,
                           "events": {k: round(v, 3) for k, v in load.events.items()},
                           "storm": ff.counts(load.storm),
                           "probes": {p: ff.probe_figures(r, load.t0)
                                      for p, r in load.probes.items()},
                           "timeline": [[round(r.started - load.t0, 3),
                                         round(r.finished - load.t0, 3), ff.outcome(r)]
                                        for r in load.storm]}  # fmt: skip
    return run, load


def _error_targets(run: dict[str, Any], names: list[tuple[str, str]]) -> dict[str, Any]:
    run["targets"] = [ff.target(n, w, run["error"], False) for n, w in names]
    return run


def _storm_targets(run: dict[str, Any], back_s: float | None, load: Load) -> list[dict[str, Any]]:
    st, srv = run["storm"], run["server"]
    db = [*load.storm, *load.probes["/fast"]]
    fs = ff.full_service(db, load.t0, back_s) if back_s is not None else None
    run["full_service_s"] = fs
    rest = st["requests"] - st["200"] - st["503+RA"]
    deaths = srv["boots_during"] + len(srv["workers_gone"])
    return [
        ff.target("200s", f">= {TARGETS['ok_share']:.0%}", st["ok_share"],
                  st["ok_share"] is not None and st["ok_share"] >= TARGETS["ok_share"]),
        ff.target("the rest: 503 + Retry-After", "0 other outcomes", rest, rest == 0),
        ff.target("no 500", "0", st["500"], st["500"] == 0),
        ff.target("no reset", "0", st["reset"], st["reset"] == 0),
        ff.target("no worker death", "0 boots, 0 gone", deaths, deaths == 0),
        ff.target("full service after the DB returns", f"<= {TARGETS['full_service_s']:g} s",
                  fs, fs is not None and fs <= TARGETS["full_service_s"]),
    ]  # fmt: skip


def run_restart(ctx: Ctx) -> dict[str, Any]:
    """A storm; the database stopped ``fault_at`` s in, started ``outage`` s later."""
    s = ctx.s
    with proxied(ctx.cluster, s.fault) as fault:
        back_at = s.fault_at + s.outage
        run, load = _run(ctx, "restart", fault.url, s.queue_timeout, [], lambda server: [
            (s.fault_at, "down", fault.down), (back_at, "back", fault.up)])  # fmt: skip
    run["fault"] = s.fault
    if load is None:
        names = [("200s", ""), ("no 500", ""), ("full service", "")]
        return _error_targets(run, names)
    run["targets"] = _storm_targets(run, load.events["back_done"], load)
    return run


def run_blackhole(ctx: Ctx) -> dict[str, Any]:
    """A storm; the proxy drops everything from ``fault_at`` s for ``drop_seconds``."""
    s = ctx.s
    qt = s.queue_timeout if s.queue_timeout is not None else BLACKHOLE_QUEUE_TIMEOUT
    with proxied(ctx.cluster, "proxy") as fault:
        proxy = fault.proxy
        assert proxy is not None
        run, load = _run(ctx, "blackhole", fault.url, qt, [], lambda server: [
            (s.fault_at, "drop", proxy.drop),
            (s.fault_at + s.drop_seconds, "back", proxy.passthrough)], health=True)  # fmt: skip
    run["queue_timeout"] = qt
    if load is None:
        return _error_targets(run, [("503 within the queue timeout", ""), ("service", "")])
    start, end = load.events["drop"], load.events["back_done"]
    db = [*load.storm, *load.probes["/fast"]]
    during = ff.answered_within(db, load.t0, start, end)
    run["during_drop"] = during
    health = [r for r in load.probes["/health"] if start <= r.started - load.t0 <= end]
    run["health_during_drop"] = {k: v for k, v in ff.counts(health).items()}
    wanted = qt + QUEUE_SLACK
    bad = {k: n for k, n in during["outcomes"].items() if k not in ("200", "503+RA")}
    ok = during["max_wait"] is not None and during["max_wait"] <= wanted and not bad
    targets = _storm_targets(run, end, load)
    run["targets"] = [
        ff.target("DB requests open in the drop: 200 or 503+RA within the queue timeout",
                  f"<= {wanted:g} s, only 200/503+RA", {"max_wait": during["max_wait"],
                                                        "other": bad}, ok),
        *[t for t in targets if t["target"] in ("no reset", "no worker death",
                                                "full service after the DB returns")],
    ]  # fmt: skip
    return run


def run_reload(ctx: Ctx) -> dict[str, Any]:
    """A storm with ``--max-requests`` recycling, and SIGHUP to the master ``fault_at`` s in."""
    s = ctx.s
    extra = ["--max-requests", str(s.max_requests),
             "--max-requests-jitter", str(s.max_requests_jitter)]  # fmt: skip
    run, load = _run(ctx, "reload", ctx.cluster.app_url, s.queue_timeout, extra, lambda server: [
        (s.fault_at, "hup", lambda: server.send_signal("HUP"))])  # fmt: skip
    if load is None:
        return _error_targets(run, [("nothing lost", "")])
    requests = [*load.storm, *load.probes["/fast"]]
    lost = sum(ff.outcome(r) not in ("200", "503+RA") for r in requests)
    srv = run["server"]
    run["targets"] = [
        ff.target("nothing lost (storm + probe)", "0 not 200/503+RA", lost, lost == 0),
        ff.target("no 500", "0", run["storm"]["500"], run["storm"]["500"] == 0),
        ff.target("workers replaced (the scenario did reload)", ">= 1", srv["boots_during"],
                  srv["boots_during"] >= 1),
        ff.target("master alive", "yes", srv["master_alive"], srv["master_alive"]),
    ]  # fmt: skip
    return run


def _one(port: int, path: str, body: bytes, timeout: float) -> dict[str, Any]:
    r = asyncio.run(request_once(HOST, port, path, expected_body=body, timeout=timeout))
    return {"status": r.status, "outcome": ff.outcome(r), "latency": round(r.latency, 3),
            "retry_after": r.headers.get("retry-after"), "error": r.error}  # fmt: skip


def run_cold(ctx: Ctx) -> dict[str, Any]:
    """Gunicorn started while PostgreSQL is down; then PostgreSQL comes back."""
    s = ctx.s
    run: dict[str, Any] = {"fault": s.fault}
    with proxied(ctx.cluster, s.fault) as fault:
        fault.down()
        args, env = ctx.server_env(fault.url, s.queue_timeout)
        server, failed = start_server(args, env, ctx.logs / "cold.log", ready_timeout=30)
        try:
            run.update(master_started=failed is None, start_error=failed, log=str(server.log_path))
            if failed is None:
                run["health"] = _one(server.port, "/health", HEALTH_BODY, 10)
                run["db_route_down"] = _one(server.port, "/fast", FAST_BODY, 30)
            fault.up()
            if failed is None and server.is_running():
                run["after_back"] = wait_for_200(server.port, "/fast", FAST_BODY,
                                                 s.probe_interval, s.cold_wait)  # fmt: skip
            run["master_alive_at_end"] = server.is_running()
            run["master_rc"] = server.returncode
            run["server"] = ff.log_figures(server.log_text(), [], [])
        finally:
            server.stop()
    # A master that is not running cannot meet a target: FAIL, and the value says why.
    gone = {"outcome": "master not running"}
    health, down = run.get("health", gone), run.get("db_route_down", gone)
    serve = run.get("after_back", {}).get("seconds", "master not running" if failed else None)
    limit = TARGETS["cold_serve_s"]
    run["targets"] = [
        ff.target("master starts and stays up", "yes", failed or run["master_alive_at_end"],
                  failed is None and run["master_alive_at_end"]),
        ff.target("/health while the DB is down", "200", health["outcome"],
                  health["outcome"] == "200"),
        ff.target("DB route while the DB is down", "503 + Retry-After", down["outcome"],
                  down["outcome"] == "503+RA"),
        ff.target("DB route serves after the DB returns", f"<= {limit:g} s", serve,
                  isinstance(serve, float) and serve <= limit),
    ]  # fmt: skip
    return run


SCENARIOS: dict[str, Callable[[Ctx], dict[str, Any]]] = {
    "restart": run_restart, "cold": run_cold, "blackhole": run_blackhole, "reload": run_reload,
}  # fmt: skip


def with_overrides(base: FaultSettings, **given: Any) -> FaultSettings:
    """``base`` with the given fields replaced (None values ignored)."""
    return dataclasses.replace(base, **{k: v for k, v in given.items() if v is not None})
