"""One suite for every broker: what a subscriber of channels may rely on."""

from __future__ import annotations

import asyncio

import pytest

import channels
from channels import Broker, BrokerError, Gap, Heartbeat, Message, Subscription, create_broker
from channels.memory import MemoryBroker
from channels.redis import RedisBroker
from tests.channels.helpers import receive, receive_message, wait_until


def drain(subscription: object) -> list[Message | Gap]:
    """Everything queued in ``subscription`` right now."""
    assert isinstance(subscription, Subscription)
    items: list[Message | Gap] = []
    while (item := subscription.get_nowait()) is not None:
        items.append(item)
    return items


async def test_a_published_message_reaches_the_subscriber(broker: Broker, prefix: str) -> None:
    async with broker.subscribe(prefix + "a") as sub:
        await broker.publish(prefix + "a", "hello")
        assert await receive(sub) == Message(prefix + "a", "hello")


async def test_data_round_trips_unchanged(broker: Broker, prefix: str) -> None:
    payloads = ["", "héllo ✓ 注文", '{"seq": 1, "x": [1, 2]}', "x" * 100_000, "a\r\nb\0c"]
    async with broker.subscribe(prefix + "a") as sub:
        for payload in payloads:
            await broker.publish(prefix + "a", payload)
        assert [(await receive_message(sub)).data for _ in payloads] == payloads


async def test_every_subscriber_of_a_channel_receives_the_message(
    broker: Broker, prefix: str
) -> None:
    async with broker.subscribe(prefix + "a") as first, broker.subscribe(prefix + "a") as second:
        await broker.publish(prefix + "a", "hello")
        assert await receive(first) == Message(prefix + "a", "hello")
        assert await receive(second) == Message(prefix + "a", "hello")


async def test_one_subscription_receives_from_all_its_channels_and_no_others(
    broker: Broker, prefix: str
) -> None:
    async with broker.subscribe(prefix + "a", prefix + "b") as sub:
        assert sub.channels == {prefix + "a", prefix + "b"}
        await broker.publish(prefix + "a", "1")
        await broker.publish(prefix + "other", "not for us")
        await broker.publish(prefix + "b", "2")
        assert await receive(sub) == Message(prefix + "a", "1")
        assert await receive(sub) == Message(prefix + "b", "2")
        assert sub.get_nowait() is None


async def test_a_subscriber_that_left_receives_nothing_more(broker: Broker, prefix: str) -> None:
    async with broker.subscribe(prefix + "a") as staying:
        async with broker.subscribe(prefix + "a") as leaving:
            pass
        await broker.publish(prefix + "a", "after")
        # The staying subscriber proves the message went through the broker.
        assert await receive(staying) == Message(prefix + "a", "after")
        assert leaving.get_nowait() is None


async def test_channel_stays_subscribed_while_any_subscriber_remains(
    broker: Broker, prefix: str
) -> None:
    async with broker.subscribe(prefix + "a") as staying:
        for _ in range(3):
            async with broker.subscribe(prefix + "a", prefix + "b"):
                pass
        await broker.publish(prefix + "a", "still here")
        assert await receive(staying) == Message(prefix + "a", "still here")


async def test_a_channel_can_be_subscribed_again_after_everyone_left(
    broker: Broker, prefix: str
) -> None:
    for round_ in range(5):
        async with broker.subscribe(prefix + "a") as sub:
            await broker.publish(prefix + "a", str(round_))
            assert await receive(sub) == Message(prefix + "a", str(round_))


async def test_order_is_preserved_per_channel(broker: Broker, prefix: str) -> None:
    async with broker.subscribe(prefix + "a", prefix + "b", maxsize=2000) as sub:
        for i in range(500):
            await broker.publish(prefix + "a", str(i))
            await broker.publish(prefix + "b", str(i))
        received: dict[str, list[int]] = {prefix + "a": [], prefix + "b": []}
        for _ in range(1000):
            message = await receive_message(sub)
            received[message.channel].append(int(message.data))
    assert received == {prefix + "a": list(range(500)), prefix + "b": list(range(500))}


async def test_a_full_subscription_drops_new_messages_and_flags_overflow(
    broker: Broker, prefix: str
) -> None:
    async with (
        broker.subscribe(prefix + "a", maxsize=4) as small,
        broker.subscribe(prefix + "a", maxsize=100) as witness,
    ):
        for i in range(10):
            await broker.publish(prefix + "a", str(i))
        # Both are offered each message together, so once the witness has all ten, so does small.
        for i in range(10):
            assert await receive(witness) == Message(prefix + "a", str(i))
        assert small.overflowed
        assert not witness.overflowed
        assert drain(small) == [
            *(Message(prefix + "a", str(i)) for i in range(4)),
            Gap("overflow"),
        ]


async def test_subscribe_then_publish_at_once_is_never_missed(broker: Broker, prefix: str) -> None:
    for i in range(200):
        channel = f"{prefix}{i}"
        async with broker.subscribe(channel) as sub:
            await broker.publish(channel, "first")
            assert await receive(sub) == Message(channel, "first")


async def test_many_concurrent_subscribers_are_all_active_on_entry(
    broker: Broker, prefix: str
) -> None:
    async def subscribe_publish_receive(i: int) -> None:
        channel = f"{prefix}{i}"
        async with broker.subscribe(channel) as sub:
            await broker.publish(channel, str(i))
            assert await receive(sub) == Message(channel, str(i))

    await asyncio.gather(*(subscribe_publish_receive(i) for i in range(2000)))


async def test_subscribe_needs_a_channel(broker: Broker) -> None:
    with pytest.raises(ValueError, match="at least one channel"):
        broker.subscribe()


async def test_connected_follows_connect_and_disconnect(broker: Broker) -> None:
    assert broker.connected
    await broker.disconnect()
    assert not broker.connected


async def test_publish_after_disconnect_raises_broker_error(broker: Broker, prefix: str) -> None:
    await broker.disconnect()
    await broker.disconnect()  # idempotent
    with pytest.raises(BrokerError):
        await broker.publish(prefix + "a", "too late")
    with pytest.raises(BrokerError):
        await broker.publish_many([(prefix + "a", "too late")])


async def test_publish_many_delivers_every_message_in_order(broker: Broker, prefix: str) -> None:
    # One hash tag: on a Redis Cluster, order across channels holds only within a shard
    # (each shard has its own connection); per channel it always holds.
    prefix += "{tag}"
    async with broker.subscribe(prefix + "a", prefix + "b") as sub:
        await broker.publish_many(
            [(prefix + "a", "1"), (prefix + "b", "2"), (prefix + "a", "3"), (prefix + "z", "x")]
        )
        await broker.publish_many([])
        got = [await receive_message(sub) for _ in range(3)]
    assert [(m.channel, m.data) for m in got] == [
        (prefix + "a", "1"),
        (prefix + "b", "2"),
        (prefix + "a", "3"),
    ]


async def test_heartbeat_becomes_delivering(broker: Broker) -> None:
    heartbeat = Heartbeat(broker, interval=0.05, stale_after=1.0)
    assert not heartbeat.delivering
    assert heartbeat.last_received_age is None
    async with heartbeat:
        await wait_until(lambda: heartbeat.delivering, what="the heartbeat is delivering")
        age = heartbeat.last_received_age
        assert age is not None and 0 <= age <= 1.0
    assert heartbeat.channel.startswith("_heartbeat:")
    assert Heartbeat(broker).channel != heartbeat.channel


async def test_heartbeat_goes_stale_when_nothing_comes_back(broker: Broker) -> None:
    async with Heartbeat(broker, interval=0.05, stale_after=0.2) as heartbeat:
        await wait_until(lambda: heartbeat.delivering, what="the heartbeat is delivering")
        # Publishing now fails, as it does when the broker is down.
        await broker.disconnect()
        await wait_until(lambda: not heartbeat.delivering, what="the heartbeat is stale")


def test_the_public_surface_is_pinned() -> None:
    assert sorted(channels.__all__) == [
        "Broker",
        "BrokerError",
        "Gap",
        "Heartbeat",
        "Message",
        "Subscription",
        "create_broker",
    ]
    for name in channels.__all__:
        assert getattr(channels, name).__module__.startswith("channels")


@pytest.mark.parametrize("url", [None, "", "memory://"])
def test_create_broker_without_a_url_is_in_memory(url: str | None) -> None:
    assert isinstance(create_broker(url), MemoryBroker)


@pytest.mark.parametrize("url", ["redis://127.0.0.1:6379/0", "rediss://cache.example:6380"])
async def test_create_broker_with_a_redis_url_is_redis(url: str) -> None:
    broker = create_broker(url, reconnect_delay=0.1)
    try:
        assert isinstance(broker, RedisBroker)
        assert not broker.connected
    finally:
        await broker.disconnect()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://example.com", "'http'"),
        ("unix:///tmp/redis.sock", "'unix'"),
        ("localhost:6379", "no scheme"),
        ("user:secret@localhost", "no scheme"),
    ],
)
def test_create_broker_names_a_bad_scheme(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as excinfo:
        create_broker(url)
    assert "secret" not in str(excinfo.value)
    assert "memory://, redis:// or rediss://" in str(excinfo.value)
