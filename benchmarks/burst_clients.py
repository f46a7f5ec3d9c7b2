"""A burst opened by several client processes at once, so the client is not the bottleneck.

One asyncio process opening 10 000 connections spends seconds in its own event
loop before it sees them established: its connect times would measure itself.
Split over a few processes, released together, each one's loop stays short.
Every request is still one attempt, never retried (see :mod:`benchmarks.loadclient`).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import queue
from typing import Any

from benchmarks.loadclient import RequestResult, storm
from benchmarks.server import raise_nofile_limit

__all__ = ["split_burst"]

HOST = "127.0.0.1"


def _client(
    port: int, path: str, first: int, count: int, body: bytes | None, timeout: float,
    ready: Any, go: Any, results: Any,
) -> None:  # fmt: skip
    raise_nofile_limit()
    ready.release()
    go.wait()
    part = asyncio.run(storm(HOST, port, path, count, expected_body=body, timeout=timeout))
    for result in part:
        result.index += first  # the burst's numbering, not this process's
    results.put(part)


def _check_alive(clients: list[Any]) -> None:
    dead = [c.exitcode for c in clients if c.exitcode not in (None, 0)]
    if dead:
        raise RuntimeError(f"a burst client process died (exit codes {dead})")


def split_burst(
    port: int, path: str, n: int, body: bytes | None, timeout: float, processes: int = 4
) -> list[RequestResult]:
    """``n`` requests on ``path`` from ``processes`` clients released together; index order."""
    ctx = multiprocessing.get_context("spawn")  # the caller runs threads: no fork
    ready, go, results = ctx.Semaphore(0), ctx.Event(), ctx.Queue()
    bounds = [(k * n // processes, (k + 1) * n // processes) for k in range(processes)]
    clients = [
        ctx.Process(
            target=_client, args=(port, path, lo, hi - lo, body, timeout, ready, go, results)
        )
        for lo, hi in bounds
    ]
    for client in clients:
        client.start()
    try:
        for _ in clients:  # every client imported and waiting
            while not ready.acquire(timeout=1):
                _check_alive(clients)
        go.set()
        merged: list[RequestResult] = []
        while len(merged) < n:
            try:
                merged.extend(results.get(timeout=1))
            except queue.Empty:
                _check_alive(clients)
    finally:
        for client in clients:
            client.join(timeout=10)
            if client.is_alive():
                client.kill()
    return sorted(merged, key=lambda r: r.index)
