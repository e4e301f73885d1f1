"""Identify and decide: the session policy applied to one classified request.

The gate turns a request into an ``Admission`` (forward it, perhaps altered) or a
``Refusal`` (answer with an envelope). Pure parts live in ``policy.decide``; the store
makes the one atomic decision per request that needs state.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from multidict import CIMultiDictProxy, MultiMapping

from proxy.errors import E, WardenError, jsonrpc_error_object
from proxy.exchange import MINTED_HEADER, Exchange
from proxy.identity import Credential, Verifier, challenge
from proxy.metrics import CloseCause, Metrics
from proxy.policy import PolicyFile, Rules
from proxy.policy.decide import (
    ANONYMOUS,
    authorize,
    calls_for,
    identify,
    identity_header_problem,
    limits_for,
)
from proxy.policy.grant import Grant, GrantError, grant_from_json
from proxy.policy.limits import Call, Limits
from proxy.policy.model import ErrorsConfig, GlobSet, Identity, normalize_origin
from proxy.protocols import a2a, mcp
from proxy.protocols.classify import Classified
from proxy.sessions.base import Denial, Kind, Outcome, SessionStore, StoreUnavailable

log = logging.getLogger("agent_warden.decision")

# Sessions the proxy issues itself (stateless upstreams) carry this prefix, so any replica
# knows to keep the id from the upstream without asking the store.
PROXY_SESSION_PREFIX = "awp-"
# 2024-11-05 HTTP+SSE sessions: named by the proxy for the upstream's message endpoint.
LEGACY_SESSION_PREFIX = "aws-"
MINTED_SESSION_PREFIX = "awm-"

_UNCAPPED = 2**53
_GRANTS_CACHED = 4096
_ANONYMOUS = Credential(ANONYMOUS, "anonymous")
# Store links naming the minted session a protocol session or an A2A context was opened in.
_MCP_LINK = "mcp-session:"
_A2A_LINK = "a2a-context:"
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
    kind: Kind | None = None  # the session source the request was judged in
    mcp_session: bool = False  # a 2025-era Mcp-Session-Id session: gone means HTTP 404
    tools: GlobSet | None = None  # the caller's tool rules: tools/list results are filtered
    grant: Grant | None = None  # a minted session's narrowing (tools/list too)
    remembers: bool = False  # MCP: input_required results hand out requestStates
    own_tasks_only: bool = False  # A2A ListTasks: the answer keeps the caller's tasks only
    # A batch judged element by element: each element's denial (None: allowed), for the
    # record step; empty when the request was judged whole.
    element_reasons: tuple[E | None, ...] = ()
    whole_reason: E | None = None  # a denial of the whole request (audit mode: recorded)

    @property
    def filters_tools(self) -> bool:
        """Whether tools/list results must be filtered for this caller (audit mode decides
        and records, never hides)."""
        if self.mode == "audit":
            return False
        rules = self.tools
        return (rules is not None and (bool(rules.deny) or "*" not in rules.allow)) or (
            self.grant is not None and self.grant.tools is not None
        )

    def allows_tool(self, name: str) -> bool:
        """Whether the caller may call the tool: what tools/list may show."""
        if self.tools is not None and not self.tools.allows(name):
            return False
        return self.grant is None or self.grant.allows_tool(name)


@dataclass(slots=True)
class LegacySession:
    """A 2024-11-05 HTTP+SSE session: the message endpoint the upstream's ``endpoint``
    event named on a stream this process relays."""

    session_id: str
    agent: str
    bound: bool = False  # initialize was admitted: the session is in the store


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
        errors: Callable[[], ErrorsConfig],
        clock: Callable[[], float] = time.time,
        verifier: Callable[[], Verifier | None] = lambda: None,
    ) -> None:
        self._policy = policy
        self._store = store
        self._metrics = metrics
        self._errors = errors
        self._clock = clock
        self._verifier = verifier
        self._grants: dict[str, Grant] = {}

    # -- entry point ------------------------------------------------------------------------

    def identity(self) -> Identity:
        return self._policy().identity

    def vouches_for(self, origin: str) -> bool:
        """An Origin the policy lists (``origins.allow``): the proxy answers for it."""
        return self._policy().origins.allows(origin)

    async def caller(
        self,
        headers: CIMultiDictProxy[str],
        metadata_url: str | None = None,
        *,
        public: bool = False,
    ) -> Credential | WardenError:
        """Who is calling, before any body is read: the verified credential, or the error to
        answer. ``metadata_url`` is where this resource's RFC 9728 metadata is served (for
        the ``WWW-Authenticate`` challenge)."""
        policy = self._policy()
        identity = policy.identity
        if identity.trusted_header:
            problem = identity_header_problem(
                headers.getall(identity.header, ()), headers.getall("Connection", ()), identity
            )
            if problem is not None:
                log.warning("request refused: %s", problem, extra={"header": identity.header})
                self._metrics.denials.inc(E.INVALID_REQUEST.name, "enforce")
                return WardenError(E.INVALID_REQUEST)
            agent = identify(headers, identity)
            if agent is not None:
                return Credential(agent, "header" if agent != ANONYMOUS else "anonymous")
            return self._missing(policy, metadata_url)
        verifier = self._verifier()
        outcome = await verifier.verify(headers) if verifier is not None else None
        if isinstance(outcome, Credential):
            if not outcome.agent.isascii():
                # A header value upstream is ASCII: anything else may be read as another id.
                return self._unauthenticated(metadata_url, "agent id not ASCII", presented=True)
            return outcome
        if outcome is None:
            if not identity.required or public:
                return _ANONYMOUS
            return self._missing(policy, metadata_url)
        return self._unauthenticated(metadata_url, outcome.detail, presented=outcome.presented)

    def _missing(self, policy: PolicyFile, metadata_url: str | None) -> Credential | WardenError:
        """No credential where one is required: 401, or (audit mode) anonymous, recorded."""
        if policy.defaults.mode == "audit":
            self._metrics.denials.inc(E.UNAUTHENTICATED.name, "audit")
            log.warning("request would be denied (audit)", extra={"reason": "UNAUTHENTICATED"})
            return _ANONYMOUS
        return self._unauthenticated(metadata_url, "no credential", presented=False)

    def _unauthenticated(
        self, metadata_url: str | None, detail: str, *, presented: bool
    ) -> WardenError:
        """401 with its challenge. A credential presented and invalid is always refused,
        audit mode or not: its bearer is not who it claims to be."""
        self._metrics.denials.inc(E.UNAUTHENTICATED.name, "enforce")
        log.warning(
            "request denied",
            extra={
                "agent": None,
                "policy": "default",
                "mode": "enforce",
                "reason": E.UNAUTHENTICATED.value.reason,
                "detail": detail,
            },
        )
        return WardenError(
            E.UNAUTHENTICATED,
            challenge=challenge(metadata_url, invalid_token=presented),
        )

    async def admit(self, exchange: Exchange, legacy: LegacySession | None = None) -> Verdict:
        """Judge one request of a verified caller in its session: minted, protocol (an MCP
        2024-11-05 stream's is ``legacy``) or the agent's window."""
        http_method, headers, info = exchange.method, exchange.headers, exchange.info
        query, credential, metadata_url = exchange.query, exchange.caller, exchange.metadata_url
        policy = self._policy()
        origin = headers.get("Origin")
        if origin is not None and not _origin_allowed(origin, headers.get("Host"), policy):
            # The DNS-rebinding defence the upstream loses when the proxy rewrites Host:
            # enforced in audit mode too, like any malformed request.
            adm = Admission("", "default", "enforce")
            return self._deny(adm, Denial(E.ORIGIN_NOT_ALLOWED), None, None)
        agent = credential.agent
        name, rules = policy.resolve(agent, credential.scopes, credential.claims)
        adm = Admission(agent, name, rules.mode, tools=rules.tools)
        missing = [s for s in rules.require_scopes if s not in credential.scopes]
        if missing:
            error = self._record(adm, Denial(E.INSUFFICIENT_SCOPE), None, None)
            if error is not None:
                scope = " ".join(rules.require_scopes)
                return Refusal(replace(error, challenge=challenge(metadata_url, scope=scope)), adm)
        try:
            minted = headers.get(MINTED_HEADER)
            if minted is not None:
                return await self._minted(adm, minted.strip(), info, rules, headers, legacy, query)
            if rules.session.require == "minted" and _opens_or_needs_session(info):
                method = info.body.first_method if info.body is not None else None
                return self._deny(adm, Denial(E.SESSION_NOT_FOUND), method, None)
            if legacy is not None:
                return await self._legacy(adm, legacy, info, rules)
            if info.protocol == "mcp":
                return await self._mcp(adm, http_method, headers, info, rules)
            if info.protocol == "a2a" and info.a2a_op is not None:
                return await self._a2a(adm, info, info.a2a_op, rules, query)
            if info.body is not None:
                # JSON-RPC of neither protocol: judged in the agent's window.
                return await self._window(adm, info, rules, calls_for(info.body, rules))
            return adm
        except StoreUnavailable as exc:
            log.error("session store unavailable", extra={"error": str(exc)[:200]})
            if policy.store_failure == "open":
                adm.mode = "audit"
            return self._deny(adm, Denial(E.POLICY_STORE_UNAVAILABLE), None, None)

    # -- minted sessions ---------------------------------------------------------------------

    async def _grant(self, session_id: str) -> Grant | None:
        """A minted session's grant; None when no minted session has this id. Grants never
        change, so each replica reads one once."""
        grant = self._grants.get(session_id)
        if grant is not None:
            return grant
        known = await self._store.get(session_id)
        if known is None or known.kind is not Kind.MINTED or known.grant is None:
            return None
        try:
            grant = grant_from_json(known.grant)
        except (GrantError, ValueError):
            log.error("minted session with an unreadable grant", extra={"session": session_id})
            return None
        if len(self._grants) >= _GRANTS_CACHED:
            self._grants.clear()
        self._grants[session_id] = grant
        return grant

    async def _minted(
        self,
        adm: Admission,
        sid: str,
        info: Classified,
        rules: Rules,
        headers: Mapping[str, str],
        legacy: LegacySession | None,
        query: MultiMapping[str] | None,
    ) -> Verdict:
        adm.kind = Kind.MINTED
        body = info.body
        method = body.first_method if body is not None else None
        grant = await self._grant(sid) if sid else None
        if grant is None:
            return self._deny(adm, Denial(E.SESSION_NOT_FOUND), method, None)
        adm.session_id = sid
        adm.grant = grant
        adm.remembers = info.protocol == "mcp"
        # Judged in the minted session, but whatever protocol session the request names
        # must be the caller's too: a minted session is no key to another agent's.
        foreign = await self._foreign(adm, info, headers, legacy, query)
        if foreign is not None:
            return self._deny(adm, Denial(foreign), method, None)
        limits = grant.narrow(limits_for(rules))
        adm.limits = limits
        calls = self._calls(info, rules)
        if body is not None:
            calls = grant.judge(
                calls,
                tuple(m.method for m in body.messages),
                tuple(m.params for m in body.messages),
            )
        elif (
            info.rest is not None
            and grant.methods is not None
            and calls[0].denied is None
            and not grant.methods.allows_any(a2a.method_names(info.rest.op))
        ):
            calls = (replace(calls[0], denied=E.METHOD_NOT_AUTHORIZED),)
        calls, outcome = await self._check(sid, adm.agent, info, calls, limits, self._clock())
        if outcome.session is not None:
            return self._deny(adm, outcome.session, method, None)
        return self._apply(adm, info, list(outcome.calls), calls)

    async def _foreign(
        self,
        adm: Admission,
        info: Classified,
        headers: Mapping[str, str],
        legacy: LegacySession | None,
        query: MultiMapping[str] | None,
    ) -> E | None:
        """AGENT_MISMATCH (or SESSION_NOT_FOUND when unsure) for a protocol session, stream
        or A2A context of another agent named by a request in a minted session."""
        if legacy is not None and legacy.agent != adm.agent:
            return E.AGENT_MISMATCH
        now = self._clock()
        mcp_sid = headers.get(mcp.SESSION_HEADER)
        if mcp_sid:
            owner = await self._owner(mcp_sid, _MCP_LINK + mcp_sid, now)
            if owner is None:
                return E.SESSION_NOT_FOUND  # not issued under a session of the caller's
            if owner != adm.agent:
                return E.AGENT_MISMATCH
        op = info.a2a_op
        if op is None:
            return None
        params = (
            info.rest_doc
            if info.rest is not None
            else (info.body.messages[0].params if info.body is not None else None)
        )
        ctx = a2a.context_id(op, params)
        if ctx is None and op is a2a.LIST_TASKS and query:
            ctx = query.get("contextId") or query.get("context_id")
        task = (info.rest.task_id if info.rest else None) or a2a.task_id(op, params)
        if ctx is None and task is not None:
            known = await self._store.task_context(task, now)
            if isinstance(known, Denial):
                return E.OVERLOADED
            ctx = known
        if ctx is not None:
            owner = await self._owner(ctx, _A2A_LINK + ctx, now)
            if owner is not None and owner != adm.agent:
                return E.AGENT_MISMATCH
        elif task is None and op is a2a.LIST_TASKS:
            adm.own_tasks_only = True
        adm.learns = True  # contexts and tasks it reveals are linked to this minted session
        return None

    async def _owner(self, ident: str, link: str, now: float) -> str | None:
        """The agent a protocol session or context belongs to: a session of its own, or one
        linked to the minted session it was opened under."""
        known = await self._store.get(ident)
        if known is not None:
            return known.agent
        via = await self._store.task_context(link, now)
        if isinstance(via, str):
            minted = await self._store.get(via)
            return minted.agent if minted is not None else None
        return None

    async def mint(self, grant: Grant) -> tuple[str, float] | Denial:
        """A new minted session for ``grant.agent``, under its policy's cap: (id, expiry)."""
        _, rules = self._policy().resolve(grant.agent)
        limits = grant.narrow(limits_for(rules))
        now = self._clock()
        held = await self._store.reserve(grant.agent, limits, now)
        if not isinstance(held, str):
            self._metrics.denials.inc(held.reason.name, "enforce")
            return held
        sid = MINTED_SESSION_PREFIX + secrets.token_urlsafe(32)
        await self._store.bind(
            held, sid, grant.agent, "any", limits, now, kind=Kind.MINTED, grant=grant.to_json()
        )
        self._grants[sid] = grant
        self._metrics.sessions_opened.inc("minted")
        return sid, now + limits.ttl

    def _calls(self, info: Classified, rules: Rules) -> tuple[Call, ...]:
        """One call per element (JSON-RPC) or per operation (A2A REST); none otherwise."""
        if info.body is not None:
            return calls_for(info.body, rules)
        if info.rest is not None:
            denied, _ = authorize(rules, info.rest.op.name, None)
            return (Call(counted=True, denied=denied),)
        return ()

    # -- agent windows -----------------------------------------------------------------------

    async def _window(
        self, adm: Admission, info: Classified, rules: Rules, calls: tuple[Call, ...]
    ) -> Verdict:
        """A request with no session of its own: judged in the agent's current window."""
        if not any(c.counted for c in calls):
            return self._pure_only(adm, info, calls)  # nothing to count: no store round trip
        limits = limits_for(rules)
        adm.limits = limits
        adm.kind = Kind.WINDOW
        adm.remembers = info.protocol == "mcp"
        now = self._clock()
        sid = await self._store.window(adm.agent, info.protocol, limits, now)
        method = info.body.first_method if info.body is not None else None
        if not isinstance(sid, str):
            return self._overloaded(adm, sid, method)
        adm.session_id = sid
        calls, outcome = await self._check(sid, adm.agent, info, calls, limits, now)
        if outcome.session is not None:
            return self._deny(adm, outcome.session, method, None)
        return self._apply(adm, info, list(outcome.calls), calls)

    # -- MCP multi-round-trip requests -------------------------------------------------------

    async def _check(
        self,
        sid: str,
        agent: str,
        info: Classified,
        calls: tuple[Call, ...],
        limits: Limits,
        now: float,
    ) -> tuple[tuple[Call, ...], Outcome]:
        """Decide and count in the store. An MCP retry carrying a ``requestState`` the
        upstream returned to this session continues a call already counted: it is not
        counted again (each state once). A retry refused anyway gives its state back, so
        the real retry still continues the call."""
        body = info.body
        if body is None or info.protocol != "mcp":
            return calls, await self._store.check(sid, agent, calls, limits, now)
        out = list(calls)
        taken: list[tuple[int, str]] = []
        for i, message in enumerate(body.messages):
            state = mcp.request_state(message.params) if out[i].counted else None
            if state is not None and await self._store.take_state(sid, _digest(state), now):
                out[i] = replace(out[i], counted=False)
                taken.append((i, _digest(state)))
        judged = tuple(out)
        outcome = await self._store.check(sid, agent, judged, limits, now)
        for i, digest in taken:
            if outcome.session is not None or outcome.calls[i] is not None:
                await self._store.remember_state(sid, digest, now)
        return judged, outcome

    # -- MCP 2024-11-05 HTTP+SSE -------------------------------------------------------------

    async def _legacy(
        self, adm: Admission, legacy: LegacySession, info: Classified, rules: Rules
    ) -> Verdict:
        """A POST to a message endpoint: judged in the session its stream opened."""
        adm.kind = Kind.PROTOCOL
        adm.session_id = legacy.session_id
        body = info.body
        method = body.first_method if body is not None else None
        if adm.agent != legacy.agent:
            return self._deny(adm, Denial(E.AGENT_MISMATCH), method, None)
        if body is None:
            return adm
        limits = limits_for(rules)
        adm.limits = limits
        now = self._clock()
        if _is_initialize(body.messages):
            denied, _ = authorize(rules, mcp.INITIALIZE, body.messages[0].params)
            if denied is not None:
                return self._deny(adm, Denial(denied), mcp.INITIALIZE, None)
            if legacy.bound:
                return adm  # the upstream answers a second initialize itself
            held = await self._reserve(adm, limits, now, mcp.INITIALIZE)
            if isinstance(held, Refusal):
                return held
            await self._store.bind(held, legacy.session_id, adm.agent, "mcp", limits, now)
            legacy.bound = True
            self._metrics.sessions_opened.inc("mcp")
            return adm
        adm.remembers = True
        calls, outcome = await self._check(
            legacy.session_id, adm.agent, info, calls_for(body, rules), limits, now
        )
        if outcome.session is not None:
            return self._deny(adm, outcome.session, method, None)
        return self._apply(adm, info, list(outcome.calls), calls)

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
                adm.kind = Kind.PROTOCOL
                adm.mcp_session = True
                held = await self._reserve(adm, limits, now, mcp.INITIALIZE)
                if isinstance(held, Refusal):
                    return held
                adm.reservation = held
                return adm
            if body is not None:
                # MCP 2026-07-28 (stateless) and anything else without a session id.
                return await self._window(adm, info, rules, calls_for(body, rules))
            return adm  # GET or DELETE without a session: the upstream answers
        adm.session_id = sid
        adm.kind = Kind.PROTOCOL
        adm.mcp_session = True
        adm.remembers = True
        adm.strip_session = sid.startswith(PROXY_SESSION_PREFIX)
        calls = calls_for(body, rules) if body is not None else ()
        calls, outcome = await self._check(sid, adm.agent, info, calls, limits, now)
        if outcome.session is not None:
            method = body.first_method if body is not None else None
            return self._deny(adm, outcome.session, method, None)
        if http_method == "DELETE":
            adm.close_on_success = True
        if body is None:
            return adm
        return self._apply(adm, info, list(outcome.calls), calls)

    # -- A2A ---------------------------------------------------------------------------------

    async def _a2a(
        self,
        adm: Admission,
        info: Classified,
        op: a2a.A2aOp,
        rules: Rules,
        query: MultiMapping[str] | None,
    ) -> Verdict:
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
        if op is a2a.LIST_TASKS and info.rest is not None and ctx is None and query:
            # REST ListTasks filters in the query string: judged like a body's filter.
            named = {*query.getall("contextId", ()), *query.getall("context_id", ())}
            if len(named) > 1:  # two filters: the upstream may read either
                return Refusal(WardenError(E.INVALID_REQUEST), adm)
            ctx = next(iter(named), None)
        now = self._clock()
        if ctx is None and task is not None:
            known = await self._store.task_context(task, now)
            if isinstance(known, Denial):
                # The store refused links lately: an unknown task may be another agent's.
                return self._overloaded(adm, known, sent)
            ctx = known
        starts = op.name in _SESSION_STARTERS
        if ctx is not None:
            adm.session_id = ctx
            adm.kind = Kind.PROTOCOL
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
                # A filter on a context the proxy does not know (or no longer knows): it may
                # be another agent's, so it is refused rather than passed on.
                return self._deny(adm, first, sent, None)
            if outcome.session is not None:
                return self._deny(adm, outcome.session, sent, None)
            return self._apply(adm, info, list(outcome.calls), calls)
        if task is None and not starts:
            # E.g. an unfiltered ListTasks: counted in the window, its answer limited to the
            # caller's own contexts.
            adm.own_tasks_only = op is a2a.LIST_TASKS
            return await self._window(adm, info, rules, calls)
        adm.kind = Kind.PROTOCOL
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
        if held.reason is E.OVERLOADED:
            return self._overloaded(adm, held, method)
        error = self._record(adm, held, method, None)
        if error is not None:
            return Refusal(error, adm)
        held = await self._store.reserve(adm.agent, replace(limits, max_per_agent=_UNCAPPED), now)
        if not isinstance(held, str):  # audit, past the cap: only the proxy-wide cap holds
            return self._overloaded(adm, held, method)
        return held

    def _overloaded(self, adm: Admission, denial: Denial, method: str | None) -> Refusal:
        """The proxy-wide session cap: a safety limit, enforced in audit mode too."""
        self._metrics.limits_tripped.inc(_limit_label(denial))
        self._log_denial(adm, denial, method, None, False, None)
        return Refusal(WardenError(E.OVERLOADED, retry_after=1.0), adm)

    async def learn(self, adm: Admission, results: list[Any]) -> None:
        """Results seen in a response. MCP: an ``input_required`` result's requestState is
        remembered for the retry. A2A: bind the new session, link tasks to contexts."""
        if adm.remembers and adm.session_id is not None:
            for result in results:
                state = mcp.returned_state(result)
                if state is not None:
                    try:
                        await self._store.remember_state(
                            adm.session_id, _digest(state), self._clock()
                        )
                    except StoreUnavailable as exc:
                        log.error("session store unavailable", extra={"error": str(exc)})
            return
        if not adm.learns:
            return
        try:
            for result in results:
                ctx, task = a2a.ids_from_result(result)
                if ctx is None:
                    continue
                now = self._clock()
                if adm.kind is Kind.MINTED and adm.session_id is not None:
                    # A context opened under a minted session is its agent's.
                    await self._store.link_task(_A2A_LINK + ctx, adm.session_id, now)
                    if task is not None:
                        await self._store.link_task(task, ctx, now)
                    continue
                assert adm.limits is not None
                held = adm.reservation
                if held is None and adm.adopt_after:
                    # The upstream already served it: the context is the caller's, cap or not.
                    uncapped = replace(adm.limits, max_per_agent=_UNCAPPED)
                    token = await self._store.reserve(adm.agent, uncapped, now)
                    if isinstance(token, str):
                        held = token
                    else:  # the proxy-wide cap: the context stays unbound, so unknown
                        self._metrics.limits_tripped.inc(_limit_label(token))
                        adm.adopt_after = False
                if held is not None:
                    adm.reservation, adm.adopt_after = None, False
                    await self._store.bind(
                        held, ctx, adm.agent, "a2a", adm.limits, now, counted=adm.adopt_counted
                    )
                    adm.session_id = ctx
                    self._metrics.sessions_opened.inc("a2a")
                if task is not None and (full := await self._store.link_task(task, ctx, now)):
                    # Not remembered: later requests naming the task are refused until the
                    # store is sure again (it never forgets another agent's task instead).
                    self._metrics.limits_tripped.inc(_limit_label(full))
                    log.warning("task link refused: the store is full", extra={"task": task})
        except StoreUnavailable as exc:
            log.error("session store unavailable while binding", extra={"error": str(exc)})

    async def own_contexts(self, adm: Admission, contexts: set[str]) -> set[str]:
        """Which of ``contexts`` are live or ended sessions of the caller (store faults:
        none, so nothing foreign is ever shown)."""
        owned: set[str] = set()
        try:
            now = self._clock()
            for ctx in contexts:
                if await self._owner(ctx, _A2A_LINK + ctx, now) == adm.agent:
                    owned.add(ctx)
        except StoreUnavailable as exc:
            log.error("session store unavailable while filtering", extra={"error": str(exc)})
            return set()
        return owned

    async def end_session(self, session_id: str) -> None:
        """A session whose transport ended (an MCP 2024-11-05 event stream): closed."""
        try:
            if await self._store.close(session_id, self._clock()):
                self._metrics.sessions_closed.inc(CloseCause.STREAM_END)
        except StoreUnavailable as exc:
            log.error("session store unavailable while closing", extra={"error": str(exc)})

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
        style = self._errors()
        logged = False
        adm.element_reasons = tuple(d.reason if d is not None else None for d in denials)
        for i, (message, denial) in enumerate(zip(messages, denials, strict=True)):
            if denial is None:
                kept.append(message.raw)
                continue
            # One log line per request: the first denial names the rest's count.
            error = self._record(
                adm,
                denial,
                message.method,
                calls[i].tool,
                log_it=not logged,
                batch_denied=sum(1 for d in denials if d is not None),
            )
            logged = True
            if error is None:  # audit: forwarded as if allowed
                kept.append(message.raw)
            elif message.has_id:
                adm.denied_errors.append(
                    jsonrpc_error_object(
                        error,
                        message.id,
                        domain=style.domain,
                        a2a_spec=style.a2a_spec,
                    )
                )
        if len(kept) != len(messages):
            adm.forward_body = json.dumps(kept, separators=(",", ":")).encode() if kept else None
            adm.forwards_nothing = not kept
        return adm

    def _record(
        self,
        adm: Admission,
        denial: Denial,
        method: str | None,
        tool: str | None,
        *,
        log_it: bool = True,
        batch_denied: int | None = None,
    ) -> WardenError | None:
        """Record a denial (log line, metric); the error to answer, or None in audit mode,
        where a decision is made and recorded but never blocks."""
        audit = adm.mode == "audit"
        self._metrics.denials.inc(denial.reason.name, "audit" if audit else "enforce")
        if log_it:
            self._log_denial(adm, denial, method, tool, audit, batch_denied)
        adm.reason = denial.reason
        if batch_denied is None:  # not one element of a batch: the whole request
            adm.whole_reason = denial.reason
        adm.decision = "audit-deny" if audit else "deny"
        if audit:
            return None
        return WardenError(
            denial.reason,
            metadata=_metadata(adm.session_id, method, tool),
            retry_after=denial.retry_after,
            mcp_session=adm.mcp_session,
        )

    @staticmethod
    def _log_denial(
        adm: Admission,
        denial: Denial,
        method: str | None,
        tool: str | None,
        audit: bool,
        batch_denied: int | None,
    ) -> None:
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
                "batch_denied": batch_denied,
            },
        )

    def _deny(
        self, adm: Admission, denial: Denial, method: str | None, tool: str | None
    ) -> Verdict:
        """The whole request: refused, or (audit) admitted as it is. Another agent's
        session is never entered, audit mode or not: that is no limit to trial."""
        if denial.reason is E.AGENT_MISMATCH:
            adm.mode = "enforce"
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
            opened = (upstream_headers or {}).get(mcp.SESSION_HEADER)
            if adm.kind is Kind.MINTED and adm.session_id and opened and status is not None:
                # An MCP session opened under a minted session: the caller's, from now on.
                await self._store.link_task(_MCP_LINK + opened, adm.session_id, self._clock())
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


def _limit_label(denial: Denial) -> str:
    return denial.limit.value if denial.limit is not None else "max_sessions"


def _pure(call: Call) -> Denial | None:
    return Denial(call.denied) if call.denied is not None else None


def _origin_allowed(origin: str, host: str | None, policy: PolicyFile) -> bool:
    """The request's own host, or an origin ``origins.allow`` lists (contract, Sessions)."""
    if policy.origins.allows(origin):
        return True
    normalized = normalize_origin(origin.strip())
    if normalized is None or host is None:
        return False
    scheme, _, origin_host = normalized.partition("://")
    own = normalize_origin(f"{scheme}://{host.strip()}")
    return own is not None and own.partition("://")[2] == origin_host


def _digest(state: str) -> str:
    """Stores keep a digest: a requestState can be large, and is the upstream's business."""
    return hashlib.sha256(state.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def _opens_or_needs_session(info: Classified) -> bool:
    """A request a session would judge: a JSON-RPC request (it has an id) or an A2A
    REST operation. Notifications and plain GETs (an agent card) are not."""
    if info.body is not None:
        return any(m.is_request for m in info.body.messages)
    return info.rest is not None


def _is_initialize(messages: tuple[Any, ...]) -> bool:
    return len(messages) == 1 and messages[0].method == mcp.INITIALIZE and messages[0].has_id
