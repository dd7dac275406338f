"""One event the relay cannot publish holds up none after it, and is parked after a few tries."""

from __future__ import annotations

import asyncio

from sqlalchemy import select, update

from channels import Message
from orders.models import Event
from orders.workflow import OrderStatus
from reconciler.relay import Relay
from tests.conftest import Service
from tests.support.clients import auth, order_body, token
from tests.support.writes import write_without_publishing


async def unpublished_ids(service: Service) -> list[int]:
    """Ids of the events whose published_at is still empty, oldest first."""
    async with service.db.read() as session:
        rows = await session.execute(
            select(Event.id).where(Event.published_at.is_(None)).order_by(Event.id)
        )
        return [int(i) for i in rows.scalars()]


async def new_order(service: Service, customer: str) -> str:
    r = await service.http.post("/api/orders", json=order_body(), headers=auth(token(customer)))
    assert r.status_code == 201, r.text
    return str(r.json()["order"]["id"])


async def stragglers(service: Service, *customers: str) -> list[int]:
    """One order per customer, each with a status change that was never published."""
    order_ids = [await new_order(service, customer) for customer in customers]
    for order_id in order_ids:
        await write_without_publishing(service, order_id, OrderStatus.PREPARING)
    # The creation events were published by the app; wait until its marker has said so.
    ids: list[int] = []

    async def settled() -> bool:
        nonlocal ids
        ids = await unpublished_ids(service)
        return len(ids) == len(customers)

    async with asyncio.timeout(5):
        while not await settled():
            await asyncio.sleep(0.02)
    return ids


async def test_a_malformed_event_does_not_hold_up_later_ones_and_is_parked_after_max_attempts(
    service: Service,
) -> None:
    bad, _good = await stragglers(service, "pat", "quin")
    async with service.db.transaction() as session:
        # A row no payload can be built from (its data must be an object).
        await session.execute(update(Event).where(Event.id == bad).values(data=[1]))
    relay = Relay(service.db, service.publisher, service.metrics, grace=0, max_attempts=3)
    channel = service.settings.redis_channel_prefix + "customer:quin"
    async with service.broker.subscribe(channel) as sub:
        assert await relay.run_once() == 1, "the event after the bad one goes out"
        item = await asyncio.wait_for(sub.get(), 5)
        assert isinstance(item, Message) and item.data.startswith("2 ")
    assert await unpublished_ids(service) == [bad]
    assert await relay.run_once() == 0
    assert await unpublished_ids(service) == [bad], "retried, not yet given up"
    assert await relay.run_once() == 0
    assert await unpublished_ids(service) == [], "parked after the third failed pass"
    assert service.metrics.registry.get_sample_value("relay_parked_events_total") == 1
