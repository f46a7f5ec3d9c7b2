"""Does psycopg2 really yield to gevent? Measured against a real PostgreSQL.

Each scenario runs in a child Python: gevent monkey-patching and psycopg2's
wait callback are process-global, and the pytest process must stay unpatched.
The child gets the URL through the environment (not argv, which ps shows) and
prints one JSON line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from benchmarks.postgres import PostgresCluster

pytestmark = pytest.mark.integration

_ROOT = Path(__file__).resolve().parents[2]

# Patch first, like Gunicorn's gevent worker does before loading the app.
_PRELUDE = """
from gevent import monkey
monkey.patch_all()
import json, os, time
import gevent, psycopg2
from psycopg2 import extensions
from gunitune import green
URL = os.environ["TEST_DATABASE_URL"]
LIBPQ_URL = URL.replace("+psycopg2://", "://")  # psycopg2.connect() takes libpq's form
"""

_OVERLAP = """
def sleep_on(conn):
    cur = conn.cursor()
    cur.execute("SELECT pg_sleep(0.3)")
    cur.fetchall()

if MODE == "green":
    green.make_psycopg2_green()
else:
    extensions.set_wait_callback(None)
conns = [psycopg2.connect(LIBPQ_URL) for _ in range(2)]
started = time.perf_counter()
gevent.joinall([gevent.spawn(sleep_on, c) for c in conns], raise_error=True)
elapsed = time.perf_counter() - started
check = green.check_driver_yields(URL, seconds=0.3)
try:
    green.require_green_driver(URL)
    required = ""
except Exception as exc:
    required = type(exc).__name__ + ": " + str(exc)
print(json.dumps({"elapsed": elapsed, "is_green": green.psycopg2_is_green(),
                  "check": [check.yields, check.driver, check.elapsed, check.message],
                  "required": required}))
"""

_CANCEL = """
green.make_psycopg2_green()
conn = psycopg2.connect(LIBPQ_URL)
conn.autocommit = True
probe = psycopg2.connect(LIBPQ_URL)
probe.autocommit = True
started = time.perf_counter()
try:
    with gevent.Timeout(0.3):
        conn.cursor().execute("SELECT pg_sleep(20) /* gunitune-cancel-probe */")
    outcome = "finished"
except gevent.Timeout:
    outcome = "timeout"
waited = time.perf_counter() - started
# The cancel is synchronous, but the backend reports idle a moment later.
deadline = time.monotonic() + 5
while True:
    cur = probe.cursor()
    cur.execute("SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
                "AND query LIKE '%%gunitune-cancel-probe%%' AND pid <> pg_backend_pid()")
    active = cur.fetchone()[0]
    if active == 0 or time.monotonic() > deadline:
        break
    time.sleep(0.05)
print(json.dumps({"outcome": outcome, "waited": waited, "active": active,
                  "closed": conn.closed}))
"""


def _run_child(body: str, url: str, mode: str = "") -> dict[str, Any]:
    code = textwrap.dedent(_PRELUDE) + f"MODE = {mode!r}\n" + textwrap.dedent(body)
    env = {
        **os.environ,
        "TEST_DATABASE_URL": url,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(_ROOT), os.environ.get("PYTHONPATH")])),
    }
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def test_green_psycopg2_runs_queries_concurrently(postgres: PostgresCluster) -> None:
    result = _run_child(_OVERLAP, postgres.driver_url("psycopg2"), "green")
    assert result["is_green"] is True
    assert result["elapsed"] < 0.5, result
    yields, driver, elapsed, message = result["check"]
    assert (yields, driver) == (True, "psycopg2")
    assert elapsed < 0.48
    assert message.startswith("psycopg2 yields to gevent")
    assert result["required"] == ""


def test_plain_psycopg2_serializes_and_check_says_so(postgres: PostgresCluster) -> None:
    result = _run_child(_OVERLAP, postgres.driver_url("psycopg2"), "plain")
    assert result["is_green"] is False
    assert result["elapsed"] >= 0.6, result
    yields, driver, elapsed, message = result["check"]
    assert (yields, driver) == (False, "psycopg2")
    assert elapsed >= 0.48
    assert "make_psycopg2_green()" in message
    # require_green_driver: one line, naming the fix, no password.
    required = result["required"]
    assert required.startswith(
        "GunituneError: psycopg2 has no gevent wait callback: call "
        "gunitune.green.make_psycopg2_green() in post_fork, or use gunicorn -c "
        "python:gunitune.conf which does"
    )
    assert "\n" not in required
    assert (urlsplit(postgres.url).password or "") not in required


def test_gevent_timeout_cancels_the_query_on_the_server(postgres: PostgresCluster) -> None:
    result = _run_child(_CANCEL, postgres.url)
    assert result["outcome"] == "timeout"
    assert result["waited"] < 2.0, result
    assert result["active"] == 0, "the timed-out pg_sleep(20) kept running on the server"
    # psycopg2 closes a connection whose wait callback raised: the pool sees a
    # disconnect and replaces it instead of reusing a half-finished session.
    assert result["closed"] != 0
