"""PhonePe adapter, v1 and v2, against recorded payloads through httpx.MockTransport.

Checksums are recomputed here from PhonePe's documented formulas (no SDK exposes the v1 one);
the v2 callback check is also compared with phonepe-pg-sdk-python's where that is installed.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json

import httpx
import pytest

from gateways.base import (
    GatewayRejected,
    GatewayUnavailable,
    InvalidSignature,
    PaymentRequest,
    PaymentStatus,
    RefundRequest,
    RefundStatus,
)
from gateways.phonepe import PhonePeConfig, PhonePeGateway, v2_callback_authorization
from tests.gateways import recorded
from tests.gateways.mock import Clock, Recorder, body, form

BASE = "https://phonepe.test/apis/hermes"
SALT = "099eb0cd-02cf-4e2a-8aca-3e6c6aff0399"  # PhonePe's published UAT salt key
V1 = PhonePeConfig(
    merchant_id="PGTESTPAYUAT",
    salt_key=SALT,
    salt_index=1,
    api_base=BASE,
    callback_url="https://shop.test/webhooks/phonepe",
)
V2 = PhonePeConfig(
    client_id="TESTCLIENT",
    client_secret="c2VjcmV0",
    client_version=1,
    callback_username="merchant_user",
    callback_password="passw0rd123",
    api_base="https://phonepe.test/apis/pg",
    auth_base="https://phonepe.test/apis/identity-manager",
)


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def pay_request(**changes: object) -> PaymentRequest:
    values: dict[str, object] = {
        "reference": "MT7850590068188104",
        "amount": 10000,
        "currency": "INR",
        "return_url": "https://shop.test/demo/customer.html",
        "customer_ref": "cust-42",
        "metadata": {"order_id": "ord_42"},
    }
    values.update(changes)
    return PaymentRequest(**values)  # type: ignore[arg-type]


# --- v1 ---------------------------------------------------------------------------------------


async def test_v1_pay_sends_the_base64_payload_with_its_x_verify() -> None:
    recorder = Recorder(
        {("POST", "/apis/hermes/pg/v1/pay"): httpx.Response(200, json=recorded.PHONEPE_V1_PAY)}
    )
    start = await PhonePeGateway(V1, client=recorder.client()).start_payment(pay_request())
    (sent,) = recorder.requests
    assert str(sent.url) == BASE + "/pg/v1/pay"
    assert sent.headers["content-type"] == "application/json"
    encoded = body(sent)["request"]
    assert json.loads(base64.b64decode(encoded)) == {
        "merchantId": "PGTESTPAYUAT",
        "merchantTransactionId": "MT7850590068188104",
        "merchantUserId": "cust-42",
        "amount": 10000,
        "redirectUrl": "https://shop.test/demo/customer.html",
        "redirectMode": "REDIRECT",
        "callbackUrl": "https://shop.test/webhooks/phonepe",
        "paymentInstrument": {"type": "PAY_PAGE"},
    }
    # SHA256(base64 payload + "/pg/v1/pay" + salt key) + "###" + salt index
    assert sent.headers["x-verify"] == sha256(encoded + "/pg/v1/pay" + SALT) + "###1"
    assert start.ref == "MT7850590068188104"
    assert start.redirect_url is not None and start.redirect_url.startswith("https://mercury-uat")
    assert start.state.status is PaymentStatus.INITIATED


async def test_v1_takes_inr_only_and_sends_nothing_otherwise() -> None:
    recorder = Recorder()
    with pytest.raises(GatewayRejected):
        await PhonePeGateway(V1, client=recorder.client()).start_payment(
            pay_request(currency="USD")
        )
    assert recorder.requests == []


STATUS_PATH = "/apis/hermes/pg/v1/status/PGTESTPAYUAT/MT7850590068188104"


@pytest.mark.parametrize(
    ("response", "status"),
    [
        (httpx.Response(200, json=recorded.PHONEPE_V1_STATUS_SUCCESS), PaymentStatus.COMPLETED),
        (httpx.Response(200, json=recorded.PHONEPE_V1_STATUS_PENDING), PaymentStatus.PENDING),
        (httpx.Response(200, json=recorded.PHONEPE_V1_INTERNAL_ERROR), PaymentStatus.UNKNOWN),
        (httpx.Response(404, json=recorded.PHONEPE_V1_NOT_FOUND), PaymentStatus.UNKNOWN),
        (httpx.Response(200, json=recorded.PHONEPE_V1_NOT_FOUND), PaymentStatus.UNKNOWN),
        (httpx.Response(400, json=recorded.PHONEPE_V1_INTERNAL_ERROR), PaymentStatus.UNKNOWN),
    ],
)
async def test_v1_status_call_is_signed_over_its_path_and_decided_on_code_and_state(
    response: httpx.Response, status: PaymentStatus
) -> None:
    recorder = Recorder({("GET", STATUS_PATH): response})
    state = await PhonePeGateway(V1, client=recorder.client()).fetch_status("MT7850590068188104")
    (sent,) = recorder.requests
    assert sent.method == "GET"
    path = "/pg/v1/status/PGTESTPAYUAT/MT7850590068188104"
    assert sent.headers["x-verify"] == sha256(path + SALT) + "###1"
    assert sent.headers["x-merchant-id"] == "PGTESTPAYUAT"
    assert sent.headers["content-type"] == "application/json"
    assert state.status is status
    if status is PaymentStatus.COMPLETED:
        assert state.gateway_transaction_id == "T2111221437456190170379"
        assert (state.amount, state.currency) == (100, "INR")


async def test_v1_too_many_requests_in_a_200_body_is_unavailable() -> None:
    answer = {"success": False, "code": "TOO_MANY_REQUESTS", "message": "slow down"}
    recorder = Recorder({("GET", STATUS_PATH): httpx.Response(200, json=answer)})
    with pytest.raises(GatewayUnavailable):
        await PhonePeGateway(V1, client=recorder.client()).fetch_status("MT7850590068188104")


async def test_v1_bad_request_is_rejected() -> None:
    answer = {"success": False, "code": "BAD_REQUEST", "message": "bad"}
    recorder = Recorder({("GET", STATUS_PATH): httpx.Response(400, json=answer)})
    with pytest.raises(GatewayRejected):
        await PhonePeGateway(V1, client=recorder.client()).fetch_status("MT7850590068188104")


def v1_callback(
    response_b64: str, *, salt: str = SALT, index: int = 1
) -> tuple[dict[str, str], bytes]:
    raw = json.dumps({"response": response_b64}).encode()
    return {"X-VERIFY": sha256(response_b64 + salt) + f"###{index}"}, raw


def test_v1_callback_is_verified_over_the_base64_response_and_parsed() -> None:
    headers, raw = v1_callback(recorded.PHONEPE_V1_CALLBACK_RESPONSE)
    parsed = PhonePeGateway(V1, client=httpx.AsyncClient()).verify_webhook(headers, raw)
    assert parsed.trusted is True
    assert parsed.ref == "merchantTransactionId"
    assert parsed.state is not None and parsed.state.status is PaymentStatus.FAILED
    assert parsed.event_id == "merchantTransactionId:PAYMENT_ERROR:FTX23060115431957163239"


@pytest.mark.parametrize("case", ["tampered", "other_salt", "other_index", "missing", "not_json"])
def test_v1_bad_callback_is_refused(case: str) -> None:
    good = recorded.PHONEPE_V1_CALLBACK_RESPONSE
    headers, raw = v1_callback(good)
    if case == "tampered":
        # Signed response, another body: the checksum binds it.
        tampered = base64.b64encode(
            base64.b64decode(good).replace(b"FAILED", b"COMPLETED")
        ).decode()
        raw = json.dumps({"response": tampered}).encode()
    elif case == "other_salt":
        headers, raw = v1_callback(good, salt="another-salt")
    elif case == "other_index":
        headers, raw = v1_callback(good, index=2)
    elif case == "missing":
        headers = {}
    elif case == "not_json":
        raw = b"response=" + good.encode()
    with pytest.raises(InvalidSignature):
        PhonePeGateway(V1, client=httpx.AsyncClient()).verify_webhook(headers, raw)


async def test_v1_refund_is_signed_over_its_path_and_its_state_read_by_status() -> None:
    refund_path = "/apis/hermes/pg/v1/refund"
    status_path = "/apis/hermes/pg/v1/status/PGTESTPAYUAT/ROD620471739210623"
    done = {**recorded.PHONEPE_V1_REFUND, "code": "PAYMENT_SUCCESS"}
    done["data"] = {**recorded.PHONEPE_V1_REFUND["data"], "state": "COMPLETED"}
    recorder = Recorder(
        {
            ("POST", refund_path): httpx.Response(200, json=recorded.PHONEPE_V1_REFUND),
            ("GET", status_path): httpx.Response(200, json=done),
        }
    )
    gateway = PhonePeGateway(V1, client=recorder.client())
    refund = await gateway.refund(
        RefundRequest(
            reference="ROD620471739210623",
            payment_ref="OD620471739210623",
            amount=1000,
            currency="INR",
            customer_ref="User123",
        )
    )
    sent = recorder.requests[0]
    encoded = body(sent)["request"]
    assert json.loads(base64.b64decode(encoded)) == {
        "merchantId": "PGTESTPAYUAT",
        "merchantUserId": "User123",
        "originalTransactionId": "OD620471739210623",
        "merchantTransactionId": "ROD620471739210623",
        "amount": 1000,
        "callbackUrl": "https://shop.test/webhooks/phonepe",
    }
    assert sent.headers["x-verify"] == sha256(encoded + "/pg/v1/refund" + SALT) + "###1"
    assert refund.status is RefundStatus.PENDING
    later = await gateway.fetch_refund("ROD620471739210623")
    assert later.status is RefundStatus.SUCCEEDED


# --- v2 ---------------------------------------------------------------------------------------

TOKEN_PATH = "/apis/identity-manager/v1/oauth/token"
PAY_PATH = "/apis/pg/checkout/v2/pay"
ORDER_STATUS = "/apis/pg/checkout/v2/order/MO1/status"


def token(expires_at: float, access: str = "tok-1") -> httpx.Response:
    return httpx.Response(
        200,
        json={**recorded.PHONEPE_V2_TOKEN, "access_token": access, "expires_at": int(expires_at)},
    )


async def test_v2_fetches_an_oauth_token_then_pays_with_it() -> None:
    clock = Clock()
    recorder = Recorder(
        {
            ("POST", TOKEN_PATH): token(clock.now + 3600),
            ("POST", PAY_PATH): httpx.Response(200, json=recorded.PHONEPE_V2_PAY),
        }
    )
    start = await PhonePeGateway(V2, client=recorder.client(), clock=clock).start_payment(
        pay_request(reference="MO1", description="Order 42")
    )
    token_request, pay = recorder.requests
    assert str(token_request.url) == "https://phonepe.test/apis/identity-manager/v1/oauth/token"
    assert token_request.headers["content-type"] == "application/x-www-form-urlencoded"
    assert form(token_request) == {
        "client_id": "TESTCLIENT",
        "client_version": "1",
        "client_secret": "c2VjcmV0",
        "grant_type": "client_credentials",
    }
    assert str(pay.url) == "https://phonepe.test/apis/pg/checkout/v2/pay"
    assert pay.headers["authorization"] == "O-Bearer tok-1"
    assert body(pay) == {
        "merchantOrderId": "MO1",
        "amount": 10000,
        "paymentFlow": {
            "type": "PG_CHECKOUT",
            "message": "Order 42",
            "merchantUrls": {"redirectUrl": "https://shop.test/demo/customer.html"},
        },
        "metaInfo": {"udf1": "order_id=ord_42"},
    }
    assert start.redirect_url == recorded.PHONEPE_V2_PAY["redirectUrl"]
    assert start.state.status is PaymentStatus.INITIATED


async def test_v2_token_is_cached_until_shortly_before_it_expires_then_refreshed() -> None:
    clock = Clock()
    recorder = Recorder(
        {
            ("POST", TOKEN_PATH): [
                token(clock.now + 600, "tok-1"),
                token(clock.now + 1200, "tok-2"),
            ],
            ("GET", ORDER_STATUS): httpx.Response(200, json=recorded.PHONEPE_V2_STATUS_COMPLETED),
        }
    )
    gateway = PhonePeGateway(V2, client=recorder.client(), clock=clock)
    for _ in range(3):
        await gateway.fetch_status("MO1")
    assert len(recorder.sent("POST", TOKEN_PATH)) == 1
    clock.now += 600 - 61  # still more than the 60 s margin left
    await gateway.fetch_status("MO1")
    assert len(recorder.sent("POST", TOKEN_PATH)) == 1
    clock.now += 2  # within the margin: refresh before using it
    await gateway.fetch_status("MO1")
    assert len(recorder.sent("POST", TOKEN_PATH)) == 2
    auths = [r.headers["authorization"] for r in recorder.sent("GET", ORDER_STATUS)]
    assert auths == ["O-Bearer tok-1"] * 4 + ["O-Bearer tok-2"]


async def test_v2_concurrent_calls_share_one_token_fetch() -> None:
    clock = Clock()
    release = asyncio.Event()

    async def slow_token(request: httpx.Request) -> httpx.Response:
        await release.wait()
        return token(clock.now + 3600)

    recorder = Recorder(
        {("GET", ORDER_STATUS): httpx.Response(200, json=recorded.PHONEPE_V2_STATUS_COMPLETED)}
    )

    async def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == TOKEN_PATH:
            recorder.requests.append(request)
            return await slow_token(request)
        return recorder.handler(request)

    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    gateway = PhonePeGateway(V2, client=client, clock=clock)
    calls = [asyncio.create_task(gateway.fetch_status("MO1")) for _ in range(10)]
    # Everything here is in memory (MockTransport): each call reaches its wait — the token
    # request or the lock behind it — within a few event-loop iterations, whatever the
    # machine's speed. Counting iterations, not seconds, makes that hold on every run.
    for _ in range(100):
        await asyncio.sleep(0)
    assert len(recorder.sent("POST", TOKEN_PATH)) == 1 and not any(c.done() for c in calls)
    release.set()
    async with asyncio.timeout(5):
        states = await asyncio.gather(*calls)
    assert {s.status for s in states} == {PaymentStatus.COMPLETED}
    assert len(recorder.sent("POST", TOKEN_PATH)) == 1


async def test_v2_a_401_drops_the_token_and_retries_once_with_a_new_one() -> None:
    clock = Clock()
    recorder = Recorder(
        {
            ("POST", TOKEN_PATH): [
                token(clock.now + 3600, "revoked"),
                token(clock.now + 3600, "fresh"),
            ],
            ("GET", ORDER_STATUS): [
                httpx.Response(401, json={"code": "UNAUTHORIZED"}),
                httpx.Response(200, json=recorded.PHONEPE_V2_STATUS_COMPLETED),
            ],
        }
    )
    state = await PhonePeGateway(V2, client=recorder.client(), clock=clock).fetch_status("MO1")
    assert state.status is PaymentStatus.COMPLETED
    auths = [r.headers["authorization"] for r in recorder.sent("GET", ORDER_STATUS)]
    assert auths == ["O-Bearer revoked", "O-Bearer fresh"]


async def test_v2_bad_credentials_are_rejected_and_a_token_outage_is_unavailable() -> None:
    recorder = Recorder(
        {("POST", TOKEN_PATH): httpx.Response(400, json={"code": "INVALID_CLIENT"})}
    )
    with pytest.raises(GatewayRejected):
        await PhonePeGateway(V2, client=recorder.client(), clock=Clock()).fetch_status("MO1")
    recorder = Recorder({("POST", TOKEN_PATH): httpx.Response(503)})
    with pytest.raises(GatewayUnavailable):
        await PhonePeGateway(V2, client=recorder.client(), clock=Clock()).fetch_status("MO1")


COMPLETED = recorded.PHONEPE_V2_STATUS_COMPLETED
TXN = "OM2403282020198651071949"


@pytest.mark.parametrize(
    ("response", "status", "transaction"),
    [
        (httpx.Response(200, json=COMPLETED), PaymentStatus.COMPLETED, TXN),
        (httpx.Response(200, json={**COMPLETED, "state": "FAILED"}), PaymentStatus.FAILED, TXN),
        (
            httpx.Response(200, json={"orderId": "O", "state": "PENDING"}),
            PaymentStatus.PENDING,
            None,
        ),
        (httpx.Response(404, json=recorded.PHONEPE_V2_NOT_FOUND), PaymentStatus.UNKNOWN, None),
        (httpx.Response(200, json={"orderId": "O", "state": "NEW"}), PaymentStatus.UNKNOWN, None),
    ],
)
async def test_v2_order_status_reads_the_root_state(
    response: httpx.Response, status: PaymentStatus, transaction: str | None
) -> None:
    clock = Clock()
    recorder = Recorder(
        {("POST", TOKEN_PATH): token(clock.now + 3600), ("GET", ORDER_STATUS): response}
    )
    state = await PhonePeGateway(V2, client=recorder.client(), clock=clock).fetch_status("MO1")
    (sent,) = recorder.sent("GET", ORDER_STATUS)
    assert sent.headers["authorization"] == "O-Bearer tok-1"
    assert state.status is status
    assert state.gateway_transaction_id == transaction


def test_v2_callback_is_only_a_hint() -> None:
    raw = json.dumps(recorded.PHONEPE_V2_WEBHOOK_COMPLETED).encode()
    headers = {"Authorization": sha256("merchant_user:passw0rd123")}
    parsed = PhonePeGateway(V2, client=httpx.AsyncClient()).verify_webhook(headers, raw)
    assert parsed.trusted is False
    assert parsed.ref == "MO1"
    assert parsed.state is not None and parsed.state.status is PaymentStatus.COMPLETED
    assert parsed.event_id == "checkout.order.completed:OMO2403282020198641071317:COMPLETED"


def test_v2_refund_callback_carries_the_refund() -> None:
    raw = json.dumps(recorded.PHONEPE_V2_WEBHOOK_REFUND).encode()
    headers = {"authorization": sha256("merchant_user:passw0rd123")}
    parsed = PhonePeGateway(V2, client=httpx.AsyncClient()).verify_webhook(headers, raw)
    assert parsed.trusted is False
    assert parsed.state is None
    assert parsed.refund is not None and parsed.refund.status is RefundStatus.SUCCEEDED
    assert parsed.refund.reference == "R1"


@pytest.mark.parametrize("authorization", ["", "wrong", sha256("merchant_user:other"), None])
def test_v2_callback_with_the_wrong_authorization_is_refused(authorization: str | None) -> None:
    raw = json.dumps(recorded.PHONEPE_V2_WEBHOOK_COMPLETED).encode()
    headers = {} if authorization is None else {"Authorization": authorization}
    with pytest.raises(InvalidSignature):
        PhonePeGateway(V2, client=httpx.AsyncClient()).verify_webhook(headers, raw)


@pytest.mark.parametrize(
    ("username", "password"), [("merchant_user", "passw0rd123"), ("u", "p:q"), ("ünï", "cödé")]
)
def test_v2_callback_authorization_matches_phonepes_sdk(username: str, password: str) -> None:
    hash_utils = pytest.importorskip("phonepe.sdk.pg.common.utils.hash_utils")
    ours = v2_callback_authorization(username, password)
    assert hash_utils.is_callback_valid(username, password, ours)
    assert not hash_utils.is_callback_valid(username, password + "x", ours)


async def test_v2_refund_and_refund_status() -> None:
    clock = Clock()
    recorder = Recorder(
        {
            ("POST", TOKEN_PATH): token(clock.now + 3600),
            ("POST", "/apis/pg/payments/v2/refund"): httpx.Response(
                200, json=recorded.PHONEPE_V2_REFUND
            ),
            ("GET", "/apis/pg/payments/v2/refund/R1/status"): httpx.Response(
                200, json=recorded.PHONEPE_V2_REFUND_STATUS
            ),
        }
    )
    gateway = PhonePeGateway(V2, client=recorder.client(), clock=clock)
    refund = await gateway.refund(
        RefundRequest(reference="R1", payment_ref="MO1", amount=1234, currency="INR")
    )
    (sent,) = recorder.sent("POST", "/apis/pg/payments/v2/refund")
    assert body(sent) == {
        "merchantRefundId": "R1",
        "originalMerchantOrderId": "MO1",
        "amount": 1234,
    }
    assert refund.status is RefundStatus.PENDING
    assert refund.refund_ref == "OMR7878098045517540996"
    later = await gateway.fetch_refund("R1")
    assert later.status is RefundStatus.SUCCEEDED


def test_config_says_which_scheme_and_refuses_half_credentials() -> None:
    assert V1.scheme == "v1" and V2.scheme == "v2"
    assert PhonePeConfig(client_id="c", client_secret="s").resolved_auth_base.endswith(
        "identity-manager"
    )
    with pytest.raises(ValueError, match="PHONEPE_CLIENT_SECRET"):
        PhonePeConfig(client_id="c")
    with pytest.raises(ValueError, match="PHONEPE_MERCHANT_ID"):
        PhonePeConfig(merchant_id="m")


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (
            {"success": False, "code": "BAD_REQUEST", "message": "Please check the inputs"},
            GatewayRejected,
        ),
        (
            {"success": False, "code": "INTERNAL_SERVER_ERROR", "message": "retry"},
            GatewayUnavailable,
        ),
        (
            {"success": False, "code": "TOO_MANY_REQUESTS", "message": "slow down"},
            GatewayUnavailable,
        ),
    ],
)
async def test_v1_pay_refused_in_a_200_body(
    answer: dict[str, object], error: type[Exception]
) -> None:
    recorder = Recorder({("POST", "/apis/hermes/pg/v1/pay"): httpx.Response(200, json=answer)})
    with pytest.raises(error):
        await PhonePeGateway(V1, client=recorder.client()).start_payment(pay_request())


async def test_a_reference_phonepe_cannot_take_is_rejected_before_any_request() -> None:
    recorder = Recorder()
    with pytest.raises(GatewayRejected):
        await PhonePeGateway(V1, client=recorder.client()).start_payment(
            pay_request(reference="has spaces and is far too long for phonepe")
        )
    assert recorder.requests == []
