"""The fleet rule: each worker's share of one PostgreSQL, and PgBouncer's settings."""

from __future__ import annotations

import pytest

from gunitune.core.budget import ServerBudget
from gunitune.core.errors import ConfigError
from gunitune.core.fleet import (
    fleet_share,
    minimum_max_connections,
    pgbouncer_plan,
    split,
)


def server(max_connections: int, others: int = 0, reserved: int = 0) -> ServerBudget:
    return ServerBudget(max_connections, 3, reserved, others)


def test_the_issue_case_one_host_three_workers() -> None:
    # max_connections=100: 97 free, headroom 2 x 3 + 10 = 16, 81 / 3 = 27 each.
    share = fleet_share(server(100), hosts=1, workers=3)
    assert (share.free, share.headroom, share.per_worker) == (97, 16, 27)
    assert (share.pool_size, share.max_overflow) == (9, 18)
    assert share.per_host == 81 and share.fleet_total == 81
    assert share.fleet_total + share.headroom <= share.free
    assert "27 per worker" in share.reason and "3 superuser-reserved" in share.reason


def test_other_clients_and_reserved_slots_come_off_first() -> None:
    alone = fleet_share(server(100), hosts=1, workers=3)
    shared = fleet_share(server(100, others=20, reserved=5), hosts=1, workers=3)
    assert shared.free == alone.free - 25
    assert shared.per_worker < alone.per_worker


@pytest.mark.parametrize(("hosts", "per_worker"), [(1, 25), (3, 8), (10, 2)])
def test_the_seed_box_on_a_fleet(hosts: int, per_worker: int) -> None:
    # 32 CPUs: 33 workers per host; max_connections=1000 as the seed set it.
    share = fleet_share(server(1000), hosts=hosts, workers=33)
    assert share.per_worker == per_worker
    assert share.fleet_total + share.headroom <= share.free
    assert share.pool_size + share.max_overflow == per_worker


def test_under_one_connection_is_one_line_with_the_fix() -> None:
    with pytest.raises(ConfigError) as caught:
        fleet_share(server(100), hosts=10, workers=33)
    message = str(caught.value)
    assert "\n" not in message
    assert "GUNITUNE_POOL=auto" in message and "raise max_connections to at least" in message
    least = minimum_max_connections(server(100), hosts=10, workers=33)
    assert f"at least {least}" in message
    # ... and that figure is enough.
    assert fleet_share(server(least), hosts=10, workers=33).per_worker >= 1


def test_minimum_is_the_smallest_multiple_of_fifty_that_works() -> None:
    for hosts, workers in [(1, 3), (2, 2), (3, 33), (10, 33)]:
        least = minimum_max_connections(server(100), hosts=hosts, workers=workers)
        assert least % 50 == 0
        assert fleet_share(server(least), hosts=hosts, workers=workers).per_worker >= 1
        if least > 50:
            with pytest.raises(ConfigError):
                fleet_share(server(least - 50), hosts=hosts, workers=workers)


@pytest.mark.parametrize(("per_worker", "expected"), [(1, (1, 0)), (2, (1, 1)), (3, (1, 2)),
                                                      (15, (5, 10)), (27, (9, 18)), (28, (10, 18))])
def test_split_keeps_a_third_open(per_worker: int, expected: tuple[int, int]) -> None:
    assert split(per_worker) == expected


@pytest.mark.parametrize("bad", [0, -1, True])
def test_bad_inputs_are_refused(bad: int) -> None:
    with pytest.raises(ConfigError):
        fleet_share(server(100), hosts=bad, workers=3)
    with pytest.raises(ConfigError):
        fleet_share(server(100), hosts=1, workers=bad)
    with pytest.raises(ConfigError):
        split(bad)


def test_pgbouncer_plan_for_two_hosts_on_forty() -> None:
    # The integration test's setup: max_connections=40, 2 hosts x 2 workers.
    share = fleet_share(server(40), hosts=2, workers=2)
    assert (share.free, share.headroom, share.per_worker) == (37, 8, 7)
    bouncer = pgbouncer_plan(share, timeout=30)
    assert bouncer.max_db_connections == bouncer.default_pool_size == 28 + 4
    assert bouncer.max_db_connections <= share.free
    assert bouncer.max_client_conn == 2 * 4 * (7 + 2)
    assert bouncer.query_wait_timeout == 30
    assert "pool_mode = transaction" in bouncer.ini_lines()
