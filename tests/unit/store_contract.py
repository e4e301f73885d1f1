"""The decision suite every session store must pass, whatever keeps its state.

A test module runs it with ``from tests.unit.store_contract import *``: the ``store``
fixture (and ``store_with``, for a store made with options such as ``max_sessions``) is
parametrized over ``STORES``, so a new implementation is one more entry there.
Time is only ever the ``now`` passed in, counted from a real recent instant so that a
store keeping keys with server-side expiry sees sensible deadlines.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from proxy.errors import E
from proxy.policy.limits import UNLIMITED, Call, Limits
from proxy.sessions.base import Denial, Kind, LimitKind, SessionStore
from proxy.sessions.memory import MemoryStore
from proxy.sessions.redis import RedisStore
from tests.redis_server import RedisServer

StoreFactory = Callable[..., Awaitable[SessionStore]]  # (request, **options)
MakeStore = Callable[..., Awaitable[SessionStore]]  # (**options)


async def _memory(request: pytest.FixtureRequest, **options: Any) -> SessionStore:
    return MemoryStore(**options)


async def _redis(request: pytest.FixtureRequest, **options: Any) -> SessionStore:
    """A fresh key prefix per test on the session's ``redis-server``, flushed afterwards."""
    server: RedisServer = request.getfixturevalue("redis_server")
    prefix = f"test-{uuid.uuid4().hex}:"
    request.addfinalizer(lambda: server.flush(prefix))
    return RedisStore.from_url(f"{server.url}?prefix={prefix}", **options)


STORES: dict[str, StoreFactory] = {
    "memory": _memory,
    "redis": _redis,
}


@pytest.fixture(params=sorted(STORES))
async def store(request: pytest.FixtureRequest) -> AsyncIterator[SessionStore]:
    made = await STORES[request.param](request)
    try:
        yield made
    finally:
        await made.aclose()


@pytest.fixture(params=sorted(STORES))
async def store_with(request: pytest.FixtureRequest) -> AsyncIterator[MakeStore]:
    """``await store_with(max_sessions=3, ...)``: a store made with the options both take."""
    made: list[SessionStore] = []

    async def make(**options: Any) -> SessionStore:
        one = await STORES[request.param](request, **options)
        made.append(one)
        return one

    try:
        yield make
    finally:
        for one in made:
            await one.aclose()


T0 = float(int(time.time()))
LIMITS = Limits(ttl=3600, idle_timeout=900, max_per_agent=10, calls=1000, per_minute=600)
CALL = Call(counted=True)
PING = Call(counted=False)


def tool(name: str, denied: E | None = None) -> Call:
    return Call(counted=True, tool=name, denied=denied)


async def open_session(
    store: SessionStore,
    session_id: str = "s1",
    agent: str = "alice",
    limits: Limits = LIMITS,
    now: float = T0,
    *,
    counted: int = 0,
    protocol: str = "mcp",
) -> None:
    token = await store.reserve(agent, limits, now)
    assert isinstance(token, str), token
    await store.bind(token, session_id, agent, protocol, limits, now, counted=counted)


async def session_reason(
    store: SessionStore,
    session_id: str = "s1",
    agent: str = "alice",
    limits: Limits = LIMITS,
    now: float = T0,
) -> E | None:
    """The session-level verdict of an empty request (None: the session is usable)."""
    outcome = await store.check(session_id, agent, [], limits, now)
    return None if outcome.session is None else outcome.session.reason


async def verdicts(
    store: SessionStore,
    calls: list[Call],
    limits: Limits = LIMITS,
    now: float = T0,
    session_id: str = "s1",
    agent: str = "alice",
) -> list[E | None]:
    """The reason of each element (None: allowed); the session level must pass."""
    outcome = await store.check(session_id, agent, calls, limits, now)
    assert outcome.session is None, outcome.session
    return [None if d is None else d.reason for d in outcome.calls]


async def spend(store: SessionStore, n: int, limits: Limits = LIMITS, now: float = T0) -> None:
    for _ in range(n):
        assert await verdicts(store, [CALL], limits, now) == [None]


async def calls_used(store: SessionStore, session_id: str = "s1") -> int:
    info = await store.get(session_id)
    assert info is not None
    return info.calls_used


# --- session level ------------------------------------------------------------------------


async def test_unknown_session_is_not_found(store: SessionStore) -> None:
    outcome = await store.check("nope", "alice", [CALL], LIMITS, T0)
    assert outcome.session == Denial(E.SESSION_NOT_FOUND)
    assert outcome.calls == ()
    assert not outcome.allowed
    assert await store.get("nope") is None


async def test_a_fresh_session_allows_and_counts(store: SessionStore) -> None:
    await open_session(store)
    outcome = await store.check("s1", "alice", [CALL], LIMITS, T0 + 1)
    assert outcome.allowed
    assert outcome.calls == (None,)
    assert await calls_used(store) == 1


async def test_another_agent_gets_agent_mismatch_and_spends_nothing(store: SessionStore) -> None:
    await open_session(store)
    outcome = await store.check("s1", "mallory", [CALL], LIMITS, T0)
    assert outcome.session is not None
    assert outcome.session.reason is E.AGENT_MISMATCH
    assert await calls_used(store) == 0


async def test_closed_session_is_closed_for_its_agent_and_a_mismatch_for_others(
    store: SessionStore,
) -> None:
    await open_session(store)
    assert await store.close("s1", T0 + 1)
    assert await session_reason(store, now=T0 + 2) is E.SESSION_CLOSED
    assert await session_reason(store, agent="mallory", now=T0 + 2) is E.AGENT_MISMATCH
    info = await store.get("s1")
    assert info is not None
    assert info.closed


async def test_close_is_false_for_unknown_and_already_closed(store: SessionStore) -> None:
    assert not await store.close("nope", T0)
    await open_session(store)
    assert await store.close("s1", T0)
    assert not await store.close("s1", T0)


async def test_expired_by_ttl(store: SessionStore) -> None:
    limits = Limits(ttl=60.0, idle_timeout=3600.0)
    await open_session(store, limits=limits)
    for t in (10.0, 30.0, 59.0):
        assert await verdicts(store, [CALL], limits, T0 + t) == [None]
    outcome = await store.check("s1", "alice", [CALL], limits, T0 + 60.0)
    assert outcome.session is not None
    assert outcome.session.reason is E.SESSION_EXPIRED
    assert outcome.session.limit is LimitKind.TTL
    assert outcome.session.limit_value == 60.0
    assert outcome.session.used == pytest.approx(60.0)
    assert await calls_used(store) == 3


async def test_expired_by_idle_and_use_keeps_it_alive(store: SessionStore) -> None:
    limits = Limits(ttl=3600.0, idle_timeout=30.0)
    await open_session(store, limits=limits)
    for t in (29.0, 58.0, 87.0):  # each request moves the idle deadline
        assert await session_reason(store, limits=limits, now=T0 + t) is None
    outcome = await store.check("s1", "alice", [CALL], limits, T0 + 117.0)
    assert outcome.session is not None
    assert outcome.session.reason is E.SESSION_EXPIRED
    assert outcome.session.limit is LimitKind.IDLE
    assert outcome.session.limit_value == 30.0
    assert outcome.session.used == pytest.approx(30.0)


async def test_expired_stays_expired_even_under_longer_limits(store: SessionStore) -> None:
    short = Limits(ttl=10.0)
    await open_session(store, limits=short)
    assert await session_reason(store, limits=short, now=T0 + 10) is E.SESSION_EXPIRED
    assert await session_reason(store, now=T0 + 11) is E.SESSION_EXPIRED
    assert await session_reason(store, agent="mallory", now=T0 + 11) is E.AGENT_MISMATCH


async def test_expired_after_sweep_is_still_expired(store: SessionStore) -> None:
    limits = Limits(ttl=10.0)
    await open_session(store, limits=limits)
    await store.sweep(T0 + 20)
    assert await session_reason(store, limits=limits, now=T0 + 21) is E.SESSION_EXPIRED


async def test_closed_after_sweep_is_still_closed(store: SessionStore) -> None:
    await open_session(store)
    await store.close("s1", T0)
    await store.sweep(T0 + 1)
    assert await session_reason(store, now=T0 + 2) is E.SESSION_CLOSED


async def test_a_fully_denied_request_still_refreshes_last_used(store: SessionStore) -> None:
    limits = Limits(calls=0, idle_timeout=30.0)
    await open_session(store, limits=limits)
    for t in (20.0, 40.0, 60.0):
        assert await verdicts(store, [CALL], limits, T0 + t) == [E.SESSION_BUDGET_EXCEEDED]
    info = await store.get("s1")
    assert info is not None
    assert info.last_used == T0 + 60.0


# --- budgets ------------------------------------------------------------------------------


async def test_budget_allows_exactly_n_counted_calls(store: SessionStore) -> None:
    limits = Limits(calls=3)
    await open_session(store, limits=limits)
    await spend(store, 3, limits)
    outcome = await store.check("s1", "alice", [CALL], limits, T0)
    assert outcome.calls == (
        Denial(E.SESSION_BUDGET_EXCEEDED, LimitKind.CALLS, limit_value=3, used=3),
    )
    assert await calls_used(store) == 3


async def test_tool_budget(store: SessionStore) -> None:
    limits = Limits(calls=10, tool_calls={"refund": 2})
    await open_session(store, limits=limits)
    assert await verdicts(store, [tool("refund"), tool("lookup"), tool("refund")], limits) == [
        None,
        None,
        None,
    ]
    outcome = await store.check("s1", "alice", [tool("refund")], limits, T0)
    assert outcome.calls == (
        Denial(E.SESSION_BUDGET_EXCEEDED, LimitKind.TOOL_CALLS, limit_value=2, used=2),
    )
    assert await verdicts(store, [tool("lookup"), CALL], limits) == [None, None]
    assert await calls_used(store) == 5


async def test_session_budget_comes_before_tool_budget(store: SessionStore) -> None:
    limits = Limits(calls=1, tool_calls={"refund": 1})
    await open_session(store, limits=limits)
    await spend(store, 1, limits)
    outcome = await store.check("s1", "alice", [tool("refund")], limits, T0)
    assert outcome.calls[0] is not None
    assert outcome.calls[0].limit is LimitKind.CALLS


async def test_uncounted_calls_skip_budget_and_rate_but_not_authorization(
    store: SessionStore,
) -> None:
    limits = Limits(calls=1, per_minute=1)
    await open_session(store, limits=limits)
    await spend(store, 1, limits)
    denied_ping = Call(counted=False, denied=E.METHOD_NOT_AUTHORIZED)
    assert await verdicts(store, [PING, PING, denied_ping], limits) == [
        None,
        None,
        E.METHOD_NOT_AUTHORIZED,
    ]
    assert await calls_used(store) == 1


async def test_counted_at_birth(store: SessionStore) -> None:
    """A2A: the request that starts a session counts against its budget and its bucket."""
    await open_session(store, "budget", limits=Limits(calls=2), counted=1)
    assert await calls_used(store, "budget") == 1
    got = await verdicts(store, [CALL, CALL], Limits(calls=2), session_id="budget")
    assert got == [None, E.SESSION_BUDGET_EXCEEDED]
    await open_session(store, "bucket", limits=Limits(per_minute=2), counted=1)
    got = await verdicts(store, [CALL, CALL], Limits(per_minute=2), session_id="bucket")
    assert got == [None, E.SESSION_RATE_LIMITED]


# --- authorization ------------------------------------------------------------------------


async def test_authorization_verdict_passes_through_uncounted(store: SessionStore) -> None:
    limits = Limits(calls=2, tool_calls={"refund": 1})
    await open_session(store, limits=limits)
    denied = [tool("admin", E.TOOL_NOT_AUTHORIZED), Call(True, None, E.METHOD_NOT_AUTHORIZED)]
    outcome = await store.check("s1", "alice", denied, limits, T0)
    assert outcome.calls == (Denial(E.TOOL_NOT_AUTHORIZED), Denial(E.METHOD_NOT_AUTHORIZED))
    assert await calls_used(store) == 0
    assert await verdicts(store, [tool("refund"), CALL, CALL], limits) == [
        None,
        None,
        E.SESSION_BUDGET_EXCEEDED,
    ]


# --- rate limit ---------------------------------------------------------------------------


async def test_rate_limit_with_exact_retry_after_and_refill(store: SessionStore) -> None:
    limits = Limits(per_minute=60)  # one token per second
    await open_session(store, limits=limits)
    await spend(store, 60, limits)
    outcome = await store.check("s1", "alice", [CALL], limits, T0)
    denial = outcome.calls[0]
    assert denial is not None
    assert denial.reason is E.SESSION_RATE_LIMITED
    assert denial.limit is LimitKind.RATE
    assert denial.limit_value == 60
    assert denial.retry_after == pytest.approx(1.0)
    outcome = await store.check("s1", "alice", [CALL], limits, T0 + 0.25)
    assert outcome.calls[0] is not None
    assert outcome.calls[0].retry_after == pytest.approx(0.75)
    assert await verdicts(store, [CALL, CALL], limits, T0 + 1.0) == [None, E.SESSION_RATE_LIMITED]
    assert await verdicts(store, [CALL], limits, T0 + 2.5) == [None]
    outcome = await store.check("s1", "alice", [CALL], limits, T0 + 2.5)
    assert outcome.calls[0] is not None
    assert outcome.calls[0].retry_after == pytest.approx(0.5)
    assert await calls_used(store) == 62


async def test_rate_limit_bucket_holds_at_most_per_minute(store: SessionStore) -> None:
    limits = Limits(per_minute=6)
    await open_session(store, limits=limits)
    got = await verdicts(store, [CALL] * 8, limits, T0 + 600)
    assert got == [None] * 6 + [E.SESSION_RATE_LIMITED] * 2


async def test_rate_limit_refills_at_per_minute_over_60s(store: SessionStore) -> None:
    limits = Limits(per_minute=600)  # ten tokens per second
    await open_session(store, limits=limits)
    await verdicts(store, [CALL] * 600, limits, T0)
    got = await verdicts(store, [CALL] * 3, limits, T0 + 0.25)
    assert got == [None, None, E.SESSION_RATE_LIMITED]


# --- the reference order ------------------------------------------------------------------


async def test_order_mismatch_before_closed(store: SessionStore) -> None:
    await open_session(store)
    await store.close("s1", T0)
    outcome = await store.check("s1", "mallory", [CALL], LIMITS, T0)
    assert outcome.session == Denial(E.AGENT_MISMATCH)


async def test_order_mismatch_before_expired(store: SessionStore) -> None:
    limits = Limits(ttl=10.0)
    await open_session(store, limits=limits)
    assert await session_reason(store, "s1", "mallory", limits, T0 + 20) is E.AGENT_MISMATCH
    assert await session_reason(store, "s1", "alice", limits, T0 + 20) is E.SESSION_EXPIRED


async def test_order_closed_before_expired(store: SessionStore) -> None:
    limits = Limits(ttl=10.0)
    await open_session(store, limits=limits)
    assert await store.close("s1", T0 + 1)
    assert await session_reason(store, limits=limits, now=T0 + 20) is E.SESSION_CLOSED


async def test_order_budget_before_authorization(store: SessionStore) -> None:
    limits = Limits(calls=1, tool_calls={"refund": 0})
    await open_session(store, limits=limits)
    got = await verdicts(store, [tool("refund", E.TOOL_NOT_AUTHORIZED)], limits)
    assert got == [E.SESSION_BUDGET_EXCEEDED]
    await spend(store, 1, limits)
    got = await verdicts(store, [tool("lookup", E.TOOL_NOT_AUTHORIZED)], limits)
    assert got == [E.SESSION_BUDGET_EXCEEDED]


async def test_order_authorization_before_rate_limit(store: SessionStore) -> None:
    limits = Limits(per_minute=1)
    await open_session(store, limits=limits)
    await spend(store, 1, limits)
    got = await verdicts(store, [tool("admin", E.TOOL_NOT_AUTHORIZED), CALL], limits)
    assert got == [E.TOOL_NOT_AUTHORIZED, E.SESSION_RATE_LIMITED]


async def test_denied_calls_take_neither_budget_nor_tokens(store: SessionStore) -> None:
    limits = Limits(calls=3, per_minute=2)
    await open_session(store, limits=limits)
    unauthorized = tool("admin", E.TOOL_NOT_AUTHORIZED)
    assert await verdicts(store, [unauthorized] * 5, limits) == [E.TOOL_NOT_AUTHORIZED] * 5
    assert await verdicts(store, [CALL, CALL, CALL], limits) == [
        None,
        None,
        E.SESSION_RATE_LIMITED,
    ]
    assert await calls_used(store) == 2
    assert await verdicts(store, [CALL, CALL], limits, T0 + 60) == [
        None,
        E.SESSION_BUDGET_EXCEEDED,
    ]


async def test_rate_limited_calls_do_not_spend_budget(store: SessionStore) -> None:
    limits = Limits(calls=3, per_minute=1)
    await open_session(store, limits=limits)
    got = await verdicts(store, [CALL] * 4, limits)
    assert got == [None] + [E.SESSION_RATE_LIMITED] * 3
    assert await verdicts(store, [CALL], limits, T0 + 60) == [None]
    assert await verdicts(store, [CALL], limits, T0 + 120) == [None]
    assert await verdicts(store, [CALL], limits, T0 + 180) == [E.SESSION_BUDGET_EXCEEDED]


# --- batches ------------------------------------------------------------------------------


async def test_batch_elements_are_counted_in_order(store: SessionStore) -> None:
    limits = Limits(calls=3, tool_calls={"refund": 1})
    await open_session(store, limits=limits)
    batch = [tool("refund"), PING, tool("refund"), CALL, tool("x", E.TOOL_NOT_AUTHORIZED), CALL]
    assert await verdicts(store, batch, limits) == [
        None,
        None,
        E.SESSION_BUDGET_EXCEEDED,
        None,
        E.TOOL_NOT_AUTHORIZED,
        None,
    ]
    assert await verdicts(store, [CALL, PING], limits) == [E.SESSION_BUDGET_EXCEEDED, None]
    assert await calls_used(store) == 3


async def test_session_level_denial_refuses_the_whole_batch(store: SessionStore) -> None:
    outcome = await store.check("nope", "alice", [CALL, PING, CALL], LIMITS, T0)
    assert outcome.session == Denial(E.SESSION_NOT_FOUND)
    assert outcome.calls == ()


# --- hot reload: the limits of each call decide, the counters stay -----------------------


async def test_new_limits_apply_and_counters_are_kept(store: SessionStore) -> None:
    old = Limits(calls=2, tool_calls={"refund": 1})
    await open_session(store, limits=old)
    await verdicts(store, [CALL, tool("refund")], old)
    assert await verdicts(store, [CALL], old) == [E.SESSION_BUDGET_EXCEEDED]
    raised = Limits(calls=4, tool_calls={"refund": 2})
    assert await verdicts(store, [tool("refund"), tool("refund"), CALL, CALL], raised) == [
        None,
        E.SESSION_BUDGET_EXCEEDED,
        None,
        E.SESSION_BUDGET_EXCEEDED,
    ]
    lowered = Limits(calls=1)
    assert await verdicts(store, [CALL], lowered) == [E.SESSION_BUDGET_EXCEEDED]
    assert await calls_used(store) == 4


async def test_shorter_ttl_after_reload_expires_at_once(store: SessionStore) -> None:
    await open_session(store)
    assert await session_reason(store, now=T0 + 100) is None
    assert await session_reason(store, limits=Limits(ttl=50.0), now=T0 + 101) is E.SESSION_EXPIRED
    assert await store.live_count(T0 + 101) == 0


async def test_lower_rate_after_reload_caps_the_bucket(store: SessionStore) -> None:
    await open_session(store, limits=Limits(per_minute=600))
    slow = Limits(per_minute=2)
    assert await verdicts(store, [CALL] * 3, slow, T0 + 1) == [None, None, E.SESSION_RATE_LIMITED]


async def test_new_cap_applies_to_existing_sessions(store: SessionStore) -> None:
    for i in range(3):
        await open_session(store, f"s{i}")
    denial = await store.reserve("alice", Limits(max_per_agent=2), T0)
    assert isinstance(denial, Denial)
    assert denial.reason is E.TOO_MANY_SESSIONS
    assert denial.used == 3


# --- concurrency --------------------------------------------------------------------------


async def test_concurrent_checks_never_overspend(store: SessionStore) -> None:
    limits = Limits(calls=10)
    await open_session(store, limits=limits)
    outcomes = await asyncio.gather(
        *(store.check("s1", "alice", [CALL], limits, T0 + i / 100) for i in range(40))
    )
    allowed = [o for o in outcomes if o.allowed]
    assert len(allowed) == 10
    assert all(o.calls[0] is not None for o in outcomes if not o.allowed)
    assert await calls_used(store) == 10


async def test_concurrent_reservations_never_overshoot_the_cap(store: SessionStore) -> None:
    limits = Limits(max_per_agent=3)
    got = await asyncio.gather(*(store.reserve("alice", limits, T0) for _ in range(20)))
    assert sum(isinstance(r, str) for r in got) == 3
    assert len({r for r in got if isinstance(r, str)}) == 3


# --- the per-agent cap --------------------------------------------------------------------


async def test_cap_counts_sessions_and_pending_reservations(store: SessionStore) -> None:
    limits = Limits(max_per_agent=2)
    await open_session(store, "s1", limits=limits)
    token = await store.reserve("alice", limits, T0)
    assert isinstance(token, str)
    denial = await store.reserve("alice", limits, T0)
    assert denial == Denial(E.TOO_MANY_SESSIONS, LimitKind.CAP, limit_value=2, used=2)
    assert isinstance(await store.reserve("bob", limits, T0), str)  # caps are per agent
    await store.bind(token, "s2", "alice", "mcp", limits, T0)
    assert isinstance(await store.reserve("alice", limits, T0), Denial)  # bound, not doubled
    assert await store.live_count(T0) == 2


async def test_release_frees_a_place(store: SessionStore) -> None:
    limits = Limits(max_per_agent=1)
    token = await store.reserve("alice", limits, T0)
    assert isinstance(token, str)
    assert isinstance(await store.reserve("alice", limits, T0), Denial)
    await store.release(token)
    assert isinstance(await store.reserve("alice", limits, T0), str)


async def test_unbound_reservation_lapses_after_a_minute(store: SessionStore) -> None:
    limits = Limits(max_per_agent=1)
    assert isinstance(await store.reserve("alice", limits, T0), str)
    assert isinstance(await store.reserve("alice", limits, T0 + 30), Denial)
    assert isinstance(await store.reserve("alice", limits, T0 + 61), str)


async def test_close_frees_a_place_at_once(store: SessionStore) -> None:
    limits = Limits(max_per_agent=1)
    await open_session(store, "s1", limits=limits)
    assert isinstance(await store.reserve("alice", limits, T0), Denial)
    assert await store.close("s1", T0)
    assert isinstance(await store.reserve("alice", limits, T0), str)


async def test_expiry_frees_a_place(store: SessionStore) -> None:
    limits = Limits(max_per_agent=1, idle_timeout=30.0)
    await open_session(store, "s1", limits=limits)
    assert isinstance(await store.reserve("alice", limits, T0 + 29), Denial)
    assert isinstance(await store.reserve("alice", limits, T0 + 30), str)
    assert await session_reason(store, limits=limits, now=T0 + 31) is E.SESSION_EXPIRED


async def test_expiry_by_the_current_cap_limits_frees_a_place(store: SessionStore) -> None:
    await open_session(store, "s1", limits=Limits(max_per_agent=1))
    shorter = Limits(max_per_agent=1, ttl=10.0)
    assert isinstance(await store.reserve("alice", shorter, T0 + 10), str)


# --- views --------------------------------------------------------------------------------


async def test_sessions_lists_live_sessions_only(store: SessionStore) -> None:
    limits = Limits(ttl=100.0)
    await open_session(store, "live", limits=limits, counted=1, protocol="a2a")
    await open_session(store, "closed", limits=limits)
    await open_session(store, "old", limits=Limits(ttl=10.0))
    await store.check("live", "alice", [CALL], limits, T0 + 5)
    await store.close("closed", T0 + 5)
    listed = await store.sessions(T0 + 20)
    assert [s.id for s in listed] == ["live"]
    info = listed[0]
    assert (info.agent, info.protocol, info.calls_used, info.closed) == ("alice", "a2a", 2, False)
    assert info.created == pytest.approx(T0)
    assert info.last_used == pytest.approx(T0 + 5)
    assert await store.live_count(T0 + 20) == 1


async def test_get_reports_proxy_issued(store: SessionStore) -> None:
    token = await store.reserve("alice", LIMITS, T0)
    assert isinstance(token, str)
    await store.bind(token, "mine", "alice", "mcp", LIMITS, T0, proxy_issued=True)
    info = await store.get("mine")
    assert info is not None
    assert info.proxy_issued
    assert not info.closed


async def test_healthy(store: SessionStore) -> None:
    assert await store.healthy()


# --- kinds and grants ---------------------------------------------------------------------


GRANT = json.dumps(  # as given, byte for byte: key order, spacing and non-ASCII kept
    {"budget": {"calls": 20}, "tools": {"allow": ["lookup_*"]}, "note": "caf\u00e9 \u2603"},
    ensure_ascii=False,
)


async def test_kind_and_grant_round_trip_through_get_and_sessions(store: SessionStore) -> None:
    token = await store.reserve("alice", LIMITS, T0)
    assert isinstance(token, str)
    await store.bind(token, "minted", "alice", "mcp", LIMITS, T0, kind=Kind.MINTED, grant=GRANT)
    await open_session(store, "plain")
    minted = await store.get("minted")
    assert minted is not None
    assert (minted.kind, minted.grant) == (Kind.MINTED, GRANT)
    plain = await store.get("plain")
    assert plain is not None
    assert (plain.kind, plain.grant) == (Kind.PROTOCOL, None)
    listed = {s.id: (s.kind, s.grant) for s in await store.sessions(T0)}
    assert listed == {"minted": (Kind.MINTED, GRANT), "plain": (Kind.PROTOCOL, None)}
    assert await store.close("minted", T0 + 1)
    ended = await store.get("minted")
    assert ended is not None
    assert (ended.kind, ended.grant, ended.closed) == (Kind.MINTED, GRANT, True)


async def test_a_minted_session_without_a_grant_and_an_empty_grant(store: SessionStore) -> None:
    token = await store.reserve("alice", LIMITS, T0)
    assert isinstance(token, str)
    await store.bind(token, "bare", "alice", "a2a", LIMITS, T0, kind=Kind.MINTED)
    token = await store.reserve("alice", LIMITS, T0)
    assert isinstance(token, str)
    await store.bind(token, "empty", "alice", "a2a", LIMITS, T0, kind=Kind.MINTED, grant="")
    bare, empty = await store.get("bare"), await store.get("empty")
    assert bare is not None
    assert empty is not None
    assert (bare.kind, bare.grant) == (Kind.MINTED, None)
    assert (empty.kind, empty.grant) == (Kind.MINTED, "")  # stored as given


# --- agent windows ------------------------------------------------------------------------


async def test_a_window_opens_once_and_is_the_agents_until_it_ends(store: SessionStore) -> None:
    first = await store.window("alice", "mcp", LIMITS, T0)
    assert await store.window("alice", "mcp", LIMITS, T0 + 1) == first
    assert await store.window("alice", "a2a", LIMITS, T0 + 2) == first  # one per agent
    other = await store.window("bob", "mcp", LIMITS, T0)
    assert other != first
    assert await verdicts(store, [CALL], LIMITS, T0 + 3, first) == [None]
    assert await session_reason(store, first, "bob", now=T0 + 3) is E.AGENT_MISMATCH
    info = await store.get(first)
    assert info is not None
    assert (info.agent, info.protocol, info.kind, info.grant) == ("alice", "mcp", Kind.WINDOW, None)
    assert (info.calls_used, info.closed, info.proxy_issued) == (1, False, False)
    listed = {s.id: (s.agent, s.kind) for s in await store.sessions(T0 + 3)}
    assert listed == {first: ("alice", Kind.WINDOW), other: ("bob", Kind.WINDOW)}
    assert await store.live_count(T0 + 3) == 2


async def test_concurrent_callers_share_one_window(store: SessionStore) -> None:
    ids = await asyncio.gather(*(store.window("alice", "mcp", LIMITS, T0) for _ in range(20)))
    assert len(set(ids)) == 1
    assert await store.live_count(T0) == 1
    assert [s.id for s in await store.sessions(T0)] == [ids[0]]


async def test_a_window_is_not_counted_in_the_cap(store: SessionStore) -> None:
    one = Limits(max_per_agent=1)
    window = await store.window("alice", "mcp", one, T0)
    token = await store.reserve("alice", one, T0)
    assert isinstance(token, str)  # the window took no place
    await store.bind(token, "s1", "alice", "mcp", one, T0)
    assert isinstance(await store.reserve("alice", one, T0), Denial)  # the session did
    assert await store.window("alice", "mcp", one, T0) == window  # and a full cap no window
    assert await store.close(window, T0 + 1)
    assert isinstance(await store.reserve("alice", one, T0 + 1), Denial)
    assert await store.close("s1", T0 + 1)
    assert isinstance(await store.reserve("alice", one, T0 + 1), str)


async def test_a_window_ends_by_ttl_and_the_next_call_opens_another(store: SessionStore) -> None:
    limits = Limits(ttl=60.0, idle_timeout=3600.0)
    old = await store.window("alice", "mcp", limits, T0)
    assert await verdicts(store, [CALL], limits, T0 + 59, old) == [None]
    assert await store.window("alice", "mcp", limits, T0 + 59) == old
    new = await store.window("alice", "mcp", limits, T0 + 60)
    assert new != old
    outcome = await store.check(old, "alice", [CALL], limits, T0 + 61)
    assert outcome.session is not None
    assert outcome.session.reason is E.SESSION_EXPIRED
    assert outcome.session.limit is LimitKind.TTL
    assert await verdicts(store, [CALL], limits, T0 + 61, new) == [None]
    assert [s.id for s in await store.sessions(T0 + 61)] == [new]
    assert await store.live_count(T0 + 61) == 1


async def test_a_window_ends_by_idle_and_a_check_of_it_says_expired(store: SessionStore) -> None:
    limits = Limits(idle_timeout=30.0)
    old = await store.window("alice", "mcp", limits, T0)
    for t in (29.0, 58.0):  # use keeps it alive
        assert await verdicts(store, [CALL], limits, T0 + t, old) == [None]
        assert await store.window("alice", "mcp", limits, T0 + t) == old
    outcome = await store.check(old, "alice", [CALL], limits, T0 + 88)
    assert outcome.session is not None
    assert outcome.session.reason is E.SESSION_EXPIRED
    assert outcome.session.limit is LimitKind.IDLE
    new = await store.window("alice", "mcp", limits, T0 + 89)
    assert new != old
    assert await session_reason(store, old, limits=limits, now=T0 + 90) is E.SESSION_EXPIRED
    assert await session_reason(store, new, limits=limits, now=T0 + 90) is None
    old_info = await store.get(old)
    assert old_info is not None
    assert (old_info.kind, old_info.calls_used) == (Kind.WINDOW, 2)


async def test_a_window_swept_away_is_expired_and_replaced(store: SessionStore) -> None:
    limits = Limits(ttl=10.0)
    old = await store.window("alice", "mcp", limits, T0)
    assert await store.sweep(T0 + 10) == 1
    assert await store.live_count(T0 + 10) == 0
    assert await session_reason(store, old, limits=limits, now=T0 + 11) is E.SESSION_EXPIRED
    new = await store.window("alice", "mcp", limits, T0 + 11)
    assert new != old
    assert await store.live_count(T0 + 11) == 1


async def test_a_closed_window_is_closed_and_replaced(store: SessionStore) -> None:
    old = await store.window("alice", "mcp", LIMITS, T0)
    assert await store.close(old, T0 + 1)
    assert await session_reason(store, old, now=T0 + 2) is E.SESSION_CLOSED
    new = await store.window("alice", "mcp", LIMITS, T0 + 2)
    assert new != old
    assert await session_reason(store, new, now=T0 + 2) is None


async def test_a_window_is_judged_by_the_current_limits(store: SessionStore) -> None:
    old = await store.window("alice", "mcp", LIMITS, T0)
    assert await store.window("alice", "mcp", LIMITS, T0 + 100) == old
    new = await store.window("alice", "mcp", Limits(ttl=50.0), T0 + 100)  # a reload
    assert new != old
    assert await session_reason(store, old, now=T0 + 101) is E.SESSION_EXPIRED


async def test_budgets_count_per_window(store: SessionStore) -> None:
    limits = Limits(calls=2, idle_timeout=30.0, tool_calls={"refund": 1})
    first = await store.window("alice", "mcp", limits, T0)
    got = await verdicts(store, [tool("refund"), tool("refund"), CALL, CALL], limits, T0, first)
    assert got == [None, E.SESSION_BUDGET_EXCEEDED, None, E.SESSION_BUDGET_EXCEEDED]
    assert await store.window("alice", "mcp", limits, T0 + 10) == first
    assert await verdicts(store, [CALL], limits, T0 + 10, first) == [E.SESSION_BUDGET_EXCEEDED]
    second = await store.window("alice", "mcp", limits, T0 + 40)  # idle: a new window
    assert second != first
    got = await verdicts(store, [tool("refund"), CALL, CALL], limits, T0 + 40, second)
    assert got == [None, None, E.SESSION_BUDGET_EXCEEDED]
    assert (await calls_used(store, first), await calls_used(store, second)) == (2, 2)


async def test_rate_limits_count_per_window(store: SessionStore) -> None:
    limits = Limits(per_minute=2, ttl=10.0)
    first = await store.window("alice", "mcp", limits, T0)
    got = await verdicts(store, [CALL] * 3, limits, T0, first)
    assert got == [None, None, E.SESSION_RATE_LIMITED]
    second = await store.window("alice", "mcp", limits, T0 + 10)
    assert await verdicts(store, [CALL] * 3, limits, T0 + 10, second) == got


# --- MCP requestState ---------------------------------------------------------------------


async def test_a_remembered_state_is_taken_once(store: SessionStore) -> None:
    assert not await store.take_state("s1", "digest-1", T0)
    await store.remember_state("s1", "digest-1", T0)
    await store.remember_state("s1", "digest-2", T0)
    took = await asyncio.gather(*(store.take_state("s1", "digest-1", T0 + 1) for _ in range(10)))
    assert sum(took) == 1
    assert not await store.take_state("s1", "digest-1", T0 + 2)
    assert await store.take_state("s1", "digest-2", T0 + 2)
    assert not await store.take_state("s1", "unknown", T0 + 2)


async def test_states_are_per_session(store: SessionStore) -> None:
    await store.remember_state("s1", "digest", T0)
    assert not await store.take_state("s2", "digest", T0)
    assert not await store.take_state("s", "1:digest", T0)  # no confusion at the joint
    assert not await store.take_state("s1:", "digest", T0)
    assert await store.take_state("s1", "digest", T0)
    await store.remember_state("a:b", "c", T0)
    assert not await store.take_state("a", "b:c", T0)
    assert await store.take_state("a:b", "c", T0)


async def test_a_state_lapses_after_an_hour(store: SessionStore) -> None:
    await store.remember_state("s1", "early", T0)
    await store.remember_state("s1", "late", T0)
    assert await store.take_state("s1", "early", T0 + 3599)
    assert not await store.take_state("s1", "late", T0 + 3600)
    assert not await store.take_state("s1", "late", T0 + 3600)


async def test_remembering_a_state_again_starts_its_hour_again(store: SessionStore) -> None:
    await store.remember_state("s1", "digest", T0)
    await store.remember_state("s1", "digest", T0 + 1800)
    assert await store.take_state("s1", "digest", T0 + 3599 + 1800)


# --- unset limits -------------------------------------------------------------------------


async def test_unlimited_limits_never_deny(store: SessionStore) -> None:
    unset = Limits()
    assert (unset.calls, unset.per_minute, unset.max_per_agent) == (UNLIMITED,) * 3
    for i in range(30):
        assert isinstance(await store.reserve("alice", unset, T0), str), i
    await open_session(store, "s1", limits=unset, counted=1)
    for _ in range(50):  # all at one instant: any bucket would be empty
        assert await verdicts(store, [CALL] * 100, unset, T0) == [None] * 100
    assert await calls_used(store) == 5001
    window = await store.window("alice", "mcp", unset, T0)
    assert await verdicts(store, [CALL] * 1000, unset, T0, window) == [None] * 1000
    assert await calls_used(store, window) == 1000


async def test_a_rate_limit_set_after_unlimited_calls_limits_at_once(store: SessionStore) -> None:
    unset = Limits()
    await open_session(store, limits=unset)
    assert await verdicts(store, [CALL] * 500, unset, T0) == [None] * 500
    slow = Limits(per_minute=2)
    got = await verdicts(store, [CALL] * 3, slow, T0)
    assert got == [None, None, E.SESSION_RATE_LIMITED]
    outcome = await store.check("s1", "alice", [CALL], slow, T0 + 15)
    denial = outcome.calls[0]
    assert denial is not None
    assert denial.reason is E.SESSION_RATE_LIMITED
    assert denial.limit_value == 2
    assert denial.retry_after == pytest.approx(15.0)
    assert await verdicts(store, [CALL] * 2, unset, T0 + 15) == [None] * 2  # unset again
    assert await verdicts(store, [CALL], slow, T0 + 30) == [None]  # the bucket as it was
    assert await verdicts(store, [CALL], slow, T0 + 30) == [E.SESSION_RATE_LIMITED]


async def test_a_rate_limit_set_on_a_session_born_unlimited_with_a_charge(
    store: SessionStore,
) -> None:
    await open_session(store, limits=Limits(), counted=1)
    slow = Limits(per_minute=2)
    assert await verdicts(store, [CALL] * 3, slow, T0) == [None, None, E.SESSION_RATE_LIMITED]


async def test_unlimited_counts_survive_a_budget_and_cap_set_later(store: SessionStore) -> None:
    unset = Limits()
    await open_session(store, limits=unset)
    await verdicts(store, [CALL] * 20, unset, T0)
    assert await verdicts(store, [CALL], Limits(calls=20), T0) == [E.SESSION_BUDGET_EXCEEDED]
    denial = await store.reserve("alice", Limits(max_per_agent=1), T0)
    assert isinstance(denial, Denial)
    assert denial.used == 1


# --- proxy-wide bounds: refuse what is new, never forget what is in force ------------------


async def test_the_proxy_wide_cap_counts_sessions_windows_and_reservations(
    store_with: MakeStore,
) -> None:
    store = await store_with(max_sessions=3)
    await open_session(store, "s1", "alice")
    window = await store.window("bob", "mcp", LIMITS, T0)
    assert isinstance(window, str)
    token = await store.reserve("carol", LIMITS, T0)
    assert isinstance(token, str)
    full = Denial(E.OVERLOADED, LimitKind.SESSIONS, limit_value=3, used=3)
    assert await store.reserve("dave", LIMITS, T0) == full
    assert await store.reserve("dave", Limits(), T0) == full  # whatever max_per_agent says
    assert await store.window("dave", "mcp", LIMITS, T0) == full
    assert await store.window("bob", "mcp", LIMITS, T0 + 1) == window  # a live one is kept
    await store.bind(token, "s2", "carol", "a2a", LIMITS, T0)
    assert await store.reserve("dave", LIMITS, T0 + 1) == full  # bound: the same place
    assert await store.live_count(T0 + 1) == 3
    assert await verdicts(store, [CALL], now=T0 + 1, session_id="s2", agent="carol") == [None]


async def test_closing_release_expiry_and_lapse_free_proxy_wide_places(
    store_with: MakeStore,
) -> None:
    store = await store_with(max_sessions=2)
    short = Limits(ttl=10.0)
    await open_session(store, "s1", "alice")
    await open_session(store, "s2", "bob", limits=short)
    assert isinstance(await store.reserve("carol", LIMITS, T0), Denial)
    assert await store.close("s1", T0 + 1)  # closing frees a place at once
    token = await store.reserve("carol", LIMITS, T0 + 1)
    assert isinstance(token, str)
    assert isinstance(await store.window("dave", "mcp", short, T0 + 1), Denial)
    await store.release(token)  # and so does a release
    assert isinstance(await store.window("dave", "mcp", short, T0 + 1), str)
    assert isinstance(await store.reserve("erin", LIMITS, T0 + 9), Denial)
    assert isinstance(await store.reserve("erin", LIMITS, T0 + 10), str)  # s2 expired
    assert isinstance(await store.reserve("frank", LIMITS, T0 + 10), Denial)
    assert isinstance(await store.reserve("frank", LIMITS, T0 + 71), str)  # erin's lapsed
    assert await session_reason(store, "s2", "bob", short, T0 + 71) is E.SESSION_EXPIRED


async def test_the_agents_cap_is_judged_before_the_proxy_wide_one(store_with: MakeStore) -> None:
    store = await store_with(max_sessions=1)
    one = Limits(max_per_agent=1)
    await open_session(store, "s1", limits=one)
    assert await store.reserve("alice", one, T0) == Denial(
        E.TOO_MANY_SESSIONS, LimitKind.CAP, limit_value=1, used=1
    )
    assert await store.reserve("bob", one, T0) == Denial(
        E.OVERLOADED, LimitKind.SESSIONS, limit_value=1, used=1
    )


async def test_concurrent_reservations_never_overshoot_the_proxy_wide_cap(
    store_with: MakeStore,
) -> None:
    store = await store_with(max_sessions=5)
    got = await asyncio.gather(*(store.reserve(f"agent-{i}", LIMITS, T0) for i in range(20)))
    assert sum(isinstance(r, str) for r in got) == 5
    assert {r.used for r in got if isinstance(r, Denial)} == {5}
    opened = await asyncio.gather(*(store.window(f"w-{i}", "mcp", LIMITS, T0) for i in range(5)))
    assert all(isinstance(w, Denial) for w in opened)


async def test_tombstones_are_bounded_by_refusing_new_sessions_never_by_forgetting(
    store_with: MakeStore,
) -> None:
    store = await store_with(max_tombstones=2)
    for i in range(2):
        await open_session(store, f"s{i}", "bob")
        assert await store.close(f"s{i}", T0 + i)
    full = Denial(E.OVERLOADED, LimitKind.TOMBSTONES, limit_value=2, used=2)
    assert await store.reserve("mallory", LIMITS, T0 + 5) == full
    assert await store.window("mallory", "mcp", LIMITS, T0 + 5) == full
    for i in range(2):  # every ended id still answers for itself: none was forgotten
        assert await session_reason(store, f"s{i}", "mallory", now=T0 + 5) is E.AGENT_MISMATCH
        assert await session_reason(store, f"s{i}", "bob", now=T0 + 5) is E.SESSION_CLOSED
    assert isinstance(await store.reserve("mallory", LIMITS, T0 + 3600), str)  # s0's hour is up


async def test_a_full_link_table_refuses_new_links_and_keeps_every_known_one(
    store_with: MakeStore,
) -> None:
    """Two agents: alice churns tasks; bob's link is never evicted into an unknown task."""
    store = await store_with(max_task_links=3)
    await open_session(store, "ctx-b", "bob")
    assert await store.link_task("task-b", "ctx-b", T0) is None
    await open_session(store, "ctx-a", "alice")
    got = [await store.link_task(f"task-a{i}", "ctx-a", T0 + i) for i in range(10)]
    assert got[:2] == [None, None]
    assert got[2:] == [Denial(E.OVERLOADED, LimitKind.TASK_LINKS, limit_value=3, used=3)] * 8
    await store.sweep(T0 + 800)  # nothing is past its time: nothing goes
    assert await store.task_context("task-b", T0 + 800) == "ctx-b"
    assert await store.context_of("task-b") == "ctx-b"
    assert await session_reason(store, "ctx-b", "alice", now=T0 + 800) is E.AGENT_MISMATCH
    assert await store.task_context("task-a1", T0 + 800) == "ctx-a"
    assert await store.link_task("task-a0", "ctx-a", T0 + 800) is None  # known: no new entry
    assert await store.link_task("task-a0", "ctx-b", T0 + 800) is None  # moved: none either
    assert await store.task_context("task-a0", T0 + 800) == "ctx-b"
    # A task it does not know may be one it refused: unsure, never "unknown".
    for task in ("task-a5", "never-seen"):
        unsure = await store.task_context(task, T0 + 800)
        assert unsure == Denial(E.OVERLOADED, LimitKind.TASK_LINKS, limit_value=3, used=3)


async def test_links_and_tombstones_last_their_time_and_then_go_with_the_doubt(
    store_with: MakeStore,
) -> None:
    """Real time: the Redis store's keys expire on the server's clock."""
    store = await store_with(max_task_links=2, tombstone_ttl=0.3, task_ttl=0.3)
    now = time.time()
    await open_session(store, "ctx-b", "bob", now=now)
    await open_session(store, "ctx-a", "alice", now=now)
    assert await store.link_task("task-b", "ctx-b", now) is None
    assert await store.link_task("task-a1", "ctx-a", now) is None
    assert isinstance(await store.link_task("task-a2", "ctx-a", now), Denial)
    await asyncio.sleep(0.5)
    later = time.time()
    await store.sweep(later)
    # Past task_ttl, but the contexts live on (an hour): so do their links and the doubt.
    assert await store.task_context("task-b", later) == "ctx-b"
    assert isinstance(await store.task_context("task-a2", later), Denial)
    assert await store.close("ctx-a", later)
    assert await store.close("ctx-b", later)
    assert await store.task_context("task-b", later) == "ctx-b"  # a tombstone: in force
    assert isinstance(await store.link_task("task-c", "ctx-c", later), Denial)  # still full
    await asyncio.sleep(0.5)
    gone = time.time()
    await store.sweep(gone)
    assert await session_reason(store, "ctx-b", "bob", now=gone) is E.SESSION_NOT_FOUND
    assert await store.task_context("task-b", gone) is None
    assert await store.task_context("task-a2", gone) is None  # the doubt went with ctx-a
    assert await store.link_task("task-c", "ctx-c", gone) is None  # room again


async def test_a_link_made_before_its_context_is_known_lasts_as_long_as_the_context(
    store_with: MakeStore,
) -> None:
    store = await store_with(task_ttl=0.3)
    now = time.time()
    assert await store.link_task("task", "ctx", now) is None
    await open_session(store, "ctx", "bob", now=now)
    await asyncio.sleep(0.5)
    later = time.time()
    await store.sweep(later)
    assert await store.task_context("task", later) == "ctx"
    assert await store.link_task("other", "nowhere", later) is None
    await asyncio.sleep(0.5)
    await store.sweep(time.time())
    assert await store.task_context("other", time.time()) is None  # unknown context: task_ttl
