"""The demo app's environment: defaults, driver choice and clear errors at start."""

from __future__ import annotations

import io
import json
import logging
import sys

import pytest
import structlog
from flask import Flask

from demo_app.factory import DemoConfig
from demo_app.logging_setup import configure_logging

URL = "postgres://demo:pw@127.0.0.1:5432/demo"


def test_defaults_are_the_seeds() -> None:
    config = DemoConfig.from_environ({"DATABASE_URL": URL})
    assert (config.io_seconds, config.cpu_loop) == (5.0, 100_000_000)
    assert (config.pool_size, config.max_overflow, config.pool_timeout) == (5, 10, 30.0)
    assert config.gunitune and config.green
    # postgres:// is made explicit for the installed driver.
    assert config.database_url.startswith("postgresql+psycopg2://")


def test_values_are_read() -> None:
    config = DemoConfig.from_environ(
        {
            "DATABASE_URL": URL,
            "DEMO_IO_SECONDS": "0.25",
            "DEMO_CPU_LOOP": "1000",
            "DEMO_POOL_SIZE": "2",
            "DEMO_MAX_OVERFLOW": "-1",
            "DEMO_POOL_TIMEOUT": "1.5",
            "DEMO_GUNITUNE": "off",
        }
    )
    assert (config.io_seconds, config.cpu_loop, config.pool_size) == (0.25, 1000, 2)
    assert (config.max_overflow, config.pool_timeout, config.gunitune) == (-1, 1.5, False)


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("DEMO_IO_SECONDS", "soon", "DEMO_IO_SECONDS='soon' is invalid: expected a number >= 0"),
        ("DEMO_IO_SECONDS", "-1", "DEMO_IO_SECONDS='-1' is invalid: expected a number >= 0"),
        ("DEMO_CPU_LOOP", "1e8", "DEMO_CPU_LOOP='1e8' is invalid: expected an integer >= 0"),
        ("DEMO_POOL_SIZE", "-2", "DEMO_POOL_SIZE='-2' is invalid: expected an integer >= 0"),
        ("DEMO_MAX_OVERFLOW", "-5", "DEMO_MAX_OVERFLOW='-5' is invalid: expected an integer >= 0"),
        ("DEMO_POOL_TIMEOUT", "nan", "DEMO_POOL_TIMEOUT='nan' is invalid: expected a number >= 0"),
        ("DEMO_GUNITUNE", "maybe", "DEMO_GUNITUNE='maybe' is invalid: expected on or off"),
    ],
)
def test_bad_values_name_key_value_and_range(key: str, value: str, expected: str) -> None:
    with pytest.raises(ValueError) as info:
        DemoConfig.from_environ({"DATABASE_URL": URL, key: value})
    assert str(info.value) == expected


def test_missing_database_url_says_how_to_set_it() -> None:
    with pytest.raises(ValueError, match="DATABASE_URL is not set: export DATABASE_URL="):
        DemoConfig.from_environ({})


def test_flask_info_lines_come_out_as_json_next_to_structlog_events(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = io.StringIO()
    monkeypatch.setattr(sys, "stderr", out)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    structlog.reset_defaults()
    try:
        configure_logging()
        app = Flask("demo-log-test")
        app.logger.info("demo_app ready: %s", "postgresql://demo:***@db/demo")
        structlog.get_logger("gunitune").info("pool_pressure", state="ok")
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        structlog.reset_defaults()
    flask_line, structlog_line = (json.loads(line) for line in out.getvalue().splitlines())
    # Before, the root's default WARNING level dropped app.logger.info() silently.
    assert flask_line["event"] == "demo_app ready: postgresql://demo:***@db/demo"
    assert (flask_line["level"], flask_line["logger"]) == ("info", "demo-log-test")
    assert "timestamp" in flask_line
    assert (structlog_line["event"], structlog_line["state"]) == ("pool_pressure", "ok")
