"""Request helpers shared by the API modules: the caller's principal, the body and the query,
each validated against its declaration in ``server.api.schemas``."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec
import orjson
from msgspec import inspect
from starlette.requests import Request

from server.auth import AuthError, Principal, Role, bearer_token
from server.errors import ApiError, BadRequest, Forbidden, PayloadTooLarge, Unauthenticated
from server.services import services

S = TypeVar("S", bound=msgspec.Struct)

_INVALID_BODY = (422, "validation_error")
_INVALID_QUERY = (400, "invalid_query")


def principal(request: Request, *roles: Role) -> Principal:
    """The verified caller; 401 without a valid token, 403 if its role is not in ``roles``."""
    token = bearer_token(request.headers.get("authorization"))
    if token is None:
        raise Unauthenticated("an Authorization: Bearer token is required")
    try:
        caller = services(request).verifier.verify(token)
    except AuthError as exc:
        raise Unauthenticated(str(exc)) from None
    if roles and caller.role not in roles:
        raise Forbidden(f"this call is not for role {caller.role.value}")
    return caller


async def read_body(request: Request) -> bytes:
    """The request's body, bounded by MAX_BODY_BYTES; 413 (or 400 for a bad Content-Length)."""
    limit = services(request).settings.max_body_bytes
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise PayloadTooLarge(f"body larger than {limit} bytes")
        except ValueError:
            raise BadRequest("bad Content-Length") from None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"body larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def body(request: Request, kind: type[S], *, required: bool = True) -> S:
    """The JSON body as a ``kind``; 400 ``invalid_json``, 413, or 422 naming the bad field."""
    raw = await read_body(request)
    if not raw.strip():
        if required:
            raise BadRequest("a JSON body is required", code="invalid_json")
        raw = b"{}"
    return decode_body(raw, kind)


def decode_body(raw: bytes, kind: type[S]) -> S:
    """``raw`` JSON decoded and validated as a ``kind`` (the errors of ``body``)."""
    try:
        decoded: S = _decoder(kind).decode(raw)
    except msgspec.ValidationError as exc:
        # msgspec stops at the first field it cannot take, which may come before a syntax error
        # further on: a body that is not JSON at all must still say so. Only on this path.
        try:
            orjson.loads(raw)
        except orjson.JSONDecodeError as syntax:
            raise BadRequest(f"body is not valid JSON: {syntax}", code="invalid_json") from None
        raise _problem(kind, str(exc), default=_INVALID_BODY) from None
    except (msgspec.DecodeError, RecursionError) as exc:
        raise BadRequest(f"body is not valid JSON: {exc}", code="invalid_json") from None
    return decoded


# An integer in a query string: ASCII digits, bounded so int() never meets a 5,000-digit string.
_QUERY_INT = re.compile(r"-?[0-9]{1,40}")
_QUERY_BOOL = {"true": True, "false": False}


def query(request: Request, kind: type[S]) -> S:
    """The query string as a ``kind``; 400 ``invalid_query`` (or the field's own error).

    An empty value is a value (``limit=`` is not an integer); parameters ``kind`` does not
    declare are ignored.
    """
    integers, booleans = _typed_fields(kind)
    data: dict[str, Any] = {}
    for name, value in request.query_params.items():
        if name in integers and _QUERY_INT.fullmatch(value):
            data[name] = int(value)
        elif name in booleans and value in _QUERY_BOOL:
            data[name] = _QUERY_BOOL[value]
        else:
            data[name] = value
    try:
        parsed: S = msgspec.convert(data, kind)
    except msgspec.ValidationError as exc:
        raise _problem(kind, str(exc), default=_INVALID_QUERY) from None
    return parsed


@functools.cache
def _decoder(kind: type[S]) -> msgspec.json.Decoder[S]:
    return msgspec.json.Decoder(kind)


@functools.cache
def _typed_fields(kind: type[msgspec.Struct]) -> tuple[frozenset[str], frozenset[str]]:
    """The names of ``kind``'s integer fields and of its boolean fields."""
    fields = declared_fields(kind).items()
    return (
        frozenset(name for name, f in fields if isinstance(f.type, inspect.IntType)),
        frozenset(name for name, f in fields if isinstance(f.type, inspect.BoolType)),
    )


@functools.cache
def declared_fields(kind: type[msgspec.Struct]) -> dict[str, Declared]:
    """What ``kind`` declares of each of its fields, by JSON name."""
    return {f.encode_name: _field(f.type) for f in _struct_info(kind).fields}


@functools.cache
def _struct_info(kind: type[msgspec.Struct]) -> inspect.StructType:
    info = inspect.type_info(kind)
    assert isinstance(info, inspect.StructType)
    return info


@dataclass
class Declared:
    """What a declaration says of one field: its unwrapped type and its Meta."""

    type: inspect.Type
    description: str | None = None
    error: tuple[int, str] | None = None


def _field(kind: inspect.Type) -> Declared:
    found = Declared(kind)
    while True:
        if isinstance(kind, inspect.Metadata):
            found.description = (kind.extra_json_schema or {}).get("description", found.description)
            found.error = (kind.extra or {}).get("error", found.error)
            kind = kind.type
        elif isinstance(kind, inspect.UnionType):
            kind = next(t for t in kind.types if not isinstance(t, inspect.NoneType))
        else:
            found.type = kind
            return found


_AT = re.compile(r"(?P<what>.*?)(?: - at `\$(?P<path>[^`]*)`)?", re.DOTALL)
_SEGMENT = re.compile(r"\.([^.\[]+)|\[(\d+)\]")
_UNKNOWN = re.compile(r"Object contains unknown field `(?P<name>.*)`")
_MISSING = re.compile(r"Object missing required field `(?P<name>.*)`")


def _lookup(kind: type[msgspec.Struct], path: str) -> Declared | None:
    """The declaration of the field at msgspec's error ``path`` (``.items[0].sku``)."""
    current: inspect.Type = _struct_info(kind)
    for name, index in _SEGMENT.findall(path):
        current = _field(current).type
        if index and isinstance(current, inspect.ListType):
            current = current.item_type
        elif name and isinstance(current, inspect.StructType):
            field = next((f for f in current.fields if f.encode_name == name), None)
            if field is None:
                return None
            current = field.type
        else:
            return None
    return _field(current) if path else None


def _problem(kind: type[msgspec.Struct], text: str, *, default: tuple[int, str]) -> ApiError:
    """msgspec's validation error as the API's error, naming the field."""
    match = _AT.fullmatch(text)
    assert match is not None  # the pattern matches any text
    what, path = match["what"], (match["path"] or "")
    where = path.removeprefix(".")
    for pattern, template in ((_UNKNOWN, "unknown field {}"), (_MISSING, "{} is required")):
        named = pattern.fullmatch(what)
        if named:
            field = f"{where}.{named['name']}" if where else named["name"]
            status, code = default
            return _error(status, code, template.format(field), field)
    if not where:
        # The body as a whole is of the wrong type (an array, a string, null).
        detail = what[:1].lower() + what[1:]
        return BadRequest(f"body must be a JSON object ({detail})", code="invalid_json")
    declared = _lookup(kind, path)
    status, code = (declared and declared.error) or default
    if declared and isinstance(declared.type, inspect.EnumType):
        allowed = [member.value for member in declared.type.cls]
        message = f"{where} must be one of " + ", ".join(allowed)
    elif declared and isinstance(declared.type, inspect.LiteralType):
        message = f"{where} must be one of " + ", ".join(map(str, declared.type.values))
    elif declared and declared.description:
        message = f"{where} must be {declared.description}"
    else:
        message = f"{where}: {what[:1].lower()}{what[1:]}"
    return _error(status, code, message, where)


def _error(status: int, code: str, message: str, field: str) -> ApiError:
    error = ApiError(message, code=code, field=field)
    error.status = status
    return error
