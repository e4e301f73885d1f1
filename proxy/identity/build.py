"""The verifier an ``identity`` section asks for."""

from __future__ import annotations

import time
from collections.abc import Callable

import aiohttp

from proxy.identity.apikeys import ApiKeyVerifier
from proxy.identity.credential import Verifier
from proxy.identity.files import WatchedFile
from proxy.identity.jwks import ASYMMETRIC_ALGORITHMS
from proxy.identity.keysource import FileKeys, KeySource
from proxy.identity.remote import RemoteKeys
from proxy.identity.tokens import JwtVerifier
from proxy.policy.model import Identity

__all__ = ["MIN_SECRET_BYTES", "build_verifier"]

MIN_SECRET_BYTES = 32
"""The shortest HMAC secret accepted (RFC 7518 §3.2: at least the hash size for HS256)."""


def build_verifier(
    identity: Identity,
    client: aiohttp.ClientSession,
    *,
    clock: Callable[[], float] = time.time,
) -> Verifier | None:
    """The verifier of ``identity``; None in trusted-header mode. ``client`` fetches a JWKS
    URL. A section the loader would refuse still fails closed: with no issuer, audience or
    key source that fits, every token is refused."""
    if identity.jwt is not None:
        jwt = identity.jwt
        algorithms = tuple(a for a in jwt.algorithms if a in ASYMMETRIC_ALGORITHMS)
        keys: KeySource | None = None
        if jwt.jwks_url:
            keys = RemoteKeys(jwt.jwks_url, client, algorithms, clock)
        elif jwt.jwks_file:
            keys = FileKeys(jwt.jwks_file, algorithms, clock)
        secret = None
        if jwt.secret_file:
            secret = WatchedFile(jwt.secret_file, _secret, "JWT secret file", clock)
        return JwtVerifier(jwt, keys, secret, clock)
    if identity.api_keys is not None:
        return ApiKeyVerifier(identity.api_keys, clock)
    return None


def _secret(data: bytes) -> bytes:
    """The HMAC secret: the file's bytes without surrounding white space (a final newline)."""
    secret = data.strip()
    if len(secret) < MIN_SECRET_BYTES:
        raise ValueError(f"secret of {len(secret)} bytes, fewer than {MIN_SECRET_BYTES}")
    return secret
