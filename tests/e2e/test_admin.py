"""The admin listener: live sessions, closing them, Prometheus metrics, and the denial log."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import datetime

import httpx
import pytest
from mcp import MCPError

from tests.conftest import RunProxy
from tests.e2e.test_policies import (
    DEFAULT_DOMAIN,
    ERROR_INFO,
    METADATA_KEYS,
    SESSIONS_POLICY,
    RawMcp,
    Sent,
    Target,
    admin_sessions,
    check_error,
    denial_records,
    error_of,
    fresh,
    official_client,
    scrape,
)
from tests.upstreams.serve import HeaderRecorder

pytestmark = pytest.mark.timeout(60)

SESSION_FIELDS = {"id", "agent", "kind", "protocol", "created", "last_used", "calls_used"}


@pytest.fixture(scope="module")
def target(
    run_proxy_module: RunProxy, mcp_upstream: str, mcp_upstream_seen: HeaderRecorder
) -> Target:
    proxy = run_proxy_module(mcp_upstream, "--policy", str(SESSIONS_POLICY))
    return Target(proxy, mcp_upstream_seen)


@pytest.fixture
async def admin(target: Target) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=target.proxy.admin_url, timeout=10.0) as client:
        yield client


@pytest.fixture
async def web() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=30.0) as client:
        yield client


def timestamp(text: str) -> datetime:
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    assert parsed.tzinfo is not None, text
    return parsed


# --- GET /sessions ------------------------------------------------------------------------------


async def test_sessions_lists_live_sessions(target: Target, web: httpx.AsyncClient) -> None:
    agent = fresh("lister")
    raw = target.raw(web, agent)
    session = await raw.initialize()
    listed = (await admin_sessions(target.proxy))[session]
    assert set(listed) == SESSION_FIELDS
    assert (listed["agent"], listed["protocol"], listed["calls_used"]) == (agent, "mcp", 0)
    assert listed["kind"] == "protocol"
    created = timestamp(listed["created"])

    assert (await raw.request("ping", session=session)).result() == {}
    assert (await raw.echo(session, "one")).tool_text() == "one"
    assert (await raw.echo(session, "two")).tool_text() == "two"
    listed = (await admin_sessions(target.proxy))[session]
    assert listed["calls_used"] == 2
    assert timestamp(listed["created"]) == created
    assert timestamp(listed["last_used"]) >= created

    other = await target.raw(web, agent).initialize()
    both = await admin_sessions(target.proxy)
    assert {both[session]["agent"], both[other]["agent"]} == {agent}
    assert both[other]["calls_used"] == 0


# --- DELETE /sessions/{id} ----------------------------------------------------------------------


async def test_admin_close_ends_the_session(
    target: Target, admin: httpx.AsyncClient, web: httpx.AsyncClient
) -> None:
    raw = target.raw(web, fresh("closed-by-admin"))
    session = await raw.initialize()
    assert (await raw.echo(session, "before")).tool_text() == "before"
    closed = await admin.delete(f"/sessions/{session}")
    assert closed.status_code == 204, closed.text
    assert closed.content == b""
    (await raw.echo(session)).denied("SESSION_CLOSED")
    (await raw.request("tools/list", session=session)).denied("SESSION_CLOSED")
    assert session not in await admin_sessions(target.proxy)
    # initialize, notifications/initialized, the echo before the close.
    assert len(target.posts(raw)) == 3

    again = await admin.delete(f"/sessions/{session}")
    assert again.status_code == 404, again.text
    assert again.json()["error"]["details"][0]["reason"] == "SESSION_CLOSED"


async def test_admin_close_reaches_the_official_client(
    target: Target, admin: httpx.AsyncClient
) -> None:
    async with official_client(target.endpoint, fresh("closed-by-admin")) as client:
        await client.session.initialize()
        await client.session.call_tool("echo", {"text": "hi"})
        session = client.session_id
        assert (await admin.delete(f"/sessions/{session}")).status_code == 204
        with pytest.raises(MCPError) as caught:
            await client.session.call_tool("echo", {"text": "after"})
    check_error(error_of(caught.value), "SESSION_CLOSED", Sent("tools/call", session, "echo"))


async def test_admin_close_frees_the_agents_place(
    target: Target, admin: httpx.AsyncClient, web: httpx.AsyncClient
) -> None:
    raw = target.raw(web, fresh("solo"))  # max_per_agent: 1
    first = await raw.initialize()
    (await raw.start()).denied("TOO_MANY_SESSIONS")
    assert (await admin.delete(f"/sessions/{first}")).status_code == 204
    second = await raw.initialize()
    assert (await raw.echo(second, "room")).tool_text() == "room"


async def test_admin_close_of_an_unknown_session_is_an_aip193_not_found(
    admin: httpx.AsyncClient,
) -> None:
    unknown = uuid.uuid4().hex
    response = await admin.delete(f"/sessions/{unknown}")
    assert response.status_code == 404, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"code", "status", "message", "details"}
    assert (error["code"], error["status"]) == (404, "NOT_FOUND")
    assert error["message"] == "session not found"
    [info] = error["details"]
    assert set(info) == {"@type", "reason", "domain", "metadata"}
    assert (info["@type"], info["reason"], info["domain"]) == (
        ERROR_INFO,
        "SESSION_NOT_FOUND",
        DEFAULT_DOMAIN,
    )
    assert set(info["metadata"]) <= METADATA_KEYS
    assert info["metadata"].get("sessionId", unknown) == unknown


# --- GET /metrics -------------------------------------------------------------------------------


async def test_metrics_families_and_their_movement(target: Target, web: httpx.AsyncClient) -> None:
    before = await scrape(target.proxy)
    for family, kind in [
        ("agent_warden_requests_total", "counter"),
        ("agent_warden_denials_total", "counter"),
        ("agent_warden_sessions_live", "gauge"),
        ("agent_warden_policy_reloads_total", "counter"),
        ("agent_warden_upstream_latency_seconds", "histogram"),
    ]:
        assert before.types.get(family) == kind, (family, before.types)

    raw = target.raw(web, fresh("guard"))
    session = await raw.initialize()
    assert (await raw.echo(session, "counted")).tool_text() == "counted"
    (await raw.call_tool(session, "delete_admin", user="x")).denied("TOOL_NOT_AUTHORIZED")
    after = await scrape(target.proxy)

    def moved(name: str, **labels: str) -> float:
        return after.value(name, **labels) - before.value(name, **labels)

    requests = "agent_warden_requests_total"
    assert moved(requests, protocol="mcp", method="tools/call", outcome="allowed") == 1
    assert moved(requests, protocol="mcp", method="tools/call", outcome="denied") == 1
    assert moved(requests, protocol="mcp", method="initialize", outcome="allowed") == 1
    denials = "agent_warden_denials_total"
    assert moved(denials, reason="TOOL_NOT_AUTHORIZED", mode="enforce") == 1
    assert {(s["reason"], s["mode"]) for s, _ in after.series(denials)} >= {
        ("TOOL_NOT_AUTHORIZED", "enforce")
    }
    # initialize, notifications/initialized and the echo were forwarded and timed.
    latency = "agent_warden_upstream_latency_seconds"
    assert moved(f"{latency}_count", protocol="mcp") == 3
    buckets = sorted(
        ((float(labels["le"]), value) for labels, value in after.series(f"{latency}_bucket")),
    )
    assert buckets, after.types
    assert buckets[-1][0] == float("inf")
    assert [v for _, v in buckets] == sorted(v for _, v in buckets)  # cumulative
    assert buckets[-1][1] == after.value(f"{latency}_count", protocol="mcp")
    assert after.value(f"{latency}_sum", protocol="mcp") > 0

    live = after.value("agent_warden_sessions_live")
    assert live >= 1
    assert live == len(await admin_sessions(target.proxy))
    for result in ("success", "failure"):
        assert after.value("agent_warden_policy_reloads_total", result=result) == 0


# --- the operator's denial log line -------------------------------------------------------------


async def test_denial_log_line_tells_the_operator_what_the_client_is_not_told(
    target: Target, web: httpx.AsyncClient
) -> None:
    agent = fresh("budget")  # budget.calls: 3
    raw = target.raw(web, agent)
    session = await raw.initialize()
    for n in range(3):
        assert (await raw.echo(session, str(n))).tool_text() == str(n)
    denied = await raw.echo(session, "over")
    denied.denied("SESSION_BUDGET_EXCEEDED")

    [record] = await denial_records(target.proxy, 1, session=session)
    assert record["level"] == "warning"
    assert record["agent"] == agent
    assert record["policy"] == "budget-trio"
    assert record["reason"] == "SESSION_BUDGET_EXCEEDED"
    assert (record["limit"], record["limit_value"], record["used"]) == ("calls", 3, 3)
    body = denied.response.text
    for secret in (agent, "budget-trio", '"limit', '"used"', '"policy"', '"agent"'):
        assert secret not in body, (secret, body)


async def test_no_identity_header_is_the_anonymous_agent(
    target: Target, web: httpx.AsyncClient
) -> None:
    raw = RawMcp(web, target.endpoint, None)
    session = await raw.initialize()
    assert (await admin_sessions(target.proxy))[session]["agent"] == "anonymous"
    assert (await raw.echo(session, "nameless")).tool_text() == "nameless"
