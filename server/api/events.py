"""GET /api/events?since=&wait= — the caller's stream over REST, with long-polling."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from orders.streams import StreamHead, ensure_stream, events_after, read_head, resume_problem
from server import protocol
from server.api import schemas
from server.api.common import principal, query
from server.api.contract import operation
from server.errors import error_response
from server.services import Services, services

PAGE = 500


async def _read(svc: Services, stream: str, since: int) -> tuple[StreamHead, list[dict[str, Any]]]:
    # One snapshot for both reads: read apart (READ COMMITTED on PostgreSQL), a write
    # committed in between would return events above the head_seq we answer with.
    async with svc.db.snapshot() as session, session.begin():
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
    responses={
        200: (
            "Events, a reset with a fresh snapshot, or the snapshot asked for",
            schemas.EventsPage,
        ),
        429: "Too many long-polls for this user (LONGPOLL_MAX_PER_USER); Retry-After",
    },
)
async def stream_events(request: Request) -> Response:
    """The caller's stream after ``since`` (the REST fallback of /ws), long-polling ``wait`` s."""
    caller = principal(request)
    svc = services(request)
    svc.metrics.longpoll_requests.inc()
    params = query(request, schemas.events_query(int(svc.settings.longpoll_max_wait)))
    if params.snapshot:
        return await _reset(svc, caller.stream, key="snapshot")
    if params.wait == 0:
        return await _answer(svc, caller.stream, params, 0)
    active = _longpolls(request)
    user = f"{caller.role.value}:{caller.sub}"
    if active[user] >= svc.settings.longpoll_max_per_user:
        return error_response(
            429,
            "too_many_longpolls",
            f"at most {svc.settings.longpoll_max_per_user} long-polls at once per user",
            headers={"Retry-After": "1"},
        )
    active[user] += 1
    try:
        return await _answer(svc, caller.stream, params, params.wait)
    finally:
        active[user] -= 1
        if not active[user]:
            del active[user]


def _longpolls(request: Request) -> Counter[str]:
    """This app's long-polls in flight, per user."""
    state = request.app.state
    if not hasattr(state, "longpolls"):
        state.longpolls = Counter()
    active: Counter[str] = state.longpolls
    return active


async def _answer(
    svc: Services, stream: str, params: schemas.EventsQuery, wait: int
) -> JSONResponse:
    since = params.since

    async def gone(head: StreamHead) -> bool:
        problem = await resume_problem(svc.db, head, params.epoch, since, params.last_event_id)
        return problem is not None

    head, events = await _read(svc, stream, since)
    if await gone(head):
        return await _reset(svc, stream)
    if not events and wait > 0:
        deadline = time.monotonic() + wait
        channel = svc.publisher.channel(stream)
        # Subscribe before re-reading, so an event committed in between wakes us.
        async with svc.broker.subscribe(channel, maxsize=16) as sub:
            while True:
                head, events = await _read(svc, stream, since)
                # The log may have been reset, restored or pruned past us while we waited.
                if await gone(head):
                    return await _reset(svc, stream)
                remaining = deadline - time.monotonic()
                if events or remaining <= 0:
                    break
                # While the broker is not delivering, re-read the database every poll interval.
                step = (
                    remaining
                    if svc.heartbeat.delivering
                    else min(remaining, svc.settings.hub_poll_interval)
                )
                # Any message wakes a re-read: even one at or below ``since`` (a reset log
                # reusing seqs) must reach the position check above.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(step):
                        await sub.get()
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
