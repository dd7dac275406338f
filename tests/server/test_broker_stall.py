"""A broker that is paused or black-holed holds up no write, and every event still arrives.

The event is durable once committed; publishing only makes delivery fast. So a POS write must
answer as soon as it commits, whatever Redis does, while the hub's polling and the relay bring
every event to subscribers.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest
from websockets.asyncio.client import connect

from channels.redis import RedisBroker
from tests.channels.helpers import RedisServer
from tests.conftest import Backend, Service, StartService
from tests.support.clients import auth, order_body, recv_events, recv_json, token

pytestmark = pytest.mark.slow

#: The path every order takes here: three POS moves after it is created CONFIRMED (cash).
MOVES = ("PREPARING", "READY", "DELIVERED")
ORDERS = 5
POS = token("till-1", role="pos", store_id="store-1")
#: How long this test's broker waits for Redis to answer a PUBLISH (the service's waits 2 s): a
#: write that waited on its publish would take that long, far beyond any write on a slow machine.
PUBLISH_WAIT = 30.0


@pytest.fixture
async def backend(pg_backend: Backend, private_redis: RedisServer) -> Backend:
    """PostgreSQL plus a Redis of this test's own, which it pauses."""
    return replace(pg_backend, redis_url=private_redis.url)


@contextlib.asynccontextmanager
async def black_hole() -> AsyncIterator[str]:
    """A TCP server that accepts connections and never answers: a redis:// URL to it."""
    peers: list[asyncio.StreamWriter] = []

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peers.append(writer)
        with contextlib.suppress(ConnectionError):
            while await reader.read(65536):
                pass

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        server.close()
        for writer in peers:
            writer.close()
        await server.wait_closed()


def patient_broker(url: str) -> RedisBroker:
    """A Redis broker on ``url`` whose publishes wait ``PUBLISH_WAIT`` s for an answer."""
    return RedisBroker(url, publish_timeout=PUBLISH_WAIT)


async def create_orders(service: Service, customer: str) -> list[str]:
    ids = []
    for _ in range(ORDERS):
        r = await service.http.post("/api/orders", json=order_body(), headers=auth(token(customer)))
        assert r.status_code == 201, r.text
        ids.append(str(r.json()["order"]["id"]))
    return ids


async def move_all(service: Service, order_ids: list[str]) -> list[float]:
    """Every POS move of every order, one after another; how long each took to answer."""
    loop = asyncio.get_running_loop()
    took = []
    for status in MOVES:
        for order_id in order_ids:
            started = loop.time()
            r = await service.http.post(
                f"/api/pos/orders/{order_id}/status", json={"status": status}, headers=auth(POS)
            )
            took.append(loop.time() - started)
            assert r.status_code == 200, r.text
    return took


async def test_pos_writes_answer_while_redis_is_paused_and_every_event_still_arrives(
    start_service: StartService, private_redis: RedisServer
) -> None:
    # A tiny publish queue, so the pause also overflows it: those events are the relay's.
    service = await start_service(
        relay=True,
        relay_grace=0.5,
        hub_poll_interval=0.5,
        publish_queue_size=3,
        broker=patient_broker(private_redis.url),
        owns_broker=True,
    )
    customer = token("ula")
    async with connect(f"{service.ws_url}?token={customer}") as ws:
        assert (await recv_json(ws))["type"] == "hello"
        order_ids = await create_orders(service, "ula")
        received = await recv_events(ws, ORDERS)

        # ALL also blocks every new connection's handshake (even a CLIENT UNPAUSE), so the pause
        # is waited out rather than lifted.
        pause = 12.0
        await private_redis.command("CLIENT", "PAUSE", str(int(pause * 1000)), "ALL")
        loop = asyncio.get_running_loop()
        paused_until = loop.time() + pause
        try:
            took = await move_all(service, order_ids)
            # A write waiting on its publish would wait for the pause to end (12 s away).
            assert max(took) < pause / 2, f"slowest write took {max(took):.2f}s"
            # Polled from the database while Redis is still paused.
            received += await recv_events(ws, len(took), timeout=paused_until - loop.time() - 0.5)
        finally:
            await asyncio.sleep(max(0.0, paused_until - loop.time()))
        overflowed = service.metrics.registry.get_sample_value("publish_queue_overflow_total")
        assert overflowed, "the queue of 3 must have overflowed during the pause"

        # A sentinel after the pause: nothing doubled or missing before it.
        r = await service.http.post("/api/orders", json=order_body(), headers=auth(customer))
        assert r.status_code == 201
        received += await recv_events(ws, 1, timeout=15)
    written = ORDERS + ORDERS * len(MOVES) + 1
    assert [e["seq"] for e in received] == list(range(1, written + 1))


async def test_pos_writes_answer_with_a_black_holed_broker_and_every_event_still_arrives(
    start_service: StartService,
) -> None:
    async with black_hole() as url:
        service = await start_service(
            redis_url=url,
            relay=True,
            hub_poll_interval=0.5,
            broker=patient_broker(url),
            owns_broker=True,
        )
        customer = token("val")
        async with connect(f"{service.ws_url}?token={customer}") as ws:
            assert (await recv_json(ws))["type"] == "hello"
            loop = asyncio.get_running_loop()
            started = loop.time()
            order_ids = await create_orders(service, "val")
            took = await move_all(service, order_ids)
            # A write waiting on its publish would take PUBLISH_WAIT s: the black hole never
            # answers.
            assert max(took) < PUBLISH_WAIT / 3, f"slowest write took {max(took):.2f}s"
            received = await recv_events(ws, ORDERS + len(took), timeout=20)
            # Sentinel: one more, and nothing before it came twice.
            r = await service.http.post("/api/orders", json=order_body(), headers=auth(customer))
            assert r.status_code == 201
            received += await recv_events(ws, 1, timeout=10)
            assert loop.time() - started < 60
        written = ORDERS + ORDERS * len(MOVES) + 1
        assert [e["seq"] for e in received] == list(range(1, written + 1))
