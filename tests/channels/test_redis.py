"""RedisBroker specifics: one connection for all, confirmed and reference-counted channels."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from channels import Message
from channels.redis import BATCH_SIZE, RedisBroker
from tests.channels.conftest import make_redis_broker
from tests.channels.helpers import TIMEOUT, RedisServer, receive


@pytest.fixture
async def broker(redis_url: str) -> AsyncIterator[RedisBroker]:
    """A connected RedisBroker on the shared Redis."""
    instance = make_redis_broker(redis_url)
    await instance.connect()
    try:
        yield instance
    finally:
        await instance.disconnect()


@pytest.fixture
async def private_broker(private_redis: RedisServer) -> AsyncIterator[RedisBroker]:
    """A connected RedisBroker on this test's own Redis, where server-wide counts are ours."""
    instance = make_redis_broker(private_redis.url)
    await instance.connect()
    try:
        yield instance
    finally:
        await instance.disconnect()


async def numsub(client: aioredis.Redis, channel: str) -> int:
    """How many connections Redis has subscribed to ``channel``."""
    reply = await client.pubsub_numsub(channel)
    return int(reply[0][1])


async def test_subscribe_returns_once_redis_has_confirmed(
    broker: RedisBroker, shared_redis: aioredis.Redis, prefix: str
) -> None:
    for i in range(20):
        async with broker.subscribe(f"{prefix}{i}"):
            assert await numsub(shared_redis, f"{prefix}{i}") == 1


async def test_the_last_subscriber_leaving_unsubscribes_the_channel(
    broker: RedisBroker, shared_redis: aioredis.Redis, prefix: str
) -> None:
    channel = prefix + "a"
    async with broker.subscribe(channel):
        async with broker.subscribe(channel):
            # Two local subscribers share the one SUBSCRIBE.
            assert await numsub(shared_redis, channel) == 1
        assert await numsub(shared_redis, channel) == 1
    for _ in range(int(TIMEOUT / 0.01)):
        if await numsub(shared_redis, channel) == 0:
            break
        await asyncio.sleep(0.01)
    assert await numsub(shared_redis, channel) == 0


async def test_one_pubsub_connection_serves_every_subscription(
    private_broker: RedisBroker, private_redis: RedisServer
) -> None:
    async with asyncio.TaskGroup() as group:
        inside = asyncio.Event()
        release = asyncio.Event()
        entered = 0

        async def hold(channel: str) -> None:
            nonlocal entered
            async with private_broker.subscribe(channel):
                entered += 1
                if entered == 100:
                    inside.set()
                await release.wait()

        for i in range(100):
            group.create_task(hold(f"c{i % 40}"))
        await asyncio.wait_for(inside.wait(), TIMEOUT)
        clients = await private_redis.command("CLIENT", "LIST", "TYPE", "pubsub")
        release.set()
    assert len(clients.decode().splitlines()) == 1


async def test_concurrent_subscribes_are_batched_into_few_commands(
    private_broker: RedisBroker, private_redis: RedisServer
) -> None:
    count = 10_000
    await private_redis.command("CONFIG", "RESETSTAT")
    entered = 0
    all_inside = asyncio.Event()
    release = asyncio.Event()

    async def hold(i: int) -> None:
        nonlocal entered
        async with private_broker.subscribe(f"c{i}"):
            entered += 1
            if entered == count:
                all_inside.set()
            await release.wait()

    async with asyncio.TaskGroup() as group:
        for i in range(count):
            group.create_task(hold(i))
        # A bound on stalls, not on speed: fail only if TIMEOUT passes with no subscribe
        # confirmed, however long 10,000 take on this machine.
        before = -1
        while not all_inside.is_set():
            assert entered > before, f"stalled at {entered} of {count} subscribes"
            before = entered
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(all_inside.wait(), TIMEOUT)
        assert await private_redis.command("PUBSUB", "NUMPAT") == 0
        channels = await private_redis.command("PUBSUB", "CHANNELS")
        assert len(channels) == count
        stats = await private_redis.command("INFO", "commandstats")
        release.set()
    calls = int(stats["cmdstat_subscribe"]["calls"])
    assert count // BATCH_SIZE <= calls <= 3 * (count // BATCH_SIZE)


async def test_one_connection_carries_many_channels_and_each_message_reaches_only_its_own(
    broker: RedisBroker, shared_redis: aioredis.Redis, prefix: str
) -> None:
    # Both channels arrive over the broker's one pub/sub connection; routing each message to
    # the subscriptions of its channel, and no other, is our fan-out's job.
    async with broker.subscribe(prefix + "a") as sub_a, broker.subscribe(prefix + "b") as sub_b:
        await shared_redis.publish(prefix + "b", "for b")
        await shared_redis.publish(prefix + "a", "for a")
        assert await receive(sub_b) == Message(prefix + "b", "for b")
        # Redis delivers in order on the one connection: had "for b" reached sub_a, it would
        # come before "for a".
        assert await receive(sub_a) == Message(prefix + "a", "for a")


async def test_a_broker_on_a_given_client_leaves_the_client_open(
    redis_url: str, prefix: str
) -> None:
    async with aioredis.Redis.from_url(redis_url) as client:
        broker = RedisBroker(client=client, reconnect_delay=0.05)
        await broker.connect()
        async with broker.subscribe(prefix + "a") as sub:
            await broker.publish(prefix + "a", "hi")
            assert await receive(sub) == Message(prefix + "a", "hi")
        await broker.disconnect()
        assert await client.ping()


def test_the_broker_needs_exactly_one_of_url_and_client() -> None:
    url = "redis://127.0.0.1:6379/0"
    with pytest.raises(ValueError, match="exactly one"):
        RedisBroker()
    with pytest.raises(ValueError, match="exactly one"):
        RedisBroker(url, client=aioredis.Redis())
    with pytest.raises(ValueError, match="reconnect_delay"):
        RedisBroker(url, reconnect_delay=2, max_reconnect_delay=1)


async def test_connect_is_idempotent(
    private_broker: RedisBroker, private_redis: RedisServer
) -> None:
    await private_broker.connect()  # a second time
    assert private_broker.connected
    async with private_broker.subscribe("a") as sub:
        # Still one pub/sub connection and one reader: a second reader would deliver twice.
        clients = await private_redis.command("CLIENT", "LIST", "TYPE", "pubsub")
        assert len(clients.decode().splitlines()) == 1
        await private_broker.publish("a", "once")
        await private_broker.publish("a", "sentinel")
        assert await receive(sub) == Message("a", "once")
        assert await receive(sub) == Message("a", "sentinel")
