"""Two proxy replicas sharing one Redis in front of one MCP upstream behave as one (issue 7).

Each test starts its own pair of proxy processes on a fresh key prefix of the session's
`redis_server` (or, for the fault tests, on a `RedisServer` of its own that it stops and
starts again). Both replicas forward to the one stateful official-SDK MCP upstream, so a
session opened through one is served through the other; requests alternate replicas and
every limit must hold for the pair as it does for one process. The raw MCP helpers,
envelope checks and Prometheus parsing come from `test_policies.py`.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Proxy, RunProxy
from tests.e2e.test_policies import (
    DATA,
    DEFAULT_DOMAIN,
    ERROR_INFO,
    SESSION_HEADER,
    RawMcp,
    Reply,
    Target,
    admin_sessions,
    check_opaque,
    denial_records,
    eventually,
    fresh,
    log_records,
    scrape,
    seconds_of,
    upstream_posts,
)
from tests.redis_server import RedisServer, RedisServerMissing
from tests.upstreams.serve import HeaderRecorder

pytestmark = pytest.mark.timeout(90)

REPLICAS_POLICY = DATA / "replicas.yaml"
OPEN_POLICY = DATA / "replicas_open.yaml"

# errors.md section 2, stated here: the store row is not in test_policies.REASONS.
STORE_REASON = "POLICY_STORE_UNAVAILABLE"
STORE_MESSAGE = "policy store unavailable"
STORE_CODE = -31070
AUDIT_MSG = "request would be denied (audit)"


# --- two replicas ---------------------------------------------------------------------------


@dataclass
class Replicas:
    """Two proxies on one store (one key prefix) in front of the one stateful upstream."""

    a: Target
    b: Target
    prefix: str

    @property
    def both(self) -> tuple[Target, Target]:
        return (self.a, self.b)

    def raws(self, http: httpx.AsyncClient, agent: str) -> tuple[RawMcp, RawMcp]:
        """One agent's raw client through each replica: one marker and one id sequence,
        so requests of one session never share a JSON-RPC id at the upstream."""
        ids = itertools.count(1)
        marker = uuid.uuid4().hex
        return (
            RawMcp(http, self.a.endpoint, agent, marker=marker, _ids=ids),
            RawMcp(http, self.b.endpoint, agent, marker=marker, _ids=ids),
        )


StartReplicas = Callable[..., Replicas]


def store_url(server: RedisServer, prefix: str) -> str:
    return f"{server.url}?prefix={prefix}"


@pytest.fixture
def start_replicas(
    run_proxy: RunProxy, mcp_upstream: str, mcp_upstream_seen: HeaderRecorder
) -> Iterator[StartReplicas]:
    """`start_replicas(server, policy=REPLICAS_POLICY)`: two proxies on a fresh key prefix,
    started side by side; the prefix's keys are deleted at teardown."""
    used: list[tuple[RedisServer, str]] = []

    def start(server: RedisServer, policy: Path = REPLICAS_POLICY) -> Replicas:
        prefix = f"rt-{uuid.uuid4().hex[:12]}:"
        used.append((server, prefix))
        args = ("--policy", str(policy), "--store", store_url(server, prefix))
        with ThreadPoolExecutor(2) as pool:
            a, b = pool.map(lambda _: run_proxy(mcp_upstream, *args), range(2))
        return Replicas(Target(a, mcp_upstream_seen), Target(b, mcp_upstream_seen), prefix)

    yield start
    for server, prefix in used:
        server.flush(prefix)


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A Redis of the test's own, free to be stopped (the session's one is shared)."""
    try:
        server = RedisServer()
    except RedisServerMissing as exc:
        pytest.fail(str(exc), pytrace=False)
    with server:
        yield server


@pytest.fixture
async def web() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=30.0) as client:
        yield client


# --- checks ------------------------------------------------------------------------------------


def store_unavailable(reply: Reply) -> Mapping[str, Any]:
    """POLICY_STORE_UNAVAILABLE on MCP: JSON-RPC -31070 at HTTP 200; returns its ErrorInfo."""
    response = reply.response
    assert response.status_code == 200, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json"), response.headers
    assert "retry-after" not in response.headers, response.headers
    assert SESSION_HEADER not in response.headers, response.headers
    body = response.json()
    assert set(body) == {"jsonrpc", "id", "error"}, body
    assert (body["jsonrpc"], body["id"]) == ("2.0", reply.sent["id"]), body
    error = body["error"]
    assert set(error) == {"code", "message", "data"}, error
    assert (error["code"], error["message"]) == (STORE_CODE, STORE_MESSAGE), error
    assert len(error["data"]) == 1, error
    info: Mapping[str, Any] = error["data"][0]
    assert set(info) <= {"@type", "reason", "domain", "metadata"}, info
    assert (info["@type"], info["reason"], info["domain"]) == (
        ERROR_INFO,
        STORE_REASON,
        DEFAULT_DOMAIN,
    ), info
    metadata = info.get("metadata", {})
    params = reply.sent.get("params") or {}
    told = {
        "sessionId": reply.session,
        "method": reply.sent["method"],
        "tool": params.get("name") if reply.sent["method"] == "tools/call" else None,
    }
    assert set(metadata) <= set(told), metadata
    for key, value in metadata.items():
        assert value == told[key], (key, metadata)
    check_opaque({"message": error["message"], "data": [{"metadata": metadata}]})
    return info


async def admin_get(proxy: Proxy, path: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10.0) as client:
        return await client.get(proxy.admin_url + path)


async def admin_status(proxy: Proxy, path: str) -> int:
    return (await admin_get(proxy, path)).status_code


async def admin_delete(proxy: Proxy, session: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10.0) as client:
        return await client.delete(f"{proxy.admin_url}/sessions/{session}")


def aip193_reason(response: httpx.Response, status: int, reason: str) -> None:
    assert response.status_code == status, (response.status_code, response.text)
    error = response.json()["error"]
    assert error["code"] == status, error
    infos = [d for d in error["details"] if d.get("@type") == ERROR_INFO]
    assert [i["reason"] for i in infos] == [reason], error


async def audit_records(proxy: Proxy, count: int, **fields: Any) -> list[dict[str, Any]]:
    """Wait for `count` audit lines matching `fields` (no more appear after)."""
    await eventually(partial(has_records, proxy, AUDIT_MSG, count, fields))
    records = log_records(proxy, AUDIT_MSG, **fields)
    assert len(records) == count, records
    return records


def has_records(proxy: Proxy, msg: str, count: int, fields: dict[str, Any]) -> bool:
    return len(log_records(proxy, msg, **fields)) >= count


def alive(proxy: Proxy) -> None:
    tail = proxy.stderr()[-4000:]
    assert proxy.proc.poll() is None, f"proxy exited with {proxy.proc.returncode}:\n{tail}"


async def readyz_is(proxy: Proxy, status: int) -> bool:
    return await admin_status(proxy, "/readyz") == status


# --- the cap, the budget, closing, concurrency, the rate limit ---------------------------------


async def test_cap_holds_across_replicas(
    start_replicas: StartReplicas, redis_server: RedisServer, web: httpx.AsyncClient
) -> None:
    pair = start_replicas(redis_server)
    agent = fresh("cap")
    ra, rb = pair.raws(web, agent)
    first, second = await ra.initialize(), await rb.initialize()
    assert first != second
    for target in pair.both:
        listed = await admin_sessions(target.proxy)
        assert {first, second} <= set(listed)
        assert {listed[s]["agent"] for s in (first, second)} == {agent}
    # max_per_agent: 2 is reached for the pair, whichever replica is asked.
    for raw in (ra, rb, ra):
        third = await raw.start()
        info = third.denied("TOO_MANY_SESSIONS")
        assert "sessionId" not in info["metadata"]
        assert SESSION_HEADER not in third.response.headers
    # Two initializes and two notifications/initialized; no refused initialize got through.
    assert len(upstream_posts(pair.a.seen, ra.marker)) == 4
    for target, count in ((pair.a, 2), (pair.b, 1)):
        records = await denial_records(target.proxy, count, agent=agent)
        assert {(r["reason"], r["policy"], r["limit_value"]) for r in records} == {
            ("TOO_MANY_SESSIONS", "replica-cap", 2)
        }
    # Closed through one replica, the place is free through the other.
    assert (await ra.delete(first)).status_code == 200
    third_session = await rb.initialize()
    assert third_session not in (first, second)
    (await ra.start()).denied("TOO_MANY_SESSIONS")
    (await rb.echo(first)).denied("SESSION_CLOSED")


async def test_budget_spent_through_both_replicas(
    start_replicas: StartReplicas, redis_server: RedisServer, web: httpx.AsyncClient
) -> None:
    pair = start_replicas(redis_server)
    ra, rb = pair.raws(web, fresh("budget"))
    session = await ra.initialize()
    for n, raw in enumerate((ra, rb, ra, rb)):  # budget.calls: 4, spent 2 and 2
        assert (await raw.echo(session, f"call {n}")).tool_text() == f"call {n}"
    for raw in (ra, rb):
        (await raw.echo(session, "fifth")).denied("SESSION_BUDGET_EXCEEDED")
        (await raw.request("tools/list", session=session)).denied("SESSION_BUDGET_EXCEEDED")
    for target in pair.both:
        assert (await admin_sessions(target.proxy))[session]["calls_used"] == 4
    # initialize, notifications/initialized and the four calls; no denied one.
    assert len(upstream_posts(pair.a.seen, ra.marker)) == 6
    for target in pair.both:
        records = await denial_records(target.proxy, 2, session=session)
        assert {
            (r["reason"], r["policy"], r["limit"], r["limit_value"], r["used"]) for r in records
        } == {("SESSION_BUDGET_EXCEEDED", "replica-budget", "calls", 4, 4)}


async def test_admin_close_on_one_replica_closes_on_the_other(
    start_replicas: StartReplicas, redis_server: RedisServer, web: httpx.AsyncClient
) -> None:
    pair = start_replicas(redis_server)
    agent = fresh("closer")
    ra, rb = pair.raws(web, agent)
    session = await ra.initialize()
    assert (await rb.echo(session, "via b")).tool_text() == "via b"
    before = [await admin_sessions(t.proxy) for t in pair.both]
    for listed in before:
        assert (listed[session]["agent"], listed[session]["calls_used"]) == (agent, 1)
    assert before[0] == before[1]

    deleted = await admin_delete(pair.a.proxy, session)
    assert deleted.status_code == 204, deleted.text
    for raw in (rb, ra):
        (await raw.echo(session)).denied("SESSION_CLOSED")
        (await raw.request("tools/list", session=session)).denied("SESSION_CLOSED")
    after = [await admin_sessions(t.proxy) for t in pair.both]
    assert session not in after[0]
    assert after[0] == after[1]
    # Closing it again through the other replica: already closed.
    aip193_reason(await admin_delete(pair.b.proxy, session), 404, "SESSION_CLOSED")
    # initialize, notifications/initialized and the one echo.
    assert len(upstream_posts(pair.a.seen, ra.marker)) == 3


async def test_concurrent_calls_across_replicas_spend_the_budget_exactly(
    start_replicas: StartReplicas,
    redis_server: RedisServer,
    web: httpx.AsyncClient,
    mcp_upstream_seen: HeaderRecorder,
) -> None:
    pair = start_replicas(redis_server)
    ra, rb = pair.raws(web, fresh("burst"))
    session = await ra.initialize()
    # The calls carry a marker of their own, to count them alone at the upstream.
    marker = uuid.uuid4().hex
    ra.marker = rb.marker = marker
    replies = await asyncio.gather(
        *(raw.echo(session, f"c{n}") for n, raw in enumerate([ra, rb] * 20))
    )
    allowed = [r for r in replies if "result" in r.message]
    denied = [r for r in replies if "error" in r.message]
    assert (len(allowed), len(denied)) == (10, 30)  # budget.calls: 10
    for reply in allowed:
        assert reply.tool_text() == reply.sent["params"]["arguments"]["text"]
    for reply in denied:
        reply.denied("SESSION_BUDGET_EXCEEDED")
    calls = upstream_posts(mcp_upstream_seen, marker)
    assert len(calls) == 10
    assert {r.headers.get(SESSION_HEADER) for r in calls} == {session}
    for target in pair.both:
        assert (await admin_sessions(target.proxy))[session]["calls_used"] == 10


async def test_rate_limit_holds_across_replicas(
    start_replicas: StartReplicas, redis_server: RedisServer, web: httpx.AsyncClient
) -> None:
    pair = start_replicas(redis_server)
    ra, rb = pair.raws(web, fresh("rate"))
    session = await ra.initialize()
    for n, raw in enumerate((ra, rb, ra, rb)):  # per_minute: 4
        assert (await raw.echo(session, f"r{n}")).tool_text() == f"r{n}"
    for raw in (ra, rb):
        limited = await raw.echo(session, "fifth")
        limited.denied("SESSION_RATE_LIMITED")  # Retry-After matches the RetryInfo
        delay = seconds_of(limited.response.json()["error"]["data"][1]["retryDelay"])
        # One token comes back every 15 s and the bucket is (nearly) empty.
        assert 0 < delay <= 15
    for target in pair.both:
        assert (await admin_sessions(target.proxy))[session]["calls_used"] == 4
        [record] = await denial_records(target.proxy, 1, session=session)
        assert (record["reason"], record["policy"], record["limit"], record["limit_value"]) == (
            "SESSION_RATE_LIMITED",
            "replica-rate",
            "per_minute",
            4,
        )


# --- the store goes away and comes back ----------------------------------------------------------


async def test_store_down_fails_closed_and_service_resumes(
    start_replicas: StartReplicas, own_redis: RedisServer, web: httpx.AsyncClient
) -> None:
    pair = start_replicas(own_redis)
    agent = fresh("fault")
    ra, rb = pair.raws(web, agent)
    session = await ra.initialize()
    assert (await rb.echo(session, "before")).tool_text() == "before"
    before = {id(t): await scrape(t.proxy) for t in pair.both}

    own_redis.stop()
    for raw in (ra, rb):
        store_unavailable(await raw.echo(session, "down"))
        store_unavailable(await raw.request("tools/list", session=session))
        store_unavailable(await raw.start())  # no new session either
    for target in pair.both:
        proxy = target.proxy
        await eventually(partial(readyz_is, proxy, 503))
        assert await admin_status(proxy, "/livez") == 200
        aip193_reason(await admin_get(proxy, "/sessions"), 503, STORE_REASON)
        alive(proxy)
        records = await denial_records(proxy, 3, agent=agent, reason=STORE_REASON)
        assert {r["mode"] for r in records} == {"enforce"}
        now = await scrape(proxy)
        series = {"reason": STORE_REASON, "mode": "enforce"}
        grown = now.value("agent_warden_denials_total", **series) - before[id(target)].value(
            "agent_warden_denials_total", **series
        )
        assert grown == 3
    # Only initialize, notifications/initialized and the first echo reached the upstream.
    assert len(upstream_posts(pair.a.seen, ra.marker)) == 3

    own_redis.start()  # same port, empty: persistence is off
    for target in pair.both:
        await eventually(partial(readyz_is, target.proxy, 200))
        alive(target.proxy)
    fresh_a, fresh_b = pair.raws(web, fresh("fault"))
    renewed = await fresh_b.initialize()
    assert (await fresh_a.echo(renewed, "after")).tool_text() == "after"
    assert (await fresh_b.echo(renewed, "again")).tool_text() == "again"
    for target in pair.both:
        assert (await admin_sessions(target.proxy))[renewed]["calls_used"] == 2
    # The old session went with the store's memory: MCP session-gone, re-initialize.
    (await ra.echo(session, "old")).denied("SESSION_NOT_FOUND")


async def test_store_failure_open_lets_calls_through_as_audit(
    start_replicas: StartReplicas, own_redis: RedisServer, web: httpx.AsyncClient
) -> None:
    pair = start_replicas(own_redis, OPEN_POLICY)
    agent = fresh("open")
    ra, rb = pair.raws(web, agent)
    session = await ra.initialize()
    assert (await rb.echo(session, "up")).tool_text() == "up"
    before = {id(t): await scrape(t.proxy) for t in pair.both}

    own_redis.stop()
    for n, raw in enumerate((ra, rb, ra, rb)):
        assert (await raw.echo(session, f"down {n}")).tool_text() == f"down {n}"
    # A new session too: the upstream issues it, the proxy cannot record it.
    opened = await rb.start()
    opened.result()
    assert opened.response.headers.get(SESSION_HEADER)

    for target, count in ((pair.a, 2), (pair.b, 3)):
        proxy = target.proxy
        alive(proxy)
        assert log_records(proxy, "request denied", agent=agent) == []
        records = await audit_records(proxy, count, agent=agent)
        assert len(records) == count, records
        assert {(r["reason"], r["mode"]) for r in records} == {(STORE_REASON, "audit")}
        now = await scrape(proxy)
        series = {"reason": STORE_REASON, "mode": "audit"}
        grown = now.value("agent_warden_denials_total", **series) - before[id(target)].value(
            "agent_warden_denials_total", **series
        )
        assert grown == count
        enforced = {"reason": STORE_REASON, "mode": "enforce"}
        assert now.value("agent_warden_denials_total", **enforced) == 0
    # initialize, notifications/initialized, five echoes and the second initialize.
    assert len(upstream_posts(pair.a.seen, ra.marker)) == 8
