"""Every adapter: transport errors, timeouts, 5xx and 429 are GatewayUnavailable; 4xx Rejected."""

from __future__ import annotations

import email.utils
from collections.abc import Callable

import httpx
import pytest

from gateways.base import Gateway, GatewayRejected, GatewayUnavailable
from gateways.phonepe import PhonePeConfig, PhonePeGateway
from gateways.sandbox import SandboxConfig, SandboxGateway
from gateways.stripe import StripeConfig, StripeGateway
from tests.gateways import recorded
from tests.gateways.mock import Answer, Clock, Recorder

CLOCK_NOW = 1_780_000_000.0


def _stripe(recorder: Recorder) -> Gateway:
    config = StripeConfig(api_key="sk_test_1", webhook_secret="whsec_1", api_base="https://s.test")
    return StripeGateway(config, client=recorder.client(), clock=Clock(CLOCK_NOW))


def _phonepe_v1(recorder: Recorder) -> Gateway:
    config = PhonePeConfig(merchant_id="MID", salt_key="salt", api_base="https://p.test")
    return PhonePeGateway(config, client=recorder.client(), clock=Clock(CLOCK_NOW))


def _phonepe_v2(recorder: Recorder) -> Gateway:
    recorder.routes[("POST", "/v1/oauth/token")] = httpx.Response(
        200, json=recorded.PHONEPE_V2_TOKEN
    )
    config = PhonePeConfig(client_id="CID", client_secret="sec", api_base="https://p.test")
    return PhonePeGateway(config, client=recorder.client(), clock=Clock(CLOCK_NOW))


def _sandbox(recorder: Recorder) -> Gateway:
    config = SandboxConfig(api_base="https://sb.test", webhook_secret="s")
    return SandboxGateway(config, client=recorder.client(), clock=Clock(CLOCK_NOW))


STATUS_PATHS: dict[str, tuple[Callable[[Recorder], Gateway], str, str]] = {
    "stripe": (_stripe, "pi_1", "/v1/payment_intents/pi_1"),
    "phonepe_v1": (_phonepe_v1, "MT1", "/pg/v1/status/MID/MT1"),
    "phonepe_v2": (_phonepe_v2, "MO1", "/checkout/v2/order/MO1/status"),
    "sandbox": (_sandbox, "sbx_1", "/api/payments/sbx_1"),
}


def _connect_error(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("connection refused", request=request)


def _read_timeout(request: httpx.Request) -> httpx.Response:
    raise httpx.ReadTimeout("timed out", request=request)


def _connect_timeout(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectTimeout("timed out", request=request)


def _protocol_error(request: httpx.Request) -> httpx.Response:
    raise httpx.RemoteProtocolError("server disconnected", request=request)


UNAVAILABLE: dict[str, tuple[Answer, float | None]] = {
    "connection refused": (_connect_error, None),
    "read timeout": (_read_timeout, None),
    "connect timeout": (_connect_timeout, None),
    "dropped connection": (_protocol_error, None),
    "500": (httpx.Response(500, text="oops"), None),
    "502 html": (httpx.Response(502, text="<html>bad gateway</html>"), None),
    "503 retry-after": (httpx.Response(503, headers={"Retry-After": "30"}), 30.0),
    "429 retry-after seconds": (httpx.Response(429, headers={"Retry-After": "7"}), 7.0),
    "429 retry-after date": (
        httpx.Response(
            429, headers={"Retry-After": email.utils.formatdate(CLOCK_NOW + 12, usegmt=True)}
        ),
        12.0,
    ),
    "429 bare": (httpx.Response(429), None),
    "408": (httpx.Response(408), None),
    "200 not json": (httpx.Response(200, text="<html>maintenance</html>"), None),
    "200 json list": (httpx.Response(200, json=[1, 2]), None),
}


@pytest.mark.parametrize("answer", list(UNAVAILABLE))
@pytest.mark.parametrize("adapter", list(STATUS_PATHS))
async def test_transport_errors_timeouts_5xx_and_429_are_unavailable_never_a_failure(
    adapter: str, answer: str
) -> None:
    make, ref, path = STATUS_PATHS[adapter]
    response, retry_after = UNAVAILABLE[answer]
    recorder = Recorder({("GET", path): response})
    with pytest.raises(GatewayUnavailable) as caught:
        await make(recorder).fetch_status(ref)
    assert caught.value.retry_after == retry_after
    assert isinstance(caught.value.__cause__, httpx.HTTPError | ValueError | type(None))


REJECTED = {
    "400": httpx.Response(400, json={"error": {"code": "bad"}, "code": "BAD_REQUEST"}),
    "401": httpx.Response(401, json={"code": "AUTHORIZATION_FAILED"}),
    "403": httpx.Response(403, text="forbidden"),
    "422": httpx.Response(422, json={"error": {"code": "validation_error"}}),
}


@pytest.mark.parametrize("answer", list(REJECTED))
@pytest.mark.parametrize("adapter", list(STATUS_PATHS))
async def test_a_4xx_is_rejected(adapter: str, answer: str) -> None:
    make, ref, path = STATUS_PATHS[adapter]
    recorder = Recorder({("GET", path): REJECTED[answer]})
    with pytest.raises(GatewayRejected) as caught:
        await make(recorder).fetch_status(ref)
    assert caught.value.status_code == int(answer)
