"""Pure decisions: who is calling, and what each element of a request may do."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from proxy.errors import E
from proxy.policy.limits import UNLIMITED, Call, Limits
from proxy.policy.model import Identity, Rules
from proxy.protocols import a2a, mcp
from proxy.protocols.jsonrpc import Body

ANONYMOUS = "anonymous"


def identify(headers: Mapping[str, str], identity: Identity) -> str | None:
    """The calling agent's id in trusted-header mode (``identity.trusted_header``: neither
    jwt nor api_keys); None when the header is required and missing. With jwt or api_keys
    the id comes from the verified credential instead, never from this header."""
    value = headers.get(identity.header, "").strip()
    if value:
        return value
    return None if identity.required else ANONYMOUS


def identity_header_problem(
    values: Sequence[str], connection: Sequence[str], identity: Identity
) -> str | None:
    """Why the trusted identity header cannot be believed, or None (trusted-header mode).

    ``values`` are every value of the header as received, ``connection`` every value of
    ``Connection``. Named in ``Connection``, the header would be dropped on the way up
    (hop by hop), so the upstream would not see the identity the proxy judged; sent twice
    with different values, the upstream may read the other one (contract, Identity).
    """
    if not connection and len(values) < 2:
        return None  # the common case, decided without a string operation
    name = identity.header.lower()
    for value in connection:
        if any(token.strip().lower() == name for token in value.split(",")):
            return "identity header named in Connection"
    if len({v.strip() for v in values}) > 1:
        return "identity header sent twice with different values"
    return None


def method_allowed(rules: Rules, method: str) -> bool:
    """An A2A operation by either generation's name: a deny of one name denies it."""
    op = a2a.op_for_method(method)
    if op is None:
        return rules.methods.allows(method)
    return rules.methods.allows_any(a2a.method_names(op))


def authorize(rules: Rules, method: str, params: object) -> tuple[E | None, str | None]:
    """Method, then tool authorization; returns (denial, tool name)."""
    if not method_allowed(rules, method):
        return E.METHOD_NOT_AUTHORIZED, None
    if method == mcp.TOOLS_CALL:
        tool = mcp.tool_name(method, params)
        if not rules.tools.allows(tool or ""):
            return E.TOOL_NOT_AUTHORIZED, tool
        return None, tool
    return None, None


def calls_for(body: Body, rules: Rules) -> tuple[Call, ...]:
    """One ``Call`` per element: counted or not, its tool, its authorization verdict."""
    calls: list[Call] = []
    for message in body.messages:
        method = message.method
        if method is None:  # a response the client sends back: never counted, never denied
            calls.append(Call(counted=False))
            continue
        denied, tool = authorize(rules, method, message.params)
        counted = message.has_id and method not in mcp.UNCOUNTED_METHODS
        calls.append(Call(counted=counted, tool=tool, denied=denied))
    return tuple(calls)


def _count(limit: int | None) -> int:
    return UNLIMITED if limit is None else limit


_LIMITS: dict[int, tuple[Rules, Limits]] = {}


def limits_for(rules: Rules) -> Limits:
    """The store's view of a policy's limits, made once per rules object (rules are
    immutable and live as long as their policy; keyed by identity, since hashing a rules
    value walks all of it on every request).

    A limit the policy leaves unset (None) is not limited: the store gets ``UNLIMITED``.
    """
    hit = _LIMITS.get(id(rules))
    if hit is not None and hit[0] is rules:
        return hit[1]
    if len(_LIMITS) >= 1024:  # policies reloaded many times: forget the old ones
        _LIMITS.clear()
    limits = _limits_of(rules)
    _LIMITS[id(rules)] = (rules, limits)
    return limits


def _limits_of(rules: Rules) -> Limits:
    return Limits(
        ttl=rules.session.ttl,
        idle_timeout=rules.session.idle_timeout,
        max_per_agent=_count(rules.session.max_per_agent),
        calls=_count(rules.budget.calls),
        tool_calls=rules.budget.tools,
        per_minute=_count(rules.rate_limit.per_minute),
    )
