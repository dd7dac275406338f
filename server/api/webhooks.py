"""POST /webhooks/{gateway}: the signature first, then the one write path, deduped by event id.

Payment and refund events alike (Stripe ``refund.updated`` / ``charge.refunded``, PhonePe's
refund callbacks, the sandbox's ``refund.*``).

A bad signature (or timestamp, or a webhook signed for another gateway) is a 400 and writes
nothing. A verified event is recorded once in ``webhook_receipts`` (same transaction as the
change it makes) and acknowledged with 200, also when it names a payment we do not know or
changes nothing: the gateway must stop retrying it.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateways.base import InvalidSignature
from orders.refunds import Refunds
from server.errors import NotFound, PayloadTooLarge, error_response
from server.services import services


async def receive(request: Request) -> Response:
    """
    summary: A gateway's payment or refund notification (signed)
    tags: [webhooks]
    parameters: [{name: gateway, in: path, required: true, schema: {type: string}}]
    responses:
      200: {description: "{received, outcome}"}
      400: {description: Bad signature, stale timestamp or malformed event; nothing written}
      404: {description: No such gateway here}
      413: {description: Body too large}
    """
    svc = services(request)
    name = request.path_params["gateway"]
    gateway = svc.settlement.gateways.get(name)
    if gateway is None:
        raise NotFound("no such gateway")
    limit = svc.settings.max_body_bytes
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"body larger than {limit} bytes")
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > limit:
            raise PayloadTooLarge(f"body larger than {limit} bytes")
    try:
        event = gateway.verify_webhook(request.headers, bytes(raw))
    except InvalidSignature as exc:
        svc.metrics.webhooks.labels(gateway=name, outcome="bad_signature").inc()
        return error_response(400, "invalid_signature", f"webhook not accepted: {exc}")
    # Refund events (and PhonePe v1's payment-shaped refund callbacks) settle the refund;
    # every other event goes on to the payment path.
    outcome = await Refunds(svc.settlement).receive_webhook(event)
    svc.metrics.webhooks.labels(gateway=name, outcome=outcome.split(":")[0]).inc()
    return JSONResponse({"received": True, "outcome": outcome})
