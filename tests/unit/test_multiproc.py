"""The multiprocess directory: made or cleaned at start, a dead worker's files folded."""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.multiprocess import MultiProcessCollector
from structlog.testing import capture_logs

from gunitune import multiproc


def write(path: Path, name: str, values: dict[tuple[str, str], float]) -> None:
    """A file as prometheus_client writes it: (sample name, route label) -> value."""
    mmap = MmapedDict(str(path / name))
    for (sample, route), value in values.items():
        metric = sample.removesuffix("_total").removesuffix("_sum").removesuffix("_bucket")
        labels = ["route"] if "_bucket" not in sample else ["route", "le"]
        label_values = [route] if "_bucket" not in sample else [route, "0.1"]
        key = mmap_key(metric, sample, labels, label_values, "doc")
        mmap.write_value(key, value, 0.0)
    mmap.close()


def scrape(path: Path) -> dict[str, float]:
    registry = CollectorRegistry()
    MultiProcessCollector(registry, str(path))
    out = {}
    for line in generate_latest(registry).decode().splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def test_a_user_directory_is_cleaned_of_a_previous_run(tmp_path: Path) -> None:
    (tmp_path / "counter_12.db").write_bytes(b"old")
    (tmp_path / "counter_archive.db.tmp").write_bytes(b"half")
    (tmp_path / "notes.txt").write_text("not ours")
    environ = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    assert multiproc.prepare(environ, metrics_on=False) == (str(tmp_path), False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_a_missing_user_directory_is_created(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b"
    assert multiproc.prepare({"PROMETHEUS_MULTIPROC_DIR": str(target)}, True)[0] == str(target)
    assert target.is_dir()


def test_a_private_directory_only_when_metrics_are_on(monkeypatch: pytest.MonkeyPatch) -> None:
    environ: dict[str, str] = {}
    assert multiproc.prepare(environ, metrics_on=False) == (None, False)
    assert environ == {}
    registered: list[Any] = []
    monkeypatch.setattr(multiproc.atexit, "register", lambda *a: registered.append(a))
    path, made = multiproc.prepare(environ, metrics_on=True)
    try:
        assert made and path is not None and os.path.isdir(path)
        assert environ == {"PROMETHEUS_MULTIPROC_DIR": path}
        [(remove, owner, where)] = registered
        remove(owner + 1, where)  # a forked worker's exit leaves it
        assert os.path.isdir(path)
        remove(owner, where)  # the master's removes it
        assert not os.path.exists(path)
    finally:
        multiproc.shutil.rmtree(str(path), ignore_errors=True)


def test_a_dead_worker_is_folded_into_the_archive_totals_unchanged(tmp_path: Path) -> None:
    write(tmp_path, "counter_11.db", {("req_total", "/a"): 3, ("req_total", "/b"): 1})
    write(tmp_path, "counter_22.db", {("req_total", "/a"): 5})
    write(tmp_path, "histogram_11.db", {("wait_sum", "/a"): 0.5, ("wait_bucket", "/a"): 2})
    write(tmp_path, "gauge_livesum_11.db", {("slots", "/a"): 4})
    (tmp_path / multiproc.LOCK_NAME).touch()  # a worker serves the endpoint here
    before = scrape(tmp_path)
    assert multiproc.fold_dead(11, str(tmp_path)) == ["counter_11.db", "histogram_11.db"]
    names = sorted(p.name for p in tmp_path.glob("*.db"))
    assert names == ["counter_22.db", "counter_archive.db", "histogram_archive.db"]
    after = scrape(tmp_path)
    assert after == {k: v for k, v in before.items() if not k.startswith("slots")}
    assert after['req_total{route="/a"}'] == 8.0
    # A second dead worker adds to the archive.
    write(tmp_path, "counter_33.db", {("req_total", "/a"): 2})
    multiproc.fold_dead(22, str(tmp_path))
    multiproc.fold_dead(33, str(tmp_path))
    assert scrape(tmp_path)['req_total{route="/a"}'] == 10.0
    assert sorted(p.name for p in tmp_path.glob("counter_*.db")) == ["counter_archive.db"]


def test_no_fold_where_gunitune_does_not_read(tmp_path: Path) -> None:
    # Without the lock file another reader may scan the directory unlocked:
    # only the live gauges go, as prometheus_client's mark_process_dead does.
    write(tmp_path, "counter_11.db", {("req_total", "/a"): 3})
    write(tmp_path, "gauge_liveall_11.db", {("slots", "/a"): 4})
    assert multiproc.fold_dead(11, str(tmp_path)) == []
    assert sorted(p.name for p in tmp_path.glob("*.db")) == ["counter_11.db"]


def test_child_exit_logs_a_failed_fold_and_returns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Worker:
        pid = 11

    (tmp_path / multiproc.LOCK_NAME).touch()
    # Corrupt: 1000 bytes used, and a first key longer than that.
    corrupt = struct.pack("i", 1000) + bytes(4) + struct.pack("i", 2000) + bytes(52)
    (tmp_path / "counter_11.db").write_bytes(corrupt)
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    with capture_logs() as logs:
        multiproc.child_exit(None, Worker())  # the master must not die of it
    assert [e["event"] for e in logs] == ["metrics_fold_failed"]
    assert (tmp_path / "counter_11.db").exists()  # kept: still counted if readable
