"""PURE: what a verified webhook carries — its gateway, type, references and raw event — and
the edges of the signature check (the tolerance boundary, stripe-python's item parsing).

Found by the mutation run (docs/testing.md): the adapters' tests checked the state a webhook
reports, not the rest of the event the receiver dedupes, logs and stores.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json

import httpx
import pytest

from gateways import signing
from gateways.base import InvalidSignature, PaymentRequest
from gateways.phonepe import PhonePeConfig, PhonePeGateway
from gateways.sandbox import SandboxConfig, SandboxGateway
from gateways.sandbox_server import SIGNATURE_HEADER
from gateways.stripe import StripeConfig, StripeGateway
from tests.gateways import recorded
from tests.gateways.mock import Clock, Recorder, form

STRIPE = StripeConfig(api_key="sk_test_123", webhook_secret="whsec_abc", api_base="https://s.test")
SALT = "099eb0cd-02cf-4e2a-8aca-3e6c6aff0399"
PHONEPE_V1 = PhonePeConfig(
    merchant_id="PGTESTPAYUAT", salt_key=SALT, salt_index=1, api_base="https://p.test"
)
PHONEPE_V2 = PhonePeConfig(
    client_id="TESTCLIENT",
    client_secret="c2VjcmV0",
    client_version=1,
    callback_username="merchant_user",
    callback_password="passw0rd123",
    api_base="https://p.test/apis/pg",
    auth_base="https://p.test/apis/identity-manager",
)
V2_AUTHORIZATION = hashlib.sha256(b"merchant_user:passw0rd123").hexdigest()


def stripe_event(obj: dict[str, object], event_type: str) -> bytes:
    return json.dumps(
        {"id": "evt_9", "object": "event", "type": event_type, "data": {"object": obj}}
    ).encode()


@pytest.mark.parametrize(
    ("obj", "event_type"),
    [
        (recorded.STRIPE_INTENT_SUCCEEDED, "payment_intent.succeeded"),
        (recorded.STRIPE_REFUND, "refund.updated"),
    ],
)
def test_a_stripe_webhook_names_its_gateway_and_type_and_keeps_the_event(
    obj: dict[str, object], event_type: str
) -> None:
    clock = Clock()
    raw = stripe_event(obj, event_type)
    headers = {"Stripe-Signature": signing.sign(raw, "whsec_abc", int(clock.now))}
    parsed = StripeGateway(STRIPE, client=Recorder().client(), clock=clock).verify_webhook(
        headers, raw
    )
    assert parsed.gateway == "stripe"
    assert parsed.event_id == "evt_9"
    assert parsed.event_type == event_type
    assert parsed.raw == json.loads(raw)


def test_a_phonepe_v1_callback_names_its_gateway_and_code_and_keeps_the_response() -> None:
    encoded = recorded.PHONEPE_V1_CALLBACK_RESPONSE
    raw = json.dumps({"response": encoded}).encode()
    headers = {"X-VERIFY": hashlib.sha256((encoded + SALT).encode()).hexdigest() + "###1"}
    parsed = PhonePeGateway(PHONEPE_V1, client=httpx.AsyncClient()).verify_webhook(headers, raw)
    assert parsed.gateway == "phonepe"
    assert parsed.event_type == "PAYMENT_ERROR"
    assert parsed.raw == json.loads(base64.b64decode(encoded))
    assert parsed.state is not None and parsed.state.ref == "merchantTransactionId"


def test_a_phonepe_v2_payment_callback_names_its_gateway_and_event_and_keeps_the_body() -> None:
    body = recorded.PHONEPE_V2_WEBHOOK_COMPLETED
    raw = json.dumps(body).encode()
    parsed = PhonePeGateway(PHONEPE_V2, client=httpx.AsyncClient()).verify_webhook(
        {"Authorization": V2_AUTHORIZATION}, raw
    )
    assert parsed.gateway == "phonepe"
    assert parsed.event_type == "checkout.order.completed"
    assert parsed.raw == body
    assert parsed.state is not None and parsed.state.ref == "MO1"


def test_a_phonepe_v2_refund_callback_names_the_payment_and_dedupes_on_the_refund_id() -> None:
    body = recorded.PHONEPE_V2_WEBHOOK_REFUND
    raw = json.dumps(body).encode()
    parsed = PhonePeGateway(PHONEPE_V2, client=httpx.AsyncClient()).verify_webhook(
        {"Authorization": V2_AUTHORIZATION}, raw
    )
    assert parsed.gateway == "phonepe"
    assert parsed.event_type == "pg.refund.completed"
    assert parsed.ref == "MO1"  # the payment refunded
    assert parsed.event_id == "pg.refund.completed:OMR7878098045517540996:COMPLETED"
    assert parsed.raw == body


def test_a_phonepe_v2_callback_that_names_its_kind_type_is_read_by_it() -> None:
    # Some PhonePe callbacks carry "type" where others carry "event".
    body = dict(recorded.PHONEPE_V2_WEBHOOK_REFUND)
    body["type"] = body.pop("event")
    parsed = PhonePeGateway(PHONEPE_V2, client=httpx.AsyncClient()).verify_webhook(
        {"Authorization": V2_AUTHORIZATION}, json.dumps(body).encode()
    )
    assert parsed.event_type == "pg.refund.completed"
    assert parsed.refund is not None and parsed.state is None


def test_a_signature_exactly_the_tolerance_old_is_accepted_and_one_second_more_is_not() -> None:
    body = b'{"id": "evt_1"}'
    now = 1_700_000_000.0
    at_the_edge = signing.sign(body, "whsec_abc", int(now) - 300)
    assert signing.verify(body, at_the_edge, "whsec_abc", now=now, tolerance=300) == now - 300
    too_old = signing.sign(body, "whsec_abc", int(now) - 301)
    with pytest.raises(InvalidSignature, match="older"):
        signing.verify(body, too_old, "whsec_abc", now=now, tolerance=300)


def test_a_v1_item_is_split_on_its_first_two_equals_signs_like_stripe_python() -> None:
    # stripe-python reads "v1=<sig>=a=b" as the candidate <sig> (split("=", 2)); so must we.
    body = b'{"id": "evt_1"}'
    header = signing.sign(body, "whsec_abc", 1_700_000_000) + "=a=b"
    assert signing.verify(body, header, "whsec_abc", now=1_700_000_000, tolerance=300)


def v1_signed(
    decoded: object | None = None, *, encoded: str | None = None
) -> tuple[dict[str, str], bytes]:
    if encoded is None:
        encoded = base64.b64encode(json.dumps(decoded).encode()).decode()
    raw = json.dumps({"response": encoded}).encode()
    return {"X-VERIFY": hashlib.sha256((encoded + SALT).encode()).hexdigest() + "###1"}, raw


def test_a_signed_phonepe_v1_callback_naming_no_transaction_matches_no_payment() -> None:
    headers, raw = v1_signed({"code": "PAYMENT_ERROR", "data": {"state": "FAILED"}})
    parsed = PhonePeGateway(PHONEPE_V1, client=httpx.AsyncClient()).verify_webhook(headers, raw)
    assert parsed.ref is None
    assert parsed.state is not None and parsed.state.ref == ""


def test_a_signed_phonepe_v2_callback_naming_no_order_matches_no_payment() -> None:
    body = {"event": "checkout.order.completed", "payload": {"state": "COMPLETED"}}
    parsed = PhonePeGateway(PHONEPE_V2, client=httpx.AsyncClient()).verify_webhook(
        {"Authorization": V2_AUTHORIZATION}, json.dumps(body).encode()
    )
    assert parsed.ref is None
    assert parsed.state is not None and parsed.state.ref == ""


def test_a_signed_phonepe_v1_response_that_is_not_strict_base64_is_refused() -> None:
    # The checksum covers the text as sent; a decoder that skipped the stray characters would
    # act on a body nobody signed in that form.
    good = recorded.PHONEPE_V1_CALLBACK_RESPONSE
    headers, raw = v1_signed(encoded=good[:20] + "!" + good[20:])
    with pytest.raises(InvalidSignature, match="base64"):
        PhonePeGateway(PHONEPE_V1, client=httpx.AsyncClient()).verify_webhook(headers, raw)


@pytest.mark.parametrize(
    ("username", "password"), [("merchant_user", None), (None, "passw0rd123"), ("", "")]
)
def test_phonepe_v2_with_half_its_callback_credentials_refuses_every_callback(
    username: str | None, password: str | None
) -> None:
    config = dataclasses.replace(PHONEPE_V2, callback_username=username, callback_password=password)
    forged = hashlib.sha256(f"{username or ''}:{password or ''}".encode()).hexdigest()
    raw = json.dumps(recorded.PHONEPE_V2_WEBHOOK_COMPLETED).encode()
    with pytest.raises(InvalidSignature, match="configured"):
        PhonePeGateway(config, client=httpx.AsyncClient()).verify_webhook(
            {"Authorization": forged}, raw
        )


# --- our own references, as typed fields (the receiver matches on them, never on raw fields)


async def test_a_stripe_intent_webhook_carries_the_reference_start_payment_wrote_in_metadata() -> (
    None
):
    recorder = Recorder(
        {("POST", "/v1/payment_intents"): httpx.Response(200, json=recorded.STRIPE_INTENT_CREATED)}
    )
    clock = Clock()
    gateway = StripeGateway(STRIPE, client=recorder.client(), clock=clock)
    await gateway.start_payment(PaymentRequest("pay_7", 2000, "USD"))
    assert form(recorder.sent("POST", "/v1/payment_intents")[0])["metadata[reference]"] == "pay_7"
    raw = stripe_event(recorded.STRIPE_INTENT_SUCCEEDED, "payment_intent.succeeded")
    parsed = gateway.verify_webhook(
        {"Stripe-Signature": signing.sign(raw, "whsec_abc", int(clock.now))}, raw
    )
    assert (parsed.payment_reference, parsed.refund_reference) == ("pay_7", None)
    assert parsed.ref == recorded.STRIPE_INTENT_SUCCEEDED["id"]


def test_a_stripe_intent_created_elsewhere_is_named_by_its_payment_id_metadata() -> None:
    obj = {**recorded.STRIPE_INTENT_SUCCEEDED, "metadata": {"payment_id": "pay_9"}}
    clock = Clock()
    raw = stripe_event(obj, "payment_intent.succeeded")
    parsed = StripeGateway(STRIPE, client=Recorder().client(), clock=clock).verify_webhook(
        {"Stripe-Signature": signing.sign(raw, "whsec_abc", int(clock.now))}, raw
    )
    assert parsed.payment_reference == "pay_9"


def test_a_stripe_refund_webhook_carries_our_refund_reference_and_the_intent_as_ref() -> None:
    clock = Clock()
    raw = stripe_event(recorded.STRIPE_REFUND, "refund.updated")
    parsed = StripeGateway(STRIPE, client=Recorder().client(), clock=clock).verify_webhook(
        {"Stripe-Signature": signing.sign(raw, "whsec_abc", int(clock.now))}, raw
    )
    assert (parsed.payment_reference, parsed.refund_reference) == (None, "ref_1")
    assert parsed.ref == "pi_3MtwBwLkdIwHu7ix28a3tqPa"


def test_phonepe_callbacks_carry_the_merchant_transaction_and_order_ids_as_our_references() -> None:
    headers, raw = v1_signed(encoded=recorded.PHONEPE_V1_CALLBACK_RESPONSE)
    v1 = PhonePeGateway(PHONEPE_V1, client=httpx.AsyncClient()).verify_webhook(headers, raw)
    assert (v1.payment_reference, v1.refund_reference) == ("merchantTransactionId", None)
    v2 = PhonePeGateway(PHONEPE_V2, client=httpx.AsyncClient())
    paid = v2.verify_webhook(
        {"Authorization": V2_AUTHORIZATION},
        json.dumps(recorded.PHONEPE_V2_WEBHOOK_COMPLETED).encode(),
    )
    assert (paid.payment_reference, paid.refund_reference) == ("MO1", None)
    refunded = v2.verify_webhook(
        {"Authorization": V2_AUTHORIZATION},
        json.dumps(recorded.PHONEPE_V2_WEBHOOK_REFUND).encode(),
    )
    assert (refunded.payment_reference, refunded.refund_reference) == ("MO1", "R1")


def sandbox_event(obj: dict[str, object], event_type: str) -> bytes:
    return json.dumps({"id": "evt_s1", "type": event_type, "data": {"object": obj}}).encode()


@pytest.mark.parametrize(
    ("obj", "event_type", "references"),
    [
        (
            {"object": "payment", "id": "sbx_pay_1", "reference": "pay_1", "status": "succeeded"},
            "payment.succeeded",
            ("pay_1", None),
        ),
        (
            {"object": "refund", "id": "sbx_re_1", "reference": "ref_1", "payment": "sbx_pay_1"},
            "refund.succeeded",
            (None, "ref_1"),
        ),
        # Metadata is the caller's business: only the gateway's own "reference" names ours.
        (
            {"object": "payment", "id": "sbx_pay_1", "metadata": {"payment_id": "pay_1"}},
            "payment.succeeded",
            (None, None),
        ),
    ],
)
def test_a_sandbox_webhook_carries_our_references_from_its_reference_field(
    obj: dict[str, object], event_type: str, references: tuple[str | None, str | None]
) -> None:
    clock = Clock()
    raw = sandbox_event(obj, event_type)
    gateway = SandboxGateway(
        SandboxConfig(api_base="http://sb.test", webhook_secret="whsec_sb"),
        client=Recorder().client(),
        clock=clock,
    )
    parsed = gateway.verify_webhook(
        {SIGNATURE_HEADER: signing.sign(raw, "whsec_sb", int(clock.now))}, raw
    )
    assert (parsed.payment_reference, parsed.refund_reference) == references
    assert parsed.ref == "sbx_pay_1"
