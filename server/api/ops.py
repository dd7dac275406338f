"""Operations endpoints: liveness, readiness, Prometheus metrics, the OpenAPI document."""

from __future__ import annotations

import asyncio

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.schemas import SchemaGenerator

from server import idempotency
from server.services import services

schemas = SchemaGenerator(
    {
        "openapi": "3.0.3",
        "info": {"title": "orderstatus", "version": "0.1.0"},
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
            },
            "schemas": {
                "NewOrder": {
                    "type": "object",
                    "required": ["items", "currency"],
                    "properties": {
                        "store_id": {"type": "string"},
                        "currency": {"type": "string", "pattern": "^[A-Z]{3}$"},
                        "payment_method": {"type": "string", "enum": ["online", "cash"]},
                        "items": {
                            "type": "array",
                            "minItems": 1,
                            "items": {
                                "type": "object",
                                "required": ["sku", "name", "quantity", "unit_price"],
                                "properties": {
                                    "sku": {"type": "string"},
                                    "name": {"type": "string"},
                                    "quantity": {"type": "integer", "minimum": 1},
                                    "unit_price": {"type": "integer", "minimum": 0},
                                },
                            },
                        },
                    },
                }
            },
        },
    }
)


async def healthz(request: Request) -> JSONResponse:
    """
    summary: Liveness - the process is up
    tags: [ops]
    responses:
      200: {description: "{status: ok}"}
    """
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> JSONResponse:
    """
    summary: Readiness - the database answers and the broker delivers (a heartbeat went through)
    tags: [ops]
    responses:
      200: {description: "{status: ready, checks}"}
      503: {description: "{error, checks}: not ready"}
    """
    svc = services(request)
    checks: dict[str, str] = {}
    try:
        async with asyncio.timeout(2):
            await svc.db.ping()
        checks["database"] = "ok"
    except Exception as exc:  # any failure means not ready; the reason goes in the body
        checks["database"] = f"failed: {exc.__class__.__name__}"
    checks["broker"] = "ok" if svc.heartbeat.delivering else "not delivering"
    if all(value == "ok" for value in checks.values()):
        return JSONResponse({"status": "ready", "checks": checks})
    return JSONResponse(
        {"error": {"code": "not_ready", "message": "a dependency is down"}, "checks": checks},
        status_code=503,
    )


async def metrics(request: Request) -> Response:
    """
    summary: Prometheus metrics
    tags: [ops]
    responses:
      200: {description: Prometheus text format}
    """
    svc = services(request)
    return Response(generate_latest(svc.metrics.registry), media_type=CONTENT_TYPE_LATEST)


async def openapi(request: Request) -> Response:
    """
    summary: This API's OpenAPI document
    tags: [ops]
    responses:
      200: {description: OpenAPI 3 JSON}
    """
    return JSONResponse(idempotency.document(schemas.get_schema(routes=request.app.routes)))
