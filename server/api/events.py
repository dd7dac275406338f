"""GET /api/events?since=&wait= — the caller's stream over REST, with long-polling."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from channels import Message
from server import protocol
from server.api import schemas
from server.api.common import principal, query
from server.api.contract import operation
from server.services import Services, services
from server.streams import StreamHead, ensure_stream, events_after, read_head

PAGE = 500


async def _read(svc: Services, stream: str, since: int) -> tuple[StreamHead, list[dict[str, Any]]]:
    async with svc.db.read() as session:
        head = await read_head(session, stream)
        if head is not None:
            rows = await events_after(session, stream, since, limit=PAGE)
    if head is None:
        # Like /ws: give a fresh stream its epoch now, so a client can hold a position on it.
        async with svc.db.transaction() as session:
            head = await ensure_stream(session, stream)
        return head, []
    return head, [protocol.event_payload(stream, seq, event) for seq, event in rows]


@operation(
    "The caller's stream after SEQ (the REST fallback of /ws), long-polling up to WAIT s",
    tag="events",
    query=lambda settings: schemas.events_query(int(settings.longpoll_max_wait)),
    responses={200: ("Events, or a reset with a fresh snapshot", schemas.EventsPage)},
)
async def stream_events(request: Request) -> JSONResponse:
    """The caller's stream after ``since`` (the REST fallback of /ws), long-polling ``wait`` s."""
    caller = principal(request)
    svc = services(request)
    svc.metrics.longpoll_requests.inc()
    params = query(request, schemas.events_query(int(svc.settings.longpoll_max_wait)))
    since, wait, epoch = params.since, params.wait, params.epoch
    stream = caller.stream
    head, events = await _read(svc, stream, since)
    if (epoch and epoch != head.epoch) or not head.pruned_seq <= since <= head.head_seq:
        return await _reset(svc, stream)
    if not events and wait > 0:
        head, events = await _wait_for_events(svc, stream, since, wait)
    return JSONResponse(
        {
            "stream": stream,
            "epoch": head.epoch,
            "head_seq": head.head_seq,
            "events": events,
            "more": len(events) == PAGE,
        }
    )


async def _reset(svc: Services, stream: str) -> JSONResponse:
    # The same snapshot /ws sends in its reset message.
    head, snapshot = await svc.hub.snapshot(stream)
    return JSONResponse(
        {
            "stream": stream,
            "epoch": head.epoch,
            "head_seq": head.head_seq,
            "events": [],
            "reset": True,
            "orders": snapshot,
        }
    )


async def _wait_for_events(
    svc: Services, stream: str, since: int, wait: int
) -> tuple[StreamHead, list[dict[str, Any]]]:
    deadline = time.monotonic() + wait
    channel = svc.publisher.channel(stream)
    # Subscribe before re-reading, so an event committed in between wakes us.
    async with svc.broker.subscribe(channel, maxsize=16) as sub:
        while True:
            head, events = await _read(svc, stream, since)
            remaining = deadline - time.monotonic()
            if events or remaining <= 0:
                return head, events
            # While the broker is not delivering, re-read the database every poll interval.
            step = (
                remaining
                if svc.heartbeat.delivering
                else min(remaining, svc.settings.hub_poll_interval)
            )
            try:
                async with asyncio.timeout(step):
                    item = await sub.get()
            except TimeoutError:
                continue
            if isinstance(item, Message):
                try:
                    seq, _ = protocol.unpack(item.data)
                except ValueError:
                    continue
                if seq <= since:
                    continue
