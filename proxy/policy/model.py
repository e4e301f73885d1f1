"""The policy model: frozen values built once per load, read on every request.

Field names equal the YAML key names of the policy file (contract.md), which lets
the loader build each section by ``dataclasses.replace(default, **keys_given)``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final, Literal

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

URL_RE = re.compile(rf'({_SCHEME})://({_HOST})(?::({_PORT}))?(?:[/?][!"$-~]*)?')
"""An http or https URL: an origin (``ORIGIN_RE``), then optionally a path and query of
printable ASCII; no user info, no fragment, no white space. Same pattern in the schema."""

_DEFAULT_PORTS = {"http": "80", "https": "443"}

HMAC_ALGORITHMS: Final = ("HS256", "HS384", "HS512")
"""JWS algorithms verified with a shared secret (``identity.jwt.secret_file`` only)."""
PUBLIC_KEY_ALGORITHMS: Final = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
)
"""JWS algorithms verified with a public key (``jwks_url`` or ``jwks_file`` only)."""
JWT_ALGORITHMS: Final = PUBLIC_KEY_ALGORITHMS + HMAC_ALGORITHMS
"""Every JWS algorithm ``identity.jwt.algorithms`` may list (case-sensitive, RFC 7518)."""
KEY_SOURCE_PROBLEM: Final = (
    "HS* algorithms need secret_file; RS/PS/ES/EdDSA need jwks_url or jwks_file"
)
"""Why a list of algorithms does not fit the key source (shared by model and loader)."""


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
    require_scopes: tuple[str, ...] = ()
    """Scopes the verified credential must hold (INSUFFICIENT_SCOPE otherwise), in the
    order written; empty: none."""


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
    """Seconds of clock skew allowed on ``exp`` and ``nbf`` (0: none)."""

    def __post_init__(self) -> None:
        """Algorithm confusion is impossible by construction: ``none`` and unknown names are
        refused, HMAC algorithms go only with ``secret_file`` and public-key ones only
        with a JWKS (the loader reports the same, with lines, before building this)."""
        sources = [s for s in (self.jwks_url, self.jwks_file, self.secret_file) if s is not None]
        if len(sources) > 1:
            raise ValueError("only one of jwks_url, jwks_file, secret_file may be set")
        problem = algorithms_problem(self.algorithms, secret=self.secret_file is not None)
        if problem is not None:
            raise ValueError(problem)

    @property
    def hmac(self) -> bool:
        """Tokens are verified with the shared secret of ``secret_file``."""
        return self.secret_file is not None


def algorithms_problem(algorithms: tuple[str, ...], *, secret: bool) -> str | None:
    """Why ``algorithms`` cannot be used with a shared secret (``secret``) or a JWKS (not
    ``secret``), or None."""
    for alg in algorithms:
        if alg.lower() == "none":
            return f"{alg!r} is never accepted: an unsigned token proves nothing"
        if alg not in JWT_ALGORITHMS:
            return f"unknown algorithm {alg!r}"
    hmac = any(alg in HMAC_ALGORITHMS for alg in algorithms)
    public = any(alg in PUBLIC_KEY_ALGORITHMS for alg in algorithms)
    if (hmac and not secret) or (public and secret):
        return KEY_SOURCE_PROBLEM
    return None


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

    def __post_init__(self) -> None:
        if self.jwt is not None and self.api_keys is not None:
            raise ValueError("only one of jwt and api_keys may be set")

    @property
    def trusted_header(self) -> bool:
        """Neither jwt nor api_keys: the agent id is read from ``header`` as sent (for a
        proxy behind an authenticating gateway or mesh)."""
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


ClaimValue = str | int | float | bool
"""What ``match.claims`` compares a claim with: a string (a glob) or a JSON scalar."""

_NO_SCOPES: frozenset[str] = frozenset()


def _no_claims() -> Mapping[str, ClaimValue]:
    return MappingProxyType({})


def _json_type(value: object) -> str | None:
    """The JSON type of a scalar claim value; None for anything else (lists, objects, null)."""
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    return None


@dataclass(frozen=True, slots=True)
class _ClaimTest:
    name: str
    kind: str
    value: ClaimValue
    pattern: re.Pattern[str] | None

    def holds(self, claims: Mapping[str, object]) -> bool:
        if self.name not in claims:
            return False
        actual = claims[self.name]
        if _json_type(actual) != self.kind:
            return False
        if self.pattern is not None:
            assert isinstance(actual, str)
            return self.pattern.match(actual) is not None
        return actual == self.value


@dataclass(frozen=True, slots=True)
class NamedPolicy:
    """One entry of ``policies``: it applies when every key of its ``match`` holds."""

    name: str
    agents: GlobSet = GlobSet()
    """Globs on the agent id (``match.agents``); no deny list. Unset: any agent."""
    rules: Rules = Rules()
    """Fully resolved: every field the policy leaves unset comes from ``defaults``."""
    scopes: frozenset[str] = _NO_SCOPES
    """``match.scopes``: the credential must hold every one."""
    claims: Mapping[str, ClaimValue] = field(default_factory=_no_claims, compare=False)
    """``match.claims``: each claim must exist and equal the value: a string value is a glob
    on a string claim; a number or boolean equals only a claim of the same JSON type."""
    _claims_key: tuple[tuple[str, str, ClaimValue], ...] = field(init=False, repr=False)
    """``claims`` for equality and hashing: ``1`` and ``true`` differ."""
    _tests: tuple[_ClaimTest, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.claims, MappingProxyType):
            object.__setattr__(self, "claims", MappingProxyType(dict(self.claims)))
        if not isinstance(self.scopes, frozenset):
            object.__setattr__(self, "scopes", frozenset(self.scopes))
        tests: list[_ClaimTest] = []
        for name, value in self.claims.items():
            kind = _json_type(value)
            if kind is None or (isinstance(value, float) and not math.isfinite(value)):
                raise ValueError(f"claim {name!r}: not a string, number or boolean: {value!r}")
            pattern = compile_globs((value,)) if isinstance(value, str) else None
            tests.append(_ClaimTest(name, kind, value, pattern))
        object.__setattr__(self, "_tests", tuple(tests))
        key = tuple(sorted((t.name, t.kind, t.value) for t in tests))
        object.__setattr__(self, "_claims_key", key)

    @property
    def uses_credential(self) -> bool:
        """Matches on scopes or claims, not only on the agent id."""
        return bool(self.scopes or self._tests)

    def matches(
        self,
        agent_id: str,
        scopes: frozenset[str] = _NO_SCOPES,
        claims: Mapping[str, object] | None = None,
    ) -> bool:
        """Every key of ``match`` holds for this caller (AND)."""
        if not self.agents.allows(agent_id):
            return False
        if self.scopes and not self.scopes <= scopes:
            return False
        if self._tests:
            if claims is None:
                return False
            return all(test.holds(claims) for test in self._tests)
        return True


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
    _cache: dict[object, tuple[str, Rules]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )
    _match_scopes: frozenset[str] = field(init=False, repr=False, compare=False)
    """Every scope some ``match.scopes`` names: the only scopes a resolution depends on."""
    _match_claims: tuple[str, ...] = field(init=False, repr=False, compare=False)
    """Every claim some ``match.claims`` names: the only claims a resolution depends on."""

    def __post_init__(self) -> None:
        scopes: set[str] = set()
        claims: set[str] = set()
        for policy in self.policies:
            scopes.update(policy.scopes)
            claims.update(policy.claims)
        object.__setattr__(self, "_match_scopes", frozenset(scopes))
        object.__setattr__(self, "_match_claims", tuple(sorted(claims)))

    @property
    def matches_credentials(self) -> bool:
        """Some policy matches on scopes or claims (not only on the agent id)."""
        return bool(self._match_scopes or self._match_claims)

    def resolve(
        self,
        agent_id: str,
        scopes: frozenset[str] = _NO_SCOPES,
        claims: Mapping[str, object] | None = None,
    ) -> tuple[str, Rules]:
        """The name and rules of the first policy whose ``match`` holds for this caller,
        else the defaults."""
        key = self._cache_key(agent_id, scopes, claims)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        result = (DEFAULT_POLICY_NAME, self.defaults)
        for policy in self.policies:
            if policy.matches(agent_id, scopes, claims):
                result = (policy.name, policy.rules)
                break
        # Bounded: agent ids and claims come from requests, so an attacker can vary them.
        if len(self._cache) >= _RESOLVE_CACHE_SIZE:
            self._cache.clear()
        self._cache[key] = result
        return result

    def _cache_key(
        self, agent_id: str, scopes: frozenset[str], claims: Mapping[str, object] | None
    ) -> object:
        """What a resolution depends on: the agent id, and only the scopes and claims some
        policy names (each claim by JSON type and value, or as missing / not a scalar)."""
        if not (self._match_scopes or self._match_claims):
            return agent_id
        values: list[tuple[str | None, object]] = []
        for name in self._match_claims:
            if claims is None or name not in claims:
                values.append(("missing", None))
                continue
            value = claims[name]
            kind = _json_type(value)
            values.append((kind, value) if kind is not None else (None, None))
        return (agent_id, self._match_scopes.intersection(scopes), tuple(values))


DEFAULT_POLICY = PolicyFile()
"""The built-in policy used when no file is given, transparent: allow everything, no cap,
budget or rate limit (sessions still expire after 24 hours, or 1 hour idle)."""
