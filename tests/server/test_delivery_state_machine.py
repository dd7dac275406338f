"""Delivery as a state machine: hypothesis drives writes, broker faults, reconnects, restarts,
pruning and slow clients against a real in-process server, and checks DESIGN §1.2-1.3 after
every step.

The invariant after every step: each client's view of its stream (the seqs it received since its
last hello without ``since``, or its last ``reset``) is a prefix of the stream's log as the
database holds it (``stream_events``), with no gap and no duplicate. After quiescence (faults
healed, one sentinel event written to every stream and waited for, never a sleep) the view
equals the log up to its head; a close along the way must be one the client acts on (it
reconnects with ``since``), and a ``reset`` restarts the view from the reset's head.

Hypothesis's stateful machine is synchronous: each machine owns an ``asyncio.Runner`` (made in
``__init__``, closed in ``teardown``) and runs every step on it, so the server, its background
tasks and the clients' reader tasks live on that one loop and run during every step.

Deterministic on a loaded machine, with no reruns: rules and their preconditions choose from
the model alone (which clients the machine holds connected, which orders are open), never from
a socket, so hypothesis draws the same on the same choices. What timing decides is awaited, not
raced: a 4408 the server sends under a burst is a close the client acts on — a rule that needs
that client's socket resumes it first, and a ping waits for its pong *or* the close (then
resumes and pings again); pings stay inside the hub's own bucket (``CLIENT_MESSAGE_BURST``,
``CLIENT_MESSAGES_PER_SECOND``), modelled from what the client can know.

Budget: ``HUNT_EXAMPLES`` (default 8) examples of ``HUNT_STEPS`` (default 20) steps per backend,
derandomized so a CI run is reproducible; e.g. ``HUNT_EXAMPLES=200 HUNT_STEPS=40`` to hunt
(with shrinking), ``HUNT_DEBUG=1`` to print what each run did (restarts, overflows, faults).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import socket
import sys
import tempfile
from collections import Counter, deque
from collections.abc import AsyncIterator, Coroutine, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal, TypeVar

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import select
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from channels import Broker, BrokerError, Gap, create_broker
from channels.base import SubscriptionLike
from orders.db import Database
from orders.metrics import Metrics
from orders.models import Event, Stream, StreamEvent, utcnow
from orders.streams import prune
from reconciler.relay import Relay
from server.app import create_app
from server.hub import CLIENT_MESSAGE_BURST, CLIENT_MESSAGES_PER_SECOND
from server.services import Services
from tests.conftest import REDIS_URL, Backend, _pg_template, _redis_check, fresh_pg_database
from tests.support.clients import auth, order_body, token
from tests.support.servers import Running, serve_in_process

T = TypeVar("T")

EXAMPLES = int(os.environ.get("HUNT_EXAMPLES", "8"))
STEPS = int(os.environ.get("HUNT_STEPS", "20"))
# Bounds, not waits: each is far above what a step takes on a loaded 2-core machine (a burst
# of two dozen writes queued on one store's stream row lock), so only a hang reaches one.
STEP_TIMEOUT = 120.0
SETTLE_TIMEOUT = 30.0
IO_TIMEOUT = 30.0

CUSTOMERS = ("cu1", "cu2")
STORES = ("s1", "s2")
FLOW = ("PREPARING", "READY", "OUT_FOR_DELIVERY", "DELIVERED")
# A close a client is expected to act on by resuming with since: restart, slow consumer.
RESUMABLE_CLOSES = {1012, 4408}
# Faults the broker wrapper applies to the next stream publishes, one per message.
# "gap": dropped, and the subscribers told they may have missed something (a broker reconnect).
Fault = Literal["drop", "duplicate", "hold", "refuse", "gap"]
FAULTS: tuple[Fault, ...] = ("drop", "duplicate", "hold", "refuse", "gap")
# ~12 KB events: a few dozen of them fill the small socket buffers of a client that stops reading.
BIG_ITEMS = [
    {
        "sku": secrets.token_urlsafe(70),
        "name": secrets.token_urlsafe(150),
        "quantity": 1,
        "unit_price": 1,
    }
    for _ in range(40)
]


class FaultyBroker:
    """The real broker, with the stream publishes it is asked for dropped, doubled, held back
    (delivered after the next publish: reordered), refused (BrokerError) or lost with a
    :class:`Gap` to the channel's subscribers (what a broker reconnect looks like) on command.

    Only stream channels are touched; the hub's heartbeat goes through untouched, so the hub
    believes the broker healthy and relies on seqs, not polling, to notice what was lost.
    """

    def __init__(self, inner: Broker, prefix: str) -> None:
        self.inner = inner
        self.prefix = prefix
        self.plan: deque[Fault] = deque()
        self.held: list[tuple[str, str]] = []
        self.applied: Counter[str] = Counter()
        self.subscriptions: set[SubscriptionLike] = set()
        # Streams whose subscribers were sent a Gap since the machine last looked.
        self.gapped: set[str] = set()

    @property
    def connected(self) -> bool:
        return self.inner.connected

    async def connect(self) -> None:
        await self.inner.connect()

    async def disconnect(self) -> None:
        await self.inner.disconnect()

    def subscribe(
        self, *channels: str, maxsize: int = 256
    ) -> AbstractAsyncContextManager[SubscriptionLike]:
        return self._tracked(self.inner.subscribe(*channels, maxsize=maxsize))

    @contextlib.asynccontextmanager
    async def _tracked(
        self, subscription: AbstractAsyncContextManager[SubscriptionLike]
    ) -> AsyncIterator[SubscriptionLike]:
        async with subscription as sub:
            self.subscriptions.add(sub)
            try:
                yield sub
            finally:
                self.subscriptions.discard(sub)

    async def publish(self, channel: str, data: str) -> None:
        await self.publish_many([(channel, data)])

    async def publish_many(self, messages: Sequence[tuple[str, str]]) -> None:
        out: list[tuple[str, str]] = []
        hold: list[tuple[str, str]] = []
        refuse = False
        gaps: list[str] = []
        for message in messages:
            if not self._is_stream(message[0]) or not self.plan:
                out.append(message)
                continue
            fault = self.plan.popleft()
            self.applied[fault] += 1
            if fault == "duplicate":
                out += [message, message]
            elif fault == "hold":
                hold.append(message)
            elif fault == "refuse":
                refuse = True
            elif fault == "gap":
                gaps.append(message[0])
        if refuse:
            raise BrokerError("refused by the test's broker wrapper")
        # What was held back before goes out after this later message: delivered out of order.
        earlier, self.held = self.held, hold
        if out or earlier:
            await self.inner.publish_many(out + earlier)
        for channel in gaps:
            self.gapped.add(channel[len(self.prefix) :])
            for sub in list(self.subscriptions):
                if channel in sub.channels:
                    sub.put_gap(Gap("reconnected"))

    async def heal(self) -> None:
        """Forget the remaining faults and deliver what is held back."""
        self.plan.clear()
        held, self.held = self.held, []
        if held:
            await self.inner.publish_many(held)

    def _is_stream(self, channel: str) -> bool:
        return channel.startswith(self.prefix) and channel[len(self.prefix) :].startswith(
            ("customer:", "store:")
        )


@dataclass
class Client:
    """One WebSocket client and its view of its stream: ``base`` then ``received`` seqs.

    ``connected`` is the model's side: whether the machine last connected this client (True)
    or took it offline itself (False). The rules choose from it alone, never from the socket
    (``online``): a close the server sends at a moment timing decides (a 4408 from a burst)
    would otherwise make hypothesis draw differently on the same choices. A rule that needs
    the socket of a connected client whose socket the server closed resumes it first.
    """

    name: str
    token: str
    stream: str
    connected: bool = False
    base: int = 0
    received: list[tuple[int, int]] = field(default_factory=list)
    epoch: str | None = None
    ws: ClientConnection | None = None
    task: asyncio.Task[None] | None = None
    since: int | None = None
    started: asyncio.Event = field(default_factory=asyncio.Event)
    reading: asyncio.Event = field(default_factory=asyncio.Event)
    close_code: int | None = None
    closes: list[int] = field(default_factory=list)
    resets: int = 0
    errors: list[str] = field(default_factory=list)
    pongs: list[tuple[int, int]] = field(default_factory=list)  # (head_seq, last seen then)
    # The hub's token bucket of this socket's messages, as the client can know it: what it
    # held after the last message, from when that message was answered (see _ping).
    allowance: float = float(CLIENT_MESSAGE_BURST)
    answered_at: float = 0.0

    @property
    def last(self) -> int:
        return self.received[-1][0] if self.received else self.base

    @property
    def online(self) -> bool:
        return self.task is not None and not self.task.done()

    def allowance_at(self, now: float) -> float:
        """At most what the hub's bucket holds for this socket at ``now`` (loop time).

        The hub refills from when it *received* the last message, which lies before its answer
        arrived here, and will receive the next one no earlier than it is sent: refilling only
        from the answer to the send undercounts, never overcounts.
        """
        refill = max(0.0, now - self.answered_at) * CLIENT_MESSAGES_PER_SECOND
        return min(float(CLIENT_MESSAGE_BURST), self.allowance + refill)

    def on_message(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "hello":
            if self.since is None:
                self.base, self.received = int(message["head_seq"]), []
            elif message["epoch"] != self.epoch or int(message["head_seq"]) < self.since:
                self.errors.append(f"resume hello {message} after since={self.since}")
            self.epoch = message["epoch"]
            self.started.set()
        elif kind == "reset":
            self.base, self.received = int(message["head_seq"]), []
            self.epoch = message["epoch"]
            self.resets += 1
            self.started.set()
        elif kind == "event":
            if not self.started.is_set():
                self.errors.append(f"event before hello: {message['seq']}")
            if message["stream"] != self.stream:
                self.errors.append(f"event of {message['stream']} on {self.stream}")
            self.received.append((int(message["seq"]), int(message["event_id"])))
        elif kind == "pong":
            self.pongs.append((int(message["head_seq"]), self.last))
        else:
            self.errors.append(f"unexpected message {message}")


def _run_on(runner: asyncio.Runner, coro: Coroutine[Any, Any, T]) -> T:
    return runner.run(asyncio.wait_for(coro, STEP_TIMEOUT))


class DeliveryMachine(RuleBasedStateMachine):
    """Writes, broker faults, reconnects, restarts, pruning, slow clients; views stay prefixes."""

    backend_name = "sqlite"

    def __init__(self) -> None:
        super().__init__()
        self.runner = asyncio.Runner()
        self.stack = contextlib.AsyncExitStack()
        self.server_stack: contextlib.AsyncExitStack | None = None
        self.log: dict[str, dict[int, int]] = {}
        self.orders: dict[str, tuple[str, str, int]] = {}  # id -> (customer, store, FLOW index)
        self.clients: dict[str, Client] = {}
        self.restarts = 0
        self.overflows = 0
        self.resumed = 0  # closes the server sent outside slow_client and restart, resumed
        _run_on(self.runner, self._setup())

    # -- set-up and tear-down -----------------------------------------------------------------

    async def _setup(self) -> None:
        if self.backend_name == "sqlite":
            directory = tempfile.mkdtemp(prefix="hunt-")
            self.stack.callback(shutil.rmtree, directory, ignore_errors=True)
            self.backend = Backend("sqlite", f"sqlite+aiosqlite:///{directory}/o.db", None)
        else:
            await _redis_check()
            url = await self.stack.enter_async_context(fresh_pg_database())
            self.backend = Backend("postgres", url, REDIS_URL)
        self.settings = self.backend.settings(
            ws_queue_size=2,
            hub_poll_interval=0.2,
            relay_grace=0.3,
            # Writes queued behind a burst on a loaded machine wait for the lock rather than
            # answer 503 at the default 5 s (the HTTP client waits longer still).
            db_command_timeout=IO_TIMEOUT - 10,
        )
        inner = create_broker(self.settings.redis_url)
        await inner.connect()
        self.stack.push_async_callback(inner.disconnect)
        self.broker = FaultyBroker(inner, self.settings.redis_channel_prefix)
        await self._start_server()
        self.db = Database(self.settings.database_url, pool_size=2)
        self.stack.push_async_callback(self.db.dispose)
        for customer in CUSTOMERS:
            self.clients[customer] = Client(customer, token(customer), f"customer:{customer}")
        for store in STORES:
            name = f"pos-{store}"
            self.clients[name] = Client(
                name, token(name, role="pos", store_id=store), f"store:{store}"
            )
        for client in self.clients.values():
            await self._connect(client, resume=False)

    async def _start_server(self) -> None:
        settings = self.settings

        async def run_relay(services: Services, stop: asyncio.Event) -> None:
            await Relay(
                services.db, services.publisher, services.metrics, grace=0.3, interval=0.2
            ).run(stop)

        self.metrics = Metrics()
        app = create_app(settings, broker=self.broker, metrics=self.metrics, background=[run_relay])
        stack = contextlib.AsyncExitStack()
        running: Running = await stack.enter_async_context(serve_in_process(app))
        assert running.server is not None
        # Accepted sockets inherit the listener's send buffer: a small one (and no autotuning)
        # lets a client that stops reading fill the path to it with a few dozen events.
        for server in running.server.servers:
            for sock in server.sockets:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        self.http = await stack.enter_async_context(
            httpx.AsyncClient(
                base_url=running.http,
                timeout=IO_TIMEOUT,
                # httpx's default expiry of an idle connection is uvicorn's keep-alive (5 s):
                # a POST sent on one the server is closing that instant fails with ReadError.
                # Dropping idle connections well before the server does leaves no such race.
                limits=httpx.Limits(keepalive_expiry=1.0),
            )
        )
        self.running = running
        self.server_stack = stack

    async def _stop_server(self) -> None:
        stack, self.server_stack = self.server_stack, None
        if stack is not None:
            await stack.aclose()

    def teardown(self) -> None:
        if os.environ.get("HUNT_DEBUG"):
            print(
                "\nrestarts",
                self.restarts,
                "overflows",
                self.overflows,
                "resumed",
                self.resumed,
                dict(self.broker.applied),
                {c.name: (c.closes, c.resets, c.last) for c in self.clients.values()},
            )
        try:
            if sys.exc_info()[0] is None:
                # The run ended without a failure: it must also settle.
                _run_on(self.runner, self._settle())
        finally:
            try:
                self.runner.run(asyncio.wait_for(self._close_all(), STEP_TIMEOUT))
            finally:
                self.runner.close()

    async def _close_all(self) -> None:
        try:
            for client in self.clients.values():
                await self._disconnect(client)
            await self._stop_server()
        finally:
            await self.stack.aclose()

    # -- clients ------------------------------------------------------------------------------

    async def _connect(self, client: Client, *, resume: bool) -> None:
        url = f"{self.running.ws}/ws?token={client.token}"
        client.since = client.last if resume else None
        if resume:
            url += f"&since={client.last}" + (f"&epoch={client.epoch}" if client.epoch else "")
        sock = socket.socket()
        # A small receive buffer, so a client that stops reading soon stops the server's sends.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, self._address())
        ws = await connect(url, sock=sock, max_queue=1, max_size=None, ping_interval=None)
        client.ws, client.close_code, client.connected = ws, None, True
        # A new socket is a new bucket on the hub, full.
        client.allowance, client.answered_at = float(CLIENT_MESSAGE_BURST), 0.0
        client.started.clear()
        client.reading.set()
        client.task = asyncio.create_task(self._read(client, ws))
        async with asyncio.timeout(IO_TIMEOUT):
            await client.started.wait()

    def _address(self) -> tuple[str, int]:
        host, port = self.running.http.removeprefix("http://").rsplit(":", 1)
        return host, int(port)

    async def _read(self, client: Client, ws: ClientConnection) -> None:
        # A background consumer: it waits as long as the socket lives; every wait on what it
        # collected (``_wait_for``, the settle) carries a timeout.
        try:
            while True:
                await client.reading.wait()
                client.on_message(orjson.loads(await ws.recv()))
        except ConnectionClosed:
            client.close_code = ws.close_code if ws.close_code is not None else 1006
            client.closes.append(client.close_code)

    async def _disconnect(self, client: Client) -> None:
        client.connected = False
        if client.ws is not None:
            await client.ws.close()
        if client.task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                async with asyncio.timeout(IO_TIMEOUT):
                    await client.task
        client.ws = client.task = None

    async def _ensure_open(self, client: Client) -> None:
        """A client the model holds connected whose socket the server closed resumes now."""
        if client.connected and not client.online:
            self.resumed += 1
            await self._reconnect_after_close(client)

    async def _ping(self, client: Client) -> tuple[int, int]:
        """Ping and wait for the pong; its head_seq, and the last seq delivered before it.

        The server may close the socket with a code the client acts on (4408: its queue
        overflowed under a burst) before it answers; the client then resumes and pings again,
        as a real one would. Both ends are awaited — the pong or the close — never raced.
        """
        loop = asyncio.get_running_loop()
        while True:
            await self._ensure_open(client)
            assert client.ws is not None
            # Stay inside what one socket may send (the hub's bucket: CLIENT_MESSAGE_BURST,
            # then CLIENT_MESSAGES_PER_SECOND; beyond, it closes 4400).
            allowance = client.allowance_at(loop.time())
            if allowance < 1.0:
                await asyncio.sleep((1.0 - allowance) / CLIENT_MESSAGES_PER_SECOND + 0.01)
                allowance = client.allowance_at(loop.time())
            client.allowance = allowance - 1.0
            count = len(client.pongs)
            with contextlib.suppress(ConnectionClosed):  # the close is read by _read
                await client.ws.send('{"type": "ping"}')
            async with asyncio.timeout(IO_TIMEOUT):
                while len(client.pongs) == count and client.online:
                    await asyncio.sleep(0.01)
            if len(client.pongs) > count:
                client.answered_at = loop.time()
                return client.pongs[count]
            # Closed before the pong: a close the client must act on, then resume and retry.
            await self._ensure_open(client)

    async def _wait_closed(self, client: Client, timeout: float) -> int:
        assert client.task is not None
        async with asyncio.timeout(timeout):
            await asyncio.shield(client.task)
        assert client.close_code is not None
        return client.close_code

    # -- writes -------------------------------------------------------------------------------

    async def _create(self, customer: str, store: str, **overrides: Any) -> str:
        r = await self.http.post(
            "/api/orders", json=order_body(store, **overrides), headers=auth(token(customer))
        )
        assert r.status_code == 201, r.text
        order_id = str(r.json()["order"]["id"])
        self.orders[order_id] = (customer, store, -1)
        return order_id

    async def _advance(self, order_id: str) -> None:
        customer, store, index = self.orders[order_id]
        pos = token(f"pos-{store}", role="pos", store_id=store)
        r = await self.http.post(
            f"/api/pos/orders/{order_id}/status",
            json={"status": FLOW[index + 1]},
            headers=auth(pos),
        )
        assert r.status_code == 200, r.text
        self.orders[order_id] = (customer, store, index + 1)

    # -- the log as the database holds it ------------------------------------------------------

    async def _refresh_log(self) -> dict[str, tuple[int, int]]:
        """Read ``stream_events`` into the model log; (head_seq, pruned_seq) of each stream."""
        async with self.db.read() as session:
            rows = (
                await session.execute(
                    select(StreamEvent.stream, StreamEvent.seq, StreamEvent.event_id)
                )
            ).all()
            heads = {
                name: (int(head), int(pruned))
                for name, head, pruned in await session.execute(
                    select(Stream.name, Stream.head_seq, Stream.pruned_seq)
                )
            }
        kept: dict[str, list[int]] = {}
        for stream, seq, event_id in rows:
            known = self.log.setdefault(stream, {})
            previous = known.setdefault(int(seq), int(event_id))
            assert previous == event_id, f"{stream} seq {seq} was event {previous}, now {event_id}"
            kept.setdefault(stream, []).append(int(seq))
        assert set(kept) <= set(heads), f"positions of unknown streams: {set(kept) - set(heads)}"
        for stream, (head, pruned) in heads.items():
            seqs = kept.get(stream, [])
            # Pruning cuts each stream at a seq: what is left is exactly the suffix above
            # pruned_seq, with nothing lingering below it and no hole above.
            assert sorted(seqs) == list(range(pruned + 1, head + 1)), (
                f"{stream}: the log holds {sorted(seqs)}, head {head}, pruned {pruned}"
            )
        return heads

    def _check_view(self, client: Client, heads: dict[str, tuple[int, int]]) -> None:
        assert not client.errors, f"{client.name}: {client.errors}"
        seqs = [seq for seq, _ in client.received]
        expected = list(range(client.base + 1, client.base + 1 + len(seqs)))
        assert seqs == expected, f"{client.name} got {seqs} after {client.base}: a gap or a dup"
        head, pruned = heads.get(client.stream, (0, 0))
        assert client.last <= head, f"{client.name} is at {client.last}, past the head {head}"
        log = self.log.get(client.stream, {})
        for seq, event_id in client.received:
            if seq in log:
                assert log[seq] == event_id, f"{client.name}: seq {seq} is {log[seq]} in the log"
            else:
                # Committed and pruned between two reads of the log: nothing left to compare.
                assert seq <= pruned, f"{client.name} got seq {seq}, which the log never had"

    # -- settling -----------------------------------------------------------------------------

    async def _settle(self) -> None:
        """Heal the faults, write a sentinel to every stream and wait for every client to reach
        it; reconnect (with since) a client the server closed with a code it must act on."""
        await self.broker.heal()
        for client in self.clients.values():
            client.reading.set()
            if not client.online:
                await self._reconnect_after_close(client)
        # One order per (customer, store) pair below covers all four streams.
        await self._create("cu1", "s1")
        await self._create("cu2", "s2")
        heads = await self._refresh_log()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SETTLE_TIMEOUT
        for client in self.clients.values():
            head = heads[client.stream][0]
            while client.last != head:
                if not client.online:
                    await self._reconnect_after_close(client)
                    continue
                if loop.time() > deadline:
                    raise AssertionError(
                        f"{client.name} is stuck at seq {client.last} of {client.stream}"
                        f" (head {head}) on an open socket: silence is never an outcome"
                    )
                await asyncio.sleep(0.02)
        heads = await self._refresh_log()
        for client in self.clients.values():
            self._check_view(client, heads)
            assert client.last == heads[client.stream][0]
            # A quiet, caught-up stream: the pong's head is the head, so a client that had
            # missed the last event would see it from a ping.
            assert await self._ping(client) == (client.last, client.last), client.name

    async def _reconnect_after_close(self, client: Client) -> None:
        if client.close_code is not None and client.close_code not in {1000, *RESUMABLE_CLOSES}:
            raise AssertionError(f"{client.name} was closed with {client.close_code}")
        await self._connect(client, resume=True)

    # -- rules --------------------------------------------------------------------------------

    async def _writes_then_gaps_repaired(self, *writes: Coroutine[Any, Any, object]) -> None:
        """Run ``writes`` at once; then every client of a stream whose subscribers got a Gap
        must reach the stream's head with no later event to reveal the loss."""
        self.broker.gapped.clear()
        await asyncio.gather(*writes)
        gapped, self.broker.gapped = set(self.broker.gapped), set()
        if not gapped:
            return
        heads = await self._refresh_log()
        waiting = [c for c in self.clients.values() if c.online and c.stream in gapped]
        try:
            async with asyncio.timeout(SETTLE_TIMEOUT):
                while any(c.online and c.last < heads[c.stream][0] for c in waiting):
                    await asyncio.sleep(0.02)
        except TimeoutError:
            behind = {c.name: (c.last, heads[c.stream][0]) for c in waiting}
            raise AssertionError(f"a Gap was not repaired from the log: {behind}") from None

    def _open_orders(self) -> list[str]:
        return sorted(o for o, (_, _, i) in self.orders.items() if i < len(FLOW) - 1)

    @rule(customer=st.sampled_from(CUSTOMERS), store=st.sampled_from(STORES))
    def create_order(self, customer: str, store: str) -> None:
        _run_on(self.runner, self._writes_then_gaps_repaired(self._create(customer, store)))

    @precondition(lambda self: bool(self._open_orders()))
    @rule(pick=st.integers(min_value=0, max_value=1_000))
    def advance_order(self, pick: int) -> None:
        open_orders = self._open_orders()
        order_id = open_orders[pick % len(open_orders)]
        _run_on(self.runner, self._writes_then_gaps_repaired(self._advance(order_id)))

    @rule(
        pairs=st.lists(
            st.tuples(st.sampled_from(CUSTOMERS), st.sampled_from(STORES)), min_size=2, max_size=6
        ),
        advance=st.booleans(),
    )
    def burst(self, pairs: list[tuple[str, str]], advance: bool) -> None:
        """Several writes at once (and, with ``advance``, a move of every open order too)."""
        writes: list[Coroutine[Any, Any, object]] = [self._create(c, s) for c, s in pairs]
        if advance:
            writes += [self._advance(order_id) for order_id in self._open_orders()]
        _run_on(self.runner, self._writes_then_gaps_repaired(*writes))

    @rule(faults=st.lists(st.sampled_from(FAULTS), min_size=1, max_size=3))
    def broker_faults(self, faults: list[Fault]) -> None:
        self.broker.plan.extend(faults)

    # Preconditions and choices read the model (``Client.connected``), never a socket.
    def _connected(self) -> list[Client]:
        return [c for c in self.clients.values() if c.connected]

    def _offline(self) -> list[Client]:
        return [c for c in self.clients.values() if not c.connected]

    @precondition(lambda self: bool(self._connected()))
    @rule(pick=st.integers(min_value=0, max_value=1_000))
    def go_offline(self, pick: int) -> None:
        """A client closes its socket; it comes back later (writes and prunes may happen)."""
        online = self._connected()
        _run_on(self.runner, self._disconnect(online[pick % len(online)]))

    @precondition(lambda self: bool(self._offline()))
    @rule(pick=st.integers(min_value=0, max_value=1_000), fresh=st.booleans())
    def come_back(self, pick: int, fresh: bool) -> None:
        """An offline client reconnects with its last seq and epoch (or, fresh, with neither)."""
        offline = self._offline()
        _run_on(self.runner, self._connect(offline[pick % len(offline)], resume=not fresh))

    @rule()
    def restart(self) -> None:
        """Stop the app and start a new one on the same database; clients resume."""

        async def run() -> None:
            await self._stop_server()
            for client in self._connected():
                # 1012 from the shutdown, or a 4408 the server sent before it.
                code = await self._wait_closed(client, IO_TIMEOUT)
                assert code in RESUMABLE_CLOSES, f"{client.name} closed {code} on restart"
            await self._start_server()
            self.restarts += 1
            for client in self._connected():
                await self._connect(client, resume=True)

        _run_on(self.runner, run())

    @rule(scope=st.sampled_from(["all", "older half"]))
    def prune_log(self, scope: str) -> None:
        """Prune the log (all of it, or its older half) under connected clients."""

        async def run() -> None:
            before: datetime = utcnow() + timedelta(milliseconds=1)
            if scope == "older half":
                async with self.db.read() as session:
                    stamps = (
                        await session.execute(select(Event.created_at).order_by(Event.id))
                    ).scalars()
                    kept = list(stamps)
                if not kept:
                    return
                before = kept[len(kept) // 2]
            await prune(self.db, before)

        _run_on(self.runner, run())

    @precondition(lambda self: bool(self._connected()))
    @rule(
        name=st.sampled_from([*CUSTOMERS, *(f"pos-{s}" for s in STORES)]), count=st.integers(1, 30)
    )
    def slow_client(self, name: str, count: int) -> None:
        """The client stops reading while ``count`` big events are written to its stream, then
        reads again: it gets a prefix, and if its queue overflowed, 4408 and resumes."""
        client = self.clients[name]
        if not client.connected:
            client = self._connected()[0]
            name = client.name
        customer, store = (name, "s1") if name in CUSTOMERS else ("cu2", name.removeprefix("pos-"))

        async def run() -> None:
            await self._ensure_open(client)
            client.reading.clear()
            for _ in range(count):
                await self._create(customer, store, items=BIG_ITEMS)
            head = (await self._refresh_log())[client.stream][0]
            client.reading.set()
            async with asyncio.timeout(SETTLE_TIMEOUT):
                while client.online and client.last < head:
                    await asyncio.sleep(0.02)
            if not client.online:
                assert client.close_code == 4408, f"{name} closed {client.close_code}"
                self.overflows += 1
                await self._connect(client, resume=True)

        _run_on(self.runner, run())

    @precondition(lambda self: bool(self._connected()))
    @rule(pick=st.integers(min_value=0, max_value=1_000))
    def ping(self, pick: int) -> None:
        """A pong never claims a head the log does not have, nor one behind what was sent."""
        online = self._connected()
        client = online[pick % len(online)]

        async def run() -> None:
            pong, delivered = await self._ping(client)
            head = (await self._refresh_log())[client.stream][0]
            assert delivered <= pong <= head, (
                f"{client.name}: pong {pong}, delivered {delivered} before it, log head {head}"
            )

        _run_on(self.runner, run())

    @rule()
    def settle(self) -> None:
        _run_on(self.runner, self._settle())

    @invariant()
    def every_view_is_a_gap_free_prefix_of_its_log(self) -> None:
        async def check() -> None:
            heads = await self._refresh_log()
            for client in self.clients.values():
                self._check_view(client, heads)

        _run_on(self.runner, check())


async def _postgres_and_redis_reachable() -> None:
    await _redis_check()
    await _pg_template()


def _machine_for(backend_name: str) -> type[DeliveryMachine]:
    if backend_name == "postgres":
        # Skip (under CI: fail) here, before hypothesis and the machine's own loop start.
        asyncio.run(_postgres_and_redis_reachable())
    return type(
        f"DeliveryMachine_{backend_name}", (DeliveryMachine,), {"backend_name": backend_name}
    )


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("backend_name", ["sqlite", "postgres"])
def test_every_client_view_stays_a_gap_free_prefix_of_its_log_and_converges(
    backend_name: str,
) -> None:
    run_state_machine_as_test(
        _machine_for(backend_name),
        settings=settings(
            max_examples=EXAMPLES,
            stateful_step_count=STEPS,
            deadline=None,
            derandomize=True,
            database=None,
            # Shrinking re-runs many examples; the CI budget keeps the first failing run as it is.
            phases=[Phase.explicit, Phase.reuse, Phase.generate]
            + ([Phase.shrink] if "HUNT_EXAMPLES" in os.environ else []),
            suppress_health_check=list(HealthCheck),
            print_blob=False,
        ),
    )


def _tour(backend_name: str, steps: Sequence[tuple[str, dict[str, Any]]]) -> DeliveryMachine:
    """Run ``steps`` (rule name, arguments) on a fresh machine, checking the invariant after
    each, then settle; the machine, for what the caller wants to assert about the run."""
    machine = _machine_for(backend_name)()
    try:
        machine.every_view_is_a_gap_free_prefix_of_its_log()
        for name, arguments in steps:
            getattr(machine, name)(**arguments)
            machine.every_view_is_a_gap_free_prefix_of_its_log()
    finally:
        machine.teardown()
    return machine


@pytest.mark.parametrize("backend_name", ["sqlite", "postgres"])
def test_a_tour_of_every_rule_ends_with_every_view_equal_to_its_log(backend_name: str) -> None:
    """Each path the random runs may or may not reach, on every CI run: a lost, doubled,
    reordered and refused publish, a lost one with a Gap (repaired with no later event);
    concurrent writes; a reset after pruning; a 4408 and its resume; a restart."""
    write = ("create_order", {"customer": "cu1", "store": "s1"})
    machine = _tour(
        backend_name,
        [
            write,
            ("advance_order", {"pick": 0}),
            ("broker_faults", {"faults": ["drop", "duplicate"]}),
            write,
            ("broker_faults", {"faults": ["hold", "hold"]}),
            write,
            ("broker_faults", {"faults": ["refuse"]}),
            write,
            ("broker_faults", {"faults": ["gap", "gap"]}),
            write,
            ("broker_faults", {"faults": ["hold", "drop", "duplicate"]}),
            ("burst", {"pairs": [("cu1", "s2"), ("cu2", "s1"), ("cu2", "s2")], "advance": True}),
            ("create_order", {"customer": "cu2", "store": "s2"}),
            ("ping", {"pick": 2}),
            ("settle", {}),
            ("go_offline", {"pick": 0}),  # cu1
            write,
            ("prune_log", {"scope": "all"}),
            ("come_back", {"pick": 0, "fresh": False}),
            ("slow_client", {"name": "pos-s1", "count": 30}),
            ("restart", {}),
            write,
            ("settle", {}),
        ],
    )
    assert set(machine.broker.applied) == set(FAULTS)
    assert machine.clients["cu1"].resets == 1  # resumed from before the pruned positions
    assert machine.overflows == 1 and machine.clients["pos-s1"].closes[0] == 4408
    assert machine.restarts == 1


@pytest.mark.parametrize("backend_name", ["sqlite", "postgres"])
def test_a_live_client_behind_a_pruned_hole_gets_reset_or_a_close_never_silence(
    backend_name: str,
) -> None:
    """A lost publish, then the positions it left behind are pruned before the next event
    reveals the hole: the backfill cannot fill it, and the client must hear of it (DESIGN §1.3)."""
    write = ("create_order", {"customer": "cu1", "store": "s1"})
    machine = _tour(
        backend_name,
        [
            write,
            ("broker_faults", {"faults": ["drop", "drop"]}),
            write,
            ("prune_log", {"scope": "all"}),
            write,
            ("settle", {}),
        ],
    )
    # Both of that order's streams lost the publish; their clients were told, with a reset.
    assert machine.clients["cu1"].resets == 1 and machine.clients["pos-s1"].resets == 1
    assert machine.clients["cu2"].resets == 0


@pytest.mark.parametrize("backend_name", ["sqlite", "postgres"])
def test_after_a_lost_publish_on_a_quiet_stream_a_ping_shows_the_client_what_it_missed(
    backend_name: str,
) -> None:
    """The pong names the true head (one shared database read), then the hub backfills."""
    machine = _machine_for(backend_name)()
    try:
        machine.create_order(customer="cu1", store="s1")
        machine.broker_faults(faults=["drop", "drop"])  # both streams of the next event
        machine.create_order(customer="cu1", store="s1")
        client = machine.clients["cu1"]
        pong, delivered = _run_on(machine.runner, machine._ping(client))
        head = _run_on(machine.runner, machine._refresh_log())[client.stream][0]
        assert (delivered, pong) == (1, head) and head == 2

        async def caught_up() -> None:
            async with asyncio.timeout(IO_TIMEOUT):
                while client.last < head:
                    await asyncio.sleep(0.01)

        _run_on(machine.runner, caught_up())  # the ping also brought the missed event
    finally:
        machine.teardown()
