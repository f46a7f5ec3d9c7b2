"""``gunicorn -c python:gunitune.conf`` against a real PostgreSQL and real clients."""

from __future__ import annotations

import http.client
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.loadclient import run_storm
from benchmarks.postgres import PostgresCluster
from benchmarks.server import free_port
from tests.integration.conftest import GunicornFactory

REPO = Path(__file__).resolve().parents[2]
IO_BODY = b"hello there!\n"


def _gunicorn_exits(
    env: dict[str, str], *args: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run a Gunicorn that is expected to refuse to start; return its result."""
    command = [sys.executable, "-m", "gunicorn", "-c", "python:gunitune.conf"]
    command += ["-b", f"127.0.0.1:{free_port()}", *args, "demo_app:app"]
    return subprocess.run(
        command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def _get(port: int, path: str, timeout: float = 60) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        headers = {k.lower(): v for k, v in response.getheaders()}
        return response.status, headers, response.read()
    finally:
        conn.close()


def _base_env(postgres: PostgresCluster) -> dict[str, str]:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("GUNITUNE_")}
    env["DATABASE_URL"] = postgres.app_url
    return env


def test_1000_concurrent_io_requests_all_answer(gunicorn: GunicornFactory) -> None:
    server = gunicorn(config="python:gunitune.conf", env={"DEMO_IO_SECONDS": "0.5"})
    results = run_storm("127.0.0.1", server.port, "/io", 1000, expected_body=IO_BODY, timeout=120)
    bad = [r for r in results if r.status != 200 or not r.body_ok]
    assert not bad, f"{len(bad)} bad responses, first: {bad[0]}"
    assert server.count("QueuePool limit") == 0
    assert server.count("WORKER TIMEOUT") == 0
    assert server.count('"gunitune_config"') + server.count("gunitune_config") >= 1


def test_short_form_config_file_and_command_line_wins(gunicorn: GunicornFactory) -> None:
    server = gunicorn(
        config="demo_app/gunitune.conf",
        args=["--workers", "2"],
        env={"DEMO_IO_SECONDS": "0"},
        probe_path="/io",
    )
    assert len(server.worker_pids()) == 2
    assert server.count("command_line_overrides") == 1
    results = run_storm("127.0.0.1", server.port, "/io", 20, expected_body=IO_BODY)
    assert all(r.body_ok for r in results)


def test_budget_check_refuses_too_many_connections(postgres: PostgresCluster) -> None:
    # The session cluster allows 200 connections; 20 workers x 15 need 300.
    env = _base_env(postgres) | {"GUNITUNE_WORKERS": "20"}
    done = _gunicorn_exits(env)
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.startswith("gunitune: error:")]
    assert len(lines) == 1, done.stderr
    assert "20 workers x 15 connections = 300 needed" in lines[0]
    assert "max_connections=200" in lines[0]
    assert "Traceback" not in done.stderr
    assert postgres.password not in done.stderr + done.stdout


def test_budget_check_warn_starts_anyway(gunicorn: GunicornFactory) -> None:
    server = gunicorn(
        config="python:gunitune.conf",
        env={"GUNITUNE_WORKERS": "20", "GUNITUNE_BUDGET_CHECK": "warn", "DEMO_IO_SECONDS": "0"},
        ready_timeout=120,
    )
    assert server.count("postgres_budget") >= 1
    assert server.count("300 needed") == 1


def test_wrong_password_is_one_line(postgres: PostgresCluster) -> None:
    url = postgres.url.replace(postgres.password, "Wrong-" + postgres.password[::-1])
    done = _gunicorn_exits(_base_env(postgres) | {"DATABASE_URL": url})
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("gunitune: error:")]
    assert len(errors) == 1 and "cannot reach DATABASE_URL" in errors[0], done.stderr
    assert "check the user name and password" in errors[0]
    assert postgres.password[::-1] not in done.stderr + done.stdout


def test_unreachable_database_starts_with_a_warning(
    gunicorn: GunicornFactory, postgres: PostgresCluster
) -> None:
    """Issue 10: a host starts during an outage; database routes answer 503 + Retry-After."""
    url = f"postgresql://gunitune:{postgres.password}@127.0.0.1:{free_port()}/gunitune"
    env = {"DATABASE_URL": url}
    server = gunicorn(config="python:gunitune.conf", env=env, probe_path="/health")
    assert server.count("postgres_budget_unchecked") == 1
    assert "connection refused" in server.log_text()
    status, headers, _ = _get(server.port, "/io")
    assert status == 503 and int(headers["retry-after"]) >= 1
    assert postgres.password not in server.log_text()


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        (
            "GUNITUNE_POOL_SIZE",
            "many",
            "GUNITUNE_POOL_SIZE='many' is invalid: expected an integer from 0 to 262143",
        ),
        (
            "GUNITUNE_POOL_SIZ",
            "5",
            "GUNITUNE_POOL_SIZ is not a gunitune setting: did you mean GUNITUNE_POOL_SIZE?",
        ),
        (
            "WEB_CONCURRENCY",
            "0",
            "WEB_CONCURRENCY='0' is invalid: expected an integer from 1 to 256",
        ),
        (  # was an OverflowError traceback from listen() in the master
            "GUNITUNE_BURST",
            "2147483648",
            "GUNITUNE_BURST='2147483648' is invalid: expected an integer from 1 to 1048576",
        ),
        (
            "GUNITUNE_TIMEOUT",
            "1",
            "GUNITUNE_TIMEOUT='1' is invalid: expected an integer from 5 to 86400",
        ),
        (
            "GUNITUNE_STATS_TOKEN",
            " {password} ",
            "GUNITUNE_STATS_TOKEN=<hidden, {length} characters> is invalid: expected printable"
            " ASCII without spaces at either end, or empty (no token)",
        ),
    ],
)
def test_bad_setting_is_one_line(
    postgres: PostgresCluster, key: str, value: str, expected: str
) -> None:
    value = value.format(password=postgres.password)
    expected = expected.format(length=len(value))
    done = _gunicorn_exits(_base_env(postgres) | {key: value})
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("gunitune: error:")]
    assert errors == [f"gunitune: error: {expected}"], done.stderr
    assert "Traceback" not in done.stderr
    assert postgres.password not in done.stderr + done.stdout


def test_bad_app_config_stops_the_workers_with_one_line(postgres: PostgresCluster) -> None:
    # One worker: when two exit with the boot error at once, Gunicorn 27's arbiter
    # raises HaltServer again while halting and prints its own traceback.
    env = _base_env(postgres) | {"GUNITUNE_WORKERS": "1"}
    command = [sys.executable, "-m", "gunicorn", "-c", "python:gunitune.conf"]
    command += ["-b", f"127.0.0.1:{free_port()}", "tests.integration.bad_config_app:app"]
    done = subprocess.run(
        command, cwd=REPO, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.startswith("gunitune: error:")]
    assert errors == [
        "gunitune: error: GUNITUNE_TIMEOUT=1 is invalid: expected an integer from 5 to 86400"
        " (in app.config)"
    ], done.stderr
    assert "Traceback" not in done.stderr


def test_worker_refuses_a_driver_that_blocks_the_loop(postgres: PostgresCluster) -> None:
    # The app takes psycopg2's wait callback away: a psycopg2 matter.
    env = _base_env(postgres) | {
        "GUNITUNE_WORKERS": "1", "DATABASE_URL": postgres.driver_url("psycopg2")}  # fmt: skip
    command = [sys.executable, "-m", "gunicorn", "-c", "python:gunitune.conf"]
    command += ["-b", f"127.0.0.1:{free_port()}", "tests.integration.blocking_driver_app:app"]
    done = subprocess.run(
        command, cwd=REPO, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.startswith("gunitune: error:")]
    assert errors and "psycopg2 has no gevent wait callback" in errors[0], done.stderr
    assert postgres.password not in done.stderr


def test_preload_app_disposes_inherited_engines(gunicorn: GunicornFactory) -> None:
    server = gunicorn(
        config="python:gunitune.conf", args=["--preload"], env={"DEMO_IO_SECONDS": "0.1"}
    )
    workers = set(server.worker_pids())
    results = run_storm("127.0.0.1", server.port, "/io", 300, expected_body=IO_BODY)
    assert all(r.body_ok for r in results)
    assert {int(r.headers["x-served-by"]) for r in results} <= workers
    assert server.count("engines_disposed_after_fork") == len(workers)
