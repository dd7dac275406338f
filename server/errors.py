"""API errors and their JSON rendering; WebSocket close codes.

Exception tree::

    ApiError(status, code, message)
    ├── BadRequest        400  invalid_json, bad_request
    ├── Unauthenticated   401  unauthenticated
    ├── Forbidden         403  forbidden
    ├── NotFound          404  not_found
    ├── Conflict          409  invalid_transition (lists allowed next statuses),
    │                          unknown_status (the stored status is not one this code knows)
    ├── PayloadTooLarge   413  payload_too_large
    └── Unprocessable     422  validation_error (names the field)

The domain's refusals (``orders/errors.py``) are translated here, at the boundary::

    DomainError             (its code)
    ├── Invalid             422  validation_error, amount_too_large, ...
    ├── Forbidden           403  forbidden
    ├── NotFound            404  not_found
    ├── Conflict            409  invalid_transition, payment_in_progress, already_paid, ...
    ├── GatewayRefused      502  gateway_rejected
    ├── GatewayUnreachable  503  gateway_unavailable
    └── Overloaded          503  write_queue_full (a store's group-commit queue is full)

Database failures are answered here too: 503 ``database_unavailable`` (the transaction did not
commit: nothing changed) and 503 ``commit_outcome_unknown`` (the connection was lost during the
COMMIT itself: the change may or may not have been applied).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from enum import IntEnum
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from orders import errors as domain

logger = logging.getLogger(__name__)


class CloseCode(IntEnum):
    """WebSocket close codes of the /ws protocol (README lists them)."""

    NORMAL = 1000
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    BAD_MESSAGE = 4400
    UNAUTHENTICATED = 4401
    FORBIDDEN = 4403
    SLOW_CONSUMER = 4408
    TOO_MANY_CONNECTIONS = 4429


class ApiError(Exception):
    """An error with an HTTP status and a stable machine-readable code."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str, *, code: str | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.extra = extra

    def body(self) -> dict[str, Any]:
        """The ``{"error": {...}}`` document."""
        return {"error": {"code": self.code, "message": self.message, **self.extra}}


class BadRequest(ApiError):
    status, code = 400, "bad_request"


class Unauthenticated(ApiError):
    status, code = 401, "unauthenticated"


class Forbidden(ApiError):
    status, code = 403, "forbidden"


class NotFound(ApiError):
    status, code = 404, "not_found"


class Conflict(ApiError):
    status, code = 409, "conflict"


class PayloadTooLarge(ApiError):
    status, code = 413, "payload_too_large"


class Unprocessable(ApiError):
    status, code = 422, "validation_error"


def error_response(
    http_status: int,
    code: str,
    message: str,
    extra: dict[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    """A JSON error response in the one shape the API uses."""
    headers = dict(headers or {})
    if http_status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse(
        {"error": {"code": code, "message": message, **(extra or {})}},
        status_code=http_status,
        headers=headers,
    )


async def handle_api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.code, exc.message, exc.extra)


#: The HTTP status of each domain refusal (the most specific class wins: the table is walked
#: along the exception's MRO).
DOMAIN_STATUS: dict[type[domain.DomainError], int] = {
    domain.DomainError: 400,
    domain.Invalid: 422,
    domain.Forbidden: 403,
    domain.NotFound: 404,
    domain.Conflict: 409,
    domain.GatewayRefused: 502,
    domain.GatewayUnreachable: 503,
    domain.Overloaded: 503,
}


def domain_status(exc: domain.DomainError) -> int:
    """The HTTP status that answers ``exc``."""
    for kind in type(exc).__mro__:
        if kind in DOMAIN_STATUS:
            return DOMAIN_STATUS[kind]
    raise AssertionError("every DomainError has a status")  # pragma: no cover


async def handle_domain_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, domain.DomainError)
    # Overloaded is momentary: say when to come back, as database_unavailable does.
    headers = {"Retry-After": "1"} if isinstance(exc, domain.Overloaded) else None
    return error_response(domain_status(exc), exc.code, exc.message, exc.extra, headers)


_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 400: "bad_request"}


async def handle_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    # Keep the exception's headers: a 405 must say what is Allowed.
    headers = dict(exc.headers or {})
    status, detail = exc.status_code, str(exc.detail)
    if status in (404, 405):
        allowed = _allowed(request)
        if allowed and request.method not in allowed.split(", "):
            # A path some route takes, asked with another method, is a 405 — even where a
            # mount below it answered instead (the static /demo has no file "token").
            status, code, detail = 405, _HTTP_CODES[405], "Method Not Allowed"
            headers["Allow"] = allowed
    return error_response(status, code, detail, headers=headers)


def _allowed(request: Request) -> str:
    """Every method the routes of this path take. Starlette's router names only the first
    route that matched the path (``/api/orders`` has one for GET and one for POST), and a mount
    below the path (the static ``/demo``) would answer for ``/demo/token`` with its own."""
    methods: set[str] = set()
    for route in getattr(request.app, "routes", ()):
        if isinstance(route, Route) and route.methods and route.path_regex.match(request.url.path):
            methods |= route.methods
    return ", ".join(sorted(methods))


async def handle_database_error(request: Request, exc: Exception) -> Response:
    # The database went away (restart, failover, network) or its pool is exhausted. The
    # transaction did not commit, so nothing changed: say so, and when to try again.
    logger.warning("database unavailable on %s %s: %s", request.method, request.url.path, exc)
    return error_response(
        503,
        "database_unavailable",
        "the database is unavailable; nothing was changed, try again",
        headers={"Retry-After": "1"},
    )


async def handle_database_timeout(request: Request, exc: Exception) -> Response:
    # A statement got no answer within DB_COMMAND_TIMEOUT (a partition is silence, not a
    # refusal). The COMMIT's own timeout is raised as CommitOutcomeUnknown instead, so this one
    # came before it: the transaction was not committed.
    logger.warning("database timed out on %s %s: %r", request.method, request.url.path, exc)
    return error_response(
        503,
        "database_unavailable",
        "the database did not answer in time; nothing was changed, try again",
        headers={"Retry-After": "1"},
    )


async def handle_commit_outcome_unknown(request: Request, exc: Exception) -> Response:
    # The connection died during COMMIT: the database may have committed just before. Saying
    # "nothing changed, try again" here would make a retry do the change twice.
    logger.error(
        "connection lost during COMMIT on %s %s; outcome unknown: %s",
        request.method,
        request.url.path,
        exc,
    )
    return error_response(
        503,
        "commit_outcome_unknown",
        "the database connection was lost while committing: the change may or may not have"
        " been applied; read the resource to check before retrying, or retry with the same"
        " Idempotency-Key",
        headers={"Retry-After": "1"},
    )


async def handle_unexpected(request: Request, exc: Exception) -> Response:
    logger.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(500, "internal_error", "internal server error")
