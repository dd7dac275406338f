"""Who acts on an order: the caller's role and identity, as the domain sees them.

The web layer builds a Principal from a verified token (``server/auth.py``); the domain only
reads it — which stream it may see, which workflow moves it may make, how the audit names it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from orders.workflow import Mover


class Role(StrEnum):
    """What a token holder is: a customer, a store terminal, or an operator."""

    CUSTOMER = "customer"
    POS = "pos"
    ADMIN = "admin"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling, taken from the token only."""

    sub: str
    role: Role
    store_id: str | None
    expires_at: float

    @property
    def stream(self) -> str:
        """The one stream this principal may read: its customer or its store stream."""
        if self.role is Role.POS:
            assert self.store_id is not None
            return f"store:{self.store_id}"
        return f"customer:{self.sub}"

    @property
    def mover(self) -> Mover:
        """The workflow role this principal acts as."""
        if self.role is Role.POS:
            return Mover.POS
        if self.role is Role.ADMIN:
            return Mover.SYSTEM
        return Mover.CUSTOMER

    @property
    def actor(self) -> str:
        """How this principal is named in the audit trail."""
        return f"{self.role.value}:{self.sub}"
