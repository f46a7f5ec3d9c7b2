"""Per-greenlet CPU accounting with real greenlets (and once with gevent, in a child)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import greenlet
import pytest

from gunitune.cpu_meter import Account, GreenletCpuMeter
from tests.unit.helpers import burn

REPO = Path(__file__).resolve().parents[2]


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(autouse=True)
def restore_tracer() -> Iterator[None]:
    """Leave greenlet's per-thread tracer as the test found it."""
    before = greenlet.gettrace()
    yield
    greenlet.settrace(before)


@pytest.fixture
def meter() -> Iterator[GreenletCpuMeter]:
    m = GreenletCpuMeter(block_threshold=10.0)
    yield m
    m.uninstall()


def parent_switch() -> Any:
    return greenlet.getcurrent().parent.switch()


def test_cpu_between_switches_accumulates(meter: GreenletCpuMeter) -> None:
    def request() -> Account | None:
        meter.start("/cpu")
        burn(0.03)
        parent_switch()
        burn(0.03)
        return meter.stop()

    glet = greenlet.greenlet(request)
    glet.switch()  # runs the first 30 ms, then switches back here
    burn(0.1)  # the parent's CPU, while the request is switched out
    account = glet.switch()
    assert isinstance(account, Account)
    assert account.label == "/cpu"
    assert account.cpu >= 0.055
    assert account.cpu < 0.1  # the parent's 100 ms are not in it
    assert account.running is False
    assert meter.measuring == 0


def test_io_interleaved_with_cpu_is_not_charged(meter: GreenletCpuMeter) -> None:
    accounts: dict[str, Account | None] = {}
    io_glet: greenlet.greenlet

    def cpu_request() -> None:
        meter.start("/cpu")
        burn(0.05)
        accounts["cpu"] = meter.stop()
        io_glet.switch()  # hand back to the "io" request, as the hub would

    cpu_glet = greenlet.greenlet(cpu_request)

    def io_request() -> None:
        meter.start("/io")
        cpu_glet.switch()  # "waiting on Postgres": another greenlet runs meanwhile
        accounts["io"] = meter.stop()

    io_glet = greenlet.greenlet(io_request)
    io_glet.switch()
    io, cpu = accounts["io"], accounts["cpu"]
    assert io is not None and cpu is not None
    assert cpu.cpu >= 0.04
    assert io.cpu < 0.005
    assert (io.label, cpu.label) == ("/io", "/cpu")


def test_greenlet_resumed_by_throw_is_measured(meter: GreenletCpuMeter) -> None:
    class Wake(Exception):
        pass

    def request() -> Account | None:
        meter.start("/t")
        try:
            parent_switch()
        except Wake:
            burn(0.03)
        return meter.stop()

    glet = greenlet.greenlet(request)
    glet.switch()
    account = glet.throw(Wake)
    assert account is not None
    assert account.cpu >= 0.025


def test_unmeasured_greenlets_are_ignored(meter: GreenletCpuMeter) -> None:
    def other() -> None:
        burn(0.01)

    greenlet.greenlet(other).switch()
    assert meter.measuring == 0
    assert meter.stop() is None


def test_slice_longer_than_threshold_reports_block_with_label() -> None:
    wall, cpu = FakeClock(), FakeClock()
    blocks: list[tuple[str, float]] = []
    meter = GreenletCpuMeter(
        block_threshold=0.5,
        on_block=lambda label, held: blocks.append((label, held)),
        cpu_clock=cpu,
        wall_clock=wall,
    )
    meter.install()
    try:

        def request() -> Account | None:
            meter.start("<unmatched>")
            meter.relabel("/report")  # routing happened
            wall.now += 0.2
            cpu.now += 0.2
            parent_switch()  # short slice: no report
            wall.now += 0.7
            cpu.now += 0.6
            parent_switch()  # long slice
            wall.now += 0.1
            return meter.stop()

        glet = greenlet.greenlet(request)
        glet.switch()
        assert blocks == []
        glet.switch()
        assert [label for label, _ in blocks] == ["/report"]
        assert blocks[0][1] == pytest.approx(0.7)
        account = glet.switch()
    finally:
        meter.uninstall()
    assert account is not None
    assert account.longest_slice == pytest.approx(0.7)
    assert account.cpu == pytest.approx(0.8)
    assert len(blocks) == 1


def test_long_slice_without_on_block_is_still_recorded() -> None:
    wall = FakeClock()
    meter = GreenletCpuMeter(block_threshold=0.5, wall_clock=wall, cpu_clock=FakeClock())
    meter.start("/x")
    wall.now += 2.0
    account = meter.stop()
    assert account is not None
    assert account.longest_slice == pytest.approx(2.0)


def test_relabel_and_stop_of_unknown_greenlet() -> None:
    meter = GreenletCpuMeter()
    meter.relabel("/nobody")  # nothing measured: no error
    assert meter.stop() is None
    meter.start("/a")
    assert meter.measuring == 1
    meter.relabel("/b")
    account = meter.stop()
    assert account is not None and account.label == "/b"


def test_previous_tracer_is_chained_and_restored() -> None:
    events: list[str] = []

    def previous(event: str, args: Any) -> None:
        events.append(event)

    greenlet.settrace(previous)
    meter = GreenletCpuMeter()
    meter.install()
    meter.install()  # idempotent: must not chain to itself
    assert greenlet.gettrace() == meter._trace

    def request() -> Account | None:
        meter.start("/chained")
        burn(0.02)
        parent_switch()
        return meter.stop()

    glet = greenlet.greenlet(request)
    glet.switch()
    assert events.count("switch") >= 2  # into the greenlet and back, seen by both
    account = glet.switch()
    assert account is not None and account.cpu >= 0.015

    assert greenlet.gettrace() is previous  # the last stop uninstalled it
    meter.uninstall()  # idempotent
    assert greenlet.gettrace() is previous
    seen = len(events)
    greenlet.greenlet(lambda: None).switch()
    assert len(events) > seen  # the previous tracer still works on its own


def test_start_installs_the_tracer_and_the_last_stop_removes_it() -> None:
    def previous(event: str, args: Any) -> None:
        pass

    greenlet.settrace(previous)
    meter = GreenletCpuMeter()
    assert greenlet.gettrace() is previous  # nothing measured: no cost on switches

    def request(label: str) -> Account | None:
        meter.start(label)
        parent_switch()
        return meter.stop()

    first, second = greenlet.greenlet(request), greenlet.greenlet(request)
    first.switch("/a")
    assert greenlet.gettrace() == meter._trace
    second.switch("/b")
    assert first.switch() is not None
    assert greenlet.gettrace() == meter._trace  # "/b" is still measured
    assert second.switch() is not None
    assert meter.measuring == 0
    assert greenlet.gettrace() is previous


def test_switches_after_the_last_stop_are_not_traced() -> None:
    meter = GreenletCpuMeter()
    meter.start("/done")
    assert meter.stop() is not None

    def request() -> Account | None:
        parent_switch()
        return meter.stop()

    glet = greenlet.greenlet(request)
    glet.switch()
    assert glet.switch() is None  # never measured: the tracer was gone


def test_stop_of_an_unmeasured_greenlet_keeps_measuring_the_others(
    meter: GreenletCpuMeter,
) -> None:
    def request() -> Account | None:
        meter.start("/kept")
        parent_switch()
        burn(0.02)
        return meter.stop()

    glet = greenlet.greenlet(request)
    glet.switch()
    assert meter.stop() is None  # this greenlet was never measured
    burn(0.05)  # the parent's CPU, while the request is switched out
    account = glet.switch()
    assert account is not None
    assert 0.015 <= account.cpu < 0.05  # still traced: the parent's CPU is not charged


GEVENT_SCRIPT = textwrap.dedent(
    """
    from gevent import monkey

    monkey.patch_all()

    import json
    import time

    import gevent
    import greenlet

    from gunitune.core.limits import RouteProfiles
    from gunitune.cpu_meter import GreenletCpuMeter

    meter = GreenletCpuMeter(block_threshold=10.0)
    # A low threshold keeps the CPU route CPU-bound on a loaded machine; without
    # per-greenlet accounting the IO route would measure the CPU route's time.
    profiles = RouteProfiles(threshold=0.2)


    def burn(seconds):
        end = time.thread_time() + seconds
        while time.thread_time() < end:
            pass


    def measured(route, body):
        for _ in range(4):
            meter.start(route)  # installs the tracer if nothing else is measured
            body()
            account = meter.stop()
            # What the extension feeds the profiles with.
            profiles.add(route, account.cpu, account.own_wall, used_db=True)


    def io_body():
        gevent.sleep(0.05)  # a query: switched out while it waits


    def cpu_body():
        for _ in range(3):
            burn(0.05)
            gevent.sleep(0.001)  # a timed sleep lets the loop run the IO timer


    gevent.joinall([
        gevent.spawn(measured, "/io", io_body),
        gevent.spawn(measured, "/cpu", cpu_body),
    ])
    print(json.dumps({
        "routes": profiles.snapshot(),
        "tracer_left": greenlet.gettrace() is not None,
    }))
    """
)


def test_gevent_io_route_interleaved_with_cpu_route_is_not_misclassified() -> None:
    path = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path}
    result = subprocess.run(
        [sys.executable, "-c", GEVENT_SCRIPT],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    routes = report["routes"]
    assert routes["/io"]["lane"] != "cpu", routes
    assert routes["/cpu"]["lane"] == "cpu", routes
    assert routes["/io"]["cpu_ms"] < 5, routes  # the CPU route's 150 ms are not charged to it
    assert routes["/cpu"]["cpu_ms"] >= 120, routes
    assert routes["/io"]["samples"] == routes["/cpu"]["samples"] == 4
    assert report["tracer_left"] is False  # nothing measured any more: no tracer
