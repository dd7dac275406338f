"""The sandbox adapter's exact requests, against recorded sandbox answers (MockTransport)."""

from __future__ import annotations

import httpx

from gateways.base import PaymentRequest, PaymentStatus, RefundRequest, RefundStatus
from gateways.sandbox import SandboxConfig, SandboxGateway
from tests.gateways.mock import Recorder, body

PAYMENT = {
    "object": "payment",
    "id": "sbx_pay_0123456789abcdef",
    "reference": "pay_9",
    "status": "created",
    "amount": 2500,
    "currency": "INR",
    "amount_refunded": 0,
    "transaction_id": None,
    "metadata": {"order_id": "ord_9"},
    "created": 1780000000,
    "redirect_url": "http://127.0.0.1:8001/pay/sbx_pay_0123456789abcdef",
}
REFUND = {
    "object": "refund",
    "id": "sbx_re_0123456789abcdef",
    "reference": "re_9",
    "payment": "sbx_pay_0123456789abcdef",
    "status": "succeeded",
    "amount": 500,
    "currency": "INR",
    "created": 1780000100,
}


async def test_requests_are_json_with_the_api_key() -> None:
    recorder = Recorder(
        {
            ("POST", "/sandbox/api/payments"): httpx.Response(201, json=PAYMENT),
            ("GET", "/sandbox/api/payments/sbx_pay_0123456789abcdef"): httpx.Response(
                200, json={**PAYMENT, "status": "succeeded", "transaction_id": "sbx_txn_1"}
            ),
            ("POST", "/sandbox/api/payments/sbx_pay_0123456789abcdef/refunds"): httpx.Response(
                201, json=REFUND
            ),
            ("GET", "/sandbox/api/refunds/re_9"): httpx.Response(200, json=REFUND),
        }
    )
    config = SandboxConfig(api_base="http://host.test/sandbox/", webhook_secret="s", api_key="k")
    gateway = SandboxGateway(config, client=recorder.client())
    start = await gateway.start_payment(
        PaymentRequest(
            reference="pay_9",
            amount=2500,
            currency="INR",
            return_url="http://shop.test/back",
            metadata={"order_id": "ord_9"},
        )
    )
    state = await gateway.fetch_status(start.ref)
    refund = await gateway.refund(
        RefundRequest(reference="re_9", payment_ref=start.ref, amount=500, currency="INR")
    )
    again = await gateway.fetch_refund("re_9")
    create, status, refund_call, refund_status = recorder.requests
    assert str(create.url) == "http://host.test/sandbox/api/payments"
    assert body(create) == {
        "reference": "pay_9",
        "amount": 2500,
        "currency": "INR",
        "return_url": "http://shop.test/back",
        "callback_url": None,
        "description": None,
        "metadata": {"order_id": "ord_9"},
    }
    assert {r.headers["authorization"] for r in recorder.requests} == {"Bearer k"}
    assert (status.method, refund_status.method) == ("GET", "GET")
    assert body(refund_call) == {"reference": "re_9", "amount": 500}
    assert start.redirect_url == PAYMENT["redirect_url"]
    assert start.state.status is PaymentStatus.INITIATED
    assert state.status is PaymentStatus.COMPLETED and state.gateway_transaction_id == "sbx_txn_1"
    assert refund.status is again.status is RefundStatus.SUCCEEDED
    assert refund.refund_ref == "sbx_re_0123456789abcdef"
