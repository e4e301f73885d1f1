"""The gate driven directly: no sockets, no sleeps, a clock the test advances (issue 13).

Each test builds a ``Gate`` over a real ``MemoryStore`` and ``Metrics``, a policy parsed
from YAML, and classified requests; time moves only when the test says so. Assertions are
on the verdict (``Admission`` / ``Refusal``) and on what the store holds.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Mapping
from typing import Any

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.admin_token import AdminLock
from proxy.errors import E
from proxy.exchange import Exchange
from proxy.gate import (
    MINTED_HEADER,
    MINTED_SESSION_PREFIX,
    PROXY_SESSION_PREFIX,
    Admission,
    Gate,
    Refusal,
    Verdict,
)
from proxy.identity import Credential
from proxy.metrics import Metrics
from proxy.policy import PolicyFile, parse_policy
from proxy.policy.grant import parse_grant
from proxy.protocols.classify import classify
from proxy.sessions.base import Kind, SessionInfo
from proxy.sessions.memory import WINDOW_PREFIX, MemoryStore

T0 = 1_700_000_000.0
SESSION = "Mcp-Session-Id"


class Clock:
    """A fake clock: a float the test moves forward."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Harness:
    """One gate, its store, metrics, clock and (swappable) policy."""

    def __init__(self, policy_yaml: str) -> None:
        self.policy = policy(policy_yaml)
        self.clock = Clock()
        self.store = MemoryStore()
        self.metrics = Metrics()
        self.gate = Gate(
            lambda: self.policy,
            self.store,
            self.metrics,
            lambda: self.policy.errors,
            clock=self.clock,
        )

    async def send(
        self,
        message: Any,
        *,
        agent: str = "alice",
        headers: Mapping[str, str] | None = None,
        http_method: str = "POST",
    ) -> Verdict:
        """One request as the data plane would hand it to the gate."""
        h = CIMultiDictProxy(CIMultiDict({"Content-Type": "application/json", **(headers or {})}))
        body = json.dumps(message).encode() if message is not None else None
        info = classify(http_method, "/mcp", h, body)
        exchange = Exchange(http_method, "/mcp", "/mcp", h, Credential(agent, "header"), info)
        return await self.gate.admit(exchange)

    async def live(self) -> dict[str, SessionInfo]:
        return {s.id: s for s in await self.store.sessions(self.clock.now)}

    def denials(self, reason: E, mode: str = "enforce") -> float:
        return self.metrics.denials.value(reason.name, mode)


def policy(text: str) -> PolicyFile:
    return parse_policy("version: 1\n" + textwrap.dedent(text), "test.yaml")


def rpc(method: str, params: dict[str, Any] | None = None, id: int = 1) -> dict[str, Any]:
    message: dict[str, Any] = {"jsonrpc": "2.0", "id": id, "method": method}
    if params is not None:
        message["params"] = params
    return message


def call(tool: str = "lookup", id: int = 1, **extra: Any) -> dict[str, Any]:
    return rpc("tools/call", {"name": tool, "arguments": {}, **extra}, id)


def notification(method: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "method": method}


def allowed(verdict: Verdict) -> Admission:
    assert isinstance(verdict, Admission), verdict
    assert verdict.decision == "allow", verdict
    assert verdict.reason is None
    return verdict


def sid(adm: Admission) -> str:
    """The session an admission was judged in (it must have one)."""
    assert adm.session_id is not None, adm
    return adm.session_id


def refused(verdict: Verdict, reason: E) -> Refusal:
    assert isinstance(verdict, Refusal), verdict
    assert verdict.error.spec is reason, verdict.error
    assert verdict.admission.decision == "deny"
    assert verdict.admission.reason is reason
    return verdict


MCP_2026 = {"MCP-Protocol-Version": "2026-07-28"}


# --- agent windows (MCP 2026-07-28: no protocol session) -----------------------------------


async def test_first_counted_request_opens_a_window() -> None:
    h = Harness("defaults: {budget: {calls: 10}}")
    adm = allowed(await h.send(call(), headers=MCP_2026))
    assert adm.kind is Kind.WINDOW
    assert adm.mcp_session is False
    assert adm.session_id is not None
    assert adm.session_id.startswith(WINDOW_PREFIX)
    live = await h.live()
    assert list(live) == [adm.session_id]
    window = live[adm.session_id]
    assert (window.agent, window.kind, window.calls_used) == ("alice", Kind.WINDOW, 1)
    assert window.created == T0  # the injected clock, not the wall clock
    again = allowed(await h.send(call(id=2), headers=MCP_2026))
    assert again.session_id == adm.session_id
    assert (await h.live())[adm.session_id].calls_used == 2


@pytest.mark.parametrize(
    "message",
    [
        notification("notifications/initialized"),
        rpc("ping"),
        rpc("server/discover"),
    ],
    ids=["notification", "ping", "server/discover"],
)
async def test_uncounted_requests_open_no_window(message: dict[str, Any]) -> None:
    h = Harness("defaults: {budget: {calls: 1}}")
    adm = allowed(await h.send(message, headers=MCP_2026))
    assert adm.kind is None
    assert adm.session_id is None
    assert await h.live() == {}


async def test_windows_are_per_agent() -> None:
    h = Harness("defaults: {budget: {calls: 1}}")
    a = allowed(await h.send(call(), agent="alice"))
    b = allowed(await h.send(call(), agent="bob"))
    assert a.session_id != b.session_id
    refused(await h.send(call(id=2), agent="alice"), E.SESSION_BUDGET_EXCEEDED)
    live = await h.live()
    assert {s.agent: s.calls_used for s in live.values()} == {"alice": 1, "bob": 1}


async def test_window_budget() -> None:
    h = Harness("defaults: {budget: {calls: 2}}")
    first = allowed(await h.send(call(id=1)))
    allowed(await h.send(call(id=2)))
    refusal = refused(await h.send(call(id=3)), E.SESSION_BUDGET_EXCEEDED)
    assert refusal.admission.kind is Kind.WINDOW
    assert refusal.admission.session_id == first.session_id
    assert refusal.error.mcp_session is False  # a window is not a 2025 protocol session
    assert refusal.error.metadata == {
        "sessionId": first.session_id,
        "method": "tools/call",
        "tool": "lookup",
    }
    assert (await h.live())[sid(first)].calls_used == 2  # the denial was not counted
    assert h.denials(E.SESSION_BUDGET_EXCEEDED) == 1
    # Uncounted requests still pass in an exhausted window.
    allowed(await h.send(rpc("ping", id=4)))


async def test_window_tool_budget() -> None:
    h = Harness("defaults: {budget: {tools: {refund: 1}}}")
    allowed(await h.send(call("refund", id=1)))
    refused(await h.send(call("refund", id=2)), E.SESSION_BUDGET_EXCEEDED)
    allowed(await h.send(call("lookup", id=3)))


async def test_window_ttl_expiry_opens_a_new_window() -> None:
    h = Harness("defaults: {session: {ttl: 100s, idle_timeout: 1h}, budget: {calls: 1}}")
    first = allowed(await h.send(call(id=1)))
    refused(await h.send(call(id=2)), E.SESSION_BUDGET_EXCEEDED)
    h.clock.advance(99.9)
    refused(await h.send(call(id=3)), E.SESSION_BUDGET_EXCEEDED)  # same window, still live
    h.clock.advance(0.1)  # exactly ttl after the window opened
    second = allowed(await h.send(call(id=4)))
    assert second.kind is Kind.WINDOW
    assert second.session_id != first.session_id
    live = await h.live()
    assert list(live) == [sid(second)]
    assert live[sid(second)].created == T0 + 100
    assert live[sid(second)].calls_used == 1
    old = await h.store.get(sid(first))
    assert old is not None
    assert old.calls_used == 1


async def test_window_idle_expiry_opens_a_new_window() -> None:
    h = Harness("defaults: {session: {ttl: 1h, idle_timeout: 30s}}")
    first = allowed(await h.send(call(id=1)))
    h.clock.advance(29)
    assert allowed(await h.send(call(id=2))).session_id == first.session_id  # use refreshes
    h.clock.advance(29)
    assert allowed(await h.send(call(id=3))).session_id == first.session_id
    # Uncounted requests never touch the store: they do not keep the window alive.
    h.clock.advance(20)
    allowed(await h.send(rpc("ping", id=4)))
    h.clock.advance(10)  # 30 s since the last counted request
    second = allowed(await h.send(call(id=5)))
    assert second.session_id != first.session_id
    assert list(await h.live()) == [sid(second)]


async def test_window_rate_limit_refills_with_the_clock() -> None:
    h = Harness("defaults: {rate_limit: {per_minute: 2}}")
    first = allowed(await h.send(call(id=1)))
    allowed(await h.send(call(id=2)))
    refusal = refused(await h.send(call(id=3)), E.SESSION_RATE_LIMITED)
    assert refusal.error.retry_after == pytest.approx(30.0)  # 60 / per_minute
    h.clock.advance(29.9)
    refusal = refused(await h.send(call(id=4)), E.SESSION_RATE_LIMITED)
    assert refusal.error.retry_after == pytest.approx(0.1)
    h.clock.advance(0.1)
    assert allowed(await h.send(call(id=5))).session_id == first.session_id
    refused(await h.send(call(id=6)), E.SESSION_RATE_LIMITED)
    h.clock.advance(60)  # a full minute refills the bucket, never past per_minute
    allowed(await h.send(call(id=7)))
    allowed(await h.send(call(id=8)))
    refused(await h.send(call(id=9)), E.SESSION_RATE_LIMITED)
    assert (await h.live())[sid(first)].calls_used == 5


async def test_window_tool_deny_is_refused_and_not_counted() -> None:
    h = Harness("defaults: {tools: {deny: ['*_admin']}}")
    refusal = refused(await h.send(call("drop_admin")), E.TOOL_NOT_AUTHORIZED)
    assert refusal.admission.kind is Kind.WINDOW
    assert [s.calls_used for s in (await h.live()).values()] == [0]


async def test_batch_loses_only_its_denied_elements() -> None:
    h = Harness("defaults: {budget: {calls: 1}}")
    adm = await h.send([call(id=1), call(id=2), notification("notifications/progress")])
    assert isinstance(adm, Admission)
    assert adm.decision == "deny"
    assert adm.reason is E.SESSION_BUDGET_EXCEEDED
    assert adm.forward_body is not None
    kept = json.loads(adm.forward_body)
    assert [m.get("id") for m in kept] == [1, None]
    assert [e["id"] for e in adm.denied_errors] == [2]


# --- MCP 2025 protocol sessions (Mcp-Session-Id) -------------------------------------------

INIT = rpc("initialize", {"protocolVersion": "2025-11-25", "capabilities": {}})


async def open_mcp(h: Harness, sid: str = "up-1", agent: str = "alice") -> Admission:
    """initialize, then the upstream answers 200 with its session id."""
    adm = allowed(await h.send(INIT, agent=agent))
    assert adm.kind is Kind.PROTOCOL
    assert adm.mcp_session is True
    assert adm.reservation is not None
    assert adm.session_id is None
    extra = await h.gate.settle(adm, 200, CIMultiDictProxy(CIMultiDict({SESSION: sid})))
    assert extra == {}  # the upstream named it: nothing to add
    assert adm.reservation is None
    assert adm.session_id == sid
    return adm


async def test_initialize_reserves_and_settle_binds_the_upstream_id() -> None:
    h = Harness("defaults: {session: {max_per_agent: 1}}")
    adm = allowed(await h.send(INIT))
    assert adm.reservation is not None
    assert await h.live() == {}  # reserved, not yet a session
    # The reservation holds the agent's only place.
    refused(await h.send(INIT), E.TOO_MANY_SESSIONS)
    await h.gate.settle(adm, 200, CIMultiDictProxy(CIMultiDict({"mcp-session-id": "up-1"})))
    live = await h.live()
    assert list(live) == ["up-1"]
    assert (live["up-1"].kind, live["up-1"].protocol, live["up-1"].calls_used) == (
        Kind.PROTOCOL,
        "mcp",
        0,  # initialize is not counted
    )
    used = allowed(await h.send(call(), headers={SESSION: "up-1"}))
    assert used.session_id == "up-1"
    assert used.kind is Kind.PROTOCOL
    assert used.mcp_session is True
    assert used.strip_session is False
    assert (await h.live())["up-1"].calls_used == 1
    refused(await h.send(INIT), E.TOO_MANY_SESSIONS)


async def test_refused_initialize_releases_its_reservation() -> None:
    h = Harness("defaults: {session: {max_per_agent: 1}}")
    adm = allowed(await h.send(INIT))
    assert await h.gate.settle(adm, 500, None) == {}
    assert await h.live() == {}
    allowed(await h.send(INIT))  # the place is free again


async def test_stateless_upstream_gets_a_proxy_issued_id() -> None:
    h = Harness("")
    adm = allowed(await h.send(INIT))
    extra = await h.gate.settle(adm, 200, {})
    sid = extra[SESSION]
    assert sid.startswith(PROXY_SESSION_PREFIX)
    assert adm.session_id == sid
    assert (await h.live())[sid].proxy_issued is True
    used = allowed(await h.send(call(), headers={SESSION: sid}))
    assert used.strip_session is True


@pytest.mark.parametrize(
    ("limits", "wait"),
    [("{ttl: 100s, idle_timeout: 1h}", 100), ("{ttl: 1h, idle_timeout: 30s}", 30)],
    ids=["ttl", "idle"],
)
async def test_mcp_session_expiry(limits: str, wait: float) -> None:
    h = Harness(f"defaults: {{session: {limits}}}")
    await open_mcp(h)
    h.clock.advance(wait - 0.5)
    allowed(await h.send(call(id=1), headers={SESSION: "up-1"}))
    if wait == 100:
        h.clock.advance(0.5)  # ttl runs from initialize, use or not
    else:
        h.clock.advance(wait)  # idle runs from the last request
    refusal = refused(await h.send(call(id=2), headers={SESSION: "up-1"}), E.SESSION_EXPIRED)
    assert refusal.admission.mcp_session is True
    assert refusal.admission.kind is Kind.PROTOCOL
    assert refusal.admission.session_id == "up-1"
    assert refusal.error.mcp_session is True  # HTTP 404 for a gone 2025 session
    assert await h.live() == {}
    # The id stays expired; it never falls back to a window.
    refused(await h.send(call(id=3), headers={SESSION: "up-1"}), E.SESSION_EXPIRED)


async def test_mcp_session_of_another_agent() -> None:
    h = Harness("")
    await open_mcp(h, agent="alice")
    refusal = refused(
        await h.send(call(), agent="mallory", headers={SESSION: "up-1"}), E.AGENT_MISMATCH
    )
    assert refusal.admission.agent == "mallory"
    assert refusal.error.mcp_session is True
    assert (await h.live())["up-1"].calls_used == 0


async def test_unknown_mcp_session() -> None:
    h = Harness("")
    refusal = refused(await h.send(call(), headers={SESSION: "never"}), E.SESSION_NOT_FOUND)
    assert refusal.error.mcp_session is True


async def test_mcp_session_delete_closes_it() -> None:
    h = Harness("")
    await open_mcp(h)
    adm = allowed(await h.send(None, http_method="DELETE", headers={SESSION: "up-1"}))
    assert adm.close_on_success is True
    await h.gate.settle(adm, 200, None)
    assert await h.live() == {}
    refused(await h.send(call(), headers={SESSION: "up-1"}), E.SESSION_CLOSED)


# --- minted sessions (Warden-Session) ------------------------------------------------------


async def mint(h: Harness, **grant: Any) -> str:
    minted = await h.gate.mint(parse_grant({"agent": "alice", **grant}))
    assert isinstance(minted, tuple), minted
    sid, _expiry = minted
    assert sid.startswith(MINTED_SESSION_PREFIX)
    return sid


async def test_minted_session_is_used_with_its_header() -> None:
    h = Harness("defaults: {session: {ttl: 1h}}")
    minted = await h.gate.mint(parse_grant({"agent": "alice", "ttl": "10m"}))
    assert isinstance(minted, tuple)
    sid, expiry = minted
    assert expiry == T0 + 600  # the grant's ttl, by the injected clock
    info = (await h.live())[sid]
    assert (info.kind, info.agent, info.calls_used) == (Kind.MINTED, "alice", 0)
    adm = allowed(await h.send(call(), headers={MINTED_HEADER: sid}))
    assert adm.kind is Kind.MINTED
    assert adm.session_id == sid
    assert adm.mcp_session is False
    assert adm.grant is not None
    assert (await h.live())[sid].calls_used == 1
    # Not a window: nothing else opened.
    assert list(await h.live()) == [sid]


async def test_minted_session_unknown_id() -> None:
    h = Harness("")
    refusal = refused(
        await h.send(call(), headers={MINTED_HEADER: MINTED_SESSION_PREFIX + "nope"}),
        E.SESSION_NOT_FOUND,
    )
    assert refusal.admission.kind is Kind.MINTED
    assert refusal.error.mcp_session is False


async def test_minted_session_of_another_agent() -> None:
    h = Harness("")
    sid = await mint(h)
    refused(await h.send(call(), agent="mallory", headers={MINTED_HEADER: sid}), E.AGENT_MISMATCH)


async def test_minted_grant_budget_smaller_wins() -> None:
    h = Harness("defaults: {budget: {calls: 5}}")
    sid = await mint(h, budget={"calls": 2})
    for i in range(2):
        allowed(await h.send(call(id=i), headers={MINTED_HEADER: sid}))
    refused(await h.send(call(id=3), headers={MINTED_HEADER: sid}), E.SESSION_BUDGET_EXCEEDED)


async def test_minted_policy_budget_smaller_wins() -> None:
    h = Harness("defaults: {budget: {calls: 2}}")
    sid = await mint(h, budget={"calls": 5})
    for i in range(2):
        allowed(await h.send(call(id=i), headers={MINTED_HEADER: sid}))
    refused(await h.send(call(id=3), headers={MINTED_HEADER: sid}), E.SESSION_BUDGET_EXCEEDED)


async def test_minted_policy_tightened_after_minting_wins() -> None:
    h = Harness("defaults: {budget: {calls: 5}}")
    sid = await mint(h, budget={"calls": 4})
    allowed(await h.send(call(id=1), headers={MINTED_HEADER: sid}))
    h.policy = policy("defaults: {budget: {calls: 1}}")  # a reload
    refused(await h.send(call(id=2), headers={MINTED_HEADER: sid}), E.SESSION_BUDGET_EXCEEDED)


async def test_minted_grant_tool_deny() -> None:
    h = Harness("defaults: {tools: {allow: ['*']}}")
    sid = await mint(h, tools={"allow": ["lookup_*"], "deny": ["lookup_secret"]})
    allowed(await h.send(call("lookup_order"), headers={MINTED_HEADER: sid}))
    refusal = refused(
        await h.send(call("lookup_secret", id=2), headers={MINTED_HEADER: sid}),
        E.TOOL_NOT_AUTHORIZED,
    )
    assert refusal.error.metadata["tool"] == "lookup_secret"
    refused(await h.send(call("refund", id=3), headers={MINTED_HEADER: sid}), E.TOOL_NOT_AUTHORIZED)
    assert (await h.live())[sid].calls_used == 1


async def test_minted_policy_tool_deny_still_applies() -> None:
    h = Harness("defaults: {tools: {deny: ['*_admin']}}")
    sid = await mint(h, tools={"allow": ["*"]})
    refused(await h.send(call("drop_admin"), headers={MINTED_HEADER: sid}), E.TOOL_NOT_AUTHORIZED)


async def test_minted_grant_ttl_expiry() -> None:
    h = Harness("defaults: {session: {ttl: 1h, idle_timeout: 1h}}")
    sid = await mint(h, ttl="10s")
    h.clock.advance(9.5)
    allowed(await h.send(call(id=1), headers={MINTED_HEADER: sid}))
    h.clock.advance(0.5)
    refusal = refused(await h.send(call(id=2), headers={MINTED_HEADER: sid}), E.SESSION_EXPIRED)
    assert refusal.admission.kind is Kind.MINTED
    assert refusal.error.mcp_session is False  # a minted session keeps HTTP 200
    assert await h.live() == {}


async def test_minted_grant_idle_expiry() -> None:
    h = Harness("")
    sid = await mint(h, idle_timeout="20s")
    h.clock.advance(19)
    allowed(await h.send(call(id=1), headers={MINTED_HEADER: sid}))
    h.clock.advance(20)
    refused(await h.send(call(id=2), headers={MINTED_HEADER: sid}), E.SESSION_EXPIRED)


async def test_minting_respects_the_cap() -> None:
    h = Harness("defaults: {session: {max_per_agent: 1}}")
    await mint(h)
    denial = await h.gate.mint(parse_grant({"agent": "alice"}))
    assert not isinstance(denial, tuple)
    assert denial.reason is E.TOO_MANY_SESSIONS


async def test_require_minted_refuses_requests_without_the_header() -> None:
    h = Harness("defaults: {session: {require: minted}}")
    refusal = refused(await h.send(call()), E.SESSION_NOT_FOUND)
    assert refusal.admission.kind is None
    refused(await h.send(INIT), E.SESSION_NOT_FOUND)
    assert await h.live() == {}  # neither a window nor a reservation
    # A notification opens or needs no session: not refused.
    allowed(await h.send(notification("notifications/initialized")))
    sid = await mint(h)
    allowed(await h.send(call(id=2), headers={MINTED_HEADER: sid}))


# --- MCP multi-round-trip requests (requestState) ------------------------------------------


async def test_mrtr_retry_with_remembered_state_is_not_counted_once() -> None:
    h = Harness("defaults: {budget: {calls: 10}}")
    first = allowed(await h.send(call(id=1)))
    assert first.remembers is True
    window = first.session_id
    assert window is not None
    await h.gate.learn(first, [{"resultType": "input_required", "requestState": "s1"}])
    retry = allowed(await h.send(call(id=2, requestState="s1")))
    assert retry.session_id == window
    assert (await h.live())[window].calls_used == 1  # the retry continues call 1
    again = allowed(await h.send(call(id=3, requestState="s1")))
    assert again.session_id == window
    assert (await h.live())[window].calls_used == 2  # each state redeems once


async def test_mrtr_state_of_another_session_is_counted() -> None:
    h = Harness("")
    first = allowed(await h.send(call(id=1), agent="alice"))
    await h.gate.learn(first, [{"resultType": "input_required", "requestState": "s1"}])
    other = allowed(await h.send(call(id=1, requestState="s1"), agent="bob"))
    assert (await h.live())[sid(other)].calls_used == 1
    # ... and alice's state is still hers to redeem.
    allowed(await h.send(call(id=2, requestState="s1"), agent="alice"))
    assert (await h.live())[sid(first)].calls_used == 1


async def test_mrtr_in_a_protocol_session() -> None:
    h = Harness("defaults: {budget: {calls: 1}}")
    await open_mcp(h)
    adm = allowed(await h.send(call(id=1), headers={SESSION: "up-1"}))
    await h.gate.learn(adm, [{"resultType": "complete"}, {"resultType": "input_required"}])
    await h.gate.learn(adm, [{"resultType": "input_required", "requestState": "s1"}])
    allowed(await h.send(call(id=2, requestState="s1"), headers={SESSION: "up-1"}))
    refused(
        await h.send(call(id=3, requestState="s1"), headers={SESSION: "up-1"}),
        E.SESSION_BUDGET_EXCEEDED,
    )


# --- origins ---------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["enforce", "audit"])
async def test_foreign_origin_is_refused_even_in_audit_mode(mode: str) -> None:
    h = Harness(f"defaults: {{mode: {mode}}}")
    headers = {"Host": "proxy.internal:8080", "Origin": "https://evil.example"}
    refusal = refused(await h.send(call(), headers=headers), E.ORIGIN_NOT_ALLOWED)
    assert refusal.admission.mode == "enforce"
    assert await h.live() == {}  # refused before any session
    assert h.denials(E.ORIGIN_NOT_ALLOWED, "enforce") == 1


async def test_own_and_listed_origins_are_allowed() -> None:
    h = Harness("origins: {allow: ['https://app.example.com']}")
    own = {"Host": "proxy.internal:8080", "Origin": "http://PROXY.internal:8080"}
    allowed(await h.send(call(id=1), headers=own))
    listed = {"Host": "proxy.internal:8080", "Origin": "https://app.example.com"}
    allowed(await h.send(call(id=2), headers=listed))
    other_port = {"Host": "proxy.internal:8080", "Origin": "http://proxy.internal:9090"}
    refused(await h.send(call(id=3), headers=other_port), E.ORIGIN_NOT_ALLOWED)
    refused(await h.send(call(id=4), headers={"Origin": "null"}), E.ORIGIN_NOT_ALLOWED)


# --- audit mode ------------------------------------------------------------------------------


async def test_audit_records_a_would_be_denial_and_admits_uncounted() -> None:
    h = Harness("defaults: {mode: audit, budget: {calls: 1}, tools: {deny: ['*_admin']}}")
    first = allowed(await h.send(call(id=1)))
    window = sid(first)
    over = await h.send(call(id=2))
    assert isinstance(over, Admission)  # admitted, as it is
    assert over.decision == "audit-deny"
    assert over.reason is E.SESSION_BUDGET_EXCEEDED
    assert over.session_id == window
    assert over.forward_body is None
    assert over.denied_errors == []
    assert (await h.live())[window].calls_used == 1
    assert h.denials(E.SESSION_BUDGET_EXCEEDED, "audit") == 1
    assert h.denials(E.SESSION_BUDGET_EXCEEDED, "enforce") == 0


async def test_audit_tool_deny_is_admitted_and_not_counted() -> None:
    h = Harness("defaults: {mode: audit, tools: {deny: ['*_admin']}}")
    adm = await h.send(call("drop_admin"))
    assert isinstance(adm, Admission)
    assert adm.decision == "audit-deny"
    assert adm.reason is E.TOOL_NOT_AUTHORIZED
    assert adm.filters_tools is False  # audit never hides tools
    assert [s.calls_used for s in (await h.live()).values()] == [0]
    assert h.denials(E.TOOL_NOT_AUTHORIZED, "audit") == 1


async def test_audit_past_the_cap_still_opens_the_session() -> None:
    h = Harness("defaults: {mode: audit, session: {max_per_agent: 1}}")
    await open_mcp(h, "up-1")
    adm = await h.send(INIT)
    assert isinstance(adm, Admission)
    assert adm.decision == "audit-deny"
    assert adm.reason is E.TOO_MANY_SESSIONS
    assert adm.reservation is not None
    await h.gate.settle(adm, 200, {SESSION: "up-2"})
    assert set(await h.live()) == {"up-1", "up-2"}


async def test_audit_batch_forwards_every_element() -> None:
    h = Harness("defaults: {mode: audit, budget: {calls: 1}}")
    adm = await h.send([call(id=1), call(id=2)])
    assert isinstance(adm, Admission)
    assert adm.decision == "audit-deny"
    assert adm.forward_body is None
    assert adm.denied_errors == []
    assert [s.calls_used for s in (await h.live()).values()] == [1]


async def test_mrtr_a_refused_retry_gives_its_state_back() -> None:
    """A retry refused anyway (here: its tool is denied) does not use up the state: the
    real retry still continues the counted call."""
    h = Harness("defaults: {budget: {calls: 10}, tools: {deny: [secret]}}")
    first = allowed(await h.send(call(id=1)))
    await h.gate.learn(first, [{"resultType": "input_required", "requestState": "s1"}])
    refused(await h.send(call("secret", id=2, requestState="s1")), E.TOOL_NOT_AUTHORIZED)
    allowed(await h.send(call(id=3, requestState="s1")))
    assert (await h.live())[sid(first)].calls_used == 1


# --- a session of another agent, whatever the route ---------------------------------------


async def test_a_minted_session_is_no_key_to_another_agents_protocol_session() -> None:
    """Review finding: a request in the caller's own minted session naming bob's
    Mcp-Session-Id is refused (AGENT_MISMATCH), as it is without the minted header; an
    MCP session opened under the caller's minted session stays usable."""
    h = Harness("")
    await open_mcp(h, "bob-sess", agent="bob")
    mallory = await h.gate.mint(parse_grant({"agent": "mallory"}))
    assert isinstance(mallory, tuple)
    headers = {MINTED_HEADER: mallory[0], SESSION: "bob-sess"}
    refused(await h.send(call(id=1), agent="mallory", headers=headers), E.AGENT_MISMATCH)
    # An id the proxy never saw issued to the caller: refused, not guessed.
    unknown = {MINTED_HEADER: mallory[0], SESSION: "never-issued"}
    refused(await h.send(call(id=2), agent="mallory", headers=unknown), E.SESSION_NOT_FOUND)
    # Opened under the minted session: the upstream's id is linked to it.
    init = allowed(await h.send(INIT, agent="mallory", headers={MINTED_HEADER: mallory[0]}))
    await h.gate.settle(init, 200, CIMultiDictProxy(CIMultiDict({SESSION: "mal-sess"})))
    mine = {MINTED_HEADER: mallory[0], SESSION: "mal-sess"}
    allowed(await h.send(call(id=3), agent="mallory", headers=mine))


async def test_audit_mode_never_enters_another_agents_session() -> None:
    """Review finding: AGENT_MISMATCH is enforced in audit mode (no limit to trial)."""
    h = Harness("defaults: {mode: audit}")
    await open_mcp(h, "bob-sess", agent="bob")
    refused(
        await h.send(call(id=1), agent="mallory", headers={SESSION: "bob-sess"}),
        E.AGENT_MISMATCH,
    )


def test_an_admin_token_that_is_not_utf8_is_refused_not_a_crash() -> None:
    """Review finding: aiohttp hands undecodable header bytes as surrogates."""
    lock = AdminLock("/dev/null")
    lock._token = b"secret"
    lock.path = "/nonexistent-so-the-token-stays"
    assert lock.allows("Bearer \udcff\udcfe", "127.0.0.1") is False
    assert lock.allows("Bearer secret", "10.0.0.5") is True
