"""Database URLs through SQLAlchemy's URL: masking, the driver a plain URL gets, libpq keywords."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine
from sqlalchemy.dialects import registry

from gunitune import database_url
from gunitune.core.urls import UnsupportedDatabaseURL
from gunitune.database_url import connect_kwargs, masked, parse, use_installed_driver, with_driver

SECRET = "s3cret"


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://app:{SECRET}@db/app",
        f"postgresql://app:{SECRET} with spaces@db/app",  # issue 10: a password with a space
        f"postgresql://app:{SECRET}@x@db/app",  # a raw "@" in the password
        f"postgresql://app:{SECRET}/x@db/app",  # a raw "/" in the password
        f"postgresql://app@db/app?password={SECRET}",
        f"postgresql://app@db/app?sslmode=verify-full&sslpassword={SECRET}",  # issue 10
        f"postgresql+psycopg://app:{SECRET}%40x@db:6432/app",
    ],
)
def test_masked_hides_every_secret(url: str) -> None:
    shown = masked(url)
    assert SECRET not in shown
    assert "***" in shown
    assert "@db" in shown and "x@db" not in shown


def test_masked_keeps_what_helps() -> None:
    assert masked("postgresql://app:pw@db:6432/app?sslmode=require") == (
        "postgresql://app:***@db:6432/app?sslmode=require"
    )


def test_not_a_url_is_refused_without_the_password() -> None:
    with pytest.raises(UnsupportedDatabaseURL, match="is not a URL") as caught:
        parse("host=db password=" + SECRET)
    assert SECRET not in str(caught.value)
    assert "\n" not in str(caught.value)


def _only(*names: str) -> object:
    return lambda module: module in names


def test_plain_url_follows_sqlalchemy_when_its_driver_is_installed() -> None:
    default = database_url.sqlalchemy_default_driver()
    url, driver = with_driver("postgresql://app:pw@db/app", _only("psycopg2", "psycopg"))
    assert driver == default
    assert url.drivername == f"postgresql+{default}"


@pytest.mark.parametrize("installed", ["psycopg2", "psycopg"])
def test_plain_url_takes_the_installed_driver(installed: str) -> None:
    url, driver = with_driver("postgres://app:pw@db/app", _only(installed))  # type: ignore[arg-type]
    assert (driver, url.drivername) == (installed, f"postgresql+{installed}")
    assert url.password == "pw"


def test_a_named_driver_is_kept_and_other_databases_pass() -> None:
    assert with_driver("postgresql+asyncpg://a@db/x", _only())[1] == "asyncpg"  # type: ignore[arg-type]
    url, driver = with_driver("sqlite:///app.db", _only())  # type: ignore[arg-type]
    assert (url.drivername, driver) == ("sqlite", "")


def test_no_driver_at_all_names_the_fix() -> None:
    with pytest.raises(UnsupportedDatabaseURL, match="pip install psycopg2-binary"):
        with_driver("postgresql://app@db/app", _only())  # type: ignore[arg-type]


def test_connect_kwargs_pass_the_password_as_it_is() -> None:
    url = parse("postgresql://app:p%25 @x@db:6432/app?sslmode=require")
    assert connect_kwargs(url) == {
        "user": "app",
        "password": "p% @x",
        "host": "db",
        "port": 6432,
        "dbname": "app",
        "sslmode": "require",
    }


@pytest.fixture
def clean_registry() -> Iterator[None]:
    saved = dict(registry.impls)
    for name in ("postgres", "postgresql"):
        registry.impls.pop(name, None)
    try:
        yield
    finally:
        registry.impls.clear()
        registry.impls.update(saved)


@pytest.mark.usefixtures("clean_registry")
def test_plain_url_engine_uses_the_only_installed_driver() -> None:
    other = "psycopg2" if database_url.sqlalchemy_default_driver() == "psycopg" else "psycopg"
    assert use_installed_driver(_only(other)) == other  # type: ignore[arg-type]
    assert use_installed_driver(_only(other)) is None  # once per process  # type: ignore[arg-type]
    for url in ("postgresql://app:pw@db/app", "postgres://app:pw@db/app"):
        engine = create_engine(url)
        assert engine.dialect.driver == other
        engine.dispose()


@pytest.mark.usefixtures("clean_registry")
def test_sqlalchemy_default_stays_when_installed_but_postgres_scheme_works() -> None:
    default = database_url.sqlalchemy_default_driver()
    assert use_installed_driver(_only("psycopg2", "psycopg")) is None  # type: ignore[arg-type]
    assert "postgresql" not in registry.impls
    engine = create_engine("postgres://app:pw@db/app")
    assert engine.dialect.driver == default
    engine.dispose()
