"""What the Gunicorn config module derives: workers, connections, exits on bad settings."""

from __future__ import annotations

import pytest
from structlog.testing import capture_logs

from gunitune import configure
from gunitune.configure import WORKER_CLASS, derive, load, with_workers
from gunitune.core.cpus import CpuCount
from gunitune.core.errors import ConfigError

FOUR = CpuCount(4, "fake affinity")


@pytest.fixture(autouse=True)
def fixed_somaxconn(monkeypatch: pytest.MonkeyPatch) -> None:
    """The machine's net.core.somaxconn must not leak into the numbers."""
    monkeypatch.setattr(configure, "read_somaxconn", lambda: 4096)


def test_workers_are_cpus_plus_one() -> None:
    derived = derive({}, FOUR)
    assert derived.plan.workers == 5
    assert derived.plan.cpus == 4
    assert derived.plan.cpu_source == "fake affinity"
    assert "fake affinity" in derived.plan.reasons["workers"]


def test_worker_connections_are_max_held() -> None:
    assert derive({}, FOUR).plan.worker_connections == 5000
    derived = derive({"GUNITUNE_MAX_HELD": "250", "GUNITUNE_POOL_SIZE": "2"}, FOUR)
    assert derived.plan.worker_connections == 250
    assert derived.gunicorn_settings()["worker_connections"] == 250


def test_database_connections_are_pool_size_plus_overflow_per_worker() -> None:
    assert derive({}, FOUR).plan.connections_per_worker == 5 + 10
    derived = derive({"GUNITUNE_POOL_SIZE": "2", "GUNITUNE_MAX_OVERFLOW": "1"}, FOUR)
    assert derived.plan.connections_per_worker == 3
    assert derived.plan.total_db_connections == 5 * 3


def test_gunicorn_settings() -> None:
    derived = derive({"GUNITUNE_BURST": "5000", "GUNITUNE_TIMEOUT": "45"}, CpuCount(1, "x"))
    assert derived.gunicorn_settings() == {
        "worker_class": WORKER_CLASS,
        "workers": 2,
        "worker_connections": 5000,
        "backlog": 5000,
        "timeout": 45,
        "graceful_timeout": 45,
    }
    assert derived.settings.burst == 5000
    assert derived.plan.somaxconn == 4096


def test_web_concurrency_honoured_when_workers_unset() -> None:
    assert derive({"WEB_CONCURRENCY": "7"}, FOUR).plan.workers == 7
    assert derive({"WEB_CONCURRENCY": " 3 "}, FOUR).plan.workers == 3
    assert derive({"WEB_CONCURRENCY": ""}, FOUR).plan.workers == 5


def test_gunitune_workers_wins_over_web_concurrency() -> None:
    derived = derive({"GUNITUNE_WORKERS": "2", "WEB_CONCURRENCY": "7"}, FOUR)
    assert derived.plan.workers == 2
    assert derive({"GUNITUNE_WORKERS": "2"}, FOUR).plan.workers == 2


@pytest.mark.parametrize("raw", ["0", "-1", "abc", "2.5", "+3", "1e2"])
def test_bad_web_concurrency_is_rejected_clearly(raw: str) -> None:
    with pytest.raises(ConfigError) as info:
        derive({"WEB_CONCURRENCY": raw}, FOUR)
    assert str(info.value) == (
        f"WEB_CONCURRENCY={raw!r} is invalid: expected an integer from 1 to 256"
    )


def test_superscript_web_concurrency_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="WEB_CONCURRENCY"):
        derive({"WEB_CONCURRENCY": "²"}, FOUR)


def test_bad_gunitune_value_raises_from_derive() -> None:
    with pytest.raises(ConfigError, match=r"GUNITUNE_POOL_SIZE='-1'"):
        derive({"GUNITUNE_POOL_SIZE": "-1"}, FOUR)


def test_derive_uses_usable_cpus_when_not_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(configure, "usable_cpus", lambda: CpuCount(2, "patched"))
    assert derive({}).plan.workers == 3


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        (
            {"GUNITUNE_POOL_SIZE": "-1"},
            "gunitune: error: GUNITUNE_POOL_SIZE='-1' is invalid: expected an integer"
            " from 0 to 262143",
        ),
        (
            {"GUNITUNE_POOLSIZE": "3"},
            "gunitune: error: GUNITUNE_POOLSIZE is not a gunitune setting:"
            " did you mean GUNITUNE_POOL_SIZE?",
        ),
        (
            {"WEB_CONCURRENCY": "lots"},
            "gunitune: error: WEB_CONCURRENCY='lots' is invalid: expected an integer"
            " from 1 to 256",
        ),
        (
            {"GUNITUNE_POOL_SIZE": "0", "GUNITUNE_MAX_OVERFLOW": "0"},
            "gunitune: error: pool_size + max_overflow=0 is invalid: expected at least 1"
            " (pool_size=0, max_overflow=0); a worker needs one database connection",
        ),
    ],
)
def test_load_exits_2_with_one_line(
    environ: dict[str, str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        load(environ)
    assert info.value.code == 2
    captured = capsys.readouterr()
    assert captured.err == expected + "\n"
    assert captured.out == ""


def test_load_reads_os_environ(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("GUNITUNE_BURST", "lots")
    with pytest.raises(SystemExit) as info:
        load()
    assert info.value.code == 2
    assert capsys.readouterr().err.startswith("gunitune: error: GUNITUNE_BURST='lots' is invalid")


def test_load_returns_derived_for_good_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(configure, "usable_cpus", lambda: CpuCount(3, "patched"))
    derived = load({"GUNITUNE_POOL_SIZE": "4", "GUNITUNE_MAX_OVERFLOW": "0"})
    assert derived.plan.workers == 4
    assert derived.plan.connections_per_worker == 4


def test_with_workers_replans() -> None:
    # A burst above any usual somaxconn: the backlog is the burst, whatever this machine has.
    derived = derive({"GUNITUNE_BURST": "70000", "GUNITUNE_MAX_HELD": "900"}, FOUR)
    replanned = with_workers(derived, 9)
    assert replanned.plan.workers == 9
    assert replanned.plan.total_db_connections == 9 * 15
    assert replanned.plan.worker_connections == derived.plan.worker_connections == 900
    assert replanned.plan.backlog == derived.plan.backlog == 70000
    assert replanned.plan.cpus == 4
    assert replanned.plan.recommended_max_connections > derived.plan.recommended_max_connections
    assert "given explicitly" in replanned.plan.reasons["workers"]
    assert replanned.settings is derived.settings
    assert replanned.gunicorn_settings()["workers"] == 9
    assert derived.plan.workers == 5  # the original is untouched


def test_with_same_workers_is_unchanged() -> None:
    derived = derive({}, FOUR)
    assert with_workers(derived, 5) is derived


def test_with_workers_rejects_zero() -> None:
    with pytest.raises(ConfigError, match="workers=0 is invalid"):
        with_workers(derive({}, FOUR), 0)


SECRET = "s3cretpw"


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://app@db.example/app?password={SECRET}",
        # postgres.py supports an unencoded "@" in the password; mask_url does not.
        "postgresql://app:" + SECRET + "@x@db.example/app",  # a fake secret, built, not written
    ],
)
def test_start_event_hides_the_password(url: str) -> None:
    derived = derive({"GUNITUNE_BUDGET_CHECK": "off"}, CpuCount(1, "test"))
    with capture_logs() as logs:
        configure.start(derived, {"DATABASE_URL": url})
    logged = str(logs)
    assert SECRET not in logged, logged
    assert "x@db" not in logged, logged  # the tail of a password holding "@"
