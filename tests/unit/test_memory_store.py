"""The in-memory store beyond the shared suite: heap, tombstones and size."""

from __future__ import annotations

import gc
import tracemalloc
import uuid

import pytest

from proxy.errors import E
from proxy.policy.limits import Call, Limits
from proxy.sessions import memory
from proxy.sessions.base import Denial, Kind, LimitKind
from proxy.sessions.memory import MemoryStore
from tests.unit.store_contract import T0, open_session, session_reason

CALL = Call(counted=True)


async def test_sweep_ends_what_is_due_and_nothing_else() -> None:
    store = MemoryStore()
    await open_session(store, "short", limits=Limits(ttl=10.0))
    await open_session(store, "long", limits=Limits(ttl=100.0))
    assert await store.sweep(T0 + 9) == 0
    assert len(store._heap) == 2
    assert await store.sweep(T0 + 10) == 1
    assert await store.sweep(T0 + 50) == 0
    assert await store.sweep(T0 + 100) == 1
    assert store._live == {}
    assert store._heap == []
    assert store._agents == {}


async def test_sweep_follows_a_moving_idle_deadline() -> None:
    store = MemoryStore()
    limits = Limits(idle_timeout=30.0)
    await open_session(store, limits=limits)
    await store.check("s1", "alice", [CALL], limits, T0 + 20)
    assert await store.sweep(T0 + 31) == 0  # due by birth, not by use: pushed back
    assert len(store._heap) == 1
    assert store._heap[0][0] == T0 + 50
    assert await store.sweep(T0 + 50) == 1
    assert await session_reason(store, now=T0 + 51) is E.SESSION_EXPIRED


async def test_sweep_uses_the_limits_a_session_was_last_judged_by() -> None:
    store = MemoryStore()
    await open_session(store)  # idle 15 minutes
    shorter = Limits(idle_timeout=5.0)
    await store.check("s1", "alice", [CALL], shorter, T0 + 1)
    assert len(store._heap) == 2  # an earlier entry; the later one goes stale
    assert await store.sweep(T0 + 6) == 1
    assert await store.sweep(T0 + 1000) == 0
    assert store._heap == []


async def test_sweep_drops_lapsed_reservations() -> None:
    store = MemoryStore()
    assert isinstance(await store.reserve("alice", Limits(), T0), str)
    await store.sweep(T0 + 59)
    assert len(store._pending) == 1
    await store.sweep(T0 + 60)
    assert store._pending == {}
    assert store._agents == {}


async def test_tombstones_last_an_hour() -> None:
    store = MemoryStore()
    await open_session(store)
    assert await store.close("s1", T0)
    assert await store.sweep(T0 + 3599) == 0  # closing is not expiry: nothing new ended
    assert await session_reason(store, now=T0 + 3599) is E.SESSION_CLOSED
    await store.sweep(T0 + 3600)
    assert await session_reason(store, now=T0 + 3601) is E.SESSION_NOT_FOUND
    assert await store.get("s1") is None


async def test_tombstones_are_never_evicted_new_sessions_are_refused() -> None:
    store = MemoryStore(max_tombstones=5)
    for i in range(5):
        await open_session(store, f"s{i}")
        await store.close(f"s{i}", T0 + i)
    denial = await store.reserve("alice", Limits(), T0 + 10)
    assert denial == Denial(E.OVERLOADED, LimitKind.TOMBSTONES, limit_value=5, used=5)
    assert await store.window("bob", "mcp", Limits(), T0 + 10) == denial
    assert len(store._ended) == 5
    assert [await session_reason(store, f"s{i}", now=T0 + 20) for i in range(5)] == [
        E.SESSION_CLOSED
    ] * 5
    assert store._agents == {}  # a refused reservation leaves no empty record behind
    await store.sweep(T0 + 3600)  # s0 is an hour old: forgotten, one place again
    assert len(store._ended) == 4
    assert isinstance(await store.reserve("alice", Limits(), T0 + 3600), str)


async def test_live_sessions_can_still_end_past_the_tombstone_bound() -> None:
    """At most max_tombstones + max_sessions tombstones: every live session may end."""
    store = MemoryStore(max_tombstones=2, max_sessions=3)
    for i in range(3):
        await open_session(store, f"s{i}")
    for i in range(3):
        assert await store.close(f"s{i}", T0 + 1)
    assert len(store._ended) == 3
    assert isinstance(await store.reserve("alice", Limits(), T0 + 2), Denial)


async def test_the_cap_ends_what_is_due_only_when_it_is_reached() -> None:
    """Below the bound a reservation ends nothing (Redis's answers); at it, what is due
    by its last limits ends and frees its place (reported by the next sweep)."""
    store = MemoryStore(max_sessions=2)
    await open_session(store, "s1", limits=Limits(ttl=10.0))
    assert isinstance(await store.reserve("bob", Limits(), T0 + 20), str)
    assert "s1" in store._live
    assert isinstance(await store.reserve("carol", Limits(), T0 + 20), str)
    assert "s1" in store._ended
    assert await store.sweep(T0 + 20) == 1


async def test_task_links_belong_to_their_context_and_go_with_its_tombstone() -> None:
    store = MemoryStore()
    await open_session(store, "ctx")
    assert await store.link_task("t1", "ctx", T0) is None
    assert await store.link_task("t2", "ctx", T0) is None
    assert await store.link_task("t2", "ctx", T0) is None  # again: nothing new
    assert store._live["ctx"].tasks == ["t1", "t2"]
    assert await store.link_task("t3", "nowhere", T0) is None  # an unknown context
    assert list(store._orphans) == ["nowhere"]
    assert await store.link_task("t2", "nowhere", T0 + 1) is None  # moved
    assert store._live["ctx"].tasks == ["t1"]
    assert store._orphans["nowhere"].tasks == ["t3", "t2"]
    assert await store.close("ctx", T0 + 2)
    await store.sweep(T0 + 2 + 3599)
    assert await store.context_of("t1") == "ctx"
    await store.sweep(T0 + 2 + 3600)
    assert (store._tasks, store._orphans, store._ended) == ({}, {}, {})


async def test_links_to_an_unknown_context_become_the_sessions_when_it_is_bound() -> None:
    store = MemoryStore(task_ttl=10.0)
    assert await store.link_task("t1", "ctx", T0) is None
    await open_session(store, "ctx", now=T0 + 5)
    assert store._orphans == {}
    await store.sweep(T0 + 100)  # past task_ttl, but the session holds it now
    assert await store.task_context("t1", T0 + 100) == "ctx"


async def test_a_refused_link_for_an_unknown_context_leaves_doubt_for_task_ttl() -> None:
    store = MemoryStore(max_task_links=1, task_ttl=10.0)
    assert await store.link_task("t1", "ctx-1", T0) is None
    assert isinstance(await store.link_task("t2", "ctx-2", T0 + 1), Denial)
    assert isinstance(await store.task_context("t2", T0 + 10.5), Denial)
    assert await store.task_context("t2", T0 + 11) is None
    assert await store.task_context("t1", T0 + 11) == "ctx-1"  # until a sweep forgets it


async def test_get_keeps_the_record_of_an_ended_session() -> None:
    store = MemoryStore()
    limits = Limits(ttl=10.0)
    await open_session(store, limits=limits)
    await store.check("s1", "alice", [CALL, CALL], limits, T0 + 1)
    await store.sweep(T0 + 10)
    info = await store.get("s1")
    assert info is not None
    assert (info.calls_used, info.closed) == (2, False)
    assert await store.sessions(T0 + 10) == []


async def test_close_of_a_session_past_its_deadline_is_expiry() -> None:
    store = MemoryStore()
    await open_session(store, limits=Limits(ttl=10.0))
    assert not await store.close("s1", T0 + 10)
    assert await session_reason(store, now=T0 + 11) is E.SESSION_EXPIRED


async def test_bind_of_a_live_id_charges_it_and_frees_the_place() -> None:
    store = MemoryStore()
    limits = Limits(max_per_agent=2)
    await open_session(store, limits=limits)
    token = await store.reserve("alice", limits, T0)
    assert isinstance(token, str)
    await store.bind(token, "s1", "alice", "a2a", limits, T0, counted=1)
    info = await store.get("s1")
    assert info is not None
    assert (info.protocol, info.calls_used) == ("mcp", 1)
    assert len(store._agents["alice"].sessions) == 1
    assert store._agents["alice"].pending == {}
    other = await store.reserve("bob", limits, T0)
    assert isinstance(other, str)
    await store.bind(other, "s1", "bob", "a2a", limits, T0, counted=1)
    assert await session_reason(store, agent="bob") is E.AGENT_MISMATCH
    info = await store.get("s1")
    assert info is not None
    assert (info.agent, info.calls_used) == ("alice", 1)
    assert "bob" not in store._agents


async def test_a_closed_id_is_not_reborn_by_bind() -> None:
    store = MemoryStore()
    await open_session(store)
    await store.close("s1", T0)
    await open_session(store)
    assert await session_reason(store) is E.SESSION_CLOSED
    assert store._agents == {}


async def test_bind_after_the_reservation_lapsed_still_binds() -> None:
    store = MemoryStore()
    limits = Limits(max_per_agent=1)
    token = await store.reserve("alice", limits, T0)
    assert isinstance(token, str)
    await store.sweep(T0 + 61)
    await store.bind(token, "s1", "alice", "mcp", limits, T0 + 62)
    assert await session_reason(store, now=T0 + 63) is None
    assert await store.live_count(T0 + 63) == 1


async def test_a_live_session_costs_under_1_kb() -> None:
    """Everything the store holds for a session: record, id, agent name, indexes, a tool count."""
    sessions = 20_000
    limits = Limits(max_per_agent=20, tool_calls={"refund": 5})
    refund = Call(counted=True, tool="refund")
    store = MemoryStore()
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(sessions):
            session_id, agent = str(uuid.uuid4()), f"agent-{i % 1000:04d}"
            now = T0 + i / 1000
            token = await store.reserve(agent, limits, now)
            assert isinstance(token, str)
            await store.bind(token, session_id, agent, "mcp", limits, now)
            outcome = await store.check(session_id, agent, [refund, CALL], limits, now + 1)
            assert outcome.allowed
        gc.collect()
        per_session = (tracemalloc.get_traced_memory()[0] - before) / sessions
    finally:
        tracemalloc.stop()
    assert await store.live_count(T0) == sessions
    assert per_session < 1024, f"{per_session:.0f} bytes per session"


async def test_sweep_of_100k_sessions() -> None:
    store = MemoryStore()
    sessions = 100_000
    limits = Limits(ttl=10.0)
    for i in range(sessions):
        await open_session(store, f"s{i}", f"agent-{i % 10_000}", limits)
    assert await store.live_count(T0) == sessions
    assert await store.sweep(T0 + 9) == 0
    assert len(store._heap) == sessions
    assert await store.sweep(T0 + 10) == sessions
    assert (store._live, store._heap, store._agents) == ({}, [], {})
    assert len(store._ended) == sessions
    assert await store.sweep(T0 + 10 + 3600) == 0
    assert len(store._ended) == 0


async def test_a_window_holds_nothing_of_the_cap_and_goes_when_it_ends() -> None:
    store = MemoryStore()
    limits = Limits(idle_timeout=30.0)
    window = await store.window("alice", "mcp", limits, T0)
    assert store._agents == {}
    assert store._windows["alice"].id == window
    assert await store.sweep(T0 + 30) == 1
    assert store._windows == {}
    assert store._live == {}
    assert window in store._ended
    again = await store.window("alice", "mcp", limits, T0 + 31)
    assert await store.close(again, T0 + 32)
    assert (store._windows, store._agents, store._live) == ({}, {}, {})


async def test_a_session_bound_as_a_window_is_outside_the_cap_too() -> None:
    store = MemoryStore()
    limits = Limits(max_per_agent=1)
    token = await store.reserve("alice", limits, T0)
    assert isinstance(token, str)
    await store.bind(token, "w", "alice", "mcp", limits, T0, kind=Kind.WINDOW)
    assert store._agents == {}
    assert isinstance(await store.reserve("alice", limits, T0), str)
    assert await store.close("w", T0)
    assert await session_reason(store, "w", now=T0) is E.SESSION_CLOSED


async def test_states_are_bounded_oldest_first_and_swept_when_lapsed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(memory, "STATES", 3)
    store = MemoryStore()
    for i in range(5):
        await store.remember_state("s1", f"d{i}", T0 + i)
    assert len(store._states) == 3
    assert not await store.take_state("s1", "d0", T0 + 5)
    assert not await store.take_state("s1", "d1", T0 + 5)
    await store.remember_state("s1", "d2", T0 + 10)  # again: the newest now
    await store.sweep(T0 + 3603)
    assert list(store._states) == [("s1", "d4"), ("s1", "d2")]
    await store.sweep(T0 + 3610)
    assert store._states == {}


async def test_sweep_of_many_windows() -> None:
    store = MemoryStore()
    limits = Limits(ttl=10.0)
    for i in range(20_000):
        await store.window(f"agent-{i}", "mcp", limits, T0)
    assert len(store._windows) == len(store._live) == 20_000
    assert len(store._heap) == 20_000
    assert await store.sweep(T0 + 10) == 20_000
    assert (store._windows, store._live, store._heap) == ({}, {}, [])


async def test_what_live_count_ends_is_reported_by_the_next_sweep() -> None:
    """The sweeper counts expiries for the metrics; a scrape in between must not hide any."""
    store = MemoryStore()
    limits = Limits(ttl=10.0)
    await open_session(store, "s1", limits=limits)
    await store.window("alice", "mcp", limits, T0)
    assert await store.live_count(T0 + 10) == 0
    assert await store.sweep(T0 + 10) == 2
    assert await store.sweep(T0 + 11) == 0


async def test_the_doubt_ends_with_its_context_without_waiting_for_a_sweep() -> None:
    store = MemoryStore(max_task_links=1, tombstone_ttl=10.0)
    await open_session(store, "ctx")
    assert await store.link_task("t1", "ctx", T0) is None
    assert isinstance(await store.link_task("t2", "ctx", T0), Denial)
    assert store._doubted == {"ctx"}
    assert await store.close("ctx", T0 + 1)
    assert isinstance(await store.task_context("t2", T0 + 10.5), Denial)
    assert await store.task_context("t2", T0 + 11) is None  # ctx forgotten: so is the doubt
    assert (store._doubted, store._tasks, store._ended) == (set(), {}, {})
