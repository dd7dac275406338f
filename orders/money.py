"""The money side of an order: its payment summary, derived from the payment and refund rows.

There is no stored copy to drift: the write path computes the summary from the rows inside the
transaction that changes them (so an event's order snapshot carries the totals as of that
commit), and reads compute it with the same two grouped queries.

- ``paid``: the sum of the order's payments that took money (COMPLETED, PARTIALLY_REFUNDED,
  REFUNDED);
- ``refunded``: the sum of its refunds that SUCCEEDED;
- ``outstanding``: what is still owed, ``amount - paid`` (never below 0; 0 once the order is
  CANCELLED or EXPIRED: nothing is owed on it any more). A refund does not make money owed
  again;
- ``can_pay``: something is owed, the order is not terminal, and live attempts do not already
  cover it;
- ``can_refund``: paid, minus refunded, minus refunds still in flight, is above 0.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, literal, select, union_all
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from orders import documents
from orders.models import payments_table, refunds_table
from orders.payments import LIVE, PAID, RefundStatus

#: Order statuses on which nothing is owed any more.
_CLOSED = frozenset({"CANCELLED", "EXPIRED"})
_PAID = tuple(sorted(s.value for s in PAID))
_LIVE = tuple(sorted(s.value for s in LIVE))
_REFUND_IN_FLIGHT = (RefundStatus.REQUESTED.value, RefundStatus.PENDING.value)
#: The payment statuses and the refund statuses the sums count.
PAID_AND_LIVE = _PAID + _LIVE
REFUND_COUNTED = (RefundStatus.SUCCEEDED.value, *_REFUND_IN_FLIGHT)


@dataclass(frozen=True, slots=True)
class Sums:
    """An order's payment and refund rows, summed by what they mean."""

    paid: int = 0
    live: int = 0
    refunded: int = 0
    refunding: int = 0


def summary(*, amount: int, status: str, currency: str, sums: Sums) -> dict[str, Any]:
    """The ``payment_summary`` of an order with these sums (PURE)."""
    outstanding = 0 if status in _CLOSED else max(amount - sums.paid, 0)
    refundable = sums.paid - sums.refunded - sums.refunding
    return {
        "paid": sums.paid,
        "refunded": sums.refunded,
        "outstanding": outstanding,
        "currency": currency,
        "can_pay": outstanding > 0 and outstanding > sums.live,
        "can_refund": refundable > 0,
    }


def refundable(sums: Sums) -> int:
    """What may still be refunded: paid, minus refunded, minus refunds in flight."""
    return max(sums.paid - sums.refunded - sums.refunding, 0)


Executor = AsyncSession | AsyncConnection


async def load_sums(executor: Executor, order_ids: Sequence[str]) -> dict[str, Sums]:
    """The sums of each order in ``order_ids`` (an order without rows is absent: all zero)."""
    if not order_ids:
        return {}
    # One round trip: the payments' and the refunds' sums, by order and status.
    p, r = payments_table.c, refunds_table.c
    rows = await executor.execute(
        union_all(
            select(p.order_id, literal("payment"), p.status, func.sum(p.amount))
            .where(p.order_id.in_(order_ids), p.status.in_(PAID_AND_LIVE))
            .group_by(p.order_id, p.status),
            select(r.order_id, literal("refund"), r.status, func.sum(r.amount))
            .where(
                r.order_id.in_(order_ids),
                r.status.in_(REFUND_COUNTED),
            )
            .group_by(r.order_id, r.status),
        )
    )
    return bucket(tuple(row) for row in rows)


def bucket(rows: Iterable[tuple[Any, ...]]) -> dict[str, Sums]:
    """Each order's Sums from rows of (order id, "payment" or "refund", status, total)."""
    found: dict[str, dict[str, int]] = {}
    for order_id, kind, status, total in rows:
        if kind == "payment":
            name = "paid" if status in _PAID else "live"
        else:
            name = "refunded" if status == RefundStatus.SUCCEEDED.value else "refunding"
        sums = found.setdefault(order_id, {})
        sums[name] = sums.get(name, 0) + int(total or 0)
    return {order_id: Sums(**values) for order_id, values in found.items()}


async def summaries(executor: Executor, orders: Iterable[Any]) -> dict[str, dict[str, Any]]:
    """``payment_summary`` of each order (rows or ORM objects), by order id."""
    listed = list(orders)
    sums = await load_sums(executor, [order.id for order in listed])
    return {
        order.id: summary(
            amount=order.amount,
            status=order.status,
            currency=order.currency,
            sums=sums.get(order.id, Sums()),
        )
        for order in listed
    }


async def summary_of(executor: Executor, order: Any) -> dict[str, Any]:
    """``payment_summary`` of one order."""
    return (await summaries(executor, [order]))[order.id]


async def snapshots(executor: Executor, orders: Iterable[Any]) -> list[dict[str, Any]]:
    """The order snapshots of ``orders``, each with its ``payment_summary`` from the rows."""
    listed = list(orders)
    found = await summaries(executor, listed)
    return [documents.order_snapshot(order, found[order.id]) for order in listed]
