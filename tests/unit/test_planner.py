"""make_plan(): the seed's numbers, the rules, and one-line errors for bad input."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from gunitune._board import SEATS
from gunitune.core.errors import ConfigError, GunituneError
from gunitune.core.planner import Plan, make_plan, round_up


def test_seed_numbers() -> None:
    plan = make_plan(cpus=32)
    assert plan.workers == 33
    assert plan.worker_connections == 5000  # GUNITUNE_MAX_HELD: held, not run at once
    assert plan.connections_per_worker == 15
    assert plan.total_db_connections == 495
    assert plan.recommended_max_connections == 600  # 495 * 1.2 + 3 = 597 -> 600
    assert plan.backlog == 3000
    assert plan.backlog_clipped is False
    assert plan.timeout == plan.graceful_timeout == 30


def test_every_derived_value_has_a_reason() -> None:
    plan = make_plan(cpus=32, cpu_source="cgroup v2 cpu.max (3200000/100000)")
    for key in (
        "workers",
        "worker_connections",
        "connections_per_worker",
        "total_db_connections",
        "backlog",
        "somaxconn",
        "graceful_timeout",
        "recommended_max_connections",
    ):
        assert plan.reasons[key]
        assert "\n" not in plan.reasons[key]
    assert "cgroup v2 cpu.max" in plan.reasons["workers"]
    assert "33 workers x 15" in plan.reasons["total_db_connections"]
    assert "GUNITUNE_MAX_HELD 5000" in plan.reasons["worker_connections"]
    assert "pool_size 5 + max_overflow 10" in plan.reasons["connections_per_worker"]


def test_worker_connections_follow_max_held_not_the_pool() -> None:
    plan = make_plan(cpus=2, pool_size=3, max_overflow=0, max_held=200)
    assert plan.worker_connections == 200
    assert plan.connections_per_worker == 3
    assert plan.total_db_connections == 9
    assert "GUNITUNE_MAX_HELD 200" in plan.reasons["worker_connections"]


def test_explicit_workers() -> None:
    plan = make_plan(cpus=32, workers=4)
    assert plan.workers == 4
    assert plan.total_db_connections == 60
    assert "given" in plan.reasons["workers"]


def test_custom_pool() -> None:
    plan = make_plan(cpus=4, pool_size=10, max_overflow=0)
    assert (plan.workers, plan.connections_per_worker, plan.total_db_connections) == (5, 10, 50)


def test_pool_size_zero_with_overflow() -> None:
    assert make_plan(cpus=1, pool_size=0, max_overflow=3).connections_per_worker == 3


def test_unlimited_overflow() -> None:
    plan = make_plan(cpus=2, pool_size=5, max_overflow=-1)
    assert plan.connections_per_worker == 15
    assert plan.total_db_connections == 45
    assert "unlimited" in plan.reasons["connections_per_worker"]
    assert any("max_overflow=-1" in line for line in plan.advice())


def test_small_burst_keeps_gunicorn_default_backlog() -> None:
    plan = make_plan(cpus=2, burst=100)
    assert plan.backlog == 2048


def test_large_burst_sets_backlog() -> None:
    assert make_plan(cpus=2, burst=10000).backlog == 10000


def test_somaxconn_clipping() -> None:
    plan = make_plan(cpus=32, somaxconn=128)
    assert plan.backlog_clipped is True
    advice = "\n".join(plan.advice())
    assert "sysctl -w net.core.somaxconn=4096" in advice
    assert "clips backlog 3000 to 128" in advice


def test_somaxconn_large_enough() -> None:
    plan = make_plan(cpus=32, somaxconn=4096)
    assert plan.backlog_clipped is False
    assert not any("sysctl" in line for line in plan.advice())


def test_backlog_takes_the_deepest_queue_the_kernel_allows() -> None:
    plan = make_plan(cpus=2, burst=3000, somaxconn=4096)
    assert plan.backlog == 4096
    assert "somaxconn 4096" in plan.reasons["backlog"]
    assert make_plan(cpus=2, burst=10000, somaxconn=4096).backlog == 10000  # clipped, said so


def test_somaxconn_equal_to_backlog_is_not_clipped() -> None:
    assert make_plan(cpus=1, somaxconn=3000).backlog_clipped is False


def test_somaxconn_unknown_advises_checking() -> None:
    advice = "\n".join(make_plan(cpus=1).advice())
    assert "unknown" in advice and ">= 3000" in advice


def test_advice_names_max_connections() -> None:
    advice = make_plan(cpus=32).advice()
    assert any("set max_connections >= 600 in postgresql.conf" in line for line in advice)
    assert any("--workers 33" in line and "--worker-connections 5000" in line for line in advice)


def test_headroom_and_reserved() -> None:
    assert make_plan(cpus=32, headroom=0, reserved_connections=0).recommended_max_connections == 500
    assert make_plan(cpus=32, headroom=0, reserved_connections=5).recommended_max_connections == 500
    assert make_plan(cpus=32, headroom=0, reserved_connections=6).recommended_max_connections == 550


@pytest.mark.parametrize(
    ("value", "expected"), [(0, 0), (1, 50), (50, 50), (594.0000000000001, 600), (597, 600)]
)
def test_round_up(value: float, expected: int) -> None:
    assert round_up(value) == expected


def test_as_dict_is_json_and_complete() -> None:
    plan = make_plan(cpus=32, somaxconn=128)
    data = json.loads(json.dumps(plan.as_dict()))
    assert data["workers"] == 33
    assert data["somaxconn"] == 128
    assert data["backlog_clipped"] is True
    assert set(data) == set(Plan.__dataclass_fields__)
    data["reasons"]["workers"] = "changed"
    assert plan.reasons["workers"] != "changed"  # as_dict copies


@pytest.mark.parametrize(
    ("kwargs", "key", "value", "allowed"),
    [
        ({"cpus": 0}, "cpus", "0", ">= 1"),
        ({"cpus": -4}, "cpus", "-4", ">= 1"),
        ({"cpus": 2.5}, "cpus", "2.5", ">= 1"),
        ({"cpus": True}, "cpus", "True", ">= 1"),
        ({"cpus": "4"}, "cpus", "'4'", ">= 1"),
        ({"pool_size": -1}, "pool_size", "-1", ">= 0"),
        ({"max_overflow": -2}, "max_overflow", "-2", ">= -1"),
        ({"workers": 0}, "workers", "0", ">= 1"),
        ({"burst": 0}, "burst", "0", ">= 1"),
        ({"max_held": 0}, "max_held", "0", ">= 1"),
        ({"timeout": 0}, "timeout", "0", ">= 1"),
        ({"somaxconn": -1}, "somaxconn", "-1", ">= 0"),
        ({"reserved_connections": -3}, "reserved_connections", "-3", ">= 0"),
        ({"headroom": -0.1}, "headroom", "-0.1", "between 0 and 10"),
        ({"headroom": 11}, "headroom", "11", "between 0 and 10"),
        ({"headroom": math.nan}, "headroom", "nan", "between 0 and 10"),
        ({"headroom": "0.2"}, "headroom", "'0.2'", "between 0 and 10"),
    ],
)
def test_bad_inputs(kwargs: dict[str, Any], key: str, value: str, allowed: str) -> None:
    args: dict[str, Any] = {"cpus": 4, **kwargs}
    with pytest.raises(ConfigError) as info:
        make_plan(**args)
    message = str(info.value)
    assert message.startswith(f"{key}={value} is invalid: expected ")
    assert allowed in message
    assert "\n" not in message


def test_empty_pool_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"pool_size \+ max_overflow=0 is invalid.*at least 1"):
        make_plan(cpus=1, pool_size=0, max_overflow=0)


def test_config_error_is_a_value_error_and_gunitune_error() -> None:
    with pytest.raises(ValueError):
        make_plan(cpus=0)
    assert issubclass(ConfigError, GunituneError)


def test_auto_workers_stop_at_the_seats_of_the_load_board() -> None:
    plan = make_plan(cpus=1000)
    assert plan.workers == SEATS == 256
    assert "would give 1001; capped at 256" in plan.reasons["workers"]
    assert make_plan(cpus=255).workers == 256  # 255 + 1 still fits
