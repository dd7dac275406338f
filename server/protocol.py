"""The JSON wire format, both ways: orders, events, hello/reset/pong, client messages.

An event is serialised once, when it is written (or relayed), and the same text goes to every
subscriber of the stream: the broker carries ``"<seq> <json>"`` so the hub learns the seq
without parsing the JSON.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, TypedDict

import orjson

from server.models import Event, Order


class ProtocolError(ValueError):
    """A client message that is not part of the protocol (closes with 4400)."""


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
    payment = event.data.get("payment")
    if payment is not None:
        payload["payment"] = payment
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


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A stream's head and its open orders (newest first), read in one database snapshot.

    ``head_event_id`` is the event at ``head_seq`` (None before the first event, or if it was
    pruned): a client starting from the snapshot presents it as ``last_event_id`` when it
    resumes. ``truncated``: more open orders exist than the snapshot's bound; the rest are
    paged with ``GET /api/orders?cursor=<next_cursor>`` (None: from the start).
    """

    epoch: str
    head_seq: int
    head_event_id: int | None
    orders: list[dict[str, Any]]
    truncated: bool = False
    next_cursor: str | None = None

    def fields(self) -> SnapshotFields:
        """The snapshot's part of a hello, reset or ``/api/events`` answer."""
        fields: SnapshotFields = {
            "epoch": self.epoch,
            "head_seq": self.head_seq,
            "head_event_id": self.head_event_id,
            "orders": self.orders,
        }
        if self.truncated:
            fields["truncated"] = True
            fields["next_cursor"] = self.next_cursor
        return fields


class SnapshotFields(TypedDict, total=False):
    epoch: str
    head_seq: int
    head_event_id: int | None
    orders: list[dict[str, Any]]
    truncated: bool
    next_cursor: str | None


class HelloMessage(SnapshotFields, total=False):
    type: Literal["hello", "reset"]
    stream: str


def hello(stream: str, epoch: str, head_seq: int) -> str:
    """The first message on a resumed connection (no snapshot: the replay follows)."""
    message: HelloMessage = {
        "type": "hello",
        "stream": stream,
        "epoch": epoch,
        "head_seq": head_seq,
    }
    return dumps(message)


def hello_with_snapshot(stream: str, snapshot: Snapshot) -> str:
    """The first message on a fresh connection: the snapshot to go live from."""
    message: HelloMessage = {"type": "hello", "stream": stream, **snapshot.fields()}
    return dumps(message)


def reset(stream: str, snapshot: Snapshot) -> str:
    """Tell a client its position is gone: start over from this snapshot."""
    message: HelloMessage = {"type": "reset", "stream": stream, **snapshot.fields()}
    return dumps(message)


def pong(head_seq: int) -> str:
    """The answer to a client ping, carrying the stream's head."""
    return dumps({"type": "pong", "head_seq": head_seq})


@dataclass(frozen=True, slots=True)
class Ping:
    """Client asks for a pong (and the head seq)."""


@dataclass(frozen=True, slots=True)
class Auth:
    """Client presents a (fresh) token."""

    token: str


ClientMessage = Ping | Auth


def parse_client_message(raw: str | bytes) -> ClientMessage:
    """Parse one client frame; ProtocolError if it is not a known message."""
    try:
        message = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ProtocolError("message is not JSON") from None
    if not isinstance(message, dict):
        raise ProtocolError("message must be a JSON object")
    match message.get("type"):
        case "ping":
            return Ping()
        case "auth":
            token = message.get("token")
            if not isinstance(token, str) or not token:
                raise ProtocolError("auth needs a token")
            return Auth(token)
        case other:
            raise ProtocolError(f"unknown message type {other!r}")
