"""An Idempotency-Key whose request ended in 503 ``commit_outcome_unknown`` is never run again.

The order may or may not exist. Releasing the key would let the retry create a second one;
replaying the 503 would tell the client nothing. The key is kept as "unknown" and every retry
with it is 409 ``idempotency_outcome_unknown``: read the resource, then use a new key.
"""

from __future__ import annotations

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from orders.models import Order
from tests.conftest import Backend, Service, StartService
from tests.server.test_commit_outcome import KillBeforeCommit
from tests.support.asserts import assert_error
from tests.support.clients import auth, order_body, token

ALICE = token("alice")


@pytest.fixture
async def backend(pg_backend: Backend) -> Backend:
    """PostgreSQL only: the connection to kill is a PostgreSQL backend."""
    return pg_backend


class KillTheOrderCommit(KillBeforeCommit):
    """KillBeforeCommit for the handler's own write, never the key's bookkeeping."""

    async def before_commit(self, session: AsyncSession) -> None:
        if not session.info.get("idempotency"):
            await super().before_commit(session)


async def orders(service: Service) -> int:
    async with service.db.read() as session:
        return int((await session.execute(select(func.count()).select_from(Order))).scalar_one())


async def test_an_ambiguous_commit_is_never_run_again_under_its_key(
    start_service: StartService,
) -> None:
    hooks = KillTheOrderCommit()
    service = await start_service(hooks=hooks)
    headers = {**auth(ALICE), "Idempotency-Key": "k-lost"}
    hooks.armed = True
    first = await service.http.post("/api/orders", json=order_body(), headers=headers)
    assert_error(first, 503, "commit_outcome_unknown")
    assert hooks.killed
    before = await orders(service)
    retry = await service.http.post("/api/orders", json=order_body(), headers=headers)
    assert_error(retry, 409, "idempotency_outcome_unknown")
    assert await orders(service) == before
    # A new key is a new request.
    fresh = {**auth(ALICE), "Idempotency-Key": "k-new"}
    assert (
        await service.http.post("/api/orders", json=order_body(), headers=fresh)
    ).status_code == 201
