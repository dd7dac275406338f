"""POS endpoints: move an order along the workflow; list the store's orders."""

from __future__ import annotations

from sqlalchemy import select
from starlette.requests import Request
from starlette.responses import JSONResponse

from server import protocol
from server.api.common import json_body, principal, query_int
from server.auth import Role
from server.errors import Unprocessable
from server.models import Order
from server.services import services
from server.workflow import OrderStatus, parse_status
from server.writes import Actor, change_order_status

_STATUS_FIELDS = {"status", "note"}


async def set_status(request: Request) -> JSONResponse:
    """
    summary: Move one of the store's orders to a new status
    tags: [pos]
    security: [{bearer: []}]
    parameters: [{name: order_id, in: path, required: true, schema: {type: string}}]
    requestBody:
      required: true
      content:
        application/json:
          schema:
            type: object
            required: [status]
            properties:
              status:
                type: string
                enum: [CONFIRMED, PREPARING, READY, OUT_FOR_DELIVERY, DELIVERED, CANCELLED]
              note: {type: string, maxLength: 500}
    responses:
      200: {description: "{order, event}"}
      401: {description: Unauthenticated}
      403: {description: Not a POS token}
      404: {description: No such order in this store}
      409: {description: "Invalid transition; error.allowed lists the allowed next statuses"}
      422: {description: Unknown status}
    """
    caller = principal(request, Role.POS)
    body = await json_body(request)
    unknown = sorted(set(body) - _STATUS_FIELDS)
    if unknown:
        raise Unprocessable(f"unknown field {unknown[0]}", field=unknown[0])
    status = parse_status(body.get("status"))
    if status is None:
        raise Unprocessable(
            "status must be one of " + ", ".join(s.value for s in OrderStatus),
            field="status",
        )
    note = body.get("note")
    if note is not None and (not isinstance(note, str) or len(note) > 500):
        raise Unprocessable("note must be a string of at most 500 characters", field="note")
    svc = services(request)
    written = await change_order_status(
        svc.db,
        svc.publisher,
        svc.metrics,
        order_id=request.path_params["order_id"],
        to=status,
        actor=Actor.of(caller),
        note=note,
    )
    return JSONResponse({"order": written.order, "event": protocol.audit_entry(written.event)})


async def list_store(request: Request) -> JSONResponse:
    """
    summary: The store's orders, newest first, optionally of one status
    tags: [pos]
    security: [{bearer: []}]
    parameters:
      - {name: status, in: query, schema: {type: string}}
      - {name: limit, in: query, schema: {type: integer, minimum: 1, maximum: 500}}
    responses:
      200: {description: "{orders}"}
      401: {description: Unauthenticated}
      403: {description: Not a POS token}
      422: {description: Unknown status}
    """
    caller = principal(request, Role.POS)
    limit = query_int(request, "limit", 200, lo=1, hi=500)
    statement = select(Order).where(Order.store_id == caller.store_id)
    raw_status = request.query_params.get("status")
    if raw_status:
        status = parse_status(raw_status)
        if status is None:
            raise Unprocessable(f"unknown status {raw_status!r}", field="status")
        statement = statement.where(Order.status == status.value)
    statement = statement.order_by(Order.created_at.desc(), Order.id.desc()).limit(limit)
    async with services(request).db.read() as session:
        orders = (await session.execute(statement)).scalars()
        return JSONResponse({"orders": [protocol.order_snapshot(o) for o in orders]})
