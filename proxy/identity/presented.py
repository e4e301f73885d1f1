"""The credential a request presents: a Bearer token or a raw key, read from headers."""

from __future__ import annotations

from multidict import CIMultiDictProxy

from proxy.identity.credential import Rejected

__all__ = ["AUTHORIZATION", "MAX_CREDENTIAL_CHARS", "bearer", "raw"]

AUTHORIZATION = "Authorization"
MAX_CREDENTIAL_CHARS = 16384
"""The longest token or key looked at; longer ones are refused before any parsing."""


def bearer(headers: CIMultiDictProxy[str]) -> str | Rejected | None:
    """The token of ``Authorization: Bearer <token>``; None when there is no such header."""
    values = headers.getall(AUTHORIZATION, ())
    if not values:
        return None
    if len(values) > 1:
        return Rejected(True, "more than one Authorization header")
    scheme, _, rest = values[0].strip().partition(" ")
    if scheme.lower() != "bearer":
        return Rejected(True, f"Authorization scheme {scheme[:16]!r} is not Bearer")
    return _single(rest.strip(), "Bearer credentials")


def raw(headers: CIMultiDictProxy[str], name: str) -> str | Rejected | None:
    """The value of header ``name`` as a raw key; None when the header is absent."""
    values = headers.getall(name, ())
    if not values:
        return None
    if len(values) > 1:
        return Rejected(True, f"more than one {name} header")
    return _single(values[0].strip(), f"{name} header")


def _single(value: str, what: str) -> str | Rejected:
    if not value:
        return Rejected(True, f"empty {what}")
    if len(value) > MAX_CREDENTIAL_CHARS:
        return Rejected(True, f"{what} longer than {MAX_CREDENTIAL_CHARS} characters")
    if len(value.split()) != 1:
        return Rejected(True, f"{what} hold white space")
    return value
