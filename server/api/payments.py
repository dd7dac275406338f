"""Payment endpoints: start an attempt at a gateway, and ask the gateway now (verify)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse

from orders import money
from orders.models import Order, Payment
from orders.payments import LIVE, PaymentStatus
from orders.writes import ORDER_ID, Actor, visible_to
from server.api import schemas
from server.api.common import body, principal
from server.api.contract import operation
from server.api.orders import ORDER_PATH
from server.auth import Role
from server.errors import Conflict, NotFound
from server.services import services


@operation(
    "Start a payment of the order at a gateway (its owner)",
    tag="payments",
    path=ORDER_PATH,
    body=schemas.StartPayment,
    responses={
        201: ("Started (or the live attempt resumed)", schemas.PaymentStarted),
        403: "Not a customer token",
        404: "No such order (or not yours)",
        409: "Not payable, already paid, or another attempt is live (named)",
        422: "Unknown field, a gateway not offered here (error.offered lists them), or an"
        " amount above what is outstanding (error.outstanding)",
        502: "The gateway refused the payment (it is FAILED; retry allowed)",
        503: "The gateway could not answer (the attempt is kept; retry), or the database",
    },
)
async def start(request: Request) -> JSONResponse:
    """Start a payment of the order at a gateway (its owner)."""
    caller = principal(request, Role.CUSTOMER)
    wanted = await body(request, schemas.StartPayment)
    gateway = wanted.gateway
    svc = services(request)
    order_id = request.path_params["order_id"]
    base = (svc.settings.public_url or str(request.base_url)).rstrip("/")
    return_url = None
    if svc.settings.payment_return_url:
        return_url = svc.settings.payment_return_url.replace("{order_id}", order_id)
    payment, redirect_url = await svc.settlement.start(
        order_id=order_id,
        gateway_name=gateway,
        actor=Actor.of(caller),
        callback_url=f"{base}/webhooks/{gateway}",
        return_url=return_url,
        amount=wanted.amount,
    )
    return JSONResponse({"payment": payment, "redirect_url": redirect_url}, status_code=201)


@operation(
    "Ask the gateway now where the order's payment stands (its owner, an admin)",
    tag="payments",
    path=ORDER_PATH,
    responses={
        200: ("What the gateway says now", schemas.PaymentVerified),
        403: "Not a customer or admin token",
        404: "No such order (or not yours)",
        409: "The order has no payment to verify",
        503: "The gateway or the database could not answer",
    },
)
async def verify(request: Request) -> JSONResponse:
    """Ask the gateway now where the order's payment stands (its owner, an admin)."""
    caller = principal(request, Role.CUSTOMER, Role.ADMIN)
    svc = services(request)
    order_id = request.path_params["order_id"]
    if not ORDER_ID.fullmatch(order_id):
        raise NotFound("no such order")
    async with svc.db.read() as session:
        order = await session.get(Order, order_id)
        if order is None or not visible_to(order, caller):
            raise NotFound("no such order")
        attempts = list(
            (
                await session.execute(
                    Payment.__table__.select()
                    .where(Payment.order_id == order_id)
                    .order_by(Payment.created_at.desc(), Payment.id.desc())
                )
            ).all()
        )
    if not attempts:
        raise Conflict("the order has no payment to verify", code="no_payment")
    live = [p for p in attempts if p.status in LIVE]
    target = live[0] if live else attempts[0]
    result = await svc.settlement.check(
        target.id,
        actor=Actor.of(caller, source="customer" if caller.role is Role.CUSTOMER else "system"),
        reuse_within=svc.settings.payment_check_reuse,
    )
    async with svc.db.read() as session:
        fresh = await session.get(Order, order_id)
        assert fresh is not None
        (snapshot,) = await money.snapshots(session, [fresh])
    return JSONResponse(
        {
            "payment": result.payment,
            "order": snapshot,
            "payment_status": (result.payment or {}).get("status", PaymentStatus.INITIATED.value),
            "status_updated": result.changed
            or (result.payment is not None and result.payment["status"] != target.status),
            "checked": result.outcome,
        }
    )
