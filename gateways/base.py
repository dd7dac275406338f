"""The one interface every payment gateway adapter implements, its value types and its errors.

An adapter knows nothing of orders: it starts a payment, asks the gateway where it stands,
verifies and parses a webhook, and requests and checks refunds, answering in our own terms
(``PaymentStatus``, ``RefundStatus``, amounts in integer minor units of ISO 4217).

Exception tree::

    GatewayError
    ├── GatewayUnavailable(retry_after)   transport error, timeout, 5xx, 429, garbled 2xx body:
    │                                     "ask again later" — never a failed payment
    ├── GatewayRejected(status_code, code) the gateway refused the request (4xx): bad
    │                                     credentials, bad amount, unknown currency, …
    └── InvalidSignature                  a webhook whose signature or timestamp does not verify

httpx errors never leave an adapter: they are translated here (``send``), at the boundary.
Expected answers that change nothing — an unknown gateway state, ``INTERNAL_SERVER_ERROR``
in a 200 body — are return values (``PaymentStatus.UNKNOWN``), not exceptions.
"""

from __future__ import annotations

import dataclasses
import email.utils
import enum
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar, runtime_checkable

import httpx

Clock = Callable[[], float]
"""Seconds since the epoch (``time.time``); handed in so tests control the time."""

JSON = Mapping[str, Any]


class PaymentStatus(enum.StrEnum):
    """Our payment status; ``UNKNOWN`` means "the gateway's answer changes nothing"."""

    INITIATED = "INITIATED"
    PENDING = "PENDING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    EXPIRED = "EXPIRED"
    CANCELLED = "CANCELLED"
    UNKNOWN = "UNKNOWN"

    @property
    def terminal(self) -> bool:
        """True for the statuses a payment settles in."""
        return self in _TERMINAL


_TERMINAL = frozenset(
    {
        PaymentStatus.COMPLETED,
        PaymentStatus.FAILED,
        PaymentStatus.EXPIRED,
        PaymentStatus.CANCELLED,
    }
)


class RefundStatus(enum.StrEnum):
    """Our refund status; ``UNKNOWN`` changes nothing, as for payments."""

    REQUESTED = "REQUESTED"
    PENDING = "PENDING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    UNKNOWN = "UNKNOWN"


@dataclass(frozen=True, slots=True)
class PaymentRequest:
    """What we ask a gateway to collect: ``reference`` is our attempt id (idempotency key)."""

    reference: str
    amount: int
    currency: str
    return_url: str | None = None
    callback_url: str | None = None
    customer_ref: str | None = None
    description: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PaymentState:
    """Where a payment stands at the gateway, in our terms, with the raw answer kept."""

    status: PaymentStatus
    ref: str
    amount: int | None = None
    currency: str | None = None
    gateway_transaction_id: str | None = None
    gateway_status: str | None = None
    raw: JSON = field(default_factory=dict)

    @property
    def changes_nothing(self) -> bool:
        """True when this answer must not move the payment (an unknown state or code)."""
        return self.status is PaymentStatus.UNKNOWN


@dataclass(frozen=True, slots=True)
class PaymentStart:
    """A started payment: the ref to poll, where to send the customer, the first state."""

    ref: str
    state: PaymentState
    redirect_url: str | None = None
    client_secret: str | None = None
    raw: JSON = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RefundRequest:
    """A refund to ask for: ``reference`` is our refund id (idempotency key)."""

    reference: str
    payment_ref: str
    amount: int
    currency: str
    reason: str | None = None
    customer_ref: str | None = None


@dataclass(frozen=True, slots=True)
class RefundState:
    """Where a refund stands: ``reference`` ours, ``refund_ref`` the gateway's id for it."""

    status: RefundStatus
    reference: str | None
    refund_ref: str | None
    amount: int | None = None
    currency: str | None = None
    gateway_status: str | None = None
    raw: JSON = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class WebhookEvent:
    """A verified webhook.

    ``event_id`` is what the receiver dedupes on. ``trusted`` is False when the signature does
    not bind the body (PhonePe v2's fixed Authorization header): the event is then only a hint,
    to be confirmed through ``fetch_status`` before it is applied. ``state`` is None for events
    that are not about a payment, ``refund`` None for events that are not about a refund.
    ``ref`` is the gateway's id of the payment; ``payment_reference`` and ``refund_reference``
    are *our* ids as we gave them to the gateway (``PaymentRequest.reference``,
    ``RefundRequest.reference``), where the event carries them.
    """

    gateway: str
    event_id: str
    event_type: str
    trusted: bool
    ref: str | None = None
    state: PaymentState | None = None
    refund: RefundState | None = None
    raw: JSON = field(default_factory=dict)
    payment_reference: str | None = None
    refund_reference: str | None = None


SECRET: Mapping[str, Any] = {"secret": True}
"""Field metadata of a configuration value that no repr may show (keys, secrets, passwords)."""


@dataclass(frozen=True, slots=True, repr=False)
class GatewayConfig:
    """Base of every adapter's configuration: a repr that hides secrets, and the API's URL.

    Subclasses are ``@dataclass(frozen=True, slots=True, repr=False)`` and mark their secret
    fields ``field(metadata=SECRET)``.
    """

    def __repr__(self) -> str:
        shown = (
            f"{f.name}={'<redacted>' if f.metadata.get('secret') and value else repr(value)}"
            for f in dataclasses.fields(self)
            for value in (getattr(self, f.name),)
        )
        return f"{type(self).__name__}({', '.join(shown)})"

    @property
    def resolved_api_base(self) -> str:
        """The API's base URL, without a trailing slash."""
        raise NotImplementedError


ConfigT = TypeVar("ConfigT", bound=GatewayConfig)


class HttpGateway(Generic[ConfigT]):
    """Base of every adapter: its configuration, its one shared httpx client, its clock."""

    name: str

    def __init__(
        self, config: ConfigT, *, client: httpx.AsyncClient, clock: Clock = time.time
    ) -> None:
        self._config = config
        self._client = client
        self._clock = clock
        self._base = config.resolved_api_base

    async def _send(
        self, request: httpx.Request, *, passthrough: frozenset[int] = frozenset()
    ) -> httpx.Response:
        """``send`` on this gateway's client, in its name and on its clock."""
        return await send(
            self._client, request, gateway=self.name, passthrough=passthrough, clock=self._clock
        )


@runtime_checkable
class Gateway(Protocol):
    """A payment gateway adapter."""

    name: str

    async def start_payment(self, request: PaymentRequest) -> PaymentStart:
        """Create the payment at the gateway; return where to send the customer."""
        ...

    async def fetch_status(self, ref: str) -> PaymentState:
        """Ask the gateway where the payment ``ref`` stands."""
        ...

    def verify_webhook(self, headers: Mapping[str, str], raw_body: bytes) -> WebhookEvent:
        """Verify the signature over the raw body, then parse; raise InvalidSignature."""
        ...

    async def refund(self, request: RefundRequest) -> RefundState:
        """Ask for a refund of (part of) a completed payment."""
        ...

    async def fetch_refund(self, reference: str, *, refund_ref: str | None = None) -> RefundState:
        """Ask where a refund stands (by our reference, or the gateway's id where it needs it)."""
        ...


class GatewayError(Exception):
    """Base of every error an adapter raises."""


class GatewayUnavailable(GatewayError):
    """The gateway could not answer now; ``retry_after`` seconds if it said when to retry."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class GatewayRejected(GatewayError):
    """The gateway refused the request; retrying it unchanged will not help."""

    def __init__(
        self, message: str, *, status_code: int | None = None, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.code = code


class InvalidSignature(GatewayError):
    """A webhook whose signature, secret or timestamp does not verify."""


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP date."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)


async def send(
    client: httpx.AsyncClient,
    request: httpx.Request,
    *,
    gateway: str,
    passthrough: frozenset[int] = frozenset(),
    clock: Clock = time.time,
) -> httpx.Response:
    """Send ``request``; map transport errors, 429 and 5xx to GatewayUnavailable, 4xx to Rejected.

    Status codes in ``passthrough`` are returned for the adapter to read (e.g. a 404 whose body
    says ``TRANSACTION_NOT_FOUND``, which changes nothing).
    """
    try:
        response = await client.send(request)  # not streamed: the body is read here
    except httpx.TimeoutException as exc:
        raise GatewayUnavailable(f"{gateway}: timed out ({type(exc).__name__})") from exc
    except httpx.HTTPError as exc:
        raise GatewayUnavailable(f"{gateway}: {type(exc).__name__}: {exc}") from exc
    status = response.status_code
    if status in passthrough or 200 <= status < 300:
        return response
    if status == 429:
        raise GatewayUnavailable(
            f"{gateway}: 429 too many requests",
            retry_after=parse_retry_after(response.headers.get("retry-after"), now=clock()),
        )
    if status >= 500 or status == 408:
        raise GatewayUnavailable(
            f"{gateway}: HTTP {status}",
            retry_after=parse_retry_after(response.headers.get("retry-after"), now=clock()),
        )
    code = _error_code(response)
    raise GatewayRejected(
        f"{gateway}: HTTP {status} {code or ''}".rstrip(), status_code=status, code=code
    )


def json_body(response: httpx.Response, *, gateway: str) -> dict[str, Any]:
    """The response's JSON object; a garbled body is "try again later", never a verdict."""
    try:
        body = response.json()
    except ValueError as exc:
        raise GatewayUnavailable(
            f"{gateway}: HTTP {response.status_code} body is not JSON"
        ) from exc
    if not isinstance(body, dict):
        raise GatewayUnavailable(f"{gateway}: HTTP {response.status_code} body is not an object")
    return body


def _error_code(response: httpx.Response) -> str | None:
    try:
        body = response.json()
    except ValueError:
        return None
    if not isinstance(body, dict):
        return None
    code = body.get("code")
    error = body.get("error")
    if code is None and isinstance(error, dict):
        code = error.get("code") or error.get("type")
    return str(code) if code is not None else None


def header(headers: Mapping[str, str], name: str) -> str | None:
    """A header by case-insensitive name from any mapping (Starlette's, httpx's or a dict)."""
    value = headers.get(name)
    if value is not None:
        return value
    lower = name.lower()
    for key, item in headers.items():
        if key.lower() == lower:
            return item
    return None
