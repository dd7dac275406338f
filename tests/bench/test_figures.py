"""The benchmark scripts' own arithmetic: rate-limit windows and per-second counts (no timing)."""

from __future__ import annotations

from bench.reconciler import _per_second
from bench.sandbox import max_in_window


def test_a_sliding_window_finds_a_burst_that_straddles_two_calendar_seconds() -> None:
    # 3 calls at the end of second 10 and 3 at the start of second 11: 3 per calendar second,
    # 6 inside one second.
    times = [10.7, 10.8, 10.9, 11.0, 11.1, 11.2, 12.5]
    assert max_in_window(times, 1.0) == 6
    assert max_in_window(times, 0.25) == 3


def test_a_window_is_half_open_so_calls_exactly_one_second_apart_are_not_together() -> None:
    assert max_in_window([1.0, 2.0, 3.0], 1.0) == 1
    assert max_in_window([], 1.0) == 0


def test_per_second_leaves_the_partial_first_and_last_seconds_out_of_the_mean() -> None:
    stats = {"status_calls_per_second": {"100": 3, "101": 10, "102": 8, "104": 1}}
    figures = _per_second(stats)
    assert figures["max"] == 10
    assert figures["mean"] == (10 + 8 + 0) / 3  # second 103 had no call
    assert figures["series"] == [3, 10, 8, 0, 1]
