"""LoadBoard and Seat: what the workers of one master hold, in shared memory."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from gunitune import _board
from gunitune._board import BOOT_MS, STALE_MS, LoadBoard

OTHER_PID = os.getppid()  # a live process that is not this one


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_each_worker_gets_its_own_seat() -> None:
    board = LoadBoard(seats=4)
    mine = board.take_seat(os.getpid())
    other = board.take_seat(OTHER_PID)
    assert (mine.index, other.index) == (0, 1)


def test_a_worker_sees_what_the_other_open_workers_hold() -> None:
    board = LoadBoard(seats=4)
    mine = board.take_seat(os.getpid())
    other = board.take_seat(OTHER_PID)
    other.publish(7)
    mine.publish(3)
    # Booting: not accepting yet, and counted as holding nothing, so this worker
    # leaves it its share of a storm that arrives meanwhile.
    assert mine.others() == [0]
    other.set_open(True)
    assert mine.others() == [7]
    assert other.others() == [0]  # mine is still booting
    mine.set_open(True)
    assert other.others() == [3]


def test_a_closed_seat_is_left_out() -> None:
    board = LoadBoard(seats=4)
    mine = board.take_seat(os.getpid())
    other = board.take_seat(OTHER_PID)
    other.set_open(True)
    other.publish(5)
    other.set_open(False)  # draining
    assert mine.others() == []


def test_a_seat_that_stopped_writing_is_left_out(monkeypatch: pytest.MonkeyPatch) -> None:
    board = LoadBoard(seats=4)
    mine = board.take_seat(os.getpid())
    other = board.take_seat(OTHER_PID)
    other.set_open(True)
    other.publish(5)
    now = _board._now_ms()
    monkeypatch.setattr(_board, "_now_ms", lambda: now + STALE_MS - 1)
    assert mine.others() == [5]
    monkeypatch.setattr(_board, "_now_ms", lambda: now + STALE_MS + 100)
    assert mine.others() == []  # killed, or stuck in CPU work: it cannot hold our gate shut


def test_a_dead_worker_seat_is_taken_by_a_new_worker() -> None:
    board = LoadBoard(seats=4)
    gone = board.take_seat(dead_pid())
    gone.set_open(True)
    gone.publish(9)
    new = board.take_seat(os.getpid())
    assert new.index == gone.index
    assert board.take_seat(OTHER_PID).others() == [0]  # the new seat starts booting, empty


def test_a_left_seat_is_reused_and_not_listed() -> None:
    board = LoadBoard(seats=4)
    mine = board.take_seat(os.getpid())
    leaving = board.take_seat(OTHER_PID)
    leaving.set_open(True)
    leaving.leave()
    assert mine.others() == []
    assert board.take_seat(OTHER_PID).index == leaving.index


def test_the_same_pid_gets_its_seat_back() -> None:
    board = LoadBoard(seats=4)
    first = board.take_seat(os.getpid())
    board.take_seat(OTHER_PID)
    assert board.take_seat(os.getpid()).index == first.index


def test_a_full_board_refuses_one_more_worker() -> None:
    board = LoadBoard(seats=1)
    board.take_seat(os.getpid())
    with pytest.raises(RuntimeError, match="more than 1 workers"):
        board.take_seat(OTHER_PID)


def test_a_forked_worker_writes_where_the_master_reads() -> None:
    board = LoadBoard(seats=4)
    master_view = board.take_seat(os.getpid())
    child = os.fork()
    if child == 0:  # the worker, after fork
        try:
            seat = board.take_seat(os.getpid())
            seat.set_open(True)
            seat.publish(42)
        finally:
            os._exit(0)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    # The worker exited, but its last write is fresh: shared, not copied on write.
    assert master_view.others() == [42]


def test_a_booting_seat_stops_counting_after_boot_ms(monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker whose boot failed without leaving its seat cannot hold the others back."""
    board = LoadBoard(seats=4)
    mine = board.take_seat(os.getpid())
    board.take_seat(OTHER_PID)
    assert mine.others() == [0]
    later = _board._now_ms() + BOOT_MS + 1
    monkeypatch.setattr(_board, "_now_ms", lambda: later)
    assert mine.others() == []
