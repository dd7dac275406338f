"""Idempotency keys on POST under /api (DESIGN §1.9): a retried request happens once."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import httpx
import orjson
import pytest
from sqlalchemy import func, select, update

from orders.hooks import Hooks
from orders.models import IdempotencyKey, Order, utcnow
from server.idempotency import caller_id, request_hash, valid_key
from tests.conftest import Service, StartService
from tests.support.asserts import assert_error, counts
from tests.support.clients import auth, order_body, token

ALICE = token("alice")
BOB = token("bob")
POS1 = token("till-1", role="pos", store_id="store-1")


def keyed(tok: str, key: str) -> dict[str, str]:
    """Authorization plus an Idempotency-Key."""
    return {**auth(tok), "Idempotency-Key": key}


async def post_order(
    service: Service, key: str, tok: str = ALICE, **overrides: Any
) -> httpx.Response:
    return await service.http.post(
        "/api/orders", json=order_body(**overrides), headers=keyed(tok, key)
    )


async def order_count(service: Service) -> int:
    async with service.db.read() as session:
        return int((await session.execute(select(func.count()).select_from(Order))).scalar_one())


# -- pure parts -------------------------------------------------------------------------------


def test_a_key_is_1_to_255_printable_ascii_characters() -> None:
    assert valid_key(b"k") == "k"
    assert valid_key(b"x" * 255) == "x" * 255
    assert valid_key(b"a key with spaces ~!") == "a key with spaces ~!"
    for bad in (b"", b"x" * 256, b"tab\there", b"nul\x00", "é".encode(), b"\x7f"):
        assert valid_key(bad) is None, bad


def test_the_request_hash_covers_method_path_query_and_body() -> None:
    base = request_hash("POST", "/api/orders", b"", b"{}")
    assert base == request_hash("POST", "/api/orders", b"", b"{}")
    assert base != request_hash("POST", "/api/orderz", b"", b"{}")
    assert base != request_hash("PUT", "/api/orders", b"", b"{}")
    assert base != request_hash("POST", "/api/orders", b"a=1", b"{}")
    assert base != request_hash("POST", "/api/orders", b"", b"{ }")
    # Field boundaries count: path "/a" + query "b" is not path "/ab".
    assert request_hash("POST", "/a", b"b", b"") != request_hash("POST", "/ab", b"", b"")


def test_callers_are_namespaced_by_role_sub_and_store() -> None:
    from server.auth import Principal, Role

    customer = Principal("x", Role.CUSTOMER, None, 0)
    pos = Principal("x", Role.POS, "store-1", 0)
    other_store = Principal("x", Role.POS, "store-2", 0)
    assert len({caller_id(customer), caller_id(pos), caller_id(other_store)}) == 3
    assert len(caller_id(Principal("y" * 1000, Role.CUSTOMER, None, 0))) <= 450


# -- over HTTP, both backends -----------------------------------------------------------------


async def test_a_repeat_replays_the_stored_answer_and_changes_nothing(service: Service) -> None:
    first = await post_order(service, "k-1")
    assert first.status_code == 201, first.text
    assert "idempotent-replayed" not in first.headers
    before = await counts(service)
    again = await post_order(service, "k-1")
    assert again.status_code == 201
    assert again.content == first.content
    assert again.headers["idempotent-replayed"] == "true"
    assert again.headers["content-type"] == first.headers["content-type"]
    assert await counts(service) == before == (1, 1)


async def test_without_a_key_every_post_runs(service: Service) -> None:
    for _ in range(2):
        r = await service.http.post("/api/orders", json=order_body(), headers=auth(ALICE))
        assert r.status_code == 201
    assert await order_count(service) == 2


async def test_the_same_key_with_another_body_is_422_and_changes_nothing(service: Service) -> None:
    assert (await post_order(service, "k-2")).status_code == 201
    before = await counts(service)
    r = await post_order(service, "k-2", currency="USD")
    assert_error(r, 422, "idempotency_key_reused")
    # The same body on another path is another request too.
    r = await service.http.post(
        "/api/orders/ord_000000000000000000000000/cancel",
        json=order_body(),
        headers=keyed(ALICE, "k-2"),
    )
    assert_error(r, 422, "idempotency_key_reused")
    assert await counts(service) == before


async def test_another_callers_key_with_the_same_value_is_a_separate_order(
    service: Service,
) -> None:
    mine = await post_order(service, "shared", ALICE)
    theirs = await post_order(service, "shared", BOB)
    walk_in = await post_order(service, "shared", POS1)
    assert {mine.status_code, theirs.status_code, walk_in.status_code} == {201}
    ids = {r.json()["order"]["id"] for r in (mine, theirs, walk_in)}
    assert len(ids) == 3
    assert theirs.json()["order"]["customer_id"] == "bob"
    assert "idempotent-replayed" not in theirs.headers
    assert await order_count(service) == 3


@pytest.mark.parametrize(
    "raw", ["", "x" * 256, "bad\u00e9key"], ids=["empty", "too-long", "non-ascii"]
)
async def test_a_malformed_key_is_400_and_changes_nothing(service: Service, raw: str) -> None:
    r = await service.http.post(
        "/api/orders",
        json=order_body(),
        headers=[
            (b"authorization", f"Bearer {ALICE}".encode()),
            (b"idempotency-key", raw.encode("utf-8")),
        ],
    )
    assert_error(r, 400, "invalid_idempotency_key")
    assert await counts(service) == (0, 0)


async def test_an_unauthenticated_post_with_a_key_is_401_and_stores_nothing(
    service: Service,
) -> None:
    r = await service.http.post(
        "/api/orders", json=order_body(), headers={"Idempotency-Key": "k-anon"}
    )
    assert_error(r, 401, "unauthenticated")
    async with service.db.read() as session:
        stored = (
            await session.execute(select(func.count()).select_from(IdempotencyKey))
        ).scalar_one()
    assert stored == 0


async def test_a_4xx_answer_is_stored_and_replayed(service: Service) -> None:
    first = await post_order(service, "k-bad", items=[])
    assert_error(first, 422, "validation_error")
    again = await post_order(service, "k-bad", items=[])
    assert again.content == first.content
    assert again.status_code == 422
    assert again.headers["idempotent-replayed"] == "true"


async def test_50_concurrent_identical_posts_with_one_key_make_one_order(
    service: Service,
) -> None:
    # Stripe's rule: while the first runs, a repeat is 409 idempotency_in_progress; once it
    # is done, the stored 201 is replayed. So every answer is that one 201 (byte for byte) or
    # that 409, at least one is the 201, and exactly one order exists.
    answers = await asyncio.gather(*(post_order(service, "k-50") for _ in range(50)))
    created = [r for r in answers if r.status_code == 201]
    busy = [r for r in answers if r.status_code == 409]
    assert len(created) + len(busy) == 50, [r.status_code for r in answers]
    assert created
    assert len({r.content for r in created}) == 1
    for r in busy:
        assert_error(r, 409, "idempotency_in_progress")
    assert sum("idempotent-replayed" not in r.headers for r in created) == 1
    assert await order_count(service) == 1
    # After the storm, the key replays the one answer.
    settled = await post_order(service, "k-50")
    assert settled.content == created[0].content


class HoldAfterClaim(Hooks):
    """Holds the first request that claims ``key`` until released."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.claimed = asyncio.Event()
        self.release = asyncio.Event()

    async def after_idempotency_claim(self, key: str) -> None:
        if key == self.key and not self.claimed.is_set():
            self.claimed.set()
            await self.release.wait()


async def test_a_repeat_while_the_first_runs_is_409_in_progress(
    start_service: StartService,
) -> None:
    hold = HoldAfterClaim("k-slow")
    service = await start_service(hooks=hold)
    first = asyncio.create_task(post_order(service, "k-slow"))
    async with asyncio.timeout(5):
        await hold.claimed.wait()
    busy = await post_order(service, "k-slow")
    assert_error(busy, 409, "idempotency_in_progress")
    assert busy.headers["retry-after"] == "1"
    # A different body is refused as reuse even while the first runs.
    assert_error(await post_order(service, "k-slow", currency="USD"), 422, "idempotency_key_reused")
    hold.release.set()
    done = await asyncio.wait_for(first, 5)
    assert done.status_code == 201
    replay = await post_order(service, "k-slow")
    assert replay.content == done.content
    assert await order_count(service) == 1


async def test_a_replay_after_a_restart_comes_from_the_database(
    start_service: StartService,
) -> None:
    # A second app on the same database has nothing in memory: the answer is the stored row.
    first_app = await start_service()
    first = await post_order(first_app, "k-restart")
    assert first.status_code == 201
    second_app = await start_service()
    again = await post_order(second_app, "k-restart")
    assert again.status_code == 201
    assert again.content == first.content
    assert again.headers["idempotent-replayed"] == "true"
    assert await order_count(second_app) == 1


async def test_a_key_older_than_the_ttl_counts_as_new(service: Service) -> None:
    first = await post_order(service, "k-old")
    assert first.status_code == 201
    async with service.db.transaction() as session:
        await session.execute(
            update(IdempotencyKey)
            .where(IdempotencyKey.key == "k-old")
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
    fresh = await post_order(service, "k-old", currency="USD")
    assert fresh.status_code == 201, fresh.text
    assert "idempotent-replayed" not in fresh.headers
    assert fresh.json()["order"]["id"] != first.json()["order"]["id"]
    # And the key now replays its new answer.
    assert (await post_order(service, "k-old", currency="USD")).content == fresh.content
    assert await order_count(service) == 2


async def test_the_ttl_setting_sets_how_long_a_key_is_kept(start_service: StartService) -> None:
    service = await start_service(idempotency_ttl=3600)
    before = utcnow()
    assert (await post_order(service, "k-ttl")).status_code == 201
    async with service.db.read() as session:
        row = (await session.execute(select(IdempotencyKey))).scalar_one()
    assert row.state == "done"
    assert timedelta(seconds=3590) < row.expires_at - before < timedelta(seconds=3610)


async def test_a_5xx_answer_is_not_stored_so_a_retry_runs_again(
    start_service: StartService,
) -> None:
    class FailOrderWrites(Hooks):
        """Fails the first order write with an unexpected error (a 500)."""

        failed = False

        async def before_commit(self, session: Any) -> None:
            if not session.info.get("idempotency") and not self.failed:
                self.failed = True
                raise RuntimeError("boom")

    hooks = FailOrderWrites()
    service = await start_service(hooks=hooks)
    r = await post_order(service, "k-500")
    assert_error(r, 500, "internal_error")
    assert await order_count(service) == 0
    retry = await post_order(service, "k-500")
    assert retry.status_code == 201, retry.text
    assert "idempotent-replayed" not in retry.headers
    assert await order_count(service) == 1


async def test_every_post_under_api_documents_the_header(service: Service) -> None:
    schema = (await service.http.get("/openapi.json")).json()
    posts = [
        (path, ops["post"])
        for path, ops in schema["paths"].items()
        if path.startswith("/api/") and "post" in ops
    ]
    assert len(posts) >= 4
    for path, post in posts:
        headers = [p for p in post.get("parameters", []) if p.get("in") == "header"]
        assert [p["name"] for p in headers] == ["Idempotency-Key"], path
        assert headers[0]["schema"]["maxLength"] == 255
        assert {"409", "422"} <= set(post["responses"]), path


def test_the_stored_body_is_the_json_the_handler_sent() -> None:
    # orjson round trip of an error document, as _code reads it.
    from server.idempotency import _code

    assert _code(orjson.dumps({"error": {"code": "commit_outcome_unknown"}})) == (
        "commit_outcome_unknown"
    )
    assert _code(b"not json") is None
