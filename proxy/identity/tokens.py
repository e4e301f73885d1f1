"""OAuth 2.1 bearer tokens: JWTs verified against configured issuers, audiences and keys.

Decisions:

- The token's ``alg`` must be configured. HS* verifies only with the secret file, every
  other algorithm only with a key of the JWKS that fits it, and PyJWT is given exactly
  the configured algorithms that key may verify: ``none`` and HS/RS confusion cannot
  happen by construction.
- A ``kid`` the keys lack asks the source for new keys (rate limited there), then is
  refused if still unknown. A token without ``kid`` is verified only when exactly one
  key fits its ``alg``.
- PyJWT checks signature, ``iss``, ``aud`` and that ``exp`` is present; times (``exp``,
  ``nbf``, ``iat``, with the leeway) are checked here against the injected clock.
- The agent id is the configured claim, a non-empty printable string; scopes come from
  ``scope`` or else ``scp``, each a space-separated string or a list of strings.
- Verified tokens are cached until their ``exp``; the cache is emptied whenever the keys
  or the secret change, so a key removed from the JWKS stops verifying at once.
- ``verify`` never raises: an unexpected failure is logged and the token refused.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, TypeGuard

import jwt
from jwt.types import Options
from multidict import CIMultiDictProxy

from proxy.identity.cache import DEFAULT_SIZE, TokenCache
from proxy.identity.credential import Credential, Rejected, agent_problem
from proxy.identity.files import WatchedFile
from proxy.identity.jwks import Key, KeySet, PublicKey
from proxy.identity.keysource import KeySource
from proxy.identity.presented import bearer
from proxy.policy.model import HMAC_ALGORITHMS, JwtConfig

__all__ = ["JwtVerifier", "scopes_of"]

log = logging.getLogger("agent_warden.identity")

NO_KEYS = "no signing keys available"

_OPTIONS: Options = {
    "require": ["exp", "iss", "aud"],
    "verify_exp": False,  # times are checked against the injected clock
    "verify_nbf": False,
    "verify_iat": False,
    "enforce_minimum_key_length": True,
}


class JwtVerifier:
    def __init__(
        self,
        config: JwtConfig,
        keys: KeySource | None,
        secret: WatchedFile[bytes] | None,
        clock: Callable[[], float],
        cache_size: int = DEFAULT_SIZE,
    ) -> None:
        self._algorithms = frozenset(config.algorithms) - {"none"}
        self._hmac = [a for a in config.algorithms if a in HMAC_ALGORITHMS]
        self._issuers = tuple(config.issuers)
        self._audiences = list(config.audiences)
        self._claim = config.agent_claim
        self._leeway = config.leeway
        self._keys = keys
        self._secret = secret
        self._clock = clock
        self._jwt = jwt.PyJWT()
        self._cache = TokenCache(cache_size)
        self._generation = (-1, -1)

    async def start(self) -> None:
        if self._keys is not None:
            await self._keys.start()
        if self._secret is not None:
            await self._secret.start()

    async def aclose(self) -> None:
        if self._keys is not None:
            await self._keys.aclose()

    async def verify(self, headers: CIMultiDictProxy[str]) -> Credential | Rejected | None:
        token = bearer(headers)
        if not isinstance(token, str):
            return token
        try:
            return await self._verify(token)
        except Exception as exc:
            log.error("token verification failed unexpectedly", exc_info=exc)
            return Rejected(True, f"verification failed: {type(exc).__name__}")

    async def _verify(self, token: str) -> Credential | Rejected:
        keys = await self._keys.current() if self._keys is not None else None
        secret = await self._secret.get() if self._secret is not None else None
        generation = (
            self._keys.generation if self._keys is not None else 0,
            self._secret.generation if self._secret is not None else 0,
        )
        if generation != self._generation:
            self._cache.clear()
            self._generation = generation
        now = self._clock()
        hit = self._cache.get(token, now)
        if hit is not None:
            return hit
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            return Rejected(True, f"malformed token: {exc}")
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self._algorithms:
            return Rejected(True, f"algorithm {_short(alg)} is not accepted")
        key: bytes | PublicKey
        if alg in HMAC_ALGORITHMS:
            if secret is None:
                return Rejected(True, "no HMAC secret available")
            key, algorithms = secret, self._hmac
        else:
            found = await self._find(keys, header.get("kid"), alg)
            if isinstance(found, Rejected):
                return found
            key, algorithms = found.public, list(found.algorithms)
        try:
            claims = self._jwt.decode(
                token,
                key,
                algorithms=algorithms,
                audience=self._audiences,
                issuer=self._issuers,
                options=_OPTIONS,
            )
        except jwt.PyJWTError as exc:
            return Rejected(True, f"invalid token: {exc}")
        now = self._clock()
        problem = _time_problem(claims, now, self._leeway)
        if problem is not None:
            return Rejected(True, problem)
        agent = claims.get(self._claim)
        problem = agent_problem(agent)
        if problem is not None or not isinstance(agent, str):
            return Rejected(True, f"claim {self._claim!r} {problem}")
        scopes = scopes_of(claims)
        if scopes is None:
            return Rejected(True, "scope claim is neither a string nor a list of strings")
        credential = Credential(agent, "jwt", scopes, MappingProxyType(claims))
        self._cache.put(token, credential, float(claims["exp"]), now)
        return credential

    async def _find(self, keys: KeySet | None, kid: object, alg: str) -> Key | Rejected:
        """The key to verify with, or the rejection."""
        if kid is not None and not isinstance(kid, str):
            return Rejected(True, "kid is not a string")
        source = self._keys
        if source is not None and keys is not None and kid is not None and not keys.knows(kid):
            keys = await source.refresh()
        if keys is None or not keys.keys:
            return Rejected(True, NO_KEYS)
        found = keys.find(kid, alg)
        if kid is None and len(found) != 1:
            return Rejected(True, f"token has no kid and {len(found)} keys fit {alg}")
        if found:
            return found[0]
        if keys.knows(kid):
            return Rejected(True, f"key {_short(kid)} does not fit algorithm {alg}")
        return Rejected(True, f"unknown kid {_short(kid)}")


def scopes_of(claims: Mapping[str, Any]) -> frozenset[str] | None:
    """The token's scopes from ``scope`` (RFC 9068), else ``scp``; None if malformed."""
    value = claims.get("scope", claims.get("scp"))
    if value is None:
        return frozenset()
    if isinstance(value, str):
        return frozenset(value.split())
    if isinstance(value, list) and all(isinstance(s, str) for s in value):
        return frozenset(s for s in value if s)
    return None


def _time_problem(claims: Mapping[str, Any], now: float, leeway: float) -> str | None:
    exp = claims.get("exp")
    if not _is_time(exp):
        return "exp is not a number"
    if now >= exp + leeway:
        return "token expired"
    for name in ("nbf", "iat"):
        if name not in claims:
            continue
        value = claims[name]
        if not _is_time(value):
            return f"{name} is not a number"
        if value > now + leeway:
            return f"token not yet valid ({name} in the future)"
    return None


def _is_time(value: object) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
