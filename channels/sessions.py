"""What the Redis brokers share about a pub/sub connection and its *sessions*.

``RedisBroker`` (one connection) and ``ClusterBroker`` (one per shard) both run a connection as
a series of sessions: open it, re-subscribe the channels in use, serve it until it breaks or
stops answering PING, then wait with exponential backoff and jitter and start the next one.
Both let a subscriber wait, with a timeout, for Redis to confirm its channels, and owe it a
``Gap("late subscribe")`` when the confirmation comes only after it stopped waiting. This module
is that shared part; what differs (one connection or a slot map of them, ``SUBSCRIBE`` or
``SSUBSCRIBE`` and their replies) stays in each broker.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Generic, TypeVar

from redis.asyncio import ConnectionPool
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from channels.base import Gap
from channels.fanout import Subscription

logger = logging.getLogger(__name__)

#: A connection to an unreachable Redis must fail within about this long.
CONNECT_TIMEOUT = 1.0

LATE_SUBSCRIBE = Gap("late subscribe")


class Session:
    """The state of one pub/sub connection, thrown away with it (brokers add their own)."""

    __slots__ = (
        "conn",
        "established",
        "inflight",
        "reads",
        "requested",
        "resync_left",
        "send_lock",
    )

    def __init__(self, conn: AbstractConnection) -> None:
        self.conn = conn
        # A fresh lock per connection: a send stuck on a dead socket must not block the next one.
        self.send_lock = asyncio.Lock()
        # Channels whose latest command on this connection was a subscribe.
        self.requested: set[str] = set()
        # Subscribe replies still expected per channel; a channel may be subscribed, unsubscribed
        # and subscribed again before the first reply arrives.
        self.inflight: dict[str, int] = {}
        # Channels of the initial re-subscription not yet confirmed; None once all are.
        self.resync_left: set[str] | None = None
        self.established = False
        # Counts replies, so the watchdog can tell an idle connection from a quiet one.
        self.reads = 0

    async def send(self, packed: list[bytes]) -> None:
        """Write packed commands, one writer at a time; RedisConnectionError once it closed."""
        conn = self.conn
        async with self.send_lock:
            # send_packed_command would silently reconnect a closed connection, without any of
            # our subscriptions on it.
            if not conn.is_connected:
                raise RedisConnectionError("pub/sub connection is closed")
            await conn.send_packed_command(packed, check_health=False)

    async def ping(self) -> None:
        """Send a PING (the watchdog's question to a connection that has gone quiet)."""
        await self.send(self.conn.pack_command("PING"))

    async def watch(self, tasks: set[asyncio.Task[None]], interval: float) -> None:
        """Return (by raising) when one of ``tasks`` ends or Redis stops answering PING."""
        seen = self.reads
        pinged = False
        while True:
            done, _ = await asyncio.wait(
                tasks, timeout=interval, return_when=asyncio.FIRST_COMPLETED
            )
            for task in done:
                task.result()
                raise RedisConnectionError(f"{task.get_name()} ended")
            if self.reads != seen:
                seen = self.reads
                pinged = False
                continue
            if pinged:
                raise RedisTimeoutError(f"no reply to PING within {interval:.1f}s")
            # A half-open TCP connection looks exactly like a quiet one until we ask.
            async with asyncio.timeout(interval):
                await self.ping()
            pinged = True


async def open_pubsub(pool: ConnectionPool, *, handshake: float) -> AbstractConnection:
    """A dedicated pub/sub connection configured like ``pool``'s, open within ``handshake`` s."""
    kwargs: dict[str, Any] = dict(pool.connection_kwargs)
    # Bound to the pool's connections, and only meaningful with RESP3.
    kwargs.pop("maint_notifications_pool_handler", None)
    kwargs.pop("maint_notifications_config", None)
    kwargs.update(
        # hiredis decodes each reply to str once, in C.
        decode_responses=True,
        encoding_errors="replace",
        protocol=2,
        # Reads wait for messages indefinitely; liveness is the watchdog's job.
        socket_timeout=None,
        # The session loop has its own backoff; a retry inside redis-py would hide a reconnect.
        retry=Retry(NoBackoff(), 0),
    )
    if kwargs.get("socket_connect_timeout") is None:
        kwargs["socket_connect_timeout"] = CONNECT_TIMEOUT
    conn = pool.connection_class(**kwargs)
    try:
        # Redis may accept TCP but never answer the handshake (CLIENT PAUSE, overload).
        async with asyncio.timeout(handshake):
            await conn.connect()  # type: ignore[no-untyped-call]  # redis-py lacks hints
    except BaseException:
        await conn.disconnect(nowait=True)
        raise
    return conn


S = TypeVar("S", bound=Session)


class Reconnecting(Generic[S]):
    """Serves sessions until cancelled, reconnecting with exponential backoff and jitter."""

    def __init__(
        self,
        *,
        reconnect_delay: float,
        max_reconnect_delay: float,
        on_down: Callable[[], None] = lambda: None,
    ) -> None:
        if not 0 < reconnect_delay <= max_reconnect_delay:
            raise ValueError("need 0 < reconnect_delay <= max_reconnect_delay")
        self._reconnect_delay = reconnect_delay
        self._max_reconnect_delay = max_reconnect_delay
        self._on_down = on_down

    def pause(self, delay: float) -> float:
        """``delay`` with jitter, capped: spreads the reconnects of many processes."""
        return min(self._max_reconnect_delay, delay * random.uniform(1.0, 1.5))

    async def run(
        self,
        open_session: Callable[[], Awaitable[S]],
        serve: Callable[[S], Awaitable[None]],
        end: Callable[[S], Awaitable[None]],
        *,
        lost: str,
        failed: str,
        first: S | None = None,
        open_first: bool = True,
    ) -> None:
        """Open, ``serve`` until it raises, ``end``; pause; again — until cancelled.

        ``lost`` and ``failed`` open the log lines of a session that broke and of a connect
        that failed. ``first`` is a session already open; without one, ``open_first`` says
        whether to open at once or only after the first pause (the caller's own attempt just
        failed). A session that got ``established`` resets the backoff; ``on_down`` runs after
        each failure.
        """
        session = first
        delay = self._reconnect_delay
        wait_first = first is None and not open_first
        while True:
            failure: tuple[str, Exception] | None = None
            if session is None and not wait_first:
                try:
                    session = await open_session()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    failure = (failed, exc)
            wait_first = False
            if session is not None:
                try:
                    await serve(session)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    failure = (lost, exc)
                finally:
                    await end(session)
                if session.established:
                    delay = self._reconnect_delay
                session = None
            self._on_down()
            pause = self.pause(delay)
            if failure is not None:
                _log_failure(*failure, pause)
            await asyncio.sleep(pause)
            delay = min(delay * 2, self._max_reconnect_delay)


class Confirmations:
    """One future per channel whose subscribe Redis has not confirmed yet, shared by waiters."""

    def __init__(self, *, timeout: float, who: str) -> None:
        self._timeout = timeout
        self._who = who
        self._futures: dict[str, asyncio.Future[None]] = {}

    def __len__(self) -> int:
        return len(self._futures)

    def expect(self, channel: str) -> asyncio.Future[None]:
        """The future ``channel``'s confirmation resolves (made on first ask)."""
        future = self._futures.get(channel)
        if future is None:
            future = asyncio.get_running_loop().create_future()
            self._futures[channel] = future
        return future

    def confirm(self, channel: str) -> None:
        """``channel`` is subscribed (or nobody needs to wait for it any more): release it."""
        future = self._futures.pop(channel, None)
        if future is not None and not future.done():
            future.set_result(None)

    def confirm_all(self, channels: Iterable[str] | None = None) -> None:
        """Release the waiters of ``channels`` (all, when None): their session ended."""
        for channel in list(self._futures) if channels is None else channels:
            self.confirm(channel)

    async def wait(self, subscription: Subscription, futures: list[asyncio.Future[None]]) -> None:
        """Wait up to the timeout; a channel confirmed later owes ``subscription`` a Gap."""
        # asyncio.wait never cancels the futures, which other subscribers may share.
        _, late = await asyncio.wait(futures, timeout=self._timeout)
        if not late:
            return
        logger.warning(
            "%s did not confirm %d channel(s) within %.1fs; continuing without",
            self._who,
            len(late),
            self._timeout,
        )

        # Whatever was published before the subscribe took effect is lost to this subscriber.
        def gap_when_confirmed(_: asyncio.Future[None]) -> None:
            subscription.put_gap(LATE_SUBSCRIBE)

        for future in late:
            future.add_done_callback(gap_when_confirmed)


def _log_failure(what: str, exc: Exception, pause: float) -> None:
    if isinstance(exc, (RedisError, OSError)):
        logger.warning("%s (%s); retrying in %.1fs", what, exc or type(exc).__name__, pause)
    else:
        logger.error("%s; retrying in %.1fs", what, pause, exc_info=exc)
