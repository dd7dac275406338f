"""Webhook security: only a valid signature over the exact body, fresh and for this gateway,
gets in; everything else is a 400/413 that writes nothing."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest

from gateways.signing import sign
from orders.models import Payment
from tests.conftest import Service, StartService
from tests.payments.helpers import (
    online_order,
    payment_row,
    post_webhook,
    start_payment,
    table_counts,
    webhook_body,
)
from tests.support.asserts import assert_error
from tests.support.sandbox import SANDBOX_SECRET, Sandbox, running_sandbox


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    async with running_sandbox() as sb:
        yield sb


@pytest.fixture
async def paying(start_service: StartService, sandbox: Sandbox) -> Service:
    return await start_service(
        **sandbox.settings(), stripe_api_key="sk_test_x", stripe_webhook_secret="whsec_stripe_x"
    )


async def _payment(service: Service) -> Payment:
    order_id = await online_order(service)
    body = await start_payment(service, order_id)
    return await payment_row(service, body["payment"]["id"])


async def test_a_bad_signature_is_400_and_writes_nothing(paying: Service) -> None:
    payment = await _payment(paying)
    before = await table_counts(paying)
    r = await post_webhook(paying, webhook_body(payment, "succeeded"), secret="not-the-secret")
    assert_error(r, 400, "invalid_signature")
    r = await post_webhook(paying, webhook_body(payment, "succeeded"), signature="t=1,v1=00")
    assert_error(r, 400, "invalid_signature")
    r = await paying.http.post("/webhooks/sandbox", content=webhook_body(payment, "succeeded"))
    assert_error(r, 400, "invalid_signature")
    assert await table_counts(paying) == before
    assert (await payment_row(paying, payment.id)).status == "INITIATED"


async def test_a_body_tampered_after_signing_is_refused(paying: Service) -> None:
    payment = await _payment(paying)
    honest = webhook_body(payment, "declined")
    signature = sign(honest, SANDBOX_SECRET, int(time.time()))
    tampered = honest.replace(b'"declined"', b'"succeeded"')
    before = await table_counts(paying)
    r = await post_webhook(paying, tampered, signature=signature)
    assert_error(r, 400, "invalid_signature")
    assert await table_counts(paying) == before


async def test_a_stale_timestamp_and_the_replay_of_an_old_valid_webhook_are_refused(
    paying: Service,
) -> None:
    payment = await _payment(paying)
    body = webhook_body(payment, "succeeded")
    before = await table_counts(paying)
    r = await post_webhook(paying, body, at=time.time() - 3600)
    assert_error(r, 400, "invalid_signature")
    assert await table_counts(paying) == before
    # Replayed within the tolerance: the event id was seen, so it is a no-op.
    assert (await post_webhook(paying, body)).json()["outcome"] == "apply"
    after_first = await table_counts(paying)
    replay = await post_webhook(paying, body)
    assert replay.status_code == 200 and replay.json()["outcome"] == "duplicate"
    assert await table_counts(paying) == after_first


async def test_a_valid_sandbox_webhook_sent_to_another_gateways_path_is_refused(
    paying: Service,
) -> None:
    payment = await _payment(paying)
    before = await table_counts(paying)
    r = await post_webhook(paying, webhook_body(payment, "succeeded"), gateway="stripe")
    assert_error(r, 400, "invalid_signature")
    r = await post_webhook(paying, webhook_body(payment, "succeeded"), gateway="phonepe")
    assert_error(r, 404, "not_found")
    assert await table_counts(paying) == before


async def test_an_oversized_body_is_413_and_writes_nothing(paying: Service) -> None:
    payment = await _payment(paying)
    before = await table_counts(paying)
    huge = webhook_body(payment, "succeeded", description="x" * 70_000)
    r = await post_webhook(paying, huge)
    assert_error(r, 413, "payload_too_large")
    assert await table_counts(paying) == before
