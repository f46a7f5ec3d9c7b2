"""Apps as users write them: plain SQLAlchemy, a bare postgresql:// URL, either driver.

Real PostgreSQL, real Gunicorn with ``-c python:gunitune.conf``, real clients.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from benchmarks.loadclient import run_storm
from benchmarks.postgres import PostgresCluster, app_driver
from benchmarks.server import GunicornProcess
from tests.integration.conftest import GunicornFactory

APP = "tests.integration.plain_sqlalchemy_app:app"
N = 400


def _db_slots(server: GunicornProcess) -> list[int]:
    """``db_slots`` of each ``worker_ready`` event (structlog's console lines in this app)."""
    lines = [line for line in server.log_text().splitlines() if "worker_ready" in line]
    return [int(m.group(1)) for line in lines if (m := re.search(r"db_slots=(\d+)", line))]


def _storm_all_valid(server: GunicornProcess, driver: str) -> None:
    body = f"ok {driver}\n".encode()
    results = run_storm("127.0.0.1", server.port, "/io", N, expected_body=body, timeout=90)
    bad = [r for r in results if r.status != 200 or not r.body_ok]
    assert not bad, f"{len(bad)} of {N} bad, e.g. {bad[0]}"
    assert server.count("QueuePool limit") == 0
    assert server.count("Traceback") == 0


@pytest.mark.parametrize("engines", ["unnamed", "explicit"])
def test_plain_sqlalchemy_app_storm(
    gunicorn: GunicornFactory, postgres: PostgresCluster, engines: str
) -> None:
    server = gunicorn(
        APP,
        config="python:gunitune.conf",
        env={"PLAIN_ENGINES": engines, "GUNITUNE_WORKERS": "2"},
    )
    _storm_all_valid(server, app_driver())
    # Named: the engine's 4 + 6. Unnamed: GUNITUNE_POOL_SIZE + MAX_OVERFLOW (5 + 10),
    # the QueuePool's own timeout then guards the rest.
    slots = 10 if engines == "explicit" else 15
    assert _db_slots(server) == [slots, slots], server.log_tail()
    assert server.count("no_engines_named") == (0 if engines == "explicit" else 2)


# Hides psycopg 3 from a process, as if only psycopg2 were installed.
_HIDE_PSYCOPG = """
import importlib.abc, sys

class _Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "psycopg" or name.startswith(("psycopg.", "psycopg_")):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, _Hide())
"""


def test_bare_postgresql_url_with_only_psycopg2(
    gunicorn: GunicornFactory, postgres: PostgresCluster, tmp_path: Path
) -> None:
    (tmp_path / "sitecustomize.py").write_text(_HIDE_PSYCOPG)
    server = gunicorn(
        APP,
        config="python:gunitune.conf",
        env={
            "DATABASE_URL": postgres.url,  # postgresql://, no driver named
            "PYTHONPATH": str(tmp_path),
            "GUNITUNE_WORKERS": "2",
        },
    )
    _storm_all_valid(server, "psycopg2")
    log = server.log_text()
    assert "No module named 'psycopg'" not in log
    assert log.count('"postgresql_driver"') + log.count("postgresql_driver ") == 1, log[-3000:]
    assert "driver=psycopg2" in log


def test_bare_postgresql_url_follows_sqlalchemy(
    gunicorn: GunicornFactory, postgres: PostgresCluster
) -> None:
    """Both drivers installed: a plain URL gets SQLAlchemy's default, and it cooperates."""
    from gunitune.database_url import sqlalchemy_default_driver

    default = sqlalchemy_default_driver()
    server = gunicorn(
        APP,
        config="python:gunitune.conf",
        env={"DATABASE_URL": postgres.url, "GUNITUNE_WORKERS": "2", "PLAIN_SLEEP": "0.3"},
    )
    _storm_all_valid(server, default)
    assert f"driver={default}" in server.log_text()
    assert server.count("postgresql_driver") == 0
