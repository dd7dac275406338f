"""The OpenAPI document, generated from the declarations the endpoints validate with.

Each endpoint carries its contract next to it::

    @operation("Create an order", tag="orders", body=schemas.NewOrder,
               responses={201: ("Created", schemas.OrderCreated), 403: "Another store"})
    async def create(request): ...

and ``openapi_document`` walks the app's routes, turning every declared operation into its
path item: parameters from the query Struct's fields and the path's declared types, the request
body and every response from the same msgspec types, by reference to components made by
``msgspec.json.schema_components``. The error statuses that follow from what an operation takes
are added by rule (a body can be 400, 413 and 422; a token 401; a query 400; the database 503),
so a new endpoint cannot forget them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import msgspec
from starlette.routing import BaseRoute
from starlette.schemas import BaseSchemaGenerator

from server.api import schemas
from server.api.common import declared_fields
from server.settings import Settings

QueryType = type[msgspec.Struct] | Callable[[Settings], type[msgspec.Struct]]
#: status -> a description (an error, answered with schemas.Error) or (description, body type);
#: a body type of None means no JSON body; a str is a media type with a plain-text body.
Responses = Mapping[int, str | tuple[str, type[msgspec.Struct] | str | None]]

F = TypeVar("F", bound=Callable[..., Any])

_ERROR_DESCRIPTIONS = {
    400: "Malformed request: not JSON, a bad query parameter or Content-Length",
    401: "No valid Bearer token",
    403: "Not allowed for this caller's role or store",
    404: "No such resource (or not the caller's)",
    409: "Conflict",
    413: "Body larger than MAX_BODY_BYTES",
    422: "Validation error naming the field",
    502: "A gateway refused",
    429: "Too many requests (Retry-After)",
    503: "The database is unavailable; retry after Retry-After seconds",
}
_HEADERS = {
    401: {"WWW-Authenticate": {"schema": {"type": "string"}, "required": True}},
    429: {"Retry-After": {"schema": {"type": "string"}, "required": True}},
    # database_unavailable always says when; a gateway's 503 may not know.
    503: {"Retry-After": {"schema": {"type": "string"}, "required": False}},
}


@dataclass(frozen=True, slots=True)
class Operation:
    """One endpoint's contract."""

    summary: str
    tag: str
    responses: Responses
    body: type[msgspec.Struct] | None = None
    body_required: bool = True
    query: QueryType | None = None
    path: Mapping[str, Any] = field(default_factory=dict)
    secured: bool = True
    database: bool = True
    links: Mapping[int, Mapping[str, Any]] = field(default_factory=dict)


_OPERATIONS: dict[Callable[..., Any], Operation] = {}


def operation(
    summary: str,
    *,
    tag: str,
    responses: Responses,
    body: type[msgspec.Struct] | None = None,
    body_required: bool = True,
    query: QueryType | None = None,
    path: Mapping[str, Any] | None = None,
    secured: bool = True,
    database: bool = True,
    links: Mapping[int, Mapping[str, Any]] | None = None,
) -> Callable[[F], F]:
    """Declare the endpoint's contract (see the module docstring); the endpoint is unchanged."""
    spec = Operation(
        summary=summary,
        tag=tag,
        responses=responses,
        body=body,
        body_required=body_required,
        query=query,
        path=path or {},
        secured=secured,
        database=database,
        links=links or {},
    )

    def register(endpoint: F) -> F:
        _OPERATIONS[endpoint] = spec
        return endpoint

    return register


def query_type(query: QueryType, settings: Settings) -> type[msgspec.Struct]:
    """The query Struct of an operation, for this deployment's settings."""
    if isinstance(query, type):
        return query
    return query(settings)


def openapi_document(routes: Sequence[BaseRoute], settings: Settings) -> dict[str, Any]:
    """The OpenAPI 3.1 document of the operations among ``routes``."""
    return _Generator(settings).get_schema(list(routes))


class _Generator(BaseSchemaGenerator):
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def get_schema(self, routes: list[BaseRoute]) -> dict[str, Any]:
        found = [
            (info.path, info.http_method, _OPERATIONS[info.func])
            for info in self.get_endpoints(routes)
            if info.func in _OPERATIONS
        ]
        types: list[Any] = [schemas.Error]
        for _, _, spec in found:
            types.extend(_types_of(spec, self.settings))
        _, components = msgspec.json.schema_components(
            types, ref_template="#/components/schemas/{name}"
        )
        paths: dict[str, dict[str, Any]] = {}
        query_names: set[str] = set()
        for path, method, spec in found:
            query = query_type(spec.query, self.settings) if spec.query else None
            if query is not None:
                query_names.add(query.__name__)
            paths.setdefault(path, {})[method] = _path_item(spec, method, path, query, components)
        for name in query_names:
            # A query's fields are inlined as parameters; its object schema is not a body.
            components.pop(name, None)
        return {
            "openapi": "3.1.0",
            "info": {
                "title": "orderstatus",
                "version": "0.1.0",
                "description": "Errors are always {error: {code, message, ...}}.",
            },
            "paths": paths,
            "components": {
                "schemas": components,
                "securitySchemes": {
                    "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
                },
            },
        }


def _types_of(spec: Operation, settings: Settings) -> list[Any]:
    types: list[Any] = []
    if spec.body is not None:
        types.append(spec.body)
    if spec.query is not None:
        types.append(query_type(spec.query, settings))
    for value in spec.responses.values():
        if isinstance(value, tuple) and isinstance(value[1], type):
            types.append(value[1])
    return types


def _ref(kind: type[msgspec.Struct]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{kind.__name__}"}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _path_item(
    spec: Operation,
    method: str,
    path: str,
    query: type[msgspec.Struct] | None,
    components: dict[str, Any],
) -> dict[str, Any]:
    item: dict[str, Any] = {
        "operationId": _operation_id(method, path),
        "summary": spec.summary,
        "tags": [spec.tag],
    }
    if spec.secured:
        item["security"] = [{"bearer": []}]
    parameters = [
        {"name": name, "in": "path", "required": True, "schema": msgspec.json.schema(kind)}
        for name, kind in spec.path.items()
    ]
    if query is not None:
        parameters.extend(_query_parameters(components[query.__name__]))
    if parameters:
        item["parameters"] = parameters
    if spec.body is not None:
        item["requestBody"] = {"required": spec.body_required, "content": _json(_ref(spec.body))}
    item["responses"] = _responses(spec, query)
    return item


def _operation_id(method: str, path: str) -> str:
    words = [part.strip("{}") for part in path.strip("/").split("/") if part]
    return "_".join([method, *words]).replace(".", "_")


def _query_parameters(struct_schema: dict[str, Any]) -> list[dict[str, Any]]:
    required = set(struct_schema.get("required", ()))
    parameters = []
    for name, schema in struct_schema["properties"].items():
        schema = dict(schema)
        # An optional parameter is absent, never null.
        options = schema.pop("anyOf", None)
        if options is not None:
            (present,) = [o for o in options if o != {"type": "null"}]
            schema = {**present, **schema}
        if schema.get("default", 0) is None:
            del schema["default"]
        parameters.append(
            {"name": name, "in": "query", "required": name in required, "schema": schema}
        )
    return parameters


def _query_error_statuses(query: type[msgspec.Struct]) -> set[int]:
    declared = declared_fields(query).values()
    return {400} | {field.error[0] for field in declared if field.error}


def _responses(spec: Operation, query: type[msgspec.Struct] | None) -> dict[str, Any]:
    statuses: dict[int, str | tuple[str, type[msgspec.Struct] | str | None]] = {}
    implied: set[int] = set()
    if spec.secured:
        implied.add(401)
    if spec.body is not None:
        implied |= {400, 413, 422}
    if query is not None:
        implied |= _query_error_statuses(query)
    if spec.database:
        implied.add(503)
    for status in sorted(implied):
        statuses[status] = _ERROR_DESCRIPTIONS[status]
    statuses.update(spec.responses)
    out: dict[str, Any] = {}
    for status, value in sorted(statuses.items()):
        if isinstance(value, str):
            response: dict[str, Any] = {"description": value, "content": _json(_ref(schemas.Error))}
        else:
            description, kind = value
            response = {"description": description}
            if isinstance(kind, type):
                response["content"] = _json(_ref(kind))
            elif isinstance(kind, str):
                response["content"] = {kind: {"schema": {"type": "string"}}}
        if status in _HEADERS:
            response["headers"] = _HEADERS[status]
        if status in spec.links:
            response["links"] = dict(spec.links[status])
        out[str(status)] = response
    return out
