"""The package's public surface and its factory."""

from __future__ import annotations

import httpx
import pytest

import gateways
from gateways import (
    Gateway,
    GatewaysConfig,
    PhonePeConfig,
    SandboxConfig,
    StripeConfig,
    create_gateways,
)


def test_the_public_surface_is_small_and_pinned() -> None:
    assert sorted(gateways.__all__) == [
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
    for name in gateways.__all__:
        assert hasattr(gateways, name)


async def test_only_configured_gateways_are_offered_each_on_its_own_client() -> None:
    config = GatewaysConfig(
        stripe=StripeConfig(api_key="sk_test_1", webhook_secret="whsec_1"),
        phonepe=PhonePeConfig(client_id="c", client_secret="s"),
        sandbox=SandboxConfig(api_base="http://127.0.0.1:8001", webhook_secret="x"),
    )
    async with httpx.AsyncClient() as a, httpx.AsyncClient() as b, httpx.AsyncClient() as c:
        built = create_gateways(config, {"stripe": a, "phonepe": b, "sandbox": c})
        assert sorted(built) == ["phonepe", "sandbox", "stripe"]
        for name, gateway in built.items():
            assert isinstance(gateway, Gateway) and gateway.name == name
        only_sandbox = GatewaysConfig(sandbox=config.sandbox)
        assert list(create_gateways(only_sandbox, {"sandbox": c})) == ["sandbox"]
        assert create_gateways(GatewaysConfig(), {}) == {}
        with pytest.raises(ValueError, match="stripe"):
            create_gateways(GatewaysConfig(stripe=config.stripe), {"sandbox": c})
