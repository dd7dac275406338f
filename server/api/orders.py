"""Customer endpoints: create, list (cursor), get, audit trail, cancel."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, or_, select
from starlette.requests import Request
from starlette.responses import JSONResponse

from server import protocol
from server.api.common import json_body, principal, query_int
from server.auth import Principal, Role
from server.errors import BadRequest, NotFound, Unprocessable
from server.models import Event, Order, Payment
from server.services import services
from server.settlement import payment_view
from server.workflow import OrderStatus, PaymentMethod
from server.writes import (
    ORDER_ID,
    Actor,
    change_order_status,
    create_order,
    require_store,
    visible_to,
)

logger = logging.getLogger(__name__)

MAX_ITEMS = 100
MAX_QUANTITY = 10_000
MAX_UNIT_PRICE = 10**9
_CURRENCY = re.compile(r"[A-Z]{3}")
# Control characters (NUL above all: PostgreSQL refuses it in text) have no place in a name.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

_ORDER_FIELDS = {"store_id", "items", "currency", "payment_method"}
_ITEM_FIELDS = {"sku", "name", "quantity", "unit_price"}


@dataclass(frozen=True, slots=True)
class NewOrder:
    """A validated create-order body."""

    store_id: str | None
    items: list[dict[str, Any]]
    currency: str
    payment_method: PaymentMethod


def _text(value: object, field: str, *, max_len: int) -> str:
    if not isinstance(value, str) or not value.strip():
        raise Unprocessable(f"{field} must be a non-empty string", field=field)
    if len(value) > max_len:
        raise Unprocessable(f"{field} must be at most {max_len} characters", field=field)
    if _CONTROL.search(value):
        raise Unprocessable(f"{field} must not contain control characters", field=field)
    return value


def _integer(value: object, field: str, *, lo: int, hi: int) -> int:
    # bool is an int in Python; true is not a quantity.
    if not isinstance(value, int) or isinstance(value, bool):
        raise Unprocessable(f"{field} must be an integer", field=field)
    if not lo <= value <= hi:
        raise Unprocessable(f"{field} must be between {lo} and {hi}", field=field)
    return value


def parse_new_order(body: dict[str, Any]) -> NewOrder:
    """Validate a create-order body; 422 naming the first bad field."""
    unknown = sorted(set(body) - _ORDER_FIELDS)
    if unknown:
        raise Unprocessable(f"unknown field {unknown[0]}", field=unknown[0])
    store_id = body.get("store_id")
    if store_id is not None:
        store_id = _text(store_id, "store_id", max_len=200)
    items_raw = body.get("items")
    if not isinstance(items_raw, list) or not items_raw:
        raise Unprocessable("items must be a non-empty list", field="items")
    if len(items_raw) > MAX_ITEMS:
        raise Unprocessable(f"at most {MAX_ITEMS} items", field="items")
    items = []
    for index, item in enumerate(items_raw):
        where = f"items[{index}]"
        if not isinstance(item, dict):
            raise Unprocessable(f"{where} must be an object", field=where)
        extra = sorted(set(item) - _ITEM_FIELDS)
        if extra:
            raise Unprocessable(f"unknown field {where}.{extra[0]}", field=f"{where}.{extra[0]}")
        items.append(
            {
                "sku": _text(item.get("sku"), f"{where}.sku", max_len=100),
                "name": _text(item.get("name"), f"{where}.name", max_len=200),
                "quantity": _integer(
                    item.get("quantity"), f"{where}.quantity", lo=1, hi=MAX_QUANTITY
                ),
                "unit_price": _integer(
                    item.get("unit_price"), f"{where}.unit_price", lo=0, hi=MAX_UNIT_PRICE
                ),
            }
        )
    currency = body.get("currency")
    if not isinstance(currency, str) or not _CURRENCY.fullmatch(currency):
        raise Unprocessable("currency must be a three-letter ISO 4217 code", field="currency")
    method_raw = body.get("payment_method", "online")
    try:
        method = PaymentMethod(method_raw)
    except ValueError:
        raise Unprocessable(
            "payment_method must be online or cash", field="payment_method"
        ) from None
    return NewOrder(store_id, items, currency, method)


async def create(request: Request) -> JSONResponse:
    """
    summary: Create an order (customer for themselves; a POS terminal for its store)
    tags: [orders]
    security: [{bearer: []}]
    requestBody:
      required: true
      content:
        application/json:
          schema: {$ref: "#/components/schemas/NewOrder"}
    responses:
      201: {description: "Created: {order}"}
      401: {description: Unauthenticated}
      403: {description: Another store}
      413: {description: Body too large}
      422: {description: Validation error naming the field}
    """
    caller = principal(request, Role.CUSTOMER, Role.POS)
    draft = parse_new_order(await json_body(request))
    svc = services(request)
    if caller.role is Role.POS:
        store_id = require_store(caller, draft.store_id)
        customer_id = None  # a walk-in order: on the store's stream only, owned by no customer
    else:
        if draft.store_id is None:
            raise Unprocessable("store_id is required", field="store_id")
        store_id, customer_id = draft.store_id, caller.sub
    written = await create_order(
        svc.db,
        svc.publisher,
        svc.metrics,
        customer_id=customer_id,
        store_id=store_id,
        items=draft.items,
        currency=draft.currency,
        payment_method=draft.payment_method,
        actor=Actor.of(caller),
        expiry=timedelta(seconds=svc.settings.order_expiry_seconds),
    )
    return JSONResponse({"order": written.order}, status_code=201)


# A list cursor is "<created_at in microseconds since the epoch>_<order id>": every string of
# that form (CURSOR_PATTERN, in /openapi.json) is a position the server can answer from, and an
# integer count of microseconds cannot name an instant outside datetime's range (defect 6: an
# ISO timestamp of year 1 with a +01:00 offset overflowed when moved to UTC).
CURSOR_PATTERN = r"^[0-9]{1,16}_ord_[0-9a-f]{24}$"
_CURSOR = re.compile(CURSOR_PATTERN)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


# One encoding for this list and the hello/reset snapshot's next_cursor.
_encode_cursor = protocol.order_list_cursor


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    if not _CURSOR.fullmatch(cursor):
        raise BadRequest("cursor is not one this API issued", code="invalid_cursor")
    micros, order_id = cursor.split("_", 1)
    return _EPOCH + timedelta(microseconds=int(micros)), order_id


def _scope(caller: Principal) -> Any:
    if caller.role is Role.POS:
        return Order.store_id == caller.store_id
    if caller.role is Role.ADMIN:
        return True
    return Order.customer_id == caller.sub


async def list_mine(request: Request) -> JSONResponse:
    """
    summary: My orders, newest first, with cursor pagination
    tags: [orders]
    security: [{bearer: []}]
    parameters:
      - {name: limit, in: query, schema: {type: integer, minimum: 1, maximum: 100}}
      - {name: cursor, in: query, schema: {type: string}}
    responses:
      200: {description: "{orders, next_cursor}"}
      400: {description: Bad limit or cursor}
      401: {description: Unauthenticated}
    """
    caller = principal(request)
    limit = query_int(request, "limit", 20, lo=1, hi=100)
    statement = select(Order).where(_scope(caller))
    cursor = request.query_params.get("cursor")
    if cursor:
        created, order_id = _decode_cursor(cursor)
        statement = statement.where(
            or_(Order.created_at < created, and_(Order.created_at == created, Order.id < order_id))
        )
    statement = statement.order_by(Order.created_at.desc(), Order.id.desc()).limit(limit + 1)
    async with services(request).db.read() as session:
        orders = list((await session.execute(statement)).scalars())
    next_cursor = _encode_cursor(orders[limit - 1]) if len(orders) > limit else None
    return JSONResponse(
        {"orders": [protocol.order_snapshot(o) for o in orders[:limit]], "next_cursor": next_cursor}
    )


async def _visible_order(request: Request, caller: Principal) -> Order:
    order_id = request.path_params["order_id"]
    if not ORDER_ID.fullmatch(order_id):
        raise NotFound("no such order")
    async with services(request).db.read() as session:
        order = await session.get(Order, order_id)
    # Someone else's order is indistinguishable from no order at all.
    if order is None or not visible_to(order, caller):
        raise NotFound("no such order")
    return order


def payment_snapshot(payment: Payment) -> dict[str, Any]:
    """The public JSON form of a payment attempt."""
    return payment_view(payment)


async def get_one(request: Request) -> JSONResponse:
    """
    summary: One order with its payments
    tags: [orders]
    security: [{bearer: []}]
    parameters: [{name: order_id, in: path, required: true, schema: {type: string}}]
    responses:
      200: {description: "{order, payments, status_updated}"}
      401: {description: Unauthenticated}
      404: {description: No such order (or not yours)}
    """
    caller = principal(request)
    order = await _visible_order(request, caller)
    payments = await _payments_of(request, order.id)
    status_updated = await read_check(request, caller, payments)
    if status_updated:
        order = await _visible_order(request, caller)
        payments = await _payments_of(request, order.id)
    return JSONResponse(
        {
            "order": protocol.order_snapshot(order),
            "payments": [payment_snapshot(p) for p in payments],
            "payment_status": order.payment_status,
            "status_updated": status_updated,
        }
    )


async def _payments_of(request: Request, order_id: str) -> list[Payment]:
    async with services(request).db.read() as session:
        return list(
            (
                await session.execute(
                    select(Payment).where(Payment.order_id == order_id).order_by(Payment.created_at)
                )
            ).scalars()
        )


async def read_check(request: Request, caller: Principal, payments: list[Payment]) -> bool:
    """The read-triggered check: a payment pending longer than PAYMENT_READ_CHECK_AFTER and not
    checked recently is asked about first (single flight, short wait); True if it moved.

    A gateway error, a timeout or a spent rate limit never fails the read: it answers with
    what the database says, and the check (if it started) lands for the next reader.
    """
    svc = services(request)
    settings = svc.settings
    now = datetime.now(UTC)
    for payment in payments:
        if payment.status not in ("INITIATED", "PENDING"):
            continue
        if (now - payment.created_at).total_seconds() < settings.payment_read_check_after:
            continue
        if (
            payment.last_checked_at is not None
            and (now - payment.last_checked_at).total_seconds() < settings.payment_check_reuse
        ):
            continue
        try:
            result = await svc.settlement.check(
                payment.id,
                actor=Actor.of(caller, source="read_check"),
                reuse_within=settings.payment_check_reuse,
                wait_for_rate=False,
                patience=settings.payment_read_check_timeout,
            )
        except TimeoutError:
            return False
        except Exception:
            logger.exception("read-triggered check of payment %s failed", payment.id)
            return False
        # Honest: the payment moved while this read waited (by this check, or by a webhook
        # or another check it joined), so the order is read again.
        return result.changed or (
            result.payment is not None and result.payment["status"] != payment.status
        )
    return False


async def audit_trail(request: Request) -> JSONResponse:
    """
    summary: The order's audit trail, oldest first
    tags: [orders]
    security: [{bearer: []}]
    parameters: [{name: order_id, in: path, required: true, schema: {type: string}}]
    responses:
      200: {description: "{events}"}
      401: {description: Unauthenticated}
      404: {description: No such order (or not yours)}
    """
    caller = principal(request)
    order = await _visible_order(request, caller)
    async with services(request).db.read() as session:
        events = (
            await session.execute(
                select(Event).where(Event.order_id == order.id).order_by(Event.id)
            )
        ).scalars()
        entries = [protocol.audit_entry(event) for event in events]
    return JSONResponse({"order_id": order.id, "events": entries})


async def cancel(request: Request) -> JSONResponse:
    """
    summary: Cancel an order (its owner while the workflow allows, or its store)
    tags: [orders]
    security: [{bearer: []}]
    parameters: [{name: order_id, in: path, required: true, schema: {type: string}}]
    requestBody:
      content:
        application/json:
          schema: {type: object, properties: {reason: {type: string, maxLength: 500}}}
    responses:
      200: {description: "{order, event}"}
      401: {description: Unauthenticated}
      404: {description: No such order (or not yours)}
      409: {description: "Not cancellable now; lists allowed next statuses"}
    """
    caller = principal(request)
    body = await json_body(request, required=False)
    unknown = sorted(set(body) - {"reason"})
    if unknown:
        raise Unprocessable(f"unknown field {unknown[0]}", field=unknown[0])
    reason = body.get("reason")
    if reason is not None:
        reason = _text(reason, "reason", max_len=500)
    svc = services(request)
    written = await change_order_status(
        svc.db,
        svc.publisher,
        svc.metrics,
        order_id=request.path_params["order_id"],
        to=OrderStatus.CANCELLED,
        actor=Actor.of(caller),
        note=reason,
    )
    return JSONResponse({"order": written.order, "event": protocol.audit_entry(written.event)})
