"""The storm benchmark's pure parts on fixed inputs: figures, limits, table, plot,
configurations and command line. Nothing here starts a process."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from benchmarks import configs, report, storm
from benchmarks import storm_figures as sf
from benchmarks.loadclient import RequestResult
from benchmarks.runner import libpq_url

WRK_OUTPUT = """\
Running 10s test @ http://127.0.0.1:8000/hello
  2 threads and 50 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     4.20ms    1.10ms  45.30ms   80.00%
    Req/Sec     6.00k   300.00     6.50k    70.00%
  Latency Distribution
     50%    4.00ms
     75%    4.80ms
     90%    5.60ms
     99%  812.00us
  120000 requests in 10.00s, 17.00MB read
  Socket errors: connect 0, read 3, write 0, timeout 2
  Non-2xx or 3xx responses: 7
Requests/sec:  12000.00
Transfer/sec:      1.70MB
"""


def _res(
    i: int,
    status: int | None,
    *,
    ok: bool = True,
    error: str | None = None,
    t0: float = 100.0,
    t1: float = 101.0,
) -> RequestResult:
    return RequestResult(
        index=i, path="/io", status=status, body_ok=ok and status is not None and error is None,
        error=error, started=t0, finished=t1,
    )  # fmt: skip


def test_limits_and_ratio() -> None:
    # The seed's numbers: 3 workers x (5 + 10) connections, each held 5 s.
    assert sf.io_limit(3, 15, 5.0) == 9.0
    assert sf.io_limit(1, 15, 0.2) == pytest.approx(75.0)
    assert sf.io_limit(3, 15, 0.0) is None
    assert sf.io_limit(3, 0, 5.0) is None
    assert sf.cpu_limit(2, 0.5) == 4.0
    assert sf.cpu_limit(2, 0.0) is None
    assert sf.throughput(90, 10.0) == 9.0
    assert sf.throughput(0, None) == 0.0
    assert sf.throughput(5, 0.0) == 0.0
    assert sf.ratio(4.5, 9.0) == 0.5
    assert sf.ratio(4.5, None) is None


def test_outcomes_sort_every_request_into_one_kind() -> None:
    results = [
        _res(0, 200),
        _res(1, 200, ok=False),  # right status, wrong body
        _res(2, 503, ok=False),
        _res(3, 500, ok=False),
        _res(4, 500, ok=False),
        _res(5, None, error="reset"),
        _res(6, None, error="timeout"),
        _res(7, None, error="reset"),
    ]
    assert sf.outcomes(results) == {
        "valid": 1,
        "status_503": 1,
        "invalid": {"200 bad body": 1, "500": 2},
        "errors": {"reset": 2, "timeout": 1},
    }


def test_request_figures_throughput_ends_at_last_valid_completion() -> None:
    results = [
        _res(0, 200, t0=100.0, t1=101.0),
        _res(1, 200, t0=100.0, t1=104.0),
        _res(2, 200, t0=100.1, t1=102.0),
        # A failure after the last valid answer does not stretch the span.
        _res(3, None, error="reset", t0=100.0, t1=130.0),
    ]
    f = sf.request_figures(results, limit=1.5)
    assert f["requests"] == 4 and f["valid"] == 3
    assert f["span"] == pytest.approx(4.0)
    assert f["throughput"] == pytest.approx(0.75)
    assert f["ratio"] == pytest.approx(0.5)
    assert f["valid_done"] == [1.0, 2.0, 4.0]
    assert f["failed_done"] == [30.0]
    # Latency covers failures too: the reset cost its client 30 s.
    assert f["max"] == pytest.approx(30.0)
    assert f["p50"] == pytest.approx(2.95)
    assert f["latencies"] == [1.0, 1.9, 4.0, 30.0]
    json.dumps(f)  # result.json material


def test_request_figures_of_nothing_valid() -> None:
    f = sf.request_figures([_res(0, None, error="refused")], limit=10.0)
    assert (f["valid"], f["span"], f["throughput"], f["ratio"]) == (0, None, 0.0, 0.0)
    empty = sf.request_figures([], limit=None)
    assert (empty["requests"], empty["p50"], empty["ratio"]) == (0, None, None)


def test_parse_wrk_and_its_figures() -> None:
    w = sf.parse_wrk(WRK_OUTPUT)
    assert w["requests"] == 120000 and w["duration"] == 10.0
    assert w["requests_per_s"] == 12000.0 and w["non_2xx"] == 7
    assert w["errors"] == {"read": 3, "timeout": 2}
    assert w["p50"] == pytest.approx(0.004)
    assert w["p99"] == pytest.approx(0.000812)
    assert w["max"] == pytest.approx(0.0453)
    f = sf.wrk_figures(w)
    assert f["valid"] == 120000 - 7 - 3
    assert f["throughput"] == pytest.approx((120000 - 10) / 10)
    assert f["invalid"] == {"non-2xx": 7} and f["tool"] == "wrk"
    with pytest.raises(ValueError, match="Requests/sec"):
        sf.parse_wrk("wrk: connection refused")


def test_fmt_seconds() -> None:
    assert report.fmt_seconds(None) == "-"
    assert report.fmt_seconds(0.01234) == "12.3 ms"
    assert report.fmt_seconds(1.5) == "1.5 s"
    assert report.fmt_seconds(12.345) == "12.3 s"
    assert report.fmt_seconds(612.4) == "612 s"


def _run(config: str, scenario: str, valid: int, **extra: Any) -> dict[str, Any]:
    figures = sf.request_figures(
        [_res(i, 200, t1=101.0 + i) for i in range(valid)], limit=extra.pop("limit", None)
    )
    server = {"worker_timeouts": extra.pop("worker_timeouts", 0), "peak_db_connections": 15}
    return {"config": config, "scenario": scenario, "storm": figures, "server": server,
            "workers": 1, "db_connections_allowed": 15, **extra}  # fmt: skip


def _result(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "started": "20260101T000000Z",
        "machine": {"cpus": 2, "cpu_source": "test", "python": "3.x", "versions": {"g": "1"}},
        "settings": {"requests": 3},
        "cpu_seconds_per_request": 0.05,
        "runs": runs,
    }


def test_render_report_tables_and_notes() -> None:
    mixed = _run("gunitune", "mixed", 2, limit=1.0)
    mixed["trickle_path"] = "/fast"
    mixed["trickle"] = sf.request_figures([_res(0, 200)], None)
    result = _result([
        _run("stock", "io", 3, limit=2.0, worker_timeouts=4),
        mixed,
        {"config": "hand-tuned", "scenario": "io", "skipped": "global deadline reached"},
        _run("hand-tuned", "hello", 4),
        _run("gunitune", "hello", 2),
    ])  # fmt: skip
    text = report.render_report(result)
    assert text.startswith("# Storm benchmark 20260101T000000Z")
    header = next(
        line for line in text.splitlines() if line.startswith("| config | scenario | req")
    )
    stock = next(line for line in text.splitlines() if line.startswith("| stock | io |"))
    # Every row has as many cells as the header.
    assert stock.count("|") == header.count("|")
    cells = [c.strip() for c in stock.strip("|").split("|")]
    assert cells[:8] == ["stock", "io", "3", "3", "0", "0", "0", "4"]
    assert cells[-3:] == ["1", "2", "0.50"]  # 3 valid over 3 s; limit 2/s
    assert "| gunitune | mixed: /fast | 1 | 1 |" in text
    assert "skipped: global deadline reached" in text
    assert "CPU seconds per /cpu request, measured unloaded: 50 ms." in text
    assert "machine was busy" not in text
    result["runs"][0]["cpu_busy_before"] = 80.0
    assert "busy before these runs started (CPU use in the second before): stock io (80%)" in (
        report.render_report(result)
    )
    result["cpu_samples"] = {"n": 40, "min": 0.045, "max": 0.061}
    assert "50 ms (median of 40, 45 ms to 61 ms)." in report.render_report(result)
    # hello: gunitune 2 valid in 2 s vs hand-tuned 4 in 4 s: the same rate.
    assert "gunitune serves 1.00x hand-tuned's requests/s" in text


def test_plot_writes_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    mixed = _run("gunitune", "mixed", 2)
    mixed["trickle"] = sf.request_figures([_res(0, 200)], None)
    result = _result([_run("stock", "io", 3), _run("gunitune", "io", 5), mixed])
    (tmp_path / "result.json").write_text(json.dumps(result))
    assert report.main([str(tmp_path)]) == 0
    assert (tmp_path / "storm.png").read_bytes().startswith(b"\x89PNG")
    assert (tmp_path / "report.md").read_text().startswith("# Storm benchmark")


def test_report_command_wants_one_results_directory(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        report.main([])
    assert exited.value.code == 2
    assert "usage: python -m benchmarks.report" in capsys.readouterr().err


def test_configurations() -> None:
    s = configs.DEFAULTS
    stock, hand, tuned = configs.build_configs(s, cpus=2)
    assert stock.args[:6] == ("-k", "gevent", "--workers", "1", "--worker-connections", "1000")
    assert stock.config is None and stock.env["DEMO_GUNITUNE"] == "off"
    assert hand.args[:6] == ("-k", "gevent", "--workers", "3", "--worker-connections", "15")
    assert hand.env["DEMO_GUNITUNE"] == "off"
    assert tuned.config == "python:gunitune.conf" and tuned.env["DEMO_GUNITUNE"] == "on"
    assert (tuned.env["GUNITUNE_POOL_SIZE"], tuned.env["GUNITUNE_MAX_OVERFLOW"]) == ("5", "10")
    assert "GUNITUNE_WORKERS" not in tuned.env
    # The demo app is the same for all three.
    for c in (stock, hand, tuned):
        assert c.env["DEMO_POOL_TIMEOUT"] == "30.0" and c.env["DEMO_CPU_LOOP"] == "100000000"
        assert "--timeout" in c.args or c.env["GUNITUNE_TIMEOUT"] == "30"
    quick = configs.build_configs(configs.BenchSettings(workers=4), 2, ("gunitune", "hand-tuned"))
    assert [c.name for c in quick] == ["hand-tuned", "gunitune"]
    assert quick[0].args[3] == "4" and quick[1].env["GUNITUNE_WORKERS"] == "4"


def test_server_environ_drops_inherited_knobs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PG_DRIVER", raising=False)
    monkeypatch.setenv("GUNITUNE_WORKERS", "9")
    monkeypatch.setenv("DEMO_IO_SECONDS", "99")
    monkeypatch.setenv("GUNICORN_CMD_ARGS", "--workers 9")
    stock = configs.build_configs(configs.DEFAULTS, 2, ("stock",))[0]
    env = configs.server_environ(stock, "postgresql://u:p@127.0.0.1:5/db")
    assert "GUNITUNE_WORKERS" not in env and "GUNICORN_CMD_ARGS" not in env
    assert env["DEMO_IO_SECONDS"] == "5.0"
    # The demo's driver named: psycopg2 unless PG_DRIVER says psycopg.
    assert env["DATABASE_URL"] == "postgresql+psycopg2://u:p@127.0.0.1:5/db"
    monkeypatch.setenv("PG_DRIVER", "psycopg")
    env = configs.server_environ(stock, "postgres://u:p@127.0.0.1:5/db")
    assert env["DATABASE_URL"] == "postgresql+psycopg://u:p@127.0.0.1:5/db"
    env = configs.server_environ(stock, "postgresql+psycopg2://u:p@127.0.0.1:5/db")
    assert env["DATABASE_URL"] == "postgresql+psycopg2://u:p@127.0.0.1:5/db"  # named: kept


def test_scenarios() -> None:
    s = configs.BenchSettings(cpu_loop=1000)
    assert configs.make_scenario("cpu", s).expected_body == str(sum(range(1000))).encode()
    assert configs.cpu_body(0) == b"0" and configs.cpu_body(1) == b"0"
    mixed = configs.make_scenario("mixed", s)
    assert (mixed.path, mixed.trickle_path, mixed.trickle_body) == ("/io", "/fast", b"1\n")
    assert configs.make_scenario("hello", s).closed_loop
    with pytest.raises(ValueError, match="unknown scenario"):
        configs.make_scenario("disk", s)


def test_parse_args() -> None:
    default = storm.parse_args([])
    assert default.settings == configs.DEFAULTS
    assert default.scenarios == ("io", "cpu") and default.configs == configs.CONFIG_NAMES
    quick = storm.parse_args(["--quick", "--requests", "50", "--only", "gunitune,stock"])
    assert quick.settings.quick and quick.settings.io_seconds == configs.QUICK.io_seconds
    assert quick.settings.requests == 50  # an explicit flag beats the preset
    assert quick.configs == ("stock", "gunitune")
    many = storm.parse_args(["--scenario", "hello", "--scenario", "mixed,io", "--out", "x"])
    assert many.scenarios == ("io", "mixed", "hello") and many.out_dir == Path("x")
    with pytest.raises(SystemExit):
        storm.parse_args(["--only", "tuned"])


def test_libpq_url() -> None:
    assert libpq_url("postgres://u:p@h/db") == "postgresql://u:p@h/db"
    assert libpq_url("postgresql+psycopg2://u:p@h/db") == "postgresql://u:p@h/db"
    assert libpq_url(" postgresql://u@h/db ") == "postgresql://u@h/db"
    # A password pasted raw, with an @ and a /, comes out percent-encoded for libpq.
    assert libpq_url("postgres://u:p@s/s@h:5432/db") == "postgresql://u:p%40s%2Fs@h:5432/db"
