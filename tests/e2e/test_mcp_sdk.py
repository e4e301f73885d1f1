"""The official MCP client through the proxy to official-SDK servers, stateful and stateless."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import httpx2
import mcp.types as mt
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS, LATEST_HANDSHAKE_VERSION

from tests.conftest import Proxy, RunProxy
from tests.upstreams.mcp_server import MCP_PATH, TOOL_NAMES
from tests.upstreams.serve import HeaderRecorder, SeenRequest

pytestmark = pytest.mark.timeout(60)

# Each test tags its requests so it can pick them out of the shared upstream's record.
MARKER = "x-warden-test"
TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}")


@dataclass
class Target:
    """One proxy in front of one upstream, and what that upstream received."""

    proxy: Proxy
    upstream_url: str
    seen: HeaderRecorder
    stateful: bool

    @property
    def endpoint(self) -> str:
        return self.proxy.url + MCP_PATH

    def requests(self, marker: str, method: str | None = None) -> list[SeenRequest]:
        return [r for r in self.seen.requests(method) if r.headers.get(MARKER) == marker]


@pytest.fixture(scope="module")
def stateful(
    run_proxy_module: RunProxy, mcp_upstream: str, mcp_upstream_seen: HeaderRecorder
) -> Target:
    return Target(run_proxy_module(mcp_upstream), mcp_upstream, mcp_upstream_seen, stateful=True)


@pytest.fixture(scope="module")
def stateless(
    run_proxy_module: RunProxy,
    mcp_stateless_upstream: str,
    mcp_stateless_upstream_seen: HeaderRecorder,
) -> Target:
    proxy = run_proxy_module(mcp_stateless_upstream)
    return Target(proxy, mcp_stateless_upstream, mcp_stateless_upstream_seen, stateful=False)


@pytest.fixture(params=["stateful", "stateless"])
def target(request: pytest.FixtureRequest) -> Target:
    value = request.getfixturevalue(request.param)
    assert isinstance(value, Target)
    return value


@dataclass
class Observed:
    """What the client saw on the wire: (method, status, headers) of every response."""

    marker: str
    responses: list[tuple[str, int, httpx2.Headers]] = field(default_factory=list)
    logs: list[Any] = field(default_factory=list)

    def session_ids(self) -> set[str]:
        return {h["mcp-session-id"] for _, _, h in self.responses if "mcp-session-id" in h}

    def statuses(self, method: str) -> list[int]:
        return [status for m, status, _ in self.responses if m == method]


@asynccontextmanager
async def mcp_client(url: str) -> AsyncIterator[tuple[ClientSession, Observed]]:
    """An initialized official client session; on exit the client sends its DELETE."""
    observed = Observed(uuid.uuid4().hex)

    async def on_response(response: httpx2.Response) -> None:
        observed.responses.append((response.request.method, response.status_code, response.headers))

    async def on_log(params: mt.LoggingMessageNotificationParams) -> None:
        observed.logs.append(params.data)

    http = httpx2.AsyncClient(
        headers={MARKER: observed.marker},
        timeout=httpx2.Timeout(30.0),
        event_hooks={"response": [on_response]},
    )
    async with (
        http,
        streamable_http_client(url, http_client=http) as (read, write),
        ClientSession(read, write, logging_callback=on_log) as session,
    ):
        await session.initialize()
        yield session, observed


def text_of(result: Any) -> str:
    assert isinstance(result, mt.CallToolResult), result
    assert len(result.content) == 1, result.content
    block = result.content[0]
    assert isinstance(block, mt.TextContent), block
    return block.text


async def test_initialize_and_list_tools(target: Target) -> None:
    async with mcp_client(target.endpoint) as (session, observed):
        init = session.initialize_result
        assert init is not None
        tools = await session.list_tools()
    assert init.server_info.name == "warden-test-upstream"
    assert init.protocol_version in HANDSHAKE_PROTOCOL_VERSIONS
    assert sorted(t.name for t in tools.tools) == sorted(TOOL_NAMES)
    add = next(t for t in tools.tools if t.name == "add")
    assert set(add.input_schema["properties"]) == {"a", "b"}
    # initialize, notifications/initialized and tools/list all reached the upstream.
    assert len(target.requests(observed.marker, "POST")) >= 3


async def test_call_tool(target: Target) -> None:
    async with mcp_client(target.endpoint) as (session, _):
        added = await session.call_tool("add", {"a": 2, "b": 40})
        echoed = await session.call_tool("echo", {"text": 'h\u00e9llo \u2713 "quoted"'})
        customer = await session.call_tool("lookup_customer", {"customer_id": "c-17"})
    assert isinstance(added, mt.CallToolResult)
    assert added.is_error is False
    assert text_of(added) == "42"
    assert added.structured_content == {"result": 42}
    assert text_of(echoed) == 'h\u00e9llo \u2713 "quoted"'
    assert json.loads(text_of(customer))["id"] == "c-17"


async def test_tool_error_result_passes_through(target: Target) -> None:
    async with mcp_client(target.endpoint) as (session, _):
        result = await session.call_tool("fail", {"reason": "disk on fire"})
        after = await session.call_tool("echo", {"text": "still alive"})
    assert isinstance(result, mt.CallToolResult)
    assert result.is_error is True
    assert text_of(result) == "failed: disk on fire"
    # A tool error is a result, not a broken session.
    assert text_of(after) == "still alive"


async def test_streamed_tool_call_delivers_every_notification(stateful: Target) -> None:
    steps: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        steps.append((progress, total, message))

    async with mcp_client(stateful.endpoint) as (session, observed):
        result = await session.call_tool("count_events", {"n": 5}, progress_callback=on_progress)
    assert text_of(result) == "sent 5"
    assert observed.logs == [f"event {i}" for i in range(1, 6)]
    assert steps == [(float(i), 5.0, f"step {i}") for i in range(1, 6)]
    sse = [
        r
        for r in stateful.requests(observed.marker, "POST")
        if r.response_headers.get("content-type", "").startswith("text/event-stream")
    ]
    assert sse, "the stateful upstream should have answered tools/call with an SSE stream"


async def test_client_sees_the_upstream_session_id_and_delete_ends_it(stateful: Target) -> None:
    async with mcp_client(stateful.endpoint) as (session, observed):
        await session.list_tools()
        seen_during = observed.session_ids()

    posts = stateful.requests(observed.marker, "POST")
    initialize = [r for r in posts if "mcp-session-id" not in r.headers]
    assert len(initialize) == 1, [r.headers for r in posts]
    issued = initialize[0].response_headers["mcp-session-id"]
    assert seen_during == {issued}
    assert all(r.headers["mcp-session-id"] == issued for r in posts if r is not initialize[0])

    # Leaving the client sent DELETE with the session id; it reached the upstream.
    deletes = stateful.requests(observed.marker, "DELETE")
    assert [r.headers.get("mcp-session-id") for r in deletes] == [issued]
    assert deletes[0].response_status == 200
    assert observed.statuses("DELETE") == [200]

    # The session is gone: the MCP answer is HTTP 404.
    async with httpx.AsyncClient(timeout=10.0) as raw:
        response = await raw.post(
            stateful.endpoint,
            headers={
                "accept": "application/json, text/event-stream",
                "mcp-session-id": issued,
                "mcp-protocol-version": LATEST_HANDSHAKE_VERSION,
            },
            json={"jsonrpc": "2.0", "id": 9, "method": "tools/list"},
        )
    assert response.status_code == 404, response.text


async def test_stateless_upstream_never_receives_a_session_id(stateless: Target) -> None:
    async with mcp_client(stateless.endpoint) as (session, observed):
        result = await session.call_tool("add", {"a": 1, "b": 1})
    assert text_of(result) == "2"
    got = stateless.requests(observed.marker)
    assert len(got) >= 3
    assert [r.headers.get("mcp-session-id") for r in got] == [None] * len(got)
    # The proxy issued the client a session id, so the client also opens a GET stream,
    # which the stateless upstream refuses; every POST is answered in JSON mode.
    posts = [r for r in got if r.method == "POST"]
    assert len(posts) >= 3
    assert all(r.response_headers.get("content-type") == "application/json" for r in posts)
    assert observed.session_ids()
    assert all(s.startswith("awp-") for s in observed.session_ids())


def sse_messages(body: str) -> list[dict[str, Any]]:
    """The JSON-RPC messages in the `data:` lines of an SSE body."""
    out = []
    for line in body.splitlines():
        if line.startswith("data:") and line[5:].strip():
            out.append(json.loads(line[5:]))
    return out


def rpc_result(response: httpx.Response) -> dict[str, Any]:
    if response.headers["content-type"].startswith("text/event-stream"):
        messages = sse_messages(response.text)
    else:
        messages = [response.json()]
    results = [m for m in messages if "result" in m or "error" in m]
    assert len(results) == 1, response.text
    return results[0]


async def test_protocol_headers_reach_the_upstream(target: Target) -> None:
    marker = uuid.uuid4().hex
    trace_id = uuid.uuid4().hex
    base = {MARKER: marker, "accept": "application/json, text/event-stream", "x-agent-id": "e2e-7"}
    upstream_host = target.upstream_url.removeprefix("http://")
    async with httpx.AsyncClient(timeout=10.0, headers=base) as raw:
        init = await raw.post(
            target.endpoint,
            json={
                "jsonrpc": "2.0",
                "id": 1,
                "method": "initialize",
                "params": {
                    "protocolVersion": LATEST_HANDSHAKE_VERSION,
                    "capabilities": {},
                    "clientInfo": {"name": "raw-e2e", "version": "0"},
                },
            },
        )
        assert init.status_code == 200, init.text
        assert rpc_result(init)["result"]["protocolVersion"] == LATEST_HANDSHAKE_VERSION
        session_id = init.headers.get("mcp-session-id")
        if target.stateful:
            assert session_id is not None
        follow = {"mcp-protocol-version": LATEST_HANDSHAKE_VERSION}
        if session_id is not None:
            follow["mcp-session-id"] = session_id
        initialized = await raw.post(
            target.endpoint,
            headers=follow,
            json={"jsonrpc": "2.0", "method": "notifications/initialized"},
        )
        assert initialized.status_code == 202, initialized.text
        listed = await raw.post(
            target.endpoint,
            headers={**follow, "traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"},
            json={"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
        )
        assert listed.status_code == 200, listed.text
        assert len(rpc_result(listed)["result"]["tools"]) == len(TOOL_NAMES)

    posts = target.requests(marker, "POST")
    assert len(posts) == 3
    for request in posts:
        assert request.headers["host"] == upstream_host
        assert request.headers["x-agent-id"] == "e2e-7"
    listing = posts[2]
    assert listing.headers["mcp-protocol-version"] == LATEST_HANDSHAKE_VERSION
    traceparent = TRACEPARENT.fullmatch(listing.headers.get("traceparent", ""))
    assert traceparent is not None, listing.headers
    assert traceparent.group(1) == trace_id
    if target.stateful:
        assert session_id == posts[0].response_headers["mcp-session-id"]
        assert listing.headers["mcp-session-id"] == session_id
    else:
        assert "mcp-session-id" not in listing.headers
