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

from gateways import (
    Gateway,
    GatewaysConfig,
    PhonePeConfig,
    SandboxConfig,
    StripeConfig,
    create_gateways,
)
from gateways.sandbox_server import SandboxServer, SandboxServerConfig
from reconciler.schedule import Schedule
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
    """Which gateways are configured: credentials present → offered."""
    stripe = None
    if settings.stripe_api_key and settings.stripe_webhook_secret:
        stripe = StripeConfig(
            api_key=settings.stripe_api_key, webhook_secret=settings.stripe_webhook_secret
        )
        if settings.stripe_api_base:
            stripe = dataclasses.replace(stripe, api_base=settings.stripe_api_base)
    phonepe = None
    if settings.phonepe_client_id or (settings.phonepe_merchant_id and settings.phonepe_salt_key):
        phonepe = PhonePeConfig(
            merchant_id=settings.phonepe_merchant_id,
            salt_key=settings.phonepe_salt_key,
            salt_index=settings.phonepe_salt_index,
            client_id=settings.phonepe_client_id,
            client_secret=settings.phonepe_client_secret,
            client_version=settings.phonepe_client_version,
            callback_username=settings.phonepe_callback_username,
            callback_password=settings.phonepe_callback_password,
            api_base=settings.phonepe_api_base,
            auth_base=settings.phonepe_auth_base,
        )
    sandbox_config = None
    if sandbox is not None:
        sandbox_config = SandboxConfig(
            api_base=public_url(settings) + SANDBOX_MOUNT,
            webhook_secret=sandbox.config.webhook_secret,
            api_key=settings.sandbox_api_key,
        )
    elif settings.sandbox_enabled:
        if settings.sandbox_api_base and not settings.sandbox_webhook_secret:
            raise ValueError("SANDBOX_WEBHOOK_SECRET: required with SANDBOX_API_BASE")
        # Without SANDBOX_API_BASE (a reconciler process beside a web process that mounts the
        # sandbox), the sandbox is at PUBLIC_URL/sandbox; with no secret, webhooks never verify.
        sandbox_config = SandboxConfig(
            api_base=settings.sandbox_api_base or public_url(settings) + SANDBOX_MOUNT,
            webhook_secret=settings.sandbox_webhook_secret or "",
            api_key=settings.sandbox_api_key,
        )
    return GatewaysConfig(stripe=stripe, phonepe=phonepe, sandbox=sandbox_config)


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
