"""Every new connection gets a bound on its waits, unless the app chose its own."""

from __future__ import annotations

from typing import Any

from sqlalchemy import create_engine

from gunitune._db_timeouts import CONNECT_DEFAULTS, add_connect_defaults


def _connect_params(url: str, **connect_args: Any) -> dict[str, Any]:
    engine = create_engine(url, connect_args=connect_args)
    assert add_connect_defaults(engine)
    assert add_connect_defaults(engine)  # twice: one listener
    cargs, cparams = engine.dialect.create_connect_args(engine.url)
    cparams.update(connect_args)
    # What SQLAlchemy does before each new connection.
    for listener in engine.dialect.dispatch.do_connect:
        listener(engine.dialect, None, cargs, cparams)
    return cparams


def test_defaults_fill_what_the_app_left_open() -> None:
    params = _connect_params("postgresql+psycopg2://app:pw@db/app")
    for key, value in CONNECT_DEFAULTS.items():
        assert params[key] == value
    assert params["password"] == "pw" and params["host"] == "db"


def test_the_apps_own_values_win() -> None:
    params = _connect_params(
        "postgresql+psycopg://app:pw@db/app?connect_timeout=30", keepalives_idle=60
    )
    assert params["connect_timeout"] == "30"  # from the URL's query
    assert params["keepalives_idle"] == 60  # from connect_args
    assert params["tcp_user_timeout"] == CONNECT_DEFAULTS["tcp_user_timeout"]


def test_other_databases_are_left_alone() -> None:
    assert not add_connect_defaults(create_engine("sqlite://"))
