"""Group commit (PostgreSQL): concurrent POS changes of one store share one transaction.

Every test forces the batch: the pause point before the store's worker takes its first batch
holds it until all the test's requests are queued, so the batch really holds all of them, and
the test checks from its records (queue order, COMMITs) that it did.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession

from channels import Broker, create_broker
from channels.base import SubscriptionLike
from orders.db import Database
from orders.hooks import Hooks
from orders.models import Event, Order, StreamEvent
from orders.writes import Delivery, Publisher
from server import protocol
from tests.conftest import PG_DSN, Backend, Service, StartService
from tests.support.asserts import assert_error
from tests.support.clients import auth, order_body, token

POS = token("till-7", role="pos", store_id="store-1")
STORE = "store:store-1"
#: The only lane these tests write in (store-1's).
LANE = "lane-0"


@pytest.fixture
async def backend(pg_backend: Backend) -> Backend:
    """PostgreSQL only: SQLite (one writer) keeps the one-change-per-transaction path."""
    return pg_backend


class HoldFirstBatch(Hooks):
    """Holds the store's first batch until ``gate`` opens; records the queue and the COMMITs."""

    def __init__(self, *, kill_commit: bool = False) -> None:
        self.gate = asyncio.Event()
        self.armed = False
        self.queued: list[str] = []
        #: The orders of each status-change transaction about to COMMIT.
        self.commits: list[list[str]] = []
        self.kill_commit = kill_commit
        self.killed: list[int] = []

    async def after_write_queued(self, lane: str, order_id: str) -> None:
        if self.armed and lane == LANE:
            self.queued.append(order_id)

    async def before_write_batch(self, lane: str) -> None:
        if self.armed and lane == LANE:
            async with asyncio.timeout(10):
                await self.gate.wait()
            self.armed = False

    async def before_commit(self, session: AsyncSession) -> None:
        changes = session.info.get("status_changes")
        if changes is None:
            return
        self.commits.append(list(changes))
        if self.kill_commit and not self.killed and self.queued:
            # The batch's connection dies at the last instant before its COMMIT.
            pid = int((await session.execute(text("SELECT pg_backend_pid()"))).scalar_one())
            admin = await asyncpg.connect(PG_DSN, timeout=5)
            try:
                await admin.execute("SELECT pg_terminate_backend($1)", pid)
                async with asyncio.timeout(5):
                    while await admin.fetchval(
                        "SELECT count(*) FROM pg_stat_activity WHERE pid = $1", pid
                    ):
                        await asyncio.sleep(0.01)
            finally:
                await admin.close()
            self.killed.append(pid)

    async def until_queued(self, count: int) -> None:
        async with asyncio.timeout(10):
            while len(self.queued) < count:
                await asyncio.sleep(0.01)


async def create(service: Service, customer: str, store: str = "store-1") -> str:
    """A cash order of ``store`` for ``customer`` (CONFIRMED); its id."""
    r = await service.http.post(
        "/api/orders", json=order_body(store), headers=auth(token(customer))
    )
    assert r.status_code == 201, r.text
    order_id: str = r.json()["order"]["id"]
    return order_id


async def move(service: Service, order_id: str, status: str, tok: str = POS) -> httpx.Response:
    """POST a POS status change."""
    return await service.http.post(
        f"/api/pos/orders/{order_id}/status", json={"status": status}, headers=auth(tok)
    )


async def batch(
    service: Service,
    hooks: HoldFirstBatch,
    order_ids: list[str],
    status: str,
    tokens: dict[str, str] | None = None,
) -> dict[str, httpx.Response]:
    """Send one change per order at once, held until all are queued; each order's answer."""
    tokens = tokens or {}
    hooks.armed = True
    commits = len(hooks.commits)
    tasks = {
        order_id: asyncio.create_task(move(service, order_id, status, tokens.get(order_id, POS)))
        for order_id in order_ids
    }
    await hooks.until_queued(len(order_ids))
    hooks.gate.set()
    async with asyncio.timeout(15):
        answers = {order_id: await task for order_id, task in tasks.items()}
    # One transaction for the whole batch, in queue order.
    assert sorted(hooks.queued) == sorted(order_ids)
    assert hooks.commits[commits:] == [hooks.queued]
    return answers


async def seqs_of(service: Service, stream: str, event_ids: list[int]) -> dict[int, int]:
    """The seq of each event in ``stream``."""
    async with service.db.read() as session:
        rows = await session.execute(
            select(StreamEvent.event_id, StreamEvent.seq).where(
                StreamEvent.stream == stream, StreamEvent.event_id.in_(event_ids)
            )
        )
        return {int(event_id): int(seq) for event_id, seq in rows}


async def statuses(service: Service, order_ids: list[str]) -> dict[str, str]:
    async with service.db.read() as session:
        rows = await session.execute(select(Order.id, Order.status).where(Order.id.in_(order_ids)))
        return {order_id: status for order_id, status in rows}


def event_of(answer: httpx.Response) -> dict[str, Any]:
    assert answer.status_code == 200, answer.text
    event: dict[str, Any] = answer.json()["event"]
    return event


async def test_concurrent_changes_of_one_store_commit_once_with_contiguous_seqs(
    start_service: StartService,
) -> None:
    hooks = HoldFirstBatch()
    service = await start_service(hooks=hooks, group_commit_lanes=1)
    order_ids = [await create(service, f"cust-{i}") for i in range(8)]

    answers = await batch(service, hooks, order_ids, "PREPARING")

    events = {}
    for order_id, answer in answers.items():
        body = answer.json()
        event = event_of(answer)
        # Every caller gets its own order and its own event.
        assert body["order"]["id"] == order_id and body["order"]["status"] == "PREPARING"
        assert body["order"]["version"] == 2
        assert event["order_id"] == order_id and event["status"] == "PREPARING"
        assert event["previous_status"] == "CONFIRMED"
        events[order_id] = event["event_id"]
    # The store's seqs follow the batch's order with no hole; each customer's stream moved too.
    store_seqs = await seqs_of(service, STORE, list(events.values()))
    in_queue_order = [store_seqs[events[order_id]] for order_id in hooks.queued]
    assert in_queue_order == list(range(in_queue_order[0], in_queue_order[0] + 8))
    for i, order_id in enumerate(order_ids):
        assert list((await seqs_of(service, f"customer:cust-{i}", [events[order_id]])).values())
    assert set((await statuses(service, order_ids)).values()) == {"PREPARING"}


async def test_stores_of_one_lane_share_a_commit_and_each_keeps_its_own_seqs(
    start_service: StartService,
) -> None:
    hooks = HoldFirstBatch()
    service = await start_service(hooks=hooks, group_commit_lanes=1)
    pos2 = token("till-9", role="pos", store_id="store-2")
    stores = ["store-1", "store-2"] * 3
    order_ids = [await create(service, f"cust-{i}", store) for i, store in enumerate(stores)]
    tokens = {o: pos2 for o, store in zip(order_ids, stores, strict=True) if store == "store-2"}

    answers = await batch(service, hooks, order_ids, "PREPARING", tokens)

    for store in ("store-1", "store-2"):
        mine = [o for o in hooks.queued if dict(zip(order_ids, stores, strict=True))[o] == store]
        events = [event_of(answers[o])["event_id"] for o in mine]
        seqs = await seqs_of(service, f"store:{store}", events)
        in_queue_order = [seqs[event_id] for event_id in events]
        assert in_queue_order == list(range(in_queue_order[0], in_queue_order[0] + 3))


async def test_a_refused_change_in_the_middle_of_a_batch_does_not_stop_the_others(
    start_service: StartService,
) -> None:
    hooks = HoldFirstBatch()
    service = await start_service(hooks=hooks, group_commit_lanes=1)
    order_ids = [await create(service, f"cust-{i}") for i in range(5)]
    already = order_ids[2]
    assert (await move(service, already, "PREPARING")).status_code == 200

    answers = await batch(service, hooks, order_ids, "PREPARING")

    error = assert_error(answers[already], 409, "invalid_transition")
    assert error["status"] == "PREPARING"
    assert error["allowed"] == ["READY", "CANCELLED"]
    moved = [order_id for order_id in hooks.queued if order_id != already]
    events = [event_of(answers[order_id])["event_id"] for order_id in moved]
    store_seqs = await seqs_of(service, STORE, events)
    in_queue_order = [store_seqs[event_id] for event_id in events]
    assert in_queue_order == list(range(in_queue_order[0], in_queue_order[0] + 4))
    assert set((await statuses(service, order_ids)).values()) == {"PREPARING"}


async def test_a_connection_lost_during_the_batch_commit_is_unknown_to_every_caller(
    start_service: StartService,
) -> None:
    hooks = HoldFirstBatch(kill_commit=True)
    service = await start_service(hooks=hooks, group_commit_lanes=1)
    order_ids = [await create(service, f"cust-{i}") for i in range(4)]

    answers = await batch(service, hooks, order_ids, "PREPARING")

    assert len(hooks.killed) == 1
    for answer in answers.values():
        # Nobody is told the change was made, nor that it was not.
        assert_error(answer, 503, "commit_outcome_unknown")
    # The backend died before COMMIT reached it: nothing moved, and a retry is applied.
    assert set((await statuses(service, order_ids)).values()) == {"CONFIRMED"}
    for order_id in order_ids:
        assert event_of(await move(service, order_id, "PREPARING"))["status"] == "PREPARING"


async def test_a_full_queue_refuses_the_change_with_write_queue_full(
    start_service: StartService,
) -> None:
    hooks = HoldFirstBatch()
    service = await start_service(hooks=hooks, group_commit_lanes=1, group_commit_max_queued=2)
    order_ids = [await create(service, f"cust-{i}") for i in range(3)]
    hooks.armed = True
    waiting = [asyncio.create_task(move(service, order_id, "READY")) for order_id in order_ids[:2]]
    await hooks.until_queued(2)

    refused = await move(service, order_ids[2], "PREPARING")

    assert_error(refused, 503, "write_queue_full")
    assert refused.headers["Retry-After"] == "1"
    hooks.gate.set()
    async with asyncio.timeout(15):
        # The queued ones are applied in their turn (and refused on their own merits).
        for task in waiting:
            assert_error(await task, 409, "invalid_transition")
    assert set((await statuses(service, order_ids)).values()) == {"CONFIRMED"}
    assert service.metrics.registry.get_sample_value("group_commit_overflow_total") == 1


class CheckingBroker:
    """The real broker; at the instant of each event's publish it reads the event from a
    database connection of its own (committed or not), and it notes the flush marker."""

    def __init__(self, inner: Broker, observer: Database) -> None:
        self.inner = inner
        self.observer = observer
        #: (event id, whether it was committed when it reached the broker), in publish order.
        self.checked: list[tuple[int, bool]] = []
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
            if "_heartbeat:" in channel or "_probe" in channel:
                continue
            seq, event = protocol.unpack(data)
            if channel.endswith(FLUSH_STREAM):
                self.flushed.add(seq)
                self.flush.set()
                continue
            payload = orjson.loads(event)
            async with self.observer.read() as session:
                stored = await session.get(Event, payload["event_id"])
            self.checked.append((payload["event_id"], stored is not None))


#: The private stream of the marker a held COMMIT sends through the app's publish queue.
FLUSH_STREAM = "_test_flush"


class FlushBeforeCommit(HoldFirstBatch):
    """Holds every status-change COMMIT until a marker queued on the app's publisher, behind
    anything published so far, has reached the broker: a publish made before the COMMIT then
    reaches the broker while the event is not committed yet, on every run."""

    def __init__(self, broker: CheckingBroker) -> None:
        super().__init__()
        self.broker = broker
        self.publisher: Publisher | None = None
        self.held = 0

    async def before_commit(self, session: AsyncSession) -> None:
        await super().before_commit(session)
        if session.info.get("status_changes") is None:
            return
        assert self.publisher is not None, "the test hands in the app's publisher"
        self.held += 1
        marker = self.held
        assert await self.publisher.publish([Delivery(FLUSH_STREAM, marker, "")], [])
        async with asyncio.timeout(10):
            while marker not in self.broker.flushed:
                self.broker.flush.clear()
                await self.broker.flush.wait()


async def test_a_batch_is_committed_before_any_of_its_events_is_published_or_acknowledged(
    backend: Backend, start_service: StartService
) -> None:
    inner = create_broker(backend.redis_url)
    await inner.connect()
    observer = Database(backend.database_url, pool_size=2)
    try:
        broker = CheckingBroker(inner, observer)
        hooks = FlushBeforeCommit(broker)
        service = await start_service(hooks=hooks, broker=broker, group_commit_lanes=1)
        (services,) = service.inside
        hooks.publisher = services.publisher
        order_ids = [await create(service, f"cust-{i}") for i in range(4)]
        created = len(broker.checked)

        answers = list((await batch(service, hooks, order_ids, "PREPARING")).values())
        answers.append(await move(service, order_ids[0], "READY"))  # a batch of one

        # Two COMMITs, each held until everything queued before it had reached the broker.
        assert hooks.commits == [hooks.queued, [order_ids[0]]]
        assert broker.flushed == {1, 2}
        # Five events, each published to the customer's and the store's stream, all committed.
        moves = broker.checked[created:]
        assert len(moves) == 2 * 5
        assert [visible for _, visible in moves] == [True] * 10, moves
        # And each 200 came after the COMMIT: the answer's event is in the log.
        async with observer.read() as session:
            for answer in answers:
                assert await session.get(Event, event_of(answer)["event_id"]) is not None
    finally:
        await observer.dispose()
        await inner.disconnect()
