"""Group commit (PostgreSQL): concurrent POS changes of one store share one transaction.

Every test forces the batch: the pause point before the store's worker takes its first batch
holds it until all the test's requests are queued, so the batch really holds all of them, and
the test checks from its records (queue order, COMMITs) that it did.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
from sqlalchemy import insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession
from websockets.asyncio.client import connect

from channels import Broker, create_broker
from channels.base import SubscriptionLike
from orders.actors import Principal, Role
from orders.db import Database
from orders.groupcommit import GroupCommit
from orders.hooks import Hooks
from orders.metrics import Metrics
from orders.models import Event, Order, Payment, Refund, StreamEvent, utcnow
from orders.workflow import OrderStatus
from orders.writes import Actor, Delivery, Publisher
from server import protocol
from tests.conftest import PG_DSN, Backend, Service, StartService
from tests.support.asserts import assert_error
from tests.support.clients import auth, order_body, recv_events, recv_json, token

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
        #: Kill the connection of the first transaction that applies exactly these orders.
        self.kill_changes: list[str] | None = None
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
        chosen = self.kill_changes == changes if self.kill_changes else self.queued
        if self.kill_commit and not self.killed and chosen:
            # The batch's connection dies at the last instant before its COMMIT.
            pid = int((await session.execute(text("SELECT pg_backend_pid()"))).scalar_one())
            await terminate(pid)
            self.killed.append(pid)

    async def until_queued(self, count: int) -> None:
        async with asyncio.timeout(10):
            while len(self.queued) < count:
                await asyncio.sleep(0.01)


async def terminate(pid: int) -> None:
    """Kill PostgreSQL backend ``pid`` and wait until it is gone."""
    admin = await asyncpg.connect(PG_DSN, timeout=5)
    try:
        await admin.execute("SELECT pg_terminate_backend($1)", pid)
        async with asyncio.timeout(5):
            while await admin.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", pid):
                await asyncio.sleep(0.01)
    finally:
        await admin.close()


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
    timed = sample(service, "write_seconds_sum")
    started = time.perf_counter()

    answers = await batch(service, hooks, order_ids, "PREPARING")

    # Each change is timed by its batch, which ran inside this call: no change took longer.
    assert 0 < sample(service, "write_seconds_sum") - timed <= 8 * (time.perf_counter() - started)
    written = {"kind": "order.status", "source": "pos"}
    assert sample(service, "events_written_total", written) == 8

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


class HoldCommit(HoldFirstBatch):
    """Also holds the first status-change transaction at its COMMIT until ``release`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.at_commit = asyncio.Event()
        self.release = asyncio.Event()

    async def before_commit(self, session: AsyncSession) -> None:
        await super().before_commit(session)
        if session.info.get("status_changes") is not None and not self.at_commit.is_set():
            self.at_commit.set()
            async with asyncio.timeout(10):
                await self.release.wait()


async def queue_in_order(
    service: Service, hooks: HoldFirstBatch, changes: list[tuple[str, str]]
) -> list[asyncio.Task[httpx.Response]]:
    """Send the POS changes one after the other, each queued (and held) before the next."""
    hooks.armed = True
    tasks = []
    for order_id, status in changes:
        tasks.append(asyncio.create_task(move(service, order_id, status)))
        await hooks.until_queued(len(tasks))
    return tasks


async def answers_of(tasks: list[asyncio.Task[httpx.Response]]) -> list[httpx.Response]:
    async with asyncio.timeout(15):
        return [await task for task in tasks]


async def overflow(service: Service, order_id: str) -> None:
    """Give the order the largest version its column holds: writing its next one fails (the
    batch's write statement refuses ``version + 1``), nothing else about it does."""
    async with service.db.transaction() as session:
        await session.execute(update(Order).where(Order.id == order_id).values(version=2**31 - 1))


def sample(service: Service, name: str, labels: dict[str, str] | None = None) -> float:
    value = service.metrics.registry.get_sample_value(name, labels or {})
    assert value is not None, name
    return value


def pos_actor() -> Actor:
    """store-1's terminal, as the POS endpoint makes it from the token."""
    return Actor.of(Principal("till-7", Role.POS, "store-1", time.time() + 3600))


async def test_two_changes_of_one_order_in_one_batch_apply_in_queue_order(
    start_service: StartService,
) -> None:
    hooks = HoldFirstBatch()
    service = await start_service(hooks=hooks, group_commit_lanes=1)
    order_id = await create(service, "cust-0")
    created = await service.http.get(f"/api/orders/{order_id}", headers=auth(POS))

    tasks = await queue_in_order(service, hooks, [(order_id, "PREPARING"), (order_id, "READY")])
    hooks.gate.set()
    first, second = await answers_of(tasks)

    assert hooks.commits == [[order_id, order_id]]
    # Each change stamps the order, and its event is stamped with the same moment.
    stamps = [created.json()["order"]["updated_at"]]
    for answer in (first, second):
        stamps.append(answer.json()["order"]["updated_at"])
        assert event_of(answer)["at"] == stamps[-1]
    moments = [datetime.fromisoformat(stamp) for stamp in stamps]
    assert moments[0] < moments[1] <= moments[2]
    # The second change is checked against, and moves, the order as the first left it.
    assert (event_of(first)["previous_status"], event_of(first)["status"]) == (
        "CONFIRMED",
        "PREPARING",
    )
    assert (event_of(second)["previous_status"], event_of(second)["status"]) == (
        "PREPARING",
        "READY",
    )
    assert [first.json()["order"]["version"], second.json()["order"]["version"]] == [2, 3]
    # Event ids and seqs follow the queue order, so the audit trail (by event id) does too.
    ids = [event_of(first)["event_id"], event_of(second)["event_id"]]
    assert ids[0] < ids[1]
    seqs = await seqs_of(service, STORE, ids)
    assert seqs[ids[1]] == seqs[ids[0]] + 1
    trail = await service.http.get(f"/api/orders/{order_id}/events", headers=auth(POS))
    assert [e["status"] for e in trail.json()["events"]][-2:] == ["PREPARING", "READY"]
    assert await statuses(service, [order_id]) == {order_id: "READY"}


async def test_each_order_of_a_batch_answers_with_its_own_payment_totals(
    start_service: StartService,
) -> None:
    hooks = HoldFirstBatch()
    service = await start_service(hooks=hooks, group_commit_lanes=1)
    order_ids = [await create(service, f"cust-{i}") for i in range(3)]
    now = utcnow()
    payment = {"gateway": "sandbox", "currency": "INR", "created_at": now}
    refund = {"currency": "INR", "reason": "test", "created_at": now, "updated_at": now}
    async with service.db.transaction() as session:
        # cust-0: paid in full, part of it refunded and part refunding; cust-1: an attempt in
        # flight; cust-2: nothing yet.
        await session.execute(
            insert(Payment).values(
                [
                    {"id": "pay_0", "order_id": order_ids[0], "gateway_ref": "ref_0", **payment}
                    | {"amount": 3000, "status": "COMPLETED"},
                    {"id": "pay_1", "order_id": order_ids[1], "gateway_ref": "ref_1", **payment}
                    | {"amount": 3000, "status": "PENDING"},
                ]
            )
        )
        await session.execute(
            insert(Refund).values(
                [
                    {"id": "ref_0", "order_id": order_ids[0], "payment_id": "pay_0", **refund}
                    | {"amount": 1000, "status": "SUCCEEDED", "idempotency_key": "t:0"},
                    {"id": "ref_1", "order_id": order_ids[0], "payment_id": "pay_0", **refund}
                    | {"amount": 500, "status": "PENDING", "idempotency_key": "t:1"},
                ]
            )
        )

    answers = await batch(service, hooks, order_ids, "PREPARING")

    summaries = []
    for i, order_id in enumerate(order_ids):
        order = event_of(answers[order_id]) and answers[order_id].json()["order"]
        # The answer (the event's snapshot) is the order as a read of its rows shows it.
        r = await service.http.get(f"/api/orders/{order_id}", headers=auth(token(f"cust-{i}")))
        assert order == r.json()["order"]
        summaries.append(order["payment_summary"])
    assert [(s["paid"], s["refunded"], s["outstanding"]) for s in summaries] == [
        (3000, 1000, 0),
        (0, 0, 3000),
        (0, 0, 3000),
    ]
    assert [(s["can_pay"], s["can_refund"]) for s in summaries] == [
        (False, True),
        (False, False),
        (True, False),
    ]


async def test_a_pair_whose_write_fails_is_applied_again_change_by_change(
    start_service: StartService,
) -> None:
    hooks = HoldFirstBatch()
    service = await start_service(hooks=hooks, group_commit_lanes=1)
    good, bad = [await create(service, f"cust-{i}") for i in range(2)]
    await overflow(service, bad)

    tasks = await queue_in_order(service, hooks, [(good, "PREPARING"), (bad, "PREPARING")])
    hooks.gate.set()
    answers = await answers_of(tasks)

    # The batch never reached its COMMIT; alone, the good change did and the bad one did not.
    assert hooks.commits == [[good]]
    assert event_of(answers[0])["status"] == "PREPARING"
    assert_error(answers[1], 503, "database_unavailable")
    assert await statuses(service, [good, bad]) == {good: "PREPARING", bad: "CONFIRMED"}


async def test_a_batch_whose_write_fails_gives_each_change_its_own_outcome(
    start_service: StartService,
) -> None:
    hooks = HoldFirstBatch(kill_commit=True)
    service = await start_service(hooks=hooks, group_commit_lanes=1)
    order_ids = [await create(service, f"cust-{i}") for i in range(4)]
    lost, bad = order_ids[:2]
    await overflow(service, bad)
    # Applied again alone, the first change loses its connection at its own COMMIT.
    hooks.kill_changes = [lost]

    hooks.armed = True
    tasks = [asyncio.create_task(move(service, o, "PREPARING")) for o in order_ids]
    await hooks.until_queued(4)
    hooks.gate.set()
    answered = dict(zip(order_ids, await answers_of(tasks), strict=True))

    assert len(hooks.killed) == 1
    # Each change alone, in queue order, once the batch failed (the bad one never commits).
    assert hooks.commits == [[o] for o in hooks.queued if o != bad]
    assert_error(answered[lost], 503, "commit_outcome_unknown")
    assert_error(answered[bad], 503, "database_unavailable")
    for order_id in order_ids[2:]:
        assert event_of(answered[order_id])["status"] == "PREPARING"
    assert await statuses(service, order_ids) == {
        lost: "CONFIRMED",
        bad: "CONFIRMED",
        order_ids[2]: "PREPARING",
        order_ids[3]: "PREPARING",
    }


async def test_a_batch_lost_at_its_commit_does_not_hold_up_the_batch_behind_it(
    start_service: StartService,
) -> None:
    hooks = HoldFirstBatch(kill_commit=True)
    service = await start_service(hooks=hooks, group_commit_lanes=1, group_commit_max_batch=2)
    order_ids = [await create(service, f"cust-{i}") for i in range(4)]
    hooks.armed = True
    tasks = {o: asyncio.create_task(move(service, o, "PREPARING")) for o in order_ids}
    await hooks.until_queued(4)
    hooks.gate.set()
    answered = dict(zip(tasks, await answers_of(list(tasks.values())), strict=True))

    first, second = hooks.queued[:2], hooks.queued[2:]
    # Two changes per batch, in queue order; the first batch's connection died at its COMMIT.
    assert hooks.commits == [first, second] and len(hooks.killed) == 1
    for order_id in first:
        assert_error(answered[order_id], 503, "commit_outcome_unknown")
    for order_id in second:
        assert event_of(answered[order_id])["status"] == "PREPARING"


async def test_close_refuses_the_changes_still_queued_and_writes_none_of_them(
    start_service: StartService,
) -> None:
    hooks = HoldFirstBatch()
    service = await start_service(hooks=hooks, group_commit_lanes=1)
    order_ids = [await create(service, f"cust-{i}") for i in range(2)]
    hooks.armed = True
    tasks = [asyncio.create_task(move(service, o, "PREPARING")) for o in order_ids]
    await hooks.until_queued(2)
    assert sample(service, "group_commit_queued") == 2

    await service.services.writer.close()

    for answer in await answers_of(tasks):
        assert_error(answer, 503, "overloaded")
        assert answer.headers["Retry-After"] == "1"
    assert sample(service, "group_commit_queued") == 0
    assert hooks.commits == []
    assert set((await statuses(service, order_ids)).values()) == {"CONFIRMED"}
    # A change sent after close() starts a worker of its own.
    hooks.gate.set()
    assert event_of(await move(service, order_ids[0], "PREPARING"))["status"] == "PREPARING"


async def test_close_during_a_batch_refuses_its_changes_and_commits_none_of_them(
    start_service: StartService,
) -> None:
    hooks = HoldCommit()
    service = await start_service(hooks=hooks, group_commit_lanes=1)
    order_ids = [await create(service, f"cust-{i}") for i in range(2)]
    hooks.armed = True
    tasks = [asyncio.create_task(move(service, o, "PREPARING")) for o in order_ids]
    await hooks.until_queued(2)
    hooks.gate.set()
    async with asyncio.timeout(10):
        await hooks.at_commit.wait()

    await service.services.writer.close()

    for answer in await answers_of(tasks):
        assert_error(answer, 503, "overloaded")
    # The batch had done its work and was at its COMMIT: it was rolled back instead.
    assert hooks.commits == [hooks.queued]
    assert set((await statuses(service, order_ids)).values()) == {"CONFIRMED"}


async def test_a_caller_that_gave_up_before_its_batch_began_is_not_applied(
    start_service: StartService,
) -> None:
    hooks = HoldFirstBatch()
    service = await start_service(hooks=hooks, group_commit_lanes=1, group_commit_max_batch=1)
    gave_up, waiting = [await create(service, f"cust-{i}") for i in range(2)]
    hooks.armed = True
    caller = asyncio.create_task(
        service.services.writer.change_status(
            order_id=gave_up, to=OrderStatus.PREPARING, actor=pos_actor()
        )
    )
    await hooks.until_queued(1)
    other = asyncio.create_task(move(service, waiting, "PREPARING"))
    await hooks.until_queued(2)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller

    hooks.gate.set()
    (answer,) = await answers_of([other])

    # The first batch held only the caller that gave up: nothing of it ran, the next one did.
    assert event_of(answer)["status"] == "PREPARING"
    assert hooks.commits == [[waiting]]
    assert await statuses(service, [gave_up, waiting]) == {
        gave_up: "CONFIRMED",
        waiting: "PREPARING",
    }


async def test_a_change_not_made_by_a_store_terminal_is_applied_at_once_not_queued(
    start_service: StartService,
) -> None:
    hooks = HoldFirstBatch()
    service = await start_service(hooks=hooks, group_commit_lanes=1)
    held, system = [await create(service, f"cust-{i}") for i in range(2)]
    hooks.armed = True
    (pos,) = await queue_in_order(service, hooks, [(held, "PREPARING")])

    async with asyncio.timeout(15):
        written = await service.services.writer.change_status(
            order_id=system, to=OrderStatus.PREPARING, actor=Actor.system()
        )

    # Applied in a transaction of its own while the store's lane is still held.
    assert (written.event.to_status, written.event.source) == ("PREPARING", "system")
    assert hooks.queued == [held] and hooks.commits == [[system]]
    hooks.gate.set()
    (answer,) = await answers_of([pos])
    assert event_of(answer)["status"] == "PREPARING"
    assert hooks.commits == [[system], [held]]


async def test_a_group_commit_needs_at_least_one_batch_slot_queue_slot_and_lane(
    start_service: StartService,
) -> None:
    service = await start_service()
    for batch_slots, queue_slots, lanes in ((0, 1, 1), (1, 0, 1), (1, 1, 0)):
        with pytest.raises(ValueError, match="at least 1"):
            GroupCommit(
                service.db,
                service.publisher,
                Metrics(),
                max_batch=batch_slots,
                max_queued=queue_slots,
                lanes=lanes,
            )
    smallest = GroupCommit(
        service.db, service.publisher, Metrics(), max_batch=1, max_queued=1, lanes=1
    )
    assert smallest.lane_of("store-1") == smallest.lane_of("store-2") == "lane-0"


async def test_a_connection_lost_in_a_changes_statements_answers_503_and_writes_nothing(
    start_service: StartService,
) -> None:
    hooks = HoldFirstBatch()
    service = await start_service(hooks=hooks, group_commit_lanes=1)
    order_id = await create(service, "cust-0")
    dsn = service.settings.database_url.replace("postgresql+asyncpg://", "postgresql://")
    locker = await asyncpg.connect(dsn, timeout=5)
    # Outside the locker's transaction, whose view of pg_stat_activity is frozen at its first read.
    watcher = await asyncpg.connect(dsn, timeout=5)
    try:
        async with locker.transaction():
            # The change's read of the payment sums (its second statement) waits for the table.
            await locker.execute("LOCK TABLE payments IN ACCESS EXCLUSIVE MODE")
            task = asyncio.create_task(move(service, order_id, "PREPARING"))
            pid = None
            async with asyncio.timeout(10):
                while pid is None:
                    await asyncio.sleep(0.01)
                    pid = await watcher.fetchval(
                        "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                        " AND wait_event_type = 'Lock' AND query LIKE '%FROM payments%'"
                    )
            await terminate(pid)
    finally:
        await watcher.close()
        await locker.close()
    (answer,) = await answers_of([task])

    assert_error(answer, 503, "database_unavailable")
    assert hooks.commits == []
    assert await statuses(service, [order_id]) == {order_id: "CONFIRMED"}
    # The dead connection was not kept: the retry is applied.
    assert event_of(await move(service, order_id, "PREPARING"))["status"] == "PREPARING"


async def test_the_store_receives_each_change_of_a_batch_live_at_its_own_seq(
    start_service: StartService,
) -> None:
    hooks = HoldFirstBatch()
    service = await start_service(hooks=hooks, group_commit_lanes=1)
    order_ids = [await create(service, f"cust-{i}") for i in range(3)]
    async with connect(f"{service.ws_url}?token={POS}") as ws:
        hello = await recv_json(ws)
        assert hello["type"] == "hello"

        answers = await batch(service, hooks, order_ids, "PREPARING")
        live = await recv_events(ws, 3)

    events = [event_of(answers[order_id])["event_id"] for order_id in hooks.queued]
    seqs = await seqs_of(service, STORE, events)
    # In queue order, each on the store's stream at the seq the log gave it, with its order.
    assert [(m["stream"], m["seq"], m["event_id"]) for m in live] == [
        (STORE, seqs[event_id], event_id) for event_id in events
    ]
    assert [m["order"] for m in live] == [answers[o].json()["order"] for o in hooks.queued]


async def test_a_full_lane_does_not_refuse_or_hold_up_the_changes_of_another_lane(
    start_service: StartService,
) -> None:
    hooks = HoldFirstBatch()
    service = await start_service(hooks=hooks, group_commit_lanes=2, group_commit_max_queued=2)
    writer = service.services.writer
    assert writer.lane_of("store-1") == LANE != writer.lane_of("store-4")
    order_ids = [await create(service, f"cust-{i}") for i in range(2)]
    other = await create(service, "cust-9", "store-4")
    hooks.armed = True
    waiting = [asyncio.create_task(move(service, o, "PREPARING")) for o in order_ids]
    await hooks.until_queued(2)

    # store-1's lane is full and held; store-4's lane takes its change and applies it.
    pos4 = token("till-4", role="pos", store_id="store-4")
    async with asyncio.timeout(15):
        assert event_of(await move(service, other, "PREPARING", pos4))["status"] == "PREPARING"

    hooks.gate.set()
    for answer in await answers_of(waiting):
        assert event_of(answer)["status"] == "PREPARING"
    assert hooks.commits == [[other], hooks.queued]


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
