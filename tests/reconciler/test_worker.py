"""The payment reconciler against the sandbox over real HTTP, on a compressed schedule."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import select

from gateways.sandbox_server import Chaos
from orders.models import Order, Payment, Refund
from tests.conftest import Service, StartService
from tests.payments.helpers import (
    events_of,
    online_order,
    payment_row,
    start_payment,
    wait_for_payment,
)
from tests.reconciler.support import FAST_SCHEDULE, Recording, drive, reconciler_for
from tests.support.clients import auth, token
from tests.support.sandbox import Sandbox, running_sandbox
from tests.support.servers import free_port

ALICE = token("alice")


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    # Every webhook dropped: only the reconciler can settle these payments.
    async with running_sandbox(Chaos(drop=100)) as sb:
        yield sb


@pytest.fixture
async def paying(start_service: StartService, sandbox: Sandbox) -> Service:
    return await start_service(**sandbox.settings(), sandbox_poll_schedule=FAST_SCHEDULE)


async def started(service: Service) -> tuple[str, Payment]:
    order_id = await online_order(service)
    body = await start_payment(service, order_id)
    return order_id, await payment_row(service, body["payment"]["id"])


async def order_of(service: Service, order_id: str) -> Order:
    async with service.db.read() as session:
        order = await session.get(Order, order_id)
    assert order is not None
    return order


def status_is(service: Service, payment_id: str, *statuses: str) -> Any:
    async def done() -> bool:
        return (await payment_row(service, payment_id)).status in statuses

    return done


async def test_a_payment_whose_webhook_never_comes_is_settled_by_polling(
    paying: Service, sandbox: Sandbox
) -> None:
    order_id, payment = await started(paying)
    await sandbox.act(payment.gateway_ref, "approve")
    async with reconciler_for(paying) as reconciler:
        before = await payment_row(paying, payment.id)
        await drive(reconciler, status_is(paying, payment.id, "COMPLETED"))
        await reconciler.measure()
        registry = reconciler.metrics.registry
        assert (
            registry.get_sample_value(
                "payment_checks_total", {"gateway": "sandbox", "outcome": "completed"}
            )
            == 1
        )
        assert (
            registry.get_sample_value(
                "payment_decisions_total", {"verdict": "apply", "source": "reconciler"}
            )
            == 1
        )
        assert registry.get_sample_value("payments_due") == 0
        assert registry.get_sample_value("payments_oldest_unsettled_seconds") == 0
    assert (await order_of(paying, order_id)).status == "CONFIRMED"
    row = await payment_row(paying, payment.id)
    assert row.next_check_at is None and row.attempts == before.attempts + 1


async def test_429_and_5xx_never_fail_a_payment_and_it_settles_once_the_gateway_answers(
    paying: Service, sandbox: Sandbox
) -> None:
    order_id, payment = await started(paying)
    await sandbox.act(payment.gateway_ref, "decline")
    await sandbox.chaos(status_429=50, status_5xx=50, retry_after=0)
    async with reconciler_for(paying) as reconciler:
        calls = sandbox.status_calls

        async def answered_many() -> bool:
            return sandbox.status_calls >= calls + 6

        await drive(reconciler, answered_many)
        assert (await payment_row(paying, payment.id)).status == "INITIATED"
        registry = reconciler.metrics.registry
        backoffs = [
            registry.get_sample_value(
                "payment_backoffs_total", {"gateway": "sandbox", "reason": reason}
            )
            or 0
            for reason in ("retry_after", "backoff")
        ]
        assert sum(backoffs) >= 1
        await sandbox.chaos(status_429=0, status_5xx=0)
        await drive(reconciler, status_is(paying, payment.id, "FAILED"))
    assert (await order_of(paying, order_id)).status == "PENDING_PAYMENT"


async def test_a_gateway_refusing_connections_then_hanging_fails_nothing_and_all_settle_after(
    paying: Service, sandbox: Sandbox
) -> None:
    payments = [await started(paying) for _ in range(3)]
    for _, payment in payments:
        await sandbox.act(payment.gateway_ref, "approve")
    dead = f"http://127.0.0.1:{free_port()}"
    async with reconciler_for(paying, sandbox_api_base=dead) as refused:
        for _ in range(10):
            await refused.run_once()
            await asyncio.sleep(0.1)
    await sandbox.chaos(status_hang=100, hang_seconds=5)
    async with reconciler_for(paying, gateway_timeout=0.3) as hanging:
        for _ in range(5):
            await hanging.run_once()
            await asyncio.sleep(0.1)
    for _, payment in payments:
        row = await payment_row(paying, payment.id)
        assert row.status == "INITIATED" and row.check_failures >= 1, row.last_error
    await sandbox.chaos(status_hang=0)
    async with reconciler_for(paying) as back:

        async def all_settled() -> bool:
            rows = [await payment_row(paying, p.id) for _, p in payments]
            return all(r.status == "COMPLETED" for r in rows)

        await drive(back, all_settled, timeout=30)


async def test_a_payment_still_pending_at_its_timeout_expires_after_a_last_check(
    start_service: StartService, sandbox: Sandbox
) -> None:
    service = await start_service(
        **sandbox.settings(),
        sandbox_poll_schedule="first=0.1 0.2x1 then=0.3 timeout=1.5 tail=0.5x2,1 horizon=10",
    )
    order_id, payment = await started(service)
    async with reconciler_for(service) as reconciler:
        await drive(reconciler, status_is(service, payment.id, "EXPIRED"))
    row = await payment_row(service, payment.id)
    assert row.next_check_at is not None  # the tail keeps asking, for a late authorisation
    assert (await order_of(service, order_id)).status == "PENDING_PAYMENT"


async def test_approved_at_the_moment_the_order_expires_ends_completed_never_expired(
    start_service: StartService, sandbox: Sandbox
) -> None:
    service = await start_service(**sandbox.settings(), order_expiry_seconds=1)
    order_id, payment = await started(service)
    await sandbox.act(payment.gateway_ref, "approve")

    await asyncio.sleep(1.1)  # the order's expires_at passes
    async with reconciler_for(service) as reconciler:
        assert await reconciler.expire_orders() == 0
    assert (await payment_row(service, payment.id)).status == "COMPLETED"
    assert (await order_of(service, order_id)).status == "CONFIRMED"
    statuses = [e.to_status for e in await events_of(service, order_id)]
    assert "EXPIRED" not in statuses


async def test_a_success_after_expiry_takes_the_late_success_path_with_one_refund(
    start_service: StartService,
) -> None:
    async with running_sandbox() as sandbox:  # webhooks delivered
        service = await start_service(
            **sandbox.settings(),
            order_expiry_seconds=1,
            sandbox_poll_schedule="first=0.5 0.2x1 then=0.5 timeout=1 tail=0.5x2,1 horizon=10",
        )
        order_id, payment = await started(service)
        await asyncio.sleep(1.1)  # the order's expires_at and the payment's timeout pass
        async with reconciler_for(service) as reconciler:
            assert await reconciler.expire_orders() == 1
        assert (await payment_row(service, payment.id)).status == "EXPIRED"
        assert (await order_of(service, order_id)).status == "EXPIRED"
        # The bank authorises late: the sandbox's webhook says succeeded; the status API agrees.
        await sandbox.act(payment.gateway_ref, "approve")
        await wait_for_payment(service, payment.id, "COMPLETED")
        async with reconciler_for(service) as reconciler:
            await reconciler.run_once()
            # The refund is due at once: this pass sent it; the next changes nothing.
            await reconciler.run_once()
        order = await order_of(service, order_id)
        assert order.status == "EXPIRED" and order.needs_review
        async with service.db.read() as session:
            refunds = list((await session.execute(select(Refund))).scalars())
        assert [(r.payment_id, r.amount, r.status) for r in refunds] == [
            (payment.id, payment.amount, "SUCCEEDED")
        ]
        assert sandbox.server.stats["refunds"] == 1


RATE = 20


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
async def test_two_reconcilers_on_postgres_never_check_one_payment_at_once_and_share_the_limit(
    start_service: StartService, sandbox: Sandbox
) -> None:
    async with contextlib.AsyncExitStack() as stack:
        service = await start_service(
            **sandbox.settings(), sandbox_poll_schedule=FAST_SCHEDULE, sandbox_rate_limit=""
        )
        payments = [await started(service) for _ in range(30)]
        for _, payment in payments:
            await sandbox.act(payment.gateway_ref, "approve")
        recordings = [Recording(), Recording()]
        limited = {"sandbox_rate_limit": f"{RATE}/second"}
        workers = [
            await stack.enter_async_context(
                reconciler_for(service, recording=r, slow=0.05, name=f"r{i}", batch=4, **limited)
            )
            for i, r in enumerate(recordings)
        ]
        stop = asyncio.Event()
        tasks = [asyncio.create_task(w.run(stop)) for w in workers]

        async def all_settled() -> bool:
            rows = [await payment_row(service, p.id) for _, p in payments]
            return all(r.status == "COMPLETED" for r in rows)

        async with asyncio.timeout(60):
            while not await all_settled():
                await asyncio.sleep(0.1)
        stop.set()
        await asyncio.gather(*tasks)
    calls = [(ref, start, end, i) for i, r in enumerate(recordings) for ref, start, end in r.calls]
    assert all(r.calls for r in recordings), "both reconcilers did part of the work"
    by_ref: dict[str, list[tuple[float, float, int]]] = {}
    for ref, start, end, who in calls:
        by_ref.setdefault(ref, []).append((start, end, who))
    for ref, spans in by_ref.items():
        spans.sort()
        for (_, end, _), (start, _, _) in itertools.pairwise(spans):
            assert start >= end, f"{ref} checked twice at once"
    per_second = (await sandbox.http.get("/control/stats")).json()["status_calls_per_second"]
    # One call of slack: a hit at the limiter reaches the sandbox a moment later.
    assert max(per_second.values()) <= RATE + 1, per_second


async def test_an_order_past_expiry_waits_for_a_payment_still_in_flight(
    start_service: StartService, sandbox: Sandbox
) -> None:
    service = await start_service(
        **sandbox.settings(),
        order_expiry_seconds=1,
        sandbox_poll_schedule="first=0.1 0.2x2 then=0.5 timeout=30 tail=5x5,5 horizon=60",
    )
    order_id, payment = await started(service)
    await sandbox.act(payment.gateway_ref, "pending")  # the bank is still authorising
    unpaid = await online_order(service)  # no payment at all
    await asyncio.sleep(1.1)
    async with reconciler_for(service, sandbox_api_base=f"http://127.0.0.1:{free_port()}") as down:
        assert await down.expire_orders() == 1  # the gateway cannot answer: only `unpaid`
    assert (await order_of(service, unpaid)).status == "EXPIRED"
    assert (await order_of(service, order_id)).status == "PENDING_PAYMENT"
    async with reconciler_for(service) as reconciler:
        assert await reconciler.expire_orders() == 0
        assert (await payment_row(service, payment.id)).status == "PENDING"
        assert (await order_of(service, order_id)).status == "PENDING_PAYMENT"
        await sandbox.act(payment.gateway_ref, "approve")
        await drive(reconciler, status_is(service, payment.id, "COMPLETED"))
    assert (await order_of(service, order_id)).status == "CONFIRMED"


async def test_a_start_the_gateway_never_took_is_kept_and_the_reconciler_repeats_it(
    start_service: StartService, sandbox: Sandbox
) -> None:
    # As if the process died between committing INITIATED and calling the gateway.
    down = f"http://127.0.0.1:{free_port()}"
    service = await start_service(
        **{**sandbox.settings(), "sandbox_api_base": down}, sandbox_poll_schedule=FAST_SCHEDULE
    )
    order_id = await online_order(service)
    r = await service.http.post(
        f"/api/orders/{order_id}/payments", json={"gateway": "sandbox"}, headers=auth(ALICE)
    )
    assert r.status_code == 503 and r.json()["error"]["code"] == "gateway_unavailable", r.text
    payment_id = r.json()["error"]["payment_id"]
    row = await payment_row(service, payment_id)
    assert row.status == "INITIATED" and row.started_at is None
    async with reconciler_for(service, sandbox_api_base=sandbox.url) as reconciler:

        async def started_at_the_gateway() -> bool:
            return (await payment_row(service, payment_id)).started_at is not None

        await drive(reconciler, started_at_the_gateway)
        row = await payment_row(service, payment_id)
        assert row.gateway_ref.startswith("sbx_pay_")
        at_gateway = (await sandbox.http.get("/control/payments")).json()["payments"]
        assert [p["reference"] for p in at_gateway] == [payment_id]
        await sandbox.act(row.gateway_ref, "approve")
        await drive(reconciler, status_is(service, payment_id, "COMPLETED"))
    assert (await order_of(service, order_id)).status == "CONFIRMED"


async def test_a_start_the_gateway_refuses_fails_the_attempt_and_a_retry_is_allowed(
    start_service: StartService,
) -> None:
    # A sandbox that wants an API key we do not send: every start is a 401, a definite no.
    async with running_sandbox(api_key="sbx-key-we-lack") as sandbox:
        service = await start_service(**sandbox.settings())
        order_id = await online_order(service)
        r = await service.http.post(
            f"/api/orders/{order_id}/payments", json={"gateway": "sandbox"}, headers=auth(ALICE)
        )
        assert r.status_code == 502 and r.json()["error"]["code"] == "gateway_rejected", r.text
        statuses = [e.to_status for e in await events_of(service, order_id, "payment.status")]
        assert statuses == ["INITIATED", "FAILED"]
        assert (await order_of(service, order_id)).status == "PENDING_PAYMENT"
        again = await service.http.post(
            f"/api/orders/{order_id}/payments", json={"gateway": "sandbox"}, headers=auth(ALICE)
        )
        assert again.status_code == 502, again.text  # a new attempt (a retry), refused again
        async with service.db.read() as session:
            attempts = list((await session.execute(select(Payment))).scalars())
        assert sorted(p.status for p in attempts) == ["FAILED", "FAILED"]


async def test_a_reconciler_without_the_payments_gateway_backs_off_instead_of_spinning(
    paying: Service,
) -> None:
    _, payment = await started(paying)
    await asyncio.sleep(0.2)  # due
    async with reconciler_for(paying, sandbox=False) as blind:
        assert await blind.run_once() == 1
        assert await blind.run_once() == 0  # not claimed again at once
    row = await payment_row(paying, payment.id)
    assert row.status == "INITIATED" and row.check_failures == 1
    assert row.last_error is not None and "not configured" in row.last_error
