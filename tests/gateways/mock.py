"""A recording ``httpx.MockTransport``: canned answers per (method, path), every request kept."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl

import httpx

Answer = httpx.Response | Exception | Callable[[httpx.Request], httpx.Response]


class Recorder:
    """Answers requests from a table; ``requests`` keeps what was sent, in order."""

    def __init__(self, routes: dict[tuple[str, str], Answer | list[Answer]] | None = None) -> None:
        self.routes: dict[tuple[str, str], Answer | list[Answer]] = dict(routes or {})
        self.requests: list[httpx.Request] = []

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        key = (request.method, request.url.path)
        if key not in self.routes:
            return httpx.Response(404, json={"error": {"message": f"no route {key}"}})
        answer = self.routes[key]
        if isinstance(answer, list):
            answer = answer.pop(0) if len(answer) > 1 else answer[0]
        if isinstance(answer, Exception):
            raise answer
        if callable(answer) and not isinstance(answer, httpx.Response):
            return answer(request)
        return answer

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.MockTransport(self.handler))

    def sent(self, method: str, path: str) -> list[httpx.Request]:
        return [r for r in self.requests if (r.method, r.url.path) == (method, path)]


def form(request: httpx.Request) -> dict[str, str]:
    """A form-encoded request body as a dict (keys are unique in what we send)."""
    return dict(parse_qsl(request.content.decode(), keep_blank_values=True))


def body(request: httpx.Request) -> Any:
    """A JSON request body."""
    return json.loads(request.content)


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = 1_780_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now
