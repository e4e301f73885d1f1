"""What one decision hands the session store: the limits in force and the calls to judge.

Pure values, owned by the policy: the session store imports them, never the reverse.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final

from proxy.errors import E

UNLIMITED: Final = 2**53
"""A count limit that is not set (contract: unset limits are no limits). Exact as a double,
so the Redis store's Lua numbers hold it too."""


@dataclass(frozen=True, slots=True)
class Limits:
    """The limits of one decision, taken from the policy current at decision time."""

    ttl: float = 86400.0
    idle_timeout: float = 3600.0
    max_per_agent: int = UNLIMITED
    calls: int = UNLIMITED
    tool_calls: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    per_minute: int = UNLIMITED


@dataclass(frozen=True, slots=True)
class Call:
    """One element of a request (a batch has several), as the store must judge it.

    ``denied`` carries the pure authorization verdict (TOOL_NOT_AUTHORIZED or
    METHOD_NOT_AUTHORIZED) so the store can apply it at its place in the reference order:
    budget, then authorization, then rate limit.
    """

    counted: bool
    tool: str | None = None
    denied: E | None = None
