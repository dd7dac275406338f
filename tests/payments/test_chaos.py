"""The chaos run: many payments through the sandbox with webhooks dropped, duplicated and
reordered and status calls answered 429 — every payment settles exactly once, at the truth."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from typing import Any

import orjson
from sqlalchemy import func, select
from websockets.asyncio.client import connect

from gateways.sandbox_server import Chaos
from orders.models import Order, Payment, Refund, Stream, StreamEvent
from tests.conftest import Service, StartService
from tests.payments.helpers import events_of
from tests.reconciler.support import FAST_SCHEDULE, reconciler_for
from tests.support.clients import auth, order_body, recv_json, token
from tests.support.sandbox import running_sandbox


async def refund_statuses(service: Service, order_id: str) -> list[str]:
    async with service.db.read() as session:
        rows = (await session.execute(select(Refund).where(Refund.order_id == order_id))).scalars()
        return [r.status for r in rows]


async def store_head(service: Service) -> int:
    async with service.db.read() as session:
        stream = await session.get(Stream, "store:store-1")
    return stream.head_seq if stream is not None else 0


#: As the issue asks.
PAYMENTS = 200
CUSTOMERS = 12
STORE_POS = token("pos-chaos", role="pos", store_id="store-1")


async def test_chaos_every_payment_settles_once_at_the_gateways_truth(
    start_service: StartService,
) -> None:
    chaos = Chaos(drop=50, duplicate=20, reorder=30, reorder_seconds=0.5, status_429=20)
    rng = random.Random(5)
    async with running_sandbox(chaos, seed=11) as sandbox:
        service = await start_service(
            **sandbox.settings(), sandbox_poll_schedule=FAST_SCHEDULE, sandbox_rate_limit=""
        )
        seen: list[dict[str, Any]] = []
        async with connect(f"{service.ws_url}?token={STORE_POS}") as ws:
            hello = await recv_json(ws)
            assert hello["type"] == "hello"

            async def listen() -> None:
                async for raw in ws:
                    message = orjson.loads(raw)
                    if message["type"] == "event":
                        seen.append(message)

            listener = asyncio.create_task(listen())
            stop = asyncio.Event()
            async with reconciler_for(service) as reconciler:
                worker = asyncio.create_task(reconciler.run(stop))
                truth: dict[str, str] = {}
                gate = asyncio.Semaphore(8)

                async def one(index: int) -> None:
                    async with gate:
                        customer = token(f"chaos-{index % CUSTOMERS}")
                        r = await service.http.post(
                            "/api/orders", json=order_body(method="online"), headers=auth(customer)
                        )
                        order_id = r.json()["order"]["id"]
                        r = await service.http.post(
                            f"/api/orders/{order_id}/payments",
                            json={"gateway": "sandbox"},
                            headers=auth(customer),
                        )
                        assert r.status_code == 201, r.text
                        payment_id = r.json()["payment"]["id"]
                        async with service.db.read() as session:
                            payment = await session.get(Payment, payment_id)
                        assert payment is not None
                        action = "approve" if rng.random() < 0.7 else "decline"
                        await sandbox.act(payment.gateway_ref, action)
                        truth[payment_id] = "COMPLETED" if action == "approve" else "FAILED"

                await asyncio.gather(*(one(i) for i in range(PAYMENTS)))

                async def live() -> int:
                    async with service.db.read() as session:
                        statement = select(func.count()).select_from(Payment)
                        statement = statement.where(Payment.status.in_(["INITIATED", "PENDING"]))
                        return int((await session.execute(statement)).scalar_one())

                async with asyncio.timeout(90):
                    while await live():
                        await asyncio.sleep(0.2)
                stop.set()
                await worker
            # A sentinel: one more change, so the subscriber has seen everything before it.
            sentinel = next(iter(truth))
            async with service.db.read() as session:
                sentinel_payment = await session.get(Payment, sentinel)
            assert sentinel_payment is not None
            r = await service.http.post(
                f"/api/orders/{sentinel_payment.order_id}/cancel", headers=auth(STORE_POS)
            )
            assert r.status_code == 200, r.text
            # A paid sentinel is refunded by its cancel (the sandbox's 429s may leave that to
            # the reconciler's backoff); an unpaid one refunds nothing.
            async with reconciler_for(service) as reconciler, asyncio.timeout(30):
                while truth[sentinel] == "COMPLETED" and (
                    await refund_statuses(service, sentinel_payment.order_id)
                ) != ["SUCCEEDED"]:
                    await reconciler.run_once()
                    await asyncio.sleep(0.2)
            async with asyncio.timeout(15):
                while not seen or seen[-1]["seq"] < await store_head(service):
                    await asyncio.sleep(0.05)
            listener.cancel()
    if truth[sentinel] == "COMPLETED":
        truth[sentinel] = "REFUNDED"

    async with service.db.read() as session:
        payments = {p.id: p for p in (await session.execute(select(Payment))).scalars()}
        orders = {o.id: o for o in (await session.execute(select(Order))).scalars()}
        index = list((await session.execute(select(StreamEvent))).scalars())
    assert {pid: p.status for pid, p in payments.items()} == truth
    for payment_id, status in truth.items():
        order_id = payments[payment_id].order_id
        settled = [
            e.to_status
            for e in await events_of(service, order_id, "payment.status")
            if e.to_status in ("COMPLETED", "FAILED")
        ]
        if status != "REFUNDED":
            assert settled == [status], payment_id
        if status == "REFUNDED":
            assert settled == ["COMPLETED"], payment_id
            continue
        expected = "CONFIRMED" if status == "COMPLETED" else "PENDING_PAYMENT"
        if order_id != sentinel_payment.order_id:
            assert orders[order_id].status == expected
    # Every stream is contiguous: 1..head with no hole.
    by_stream: dict[str, list[int]] = {}
    for row in index:
        by_stream.setdefault(row.stream, []).append(row.seq)
    for stream, stream_seqs in by_stream.items():
        assert sorted(stream_seqs) == list(range(1, len(stream_seqs) + 1)), stream
    # The store's subscriber saw each change once, in order.
    store_seqs = [e["seq"] for e in seen]
    assert store_seqs == list(range(1, len(by_stream["store:store-1"]) + 1))
    terminal = Counter(
        e["payment"]["id"]
        for e in seen
        if e["kind"] == "payment.status" and e["status"] in ("COMPLETED", "FAILED")
    )
    assert terminal == Counter(truth.keys())
    async with service.db.read() as session:
        refunds = list((await session.execute(select(Refund))).scalars())
    # The only refund is the paid sentinel's, once.
    assert [(r.order_id, r.status) for r in refunds] == (
        [(sentinel_payment.order_id, "SUCCEEDED")] if truth[sentinel] == "REFUNDED" else []
    )
    assert sandbox.server.stats["webhooks_dropped"] > 0
    assert sandbox.server.stats["status_429"] > 0
