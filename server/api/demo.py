"""Demo-token minting (DEMO_TOKENS), so the demo pages can sign in.

On by default only on the embedded default with no JWT key configured. Tokens are signed with a
per-process secret, never with JWT_SECRET / JWT_PUBLIC_KEY: they work only on this process and
only while demo tokens are on.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse

from server.api import schemas
from server.api.common import body
from server.api.contract import operation
from server.auth import Role, demo_claims
from server.errors import NotFound, Unprocessable
from server.services import services


@operation(
    "Mint a demo token (only when DEMO_TOKENS is on; 404 otherwise)",
    tag="demo",
    body=schemas.DemoTokenRequest,
    secured=False,
    database=False,
    responses={200: ("A signed token", schemas.DemoToken), 404: "Demo tokens are off"},
)
async def mint_token(request: Request) -> JSONResponse:
    """Mint a demo token when DEMO_TOKENS is on; 404 otherwise."""
    svc = services(request)
    if not svc.verifier.mints_demo_tokens:
        raise NotFound("demo tokens are disabled")
    wanted = await body(request, schemas.DemoTokenRequest)
    role = Role(wanted.role)
    if role is Role.POS and wanted.store_id is None:
        raise Unprocessable("a pos token needs store_id", field="store_id")
    claims = demo_claims(
        wanted.sub, role, wanted.store_id if role is Role.POS else None, wanted.ttl
    )
    return JSONResponse({"token": svc.verifier.mint_demo(claims), "expires_at": claims["exp"]})
