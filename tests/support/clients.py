"""WebSocket and REST helpers whose every receive has a timeout."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import jwt
import orjson
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

SECRET = "test-secret-0123456789-0123456789-abcdef"


def token(
    sub: str,
    *,
    role: str = "customer",
    store_id: str | None = None,
    ttl: float = 3600,
    secret: str = SECRET,
    algorithm: str = "HS256",
    **extra: Any,
) -> str:
    """A signed test token."""
    claims: dict[str, Any] = {"sub": sub, "role": role, "exp": int(time.time() + ttl), **extra}
    if store_id is not None:
        claims["store_id"] = store_id
    return jwt.encode(claims, secret, algorithm=algorithm)


def auth(tok: str) -> dict[str, str]:
    """The Authorization header for ``tok``."""
    return {"Authorization": f"Bearer {tok}"}


async def recv_json(ws: ClientConnection, timeout: float = 5.0) -> dict[str, Any]:
    """The next message as JSON; TimeoutError if none comes within ``timeout``."""
    raw = await asyncio.wait_for(ws.recv(), timeout)
    message = orjson.loads(raw)
    assert isinstance(message, dict)
    return message


async def recv_events(
    ws: ClientConnection, count: int, timeout: float = 10.0
) -> list[dict[str, Any]]:
    """Exactly ``count`` event messages (other message types are skipped)."""
    events: list[dict[str, Any]] = []
    deadline = asyncio.get_running_loop().time() + timeout
    while len(events) < count:
        remaining = deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            raise TimeoutError(f"got {len(events)} of {count} events")
        message = await recv_json(ws, remaining)
        if message["type"] == "event":
            events.append(message)
    return events


async def until_sentinel(
    ws: ClientConnection, write_sentinel: Callable[[], Awaitable[str]], timeout: float = 10.0
) -> list[dict[str, Any]]:
    """Every message that arrives before a sentinel event: the complete set, deterministically.

    ``write_sentinel`` writes one more event to the socket's stream *after* the events under
    test and returns its order id. Each stream is delivered in order, so once the sentinel's
    event arrives, everything sent before it has arrived too: no silence window to guess.
    """
    order_id = await write_sentinel()
    before: list[dict[str, Any]] = []
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        remaining = deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            raise TimeoutError(f"no sentinel {order_id} after {len(before)} messages: {before}")
        message = await recv_json(ws, remaining)
        if message.get("type") == "event" and message.get("order_id") == order_id:
            return before
        before.append(message)


async def frames_until_close(
    ws: ClientConnection, timeout: float = 5.0
) -> tuple[int, list[dict[str, Any]]]:
    """Read until the server closes ``ws``: the close code and every frame that came first."""
    frames: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout):
        try:
            while True:
                frames.append(orjson.loads(await ws.recv()))
        except ConnectionClosed:
            pass
    assert ws.close_code is not None
    return ws.close_code, frames


async def expect_close(ws: ClientConnection, timeout: float = 5.0) -> int:
    """Wait until the server closes ``ws``; the close code. Any frame before the close fails."""
    code, frames = await frames_until_close(ws, timeout)
    assert not frames, f"expected nothing but a close ({code}), got {frames}"
    return code


def order_body(
    store_id: str = "store-1", *, method: str = "cash", **overrides: Any
) -> dict[str, Any]:
    """A valid create-order body."""
    body: dict[str, Any] = {
        "store_id": store_id,
        "items": [{"sku": "tea", "name": "Masala tea", "quantity": 2, "unit_price": 1500}],
        "currency": "INR",
        "payment_method": method,
    }
    body.update(overrides)
    return body
