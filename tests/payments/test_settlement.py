"""The payment write path over real HTTP: start, webhooks, cascade, audit, refusals."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import select

from gateways.sandbox_server import SIGNATURE_HEADER, Chaos
from gateways.signing import sign
from orders.metrics import Metrics
from orders.models import Payment, WebhookReceipt
from orders.settlement import Settlement
from server.gatewaying import open_gateways
from tests.conftest import Service, StartService
from tests.payments.helpers import (
    events_of,
    online_order,
    payment_row,
    post_webhook,
    start_payment,
    table_counts,
    wait_for_payment,
    webhook_body,
)
from tests.support.asserts import assert_error
from tests.support.clients import auth, token
from tests.support.sandbox import SANDBOX_SECRET, Sandbox, running_sandbox


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    async with running_sandbox() as sb:
        yield sb


@pytest.fixture
async def paying(start_service: StartService, sandbox: Sandbox) -> Service:
    return await start_service(**sandbox.settings())


async def test_an_approved_sandbox_payment_confirms_the_order_through_its_webhook(
    paying: Service, sandbox: Sandbox
) -> None:
    order_id = await online_order(paying)
    body = await start_payment(paying, order_id)
    payment = body["payment"]
    assert payment["status"] == "INITIATED"
    assert body["redirect_url"].startswith(sandbox.url + "/pay/")
    row = await payment_row(paying, payment["id"])
    assert row.started_at is not None and row.gateway_ref.startswith("sbx_pay_")
    await sandbox.act(row.gateway_ref, "approve")
    await wait_for_payment(paying, payment["id"], "COMPLETED")
    r = await paying.http.get(f"/api/orders/{order_id}", headers=auth(token("alice")))
    assert r.json()["order"]["status"] == "CONFIRMED"
    assert r.json()["order"]["payment_status"] == "COMPLETED"
    kinds = [(e.kind, e.to_status) for e in await events_of(paying, order_id)]
    assert kinds == [
        ("order.status", "PENDING_PAYMENT"),
        ("payment.status", "INITIATED"),
        ("payment.status", "COMPLETED"),
        ("order.status", "CONFIRMED"),
        # Paid in full: its sale receipt, in the same transaction (test_receipts.py).
        ("receipt.issued", "ISSUED"),
    ]


async def started(service: Service, **order: Any) -> tuple[str, Payment]:
    """An online order with a started sandbox payment: (order id, payment row)."""
    order_id = await online_order(service, **order)
    body = await start_payment(service, order_id)
    return order_id, await payment_row(service, body["payment"]["id"])


async def order_json(service: Service, order_id: str) -> dict[str, Any]:
    r = await service.http.get(f"/api/orders/{order_id}", headers=auth(token("alice")))
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def test_a_declined_payment_leaves_the_order_payable_and_a_retry_is_a_new_attempt(
    paying: Service, sandbox: Sandbox
) -> None:
    order_id, payment = await started(paying)
    await sandbox.act(payment.gateway_ref, "decline")
    await wait_for_payment(paying, payment.id, "FAILED")
    assert (await order_json(paying, order_id))["order"]["status"] == "PENDING_PAYMENT"
    retry = await start_payment(paying, order_id)
    assert retry["payment"]["id"] != payment.id
    await sandbox.act((await payment_row(paying, retry["payment"]["id"])).gateway_ref, "approve")
    await wait_for_payment(paying, retry["payment"]["id"], "COMPLETED")
    assert (await order_json(paying, order_id))["order"]["status"] == "CONFIRMED"


async def test_a_second_attempt_while_one_is_live_is_409_naming_it(paying: Service) -> None:
    order_id, payment = await started(paying)
    r = await paying.http.post(
        f"/api/orders/{order_id}/payments",
        json={"gateway": "sandbox"},
        headers=auth(token("alice")),
    )
    error = assert_error(r, 409, "payment_in_progress")
    assert error["payment_id"] == payment.id


async def test_only_the_owner_starts_a_payment_and_only_at_an_offered_gateway(
    paying: Service,
) -> None:
    order_id = await online_order(paying)
    before = await table_counts(paying)
    r = await paying.http.post(
        f"/api/orders/{order_id}/payments", json={"gateway": "sandbox"}, headers=auth(token("bob"))
    )
    assert_error(r, 404, "not_found")
    r = await paying.http.post(
        f"/api/orders/{order_id}/payments", json={"gateway": "stripe"}, headers=auth(token("alice"))
    )
    assert_error(r, 422, "validation_error")
    r = await paying.http.post(
        f"/api/orders/{order_id}/payments",
        json={"gateway": "sandbox", "x": 1},
        headers=auth(token("alice")),
    )
    assert_error(r, 422, "validation_error")
    assert await table_counts(paying) == before


async def test_a_duplicate_webhook_is_acknowledged_and_changes_nothing(paying: Service) -> None:
    order_id, payment = await started(paying)
    body = webhook_body(payment, "succeeded", event_id="evt_dup_1")
    first = await post_webhook(paying, body)
    assert first.status_code == 200 and first.json()["outcome"] == "apply", first.text
    before = await table_counts(paying)
    again = await post_webhook(paying, body)
    assert again.status_code == 200 and again.json()["outcome"] == "duplicate", again.text
    assert await table_counts(paying) == before
    completed = [e for e in await events_of(paying, order_id, "payment.status")]
    assert [e.to_status for e in completed] == ["INITIATED", "COMPLETED"]


@pytest.mark.parametrize(
    "late, then",
    [
        ("processing", "after success, a stale PENDING"),
        ("declined", "after success, a failure"),
        ("created", "after success, INITIATED"),
    ],
)
async def test_after_completed_nothing_moves_the_payment_but_the_audit_trail_records_it(
    paying: Service, late: str, then: str
) -> None:
    order_id, payment = await started(paying)
    assert (await post_webhook(paying, webhook_body(payment, "succeeded"))).status_code == 200
    r = await post_webhook(paying, webhook_body(payment, late))
    assert r.status_code == 200 and r.json()["outcome"] == "stale", (then, r.text)
    assert (await payment_row(paying, payment.id)).status == "COMPLETED"
    observations = await events_of(paying, order_id, "payment.observation")
    assert [e.data["verdict"] for e in observations] == ["stale"]
    assert (await order_json(paying, order_id))["order"]["status"] == "CONFIRMED"


async def test_success_before_processing_ends_completed(paying: Service) -> None:
    order_id, payment = await started(paying)
    await post_webhook(paying, webhook_body(payment, "succeeded"))
    await post_webhook(paying, webhook_body(payment, "processing"))
    assert (await payment_row(paying, payment.id)).status == "COMPLETED"
    statuses = [e.to_status for e in await events_of(paying, order_id, "payment.status")]
    assert statuses == ["INITIATED", "COMPLETED"]


async def test_an_unknown_gateway_state_changes_nothing(paying: Service) -> None:
    order_id, payment = await started(paying)
    r = await post_webhook(paying, webhook_body(payment, "authorising_maybe"))
    assert r.status_code == 200 and r.json()["outcome"] == "unknown", r.text
    assert (await payment_row(paying, payment.id)).status == "INITIATED"
    assert (await order_json(paying, order_id))["order"]["status"] == "PENDING_PAYMENT"


@pytest.mark.parametrize(
    "override", [{"amount": 1}, {"currency": "USD"}], ids=["amount", "currency"]
)
async def test_a_success_for_another_amount_or_currency_is_refused_and_flagged(
    paying: Service, override: dict[str, Any]
) -> None:
    order_id, payment = await started(paying)
    r = await post_webhook(paying, webhook_body(payment, "succeeded", **override))
    assert r.status_code == 200 and r.json()["outcome"] == "refused", r.text
    assert (await payment_row(paying, payment.id)).status == "INITIATED"
    order = (await order_json(paying, order_id))["order"]
    assert order["status"] == "PENDING_PAYMENT" and order["needs_review"] is True
    refused = await events_of(paying, order_id, "payment.observation")
    assert [e.data["verdict"] for e in refused] == ["refused"]


async def test_a_zero_decimal_currency_is_paid_in_its_own_units(
    paying: Service, sandbox: Sandbox
) -> None:
    items = [{"sku": "ramen", "name": "Ramen", "quantity": 2, "unit_price": 980}]
    order_id, payment = await started(paying, currency="JPY", items=items)
    assert (payment.amount, payment.currency) == (1960, "JPY")
    at_gateway = (await sandbox.http.get("/control/payments")).json()["payments"]
    assert [(p["amount"], p["currency"]) for p in at_gateway] == [(1960, "JPY")]
    await sandbox.act(payment.gateway_ref, "approve")
    await wait_for_payment(paying, payment.id, "COMPLETED")
    assert (await order_json(paying, order_id))["order"]["status"] == "CONFIRMED"


async def test_a_webhook_about_a_payment_we_do_not_know_is_recorded_and_acknowledged(
    paying: Service,
) -> None:
    _, payment = await started(paying)
    ghost = webhook_body(
        payment, "succeeded", id="sbx_pay_ghost", reference="pay_ghost", metadata={}
    )
    r = await post_webhook(paying, ghost)
    assert r.status_code == 200 and r.json()["outcome"] == "unknown_payment", r.text
    async with paying.db.read() as session:
        receipts = list((await session.execute(select(WebhookReceipt))).scalars())
    assert [(x.outcome, x.payment_id) for x in receipts] == [("unknown_payment", None)]
    assert (await payment_row(paying, payment.id)).status == "INITIATED"


async def test_a_read_asks_the_gateway_about_a_payment_pending_too_long(
    start_service: StartService,
) -> None:
    async with running_sandbox(Chaos(drop=100)) as sandbox:  # the webhook never comes
        service = await start_service(**sandbox.settings(), payment_read_check_after=0)
        order_id, payment = await started(service)
        await sandbox.act(payment.gateway_ref, "approve")
        body = await order_json(service, order_id)
        assert body["status_updated"] is True
        assert body["payment_status"] == "COMPLETED"
        assert body["order"]["status"] == "CONFIRMED"
        assert body["payments"][0]["status"] == "COMPLETED"
        again = await order_json(service, order_id)
        assert again["status_updated"] is False


async def test_a_gateway_error_never_fails_the_read(start_service: StartService) -> None:
    async with running_sandbox(Chaos(drop=100, status_5xx=100)) as sandbox:
        service = await start_service(**sandbox.settings(), payment_read_check_after=0)
        order_id, payment = await started(service)
        await sandbox.act(payment.gateway_ref, "approve")
        body = await order_json(service, order_id)
        assert body["status_updated"] is False
        assert body["order"]["status"] == "PENDING_PAYMENT"
        row = await payment_row(service, payment.id)
        assert row.status == "INITIATED" and row.check_failures == 1 and row.last_error
    async with running_sandbox(Chaos(status_hang=100, hang_seconds=10)) as sandbox:
        service = await start_service(
            **sandbox.settings(), payment_read_check_after=0, payment_read_check_timeout=0.3
        )
        order_id, _ = await started(service)
        async with asyncio.timeout(3):  # the read does not wait for a hanging gateway
            body = await order_json(service, order_id)
        assert body["status_updated"] is False


async def test_verify_asks_the_gateway_now(start_service: StartService) -> None:
    async with running_sandbox(Chaos(drop=100)) as sandbox:
        service = await start_service(**sandbox.settings())
        order_id, payment = await started(service)
        await sandbox.act(payment.gateway_ref, "decline")
        r = await service.http.post(
            f"/api/orders/{order_id}/payments/verify", headers=auth(token("alice"))
        )
        assert r.status_code == 200, r.text
        assert r.json()["status_updated"] is True
        assert r.json()["payment_status"] == "FAILED"
        r = await service.http.post(
            f"/api/orders/{order_id}/payments/verify", headers=auth(token("bob"))
        )
        assert_error(r, 404, "not_found")


async def test_a_webhook_that_cannot_bind_its_body_is_a_hint_confirmed_by_the_status_api(
    start_service: StartService,
) -> None:
    # PhonePe v2's callbacks carry a fixed Authorization header: whatever they say, the status
    # API decides. Here the hint says "succeeded" while the gateway's truth is "declined".
    async with running_sandbox(Chaos(drop=100)) as sandbox:
        paying = await start_service(**sandbox.settings())
        order_id, payment = await started(paying)
        await sandbox.act(payment.gateway_ref, "decline")
        async with open_gateways(paying.settings) as offered:
            settlement = Settlement(
                paying.db, paying.publisher, Metrics(), gateways=offered.gateways
            )
            body = webhook_body(payment, "succeeded")
            header = sign(body, SANDBOX_SECRET, int(time.time()))
            signed = offered.gateways["sandbox"].verify_webhook({SIGNATURE_HEADER: header}, body)
            hint = dataclasses.replace(signed, trusted=False)
            assert await settlement.receive_webhook(hint) == "confirmed:failed"
            assert await settlement.receive_webhook(hint) == "duplicate"
    assert (await payment_row(paying, payment.id)).status == "FAILED"
    statuses = [e.to_status for e in await events_of(paying, order_id, "payment.status")]
    assert statuses == ["INITIATED", "FAILED"]


async def test_a_signed_success_after_failed_is_believed_only_once_the_status_api_confirms(
    start_service: StartService,
) -> None:
    async with running_sandbox(Chaos(drop=100)) as sandbox:
        service = await start_service(**sandbox.settings())
        order_id, payment = await started(service)
        # Our books say FAILED (a signed webhook), the gateway's truth is succeeded.
        assert (await post_webhook(service, webhook_body(payment, "declined"))).status_code == 200
        await sandbox.act(payment.gateway_ref, "approve")
        r = await post_webhook(service, webhook_body(payment, "succeeded"))
        assert r.status_code == 200 and r.json()["outcome"] == "confirmed:completed", r.text
    row = await payment_row(service, payment.id)
    assert row.status == "COMPLETED"
    order = (await order_json(service, order_id))["order"]
    assert order["status"] == "CONFIRMED" and order["needs_review"] is True
    statuses = [e.to_status for e in await events_of(service, order_id, "payment.status")]
    assert statuses == ["INITIATED", "FAILED", "COMPLETED"]
