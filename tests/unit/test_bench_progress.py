"""The benchmarks' progress bar (tqdm underneath), drawn by hand: no ticker waits."""

from __future__ import annotations

import io

from benchmarks.probes import Progress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_off_a_terminal_every_draw_is_a_line_with_the_counts() -> None:
    out = io.StringIO()
    with Progress("storm", 30, file=out) as progress:
        for i in range(7):
            progress.add(ok=i % 3 != 0)
        progress.draw()
        progress.add(ok=True)
    text = out.getvalue()
    assert "\r" not in text and text.endswith("\n")
    start, drawn, final = text.splitlines()
    assert start.startswith("storm:") and "0/30" in start
    assert "7/30" in drawn and "ok 4 failed 3" in drawn
    assert "8/30" in final and "ok 5 failed 3" in final
    assert "00:00" in final  # the elapsed time


def test_add_only_counts_the_ticker_draws() -> None:
    out = io.StringIO()
    with Progress("storm", 5000, file=out) as progress:
        drawn = out.getvalue()
        for _ in range(5000):
            progress.add(ok=True)
        # Thousands of requests a second: nothing is formatted or written per add.
        assert out.getvalue() == drawn
        assert (progress.done, progress.ok) == (5000, 5000)


def test_unknown_total_shows_the_count_alone() -> None:
    out = io.StringIO()
    with Progress("loop", None, file=out) as progress:
        progress.add(ok=False)
    final = out.getvalue().splitlines()[-1]
    assert final.startswith("loop: 1req") and "/" not in final.split("[")[0]
    assert "ok 0 failed 1" in final


def test_on_a_terminal_the_line_is_redrawn_in_place() -> None:
    out = _Terminal()
    with Progress("storm", 2, file=out) as progress:
        progress.add(ok=True)
        progress.draw()
    text = out.getvalue()
    assert text.count("\r") >= 3 and text.count("\n") == 1 and text.endswith("\n")
    assert "1/2" in text.rsplit("\r", 1)[-1]


def test_counts_and_draws_outside_the_with_block_are_harmless() -> None:
    out = io.StringIO()
    progress = Progress("t", 3, file=out)
    progress.add(ok=True)
    progress.draw()
    assert out.getvalue() == "" and progress.done == 1
