"""The hub's delivery guarantees, attacked: resume, seams, lost publishes, slow consumers."""

from __future__ import annotations

import asyncio
import random
import secrets
import socket
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from websockets.asyncio.client import ClientConnection, connect

from server.auth import Principal, Role
from server.models import Event, Order, StreamEvent
from server.workflow import OrderStatus, PaymentMethod
from server.writes import Actor, create_order
from tests.conftest import Service, StartService
from tests.support.clients import (
    auth,
    expect_close,
    expect_silence,
    order_body,
    recv_events,
    recv_json,
    token,
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


async def test_a_fresh_client_gets_a_snapshot_consistent_with_head_seq(service: Service) -> None:
    a = await place(service, "dora")
    b = await place(service, "dora")
    assert (await move(service, b, "PREPARING")).status_code == 200
    c = await place(service, "dora")
    for status in FLOW:
        assert (await move(service, c, status)).status_code == 200
    async with connect(ws_url(service, "dora")) as ws:
        hello = await recv_json(ws)
    assert hello["head_seq"] == 8
    # Delivered orders are closed: only a and b are open.
    assert {o["id"]: o["status"] for o in hello["orders"]} == {a: "CONFIRMED", b: "PREPARING"}


async def test_resuming_while_events_are_being_written_has_no_gap_and_no_duplicate_at_the_seam(
    service: Service,
) -> None:
    order_ids = [await place(service, "erin") for _ in range(4)]
    stop = asyncio.Event()

    async def writer() -> int:
        count = 0
        statuses = {o: 0 for o in order_ids}
        while not stop.is_set():
            live = [o for o, i in statuses.items() if i < len(FLOW)]
            if not live:
                break
            order = random.choice(live)
            r = await move(service, order, FLOW[statuses[order]])
            assert r.status_code == 200, r.text
            statuses[order] += 1
            count += 1
        return count

    writing = asyncio.create_task(writer())
    seen: list[int] = []
    epoch = None
    # Reconnect repeatedly while the writer runs; each session resumes from the last seen seq.
    for _ in range(6):
        params: dict[str, object] = {"since": seen[-1], "epoch": epoch} if seen else {}
        async with connect(ws_url(service, "erin", **params)) as ws:
            hello = await recv_json(ws)
            epoch = hello["epoch"]
            if not seen:
                seen.append(hello["head_seq"]) if hello["head_seq"] else None
            for _ in range(2):
                try:
                    message = await recv_json(ws, timeout=1)
                except TimeoutError:
                    break
                assert message["type"] == "event"
                seen.append(message["seq"])
    await writing
    async with connect(ws_url(service, "erin", since=seen[-1], epoch=epoch)) as ws:
        hello = await recv_json(ws)
        rest = hello["head_seq"] - seen[-1]
        seen.extend(seqs(await recv_events(ws, rest)))
        await expect_silence(ws, 0.3)
    assert seen == list(range(seen[0], seen[-1] + 1)), "gap or duplicate at a seam"
    assert seen[-1] == 4 + 4 * len(FLOW)


async def test_a_publish_that_never_happened_reaches_a_live_subscriber_through_the_relay(
    start_service: StartService,
) -> None:
    service = await start_service(relay=True, relay_grace=0.3)
    order_id = await place(service, "fay")
    async with connect(ws_url(service, "fay", since=1)) as ws:
        await recv_json(ws)  # hello
        await write_without_publishing(service, order_id, OrderStatus.PREPARING)
        async with service.db.read() as session:
            unpublished = await session.scalar(
                select(func.count()).select_from(Event).where(Event.published_at.is_(None))
            )
        assert unpublished == 1
        (event,) = await recv_events(ws, 1, timeout=10)
        assert event["seq"] == 2 and event["status"] == "PREPARING"
        await expect_silence(ws, 0.5)  # and only once
    async with service.db.read() as session:
        assert (
            await session.scalar(
                select(func.count()).select_from(Event).where(Event.published_at.is_(None))
            )
            == 0
        )


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
        await expect_silence(ws, 0.3)


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
        assert await expect_close(ws, timeout=30) == 4408
        # What did reach us before the close is a contiguous prefix.
    assert service.metrics.registry.get_sample_value("ws_slow_consumer_closes_total") == 1
    async with connect(ws_url(service, "hal", since=0, epoch=epoch), max_size=None) as ws:
        hello = await recv_json(ws)
        events = await recv_events(ws, N, timeout=60)
    assert seqs(events) == list(range(1, N + 1))


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
            rows = (await session.execute(select(StreamEvent.stream, StreamEvent.seq))).all()
            event_count = await session.scalar(select(func.count()).select_from(Event))
            db_orders = (await session.execute(select(Order))).scalars().all()
        assert event_count == len(orders) + successes
        by_stream: dict[str, list[int]] = {}
        for stream, seq in rows:
            by_stream.setdefault(stream, []).append(seq)
        for stream, stream_seqs in by_stream.items():
            assert sorted(stream_seqs) == list(range(1, len(stream_seqs) + 1)), stream
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
        # And every live subscriber got exactly its stream, in order.
        for c, ws in listeners.items():
            expected = len(by_stream[f"customer:{c}"]) - 3
            got = await recv_events(ws, expected)
            assert seqs(got) == list(range(4, 4 + expected))
            await expect_silence(ws, 0.2)
        store_expected = len(by_stream["store:store-1"]) - 9
        assert seqs(await recv_events(store_ws, store_expected)) == list(
            range(10, 10 + store_expected)
        )
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


async def test_an_event_is_in_the_log_before_anyone_hears_of_it(service: Service) -> None:
    order_id = await place(service, "quin")
    async with connect(ws_url(service, "quin", since=1)) as ws:
        await recv_json(ws)
        write = asyncio.create_task(move(service, order_id, "PREPARING"))
        (event,) = await recv_events(ws, 1)
        # The moment a subscriber hears of it, another connection can read it from the log.
        async with service.db.read() as session:
            stored = await session.get(Event, event["event_id"])
            assert stored is not None and stored.to_status == "PREPARING"
        response = await write
    assert response.status_code == 200
    # And the 2xx came after the commit: the answer's event is in the log.
    async with service.db.read() as session:
        assert await session.get(Event, response.json()["event"]["event_id"]) is not None


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
        await expect_silence(ws, 0.3)
    async with service.db.read() as session:
        moves = await session.scalar(
            select(func.count()).select_from(Event).where(Event.order_id == order_id)
        )
    assert moves == 2  # created, then PREPARING once
