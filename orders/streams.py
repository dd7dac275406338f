"""Streams: their names, seq allocation, and reading them back for replay and gap repair."""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import TextClause, delete, func, select, text, tuple_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from orders.db import Database
from orders.documents import OrderRow
from orders.models import Event, Order, Stream, StreamEvent
from orders.workflow import TERMINAL


def customer_stream(customer_id: str) -> str:
    """The stream of everything that happens to one customer's orders."""
    return f"customer:{customer_id}"


def store_stream(store_id: str) -> str:
    """The stream of everything that happens to one store's orders."""
    return f"store:{store_id}"


def streams_of(order: Order | OrderRow) -> list[str]:
    """The streams an order's events belong to, in the fixed order they are locked."""
    streams = {store_stream(order.store_id)}
    if order.customer_id is not None:
        streams.add(customer_stream(order.customer_id))
    return sorted(streams)


def new_epoch() -> str:
    """A fresh epoch: identifies one incarnation of a stream's log."""
    return secrets.token_hex(8)


@dataclass(frozen=True, slots=True)
class StreamHead:
    """Where a stream is: its epoch, its newest seq, and the newest seq pruned away."""

    name: str
    epoch: str
    head_seq: int
    pruned_seq: int


def _insert(session: AsyncSession) -> type[postgresql.Insert] | type[sqlite.Insert]:
    return postgresql.Insert if session.get_bind().dialect.name == "postgresql" else sqlite.Insert


def _upsert_sql(count: int) -> str:
    # Plain SQL that PostgreSQL and SQLite both speak; rows are inserted, and so locked, in
    # VALUES order.
    rows = ", ".join(f"(:name{i}, 1, :epoch{i}, 0)" for i in range(count))
    return (
        f"INSERT INTO streams (name, head_seq, epoch, pruned_seq) VALUES {rows} "
        "ON CONFLICT (name) DO UPDATE SET head_seq = streams.head_seq + 1 "
        "RETURNING name, head_seq"
    )


def _append_statements(count: int) -> dict[str, TextClause]:
    """The statements that append one event to ``count`` streams, per dialect."""
    index_rows = ", ".join(f"(:name{i}, :seq{i}, :event_id)" for i in range(count))
    return {
        # One round trip: the stream rows are locked from here to commit, and every writer of
        # the same store queues on that lock, so the shorter the better.
        "postgresql": text(
            f"WITH s AS ({_upsert_sql(count)}) "
            "INSERT INTO stream_events (stream, seq, event_id) "
            "SELECT name, head_seq, :event_id FROM s RETURNING stream, seq"
        ),
        # SQLite has no INSERT inside WITH; its single writer lock makes the extra step moot.
        "sqlite": text(_upsert_sql(count)),
        "sqlite_index": text(
            f"INSERT INTO stream_events (stream, seq, event_id) VALUES {index_rows}"
        ),
    }


# Built once per stream count and cached: an order's event goes to one or two streams.
_APPEND = {count: _append_statements(count) for count in (1, 2)}


async def append_to_streams(
    session: AsyncSession, streams: Sequence[str], event_id: int
) -> list[tuple[str, int]]:
    """Give event ``event_id`` the next seq of each stream; (stream, seq) in the order given.

    Each stream row stays locked until commit, so seq order is commit order; the rows are
    locked in the order given (``streams_of`` sorts them), so two writers cannot deadlock.
    """
    statements = _APPEND.get(len(streams))
    if statements is None:
        statements = _append_statements(len(streams))
    params: dict[str, object] = {"event_id": event_id}
    for i, stream in enumerate(streams):
        params[f"name{i}"] = stream
        params[f"epoch{i}"] = new_epoch()
    conn = await session.connection()
    if conn.dialect.name == "postgresql":
        rows = await conn.execute(statements["postgresql"], params)
        seqs = {stream: int(seq) for stream, seq in rows}
    else:
        rows = await conn.execute(statements["sqlite"], params)
        seqs = {stream: int(seq) for stream, seq in rows}
        for i, stream in enumerate(streams):
            params[f"seq{i}"] = seqs[stream]
        await conn.execute(statements["sqlite_index"], params)
    return [(stream, seqs[stream]) for stream in streams]


async def ensure_stream(session: AsyncSession, stream: str) -> StreamHead:
    """The stream's head, creating the stream (seq 0, new epoch) if it has none yet."""
    head = await read_head(session, stream)
    if head is not None:
        return head
    insert = _insert(session)
    await session.execute(
        insert(Stream)
        .values(name=stream, head_seq=0, epoch=new_epoch(), pruned_seq=0)
        .on_conflict_do_nothing(index_elements=[Stream.name])
    )
    head = await read_head(session, stream)
    assert head is not None
    return head


async def read_head(session: AsyncSession, stream: str) -> StreamHead | None:
    """The stream's head, or None if nothing was ever written to it."""
    row = (
        await session.execute(
            select(Stream.epoch, Stream.head_seq, Stream.pruned_seq).where(Stream.name == stream)
        )
    ).first()
    if row is None:
        return None
    return StreamHead(stream, row.epoch, int(row.head_seq), int(row.pruned_seq))


async def read_heads(session: AsyncSession, streams: Iterable[str]) -> dict[str, StreamHead]:
    """The head of each named stream that exists (polled by the hub)."""
    names = list(streams)
    heads: dict[str, StreamHead] = {}
    for start in range(0, len(names), 500):
        chunk = names[start : start + 500]
        rows = await session.execute(
            select(Stream.name, Stream.epoch, Stream.head_seq, Stream.pruned_seq).where(
                Stream.name.in_(chunk)
            )
        )
        for name, epoch, head_seq, pruned_seq in rows:
            heads[name] = StreamHead(name, epoch, int(head_seq), int(pruned_seq))
    return heads


async def ensure_streams(session: AsyncSession, streams: Iterable[str]) -> None:
    """Create each of ``streams`` that does not exist yet (seq 0, a new epoch of its own)."""
    names = sorted(set(streams))  # sorted: two hubs creating the same rows cannot deadlock
    if not names:
        return
    insert = _insert(session)
    for start in range(0, len(names), 500):
        await session.execute(
            insert(Stream)
            .values(
                [
                    {"name": name, "head_seq": 0, "epoch": new_epoch(), "pruned_seq": 0}
                    for name in names[start : start + 500]
                ]
            )
            .on_conflict_do_nothing(index_elements=[Stream.name])
        )


def position_problem(head: StreamHead | None, epoch: str | None, seq: int) -> str | None:
    """Why a reader at ``seq`` (of ``epoch``, if known) cannot go on along this log, or None.

    ``gone``: the stream row no longer exists; ``epoch``: the log was reset (another epoch);
    ``pruned``: events right after ``seq`` were pruned; ``ahead``: ``seq`` is past the head
    (the log went back, e.g. a restore from a backup).
    """
    if head is None:
        return "gone"
    if epoch is not None and epoch != head.epoch:
        return "epoch"
    if seq < head.pruned_seq:
        return "pruned"
    if seq > head.head_seq:
        return "ahead"
    return None


async def event_id_at(session: AsyncSession, stream: str, seq: int) -> int | None:
    """The id of the event at position ``seq`` of ``stream`` (None if there is none)."""
    if seq <= 0:
        return None
    value = await session.scalar(
        select(StreamEvent.event_id).where(StreamEvent.stream == stream, StreamEvent.seq == seq)
    )
    return None if value is None else int(value)


async def event_ids_at(
    session: AsyncSession, positions: Iterable[tuple[str, int]]
) -> dict[tuple[str, int], int]:
    """The id of the event at each (stream, seq) that holds one (``event_id_at`` for many)."""
    wanted = sorted({(stream, seq) for stream, seq in positions if seq > 0})
    found: dict[tuple[str, int], int] = {}
    for start in range(0, len(wanted), 500):
        rows = await session.execute(
            select(StreamEvent.stream, StreamEvent.seq, StreamEvent.event_id).where(
                tuple_(StreamEvent.stream, StreamEvent.seq).in_(wanted[start : start + 500])
            )
        )
        for stream, seq, event_id in rows:
            found[(stream, int(seq))] = int(event_id)
    return found


async def resume_problem(
    db: Database, head: StreamHead, epoch: str | None, since: int, last_event_id: int | None
) -> str | None:
    """Why a client at ``since`` cannot resume on this log (a ``reset`` is due), or None.

    Beyond ``position_problem``: a client that says which event it saw last at ``since``
    (``last_event_id``) is reset if the log holds another event there (``reused``) — after a
    restore to an earlier point the head went back under the same epoch and new events reuse
    seqs the client already has. A position that was pruned cannot be checked and is taken.
    Both ``/ws`` and ``/api/events`` resume through here.
    """
    problem = position_problem(head, epoch, since)
    if problem is not None or last_event_id is None or since == 0:
        return problem
    async with db.read() as session:
        stored = await event_id_at(session, head.name, since)
    if stored is not None and stored != last_event_id:
        return "reused"
    return None


async def events_after(
    session: AsyncSession, stream: str, after: int, *, upto: int | None = None, limit: int = 500
) -> Sequence[tuple[int, Event]]:
    """Up to ``limit`` (seq, event) of ``stream`` with ``after < seq <= upto``, in seq order."""
    statement = (
        select(StreamEvent.seq, Event)
        .join(Event, Event.id == StreamEvent.event_id)
        .where(StreamEvent.stream == stream, StreamEvent.seq > after)
        .order_by(StreamEvent.seq)
        .limit(limit)
    )
    if upto is not None:
        statement = statement.where(StreamEvent.seq <= upto)
    rows = await session.execute(statement)
    return [(int(seq), event) for seq, event in rows]


async def open_orders(session: AsyncSession, stream: str, *, limit: int) -> Sequence[Order]:
    """The stream's orders that can still change, newest first."""
    kind, _, key = stream.partition(":")
    column = Order.customer_id if kind == "customer" else Order.store_id
    rows = await session.execute(
        select(Order)
        .where(column == key, Order.status.not_in([s.value for s in TERMINAL]))
        .order_by(Order.created_at.desc(), Order.id.desc())
        .limit(limit)
    )
    return rows.scalars().all()


async def open_orders_of(
    session: AsyncSession, streams: Iterable[str], *, limit: int
) -> dict[str, list[Order]]:
    """``open_orders`` of many streams in one query per kind: up to ``limit`` each."""
    by_kind: dict[str, dict[str, str]] = {}
    for stream in streams:
        kind, _, key = stream.partition(":")
        by_kind.setdefault("customer" if kind == "customer" else "store", {})[key] = stream
    found: dict[str, list[Order]] = {
        stream: [] for keys in by_kind.values() for stream in keys.values()
    }
    if limit <= 0:
        return found
    for kind, keys in by_kind.items():
        if not keys:
            continue
        column = Order.customer_id if kind == "customer" else Order.store_id
        newest_first = (Order.created_at.desc(), Order.id.desc())
        for start in range(0, len(keys), 500):
            chunk = list(keys)[start : start + 500]
            # Numbered per stream, newest first, so one query bounds every stream at ``limit``.
            ranked = (
                select(
                    Order,
                    func.row_number()
                    .over(partition_by=column, order_by=newest_first)
                    .label("rank"),
                )
                .where(column.in_(chunk), Order.status.not_in([s.value for s in TERMINAL]))
                .subquery()
            )
            order = aliased(Order, ranked)
            rows = await session.execute(
                select(order)
                .where(ranked.c.rank <= limit)
                .order_by(order.created_at.desc(), order.id.desc())
            )
            for row in rows.scalars():
                owner = row.customer_id if kind == "customer" else row.store_id
                assert owner is not None
                found[keys[owner]].append(row)
    return found


async def prune(db: Database, before: datetime, *, batch: int = 1000, chunk: int = 100) -> int:
    """Delete up to ``batch`` events older than ``before``, pruning each stream by seq.

    ``created_at`` is taken before the stream lock, so under concurrent writes a stream's seq
    order is not its ``created_at`` order: an event at seq 2 can be older than the one at seq 1.
    Pruning therefore cuts each stream at a seq, never event by event: for the ``chunk`` oldest
    events (by id) it takes, per stream, the newest seq among them, raises ``pruned_seq`` to it
    and removes *every* position at or below it. What is left of each stream is always the
    contiguous suffix above ``pruned_seq``, so a client at ``pruned_seq`` or later replays, and
    one before it gets a ``reset``. An event row goes when it is old; a newer one whose
    positions fell below a cut stays (for its order's history) until it is old too.

    It works in small transactions: each stream row is locked alone, in the fixed (sorted)
    order, for one UPDATE, and no stream row is held while positions and events are deleted —
    writers queue on these rows, so pruning must neither hold them long nor lock two against
    the writers' order.
    """
    total = 0
    while total < batch:
        async with db.read() as session:
            ids = list(
                (
                    await session.execute(
                        select(Event.id)
                        .where(Event.created_at < before)
                        .order_by(Event.id)
                        .limit(min(chunk, batch - total))
                    )
                ).scalars()
            )
            if not ids:
                break
            # Every position of these events is at or below its stream's cut, so deleting the
            # positions up to the cuts frees every one of these events.
            newest = (
                await session.execute(
                    select(StreamEvent.stream, func.max(StreamEvent.seq))
                    .where(StreamEvent.event_id.in_(ids))
                    .group_by(StreamEvent.stream)
                )
            ).all()
        cuts = sorted((str(stream), int(seq)) for stream, seq in newest)
        for stream, seq in cuts:
            async with db.transaction() as session:
                await session.execute(
                    update(Stream)
                    .where(Stream.name == stream, Stream.pruned_seq < seq)
                    .values(pruned_seq=seq)
                )
        async with db.transaction() as session:
            for stream, seq in cuts:
                await session.execute(
                    delete(StreamEvent).where(StreamEvent.stream == stream, StreamEvent.seq <= seq)
                )
            await session.execute(delete(Event).where(Event.id.in_(ids)))
        total += len(ids)
    return total
