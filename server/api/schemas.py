"""Every request body, query and response of the HTTP API, declared once as msgspec Structs.

Requests are validated by decoding into these types (``server.api.common``); the OpenAPI
document's components and parameters are generated from the very same types
(``server.api.contract``), so what the document says is what the server does.

A field's ``Meta(description=...)`` is both its documentation and the message of a 422 that
names it; ``Meta(extra={"error": (status, code)})`` overrides the error a bad value of that
field gets (a bad cursor is ``400 invalid_cursor``, not the query's usual ``400 invalid_query``).
"""

from __future__ import annotations

import functools
from datetime import datetime
from typing import Annotated, Literal, cast

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

from orders.workflow import OrderStatus, PaymentMethod

MAX_ITEMS = 100
MAX_QUANTITY = 10_000
MAX_UNIT_PRICE = 10**9
MAX_SEQ = 2**62
#: The largest order amount there can be (every line at its maximum), in minor units.
MAX_AMOUNT = MAX_ITEMS * MAX_QUANTITY * MAX_UNIT_PRICE

# Non-blank, and no control characters (NUL above all: PostgreSQL refuses it in text). msgspec
# searches the pattern, hence the anchors; they are ECMA-262 too, for the OpenAPI document.
TEXT_PATTERN = r"^[^\x00-\x1f\x7f]*[^\s\x00-\x1f\x7f][^\x00-\x1f\x7f]*$"
# A list cursor: "<created_at in microseconds since the epoch>_<order id>". Every string of
# this form is a position the server can answer from, and it cannot overflow a datetime.
CURSOR_PATTERN = r"^[0-9]{1,16}_ord_[0-9a-f]{24}$"
ORDER_ID_PATTERN = r"^ord_[0-9a-f]{24}$"
_TEXT = "non-blank text without control characters"

StoreId = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=200,
        pattern=TEXT_PATTERN,
        description=f"{_TEXT}, at most 200 characters",
    ),
]
Sku = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=100,
        pattern=TEXT_PATTERN,
        description=f"{_TEXT}, at most 100 characters",
    ),
]
ItemName = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=200,
        pattern=TEXT_PATTERN,
        description=f"{_TEXT}, at most 200 characters",
    ),
]
Note = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=500,
        pattern=TEXT_PATTERN,
        description=f"{_TEXT}, at most 500 characters",
    ),
]
Subject = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=100,
        pattern=TEXT_PATTERN,
        description=f"{_TEXT}, at most 100 characters",
    ),
]
Reference = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=200,
        pattern=TEXT_PATTERN,
        description=f"{_TEXT}, at most 200 characters (a slip or transfer reference)",
    ),
]
Quantity = Annotated[
    int, Meta(ge=1, le=MAX_QUANTITY, description=f"an integer from 1 to {MAX_QUANTITY}")
]
UnitPrice = Annotated[
    int,
    Meta(
        ge=0,
        le=MAX_UNIT_PRICE,
        description=f"an integer from 0 to {MAX_UNIT_PRICE}, in minor units",
    ),
]
Currency = Annotated[
    str,
    Meta(
        min_length=3,
        max_length=3,
        pattern=r"^[A-Z]{3}$",
        description="a three-letter ISO 4217 code",
        examples=["INR"],
    ),
]
OrderId = Annotated[str, Meta(pattern=ORDER_ID_PATTERN, description="an order id")]
ReceiptNumber = Annotated[
    int, Meta(ge=1, le=MAX_SEQ, description="a receipt number in the order's store sequence")
]
Seq = Annotated[int, Meta(ge=0, le=MAX_SEQ, description=f"a stream position, 0 to {MAX_SEQ}")]


# -- request bodies ---------------------------------------------------------------------------


class NewItem(Struct, forbid_unknown_fields=True):
    """One line of a new order."""

    sku: Sku
    name: ItemName
    quantity: Quantity
    unit_price: UnitPrice


class NewOrder(Struct, forbid_unknown_fields=True):
    """A create-order body. ``store_id`` is required of a customer; a POS terminal may omit it
    (a walk-in order for its own store)."""

    items: Annotated[
        list[NewItem],
        Meta(
            min_length=1,
            max_length=MAX_ITEMS,
            description=f"a list of 1 to {MAX_ITEMS} line items",
        ),
    ]
    currency: Currency
    store_id: StoreId | None = None
    payment_method: PaymentMethod = PaymentMethod.ONLINE


class CancelRequest(Struct, forbid_unknown_fields=True):
    """A cancel body (optional)."""

    reason: Note | None = None


class StatusChange(Struct, forbid_unknown_fields=True):
    """A POS status move."""

    status: OrderStatus
    note: Note | None = None


class StartPayment(Struct, forbid_unknown_fields=True):
    """A payment start: which gateway."""

    gateway: Annotated[
        str, Meta(min_length=1, max_length=40, description="the name of a gateway offered here")
    ]
    amount: (
        Annotated[
            int,
            Meta(
                ge=1,
                le=MAX_AMOUNT,
                description="part of the order to pay now, in minor units (split payments);"
                " default: what is outstanding",
            ),
        ]
        | None
    ) = None


class DemoTokenRequest(Struct, forbid_unknown_fields=True):
    """A demo-token request; ``store_id`` is required for a ``pos`` token."""

    sub: Subject
    role: Literal["customer", "pos"] = "customer"
    store_id: StoreId | None = None
    ttl: Annotated[int, Meta(ge=5, le=86_400, description="an integer from 5 to 86400")] = 3600


# -- queries ----------------------------------------------------------------------------------


class OrderListQuery(Struct):
    """``GET /api/orders``."""

    limit: Annotated[int, Meta(ge=1, le=100, description="an integer from 1 to 100")] = 20
    cursor: (
        Annotated[
            str,
            Meta(
                pattern=CURSOR_PATTERN,
                description="the next_cursor of the previous page",
                extra={"error": (400, "invalid_cursor")},
            ),
        ]
        | None
    ) = None


class StoreListQuery(Struct):
    """``GET /api/pos/orders``."""

    # An unknown status is a well-formed value naming nothing: 422, as in a body.
    status: Annotated[OrderStatus, Meta(extra={"error": (422, "validation_error")})] | None = None
    limit: Annotated[int, Meta(ge=1, le=500, description="an integer from 1 to 500")] = 200


class EventsQuery(Struct):
    """``GET /api/events``; ``wait`` is bounded by LONGPOLL_MAX_WAIT (``events_query``)."""

    since: Seq = 0
    epoch: Annotated[str, Meta(min_length=1, max_length=100)] | None = None
    last_event_id: (
        Annotated[
            int,
            Meta(ge=1, le=MAX_SEQ, description="the event_id of the event the client saw at since"),
        ]
        | None
    ) = None
    snapshot: bool = False
    wait: int = 0


@functools.cache
def events_query(max_wait: int) -> type[EventsQuery]:
    """EventsQuery with ``wait`` bounded by this deployment's LONGPOLL_MAX_WAIT."""
    wait = Annotated[
        int, Meta(ge=0, le=max_wait, description=f"seconds, an integer from 0 to {max_wait}")
    ]
    bounded = msgspec.defstruct("EventsQuery", [("wait", wait, 0)], bases=(EventsQuery,))
    return cast(type[EventsQuery], bounded)


# -- responses --------------------------------------------------------------------------------


class ErrorDetail(Struct):
    """What went wrong: a stable ``code``, a message, and per code more (``field``, ``allowed``)."""

    code: str
    message: str
    field: str | UnsetType = UNSET
    allowed: list[OrderStatus] | UnsetType = UNSET


class Error(Struct):
    """The one error shape of the API."""

    error: ErrorDetail


class Item(Struct):
    """A line of an order."""

    sku: str
    name: str
    quantity: int
    unit_price: int


class PaymentSummary(Struct):
    """An order's money, in minor units, derived from its payment and refund rows."""

    paid: int
    refunded: int
    outstanding: int
    currency: str
    can_pay: bool
    can_refund: bool


class Order(Struct):
    """An order snapshot."""

    id: str
    customer_id: str | None
    store_id: str
    status: OrderStatus
    payment_status: str
    payment_method: PaymentMethod
    amount: int
    currency: str
    items: list[Item]
    needs_review: bool
    created_at: datetime
    updated_at: datetime
    expires_at: datetime | None
    version: int
    payment_summary: PaymentSummary | None = None


class Payment(Struct):
    """A payment attempt."""

    id: str
    order_id: str
    gateway: str
    amount: int
    currency: str
    status: str
    redirect_url: str | None
    attempts: int
    last_checked_at: datetime | None
    next_check_at: datetime | None
    created_at: datetime
    settled_at: datetime | None
    # A manual payment (gateway "manual"): how it was taken and who recorded it.
    method: str | None = None
    reference: str | None = None
    recorded_by: str | None = None


class ManualPayment(Struct, forbid_unknown_fields=True):
    """A payment taken outside a gateway, recorded by a POS terminal or an admin."""

    method: Literal["cash", "card_terminal", "bank_transfer", "other"]
    amount: Annotated[
        int,
        Meta(
            ge=1,
            le=MAX_AMOUNT,
            description=f"an integer from 1 to {MAX_AMOUNT}, in minor units, at most what is"
            " outstanding",
        ),
    ]
    reference: Reference | None = None


class RefundRequest(Struct, forbid_unknown_fields=True):
    """A refund: how much (default all that may be refunded) and why."""

    reason: Note
    amount: (
        Annotated[
            int,
            Meta(
                ge=1,
                le=MAX_AMOUNT,
                description="in minor units, at most what was paid and not yet refunded;"
                " default: all of it",
            ),
        ]
        | None
    ) = None


class Refund(Struct):
    """A refund record."""

    id: str
    order_id: str
    payment_id: str
    amount: int
    currency: str
    status: str
    reason: str
    gateway_ref: str | None
    created_at: datetime
    updated_at: datetime


class ReceiptLine(Struct):
    """A line of the order, as the receipt prints it."""

    sku: str | None
    name: str | None
    quantity: int
    unit_price: int
    amount: int


class ReceiptTax(Struct):
    """The tax included in the receipt's amount (RECEIPT_TAX_RATE_BP, rounded half up)."""

    rate_bp: int
    included: bool
    amount: int
    net: int


class ReceiptPayment(Struct):
    """A payment that took money, as it stood when the receipt was issued."""

    id: str
    gateway: str
    method: str | None
    reference: str | None
    amount: int
    status: str
    at: datetime | None


class ReceiptRefund(Struct):
    """A refund that SUCCEEDED, as it stood when the receipt was issued."""

    id: str
    payment_id: str
    amount: int
    reason: str
    reference: str | None
    at: datetime | None


class ReceiptTotals(Struct):
    """The order's totals when the receipt was issued (its payment_summary then)."""

    paid: int
    refunded: int
    outstanding: int


class Receipt(Struct):
    """An issued receipt: never changed after issue; ``number`` counts per store, no gaps;
    ``amount`` is the order's (sale) or the refund's (refund); ``refund``: the refund this
    receipt is for."""

    number: int
    label: str
    kind: Literal["sale", "refund"]
    issued_at: datetime
    order_id: str
    store_id: str
    customer_id: str | None
    currency: str
    lines: list[ReceiptLine]
    order_amount: int
    amount: int
    tax: ReceiptTax | None
    refund: ReceiptRefund | None
    payments: list[ReceiptPayment]
    refunds: list[ReceiptRefund]
    totals: ReceiptTotals


class ReceiptList(Struct):
    """The order's receipts, by number."""

    receipts: list[Receipt]


class ReceiptRef(Struct):
    """The short form of a receipt a ``receipt.issued`` event carries."""

    number: int
    label: str
    kind: Literal["sale", "refund"]
    order_id: str
    store_id: str
    amount: int
    currency: str
    issued_at: datetime


class RefundsRequested(Struct):
    """The refund records made, and the order after them."""

    refunds: list[Refund]
    order: Order


class ManualPaymentRecorded(Struct):
    """The recorded payment and the order after it."""

    payment: Payment
    order: Order


class AuditEntry(Struct):
    """One event of an order's audit trail."""

    event_id: int
    order_id: str
    kind: str
    status: str
    previous_status: str | None
    source: str
    actor: str
    note: str | None
    at: datetime


class StreamEvent(Struct):
    """One position of a stream (the same message /ws sends)."""

    type: Literal["event"]
    stream: str
    seq: int
    event_id: int
    order_id: str
    kind: str
    status: str
    previous_status: str | None
    source: str
    at: datetime
    order: Order | None
    note: str | UnsetType = UNSET
    #: On a ``payment.status`` event: the payment attempt as it is after the change.
    payment: Payment | UnsetType = UNSET
    #: On a ``refund.status`` event: the refund as it is after the change.
    refund: Refund | UnsetType = UNSET
    #: On a ``receipt.issued`` event: the receipt's number, kind and amount.
    receipt: ReceiptRef | UnsetType = UNSET


class OrderCreated(Struct):
    order: Order


class OrderPage(Struct):
    orders: list[Order]
    next_cursor: str | None


class OrderDetail(Struct):
    order: Order
    payments: list[Payment]
    payment_status: str
    status_updated: bool


class PaymentStarted(Struct):
    payment: Payment
    redirect_url: str | None


class PaymentVerified(Struct):
    payment: Payment | None
    order: Order
    payment_status: str
    status_updated: bool
    checked: str


class AuditTrail(Struct):
    order_id: str
    events: list[AuditEntry]


class OrderChanged(Struct):
    order: Order
    event: AuditEntry


class StoreOrders(Struct):
    orders: list[Order]


class EventsPage(Struct):
    """Events after ``since``; on a reset (position gone, other epoch, another event at
    ``since`` than ``last_event_id``) ``reset`` and a fresh snapshot instead — the open
    ``orders``, ``head_event_id``, and ``truncated`` with ``next_cursor`` when there are more;
    with ``snapshot=true`` the same snapshot marked ``snapshot``."""

    stream: str
    epoch: str
    head_seq: int
    events: list[StreamEvent]
    more: bool | UnsetType = UNSET
    reset: bool | UnsetType = UNSET
    snapshot: bool | UnsetType = UNSET
    orders: list[Order] | UnsetType = UNSET
    head_event_id: int | None | UnsetType = UNSET
    truncated: bool | UnsetType = UNSET
    next_cursor: str | None | UnsetType = UNSET


class DemoToken(Struct):
    token: str
    expires_at: int


class Health(Struct):
    status: Literal["ok"]


class Ready(Struct):
    status: Literal["ready"]
    checks: dict[str, str]


class NotReady(Struct):
    error: ErrorDetail
    checks: dict[str, str]
