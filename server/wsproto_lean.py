"""A lean uvicorn WebSocket protocol on websockets' sans-I/O ``ServerProtocol``.

uvicorn takes it by import string (``ws="server.wsproto_lean:LeanWebSocketProtocol"``,
``WS_IMPL=lean``). It serves the same ASGI websocket events as uvicorn's own implementations
(connect, accept with subprotocol and headers, receive and send of text and bytes, disconnect
and close with code and reason, the ``websocket.http.response`` denial extension) but keeps
per connection only what an open socket needs, because at 10,000 idle sockets uvicorn's
per-connection machinery was two thirds of the process's memory:

- ``__slots__``, and everything that is the same for every connection (the app, the limits, the
  loggers, the keep-alive timer) in one ``_Shared`` object per uvicorn server;
- the handshake request and its headers are dropped once the ASGI scope is built, and the 101
  response once it is sent; the scope's header names and common values are shared bytes;
- no ``asyncio.Queue`` and no ``Event``: an event for an app already waiting in ``receive()`` is
  handed to its future, others wait in a deque created on first need, and reading from the
  socket pauses (``pause_reading``) while ``ws_max_queue`` of them wait; a send waits on a future
  only while the transport has asked us to stop writing;
- no timer per connection: one shared wheel (a single ``loop.call_at`` for the whole server)
  drives keep-alive pings, their timeouts and the closing handshake's deadline.
"""

from __future__ import annotations

import asyncio
import collections
import email.utils
import logging
import os
import weakref
from collections.abc import Awaitable, Callable, Coroutine
from http import HTTPStatus
from typing import Any, cast
from urllib.parse import unquote

from uvicorn.config import Config
from uvicorn.protocols.utils import (
    ClientDisconnected,
    get_client_addr,
    get_local_addr,
    get_path_with_query_string,
    get_remote_addr,
    is_ssl,
)
from uvicorn.server import ServerState
from websockets.datastructures import Headers
from websockets.exceptions import InvalidState
from websockets.extensions.base import ServerExtensionFactory
from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory
from websockets.frames import Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import Protocol
from websockets.server import ServerProtocol

Message = dict[str, Any]
ASGIApp = Callable[
    [Message, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]],
    Coroutine[Any, Any, None],
]

logger = logging.getLogger("uvicorn.error")

#: How long the closing handshake may take before the TCP connection is aborted (seconds).
CLOSE_TIMEOUT = 10.0
# Same in every scope; ASGI apps read it, none writes it.
_EXTENSIONS: dict[str, Any] = {"websocket.http.response": {}}
# Header values that are the same on most connections are shared bytes objects, so 10,000
# scopes hold one b"websocket" rather than 10,000. Only these names, and a bounded number of
# distinct values, so a client cannot grow the cache.
_SHARED_VALUE_HEADERS = frozenset(
    {
        b"host",
        b"upgrade",
        b"connection",
        b"sec-websocket-version",
        b"sec-websocket-extensions",
        b"user-agent",
        b"origin",
        b"accept-encoding",
        b"pragma",
        b"cache-control",
        b"accept-language",
    }
)
_MAX_SHARED_VALUES = 1024
_names: dict[str, bytes] = {}
_values: dict[bytes, bytes] = {}

# Where a connection is in its life (one small int slot instead of several flags).
_CONNECTING = 0  # handshake request not (fully) received or not yet answered by the app
_OPEN = 1  # the app accepted
_CLOSING = 2  # a close frame was sent, or the handshake was refused: waiting for TCP to end
_CLOSED = 3  # the TCP connection is gone

# What the connection's slot on the wheel is for.
_TIMER_NONE = 0
_TIMER_PING = 1  # send a ping when due
_TIMER_PONG = 2  # the ping's pong is overdue when due
_TIMER_CLOSE = 3  # abort the TCP connection when due


class _Wheel:
    """One timer for every connection of a server: buckets of connections by due tick.

    A connection is in at most one bucket: rescheduling or closing takes it out of the one it
    was in (a dict per bucket, so that is O(1)), so a closed connection is freed at once
    rather than when its old tick comes round.
    """

    __slots__ = ("_loop", "_resolution", "_buckets", "_handle")

    def __init__(self, loop: asyncio.AbstractEventLoop, resolution: float) -> None:
        self._loop = loop
        self._resolution = resolution
        self._buckets: dict[int, dict[LeanWebSocketProtocol, None]] = {}
        self._handle: asyncio.TimerHandle | None = None

    def schedule(self, proto: LeanWebSocketProtocol, delay: float) -> int:
        """Put ``proto`` in the bucket due ``delay`` seconds from now; returns its tick."""
        tick = int((self._loop.time() + delay) / self._resolution) + 1
        bucket = self._buckets.get(tick)
        if bucket is None:
            self._buckets[tick] = {proto: None}
            if self._handle is None or tick * self._resolution < self._handle.when():
                self._arm(tick)
        else:
            bucket[proto] = None
        return tick

    def cancel(self, proto: LeanWebSocketProtocol, tick: int) -> None:
        """Take ``proto`` out of the bucket of ``tick`` (0: it is in none)."""
        bucket = self._buckets.get(tick)
        if bucket is not None:
            bucket.pop(proto, None)
            if not bucket:
                del self._buckets[tick]  # the timer, if armed for it, finds nothing due

    def _arm(self, tick: int) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._handle = self._loop.call_at(tick * self._resolution, self._fire)

    def _fire(self) -> None:
        self._handle = None
        # Half a tick of slack: the loop runs a timer up to its clock resolution early.
        now = int(self._loop.time() / self._resolution + 0.5)
        for tick in sorted(t for t in self._buckets if t <= now):
            for proto in self._buckets.pop(tick):
                proto._timer_due()
        if self._buckets:
            self._arm(min(self._buckets))


class _Shared:
    """What every connection of one uvicorn server has in common."""

    __slots__ = (
        "app",
        "asgi",
        "loop",
        "root_path",
        "app_state",
        "connections",
        "tasks",
        "default_headers",
        "max_size",
        "max_queue",
        "ping_interval",
        "ping_timeout",
        "extensions",
        "wheel",
        "log_access",
        "server",
    )

    def __init__(
        self, config: Config, server_state: ServerState, app_state: dict[str, Any]
    ) -> None:
        if not config.loaded:
            config.load()
        self.app = cast(ASGIApp, config.loaded_app)
        self.asgi = {"version": config.asgi_version, "spec_version": "2.4"}
        self.loop = asyncio.get_running_loop()
        self.root_path = config.root_path
        self.app_state = app_state
        self.connections = server_state.connections
        self.tasks = server_state.tasks
        self.default_headers = server_state.default_headers
        self.max_size = config.ws_max_size
        self.max_queue = max(1, config.ws_max_queue)
        interval = config.ws_ping_interval
        timeout = config.ws_ping_timeout
        self.ping_interval = interval if interval is not None and interval > 0 else None
        self.ping_timeout = timeout if timeout is not None and timeout > 0 else None
        self.extensions: list[ServerExtensionFactory] = []
        if config.ws_per_message_deflate:
            self.extensions.append(
                ServerPerMessageDeflateFactory(
                    server_max_window_bits=12,
                    client_max_window_bits=12,
                    compress_settings={"memLevel": 5},
                )
            )
        # A tick of a second (finer only for the short intervals tests use): the keep-alive
        # deadlines are tens of seconds, so a second of slack is nothing.
        spans = [CLOSE_TIMEOUT, *(s for s in (self.ping_interval, self.ping_timeout) if s)]
        self.wheel = _Wheel(self.loop, max(0.005, min(1.0, min(spans) / 4)))
        self.log_access = logger.isEnabledFor(logging.INFO)
        self.server: tuple[str, int | None] | None = None


_shared_by_server: weakref.WeakKeyDictionary[ServerState, _Shared] = weakref.WeakKeyDictionary()


def _shared(config: Config, server_state: ServerState, app_state: dict[str, Any]) -> _Shared:
    shared = _shared_by_server.get(server_state)
    if shared is None or shared.app_state is not app_state:
        shared = _Shared(config, server_state, app_state)
        _shared_by_server[server_state] = shared
    return shared


class LeanWebSocketProtocol(asyncio.Protocol):
    """One WebSocket connection under uvicorn: websockets' sans-I/O protocol, ASGI outside."""

    __slots__ = (
        "_shared",
        "_transport",
        "_ws",
        "_state",
        "_scope",
        "_response",
        "_inbox",
        "_receiver",
        "_drain",
        "_paused_reading",
        "_paused_writing",
        "_fragments",
        "_fragments_text",
        "_disconnect",
        "_tick",
        "_timer",
        "_ping",
        "_http_response",
    )

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        shared = _shared(config, server_state, app_state)
        self._shared = shared
        self._transport: asyncio.Transport = None  # type: ignore[assignment]
        self._ws = ServerProtocol(extensions=shared.extensions, max_size=shared.max_size)
        self._state = _CONNECTING
        # Until the handshake is answered: the scope (for the access log) and the 101 to send.
        self._scope: Message | None = None
        self._response: Response | None = None
        # Events the app has not asked for yet; None whenever there are none.
        self._inbox: collections.deque[Message] | None = None
        # The app waiting in receive() (the only future an idle connection holds).
        self._receiver: asyncio.Future[Message] | None = None
        # A send waiting for the transport to drain; only while it is paused.
        self._drain: asyncio.Future[None] | None = None
        self._paused_reading = False
        self._paused_writing = False
        self._fragments: list[bytes] | None = None
        self._fragments_text = False
        # The disconnect event, once there is one: every later receive() returns it again.
        self._disconnect: Message | None = None
        self._tick = 0
        self._timer = _TIMER_NONE
        self._ping: bytes | None = None
        # A denial response being assembled: status, headers, body so far.
        self._http_response: tuple[int, list[tuple[str, str]], bytes] | None = None

    # -- transport callbacks -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Register with the server (its shutdown walks these)."""
        self._transport = cast(asyncio.Transport, transport)
        self._shared.connections.add(self)  # type: ignore[arg-type]

    def data_received(self, data: bytes) -> None:
        """Feed the sans-I/O protocol and act on what it parsed."""
        ws = self._ws
        ws.receive_data(data)
        for event in ws.events_received():
            if isinstance(event, Frame):
                self._frame(event)
            elif isinstance(event, Request):
                self._request(event)
        if ws.parser_exc is not None and self._disconnect is None:
            # websockets has already failed the connection (1002, 1007, 1009, ...).
            close = ws.close_sent
            if self._state == _OPEN:
                self._state = _CLOSING
            if close is not None:
                self._deliver_disconnect(close.code, close.reason)
            else:
                self._deliver_disconnect(1006, "")
        self._flush()

    def eof_received(self) -> bool | None:
        """The peer half-closed: let the protocol see it; the transport then closes."""
        self._ws.receive_eof()
        self._flush()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        """The socket is gone: tell the app, wake a blocked send, and forget the connection."""
        self._shared.connections.discard(self)
        self._state = _CLOSED
        self._shared.wheel.cancel(self, self._tick)
        self._tick = 0
        self._ping = None
        if self._disconnect is None:
            close = self._ws.close_rcvd
            if close is not None:
                self._deliver_disconnect(close.code, close.reason)
            else:
                self._deliver_disconnect(1006, "")  # abnormal closure: no close frame
        drain = self._drain
        if drain is not None:
            self._drain = None
            if not drain.done():
                drain.set_result(None)
        self._response = None
        self._scope = None

    def pause_writing(self) -> None:
        """The transport's buffer is over its high-water mark: sends wait."""
        self._paused_writing = True

    def resume_writing(self) -> None:
        """The buffer drained: a waiting send goes on."""
        self._paused_writing = False
        drain = self._drain
        if drain is not None:
            self._drain = None
            if not drain.done():
                drain.set_result(None)

    def shutdown(self) -> None:
        """uvicorn is stopping: close with 1012 (clients reconnect elsewhere and resume)."""
        if self._state == _OPEN:
            self._deliver_disconnect(1012, "server restart")
            self._send_close(1012, "server restart")
        elif self._state == _CONNECTING:
            self._reject(HTTPStatus.SERVICE_UNAVAILABLE, "Server shutting down.\n")
        elif self._state == _CLOSING:
            self._transport.close()

    # -- incoming ------------------------------------------------------------------------

    def _request(self, request: Request) -> None:
        ws = self._ws
        response = ws.accept(request)
        if response.status_code != 101:
            # Not a valid WebSocket handshake (no key, wrong version...): answer and go.
            self._state = _CLOSING
            ws.send_response(response)
            self._flush()
            self._close_transport()
            return
        self._response = response
        if not ws.reader.buffer:
            # ServerProtocol.parse() holds the handshake Request (and its Headers) in its
            # generator frame for the socket's life; go on with the frame parser it delegates
            # to. (Safe while it waits for a first byte; a client that sent frames before
            # the 101 keeps the original.)
            ws.parser = Protocol.parse(ws)
            next(ws.parser)
        shared = self._shared
        transport = self._transport
        server = get_local_addr(transport)
        if server == shared.server:
            server = shared.server  # one tuple for every socket of the listener
        else:
            shared.server = server
        raw_path, _, query = request.path.partition("?")
        headers: list[tuple[bytes, bytes]] = []
        subprotocols: list[str] | tuple[()] = ()  # the list only when some are offered
        for key, value in request.headers.raw_items():
            name = _names.get(key)
            if name is None:
                name = key.lower().encode("ascii")
                if len(_names) < _MAX_SHARED_VALUES:
                    _names[key] = name
            raw = value.encode("latin-1")
            if name in _SHARED_VALUE_HEADERS:
                common = _values.get(raw)
                if common is None:
                    if len(_values) < _MAX_SHARED_VALUES:
                        _values[raw] = raw
                else:
                    raw = common
            elif name == b"sec-websocket-protocol":
                subprotocols = [*subprotocols, *(token.strip() for token in value.split(","))]
            headers.append((name, raw))
        root = shared.root_path
        scope: Message = {
            "type": "websocket",
            "asgi": shared.asgi,
            "http_version": "1.1",
            "scheme": "wss" if is_ssl(transport) else "ws",
            "server": server,
            "client": get_remote_addr(transport),
            "root_path": root,
            "path": root + unquote(raw_path),
            "raw_path": (root + raw_path).encode("ascii"),
            "query_string": query.encode("ascii"),
            "headers": headers,
            "subprotocols": subprotocols,
            "state": shared.app_state.copy(),
            "extensions": _EXTENSIONS,
        }
        if shared.log_access:
            self._scope = scope
        self._deliver({"type": "websocket.connect"})
        # The app's own coroutine is the task (no wrapper frame kept for the socket's life);
        # its outcome is handled when it is done.
        task = shared.loop.create_task(shared.app(scope, self.receive, self.send))
        shared.tasks.add(task)
        task.add_done_callback(self._app_done)

    def _frame(self, frame: Frame) -> None:
        opcode = frame.opcode
        if opcode is Opcode.TEXT or opcode is Opcode.BINARY:
            if frame.fin:
                self._message(bytes(frame.data), opcode is Opcode.TEXT)
            else:
                self._fragments = [bytes(frame.data)]
                self._fragments_text = opcode is Opcode.TEXT
        elif opcode is Opcode.CONT:
            fragments = self._fragments
            if fragments is None:  # websockets rejects a stray continuation before us
                return
            fragments.append(bytes(frame.data))
            if frame.fin:
                self._fragments = None
                self._message(b"".join(fragments), self._fragments_text)
        elif opcode is Opcode.PONG:
            if self._ping is not None and bytes(frame.data) == self._ping:
                self._ping = None
                self._schedule(_TIMER_PING, self._shared.ping_interval)
        elif opcode is Opcode.CLOSE:
            # websockets has queued the echo and the EOF; _flush() sends them and closes.
            close = self._ws.close_rcvd
            if self._state == _OPEN:
                self._state = _CLOSING
            if close is not None and self._disconnect is None:
                self._deliver_disconnect(close.code, close.reason)
        # PING: websockets queued the pong; _flush() writes it.

    def _message(self, data: bytes, text: bool) -> None:
        if self._state != _OPEN:
            return  # past our close frame: the app has had its disconnect
        if text:
            try:
                event: Message = {"type": "websocket.receive", "text": data.decode()}
            except UnicodeDecodeError:
                self._deliver_disconnect(1007, "invalid UTF-8")
                self._ws.fail(1007, "invalid UTF-8")  # data_received flushes it and the EOF
                self._state = _CLOSING
                return
        else:
            event = {"type": "websocket.receive", "bytes": data}
        self._deliver(event)

    def _deliver(self, event: Message) -> None:
        """Hand ``event`` to the app waiting in receive(), or queue it (pausing at the bound)."""
        receiver = self._receiver
        if receiver is not None:
            self._receiver = None
            if not receiver.done():
                receiver.set_result(event)
                return
        inbox = self._inbox
        if inbox is None:
            inbox = self._inbox = collections.deque()
        inbox.append(event)
        if (
            len(inbox) >= self._shared.max_queue
            and not self._paused_reading
            and self._state < _CLOSED
        ):
            self._paused_reading = True
            self._transport.pause_reading()

    def _deliver_disconnect(self, code: int, reason: str) -> None:
        event: Message = {"type": "websocket.disconnect", "code": code, "reason": reason}
        self._disconnect = event
        self._deliver(event)

    # -- the ASGI side -------------------------------------------------------------------

    def _app_done(self, task: asyncio.Task[None]) -> None:
        self._shared.tasks.discard(task)
        exc: BaseException | None = (
            asyncio.CancelledError() if task.cancelled() else task.exception()
        )
        if isinstance(exc, ClientDisconnected):
            return
        if exc is not None:
            logger.error("Exception in ASGI application\n", exc_info=exc)
            if self._state == _CONNECTING:
                self._reject(HTTPStatus.INTERNAL_SERVER_ERROR, "Internal Server Error\n")
            elif self._state == _OPEN:
                self._send_close(1011, "")
            elif self._state == _CLOSING:
                self._close_transport()
            return
        if self._state == _CONNECTING:
            logger.error("ASGI callable returned without completing handshake.")
            self._reject(HTTPStatus.INTERNAL_SERVER_ERROR, "Internal Server Error\n")
        elif self._state == _OPEN:
            # The app is done with an open socket: end it properly, not with a bare TCP close.
            self._send_close(1000, "")

    async def receive(self) -> Message:
        """The next ASGI event for the app."""
        inbox = self._inbox
        if inbox:
            event = inbox.popleft()
            if not inbox:
                # A deque is a 760-byte block: an idle socket keeps none (the connect event
                # alone, which no app waits for yet, would leave one behind).
                self._inbox = None
            if self._paused_reading and len(inbox) < self._shared.max_queue:
                self._paused_reading = False
                if self._state < _CLOSED:
                    self._transport.resume_reading()
            return event
        if self._disconnect is not None:
            return self._disconnect  # already delivered once; the socket stays gone
        receiver: asyncio.Future[Message] = self._shared.loop.create_future()
        self._receiver = receiver
        try:
            return await receiver
        finally:
            if self._receiver is receiver:
                self._receiver = None

    async def send(self, message: Message) -> None:
        """Carry out one ASGI send event."""
        kind = message["type"]
        state = self._state
        if state == _OPEN:
            if kind == "websocket.send":
                if self._paused_writing:
                    await self._wait_drain()
                    if self._state != _OPEN:
                        raise ClientDisconnected()
                data = message.get("bytes")
                try:
                    if data is not None:
                        self._ws.send_binary(data)
                    else:
                        self._ws.send_text(message["text"].encode())
                except InvalidState:
                    raise ClientDisconnected() from None
                self._flush()
            elif kind == "websocket.close":
                code = message.get("code") or 1000
                reason = message.get("reason") or ""
                self._deliver_disconnect(code, reason)
                self._send_close(code, reason)
            else:
                raise RuntimeError(
                    "Expected ASGI message 'websocket.send' or 'websocket.close',"
                    f" but got '{kind}'."
                )
        elif state == _CONNECTING and self._http_response is None:
            if kind == "websocket.accept":
                self._accept(message)
            elif kind == "websocket.close":
                self._log_access("403")
                self._deliver_disconnect(1006, "")
                self._reject(HTTPStatus.FORBIDDEN, "")
            elif kind == "websocket.http.response.start":
                status = message["status"]
                if not 100 <= status < 600:
                    raise RuntimeError(f"Invalid HTTP status code '{status}' in response.")
                self._log_access(str(status))
                headers = [
                    (name.decode("latin-1"), value.decode("latin-1"))
                    for name, value in message.get("headers", [])
                ]
                self._http_response = (status, headers, b"")
            else:
                raise RuntimeError(
                    "Expected ASGI message 'websocket.accept', 'websocket.close' "
                    f"or 'websocket.http.response.start' but got '{kind}'."
                )
        elif state == _CONNECTING:
            assert self._http_response is not None
            if kind != "websocket.http.response.body":
                raise RuntimeError(
                    f"Expected ASGI message 'websocket.http.response.body' but got '{kind}'."
                )
            status, headers, body = self._http_response
            body += message.get("body", b"")
            if message.get("more_body", False):
                self._http_response = (status, headers, body)
                return
            self._http_response = None
            response_headers = Headers(headers)
            response_headers.setdefault("Date", email.utils.formatdate(usegmt=True))
            response_headers.setdefault("Connection", "close")
            response_headers.setdefault("Content-Length", str(len(body)))
            response_headers.setdefault("Content-Type", "text/plain; charset=utf-8")
            self._deliver_disconnect(1006, "")
            self._finish_handshake(Response(status, _phrase(status), response_headers, body))
        elif state == _CLOSED and kind in ("websocket.send", "websocket.accept"):
            raise ClientDisconnected()
        elif kind == "websocket.close":
            return  # closing or closed already: nothing more to say
        else:
            raise ClientDisconnected()

    async def _wait_drain(self) -> None:
        drain = self._drain
        if drain is None:
            drain = self._drain = self._shared.loop.create_future()
        await drain

    def _accept(self, message: Message) -> None:
        response = self._response
        assert response is not None
        self._response = None
        self._log_access("[accepted]")
        headers = response.headers
        for drop in ("Date", "Server"):
            if drop in headers:
                del headers[drop]
        for name, value in (*self._shared.default_headers, *message.get("headers", ())):
            headers[name.decode("latin-1")] = value.decode("latin-1")
        subprotocol = message.get("subprotocol")
        if subprotocol:
            headers["Sec-WebSocket-Protocol"] = subprotocol
        if self._transport.is_closing():
            raise ClientDisconnected()
        self._ws.send_response(response)
        self._state = _OPEN
        self._flush()
        if self._shared.ping_interval is not None:
            self._schedule(_TIMER_PING, self._shared.ping_interval)

    def _log_access(self, outcome: str) -> None:
        scope = self._scope
        if scope is None:
            return
        self._scope = None
        # uvicorn's own line: the query string too (server/logs.py redacts tokens in it).
        logger.info(
            '%s - "WebSocket %s" %s',
            get_client_addr(scope),  # type: ignore[arg-type]
            get_path_with_query_string(scope),  # type: ignore[arg-type]
            outcome,
        )

    # -- outgoing ------------------------------------------------------------------------

    def _flush(self) -> None:
        """Write what the sans-I/O protocol has for the network; its EOF ends the TCP side."""
        writes = self._ws.data_to_send()
        if not writes or self._state == _CLOSED:
            return
        transport = self._transport
        eof = writes[-1] == b""
        if eof:
            writes.pop()
        if len(writes) == 1:
            transport.write(writes[0])
        elif writes:
            transport.write(b"".join(writes))
        if eof:
            self._close_transport()

    def _send_close(self, code: int, reason: str) -> None:
        try:
            self._ws.send_close(code, reason)
        except InvalidState:
            pass
        self._state = _CLOSING
        self._ping = None
        if self._paused_reading:
            # Read on, or the client's close reply would never be seen.
            self._paused_reading = False
            self._transport.resume_reading()
        self._flush()
        self._schedule(_TIMER_CLOSE, CLOSE_TIMEOUT)

    def _reject(self, status: HTTPStatus, text: str) -> None:
        if self._disconnect is None:
            self._deliver_disconnect(1006, "")
        self._finish_handshake(self._ws.reject(status, text))

    def _finish_handshake(self, response: Response) -> None:
        """Send a non-101 answer to the handshake and close (nothing stays behind)."""
        self._response = None
        self._scope = None
        self._state = _CLOSING
        try:
            self._ws.send_response(response)
        except InvalidState:
            pass
        self._flush()
        self._close_transport()

    def _close_transport(self) -> None:
        """Close the TCP connection, and abort it if the peer has not let it end in time."""
        self._transport.close()
        if self._state < _CLOSED and self._timer != _TIMER_CLOSE:
            self._schedule(_TIMER_CLOSE, CLOSE_TIMEOUT)

    # -- the wheel -----------------------------------------------------------------------

    def _schedule(self, timer: int, delay: float | None) -> None:
        self._shared.wheel.cancel(self, self._tick)
        if delay is None or self._state == _CLOSED:
            self._tick = 0
            self._timer = _TIMER_NONE
            return
        self._timer = timer
        self._tick = self._shared.wheel.schedule(self, delay)

    def _timer_due(self) -> None:
        timer = self._timer
        self._tick = 0
        self._timer = _TIMER_NONE
        if self._state == _CLOSED:
            return
        if timer == _TIMER_CLOSE:
            self._transport.abort()
        elif timer == _TIMER_PONG:
            if self._ping is None or self._state != _OPEN:
                return
            self._ping = None
            self._deliver_disconnect(1011, "keepalive ping timeout")
            self._ws.fail(1011, "keepalive ping timeout")
            self._state = _CLOSING
            self._flush()
            # The peer did not answer a ping: it will not read a close frame either.
            self._transport.abort()
        elif timer == _TIMER_PING and self._state == _OPEN:
            self._ping = os.urandom(4)
            try:
                self._ws.send_ping(self._ping)
            except InvalidState:
                return
            self._flush()
            shared = self._shared
            if shared.ping_timeout is not None:
                self._schedule(_TIMER_PONG, shared.ping_timeout)
            else:
                self._ping = None
                self._schedule(_TIMER_PING, shared.ping_interval)


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""
