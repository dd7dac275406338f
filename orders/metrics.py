"""Every Prometheus metric, defined once with its help text, on a registry per app."""

from __future__ import annotations

import gc
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    """The service's metrics; one instance per app so tests can build many apps."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.http_requests = Counter(
            "http_requests_total",
            "HTTP requests by route and status",
            ["route", "status"],
            registry=r,
        )
        self.events_written = Counter(
            "events_written_total", "Events committed to the log", ["kind", "source"], registry=r
        )
        self.events_published = Counter(
            "events_published_total", "Stream deliveries published to the broker", registry=r
        )
        self.publish_failures = Counter(
            "publish_failures_total",
            "Publishes that failed after commit (left to the relay)",
            registry=r,
        )
        self.publish_queue_overflow = Counter(
            "publish_queue_overflow_total",
            "Events left to the relay because the publish queue was full",
            registry=r,
        )
        self.publish_queue_depth = Gauge(
            "publish_queue_depth", "Events waiting in the publish queue", registry=r
        )
        self.rejected_transitions = Counter(
            "rejected_transitions_total", "Status changes refused by the workflow (409)", registry=r
        )
        self.write_seconds = Histogram(
            "write_seconds",
            "Time to commit one status change",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            registry=r,
        )
        self.group_commit_batch = Histogram(
            "group_commit_batch_size",
            "Status changes applied in one transaction (one COMMIT)",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=r,
        )
        self.group_commit_queued = Gauge(
            "group_commit_queued", "Status changes waiting for their batch", registry=r
        )
        self.group_commit_overflow = Counter(
            "group_commit_overflow_total",
            "Status changes refused (503 write_queue_full) because their store's queue was full",
            registry=r,
        )
        self.relayed_events = Counter(
            "relay_events_total", "Events published by the outbox relay", registry=r
        )
        self.relay_parked_events = Counter(
            "relay_parked_events_total",
            "Events the relay gave up publishing after repeated failures (left to gap repair)",
            registry=r,
        )
        self.ws_connections = Gauge("ws_connections", "Open WebSocket connections", registry=r)
        self.ws_messages_sent = Counter(
            "ws_messages_sent_total", "Event messages sent to WebSocket clients", registry=r
        )
        self.ws_closes = Counter(
            "ws_closes_total",
            "WebSocket connections closed by the server, by code",
            ["code"],
            registry=r,
        )
        self.ws_slow_consumer_closes = Counter(
            "ws_slow_consumer_closes_total", "Clients closed with 4408 (queue overflow)", registry=r
        )
        self.ws_duplicates_dropped = Counter(
            "ws_duplicates_dropped_total",
            "Events dropped because the client already had them",
            registry=r,
        )
        self.ws_backfills = Counter(
            "ws_backfills_total", "Gap repairs read from the database", ["reason"], registry=r
        )
        self.ws_backfilled_events = Counter(
            "ws_backfilled_events_total",
            "Events delivered from the database by gap repair",
            registry=r,
        )
        self.ws_unfillable_gaps = Counter(
            "ws_unfillable_gaps_total",
            "Gaps the log could not fill (pruned, reset, restored), by cause and outcome"
            " (reset: a fresh snapshot was sent; close: the socket was closed)",
            ["cause", "outcome"],
            registry=r,
        )
        self.hub_polls = Counter(
            "hub_polls_total", "Head polls of connected streams (broker not delivering)", registry=r
        )
        self.broker_delivering = Gauge(
            "broker_delivering", "1 if a heartbeat went through the broker recently", registry=r
        )
        self.longpoll_requests = Counter(
            "longpoll_requests_total", "GET /api/events calls", registry=r
        )
        self.gc_pause_seconds = Histogram(
            "python_gc_pause_seconds",
            "Stop-the-world garbage-collector pauses, by generation",
            ["generation"],
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
            registry=r,
        )
        self.gc_pause_max = Gauge(
            "python_gc_pause_max_seconds", "Longest garbage-collector pause seen", registry=r
        )
        self.payment_checks = Counter(
            "payment_checks_total",
            "Status calls to a gateway, by gateway and outcome (a status, unavailable, rejected)",
            ["gateway", "outcome"],
            registry=r,
        )
        self.payment_checks_shared = Counter(
            "payment_checks_shared_total",
            "Checks that joined one already in flight for the same payment (single flight)",
            registry=r,
        )
        self.payment_decisions = Counter(
            "payment_decisions_total",
            "Gateway observations applied, by verdict (apply, same, stale, ...) and source",
            ["verdict", "source"],
            registry=r,
        )
        self.payment_backoffs = Counter(
            "payment_backoffs_total",
            "Checks put off because the gateway could not answer, by gateway and reason",
            ["gateway", "reason"],
            registry=r,
        )
        self.rate_limit_waits = Counter(
            "payment_rate_limit_waits_total",
            "Times a check waited for (or gave up on) its gateway's shared rate limit",
            ["gateway"],
            registry=r,
        )
        self.payments_due = Gauge(
            "payments_due", "Payments whose next check is due now (reconciler backlog)", registry=r
        )
        self.oldest_unsettled = Gauge(
            "payments_oldest_unsettled_seconds",
            "Age of the oldest payment still INITIATED or PENDING",
            registry=r,
        )
        self.orders_expired = Counter(
            "orders_expired_total", "Unpaid orders expired by the reconciler", registry=r
        )
        self.webhooks = Counter(
            "webhooks_total",
            "Webhooks received, by gateway and outcome (a verdict, duplicate, bad_signature, ...)",
            ["gateway", "outcome"],
            registry=r,
        )
        self._gc_started = 0.0
        self._max_pause = 0.0

    def watch_gc(self) -> None:
        """Time every collection (a pause of the event loop) into gc_pause_seconds."""
        if self._on_gc not in gc.callbacks:
            gc.callbacks.append(self._on_gc)

    def unwatch_gc(self) -> None:
        """Stop timing collections."""
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
            return
        pause = time.perf_counter() - self._gc_started
        self.gc_pause_seconds.labels(generation=str(info.get("generation", "?"))).observe(pause)
        if pause > self._max_pause:
            self._max_pause = pause
            self.gc_pause_max.set(pause)
