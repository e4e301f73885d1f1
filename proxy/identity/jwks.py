"""JSON Web Key Sets (RFC 7517), parsed into the public keys that may verify tokens.

Decisions:

- A key is kept only for the configured algorithms it fits: RS*/PS* need an RSA key of
  at least 2048 bits, ES256/ES384/ES512 an EC key on P-256/P-384/P-521, EdDSA an OKP
  key (Ed25519, Ed448). A key that declares ``alg`` fits that one only.
- Skipped, with the reason kept for the log: keys for encryption (``use`` other than
  ``sig``, ``key_ops`` without ``verify``), symmetric keys (HS* comes only from
  ``secret_file``), keys holding private material, keys PyJWT cannot load.
- A document that is not ``{"keys": [...]}`` is refused as a whole (ValueError), so the
  source keeps its last good set.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, TypeAlias

import jwt
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePublicKey
from cryptography.hazmat.primitives.asymmetric.ed448 import Ed448PublicKey
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

__all__ = [
    "ASYMMETRIC_ALGORITHMS",
    "MAX_KEYS",
    "MIN_RSA_BITS",
    "Key",
    "KeySet",
    "PublicKey",
    "parse_jwks",
]

PublicKey: TypeAlias = RSAPublicKey | EllipticCurvePublicKey | Ed25519PublicKey | Ed448PublicKey

RSA_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
EC_CURVES: Mapping[str, str] = MappingProxyType(
    {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}
)
OKP_ALGORITHMS = frozenset({"EdDSA"})
ASYMMETRIC_ALGORITHMS = RSA_ALGORITHMS | EC_CURVES.keys() | OKP_ALGORITHMS

MIN_RSA_BITS = 2048
MAX_KEYS = 256
"""The most keys a set may hold (an IdP publishes a handful)."""

_PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "k")


@dataclass(frozen=True, slots=True)
class Key:
    kid: str | None
    public: PublicKey
    algorithms: tuple[str, ...]
    """The configured algorithms this key may verify (never empty)."""


@dataclass(frozen=True, slots=True)
class KeySet:
    keys: tuple[Key, ...]
    skipped: tuple[str, ...] = ()
    """Why each unusable key of the document was left out (for the log)."""

    def find(self, kid: str | None, alg: str) -> tuple[Key, ...]:
        """The keys named ``kid`` that may verify ``alg``; with no ``kid``, every key that
        may (the verifier accepts that only when there is exactly one)."""
        return tuple(k for k in self.keys if alg in k.algorithms and (kid is None or k.kid == kid))

    def knows(self, kid: str | None) -> bool:
        return any(k.kid == kid for k in self.keys)

    @property
    def kids(self) -> list[str | None]:
        return [k.kid for k in self.keys]


def parse_jwks(data: bytes, algorithms: Iterable[str]) -> KeySet:
    """The keys of a JWKS document usable for ``algorithms``; ValueError if it is not one."""
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise ValueError('not a JWK Set: expected {"keys": [...]}')
    jwks: list[Any] = doc["keys"]
    if len(jwks) > MAX_KEYS:
        raise ValueError(f"{len(jwks)} keys, more than {MAX_KEYS}")
    wanted = tuple(algorithms)
    keys: list[Key] = []
    skipped: list[str] = []
    for index, jwk in enumerate(jwks):
        key = _key(jwk, wanted)
        if isinstance(key, Key):
            keys.append(key)
        else:
            kid = jwk.get("kid") if isinstance(jwk, dict) else None
            skipped.append(f"key {index} (kid {kid!r}): {key}")
    return KeySet(tuple(keys), tuple(skipped))


def _key(jwk: object, algorithms: tuple[str, ...]) -> Key | str:
    """The key, or why it is skipped."""
    if not isinstance(jwk, dict):
        return "not an object"
    kid = jwk.get("kid")
    declared = jwk.get("alg")
    if kid is not None and not isinstance(kid, str):
        return "kid is not a string"
    if declared is not None and not isinstance(declared, str):
        return "alg is not a string"
    use, ops = jwk.get("use"), jwk.get("key_ops")
    if use is not None and use != "sig":
        return f"use is {use!r}, not 'sig'"
    if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
        return "key_ops lack 'verify'"
    if any(m in jwk for m in _PRIVATE_MEMBERS):
        return "holds private or symmetric key material"
    kty = jwk.get("kty")
    try:
        public, fitting = _load(kty, jwk)
    except (jwt.PyJWTError, ValueError, TypeError) as exc:
        return f"cannot load: {exc}"
    if isinstance(public, RSAPublicKey) and public.key_size < MIN_RSA_BITS:
        return f"RSA key of {public.key_size} bits, fewer than {MIN_RSA_BITS}"
    usable = tuple(a for a in algorithms if a in fitting and declared in (None, a))
    if not usable:
        return f"fits none of the algorithms {list(algorithms)} (kty {kty!r}, alg {declared!r})"
    return Key(kid, public, usable)


def _load(kty: object, jwk: dict[str, Any]) -> tuple[PublicKey, frozenset[str]]:
    """The public key and the algorithms its type and curve fit."""
    if kty == "RSA":
        rsa = RSAAlgorithm.from_jwk(jwk)
        if not isinstance(rsa, RSAPublicKey):
            raise ValueError("not an RSA public key")
        return rsa, RSA_ALGORITHMS
    if kty == "EC":
        ec = ECAlgorithm.from_jwk(jwk)
        if not isinstance(ec, EllipticCurvePublicKey):
            raise ValueError("not an EC public key")
        crv = jwk.get("crv")
        return ec, frozenset(a for a, c in EC_CURVES.items() if c == crv)
    if kty == "OKP":
        okp = OKPAlgorithm.from_jwk(jwk)
        if not isinstance(okp, Ed25519PublicKey | Ed448PublicKey):
            raise ValueError("not an EdDSA public key")
        return okp, OKP_ALGORITHMS
    raise ValueError(f"kty {kty!r} not supported")
