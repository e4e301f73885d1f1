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
Require = Literal["any", "minted"]

DEFAULT_POLICY_NAME = "default"
"""The name reported when no entry of ``policies`` matches the agent."""

_RESOLVE_CACHE_SIZE = 4096

ANY_ORIGIN = "*"
"""The ``origins.allow`` entry that allows every origin."""

_SCHEME = r"[Hh][Tt][Tt][Pp][Ss]?"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOST = rf"{_LABEL}(?:\.{_LABEL})*|\[[0-9A-Fa-f:.]+\]"
_PORT = r"6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3}"
ORIGIN_RE = re.compile(rf"({_SCHEME})://({_HOST})(?::({_PORT}))?")
"""An origin, ``scheme://host[:port]``: scheme http or https, a DNS name, IPv4 address or
bracketed IPv6 address, a port 1-65535, no path. Written without flags or named groups so
that ``policies/schema.json`` can use the very same pattern."""

_DEFAULT_PORTS = {"http": "80", "https": "443"}


def normalize_origin(value: str) -> str | None:
    """``value`` as browsers serialize an origin (lower case, no default port); None when
    it is not an origin (``null``, a path, another scheme, ...)."""
    m = ORIGIN_RE.fullmatch(value)
    if m is None:
        return None
    scheme, host, port = m.group(1).lower(), m.group(2).lower(), m.group(3)
    if port is None or port == _DEFAULT_PORTS[scheme]:
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


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
    ttl: float = 86400.0
    """Absolute lifetime of a session, in seconds (built-in: 24 hours)."""
    idle_timeout: float = 3600.0
    """Seconds since the last request after which the session expires (built-in: 1 hour)."""
    max_per_agent: int | None = None
    """Live sessions one agent may hold; None: not limited."""
    require: Require = "any"
    """``minted``: only sessions minted on the admin listener are accepted (a request in any
    other session gets SESSION_NOT_FOUND); ``any``: every session source applies."""


def _no_tool_budgets() -> Mapping[str, int]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Budget:
    calls: int | None = None
    """Counted requests per session; None: not limited."""
    tools: Mapping[str, int] = field(default_factory=_no_tool_budgets)
    """Calls per session of individual tools (exact tool names)."""

    def __post_init__(self) -> None:
        if not isinstance(self.tools, MappingProxyType):
            object.__setattr__(self, "tools", MappingProxyType(dict(self.tools)))

    def __hash__(self) -> int:
        return hash((self.calls, tuple(sorted(self.tools.items()))))


@dataclass(frozen=True, slots=True)
class RateLimit:
    per_minute: int | None = None
    """Counted requests per session per minute; None: not limited."""


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
class JwtConfig:
    """OAuth 2.1 bearer tokens (``identity.jwt``): what a valid token must be."""

    issuers: tuple[str, ...] = ()
    audiences: tuple[str, ...] = ()
    jwks_url: str | None = None
    jwks_file: str | None = None
    secret_file: str | None = None  # HS* only, and only with this
    algorithms: tuple[str, ...] = ("RS256", "ES256")
    agent_claim: str = "sub"
    leeway: float = 30.0


@dataclass(frozen=True, slots=True)
class ApiKeysConfig:
    """API keys (``identity.api_keys``): a watched file of ``{sha256 hex: agent id}``."""

    file: str = ""
    header: str = "Authorization"  # "Bearer <key>"; any other header carries the raw key


@dataclass(frozen=True, slots=True)
class ResourceMetadata:
    """RFC 9728 Protected Resource Metadata served by the proxy."""

    resource: str = ""
    authorization_servers: tuple[str, ...] = ()
    scopes_supported: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Identity:
    header: str = "X-Agent-Id"
    """Carries the agent id to the upstream (always set by the proxy); read from the client
    only in trusted-header mode (neither ``jwt`` nor ``api_keys``)."""
    required: bool = False
    forward_credentials: bool = True
    """Forward the client's Authorization (or API-key) header upstream."""
    jwt: JwtConfig | None = None
    api_keys: ApiKeysConfig | None = None
    resource_metadata: ResourceMetadata | None = None

    @property
    def trusted_header(self) -> bool:
        return self.jwt is None and self.api_keys is None


@dataclass(frozen=True, slots=True)
class ErrorsConfig:
    domain: str = "agent-warden.dev"
    a2a_spec: A2aSpec = "1.0.1"


@dataclass(frozen=True, slots=True)
class Origins:
    """``Origin`` values allowed besides the request's own host (``origins.allow``)."""

    allow: tuple[str, ...] = ()
    """Origins (``https://app.example.com``, ``http://localhost:3000``) or ``*`` for any."""
    _any: bool = field(init=False, repr=False, compare=False)
    _normalized: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        normalized: set[str] = set()
        for value in self.allow:
            if value == ANY_ORIGIN:
                continue
            origin = normalize_origin(value)
            if origin is None:
                raise ValueError(f"not an origin: {value!r}")
            normalized.add(origin)
        object.__setattr__(self, "_any", ANY_ORIGIN in self.allow)
        object.__setattr__(self, "_normalized", frozenset(normalized))

    def allows(self, origin: str) -> bool:
        """True when ``origin`` (an ``Origin`` header value) is listed, compared case-
        insensitively without default ports, or when ``*`` is listed. A value that is not
        an origin (``null``, garbage) is allowed only by ``*``."""
        if self._any:
            return True
        normalized = normalize_origin(origin.strip())
        return normalized is not None and normalized in self._normalized


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
    origins: Origins = Origins()
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
"""The built-in policy used when no file is given, transparent: allow everything, no cap,
budget or rate limit (sessions still expire after 24 hours, or 1 hour idle)."""
