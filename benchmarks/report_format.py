"""Cell formatting shared by the report's tables (:mod:`benchmarks.report`,
:mod:`benchmarks.lanes_report`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

__all__ = ["fmt_rate", "fmt_seconds", "kinds", "table"]


def fmt_seconds(value: float | None) -> str:
    """``0.0123`` -> ``12.3 ms``, ``12.345`` -> ``12.3 s``; ``-`` for None."""
    if value is None:
        return "-"
    if value < 1:
        return f"{value * 1000:.3g} ms"
    return f"{value:.3g} s" if value < 100 else f"{value:.0f} s"


def fmt_rate(value: float | None) -> str:
    """A rate with 3 significant digits (whole numbers from 1000 on); ``-`` for None."""
    return "-" if value is None else f"{value:.3g}" if value < 1000 else f"{value:.0f}"


def kinds(counts: Mapping[str, int]) -> str:
    """``{"reset": 2, "503": 1}`` -> ``reset 2, 503 1``; ``0`` when empty."""
    return ", ".join(f"{k} {v}" for k, v in counts.items()) or "0"


def table(header: str, rows: Sequence[Sequence[str]]) -> list[str]:
    """Markdown lines: ``header``, its separator, one line per row of cells."""
    columns = header.count("|") - 1
    lines = [header, "|" + "---|" * columns]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]
