"""The parts the fault scenarios (:mod:`benchmarks.fault_scenarios`) are made of:
the database fault itself, the load with its probes and fault schedule, starting a
server that may refuse to start, polling until a route serves again.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import fault_figures as ff
from benchmarks.configs import FAST_BODY, HEALTH_BODY, IO_BODY
from benchmarks.fault_proxy import FaultProxy
from benchmarks.loadclient import RequestResult, request_once, storm
from benchmarks.postgres import PostgresCluster
from benchmarks.runner import HOST, warm_up
from benchmarks.server import GunicornProcess

__all__ = [
    "Fault", "Load", "Scenario", "first_error_line", "proxied", "run_load", "start_server",
    "wait_for_200",
]  # fmt: skip

Action = tuple[float, str, Callable[[], object]]  # (seconds after t0, event name, callable)


class Fault:
    """The database going down and coming back: a real stop or the proxy's refuse+reset.

    ``url`` is what the app connects to: the cluster itself, or the proxy in front of it.
    """

    def __init__(self, cluster: PostgresCluster, how: str, proxy: FaultProxy | None) -> None:
        if how not in ("stop", "proxy") or (how == "proxy") != (proxy is not None):
            raise ValueError(f"fault {how!r} needs {'a' if how == 'proxy' else 'no'} proxy")
        self.cluster, self.how, self.proxy = cluster, how, proxy
        self.is_down = False

    @property
    def url(self) -> str:
        if self.proxy is None:
            return self.cluster.app_url
        return self.cluster.app_url.replace(f":{self.cluster.port}/", f":{self.proxy.port}/")

    def down(self) -> None:
        self.is_down = True
        if self.proxy is not None:
            self.proxy.down()
        else:
            self.cluster.stop_server()

    def up(self) -> None:
        """Bring the database back; returns once it accepts logins (from the app's side)."""
        if self.proxy is not None:
            self.proxy.passthrough()
        else:
            self.cluster.start_server()
        self.is_down = False


@contextlib.contextmanager
def proxied(cluster: PostgresCluster, how: str) -> Iterator[Fault]:
    """A :class:`Fault` (with its proxy for ``how == "proxy"``), healed and stopped at exit."""
    proxy = FaultProxy(cluster.host, cluster.port).start() if how == "proxy" else None
    fault = Fault(cluster, how, proxy)
    try:
        yield fault
    finally:
        try:
            # Whatever happened, the next scenario finds the database up.
            if fault.is_down:
                fault.up()
        finally:
            if proxy is not None:
                proxy.stop()


@dataclass
class Load:
    """What :func:`run_load` saw: the storm, each probe's requests, the fault events."""

    t0: float
    storm: list[RequestResult]
    probes: dict[str, list[RequestResult]]
    events: dict[str, float]  # event name -> seconds since t0 (``<name>_done`` once done)


@dataclass(frozen=True)
class Scenario:
    """The load shape shared by the storm scenarios."""

    requests: int
    request_timeout: float
    probe_interval: float
    probe_timeout: float
    recovery_window: float  # probing goes on this long after the "back" event


async def _probe(
    port: int, path: str, body: bytes, every: float, timeout: float, stop: asyncio.Event
) -> list[RequestResult]:
    # Open loop: a probe is sent on schedule even while earlier ones hang, so a stall
    # shows up as latency and timeouts rather than as fewer probes.
    tasks: list[asyncio.Future[RequestResult]] = []
    start = time.monotonic()
    while not stop.is_set():
        coro = request_once(HOST, port, path, len(tasks), expected_body=body, timeout=timeout)
        tasks.append(asyncio.ensure_future(coro))
        due = start + len(tasks) * every
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), max(0.0, due - time.monotonic()))
    return list(await asyncio.gather(*tasks))


async def _load(
    port: int, sc: Scenario, path: str, probes: dict[str, bytes], actions: list[Action]
) -> Load:
    loop = asyncio.get_running_loop()
    t0 = time.monotonic()
    events: dict[str, float] = {}
    stop = asyncio.Event()
    storm_task = asyncio.ensure_future(
        storm(HOST, port, path, sc.requests, expected_body=IO_BODY, timeout=sc.request_timeout)
    )
    probe_tasks = {
        p: asyncio.ensure_future(_probe(port, p, b, sc.probe_interval, sc.probe_timeout, stop))
        for p, b in probes.items()
    }
    try:
        for at, name, action in actions:
            # The schedule itself is what we wait for here, not a condition.
            await asyncio.sleep(max(0.0, t0 + at - time.monotonic()))
            events[name] = time.monotonic() - t0
            await loop.run_in_executor(None, action)
            events[f"{name}_done"] = time.monotonic() - t0
        results = await storm_task
        back = events.get("back_done", 0.0)
        await asyncio.sleep(max(0.0, t0 + back + sc.recovery_window - time.monotonic()))
    finally:
        stop.set()
        done = {p: await t for p, t in probe_tasks.items()}
    return Load(t0, results, done, events)


def run_load(
    server: GunicornProcess, sc: Scenario, actions: list[Action], health: bool = False
) -> Load:
    """Storm ``/io`` with ``sc.requests`` requests at t0, probe ``/fast`` (and ``/health``)
    every ``sc.probe_interval`` s, run ``actions`` on schedule, probe on until
    ``recovery_window`` s after the ``back`` action is done."""
    probes = {"/fast": FAST_BODY, **({"/health": HEALTH_BODY} if health else {})}
    return asyncio.run(_load(server.port, sc, "/io", probes, actions))


def start_server(
    args: list[str], env: dict[str, str], log_path: Path, ready_timeout: float = 60
) -> tuple[GunicornProcess, str | None]:
    """Start Gunicorn; on failure, the server (stopped) and why: "master exited rc=2 with:
    <its first error line>" or "not ready after N s ...". Warmed up on success."""
    server = GunicornProcess("demo_app:app", "python:gunitune.conf", args, env, log_path=log_path)
    try:
        server.start(ready_timeout=ready_timeout)
    except (RuntimeError, TimeoutError) as exc:
        rc = server.returncode
        server.stop(grace=2)
        if rc is None:
            return server, f"not ready after {ready_timeout:g} s: {str(exc).splitlines()[0]}"
        return server, f"master exited rc={rc} with: {first_error_line(server.log_text())}"
    warm_up(server)
    return server, None


def first_error_line(log: str) -> str:
    """The line of a log that says best why the process died: gunitune's own error line,
    else the last exception line, else the last line."""
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    for line in lines:
        if line.startswith("gunitune: error:"):
            return line[:300]
    for line in reversed(lines):
        if "Error" in line or "error" in line:
            return line[:300]
    return lines[-1][:300] if lines else "(empty log)"


def wait_for_200(port: int, path: str, body: bytes, every: float, limit: float) -> dict[str, Any]:
    """Poll ``path`` every ``every`` s until a 200 with ``body``, at most ``limit`` s:
    the seconds it took (None if never) and every outcome seen on the way."""

    async def main() -> dict[str, Any]:
        start, seen = time.monotonic(), list[str]()
        while time.monotonic() - start < limit:
            left = limit - (time.monotonic() - start)
            timeout = max(0.1, min(5.0, left))
            r = await request_once(HOST, port, path, len(seen), expected_body=body, timeout=timeout)
            seen.append(ff.outcome(r))
            if seen[-1] == "200":
                return {"seconds": r.finished - start, "polls": len(seen), "seen": _runs(seen)}
            # Pacing between polls: the poll's answer is the condition we wait for.
            await asyncio.sleep(max(0.0, start + len(seen) * every - time.monotonic()))
        return {"seconds": None, "polls": len(seen), "seen": _runs(seen)}

    return asyncio.run(main())


def _runs(outcomes: list[str]) -> list[list[Any]]:
    """``["503", "503", "200"]`` -> ``[["503", 2], ["200", 1]]``: short, and in order."""
    runs: list[list[Any]] = []
    for o in outcomes:
        if runs and runs[-1][0] == o:
            runs[-1][1] += 1
        else:
            runs.append([o, 1])
    return runs
