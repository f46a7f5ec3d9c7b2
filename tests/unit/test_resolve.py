"""resolve(): one worker's limits from the environment, app.config, Gunicorn and the pools."""

from __future__ import annotations

import pytest

from gunitune.core.errors import ConfigError
from gunitune.core.resolve import GunicornFacts, PoolFacts, resolve, settings_from

GUNICORN = GunicornFacts(timeout=45.0, graceful_timeout=20.0, worker_connections=800)


def test_app_config_wins_over_the_environment() -> None:
    settings = settings_from(
        {"GUNITUNE_FAST_SHARE": "0.4", "GUNITUNE_CPU_CONCURRENCY": "3"},
        {"GUNITUNE_FAST_SHARE": 0.2},
    )
    assert settings.fast_share == 0.2
    assert settings.cpu_concurrency == 3  # only in the environment


def test_environment_values_without_app_config() -> None:
    assert settings_from({"GUNITUNE_QUEUE_TIMEOUT": "2.5"}, {}).queue_timeout == 2.5


@pytest.mark.parametrize(
    ("environ", "app_config", "where"),
    [
        ({"GUNITUNE_FAST_SHAR": "0.4"}, {}, "(in the environment)"),
        ({}, {"GUNITUNE_FAST_SHAR": "0.4"}, "(in app.config)"),
        ({"GUNITUNE_FAST_SHAR": "0.4"}, {"SECRET_KEY": "x"}, "(in the environment)"),
    ],
)
def test_unknown_key_is_rejected_saying_where_to_look(
    environ: dict[str, str], app_config: dict[str, str], where: str
) -> None:
    with pytest.raises(ConfigError) as info:
        settings_from(environ, app_config)
    assert str(info.value) == (
        f"GUNITUNE_FAST_SHAR is not a gunitune setting: did you mean GUNITUNE_FAST_SHARE? {where}"
    )


def test_bad_value_is_rejected_saying_where_to_look() -> None:
    with pytest.raises(ConfigError) as info:
        settings_from({}, {"GUNITUNE_MAX_HELD": 0})
    assert str(info.value) == (
        "GUNITUNE_MAX_HELD=0 is invalid: expected an integer from 1 to 1048576"
        " (in app.config)"
    )


def test_primary_bounded_pool_sets_the_database_slots() -> None:
    pools = [PoolFacts(3), PoolFacts(15, primary=True), PoolFacts(None)]
    result = resolve({}, {}, None, pools)
    assert result.db_capacity == 15
    assert result.capacity_source == "the app's default engine"


def test_without_a_bounded_primary_the_smallest_bounded_pool_sets_the_slots() -> None:
    pools = [PoolFacts(None, primary=True), PoolFacts(15), PoolFacts(3)]
    result = resolve({}, {}, None, pools)
    assert result.db_capacity == 3
    assert result.capacity_source == "the smallest bounded pool of the app's engines"


@pytest.mark.parametrize(
    ("config", "pools", "capacity"),
    [
        ({}, [], 15),  # 5 + 10
        ({"GUNITUNE_POOL_SIZE": 4, "GUNITUNE_MAX_OVERFLOW": 2}, [], 6),
        ({"GUNITUNE_POOL_SIZE": 4, "GUNITUNE_MAX_OVERFLOW": -1}, [PoolFacts(None)], 4),
        ({"GUNITUNE_POOL_SIZE": 0, "GUNITUNE_MAX_OVERFLOW": -1}, [], 1),
    ],
)
def test_without_a_bounded_pool_the_planned_pool_sets_the_slots(
    config: dict[str, int], pools: list[PoolFacts], capacity: int
) -> None:
    result = resolve({}, config, None, pools)
    assert result.db_capacity == capacity
    assert "no bounded pool found" in result.capacity_source


def test_a_pool_of_zero_still_gives_one_slot() -> None:
    assert resolve({}, {}, None, [PoolFacts(0, primary=True)]).db_capacity == 1


def test_outside_gunicorn_the_settings_give_max_held_and_timeouts() -> None:
    result = resolve({"GUNITUNE_TIMEOUT": "12"}, {"GUNITUNE_MAX_HELD": 70}, None, [])
    assert result.max_held == 70
    assert result.heartbeat_timeout == 12.0


def test_under_gunicorn_its_effective_config_gives_max_held_and_timeouts() -> None:
    # The command line may have changed what gunitune.conf set: Gunicorn's values win.
    result = resolve({"GUNITUNE_MAX_HELD": "70"}, {}, GUNICORN, [PoolFacts(3, primary=True)])
    assert result.max_held == 800
    assert result.heartbeat_timeout == 45.0
    assert result.db_capacity == 3
    assert result.settings.max_held == 70


def test_resolve_rejects_a_bad_setting_with_one_line() -> None:
    with pytest.raises(ConfigError, match=r"^GUNITUNE_FAST_SHARE=1 is invalid: expected a number"):
        resolve({}, {"GUNITUNE_FAST_SHARE": 1}, GUNICORN, [])
