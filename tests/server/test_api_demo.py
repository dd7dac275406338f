"""Demo tokens: minted only when DEMO_TOKENS is on, and only for customers and terminals."""

from __future__ import annotations

import logging
import time

import jwt
import pytest

from server.auth import DEMO_KID, AuthError, Role, TokenVerifier, demo_claims
from tests.conftest import StartService
from tests.server.test_auth import PUBLIC_PEM, rs256
from tests.support.asserts import assert_error
from tests.support.clients import SECRET, auth, order_body, token


async def test_a_minted_demo_token_works_on_the_api(start_service: StartService) -> None:
    service = await start_service(demo_tokens=True, jwt_secret=None)
    r = await service.http.post("/demo/token", json={"sub": "demo-alice"})
    assert r.status_code == 200, r.text
    token = r.json()["token"]
    created = await service.http.post("/api/orders", json=order_body(), headers=auth(token))
    assert created.status_code == 201
    assert created.json()["order"]["customer_id"] == "demo-alice"
    pos = await service.http.post(
        "/demo/token", json={"sub": "till", "role": "pos", "store_id": "store-1", "ttl": 60}
    )
    listed = await service.http.get("/api/pos/orders", headers=auth(pos.json()["token"]))
    assert [o["customer_id"] for o in listed.json()["orders"]] == ["demo-alice"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "sub"),
        ({"sub": ""}, "sub"),
        ({"sub": "x", "role": "admin"}, "role"),
        ({"sub": "x", "role": "pos"}, "store_id"),
        ({"sub": "x", "ttl": 10**9}, "ttl"),
        ({"sub": "x", "ttl": True}, "ttl"),
    ],
)
async def test_a_bad_demo_token_request_is_422_naming_the_field(
    start_service: StartService, body: dict[str, object], field: str
) -> None:
    service = await start_service(demo_tokens=True)
    error = assert_error(await service.http.post("/demo/token", json=body), 422, "validation_error")
    assert error["field"] == field


async def test_without_demo_tokens_there_is_no_way_to_mint_one(start_service: StartService) -> None:
    service = await start_service(demo_tokens=False)
    assert_error(await service.http.post("/demo/token", json={"sub": "x"}), 404, "not_found")


# -- issue 7, item 7: demo tokens are never signed with the real key ------------------------------


async def test_with_a_real_jwt_secret_the_embedded_default_has_no_demo_tokens(
    start_service: StartService,
) -> None:
    # demo_tokens=None is the default a deployment gets when DEMO_TOKENS is unset.
    service = await start_service(demo_tokens=None, jwt_secret=SECRET)
    r = await service.http.post(
        "/demo/token", json={"sub": "mallory", "role": "pos", "store_id": "s"}
    )
    assert_error(r, 404, "not_found")


async def test_explicit_demo_tokens_beside_a_real_secret_are_signed_with_the_demo_secret_only(
    start_service: StartService,
) -> None:
    service = await start_service(demo_tokens=True, jwt_secret=SECRET)
    r = await service.http.post("/demo/token", json={"sub": "demo-bob"})
    assert r.status_code == 200, r.text
    minted = r.json()["token"]
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(minted, SECRET, algorithms=["HS256"])
    assert jwt.get_unverified_header(minted)["kid"] == DEMO_KID
    # Both kinds of token are accepted while demo tokens are on.
    for bearer in (minted, token("real-carol")):
        created = await service.http.post("/api/orders", json=order_body(), headers=auth(bearer))
        assert created.status_code == 201, created.text


async def test_a_demo_token_is_refused_by_a_server_without_demo_tokens(
    start_service: StartService,
) -> None:
    minting = await start_service(demo_tokens=True, jwt_secret=SECRET)
    minted = (await minting.http.post("/demo/token", json={"sub": "demo-dan"})).json()["token"]
    strict = await start_service(demo_tokens=False, jwt_secret=SECRET)
    r = await strict.http.get("/api/orders", headers=auth(minted))
    assert_error(r, 401, "unauthenticated")


async def test_demo_tokens_beside_a_public_key_mint_and_work_instead_of_a_500(
    start_service: StartService,
) -> None:
    service = await start_service(
        demo_tokens=True, jwt_secret=None, jwt_public_key=PUBLIC_PEM, jwt_algorithms=("RS256",)
    )
    r = await service.http.post("/demo/token", json={"sub": "demo-erin"})
    assert r.status_code == 200, r.text
    created = await service.http.post(
        "/api/orders", json=order_body(), headers=auth(r.json()["token"])
    )
    assert created.status_code == 201, created.text
    # The real key still works beside them.
    real = rs256({"sub": "real-fay", "exp": int(time.time()) + 60})
    assert (await service.http.get("/api/orders", headers=auth(real))).status_code == 200


async def test_the_server_warns_at_start_when_demo_tokens_are_on(
    start_service: StartService, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="server.app"):
        await start_service(demo_tokens=True, jwt_secret=SECRET)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any("DEMO_TOKENS is on" in r.getMessage() for r in warnings), caplog.text


async def test_the_server_says_nothing_of_demo_tokens_when_they_are_off(
    start_service: StartService, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="server.app"):
        await start_service(demo_tokens=None, jwt_secret=SECRET)
    assert "orderstatus ready" in caplog.text
    assert "DEMO_TOKENS" not in caplog.text


def test_a_demo_signed_token_is_accepted_only_while_demo_tokens_are_on() -> None:
    demo_secret = "per-process-demo-secret-0123456789"
    on = TokenVerifier(key=SECRET, algorithms=("HS256",), demo_secret=demo_secret)
    minted = on.mint_demo(demo_claims("demo-gil", Role.CUSTOMER, None, 60))
    assert on.verify(minted).sub == "demo-gil"
    off = TokenVerifier(key=SECRET, algorithms=("HS256",))
    with pytest.raises(AuthError):
        off.verify(minted)
    with pytest.raises(ValueError, match="demo tokens are off"):
        off.mint_demo(demo_claims("demo-gil", Role.CUSTOMER, None, 60))
