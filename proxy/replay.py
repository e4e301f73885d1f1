"""``agent-warden replay``: what a candidate policy would have decided on recorded traffic.

The decision log (``--decision-log``) holds one line per counted call. Replay runs those
calls in time order through the real decide step (``Gate.admit`` on an ``Exchange``, the
in-memory session store, the policy's matching, limits and authorization) with a clock
that reads each record's own time, so budgets, rate limits, idle expiry and the
live-session cap trip as they would have. Sessions are re-created as the proxy created
them: an MCP protocol session by its ``initialize`` (under the cap), a minted session by
minting it (without a grant's narrowing: the log does not keep grants), and everything
else in the agent's window.

A2A calls replay in their context (the log names the context a call was judged in, or
the one its answer opened): a send adopts a context not seen yet, under the cap, as the
proxy does; a call naming a task finds the task's context through a task link made for
the replay. Claims are not logged (they may be personal data), so a policy that matches
on claims sees none. Calls of neither protocol are not replayed, and counted as such.
"""

from __future__ import annotations

import itertools
import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from multidict import CIMultiDict, CIMultiDictProxy

from proxy.exchange import MINTED_HEADER, Exchange
from proxy.gate import Admission, Gate, Refusal
from proxy.identity import Credential
from proxy.metrics import Metrics
from proxy.policy import PolicyFile
from proxy.policy.grant import Grant
from proxy.protocols import a2a, jsonrpc, mcp
from proxy.protocols.classify import Binding, Classified
from proxy.record import Decision
from proxy.sessions.base import Kind
from proxy.sessions.memory import MemoryStore

__all__ = ["Change", "Report", "Verdict", "compare", "replay"]

EXAMPLES = 5  # examples kept per kind of change


@dataclass(frozen=True, slots=True)
class Verdict:
    """What one policy decided for one recorded call."""

    decision: str  # allow | deny | audit-deny | skipped
    reason: str | None
    policy: str


class _Clock:
    __slots__ = ("now",)

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


_JSON = CIMultiDictProxy(CIMultiDict({"Content-Type": "application/json"}))


class _Replayer:
    def __init__(self, policy: PolicyFile) -> None:
        self._policy = policy
        self._clock = _Clock()
        self._store = MemoryStore()
        self._gate = Gate(
            lambda: policy, self._store, Metrics(), lambda: policy.errors, clock=self._clock
        )
        self._sessions: dict[tuple[str, str], str] = {}  # (kind, logged id) -> replayed id
        self._ids = itertools.count(1)
        self._headers: dict[str, CIMultiDictProxy[str]] = {}
        self._linked: set[str] = set()  # A2A contexts with a replay task linked to them

    def _exchange(
        self,
        record: Decision,
        method: str,
        params: Any,
        headers: CIMultiDictProxy[str],
        protocol: Literal["mcp", "a2a"] = "mcp",
    ) -> Exchange:
        message = jsonrpc.Message(
            method,
            next(self._ids),
            True,
            params,
            {"jsonrpc": "2.0", "id": 0, "method": method, "params": params},
        )
        info = Classified(protocol, Binding.JSONRPC, body=jsonrpc.Body((message,), False))
        caller = Credential(record.agent, "header", frozenset(record.scopes))
        return Exchange("POST", "/mcp", "/mcp", headers, caller, info)

    async def _open(self, record: Decision) -> str | Verdict:
        """The replayed session a logged protocol or minted session stands for."""
        assert record.session is not None
        assert record.kind is not None
        key = (record.kind, record.session)
        known = self._sessions.get(key)
        if known is not None:
            return known
        if record.kind == Kind.MINTED.value:
            minted = await self._gate.mint(Grant(agent=record.agent))
            if not isinstance(minted, tuple):
                return Verdict("deny", minted.reason.name, self._policy.resolve(record.agent)[0])
            self._sessions[key] = minted[0]
            return minted[0]
        params = {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {}}
        exchange = self._exchange(record, mcp.INITIALIZE, params, _JSON)
        verdict = await self._gate.admit(exchange)
        if isinstance(verdict, Refusal):
            return _verdict(verdict)
        extra = await self._gate.settle(verdict, 200, {})
        sid = extra.get(mcp.SESSION_HEADER) or verdict.session_id
        if sid is None:  # audit mode past the cap, say: judged in the window instead
            return Verdict("allow", None, verdict.policy)
        self._sessions[key] = sid
        return sid

    def _session_headers(self, record: Decision, sid: str) -> CIMultiDictProxy[str]:
        name = MINTED_HEADER if record.kind == Kind.MINTED.value else mcp.SESSION_HEADER
        headers = self._headers[sid] = CIMultiDictProxy(CIMultiDict({**_JSON, name: sid}))
        return headers

    async def _a2a(self, record: Decision) -> Verdict:
        """An A2A call in the context it was judged in (or its agent's window)."""
        op = a2a.op_for_method(record.method)
        if op is None:
            return Verdict("skipped", None, "")
        ctx = record.session if record.kind == Kind.PROTOCOL.value else None
        params: dict[str, Any] = {}
        if op.name in (a2a.SEND_MESSAGE.name, a2a.SEND_STREAMING_MESSAGE.name):
            message: dict[str, Any] = {"messageId": "m", "role": "ROLE_USER", "parts": []}
            if ctx is not None:
                message["contextId"] = ctx
            params = {"message": message}
        elif op is a2a.LIST_TASKS:
            params = {"contextId": ctx} if ctx is not None else {}
        elif op.takes_task_id:
            task = f"replay-task:{ctx}" if ctx is not None else f"replay-lost:{next(self._ids)}"
            if ctx is not None and ctx not in self._linked:
                await self._store.link_task(task, ctx, self._clock.now)
                self._linked.add(ctx)
            params = {"id": task}
            if a2a.task_id(op, params) is None:
                params = {"taskId": task}
        exchange = self._exchange(record, record.method, params, _JSON, "a2a")
        verdict = await self._gate.admit(exchange)
        if isinstance(verdict, Admission):
            await self._gate.finish(verdict)
        return _verdict(verdict)

    async def judge(self, record: Decision) -> Verdict:
        self._clock.now = record.ts
        if record.protocol == "a2a":
            return await self._a2a(record)
        if record.protocol != "mcp":
            return Verdict("skipped", None, "")
        headers = _JSON
        if record.kind in (Kind.PROTOCOL.value, Kind.MINTED.value) and record.session:
            opened = await self._open(record)
            if isinstance(opened, Verdict):
                if opened.decision != "allow":
                    return opened  # the session could not be opened: its calls neither
            else:
                headers = self._headers.get(opened) or self._session_headers(record, opened)
        params: dict[str, Any] = {}
        if record.method == mcp.TOOLS_CALL:
            params = {"name": record.tool or "", "arguments": {}}
        verdict = await self._gate.admit(self._exchange(record, record.method, params, headers))
        if isinstance(verdict, Admission):
            await self._gate.finish(verdict)
        return _verdict(verdict)


def _verdict(verdict: Admission | Refusal) -> Verdict:
    if isinstance(verdict, Refusal):
        return Verdict("deny", verdict.error.spec.name, verdict.admission.policy)
    reason = verdict.reason.name if verdict.reason is not None else None
    return Verdict(verdict.decision, reason, verdict.policy)


async def replay(records: Iterable[Decision], policy: PolicyFile) -> list[Verdict]:
    """What ``policy`` decides for each record (in the order given; sort them by time)."""
    replayer = _Replayer(policy)
    quiet = logging.getLogger("agent_warden.decision")  # a denial replayed is no denial
    was, quiet.disabled = quiet.disabled, True
    try:
        return [await replayer.judge(r) for r in records]
    finally:
        quiet.disabled = was


@dataclass(frozen=True, slots=True)
class Change:
    record: Decision
    before: Verdict
    after: Verdict

    @property
    def kind(self) -> str:
        return f"{_category(self.before)}->{_category(self.after)}"


def _category(verdict: Verdict) -> str:
    return "deny" if verdict.decision == "deny" else "allow"


@dataclass(slots=True)
class Report:
    """What changes between two runs of the same calls (or a run and the log itself)."""

    calls: int = 0
    skipped: int = 0
    changed: int = 0
    reworded: int = 0  # same outcome (blocked or not), another reason or audit mode
    by_kind: Counter[str] = field(default_factory=Counter)
    by_policy: Counter[tuple[str, str]] = field(default_factory=Counter)
    by_agent: Counter[tuple[str, str]] = field(default_factory=Counter)
    by_reason: Counter[tuple[str, str]] = field(default_factory=Counter)
    examples: dict[str, list[Change]] = field(default_factory=dict)
    earliest: dict[str, tuple[float, str, str | None]] = field(default_factory=dict)

    def to_doc(self) -> dict[str, Any]:
        def rows(counter: Counter[tuple[str, str]]) -> list[dict[str, Any]]:
            return [
                {"change": kind, "key": key, "calls": n}
                for (kind, key), n in sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))
            ]

        return {
            "calls": self.calls,
            "skipped": self.skipped,
            "changed": self.changed,
            "reworded": self.reworded,
            "by_change": dict(sorted(self.by_kind.items())),
            "by_policy": rows(self.by_policy),
            "by_agent": rows(self.by_agent),
            "by_reason": rows(self.by_reason),
            "examples": {
                kind: [
                    {
                        "ts": c.record.ts,
                        "agent": c.record.agent,
                        "session": c.record.session,
                        "method": c.record.method,
                        "tool": c.record.tool,
                        "before": {"decision": c.before.decision, "reason": c.before.reason},
                        "after": {
                            "decision": c.after.decision,
                            "reason": c.after.reason,
                            "policy": c.after.policy,
                        },
                    }
                    for c in changes
                ]
                for kind, changes in sorted(self.examples.items())
            },
            "earliest_limits": [
                {"reason": reason, "ts": ts, "agent": agent, "session": session}
                for reason, (ts, agent, session) in sorted(
                    self.earliest.items(), key=lambda kv: kv[1][0]
                )
            ],
        }

    def to_text(self) -> str:
        doc = self.to_doc()
        lines = [
            f"{self.calls} calls replayed, {self.skipped} not replayed (neither MCP nor A2A), "
            f"{self.changed} verdicts change"
            + (
                f"; {self.reworded} more keep their outcome with another reason"
                if self.reworded
                else ""
            )
        ]
        for kind, n in doc["by_change"].items():
            lines.append(f"  {kind}: {n}")
        for title, key in (
            ("by policy", "by_policy"),
            ("by agent", "by_agent"),
            ("by reason", "by_reason"),
        ):
            if doc[key]:
                lines.append(f"{title}:")
                for row in doc[key][:20]:
                    lines.append(f"  {row['change']:12} {row['key']}: {row['calls']}")
        for kind, changes in doc["examples"].items():
            lines.append(f"first {kind}:")
            for c in changes:
                tool = f" {c['tool']}" if c["tool"] else ""
                lines.append(
                    f"  ts={c['ts']:.3f} agent={c['agent']} {c['method']}{tool}: "
                    f"{c['before']['decision']}({c['before']['reason'] or '-'}) -> "
                    f"{c['after']['decision']}({c['after']['reason'] or '-'}) "
                    f"[{c['after']['policy']}]"
                )
        if doc["earliest_limits"]:
            lines.append("limits that trip earliest under the candidate:")
            for row in doc["earliest_limits"]:
                lines.append(
                    f"  {row['reason']}: ts={row['ts']:.3f} agent={row['agent']} "
                    f"session={row['session'] or '-'}"
                )
        return "\n".join(lines) + "\n"


_LIMIT_REASONS = frozenset({"SESSION_BUDGET_EXCEEDED", "SESSION_RATE_LIMITED", "TOO_MANY_SESSIONS"})


def compare(records: list[Decision], before: list[Verdict], after: list[Verdict]) -> Report:
    """The changes from ``before`` to ``after`` verdicts of the same records."""
    report = Report()
    for record, old, new in zip(records, before, after, strict=True):
        if new.decision == "skipped":
            report.skipped += 1
            continue
        report.calls += 1
        if new.decision == "deny" and new.reason in _LIMIT_REASONS:
            report.earliest.setdefault(new.reason, (record.ts, record.agent, record.session))
        if (old.decision, old.reason) == (new.decision, new.reason):
            continue
        change = Change(record, old, new)
        if _category(old) == _category(new):
            report.reworded += 1
            continue
        report.changed += 1
        kind = change.kind
        report.by_kind[kind] += 1
        report.by_policy[(kind, new.policy)] += 1
        report.by_agent[(kind, record.agent)] += 1
        report.by_reason[(kind, new.reason or old.reason or "-")] += 1
        kept = report.examples.setdefault(kind, [])
        if len(kept) < EXAMPLES:
            kept.append(change)
    return report


def recorded(records: Iterable[Decision]) -> list[Verdict]:
    """The verdicts the log itself holds."""
    return [Verdict(r.decision, r.reason, r.policy) for r in records]
