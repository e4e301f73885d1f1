"""``agent-warden explain``: which policy a caller meets, why, and what it decides.

Pure: a policy file and a described call in, an ``Explanation`` out (text or JSON). The
match trace and the verdict come from the same code the proxy runs (``NamedPolicy.matches``,
``PolicyFile.resolve``, ``authorize``); what depends on a session's state (budgets, rates,
the live-session cap) is shown as the limits that would apply, not as a verdict.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from proxy.errors import E
from proxy.policy import PolicyFile, Rules
from proxy.policy.decide import authorize
from proxy.policy.model import DEFAULT_POLICY_NAME, GlobSet, NamedPolicy
from proxy.protocols import mcp

__all__ = ["Explanation", "Step", "explain", "parse_claims"]


@dataclass(frozen=True, slots=True)
class Step:
    """One policy of the file, in order: whether it matched, and why not."""

    policy: str
    matched: bool
    why: str


@dataclass(frozen=True, slots=True)
class Explanation:
    agent: str
    method: str
    tool: str | None
    policy: str  # the policy that applies (``default``: none matched)
    trace: tuple[Step, ...]
    limits: dict[str, Any]
    decision: str  # allow | deny | audit-deny
    reason: str | None  # the errors.md reason of a denial
    detail: str
    stateful: tuple[str, ...] = field(default=())  # what the session's state may still deny

    def to_json(self) -> str:
        doc = {
            "agent": self.agent,
            "method": self.method,
            "tool": self.tool,
            "policy": self.policy,
            "trace": [{"policy": s.policy, "matched": s.matched, "why": s.why} for s in self.trace],
            "limits": self.limits,
            "decision": self.decision,
            "reason": self.reason,
            "detail": self.detail,
            "stateful": list(self.stateful),
        }
        return json.dumps(doc, indent=2, sort_keys=False)

    def to_text(self) -> str:
        call = self.method + (f" {self.tool}" if self.tool else "")
        lines = [f"agent {self.agent!r}, {call}", "", "policies, in order:"]
        for step in self.trace:
            mark = "->" if step.matched else "  "
            lines.append(f"  {mark} {step.policy}: {step.why}")
        lines += ["", f"applies: {self.policy}", "limits:"]
        for key, value in self.limits.items():
            lines.append(f"  {key}: {_show(value)}")
        lines += ["", f"decision: {self.decision}" + (f" ({self.reason})" if self.reason else "")]
        lines.append(f"  {self.detail}")
        if self.stateful:
            lines.append("  still decided per session at run time: " + ", ".join(self.stateful))
        return "\n".join(lines) + "\n"


def _show(value: Any) -> str:
    if value is None:
        return "not limited"
    if isinstance(value, dict):
        return "; ".join(f"{k} {_show(v)}" for k, v in value.items()) or "none"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(str(v) for v in value) + "]"
    return str(value)


def parse_claims(pairs: Sequence[str]) -> dict[str, object]:
    """``k=v`` pairs as claims: ``true``/``false`` are booleans, integers and decimals
    numbers, anything else a string (quote it, ``k="1"``, to keep a string)."""
    claims: dict[str, object] = {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        if not sep or not name:
            raise ValueError(f"--claims: expected NAME=VALUE, got {pair!r}")
        claims[name] = _claim_value(raw)
    return claims


def _claim_value(raw: str) -> object:
    if raw in ("true", "false"):
        return raw == "true"
    if len(raw) >= 2 and raw[0] == raw[-1] == '"':
        return raw[1:-1]
    for kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            pass
    return raw


def _why_not(
    policy: NamedPolicy, agent: str, scopes: frozenset[str], claims: Mapping[str, object]
) -> str:
    if not policy.agents.allows(agent):
        return f"agents {list(policy.agents.allow)} do not match {agent!r}"
    missing = sorted(policy.scopes - scopes)
    if missing:
        return f"scopes {missing} not held"
    for test in policy._tests:
        if test.name not in claims:
            return f"claim {test.name!r} missing"
        if not test.holds(claims):
            return f"claim {test.name!r} is {claims[test.name]!r}, not {test.value!r}"
    return "does not match"


def _why(policy: NamedPolicy) -> str:
    parts = [f"agents {list(policy.agents.allow)}"]
    if policy.scopes:
        parts.append(f"scopes {sorted(policy.scopes)}")
    if policy.claims:
        parts.append("claims " + ", ".join(f"{k}={v!r}" for k, v in policy.claims.items()))
    return "matches: " + ", ".join(parts)


def _globs(rules: GlobSet) -> dict[str, list[str]]:
    return {"allow": list(rules.allow), "deny": list(rules.deny)}


def _limits(rules: Rules) -> dict[str, Any]:
    return {
        "mode": rules.mode,
        "session.ttl_s": rules.session.ttl,
        "session.idle_timeout_s": rules.session.idle_timeout,
        "session.max_per_agent": rules.session.max_per_agent,
        "session.require": rules.session.require,
        "budget.calls": rules.budget.calls,
        "budget.tools": dict(rules.budget.tools),
        "rate_limit.per_minute": rules.rate_limit.per_minute,
        "tools": _globs(rules.tools),
        "methods": _globs(rules.methods),
        "require_scopes": list(rules.require_scopes),
    }


def explain(
    policy: PolicyFile,
    agent: str,
    *,
    method: str | None = None,
    tool: str | None = None,
    scopes: Sequence[str] = (),
    claims: Mapping[str, object] | None = None,
) -> Explanation:
    """The first-match trace, the effective limits, and the verdict for one call (a
    ``tools/call`` of ``tool`` when a tool is named and no method)."""
    held = frozenset(scopes)
    given = dict(claims or {})
    call = method or (mcp.TOOLS_CALL if tool is not None else mcp.TOOLS_LIST)
    trace: list[Step] = []
    name, rules = policy.resolve(agent, held, given if given else None)
    for candidate in policy.policies:
        if candidate.matches(agent, held, given if given else None):
            trace.append(Step(candidate.name, True, _why(candidate)))
            break
        trace.append(Step(candidate.name, False, _why_not(candidate, agent, held, given)))
    if name == DEFAULT_POLICY_NAME:
        trace.append(Step(DEFAULT_POLICY_NAME, True, "no policy matched: the defaults apply"))
    params: dict[str, Any] = {"name": tool} if tool is not None else {}
    reason: E | None = None
    detail = "allowed by the tool and method rules"
    missing = [s for s in rules.require_scopes if s not in held]
    if missing:
        reason, detail = E.INSUFFICIENT_SCOPE, f"require_scopes: {missing} not held"
    else:
        denied, _ = authorize(rules, call, params)
        if denied is E.METHOD_NOT_AUTHORIZED:
            reason, detail = denied, f"method {call!r} is not allowed by {_globs(rules.methods)}"
        elif denied is E.TOOL_NOT_AUTHORIZED:
            reason, detail = denied, f"tool {tool!r} is not allowed by {_globs(rules.tools)}"
    decision = "allow"
    if reason is not None:
        decision = "audit-deny" if rules.mode == "audit" else "deny"
        if rules.mode == "audit":
            detail += " (audit mode: recorded, forwarded anyway)"
    stateful: list[str] = []
    if rules.budget.calls is not None:
        stateful.append(f"budget of {rules.budget.calls} calls per session")
    if tool is not None and tool in rules.budget.tools:
        stateful.append(f"budget of {rules.budget.tools[tool]} {tool!r} calls per session")
    if rules.rate_limit.per_minute is not None:
        stateful.append(f"{rules.rate_limit.per_minute} calls per minute")
    if rules.session.max_per_agent is not None:
        stateful.append(f"{rules.session.max_per_agent} live sessions per agent")
    if rules.session.require == "minted":
        stateful.append("a minted session (Warden-Session) is required")
    return Explanation(
        agent=agent,
        method=call,
        tool=tool,
        policy=name,
        trace=tuple(trace),
        limits=_limits(rules),
        decision=decision,
        reason=reason.name if reason is not None else None,
        detail=detail,
        stateful=tuple(stateful),
    )
