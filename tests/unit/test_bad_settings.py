"""Every bad setting is refused with one line naming the key, the value and what is allowed.

One table, run through the real entry points: ``configure.load()`` (what
``gunitune.conf`` runs in the master), ``resolve()`` (what each worker runs),
and ``GuniTune(app)`` / ``init_app`` with ``app.config``. Environment values are
strings; ``app.config`` also gets the wrong types a Python config file holds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from flask import Flask

from gunitune import configure
from gunitune.core.errors import ConfigError
from gunitune.core.resolve import GunicornFacts, resolve
from gunitune.core.settings import Settings
from gunitune.flask_ext import EXTENSION_KEY, GuniTune

WORKERS = "an integer from 1 to 256, or 'auto'"
POOL = "an integer from 0 to 262143"
HOUR = "a number > 0 and <= 3600"
HELD = "an integer from 1 to 1048576"
CHECK = "one of error, warn, off"
ON_OFF = "one of on, off"
FRACTION = "a number between 0 and 1 (exclusive)"
PATH = "a URL path starting with '/' (no '<', '>', '?', '#' or spaces), or empty (off)"
TOKEN = "printable ASCII without spaces at either end, or empty (no token)"
UNKNOWN = "is not a gunitune setting"
PASSWORD = "hunter2"
GUNICORN = GunicornFacts(timeout=30.0, graceful_timeout=30.0, worker_connections=100)


@dataclass(frozen=True)
class Bad:
    """One refused setting. ``shown``: how the message prints the value (default: its repr)."""

    key: str
    value: object
    allowed: str
    shown: str | None = None
    secret: str | None = None  # must appear nowhere in the output
    extra: dict[str, str] = field(default_factory=dict)  # the other keys of a combination
    env: bool = True  # also as an environment variable (strings only)
    app: bool = True  # also in app.config

    @property
    def id(self) -> str:
        return f"{self.key.removeprefix('GUNITUNE_')}={str(self.value)[:24]!r}"

    def expected_value(self) -> str:
        return repr(self.value) if self.shown is None else self.shown


ROWS = [
    Bad("GUNITUNE_WORKERS", "0", WORKERS),
    Bad("GUNITUNE_WORKERS", "257", WORKERS),  # one more than the load board's seats
    Bad("GUNITUNE_WORKERS", True, WORKERS, env=False),
    Bad("WEB_CONCURRENCY", "100000", "an integer from 1 to 256", app=False),
    Bad("GUNITUNE_POOL", "yes", "one of auto, app"),
    Bad("GUNITUNE_POOL", 1, "one of auto, app", env=False),
    Bad("GUNITUNE_HOSTS", "0", "an integer from 1 to 262143"),
    Bad("GUNITUNE_HOSTS", "262144", "an integer from 1 to 262143"),  # one connection each
    Bad("GUNITUNE_HOSTS", 2.0, "an integer from 1 to 262143", env=False),
    Bad("GUNITUNE_POOL_SIZE", "-1", POOL),
    Bad("GUNITUNE_POOL_SIZE", "262144", POOL),  # past PostgreSQL's MAX_BACKENDS
    Bad("GUNITUNE_POOL_SIZE", [5], POOL, env=False),
    Bad("GUNITUNE_POOL_SIZE", "5\nGUNITUNE_X=1", POOL, shown="'5\\nGUNITUNE_X=1'"),
    Bad("GUNITUNE_POOL_SIZE", "9" * 5000, POOL, shown="(5002 characters)"),
    Bad(
        "GUNITUNE_POOL_SIZE", f"postgresql://app:{PASSWORD}@db:5432/app", POOL,
        shown="'postgresql://app:***@db:5432/app'", secret=PASSWORD,
    ),
    Bad("GUNITUNE_MAX_OVERFLOW", "-2", "an integer from -1 to 262143"),
    Bad("GUNITUNE_MAX_OVERFLOW", 10**400, "from -1 to", shown="(401 characters)", env=False),
    Bad("GUNITUNE_POOL_TIMEOUT", "nan", HOUR),
    Bad("GUNITUNE_POOL_TIMEOUT", "inf", HOUR),
    Bad("GUNITUNE_POOL_TIMEOUT", "7200", HOUR),
    Bad("GUNITUNE_POOL_TIMEOUT", {"seconds": 30}, HOUR, env=False),
    Bad("GUNITUNE_BURST", "2147483648", HELD),  # 2^31: listen() raised OverflowError
    Bad("GUNITUNE_BURST", "0", HELD),
    Bad("GUNITUNE_BURST", 3000.0, HELD, env=False),
    Bad("GUNITUNE_TIMEOUT", "1", "an integer from 5 to 86400"),  # healthy workers killed
    Bad("GUNITUNE_TIMEOUT", "4", "an integer from 5 to 86400"),
    Bad("GUNITUNE_TIMEOUT", "86401", "an integer from 5 to 86400"),
    Bad("GUNITUNE_TIMEOUT", "30s", "an integer from 5 to 86400"),
    Bad("GUNITUNE_BUDGET_CHECK", "fatal", CHECK),
    Bad("GUNITUNE_BUDGET_CHECK", True, CHECK, env=False),
    Bad("GUNITUNE_GREEN_CHECK", "", CHECK),
    Bad("GUNITUNE_QUEUE_TIMEOUT", "0", HOUR + ", or 'off'"),
    Bad("GUNITUNE_QUEUE_TIMEOUT", "31536000", HOUR + ", or 'off'"),  # a year
    Bad("GUNITUNE_QUEUE_TIMEOUT", "-inf", HOUR + ", or 'off'"),
    Bad("GUNITUNE_OUTAGE_WAIT", "0", HOUR),
    Bad("GUNITUNE_OUTAGE_WAIT", "off", HOUR),  # an outage wait cannot be endless
    Bad("GUNITUNE_OUTAGE_WAIT", "nan", HOUR),
    Bad("GUNITUNE_MAX_HELD", "0", HELD),
    Bad("GUNITUNE_MAX_HELD", "1048577", HELD),  # past fs.nr_open: not that many descriptors
    Bad("GUNITUNE_MAX_HELD", "1e6", HELD),
    Bad("GUNITUNE_FAST_SECONDS", "0", "a number > 0 and <= 60"),
    Bad("GUNITUNE_FAST_SECONDS", 1e9, "a number > 0 and <= 60", env=False),
    # float(10**400) raises OverflowError, not ValueError.
    Bad("GUNITUNE_FAST_SECONDS", 10**400, "a number > 0", shown="(401 characters)", env=False),
    Bad("GUNITUNE_ADAPTIVE", "yes", ON_OFF),
    Bad("GUNITUNE_ADAPTIVE", False, ON_OFF, env=False),
    Bad("GUNITUNE_FAST_SHARE", "1", FRACTION),
    Bad("GUNITUNE_FAST_SHARE", "NaN", FRACTION),
    Bad("GUNITUNE_RETRY_AFTER", "0", "an integer from 1 to 3600, or 'auto'"),
    Bad("GUNITUNE_RETRY_AFTER", "86400", "an integer from 1 to 3600, or 'auto'"),
    Bad("GUNITUNE_CPU_CONCURRENCY", "0", "an integer from 1 to 1024"),
    Bad("GUNITUNE_CPU_CONCURRENCY", "1000000", "an integer from 1 to 1024"),
    Bad("GUNITUNE_CPU_BOUND_RATIO", "1.5", "a number > 0 and <= 1"),
    Bad("GUNITUNE_BLOCK_THRESHOLD", "1e-9", "a number from 0.01 to 60"),
    Bad("GUNITUNE_PRESSURE_INTERVAL", "1e-9", "a number from 0.01 to 60"),  # spins a core
    Bad("GUNITUNE_PRESSURE_INTERVAL", "3600", "a number from 0.01 to 60"),
    Bad("GUNITUNE_PRESSURE_INTERVAL", float("nan"), "a number from 0.01 to 60", env=False),
    Bad("GUNITUNE_METRICS_PATH", "metrics", PATH),
    Bad("GUNITUNE_METRICS_PATH", "/metrics?x", PATH),
    Bad("GUNITUNE_STATS_PATH", "stats", PATH),
    Bad("GUNITUNE_STATS_PATH", "/stats/<id>", PATH),
    Bad("GUNITUNE_STATS_PATH", "/my stats", PATH),
    Bad("GUNITUNE_STATS_PATH", ["/stats"], PATH, env=False),
    Bad(
        "GUNITUNE_STATS_PATH", f"postgres://u:{PASSWORD}@h/db", PATH,
        shown="'postgres://u:***@h/db'", secret=PASSWORD,
    ),
    Bad(
        "GUNITUNE_STATS_TOKEN", f" {PASSWORD} ", TOKEN,
        shown="<hidden, 9 characters>", secret=PASSWORD,
    ),
    Bad("GUNITUNE_STATS_TOKEN", "pässwörd", TOKEN, shown="<hidden, 8", secret="pässwörd"),
    Bad("GUNITUNE_STATS_TOKEN", 73317331, TOKEN, shown="<hidden>", secret="7331", env=False),
    Bad("GUNITUNE_STATS_LOOPBACK", "maybe", ON_OFF),
    Bad("GUNITUNE_STATS_LOOPBACK", "", ON_OFF),
    Bad(
        "GUNITUNE_STATS_LOOPBACK", "off", "set a token, or empty the path",
        shown="'off'", extra={"GUNITUNE_STATS_PATH": "/_stats"},
    ),
    Bad("GUNITUNE_POOLSIZE", "5", "did you mean GUNITUNE_POOL_SIZE?", shown=""),
    Bad("GUNITUNE_STATS_TOKN", PASSWORD, "did you mean GUNITUNE_STATS_TOKEN?", shown="",
        secret=PASSWORD),
    Bad("GUNITUNE_OVERCOMMIT", "1e12", UNKNOWN, shown=""),  # removed with the lanes
]
ENV_ROWS = [pytest.param(row, id=row.id) for row in ROWS if row.env]
APP_ROWS = [pytest.param(row, id=row.id) for row in ROWS if row.app]


def test_the_table_covers_every_setting_and_is_long_enough() -> None:
    keys = {row.key for row in ROWS}
    assert set(Settings.keys()) <= keys
    assert len(ROWS) >= 25
    # Every row can run somewhere, and strings only go in the environment.
    assert all(row.env or row.app for row in ROWS)
    assert all(isinstance(row.value, str) for row in ROWS if row.env)


def check_message(message: str, row: Bad) -> None:
    assert "\n" not in message and "\r" not in message, message
    assert message.startswith(row.key), message
    assert row.expected_value() in message, message
    assert row.allowed in message, message
    if row.secret is not None:
        assert row.secret not in message, message


def environ_of(row: Bad) -> dict[str, str]:
    assert isinstance(row.value, str)
    return {row.key: row.value, **row.extra}


@pytest.mark.parametrize("row", ENV_ROWS)
def test_config_module_exits_with_one_line(row: Bad, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        configure.load(environ_of(row))
    assert info.value.code == 2
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("gunitune: error: ")
    check_message(lines[0].removeprefix("gunitune: error: "), row)
    if row.secret is not None:
        assert row.secret not in out + err


@pytest.mark.parametrize("row", [r for r in ENV_ROWS if r.values[0].key != "WEB_CONCURRENCY"])
def test_worker_resolve_refuses_the_environment(row: Bad) -> None:
    with pytest.raises(ConfigError) as info:
        resolve(environ_of(row), {}, GUNICORN, [])
    check_message(str(info.value), row)
    assert str(info.value).endswith(" (in the environment)")


def _constructor(app: Flask) -> None:
    GuniTune(app)


def _init_app(app: Flask) -> None:
    GuniTune().init_app(app)


@pytest.mark.parametrize("register", [_constructor, _init_app], ids=["GuniTune(app)", "init_app"])
@pytest.mark.parametrize("row", APP_ROWS)
def test_app_config_is_refused_at_init(row: Bad, register: Callable[[Flask], None]) -> None:
    app = Flask("bad_settings")
    config: dict[str, Any] = {row.key: row.value, **row.extra}
    app.config.update(config)
    with pytest.raises(ConfigError) as info:
        register(app)
    check_message(str(info.value), row)
    assert str(info.value).endswith(" (in app.config)")
    assert EXTENSION_KEY not in app.extensions


@pytest.mark.parametrize("row", [r for r in APP_ROWS if r.values[0].env])
def test_app_config_wins_but_a_bad_environment_value_still_names_its_source(
    row: Bad, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The bad value in the environment, nothing in app.config: the message says where.
    assert isinstance(row.value, str)
    for key, value in environ_of(row).items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError) as info:
        GuniTune(Flask("bad_settings_env"))
    check_message(str(info.value), row)
    assert str(info.value).endswith(" (in the environment)")
