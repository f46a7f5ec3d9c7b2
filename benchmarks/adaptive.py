"""The adaptive scenarios: do gunitune's per-lane database limits find the database's knee,
and follow a route whose cost changes?

* ``knee``: a storm of ``requests`` one-attempt requests on ``/dbcpu`` (CPU spent
  in PostgreSQL), opened at once, with the ``/health`` and ``/fast`` probes of
  the mixed scenarios; meanwhile the queries PostgreSQL runs at once are counted
  every 0.1 s. Past the knee, more queries at once only make each one slower:
  a good limit keeps throughput with fewer of them, and ``/fast`` gets through.
* ``switch``: ``switch_clients`` closed-loop clients (one request at a time each,
  a fresh connection and one attempt per request, never retried) on one route,
  ``/work?kind=io`` for ``switch_seconds``, then ``kind=cpu``, then ``kind=io``
  again: how long the throughput takes to settle after each switch.

For gunitune both poll its stats view (``configs.STATS_PATH``) for the lane
limits of the worker that answers; every worker's database limit (and
``/work``'s lane) over time is read back from the server log at report time
(:mod:`benchmarks.adaptive_log`), from the run's ``load_wall_start``. Each is a
:data:`benchmarks.runner.Measure`: :func:`benchmarks.runner.run_one` starts,
warms up, stops and drains the server around it. Figures:
:mod:`benchmarks.adaptive_figures`; report and plot: :mod:`benchmarks.adaptive_report`.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Iterable, Mapping
from typing import Any

from benchmarks import adaptive_figures as af
from benchmarks import lane_figures as lf
from benchmarks import storm_figures as sf
from benchmarks.adaptive_probes import ActiveQueries, LimitsPoller, query_seconds
from benchmarks.configs import IO_BODY, BenchSettings, Scenario, cpu_body
from benchmarks.lanes import calibrate_cpu_loop, storm_with_probes
from benchmarks.loadclient import RequestResult, request_once
from benchmarks.probes import Progress, ServerProbe, cpu_samples
from benchmarks.runner import HOST, Measure, server_figures
from benchmarks.server import GunicornProcess

__all__ = [
    "measure_for",
    "measure_knee",
    "measure_switch",
    "prepare",
    "seconds_per_request",
    "wall_clock",
]

KINDS = ("io", "cpu", "io")  # switch: the phases, in order
# switch: a client whose request failed waits this long before its next one, so a
# dead server (refused at once) does not turn the closed loop into a busy spin.
FAILURE_PAUSE = 0.1
# switch: time kept back from the run's deadline for the last requests to finish.
TAIL_SECONDS = 15.0
Results = list[RequestResult]


def prepare(
    scenarios: Iterable[str], s: BenchSettings, url: str, mixed_cpu: Mapping[str, Any] | None
) -> dict[str, Any]:
    """What the adaptive scenarios measure once, unloaded, before any server starts.

    ``switch_cpu``: the ``kind=cpu`` loop, calibrated like mixed-cpu's (the same
    one when mixed-cpu runs too); ``knee_query``: ``/dbcpu``'s query time alone.
    """
    found: dict[str, Any] = {}
    if "switch" in scenarios:
        if mixed_cpu is None:
            loop = s.mixed_cpu_loop or calibrate_cpu_loop(s.mixed_cpu_seconds)
            samples = cpu_samples(loop)
            mixed_cpu = {"cpu_loop": loop, "cpu_seconds_per_request": statistics.median(samples),
                         "cpu_samples": {"n": len(samples), "min": min(samples),
                                         "max": max(samples)}}  # fmt: skip
        found["switch_cpu"] = dict(mixed_cpu)
    if "knee" in scenarios:
        found["knee_query"] = query_seconds(url, s.dbcpu_rows)
    return found


def seconds_per_request(scenario: str, result: Mapping[str, Any]) -> float | None:
    """The unloaded cost of one request a scenario's limit is computed from.

    CPU seconds (``/cpu``, mixed-cpu's and switch's loops), or for ``knee`` the
    database's seconds of one ``/dbcpu`` query.
    """
    if scenario == "knee":
        return float(result["knee_query"]["seconds"])
    source = {"mixed-cpu": "mixed_cpu", "switch": "switch_cpu"}.get(scenario)
    value = (result[source] if source else result)["cpu_seconds_per_request"]
    return None if value is None else float(value)


def _limits_poller(server: GunicornProcess, route: str | None) -> LimitsPoller | None:
    # Only a server with gunitune's stats view on (gunitune's configuration) has limits.
    path = server.env.get("GUNITUNE_STATS_PATH", "")
    return LimitsPoller(server.port, path, route) if path else None


def wall_clock(monotonic: float) -> float:
    """``time.time()`` at an earlier ``time.monotonic()`` instant: the server log's clock."""
    return time.time() - (time.monotonic() - monotonic)


def _limit_figures(poller: LimitsPoller | None, t0: float) -> dict[str, Any] | None:
    if poller is None:
        return None
    series = af.limit_series(poller.samples, t0)
    return {**series, "polls": poller.polls, "failures": poller.failures}


def measure_knee(
    server: GunicornProcess, label: str, scen: Scenario, s: BenchSettings, url: str,
    deadline: float, cores: int, db_seconds: float | None,
) -> dict[str, Any]:  # fmt: skip
    """``knee``: the storm and probes' figures, active queries, lane limits over time.

    ``db_seconds``: one ``/dbcpu`` query's time alone (:func:`prepare`).
    """
    pids = server.worker_pids()
    probe = ServerProbe(url, server.port).start()
    active, limits = ActiveQueries(url), _limits_poller(server, scen.path)
    boots_before = server.count("Booting worker")
    active.start()
    if limits is not None:
        limits.start()
    try:
        with Progress(label, s.requests) as progress:
            storm, probes = asyncio.run(storm_with_probes(server.port, scen, s, deadline, progress))
    finally:
        active.stop()
        if limits is not None:
            limits.stop()
        probe.stop()
    run = server_figures(server, probe, s, boots_before)
    run["path"] = scen.path
    # The database's limit: every usable core running one query after another.
    limit = sf.cpu_limit(cores, db_seconds) if db_seconds else None
    run["storm"] = {**sf.request_figures(storm, limit), "failure_kinds": lf.failure_kinds(storm)}
    t0 = min(r.started for r in storm)
    run["load_wall_start"] = wall_clock(t0)
    run["probes"] = {path: lf.probe_figures(res, t0) for path, res in probes.items()}
    end = max(r.finished for r in storm)
    run["active_queries"] = {**af.active_figures(active.samples, t0, end),
                             "failures": active.failures}  # fmt: skip
    run["per_worker"] = {
        "completions": {str(pid): n for pid, n in lf.worker_completions(storm, pids).items()}
    }
    limit_figures = _limit_figures(limits, t0)
    if limit_figures is not None:
        run["limits"] = limit_figures
    return run


async def _phases(
    port: int, path: str, s: BenchSettings, deadline: float, progress: Progress
) -> tuple[float, Results, list[tuple[str, float, float]]]:
    """The closed loop through the phases: (its start, every result, the phases it ran)."""
    start = time.monotonic()
    p = s.switch_seconds
    # Bounded by the run's deadline: phases that do not fit are cut short (the
    # report shows their actual length), and the last requests get the tail.
    sending = min(len(KINDS) * p, max(0.0, deadline - TAIL_SECONDS))
    hard_end = start + deadline
    bodies = {"io": IO_BODY, "cpu": cpu_body(s.cpu_loop)}
    results: Results = []

    async def client(index: int) -> None:
        while (now := time.monotonic()) - start < sending:
            # The phase is the client's clock: every request sent after the switch
            # is of the new kind, those in flight finish as they were.
            kind = KINDS[min(int((now - start) // p), len(KINDS) - 1)]
            res = await request_once(
                HOST, port, f"{path}?kind={kind}", index, expected_body=bodies[kind],
                timeout=max(0.0, hard_end - now),
            )  # fmt: skip
            results.append(res)
            progress.add(sf.is_valid(res))
            index += s.switch_clients
            if not sf.is_valid(res):
                await asyncio.sleep(FAILURE_PAUSE)

    await asyncio.gather(*(client(i) for i in range(s.switch_clients)))
    phases = [(kind, i * p, min((i + 1) * p, sending)) for i, kind in enumerate(KINDS)]
    return start, sorted(results, key=lambda r: r.index), [ph for ph in phases if ph[1] < sending]


def measure_switch(
    server: GunicornProcess, label: str, scen: Scenario, s: BenchSettings, url: str,
    deadline: float, cores: int, cpu_seconds: float | None,
) -> dict[str, Any]:  # fmt: skip
    """``switch``: per-second throughput, each phase's steady level and settle time,
    the lane limits and ``/work``'s lane over time."""
    probe = ServerProbe(url, server.port).start()
    limits = _limits_poller(server, scen.path)
    boots_before = server.count("Booting worker")
    if limits is not None:
        limits.start()
    try:
        with Progress(label, None) as progress:  # a closed loop: no total ahead
            t0, results, phases = asyncio.run(
                _phases(server.port, scen.path, s, deadline, progress)
            )
    finally:
        if limits is not None:
            limits.stop()
        probe.stop()
    run = server_figures(server, probe, s, boots_before)
    run["path"] = scen.path
    run["load_wall_start"] = wall_clock(t0)
    run["storm"] = {**sf.request_figures(results, None), "failure_kinds": lf.failure_kinds(results)}
    timed = [(r.started - t0, r.finished - t0, sf.is_valid(r)) for r in results]
    run["switch"] = {
        **af.switch_figures(timed, phases, s.switch_clients),
        "clients": s.switch_clients, "phase_seconds": s.switch_seconds,
        "truncated": phases[-1][2] < len(KINDS) * s.switch_seconds if phases else True,
        "io_seconds": s.io_seconds, "cpu_loop": s.cpu_loop,
        # What each kind could reach at best, for the plot: every DB connection
        # sleeping (io), every usable core on the loop (cpu).
        "best": {
            "io": sf.io_limit(run["workers"], s.connections_per_worker, s.io_seconds),
            "cpu": sf.cpu_limit(cores, cpu_seconds) if cpu_seconds else None,
        },
    }  # fmt: skip
    limit_figures = _limit_figures(limits, t0)
    if limit_figures is not None:
        run["limits"] = limit_figures
    return run


def measure_for(scenario: str) -> Measure | None:
    """The adaptive scenario's measure, or None for the others."""
    measures: dict[str, Measure] = {"knee": measure_knee, "switch": measure_switch}
    return measures.get(scenario)
