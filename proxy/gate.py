"""Identify and decide: the session policy applied to one classified request.

The gate turns a request into an ``Admission`` (forward it, perhaps altered) or a
``Refusal`` (answer with an envelope). Pure parts live in ``policy.decide``; the store
makes the one atomic decision per request that needs state.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from proxy.errors import E, WardenError, jsonrpc_error_object
from proxy.metrics import Metrics
from proxy.policy import PolicyFile, Rules
from proxy.policy.decide import authorize, calls_for, identify, limits_for
from proxy.protocols import a2a, mcp
from proxy.protocols.classify import Classified
from proxy.sessions.base import Call, Denial, Limits, SessionStore, StoreUnavailable

log = logging.getLogger("agent_warden.decision")

# Sessions the proxy issues itself (stateless upstreams) carry this prefix, so any replica
# knows to keep the id from the upstream without asking the store.
PROXY_SESSION_PREFIX = "awp-"
_UNCAPPED = 2**31 - 1
_SESSION_STARTERS = frozenset({a2a.SEND_MESSAGE.name, a2a.SEND_STREAMING_MESSAGE.name})


@dataclass(slots=True)
class Admission:
    """A request allowed through (wholly or in part), and what to do around the forward."""

    agent: str
    policy: str
    mode: str
    session_id: str | None = None
    decision: str = "allow"  # allow | deny | audit-deny
    reason: E | None = None
    reservation: str | None = None  # an MCP initialize awaiting its session id
    limits: Limits | None = None
    strip_session: bool = False  # a proxy-issued id is kept from the upstream
    close_on_success: bool = False  # MCP DELETE
    forward_body: bytes | None = None  # a batch with its denied elements removed
    denied_errors: list[dict[str, Any]] = field(default_factory=list)
    forwards_nothing: bool = False  # every element was denied or answered locally
    learns: bool = False  # A2A: results reveal contexts and tasks to bind and link
    adopt_counted: int = 0  # A2A: calls charged to a session bound from a result
    adopt_after: bool = False  # A2A: an unseen task; its context is adopted from the result


@dataclass(frozen=True, slots=True)
class Refusal:
    """The whole request is answered by the proxy with this error."""

    error: WardenError
    admission: Admission  # who asked, under which policy: for the trace


Verdict = Admission | Refusal


def _metadata(session_id: str | None, method: str | None, tool: str | None) -> dict[str, str]:
    meta: dict[str, str] = {}
    if session_id:
        meta["sessionId"] = session_id
    if method:
        meta["method"] = method
    if tool:
        meta["tool"] = tool
    return meta


class Gate:
    def __init__(
        self,
        policy: Callable[[], PolicyFile],
        store: SessionStore,
        metrics: Metrics,
        error_style: Callable[[], tuple[str, str]],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._policy = policy
        self._store = store
        self._metrics = metrics
        self._style = error_style
        self._clock = clock

    # -- entry point ------------------------------------------------------------------------

    async def admit(
        self, http_method: str, headers: Mapping[str, str], info: Classified
    ) -> Verdict:
        policy = self._policy()
        agent = identify(headers, policy.identity)
        if agent is None:
            mode = policy.defaults.mode
            adm = Admission("", "default", mode)
            return self._deny(adm, Denial(E.UNAUTHENTICATED), None, None)
        name, rules = policy.resolve(agent)
        adm = Admission(agent, name, rules.mode)
        try:
            if info.protocol == "mcp":
                return await self._mcp(adm, http_method, headers, info, rules)
            if info.protocol == "a2a" and info.a2a_op is not None:
                return await self._a2a(adm, info, info.a2a_op, rules)
            if info.body is not None:
                # JSON-RPC of neither protocol: method authorization only, no session.
                return self._pure_only(adm, info, calls_for(info.body, rules))
            return adm
        except StoreUnavailable as exc:
            log.error("session store unavailable", extra={"error": str(exc)[:200]})
            if policy.store_failure == "open":
                adm.mode = "audit"
            return self._deny(adm, Denial(E.POLICY_STORE_UNAVAILABLE), None, None)

    # -- MCP ---------------------------------------------------------------------------------

    async def _mcp(
        self,
        adm: Admission,
        http_method: str,
        headers: Mapping[str, str],
        info: Classified,
        rules: Rules,
    ) -> Verdict:
        sid = headers.get(mcp.SESSION_HEADER) or None
        limits = limits_for(rules)
        adm.limits = limits
        body = info.body
        now = self._clock()
        if sid is None:
            if body is not None and _is_initialize(body.messages):
                message = body.messages[0]
                denied, _ = authorize(rules, mcp.INITIALIZE, message.params)
                if denied is not None:
                    return self._deny(adm, Denial(denied), mcp.INITIALIZE, None)
                held = await self._reserve(adm, limits, now, mcp.INITIALIZE)
                if isinstance(held, Refusal):
                    return held
                adm.reservation = held
                return adm
            if body is not None:
                # Every MCP message but initialize belongs to a session.
                return self._deny(adm, Denial(E.SESSION_NOT_FOUND), body.first_method, None)
            return adm  # GET or DELETE without a session: the upstream answers
        adm.session_id = sid
        adm.strip_session = sid.startswith(PROXY_SESSION_PREFIX)
        calls = calls_for(body, rules) if body is not None else ()
        outcome = await self._store.check(sid, adm.agent, calls, limits, now)
        if outcome.session is not None:
            method = body.first_method if body is not None else None
            return self._deny(adm, outcome.session, method, None)
        if http_method == "DELETE":
            adm.close_on_success = True
        if body is None:
            return adm
        return self._apply(adm, info, list(outcome.calls), calls)

    # -- A2A ---------------------------------------------------------------------------------

    async def _a2a(self, adm: Admission, info: Classified, op: a2a.A2aOp, rules: Rules) -> Verdict:
        """Sessions are contexts: named, found through a task, or revealed by the response."""
        limits = limits_for(rules)
        adm.limits = limits
        adm.learns = True
        sent: str | None = None  # the method name the caller used (REST: none)
        if info.rest is not None:
            denied, _ = authorize(rules, op.name, None)
            calls: tuple[Call, ...] = (Call(counted=True, denied=denied),)
            params = info.rest_doc
            task = info.rest.task_id or a2a.task_id(op, params)
        else:
            assert info.body is not None
            calls = calls_for(info.body, rules)
            params = info.body.messages[0].params
            sent = info.body.first_method
            task = a2a.task_id(op, params)
        ctx = a2a.context_id(op, params)
        now = self._clock()
        if ctx is None and task is not None:
            ctx = await self._store.context_of(task)
        starts = op.name in _SESSION_STARTERS
        if ctx is not None:
            adm.session_id = ctx
            outcome = await self._store.check(ctx, adm.agent, calls, limits, now)
            first = outcome.session
            if first is not None and first.reason is E.SESSION_NOT_FOUND and starts:
                # A context the proxy has not seen: adopted as the caller's, under the cap.
                held = await self._reserve(adm, limits, now, sent)
                if isinstance(held, Refusal):
                    return held
                await self._store.bind(held, ctx, adm.agent, "a2a", limits, now)
                self._metrics.sessions_opened.inc("a2a")
                outcome = await self._store.check(ctx, adm.agent, calls, limits, now)
            elif first is not None and first.reason is E.SESSION_NOT_FOUND:
                return self._pure_only(adm, info, calls)  # a filter on an unknown context
            if outcome.session is not None:
                return self._deny(adm, outcome.session, sent, None)
            return self._apply(adm, info, list(outcome.calls), calls)
        verdict = self._pure_only(adm, info, calls)
        if isinstance(verdict, Refusal):
            return verdict
        counted = sum(1 for c in calls if c.counted)
        if task is not None:
            adm.adopt_after, adm.adopt_counted = True, counted
        elif starts:
            held = await self._reserve(adm, limits, now, sent)
            if isinstance(held, Refusal):
                return held
            adm.reservation, adm.adopt_counted = held, counted
        return verdict

    def _pure_only(self, adm: Admission, info: Classified, calls: tuple[Call, ...]) -> Verdict:
        """Authorization alone, where no session applies."""
        return self._apply(adm, info, [_pure(c) for c in calls], calls)

    async def _reserve(
        self, adm: Admission, limits: Limits, now: float, method: str | None
    ) -> str | Refusal:
        held = await self._store.reserve(adm.agent, limits, now)
        if isinstance(held, str):
            return held
        error = self._record(adm, held, method, None)
        if error is not None:
            return Refusal(error, adm)
        held = await self._store.reserve(adm.agent, replace(limits, max_per_agent=_UNCAPPED), now)
        assert isinstance(held, str)  # audit: the session is born anyway, past the cap
        return held

    async def learn(self, adm: Admission, results: list[Any]) -> None:
        """A2A results seen in a response: bind the new session, link tasks to contexts."""
        if not adm.learns:
            return
        try:
            for result in results:
                ctx, task = a2a.ids_from_result(result)
                if ctx is None:
                    continue
                now = self._clock()
                assert adm.limits is not None
                held = adm.reservation
                if held is None and adm.adopt_after:
                    # The upstream already served it: the context is the caller's, cap or not.
                    uncapped = replace(adm.limits, max_per_agent=_UNCAPPED)
                    token = await self._store.reserve(adm.agent, uncapped, now)
                    assert isinstance(token, str)
                    held = token
                if held is not None:
                    adm.reservation, adm.adopt_after = None, False
                    await self._store.bind(
                        held, ctx, adm.agent, "a2a", adm.limits, now, counted=adm.adopt_counted
                    )
                    adm.session_id = ctx
                    self._metrics.sessions_opened.inc("a2a")
                if task is not None:
                    await self._store.link_task(task, ctx, now)
        except StoreUnavailable as exc:
            log.error("session store unavailable while binding", extra={"error": str(exc)})

    async def finish(self, adm: Admission) -> None:
        """After the response: a reservation no result bound is released."""
        if adm.reservation is not None:
            reservation, adm.reservation = adm.reservation, None
            try:
                await self._store.release(reservation)
            except StoreUnavailable as exc:
                log.error("session store unavailable while releasing", extra={"error": str(exc)})

    # -- element verdicts --------------------------------------------------------------------

    def _apply(
        self,
        adm: Admission,
        info: Classified,
        denials: list[Denial | None],
        calls: tuple[Call, ...],
    ) -> Verdict:
        """Per-element verdicts: one denial refuses a single request; a batch loses only its
        denied elements, whose errors are merged into the upstream's answer."""
        body = info.body
        if all(d is None for d in denials):
            return adm
        if body is None:  # REST: one operation
            denial = denials[0]
            assert denial is not None
            return self._deny(adm, denial, None, None)
        messages = body.messages
        if not body.batch:
            message = messages[0]
            tool = calls[0].tool
            denial = denials[0]
            assert denial is not None
            return self._deny(adm, denial, message.method, tool)
        kept: list[dict[str, Any]] = []
        domain, a2a_spec = self._style()
        for i, (message, denial) in enumerate(zip(messages, denials, strict=True)):
            if denial is None:
                kept.append(message.raw)
                continue
            error = self._record(adm, denial, message.method, calls[i].tool)
            if error is None:  # audit: forwarded as if allowed
                kept.append(message.raw)
            elif message.has_id:
                adm.denied_errors.append(
                    jsonrpc_error_object(
                        error,
                        message.id,
                        domain=domain,
                        a2a_spec=a2a_spec,
                        mcp=info.protocol == "mcp",
                    )
                )
        if len(kept) != len(messages):
            adm.forward_body = json.dumps(kept, separators=(",", ":")).encode() if kept else None
            adm.forwards_nothing = not kept
        return adm

    def _record(
        self, adm: Admission, denial: Denial, method: str | None, tool: str | None
    ) -> WardenError | None:
        """Record a denial (log line, metric); the error to answer, or None in audit mode,
        where a decision is made and recorded but never blocks."""
        audit = adm.mode == "audit"
        self._metrics.denials.inc(denial.reason.name, "audit" if audit else "enforce")
        log.warning(
            "request would be denied (audit)" if audit else "request denied",
            extra={
                "agent": adm.agent or None,
                "session": adm.session_id,
                "policy": adm.policy,
                "mode": adm.mode,
                "reason": denial.reason.value.reason,
                "method": method,
                "tool": tool,
                "limit": denial.limit.value if denial.limit else None,
                "limit_value": denial.limit_value,
                "used": denial.used,
            },
        )
        adm.reason = denial.reason
        adm.decision = "audit-deny" if audit else "deny"
        if audit:
            return None
        return WardenError(
            denial.reason,
            metadata=_metadata(adm.session_id, method, tool),
            retry_after=denial.retry_after,
        )

    def _deny(
        self, adm: Admission, denial: Denial, method: str | None, tool: str | None
    ) -> Verdict:
        """The whole request: refused, or (audit) admitted as it is."""
        error = self._record(adm, denial, method, tool)
        return adm if error is None else Refusal(error, adm)

    # -- after the upstream answered -----------------------------------------------------------

    async def settle(
        self, adm: Admission, status: int | None, upstream_headers: Mapping[str, str] | None
    ) -> dict[str, str]:
        """Bind or release a reserved session, close on DELETE; returns headers for the client.

        ``status`` is None when the upstream gave no response at all.
        """
        extra: dict[str, str] = {}
        try:
            if adm.reservation is not None and adm.learns:
                if status is None or not 200 <= status < 300:
                    await self.finish(adm)
            elif adm.reservation is not None:
                reservation, adm.reservation = adm.reservation, None
                if status is not None and 200 <= status < 300:
                    sid = (upstream_headers or {}).get(mcp.SESSION_HEADER) or None
                    issued = sid is None
                    if sid is None:
                        sid = PROXY_SESSION_PREFIX + secrets.token_urlsafe(32)
                        extra[mcp.SESSION_HEADER] = sid
                    assert adm.limits is not None
                    await self._store.bind(
                        reservation,
                        sid,
                        adm.agent,
                        "mcp",
                        adm.limits,
                        self._clock(),
                        proxy_issued=issued,
                    )
                    adm.session_id = sid
                    self._metrics.sessions_opened.inc("mcp")
                else:
                    await self._store.release(reservation)
            elif (
                adm.close_on_success
                and adm.session_id
                and status is not None
                and status < 500
                and await self._store.close(adm.session_id, self._clock())
            ):
                self._metrics.sessions_closed.inc("delete")
        except StoreUnavailable as exc:
            log.error("session store unavailable after forwarding", extra={"error": str(exc)})
        return extra


def _pure(call: Call) -> Denial | None:
    return Denial(call.denied) if call.denied is not None else None


def _is_initialize(messages: tuple[Any, ...]) -> bool:
    return len(messages) == 1 and messages[0].method == mcp.INITIALIZE and messages[0].has_id
