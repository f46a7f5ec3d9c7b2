"""read_server_budget against a real PostgreSQL, including how it fails."""

from __future__ import annotations

import time
from urllib.parse import urlsplit, urlunsplit

import pytest

from benchmarks.postgres import PostgresCluster
from gunitune.postgres import DatabaseUnreachable, read_server_budget

pytestmark = pytest.mark.integration


def _with_password(url: str, password: str) -> str:
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:{password}@{host}"))


def _password(url: str) -> str:
    return urlsplit(url).password or ""


def _settled_others(url: str, timeout: float = 10.0) -> int:
    # Backends of connections closed by earlier tests exit asynchronously:
    # wait until the count stops moving before using it as a baseline.
    deadline = time.monotonic() + timeout
    last = read_server_budget(url).in_use_by_others
    stable = 0
    while stable < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
        now = read_server_budget(url).in_use_by_others
        stable = stable + 1 if now == last else 0
        last = now
    return last


def test_budget_matches_show(postgres: PostgresCluster) -> None:
    budget = read_server_budget(postgres.url)
    ((max_connections,),) = postgres.query("SHOW max_connections")
    ((superuser_reserved,),) = postgres.query("SHOW superuser_reserved_connections")
    ((reserved,),) = postgres.query("SELECT current_setting('reserved_connections', true)")
    ((version,),) = postgres.query("SHOW server_version")
    assert budget.max_connections == int(max_connections)
    assert budget.superuser_reserved_connections == int(superuser_reserved)
    assert budget.reserved_connections == (int(reserved) if reserved is not None else 0)
    assert budget.server_version == version.split()[0]
    assert budget.in_use_by_others >= 0


def test_second_connection_is_counted_as_in_use_by_others(postgres: PostgresCluster) -> None:
    before = _settled_others(postgres.url)
    held = postgres.connect()
    try:
        deadline = time.monotonic() + 5
        while True:
            during = read_server_budget(postgres.url).in_use_by_others
            if during == before + 1 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert during == before + 1
    finally:
        held.close()


def test_wrong_password_gets_auth_hint_and_no_password(postgres: PostgresCluster) -> None:
    wrong = "not-the-Passw0rd"
    with pytest.raises(DatabaseUnreachable) as info:
        read_server_budget(_with_password(postgres.url, wrong))
    message = str(info.value)
    assert info.value.kind == "auth"
    assert "password authentication failed" in message
    assert "check the user name and password in DATABASE_URL" in message
    assert wrong not in message
    assert _password(postgres.url) not in message
    assert "\n" not in message


def test_missing_database_is_named(postgres: PostgresCluster) -> None:
    url = postgres.url.rsplit("/", 1)[0] + "/no_such_db"
    with pytest.raises(DatabaseUnreachable) as info:
        read_server_budget(url)
    assert info.value.kind == "no_database"
    masked = url.replace(_password(postgres.url), "***")
    expected = f'cannot reach DATABASE_URL={masked}: database "no_such_db" does not exist'
    assert str(info.value).startswith(expected)
