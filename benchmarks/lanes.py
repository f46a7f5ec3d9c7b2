"""The lanes scenarios: does a cheap request get through a storm of expensive ones?

* ``mixed-io`` / ``mixed-cpu``: a storm on ``/io`` or ``/cpu`` while two probes,
  ``/health`` (no database) and ``/fast`` (``SELECT 1``), each start
  ``probe_rate`` requests a second, from the storm's start until it ends.
* ``burst``: ``burst_requests`` connections to ``/io`` opened at once by four
  client processes (one would measure its own event loop), with the connect
  time, the kernel's listen-queue overflows and every worker's memory measured.

Each is a :data:`benchmarks.runner.Measure`: :func:`benchmarks.runner.run_one`
starts, warms up, stops and drains the server around it, as for the other
scenarios. ``hello-wrk`` runs two servers at once and lives in
:mod:`benchmarks.lanes_wrk`.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

from benchmarks import lane_figures as lf
from benchmarks import storm_figures as sf
from benchmarks.burst_clients import split_burst
from benchmarks.configs import BenchSettings, Scenario
from benchmarks.loadclient import RequestResult, request_once
from benchmarks.probes import Progress, ServerProbe, cpu_samples, listen_overflows
from benchmarks.runner import HOST, Measure, server_figures
from benchmarks.server import GunicornProcess
from benchmarks.worker_probe import WorkerSampler

__all__ = ["calibrate_cpu_loop", "measure_for", "storm_with_probes"]

Results = list[RequestResult]


async def storm_with_probes(
    port: int, scen: Scenario, s: BenchSettings, deadline: float, progress: Progress
) -> tuple[Results, dict[str, Results]]:
    """``s.requests`` at once on ``scen.path``, plus ``scen.probes`` at ``s.probe_rate``/s.

    Returns the storm's results (index order) and each probe path's. The probes
    are open loop (launched on schedule whatever earlier ones did, so a stalled
    server shows as latency, not as fewer probes), one fresh connection and one
    attempt each, and stop being launched as soon as the storm is over.
    """
    end = time.monotonic() + deadline

    async def one(path: str, i: int, body: bytes | None, counted: bool) -> RequestResult:
        budget = max(0.0, end - time.monotonic())
        res = await request_once(HOST, port, path, i, expected_body=body, timeout=budget)
        if counted:
            progress.add(sf.is_valid(res))
        return res

    # Every storm coroutine exists before the first runs: the connects go out
    # together, like the seed's shell loop of background curls; the first probes
    # are scheduled right behind them.
    storm = asyncio.ensure_future(
        asyncio.gather(*(one(scen.path, i, scen.expected_body, True) for i in range(s.requests)))
    )
    fired: dict[str, list[asyncio.Future[RequestResult]]] = {p: [] for p, _ in scen.probes}
    start, k = time.monotonic(), 0
    while scen.probes and not storm.done() and time.monotonic() < end:
        for path, body in scen.probes:
            fired[path].append(asyncio.ensure_future(one(path, k, body, False)))
        k += 1
        # Waits for the schedule, but wakes the moment the storm is over (no cancel).
        await asyncio.wait({storm}, timeout=max(0.0, start + k / s.probe_rate - time.monotonic()))
    probes = {path: list(await asyncio.gather(*tasks)) for path, tasks in fired.items()}
    return list(await storm), probes


def _limit(
    scen: Scenario, s: BenchSettings, workers: int, cores: int, cpu: float | None
) -> float | None:
    if scen.path == "/cpu":
        return sf.cpu_limit(cores, cpu) if cpu is not None else None
    return sf.io_limit(workers, s.connections_per_worker, s.io_seconds)


def _run_load(
    server: GunicornProcess, label: str, scen: Scenario, s: BenchSettings, url: str,
    deadline: float, cores: int, cpu_seconds: float | None,
) -> tuple[dict[str, Any], Results, dict[str, Results], list[int]]:  # fmt: skip
    pids = server.worker_pids()
    probe = ServerProbe(url, server.port).start()
    boots_before = server.count("Booting worker")
    # Memory is the burst's question: the other loads skip the polling.
    sampler = WorkerSampler(server).start() if scen.name == "burst" else None
    try:
        with Progress(label, s.requests) as progress:
            if scen.name == "burst":
                storm = split_burst(
                    server.port, scen.path, s.requests, scen.expected_body, deadline
                )
                probes: dict[str, Results] = {}
                for result in storm:
                    progress.add(sf.is_valid(result))
            else:
                storm, probes = asyncio.run(
                    storm_with_probes(server.port, scen, s, deadline, progress)
                )
    finally:
        probe.stop()
        if sampler is not None:
            sampler.stop()
    run = server_figures(server, probe, s, boots_before)
    run["path"] = scen.path
    limit = _limit(scen, s, run["workers"], cores, cpu_seconds)
    run["storm"] = {**sf.request_figures(storm, limit), **lf.connect_figures(storm)}
    run["storm"]["failure_kinds"] = lf.failure_kinds(storm)
    if sampler is not None:
        run["memory"] = lf.memory_figures(sampler.samples, s.requests, run["workers"])
        run["memory"]["polls"] = sampler.polls
    return run, storm, probes, pids


def measure_mixed(
    server: GunicornProcess, label: str, scen: Scenario, s: BenchSettings, url: str,
    deadline: float, cores: int, cpu_seconds: float | None,
) -> dict[str, Any]:  # fmt: skip
    """``mixed-io`` / ``mixed-cpu``: the storm, its probes' figures, per-worker spread."""
    run, storm, probes, pids = _run_load(server, label, scen, s, url, deadline, cores, cpu_seconds)
    t0 = min((r.started for r in storm), default=0.0)
    run["probes"] = {path: lf.probe_figures(res, t0) for path, res in probes.items()}
    completions = lf.worker_completions(storm, pids)
    run["per_worker"] = {
        "completions": {str(pid): n for pid, n in completions.items()},
        "max_spread": lf.max_spread(completions),
    }
    if cpu_seconds is not None and scen.path == "/cpu":
        run["cpu_seconds_per_request"] = cpu_seconds
    return run


def measure_burst(
    server: GunicornProcess, label: str, scen: Scenario, s: BenchSettings, url: str,
    deadline: float, cores: int, cpu_seconds: float | None,
) -> dict[str, Any]:  # fmt: skip
    """``burst``: valid, failures by kind, connect times, memory per worker, and how
    many connections the kernel refused because a listen queue was full."""
    before = listen_overflows()
    run, _storm, _probes, _pids = _run_load(
        server, label, scen, s, url, deadline, cores, cpu_seconds
    )
    after = listen_overflows()
    if before is not None and after is not None:
        # Machine-wide counters: nothing else listens here during a run.
        run["listen_overflows"] = {key: after[key] - before[key] for key in after}
    return run


def measure_for(scenario: str) -> Measure | None:
    """The lanes scenario's measure, or None for the runner's own (io, cpu, ...)."""
    return {"mixed-io": measure_mixed, "mixed-cpu": measure_mixed, "burst": measure_burst}.get(
        scenario
    )


def calibrate_cpu_loop(target_seconds: float, probe_loop: int = 1_000_000) -> int:
    """The ``sum(range(n))`` length costing ``target_seconds`` of CPU on this machine.

    Timed like the CPU limit itself (:func:`benchmarks.probes.cpu_samples`), on a
    shorter loop scaled up: sum(range(n)) is linear in n.
    """
    per_loop = statistics.median(cpu_samples(probe_loop, seconds=0.5))
    return max(1000, round(probe_loop * target_seconds / per_loop))
