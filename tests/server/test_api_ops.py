"""Operations endpoints and the app's edges: health, readiness, metrics, OpenAPI, 404/405."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.routing import Route

from server.app import create_app
from tests.conftest import Service
from tests.support.asserts import assert_error
from tests.support.clients import auth, order_body, token

ALICE = token("alice")
HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


def api_routes(app: Starlette) -> set[tuple[str, str]]:
    """(path, method) of every /api route the app serves (HEAD is implied by GET)."""
    found: set[tuple[str, str]] = set()
    for route in app.routes:
        if isinstance(route, Route) and route.path.startswith("/api") and route.methods:
            found |= {(route.path, m.lower()) for m in route.methods if m != "HEAD"}
    return found


async def test_healthz_is_200(service: Service) -> None:
    r = await service.http.get("/healthz")
    assert r.status_code == 200
    assert r.json() == {"status": "ok"}


async def test_readyz_is_200_once_the_database_answers_and_the_broker_delivers(
    service: Service,
) -> None:
    # The broker counts as delivering once the first heartbeat has come back through it.
    async with asyncio.timeout(15):
        while (r := await service.http.get("/readyz")).status_code != 200:
            assert r.status_code == 503, r.text
            assert r.json()["error"]["code"] == "not_ready"
            await asyncio.sleep(0.1)
    assert r.json() == {"status": "ready", "checks": {"database": "ok", "broker": "ok"}}


async def test_metrics_is_prometheus_text_counting_written_events(service: Service) -> None:
    r = await service.http.post("/api/orders", json=order_body(), headers=auth(ALICE))
    assert r.status_code == 201, r.text
    r = await service.http.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(r.text)}
    assert "events_written" in families
    samples = [s for s in families["events_written"].samples if s.name == "events_written_total"]
    assert [(s.labels, s.value) for s in samples] == [
        ({"kind": "order.status", "source": "customer"}, 1.0)
    ]
    for name in ["http_requests", "ws_connections", "ws_slow_consumer_closes", "broker_delivering"]:
        assert name in families, name
    assert "events_written_total" in r.text


async def test_openapi_is_json_and_covers_every_api_route_and_nothing_else(
    service: Service,
) -> None:
    r = await service.http.get("/openapi.json")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/json")
    document = r.json()
    assert document["openapi"].startswith("3.")
    assert document["info"]["title"]
    documented = {
        (path, method)
        for path, item in document["paths"].items()
        for method in item
        if method in HTTP_METHODS
    }
    assert service.running.server is not None
    app = service.running.server.config.app
    assert isinstance(app, Starlette)
    served = api_routes(app)
    assert served, "the app has no /api routes?"
    assert {entry for entry in documented if entry[0].startswith("/api")} == served
    assert ("/healthz", "get") in documented and ("/readyz", "get") in documented
    served_paths = {route.path for route in app.routes if isinstance(route, Route)}
    assert {path for path, _ in documented} <= served_paths
    for path, method in documented:
        operation = document["paths"][path][method]
        assert operation.get("summary"), (path, method)
        assert operation.get("responses"), (path, method)


async def test_openapi_matches_a_freshly_built_app(service: Service) -> None:
    document = (await service.http.get("/openapi.json")).json()
    fresh = create_app(service.settings)
    documented = {
        (p, m) for p, item in document["paths"].items() for m in item if m in HTTP_METHODS
    }
    assert {e for e in documented if e[0].startswith("/api")} == api_routes(fresh)


async def test_openapi_references_only_components_it_defines(service: Service) -> None:
    document = (await service.http.get("/openapi.json")).json()
    defined = set(document.get("components", {}).get("schemas", {}))
    schemes = set(document.get("components", {}).get("securitySchemes", {}))

    def walk(node: object) -> None:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str):
                assert ref.startswith("#/components/schemas/"), ref
                assert ref.rsplit("/", 1)[1] in defined, ref
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(document["paths"])
    for item in document["paths"].values():
        for method, operation in item.items():
            for requirement in operation.get("security", []) if method in HTTP_METHODS else []:
                assert set(requirement) <= schemes


@pytest.mark.parametrize(
    "path",
    ["/nope", "/api", "/api/nope", "/api/orders/x/nope", "/api/pos", "/ws/extra", "/metrics/x"],
)
async def test_an_unknown_route_is_a_404_json_error(service: Service, path: str) -> None:
    r = await service.http.get(path, headers=auth(ALICE))
    assert_error(r, 404, "not_found")


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("DELETE", "/api/orders"),
        ("PUT", "/api/orders/ord_x"),
        ("DELETE", "/api/orders/ord_x"),
        ("GET", "/api/orders/ord_x/cancel"),
        ("GET", "/api/pos/orders/ord_x/status"),
        ("POST", "/api/events"),
        ("POST", "/healthz"),
        ("POST", "/metrics"),
    ],
)
async def test_a_wrong_method_is_a_405_json_error(service: Service, method: str, path: str) -> None:
    r = await service.http.request(method, path, headers=auth(ALICE))
    assert_error(r, 405, "method_not_allowed")


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("GET", "/api/orders/ord_x/cancel", {"POST"}),
        ("GET", "/api/pos/orders/ord_x/status", {"POST"}),
        ("POST", "/api/events", {"GET", "HEAD"}),
        # Two routes share the path: the Allow header names both.
        ("DELETE", "/api/orders", {"GET", "HEAD", "POST"}),
        # Beside the static /demo mount, which takes only GET and HEAD.
        ("OPTIONS", "/demo/token", {"POST"}),
        ("GET", "/demo/token", {"POST"}),
    ],
)
async def test_a_405_says_which_methods_are_allowed(
    service: Service, method: str, path: str, allowed: set[str]
) -> None:
    r = await service.http.request(method, path, headers=auth(ALICE))
    assert r.status_code == 405
    assert {m.strip() for m in r.headers.get("allow", "").split(",") if m.strip()} == allowed


async def test_a_plain_get_on_the_websocket_route_is_not_a_500(service: Service) -> None:
    r = await service.http.get("/ws")
    assert r.status_code < 500


async def test_every_response_carries_a_request_id_and_echoes_a_given_one(service: Service) -> None:
    first = await service.http.get("/healthz")
    second = await service.http.get("/healthz")
    assert first.headers["x-request-id"] != second.headers["x-request-id"]
    echoed = await service.http.get("/healthz", headers={"X-Request-ID": "trace-123"})
    assert echoed.headers["x-request-id"] == "trace-123"
    forged = await service.http.get("/healthz", headers={"X-Request-ID": "x" * 500})
    assert forged.headers["x-request-id"] != "x" * 500


async def test_openapi_lists_the_error_statuses_each_operation_can_return(
    service: Service,
) -> None:
    document = (await service.http.get("/openapi.json")).json()

    def statuses(path: str, method: str) -> set[str]:
        return set(document["paths"][path][method]["responses"])

    # 409: a repeat of an Idempotency-Key while its first request runs.
    assert statuses("/api/orders", "post") == {
        "201",
        "400",
        "401",
        "403",
        "409",
        "413",
        "422",
        "503",
    }
    assert statuses("/api/orders", "get") == {"200", "400", "401", "503"}
    assert statuses("/api/pos/orders", "get") == {"200", "400", "401", "403", "422", "503"}
    assert statuses("/api/events", "get") == {"200", "400", "401", "429", "503"}
    assert "409" in statuses("/api/pos/orders/{order_id}/status", "post")
    schemas = document["components"]["schemas"]
    # The declarations' constraints are in the document (the fuzz run found them missing once).
    sku = schemas["NewItem"]["properties"]["sku"]
    assert sku["minLength"] == 1 and sku["pattern"]
    cursor = next(
        p for p in document["paths"]["/api/orders"]["get"]["parameters"] if p["name"] == "cursor"
    )
    assert cursor["schema"]["pattern"] == "^[0-9]{1,16}_ord_[0-9a-f]{24}$"
    since = next(
        p for p in document["paths"]["/api/events"]["get"]["parameters"] if p["name"] == "since"
    )
    assert since["schema"]["maximum"] == 2**62
