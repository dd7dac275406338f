"""GET /api/events?since=&wait= — the caller's stream over REST, with long-polling."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from channels import Message
from server import protocol
from server.api.common import principal, query_int
from server.errors import BadRequest
from server.services import Services, services
from server.streams import StreamHead, ensure_stream, events_after, read_head, resume_problem

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


async def stream_events(request: Request) -> JSONResponse:
    """
    summary: The caller's stream after SEQ (the REST fallback of /ws), long-polling up to WAIT s
    tags: [events]
    security: [{bearer: []}]
    parameters:
      - {name: since, in: query, schema: {type: integer, minimum: 0}}
      - {name: epoch, in: query, schema: {type: string}}
      - {name: wait, in: query, schema: {type: integer, minimum: 0, maximum: 30}}
      - {name: last_event_id, in: query, schema: {type: integer, minimum: 1}}
      - {name: snapshot, in: query, schema: {type: boolean}}
    responses:
      200:
        description: "{stream, epoch, head_seq, events, more}; SEQ gone (or last_event_id is not
          the event at SEQ): {reset: true, orders, head_event_id, truncated?, next_cursor?};
          snapshot=true: the same snapshot with {snapshot: true}, to go live from"
      400: {description: Bad since, wait, last_event_id or snapshot}
      401: {description: Unauthenticated}
    """
    caller = principal(request)
    svc = services(request)
    svc.metrics.longpoll_requests.inc()
    since = query_int(request, "since", 0, lo=0, hi=2**62)
    wait = query_int(request, "wait", 0, lo=0, hi=int(svc.settings.longpoll_max_wait))
    epoch = request.query_params.get("epoch") or None
    last_event_id = query_int(request, "last_event_id", 0, lo=1, hi=2**62) or None
    stream = caller.stream
    snapshot = request.query_params.get("snapshot") or "false"
    if snapshot not in ("true", "false"):
        raise BadRequest("snapshot must be true or false", code="invalid_query")
    if snapshot == "true":
        return await _reset(svc, stream, key="snapshot")
    head, events = await _read(svc, stream, since)
    if await resume_problem(svc.db, head, epoch, since, last_event_id) is not None:
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


async def _reset(svc: Services, stream: str, *, key: str = "reset") -> JSONResponse:
    # The same snapshot /ws sends in its hello and reset messages.
    snapshot = await svc.hub.snapshot(stream)
    return JSONResponse({"stream": stream, **snapshot.fields(), "events": [], key: True})


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
