"""Idempotency keys on every ``POST`` under ``/api`` (DESIGN §1.9, Stripe's rules).

A caller may send ``Idempotency-Key: <1..255 printable characters>``. The first request with
a key claims it in a transaction of its own (``INSERT … ON CONFLICT DO NOTHING``: the database
decides who was first, across processes) before its handler runs; its answer is stored with
the key, the caller and a hash of the request for IDEMPOTENCY_TTL. Then:

- same caller, key and request → the stored answer, replayed (``Idempotent-Replayed: true``);
- same caller and key, another request → 422 ``idempotency_key_reused``;
- the first is still running → 409 ``idempotency_in_progress``;
- a 5xx answer is not stored: the key is released, so a retry runs again — except 503
  ``commit_outcome_unknown`` (the COMMIT may have happened): that key is never run again, and a
  retry answers 409 ``idempotency_outcome_unknown`` until it expires (read the resource);
- a key past its TTL counts as new. Expired keys are pruned as claims go by.

Requests without the header, and callers without a valid token (the handler answers 401), pass
straight through.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

import orjson
from sqlalchemy import CursorResult, delete, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as SQLAlchemyTimeoutError
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from orders.db import CommitOutcomeUnknown, Database
from orders.hooks import NO_HOOKS, Hooks
from orders.models import idempotency_keys_table as keys
from orders.models import utcnow
from server.auth import AuthError, Principal, Role, bearer_token

logger = logging.getLogger(__name__)

HEADER = "Idempotency-Key"
REPLAYED = "Idempotent-Replayed"
MAX_KEY_LENGTH = 255
#: Claims prune expired keys at most this often (seconds, per process).
PRUNE_EVERY = 60.0

#: The OpenAPI parameter every ``POST`` under ``/api`` carries.
PARAMETER: dict[str, Any] = {
    "name": HEADER,
    "in": "header",
    "required": False,
    "description": (
        "Makes a retry safe: the first answer is stored with the key for IDEMPOTENCY_TTL (24 h)"
        " and replayed for a repeat of the same request (header Idempotent-Replayed: true);"
        " another request with the key is 422 idempotency_key_reused, a repeat while the first"
        " runs is 409 idempotency_in_progress. Keys are per caller."
    ),
    "schema": {"type": "string", "pattern": "^[ -~]{1,255}$", "maxLength": MAX_KEY_LENGTH},
}

_ANSWERS = {
    "400": "Malformed request (also: a bad Idempotency-Key)",
    "409": "Conflict (also: idempotency_in_progress, idempotency_outcome_unknown)",
    "422": "Validation error (also: idempotency_key_reused)",
}
_ERROR_CONTENT = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}


def document(schema: dict[str, Any]) -> dict[str, Any]:
    """Add the Idempotency-Key parameter and its answers to every POST under /api."""
    for path, operations in schema.get("paths", {}).items():
        post = operations.get("post")
        if not path.startswith("/api/") or post is None:
            continue
        post.setdefault("parameters", []).append(dict(PARAMETER))
        responses = post.setdefault("responses", {})
        for status, description in _ANSWERS.items():
            responses.setdefault(status, {"description": description, "content": _ERROR_CONTENT})
    return schema


def valid_key(raw: bytes) -> str | None:
    """The key if it is 1..255 printable ASCII characters, else None."""
    if not 1 <= len(raw) <= MAX_KEY_LENGTH or not all(0x20 <= b <= 0x7E for b in raw):
        return None
    return raw.decode("ascii")


def caller_id(caller: Principal) -> str:
    """The namespace of a caller's keys: role and sub (and a POS terminal's store)."""
    ident = f"{caller.role.value}:{caller.sub}"
    if caller.role is Role.POS:
        ident += f"@{caller.store_id}"
    if len(ident) > 440:
        ident = "sha256:" + hashlib.sha256(ident.encode()).hexdigest()
    return ident


def request_hash(method: str, path: str, query: bytes, body: bytes) -> str:
    """What makes two requests "the same": method, path, query string and body bytes."""
    digest = hashlib.sha256()
    for part in (method.encode(), path.encode(), query):
        digest.update(len(part).to_bytes(8, "big") + part)
    digest.update(body)
    return digest.hexdigest()


@dataclass(frozen=True, slots=True)
class Stored:
    """A key's row as a claim finds it."""

    request_hash: str
    state: str
    status: int | None
    content_type: str | None
    body: bytes | None
    expires_at: datetime


class KeyStore:
    """The idempotency_keys table: claim, complete, release, mark unknown."""

    def __init__(self, db: Database, ttl: float) -> None:
        self.db = db
        self.ttl = timedelta(seconds=ttl)
        self._pruned_at = 0.0

    async def claim(self, caller: str, key: str, digest: str) -> Stored | None:
        """Claim ``key`` for this request: None if it is ours now, else the row that holds it."""
        now = utcnow()
        row = {
            "caller": caller,
            "key": key,
            "request_hash": digest,
            "state": "running",
            "created_at": now,
            "expires_at": now + self.ttl,
        }
        dialect_insert = pg_insert if self.db.is_postgres else sqlite_insert
        async with self._transaction() as session:
            await self._maybe_prune(session, now)
            inserted = cast(
                CursorResult[Any],
                await session.execute(dialect_insert(keys).values(**row).on_conflict_do_nothing()),
            )
            if inserted.rowcount == 1:
                return None
            # Past its TTL the key is new again; the conditional UPDATE lets one taker win.
            taken = cast(
                CursorResult[Any],
                await session.execute(
                    update(keys)
                    .where(keys.c.caller == caller, keys.c.key == key, keys.c.expires_at <= now)
                    .values(status=None, content_type=None, body=None, **row)
                ),
            )
            if taken.rowcount == 1:
                return None
            found = (
                await session.execute(
                    select(
                        keys.c.request_hash,
                        keys.c.state,
                        keys.c.status,
                        keys.c.content_type,
                        keys.c.body,
                        keys.c.expires_at,
                    ).where(keys.c.caller == caller, keys.c.key == key)
                )
            ).one()
            return Stored(*found)

    async def complete(
        self, caller: str, key: str, status: int, content_type: str | None, body: bytes
    ) -> None:
        """Store the answer to replay."""
        async with self._transaction() as session:
            await session.execute(
                update(keys)
                .where(keys.c.caller == caller, keys.c.key == key, keys.c.state == "running")
                .values(state="done", status=status, content_type=content_type, body=body)
            )

    async def release(self, caller: str, key: str, digest: str) -> None:
        """Forget a claim whose request changed nothing: a retry runs again."""
        async with self._transaction() as session:
            await session.execute(
                delete(keys).where(
                    keys.c.caller == caller,
                    keys.c.key == key,
                    keys.c.state == "running",
                    keys.c.request_hash == digest,
                )
            )

    async def mark_unknown(self, caller: str, key: str) -> None:
        """The request may or may not have committed: never run it again under this key."""
        async with self._transaction() as session:
            await session.execute(
                update(keys)
                .where(keys.c.caller == caller, keys.c.key == key, keys.c.state == "running")
                .values(state="unknown")
            )

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[AsyncSession]:
        async with self.db.transaction() as session:
            # Marked, so a test's before_commit hook can tell these from the handler's writes.
            session.info["idempotency"] = True
            yield session

    async def _maybe_prune(self, session: AsyncSession, now: datetime) -> None:
        # Lazily: at most every PRUNE_EVERY seconds per process, inside a claim. An expired
        # key is treated as new anyway; this only keeps the table small.
        if time.monotonic() - self._pruned_at < PRUNE_EVERY:
            return
        self._pruned_at = time.monotonic()
        pruned = cast(
            CursorResult[Any], await session.execute(delete(keys).where(keys.c.expires_at <= now))
        )
        if pruned.rowcount:
            logger.info("pruned %d expired idempotency keys", pruned.rowcount)


def _error(status: int, code: str, message: str, **extra: Any) -> tuple[int, bytes]:
    return status, orjson.dumps({"error": {"code": code, "message": message, **extra}})


class IdempotencyMiddleware:
    """Pure ASGI: claims, stores and replays Idempotency-Key answers for POST under /api."""

    def __init__(self, app: ASGIApp, hooks: Hooks = NO_HOOKS) -> None:
        self.app = app
        self.hooks = hooks
        self._stores: dict[int, KeyStore] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] != "POST"
            or not scope["path"].startswith("/api/")
        ):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or ())
        raw_key = headers.get(HEADER.lower().encode())
        if raw_key is None:
            await self.app(scope, receive, send)
            return
        key = valid_key(raw_key)
        if key is None:
            await _answer(
                send,
                *_error(
                    400,
                    "invalid_idempotency_key",
                    f"{HEADER} must be 1 to {MAX_KEY_LENGTH} printable ASCII characters",
                ),
            )
            return
        services = scope["state"]["services"]
        caller = _caller(services, headers.get(b"authorization"))
        if caller is None:
            # Unauthenticated: nothing will be done, so there is nothing to remember.
            await self.app(scope, receive, send)
            return
        body, complete = await _read_body(receive, services.settings.max_body_bytes)
        if not complete:
            await _answer(
                send,
                *_error(
                    413,
                    "payload_too_large",
                    f"body larger than {services.settings.max_body_bytes} bytes",
                ),
            )
            return
        store = self._store(services)
        who = caller_id(caller)
        digest = request_hash(scope["method"], scope["path"], scope.get("query_string", b""), body)
        try:
            held = await store.claim(who, key, digest)
        except (DBAPIError, SQLAlchemyTimeoutError, CommitOutcomeUnknown) as exc:
            # The handler has not run: nothing changed but (perhaps) the claim, let go here.
            logger.warning("could not claim an idempotency key: %s", exc)
            with contextlib.suppress(Exception):
                await store.release(who, key, digest)
            await _answer(
                send,
                *_error(
                    503,
                    "database_unavailable",
                    "the database is unavailable; nothing was changed, try again",
                ),
                headers=[(b"retry-after", b"1")],
            )
            return
        if held is not None:
            await _held(send, held, digest)
            return
        await self.hooks.after_idempotency_claim(key)
        await self._run(scope, receive, body, send, store, who, key, digest)

    def _store(self, services: Any) -> KeyStore:
        # One per lifespan (the Services object), so a restarted app gets a fresh one.
        store = self._stores.get(id(services))
        if store is None or store.db is not services.db:
            store = KeyStore(services.db, services.settings.idempotency_ttl)
            self._stores = {id(services): store}
        return store

    async def _run(
        self,
        scope: Scope,
        receive: Receive,
        body: bytes,
        send: Send,
        store: KeyStore,
        who: str,
        key: str,
        digest: str,
    ) -> None:
        start: Message | None = None
        chunks: list[bytes] = []
        replayed = False

        async def replay_body() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            # After the body only a disconnect can come: wait for it on the real channel.
            return await receive()

        async def capture(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                start = message
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        try:
            await self.app(scope, replay_body, capture)
        except Exception:
            # An unhandled error (answered 500 further out): nothing is stored, retry runs.
            await store.release(who, key, digest)
            raise
        assert start is not None, "the app sent no response"
        status = int(start["status"])
        answer = b"".join(chunks)
        content_type = _header(start, b"content-type")
        try:
            if status >= 500:
                if _code(answer) == "commit_outcome_unknown":
                    await store.mark_unknown(who, key)
                else:
                    await store.release(who, key, digest)
            else:
                await store.complete(who, key, status, content_type, answer)
        except (DBAPIError, SQLAlchemyTimeoutError, CommitOutcomeUnknown):
            # The key could not be updated (database gone): it stays claimed, so a retry is
            # told "in progress" rather than doing the change twice.
            logger.warning("could not record the answer for idempotency key of %s", who)
        # Stored before it is sent: a client that got this answer and retries gets it again.
        await send(start)
        await send({"type": "http.response.body", "body": answer, "more_body": False})


def _caller(services: Any, authorization: bytes | None) -> Principal | None:
    token = bearer_token(authorization.decode("latin-1") if authorization else None)
    if token is None:
        return None
    try:
        caller: Principal = services.verifier.verify(token)
    except AuthError:
        return None
    return caller


async def _read_body(receive: Receive, limit: int) -> tuple[bytes, bool]:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return b"", False
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks), True


async def _held(send: Send, held: Stored, digest: str) -> None:
    if held.request_hash != digest:
        await _answer(
            send,
            *_error(
                422,
                "idempotency_key_reused",
                f"this {HEADER} was used for another request; use a new key",
            ),
        )
    elif held.state == "running":
        await _answer(
            send,
            *_error(
                409,
                "idempotency_in_progress",
                f"a request with this {HEADER} is still running; retry later",
            ),
            headers=[(b"retry-after", b"1")],
        )
    elif held.state == "unknown":
        await _answer(
            send,
            *_error(
                409,
                "idempotency_outcome_unknown",
                "the first request with this key lost its database connection while"
                " committing: it may or may not have been applied, and it is not run again;"
                " read the resource to check, and use a new key to try again",
            ),
        )
    else:
        assert held.status is not None
        headers = [(REPLAYED.lower().encode(), b"true")]
        if held.content_type:
            headers.append((b"content-type", held.content_type.encode("latin-1")))
        await _answer(send, held.status, held.body or b"", headers=headers, json=False)


async def _answer(
    send: Send,
    status: int,
    body: bytes,
    *,
    headers: list[tuple[bytes, bytes]] | None = None,
    json: bool = True,
) -> None:
    all_headers = list(headers or [])
    if json:
        all_headers.append((b"content-type", b"application/json"))
    all_headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": all_headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def _header(start: Message, name: bytes) -> str | None:
    for key, value in start.get("headers", []):
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None


def _code(body: bytes) -> str | None:
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if isinstance(document, dict) and isinstance(document.get("error"), dict):
        code = document["error"].get("code")
        return code if isinstance(code, str) else None
    return None
