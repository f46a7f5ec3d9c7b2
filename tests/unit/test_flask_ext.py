"""The Flask extension with Flask-SQLAlchemy on SQLite, driven by Flask's test client.

Views record the slots their request holds while it runs (``seen``), so the
tests check which lane a request really took, not only what the stats say.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gevent
import pytest
from flask import Flask, Response, current_app, jsonify, request
from flask_sqlalchemy import SQLAlchemy
from gevent.event import Event
from sqlalchemy import create_engine, event, text
from sqlalchemy.pool import QueuePool
from structlog.testing import capture_logs
from werkzeug.middleware.dispatcher import DispatcherMiddleware
from werkzeug.middleware.proxy_fix import ProxyFix
from werkzeug.test import EnvironBuilder

from gunitune import flask_ext
from gunitune._request_parts import client_gone
from gunitune.core.errors import ConfigError
from gunitune.core.lanes import CPU, EXEMPT, FAST, LANES, SLOW
from gunitune.core.limits import WARMUP_SAMPLES
from gunitune.flask_ext import EXTENSION_KEY, GuniTune, find_cycle
from gunitune.http import Overloaded
from gunitune.limiter import Limiter
from tests.unit.helpers import burn, closing, wait_until

ENGINE_OPTIONS = {"poolclass": QueuePool, "pool_size": 2, "max_overflow": 1}
STATS_KEYS = {"pid", "limiter", "routes", "pool"}
SHUTTING_DOWN = "the worker is shutting down"
Made = list[tuple[Flask, SQLAlchemy]]
Slots = dict[str, int]


@pytest.fixture
def made() -> Iterator[Made]:
    """Every (app, db) made by ``make_app``; engines disposed after the test."""
    dbs: Made = []
    yield dbs
    for app, db in dbs:
        with app.app_context():
            for engine in db.engines.values():
                engine.dispose()


def record_slots() -> None:
    """Called by a view: the slots of each lane held while it runs."""
    tune = current_app.extensions[EXTENSION_KEY]
    limiter = tune.cycle().limiter
    current_app.extensions["seen"].append(
        {FAST: limiter.db.in_use(FAST), SLOW: limiter.db.in_use(SLOW), CPU: limiter.cpu.used}
    )


def seen(app: Flask) -> list[Slots]:
    recorded: list[Slots] = app.extensions["seen"]
    return recorded


NOTHING = {FAST: 0, SLOW: 0, CPU: 0}
ONE_FAST = {FAST: 1, SLOW: 0, CPU: 0}
ONE_SLOW = {FAST: 0, SLOW: 1, CPU: 0}


def make_app(
    tmp_path: Path,
    made: Made,
    config: dict[str, Any] | None = None,
    name: str = "gunitune_test_app",
) -> tuple[Flask, SQLAlchemy]:
    app = closing(Flask(name))
    app.config["SQLALCHEMY_DATABASE_URI"] = f"sqlite:///{tmp_path / (name + '.db')}"
    app.config["SQLALCHEMY_ENGINE_OPTIONS"] = dict(ENGINE_OPTIONS)
    app.config.update(config or {})
    app.extensions["seen"] = []
    db = SQLAlchemy()
    db.init_app(app)
    made.append((app, db))

    def query() -> str:
        with db.engine.connect() as conn:
            return str(conn.execute(text("select 1")).scalar())

    @app.get("/io")
    def io_view() -> str:
        record_slots()
        return query()

    @app.get("/health")
    @GuniTune.exempt
    def health() -> str:
        return "ok"

    @app.get("/nodb")
    def nodb() -> str:
        record_slots()
        return "plain"

    @app.get("/maybe")
    def maybe() -> str:
        record_slots()
        return query() if request.args.get("db") else "cached"

    @app.get("/marked-fast")
    @GuniTune.fast
    def marked_fast() -> str:
        record_slots()
        return query()

    @app.get("/marked-slow")
    @GuniTune.slow
    def marked_slow() -> str:
        record_slots()
        return query()

    @app.get("/marked-cpu")
    @GuniTune.cpu_bound
    def marked_cpu() -> str:
        record_slots()
        return query()

    @app.get("/burn")
    def burn_view() -> str:
        record_slots()
        burn(0.03)
        return "burnt"

    @app.get("/burn-io")
    @GuniTune.io_bound
    def burn_io_view() -> str:
        record_slots()
        burn(0.03)
        return "burnt"

    @app.get("/fail")
    def fail_view() -> str:
        raise RuntimeError("view failed")

    return app, db


def limiter_of(tune: GuniTune, app: Flask) -> Limiter:
    """The app's own limiter, built as its first request would build it."""
    tune.stats(app)
    limiter = tune.cycle(app).limiter
    assert limiter is not None
    return limiter


def refusing(tune: GuniTune, app: Flask) -> Limiter:
    """The app's limiter after a worker shutdown began: every queued request is refused."""
    limiter = limiter_of(tune, app)
    limiter.refuse_waiting()
    return limiter


# --- registration ---------------------------------------------------------------


def test_init_app_registers_the_extension_without_a_stats_endpoint(
    tmp_path: Path, made: Made
) -> None:
    app, db = make_app(tmp_path, made)
    tune = GuniTune(app, db)
    assert app.extensions[EXTENSION_KEY] is tune
    assert "gunitune_stats" not in app.view_functions


def test_factory_pattern_uses_the_db_given_to_the_constructor(tmp_path: Path, made: Made) -> None:
    app, db = make_app(tmp_path, made)
    tune = GuniTune(db=db)
    assert EXTENSION_KEY not in app.extensions
    tune.init_app(app)
    assert app.extensions[EXTENSION_KEY] is tune
    assert tune.stats(app)["limiter"]["db_limit"] == 3


def test_db_registered_on_the_app_is_found(tmp_path: Path, made: Made) -> None:
    app, _db = make_app(tmp_path, made)
    assert GuniTune(app).stats(app)["limiter"]["db_limit"] == 3


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
    config = {
        "GUNITUNE_QUEUE_TIMEOUT": "0.3",
        "GUNITUNE_CPU_CONCURRENCY": 2,
        "GUNITUNE_FAST_SHARE": 0.7,
    }
    app, db = make_app(tmp_path, made, config)
    limiter = GuniTune(app, db).stats(app)["limiter"]
    assert limiter["queue_timeout"] == 0.3
    assert limiter["cpu_concurrency"] == 2
    assert limiter["lanes"][FAST]["guaranteed"] == 2  # floor(0.7 * 3)


def test_settings_fall_back_to_the_environment_and_app_config_wins(
    tmp_path: Path, made: Made, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GUNITUNE_CPU_CONCURRENCY", "3")
    monkeypatch.setenv("GUNITUNE_QUEUE_TIMEOUT", "0.7")
    app, db = make_app(tmp_path, made, {"GUNITUNE_QUEUE_TIMEOUT": "0.2"})
    limiter = GuniTune(app, db).stats(app)["limiter"]
    assert limiter["cpu_concurrency"] == 3  # from the environment
    assert limiter["queue_timeout"] == 0.2  # app.config wins


def test_queue_timeout_is_off_by_default(tmp_path: Path, made: Made) -> None:
    app, db = make_app(tmp_path, made)
    assert GuniTune(app, db).stats(app)["limiter"]["queue_timeout"] is None


def test_queue_timeout_in_app_config_only_bounds_the_wait(tmp_path: Path, made: Made) -> None:
    app, db = make_app(tmp_path, made, {"GUNITUNE_QUEUE_TIMEOUT": "0.05"})
    tune = GuniTune(app, db)
    limiter = limiter_of(tune, app)
    for _ in range(3):
        limiter.acquire(FAST)  # every database slot is busy
    response = app.test_client().get("/io")
    assert response.status_code == 503
    assert seen(app) == []  # the view never ran
    assert limiter.stats()["lanes"][FAST]["rejected"] == 1
    assert limiter.waiting() == 0


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
    where = "the environment" if in_environment else "app.config"
    assert str(info.value) == (
        "GUNITUNE_CPU_CONCURRENCY='zero' is invalid: expected an integer from 1 to 1024"
        f" (in {where})"
    )
    assert EXTENSION_KEY not in app.extensions


def test_unknown_gunitune_key_in_app_config_raises_naming_it(tmp_path: Path, made: Made) -> None:
    app, db = make_app(tmp_path, made, {"GUNITUNE_QUEUE_TIMOUT": "1"})
    with pytest.raises(ConfigError) as info:
        GuniTune(app, db)
    assert str(info.value) == (
        "GUNITUNE_QUEUE_TIMOUT is not a gunitune setting: did you mean GUNITUNE_QUEUE_TIMEOUT?"
        " (in app.config)"
    )
    assert EXTENSION_KEY not in app.extensions


def test_unknown_gunitune_key_in_the_environment_is_rejected(
    tmp_path: Path, made: Made, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GUNITUNE_QUEUE_TIMOUT", "1")
    app, db = make_app(tmp_path, made)
    with pytest.raises(ConfigError, match="GUNITUNE_QUEUE_TIMOUT"):
        GuniTune(app, db)


# --- database slots -----------------------------------------------------------------


def test_database_slots_are_the_default_engine_pool(tmp_path: Path, made: Made) -> None:
    app, db = make_app(tmp_path, made)
    limiter = GuniTune(app, db).stats(app)["limiter"]
    assert limiter["db_limit"] == 2 + 1
    assert limiter["db_capacity_source"] == "the app's default engine"


def test_database_slots_follow_the_default_bind_not_the_sum_of_binds(
    tmp_path: Path, made: Made
) -> None:
    binds = {
        "reports": {"url": f"sqlite:///{tmp_path / 'reports.db'}", "pool_size": 4},
        "audit": f"sqlite:///{tmp_path / 'audit.db'}",  # QueuePool defaults: 5 + 10
        "tiny": {"url": f"sqlite:///{tmp_path / 'tiny.db'}", "pool_size": 1, "max_overflow": 0},
    }
    app, db = make_app(tmp_path, made, {"SQLALCHEMY_BINDS": binds})
    # Summing the binds would admit requests that then queue inside the default pool.
    assert GuniTune(app, db).stats(app)["limiter"]["db_limit"] == 2 + 1


def test_without_a_default_bind_the_smallest_bound_pool_sets_the_slots(
    tmp_path: Path, made: Made
) -> None:
    app = closing(Flask("binds_only"))
    app.config["SQLALCHEMY_BINDS"] = {
        "big": {
            "url": f"sqlite:///{tmp_path / 'big.db'}",
            "poolclass": QueuePool,
            "pool_size": 5,
            "max_overflow": 10,
        },
        "small": {
            "url": f"sqlite:///{tmp_path / 'small.db'}",
            "poolclass": QueuePool,
            "pool_size": 2,
            "max_overflow": 1,
        },
    }
    db = SQLAlchemy(app)
    made.append((app, db))
    limiter = GuniTune(app, db).stats(app)["limiter"]
    assert limiter["db_limit"] == 3, limiter["db_capacity_source"]


def test_plain_engines_set_the_slots_and_report_database_use(tmp_path: Path) -> None:
    engine = create_engine(
        f"sqlite:///{tmp_path / 'plain.db'}", poolclass=QueuePool, pool_size=3, max_overflow=1
    )
    app = closing(Flask("plain_engines"))

    @app.get("/q")
    def q() -> str:
        with engine.connect() as conn:
            return str(conn.execute(text("select 1")).scalar())

    try:
        tune = GuniTune(app, engines=[engine])
        assert tune.stats(app)["limiter"]["db_limit"] == 4
        client = app.test_client()
        for _ in range(4):
            assert client.get("/q").text == "1"
        # Its checkouts were seen: a route that uses the database never turns exempt.
        assert tune.stats(app)["routes"]["/q"]["lane"] == FAST
    finally:
        engine.dispose()


def test_without_any_engine_the_slots_come_from_the_settings() -> None:
    app = closing(Flask("no_db"))
    app.config.update({"GUNITUNE_POOL_SIZE": 4, "GUNITUNE_MAX_OVERFLOW": -1})
    limiter = GuniTune(app).stats(app)["limiter"]
    assert limiter["db_limit"] == 4  # unlimited overflow counts as 0
    assert "no bounded pool found" in limiter["db_capacity_source"]


# --- requests and lanes -------------------------------------------------------------


def test_request_holds_a_fast_slot_while_it_runs_and_gives_it_back(
    tmp_path: Path, made: Made
) -> None:
    app, db = make_app(tmp_path, made)
    tune = GuniTune(app, db)
    response = app.test_client().get("/io")
    assert (response.status_code, response.text) == (200, "1")
    assert seen(app) == [ONE_FAST]
    stats = tune.stats(app)
    assert stats["limiter"]["db_in_use"] == 0
    assert stats["limiter"]["lanes"][FAST]["admitted"] == 1
    assert stats["routes"]["/io"]["samples"] == 1


def test_slot_released_when_the_view_fails(tmp_path: Path, made: Made) -> None:
    app, db = make_app(tmp_path, made)
    tune = GuniTune(app, db)
    assert app.test_client().get("/fail").status_code == 500
    limiter = tune.stats(app)["limiter"]
    assert (limiter["lanes"][FAST]["admitted"], limiter["db_in_use"]) == (1, 0)


def test_unmatched_route_is_served_in_a_lane_and_released(tmp_path: Path, made: Made) -> None:
    app, db = make_app(tmp_path, made)
    tune = GuniTune(app, db)
    assert app.test_client().get("/nope").status_code == 404
    stats = tune.stats(app)
    assert "<unmatched>" in stats["routes"]
    assert stats["limiter"]["db_in_use"] == 0


def test_exempt_view_bypasses_the_limiter(tmp_path: Path, made: Made) -> None:
    app, db = make_app(tmp_path, made)
    tune = GuniTune(app, db)
    refusing(tune, app)
    client = app.test_client()
    assert client.get("/io").status_code == 503
    response = client.get("/health")
    assert (response.status_code, response.text) == (200, "ok")
    stats = tune.stats(app)
    assert stats["limiter"]["lanes"][FAST]["rejected"] == 1
    assert stats["limiter"]["lanes"][EXEMPT]["admitted"] == 0
    health_route = stats["routes"].get("/health", {"samples": 0, "requests": 0})
    assert (health_route["samples"], health_route["requests"]) == (0, 0)  # not measured either


def test_app_before_request_hooks_run_inside_the_slot(tmp_path: Path, made: Made) -> None:
    app, db = make_app(tmp_path, made)
    in_use: list[int] = []

    @app.before_request
    def load_user() -> None:  # registered before GuniTune, and may query the database
        limiter = current_app.extensions[EXTENSION_KEY].cycle().limiter
        in_use.append(limiter.db.used if limiter is not None else -1)

    tune = GuniTune(app, db)
    limiter_of(tune, app)
    assert app.test_client().get("/io").status_code == 200
    assert in_use == [1]


def test_two_views_on_one_url_pattern_are_two_routes(tmp_path: Path, made: Made) -> None:
    app, db = make_app(tmp_path, made)

    @app.get("/items")
    def list_items() -> str:
        return "list"

    @app.post("/items")
    def add_item() -> str:
        return "added"

    tune = GuniTune(app, db)
    client = app.test_client()
    assert client.get("/items").text == "list"
    assert client.post("/items").text == "added"
    routes = tune.stats(app)["routes"]
    assert routes["/items [list_items]"]["samples"] == 1
    assert routes["/items [add_item]"]["samples"] == 1


def test_learned_database_free_route_takes_no_slot(tmp_path: Path, made: Made) -> None:
    app, db = make_app(tmp_path, made)
    tune = GuniTune(app, db)
    client = app.test_client()
    for _ in range(3):
        assert client.get("/nodb").status_code == 200
    assert seen(app) == [ONE_FAST] * 3  # until it is known, it may need a connection
    assert tune.stats(app)["routes"]["/nodb"]["lane"] == EXEMPT
    assert client.get("/nodb").status_code == 200
    assert seen(app)[-1] == NOTHING
    refusing(tune, app)
    assert client.get("/nodb").text == "plain"  # never queues, even while draining
    assert client.get("/io").status_code == 503


def test_exempt_route_that_uses_the_database_again_takes_a_slot_again(
    tmp_path: Path, made: Made
) -> None:
    app, db = make_app(tmp_path, made)
    tune = GuniTune(app, db)
    client = app.test_client()
    for _ in range(3):
        assert client.get("/maybe").text == "cached"
    assert tune.stats(app)["routes"]["/maybe"]["lane"] == EXEMPT
    assert client.get("/maybe?db=1").text == "1"  # a cache miss, served without a slot
    assert seen(app)[-1] == NOTHING
    assert tune.stats(app)["routes"]["/maybe"]["lane"] == FAST
    assert client.get("/maybe").text == "cached"
    assert seen(app)[-1] == ONE_FAST


def test_unsampled_exempt_route_that_uses_the_database_takes_a_slot_again(
    tmp_path: Path, made: Made
) -> None:
    app, db = make_app(tmp_path, made)
    tune = GuniTune(app, db)
    client = app.test_client()
    for _ in range(WARMUP_SAMPLES):  # every one measured: no database
        assert client.get("/maybe").text == "cached"
    assert tune.stats(app)["routes"]["/maybe"]["lane"] == EXEMPT
    # Past the warm-up most requests are not measured: the checkout is still seen.
    assert client.get("/maybe?db=1").text == "1"
    route = tune.stats(app)["routes"]["/maybe"]
    assert (route["samples"], route["lane"]) == (WARMUP_SAMPLES, FAST)
    assert client.get("/maybe").text == "cached"
    assert seen(app)[-2:] == [NOTHING, ONE_FAST]


@pytest.mark.parametrize(
    ("route", "fast_seconds", "held", "learned"),
    [
        # Every request measures slow, yet the route is marked fast: fast lane.
        ("/marked-fast", "1e-9", ONE_FAST, SLOW),
        # Every request measures fast, yet the route is marked slow: slow lane.
        ("/marked-slow", "60", ONE_SLOW, FAST),
        # An IO route marked CPU-bound: the CPU lane, then its database lane.
        ("/marked-cpu", "60", {FAST: 1, SLOW: 0, CPU: 1}, FAST),
    ],
)
def test_decorators_override_what_the_route_measures(
    tmp_path: Path, made: Made, route: str, fast_seconds: str, held: Slots, learned: str
) -> None:
    app, db = make_app(tmp_path, made, {"GUNITUNE_FAST_SECONDS": fast_seconds})
    tune = GuniTune(app, db)
    client = app.test_client()
    for _ in range(3):
        assert client.get(route).status_code == 200
    assert seen(app) == [held] * 3
    assert tune.stats(app)["routes"][route]["lane"] == learned


def test_measured_cpu_route_moves_to_the_cpu_lane(tmp_path: Path, made: Made) -> None:
    # A low ratio keeps the test stable on a loaded machine, where wall time stretches.
    app, db = make_app(tmp_path, made, {"GUNITUNE_CPU_BOUND_RATIO": "0.1"})
    tune = GuniTune(app, db)
    client = app.test_client()
    client.get("/burn")
    assert seen(app)[-1][CPU] == 0  # unknown routes are not CPU-bound
    route = tune.stats(app)["routes"]["/burn"]
    assert route["lane"] == CPU
    assert route["cpu_ms"] >= 25
    client.get("/burn")
    assert seen(app)[-1][CPU] == 1
    assert tune.stats(app)["limiter"]["lanes"][CPU]["admitted"] == 1


def test_io_bound_decorator_keeps_a_cpu_heavy_route_out_of_the_cpu_lane(
    tmp_path: Path, made: Made
) -> None:
    app, db = make_app(tmp_path, made, {"GUNITUNE_CPU_BOUND_RATIO": "0.1"})
    tune = GuniTune(app, db)
    client = app.test_client()
    for _ in range(3):
        client.get("/burn-io")
    assert tune.stats(app)["routes"]["/burn-io"]["lane"] == CPU  # what it measures
    assert [slots[CPU] for slots in seen(app)] == [0, 0, 0]


def test_cpu_route_is_cpu_bound_alone_and_under_concurrency(tmp_path: Path, made: Made) -> None:
    def build(name: str) -> tuple[Flask, GuniTune]:
        # The default pool's capacity (15): that many requests run at once.
        options = {"poolclass": QueuePool, "pool_size": 5, "max_overflow": 10}
        app, db = make_app(tmp_path, made, {"SQLALCHEMY_ENGINE_OPTIONS": options}, name=name)

        @app.get("/report")
        def report() -> str:
            gevent.sleep(0.005)  # one short query
            burn(0.04)  # then 40 ms of CPU: ~90 % of its wall time when alone
            return "ok"

        tune = GuniTune(app, db)
        cycle = tune.cycle(app)
        # What a gevent worker attaches: waits that let other greenlets run.
        cycle.attach(Limiter(cycle.resolve_own(), event_factory=Event, yield_to_loop=gevent.idle))
        return app, tune

    alone, tune_alone = build("alone")
    for _ in range(3):
        assert alone.test_client().get("/report").status_code == 200
    assert tune_alone.stats(alone)["routes"]["/report"]["lane"] == CPU

    busy, tune_busy = build("busy")
    greenlets = [gevent.spawn(busy.test_client().get, "/report") for _ in range(12)]
    gevent.joinall(greenlets, timeout=30, raise_error=True)
    assert all(g.value.status_code == 200 for g in greenlets)
    route = tune_busy.stats(busy)["routes"]["/report"]
    assert route["cpu_ms"] >= 35, route  # each request still costs ~40 ms of its own CPU
    assert route["lane"] == CPU, route


# --- shedding -----------------------------------------------------------------------


def test_rejected_request_gets_503_with_retry_after(tmp_path: Path, made: Made) -> None:
    app, db = make_app(tmp_path, made)
    tune = GuniTune(app, db)
    refusing(tune, app)
    response = app.test_client().get("/io")
    assert response.status_code == 503
    # Nothing measured yet: one second per request ahead, one request, three slots.
    assert response.headers["Retry-After"] == "1"
    assert "at capacity" in response.text
    assert seen(app) == []
    stats = tune.stats(app)
    assert (stats["limiter"]["lanes"][FAST]["rejected"], stats["limiter"]["db_in_use"]) == (1, 0)
    assert stats["pool"]["sheds_total"] == 1


def test_retry_after_setting_is_used(tmp_path: Path, made: Made) -> None:
    app, db = make_app(tmp_path, made, {"GUNITUNE_RETRY_AFTER": "7"})
    tune = GuniTune(app, db)
    refusing(tune, app)
    assert app.test_client().get("/io").headers["Retry-After"] == "7"


def test_app_errorhandler_renders_the_503(tmp_path: Path, made: Made) -> None:
    app, db = make_app(tmp_path, made, {"GUNITUNE_RETRY_AFTER": "5"})
    received: list[Overloaded] = []

    @app.errorhandler(503)
    def busy(error: Overloaded) -> Response:
        received.append(error)
        response = jsonify(error="busy", reason=error.reason)
        response.status_code = 503
        response.headers["Retry-After"] = "9"
        return response

    tune = GuniTune(app, db)
    refusing(tune, app)
    response = app.test_client().get("/io")
    assert response.status_code == 503
    assert response.json == {"error": "busy", "reason": SHUTTING_DOWN}
    assert response.headers["Retry-After"] == "9"  # the app's own value is kept
    assert len(received) == 1
    assert isinstance(received[0], Overloaded)
    assert received[0].retry_after == 5


def test_errorhandler_for_the_overloaded_class(tmp_path: Path, made: Made) -> None:
    app, db = make_app(tmp_path, made)

    @app.errorhandler(Overloaded)
    def busy(error: Overloaded) -> tuple[str, int]:
        return f"busy: {error.reason}", 503

    tune = GuniTune(app, db)
    refusing(tune, app)
    response = app.test_client().get("/marked-cpu")
    assert response.status_code == 503
    assert response.text == f"busy: {SHUTTING_DOWN}"
    assert tune.stats(app)["limiter"]["lanes"][CPU]["rejected"] == 1


def test_retry_after_kept_when_the_app_503_handler_drops_it(tmp_path: Path, made: Made) -> None:
    app, db = make_app(tmp_path, made, {"GUNITUNE_RETRY_AFTER": "5"})

    @app.errorhandler(503)
    def busy(error: Overloaded) -> tuple[str, int]:
        return "busy, come back later", 503

    tune = GuniTune(app, db)
    refusing(tune, app)
    response = app.test_client().get("/io")
    assert response.text == "busy, come back later"
    assert response.headers.get("Retry-After") == "5"


def test_queued_request_whose_client_left_is_not_served(tmp_path: Path, made: Made) -> None:
    app, db = make_app(tmp_path, made)
    tune = GuniTune(app, db)
    limiter = limiter_of(tune, app)
    held = [limiter.acquire(FAST) for _ in range(3)]
    ours, theirs = socket.socketpair()
    theirs.close()  # the client gave up while its request was queued
    responses: list[Any] = []

    def send() -> None:
        client = app.test_client()
        responses.append(client.get("/io", environ_base={"gunicorn.socket": ours}))

    sender = threading.Thread(target=send)
    try:
        sender.start()
        wait_until(lambda: limiter.waiting() == 1)
        limiter.release(held.pop())
        sender.join(timeout=5)
        assert [r.status_code for r in responses] == [400]
        assert seen(app) == []
        assert limiter.stats()["lanes"][FAST]["client_gone"] == 1
        assert limiter.db.used == 2  # the slot went back, not to the departed request
    finally:
        ours.close()


# --- release on close -----------------------------------------------------------------


def test_streamed_body_runs_inside_its_slot(tmp_path: Path, made: Made) -> None:
    app, db = make_app(tmp_path, made)
    tune = GuniTune(app, db)
    in_use: list[int] = []

    @app.get("/export")
    def export() -> Response:
        limiter = tune.cycle(app).limiter
        assert limiter is not None

        def rows() -> Iterator[str]:
            for i in range(3):
                in_use.append(limiter.db.used)
                burn(0.02)
                yield f"{i}\n"

        return Response(rows(), mimetype="text/plain")

    assert app.test_client().get("/export").text == "0\n1\n2\n"
    assert in_use == [1, 1, 1]  # the body runs while its request holds the slot
    stats = tune.stats(app)
    assert stats["limiter"]["db_in_use"] == 0
    assert stats["routes"]["/export"]["cpu_ms"] >= 50  # the body's CPU is the request's


def test_slot_released_when_the_streamed_body_close_raises(tmp_path: Path, made: Made) -> None:
    app, db = make_app(tmp_path, made)
    tune = GuniTune(app, db)

    class Rows:
        def __iter__(self) -> Iterator[bytes]:
            yield b"row\n"

        def close(self) -> None:
            raise RuntimeError("cursor close failed")

    @app.get("/rows")
    def rows() -> Response:
        return Response(Rows(), mimetype="text/plain")

    with pytest.raises(RuntimeError, match="cursor close failed"):
        app.test_client().get("/rows")
    assert tune.stats(app)["limiter"]["db_in_use"] == 0
    assert tune.stats(app)["routes"]["/rows"]["samples"] == 1


def test_slot_held_until_the_session_connection_is_returned(tmp_path: Path, made: Made) -> None:
    app, db = make_app(tmp_path, made)
    tune = GuniTune(app, db)
    limiter = limiter_of(tune, app)
    in_use_at_checkin: list[int] = []

    @app.get("/count")
    def count() -> str:
        return str(db.session.execute(text("select 1")).scalar())

    with app.app_context():
        event.listen(db.engine, "checkin", lambda *a: in_use_at_checkin.append(limiter.db.used))
    assert app.test_client().get("/count").text == "1"
    assert in_use_at_checkin == [1]
    assert limiter.db.used == 0


def test_slot_released_even_when_another_teardown_fails(tmp_path: Path, made: Made) -> None:
    app, db = make_app(tmp_path, made)
    tune = GuniTune(app, db)

    @app.teardown_request
    def flaky_cleanup(_exc: BaseException | None) -> None:
        raise RuntimeError("cleanup failed")

    with pytest.raises(RuntimeError, match="cleanup failed"):
        app.test_client().get("/io")
    assert tune.stats(app)["limiter"]["db_in_use"] == 0


def test_client_gone_peeks_without_waiting_or_consuming() -> None:
    ours, theirs = socket.socketpair()
    try:
        assert client_gone(ours) is False  # open, nothing sent
        theirs.sendall(b"GET")
        assert client_gone(ours) is False  # a pipelined request is not a goodbye
        assert ours.recv(3) == b"GET"  # peeked, not consumed
        theirs.close()
        assert client_gone(ours) is True
    finally:
        ours.close()
    assert client_gone(ours) is True  # a socket that errors counts as gone


def test_client_gone_does_not_wait_on_a_gevent_socket() -> None:
    import gevent.socket

    ours, theirs = gevent.socket.socketpair()
    try:
        with gevent.Timeout(5):
            assert client_gone(ours) is False
    finally:
        ours.close()
        theirs.close()


# --- the limiter: the cycle's own, or the worker's -------------------------------------


def test_outside_a_worker_the_app_builds_its_own_limiter_on_first_use(
    tmp_path: Path, made: Made
) -> None:
    app, db = make_app(tmp_path, made)
    tune = GuniTune(app, db)
    cycle = tune.cycle(app)
    assert cycle.limiter is None
    app.test_client().get("/io")
    assert isinstance(cycle.limiter, Limiter)
    assert cycle.limiter.db.limit == 3


def test_attached_worker_limiter_serves_the_requests(tmp_path: Path, made: Made) -> None:
    app, db = make_app(tmp_path, made)
    tune = GuniTune(app, db)
    cycle = tune.cycle(app)
    beats: list[int] = []
    worker_limiter = Limiter(cycle.resolve_own(), heartbeat=lambda: beats.append(1))
    cycle.attach(worker_limiter)
    assert app.test_client().get("/marked-cpu").status_code == 200
    assert beats  # the worker's heartbeat: the CPU lane is progress
    assert worker_limiter.stats()["lanes"][CPU]["admitted"] == 1
    assert tune.stats(app)["limiter"]["lanes"][CPU]["admitted"] == 1


def test_find_cycle_reaches_the_app_through_middleware(tmp_path: Path, made: Made) -> None:
    app, db = make_app(tmp_path, made)
    tune = GuniTune(app, db)
    cycle = tune.cycle(app)
    assert find_cycle(app) is cycle
    assert find_cycle(ProxyFix(app)) is cycle
    assert find_cycle(DispatcherMiddleware(ProxyFix(app), {})) is cycle


def test_find_cycle_is_none_without_the_extension() -> None:
    assert find_cycle(Flask("plain")) is None
    assert find_cycle(lambda environ, start_response: []) is None


# --- stats ----------------------------------------------------------------------


def test_stats_shape(tmp_path: Path, made: Made) -> None:
    app, db = make_app(tmp_path, made)
    tune = GuniTune(app, db)
    stats = tune.stats()  # one app: no need to name it
    assert set(stats) == STATS_KEYS
    assert list(stats["limiter"]["lanes"]) == list(LANES)
    assert "gate" not in stats["limiter"]  # not under a gunitune worker
    assert stats["pool"]["capacity"] in (0, 3)
    assert stats["routes"] == {}
    app.test_client().get("/io")
    assert set(tune.stats()["routes"]["/io"]) == {
        "lane",
        "cpu_ratio",
        "cpu_ms",
        "wall_ms",
        "samples",
        "requests",
    }


def test_each_app_has_its_own_state(tmp_path: Path, made: Made) -> None:
    first, db1 = make_app(tmp_path, made, name="first")
    second, db2 = make_app(tmp_path, made, name="second")
    tune = GuniTune()
    tune.init_app(first, db1)
    tune.init_app(second, db2)
    with pytest.raises(RuntimeError, match="needs the app"):
        tune.stats()
    first.test_client().get("/io")
    assert tune.stats(first)["limiter"]["lanes"][FAST]["admitted"] == 1
    assert tune.stats(second)["limiter"]["lanes"][FAST]["admitted"] == 0
    assert "/io" not in tune.stats(second)["routes"]
    with second.test_request_context("/"):
        assert tune.stats()["limiter"]["lanes"][FAST]["admitted"] == 0
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
    assert response.json["limiter"]["db_in_use"] == 0  # the endpoint itself is exempt
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


def test_stats_endpoint_refuses_clients_forwarded_by_a_local_proxy(
    stats_app: tuple[Flask, GuniTune],
) -> None:
    app, _tune = stats_app
    response = app.test_client().get(
        "/_gunitune",
        headers={"X-Forwarded-For": "203.0.113.7", "X-Real-IP": "203.0.113.7"},
        environ_base={"REMOTE_ADDR": "127.0.0.1"},  # nginx on the same box
    )
    assert response.status_code == 403


def test_stats_endpoint_answers_while_shedding(stats_app: tuple[Flask, GuniTune]) -> None:
    app, tune = stats_app
    refusing(tune, app)
    client = app.test_client()
    assert client.get("/io").status_code == 503
    response = client.get("/_gunitune")
    assert response.status_code == 200
    assert response.json is not None
    assert response.json["limiter"]["lanes"][FAST]["rejected"] == 1


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


# --- loop-block reports ---------------------------------------------------------------


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
    first, db1 = make_app(tmp_path, made, name="first")
    GuniTune(first, db1)
    second, db2 = make_app(tmp_path, made, {"GUNITUNE_BLOCK_THRESHOLD": "0.01"}, name="second")
    GuniTune(second, db2)
    with capture_logs() as logs:
        first.test_client().get("/burn")  # 30 ms < the default 0.5 s
        second.test_client().get("/burn")  # 30 ms > 10 ms
    assert [e["route"] for e in logs if e["event"] == "event_loop_blocked"] == ["/burn"]


@pytest.mark.usefixtures("fresh_meter")
def test_loop_block_is_reported_once_per_interval(tmp_path: Path, made: Made) -> None:
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


# --- what the adaptive limit learns ---------------------------------------------------


def test_connection_hold_time_feeds_the_database_limit(tmp_path: Path, made: Made) -> None:
    app, db = make_app(tmp_path, made)
    tune = GuniTune(app, db)
    assert app.test_client().get("/io").status_code == 200
    adaptive = tune.stats(app)["limiter"]["adaptive"]
    # The request checked a connection out and in: its hold is /io's baseline.
    assert 0 < adaptive["baseline_ms"]["/io"] < 1000
    assert "/nodb" not in adaptive["baseline_ms"]
    assert app.test_client().get("/nodb").status_code == 200
    assert "/nodb" not in tune.stats(app)["limiter"]["adaptive"]["baseline_ms"]


def test_errors_of_the_app_are_not_drops(tmp_path: Path, made: Made) -> None:
    """A missing table (an OperationalError on SQLite) or a bug after a query say
    nothing about the database's load: the limit stays (capacity errors: test_db_holds)."""
    app, db = make_app(tmp_path, made)

    @app.get("/broken-sql")
    def broken_sql() -> str:
        with db.engine.connect() as conn:
            conn.execute(text("select * from no_such_table"))
        return "unreachable"

    @app.get("/app-error")
    def app_error() -> str:
        with db.engine.connect() as conn:
            conn.execute(text("select 1"))
        raise ValueError("the app's own bug")

    tune = GuniTune(app, db)
    client = app.test_client()
    assert client.get("/app-error").status_code == 500
    assert client.get("/broken-sql").status_code == 500
    limiter = tune.stats(app)["limiter"]
    assert limiter["adaptive"]["drops"] == 0
    assert limiter["db_limit"] == limiter["adaptive"]["ceiling"]


def test_a_slow_route_scouts_in_the_fast_lane_while_warming_up(
    tmp_path: Path, made: Made
) -> None:
    app, db = make_app(tmp_path, made, {"GUNITUNE_FAST_SECONDS": 0.02})

    @app.get("/slowq")
    def slowq() -> str:
        record_slots()
        with db.engine.connect() as conn:
            conn.execute(text("select 1"))
        gevent.sleep(0.03)  # waiting (not CPU), over GUNITUNE_FAST_SECONDS: a slow route
        return "ok"

    tune = GuniTune(app, db)
    client = app.test_client()
    for _ in range(WARMUP_SAMPLES + 1):
        assert client.get("/slowq").status_code == 200
    assert tune.stats(app)["routes"]["/slowq"]["lane"] == SLOW, tune.stats(app)["routes"]
    # Its first request (a new route's) and each scout while warming up ran in
    # the fast lane, one at a time; once warm, the next waits SCOUT_SECONDS.
    assert seen(app)[:WARMUP_SAMPLES] == [ONE_FAST] * WARMUP_SAMPLES
    assert seen(app)[WARMUP_SAMPLES] == ONE_SLOW
    assert not tune.cycle(app).profiles.get("/slowq").scouting


def test_slot_released_before_a_slow_reader_reads(tmp_path: Path, made: Made) -> None:
    """Issue 10 item 7: a built response whose connection is back frees its slot at once."""
    app, db = make_app(tmp_path, made)
    tune = GuniTune(app, db)
    limiter = limiter_of(tune, app)

    @app.get("/big")
    @tune.slow
    def big() -> str:
        db.session.execute(text("select 1"))
        return "x" * 100_000

    environ = EnvironBuilder(path="/big").get_environ()
    body = app.wsgi_app(environ, lambda status, headers, exc_info=None: None)
    try:
        assert limiter.db.used == 0  # the client has not read a byte yet
        assert tune.stats(app)["routes"]["/big"]["samples"] == 1
        assert b"".join(body) == b"x" * 100_000
    finally:
        getattr(body, "close", lambda: None)()
