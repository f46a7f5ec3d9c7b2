"""Review: defects of the Flask extension's request cycle, masking and stats access."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gevent
import pytest
from flask import Flask, Response
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import create_engine, event, text
from sqlalchemy.pool import QueuePool
from structlog.testing import capture_logs

from gunitune import configure, runtime
from gunitune.core.cpus import CpuCount
from gunitune.core.limits import AcceptWindow
from gunitune.engines import describe
from gunitune.flask_ext import GuniTune
from tests.unit.helpers import burn, closing

ENGINE_OPTIONS = {"poolclass": QueuePool, "pool_size": 2, "max_overflow": 1}






@pytest.fixture
def dbs() -> Iterator[list[tuple[Flask, SQLAlchemy]]]:
    made: list[tuple[Flask, SQLAlchemy]] = []
    yield made
    for app, db in made:
        with app.app_context():
            for engine in db.engines.values():
                engine.dispose()


def make_app(
    tmp_path: Path,
    made: list[tuple[Flask, SQLAlchemy]],
    name: str,
    config: dict[str, Any] | None = None,
) -> tuple[Flask, SQLAlchemy]:
    app = closing(Flask(name))
    app.config["SQLALCHEMY_DATABASE_URI"] = f"sqlite:///{tmp_path / (name + '.db')}"
    app.config["SQLALCHEMY_ENGINE_OPTIONS"] = dict(ENGINE_OPTIONS)
    app.config.update(config or {})
    db = SQLAlchemy(app)
    made.append((app, db))
    return app, db


def test_cpu_route_is_cpu_bound_alone_and_under_concurrency(
    tmp_path: Path, dbs: list[tuple[Flask, SQLAlchemy]]
) -> None:
    def build(name: str) -> tuple[Flask, GuniTune]:
        # The default pool's capacity (15): that many requests are in flight at once.
        options = {"poolclass": QueuePool, "pool_size": 5, "max_overflow": 10}
        app, db = make_app(tmp_path, dbs, name, {"SQLALCHEMY_ENGINE_OPTIONS": options})

        @app.get("/report")
        def report() -> str:
            gevent.sleep(0.005)  # one short query
            burn(0.04)  # then 40 ms of CPU: ~90 % of its wall time when alone
            return "ok"

        return app, GuniTune(app, db)

    alone, tune_alone = build("alone")
    for _ in range(3):
        assert alone.test_client().get("/report").status_code == 200
    assert tune_alone.stats(alone)["routes"]["/report"]["cpu_bound"] is True

    busy, tune_busy = build("busy")
    greenlets = [gevent.spawn(busy.test_client().get, "/report") for _ in range(12)]
    gevent.joinall(greenlets, timeout=30, raise_error=True)
    route = tune_busy.stats(busy)["routes"]["/report"]
    assert route["cpu_ms"] >= 35  # each request still costs ~40 ms of its own CPU
    assert route["cpu_bound"] is True, route


def test_streamed_body_runs_inside_its_slot(
    tmp_path: Path, dbs: list[tuple[Flask, SQLAlchemy]]
) -> None:
    app, db = make_app(tmp_path, dbs, "stream")
    tune = GuniTune(app, db)
    seen: list[int] = []

    @app.get("/export")
    def export() -> Response:
        admission = tune._cycle(app).admission

        def rows() -> Iterator[str]:
            for i in range(3):
                seen.append(admission.in_flight)
                burn(0.02)
                yield f"{i}\n"

        return Response(rows(), mimetype="text/plain")

    assert app.test_client().get("/export").text == "0\n1\n2\n"
    route = tune.stats(app)["routes"]["/export"]
    assert seen == [1, 1, 1], seen  # the body runs while its request holds a slot
    assert route["cpu_ms"] >= 50, route


def test_slot_is_held_until_the_session_connection_is_returned(
    tmp_path: Path, dbs: list[tuple[Flask, SQLAlchemy]]
) -> None:
    app, db = make_app(tmp_path, dbs, "session")
    tune = GuniTune(app, db)
    admission = tune._cycle(app).admission
    in_flight_at_checkin: list[int] = []

    @app.get("/count")
    def count() -> str:
        return str(db.session.execute(text("select 1")).scalar())

    with app.app_context():
        event.listen(
            db.engine, "checkin", lambda *a: in_flight_at_checkin.append(admission.in_flight)
        )
    assert app.test_client().get("/count").text == "1"
    assert in_flight_at_checkin == [1], in_flight_at_checkin


def test_admission_never_exceeds_the_pool_a_request_uses(
    tmp_path: Path, dbs: list[tuple[Flask, SQLAlchemy]]
) -> None:
    binds = {
        "audit": {"url": f"sqlite:///{tmp_path / 'audit.db'}", "pool_size": 2, "max_overflow": 1}
    }
    app, db = make_app(tmp_path, dbs, "binds", {"SQLALCHEMY_BINDS": binds})
    admission = GuniTune(app, db).stats(app)["admission"]
    # Each bind serves 3 at once; a request on the default bind (most of them) can
    # only count on 3 connections, yet 6 are admitted.
    assert admission["capacity"] <= 3, admission


def test_stats_refuse_clients_forwarded_by_a_local_proxy(
    tmp_path: Path, dbs: list[tuple[Flask, SQLAlchemy]]
) -> None:
    app, db = make_app(tmp_path, dbs, "stats", {"GUNITUNE_STATS_PATH": "/_gunitune"})
    GuniTune(app, db)
    response = app.test_client().get(
        "/_gunitune",
        headers={"X-Forwarded-For": "203.0.113.7", "X-Real-IP": "203.0.113.7"},
        environ_base={"REMOTE_ADDR": "127.0.0.1"},  # nginx on the same box
    )
    assert response.status_code == 403


SECRET = "s3cretpw"


def test_engine_description_hides_a_query_password() -> None:
    engine = create_engine(f"postgresql+psycopg2://app@db.example/app?password={SECRET}")
    try:
        assert SECRET not in str(describe(engine))
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://app@db.example/app?password={SECRET}",
        # postgres.py supports an unencoded "@" in the password; mask_url does not.
        f"postgresql://app:{SECRET}@x@db.example/app",
    ],
)
def test_start_event_hides_the_password(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(configure, "read_somaxconn", lambda: 4096)
    derived = configure.derive({"GUNITUNE_BUDGET_CHECK": "off"}, CpuCount(1, "test"))
    with capture_logs() as logs:
        configure.start(derived, {"DATABASE_URL": url})
    logged = str(logs)
    assert SECRET not in logged, logged
    assert "x@db" not in logged, logged  # the tail of a password holding "@"


def test_app_config_adaptive_false_keeps_the_gate_fixed(
    tmp_path: Path, dbs: list[tuple[Flask, SQLAlchemy]]
) -> None:
    # What GuniTuneWorker registers when the environment has no GUNITUNE_ADAPTIVE.
    window = AcceptWindow(capacity=3, cpu_budget=0.01)
    runtime.register(
        runtime.WorkerRuntime(window=window, heartbeat=lambda: None, planned_capacity=3)
    )
    app, db = make_app(tmp_path, dbs, "fixed", {"GUNITUNE_ADAPTIVE": "false"})

    @app.get("/work")
    def work() -> str:
        burn(0.03)
        return "ok"

    with capture_logs() as logs:
        GuniTune(app, db)
    ready = [e for e in logs if e["event"] == "gunitune_extension_ready"]
    assert ready[0]["accept_gate"] == "off"
    assert app.test_client().get("/work").status_code == 200
    assert window.window == 3, "the app turned adaptation off, yet the window moved"


def test_slot_released_even_when_another_teardown_fails(
    tmp_path: Path, dbs: list[tuple[Flask, SQLAlchemy]]
) -> None:
    app, db = make_app(tmp_path, dbs, "teardown")
    tune = GuniTune(app, db)

    @app.get("/ok")
    def ok() -> str:
        return "ok"

    @app.teardown_request
    def flaky_cleanup(_exc: BaseException | None) -> None:
        raise RuntimeError("cleanup failed")

    with pytest.raises(RuntimeError, match="cleanup failed"):
        app.test_client().get("/ok")
    assert tune.stats(app)["admission"]["in_flight"] == 0
