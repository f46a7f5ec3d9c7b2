"""may_accept: a worker accepts within slack of the least loaded one, plus its kernel share."""

from __future__ import annotations

import pytest

from gunitune.core.balance import SLACK, may_accept


def test_a_lone_worker_always_accepts() -> None:
    assert may_accept(10_000, []) is True


@pytest.mark.parametrize(("mine", "accepts"), [(0, True), (SLACK, True), (SLACK + 1, False)])
def test_worker_accepts_within_slack_of_the_least_loaded_other(mine: int, accepts: bool) -> None:
    assert may_accept(mine, [0, 50]) is accepts


def test_the_least_loaded_other_worker_sets_the_bar() -> None:
    assert may_accept(12, [10, 40]) is True
    assert may_accept(13, [10, 40]) is False
    assert may_accept(13, [40, 10]) is False


@pytest.mark.parametrize(("mine", "accepts"), [(105, True), (106, False)])
def test_slack_grows_with_the_load(mine: int, accepts: bool) -> None:
    # 5 % of 100 held by the least loaded worker: slack 5, not 2.
    assert may_accept(mine, [100]) is accepts


def test_fair_share_of_the_kernel_queue_lets_a_busy_worker_drain_it() -> None:
    # Two workers, 20 connections waiting in the kernel: 10 each.
    assert may_accept(12, [0], in_kernel_queue=20) is True
    assert may_accept(13, [0], in_kernel_queue=20) is False
    assert may_accept(13, [0], in_kernel_queue=0) is False


def test_fair_share_is_rounded_up() -> None:
    # 1 waiting connection over 3 workers still gives each a share of 1.
    assert may_accept(3, [0, 0], in_kernel_queue=1) is True
    assert may_accept(4, [0, 0], in_kernel_queue=1) is False


def test_a_half_full_kernel_queue_makes_balance_give_way() -> None:
    # Beyond half its size the queue is about to drop SYNs: take the connection.
    assert may_accept(100, [0], in_kernel_queue=5, kernel_queue_max=10) is True
    assert may_accept(100, [0], in_kernel_queue=4, kernel_queue_max=10) is False


def test_unknown_kernel_queue_size_never_overrides_balance() -> None:
    assert may_accept(100, [0], in_kernel_queue=50, kernel_queue_max=0) is False
