"""Test-only pause points, handed in like any other dependency (never a monkeypatch).

Production code calls these at the seams where a race can happen; the defaults do nothing, so
the only cost is an awaited no-op. A test passes a subclass to ``create_app(settings,
hooks=...)`` and pauses, writes or records at the exact instant it wants to force an
interleaving, then asserts from what it recorded that the interleaving really occurred.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession


class Hooks:
    """The pause points; subclass and override the ones a test needs."""

    async def after_subscribe(self, stream: str) -> None:
        """The hub has subscribed a connection to ``stream`` and not yet read the backlog."""

    async def after_snapshot_head(self, stream: str) -> None:
        """The hub has read ``stream``'s head inside a snapshot, not yet its open orders."""

    async def before_stream_read(self, kind: str, streams: Sequence[str]) -> None:
        """The hub is about to read ``streams`` in one go: ``snapshot`` (hello), ``log`` (their
        heads, for a resume or a repair) or ``events`` (one stream's backlog)."""

    async def before_backfill_read(self, stream: str) -> None:
        """The hub is about to read a page of ``stream``'s backlog from the database."""

    async def after_backfill_read(self, stream: str, seqs: Sequence[int]) -> None:
        """The hub has read ``seqs`` of ``stream``'s backlog and not yet sent them."""

    async def before_publish(self, event_ids: Sequence[int]) -> None:
        """The write path has committed ``event_ids`` and not yet published them."""

    async def after_write_queued(self, lane: str, order_id: str) -> None:
        """A status change of ``order_id`` has joined the group-commit queue of ``lane``."""

    async def before_write_batch(self, lane: str) -> None:
        """The group commit of ``lane`` is about to take its next batch from its queue."""

    async def before_commit(self, session: AsyncSession) -> None:
        """A write transaction has done its work on ``session`` and is about to COMMIT."""

    async def before_gateway_check(self, payment_id: str) -> None:
        """A single-flight check holds ``payment_id``'s lease and is about to ask the gateway."""

    async def after_idempotency_claim(self, key: str) -> None:
        """A request has claimed Idempotency-Key ``key`` and its handler is about to run."""

    async def before_cancel(self, order_id: str) -> None:
        """A cancel of ``order_id`` is about to open its transaction (and wait for the lock)."""

    async def before_cancel_refund(self, order_id: str) -> None:
        """A cancel holds ``order_id``'s lock, has moved it, and is about to record its refunds."""


#: The shared do-nothing instance production code uses.
NO_HOOKS = Hooks()
