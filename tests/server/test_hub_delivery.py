"""The hub's write loop against what a broker may really hand it: junk, and copies.

Each case ends with a sentinel: one more status change, whose event must be the very next
message, so "nothing else came" is decided by an arrival, not by a silence window.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager

import orjson
import pytest
from sqlalchemy import delete
from websockets.asyncio.client import connect

from channels import Broker, Gap, create_broker
from channels.base import SubscriptionLike
from orders.hooks import Hooks
from orders.models import Stream, StreamEvent
from orders.streams import customer_stream
from orders.workflow import OrderStatus
from orders.writes import Actor, change_order_status
from server import protocol
from tests.conftest import Backend, Service, StartService
from tests.support.clients import auth, expect_close, order_body, recv_events, recv_json, token
from tests.support.writes import write_without_publishing

POS = token("pos-d", role="pos", store_id="store-1")


async def place(service: Service, customer: str) -> str:
    r = await service.http.post("/api/orders", json=order_body(), headers=auth(token(customer)))
    assert r.status_code == 201, r.text
    return str(r.json()["order"]["id"])


async def move(service: Service, order_id: str, status: str) -> None:
    r = await service.http.post(
        f"/api/pos/orders/{order_id}/status", json={"status": status}, headers=auth(POS)
    )
    assert r.status_code == 200, r.text


def sample(service: Service, name: str, **labels: str) -> float:
    return service.metrics.registry.get_sample_value(name, labels) or 0.0


async def counted(service: Service, name: str, value: float) -> None:
    """Wait until the hub's counter ``name`` reaches ``value`` (what it does last for a step)."""
    async with asyncio.timeout(10):
        while sample(service, name) < value:
            await asyncio.sleep(0.01)


async def test_a_malformed_broker_message_is_dropped_and_delivery_goes_on(
    service: Service,
) -> None:
    order_id = await place(service, "mal")
    channel = service.publisher.channel(customer_stream("mal"))
    async with connect(f"{service.ws_url}?token={token('mal')}") as ws:
        hello = await recv_json(ws)
        assert hello["type"] == "hello" and hello["head_seq"] == 1
        for junk in ["no-seq-prefix", "two {}", ""]:
            await service.broker.publish(channel, junk)
        await move(service, order_id, "PREPARING")  # the sentinel
        event = await recv_json(ws)
        assert (event["type"], event["seq"], event["status"]) == ("event", 2, "PREPARING")


async def test_a_copy_of_a_delivered_message_is_dropped_and_counted(service: Service) -> None:
    order_id = await place(service, "dup")
    channel = service.publisher.channel(customer_stream("dup"))
    async with connect(f"{service.ws_url}?token={token('dup')}") as ws:
        await recv_json(ws)  # hello at seq 1
        await move(service, order_id, "PREPARING")
        first = await recv_json(ws)
        assert first["seq"] == 2
        before = sample(service, "ws_duplicates_dropped_total")
        # What a republish by the relay looks like: the same position, again.
        for seq in (2, 1):
            await service.broker.publish(channel, protocol.pack(seq, orjson.dumps(first).decode()))
        await move(service, order_id, "READY")  # the sentinel
        event = await recv_json(ws)
        assert (event["seq"], event["status"]) == (3, "READY")
        assert sample(service, "ws_duplicates_dropped_total") == before + 2


async def test_each_repair_from_the_log_is_counted_under_its_reason(service: Service) -> None:
    order_id = await place(service, "jmp")
    async with connect(f"{service.ws_url}?token={token('jmp')}&since=0") as ws:
        await recv_json(ws)  # hello, then the resume replays seq 1
        assert [e["seq"] for e in await recv_events(ws, 1)] == [1]
        await write_without_publishing(service, order_id, OrderStatus.PREPARING)
        await move(service, order_id, "READY")  # seq 3 arrives live: 2 is read from the log
        repaired, live = await recv_events(ws, 2)
        assert (repaired["seq"], live["seq"]) == (2, 3)
        assert repaired["stream"] == live["stream"] == "customer:jmp"
    backfills = "ws_backfills_total"
    assert sample(service, backfills, reason="resume") == 1
    assert sample(service, backfills, reason="seq_jump") == 1


async def test_a_lost_tail_of_the_log_found_by_the_safety_poll_ends_in_a_reset(
    start_service: StartService,
) -> None:
    service = await start_service(hub_poll_interval=0.05, hub_safety_poll_interval=0.2)
    order_id = await place(service, "tail")
    async with connect(f"{service.ws_url}?token={token('tail')}&since=1") as ws:
        assert (await recv_json(ws))["head_seq"] == 1
        # Seq 2 commits, its publish is lost, and its position is gone before anyone reads it:
        # the head says 2, the log has nothing after 1.
        await write_without_publishing(service, order_id, OrderStatus.PREPARING)
        async with service.db.transaction() as session:
            await session.execute(
                delete(StreamEvent).where(
                    StreamEvent.stream == "customer:tail", StreamEvent.seq == 2
                )
            )
        reset = await recv_json(ws, timeout=10)
        assert reset["type"] == "reset" and reset["head_seq"] == 2
        assert reset["stream"] == "customer:tail"
    assert sample(service, "ws_backfills_total", reason="poll") >= 1
    assert sample(service, "ws_unfillable_gaps_total", cause="hole", outcome="reset") == 1


class TrackingBroker:
    """The real broker, remembering each subscription in the order the hub made them, so a
    test can gap one socket's subscription alone (what a lost delivery to it looks like)."""

    def __init__(self, inner: Broker) -> None:
        self.inner = inner
        self.subscriptions: list[SubscriptionLike] = []

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
        return self._tracked(self.inner.subscribe(*channels, maxsize=maxsize))

    @contextlib.asynccontextmanager
    async def _tracked(
        self, subscription: AbstractAsyncContextManager[SubscriptionLike]
    ) -> AsyncIterator[SubscriptionLike]:
        async with subscription as sub:
            self.subscriptions.append(sub)
            yield sub

    def of(self, channel: str) -> list[SubscriptionLike]:
        return [sub for sub in self.subscriptions if channel in sub.channels]


class SlotHolder(Hooks):
    """Holds the backlog read of ``stream`` inside its database slot (the hub's only one with
    ``db_pool_size=1``) until released: every other hub read, a pong's head read too, waits."""

    def __init__(self, stream: str) -> None:
        self.stream = stream
        self.holding = asyncio.Event()
        self.release = asyncio.Event()

    async def before_stream_read(self, kind: str, streams: Sequence[str]) -> None:
        if kind == "events" and list(streams) == [self.stream]:
            self.holding.set()
            await asyncio.wait_for(self.release.wait(), 30)


@pytest.fixture
async def tracking_broker(backend: Backend) -> AsyncIterator[TrackingBroker]:
    """Asked for before ``start_service``, so it is disconnected after the app has stopped."""
    inner = create_broker(backend.settings().redis_url)
    await inner.connect()
    try:
        yield TrackingBroker(inner)
    finally:
        await inner.disconnect()


async def test_a_pong_answered_from_memory_reports_the_heads_other_sockets_of_the_stream_saw(
    tracking_broker: TrackingBroker, start_service: StartService
) -> None:
    # Two sockets of one stream: what one of them learnt of the stream's head (from its
    # backfill, then from a live message) is what a pong to the other reports while the
    # database cannot answer, so the other learns it is behind.
    holder = SlotHolder("customer:hold")
    broker = tracking_broker
    try:
        service = await start_service(
            broker=broker, hooks=holder, db_pool_size=1, hub_poll_interval=3600
        )
        order_id = await place(service, "mem")
        await place(service, "hold")
        channel = service.publisher.channel(customer_stream("mem"))
        async with (
            connect(f"{service.ws_url}?token={token('mem')}") as a,
            connect(f"{service.ws_url}?token={token('mem')}") as b,
        ):
            assert (await recv_json(a))["head_seq"] == 1
            assert (await recv_json(b))["head_seq"] == 1
            first, _ = broker.of(channel)  # a's subscription, then b's
            await write_without_publishing(service, order_id, OrderStatus.PREPARING)
            await write_without_publishing(service, order_id, OrderStatus.READY)
            first.put_gap(Gap("reconnected"))  # only a repairs: it reads the head, 3
            assert [e["seq"] for e in await recv_events(a, 2)] == [2, 3]
            # Another stream's resume reads its backlog and holds the hub's one database slot.
            async with connect(f"{service.ws_url}?token={token('hold')}&since=0") as c:
                await asyncio.wait_for(holder.holding.wait(), 10)
                await b.send('{"type": "ping"}')  # its head read waits: answered from memory
                assert await recv_json(b) == {"type": "pong", "head_seq": 3}
                # Seq 4 arrives live: a sends it and remembers it; b's repair (the pong poked
                # it) waits for the slot, so only a's write loop has seen seq 4.
                await change_order_status(
                    service.db,
                    service.publisher,
                    service.metrics,
                    order_id=order_id,
                    to=OrderStatus.OUT_FOR_DELIVERY,
                    actor=Actor.system(),
                )
                assert [e["seq"] for e in await recv_events(a, 1)] == [4]
                await b.send('{"type": "ping"}')  # the same head read, still waiting
                assert await recv_json(b) == {"type": "pong", "head_seq": 4}
                holder.release.set()
                assert (await recv_json(c))["head_seq"] == 1
                assert [e["seq"] for e in await recv_events(c, 1)] == [1]
                assert [e["seq"] for e in await recv_events(b, 3)] == [2, 3, 4]
    finally:
        holder.release.set()


async def test_a_pong_from_memory_knows_a_streams_first_event_and_never_goes_back(
    tracking_broker: TrackingBroker, start_service: StartService
) -> None:
    # A stream at seq 0 has no remembered head until its first event; a late copy of an older
    # event must not take the remembered head back. Both show in a pong answered from memory
    # to a socket of the stream whose own repair waits for the database.
    holder = SlotHolder("customer:hold2")
    broker = tracking_broker
    try:
        service = await start_service(
            broker=broker, hooks=holder, db_pool_size=1, hub_poll_interval=3600
        )
        await place(service, "hold2")
        channel = service.publisher.channel(customer_stream("new"))
        async with (
            connect(f"{service.ws_url}?token={token('new')}") as a,
            connect(f"{service.ws_url}?token={token('new')}") as b,
        ):
            assert (await recv_json(a))["head_seq"] == 0
            assert (await recv_json(b))["head_seq"] == 0
            _, second = broker.of(channel)  # a's subscription, then b's
            async with connect(f"{service.ws_url}?token={token('hold2')}&since=0") as c:
                await asyncio.wait_for(holder.holding.wait(), 10)
                second.put_gap(Gap("reconnected"))  # b's repair now waits for the slot
                order_id = await place(service, "new")  # seq 1, live: only a's loop sees it
                (created,) = await recv_events(a, 1)
                assert created["seq"] == 1
                await b.send('{"type": "ping"}')
                assert await recv_json(b) == {"type": "pong", "head_seq": 1}
                await change_order_status(
                    service.db,
                    service.publisher,
                    service.metrics,
                    order_id=order_id,
                    to=OrderStatus.PREPARING,
                    actor=Actor.system(),
                )
                assert [e["seq"] for e in await recv_events(a, 1)] == [2]
                dropped = sample(service, "ws_duplicates_dropped_total")
                await service.broker.publish(
                    channel, protocol.pack(1, orjson.dumps(created).decode())
                )
                # a drops the late copy of seq 1 (b's loop is still in its repair).
                await counted(service, "ws_duplicates_dropped_total", dropped + 1)
                await b.send('{"type": "ping"}')
                assert await recv_json(b) == {"type": "pong", "head_seq": 2}
                holder.release.set()
                assert [e["seq"] for e in await recv_events(c, 1)] == [1]
                assert [e["seq"] for e in await recv_events(b, 2)] == [1, 2]
    finally:
        holder.release.set()


async def test_a_poll_pokes_exactly_the_sockets_behind_on_the_streams_it_is_asked_for(
    start_service: StartService,
) -> None:
    # What the poller does while one shard of a cluster is not delivering: it polls only the
    # streams that shard carries, and pokes only the sockets those heads show behind.
    service = await start_service(hub_poll_interval=3600)
    hub = service.services.hub
    assert await hub.poll_heads() == 0  # no socket, nothing to read
    x_order, y_order = await place(service, "px"), await place(service, "py")
    async with (
        connect(f"{service.ws_url}?token={token('px')}") as x,
        connect(f"{service.ws_url}?token={token('py')}") as y,
    ):
        assert (await recv_json(x))["head_seq"] == (await recv_json(y))["head_seq"] == 1
        await write_without_publishing(service, x_order, OrderStatus.PREPARING)
        await write_without_publishing(service, y_order, OrderStatus.PREPARING)
        assert await hub.poll_heads(lambda stream: stream == "customer:px") == 1
        assert [e["seq"] for e in await recv_events(x, 1)] == [2]
        # x has caught up (its cursor moved: counted right after): only y is behind now.
        await counted(service, "ws_backfilled_events_total", 1)
        assert await hub.poll_heads() == 1
        assert [e["seq"] for e in await recv_events(y, 1)] == [2]
        await counted(service, "ws_backfilled_events_total", 2)
        # Both behind again: both poked.
        await write_without_publishing(service, x_order, OrderStatus.READY)
        await write_without_publishing(service, y_order, OrderStatus.READY)
        assert await hub.poll_heads() == 2
        assert [e["seq"] for e in await recv_events(x, 1)] == [3]
        assert [e["seq"] for e in await recv_events(y, 1)] == [3]
    assert sample(service, "ws_backfills_total", reason="poll") == 4


class FailingSnapshot(Hooks):
    """Once armed, the next snapshot read fails, as a database that went away would."""

    def __init__(self) -> None:
        self.armed = False

    async def before_stream_read(self, kind: str, streams: Sequence[str]) -> None:
        if kind == "snapshot" and self.armed:
            self.armed = False
            raise RuntimeError("injected: the snapshot cannot be read")


async def test_a_hole_whose_reset_cannot_be_read_closes_the_socket_1011_and_is_counted(
    start_service: StartService,
) -> None:
    hooks = FailingSnapshot()
    service = await start_service(hooks=hooks)
    order_id = await place(service, "fail")
    async with connect(f"{service.ws_url}?token={token('fail')}") as ws:
        assert (await recv_json(ws))["head_seq"] == 1
        await write_without_publishing(service, order_id, OrderStatus.PREPARING)
        async with service.db.transaction() as session:
            await session.execute(
                delete(StreamEvent).where(
                    StreamEvent.stream == "customer:fail", StreamEvent.seq == 2
                )
            )
        hooks.armed = True
        await move(service, order_id, "READY")  # seq 3 live: the log has no seq 2
        assert await expect_close(ws) == 1011
    unfillable = "ws_unfillable_gaps_total"
    assert sample(service, unfillable, cause="hole", outcome="close") == 1
    assert sample(service, unfillable, cause="hole", outcome="reset") == 0


async def test_a_socket_reset_onto_a_snapshot_still_notices_when_its_log_is_recreated(
    start_service: StartService,
) -> None:
    # A reset places the socket on the snapshot's epoch; a log recreated after that is
    # another epoch, whose seqs must not be taken for the continuation of the old one.
    service = await start_service(hub_poll_interval=3600)
    first, second = await place(service, "ep"), await place(service, "ep")
    stream = "customer:ep"
    async with connect(f"{service.ws_url}?token={token('ep')}") as ws:
        hello = await recv_json(ws)
        assert hello["head_seq"] == 2
        await write_without_publishing(service, first, OrderStatus.PREPARING)
        async with service.db.transaction() as session:
            await session.execute(
                delete(StreamEvent).where(StreamEvent.stream == stream, StreamEvent.seq == 3)
            )
        await move(service, first, "READY")  # seq 4 live: seq 3 is a hole
        reset = await recv_json(ws)
        assert (reset["type"], reset["head_seq"], reset["epoch"]) == ("reset", 4, hello["epoch"])
        # The log is recreated (a new epoch) and grows, unheard, to the socket's very seq: only
        # the epoch tells the socket's position is not on this log.
        async with service.db.transaction() as session:
            await session.execute(delete(StreamEvent).where(StreamEvent.stream == stream))
            await session.execute(delete(Stream).where(Stream.name == stream))
        for status in ("PREPARING", "READY", "OUT_FOR_DELIVERY", "DELIVERED"):
            await write_without_publishing(service, second, OrderStatus(status))
        assert await service.services.hub.poll_heads() == 1
        again = await recv_json(ws)
        assert again["type"] == "reset" and again["head_seq"] == 4
        assert again["epoch"] != hello["epoch"]
    assert sample(service, "ws_unfillable_gaps_total", cause="epoch", outcome="reset") == 1


@pytest.mark.parametrize(
    ("placed_by", "query", "first"),
    [
        ("hello", "", "hello"),
        ("resume", "&since=2", "hello"),
        ("reset", "&since=2&epoch=another", "reset"),  # a resume from another log's epoch
    ],
)
async def test_a_socket_notices_its_log_recreated_up_to_its_very_seq(
    start_service: StartService, placed_by: str, query: str, first: str
) -> None:
    # The hello (a fresh one, a resume's, or the reset of a resume) places the socket on its
    # log's epoch.
    service = await start_service(hub_poll_interval=3600)
    customer = f"re-{placed_by}"
    stream = f"customer:{customer}"
    await place(service, customer)
    order_id = await place(service, customer)
    async with connect(f"{service.ws_url}?token={token(customer)}{query}") as ws:
        hello = await recv_json(ws)
        assert (hello["type"], hello["stream"], hello["head_seq"]) == (first, stream, 2)
        async with service.db.transaction() as session:
            await session.execute(delete(StreamEvent).where(StreamEvent.stream == stream))
            await session.execute(delete(Stream).where(Stream.name == stream))
        for status in ("PREPARING", "READY"):
            await write_without_publishing(service, order_id, OrderStatus(status))
        assert await service.services.hub.poll_heads() == 1
        reset = await recv_json(ws)
        assert reset["type"] == "reset" and reset["head_seq"] == 2
        assert reset["epoch"] != hello["epoch"]


class ReadLog(Hooks):
    """Records every shared read the hub makes (its kind and streams) and every backlog page
    it reads (the stream, and the seqs read)."""

    def __init__(self) -> None:
        self.reads: list[tuple[str, list[str]]] = []
        self.pages: list[tuple[str, list[int] | None]] = []

    async def before_stream_read(self, kind: str, streams: Sequence[str]) -> None:
        self.reads.append((kind, list(streams)))

    async def before_backfill_read(self, stream: str) -> None:
        self.pages.append((stream, None))

    async def after_backfill_read(self, stream: str, seqs: Sequence[int]) -> None:
        self.pages.append((stream, list(seqs)))


async def test_a_resume_reads_its_hello_and_its_replay_in_one_read(
    start_service: StartService,
) -> None:
    hooks = ReadLog()
    service = await start_service(hooks=hooks, hub_poll_interval=3600)
    order_id = await place(service, "one")
    await move(service, order_id, "PREPARING")
    hooks.reads.clear()
    stream = "customer:one"
    async with connect(f"{service.ws_url}?token={token('one')}&since=0") as ws:
        hello = await recv_json(ws)
        assert (hello["type"], hello["head_seq"]) == ("hello", 2)
        assert [e["seq"] for e in await recv_events(ws, 2)] == [1, 2]
        assert hooks.reads == [("log", [stream]), ("events", [stream])]
        # A repair's page passes the same pause points, for its own stream and seqs.
        await write_without_publishing(service, order_id, OrderStatus.READY)
        assert await service.services.hub.poll_heads() == 1
        assert [e["seq"] for e in await recv_events(ws, 1)] == [3]
    assert hooks.pages == [(stream, None), (stream, [1, 2]), (stream, None), (stream, [3])]


class Holds(Hooks):
    """Holds the shared reads named by (kind, stream) until each is released: a ``log`` read
    waits before it takes a database slot, an ``events`` read inside its slot."""

    def __init__(self, *points: tuple[str, str]) -> None:
        self.reached = {point: asyncio.Event() for point in points}
        self.released = {point: asyncio.Event() for point in points}

    async def before_stream_read(self, kind: str, streams: Sequence[str]) -> None:
        for stream in streams:
            point = (kind, stream)
            if point in self.reached:
                self.reached[point].set()
                await asyncio.wait_for(self.released[point].wait(), 30)

    def release_all(self) -> None:
        for event in self.released.values():
            event.set()


async def test_a_pong_from_memory_reports_the_head_a_poll_read(
    tracking_broker: TrackingBroker, start_service: StartService
) -> None:
    # The poll's read is the only news of a stream's first event here: its socket's own
    # repair waits, and the database cannot answer the pong.
    log, slot = ("log", "customer:pl"), ("events", "customer:pl-hold")
    holds = Holds(log, slot)
    broker = tracking_broker
    try:
        service = await start_service(
            broker=broker, hooks=holds, db_pool_size=1, hub_poll_interval=3600
        )
        await place(service, "pl-hold")
        async with connect(f"{service.ws_url}?token={token('pl')}") as ws:
            assert (await recv_json(ws))["head_seq"] == 0
            (sub,) = broker.of(service.publisher.channel(customer_stream("pl")))
            sub.put_gap(Gap("reconnected"))
            await asyncio.wait_for(holds.reached[log].wait(), 10)  # its repair waits
            await place(service, "pl")  # seq 1: queued behind the repair, unseen
            assert await service.services.hub.poll_heads() == 1
            async with connect(f"{service.ws_url}?token={token('pl-hold')}&since=0") as c:
                await asyncio.wait_for(holds.reached[slot].wait(), 10)
                await ws.send('{"type": "ping"}')
                assert await recv_json(ws) == {"type": "pong", "head_seq": 1}
                holds.release_all()
                assert [e["seq"] for e in await recv_events(c, 1)] == [1]
                assert [e["seq"] for e in await recv_events(ws, 1)] == [1]
    finally:
        holds.release_all()


async def test_a_poll_that_finds_a_streams_row_gone_resets_its_socket(
    start_service: StartService,
) -> None:
    service = await start_service(hub_poll_interval=3600)
    await place(service, "gone")
    stream = "customer:gone"
    async with connect(f"{service.ws_url}?token={token('gone')}") as ws:
        hello = await recv_json(ws)
        async with service.db.transaction() as session:
            await session.execute(delete(StreamEvent).where(StreamEvent.stream == stream))
            await session.execute(delete(Stream).where(Stream.name == stream))
        assert await service.services.hub.poll_heads() == 1
        reset = await recv_json(ws)
        assert reset["type"] == "reset" and reset["epoch"] != hello["epoch"]
    assert sample(service, "ws_unfillable_gaps_total", cause="gone", outcome="reset") == 1


async def test_a_poll_skips_sockets_still_setting_up_and_sockets_that_left_while_it_read(
    start_service: StartService,
) -> None:
    setup, held = ("log", "customer:su"), ("events", "customer:su-hold")
    holds = Holds(setup, held)
    try:
        service = await start_service(hooks=holds, db_pool_size=1, hub_poll_interval=3600)
        hub = service.services.hub
        for customer in ("su", "su-hold", "lv"):
            await place(service, customer)
        async with (
            connect(f"{service.ws_url}?token={token('su')}&since=0") as su,
            connect(f"{service.ws_url}?token={token('lv')}") as lv,
        ):
            # su is subscribed and reading its backlog: it has no position yet.
            await asyncio.wait_for(holds.reached[setup].wait(), 10)
            assert await hub.poll_heads(lambda stream: stream == "customer:su") == 0
            assert (await recv_json(lv))["head_seq"] == 1
            async with connect(f"{service.ws_url}?token={token('su-hold')}&since=0") as c:
                await asyncio.wait_for(holds.reached[held].wait(), 10)
                polls = sample(service, "hub_polls_total")
                poll = asyncio.create_task(hub.poll_heads(lambda s: s == "customer:lv"))
                await counted(service, "hub_polls_total", polls + 1)  # waiting for the slot
                await lv.close()
                async with asyncio.timeout(10):
                    while hub.known_head("customer:lv"):  # forgotten once its last socket left
                        await asyncio.sleep(0.01)
                holds.release_all()
                assert await asyncio.wait_for(poll, 10) == 0
                assert [e["seq"] for e in await recv_events(c, 1)] == [1]
            assert [e["seq"] for e in await recv_events(su, 1)] == [1]
    finally:
        holds.release_all()


async def test_a_pong_from_memory_reports_the_head_another_sockets_hello_read(
    tracking_broker: TrackingBroker, start_service: StartService
) -> None:
    log, slot = ("log", "customer:hl"), ("events", "customer:hl-hold")
    holds = Holds(log, slot)
    broker = tracking_broker
    try:
        service = await start_service(
            broker=broker, hooks=holds, db_pool_size=1, hub_poll_interval=3600
        )
        order_id = await place(service, "hl")
        await place(service, "hl-hold")
        url = f"{service.ws_url}?token={token('hl')}"
        async with connect(url) as behind:
            assert (await recv_json(behind))["head_seq"] == 1
            (sub,) = broker.of(service.publisher.channel(customer_stream("hl")))
            sub.put_gap(Gap("reconnected"))
            await asyncio.wait_for(holds.reached[log].wait(), 10)  # its repair waits
            await write_without_publishing(service, order_id, OrderStatus.PREPARING)
            async with connect(url) as fresh:
                # The newcomer's hello is the only news of seq 2.
                assert (await recv_json(fresh))["head_seq"] == 2
                async with connect(f"{service.ws_url}?token={token('hl-hold')}&since=0") as c:
                    await asyncio.wait_for(holds.reached[slot].wait(), 10)
                    await behind.send('{"type": "ping"}')
                    assert await recv_json(behind) == {"type": "pong", "head_seq": 2}
                    holds.release_all()
                    assert [e["seq"] for e in await recv_events(c, 1)] == [1]
                    assert [e["seq"] for e in await recv_events(behind, 1)] == [2]
    finally:
        holds.release_all()


async def test_a_resume_from_0_on_a_stream_never_written_to_is_a_hello_at_0(
    service: Service,
) -> None:
    async with connect(f"{service.ws_url}?token={token('blank')}&since=0") as ws:
        hello = await recv_json(ws)
        assert (hello["type"], hello["stream"], hello["head_seq"]) == ("hello", "customer:blank", 0)
        await place(service, "blank")  # the sentinel: the first event follows the hello
        assert [e["seq"] for e in await recv_events(ws, 1)] == [1]
