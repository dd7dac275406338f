"""Streams, read and written directly (both backends): seq allocation, heads, positions, pruning.

The service tests reach these functions through the API and the hub with one or two streams and
a handful of events; here each function's own contract is pinned, including what only shows past
its 500-row chunks, with three streams (an append the statement cache does not hold) and on
positions a client can only reach after a restore or an interrupted prune.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterable, Sequence
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from orders.db import Database, migrate
from orders.models import Event, Order, Stream, StreamEvent
from orders.streams import (
    StreamHead,
    append_to_streams,
    ensure_stream,
    ensure_streams,
    event_id_at,
    event_ids_at,
    events_after,
    new_epoch,
    open_orders,
    open_orders_of,
    position_problem,
    prune,
    read_head,
    read_heads,
    resume_problem,
    streams_of,
)
from tests.conftest import Backend

EPOCH = re.compile(r"[0-9a-f]{16}")
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
async def db(backend: Backend) -> AsyncIterator[Database]:
    """A migrated, empty database on this test's backend."""
    if backend.name == "sqlite":
        await migrate(backend.database_url)
    database = Database(backend.database_url, pool_size=4)
    try:
        yield database
    finally:
        await database.dispose()


async def add_order(
    db: Database,
    order_id: str,
    *,
    customer: str | None = "c",
    store: str = "s",
    status: str = "CONFIRMED",
    created_at: datetime = NOW,
) -> None:
    async with db.transaction() as session:
        await session.execute(
            insert(Order).values(**order_values(order_id, customer, store, status, created_at))
        )


def order_values(
    order_id: str, customer: str | None, store: str, status: str, created_at: datetime
) -> dict[str, object]:
    return {
        "id": order_id,
        "customer_id": customer,
        "store_id": store,
        "status": status,
        "payment_status": "SUCCEEDED",
        "payment_method": "online",
        "amount": 100,
        "currency": "INR",
        "items": [],
        "created_at": created_at,
        "updated_at": created_at,
        "version": 1,
    }


def event_values(event_id: int, order_id: str, created_at: datetime) -> dict[str, object]:
    return {
        "id": event_id,
        "order_id": order_id,
        "kind": "order.status",
        "from_status": None,
        "to_status": "CONFIRMED",
        "source": "system",
        "actor": "system",
        "data": {},
        "created_at": created_at,
    }


async def write(
    db: Database, streams: Sequence[str], *, order_id: str = "o1", created_at: datetime = NOW
) -> tuple[int, list[tuple[str, int]]]:
    """One event of ``order_id``, appended to ``streams`` in one transaction."""
    async with db.transaction() as session:
        event = Event(
            order_id=order_id,
            kind="order.status",
            from_status=None,
            to_status="CONFIRMED",
            source="system",
            actor="system",
            data={},
            created_at=created_at,
        )
        session.add(event)
        await session.flush()
        return int(event.id), await append_to_streams(session, streams, int(event.id))


async def log(db: Database, stream: str, seqs: Iterable[int], *, first_id: int) -> dict[int, int]:
    """Events ``first_id``, ``first_id + 1``, ... (of an order of their own) at ``seqs`` of
    ``stream``, inserted in that order, the head at the highest; returns seq -> event id."""
    by_seq = {seq: first_id + i for i, seq in enumerate(seqs)}
    order_id = f"log-{first_id}"
    await add_order(db, order_id)
    async with db.transaction() as session:
        await session.execute(
            insert(Event), [event_values(i, order_id, NOW) for i in by_seq.values()]
        )
        await session.execute(
            insert(StreamEvent),
            [{"stream": stream, "seq": seq, "event_id": i} for seq, i in by_seq.items()],
        )
    async with db.transaction() as session:
        await ensure_streams(session, [stream])
        await session.execute(
            update(Stream).where(Stream.name == stream).values(head_seq=max(by_seq))
        )
    return by_seq


async def scramble_unordered_reads(session: AsyncSession) -> None:
    """Make this session's reads without an ORDER BY come back in another order than an
    index would give: SQLite reverses them, PostgreSQL reads the table in insertion order."""
    if session.get_bind().dialect.name == "sqlite":
        await session.execute(text("PRAGMA reverse_unordered_selects = ON"))
    else:
        for setting in ("enable_indexscan", "enable_indexonlyscan", "enable_bitmapscan"):
            await session.execute(text(f"SET LOCAL {setting} = off"))


async def positions(db: Database) -> dict[tuple[str, int], int]:
    async with db.read() as session:
        rows = await session.execute(
            select(StreamEvent.stream, StreamEvent.seq, StreamEvent.event_id)
        )
        return {(stream, int(seq)): int(event_id) for stream, seq, event_id in rows}


async def heads(db: Database) -> dict[str, tuple[int, int, str]]:
    """name -> (head_seq, pruned_seq, epoch) of every stream row."""
    async with db.read() as session:
        rows = await session.execute(
            select(Stream.name, Stream.head_seq, Stream.pruned_seq, Stream.epoch)
        )
        return {name: (int(h), int(p), epoch) for name, h, p, epoch in rows}


async def event_ids(db: Database) -> set[int]:
    async with db.read() as session:
        return {int(i) for i in (await session.execute(select(Event.id))).scalars()}


# -- seq allocation ---------------------------------------------------------------------------


def test_an_order_is_on_its_store_stream_and_its_customers_in_lock_order() -> None:
    order = Order(**order_values("o1", "zed", "abc", "CONFIRMED", NOW))
    assert streams_of(order) == ["customer:zed", "store:abc"]
    order = Order(**order_values("o1", "abc", "zed", "CONFIRMED", NOW))
    assert streams_of(order) == ["customer:abc", "store:zed"]
    walk_in = Order(**order_values("o2", None, "abc", "CONFIRMED", NOW))
    assert streams_of(walk_in) == ["store:abc"]


def test_every_epoch_is_new() -> None:
    epochs = {new_epoch() for _ in range(100)}
    assert len(epochs) == 100
    assert all(EPOCH.fullmatch(epoch) for epoch in epochs)


async def test_each_stream_of_an_append_gets_its_next_seq_and_the_answer_keeps_the_given_order(
    db: Database,
) -> None:
    await add_order(db, "o1")
    # Three streams: a statement built for this call; one and two: the cached ones.
    first, seqs = await write(db, ["x:c", "x:a", "x:b"])
    assert seqs == [("x:c", 1), ("x:a", 1), ("x:b", 1)]
    second, seqs = await write(db, ["x:a", "x:c"])
    assert seqs == [("x:a", 2), ("x:c", 2)]
    third, seqs = await write(db, ["x:b"])
    assert seqs == [("x:b", 2)]
    fourth, seqs = await write(db, ["x:b", "x:c", "x:a"])
    assert seqs == [("x:b", 3), ("x:c", 3), ("x:a", 3)]
    assert all(type(seq) is int for _, seq in seqs)
    assert await positions(db) == {
        ("x:a", 1): first,
        ("x:b", 1): first,
        ("x:c", 1): first,
        ("x:a", 2): second,
        ("x:c", 2): second,
        ("x:b", 2): third,
        ("x:a", 3): fourth,
        ("x:b", 3): fourth,
        ("x:c", 3): fourth,
    }
    rows = await heads(db)
    assert {name: (h, p) for name, (h, p, _) in rows.items()} == {
        "x:a": (3, 0),
        "x:b": (3, 0),
        "x:c": (3, 0),
    }
    # Each stream got an epoch of its own when it was created, and appends keep it.
    epochs = [epoch for _, _, epoch in rows.values()]
    assert all(EPOCH.fullmatch(epoch) for epoch in epochs)
    assert len(set(epochs)) == 3


async def test_the_first_append_to_three_new_streams_creates_each_at_seq_one(
    db: Database,
) -> None:
    await add_order(db, "o1")
    event, seqs = await write(db, ["y:1", "y:2", "y:3"])
    assert seqs == [("y:1", 1), ("y:2", 1), ("y:3", 1)]
    assert await positions(db) == {("y:1", 1): event, ("y:2", 1): event, ("y:3", 1): event}
    rows = await heads(db)
    assert {name: (h, p) for name, (h, p, _) in rows.items()} == {
        "y:1": (1, 0),
        "y:2": (1, 0),
        "y:3": (1, 0),
    }
    assert len({epoch for _, _, epoch in rows.values()}) == 3


# -- heads --------------------------------------------------------------------------------------


async def test_ensure_stream_creates_a_stream_at_seq_zero_and_leaves_an_existing_one_alone(
    db: Database,
) -> None:
    async with db.transaction() as session:
        created = await ensure_stream(session, "customer:new")
    assert created.name == "customer:new"
    assert (created.head_seq, created.pruned_seq) == (0, 0)
    assert EPOCH.fullmatch(created.epoch)
    async with db.read() as session:
        assert await read_head(session, "customer:new") == created
    await add_order(db, "o1")
    await write(db, ["customer:old"])
    await write(db, ["customer:old"])
    async with db.transaction() as session:
        await session.execute(
            update(Stream).where(Stream.name == "customer:old").values(pruned_seq=1)
        )
    before = await heads(db)
    async with db.transaction() as session:
        existing = await ensure_stream(session, "customer:old")
        again = await ensure_stream(session, "customer:new")
    epoch = before["customer:old"][2]
    assert existing == StreamHead("customer:old", epoch, head_seq=2, pruned_seq=1)
    assert again == created
    assert await heads(db) == before


async def test_read_head_is_none_for_a_stream_never_written_and_the_row_otherwise(
    db: Database,
) -> None:
    await log(db, "store:s", [1, 2, 3, 4], first_id=1)
    async with db.transaction() as session:
        await session.execute(update(Stream).where(Stream.name == "store:s").values(pruned_seq=2))
    epoch = (await heads(db))["store:s"][2]
    async with db.read() as session:
        assert await read_head(session, "store:none") is None
        head = await read_head(session, "store:s")
    assert head == StreamHead("store:s", epoch, head_seq=4, pruned_seq=2)
    assert head is not None and type(head.head_seq) is int and type(head.pruned_seq) is int


async def test_ensure_streams_creates_every_missing_stream_past_its_chunks_and_keeps_the_rest(
    db: Database,
) -> None:
    await log(db, "c:0600", [1, 2, 3], first_id=1)
    kept = (await heads(db))["c:0600"]
    names = [f"c:{i:04d}" for i in range(1201)]
    async with db.transaction() as session:
        # Unsorted, with repeats, from an iterator.
        await ensure_streams(session, iter([*reversed(names), *names[:10]]))
        await ensure_streams(session, [])
    rows = await heads(db)
    assert sorted(rows) == names
    assert rows["c:0600"] == kept
    fresh = {name: row for name, row in rows.items() if name != "c:0600"}
    assert {(h, p) for h, p, _ in fresh.values()} == {(0, 0)}
    assert all(EPOCH.fullmatch(epoch) for _, _, epoch in fresh.values())
    assert len({epoch for _, _, epoch in rows.values()}) == 1201


async def test_read_heads_reads_every_named_stream_past_its_chunks_and_skips_missing_ones(
    db: Database,
) -> None:
    names = [f"c:{i:04d}" for i in range(1201)]
    async with db.transaction() as session:
        await ensure_streams(session, names)
        await session.execute(
            update(Stream).where(Stream.name == "c:0500").values(head_seq=7, pruned_seq=3)
        )
    rows = await heads(db)
    async with db.read() as session:
        found = await read_heads(session, iter([*names, "c:none", "d:none"]))
        assert await read_heads(session, []) == {}
    assert found == {
        name: StreamHead(name, epoch, head_seq=h, pruned_seq=p)
        for name, (h, p, epoch) in rows.items()
    }
    assert found["c:0500"].head_seq == 7 and found["c:0500"].pruned_seq == 3
    assert all(type(h.head_seq) is int and type(h.pruned_seq) is int for h in found.values())


@pytest.mark.parametrize(
    ("epoch", "seq", "problem"),
    [
        (None, 2, None),
        ("e1", 2, None),
        ("e1", 5, None),  # at the head: nothing to replay, nothing wrong
        ("e1", 6, "ahead"),
        ("e1", 1, "pruned"),
        ("e2", 3, "epoch"),
        (None, 6, "ahead"),
    ],
)
def test_a_position_is_judged_against_the_head_its_epoch_and_the_pruned_seq(
    epoch: str | None, seq: int, problem: str | None
) -> None:
    head = StreamHead("customer:c", "e1", head_seq=5, pruned_seq=2)
    assert position_problem(head, epoch, seq) == problem
    assert position_problem(None, epoch, seq) == "gone"


# -- positions ----------------------------------------------------------------------------------


async def test_event_id_at_names_the_event_at_that_seq_of_that_stream_only(db: Database) -> None:
    a = await log(db, "customer:a", [1, 2, 3], first_id=10)
    b = await log(db, "customer:b", [1, 2], first_id=20)
    async with db.read() as session:
        assert await event_id_at(session, "customer:a", 1) == a[1] == 10
        assert await event_id_at(session, "customer:a", 3) == a[3]
        assert await event_id_at(session, "customer:b", 1) == b[1] == 20
        assert await event_id_at(session, "customer:b", 3) is None
        assert await event_id_at(session, "customer:c", 1) is None
        assert await event_id_at(session, "customer:a", 0) is None
        assert await event_id_at(session, "customer:a", -1) is None
        value = await event_id_at(session, "customer:a", 2)
    assert value == 11 and type(value) is int


async def test_event_ids_at_finds_every_held_position_past_its_chunks(db: Database) -> None:
    a = await log(db, "customer:a", range(1, 1202), first_id=1)
    b = await log(db, "customer:b", [1, 2], first_id=5000)
    wanted = [("customer:a", seq) for seq in range(1, 1202)]
    wanted += [("customer:b", 2), ("customer:b", 2), ("customer:b", 3), ("customer:c", 1)]
    wanted += [("customer:a", 0), ("customer:b", -1)]
    async with db.read() as session:
        found = await event_ids_at(session, reversed(wanted))
        assert await event_ids_at(session, []) == {}
    assert found == {
        **{("customer:a", seq): i for seq, i in a.items()},
        ("customer:b", 2): b[2],
    }
    assert all(type(seq) is int and type(i) is int for (_, seq), i in found.items())


async def test_events_after_gives_the_seqs_after_a_position_up_to_a_bound_in_seq_order(
    db: Database,
) -> None:
    # Inserted out of seq order, and read with the primary key's order taken away from an
    # unordered read: the seq order must come from the query itself.
    a = await log(db, "customer:a", [4, 2, 5, 1, 3], first_id=1)
    await log(db, "customer:b", [3, 1, 2], first_id=100)

    async def read(after: int, **kwargs: int) -> list[tuple[int, int]]:
        async with db.read() as session:
            await scramble_unordered_reads(session)
            rows = await events_after(session, "customer:a", after, **kwargs)
        assert all(type(seq) is int for seq, _ in rows)
        return [(seq, int(event.id)) for seq, event in rows]

    assert await read(0) == [(seq, a[seq]) for seq in (1, 2, 3, 4, 5)]
    assert await read(2) == [(seq, a[seq]) for seq in (3, 4, 5)]
    assert await read(2, upto=4) == [(seq, a[seq]) for seq in (3, 4)]
    assert await read(2, limit=2) == [(seq, a[seq]) for seq in (3, 4)]
    assert await read(1, upto=5, limit=1) == [(2, a[2])]
    assert await read(5) == []


async def test_events_after_reads_at_most_500_by_default(db: Database) -> None:
    await log(db, "customer:a", range(1, 502), first_id=1)
    async with db.read() as session:
        rows = await events_after(session, "customer:a", 0)
    assert [seq for seq, _ in rows] == list(range(1, 501))


async def test_resume_problem_resets_a_client_whose_last_event_is_not_the_one_at_its_position(
    db: Database,
) -> None:
    at = await log(db, "customer:a", [1, 2, 3], first_id=1)
    async with db.read() as session:
        head = await read_head(session, "customer:a")
    assert head is not None

    async def problem(epoch: str | None, since: int, last: int | None) -> str | None:
        return await resume_problem(db, head, epoch, since, last)

    assert await problem(head.epoch, 2, at[2]) is None
    assert await problem(None, 1, at[1]) is None
    assert await problem(head.epoch, 2, at[3]) == "reused"
    assert await problem(head.epoch, 1, 999) == "reused"
    assert await problem(head.epoch, 3, at[2]) == "reused"
    # Nothing said about the last event, or nothing seen: nothing to compare.
    assert await problem(head.epoch, 2, None) is None
    assert await problem(head.epoch, 0, 999) is None
    # The position's own problems come first.
    assert await problem("other", 2, at[2]) == "epoch"
    assert await problem(head.epoch, 4, at[3]) == "ahead"


async def test_resume_problem_takes_a_position_it_cannot_check_because_it_was_pruned(
    db: Database,
) -> None:
    await log(db, "customer:a", [3, 4], first_id=1)
    async with db.transaction() as session:
        await session.execute(
            update(Stream).where(Stream.name == "customer:a").values(pruned_seq=2)
        )
        head = await read_head(session, "customer:a")
    assert head is not None
    assert await resume_problem(db, head, head.epoch, 2, 999) is None
    assert await resume_problem(db, head, head.epoch, 1, 999) == "pruned"


# -- open orders --------------------------------------------------------------------------------


async def open_fixture(db: Database) -> None:
    """Orders of customers a, b and ``x:y`` at stores s1, s2 and ``s:3``, some finished.

    o03 and o04 were placed at the same moment (newest first is then by id) and o03 goes in
    first and sorts first by status, so an order that forgot the id would put it first."""
    t = NOW
    for order_id, customer, store, status, created_at in [
        ("o01", "a", "s1", "CONFIRMED", t),
        ("o02", "a", "s1", "DELIVERED", t + timedelta(minutes=1)),
        ("o03", "a", "s1", "CONFIRMED", t + timedelta(minutes=2)),
        ("o04", "a", "s1", "PREPARING", t + timedelta(minutes=2)),
        ("o05", "b", "s1", "READY", t + timedelta(minutes=3)),
        ("o06", "b", "s1", "CANCELLED", t + timedelta(minutes=4)),
        ("o07", None, "s1", "OUT_FOR_DELIVERY", t + timedelta(minutes=5)),  # a walk-in
        ("o08", "a", "s2", "EXPIRED", t + timedelta(minutes=6)),
        ("o09", "a", "s2", "CONFIRMED", t - timedelta(minutes=1)),
        ("o10", "x:y", "s:3", "PENDING_PAYMENT", t),  # ids with a colon of their own
    ]:
        await add_order(
            db, order_id, customer=customer, store=store, status=status, created_at=created_at
        )


OPEN = {
    "customer:a": ["o04", "o03", "o01", "o09"],
    "customer:b": ["o05"],
    "customer:x:y": ["o10"],
    "store:s1": ["o07", "o05", "o04", "o03", "o01"],
    "store:s2": ["o09"],
    "store:s:3": ["o10"],
    "customer:z": [],
    "store:z": [],
}


async def test_open_orders_are_a_streams_unfinished_orders_newest_first(db: Database) -> None:
    await open_fixture(db)

    async def ids(stream: str, limit: int) -> list[str]:
        async with db.read() as session:
            return [o.id for o in await open_orders(session, stream, limit=limit)]

    for stream, expected in OPEN.items():
        assert await ids(stream, 10) == expected, stream
        assert await ids(stream, 2) == expected[:2], stream
    assert await ids("customer:s1", 10) == []
    assert await ids("store:a", 10) == []


async def test_open_orders_of_many_streams_bounds_each_at_the_limit_newest_first(
    db: Database,
) -> None:
    await open_fixture(db)

    async def ids(limit: int) -> dict[str, list[str]]:
        async with db.read() as session:
            found = await open_orders_of(session, iter(OPEN), limit=limit)
        return {stream: [o.id for o in orders] for stream, orders in found.items()}

    for limit in (10, 3, 2, 1, 0):
        assert await ids(limit) == {
            stream: expected[:limit] for stream, expected in OPEN.items()
        }, limit
    async with db.read() as session:
        assert await open_orders_of(session, [], limit=5) == {}
        only_customers = await open_orders_of(session, ["customer:b"], limit=5)
    assert {s: [o.id for o in orders] for s, orders in only_customers.items()} == {
        "customer:b": ["o05"]
    }


async def test_open_orders_of_reads_every_stream_past_its_chunks(db: Database) -> None:
    customers = [f"k{i:04d}" for i in range(1201)]
    async with db.transaction() as session:
        await session.execute(
            insert(Order),
            [
                order_values(f"o-{c}-{n}", c, "s", "CONFIRMED", NOW + timedelta(seconds=n))
                for c in customers
                for n in (1, 2)
            ],
        )
    streams = [f"customer:{c}" for c in customers]
    async with db.read() as session:
        found = await open_orders_of(session, streams, limit=1)
        stores = await open_orders_of(session, ["store:s"], limit=3)
    assert {s: [o.id for o in orders] for s, orders in found.items()} == {
        f"customer:{c}": [f"o-{c}-2"] for c in customers
    }
    assert len(stores["store:s"]) == 3
    assert {o.created_at for o in stores["store:s"]} == {NOW + timedelta(seconds=2)}


# -- pruning ------------------------------------------------------------------------------------


async def stamp(db: Database, ages: dict[int, timedelta]) -> None:
    async with db.transaction() as session:
        for event_id, age in ages.items():
            await session.execute(
                update(Event).where(Event.id == event_id).values(created_at=NOW - age)
            )


async def test_prune_deletes_at_most_a_batch_of_the_oldest_events_by_id_in_chunks(
    db: Database,
) -> None:
    await add_order(db, "o1")
    written = [await write(db, ["customer:c", "store:s"]) for _ in range(5)]
    ids = [event for event, _ in written]
    # Stamped newest first: on PostgreSQL the rows then lie newest first in the table, so
    # only the ORDER BY makes a prune take the oldest.
    await stamp(db, {i: timedelta(days=40) for i in reversed(ids)})
    before = NOW - timedelta(days=30)
    assert await prune(db, before, batch=3, chunk=2) == 3
    assert await event_ids(db) == set(ids[3:])
    assert set(await positions(db)) == {
        (s, seq) for s in ("customer:c", "store:s") for seq in (4, 5)
    }
    assert {name: (h, p) for name, (h, p, _) in (await heads(db)).items()} == {
        "customer:c": (5, 3),
        "store:s": (5, 3),
    }
    assert await prune(db, before, batch=10, chunk=1) == 2
    assert await event_ids(db) == set()
    assert await positions(db) == {}
    assert await prune(db, before) == 0
    assert {name: (h, p) for name, (h, p, _) in (await heads(db)).items()} == {
        "customer:c": (5, 5),
        "store:s": (5, 5),
    }


async def test_prune_takes_only_events_strictly_older_than_its_bound(db: Database) -> None:
    await add_order(db, "o1")
    old, _ = await write(db, ["customer:c"])
    edge, _ = await write(db, ["customer:c"])
    new, _ = await write(db, ["customer:c"])
    await stamp(db, {old: timedelta(days=31), edge: timedelta(days=30), new: timedelta(days=1)})
    assert await prune(db, NOW - timedelta(days=30)) == 1
    assert await event_ids(db) == {edge, new}
    assert await positions(db) == {("customer:c", 2): edge, ("customer:c", 3): new}
    assert (await heads(db))["customer:c"][:2] == (3, 1)


async def test_prune_cuts_each_stream_at_its_own_newest_seq_among_the_old_events(
    db: Database,
) -> None:
    await add_order(db, "o1", customer="a")
    await add_order(db, "o2", customer="b")
    a1, _ = await write(db, ["customer:a", "store:s"], order_id="o1")  # a 1, s 1
    b1, _ = await write(db, ["customer:b", "store:s"], order_id="o2")  # b 1, s 2
    a2, _ = await write(db, ["customer:a", "store:s"], order_id="o1")  # a 2, s 3
    b2, _ = await write(db, ["customer:b", "store:s"], order_id="o2")  # b 2, s 4
    # Old: a1 and b1 and a2; b2 is recent.
    await stamp(db, {a1: timedelta(days=40), b1: timedelta(days=40), a2: timedelta(days=40)})
    assert await prune(db, NOW - timedelta(days=30)) == 3
    assert await positions(db) == {("customer:b", 2): b2, ("store:s", 4): b2}
    assert {name: (h, p) for name, (h, p, _) in (await heads(db)).items()} == {
        "customer:a": (2, 2),
        "customer:b": (2, 1),
        "store:s": (4, 3),
    }
    assert await event_ids(db) == {b2}


async def test_prune_never_lowers_a_pruned_seq_an_interrupted_prune_already_raised(
    db: Database,
) -> None:
    """A prune that raised ``pruned_seq`` and died before deleting leaves positions below it;
    the next prune deletes them and keeps the cut where it was."""
    await add_order(db, "o1")
    written = [await write(db, ["customer:c"]) for _ in range(4)]
    ids = [event for event, _ in written]
    await stamp(db, {i: timedelta(days=40) for i in ids[:2]})
    async with db.transaction() as session:
        await session.execute(
            update(Stream).where(Stream.name == "customer:c").values(pruned_seq=3)
        )
    assert await prune(db, NOW - timedelta(days=30)) == 2
    assert (await heads(db))["customer:c"][:2] == (4, 3)
    assert await positions(db) == {("customer:c", 3): ids[2], ("customer:c", 4): ids[3]}


async def test_prune_deletes_at_most_a_thousand_events_by_default(db: Database) -> None:
    at = await log(db, "customer:c", range(1, 1002), first_id=1)
    assert await prune(db, NOW + timedelta(days=1)) == 1000
    assert await event_ids(db) == {at[1001]}
    assert await positions(db) == {("customer:c", 1001): at[1001]}
    assert (await heads(db))["customer:c"][:2] == (1001, 1000)
