"""The JSON wire format, both ways: hello/reset/pong and the client's messages.

The documents they carry (orders, events, the ``"<seq> <json>"`` broker form) are the domain's,
in ``orders/documents.py``; they are re-exported here for the web layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, TypedDict

import orjson

from orders.documents import EventRow as EventRow
from orders.documents import OrderRow as OrderRow
from orders.documents import audit_entry as audit_entry
from orders.documents import dumps as dumps
from orders.documents import event_payload as event_payload
from orders.documents import iso as iso
from orders.documents import order_list_cursor as order_list_cursor
from orders.documents import order_snapshot as order_snapshot
from orders.documents import pack as pack
from orders.documents import unpack as unpack


class ProtocolError(ValueError):
    """A client message that is not part of the protocol (closes with 4400)."""


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
