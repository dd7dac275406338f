"""Stripe adapter against recorded payloads through httpx.MockTransport: the exact requests."""

from __future__ import annotations

import json

import httpx
import pytest

from gateways import signing
from gateways.base import (
    GatewayRejected,
    GatewayUnavailable,
    InvalidSignature,
    PaymentRequest,
    PaymentStatus,
    RefundRequest,
    RefundStatus,
)
from gateways.stripe import StripeConfig, StripeGateway
from tests.gateways import recorded
from tests.gateways.mock import Clock, Recorder, form

BASE = "https://stripe.test"
INTENTS = "/v1/payment_intents"
INTENT = f"{INTENTS}/{recorded.STRIPE_INTENT_CREATED['id']}"
CONFIG = StripeConfig(api_key="sk_test_123", webhook_secret="whsec_abc", api_base=BASE)


def gateway(recorder: Recorder, clock: Clock | None = None) -> StripeGateway:
    return StripeGateway(CONFIG, client=recorder.client(), clock=clock or Clock())


def request(**changes: object) -> PaymentRequest:
    values: dict[str, object] = {
        "reference": "pay_7",
        "amount": 2000,
        "currency": "USD",
        "metadata": {"order_id": "ord_42"},
    }
    values.update(changes)
    return PaymentRequest(**values)  # type: ignore[arg-type]


async def test_start_payment_creates_an_intent_with_amount_currency_key_and_metadata() -> None:
    recorder = Recorder(
        {("POST", INTENTS): httpx.Response(200, json=recorded.STRIPE_INTENT_CREATED)}
    )
    start = await gateway(recorder).start_payment(request())
    (sent,) = recorder.requests
    assert sent.method == "POST"
    assert str(sent.url) == BASE + INTENTS
    assert sent.headers["authorization"] == "Bearer sk_test_123"
    assert sent.headers["idempotency-key"] == "pay_7"
    assert sent.headers["content-type"] == "application/x-www-form-urlencoded"
    assert form(sent) == {
        "amount": "2000",
        "currency": "usd",
        "automatic_payment_methods[enabled]": "true",
        "metadata[reference]": "pay_7",
        "metadata[order_id]": "ord_42",
    }
    assert start.ref == "pi_3MtwBwLkdIwHu7ix28a3tqPa"
    assert start.client_secret == recorded.STRIPE_INTENT_CREATED["client_secret"]
    assert start.state.status is PaymentStatus.INITIATED
    assert (start.state.amount, start.state.currency) == (2000, "USD")


@pytest.mark.parametrize(
    ("amount", "currency", "sent_amount", "sent_currency"),
    [(500, "JPY", "500", "jpy"), (5, "ISK", "500", "isk"), (5120, "KWD", "5120", "kwd")],
)
async def test_amounts_are_sent_as_stripe_counts_them(
    amount: int, currency: str, sent_amount: str, sent_currency: str
) -> None:
    answer = {
        **recorded.STRIPE_INTENT_CREATED,
        "amount": int(sent_amount),
        "currency": sent_currency,
    }
    recorder = Recorder({("POST", INTENTS): httpx.Response(200, json=answer)})
    start = await gateway(recorder).start_payment(request(amount=amount, currency=currency))
    assert form(recorder.requests[0])["amount"] == sent_amount
    assert form(recorder.requests[0])["currency"] == sent_currency
    assert start.state.amount == amount


async def test_an_amount_stripe_cannot_take_is_rejected_before_any_request() -> None:
    recorder = Recorder()
    with pytest.raises(GatewayRejected):
        await gateway(recorder).start_payment(request(amount=5124, currency="KWD"))
    assert recorder.requests == []


@pytest.mark.parametrize(
    ("answer", "status", "transaction"),
    [
        (recorded.STRIPE_INTENT_SUCCEEDED, PaymentStatus.COMPLETED, "ch_3MtwBwLkdIwHu7ix28ODvjw1"),
        (recorded.STRIPE_INTENT_DECLINED, PaymentStatus.PENDING, "ch_3MtwBwLkdIwHu7ix2Declined"),
        ({**recorded.STRIPE_INTENT_CREATED, "status": "processing"}, PaymentStatus.PENDING, None),
        ({**recorded.STRIPE_INTENT_CREATED, "status": "canceled"}, PaymentStatus.CANCELLED, None),
        ({**recorded.STRIPE_INTENT_CREATED, "status": "brand_new"}, PaymentStatus.UNKNOWN, None),
    ],
)
async def test_fetch_status_retrieves_the_intent_and_maps_its_status(
    answer: dict[str, object], status: PaymentStatus, transaction: str | None
) -> None:
    recorder = Recorder({("GET", INTENT): httpx.Response(200, json=answer)})
    state = await gateway(recorder).fetch_status("pi_3MtwBwLkdIwHu7ix28a3tqPa")
    (sent,) = recorder.requests
    assert (sent.method, str(sent.url)) == ("GET", BASE + INTENT)
    assert sent.headers["authorization"] == "Bearer sk_test_123"
    assert "idempotency-key" not in sent.headers
    assert sent.content == b""
    assert state.status is status
    assert state.gateway_transaction_id == transaction
    assert state.raw == answer


def event(obj: dict[str, object], event_type: str, event_id: str = "evt_1") -> bytes:
    return json.dumps(
        {"id": event_id, "object": "event", "type": event_type, "data": {"object": obj}}
    ).encode()


def test_a_signed_webhook_is_verified_and_parsed() -> None:
    clock = Clock()
    raw = event(recorded.STRIPE_INTENT_SUCCEEDED, "payment_intent.succeeded", "evt_3Mtw")
    headers = {"Stripe-Signature": signing.sign(raw, "whsec_abc", int(clock.now) - 10)}
    parsed = gateway(Recorder(), clock).verify_webhook(headers, raw)
    assert parsed.event_id == "evt_3Mtw"
    assert parsed.trusted is True
    assert parsed.ref == "pi_3MtwBwLkdIwHu7ix28a3tqPa"
    assert parsed.state is not None and parsed.state.status is PaymentStatus.COMPLETED
    assert parsed.refund is None


def test_a_failed_payment_webhook_is_not_a_failure() -> None:
    clock = Clock()
    raw = event(recorded.STRIPE_INTENT_DECLINED, "payment_intent.payment_failed")
    headers = {"stripe-signature": signing.sign(raw, "whsec_abc", int(clock.now))}
    parsed = gateway(Recorder(), clock).verify_webhook(headers, raw)
    assert parsed.state is not None and parsed.state.status is PaymentStatus.PENDING


def test_a_refund_webhook_carries_the_refund_and_its_payment() -> None:
    clock = Clock()
    raw = event(recorded.STRIPE_REFUND, "refund.updated")
    headers = {"Stripe-Signature": signing.sign(raw, "whsec_abc", int(clock.now))}
    parsed = gateway(Recorder(), clock).verify_webhook(headers, raw)
    assert parsed.state is None
    assert parsed.refund is not None and parsed.refund.status is RefundStatus.SUCCEEDED
    assert parsed.refund.reference == "ref_1"
    assert parsed.ref == "pi_3MtwBwLkdIwHu7ix28a3tqPa"


@pytest.mark.parametrize("listed", [True, False])
def test_charge_refunded_carries_the_newest_refund_when_the_charge_lists_it(listed: bool) -> None:
    clock = Clock()
    charge: dict[str, object] = {
        "id": "ch_3MtwBw",
        "object": "charge",
        "payment_intent": "pi_3MtwBwLkdIwHu7ix28a3tqPa",
        "amount_refunded": 1000,
        "refunded": True,
    }
    if listed:
        older = {**recorded.STRIPE_REFUND, "id": "re_older", "metadata": {"reference": "ref_0"}}
        charge["refunds"] = {"object": "list", "data": [recorded.STRIPE_REFUND, older]}
    raw = event(charge, "charge.refunded")
    headers = {"Stripe-Signature": signing.sign(raw, "whsec_abc", int(clock.now))}
    parsed = gateway(Recorder(), clock).verify_webhook(headers, raw)
    assert parsed.state is None and parsed.ref == "pi_3MtwBwLkdIwHu7ix28a3tqPa"
    if listed:
        assert parsed.refund is not None and parsed.refund.reference == "ref_1"
        assert parsed.refund.status is RefundStatus.SUCCEEDED
        assert parsed.refund_reference == "ref_1"
    else:
        assert parsed.refund is None  # about the charge only: refund.updated settles it
        assert parsed.refund_reference is None


@pytest.mark.parametrize("case", ["stale", "tampered", "other_secret", "missing", "unsigned_json"])
def test_a_bad_webhook_is_refused(case: str) -> None:
    clock = Clock()
    raw = event(recorded.STRIPE_INTENT_SUCCEEDED, "payment_intent.succeeded")
    t = int(clock.now)
    headers = {
        "stale": {"Stripe-Signature": signing.sign(raw, "whsec_abc", t - 301)},
        "tampered": {"Stripe-Signature": signing.sign(raw, "whsec_abc", t)},
        "other_secret": {"Stripe-Signature": signing.sign(raw, "whsec_other", t)},
        "missing": {},
        "unsigned_json": {"Stripe-Signature": signing.sign(b"not json", "whsec_abc", t)},
    }[case]
    body = raw.replace(b"succeeded", b"succeedez") if case == "tampered" else raw
    if case == "unsigned_json":
        body = b"not json"
    with pytest.raises(InvalidSignature):
        gateway(Recorder(), clock).verify_webhook(headers, body)


async def test_refund_creates_a_refund_on_the_intent_with_our_key() -> None:
    recorder = Recorder({("POST", "/v1/refunds"): httpx.Response(200, json=recorded.STRIPE_REFUND)})
    refund = await gateway(recorder).refund(
        RefundRequest(
            reference="ref_1",
            payment_ref="pi_3MtwBwLkdIwHu7ix28a3tqPa",
            amount=1000,
            currency="USD",
            reason="requested_by_customer",
        )
    )
    (sent,) = recorder.requests
    assert sent.headers["idempotency-key"] == "ref_1"
    assert form(sent) == {
        "payment_intent": "pi_3MtwBwLkdIwHu7ix28a3tqPa",
        "amount": "1000",
        "metadata[reference]": "ref_1",
        "reason": "requested_by_customer",
    }
    assert refund.status is RefundStatus.SUCCEEDED
    assert refund.refund_ref == "re_1Nispe2eZvKYlo2Cd31jOCgZ"


async def test_fetch_refund_retrieves_it_by_stripes_id() -> None:
    path = "/v1/refunds/re_1Nispe2eZvKYlo2Cd31jOCgZ"
    pending = {**recorded.STRIPE_REFUND, "status": "pending"}
    recorder = Recorder({("GET", path): httpx.Response(200, json=pending)})
    refund = await gateway(recorder).fetch_refund("ref_1", refund_ref="re_1Nispe2eZvKYlo2Cd31jOCgZ")
    assert recorder.requests[0].method == "GET"
    assert refund.status is RefundStatus.PENDING


async def test_a_concurrent_request_with_the_same_key_is_unavailable_not_rejected() -> None:
    conflict = httpx.Response(
        409,
        json={"error": {"code": "idempotency_key_in_use", "type": "idempotency_error"}},
        headers={"Stripe-Should-Retry": "true"},
    )
    recorder = Recorder({("POST", INTENTS): conflict})
    with pytest.raises(GatewayUnavailable):
        await gateway(recorder).start_payment(request())


async def test_a_400_is_rejected_with_stripes_code() -> None:
    recorder = Recorder({("POST", INTENTS): httpx.Response(400, json=recorded.STRIPE_ERROR_400)})
    with pytest.raises(GatewayRejected) as caught:
        await gateway(recorder).start_payment(request())
    assert (caught.value.status_code, caught.value.code) == (400, "parameter_invalid_integer")


async def test_a_redirect_next_action_becomes_the_redirect_url() -> None:
    answer = {
        **recorded.STRIPE_INTENT_CREATED,
        "status": "requires_action",
        "next_action": {
            "type": "redirect_to_url",
            "redirect_to_url": {"url": "https://hooks.stripe.com/redirect/authenticate/src_1"},
        },
    }
    recorder = Recorder({("POST", INTENTS): httpx.Response(200, json=answer)})
    start = await gateway(recorder).start_payment(request())
    assert start.redirect_url == "https://hooks.stripe.com/redirect/authenticate/src_1"
    assert start.state.status is PaymentStatus.PENDING


async def test_fetch_refund_needs_stripes_refund_id() -> None:
    recorder = Recorder()
    with pytest.raises(GatewayRejected):
        await gateway(recorder).fetch_refund("ref_1")
    assert recorder.requests == []
