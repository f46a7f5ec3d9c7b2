"""PoolTelemetry against real SQLAlchemy engines on SQLite."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.pool import NullPool, QueuePool
from structlog.testing import capture_logs

from gunitune.core.pressure import PoolSnapshot, PressureMonitor
from gunitune.telemetry import PoolTelemetry


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    eng = create_engine(
        f"sqlite:///{tmp_path / 'db.sqlite'}",
        poolclass=QueuePool,
        pool_size=2,
        max_overflow=1,
        pool_timeout=0.1,
    )
    yield eng
    eng.dispose()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def make(engines: list[Engine], clock: FakeClock) -> PoolTelemetry:
    monitor = PressureMonitor(window_seconds=10.0, min_event_interval=1.0, calm_seconds=2.0)
    return PoolTelemetry(engines, monitor, clock=clock)


def check_out(stack: ExitStack, engine: Engine, n: int) -> None:
    for _ in range(n):
        conn = stack.enter_context(engine.connect())
        conn.execute(text("select 1"))


def test_snapshot_follows_checkouts(engine: Engine, clock: FakeClock) -> None:
    tel = make([engine], clock)
    assert tel.snapshot(waiters=0) == PoolSnapshot(3, 2, 0, 0, 0)
    with ExitStack() as stack:
        check_out(stack, engine, 1)
        assert tel.snapshot(waiters=0) == PoolSnapshot(3, 2, 1, 0, 0)
        check_out(stack, engine, 2)
        assert tel.snapshot(waiters=5) == PoolSnapshot(3, 2, 3, 1, 5)
    # Back in the pool; the overflow connection was closed on checkin.
    assert tel.snapshot(waiters=0) == PoolSnapshot(3, 2, 0, 0, 0)


def test_counts_connections_opened_and_invalidated(engine: Engine, clock: FakeClock) -> None:
    tel = make([engine], clock)
    with ExitStack() as stack:
        check_out(stack, engine, 3)
    # The two pooled connections are reused; only the overflow one is reopened.
    with ExitStack() as stack:
        check_out(stack, engine, 3)
    assert tel.stats()["connections_opened"] == 4

    with engine.connect() as conn:
        conn.invalidate()
    assert tel.stats()["connections_invalidated"] == 1


def test_logs_escalation_then_return_to_ok(engine: Engine, clock: FakeClock) -> None:
    tel = make([engine], clock)
    with capture_logs() as logs, ExitStack() as stack:
        check_out(stack, engine, 3)
        tel.record_wait(0.25)
        transition = tel.observe(waiters=2)
        assert transition is not None
        assert tel.observe(waiters=2) is None  # unchanged: no second event
    # Storm over; the periodic timer keeps observing with no traffic.
    with capture_logs() as calm_logs:
        for _ in range(10):
            clock.now += 0.5
            tel.observe(waiters=0)

    assert logs == [
        {
            "event": "pool_pressure",
            "log_level": "warning",
            "from_state": "ok",
            "to_state": "saturated",
            "checked_out": 3,
            "capacity": 3,
            "overflow_in_use": 1,
            "waiters": 2,
            "wait_p50_ms": 250.0,
            "wait_p99_ms": 250.0,
            "sheds_in_window": 0,
            "connections_opened": 3,
            "connections_invalidated": 0,
            "databases": [str(engine.url)],
        }
    ]
    assert [(e["log_level"], e["from_state"], e["to_state"]) for e in calm_logs] == [
        ("info", "saturated", "ok")
    ]


def test_shed_is_reported_as_shedding(engine: Engine, clock: FakeClock) -> None:
    tel = make([engine], clock)
    with capture_logs() as logs:
        tel.record_shed()
        tel.observe(waiters=0)
    assert [(e["to_state"], e["sheds_in_window"]) for e in logs] == [("shedding", 1)]
    assert tel.stats()["sheds_total"] == 1


def test_database_url_password_is_masked(clock: FakeClock) -> None:
    pytest.importorskip("psycopg2")
    # create_engine does not connect, so no server is needed.
    pg = create_engine("postgresql+psycopg2://app:hunter2@db.invalid/app", poolclass=QueuePool)
    tel = make([pg], clock)
    with capture_logs() as logs:
        tel.observe(waiters=1)
    assert logs and logs[0]["databases"] == ["postgresql+psycopg2://app:***@db.invalid/app"]
    assert "hunter2" not in repr(logs)


def test_detach_removes_listeners(engine: Engine, clock: FakeClock) -> None:
    tel = make([engine], clock)
    with engine.connect():
        pass
    assert tel.stats()["connections_opened"] == 1
    tel.detach()
    tel.detach()  # idempotent
    with ExitStack() as stack:
        check_out(stack, engine, 3)
    assert tel.stats()["connections_opened"] == 1


def test_listeners_survive_dispose_and_still_detach(engine: Engine, clock: FakeClock) -> None:
    tel = make([engine], clock)
    with engine.connect():
        pass
    engine.dispose()  # replaces engine.pool
    with engine.connect():
        pass
    assert tel.stats()["connections_opened"] == 2
    tel.detach()
    engine.dispose()
    with engine.connect():
        pass
    assert tel.stats()["connections_opened"] == 2


def test_sums_over_engines(engine: Engine, tmp_path: Path, clock: FakeClock) -> None:
    other = create_engine(
        f"sqlite:///{tmp_path / 'other.sqlite'}", poolclass=QueuePool, pool_size=5, max_overflow=0
    )
    tel = make([engine, other], clock)
    with ExitStack() as stack:
        check_out(stack, engine, 3)
        check_out(stack, other, 1)
        assert tel.snapshot(waiters=0) == PoolSnapshot(8, 7, 4, 1, 0)
    other.dispose()


def test_null_pool_falls_back_to_checkout_counting(tmp_path: Path, clock: FakeClock) -> None:
    null = create_engine(f"sqlite:///{tmp_path / 'null.sqlite'}", poolclass=NullPool)
    tel = make([null], clock)
    with ExitStack() as stack:
        check_out(stack, null, 2)
        # Capacity unknown (0): never SATURATED, however many wait.
        assert tel.snapshot(waiters=3) == PoolSnapshot(0, 0, 2, 0, 3)
        assert tel.monitor.classify(tel.snapshot(waiters=3), clock()).value == "pressured"
    assert tel.snapshot(waiters=0).checked_out == 0
    assert tel.stats()["connections_opened"] == 2


def test_unbounded_queue_pool_has_unknown_capacity(tmp_path: Path, clock: FakeClock) -> None:
    eng = create_engine(
        f"sqlite:///{tmp_path / 'u.sqlite'}", poolclass=QueuePool, pool_size=1, max_overflow=-1
    )
    tel = make([eng], clock)
    with ExitStack() as stack:
        check_out(stack, eng, 3)
        assert tel.snapshot(waiters=0) == PoolSnapshot(0, 1, 3, 2, 0)
    eng.dispose()


def test_default_logger_is_structlog(engine: Engine) -> None:
    tel = PoolTelemetry([engine], PressureMonitor())
    with capture_logs() as logs:
        tel.observe(waiters=1)
    assert [e["event"] for e in logs] == ["pool_pressure"]
