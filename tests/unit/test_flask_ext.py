"""The Flask extension with Flask-SQLAlchemy on SQLite, driven by Flask's test client."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, Response, jsonify
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import text
from sqlalchemy.pool import QueuePool
from structlog.testing import capture_logs

from gunitune import flask_ext, runtime
from gunitune.admission import Admission
from gunitune.core.errors import ConfigError
from gunitune.core.limits import AcceptWindow
from gunitune.flask_ext import EXTENSION_KEY, GuniTune
from gunitune.http import Overloaded
from gunitune.request_cycle import RequestCycle
from tests.unit.helpers import burn, closing

ENGINE_OPTIONS = {"poolclass": QueuePool, "pool_size": 2, "max_overflow": 1}
STATS_KEYS = {"pid", "admission", "accept_window", "routes", "pool"}
Made = list[tuple[Flask, SQLAlchemy]]


class Counter:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> None:
        self.calls += 1


class RefusingSemaphore:
    """A semaphore that is never free: every admission times out at once."""

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        return False

    def release(self) -> None:
        raise AssertionError("nothing was acquired")






@pytest.fixture
def made() -> Iterator[Made]:
    """Every (app, db) made by ``make_app``; engines disposed after the test."""
    dbs: Made = []
    yield dbs
    for app, db in dbs:
        with app.app_context():
            for engine in db.engines.values():
                engine.dispose()


def make_app(
    tmp_path: Path, made: Made, config: dict[str, Any] | None = None
) -> tuple[Flask, SQLAlchemy]:
    app = closing(Flask("gunitune_test_app"))
    app.config["SQLALCHEMY_DATABASE_URI"] = f"sqlite:///{tmp_path / 'x.db'}"
    app.config["SQLALCHEMY_ENGINE_OPTIONS"] = dict(ENGINE_OPTIONS)
    app.config.update(config or {})
    db = SQLAlchemy()
    db.init_app(app)
    made.append((app, db))

    @app.get("/io")
    def io_view() -> str:
        with db.engine.connect() as conn:
            return str(conn.execute(text("select 1")).scalar())

    @app.get("/health")
    @GuniTune.exempt
    def health() -> str:
        return "ok"

    @app.get("/cpu")
    @GuniTune.cpu_bound
    def cpu_view() -> str:
        return "cpu"

    @app.get("/burn")
    def burn_view() -> str:
        burn(0.03)
        return "burnt"

    @app.get("/burn-io")
    @GuniTune.io_bound
    def burn_io_view() -> str:
        burn(0.03)
        return "burnt"

    @app.get("/fail")
    def fail_view() -> str:
        raise RuntimeError("view failed")

    return app, db


def cycle_of(tune: GuniTune, app: Flask) -> RequestCycle:
    return tune._cycle(app)


def refusing_admission(capacity: int = 1, queue_timeout: float = 5.0) -> Admission:
    return Admission(
        capacity,
        queue_timeout=queue_timeout,
        semaphore_factory=lambda size: RefusingSemaphore(),
        yield_to_loop=Counter(),
    )


# --- registration ---------------------------------------------------------------


def test_init_app_registers_extension(tmp_path: Path, made: Made) -> None:
    app, db = make_app(tmp_path, made)
    tune = GuniTune(app, db)
    assert app.extensions[EXTENSION_KEY] is tune
    assert "gunitune_stats" not in app.view_functions  # no stats path: no endpoint


def test_factory_pattern(tmp_path: Path, made: Made) -> None:
    app, db = make_app(tmp_path, made)
    tune = GuniTune(db=db)
    assert EXTENSION_KEY not in app.extensions
    tune.init_app(app)
    assert app.extensions[EXTENSION_KEY] is tune
    assert tune.stats(app)["admission"]["capacity"] == 3


@pytest.mark.parametrize("same_instance", [True, False])
def test_second_init_app_raises_helpfully(tmp_path: Path, made: Made, same_instance: bool) -> None:
    app, db = make_app(tmp_path, made)
    tune = GuniTune(app, db)
    second = tune if same_instance else GuniTune()
    with pytest.raises(RuntimeError) as info:
        second.init_app(app, db)
    message = str(info.value)
    assert "already registered" in message
    assert "'gunitune_test_app'" in message
    assert "init_app once" in message
    assert app.extensions[EXTENSION_KEY] is tune


# --- settings -----------------------------------------------------------------


def test_settings_from_app_config(tmp_path: Path, made: Made) -> None:
    app, db = make_app(
        tmp_path, made, {"GUNITUNE_QUEUE_TIMEOUT": "0.3", "GUNITUNE_CPU_CONCURRENCY": 2}
    )
    admission = GuniTune(app, db).stats(app)["admission"]
    assert admission["queue_timeout"] == 0.3
    assert admission["cpu_concurrency"] == 2


def test_settings_fall_back_to_environment(
    tmp_path: Path, made: Made, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GUNITUNE_CPU_CONCURRENCY", "3")
    monkeypatch.setenv("GUNITUNE_QUEUE_TIMEOUT", "0.7")
    app, db = make_app(tmp_path, made, {"GUNITUNE_QUEUE_TIMEOUT": "0.2"})
    admission = GuniTune(app, db).stats(app)["admission"]
    assert admission["cpu_concurrency"] == 3  # from the environment
    assert admission["queue_timeout"] == 0.2  # app.config wins


@pytest.mark.parametrize("in_environment", [False, True])
def test_bad_value_names_the_key(
    tmp_path: Path, made: Made, monkeypatch: pytest.MonkeyPatch, in_environment: bool
) -> None:
    if in_environment:
        monkeypatch.setenv("GUNITUNE_CPU_CONCURRENCY", "zero")
        app, db = make_app(tmp_path, made)
    else:
        app, db = make_app(tmp_path, made, {"GUNITUNE_CPU_CONCURRENCY": "zero"})
    with pytest.raises(ConfigError) as info:
        GuniTune(app, db)
    assert str(info.value) == (
        "GUNITUNE_CPU_CONCURRENCY='zero' is invalid: expected an integer >= 1"
        " (in app.config or the environment)"
    )
    assert EXTENSION_KEY not in app.extensions


def test_unknown_key_in_app_config_is_rejected(tmp_path: Path, made: Made) -> None:
    app, db = make_app(tmp_path, made, {"GUNITUNE_QUEUE_TIMOUT": "1"})
    with pytest.raises(ConfigError, match="did you mean GUNITUNE_QUEUE_TIMEOUT"):
        GuniTune(app, db)


def test_unknown_key_in_environment_is_rejected(
    tmp_path: Path, made: Made, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GUNITUNE_QUEUE_TIMOUT", "1")
    app, db = make_app(tmp_path, made)
    with pytest.raises(ConfigError, match="GUNITUNE_QUEUE_TIMOUT"):
        GuniTune(app, db)


# --- capacity -----------------------------------------------------------------


def test_capacity_is_pool_size_plus_overflow(tmp_path: Path, made: Made) -> None:
    app, db = make_app(tmp_path, made)
    stats = GuniTune(app, db).stats(app)
    assert stats["admission"]["capacity"] == 2 + 1
    assert stats["admission"]["queue_timeout"] == 30.0 / 2  # auto: half the pool's timeout


def test_capacity_is_the_default_binds_pool(tmp_path: Path, made: Made) -> None:
    binds = {
        "reports": {
            "url": f"sqlite:///{tmp_path / 'reports.db'}",
            "pool_size": 4,
            "max_overflow": 2,
            "pool_timeout": 8,
        },
        # SQLALCHEMY_ENGINE_OPTIONS applies to the default engine only: a URL-only
        # bind gets SQLAlchemy's own QueuePool defaults, 5 + 10.
        "audit": f"sqlite:///{tmp_path / 'audit.db'}",
        "tiny": {"url": f"sqlite:///{tmp_path / 'tiny.db'}", "pool_size": 1, "max_overflow": 0},
    }
    app, db = make_app(tmp_path, made, {"SQLALCHEMY_BINDS": binds})
    admission = GuniTune(app, db).stats(app)["admission"]
    # Summing the binds would admit requests that then queue inside the default pool.
    assert admission["capacity"] == 2 + 1
    assert admission["queue_timeout"] == 4.0  # half the smallest pool timeout


def test_capacity_without_default_bind_is_the_smallest_pool(tmp_path: Path) -> None:
    from sqlalchemy import create_engine
    from sqlalchemy.pool import QueuePool

    from gunitune.engines import admission_capacity

    big = create_engine(f"sqlite:///{tmp_path / 'a.db'}", poolclass=QueuePool, pool_size=5)
    small = create_engine(
        f"sqlite:///{tmp_path / 'b.db'}", poolclass=QueuePool, pool_size=2, max_overflow=1
    )
    assert admission_capacity([big, small]) == 3
    assert admission_capacity([big, small], primary=big) == 15


def test_db_registered_on_app_is_found(tmp_path: Path, made: Made) -> None:
    app, _db = make_app(tmp_path, made)
    assert GuniTune(app).stats(app)["admission"]["capacity"] == 3


def test_without_db_capacity_comes_from_settings(tmp_path: Path) -> None:
    app = closing(Flask("no_db"))
    app.config.update(
        {"GUNITUNE_POOL_SIZE": 4, "GUNITUNE_MAX_OVERFLOW": -1, "GUNITUNE_POOL_TIMEOUT": 3}
    )
    admission = GuniTune(app).stats(app)["admission"]
    assert admission["capacity"] == 4  # unlimited overflow counts as 0
    assert admission["queue_timeout"] == 1.5


def test_queue_timeout_not_below_pool_timeout_is_warned(tmp_path: Path, made: Made) -> None:
    app, db = make_app(tmp_path, made, {"GUNITUNE_QUEUE_TIMEOUT": "40"})
    with capture_logs() as logs:
        GuniTune(app, db)
    warnings = [e for e in logs if e["event"] == "queue_timeout_not_below_pool_timeout"]
    assert len(warnings) == 1
    assert (warnings[0]["queue_timeout"], warnings[0]["pool_timeout"]) == (40.0, 30.0)


# --- requests -----------------------------------------------------------------


def test_request_is_admitted_and_released(tmp_path: Path, made: Made) -> None:
    app, db = make_app(tmp_path, made)
    tune = GuniTune(app, db)
    response = app.test_client().get("/io")
    assert response.status_code == 200
    assert response.text == "1"
    admission = tune.stats(app)["admission"]
    assert (admission["admitted"], admission["in_flight"], admission["rejected"]) == (1, 0, 0)
    routes = tune.stats(app)["routes"]
    assert routes["/io"]["samples"] == 1


def test_slot_released_when_the_view_fails(tmp_path: Path, made: Made) -> None:
    app, db = make_app(tmp_path, made)
    tune = GuniTune(app, db)
    assert app.test_client().get("/fail").status_code == 500
    admission = tune.stats(app)["admission"]
    assert (admission["admitted"], admission["in_flight"]) == (1, 0)


def test_unmatched_route_is_admitted_as_such(tmp_path: Path, made: Made) -> None:
    app, db = make_app(tmp_path, made)
    tune = GuniTune(app, db)
    assert app.test_client().get("/nope").status_code == 404
    assert "<unmatched>" in tune.stats(app)["routes"]
    assert tune.stats(app)["admission"]["in_flight"] == 0


def test_exempt_view_bypasses_admission(tmp_path: Path, made: Made) -> None:
    app, db = make_app(tmp_path, made)
    tune = GuniTune(app, db)
    cycle_of(tune, app).admission = refusing_admission()
    client = app.test_client()
    assert client.get("/io").status_code == 503
    response = client.get("/health")
    assert response.status_code == 200
    assert response.text == "ok"
    stats = tune.stats(app)
    assert stats["admission"]["admitted"] == 0
    assert stats["admission"]["rejected"] == 1
    assert "/health" not in stats["routes"]  # not measured either


def test_exhausted_admission_answers_503_with_retry_after(tmp_path: Path, made: Made) -> None:
    app, db = make_app(tmp_path, made)
    tune = GuniTune(app, db)
    cycle_of(tune, app).admission = refusing_admission(capacity=1, queue_timeout=5.0)
    response = app.test_client().get("/io")
    assert response.status_code == 503
    # No latency measured yet: one queue timeout per request ahead, one slot.
    assert response.headers["Retry-After"] == "5"
    assert "at capacity" in response.text
    stats = tune.stats(app)
    assert (stats["admission"]["rejected"], stats["admission"]["in_flight"]) == (1, 0)
    assert stats["pool"]["sheds_total"] == 1


def test_retry_after_setting_is_used(tmp_path: Path, made: Made) -> None:
    app, db = make_app(tmp_path, made, {"GUNITUNE_RETRY_AFTER": "7"})
    tune = GuniTune(app, db)
    cycle_of(tune, app).admission = refusing_admission()
    assert app.test_client().get("/io").headers["Retry-After"] == "7"


def test_capacity_held_by_another_thread_sheds(tmp_path: Path, made: Made) -> None:
    import threading

    app, db = make_app(tmp_path, made)
    tune = GuniTune(app, db)
    admission = Admission(
        1,
        queue_timeout=0.05,
        semaphore_factory=threading.BoundedSemaphore,
        yield_to_loop=Counter(),
    )
    cycle_of(tune, app).admission = admission
    holder = threading.Thread(target=admission.admit)
    holder.start()
    holder.join()
    assert admission.in_flight == 1
    response = app.test_client().get("/io")
    assert response.status_code == 503
    assert int(response.headers["Retry-After"]) >= 1


def test_app_errorhandler_renders_the_503(tmp_path: Path, made: Made) -> None:
    app, db = make_app(tmp_path, made)
    seen: list[Overloaded] = []

    @app.errorhandler(503)
    def busy(error: Overloaded) -> Response:
        seen.append(error)
        response = jsonify(error="busy", reason=error.reason)
        response.status_code = 503
        response.headers["Retry-After"] = str(error.retry_after)
        return response

    tune = GuniTune(app, db)
    cycle_of(tune, app).admission = refusing_admission()
    response = app.test_client().get("/io")
    assert response.status_code == 503
    assert response.json == {"error": "busy", "reason": "no request slot free"}
    assert response.headers["Retry-After"] == "5"
    assert len(seen) == 1
    assert isinstance(seen[0], Overloaded)
    assert seen[0].retry_after == 5


def test_errorhandler_for_overloaded_class(tmp_path: Path, made: Made) -> None:
    app, db = make_app(tmp_path, made)

    @app.errorhandler(Overloaded)
    def busy(error: Overloaded) -> tuple[str, int]:
        return f"busy: {error.reason}", 503

    tune = GuniTune(app, db)
    cycle_of(tune, app).admission = refusing_admission()
    response = app.test_client().get("/cpu")
    assert response.status_code == 503
    assert response.text == "busy: no request slot free"


def test_retry_after_survives_app_errorhandler(tmp_path: Path, made: Made) -> None:
    app, db = make_app(tmp_path, made)

    @app.errorhandler(503)
    def busy(error: Overloaded) -> tuple[str, int]:
        return "busy, come back later", 503

    tune = GuniTune(app, db)
    cycle_of(tune, app).admission = refusing_admission()
    response = app.test_client().get("/io")
    assert response.text == "busy, come back later"
    assert response.headers.get("Retry-After") == "5"


# --- CPU lane -----------------------------------------------------------------


def test_cpu_bound_route_passes_the_cpu_lane(tmp_path: Path, made: Made) -> None:
    beats = Counter()
    window = AcceptWindow(capacity=3)
    runtime.register(runtime.WorkerRuntime(window=window, heartbeat=beats, planned_capacity=3))
    app, db = make_app(tmp_path, made)
    tune = GuniTune(app, db)
    admission = cycle_of(tune, app).admission
    yields = Counter()
    admission._yield = yields  # no gevent hub in unit tests
    client = app.test_client()
    assert client.get("/io").status_code == 200
    assert (beats.calls, yields.calls) == (0, 0)
    assert client.get("/cpu").status_code == 200
    assert (beats.calls, yields.calls) == (2, 1)  # on entering and leaving the lane
    assert window.samples == 2  # the worker's window learnt from both requests
    stats = tune.stats(app)
    assert stats["accept_window"] is not None
    assert stats["accept_window"]["capacity"] == 3
    assert stats["accept_window"]["adaptive"] is True


def test_measured_cpu_route_moves_to_the_lane(tmp_path: Path, made: Made) -> None:
    # A low ratio keeps the test stable on a loaded machine, where wall time stretches.
    app, db = make_app(tmp_path, made, {"GUNITUNE_CPU_BOUND_RATIO": "0.1"})
    tune = GuniTune(app, db)
    yields = Counter()
    cycle_of(tune, app).admission._yield = yields
    client = app.test_client()
    client.get("/burn")
    assert yields.calls == 0  # unknown routes are not CPU-bound
    route = tune.stats(app)["routes"]["/burn"]
    assert route["cpu_bound"] is True
    assert route["cpu_ms"] >= 25
    client.get("/burn")
    assert yields.calls == 1
    client.get("/burn-io")
    client.get("/burn-io")
    assert yields.calls == 1  # io_bound views never take the lane
    assert tune.stats(app)["routes"]["/burn-io"]["cpu_bound"] is True


# --- stats ----------------------------------------------------------------------


def test_stats_keys(tmp_path: Path, made: Made) -> None:
    app, db = make_app(tmp_path, made)
    tune = GuniTune(app, db)
    stats = tune.stats()  # one app: no need to name it
    assert set(stats) == STATS_KEYS
    assert stats["accept_window"] is None  # not under a gunitune worker
    assert set(stats["admission"]) == {
        "capacity",
        "in_flight",
        "waiting",
        "cpu_concurrency",
        "cpu_running",
        "cpu_waiting",
        "admitted",
        "rejected",
        "queue_timeout",
        "lane_timeout",
    }
    assert stats["pool"]["capacity"] in (0, 3)
    assert stats["routes"] == {}


def test_stats_with_two_apps(tmp_path: Path, made: Made) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first, db1 = make_app(tmp_path / "a", made)
    second, db2 = make_app(tmp_path / "b", made)
    tune = GuniTune()
    tune.init_app(first, db1)
    tune.init_app(second, db2)
    with pytest.raises(RuntimeError, match="needs the app"):
        tune.stats()
    first.test_client().get("/io")
    assert tune.stats(first)["admission"]["admitted"] == 1
    assert tune.stats(second)["admission"]["admitted"] == 0
    with second.test_request_context("/"):
        assert tune.stats()["admission"]["admitted"] == 0
    with pytest.raises(RuntimeError, match="not registered on the app 'other'"):
        tune.stats(Flask("other"))


@pytest.fixture
def stats_app(tmp_path: Path, made: Made) -> tuple[Flask, GuniTune]:
    app, db = make_app(tmp_path, made, {"GUNITUNE_STATS_PATH": "/_gunitune"})
    return app, GuniTune(app, db)


def test_stats_endpoint_answers_loopback(stats_app: tuple[Flask, GuniTune]) -> None:
    app, _tune = stats_app
    client = app.test_client()
    response = client.get("/_gunitune")
    assert response.status_code == 200
    assert response.json is not None
    assert set(response.json) == STATS_KEYS
    assert response.json["admission"]["admitted"] == 0  # the endpoint itself is exempt
    v6 = client.get("/_gunitune", environ_base={"REMOTE_ADDR": "::1"})
    assert v6.status_code == 200


@pytest.mark.parametrize("address", ["10.1.2.3", "192.168.0.1", "not-an-ip"])
def test_stats_endpoint_refuses_other_clients(
    stats_app: tuple[Flask, GuniTune], address: str
) -> None:
    app, _tune = stats_app
    response = app.test_client().get("/_gunitune", environ_base={"REMOTE_ADDR": address})
    assert response.status_code == 403
    assert "loopback clients only" in response.text


def test_stats_endpoint_answers_while_shedding(stats_app: tuple[Flask, GuniTune]) -> None:
    app, tune = stats_app
    cycle_of(tune, app).admission = refusing_admission()
    client = app.test_client()
    assert client.get("/io").status_code == 503
    response = client.get("/_gunitune")
    assert response.status_code == 200
    assert response.json is not None
    assert response.json["admission"]["rejected"] == 1


def test_stats_endpoint_with_token(tmp_path: Path, made: Made) -> None:
    app, db = make_app(
        tmp_path, made, {"GUNITUNE_STATS_PATH": "/_gunitune", "GUNITUNE_STATS_TOKEN": "s3cret"}
    )
    GuniTune(app, db)
    client = app.test_client()
    remote = {"REMOTE_ADDR": "10.1.2.3"}
    no_token = client.get("/_gunitune")
    assert no_token.status_code == 403  # loopback is not enough once a token is set
    assert "Authorization: Bearer" in no_token.text
    wrong = client.get("/_gunitune", headers={"Authorization": "Bearer nope"}, environ_base=remote)
    assert wrong.status_code == 403
    good = client.get("/_gunitune", headers={"Authorization": "Bearer s3cret"}, environ_base=remote)
    assert good.status_code == 200
    assert good.json is not None
    assert set(good.json) == STATS_KEYS


# --- process-wide meter ---------------------------------------------------------


@pytest.fixture
def fresh_meter(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A process meter created by this test, uninstalled after it."""
    original = flask_ext._meter
    monkeypatch.setattr(flask_ext, "_meter", None)
    yield
    created = flask_ext._meter
    if created is not None and created is not original:
        created.uninstall()


@pytest.mark.usefixtures("fresh_meter")
def test_each_app_gets_its_block_threshold(tmp_path: Path, made: Made) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first, db1 = make_app(tmp_path / "a", made)
    GuniTune(first, db1)
    second, db2 = make_app(tmp_path / "b", made, {"GUNITUNE_BLOCK_THRESHOLD": "0.01"})
    GuniTune(second, db2)
    with capture_logs() as logs:
        second.test_client().get("/burn")  # holds the loop ~30 ms > 10 ms
    assert [e["route"] for e in logs if e["event"] == "event_loop_blocked"] == ["/burn"]


@pytest.mark.usefixtures("fresh_meter")
def test_loop_block_is_reported(tmp_path: Path, made: Made) -> None:
    app, db = make_app(tmp_path, made, {"GUNITUNE_BLOCK_THRESHOLD": "0.01"})
    GuniTune(app, db)
    client = app.test_client()
    with capture_logs() as logs:
        client.get("/burn")
        client.get("/burn")  # within 10 s of the first: suppressed
        client.get("/health")
    blocks = [e for e in logs if e["event"] == "event_loop_blocked"]
    assert len(blocks) == 1
    assert blocks[0]["route"] == "/burn"
    assert blocks[0]["blocks"] == 1
    assert blocks[0]["seconds"] >= 0.01
