"""The domain's refusals: what a write may answer instead of doing it.

Each carries a stable machine-readable ``code``, a message for people and any extra fields the
caller needs (the allowed next statuses, the live attempt). The domain knows nothing of HTTP:
``server/errors.py`` maps each class to its status code at the API boundary.
"""

from __future__ import annotations

from typing import Any


class DomainError(Exception):
    """A write refused by the domain; nothing was changed."""

    code = "refused"

    def __init__(self, message: str, *, code: str | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.extra = extra


class NotFound(DomainError):
    """No such order (or not one the caller may see: the two are never told apart)."""

    code = "not_found"


class Forbidden(DomainError):
    """The caller may see the order but not make this change."""

    code = "forbidden"


class Conflict(DomainError):
    """The order's current state does not allow the change (a move, a second attempt, ...)."""

    code = "conflict"


class Invalid(DomainError):
    """The request is well formed but its values are not acceptable (an amount too large, ...)."""

    code = "validation_error"


class Overloaded(DomainError):
    """Too much is waiting to be written already; nothing was changed, try again shortly."""

    code = "overloaded"


class GatewayRefused(DomainError):
    """The gateway refused to start the payment (it is FAILED; the customer may retry)."""

    code = "gateway_rejected"


class GatewayUnreachable(DomainError):
    """The gateway could not answer; the attempt is kept and the reconciler retries it."""

    code = "gateway_unavailable"
