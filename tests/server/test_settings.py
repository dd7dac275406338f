"""Settings.from_environ: every variable parsed, bad values name their variable; validate()."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest

from server.settings import DEFAULT_DATABASE_URL, Settings

PG = "postgresql+asyncpg://postgres@127.0.0.1:5432/orderstatus"

#: variable -> (raw environment value, the parsed value Settings must hold).
EVERY_VARIABLE: dict[str, tuple[str, Any]] = {
    "DATABASE_URL": (
        "postgresql://app@db.internal:5432/orders",
        "postgresql+asyncpg://app@db.internal:5432/orders",
    ),
    "REDIS_URL": ("rediss://cache.internal:6380/2", "rediss://cache.internal:6380/2"),
    "REDIS_CLUSTER_URL": (
        "redis://10.0.0.1:7000,10.0.0.2:7000",
        "redis://10.0.0.1:7000,10.0.0.2:7000",
    ),
    "REDIS_CHANNEL_PREFIX": ("shop-a:", "shop-a:"),
    "JWT_SECRET": ("s3cret-s3cret-s3cret", "s3cret-s3cret-s3cret"),
    "JWT_ALGORITHMS": (" HS256 , HS512,, ", ("HS256", "HS512")),
    "JWT_LEEWAY": ("1.5", 1.5),
    "DEMO_TOKENS": ("Yes", True),
    "HOST": ("0.0.0.0", "0.0.0.0"),
    "PORT": ("9000", 9000),
    "ALLOWED_ORIGINS": (
        "https://shop.example, https://pos.example",
        ("https://shop.example", "https://pos.example"),
    ),
    "MIGRATE_ON_START": ("off", False),
    "DB_POOL_SIZE": ("5", 5),
    "DB_COMMAND_TIMEOUT": ("2.5", 2.5),
    "DB_CONNECT_TIMEOUT": ("1", 1.0),
    "SQLITE_SYNCHRONOUS": ("normal", "NORMAL"),
    "MAX_BODY_BYTES": ("1024", 1024),
    "WS_QUEUE_SIZE": ("8", 8),
    "WS_MAX_MESSAGE_BYTES": ("2048", 2048),
    "WS_MAX_CONNECTIONS_PER_USER": ("3", 3),
    "WS_AUTH_TIMEOUT": ("0.5", 0.5),
    "WS_PING_INTERVAL": ("5", 5.0),
    "WS_PING_TIMEOUT": ("6.25", 6.25),
    "WS_IMPL": ("wsproto", "wsproto"),
    "WS_PER_MESSAGE_DEFLATE": ("true", True),
    "HUB_POLL_INTERVAL": ("0.25", 0.25),
    "HUB_SAFETY_POLL_INTERVAL": ("0", 0.0),
    "BROKER_HEARTBEAT_INTERVAL": ("0.5", 0.5),
    "BROKER_HEARTBEAT_STALE_AFTER": ("2", 2.0),
    "PUBLISH_QUEUE_SIZE": ("64", 64),
    "GROUP_COMMIT_MAX_BATCH": ("32", 32),
    "GROUP_COMMIT_MAX_QUEUED": ("500", 500),
    "GROUP_COMMIT_LANES": ("2", 2),
    "RELAY_IN_PROCESS": ("1", True),
    "RELAY_GRACE": ("3", 3.0),
    "RELAY_INTERVAL": ("0.75", 0.75),
    "EVENT_RETENTION_DAYS": ("30", 30.0),
    "LONGPOLL_MAX_WAIT": ("10", 10.0),
    "LONGPOLL_MAX_PER_USER": ("2", 2),
    "ORDER_EXPIRY_SECONDS": ("60", 60),
    "IDEMPOTENCY_TTL": ("3600", 3600.0),
    "STRIPE_API_KEY": ("sk_test_1", "sk_test_1"),
    "STRIPE_WEBHOOK_SECRET": ("whsec_1", "whsec_1"),
    "STRIPE_API_BASE": ("http://127.0.0.1:9100", "http://127.0.0.1:9100"),
    "PHONEPE_MERCHANT_ID": ("PGTESTPAYUAT", "PGTESTPAYUAT"),
    "PHONEPE_SALT_KEY": ("salt-1", "salt-1"),
    "PHONEPE_SALT_INDEX": ("2", 2),
    "PHONEPE_CLIENT_ID": ("CLIENT", "CLIENT"),
    "PHONEPE_CLIENT_SECRET": ("csecret", "csecret"),
    "PHONEPE_CLIENT_VERSION": ("3", 3),
    "PHONEPE_CALLBACK_USERNAME": ("hook_user", "hook_user"),
    "PHONEPE_CALLBACK_PASSWORD": ("hook_pass1", "hook_pass1"),
    "PHONEPE_API_BASE": ("http://127.0.0.1:9200", "http://127.0.0.1:9200"),
    "SANDBOX_API_BASE": ("http://127.0.0.1:8001", "http://127.0.0.1:8001"),
    "SANDBOX_WEBHOOK_SECRET": ("sbx", "sbx"),
    "SNAPSHOT_MAX_ORDERS": ("50", 50),
    "GRACEFUL_SHUTDOWN_TIMEOUT": ("2.5", 2.5),
    "GC_FREEZE": ("false", False),
    "GC_THAW_INTERVAL": ("60", 60.0),
    "LOG_LEVEL": ("DEBUG", "DEBUG"),
    "LOG_FORMAT": ("text", "text"),
    "INSTANCE_ID": ("web-7", "web-7"),
    "PUBLIC_URL": ("https://orders.example.com", "https://orders.example.com"),
    "PAYMENT_RETURN_URL": (
        "https://shop.example.com/orders/{order_id}",
        "https://shop.example.com/orders/{order_id}",
    ),
    "PAYMENT_READ_CHECK_AFTER": ("45", 45.0),
    "PAYMENT_READ_CHECK_TIMEOUT": ("1.5", 1.5),
    "PAYMENT_CHECK_REUSE": ("3", 3.0),
    "PAYMENT_FAILURE_POLICY": ("cancel", "cancel"),
    "RECEIPT_TAX_RATE_BP": ("1800", 1800),
    "GATEWAY_TIMEOUT": ("8", 8.0),
    "GATEWAY_CONNECT_TIMEOUT": ("2", 2.0),
    "STRIPE_POLL_SCHEDULE": ("first=5 10x60 timeout=600", "first=5 10x60 timeout=600"),
    "STRIPE_RATE_LIMIT": ("80/second", "80/second"),
    "PHONEPE_AUTH_BASE": ("https://auth.phonepe.test", "https://auth.phonepe.test"),
    "PHONEPE_POLL_SCHEDULE": ("first=20-25 3x30 then=60", "first=20-25 3x30 then=60"),
    "PHONEPE_RATE_LIMIT": ("5/second", "5/second"),
    "SANDBOX": ("true", True),
    "SANDBOX_API_KEY": ("sbx-key", "sbx-key"),
    "SANDBOX_POLL_SCHEDULE": ("first=1 1x10 timeout=30", "first=1 1x10 timeout=30"),
    "SANDBOX_RATE_LIMIT": ("100/second", "100/second"),
    "RECONCILER_IN_PROCESS": ("true", True),
    "RECONCILER_INTERVAL": ("0.5", 0.5),
    "RECONCILER_BATCH": ("50", 50),
    "RECONCILER_CONCURRENCY": ("8", 8),
}

BOOLS = ["DEMO_TOKENS", "MIGRATE_ON_START", "RELAY_IN_PROCESS", "WS_PER_MESSAGE_DEFLATE"]
INTS = [
    "PORT",
    "DB_POOL_SIZE",
    "MAX_BODY_BYTES",
    "WS_QUEUE_SIZE",
    "WS_MAX_MESSAGE_BYTES",
    "WS_MAX_CONNECTIONS_PER_USER",
    "ORDER_EXPIRY_SECONDS",
    "SNAPSHOT_MAX_ORDERS",
    "LONGPOLL_MAX_PER_USER",
    "PHONEPE_SALT_INDEX",
    "PHONEPE_CLIENT_VERSION",
    "PUBLISH_QUEUE_SIZE",
    "GROUP_COMMIT_MAX_BATCH",
    "GROUP_COMMIT_MAX_QUEUED",
    "GROUP_COMMIT_LANES",
    "RECEIPT_TAX_RATE_BP",
]
FLOATS = [
    "JWT_LEEWAY",
    "DB_COMMAND_TIMEOUT",
    "DB_CONNECT_TIMEOUT",
    "WS_AUTH_TIMEOUT",
    "WS_PING_INTERVAL",
    "WS_PING_TIMEOUT",
    "HUB_POLL_INTERVAL",
    "HUB_SAFETY_POLL_INTERVAL",
    "BROKER_HEARTBEAT_INTERVAL",
    "BROKER_HEARTBEAT_STALE_AFTER",
    "RELAY_GRACE",
    "RELAY_INTERVAL",
    "EVENT_RETENTION_DAYS",
    "LONGPOLL_MAX_WAIT",
    "GRACEFUL_SHUTDOWN_TIMEOUT",
    "IDEMPOTENCY_TTL",
]


def _attr(variable: str) -> str:
    return variable.lower()


def test_the_table_names_every_setting() -> None:
    # JWT_PUBLIC_KEY cannot be combined with the HS* algorithms above; it has its own tests.
    assert set(EVERY_VARIABLE) | {"JWT_PUBLIC_KEY"} == {f.name.upper() for f in fields(Settings)}


def test_every_variable_is_parsed_into_its_setting() -> None:
    environ = {name: raw for name, (raw, _) in EVERY_VARIABLE.items()}
    settings = Settings.from_environ(environ)
    for name, (_, expected) in EVERY_VARIABLE.items():
        got = getattr(settings, _attr(name))
        assert got == expected, name
        assert type(got) is type(expected), name


def test_an_empty_environment_gives_the_embedded_defaults() -> None:
    settings = Settings.from_environ({})
    assert settings.database_url == DEFAULT_DATABASE_URL
    assert settings.redis_url is None
    assert settings.embedded
    assert settings.demo_tokens_enabled
    assert settings.relay_enabled
    assert settings.jwt_algorithms == ("HS256",)
    assert settings.port == 8000
    assert settings.allowed_origins == ()


def test_empty_values_count_as_unset() -> None:
    settings = Settings.from_environ(
        {"PORT": "", "REDIS_URL": "", "DEMO_TOKENS": "", "JWT_ALGORITHMS": ""}
    )
    assert settings.port == 8000
    assert settings.redis_url is None
    assert settings.demo_tokens is None
    assert settings.jwt_algorithms == ("HS256",)


def test_unrelated_variables_are_ignored() -> None:
    assert Settings.from_environ({"PATH": "/bin", "HOME": "/root", "port": "1"}).port == 8000


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("1", True),
        ("true", True),
        ("TRUE", True),
        (" yes ", True),
        ("on", True),
        ("0", False),
        ("false", False),
        ("No", False),
        ("off", False),
    ],
)
@pytest.mark.parametrize("variable", BOOLS)
def test_boolean_variables_accept_the_usual_spellings(
    variable: str, raw: str, expected: bool
) -> None:
    settings = Settings.from_environ({variable: raw, "JWT_SECRET": "x"})
    assert getattr(settings, _attr(variable)) is expected


@pytest.mark.parametrize("raw", ["maybe", "2", "y", "enabled", "tru"])
@pytest.mark.parametrize("variable", BOOLS)
def test_a_bad_boolean_names_its_variable(variable: str, raw: str) -> None:
    with pytest.raises(
        ValueError, match=rf"^{variable}: expected true or false, got {re.escape(repr(raw))}$"
    ):
        Settings.from_environ({variable: raw})


@pytest.mark.parametrize("raw", ["ten", "1.5", "1e3", "0x10", "12abc"])
@pytest.mark.parametrize("variable", INTS)
def test_a_bad_integer_names_its_variable(variable: str, raw: str) -> None:
    with pytest.raises(
        ValueError, match=rf"^{variable}: expected an integer, got {re.escape(repr(raw))}$"
    ):
        Settings.from_environ({variable: raw})


@pytest.mark.parametrize("raw", ["fast", "1,5", "1s", "--1"])
@pytest.mark.parametrize("variable", FLOATS)
def test_a_bad_number_names_its_variable(variable: str, raw: str) -> None:
    with pytest.raises(
        ValueError, match=rf"^{variable}: expected a number, got {re.escape(repr(raw))}$"
    ):
        Settings.from_environ({variable: raw})


@pytest.mark.parametrize("variable", INTS)
def test_integers_accept_surrounding_whitespace(variable: str) -> None:
    assert getattr(Settings.from_environ({variable: " 42 "}), _attr(variable)) == 42


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("rediss://user:pw@cache:6380", "rediss://user:pw@cache:6380"),
    ],
)
def test_redis_url_accepts_redis_and_rediss(raw: str, expected: str) -> None:
    settings = Settings.from_environ({"REDIS_URL": raw, "JWT_SECRET": "x"})
    assert settings.redis_url == expected
    assert not settings.embedded


@pytest.mark.parametrize("raw", ["localhost", "localhost:6379", "http://cache:6379", "memory://"])
def test_a_bad_redis_url_names_the_variable(raw: str) -> None:
    with pytest.raises(ValueError) as caught:
        Settings.from_environ({"REDIS_URL": raw})
    assert str(caught.value) == f"REDIS_URL: expected redis:// or rediss://, got {raw!r}"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("sqlite+aiosqlite:///./x.db", "sqlite+aiosqlite:///./x.db"),
        (PG, PG),
        ("postgresql://postgres@h/db", "postgresql+asyncpg://postgres@h/db"),
    ],
)
def test_database_url_accepts_sqlite_and_postgres_forms(raw: str, expected: str) -> None:
    assert Settings.from_environ({"DATABASE_URL": raw, "JWT_SECRET": "x"}).database_url == expected


@pytest.mark.parametrize(
    "raw",
    [
        "mysql://h/db",
        "sqlite:///x.db",
        "postgres://h/db",
        "./orders.db",
        "postgresql+psycopg://h/db",
    ],
)
def test_a_bad_database_url_names_the_variable(raw: str) -> None:
    with pytest.raises(ValueError, match=r"^DATABASE_URL: expected .*got "):
        Settings.from_environ({"DATABASE_URL": raw})


@pytest.mark.parametrize("raw", ["xml", "JSON", "logfmt"])
def test_a_bad_log_format_names_the_variable(raw: str) -> None:
    with pytest.raises(ValueError, match=r"^LOG_FORMAT: expected json or text"):
        Settings.from_environ({"LOG_FORMAT": raw})


def test_a_bad_ws_implementation_names_the_variable() -> None:
    expected = r"^WS_IMPL: expected lean, auto, websockets, websockets-sansio, wsproto, got"
    with pytest.raises(ValueError, match=expected):
        Settings.from_environ({"WS_IMPL": "aiohttp"})


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("https://a.example", ("https://a.example",)),
        ("https://a.example,https://b.example", ("https://a.example", "https://b.example")),
        (" https://a.example ,, https://b.example , ", ("https://a.example", "https://b.example")),
        ("*", ("*",)),
        (",", ()),
    ],
)
def test_allowed_origins_is_a_comma_separated_list(raw: str, expected: tuple[str, ...]) -> None:
    assert Settings.from_environ({"ALLOWED_ORIGINS": raw}).allowed_origins == expected


@pytest.mark.parametrize(
    ("variable", "raw"),
    [
        ("PORT", "70000"),
        ("PORT", "-1"),
        ("MAX_BODY_BYTES", "0"),
        ("WS_MAX_CONNECTIONS_PER_USER", "0"),
        ("LONGPOLL_MAX_PER_USER", "0"),
        ("RECEIPT_TAX_RATE_BP", "-1"),
        ("RECEIPT_TAX_RATE_BP", "10001"),
    ],
)
def test_an_out_of_range_number_names_its_variable(variable: str, raw: str) -> None:
    with pytest.raises(ValueError, match=rf"^{variable}: "):
        Settings.from_environ({variable: raw})


# -- validate() -------------------------------------------------------------------------------


def test_no_jwt_key_with_demo_tokens_off_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"^JWT_SECRET or JWT_PUBLIC_KEY: one is required"):
        Settings.from_environ({"DEMO_TOKENS": "false"})


def test_no_jwt_key_on_postgres_is_an_error_because_demo_tokens_default_off() -> None:
    with pytest.raises(ValueError, match=r"JWT_SECRET or JWT_PUBLIC_KEY"):
        Settings.from_environ({"DATABASE_URL": PG})


def test_no_jwt_key_with_redis_is_an_error_because_demo_tokens_default_off() -> None:
    with pytest.raises(ValueError, match=r"JWT_SECRET or JWT_PUBLIC_KEY"):
        Settings.from_environ({"REDIS_URL": "redis://127.0.0.1:6379/0"})


def test_no_jwt_key_is_fine_on_the_embedded_default() -> None:
    settings = Settings.from_environ({})
    assert settings.jwt_secret is None and settings.demo_tokens_enabled


def test_a_public_key_alone_pins_rs256() -> None:
    settings = Settings.from_environ({"JWT_PUBLIC_KEY": "-----BEGIN PUBLIC KEY-----\nx\n"})
    assert settings.jwt_algorithms == ("RS256",)
    assert settings.jwt_public_key == "-----BEGIN PUBLIC KEY-----\nx\n"


def test_a_public_key_can_be_read_from_a_file(tmp_path: Path) -> None:
    key_file = tmp_path / "jwt.pem"
    key_file.write_text("-----BEGIN PUBLIC KEY-----\nabc\n-----END PUBLIC KEY-----\n")
    settings = Settings.from_environ(
        {"JWT_PUBLIC_KEY_FILE": str(key_file), "JWT_ALGORITHMS": "ES256", "DATABASE_URL": PG}
    )
    assert settings.jwt_public_key == key_file.read_text()
    assert settings.jwt_algorithms == ("ES256",)


@pytest.mark.parametrize("algorithms", ["HS256", "RS256,HS256", "HS512"])
def test_an_hmac_algorithm_with_a_public_key_is_an_error(algorithms: str) -> None:
    with pytest.raises(
        ValueError, match=r"^JWT_ALGORITHMS: HS\* cannot be combined with JWT_PUBLIC_KEY"
    ):
        Settings.from_environ({"JWT_PUBLIC_KEY": "pem", "JWT_ALGORITHMS": algorithms})


@pytest.mark.parametrize("algorithms", ["none", "HS256,none", "hs256", "RS1", "PS256x"])
def test_an_unknown_algorithm_is_an_error(algorithms: str) -> None:
    with pytest.raises(ValueError, match=r"^JWT_ALGORITHMS: unsupported"):
        Settings.from_environ({"JWT_SECRET": "x", "JWT_ALGORITHMS": algorithms})


def test_validate_applies_to_settings_built_directly() -> None:
    with pytest.raises(ValueError, match="JWT_ALGORITHMS"):
        Settings(jwt_public_key="pem", jwt_algorithms=("HS256",)).validate()
    with pytest.raises(ValueError, match="JWT_SECRET or JWT_PUBLIC_KEY"):
        Settings(database_url=PG, jwt_secret=None).validate()
    settings = Settings(jwt_secret="x")
    assert settings.validate() is settings


# -- derived defaults -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("database_url", "redis_url", "embedded"),
    [
        ("sqlite+aiosqlite:///./x.db", None, True),
        ("sqlite+aiosqlite:///./x.db", "redis://127.0.0.1:6379/0", False),
        (PG, None, False),
        (PG, "redis://127.0.0.1:6379/0", False),
    ],
)
def test_embedded_means_sqlite_and_the_in_memory_broker(
    database_url: str, redis_url: str | None, embedded: bool
) -> None:
    settings = Settings(database_url=database_url, redis_url=redis_url)
    assert settings.embedded is embedded
    assert settings.demo_tokens_enabled is embedded
    assert settings.relay_enabled is embedded


@pytest.mark.parametrize(
    "key", [{"jwt_secret": "x"}, {"jwt_public_key": "pem", "jwt_algorithms": ("RS256",)}]
)
def test_a_configured_jwt_key_turns_demo_tokens_off_unless_they_are_asked_for(
    key: dict[str, Any],
) -> None:
    assert not Settings(**key).demo_tokens_enabled
    assert not Settings.from_environ(
        {k.upper(): str(v[0] if isinstance(v, tuple) else v) for k, v in key.items()}
    ).demo_tokens_enabled
    assert Settings(demo_tokens=True, **key).demo_tokens_enabled


@pytest.mark.parametrize("explicit", [True, False])
def test_explicit_demo_tokens_and_relay_override_the_embedded_default(explicit: bool) -> None:
    for database_url in ["sqlite+aiosqlite:///./x.db", PG]:
        settings = Settings(
            database_url=database_url,
            jwt_secret="x",
            demo_tokens=explicit,
            relay_in_process=explicit,
        )
        assert settings.demo_tokens_enabled is explicit
        assert settings.relay_enabled is explicit


def test_each_settings_object_gets_its_own_instance_id() -> None:
    assert Settings().instance_id != Settings().instance_id


@pytest.mark.parametrize(
    ("environ", "broker_url"),
    [
        ({}, None),
        ({"REDIS_URL": "redis://r:6379/0"}, "redis://r:6379/0"),
        ({"REDIS_CLUSTER_URL": "redis://a:7000,b:7000"}, "redis+cluster://a:7000,b:7000"),
        ({"REDIS_CLUSTER_URL": "rediss://u:p@a:7000"}, "rediss+cluster://u:p@a:7000"),
        ({"REDIS_CLUSTER_URL": "redis+cluster://a:7000"}, "redis+cluster://a:7000"),
        # Pub/sub on the cluster; REDIS_URL still names a plain Redis (the gateways' limit).
        (
            {"REDIS_URL": "redis://r:6379/0", "REDIS_CLUSTER_URL": "redis://a:7000"},
            "redis+cluster://a:7000",
        ),
    ],
)
def test_the_broker_url_prefers_the_cluster(environ: dict[str, str], broker_url: str) -> None:
    settings = Settings.from_environ({**environ, "JWT_SECRET": "x"})
    assert settings.broker_url == broker_url
    assert settings.embedded is (broker_url is None)


@pytest.mark.parametrize("raw", ["a:7000", "http://a:7000", "memory://"])
def test_a_bad_redis_cluster_url_names_the_variable(raw: str) -> None:
    with pytest.raises(ValueError, match=r"^REDIS_CLUSTER_URL: expected redis://"):
        Settings.from_environ({"REDIS_CLUSTER_URL": raw})
