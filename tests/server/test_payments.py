"""PURE, exhaustive: every (current, observed, evidence) cell of the payment and refund machines.

The expected tables are written out by hand from DESIGN.md §1.5–1.6 and §4, not derived from
``orders.payments``, so a rule changes in both places on purpose.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateways.base import PaymentStatus as Observed
from gateways.base import RefundStatus as ObservedRefund
from orders.payments import (
    LIVE,
    PAID,
    UNSUCCESSFUL,
    Evidence,
    FailurePolicy,
    PaymentStatus,
    RefundStatus,
    Verdict,
    amount_mismatch,
    decide_payment,
    decide_refund,
    late_success_needs_refund,
    late_success_refund,
    order_after_payment,
    refunded_status,
)
from orders.workflow import OrderStatus

CURRENT = [
    "INITIATED",
    "PENDING",
    "COMPLETED",
    "FAILED",
    "EXPIRED",
    "CANCELLED",
    "PARTIALLY_REFUNDED",
    "REFUNDED",
]
OBSERVED = ["INITIATED", "PENDING", "COMPLETED", "FAILED", "EXPIRED", "CANCELLED", "UNKNOWN"]
SETTLED_WITHOUT_MONEY = ["FAILED", "EXPIRED", "CANCELLED"]
MONEY_TAKEN = ["COMPLETED", "PARTIALLY_REFUNDED", "REFUNDED"]


def expected_payment(current: str, observed: str, evidence: str) -> tuple[str, str | None]:
    """The verdict and target of DESIGN's rules, spelled out case by case."""
    if observed == "UNKNOWN":
        return "unknown", None
    if current in MONEY_TAKEN:
        # Nothing moves a paid payment: a success again is a duplicate, the rest is stale.
        return ("same", None) if observed == "COMPLETED" else ("stale", None)
    if current in SETTLED_WITHOUT_MONEY:
        if observed == current:
            return "same", None
        if observed != "COMPLETED":
            return "stale", None  # the first settlement wins
        if evidence == "STATUS_API":
            return "late_success", "COMPLETED"
        return "confirm", "COMPLETED"
    if current == "INITIATED":
        if observed == "INITIATED":
            return "same", None
    if current == "PENDING":
        if observed == "PENDING":
            return "same", None
        if observed == "INITIATED":
            return "stale", None  # backwards
    if evidence == "HINT":
        return "confirm", observed
    return "apply", observed


@pytest.mark.parametrize(
    ("current", "observed", "evidence"),
    list(itertools.product(CURRENT, OBSERVED, ["HINT", "SIGNED", "STATUS_API"])),
)
def test_every_cell_of_the_payment_machine(current: str, observed: str, evidence: str) -> None:
    decision = decide_payment(PaymentStatus(current), Observed(observed), Evidence[evidence])
    verdict, target = expected_payment(current, observed, evidence)
    assert decision.verdict.value == verdict, decision
    assert (decision.to.value if decision.to else None) == target, decision
    assert decision.reason
    assert decision.changes == (verdict in ("apply", "late_success"))


def test_the_tables_cover_every_status_of_both_enums() -> None:
    assert [s.value for s in PaymentStatus] == CURRENT
    assert [s.value for s in Observed] == OBSERVED
    assert set(LIVE) | set(PAID) | set(UNSUCCESSFUL) == set(PaymentStatus)
    assert not (LIVE & PAID or LIVE & UNSUCCESSFUL or PAID & UNSUCCESSFUL)


RANK = {
    "INITIATED": 0,
    "PENDING": 1,
    "COMPLETED": 2,
    "FAILED": 2,
    "EXPIRED": 2,
    "CANCELLED": 2,
    "PARTIALLY_REFUNDED": 3,
    "REFUNDED": 4,
}


@given(
    st.lists(
        st.tuples(st.sampled_from(OBSERVED), st.sampled_from(["HINT", "SIGNED", "STATUS_API"])),
        max_size=30,
    )
)
def test_any_sequence_of_answers_never_moves_a_payment_backwards_or_fails_a_success(
    answers: list[tuple[str, str]],
) -> None:
    status = PaymentStatus.INITIATED
    ever_paid = False
    for observed, evidence in answers:
        decision = decide_payment(status, Observed(observed), Evidence[evidence])
        if decision.changes:
            assert decision.to is not None
            late = decision.verdict is Verdict.LATE_SUCCESS
            assert RANK[decision.to.value] > RANK[status.value] or late
            assert not late or evidence == "STATUS_API"
            status = decision.to
        ever_paid = ever_paid or status in PAID
        assert not ever_paid or status in PAID  # once paid, always paid


REFUND_CURRENT = ["REQUESTED", "PENDING", "SUCCEEDED", "FAILED"]
REFUND_OBSERVED = ["REQUESTED", "PENDING", "SUCCEEDED", "FAILED", "UNKNOWN"]


def expected_refund(current: str, observed: str, evidence: str) -> tuple[str, str | None]:
    if observed == "UNKNOWN":
        return "unknown", None
    if observed == current:
        return "same", None
    if current == "SUCCEEDED":
        return "stale", None
    if current == "FAILED":
        if observed != "SUCCEEDED":
            return "stale", None
        return (
            ("late_success", "SUCCEEDED") if evidence == "STATUS_API" else ("confirm", "SUCCEEDED")
        )
    if current == "PENDING" and observed == "REQUESTED":
        return "stale", None
    return ("confirm", observed) if evidence == "HINT" else ("apply", observed)


@pytest.mark.parametrize(
    ("current", "observed", "evidence"),
    list(itertools.product(REFUND_CURRENT, REFUND_OBSERVED, ["HINT", "SIGNED", "STATUS_API"])),
)
def test_every_cell_of_the_refund_machine(current: str, observed: str, evidence: str) -> None:
    decision = decide_refund(RefundStatus(current), ObservedRefund(observed), Evidence[evidence])
    verdict, target = expected_refund(current, observed, evidence)
    assert decision.verdict.value == verdict, decision
    assert (decision.to.value if decision.to else None) == target, decision
    assert decision.reason


@pytest.mark.parametrize(
    ("paid", "refunded", "status"),
    [
        (1000, 0, "COMPLETED"),
        (1000, 1, "PARTIALLY_REFUNDED"),
        (1000, 999, "PARTIALLY_REFUNDED"),
        (1000, 1000, "REFUNDED"),
        (1, 1, "REFUNDED"),
    ],
)
def test_the_refunded_status_comes_from_the_sums(paid: int, refunded: int, status: str) -> None:
    assert refunded_status(paid, refunded).value == status


@pytest.mark.parametrize(("paid", "refunded"), [(0, 0), (-5, 0), (100, -1), (100, 101)])
def test_impossible_sums_are_refused(paid: int, refunded: int) -> None:
    with pytest.raises(ValueError):
        refunded_status(paid, refunded)


@pytest.mark.parametrize(
    ("observed_amount", "observed_currency", "problem"),
    [
        (None, None, None),
        (1500, None, None),
        (None, "INR", None),
        (1500, "INR", None),
        (1500, "inr", None),
        (1499, "INR", "amount 1499"),
        (150000, "INR", "amount 150000"),
        (1500, "USD", "currency USD"),
        (9, "JPY", "currency JPY"),
    ],
)
def test_an_amount_or_currency_the_gateway_disagrees_on_is_named(
    observed_amount: int | None, observed_currency: str | None, problem: str | None
) -> None:
    found = amount_mismatch(
        expected_amount=1500,
        expected_currency="INR",
        observed_amount=observed_amount,
        observed_currency=observed_currency,
    )
    assert (found is None) == (problem is None)
    if problem is not None:
        assert found is not None and problem in found


OS = OrderStatus


@pytest.mark.parametrize(
    ("order", "payment", "paid", "live", "policy", "expected"),
    [
        # A success confirms an order once what is paid covers it (split payments).
        (OS.PENDING_PAYMENT, "COMPLETED", 1000, 0, "retry", OS.CONFIRMED),
        (OS.PENDING_PAYMENT, "COMPLETED", 1200, 0, "retry", OS.CONFIRMED),
        (OS.PENDING_PAYMENT, "COMPLETED", 600, 1, "retry", None),
        # Only a waiting order moves.
        (OS.CONFIRMED, "COMPLETED", 1000, 0, "retry", None),
        (OS.CANCELLED, "COMPLETED", 1000, 0, "retry", None),
        (OS.EXPIRED, "COMPLETED", 1000, 0, "cancel", None),
        # A failure: the customer may retry, or the order is cancelled by setting — only when
        # nothing else is live or paid.
        (OS.PENDING_PAYMENT, "FAILED", 0, 0, "retry", None),
        (OS.PENDING_PAYMENT, "FAILED", 0, 0, "cancel", OS.CANCELLED),
        (OS.PENDING_PAYMENT, "EXPIRED", 0, 0, "cancel", OS.CANCELLED),
        (OS.PENDING_PAYMENT, "CANCELLED", 0, 0, "cancel", OS.CANCELLED),
        (OS.PENDING_PAYMENT, "FAILED", 0, 1, "cancel", None),
        (OS.PENDING_PAYMENT, "FAILED", 400, 0, "cancel", None),
        # Nothing else moves an order.
        (OS.PENDING_PAYMENT, "PENDING", 0, 0, "cancel", None),
        (OS.PENDING_PAYMENT, "INITIATED", 0, 0, "cancel", None),
        (OS.PENDING_PAYMENT, "REFUNDED", 0, 0, "cancel", None),
    ],
)
def test_the_order_cascade(
    order: OrderStatus,
    payment: str,
    paid: int,
    live: int,
    policy: str,
    expected: OrderStatus | None,
) -> None:
    assert (
        order_after_payment(
            order,
            PaymentStatus(payment),
            amount=1000,
            paid=paid,
            live_attempts=live,
            on_failure=FailurePolicy(policy),
        )
        is expected
    )


@pytest.mark.parametrize("order", list(OrderStatus))
def test_a_late_success_is_refunded_only_when_the_order_is_over(order: OrderStatus) -> None:
    assert late_success_needs_refund(order) == (order in (OS.CANCELLED, OS.EXPIRED))


@pytest.mark.parametrize("order", list(OrderStatus))
def test_a_late_success_refunds_the_whole_payment_if_over_else_only_the_excess(
    order: OrderStatus,
) -> None:
    refund = late_success_refund(order, amount=1000, paid=1200, payment=400)
    assert refund == (400 if order in (OS.CANCELLED, OS.EXPIRED) else 200)
    # Paid not above the amount: nothing to refund on an open order.
    open_refund = late_success_refund(order, amount=1000, paid=900, payment=400)
    assert open_refund == (400 if order in (OS.CANCELLED, OS.EXPIRED) else 0)
    # Never more than the payment itself.
    assert late_success_refund(order, amount=100, paid=2000, payment=400) == 400
