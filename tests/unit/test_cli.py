"""The gunitune command line: plan (table and JSON), init, settings, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gunitune import cli
from gunitune.core.cpus import CpuCount


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_plan_table(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "plan", "--cpus", "32", "--somaxconn", "128")
    assert code == 0, err
    assert out.startswith("gunitune plan for 32 usable CPUs (--cpus)")
    rows = {line.split()[1]: line.split() for line in out.splitlines() if line.startswith("  ")}
    assert rows["workers"][2] == "33"
    assert rows["worker_class"][2] == "gevent"
    assert rows["worker_connections"][2] == "5000"  # held per worker (GUNITUNE_MAX_HELD)
    assert rows["backlog"][2] == "3000"
    assert rows["timeout"][2] == "30"
    assert rows["max_connections"][2:4] == [">=", "600"]
    assert rows["net.core.somaxconn"][2] == "128"
    assert "495 in total" in out
    assert "sysctl -w net.core.somaxconn=4096" in out
    # Aligned: the value column starts at the same offset on every table row.
    table = [line for line in out.splitlines() if line.startswith("  gunicorn")]
    assert len({line.index(line.split()[2], 14) for line in table}) == 1


def test_plan_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "plan", "--cpus", "32", "--json")
    assert code == 0
    data = json.loads(out)
    assert (data["workers"], data["connections_per_worker"], data["total_db_connections"]) == (
        33,
        15,
        495,
    )
    assert data["worker_connections"] == 5000
    assert data["recommended_max_connections"] == 600
    assert data["somaxconn"] is None  # --cpus plans for another machine
    assert data["cpu_source"] == "--cpus"
    assert data["reasons"]["workers"]


def test_plan_options(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        capsys,
        "plan",
        "--cpus=4",
        "--pool-size=10",
        "--max-overflow=-1",
        "--workers=2",
        "--burst=5000",
        "--timeout=60",
        "--reserved-connections=0",
        "--headroom=0",
        "--json",
    )
    assert code == 0
    data = json.loads(out)
    assert data["workers"] == 2
    assert data["connections_per_worker"] == 20  # 10 + 10 for unlimited overflow
    assert data["total_db_connections"] == 40
    assert data["backlog"] == 5000
    assert data["timeout"] == data["graceful_timeout"] == 60
    assert data["recommended_max_connections"] == 50


def test_plan_reads_this_machine(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        cli, "usable_cpus", lambda: CpuCount(3, "cgroup v2 cpu.max (300000/100000)")
    )
    monkeypatch.setattr(cli, "read_somaxconn", lambda: 1024)
    code, out, _ = run(capsys, "plan", "--json")
    assert code == 0
    data = json.loads(out)
    assert (data["cpus"], data["workers"]) == (3, 4)
    assert data["cpu_source"] == "cgroup v2 cpu.max (300000/100000)"
    assert data["somaxconn"] == 1024
    assert data["backlog_clipped"] is True


def test_plan_somaxconn_flag_overrides_this_machine(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli, "usable_cpus", lambda: CpuCount(1, "sched_getaffinity"))
    monkeypatch.setattr(cli, "read_somaxconn", lambda: 128)
    code, out, _ = run(capsys, "plan", "--somaxconn", "65535", "--json")
    assert code == 0
    assert json.loads(out)["backlog_clipped"] is False


def test_plan_on_the_real_machine(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "plan")
    assert code == 0
    assert "worker_connections" in out


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--cpus=0"], "--cpus=0 is invalid: expected an integer >= 1"),
        (["--cpus=two"], "--cpus=two is invalid: expected an integer >= 1"),
        (["--pool-size=-3"], "--pool-size=-3 is invalid: expected an integer >= 0"),
        (["--pool-size", "-3"], "--pool-size=-3 is invalid: expected an integer >= 0"),
        (["--pool-size=5.5"], "--pool-size=5.5 is invalid: expected an integer >= 0"),
        (["--max-overflow=-2"], "--max-overflow=-2 is invalid: expected an integer >= -1"),
        (["--workers=0"], "--workers=0 is invalid: expected an integer >= 1"),
        (["--workers=many"], "--workers=many is invalid: expected an integer >= 1"),
        (["--burst=0"], "--burst=0 is invalid: expected an integer >= 1"),
        (["--timeout=-30"], "--timeout=-30 is invalid: expected an integer >= 1"),
        (["--somaxconn=-1"], "--somaxconn=-1 is invalid: expected an integer >= 0"),
        (
            ["--reserved-connections=x"],
            "--reserved-connections=x is invalid: expected an integer >= 0",
        ),
        (["--headroom=-1"], "--headroom=-1 is invalid: expected a number between 0 and 10"),
        (["--headroom=lots"], "--headroom=lots is invalid: expected a number between 0 and 10"),
        (["--headroom=nan"], "--headroom=nan is invalid: expected a number between 0 and 10"),
        (
            ["--pool-size=0", "--max-overflow=0"],
            "pool_size + max_overflow=0 is invalid: expected at least 1",
        ),
    ],
)
def test_plan_bad_values(
    capsys: pytest.CaptureFixture[str], argv: list[str], expected: str
) -> None:
    code, out, err = run(capsys, "plan", "--cpus=2", *argv)
    assert code == 2
    assert out == ""
    assert err.startswith(f"gunitune: error: {expected}")
    assert err.count("\n") == 1  # one line


def test_unknown_option_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "plan", "--cpu", "2", "--frobnicate")
    assert code == 2
    assert err == "gunitune: error: unrecognized arguments: --frobnicate\n"


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys)
    assert code == 2
    assert "plan" in err and "init" in err and "settings" in err


def test_help_returns_zero(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "plan", "--help")
    assert code == 0
    assert "--pool-size" in out


def test_init_writes_a_compilable_config(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, _ = run(capsys, "init")
    assert code == 0
    path = tmp_path / "gunitune.conf"
    text = path.read_text()
    compile(text, str(path), "exec")
    assert len(text.splitlines()) == 3
    assert "from gunitune.conf import *  # noqa: F401,F403" in text
    assert "gunicorn -c gunitune.conf" in out


def test_init_refuses_to_overwrite(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "gunitune.conf"
    path.write_text("workers = 1\n")
    code, _, err = run(capsys, "init")
    assert code == 1
    assert "already exists" in err and "--force" in err
    assert path.read_text() == "workers = 1\n"

    code, _, _ = run(capsys, "init", "--force")
    assert code == 0
    assert path.read_text() == cli.CONF_TEMPLATE


def test_init_reports_unwritable_path(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "gunitune.conf").mkdir()
    code, _, err = run(capsys, "init", "--force")
    assert code == 1
    assert err.startswith("gunitune: error: cannot write")


def test_markdown_table_to_text() -> None:
    md = "Intro\n| A | Bee |\n| --- | --- |\n| `x` | a \\| b |\n| long cell | y |\n"
    assert cli.markdown_table_to_text(md) == (
        "Intro\nA          Bee\nx          a | b\nlong cell  y\n"
    )


def test_settings(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("gunitune.core.settings")
    code, out, _ = run(capsys, "settings")
    assert code == 0
    assert "GUNITUNE_WORKERS" in out and "|" not in out.splitlines()[0]
    code, out, _ = run(capsys, "settings", "--markdown")
    assert code == 0
    assert out.splitlines()[0].startswith("| Key |")


def test_commands_registry_allows_new_subcommands(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    commands = dict(cli.COMMANDS)
    commands["bench"] = cli.Command("run a benchmark", lambda parser: None, lambda args: 7)
    monkeypatch.setattr(cli, "COMMANDS", commands)
    assert run(capsys, "bench")[0] == 7


# --- plan --hosts: the fleet ----------------------------------------------------


def test_plan_hosts_on_a_fixed_budget(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["plan", "--cpus", "32", "--somaxconn", "4096", "--hosts", "3",
            "--max-connections", "1000", "--pgbouncer"]  # fmt: skip
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "per worker: 8 connections (pool_size 3 + max_overflow 5)" in out
    assert "per host:   264 connections (33 workers)" in out
    assert "GUNITUNE_HOSTS=3 GUNITUNE_POOL=auto" in out
    assert "max_db_connections = 858" in out and "pool_mode = transaction" in out
    assert "prepare_threshold=None" in out


def test_plan_hosts_json(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["plan", "--cpus", "32", "--hosts", "10", "--max-connections", "1000", "--json"]
    assert cli.main(argv) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["fleet"]["per_worker"] == 2 and data["fleet"]["fleet_total"] == 660
    assert data["workers"] == 33 and "pgbouncer" not in data


def test_plan_hosts_without_a_budget_recommends_one(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["plan", "--cpus", "32", "--hosts", "3"]) == 0
    out = capsys.readouterr().out
    assert "Fleet: 3 hosts x 33 workers x 15 connections = 1485" in out
    assert "max_connections >= 1800" in out  # 1485 x 1.2 + 3 = 1785


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--hosts", "0"], "--hosts=0 is invalid: expected an integer >= 1"),
        (["--hosts", "x"], "--hosts=x is invalid: expected an integer >= 1"),
        (["--hosts", "262144"], "--hosts=262144 is invalid: expected an integer from 1"),
        (["--max-connections", "0"], "--max-connections=0 is invalid"),
        (["--other-clients", "-1"], "--other-clients=-1 is invalid"),
        (["--hosts", "10", "--max-connections", "100"], "too small for GUNITUNE_POOL=auto"),
    ],
)
def test_plan_hosts_bad_input_is_one_line(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["plan", "--cpus", "32", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
