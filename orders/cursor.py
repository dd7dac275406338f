"""Per-connection stream cursor: decide what to do with an incoming seq.

PURE: the hub feeds it every seq it sees (live or replayed) and acts on the decision.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Action(Enum):
    """What to do with an incoming event."""

    DELIVER = "deliver"
    DUPLICATE = "duplicate"
    BACKFILL = "backfill"


@dataclass(frozen=True, slots=True)
class Decision:
    """The action, and for BACKFILL the inclusive range of seqs missing before it."""

    action: Action
    missing_from: int = 0
    missing_to: int = 0


_DELIVER = Decision(Action.DELIVER)
_DUPLICATE = Decision(Action.DUPLICATE)


class StreamCursor:
    """The last seq delivered to one client; everything after it is owed, in order."""

    __slots__ = ("last",)

    def __init__(self, last: int) -> None:
        if last < 0:
            raise ValueError("seq cannot be negative")
        self.last = last

    def offer(self, seq: int) -> Decision:
        """Classify ``seq``: the next one, one already delivered, or one past a gap."""
        if seq <= self.last:
            return _DUPLICATE
        if seq == self.last + 1:
            return _DELIVER
        return Decision(Action.BACKFILL, self.last + 1, seq - 1)

    def advance(self, seq: int) -> None:
        """Record that ``seq`` was delivered; it must be exactly the next one."""
        if seq != self.last + 1:
            raise ValueError(f"cursor at {self.last} cannot advance to {seq}")
        self.last = seq

    def restart(self, last: int) -> None:
        """Start over at ``last`` (after a ``reset``: the client holds a fresh snapshot)."""
        if last < 0:
            raise ValueError("seq cannot be negative")
        self.last = last

    def behind(self, head: int) -> bool:
        """Whether the stream's head is past what this client has been given."""
        return head > self.last
