"""The hub's database reads of streams, coalesced: one read serves every socket waiting on it.

After a restart thousands of clients connect at once, and a broker reconnect or a poll gaps
every socket together. Reading each socket's head, snapshot or backlog on its own cost one
query (or five) per socket. Here requests queue per stream, and a task per kind of read
drains the queue: it takes every stream waiting (up to a bound), reads them all in one
session, and hands each waiter its share (two such reads at most in flight). A request never
joins a read that has already started — it waits for the next — so every answer was read
*after* its caller asked (the hub subscribes before it asks: nothing committed in between is
missed).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import Any, Generic, TypeVar

from orders.db import Database
from orders.hooks import Hooks
from orders.models import Event
from orders.streams import StreamHead, events_after, read_heads

logger = logging.getLogger(__name__)

K = TypeVar("K")
V = TypeVar("V")

#: Streams per read: a bound on one IN list and on how long one read holds its connection.
BATCH_STREAMS = 500
#: Reads of one kind in flight at once: while one waits on the database the next gathers, and
#: starts without waiting for the first to come back.
IN_FLIGHT = 2
#: Waiters of one stream whose positions lie further apart than this are read separately.
_MAX_SPREAD = 2_000


def _retrieve(future: asyncio.Future[Any]) -> None:
    # Every waiter of a shared future may have gone (its socket closed): mark the error seen.
    if not future.cancelled():
        future.exception()


class Coalescer(Generic[K, V]):
    """One ``load`` in flight at a time for many keys; keys asked for meanwhile share the next."""

    def __init__(self, load: Callable[[list[K]], Awaitable[Mapping[K, V]]], *, batch: int) -> None:
        self._load = load
        self._batch = batch
        self._pending: dict[K, asyncio.Future[V]] = {}
        self._runners: set[asyncio.Task[None]] = set()

    async def get(self, key: K) -> V:
        """The value of ``key`` from a load that starts after this call."""
        future = self._pending.get(key)
        if future is None:
            future = asyncio.get_running_loop().create_future()
            future.add_done_callback(_retrieve)
            self._pending[key] = future
            if len(self._runners) < IN_FLIGHT:
                runner = asyncio.create_task(self._run())
                self._runners.add(runner)
        # Shielded: one caller giving up (its socket closed) must not cancel the others' value.
        return await asyncio.shield(future)

    async def _run(self) -> None:
        taken: dict[K, asyncio.Future[V]] = {}
        try:
            while self._pending:
                # Whoever is ready to run in this loop iteration joins this load.
                await asyncio.sleep(0)
                if not self._pending:
                    break  # another runner took them
                keys = list(islice(self._pending, self._batch))
                taken = {key: self._pending.pop(key) for key in keys}
                try:
                    values = await self._load(keys)
                except Exception as exc:
                    for future in taken.values():
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for key, future in taken.items():
                    if future.done():
                        continue
                    if key in values:
                        future.set_result(values[key])
                    else:
                        future.set_exception(LookupError(f"no value read for {key!r}"))
                taken = {}
        finally:
            # Here, not in a done callback: a request arriving before that callback ran would
            # see no room for a runner while this one no longer runs, and wait forever.
            self._runners.discard(asyncio.current_task())
            # Cancelled (shutdown): nobody will read for these any more.
            for future in taken.values():
                if not future.done():
                    future.cancel()


@dataclass(frozen=True, slots=True)
class LogRead:
    """A stream's head and the next events of its log after one reader's position."""

    head: StreamHead | None
    #: Up to a page of (seq, event) after the position, in seq order (read after the head).
    rows: Sequence[tuple[int, Event]]
    #: The id of the event at the position itself, when asked for (None: none there).
    event_id_at: int | None = None


@dataclass(slots=True)
class _Reader:
    after: int
    check: bool
    future: asyncio.Future[LogRead]


class LogReads:
    """Backlog reads: one head query for every stream waiting, one events query per stream."""

    def __init__(self, db: Database, slots: asyncio.Semaphore, hooks: Hooks, *, page: int) -> None:
        self._db = db
        self._slots = slots
        self._hooks = hooks
        self._page = page
        self._pending: dict[str, list[_Reader]] = {}
        self._runners: set[asyncio.Task[None]] = set()

    async def read(self, stream: str, after: int, *, check: bool = False) -> LogRead:
        """The head of ``stream`` and a page of its events after ``after``, read after this call.

        ``check``: also the id of the event at ``after`` (is the client's last event still
        there?).
        """
        future: asyncio.Future[LogRead] = asyncio.get_running_loop().create_future()
        future.add_done_callback(_retrieve)
        self._pending.setdefault(stream, []).append(_Reader(after, check, future))
        if len(self._runners) < IN_FLIGHT:
            runner = asyncio.create_task(self._run())
            self._runners.add(runner)
        return await asyncio.shield(future)

    async def _run(self) -> None:
        taken: dict[str, list[_Reader]] = {}
        try:
            while self._pending:
                await asyncio.sleep(0)
                if not self._pending:
                    break
                streams = list(islice(self._pending, BATCH_STREAMS))
                taken = {stream: self._pending.pop(stream) for stream in streams}
                try:
                    await self._read(taken)
                except Exception as exc:
                    for readers in taken.values():
                        for reader in readers:
                            if not reader.future.done():
                                reader.future.set_exception(exc)
                taken = {}
        finally:
            self._runners.discard(asyncio.current_task())
            for readers in taken.values():
                for reader in readers:
                    if not reader.future.done():
                        reader.future.cancel()

    async def _read(self, taken: dict[str, list[_Reader]]) -> None:
        page = self._page
        await self._hooks.before_stream_read("log", list(taken))
        async with self._slots, self._db.read() as session:
            # The heads first: the events read after them are at least as new.
            heads = await read_heads(session, taken)
            for stream, readers in taken.items():
                head = heads.get(stream)
                readers.sort(key=lambda reader: reader.after)
                low = readers[0].after
                now = [reader for reader in readers if reader.after - low <= _MAX_SPREAD]
                later = readers[len(now) :]
                if later:  # far apart: the next read, rather than one huge page for all
                    self._pending.setdefault(stream, []).extend(later)
                high = now[-1].after
                rows: Sequence[tuple[int, Event]] = ()
                if head is not None and (low < head.head_seq or any(r.check for r in now)):
                    await self._hooks.before_stream_read("events", [stream])
                    # From ``low`` itself (the event a reader checks), and enough that every
                    # reader gets a full page after its own position.
                    rows = await events_after(session, stream, low - 1, limit=page + high - low + 1)
                for reader in now:
                    mine = [row for row in rows if row[0] > reader.after][:page]
                    at = None
                    if reader.check:
                        at = next((int(e.id) for seq, e in rows if seq == reader.after), None)
                    if not reader.future.done():
                        reader.future.set_result(LogRead(head, mine, at))
