"""How long one ``/metrics`` scrape reads, and how long it holds a worker's event loop.

``python -m benchmarks.metrics_scrape [--workers 8] [--routes 10] [--dead 32]``

Forks ``--workers`` processes that each record gunitune's metrics (``--routes``
routes x 3 lanes x 2 outcomes, queue waits, every gauge) into a fresh
multiprocess directory, then times the aggregation a scrape runs
(``gunitune._metrics._collect``). ``--dead`` more processes exit as recycled
workers would: the scrape is timed with their files, then after
``gunitune.multiproc.fold_dead`` folded them. Last, a gevent-patched child
process measures the longest pause of a 1 ms ticker greenlet during each scrape,
inline and in gevent's threadpool: what a scrape costs the other requests of
the worker that answers it.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

__all__ = ["main"]

_LANES = ("fast", "slow", "cpu")
_STALL = """
import statistics, sys, time
from gevent import monkey
monkey.patch_all()
import gevent
from gunitune._metrics import _collect
path, mode = sys.argv[1], sys.argv[2]
pool = gevent.get_hub().threadpool
longest = 0.0
def ticker():
    global longest
    last = time.perf_counter()
    while True:
        gevent.sleep(0.001)
        now = time.perf_counter()
        longest = max(longest, now - last - 0.001)
        last = now
gevent.spawn(ticker)
_collect(path)
pauses = []
for _ in range(30):
    gevent.sleep(0.005)
    longest = 0.0
    pool.apply(_collect, (path,)) if mode == "thread" else _collect(path)
    gevent.sleep(0.002)
    pauses.append(longest * 1000)
print(statistics.median(pauses))
"""


def _record(routes: int) -> None:
    from gunitune._metrics import _process_instruments

    m = _process_instruments()
    for r in range(routes):
        for lane in _LANES:
            for outcome in ("ok", "error"):
                m.requests.labels(f"/route/{r}", lane, outcome).inc()
    for lane in _LANES:
        m.wait_children[lane].observe(0.01)
        m.shed.labels(lane, "queue_timeout").inc()
        m.in_flight.labels(lane).set(1)
        m.queued.labels(lane).set(1)
        m.limit.labels(lane).set(15)
    for gauge in (m.checked_out, m.overflow, m.waiters, m.cpu_ratio):
        gauge.set(1)


def _fork(n: int, routes: int) -> list[int]:
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_record, args=(routes,)) for _ in range(n)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    return [p.pid for p in procs if p.pid is not None]


def _median_ms(fn: Callable[[], object], runs: int = 20) -> float:
    fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def _stall_ms(path: str, mode: str) -> float:
    out = subprocess.run(
        [sys.executable, "-c", _STALL, path, mode],
        capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    return float(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--routes", type=int, default=10)
    parser.add_argument("--dead", type=int, default=32)
    args = parser.parse_args(argv)
    path = tempfile.mkdtemp(prefix="gunitune-scrape-")
    # Before prometheus_client is imported anywhere in this process: it picks its mode then.
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    try:
        from gunitune import multiproc
        from gunitune._metrics import _collect

        open(os.path.join(path, multiproc.LOCK_NAME), "a").close()
        _fork(args.workers, args.routes)
        files = len(os.listdir(path)) - 1
        live = _median_ms(lambda: _collect(path))
        print(f"{args.workers} workers, {args.routes} routes: {files} files, "
              f"{len(_collect(path))} bytes, scrape {live:.1f} ms (median of 20)")  # fmt: skip
        inline, thread = _stall_ms(path, "inline"), _stall_ms(path, "thread")
        print(f"  the worker's loop pauses {inline:.1f} ms per scrape inline, "
              f"{thread:.1f} ms in gevent's threadpool (medians of 30)")  # fmt: skip
        if args.dead:
            dead = _fork(args.dead, args.routes)
            files = len(os.listdir(path)) - 1
            unfolded = _median_ms(lambda: _collect(path))
            for pid in dead:
                multiproc.fold_dead(pid, path)
            folded = _median_ms(lambda: _collect(path))
            print(f"+ {args.dead} recycled workers: {files} files, scrape {unfolded:.1f} ms; "
                  f"folded ({len(os.listdir(path)) - 1} files): {folded:.1f} ms")  # fmt: skip
    finally:
        shutil.rmtree(path, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
