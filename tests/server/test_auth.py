"""Identity comes from the token only: forged tokens refused everywhere; tenants stay apart.

Every forged token is tried on REST (401 with a JSON error body) and on the three WebSocket
transports: the Authorization header, ``?token=`` and a first ``auth`` message (all close 4401
after accept, so a browser can tell a bad token from a server that is down). A foreign browser
Origin is refused before accept (an HTTP 403 handshake rejection).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import jwt
import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus
from websockets.typing import Origin

from tests.conftest import Service, StartService
from tests.support.asserts import assert_error, counts
from tests.support.clients import (
    SECRET,
    auth,
    expect_close,
    frames_until_close,
    order_body,
    recv_events,
    recv_json,
    token,
    until_sentinel,
)

# -- hand-made tokens -------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _segment(document: dict[str, Any]) -> str:
    return _b64(orjson.dumps(document))


def _claims(sub: str = "alice", ttl: float = 3600, **extra: Any) -> dict[str, Any]:
    return {"sub": sub, "role": "customer", "exp": int(time.time() + ttl), **extra}


def hand_signed(
    header: dict[str, Any], claims: dict[str, Any], key: bytes, digest: str = "sha256"
) -> str:
    """A JWT signed with HMAC by hand (PyJWT refuses to use a PEM key as an HMAC secret)."""
    signing_input = f"{_segment(header)}.{_segment(claims)}"
    signature = hmac.new(key, signing_input.encode(), getattr(hashlib, digest)).digest()
    return f"{signing_input}.{_b64(signature)}"


def unsigned(claims: dict[str, Any], alg: str = "none") -> str:
    """An ``alg: none`` token: header . claims . empty signature."""
    return f"{_segment({'alg': alg, 'typ': 'JWT'})}.{_segment(claims)}."


def _tampered() -> str:
    header, _, signature = token("alice").split(".")
    return f"{header}.{_segment(_claims(sub='bob'))}.{signature}"


_PRIVATE_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
_OTHER_PRIVATE_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
PUBLIC_PEM = (
    _PRIVATE_KEY.public_key()
    .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    .decode()
)


def rs256(claims: dict[str, Any], private_key: rsa.RSAPrivateKey = _PRIVATE_KEY) -> str:
    """A token signed with RS256."""
    return jwt.encode(claims, private_key, algorithm="RS256")


#: name -> a token the default (HS256, shared secret) server must refuse.
FORGED_HS: dict[str, Callable[[], str]] = {
    "alg none": lambda: unsigned(_claims()),
    "alg None": lambda: unsigned(_claims(), alg="None"),
    "alg none signed with the secret": lambda: hand_signed(
        {"alg": "none", "typ": "JWT"}, _claims(), SECRET.encode()
    ),
    "wrong hmac key": lambda: token("alice", secret="not-the-secret-0123456789-0123456789"),
    "unpinned algorithm HS512 with the right secret": lambda: hand_signed(
        {"alg": "HS512", "typ": "JWT"}, _claims(), SECRET.encode(), digest="sha512"
    ),
    "tampered claims": _tampered,
    "expired": lambda: token("alice", ttl=-60),
    "missing exp": lambda: jwt.encode(
        {"sub": "alice", "role": "customer"}, SECRET, algorithm="HS256"
    ),
    "exp not a number": lambda: jwt.encode(
        {"sub": "alice", "exp": str(int(time.time()) + 3600)}, SECRET, algorithm="HS256"
    ),
    "missing sub": lambda: jwt.encode({"role": "customer", "exp": int(time.time()) + 3600}, SECRET),
    "empty sub": lambda: token(""),
    "sub not a string": lambda: jwt.encode({"sub": 42, "exp": int(time.time()) + 3600}, SECRET),
    "not yet valid": lambda: token("alice", nbf=int(time.time()) + 3600),
    "pos without store_id": lambda: token("pos-1", role="pos"),
    "pos with empty store_id": lambda: token("pos-1", role="pos", store_id=""),
    "unknown role": lambda: token("alice", role="superuser"),
    "rs256 token on an hs256 server": lambda: rs256(_claims()),
    "garbage": lambda: "not-a-jwt",
    "three garbage segments": lambda: "a.b.c",
}


# -- helpers ----------------------------------------------------------------------------------


async def refused_with_4401(url: str, **kwargs: Any) -> None:
    """Connecting to ``url`` is accepted, then closed with 4401 (browsers can read that)."""
    async with connect(url, open_timeout=5, **kwargs) as ws:
        assert await expect_close(ws) == 4401


async def refused_before_accept(url: str, **kwargs: Any) -> None:
    """Connecting to ``url`` is refused with an HTTP 403 handshake rejection."""
    with pytest.raises(InvalidStatus) as caught:
        async with connect(url, open_timeout=5, **kwargs):
            pass
    assert caught.value.response.status_code == 403


async def refused_after_auth_message(url: str, tok: str) -> int:
    """Connect without a token, send ``auth`` with ``tok``; the close code."""
    async with connect(url, open_timeout=5) as ws:
        await ws.send(orjson.dumps({"type": "auth", "token": tok}).decode())
        return await expect_close(ws)


async def create_order(service: Service, tok: str, **overrides: Any) -> dict[str, Any]:
    """Create an order with ``tok``; its JSON."""
    r = await service.http.post("/api/orders", json=order_body(**overrides), headers=auth(tok))
    assert r.status_code == 201, r.text
    order: dict[str, Any] = r.json()["order"]
    return order


async def assert_refused_everywhere(service: Service, tok: str) -> None:
    """``tok`` is refused on REST reads and writes and on every WebSocket transport."""
    before = await counts(service)
    error = assert_error(
        await service.http.get("/api/orders", headers=auth(tok)), 401, "unauthenticated"
    )
    assert tok not in error["message"]
    r = await service.http.post("/api/orders", json=order_body(), headers=auth(tok))
    assert_error(r, 401, "unauthenticated")
    assert r.headers.get("www-authenticate", "").lower().startswith("bearer")
    assert_error(await service.http.get("/api/events", headers=auth(tok)), 401, "unauthenticated")
    await refused_with_4401(service.ws_url, additional_headers=auth(tok))
    await refused_with_4401(f"{service.ws_url}?token={quote(tok, safe='')}")
    assert await refused_after_auth_message(service.ws_url, tok) == 4401
    assert await counts(service) == before


# -- forged tokens ----------------------------------------------------------------------------


@pytest.mark.parametrize("forgery", sorted(FORGED_HS))
async def test_a_forged_token_is_refused_on_rest_and_on_every_websocket_transport(
    service: Service, forgery: str
) -> None:
    await assert_refused_everywhere(service, FORGED_HS[forgery]())


async def test_a_valid_token_is_accepted_on_rest_and_on_every_websocket_transport(
    service: Service,
) -> None:
    tok = token("alice")
    r = await service.http.get("/api/orders", headers=auth(tok))
    assert r.status_code == 200, r.text
    async with connect(service.ws_url, additional_headers=auth(tok)) as ws:
        assert (await recv_json(ws))["stream"] == "customer:alice"
    async with connect(f"{service.ws_url}?token={tok}") as ws:
        assert (await recv_json(ws))["stream"] == "customer:alice"
    async with connect(service.ws_url) as ws:
        await ws.send(orjson.dumps({"type": "auth", "token": tok}).decode())
        assert (await recv_json(ws))["stream"] == "customer:alice"


@pytest.mark.parametrize(
    "header", [None, "", "Bearer", "Basic YWxpY2U6cHc=", "Token abc", "bearer"]
)
async def test_a_missing_or_malformed_authorization_header_is_401(
    service: Service, header: str | None
) -> None:
    headers = {} if header is None else {"Authorization": header}
    assert_error(await service.http.get("/api/orders", headers=headers), 401, "unauthenticated")
    r = await service.http.post("/api/orders", json=order_body(), headers=headers)
    assert_error(r, 401, "unauthenticated")
    assert await counts(service) == (0, 0)


async def test_a_pos_token_without_store_id_is_refused(service: Service) -> None:
    tok = token("pos-1", role="pos")
    assert_error(
        await service.http.get("/api/pos/orders", headers=auth(tok)), 401, "unauthenticated"
    )
    await refused_with_4401(service.ws_url, additional_headers=auth(tok))


# -- HS/RS algorithm confusion ----------------------------------------------------------------


async def start_rs256(start_service: StartService) -> Service:
    """A service that trusts only RS256 tokens signed by our private key."""
    return await start_service(
        jwt_secret=None, jwt_public_key=PUBLIC_PEM, jwt_algorithms=("RS256",)
    )


#: name -> a token an RS256-configured server must refuse.
FORGED_RS: dict[str, Callable[[], str]] = {
    "hs256 signed with the public key as secret": lambda: hand_signed(
        {"alg": "HS256", "typ": "JWT"}, _claims(), PUBLIC_PEM.encode()
    ),
    "hs256 signed with the stripped public key": lambda: hand_signed(
        {"alg": "HS256", "typ": "JWT"}, _claims(), PUBLIC_PEM.strip().encode()
    ),
    "hs512 signed with the public key as secret": lambda: hand_signed(
        {"alg": "HS512", "typ": "JWT"}, _claims(), PUBLIC_PEM.encode(), digest="sha512"
    ),
    "rs256 header with an hmac signature": lambda: hand_signed(
        {"alg": "RS256", "typ": "JWT"}, _claims(), PUBLIC_PEM.encode()
    ),
    "alg none": lambda: unsigned(_claims()),
    "rs256 signed by another key": lambda: rs256(_claims(), _OTHER_PRIVATE_KEY),
    "expired rs256": lambda: rs256(_claims(ttl=-60)),
    "hs256 with the test secret": lambda: token("alice"),
}


@pytest.mark.parametrize("forgery", sorted(FORGED_RS))
async def test_algorithm_confusion_against_an_rs256_server_is_refused(
    start_service: StartService, forgery: str
) -> None:
    service = await start_rs256(start_service)
    await assert_refused_everywhere(service, FORGED_RS[forgery]())


async def test_a_valid_rs256_token_is_accepted_by_an_rs256_server(
    start_service: StartService,
) -> None:
    service = await start_rs256(start_service)
    tok = rs256(_claims("alice"))
    order = await create_order(service, tok)
    assert order["customer_id"] == "alice"
    r = await service.http.get(f"/api/orders/{order['id']}", headers=auth(tok))
    assert r.status_code == 200, r.text
    async with connect(service.ws_url, additional_headers=auth(tok)) as ws:
        hello = await recv_json(ws)
    assert (
        hello["type"] == "hello" and hello["stream"] == "customer:alice" and hello["head_seq"] == 1
    )


# -- the WebSocket token lifecycle ------------------------------------------------------------


async def test_a_socket_that_sends_no_token_is_closed_with_4401(
    start_service: StartService,
) -> None:
    service = await start_service(ws_auth_timeout=0.5)
    async with connect(service.ws_url) as ws:
        assert await expect_close(ws) == 4401


async def test_a_first_message_that_is_not_auth_is_closed_with_4401(service: Service) -> None:
    async with connect(service.ws_url) as ws:
        await ws.send('{"type": "ping"}')
        assert await expect_close(ws) == 4401


async def test_an_open_socket_is_closed_with_4401_when_its_token_expires(service: Service) -> None:
    exp = int(time.time()) + 2
    tok = jwt.encode({"sub": "alice", "role": "customer", "exp": exp}, SECRET, algorithm="HS256")
    async with connect(service.ws_url, additional_headers=auth(tok)) as ws:
        # However slow the machine, the close comes at exp and not before; the hello is the
        # only thing that may precede it (a machine slower than the token sees only the close).
        code, frames = await frames_until_close(ws, timeout=exp - time.time() + 30)
    assert code == 4401 and time.time() >= exp
    assert [f["type"] for f in frames] in ([], ["hello"])


async def test_an_in_band_refresh_keeps_the_socket_open_past_the_first_expiry(
    service: Service,
) -> None:
    async with connect(service.ws_url, additional_headers=auth(token("alice"))) as ws:
        assert (await recv_json(ws))["type"] == "hello"
        # The short token's exp is set from here, after the handshake, and the margin it needs
        # is doubled until the machine is fast enough for two pings inside it.
        for ttl in (2, 4, 8, 16):
            exp = int(time.time()) + ttl
            short = jwt.encode({"sub": "alice", "exp": exp}, SECRET, algorithm="HS256")
            await ws.send(orjson.dumps({"type": "auth", "token": short}).decode())
            await ws.send('{"type": "ping"}')
            assert (await recv_json(ws))["type"] == "pong"  # the short token is in force
            await ws.send(orjson.dumps({"type": "auth", "token": token("alice")}).decode())
            await ws.send('{"type": "ping"}')
            assert (await recv_json(ws))["type"] == "pong"  # and now the long one
            if time.time() < exp:
                break
        else:
            pytest.fail("the machine never got two pings inside a 16 s token")
        while time.time() <= exp + 0.5:  # a clock condition, not a silence window
            await asyncio.sleep(0.1)
        # Closed at the short token's exp, the socket would answer this ping with 4401.
        await ws.send('{"type": "ping"}')
        assert (await recv_json(ws))["type"] == "pong"


async def test_a_refresh_token_for_another_user_closes_with_4403(service: Service) -> None:
    async with connect(service.ws_url, additional_headers=auth(token("alice"))) as ws:
        assert (await recv_json(ws))["type"] == "hello"
        await ws.send(orjson.dumps({"type": "auth", "token": token("bob")}).decode())
        assert await expect_close(ws) == 4403


async def test_a_refresh_token_for_another_role_closes_with_4403(service: Service) -> None:
    async with connect(
        service.ws_url, additional_headers=auth(token("pos-1", role="pos", store_id="s1"))
    ) as ws:
        assert (await recv_json(ws))["type"] == "hello"
        await ws.send(
            orjson.dumps(
                {"type": "auth", "token": token("pos-1", role="pos", store_id="s2")}
            ).decode()
        )
        assert await expect_close(ws) == 4403


@pytest.mark.parametrize("forgery", ["alg none", "wrong hmac key", "expired"])
async def test_a_forged_refresh_token_closes_with_4401(service: Service, forgery: str) -> None:
    async with connect(service.ws_url, additional_headers=auth(token("alice"))) as ws:
        assert (await recv_json(ws))["type"] == "hello"
        await ws.send(orjson.dumps({"type": "auth", "token": FORGED_HS[forgery]()}).decode())
        assert await expect_close(ws) == 4401


# -- cross-tenant -----------------------------------------------------------------------------


async def test_a_customer_cannot_read_cancel_or_audit_another_customers_order(
    service: Service,
) -> None:
    alice, bob = token("alice"), token("bob")
    order = await create_order(service, alice)
    before_trail = (
        await service.http.get(f"/api/orders/{order['id']}/events", headers=auth(alice))
    ).json()
    before_counts = await counts(service)

    for method, path in [
        ("GET", f"/api/orders/{order['id']}"),
        ("GET", f"/api/orders/{order['id']}/events"),
        ("POST", f"/api/orders/{order['id']}/cancel"),
    ]:
        theirs = await service.http.request(method, path, headers=auth(bob))
        missing = await service.http.request(
            method, path.replace(order["id"], "ord_doesnotexist"), headers=auth(bob)
        )
        assert_error(theirs, 404, "not_found")
        # Someone else's order is indistinguishable from no order at all.
        assert theirs.json() == missing.json()

    assert await counts(service) == before_counts
    mine = await service.http.get(f"/api/orders/{order['id']}", headers=auth(alice))
    assert mine.json()["order"] == order
    after_trail = (
        await service.http.get(f"/api/orders/{order['id']}/events", headers=auth(alice))
    ).json()
    assert after_trail == before_trail
    assert [e["status"] for e in after_trail["events"]] == ["CONFIRMED"]


async def test_a_customer_list_shows_only_their_own_orders_whatever_the_query_says(
    service: Service,
) -> None:
    alice, bob = token("alice"), token("bob")
    mine = await create_order(service, alice)
    await create_order(service, bob)
    for query in ["", "?customer_id=bob", "?customer_id=bob&store_id=store-1"]:
        r = await service.http.get(f"/api/orders{query}", headers=auth(alice))
        assert r.status_code == 200, r.text
        assert [o["id"] for o in r.json()["orders"]] == [mine["id"]]


@pytest.mark.parametrize("customer_id", ["bob", "alice", None, 7])
async def test_customer_id_in_the_create_body_is_rejected_and_never_used(
    service: Service, customer_id: object
) -> None:
    r = await service.http.post(
        "/api/orders", json=order_body(customer_id=customer_id), headers=auth(token("alice"))
    )
    error = assert_error(r, 422, "validation_error")
    assert "customer_id" in error["message"]
    assert await counts(service) == (0, 0)


async def test_a_customers_socket_never_receives_another_customers_events(service: Service) -> None:
    bob = token("bob")
    pos = token("pos-1", role="pos", store_id="store-1")
    async with (
        connect(service.ws_url, additional_headers=auth(token("alice"))) as alice_ws,
        connect(service.ws_url, additional_headers=auth(bob)) as bob_ws,
    ):
        assert (await recv_json(alice_ws))["type"] == "hello"
        assert (await recv_json(bob_ws))["type"] == "hello"
        order = await create_order(service, bob)
        r = await service.http.post(
            f"/api/pos/orders/{order['id']}/status", json={"status": "PREPARING"}, headers=auth(pos)
        )
        assert r.status_code == 200, r.text
        # Bob's socket got both events, so the broker has delivered them to this hub.
        assert [e["seq"] for e in await recv_events(bob_ws, 2)] == [1, 2]
        await alice_ws.send('{"type": "ping"}')
        pong = await recv_json(alice_ws)
        assert pong == {"type": "pong", "head_seq": 0}

        async def alices_sentinel() -> str:
            return str((await create_order(service, token("alice")))["id"])

        # Bob's events were published before Alice's sentinel: none may precede it.
        assert await until_sentinel(alice_ws, alices_sentinel) == []


async def test_a_pos_terminal_cannot_see_or_move_another_stores_orders(service: Service) -> None:
    store1 = token("pos-1", role="pos", store_id="store-1")
    store2 = token("pos-2", role="pos", store_id="store-2")
    alice = token("alice")
    order = await create_order(service, alice, store_id="store-1")
    before = await counts(service)

    listed = await service.http.get("/api/pos/orders", headers=auth(store2))
    assert listed.status_code == 200, listed.text
    assert listed.json()["orders"] == []
    for method, path, body in [
        ("POST", f"/api/pos/orders/{order['id']}/status", {"status": "PREPARING"}),
        ("POST", f"/api/pos/orders/{order['id']}/status", {"status": "CANCELLED"}),
        ("POST", f"/api/orders/{order['id']}/cancel", {}),
        ("GET", f"/api/orders/{order['id']}", None),
        ("GET", f"/api/orders/{order['id']}/events", None),
    ]:
        r = await service.http.request(method, path, json=body, headers=auth(store2))
        assert_error(r, 404, "not_found")

    assert await counts(service) == before
    mine = (await service.http.get(f"/api/orders/{order['id']}", headers=auth(alice))).json()
    assert mine["order"]["status"] == "CONFIRMED" and mine["order"]["version"] == 1
    own = await service.http.get("/api/pos/orders", headers=auth(store1))
    assert [o["id"] for o in own.json()["orders"]] == [order["id"]]


async def test_a_pos_terminal_cannot_create_an_order_for_another_store(service: Service) -> None:
    store2 = token("pos-2", role="pos", store_id="store-2")
    r = await service.http.post("/api/orders", json=order_body("store-1"), headers=auth(store2))
    assert_error(r, 403, "forbidden")
    assert await counts(service) == (0, 0)


async def test_a_pos_socket_never_receives_another_stores_events(service: Service) -> None:
    store1 = token("pos-1", role="pos", store_id="store-1")
    store2 = token("pos-2", role="pos", store_id="store-2")
    async with (
        connect(service.ws_url, additional_headers=auth(store1)) as ws1,
        connect(service.ws_url, additional_headers=auth(store2)) as ws2,
    ):
        assert (await recv_json(ws1))["stream"] == "store:store-1"
        assert (await recv_json(ws2))["stream"] == "store:store-2"
        await create_order(service, token("alice"), store_id="store-1")
        assert [e["seq"] for e in await recv_events(ws1, 1)] == [1]
        await ws2.send('{"type": "ping"}')
        assert await recv_json(ws2) == {"type": "pong", "head_seq": 0}

        async def store2_sentinel() -> str:
            return str((await create_order(service, token("alice"), store_id="store-2"))["id"])

        assert await until_sentinel(ws2, store2_sentinel) == []


async def test_a_customer_token_on_pos_endpoints_is_403(service: Service) -> None:
    alice = token("alice")
    order = await create_order(service, alice)
    before = await counts(service)
    assert_error(await service.http.get("/api/pos/orders", headers=auth(alice)), 403, "forbidden")
    r = await service.http.post(
        f"/api/pos/orders/{order['id']}/status", json={"status": "PREPARING"}, headers=auth(alice)
    )
    assert_error(r, 403, "forbidden")
    assert await counts(service) == before
    mine = (await service.http.get(f"/api/orders/{order['id']}", headers=auth(alice))).json()
    assert mine["order"]["status"] == "CONFIRMED"


# -- browser origins --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "origin",
    ["https://evil.example", "null", "http://127.0.0.1.evil.example", "http://localhost:1"],
)
async def test_a_foreign_origin_is_refused_with_403(service: Service, origin: str) -> None:
    await refused_before_accept(
        service.ws_url, origin=Origin(origin), additional_headers=auth(token("alice"))
    )


async def test_the_same_host_origin_is_allowed(service: Service) -> None:
    async with connect(
        service.ws_url, origin=Origin(service.running.http), additional_headers=auth(token("alice"))
    ) as ws:
        assert (await recv_json(ws))["type"] == "hello"


async def test_a_configured_origin_is_allowed_and_lookalikes_are_not(
    start_service: StartService,
) -> None:
    service = await start_service(allowed_origins=("https://shop.example",))
    tok = token("alice")
    async with connect(
        service.ws_url, origin=Origin("https://shop.example"), additional_headers=auth(tok)
    ) as ws:
        assert (await recv_json(ws))["type"] == "hello"
    for lookalike in [
        "https://shop.example.evil.example",
        "http://shop.example",
        "https://evil.example",
    ]:
        await refused_before_accept(
            service.ws_url, origin=Origin(lookalike), additional_headers=auth(tok)
        )


async def test_a_native_client_without_origin_is_allowed(service: Service) -> None:
    async with connect(service.ws_url, additional_headers=auth(token("alice"))) as ws:
        assert (await recv_json(ws))["stream"] == "customer:alice"


@pytest.mark.parametrize(
    "sub", ["alice\u0000", "\u0000", "al\u0000ice"], ids=["trailing", "only", "inner"]
)
async def test_a_signed_token_whose_sub_holds_a_nul_is_refused_or_served_but_never_a_500(
    service: Service, sub: str
) -> None:
    tok = token(sub)
    listed = await service.http.get("/api/orders", headers=auth(tok))
    created = await service.http.post("/api/orders", json=order_body(), headers=auth(tok))
    assert listed.status_code in {200, 401}, listed.text
    assert created.status_code in {201, 401}, created.text
    assert listed.status_code == 401 or created.status_code == 201
