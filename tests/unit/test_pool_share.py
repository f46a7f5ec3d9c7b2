"""GUNITUNE_POOL=auto: the master's share handed over, and applied to a worker's pools."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Engine
from sqlalchemy.pool import NullPool, QueuePool
from structlog.testing import capture_logs

from gunitune import configure, engines, pool_share
from gunitune.core.budget import ServerBudget
from gunitune.core.cpus import CpuCount
from gunitune.core.pressure import PressureMonitor
from gunitune.telemetry import PoolTelemetry

SHARE = {"pool_size": 9, "max_overflow": 18}


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    # A file SQLite database gets SQLAlchemy's QueuePool (5 + 10), like a PostgreSQL URL.
    made = create_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    yield made
    made.dispose()


def test_pool_options_parse_the_handover(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(pool_share.SHARE_ENV, raising=False)
    assert pool_share.pool_options() == {}
    pool_share.publish_share(9, 18)
    assert pool_share.pool_options() == SHARE
    assert pool_share.pool_options({pool_share.SHARE_ENV: "x+1"}) == {}
    assert pool_share.pool_options({pool_share.SHARE_ENV: "4"}) == {}
    monkeypatch.delenv(pool_share.SHARE_ENV)


def test_a_default_pool_is_resized_and_keeps_its_listeners(engine: Engine) -> None:
    seen: list[str] = []
    event.listen(engine, "checkout", lambda *a: seen.append("checkout"))
    event.listen(engine, "checkin", lambda *a: seen.append("checkin"))
    event.listen(engine, "connect", lambda *a: seen.append("connect"))
    telemetry = PoolTelemetry([engine], PressureMonitor())  # listens on the pool object
    old = engine.pool
    report = pool_share.apply_share([engine], SHARE, explicit=False, pid=1)
    assert engine.pool is not old and isinstance(engine.pool, QueuePool)
    assert engines.pool_capacity(engine) == 27  # what the worker's lanes read next
    assert report[0]["resized"] == "5 + 10 -> 9 + 18"
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
    assert seen == ["connect", "checkout", "checkin"]
    assert telemetry.monitor._connections_opened == 1  # gunitune's pool listener heard it
    telemetry.detach()


def test_an_explicit_pool_is_kept_and_logged(tmp_path: Path) -> None:
    mine = create_engine(f"sqlite:///{tmp_path / 'x.sqlite'}", pool_size=4, max_overflow=6)
    with capture_logs() as logs:
        report = pool_share.apply_share([mine], SHARE, explicit=False, pid=1)
    assert engines.pool_capacity(mine) == 10
    assert report[0]["kept"] == "set by the app: 4 + 6"
    (warning,) = [e for e in logs if e["event"] == "pool_explicit_kept"]
    assert "9 + 18" in warning["advice"]
    mine.dispose()


def test_five_plus_ten_named_in_the_config_is_explicit(engine: Engine) -> None:
    config: dict[str, Any] = {"SQLALCHEMY_ENGINE_OPTIONS": {"pool_size": 5}}
    assert pool_share.explicit_in_config(config)
    assert pool_share.explicit_in_config({"SQLALCHEMY_BINDS": {"b": {"max_overflow": 1}}})
    assert not pool_share.explicit_in_config({"SQLALCHEMY_ENGINE_OPTIONS": {"echo": True}})
    assert not pool_share.explicit_in_config({"SQLALCHEMY_BINDS": {"b": "sqlite://"}})
    old = engine.pool
    report = pool_share.apply_share([engine], SHARE, explicit=True, pid=1)
    assert engine.pool is old and "set by the app" in report[0]["kept"]


def test_other_pool_classes_are_never_changed(tmp_path: Path) -> None:
    null = create_engine(f"sqlite:///{tmp_path / 'n.sqlite'}", poolclass=NullPool)
    report = pool_share.apply_share([null], SHARE, explicit=False, pid=1)
    assert isinstance(null.pool, NullPool) and report[0]["kept"] == "not a QueuePool"


def test_master_logs_pool_auto_once_and_hands_it_over(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(pool_share.SHARE_ENV, raising=False)
    monkeypatch.setattr(configure, "read_budget", lambda url: ServerBudget(100, 3, 0, 0, "", 4))
    monkeypatch.setattr(configure, "read_somaxconn", lambda: 4096)
    derived = configure.derive({"GUNITUNE_POOL": "auto", "GUNITUNE_WORKERS": "3"}, CpuCount(2, "t"))
    with capture_logs() as logs:
        configure.start(derived, {"DATABASE_URL": "postgresql://app@127.0.0.1/app"})
    (auto,) = [e for e in logs if e["event"] == "pool_auto"]
    assert (auto["pool_size"], auto["max_overflow"], auto["per_worker"]) == (9, 18, 27)
    assert auto["fleet_connections_now"] == 4 and "headroom" in auto["why"]
    assert pool_share.pool_options() == SHARE
    monkeypatch.delenv(pool_share.SHARE_ENV)


def test_master_refuses_a_share_under_one_connection(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(configure, "read_budget", lambda url: ServerBudget(20, 3, 0, 0))
    monkeypatch.setattr(configure, "read_somaxconn", lambda: 4096)
    env = {"GUNITUNE_POOL": "auto", "GUNITUNE_WORKERS": "8", "GUNITUNE_HOSTS": "3"}
    derived = configure.derive(env, CpuCount(2, "t"))
    with pytest.raises(SystemExit):
        configure.start(derived, {"DATABASE_URL": "postgresql://app@127.0.0.1/app"})
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "under one connection for each of 3 hosts x 8" in err


def test_the_check_counts_every_host_and_suggests_auto() -> None:
    derived = configure.derive({"GUNITUNE_WORKERS": "3", "GUNITUNE_HOSTS": "2"}, CpuCount(2, "t"))
    fits_one_host = ServerBudget(100, 3, 0, 10)  # 87 free: 45 fits, 90 not; 72 / 6 = 12
    complaint = configure.check_database_budget(derived, "postgresql://x@h/d", fits_one_host)
    assert complaint is not None
    assert "2 hosts x 3 workers x 15 connections = 90 needed" in complaint
    assert complaint.endswith("or GUNITUNE_POOL=auto (4 + 8 per worker)")
    single = configure.derive({"GUNITUNE_WORKERS": "3"}, CpuCount(2, "t"))
    assert configure.check_database_budget(single, "postgresql://x@h/d", fits_one_host) is None


def test_a_transaction_pooler_is_announced_and_handed_over(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    budget = ServerBudget(40, 3, 0, 0, "", 0, pooler="transaction")
    monkeypatch.setattr(configure, "read_budget", lambda url: budget)
    monkeypatch.setattr(configure, "read_somaxconn", lambda: 4096)
    monkeypatch.delenv(pool_share.POOLER_ENV, raising=False)
    env = {"GUNITUNE_POOL": "auto", "GUNITUNE_WORKERS": "2", "GUNITUNE_HOSTS": "2"}
    derived = configure.derive(env, CpuCount(2, "t"))
    with capture_logs() as logs:
        configure.start(derived, {"DATABASE_URL": "postgresql://app@127.0.0.1:6432/app"})
    (found,) = [e for e in logs if e["event"] == "pooler_detected"]
    assert "max_db_connections = 32" in found["pgbouncer"]
    assert "pool_mode = transaction" in found["pgbouncer"]
    assert pool_share.pool_options() == {"pool_size": 3, "max_overflow": 4}
    assert os.environ[pool_share.POOLER_ENV] == "transaction"
    monkeypatch.delenv(pool_share.POOLER_ENV)
    monkeypatch.delenv(pool_share.SHARE_ENV)


def test_connections_are_tagged_unless_the_app_named_them(monkeypatch: pytest.MonkeyPatch) -> None:
    from gunitune import _db_timeouts

    class Dialect:
        driver = "psycopg"

    cparams: dict[str, Any] = {}
    monkeypatch.setenv(pool_share.POOLER_ENV, "transaction")
    _db_timeouts._set_defaults(Dialect(), None, [], cparams)
    assert cparams["application_name"].startswith("gunitune/")
    assert cparams["application_name"].endswith(f"/{os.getpid()}")
    assert "prepare_threshold" in cparams and cparams["prepare_threshold"] is None
    mine: dict[str, Any] = {"application_name": "billing"}
    Dialect.driver = "psycopg2"
    _db_timeouts._set_defaults(Dialect(), None, [], mine)
    assert mine["application_name"] == "billing" and "prepare_threshold" not in mine
    assert len(_db_timeouts.application_name(pid=4194304).encode()) <= 63


def test_two_binds_on_the_budgets_server_split_it_and_others_are_kept() -> None:
    """Review finding: every default pool took the whole share, so two binds took it twice."""
    url = "postgresql+psycopg2://app:pw@db:5432/app"
    first, second = create_engine(url), create_engine(url + "?application_name=x")
    elsewhere = create_engine("postgresql+psycopg2://app:pw@analytics:5432/app")
    try:
        report = pool_share.apply_share(
            [first, second, elsewhere], SHARE, explicit=False, pid=1, budget_url=url
        )
        sizes = [(e.pool.size(), e.pool._max_overflow) for e in (first, second)]  # type: ignore[attr-defined]
        assert sizes == [(4, 9), (4, 9)]  # 27 over two pools: 13 each, a third kept open
        assert sum(a + b for a, b in sizes) <= SHARE["pool_size"] + SHARE["max_overflow"]
        assert (elsewhere.pool.size(), elsewhere.pool._max_overflow) == (5, 10)  # type: ignore[attr-defined]
        assert "another server" in report[2]["kept"]
    finally:
        for e in (first, second, elsewhere):
            e.dispose()
