"""Per-worker memory and open files of a running Gunicorn, sampled during a run.

The ``burst`` scenario asks what 10 000 connections held at once cost each worker.
:class:`WorkerSampler` polls every worker's RSS and fd count (psutil) in a
background thread and keeps, per worker, the first sample (idle: taken before the
load starts) and the peaks. Figures are computed by
:func:`benchmarks.lane_figures.memory_figures`.
"""

from __future__ import annotations

import contextlib
import threading

import psutil

from benchmarks.server import GunicornProcess

__all__ = ["WorkerSampler"]

POLL_SECONDS = 0.25


class WorkerSampler:
    """Idle and peak RSS (bytes) and open fds per worker pid, polled every 0.25 s."""

    def __init__(self, server: GunicornProcess, interval: float = POLL_SECONDS) -> None:
        self.server = server
        self.interval = interval
        self.samples: dict[int, dict[str, int]] = {}
        self.polls = 0
        self._procs: dict[int, psutil.Process] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sample(self) -> None:
        """Take one sample of every live worker (a worker gone meanwhile is skipped)."""
        for pid in self.server.worker_pids():
            proc = self._procs.setdefault(pid, psutil.Process(pid))
            # A worker may exit (killed on timeout) between listing and reading it.
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                rss, fds = proc.memory_info().rss, proc.num_fds()
                seen = self.samples.setdefault(
                    pid, {"idle_rss": rss, "idle_fds": fds, "peak_rss": rss, "peak_fds": fds}
                )
                seen["peak_rss"] = max(seen["peak_rss"], rss)
                seen["peak_fds"] = max(seen["peak_fds"], fds)
        self.polls += 1

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def start(self) -> WorkerSampler:
        """The idle sample now (before the load), then poll in a thread."""
        self.sample()
        self._thread = threading.Thread(target=self._run, name="worker-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop polling (one last sample first, so a short run still has a peak)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.sample()
