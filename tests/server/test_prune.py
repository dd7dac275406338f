"""Retention pruning beside live writers (both backends): no deadlock, no 503, streams intact."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

from sqlalchemy import func, select, update
from websockets.asyncio.client import connect

from orders.models import Event, Stream, StreamEvent, utcnow
from orders.streams import prune
from tests.conftest import Service, StartService
from tests.support.clients import auth, order_body, recv_events, recv_json, token

POS = token("pos-p", role="pos", store_id="store-p")
FLOW = ["PREPARING", "READY", "OUT_FOR_DELIVERY", "DELIVERED"]


async def place(service: Service, customer: str) -> str:
    r = await service.http.post(
        "/api/orders", json=order_body("store-p"), headers=auth(token(customer))
    )
    assert r.status_code == 201, r.text
    return str(r.json()["order"]["id"])


async def test_pruning_beside_concurrent_two_stream_writes_neither_deadlocks_nor_503s(
    start_service: StartService,
) -> None:
    service = await start_service(db_pool_size=20)
    customers = [f"pr{i:02d}" for i in range(24)]
    # Old history on every customer stream and the store stream, to prune.
    for customer in customers:
        order_id = await place(service, customer)
        for status in FLOW:
            r = await service.http.post(
                f"/api/pos/orders/{order_id}/status", json={"status": status}, headers=auth(POS)
            )
            assert r.status_code == 200, r.text
    # Two live orders each: eight rounds of moves, each a fresh chance of a lock cycle.
    live = {customer: [await place(service, customer) for _ in range(2)] for customer in customers}
    statuses: list[int] = []
    pruned = 0

    async def terminal(mine: list[str], which: int, status: str) -> None:
        # Every move locks two stream rows: customer:<id>, then store:store-p.
        for customer in mine:
            r = await service.http.post(
                f"/api/pos/orders/{live[customer][which]}/status",
                json={"status": status},
                headers=auth(POS),
            )
            statuses.append(r.status_code)

    async def pruner(before: datetime) -> None:
        nonlocal pruned
        # Batches spanning several customers: each locks the store row and several customers'.
        while count := await prune(service.db, before, batch=30, chunk=30):
            pruned += count

    groups = [customers[i::6] for i in range(6)]
    rounds = [(which, status) for which in (0, 1) for status in FLOW]
    for which, status in rounds:
        # Everything written so far becomes old; prune it while the next step is written.
        async with service.db.transaction() as session:
            await session.execute(update(Event).values(created_at=utcnow() - timedelta(days=40)))
        before = utcnow() - timedelta(days=30)
        async with asyncio.timeout(60):
            await asyncio.gather(
                pruner(before), *(terminal(group, which, status) for group in groups)
            )
    assert statuses == [200] * len(customers) * len(rounds), sorted(set(statuses))
    async with service.db.read() as session:
        old = await session.scalar(
            select(func.count()).select_from(Event).where(Event.created_at < before)
        )
        assert old == 0
        heads = dict((await session.execute(select(Stream.name, Stream.pruned_seq))).all())
        positions = (await session.execute(select(StreamEvent.stream, StreamEvent.seq))).all()
    # What is left of each stream is contiguous and starts right after its pruned_seq.
    by_stream: dict[str, list[int]] = {}
    for stream, seq in positions:
        by_stream.setdefault(stream, []).append(seq)
    for stream, seqs in by_stream.items():
        seqs.sort()
        assert seqs == list(range(heads[stream] + 1, heads[stream] + 1 + len(seqs))), stream
    # All but the last round's moves were pruned: the history, the creates, seven rounds.
    pruned_per_customer = (1 + len(FLOW)) + 2 + (len(rounds) - 1)
    assert pruned == heads["store:store-p"] == len(customers) * pruned_per_customer


async def test_pruning_in_small_chunks_deletes_all_that_is_old_and_raises_pruned_seq(
    start_service: StartService,
) -> None:
    service = await start_service()
    order_id = await place(service, "pq")
    r = await service.http.post(
        f"/api/pos/orders/{order_id}/status", json={"status": "PREPARING"}, headers=auth(POS)
    )
    assert r.status_code == 200
    async with service.db.transaction() as session:
        await session.execute(update(Event).values(created_at=utcnow() - timedelta(days=40)))
    assert await prune(service.db, utcnow() - timedelta(days=30), chunk=1) == 2
    async with service.db.read() as session:
        head = await session.scalar(select(Stream.pruned_seq).where(Stream.name == "customer:pq"))
    assert head == 2


async def test_a_stream_whose_created_at_order_is_not_its_seq_order_keeps_a_contiguous_suffix(
    start_service: StartService,
) -> None:
    """Seq 2 older than seq 1 (``created_at`` is taken before the stream lock, so a writer that
    waited for the lock commits after one that started later): pruning cuts each stream at a
    seq, so seq 1 goes with seq 2, and a client at the cut replays the rest, no ``reset``."""
    service = await start_service()
    order_id = await place(service, "pz")
    for status in ("PREPARING", "READY"):
        r = await service.http.post(
            f"/api/pos/orders/{order_id}/status", json={"status": status}, headers=auth(POS)
        )
        assert r.status_code == 200, r.text
    async with service.db.read() as session:
        by_seq = dict(
            (
                await session.execute(
                    select(StreamEvent.seq, StreamEvent.event_id).where(
                        StreamEvent.stream == "customer:pz"
                    )
                )
            ).all()
        )
    assert sorted(by_seq) == [1, 2, 3]
    # The interleaving, forced: the event at seq 2 was stamped before the one at seq 1; only
    # seq 2's is older than the retention. Seq 3 is recent.
    now = utcnow()
    stamps = {1: now - timedelta(days=1), 2: now - timedelta(days=40), 3: now}
    async with service.db.transaction() as session:
        for seq, stamp in stamps.items():
            await session.execute(
                update(Event).where(Event.id == by_seq[seq]).values(created_at=stamp)
            )
    assert await prune(service.db, now - timedelta(days=30)) == 1  # one event is old
    async with service.db.read() as session:
        heads = {
            name: (head, pruned)
            for name, head, pruned in await session.execute(
                select(Stream.name, Stream.head_seq, Stream.pruned_seq)
            )
        }
        positions = (await session.execute(select(StreamEvent.stream, StreamEvent.seq))).all()
        events = set((await session.execute(select(Event.id))).scalars())
    kept: dict[str, list[int]] = {}
    for stream, seq in positions:
        kept.setdefault(stream, []).append(seq)
    # Both of the order's streams: everything at or below the cut is gone, the rest is there.
    assert heads == {"customer:pz": (3, 2), "store:store-p": (3, 2)}
    assert {stream: sorted(seqs) for stream, seqs in kept.items()} == {
        "customer:pz": [3],
        "store:store-p": [3],
    }
    # The newer event at seq 1 lost its positions but stays in the order's history until it
    # is old itself; the old one is gone.
    assert events == {by_seq[1], by_seq[3]}

    # A client at the cut resumes onto the kept suffix: a hello and seq 3, not a reset.
    epoch = (await recv_hello(service, "pz"))["epoch"]
    url = f"{service.ws_url}?token={token('pz')}&since=2&epoch={epoch}"
    async with connect(url) as ws:
        hello = await recv_json(ws)
        assert (hello["type"], hello["head_seq"]) == ("hello", 3)
        [event] = await recv_events(ws, 1)
        assert (event["seq"], event["event_id"]) == (3, by_seq[3])
    # One before the cut needed seq 2, which is gone: that, and only that, is a reset.
    async with connect(f"{service.ws_url}?token={token('pz')}&since=1&epoch={epoch}") as ws:
        reset = await recv_json(ws)
        assert (reset["type"], reset["head_seq"]) == ("reset", 3)


async def recv_hello(service: Service, customer: str) -> dict[str, object]:
    """The hello of a fresh connection to ``customer``'s stream."""
    async with connect(f"{service.ws_url}?token={token(customer)}") as ws:
        hello = await recv_json(ws)
    assert hello["type"] == "hello", hello
    return hello
