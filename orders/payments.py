"""The payment state machine as data: what a gateway's answer may do to a payment and a refund.

PURE: no I/O. The write path asks ``decide_payment`` what an observation means and acts on the
verdict; the webhook endpoint, the reconciler, the read-triggered check and the verify call all
go through it, so a duplicate, late or reordered answer has one meaning wherever it comes from.

The rules (DESIGN §1.5–1.6, §4):

- statuses never move backwards; a failure never overrides a success;
- FAILED / EXPIRED / CANCELLED give way only to a success the gateway's **status API**
  confirms (a *late success*: the order is flagged for review, and refunded if it is over);
- an observation that cannot bind its body (PhonePe v2's fixed Authorization header) is a
  hint: whatever it says is confirmed through the status API before it is applied;
- an answer the adapter does not recognise changes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum, StrEnum
from typing import Generic, TypeVar

from gateways.base import PaymentStatus as Observed
from gateways.base import RefundStatus as ObservedRefund
from orders.workflow import OrderStatus


class PaymentStatus(StrEnum):
    """Where one payment attempt stands in our books."""

    INITIATED = "INITIATED"
    PENDING = "PENDING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    EXPIRED = "EXPIRED"
    CANCELLED = "CANCELLED"
    PARTIALLY_REFUNDED = "PARTIALLY_REFUNDED"
    REFUNDED = "REFUNDED"


class RefundStatus(StrEnum):
    """Where one refund stands in our books."""

    REQUESTED = "REQUESTED"
    PENDING = "PENDING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"


P = PaymentStatus

#: Still waiting for the gateway: the reconciler polls these.
LIVE: frozenset[PaymentStatus] = frozenset({P.INITIATED, P.PENDING})
#: Money was taken (some of it may have gone back since).
PAID: frozenset[PaymentStatus] = frozenset({P.COMPLETED, P.PARTIALLY_REFUNDED, P.REFUNDED})
#: Settled without money: only a status-API-confirmed success can move these (late success).
UNSUCCESSFUL: frozenset[PaymentStatus] = frozenset({P.FAILED, P.EXPIRED, P.CANCELLED})


class Evidence(Enum):
    """How far an observation can be trusted, weakest first."""

    #: A webhook whose signature does not bind its body: says only "ask the gateway".
    HINT = 1
    #: A webhook whose signature covers its body.
    SIGNED = 2
    #: The gateway's own status API, asked by us.
    STATUS_API = 3


class Verdict(Enum):
    """What to do with an observation."""

    #: Move the payment to ``Decision.to``.
    APPLY = "apply"
    #: Move to COMPLETED after FAILED / EXPIRED / CANCELLED: flag the order for review.
    LATE_SUCCESS = "late_success"
    #: It would change the payment, but the evidence is too weak: ask the status API first.
    CONFIRM = "confirm"
    #: Already there (a duplicate): record it, change nothing.
    SAME = "same"
    #: It would move the payment backwards, or a failure over a success: record, change nothing.
    STALE = "stale"
    #: The gateway's answer means nothing yet (unknown state or code): change nothing.
    UNKNOWN = "unknown"


#: The verdicts that change the payment row.
CHANGES: frozenset[Verdict] = frozenset({Verdict.APPLY, Verdict.LATE_SUCCESS})


StatusT = TypeVar("StatusT", PaymentStatus, RefundStatus)


@dataclass(frozen=True, slots=True)
class Decision(Generic[StatusT]):
    """A verdict, the status it moves to (for APPLY / LATE_SUCCESS / CONFIRM), and why."""

    verdict: Verdict
    to: StatusT | None
    reason: str

    @property
    def changes(self) -> bool:
        """Whether the payment row moves."""
        return self.verdict in CHANGES


#: What each gateway observation means in our books (UNKNOWN means nothing).
_OBSERVED: Mapping[Observed, PaymentStatus | None] = {
    Observed.INITIATED: P.INITIATED,
    Observed.PENDING: P.PENDING,
    Observed.COMPLETED: P.COMPLETED,
    Observed.FAILED: P.FAILED,
    Observed.EXPIRED: P.EXPIRED,
    Observed.CANCELLED: P.CANCELLED,
    Observed.UNKNOWN: None,
}

#: Rank along the one forward line INITIATED → PENDING → settled; equal ranks never replace
#: each other (the first settlement wins) except by the late-success rule.
_RANK: Mapping[PaymentStatus, int] = {
    P.INITIATED: 0,
    P.PENDING: 1,
    P.COMPLETED: 2,
    P.FAILED: 2,
    P.EXPIRED: 2,
    P.CANCELLED: 2,
    P.PARTIALLY_REFUNDED: 3,
    P.REFUNDED: 4,
}


def decide_payment(
    current: PaymentStatus, observed: Observed, evidence: Evidence
) -> Decision[PaymentStatus]:
    """What an observation of the gateway does to a payment that is ``current``."""
    target = _OBSERVED[observed]
    if target is None:
        return Decision(Verdict.UNKNOWN, None, f"gateway state {observed.value} means nothing")
    if target is current or (target is P.COMPLETED and current in PAID):
        return Decision(Verdict.SAME, None, f"already {current.value}")
    if current in PAID:
        return Decision(Verdict.STALE, None, f"{target.value} after {current.value} is ignored")
    if current in UNSUCCESSFUL:
        if target is not P.COMPLETED:
            return Decision(Verdict.STALE, None, f"{target.value} after {current.value} is ignored")
        if evidence is Evidence.STATUS_API:
            return Decision(
                Verdict.LATE_SUCCESS, P.COMPLETED, f"success after {current.value}, confirmed"
            )
        return Decision(
            Verdict.CONFIRM, P.COMPLETED, f"success after {current.value} needs the status API"
        )
    # current is live
    if _RANK[target] < _RANK[current]:
        return Decision(Verdict.STALE, None, f"{target.value} after {current.value} is ignored")
    if evidence is Evidence.HINT:
        return Decision(Verdict.CONFIRM, target, "the webhook cannot bind its body")
    return Decision(Verdict.APPLY, target, f"{current.value} -> {target.value}")


def amount_mismatch(
    *,
    expected_amount: int,
    expected_currency: str,
    observed_amount: int | None,
    observed_currency: str | None,
) -> str | None:
    """Why the gateway's amount or currency disagrees with the payment's, or None if it agrees.

    A gateway that does not say (None) is not a disagreement; one that says otherwise is.
    """
    if observed_currency is not None and observed_currency.upper() != expected_currency.upper():
        return f"currency {observed_currency} differs from the payment's {expected_currency}"
    if observed_amount is not None and observed_amount != expected_amount:
        return f"amount {observed_amount} differs from the payment's {expected_amount}"
    return None


def refunded_status(paid: int, refunded: int) -> PaymentStatus:
    """The status of a completed payment of ``paid`` after ``refunded`` went back (rows' sums)."""
    if paid <= 0:
        raise ValueError("a completed payment has a positive amount")
    if not 0 <= refunded <= paid:
        raise ValueError(f"refunded {refunded} is outside 0..{paid}")
    if refunded == 0:
        return P.COMPLETED
    if refunded < paid:
        return P.PARTIALLY_REFUNDED
    return P.REFUNDED


R = RefundStatus

_REFUND_OBSERVED: Mapping[ObservedRefund, RefundStatus | None] = {
    ObservedRefund.REQUESTED: R.REQUESTED,
    ObservedRefund.PENDING: R.PENDING,
    ObservedRefund.SUCCEEDED: R.SUCCEEDED,
    ObservedRefund.FAILED: R.FAILED,
    ObservedRefund.UNKNOWN: None,
}
_REFUND_RANK: Mapping[RefundStatus, int] = {
    R.REQUESTED: 0,
    R.PENDING: 1,
    R.SUCCEEDED: 2,
    R.FAILED: 2,
}

#: A refund still waiting for the gateway.
REFUND_LIVE: frozenset[RefundStatus] = frozenset({R.REQUESTED, R.PENDING})


def decide_refund(
    current: RefundStatus, observed: ObservedRefund, evidence: Evidence
) -> Decision[RefundStatus]:
    """What an observation of the gateway does to a refund that is ``current``.

    Like payments: forward only, the first settlement wins, and a success after FAILED is
    believed only from the status API (the money did go back, so the books must say so).
    """
    target = _REFUND_OBSERVED[observed]
    if target is None:
        return Decision(
            Verdict.UNKNOWN, None, f"gateway refund state {observed.value} means nothing"
        )
    if target is current:
        return Decision(Verdict.SAME, None, f"already {current.value}")
    if current is R.SUCCEEDED:
        return Decision(Verdict.STALE, None, f"{target.value} after SUCCEEDED is ignored")
    if current is R.FAILED:
        if target is not R.SUCCEEDED:
            return Decision(Verdict.STALE, None, f"{target.value} after FAILED is ignored")
        if evidence is Evidence.STATUS_API:
            return Decision(Verdict.LATE_SUCCESS, target, "refund success after FAILED")
        return Decision(Verdict.CONFIRM, target, "success after FAILED needs the status API")
    if _REFUND_RANK[target] < _REFUND_RANK[current]:
        return Decision(Verdict.STALE, None, f"{target.value} after {current.value} is ignored")
    if evidence is Evidence.HINT:
        return Decision(Verdict.CONFIRM, target, "the webhook cannot bind its body")
    return Decision(Verdict.APPLY, target, f"{current.value} -> {target.value}")


class FailurePolicy(StrEnum):
    """What a failed payment does to an order nobody else is paying (``PAYMENT_FAILURE_POLICY``)."""

    #: The order stays PENDING_PAYMENT: the customer may retry (the default).
    RETRY = "retry"
    #: The order is cancelled.
    CANCEL = "cancel"


def order_after_payment(
    order: OrderStatus,
    payment: PaymentStatus,
    *,
    amount: int,
    paid: int,
    live_attempts: int,
    on_failure: FailurePolicy,
) -> OrderStatus | None:
    """The status an order moves to after one of its payments became ``payment``, or None.

    ``paid`` is what the order's completed payments add up to now (rows, not a counter);
    ``live_attempts`` counts its other attempts still INITIATED or PENDING.
    """
    if order is not OrderStatus.PENDING_PAYMENT:
        return None
    if payment is P.COMPLETED:
        return OrderStatus.CONFIRMED if paid >= amount else None
    if (
        payment in UNSUCCESSFUL
        and on_failure is FailurePolicy.CANCEL
        and live_attempts == 0
        and paid == 0
    ):
        return OrderStatus.CANCELLED
    return None


def late_success_needs_refund(order: OrderStatus) -> bool:
    """Whether money that arrived late must go back: the order is already over without it."""
    return order in (OrderStatus.CANCELLED, OrderStatus.EXPIRED)


def late_success_refund(order: OrderStatus, *, amount: int, paid: int, payment: int) -> int:
    """What must go back of a payment of ``payment`` that succeeded late, now that the order's
    paid payments (this one included) add up to ``paid``: all of it if the order is over
    (CANCELLED / EXPIRED), else only what is paid beyond the order's ``amount`` (an
    over-payment of a split order), never more than the payment itself."""
    if late_success_needs_refund(order):
        return payment
    return min(payment, max(paid - amount, 0))
