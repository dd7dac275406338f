"""Micro-benchmark: validating a create-order body, the old hand-written code vs msgspec.

    python -m bench.validate [--seconds 2]

The hand-written validator is the one ``server/api/orders.py`` had before the schemas
(``parse_new_order`` over ``orjson.loads``), kept here verbatim in miniature so the comparison
stays runnable; the new path is ``server.api.common.decode_body`` into ``schemas.NewOrder``.
"""

from __future__ import annotations

import argparse
import functools
import re
import time
import timeit
from collections.abc import Callable
from typing import Any

import msgspec
import orjson

from server.api import schemas
from server.api.common import decode_body
from server.errors import Unprocessable

_CURRENCY = re.compile(r"[A-Z]{3}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_ORDER_FIELDS = {"store_id", "items", "currency", "payment_method"}
_ITEM_FIELDS = {"sku", "name", "quantity", "unit_price"}


def _text(value: object, field: str, *, max_len: int) -> str:
    if not isinstance(value, str) or not value.strip():
        raise Unprocessable(f"{field} must be a non-empty string", field=field)
    if len(value) > max_len:
        raise Unprocessable(f"{field} must be at most {max_len} characters", field=field)
    if _CONTROL.search(value):
        raise Unprocessable(f"{field} must not contain control characters", field=field)
    return value


def _integer(value: object, field: str, *, lo: int, hi: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise Unprocessable(f"{field} must be an integer", field=field)
    if not lo <= value <= hi:
        raise Unprocessable(f"{field} must be between {lo} and {hi}", field=field)
    return value


def old_parse(raw: bytes) -> dict[str, Any]:
    """The hand-written path: orjson, then field by field."""
    body = orjson.loads(raw)
    if not isinstance(body, dict):
        raise ValueError("not an object")
    unknown = sorted(set(body) - _ORDER_FIELDS)
    if unknown:
        raise Unprocessable(f"unknown field {unknown[0]}", field=unknown[0])
    store_id = body.get("store_id")
    if store_id is not None:
        store_id = _text(store_id, "store_id", max_len=200)
    items_raw = body.get("items")
    if not isinstance(items_raw, list) or not items_raw or len(items_raw) > 100:
        raise Unprocessable("items must be a non-empty list", field="items")
    items = []
    for index, item in enumerate(items_raw):
        where = f"items[{index}]"
        if not isinstance(item, dict):
            raise Unprocessable(f"{where} must be an object", field=where)
        extra = sorted(set(item) - _ITEM_FIELDS)
        if extra:
            raise Unprocessable(f"unknown field {where}.{extra[0]}", field=f"{where}.{extra[0]}")
        items.append(
            {
                "sku": _text(item.get("sku"), f"{where}.sku", max_len=100),
                "name": _text(item.get("name"), f"{where}.name", max_len=200),
                "quantity": _integer(item.get("quantity"), f"{where}.quantity", lo=1, hi=10_000),
                "unit_price": _integer(
                    item.get("unit_price"), f"{where}.unit_price", lo=0, hi=10**9
                ),
            }
        )
    currency = body.get("currency")
    if not isinstance(currency, str) or not _CURRENCY.fullmatch(currency):
        raise Unprocessable("currency must be a three-letter ISO 4217 code", field="currency")
    return {"store_id": store_id, "items": items, "currency": currency}


def new_parse(raw: bytes) -> list[dict[str, Any]]:
    """The declared path, with the items as the dicts the write path takes (as ``create``)."""
    order = decode_body(raw, schemas.NewOrder)
    return [msgspec.structs.asdict(item) for item in order.items]


def body(items: int) -> bytes:
    """A valid create-order body with ``items`` line items."""
    line = {"sku": "tea", "name": "Masala tea", "quantity": 2, "unit_price": 1500}
    document = {
        "store_id": "store-1",
        "items": [line] * items,
        "currency": "INR",
        "payment_method": "cash",
    }
    return orjson.dumps(document)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="CPU time per measurement")
    args = parser.parse_args()
    for items in (2, 20):
        raw = body(items)
        runs: list[tuple[str, Callable[[], object]]] = [
            ("hand-written (orjson + checks)", functools.partial(old_parse, raw)),
            (
                "msgspec (decode into NewOrder)",
                functools.partial(decode_body, raw, schemas.NewOrder),
            ),
        ]
        for name, run in runs:
            # CPU time, not wall time: the machine is shared.
            timer = timeit.Timer(run, timer=time.process_time)
            loops, taken = timer.autorange()
            repeat = max(5, round(args.seconds / taken))
            best = min(timer.repeat(repeat=repeat, number=loops)) / loops
            print(f"{items:>3} items  {name:<32} {best * 1e6:8.2f} µs per body")


if __name__ == "__main__":
    main()
