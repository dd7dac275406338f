"""Payments through the one write path: start an attempt, apply what the gateway says, check.

Every change to a payment happens here, in one transaction per observation:
lock the order, then its payment (always in that order, so two writers never deadlock) →
``decide_payment`` (server/payments.py, the rules as data) → amount and currency check →
update the payment → a ``payment.status`` event on the customer's and the store's streams →
the order cascade (``order_after_payment``) with its ``order.status`` event → commit → publish.

Observations that change nothing (a duplicate, a late or out-of-order event, an unknown state,
a refused amount) are still written to the audit trail, as events of kind
``payment.observation`` that belong to no stream (so the streams carry only changes a client
acts on) and are born published (so the relay never picks them up).

**Starting a payment, crash-safe.** The attempt is committed INITIATED first, with our payment
id as its reference at the gateway (``gateway_ref`` holds that id until the gateway answers;
``started_at`` stays NULL). Then the gateway is called with that reference as its idempotency
key, then its ref and redirect URL are recorded. A crash in between leaves an INITIATED row the
reconciler finds when it is due: it repeats the start (same reference, so the gateway answers
with the same payment, never a second one) and polls it from there. A gateway that could not
answer leaves the attempt reconcilable; only a definite rejection (a 4xx) marks it FAILED.

**Single flight.** ``Settlement.check`` asks the gateway about a payment at most once at a time:
in this process through a map of in-flight checks (every caller awaits the same task), across
processes through a lease on the row (``check_lease_until``, taken by a conditional UPDATE), and
a check within ``reuse_within`` seconds is reused instead of repeated.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite

from gateways.base import (
    Gateway,
    GatewayRejected,
    GatewayUnavailable,
    PaymentRequest,
    PaymentStart,
    PaymentState,
    WebhookEvent,
)
from gateways.base import PaymentStatus as Observed
from orders import documents, money, receipts
from orders.actors import Role
from orders.db import Database
from orders.errors import Conflict, GatewayRefused, GatewayUnreachable, Invalid, NotFound
from orders.hooks import NO_HOOKS, Hooks
from orders.ledger import PAYMENT_BY_ID as _PAYMENT_BY_ID
from orders.ledger import Ledger, Receipt, insert_receipt, set_receipt_outcome
from orders.metrics import Metrics
from orders.models import payments_table, refunds_table, utcnow
from orders.payments import (
    LIVE,
    PAID,
    UNSUCCESSFUL,
    Decision,
    Evidence,
    FailurePolicy,
    PaymentStatus,
    Verdict,
    amount_mismatch,
    decide_payment,
    late_success_refund,
)
from orders.schedule import Schedule, wait_after_unavailable
from orders.workflow import OrderStatus, PaymentMethod
from orders.writes import (
    ORDER_ID,
    ORDER_STATUS,
    Actor,
    Publisher,
    visible_to,
)

logger = logging.getLogger(__name__)

PAYMENT_STATUS = "payment.status"
#: Audit-only record of an observation that moved nothing (on no stream, never published).
PAYMENT_OBSERVATION = "payment.observation"

P = PaymentStatus


@dataclass(frozen=True, slots=True)
class Applied:
    """What one observation did: the payment and order after it, and the decision taken."""

    payment: dict[str, Any]
    order: dict[str, Any]
    decision: Decision[PaymentStatus] | None
    changed: bool
    duplicate: bool = False
    refused: str | None = None
    refund_requested: bool = False


@dataclass(frozen=True, slots=True)
class CheckResult:
    """The outcome of ``Settlement.check``: whether the gateway was asked, and what changed."""

    payment: dict[str, Any] | None
    asked: bool
    changed: bool = False
    outcome: str = "reused"
    applied: Applied | None = None


#: The ``gateway`` of a payment taken outside any gateway (cash, card terminal, transfer).
MANUAL_GATEWAY = "manual"
#: The methods a manual payment may name.
MANUAL_METHODS = ("cash", "card_terminal", "bank_transfer", "other")


def new_payment_id() -> str:
    """A random, unguessable payment id (also our reference at the gateway)."""
    return "pay_" + secrets.token_hex(12)


def payment_view(row: Any) -> dict[str, Any]:
    """The public JSON form of a payment attempt (an ORM object or a row mapping)."""
    view: dict[str, Any] = {
        "id": row.id,
        "order_id": row.order_id,
        "gateway": row.gateway,
        "amount": row.amount,
        "currency": row.currency,
        "status": row.status,
        "redirect_url": row.redirect_url,
        "attempts": row.attempts,
        "last_checked_at": documents.iso(row.last_checked_at),
        "next_check_at": documents.iso(row.next_check_at),
        "created_at": documents.iso(row.created_at),
        "settled_at": documents.iso(row.settled_at),
    }
    if row.gateway == MANUAL_GATEWAY:
        # Who took it, how, and the slip or transfer reference: the audit of a manual payment.
        recorded = row.last_gateway_response or {}
        view["method"] = recorded.get("method")
        view["reference"] = recorded.get("reference")
        view["recorded_by"] = recorded.get("recorded_by")
    return view


class Settlement:
    """Starts payments, applies gateway observations, and checks payments in a single flight.

    One per process (the web app's lifespan, or the reconciler), handed everything it needs.
    """

    def __init__(
        self,
        db: Database,
        publisher: Publisher,
        metrics: Metrics,
        *,
        gateways: Mapping[str, Gateway],
        schedules: Mapping[str, Schedule] | None = None,
        policy: FailurePolicy = FailurePolicy.RETRY,
        limiter: RateLimiterLike | None = None,
        lease: float = 30.0,
        clock: Callable[[], datetime] = utcnow,
        jitter: Callable[[], float] = random.random,
        hooks: Hooks = NO_HOOKS,
        receipt_tax_rate_bp: int = 0,
    ) -> None:
        self.db = db
        self.publisher = publisher
        self.metrics = metrics
        self.gateways = dict(gateways)
        self._schedules = dict(schedules or {})
        self.policy = policy
        self.limiter = limiter
        self.lease = lease
        self.clock = clock
        self.jitter = jitter
        self.hooks = hooks
        #: RECEIPT_TAX_RATE_BP: the tax included in prices, printed on receipts (0: none).
        self.receipt_tax_rate_bp = receipt_tax_rate_bp
        self._inflight: dict[str, asyncio.Task[CheckResult]] = {}

    def schedule(self, gateway: str) -> Schedule:
        """The polling schedule of ``gateway`` (PhonePe's guidance unless configured)."""
        return self._schedules.get(gateway) or Schedule()

    # -- start ---------------------------------------------------------------------------------

    async def start(
        self,
        *,
        order_id: str,
        gateway_name: str,
        actor: Actor,
        callback_url: str | None = None,
        return_url: str | None = None,
        amount: int | None = None,
    ) -> tuple[dict[str, Any], str | None]:
        """Start (or resume) the order's payment attempt at ``gateway_name``: (payment, redirect).

        ``amount``: part of the order (split payments); default, what is outstanding.
        404 for an order that is not the caller's; 409 if it is not payable or another attempt
        is live (the error names it); 422 for a gateway that is not offered, or an amount above
        what is outstanding.
        """
        gateway = self.gateways.get(gateway_name)
        if gateway is None:
            raise Invalid(
                f"gateway {gateway_name!r} is not offered here",
                field="gateway",
                offered=sorted(self.gateways),
            )
        if not ORDER_ID.fullmatch(order_id):
            raise NotFound("no such order")
        now = self.clock()
        schedule = self.schedule(gateway_name)
        async with self.db.transaction() as session:
            ledger = await Ledger.lock(session, order_id)
            if ledger is None:
                raise NotFound("no such order")
            order = ledger.order
            principal = actor.principal
            if principal is None or principal.role is not Role.CUSTOMER:
                raise NotFound("no such order")
            if not visible_to(order, principal):
                raise NotFound("no such order")
            if order.payment_method != PaymentMethod.ONLINE.value:
                raise Conflict("a cash order is not paid online", code="not_payable")
            if order.status != OrderStatus.PENDING_PAYMENT.value:
                raise Conflict(
                    f"an order in {order.status} takes no payment",
                    code="not_payable",
                    status=order.status,
                )
            payments = await ledger.payments()
            paid = sum(p.amount for p in payments if p.status in PAID)
            if paid >= order.amount:
                raise Conflict("the order is already paid", code="already_paid")
            outstanding = order.amount - paid
            wanted = outstanding if amount is None else amount
            if wanted > outstanding:
                raise Invalid(
                    f"amount {wanted} is more than the {outstanding} outstanding",
                    field="amount",
                    outstanding=outstanding,
                )
            live = [p for p in payments if p.status in LIVE]
            if live:
                current = live[0]
                # One live attempt per order: a second, for any amount, waits for it to settle.
                if (
                    current.started_at is not None
                    or current.gateway != gateway_name
                    or current.amount != wanted
                ):
                    raise Conflict(
                        "another payment attempt of this order is in progress",
                        code="payment_in_progress",
                        payment_id=current.id,
                        redirect_url=current.redirect_url,
                    )
                # Never accepted by the gateway (it was down): this call retries that start.
                payment_id = current.id
                amount, currency = current.amount, current.currency
            else:
                payment_id = new_payment_id()
                amount, currency = wanted, order.currency
                first = schedule.first_check(self.jitter())
                values = {
                    "id": payment_id,
                    "order_id": order_id,
                    "gateway": gateway_name,
                    "gateway_ref": payment_id,
                    "amount": amount,
                    "currency": currency,
                    "status": P.INITIATED.value,
                    "attempts": 0,
                    "created_at": now,
                    "next_check_at": now + timedelta(seconds=first),
                    "first_check": first,
                    "check_failures": 0,
                }
                await ledger.conn.execute(insert(payments_table), values)
                new_row = await ledger.lock_payment(payment_id)
                ledger.change(now, payment_status=P.INITIATED.value)
                await ledger.save()
                await ledger.append(
                    kind=PAYMENT_STATUS,
                    from_status=None,
                    to_status=P.INITIATED.value,
                    actor=actor,
                    extra={"payment": payment_view(new_row)},
                )
        if ledger.deliveries:
            self.metrics.events_written.labels(kind=PAYMENT_STATUS, source=actor.source).inc()
        await ledger.publish(self.publisher)
        request = PaymentRequest(
            reference=payment_id,
            amount=amount,
            currency=currency,
            return_url=return_url,
            callback_url=callback_url,
            metadata={"order_id": order_id, "payment_id": payment_id},
        )
        try:
            started = await gateway.start_payment(request)
        except GatewayUnavailable as exc:
            await self._record_unavailable(payment_id, gateway_name, str(exc), exc.retry_after)
            raise GatewayUnreachable(
                "the gateway could not start the payment now; try again",
                payment_id=payment_id,
                retry_after=exc.retry_after,
            ) from None
        except GatewayRejected as exc:
            applied = await self._reject_start(payment_id, gateway_name, exc)
            raise GatewayRefused(
                f"the gateway refused the payment: {exc}",
                payment=applied.payment if applied else None,
            ) from None
        payment = await self._record_start(payment_id, started)
        return payment, started.redirect_url

    async def record_manual(
        self,
        *,
        order_id: str,
        method: str,
        amount: int,
        reference: str | None,
        actor: Actor,
    ) -> Applied:
        """Record a payment taken outside a gateway (cash, card terminal, …): COMPLETED at once.

        404 for an order not of the caller's store (admins see all); 409 ``not_payable`` for a
        CANCELLED or EXPIRED order; 422 for an amount above what is outstanding. The payment's
        row names the method, the reference and who recorded it; its ``payment.status`` event
        and the order's cascade (CONFIRMED once paid covers the amount) are in one transaction.
        """
        if not ORDER_ID.fullmatch(order_id):
            raise NotFound("no such order")
        now = self.clock()
        async with self.db.transaction() as session:
            ledger = await Ledger.lock(session, order_id)
            if ledger is None:
                raise NotFound("no such order")
            conn, order = ledger.conn, ledger.order
            principal = actor.principal
            if principal is None or principal.role is Role.CUSTOMER:
                raise NotFound("no such order")
            if not visible_to(order, principal):
                raise NotFound("no such order")
            if order.status in (OrderStatus.CANCELLED.value, OrderStatus.EXPIRED.value):
                raise Conflict(
                    f"an order in {order.status} takes no payment",
                    code="not_payable",
                    status=order.status,
                )
            # Under the order lock: no other payment of this order can complete meanwhile.
            sums = (await money.load_sums(conn, [order_id])).get(order_id, money.Sums())
            outstanding = max(order.amount - sums.paid, 0)
            if amount > outstanding:
                raise Invalid(
                    f"amount {amount} is more than the {outstanding} outstanding",
                    field="amount",
                    outstanding=outstanding,
                )
            payment_id = new_payment_id()
            await conn.execute(
                insert(payments_table),
                {
                    "id": payment_id,
                    "order_id": order_id,
                    "gateway": MANUAL_GATEWAY,
                    "gateway_ref": payment_id,
                    "amount": amount,
                    "currency": order.currency,
                    "status": P.COMPLETED.value,
                    "attempts": 0,
                    "created_at": now,
                    "started_at": now,
                    "settled_at": now,
                    "next_check_at": None,
                    "check_failures": 0,
                    "gateway_transaction_id": reference,
                    "last_gateway_response": {
                        "manual": True,
                        "method": method,
                        "reference": reference,
                        "recorded_by": actor.name,
                    },
                },
            )
            new_row = (await conn.execute(_PAYMENT_BY_ID, {"payment_id": payment_id})).one()
            view = payment_view(new_row)
            paid = sums.paid + amount
            order_status = OrderStatus(order.status)
            ledger.change(
                now,
                payment_status=P.COMPLETED.value if paid >= order.amount else order.payment_status,
            )
            await ledger.append(
                kind=PAYMENT_STATUS,
                from_status=None,
                to_status=P.COMPLETED.value,
                actor=actor,
                note=f"{method} payment of {amount} recorded by {actor.name}"
                + (f" (reference {reference})" if reference else ""),
                extra={"payment": view},
            )
            await ledger.cascade(
                order_status,
                P.COMPLETED,
                payment_id=payment_id,
                actor=actor,
                policy=self.policy,
                now=now,
            )
            await ledger.save()
            await receipts.after_payment(ledger, actor=actor, tax_rate_bp=self.receipt_tax_rate_bp)
            snapshot = await ledger.snapshot()
        self.metrics.events_written.labels(kind=PAYMENT_STATUS, source=actor.source).inc()
        await ledger.publish(self.publisher)
        logger.info(
            "manual %s payment %s of %d for order %s recorded by %s",
            method,
            payment_id,
            amount,
            order_id,
            actor.name,
        )
        return Applied(payment=view, order=snapshot, decision=None, changed=True)

    async def _record_start(self, payment_id: str, started: PaymentStart) -> dict[str, Any]:
        async with self.db.transaction() as session:
            conn = await session.connection()
            await conn.execute(
                update(payments_table)
                .where(payments_table.c.id == payment_id, payments_table.c.started_at.is_(None))
                .values(
                    gateway_ref=started.ref,
                    redirect_url=started.redirect_url,
                    started_at=self.clock(),
                    last_error=None,
                    last_gateway_response=dict(started.raw),
                )
            )
            row = (await conn.execute(_PAYMENT_BY_ID, {"payment_id": payment_id})).one()
        return payment_view(row)

    async def _reject_start(
        self, payment_id: str, gateway_name: str, exc: GatewayRejected
    ) -> Applied | None:
        logger.warning("gateway %s rejected payment %s at start: %s", gateway_name, payment_id, exc)
        state = PaymentState(
            status=Observed.FAILED,
            ref=payment_id,
            gateway_status=f"rejected:{exc.code or exc.status_code}",
            raw={"error": str(exc), "code": exc.code, "status_code": exc.status_code},
        )
        return await self.apply(
            payment_id=payment_id,
            state=state,
            evidence=Evidence.STATUS_API,
            actor=Actor.system("system", f"gateway:{gateway_name}"),
            checked=True,
        )

    # -- apply ---------------------------------------------------------------------------------

    async def apply(
        self,
        *,
        payment_id: str,
        state: PaymentState,
        evidence: Evidence,
        actor: Actor,
        checked: bool = False,
        final: bool = False,
        receipt: Receipt | None = None,
    ) -> Applied | None:
        """Apply one observation of the gateway to a payment, in one transaction; None: no such
        payment. ``checked``: it came from our status call (bookkeeping and rescheduling);
        ``final``: the last check before expiry — still pending means EXPIRED.
        """
        started = time.perf_counter()
        now = self.clock()
        refund_requested = False
        refused: str | None = None
        async with self.db.transaction() as session:
            conn = await session.connection()
            receipt_id = None
            if receipt is not None:
                receipt_id = await insert_receipt(
                    conn,
                    postgres=self.db.is_postgres,
                    receipt=receipt,
                    payment_id=payment_id,
                    outcome="received",
                    now=now,
                )
                if receipt_id is None:
                    self.metrics.payment_decisions.labels(
                        verdict="duplicate", source=actor.source
                    ).inc()
                    return Applied({}, {}, None, changed=False, duplicate=True)
            peek = (await conn.execute(_PAYMENT_BY_ID, {"payment_id": payment_id})).first()
            if peek is None:
                return None
            # Fixed lock order: the order, then its payment.
            ledger = await Ledger.lock(session, peek.order_id)
            assert ledger is not None  # a payment's order is never deleted
            payment = await ledger.lock_payment(payment_id)
            current = P(payment.status)
            decision = decide_payment(current, state.status, evidence)
            if final and current in LIVE and not (decision.changes and decision.to not in LIVE):
                decision = Decision(
                    Verdict.APPLY, P.EXPIRED, f"still {state.status.value} at the last check"
                )
            if decision.changes and decision.to is not P.EXPIRED:
                refused = amount_mismatch(
                    expected_amount=payment.amount,
                    expected_currency=payment.currency,
                    observed_amount=state.amount,
                    observed_currency=state.currency,
                )
            payment_values: dict[str, Any] = {}
            if checked:
                payment_values.update(
                    last_checked_at=now,
                    attempts=payment.attempts + 1,
                    check_failures=0,
                    check_lease_until=None,
                    last_error=None,
                )
            if state.raw:
                payment_values["last_gateway_response"] = dict(state.raw)
            new_status = current
            if refused is not None:
                logger.error(
                    "payment %s: gateway says %s but %s; refused, order %s flagged for review",
                    payment_id,
                    state.status.value,
                    refused,
                    ledger.order.id,
                )
                ledger.change(now, needs_review=True)
                await ledger.save()
                verdict = "refused"
            elif decision.changes:
                assert decision.to is not None
                new_status = decision.to
                payment_values["status"] = new_status.value
                if new_status not in LIVE:
                    payment_values["settled_at"] = now
                if state.gateway_transaction_id:
                    payment_values["gateway_transaction_id"] = state.gateway_transaction_id
                verdict = decision.verdict.value
            else:
                verdict = decision.verdict.value
            next_check = self._next_check(payment, new_status, checked=checked, now=now)
            if next_check is not _KEEP:
                payment_values["next_check_at"] = next_check
            if payment_values:
                await conn.execute(
                    update(payments_table)
                    .where(payments_table.c.id == payment_id)
                    .values(**payment_values)
                )
            after = (await conn.execute(_PAYMENT_BY_ID, {"payment_id": payment_id})).one()
            view = payment_view(after)
            if refused is None and decision.changes:
                order_status = OrderStatus(ledger.order.status)
                late = decision.verdict is Verdict.LATE_SUCCESS
                ledger.change(
                    now,
                    payment_status=new_status.value,
                    needs_review=ledger.order.needs_review or late,
                )
                await ledger.append(
                    kind=PAYMENT_STATUS,
                    from_status=current.value,
                    to_status=new_status.value,
                    actor=actor,
                    note=decision.reason,
                    extra={"payment": view},
                )
                if late:
                    refund_requested = await self._refund_late_success(ledger, after, now)
                await ledger.cascade(
                    order_status,
                    new_status,
                    payment_id=payment_id,
                    actor=actor,
                    policy=self.policy,
                    now=now,
                )
                await ledger.save()
                if new_status is P.COMPLETED:
                    await receipts.after_payment(
                        ledger, actor=actor, tax_rate_bp=self.receipt_tax_rate_bp
                    )
            else:
                await ledger.observe(
                    kind=PAYMENT_OBSERVATION,
                    from_status=current.value,
                    to_status=state.status.value,
                    actor=actor,
                    now=now,
                    data={
                        "payment_id": payment_id,
                        "verdict": verdict,
                        "reason": refused or decision.reason,
                        "evidence": evidence.name.lower(),
                        "gateway_status": state.gateway_status,
                    },
                )
            if receipt_id is not None:
                await set_receipt_outcome(conn, receipt_id, verdict)
            # As the rows stand at this commit (a late success's refund request included).
            snapshot = await ledger.snapshot()
        self.metrics.write_seconds.observe(time.perf_counter() - started)
        self.metrics.payment_decisions.labels(verdict=verdict, source=actor.source).inc()
        logger.info(
            "payment %s: %s says %s (%s) -> %s: %s",
            payment_id,
            actor.source,
            state.status.value,
            evidence.name.lower(),
            verdict,
            refused or decision.reason,
        )
        if ledger.deliveries:
            self.metrics.events_written.labels(kind=PAYMENT_STATUS, source=actor.source).inc()
            await ledger.publish(self.publisher)
        return Applied(
            payment=view,
            order=snapshot,
            decision=decision,
            changed=refused is None and decision.changes,
            refused=refused,
            refund_requested=refund_requested,
        )

    def _next_check(
        self, payment: Any, status: PaymentStatus, *, checked: bool, now: datetime
    ) -> datetime | None | object:
        """When to ask again: by the schedule after a check, the tail once EXPIRED, else never."""
        if status in LIVE:
            if not checked:
                return _KEEP
            schedule = self.schedule(payment.gateway)
            elapsed = (now - payment.created_at).total_seconds()
            step = schedule.next_check(elapsed, first=payment.first_check)
            return None if step is None else payment.created_at + timedelta(seconds=step[0])
        if status is P.EXPIRED:
            schedule = self.schedule(payment.gateway)
            elapsed = max((now - payment.created_at).total_seconds(), schedule.timeout)
            step = schedule.next_check(elapsed, first=payment.first_check)
            return None if step is None else payment.created_at + timedelta(seconds=step[0])
        return None

    async def _refund_late_success(self, ledger: Ledger, payment: Any, now: datetime) -> bool:
        """Money that arrived late: the whole payment back if the order is over, else what it
        paid beyond the order's amount (an over-payment of a split order). The order is
        flagged for review either way; True if a refund was recorded now."""
        paid = sum(p.amount for p in await ledger.payments() if p.status in PAID)
        excess = late_success_refund(
            OrderStatus(ledger.order.status),
            amount=ledger.order.amount,
            paid=paid,
            payment=payment.amount,
        )
        if excess <= 0:
            return False
        logger.warning(
            "late success of payment %s (order %s in %s): flagged for review, %d to refund",
            payment.id,
            ledger.order.id,
            ledger.order.status,
            excess,
        )
        return await self._request_refund(ledger.conn, payment, excess, now)

    async def _request_refund(self, conn: Any, payment: Any, amount: int, now: datetime) -> bool:
        """Record one refund request for a late success (idempotent by its key); the
        reconciler sends it (it is due at once)."""
        refund_id = "ref_" + secrets.token_hex(12)
        dialect = postgresql if self.db.is_postgres else sqlite
        result = await conn.execute(
            dialect.insert(refunds_table).on_conflict_do_nothing().returning(refunds_table.c.id),
            {
                "id": refund_id,
                "order_id": payment.order_id,
                "payment_id": payment.id,
                "amount": amount,
                "currency": payment.currency,
                "status": "REQUESTED",
                "reason": "late_success",
                "idempotency_key": f"late_success:{payment.id}",
                "created_at": now,
                "updated_at": now,
                "next_check_at": now,
            },
        )
        return result.scalar() is not None

    # -- expiry --------------------------------------------------------------------------------

    async def expire_order(self, order_id: str, *, actor: Actor) -> bool:
        """Expire an unpaid order past its ``expires_at``: never one with a live or paid payment.

        True if it expired. The caller made the last status check first (``check(final=True)``);
        a payment still live after it (the gateway could not answer) keeps the order open.
        """
        now = self.clock()
        async with self.db.transaction() as session:
            ledger = await Ledger.lock(session, order_id)
            if ledger is None:
                return False
            order = ledger.order
            if (
                order.status != OrderStatus.PENDING_PAYMENT.value
                or order.expires_at is None
                or order.expires_at > now
            ):
                return False
            if any(p.status in LIVE or p.status in PAID for p in await ledger.payments()):
                return False
            ledger.change(now, status=OrderStatus.EXPIRED.value)
            await ledger.save()
            await ledger.append(
                kind=ORDER_STATUS,
                from_status=OrderStatus.PENDING_PAYMENT.value,
                to_status=OrderStatus.EXPIRED.value,
                actor=actor,
                note="not paid before it expired",
            )
        self.metrics.events_written.labels(kind=ORDER_STATUS, source=actor.source).inc()
        self.metrics.orders_expired.inc()
        await ledger.publish(self.publisher)
        logger.info("order %s expired unpaid", order_id)
        return True

    # -- webhooks ------------------------------------------------------------------------------

    async def receive_webhook(self, event: WebhookEvent) -> str:
        """Apply a verified webhook once; the outcome recorded on its receipt (and returned)."""
        receipt = Receipt(event.gateway, event.event_id, event.raw)
        actor = Actor.system("webhook", f"gateway:{event.gateway}")
        payment_id = await self._payment_for(event)
        if event.state is None or payment_id is None:
            outcome = "unknown_payment" if event.state is not None else "ignored"
            if not await self._record_receipt(receipt, payment_id, outcome):
                return "duplicate"
            logger.info(
                "webhook %s/%s (%s): %s", event.gateway, event.event_id, event.event_type, outcome
            )
            return outcome
        if not event.trusted:
            # A hint: recorded once, then the status API says what is true.
            if not await self._record_receipt(receipt, payment_id, "hint"):
                return "duplicate"
            result = await self.check(payment_id, actor=actor, confirm=True)
            return f"confirmed:{result.outcome}"
        applied = await self.apply(
            payment_id=payment_id,
            state=event.state,
            evidence=Evidence.SIGNED,
            actor=actor,
            receipt=receipt,
        )
        if applied is None:
            return "unknown_payment"
        if applied.duplicate:
            return "duplicate"
        assert applied.decision is not None
        if applied.decision.verdict is Verdict.CONFIRM:
            result = await self.check(payment_id, actor=actor, confirm=True)
            return f"confirmed:{result.outcome}"
        return "refused" if applied.refused else applied.decision.verdict.value

    async def _payment_for(self, event: WebhookEvent) -> str | None:
        """Our payment a webhook is about: by the gateway's ref, else by our own reference."""
        candidates = [event.payment_reference] if event.payment_reference else []
        async with self.db.read() as session:
            conn = await session.connection()
            if event.ref:
                found = (
                    await conn.execute(
                        select(payments_table.c.id).where(
                            payments_table.c.gateway == event.gateway,
                            payments_table.c.gateway_ref == event.ref,
                        )
                    )
                ).scalar()
                if found is not None:
                    return str(found)
            for candidate in candidates:
                found = (
                    await conn.execute(
                        select(payments_table.c.id).where(
                            payments_table.c.gateway == event.gateway,
                            payments_table.c.id == candidate,
                        )
                    )
                ).scalar()
                if found is not None:
                    return str(found)
        return None

    async def _record_receipt(self, receipt: Receipt, payment_id: str | None, outcome: str) -> bool:
        """Record a webhook that changes nothing by itself; False if it was already recorded."""
        async with self.db.transaction() as session:
            inserted = await insert_receipt(
                await session.connection(),
                postgres=self.db.is_postgres,
                receipt=receipt,
                payment_id=payment_id,
                outcome=outcome,
                now=self.clock(),
            )
        return inserted is not None

    # -- check (single flight) -----------------------------------------------------------------

    async def check(
        self,
        payment_id: str,
        *,
        actor: Actor,
        final: bool = False,
        reuse_within: float = 0.0,
        wait_for_rate: bool = True,
        patience: float | None = None,
        claimed: bool = False,
        confirm: bool = False,
    ) -> CheckResult:
        """Ask the gateway where ``payment_id`` stands and apply the answer, once at a time.

        Concurrent callers in this process share one gateway call; ``patience`` bounds only the
        caller's wait (the check itself goes on and lands for everyone else).
        """
        task = self._inflight.get(payment_id)
        shared = task is not None
        if task is None:
            task = asyncio.create_task(
                self._check(
                    payment_id,
                    actor=actor,
                    final=final,
                    reuse_within=reuse_within,
                    wait_for_rate=wait_for_rate,
                    claimed=claimed,
                    confirm=confirm,
                ),
                name=f"check-{payment_id}",
            )
            self._inflight[payment_id] = task
            task.add_done_callback(lambda _t: self._inflight.pop(payment_id, None))
        if shared:
            self.metrics.payment_checks_shared.inc()
        if patience is None:
            result = await asyncio.shield(task)
        else:
            result = await asyncio.wait_for(asyncio.shield(task), patience)
        return dataclasses.replace(result, asked=result.asked and not shared)

    async def _check(
        self,
        payment_id: str,
        *,
        actor: Actor,
        final: bool,
        reuse_within: float,
        wait_for_rate: bool,
        claimed: bool,
        confirm: bool,
    ) -> CheckResult:
        now = self.clock()
        async with self.db.transaction() as session:
            conn = await session.connection()
            row = (await conn.execute(_PAYMENT_BY_ID, {"payment_id": payment_id})).first()
            if row is None:
                return CheckResult(None, asked=False, outcome="missing")
            status = P(row.status)
            skip = None
            # Settled payments are not polled; a webhook claiming a late success of a FAILED or
            # CANCELLED one (``confirm``) is checked with the status API all the same.
            if (
                status not in LIVE
                and status is not P.EXPIRED
                and not (confirm and status in UNSUCCESSFUL)
            ):
                skip = "settled"
            elif (
                reuse_within > 0
                and row.last_checked_at is not None
                and (now - row.last_checked_at).total_seconds() < reuse_within
            ):
                skip = "recent"
            if skip is not None:
                if claimed:
                    await conn.execute(_RELEASE, {"payment_id": payment_id})
                return CheckResult(payment_view(row), asked=False, outcome=skip)
            if claimed:
                # The reconciler's claim already holds the lease for this check.
                pass
            elif (
                await conn.execute(
                    update(payments_table)
                    .where(
                        payments_table.c.id == payment_id,
                        (payments_table.c.check_lease_until.is_(None))
                        | (payments_table.c.check_lease_until < now),
                    )
                    .values(check_lease_until=now + timedelta(seconds=self.lease))
                )
            ).rowcount == 0:
                return CheckResult(payment_view(row), asked=False, outcome="leased")
        gateway = self.gateways.get(row.gateway)
        if gateway is None:
            # Not offered in this process (no credentials here): back off, do not spin on it.
            view = await self._record_unavailable(
                payment_id, row.gateway, f"gateway {row.gateway} is not configured here", None
            )
            return CheckResult(view, asked=False, outcome="no_gateway")
        if self.limiter is not None and not await self.limiter.acquire(
            row.gateway, wait=wait_for_rate
        ):
            await self._release(payment_id)
            return CheckResult(payment_view(row), asked=False, outcome="rate_limited")
        schedule = self.schedule(row.gateway)
        elapsed = (now - row.created_at).total_seconds()
        is_final = final or (status in LIVE and elapsed >= schedule.timeout)
        await self.hooks.before_gateway_check(payment_id)
        try:
            if row.started_at is None:
                started = await gateway.start_payment(
                    PaymentRequest(
                        reference=row.id,
                        amount=row.amount,
                        currency=row.currency,
                        metadata={"order_id": row.order_id, "payment_id": row.id},
                    )
                )
                await self._record_start(payment_id, started)
                state = started.state
            else:
                state = await gateway.fetch_status(row.gateway_ref)
        except GatewayUnavailable as exc:
            self.metrics.payment_checks.labels(gateway=row.gateway, outcome="unavailable").inc()
            view = await self._record_unavailable(
                payment_id, row.gateway, str(exc), exc.retry_after
            )
            return CheckResult(view, asked=True, outcome="unavailable")
        except GatewayRejected as exc:
            if row.started_at is None:
                applied = await self._reject_start(payment_id, row.gateway, exc)
                self.metrics.payment_checks.labels(gateway=row.gateway, outcome="rejected").inc()
                return CheckResult(
                    applied.payment if applied else None,
                    asked=True,
                    changed=bool(applied and applied.changed),
                    outcome="rejected",
                    applied=applied,
                )
            # A 4xx on a status call (not found, bad credentials) says nothing about the money.
            self.metrics.payment_checks.labels(gateway=row.gateway, outcome="rejected").inc()
            view = await self._record_unavailable(payment_id, row.gateway, str(exc), None)
            return CheckResult(view, asked=True, outcome="rejected")
        self.metrics.payment_checks.labels(
            gateway=row.gateway, outcome=state.status.value.lower()
        ).inc()
        applied = await self.apply(
            payment_id=payment_id,
            state=state,
            evidence=Evidence.STATUS_API,
            actor=actor,
            checked=True,
            final=is_final,
        )
        if applied is None:
            return CheckResult(None, asked=True, outcome="missing")
        return CheckResult(
            applied.payment,
            asked=True,
            changed=applied.changed,
            outcome=state.status.value.lower(),
            applied=applied,
        )

    async def _release(self, payment_id: str) -> None:
        async with self.db.transaction() as session:
            await session.execute(_RELEASE, {"payment_id": payment_id})

    async def _record_unavailable(
        self, payment_id: str, gateway: str, error: str, retry_after: float | None
    ) -> dict[str, Any] | None:
        """The gateway could not answer: never a verdict; ask again after a backoff."""
        now = self.clock()
        async with self.db.transaction() as session:
            conn = await session.connection()
            row = (await conn.execute(_PAYMENT_BY_ID, {"payment_id": payment_id})).first()
            if row is None:
                return None
            failures = row.check_failures + 1
            wait = wait_after_unavailable(retry_after, failures, jitter=self.jitter())
            values: dict[str, Any] = {
                "check_failures": failures,
                "last_error": error[:500],
                "check_lease_until": None,
            }
            if row.status in LIVE or row.status == P.EXPIRED.value:
                values["next_check_at"] = now + timedelta(seconds=wait)
            await conn.execute(
                update(payments_table).where(payments_table.c.id == payment_id).values(**values)
            )
            after = (await conn.execute(_PAYMENT_BY_ID, {"payment_id": payment_id})).one()
        self.metrics.payment_backoffs.labels(
            gateway=gateway, reason="retry_after" if retry_after is not None else "backoff"
        ).inc()
        logger.warning(
            "payment %s: %s could not answer (%s); next check in %.1fs",
            payment_id,
            gateway,
            error,
            wait,
        )
        return payment_view(after)


class RateLimiterLike(Protocol):
    """What the settlement needs of a rate limiter (server/ratelimit.py implements it)."""

    async def acquire(self, gateway: str, *, wait: bool) -> bool:
        """Take one call's worth of ``gateway``'s budget; False if ``wait`` is off and none."""
        ...


_KEEP = object()

_RELEASE = (
    update(payments_table)
    .where(payments_table.c.id == bindparam("payment_id"))
    .values(check_lease_until=None)
)
