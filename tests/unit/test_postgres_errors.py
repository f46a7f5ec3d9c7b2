"""DatabaseUnreachable messages: one line, useful hint, never the password.

No PostgreSQL needed: driver error texts are fed in directly, and the one real
connection attempt goes to a closed port on 127.0.0.1.
"""

from __future__ import annotations

import socket

import pytest

from gunitune.core.errors import ConfigError, GunituneError
from gunitune.postgres import (
    DatabaseUnreachable,
    _libpq_target,
    read_server_budget,
    safe_error_text,
    unreachable_error,
)

URL = "postgresql://app:s3cretPW@127.0.0.1:5999/app"
REFUSED = (
    'connection to server at "127.0.0.1", port 5999 failed: Connection refused\n'
    "\tIs the server running on that host and accepting TCP/IP connections?\n"
)
AUTH = (
    'connection to server at "127.0.0.1", port 5999 failed: '
    'FATAL:  password authentication failed for user "app"\n'
)


def _closed_port() -> int:
    # Bind then close: nothing listens there for the next few milliseconds.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_refused_message_matches_documented_format() -> None:
    err = unreachable_error(URL, REFUSED)
    assert isinstance(err, GunituneError)
    assert err.kind == "refused"
    assert str(err) == (
        "cannot reach DATABASE_URL=postgresql://app:***@127.0.0.1:5999/app: "
        "connection refused (is the server running and listening on 127.0.0.1:5999?)"
    )


def test_auth_failure_has_its_own_hint() -> None:
    err = unreachable_error(URL, AUTH)
    assert err.kind == "auth"
    assert 'password authentication failed for user "app"' in str(err)
    assert "check the user name and password" in str(err)
    assert "s3cretPW" not in str(err)
    assert "\n" not in str(err)


@pytest.mark.parametrize(
    "text",
    [
        # A URL with the password inside the driver's text.
        "invalid dsn: postgresql://app:s3cretPW@127.0.0.1:5999/app is wrong",
        # A key=value DSN as psycopg2 builds it when merging kwargs.
        "invalid dsn: host=127.0.0.1 password=s3cretPW port=5999",
        "invalid dsn: host=127.0.0.1 password='s3cretPW' port=5999",
        # The bare password anywhere.
        'missing "=" after "s3cretPW" in connection info string',
    ],
)
def test_password_never_appears(text: str) -> None:
    err = unreachable_error(URL, text)
    assert "s3cretPW" not in str(err)
    assert "s3cretPW" not in err.reason
    assert "\n" not in str(err)


def test_percent_encoded_password_is_masked_in_both_forms() -> None:
    url = "postgresql://app:p%40ss%2Fword@db.example:6432/app"
    for leaked in ("p@ss/word", "p%40ss%2Fword"):
        err = unreachable_error(url, f"something about {leaked} failed")
        assert leaked not in str(err)
        assert "db.example:6432" in str(err)


def test_unencoded_at_in_password_is_masked_and_reencoded_for_libpq() -> None:
    url = "postgresql+psycopg2://app:p@ss/w@127.0.0.1:5999/app"
    err = unreachable_error(url, REFUSED)
    assert "ss/w" not in str(err)
    assert "DATABASE_URL=postgresql+psycopg2://app:***@127.0.0.1:5999/app:" in str(err)
    kwargs, driver = _libpq_target(url)
    assert kwargs == {
        "user": "app",
        "password": "p@ss/w",
        "host": "127.0.0.1",
        "port": 5999,
        "dbname": "app",
    }
    assert driver == "psycopg2"


def test_password_equal_to_user_name_keeps_the_reason_readable() -> None:
    url = "postgresql://postgres:postgres@localhost/postgres"
    err = unreachable_error(url, 'FATAL:  password authentication failed for user "postgres"')
    assert 'for user "postgres"' in str(err)
    assert "DATABASE_URL=postgresql://postgres:***@localhost/postgres:" in str(err)


def test_first_line_only_and_libpq_prefix_dropped() -> None:
    text = '\n\nconnection to server on socket "/tmp/.s.PGSQL.5432" failed: No such file\nmore\n'
    assert safe_error_text(text, URL) == "no such file"


def test_message_keeps_acronyms() -> None:
    assert safe_error_text("SSL SYSCALL error: EOF detected", URL).startswith("SSL SYSCALL")


@pytest.mark.parametrize(
    ("text", "kind", "hint_part"),
    [
        (
            'could not translate host name "dbx" to address: Name or service not known',
            "dns",
            "host name",
        ),
        (
            'connection to server at "10.0.0.1", port 5432 failed: timeout expired',
            "timeout",
            "within 5s",
        ),
        ('FATAL:  database "app" does not exist', "no_database", "create the database"),
        ('FATAL:  role "app" does not exist', "auth", "create the role"),
        ("FATAL:  sorry, too many clients already", "full", "max_connections"),
        ("FATAL:  the database system is starting up", "starting", "retry"),
        ('FATAL:  no pg_hba.conf entry for host "10.1.1.1"', "auth", "pg_hba.conf"),
        ('invalid dsn: invalid URI query parameter: "foo"', "invalid", "libpq"),
        ("something new", "other", "DATABASE_URL"),
    ],
)
def test_classification(text: str, kind: str, hint_part: str) -> None:
    err = unreachable_error(URL, text)
    assert err.kind == kind
    assert hint_part in err.hint
    assert str(err).endswith(f"({err.hint})")


def test_default_port_and_socket_in_hint() -> None:
    no_port = unreachable_error("postgresql://app:pw@dbhost/app", "Connection refused")
    assert "listening on dbhost:5432?" in str(no_port)
    socket_url = unreachable_error("postgresql:///app", "No such file or directory")
    assert "listening on its Unix socket?" in str(socket_url)


def test_real_refused_connection_is_one_line_without_password() -> None:
    url = f"postgresql://app:s3cretPW@127.0.0.1:{_closed_port()}/app"
    with pytest.raises(DatabaseUnreachable) as info:
        read_server_budget(url, connect_timeout=2)
    message = str(info.value)
    assert info.value.kind == "refused"
    assert "\n" not in message
    assert "s3cretPW" not in message
    assert message.startswith("cannot reach DATABASE_URL=postgresql://app:***@127.0.0.1:")
    # The driver's exception is not chained: its text could hold the password.
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__


@pytest.mark.parametrize("url", ["sqlite:///app.db", "not a url"])
def test_non_postgres_url_is_a_config_error(url: str) -> None:
    with pytest.raises(ConfigError):
        read_server_budget(url)
