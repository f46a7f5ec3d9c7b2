"""The ``gunitune`` command: ``plan``, ``init`` and ``settings``.

Subcommands are registered in :data:`COMMANDS` (name -> :class:`Command`), so a
new one (e.g. ``bench``) is one function to add arguments, one to run, and one
dict entry. Errors are one line on stderr, ``gunitune: error: ...``, with exit
status 2 for bad input and 1 for refusals.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple, NoReturn

from gunitune.cli_fleet import add_fleet_arguments, fleet_section
from gunitune.core.cpus import read_somaxconn, usable_cpus
from gunitune.core.errors import ConfigError, GunituneError
from gunitune.core.planner import HEADROOM_RANGE, MINIMUMS, Plan, make_plan, require_int

__all__ = [
    "COMMANDS",
    "CONF_FILENAME",
    "CONF_TEMPLATE",
    "Command",
    "build_parser",
    "main",
    "markdown_table_to_text",
    "render_plan",
]

CONF_FILENAME = "gunitune.conf"
"""What ``gunitune init`` writes into the current directory."""

CONF_TEMPLATE = (
    "# Gunicorn settings planned by gunitune; run: gunicorn -c gunitune.conf app:app\n"
    "from gunitune.conf import *  # noqa: F401,F403\n"
    "# Override any Gunicorn setting below this line, e.g. timeout = 60\n"
)
"""Content of the generated config: Gunicorn runs a plain ``-c`` path as Python."""


class Command(NamedTuple):
    """One subcommand: its help line, how to add its arguments, and how to run it."""

    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


class _Parser(argparse.ArgumentParser):
    """ArgumentParser whose errors are one line, like gunitune's own errors."""

    def error(self, message: str) -> NoReturn:
        # argparse would print the whole usage block first; one line is
        # easier to spot in deployment logs and matches ConfigError output.
        self.exit(2, f"gunitune: error: {message}\n")


# --- plan ---------------------------------------------------------------------

# flag -> make_plan keyword; ranges come from planner.MINIMUMS.
_INT_FLAGS = {
    "--cpus": "cpus",
    "--pool-size": "pool_size",
    "--max-overflow": "max_overflow",
    "--workers": "workers",
    "--burst": "burst",
    "--max-held": "max_held",
    "--timeout": "timeout",
    "--somaxconn": "somaxconn",
    "--reserved-connections": "reserved_connections",
}


def _configure_plan(parser: argparse.ArgumentParser) -> None:
    helps = {
        "--cpus": "usable CPUs (default: read this machine's cgroup quota and affinity)",
        "--pool-size": "SQLAlchemy pool_size per worker (default 5)",
        "--max-overflow": "SQLAlchemy max_overflow per worker, -1 = unlimited (default 10)",
        "--workers": "force the worker count (default: CPUs + 1)",
        "--burst": "concurrent connections to absorb in the listen queue (default 3000)",
        "--max-held": "connections one worker holds, queued by lane (default 5000)",
        "--timeout": "Gunicorn worker timeout in seconds (default 30)",
        "--somaxconn": "net.core.somaxconn of the target (default: read here unless --cpus)",
        "--reserved-connections": "Postgres reserved slots (default 3)",
    }
    for flag, text in helps.items():
        # Parsed as text and checked by _plan_kwargs so every bad value gets
        # the same one-line message naming the flag, the value and the range.
        parser.add_argument(flag, metavar="N", help=text)
    parser.add_argument("--headroom", metavar="F", help="extra connection fraction (default 0.2)")
    add_fleet_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")


def _plan_options(args: argparse.Namespace) -> tuple[dict[str, int], float | None]:
    """Convert and range-check the options given; raise ConfigError naming the flag.

    Returns the integer keywords for :func:`make_plan` and the headroom, if given.
    """
    ints: dict[str, int] = {}
    for flag, key in _INT_FLAGS.items():
        raw: str | None = getattr(args, key)
        if raw is None:
            continue
        minimum = MINIMUMS[key]
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(
                f"{flag}={raw} is invalid: expected an integer >= {minimum}"
            ) from None
        ints[key] = require_int(flag, value, minimum)
    if args.headroom is None:
        return ints, None
    low, high = HEADROOM_RANGE
    try:
        headroom = float(args.headroom)
    except ValueError:
        headroom = float("nan")  # refused just below, with the same message
    if not low <= headroom <= high:  # also false for nan
        raise ConfigError(
            f"--headroom={args.headroom} is invalid: expected a number between {low:g} and {high:g}"
        )
    return ints, headroom


def _render_table(rows: Sequence[Sequence[str]], indent: str = "  ") -> str:
    """Align columns; the last column is left ragged (it holds free text)."""
    ncols = max(len(row) for row in rows)
    padded = [[*row, *[""] * (ncols - len(row))] for row in rows]
    widths = [max(len(row[i]) for row in padded) for i in range(ncols - 1)]
    lines = []
    for row in padded:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        lines.append((indent + "  ".join([*cells, row[-1]])).rstrip())
    return "\n".join(lines)


def render_plan(plan: Plan) -> str:
    """Return the human-readable plan: a settings table, then what to do."""
    r = plan.reasons
    if plan.somaxconn is None:
        somaxconn = "unknown"
    else:
        somaxconn = f"{plan.somaxconn} (clips!)" if plan.backlog_clipped else str(plan.somaxconn)
    rows = [
        ("where", "setting", "value", "why"),
        ("gunicorn", "workers", str(plan.workers), r["workers"]),
        ("gunicorn", "worker_class", "gevent", "one greenlet per request, cheap while on I/O"),
        ("gunicorn", "worker_connections", str(plan.worker_connections),
         r["worker_connections"]),
        ("gunicorn", "backlog", str(plan.backlog), r["backlog"]),
        ("gunicorn", "timeout", str(plan.timeout), "worker heartbeat, in seconds"),
        ("gunicorn", "graceful_timeout", str(plan.graceful_timeout), r["graceful_timeout"]),
        ("SQLAlchemy", "pool_size + max_overflow", f"{plan.pool_size} + {plan.max_overflow}",
         f"per worker; {r['total_db_connections']} = {plan.total_db_connections} in total"),
        ("Postgres", "max_connections", f">= {plan.recommended_max_connections}",
         r["recommended_max_connections"]),
        ("kernel", "net.core.somaxconn", somaxconn, r["somaxconn"]),
    ]  # fmt: skip
    cpu_word = "CPU" if plan.cpus == 1 else "CPUs"
    head = f"gunitune plan for {plan.cpus} usable {cpu_word} ({plan.cpu_source})"
    todo = "\n".join(f"  - {line}" for line in plan.advice())
    return f"{head}\n\n{_render_table(rows)}\n\nWhat to do:\n{todo}\n"


def _run_plan(args: argparse.Namespace) -> int:
    ints, headroom = _plan_options(args)
    if "cpus" in ints:
        source = "--cpus"  # planning for another machine: do not read this one
    else:
        found = usable_cpus()
        ints["cpus"], source = found.count, found.source
        here = read_somaxconn()
        if here is not None:
            ints.setdefault("somaxconn", here)
    if headroom is None:
        plan = make_plan(cpu_source=source, **ints)
    else:
        plan = make_plan(cpu_source=source, headroom=headroom, **ints)
    fleet = fleet_section(plan, args, ints.get("reserved_connections", 3))
    if args.json:
        data = plan.as_dict() | (fleet[1] if fleet else {})
        print(json.dumps(data, indent=2, sort_keys=True))
    else:
        print(render_plan(plan) + (f"\n{fleet[0]}" if fleet else ""), end="")
    return 0


# --- init ---------------------------------------------------------------------


def _configure_init(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--force", action="store_true", help=f"overwrite ./{CONF_FILENAME}")


def _run_init(args: argparse.Namespace) -> int:
    path = Path.cwd() / CONF_FILENAME
    try:
        # "x" refuses atomically, so two concurrent inits cannot both "win".
        with path.open("w" if args.force else "x", encoding="utf-8") as f:
            f.write(CONF_TEMPLATE)
    except FileExistsError:
        print(
            f"gunitune: error: {path} already exists; rerun with --force to overwrite it",
            file=sys.stderr,
        )
        return 1
    except OSError as exc:  # e.g. a directory of that name, or a read-only checkout
        print(f"gunitune: error: cannot write {path}: {exc.strerror}", file=sys.stderr)
        return 1
    print(f"wrote {path}; start with: gunicorn -c {CONF_FILENAME} app:app")
    return 0


# --- settings -----------------------------------------------------------------

_UNESCAPED_PIPE = re.compile(r"(?<!\\)\|")


def markdown_table_to_text(markdown: str) -> str:
    """Render Markdown tables in ``markdown`` as aligned plain text; keep other lines."""
    out: list[str] = []
    table: list[list[str]] = []

    def flush() -> None:
        if table:
            out.append(_render_table(table, indent=""))
            table.clear()

    for line in markdown.splitlines():
        stripped = line.strip()
        if not stripped.startswith("|"):
            flush()
            out.append(line)
            continue
        cells = [c.strip().replace("\\|", "|").replace("`", "")
                 for c in _UNESCAPED_PIPE.split(stripped.strip("|"))]  # fmt: skip
        if all(set(c) <= set("-: ") for c in cells):
            continue  # the |---|---| separator row
        table.append(cells)
    flush()
    return "\n".join(out) + "\n"


def _configure_settings(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--markdown", action="store_true", help="print the Markdown table")


def _run_settings(args: argparse.Namespace) -> int:
    # Imported here so `plan` and `init` work even if the settings module cannot load.
    from gunitune.core.settings import render_markdown

    markdown = render_markdown()
    print(markdown if args.markdown else markdown_table_to_text(markdown), end="")
    return 0


# --- dispatch -----------------------------------------------------------------

COMMANDS: dict[str, Command] = {
    "plan": Command("print the settings to use on this (or another) machine",
                    _configure_plan, _run_plan),
    "init": Command(f"write ./{CONF_FILENAME} for `gunicorn -c {CONF_FILENAME}`",
                    _configure_init, _run_init),
    "settings": Command("list every GUNITUNE_* setting", _configure_settings, _run_settings),
}  # fmt: skip
"""Subcommand name -> :class:`Command`; add an entry to add a subcommand."""


def build_parser() -> argparse.ArgumentParser:
    """Return the ``gunitune`` argument parser with every subcommand in :data:`COMMANDS`."""
    parser = _Parser(
        prog="gunitune",
        description="Tune Gunicorn + gevent + SQLAlchemy + PostgreSQL to survive overload.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, command in COMMANDS.items():
        command.configure(sub.add_parser(name, help=command.help, description=command.help))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``gunitune`` command line; return the exit status (0 ok, 1 refused, 2 bad input)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help and usage errors; return instead of exiting
        return exc.code if isinstance(exc.code, int) else 1
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return COMMANDS[args.command].run(args)
    except ConfigError as exc:
        print(f"gunitune: error: {exc}", file=sys.stderr)
        return 2
    except GunituneError as exc:
        print(f"gunitune: error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # `gunitune plan | head`: the reader left early. Point stdout at
        # /dev/null so the interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
