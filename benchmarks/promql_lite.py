"""Just enough PromQL to draw ``docs/grafana-dashboard.json`` from recorded scrapes.

The dashboard's own queries are evaluated, so a metric name or label the
dashboard gets wrong shows up as an empty panel in the picture too. Supported:
``name``, ``rate(name[Ns])``, ``sum(...)``, ``sum by (a, b) (...)`` and
``histogram_quantile(q, ...)``, with Prometheus' semantics for counter resets
and bucket interpolation; ``$__rate_interval`` is replaced by a given window.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence

__all__ = ["Labels", "Scrape", "Series", "evaluate", "legend"]

Labels = tuple[tuple[str, str], ...]
# One scrape: its time, and (sample name, labels, value) of every sample.
Scrape = tuple[float, Sequence[tuple[str, Mapping[str, str], float]]]
# Per label set, the value at each scrape time (missing: no sample then).
Series = dict[Labels, dict[float, float]]

_QUANTILE = re.compile(r"histogram_quantile\(\s*([\d.]+)\s*,\s*(.*)\)", re.S)
_SUM = re.compile(r"sum(?:\s+by\s*\(([^)]*)\))?\s*\((.*)\)", re.S)
_RATE = re.compile(r"rate\((\w+)\[(\d+(?:\.\d+)?)s\]\)")
_NAME = re.compile(r"\w+")


def evaluate(expr: str, scrapes: Sequence[Scrape], window: float) -> Series:
    """The series ``expr`` gives over ``scrapes``, with ``$__rate_interval`` = ``window`` s."""
    return _eval(expr.replace("$__rate_interval", f"{window:g}s").strip(), scrapes)


def legend(template: str, labels: Labels) -> str:
    """Grafana's ``{{label}}`` substitution."""
    values = dict(labels)
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: values.get(m[1], ""), template)


def _eval(expr: str, scrapes: Sequence[Scrape]) -> Series:
    if m := _QUANTILE.fullmatch(expr):
        return _quantile(float(m[1]), _eval(m[2].strip(), scrapes))
    if m := _SUM.fullmatch(expr):
        keep = [k.strip() for k in m[1].split(",")] if m[1] else []
        return _sum(keep, _eval(m[2].strip(), scrapes))
    if m := _RATE.fullmatch(expr):
        return _rate(_select(m[1], scrapes), float(m[2]))
    if _NAME.fullmatch(expr):
        return _select(expr, scrapes)
    raise ValueError(f"unsupported PromQL: {expr!r}")


def _select(name: str, scrapes: Sequence[Scrape]) -> Series:
    out: Series = {}
    for t, samples in scrapes:
        for sample, labels, value in samples:
            if sample == name:
                out.setdefault(tuple(sorted(labels.items())), {})[t] = value
    return out


def _rate(series: Series, window: float) -> Series:
    out: Series = {}
    for labels, points in series.items():
        times = sorted(points)
        rated = out.setdefault(labels, {})
        for i, t in enumerate(times):
            first = next(j for j in range(i + 1) if times[j] >= t - window)
            if first == i:
                continue  # one sample in the window: no rate
            increase = 0.0
            for a, b in zip(times[first:i], times[first + 1 : i + 1], strict=True):
                step = points[b] - points[a]
                increase += step if step >= 0 else points[b]  # a reset starts from 0
            rated[t] = increase / (t - times[first])
    return out


def _sum(keep: list[str], series: Series) -> Series:
    out: Series = {}
    for labels, points in series.items():
        key = tuple((k, v) for k, v in labels if k in keep)
        target = out.setdefault(key, {})
        for t, value in points.items():
            target[t] = target.get(t, 0.0) + value
    return out


def _quantile(q: float, buckets: Series) -> Series:
    groups: dict[Labels, dict[float, dict[float, float]]] = {}
    for labels, points in buckets.items():
        le = float(dict(labels)["le"])
        key = tuple((k, v) for k, v in labels if k != "le")
        for t, value in points.items():
            groups.setdefault(key, {}).setdefault(t, {})[le] = value
    out: Series = {}
    for key, by_time in groups.items():
        out[key] = {t: _bucket_quantile(q, counts) for t, counts in by_time.items()}
    return out


def _bucket_quantile(q: float, counts: Mapping[float, float]) -> float:
    """Prometheus' histogram_quantile over cumulative bucket counts keyed by ``le``."""
    bounds = sorted(counts)
    if not bounds or not math.isinf(bounds[-1]) or counts[bounds[-1]] <= 0:
        return math.nan  # no +Inf bucket or no observation: Prometheus says NaN too
    total = counts[bounds[-1]]
    rank = q * total
    lower, below = 0.0, 0.0
    for bound in bounds:
        if counts[bound] >= rank:
            if math.isinf(bound):
                return lower
            in_bucket = counts[bound] - below
            return lower + (bound - lower) * ((rank - below) / in_bucket if in_bucket else 0.0)
        lower, below = bound, counts[bound]
    return lower
