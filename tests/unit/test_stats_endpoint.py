"""The stats endpoint: never hides an app route, and trusts loopback only when told to."""

from __future__ import annotations

import os
from types import SimpleNamespace
from typing import Any

import pytest
from flask import Flask
from gunicorn.workers import ggevent

from gunitune.core.errors import ConfigError
from gunitune.flask_ext import GuniTune
from gunitune.http import STATS_ENDPOINT, check_stats_path, stats_view
from gunitune.worker import GuniTuneWorker

PATH = "/_gunitune"
LOCAL = {"REMOTE_ADDR": "127.0.0.1"}


def app_with(config: dict[str, Any], name: str = "stats_app") -> Flask:
    app = Flask(name)
    app.testing = True  # exceptions raised by a request reach the test
    app.config.update(config)
    return app


def assert_names_the_conflict(message: str, endpoint: str) -> None:
    assert "\n" not in message
    assert message.startswith(f"GUNITUNE_STATS_PATH='{PATH}' is also the path of")
    assert f"route {endpoint!r}, and one would hide the other" in message
    assert "set GUNITUNE_STATS_PATH to a path the app does not use" in message


def test_init_app_refuses_a_path_an_app_route_already_has() -> None:
    app = app_with({"GUNITUNE_STATS_PATH": PATH})
    app.add_url_rule(PATH, "app_admin", lambda: "the app's page")
    with pytest.raises(ConfigError) as info:
        GuniTune(app)
    assert_names_the_conflict(str(info.value), "app_admin")
    assert info.value.key == "GUNITUNE_STATS_PATH"
    assert STATS_ENDPOINT not in app.view_functions


def test_a_route_registered_after_init_app_is_refused_at_the_first_request() -> None:
    # The app-factory order: init_app, then the blueprints.
    app = app_with({"GUNITUNE_STATS_PATH": PATH})
    GuniTune(app)
    app.add_url_rule(PATH, "late_page", lambda: "the app's page")
    with pytest.raises(ConfigError) as info:
        app.test_client().get("/anything")
    assert_names_the_conflict(str(info.value), "late_page")
    with pytest.raises(ConfigError):  # every request, until fixed
        app.test_client().get(PATH, environ_base=LOCAL)


def test_without_a_conflict_the_first_request_check_goes_away() -> None:
    app = app_with({"GUNITUNE_STATS_PATH": PATH})
    GuniTune(app)
    app.add_url_rule("/page/<name>", "page", lambda name: name)
    app.add_url_rule("/<path:anything>", "catch_all", lambda anything: "spa")
    hooks = len(app.before_request_funcs[None])
    client = app.test_client()
    # A converter route matches the path too, but yields it to the static rule.
    assert client.get(PATH, environ_base=LOCAL).is_json
    assert client.get("/elsewhere").text == "spa"
    assert len(app.before_request_funcs[None]) == hooks - 1  # no cost per request after


def test_a_trailing_slash_variant_is_not_a_conflict() -> None:
    app = app_with({"GUNITUNE_STATS_PATH": PATH})
    app.add_url_rule(PATH + "/", "folder", lambda: "folder")
    GuniTune(app)
    client = app.test_client()
    assert client.get(PATH, environ_base=LOCAL).is_json
    assert client.get(PATH + "/").text == "folder"


def test_check_stats_path_is_quiet_without_a_stats_endpoint() -> None:
    app = app_with({})
    GuniTune(app)
    app.add_url_rule(PATH, "page", lambda: "page")
    check_stats_path(app)  # nothing registered at PATH by gunitune: nothing to refuse


def bare_worker(app: Flask, monkeypatch: pytest.MonkeyPatch) -> GuniTuneWorker:
    """A worker whose Gunicorn ``load_wsgi`` just hands it ``app``."""
    made = GuniTuneWorker.__new__(GuniTuneWorker)
    made.pid = os.getpid()
    made.cfg = SimpleNamespace(timeout=30, graceful_timeout=30, worker_connections=10)
    made.limiter = None
    monkeypatch.setattr(ggevent.GeventWorker, "load_wsgi", lambda self: setattr(self, "wsgi", app))
    return made


def one_error_line(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("gunitune: error: ")
    return lines[0].removeprefix("gunitune: error: ")


def test_a_worker_refuses_to_boot_when_a_route_took_the_stats_path(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    app = app_with({"GUNITUNE_STATS_PATH": PATH})
    GuniTune(app)
    app.add_url_rule(PATH, "late_page", lambda: "the app's page")
    worker = bare_worker(app, monkeypatch)
    with pytest.raises(SystemExit) as info:
        worker.load_wsgi()
    assert info.value.code == 3  # the arbiter stops: every worker would fail the same way
    assert_names_the_conflict(one_error_line(capsys.readouterr().err), "late_page")
    assert worker.limiter is None


def test_a_worker_whose_app_import_refuses_app_config_prints_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    worker = bare_worker(app_with({}), monkeypatch)

    def import_app(self: GuniTuneWorker) -> None:
        GuniTune(app_with({"GUNITUNE_TIMEOUT": 1}))  # what the app module does at import

    monkeypatch.setattr(ggevent.GeventWorker, "load_wsgi", import_app)
    with pytest.raises(SystemExit) as info:
        worker.load_wsgi()
    assert info.value.code == 3
    assert one_error_line(capsys.readouterr().err) == (
        "GUNITUNE_TIMEOUT=1 is invalid: expected an integer from 5 to 86400 (in app.config)"
    )


@pytest.mark.parametrize("loopback", ["on", "off"])
def test_with_a_token_the_token_decides_whatever_the_loopback_setting(loopback: str) -> None:
    app = app_with(
        {
            "GUNITUNE_STATS_PATH": PATH,
            "GUNITUNE_STATS_TOKEN": "t0ken",
            "GUNITUNE_STATS_LOOPBACK": loopback,
        }
    )
    GuniTune(app)
    client = app.test_client()
    with_token = {"Authorization": "Bearer t0ken"}
    # The token admits anyone, from anywhere, whatever the loopback setting.
    assert client.get(PATH, headers=with_token, environ_base={"REMOTE_ADDR": "10.0.0.7"}).is_json
    # A token configured means the token is required, loopback or not.
    assert client.get(PATH, environ_base=LOCAL).status_code == 403
    assert client.get(PATH, headers=with_token, environ_base=LOCAL).status_code == 200


def test_without_a_token_loopback_on_admits_a_local_client_only() -> None:
    app = app_with({"GUNITUNE_STATS_PATH": PATH, "GUNITUNE_STATS_LOOPBACK": "on"})
    GuniTune(app)
    client = app.test_client()
    assert client.get(PATH, environ_base=LOCAL).status_code == 200
    # HAProxy in TCP mode on the same host: a remote client, seen as 127.0.0.1,
    # with no header to tell. This is what GUNITUNE_STATS_LOOPBACK=off is for.
    assert client.get(PATH, environ_base={"REMOTE_ADDR": "10.0.0.7"}).status_code == 403


def test_loopback_off_without_a_token_is_refused_at_init() -> None:
    app = app_with({"GUNITUNE_STATS_PATH": PATH, "GUNITUNE_STATS_LOOPBACK": "OFF"})
    with pytest.raises(ConfigError, match=r"^GUNITUNE_STATS_LOOPBACK='off' without"):
        GuniTune(app)


def test_loopback_off_without_a_stats_path_is_fine() -> None:
    app = app_with({"GUNITUNE_STATS_LOOPBACK": "off"})
    GuniTune(app)


def test_a_view_built_with_loopback_off_and_no_token_admits_nobody() -> None:
    app = Flask("hand_built")
    app.add_url_rule(PATH, "stats", stats_view(lambda _: {"ok": True}, app, "", loopback=False))
    assert app.test_client().get(PATH, environ_base=LOCAL).status_code == 403
    app2 = Flask("hand_built_on")
    app2.add_url_rule(PATH, "stats", stats_view(lambda _: {"ok": True}, app2, "", loopback=True))
    assert app2.test_client().get(PATH, environ_base=LOCAL).status_code == 200
