"""``python -m benchmarks.faults``: faults under load (issue 10), measured.

``gunicorn -c python:gunitune.conf demo_app:app`` (pool 4 + 6) on a throwaway
PostgreSQL that goes away while a storm of ``/io`` requests runs:

* ``restart``: the database stopped ``--fault-at`` s into the storm, started
  ``--outage`` s later (``--fault stop``: ``pg_ctl stop -m fast``, the default;
  ``--fault proxy``: the fault proxy refuses new connects and resets open ones).
* ``cold``: Gunicorn started while the database is down, then it comes back.
* ``blackhole``: the proxy drops everything for ``--drop-seconds``, neither
  closing nor answering; ``/health`` and ``/fast`` probed every 0.2 s.
* ``reload``: SIGHUP to the master during a storm with ``--max-requests`` recycling.

Writes ``result.json``, ``report.md`` (a pass/fail row per target of the issue)
and ``faults.png`` under ``--out`` (default ``results/faults-<UTC timestamp>/``).
Always starts its own cluster (the restart scenario stops it); every process it
starts is stopped by PID at the end, on Ctrl-C and on SIGTERM. Definitions and
targets: docs/benchmarks/faults.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import signal
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.fault_report import write_report
from benchmarks.fault_scenarios import QUICK, SCENARIOS, Ctx, FaultSettings, with_overrides
from benchmarks.postgres import start_cluster
from benchmarks.probes import package_versions
from benchmarks.server import raise_nofile_limit
from gunitune.core.cpus import usable_cpus

__all__ = ["Options", "main", "parse_args", "run_benchmark"]

_VERSIONS = ("gunicorn", "gevent", "sqlalchemy", "flask", "psycopg2-binary")


@dataclasses.dataclass(frozen=True)
class Options:
    """Parsed command line."""

    settings: FaultSettings
    scenarios: tuple[str, ...]
    out_dir: Path | None = None
    argv: tuple[str, ...] = ()


def parse_args(argv: Sequence[str] | None = None) -> Options:
    """Options from the command line; ``--quick`` sets smaller defaults for what is not given."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.faults", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    d = FaultSettings()
    p.add_argument("--scenario", action="append", help=f"{', '.join(SCENARIOS)} (default: all)")
    p.add_argument("--quick", action="store_true", help="small storm, short outage (CI)")
    p.add_argument("--fault", choices=("stop", "proxy"), help="restart/cold: how the DB goes away")
    p.add_argument(
        "--requests", type=int, help=f"storm size ({d.requests}; quick {QUICK.requests})"
    )
    p.add_argument("--io-seconds", type=float, help=f"/io's pg_sleep ({d.io_seconds:g})")
    p.add_argument("--workers", type=int, help="GUNITUNE_WORKERS (default: gunitune decides)")
    p.add_argument("--fault-at", type=float, help=f"seconds into the storm ({d.fault_at:g})")
    p.add_argument("--outage", type=float, help=f"restart: seconds down ({d.outage:g})")
    p.add_argument("--drop-seconds", type=float, help=f"blackhole: drop ({d.drop_seconds:g})")
    p.add_argument("--queue-timeout", type=float, help="GUNITUNE_QUEUE_TIMEOUT (blackhole: 5)")
    p.add_argument("--recovery-window", type=float, help="probing after the DB returns (10)")
    p.add_argument("--max-requests", type=int, help=f"reload: --max-requests ({d.max_requests})")
    p.add_argument("--out", type=Path, help="results directory (results/faults-<timestamp>/)")
    args = p.parse_args(argv)
    names = [n.strip() for v in args.scenario or [] for n in v.split(",") if n.strip()]
    unknown = sorted(set(names) - set(SCENARIOS))
    if unknown:
        p.error(f"unknown scenario {', '.join(unknown)}: expected {', '.join(SCENARIOS)}")
    settings = with_overrides(
        QUICK if args.quick else d, fault=args.fault, requests=args.requests,
        io_seconds=args.io_seconds, workers=args.workers, fault_at=args.fault_at,
        outage=args.outage, drop_seconds=args.drop_seconds, queue_timeout=args.queue_timeout,
        recovery_window=args.recovery_window, max_requests=args.max_requests,
    )  # fmt: skip
    if settings.requests < 1 or (settings.workers is not None and settings.workers < 1):
        p.error("--requests and --workers must be >= 1")
    if min(settings.fault_at, settings.outage, settings.drop_seconds) < 0:
        p.error("--fault-at, --outage and --drop-seconds must be >= 0")
    scenarios = tuple(n for n in SCENARIOS if n in names) if names else tuple(SCENARIOS)
    given = tuple(sys.argv[1:] if argv is None else argv)
    return Options(settings, scenarios, args.out, given)


def _save(result: dict[str, Any], out_dir: Path) -> None:
    # After every scenario: an interrupted run keeps what it measured.
    (out_dir / "result.json").write_text(json.dumps(result, indent=1) + "\n")


def run_benchmark(options: Options, quiet: bool = False) -> dict[str, Any]:
    """Run the scenarios on a private cluster; return (and write) the result document."""
    s = options.settings
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out_dir = options.out_dir or Path("results") / f"faults-{stamp}"
    (out_dir / "logs").mkdir(parents=True, exist_ok=True)
    raise_nofile_limit()
    cpus = usable_cpus()
    cluster = start_cluster()
    try:
        result: dict[str, Any] = {
            "started": stamp,
            "command": ["python", "-m", "benchmarks.faults", *options.argv],
            "machine": {"cpus": cpus.count, "versions": package_versions(_VERSIONS)},
            "settings": dataclasses.asdict(s),
            "database": {"server_version": cluster.query("SHOW server_version")[0][0]},
            "scenarios": {},
        }
        ctx = Ctx(cluster, s, out_dir / "logs")
        for name in options.scenarios:
            started = time.monotonic()
            if not quiet:
                print(f"[faults] {name} ...", file=sys.stderr, flush=True)
            try:
                run = SCENARIOS[name](ctx)
            except Exception as exc:
                # A harness failure is reported like a server failure: the other
                # scenarios still run and the report says what broke.
                run = {"error": f"harness: {exc!r}", "traceback": traceback.format_exc(),
                       "targets": []}  # fmt: skip
            run["seconds"] = round(time.monotonic() - started, 1)
            result["scenarios"][name] = run
            _save(result, out_dir)
        text = write_report(result, out_dir)
        if not quiet:
            print(text)
            print(f"results: {out_dir}", file=sys.stderr)
        result["out_dir"] = str(out_dir)
        return result
    finally:
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
