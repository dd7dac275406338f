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


@pytest.mark.parametrize(
    ("config", "secrets"),
    [
        (StripeConfig(api_key="sk_live_SECRET1", webhook_secret="whsec_SECRET2"), 2),
        (
            PhonePeConfig(
                client_id="CLIENT",
                client_secret="SECRET1",
                callback_username="user",
                callback_password="SECRET2",
            ),
            2,
        ),
        (PhonePeConfig(merchant_id="M", salt_key="SECRET1"), 1),
        (SandboxConfig(api_base="http://sb", webhook_secret="SECRET1", api_key="SECRET2"), 2),
    ],
)
def test_every_gateway_config_repr_names_its_secrets_but_never_shows_them(
    config: object, secrets: int
) -> None:
    shown = repr(config)
    assert "SECRET" not in shown, shown
    assert shown.count("<redacted>") == secrets, shown
    assert shown.startswith(type(config).__name__ + "(")
    assert str(config) == shown


def test_a_config_repr_shows_what_is_not_secret_and_an_unset_secret_as_none() -> None:
    # An unset secret shows as None: the repr still tells "not configured" from "configured".
    shown = repr(SandboxConfig(api_base="http://sb/", webhook_secret="s"))
    assert shown == (
        "SandboxConfig(api_base='http://sb/', webhook_secret=<redacted>, api_key=None,"
        " tolerance=300)"
    )


def test_each_adapter_strips_the_trailing_slash_of_its_api_base() -> None:
    assert SandboxConfig(api_base="http://sb/", webhook_secret="s").resolved_api_base == "http://sb"
    stripe = StripeConfig(api_key="k", webhook_secret="s", api_base="https://s.test/")
    assert stripe.resolved_api_base == "https://s.test"
