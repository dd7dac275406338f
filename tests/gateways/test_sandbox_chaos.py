"""PURE: the sandbox's chaos decisions, for every knob at every edge, and their seeded replay."""

from __future__ import annotations

import itertools
import random

import pytest

from gateways.sandbox_server import (
    Chaos,
    SandboxServerConfig,
    StatusPlan,
    WebhookPlan,
    decide_status,
    decide_webhook,
)

PERCENTS = [0.0, 0.5, 10.0, 50.0, 99.9, 100.0]
DRAWS = [0.0, 0.004, 0.1, 0.4999, 0.5, 0.998, 0.999999]


def hit(draw: float, percent: float) -> bool:
    return draw * 100 < percent


@pytest.mark.parametrize(("percent", "draw"), list(itertools.product(PERCENTS, DRAWS)))
def test_drop_is_decided_by_the_first_draw(percent: float, draw: float) -> None:
    source = iter([draw, 0.99, 0.99, 0.99])
    plan = decide_webhook(Chaos(drop=percent), lambda: next(source))
    expected = WebhookPlan(True, 0, 0.0) if hit(draw, percent) else WebhookPlan(False, 1, 0.0)
    assert plan == expected


@pytest.mark.parametrize(("percent", "draw"), list(itertools.product(PERCENTS, DRAWS)))
def test_duplicate_is_decided_by_the_second_draw(percent: float, draw: float) -> None:
    source = iter([0.99, draw, 0.99, 0.99])
    plan = decide_webhook(Chaos(duplicate=percent), lambda: next(source))
    assert plan == WebhookPlan(False, 2 if hit(draw, percent) else 1, 0.0)


@pytest.mark.parametrize(("percent", "draw"), list(itertools.product(PERCENTS, DRAWS)))
def test_delay_is_decided_by_the_third_draw(percent: float, draw: float) -> None:
    source = iter([0.99, 0.99, draw, 0.99])
    plan = decide_webhook(Chaos(delay=percent, delay_seconds=2.5), lambda: next(source))
    assert plan == WebhookPlan(False, 1, 2.5 if hit(draw, percent) else 0.0)


@pytest.mark.parametrize(("percent", "draw"), list(itertools.product(PERCENTS, DRAWS)))
def test_reorder_is_decided_by_the_fourth_draw(percent: float, draw: float) -> None:
    source = iter([0.99, 0.99, 0.99, draw])
    plan = decide_webhook(Chaos(reorder=percent, reorder_seconds=0.7), lambda: next(source))
    assert plan == WebhookPlan(False, 1, 0.7 if hit(draw, percent) else 0.0)


def test_every_knob_at_once_adds_up_and_a_drop_wins() -> None:
    everything = Chaos(duplicate=100, delay=100, delay_seconds=2, reorder=100, reorder_seconds=1)
    assert decide_webhook(everything, lambda: 0.0) == WebhookPlan(False, 2, 3.0)
    assert decide_webhook(Chaos(drop=100, duplicate=100, delay=100), lambda: 0.0).drop


@pytest.mark.parametrize("chaos", [Chaos(), Chaos(drop=100), Chaos(duplicate=30, reorder=5)])
def test_a_webhook_decision_always_takes_four_draws(chaos: Chaos) -> None:
    taken: list[float] = []

    def draw() -> float:
        taken.append(0.0)
        return 0.0

    decide_webhook(chaos, draw)
    assert len(taken) == 4


BANDS = [
    (0.0, 0.0, 0.0),
    (10.0, 20.0, 30.0),
    (100.0, 0.0, 0.0),
    (0.0, 100.0, 0.0),
    (0.0, 0.0, 100.0),
    (33.3, 33.3, 33.4),
]


@pytest.mark.parametrize(("bands", "draw"), list(itertools.product(BANDS, DRAWS)))
def test_status_faults_share_one_draw_in_bands(
    bands: tuple[float, float, float], draw: float
) -> None:
    p429, p5xx, phang = bands
    chaos = Chaos(
        status_429=p429, status_5xx=p5xx, status_hang=phang, retry_after=4, hang_seconds=9
    )
    point = draw * 100
    if point < p429:
        expected = StatusPlan("429", retry_after=4)
    elif point < p429 + p5xx:
        expected = StatusPlan("5xx")
    elif point < p429 + p5xx + phang:
        expected = StatusPlan("hang", hang_seconds=9)
    else:
        expected = StatusPlan("ok")
    assert decide_status(chaos, lambda: draw) == expected


def test_a_seed_replays_the_same_decisions_and_percentages_hold() -> None:
    chaos = Chaos(drop=50, duplicate=20, reorder=10, status_429=20)
    rng_a, rng_b = random.Random(11), random.Random(11)
    plans_a = [decide_webhook(chaos, rng_a.random) for _ in range(20_000)]
    plans_b = [decide_webhook(chaos, rng_b.random) for _ in range(20_000)]
    assert plans_a == plans_b
    dropped = sum(p.drop for p in plans_a) / len(plans_a)
    kept = [p for p in plans_a if not p.drop]
    duplicated = sum(p.copies == 2 for p in kept) / len(kept)
    assert 0.48 < dropped < 0.52
    assert 0.18 < duplicated < 0.22
    rng = random.Random(5)
    answers = [decide_status(chaos, rng.random).kind for _ in range(20_000)]
    assert 0.18 < answers.count("429") / len(answers) < 0.22


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"drop": 101}, "drop: expected a percentage"),
        ({"status_5xx": -1}, "status_5xx: expected a percentage"),
        ({"status_429": 60, "status_5xx": 50}, "more than 100"),
        ({"delay_seconds": -2}, "delay_seconds: expected >= 0"),
        ({"nope": 1}, "nope: not a chaos knob"),
        ({"drop": "lots"}, "drop: expected a number"),
        ({"drop": True}, "drop: expected a number"),
    ],
)
def test_bad_knobs_are_refused_by_name(values: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Chaos().updated(values)


def test_knobs_come_from_the_environment_and_bad_ones_name_the_variable() -> None:
    environ = {
        "SANDBOX_WEBHOOK_SECRET": "s",
        "SANDBOX_DROP": "50",
        "SANDBOX_STATUS_429": "20",
        "SANDBOX_RETRY_AFTER": "3",
        "SANDBOX_APPROVE_DELAY": "1.5",
        "SANDBOX_SEED": "42",
    }
    config = SandboxServerConfig.from_environ(environ)
    assert (config.chaos.drop, config.chaos.status_429, config.chaos.retry_after) == (50, 20, 3)
    assert config.chaos.approve_delay == 1.5 and config.seed == 42
    with pytest.raises(ValueError, match="SANDBOX_DROP"):
        SandboxServerConfig.from_environ({**environ, "SANDBOX_DROP": "half"})
    with pytest.raises(ValueError, match="SANDBOX_DROP"):
        SandboxServerConfig.from_environ({**environ, "SANDBOX_DROP": "300"})
    with pytest.raises(ValueError, match="SANDBOX_WEBHOOK_SECRET"):
        SandboxServerConfig.from_environ({})
