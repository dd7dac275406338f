"""The hub's delivery guarantees, attacked: resume, seams, lost publishes, slow consumers."""

from __future__ import annotations

import asyncio
import random
import secrets
import socket
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import timedelta
from typing import Any

import httpx
import orjson
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession
from websockets.asyncio.client import ClientConnection, connect

from channels import Broker, Message, create_broker
from channels.base import SubscriptionLike
from orders.db import Database
from orders.hooks import Hooks
from orders.models import Event, Order, StreamEvent
from orders.workflow import OrderStatus, PaymentMethod
from orders.writes import Actor, Delivery, Publisher, create_order
from server import protocol
from server.auth import Principal, Role
from tests.conftest import Backend, Service, StartService
from tests.support.clients import (
    auth,
    expect_close,
    frames_until_close,
    order_body,
    recv_events,
    recv_json,
    token,
    until_sentinel,
)
from tests.support.writes import write_without_publishing

POS = token("pos-1", role="pos", store_id="store-1")
FLOW = ["PREPARING", "READY", "OUT_FOR_DELIVERY", "DELIVERED"]


async def place(service: Service, customer: str, **overrides: Any) -> str:
    r = await service.http.post(
        "/api/orders", json=order_body(**overrides), headers=auth(token(customer))
    )
    assert r.status_code == 201, r.text
    return str(r.json()["order"]["id"])


async def move(service: Service, order_id: str, status: str) -> httpx.Response:
    return await service.http.post(
        f"/api/pos/orders/{order_id}/status", json={"status": status}, headers=auth(POS)
    )


def ws_url(service: Service, customer: str, **params: object) -> str:
    query = "&".join(f"{k}={v}" for k, v in params.items())
    return f"{service.ws_url}?token={token(customer)}" + (f"&{query}" if query else "")


def seqs(events: list[dict[str, Any]]) -> list[int]:
    return [int(e["seq"]) for e in events]


async def test_a_reconnect_with_since_gets_exactly_the_missed_events_then_live_ones(
    service: Service,
) -> None:
    async with connect(ws_url(service, "carol")) as ws:
        hello = await recv_json(ws)
        order_id = await place(service, "carol")
        first = await recv_events(ws, 1)
        epoch = hello["epoch"]
    # Offline: three changes happen.
    for status in FLOW[:3]:
        assert (await move(service, order_id, status)).status_code == 200
    async with connect(ws_url(service, "carol", since=seqs(first)[-1], epoch=epoch)) as ws:
        hello = await recv_json(ws)
        assert hello["type"] == "hello" and "orders" not in hello and hello["head_seq"] == 4
        missed = await recv_events(ws, 3)
        assert seqs(missed) == [2, 3, 4]
        assert [e["status"] for e in missed] == FLOW[:3]
        assert (await move(service, order_id, "DELIVERED")).status_code == 200
        live = await recv_events(ws, 1)
        assert seqs(live) == [5] and live[0]["order"]["status"] == "DELIVERED"
        await ws.send('{"type": "ping"}')
        assert await recv_json(ws) == {"type": "pong", "head_seq": 5}


async def test_a_fresh_client_gets_a_snapshot_consistent_with_head_seq_while_writes_commit(
    start_service: StartService,
) -> None:
    seam = Seam("customer:dora")
    service = await start_service(hooks=seam)
    a = await place(service, "dora")
    b = await place(service, "dora")
    assert (await move(service, b, "PREPARING")).status_code == 200
    c = await place(service, "dora")
    for status in FLOW:
        assert (await move(service, c, status)).status_code == 200
    added: list[str] = []

    async def write() -> None:
        # Commits between the snapshot's head read and its orders read.
        assert (await move(service, a, "PREPARING")).status_code == 200
        added.append(await place(service, "dora"))

    seam.actions["after_snapshot_head"] = write
    async with connect(ws_url(service, "dora")) as ws:
        hello = await recv_json(ws)
        assert "after_snapshot_head: done" in seam.log
        assert hello["head_seq"] == 8
        # The orders as of seq 8: delivered c is closed, a not yet moved, the new one absent.
        assert {o["id"]: o["status"] for o in hello["orders"]} == {a: "CONFIRMED", b: "PREPARING"}
        # What committed during the snapshot follows it live, once.
        after = await until_sentinel(ws, sentinel(service, "dora"))
    assert [(e["seq"], e["order_id"], e["status"]) for e in after] == [
        (9, a, "PREPARING"),
        (10, added[0], "CONFIRMED"),
    ]


class Seam(Hooks):
    """Pause points on one stream: one-shot actions run *at* a point, and a record of the run.

    ``log`` lists the points the stream passed (and ``<point>: done`` after an action), so a test
    can assert the interleaving it forced really happened; ``backfills`` lists the seqs each
    backlog read returned.
    """

    def __init__(self, stream: str) -> None:
        self.stream = stream
        self.actions: dict[str, Callable[[], Awaitable[None]]] = {}
        self.log: list[str] = []
        self.done: dict[str, asyncio.Event] = defaultdict(asyncio.Event)
        self.backfills: list[list[int]] = []
        self.hold_next_publish = False
        self.publish_held = asyncio.Event()
        self.release_publish = asyncio.Event()

    async def _at(self, point: str, stream: str) -> None:
        if stream != self.stream:
            return
        self.log.append(point)
        action = self.actions.pop(point, None)
        if action is not None:
            await action()
            self.log.append(f"{point}: done")
            self.done[point].set()

    async def finished(self, point: str) -> None:
        """Wait until the action at ``point`` has run (so a sentinel is written after it)."""
        await asyncio.wait_for(self.done[point].wait(), 10)

    async def after_subscribe(self, stream: str) -> None:
        await self._at("after_subscribe", stream)

    async def after_snapshot_head(self, stream: str) -> None:
        await self._at("after_snapshot_head", stream)

    async def before_backfill_read(self, stream: str) -> None:
        await self._at("before_backfill_read", stream)

    async def after_backfill_read(self, stream: str, seqs: Sequence[int]) -> None:
        if stream == self.stream:
            self.backfills.append(list(seqs))
        await self._at("after_backfill_read", stream)

    async def before_publish(self, event_ids: Sequence[int]) -> None:
        if self.hold_next_publish:
            self.hold_next_publish = False
            self.log.append("publish held")
            self.publish_held.set()
            await self.release_publish.wait()


def sentinel(service: Service, customer: str) -> Callable[[], Awaitable[str]]:
    """A sentinel writer for ``customer``'s stream: one more order, placed after the rest."""

    async def write() -> str:
        return await place(service, customer)

    return write


async def wait_for_seq(sub: SubscriptionLike, seq: int, timeout: float = 10.0) -> None:
    """Wait until the broker hands ``sub`` the message for ``seq``."""
    async with asyncio.timeout(timeout):
        async for item in sub:
            if isinstance(item, Message) and protocol.unpack(item.data)[0] == seq:
                return


def counter(service: Service, name: str, **labels: str) -> float:
    return service.metrics.registry.get_sample_value(name, labels or None) or 0.0


async def test_a_write_committed_between_subscribe_and_backfill_is_sent_exactly_once(
    start_service: StartService,
) -> None:
    seam = Seam("customer:erin")
    service = await start_service(hooks=seam)
    order_id = await place(service, "erin")

    async def write() -> None:
        # Committed *and* published while the hub is subscribed but has not read the backlog.
        assert (await move(service, order_id, "PREPARING")).status_code == 200

    seam.actions["after_subscribe"] = write
    async with connect(ws_url(service, "erin", since=1)) as ws:
        hello = await recv_json(ws)
        assert hello["type"] == "hello" and hello["head_seq"] == 2
        before = await until_sentinel(ws, sentinel(service, "erin"))
    assert seqs(before) == [2] and before[0]["status"] == "PREPARING"
    # The interleaving happened: write after subscribe, then the backlog read that returned
    # it, while its live copy waited in the queue and was dropped as a duplicate.
    assert seam.log[:3] == ["after_subscribe", "after_subscribe: done", "before_backfill_read"]
    assert seam.backfills == [[2]]
    assert counter(service, "ws_duplicates_dropped_total") == 1


async def test_a_live_message_arriving_during_the_backfill_follows_it_without_a_repair(
    start_service: StartService,
) -> None:
    seam = Seam("customer:finn")
    service = await start_service(hooks=seam)
    order_id = await place(service, "finn")
    for status in FLOW[:2]:
        assert (await move(service, order_id, status)).status_code == 200
    channel = service.settings.redis_channel_prefix + "customer:finn"
    async with service.broker.subscribe(channel) as probe:

        async def write() -> None:
            assert (await move(service, order_id, FLOW[2])).status_code == 200
            # The probe shares the hub's broker connection and fan-out: once it has seq 4,
            # so does the hub's queue, while the hub is still inside the backfill.
            await wait_for_seq(probe, 4)

        seam.actions["after_backfill_read"] = write
        async with connect(ws_url(service, "finn", since=1)) as ws:
            assert (await recv_json(ws))["head_seq"] == 3
            await seam.finished("after_backfill_read")
            before = await until_sentinel(ws, sentinel(service, "finn"))
    assert seqs(before) == [2, 3, 4]
    assert [e["status"] for e in before] == FLOW[:3]
    # The backlog read stopped at 3; seq 4 arrived live during the backfill and was delivered
    # from the queue: no second read repaired it (a hub subscribed too late would need one).
    assert seam.backfills == [[2, 3]]
    assert "after_backfill_read: done" in seam.log
    assert counter(service, "ws_backfills_total", reason="seq_jump") == 0
    assert counter(service, "ws_duplicates_dropped_total") == 0


async def test_a_live_message_for_a_seq_the_backfill_also_returns_is_dropped(
    start_service: StartService,
) -> None:
    seam = Seam("customer:gail")
    service = await start_service(hooks=seam)
    order_id = await place(service, "gail")
    channel = service.settings.redis_channel_prefix + "customer:gail"
    writing: list[asyncio.Task[httpx.Response]] = []
    async with service.broker.subscribe(channel) as probe:

        async def commit_holding_the_publish() -> None:
            seam.hold_next_publish = True
            writing.append(asyncio.create_task(move(service, order_id, "PREPARING")))
            await asyncio.wait_for(seam.publish_held.wait(), 10)  # committed, not published

        async def publish_now() -> None:
            seam.release_publish.set()
            await wait_for_seq(probe, 2)  # the live copy of seq 2 is in the hub's queue

        seam.actions["before_backfill_read"] = commit_holding_the_publish
        seam.actions["after_backfill_read"] = publish_now
        async with connect(ws_url(service, "gail", since=1)) as ws:
            await recv_json(ws)
            await seam.finished("after_backfill_read")
            before = await until_sentinel(ws, sentinel(service, "gail"))
        assert (await writing[0]).status_code == 200
    assert seqs(before) == [2]
    assert seam.log[:6] == [
        "after_subscribe",
        "before_backfill_read",
        "publish held",
        "before_backfill_read: done",
        "after_backfill_read",
        "after_backfill_read: done",
    ]
    assert seam.backfills == [[2]]
    assert counter(service, "ws_duplicates_dropped_total") == 1


async def unpublished(service: Service) -> int:
    async with service.db.read() as session:
        count = await session.scalar(
            select(func.count()).select_from(Event).where(Event.published_at.is_(None))
        )
    return int(count or 0)


async def test_a_publish_that_never_happened_reaches_a_live_subscriber_through_the_relay(
    start_service: StartService,
) -> None:
    service = await start_service(relay=True, relay_grace=0.3)
    order_id = await place(service, "fay")
    async with connect(ws_url(service, "fay", since=1)) as ws:
        await recv_json(ws)  # hello
        await write_without_publishing(service, order_id, OrderStatus.PREPARING)
        assert await unpublished(service) == 1
        (event,) = await recv_events(ws, 1, timeout=10)
        assert event["seq"] == 2 and event["status"] == "PREPARING"
        # Once the relay has marked it published it is never sent again; the sentinel shows
        # that nothing else came (a second relay pass before the mark included).
        async with asyncio.timeout(10):
            while await unpublished(service):
                await asyncio.sleep(0.05)
        assert await until_sentinel(ws, sentinel(service, "fay")) == []


async def test_a_lost_publish_is_repaired_from_the_log_as_soon_as_the_next_seq_arrives(
    service: Service,
) -> None:
    order_id = await place(service, "gus")
    async with connect(ws_url(service, "gus", since=1)) as ws:
        await recv_json(ws)
        await write_without_publishing(service, order_id, OrderStatus.PREPARING)
        assert (await move(service, order_id, "READY")).status_code == 200
        events = await recv_events(ws, 2)
        assert seqs(events) == [2, 3]
        assert [e["status"] for e in events] == ["PREPARING", "READY"]
        assert await until_sentinel(ws, sentinel(service, "gus")) == []


async def test_a_slow_consumer_is_closed_with_4408_and_resumes_without_loss(
    start_service: StartService,
) -> None:
    service = await start_service(ws_queue_size=4, max_body_bytes=200_000)
    N = 200
    # Big events, a tiny receive buffer and a client that does not read: the server's
    # per-connection queue overflows.
    # Random text, so per-message compression (if a deployment enables it) cannot shrink it.
    big_items = [
        {
            "sku": secrets.token_urlsafe(70),
            "name": secrets.token_urlsafe(150),
            "quantity": 1,
            "unit_price": 1,
        }
        for _ in range(100)
    ]
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", int(service.running.http.rsplit(":", 1)[1])))
    async with connect(ws_url(service, "hal"), sock=sock, max_queue=1, max_size=None) as ws:
        hello = await recv_json(ws)
        epoch = hello["epoch"]
        # ~35 KB an event, several MB in all: more than the kernel's socket buffers hold.
        for _ in range(N):
            await place(service, "hal", items=big_items)
        code, frames = await frames_until_close(ws, timeout=30)
    assert code == 4408
    assert service.metrics.registry.get_sample_value("ws_slow_consumer_closes_total") == 1
    # What did reach us before the close is a contiguous prefix of the stream, events only.
    assert all(f["type"] == "event" for f in frames), [f["type"] for f in frames]
    last_seen = frames[-1]["seq"] if frames else 0
    assert seqs(frames) == list(range(1, last_seen + 1))
    assert last_seen < N
    # Resume where the client really stopped: exactly the rest, then nothing but the sentinel.
    async with connect(ws_url(service, "hal", since=last_seen, epoch=epoch), max_size=None) as ws:
        hello = await recv_json(ws)
        assert hello["type"] == "hello" and hello["head_seq"] == N
        events = await recv_events(ws, N - last_seen, timeout=60)
        assert seqs(events) == list(range(last_seen + 1, N + 1))
        assert await until_sentinel(ws, sentinel(service, "hal"), timeout=30) == []


async def test_many_concurrent_pos_updates_keep_every_stream_contiguous_and_lose_no_update(
    service: Service,
) -> None:
    customers = ["ivy", "jon", "kim"]
    orders = [await place(service, c) for c in customers for _ in range(3)]
    listeners = {}
    for c in customers:
        ws = await connect(ws_url(service, c, since=3))
        await recv_json(ws)
        listeners[c] = ws
    store_ws = await connect(f"{service.ws_url}?token={POS}&since=9")
    await recv_json(store_ws)
    successes = 0

    async def terminal(seed: int) -> None:
        nonlocal successes
        rng = random.Random(seed)
        for _ in range(25):
            order_id = rng.choice(orders)
            status = rng.choice(FLOW)
            r = await move(service, order_id, status)
            assert r.status_code in (200, 409), r.text
            successes += r.status_code == 200

    try:
        await asyncio.gather(*(terminal(seed) for seed in range(6)))
        async with service.db.read() as session:
            rows = (
                await session.execute(
                    select(StreamEvent.stream, StreamEvent.seq, Event)
                    .join(Event, Event.id == StreamEvent.event_id)
                    .order_by(StreamEvent.stream, StreamEvent.seq)
                )
            ).all()
            event_count = await session.scalar(select(func.count()).select_from(Event))
            db_orders = (await session.execute(select(Order))).scalars().all()
        assert event_count == len(orders) + successes
        by_stream: dict[str, list[tuple[int, Event]]] = {}
        for stream, seq, event in rows:
            by_stream.setdefault(stream, []).append((seq, event))
        for stream, entries in by_stream.items():
            assert [seq for seq, _ in entries] == list(range(1, len(entries) + 1)), stream
            # Seq order is commit order: an order's commits are serialised by its row lock and
            # numbered by its version, so in seq order each order's events must run version
            # 1, 2, 3, … with each one starting where the previous one ended.
            chains: dict[str, list[Event]] = {}
            for _, event in entries:
                chains.setdefault(event.order_id, []).append(event)
            for order_id, chain in chains.items():
                versions = [e.data["order"]["version"] for e in chain]
                assert versions == list(range(1, len(chain) + 1)), (stream, order_id, versions)
                for earlier, later in zip(chain, chain[1:], strict=False):
                    assert later.from_status == earlier.to_status, (stream, order_id)
        # No lost update: each order's version counts its events, its status is its last event's.
        async with service.db.read() as session:
            for order in db_orders:
                last = (
                    await session.execute(
                        select(Event)
                        .where(Event.order_id == order.id)
                        .order_by(Event.id.desc())
                        .limit(1)
                    )
                ).scalar_one()
                count = await session.scalar(
                    select(func.count()).select_from(Event).where(Event.order_id == order.id)
                )
                assert order.status == last.to_status and order.version == count
        # And every live subscriber got exactly its stream, in seq = commit order: the same
        # events in the same order as the log, nothing before the sentinel but those.
        store_log = by_stream["store:store-1"][9:]
        got = await until_sentinel(store_ws, sentinel(service, "zed"))
        assert [(e["seq"], e["event_id"]) for e in got] == [(q, e.id) for q, e in store_log]
        for c, ws in listeners.items():
            log = by_stream[f"customer:{c}"][3:]
            got = await until_sentinel(ws, sentinel(service, c))
            assert [(e["seq"], e["event_id"]) for e in got] == [(q, e.id) for q, e in log]
    finally:
        for ws in [*listeners.values(), store_ws]:
            await ws.close()


async def test_every_session_of_a_customer_receives_the_event(service: Service) -> None:
    sockets: list[ClientConnection] = []
    try:
        for _ in range(3):
            ws = await connect(ws_url(service, "lea"))
            await recv_json(ws)
            sockets.append(ws)
        await place(service, "lea")
        for ws in sockets:
            assert seqs(await recv_events(ws, 1)) == [1]
    finally:
        for ws in sockets:
            await ws.close()


async def test_a_resume_from_another_epoch_or_the_future_gets_a_reset_with_a_snapshot(
    service: Service,
) -> None:
    order_id = await place(service, "max")
    async with connect(ws_url(service, "max", since=1, epoch="not-the-epoch")) as ws:
        reset = await recv_json(ws)
    assert reset["type"] == "reset" and reset["head_seq"] == 1
    assert [o["id"] for o in reset["orders"]] == [order_id]
    async with connect(ws_url(service, "max", since=99)) as ws:
        reset = await recv_json(ws)
    assert reset["type"] == "reset"


async def test_shutdown_closes_sockets_with_1012_so_clients_reconnect_elsewhere(
    start_service: StartService,
) -> None:
    service = await start_service()
    ws = await connect(ws_url(service, "ned"))
    await recv_json(ws)
    assert service.running.server is not None
    service.running.server.should_exit = True
    assert await expect_close(ws, timeout=10) == 1012


async def test_writes_from_the_write_path_directly_reach_the_store_stream_too(
    service: Service,
) -> None:
    principal = Principal("oli", Role.CUSTOMER, None, 2e9)
    async with connect(f"{service.ws_url}?token={POS}") as ws:
        await recv_json(ws)
        written = await create_order(
            service.db,
            service.publisher,
            service.metrics,
            customer_id="oli",
            store_id="store-1",
            items=[{"sku": "a", "name": "A", "quantity": 1, "unit_price": 100}],
            currency="INR",
            payment_method=PaymentMethod.CASH,
            actor=Actor.of(principal),
            expiry=timedelta(minutes=5),
        )
        (event,) = await recv_events(ws, 1)
    assert event["stream"] == "store:store-1" and event["order_id"] == written.order["id"]


@pytest.mark.parametrize("status", ["CANCELLED"])
async def test_a_customer_cancel_goes_through_the_same_path_and_stream(
    service: Service, status: str
) -> None:
    order_id = await place(service, "pia")
    async with connect(ws_url(service, "pia", since=1)) as ws:
        await recv_json(ws)
        r = await service.http.post(f"/api/orders/{order_id}/cancel", headers=auth(token("pia")))
        assert r.status_code == 200, r.text
        (event,) = await recv_events(ws, 1)
    assert event["status"] == status and event["source"] == "customer"


class CommitCheckingBroker:
    """The real broker, checking at the instant of each publish that the event is committed.

    It reads every published event from a database connection of its own, not the writer's:
    an event published before its transaction commits is not visible there yet.
    """

    def __init__(self, inner: Broker, db: Database) -> None:
        self.inner = inner
        self.db = db
        self.checked: list[tuple[int, bool]] = []
        #: The flush markers (``FlushBeforeCommit``) that reached the broker.
        self.flushed: set[int] = set()
        self.flush = asyncio.Event()

    @property
    def connected(self) -> bool:
        return self.inner.connected

    async def connect(self) -> None:
        await self.inner.connect()

    async def disconnect(self) -> None:
        await self.inner.disconnect()

    async def publish(self, channel: str, data: str) -> None:
        await self._check([(channel, data)])
        await self.inner.publish(channel, data)

    async def publish_many(self, messages: Sequence[tuple[str, str]]) -> None:
        await self._check(messages)
        await self.inner.publish_many(messages)

    def subscribe(
        self, *channels: str, maxsize: int = 256
    ) -> AbstractAsyncContextManager[SubscriptionLike]:
        return self.inner.subscribe(*channels, maxsize=maxsize)

    async def _check(self, messages: Sequence[tuple[str, str]]) -> None:
        for channel, data in messages:
            if "_heartbeat:" in channel:
                continue
            if channel.endswith(FLUSH_STREAM):
                self.flushed.add(protocol.unpack(data)[0])
                self.flush.set()
                continue
            payload = orjson.loads(protocol.unpack(data)[1])
            async with self.db.read() as session:
                stored = await session.get(Event, payload["event_id"])
            visible = stored is not None and stored.to_status == payload["status"]
            self.checked.append((payload["event_id"], visible))


#: The private stream of the marker a held COMMIT sends through the app's publish queue.
FLUSH_STREAM = "_test_flush"


class FlushBeforeCommit(Hooks):
    """Holds every COMMIT until a marker queued on the app's publisher, behind anything queued
    so far, has reached the broker: a publish made before the COMMIT then reaches the broker,
    and its check, while the transaction is still open — on every run, not when a race says."""

    def __init__(self, broker: CommitCheckingBroker) -> None:
        self.broker = broker
        self.publisher: Publisher | None = None
        self.held = 0

    async def before_commit(self, session: AsyncSession) -> None:
        if self.publisher is None:
            return
        self.held += 1
        marker = self.held
        assert await self.publisher.publish([Delivery(FLUSH_STREAM, marker, "")], [])
        async with asyncio.timeout(10):
            while marker not in self.broker.flushed:
                self.broker.flush.clear()
                await self.broker.flush.wait()


async def test_an_event_is_committed_before_it_is_published_or_acknowledged(
    backend: Backend, start_service: StartService
) -> None:
    inner = create_broker(backend.redis_url)
    await inner.connect()
    observer = Database(backend.database_url, pool_size=2)
    try:
        checker = CommitCheckingBroker(inner, observer)
        hooks = FlushBeforeCommit(checker)
        service = await start_service(broker=checker, hooks=hooks)
        (services,) = service.inside
        hooks.publisher = services.publisher
        order_id = await place(service, "quin")
        responses = [await move(service, order_id, status) for status in FLOW]
        other = await place(service, "quin")
        responses.append(
            await service.http.post(f"/api/orders/{other}/cancel", headers=auth(token("quin")))
        )
        assert [r.status_code for r in responses] == [200] * len(responses)
        # Seven events, each published to the customer's and the store's stream.
        assert len(checker.checked) == 2 * 7
        assert [visible for _, visible in checker.checked] == [True] * 14, checker.checked
        # Every write's COMMIT was held until what was queued before it had been published.
        assert hooks.held >= 7 and checker.flushed == set(range(1, hooks.held + 1))
        # And each 2xx came after the commit: the answer's event is in the log.
        async with observer.read() as session:
            for r in responses:
                assert await session.get(Event, r.json()["event"]["event_id"]) is not None
    finally:
        await observer.dispose()
        await inner.disconnect()


async def test_a_lost_last_message_on_a_quiet_stream_is_found_by_the_safety_poll(
    start_service: StartService,
) -> None:
    # No relay, no later event to reveal a seq jump, a healthy broker: only the hub's slow
    # safety poll of stream heads can notice.
    service = await start_service(hub_safety_poll_interval=0.5, hub_poll_interval=0.2)
    order_id = await place(service, "rex")
    async with connect(ws_url(service, "rex", since=1)) as ws:
        await recv_json(ws)
        await write_without_publishing(service, order_id, OrderStatus.PREPARING)
        (event,) = await recv_events(ws, 1, timeout=10)
        assert event["seq"] == 2 and event["status"] == "PREPARING"
    assert (service.metrics.registry.get_sample_value("hub_polls_total") or 0) >= 1


async def test_the_same_move_sent_by_many_terminals_at_once_happens_exactly_once(
    service: Service,
) -> None:
    order_id = await place(service, "sid")
    async with connect(ws_url(service, "sid", since=1)) as ws:
        await recv_json(ws)
        answers = await asyncio.gather(*(move(service, order_id, "PREPARING") for _ in range(10)))
        assert sorted(r.status_code for r in answers) == [200] + [409] * 9
        (event,) = await recv_events(ws, 1)
        assert event["seq"] == 2 and event["previous_status"] == "CONFIRMED"
        assert await until_sentinel(ws, sentinel(service, "sid")) == []
    async with service.db.read() as session:
        moves = await session.scalar(
            select(func.count()).select_from(Event).where(Event.order_id == order_id)
        )
    assert moves == 2  # created, then PREPARING once
