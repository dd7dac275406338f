"""The resources the lifespan opens, handed to endpoints through the request state."""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

from starlette.requests import HTTPConnection

from channels import Broker, Heartbeat
from server.auth import TokenVerifier
from server.db import Database
from server.hub import Hub
from server.metrics import Metrics
from server.settings import Settings
from server.settlement import Settlement
from server.writes import Publisher


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


def services(conn: HTTPConnection) -> Services:
    """The app's Services, from the lifespan state."""
    return cast(Services, conn.state.services)
