"""Minted sessions: what a grant (the body of ``POST /sessions``) narrows. Pure.

A grant can only narrow what the agent's policy allows (contract, Sessions): every
limit is the smaller of the two, a tool or method must be allowed by both.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

from proxy.durations import parse_duration
from proxy.errors import E
from proxy.policy.globs import glob_problem
from proxy.policy.limits import Call, Limits
from proxy.policy.model import GlobSet
from proxy.protocols import mcp

_KEYS = frozenset({"agent", "ttl", "idle_timeout", "budget", "rate_limit", "tools", "methods"})
_MAX_AGENT = 256


class GrantError(ValueError):
    """A grant that cannot be minted; the message names the key."""


@dataclass(frozen=True, slots=True)
class Grant:
    agent: str
    ttl: float | None = None
    idle_timeout: float | None = None
    calls: int | None = None
    tool_calls: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    per_minute: int | None = None
    tools: GlobSet | None = None
    methods: GlobSet | None = None

    def narrow(self, limits: Limits) -> Limits:
        """The policy's limits, narrowed by this grant."""
        tool_calls = dict(limits.tool_calls)
        for name, budget in self.tool_calls.items():
            tool_calls[name] = min(budget, tool_calls.get(name, budget))
        return replace(
            limits,
            ttl=_least(limits.ttl, self.ttl),
            idle_timeout=_least(limits.idle_timeout, self.idle_timeout),
            calls=int(_least(limits.calls, self.calls)),
            per_minute=int(_least(limits.per_minute, self.per_minute)),
            tool_calls=MappingProxyType(tool_calls),
        )

    def judge(
        self, calls: tuple[Call, ...], methods: tuple[str | None, ...], params: tuple[Any, ...]
    ) -> tuple[Call, ...]:
        """The policy's per-call verdicts, with what the grant forbids added."""
        if self.tools is None and self.methods is None:
            return calls
        judged: list[Call] = []
        for call, method, param in zip(calls, methods, params, strict=True):
            if call.denied is not None or method is None:
                judged.append(call)
            elif self.methods is not None and not self.methods.allows(method):
                judged.append(replace(call, denied=E.METHOD_NOT_AUTHORIZED))
            elif (
                method == mcp.TOOLS_CALL
                and self.tools is not None
                and not self.tools.allows(mcp.tool_name(method, param) or "")
            ):
                judged.append(replace(call, denied=E.TOOL_NOT_AUTHORIZED))
            else:
                judged.append(call)
        return tuple(judged)

    def allows_tool(self, name: str) -> bool:
        return self.tools is None or self.tools.allows(name)

    def to_json(self) -> str:
        """The grant as stored with its session (the request's own keys, normalized)."""
        doc: dict[str, Any] = {"agent": self.agent}
        if self.ttl is not None:
            doc["ttl"] = self.ttl
        if self.idle_timeout is not None:
            doc["idle_timeout"] = self.idle_timeout
        budget: dict[str, Any] = {}
        if self.calls is not None:
            budget["calls"] = self.calls
        if self.tool_calls:
            budget["tools"] = dict(self.tool_calls)
        if budget:
            doc["budget"] = budget
        if self.per_minute is not None:
            doc["rate_limit"] = {"per_minute": self.per_minute}
        for key, globs in (("tools", self.tools), ("methods", self.methods)):
            if globs is not None:
                doc[key] = {"allow": list(globs.allow), "deny": list(globs.deny)}
        return json.dumps(doc, separators=(",", ":"), sort_keys=True)


def _least(a: float, b: float | None) -> float:
    return a if b is None or a <= b else b


def parse_grant(doc: object) -> Grant:
    """A grant from the JSON body of ``POST /sessions``; GrantError names what is wrong."""
    if not isinstance(doc, dict):
        raise GrantError("body: expected a JSON object")
    unknown = sorted(set(doc) - _KEYS)
    if unknown:
        raise GrantError(f"{unknown[0]}: unknown key")
    agent = doc.get("agent")
    if not isinstance(agent, str) or not agent.strip() or len(agent) > _MAX_AGENT:
        raise GrantError("agent: expected a non-empty string")
    budget = _section(doc, "budget", {"calls", "tools"})
    rate = _section(doc, "rate_limit", {"per_minute"})
    tool_calls = budget.get("tools", {})
    if not isinstance(tool_calls, dict):
        raise GrantError("budget.tools: expected an object of tool name to calls")
    return Grant(
        agent=agent.strip(),
        ttl=_duration(doc, "ttl"),
        idle_timeout=_duration(doc, "idle_timeout"),
        calls=_limit(budget.get("calls"), "budget.calls"),
        tool_calls=MappingProxyType(
            {str(k): _need(_limit(v, f"budget.tools.{k}")) for k, v in tool_calls.items()}
        ),
        per_minute=_limit(rate.get("per_minute"), "rate_limit.per_minute"),
        tools=_globs(doc, "tools"),
        methods=_globs(doc, "methods"),
    )


def grant_from_json(text: str) -> Grant:
    """A grant as stored by ``Grant.to_json``."""
    return parse_grant(json.loads(text))


def _section(doc: Mapping[str, Any], key: str, keys: set[str]) -> Mapping[str, Any]:
    value = doc.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise GrantError(f"{key}: expected an object")
    unknown = sorted(set(value) - keys)
    if unknown:
        raise GrantError(f"{key}.{unknown[0]}: unknown key")
    return value


def _duration(doc: Mapping[str, Any], key: str) -> float | None:
    value = doc.get(key)
    if value is None:
        return None
    if isinstance(value, bool):
        raise GrantError(f"{key}: expected a duration")
    if isinstance(value, int | float) and value > 0:
        return float(value)
    if isinstance(value, str):
        seconds = parse_duration(value)
        if seconds is not None and seconds > 0:
            return seconds
    raise GrantError(f"{key}: expected a duration such as 90s, 15m or 1h")


def _limit(value: object, key: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise GrantError(f"{key}: expected an integer >= 1")
    return value


def _need(value: int | None) -> int:
    assert value is not None
    return value


def _globs(doc: Mapping[str, Any], key: str) -> GlobSet | None:
    section = _section(doc, key, {"allow", "deny"})
    if not section:
        return None
    lists: dict[str, tuple[str, ...]] = {}
    for part in ("allow", "deny"):
        value = section.get(part, ["*"] if part == "allow" else [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise GrantError(f"{key}.{part}: expected a list of globs")
        for glob in value:
            problem = glob_problem(glob)
            if problem is not None:
                raise GrantError(f"{key}.{part}: {problem}")
        lists[part] = tuple(value)
    return GlobSet(allow=lists["allow"], deny=lists["deny"])
