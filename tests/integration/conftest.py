"""Fixtures running real servers: a session PostgreSQL cluster and Gunicorn processes.

Every test collected under tests/integration/ is marked ``integration`` so it can be
selected or excluded with ``-m``.  Missing PostgreSQL binaries fail loudly: CI
installs them, so a skip would hide a broken environment.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Protocol

import pytest

from benchmarks.postgres import PostgresCluster, find_bindir, start_cluster
from benchmarks.server import GunicornProcess

_HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test in this directory as ``integration``."""
    for item in items:
        if _HERE in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.integration)


class GunicornFactory(Protocol):
    """Signature of the ``gunicorn`` fixture: GunicornProcess args plus start options."""

    def __call__(
        self,
        app: str = ...,
        config: str | None = ...,
        args: Sequence[str] = ...,
        env: Mapping[str, str] | None = ...,
        port: int | None = ...,
        log_path: Path | None = ...,
        *,
        ready_timeout: float = ...,
        probe_path: str | None = ...,
        start: bool = ...,
    ) -> GunicornProcess: ...


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresCluster]:
    """A PostgreSQL cluster shared by the whole session (don't change its settings;
    start a private one with ``start_cluster()`` for that)."""
    try:
        find_bindir()
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)
    cluster = start_cluster()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def server_env(postgres: PostgresCluster) -> dict[str, str]:
    """Environment defaults for child servers."""
    return {"DATABASE_URL": postgres.app_url}


@pytest.fixture
def gunicorn(server_env: dict[str, str], tmp_path: Path) -> Iterator[GunicornFactory]:
    """Factory starting GunicornProcess instances; all are stopped at teardown.

    ``env`` is layered over ``server_env`` (DATABASE_URL of the session cluster);
    logs go to the test's tmp_path.  With ``start=False`` the caller starts it.
    """
    started: list[GunicornProcess] = []

    def factory(
        app: str = "demo_app:app",
        config: str | None = None,
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        port: int | None = None,
        log_path: Path | None = None,
        *,
        ready_timeout: float = 60,
        probe_path: str | None = None,
        start: bool = True,
    ) -> GunicornProcess:
        log_path = log_path or tmp_path / f"gunicorn-{len(started)}.log"
        proc = GunicornProcess(app, config, args, {**server_env, **(env or {})}, port, log_path)
        started.append(proc)
        if start:
            proc.start(ready_timeout=ready_timeout, probe_path=probe_path)
        return proc

    yield factory
    for proc in started:
        proc.stop()
        # Captured output is only shown for failing tests: exactly when it helps.
        print(f"--- {proc!r} log tail ---\n{proc.log_tail()}")
