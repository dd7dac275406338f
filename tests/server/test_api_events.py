"""GET /api/events?since=&wait= — the caller's stream over REST, and its long-poll."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest
from sqlalchemy import delete, update
from websockets.asyncio.client import connect

from channels import Broker, Message, create_broker
from channels.base import Gap, Received, SubscriptionLike
from orders.models import Stream, StreamEvent
from tests.conftest import Backend, Service, StartService
from tests.support.asserts import assert_error
from tests.support.clients import auth, order_body, recv_events, recv_json, token

ALICE = token("alice")
BOB = token("bob")
POS1 = token("pos-1", role="pos", store_id="store-1")


async def create(service: Service, tok: str = ALICE, **overrides: Any) -> str:
    """Create an order; its id."""
    r = await service.http.post("/api/orders", json=order_body(**overrides), headers=auth(tok))
    assert r.status_code == 201, r.text
    order_id: str = r.json()["order"]["id"]
    return order_id


async def move(service: Service, order_id: str, status: str) -> None:
    """The store moves ``order_id`` to ``status``."""
    r = await service.http.post(
        f"/api/pos/orders/{order_id}/status", json={"status": status}, headers=auth(POS1)
    )
    assert r.status_code == 200, r.text


async def events(service: Service, tok: str = ALICE, **params: str) -> dict[str, Any]:
    """GET /api/events with ``params``; the JSON body of a 200."""
    r = await service.http.get("/api/events", params=params, headers=auth(tok), timeout=40)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def five_events(service: Service) -> list[str]:
    """Alice's stream gets five events: three orders created, two of them moved."""
    ids = [await create(service) for _ in range(3)]
    await move(service, ids[0], "PREPARING")
    await move(service, ids[1], "CANCELLED")
    return ids


async def test_a_stream_nobody_wrote_to_is_empty(service: Service) -> None:
    body = await events(service)
    assert body["stream"] == "customer:alice"
    assert body["head_seq"] == 0
    assert body["events"] == []


async def test_since_zero_returns_the_whole_stream_with_contiguous_seqs(service: Service) -> None:
    ids = await five_events(service)
    body = await events(service, since="0")
    assert body["stream"] == "customer:alice"
    assert body["head_seq"] == 5
    assert isinstance(body["epoch"], str) and body["epoch"]
    got = body["events"]
    assert [e["seq"] for e in got] == [1, 2, 3, 4, 5]
    assert {e["type"] for e in got} == {"event"}
    assert {e["stream"] for e in got} == {"customer:alice"}
    assert [e["order_id"] for e in got] == [ids[0], ids[1], ids[2], ids[0], ids[1]]
    assert [e["status"] for e in got] == ["CONFIRMED"] * 3 + ["PREPARING", "CANCELLED"]
    assert [e["previous_status"] for e in got] == [None] * 3 + ["CONFIRMED", "CONFIRMED"]
    assert got[3]["order"]["status"] == "PREPARING" and got[3]["order"]["id"] == ids[0]
    assert len({e["event_id"] for e in got}) == 5


@pytest.mark.parametrize("since", [0, 1, 2, 3, 4, 5])
async def test_since_returns_exactly_the_events_after_it(service: Service, since: int) -> None:
    await five_events(service)
    everything = (await events(service, since="0"))["events"]
    body = await events(service, since=str(since))
    assert body["head_seq"] == 5
    assert [e["seq"] for e in body["events"]] == list(range(since + 1, 6))
    assert body["events"] == everything[since:]
    assert "reset" not in body or body["reset"] is False


async def test_without_since_the_whole_stream_is_returned(service: Service) -> None:
    await five_events(service)
    assert [e["seq"] for e in (await events(service))["events"]] == [1, 2, 3, 4, 5]


async def test_the_stream_comes_from_the_token_not_the_query(service: Service) -> None:
    await create(service)
    await create(service, BOB)
    body = await events(service, BOB, since="0", stream="customer:alice", customer_id="alice")
    assert body["stream"] == "customer:bob"
    assert [e["seq"] for e in body["events"]] == [1]
    assert {e["order"]["customer_id"] for e in body["events"]} == {"bob"}


async def test_a_store_terminal_reads_its_store_stream(service: Service) -> None:
    await create(service)
    await create(service, BOB)
    await create(service, BOB, store_id="store-2")
    body = await events(service, POS1, since="0")
    assert body["stream"] == "store:store-1"
    assert [e["seq"] for e in body["events"]] == [1, 2]
    assert {e["order"]["store_id"] for e in body["events"]} == {"store-1"}


async def test_rest_gives_the_same_events_as_the_websocket(service: Service) -> None:
    async with connect(service.ws_url, additional_headers=auth(ALICE)) as ws:
        assert (await recv_json(ws))["type"] == "hello"
        await five_events(service)
        live = await recv_events(ws, 5)
    assert (await events(service, since="0"))["events"] == live


class WaitingSubscription:
    """A real subscription that counts, per channel, the readers parked in ``get()``."""

    def __init__(self, inner: SubscriptionLike, broker: WatchingBroker) -> None:
        self.inner = inner
        self.broker = broker

    @property
    def channels(self) -> frozenset[str]:
        return self.inner.channels

    @property
    def overflowed(self) -> bool:
        return self.inner.overflowed

    async def get(self) -> Received:
        if (ready := self.inner.get_nowait()) is not None:
            return ready
        for channel in self.channels:
            self.broker.waiting[channel] += 1
        self.broker.changed.set()
        try:
            return await self.inner.get()
        finally:
            for channel in self.channels:
                self.broker.waiting[channel] -= 1

    def put_gap(self, gap: Gap) -> None:
        self.inner.put_gap(gap)

    def get_nowait(self) -> Received | None:
        return self.inner.get_nowait()

    def __aiter__(self) -> AsyncIterator[Received]:
        return self

    async def __anext__(self) -> Received:
        return await self.get()


class WatchingBroker:
    """The real broker; it tells a test when a long-poll is parked waiting for a message.

    A long-poll subscribes, re-reads, and only then waits in ``get()``: a write made while
    ``waiting`` counts it can only reach it as a broker message — never by a read.
    """

    def __init__(self, inner: Broker) -> None:
        self.inner = inner
        self.waiting: Counter[str] = Counter()
        self.changed = asyncio.Event()

    @property
    def connected(self) -> bool:
        return self.inner.connected

    async def connect(self) -> None:
        await self.inner.connect()

    async def disconnect(self) -> None:
        await self.inner.disconnect()

    async def publish(self, channel: str, data: str) -> None:
        await self.inner.publish(channel, data)

    async def publish_many(self, messages: Sequence[tuple[str, str]]) -> None:
        await self.inner.publish_many(messages)

    def subscribe(
        self, *channels: str, maxsize: int = 256
    ) -> AbstractAsyncContextManager[SubscriptionLike]:
        return self._subscription(channels, maxsize)

    @contextlib.asynccontextmanager
    async def _subscription(
        self, channels: tuple[str, ...], maxsize: int
    ) -> AsyncIterator[SubscriptionLike]:
        async with self.inner.subscribe(*channels, maxsize=maxsize) as sub:
            yield WaitingSubscription(sub, self)

    async def until_waiting(self, channel: str, count: int = 1) -> None:
        """Wait until ``count`` readers of ``channel`` are parked in ``get()``."""
        async with asyncio.timeout(10):
            while self.waiting[channel] < count:
                self.changed.clear()
                await self.changed.wait()


Watched = tuple[Service, WatchingBroker]


@pytest.fixture
async def start_watched(
    backend: Backend, start_service: StartService
) -> AsyncIterator[Callable[..., Awaitable[Watched]]]:
    """Start the app (with settings ``overrides``) on a broker that reports parked long-polls."""
    inner = create_broker(backend.redis_url)
    await inner.connect()
    try:
        broker = WatchingBroker(inner)

        async def start(**overrides: Any) -> Watched:
            return await start_service(broker=broker, **overrides), broker

        yield start
    finally:
        await inner.disconnect()


@pytest.fixture
async def watched(start_watched: Callable[..., Awaitable[Watched]]) -> Watched:
    """The app with default test settings on a broker that reports parked long-polls."""
    return await start_watched()


def channel_of(service: Service, stream: str) -> str:
    return service.settings.redis_channel_prefix + stream


async def test_a_long_poll_returns_as_soon_as_another_task_writes_an_event(
    watched: Watched,
) -> None:
    service, broker = watched
    order_id = await create(service)
    poll = asyncio.create_task(events(service, since="1", wait="30"))
    # Parked on its subscription, read done: only the write's message can wake it.
    await broker.until_waiting(channel_of(service, "customer:alice"))
    await move(service, order_id, "PREPARING")
    # Well inside the 30 s wait: it was woken by the write, not by its deadline.
    body = await asyncio.wait_for(poll, 20)
    assert [e["seq"] for e in body["events"]] == [2]
    assert body["events"][0]["status"] == "PREPARING"
    assert body["head_seq"] == 2


async def test_a_long_poll_on_a_fresh_stream_returns_the_first_event(
    watched: Watched,
) -> None:
    service, broker = watched
    poll = asyncio.create_task(events(service, since="0", wait="30"))
    await broker.until_waiting(channel_of(service, "customer:alice"))
    order_id = await create(service)
    body = await asyncio.wait_for(poll, 20)
    assert [(e["seq"], e["order_id"]) for e in body["events"]] == [(1, order_id)]


async def test_a_long_poll_is_not_woken_by_another_customers_events(watched: Watched) -> None:
    service, broker = watched
    await create(service, BOB)
    # At Bob's head, so the poll really waits (since=0 would return at once).
    poll = asyncio.create_task(events(service, BOB, since="1", wait="30"))
    await broker.until_waiting(channel_of(service, "customer:bob"))  # parked before Alice writes
    alice_channel = channel_of(service, "customer:alice")
    async with service.broker.subscribe(alice_channel) as probe:
        await move(service, await create(service), "PREPARING")
        # Alice's two events have been fanned out by this process's broker (a probe on the
        # same connection has them): a poll woken by them would answer now, with nothing.
        for _ in range(2):
            assert isinstance(await asyncio.wait_for(probe.get(), 10), Message)
    await service.http.get("/healthz")  # a round trip through the server's event loop
    assert not poll.done(), "woken by another customer's events"
    # The sentinel: Bob's own next event is what ends the wait, and all it returns.
    sentinel = await create(service, BOB)
    body = await asyncio.wait_for(poll, 20)
    assert body["stream"] == "customer:bob"
    assert [(e["seq"], e["order_id"]) for e in body["events"]] == [(2, sentinel)]


async def test_a_long_poll_with_nothing_new_returns_empty_after_its_wait(service: Service) -> None:
    await create(service)
    body = await asyncio.wait_for(events(service, since="1", wait="1"), 20)
    assert body["events"] == []
    assert body["head_seq"] == 1


async def test_a_long_poll_with_events_already_waiting_returns_them_at_once(
    service: Service,
) -> None:
    await five_events(service)
    body = await asyncio.wait_for(events(service, since="3", wait="30"), 20)
    assert [e["seq"] for e in body["events"]] == [4, 5]


# -- reset ------------------------------------------------------------------------------------


async def _open_and_closed(service: Service) -> tuple[str, str]:
    open_id = await create(service)
    closed_id = await create(service)
    await move(service, closed_id, "CANCELLED")
    return open_id, closed_id


async def test_since_beyond_the_head_resets_with_a_snapshot(service: Service) -> None:
    open_id, _ = await _open_and_closed(service)
    body = await events(service, since="99")
    assert body["reset"] is True
    assert body["head_seq"] == 3
    assert body["events"] == []
    assert isinstance(body["epoch"], str) and body["epoch"]
    assert [o["id"] for o in body["orders"]] == [open_id]


async def test_a_wrong_epoch_resets_with_a_snapshot(service: Service) -> None:
    open_id, _ = await _open_and_closed(service)
    epoch = (await events(service))["epoch"]
    same = await events(service, since="1", epoch=epoch)
    assert [e["seq"] for e in same["events"]] == [2, 3]
    assert not same.get("reset")
    body = await events(service, since="1", epoch="not-" + epoch)
    assert body["reset"] is True
    assert body["epoch"] == epoch
    assert body["head_seq"] == 3
    assert [o["id"] for o in body["orders"]] == [open_id]


async def test_a_long_poll_from_beyond_the_head_resets_at_once(service: Service) -> None:
    await create(service)
    body = await asyncio.wait_for(events(service, since="50", wait="30"), 20)
    assert body["reset"] is True and body["head_seq"] == 1


@pytest.mark.parametrize(
    "params", [{"since": "5"}, {"since": "0", "epoch": "an-epoch-never-issued"}], ids=str
)
async def test_a_position_on_a_stream_that_was_never_written_resets(
    service: Service, params: dict[str, str]
) -> None:
    # A client holding a position on a log that no longer exists (wiped, restored) must start
    # over; otherwise it would skip the first seqs of the new log. /ws resets here too.
    body = await events(service, **params)
    assert body.get("reset") is True, body
    assert body["head_seq"] == 0
    assert body["orders"] == []
    assert isinstance(body["epoch"], str) and body["epoch"]


# -- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "params",
    [
        {"since": "abc"},
        {"since": "-1"},
        {"since": "1.5"},
        {"since": "1e3"},
        {"since": str(2**64)},
        {"wait": "soon"},
        {"wait": "-1"},
        {"wait": "31"},
        {"wait": "0.5"},
    ],
    ids=str,
)
async def test_a_bad_since_or_wait_is_400(service: Service, params: dict[str, str]) -> None:
    await create(service)
    r = await service.http.get("/api/events", params=params, headers=auth(ALICE))
    assert_error(r, 400, "invalid_query")


async def test_events_need_a_token(service: Service) -> None:
    assert_error(await service.http.get("/api/events"), 401, "unauthenticated")


# -- consistency and bounds (issue 7, defect 11) -----------------------------------------------


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
async def test_head_seq_is_never_below_an_event_returned_with_it_under_concurrent_writes(
    service: Service,
) -> None:
    # The head and the events are read in one snapshot: read apart (READ COMMITTED), a write
    # committed between the two statements came back above the head_seq of the same answer.
    stop = asyncio.Event()

    async def writer() -> None:
        while not stop.is_set():
            await create(service)

    writers = [asyncio.create_task(writer()) for _ in range(4)]
    try:
        head = 0
        for _ in range(300):
            body = await events(service, since=str(max(0, head - 1)))
            seqs = [e["seq"] for e in body["events"]]
            assert all(seq <= body["head_seq"] for seq in seqs), (body["head_seq"], seqs)
            head = body["head_seq"]
    finally:
        stop.set()
        await asyncio.gather(*writers)
    assert head > 50, "the writers hardly wrote: the race was not exercised"


async def _reset_log_of(service: Service, stream: str, head_seq: int, **values: object) -> None:
    """Change the stream's row behind the server's back (a restore, a reset, a prune), with
    the index positions above the new head gone."""
    async with service.db.transaction() as session:
        await session.execute(
            update(Stream).where(Stream.name == stream).values(head_seq=head_seq, **values)
        )
        await session.execute(
            delete(StreamEvent).where(StreamEvent.stream == stream, StreamEvent.seq > head_seq)
        )


@pytest.mark.parametrize("change", ["epoch", "pruned"])
async def test_a_long_poll_whose_position_goes_away_while_it_waits_resets(
    watched: Watched, change: str
) -> None:
    service, broker = watched
    await create(service)
    await create(service)
    first = await events(service, since="0")
    assert first["head_seq"] == 2
    poll = asyncio.create_task(events(service, since="2", epoch=first["epoch"], wait="30"))
    # Waiting, its position checked: the change below happens while it waits.
    await broker.until_waiting(channel_of(service, "customer:alice"))
    if change == "epoch":
        # The log was reset (a restore): a new epoch whose seqs start again from 0.
        await _reset_log_of(service, "customer:alice", epoch="a-new-epoch", head_seq=0)
    else:
        await _reset_log_of(service, "customer:alice", pruned_seq=3, head_seq=3)
    # A write wakes the poll (its seq may even be at or below the client's position).
    await create(service)
    body = await asyncio.wait_for(poll, 20)
    assert body.get("reset") is True, body
    if change == "epoch":
        assert body["epoch"] == "a-new-epoch"
    assert body["events"] == []


async def test_long_polls_over_the_per_user_cap_get_429_with_retry_after(
    start_watched: Callable[..., Awaitable[Watched]],
) -> None:
    service, broker = await start_watched(longpoll_max_per_user=2)
    await create(service)
    polls = [asyncio.create_task(events(service, since="1", wait="30")) for _ in range(2)]
    # Both in flight (counted against the cap) and waiting.
    await broker.until_waiting(channel_of(service, "customer:alice"), 2)
    r = await service.http.get(
        "/api/events", params={"since": "1", "wait": "30"}, headers=auth(ALICE)
    )
    assert_error(r, 429, "too_many_longpolls")
    assert r.headers["retry-after"] == "1"
    # The cap is per user, and a plain read (no wait) is not a long-poll.
    assert (await events(service, since="1"))["head_seq"] == 1
    other = asyncio.create_task(events(service, BOB, since="0", wait="30"))
    # One event ends both of Alice's polls; a slot frees, and she may poll again.
    await create(service)
    assert all(
        len(body["events"]) == 1 for body in await asyncio.wait_for(asyncio.gather(*polls), 20)
    )
    again = await asyncio.wait_for(events(service, since="2", wait="1"), 20)
    assert again["events"] == []
    await create(service, BOB)
    assert len((await asyncio.wait_for(other, 20))["events"]) == 1
