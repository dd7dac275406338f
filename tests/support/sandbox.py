"""The bundled sandbox gateway under a real uvicorn, and a service wired to it over HTTP."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx

from gateways.sandbox_server import Chaos, SandboxServer, SandboxServerConfig, create_app
from tests.support.servers import IDLE_BEFORE_SERVER, serve_in_process

SANDBOX_SECRET = "whsec_sandbox_test_0123456789"


@dataclass
class Sandbox:
    """A running sandbox gateway: its URL, its state, and a client for its control API."""

    url: str
    server: SandboxServer
    http: httpx.AsyncClient

    def settings(self) -> dict[str, Any]:
        """Settings overrides that point a service at this sandbox."""
        return {
            "sandbox": True,
            "sandbox_api_base": self.url,
            "sandbox_webhook_secret": SANDBOX_SECRET,
        }

    async def act(self, ref: str, action: str) -> dict[str, Any]:
        """Approve / decline / leave pending / expire / cancel a payment at the gateway."""
        r = await self.http.post(f"/control/payments/{ref}/{action}")
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body

    async def chaos(self, **knobs: float) -> None:
        """Change the chaos knobs."""
        r = await self.http.put("/control/chaos", json=knobs)
        assert r.status_code == 200, r.text

    @property
    def status_calls(self) -> int:
        """How many status calls the sandbox has answered (chaos included)."""
        return int(self.server.stats["status_calls"])


@contextlib.asynccontextmanager
async def running_sandbox(
    chaos: Chaos | None = None, seed: int = 7, api_key: str | None = None
) -> AsyncIterator[Sandbox]:
    """Serve a fresh sandbox gateway on a free port."""
    app = create_app(
        SandboxServerConfig(
            webhook_secret=SANDBOX_SECRET, chaos=chaos or Chaos(), seed=seed, api_key=api_key
        )
    )
    server: SandboxServer = app.state.sandbox
    async with (
        serve_in_process(app) as running,
        httpx.AsyncClient(base_url=running.http, timeout=10, limits=IDLE_BEFORE_SERVER) as http,
    ):
        yield Sandbox(running.http, server, http)
