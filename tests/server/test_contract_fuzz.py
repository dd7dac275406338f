"""schemathesis against the live app: what /openapi.json says is what the server does.

Every phase (examples, coverage, fuzzing, stateful through the declared links), every check,
a fixed seed and a bounded number of examples. Each operation is called with a token of the
role it is for (customer, pos, admin) and real order ids, so the calls get past 401/404 to the
endpoint's own validation and logic. The CLI runs in a subprocess against the in-process server
(schemathesis' pytest plugin and our pytest settings — asyncio, warnings as errors — do not mix).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest

from tests.conftest import Service, StartService
from tests.support.clients import auth, order_body, token

ALICE = token("alice")
POS1 = token("pos-1", role="pos", store_id="store-1")
ADMIN = token("ops", role="admin")
HOOKS = Path(__file__).resolve().parents[1] / "support" / "fuzz_hooks.py"
SEED = 7311
# About 45 s per backend on the shared 2-core machine; CONTRACT_FUZZ_EXAMPLES=200 for a hunt.
MAX_EXAMPLES = int(os.environ.get("CONTRACT_FUZZ_EXAMPLES", "15"))


async def _order(service: Service, method: str = "cash") -> str:
    r = await service.http.post("/api/orders", json=order_body(method=method), headers=auth(ALICE))
    assert r.status_code == 201, r.text
    order_id: str = r.json()["order"]["id"]
    return order_id


def _config(cash: list[str], online: list[str]) -> str:
    """schemathesis.toml: the token and the real order id each operation is called with."""

    def block(
        path: str,
        bearer: str,
        *,
        method: str | None = None,
        order: str | None = None,
        number: int | None = None,
    ) -> str:
        lines = ["[[operations]]", f"include-path = {json.dumps(path)}"]
        if method:
            lines.append(f"include-method = {json.dumps(method)}")
        lines.append(f"headers = {{ Authorization = {json.dumps('Bearer ' + bearer)} }}")
        if order:
            # Every path parameter fixed: the fuzzer cannot make one of them invalid while the
            # configured one makes the call valid again.
            more = f", number = {number}" if number is not None else ""
            lines.append(f"parameters = {{ order_id = {json.dumps(order)}{more} }}")
        return "\n".join(lines)

    return "\n\n".join(
        [
            f"headers = {{ Authorization = {json.dumps('Bearer ' + ALICE)} }}",
            # A POS terminal creates walk-in orders; a customer must name store_id, which the
            # schema cannot make depend on the caller's role.
            block("/api/orders", POS1, method="POST"),
            block("/api/orders/{order_id}", ADMIN, order=cash[0]),
            block("/api/orders/{order_id}/events", ADMIN, order=cash[0]),
            block("/api/orders/{order_id}/receipts", ADMIN, order=cash[0]),
            block("/api/orders/{order_id}/receipts/{number}", ADMIN, order=cash[0], number=1),
            block("/api/orders/{order_id}/receipts/{number}.html", ADMIN, order=cash[0], number=1),
            block("/api/orders/{order_id}/cancel", ALICE, order=cash[1]),
            block("/api/orders/{order_id}/payments", ALICE, order=online[0]),
            block("/api/orders/{order_id}/payments/verify", ADMIN, order=online[0]),
            block("/api/pos/orders", POS1),
            block("/api/pos/orders/{order_id}/status", POS1, order=cash[2]),
        ]
    )


async def run_schemathesis(service: Service, tmp_path: Path, *extra: str) -> tuple[int, str]:
    """Run the schemathesis CLI against ``service``; its exit code and output."""
    cash = [await _order(service) for _ in range(3)]
    # Paid at the counter: the first cash order has a receipt (number 1) to read.
    r = await service.http.post(
        f"/api/pos/orders/{cash[0]}/payments",
        json={"method": "cash", "amount": order_body()["items"][0]["unit_price"] * 2},
        headers=auth(POS1),
    )
    assert r.status_code == 201, r.text
    online = [await _order(service, "online")]
    config = tmp_path / "schemathesis.toml"
    config.write_text(_config(cash, online) + "\n")
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "schemathesis.cli",
        "--config-file",
        str(config),
        "run",
        f"{service.running.http}/openapi.json",
        "--checks",
        "all",
        "--phases",
        "examples,coverage,fuzzing,stateful",
        "--seed",
        str(SEED),
        "--max-examples",
        str(MAX_EXAMPLES),
        "--workers",
        "1",
        "--request-timeout",
        "10",
        "--no-color",
        *extra,
        cwd=tmp_path,
        env={**os.environ, "SCHEMATHESIS_HOOKS": str(HOOKS)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        async with asyncio.timeout(280):
            output, _ = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode, output.decode(errors="replace")


@pytest.mark.timeout(300)
async def test_schemathesis_finds_no_contract_failure(
    start_service: StartService, tmp_path: Path
) -> None:
    # Long-polls up to 1 s, so the fuzzer's largest `wait` stays cheap.
    service = await start_service(longpoll_max_wait=1)
    code, output = await run_schemathesis(service, tmp_path)
    assert code == 0, output[-20_000:]
