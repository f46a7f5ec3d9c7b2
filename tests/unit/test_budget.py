"""check_budget(): does Postgres have room for every worker's pool?"""

from __future__ import annotations

import pytest

from gunitune.core.budget import BudgetVerdict, ServerBudget, check_budget
from gunitune.core.errors import ConfigError


def test_available() -> None:
    assert ServerBudget(100, 3, 2, 10).available == 85


def test_available_never_negative() -> None:
    assert ServerBudget(20, 3, 0, 40).available == 0


def test_ok() -> None:
    verdict = check_budget(495, ServerBudget(600, 3, 0, 3, "16.2"), workers=33, per_worker=15)
    assert verdict == BudgetVerdict(True, 495, 594, verdict.message)
    assert verdict.message.startswith("Postgres budget ok: 33 workers x 15 connections = 495")
    assert "max_connections=600 leaves 594" in verdict.message


def test_exactly_full_is_ok() -> None:
    assert check_budget(14, ServerBudget(20, 3, 0, 3), workers=1, per_worker=14).ok


def test_refuse_message_matches_the_documented_example() -> None:
    verdict = check_budget(45, ServerBudget(20, 3, 0, 3), workers=3, per_worker=15)
    assert not verdict.ok
    assert (verdict.needed, verdict.available) == (45, 14)
    assert verdict.message == (
        "Postgres budget too small: 3 workers x 15 connections = 45 needed, but"
        " max_connections=20 leaves 14 (3 superuser-reserved, 0 reserved, 3 in use by other"
        " clients); raise max_connections to at least 100, or lower GUNITUNE_WORKERS /"
        " pool_size + max_overflow, or set GUNITUNE_BUDGET_CHECK=warn"
    )


def test_refuse_suggests_room_for_other_clients() -> None:
    # 495 + 3 + 2 + 60 = 560 -> 600
    verdict = check_budget(495, ServerBudget(100, 3, 2, 60), workers=33, per_worker=15)
    assert not verdict.ok
    assert "at least 600" in verdict.message
    assert "2 reserved, 60 in use by other clients" in verdict.message


def test_needed_above_workers_times_pool_is_explained() -> None:
    verdict = check_budget(50, ServerBudget(100, 3, 0, 0), workers=3, per_worker=15)
    assert "= 45 needed plus 5 more = 50" in verdict.message


def test_needed_below_workers_times_pool_is_explained() -> None:
    verdict = check_budget(30, ServerBudget(100, 3, 0, 0), workers=3, per_worker=15)
    assert verdict.ok
    assert "30 needed (3 workers x 15 connections at most)" in verdict.message


@pytest.mark.parametrize(
    ("needed", "server", "workers", "per_worker", "start"),
    [
        (-1, ServerBudget(100, 3, 0, 0), 1, 1, "needed=-1"),
        (10, ServerBudget(100, 3, 0, 0), 0, 1, "workers=0"),
        (10, ServerBudget(100, 3, 0, 0), 1, 0, "per_worker=0"),
        (10, ServerBudget(0, 3, 0, 0), 1, 1, "max_connections=0"),
        (10, ServerBudget(100, -3, 0, 0), 1, 1, "superuser_reserved_connections=-3"),
        (10, ServerBudget(100, 3, -1, 0), 1, 1, "reserved_connections=-1"),
        (10, ServerBudget(100, 3, 0, -2), 1, 1, "in_use_by_others=-2"),
    ],
)
def test_bad_inputs(
    needed: int, server: ServerBudget, workers: int, per_worker: int, start: str
) -> None:
    with pytest.raises(ConfigError) as info:
        check_budget(needed, server, workers=workers, per_worker=per_worker)
    assert str(info.value).startswith(f"{start} is invalid: expected an integer >= ")
