"""The WebSocket hub: connections per user and per stream, and the /ws endpoint.

Per connection: authenticate, subscribe to the stream's channel, *then* read the backlog
(hello + replay), then a read loop (this task) and a write loop (one task) run side by side.
The write loop feeds every broker message through the connection's StreamCursor: the next seq
is sent, an old one dropped, a jump repaired from the database first. The broker's bounded
queue overflowing closes the client with 4408; it resumes with ``since`` and loses nothing.
While the broker is not delivering, one hub task polls the heads of the connected streams
every ``hub_poll_interval`` and pokes the connections that are behind.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Callable

from starlette.websockets import (
    WebSocket,
    WebSocketDisconnect,
    WebSocketDisconnected,
    WebSocketState,
)

from channels import Broker, Gap, Heartbeat, Message
from channels.base import SubscriptionLike
from orders import money
from orders.cursor import Action, StreamCursor
from orders.db import Database
from orders.hooks import NO_HOOKS, Hooks
from orders.metrics import Metrics
from orders.streams import (
    ensure_streams,
    event_ids_at,
    open_orders_of,
    position_problem,
    read_heads,
)
from server import protocol
from server.auth import AuthError, Principal, TokenVerifier, bearer_token, origin_allowed
from server.errors import CloseCode
from server.settings import Settings
from server.stream_reads import BATCH_STREAMS, Coalescer, LogRead, LogReads

logger = logging.getLogger(__name__)

_BACKFILL_PAGE = 500
#: A pong reads its stream's head from the database at most this often (seconds)...
_PING_REFRESH = 1.0
#: ...and waits for that read at most this long before answering from memory.
_PING_WAIT = 0.5
_POLL_SLICE = 500
# What one socket may send: a burst of 10 messages, then one a second (a client pings every
# ~15 s); beyond that it is closed with 4400.
CLIENT_MESSAGE_BURST = 10
CLIENT_MESSAGES_PER_SECOND = 1.0


class _Close(Exception):
    """Ends a connection with a close code (raised from deep inside its loops)."""

    def __init__(self, code: CloseCode, reason: str = "") -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class Connection:
    """One client socket: who it is, where its stream is, and its broker subscription."""

    __slots__ = ("ws", "principal", "stream", "epoch", "cursor", "sub", "allowance", "allowance_at")

    def __init__(self, ws: WebSocket, principal: Principal) -> None:
        self.ws = ws
        self.principal = principal
        self.stream = principal.stream
        self.epoch: str | None = None
        self.cursor: StreamCursor | None = None
        self.sub: SubscriptionLike | None = None
        # A token bucket of client messages (pings, auth refreshes).
        self.allowance = float(CLIENT_MESSAGE_BURST)
        self.allowance_at = time.monotonic()

    def take_message_allowance(self) -> bool:
        """Spend one client message from the bucket; False when the client is over its rate."""
        now = time.monotonic()
        self.allowance = min(
            float(CLIENT_MESSAGE_BURST),
            self.allowance + (now - self.allowance_at) * CLIENT_MESSAGES_PER_SECOND,
        )
        self.allowance_at = now
        if self.allowance < 1.0:
            return False
        self.allowance -= 1.0
        return True


class Hub:
    """All WebSocket connections of this process."""

    def __init__(
        self,
        *,
        db: Database,
        broker: Broker,
        heartbeat: Heartbeat,
        verifier: TokenVerifier,
        settings: Settings,
        metrics: Metrics,
        hooks: Hooks = NO_HOOKS,
    ) -> None:
        self._db = db
        self._broker = broker
        self._hooks = hooks
        self._heartbeat = heartbeat
        self._verifier = verifier
        self._settings = settings
        self._metrics = metrics
        self._by_user: defaultdict[str, set[Connection]] = defaultdict(set)
        self._by_stream: defaultdict[str, set[Connection]] = defaultdict(set)
        self._closing = False
        # Connection set-up reads the database; after a restart thousands of clients reconnect
        # at once. Queue them here rather than exhaust the pool (whose timeout would end in
        # 1011 closes).
        self._db_slots = asyncio.Semaphore(max(1, settings.db_pool_size))
        # The newest seq this hub knows of per connected stream (from the events it relays, its
        # backfills and its polls): pings are answered from here, never from the database.
        self._heads: dict[str, int] = {}
        # Pongs' head reads: one in flight per stream, at most one per _PING_REFRESH.
        self._head_reads: dict[str, asyncio.Task[None]] = {}
        self._head_read_at: dict[str, float] = {}
        # Set-up and repair reads, shared: the sockets of one stream (and the streams arriving
        # together) that ask at the same time get one read between them.
        self._snapshots: Coalescer[str, protocol.Snapshot] = Coalescer(
            self._read_snapshots, batch=BATCH_STREAMS
        )
        self._log = LogReads(db, self._db_slots, hooks, page=_BACKFILL_PAGE)
        self.opened_total = 0

    def channel(self, stream: str) -> str:
        """The broker channel carrying ``stream``."""
        return self._settings.redis_channel_prefix + stream

    # -- the endpoint -------------------------------------------------------------------------

    async def endpoint(self, ws: WebSocket) -> None:
        """Serve one /ws connection from handshake to close."""
        if self._closing:
            # Accept so the client reads 1012 ("reconnect elsewhere"), not a refused handshake.
            await ws.accept()
            await self._close(ws, CloseCode.SERVICE_RESTART, "server restart")
            return
        if not origin_allowed(
            ws.headers.get("origin"), ws.headers.get("host"), self._settings.allowed_origins
        ):
            logger.info("ws refused: origin %r not allowed", ws.headers.get("origin"))
            await ws.close(CloseCode.FORBIDDEN)  # before accept: an HTTP 403
            return
        token = bearer_token(ws.headers.get("authorization")) or ws.query_params.get("token")
        await ws.accept()
        try:
            principal: Principal | None = None
            if token:
                try:
                    principal = self._verifier.verify(token)
                except AuthError as exc:
                    # Accept, then close: a browser cannot read an HTTP 403 from a failed
                    # handshake, but it can read 4401 and fetch a new token.
                    raise _Close(CloseCode.UNAUTHENTICATED, str(exc)) from None
            query = ws.query_params
            since, epoch = _resume_position(query.get("since"), query.get("epoch"))
            last_event_id = _last_event_id(query.get("last_event_id"))
            if principal is None:
                principal = await self._first_message_auth(ws)
            await self._serve(ws, principal, since, epoch, last_event_id=last_event_id)
        except _Close as close:
            await self._close(ws, close.code, close.reason)
        except (WebSocketDisconnect, WebSocketDisconnected):
            pass
        except Exception:
            # E.g. the database is unreachable during the replay: close so the client resumes
            # elsewhere or later, rather than sit on a socket that will never speak.
            logger.exception("ws connection failed")
            await self._close(ws, CloseCode.INTERNAL_ERROR, "internal error")

    async def _first_message_auth(self, ws: WebSocket) -> Principal:
        try:
            async with asyncio.timeout(self._settings.ws_auth_timeout):
                message = await ws.receive()
        except TimeoutError:
            raise _Close(CloseCode.UNAUTHENTICATED, "no auth message") from None
        if message["type"] == "websocket.disconnect":
            raise WebSocketDisconnect(message.get("code", 1000))
        raw = message.get("text") or message.get("bytes") or ""
        try:
            parsed = protocol.parse_client_message(raw)
        except protocol.ProtocolError as exc:
            raise _Close(CloseCode.BAD_MESSAGE, str(exc)) from None
        if not isinstance(parsed, protocol.Auth):
            raise _Close(CloseCode.UNAUTHENTICATED, "first message must be auth")
        try:
            return self._verifier.verify(parsed.token)
        except AuthError as exc:
            raise _Close(CloseCode.UNAUTHENTICATED, str(exc)) from None

    async def _serve(
        self,
        ws: WebSocket,
        principal: Principal,
        since: int | None,
        epoch: str | None,
        *,
        last_event_id: int | None = None,
    ) -> None:
        user_key = f"{principal.role.value}:{principal.sub}"
        if len(self._by_user.get(user_key, ())) >= self._settings.ws_max_connections_per_user:
            raise _Close(CloseCode.TOO_MANY_CONNECTIONS, "too many connections")
        conn = Connection(ws, principal)
        self.opened_total += 1
        self._by_user[user_key].add(conn)
        self._by_stream[conn.stream].add(conn)
        self._metrics.ws_connections.inc()
        try:
            # Subscribe before reading the backlog, so an event committed in between is not missed.
            async with self._broker.subscribe(
                self.channel(conn.stream), maxsize=self._settings.ws_queue_size
            ) as sub:
                conn.sub = sub
                await self._hooks.after_subscribe(conn.stream)
                await self._start(conn, since, epoch, last_event_id=last_event_id)
                writer = asyncio.create_task(self._write_loop(conn, sub))
                try:
                    await self._read_loop(conn, writer)
                finally:
                    writer.cancel()
                    try:
                        await writer  # it handles its own errors; only our cancel comes back
                    except asyncio.CancelledError:
                        if asyncio.current_task().cancelling():  # type: ignore[union-attr]
                            raise
        finally:
            self._metrics.ws_connections.dec()
            _discard(self._by_user, user_key, conn)
            _discard(self._by_stream, conn.stream, conn)
            if conn.stream not in self._by_stream:
                self._heads.pop(conn.stream, None)
                self._head_read_at.pop(conn.stream, None)

    def _note_head(self, stream: str, seq: int) -> None:
        if seq > self._heads.get(stream, 0):
            self._heads[stream] = seq

    def known_head(self, stream: str) -> int:
        """The newest seq of ``stream`` this hub has seen (0 if none); no database read."""
        return self._heads.get(stream, 0)

    async def _ping_head(self, stream: str) -> int:
        """The head a pong reports: what this hub knows, refreshed from the database.

        Memory alone never hears of a publish the broker lost, so a ping on a quiet stream
        could not show the client it missed something (DESIGN §5). But pings must not cost a
        read each: one read per stream per ``_PING_REFRESH`` seconds is shared by every socket
        of the stream, and a pong waits for it at most ``_PING_WAIT`` (a database that is slow
        or locked leaves the answer to memory).
        """
        now = time.monotonic()
        read = self._head_reads.get(stream)
        if read is None and now - self._head_read_at.get(stream, -_PING_REFRESH) >= _PING_REFRESH:
            self._head_read_at[stream] = now
            read = asyncio.create_task(self._read_head_for_ping(stream))
            self._head_reads[stream] = read
            read.add_done_callback(lambda _: self._head_reads.pop(stream, None))
        if read is not None:
            try:
                async with asyncio.timeout(_PING_WAIT):
                    await asyncio.shield(read)
            except TimeoutError:
                pass  # answered from memory; the read goes on and updates the head
        return self.known_head(stream)

    async def _read_head_for_ping(self, stream: str) -> None:
        try:
            async with self._db_slots, self._db.read() as session:
                heads = await read_heads(session, [stream])
        except Exception:
            logger.warning("reading the head of %s for a pong failed", stream, exc_info=True)
            return
        head = heads.get(stream)
        if head is not None and stream in self._by_stream:
            self._note_head(stream, head.head_seq)

    def _poke_behind(self, stream: str, head_seq: int, reason: str) -> None:
        for conn in self._by_stream.get(stream, ()):
            if conn.cursor is not None and conn.sub is not None and conn.cursor.behind(head_seq):
                _poke(conn.sub, reason)

    # -- hello and replay ---------------------------------------------------------------------

    async def snapshot(self, stream: str) -> protocol.Snapshot:
        """The stream's head and its open orders, read in one database snapshot.

        At most ``SNAPSHOT_MAX_ORDERS`` orders; one more is read to know whether it was cut.
        Streams asked for together are read together (one snapshot, a few queries for all).
        """
        return await self._snapshots.get(stream)

    async def _read_snapshots(self, streams: list[str]) -> dict[str, protocol.Snapshot]:
        await self._hooks.before_stream_read("snapshot", streams)
        async with self._db_slots:
            snaps = await self._snapshot_batch(streams)
            missing = [stream for stream in streams if stream not in snaps]
            if missing:
                # Never written to: create them (seq 0), then read those again.
                async with self._db.transaction() as session:
                    await ensure_streams(session, missing)
                snaps.update(await self._snapshot_batch(missing))
        return snaps

    async def _snapshot_batch(self, streams: list[str]) -> dict[str, protocol.Snapshot]:
        limit = self._settings.snapshot_max_orders
        async with self._db.snapshot() as session, session.begin():
            heads = await read_heads(session, streams)
            for stream in heads:
                await self._hooks.after_snapshot_head(stream)
            # A stream at seq 0 has no event, so no order (an order's creation is an event of
            # both its streams): only the others need the next two queries.
            written = [stream for stream, head in heads.items() if head.head_seq > 0]
            orders = await open_orders_of(session, written, limit=limit + 1)
            head_event_ids = await event_ids_at(
                session, [(stream, heads[stream].head_seq) for stream in written]
            )
            # The totals from the same database snapshot as the orders and the heads.
            shown = [order for stream in written for order in orders[stream][:limit]]
            summaries = await money.summaries(session, shown)
        snaps: dict[str, protocol.Snapshot] = {}
        for stream, head in heads.items():
            listed = orders.get(stream, [])
            truncated = len(listed) > limit
            del listed[limit:]
            snaps[stream] = protocol.Snapshot(
                epoch=head.epoch,
                head_seq=head.head_seq,
                head_event_id=head_event_ids.get((stream, head.head_seq)),
                orders=[protocol.order_snapshot(order, summaries[order.id]) for order in listed],
                truncated=truncated,
                next_cursor=protocol.order_list_cursor(listed[-1])
                if truncated and listed
                else None,
            )
        return snaps

    async def _start(
        self,
        conn: Connection,
        since: int | None,
        epoch: str | None,
        *,
        last_event_id: int | None = None,
    ) -> None:
        """Send hello (or reset) and replay what the client missed; sets ``conn.cursor``."""
        if since is None:
            snap = await self.snapshot(conn.stream)
            await conn.ws.send_text(protocol.hello_with_snapshot(conn.stream, snap))
            self._place(conn, snap.epoch, snap.head_seq, snap.head_seq)
            return
        # One read for the hello and the replay both (shared with the stream's other sockets
        # asking now): the head, the events after since, and the event at since.
        check = last_event_id is not None and since > 0
        await self._hooks.before_backfill_read(conn.stream)
        read = await self._log.read(conn.stream, since, check=check)
        if read.head is None:
            await self.snapshot(conn.stream)  # never written to: creates it at seq 0
            read = await self._log.read(conn.stream, since, check=check)
        head = read.head
        problem = position_problem(head, epoch, since)
        if problem is None and check and read.event_id_at not in (None, last_event_id):
            # After a restore to an earlier point new events reuse seqs the client already
            # has: another event at since means its position is not on this log (a reset).
            problem = "reused"
        if problem is not None or head is None:
            snap = await self.snapshot(conn.stream)
            logger.info(
                "ws reset %s (%s): since=%s epoch=%s head=%s",
                conn.stream,
                problem,
                since,
                epoch,
                head,
            )
            await conn.ws.send_text(protocol.reset(conn.stream, snap))
            self._place(conn, snap.epoch, snap.head_seq, snap.head_seq)
            return
        await conn.ws.send_text(protocol.hello(conn.stream, head.epoch, head.head_seq))
        self._place(conn, head.epoch, head.head_seq, since)
        await self._backfill(conn, "resume", first=read)

    def _place(self, conn: Connection, epoch: str, head_seq: int, last: int) -> None:
        """Put the connection at ``last`` of the log (``epoch``, now at ``head_seq``)."""
        conn.epoch = epoch
        if conn.cursor is None:
            conn.cursor = StreamCursor(last)
        else:
            conn.cursor.restart(last)  # the write loop holds this cursor
        self._note_head(conn.stream, head_seq)

    async def _backfill(self, conn: Connection, reason: str, first: LogRead | None = None) -> None:
        """Send every event of the stream after the cursor, from the database.

        The reads are shared: every socket of the stream repairing at once (a broker
        reconnect, a poll) waits on one, and the heads of all those streams are one query.
        ``first``: the first page, already read (a resume reads it with the hello).
        """
        cursor = conn.cursor
        assert cursor is not None
        self._metrics.ws_backfills.labels(reason=reason).inc()
        while True:
            if first is None:
                await self._hooks.before_backfill_read(conn.stream)
                read = await self._log.read(conn.stream, cursor.last)
            else:
                read, first = first, None
            head, rows = read.head, read.rows
            await self._hooks.after_backfill_read(conn.stream, [seq for seq, _ in rows])
            problem = position_problem(head, conn.epoch, cursor.last)
            if problem is None and head is not None:
                self._note_head(conn.stream, head.head_seq)
                # A hole is never a writer still in flight: its seq and its position commit
                # together, and the stream row lock makes seq order commit order (on SQLite the
                # one writer lock does), so every seq up to a committed head is readable. Only
                # the log itself can have lost it: positions pruned after the retention check,
                # or rows deleted or restored from a backup under the connection.
                expected = min(head.head_seq - cursor.last, _BACKFILL_PAGE)
                contiguous = all(seq == cursor.last + 1 + i for i, (seq, _) in enumerate(rows))
                if len(rows) < expected or not contiguous:
                    problem = "hole"
            if problem is not None:
                await self._unfillable(conn, problem)
                return
            for seq, event in rows:
                await conn.ws.send_text(
                    protocol.dumps(protocol.event_payload(conn.stream, seq, event))
                )
                cursor.advance(seq)
                self._metrics.ws_backfilled_events.inc()
            if len(rows) < _BACKFILL_PAGE:
                return

    async def _unfillable(self, conn: Connection, cause: str) -> None:
        """The log cannot fill the client's hole: reset it onto a fresh snapshot, never silence.

        If even the snapshot cannot be read, the error closes the socket (1011) and the client
        resumes later; either way the outcome is counted.
        """
        assert conn.cursor is not None
        last = conn.cursor.last
        try:
            snap = await self.snapshot(conn.stream)
            await conn.ws.send_text(protocol.reset(conn.stream, snap))
        except Exception:
            self._metrics.ws_unfillable_gaps.labels(cause=cause, outcome="close").inc()
            raise
        logger.warning(
            "ws %s: the log cannot fill the gap after seq %d (%s); reset to seq %d",
            conn.stream,
            last,
            cause,
            snap.head_seq,
        )
        self._heads[conn.stream] = snap.head_seq  # the log may have gone back
        self._place(conn, snap.epoch, snap.head_seq, snap.head_seq)
        self._metrics.ws_unfillable_gaps.labels(cause=cause, outcome="reset").inc()

    # -- the two loops ------------------------------------------------------------------------

    async def _write_loop(self, conn: Connection, sub: SubscriptionLike) -> None:
        cursor = conn.cursor
        assert cursor is not None
        send = conn.ws.send_text
        heads = self._heads
        stream = conn.stream
        try:
            while True:
                item = await sub.get()
                if sub.overflowed:
                    self._metrics.ws_slow_consumer_closes.inc()
                    raise _Close(CloseCode.SLOW_CONSUMER, "slow consumer")
                if isinstance(item, Gap):
                    await self._backfill(conn, item.reason)
                    continue
                assert isinstance(item, Message)
                try:
                    seq, text = protocol.unpack(item.data)
                except ValueError:
                    logger.warning("dropping malformed broker message on %s", item.channel)
                    continue
                if seq > heads.get(stream, 0):
                    heads[stream] = seq
                decision = cursor.offer(seq)
                if decision.action is Action.BACKFILL:
                    await self._backfill(conn, "seq_jump")
                    decision = cursor.offer(seq)
                if decision.action is Action.DELIVER:
                    await send(text)
                    cursor.advance(seq)
                    self._metrics.ws_messages_sent.inc()
                elif decision.action is Action.DUPLICATE:
                    self._metrics.ws_duplicates_dropped.inc()
        except _Close as close:
            await self._close(conn.ws, close.code, close.reason)
        except (WebSocketDisconnect, WebSocketDisconnected):
            pass
        except Exception:
            # Whatever stopped delivery, the socket must not stay open and silent: closing it
            # ends the read loop too, and the client resumes with since.
            logger.exception("ws write loop failed on %s", conn.stream)
            await self._close(conn.ws, CloseCode.INTERNAL_ERROR, "internal error")

    async def _read_loop(self, conn: Connection, writer: asyncio.Task[None]) -> None:
        ws = conn.ws
        loop = asyncio.get_running_loop()
        leeway = self._settings.jwt_leeway
        while True:
            # The same leeway the token was accepted with, or a token let in by it would be
            # closed right after hello.
            lifetime = conn.principal.expires_at + leeway - time.time()
            deadline = loop.time() + max(0.0, lifetime)
            try:
                async with asyncio.timeout_at(deadline):
                    message = await ws.receive()
            except TimeoutError:
                raise _Close(CloseCode.UNAUTHENTICATED, "token expired") from None
            if message["type"] == "websocket.disconnect":
                return
            raw = message.get("text")
            if raw is None:
                raw = message.get("bytes") or b""
            if len(raw) > self._settings.ws_max_message_bytes:
                raise _Close(CloseCode.MESSAGE_TOO_BIG, "message too big")
            if not conn.take_message_allowance():
                raise _Close(CloseCode.BAD_MESSAGE, "too many messages")
            try:
                parsed = protocol.parse_client_message(raw)
            except protocol.ProtocolError as exc:
                raise _Close(CloseCode.BAD_MESSAGE, str(exc)) from None
            match parsed:
                case protocol.Ping():
                    assert conn.cursor is not None
                    head_seq = max(await self._ping_head(conn.stream), conn.cursor.last)
                    await ws.send_text(protocol.pong(head_seq))
                    # The pong told the client it is behind; now bring it what it missed.
                    self._poke_behind(conn.stream, head_seq, "ping")
                case protocol.Auth(token=token):
                    try:
                        fresh = self._verifier.verify(token)
                    except AuthError as exc:
                        raise _Close(CloseCode.UNAUTHENTICATED, str(exc)) from None
                    if fresh.stream != conn.stream or fresh.role is not conn.principal.role:
                        raise _Close(CloseCode.FORBIDDEN, "token is for another identity")
                    conn.principal = fresh
            if writer.done():
                return

    async def _close(self, ws: WebSocket, code: CloseCode, reason: str) -> None:
        if ws.application_state is WebSocketState.DISCONNECTED:
            return
        self._metrics.ws_closes.labels(code=str(int(code))).inc()
        try:
            await ws.close(int(code), reason[:120])
        except (RuntimeError, OSError):
            pass  # already closed under us (a disconnect raced the close)

    # -- degraded mode and shutdown -----------------------------------------------------------

    async def run_poller(self) -> None:
        """Poll stream heads while the broker is not delivering (and, slowly, always)."""
        settings = self._settings
        last_safety = time.monotonic()
        while True:
            await asyncio.sleep(settings.hub_poll_interval)
            delivering = self._heartbeat.delivering
            self._metrics.broker_delivering.set(1 if delivering else 0)
            now = time.monotonic()
            safety_due = (
                settings.hub_safety_poll_interval > 0
                and now - last_safety >= settings.hub_safety_poll_interval
            )
            if delivering and not safety_due:
                continue
            # On a Redis Cluster one shard may be down while the others deliver: poll only
            # the streams whose shard is not delivering (all of them on a safety poll).
            only = None if safety_due else self._not_delivering
            if safety_due:
                last_safety = now
            try:
                await self.poll_heads(only)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("polling stream heads failed; retrying")

    def _not_delivering(self, stream: str) -> bool:
        return not self._heartbeat.delivering_for(self.channel(stream))

    async def poll_heads(self, only: Callable[[str], bool] | None = None) -> int:
        """Poke every connection whose stream moved past its cursor (of the streams ``only``
        selects, default all); returns how many."""
        streams = [
            stream
            for stream, conns in self._by_stream.items()
            if conns and (only is None or only(stream))
        ]
        if not streams:
            return 0
        self._metrics.hub_polls.inc()
        poked = 0
        # In slices, yielding in between: 10,000 streams in one go would stall the event loop.
        for start in range(0, len(streams), _POLL_SLICE):
            async with self._db_slots, self._db.read() as session:
                heads = await read_heads(session, streams[start : start + _POLL_SLICE])
            for stream in streams[start : start + _POLL_SLICE]:
                head = heads.get(stream)
                if head is not None and stream in self._by_stream:  # not one that left meanwhile
                    self._note_head(stream, head.head_seq)
                for conn in list(self._by_stream.get(stream, ())):
                    if conn.cursor is None or conn.sub is None:
                        continue
                    # Behind: events to backfill. A position the log no longer holds (reset,
                    # restored, pruned under it): the backfill resets the client.
                    if (
                        head is None
                        or conn.cursor.behind(head.head_seq)
                        or position_problem(head, conn.epoch, conn.cursor.last) is not None
                    ):
                        _poke(conn.sub, "poll")
                        poked += 1
            await asyncio.sleep(0)
        return poked

    async def shutdown(self) -> None:
        """Close every connection with 1012 so clients reconnect elsewhere and resume."""
        self._closing = True
        conns = [conn for group in self._by_stream.values() for conn in group]
        await asyncio.gather(
            *(self._close(conn.ws, CloseCode.SERVICE_RESTART, "server restart") for conn in conns),
            return_exceptions=True,
        )


def _poke(sub: SubscriptionLike, reason: str) -> None:
    sub.put_gap(Gap(reason))


def _discard(index: defaultdict[str, set[Connection]], key: str, conn: Connection) -> None:
    group = index.get(key)
    if group is not None:
        group.discard(conn)
        if not group:
            del index[key]


def _resume_position(since: str | None, epoch: str | None) -> tuple[int | None, str | None]:
    if since is None or since == "":
        return None, epoch or None
    try:
        value = int(since)
    except ValueError:
        raise _Close(CloseCode.BAD_MESSAGE, "since must be an integer") from None
    if value < 0:
        raise _Close(CloseCode.BAD_MESSAGE, "since must not be negative")
    return value, epoch or None


def _last_event_id(raw: str | None) -> int | None:
    if raw is None or raw == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        raise _Close(CloseCode.BAD_MESSAGE, "last_event_id must be an integer") from None
    if value < 1:
        raise _Close(CloseCode.BAD_MESSAGE, "last_event_id must be positive")
    return value
