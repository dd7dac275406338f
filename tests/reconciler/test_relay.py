"""The outbox relay: stragglers get published once, several relays split the work, retention."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import orjson
import pytest
from sqlalchemy import func, select, update
from websockets.asyncio.client import connect

from channels import Message, create_broker
from channels.base import SubscriptionLike
from orders.hooks import Hooks
from orders.metrics import Metrics
from orders.models import Event, StreamEvent, utcnow
from orders.workflow import OrderStatus
from orders.writes import Delivery, Publisher
from reconciler.relay import Relay
from server import protocol
from tests.conftest import Service
from tests.reconciler.test_relay_poison import unpublished_ids
from tests.support.clients import auth, order_body, recv_events, recv_json, token, until_sentinel
from tests.support.writes import write_without_publishing


async def unpublished(service: Service) -> int:
    async with service.db.read() as session:
        return int(
            await session.scalar(
                select(func.count()).select_from(Event).where(Event.published_at.is_(None))
            )
            or 0
        )


async def new_order(service: Service, customer: str) -> str:
    r = await service.http.post("/api/orders", json=order_body(), headers=auth(token(customer)))
    assert r.status_code == 201
    return str(r.json()["order"]["id"])


async def until_unpublished(service: Service, count: int) -> None:
    """Wait until exactly ``count`` events are unpublished: the app marks its own publishes in
    the background, so right after a write its event may not be marked yet."""
    async with asyncio.timeout(5):
        while await unpublished(service) != count:
            await asyncio.sleep(0.02)


async def until_sentinel_message(sub: SubscriptionLike, order_id: str) -> list[int]:
    """The seqs of every broker message before the sentinel order's (the complete set)."""
    seen: list[int] = []
    async with asyncio.timeout(10):
        async for item in sub:
            assert isinstance(item, Message), item
            seq, text = protocol.unpack(item.data)
            if orjson.loads(text)["order_id"] == order_id:
                return seen
            seen.append(seq)
    raise AssertionError("subscription ended")


async def test_the_probe_publishes_an_empty_message_on_the_probe_channel_of_each_streams_shard(
    service: Service,
) -> None:
    prefix = service.settings.redis_channel_prefix
    base = prefix + "_probe"
    # The stream's own channel is its hash tag: on a Redis Cluster the probe lands on its shard.
    shards = {f"{base}{{{service.publisher.channel(s)}}}" for s in ("customer:ann", "store:s-1")}
    async with service.broker.subscribe(base, *sorted(shards)) as sub:

        async def messages(count: int) -> list[Message]:
            got: list[Message] = []
            async with asyncio.timeout(5):
                while len(got) < count:
                    item = await sub.get()
                    if isinstance(item, Message):
                        got.append(item)
            return got

        assert await service.publisher.probe() is True
        assert [(m.channel, m.data) for m in await messages(1)] == [(base, "")]
        assert await service.publisher.probe("customer:ann", "store:s-1") is True
        got = await messages(2)
        assert {m.channel for m in got} == shards and {m.data for m in got} == {""}


async def test_a_broker_that_takes_nothing_fails_the_probe_and_the_publish(
    service: Service,
) -> None:
    metrics = Metrics()
    down = Publisher(
        service.db,
        create_broker(None),  # never connected: every publish raises BrokerError
        prefix=service.settings.redis_channel_prefix,
        metrics=metrics,
    )
    assert await down.probe() is False
    assert await down.probe("customer:ann") is False
    # A publish it cannot take is left to the relay: False, and counted as a failure.
    assert await down.publish([Delivery("customer:ann", 1, "{}")], [1]) is False
    assert metrics.registry.get_sample_value("publish_failures_total") == 1


class HoldFirstPublish(Hooks):
    """Holds the sender on its first batch (``every``: on every batch) until released, so the
    queue behind it fills; counts the held batches that were cancelled instead."""

    def __init__(self, *, every: bool = False) -> None:
        self.every = every
        self.holding = asyncio.Event()
        self.release = asyncio.Event()
        self.cancelled = 0
        self.batches: list[list[int]] = []

    async def before_publish(self, event_ids: Sequence[int]) -> None:
        self.batches.append(list(event_ids))
        if self.every or not self.holding.is_set():
            self.holding.set()
            try:
                await self.release.wait()
            except asyncio.CancelledError:
                self.cancelled += 1
                raise


def publisher_tasks(before: set[asyncio.Task[Any]]) -> list[str]:
    """The publisher background tasks started since ``before`` and still running."""
    return [
        t.get_name()
        for t in asyncio.all_tasks() - before
        if not t.done() and t.get_name().startswith("publish-")
    ]


async def test_a_full_publish_queue_leaves_the_event_to_the_relay_and_takes_the_next_later(
    service: Service,
) -> None:
    with pytest.raises(ValueError):
        Publisher(service.db, service.broker, prefix="q:", metrics=Metrics(), queue_size=0)
    hold, metrics = HoldFirstPublish(), Metrics()
    publisher = Publisher(
        service.db, service.broker, prefix="q:", metrics=metrics, queue_size=1, hooks=hold
    )

    def delivery(seq: int) -> list[Delivery]:
        return [Delivery("customer:qa", seq, orjson.dumps({"n": seq}).decode())]

    async with service.broker.subscribe("q:customer:qa") as sub, publisher:
        assert await publisher.publish(delivery(1), [1]) is True
        async with asyncio.timeout(5):
            await hold.holding.wait()  # the sender has taken seq 1: the queue is empty
        assert await publisher.publish(delivery(2), [2]) is True
        assert publisher.queued == 1
        assert metrics.registry.get_sample_value("publish_queue_depth") == 1
        # Full: seq 3 is left to the relay, and counted.
        assert await publisher.publish(delivery(3), [3]) is False
        assert metrics.registry.get_sample_value("publish_queue_overflow_total") == 1
        hold.release.set()
        seqs: list[int] = []
        async with asyncio.timeout(5):
            while seqs != [1, 2]:
                item = await sub.get()
                if isinstance(item, Message):
                    seqs.append(protocol.unpack(item.data)[0])
        # Room again: the next is queued and published after the others (the sentinel).
        assert await publisher.publish(delivery(4), [4]) is True
        async with asyncio.timeout(5):
            while seqs[-1] != 4:
                item = await sub.get()
                if isinstance(item, Message):
                    seqs.append(protocol.unpack(item.data)[0])
    assert seqs == [1, 2, 4]
    # The hook saw each batch's event ids (what the relay would be left with had it failed).
    assert hold.batches == [[1], [2], [4]]


async def test_at_shutdown_the_queued_events_still_go_out_and_the_batch_in_flight_is_the_relays(
    service: Service,
) -> None:
    hold = HoldFirstPublish()
    publisher = Publisher(service.db, service.broker, prefix="q:", metrics=Metrics(), hooks=hold)

    def delivery(seq: int) -> list[Delivery]:
        return [Delivery("customer:qz", seq, orjson.dumps({"n": seq}).decode())]

    async with service.broker.subscribe("q:customer:qz") as sub:
        before = asyncio.all_tasks()
        async with publisher:
            assert sorted(publisher_tasks(before)) == ["publish-marker", "publish-sender"]
            assert await publisher.publish(delivery(1), [1]) is True
            async with asyncio.timeout(5):
                await hold.holding.wait()  # the sender is stuck on seq 1's batch
            assert await publisher.publish(delivery(2), [2]) is True
            assert publisher.queued == 1
        # Closed: the stuck batch was abandoned (the relay has it), the queue was drained, and
        # no background task is left running.
        assert hold.cancelled == 1
        assert publisher.queued == 0
        assert publisher_tasks(before) == []
        # Outside the context a publish goes out at once: the sentinel.
        assert await publisher.publish(delivery(3), [3]) is True
        seqs: list[int] = []
        async with asyncio.timeout(5):
            while not seqs or seqs[-1] != 3:
                item = await sub.get()
                if isinstance(item, Message):
                    seqs.append(protocol.unpack(item.data)[0])
    assert seqs == [2, 3]


async def test_a_broker_that_takes_nothing_holds_up_shutdown_only_for_the_drain_timeout(
    service: Service,
) -> None:
    hold = HoldFirstPublish(every=True)
    publisher = Publisher(
        service.db, service.broker, prefix="q:", metrics=Metrics(), drain_timeout=0.05, hooks=hold
    )
    delivery = [Delivery("customer:qy", 1, "{}")]
    # Only a drain without its bound could reach this (the held batch never finishes).
    async with asyncio.timeout(10):
        async with publisher:
            assert await publisher.publish(delivery, [1]) is True
            await hold.holding.wait()
            assert await publisher.publish(delivery, [2]) is True
    # The sender's batch and the drain's were both given up; what was queued is the relay's.
    assert hold.cancelled == 2
    assert publisher.queued == 0


async def test_outside_a_context_a_publish_goes_out_and_marks_exactly_its_events_at_once(
    service: Service,
) -> None:
    orders = [await new_order(service, "ola"), await new_order(service, "ola")]
    for order_id in orders:
        await write_without_publishing(service, order_id, OrderStatus.PREPARING)
    await until_unpublished(service, 2)
    first, second = await unpublished_ids(service)
    publisher = Publisher(service.db, service.broker, prefix="q:", metrics=Metrics())
    assert await publisher.publish([Delivery("customer:ola", 3, "{}")], [first]) is True
    # Marked before publish returned, and only the event it published.
    assert await unpublished_ids(service) == [second]


async def test_the_relay_waits_out_the_grace_period_then_publishes_each_straggler_once(
    service: Service,
) -> None:
    order_id = await new_order(service, "uma")
    await write_without_publishing(service, order_id, OrderStatus.PREPARING)
    await until_unpublished(service, 1)
    channel = service.settings.redis_channel_prefix + "customer:uma"
    async with service.broker.subscribe(channel) as sub:
        relay = Relay(service.db, service.publisher, service.metrics, grace=3600)
        assert await relay.run_once() == 0, "inside the grace period the writer may still publish"
        relay = Relay(service.db, service.publisher, service.metrics, grace=0)
        assert await relay.run_once() == 1
        assert await relay.run_once() == 0
        assert await unpublished(service) == 0
        # Everything the subscriber got before a sentinel: the straggler, once.
        assert await until_sentinel_message(sub, await new_order(service, "uma")) == [2]


async def test_two_relays_at_once_publish_everything_and_clients_get_each_event_once(
    service: Service,
) -> None:
    order_ids = [await new_order(service, "vic") for _ in range(6)]
    for order_id in order_ids:
        await write_without_publishing(service, order_id, OrderStatus.PREPARING)
        await write_without_publishing(service, order_id, OrderStatus.READY)
    await until_unpublished(service, 12)
    prefix = service.settings.redis_channel_prefix
    async with (
        connect(f"{service.ws_url}?token={token('vic')}&since=6") as ws,
        service.broker.subscribe(prefix + "customer:vic") as customer_sub,
        service.broker.subscribe(prefix + "store:store-1") as store_sub,
    ):
        assert (await recv_json(ws))["head_seq"] == 18
        # The client's backfill of 7..18 is done once its last event is here: from now on
        # anything it receives comes from the relays.
        assert [e["seq"] for e in await recv_events(ws, 12)] == list(range(7, 19))
        relays = [
            Relay(service.db, service.publisher, service.metrics, grace=0, batch=3)
            for _ in range(2)
        ]
        for _ in range(10):
            if not any(await asyncio.gather(*(r.run_once() for r in relays))):
                break
        assert await unpublished(service) == 0
        # What subscribers received, not what the relays say. Two relays may interleave their
        # batches, so the order is not theirs to keep (hubs order by seq).
        sentinel = await new_order(service, "vic")
        for sub in (customer_sub, store_sub):
            seen = await until_sentinel_message(sub, sentinel)
            assert set(seen) == set(range(7, 19)), seen
            duplicates = len(seen) - 12
            if service.db.is_postgres:
                # Advisory-lock claims split the work: each straggler went out exactly once.
                assert duplicates == 0, seen
            else:
                # SQLite has one relay in production; two at once may both publish an event,
                # never more than once each.
                assert max(seen.count(seq) for seq in seen) <= 2, seen

        # Whatever the relays doubled, the client got nothing twice.
        async def already_written() -> str:
            return sentinel

        assert await until_sentinel(ws, already_written) == []


async def test_a_resume_from_before_the_retention_window_gets_a_reset(service: Service) -> None:
    old = await new_order(service, "wes")
    await service.http.post(
        f"/api/pos/orders/{old}/status",
        json={"status": "PREPARING"},
        headers=auth(token("pos", role="pos", store_id="store-1")),
    )
    async with service.db.transaction() as session:
        await session.execute(update(Event).values(created_at=utcnow() - timedelta(days=40)))
    recent = await new_order(service, "wes")
    relay = Relay(service.db, service.publisher, service.metrics, retention=timedelta(days=30))
    assert await relay.prune_once() == 2
    async with service.db.read() as session:
        left = list(
            (
                await session.execute(
                    select(StreamEvent.seq).where(StreamEvent.stream == "customer:wes")
                )
            ).scalars()
        )
    assert left == [3]
    async with connect(f"{service.ws_url}?token={token('wes')}&since=1") as ws:
        reset = await recv_json(ws)
        assert reset["type"] == "reset" and reset["head_seq"] == 3
        assert {o["id"] for o in reset["orders"]} == {old, recent}
    async with connect(f"{service.ws_url}?token={token('wes')}&since=2") as ws:
        hello = await recv_json(ws)
        assert hello["type"] == "hello"
        assert [e["seq"] for e in await recv_events(ws, 1)] == [3]
