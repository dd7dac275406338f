"""Refunds as their own records (REQUESTED → PENDING → SUCCEEDED | FAILED), on the write path.

``Refunds.request`` takes an amount (default: all that may still be refunded) and spreads it
across the order's paid payments, newest first, in one transaction with the order locked:
a manual payment's refund is recorded SUCCEEDED at once (the money went back over the
counter); a gateway payment's is REQUESTED, then sent through the adapter's ``refund()``
after the commit and its answer applied with ``apply``. A payment's status
(PARTIALLY_REFUNDED / REFUNDED) follows from its SUCCEEDED refund rows. Every change is an
event on the order's streams; the order snapshot in it carries the totals as of its commit.

A transport error, a timeout or a 429 from the gateway leaves the refund REQUESTED (never
FAILED); only the gateway's refusal fails it.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from gateways.base import GatewayRejected, GatewayUnavailable, RefundRequest, RefundState
from gateways.base import RefundStatus as Observed
from orders import documents, money, receipts
from orders.actors import Role
from orders.errors import Conflict, Invalid, NotFound
from orders.models import orders_table, payments_table, refunds_table, utcnow
from orders.payments import PAID, RefundStatus, refunded_status
from orders.settlement import (
    _LOCK_ORDER,
    _UPDATE_ORDER,
    MANUAL_GATEWAY,
    Settlement,
    _order_row,
    _order_values,
    payment_view,
)
from orders.writes import ORDER_ID, Actor, Delivery, append_event, visible_to

logger = logging.getLogger(__name__)

REFUND_STATUS = "refund.status"
_IN_FLIGHT = (RefundStatus.REQUESTED.value, RefundStatus.PENDING.value)
_COUNTED = (*_IN_FLIGHT, RefundStatus.SUCCEEDED.value)
_SETTLED = {Observed.SUCCEEDED: RefundStatus.SUCCEEDED, Observed.FAILED: RefundStatus.FAILED}


def new_refund_id() -> str:
    """A random refund id (also our idempotency reference at the gateway)."""
    return "ref_" + secrets.token_hex(12)


def refund_view(row: Any) -> dict[str, Any]:
    """The public JSON form of a refund."""
    return {
        "id": row.id,
        "order_id": row.order_id,
        "payment_id": row.payment_id,
        "amount": row.amount,
        "currency": row.currency,
        "status": row.status,
        "reason": row.reason,
        "gateway_ref": row.gateway_ref,
        "created_at": documents.iso(row.created_at),
        "updated_at": documents.iso(row.updated_at),
    }


def spread(amount: int, refundable: list[tuple[str, int]]) -> list[tuple[str, int]]:
    """Split ``amount`` over (payment id, refundable) pairs given newest first (PURE)."""
    parts = []
    left = amount
    for payment_id, room in refundable:
        if left <= 0:
            break
        take = min(room, left)
        if take > 0:
            parts.append((payment_id, take))
            left -= take
    if left > 0:
        raise ValueError(f"{left} cannot be placed")
    return parts


@dataclass(frozen=True, slots=True)
class Requested:
    """What a refund request did: its refund rows and the order after it."""

    refunds: list[dict[str, Any]]
    order: dict[str, Any]


class Refunds:
    """Requests, sends and settles refunds through the same transaction shape as payments."""

    def __init__(self, settlement: Settlement) -> None:
        self.settlement = settlement
        self.db = settlement.db

    async def request(
        self, *, order_id: str, amount: int | None, reason: str, actor: Actor
    ) -> Requested:
        """Refund ``amount`` (default: all refundable) of the order; 404 / 409 / 422."""
        if not ORDER_ID.fullmatch(order_id):
            raise NotFound("no such order")
        now = utcnow()
        deliveries: list[Delivery] = []
        event_ids: list[int] = []
        to_send: list[str] = []
        async with self.db.transaction() as session:
            conn = await session.connection()
            row = (await conn.execute(_LOCK_ORDER, {"order_id": order_id})).first()
            if row is None:
                raise NotFound("no such order")
            order = _order_row(row._mapping)
            principal = actor.principal
            if principal is None or principal.role is Role.CUSTOMER:
                raise NotFound("no such order")
            if not visible_to(order, principal):
                raise NotFound("no such order")
            payments = await _paid_payments(conn, order_id)
            rooms = [(p.id, p.amount - await _counted(conn, p.id)) for p in payments]
            refundable = sum(room for _, room in rooms)
            if refundable <= 0:
                raise Conflict("nothing of this order is left to refund", code="nothing_to_refund")
            wanted = refundable if amount is None else amount
            if wanted > refundable:
                raise Invalid(
                    f"amount {wanted} is more than the {refundable} that may be refunded",
                    field="amount",
                    refundable=refundable,
                )
            by_id = {p.id: p for p in payments}
            created = []
            for payment_id, part in spread(wanted, rooms):
                payment = by_id[payment_id]
                manual = payment.gateway == MANUAL_GATEWAY
                refund_id = new_refund_id()
                status = RefundStatus.SUCCEEDED if manual else RefundStatus.REQUESTED
                await conn.execute(
                    refunds_table.insert(),
                    {
                        "id": refund_id,
                        "order_id": order_id,
                        "payment_id": payment_id,
                        "amount": part,
                        "currency": payment.currency,
                        "status": status.value,
                        "reason": reason,
                        "idempotency_key": refund_id,
                        "created_at": now,
                        "updated_at": now,
                    },
                )
                if not manual:
                    to_send.append(refund_id)
                order = await self._record(
                    session, conn, order, refund_id, None, actor, deliveries, event_ids
                )
                created.append(refund_id)
            views = [refund_view(r) for r in await _refunds(conn, created)]
            summary = await money.summary_of(conn, order)
        await self.settlement.publisher.publish(deliveries, event_ids)
        logger.info(
            "refund of %d for order %s requested by %s: %s", wanted, order_id, actor.name, created
        )
        for refund_id in to_send:
            await self.send(refund_id)
        if to_send:
            async with self.db.read() as session:
                views = [refund_view(r) for r in await _refunds(session, created)]
                fresh = (await session.execute(select_order(order_id))).one()
                summary = await money.summary_of(session, fresh)
                order = _order_row(fresh._mapping)
        return Requested(views, documents.order_snapshot(order, summary))

    async def retry_due(self, *, older_than: float = 30.0, batch: int = 100) -> int:
        """Reconciler pass: re-send REQUESTED gateway refunds (our id makes it idempotent) and
        ask about PENDING ones, each untouched for ``older_than`` s; how many were tried.

        The claim bumps ``updated_at`` (a lease: other reconcilers skip it for ``older_than``);
        on PostgreSQL with SKIP LOCKED, so several reconcilers never take the same refund.
        A spent rate limit or a gateway that cannot answer leaves the refund as it is.
        """
        now = utcnow()
        async with self.db.transaction() as session:
            statement = (
                select(refunds_table.c.id)
                .join(payments_table, payments_table.c.id == refunds_table.c.payment_id)
                .where(
                    refunds_table.c.status.in_(_IN_FLIGHT),
                    refunds_table.c.updated_at <= now - timedelta(seconds=older_than),
                    payments_table.c.gateway != MANUAL_GATEWAY,
                )
                .order_by(refunds_table.c.updated_at)
                .limit(batch)
            )
            if self.db.is_postgres:
                statement = statement.with_for_update(of=refunds_table, skip_locked=True)
            ids = [str(i) for i in (await session.execute(statement)).scalars()]
            if ids:
                await session.execute(
                    update(refunds_table).where(refunds_table.c.id.in_(ids)).values(updated_at=now)
                )
        for refund_id in ids:
            try:
                await self.send(refund_id, rate_limited=True)
            except Exception:
                logger.exception("refund %s: retry failed; it stays as it is", refund_id)
        return len(ids)

    async def send(self, refund_id: str, *, rate_limited: bool = False) -> None:
        """Ask the payment's gateway to refund (REQUESTED) or how it stands (PENDING); apply
        its answer. Unavailable, or out of rate budget: the refund stays as it is."""
        async with self.db.read() as session:
            refund = (
                await session.execute(select(refunds_table).where(refunds_table.c.id == refund_id))
            ).one()
            payment = (
                await session.execute(
                    select(payments_table).where(payments_table.c.id == refund.payment_id)
                )
            ).one()
        gateway = self.settlement.gateways.get(payment.gateway)
        if gateway is None:
            logger.warning("refund %s: gateway %s is not offered here", refund_id, payment.gateway)
            return
        if refund.status not in _IN_FLIGHT:
            return
        limiter = self.settlement.limiter
        if (
            rate_limited
            and limiter is not None
            and not await limiter.acquire(payment.gateway, wait=False)
        ):
            return
        request = RefundRequest(
            reference=refund_id,
            payment_ref=payment.gateway_ref,
            amount=refund.amount,
            currency=refund.currency,
            reason=refund.reason,
        )
        try:
            if refund.status == RefundStatus.PENDING.value:
                state = await gateway.fetch_refund(refund_id, refund_ref=refund.gateway_ref)
            else:
                state = await gateway.refund(request)
        except GatewayUnavailable as exc:
            # Never FAILED by a transport error: it stays REQUESTED for a later try.
            logger.warning("refund %s: gateway unavailable: %s", refund_id, exc)
            return
        except GatewayRejected as exc:
            logger.warning("refund %s: refused by the gateway: %s", refund_id, exc)
            state = RefundState(Observed.FAILED, refund_id, None, gateway_status=str(exc))
        await self.apply(refund_id, state, actor=Actor.system(source="system"))

    async def apply(self, refund_id: str, state: RefundState, *, actor: Actor) -> bool:
        """Move a refund by a gateway's answer (forward only); True if it moved."""
        if state.status is Observed.UNKNOWN or state.status is Observed.REQUESTED:
            return False
        target = _SETTLED.get(state.status, RefundStatus.PENDING)
        deliveries: list[Delivery] = []
        event_ids: list[int] = []
        async with self.db.transaction() as session:
            conn = await session.connection()
            order_id = (
                await conn.execute(
                    select(refunds_table.c.order_id).where(refunds_table.c.id == refund_id)
                )
            ).scalar_one()
            order = _order_row(
                (await conn.execute(_LOCK_ORDER, {"order_id": order_id})).one()._mapping
            )
            refund = (
                await conn.execute(
                    select(refunds_table).where(refunds_table.c.id == refund_id).with_for_update()
                )
            ).one()
            current = RefundStatus(refund.status)
            settled = current in (RefundStatus.SUCCEEDED, RefundStatus.FAILED)
            if settled or current == target:
                return False
            await conn.execute(
                update(refunds_table)
                .where(refunds_table.c.id == refund_id)
                .values(
                    status=target.value,
                    gateway_ref=state.refund_ref or refund.gateway_ref,
                    updated_at=utcnow(),
                )
            )
            await self._record(
                session, conn, order, refund_id, current.value, actor, deliveries, event_ids
            )
        await self.settlement.publisher.publish(deliveries, event_ids)
        return True

    async def _record(
        self,
        session: AsyncSession,
        conn: AsyncConnection,
        order: documents.OrderRow,
        refund_id: str,
        from_status: str | None,
        actor: Actor,
        deliveries: list[Delivery],
        event_ids: list[int],
    ) -> documents.OrderRow:
        """The refund's event, and its payment's status from the SUCCEEDED refund rows."""
        refund = (await _refunds(conn, [refund_id]))[0]
        now = utcnow()
        payment = (
            await conn.execute(
                select(payments_table).where(payments_table.c.id == refund.payment_id)
            )
        ).one()
        succeeded = await _counted(conn, payment.id, (RefundStatus.SUCCEEDED.value,))
        new_status = refunded_status(payment.amount, succeeded)
        moved_payment = new_status.value != payment.status
        if moved_payment:
            await conn.execute(
                update(payments_table)
                .where(payments_table.c.id == payment.id)
                .values(status=new_status.value)
            )
        order = dataclasses.replace(
            order,
            payment_status=new_status.value if moved_payment else order.payment_status,
            version=order.version + 1,
            updated_at=now,
        )
        await conn.execute(_UPDATE_ORDER, _order_values(order))
        event, moved = await append_event(
            session,
            order,
            kind=REFUND_STATUS,
            from_status=from_status,
            to_status=refund.status,
            actor=actor,
            note=f"refund {refund.id} of {refund.amount}: {refund.reason}",
            extra={"refund": refund_view(refund)},
        )
        deliveries.extend(moved)
        event_ids.append(event.id)
        if moved_payment:
            after = (
                await conn.execute(select(payments_table).where(payments_table.c.id == payment.id))
            ).one()
            event, moved = await append_event(
                session,
                order,
                kind="payment.status",
                from_status=payment.status,
                to_status=new_status.value,
                actor=actor,
                note=f"refund {refund.id}",
                extra={"payment": payment_view(after)},
            )
            deliveries.extend(moved)
            event_ids.append(event.id)
        await receipts.after_refund(
            session,
            order,
            refund.id,
            actor=actor,
            tax_rate_bp=self.settlement.receipt_tax_rate_bp,
            deliveries=deliveries,
            event_ids=event_ids,
        )
        return order


def select_order(order_id: str) -> Any:
    """The order's row (no lock)."""
    return select(orders_table).where(orders_table.c.id == order_id)


async def _paid_payments(conn: AsyncConnection, order_id: str) -> list[Any]:
    """The order's paid payments, newest first (the order a refund is spread in)."""
    rows = await conn.execute(
        select(payments_table)
        .where(
            payments_table.c.order_id == order_id,
            payments_table.c.status.in_(sorted(s.value for s in PAID)),
        )
        .order_by(payments_table.c.settled_at.desc(), payments_table.c.created_at.desc())
        .with_for_update()
    )
    return list(rows)


async def _counted(
    conn: AsyncConnection, payment_id: str, statuses: tuple[str, ...] = _COUNTED
) -> int:
    total = (
        await conn.execute(
            select(func.coalesce(func.sum(refunds_table.c.amount), 0)).where(
                refunds_table.c.payment_id == payment_id, refunds_table.c.status.in_(statuses)
            )
        )
    ).scalar_one()
    return int(total)


async def _refunds(executor: AsyncConnection | AsyncSession, ids: list[str]) -> list[Any]:
    rows = await executor.execute(
        select(refunds_table).where(refunds_table.c.id.in_(ids)).order_by(refunds_table.c.id)
    )
    by_id = {row.id: row for row in rows}
    return [by_id[i] for i in ids]
