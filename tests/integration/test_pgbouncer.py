"""One database, two hosts, PgBouncer in transaction mode: real parts only.

Debian's pgbouncer as an unprivileged user on loopback (benchmarks/pgbouncer.py),
a PostgreSQL with max_connections=40, two Gunicorn masters on two loopback ports
standing for two hosts (GUNITUNE_HOSTS=2, GUNITUNE_POOL=auto), a storm on both at once.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from benchmarks.loadclient import RequestResult, run_storm
from benchmarks.pg_watch import ConnectionWatch
from benchmarks.pgbouncer import PgBouncer, start_pgbouncer
from benchmarks.postgres import PostgresCluster, start_cluster
from gunitune.core.budget import ServerBudget
from gunitune.core.fleet import fleet_share, pgbouncer_plan
from gunitune.pooler import NONE, PROXY, TRANSACTION, detect_pooler
from tests.integration.conftest import GunicornFactory
from tests.integration.test_pool_auto import master_line

IO_BODY = b"hello there!\n"
MAX_CONNECTIONS = 40
HOSTS, WORKERS = 2, 2
# The rule the masters apply, and PgBouncer set from it (`gunitune plan --pgbouncer`).
SHARE = fleet_share(ServerBudget(MAX_CONNECTIONS, 3, 0, 0), hosts=HOSTS, workers=WORKERS)
BOUNCER = pgbouncer_plan(SHARE, timeout=30)


@pytest.fixture(scope="module")
def forty() -> Iterator[PostgresCluster]:
    cluster = start_cluster(max_connections=MAX_CONNECTIONS)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def bouncer(forty: PostgresCluster) -> Iterator[PgBouncer]:
    with start_pgbouncer(
        forty,
        pool_mode=BOUNCER.pool_mode,
        default_pool_size=BOUNCER.default_pool_size,
        max_db_connections=BOUNCER.max_db_connections,
        max_client_conn=BOUNCER.max_client_conn,
        query_wait_timeout=BOUNCER.query_wait_timeout,
    ) as running:
        yield running


def test_the_pooler_is_detected(forty: PostgresCluster, bouncer: PgBouncer) -> None:
    assert detect_pooler(forty.url) == NONE
    assert detect_pooler(bouncer.url) == TRANSACTION
    with start_pgbouncer(forty, pool_mode="session", default_pool_size=2) as session:
        assert detect_pooler(session.url) == PROXY


def test_two_hosts_storm_through_pgbouncer(
    gunicorn: GunicornFactory, forty: PostgresCluster, bouncer: PgBouncer
) -> None:
    env = {
        "DATABASE_URL": bouncer.app_url,
        "GUNITUNE_POOL": "auto",
        "GUNITUNE_HOSTS": str(HOSTS),
        "GUNITUNE_WORKERS": str(WORKERS),
        "DEMO_IO_SECONDS": "0.2",
    }
    hosts = [gunicorn(config="python:gunitune.conf", env=env, probe_path="/health")
             for _ in range(HOSTS)]  # fmt: skip
    for host in hosts:
        line = master_line(host, "pool_auto")
        assert f"per_worker={SHARE.per_worker}" in line and "pooler=transaction" in line, line
        assert master_line(host, "pooler_detected")

    results: list[list[RequestResult]] = [[] for _ in hosts]

    def storm(index: int) -> None:
        results[index] = run_storm(
            "127.0.0.1", hosts[index].port, "/io", 600, expected_body=IO_BODY, timeout=120
        )

    with ConnectionWatch(forty.connect) as watch:
        threads = [threading.Thread(target=storm, args=(i,)) for i in range(HOSTS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=180)
    assert not any(t.is_alive() for t in threads)
    for host, answers in zip(hosts, results, strict=True):
        assert len(answers) == 600
        bad = [r for r in answers if r.status != 200 or not r.body_ok]
        assert not bad, f"{len(bad)} bad on :{host.port}, first: {bad[0]}"
        assert host.count("too many clients") == 0
    assert "too many clients" not in bouncer.log_text()
    # PgBouncer's server connections, all the fleet's: within its cap and the budget.
    print(f"peak server connections {watch.peak} (tagged {watch.peak_tagged}),"
          f" PgBouncer cap {BOUNCER.max_db_connections}, budget {MAX_CONNECTIONS - 3}")
    assert watch.samples > 5
    assert SHARE.fleet_total // 2 <= watch.peak <= BOUNCER.max_db_connections, watch.peak
    assert watch.peak <= MAX_CONNECTIONS - 3
