"""Demo-token minting (DEMO_TOKENS), so the demo pages can sign in.

On by default only on the embedded default with no JWT key configured. Tokens are signed with a
per-process secret, never with JWT_SECRET / JWT_PUBLIC_KEY: they work only on this process and
only while demo tokens are on.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse

from server.api.common import json_body
from server.auth import Role, demo_claims
from server.errors import NotFound, Unprocessable
from server.services import services

DEMO_TOKEN_TTL = 3600


async def mint_token(request: Request) -> JSONResponse:
    """
    summary: Mint a demo token (only when DEMO_TOKENS is on; 404 otherwise)
    tags: [demo]
    requestBody:
      required: true
      content:
        application/json:
          schema:
            type: object
            required: [sub]
            properties:
              sub: {type: string}
              role: {type: string, enum: [customer, pos]}
              store_id: {type: string}
              ttl: {type: integer, minimum: 5, maximum: 86400}
    responses:
      200: {description: "{token, expires_at}"}
      404: {description: Demo tokens are off}
      422: {description: Bad claims}
    """
    svc = services(request)
    if not svc.verifier.mints_demo_tokens:
        raise NotFound("demo tokens are disabled")
    body = await json_body(request)
    sub = body.get("sub")
    if not isinstance(sub, str) or not sub.strip() or len(sub) > 100:
        raise Unprocessable("sub must be a non-empty string", field="sub")
    try:
        role = Role(body.get("role", "customer"))
    except ValueError:
        raise Unprocessable("role must be customer or pos", field="role") from None
    if role is Role.ADMIN:
        raise Unprocessable("role must be customer or pos", field="role")
    store_id = body.get("store_id")
    if role is Role.POS and (not isinstance(store_id, str) or not store_id.strip()):
        raise Unprocessable("a pos token needs store_id", field="store_id")
    ttl = body.get("ttl", DEMO_TOKEN_TTL)
    if not isinstance(ttl, int) or isinstance(ttl, bool) or not 5 <= ttl <= 86_400:
        raise Unprocessable("ttl must be an integer between 5 and 86400", field="ttl")
    claims = demo_claims(sub, role, store_id if role is Role.POS else None, ttl)
    return JSONResponse({"token": svc.verifier.mint_demo(claims), "expires_at": claims["exp"]})
