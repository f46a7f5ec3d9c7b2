"""The demo's routes and configuration."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from flask import Flask, Response, abort, request
from flask_sqlalchemy import SQLAlchemy
from gevent import monkey
from sqlalchemy import text

from demo_app.logging_setup import configure_logging
from gunitune import GuniTune
from gunitune.database_url import masked, parse
from gunitune.green import make_psycopg2_green

IO_BODY = "hello there!\n"


def _number(environ: Mapping[str, str], key: str, default: float, *, integer: bool) -> float:
    raw = environ.get(key, "").strip()
    if not raw:
        return default
    try:
        value = int(raw) if integer else float(raw)
    except ValueError:
        value = -1
    if value < 0 or value != value:
        kind = "an integer >= 0" if integer else "a number >= 0"
        raise ValueError(f"{key}={raw!r} is invalid: expected {kind}")
    return value


def _on_off(environ: Mapping[str, str], key: str) -> bool:
    raw = environ.get(key, "on").strip().lower()
    if raw not in ("on", "off"):
        raise ValueError(f"{key}={raw!r} is invalid: expected on or off")
    return raw == "on"


def _explicit_driver(url: str) -> str:
    """The demo's figures were measured on psycopg2: a plain URL keeps it, ``+psycopg`` opts in."""
    parsed = parse(url)
    if parsed.drivername in ("postgres", "postgresql"):
        parsed = parsed.set(drivername="postgresql+psycopg2")
    return parsed.render_as_string(hide_password=False)


@dataclass(frozen=True)
class DemoConfig:
    """Everything the demo reads from its environment, validated."""

    database_url: str
    io_seconds: float = 5.0
    cpu_loop: int = 100_000_000
    # /dbcpu's generate_series length: about 25 ms of PostgreSQL CPU per query.
    dbcpu_rows: int = 300_000
    pool_size: int = 5
    max_overflow: int = 10
    pool_timeout: float = 30.0
    # DEMO_POOL_SIZE / DEMO_MAX_OVERFLOW given: the pool is the app's choice, which
    # GUNITUNE_POOL=auto keeps; unset, the engine has SQLAlchemy's default (5 + 10).
    pool_explicit: bool = True
    gunitune: bool = True
    green: bool = True

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> DemoConfig:
        """Read and validate ``DATABASE_URL`` and ``DEMO_*``; ValueError names key and value."""
        url = environ.get("DATABASE_URL", "").strip()
        if not url:
            raise ValueError(
                "DATABASE_URL is not set: export DATABASE_URL=postgresql://user:password@host:5432/db"
            )
        url = _explicit_driver(url)
        flag = _on_off(environ, "DEMO_GUNITUNE")
        max_overflow_raw = environ.get("DEMO_MAX_OVERFLOW", "").strip()
        return cls(
            database_url=url,
            io_seconds=_number(environ, "DEMO_IO_SECONDS", 5.0, integer=False),
            cpu_loop=int(_number(environ, "DEMO_CPU_LOOP", 100_000_000, integer=True)),
            dbcpu_rows=int(_number(environ, "DEMO_DBCPU_ROWS", 300_000, integer=True)),
            pool_size=int(_number(environ, "DEMO_POOL_SIZE", 5, integer=True)),
            # -1 is SQLAlchemy's "unlimited overflow"; anything below is a mistake.
            max_overflow=-1
            if max_overflow_raw == "-1"
            else int(_number(environ, "DEMO_MAX_OVERFLOW", 10, integer=True)),
            pool_timeout=_number(environ, "DEMO_POOL_TIMEOUT", 30.0, integer=False),
            pool_explicit=any(
                environ.get(k, "").strip() for k in ("DEMO_POOL_SIZE", "DEMO_MAX_OVERFLOW")
            ),
            gunitune=flag,
            green=_on_off(environ, "DEMO_GREEN"),
        )


def create_app(config: DemoConfig) -> Flask:
    """The seed's app with the given configuration."""
    configure_logging()
    if config.green and monkey.is_module_patched("socket"):
        # What every gevent + psycopg2 app does (psycogreen's patch), gunitune or not:
        # the stock and hand-tuned configurations are compared with it in place.
        make_psycopg2_green()
    app = Flask("demo_app")
    app.config["SQLALCHEMY_DATABASE_URI"] = config.database_url
    options: dict[str, float] = {"pool_timeout": config.pool_timeout}
    if config.pool_explicit:
        options |= {"pool_size": config.pool_size, "max_overflow": config.max_overflow}
    app.config["SQLALCHEMY_ENGINE_OPTIONS"] = options
    db = SQLAlchemy(app)
    app.extensions["demo_config"] = config

    @app.get("/io")
    def io_route() -> str:
        with db.engine.connect() as conn:
            conn.execute(text("SELECT pg_sleep(:s)"), {"s": config.io_seconds})
        return IO_BODY

    @app.get("/cpu")
    def cpu_route() -> str:
        return str(sum(range(config.cpu_loop)))

    @app.get("/fast")
    def fast_route() -> str:
        with db.engine.connect() as conn:
            return str(conn.execute(text("SELECT 1")).scalar()) + "\n"

    # CPU spent by PostgreSQL, not by the worker: the knee benchmark's load, where
    # more queries at once only slow every one of them down.
    @app.get("/dbcpu")
    def dbcpu_route() -> str:
        with db.engine.connect() as conn:
            sql = text("SELECT count(*) FROM generate_series(1, :n)")
            return str(conn.execute(sql, {"n": config.dbcpu_rows}).scalar()) + "\n"

    # One route whose cost depends on a parameter: gunitune learns one profile for
    # it, which the switch benchmark turns from IO-bound to CPU-bound and back.
    @app.get("/work")
    def work_route() -> str:
        kind = request.args.get("kind", "io")
        if kind == "io":
            with db.engine.connect() as conn:
                conn.execute(text("SELECT pg_sleep(:s)"), {"s": config.io_seconds})
            return IO_BODY
        if kind == "cpu":
            return str(sum(range(config.cpu_loop)))
        abort(400, description="kind must be io or cpu")

    @app.get("/hello")
    def hello_route() -> str:
        return IO_BODY

    # No database and deliberately no gunitune decorator: the lanes benchmark checks
    # that gunitune learns by itself that this route needs no DB slot.
    @app.get("/health")
    def health_route() -> str:
        return "ok\n"

    @app.after_request
    def served_by(response: Response) -> Response:
        # Which worker answered: the tests check that CPU work spreads over all of them.
        response.headers["X-Served-By"] = str(os.getpid())
        return response

    if config.gunitune:
        GuniTune(app, db)
    app.logger.info("demo_app ready: %s", masked(config.database_url))
    return app
