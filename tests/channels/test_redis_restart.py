"""Redis goes away and comes back: the reader reconnects itself and subscribers hear of the gap."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from channels import BrokerError, Gap, Heartbeat, Message
from channels.redis import RedisBroker
from tests.channels.conftest import make_redis_broker
from tests.channels.helpers import RedisServer, receive, wait_until

pytestmark = pytest.mark.slow


@pytest.fixture
async def broker(private_redis: RedisServer) -> AsyncIterator[RedisBroker]:
    """A connected RedisBroker on this test's own Redis, with a fast watchdog."""
    instance = make_redis_broker(private_redis.url, health_check_interval=0.2)
    await instance.connect()
    assert instance.connected
    try:
        yield instance
    finally:
        await instance.disconnect()


async def test_reader_reconnects_after_redis_restarts_and_subscribers_get_a_gap(
    broker: RedisBroker, private_redis: RedisServer
) -> None:
    async with (
        broker.subscribe("orders") as sub,
        Heartbeat(broker, interval=0.05, stale_after=0.3) as heartbeat,
    ):
        await wait_until(lambda: heartbeat.delivering, what="the heartbeat is delivering")
        await broker.publish("orders", "before")
        assert await receive(sub) == Message("orders", "before")

        await private_redis.kill()
        await wait_until(lambda: not broker.connected, what="the broker notices")
        # Fails fast: the bound is generous, a hang would be minutes.
        async with asyncio.timeout(3):
            with pytest.raises(BrokerError):
                await broker.publish("orders", "while down")
        await wait_until(lambda: not heartbeat.delivering, what="the heartbeat goes stale")

        await private_redis.start()
        await wait_until(lambda: broker.connected, what="the broker reconnects")
        assert await receive(sub) == Gap("reconnected")
        await broker.publish("orders", "after")
        assert await receive(sub) == Message("orders", "after")
        await wait_until(lambda: heartbeat.delivering, what="the heartbeat delivers again")
        assert sub.get_nowait() is None


async def test_a_killed_pubsub_connection_is_replaced_and_subscribers_get_a_gap(
    broker: RedisBroker, private_redis: RedisServer
) -> None:
    async with broker.subscribe("a", "b") as sub, broker.subscribe("b") as other:
        for round_ in range(3):
            killed = await private_redis.command("CLIENT", "KILL", "TYPE", "pubsub")
            assert killed == 1
            assert await receive(sub) == Gap("reconnected")
            assert await receive(other) == Gap("reconnected")
            assert broker.connected
            await broker.publish("b", str(round_))
            assert await receive(sub) == Message("b", str(round_))
            assert await receive(other) == Message("b", str(round_))


async def test_many_channels_are_subscribed_again_after_a_reconnect(
    broker: RedisBroker, private_redis: RedisServer
) -> None:
    count = 2500
    subscriptions = [broker.subscribe(f"c{i}") for i in range(count)]
    entered = [await subscription.__aenter__() for subscription in subscriptions]
    try:
        await private_redis.command("CLIENT", "KILL", "TYPE", "pubsub")
        for sub in entered:
            assert await receive(sub) == Gap("reconnected")
        assert len(await private_redis.command("PUBSUB", "CHANNELS")) == count
        await broker.publish("c1234", "hello")
        assert await receive(entered[1234]) == Message("c1234", "hello")
    finally:
        for subscription in reversed(subscriptions):
            await subscription.__aexit__(None, None, None)


async def test_subscribing_while_redis_is_down_returns_at_once_and_gaps_on_reconnect(
    broker: RedisBroker, private_redis: RedisServer
) -> None:
    await private_redis.kill()
    await wait_until(lambda: not broker.connected, what="the broker notices")
    async with asyncio.timeout(1):
        subscription = broker.subscribe("late")
        sub = await subscription.__aenter__()
    try:
        await private_redis.start()
        assert await receive(sub) == Gap("reconnected")
        await broker.publish("late", "hello")
        assert await receive(sub) == Message("late", "hello")
    finally:
        await subscription.__aexit__(None, None, None)


async def test_a_broker_started_while_redis_is_down_connects_when_it_is_up(
    private_redis: RedisServer,
) -> None:
    await private_redis.kill()
    broker = make_redis_broker(private_redis.url)
    try:
        await broker.connect()
        assert not broker.connected
        async with broker.subscribe("a") as sub:
            await private_redis.start()
            await wait_until(lambda: broker.connected, what="the broker connects")
            assert await receive(sub) == Gap("reconnected")
            await broker.publish("a", "hello")
            assert await receive(sub) == Message("a", "hello")
    finally:
        await broker.disconnect()


async def test_paused_redis_is_detected_by_the_heartbeat_and_recovers(
    broker: RedisBroker, private_redis: RedisServer
) -> None:
    async with Heartbeat(broker, interval=0.05, stale_after=0.3) as heartbeat:
        await wait_until(lambda: heartbeat.delivering, what="the heartbeat is delivering")
        # PUBLISH waits while writes are paused; the pub/sub connection itself stays healthy.
        await private_redis.command("CLIENT", "PAUSE", "1500", "WRITE")
        await wait_until(lambda: not heartbeat.delivering, what="the heartbeat goes stale")
        assert broker.connected
        await wait_until(lambda: heartbeat.delivering, what="the heartbeat delivers again")


async def test_an_unresponsive_redis_is_left_by_the_watchdog_and_rejoined(
    broker: RedisBroker, private_redis: RedisServer
) -> None:
    async with broker.subscribe("a") as sub:
        # Every command, PING included, waits: like a half-open TCP connection.
        await private_redis.command("CLIENT", "PAUSE", "1500", "ALL")
        await wait_until(lambda: not broker.connected, what="the watchdog gives up")
        await wait_until(lambda: broker.connected, what="the broker reconnects")
        assert await receive(sub) == Gap("reconnected")
        await broker.publish("a", "hello")
        assert await receive(sub) == Message("a", "hello")


async def test_a_subscription_redis_confirms_late_gets_a_gap(
    private_redis: RedisServer,
) -> None:
    broker = make_redis_broker(private_redis.url, subscribe_timeout=0.2)
    try:
        await broker.connect()
        await private_redis.command("CLIENT", "PAUSE", "800", "ALL")
        async with broker.subscribe("a") as sub:
            # subscribe() gave up waiting; the caller may have missed what came meanwhile.
            assert sub.get_nowait() is None
            assert await receive(sub) == Gap("late subscribe")
            await broker.publish("a", "hello")
            assert await receive(sub) == Message("a", "hello")
    finally:
        await broker.disconnect()


async def test_disconnect_during_an_outage_is_clean(
    broker: RedisBroker, private_redis: RedisServer
) -> None:
    async with broker.subscribe("a"):
        await private_redis.kill()
        await wait_until(lambda: not broker.connected, what="the broker notices")
        # Lets the reconnect loop fail an attempt or two; not a silence window: a clean
        # disconnect is owed at any moment of the outage, so any length of pause is correct.
        await asyncio.sleep(0.3)
        await broker.disconnect()
    assert not broker.connected
    with pytest.raises(BrokerError):
        await broker.publish("a", "too late")


async def test_subscriptions_churning_through_reconnects_leave_redis_in_step(
    broker: RedisBroker, private_redis: RedisServer
) -> None:
    stop = asyncio.Event()

    async def churn(worker: int) -> None:
        round_ = 0
        while not stop.is_set():
            round_ += 1
            async with broker.subscribe(f"w{worker}", f"r{round_ % 7}", f"x{worker}:{round_}"):
                await asyncio.sleep(0.001 * (worker % 3))

    async with broker.subscribe("kept") as kept:
        async with asyncio.TaskGroup() as group:
            for worker in range(20):
                group.create_task(churn(worker))
            for _ in range(5):
                await asyncio.sleep(0.05)
                await private_redis.command("CLIENT", "KILL", "TYPE", "pubsub")
            await asyncio.sleep(0.05)
            stop.set()

        await wait_until(lambda: broker.connected, what="the broker reconnects")
        # Redis ends up subscribed to exactly the channels still in use here.
        channels: set[bytes] = set()
        for _ in range(200):
            channels = set(await private_redis.command("PUBSUB", "CHANNELS"))
            if channels == {b"kept"}:
                break
            await asyncio.sleep(0.01)
        assert channels == {b"kept"}
        await broker.publish("kept", "hello")
        while (item := await receive(kept)) != Message("kept", "hello"):
            assert item == Gap("reconnected")
