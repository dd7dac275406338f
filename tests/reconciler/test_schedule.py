"""PURE, exhaustive: the polling schedule, backoff bounds and Retry-After parsing."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orders.schedule import DEFAULT, Phase, Schedule, Step, backoff, wait_after_unavailable

ONE_LINE = "first=20-25 3x30 6x60 10x60 30x60 then=60 timeout=1200 tail=900x3600,3600 horizon=86400"


def walk(schedule: Schedule, first: float) -> list[tuple[float, Phase]]:
    """Every check of a payment that never settles, from the start to the end of the tail."""
    checks: list[tuple[float, Phase]] = []
    elapsed = 0.0
    while (step := schedule.next_check(elapsed, first=first)) is not None:
        assert step[0] > elapsed or (elapsed == 0 and step[0] == first)
        checks.append(step)
        elapsed = step[0]
    return checks


def test_the_default_is_phonepe_guidance_written_out_check_by_check() -> None:
    checks = walk(DEFAULT, first=20.0)
    times = [at for at, _ in checks]
    expected_poll = (
        [20.0]
        + [20.0 + 3 * k for k in range(1, 11)]  # every 3 s for 30 s → 50
        + [50.0 + 6 * k for k in range(1, 11)]  # every 6 s for 60 s → 110
        + [110.0 + 10 * k for k in range(1, 7)]  # every 10 s for 60 s → 170
        + [170.0 + 30 * k for k in range(1, 3)]  # every 30 s for 60 s → 230
        + [230.0 + 60 * k for k in range(1, 17)]  # every minute → 1190 (< timeout)
    )
    polls = [at for at, phase in checks if phase is Phase.POLL]
    assert polls == expected_poll
    assert [at for at, phase in checks if phase is Phase.FINAL] == [1200.0]
    tail = [at for at, phase in checks if phase is Phase.TAIL]
    assert tail[:4] == [2100.0, 3000.0, 3900.0, 4800.0]  # every 15 min for an hour
    assert tail[4] - tail[3] == 3600.0  # then hourly
    assert all(b - a == 3600.0 for a, b in zip(tail[4:], tail[5:], strict=False))
    assert tail[-1] <= 86400.0 < tail[-1] + 3600.0  # up to 24 h, not past it
    assert times == sorted(times) and len(set(times)) == len(times)


def test_the_one_line_form_reads_back_as_the_default() -> None:
    assert Schedule.parse(ONE_LINE) == DEFAULT
    assert Schedule.parse("") == DEFAULT


@pytest.mark.parametrize(
    ("text", "part"),
    [
        ("3by30", "3by30"),
        ("every=3", "every=3"),
        ("timeout=-1", "timeout=-1"),
        ("0x30", "0x30"),
        ("then=nan", "then=nan"),
        ("first=abc", "first=abc"),
    ],
)
def test_a_bad_schedule_names_the_part_that_is_wrong(text: str, part: str) -> None:
    with pytest.raises(ValueError, match=part):
        Schedule.parse(text)


@pytest.mark.parametrize(
    "fields",
    [
        {"first_min": 30, "first_max": 20},
        {"first_min": -1},
        {"timeout": 10},
        {"horizon": 100},
        {"then_every": 0},
        {"tail_then": 0},
        {"steps": (Step(0, 10),)},
        {"tail_first": Step(5, -1)},
    ],
)
def test_an_inconsistent_schedule_is_refused(fields: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        Schedule(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(("jitter", "first"), [(0.0, 20.0), (0.5, 22.5), (0.999, 24.995)])
def test_the_first_check_is_spread_between_20_and_25_seconds(jitter: float, first: float) -> None:
    assert DEFAULT.first_check(jitter) == pytest.approx(first)


@pytest.mark.parametrize("jitter", [-0.1, 1.0, float("nan")])
def test_jitter_outside_the_unit_interval_is_refused(jitter: float) -> None:
    with pytest.raises(ValueError):
        DEFAULT.first_check(jitter)
    with pytest.raises(ValueError):
        backoff(1, jitter=jitter)


def test_before_the_first_check_the_next_check_is_the_first() -> None:
    assert DEFAULT.next_check(0.0, first=21.0) == (21.0, Phase.POLL)
    assert DEFAULT.next_check(20.9, first=21.0) == (21.0, Phase.POLL)
    assert DEFAULT.next_check(21.0, first=21.0) == (24.0, Phase.POLL)


def test_a_check_made_late_resumes_on_the_schedule_not_from_when_it_ran() -> None:
    # A backlog made the check at 20 run at 41.5: the next one is the schedule's next (44).
    assert DEFAULT.next_check(41.5, first=20.0) == (44.0, Phase.POLL)
    assert DEFAULT.next_check(500.0, first=20.0) == (530.0, Phase.POLL)


def test_the_final_check_happens_exactly_at_the_timeout_even_off_the_grid() -> None:
    short = Schedule(timeout=100.0, steps=(Step(7, 200),))
    assert short.next_check(97.0, first=20.0) == (100.0, Phase.FINAL)
    assert short.next_check(99.9, first=20.0) == (100.0, Phase.FINAL)
    assert short.next_check(100.0, first=20.0) == (1000.0, Phase.TAIL)


def test_after_the_timeout_only_tail_checks_remain_until_the_horizon() -> None:
    assert DEFAULT.next_check(1200.0, first=20.0) == (2100.0, Phase.TAIL)
    assert DEFAULT.next_check(4800.0, first=20.0) == (8400.0, Phase.TAIL)
    assert DEFAULT.next_check(84000.0, first=20.0) is None
    assert DEFAULT.next_check(10**7, first=20.0) is None


@given(
    first=st.floats(20, 25),
    elapsed=st.floats(0, 90000, allow_nan=False),
)
def test_the_next_check_is_always_later_and_phases_never_go_back(
    first: float, elapsed: float
) -> None:
    step = DEFAULT.next_check(elapsed, first=first)
    if step is None:
        assert elapsed + 3600 > DEFAULT.horizon
        return
    at, phase = step
    assert at > elapsed or at == first
    if elapsed >= DEFAULT.timeout:
        assert phase is Phase.TAIL
    elif phase is Phase.FINAL:
        assert at == DEFAULT.timeout
    else:
        assert phase is Phase.POLL and at < DEFAULT.timeout


@pytest.mark.parametrize(
    ("attempt", "jitter", "expected"),
    [
        (1, 0.0, 0.1),  # floor: a tenth of the ceiling
        (1, 0.5, 0.5),
        (2, 0.5, 1.0),
        (3, 0.999, 3.996),
        (9, 0.5, 128.0),
        (9, 0.0, 25.6),
        (10, 0.5, 150.0),
        (10, 0.0, 30.0),
        (20, 0.5, 150.0),  # capped at 300
        (10_000, 0.999, 299.7),
    ],
)
def test_backoff_doubles_with_full_jitter_and_is_capped(
    attempt: int, jitter: float, expected: float
) -> None:
    assert backoff(attempt, jitter=jitter) == pytest.approx(expected)


def test_backoff_counts_attempts_from_one() -> None:
    with pytest.raises(ValueError):
        backoff(0, jitter=0.5)


@given(attempt=st.integers(1, 10_000), jitter=st.floats(0, 0.9999))
def test_backoff_stays_within_a_tenth_of_the_ceiling_and_the_ceiling(
    attempt: int, jitter: float
) -> None:
    ceiling = min(300.0, 2.0 ** min(attempt - 1, 62))
    assert ceiling / 10 <= backoff(attempt, jitter=jitter) <= ceiling


@pytest.mark.parametrize(
    ("retry_after", "attempt", "seconds"),
    [
        (7.0, 1, 7.0),
        (0.0, 5, 0.0),
        (-3.0, 1, 0.0),
        (10**9, 1, 3600.0),  # capped
        (None, 1, 0.5),  # no Retry-After: backoff
        (None, 4, 4.0),
    ],
)
def test_a_gateway_that_says_when_is_believed_within_a_cap(
    retry_after: float | None, attempt: int, seconds: float
) -> None:
    assert wait_after_unavailable(retry_after, attempt, jitter=0.5) == seconds
