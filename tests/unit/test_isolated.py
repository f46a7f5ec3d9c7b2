"""run_in_child: a database read in a forked child, its answer or its error back in the parent."""

from __future__ import annotations

import os
import sys
import time

import pytest

from gunitune._isolated import run_in_child
from gunitune.core.errors import GunituneError
from gunitune.postgres import DatabaseUnreachable


def test_result_comes_back_and_imports_stay_in_the_child() -> None:
    assert "gunitune_test_marker_module" not in sys.modules

    def work() -> tuple[int, bool]:
        sys.modules["gunitune_test_marker_module"] = sys  # an "import" in the child
        return os.getpid(), True

    child_pid, ok = run_in_child(work, timeout=10, what="test")
    assert ok and child_pid != os.getpid()
    assert "gunitune_test_marker_module" not in sys.modules


def test_our_errors_come_back_with_their_fields() -> None:
    def fail() -> None:
        url = "postgresql://a:***@h/db"
        raise DatabaseUnreachable(url, "connection refused", "hint", "refused")

    with pytest.raises(DatabaseUnreachable) as caught:
        run_in_child(fail, timeout=10, what="test")
    assert caught.value.kind == "refused"
    assert str(caught.value).startswith("cannot reach DATABASE_URL=postgresql://a:***@h/db")


def test_an_error_that_does_not_pickle_keeps_its_text() -> None:
    class Odd(Exception):
        def __reduce__(self) -> str:
            raise TypeError("no pickling")

    def fail() -> None:
        raise Odd("odd failure")

    with pytest.raises(GunituneError, match="odd failure"):
        run_in_child(fail, timeout=10, what="test")


def test_a_hung_child_is_killed_at_the_timeout() -> None:
    started = time.monotonic()
    with pytest.raises(GunituneError, match="hang test did not finish within its timeout"):
        run_in_child(lambda: time.sleep(30), timeout=0.5, what="hang test")
    assert time.monotonic() - started < 10


def test_a_child_that_dies_is_an_error() -> None:
    with pytest.raises(GunituneError, match="exited without an answer"):
        run_in_child(lambda: os._exit(3), timeout=10, what="dying test")
