"""Differential: our `t=…,v1=…` verification accepts exactly what the stripe package accepts.

Inputs are generated: bodies (text and arbitrary bytes), secrets (including blank ones),
timestamps around the 300 s tolerance, headers with several ``v1``, other schemes, wrong
signatures, tampered bodies, junk items and plain random text. For each, stripe-python's
``WebhookSignature.verify_header`` (accepts = returns without raising) and ours
(``gateways.signing.verify``; accepts = returns, rejects = InvalidSignature) must agree.
Timestamps keep a few seconds away from the tolerance edge because the two read the clock
a few microseconds apart.
"""

from __future__ import annotations

import hashlib
import hmac
import time

import pytest
import stripe as stripe_lib
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateways import signing
from gateways.base import InvalidSignature

TOLERANCE = 300


def _hex(secret: str, timestamp: str, body: bytes) -> str:
    return hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def stripe_accepts(body: bytes, header: str, secret: str) -> bool:
    try:
        stripe_lib.WebhookSignature.verify_header(body, header, secret, TOLERANCE)
    except Exception:  # SignatureVerificationError, and the UnicodeDecodeError of a non-UTF-8 body
        return False
    return True


def ours_accepts(body: bytes, header: str, secret: str) -> bool:
    try:
        signing.verify(body, header, secret, now=time.time(), tolerance=TOLERANCE)
    except InvalidSignature:
        return False
    return True


offsets = st.one_of(
    st.integers(-TOLERANCE + 3, 10_000),  # fresh (and future: neither side refuses those)
    st.integers(-100_000, -TOLERANCE - 3),  # stale
)
secrets_ = st.one_of(
    st.just("whsec_test_secret"),
    st.text(min_size=0, max_size=24),
    st.sampled_from(["", " ", "\t\n", "whsec_"]),
)
bodies = st.one_of(
    st.text(max_size=200).map(str.encode),
    st.binary(max_size=64),
    st.just(b'{"id":"evt_1","object":"event","type":"payment_intent.succeeded"}'),
)


@st.composite
def signed_cases(draw: st.DrawFn) -> tuple[bytes, str, str]:
    """A body, a Stripe-Signature header built from parts (some right, some wrong), a secret."""
    body = draw(bodies)
    secret = draw(secrets_)
    now = int(time.time())
    timestamp = now + draw(offsets)
    t_text = draw(
        st.sampled_from(
            [str(timestamp)] * 4 + [f" {timestamp}", f"+{timestamp}", f"{timestamp}x", ""]
        )
    )
    signed_t = str(timestamp)
    parts: list[str] = []
    kinds = draw(
        st.lists(
            st.sampled_from(
                ["t", "t_other", "v1_right", "v1_wrong", "v1_tampered", "v1_other_secret",
                 "v1_other_t", "v0_right", "junk", "empty", "v1_upper", "v1_truncated"]
            ),
            min_size=0,
            max_size=6,
        )
    )  # fmt: skip
    # Most cases start from a well-formed header, so that acceptances are common too.
    prefix = draw(st.sampled_from([[], ["t", "v1_right"], ["v1_right", "t"], ["t", "v1_right"]]))
    for kind in prefix + kinds:
        match kind:
            case "t":
                parts.append(f"t={t_text}")
            case "t_other":
                parts.append(f"t={timestamp + draw(st.integers(1, 1000))}")
            case "v1_right":
                parts.append(f"v1={_hex(secret, signed_t, body)}")
            case "v1_wrong":
                parts.append(f"v1={draw(st.text(max_size=70))}")
            case "v1_tampered":
                parts.append(f"v1={_hex(secret, signed_t, body + b' ')}")
            case "v1_other_secret":
                parts.append(f"v1={_hex(secret + 'x', signed_t, body)}")
            case "v1_other_t":
                parts.append(f"v1={_hex(secret, str(timestamp + 1), body)}")
            case "v0_right":
                parts.append(f"v0={_hex(secret, signed_t, body)}")
            case "junk":
                parts.append(draw(st.text(max_size=12)))
            case "empty":
                parts.append("")
            case "v1_upper":
                parts.append(f"v1={_hex(secret, signed_t, body).upper()}")
            case "v1_truncated":
                parts.append(f"v1={_hex(secret, signed_t, body)[:-1]}")
    return body, ",".join(parts), secret


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(signed_cases())
def test_ours_accepts_exactly_what_stripe_accepts(case: tuple[bytes, str, str]) -> None:
    body, header, secret = case
    assert ours_accepts(body, header, secret) == stripe_accepts(body, header, secret)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=120), bodies, secrets_)
def test_random_headers_agree_too(header: str, body: bytes, secret: str) -> None:
    assert ours_accepts(body, header, secret) == stripe_accepts(body, header, secret)


@settings(max_examples=200, deadline=None)
@given(
    st.text(max_size=200),
    st.text(min_size=1, max_size=30).filter(str.strip),
    st.integers(-TOLERANCE + 3, 600),
)
def test_a_header_stripe_generates_is_accepted_by_both(body: str, secret: str, offset: int) -> None:
    # The generator's own signatures, so the differential above is not all rejections.
    timestamp = int(time.time()) + offset
    header = stripe_lib.WebhookSignature.generate_signature_header(body, secret, timestamp)
    assert header == signing.sign(body.encode(), secret, timestamp)
    assert stripe_accepts(body.encode(), header, secret)
    assert ours_accepts(body.encode(), header, secret)


@pytest.mark.parametrize("age", [TOLERANCE + 5, 3600, 86_400])
def test_a_stale_timestamp_is_refused_by_both(age: int) -> None:
    timestamp = int(time.time()) - age
    header = signing.sign(b"{}", "whsec_x", timestamp)
    assert not stripe_accepts(b"{}", header, "whsec_x")
    assert not ours_accepts(b"{}", header, "whsec_x")


def test_any_of_several_v1_signatures_may_match() -> None:
    timestamp = int(time.time())
    right = _hex("whsec_new", str(timestamp), b"{}")
    header = f"t={timestamp},v1={'0' * 64},v1={right},v0={right}"
    assert stripe_accepts(b"{}", header, "whsec_new")
    assert ours_accepts(b"{}", header, "whsec_new")
