"""The order workflow as data: statuses, who may move an order from one to another.

PURE: no I/O. A deployment with another lifecycle edits ``TRANSITIONS``, not the code.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum


class OrderStatus(StrEnum):
    """Where an order is in its lifecycle."""

    PENDING_PAYMENT = "PENDING_PAYMENT"
    CONFIRMED = "CONFIRMED"
    PREPARING = "PREPARING"
    READY = "READY"
    OUT_FOR_DELIVERY = "OUT_FOR_DELIVERY"
    DELIVERED = "DELIVERED"
    CANCELLED = "CANCELLED"
    EXPIRED = "EXPIRED"


class Mover(StrEnum):
    """Who asks for a transition: the customer, store staff, or the system itself."""

    CUSTOMER = "customer"
    POS = "pos"
    SYSTEM = "system"


class PaymentMethod(StrEnum):
    """How an order is paid: online through a gateway, or cash on delivery/pickup."""

    ONLINE = "online"
    CASH = "cash"


S = OrderStatus
C, P, Y = Mover.CUSTOMER, Mover.POS, Mover.SYSTEM

#: (from, to) -> who may make that move. Everything absent is forbidden.
TRANSITIONS: Mapping[tuple[OrderStatus, OrderStatus], frozenset[Mover]] = {
    (S.PENDING_PAYMENT, S.CONFIRMED): frozenset({P, Y}),
    (S.PENDING_PAYMENT, S.CANCELLED): frozenset({C, P, Y}),
    (S.PENDING_PAYMENT, S.EXPIRED): frozenset({Y}),
    (S.CONFIRMED, S.PREPARING): frozenset({P, Y}),
    (S.CONFIRMED, S.CANCELLED): frozenset({C, P, Y}),
    (S.PREPARING, S.READY): frozenset({P, Y}),
    (S.PREPARING, S.CANCELLED): frozenset({P, Y}),
    (S.READY, S.OUT_FOR_DELIVERY): frozenset({P, Y}),
    (S.READY, S.DELIVERED): frozenset({P, Y}),  # pickup
    (S.READY, S.CANCELLED): frozenset({P, Y}),
    (S.OUT_FOR_DELIVERY, S.DELIVERED): frozenset({P, Y}),
}

TERMINAL: frozenset[OrderStatus] = frozenset({S.DELIVERED, S.CANCELLED, S.EXPIRED})

#: Rank of each status along the main line; used to prove statuses never move backwards.
RANK: Mapping[OrderStatus, int] = {
    S.PENDING_PAYMENT: 0,
    S.CONFIRMED: 1,
    S.PREPARING: 2,
    S.READY: 3,
    S.OUT_FOR_DELIVERY: 4,
    S.DELIVERED: 5,
    S.CANCELLED: 6,
    S.EXPIRED: 6,
}


def initial_status(method: PaymentMethod) -> OrderStatus:
    """The status a new order starts in: online orders wait for payment, cash is confirmed."""
    return S.PENDING_PAYMENT if method is PaymentMethod.ONLINE else S.CONFIRMED


def allowed_next(status: OrderStatus, mover: Mover) -> list[OrderStatus]:
    """Statuses ``mover`` may move an order in ``status`` to, in workflow order."""
    return sorted(
        (to for (frm, to), who in TRANSITIONS.items() if frm is status and mover in who),
        key=lambda s: (RANK[s], s.value),
    )


def can_move(status: OrderStatus, to: OrderStatus, mover: Mover) -> bool:
    """Whether ``mover`` may move an order from ``status`` to ``to``."""
    return mover in TRANSITIONS.get((status, to), frozenset())


def is_open(status: OrderStatus) -> bool:
    """Whether the order can still change (it is not delivered, cancelled or expired)."""
    return status not in TERMINAL


def parse_status(value: object) -> OrderStatus | None:
    """The OrderStatus named by ``value``, or None if it names none."""
    if not isinstance(value, str):
        return None
    try:
        return OrderStatus(value)
    except ValueError:
        return None
