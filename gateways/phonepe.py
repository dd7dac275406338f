"""PhonePe Standard Checkout adapter, v1 (salt-key checksums) or v2 (OAuth) by configuration.

Followed (PhonePe developer docs, and the ``phonepe-pg-sdk-python`` 3.0.1 sources for v2):

v1 — host ``https://api.phonepe.com/apis/hermes`` (UAT ``…/apis/pg-sandbox``):
- ``POST /pg/v1/pay`` with body ``{"request": base64(JSON payload)}`` and
  ``X-VERIFY: SHA256(base64 payload + "/pg/v1/pay" + salt key) + "###" + salt index``;
  the answer's ``data.instrumentResponse.redirectInfo.url`` is the pay page.
- ``GET /pg/v1/status/{merchantId}/{merchantTransactionId}`` with
  ``X-VERIFY: SHA256(path + salt key) + "###" + salt index`` and ``X-MERCHANT-ID``;
  "decide on ``code``" (PAYMENT_SUCCESS / PAYMENT_ERROR / PAYMENT_PENDING …), cross-checked
  with ``data.state`` (COMPLETED / FAILED / PENDING).
- Server-to-server callback: body ``{"response": base64(status-like JSON)}`` with
  ``X-VERIFY: SHA256(base64 response + salt key) + "###" + salt index`` — it binds the body.
- ``POST /pg/v1/refund`` like pay (checksum over ``"/pg/v1/refund"``); a refund's state is
  read from the same status API with the refund's own merchantTransactionId.

v2 — PG host ``https://api.phonepe.com/apis/pg``, token host
``https://api.phonepe.com/apis/identity-manager`` (UAT: both ``…/apis/pg-sandbox``):
- ``POST /v1/oauth/token``, form-encoded ``client_id``, ``client_version``,
  ``client_secret``, ``grant_type=client_credentials`` → ``access_token``, ``token_type``
  (``O-Bearer``), ``expires_at`` (epoch seconds). Cached until shortly before
  ``expires_at`` (``token_refresh_margin``); one fetch at a time; a 401 drops it and retries
  once.
- ``POST /checkout/v2/pay`` (``merchantOrderId``, ``amount``, ``paymentFlow`` of type
  ``PG_CHECKOUT`` with ``merchantUrls.redirectUrl``) → ``redirectUrl``;
  ``GET /checkout/v2/order/{merchantOrderId}/status`` → root ``state``;
  ``POST /payments/v2/refund``, ``GET /payments/v2/refund/{merchantRefundId}/status``.
- Webhook: ``Authorization: SHA256(username:password)`` — a fixed value that does not bind
  the body, so every v2 webhook is ``trusted=False``: a hint, to be confirmed via the status
  API before it is applied.

Codes that mean "we do not know" — ``INTERNAL_SERVER_ERROR``, ``TRANSACTION_NOT_FOUND`` (a
status asked for soon after start), and anything unrecognised — map to ``UNKNOWN`` and
change nothing; ``TOO_MANY_REQUESTS`` and HTTP 429 are ``GatewayUnavailable`` (back off).
PhonePe takes INR only; amounts are paise, which are INR's ISO minor units.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx

from gateways.base import (
    SECRET,
    Clock,
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

V1_API_BASE = "https://api.phonepe.com/apis/hermes"
V1_UAT_API_BASE = "https://api-preprod.phonepe.com/apis/pg-sandbox"
V2_API_BASE = "https://api.phonepe.com/apis/pg"
V2_AUTH_BASE = "https://api.phonepe.com/apis/identity-manager"
V2_UAT_API_BASE = "https://api-preprod.phonepe.com/apis/pg-sandbox"

UNKNOWN_CODES = frozenset({"INTERNAL_SERVER_ERROR", "TRANSACTION_NOT_FOUND"})
_V1_FAILED_CODES = frozenset(
    {"PAYMENT_ERROR", "PAYMENT_DECLINED", "TIMED_OUT", "PAYMENT_CANCELLED"}
)
_NOT_FOUND = frozenset({400, 404})
_ID = re.compile(r"[A-Za-z0-9_-]{1,34}")


@dataclass(frozen=True, slots=True, repr=False)
class PhonePeConfig(GatewayConfig):
    """PHONEPE_* settings; v2 when ``client_id`` is set, else v1 (merchant id + salt key)."""

    merchant_id: str | None = None
    salt_key: str | None = field(default=None, metadata=SECRET)
    salt_index: int = 1
    client_id: str | None = None
    client_secret: str | None = field(default=None, metadata=SECRET)
    client_version: int = 1
    callback_username: str | None = None
    callback_password: str | None = field(default=None, metadata=SECRET)
    api_base: str | None = None
    auth_base: str | None = None
    callback_url: str | None = None
    expire_after: int | None = None
    token_refresh_margin: float = 60.0

    def __post_init__(self) -> None:
        if self.client_id:
            if not self.client_secret:
                raise ValueError("PHONEPE_CLIENT_SECRET: required with PHONEPE_CLIENT_ID (v2)")
        elif not (self.merchant_id and self.salt_key):
            raise ValueError(
                "PHONEPE_MERCHANT_ID and PHONEPE_SALT_KEY (v1) or PHONEPE_CLIENT_ID and "
                "PHONEPE_CLIENT_SECRET (v2) are required"
            )

    @property
    def scheme(self) -> Literal["v1", "v2"]:
        """Which of PhonePe's two integrations these credentials are for."""
        return "v2" if self.client_id else "v1"

    @property
    def resolved_api_base(self) -> str:
        """The API host, defaulting to production for the scheme."""
        default = V2_API_BASE if self.scheme == "v2" else V1_API_BASE
        return (self.api_base or default).rstrip("/")

    @property
    def resolved_auth_base(self) -> str:
        """The OAuth host: production's identity manager, or the API host when that is moved."""
        if self.auth_base:
            return self.auth_base.rstrip("/")
        return V2_AUTH_BASE if self.api_base is None else self.resolved_api_base


# --- pure: checksums and state tables -------------------------------------------------------


def x_verify(payload_b64: str, path: str, salt_key: str, salt_index: int) -> str:
    """PURE: v1 ``X-VERIFY`` for a request: SHA256(base64 payload + path + salt key)###index."""
    digest = hashlib.sha256((payload_b64 + path + salt_key).encode()).hexdigest()
    return f"{digest}###{salt_index}"


def callback_x_verify(response_b64: str, salt_key: str, salt_index: int) -> str:
    """PURE: v1 callback ``X-VERIFY``: SHA256(base64 response + salt key)###index."""
    return x_verify(response_b64, "", salt_key, salt_index)


def v2_callback_authorization(username: str, password: str) -> str:
    """PURE: v2 callback ``Authorization``: hex SHA256 of ``username:password``."""
    return hashlib.sha256(f"{username}:{password}".encode()).hexdigest()


def v1_status(code: str | None, state: str | None) -> PaymentStatus:
    """PURE: a v1 answer's ``code`` and ``data.state`` → ours; disagreement changes nothing."""
    if code == "PAYMENT_SUCCESS":
        return PaymentStatus.COMPLETED if state == "COMPLETED" else PaymentStatus.UNKNOWN
    if code == "PAYMENT_PENDING":
        return PaymentStatus.PENDING if state in (None, "PENDING") else PaymentStatus.UNKNOWN
    if code in _V1_FAILED_CODES:
        return PaymentStatus.FAILED if state in (None, "FAILED") else PaymentStatus.UNKNOWN
    if code == "PAYMENT_INITIATED":
        return PaymentStatus.INITIATED if state in (None, "PENDING") else PaymentStatus.UNKNOWN
    return PaymentStatus.UNKNOWN


def v2_status(state: str | None) -> PaymentStatus:
    """PURE: a v2 order's root ``state`` → ours."""
    match state:
        case "COMPLETED":
            return PaymentStatus.COMPLETED
        case "FAILED":
            return PaymentStatus.FAILED
        case "PENDING":
            return PaymentStatus.PENDING
        case _:
            return PaymentStatus.UNKNOWN


def v1_refund_status(code: str | None, state: str | None) -> RefundStatus:
    """PURE: a v1 refund's ``code`` and ``data.state`` → ours."""
    match v1_status(code, state):
        case PaymentStatus.COMPLETED:
            return RefundStatus.SUCCEEDED
        case PaymentStatus.PENDING | PaymentStatus.INITIATED:
            return RefundStatus.PENDING
        case PaymentStatus.FAILED:
            return RefundStatus.FAILED
        case _:
            return RefundStatus.UNKNOWN


def v2_refund_status(state: str | None) -> RefundStatus:
    """PURE: a v2 refund ``state`` → ours."""
    match state:
        case "COMPLETED":
            return RefundStatus.SUCCEEDED
        case "PENDING" | "CONFIRMED":
            return RefundStatus.PENDING
        case "FAILED":
            return RefundStatus.FAILED
        case _:
            return RefundStatus.UNKNOWN


# --- the adapter ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Token:
    value: str
    expires_at: float


class PhonePeGateway(HttpGateway[PhonePeConfig]):
    """PhonePe Standard Checkout behind the Gateway protocol."""

    name = "phonepe"

    def __init__(
        self, config: PhonePeConfig, *, client: httpx.AsyncClient, clock: Clock = time.time
    ) -> None:
        super().__init__(config, client=client, clock=clock)
        self._token: _Token | None = None
        self._token_lock = asyncio.Lock()

    @property
    def scheme(self) -> Literal["v1", "v2"]:
        """``v1`` or ``v2``."""
        return self._config.scheme

    # -- payments

    async def start_payment(self, request: PaymentRequest) -> PaymentStart:
        """Create the payment; the customer is sent to the returned pay page."""
        if request.currency.upper() != "INR":
            raise GatewayRejected(f"phonepe: INR only, not {request.currency}", code="currency")
        _check_id(request.reference)
        if self.scheme == "v1":
            return await self._start_v1(request)
        return await self._start_v2(request)

    async def fetch_status(self, ref: str) -> PaymentState:
        """Ask the status API where the merchant transaction/order ``ref`` stands."""
        if self.scheme == "v1":
            body = await self._v1_status(ref)
            return _v1_state(body, ref)
        body = await self._v2_call(
            "GET", f"/checkout/v2/order/{ref}/status", passthrough=_NOT_FOUND
        )
        if _is_unknown_answer(body):
            return PaymentState(
                PaymentStatus.UNKNOWN, ref, gateway_status=_s(body.get("code")), raw=body
            )
        return _v2_state(body, ref)

    # -- webhooks

    def verify_webhook(self, headers: Mapping[str, str], raw_body: bytes) -> WebhookEvent:
        """v1: check X-VERIFY over the base64 response. v2: check the fixed Authorization."""
        if self.scheme == "v1":
            return self._verify_v1(headers, raw_body)
        return self._verify_v2(headers, raw_body)

    def _verify_v1(self, headers: Mapping[str, str], raw_body: bytes) -> WebhookEvent:
        salt_key, salt_index = self._salt()
        try:
            envelope = json.loads(raw_body)
            encoded = envelope["response"]
        except (ValueError, KeyError, TypeError) as exc:
            raise InvalidSignature("phonepe: callback body has no 'response'") from exc
        given = header(headers, "X-VERIFY")
        if not isinstance(encoded, str) or not given:
            raise InvalidSignature("phonepe: no X-VERIFY or no response")
        expected = callback_x_verify(encoded, salt_key, salt_index)
        if not hmac.compare_digest(expected.encode(), given.strip().encode("utf-8", "replace")):
            raise InvalidSignature("phonepe: X-VERIFY does not match")
        try:
            decoded = json.loads(base64.b64decode(encoded, validate=True))
        except (ValueError, binascii.Error) as exc:
            raise InvalidSignature("phonepe: signed response is not base64 JSON") from exc
        if not isinstance(decoded, dict):
            raise InvalidSignature("phonepe: signed response is not an object")
        data = _obj(decoded.get("data"))
        ref = _s(data.get("merchantTransactionId"))
        code = _s(decoded.get("code"))
        state = _v1_state(decoded, ref or "")
        return WebhookEvent(
            gateway=self.name,
            event_id=f"{ref}:{code}:{_s(data.get('transactionId')) or ''}",
            event_type=code or "",
            trusted=True,
            ref=ref,
            state=state,
            raw=decoded,
            # merchantTransactionId is our reference: start_payment sends it as that.
            payment_reference=ref,
        )

    def _verify_v2(self, headers: Mapping[str, str], raw_body: bytes) -> WebhookEvent:
        username, password = self._config.callback_username, self._config.callback_password
        if not username or not password:
            raise InvalidSignature("phonepe: no callback username/password configured")
        given = header(headers, "Authorization") or ""
        expected = v2_callback_authorization(username, password)
        if not hmac.compare_digest(expected.encode(), given.strip().encode("utf-8", "replace")):
            raise InvalidSignature("phonepe: Authorization does not match")
        try:
            body = json.loads(raw_body)
            payload = body["payload"]
        except (ValueError, KeyError, TypeError) as exc:
            raise InvalidSignature("phonepe: callback is not a PhonePe event") from exc
        if not isinstance(payload, dict):
            raise InvalidSignature("phonepe: callback payload is not an object")
        event_type = _s(body.get("event")) or _s(body.get("type")) or ""
        state_value = _s(payload.get("state"))
        if "refund" in event_type.lower():
            refund = _v2_refund_state(payload)
            ref = _s(payload.get("originalMerchantOrderId"))
            key = _s(payload.get("refundId")) or refund.reference
            return WebhookEvent(
                gateway=self.name,
                event_id=f"{event_type}:{key}:{state_value}",
                event_type=event_type,
                trusted=False,
                ref=ref,
                refund=refund,
                raw=body,
                payment_reference=ref,
                refund_reference=refund.reference,
            )
        ref = _s(payload.get("merchantOrderId"))
        return WebhookEvent(
            gateway=self.name,
            event_id=f"{event_type}:{_s(payload.get('orderId')) or ref}:{state_value}",
            event_type=event_type,
            trusted=False,
            ref=ref,
            state=_v2_state(payload, ref or ""),
            raw=body,
            # merchantOrderId is our reference: start_payment sends it as that.
            payment_reference=ref,
        )

    # -- refunds

    async def refund(self, request: RefundRequest) -> RefundState:
        """Ask for a refund; its outcome comes later (``fetch_refund`` or a callback)."""
        _check_id(request.reference)
        if self.scheme == "v1":
            merchant_id = self._config.merchant_id or ""
            payload: dict[str, Any] = {
                "merchantId": merchant_id,
                "merchantUserId": _user_id(request.customer_ref),
                "originalTransactionId": request.payment_ref,
                "merchantTransactionId": request.reference,
                "amount": request.amount,
            }
            if self._config.callback_url:
                payload["callbackUrl"] = self._config.callback_url
            body = await self._v1_post("/pg/v1/refund", payload)
            return _v1_refund_state(body, request.reference)
        body = await self._v2_call(
            "POST",
            "/payments/v2/refund",
            payload={
                "merchantRefundId": request.reference,
                "originalMerchantOrderId": request.payment_ref,
                "amount": request.amount,
            },
        )
        return RefundState(
            status=v2_refund_status(_s(body.get("state"))),
            reference=request.reference,
            refund_ref=_s(body.get("refundId")),
            amount=_i(body.get("amount")),
            currency="INR",
            gateway_status=_s(body.get("state")),
            raw=body,
        )

    async def fetch_refund(self, reference: str, *, refund_ref: str | None = None) -> RefundState:
        """Where the refund with our ``reference`` (its merchant refund id) stands."""
        if self.scheme == "v1":
            return _v1_refund_state(await self._v1_status(reference), reference)
        body = await self._v2_call(
            "GET", f"/payments/v2/refund/{reference}/status", passthrough=_NOT_FOUND
        )
        if _is_unknown_answer(body):
            return RefundState(
                RefundStatus.UNKNOWN,
                reference,
                refund_ref,
                gateway_status=_s(body.get("code")),
                raw=body,
            )
        return _v2_refund_state(body)

    # -- v1 transport

    def _salt(self) -> tuple[str, int]:
        return self._config.salt_key or "", self._config.salt_index

    async def _start_v1(self, request: PaymentRequest) -> PaymentStart:
        payload: dict[str, Any] = {
            "merchantId": self._config.merchant_id,
            "merchantTransactionId": request.reference,
            "merchantUserId": _user_id(request.customer_ref),
            "amount": request.amount,
            "redirectUrl": request.return_url or "",
            "redirectMode": "REDIRECT",
            "paymentInstrument": {"type": "PAY_PAGE"},
        }
        callback = request.callback_url or self._config.callback_url
        if callback:
            payload["callbackUrl"] = callback
        body = await self._v1_post("/pg/v1/pay", payload)
        data = _obj(body.get("data"))
        redirect = _obj(_obj(data.get("instrumentResponse")).get("redirectInfo"))
        state = PaymentState(
            PaymentStatus.INITIATED,
            request.reference,
            amount=request.amount,
            currency="INR",
            gateway_status=_s(body.get("code")),
            raw=body,
        )
        return PaymentStart(
            ref=request.reference, state=state, redirect_url=_s(redirect.get("url")), raw=body
        )

    async def _v1_post(self, path: str, payload: Mapping[str, Any]) -> dict[str, Any]:
        salt_key, salt_index = self._salt()
        encoded = base64.b64encode(json.dumps(payload, separators=(",", ":")).encode()).decode()
        request = self._client.build_request(
            "POST",
            self._base + path,
            json={"request": encoded},
            headers={"X-VERIFY": x_verify(encoded, path, salt_key, salt_index)},
        )
        response = await self._send(request)
        body = json_body(response, gateway=self.name)
        code = _s(body.get("code"))
        if code == "TOO_MANY_REQUESTS":
            raise GatewayUnavailable("phonepe: TOO_MANY_REQUESTS")
        if body.get("success") is False and code == "INTERNAL_SERVER_ERROR":
            raise GatewayUnavailable("phonepe: INTERNAL_SERVER_ERROR")
        if body.get("success") is False and path == "/pg/v1/pay":
            raise GatewayRejected(f"phonepe: {code}", status_code=response.status_code, code=code)
        return body

    async def _v1_status(self, merchant_transaction_id: str) -> dict[str, Any]:
        salt_key, salt_index = self._salt()
        path = f"/pg/v1/status/{self._config.merchant_id}/{merchant_transaction_id}"
        request = self._client.build_request(
            "GET",
            self._base + path,
            headers={
                "Content-Type": "application/json",
                "X-VERIFY": x_verify("", path, salt_key, salt_index),
                "X-MERCHANT-ID": self._config.merchant_id or "",
            },
        )
        response = await self._send(request, passthrough=_NOT_FOUND)
        body = json_body(response, gateway=self.name)
        if _s(body.get("code")) == "TOO_MANY_REQUESTS":
            raise GatewayUnavailable("phonepe: TOO_MANY_REQUESTS")
        if response.status_code in _NOT_FOUND and not _is_unknown_answer(body):
            code = _s(body.get("code"))
            raise GatewayRejected(
                f"phonepe: HTTP {response.status_code} {code}",
                status_code=response.status_code,
                code=code,
            )
        return body

    # -- v2 transport

    async def _start_v2(self, request: PaymentRequest) -> PaymentStart:
        flow: dict[str, Any] = {"type": "PG_CHECKOUT"}
        if request.description:
            flow["message"] = request.description
        if request.return_url:
            flow["merchantUrls"] = {"redirectUrl": request.return_url}
        payload: dict[str, Any] = {
            "merchantOrderId": request.reference,
            "amount": request.amount,
            "paymentFlow": flow,
        }
        if self._config.expire_after is not None:
            payload["expireAfter"] = self._config.expire_after
        meta = {
            f"udf{i}": f"{k}={v}"[:256]
            for i, (k, v) in enumerate(sorted(request.metadata.items())[:5], 1)
        }
        if meta:
            payload["metaInfo"] = meta
        body = await self._v2_call("POST", "/checkout/v2/pay", payload=payload)
        status = v2_status(_s(body.get("state")))
        state = PaymentState(
            PaymentStatus.INITIATED if status is PaymentStatus.PENDING else status,
            request.reference,
            amount=request.amount,
            currency="INR",
            gateway_transaction_id=_s(body.get("orderId")),
            gateway_status=_s(body.get("state")),
            raw=body,
        )
        return PaymentStart(
            ref=request.reference, state=state, redirect_url=_s(body.get("redirectUrl")), raw=body
        )

    async def _v2_call(
        self,
        method: str,
        path: str,
        *,
        payload: Mapping[str, Any] | None = None,
        passthrough: frozenset[int] = frozenset(),
    ) -> dict[str, Any]:
        for attempt in range(2):
            token = await self._access_token()
            request = self._client.build_request(
                method,
                self._base + path,
                json=payload,
                headers={"Authorization": token.value, "Accept": "application/json"},
            )
            try:
                response = await self._send(request, passthrough=passthrough)
            except GatewayRejected as exc:
                if exc.status_code == 401 and attempt == 0:
                    # The token was revoked or expired early: fetch a new one, once.
                    self._drop_token(token)
                    continue
                raise
            body = json_body(response, gateway=self.name)
            if _s(body.get("code")) == "TOO_MANY_REQUESTS":
                raise GatewayUnavailable("phonepe: TOO_MANY_REQUESTS")
            if response.status_code in passthrough and not _is_unknown_answer(body):
                code = _s(body.get("code"))
                raise GatewayRejected(
                    f"phonepe: HTTP {response.status_code} {code}",
                    status_code=response.status_code,
                    code=code,
                )
            return body
        raise GatewayRejected("phonepe: unauthorised after a fresh token", status_code=401)

    def _drop_token(self, token: _Token) -> None:
        if self._token is token:
            self._token = None

    async def _access_token(self) -> _Token:
        """The cached OAuth token, fetched again once it is within the margin of expiry."""
        token = self._token
        if (
            token is not None
            and self._clock() < token.expires_at - self._config.token_refresh_margin
        ):
            return token
        async with self._token_lock:
            # Another caller may have fetched one while we waited for the lock.
            token = self._token
            if (
                token is not None
                and self._clock() < token.expires_at - self._config.token_refresh_margin
            ):
                return token
            self._token = token = await self._fetch_token()
            return token

    async def _fetch_token(self) -> _Token:
        config = self._config
        request = self._client.build_request(
            "POST",
            config.resolved_auth_base + "/v1/oauth/token",
            data={
                "client_id": config.client_id or "",
                "client_version": str(config.client_version),
                "client_secret": config.client_secret or "",
                "grant_type": "client_credentials",
            },
            headers={"Accept": "application/json"},
        )
        body = json_body(await self._send(request), gateway=self.name)
        access, expires_at = body.get("access_token"), body.get("expires_at")
        if not isinstance(access, str) or not isinstance(expires_at, int | float):
            raise GatewayUnavailable("phonepe: token answer without access_token/expires_at")
        token_type = _s(body.get("token_type")) or "O-Bearer"
        return _Token(f"{token_type} {access}", float(expires_at))


# --- answer parsing -----------------------------------------------------------------------------


def _v1_state(body: Mapping[str, Any], ref: str) -> PaymentState:
    data = _obj(body.get("data"))
    code = _s(body.get("code"))
    return PaymentState(
        status=v1_status(code, _s(data.get("state"))),
        ref=_s(data.get("merchantTransactionId")) or ref,
        amount=_i(data.get("amount")),
        currency="INR",
        gateway_transaction_id=_s(data.get("transactionId")),
        gateway_status=code,
        raw=body,
    )


def _v1_refund_state(body: Mapping[str, Any], reference: str) -> RefundState:
    data = _obj(body.get("data"))
    code = _s(body.get("code"))
    return RefundState(
        status=v1_refund_status(code, _s(data.get("state"))),
        reference=_s(data.get("merchantTransactionId")) or reference,
        refund_ref=_s(data.get("transactionId")),
        amount=_i(data.get("amount")),
        currency="INR",
        gateway_status=code,
        raw=body,
    )


def _v2_state(body: Mapping[str, Any], ref: str) -> PaymentState:
    state = _s(body.get("state"))
    details = body.get("paymentDetails")
    transaction_id = None
    if isinstance(details, list) and details and isinstance(details[-1], dict):
        transaction_id = _s(details[-1].get("transactionId"))
    return PaymentState(
        status=v2_status(state),
        ref=_s(body.get("merchantOrderId")) or ref,
        amount=_i(body.get("amount")),
        currency="INR",
        gateway_transaction_id=transaction_id,
        gateway_status=state,
        raw=body,
    )


def _v2_refund_state(body: Mapping[str, Any]) -> RefundState:
    state = _s(body.get("state"))
    return RefundState(
        status=v2_refund_status(state),
        reference=_s(body.get("merchantRefundId")),
        refund_ref=_s(body.get("refundId")),
        amount=_i(body.get("amount")),
        currency="INR",
        gateway_status=state,
        raw=body,
    )


def _is_unknown_answer(body: Mapping[str, Any]) -> bool:
    return _s(body.get("code")) in UNKNOWN_CODES


def _check_id(value: str) -> None:
    if not _ID.fullmatch(value):
        raise GatewayRejected(
            f"phonepe: id {value!r} must be 1-34 of A-Z a-z 0-9 _ -", code="bad_reference"
        )


def _user_id(customer_ref: str | None) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9_-]", "", customer_ref or "")[:35]
    return cleaned or "guest"


def _obj(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, dict) else {}


def _s(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _i(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
