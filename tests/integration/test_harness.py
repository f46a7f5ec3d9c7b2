"""The harness itself against real processes: PostgreSQL, Gunicorn and the load client."""

from __future__ import annotations

from importlib.metadata import version

import psutil
import psycopg2
import pytest

from benchmarks.loadclient import run_storm, summarize
from benchmarks.postgres import PostgresCluster, start_cluster
from benchmarks.server import GunicornProcess, stock_args
from tests.integration.conftest import GunicornFactory
from tests.integration.hello_app import BODY

pytestmark = pytest.mark.integration

HELLO = "tests.integration.hello_app:app"


def _gone(pid: int) -> bool:
    """True once ``pid`` no longer runs (zombies count as gone: they run nothing)."""
    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


def test_cluster_answers(postgres: PostgresCluster) -> None:
    assert postgres.query("SHOW max_connections") == [("200",)]
    assert postgres.query("SHOW listen_addresses") == [("127.0.0.1",)]
    assert postgres.query("SELECT current_database(), current_user") == [("gunitune", "gunitune")]
    assert postgres.url.startswith("postgresql://gunitune:")


def test_cluster_requires_password(postgres: PostgresCluster) -> None:
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        psycopg2.connect(
            host=postgres.host, port=postgres.port, user=postgres.user, password="wrong",
            dbname=postgres.dbname, connect_timeout=5,
        )  # fmt: skip


def test_set_max_connections_and_stop() -> None:
    with start_cluster(max_connections=50, extra_conf={"work_mem": "8MB"}) as cluster:
        assert cluster.query("SHOW work_mem") == [("8MB",)]
        old_pid = cluster.pid
        cluster.set_max_connections(123)
        assert cluster.query("SHOW max_connections") == [("123",)]
        assert cluster.pid != old_pid
        assert cluster.base_dir is not None
        base_dir, pid = cluster.base_dir, cluster.pid
    assert _gone(pid)
    assert not base_dir.exists()
    cluster.stop()  # idempotent


def test_gunicorn_storm_and_clean_stop(gunicorn: GunicornFactory) -> None:
    server = gunicorn(HELLO, args=stock_args(workers=2))
    workers = server.worker_pids()
    assert len(workers) == 2
    assert server.count("Booting worker") == 2

    results = run_storm("127.0.0.1", server.port, "/", 200, expected_body=BODY, timeout=30)

    summary = summarize(results)
    assert summary["ok"] == 200, summary
    assert summary["by_status"] == {200: 200}
    assert all(r.headers["content-type"] == "text/plain" for r in results)
    master = server.pid
    server.stop()
    assert all(_gone(pid) for pid in [master, *workers])
    server.stop()  # idempotent


def test_gunicorn_early_exit_reports_log(gunicorn: GunicornFactory) -> None:
    server = gunicorn("tests.integration.no_such_module:app", args=stock_args(), start=False)
    with pytest.raises(RuntimeError, match="no_such_module"):
        server.start(ready_timeout=30, probe_path="/")
    assert not server.is_running()


def test_stock_args_disable_control_socket() -> None:
    args = stock_args(workers=3, worker_connections=50, timeout=7)
    assert args[:8] == [
        "-k", "gevent", "--workers", "3", "--worker-connections", "50", "--timeout", "7",
    ]  # fmt: skip
    # The control socket (and the flag disabling it) appeared in Gunicorn 25.1.
    has_ctl = tuple(int(x) for x in version("gunicorn").split(".")[:2]) >= (25, 1)
    assert ("--no-control-socket" in args) == has_ctl
    assert GunicornProcess(HELLO, args=args).configured_workers() == 3
