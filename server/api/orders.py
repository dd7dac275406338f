"""Customer endpoints: create, list (cursor), get, audit trail, cancel."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
from sqlalchemy import and_, or_, select
from starlette.requests import Request
from starlette.responses import JSONResponse

from orders import money
from orders.models import Event, Order, Payment
from orders.refunds import Refunds
from orders.settlement import payment_view
from orders.workflow import OrderStatus
from orders.writes import (
    ORDER_ID,
    Actor,
    create_order,
    require_store,
    visible_to,
)
from server import protocol
from server.api import schemas
from server.api.common import body, principal, query
from server.api.contract import operation
from server.auth import Principal, Role
from server.errors import NotFound, Unprocessable
from server.services import services

ORDER_PATH = {"order_id": schemas.OrderId}
#: Where a created order's id leads (OpenAPI links, followed by stateful API clients and fuzzers).
ORDER_LINKS = {
    name: {"operationId": target, "parameters": {"order_id": "$response.body#/order/id"}}
    for name, target in [
        ("GetOrder", "get_api_orders_order_id"),
        ("GetOrderEvents", "get_api_orders_order_id_events"),
        ("CancelOrder", "post_api_orders_order_id_cancel"),
        ("SetOrderStatus", "post_api_pos_orders_order_id_status"),
    ]
}

logger = logging.getLogger(__name__)


@operation(
    "Create an order (a customer for themselves; a POS terminal for its store)",
    tag="orders",
    body=schemas.NewOrder,
    responses={
        201: ("Created", schemas.OrderCreated),
        403: "Not a customer or POS token, or another store",
    },
    links={201: ORDER_LINKS},
)
async def create(request: Request) -> JSONResponse:
    """Create an order: a customer's own, or a POS terminal's for its store."""
    caller = principal(request, Role.CUSTOMER, Role.POS)
    draft = await body(request, schemas.NewOrder)
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
        items=[msgspec.structs.asdict(item) for item in draft.items],
        currency=draft.currency,
        payment_method=draft.payment_method,
        actor=Actor.of(caller),
        expiry=timedelta(seconds=svc.settings.order_expiry_seconds),
    )
    return JSONResponse({"order": written.order}, status_code=201)


# The list cursor's form is schemas.CURSOR_PATTERN, checked by the query's declaration.
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


# One encoding for this list and the hello/reset snapshot's next_cursor.
_encode_cursor = protocol.order_list_cursor


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    micros, order_id = cursor.split("_", 1)
    return _EPOCH + timedelta(microseconds=int(micros)), order_id


def _scope(caller: Principal) -> Any:
    if caller.role is Role.POS:
        return Order.store_id == caller.store_id
    if caller.role is Role.ADMIN:
        return True
    return Order.customer_id == caller.sub


@operation(
    "The caller's orders, newest first, with cursor pagination",
    tag="orders",
    query=schemas.OrderListQuery,
    responses={200: ("A page of orders", schemas.OrderPage)},
)
async def list_mine(request: Request) -> JSONResponse:
    """The caller's orders, newest first, a page at a time."""
    caller = principal(request)
    params = query(request, schemas.OrderListQuery)
    limit = params.limit
    statement = select(Order).where(_scope(caller))
    if params.cursor is not None:
        created, order_id = _decode_cursor(params.cursor)
        statement = statement.where(
            or_(Order.created_at < created, and_(Order.created_at == created, Order.id < order_id))
        )
    statement = statement.order_by(Order.created_at.desc(), Order.id.desc()).limit(limit + 1)
    async with services(request).db.read() as session:
        orders = list((await session.execute(statement)).scalars())
        page = await money.snapshots(session, orders[:limit])
    next_cursor = _encode_cursor(orders[limit - 1]) if len(orders) > limit else None
    return JSONResponse({"orders": page, "next_cursor": next_cursor})


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


@operation(
    "One order with its payments",
    tag="orders",
    path=ORDER_PATH,
    responses={200: ("The order", schemas.OrderDetail), 404: "No such order (or not yours)"},
)
async def get_one(request: Request) -> JSONResponse:
    """One order with its payments."""
    caller = principal(request)
    order = await _visible_order(request, caller)
    payments = await _payments_of(request, order.id)
    status_updated = await read_check(request, caller, payments)
    if status_updated:
        order = await _visible_order(request, caller)
        payments = await _payments_of(request, order.id)
    async with services(request).db.read() as session:
        (snapshot,) = await money.snapshots(session, [order])
    return JSONResponse(
        {
            "order": snapshot,
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


@operation(
    "The order's audit trail, oldest first",
    tag="orders",
    path=ORDER_PATH,
    responses={200: ("The events", schemas.AuditTrail), 404: "No such order (or not yours)"},
)
async def audit_trail(request: Request) -> JSONResponse:
    """The order's audit trail, oldest first."""
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


@operation(
    "Cancel an order (its owner while the workflow allows, or its store)",
    tag="orders",
    path=ORDER_PATH,
    body=schemas.CancelRequest,
    body_required=False,
    responses={
        200: ("Cancelled", schemas.OrderChanged),
        403: "Another store",
        404: "No such order (or not yours)",
        409: "Not cancellable now; error.allowed lists the allowed next statuses",
    },
)
async def cancel(request: Request) -> JSONResponse:
    """Cancel an order (its owner while the workflow allows, or its store)."""
    caller = principal(request)
    reason = (await body(request, schemas.CancelRequest, required=False)).reason
    svc = services(request)
    # With money paid, the cancel also requests its full refund (in the same transaction).
    written = await Refunds(svc.settlement).change_status(
        order_id=request.path_params["order_id"],
        to=OrderStatus.CANCELLED,
        actor=Actor.of(caller),
        note=reason,
    )
    return JSONResponse({"order": written.order, "event": protocol.audit_entry(written.event)})
