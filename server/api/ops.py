"""Operations endpoints: liveness, readiness, Prometheus metrics, the OpenAPI document."""

from __future__ import annotations

import asyncio

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from server import idempotency
from server.api import schemas
from server.api.contract import openapi_document, operation
from server.services import services


@operation(
    "Liveness: the process is up",
    tag="ops",
    secured=False,
    database=False,
    responses={200: ("Up", schemas.Health)},
)
async def healthz(request: Request) -> JSONResponse:
    """Liveness: the process is up."""
    return JSONResponse({"status": "ok"})


@operation(
    "Readiness: the database answers and the broker delivers (a heartbeat went through)",
    tag="ops",
    secured=False,
    database=False,
    responses={200: ("Ready", schemas.Ready), 503: ("Not ready", schemas.NotReady)},
)
async def readyz(request: Request) -> JSONResponse:
    """Readiness: the database answers and the broker delivers (a heartbeat went through)."""
    svc = services(request)
    checks: dict[str, str] = {}
    try:
        async with asyncio.timeout(2):
            await svc.db.ping()
        checks["database"] = "ok"
    except Exception as exc:  # any failure means not ready; the reason goes in the body
        checks["database"] = f"failed: {exc.__class__.__name__}"
    checks["broker"] = "ok" if svc.heartbeat.delivering else "not delivering"
    # On a Redis Cluster: which shard is degraded (its master's address and slots).
    for shard, delivering in svc.heartbeat.shard_states().items():
        checks[f"broker_shard {shard}"] = "ok" if delivering else "not delivering"
    if all(value == "ok" for value in checks.values()):
        return JSONResponse({"status": "ready", "checks": checks})
    return JSONResponse(
        {"error": {"code": "not_ready", "message": "a dependency is down"}, "checks": checks},
        status_code=503,
    )


async def metrics(request: Request) -> Response:
    """Prometheus metrics."""
    svc = services(request)
    return Response(generate_latest(svc.metrics.registry), media_type=CONTENT_TYPE_LATEST)


async def openapi(request: Request) -> Response:
    """This API's OpenAPI document, generated from the declarations in ``schemas``."""
    document = openapi_document(request.app.routes, services(request).settings)
    return JSONResponse(idempotency.document(document))
