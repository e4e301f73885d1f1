"""The policy model: frozen values built once per load, read on every request.

Field names equal the YAML key names of the policy file (contract.md), which lets
the loader build each section by ``dataclasses.replace(default, **keys_given)``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

from proxy.policy.globs import compile_globs

Mode = Literal["enforce", "audit"]
A2aSpec = Literal["1.0.0", "1.0.1"]
StoreFailure = Literal["open", "closed"]

DEFAULT_POLICY_NAME = "default"
"""The name reported when no entry of ``policies`` matches the agent."""

_RESOLVE_CACHE_SIZE = 4096


@dataclass(frozen=True, slots=True)
class GlobSet:
    """Allow and deny glob lists; ``allows(name)`` is true when allowed and not denied."""

    allow: tuple[str, ...] = ("*",)
    deny: tuple[str, ...] = ()
    _allow_all: bool = field(init=False, repr=False, compare=False)
    _allow_re: re.Pattern[str] | None = field(init=False, repr=False, compare=False)
    _deny_re: re.Pattern[str] | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_allow_all", "*" in self.allow)
        object.__setattr__(self, "_allow_re", compile_globs(self.allow))
        object.__setattr__(self, "_deny_re", compile_globs(self.deny))

    def allows(self, name: str) -> bool:
        if self.denies(name):
            return False
        return self.admits(name)

    def allows_any(self, names: tuple[str, ...]) -> bool:
        """For one thing known by several names: denied if any name is denied, else allowed
        if any name is allowed."""
        if any(self.denies(n) for n in names):
            return False
        return any(self.admits(n) for n in names)

    def denies(self, name: str) -> bool:
        return self._deny_re is not None and self._deny_re.match(name) is not None

    def admits(self, name: str) -> bool:
        """Matched by the allow list (deny not considered)."""
        return self._allow_all or (
            self._allow_re is not None and self._allow_re.match(name) is not None
        )


@dataclass(frozen=True, slots=True)
class SessionRules:
    ttl: float = 3600.0
    """Absolute lifetime of a session, in seconds."""
    idle_timeout: float = 900.0
    """Seconds since the last request after which the session expires."""
    max_per_agent: int = 10
    """Live sessions one agent may hold."""


def _no_tool_budgets() -> Mapping[str, int]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Budget:
    calls: int = 1000
    """Counted requests per session."""
    tools: Mapping[str, int] = field(default_factory=_no_tool_budgets)
    """Calls per session of individual tools (exact tool names)."""

    def __post_init__(self) -> None:
        if not isinstance(self.tools, MappingProxyType):
            object.__setattr__(self, "tools", MappingProxyType(dict(self.tools)))

    def __hash__(self) -> int:
        return hash((self.calls, tuple(sorted(self.tools.items()))))


@dataclass(frozen=True, slots=True)
class RateLimit:
    per_minute: int = 600
    """Counted requests per session per minute."""


@dataclass(frozen=True, slots=True)
class Rules:
    """Everything a decision about one request of one agent needs."""

    mode: Mode = "enforce"
    session: SessionRules = SessionRules()
    budget: Budget = Budget()
    rate_limit: RateLimit = RateLimit()
    tools: GlobSet = GlobSet()
    """Globs on the MCP tool name of ``tools/call``."""
    methods: GlobSet = GlobSet()
    """Globs on the JSON-RPC method."""


@dataclass(frozen=True, slots=True)
class Identity:
    header: str = "X-Agent-Id"
    required: bool = False


@dataclass(frozen=True, slots=True)
class ErrorsConfig:
    domain: str = "agent-warden.dev"
    a2a_spec: A2aSpec = "1.0.1"


@dataclass(frozen=True, slots=True)
class NamedPolicy:
    name: str
    agents: GlobSet
    """Globs on the agent id (``match.agents``); no deny list."""
    rules: Rules
    """Fully resolved: every field the policy leaves unset comes from ``defaults``."""

    def matches(self, agent_id: str) -> bool:
        return self.agents.allows(agent_id)


@dataclass(frozen=True, slots=True)
class PolicyFile:
    """A whole policy file. Equality ignores ``source``: same content, same policy."""

    version: int = 1
    identity: Identity = Identity()
    errors: ErrorsConfig = ErrorsConfig()
    store_failure: StoreFailure = "closed"
    """What to do when the session store is unreachable: deny (closed) or allow (open)."""
    defaults: Rules = Rules()
    policies: tuple[NamedPolicy, ...] = ()
    source: str | None = field(default=None, compare=False)
    """The file this was loaded from; None for the built-in policy."""
    _cache: dict[str, tuple[str, Rules]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def resolve(self, agent_id: str) -> tuple[str, Rules]:
        """The name and rules of the first policy matching ``agent_id``, else the defaults."""
        hit = self._cache.get(agent_id)
        if hit is not None:
            return hit
        result = (DEFAULT_POLICY_NAME, self.defaults)
        for policy in self.policies:
            if policy.matches(agent_id):
                result = (policy.name, policy.rules)
                break
        # Bounded: agent ids come from a request header, so an attacker can vary them.
        if len(self._cache) >= _RESOLVE_CACHE_SIZE:
            self._cache.clear()
        self._cache[agent_id] = result
        return result


DEFAULT_POLICY = PolicyFile()
"""The built-in policy used when no file is given: allow everything, default limits."""
