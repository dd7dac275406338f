"""The verified-token cache never lets a token outlive its exp or stand in for another."""

from __future__ import annotations

import hashlib
import time

import jwt
import pytest

from server.auth import AuthError, TokenVerifier
from tests.support.clients import SECRET, token


def test_a_cached_token_is_refused_once_it_expires() -> None:
    verifier = TokenVerifier(key=SECRET, algorithms=("HS256",))
    exp = int(time.time()) + 2
    short = jwt.encode({"sub": "zoe", "exp": exp}, SECRET, algorithm="HS256")
    assert verifier.verify(short).sub == "zoe"
    assert verifier.verify(short).sub == "zoe"  # from the cache
    assert time.time() < exp, "the checks above must run before exp for the test to mean anything"
    while time.time() < exp:  # wait for the clock to pass exp, however long that takes
        time.sleep(0.05)
    with pytest.raises(AuthError, match="expired"):
        verifier.verify(short)


def test_a_forged_token_is_never_cached_as_valid() -> None:
    verifier = TokenVerifier(key=SECRET, algorithms=("HS256",))
    forged = token("zoe", secret="another-secret-0123456789-0123456789")
    for _ in range(2):
        with pytest.raises(AuthError):
            verifier.verify(forged)


def test_the_cache_is_bounded() -> None:
    verifier = TokenVerifier(key=SECRET, algorithms=("HS256",), cache_size=3)
    tokens = [token(f"user-{i}") for i in range(5)]
    for tok in tokens:
        verifier.verify(tok)
    assert [verifier.verify(tok).sub for tok in tokens] == [f"user-{i}" for i in range(5)]
    assert len(verifier._cache) == 3


def test_a_token_is_checked_once_and_cached_by_its_hash_not_its_text() -> None:
    verifier = TokenVerifier(key=SECRET, algorithms=("HS256",))
    tok = token("zoe")
    for _ in range(50):  # e.g. every socket of one app reconnecting at once
        assert verifier.verify(tok).sub == "zoe"
    assert verifier.signature_checks == 1
    assert list(verifier._cache) == [hashlib.sha256(tok.encode()).digest()]
    # Another token of the same user is checked on its own (the hash is of the whole text).
    assert verifier.verify(token("zoe", ttl=120)).sub == "zoe"
    assert verifier.signature_checks == 2
