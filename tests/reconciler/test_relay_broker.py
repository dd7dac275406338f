"""The relay against a real broker that refuses one channel, or stalls: nothing else waits."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from channels import Message, create_broker
from orders.workflow import OrderStatus
from orders.writes import Actor, Publisher, change_order_status
from reconciler.relay import Relay
from tests.channels.helpers import RedisServer
from tests.conftest import Backend, StartService, fresh_pg_database
from tests.reconciler.test_relay_poison import new_order, stragglers, unpublished_ids


@pytest.fixture(params=["sqlite", "postgres"])
async def backend(
    request: pytest.FixtureRequest, tmp_path: Path, private_redis: RedisServer
) -> AsyncIterator[Backend]:
    """Each database, with a Redis of this test's own that it may restrict or pause."""
    if request.param == "sqlite":
        yield Backend("sqlite", f"sqlite+aiosqlite:///{tmp_path}/o.db", private_redis.url)
        return
    async with fresh_pg_database() as url:
        yield Backend("postgres", url, private_redis.url)


async def test_an_event_the_broker_refuses_does_not_hold_up_the_ones_after_it(
    start_service: StartService, private_redis: RedisServer
) -> None:
    service = await start_service()
    refused, _ = await stragglers(service, "bad", "ok")
    prefix = service.settings.redis_channel_prefix
    # Redis's ACL refuses every channel of customer "bad" (NOPERM); everything else is allowed.
    await private_redis.command(
        "ACL",
        "SETUSER",
        "default",
        "resetchannels",
        f"&{prefix}customer:ok",
        f"&{prefix}store:*",
        f"&{prefix}_*",
    )
    relay = Relay(service.db, service.publisher, service.metrics, grace=0, max_attempts=2)
    async with service.broker.subscribe(prefix + "customer:ok") as sub:
        assert await relay.run_once() == 1
        item = await asyncio.wait_for(sub.get(), 5)
        assert isinstance(item, Message) and item.data.startswith("2 ")
    assert await unpublished_ids(service) == [refused]
    assert await relay.run_once() == 0
    assert await unpublished_ids(service) == []
    assert service.metrics.registry.get_sample_value("relay_parked_events_total") == 1


async def test_writes_go_on_while_the_relay_waits_on_a_paused_broker(
    start_service: StartService, private_redis: RedisServer
) -> None:
    service = await start_service()
    await stragglers(service, "sam")
    order_ids = [await new_order(service, "tia") for _ in range(10)]
    # The writer publishes to a broker of its own, so only the relay meets the paused Redis.
    local = create_broker(None)
    await local.connect()
    writer = Publisher(service.db, local, prefix="w:", metrics=service.metrics)
    relay = Relay(service.db, service.publisher, service.metrics, grace=0)
    await private_redis.command("CLIENT", "PAUSE", "8000", "ALL")
    loop = asyncio.get_running_loop()
    paused_until = loop.time() + 8
    try:
        relaying = asyncio.create_task(relay.run_once())
        written = 0
        for order_id in order_ids:
            if relaying.done():
                break
            await change_order_status(
                service.db,
                writer,
                service.metrics,
                order_id=order_id,
                to=OrderStatus.PREPARING,
                actor=Actor.system(),
            )
            written += 1
        # The relay cannot publish while Redis is paused; it gives up the pass without marking.
        assert await asyncio.wait_for(relaying, 15) == 0
        assert loop.time() < paused_until, "the relay must not wait out the whole pause"
        assert written == len(order_ids), (
            f"only {written} write(s) got through while the relay waited on the broker"
        )
    finally:
        await private_redis.command("CLIENT", "UNPAUSE")
        await local.disconnect()
