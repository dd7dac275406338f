"""A valid webhook of one gateway is refused by every other gateway's adapter."""

from __future__ import annotations

import hashlib
import json
import time

import httpx
import pytest

from gateways import signing
from gateways.base import Gateway, InvalidSignature
from gateways.phonepe import PhonePeConfig, PhonePeGateway
from gateways.sandbox import SandboxConfig, SandboxGateway
from gateways.stripe import StripeConfig, StripeGateway
from tests.gateways import recorded

SECRET = "one_secret_shared_by_mistake"
NOW = int(time.time())


def adapters() -> dict[str, Gateway]:
    client = httpx.AsyncClient()
    return {
        "stripe": StripeGateway(StripeConfig(api_key="sk", webhook_secret=SECRET), client=client),
        "sandbox": SandboxGateway(
            SandboxConfig(api_base="http://x", webhook_secret=SECRET), client=client
        ),
        "phonepe_v1": PhonePeGateway(
            PhonePeConfig(merchant_id="M", salt_key=SECRET), client=client
        ),
        "phonepe_v2": PhonePeGateway(
            PhonePeConfig(
                client_id="c", client_secret="s", callback_username="u", callback_password=SECRET
            ),
            client=client,
        ),
    }


def signed_for(gateway: str) -> tuple[dict[str, str], bytes]:
    if gateway in ("stripe", "sandbox"):
        event = {"id": "evt_1", "type": "x.y", "data": {"object": recorded.STRIPE_INTENT_SUCCEEDED}}
        raw = json.dumps(event).encode()
        header = "Stripe-Signature" if gateway == "stripe" else "Sandbox-Signature"
        return {header: signing.sign(raw, SECRET, NOW)}, raw
    if gateway == "phonepe_v1":
        encoded = recorded.PHONEPE_V1_CALLBACK_RESPONSE
        digest = hashlib.sha256((encoded + SECRET).encode()).hexdigest()
        return {"X-VERIFY": f"{digest}###1"}, json.dumps({"response": encoded}).encode()
    digest = hashlib.sha256(f"u:{SECRET}".encode()).hexdigest()
    return {"Authorization": digest}, json.dumps(recorded.PHONEPE_V2_WEBHOOK_COMPLETED).encode()


@pytest.mark.parametrize("sender", ["stripe", "sandbox", "phonepe_v1", "phonepe_v2"])
def test_each_adapter_accepts_only_its_own_gateways_webhook(sender: str) -> None:
    headers, raw = signed_for(sender)
    for name, adapter in adapters().items():
        if name == sender:
            assert adapter.verify_webhook(headers, raw).event_id
        else:
            with pytest.raises(InvalidSignature):
                adapter.verify_webhook(headers, raw)
