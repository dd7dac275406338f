"""The JSON documents of orders and events: what an event says, once, for every reader.

An event is serialised once, when it is written (or relayed), and the same text goes to every
subscriber of the stream: the broker carries ``"<seq> <json>"`` so the hub learns the seq
without parsing the JSON. The wire messages around them (hello, reset, pong) are the server's
(``server/protocol.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from orders.models import Event, Order


def iso(moment: datetime | None) -> str | None:
    """ISO 8601 with a Z, or None."""
    if moment is None:
        return None
    return moment.isoformat().replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class OrderRow:
    """An order as the write path reads and writes it (a plain row, no ORM identity)."""

    id: str
    customer_id: str | None
    store_id: str
    status: str
    payment_status: str
    payment_method: str
    amount: int
    currency: str
    items: list[Any]
    needs_review: bool
    created_at: datetime
    updated_at: datetime
    expires_at: datetime | None
    version: int


@dataclass(frozen=True, slots=True)
class EventRow:
    """An event of the log as the write path appends it."""

    id: int
    order_id: str
    kind: str
    from_status: str | None
    to_status: str
    source: str
    actor: str
    data: dict[str, Any]
    created_at: datetime


def order_snapshot(
    order: Order | OrderRow, payment_summary: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The public JSON form of an order, with its ``payment_summary`` (server/money.py) when
    the caller read it from the rows."""
    snapshot: dict[str, Any] = {
        "id": order.id,
        "customer_id": order.customer_id,
        "store_id": order.store_id,
        "status": order.status,
        "payment_status": order.payment_status,
        "payment_method": order.payment_method,
        "amount": order.amount,
        "currency": order.currency,
        "items": order.items,
        "needs_review": order.needs_review,
        "created_at": iso(order.created_at),
        "updated_at": iso(order.updated_at),
        "expires_at": iso(order.expires_at),
        "version": order.version,
    }
    if payment_summary is not None:
        snapshot["payment_summary"] = payment_summary
    return snapshot


def event_payload(stream: str, seq: int, event: Event | EventRow) -> dict[str, Any]:
    """The ``event`` message for position ``seq`` of ``stream``."""
    payload: dict[str, Any] = {
        "type": "event",
        "stream": stream,
        "seq": seq,
        "event_id": event.id,
        "order_id": event.order_id,
        "kind": event.kind,
        "status": event.to_status,
        "previous_status": event.from_status,
        "source": event.source,
        "at": iso(event.created_at),
        "order": event.data.get("order"),
    }
    note = event.data.get("note")
    if note is not None:
        payload["note"] = note
    # What the change was about, as it stood after the change: the payment attempt, the refund,
    # the receipt issued (each only on its own kind of event).
    for subject in ("payment", "refund", "receipt"):
        value = event.data.get(subject)
        if value is not None:
            payload[subject] = value
    return payload


def audit_entry(event: Event | EventRow) -> dict[str, Any]:
    """An event as the order's audit trail shows it."""
    return {
        "event_id": event.id,
        "order_id": event.order_id,
        "kind": event.kind,
        "status": event.to_status,
        "previous_status": event.from_status,
        "source": event.source,
        "actor": event.actor,
        "note": event.data.get("note"),
        "at": iso(event.created_at),
    }


def dumps(document: Any) -> str:
    """Compact JSON text."""
    return orjson.dumps(document).decode()


def pack(seq: int, text: str) -> str:
    """The broker message for one stream position."""
    return f"{seq} {text}"


def unpack(data: str) -> tuple[int, str]:
    """The (seq, json text) of a broker message; ValueError if malformed."""
    head, sep, text = data.partition(" ")
    if not sep:
        raise ValueError("no seq prefix")
    return int(head), text


_UNIX_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def order_list_cursor(order: Order | OrderRow) -> str:
    """The ``GET /api/orders?cursor=`` value that continues the list right after ``order``.

    ``<microseconds since 1970>_<order id>``: what ``server/api/orders.py`` issues and reads.
    """
    micros = (order.created_at - _UNIX_EPOCH) // timedelta(microseconds=1)
    return f"{micros}_{order.id}"
