"""The gateways this process offers, built from Settings, each on its own httpx client.

A gateway without credentials is simply not offered. On the embedded default (or SANDBOX=true
without SANDBOX_API_BASE) the bundled sandbox gateway runs inside this process, mounted under
``/sandbox``, and its signed webhooks come back over HTTP to this process's
``/webhooks/sandbox``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import secrets
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

import httpx

from gateways import Gateway, GatewaysConfig, SandboxConfig, create_gateways
from gateways.sandbox_server import SandboxServer, SandboxServerConfig
from orders.schedule import Schedule
from server.settings import Settings

SANDBOX_MOUNT = "/sandbox"


def public_url(settings: Settings) -> str:
    """Where gateways and browsers reach this process (PUBLIC_URL, else HOST:PORT)."""
    if settings.public_url:
        return settings.public_url.rstrip("/")
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
    return f"http://{host}:{settings.port}"


@dataclass(frozen=True, slots=True)
class Offered:
    """The gateway adapters, their schedules, and the in-process sandbox if there is one."""

    gateways: Mapping[str, Gateway]
    schedules: Mapping[str, Schedule]
    sandbox: SandboxServer | None


def in_process_sandbox(settings: Settings) -> SandboxServer | None:
    """The sandbox gateway to mount under /sandbox, or None (off, or elsewhere)."""
    if not settings.sandbox_enabled or settings.sandbox_api_base:
        return None
    base = public_url(settings)
    return SandboxServer(
        SandboxServerConfig(
            webhook_secret=settings.sandbox_webhook_secret or secrets.token_urlsafe(24),
            webhook_url=f"{base}/webhooks/sandbox",
            api_key=settings.sandbox_api_key,
            public_url=base + SANDBOX_MOUNT,
        )
    )


def gateways_config(settings: Settings, sandbox: SandboxServer | None) -> GatewaysConfig:
    """Which gateways are offered: those with credentials, and the sandbox when it is on."""
    config = settings.gateways_config()
    if not settings.sandbox_enabled:
        return dataclasses.replace(config, sandbox=None)
    if sandbox is not None:
        in_process = SandboxConfig(
            api_base=public_url(settings) + SANDBOX_MOUNT,
            webhook_secret=sandbox.config.webhook_secret,
            api_key=settings.sandbox_api_key,
        )
        return dataclasses.replace(config, sandbox=in_process)
    if config.sandbox is None:
        # A reconciler process beside a web process that mounts the sandbox: it is at
        # PUBLIC_URL/sandbox (with no secret here, a webhook would never verify; none comes).
        reachable = SandboxConfig(
            api_base=public_url(settings) + SANDBOX_MOUNT,
            webhook_secret=settings.sandbox_webhook_secret or "",
            api_key=settings.sandbox_api_key,
        )
        return dataclasses.replace(config, sandbox=reachable)
    return config


@contextlib.asynccontextmanager
async def open_gateways(
    settings: Settings, sandbox: SandboxServer | None = None
) -> AsyncIterator[Offered]:
    """Open one httpx client per configured gateway (explicit timeouts); close them on exit."""
    config = gateways_config(settings, sandbox)
    timeout = httpx.Timeout(settings.gateway_timeout, connect=settings.gateway_connect_timeout)
    async with contextlib.AsyncExitStack() as stack:
        clients = {
            name: await stack.enter_async_context(httpx.AsyncClient(timeout=timeout))
            for name in config.names
        }
        if sandbox is not None:
            await stack.enter_async_context(sandbox)
        schedules = {
            name: Schedule.parse(text)
            for name in config.names
            if (text := settings.poll_schedule(name))
        }
        yield Offered(create_gateways(config, clients), schedules, sandbox)
