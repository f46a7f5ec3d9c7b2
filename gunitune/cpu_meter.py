"""Per-greenlet CPU time, by greenlet switch tracing.

``time.thread_time()`` measures the whole OS thread, which all greenlets of a
gevent worker share. To know what one request cost, we read it at every switch
into and out of that request's greenlet (``greenlet.settrace``) and add up the
slices. A request waiting on Postgres is switched out while it waits, so its
wait is not counted: an IO route interleaved with a CPU route keeps a CPU share
near zero.

The same slices tell when one greenlet held the event loop too long: a slice
longer than ``block_threshold`` seconds is a block, reported with its route
when the greenlet switches out.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import greenlet

__all__ = ["Account", "GreenletCpuMeter"]

BlockReport = Callable[[str, float], None]


@dataclass
class Account:
    """The running totals of one measured greenlet."""

    label: str
    cpu: float = 0.0
    idle: float = 0.0  # switched out while the thread had nothing to run: real waiting
    longest_slice: float = 0.0
    cpu_in: float = 0.0  # thread CPU time when the greenlet last switched in
    wall_in: float = 0.0
    cpu_out: float | None = None  # thread CPU time when it last switched out
    wall_out: float = 0.0
    running: bool = False

    @property
    def own_wall(self) -> float:
        """Wall time the request would take alone: its CPU plus its real waits.

        Time spent switched out while other greenlets used the CPU is left out:
        under load it would make every CPU-bound route look like it waits.
        """
        return self.cpu + self.idle


class GreenletCpuMeter:
    """Accounts CPU time per greenlet for the greenlets it is asked to measure.

    One meter per process (greenlet's tracer is per thread; gevent workers run
    one thread). Other tracers already installed are chained, not replaced. The
    tracer runs on every greenlet switch of the worker, so it is installed only
    while at least one request is being measured.
    """

    def __init__(
        self,
        *,
        block_threshold: float = 0.5,
        on_block: BlockReport | None = None,
        cpu_clock: Callable[[], float] = time.thread_time,
        wall_clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.block_threshold = block_threshold
        self.on_block = on_block
        self._cpu_clock = cpu_clock
        self._wall_clock = wall_clock
        self._accounts: dict[Any, Account] = {}
        self._previous: Any = None
        self._installed = False

    def install(self) -> None:
        """Start tracing switches (idempotent)."""
        if not self._installed:
            self._previous = greenlet.settrace(self._trace)
            self._installed = True

    def uninstall(self) -> None:
        """Stop tracing and restore the previous tracer."""
        if self._installed:
            # A tracer installed after ours (a profiler, an APM agent) stays.
            if greenlet.gettrace() == self._trace:  # bound methods: equal, not identical
                greenlet.settrace(self._previous)
            self._installed = False

    def start(self, label: str, glet: Any = None) -> None:
        """Begin measuring ``glet`` (default: the current greenlet), which is running now."""
        glet = glet if glet is not None else greenlet.getcurrent()
        account = Account(label=label)
        self._switch_in(account)
        self._accounts[glet] = account
        self.install()

    def stop(self, glet: Any = None) -> Account | None:
        """Stop measuring ``glet`` (default: current); return its totals."""
        glet = glet if glet is not None else greenlet.getcurrent()
        account = self._accounts.pop(glet, None)
        if account is not None and account.running:
            self._switch_out(account)
        if not self._accounts:
            self.uninstall()
        return account

    def relabel(self, label: str, glet: Any = None) -> None:
        """Name the route once it is known (routing happens after the request starts)."""
        account = self._accounts.get(glet if glet is not None else greenlet.getcurrent())
        if account is not None:
            account.label = label

    @property
    def measuring(self) -> int:
        """How many greenlets are being measured."""
        return len(self._accounts)

    def _switch_in(self, account: Account) -> None:
        account.cpu_in = self._cpu_clock()
        account.wall_in = self._wall_clock()
        if account.cpu_out is not None:
            away = account.wall_in - account.wall_out
            others = account.cpu_in - account.cpu_out
            account.idle += max(0.0, away - others)
        account.running = True

    def _switch_out(self, account: Account) -> None:
        account.cpu_out = self._cpu_clock()
        account.wall_out = self._wall_clock()
        account.cpu += max(0.0, account.cpu_out - account.cpu_in)
        held = account.wall_out - account.wall_in
        account.running = False
        if held > account.longest_slice:
            account.longest_slice = held
        if held >= self.block_threshold and self.on_block is not None:
            self.on_block(account.label, held)

    def _trace(self, event: str, args: Any) -> None:
        if event in ("switch", "throw"):
            origin, target = args
            account = self._accounts.get(origin)
            if account is not None and account.running:
                self._switch_out(account)
            account = self._accounts.get(target)
            if account is not None:
                self._switch_in(account)
        if self._previous is not None:
            self._previous(event, args)
