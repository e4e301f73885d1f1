"""Minted sessions: `POST /sessions` on the admin listener, used with `Warden-Session`.

Contract, "Sessions" 1 and "Admin listener": a minted session belongs to the agent it was
minted for, can only narrow what that agent's policy allows (every limit the smaller of
the two, a tool or method allowed by both), works for every protocol, and the proxy
strips `Warden-Session` before forwarding. `session: {require: minted}` refuses requests
without one. Minted sessions that are gone answer HTTP 200 with -31060..-31062 on
JSON-RPC (errors.md 2: no 404, that is the 2025-era `Mcp-Session-Id` kind only).

One proxy per upstream serves the module: the official-SDK MCP server and the official
a2a-sdk agent (the session-scoped fixtures of tests/conftest.py), with a policy written
below, one entry per behaviour picked by agent-id prefix; every test uses fresh agents.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import httpx2
import mcp.types as mt
import pytest
from mcp import Client, MCPError
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client

from tests.conftest import Proxy, RunProxy
from tests.upstreams import mcp_server
from tests.upstreams.a2a_server import JSONRPC_PATH, REST_PREFIX, echo_text
from tests.upstreams.mcp_server import MCP_PATH
from tests.upstreams.serve import HeaderRecorder, SeenRequest, ThreadedServer

pytestmark = pytest.mark.timeout(60)

MARKER = "x-warden-test"
AGENT_HEADER = "x-agent-id"
MINTED_HEADER = "Warden-Session"
ACCEPT = "application/json, text/event-stream"
MODERN = "2026-07-28"
MINTED_PREFIX = "awm-"

DOMAIN = "agent-warden.dev"
ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"
RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo"
METADATA_KEYS = frozenset({"sessionId", "method", "tool"})

# errors.md section 2: reason -> (message, JSON-RPC code, HTTP status of AIP-193, Code).
REASONS: dict[str, tuple[str, int, int, str]] = {
    "SESSION_NOT_FOUND": ("session not found", -31060, 404, "NOT_FOUND"),
    "SESSION_EXPIRED": ("session expired", -31061, 404, "NOT_FOUND"),
    "SESSION_CLOSED": ("session already closed", -31062, 404, "NOT_FOUND"),
    "SESSION_BUDGET_EXCEEDED": ("session budget exceeded", -31063, 429, "RESOURCE_EXHAUSTED"),
    "TOOL_NOT_AUTHORIZED": ("tool not authorized in session", -31064, 403, "PERMISSION_DENIED"),
    "SESSION_RATE_LIMITED": ("session rate limit exceeded", -31065, 429, "RESOURCE_EXHAUSTED"),
    "TOO_MANY_SESSIONS": ("too many concurrent sessions", -31066, 429, "RESOURCE_EXHAUSTED"),
    "AGENT_MISMATCH": ("agent mismatch", -31067, 403, "PERMISSION_DENIED"),
    "METHOD_NOT_AUTHORIZED": (
        "method not authorized in session",
        -31069,
        403,
        "PERMISSION_DENIED",
    ),
}

POLICY = """\
version: 1
identity: {header: X-Agent-Id}
defaults:
  session: {max_per_agent: 6}
policies:
  - name: minted-wide
    match: {agents: ["wide-*"]}
    budget: {calls: 10, tools: {refund_payment: 3}}
    tools: {allow: ["echo", "add", "lookup_*", "refund_payment"], deny: ["*_admin"]}
  - name: minted-tight
    match: {agents: ["tight-*"]}
    budget: {calls: 2, tools: {refund_payment: 1}}
    rate_limit: {per_minute: 600}
  - name: minted-cap
    match: {agents: ["cap-*"]}
    session: {max_per_agent: 2}
  - name: minted-strict
    match: {agents: ["strict-*"]}
    session: {require: minted}
    budget: {calls: 3}
"""
SESSION_FIELDS = {"id", "agent", "kind", "protocol", "created", "last_used", "calls_used"}
# Policy names and limits a client must never be told (errors.md 2).
POLICY_SECRETS = ("minted-wide", "minted-tight", "minted-cap", "minted-strict", "*_admin")

# The upstream's tools the "wide" policy lets its agents call (tests/upstreams/mcp_server.py).
WIDE_TOOLS = {"echo", "add", "lookup_customer", "refund_payment"}


def fresh(prefix: str) -> str:
    """A new agent id under `prefix` (the policy selects by prefix)."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


# --- what a denial must look like ------------------------------------------------------------


def check_info(
    info: Mapping[str, Any], reason: str, *, session: str | None, method: str | None
) -> None:
    assert set(info) == {"@type", "reason", "domain", "metadata"}, info
    assert (info["@type"], info["reason"], info["domain"]) == (ERROR_INFO, reason, DOMAIN), info
    metadata = info["metadata"]
    assert set(metadata) <= METADATA_KEYS, metadata
    if session is not None and "sessionId" in metadata:
        assert metadata["sessionId"] == session, (metadata, session)
    if method is not None:
        assert metadata.get("method", method) == method, (metadata, method)
    # sessionId and tool are the caller's own values: anything else must not tell the policy.
    shown = [v for k, v in metadata.items() if k not in ("sessionId", "tool")]
    text = " ".join(str(v) for v in shown)
    for secret in POLICY_SECRETS:
        assert secret not in text, (secret, metadata)


def check_details(details: list[Any], reason: str, response: httpx.Response) -> Mapping[str, Any]:
    """ErrorInfo first; RetryInfo and `Retry-After` exactly when rate limited."""
    if reason == "SESSION_RATE_LIMITED":
        assert len(details) == 2, details
        assert details[1]["@type"] == RETRY_INFO, details
        delay = details[1]["retryDelay"]
        assert delay.endswith("s"), delay
        assert int(delay[:-1]) > 0, delay
        assert response.headers.get("retry-after") == str(math.ceil(int(delay[:-1])))
    else:
        assert len(details) == 1, details
        assert "retry-after" not in response.headers, response.headers
    info: Mapping[str, Any] = details[0]
    return info


def check_jsonrpc_denial(
    response: httpx.Response, sent: Mapping[str, Any], reason: str, *, session: str | None
) -> Mapping[str, Any]:
    """A proxy denial on a JSON-RPC binding: HTTP 200 (minted and windows: never 404)."""
    assert response.status_code == 200, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = response.json()
    assert set(body) == {"jsonrpc", "id", "error"}, body
    assert (body["jsonrpc"], body["id"]) == ("2.0", sent["id"]), body
    error = body["error"]
    message, code, _, _ = REASONS[reason]
    assert set(error) == {"code", "message", "data"}, error
    assert (error["code"], error["message"]) == (code, message), error
    assert isinstance(error["data"], list), error
    info = check_details(error["data"], reason, response)
    check_info(info, reason, session=session, method=sent["method"])
    if "tool" in info["metadata"]:
        assert info["metadata"]["tool"] == sent["params"]["name"], info
    for secret in POLICY_SECRETS:
        assert secret not in response.text, (secret, response.text)
    return info


def check_aip193(response: httpx.Response, reason: str) -> Mapping[str, Any]:
    """A proxy denial in the AIP-193 envelope (A2A REST, admin API)."""
    _, _, status, code = REASONS[reason]
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith(("application/json", "application/a2a+json"))
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"code", "status", "message", "details"}, error
    assert (error["code"], error["status"], error["message"]) == (status, code, REASONS[reason][0])
    info = check_details(error["details"], reason, response)
    assert (info["@type"], info["reason"], info["domain"]) == (ERROR_INFO, reason, DOMAIN), info
    return info


def check_sdk_error(exc: MCPError, reason: str, session: str | None) -> None:
    """A denial as the official MCP client surfaces it."""
    message, code, _, _ = REASONS[reason]
    assert (exc.code, exc.message) == (code, message), (exc.code, exc.message, exc.data)
    assert isinstance(exc.data, list), exc.data
    assert exc.data[0]["reason"] == reason, exc.data
    check_info(exc.data[0], reason, session=session, method=None)


# --- the admin API ---------------------------------------------------------------------------


@dataclass
class Admin:
    proxy: Proxy

    async def mint(self, body: Any) -> httpx.Response:
        async with httpx.AsyncClient(timeout=10.0) as client:
            if isinstance(body, bytes):
                return await client.post(
                    self.proxy.admin_url + "/sessions",
                    content=body,
                    headers={"content-type": "application/json"},
                )
            return await client.post(self.proxy.admin_url + "/sessions", json=body)

    async def minted(self, agent: str, **grant: Any) -> str:
        """A new minted session's id (the mint must succeed)."""
        response = await self.mint({"agent": agent, **grant})
        assert response.status_code == 201, (response.status_code, response.text)
        sid = response.json()["id"]
        assert isinstance(sid, str), sid
        assert sid.startswith(MINTED_PREFIX), sid
        return sid

    async def close(self, sid: str) -> httpx.Response:
        async with httpx.AsyncClient(timeout=10.0) as client:
            return await client.delete(f"{self.proxy.admin_url}/sessions/{sid}")

    async def sessions(self) -> dict[str, dict[str, Any]]:
        async with httpx.AsyncClient(timeout=10.0) as client:
            response = await client.get(self.proxy.admin_url + "/sessions")
        assert response.status_code == 200, response.text
        body = response.json()
        return {s["id"]: s for s in body["sessions"]}

    async def of_agent(self, agent: str) -> dict[str, dict[str, Any]]:
        return {k: v for k, v in (await self.sessions()).items() if v["agent"] == agent}


# --- raw MCP 2026-07-28 (stateless: no initialize, routing headers, per-request _meta) -------

META = {
    "io.modelcontextprotocol/protocolVersion": MODERN,
    "io.modelcontextprotocol/clientCapabilities": {},
    "io.modelcontextprotocol/clientInfo": {"name": "warden-minted-e2e", "version": "0"},
}


@dataclass
class Reply:
    sent: dict[str, Any]
    session: str | None
    response: httpx.Response

    def result(self) -> dict[str, Any]:
        response = self.response
        assert response.status_code == 200, (response.status_code, response.text)
        body = response.json()
        assert "result" in body, body
        assert body["id"] == self.sent["id"], body
        result: dict[str, Any] = body["result"]
        return result

    def tool_text(self) -> str:
        result = self.result()
        assert result.get("isError") is not True, result
        return str(result["content"][0]["text"])

    def denied(self, reason: str) -> Mapping[str, Any]:
        return check_jsonrpc_denial(self.response, self.sent, reason, session=self.session)


@dataclass
class Modern:
    """JSON-RPC over plain HTTP to the proxy's MCP endpoint, MCP 2026-07-28, as one agent."""

    http: httpx.AsyncClient
    endpoint: str
    agent: str | None
    session: str | None = None  # the Warden-Session header, when set
    capabilities: dict[str, Any] = field(default_factory=dict)  # the client's, per request
    marker: str = field(default_factory=lambda: uuid.uuid4().hex)
    _ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def headers(self, method: str, name: str | None) -> dict[str, str]:
        headers = {
            "accept": ACCEPT,
            "mcp-protocol-version": MODERN,
            "mcp-method": method,
            MARKER: self.marker,
        }
        if name is not None:
            headers["mcp-name"] = name
        if self.agent is not None:
            headers[AGENT_HEADER] = self.agent
        if self.session is not None:
            headers[MINTED_HEADER] = self.session
        return headers

    async def request(self, method: str, params: dict[str, Any] | None = None) -> Reply:
        meta = {**META, "io.modelcontextprotocol/clientCapabilities": self.capabilities}
        params = {**(params or {}), "_meta": meta}
        sent = {"jsonrpc": "2.0", "id": next(self._ids), "method": method, "params": params}
        name = params.get("name") if method == "tools/call" else None
        response = await self.http.post(
            self.endpoint, json=sent, headers=self.headers(method, name)
        )
        return Reply(sent, self.session, response)

    async def call(self, tool: str, **arguments: Any) -> Reply:
        return await self.request("tools/call", {"name": tool, "arguments": arguments})

    async def echo(self, text: str = "hi") -> Reply:
        return await self.call("echo", text=text)


# --- the proxies under test -----------------------------------------------------------------


@dataclass
class Target:
    proxy: Proxy
    seen: HeaderRecorder

    @property
    def admin(self) -> Admin:
        return Admin(self.proxy)

    @property
    def endpoint(self) -> str:
        return self.proxy.url + MCP_PATH

    def seen_by(self, marker: str) -> list[SeenRequest]:
        return [r for r in self.seen.requests() if r.headers.get(MARKER) == marker]


@pytest.fixture(scope="module")
def policy_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("minted") / "minted.yaml"
    path.write_text(POLICY)
    return path


@pytest.fixture(scope="module")
def warden(
    run_proxy_module: RunProxy, mcp_upstream: str, mcp_upstream_seen: HeaderRecorder, policy_path
) -> Target:
    return Target(run_proxy_module(mcp_upstream, "--policy", str(policy_path)), mcp_upstream_seen)


@pytest.fixture(scope="module")
def a2a_warden(
    run_proxy_module: RunProxy, a2a_upstream: str, a2a_upstream_seen: HeaderRecorder, policy_path
) -> Target:
    return Target(run_proxy_module(a2a_upstream, "--policy", str(policy_path)), a2a_upstream_seen)


@pytest.fixture(scope="module")
def sse_warden(run_proxy_module: RunProxy, policy_path: Path) -> Iterator[Target]:
    """The proxy in front of an official-SDK MCP 2024-11-05 (HTTP+SSE) server."""
    server = ThreadedServer(lambda _url: HeaderRecorder(mcp_server.build_server().sse_app()))
    server.start()
    try:
        assert isinstance(server.app, HeaderRecorder)
        yield Target(run_proxy_module(server.url, "--policy", str(policy_path)), server.app)
    finally:
        server.stop()


@pytest.fixture
async def web() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=30.0) as client:
        yield client


@asynccontextmanager
async def sdk_client(
    endpoint: str, agent: str, session: str | None, *, mode: str = MODERN
) -> AsyncIterator[tuple[Client, str]]:
    """The official client (`mcp.Client`) with the agent and minted-session headers."""
    marker = uuid.uuid4().hex
    headers = {MARKER: marker, AGENT_HEADER: agent}
    if session is not None:
        headers[MINTED_HEADER] = session
    async with (
        httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30.0)) as http,
        Client(streamable_http_client(endpoint, http_client=http), mode=mode, cache=None) as client,
    ):
        yield client, marker


def text_of(result: Any) -> str:
    assert isinstance(result, mt.CallToolResult), result
    assert result.is_error is not True, result
    block = result.content[0]
    assert isinstance(block, mt.TextContent), block
    return block.text


def initialize_message(request_id: int) -> dict[str, Any]:
    """A 2025-era `initialize` request."""
    return {
        "jsonrpc": "2.0",
        "id": request_id,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": {"name": "warden-minted-e2e", "version": "0"},
        },
    }


def tool_calls(requests: list[SeenRequest]) -> list[SeenRequest]:
    return [
        r for r in requests if r.method == "POST" and r.headers.get("mcp-method") == "tools/call"
    ]


# --- 1. minting --------------------------------------------------------------------------------


async def test_mint_answers_201_and_lists_the_session_as_minted(warden: Target) -> None:
    agent = fresh("wide")
    before = datetime.now(UTC)
    response = await warden.admin.mint({"agent": agent, "ttl": "30m", "budget": {"calls": 4}})
    assert response.status_code == 201, response.text
    assert response.headers["content-type"].startswith("application/json")
    doc = response.json()
    assert set(doc) == {"id", "agent", "kind", "expires_at"}, doc
    assert (doc["agent"], doc["kind"]) == (agent, "minted")
    assert doc["id"].startswith(MINTED_PREFIX)
    expires = datetime.fromisoformat(doc["expires_at"].replace("Z", "+00:00"))
    assert expires.tzinfo is not None
    assert before + timedelta(minutes=29) <= expires <= datetime.now(UTC) + timedelta(minutes=31), (
        before,
        expires,
    )

    listed = (await warden.admin.sessions())[doc["id"]]
    assert set(listed) == SESSION_FIELDS, listed
    assert (listed["agent"], listed["kind"], listed["calls_used"]) == (agent, "minted", 0)
    # A second mint for the same agent is another session.
    other = await warden.admin.minted(agent)
    assert other != doc["id"]
    assert set(await warden.admin.of_agent(agent)) == {doc["id"], other}


async def test_sessions_list_the_kind_of_every_session(
    warden: Target, web: httpx.AsyncClient
) -> None:
    agent = fresh("wide")
    minted = await warden.admin.minted(agent)
    assert (await Modern(web, warden.endpoint, agent, minted).echo("m")).tool_text() == "m"
    # A 2026-07-28 request without a session: the agent's window.
    assert (await Modern(web, warden.endpoint, agent).echo("w")).tool_text() == "w"
    # A 2025-era initialize: a protocol session (the SDK lists tools before its first call,
    # for the output schema: two counted requests).
    async with sdk_client(warden.endpoint, agent, None, mode="legacy") as (client, _):
        assert text_of(await client.call_tool("echo", {"text": "p"})) == "p"
        mine = await warden.admin.of_agent(agent)
    used = sorted((s["kind"], s["calls_used"]) for s in mine.values())
    assert used == [("minted", 1), ("protocol", 2), ("window", 1)], mine
    assert mine[minted]["kind"] == "minted"


@pytest.mark.parametrize(
    ("body", "why"),
    [
        ({"agent": "wide-x", "colour": "red"}, "unknown key"),
        ({"agent": "wide-x", "ttl": "soon"}, "bad ttl"),
        ({"agent": "wide-x", "ttl": -5}, "negative ttl"),
        ({"agent": "wide-x", "budget": {"calls": 0}}, "calls 0"),
        ({"agent": "wide-x", "budget": {"calls": "3"}}, "calls a string"),
        ({"agent": "wide-x", "budget": {"tools": {"refund_payment": 0}}}, "tool budget 0"),
        ({"agent": "wide-x", "budget": {"calls": 2, "cost": 1}}, "unknown budget key"),
        ({"agent": "wide-x", "rate_limit": {"per_minute": -1}}, "negative rate"),
        ({"agent": "wide-x", "tools": {"allow": "echo"}}, "tools.allow not a list"),
        ({"budget": {"calls": 3}}, "missing agent"),
        ({"agent": ""}, "empty agent"),
        ({"agent": 7}, "agent not a string"),
        (["wide-x"], "not an object"),
        (b"{not json", "not JSON"),
    ],
)
async def test_invalid_mint_bodies_are_400_invalid_argument(
    warden: Target, body: Any, why: str
) -> None:
    before = await warden.admin.sessions()
    response = await warden.admin.mint(body)
    assert response.status_code == 400, (why, response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json")
    doc = response.json()
    assert set(doc) == {"error"}, doc
    error = doc["error"]
    assert set(error) == {"code", "status", "message", "details"}, error
    assert (error["code"], error["status"]) == (400, "INVALID_ARGUMENT"), (why, error)
    [info] = error["details"]
    assert (info["@type"], info["domain"]) == (ERROR_INFO, DOMAIN), info
    assert set(await warden.admin.sessions()) == set(before), why


async def test_minting_is_capped_by_the_agents_policy(
    warden: Target, web: httpx.AsyncClient
) -> None:
    agent = fresh("cap")  # max_per_agent: 2
    first = await warden.admin.minted(agent)
    second = await warden.admin.minted(agent)
    refused = await warden.admin.mint({"agent": agent})
    check_aip193(refused, "TOO_MANY_SESSIONS")
    assert set(await warden.admin.of_agent(agent)) == {first, second}
    # Minted sessions hold places under the same cap as protocol sessions.
    init = initialize_message(1)
    response = await web.post(
        warden.endpoint, json=init, headers={"accept": ACCEPT, AGENT_HEADER: agent}
    )
    check_jsonrpc_denial(response, init, "TOO_MANY_SESSIONS", session=None)
    # An initialize in a minted session needs no place of its own.
    async with sdk_client(warden.endpoint, agent, second, mode="legacy") as (client, _):
        assert text_of(await client.call_tool("echo", {"text": "inside"})) == "inside"
    assert set(await warden.admin.of_agent(agent)) == {first, second}
    # Other agents of the policy have their own places.
    await warden.admin.minted(fresh("cap"))
    # Closing one frees a place.
    assert (await warden.admin.close(first)).status_code == 204
    third = await warden.admin.minted(agent)
    assert set(await warden.admin.of_agent(agent)) == {second, third}
    assert (await Modern(web, warden.endpoint, agent, third).echo("ok")).tool_text() == "ok"


# --- 2. a minted session's life ----------------------------------------------------------------


async def test_mint_use_exhaust_close_with_the_official_client(warden: Target) -> None:
    agent = fresh("wide")  # the policy allows 10 calls; the grant 3
    sid = await warden.admin.minted(agent, ttl="30m", budget={"calls": 4})
    async with sdk_client(warden.endpoint, agent, sid) as (client, marker):
        # Listed first: the SDK would list before the first call anyway (output schemas).
        assert {t.name for t in (await client.list_tools()).tools} == WIDE_TOOLS
        assert text_of(await client.call_tool("echo", {"text": "one"})) == "one"
        assert text_of(await client.call_tool("add", {"a": 1, "b": 2})) == "3"
        assert text_of(await client.call_tool("echo", {"text": "three"})) == "three"
        with pytest.raises(MCPError) as over:
            await client.call_tool("echo", {"text": "four"})
        check_sdk_error(over.value, "SESSION_BUDGET_EXCEEDED", sid)
        listed = (await warden.admin.sessions())[sid]
        assert (listed["agent"], listed["kind"], listed["calls_used"]) == (agent, "minted", 4)

        closed = await warden.admin.close(sid)
        assert closed.status_code == 204, closed.text
        with pytest.raises(MCPError) as gone:
            await client.call_tool("echo", {"text": "after"})
        check_sdk_error(gone.value, "SESSION_CLOSED", sid)
    # The denials never reached the upstream, and neither did the header.
    calls = tool_calls(warden.seen_by(marker))
    assert len(calls) == 3, [r.headers for r in calls]
    assert all(MINTED_HEADER.lower() not in r.headers for r in warden.seen_by(marker))
    assert sid not in await warden.admin.sessions()


async def test_closed_minted_session_is_session_closed_on_the_wire(
    warden: Target, web: httpx.AsyncClient
) -> None:
    agent = fresh("wide")
    sid = await warden.admin.minted(agent)
    raw = Modern(web, warden.endpoint, agent, sid)
    assert (await raw.echo("before")).tool_text() == "before"
    assert (await warden.admin.close(sid)).status_code == 204
    (await raw.echo("after")).denied("SESSION_CLOSED")
    (await raw.request("tools/list")).denied("SESSION_CLOSED")
    assert len(warden.seen_by(raw.marker)) == 1
    again = await warden.admin.close(sid)
    assert again.status_code == 404, again.text


async def test_minted_session_expires_after_its_ttl_or_idle_timeout(
    warden: Target, web: httpx.AsyncClient
) -> None:
    agent = fresh("wide")
    short = Modern(web, warden.endpoint, agent, await warden.admin.minted(agent, ttl="1s"))
    idle = Modern(web, warden.endpoint, agent, await warden.admin.minted(agent, idle_timeout="1s"))
    busy = Modern(web, warden.endpoint, agent, await warden.admin.minted(agent, idle_timeout="1s"))
    for raw in (short, idle, busy):
        assert (await raw.echo("in time")).tool_text() == "in time"
    for _ in range(3):
        await asyncio.sleep(0.45)
        assert (await busy.echo("busy")).tool_text() == "busy"
    (await short.echo("late")).denied("SESSION_EXPIRED")
    (await idle.echo("late")).denied("SESSION_EXPIRED")
    assert (await busy.echo("still")).tool_text() == "still"
    assert len(warden.seen_by(short.marker)) == 1
    assert len(warden.seen_by(idle.marker)) == 1


async def test_concurrent_calls_spend_a_grant_budget_exactly(
    warden: Target, web: httpx.AsyncClient
) -> None:
    agent = fresh("wide")
    sid = await warden.admin.minted(agent, budget={"calls": 5})
    raw = Modern(web, warden.endpoint, agent, sid)
    replies = await asyncio.gather(*(raw.echo(str(n)) for n in range(12)))
    allowed = [r for r in replies if "result" in r.response.json()]
    refused = [r for r in replies if "error" in r.response.json()]
    assert (len(allowed), len(refused)) == (5, 7), [r.response.text for r in replies]
    for reply in refused:
        reply.denied("SESSION_BUDGET_EXCEEDED")
    assert (await warden.admin.sessions())[sid]["calls_used"] == 5
    assert len(tool_calls(warden.seen_by(raw.marker))) == 5


async def test_legacy_era_client_in_a_minted_session(warden: Target) -> None:
    """A 2025-era client (initialize, Mcp-Session-Id) judged in the minted session."""
    agent = fresh("wide")
    sid = await warden.admin.minted(agent, budget={"calls": 3})
    async with sdk_client(warden.endpoint, agent, sid, mode="legacy") as (client, marker):
        assert client.protocol_version == "2025-11-25"
        assert len((await client.list_tools()).tools) == len(WIDE_TOOLS)
        assert text_of(await client.call_tool("echo", {"text": "a"})) == "a"
        assert text_of(await client.call_tool("echo", {"text": "b"})) == "b"
        with pytest.raises(MCPError) as over:
            await client.call_tool("echo", {"text": "c"})
        check_sdk_error(over.value, "SESSION_BUDGET_EXCEEDED", sid)
        mine = await warden.admin.of_agent(agent)
        assert mine[sid]["calls_used"] == 3, mine
        # Judged in the minted session: no protocol session counted those calls.
        assert all(s["calls_used"] == 0 for k, s in mine.items() if k != sid), mine
        assert (await warden.admin.close(sid)).status_code == 204
        # Gone minted sessions are HTTP 200 with -31062, even beside an Mcp-Session-Id.
        with pytest.raises(MCPError) as gone:
            await client.call_tool("echo", {"text": "d"})
        check_sdk_error(gone.value, "SESSION_CLOSED", sid)
    seen = warden.seen_by(marker)
    assert seen, "the legacy client reached the upstream"
    assert all(MINTED_HEADER.lower() not in r.headers for r in seen), [r.headers for r in seen]
    # initialize, notifications/initialized, tools/list, two calls.
    assert len([r for r in seen if r.method == "POST"]) == 5


async def test_http_sse_era_client_in_a_minted_session(sse_warden: Target) -> None:
    """MCP 2024-11-05: the GET stream and the message POSTs carry Warden-Session; denials
    arrive where that transport delivers answers, on the stream."""
    agent = fresh("wide")
    sid = await sse_warden.admin.minted(agent, budget={"calls": 3}, tools={"deny": ["add"]})
    marker = uuid.uuid4().hex
    headers = {MARKER: marker, AGENT_HEADER: agent, MINTED_HEADER: sid}
    transport = sse_client(sse_warden.proxy.url + "/sse", headers=headers)
    async with Client(transport, mode="legacy", cache=None) as client:
        listed = await client.list_tools()  # 1
        assert {t.name for t in listed.tools} == WIDE_TOOLS - {"add"}
        assert text_of(await client.call_tool("echo", {"text": "one"})) == "one"  # 2
        with pytest.raises(MCPError) as denied:
            await client.call_tool("add", {"a": 1, "b": 2})
        check_sdk_error(denied.value, "TOOL_NOT_AUTHORIZED", sid)
        assert text_of(await client.call_tool("echo", {"text": "three"})) == "three"  # 3
        with pytest.raises(MCPError) as over:
            await client.call_tool("echo", {"text": "four"})
        check_sdk_error(over.value, "SESSION_BUDGET_EXCEEDED", sid)
        assert (await sse_warden.admin.sessions())[sid]["calls_used"] == 3
    seen = sse_warden.seen_by(marker)
    assert any(r.method == "GET" for r in seen), [(r.method, r.path) for r in seen]
    assert all(MINTED_HEADER.lower() not in r.headers for r in seen), [r.headers for r in seen]


# --- 3. narrowing -----------------------------------------------------------------------------


async def test_grant_budget_smaller_than_the_policy_wins(
    warden: Target, web: httpx.AsyncClient
) -> None:
    agent = fresh("wide")  # policy: 10 calls, refund_payment 3
    sid = await warden.admin.minted(agent, budget={"calls": 5, "tools": {"refund_payment": 1}})
    raw = Modern(web, warden.endpoint, agent, sid)
    assert (await raw.call("refund_payment", payment_id="p1", amount=1.0)).tool_text()
    (await raw.call("refund_payment", payment_id="p2", amount=1.0)).denied(
        "SESSION_BUDGET_EXCEEDED"
    )
    for n in range(4):
        assert (await raw.echo(str(n))).tool_text() == str(n)
    (await raw.echo("six")).denied("SESSION_BUDGET_EXCEEDED")
    assert (await warden.admin.sessions())[sid]["calls_used"] == 5
    assert len(tool_calls(warden.seen_by(raw.marker))) == 5


async def test_grant_tool_budget_for_a_tool_the_policy_does_not_budget(
    warden: Target, web: httpx.AsyncClient
) -> None:
    agent = fresh("wide")
    sid = await warden.admin.minted(agent, budget={"tools": {"echo": 1}})
    raw = Modern(web, warden.endpoint, agent, sid)
    assert (await raw.echo("once")).tool_text() == "once"
    (await raw.echo("twice")).denied("SESSION_BUDGET_EXCEEDED")
    assert (await raw.call("add", a=1, b=1)).tool_text() == "2"


async def test_grant_cannot_widen_the_policy_budget(warden: Target, web: httpx.AsyncClient) -> None:
    agent = fresh("tight")  # policy: 2 calls, refund_payment 1
    sid = await warden.admin.minted(agent, budget={"calls": 50, "tools": {"refund_payment": 5}})
    raw = Modern(web, warden.endpoint, agent, sid)
    assert (await raw.call("refund_payment", payment_id="p1", amount=1.0)).tool_text()
    (await raw.call("refund_payment", payment_id="p2", amount=1.0)).denied(
        "SESSION_BUDGET_EXCEEDED"
    )
    assert (await raw.echo("two")).tool_text() == "two"
    (await raw.echo("three")).denied("SESSION_BUDGET_EXCEEDED")
    assert (await warden.admin.sessions())[sid]["calls_used"] == 2


async def test_grant_rate_limit_narrows(warden: Target, web: httpx.AsyncClient) -> None:
    agent = fresh("tight")  # policy: 600 per minute
    sid = await warden.admin.minted(agent, rate_limit={"per_minute": 1})
    raw = Modern(web, warden.endpoint, agent, sid)
    assert (await raw.echo("one")).tool_text() == "one"
    (await raw.echo("two")).denied("SESSION_RATE_LIMITED")


async def test_grant_cannot_widen_the_policy_ttl_or_rate(warden: Target) -> None:
    agent = fresh("tight")
    response = await warden.admin.mint(
        {"agent": agent, "ttl": "9999h", "rate_limit": {"per_minute": 100000}}
    )
    assert response.status_code == 201, response.text
    expires = datetime.fromisoformat(response.json()["expires_at"].replace("Z", "+00:00"))
    # The built-in ttl is 24h: the grant's longer one does not apply.
    assert expires <= datetime.now(UTC) + timedelta(hours=24, minutes=1), expires


async def test_a_tool_the_grant_does_not_allow_is_refused(
    warden: Target, web: httpx.AsyncClient
) -> None:
    agent = fresh("wide")  # the policy allows echo, add, lookup_*, refund_payment
    sid = await warden.admin.minted(agent, tools={"allow": ["echo", "refund_*"]})
    raw = Modern(web, warden.endpoint, agent, sid)
    assert (await raw.echo("yes")).tool_text() == "yes"
    (await raw.call("lookup_customer", customer_id="c1")).denied("TOOL_NOT_AUTHORIZED")
    (await raw.call("add", a=1, b=2)).denied("TOOL_NOT_AUTHORIZED")
    # A grant cannot allow what the policy denies or does not allow.
    (await raw.call("delete_admin", user="u")).denied("TOOL_NOT_AUTHORIZED")
    # Denied calls are not counted.
    assert (await warden.admin.sessions())[sid]["calls_used"] == 1
    assert len(tool_calls(warden.seen_by(raw.marker))) == 1


async def test_a_grant_that_allows_everything_stays_within_the_policy(
    warden: Target, web: httpx.AsyncClient
) -> None:
    agent = fresh("wide")
    sid = await warden.admin.minted(agent, tools={"allow": ["*", "delete_admin"]})
    raw = Modern(web, warden.endpoint, agent, sid)
    (await raw.call("delete_admin", user="u")).denied("TOOL_NOT_AUTHORIZED")
    (await raw.call("fail", reason="r")).denied("TOOL_NOT_AUTHORIZED")
    listed = {t["name"] for t in (await raw.request("tools/list")).result()["tools"]}
    assert listed == WIDE_TOOLS


async def test_grant_deny_wins(warden: Target, web: httpx.AsyncClient) -> None:
    agent = fresh("wide")
    sid = await warden.admin.minted(agent, tools={"deny": ["refund_*"]})
    raw = Modern(web, warden.endpoint, agent, sid)
    (await raw.call("refund_payment", payment_id="p", amount=1.0)).denied("TOOL_NOT_AUTHORIZED")
    assert (await raw.call("add", a=2, b=3)).tool_text() == "5"


async def test_tools_list_is_filtered_by_the_grant(warden: Target, web: httpx.AsyncClient) -> None:
    agent = fresh("wide")
    plain = await warden.admin.minted(agent)
    narrowed = await warden.admin.minted(agent, tools={"allow": ["echo", "lookup_*"]})
    by_policy = (await Modern(web, warden.endpoint, agent, plain).request("tools/list")).result()
    assert {t["name"] for t in by_policy["tools"]} == WIDE_TOOLS
    by_grant = (await Modern(web, warden.endpoint, agent, narrowed).request("tools/list")).result()
    assert {t["name"] for t in by_grant["tools"]} == {"echo", "lookup_customer"}
    assert by_grant.get("cacheScope", "private") == "private", by_grant

    # The official client sees the same.
    async with sdk_client(warden.endpoint, agent, narrowed) as (client, _):
        listed = await client.list_tools()
    assert sorted(t.name for t in listed.tools) == ["echo", "lookup_customer"]


async def test_tools_list_is_filtered_for_a_legacy_client_in_a_minted_session(
    warden: Target,
) -> None:
    agent = fresh("wide")
    sid = await warden.admin.minted(agent, tools={"allow": ["add"]})
    async with sdk_client(warden.endpoint, agent, sid, mode="legacy") as (client, _):
        listed = await client.list_tools()
    assert [t.name for t in listed.tools] == ["add"]


async def test_grant_methods_narrow(warden: Target, web: httpx.AsyncClient) -> None:
    agent = fresh("wide")
    sid = await warden.admin.minted(agent, methods={"deny": ["tools/list"]})
    raw = Modern(web, warden.endpoint, agent, sid)
    (await raw.request("tools/list")).denied("METHOD_NOT_AUTHORIZED")
    assert (await raw.echo("still")).tool_text() == "still"
    only = await warden.admin.minted(agent, methods={"allow": ["tools/list"]})
    raw_only = Modern(web, warden.endpoint, agent, only)
    assert (await raw_only.request("tools/list")).result()["tools"]
    (await raw_only.echo("no")).denied("METHOD_NOT_AUTHORIZED")


# --- 4. whose session, which session -----------------------------------------------------------


async def test_unknown_minted_id_is_session_not_found(
    warden: Target, web: httpx.AsyncClient
) -> None:
    agent = fresh("wide")
    for bogus in (MINTED_PREFIX + uuid.uuid4().hex, uuid.uuid4().hex, "x"):
        raw = Modern(web, warden.endpoint, agent, bogus)
        (await raw.echo()).denied("SESSION_NOT_FOUND")
        (await raw.request("tools/list")).denied("SESSION_NOT_FOUND")
        assert warden.seen_by(raw.marker) == []
    # Through the official client too.
    async with sdk_client(warden.endpoint, agent, MINTED_PREFIX + "nope") as (client, marker):
        with pytest.raises(MCPError) as caught:
            await client.call_tool("echo", {"text": "x"})
    check_sdk_error(caught.value, "SESSION_NOT_FOUND", None)
    assert warden.seen_by(marker) == []
    # Nothing was opened for the agent.
    assert await warden.admin.of_agent(agent) == {}


async def test_a_protocol_session_id_is_not_a_minted_session(
    warden: Target, web: httpx.AsyncClient
) -> None:
    agent = fresh("wide")
    init = initialize_message(1)
    response = await web.post(
        warden.endpoint, json=init, headers={"accept": ACCEPT, AGENT_HEADER: agent}
    )
    assert response.status_code == 200, response.text
    protocol_id = response.headers["mcp-session-id"]
    raw = Modern(web, warden.endpoint, agent, protocol_id)
    (await raw.echo()).denied("SESSION_NOT_FOUND")


async def test_another_agents_minted_session_is_agent_mismatch(
    warden: Target, web: httpx.AsyncClient
) -> None:
    owner, thief = fresh("wide"), fresh("wide")
    sid = await warden.admin.minted(owner, budget={"calls": 2})
    stolen = Modern(web, warden.endpoint, thief, sid)
    (await stolen.echo("mine now")).denied("AGENT_MISMATCH")
    (await stolen.request("tools/list")).denied("AGENT_MISMATCH")
    anonymous = Modern(web, warden.endpoint, None, sid)
    (await anonymous.echo()).denied("AGENT_MISMATCH")
    assert warden.seen_by(stolen.marker) == []
    assert warden.seen_by(anonymous.marker) == []
    # The owner's budget is untouched.
    assert (await warden.admin.sessions())[sid]["calls_used"] == 0
    own = Modern(web, warden.endpoint, owner, sid)
    assert (await own.echo("a")).tool_text() == "a"
    assert (await own.echo("b")).tool_text() == "b"
    (await own.echo("c")).denied("SESSION_BUDGET_EXCEEDED")
    # Through the official client.
    async with sdk_client(warden.endpoint, thief, sid) as (client, _):
        with pytest.raises(MCPError) as caught:
            await client.call_tool("echo", {"text": "x"})
    check_sdk_error(caught.value, "AGENT_MISMATCH", sid)
    # The reference order: agent before closed.
    assert (await warden.admin.close(sid)).status_code == 204
    (await stolen.echo("after close")).denied("AGENT_MISMATCH")
    (await own.echo("after close")).denied("SESSION_CLOSED")


async def test_warden_session_never_reaches_the_upstream(
    warden: Target, web: httpx.AsyncClient
) -> None:
    agent = fresh("wide")
    sid = await warden.admin.minted(agent)
    raw = Modern(web, warden.endpoint, agent, sid)
    assert (await raw.echo("hidden")).tool_text() == "hidden"
    assert (await raw.request("tools/list")).result()["tools"]
    # Header names are case-insensitive: any spelling is the proxy's, and stripped.
    headers = {k: v for k, v in raw.headers("tools/call", "echo").items() if k != MINTED_HEADER}
    sent = {
        "jsonrpc": "2.0",
        "id": 99,
        "method": "tools/call",
        "params": {"name": "echo", "arguments": {"text": "shouted"}, "_meta": META},
    }
    response = await web.post(
        warden.endpoint, json=sent, headers={**headers, "WARDEN-SESSION": sid}
    )
    assert Reply(sent, sid, response).tool_text() == "shouted"
    assert (await warden.admin.sessions())[sid]["calls_used"] == 3
    seen = warden.seen_by(raw.marker)
    assert len(seen) == 3
    for request in seen:
        assert not any(name.lower() == "warden-session" for name in request.headers), request
        assert sid not in str(request.headers), request.headers
        assert request.headers[AGENT_HEADER] == agent


# --- 5. require: minted ------------------------------------------------------------------------


async def test_require_minted_refuses_requests_without_a_minted_session(
    warden: Target, web: httpx.AsyncClient
) -> None:
    agent = fresh("strict")  # session: {require: minted}, budget 3
    raw = Modern(web, warden.endpoint, agent)
    (await raw.echo()).denied("SESSION_NOT_FOUND")
    (await raw.request("tools/list")).denied("SESSION_NOT_FOUND")
    init = initialize_message(7)
    response = await web.post(
        warden.endpoint,
        json=init,
        headers={"accept": ACCEPT, AGENT_HEADER: agent, MARKER: raw.marker},
    )
    check_jsonrpc_denial(response, init, "SESSION_NOT_FOUND", session=None)
    assert warden.seen_by(raw.marker) == []
    assert await warden.admin.of_agent(agent) == {}
    # Notifications are never judged in a session: not refused.
    notification = await web.post(
        warden.endpoint,
        json={
            "jsonrpc": "2.0",
            "method": "notifications/cancelled",
            "params": {"requestId": 1, "_meta": META},
        },
        headers=raw.headers("notifications/cancelled", None),
    )
    assert notification.status_code == 202, (notification.status_code, notification.text)

    sid = await warden.admin.minted(agent)
    minted = Modern(web, warden.endpoint, agent, sid)
    for n in range(3):
        assert (await minted.echo(str(n))).tool_text() == str(n)
    (await minted.echo("four")).denied("SESSION_BUDGET_EXCEEDED")  # the policy's budget
    assert (await warden.admin.sessions())[sid]["calls_used"] == 3


async def test_require_minted_through_the_official_client(warden: Target) -> None:
    agent = fresh("strict")
    async with sdk_client(warden.endpoint, agent, None) as (client, _):
        with pytest.raises(MCPError) as caught:
            await client.call_tool("echo", {"text": "x"})
    check_sdk_error(caught.value, "SESSION_NOT_FOUND", None)
    sid = await warden.admin.minted(agent)
    async with sdk_client(warden.endpoint, agent, sid, mode="legacy") as (client, _):
        assert text_of(await client.call_tool("echo", {"text": "in"})) == "in"
    assert (await warden.admin.sessions())[sid]["calls_used"] == 2  # tools/list, tools/call


# --- 6. A2A -------------------------------------------------------------------------------------


def a2a_message(text: str, *, context: str | None = None) -> dict[str, Any]:
    message: dict[str, Any] = {
        "messageId": uuid.uuid4().hex,
        "role": "ROLE_USER",
        "parts": [{"text": text}],
    }
    if context is not None:
        message["contextId"] = context
    return message


@dataclass
class RawA2a:
    http: httpx.AsyncClient
    base: str
    agent: str
    session: str | None
    marker: str = field(default_factory=lambda: uuid.uuid4().hex)
    _ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def headers(self) -> dict[str, str]:
        headers = {"A2A-Version": "1.0", MARKER: self.marker, AGENT_HEADER: self.agent}
        if self.session is not None:
            headers[MINTED_HEADER] = self.session
        return headers

    async def rpc(self, method: str, params: dict[str, Any]) -> Reply:
        sent = {"jsonrpc": "2.0", "id": next(self._ids), "method": method, "params": params}
        response = await self.http.post(self.base + JSONRPC_PATH, json=sent, headers=self.headers())
        return Reply(sent, self.session, response)

    async def send(self, text: str, *, context: str | None = None) -> Reply:
        return await self.rpc("SendMessage", {"message": a2a_message(text, context=context)})

    async def rest_get_task(self, task: str) -> httpx.Response:
        return await self.http.get(f"{self.base}{REST_PREFIX}/tasks/{task}", headers=self.headers())

    async def rest_send(self, text: str) -> httpx.Response:
        return await self.http.post(
            f"{self.base}{REST_PREFIX}/message:send",
            json={"message": a2a_message(text)},
            headers=self.headers(),
        )


def artifact_texts(task: Mapping[str, Any]) -> list[str]:
    return [p["text"] for a in task.get("artifacts", []) for p in a["parts"] if "text" in p]


async def test_a2a_requests_are_counted_in_the_minted_session(
    a2a_warden: Target, web: httpx.AsyncClient
) -> None:
    agent = fresh("wide")
    sid = await a2a_warden.admin.minted(agent, budget={"calls": 3})
    raw = RawA2a(web, a2a_warden.proxy.url, agent, sid)
    first = (await raw.send("one")).result()["task"]
    assert artifact_texts(first) == [echo_text("one")]
    listed = (await a2a_warden.admin.sessions())[sid]
    assert (listed["kind"], listed["calls_used"]) == ("minted", 1)
    # A new conversation in the same minted session: still one session for the agent.
    second = (await raw.send("two")).result()["task"]
    assert second["contextId"] != first["contextId"]
    fetched = await raw.rest_get_task(first["id"])
    assert fetched.status_code == 200, fetched.text
    assert fetched.json()["id"] == first["id"]
    mine = await a2a_warden.admin.of_agent(agent)
    assert list(mine) == [sid], mine
    assert mine[sid]["calls_used"] == 3
    # The budget is the grant's, on both bindings.
    (await raw.send("four", context=first["contextId"])).denied("SESSION_BUDGET_EXCEEDED")
    check_aip193(await raw.rest_get_task(first["id"]), "SESSION_BUDGET_EXCEEDED")
    check_aip193(await raw.rest_send("five"), "SESSION_BUDGET_EXCEEDED")
    seen = [r for r in a2a_warden.seen_by(raw.marker) if r.path != "/.well-known/agent-card.json"]
    assert len(seen) == 3, [(r.method, r.path) for r in seen]
    assert all(MINTED_HEADER.lower() not in r.headers for r in seen), [r.headers for r in seen]

    assert (await a2a_warden.admin.close(sid)).status_code == 204
    (await raw.send("six")).denied("SESSION_CLOSED")
    check_aip193(await raw.rest_send("seven"), "SESSION_CLOSED")


async def test_a2a_streaming_in_a_minted_session(
    a2a_warden: Target, web: httpx.AsyncClient
) -> None:
    agent = fresh("wide")
    sid = await a2a_warden.admin.minted(agent, budget={"calls": 1})
    raw = RawA2a(web, a2a_warden.proxy.url, agent, sid)
    sent = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "SendStreamingMessage",
        "params": {"message": a2a_message("stream 2")},
    }
    response = await web.post(a2a_warden.proxy.url + JSONRPC_PATH, json=sent, headers=raw.headers())
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream"), response.headers
    assert response.headers.get("x-accel-buffering") == "no", response.headers
    assert "chunk 2/2" in response.text, response.text
    assert '"error"' not in response.text, response.text
    assert (await a2a_warden.admin.sessions())[sid]["calls_used"] == 1
    (await raw.send("over")).denied("SESSION_BUDGET_EXCEEDED")
    # Without the header the agent's conversations are protocol sessions, as before.
    plain = RawA2a(web, a2a_warden.proxy.url, agent, None)
    context = (await plain.send("plain")).result()["task"]["contextId"]
    listed = (await a2a_warden.admin.sessions())[context]
    assert (listed["kind"], listed["calls_used"]) == ("protocol", 1)


async def test_a2a_minted_session_errors(a2a_warden: Target, web: httpx.AsyncClient) -> None:
    owner, other = fresh("wide"), fresh("wide")
    sid = await a2a_warden.admin.minted(owner, methods={"deny": ["GetTask"]})
    unknown = RawA2a(web, a2a_warden.proxy.url, owner, MINTED_PREFIX + uuid.uuid4().hex)
    (await unknown.send("who")).denied("SESSION_NOT_FOUND")
    check_aip193(await unknown.rest_send("who"), "SESSION_NOT_FOUND")
    thief = RawA2a(web, a2a_warden.proxy.url, other, sid)
    (await thief.send("steal")).denied("AGENT_MISMATCH")
    check_aip193(await thief.rest_send("steal"), "AGENT_MISMATCH")
    assert a2a_warden.seen_by(unknown.marker) == []
    assert a2a_warden.seen_by(thief.marker) == []
    # The grant's method rules, on both bindings.
    raw = RawA2a(web, a2a_warden.proxy.url, owner, sid)
    task = (await raw.send("hello")).result()["task"]
    (await raw.rpc("GetTask", {"id": task["id"]})).denied("METHOD_NOT_AUTHORIZED")
    check_aip193(await raw.rest_get_task(task["id"]), "METHOD_NOT_AUTHORIZED")
    assert (await a2a_warden.admin.sessions())[sid]["calls_used"] == 1


async def test_a2a_require_minted(a2a_warden: Target, web: httpx.AsyncClient) -> None:
    agent = fresh("strict")
    raw = RawA2a(web, a2a_warden.proxy.url, agent, None)
    (await raw.send("no session")).denied("SESSION_NOT_FOUND")
    check_aip193(await raw.rest_send("no session"), "SESSION_NOT_FOUND")
    assert a2a_warden.seen_by(raw.marker) == []
    # The agent card needs no session.
    card = await web.get(a2a_warden.proxy.url + "/.well-known/agent-card.json")
    assert card.status_code == 200, card.text
    raw.session = await a2a_warden.admin.minted(agent)
    assert artifact_texts((await raw.send("with")).result()["task"]) == [echo_text("with")]
