"""The payment reconciler: check due payments with their gateway, expire unpaid orders.

Each pass claims the payments whose ``next_check_at`` has come — INITIATED / PENDING ones on
their schedule, EXPIRED ones in the slow tail that catches late authorisations — without overlap
between processes (``FOR UPDATE SKIP LOCKED`` on PostgreSQL, then a lease on each row for the
length of its check; SQLite has a single writer). Each claimed payment is checked through the
settlement's single flight, so a read, a verify call or a webhook arriving together share one
gateway call. The answer goes through the one write path with ``Evidence.STATUS_API`` and is
rescheduled by the gateway's ``Schedule``; an answer that never came (transport error, timeout,
5xx, 429) is never a verdict: the payment waits for Retry-After or a backoff with jitter.

Refunds still in flight are polled the same way (``Refunds.retry_due``): claimed when their
``next_check_at`` comes, sent or asked about through the shared rate limit, rescheduled by the
gateway's schedule, and never FAILED by an answer that never came.

Then orders past ``expires_at`` that are still unpaid: a live payment gets a last check first;
an order whose payment is still in flight after it stays open (the payment's own schedule runs
to its timeout, which expires it), and only an order with no payment live or paid expires.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import func, select, update

from orders.metrics import Metrics
from orders.models import Order, Payment, payments_table, utcnow
from orders.payments import LIVE, PaymentStatus
from orders.refunds import Refunds
from orders.settlement import Settlement
from orders.workflow import OrderStatus
from orders.writes import Actor

logger = logging.getLogger(__name__)

_CLAIMABLE = [s.value for s in LIVE] + [PaymentStatus.EXPIRED.value]
_LIVE_NAMES = frozenset(s.value for s in LIVE)


class Reconciler:
    """Polls gateways for due payments and expires unpaid orders; ``run_once`` or ``run``."""

    def __init__(
        self,
        settlement: Settlement,
        *,
        interval: float = 1.0,
        batch: int = 100,
        concurrency: int = 16,
        lease: float = 60.0,
        clock: Callable[[], datetime] = utcnow,
        name: str = "reconciler",
    ) -> None:
        self._settlement = settlement
        self._db = settlement.db
        self._metrics = settlement.metrics
        self._interval = interval
        self._batch = batch
        self._limit = asyncio.Semaphore(concurrency)
        self._lease = timedelta(seconds=lease)
        self._clock = clock
        self._actor = Actor.system("reconciler", name)
        self._refunds = Refunds(settlement, lease=lease)
        self._concurrency = concurrency

    @property
    def metrics(self) -> Metrics:
        """The metrics this reconciler counts into (its settlement's)."""
        return self._metrics

    async def run_once(self) -> int:
        """One pass: check every payment due now, then expire unpaid orders; how many acted on."""
        claimed = await self.claim()
        if claimed:
            await asyncio.gather(*(self._check(payment_id) for payment_id in claimed))
        expired = await self.expire_orders()
        # Refunds not yet settled, on the same schedule, rate limit and backoff as payments.
        refunds = await self._refunds.retry_due(batch=self._batch, concurrency=self._concurrency)
        await self.measure()
        return len(claimed) + expired + refunds

    async def claim(self) -> list[str]:
        """Take a lease on a batch of due payments that nobody else is checking."""
        now = self._clock()
        async with self._db.transaction() as session:
            statement = (
                select(Payment.id)
                .where(
                    Payment.status.in_(_CLAIMABLE),
                    Payment.next_check_at <= now,
                    (Payment.check_lease_until.is_(None)) | (Payment.check_lease_until < now),
                )
                .order_by(Payment.next_check_at)
                .limit(self._batch)
            )
            if self._db.is_postgres:
                statement = statement.with_for_update(skip_locked=True)
            ids = [str(i) for i in (await session.execute(statement)).scalars()]
            if ids:
                await session.execute(
                    update(payments_table)
                    .where(payments_table.c.id.in_(ids))
                    .values(check_lease_until=now + self._lease)
                )
        return ids

    async def _check(self, payment_id: str) -> None:
        async with self._limit:
            try:
                await self._settlement.check(payment_id, actor=self._actor, claimed=True)
            except asyncio.CancelledError:
                raise
            except Exception:
                # The lease runs out and the payment is claimed again on a later pass.
                logger.exception("check of payment %s failed", payment_id)

    async def expire_orders(self) -> int:
        """Expire unpaid orders past ``expires_at``, each after a last check of its payments."""
        now = self._clock()
        async with self._db.read() as session:
            due = (
                await session.execute(
                    select(Order.id, Order.expires_at)
                    .where(
                        Order.status == OrderStatus.PENDING_PAYMENT.value,
                        Order.expires_at <= now,
                    )
                    .order_by(Order.expires_at)
                    .limit(self._batch)
                )
            ).all()
            order_ids = [str(row.id) for row in due]
            expires = {str(row.id): row.expires_at for row in due}
            live = {
                str(p.order_id): p
                for p in (
                    await session.execute(
                        select(Payment.order_id, Payment.id, Payment.last_checked_at).where(
                            Payment.order_id.in_(order_ids),
                            Payment.status.in_([s.value for s in LIVE]),
                        )
                    )
                ).all()
            }
        expired = 0
        for order_id in order_ids:
            payment = live.get(order_id)
            if payment is None:
                if await self._settlement.expire_order(order_id, actor=self._actor):
                    expired += 1
                continue
            if payment.last_checked_at is not None and payment.last_checked_at >= expires[order_id]:
                continue  # asked since the order's expiry: the payment's own schedule goes on
            # The last check: approved at this very moment ends COMPLETED, never EXPIRED; still
            # in flight, the order waits for it (its schedule's timeout expires it, then this).
            async with self._limit:
                try:
                    result = await self._settlement.check(str(payment.id), actor=self._actor)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    logger.exception("last check of payment %s failed", payment.id)
                    continue
            if result.payment is not None and result.payment["status"] not in _LIVE_NAMES:
                if await self._settlement.expire_order(order_id, actor=self._actor):
                    expired += 1
        return expired

    async def measure(self) -> None:
        """Set the backlog gauges: payments due now, and the age of the oldest unsettled one."""
        now = self._clock()
        async with self._db.read() as session:
            due = (
                await session.execute(
                    select(func.count())
                    .select_from(Payment)
                    .where(Payment.status.in_(_CLAIMABLE), Payment.next_check_at <= now)
                )
            ).scalar_one()
            oldest = (
                await session.execute(
                    select(func.min(Payment.created_at)).where(
                        Payment.status.in_([s.value for s in LIVE])
                    )
                )
            ).scalar()
        self._metrics.payments_due.set(due)
        if isinstance(oldest, str):  # SQLite's MIN() hands back the stored text
            oldest = datetime.fromisoformat(oldest).replace(tzinfo=now.tzinfo)
        self._metrics.oldest_unsettled.set(
            (now - oldest).total_seconds() if oldest is not None else 0
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Pass after pass until ``stop``; a pass that fails is logged and retried."""
        logger.info("reconciler started (every %.1fs, batch %d)", self._interval, self._batch)
        passes = 0
        while not stop.is_set():
            try:
                count = await self.run_once()
                passes += 1
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("reconciler pass failed; retrying in %.1fs", self._interval)
                count = 0
            if count < self._batch:
                try:
                    await asyncio.wait_for(stop.wait(), timeout=self._interval)
                except TimeoutError:
                    pass
        logger.info("reconciler stopped after %d pass(es)", passes)
