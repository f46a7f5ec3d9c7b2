"""``python -m benchmarks.storm``: the seed's curl storm, repeatable and side by side.

The seed was ``for i in $(seq 1 3000); do curl localhost:8001/io & done; time wait``.
This runs that storm (and a CPU-bound one, a mixed one, a trivial one, the lanes
and the adaptive-limit scenarios) against each configuration in
:mod:`benchmarks.configs`, one after another on an idle machine, with a throwaway
PostgreSQL unless ``DATABASE_URL`` is set, and writes ``result.json``,
``report.md`` and ``storm.png`` (and ``adaptive.png`` for knee/switch) under
``--out``. See benchmarks/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import os
import platform
import signal
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import psycopg2

from benchmarks import adaptive, lanes, report
from benchmarks import configs as cfg
from benchmarks.adaptive_figures import checks
from benchmarks.configs import BenchSettings
from benchmarks.lanes_wrk import run_hello_wrk
from benchmarks.postgres import start_cluster
from benchmarks.probes import cpu_samples, package_versions
from benchmarks.runner import libpq_url, run_one
from benchmarks.server import raise_nofile_limit
from gunitune.core.cpus import usable_cpus

__all__ = ["Options", "main", "parse_args", "run_benchmark"]

_VERSIONS = ("gunicorn", "gevent", "greenlet", "sqlalchemy", "flask", "psycopg2-binary")
# Time kept back from the global deadline for stopping servers and writing reports.
_WRAP_UP_SECONDS = 30.0


@dataclasses.dataclass(frozen=True)
class Options:
    """Parsed command line: settings plus what to run and where to write."""

    settings: BenchSettings
    configs: tuple[str, ...] = cfg.CONFIG_NAMES
    scenarios: tuple[str, ...] = ("io", "cpu")
    out_dir: Path | None = None
    argv: tuple[str, ...] = ()
    # False when --only was not given: the lanes scenarios then leave stock out.
    configs_given: bool = False


def _names(
    values: Sequence[str] | None, allowed: tuple[str, ...], default: tuple[str, ...]
) -> tuple[str, ...]:
    if not values:
        return default
    wanted = {v.strip() for item in values for v in item.split(",") if v.strip()}
    unknown = sorted(wanted - set(allowed))
    if unknown:
        raise ValueError(f"unknown {', '.join(unknown)}: expected {', '.join(allowed)}")
    return tuple(name for name in allowed if name in wanted)


def parse_args(argv: Sequence[str] | None = None) -> Options:
    """Options from the command line; ``--quick`` fills in whatever was not given."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.storm", description=__doc__)
    d = cfg.DEFAULTS
    p.add_argument("--requests", type=int, help=f"storm size (default {d.requests})")
    p.add_argument("--io-seconds", type=float, help=f"pg_sleep of /io (default {d.io_seconds})")
    p.add_argument("--cpu-loop", type=int, help=f"sum(range(N)) of /cpu (default {d.cpu_loop})")
    p.add_argument("--workers", type=int, help="workers for hand-tuned and gunitune (CPUs + 1)")
    p.add_argument("--pool-size", type=int, help=f"SQLAlchemy pool_size (default {d.pool_size})")
    p.add_argument("--max-overflow", type=int, help=f"max_overflow (default {d.max_overflow})")
    p.add_argument("--pool-timeout", type=float, help=f"pool_timeout (default {d.pool_timeout})")
    p.add_argument("--timeout", type=int, help=f"Gunicorn worker timeout (default {d.timeout})")
    p.add_argument("--deadline", type=float, help=f"seconds per run (default {d.deadline:g})")
    p.add_argument(
        "--global-deadline", type=float, help=f"seconds for everything ({d.global_deadline:g})"
    )
    p.add_argument("--hello-requests", type=int, help=f"hello: requests ({d.hello_requests})")
    p.add_argument("--trickle-rate", type=float, help="mixed: /fast requests per second")
    p.add_argument("--probe-rate", type=float, help=f"mixed-io/-cpu: per probe ({d.probe_rate}/s)")
    p.add_argument(
        "--mixed-cpu-seconds", type=float, help=f"mixed-cpu: CPU s of /cpu ({d.mixed_cpu_seconds})"
    )
    p.add_argument("--mixed-cpu-loop", type=int, help="mixed-cpu: /cpu loop (else calibrated)")
    p.add_argument("--burst-requests", type=int, help=f"burst: size ({d.burst_requests})")
    p.add_argument("--burst-io-seconds", type=float, help=f"burst: ({d.burst_io_seconds})")
    p.add_argument("--wrk-rounds", type=int, help=f"hello-wrk: rounds ({d.wrk_rounds})")
    p.add_argument(
        "--wrk-seconds", type=float, dest="wrk_duration", help=f"wrk run ({d.wrk_duration:g})"
    )
    p.add_argument("--dbcpu-rows", type=int, help=f"knee: /dbcpu rows ({d.dbcpu_rows})")
    p.add_argument("--switch-seconds", type=float, help=f"switch: phase ({d.switch_seconds:g})")
    p.add_argument("--switch-clients", type=int, help=f"switch: clients ({d.switch_clients})")
    p.add_argument(
        "--switch-io-seconds", type=float, help=f"switch: kind=io ({d.switch_io_seconds:g})"
    )
    p.add_argument("--only", action="append", metavar="CONFIG", help=", ".join(cfg.CONFIG_NAMES))
    p.add_argument("--scenario", action="append", help=", ".join(cfg.SCENARIO_NAMES) + " (io,cpu)")
    p.add_argument("--out", type=Path, help="results directory (results/<UTC timestamp>/)")
    p.add_argument("--quick", action="store_true", help="small and fast, for CI")
    p.add_argument("--demo", action="store_true", help="mixed-io, hand-tuned vs gunitune, ~2 min")
    args = p.parse_args(argv)
    if args.quick and args.demo:
        p.error("--quick and --demo are two presets: choose one")
    try:
        configs = _names(
            args.only, cfg.CONFIG_NAMES, cfg.LANE_CONFIGS if args.demo else cfg.CONFIG_NAMES
        )
        default = ("mixed-io",) if args.demo else ("io", "cpu")
        scenarios = _names(args.scenario, cfg.SCENARIO_NAMES, default)
    except ValueError as exc:
        p.error(str(exc))
    # knee and switch alone have their own sizes (README), unless a preset is asked for.
    adaptive_only = set(scenarios) <= set(cfg.ADAPTIVE_SCENARIOS)
    base = (
        cfg.QUICK if args.quick else cfg.DEMO if args.demo
        else cfg.ADAPTIVE if adaptive_only else cfg.DEFAULTS
    )  # fmt: skip
    given = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(BenchSettings)
        if getattr(args, f.name, None) is not None
    }
    settings = dataclasses.replace(base, **given)
    counts = (settings.requests, settings.burst_requests, settings.wrk_rounds,
              settings.switch_clients)  # fmt: skip
    if min(counts) < 1 or (settings.workers is not None and settings.workers < 1):
        p.error(
            "--requests, --burst-requests, --wrk-rounds, --switch-clients and --workers"
            " must be >= 1"
        )
    if min(settings.probe_rate, settings.mixed_cpu_seconds, settings.switch_seconds) <= 0:
        p.error("--probe-rate, --mixed-cpu-seconds and --switch-seconds must be > 0")
    if settings.dbcpu_rows < 0 or settings.switch_io_seconds < 0:
        p.error("--dbcpu-rows and --switch-io-seconds must be >= 0")
    given_argv = tuple(sys.argv[1:] if argv is None else argv)
    return Options(settings, configs, scenarios, args.out, given_argv, bool(args.only))


def _machine(cpus: Any) -> dict[str, Any]:
    return {
        "cpus": cpus.count,
        "cpu_source": cpus.source,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": package_versions(_VERSIONS),
    }


def _server_version(url: str) -> str:
    with contextlib.closing(psycopg2.connect(url, connect_timeout=10)) as conn:
        return str(conn.get_parameter_status("server_version"))


def _cpu_figures(cpu_loop: int) -> tuple[float, dict[str, Any]]:
    samples = cpu_samples(cpu_loop)
    # The spread is part of the figure: the CPU limit is only as exact as this.
    return statistics.median(samples), {"n": len(samples), "min": min(samples),
                                        "max": max(samples)}  # fmt: skip


def _save(result: dict[str, Any], out_dir: Path) -> None:
    # Written after every run: an interrupted benchmark keeps what it measured.
    (out_dir / "result.json").write_text(json.dumps(result, indent=1) + "\n")


def run_benchmark(
    options: Options, environ: Mapping[str, str] | None = None, quiet: bool = False
) -> dict[str, Any]:
    """Run every configuration x scenario; return (and write) the result document.

    ``environ["DATABASE_URL"]`` selects an existing database; without it a private
    cluster is started and stopped here.
    """
    environ = os.environ if environ is None else environ
    started = time.monotonic()
    s = options.settings
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out_dir = options.out_dir or Path("results") / stamp
    (out_dir / "logs").mkdir(parents=True, exist_ok=True)
    raise_nofile_limit()
    cpus = usable_cpus()
    servers = cfg.build_configs(s, cpus.count, options.configs)
    external = environ.get("DATABASE_URL", "").strip()
    # Room for every configuration's pools twice over, whatever --workers says.
    most_connections = max(s.workers or 0, cpus.count + 1) * s.connections_per_worker
    cluster = None if external else start_cluster(max_connections=max(200, 2 * most_connections))
    try:
        url = cluster.url if cluster is not None else libpq_url(external)
        result: dict[str, Any] = {
            "started": stamp,
            "command": ["python", "-m", "benchmarks.storm", *options.argv],
            "machine": _machine(cpus),
            "settings": dataclasses.asdict(s),
            "configs": {
                c.name: {"description": c.description, "env": dict(c.env)} for c in servers
            },
            "scenarios": list(options.scenarios),
            "database": {"own_cluster": cluster is not None},
            "cpu_seconds_per_request": None,
            "runs": [],
        }
        result["database"]["server_version"] = _server_version(url)
        if "cpu" in options.scenarios:
            result["cpu_seconds_per_request"], result["cpu_samples"] = _cpu_figures(s.cpu_loop)
        if "mixed-cpu" in options.scenarios:
            loop = s.mixed_cpu_loop or lanes.calibrate_cpu_loop(s.mixed_cpu_seconds)
            cpu, spread = _cpu_figures(loop)
            result["mixed_cpu"] = {"cpu_loop": loop, "cpu_seconds_per_request": cpu,
                                   "cpu_samples": spread}  # fmt: skip
        result.update(adaptive.prepare(options.scenarios, s, url, result.get("mixed_cpu")))
        for scen_name in options.scenarios:
            calibrated = result.get("switch_cpu" if scen_name == "switch" else "mixed_cpu", {})
            ss = cfg.scenario_settings(scen_name, s, cpus.count, calibrated.get("cpu_loop"))
            base, own = dataclasses.asdict(s), dataclasses.asdict(ss)
            if own != base:  # the report names what this scenario ran with instead
                result.setdefault("scenario_settings", {})[scen_name] = {
                    k: v for k, v in own.items() if base[k] != v
                }
            names = options.configs
            lane_like = (*cfg.LANE_SCENARIOS, *cfg.ADAPTIVE_SCENARIOS)
            if scen_name in lane_like and not options.configs_given:
                names = tuple(n for n in names if n in cfg.LANE_CONFIGS)
            scen_servers = cfg.build_configs(ss, cpus.count, names)
            if scen_name == "hello-wrk":
                remaining = s.global_deadline - (time.monotonic() - started) - _WRAP_UP_SECONDS
                logs = out_dir / "logs"
                result["runs"].extend(run_hello_wrk(scen_servers, ss, url, logs, remaining))
                _save(result, out_dir)
                continue
            scenario = cfg.make_scenario(scen_name, ss)
            per_request = adaptive.seconds_per_request(scen_name, result)
            for server in scen_servers:
                remaining = s.global_deadline - (time.monotonic() - started) - _WRAP_UP_SECONDS
                run = run_one(
                    server, scenario, ss, url,
                    deadline=min(s.deadline, remaining),
                    log_path=out_dir / "logs" / f"{server.name}-{scen_name}.log",
                    cpu_seconds=per_request,
                    cores=cpus.count,
                    own_cluster=cluster is not None,
                    measure=lanes.measure_for(scen_name) or adaptive.measure_for(scen_name),
                )  # fmt: skip
                result["runs"].append(run)
                if scen_name in cfg.ADAPTIVE_SCENARIOS:
                    result["adaptive_checks"] = checks(result)
                _save(result, out_dir)
        text = report.write_report(result, out_dir)
        if not quiet:
            print(text)
            print(f"results: {out_dir}", file=sys.stderr)
        result["out_dir"] = str(out_dir)
        return result
    finally:
        if cluster is not None:
            cluster.stop()


def _terminate(signum: int, frame: Any) -> None:
    # SIGTERM (CI timeouts) unwinds like Ctrl-C so servers and the cluster are stopped.
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    options = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    try:
        run_benchmark(options)
    except KeyboardInterrupt:
        print("\ninterrupted: servers and database stopped", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
