"""Subscription and Fanout on their own: bounded queues, gaps, reference counts."""

from __future__ import annotations

import asyncio

import pytest

from channels import Gap, Message, Subscription
from channels.fanout import Fanout
from tests.channels.helpers import receive


def test_an_empty_subscription_has_nothing_to_give() -> None:
    sub = Subscription(["a"])
    assert sub.get_nowait() is None
    assert len(sub) == 0
    assert sub.maxsize == 256
    assert not sub.overflowed


def test_maxsize_must_be_positive() -> None:
    with pytest.raises(ValueError, match="maxsize"):
        Subscription(["a"], maxsize=0)


async def test_get_waits_for_the_next_item() -> None:
    sub = Subscription(["a"])
    getter = asyncio.create_task(sub.get())
    await asyncio.sleep(0)
    assert not getter.done()
    sub.put_nowait(Message("a", "1"))
    assert await asyncio.wait_for(getter, 5) == Message("a", "1")


async def test_a_cancelled_get_loses_nothing() -> None:
    sub = Subscription(["a"])
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(sub.get(), 0.01)
    sub.put_nowait(Message("a", "1"))
    assert await receive(sub) == Message("a", "1")


async def test_only_one_task_may_wait_on_a_subscription() -> None:
    sub = Subscription(["a"])
    first = asyncio.create_task(sub.get())
    await asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="already being awaited"):
        await sub.get()
    first.cancel()
    await asyncio.gather(first, return_exceptions=True)


async def test_async_for_yields_items_in_order() -> None:
    sub = Subscription(["a"])
    sub.put_nowait(Message("a", "1"))
    sub.put_gap(Gap("reconnected"))
    sub.put_nowait(Message("a", "2"))
    received = []
    async with asyncio.timeout(5):
        async for item in sub:
            received.append(item)
            if len(received) == 3:
                break
    assert received == [Message("a", "1"), Gap("reconnected"), Message("a", "2")]


def test_a_full_subscription_drops_messages_but_keeps_one_gap() -> None:
    sub = Subscription(["a"], maxsize=2)
    assert sub.put_nowait(Message("a", "1"))
    assert sub.put_nowait(Message("a", "2"))
    assert not sub.put_nowait(Message("a", "3"))
    assert sub.overflowed
    sub.put_gap(Gap("reconnected"))
    assert not sub.put_nowait(Message("a", "4"))
    assert len(sub) == 3
    assert [sub.get_nowait() for _ in range(4)] == [
        Message("a", "1"),
        Message("a", "2"),
        Gap("overflow"),
        None,
    ]
    assert sub.overflowed  # stays set: the reader must still repair


def test_repeated_gaps_collapse_into_one() -> None:
    sub = Subscription(["a"], maxsize=1)
    for _ in range(1000):
        sub.put_gap(Gap("reconnected"))
    assert len(sub) == 1
    assert not sub.overflowed


def test_fanout_reports_channels_coming_into_and_out_of_use() -> None:
    fanout = Fanout()
    ab = Subscription(["a", "b"])
    bc = Subscription(["b", "c"])
    assert sorted(fanout.add(ab)) == ["a", "b"]
    assert sorted(fanout.add(bc)) == ["c"]
    assert fanout.add(bc) == []
    assert set(fanout.channels) == {"a", "b", "c"}
    assert sorted(fanout.remove(ab)) == ["a"]
    assert fanout.remove(ab) == []
    assert sorted(fanout.remove(bc)) == ["b", "c"]
    assert len(fanout) == 0
    assert "b" not in fanout


def test_fanout_delivers_to_the_channel_subscribers_and_gaps_everyone_once() -> None:
    fanout = Fanout()
    ab = Subscription(["a", "b"])
    b = Subscription(["b"])
    c = Subscription(["c"])
    for sub in (ab, b, c):
        fanout.add(sub)
    assert fanout.deliver("b", "x") == 2
    assert fanout.deliver("nobody", "x") == 0
    fanout.gap_all("reconnected")
    assert [ab.get_nowait(), ab.get_nowait(), ab.get_nowait()] == [
        Message("b", "x"),
        Gap("reconnected"),
        None,
    ]
    assert [b.get_nowait(), b.get_nowait()] == [Message("b", "x"), Gap("reconnected")]
    assert [c.get_nowait(), c.get_nowait()] == [Gap("reconnected"), None]


async def test_a_gap_wakes_a_reader_that_is_waiting() -> None:
    # A poll's poke or a reconnect arrives while the hub's write loop waits on an empty queue.
    sub = Subscription(["a"])
    getter = asyncio.create_task(sub.get())
    await asyncio.sleep(0)
    assert not getter.done()
    sub.put_gap(Gap("poll"))
    assert await asyncio.wait_for(getter, 5) == Gap("poll")


def test_a_subscription_shows_its_channels_and_queue_in_its_repr() -> None:
    sub = Subscription(["b", "a"], maxsize=2)
    sub.put_nowait(Message("a", "1"))
    text = repr(sub)
    assert "channels=['a', 'b']" in text and "queued=1/2" in text and "overflowed=False" in text


def test_gap_channels_gaps_exactly_the_subscriptions_of_those_channels() -> None:
    # What a cluster broker does when one shard drops or a slot moves: only its channels.
    fanout = Fanout()
    ab = Subscription(["a", "b"])
    b = Subscription(["b"])
    c = Subscription(["c"])
    for sub in (ab, b, c):
        fanout.add(sub)
    fanout.gap_channels(["a", "b", "nobody"], "moved")
    assert [ab.get_nowait(), ab.get_nowait()] == [Gap("moved"), None]
    assert [b.get_nowait(), b.get_nowait()] == [Gap("moved"), None]
    assert c.get_nowait() is None
