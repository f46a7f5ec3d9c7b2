"""The lanes scenarios' pure parts on fixed inputs: probe, connect, spread, memory and
wrk figures, their tables and plot, settings and command line; the storm-with-probes
load against a tiny in-process asyncio server. No Gunicorn, no database."""

from __future__ import annotations

import asyncio
import itertools
import json
from pathlib import Path
from typing import Any

import pytest

from benchmarks import configs, lanes, lanes_wrk, report, storm
from benchmarks import lane_figures as lf
from benchmarks import storm_figures as sf
from benchmarks.loadclient import RequestResult
from benchmarks.probes import Progress


def _res(
    i: int, status: int | None = 200, *, error: str | None = None, t0: float = 100.0,
    t1: float = 101.0, connect: float | None = 0.01, pid: int | None = None,
) -> RequestResult:  # fmt: skip
    return RequestResult(
        index=i, path="/io", status=status, body_ok=status == 200 and error is None,
        error=error, started=t0, finished=t1,
        connect_started=t0, connected=None if connect is None else t0 + connect,
        headers={} if pid is None else {"x-served-by": str(pid)},
    )  # fmt: skip


def test_max_spread_and_worker_completions() -> None:
    assert lf.max_spread({1: 10, 2: 10, 3: 10}) == 0.0
    assert lf.max_spread({1: 15, 2: 5}) == pytest.approx(0.5)
    assert lf.max_spread({1: 12, 2: 9, 3: 9}) == pytest.approx(0.2)  # mean 10
    assert lf.max_spread({}) is None and lf.max_spread({1: 0, 2: 0}) is None
    results = [_res(0, pid=7), _res(1, pid=7), _res(2, pid=8),
               _res(3, 500, pid=8), _res(4, error="reset")]  # fmt: skip
    # Only valid answers count; a known worker that answered nothing counts as 0.
    counts = lf.worker_completions(results, workers=[7, 8, 9])
    assert counts == {7: 2, 8: 1, 9: 0}
    assert lf.max_spread(counts) == pytest.approx(1.0)


def test_connect_figures() -> None:
    results = [_res(0, connect=0.001), _res(1, connect=0.002), _res(2, connect=3.0),
               _res(3, error="timeout", connect=None)]  # fmt: skip
    f = lf.connect_figures(results)
    assert (f["connected"], f["never_connected"]) == (3, 1)
    assert f["connect_p50"] == pytest.approx(0.002)
    assert f["connect_max"] == pytest.approx(3.0)  # a retransmitted SYN shows here
    assert f["connect_times"] == [0.001, 0.002, 3.0]
    assert lf.connect_figures([])["connect_p99"] is None


def test_failure_kinds_and_probe_figures() -> None:
    results = [
        _res(2, t0=10.5, t1=10.6), _res(0, t0=10.0, t1=12.0), _res(1, 503, t0=10.25, t1=10.75),
        _res(3, error="reset", t0=10.75, t1=11.0), _res(4, 500, t0=11.0, t1=11.5),
    ]  # fmt: skip
    assert lf.failure_kinds(results) == {"500": 1, "503": 1, "reset": 1}
    p = lf.probe_figures(results, t0=10.0)
    assert (p["requests"], p["valid"], p["failures"]) == (5, 2, 3)
    assert p["max"] == pytest.approx(2.0) and p["p50"] == pytest.approx(0.5)
    # In the order sent, seconds since the storm's start: what the plot draws.
    assert [pt[0] for pt in p["series"]] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert p["series"][0] == [0.0, 2.0, True] and p["series"][1][2] is False
    json.dumps(p)


def test_memory_figures() -> None:
    mib = 1024 * 1024
    samples = {
        11: {"idle_rss": 60 * mib, "peak_rss": 70 * mib, "idle_fds": 20, "peak_fds": 1044},
        12: {"idle_rss": 60 * mib, "peak_rss": 62 * mib, "idle_fds": 20, "peak_fds": 20},
    }
    m = lf.memory_figures(samples, requests=4000, workers=2)
    w11, w12 = m["workers"]["11"], m["workers"]["12"]
    assert (w11["held"], w11["held_source"]) == (1024, "fds")
    assert w11["rss_per_connection"] == pytest.approx(10 * 1024)  # 10 MiB over 1024 sockets
    # No fd growth seen: requests / workers stands in.
    assert (w12["held"], w12["held_source"]) == (0, "requests/workers")
    assert w12["rss_per_connection"] == pytest.approx(2 * mib / 2000)
    assert m["max_peak_rss"] == 70 * mib
    assert lf.memory_figures({}, 10, 0)["median_rss_per_connection"] is None


def test_wrk_comparison() -> None:
    c = lf.wrk_comparison({"hand-tuned": [100.0, 300.0, 200.0], "gunitune": [90.0, 180.0, 150.0]})
    assert c["median_rps"] == {"hand-tuned": 200.0, "gunitune": 150.0}
    assert c["ratio"] == pytest.approx(0.75)
    assert lf.wrk_comparison({"gunitune": [1.0]})["ratio"] is None


def _mixed_run(config: str, scenario: str = "mixed-io") -> dict[str, Any]:
    storm_res = [_res(i, t1=101.0 + i, pid=7 + i % 2) for i in range(4)] + [_res(4, 503)]
    probes = {"/health": lf.probe_figures([_res(0, t1=100.01)], 100.0),
              "/fast": lf.probe_figures([_res(0, error="reset", t1=102.0)], 100.0)}  # fmt: skip
    completions = lf.worker_completions(storm_res, [7, 8])
    return {
        "config": config, "scenario": scenario, "path": "/io",
        "storm": {**sf.request_figures(storm_res, 2.0), **lf.connect_figures(storm_res),
                  "failure_kinds": lf.failure_kinds(storm_res)},
        "probes": probes, "server": {"worker_timeouts": 2, "peak_accept_queue": 9},
        "per_worker": {"completions": {str(k): v for k, v in completions.items()},
                       "max_spread": lf.max_spread(completions)},
        "workers": 2, "db_connections_allowed": 30,
    }  # fmt: skip


def _burst_run(config: str) -> dict[str, Any]:
    run = _mixed_run(config, "burst")
    del run["probes"], run["per_worker"]
    run["storm"]["failure_kinds"] = {"reset": 3, "503": 1}
    mib = 1024 * 1024
    samples = {1: {"idle_rss": 60 * mib, "peak_rss": 80 * mib, "idle_fds": 0, "peak_fds": 1024}}
    run["memory"] = lf.memory_figures(samples, 4, 1)
    return run


def _wrk_run(config: str, rps: list[float], ratio: float) -> dict[str, Any]:
    rounds = [{"round": i, "requests": 10, "duration": 1.0, "requests_per_s": r, "non_2xx": 0,
               "errors": {}, "p50": 0.002, "p99": 0.01, "max": 0.02}
              for i, r in enumerate(rps)]  # fmt: skip
    return {"config": config, "scenario": "hello-wrk", "wrk_rounds": rounds, "workers": 3,
            "median_rps": sorted(rps)[1], "ratio_gunitune_to_hand_tuned": ratio,
            "storm": sf.wrk_figures(rounds[1]), "server": {"worker_timeouts": 0}}  # fmt: skip


def _result(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "started": "20260101T000000Z",
        "command": ["python", "-m", "benchmarks.storm", "--scenario", "mixed-io"],
        "machine": {"cpus": 2, "cpu_source": "test", "python": "3.x", "versions": {"g": "1"}},
        "settings": {"requests": 5},
        "scenario_settings": {"burst": {"requests": 5, "io_seconds": 0.4}},
        "mixed_cpu": {
            "cpu_loop": 4000000,
            "cpu_seconds_per_request": 0.06,
            "cpu_samples": {"n": 9, "min": 0.055, "max": 0.07},
        },
        "cpu_seconds_per_request": None,
        "runs": runs,
    }


def _line(text: str, start: str) -> list[str]:
    line = next(row for row in text.splitlines() if row.startswith(start))
    return [c.strip() for c in line.strip().strip("|").split("|")]


def test_render_lane_tables() -> None:
    result = _result([
        _mixed_run("hand-tuned"), _mixed_run("gunitune", "mixed-cpu"), _burst_run("gunitune"),
        _wrk_run("hand-tuned", [100.0, 120.0, 110.0], 0.9),
        _wrk_run("gunitune", [90.0, 99.0, 108.0], 0.9),
        {"config": "stock", "scenario": "hello-wrk", "skipped": lanes_wrk.WRK_MISSING},
    ])  # fmt: skip
    text = report.render_report(result)
    assert "Command: `python -m benchmarks.storm --scenario mixed-io`" in text
    for heading in ("### mixed-io", "### mixed-cpu", "### burst", "### hello-wrk"):
        assert heading in text
    storm_row = _line(text, "| hand-tuned | storm /io |")
    assert len(storm_row) == lanes_report_columns()
    assert storm_row[2:5] == ["5", "4", "503 1"]
    assert storm_row[-3:] == ["2", "2, 2", "0%"]  # worker timeouts, completions, spread
    assert _line(text, "| hand-tuned | probe /health |")[2:6] == ["1", "1", "0", "10 ms"]
    assert _line(text, "| gunitune | probe /fast |")[4] == "reset 1"
    burst = _line(text, "| gunitune | 5 |")
    assert burst[3:5] == ["3", "503 1"]  # resets apart from the other failures
    assert burst[-2:] == ["80 MiB", "20 KiB"]
    assert "Run with: requests=5, io_seconds=0.4" in text
    assert _line(text, "| hand-tuned | 3 | 100 |")[5] == "110"
    assert "ratio of the median requests/s: **0.90**" in text
    assert f"| stock | skipped: {lanes_wrk.WRK_MISSING} |" in text
    # wrk rounds are not a storm: no row in the client table.
    assert "| hand-tuned | hello-wrk |" not in text
    assert "mixed-cpu: /cpu loop 4000000, 60 ms of CPU unloaded (median of 9" in text


def lanes_report_columns() -> int:
    from benchmarks.lanes_report import MIXED_HEADER

    return MIXED_HEADER.count("|") - 1


def test_plot_lanes_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    result = _result([_mixed_run("hand-tuned"), _mixed_run("gunitune"), _burst_run("gunitune"),
                      _wrk_run("gunitune", [1.0, 2.0, 3.0], 1.0)])  # fmt: skip
    (tmp_path / "result.json").write_text(json.dumps(result))
    assert report.main([str(tmp_path)]) == 0
    assert (tmp_path / "storm.png").read_bytes().startswith(b"\x89PNG")


def test_lane_settings_and_scenarios() -> None:
    s = configs.BenchSettings(requests=7, cpu_loop=10)
    burst = configs.scenario_settings("burst", s, cpus=2)
    assert (burst.requests, burst.io_seconds) == (10_000, 0.4)
    assert configs.scenario_settings("mixed-cpu", s, 2, cpu_loop=99).cpu_loop == 99
    assert configs.scenario_settings("hello-wrk", s, cpus=2).workers == 3  # same for both
    assert configs.scenario_settings("mixed-io", s, cpus=2) is s
    cpu = configs.make_scenario("mixed-cpu", configs.scenario_settings("mixed-cpu", s, 2, 5))
    assert (cpu.path, cpu.expected_body) == ("/cpu", b"10")
    assert cpu.probes == (("/health", b"ok\n"), ("/fast", b"1\n"))
    assert configs.make_scenario("burst", s).probes == ()
    assert lanes.measure_for("mixed-io") is lanes.measure_mixed
    assert lanes.measure_for("io") is None


def test_parse_args_lanes() -> None:
    demo = storm.parse_args(["--demo"])
    assert demo.scenarios == ("mixed-io",) and demo.configs == ("hand-tuned", "gunitune")
    s = demo.settings
    assert (s.requests, s.io_seconds, s.pool_size, s.max_overflow) == (1500, 0.5, 4, 6)
    assert not demo.configs_given
    chosen = storm.parse_args(["--demo", "--only", "stock,gunitune", "--wrk-seconds", "4"])
    assert chosen.configs == ("stock", "gunitune") and chosen.configs_given
    assert chosen.settings.wrk_duration == 4.0
    lanes_opts = storm.parse_args(["--scenario", "burst,hello-wrk", "--burst-requests", "300",
                                   "--wrk-rounds", "5", "--probe-rate", "2"])  # fmt: skip
    assert lanes_opts.scenarios == ("burst", "hello-wrk")
    assert (lanes_opts.settings.burst_requests, lanes_opts.settings.wrk_rounds) == (300, 5)
    for bad in (["--quick", "--demo"], ["--probe-rate", "0"], ["--wrk-rounds", "0"]):
        with pytest.raises(SystemExit):
            storm.parse_args(bad)


def test_hello_wrk_is_skipped_not_replaced(monkeypatch: pytest.MonkeyPatch) -> None:
    servers = configs.build_configs(configs.QUICK, 2, configs.LANE_CONFIGS)
    monkeypatch.setattr(lanes_wrk.shutil, "which", lambda name: None)
    runs = lanes_wrk.run_hello_wrk(servers, configs.QUICK, "postgresql://x", Path("."), 900)
    assert [(r["config"], r["skipped"]) for r in runs] == [
        ("hand-tuned", lanes_wrk.WRK_MISSING), ("gunitune", lanes_wrk.WRK_MISSING)
    ]  # fmt: skip
    monkeypatch.setattr(lanes_wrk.shutil, "which", lambda name: "/usr/bin/wrk")
    late = lanes_wrk.run_hello_wrk(servers, configs.QUICK, "postgresql://x", Path("."), 5)
    assert {r["skipped"] for r in late} == {"global deadline reached"}


def test_storm_with_probes_fires_probes_until_the_storm_ends() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        if head.startswith(b"GET /io "):
            await asyncio.sleep(0.5)  # the storm's work; the probes answer at once
        body = b"ok\n" if head.startswith(b"GET /health ") else b"1\n"
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        writer.close()

    scen = configs.Scenario("mixed-io", "/io", b"1\n", probes=configs.PROBES)
    s = configs.BenchSettings(requests=30, probe_rate=10.0)

    async def main() -> tuple[list[RequestResult], dict[str, list[RequestResult]]]:
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        async with server:
            port = server.sockets[0].getsockname()[1]
            return await lanes.storm_with_probes(port, scen, s, 10.0, Progress("t", 30))

    storm_res, probes = asyncio.run(main())
    assert len(storm_res) == 30 and all(r.body_ok for r in storm_res)
    assert set(probes) == {"/health", "/fast"}
    storm_end = max(r.finished for r in storm_res)
    for path, results in probes.items():
        assert results and all(r.body_ok and r.path == path for r in results)
        # From the storm's start, every 1/rate s, none after the storm is over.
        assert results[0].started <= min(r.started for r in storm_res) + 0.05
        assert all(r.started <= storm_end for r in results)
        assert 4 <= len(results) <= 7  # ~0.5 s of storm at 10/s
        gaps = [b.started - a.started for a, b in itertools.pairwise(results)]
        assert all(g == pytest.approx(0.1, abs=0.05) for g in gaps)
