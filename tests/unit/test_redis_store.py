"""The Redis store beyond the shared suite: scripts, key lifetimes, replicas and faults.

The shared decision suite (``store_contract``) already runs against Redis; here is what
only Redis has: NOSCRIPT, TTLs on every key, two replicas with their own connection
pools sharing one server, a server that goes away and comes back, and URL parsing.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.asyncio.connection import SSLConnection, UnixDomainSocketConnection

from proxy.errors import E
from proxy.policy.limits import UNLIMITED, Call, Limits
from proxy.sessions.base import Denial, Kind, Outcome, SessionInfo, SessionStore, StoreUnavailable
from proxy.sessions.memory import MemoryStore
from proxy.sessions.redis import DEFAULT_PREFIX, RedisStore
from tests.redis_server import RedisServer
from tests.unit.store_contract import T0, open_session, session_reason, verdicts

CALL = Call(counted=True)
MakeStore = Callable[..., RedisStore]


@pytest.fixture
def prefix(redis_server: RedisServer) -> Iterator[str]:
    """A fresh key prefix, shared by every store a test makes; its keys go at the end."""
    name = f"test-{uuid.uuid4().hex}:"
    yield name
    redis_server.flush(name)


@pytest.fixture
async def make_store(redis_server: RedisServer, prefix: str) -> AsyncIterator[MakeStore]:
    """``make_store(**options)``: a new RedisStore with its own connection pool (a replica)."""
    made: list[RedisStore] = []

    def make(url: str | None = None, **options: Any) -> RedisStore:
        base = url or redis_server.url
        joiner = "&" if "?" in base else "?"
        store = RedisStore.from_url(f"{base}{joiner}prefix={prefix}", **options)
        made.append(store)
        return store

    yield make
    for store in made:
        await store.aclose()


@pytest.fixture
async def inspect(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    """A plain client to look at the keys the store wrote."""
    client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    yield client
    await client.aclose()


async def lifetimes(client: aioredis.Redis, prefix: str) -> dict[str, int]:
    """Every key under ``prefix`` with its PTTL in ms (-1: no expiry); expired ones left out."""
    keys = [key async for key in client.scan_iter(match=f"{prefix}*", count=1000)]
    found = {key.removeprefix(prefix): await client.pttl(key) for key in keys}
    return {key: ms for key, ms in found.items() if ms != -2}


async def wait_until_gone(client: aioredis.Redis, prefix: str) -> None:
    """Real expiry: Redis drops the keys on its own clock, within a few seconds at most."""
    for _ in range(100):
        if not await lifetimes(client, prefix):
            return
        await asyncio.sleep(0.05)
    assert await lifetimes(client, prefix) == {}


async def assert_all_expire(client: aioredis.Redis, prefix: str) -> dict[str, int]:
    found = await lifetimes(client, prefix)
    assert found, "expected some keys"
    assert all(ms > 0 for ms in found.values()), found
    return found


# --- scripts ------------------------------------------------------------------------------


async def test_decisions_survive_a_script_flush(
    make_store: MakeStore, inspect: aioredis.Redis
) -> None:
    store = make_store()
    await open_session(store)
    await inspect.script_flush()
    assert await verdicts(store, [CALL]) == [None]  # NOSCRIPT: loaded again, run once
    await inspect.script_flush()
    assert isinstance(await store.reserve("alice", Limits(), T0), str)
    await inspect.script_flush()
    assert await store.close("s1", T0 + 1)
    await inspect.script_flush()
    assert await store.sweep(T0 + 2) == 0
    info = await store.get("s1")
    assert info is not None
    assert (info.calls_used, info.closed) == (1, True)


async def test_sweep_works_in_bounded_batches(make_store: MakeStore) -> None:
    store = make_store(sweep_batch=5)
    limits = Limits(ttl=10.0, max_per_agent=100)
    for i in range(23):
        await open_session(store, f"s{i}", limits=limits)
    await open_session(store, "later", "bob", limits=Limits(ttl=100.0))
    assert await store.live_count(T0 + 10) == 1
    assert await store.sweep(T0 + 10) == 23
    assert await store.sweep(T0 + 10) == 0
    assert [s.id for s in await store.sessions(T0 + 10)] == ["later"]


# --- what memory's own tests check through its internals, observed from outside -----------


async def test_sweep_follows_a_moving_idle_deadline(make_store: MakeStore) -> None:
    store = make_store()
    limits = Limits(idle_timeout=30.0)
    await open_session(store, limits=limits)
    await store.check("s1", "alice", [CALL], limits, T0 + 20)
    assert await store.sweep(T0 + 31) == 0
    assert await store.sweep(T0 + 50) == 1
    assert await session_reason(store, now=T0 + 51) is E.SESSION_EXPIRED


async def test_sweep_uses_the_limits_a_session_was_last_judged_by(make_store: MakeStore) -> None:
    store = make_store()
    await open_session(store)  # idle 15 minutes
    await store.check("s1", "alice", [CALL], Limits(idle_timeout=5.0), T0 + 1)
    assert await store.sweep(T0 + 6) == 1
    assert await store.sweep(T0 + 1000) == 0


async def test_close_of_a_session_past_its_deadline_is_expiry(make_store: MakeStore) -> None:
    store = make_store()
    await open_session(store, limits=Limits(ttl=10.0))
    assert not await store.close("s1", T0 + 10)
    assert await session_reason(store, now=T0 + 11) is E.SESSION_EXPIRED


async def test_bind_of_a_live_id_charges_it_and_frees_the_place(make_store: MakeStore) -> None:
    store = make_store()
    limits = Limits(max_per_agent=2)
    await open_session(store, limits=limits)
    token = await store.reserve("alice", limits, T0)
    assert isinstance(token, str)
    await store.bind(token, "s1", "alice", "a2a", limits, T0, counted=1)
    info = await store.get("s1")
    assert info is not None
    assert (info.protocol, info.calls_used) == ("mcp", 1)
    assert isinstance(await store.reserve("alice", limits, T0), str)  # one session, one free
    other = await store.reserve("bob", limits, T0)
    assert isinstance(other, str)
    await store.bind(other, "s1", "bob", "a2a", limits, T0, counted=1)
    assert await session_reason(store, agent="bob") is E.AGENT_MISMATCH
    info = await store.get("s1")
    assert info is not None
    assert (info.agent, info.calls_used) == ("alice", 1)
    assert await store.live_count(T0) == 1


async def test_a_closed_id_is_not_reborn_by_bind(make_store: MakeStore) -> None:
    store = make_store()
    await open_session(store)
    await store.close("s1", T0)
    await open_session(store)
    assert await session_reason(store) is E.SESSION_CLOSED
    assert await store.live_count(T0) == 0


async def test_bind_after_the_reservation_lapsed_still_binds(make_store: MakeStore) -> None:
    store = make_store()
    limits = Limits(max_per_agent=1)
    token = await store.reserve("alice", limits, T0)
    assert isinstance(token, str)
    assert isinstance(await store.reserve("alice", limits, T0 + 61), str)  # lapsed: a free place
    await store.bind(token, "s1", "alice", "mcp", limits, T0 + 62)
    assert await session_reason(store, now=T0 + 63) is None
    assert await store.live_count(T0 + 63) == 1


async def test_get_keeps_the_record_of_an_ended_session(make_store: MakeStore) -> None:
    store = make_store()
    limits = Limits(ttl=10.0)
    await open_session(store, limits=limits)
    await store.check("s1", "alice", [CALL, CALL], limits, T0 + 1)
    assert await store.sweep(T0 + 10) == 1
    info = await store.get("s1")
    assert info is not None
    assert (info.calls_used, info.closed) == (2, False)
    assert await store.sessions(T0 + 10) == []


async def test_task_links(make_store: MakeStore) -> None:
    store = make_store()
    assert await store.context_of("t1") is None
    await store.link_task("t1", "ctx-1", T0)
    await store.link_task("t1", "ctx-2", T0)
    assert await store.context_of("t1") == "ctx-2"


async def test_links_follow_their_context_through_a_reload_that_raises_ttl(
    make_store: MakeStore, inspect: aioredis.Redis, prefix: str
) -> None:
    store = make_store()
    now = time.time()
    short, long = Limits(ttl=100.0, idle_timeout=100.0), Limits(ttl=10_000.0, idle_timeout=100.0)
    await open_session(store, "ctx", limits=short, now=now)
    await store.link_task("t1", "ctx", now)
    found = await lifetimes(inspect, prefix)
    assert found["k:t1"] == pytest.approx((100 + 3600) * 1000, abs=1_000)
    await store.check("ctx", "alice", [], short, now + 50)  # moves nothing: ttl bounds it
    assert (await lifetimes(inspect, prefix))["k:t1"] == pytest.approx(3_700_000, abs=1_000)
    await store.check("ctx", "alice", [], long, now + 90)  # a reload: the hash may outlive
    found = await lifetimes(inspect, prefix)
    assert found["k:t1"] == pytest.approx((10_000 + 3600 - 90) * 1000, abs=1_000)  # from now
    assert found["k:t1"] >= found["s:ctx"]
    assert await inspect.zscore(f"{prefix}n", "t1") == pytest.approx(now + 13_600)


async def test_sweep_drops_the_counting_members_past_their_time(
    make_store: MakeStore, inspect: aioredis.Redis, prefix: str
) -> None:
    store = make_store(sweep_batch=3)
    for i in range(7):
        assert isinstance(await store.reserve(f"a{i}", Limits(), T0), str)
    await open_session(store, "ctx", "bob")
    await store.link_task("t1", "ctx", T0)
    assert await store.close("ctx", T0)
    assert await inspect.zcard(f"{prefix}r") == 7
    await store.sweep(T0 + 60)  # the reservations lapsed; the rest is within its hour
    assert await inspect.zcard(f"{prefix}r") == 0
    assert await inspect.zcard(f"{prefix}e") == await inspect.zcard(f"{prefix}n") == 1
    await store.sweep(T0 + 3600)
    assert await inspect.zcard(f"{prefix}e") == await inspect.zcard(f"{prefix}n") == 0


# --- key lifetimes ------------------------------------------------------------------------


async def test_every_key_expires_after_every_operation(
    make_store: MakeStore, inspect: aioredis.Redis, prefix: str
) -> None:
    store = make_store()
    limits = Limits(ttl=3600.0, idle_timeout=900.0, tool_calls={"refund": 2})
    now = time.time()
    token = await store.reserve("alice", limits, now)
    assert isinstance(token, str)
    found = await assert_all_expire(inspect, prefix)
    assert found["a:alice"] == pytest.approx(60_000, abs=1_000)  # the reservation lapses
    await store.bind(token, "s1", "alice", "mcp", limits, now)
    found = await assert_all_expire(inspect, prefix)
    assert set(found) == {"a:alice", "s:s1", "live"}
    idle, hour = 900_000, 3_600_000
    assert found["s:s1"] == pytest.approx(idle + hour, abs=1_000)  # deadline plus tombstone
    assert found["live"] == pytest.approx(idle + hour, abs=1_000)
    assert found["a:alice"] == pytest.approx(idle, abs=1_000)  # the latest member deadline
    await store.check("s1", "alice", [Call(True, "refund"), CALL], limits, now + 100)
    found = await assert_all_expire(inspect, prefix)
    assert found["s:s1"] == pytest.approx(idle + hour, abs=1_000)  # moved by the request
    assert found["t:s1"] == pytest.approx(found["s:s1"], abs=100)
    assert found["a:alice"] == pytest.approx(idle, abs=1_000)  # relative to the caller's now
    await store.link_task("task", "s1", now)
    found = await assert_all_expire(inspect, prefix)
    longest = 3_600_000 + hour  # the longest s1 can last: its ttl, then its tombstone
    assert found["k:task"] == pytest.approx(longest, abs=1_000)
    assert found["x:s1"] == pytest.approx(longest, abs=1_000)
    assert found["n"] == pytest.approx(longest, abs=1_000)
    assert isinstance(await store.reserve("alice", limits, now), str)
    found = await assert_all_expire(inspect, prefix)
    assert found["r"] == pytest.approx(60_000, abs=1_000)
    assert await store.close("s1", now + 200)
    found = await assert_all_expire(inspect, prefix)
    assert "t:s1" not in found
    assert found["s:s1"] == pytest.approx(hour, abs=1_000)  # a tombstone for an hour
    assert found["k:task"] == pytest.approx(hour, abs=1_000)  # as long
    assert found["x:s1"] == pytest.approx(hour, abs=1_000)
    assert found["e"] == pytest.approx(hour, abs=1_000)
    assert await store.sweep(now + 200) == 0
    await assert_all_expire(inspect, prefix)


async def test_window_keys_expire_and_stay_out_of_the_cap(
    make_store: MakeStore, inspect: aioredis.Redis, prefix: str
) -> None:
    store = make_store()
    limits = Limits(ttl=3600.0, idle_timeout=900.0, max_per_agent=1)
    now = time.time()
    window = await store.window("alice", "mcp", limits, now)
    assert window.startswith("aww-")
    found = await assert_all_expire(inspect, prefix)
    assert set(found) == {f"s:{window}", "w:alice", "live"}  # no a:alice: outside the cap
    idle, hour = 900_000, 3_600_000
    assert found[f"s:{window}"] == pytest.approx(idle + hour, abs=1_000)
    assert found["w:alice"] == pytest.approx(found[f"s:{window}"], abs=100)
    assert await inspect.get(f"{prefix}w:alice") == window
    assert await inspect.hget(f"{prefix}s:{window}", "kind") == "window"
    await store.check(window, "alice", [CALL], limits, now + 300)
    found = await assert_all_expire(inspect, prefix)
    assert "a:alice" not in found
    assert found["w:alice"] == pytest.approx(idle + hour, abs=1_000)  # moved with use
    assert found["w:alice"] == pytest.approx(found[f"s:{window}"], abs=100)
    await open_session(store, "s1", limits=limits, now=now)  # the only place of the cap
    found = await assert_all_expire(inspect, prefix)
    assert await inspect.zrange(f"{prefix}a:alice", 0, -1) == ["s:s1"]
    assert await store.close(window, now + 301)
    found = await assert_all_expire(inspect, prefix)
    assert "w:alice" not in found  # an ended window is no longer the agent's
    assert found[f"s:{window}"] == pytest.approx(hour, abs=1_000)
    await store.remember_state("s1", "digest", now)
    found = await assert_all_expire(inspect, prefix)
    assert found["q:2:s1:digest"] == pytest.approx(hour, abs=1_000)
    assert await store.take_state("s1", "digest", now)
    assert "q:2:s1:digest" not in await lifetimes(inspect, prefix)


async def test_unswept_windows_expire_by_themselves(
    make_store: MakeStore, inspect: aioredis.Redis, prefix: str
) -> None:
    """A window and its agent's window key go at deadline plus tombstone, unswept."""
    store = make_store(tombstone_ttl=0.2)
    now = time.time()
    short = Limits(ttl=0.2, idle_timeout=0.2)
    await store.window("alice", "mcp", short, now)
    await store.window("bob", "a2a", short, now)
    await assert_all_expire(inspect, prefix)
    await asyncio.sleep(0.4)
    await wait_until_gone(inspect, prefix)
    assert await store.live_count(now + 0.2) == 0


async def test_kind_and_grant_are_kept_in_the_hash(
    make_store: MakeStore, inspect: aioredis.Redis, prefix: str
) -> None:
    store = make_store()
    token = await store.reserve("alice", Limits(), T0)
    assert isinstance(token, str)
    await store.bind(token, "m1", "alice", "mcp", Limits(), T0, kind=Kind.MINTED, grant="{}")
    await open_session(store, "p1")
    assert await inspect.hmget(f"{prefix}s:m1", ["kind", "grant"]) == ["minted", "{}"]
    assert await inspect.hmget(f"{prefix}s:p1", ["kind", "grant"]) == ["protocol", None]
    await inspect.hdel(f"{prefix}s:p1", "kind")  # a hash written before kinds existed
    info = await store.get("p1")
    assert info is not None
    assert info.kind is Kind.PROTOCOL


async def test_unlimited_numbers_are_exact_in_the_hash(
    make_store: MakeStore, inspect: aioredis.Redis, prefix: str
) -> None:
    store = make_store()
    await open_session(store, limits=Limits(), counted=1)
    assert await inspect.hget(f"{prefix}s:s1", "tokens") == str(2**53 - 1)
    assert await verdicts(store, [CALL] * 10, Limits()) == [None] * 10
    assert await inspect.hget(f"{prefix}s:s1", "tokens") == str(2**53 - 1)  # no bucket kept
    assert await inspect.hget(f"{prefix}s:s1", "used") == "11"


async def test_two_replicas_share_one_window(make_store: MakeStore) -> None:
    one, two = make_store(), make_store()
    limits = Limits(calls=10)
    ids = await asyncio.gather(
        *((one, two)[i % 2].window("alice", "mcp", limits, T0) for i in range(40))
    )
    assert len(set(ids)) == 1
    outcomes = await asyncio.gather(
        *((one, two)[i % 2].check(ids[0], "alice", [CALL], limits, T0) for i in range(40))
    )
    assert sum(o.allowed for o in outcomes) == 10
    assert await one.live_count(T0) == await two.live_count(T0) == 1


async def test_keys_return_to_zero_after_sweeps_and_expiry(
    make_store: MakeStore, inspect: aioredis.Redis, prefix: str
) -> None:
    """Sessions, tombstones, reservations and links all go: nothing grows without bound."""
    store = make_store(reservation_ttl=0.2, tombstone_ttl=0.3, task_ttl=0.3)
    now = time.time()
    short = Limits(ttl=0.3, idle_timeout=0.2, max_per_agent=50, tool_calls={"refund": 5})
    for i in range(30):
        await open_session(store, f"s{i}", f"agent-{i % 3}", short, now)
        await store.check(f"s{i}", f"agent-{i % 3}", [Call(True, "refund")], short, now)
        await store.link_task(f"task-{i}", f"s{i}", now)
    await store.close("s0", now)
    assert isinstance(await store.reserve("agent-9", short, now), str)  # never bound
    assert len(await lifetimes(inspect, prefix)) > 60
    assert await store.sweep(now + 0.2) == 29  # a clock we control: all due by idle
    await assert_all_expire(inspect, prefix)
    assert await store.live_count(now + 0.2) == 0
    await wait_until_gone(inspect, prefix)


async def test_unswept_sessions_expire_by_themselves(
    make_store: MakeStore, inspect: aioredis.Redis, prefix: str
) -> None:
    """With no proxy left to sweep, the keys still go at deadline plus tombstone."""
    store = make_store(tombstone_ttl=0.2)
    now = time.time()
    await open_session(store, "s1", limits=Limits(ttl=0.2), now=now)
    await assert_all_expire(inspect, prefix)
    await asyncio.sleep(0.4)  # the longest: deadline (0.2 s) plus tombstone (0.2 s)
    await wait_until_gone(inspect, prefix)


# --- the same answers as memory, for random histories -------------------------------------


def _random_limits(rng: random.Random) -> Limits:
    return Limits(
        ttl=rng.choice([5.0, 20.0, 86400.0]),
        idle_timeout=rng.choice([3.0, 10.0, 3600.0]),
        max_per_agent=rng.choice([1, 2, 3, UNLIMITED]),
        calls=rng.choice([2, 5, UNLIMITED]),
        tool_calls=rng.choice([{}, {"refund": 1}, {"refund": 2, "free": UNLIMITED}]),
        per_minute=rng.choice([2, 60, 600, UNLIMITED]),
    )


_CALLS = (
    Call(True),
    Call(False),
    Call(True, "refund"),
    Call(True, "free"),
    Call(True, "refund", E.TOOL_NOT_AUTHORIZED),
)


def _seen(outcome: Outcome) -> tuple[object, ...]:
    def one(d: Denial | None) -> object:
        if d is None:
            return None
        used = None if d.used is None else round(d.used, 9)
        retry = None if d.retry_after is None else round(d.retry_after, 9)
        return (d.reason, d.limit, d.limit_value, used, retry)

    return (one(outcome.session), *(one(c) for c in outcome.calls))


def _shown(info: SessionInfo | None, name: str) -> object:
    if info is None:
        return None
    return (name, info.agent, info.kind, info.calls_used, info.closed, info.last_used)


@pytest.mark.parametrize("seed", range(8))
async def test_random_histories_get_the_memory_stores_answers(
    make_store: MakeStore, seed: int
) -> None:
    """Reserve, bind, window, check, close and sweep at random: every answer is memory's.

    Windows get random ids in each store, so they are compared by the order they opened.
    Memory's ``live_count`` ends what is due as a side effect (Redis's only counts), so the
    history sweeps right after it counts: a window left due but unswept is judged by the
    current limits in Redis, and is already over in memory.
    """
    rng = random.Random(seed)
    memory, redis = MemoryStore(), make_store()
    now = T0
    held: list[tuple[str, str, str]] = []  # reservation in memory, in Redis, its agent
    names: list[str] = []  # sessions by name; a window's name maps to its two ids
    windows: dict[str, tuple[str, str]] = {}
    for step in range(150):
        now += rng.choice([0.0, 0.0, 0.5, 1.0, 3.0, 7.0])
        limits, agent, op = _random_limits(rng), rng.choice(["a", "b"]), rng.random()
        where = (seed, step)
        if op < 0.15:
            m, r = await memory.reserve(agent, limits, now), await redis.reserve(agent, limits, now)
            if isinstance(m, str) and isinstance(r, str):
                held.append((m, r, agent))
            else:
                assert m == r, where
        elif op < 0.25 and held:
            m, r, owner = held.pop(rng.randrange(len(held)))
            name = rng.choice(names) if names and rng.random() < 0.2 else f"s{step}"
            binder = owner if rng.random() < 0.9 else agent
            kind = rng.choice([Kind.PROTOCOL, Kind.MINTED])
            counted = rng.choice([0, 0, 1])
            for store, token in ((memory, m), (redis, r)):
                await store.bind(
                    token, name, binder, "mcp", limits, now, counted=counted, kind=kind
                )
            if name not in names:
                names.append(name)
        elif op < 0.3 and held:
            m, r, _ = held.pop(rng.randrange(len(held)))
            await memory.release(m)
            await redis.release(r)
        elif op < 0.45:
            m = await memory.window(agent, "mcp", limits, now)
            r = await redis.window(agent, "mcp", limits, now)
            known = [name for name, ids in windows.items() if m in ids or r in ids]
            if known:
                assert windows[known[0]] == (m, r), where
            else:
                windows[f"w{len(windows)}"] = (m, r)
                names.append(f"w{len(windows) - 1}")
        elif op < 0.8 and names:
            name = rng.choice(names)
            m_id, r_id = windows.get(name, (name, name))
            calls = [rng.choice(_CALLS) for _ in range(rng.choice([0, 1, 1, 2, 4]))]
            m_out = await memory.check(m_id, agent, calls, limits, now)
            r_out = await redis.check(r_id, agent, calls, limits, now)
            assert _seen(m_out) == _seen(r_out), where
        elif op < 0.87 and names:
            m_id, r_id = windows.get(name := rng.choice(names), (name, name))
            assert await memory.close(m_id, now) == await redis.close(r_id, now), where
        elif op < 0.93:
            assert await memory.sweep(now) == await redis.sweep(now), where
        else:
            assert await memory.live_count(now) == await redis.live_count(now), where
            assert await memory.sweep(now) == await redis.sweep(now), where
            by_id = {ids[i]: name for name, ids in windows.items() for i in (0, 1)}
            m_list = sorted(
                str(_shown(i, by_id.get(i.id, i.id))) for i in await memory.sessions(now)
            )
            r_list = sorted(
                str(_shown(i, by_id.get(i.id, i.id))) for i in await redis.sessions(now)
            )
            assert m_list == r_list, where
    for name in names:
        m_id, r_id = windows.get(name, (name, name))
        m_info, r_info = await memory.get(m_id), await redis.get(r_id)
        assert _shown(m_info, name) == _shown(r_info, name), (seed, name)


# --- two replicas, one Redis --------------------------------------------------------------


async def test_concurrent_checks_split_across_two_replicas_never_overspend(
    make_store: MakeStore,
) -> None:
    one, two = make_store(), make_store()
    limits = Limits(calls=10)
    await open_session(one, limits=limits)
    replicas = (one, two)
    outcomes = await asyncio.gather(
        *(replicas[i % 2].check("s1", "alice", [CALL], limits, T0 + i / 100) for i in range(40))
    )
    assert sum(o.allowed for o in outcomes) == 10
    for store in replicas:
        info = await store.get("s1")
        assert info is not None
        assert info.calls_used == 10


async def test_the_cap_holds_across_two_replicas_under_concurrent_reserves(
    make_store: MakeStore,
) -> None:
    one, two = make_store(), make_store()
    limits = Limits(max_per_agent=3)
    got = await asyncio.gather(*((one, two)[i % 2].reserve("alice", limits, T0) for i in range(40)))
    tokens = [t for t in got if isinstance(t, str)]
    assert len(set(tokens)) == 3
    denied = [d for d in got if isinstance(d, Denial)]
    assert {(d.reason, d.used) for d in denied} == {(E.TOO_MANY_SESSIONS, 3)}
    for i, token in enumerate(tokens):  # bound through either replica, still three
        await (one, two)[i % 2].bind(token, f"s{i}", "alice", "mcp", limits, T0)
    assert isinstance(await two.reserve("alice", limits, T0), Denial)
    assert await one.live_count(T0) == await two.live_count(T0) == 3


async def test_budget_rate_and_close_are_shared_by_two_replicas(make_store: MakeStore) -> None:
    one, two = make_store(), make_store()
    limits = Limits(calls=4, per_minute=600)
    await open_session(one, limits=limits)
    assert await verdicts(one, [CALL, CALL], limits) == [None, None]
    assert await verdicts(two, [CALL, CALL], limits) == [None, None]
    assert await verdicts(one, [CALL], limits) == [E.SESSION_BUDGET_EXCEEDED]
    assert await verdicts(two, [CALL], limits) == [E.SESSION_BUDGET_EXCEEDED]
    assert await one.close("s1", T0 + 1)
    assert await session_reason(two, now=T0 + 2) is E.SESSION_CLOSED
    assert not await two.close("s1", T0 + 2)


# --- faults -------------------------------------------------------------------------------


async def _every_method(store: SessionStore, token: str) -> dict[str, Awaitable[Any]]:
    limits = Limits()
    return {
        "reserve": store.reserve("alice", limits, T0),
        "bind": store.bind(token, "s2", "alice", "mcp", limits, T0),
        "release": store.release(token),
        "check": store.check("s1", "alice", [CALL], limits, T0),
        "close": store.close("s1", T0),
        "get": store.get("s1"),
        "link_task": store.link_task("t", "s1", T0),
        "context_of": store.context_of("t"),
        "sessions": store.sessions(T0),
        "live_count": store.live_count(T0),
        "sweep": store.sweep(T0),
        "window": store.window("alice", "mcp", limits, T0),
        "remember_state": store.remember_state("s1", "digest", T0),
        "take_state": store.take_state("s1", "digest", T0),
    }


async def test_a_stopped_server_is_unavailable_and_a_restarted_one_is_used_again(
    make_store: MakeStore,
) -> None:
    with RedisServer() as own:
        store = make_store(own.url)
        await open_session(store)
        token = await store.reserve("alice", Limits(), T0)
        assert isinstance(token, str)
        own.stop()
        for name, call in (await _every_method(store, token)).items():
            started = time.monotonic()
            with pytest.raises(StoreUnavailable):
                await call
            assert time.monotonic() - started < 3.0, name  # fails fast: not a test of speed
        assert not await store.healthy()
        own.start()  # same port, empty (persistence off): the same instance reconnects
        assert await store.healthy()
        assert await session_reason(store) is E.SESSION_NOT_FOUND
        await open_session(store, "s3")
        assert await verdicts(store, [CALL], session_id="s3") == [None]


async def test_a_server_that_never_answers_times_out(make_store: MakeStore) -> None:
    """A listener that accepts and stays silent: the socket timeout, not a hang."""
    silent = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = silent.sockets[0].getsockname()[1]
    try:
        store = make_store(f"redis://127.0.0.1:{port}/0?socket_timeout=0.2")
        with pytest.raises(StoreUnavailable):
            await store.check("s1", "alice", [CALL], Limits(), T0)
        assert not await store.healthy()
    finally:
        silent.close()


# --- from_url -----------------------------------------------------------------------------


def _kwargs(store: RedisStore) -> dict[str, Any]:
    return dict(store._redis.connection_pool.connection_kwargs)


async def test_from_url_prefix_and_defaults() -> None:
    store = RedisStore.from_url("redis://127.0.0.1:6390/2")
    assert store.prefix == DEFAULT_PREFIX
    kwargs = _kwargs(store)
    assert (kwargs["host"], kwargs["port"], kwargs["db"]) == ("127.0.0.1", 6390, 2)
    assert kwargs["socket_timeout"] == 1.0
    assert kwargs["socket_connect_timeout"] == 1.0
    assert kwargs["retry"].get_retries() == 0  # a decision never runs twice
    assert "prefix" not in kwargs
    await store.aclose()
    store = RedisStore.from_url(
        "redis://u:p%40ss@h:1/0?prefix=team%2Fa:&socket_timeout=0.25&health_check_interval=5"
    )
    assert store.prefix == "team/a:"
    kwargs = _kwargs(store)
    assert (kwargs["username"], kwargs["password"]) == ("u", "p@ss")
    assert (kwargs["socket_timeout"], kwargs["health_check_interval"]) == (0.25, 5)
    await store.aclose()


async def test_from_url_tls_and_unix_socket() -> None:
    store = RedisStore.from_url("rediss://h:6380/0?ssl_cert_reqs=none&prefix=x:")
    assert store._redis.connection_pool.connection_class is SSLConnection
    assert store.prefix == "x:"
    await store.aclose()
    store = RedisStore.from_url("unix:///run/redis/redis.sock?db=3")
    assert store._redis.connection_pool.connection_class is UnixDomainSocketConnection
    assert _kwargs(store)["path"] == "/run/redis/redis.sock"
    await store.aclose()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://h:6379/0", "expected redis://, rediss:// or unix://"),
        ("h:6379", "expected redis://, rediss:// or unix://"),
        ("redis://:6379/0", "no host"),
        ("redis://u:s3cret@h:port/0", "port must be a number"),
        ("redis://u:s3cret@h:6379/zero", "database must be a number"),
        ("redis://h:6379/0?prefix=", "prefix must not be empty"),
        ("redis://u:s3cret@h:6379/0?bogus=1", "unsupported query parameter"),
        ("redis://h:6379/0?socket_timeout=soon", "socket_timeout"),
        ("unix://", "socket path"),
    ],
)
def test_from_url_rejects_bad_urls_clearly(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=r"^store URL: ") as raised:
        RedisStore.from_url(url)
    assert message in str(raised.value)
    assert "s3cret" not in str(raised.value)
