"""Shared memory where the workers of one Gunicorn master publish how much they hold.

An anonymous shared mapping made in the master before it forks, so every worker
it forks (and re-forks on reload) sees the same cells. Each worker takes a seat:
its pid, the requests it holds, whether it accepts, and when it last wrote
(CLOCK_MONOTONIC is one clock for every process on the machine). Readers skip
seats of workers that stopped writing, so a killed worker cannot hold the others'
gates shut. Written by hand: nothing in the standard library or a well-kept
package publishes a few integers between forked processes without a server.
"""

from __future__ import annotations

import mmap
import multiprocessing
import os
import time
from typing import Any

from gunitune.core.settings import MAX_WORKERS

__all__ = ["LoadBoard", "Seat"]

SEATS = MAX_WORKERS  # GUNITUNE_WORKERS is bounded by it: every worker gets a seat
_PID, _HELD, _OPEN, _STAMP = range(4)
_FIELDS = 4
# A seat whose worker has not written for this long is left out: the worker is
# gone, or busy in one long piece of CPU work and not accepting anyway.
STALE_MS = 3000
# A seat taken by a worker still booting (importing the app) counts as holding
# nothing, so the workers already up leave it its share of a storm that
# arrives meanwhile, for at most this long (a boot that failed stops counting).
BOOT_MS = 10_000
_CLOSED, _OPEN_NOW, _BOOTING = 0, 1, 2


def _now_ms() -> int:
    return int(time.monotonic() * 1000)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class LoadBoard:
    """The seats of one master's workers; create it in the master, before fork."""

    def __init__(self, seats: int = SEATS) -> None:
        self.seats = seats
        # One more cell after the seats: how many seats were ever taken, so
        # readers scan those, not all of them.
        self._high = seats * _FIELDS
        self._map = mmap.mmap(-1, (seats * _FIELDS + 1) * 8)  # MAP_SHARED | MAP_ANONYMOUS
        self.cells: Any = memoryview(self._map).cast("q")
        # A process-shared semaphore: two workers booting at once must not take one seat.
        self._lock = multiprocessing.Lock()

    def take_seat(self, pid: int) -> Seat:
        """A free seat (never used, or left by a dead worker) for the worker ``pid``."""
        cells = self.cells
        with self._lock:
            for index in range(self.seats):
                base = index * _FIELDS
                owner = cells[base + _PID]
                if owner == 0 or owner == pid or not _alive(owner):
                    cells[base + _PID] = pid
                    cells[base + _HELD] = 0
                    cells[base + _OPEN] = _BOOTING
                    cells[base + _STAMP] = _now_ms()
                    cells[self._high] = max(cells[self._high], index + 1)
                    return Seat(self, index)
        raise RuntimeError(f"no free seat on the load board: more than {self.seats} workers")

    def held_by_others(self, index: int) -> list[int]:
        """Held counts of the other accepting workers that wrote recently, and 0 for
        each worker still booting."""
        cells = self.cells
        now = _now_ms()
        loads = []
        for seat in range(cells[self._high]):
            base = seat * _FIELDS
            if seat == index or not cells[base + _PID]:
                continue
            state, stamp = cells[base + _OPEN], cells[base + _STAMP]
            if state == _OPEN_NOW and stamp >= now - STALE_MS:
                loads.append(cells[base + _HELD])
            elif state == _BOOTING and stamp >= now - BOOT_MS:
                loads.append(0)
        return loads


class Seat:
    """One worker's cells on the board."""

    def __init__(self, board: LoadBoard, index: int) -> None:
        self.board = board
        self.index = index
        self._base = index * _FIELDS

    def publish(self, held: int) -> None:
        """Write how many requests this worker holds now (a hot path: no clock)."""
        self.board.cells[self._base + _HELD] = held

    def stamp(self) -> None:
        """Say this worker is alive (its run loop, once a second)."""
        self.board.cells[self._base + _STAMP] = _now_ms()

    def set_open(self, accepting: bool) -> None:
        """Whether this worker takes part in accepting (False while it boots or drains)."""
        cells = self.board.cells
        cells[self._base + _OPEN] = _OPEN_NOW if accepting else _CLOSED
        cells[self._base + _STAMP] = _now_ms()

    def others(self) -> list[int]:
        """Held counts of the other accepting workers."""
        return self.board.held_by_others(self.index)

    def leave(self) -> None:
        """Give the seat up (a worker exiting)."""
        cells = self.board.cells
        cells[self._base + _OPEN] = _CLOSED
        cells[self._base + _PID] = 0
