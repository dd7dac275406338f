"""The bundled sandbox gateway: a payment page, a status API, refunds, signed webhooks, chaos.

So that the whole payment flow works offline — in the demo and in the tests — this is a small
payment gateway of our own. Mount it in-process (``Mount("/sandbox", app=sandbox.app)``, with
``async with sandbox:`` in the host's lifespan, since Starlette does not run a mounted app's
lifespan) or run it as its own process: ``python -m gateways.sandbox_server`` (the Procfile's
``sandbox:``), configured by ``SANDBOX_*`` environment variables (``SandboxServerConfig``).

Routes (relative to where it is mounted)::

    POST /api/payments                   create {reference, amount, currency, return_url?,
                                         callback_url?, metadata?} → 201 payment + redirect_url
    GET  /api/payments/{id}              status (subject to the status chaos knobs)
    POST /api/payments/{id}/refunds      {reference, amount} → 201 refund
    GET  /api/refunds/{id or reference}  refund status (subject to the status chaos knobs, as
                                         is creating one; ``refund_delay`` keeps it pending)
    GET  /pay/{id}                       the hosted payment page (approve / decline / pending)
    POST /pay/{id}/{approve|decline|pending}
    GET|PUT /control/chaos               read / change the chaos knobs (JSON, partial PUT)
    GET  /control/stats                  counters and status calls per second
    GET  /control/payments               every payment and its true state
    POST /control/payments/{id}/{approve|decline|pending|expire|cancel}
    POST /control/reset                  forget payments, refunds and counters

Webhooks go to the payment's ``callback_url`` or ``SANDBOX_WEBHOOK_URL`` (e.g.
``http://127.0.0.1:8000/webhooks/sandbox``), signed ``Sandbox-Signature: t=…,v1=…``
(HMAC-SHA256 with ``SANDBOX_WEBHOOK_SECRET`` over ``"{t}." + body``, as Stripe signs).

Chaos decisions are the pure functions ``decide_webhook`` and ``decide_status`` of the knobs
and a random draw, with one seeded ``random.Random`` per server (``SANDBOX_SEED``).
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import json
import logging
import os
import random
import secrets
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Literal

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from gateways import signing
from gateways.base import Clock

logger = logging.getLogger("gateways.sandbox")

SIGNATURE_HEADER = "Sandbox-Signature"
MAX_BODY_BYTES = 65_536

Draw = Callable[[], float]
"""A uniform draw in [0, 1): ``random.Random(seed).random``, or a fixed sequence in tests."""


# --- chaos: knobs and pure decisions ------------------------------------------------------------

_PERCENT_KNOBS = (
    "drop",
    "duplicate",
    "delay",
    "reorder",
    "status_429",
    "status_5xx",
    "status_hang",
)


@dataclass(frozen=True, slots=True)
class Chaos:
    """The chaos knobs. Percentages are 0–100; times are seconds."""

    drop: float = 0.0
    """% of webhooks never sent."""
    duplicate: float = 0.0
    """% of webhooks sent twice (same event id)."""
    delay: float = 0.0
    """% of webhooks sent ``delay_seconds`` late."""
    delay_seconds: float = 2.0
    reorder: float = 0.0
    """% of webhooks held back ``reorder_seconds`` so that later ones overtake them."""
    reorder_seconds: float = 1.0
    status_429: float = 0.0
    """% of status calls answered 429 with ``Retry-After: retry_after``."""
    retry_after: int = 1
    status_5xx: float = 0.0
    """% of status calls answered 503."""
    status_hang: float = 0.0
    """% of status calls that hang ``hang_seconds`` (then 504)."""
    hang_seconds: float = 30.0
    approve_delay: float = 0.0
    """Late authorisation: an approved payment stays pending this long, then succeeds."""
    expire_after: float = 0.0
    """The gateway's own timeout: a payment nobody approved expires this long after it was
    created (0: never). A late authorisation already under way still succeeds."""
    refund_delay: float = 0.0
    """A refund stays pending this long, then succeeds (0: it succeeds at once). Its
    ``refund.pending`` and ``refund.succeeded`` webhooks go through the same chaos as a
    payment's; refund calls (create and status) through the status-call knobs."""

    def __post_init__(self) -> None:
        for name in _PERCENT_KNOBS:
            value = getattr(self, name)
            if not 0 <= value <= 100:
                raise ValueError(f"{name}: expected a percentage 0-100, got {value}")
        if self.status_429 + self.status_5xx + self.status_hang > 100:
            raise ValueError("status_429 + status_5xx + status_hang: more than 100 %")
        for name in (
            "delay_seconds",
            "reorder_seconds",
            "hang_seconds",
            "approve_delay",
            "expire_after",
            "refund_delay",
            "retry_after",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: expected >= 0, got {getattr(self, name)}")

    def updated(self, values: Mapping[str, Any]) -> Chaos:
        """These knobs with ``values`` changed; ValueError naming a bad or unknown knob."""
        known = {f.name: f for f in fields(self)}
        changes: dict[str, Any] = {}
        for name, value in values.items():
            if name not in known:
                raise ValueError(f"{name}: not a chaos knob (known: {', '.join(known)})")
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{name}: expected a number, got {value!r}")
            if name == "retry_after" and value != int(value):
                raise ValueError(f"{name}: expected whole seconds, got {value!r}")
            changes[name] = int(value) if name == "retry_after" else float(value)
        return replace(self, **changes)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Chaos:
        """Knobs from ``SANDBOX_<KNOB>`` variables (``SANDBOX_DROP=50``, …)."""
        values: dict[str, Any] = {}
        for f in fields(cls):
            name = f"SANDBOX_{f.name.upper()}"
            if name in environ:
                try:
                    values[f.name] = float(environ[name])
                except ValueError:
                    raise ValueError(f"{name}: expected a number, got {environ[name]!r}") from None
        try:
            return cls().updated(values)
        except ValueError as exc:
            knob, _, reason = str(exc).partition(":")
            raise ValueError(f"SANDBOX_{knob.upper()}:{reason}") from None


@dataclass(frozen=True, slots=True)
class WebhookPlan:
    """What to do with one webhook: send ``copies`` of it after ``delay`` seconds, or drop it."""

    drop: bool
    copies: int
    delay: float


@dataclass(frozen=True, slots=True)
class StatusPlan:
    """How to answer one status call."""

    kind: Literal["ok", "429", "5xx", "hang"]
    retry_after: int = 0
    hang_seconds: float = 0.0


def _hit(draw: float, percent: float) -> bool:
    return draw * 100 < percent


def decide_webhook(chaos: Chaos, draw: Draw) -> WebhookPlan:
    """PURE: the plan for one webhook. Always takes four draws, so a seed replays exactly."""
    dropped, duplicated, delayed, reordered = draw(), draw(), draw(), draw()
    if _hit(dropped, chaos.drop):
        return WebhookPlan(drop=True, copies=0, delay=0.0)
    delay = 0.0
    if _hit(delayed, chaos.delay):
        delay += chaos.delay_seconds
    if _hit(reordered, chaos.reorder):
        delay += chaos.reorder_seconds
    return WebhookPlan(
        drop=False, copies=2 if _hit(duplicated, chaos.duplicate) else 1, delay=delay
    )


def decide_status(chaos: Chaos, draw: Draw) -> StatusPlan:
    """PURE: how to answer one status call; the three faults share one draw in bands."""
    point = draw() * 100
    if point < chaos.status_429:
        return StatusPlan("429", retry_after=chaos.retry_after)
    if point < chaos.status_429 + chaos.status_5xx:
        return StatusPlan("5xx")
    if point < chaos.status_429 + chaos.status_5xx + chaos.status_hang:
        return StatusPlan("hang", hang_seconds=chaos.hang_seconds)
    return StatusPlan("ok")


# --- configuration -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SandboxServerConfig:
    """The sandbox gateway's settings (``SANDBOX_*`` when it runs as its own process)."""

    webhook_secret: str
    webhook_url: str | None = None
    api_key: str | None = None
    public_url: str | None = None
    chaos: Chaos = field(default_factory=Chaos)
    seed: int | None = None
    webhook_retries: int = 2
    webhook_timeout: float = 5.0
    host: str = "127.0.0.1"
    port: int = 8001

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> SandboxServerConfig:
        """Read ``SANDBOX_*``; the sandbox's own entry point is its only caller."""
        secret = environ.get("SANDBOX_WEBHOOK_SECRET")
        if not secret:
            raise ValueError("SANDBOX_WEBHOOK_SECRET: required (the webhooks' shared secret)")
        seed = environ.get("SANDBOX_SEED")
        port = environ.get("SANDBOX_PORT", "8001")
        if not port.isdigit():
            raise ValueError(f"SANDBOX_PORT: expected a port number, got {port!r}")
        if seed is not None and not seed.lstrip("-").isdigit():
            raise ValueError(f"SANDBOX_SEED: expected an integer, got {seed!r}")
        return cls(
            webhook_secret=secret,
            webhook_url=environ.get("SANDBOX_WEBHOOK_URL") or None,
            api_key=environ.get("SANDBOX_API_KEY") or None,
            public_url=environ.get("SANDBOX_PUBLIC_URL") or None,
            chaos=Chaos.from_environ(environ),
            seed=int(seed) if seed is not None else None,
            host=environ.get("SANDBOX_HOST", "127.0.0.1"),
            port=int(port),
        )


# --- state ---------------------------------------------------------------------------------------

SandboxStatus = Literal["created", "processing", "succeeded", "declined", "expired", "canceled"]
_FINAL: frozenset[str] = frozenset({"succeeded", "declined", "expired", "canceled"})


@dataclass(slots=True)
class _Payment:
    id: str
    reference: str
    amount: int
    currency: str
    created: float
    status: SandboxStatus = "created"
    return_url: str | None = None
    callback_url: str | None = None
    description: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    transaction_id: str | None = None
    completes_at: float | None = None
    expires_at: float | None = None
    refunded: int = 0

    def public(self) -> dict[str, Any]:
        return {
            "object": "payment",
            "id": self.id,
            "reference": self.reference,
            "status": self.status,
            "amount": self.amount,
            "currency": self.currency,
            "amount_refunded": self.refunded,
            "transaction_id": self.transaction_id,
            "metadata": self.metadata,
            "created": int(self.created),
        }


@dataclass(slots=True)
class _Refund:
    id: str
    reference: str
    payment_id: str
    amount: int
    currency: str
    status: Literal["pending", "succeeded", "failed"]
    created: float
    callback_url: str | None = None
    completes_at: float | None = None

    def public(self) -> dict[str, Any]:
        return {
            "object": "refund",
            "id": self.id,
            "reference": self.reference,
            "payment": self.payment_id,
            "status": self.status,
            "amount": self.amount,
            "currency": self.currency,
            "created": int(self.created),
        }


class _Problem(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


# --- the server ---------------------------------------------------------------------------------


class SandboxServer:
    """The sandbox gateway's state, webhook sender and routes; ``async with`` it to run."""

    def __init__(
        self,
        config: SandboxServerConfig,
        *,
        clock: Clock = time.time,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self.config = config
        self.chaos = config.chaos
        self._clock = clock
        self._rng = random.Random(config.seed)
        self._payments: dict[str, _Payment] = {}
        self._by_reference: dict[str, str] = {}
        self._refunds: dict[str, _Refund] = {}
        self._refund_by_reference: dict[str, str] = {}
        self.stats: Counter[str] = Counter()
        self._status_times: deque[float] = deque(maxlen=100_000)
        self._client = client
        self._own_client = client is None
        self._tasks: set[asyncio.Task[None]] = set()
        self._running = False
        self.app = Starlette(routes=self._routes(), exception_handlers={_Problem: _problem})

    async def __aenter__(self) -> SandboxServer:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self.config.webhook_timeout)
        self._running = True
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._running = False
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._own_client and self._client is not None:
            await self._client.aclose()
            self._client = None

    # -- routes

    def _routes(self) -> list[Route]:
        return [
            Route("/api/payments", self._create_payment, methods=["POST"]),
            Route("/api/payments/{payment_id}", self._get_payment, methods=["GET"]),
            Route("/api/payments/{payment_id}/refunds", self._create_refund, methods=["POST"]),
            Route("/api/refunds/{refund_id}", self._get_refund, methods=["GET"]),
            Route("/pay/{payment_id}", self._page, methods=["GET"], name="pay_page"),
            Route("/pay/{payment_id}/{action}", self._page_action, methods=["POST"]),
            Route("/control/chaos", self._chaos, methods=["GET", "PUT"]),
            Route("/control/stats", self._stats, methods=["GET"]),
            Route("/control/payments", self._list_payments, methods=["GET"]),
            Route(
                "/control/payments/{payment_id}/{action}", self._control_action, methods=["POST"]
            ),
            Route("/control/reset", self._reset, methods=["POST"]),
        ]

    def _authorise(self, request: Request) -> None:
        key = self.config.api_key
        if key and not secrets.compare_digest(
            request.headers.get("authorization", "").encode(), f"Bearer {key}".encode()
        ):
            raise _Problem(
                401, "unauthenticated", "Authorization: Bearer <SANDBOX_API_KEY> required"
            )

    async def _create_payment(self, request: Request) -> Response:
        self._authorise(request)
        body = await _json_object(request)
        reference = _field(body, "reference", str)
        amount = _field(body, "amount", int)
        currency = _field(body, "currency", str)
        if amount <= 0:
            raise _Problem(422, "validation_error", "amount: must be a positive integer")
        if len(currency) != 3 or not currency.isalpha():
            raise _Problem(422, "validation_error", "currency: a three-letter code")
        existing = self._by_reference.get(reference)
        if existing is not None:
            payment = self._payments[existing]
            if (payment.amount, payment.currency) != (amount, currency.upper()):
                raise _Problem(
                    409, "reference_reused", "reference already used for another payment"
                )
            return JSONResponse(self._payment_view(request, payment), status_code=200)
        metadata = body.get("metadata") or {}
        if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
            raise _Problem(422, "validation_error", "metadata: an object of strings")
        payment = _Payment(
            id="sbx_pay_" + secrets.token_hex(8),
            reference=reference,
            amount=amount,
            currency=currency.upper(),
            created=self._clock(),
            return_url=_optional(body, "return_url"),
            callback_url=_optional(body, "callback_url"),
            description=_optional(body, "description"),
            metadata={str(k): v for k, v in metadata.items()},
        )
        if self.chaos.expire_after > 0:
            payment.expires_at = payment.created + self.chaos.expire_after
            self._spawn(self._advance_later(payment, self.chaos.expire_after))
        self._payments[payment.id] = payment
        self._by_reference[reference] = payment.id
        self.stats["payments_created"] += 1
        return JSONResponse(self._payment_view(request, payment), status_code=201)

    def _payment_view(self, request: Request, payment: _Payment) -> dict[str, Any]:
        if self.config.public_url:
            url = f"{self.config.public_url.rstrip('/')}/pay/{payment.id}"
        else:
            url = str(request.url_for("pay_page", payment_id=payment.id))
        return {**payment.public(), "redirect_url": url}

    async def _status_chaos(self) -> Response | None:
        """The status-call knobs' answer to this call, or None to answer it for real."""
        now = self._clock()
        self.stats["status_calls"] += 1
        self._status_times.append(now)
        plan = decide_status(self.chaos, self._rng.random)
        match plan.kind:
            case "429":
                self.stats["status_429"] += 1
                return JSONResponse(
                    {"error": {"code": "rate_limited", "message": "slow down"}},
                    status_code=429,
                    headers={"Retry-After": str(plan.retry_after)},
                )
            case "5xx":
                self.stats["status_5xx"] += 1
                return JSONResponse(
                    {"error": {"code": "unavailable", "message": "chaos"}}, status_code=503
                )
            case "hang":
                self.stats["status_hang"] += 1
                await asyncio.sleep(plan.hang_seconds)
                return JSONResponse(
                    {"error": {"code": "timeout", "message": "chaos"}}, status_code=504
                )
            case "ok":
                return None

    async def _get_payment(self, request: Request) -> Response:
        self._authorise(request)
        chaos = await self._status_chaos()
        if chaos is not None:
            return chaos
        payment = self._payment(request.path_params["payment_id"])
        self._advance(payment)
        return JSONResponse(payment.public())

    async def _create_refund(self, request: Request) -> Response:
        self._authorise(request)
        self.stats["refund_calls"] += 1
        chaos = await self._status_chaos()
        if chaos is not None:
            return chaos
        payment = self._payment(request.path_params["payment_id"])
        body = await _json_object(request)
        reference = _field(body, "reference", str)
        amount = _field(body, "amount", int)
        existing = self._refund_by_reference.get(reference)
        if existing is not None:
            self._advance_refund(self._refunds[existing])
            return JSONResponse(self._refunds[existing].public())
        self._advance(payment)
        if payment.status != "succeeded":
            raise _Problem(409, "payment_not_succeeded", f"payment is {payment.status}")
        if amount <= 0 or amount > payment.amount - payment.refunded:
            raise _Problem(422, "amount_too_large", "amount: more than what is left to refund")
        payment.refunded += amount
        refund = _Refund(
            id="sbx_re_" + secrets.token_hex(8),
            reference=reference,
            payment_id=payment.id,
            amount=amount,
            currency=payment.currency,
            status="pending" if self.chaos.refund_delay > 0 else "succeeded",
            created=self._clock(),
            callback_url=payment.callback_url,
        )
        self._refunds[refund.id] = refund
        self._refund_by_reference[reference] = refund.id
        self.stats["refunds"] += 1
        if refund.status == "pending":
            refund.completes_at = refund.created + self.chaos.refund_delay
            self._spawn(self._advance_refund_later(refund, self.chaos.refund_delay))
        self._emit(f"refund.{refund.status}", refund.public(), refund.callback_url)
        return JSONResponse(refund.public(), status_code=201)

    async def _get_refund(self, request: Request) -> Response:
        self._authorise(request)
        chaos = await self._status_chaos()
        if chaos is not None:
            return chaos
        key = request.path_params["refund_id"]
        refund = self._refunds.get(key) or self._refunds.get(self._refund_by_reference.get(key, ""))
        if refund is None:
            raise _Problem(404, "not_found", "no such refund")
        self._advance_refund(refund)
        return JSONResponse(refund.public())

    def _advance_refund(self, refund: _Refund) -> None:
        """A pending refund whose time has come succeeds (whoever looks first)."""
        if (
            refund.status == "pending"
            and refund.completes_at is not None
            and self._clock() >= refund.completes_at
        ):
            refund.status = "succeeded"
            self.stats["refunds_succeeded"] += 1
            self._emit("refund.succeeded", refund.public(), refund.callback_url)

    async def _advance_refund_later(self, refund: _Refund, delay: float) -> None:
        await asyncio.sleep(delay)
        self._advance_refund(refund)

    async def _page(self, request: Request) -> Response:
        payment = self._payment(request.path_params["payment_id"])
        self._advance(payment)
        return HTMLResponse(_page_html(payment))

    async def _page_action(self, request: Request) -> Response:
        payment = self._payment(request.path_params["payment_id"])
        action = request.path_params["action"]
        if action not in ("approve", "decline", "pending"):
            raise _Problem(404, "not_found", f"no action {action!r}")
        self._act(payment, action)
        if payment.return_url:
            separator = "&" if "?" in payment.return_url else "?"
            target = f"{payment.return_url}{separator}payment={payment.id}&status={payment.status}"
            return RedirectResponse(target, status_code=303)
        return HTMLResponse(_page_html(payment))

    async def _control_action(self, request: Request) -> Response:
        self._authorise(request)
        payment = self._payment(request.path_params["payment_id"])
        action = request.path_params["action"]
        if action not in ("approve", "decline", "pending", "expire", "cancel"):
            raise _Problem(404, "not_found", f"no action {action!r}")
        self._act(payment, action)
        return JSONResponse(payment.public())

    async def _chaos(self, request: Request) -> Response:
        self._authorise(request)
        if request.method == "PUT":
            body = await _json_object(request)
            try:
                self.chaos = self.chaos.updated(body)
            except ValueError as exc:
                raise _Problem(422, "validation_error", str(exc)) from None
            logger.info("sandbox chaos set: %s", asdict(self.chaos))
        return JSONResponse(asdict(self.chaos))

    async def _stats(self, request: Request) -> Response:
        self._authorise(request)
        per_second = Counter(int(t) for t in self._status_times)
        return JSONResponse(
            {
                "counters": dict(self.stats),
                "status_calls_per_second": {str(k): v for k, v in sorted(per_second.items())},
            }
        )

    async def _list_payments(self, request: Request) -> Response:
        self._authorise(request)
        for payment in self._payments.values():
            self._advance(payment)
        return JSONResponse({"payments": [p.public() for p in self._payments.values()]})

    async def _reset(self, request: Request) -> Response:
        self._authorise(request)
        self._payments.clear()
        self._by_reference.clear()
        self._refunds.clear()
        self._refund_by_reference.clear()
        self.stats.clear()
        self._status_times.clear()
        self.chaos = self.config.chaos
        return JSONResponse({"reset": True})

    # -- state changes

    def _payment(self, payment_id: str) -> _Payment:
        payment = self._payments.get(payment_id)
        if payment is None:
            raise _Problem(404, "not_found", "no such payment")
        return payment

    def _act(self, payment: _Payment, action: str) -> None:
        """Apply a customer (page) or operator (control) action; a final payment stays final."""
        self._advance(payment)
        if payment.status in _FINAL:
            return
        match action:
            case "approve" if self.chaos.approve_delay > 0:
                payment.completes_at = self._clock() + self.chaos.approve_delay
                self._set(payment, "processing")
                self._spawn(self._advance_later(payment, self.chaos.approve_delay))
            case "approve":
                self._set(payment, "succeeded")
            case "decline":
                self._set(payment, "declined")
            case "pending":
                self._set(payment, "processing")
            case "expire":
                self._set(payment, "expired")
            case "cancel":
                self._set(payment, "canceled")

    def _advance(self, payment: _Payment) -> None:
        """Apply what time has decided (whoever looks first: a timer, a read, a click)."""
        now = self._clock()
        if payment.completes_at is not None:
            if payment.status == "processing" and now >= payment.completes_at:
                self._set(payment, "succeeded")
        elif (
            payment.expires_at is not None
            and payment.status in ("created", "processing")
            and now >= payment.expires_at
        ):
            self._set(payment, "expired")

    async def _advance_later(self, payment: _Payment, delay: float) -> None:
        await asyncio.sleep(delay)
        self._advance(payment)

    def _set(self, payment: _Payment, status: SandboxStatus) -> None:
        if payment.status == status:
            return
        payment.status = status
        if status == "succeeded":
            payment.completes_at = None
            payment.transaction_id = "sbx_txn_" + secrets.token_hex(8)
        self.stats[f"payments_{status}"] += 1
        self._emit(f"payment.{status}", payment.public(), payment.callback_url)

    # -- webhooks

    def _emit(self, event_type: str, obj: dict[str, Any], callback_url: str | None) -> None:
        url = callback_url or self.config.webhook_url
        self.stats["webhooks"] += 1
        if url is None or not self._running:
            self.stats["webhooks_unroutable"] += 1
            return
        event = {
            "id": "evt_" + secrets.token_hex(10),
            "type": event_type,
            "created": int(self._clock()),
            "data": {"object": obj},
        }
        plan = decide_webhook(self.chaos, self._rng.random)
        if plan.drop:
            self.stats["webhooks_dropped"] += 1
            return
        if plan.copies > 1:
            self.stats["webhooks_duplicated"] += 1
        if plan.delay > 0:
            self.stats["webhooks_delayed"] += 1
        body = json.dumps(event, separators=(",", ":")).encode()
        self._spawn(self._deliver(url, body, plan))

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(self, url: str, body: bytes, plan: WebhookPlan) -> None:
        if plan.delay:
            await asyncio.sleep(plan.delay)
        for _ in range(plan.copies):
            await self._post(url, body)

    async def _post(self, url: str, body: bytes) -> None:
        assert self._client is not None
        for attempt in range(self.config.webhook_retries + 1):
            # Signed at each send, as a gateway re-signs a retry: the timestamp is fresh.
            signature = signing.sign(body, self.config.webhook_secret, int(self._clock()))
            try:
                response = await self._client.post(
                    url,
                    content=body,
                    headers={"Content-Type": "application/json", SIGNATURE_HEADER: signature},
                )
            except httpx.HTTPError as exc:
                logger.warning("sandbox webhook to %s failed: %s", url, exc)
            else:
                if response.is_success:
                    self.stats["webhooks_sent"] += 1
                    return
                logger.warning("sandbox webhook to %s answered %s", url, response.status_code)
            await asyncio.sleep(0.2 * 2**attempt)
        self.stats["webhooks_failed"] += 1


# --- helpers ------------------------------------------------------------------------------------


async def _problem(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, _Problem)
    return JSONResponse(
        {"error": {"code": exc.code, "message": exc.message}}, status_code=exc.status
    )


async def _json_object(request: Request) -> dict[str, Any]:
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_BODY_BYTES:
            raise _Problem(413, "payload_too_large", f"body above {MAX_BODY_BYTES} bytes")
    try:
        body = json.loads(raw or b"{}")
    except ValueError:
        raise _Problem(400, "invalid_json", "body is not JSON") from None
    if not isinstance(body, dict):
        raise _Problem(400, "invalid_json", "body is not a JSON object")
    return body


def _field(body: Mapping[str, Any], name: str, kind: type[Any]) -> Any:
    value = body.get(name)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise _Problem(422, "validation_error", f"{name}: required, a {kind.__name__}")
    return value


def _optional(body: Mapping[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is not None and not isinstance(value, str):
        raise _Problem(422, "validation_error", f"{name}: a string")
    return value


def _page_html(payment: _Payment) -> str:
    amount = f"{payment.amount} (minor units) {html.escape(payment.currency)}"
    final = payment.status in _FINAL
    buttons = (
        ""
        if final
        else "".join(
            f'\n<form method="post" action="{payment.id}/{action}">'
            f'<button name="{action}">{label}</button></form>'
            for action, label in (
                ("approve", "Approve"),
                ("decline", "Decline"),
                ("pending", "Leave pending"),
            )
        )
    )
    back = (
        f'<p><a href="{html.escape(payment.return_url)}">Back to the shop</a></p>'
        if payment.return_url and final
        else ""
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>Sandbox payment {payment.id}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:28rem;margin:3rem auto;padding:0 1rem}}
form{{display:inline-block;margin:.25rem}}button{{font-size:1rem;padding:.5rem 1rem}}</style></head>
<body><h1>Sandbox gateway</h1>
<p>Payment <code>{payment.id}</code> for <strong>{amount}</strong>
{html.escape(payment.description or "")}</p>
<p>Status: <strong id="status">{payment.status}</strong></p>{buttons}{back}
<p><small>Test gateway bundled with orderstatus — no money moves.</small></p></body></html>"""


def create_app(config: SandboxServerConfig, *, clock: Clock = time.time) -> Starlette:
    """The sandbox as a standalone app whose lifespan runs the webhook sender."""
    server = SandboxServer(config, clock=clock)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with server:
            yield

    app = Starlette(
        routes=server.app.routes, lifespan=lifespan, exception_handlers={_Problem: _problem}
    )
    app.state.sandbox = server
    return app


def main() -> None:
    """``python -m gateways.sandbox_server``: serve the sandbox on SANDBOX_HOST:SANDBOX_PORT."""
    import uvicorn

    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO"))
    config = SandboxServerConfig.from_environ(os.environ)
    uvicorn.run(create_app(config), host=config.host, port=config.port, log_level="info")


if __name__ == "__main__":
    main()
