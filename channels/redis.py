"""RedisBroker: Redis pub/sub shared by many processes; one connection and one reader per process.

The pub/sub connection goes through *sessions*. A session starts when a connection is open; it
SUBSCRIBEs every channel in use (in batches), and once Redis has confirmed all of them the broker
is ``connected`` and every subscription gets ``Gap("reconnected")``, because messages published
while there was no session were lost. A session ends when the connection breaks, when Redis stops
answering (an idle connection is PINGed every ``health_check_interval``; no reply within another
interval ends it), or on :meth:`RedisBroker.disconnect`. Then the reader waits with exponential
backoff and jitter and starts a new session.

Channels are reference-counted: the first local subscription of a channel SUBSCRIBEs it, the last
one to leave UNSUBSCRIBEs it. Changes are collected in two pending sets and sent by one flusher
task, so many concurrent ``subscribe()`` calls become a few SUBSCRIBE commands.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from itertools import islice
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError

from channels.base import BrokerError
from channels.fanout import Fanout, Subscription
from channels.sessions import CONNECT_TIMEOUT, Confirmations, Reconnecting, Session, open_pubsub

logger = logging.getLogger(__name__)

#: How many channels one SUBSCRIBE / UNSUBSCRIBE command carries.
BATCH_SIZE = 1000

#: A publish against an unreachable Redis must fail within about this long.
_PUBLISH_TIMEOUT = 2.0
_MAX_PUBLISH_CONNECTIONS = 50


class RedisBroker:
    """A broker on Redis pub/sub: publish through the client's pool, receive on one connection."""

    def __init__(
        self,
        url: str | None = None,
        *,
        client: aioredis.Redis | None = None,
        reconnect_delay: float = 0.5,
        max_reconnect_delay: float = 5.0,
        subscribe_timeout: float = 5.0,
        health_check_interval: float = 10.0,
        publish_timeout: float = _PUBLISH_TIMEOUT,
    ) -> None:
        """Create a broker for ``url`` (a client is made and owned) or on a given ``client``.

        ``publish_timeout``: how long a PUBLISH on the owned client waits for Redis's answer.
        """
        if (url is None) == (client is None):
            raise ValueError("RedisBroker needs exactly one of url or client")
        if subscribe_timeout <= 0 or health_check_interval <= 0:
            raise ValueError("subscribe_timeout and health_check_interval must be positive")
        # Made first: it checks the delays before a client exists to be leaked.
        self._reconnecting: Reconnecting[Session] = Reconnecting(
            reconnect_delay=reconnect_delay,
            max_reconnect_delay=max_reconnect_delay,
        )
        if client is None:
            assert url is not None
            # Short timeouts: a failed publish is repaired from the database by the caller,
            # while a publish that hangs holds up a request. One retry, on connection errors
            # only, replaces a pooled connection that died with a restarted Redis; retrying a
            # timed-out PUBLISH could deliver it twice.
            client = aioredis.Redis.from_url(
                url,
                max_connections=_MAX_PUBLISH_CONNECTIONS,
                socket_connect_timeout=CONNECT_TIMEOUT,
                socket_timeout=publish_timeout,
                retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
            )
            self._owns_client = True
        else:
            self._owns_client = False
        self._client = client
        # A burst of publishes queues here in FIFO order: the pool would either fail with "Too
        # many connections" or (as a BlockingConnectionPool) let newcomers starve earlier waiters.
        max_connections = getattr(client.connection_pool, "max_connections", None)
        self._publish_slots = asyncio.Semaphore(
            max_connections if isinstance(max_connections, int) else _MAX_PUBLISH_CONNECTIONS
        )
        self._subscribe_timeout = subscribe_timeout
        self._health_check_interval = health_check_interval

        self._fanout = Fanout()
        self._to_subscribe: set[str] = set()
        self._to_unsubscribe: set[str] = set()
        self._confirmations = Confirmations(timeout=subscribe_timeout, who="redis")
        self._dirty = asyncio.Event()
        self._up = asyncio.Event()
        self._session: Session | None = None
        self._connected = False
        self._closed = True
        self._reader: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return (
            f"<RedisBroker connected={self._connected} channels={len(self._fanout.channels)}"
            f" subscriptions={len(self._fanout)}>"
        )

    @property
    def connected(self) -> bool:
        """Whether the pub/sub connection is up and every channel in use is subscribed."""
        return self._connected

    @property
    def client(self) -> aioredis.Redis:
        """The Redis client used for publishing."""
        return self._client

    async def connect(self) -> None:
        """Open the pub/sub connection and start the reader; Redis being down is not an error."""
        if self._reader is not None:
            return
        self._closed = False
        conn: AbstractConnection | None = None
        try:
            conn = await self._open()
        except (RedisError, OSError) as exc:
            logger.warning("redis pub/sub unreachable (%s); will keep retrying", exc)
        self._reader = asyncio.create_task(
            self._reconnecting.run(
                self._open_session,
                self._serve,
                self._end,
                lost="redis pub/sub connection lost",
                failed="redis pub/sub connect failed",
                first=Session(conn) if conn is not None else None,
                # connect() just tried (and logged why it failed): the next try after a pause.
                open_first=False,
            ),
            name="redis-broker-reader",
        )
        if conn is not None:
            # Return with `connected` meaningful, so start-up readiness is right at once.
            try:
                async with asyncio.timeout(self._subscribe_timeout):
                    await self._up.wait()
            except TimeoutError:
                logger.warning("redis pub/sub not ready after %.1fs", self._subscribe_timeout)

    async def disconnect(self) -> None:
        """Stop the reader and close connections; open subscriptions get nothing more."""
        self._closed = True
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
        if self._owns_client:
            await self._client.aclose()

    async def publish(self, channel: str, data: str) -> None:
        """Publish ``data`` to ``channel``; BrokerError if Redis cannot take it."""
        if self._closed:
            raise BrokerError("redis broker is not connected")
        try:
            async with self._publish_slots:
                await self._client.publish(channel, data)
        except (RedisError, OSError) as exc:
            raise BrokerError(f"redis publish failed: {exc or type(exc).__name__}") from exc

    async def publish_many(self, messages: Sequence[tuple[str, str]]) -> None:
        """Publish (channel, data) pairs in order in one pipelined round trip."""
        if self._closed:
            raise BrokerError("redis broker is not connected")
        if not messages:
            return
        try:
            async with self._publish_slots:
                # Not a MULTI: publishes need no atomicity, only order and one round trip.
                async with self._client.pipeline(transaction=False) as pipe:
                    for channel, data in messages:
                        pipe.publish(channel, data)
                    await pipe.execute()
        except (RedisError, OSError) as exc:
            raise BrokerError(f"redis publish failed: {exc or type(exc).__name__}") from exc

    def subscribe(
        self, *channels: str, maxsize: int = 256
    ) -> AbstractAsyncContextManager[Subscription]:
        """Subscribe to ``channels``; on enter, Redis has confirmed them (if it is reachable)."""
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
        """Add ``subscription``; return the confirmations to wait for (none without a session)."""
        requested = self._session.requested if self._session is not None else ()
        for channel in self._fanout.add(subscription):
            self._to_unsubscribe.discard(channel)
            if channel not in requested:
                self._to_subscribe.add(channel)
        if self._to_subscribe:
            self._dirty.set()
        session = self._session
        if session is None:
            # Redis is down: return at once; the next session subscribes and sends a Gap.
            return []
        return [
            self._confirmations.expect(channel)
            for channel in subscription.channels
            if channel in self._to_subscribe or channel in session.inflight
        ]

    def _unregister(self, subscription: Subscription) -> None:
        requested = self._session.requested if self._session is not None else ()
        for channel in self._fanout.remove(subscription):
            self._to_subscribe.discard(channel)
            if channel in requested:
                self._to_unsubscribe.add(channel)
            self._confirmations.confirm(channel)
        if self._to_unsubscribe:
            self._dirty.set()

    async def _open(self) -> AbstractConnection:
        """Open a dedicated pub/sub connection configured like the client's pool."""
        return await open_pubsub(self._client.connection_pool, handshake=self._subscribe_timeout)

    async def _open_session(self) -> Session:
        return Session(await self._open())

    async def _serve(self, session: Session) -> None:
        """Re-subscribe everything, then read and flush until the connection fails."""
        self._session = session
        self._to_unsubscribe.clear()
        self._to_subscribe = set(self._fanout.channels)
        reading = asyncio.create_task(self._read_loop(session), name="redis-broker-read")
        flushing = asyncio.create_task(self._flush_loop(session), name="redis-broker-flush")
        try:
            await session.watch({reading, flushing}, self._health_check_interval)
        finally:
            reading.cancel()
            flushing.cancel()
            await asyncio.gather(reading, flushing, return_exceptions=True)

    async def _end(self, session: Session) -> None:
        """Forget ``session``: not connected, waiting subscribers released, connection closed."""
        if self._session is session:
            self._session = None
        self._connected = False
        self._up.clear()
        self._confirmations.confirm_all()
        with contextlib.suppress(RedisError, OSError):
            await session.conn.disconnect(nowait=True)

    async def _flush_loop(self, session: Session) -> None:
        # The first flush re-subscribes every channel in use. Taking the set here, right before
        # that flush, makes it exactly what is sent, so every channel in it gets a reply.
        session.resync_left = set(self._to_subscribe)
        if not session.resync_left:
            self._resynced(session)
        while True:
            self._dirty.clear()
            await self._flush(session)
            await self._dirty.wait()

    async def _flush(self, session: Session) -> None:
        """Send the pending SUBSCRIBE / UNSUBSCRIBE commands in one write."""
        subscribe, unsubscribe = self._to_subscribe, self._to_unsubscribe
        if not subscribe and not unsubscribe:
            return
        self._to_subscribe, self._to_unsubscribe = set(), set()
        session.requested.difference_update(unsubscribe)
        session.requested.update(subscribe)
        inflight = session.inflight
        for channel in subscribe:
            inflight[channel] = inflight.get(channel, 0) + 1
        commands: list[tuple[str, ...]] = [
            ("UNSUBSCRIBE", *batch) for batch in _batches(unsubscribe)
        ]
        commands.extend(("SUBSCRIBE", *batch) for batch in _batches(subscribe))
        await session.send(session.conn.pack_commands(commands))

    async def _read_loop(self, session: Session) -> None:
        """Hand every message to the fanout; the hot path of the broker."""
        read = session.conn.read_response
        deliver = self._fanout.deliver
        while True:
            try:
                reply = await read(disconnect_on_error=False)
            except ResponseError as exc:
                # E.g. an ACL refusing a channel: the connection itself is still good.
                session.reads += 1
                logger.error("redis refused a pub/sub command: %s", exc)
                continue
            session.reads += 1
            if reply[0] == "message":
                deliver(reply[1], reply[2])
            else:
                self._on_reply(session, reply)

    def _on_reply(self, session: Session, reply: Any) -> None:
        match reply:
            case ["subscribe", str() as channel, _]:
                self._on_subscribed(session, channel)
            case ["unsubscribe", _, _] | ["pong", _]:
                pass
            case _:
                logger.warning("unexpected reply on the redis pub/sub connection: %.200r", reply)

    def _on_subscribed(self, session: Session, channel: str) -> None:
        left = session.resync_left
        if left is not None:
            left.discard(channel)
            if not left:
                self._resynced(session)
        count = session.inflight.get(channel, 0)
        if count > 1:
            session.inflight[channel] = count - 1
            return
        session.inflight.pop(channel, None)
        if channel in session.requested:
            self._confirmations.confirm(channel)

    def _resynced(self, session: Session) -> None:
        """Every channel in use is subscribed again: tell subscribers what they may have missed."""
        session.resync_left = None
        session.established = True
        self._connected = True
        self._up.set()
        self._fanout.gap_all("reconnected")
        logger.info("redis pub/sub connected; %d channel(s) subscribed", len(self._fanout.channels))


def _batches(channels: Iterable[str]) -> Iterator[tuple[str, ...]]:
    iterator = iter(channels)
    while batch := tuple(islice(iterator, BATCH_SIZE)):
        yield batch
