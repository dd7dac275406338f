"""The lean WebSocket protocol (server/wsproto_lean.py) for real: uvicorn, TCP, a websockets client.

A small Starlette app exercises the ASGI contract edge by edge; the hub's own close codes are
checked through the real service. Every receive has a timeout.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import inspect
import os
import secrets
import socket
import struct
from collections.abc import AsyncIterator
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from server.settings import WS_IMPLEMENTATIONS
from server.wsproto_lean import LeanWebSocketProtocol
from tests.conftest import StartService
from tests.support.clients import expect_close, order_body, recv_json, token
from tests.support.servers import Running, serve_in_process

LEAN = WS_IMPLEMENTATIONS["lean"]


class Probe:
    """The test app: what it saw (disconnects, flood progress), reachable from the test."""

    def __init__(self) -> None:
        self.disconnects: asyncio.Queue[tuple[str, int, str]] = asyncio.Queue()
        self.sent = 0
        self.release = asyncio.Event()
        self.calls = 0

    async def disconnected(self, timeout: float = 5.0) -> tuple[str, int, str]:
        return await asyncio.wait_for(self.disconnects.get(), timeout)

    def app(self) -> Starlette:
        async def echo(ws: WebSocket) -> None:
            self.calls += 1
            offered = ws.scope["subprotocols"]
            await ws.accept(
                subprotocol="chat" if "chat" in offered else None,
                headers=[(b"x-lean", b"yes")],
            )
            await ws.send_json(
                {
                    "path": ws.scope["path"],
                    "query": ws.scope["query_string"].decode(),
                    "user_agent": ws.headers.get("user-agent"),
                    "subprotocols": offered,
                }
            )
            while True:
                message = await ws.receive()
                if message["type"] == "websocket.disconnect":
                    await self.disconnects.put(
                        ("echo", message["code"], message.get("reason") or "")
                    )
                    return
                if message.get("text") is not None:
                    await ws.send_text(message["text"])
                else:
                    await ws.send_bytes(message["bytes"])

        async def close(ws: WebSocket) -> None:
            await ws.accept()
            await ws.close(int(ws.path_params["code"]), "closed by the app")

        async def deny(ws: WebSocket) -> None:
            self.calls += 1
            await ws.send_denial_response(PlainTextResponse("not you", status_code=401))

        async def flood(ws: WebSocket) -> None:
            await ws.accept()
            chunk = secrets.token_urlsafe(12_000)
            try:
                while True:
                    await ws.send_text(chunk)
                    self.sent += 1
            except WebSocketDisconnect as exc:
                await self.disconnects.put(("flood", exc.code, ""))

        async def stall(ws: WebSocket) -> None:
            await ws.accept()
            await self.release.wait()  # the client's messages pile up meanwhile
            got = 0
            while True:
                message = await ws.receive()
                if message["type"] == "websocket.disconnect":
                    return
                got += 1
                await ws.send_text(str(got))

        async def boom(ws: WebSocket) -> None:
            if ws.query_params.get("after") == "accept":
                await ws.accept()
            raise RuntimeError("the app failed")

        return Starlette(
            routes=[
                WebSocketRoute("/boom", boom),
                WebSocketRoute("/echo", echo),
                WebSocketRoute("/close/{code:int}", close),
                WebSocketRoute("/deny", deny),
                WebSocketRoute("/flood", flood),
                WebSocketRoute("/stall", stall),
            ]
        )


@contextlib.asynccontextmanager
async def lean(probe: Probe, **config: Any) -> AsyncIterator[Running]:
    options: dict[str, Any] = {
        "ws": LEAN,
        "ws_max_size": 4096,
        "ws_per_message_deflate": False,  # as the service runs (WS_PER_MESSAGE_DEFLATE)
        "lifespan": "off",
    }
    options.update(config)
    async with serve_in_process(probe.app(), **options) as running:
        yield running


def protocols(running: Running) -> list[LeanWebSocketProtocol]:
    assert running.server is not None
    # (HTTP connections are in the same set.)
    connections: set[object] = set(running.server.server_state.connections)
    return [c for c in connections if isinstance(c, LeanWebSocketProtocol)]


async def until(predicate: Any, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


async def raw_handshake(running: Running, path: str, *, key: bool = True) -> socket.socket:
    """A plain TCP socket that sent a WebSocket upgrade request (with or without a key)."""
    port = int(running.http.rsplit(":", 1)[1])
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Version: 13",
    ]
    if key:
        lines.append(f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}")
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    return sock


async def read_until_eof(sock: socket.socket, timeout: float = 5.0) -> bytes:
    loop = asyncio.get_running_loop()
    sock.setblocking(False)
    data = b""
    async with asyncio.timeout(timeout):
        while True:
            chunk = await loop.sock_recv(sock, 65536)
            if not chunk:
                return data
            data += chunk


async def read_first_frame(sock: socket.socket, timeout: float = 5.0) -> bytes:
    """Read the 101 response and the server's first frame (a small one); its payload."""
    loop = asyncio.get_running_loop()
    sock.setblocking(False)
    data = b""
    async with asyncio.timeout(timeout):
        while True:
            head, _, rest = data.partition(b"\r\n\r\n")
            if len(rest) >= 2 and len(rest) >= 2 + (rest[1] & 0x7F):
                assert rest[1] & 0x7F < 126, "test frames are small"
                assert head.startswith(b"HTTP/1.1 101 ")
                return rest[2 : 2 + (rest[1] & 0x7F)]
            chunk = await loop.sock_recv(sock, 65536)
            assert chunk, "the server closed before its first frame"
            data += chunk


def server_frames(data: bytes) -> list[tuple[int, bytes]]:
    """Split unmasked server frames (payloads under 126 bytes) into (opcode, payload)."""
    frames = []
    while data:
        length = data[1] & 0x7F
        assert length < 126, "test frames are small"
        frames.append((data[0] & 0x0F, data[2 : 2 + length]))
        data = data[2 + length :]
    return frames


# -- handshake -----------------------------------------------------------------------------


async def test_the_handshake_negotiates_the_subprotocol_and_sends_the_apps_headers() -> None:
    probe = Probe()
    async with lean(probe) as running:
        async with connect(
            running.ws + "/echo?a=1&b=%20",
            subprotocols=["other", "chat"],  # type: ignore[list-item]
            user_agent_header="lean-test/1",
        ) as ws:
            assert ws.subprotocol == "chat"
            assert ws.response is not None
            assert ws.response.headers["x-lean"] == "yes"
            assert ws.response.headers["server"] == "uvicorn"
            hello = await recv_json(ws)
            assert hello == {
                "path": "/echo",
                "query": "a=1&b=%20",
                "user_agent": "lean-test/1",
                "subprotocols": ["other", "chat"],
            }
            # The handshake's request and 101 response are not kept for the socket's life.
            (proto,) = protocols(running)
            assert proto._response is None and proto._scope is None
            assert "request" not in inspect.getgeneratorlocals(proto._ws.parser)


async def test_a_denial_response_is_sent_as_http_and_nothing_is_left() -> None:
    probe = Probe()
    async with lean(probe) as running:
        with pytest.raises(InvalidStatus) as raised:
            async with connect(running.ws + "/deny"):
                pass
        assert raised.value.response.status_code == 401
        assert raised.value.response.body == b"not you"
        await until(lambda: not protocols(running))
        assert running.server is not None
        await until(lambda: not running.server.server_state.tasks)


async def test_an_invalid_handshake_is_answered_400_and_nothing_is_left() -> None:
    probe = Probe()
    async with lean(probe) as running:
        sock = await raw_handshake(running, "/echo", key=False)
        try:
            answer = await read_until_eof(sock)
        finally:
            sock.close()
        assert answer.startswith(b"HTTP/1.1 400 "), answer[:80]
        await until(lambda: not protocols(running))
        assert running.server is not None
        assert not running.server.server_state.tasks
        assert probe.calls == 0  # the app never saw it


async def test_an_app_that_fails_is_a_500_before_accept_and_a_1011_after() -> None:
    probe = Probe()
    async with lean(probe) as running:
        with pytest.raises(InvalidStatus) as raised:
            async with connect(running.ws + "/boom"):
                pass
        assert raised.value.response.status_code == 500
        async with connect(running.ws + "/boom?after=accept") as ws:
            assert await expect_close(ws) == 1011
        await until(lambda: not protocols(running))
        assert running.server is not None
        await until(lambda: not running.server.server_state.tasks)


# -- messages ------------------------------------------------------------------------------


async def test_text_and_binary_go_both_ways_and_fragments_are_joined() -> None:
    probe = Probe()
    async with lean(probe) as running, connect(running.ws + "/echo") as ws:
        await recv_json(ws)
        await ws.send("héllo")
        assert await asyncio.wait_for(ws.recv(), 5) == "héllo"
        await ws.send(b"\x00\xffbin")
        assert await asyncio.wait_for(ws.recv(), 5) == b"\x00\xffbin"
        # A fragmented text message (a multi-byte character split across frames) and a
        # fragmented binary one arrive at the app whole.
        await ws.send(["frag", "mé", "nts"])
        assert await asyncio.wait_for(ws.recv(), 5) == "fragménts"
        await ws.send([b"\x01", b"\x02\x03"])
        assert await asyncio.wait_for(ws.recv(), 5) == b"\x01\x02\x03"


async def test_an_oversized_message_closes_1009_and_the_app_hears_it() -> None:
    probe = Probe()
    async with lean(probe, ws_max_size=1024) as running, connect(running.ws + "/echo") as ws:
        await recv_json(ws)
        await ws.send("x" * 1024)  # at the limit: fine
        assert await asyncio.wait_for(ws.recv(), 5) == "x" * 1024
        await ws.send(["x" * 600, "x" * 600])  # over it, in fragments
        assert await expect_close(ws) == 1009
        _, code, _ = await probe.disconnected()
        assert code == 1009
        await until(lambda: not protocols(running))


async def test_invalid_utf8_text_closes_1007() -> None:
    probe = Probe()
    async with lean(probe) as running:
        sock = await raw_handshake(running, "/echo")
        try:
            sock.setblocking(False)
            loop = asyncio.get_running_loop()
            async with asyncio.timeout(5):
                head = b""
                while b"\r\n\r\n" not in head:
                    head += await loop.sock_recv(sock, 4096)
            assert head.startswith(b"HTTP/1.1 101 ")
            payload = b"\xff\xfe"
            mask = os.urandom(4)
            masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            await loop.sock_sendall(sock, bytes([0x81, 0x80 | len(payload)]) + mask + masked)
            rest = await read_until_eof(sock)
        finally:
            sock.close()
        frames = server_frames(rest)
        assert frames[-1][0] == 0x8
        assert struct.unpack("!H", frames[-1][1][:2])[0] == 1007
        _, code, _ = await probe.disconnected()
        assert code == 1007


async def test_the_apps_receive_queue_is_bounded_by_pausing_the_socket() -> None:
    probe = Probe()
    async with lean(probe, ws_max_queue=8) as running, connect(running.ws + "/stall") as ws:
        n = 2000
        for i in range(n):
            await ws.send(f"{i:04d}" + secrets.token_hex(498))  # 2 MB in all
        (proto,) = protocols(running)
        await until(lambda: proto._paused_reading)
        # The transport has stopped reading the socket: nothing more reaches Python until it
        # resumes, so the inbox seen now is as large as it gets, however long we look.
        assert not proto._transport.is_reading()
        # What waits in Python is ws_max_queue messages plus what one socket read (256 KiB)
        # held; the rest stays in the kernel's buffers.
        assert proto._inbox is not None and len(proto._inbox) <= 8 + 256 * 1024 // 1000 + 1
        probe.release.set()
        replies = [await asyncio.wait_for(ws.recv(), 5) for _ in range(n)]
        assert replies == [str(i) for i in range(1, n + 1)]  # none lost, in order
        assert not proto._paused_reading


# -- closing -------------------------------------------------------------------------------


async def test_the_clients_close_code_and_reason_reach_the_app() -> None:
    probe = Probe()
    async with lean(probe) as running:
        async with connect(running.ws + "/echo") as ws:
            await recv_json(ws)
            await ws.close(4000, "done here")
        assert await probe.disconnected() == ("echo", 4000, "done here")
        await until(lambda: not protocols(running))


@pytest.mark.parametrize("code", [4408, 4401, 1012, 1000])
async def test_the_apps_close_code_and_reason_reach_the_client(code: int) -> None:
    probe = Probe()
    async with lean(probe) as running:
        async with connect(running.ws + f"/close/{code}") as ws:
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 5)
            assert ws.close_code == code
            assert ws.close_reason == "closed by the app"
        await until(lambda: not protocols(running))


async def test_shutdown_closes_open_sockets_with_1012() -> None:
    probe = Probe()
    async with lean(probe) as running:
        ws = await connect(running.ws + "/echo")
        await recv_json(ws)
        assert running.server is not None
        running.server.should_exit = True
        assert await expect_close(ws, timeout=10) == 1012
        assert ws.close_reason == "server restart"
        assert await probe.disconnected() == ("echo", 1012, "server restart")


async def test_an_abrupt_tcp_reset_is_a_1006_disconnect_and_leaves_nothing() -> None:
    probe = Probe()
    async with lean(probe) as running:
        sock = await raw_handshake(running, "/echo")
        await until(lambda: len(protocols(running)) == 1)
        await read_first_frame(sock)  # the app accepted and sent its hello: the socket is open
        # SO_LINGER 0: close() sends a RST, not a FIN.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
        _, code, _ = await probe.disconnected()
        assert code == 1006
        await until(lambda: not protocols(running))
        assert running.server is not None
        await until(lambda: not running.server.server_state.tasks)


# -- keep-alive ----------------------------------------------------------------------------


async def test_a_peer_that_answers_pings_stays_and_one_that_does_not_is_dropped() -> None:
    probe = Probe()
    async with lean(probe, ws_ping_interval=0.2, ws_ping_timeout=0.3) as running:
        # websockets answers our pings itself (its own keep-alive off): it outlives many rounds.
        async with connect(running.ws + "/echo", ping_interval=None) as alive:
            await recv_json(alive)
            sock = await raw_handshake(running, "/echo")  # a peer that never sends a pong
            try:
                data = await read_until_eof(sock, timeout=5)
            finally:
                sock.close()
            assert data.startswith(b"HTTP/1.1 101 ")
            frames = server_frames(data.split(b"\r\n\r\n", 1)[1])
            opcodes = [opcode for opcode, _ in frames]
            assert opcodes == [0x1, 0x9, 0x8], opcodes  # hello, a ping, then the close
            assert struct.unpack("!H", frames[-1][1][:2])[0] == 1011
            _, code, reason = await probe.disconnected()
            assert (code, reason) == (1011, "keepalive ping timeout")
            # The answering peer went through the same rounds and is still served.
            await alive.send("still here")
            assert await asyncio.wait_for(alive.recv(), 5) == "still here"


async def test_a_closed_connection_is_released_at_once_not_when_its_ping_was_due() -> None:
    probe = Probe()
    # A ping a minute away: a closed connection left on the timer wheel would live that long.
    async with lean(probe, ws_ping_interval=60, ws_ping_timeout=60) as running:
        async with connect(running.ws + "/echo", ping_interval=None) as ws:
            await recv_json(ws)
            (proto,) = protocols(running)
            # (No weak reference: the protocol's __slots__ leave that out, 8 bytes a socket.)
            its_id = id(proto)
            del proto
            await ws.close(1000)
        assert await probe.disconnected() == ("echo", 1000, "")
        await until(lambda: not protocols(running))
        assert running.server is not None
        await until(lambda: not running.server.server_state.tasks)
        gc.collect()
        left = [o for o in gc.get_objects() if isinstance(o, LeanWebSocketProtocol)]
        assert its_id not in map(id, left), gc.get_referrers(*left)


# -- back-pressure -------------------------------------------------------------------------


async def test_a_client_that_stops_reading_blocks_the_apps_sends_with_bounded_memory() -> None:
    probe = Probe()
    async with lean(probe) as running:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", int(running.http.rsplit(":", 1)[1])))
        async with connect(running.ws + "/flood", sock=sock, max_queue=1, max_size=None) as ws:
            await asyncio.wait_for(ws.recv(), 5)
            (proto,) = protocols(running)
            # The app's next send is parked on the drain future, which only the transport's
            # resume_writing (its buffer drained below the low-water mark, so the client read)
            # completes: no silence window is needed to know it sends nothing more.
            await until(lambda: proto._paused_writing and proto._drain is not None)
            stuck_at = probe.sent
            drain = proto._drain
            assert drain is not None and not drain.done() and proto._paused_writing
            # The buffer stays at the transport's high-water mark plus one message, however
            # long the client does not read.
            assert proto._transport.get_write_buffer_size() <= 64 * 1024 + 16 * 1024
            assert probe.sent == stuck_at
        # The client went away: the blocked send ends with a disconnect, not a hang.
        _, code, _ = await probe.disconnected()
        assert code in (1000, 1006)
        await until(lambda: not protocols(running))


async def test_the_hub_closes_a_reader_that_stopped_4408_with_bounded_memory(
    start_service: StartService,
) -> None:
    service = await start_service(ws_queue_size=4, max_body_bytes=200_000)
    big = [
        {"sku": secrets.token_urlsafe(70), "name": secrets.token_urlsafe(150), "quantity": 1}
        | {"unit_price": 1}
        for _ in range(100)
    ]
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", int(service.running.http.rsplit(":", 1)[1])))
    url = f"{service.ws_url}?token={token('ida')}"
    async with connect(url, sock=sock, max_queue=1, max_size=None) as ws:
        await recv_json(ws)
        biggest = 0
        for _ in range(120):
            r = await service.http.post(
                "/api/orders",
                json=order_body(items=big),
                headers={"Authorization": f"Bearer {token('ida')}"},
            )
            assert r.status_code == 201, r.text
            for proto in protocols(service.running):
                biggest = max(biggest, proto._transport.get_write_buffer_size())
        # ~35 KB an event, 4 MB written: the server held at most its high-water mark plus one
        # event for this socket while the client did not read.
        assert 0 < biggest <= 64 * 1024 + 64 * 1024
        code = None
        async with asyncio.timeout(30):
            try:
                while True:
                    await ws.recv()
            except ConnectionClosed:
                code = ws.close_code
    assert code == 4408


async def test_the_hub_closes_a_bad_token_4401_and_a_shutdown_1012(
    start_service: StartService,
) -> None:
    service = await start_service()
    async with connect(f"{service.ws_url}?token=not-a-token") as ws:
        assert await expect_close(ws) == 4401
    ws = await connect(f"{service.ws_url}?token={token('ivy')}")
    assert (await recv_json(ws))["type"] == "hello"
    assert service.running.server is not None
    service.running.server.should_exit = True
    assert await expect_close(ws, timeout=10) == 1012
