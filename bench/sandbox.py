"""``python -m bench.sandbox``: the sandbox gateway as its own process, for the benchmarks.

The same app as ``python -m gateways.sandbox_server`` (``create_app`` from ``SANDBOX_*``), but
uvicorn runs it at warning level with no access log, so that at thousands of requests a second
the sandbox spends its core on answering rather than on printing a line per request; and an
outer ASGI layer notes the arrival time of every status call (``GET /api/payments/{id}``),
served at ``GET /bench/arrivals``, so a rate limit can be checked over sliding windows and not
only per calendar second (``/control/stats``).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
import logging
import os
import time
from array import array
from collections.abc import Sequence
from typing import Any

import httpx
import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send

from bench import common
from gateways.sandbox_server import SandboxServerConfig, create_app

WEBHOOK_SECRET = "bench-sandbox-webhook-secret-0123456789"


def process(cpu: str | None, **env: str) -> common.ServerProcess:
    """A ``python -m bench.sandbox`` process on ``cpu`` (not started), signing with
    WEBHOOK_SECRET; extra ``SANDBOX_*`` variables in ``env``."""
    sandbox = common.ServerProcess(
        env={}, cpu=cpu, module="bench.sandbox", log_path=common.RESULTS / "sandbox.log"
    )
    sandbox.env = {
        "SANDBOX_HOST": "127.0.0.1",
        "SANDBOX_PORT": str(sandbox.port),
        "SANDBOX_WEBHOOK_SECRET": WEBHOOK_SECRET,
        **env,
    }
    return sandbox


async def wait_ready(sandbox: common.ServerProcess, timeout: float = 30.0) -> None:
    """Wait until the sandbox answers /control/stats."""
    assert sandbox.process is not None
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=2) as client:
        while time.monotonic() < deadline:
            if sandbox.process.poll() is not None:
                raise RuntimeError(f"sandbox exited:\n{sandbox.log_tail()}")
            with contextlib.suppress(httpx.TransportError):
                if (await client.get(sandbox.base + "/control/stats")).status_code == 200:
                    return
            await asyncio.sleep(0.1)
    raise TimeoutError(f"sandbox not ready after {timeout}s:\n{sandbox.log_tail()}")


async def get(sandbox: common.ServerProcess, path: str) -> Any:
    """GET a control route of the sandbox, as JSON."""
    async with httpx.AsyncClient(timeout=30) as client:
        response = await client.get(sandbox.base + path)
        response.raise_for_status()
        return response.json()


async def request_all(
    pool: common.HttpPool, requests: list[bytes], timeout: float = 300.0
) -> list[tuple[int, bytes]]:
    """Send every prebuilt request through ``pool`` at once; (status, body) of each, in order.

    Status 0 is a request that got no answer (the connection failed, or ``timeout``).
    """
    answers: list[tuple[int, bytes]] = [(0, b"no answer")] * len(requests)
    left = len(requests)
    done = asyncio.Event()
    if not left:
        return answers

    def callback_for(i: int) -> common.ResponseCallback:
        def on_answer(status: int, body: bytes, sent: float) -> None:
            nonlocal left
            answers[i] = (status, body)
            left -= 1
            if not left:
                done.set()

        return on_answer

    for i, request in enumerate(requests):
        pool.request(request, callback_for(i))
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(done.wait(), timeout)
    return answers


def max_in_window(times: Sequence[float], window: float = 1.0) -> int:
    """PURE: the most of ``times`` (sorted) inside any half-open window [t, t + window)."""
    best = 0
    for i, t in enumerate(times):
        best = max(best, bisect.bisect_left(times, t + window, lo=i) - i)
    return best


class Arrivals:
    """ASGI wrapper: records when each status call arrived; serves them at /bench/arrivals."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.times = array("d")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path = scope["path"]
            if scope["method"] == "GET" and path.startswith("/api/payments/"):
                self.times.append(time.time())
            elif path == "/bench/arrivals":
                body = json.dumps({"status_calls": self.times.tolist()}).encode()
                await send(
                    {
                        "type": "http.response.start",
                        "status": 200,
                        "headers": [
                            (b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


def main() -> None:
    """Serve the sandbox on SANDBOX_HOST:SANDBOX_PORT, quietly."""
    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "WARNING"))
    config = SandboxServerConfig.from_environ(os.environ)
    uvicorn.run(
        Arrivals(create_app(config)),
        host=config.host,
        port=config.port,
        log_level="warning",
        access_log=False,
    )


if __name__ == "__main__":
    main()
