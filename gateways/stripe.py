"""Stripe adapter: PaymentIntents and Refunds over httpx, ``Stripe-Signature`` webhooks.

Followed (Stripe's public API reference and docs):
- ``POST /v1/payment_intents`` and ``GET /v1/payment_intents/{id}``, form-encoded,
  ``Authorization: Bearer sk_…``, ``Idempotency-Key`` per attempt, ``metadata[key]=value``.
- ``POST /v1/refunds`` (``payment_intent``, ``amount``) and ``GET /v1/refunds/{id}``.
- Amounts in the currency's smallest unit *as Stripe counts it* (docs "Supported currencies"):
  zero-decimal currencies (``STRIPE_ZERO_DECIMAL``) count whole units; three-decimal ones
  (BHD, JOD, KWD, OMR, TND) count thousandths whose last digit must be 0; ISK stays
  two-decimal at Stripe for backwards compatibility (amounts divisible by 100). Ours are
  ISO 4217 minor units, so ``to_stripe_amount`` rescales between the two and refuses an
  amount Stripe could not take rather than round it.
- Webhooks (docs "Check the webhook signatures"): ``Stripe-Signature: t=…,v1=…[,v1=…]``;
  HMAC-SHA256 with the endpoint secret over ``"{t}.{raw body}"``; any ``v1`` may match;
  constant-time compare; reject timestamps older than the tolerance (300 s) —
  ``gateways.signing``, whose parsing mirrors stripe-python's ``verify_header``.
- PaymentIntent statuses: ``succeeded`` → COMPLETED; ``processing``, ``requires_action``,
  ``requires_confirmation``, ``requires_capture`` → PENDING; ``requires_payment_method`` is
  the state of a new intent *and* of one whose attempt failed — never final: INITIATED
  before any attempt, PENDING after one; ``canceled`` → CANCELLED.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from gateways import signing
from gateways.base import (
    SECRET,
    GatewayConfig,
    GatewayRejected,
    GatewayUnavailable,
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
from gateways.currency import iso_exponent, rescale

DEFAULT_API_BASE = "https://api.stripe.com"
DEFAULT_TOLERANCE = 300

STRIPE_ZERO_DECIMAL = frozenset(
    "BIF CLP DJF GNF JPY KMF KRW MGA PYG RWF UGX VND VUV XAF XOF XPF".split()
)
STRIPE_THREE_DECIMAL = frozenset("BHD JOD KWD OMR TND".split())
_CONFLICT = frozenset({409})


@dataclass(frozen=True, slots=True, repr=False)
class StripeConfig(GatewayConfig):
    """Stripe credentials and endpoint (STRIPE_API_KEY, STRIPE_WEBHOOK_SECRET, STRIPE_API_BASE)."""

    api_key: str = field(metadata=SECRET)
    webhook_secret: str = field(metadata=SECRET)
    api_base: str = DEFAULT_API_BASE
    api_version: str | None = None
    tolerance: int = DEFAULT_TOLERANCE

    @property
    def resolved_api_base(self) -> str:
        """STRIPE_API_BASE without a trailing slash."""
        return self.api_base.rstrip("/")


def stripe_exponent(currency: str) -> int:
    """How many decimals Stripe counts for ``currency``."""
    code = currency.upper()
    if code in STRIPE_ZERO_DECIMAL:
        return 0
    if code in STRIPE_THREE_DECIMAL:
        return 3
    return 2


def to_stripe_amount(amount: int, currency: str) -> int:
    """Our ISO minor units → Stripe's count; ValueError if Stripe cannot take it exactly."""
    converted = rescale(
        amount, from_exponent=iso_exponent(currency), to_exponent=stripe_exponent(currency)
    )
    code = currency.upper()
    if code in STRIPE_THREE_DECIMAL and converted % 10:
        raise ValueError(f"{code}: Stripe needs the last of three decimals to be 0, got {amount}")
    if code == "ISK" and converted % 100:
        raise ValueError(f"ISK: Stripe takes whole krónur only, got {amount}")
    return converted


def from_stripe_amount(amount: int, currency: str) -> int:
    """Stripe's count → our ISO minor units (exact, or ValueError)."""
    return rescale(
        amount, from_exponent=stripe_exponent(currency), to_exponent=iso_exponent(currency)
    )


def intent_status(status: str, *, attempted: bool) -> PaymentStatus:
    """PURE: a PaymentIntent ``status`` (and whether a payment was attempted) → ours."""
    match status:
        case "succeeded":
            return PaymentStatus.COMPLETED
        case "processing" | "requires_action" | "requires_confirmation" | "requires_capture":
            return PaymentStatus.PENDING
        case "requires_payment_method":
            # A declined card puts the intent back here: the customer may try another card.
            return PaymentStatus.PENDING if attempted else PaymentStatus.INITIATED
        case "canceled":
            return PaymentStatus.CANCELLED
        case _:
            return PaymentStatus.UNKNOWN


def refund_status(status: str) -> RefundStatus:
    """PURE: a Refund ``status`` → ours."""
    match status:
        case "succeeded":
            return RefundStatus.SUCCEEDED
        case "pending" | "requires_action":
            return RefundStatus.PENDING
        case "failed" | "canceled":
            return RefundStatus.FAILED
        case _:
            return RefundStatus.UNKNOWN


class StripeGateway(HttpGateway[StripeConfig]):
    """Stripe PaymentIntents behind the Gateway protocol."""

    name = "stripe"

    async def start_payment(self, request: PaymentRequest) -> PaymentStart:
        """Create a PaymentIntent (one Idempotency-Key per attempt: our reference)."""
        try:
            amount = to_stripe_amount(request.amount, request.currency)
        except ValueError as exc:
            raise GatewayRejected(f"stripe: {exc}", code="amount_not_representable") from exc
        form: dict[str, str] = {
            "amount": str(amount),
            "currency": request.currency.lower(),
            "automatic_payment_methods[enabled]": "true",
            "metadata[reference]": request.reference,
        }
        for key, value in request.metadata.items():
            form[f"metadata[{key}]"] = value
        if request.description:
            form["description"] = request.description
        body = await self._call(
            "POST", "/v1/payment_intents", form=form, idempotency_key=request.reference
        )
        state = self._intent_state(body)
        return PaymentStart(
            ref=state.ref,
            state=state,
            redirect_url=_redirect_url(body),
            client_secret=_str(body.get("client_secret")),
            raw=body,
        )

    async def fetch_status(self, ref: str) -> PaymentState:
        """Retrieve the PaymentIntent ``ref``."""
        return self._intent_state(await self._call("GET", f"/v1/payment_intents/{ref}"))

    def verify_webhook(self, headers: Mapping[str, str], raw_body: bytes) -> WebhookEvent:
        """Verify ``Stripe-Signature``, then read the event (its ``id`` is the dedupe key)."""
        signing.verify(
            raw_body,
            header(headers, "Stripe-Signature"),
            self._config.webhook_secret,
            now=self._clock(),
            tolerance=self._config.tolerance,
        )
        try:
            event = json.loads(raw_body)
            event_id = str(event["id"])
            event_type = str(event["type"])
            obj = event["data"]["object"]
        except (ValueError, KeyError, TypeError) as exc:
            raise InvalidSignature("signed body is not a Stripe event") from exc
        if not isinstance(obj, dict):
            raise InvalidSignature("signed body is not a Stripe event")
        state = refund = None
        ref = _str(obj.get("id"))
        payment_reference = refund_reference = None
        if obj.get("object") == "payment_intent":
            state = self._intent_state(obj)
            metadata = _metadata(obj)
            # start_payment writes metadata[reference]; payment_id is the caller's own copy.
            payment_reference = _str(metadata.get("reference")) or _str(metadata.get("payment_id"))
        elif obj.get("object") == "refund":
            refund = self._refund_state(obj)
            ref = _str(obj.get("payment_intent"))
            refund_reference = refund.reference
        elif obj.get("object") == "charge" and event_type == "charge.refunded":
            # The charge carries its refunds (newest first) when the API version includes
            # them; the newest is what this event announces. Without them the event is only
            # about the charge, and ``refund.updated`` settles the refund instead.
            listed = obj.get("refunds")
            data = listed.get("data") if isinstance(listed, dict) else None
            if isinstance(data, list) and data and isinstance(data[0], dict):
                refund = self._refund_state(data[0])
                refund_reference = refund.reference
            ref = _str(obj.get("payment_intent"))
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
        """Create a Refund of ``request.amount`` on the PaymentIntent."""
        try:
            amount = to_stripe_amount(request.amount, request.currency)
        except ValueError as exc:
            raise GatewayRejected(f"stripe: {exc}", code="amount_not_representable") from exc
        form = {
            "payment_intent": request.payment_ref,
            "amount": str(amount),
            "metadata[reference]": request.reference,
        }
        if request.reason in {"duplicate", "fraudulent", "requested_by_customer"}:
            form["reason"] = request.reason
        body = await self._call("POST", "/v1/refunds", form=form, idempotency_key=request.reference)
        return self._refund_state(body)

    async def fetch_refund(self, reference: str, *, refund_ref: str | None = None) -> RefundState:
        """Retrieve a Refund by Stripe's id (``refund_ref``; Stripe has no lookup by ours)."""
        if refund_ref is None:
            raise GatewayRejected(
                "stripe: fetch_refund needs the Stripe refund id", code="no_refund_ref"
            )
        return self._refund_state(await self._call("GET", f"/v1/refunds/{refund_ref}"))

    async def _call(
        self,
        method: str,
        path: str,
        *,
        form: Mapping[str, str] | None = None,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {self._config.api_key}"}
        if self._config.api_version:
            headers["Stripe-Version"] = self._config.api_version
        if idempotency_key:
            headers["Idempotency-Key"] = idempotency_key
        request = self._client.build_request(method, self._base + path, data=form, headers=headers)
        response = await self._send(request, passthrough=_CONFLICT)
        if response.status_code == 409:
            # Another request with this key is still running at Stripe: ask again later.
            if (
                response.headers.get("stripe-should-retry") == "true"
                or _code(response) == "idempotency_key_in_use"
            ):
                raise GatewayUnavailable("stripe: idempotency key in use")
            raise GatewayRejected("stripe: HTTP 409", status_code=409, code=_code(response))
        return json_body(response, gateway=self.name)

    def _intent_state(self, obj: Mapping[str, Any]) -> PaymentState:
        status = _str(obj.get("status")) or ""
        attempted = bool(obj.get("last_payment_error") or obj.get("latest_charge"))
        currency = (_str(obj.get("currency")) or "").upper() or None
        amount = _amount(obj.get("amount"), currency)
        return PaymentState(
            status=intent_status(status, attempted=attempted),
            ref=_str(obj.get("id")) or "",
            amount=amount,
            currency=currency,
            gateway_transaction_id=_str(obj.get("latest_charge")),
            gateway_status=status,
            raw=obj,
        )

    def _refund_state(self, obj: Mapping[str, Any]) -> RefundState:
        status = _str(obj.get("status")) or ""
        currency = (_str(obj.get("currency")) or "").upper() or None
        reference = _str(_metadata(obj).get("reference"))
        return RefundState(
            status=refund_status(status),
            reference=reference,
            refund_ref=_str(obj.get("id")),
            amount=_amount(obj.get("amount"), currency),
            currency=currency,
            gateway_status=status,
            raw=obj,
        )


def _amount(value: Any, currency: str | None) -> int | None:
    if not isinstance(value, int) or currency is None:
        return None
    try:
        return from_stripe_amount(value, currency)
    except ValueError:
        return None


def _metadata(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    metadata = obj.get("metadata")
    return metadata if isinstance(metadata, dict) else {}


def _redirect_url(body: Mapping[str, Any]) -> str | None:
    next_action = body.get("next_action")
    if isinstance(next_action, dict):
        redirect = next_action.get("redirect_to_url")
        if isinstance(redirect, dict):
            return _str(redirect.get("url"))
    return None


def _code(response: httpx.Response) -> str | None:
    try:
        error = response.json().get("error", {})
    except (ValueError, AttributeError):
        return None
    return _str(error.get("code")) if isinstance(error, dict) else None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None
