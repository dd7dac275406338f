"""The resources the lifespan opens, handed to endpoints through the request state."""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

from starlette.requests import HTTPConnection

from channels import Broker, Heartbeat
from orders.db import Database
from orders.groupcommit import GroupCommit
from orders.metrics import Metrics
from orders.settlement import Settlement
from orders.writes import Publisher
from server.auth import TokenVerifier
from server.hub import Hub
from server.settings import Settings


@dataclass(frozen=True, slots=True)
class Services:
    """Everything an endpoint may need: opened in lifespan, closed on shutdown."""

    settings: Settings
    db: Database
    broker: Broker
    heartbeat: Heartbeat
    publisher: Publisher
    verifier: TokenVerifier
    hub: Hub
    metrics: Metrics
    #: Payments: the gateways offered here, starting, applying and checking (single flight).
    settlement: Settlement
    #: Status changes (batched per store on PostgreSQL).
    writer: GroupCommit


def services(conn: HTTPConnection) -> Services:
    """The app's Services, from the lifespan state."""
    return cast(Services, conn.state.services)
