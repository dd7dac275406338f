"""Refunds as their own records (REQUESTED → PENDING → SUCCEEDED | FAILED), on the write path.

``Refunds.request`` takes an amount (default: all that may still be refunded) and spreads it
across the order's paid payments, newest first, in one transaction with the order locked:
a manual payment's refund is recorded SUCCEEDED at once (the money went back over the
counter); a gateway payment's is REQUESTED, then sent through the adapter's ``refund()``
after the commit and its answer applied with ``apply``. A payment's status
(PARTIALLY_REFUNDED / REFUNDED) follows from its SUCCEEDED refund rows. Every change is an
event on the order's streams; the order snapshot in it carries the totals as of its commit.

**Settling like payments.** Every answer about a refund — the answer to our ``refund()`` or
``fetch_refund()`` call, a signed refund webhook, a hint confirmed through the status API —
goes through the pure ``decide_refund`` (forward only; a success after FAILED only from the
status API). A webhook is recorded once in ``webhook_receipts`` in the same transaction as the
change it makes. A refund still in flight is polled by the reconciler on its gateway's payment
schedule (``next_check_at``, counted from the refund's creation), through the shared rate
limit; a transport error, a timeout, a 5xx or a 429 is never a verdict: the refund stays as it
is and waits for Retry-After or a backoff with jitter. Only the gateway's refusal of the refund
itself fails it.

**Cancel.** ``change_status`` to CANCELLED of an order with money paid requests the refund of
everything refundable in the same transaction as the cancel, one row per payment, keyed
``cancel:<order id>:<payment id>`` so a retried cancel or two cancels racing record it once.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from gateways.base import (
    GatewayRejected,
    GatewayUnavailable,
    RefundRequest,
    RefundState,
    WebhookEvent,
)
from gateways.base import PaymentStatus as ObservedPayment
from gateways.base import RefundStatus as Observed
from orders import documents, money, receipts
from orders.actors import Role
from orders.errors import Conflict, Invalid, NotFound
from orders.ledger import Ledger, Receipt, insert_receipt, set_receipt_outcome
from orders.models import orders_table, payments_table, refunds_table, utcnow
from orders.payments import (
    PAID,
    Evidence,
    RefundStatus,
    Verdict,
    amount_mismatch,
    decide_refund,
    refunded_status,
)
from orders.schedule import wait_after_unavailable
from orders.settlement import MANUAL_GATEWAY, Settlement, payment_view
from orders.workflow import OrderStatus
from orders.writes import (
    ORDER_ID,
    Actor,
    Delivery,
    Written,
    change_order_status,
    visible_to,
)

logger = logging.getLogger(__name__)

REFUND_STATUS = "refund.status"
#: Audit-only record of a refund observation that moved nothing (on no stream).
REFUND_OBSERVATION = "refund.observation"
_IN_FLIGHT = (RefundStatus.REQUESTED.value, RefundStatus.PENDING.value)
_COUNTED = (*_IN_FLIGHT, RefundStatus.SUCCEEDED.value)
_SETTLED = (RefundStatus.SUCCEEDED.value, RefundStatus.FAILED.value)
#: A PhonePe v1 refund callback is shaped like a payment's: what it means for the refund.
_FROM_PAYMENT = {
    ObservedPayment.COMPLETED: Observed.SUCCEEDED,
    ObservedPayment.PENDING: Observed.PENDING,
    ObservedPayment.INITIATED: Observed.PENDING,
    ObservedPayment.FAILED: Observed.FAILED,
}


def new_refund_id() -> str:
    """A random refund id (also our idempotency reference at the gateway)."""
    return "ref_" + secrets.token_hex(12)


def refund_view(row: Any) -> dict[str, Any]:
    """The public JSON form of a refund."""
    return {
        "id": row.id,
        "order_id": row.order_id,
        "payment_id": row.payment_id,
        "amount": row.amount,
        "currency": row.currency,
        "status": row.status,
        "reason": row.reason,
        "gateway_ref": row.gateway_ref,
        "attempts": row.attempts,
        "next_check_at": documents.iso(row.next_check_at),
        "created_at": documents.iso(row.created_at),
        "updated_at": documents.iso(row.updated_at),
    }


def spread(amount: int, refundable: list[tuple[str, int]]) -> list[tuple[str, int]]:
    """Split ``amount`` over (payment id, refundable) pairs given newest first (PURE)."""
    parts = []
    left = amount
    for payment_id, room in refundable:
        if left <= 0:
            break
        take = min(room, left)
        if take > 0:
            parts.append((payment_id, take))
            left -= take
    if left > 0:
        raise ValueError(f"{left} cannot be placed")
    return parts


@dataclass(frozen=True, slots=True)
class Requested:
    """What a refund request did: its refund rows and the order after it."""

    refunds: list[dict[str, Any]]
    order: dict[str, Any]


class Refunds:
    """Requests, sends, polls and settles refunds through the same transaction shape as payments."""

    def __init__(self, settlement: Settlement, *, lease: float = 30.0) -> None:
        self.settlement = settlement
        self.db = settlement.db
        self.hooks = settlement.hooks
        #: How long a refund being sent by a request is left alone by the reconciler.
        self.lease = lease

    # -- request -------------------------------------------------------------------------------

    async def request(
        self, *, order_id: str, amount: int | None, reason: str, actor: Actor
    ) -> Requested:
        """Refund ``amount`` (default: all refundable) of the order; 404 / 409 / 422."""
        if not ORDER_ID.fullmatch(order_id):
            raise NotFound("no such order")
        now = utcnow()
        async with self.db.transaction() as session:
            ledger = await Ledger.lock(session, order_id)
            if ledger is None:
                raise NotFound("no such order")
            principal = actor.principal
            if principal is None or principal.role is Role.CUSTOMER:
                raise NotFound("no such order")
            if not visible_to(ledger.order, principal):
                raise NotFound("no such order")
            payments = await _paid_payments(ledger.conn, order_id)
            rooms = [(p.id, p.amount - await _counted(ledger.conn, p.id)) for p in payments]
            refundable = sum(room for _, room in rooms)
            if refundable <= 0:
                raise Conflict("nothing of this order is left to refund", code="nothing_to_refund")
            wanted = refundable if amount is None else amount
            if wanted > refundable:
                raise Invalid(
                    f"amount {wanted} is more than the {refundable} that may be refunded",
                    field="amount",
                    refundable=refundable,
                )
            by_id = {p.id: p for p in payments}
            created, to_send = await self._record_requests(
                ledger,
                [(by_id[pid], part, new_refund_id()) for pid, part in spread(wanted, rooms)],
                reason=reason,
                actor=actor,
                now=now,
            )
            await ledger.save()
            views = [refund_view(r) for r in await _refunds(ledger.conn, created)]
            snapshot = await ledger.snapshot()
        await ledger.publish(self.settlement.publisher)
        logger.info(
            "refund of %d for order %s requested by %s: %s", wanted, order_id, actor.name, created
        )
        for refund_id in to_send:
            await self.send(refund_id)
        if to_send:
            async with self.db.read() as session:
                views = [refund_view(r) for r in await _refunds(session, created)]
                fresh = (await session.execute(select_order(order_id))).one()
                snapshot = (await money.snapshots(session, [fresh]))[0]
        return Requested(views, snapshot)

    async def _record_requests(
        self,
        ledger: Ledger,
        parts: list[tuple[Any, int, str]],
        *,
        reason: str,
        actor: Actor,
        now: datetime,
        keyed: str | None = None,
    ) -> tuple[list[str], list[str]]:
        """Insert one refund row per (payment, amount, id), each with its event: (every id
        recorded, the gateway ones to send now). ``keyed``: the idempotency key's prefix
        (``<keyed>:<payment id>``); a row already recorded under it is skipped."""
        created: list[str] = []
        to_send: list[str] = []
        dialect = postgresql if self.db.is_postgres else sqlite
        for payment, part, refund_id in parts:
            manual = payment.gateway == MANUAL_GATEWAY
            status = RefundStatus.SUCCEEDED if manual else RefundStatus.REQUESTED
            values = {
                "id": refund_id,
                "order_id": ledger.order.id,
                "payment_id": payment.id,
                "amount": part,
                "currency": payment.currency,
                "status": status.value,
                "reason": reason,
                "idempotency_key": f"{keyed}:{payment.id}" if keyed else refund_id,
                "created_at": now,
                "updated_at": now,
                # Sent right after the commit; the reconciler takes over if that cannot answer.
                "next_check_at": None if manual else now + timedelta(seconds=self.lease),
                "attempts": 0,
                "check_failures": 0,
            }
            inserted = (
                await ledger.conn.execute(
                    dialect.insert(refunds_table)
                    .on_conflict_do_nothing()
                    .returning(refunds_table.c.id),
                    values,
                )
            ).scalar()
            if inserted is None:
                continue
            if not manual:
                to_send.append(refund_id)
            await self._record(ledger, refund_id, None, actor, now)
            created.append(refund_id)
        return created, to_send

    # -- cancel --------------------------------------------------------------------------------

    async def change_status(
        self, *, order_id: str, to: OrderStatus, actor: Actor, note: str | None = None
    ) -> Written:
        """Move an order along the workflow (``writes.change_order_status``); a cancel of an
        order with money paid also requests the refund of all of it, in the same transaction,
        exactly once (manual payments refunded at once, gateway ones sent after the commit)."""
        settlement = self.settlement
        if to is not OrderStatus.CANCELLED:
            return await change_order_status(
                self.db,
                settlement.publisher,
                settlement.metrics,
                order_id=order_id,
                to=to,
                actor=actor,
                note=note,
            )
        await self.hooks.before_cancel(order_id)
        to_send: list[str] = []

        async def refund_all(
            session: AsyncSession,
            order: documents.OrderRow,
            deliveries: list[Delivery],
            event_ids: list[int],
        ) -> documents.OrderRow:
            await self.hooks.before_cancel_refund(order.id)
            ledger = Ledger(session, await session.connection(), order, deliveries, event_ids)
            payments = await _paid_payments(ledger.conn, order.id)
            parts = []
            for payment in payments:
                room = payment.amount - await _counted(ledger.conn, payment.id)
                if room > 0:
                    parts.append((payment, room, new_refund_id()))
            if parts:
                _, sending = await self._record_requests(
                    ledger,
                    parts,
                    reason="order_cancelled",
                    actor=actor,
                    now=order.updated_at,
                    keyed=f"cancel:{order.id}",
                )
                to_send.extend(sending)
                await ledger.save()
            return ledger.order

        written = await change_order_status(
            self.db,
            settlement.publisher,
            settlement.metrics,
            order_id=order_id,
            to=to,
            actor=actor,
            note=note,
            within=refund_all,
        )
        for refund_id in to_send:
            await self.send(refund_id)
        if to_send:
            async with self.db.read() as session:
                fresh = (await session.execute(select_order(order_id))).one()
                order = (await money.snapshots(session, [fresh]))[0]
            written = Written(order, written.event, written.deliveries)
        return written

    # -- polling -------------------------------------------------------------------------------

    async def retry_due(self, *, batch: int = 100, concurrency: int = 16) -> int:
        """Reconciler pass: send or ask about every gateway refund whose ``next_check_at`` has
        come; how many were tried.

        The claim moves ``next_check_at`` a lease ahead (other reconcilers skip it meanwhile);
        on PostgreSQL with SKIP LOCKED, so several reconcilers never take the same refund.
        """
        now = utcnow()
        async with self.db.transaction() as session:
            statement = (
                select(refunds_table.c.id)
                .join(payments_table, payments_table.c.id == refunds_table.c.payment_id)
                .where(
                    refunds_table.c.status.in_(_IN_FLIGHT),
                    refunds_table.c.next_check_at <= now,
                    payments_table.c.gateway != MANUAL_GATEWAY,
                )
                .order_by(refunds_table.c.next_check_at)
                .limit(batch)
            )
            if self.db.is_postgres:
                statement = statement.with_for_update(of=refunds_table, skip_locked=True)
            ids = [str(i) for i in (await session.execute(statement)).scalars()]
            if ids:
                await session.execute(
                    update(refunds_table)
                    .where(refunds_table.c.id.in_(ids))
                    .values(next_check_at=now + timedelta(seconds=self.lease))
                )
        gate = asyncio.Semaphore(concurrency)

        async def one(refund_id: str) -> None:
            async with gate:
                try:
                    await self.send(refund_id, rate_limited=True)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    # Its lease runs out and a later pass asks again.
                    logger.exception("refund %s: check failed; it stays as it is", refund_id)

        await asyncio.gather(*(one(refund_id) for refund_id in ids))
        return len(ids)

    async def send(self, refund_id: str, *, rate_limited: bool = False) -> str:
        """Ask the payment's gateway to refund (REQUESTED) or how it stands (PENDING); apply
        its answer. Unavailable, or out of rate budget: the refund stays as it is, due later.
        The outcome: the verdict, or why the gateway was not asked / could not answer."""
        async with self.db.read() as session:
            refund = (
                await session.execute(select(refunds_table).where(refunds_table.c.id == refund_id))
            ).one()
            payment = (
                await session.execute(
                    select(payments_table).where(payments_table.c.id == refund.payment_id)
                )
            ).one()
        if refund.status not in _IN_FLIGHT:
            return "settled"
        gateway = self.settlement.gateways.get(payment.gateway)
        if gateway is None:
            await self._unavailable(refund_id, f"gateway {payment.gateway} is not offered here")
            return "no_gateway"
        limiter = self.settlement.limiter
        if (
            rate_limited
            and limiter is not None
            and not await limiter.acquire(payment.gateway, wait=False)
        ):
            await self._reschedule(refund_id, utcnow() + timedelta(seconds=1))
            return "rate_limited"
        request = RefundRequest(
            reference=refund_id,
            payment_ref=payment.gateway_ref,
            amount=refund.amount,
            currency=refund.currency,
            reason=refund.reason,
        )
        # Asking to refund again is safe (our id is the gateway's idempotency key); a refund
        # the gateway accepted but whose id we never learnt is asked about that way too.
        asking = refund.status == RefundStatus.PENDING.value and refund.gateway_ref is not None
        try:
            if asking:
                state = await gateway.fetch_refund(refund_id, refund_ref=refund.gateway_ref)
            else:
                state = await gateway.refund(request)
        except GatewayUnavailable as exc:
            # Never FAILED by a transport error: it stays as it is for a later try.
            await self._unavailable(refund_id, str(exc), exc.retry_after)
            return "unavailable"
        except GatewayRejected as exc:
            if asking:
                # A 4xx on a status call (not found, bad credentials) says nothing of the money.
                await self._unavailable(refund_id, str(exc))
                return "unavailable"
            logger.warning("refund %s: refused by the gateway: %s", refund_id, exc)
            state = RefundState(Observed.FAILED, refund_id, None, gateway_status=str(exc))
        return await self.apply(
            refund_id,
            state,
            actor=Actor.system(source="system", name=f"gateway:{payment.gateway}"),
            evidence=Evidence.STATUS_API,
            checked=True,
        )

    async def _unavailable(
        self, refund_id: str, error: str, retry_after: float | None = None
    ) -> None:
        """The gateway could not answer: never a verdict; ask again after Retry-After or a
        backoff with jitter, as for payments."""
        async with self.db.transaction() as session:
            row = (
                await session.execute(
                    select(refunds_table.c.check_failures, refunds_table.c.status).where(
                        refunds_table.c.id == refund_id
                    )
                )
            ).one()
            failures = row.check_failures + 1
            wait = wait_after_unavailable(retry_after, failures, jitter=self.settlement.jitter())
            values: dict[str, Any] = {"check_failures": failures, "last_error": error[:500]}
            if row.status in _IN_FLIGHT:
                values["next_check_at"] = utcnow() + timedelta(seconds=wait)
            await session.execute(
                update(refunds_table).where(refunds_table.c.id == refund_id).values(**values)
            )
        logger.warning(
            "refund %s: the gateway could not answer (%s); next try in %.1fs",
            refund_id,
            error,
            wait,
        )

    async def _reschedule(self, refund_id: str, at: datetime) -> None:
        async with self.db.transaction() as session:
            await session.execute(
                update(refunds_table)
                .where(refunds_table.c.id == refund_id, refunds_table.c.status.in_(_IN_FLIGHT))
                .values(next_check_at=at)
            )

    def _next_check(self, refund: Any, gateway: str, now: datetime) -> datetime:
        """When to ask about a refund still in flight: its gateway's payment schedule, counted
        from the refund's creation; past the schedule's horizon, at the tail's pace (a refund
        is never given up on)."""
        schedule = self.settlement.schedule(gateway)
        elapsed = (now - refund.created_at).total_seconds()
        step = schedule.next_check(elapsed, first=schedule.first_min)
        if step is None:
            return now + timedelta(seconds=schedule.tail_then)
        created: datetime = refund.created_at
        return created + timedelta(seconds=step[0])

    # -- apply ---------------------------------------------------------------------------------

    async def apply(
        self,
        refund_id: str,
        state: RefundState,
        *,
        actor: Actor,
        evidence: Evidence = Evidence.STATUS_API,
        checked: bool = False,
        receipt: Receipt | None = None,
    ) -> str:
        """Apply one answer about a refund through ``decide_refund``, in one transaction (with
        its webhook's receipt, if it came as one); the verdict (``duplicate`` for a receipt
        already recorded). A success after FAILED claimed by a webhook, or any claim a webhook
        cannot bind, is confirmed with the gateway after the commit."""
        now = utcnow()
        async with self.db.transaction() as session:
            conn = await session.connection()
            peek = (
                await conn.execute(
                    select(refunds_table.c.order_id, refunds_table.c.payment_id).where(
                        refunds_table.c.id == refund_id
                    )
                )
            ).one()
            receipt_id = None
            if receipt is not None:
                receipt_id = await insert_receipt(
                    conn,
                    postgres=self.db.is_postgres,
                    receipt=receipt,
                    payment_id=peek.payment_id,
                    outcome="received",
                    now=now,
                )
                if receipt_id is None:
                    return "duplicate"
            ledger = await Ledger.lock(session, peek.order_id)
            assert ledger is not None  # a refund's order is never deleted
            payment = await ledger.lock_payment(peek.payment_id)
            refund = (
                await conn.execute(
                    select(refunds_table).where(refunds_table.c.id == refund_id).with_for_update()
                )
            ).one()
            current = RefundStatus(refund.status)
            decision = decide_refund(current, state.status, evidence)
            refused = None
            if decision.changes:
                refused = amount_mismatch(
                    expected_amount=refund.amount,
                    expected_currency=refund.currency,
                    observed_amount=state.amount,
                    observed_currency=state.currency,
                )
            verdict = "refused" if refused else decision.verdict.value
            values: dict[str, Any] = {}
            if checked:
                values.update(attempts=refund.attempts + 1, check_failures=0, last_error=None)
            if state.refund_ref and refund.gateway_ref is None:
                values["gateway_ref"] = state.refund_ref
            status = current
            if decision.changes and refused is None:
                assert decision.to is not None
                status = decision.to
                values.update(status=status.value, updated_at=now)
            if status.value in _SETTLED:
                values["next_check_at"] = None
            elif checked or decision.changes:
                values["next_check_at"] = self._next_check(refund, payment.gateway, now)
            if values:
                await conn.execute(
                    update(refunds_table).where(refunds_table.c.id == refund_id).values(**values)
                )
            if decision.changes and refused is None:
                await self._record(ledger, refund_id, current.value, actor, now)
                await ledger.save()
            else:
                if refused is not None:
                    logger.error("refund %s: %s; refused, order flagged", refund_id, refused)
                    ledger.change(now, needs_review=True)
                    await ledger.save()
                await ledger.observe(
                    kind=REFUND_OBSERVATION,
                    from_status=current.value,
                    to_status=state.status.value,
                    actor=actor,
                    now=now,
                    data={
                        "refund_id": refund_id,
                        "verdict": verdict,
                        "reason": refused or decision.reason,
                        "evidence": evidence.name.lower(),
                        "gateway_status": state.gateway_status,
                    },
                )
            if receipt_id is not None:
                await set_receipt_outcome(conn, receipt_id, verdict)
        await ledger.publish(self.settlement.publisher)
        logger.info(
            "refund %s: %s says %s (%s) -> %s: %s",
            refund_id,
            actor.source,
            state.status.value,
            evidence.name.lower(),
            verdict,
            refused or decision.reason,
        )
        if decision.verdict is Verdict.CONFIRM:
            return f"confirmed:{await self.send(refund_id)}"
        return verdict

    async def _record(
        self,
        ledger: Ledger,
        refund_id: str,
        from_status: str | None,
        actor: Actor,
        now: datetime,
    ) -> None:
        """The refund's event, and its payment's status from the SUCCEEDED refund rows."""
        conn = ledger.conn
        refund = (await _refunds(conn, [refund_id]))[0]
        payment = (
            await conn.execute(
                select(payments_table).where(payments_table.c.id == refund.payment_id)
            )
        ).one()
        succeeded = await _counted(conn, payment.id, (RefundStatus.SUCCEEDED.value,))
        new_status = refunded_status(payment.amount, succeeded)
        moved_payment = new_status.value != payment.status
        if moved_payment:
            await conn.execute(
                update(payments_table)
                .where(payments_table.c.id == payment.id)
                .values(status=new_status.value)
            )
        if moved_payment:
            ledger.change(now, payment_status=new_status.value)
        else:
            ledger.change(now)
        await ledger.append(
            kind=REFUND_STATUS,
            from_status=from_status,
            to_status=refund.status,
            actor=actor,
            note=f"refund {refund.id} of {refund.amount}: {refund.reason}",
            extra={"refund": refund_view(refund)},
        )
        if moved_payment:
            after = (
                await conn.execute(select(payments_table).where(payments_table.c.id == payment.id))
            ).one()
            await ledger.append(
                kind="payment.status",
                from_status=payment.status,
                to_status=new_status.value,
                actor=actor,
                note=f"refund {refund.id}",
                extra={"payment": payment_view(after)},
            )
        await receipts.after_refund(
            ledger, refund.id, actor=actor, tax_rate_bp=self.settlement.receipt_tax_rate_bp
        )

    # -- webhooks ------------------------------------------------------------------------------

    async def receive_webhook(self, event: WebhookEvent) -> str:
        """Apply a verified webhook once: a refund's through ``apply`` (deduped by its event id
        in the same transaction), any other through the settlement's payment path."""
        refund_state = event.refund
        refund_id: str | None = None
        if refund_state is not None:
            # Our own reference as the adapter read it off the event (the typed field every
            # adapter fills), else the one in the refund's state.
            refund_id = await self._refund_for(
                event.gateway,
                event.refund_reference or refund_state.reference,
                refund_state.refund_ref,
            )
        elif event.state is not None and event.ref:
            # PhonePe v1 calls back about a refund as about a payment, under the refund's id.
            refund_id = await self._refund_for(event.gateway, event.ref, None)
            if refund_id is not None:
                refund_state = RefundState(
                    status=_FROM_PAYMENT.get(event.state.status, Observed.UNKNOWN),
                    reference=event.ref,
                    refund_ref=event.state.gateway_transaction_id,
                    amount=event.state.amount,
                    currency=event.state.currency,
                    gateway_status=event.state.gateway_status,
                    raw=event.state.raw,
                )
        if refund_state is None:
            return await self.settlement.receive_webhook(event)
        receipt = Receipt(event.gateway, event.event_id, event.raw)
        if refund_id is None:
            # Not ours (or not yet recorded): acknowledged, so the gateway stops retrying.
            if not await self.settlement._record_receipt(receipt, None, "unknown_refund"):
                return "duplicate"
            logger.info("webhook %s/%s names no refund of ours", event.gateway, event.event_id)
            return "unknown_refund"
        actor = Actor.system("webhook", f"gateway:{event.gateway}")
        if not event.trusted:
            # A hint: recorded once, then the gateway's refund status says what is true.
            async with self.db.read() as session:
                payment_id = (
                    await session.execute(
                        select(refunds_table.c.payment_id).where(refunds_table.c.id == refund_id)
                    )
                ).scalar()
            if not await self.settlement._record_receipt(receipt, payment_id, "hint"):
                return "duplicate"
            return f"confirmed:{await self.send(refund_id)}"
        return await self.apply(
            refund_id, refund_state, actor=actor, evidence=Evidence.SIGNED, receipt=receipt
        )

    async def _refund_for(
        self, gateway: str, reference: str | None, refund_ref: str | None
    ) -> str | None:
        """Our refund a gateway's event names: by our reference, else by the gateway's id."""
        async with self.db.read() as session:
            base = (
                select(refunds_table.c.id)
                .join(payments_table, payments_table.c.id == refunds_table.c.payment_id)
                .where(payments_table.c.gateway == gateway)
            )
            if reference:
                found = (
                    await session.execute(base.where(refunds_table.c.id == reference))
                ).scalar()
                if found is not None:
                    return str(found)
            if refund_ref:
                found = (
                    await session.execute(base.where(refunds_table.c.gateway_ref == refund_ref))
                ).scalar()
                if found is not None:
                    return str(found)
        return None


def select_order(order_id: str) -> Any:
    """The order's row (no lock)."""
    return select(orders_table).where(orders_table.c.id == order_id)


async def _paid_payments(conn: AsyncConnection, order_id: str) -> list[Any]:
    """The order's paid payments, newest first (the order a refund is spread in)."""
    rows = await conn.execute(
        select(payments_table)
        .where(
            payments_table.c.order_id == order_id,
            payments_table.c.status.in_(sorted(s.value for s in PAID)),
        )
        .order_by(payments_table.c.settled_at.desc(), payments_table.c.created_at.desc())
        .with_for_update()
    )
    return list(rows)


async def _counted(
    conn: AsyncConnection, payment_id: str, statuses: tuple[str, ...] = _COUNTED
) -> int:
    total = (
        await conn.execute(
            select(func.coalesce(func.sum(refunds_table.c.amount), 0)).where(
                refunds_table.c.payment_id == payment_id, refunds_table.c.status.in_(statuses)
            )
        )
    ).scalar_one()
    return int(total)


async def _refunds(executor: AsyncConnection | AsyncSession, ids: list[str]) -> list[Any]:
    rows = await executor.execute(
        select(refunds_table).where(refunds_table.c.id.in_(ids)).order_by(refunds_table.c.id)
    )
    by_id = {row.id: row for row in rows}
    return [by_id[i] for i in ids]
