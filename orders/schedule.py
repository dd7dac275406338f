"""When a payment is checked next: the polling schedule, backoff with jitter, honouring Retry-After.

PURE: no I/O, no clock of its own (times are handed in), no randomness of its own (a random
number in [0, 1) is handed in), so every branch is tested exhaustively.

The default schedule is PhonePe's guidance for its status API: a first check 20–25 s after the
payment starts, then every 3 s for 30 s, every 6 s for 60 s, every 10 s for 60 s, every 30 s for
60 s, then every minute until the payment's timeout; at the timeout one last check decides (still
pending → EXPIRED). After that a slow *tail* (every 15 min for an hour, then hourly, up to 24 h
after the start) keeps asking about expired payments, to catch a bank's late authorisation.

A schedule is data, written in one line so a setting can carry it per gateway::

    first=20-25 3x30 6x60 10x60 30x60 then=60 timeout=1200 tail=900x3600,3600 horizon=86400

(``AxB``: every A seconds for B seconds; ``tail=AxB,C``: every A s for B s, then every C s.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum


class Phase(Enum):
    """Which part of the schedule a check belongs to."""

    #: Polling while the gateway may still settle the payment.
    POLL = "poll"
    #: The check at the payment's timeout: still pending after it means EXPIRED.
    FINAL = "final"
    #: A check of an expired payment, for a late authorisation.
    TAIL = "tail"


@dataclass(frozen=True, slots=True)
class Step:
    """Check every ``every`` seconds for ``during`` seconds."""

    every: float
    during: float


@dataclass(frozen=True, slots=True)
class Schedule:
    """One gateway's polling schedule; every time is in seconds since the payment started."""

    first_min: float = 20.0
    first_max: float = 25.0
    steps: tuple[Step, ...] = (Step(3, 30), Step(6, 60), Step(10, 60), Step(30, 60))
    then_every: float = 60.0
    timeout: float = 1200.0
    tail_first: Step = Step(900, 3600)
    tail_then: float = 3600.0
    horizon: float = 86400.0

    def __post_init__(self) -> None:
        if not 0 <= self.first_min <= self.first_max:
            raise ValueError("first check: need 0 <= min <= max")
        for step in (*self.steps, self.tail_first):
            if step.every <= 0 or step.during < 0:
                raise ValueError("a step needs every > 0 and during >= 0")
        if self.then_every <= 0 or self.tail_then <= 0:
            raise ValueError("intervals must be positive")
        if self.timeout < self.first_max:
            raise ValueError("timeout must not come before the first check")
        if self.horizon < self.timeout:
            raise ValueError("horizon must not come before the timeout")

    @classmethod
    def parse(cls, text: str) -> Schedule:
        """A schedule from its one-line form (module docstring); ValueError naming the part."""
        fields: dict[str, object] = {}
        steps: list[Step] = []
        for part in text.split():
            key, eq, value = part.partition("=")
            try:
                if not eq:
                    steps.append(_step(part))
                elif key == "first":
                    low, _, high = value.partition("-")
                    fields["first_min"] = float(low)
                    fields["first_max"] = float(high or low)
                elif key in ("then", "timeout", "horizon"):
                    fields[{"then": "then_every"}.get(key, key)] = _seconds(value)
                elif key == "tail":
                    first, _, then = value.partition(",")
                    fields["tail_first"] = _step(first)
                    if then:
                        fields["tail_then"] = _seconds(then)
                else:
                    raise ValueError("unknown key")
            except ValueError as exc:
                raise ValueError(f"schedule part {part!r}: {exc}") from None
        if steps:
            fields["steps"] = tuple(steps)
        return cls(**fields)  # type: ignore[arg-type]

    def first_check(self, jitter: float) -> float:
        """Seconds after the start of the first check; ``jitter`` in [0, 1) spreads them."""
        return self.first_min + (self.first_max - self.first_min) * _unit(jitter)

    def next_check(self, elapsed: float, *, first: float) -> tuple[float, Phase] | None:
        """The next check strictly after ``elapsed`` seconds (and its phase), or None: done.

        ``first`` is this payment's first check (``first_check``), so the steps count from it.
        """
        if elapsed >= self.timeout:
            return self._tail(elapsed)
        if elapsed < first:
            return self._cap(first)
        at = first
        for step in self.steps:
            end = at + step.during
            candidate = _next_multiple(at, step.every, elapsed)
            if candidate <= end:
                return self._cap(candidate)
            at = end
        return self._cap(_next_multiple(at, self.then_every, elapsed))

    def _tail(self, elapsed: float) -> tuple[float, Phase] | None:
        tail_end = self.timeout + self.tail_first.during
        candidate = _next_multiple(self.timeout, self.tail_first.every, elapsed)
        if candidate > tail_end:
            candidate = _next_multiple(tail_end, self.tail_then, elapsed)
        if candidate > self.horizon:
            return None
        return candidate, Phase.TAIL

    def _cap(self, at: float) -> tuple[float, Phase]:
        # A schedule whose steps run past the timeout still ends with the final check there.
        if at < self.timeout:
            return at, Phase.POLL
        return self.timeout, Phase.FINAL


#: PhonePe's guidance, the default for every gateway that names no schedule of its own.
DEFAULT = Schedule()


def backoff(attempt: int, *, jitter: float, base: float = 1.0, cap: float = 300.0) -> float:
    """Seconds to wait after the ``attempt``-th consecutive failure (1, 2, …): full jitter.

    Exponential (base · 2^(attempt-1), at most ``cap``), scaled by ``jitter`` in [0, 1) to
    spread retries of many payments, but never below a tenth of the ceiling so a failing
    gateway is not hammered by unlucky draws.
    """
    if attempt < 1:
        raise ValueError("attempt counts from 1")
    ceiling = min(cap, base * 2.0 ** min(attempt - 1, 62))
    return max(ceiling / 10, ceiling * _unit(jitter))


def wait_after_unavailable(
    retry_after: float | None, attempt: int, *, jitter: float, cap: float = 3600.0
) -> float:
    """Seconds to wait after the gateway could not answer: its Retry-After if it gave one
    (never more than ``cap``: a gateway cannot park a payment for a year), else ``backoff``."""
    if retry_after is not None:
        return min(max(0.0, retry_after), cap)
    return backoff(attempt, jitter=jitter)


def _unit(jitter: float) -> float:
    if not 0.0 <= jitter < 1.0 or math.isnan(jitter):
        raise ValueError("jitter must be in [0, 1)")
    return jitter


def _next_multiple(origin: float, every: float, elapsed: float) -> float:
    """The first ``origin + k·every`` (k ≥ 1) strictly after ``elapsed``."""
    k = max(1, math.floor((elapsed - origin) / every) + 1)
    return origin + k * every


def _seconds(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value <= 0:
        raise ValueError("must be a positive number of seconds")
    return value


def _step(text: str) -> Step:
    every, sep, during = text.partition("x")
    if not sep:
        raise ValueError("a step is EVERYxDURING")
    return Step(_seconds(every), _seconds(during))
