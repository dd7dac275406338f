"""WebSocket and REST helpers whose every receive has a timeout."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import jwt
import orjson
from websockets.asyncio.client import ClientConnection

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


async def expect_silence(ws: ClientConnection, seconds: float) -> None:
    """Assert no message arrives for ``seconds``."""
    try:
        raw = await asyncio.wait_for(ws.recv(), seconds)
    except TimeoutError:
        return
    raise AssertionError(f"unexpected message: {raw!r}")


async def expect_close(ws: ClientConnection, timeout: float = 5.0) -> int:
    """Wait until the server closes ``ws``; the close code."""
    async with asyncio.timeout(timeout):
        try:
            while True:
                await ws.recv()
        except Exception:
            pass
    assert ws.close_code is not None
    return ws.close_code


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
