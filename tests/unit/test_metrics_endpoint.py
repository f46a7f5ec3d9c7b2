"""The metrics endpoint and what a request counts, with Flask's test client.

Without PROMETHEUS_MULTIPROC_DIR the test process is one process: a scrape shows
its own metrics, shared by every app of the process, so tests compare deltas.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from flask import Flask
from prometheus_client.parser import text_string_to_metric_families

from gunitune.flask_ext import GuniTune
from tests.unit.test_flask_ext import Made, made, make_app, refusing

__all__ = ["made"]  # the fixture, used by name

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(app: Flask) -> Samples:
    response = app.test_client().get("/metrics")
    assert response.status_code == 200, response.text
    assert response.content_type.startswith("text/plain; version=")  # Prometheus text format
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
def metrics_app(tmp_path: Path, made: Made) -> tuple[Flask, GuniTune]:
    app, db = make_app(tmp_path, made, {"GUNITUNE_METRICS_PATH": "/metrics"})
    return app, GuniTune(app, db)


def test_metrics_are_off_by_default(tmp_path: Path, made: Made) -> None:
    app, db = make_app(tmp_path, made)
    tune = GuniTune(app, db)
    assert app.test_client().get("/metrics").status_code == 404
    assert tune.cycle(app).metrics is None


def test_requests_are_counted_by_route_lane_and_outcome(
    metrics_app: tuple[Flask, GuniTune],
) -> None:
    app, _tune = metrics_app
    client = app.test_client()
    before = scrape(app)
    for _ in range(3):
        assert client.get("/io").status_code == 200
    assert client.get("/health").status_code == 200
    assert client.get("/no-such-page").status_code == 404
    after = scrape(app)
    scrape(app)  # scrapes are not the app's traffic: not counted

    def delta(**labels: str) -> float:
        name = "gunitune_requests_total"
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta(route="/io", lane="fast", outcome="ok") == 3
    assert delta(route="/health", lane="exempt", outcome="ok") == 1
    # A path no rule matches is one route, whatever its path: cardinality stays bounded.
    assert delta(route="<unmatched>", lane="fast", outcome="client_error") == 1
    assert value(scrape(app), "gunitune_requests_total", route="/metrics") == 0
    # Every outcome of a route seen in a lane is exported from then on, at 0 until it
    # happens: rate() needs a sample before the first increment.
    for outcome in ("error", "shed", "client_gone"):
        labels = (("lane", "fast"), ("outcome", outcome), ("route", "/io"))
        assert ("gunitune_requests_total", labels) in after, outcome
    for lane in ("fast", "slow", "cpu"):
        assert ("gunitune_shed_total", (("lane", lane), ("reason", "queue_timeout"))) in before
    wait = "gunitune_queue_wait_seconds_count"
    # /io three times and the unmatched path: a route not yet learned queues in the fast lane.
    assert value(after, wait, lane="fast") - value(before, wait, lane="fast") == 4


def test_a_shed_request_counts_as_shed_with_its_reason(
    metrics_app: tuple[Flask, GuniTune],
) -> None:
    app, tune = metrics_app
    before = scrape(app)
    refusing(tune, app)
    assert app.test_client().get("/io").status_code == 503
    after = scrape(app)
    labels = {"route": "/io", "lane": "fast", "outcome": "shed"}
    name = "gunitune_requests_total"
    assert value(after, name, **labels) - value(before, name, **labels) == 1
    shed = {"lane": "fast", "reason": "shutting_down"}
    name = "gunitune_shed_total"
    assert value(after, name, **shed) - value(before, name, **shed) == 1


def test_a_scrape_publishes_the_answering_worker_s_gauges(
    metrics_app: tuple[Flask, GuniTune],
) -> None:
    app, _tune = metrics_app
    app.test_client().get("/io")  # builds the limiter
    samples = scrape(app)
    assert value(samples, "gunitune_limit", lane="fast") == 3  # pool_size 2 + overflow 1
    assert value(samples, "gunitune_limit", lane="cpu") == 1
    assert value(samples, "gunitune_in_flight", lane="fast") == 0
    assert ("gunitune_pool_checked_out", ()) in samples
    assert ("gunitune_worker_cpu_ratio", ()) in samples


@pytest.mark.parametrize(
    ("headers", "address"),
    [({}, "10.1.2.3"), ({"X-Forwarded-For": "203.0.113.7"}, "127.0.0.1"), ({}, "not-an-ip")],
)
def test_metrics_refuse_what_the_stats_refuse(
    metrics_app: tuple[Flask, GuniTune], headers: dict[str, str], address: str
) -> None:
    app, _tune = metrics_app
    response = app.test_client().get(
        "/metrics", headers=headers, environ_base={"REMOTE_ADDR": address}
    )
    assert response.status_code == 403
    assert "loopback clients only" in response.text


def test_metrics_with_the_stats_token(tmp_path: Path, made: Made) -> None:
    config = {"GUNITUNE_METRICS_PATH": "/metrics", "GUNITUNE_STATS_TOKEN": "s3cret"}
    app, db = make_app(tmp_path, made, config)
    GuniTune(app, db)
    client = app.test_client()
    remote = {"REMOTE_ADDR": "10.1.2.3"}
    assert client.get("/metrics").status_code == 403  # loopback is not enough with a token
    good = client.get("/metrics", headers={"Authorization": "Bearer s3cret"}, environ_base=remote)
    assert good.status_code == 200
    assert "gunitune_requests_total" in good.text
