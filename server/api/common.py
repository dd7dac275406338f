"""Request helpers shared by the API modules: the caller's principal and the JSON body."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request

from server.auth import AuthError, Principal, Role, bearer_token
from server.errors import BadRequest, Forbidden, PayloadTooLarge, Unauthenticated
from server.services import services


def principal(request: Request, *roles: Role) -> Principal:
    """The verified caller; 401 without a valid token, 403 if its role is not in ``roles``."""
    token = bearer_token(request.headers.get("authorization"))
    if token is None:
        raise Unauthenticated("an Authorization: Bearer token is required")
    try:
        caller = services(request).verifier.verify(token)
    except AuthError as exc:
        raise Unauthenticated(str(exc)) from None
    if roles and caller.role not in roles:
        raise Forbidden(f"this call is not for role {caller.role.value}")
    return caller


async def json_body(request: Request, *, required: bool = True) -> dict[str, Any]:
    """The request's JSON object, bounded by MAX_BODY_BYTES; 400 / 413 otherwise."""
    limit = services(request).settings.max_body_bytes
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise PayloadTooLarge(f"body larger than {limit} bytes")
        except ValueError:
            raise BadRequest("bad Content-Length") from None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"body larger than {limit} bytes")
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw.strip():
        if required:
            raise BadRequest("a JSON body is required", code="invalid_json")
        return {}
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise BadRequest("body must be a JSON object", code="invalid_json")
    return body


def query_int(request: Request, name: str, default: int, *, lo: int, hi: int) -> int:
    """An integer query parameter within [lo, hi]; 400 naming it otherwise."""
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"{name} must be an integer", code="invalid_query") from None
    if not lo <= value <= hi:
        raise BadRequest(f"{name} must be between {lo} and {hi}", code="invalid_query")
    return value
