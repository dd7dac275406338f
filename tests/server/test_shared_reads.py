"""Set-up and repair reads are shared: sockets asking together cost one read, not one each."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

from websockets.asyncio.client import ClientConnection, connect

from orders.hooks import Hooks
from orders.workflow import OrderStatus
from tests.conftest import Service, StartService
from tests.support.clients import auth, order_body, recv_events, recv_json, token
from tests.support.writes import write_without_publishing


class Gate(Hooks):
    """Holds every connection right after it subscribed until ``expected`` have, then lets
    them all go at once (so their set-up reads are asked for together); records the reads."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.arrived = 0
        self.all_in = asyncio.Event()
        self.reads: list[tuple[str, list[str]]] = []

    async def after_subscribe(self, stream: str) -> None:
        self.arrived += 1
        if self.arrived >= self.expected:
            self.all_in.set()
        await asyncio.wait_for(self.all_in.wait(), 20)

    async def before_stream_read(self, kind: str, streams: Sequence[str]) -> None:
        self.reads.append((kind, sorted(streams)))


async def place(service: Service, customer: str) -> str:
    r = await service.http.post("/api/orders", json=order_body(), headers=auth(token(customer)))
    assert r.status_code == 201, r.text
    return str(r.json()["order"]["id"])


async def open_all(
    stack: contextlib.AsyncExitStack, urls: list[str]
) -> list[tuple[ClientConnection, dict[str, object]]]:
    """Open every URL at once; each socket with its hello."""

    async def one(url: str) -> tuple[ClientConnection, dict[str, object]]:
        ws = await stack.enter_async_context(connect(url))
        return ws, await recv_json(ws, timeout=20)

    async with asyncio.timeout(30):
        return await asyncio.gather(*(one(url) for url in urls))


def url(service: Service, customer: str, query: str = "") -> str:
    return f"{service.ws_url}?token={token(customer)}{query}"


async def test_fifty_fresh_sockets_of_one_stream_and_ten_streams_cost_one_snapshot_read(
    start_service: StartService,
) -> None:
    customers = [f"snap{i}" for i in range(10)]
    gate = Gate(expected=50 + len(customers))
    service = await start_service(
        hooks=gate, hub_safety_poll_interval=0, ws_max_connections_per_user=200
    )
    order_id = await place(service, "snap0")
    async with contextlib.AsyncExitStack() as stack:
        opened = await open_all(
            stack, [url(service, "snap0")] * 50 + [url(service, c) for c in customers]
        )
        hellos = [hello for _, hello in opened]
    # One read for all 60 sockets and their 10 streams (one of them never written to before).
    assert gate.reads == [("snapshot", sorted(f"customer:{c}" for c in customers))]
    first = hellos[0]
    assert first["head_seq"] == 1 and [o["id"] for o in first["orders"]] == [order_id]  # type: ignore[attr-defined]
    assert all(hello == first for hello in hellos[:51])
    assert [h["head_seq"] for h in hellos[51:]] == [0] * 9
    assert all(h["orders"] == [] for h in hellos[51:])


async def test_fifty_sockets_resuming_together_share_one_head_read_and_one_backlog_read(
    start_service: StartService,
) -> None:
    gate = Gate(expected=100)
    service = await start_service(
        hooks=gate, hub_safety_poll_interval=0, ws_max_connections_per_user=200
    )
    await place(service, "res")
    async with contextlib.AsyncExitStack() as stack:
        # 50 at the head (nothing to replay) and 50 at 0 (seq 1 to replay).
        opened = await open_all(
            stack, [url(service, "res", "&since=1")] * 50 + [url(service, "res", "&since=0")] * 50
        )
        assert {hello["head_seq"] for _, hello in opened} == {1}
        replayed = [await recv_events(ws, 1) for ws, _ in opened[50:]]
    assert [[e["seq"] for e in events] for events in replayed] == [[1]] * 50
    # One query for the head of the stream, one for its events: not 100 of each.
    assert gate.reads == [("log", ["customer:res"]), ("events", ["customer:res"])]


async def test_a_poll_repairs_each_stream_with_one_read_shared_by_all_its_sockets(
    start_service: StartService,
) -> None:
    gate = Gate(expected=50 + 5)
    service = await start_service(
        hooks=gate, hub_safety_poll_interval=0, ws_max_connections_per_user=200
    )
    a = await place(service, "pa")
    b = await place(service, "pb")
    async with contextlib.AsyncExitStack() as stack:
        opened = await open_all(
            stack, [url(service, "pa", "&since=1")] * 50 + [url(service, "pb", "&since=1")] * 5
        )
        gate.reads.clear()
        # Seq 2 of both streams commits and its publish is lost: only a poll can find it.
        await write_without_publishing(service, a, OrderStatus.PREPARING)
        await write_without_publishing(service, b, OrderStatus.PREPARING)
        assert await service.services.hub.poll_heads() == 55
        repaired = [await recv_events(ws, 1) for ws, _ in opened]
    assert [[(e["stream"], e["seq"]) for e in events] for events in repaired] == (
        [[("customer:pa", 2)]] * 50 + [[("customer:pb", 2)]] * 5
    )
    # 55 sockets gapped at once: one head query for both streams, one events read for each.
    assert gate.reads == [
        ("log", ["customer:pa", "customer:pb"]),
        ("events", ["customer:pa"]),
        ("events", ["customer:pb"]),
    ]
