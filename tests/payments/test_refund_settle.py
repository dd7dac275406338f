"""Refunds settle like payments: by the gateway's signed refund webhooks (deduped, never
backwards, unknown ones acknowledged) or by the reconciler polling on the payment schedule
(a gateway that cannot answer never FAILS a refund); a cancel of a paid order refunds all of
it exactly once, also when two cancels race. The totals after every step equal the rows."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlalchemy import select, text

from orders.hooks import Hooks
from orders.models import Refund, WebhookReceipt
from orders.schedule import Schedule
from tests.conftest import Service, StartService
from tests.payments.helpers import (
    events_of,
    online_order,
    payment_row,
    post_webhook,
    start_payment,
    wait_for_payment,
)
from tests.payments.test_money import rows_say
from tests.reconciler.support import FAST_SCHEDULE, reconciler_for
from tests.support.asserts import assert_error
from tests.support.clients import auth, token
from tests.support.sandbox import Sandbox, running_sandbox

ALICE = token("alice")
POS1 = token("till-1", role="pos", store_id="store-1")


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    async with running_sandbox() as sb:
        yield sb


@pytest.fixture
async def paying(start_service: StartService, sandbox: Sandbox) -> Service:
    return await start_service(
        **sandbox.settings(), sandbox_poll_schedule=FAST_SCHEDULE, sandbox_rate_limit=""
    )


async def paid_order(service: Service, sandbox: Sandbox, **body: Any) -> tuple[str, str]:
    """An online order paid in full through the sandbox: (order id, payment id)."""
    order_id = await online_order(service)
    started = await start_payment(service, order_id)
    row = await payment_row(service, started["payment"]["id"])
    await sandbox.act(row.gateway_ref, "approve")
    await wait_for_payment(service, row.id, "COMPLETED")
    return order_id, row.id


async def refund(service: Service, order_id: str, **body: Any) -> httpx.Response:
    return await service.http.post(
        f"/api/orders/{order_id}/refunds", json={"reason": "cold soup", **body}, headers=auth(POS1)
    )


async def refunds_of(service: Service, order_id: str) -> list[Refund]:
    async with service.db.read() as session:
        statement = select(Refund).where(Refund.order_id == order_id).order_by(Refund.created_at)
        return list((await session.execute(statement)).scalars())


async def wait_for_refund(
    service: Service, refund_id: str, status: str, timeout: float = 10.0
) -> Refund:
    async with asyncio.timeout(timeout):
        while True:
            async with service.db.read() as session:
                row = await session.get(Refund, refund_id)
            assert row is not None
            if row.status == status:
                return row
            await asyncio.sleep(0.05)


async def order_summary(service: Service, order_id: str) -> dict[str, Any]:
    r = await service.http.get(f"/api/orders/{order_id}", headers=auth(ALICE))
    assert r.status_code == 200, r.text
    summary: dict[str, Any] = r.json()["order"]["payment_summary"]
    return summary


async def assert_totals(service: Service, order_id: str) -> dict[str, Any]:
    """GET's payment_summary equals a direct sum over the payment and refund rows."""
    summary = await order_summary(service, order_id)
    assert summary == await rows_say(service, order_id)
    return summary


def refund_webhook(refund: Refund, status: str, *, event_id: str | None = None) -> bytes:
    """A sandbox webhook about ``refund`` saying ``status``."""
    obj = {
        "object": "refund",
        "id": refund.gateway_ref or "sbx_re_unknown",
        "reference": refund.id,
        "payment": "sbx_pay_x",
        "status": status,
        "amount": refund.amount,
        "currency": refund.currency,
        "created": int(time.time()),
    }
    event = {
        "id": event_id or "evt_" + secrets.token_hex(10),
        "type": f"refund.{status}",
        "created": int(time.time()),
        "data": {"object": obj},
    }
    return json.dumps(event, separators=(",", ":")).encode()


# -- webhooks ----------------------------------------------------------------------------------


async def test_the_sandboxs_duplicated_refund_webhooks_settle_a_pending_refund_once(
    paying: Service, sandbox: Sandbox
) -> None:
    order_id, _ = await paid_order(paying, sandbox)
    # Every webhook sent twice with the same event id; the refund settles 1 s after it is made.
    await sandbox.chaos(duplicate=100, refund_delay=1)
    r = await refund(paying, order_id, amount=700)
    assert r.status_code == 201, r.text
    (made,) = r.json()["refunds"]
    assert made["status"] == "PENDING" and made["gateway_ref"].startswith("sbx_re_")
    assert (await assert_totals(paying, order_id))["refunded"] == 0
    settled = await wait_for_refund(paying, made["id"], "SUCCEEDED")
    async with asyncio.timeout(10):
        while sandbox.server.stats["webhooks_sent"] < 4:  # pending ×2, succeeded ×2
            await asyncio.sleep(0.05)
    assert settled.amount == 700
    assert (await assert_totals(paying, order_id))["refunded"] == 700
    moves = [
        e.to_status
        for e in await events_of(paying, order_id, "refund.status")
        if e.data["refund"]["id"] == made["id"]
    ]
    assert moves == ["REQUESTED", "PENDING", "SUCCEEDED"]
    async with paying.db.read() as session:
        receipts = list(
            (
                await session.execute(
                    select(WebhookReceipt).where(WebhookReceipt.gateway_event_id.like("evt_%"))
                )
            ).scalars()
        )
    refund_receipts = [x for x in receipts if x.body and x.body["type"].startswith("refund.")]
    # One receipt per event id although each came twice.
    assert len(refund_receipts) == 2
    assert {x.body["type"] for x in refund_receipts if x.body} == {
        "refund.pending",
        "refund.succeeded",
    }


async def test_a_refund_webhook_applies_once_never_backwards_and_unknown_is_acknowledged(
    paying: Service, sandbox: Sandbox
) -> None:
    order_id, _ = await paid_order(paying, sandbox)
    await sandbox.chaos(drop=100, refund_delay=30)  # the sandbox's own webhooks never arrive
    r = await refund(paying, order_id)
    (made,) = r.json()["refunds"]
    assert made["status"] == "PENDING"
    (row,) = await refunds_of(paying, order_id)
    body = refund_webhook(row, "succeeded")
    first = await post_webhook(paying, body)
    assert first.status_code == 200 and first.json()["outcome"] == "apply", first.text
    assert (await wait_for_refund(paying, row.id, "SUCCEEDED")).next_check_at is None
    summary = await assert_totals(paying, order_id)
    assert summary["refunded"] == summary["paid"] and summary["can_refund"] is False
    events_after_first = len(await events_of(paying, order_id))
    # The same event again: recorded once, applied once.
    again = await post_webhook(paying, body)
    assert again.status_code == 200 and again.json()["outcome"] == "duplicate"
    # A stale one (pending, or failed after success) never moves it back.
    for status in ("pending", "failed"):
        stale = await post_webhook(paying, refund_webhook(row, status))
        assert stale.status_code == 200 and stale.json()["outcome"] == "stale", stale.text
    (after,) = await refunds_of(paying, order_id)
    assert after.status == "SUCCEEDED"
    assert (await payment_row(paying, after.payment_id)).status == "REFUNDED"
    # Only audit-only observations were added (no stream event).
    kinds = [e.kind for e in (await events_of(paying, order_id))[events_after_first:]]
    assert kinds == ["refund.observation", "refund.observation"]
    await assert_totals(paying, order_id)
    # A refund we never made: recorded and acknowledged, nothing else written.
    stranger = Refund(
        id="ref_" + secrets.token_hex(12), gateway_ref="sbx_re_nobody", amount=5, currency="INR"
    )
    unknown = await post_webhook(paying, refund_webhook(stranger, "succeeded", event_id="evt_x1"))
    assert unknown.status_code == 200 and unknown.json()["outcome"] == "unknown_refund"
    async with paying.db.read() as session:
        receipt = (
            await session.execute(
                select(WebhookReceipt).where(WebhookReceipt.gateway_event_id == "evt_x1")
            )
        ).scalar_one()
    assert receipt.outcome == "unknown_refund"
    assert len(await refunds_of(paying, order_id)) == 1


# -- polling -----------------------------------------------------------------------------------


async def run_passes(service: Service, passes: int, pause: float = 0.3) -> None:
    async with reconciler_for(service) as reconciler:
        for _ in range(passes):
            await reconciler.run_once()
            await asyncio.sleep(pause)


@pytest.mark.parametrize("fault", ["status_5xx", "status_429"])
async def test_a_refund_whose_gateway_answers_errors_stays_requested_then_succeeds(
    paying: Service, sandbox: Sandbox, fault: str
) -> None:
    order_id, payment_id = await paid_order(paying, sandbox)
    await sandbox.chaos(**{fault: 100, "retry_after": 1})
    r = await refund(paying, order_id)
    assert r.status_code == 201, r.text
    (made,) = r.json()["refunds"]
    assert made["status"] == "REQUESTED"
    # Passes until the gateway has refused twice: how soon the second ask comes is the
    # backoff's (or the 429's Retry-After of 1 s), not a number of passes.
    async with asyncio.timeout(15):
        while True:
            (row,) = await refunds_of(paying, order_id)
            assert row.status == "REQUESTED", row.status  # never FAILED by the gateway's errors
            if row.check_failures >= 2:
                break
            await run_passes(paying, 1, pause=0.2)
    assert row.next_check_at is not None and row.last_error
    assert (await payment_row(paying, payment_id)).status == "COMPLETED"
    assert (await assert_totals(paying, order_id))["refunded"] == 0
    # Asked again after a backoff (or the 429's Retry-After of 1 s), not given up on.
    assert sandbox.server.stats["refund_calls"] >= 2
    await sandbox.chaos(**{fault: 0})
    async with asyncio.timeout(15):
        while (await refunds_of(paying, order_id))[0].status != "SUCCEEDED":
            await run_passes(paying, 1, pause=0.2)
    assert sandbox.server.stats["refunds"] == 1
    assert (await payment_row(paying, payment_id)).status == "REFUNDED"
    assert (await assert_totals(paying, order_id))["refunded"] == row.amount


async def test_a_pending_refund_is_polled_and_an_unanswered_status_call_keeps_it_pending(
    paying: Service, sandbox: Sandbox
) -> None:
    order_id, _ = await paid_order(paying, sandbox)
    await sandbox.chaos(drop=100, refund_delay=2)  # only polling can settle it
    r = await refund(paying, order_id, amount=300)
    (made,) = r.json()["refunds"]
    assert made["status"] == "PENDING"
    (row,) = await refunds_of(paying, order_id)
    # The next check follows the payment schedule counted from the refund's creation: the
    # schedule's first check after the moment the gateway's answer was recorded (0.1 s in on a
    # quick machine; a later step when the answer took longer, so no speed is assumed).
    assert row.next_check_at is not None
    schedule = Schedule.parse(FAST_SCHEDULE)
    answered = (row.updated_at - row.created_at).total_seconds()
    step = schedule.next_check(answered, first=schedule.first_min)
    assert step is not None
    assert (row.next_check_at - row.created_at).total_seconds() == pytest.approx(step[0], abs=1e-3)
    assert row.next_check_at > row.updated_at
    await sandbox.chaos(status_5xx=100)
    await run_passes(paying, 3)
    (row,) = await refunds_of(paying, order_id)
    assert row.status == "PENDING" and row.check_failures >= 1
    await sandbox.chaos(status_5xx=0)
    async with asyncio.timeout(15):
        while (await refunds_of(paying, order_id))[0].status != "SUCCEEDED":
            await run_passes(paying, 1, pause=0.2)
    (row,) = await refunds_of(paying, order_id)
    assert row.attempts >= 1 and row.next_check_at is None
    assert (await assert_totals(paying, order_id))["refunded"] == 300


# -- cancel ------------------------------------------------------------------------------------


async def test_a_cancel_of_a_paid_order_refunds_all_of_it_once(
    paying: Service, sandbox: Sandbox
) -> None:
    order_id = await online_order(paying)
    total = (await order_summary(paying, order_id))["outstanding"]
    # 60 % through the gateway, the rest in cash at the counter.
    r = await paying.http.post(
        f"/api/orders/{order_id}/payments",
        json={"gateway": "sandbox", "amount": total * 60 // 100},
        headers=auth(ALICE),
    )
    online = await payment_row(paying, r.json()["payment"]["id"])
    await sandbox.act(online.gateway_ref, "approve")
    await wait_for_payment(paying, online.id, "COMPLETED")
    r = await paying.http.post(
        f"/api/pos/orders/{order_id}/payments",
        json={"method": "cash", "amount": total - online.amount},
        headers=auth(POS1),
    )
    assert r.status_code == 201, r.text
    await refund(paying, order_id, amount=100)  # a dish already refunded: not refunded twice
    assert (await assert_totals(paying, order_id))["refunded"] == 100
    r = await paying.http.post(
        f"/api/orders/{order_id}/cancel", json={"reason": "kitchen closed"}, headers=auth(ALICE)
    )
    assert r.status_code == 200, r.text
    assert r.json()["order"]["status"] == "CANCELLED"
    assert r.json()["order"]["payment_summary"] == await rows_say(paying, order_id)
    rows = await refunds_of(paying, order_id)
    by_reason: dict[str, list[Refund]] = {}
    for row in rows:
        by_reason.setdefault(row.reason, []).append(row)
    cancelled = by_reason["order_cancelled"]
    cash_left = total - online.amount - 100  # the newest (cash) payment gave the 100 back
    assert sorted(x.amount for x in cancelled) == sorted([cash_left, online.amount])
    assert {x.status for x in rows} == {"SUCCEEDED"}
    summary = await assert_totals(paying, order_id)
    assert summary["refunded"] == total and summary["can_refund"] is False
    # A retried cancel: 409, and no second refund.
    assert_error(
        await paying.http.post(f"/api/orders/{order_id}/cancel", headers=auth(ALICE)),
        409,
        "invalid_transition",
    )
    assert len(await refunds_of(paying, order_id)) == len(rows)
    assert sandbox.server.stats["refunds"] == 1  # the cash part was not sent anywhere
    await assert_totals(paying, order_id)


async def test_a_pos_cancel_of_a_paid_order_refunds_it(paying: Service, sandbox: Sandbox) -> None:
    order_id, payment_id = await paid_order(paying, sandbox)
    r = await paying.http.post(
        f"/api/pos/orders/{order_id}/status", json={"status": "CANCELLED"}, headers=auth(POS1)
    )
    assert r.status_code == 200, r.text
    (row,) = await refunds_of(paying, order_id)
    assert (row.reason, row.status, row.idempotency_key) == (
        "order_cancelled",
        "SUCCEEDED",
        f"cancel:{order_id}:{payment_id}",
    )
    assert r.json()["order"]["payment_summary"]["refunded"] == row.amount
    await assert_totals(paying, order_id)


async def test_an_unpaid_cancel_refunds_nothing(paying: Service) -> None:
    order_id = await online_order(paying)
    r = await paying.http.post(f"/api/orders/{order_id}/cancel", headers=auth(ALICE))
    assert r.status_code == 200, r.text
    assert await refunds_of(paying, order_id) == []
    await assert_totals(paying, order_id)


class RacingCancels(Hooks):
    """Holds the first cancel inside its transaction until the second has arrived."""

    def __init__(self) -> None:
        self.arrived: list[str] = []
        self.refunding: list[str] = []
        self.second_arrived = asyncio.Event()
        self.release = asyncio.Event()

    async def before_cancel(self, order_id: str) -> None:
        self.arrived.append(order_id)
        if len(self.arrived) == 2:
            self.second_arrived.set()

    async def before_cancel_refund(self, order_id: str) -> None:
        self.refunding.append(order_id)
        if len(self.refunding) == 1:
            await self.release.wait()


async def _a_lock_is_waited_for(service: Service) -> bool:
    """Whether some PostgreSQL backend of this database waits for a lock another one holds."""
    async with service.db.read() as session:
        waiting = await session.execute(
            text(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
        )
        return bool(waiting.scalar_one())


async def test_two_cancels_racing_create_one_refund(
    start_service: StartService, sandbox: Sandbox
) -> None:
    hooks = RacingCancels()
    service = await start_service(**sandbox.settings(), hooks=hooks)
    order_id, _ = await paid_order(service, sandbox)

    async def cancel(tok: str) -> httpx.Response:
        return await service.http.post(f"/api/orders/{order_id}/cancel", headers=auth(tok))

    first = asyncio.create_task(cancel(ALICE))
    async with asyncio.timeout(10):
        while not hooks.refunding:  # the first holds the order's lock, mid-cancel
            await asyncio.sleep(0.01)
    second = asyncio.create_task(cancel(POS1))
    async with asyncio.timeout(10):
        await hooks.second_arrived.wait()
    if service.db.dialect == "postgresql":
        # Deterministic: the second's lock request on the order row is queued, not granted.
        async with asyncio.timeout(10):
            while not await _a_lock_is_waited_for(service):
                await asyncio.sleep(0.02)
    else:
        # SQLite's writer lock wait cannot be seen from outside. The outcome checked below holds
        # in every interleaving (the first cancels, the second finds it cancelled); this pause
        # only makes the second likely to be waiting when the first lets go.
        await asyncio.sleep(0.2)
    hooks.release.set()
    answers = sorted([(await first).status_code, (await second).status_code])
    assert answers == [200, 409]
    assert len(hooks.arrived) == 2 and hooks.refunding == [order_id]
    rows = await refunds_of(service, order_id)
    assert len(rows) == 1 and rows[0].status == "SUCCEEDED"
    assert sandbox.server.stats["refunds"] == 1
    await assert_totals(service, order_id)
