"""Spans of the proxy, read from an in-memory exporter: names, attributes, parentage.

The proxy runs in this process (its `Runtime.telemetry` built with `with_processor`) in
front of the official MCP SDK server, the official A2A agent, or a hand-written aiohttp
upstream. `Telemetry.from_env` is checked on its own, once against a real OTLP receiver.
"""

from __future__ import annotations

import asyncio
import importlib.util
import io
import itertools
import json
import logging
import os
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import ClientSession, web
from mcp_types.version import LATEST_HANDSHAKE_VERSION
from multidict import CIMultiDict
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from yarl import URL

from proxy.app import ProxyListener, Runtime
from proxy.config import Address, ConfigError, Settings
from proxy.logs import JsonFormatter
from proxy.metrics import Metrics
from proxy.policy import DEFAULT_POLICY, DEFAULT_POLICY_NAME, PolicyFile, parse_policy
from proxy.telemetry import NOOP, Telemetry
from tests.upstreams.a2a_server import JSONRPC_PATH, REST_PREFIX
from tests.upstreams.mcp_server import MCP_PATH
from tests.upstreams.otlp import OtlpReceiver
from tests.upstreams.serve import LOOPBACK, HeaderRecorder, SeenRequest, free_port

pytestmark = pytest.mark.timeout(60)

MARKER = "x-warden-test"
AGENT_HEADER = "x-agent-id"
SESSION_HEADER = "mcp-session-id"
ACCEPT = "application/json, text/event-stream"
WAIT = 5.0

# One tool denied, enforced for `guarded-*` agents and audited for `trial-*` ones; every
# other agent falls under the default policy, which allows everything.
DENY_POLICY = """\
version: 1
policies:
  - name: tool-guard
    match: {agents: ["guarded-*"]}
    tools: {allow: ["*"], deny: ["delete_admin"]}
  - name: tool-trial
    match: {agents: ["trial-*"]}
    mode: audit
    tools: {allow: ["*"], deny: ["delete_admin"]}
"""


def policy_of(text: str) -> PolicyFile:
    return parse_policy(text, "telemetry-test.yaml")


def traceparent() -> tuple[str, str, str]:
    """A fresh sampled W3C `traceparent`, with its trace id and parent span id (hex)."""
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{span_id}-01", trace_id, span_id


def hex_trace(span: ReadableSpan) -> str:
    assert span.context is not None
    return format(span.context.trace_id, "032x")


def hex_span(span: ReadableSpan) -> str:
    assert span.context is not None
    return format(span.context.span_id, "016x")


def hex_parent(span: ReadableSpan) -> str | None:
    return format(span.parent.span_id, "016x") if span.parent is not None else None


def attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def parse_traceparent(value: str) -> tuple[str, str, str]:
    version, trace_id, parent_id, flags = value.split("-")
    assert version == "00", value
    return trace_id, parent_id, flags


# --- the in-process proxy with an in-memory exporter ---------------------------------------


@dataclass
class Traced:
    """A proxy whose spans land in `exporter`."""

    url: str
    port: int
    exporter: InMemorySpanExporter

    def spans(self, trace_id: str | None = None) -> list[ReadableSpan]:
        found = self.exporter.get_finished_spans()
        return [s for s in found if trace_id is None or hex_trace(s) == trace_id]

    async def trace(self, trace_id: str, *, kinds: tuple[SpanKind, ...]) -> list[ReadableSpan]:
        """The spans of one trace once its SERVER span ended (the last one to end)."""
        deadline = time.monotonic() + WAIT
        while True:
            spans = self.spans(trace_id)
            if any(s.kind is SpanKind.SERVER for s in spans):
                got = sorted(s.kind.name for s in spans)
                assert got == sorted(k.name for k in kinds), [(s.name, s.kind) for s in spans]
                return spans
            assert time.monotonic() < deadline, f"no SERVER span in trace {trace_id}: {spans}"
            await asyncio.sleep(0.01)

    async def pair(self, trace_id: str) -> tuple[ReadableSpan, ReadableSpan]:
        """The SERVER and CLIENT spans of a forwarded request."""
        spans = await self.trace(trace_id, kinds=(SpanKind.SERVER, SpanKind.CLIENT))
        [server] = [s for s in spans if s.kind is SpanKind.SERVER]
        [client] = [s for s in spans if s.kind is SpanKind.CLIENT]
        return server, client

    async def server_only(self, trace_id: str) -> ReadableSpan:
        """The SERVER span of a request that never reached the upstream."""
        [server] = await self.trace(trace_id, kinds=(SpanKind.SERVER,))
        return server


StartTraced = Callable[..., Awaitable[Traced]]
Serve = Callable[[web.Application], Awaitable[str]]


@pytest.fixture
async def traced() -> AsyncIterator[StartTraced]:
    """`await traced(upstream_url, policy=..., telemetry=...)`: the proxy in this process."""
    listeners: list[ProxyListener] = []

    async def start(
        upstream: str, policy: PolicyFile = DEFAULT_POLICY, telemetry: Telemetry | None = None
    ) -> Traced:
        exporter = InMemorySpanExporter()
        if telemetry is None:
            telemetry = Telemetry.with_processor(SimpleSpanProcessor(exporter))
        settings = Settings(
            upstream=URL(upstream), listen=Address(LOOPBACK, 0), connect_timeout=2.0
        )
        runtime = Runtime(settings=settings, policy=policy, telemetry=telemetry)
        runtime.set_policy(policy)
        runtime.ready = True
        listener = ProxyListener(runtime)
        port = await listener.start(LOOPBACK, 0)
        listeners.append(listener)
        return Traced(f"http://{LOOPBACK}:{port}", port, exporter)

    yield start
    for listener in reversed(listeners):
        await listener.drain(0.5)


@pytest.fixture
async def http() -> AsyncIterator[ClientSession]:
    async with ClientSession() as session:
        yield session


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """Serves a hand-written aiohttp upstream on loopback; returns its URL."""
    runners: list[web.AppRunner] = []

    async def start(app: web.Application) -> str:
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(runner, LOOPBACK, 0)
        await site.start()
        runners.append(runner)
        return f"http://{LOOPBACK}:{site.port}"

    yield start
    for runner in reversed(runners):
        await runner.cleanup()


@dataclass
class HandWritten:
    """An aiohttp upstream answering by path; keeps each request's headers."""

    seen: list[dict[str, str]] = field(default_factory=list)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(dict(request.headers))
        await request.read()
        if request.path == "/missing":
            return web.Response(status=404, text="no such thing")
        if request.path == "/broken":
            return web.Response(status=500, text="<html>boom</html>", content_type="text/html")
        if request.path == "/invalid-params":  # a conformant JSON-RPC error, with a 400
            doc = {"jsonrpc": "2.0", "id": 5, "error": {"code": -32602, "message": "bad"}}
            return web.json_response(doc, status=400)
        if request.path == "/cut":  # headers promise a body the connection never delivers
            out = web.StreamResponse(headers={"Content-Type": "application/json"})
            out.content_length = 1_000_000
            await out.prepare(request)
            await out.write(b'{"jsonrpc":"2.0",')
            await out.drain()
            assert request.transport is not None
            request.transport.abort()
            return out
        return web.Response(text="plain")


# --- MCP as raw HTTP -------------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    headers: CIMultiDict[str]
    messages: list[dict[str, Any]]

    @property
    def answer(self) -> dict[str, Any]:
        answers = [m for m in self.messages if "result" in m or "error" in m]
        assert len(answers) == 1, self
        return answers[0]


@dataclass
class Mcp:
    """One agent's MCP session through the proxy, over plain HTTP."""

    http: ClientSession
    endpoint: str
    agent: str
    marker: str = field(default_factory=lambda: uuid.uuid4().hex)
    session: str | None = None
    _ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    async def post(self, message: dict[str, Any], trace: str | None = None) -> Reply:
        headers = {"accept": ACCEPT, MARKER: self.marker, AGENT_HEADER: self.agent}
        if message.get("method") != "initialize":
            headers["mcp-protocol-version"] = LATEST_HANDSHAKE_VERSION
        if self.session is not None:
            headers[SESSION_HEADER] = self.session
        if trace is not None:
            headers["traceparent"] = trace
        async with self.http.post(self.endpoint, json=message, headers=headers) as resp:
            text = await resp.text()
            if resp.content_type == "text/event-stream":
                messages = [
                    json.loads(line[5:])
                    for line in text.splitlines()
                    if line.startswith("data:") and line[5:].strip()
                ]
            elif text.strip():
                messages = [json.loads(text)]
            else:
                messages = []
            return Reply(resp.status, CIMultiDict(resp.headers), messages)

    async def request(self, method: str, params: dict[str, Any], trace: str | None = None) -> Reply:
        message = {"jsonrpc": "2.0", "id": next(self._ids), "method": method, "params": params}
        return await self.post(message, trace)

    async def initialize(self, trace: str | None = None) -> Reply:
        params = {
            "protocolVersion": LATEST_HANDSHAKE_VERSION,
            "capabilities": {},
            "clientInfo": {"name": "warden-telemetry-test", "version": "0"},
        }
        return await self.request("initialize", params, trace)

    async def open(self, trace: str | None = None) -> Mcp:
        """A live session: `initialize`, then `notifications/initialized`."""
        reply = await self.initialize(trace)
        assert reply.status == 200, reply
        self.session = reply.headers[SESSION_HEADER]
        done = await self.post({"jsonrpc": "2.0", "method": "notifications/initialized"})
        assert done.status == 202, done
        return self

    async def call(self, tool: str, trace: str | None = None, **arguments: Any) -> Reply:
        return await self.request("tools/call", {"name": tool, "arguments": arguments}, trace)


def upstream_seen(seen: HeaderRecorder, marker: str, trace_id: str) -> list[SeenRequest]:
    """What the shared upstream received from one test, carrying one trace id."""
    return [
        r
        for r in seen.requests("POST")
        if r.headers.get(MARKER) == marker
        and parse_traceparent(r.headers.get("traceparent", "00-x-y-z"))[0] == trace_id
    ]


@pytest.fixture(params=["mcp_upstream", "mcp_stateless_upstream"])
def any_mcp_upstream(request: pytest.FixtureRequest) -> str:
    """Each official-SDK upstream in turn: SSE answers (stateful) and plain JSON (stateless)."""
    url: str = request.getfixturevalue(request.param)
    return url


# --- spans of an allowed tool call -----------------------------------------------------------


async def test_tool_call_has_a_server_span_and_a_client_span_under_it(
    traced: StartTraced,
    http: ClientSession,
    mcp_upstream: str,
    mcp_upstream_seen: HeaderRecorder,
) -> None:
    proxy = await traced(mcp_upstream)
    agent = f"agent-{uuid.uuid4().hex[:8]}"
    mcp = await Mcp(http, proxy.url + MCP_PATH, agent).open()
    header, trace_id, parent_id = traceparent()
    reply = await mcp.call("echo", header, text="hello")
    assert reply.status == 200
    assert reply.answer["result"]["content"][0]["text"] == "hello"

    server, client = await proxy.pair(trace_id)
    assert server.name == "tools/call echo"
    assert hex_parent(server) == parent_id
    assert server.parent is not None
    assert server.parent.is_remote
    assert hex_trace(client) == trace_id
    assert hex_parent(client) == hex_span(server)
    assert attrs(server) == {
        "http.request.method": "POST",
        "url.path": MCP_PATH,
        "url.scheme": "http",
        "server.address": LOOPBACK,
        "server.port": proxy.port,
        "network.transport": "tcp",
        "network.protocol.name": "http",
        "network.protocol.version": "1.1",
        "http.response.status_code": 200,
        "rpc.system.name": "jsonrpc",
        "jsonrpc.protocol.version": "2.0",
        "jsonrpc.request.id": "2",
        "rpc.method": "tools/call",
        "mcp.method.name": "tools/call",
        "mcp.session.id": mcp.session,
        "mcp.protocol.version": LATEST_HANDSHAKE_VERSION,
        "gen_ai.tool.name": "echo",
        "gen_ai.operation.name": "execute_tool",
        "agent_warden.agent.id": agent,
        "agent_warden.policy": DEFAULT_POLICY_NAME,
        "agent_warden.decision": "allow",
        "agent_warden.session.kind": "protocol",
    }
    assert server.status.status_code is StatusCode.UNSET

    upstream = URL(mcp_upstream)
    assert client.name == "POST"
    assert attrs(client) == {
        "http.request.method": "POST",
        "server.address": upstream.host,
        "server.port": upstream.port,
        "url.full": mcp_upstream + MCP_PATH,
        "http.response.status_code": 200,
    }
    assert client.status.status_code is StatusCode.UNSET

    # The upstream's span would be the child of the CLIENT span, not of the SERVER span.
    [seen] = upstream_seen(mcp_upstream_seen, mcp.marker, trace_id)
    assert parse_traceparent(seen.headers["traceparent"]) == (trace_id, hex_span(client), "01")


async def test_each_message_of_a_session_is_named_by_its_method(
    any_mcp_upstream: str, traced: StartTraced, http: ClientSession
) -> None:
    proxy = await traced(any_mcp_upstream)
    init_header, init_trace, _ = traceparent()
    mcp = await Mcp(http, proxy.url + MCP_PATH, "agent-names").open(init_header)
    list_header, list_trace, _ = traceparent()
    assert (await mcp.request("tools/list", {}, list_header)).status == 200

    init, _ = await proxy.pair(init_trace)
    assert init.name == "initialize"
    assert attrs(init)["mcp.method.name"] == "initialize"
    assert attrs(init)["jsonrpc.request.id"] == "1"
    assert "mcp.session.id" not in attrs(init)  # the session is born from the answer
    assert "gen_ai.tool.name" not in attrs(init)
    assert "gen_ai.operation.name" not in attrs(init)

    listed, _ = await proxy.pair(list_trace)
    assert listed.name == "tools/list"
    assert attrs(listed)["mcp.session.id"] == mcp.session
    assert "gen_ai.operation.name" not in attrs(listed)

    # A notification has no id; its span says so by leaving the attribute out.
    note = [s for s in proxy.spans() if s.name == "notifications/initialized"]
    assert len(note) == 1, [s.name for s in proxy.spans()]
    assert "jsonrpc.request.id" not in attrs(note[0])
    assert attrs(note[0])["http.response.status_code"] == 202


async def test_a_request_without_traceparent_starts_a_new_trace(
    traced: StartTraced, http: ClientSession, mcp_stateless_upstream: str
) -> None:
    proxy = await traced(mcp_stateless_upstream)
    mcp = await Mcp(http, proxy.url + MCP_PATH, "agent-root").open()
    assert (await mcp.call("add", a=2, b=3)).answer["result"]["structuredContent"] == {"result": 5}
    [server] = [s for s in proxy.spans() if s.name == "tools/call add"]
    assert server.parent is None
    clients = [s for s in proxy.spans(hex_trace(server)) if s.kind is SpanKind.CLIENT]
    assert [hex_parent(c) for c in clients] == [hex_span(server)]


async def test_a_stateless_request_takes_its_parent_from_meta_and_names_its_window(
    traced: StartTraced, http: ClientSession, mcp_stateless_upstream: str
) -> None:
    """No traceparent header: MCP's params._meta.traceparent parents the SERVER span; a
    request without a session is judged in the agent's window (contract, Traces)."""
    proxy = await traced(mcp_stateless_upstream)
    mcp = Mcp(http, proxy.url + MCP_PATH, "agent-meta")
    header, trace_id, parent_id = traceparent()
    meta = {"traceparent": header, "io.modelcontextprotocol/protocolVersion": "2026-07-28"}
    await mcp.request("tools/list", {"_meta": meta})
    [server] = [s for s in proxy.spans(trace_id) if s.kind is SpanKind.SERVER]
    assert hex_parent(server) == parent_id
    got = attrs(server)
    assert got["agent_warden.session.kind"] == "window"
    assert "mcp.session.id" not in got
    assert got["mcp.protocol.version"] == LATEST_HANDSHAKE_VERSION  # the header wins


async def test_a_plain_http_request_is_named_by_its_http_method(
    traced: StartTraced, http: ClientSession, serve: Serve
) -> None:
    upstream = HandWritten()
    proxy = await traced(await serve(upstream.app()))
    header, trace_id, parent_id = traceparent()
    async with http.get(proxy.url + "/health?x=1", headers={"traceparent": header}) as resp:
        assert resp.status == 200
    server, client = await proxy.pair(trace_id)
    assert server.name == "GET"
    assert hex_parent(server) == parent_id
    assert attrs(server)["url.path"] == "/health"  # the query is not part of url.path
    assert not any(k.startswith(("rpc.", "jsonrpc.", "mcp.", "gen_ai.")) for k in attrs(server))
    assert client.name == "GET"
    assert attrs(client)["url.full"].endswith("/health?x=1")
    # The incoming traceparent was replaced, not forwarded next to ours.
    [seen] = upstream.seen
    assert parse_traceparent(seen["traceparent"]) == (trace_id, hex_span(client), "01")


# --- decisions ---------------------------------------------------------------------------------


async def test_a_denied_tool_has_the_decision_and_reason_and_no_client_span(
    traced: StartTraced,
    http: ClientSession,
    mcp_upstream: str,
    mcp_upstream_seen: HeaderRecorder,
) -> None:
    proxy = await traced(mcp_upstream, policy_of(DENY_POLICY))
    agent = f"guarded-{uuid.uuid4().hex[:8]}"
    mcp = await Mcp(http, proxy.url + MCP_PATH, agent).open()
    header, trace_id, parent_id = traceparent()
    reply = await mcp.call("delete_admin", header, user="root")
    assert reply.answer["error"]["data"][0]["reason"] == "TOOL_NOT_AUTHORIZED"

    server = await proxy.server_only(trace_id)
    assert server.name == "tools/call delete_admin"
    assert hex_parent(server) == parent_id
    got = attrs(server)
    assert got["agent_warden.agent.id"] == agent
    assert got["agent_warden.policy"] == "tool-guard"
    assert got["agent_warden.decision"] == "deny"
    assert got["agent_warden.reason"] == "TOOL_NOT_AUTHORIZED"
    assert got["gen_ai.tool.name"] == "delete_admin"
    assert got["rpc.response.status_code"] == "-31064"
    assert got["error.type"] == "-31064"
    assert got["http.response.status_code"] == 200
    assert server.status.status_code is StatusCode.UNSET  # a 200: not a server error
    assert upstream_seen(mcp_upstream_seen, mcp.marker, trace_id) == []


async def test_audit_mode_records_audit_deny_and_still_forwards(
    traced: StartTraced,
    http: ClientSession,
    mcp_upstream: str,
    mcp_upstream_seen: HeaderRecorder,
) -> None:
    proxy = await traced(mcp_upstream, policy_of(DENY_POLICY))
    mcp = await Mcp(http, proxy.url + MCP_PATH, f"trial-{uuid.uuid4().hex[:8]}").open()
    header, trace_id, _ = traceparent()
    reply = await mcp.call("delete_admin", header, user="root")
    assert reply.answer["result"]["content"][0]["text"] == "deleted admin root"

    server, client = await proxy.pair(trace_id)
    got = attrs(server)
    assert got["agent_warden.policy"] == "tool-trial"
    assert got["agent_warden.decision"] == "audit-deny"
    assert got["agent_warden.reason"] == "TOOL_NOT_AUTHORIZED"
    assert "error.type" not in got
    assert "rpc.response.status_code" not in got
    assert hex_parent(client) == hex_span(server)
    assert len(upstream_seen(mcp_upstream_seen, mcp.marker, trace_id)) == 1


async def test_an_allowed_call_has_no_reason(
    traced: StartTraced, http: ClientSession, mcp_upstream: str
) -> None:
    proxy = await traced(mcp_upstream, policy_of(DENY_POLICY))
    mcp = await Mcp(http, proxy.url + MCP_PATH, f"guarded-{uuid.uuid4().hex[:8]}").open()
    header, trace_id, _ = traceparent()
    assert (await mcp.call("echo", header, text="ok")).status == 200
    server, _ = await proxy.pair(trace_id)
    assert attrs(server)["agent_warden.decision"] == "allow"
    assert attrs(server)["agent_warden.policy"] == "tool-guard"
    assert "agent_warden.reason" not in attrs(server)


async def test_the_denial_log_line_carries_the_server_spans_ids(
    traced: StartTraced, http: ClientSession, mcp_upstream: str
) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    decisions = logging.getLogger("agent_warden.decision")
    decisions.addHandler(handler)
    try:
        proxy = await traced(mcp_upstream, policy_of(DENY_POLICY))
        agent = f"guarded-{uuid.uuid4().hex[:8]}"
        mcp = await Mcp(http, proxy.url + MCP_PATH, agent).open()
        header, trace_id, _ = traceparent()
        await mcp.call("delete_admin", header, user="root")
        server = await proxy.server_only(trace_id)
    finally:
        decisions.removeHandler(handler)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    [denial] = [line for line in lines if line.get("agent") == agent]
    assert denial["msg"] == "request denied"
    assert denial["reason"] == "TOOL_NOT_AUTHORIZED"
    assert denial["trace_id"] == trace_id
    assert denial["span_id"] == hex_span(server)


# --- errors ------------------------------------------------------------------------------------


async def test_a_tool_result_with_is_error_sets_tool_error(
    any_mcp_upstream: str, traced: StartTraced, http: ClientSession
) -> None:
    proxy = await traced(any_mcp_upstream)
    mcp = await Mcp(http, proxy.url + MCP_PATH, "agent-fail").open()
    header, trace_id, _ = traceparent()
    reply = await mcp.call("fail", header, reason="nope")
    assert reply.answer["result"]["isError"] is True

    server, client = await proxy.pair(trace_id)
    assert server.name == "tools/call fail"
    assert attrs(server)["error.type"] == "tool_error"
    assert "rpc.response.status_code" not in attrs(server)
    assert server.status.status_code is StatusCode.UNSET  # HTTP 200: not a server error
    assert "error.type" not in attrs(client)


@pytest.mark.parametrize(
    "upstream_fixture",
    [
        pytest.param("mcp_upstream"),
        "mcp_stateless_upstream",
    ],
)
async def test_an_upstream_jsonrpc_error_code_is_recorded(
    upstream_fixture: str,
    request: pytest.FixtureRequest,
    traced: StartTraced,
    http: ClientSession,
) -> None:
    upstream: str = request.getfixturevalue(upstream_fixture)
    proxy = await traced(upstream)
    mcp = await Mcp(http, proxy.url + MCP_PATH, "agent-unknown").open()
    header, trace_id, _ = traceparent()
    reply = await mcp.request("no/such", {}, header)
    assert reply.answer["error"]["code"] == -32601
    server, _ = await proxy.pair(trace_id)
    assert server.name == "no/such"
    assert attrs(server)["rpc.response.status_code"] == "-32601"
    assert server.status.status_code is StatusCode.UNSET


async def test_a_jsonrpc_error_with_an_error_status_is_recorded(
    traced: StartTraced, http: ClientSession, serve: Serve
) -> None:
    proxy = await traced(await serve(HandWritten().app()))
    header, trace_id, _ = traceparent()
    body = {"jsonrpc": "2.0", "id": 5, "method": "demo/call", "params": {}}
    url = proxy.url + "/invalid-params"
    async with http.post(url, json=body, headers={"traceparent": header}) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"]["code"] == -32602  # passed through unchanged
    server, client = await proxy.pair(trace_id)
    assert attrs(client)["http.response.status_code"] == 400
    assert attrs(server)["http.response.status_code"] == 400
    assert attrs(server)["rpc.response.status_code"] == "-32602"


async def test_a_dead_upstream_gives_an_unavailable_client_span(
    traced: StartTraced, http: ClientSession
) -> None:
    proxy = await traced(f"http://{LOOPBACK}:{free_port()}")
    header, trace_id, _ = traceparent()
    reply = await Mcp(http, proxy.url + MCP_PATH, "agent-dead").initialize(header)
    assert reply.answer["error"]["data"][0]["reason"] == "UPSTREAM_UNAVAILABLE"

    server, client = await proxy.pair(trace_id)
    assert hex_parent(client) == hex_span(server)
    assert attrs(client)["error.type"] == "UPSTREAM_UNAVAILABLE"
    assert "http.response.status_code" not in attrs(client)
    assert client.status.status_code is StatusCode.ERROR
    # The JSON-RPC error travels in a 200: the SERVER span records the code, not a 5xx.
    assert reply.status == 200
    assert reply.answer["error"]["code"] == -32603
    assert attrs(server)["http.response.status_code"] == 200
    assert attrs(server)["rpc.response.status_code"] == "-32603"
    assert attrs(server)["error.type"] == "-32603"
    assert server.status.status_code is StatusCode.UNSET


@pytest.mark.parametrize(
    ("path", "status", "server_error"),
    [("/missing", 404, False), ("/broken", 500, True)],
)
async def test_upstream_error_statuses_follow_the_http_span_status_rules(
    path: str,
    status: int,
    server_error: bool,
    traced: StartTraced,
    http: ClientSession,
    serve: Serve,
) -> None:
    proxy = await traced(await serve(HandWritten().app()))
    header, trace_id, _ = traceparent()
    async with http.get(proxy.url + path, headers={"traceparent": header}) as resp:
        assert resp.status == status  # rewritten as AIP-193, the status kept
    server, client = await proxy.pair(trace_id)
    # CLIENT: every status from 400 up is an error.
    assert attrs(client)["http.response.status_code"] == status
    assert attrs(client)["error.type"] == str(status)
    assert client.status.status_code is StatusCode.ERROR
    # SERVER: only 5xx are.
    assert attrs(server)["http.response.status_code"] == status
    if server_error:
        assert server.status.status_code is StatusCode.ERROR
        assert attrs(server)["error.type"] == str(status)
    else:
        assert server.status.status_code is StatusCode.UNSET
        assert "error.type" not in attrs(server)


async def test_an_upstream_cut_mid_body_is_a_failed_client_call(
    traced: StartTraced, http: ClientSession, serve: Serve
) -> None:
    proxy = await traced(await serve(HandWritten().app()))
    header, trace_id, _ = traceparent()
    body = {"jsonrpc": "2.0", "id": 9, "method": "demo/call", "params": {}}
    async with http.post(proxy.url + "/cut", json=body, headers={"traceparent": header}) as resp:
        answer = await resp.json()
    assert answer["error"]["data"][0]["reason"] == "UPSTREAM_UNAVAILABLE"
    server, client = await proxy.pair(trace_id)
    assert attrs(server)["rpc.response.status_code"] == str(answer["error"]["code"])
    assert attrs(client)["error.type"] == "UPSTREAM_UNAVAILABLE"
    assert client.status.status_code is StatusCode.ERROR


# --- A2A -------------------------------------------------------------------------------------


async def test_a2a_spans_carry_method_context_and_task(
    traced: StartTraced, http: ClientSession, a2a_upstream: str
) -> None:
    proxy = await traced(a2a_upstream)
    headers = {"A2A-Version": "1.0", AGENT_HEADER: "agent-a2a"}
    context = uuid.uuid4().hex
    message = {
        "messageId": uuid.uuid4().hex,
        "role": "ROLE_USER",
        "parts": [{"text": "hi"}],
        "contextId": context,
    }
    header, trace_id, _ = traceparent()
    body = {"jsonrpc": "2.0", "id": "s-1", "method": "SendMessage", "params": {"message": message}}
    async with http.post(
        proxy.url + JSONRPC_PATH, json=body, headers={**headers, "traceparent": header}
    ) as resp:
        assert resp.status == 200
        task = (await resp.json())["result"]["task"]
    server, _ = await proxy.pair(trace_id)
    assert server.name == "SendMessage"
    got = attrs(server)
    assert got["a2a.method"] == "SendMessage"
    assert got["a2a.context.id"] == context
    assert got["rpc.system.name"] == "jsonrpc"
    assert got["jsonrpc.request.id"] == "s-1"
    assert got["agent_warden.decision"] == "allow"
    assert not any(k.startswith(("mcp.", "gen_ai.")) for k in got)

    rest_header, rest_trace, _ = traceparent()
    async with http.get(
        f"{proxy.url}{REST_PREFIX}/tasks/{task['id']}",
        headers={**headers, "traceparent": rest_header},
    ) as resp:
        assert resp.status == 200
    rest, _ = await proxy.pair(rest_trace)
    assert attrs(rest)["a2a.task.id"] == task["id"]
    assert attrs(rest)["a2a.method"] == "GetTask"
    assert rest.name == "GetTask"
    assert "rpc.system.name" not in attrs(rest)


# --- without a tracer ---------------------------------------------------------------------------


async def test_without_a_tracer_the_clients_traceparent_passes_through(
    traced: StartTraced, http: ClientSession, serve: Serve
) -> None:
    upstream = HandWritten()
    proxy = await traced(await serve(upstream.app()), telemetry=Telemetry())
    header, _, _ = traceparent()
    async with http.post(proxy.url + "/upload", data=b"x", headers={"traceparent": header}) as resp:
        assert resp.status == 200
    assert upstream.seen[-1]["traceparent"] == header
    assert proxy.spans() == []


async def test_a_sampler_from_the_environment_applies(
    traced: StartTraced,
    http: ClientSession,
    serve: Serve,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_off")
    exporter = InMemorySpanExporter()
    upstream = HandWritten()
    proxy = await traced(
        await serve(upstream.app()),
        telemetry=Telemetry.with_processor(SimpleSpanProcessor(exporter)),
    )
    async with http.get(proxy.url + "/health") as resp:
        assert resp.status == 200
    assert exporter.get_finished_spans() == ()
    # Not recorded, still propagated: the upstream sees an unsampled context.
    _, _, flags = parse_traceparent(upstream.seen[-1]["traceparent"])
    assert int(flags, 16) & 1 == 0, flags  # the sampled bit (0x02 may say "random")


# --- Telemetry.from_env ------------------------------------------------------------------------


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No OTEL_* variable of the machine leaks into a `from_env` test."""
    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)
    return monkeypatch


ENDPOINT = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://{LOOPBACK}:1", "OTEL_METRICS_EXPORTER": "none"}


def from_env(environ: dict[str, str]) -> Telemetry:
    """Telemetry from ``environ`` set as the process environment while it is built."""
    with pytest.MonkeyPatch.context() as patch:
        for key, value in environ.items():
            patch.setenv(key, value)
        return Telemetry.from_env(Metrics())


@pytest.mark.usefixtures("clean_env")
def test_no_endpoint_means_no_tracer() -> None:
    telemetry = from_env({"OTEL_SERVICE_NAME": "x"})
    assert not telemetry.tracing
    assert telemetry.begin("GET", "/", "http", "h:1", {}) is NOOP
    telemetry.shutdown()


@pytest.mark.usefixtures("clean_env")
@pytest.mark.parametrize(
    "environ",
    [
        ENDPOINT,
        {
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"http://{LOOPBACK}:1/v1/traces",
            "OTEL_METRICS_EXPORTER": "none",
        },
        {**ENDPOINT, "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"},
    ],
    ids=["endpoint", "traces-endpoint", "explicit-protocol"],
)
def test_an_endpoint_means_a_tracer(environ: dict[str, str]) -> None:
    telemetry = from_env(environ)
    try:
        assert telemetry.tracing
        assert telemetry.begin("GET", "/", "http", "h:1", {}) is not NOOP
    finally:
        telemetry.shutdown()


@pytest.mark.usefixtures("clean_env")
@pytest.mark.parametrize(
    "extra",
    [
        {"OTEL_SDK_DISABLED": "true"},
        {"OTEL_SDK_DISABLED": "TRUE"},
        {"OTEL_TRACES_EXPORTER": "none"},
    ],
    ids=["disabled", "disabled-upper", "exporter-none"],
)
def test_disabled_or_no_exporter_means_no_tracer(extra: dict[str, str]) -> None:
    telemetry = from_env({**ENDPOINT, **extra})
    assert not telemetry.tracing
    telemetry.shutdown()


@pytest.mark.usefixtures("clean_env")
def test_grpc_without_its_extra_is_a_config_error() -> None:
    if importlib.util.find_spec("opentelemetry.exporter.otlp.proto.grpc") is not None:
        pytest.skip("the grpc exporter is installed here")
    with pytest.raises(ConfigError, match="grpc") as caught:
        from_env({**ENDPOINT, "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"})
    assert "\n" not in str(caught.value)


@pytest.mark.usefixtures("clean_env")
@pytest.mark.parametrize(
    ("extra", "named"),
    [
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, "OTEL_EXPORTER_OTLP_PROTOCOL"),
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER"),
    ],
)
def test_unsupported_choices_are_config_errors(extra: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        from_env({**ENDPOINT, **extra})


def test_the_default_service_name_is_the_proxys(clean_env: pytest.MonkeyPatch) -> None:
    exporter = InMemorySpanExporter()
    telemetry = Telemetry.with_processor(SimpleSpanProcessor(exporter))
    telemetry.begin("GET", "/", "http", "h:1", {}).end(200)
    [span] = exporter.get_finished_spans()
    assert span.resource.attributes["service.name"] == "agent-warden"


def test_service_name_and_resource_attributes_come_from_the_environment(
    clean_env: pytest.MonkeyPatch,
) -> None:
    clean_env.setenv("OTEL_SERVICE_NAME", "warden-unit")
    clean_env.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment.name=test,team=agents")
    exporter = InMemorySpanExporter()
    telemetry = Telemetry.with_processor(SimpleSpanProcessor(exporter))
    telemetry.begin("GET", "/", "http", "h:1", {}).end(200)
    [span] = exporter.get_finished_spans()
    resource = span.resource.attributes
    assert resource["service.name"] == "warden-unit"
    assert resource["deployment.environment.name"] == "test"
    assert resource["team"] == "agents"


def test_from_env_exports_to_the_endpoint_it_was_given(clean_env: pytest.MonkeyPatch) -> None:
    # Bounded: an export that goes elsewhere gives up within a second.
    clean_env.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "1")
    with OtlpReceiver() as receiver:
        telemetry = from_env(
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
                "OTEL_METRICS_EXPORTER": "none",
                "OTEL_SERVICE_NAME": "warden-from-env",
            }
        )
        header, trace_id, parent_id = traceparent()
        telemetry.begin("GET", "/x", "http", "h:1", {"traceparent": header}).end(200)
        telemetry.shutdown()  # flushes what the batch processor holds
        spans = receiver.spans(lambda s: s.trace_id == trace_id)
    assert [(s.kind, s.parent_span_id) for s in spans] == [("SERVER", parent_id)]
    assert spans[0].resource["service.name"] == "warden-from-env"


async def test_prompts_and_resources_carry_their_mcp_attributes() -> None:
    """`prompts/get {name}` names the span; resources/* carry mcp.resource.uri."""
    from proxy.protocols.classify import classify
    from proxy.telemetry import span_attributes

    headers = {"Content-Type": "application/json", "Mcp-Session-Id": "s"}
    prompt = b'{"jsonrpc":"2.0","id":1,"method":"prompts/get","params":{"name":"greet"}}'
    attributes, name = span_attributes(classify("POST", "/mcp", headers, prompt), headers)
    assert (name, attributes["gen_ai.prompt.name"]) == ("prompts/get greet", "greet")
    read = b'{"jsonrpc":"2.0","id":2,"method":"resources/read","params":{"uri":"file:///a"}}'
    attributes, name = span_attributes(classify("POST", "/mcp", headers, read), headers)
    assert (name, attributes["mcp.resource.uri"]) == ("resources/read", "file:///a")
