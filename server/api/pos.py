"""POS endpoints: move an order along the workflow; list the store's orders."""

from __future__ import annotations

from sqlalchemy import select
from starlette.requests import Request
from starlette.responses import JSONResponse

from orders import money
from orders.models import Order
from orders.refunds import Refunds
from orders.workflow import OrderStatus
from orders.writes import Actor
from server import protocol
from server.api import schemas
from server.api.common import body, principal, query
from server.api.contract import operation
from server.api.orders import ORDER_PATH
from server.auth import Role
from server.services import services


@operation(
    "Move one of the store's orders to a new status",
    tag="pos",
    path=ORDER_PATH,
    body=schemas.StatusChange,
    responses={
        200: ("Moved", schemas.OrderChanged),
        403: "Not a POS token",
        404: "No such order in this store",
        409: "Invalid transition; error.allowed lists the allowed next statuses",
    },
)
async def set_status(request: Request) -> JSONResponse:
    """Move one of the store's orders to a new status."""
    caller = principal(request, Role.POS)
    change = await body(request, schemas.StatusChange)
    svc = services(request)
    # A cancel of an order with money paid also requests its full refund (in the same
    # transaction, so it takes the one-change path); every other move is group-committed.
    move = (
        Refunds(svc.settlement).change_status
        if change.status is OrderStatus.CANCELLED
        else svc.writer.change_status
    )
    written = await move(
        order_id=request.path_params["order_id"],
        to=change.status,
        actor=Actor.of(caller),
        note=change.note,
    )
    return JSONResponse({"order": written.order, "event": protocol.audit_entry(written.event)})


@operation(
    "The store's orders, newest first, optionally of one status",
    tag="pos",
    query=schemas.StoreListQuery,
    responses={200: ("The orders", schemas.StoreOrders), 403: "Not a POS token"},
)
async def list_store(request: Request) -> JSONResponse:
    """The store's orders, newest first, optionally of one status."""
    caller = principal(request, Role.POS)
    params = query(request, schemas.StoreListQuery)
    statement = select(Order).where(Order.store_id == caller.store_id)
    if params.status is not None:
        statement = statement.where(Order.status == params.status.value)
    statement = statement.order_by(Order.created_at.desc(), Order.id.desc()).limit(params.limit)
    async with services(request).db.read() as session:
        orders = (await session.execute(statement)).scalars()
        return JSONResponse({"orders": await money.snapshots(session, orders)})
