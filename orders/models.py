"""SQLAlchemy 2 tables: orders, payments, refunds, events, streams, stream_events, receipts."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
    UniqueConstraint,
    event,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL wants BIGINT for a log.
BigId = BigInteger().with_variant(Integer, "sqlite")


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that is always timezone-aware UTC, also on SQLite (which drops tzinfo)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    """Now, as an aware UTC datetime."""
    return datetime.now(UTC)


class Base(DeclarativeBase):
    """Declarative base of every table."""

    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class Order(Base):
    __tablename__ = "orders"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    # NULL for a walk-in order taken at a POS: no customer token can ever own it.
    customer_id: Mapped[str | None] = mapped_column(String(200), index=True, nullable=True)
    store_id: Mapped[str] = mapped_column(String(200), index=True)
    status: Mapped[str] = mapped_column(String(40))
    payment_status: Mapped[str] = mapped_column(String(40))
    payment_method: Mapped[str] = mapped_column(String(20))
    amount: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    items: Mapped[list[Any]] = mapped_column(JSON)
    needs_review: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    version: Mapped[int] = mapped_column(Integer, default=1)

    __table_args__ = (
        Index("ix_orders_customer_created", "customer_id", "created_at", "id"),
        Index("ix_orders_store_status", "store_id", "status"),
    )


class Payment(Base):
    __tablename__ = "payments"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    order_id: Mapped[str] = mapped_column(ForeignKey("orders.id"), index=True)
    gateway: Mapped[str] = mapped_column(String(40))
    gateway_ref: Mapped[str] = mapped_column(String(200))
    amount: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(40))
    gateway_transaction_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_checked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    next_check_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    last_gateway_response: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    settled_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # Added by migration 0002 (payments that settle, issue 5).
    currency: Mapped[str] = mapped_column(String(3), server_default=text("''"))
    redirect_url: Mapped[str | None] = mapped_column(String(2000), nullable=True)
    # When the gateway accepted the start; NULL: gateway_ref is still our own id, and the
    # reconciler asks the gateway to start it again (idempotent by our reference).
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    last_error: Mapped[str | None] = mapped_column(String(500), nullable=True)
    # Consecutive "gateway could not answer" outcomes: the backoff's attempt number.
    check_failures: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    # This payment's first check, in seconds after created_at (the schedule's jittered first).
    first_check: Mapped[float] = mapped_column(Float, default=20.0, server_default=text("20"))
    # A check in flight somewhere holds this lease; nobody else asks the gateway until then.
    check_lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)

    __table_args__ = (
        UniqueConstraint("gateway", "gateway_ref", name="uq_payments_gateway_ref"),
        Index("ix_payments_due", "status", "next_check_at"),
        # One live attempt per order, also against a writer that forgot the order lock.
        Index(
            "uq_payments_one_live",
            "order_id",
            unique=True,
            postgresql_where=text("status IN ('INITIATED', 'PENDING')"),
            sqlite_where=text("status IN ('INITIATED', 'PENDING')"),
        ),
    )


class Refund(Base):
    """A refund: REQUESTED → PENDING → SUCCEEDED | FAILED, polled like a payment until settled."""

    __tablename__ = "refunds"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    order_id: Mapped[str] = mapped_column(ForeignKey("orders.id"), index=True)
    payment_id: Mapped[str] = mapped_column(ForeignKey("payments.id"), index=True)
    amount: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    status: Mapped[str] = mapped_column(String(40))
    reason: Mapped[str] = mapped_column(String(200))
    # "late_success:<payment id>", "cancel:<order id>:<payment id>" for the automatic ones:
    # asking twice (a retried cancel, two cancels racing) records it once.
    idempotency_key: Mapped[str] = mapped_column(String(200), unique=True)
    gateway_ref: Mapped[str | None] = mapped_column(String(200), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # Added by migration 0004: when the reconciler asks the gateway next (NULL: settled, or a
    # manual refund), how often it has asked, and the consecutive "could not answer"s.
    next_check_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    check_failures: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    last_error: Mapped[str | None] = mapped_column(String(500), nullable=True)

    __table_args__ = (Index("ix_refunds_due", "status", "next_check_at"),)


class Event(Base):
    """One entry of the append-only audit log."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    order_id: Mapped[str] = mapped_column(ForeignKey("orders.id"), index=True)
    kind: Mapped[str] = mapped_column(String(40))
    from_status: Mapped[str | None] = mapped_column(String(40), nullable=True)
    to_status: Mapped[str] = mapped_column(String(40))
    source: Mapped[str] = mapped_column(String(20))
    actor: Mapped[str] = mapped_column(String(250))
    data: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    published_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)

    __table_args__ = (
        # The relay's work list: small, because published events leave it.
        Index(
            "ix_events_unpublished",
            "id",
            postgresql_where=text("published_at IS NULL"),
            sqlite_where=text("published_at IS NULL"),
        ),
    )


class Stream(Base):
    """A per-audience event stream and its head; ``epoch`` changes if the log is reset."""

    __tablename__ = "streams"

    name: Mapped[str] = mapped_column(String(250), primary_key=True)
    head_seq: Mapped[int] = mapped_column(BigInteger, default=0)
    epoch: Mapped[str] = mapped_column(String(40))
    pruned_seq: Mapped[int] = mapped_column(BigInteger, default=0, server_default=text("0"))


class StreamEvent(Base):
    """Position ``seq`` of ``stream`` is ``event_id``: the ordered index for replay."""

    __tablename__ = "stream_events"

    stream: Mapped[str] = mapped_column(String(250), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    event_id: Mapped[int] = mapped_column(ForeignKey("events.id"), index=True)


class WebhookReceipt(Base):
    """One gateway notification, recorded once: the dedupe key is (gateway, event id)."""

    __tablename__ = "webhook_receipts"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    gateway: Mapped[str] = mapped_column(String(40))
    gateway_event_id: Mapped[str] = mapped_column(String(250))
    payment_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    outcome: Mapped[str] = mapped_column(String(40))
    received_at: Mapped[datetime] = mapped_column(UTCDateTime())
    body: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)

    __table_args__ = (UniqueConstraint("gateway", "gateway_event_id", name="uq_webhook_receipt"),)


class IdempotencyKey(Base):
    """One caller's Idempotency-Key: the request it was first used for and, once done, the
    answer to replay (server/idempotency.py)."""

    __tablename__ = "idempotency_keys"

    # "<role>:<sub>" (POS: "pos:<sub>@<store>"): keys of different callers never collide.
    caller: Mapped[str] = mapped_column(String(450), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    # sha256 of method, path, query and body bytes.
    request_hash: Mapped[str] = mapped_column(String(64))
    # running (the first request is in its handler), done (answer stored), unknown (the
    # handler's COMMIT may or may not have happened: never run again under this key).
    state: Mapped[str] = mapped_column(String(10))
    status: Mapped[int | None] = mapped_column(Integer, nullable=True)
    content_type: Mapped[str | None] = mapped_column(String(200), nullable=True)
    body: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)


class Receipt(Base):
    """An issued receipt: its number in its store's sequence and its JSON document, never
    changed after the insert (orders/receipts.py; a trigger refuses UPDATE and DELETE)."""

    __tablename__ = "receipts"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    store_id: Mapped[str] = mapped_column(String(200))
    number: Mapped[int] = mapped_column(BigInteger)
    order_id: Mapped[str] = mapped_column(ForeignKey("orders.id"), index=True)
    kind: Mapped[str] = mapped_column(String(10))
    # The refund a refund receipt is for: one receipt per refund, however often it is applied.
    refund_id: Mapped[str | None] = mapped_column(
        ForeignKey("refunds.id"), nullable=True, unique=True
    )
    # The rate the receipt was issued with: a later refund's receipt takes the same one.
    tax_rate_bp: Mapped[int] = mapped_column(Integer)
    # The document's exact text (compact JSON) and its sha256: served byte for byte.
    document: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    issued_at: Mapped[datetime] = mapped_column(UTCDateTime())

    __table_args__ = (
        UniqueConstraint("store_id", "number", name="uq_receipts_store_number"),
        # One sale receipt per order, also against a writer that forgot to look first.
        Index(
            "uq_receipts_one_sale",
            "order_id",
            unique=True,
            postgresql_where=text("kind = 'sale'"),
            sqlite_where=text("kind = 'sale'"),
        ),
    )


class ReceiptCounter(Base):
    """A store's last receipt number, locked by the transaction that issues the next one."""

    __tablename__ = "receipt_counters"

    store_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    last_number: Mapped[int] = mapped_column(BigInteger)


@event.listens_for(Receipt, "before_update")
@event.listens_for(Receipt, "before_delete")
def _receipts_are_immutable(*_args: Any) -> None:
    # Through the ORM too (the database's trigger covers every other statement).
    raise TypeError("receipts are immutable: an issued receipt is never changed or deleted")


# The Core tables, for the write path's lean statements (no unit of work on the hot path).
orders_table = cast(Table, Order.__table__)
payments_table = cast(Table, Payment.__table__)
refunds_table = cast(Table, Refund.__table__)
webhook_receipts_table = cast(Table, WebhookReceipt.__table__)
events_table = cast(Table, Event.__table__)
streams_table = cast(Table, Stream.__table__)
stream_events_table = cast(Table, StreamEvent.__table__)
idempotency_keys_table = cast(Table, IdempotencyKey.__table__)
receipts_table = cast(Table, Receipt.__table__)
receipt_counters_table = cast(Table, ReceiptCounter.__table__)
