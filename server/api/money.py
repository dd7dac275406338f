"""The money side of an order: manual payments (cash, card terminal, transfer) and refunds."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse

from orders.refunds import Refunds
from orders.writes import Actor
from server.api import schemas
from server.api.common import body, principal
from server.api.contract import operation
from server.api.orders import ORDER_PATH
from server.auth import Role
from server.services import services


@operation(
    "Record a payment taken outside a gateway (the order's store, or an admin)",
    tag="payments",
    path=ORDER_PATH,
    body=schemas.ManualPayment,
    responses={
        201: ("Recorded, COMPLETED at once", schemas.ManualPaymentRecorded),
        403: "Not a POS or admin token",
        404: "No such order in this store",
        409: "The order is CANCELLED or EXPIRED (not_payable)",
        422: "A bad field, or an amount above what is outstanding (error.outstanding)",
    },
)
async def record_manual_payment(request: Request) -> JSONResponse:
    """Record a payment taken outside a gateway (the order's store, or an admin)."""
    caller = principal(request, Role.POS, Role.ADMIN)
    taken = await body(request, schemas.ManualPayment)
    svc = services(request)
    applied = await svc.settlement.record_manual(
        order_id=request.path_params["order_id"],
        method=taken.method,
        amount=taken.amount,
        reference=taken.reference,
        actor=Actor.of(caller),
    )
    return JSONResponse({"payment": applied.payment, "order": applied.order}, status_code=201)


@operation(
    "Refund (part of) what was paid for the order (its store, or an admin)",
    tag="payments",
    path=ORDER_PATH,
    body=schemas.RefundRequest,
    responses={
        201: (
            "The refund records, spread over the payments newest first",
            schemas.RefundsRequested,
        ),
        403: "Not a POS or admin token",
        404: "No such order in this store",
        409: "Nothing left to refund (nothing_to_refund)",
        422: "A bad field, or more than may be refunded (error.refundable)",
    },
)
async def request_refund(request: Request) -> JSONResponse:
    """Refund (part of) what was paid for the order (its store, or an admin)."""
    caller = principal(request, Role.POS, Role.ADMIN)
    wanted = await body(request, schemas.RefundRequest)
    svc = services(request)
    done = await Refunds(svc.settlement).request(
        order_id=request.path_params["order_id"],
        amount=wanted.amount,
        reason=wanted.reason,
        actor=Actor.of(caller),
    )
    return JSONResponse({"refunds": done.refunds, "order": done.order}, status_code=201)
