"""Timestamped HMAC-SHA256 webhook signatures in Stripe's header format: ``t=…,v1=…``.

Stripe signs with it (``Stripe-Signature``) and so does the bundled sandbox
(``Sandbox-Signature``): HMAC-SHA256 with a shared secret over ``"{t}." + raw body``, hex, any
of several ``v1`` accepted, timestamps older than the tolerance refused (replay protection).
"""

from __future__ import annotations

import hashlib
import hmac

from gateways.base import InvalidSignature


def sign(raw_body: bytes, secret: str, timestamp: int) -> str:
    """The signature header value for ``raw_body`` signed at ``timestamp``."""
    mac = hmac.new(secret.encode("utf-8"), f"{timestamp}.".encode() + raw_body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def verify(
    raw_body: bytes, signature_header: str | None, secret: str, *, now: float, tolerance: float
) -> int:
    """Check a ``t=…,v1=…`` header over ``raw_body``: its timestamp, or InvalidSignature.

    The parsing follows stripe-python's ``WebhookSignature.verify_header`` on purpose (items
    split on ",", each on its first two "="; the first ``t`` counts; every ``v1`` is a
    candidate; the body must be UTF-8), so that we accept exactly the headers it accepts —
    tests/gateways/test_signing_differential.py checks this on generated inputs.
    """
    if not signature_header:
        raise InvalidSignature("no signature header")
    if not secret or not secret.strip(" \t\r\n\f\v"):
        raise InvalidSignature("no webhook secret configured")
    try:
        body = raw_body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidSignature("body is not UTF-8") from exc
    items = [item.split("=", 2) for item in signature_header.split(",")]
    try:
        timestamp = int([item[1] for item in items if item[0] == "t"][0])
        candidates = [item[1] for item in items if item[0] == "v1"]
    except (IndexError, ValueError) as exc:
        raise InvalidSignature("unable to extract timestamp and signatures") from exc
    if not candidates:
        raise InvalidSignature("no v1 signature")
    expected = hmac.new(
        secret.encode("utf-8"), f"{timestamp:d}.{body}".encode(), hashlib.sha256
    ).hexdigest()
    matched = False
    for candidate in candidates:
        # stripe-python stops (and refuses) at a non-ASCII candidate before any match; so do we.
        if not candidate.isascii():
            raise InvalidSignature("non-ASCII signature")
        if hmac.compare_digest(expected.encode(), candidate.encode()):
            matched = True
            break
    if not matched:
        raise InvalidSignature("no v1 signature matches")
    if tolerance and timestamp < now - tolerance:
        raise InvalidSignature(f"timestamp {timestamp} is older than {tolerance:g}s")
    return timestamp
