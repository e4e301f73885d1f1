"""What identification yields: a credential, a rejection, or nothing presented."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, Protocol

from multidict import CIMultiDictProxy

__all__ = ["MAX_AGENT_CHARS", "Credential", "Rejected", "Verifier", "agent_problem"]

Source = Literal["anonymous", "header", "jwt", "api_key"]

MAX_AGENT_CHARS = 256
"""The longest agent id accepted from a token claim or a key file."""

_NO_SCOPES: frozenset[str] = frozenset()


def _no_claims() -> Mapping[str, Any]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Credential:
    """A verified caller: the agent id the policy matches, and what vouched for it."""

    agent: str
    source: Source
    scopes: frozenset[str] = _NO_SCOPES
    claims: Mapping[str, Any] = field(default_factory=_no_claims, hash=False)
    """The token's claims (JWT only), read-only."""


@dataclass(frozen=True, slots=True)
class Rejected:
    """A credential that cannot be believed."""

    presented: bool
    """A credential was presented (the challenge then carries ``error="invalid_token"``)."""
    detail: str
    """Why, for the operator's log only: never sent to the client."""


class Verifier(Protocol):
    async def verify(self, headers: CIMultiDictProxy[str]) -> Credential | Rejected | None:
        """The caller's credential; None when none was presented. Never raises."""
        ...

    async def start(self) -> None:
        """Load keys (initial fetch, file read); never raises when they cannot be had."""
        ...

    async def aclose(self) -> None: ...


def agent_problem(agent: object) -> str | None:
    """Why ``agent`` cannot be an agent id (it travels upstream in a header), or None."""
    if not isinstance(agent, str) or not agent.strip():
        return "not a non-empty string"
    if len(agent) > MAX_AGENT_CHARS:
        return f"longer than {MAX_AGENT_CHARS} characters"
    if not agent.isprintable() or agent != agent.strip():
        return "holds control characters or surrounding white space"
    return None
