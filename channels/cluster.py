"""ClusterBroker: sharded pub/sub (SPUBLISH / SSUBSCRIBE) on a Redis Cluster.

Each channel lives on the shard that owns its hash slot. The broker keeps the cluster's slot
map (``CLUSTER SLOTS``), publishes with SPUBLISH to the slot's master (pipelined per shard in
:meth:`ClusterBroker.publish_many`), and holds **one pub/sub connection per shard** (per master
address), on which it SSUBSCRIBEs the channels of that shard in use in this process — one
SSUBSCRIBE per hash slot, since Redis refuses a command whose channels span slots, all sent in
one write.

Each shard connection goes through *sessions*, like :class:`channels.redis.RedisBroker`'s one
connection: a session re-subscribes the shard's channels, and once Redis confirmed them every
subscription *of that shard's channels* gets ``Gap("reconnected")`` — the other shards'
subscribers hear nothing. A session ends when the connection breaks or stops answering PING;
the shard then reconnects with backoff, and the slot map is refreshed at once (a dead master
is usually a failover under way).

Channels follow their slot: when the map changes (a failover promoted a replica, a resharding
moved slots), when Redis answers an SSUBSCRIBE or SPUBLISH with ``MOVED``, or when it pushes
``sunsubscribe`` because the slot left the node, the channel is subscribed on its new owner
and its subscriptions get ``Gap("moved")`` once the new owner confirmed it. The map is also
refreshed every ``refresh_interval`` seconds (every ``reconnect_delay`` while a shard is
down), from any node that answers.

Replies on a pub/sub connection come in command order, and errors (``MOVED``,
``CLUSTERDOWN``) name no channel, so each session keeps the commands it sent in a FIFO and
matches every reply or error to the command at its head; pushes (``smessage``, a
``sunsubscribe`` Redis sends on its own) are recognised by not matching it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from itertools import groupby, islice
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import MovedError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from channels.base import BrokerError
from channels.fanout import Fanout, Subscription
from channels.sessions import CONNECT_TIMEOUT, Confirmations, Reconnecting, Session, open_pubsub

logger = logging.getLogger(__name__)

#: The most channels one SSUBSCRIBE / SUNSUBSCRIBE carries (all of one slot).
BATCH_SIZE = 1000

_PUBLISH_TIMEOUT = 2.0
_MAX_PUBLISH_CONNECTIONS = 50
#: After CLUSTERDOWN / TRYAGAIN on an SSUBSCRIBE, try again this much later.
_RETRY_SUBSCRIBE_AFTER = 0.2
#: How long publishes to a node that just failed to connect or answer fail without trying
#: (until its pub/sub session is back, at most this long).
_QUARANTINE = 5.0
#: Slot map refreshes never come closer than this, however many triggers arrive.
_MIN_REFRESH_GAP = 0.1

_MOVED = "moved"

SCHEMES = ("redis", "rediss", "redis+cluster", "rediss+cluster")


def channel_slot(channel: str) -> int:
    """The hash slot of ``channel`` (hash tags ``{...}`` honoured, as Redis does)."""
    return key_slot(channel.encode())


def same_shard(channel: str, base: str) -> str:
    """A channel starting with ``base`` in the same hash slot as ``channel`` (so on the same
    shard of a cluster): ``base{tag}`` with ``channel``'s hashed part as the tag. Falls back
    to ``base`` when that part is empty or holds a ``}``, so cannot be a tag."""
    start = channel.find("{")
    end = channel.find("}", start + 1) if start > -1 else -1
    hashed = channel[start + 1 : end] if start > -1 and end > start + 1 else channel
    return base if not hashed or "}" in hashed else f"{base}{{{hashed}}}"


@dataclass(frozen=True, slots=True)
class ClusterUrl:
    """A parsed ``redis[s][+cluster]://[user:password@]host:port[,host:port...]`` URL."""

    tls: bool
    userinfo: str
    seeds: tuple[str, ...]

    def node_url(self, address: str) -> str:
        """A redis-py URL for one node of the cluster (same credentials and TLS)."""
        at = "@" if self.userinfo else ""
        return f"{'rediss' if self.tls else 'redis'}://{self.userinfo}{at}{address}/0"

    @classmethod
    def parse(cls, url: str) -> ClusterUrl:
        """Parse ``url``; ValueError (never echoing the URL, which may hold a password)."""
        scheme, separator, rest = url.partition("://")
        if not separator or scheme.lower() not in SCHEMES:
            raise ValueError("expected redis://, rediss://, redis+cluster:// or rediss+cluster://")
        rest = rest.split("/", 1)[0].split("?", 1)[0]
        userinfo, at, hosts = rest.rpartition("@")
        if not at:
            userinfo = ""
        seeds: list[str] = []
        for part in hosts.split(","):
            host, colon, port = part.strip().rpartition(":")
            if not colon:
                host, port = part.strip(), "6379"
            if not host or not port.isdigit():
                raise ValueError("cluster URL: expected host:port[,host:port...]")
            seeds.append(f"{host}:{int(port)}")
        return cls(tls=scheme.lower().startswith("rediss"), userinfo=userinfo, seeds=tuple(seeds))


class _Sent:
    """A command on a pub/sub connection still owed replies (one per channel, or one error)."""

    __slots__ = ("channels", "kind", "left")

    def __init__(self, kind: str, channels: tuple[str, ...]) -> None:
        self.kind = kind
        self.channels = channels
        self.left = max(1, len(channels))


class _Session(Session):
    """The state of one shard's pub/sub connection (SSUBSCRIBE), thrown away with it."""

    __slots__ = ("resync_all", "sent")

    def __init__(self, conn: AbstractConnection) -> None:
        super().__init__(conn)
        # Commands in the order they were sent, to match replies and errors against.
        self.sent: deque[_Sent] = deque()
        # The whole initial re-subscription (``resync_left`` is what is not confirmed yet).
        self.resync_all: frozenset[str] = frozenset()

    async def ping(self) -> None:
        """PING, queued in the FIFO so its PONG is matched like any reply."""
        self.sent.append(_Sent("ping", ()))
        await super().ping()


class _Node:
    """One master's address: its publish client, its channels and its pub/sub sessions."""

    __slots__ = (
        "address",
        "channels",
        "dirty",
        "moved_in",
        "runner",
        "session",
        "to_subscribe",
        "to_unsubscribe",
    )

    def __init__(self, address: str) -> None:
        self.address = address
        # Channels in use whose slot this node owns (by our map).
        self.channels: set[str] = set()
        self.to_subscribe: set[str] = set()
        self.to_unsubscribe: set[str] = set()
        # Channels that came here from another node: a Gap once this node confirms them.
        self.moved_in: set[str] = set()
        self.dirty = asyncio.Event()
        self.session: _Session | None = None
        self.runner: asyncio.Task[None] | None = None


class _Client:
    """A pooled client for publishing to (and asking) one node, and its FIFO of publishers."""

    __slots__ = ("quarantined_until", "redis", "slots")

    def __init__(self, url: str) -> None:
        # Short timeouts and one retry on connection errors only, as RedisBroker does: a
        # timed-out SPUBLISH retried could arrive twice; a failed one the relay re-publishes.
        self.redis = aioredis.Redis.from_url(
            url,
            max_connections=_MAX_PUBLISH_CONNECTIONS,
            socket_connect_timeout=CONNECT_TIMEOUT,
            socket_timeout=_PUBLISH_TIMEOUT,
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        )
        self.slots = asyncio.Semaphore(_MAX_PUBLISH_CONNECTIONS)
        # After a connection error or timeout: until then publishes to this node fail at once,
        # so a black-holed master costs one timeout, not one per batch (the relay has them).
        self.quarantined_until = 0.0


class ClusterBroker:
    """A broker on Redis Cluster sharded pub/sub: one pub/sub connection per shard."""

    def __init__(
        self,
        url: str,
        *,
        reconnect_delay: float = 0.5,
        max_reconnect_delay: float = 5.0,
        subscribe_timeout: float = 5.0,
        health_check_interval: float = 10.0,
        refresh_interval: float = 10.0,
    ) -> None:
        """Create a broker for the cluster ``url`` names (any of its nodes will do)."""
        # Checks the delays; the per-shard loops share it.
        self._reconnecting: Reconnecting[_Session] = Reconnecting(
            reconnect_delay=reconnect_delay,
            max_reconnect_delay=max_reconnect_delay,
            on_down=self._want_refresh,
        )
        if subscribe_timeout <= 0 or health_check_interval <= 0 or refresh_interval <= 0:
            raise ValueError("timeouts and intervals must be positive")
        self._url = ClusterUrl.parse(url)
        self._reconnect_delay = reconnect_delay
        self._subscribe_timeout = subscribe_timeout
        self._health_check_interval = health_check_interval
        self._refresh_interval = refresh_interval

        self._fanout = Fanout()
        # Slot → the address of its master, by the latest map; None until one was read.
        self._owner: list[str | None] = [None] * REDIS_CLUSTER_HASH_SLOTS
        self._replicas: list[str] = []
        self._shards: dict[str, tuple[tuple[int, int], ...]] = {}
        self._slot_of: dict[str, int] = {}
        # Channel → the node it is assigned to; channels whose slot has no known owner wait.
        self._where: dict[str, str] = {}
        self._unassigned: set[str] = set()
        self._nodes: dict[str, _Node] = {}
        self._clients: dict[str, _Client] = {}
        self._confirmations = Confirmations(timeout=subscribe_timeout, who="redis cluster")
        self._refresh_wanted = asyncio.Event()
        self._refresh_lock = asyncio.Lock()
        self._changed = asyncio.Event()
        self._refresher: asyncio.Task[None] | None = None
        self._closed = True

    def __repr__(self) -> str:
        return (
            f"<ClusterBroker connected={self.connected} shards={len(self._shards)}"
            f" channels={len(self._fanout.channels)} subscriptions={len(self._fanout)}>"
        )

    # -- state --------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """Whether every slot has a master whose pub/sub session is up and re-subscribed."""
        if self._closed or not self._shards or self._unassigned:
            return False
        if sum(end - start + 1 for r in self._shards.values() for start, end in r) < len(
            self._owner
        ):
            return False
        for address in self._shards:
            node = self._nodes.get(address)
            if node is None or node.session is None or not node.session.established:
                return False
        return True

    def shards(self) -> Mapping[str, tuple[tuple[int, int], ...]]:
        """Every master's address and the slot ranges it owns, by the latest slot map."""
        return self._shards

    def shard_of(self, channel: str) -> str | None:
        """The address of the master owning ``channel``'s slot (None if no map yet)."""
        return self._owner[channel_slot(channel)]

    def shard_connected(self, address: str) -> bool:
        """Whether the pub/sub session to master ``address`` is up and re-subscribed."""
        node = self._nodes.get(address)
        return node is not None and node.session is not None and node.session.established

    # -- lifecycle ----------------------------------------------------------------------------

    async def connect(self) -> None:
        """Read the slot map and open a pub/sub session per shard; the cluster down is no error."""
        if not self._closed:
            return
        self._closed = False
        try:
            async with asyncio.timeout(self._subscribe_timeout):
                if not await self._refresh():
                    logger.warning("redis cluster unreachable; will keep retrying")
        except TimeoutError:
            logger.warning("redis cluster slot map not read in %.1fs", self._subscribe_timeout)
        try:
            async with asyncio.timeout(self._subscribe_timeout):
                while not self.connected and self._shards:
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            logger.warning("redis cluster pub/sub not ready after %.1fs", self._subscribe_timeout)
        # Started last, so its first wait is the long one whenever the sessions are up.
        self._refresher = asyncio.create_task(self._refresh_loop(), name="cluster-refresh")

    async def disconnect(self) -> None:
        """Stop every reader and close every connection; idempotent."""
        self._closed = True
        tasks = [node.runner for node in self._nodes.values() if node.runner is not None]
        if self._refresher is not None:
            tasks.append(self._refresher)
        self._refresher = None
        for node in self._nodes.values():
            node.runner = None
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        clients, self._clients = self._clients, {}
        for client in clients.values():
            with contextlib.suppress(RedisError, OSError):
                await client.redis.aclose()

    # -- publishing ---------------------------------------------------------------------------

    def _client(self, address: str) -> _Client:
        client = self._clients.get(address)
        if client is None:
            client = self._clients[address] = _Client(self._url.node_url(address))
        return client

    async def publish(self, channel: str, data: str) -> None:
        """SPUBLISH ``data`` to ``channel`` on its shard; BrokerError if it cannot take it."""
        await self.publish_many([(channel, data)])

    async def publish_many(self, messages: Sequence[tuple[str, str]]) -> None:
        """SPUBLISH each pair, in order per channel, one pipelined round trip per shard."""
        if self._closed:
            raise BrokerError("redis cluster broker is not connected")
        if not messages:
            return
        pending = list(messages)
        failure: str | None = None
        # One more round after MOVED: the message was refused, never delivered, so resending
        # it to the new owner cannot double it.
        for _ in range(2):
            groups: dict[str | None, list[tuple[str, str]]] = {}
            for channel, data in pending:
                groups.setdefault(self.shard_of(channel), []).append((channel, data))
            unowned = groups.pop(None, None)
            if unowned:
                self._want_refresh()
                failure = f"no known master for {len(unowned)} message(s)' slots"
            outcomes = await asyncio.gather(
                *(
                    self._publish_to(address, group)
                    for address, group in groups.items()
                    if address is not None
                ),
                return_exceptions=True,
            )
            pending = []
            for outcome in outcomes:
                if isinstance(outcome, BaseException):
                    if not isinstance(outcome, Exception):
                        raise outcome
                    failure = str(outcome)
                else:
                    pending.extend(outcome)
            if not pending:
                break
        if pending:
            failure = f"{len(pending)} message(s) still redirected after a retry"
        if failure is not None:
            raise BrokerError(f"redis cluster publish failed: {failure}")

    async def _publish_to(
        self, address: str, group: list[tuple[str, str]]
    ) -> list[tuple[str, str]]:
        """Pipeline ``group`` to one master; return the messages it redirected (MOVED)."""
        client = self._client(address)
        now = asyncio.get_running_loop().time()
        if now < client.quarantined_until:
            self._want_refresh()
            raise BrokerError(f"{address}: unreachable a moment ago; left to the relay")
        try:
            async with client.slots:
                async with client.redis.pipeline(transaction=False) as pipe:
                    for channel, data in group:
                        pipe.spublish(channel, data)
                    results = await pipe.execute(raise_on_error=False)
        except (RedisError, OSError) as exc:
            # The node may be dead and a replica about to take over: learn the new map soon.
            self._want_refresh()
            if isinstance(exc, (RedisConnectionError, RedisTimeoutError, OSError)):
                client.quarantined_until = asyncio.get_running_loop().time() + _QUARANTINE
            raise BrokerError(f"{address}: {exc or type(exc).__name__}") from exc
        redirected: list[tuple[str, str]] = []
        for message, result in zip(group, results, strict=True):
            if isinstance(result, MovedError):
                self._learn(result)
                redirected.append(message)
            elif isinstance(result, Exception):
                self._want_refresh()
                raise BrokerError(f"{address}: {result}")
        return redirected

    def _learn(self, moved: MovedError) -> None:
        """Record the owner a MOVED named, and refresh the whole map soon."""
        address = f"{moved.host}:{moved.port}"
        if self._owner[moved.slot_id] != address:
            self._owner[moved.slot_id] = address
            self._shards = _ranges(self._owner)
            self._reassign(self._channels_in_slot(moved.slot_id))
        self._want_refresh()

    # -- subscribing --------------------------------------------------------------------------

    def subscribe(
        self, *channels: str, maxsize: int = 256
    ) -> AbstractAsyncContextManager[Subscription]:
        """Subscribe to ``channels``; on enter, their shards confirmed them (when reachable)."""
        if not channels:
            raise ValueError("subscribe() needs at least one channel")
        return self._subscription(Subscription(channels, maxsize=maxsize))

    @asynccontextmanager
    async def _subscription(self, subscription: Subscription) -> AsyncIterator[Subscription]:
        pending = self._register(subscription)
        try:
            if pending:
                await self._confirmations.wait(subscription, pending)
            yield subscription
        finally:
            self._unregister(subscription)

    def _register(self, subscription: Subscription) -> list[asyncio.Future[None]]:
        for channel in self._fanout.add(subscription):
            self._slot_of[channel] = channel_slot(channel)
            self._assign(channel, moved=False)
        pending: list[asyncio.Future[None]] = []
        for channel in subscription.channels:
            node = self._nodes.get(self._where.get(channel, ""))
            session = node.session if node is not None else None
            if node is None or session is None:
                # That shard is down or unknown: its next session subscribes and sends a Gap.
                continue
            if channel in node.to_subscribe or session.inflight.get(channel):
                pending.append(self._confirmations.expect(channel))
        return pending

    def _unregister(self, subscription: Subscription) -> None:
        for channel in self._fanout.remove(subscription):
            self._slot_of.pop(channel, None)
            self._unassigned.discard(channel)
            address = self._where.pop(channel, None)
            node = self._nodes.get(address) if address is not None else None
            if node is not None:
                self._drop(node, channel)
            self._confirmations.confirm(channel)

    def _assign(self, channel: str, *, moved: bool) -> None:
        """Put ``channel`` on the node owning its slot (``moved``: a Gap once it confirms)."""
        address = self._owner[self._slot_of[channel]]
        old = self._where.get(channel)
        if address == old:
            return
        if old is not None:
            old_node = self._nodes.get(old)
            if old_node is not None:
                self._drop(old_node, channel)
        if address is None:
            self._where.pop(channel, None)
            self._unassigned.add(channel)
            return
        self._unassigned.discard(channel)
        self._where[channel] = address
        node = self._node(address)
        node.channels.add(channel)
        node.to_unsubscribe.discard(channel)
        if moved:
            node.moved_in.add(channel)
        session = node.session
        if session is None or channel not in session.requested:
            node.to_subscribe.add(channel)
            node.dirty.set()

    def _drop(self, node: _Node, channel: str) -> None:
        node.channels.discard(channel)
        node.to_subscribe.discard(channel)
        node.moved_in.discard(channel)
        session = node.session
        if session is not None and channel in session.requested:
            node.to_unsubscribe.add(channel)
            node.dirty.set()

    def _reassign(self, channels: Iterable[str]) -> None:
        for channel in list(channels):
            if channel in self._fanout:
                self._assign(channel, moved=True)

    def _channels_in_slot(self, slot: int) -> list[str]:
        return [channel for channel, s in self._slot_of.items() if s == slot]

    # -- the slot map -------------------------------------------------------------------------

    def _want_refresh(self) -> None:
        self._refresh_wanted.set()

    def _degraded(self) -> bool:
        return not self.connected

    async def _refresh_loop(self) -> None:
        while True:
            interval = self._reconnect_delay if self._degraded() else self._refresh_interval
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await self._refresh_wanted.wait()
            self._refresh_wanted.clear()
            try:
                await self._refresh()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("redis cluster slot map refresh failed")
            await asyncio.sleep(_MIN_REFRESH_GAP)

    async def _refresh(self) -> bool:
        """Read the slot map from the first node that answers; True if one did."""
        async with self._refresh_lock:
            candidates = list(dict.fromkeys([*self._shards, *self._replicas, *self._url.seeds]))
            for address in candidates:
                try:
                    reply = await self._client(address).redis.execute_command("CLUSTER", "SLOTS")  # type: ignore[no-untyped-call]
                except (RedisError, OSError):
                    continue
                self._apply(address, reply)
                return True
            return False

    def _apply(self, asked: str, reply: Any) -> None:
        owner: list[str | None] = [None] * REDIS_CLUSTER_HASH_SLOTS
        replicas: list[str] = []
        for entry in reply:
            start, end, master = int(entry[0]), int(entry[1]), entry[2]
            owner[start : end + 1] = [_address(master, asked)] * (end - start + 1)
            replicas.extend(_address(node, asked) for node in entry[3:])
        self._replicas = list(dict.fromkeys(replicas))
        if owner != self._owner:
            before = self._shards
            self._owner = owner
            self._shards = _ranges(owner)
            if before:
                logger.info("redis cluster slot map changed: %s", _describe(self._shards))
            self._reassign(self._fanout.channels)
        if not self._closed:
            for address in self._shards:
                self._node(address)  # a session per shard, even before it has channels
        for address, node in list(self._nodes.items()):
            if address not in self._shards and not node.channels:
                self._retire(node)
        self._changed.set()

    def _retire(self, node: _Node) -> None:
        del self._nodes[node.address]
        if node.runner is not None:
            node.runner.cancel()
            node.runner = None

    def _node(self, address: str) -> _Node:
        node = self._nodes.get(address)
        if node is None:
            node = self._nodes[address] = _Node(address)
        if node.runner is None and not self._closed:
            node.runner = asyncio.create_task(self._run(node), name=f"cluster-pubsub-{address}")
        return node

    # -- one shard's pub/sub connection -------------------------------------------------------

    async def _open(self, node: _Node) -> _Session:
        pool = self._client(node.address).redis.connection_pool
        return _Session(await open_pubsub(pool, handshake=self._subscribe_timeout))

    async def _run(self, node: _Node) -> None:
        """Serve ``node``'s sessions until cancelled, reconnecting with backoff in between."""
        await self._reconnecting.run(
            lambda: self._open(node),
            lambda session: self._serve(node, session),
            lambda session: self._end(node, session),
            lost=f"redis cluster pub/sub to {node.address} lost",
            failed=f"redis cluster pub/sub connect to {node.address} failed",
        )

    async def _serve(self, node: _Node, session: _Session) -> None:
        node.session = session
        node.to_unsubscribe.clear()
        node.to_subscribe = set(node.channels)
        reading = asyncio.create_task(self._read_loop(node, session), name="cluster-read")
        flushing = asyncio.create_task(self._flush_loop(node, session), name="cluster-flush")
        try:
            await session.watch({reading, flushing}, self._health_check_interval)
        finally:
            reading.cancel()
            flushing.cancel()
            await asyncio.gather(reading, flushing, return_exceptions=True)

    async def _end(self, node: _Node, session: _Session) -> None:
        if node.session is session:
            node.session = None
        self._confirmations.confirm_all(node.channels)
        self._changed.set()
        with contextlib.suppress(RedisError, OSError):
            await session.conn.disconnect(nowait=True)

    async def _flush_loop(self, node: _Node, session: _Session) -> None:
        session.resync_left = set(node.to_subscribe)
        session.resync_all = frozenset(session.resync_left)
        if not session.resync_left:
            self._resynced(node, session)
        while True:
            node.dirty.clear()
            await self._flush(node, session)
            await node.dirty.wait()

    async def _flush(self, node: _Node, session: _Session) -> None:
        """Send the pending SSUBSCRIBE / SUNSUBSCRIBE commands, one per slot, in one write."""
        subscribe, unsubscribe = node.to_subscribe, node.to_unsubscribe
        if not subscribe and not unsubscribe:
            return
        node.to_subscribe, node.to_unsubscribe = set(), set()
        session.requested.difference_update(unsubscribe)
        session.requested.update(subscribe)
        inflight = session.inflight
        for channel in subscribe:
            inflight[channel] = inflight.get(channel, 0) + 1
        commands: list[tuple[str, ...]] = []
        for kind, channels in (("sunsubscribe", unsubscribe), ("ssubscribe", subscribe)):
            for batch in self._by_slot(channels):
                session.sent.append(_Sent(kind, batch))
                commands.append((kind.upper(), *batch))
        await session.send(session.conn.pack_commands(commands))

    def _by_slot(self, channels: Iterable[str]) -> Iterator[tuple[str, ...]]:
        def slot(channel: str) -> int:
            cached = self._slot_of.get(channel)
            return cached if cached is not None else channel_slot(channel)

        for _, same_slot in groupby(sorted(channels, key=slot), key=slot):
            iterator = iter(same_slot)
            while batch := tuple(islice(iterator, BATCH_SIZE)):
                yield batch

    async def _read_loop(self, node: _Node, session: _Session) -> None:
        """Hand every message to the fanout; the hot path of the broker."""
        read = session.conn.read_response
        deliver = self._fanout.deliver
        while True:
            try:
                reply = await read(disconnect_on_error=False)
            except ResponseError as exc:
                session.reads += 1
                self._on_error(node, session, exc)
                continue
            session.reads += 1
            if reply[0] == "smessage":
                deliver(reply[1], reply[2])
            else:
                self._on_reply(node, session, reply)

    def _consume(self, session: _Session, kind: str, channel: str | None) -> bool:
        """If the command at the FIFO's head is ``kind`` (naming ``channel``), count a reply."""
        sent = session.sent
        if not sent or sent[0].kind != kind:
            return False
        head = sent[0]
        if channel is not None and channel not in head.channels:
            return False
        head.left -= 1
        if head.left <= 0:
            sent.popleft()
        return True

    def _on_reply(self, node: _Node, session: _Session, reply: Any) -> None:
        match reply:
            case ["ssubscribe", str() as channel, _]:
                self._consume(session, "ssubscribe", channel)
                self._on_subscribed(node, session, channel)
            case ["sunsubscribe", str() as channel, _]:
                if not self._consume(session, "sunsubscribe", channel):
                    self._on_pushed_out(node, session, channel)
            case ["pong", _] | "PONG":
                self._consume(session, "ping", None)
            case _:
                logger.warning("unexpected reply on a cluster pub/sub connection: %.200r", reply)

    def _on_subscribed(self, node: _Node, session: _Session, channel: str) -> None:
        left = session.resync_left
        if left is not None:
            left.discard(channel)
        count = session.inflight.get(channel, 0)
        if count > 1:
            session.inflight[channel] = count - 1
        else:
            session.inflight.pop(channel, None)
            if channel in session.requested:
                self._confirmations.confirm(channel)
                if channel in node.moved_in:
                    node.moved_in.discard(channel)
                    self._fanout.gap_channels((channel,), _MOVED)
        if left is not None and not left:
            self._resynced(node, session)

    def _on_pushed_out(self, node: _Node, session: _Session, channel: str) -> None:
        """Redis unsubscribed ``channel`` itself: its slot left this node (resharding, failover)."""
        if channel not in session.requested:
            return
        session.requested.discard(channel)
        logger.info("redis cluster: %s dropped %s; following its slot", node.address, channel)
        if channel in node.channels:
            # Ask again here: the node answers MOVED with the new owner, at once.
            node.moved_in.add(channel)
            node.to_subscribe.add(channel)
            node.dirty.set()
        self._want_refresh()

    def _on_error(self, node: _Node, session: _Session, exc: ResponseError) -> None:
        head = session.sent.popleft() if session.sent else None
        if head is None or head.kind != "ssubscribe":
            if head is None or head.kind != "sunsubscribe":
                logger.warning("redis cluster %s refused a pub/sub command: %s", node.address, exc)
            return
        failed: list[str] = []
        for channel in head.channels:
            count = session.inflight.get(channel, 0)
            if count > 1:
                session.inflight[channel] = count - 1
                continue
            session.inflight.pop(channel, None)
            session.requested.discard(channel)
            if session.resync_left is not None:
                session.resync_left.discard(channel)
            if channel in node.channels:
                failed.append(channel)
        if session.resync_left is not None and not session.resync_left:
            self._resynced(node, session)
        if isinstance(exc, MovedError):
            self._learn(exc)  # moves the slot's channels to the node MOVED names
            return
        # CLUSTERDOWN, TRYAGAIN, ASK mid-migration: the shard cannot take them yet.
        logger.warning(
            "redis cluster %s: SSUBSCRIBE of %d channel(s) refused (%s); retrying",
            node.address,
            len(failed),
            exc,
        )
        self._want_refresh()
        node.moved_in.update(failed)
        asyncio.get_running_loop().call_later(
            _RETRY_SUBSCRIBE_AFTER, self._retry_subscribe, node, session, failed
        )

    def _retry_subscribe(self, node: _Node, session: _Session, channels: list[str]) -> None:
        if node.session is not session:
            return  # the next session re-subscribes everything anyway
        for channel in channels:
            if channel in node.channels and channel not in session.requested:
                node.to_subscribe.add(channel)
        node.dirty.set()

    def _resynced(self, node: _Node, session: _Session) -> None:
        """The shard's channels are subscribed again: tell their subscribers, and only them."""
        session.resync_left = None
        session.established = True
        client = self._clients.get(node.address)
        if client is not None:
            client.quarantined_until = 0.0  # it answers again
        self._fanout.gap_channels(session.resync_all & node.channels, "reconnected")
        self._changed.set()
        logger.info(
            "redis cluster pub/sub to %s up; %d channel(s) subscribed",
            node.address,
            len(node.channels),
        )


def _address(node: Sequence[Any], asked: str) -> str:
    # The publish clients do not decode replies; an empty host means "the one you asked".
    host = node[0].decode() if isinstance(node[0], bytes) else str(node[0])
    host = host or asked.rpartition(":")[0]
    return f"{host}:{int(node[1])}"


def _ranges(owner: list[str | None]) -> dict[str, tuple[tuple[int, int], ...]]:
    ranges: dict[str, list[tuple[int, int]]] = {}
    slot = 0
    for address, run in groupby(owner):
        length = sum(1 for _ in run)
        if address is not None:
            ranges.setdefault(address, []).append((slot, slot + length - 1))
        slot += length
    return {address: tuple(r) for address, r in ranges.items()}


def _describe(shards: Mapping[str, tuple[tuple[int, int], ...]]) -> str:
    return "; ".join(
        f"{address} {','.join(f'{a}-{b}' for a, b in r)}" for address, r in shards.items()
    )
