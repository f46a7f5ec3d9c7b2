"""Settings: declared defaults, parsing, error messages, sources, the README table."""

from __future__ import annotations

from typing import Any

import pytest

from gunitune.core.errors import ConfigError
from gunitune.core.settings import PREFIX, Setting, Settings, render_markdown

DEFAULTS: dict[str, Any] = {
    "workers": None,
    "pool_size": 5,
    "max_overflow": 10,
    "pool": "app",
    "hosts": 1,
    "pool_timeout": 30.0,
    "burst": 3000,
    "timeout": 30,
    "budget_check": "error",
    "green_check": "error",
    "queue_timeout": None,
    "outage_wait": 15.0,
    "max_held": 5000,
    "fast_seconds": 0.1,
    "adaptive": "on",
    "fast_share": 0.3,
    "retry_after": None,
    "cpu_concurrency": 1,
    "cpu_bound_ratio": 0.5,
    "block_threshold": 0.5,
    "pressure_interval": 1.0,
    "stats_path": "",
    "stats_token": "",
    "stats_loopback": "on",
    "metrics_path": "",
}


def test_every_setting_has_a_tested_default() -> None:
    assert [s.name for s in Settings.declared()] == list(DEFAULTS)


@pytest.mark.parametrize(("name", "default"), DEFAULTS.items())
def test_default_when_no_source_has_the_key(name: str, default: Any) -> None:
    settings = Settings.from_sources({}, {"UNRELATED": "x"})
    value = getattr(settings, name)
    assert value == default
    assert type(value) is type(default)
    assert settings.as_dict()[name] == default


def test_keys_are_prefixed_upper_case_names() -> None:
    keys = Settings.keys()
    assert len(keys) == len(set(keys)) == len(DEFAULTS)
    assert all(k.startswith(PREFIX) for k in keys)
    assert "GUNITUNE_POOL_SIZE" in keys
    assert Settings.pool_size.key == "GUNITUNE_POOL_SIZE"


def test_class_access_returns_the_declaration() -> None:
    declaration = Settings.pool_size
    assert isinstance(declaration, Setting)
    assert declaration.default == 5
    assert declaration.allowed == "an integer from 0 to 262143"


@pytest.mark.parametrize(
    ("key", "raw", "expected"),
    [
        ("GUNITUNE_POOL_SIZE", "7", 7),
        ("GUNITUNE_POOL_SIZE", " 7 \n", 7),
        ("GUNITUNE_POOL_SIZE", "0", 0),
        ("GUNITUNE_MAX_OVERFLOW", "-1", -1),
        ("GUNITUNE_WORKERS", "4", 4),
        ("GUNITUNE_WORKERS", "auto", None),
        ("GUNITUNE_WORKERS", " AUTO ", None),
        ("GUNITUNE_WORKERS", "", None),
        ("GUNITUNE_WORKERS", "none", None),
        ("GUNITUNE_POOL_TIMEOUT", "2.5", 2.5),
        ("GUNITUNE_POOL_TIMEOUT", "3", 3.0),
        ("GUNITUNE_QUEUE_TIMEOUT", "0.25", 0.25),
        ("GUNITUNE_QUEUE_TIMEOUT", "off", None),
        ("GUNITUNE_QUEUE_TIMEOUT", " OFF ", None),
        ("GUNITUNE_QUEUE_TIMEOUT", "none", None),
        ("GUNITUNE_QUEUE_TIMEOUT", "", None),
        ("GUNITUNE_MAX_HELD", "200", 200),
        ("GUNITUNE_MAX_HELD", "1", 1),
        ("GUNITUNE_FAST_SECONDS", "1e-1", 0.1),
        ("GUNITUNE_FAST_SECONDS", "2", 2.0),
        ("GUNITUNE_ADAPTIVE", " OFF ", "off"),
        ("GUNITUNE_FAST_SHARE", "0.5", 0.5),
        ("GUNITUNE_FAST_SHARE", " 0.05 ", 0.05),
        ("GUNITUNE_RETRY_AFTER", "5", 5),
        ("GUNITUNE_BUDGET_CHECK", "WARN", "warn"),
        ("GUNITUNE_GREEN_CHECK", " off ", "off"),
        ("GUNITUNE_STATS_PATH", " /_gunitune ", "/_gunitune"),
        ("GUNITUNE_STATS_PATH", "", ""),
        ("GUNITUNE_METRICS_PATH", " /metrics ", "/metrics"),
        ("GUNITUNE_STATS_TOKEN", "s3cret token", "s3cret token"),
    ],
)
def test_parse_from_strings(key: str, raw: str, expected: Any) -> None:
    settings = Settings.from_sources({key: raw})
    name = key.removeprefix(PREFIX).lower()
    assert getattr(settings, name) == expected
    assert type(getattr(settings, name)) is type(expected)


@pytest.mark.parametrize(
    ("key", "raw", "expected"),
    [
        ("GUNITUNE_POOL_SIZE", 7, 7),
        ("GUNITUNE_WORKERS", 3, 3),
        ("GUNITUNE_POOL_TIMEOUT", 4, 4.0),
        ("GUNITUNE_POOL_TIMEOUT", 0.5, 0.5),
        ("GUNITUNE_QUEUE_TIMEOUT", 3, 3.0),
        ("GUNITUNE_MAX_HELD", 10, 10),
        ("GUNITUNE_FAST_SHARE", 0.25, 0.25),
        ("GUNITUNE_FAST_SECONDS", 1, 1.0),
        ("GUNITUNE_CPU_BOUND_RATIO", 0.75, 0.75),
    ],
)
def test_parse_native_values(key: str, raw: Any, expected: Any) -> None:
    settings = Settings.from_sources({key: raw})
    name = key.removeprefix(PREFIX).lower()
    assert getattr(settings, name) == expected
    assert type(getattr(settings, name)) is type(expected)


def test_none_value_means_default() -> None:
    settings = Settings.from_sources({"GUNITUNE_POOL_SIZE": None, "GUNITUNE_STATS_TOKEN": None})
    assert settings.pool_size == 5
    assert settings.stats_token == ""


POOL = "an integer from 0 to 262143"
WORKERS = "an integer from 1 to 256, or 'auto'"
SECONDS_HOUR = "a number > 0 and <= 3600"
CHECKS = "one of error, warn, off"
FRACTION = "a number between 0 and 1 (exclusive)"
HELD = "an integer from 1 to 1048576"


@pytest.mark.parametrize(
    ("key", "raw", "allowed"),
    [
        ("GUNITUNE_POOL_SIZE", "-1", POOL),
        ("GUNITUNE_POOL_SIZE", "five", POOL),
        ("GUNITUNE_POOL_SIZE", "1.5", POOL),
        ("GUNITUNE_POOL_SIZE", 2.0, POOL),
        ("GUNITUNE_POOL_SIZE", True, POOL),
        ("GUNITUNE_POOL_SIZE", "", POOL),
        ("GUNITUNE_MAX_OVERFLOW", "-2", "an integer from -1 to 262143"),
        ("GUNITUNE_WORKERS", "0", WORKERS),
        ("GUNITUNE_WORKERS", "many", WORKERS),
        ("GUNITUNE_POOL_TIMEOUT", "0", SECONDS_HOUR),
        ("GUNITUNE_POOL_TIMEOUT", -1.0, SECONDS_HOUR),
        ("GUNITUNE_POOL_TIMEOUT", "nan", SECONDS_HOUR),
        ("GUNITUNE_POOL_TIMEOUT", "inf", SECONDS_HOUR),
        ("GUNITUNE_POOL_TIMEOUT", False, SECONDS_HOUR),
        ("GUNITUNE_BURST", "0", HELD),
        ("GUNITUNE_TIMEOUT", "30s", "an integer from 5 to 86400"),
        ("GUNITUNE_BUDGET_CHECK", "fatal", CHECKS),
        ("GUNITUNE_GREEN_CHECK", "", CHECKS),
        ("GUNITUNE_QUEUE_TIMEOUT", "-0.5", SECONDS_HOUR + ", or 'off'"),
        ("GUNITUNE_QUEUE_TIMEOUT", "0", SECONDS_HOUR + ", or 'off'"),
        ("GUNITUNE_QUEUE_TIMEOUT", "auto", SECONDS_HOUR + ", or 'off'"),  # no longer a value
        ("GUNITUNE_MAX_HELD", "0", HELD),
        ("GUNITUNE_MAX_HELD", "lots", HELD),
        ("GUNITUNE_FAST_SECONDS", "0", "a number > 0 and <= 60"),
        ("GUNITUNE_FAST_SECONDS", "off", "a number > 0 and <= 60"),
        ("GUNITUNE_ADAPTIVE", "yes", "one of on, off"),
        ("GUNITUNE_FAST_SHARE", "0", FRACTION),
        ("GUNITUNE_FAST_SHARE", "1", FRACTION),
        ("GUNITUNE_FAST_SHARE", 1.5, FRACTION),
        ("GUNITUNE_FAST_SHARE", True, FRACTION),
        ("GUNITUNE_RETRY_AFTER", "0", "an integer from 1 to 3600, or 'auto'"),
        ("GUNITUNE_CPU_CONCURRENCY", "0", "an integer from 1 to 1024"),
        ("GUNITUNE_CPU_BOUND_RATIO", "0", "a number > 0 and <= 1"),
        ("GUNITUNE_BLOCK_THRESHOLD", "0", "a number from 0.01 to 60"),
        ("GUNITUNE_PRESSURE_INTERVAL", "-1", "a number from 0.01 to 60"),
        (
            "GUNITUNE_STATS_PATH",
            "stats",
            "a URL path starting with '/' (no '<', '>', '?', '#' or spaces), or empty (off)",
        ),
        (
            "GUNITUNE_METRICS_PATH",
            "metrics",
            "a URL path starting with '/' (no '<', '>', '?', '#' or spaces), or empty (off)",
        ),
    ],
)
def test_bad_value_names_key_value_and_allowed(key: str, raw: object, allowed: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_sources({key: raw})
    message = str(info.value)
    assert message == f"{key}={raw!r} is invalid: expected {allowed}"
    assert "\n" not in message
    assert isinstance(info.value, ValueError)


def test_setting_parse_raises_config_error_directly() -> None:
    with pytest.raises(ConfigError, match=r"^GUNITUNE_BURST='x' is invalid"):
        Settings.burst.parse("x")


@pytest.mark.parametrize(
    ("typo", "suggestion"),
    [
        ("GUNITUNE_POOLSIZE", "GUNITUNE_POOL_SIZE"),
        ("GUNITUNE_MAX_OVERFLOWS", "GUNITUNE_MAX_OVERFLOW"),
        ("GUNITUNE_WORKER", "GUNITUNE_WORKERS"),
        ("GUNITUNE_STAT_TOKEN", "GUNITUNE_STATS_TOKEN"),
    ],
)
def test_unknown_key_suggests_closest(typo: str, suggestion: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_sources({typo: "1"})
    assert str(info.value) == f"{typo} is not a gunitune setting: did you mean {suggestion}?"


def test_unknown_key_without_close_match_points_to_the_list() -> None:
    with pytest.raises(
        ConfigError, match=r"GUNITUNE_ZZZZZZZZZZZZZZZZZZZZZZZZ is not a gunitune setting: run"
    ):
        Settings.from_sources({"GUNITUNE_ZZZZZZZZZZZZZZZZZZZZZZZZ": "1"})


@pytest.mark.parametrize(
    "removed", ["GUNITUNE_OVERCOMMIT", "GUNITUNE_CPU_BUDGET"]
)
def test_settings_removed_with_the_lanes_are_rejected_not_ignored(removed: str) -> None:
    with pytest.raises(ConfigError, match=rf"^{removed} is not a gunitune setting"):
        Settings.from_sources({removed: "1"})


def test_unknown_key_in_any_source_is_rejected() -> None:
    with pytest.raises(ConfigError, match="GUNITUNE_BRUST"):
        Settings.from_sources({"GUNITUNE_BURST": "10"}, {"GUNITUNE_BRUST": "10"})


def test_keys_without_prefix_are_ignored() -> None:
    settings = Settings.from_sources({"WEB_CONCURRENCY": "3", "POOL_SIZE": "x", "gunitune_x": 1})
    assert settings.as_dict() == DEFAULTS


def test_first_source_with_the_key_wins() -> None:
    app_config = {"GUNITUNE_POOL_SIZE": "7"}
    environ = {"GUNITUNE_POOL_SIZE": "9", "GUNITUNE_BURST": "10"}
    settings = Settings.from_sources(app_config, environ)
    assert settings.pool_size == 7
    assert settings.burst == 10
    assert settings.timeout == 30

    reversed_order = Settings.from_sources(environ, app_config)
    assert reversed_order.pool_size == 9


def test_value_from_a_later_source_is_still_validated() -> None:
    with pytest.raises(ConfigError, match="GUNITUNE_BURST='0'"):
        Settings.from_sources({"GUNITUNE_POOL_SIZE": "7"}, {"GUNITUNE_BURST": "0"})


def test_render_markdown_has_one_row_per_setting() -> None:
    table = render_markdown()
    lines = table.splitlines()
    assert table.endswith("\n")
    assert lines[0] == "| Key | Default | Allowed | What it does |"
    assert lines[1] == "| --- | --- | --- | --- |"
    rows = lines[2:]
    assert len(rows) == len(Settings.declared())
    for row, setting in zip(rows, Settings.declared(), strict=True):
        assert row.startswith(f"| `{setting.key}` |")
        assert row.count(" | ") == 3  # four cells: no stray '|' in any doc
        assert setting.allowed in row
        assert setting.doc in row


def test_render_markdown_defaults() -> None:
    rows = {line.split(" | ")[0].strip("| `"): line for line in render_markdown().splitlines()[2:]}
    assert "| `auto` |" in rows["GUNITUNE_WORKERS"]
    assert "| `5` |" in rows["GUNITUNE_POOL_SIZE"]
    assert "| `'error'` |" in rows["GUNITUNE_BUDGET_CHECK"]
    assert "| `(empty)` |" in rows["GUNITUNE_STATS_PATH"]
    assert "| `off` |" in rows["GUNITUNE_QUEUE_TIMEOUT"]
    assert "| `auto` |" in rows["GUNITUNE_RETRY_AFTER"]
    assert "| `5000` |" in rows["GUNITUNE_MAX_HELD"]
    assert "| `0.3` |" in rows["GUNITUNE_FAST_SHARE"]


def test_replace_returns_a_validated_copy() -> None:
    original = Settings.from_sources({"GUNITUNE_POOL_SIZE": "7"})
    changed = original.replace(pool_size="8", queue_timeout="2", workers=None)
    assert (changed.pool_size, changed.queue_timeout, changed.workers) == (8, 2.0, None)
    assert changed.burst == original.burst
    assert original.pool_size == 7
    assert original.queue_timeout is None
    assert changed is not original


def test_replace_rejects_bad_value_naming_the_key() -> None:
    settings = Settings.from_sources({})
    with pytest.raises(ConfigError, match=r"^GUNITUNE_TIMEOUT=0 is invalid: expected an integer"):
        settings.replace(timeout=0)
    assert settings.timeout == 30


def test_replace_unknown_name_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="poolsize"):
        Settings.from_sources({}).replace(poolsize=3)
