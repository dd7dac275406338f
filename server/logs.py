"""Structured logging: JSON lines (or plain text), with tokens scrubbed from every line."""

from __future__ import annotations

import logging
import re
import secrets
import sys
from contextvars import ContextVar
from typing import Any

from pythonjsonlogger.json import JsonFormatter

#: The id of the request or WebSocket connection being served, stamped on every log record.
request_id: ContextVar[str] = ContextVar("request_id", default="-")

_TOKEN = re.compile(r"(token=)[^&\s\"']+", re.IGNORECASE)
_BEARER = re.compile(r"(Bearer\s+)[A-Za-z0-9._~+/=-]+", re.IGNORECASE)


def scrub(text: str) -> str:
    """Remove bearer tokens and ``token=`` query values from a log line."""
    return _BEARER.sub(r"\1[redacted]", _TOKEN.sub(r"\1[redacted]", text))


def new_request_id() -> str:
    """A short random id for one request or connection."""
    return secrets.token_hex(6)


class ScrubTokens(logging.Filter):
    """Rewrites each record so no token reaches a log sink (uvicorn logs ``?token=`` URLs).

    It also stamps the current request id on the record, so JSON lines can be correlated.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        # uvicorn attaches an ANSI-coloured copy of some messages; it is noise in a JSON line.
        record.__dict__.pop("color_message", None)
        if record.args:
            try:
                record.msg = record.getMessage()
            except (TypeError, ValueError):
                record.msg = str(record.msg)
            record.args = None
        if isinstance(record.msg, str):
            record.msg = scrub(record.msg)
        return True


def configure(level: str = "INFO", fmt: str = "json") -> None:
    """Send every log record (ours, uvicorn's) through one scrubbing handler on stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(ScrubTokens())
    formatter: logging.Formatter
    if fmt == "json":
        formatter = JsonFormatter(
            "%(asctime)s %(levelname)s %(name)s %(request_id)s %(message)s",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
        )
    else:
        formatter = logging.Formatter(
            "%(asctime)s %(levelname)-7s %(name)s [%(request_id)s]: %(message)s"
        )
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True


def uvicorn_log_config() -> dict[str, Any]:
    """A log config that leaves uvicorn's loggers to the root handler configured above."""
    return {"version": 1, "disable_existing_loggers": False}
