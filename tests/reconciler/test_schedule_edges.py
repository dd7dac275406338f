"""PURE: the polling schedule at the edges its rules allow, and checks that land exactly on them.

Found by the mutation run (docs/testing.md): every rule of ``Schedule`` was tested from the
refusing side only, and no check fell exactly on the timeout or the horizon.
"""

from __future__ import annotations

import pytest

from orders.schedule import Phase, Schedule, Step


def test_a_first_check_at_once_is_allowed() -> None:
    schedule = Schedule(first_min=0.0, first_max=5.0)
    assert schedule.first_check(0.0) == 0.0


def test_a_first_check_without_jitter_is_allowed() -> None:
    schedule = Schedule(first_min=25.0, first_max=25.0)
    assert {schedule.first_check(j) for j in (0.0, 0.5, 0.99)} == {25.0}


@pytest.mark.parametrize(
    "fields",
    [
        {"steps": (Step(1, 0), Step(3, 30))},  # a one-second step of no length
        {"tail_first": Step(1, 0)},
        {"then_every": 1.0},
        {"tail_then": 1.0},
    ],
)
def test_one_second_intervals_and_empty_steps_are_allowed(fields: dict[str, object]) -> None:
    schedule = Schedule(**fields)  # type: ignore[arg-type]
    assert schedule.next_check(0.0, first=20.0) == (20.0, Phase.POLL)


def test_a_step_of_less_than_a_second_can_be_written() -> None:
    schedule = Schedule.parse("first=1-1 0.5x2 then=1 timeout=10")
    assert schedule.steps == (Step(0.5, 2.0),)
    assert schedule.next_check(1.0, first=1.0) == (1.5, Phase.POLL)


def test_a_timeout_at_the_first_check_makes_that_check_the_final_one() -> None:
    schedule = Schedule(first_min=25.0, first_max=25.0, timeout=25.0)
    assert schedule.next_check(0.0, first=25.0) == (25.0, Phase.FINAL)


def test_a_check_due_exactly_at_the_timeout_is_the_final_one() -> None:
    schedule = Schedule(first_min=20.0, first_max=20.0, steps=(Step(10, 80),), timeout=100.0)
    assert schedule.next_check(85.0, first=20.0) == (90.0, Phase.POLL)
    assert schedule.next_check(90.0, first=20.0) == (100.0, Phase.FINAL)


def test_a_horizon_at_the_timeout_leaves_no_tail() -> None:
    schedule = Schedule(horizon=1200.0)
    assert schedule.next_check(1190.0, first=20.0) == (1200.0, Phase.FINAL)
    assert schedule.next_check(1200.0, first=20.0) is None


def test_a_tail_check_due_exactly_at_the_horizon_still_happens() -> None:
    # Tail: every 900 s for 3600 s after the 1200 s timeout, so the last one is at 4800 s.
    schedule = Schedule(horizon=4800.0)
    assert schedule.next_check(3900.0, first=20.0) == (4800.0, Phase.TAIL)
    assert schedule.next_check(4800.0, first=20.0) is None
