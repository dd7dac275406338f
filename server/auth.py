"""JWT verification with pinned algorithms, the Principal, origin checks, demo tokens."""

from __future__ import annotations

import base64
import hashlib
import re
import time
from collections import OrderedDict
from typing import Any
from urllib.parse import urlsplit

import jwt
import orjson

from orders.actors import Principal as Principal
from orders.actors import Role as Role
from server.settings import Settings

# Identifiers end up in stream names and SQL text columns; PostgreSQL refuses NUL in text.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class AuthError(Exception):
    """A token that must be refused; the message says why (never echoed with the token)."""


#: The ``kid`` header that marks a demo token, signed with the per-process demo secret.
DEMO_KID = "demo"
_DEMO_ALGORITHM = "HS256"


class TokenVerifier:
    """Verifies bearer tokens against the configured key and pinned algorithms.

    With ``demo_secret`` (DEMO_TOKENS on) it also mints demo tokens and accepts them: HS256,
    header ``kid: demo``, signed with that per-process secret and never with the real key, so a
    demo token cannot pass for a real one and turning demo tokens off revokes every one.
    """

    def __init__(
        self,
        *,
        key: str | None,
        algorithms: tuple[str, ...],
        leeway: float = 0.0,
        cache_size: int = 10_000,
        demo_secret: str | None = None,
    ) -> None:
        if not algorithms:
            raise ValueError("at least one algorithm must be pinned")
        if key is None and demo_secret is None:
            raise ValueError("JWT_SECRET or JWT_PUBLIC_KEY is required")
        self._key = key
        self._algorithms = list(algorithms)
        self._leeway = leeway
        self._demo_secret = demo_secret
        # A terminal or app sends the same token on every call, and every socket of a
        # reconnect storm brings its token again; checking its signature each time was 7% of
        # the server's CPU under load. Only valid tokens are cached, keyed by the SHA-256 of
        # their exact text (32 bytes, not the token: no bearer secret kept for the cache's
        # life), and their expiry is checked on every hit.
        self._cache: OrderedDict[bytes, Principal] = OrderedDict()
        self._cache_size = cache_size
        #: How many signatures were checked (cache misses); a cache hit checks none.
        self.signature_checks = 0

    @classmethod
    def from_settings(cls, settings: Settings, demo_secret: str | None = None) -> TokenVerifier:
        """The verifier configured by JWT_SECRET / JWT_PUBLIC_KEY and JWT_ALGORITHMS."""
        return cls(
            key=settings.jwt_public_key or settings.jwt_secret,
            algorithms=settings.jwt_algorithms,
            leeway=settings.jwt_leeway,
            demo_secret=demo_secret,
        )

    @property
    def mints_demo_tokens(self) -> bool:
        """Whether this verifier has a demo secret (DEMO_TOKENS on)."""
        return self._demo_secret is not None

    def verify(self, token: str) -> Principal:
        """The principal of a valid token; AuthError for anything else."""
        key = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        cached = self._cache.get(key)
        if cached is not None:
            if cached.expires_at + self._leeway <= time.time():
                del self._cache[key]
                raise AuthError("token expired")
            self._cache.move_to_end(key)
            return cached
        self.signature_checks += 1
        principal = self._verify(token)
        self._cache[key] = principal
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return principal

    def _verify(self, token: str) -> Principal:
        header = _unverified_header(token)
        # The key is chosen by the header, but each key has its own pinned algorithms, so a
        # token cannot pick a weaker check: a demo-marked token is only ever HS256 with the
        # demo secret, and without demo tokens on it is checked against the real key (and fails).
        if self._demo_secret is not None and header.get("kid") == DEMO_KID:
            key, algorithms = self._demo_secret, [_DEMO_ALGORITHM]
        elif self._key is not None:
            key, algorithms = self._key, self._algorithms
        else:
            raise AuthError("only demo tokens are accepted (no JWT key configured)")
        if header.get("alg") not in algorithms:
            raise AuthError("token algorithm not allowed")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=algorithms,
                options={"require": ["exp", "sub"]},
                leeway=self._leeway,
            )
        except jwt.ExpiredSignatureError as exc:
            raise AuthError("token expired") from exc
        except jwt.PyJWTError as exc:
            raise AuthError(f"invalid token: {exc.__class__.__name__}") from exc
        return principal_from_claims(claims)

    def mint_demo(self, claims: dict[str, Any]) -> str:
        """Sign claims as a demo token, with the demo secret only; ValueError when off."""
        if self._demo_secret is None:
            raise ValueError("demo tokens are off")
        return jwt.encode(
            claims, self._demo_secret, algorithm=_DEMO_ALGORITHM, headers={"kid": DEMO_KID}
        )


def _unverified_header(token: str) -> dict[str, Any]:
    """The token's header, parsed only to choose the key; ``jwt.decode`` checks it all again.

    PyJWT's ``get_unverified_header`` parses and validates the whole token once more before
    the decode does the same: a third of the cost of verifying a token, paid by every socket of
    a reconnect storm. A header this reads differently from PyJWT can only pick a key and its
    pinned algorithms; the signature must still verify under them.
    """
    segment = token.partition(".")[0]
    try:
        raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
        header = orjson.loads(raw)
    except (ValueError, TypeError, orjson.JSONDecodeError):
        raise AuthError("malformed token") from None
    if not isinstance(header, dict):
        raise AuthError("malformed token")
    return header


def principal_from_claims(claims: dict[str, Any]) -> Principal:
    """Build a Principal from verified claims, checking their shapes."""
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub or len(sub) > 200 or _CONTROL.search(sub):
        raise AuthError("sub must be a non-empty printable string")
    try:
        role = Role(claims.get("role", "customer"))
    except ValueError:
        raise AuthError("unknown role") from None
    store_id = claims.get("store_id")
    if role is Role.POS:
        if (
            not isinstance(store_id, str)
            or not store_id
            or len(store_id) > 200
            or _CONTROL.search(store_id)
        ):
            raise AuthError("a pos token needs a printable store_id")
    else:
        store_id = None
    exp = claims.get("exp")
    if not isinstance(exp, int | float):
        raise AuthError("exp must be a number")
    return Principal(sub=sub, role=role, store_id=store_id, expires_at=float(exp))


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def origin_allowed(origin: str | None, host: str | None, allowed: tuple[str, ...]) -> bool:
    """Whether a browser Origin may connect: same host, listed, or ``*`` configured."""
    if origin is None:
        return True  # native clients send no Origin; they are authenticated by token
    if "*" in allowed or origin in allowed:
        return True
    netloc = urlsplit(origin).netloc
    return bool(host) and netloc == host


def demo_claims(sub: str, role: Role, store_id: str | None, ttl: int) -> dict[str, Any]:
    """Claims for a demo token valid for ``ttl`` seconds."""
    claims: dict[str, Any] = {"sub": sub, "role": role.value, "exp": int(time.time()) + ttl}
    if store_id is not None:
        claims["store_id"] = store_id
    return claims
