"""The domain's refusals become the API's errors at one boundary, with the same body shape."""

from __future__ import annotations

import json

import pytest
from starlette.requests import Request

from orders import errors as domain
from server.errors import DOMAIN_STATUS, domain_status, handle_domain_error


def every_refusal() -> list[type[domain.DomainError]]:
    """Every DomainError class the domain defines (the module is the whole tree)."""
    return [
        value
        for value in vars(domain).values()
        if isinstance(value, type) and issubclass(value, domain.DomainError)
    ]


def test_every_refusal_of_the_domain_has_an_http_status_of_its_own() -> None:
    refusals = every_refusal()
    assert len(refusals) >= 7
    assert set(refusals) == set(DOMAIN_STATUS)


@pytest.mark.parametrize(
    ("refusal", "status", "code"),
    [
        (domain.NotFound, 404, "not_found"),
        (domain.Forbidden, 403, "forbidden"),
        (domain.Conflict, 409, "conflict"),
        (domain.Invalid, 422, "validation_error"),
        (domain.GatewayRefused, 502, "gateway_rejected"),
        (domain.GatewayUnreachable, 503, "gateway_unavailable"),
    ],
)
async def test_a_refusal_is_answered_with_its_status_code_and_extra_fields(
    refusal: type[domain.DomainError], status: int, code: str
) -> None:
    request = Request({"type": "http", "method": "POST", "path": "/", "headers": []})
    response = await handle_domain_error(request, refusal("no", allowed=["READY"]))
    assert response.status_code == status
    assert json.loads(bytes(response.body)) == {
        "error": {"code": code, "message": "no", "allowed": ["READY"]}
    }


def test_a_subclass_takes_the_status_of_its_nearest_ancestor_and_may_rename_its_code() -> None:
    class AlreadyPaid(domain.Conflict):
        code = "already_paid"

    refusal = AlreadyPaid("paid")
    assert domain_status(refusal) == 409 and refusal.code == "already_paid"
    assert domain_status(domain.Conflict("x", code="invalid_transition")) == 409
