"""Settings: one frozen dataclass, read from the environment in exactly one place.

Every field mirrors a row of the README's configuration table. Tests build ``Settings(...)``
directly; ``python -m server`` and ``python -m reconciler`` call ``Settings.from_environ``.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from datetime import timedelta
from typing import Any, TypeVar

from gateways import GatewaysConfig, PhonePeConfig, SandboxConfig, StripeConfig
from gateways.stripe import DEFAULT_API_BASE as STRIPE_API_BASE
from orders.schedule import Schedule
from server.ratelimit import parse_rate

T = TypeVar("T")

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///./.data/orderstatus.db"
#: WS_IMPL's values and what uvicorn is given for each (its ``ws=``: a name or an import string).
WS_IMPLEMENTATIONS = {
    "lean": "server.wsproto_lean:LeanWebSocketProtocol",
    "auto": "auto",
    "websockets": "websockets",
    "websockets-sansio": "websockets-sansio",
    "wsproto": "wsproto",
}
_JWT_ALGORITHMS = {"HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "ES256", "ES384", "ES512"}


@dataclass(frozen=True, slots=True)
class Settings:
    """Every knob of the service; defaults are the embedded single-process setup."""

    database_url: str = DEFAULT_DATABASE_URL
    redis_url: str | None = None
    redis_cluster_url: str | None = None
    redis_channel_prefix: str = "orderstatus:"
    jwt_secret: str | None = None
    jwt_public_key: str | None = None
    jwt_algorithms: tuple[str, ...] = ("HS256",)
    jwt_leeway: float = 0.0
    demo_tokens: bool | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    allowed_origins: tuple[str, ...] = ()
    migrate_on_start: bool = True
    db_pool_size: int = 10
    db_command_timeout: float = 5.0
    db_connect_timeout: float = 5.0
    sqlite_synchronous: str = "FULL"
    max_body_bytes: int = 65_536
    ws_queue_size: int = 256
    ws_max_message_bytes: int = 4_096
    ws_max_connections_per_user: int = 10
    ws_auth_timeout: float = 5.0
    ws_ping_interval: float = 20.0
    ws_ping_timeout: float = 20.0
    ws_impl: str = "lean"
    ws_per_message_deflate: bool = False
    hub_poll_interval: float = 1.0
    hub_safety_poll_interval: float = 30.0
    broker_heartbeat_interval: float = 1.0
    broker_heartbeat_stale_after: float = 3.0
    publish_queue_size: int = 10_000
    group_commit_max_batch: int = 100
    group_commit_max_queued: int = 2_000
    group_commit_lanes: int = 4
    relay_in_process: bool | None = None
    relay_grace: float = 2.0
    relay_interval: float = 1.0
    event_retention_days: float = 0.0
    longpoll_max_wait: float = 30.0
    longpoll_max_per_user: int = 4
    order_expiry_seconds: int = 1_800
    # Idempotency-Key answers are kept this long (seconds); an older key counts as new.
    idempotency_ttl: float = 86_400.0
    # Payment gateways: one without credentials is not offered (see gateways_config()).
    stripe_api_key: str | None = field(default=None, repr=False)
    stripe_webhook_secret: str | None = field(default=None, repr=False)
    stripe_api_base: str | None = None
    phonepe_merchant_id: str | None = None
    phonepe_salt_key: str | None = field(default=None, repr=False)
    phonepe_salt_index: int = 1
    phonepe_client_id: str | None = None
    phonepe_client_secret: str | None = field(default=None, repr=False)
    phonepe_client_version: int = 1
    phonepe_callback_username: str | None = None
    phonepe_callback_password: str | None = field(default=None, repr=False)
    phonepe_api_base: str | None = None
    sandbox_api_base: str | None = None
    sandbox_webhook_secret: str | None = field(default=None, repr=False)
    snapshot_max_orders: int = 200
    graceful_shutdown_timeout: float = 10.0
    gc_freeze: bool = True
    gc_thaw_interval: float = 3600.0
    # Payments (issue 5): every gateway variable of DESIGN §7, and the reconciler.
    public_url: str | None = None
    payment_return_url: str | None = None
    payment_read_check_after: float = 30.0
    payment_read_check_timeout: float = 2.0
    payment_check_reuse: float = 5.0
    payment_failure_policy: str = "retry"
    # Receipts (issue 6): the tax included in prices, in basis points (1800 = 18 %); 0: none.
    receipt_tax_rate_bp: int = 0
    gateway_timeout: float = 10.0
    gateway_connect_timeout: float = 3.0
    stripe_poll_schedule: str | None = None
    stripe_rate_limit: str = "25/second"
    phonepe_auth_base: str | None = None
    phonepe_poll_schedule: str | None = None
    phonepe_rate_limit: str = "10/second"
    sandbox: bool | None = None
    sandbox_api_key: str | None = None
    sandbox_poll_schedule: str | None = None
    sandbox_rate_limit: str = "50/second"
    reconciler_in_process: bool | None = None
    reconciler_interval: float = 1.0
    reconciler_batch: int = 100
    reconciler_concurrency: int = 16
    log_level: str = "INFO"
    log_format: str = "json"
    instance_id: str = field(default_factory=lambda: secrets.token_hex(4))

    @property
    def embedded(self) -> bool:
        """True on the single-process default: SQLite and the in-memory broker."""
        return self.database_url.startswith("sqlite") and not self.broker_url

    @property
    def broker_url(self) -> str | None:
        """The URL ``channels.create_broker`` takes: REDIS_CLUSTER_URL (as redis+cluster://)
        when set — it wins over REDIS_URL — else REDIS_URL; None: the in-memory broker."""
        if self.redis_cluster_url:
            scheme, _, rest = self.redis_cluster_url.partition("://")
            return f"{scheme.removesuffix('+cluster')}+cluster://{rest}"
        return self.redis_url

    @property
    def demo_tokens_enabled(self) -> bool:
        """Demo tokens: on by default only on the embedded default with no real JWT key.

        Anyone who can reach ``/demo/token`` can mint any identity, so a configured
        JWT_SECRET / JWT_PUBLIC_KEY turns them off unless DEMO_TOKENS=true says otherwise.
        """
        if self.demo_tokens is not None:
            return self.demo_tokens
        return self.embedded and not (self.jwt_secret or self.jwt_public_key)

    @property
    def retention(self) -> timedelta | None:
        """How long events are kept (EVENT_RETENTION_DAYS), or None for forever."""
        return timedelta(days=self.event_retention_days) if self.event_retention_days > 0 else None

    @property
    def relay_enabled(self) -> bool:
        """Whether the outbox relay runs inside the web process."""
        return self.embedded if self.relay_in_process is None else self.relay_in_process

    @property
    def sandbox_enabled(self) -> bool:
        """The bundled sandbox gateway: on by default only on the embedded default."""
        return self.embedded if self.sandbox is None else self.sandbox

    @property
    def reconciler_enabled(self) -> bool:
        """Whether the payment reconciler runs inside the web process."""
        return self.embedded if self.reconciler_in_process is None else self.reconciler_in_process

    def poll_schedule(self, gateway: str) -> str | None:
        """``<GATEWAY>_POLL_SCHEDULE``: the gateway's polling schedule in its one-line form."""
        value: str | None = getattr(self, f"{gateway}_poll_schedule", None)
        return value

    def rate_limit(self, gateway: str) -> str:
        """``<GATEWAY>_RATE_LIMIT``: status calls allowed, shared by every process."""
        value: str = getattr(self, f"{gateway}_rate_limit", "")
        return value

    def gateways_config(self) -> GatewaysConfig:
        """The gateways with credentials, as ``gateways.create_gateways`` takes them."""
        stripe = phonepe = sandbox = None
        if self.stripe_api_key or self.stripe_webhook_secret:
            if not (self.stripe_api_key and self.stripe_webhook_secret):
                raise ValueError("STRIPE_API_KEY and STRIPE_WEBHOOK_SECRET: set both or neither")
            stripe = StripeConfig(
                api_key=self.stripe_api_key,
                webhook_secret=self.stripe_webhook_secret,
                api_base=self.stripe_api_base or STRIPE_API_BASE,
            )
        if self.phonepe_merchant_id or self.phonepe_salt_key or self.phonepe_client_id:
            phonepe = PhonePeConfig(
                merchant_id=self.phonepe_merchant_id,
                salt_key=self.phonepe_salt_key,
                salt_index=self.phonepe_salt_index,
                client_id=self.phonepe_client_id,
                client_secret=self.phonepe_client_secret,
                client_version=self.phonepe_client_version,
                callback_username=self.phonepe_callback_username,
                callback_password=self.phonepe_callback_password,
                api_base=self.phonepe_api_base,
                auth_base=self.phonepe_auth_base,
            )
        # SANDBOX_WEBHOOK_SECRET alone is the in-process sandbox's secret (server/gatewaying.py).
        if self.sandbox_api_base and self.sandbox is not False:
            if not self.sandbox_webhook_secret:
                raise ValueError("SANDBOX_WEBHOOK_SECRET: required with SANDBOX_API_BASE")
            sandbox = SandboxConfig(
                api_base=self.sandbox_api_base,
                webhook_secret=self.sandbox_webhook_secret,
                api_key=self.sandbox_api_key,
            )
        return GatewaysConfig(stripe=stripe, phonepe=phonepe, sandbox=sandbox)

    def validate(self) -> Settings:
        """Check ranges and cross-field rules, naming the variable; return self so it chains."""
        if self.payment_failure_policy not in {"retry", "cancel"}:
            raise ValueError(
                "PAYMENT_FAILURE_POLICY: expected retry or cancel, "
                f"got {self.payment_failure_policy!r}"
            )
        for gateway in ("stripe", "phonepe", "sandbox"):
            schedule = self.poll_schedule(gateway)
            if schedule:
                try:
                    Schedule.parse(schedule)
                except ValueError as exc:
                    raise ValueError(f"{gateway.upper()}_POLL_SCHEDULE: {exc}") from None
            rate = self.rate_limit(gateway)
            if rate:
                try:
                    parse_rate(rate)
                except ValueError:
                    raise ValueError(
                        f"{gateway.upper()}_RATE_LIMIT: expected a rate such as 100/second,"
                        f" got {rate!r}"
                    ) from None
        for name, (low, high) in _BOUNDS.items():
            value = getattr(self, name)
            if value < low or (high is not None and value > high):
                expected = f"{low}..{high}" if high is not None else f"at least {low}"
                raise ValueError(f"{name.upper()}: expected {expected}, got {value}")
        if self.broker_heartbeat_stale_after <= self.broker_heartbeat_interval:
            raise ValueError(
                "BROKER_HEARTBEAT_STALE_AFTER: must be longer than BROKER_HEARTBEAT_INTERVAL"
            )
        if not self.jwt_secret and not self.jwt_public_key and not self.demo_tokens_enabled:
            raise ValueError(
                "JWT_SECRET or JWT_PUBLIC_KEY: one is required unless DEMO_TOKENS is on"
            )
        unknown = set(self.jwt_algorithms) - _JWT_ALGORITHMS
        if unknown:
            raise ValueError(f"JWT_ALGORITHMS: unsupported {sorted(unknown)}")
        if self.jwt_public_key and any(a.startswith("HS") for a in self.jwt_algorithms):
            # Mixing HMAC with a public key is the classic algorithm-confusion hole.
            raise ValueError("JWT_ALGORITHMS: HS* cannot be combined with JWT_PUBLIC_KEY")
        if self.sqlite_synchronous not in {"FULL", "NORMAL"}:
            raise ValueError(
                f"SQLITE_SYNCHRONOUS: expected FULL or NORMAL, got {self.sqlite_synchronous!r}"
            )
        self.gateways_config()  # half-configured gateways name their variables
        if self.ws_impl not in WS_IMPLEMENTATIONS:
            raise ValueError(
                f"WS_IMPL: expected {', '.join(WS_IMPLEMENTATIONS)}, got {self.ws_impl!r}"
            )
        return self

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Settings:
        """Build settings from environment variables; a bad value names its variable."""
        values: dict[str, Any] = {}
        for f in fields(cls):
            name = f.name.upper()
            raw = environ.get(name)
            if raw is None or raw == "":
                continue
            parser = _PARSERS.get(f.name, _parser_for(f.type))
            try:
                values[f.name] = parser(raw)
            except ValueError as exc:
                raise ValueError(f"{name}: {exc}") from None
        if "jwt_public_key" not in values and environ.get("JWT_PUBLIC_KEY_FILE"):
            with open(environ["JWT_PUBLIC_KEY_FILE"], encoding="utf-8") as fh:
                values["jwt_public_key"] = fh.read()
        if values.get("jwt_public_key") and "jwt_algorithms" not in values:
            values["jwt_algorithms"] = ("RS256",)
        return cls(**values).validate()


def _bool(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"expected true or false, got {raw!r}")


def _int(raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"expected an integer, got {raw!r}") from None


def _float(raw: str) -> float:
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"expected a number, got {raw!r}") from None


def _csv(raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def _redis_url(raw: str) -> str:
    if not raw.startswith(("redis://", "rediss://")):
        raise ValueError(f"expected redis:// or rediss://, got {raw!r}")
    return raw


def _redis_cluster_url(raw: str) -> str:
    if not raw.startswith(("redis://", "rediss://", "redis+cluster://", "rediss+cluster://")):
        raise ValueError(
            f"expected redis://host:port[,host:port...], rediss:// or redis+cluster://, got {raw!r}"
        )
    return raw


def _database_url(raw: str) -> str:
    if not raw.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://", "postgresql://")):
        raise ValueError(f"expected sqlite+aiosqlite:// or postgresql+asyncpg://, got {raw!r}")
    if raw.startswith("postgresql://"):
        raw = "postgresql+asyncpg://" + raw.removeprefix("postgresql://")
    return raw


def _sqlite_synchronous(raw: str) -> str:
    level = raw.strip().upper()
    if level not in {"FULL", "NORMAL"}:
        raise ValueError(f"expected FULL or NORMAL, got {raw!r}")
    return level


def _log_format(raw: str) -> str:
    if raw not in {"json", "text"}:
        raise ValueError(f"expected json or text, got {raw!r}")
    return raw


def _parser_for(annotation: Any) -> Callable[[str], Any]:
    text = str(annotation)
    if "bool" in text:
        return _bool
    if text.startswith("int"):
        return _int
    if text.startswith("float"):
        return _float
    if "tuple" in text:
        return _csv
    return str


# Numeric settings and their (inclusive) bounds; None: no upper bound.
_BOUNDS: dict[str, tuple[float, float | None]] = {
    "port": (0, 65_535),
    "jwt_leeway": (0, 3_600),
    "db_pool_size": (1, None),
    "db_command_timeout": (0.1, 3_600),
    "db_connect_timeout": (0.1, 300),
    "max_body_bytes": (1, None),
    "ws_queue_size": (1, None),
    "ws_max_message_bytes": (1, None),
    "ws_max_connections_per_user": (1, None),
    "ws_auth_timeout": (0.01, None),
    "ws_ping_interval": (0.01, None),
    "ws_ping_timeout": (0.01, None),
    "hub_poll_interval": (0.01, None),
    "hub_safety_poll_interval": (0, None),
    "broker_heartbeat_interval": (0.01, None),
    "broker_heartbeat_stale_after": (0.01, None),
    "publish_queue_size": (1, None),
    "group_commit_max_batch": (1, 10_000),
    "group_commit_max_queued": (1, None),
    "group_commit_lanes": (1, 1_000),
    "relay_grace": (0, None),
    "relay_interval": (0.01, None),
    "event_retention_days": (0, None),
    "longpoll_max_wait": (0, 300),
    "longpoll_max_per_user": (1, None),
    "order_expiry_seconds": (1, None),
    "idempotency_ttl": (1, None),
    "snapshot_max_orders": (0, 10_000),
    "phonepe_salt_index": (1, None),
    "phonepe_client_version": (1, None),
    "graceful_shutdown_timeout": (0, None),
    "gc_thaw_interval": (0, None),
    "payment_read_check_after": (0, None),
    "payment_read_check_timeout": (0.01, 60),
    "payment_check_reuse": (0, None),
    "receipt_tax_rate_bp": (0, 10_000),
    "gateway_timeout": (0.1, 300),
    "gateway_connect_timeout": (0.1, 300),
    "reconciler_interval": (0.01, None),
    "reconciler_batch": (1, 10_000),
    "reconciler_concurrency": (1, 1_000),
}

_PARSERS: dict[str, Callable[[str], Any]] = {
    "redis_url": _redis_url,
    "redis_cluster_url": _redis_cluster_url,
    "database_url": _database_url,
    "log_format": _log_format,
    "sqlite_synchronous": _sqlite_synchronous,
    "port": _int,
}
