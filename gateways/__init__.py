"""Payment gateway adapters (PhonePe, Stripe, the bundled sandbox) behind one interface.

A leaf package: it knows nothing of orders (an import-linter contract says so). The server and
the reconciler build the adapters once, in their lifespan, with one ``httpx.AsyncClient`` per
gateway::

    async with httpx.AsyncClient(timeout=GATEWAY_TIMEOUT) as client:
        gateways = create_gateways(config, {"sandbox": client})
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import httpx

from gateways.base import (
    Gateway,
    GatewayError,
    GatewayRejected,
    GatewayUnavailable,
    InvalidSignature,
    PaymentRequest,
    PaymentStart,
    PaymentState,
    PaymentStatus,
    RefundRequest,
    RefundState,
    RefundStatus,
    WebhookEvent,
)
from gateways.phonepe import PhonePeConfig, PhonePeGateway
from gateways.sandbox import SandboxConfig, SandboxGateway
from gateways.stripe import StripeConfig, StripeGateway

GATEWAY_TIMEOUT = httpx.Timeout(10.0, connect=3.0)
"""Default per-request bound: gateways answer in well under a second when healthy."""

__all__ = [
    "GATEWAY_TIMEOUT",
    "Gateway",
    "GatewayError",
    "GatewayRejected",
    "GatewayUnavailable",
    "GatewaysConfig",
    "InvalidSignature",
    "PaymentRequest",
    "PaymentStart",
    "PaymentState",
    "PaymentStatus",
    "PhonePeConfig",
    "RefundRequest",
    "RefundState",
    "RefundStatus",
    "SandboxConfig",
    "StripeConfig",
    "WebhookEvent",
    "create_gateways",
]


@dataclass(frozen=True, slots=True)
class GatewaysConfig:
    """Which gateways are offered: one without configuration is simply not there."""

    stripe: StripeConfig | None = None
    phonepe: PhonePeConfig | None = None
    sandbox: SandboxConfig | None = None

    @property
    def names(self) -> tuple[str, ...]:
        """The configured gateways' names, the keys ``create_gateways`` wants clients for."""
        pairs = (("phonepe", self.phonepe), ("sandbox", self.sandbox), ("stripe", self.stripe))
        return tuple(name for name, config in pairs if config is not None)


def create_gateways(
    config: GatewaysConfig, clients: Mapping[str, httpx.AsyncClient]
) -> dict[str, Gateway]:
    """One adapter per configured gateway, each on its own client from ``clients[name]``."""
    missing = [name for name in config.names if name not in clients]
    if missing:
        raise ValueError(f"no httpx client for gateway(s): {', '.join(missing)}")
    gateways: dict[str, Gateway] = {}
    if config.phonepe is not None:
        gateways["phonepe"] = PhonePeGateway(config.phonepe, client=clients["phonepe"])
    if config.sandbox is not None:
        gateways["sandbox"] = SandboxGateway(config.sandbox, client=clients["sandbox"])
    if config.stripe is not None:
        gateways["stripe"] = StripeGateway(config.stripe, client=clients["stripe"])
    return gateways
