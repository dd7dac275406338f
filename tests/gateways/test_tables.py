"""PURE: every gateway's state table, cell by cell, and the minor-unit conversions."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateways import phonepe, sandbox, stripe
from gateways.base import PaymentStatus as P
from gateways.base import RefundStatus as R
from gateways.currency import iso_exponent, rescale

STRIPE_INTENT = {
    ("succeeded", False): P.COMPLETED,
    ("succeeded", True): P.COMPLETED,
    ("processing", False): P.PENDING,
    ("processing", True): P.PENDING,
    ("requires_action", False): P.PENDING,
    ("requires_action", True): P.PENDING,
    ("requires_confirmation", False): P.PENDING,
    ("requires_confirmation", True): P.PENDING,
    ("requires_capture", False): P.PENDING,
    ("requires_capture", True): P.PENDING,
    # A fresh intent waits for the customer; a declined attempt is not final either.
    ("requires_payment_method", False): P.INITIATED,
    ("requires_payment_method", True): P.PENDING,
    ("canceled", False): P.CANCELLED,
    ("canceled", True): P.CANCELLED,
    ("", False): P.UNKNOWN,
    ("", True): P.UNKNOWN,
    ("requires_source", False): P.UNKNOWN,  # pre-2019 API name: not ours to guess
    ("SUCCEEDED", True): P.UNKNOWN,
    ("weird", True): P.UNKNOWN,
}


@pytest.mark.parametrize(("status", "attempted"), list(STRIPE_INTENT))
def test_stripe_intent_status_table(status: str, attempted: bool) -> None:
    assert stripe.intent_status(status, attempted=attempted) is STRIPE_INTENT[(status, attempted)]


def test_a_failed_stripe_attempt_is_never_a_failed_payment() -> None:
    for (status, attempted), _ in STRIPE_INTENT.items():
        assert stripe.intent_status(status, attempted=attempted) is not P.FAILED


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ("succeeded", R.SUCCEEDED),
        ("pending", R.PENDING),
        ("requires_action", R.PENDING),
        ("failed", R.FAILED),
        ("canceled", R.FAILED),
        ("", R.UNKNOWN),
        ("other", R.UNKNOWN),
    ],
)
def test_stripe_refund_status_table(status: str, expected: R) -> None:
    assert stripe.refund_status(status) is expected


V1_CODES = [
    "PAYMENT_SUCCESS",
    "PAYMENT_PENDING",
    "PAYMENT_ERROR",
    "PAYMENT_DECLINED",
    "TIMED_OUT",
    "PAYMENT_CANCELLED",
    "PAYMENT_INITIATED",
    "INTERNAL_SERVER_ERROR",
    "TRANSACTION_NOT_FOUND",
    "TOO_MANY_REQUESTS",
    "BAD_REQUEST",
    "AUTHORIZATION_FAILED",
    "SOMETHING_NEW",
    None,
]
V1_STATES = ["COMPLETED", "FAILED", "PENDING", "SOMETHING_NEW", None]


def _v1_expected(code: str | None, state: str | None) -> P:
    """The table written out as the rule it implements: code decides, state must agree."""
    if code == "PAYMENT_SUCCESS":
        return P.COMPLETED if state == "COMPLETED" else P.UNKNOWN
    if code == "PAYMENT_PENDING":
        return P.PENDING if state in ("PENDING", None) else P.UNKNOWN
    if code in ("PAYMENT_ERROR", "PAYMENT_DECLINED", "TIMED_OUT", "PAYMENT_CANCELLED"):
        return P.FAILED if state in ("FAILED", None) else P.UNKNOWN
    if code == "PAYMENT_INITIATED":
        return P.INITIATED if state in ("PENDING", None) else P.UNKNOWN
    return P.UNKNOWN


@pytest.mark.parametrize(("code", "state"), list(itertools.product(V1_CODES, V1_STATES)))
def test_phonepe_v1_status_table_every_code_and_state(code: str | None, state: str | None) -> None:
    assert phonepe.v1_status(code, state) is _v1_expected(code, state)


@pytest.mark.parametrize(
    ("code", "state"),
    [("INTERNAL_SERVER_ERROR", None), ("TRANSACTION_NOT_FOUND", None), ("TOO_MANY_REQUESTS", None)],
)
def test_phonepe_unknown_codes_change_nothing(code: str, state: str | None) -> None:
    for s in V1_STATES:
        assert phonepe.v1_status(code, s) is P.UNKNOWN


def test_phonepe_v1_contradictions_change_nothing() -> None:
    assert phonepe.v1_status("PAYMENT_SUCCESS", "FAILED") is P.UNKNOWN
    assert phonepe.v1_status("PAYMENT_ERROR", "COMPLETED") is P.UNKNOWN
    assert phonepe.v1_status("PAYMENT_SUCCESS", None) is P.UNKNOWN


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        ("COMPLETED", P.COMPLETED),
        ("FAILED", P.FAILED),
        ("PENDING", P.PENDING),
        ("CREATED", P.UNKNOWN),
        ("completed", P.UNKNOWN),
        ("", P.UNKNOWN),
        (None, P.UNKNOWN),
    ],
)
def test_phonepe_v2_status_table(state: str | None, expected: P) -> None:
    assert phonepe.v2_status(state) is expected


@pytest.mark.parametrize(("code", "state"), list(itertools.product(V1_CODES, V1_STATES)))
def test_phonepe_v1_refund_table_follows_the_payment_table(
    code: str | None, state: str | None
) -> None:
    as_payment = _v1_expected(code, state)
    expected = {
        P.COMPLETED: R.SUCCEEDED,
        P.PENDING: R.PENDING,
        P.INITIATED: R.PENDING,
        P.FAILED: R.FAILED,
    }.get(as_payment, R.UNKNOWN)
    assert phonepe.v1_refund_status(code, state) is expected


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        ("COMPLETED", R.SUCCEEDED),
        ("PENDING", R.PENDING),
        ("CONFIRMED", R.PENDING),
        ("FAILED", R.FAILED),
        ("REVERSED", R.UNKNOWN),
        (None, R.UNKNOWN),
    ],
)
def test_phonepe_v2_refund_table(state: str | None, expected: R) -> None:
    assert phonepe.v2_refund_status(state) is expected


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ("created", P.INITIATED),
        ("processing", P.PENDING),
        ("succeeded", P.COMPLETED),
        ("declined", P.FAILED),
        ("expired", P.EXPIRED),
        ("canceled", P.CANCELLED),
        ("SUCCEEDED", P.UNKNOWN),
        ("", P.UNKNOWN),
        (None, P.UNKNOWN),
    ],
)
def test_sandbox_status_table(status: str | None, expected: P) -> None:
    assert sandbox.sandbox_status(status) is expected


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ("pending", R.PENDING),
        ("succeeded", R.SUCCEEDED),
        ("failed", R.FAILED),
        ("other", R.UNKNOWN),
        (None, R.UNKNOWN),
    ],
)
def test_sandbox_refund_table(status: str | None, expected: R) -> None:
    assert sandbox.sandbox_refund_status(status) is expected


def test_only_settled_statuses_are_terminal() -> None:
    assert {s for s in P if s.terminal} == {P.COMPLETED, P.FAILED, P.EXPIRED, P.CANCELLED}


# --- amounts -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("amount", "currency", "stripe_amount"),
    [
        (1000, "USD", 1000),  # $10.00: cents both sides
        (1000, "usd", 1000),
        (500, "JPY", 500),  # ¥500: zero-decimal both sides
        (12345, "KRW", 12345),
        (5120, "KWD", 5120),  # 5.120 KWD: three decimals both sides, last digit 0
        (5, "ISK", 500),  # 5 kr: ISO counts krónur, Stripe still counts hundredths
        (1000, "INR", 1000),
        (100, "HUF", 100),
        (500, "MGA", 5),  # ISO gives MGA two decimals; Stripe counts whole ariary
    ],
)
def test_our_minor_units_convert_to_stripes_count(
    amount: int, currency: str, stripe_amount: int
) -> None:
    assert stripe.to_stripe_amount(amount, currency) == stripe_amount
    assert stripe.from_stripe_amount(stripe_amount, currency) == amount


@pytest.mark.parametrize(
    ("amount", "currency"),
    [
        (5124, "KWD"),  # Stripe needs the last of three decimals to be 0
        (550, "MGA"),  # 5.50 ariary cannot be said in whole ariary
    ],
)
def test_an_amount_stripe_cannot_take_is_refused_not_rounded(amount: int, currency: str) -> None:
    with pytest.raises(ValueError):
        stripe.to_stripe_amount(amount, currency)


def test_every_stripe_zero_decimal_currency_is_sent_unscaled_when_iso_agrees() -> None:
    for code in stripe.STRIPE_ZERO_DECIMAL:
        if iso_exponent(code) == 0:
            assert stripe.to_stripe_amount(777, code) == 777


@given(st.integers(min_value=0, max_value=10**12), st.integers(0, 4), st.integers(0, 4))
def test_rescale_round_trips_or_refuses(amount: int, src: int, dst: int) -> None:
    try:
        converted = rescale(amount, from_exponent=src, to_exponent=dst)
    except ValueError:
        assert dst < src and amount % 10 ** (src - dst)
        return
    assert rescale(converted, from_exponent=dst, to_exponent=src) == amount
