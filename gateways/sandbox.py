"""Adapter for the bundled sandbox gateway (``gateways.sandbox_server``).

Its wire format is ours to define and documented in ``sandbox_server``'s docstring: JSON over
HTTP, ``Authorization: Bearer <SANDBOX_API_KEY>`` when a key is set, and webhooks signed
``Sandbox-Signature: t=…,v1=…`` exactly as Stripe signs (``gateways.signing``). The sandbox
speaks its own status words, mapped here by a pure table like every other gateway's.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gateways import signing
from gateways.base import (
    SECRET,
    GatewayConfig,
    HttpGateway,
    InvalidSignature,
    PaymentRequest,
    PaymentStart,
    PaymentState,
    PaymentStatus,
    RefundRequest,
    RefundState,
    RefundStatus,
    WebhookEvent,
    header,
    json_body,
)
from gateways.sandbox_server import SIGNATURE_HEADER

DEFAULT_TOLERANCE = 300


@dataclass(frozen=True, slots=True, repr=False)
class SandboxConfig(GatewayConfig):
    """Where the sandbox is (SANDBOX_API_BASE) and the webhooks' shared secret."""

    api_base: str
    webhook_secret: str = field(metadata=SECRET)
    api_key: str | None = field(default=None, metadata=SECRET)
    tolerance: int = DEFAULT_TOLERANCE

    @property
    def resolved_api_base(self) -> str:
        """SANDBOX_API_BASE without a trailing slash."""
        return self.api_base.rstrip("/")


def sandbox_status(status: str | None) -> PaymentStatus:
    """PURE: a sandbox payment ``status`` → ours."""
    match status:
        case "created":
            return PaymentStatus.INITIATED
        case "processing":
            return PaymentStatus.PENDING
        case "succeeded":
            return PaymentStatus.COMPLETED
        case "declined":
            return PaymentStatus.FAILED
        case "expired":
            return PaymentStatus.EXPIRED
        case "canceled":
            return PaymentStatus.CANCELLED
        case _:
            return PaymentStatus.UNKNOWN


def sandbox_refund_status(status: str | None) -> RefundStatus:
    """PURE: a sandbox refund ``status`` → ours."""
    match status:
        case "pending":
            return RefundStatus.PENDING
        case "succeeded":
            return RefundStatus.SUCCEEDED
        case "failed":
            return RefundStatus.FAILED
        case _:
            return RefundStatus.UNKNOWN


class SandboxGateway(HttpGateway[SandboxConfig]):
    """The sandbox behind the Gateway protocol."""

    name = "sandbox"

    async def start_payment(self, request: PaymentRequest) -> PaymentStart:
        """Create the payment; the customer approves or declines it on its page."""
        body = await self._call(
            "POST",
            "/api/payments",
            {
                "reference": request.reference,
                "amount": request.amount,
                "currency": request.currency,
                "return_url": request.return_url,
                "callback_url": request.callback_url,
                "description": request.description,
                "metadata": dict(request.metadata),
            },
        )
        state = _payment_state(body)
        return PaymentStart(
            ref=state.ref, state=state, redirect_url=_s(body.get("redirect_url")), raw=body
        )

    async def fetch_status(self, ref: str) -> PaymentState:
        """GET the payment ``ref`` (the sandbox's id)."""
        return _payment_state(await self._call("GET", f"/api/payments/{ref}"))

    def verify_webhook(self, headers: Mapping[str, str], raw_body: bytes) -> WebhookEvent:
        """Verify ``Sandbox-Signature`` over the raw body, then read the event."""
        signing.verify(
            raw_body,
            header(headers, SIGNATURE_HEADER),
            self._config.webhook_secret,
            now=self._clock(),
            tolerance=self._config.tolerance,
        )
        try:
            event = json.loads(raw_body)
            event_id, event_type = str(event["id"]), str(event["type"])
            obj = event["data"]["object"]
        except (ValueError, KeyError, TypeError) as exc:
            raise InvalidSignature("sandbox: signed body is not a sandbox event") from exc
        if not isinstance(obj, dict):
            raise InvalidSignature("sandbox: signed body is not a sandbox event")
        state = refund = None
        ref = _s(obj.get("id"))
        payment_reference = refund_reference = None
        if obj.get("object") == "payment":
            state = _payment_state(obj)
            payment_reference = _s(obj.get("reference"))
        elif obj.get("object") == "refund":
            refund = _refund_state(obj)
            ref = _s(obj.get("payment"))
            refund_reference = refund.reference
        return WebhookEvent(
            gateway=self.name,
            event_id=event_id,
            event_type=event_type,
            trusted=True,
            ref=ref,
            state=state,
            refund=refund,
            raw=event,
            payment_reference=payment_reference,
            refund_reference=refund_reference,
        )

    async def refund(self, request: RefundRequest) -> RefundState:
        """Refund (part of) a succeeded sandbox payment."""
        body = await self._call(
            "POST",
            f"/api/payments/{request.payment_ref}/refunds",
            {"reference": request.reference, "amount": request.amount},
        )
        return _refund_state(body)

    async def fetch_refund(self, reference: str, *, refund_ref: str | None = None) -> RefundState:
        """GET a refund by the sandbox's id or by our reference."""
        return _refund_state(await self._call("GET", f"/api/refunds/{refund_ref or reference}"))

    async def _call(
        self, method: str, path: str, payload: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        headers = {"Accept": "application/json"}
        if self._config.api_key:
            headers["Authorization"] = f"Bearer {self._config.api_key}"
        request = self._client.build_request(
            method, self._base + path, json=payload, headers=headers
        )
        return json_body(await self._send(request), gateway=self.name)


def _payment_state(obj: Mapping[str, Any]) -> PaymentState:
    status = _s(obj.get("status"))
    amount = obj.get("amount")
    return PaymentState(
        status=sandbox_status(status),
        ref=_s(obj.get("id")) or "",
        amount=amount if isinstance(amount, int) else None,
        currency=_s(obj.get("currency")),
        gateway_transaction_id=_s(obj.get("transaction_id")),
        gateway_status=status,
        raw=obj,
    )


def _refund_state(obj: Mapping[str, Any]) -> RefundState:
    status = _s(obj.get("status"))
    amount = obj.get("amount")
    return RefundState(
        status=sandbox_refund_status(status),
        reference=_s(obj.get("reference")),
        refund_ref=_s(obj.get("id")),
        amount=amount if isinstance(amount, int) else None,
        currency=_s(obj.get("currency")),
        gateway_status=status,
        raw=obj,
    )


def _s(value: Any) -> str | None:
    return value if isinstance(value, str) else None
