"""usable_cpus() and read_somaxconn() against fake /sys and /proc trees."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gunitune.core.cpus import CpuCount, read_somaxconn, usable_cpus


def write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")


def cpus(root: Path, affinity: int | None = 64, cpu_count: int | None = 64) -> CpuCount:
    return usable_cpus(root, affinity=lambda: affinity, cpu_count=lambda: cpu_count)


def test_v2_quota(tmp_path: Path) -> None:
    write(tmp_path, "proc/self/cgroup", "0::/")
    write(tmp_path, "sys/fs/cgroup/cpu.max", "200000 100000")
    assert cpus(tmp_path) == CpuCount(2, "cgroup v2 cpu.max (200000/100000)")


def test_v2_fractional_quota_rounds_up(tmp_path: Path) -> None:
    write(tmp_path, "sys/fs/cgroup/cpu.max", "150000 100000")
    assert cpus(tmp_path).count == 2


def test_v2_tiny_quota_is_at_least_one(tmp_path: Path) -> None:
    write(tmp_path, "sys/fs/cgroup/cpu.max", "1000 100000")
    assert cpus(tmp_path).count == 1


def test_v2_max_means_no_quota(tmp_path: Path) -> None:
    write(tmp_path, "proc/self/cgroup", "0::/")
    write(tmp_path, "sys/fs/cgroup/cpu.max", "max 100000")
    assert cpus(tmp_path, affinity=6) == CpuCount(6, "sched_getaffinity")


def test_v2_nested_cgroup_path_from_proc(tmp_path: Path) -> None:
    write(tmp_path, "proc/self/cgroup", "0::/kubepods/pod1/ctr")
    write(tmp_path, "sys/fs/cgroup/cpu.max", "max 100000")
    write(tmp_path, "sys/fs/cgroup/kubepods/cpu.max", "800000 100000")
    write(tmp_path, "sys/fs/cgroup/kubepods/pod1/ctr/cpu.max", "300000 100000")
    found = cpus(tmp_path)
    assert found.count == 3
    assert found.source == "cgroup v2 cpu.max (300000/100000) in /kubepods/pod1/ctr"


def test_v2_ancestor_quota_caps_the_child(tmp_path: Path) -> None:
    write(tmp_path, "proc/self/cgroup", "0::/system.slice/app.service")
    write(tmp_path, "sys/fs/cgroup/system.slice/cpu.max", "400000 100000")
    write(tmp_path, "sys/fs/cgroup/system.slice/app.service/cpu.max", "max 100000")
    assert cpus(tmp_path) == CpuCount(4, "cgroup v2 cpu.max (400000/100000) in /system.slice")


def test_v2_path_missing_under_mount_falls_back_to_mount_root(tmp_path: Path) -> None:
    # Container without a cgroup namespace: /proc shows the host path, but the
    # container's own cgroup is what is mounted at /sys/fs/cgroup.
    write(tmp_path, "proc/self/cgroup", "0::/docker/abc123")
    write(tmp_path, "sys/fs/cgroup/cpu.max", "100000 100000")
    assert cpus(tmp_path).count == 1


def test_v1_quota(tmp_path: Path) -> None:
    write(tmp_path, "proc/self/cgroup", "4:cpu,cpuacct:/\n3:memory:/")
    write(tmp_path, "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us", "400000")
    write(tmp_path, "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us", "100000")
    assert cpus(tmp_path) == CpuCount(4, "cgroup v1 cpu.cfs_quota_us (400000/100000)")


def test_v1_cpu_dir_and_nested_path(tmp_path: Path) -> None:
    write(tmp_path, "proc/self/cgroup", "2:cpu:/docker/abc")
    write(tmp_path, "sys/fs/cgroup/cpu/docker/abc/cpu.cfs_quota_us", "250000")
    write(tmp_path, "sys/fs/cgroup/cpu/docker/abc/cpu.cfs_period_us", "100000")
    found = cpus(tmp_path)
    assert found.count == 3
    assert found.source.startswith("cgroup v1 cpu.cfs_quota_us (250000/100000)")


def test_v1_minus_one_is_unlimited(tmp_path: Path) -> None:
    write(tmp_path, "sys/fs/cgroup/cpu/cpu.cfs_quota_us", "-1")
    write(tmp_path, "sys/fs/cgroup/cpu/cpu.cfs_period_us", "100000")
    assert cpus(tmp_path, affinity=12) == CpuCount(12, "sched_getaffinity")


def test_affinity_smaller_than_quota_wins(tmp_path: Path) -> None:
    write(tmp_path, "sys/fs/cgroup/cpu.max", "800000 100000")
    assert cpus(tmp_path, affinity=2) == CpuCount(2, "sched_getaffinity")


def test_quota_smaller_than_affinity_wins(tmp_path: Path) -> None:
    write(tmp_path, "sys/fs/cgroup/cpu.max", "200000 100000")
    assert cpus(tmp_path, affinity=8).source.startswith("cgroup v2")


def test_tie_reports_the_quota(tmp_path: Path) -> None:
    write(tmp_path, "sys/fs/cgroup/cpu.max", "200000 100000")
    assert cpus(tmp_path, affinity=2).source.startswith("cgroup v2")


def test_missing_files_fall_back_to_affinity(tmp_path: Path) -> None:
    assert cpus(tmp_path, affinity=5) == CpuCount(5, "sched_getaffinity")


def test_no_affinity_falls_back_to_psutil(tmp_path: Path) -> None:
    assert cpus(tmp_path, affinity=None, cpu_count=7) == CpuCount(7, "psutil")


def test_no_psutil_falls_back_to_os_cpu_count(tmp_path: Path) -> None:
    found = cpus(tmp_path, affinity=None, cpu_count=None)
    if os.cpu_count():
        assert found == CpuCount(os.cpu_count() or 0, "os.cpu_count")
    else:
        assert found.count == 1


def test_quota_still_caps_the_psutil_fallback(tmp_path: Path) -> None:
    write(tmp_path, "sys/fs/cgroup/cpu.max", "200000 100000")
    assert cpus(tmp_path, affinity=None, cpu_count=16).count == 2


@pytest.mark.parametrize(
    "content",
    ["", "garbage", "max", "abc 100000", "200000 0", "0 100000", "-5 100000", "1 2 3"],
)
def test_malformed_cpu_max_is_ignored(tmp_path: Path, content: str) -> None:
    write(tmp_path, "sys/fs/cgroup/cpu.max", content)
    assert cpus(tmp_path, affinity=3) == CpuCount(3, "sched_getaffinity")


def test_malformed_v1_files_are_ignored(tmp_path: Path) -> None:
    write(tmp_path, "sys/fs/cgroup/cpu/cpu.cfs_quota_us", "lots")
    write(tmp_path, "sys/fs/cgroup/cpu/cpu.cfs_period_us", "100000")
    assert cpus(tmp_path, affinity=3).count == 3


def test_v1_quota_without_period_is_ignored(tmp_path: Path) -> None:
    write(tmp_path, "sys/fs/cgroup/cpu/cpu.cfs_quota_us", "100000")
    assert cpus(tmp_path, affinity=3).count == 3


def test_real_machine_gives_a_positive_count() -> None:
    found = usable_cpus()
    assert found.count >= 1
    assert found.source


def test_read_somaxconn(tmp_path: Path) -> None:
    write(tmp_path, "proc/sys/net/core/somaxconn", "4096")
    assert read_somaxconn(tmp_path) == 4096


@pytest.mark.parametrize("content", [None, "", "not a number"])
def test_read_somaxconn_unknown(tmp_path: Path, content: str | None) -> None:
    if content is not None:
        write(tmp_path, "proc/sys/net/core/somaxconn", content)
    assert read_somaxconn(tmp_path) is None
