"""Every MCP era through the proxy, with and without a policy.

Eras, each driven both on the wire (raw httpx) and by the official `mcp` 2.3 client:

- "2026": MCP 2026-07-28 stateless requests, judged in the agent's window
  (`Client(..., mode="2026-07-28")`);
- "auto": the same, after a `server/discover` probe (`Client(..., mode="auto")`), which
  is never counted;
- "2025": streamable HTTP with `Mcp-Session-Id` protocol sessions (`mode="legacy"`);
- "2024": HTTP+SSE, the session named by the `endpoint` event (`sse_client`), whose
  answers, denials included, travel on the GET stream while the POST gets 202.

The upstreams are the SDK's own servers (`tests/upstreams/mcp_eras.py`) on loopback; the
proxy runs as a process. One policy file (written to a temporary directory) gives each
behaviour its own policy, picked by agent-id prefix, and every test uses fresh agent ids.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import httpx
import httpx2
import pytest
from mcp import Client, MCPError
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client

from tests.conftest import Proxy, RunProxy
from tests.upstreams import mcp_eras
from tests.upstreams.mcp_eras import MCP_PATH, SSE_PATH, TOOL_NAMES, Seen, WireRecorder
from tests.upstreams.serve import ThreadedServer

pytestmark = pytest.mark.timeout(60)

MODERN = "2026-07-28"
HANDSHAKE = "2025-11-25"
SSE_VERSION = "2024-11-05"
ACCEPT = "application/json, text/event-stream"
AGENT = "x-agent-id"
MARKER = "x-warden-test"
DOMAIN = "agent-warden.dev"
ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"
RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo"
META = {
    "io.modelcontextprotocol/protocolVersion": MODERN,
    "io.modelcontextprotocol/clientCapabilities": {},
    "io.modelcontextprotocol/clientInfo": {"name": "warden-eras-e2e", "version": "0"},
}

# errors.md section 2, stated here rather than imported from the proxy.
REASONS: dict[str, tuple[str, int]] = {
    "SESSION_NOT_FOUND": ("session not found", -31060),
    "SESSION_EXPIRED": ("session expired", -31061),
    "SESSION_CLOSED": ("session already closed", -31062),
    "SESSION_BUDGET_EXCEEDED": ("session budget exceeded", -31063),
    "TOOL_NOT_AUTHORIZED": ("tool not authorized in session", -31064),
    "SESSION_RATE_LIMITED": ("session rate limit exceeded", -31065),
    "TOO_MANY_SESSIONS": ("too many concurrent sessions", -31066),
    "AGENT_MISMATCH": ("agent mismatch", -31067),
    "METHOD_NOT_AUTHORIZED": ("method not authorized in session", -31069),
    "ORIGIN_NOT_ALLOWED": ("origin not allowed", -31071),
    "HEADER_MISMATCH": ("header mismatch", -32020),
}
SESSION_GONE = frozenset({"SESSION_NOT_FOUND", "SESSION_EXPIRED", "SESSION_CLOSED"})
MCP_SESSION_GONE = -32005  # a gone 2025-era Mcp-Session-Id session: HTTP 404
UPSTREAM_ERROR_CODE = -32603
WHOLE_SECONDS = re.compile(r"[1-9]\d*s")

ERAS = ("2026", "auto", "2025", "2024")
SESSION_ERAS = ("2025", "2024")  # eras with protocol sessions (capped; agent-bound)
CLIENT_MODE = {"2026": MODERN, "auto": "auto", "2025": "legacy", "2024": "legacy"}

ALLOWED_ORIGIN = "https://app.example.com"
POLICY = f"""\
version: 1
identity: {{header: X-Agent-Id}}
origins:
  allow: ["{ALLOWED_ORIGIN}"]
policies:
  - name: budget-three
    match: {{agents: ["budget-*"]}}
    budget: {{calls: 3}}
  - name: add-quota
    match: {{agents: ["quota-*"]}}
    budget: {{tools: {{add: 2}}}}
  - name: tool-guard
    match: {{agents: ["guard-*"]}}
    tools: {{allow: ["echo", "add", "lookup_*"], deny: ["*_admin"]}}
  - name: method-guard
    match: {{agents: ["methods-*"]}}
    methods: {{deny: ["prompts/*", "resources/*"]}}
  - name: rate-pair
    match: {{agents: ["rate-*"]}}
    rate_limit: {{per_minute: 2}}
  - name: ttl-short
    match: {{agents: ["ttl-*"]}}
    session: {{ttl: 1s}}
  - name: idle-short
    match: {{agents: ["idle-*"]}}
    session: {{idle_timeout: 1s}}
  - name: cap-single
    match: {{agents: ["cap-*"]}}
    session: {{max_per_agent: 1}}
"""
GUARD_VISIBLE = {"echo", "add", "lookup_customer"}
EXPIRY_WAIT = 1.3  # past the 1 s ttl / idle_timeout of the policy above


def fresh(prefix: str) -> str:
    """A new agent id under `prefix` (the policy file selects by prefix)."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


async def eventually(probe: Callable[[], Any], *, within: float = 10.0) -> Any:
    """Call (and await) `probe()` every 50 ms until it is truthy; fail after `within` s."""
    deadline = time.monotonic() + within
    while True:
        value = probe()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {within}s", pytrace=False)
        await asyncio.sleep(0.05)


# --- upstreams and proxies ----------------------------------------------------------------


@pytest.fixture(scope="module")
def streamable_upstream() -> Iterator[ThreadedServer]:
    with ThreadedServer(lambda _: mcp_eras.streamable_app()) as server:
        yield server


@pytest.fixture(scope="module")
def sse_upstream() -> Iterator[ThreadedServer]:
    with ThreadedServer(lambda _: mcp_eras.sse_app()) as server:
        yield server


@pytest.fixture(scope="module")
def legacy_only_upstream() -> Iterator[ThreadedServer]:
    with ThreadedServer(lambda _: mcp_eras.legacy_only_app()) as server:
        yield server


@pytest.fixture(scope="module")
def status_upstream() -> Iterator[ThreadedServer]:
    with ThreadedServer(lambda _: mcp_eras.status_app()) as server:
        yield server


@pytest.fixture(scope="module")
def policy_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("eras") / "policy.yaml"
    path.write_text(POLICY)
    return path


@dataclass
class Stack:
    """A proxy in front of one upstream, and what that upstream received."""

    proxy: Proxy
    upstream: ThreadedServer

    @property
    def seen(self) -> WireRecorder:
        app = self.upstream.app
        assert isinstance(app, WireRecorder)
        return app

    @property
    def endpoint(self) -> str:
        return self.proxy.url + MCP_PATH

    @property
    def sse_url(self) -> str:
        return self.proxy.url + SSE_PATH

    def marked(self, marker: str) -> list[Seen]:
        return self.seen.marked(MARKER, marker)


@dataclass
class Stacks:
    """The streamable-HTTP stack (eras 2026, auto, 2025) and the HTTP+SSE one (2024)."""

    streamable: Stack
    sse: Stack

    def of(self, era: str) -> Stack:
        return self.sse if era == "2024" else self.streamable


@pytest.fixture(scope="module")
def plain(
    run_proxy_module: RunProxy, streamable_upstream: ThreadedServer, sse_upstream: ThreadedServer
) -> Stacks:
    """No --policy: the transparent built-in default."""
    return Stacks(
        Stack(run_proxy_module(streamable_upstream.url), streamable_upstream),
        Stack(run_proxy_module(sse_upstream.url), sse_upstream),
    )


@pytest.fixture(scope="module")
def policed(
    run_proxy_module: RunProxy,
    streamable_upstream: ThreadedServer,
    sse_upstream: ThreadedServer,
    policy_file: Path,
) -> Stacks:
    policy = ("--policy", str(policy_file))
    return Stacks(
        Stack(run_proxy_module(streamable_upstream.url, *policy), streamable_upstream),
        Stack(run_proxy_module(sse_upstream.url, *policy), sse_upstream),
    )


@pytest.fixture(scope="module")
def status_stack(run_proxy_module: RunProxy, status_upstream: ThreadedServer) -> Stack:
    return Stack(run_proxy_module(status_upstream.url), status_upstream)


@pytest.fixture
async def web() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=httpx.Timeout(30.0)) as client:
        yield client


async def admin_sessions(proxy: Proxy) -> list[dict[str, Any]]:
    """`GET /sessions` on the admin listener."""
    async with httpx.AsyncClient(timeout=10.0) as client:
        response = await client.get(proxy.admin_url + "/sessions")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["count"] == len(body["sessions"]), body
    return list(body["sessions"])


async def sessions_of(proxy: Proxy, agent: str) -> list[dict[str, Any]]:
    return [s for s in await admin_sessions(proxy) if s["agent"] == agent]


# --- what an answer must look like ----------------------------------------------------------


def sse_messages(body: str) -> list[dict[str, Any]]:
    """The JSON-RPC messages in the `data:` lines of an SSE body."""
    return [
        json.loads(line[5:])
        for line in body.splitlines()
        if line.startswith("data:") and line[5:].strip()
    ]


def check_error(
    error: Mapping[str, Any], reason: str, *, code: int | None = None
) -> Mapping[str, Any]:
    """A proxy denial's JSON-RPC `error` object; returns its ErrorInfo."""
    message, table_code = REASONS[reason]
    assert error["code"] == (table_code if code is None else code), error
    assert error["message"] == message, error
    data = error.get("data")
    assert isinstance(data, list), error
    assert data, error
    infos: list[Mapping[str, Any]] = [d for d in data if d.get("@type") == ERROR_INFO]
    assert len(infos) == 1, data
    info = infos[0]
    assert info["reason"] == reason, info
    assert info["domain"] == DOMAIN, info
    retry = [d for d in data if d.get("@type") == RETRY_INFO]
    if reason == "SESSION_RATE_LIMITED":
        assert len(retry) == 1, data
        assert WHOLE_SECONDS.fullmatch(retry[0]["retryDelay"]), retry
    else:
        assert retry == [], data
    return info


def retry_seconds(error: Mapping[str, Any]) -> int:
    delay = next(d["retryDelay"] for d in error["data"] if d.get("@type") == RETRY_INFO)
    return int(delay.removesuffix("s"))


@dataclass
class Answer:
    """One request sent by a raw session, and how it was answered.

    `status` and `headers` are those of the HTTP exchange that carried the request (for
    the 2024 era: the POST, whose answer arrives on the GET stream as `message`).
    """

    era: str
    sent: dict[str, Any]
    status: int
    headers: httpx.Headers
    message: dict[str, Any]
    text: str = ""

    @property
    def ok_status(self) -> int:
        return 202 if self.era == "2024" else 200

    def result(self) -> dict[str, Any]:
        assert self.status == self.ok_status, (self.era, self.status, self.text, self.message)
        assert "result" in self.message, (self.era, self.message)
        assert self.message["id"] == self.sent["id"], self.message
        result = self.message["result"]
        assert isinstance(result, dict)
        return result

    def tool_text(self) -> str:
        result = self.result()
        assert result.get("isError") is not True, result
        return str(result["content"][0]["text"])

    def denied(self, reason: str) -> Mapping[str, Any]:
        """The whole denial on the wire: HTTP status, envelope, code, ErrorInfo."""
        gone_2025 = self.era == "2025" and reason in SESSION_GONE
        status = 404 if gone_2025 else self.ok_status
        assert self.status == status, (self.era, reason, self.status, self.text, self.message)
        assert set(self.message) == {"jsonrpc", "id", "error"}, self.message
        assert self.message["jsonrpc"] == "2.0"
        assert self.message["id"] == self.sent["id"], self.message
        code = MCP_SESSION_GONE if gone_2025 else None
        info = check_error(self.message["error"], reason, code=code)
        if self.era != "2024":
            assert self.headers["content-type"].startswith("application/json"), self.headers
            if reason == "SESSION_RATE_LIMITED":
                seconds = retry_seconds(self.message["error"])
                assert self.headers.get("retry-after") == str(seconds), self.headers
        return info


def parse_answer(response: httpx.Response) -> dict[str, Any]:
    """The single JSON-RPC response in a streamable-HTTP answer (JSON or SSE)."""
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        messages = sse_messages(response.text)
    else:
        messages = [response.json()]
    answers = [m for m in messages if "result" in m or "error" in m]
    assert len(answers) == 1, (response.status_code, response.text)
    return answers[0]


# --- raw sessions, one per era -------------------------------------------------------------


@dataclass
class RawBase:
    http: httpx.AsyncClient
    stack: Stack
    agent: str | None
    era: str
    marker: str = field(default_factory=lambda: uuid.uuid4().hex)
    extra: dict[str, str] = field(default_factory=dict)
    _ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def base_headers(self) -> dict[str, str]:
        headers = {"accept": ACCEPT, "content-type": "application/json", MARKER: self.marker}
        if self.agent is not None:
            headers[AGENT] = self.agent
        headers.update(self.extra)
        return headers

    def next_id(self) -> int:
        return next(self._ids)

    async def request(self, method: str, params: dict[str, Any] | None = None) -> Answer:
        raise NotImplementedError

    async def call_tool(self, name: str, **arguments: Any) -> Answer:
        return await self.request("tools/call", {"name": name, "arguments": arguments})

    async def echo(self, text: str = "hi") -> Answer:
        return await self.call_tool("echo", text=text)

    def upstream_saw(self) -> list[Seen]:
        return self.stack.marked(self.marker)

    def upstream_methods(self) -> list[str | None]:
        return [r.rpc_method for r in self.upstream_saw() if r.method == "POST"]


@dataclass
class Raw2026(RawBase):
    """MCP 2026-07-28: every request stands alone, with its routing headers and `_meta`."""

    def message(self, method: str, params: dict[str, Any] | None) -> dict[str, Any]:
        body_params = {**(params or {}), "_meta": META}
        return {"jsonrpc": "2.0", "id": self.next_id(), "method": method, "params": body_params}

    def routing(self, message: dict[str, Any]) -> dict[str, str]:
        headers = {"mcp-protocol-version": MODERN, "mcp-method": message["method"]}
        params = message.get("params") or {}
        if message["method"] in ("tools/call", "prompts/get"):
            headers["mcp-name"] = params["name"]
        elif message["method"] == "resources/read":
            headers["mcp-name"] = params["uri"]
        return headers

    async def send(
        self, message: dict[str, Any], headers: Mapping[str, str] | None = None
    ) -> httpx.Response:
        merged = {**self.base_headers(), **self.routing(message), **(headers or {})}
        return await self.http.post(self.stack.endpoint, json=message, headers=merged)

    async def request(self, method: str, params: dict[str, Any] | None = None) -> Answer:
        message = self.message(method, params)
        response = await self.send(message)
        return Answer(
            self.era, message, response.status_code, response.headers, parse_answer(response)
        )


@dataclass
class Raw2025(RawBase):
    """Streamable HTTP with an `Mcp-Session-Id` session (opened by `initialize`)."""

    session: str | None = None

    def headers(self, initialize: bool = False) -> dict[str, str]:
        headers = self.base_headers()
        if not initialize:
            headers["mcp-protocol-version"] = HANDSHAKE
        if self.session is not None and not initialize:
            headers["mcp-session-id"] = self.session
        return headers

    async def initialize(self) -> tuple[Answer, str | None]:
        message = {
            "jsonrpc": "2.0",
            "id": self.next_id(),
            "method": "initialize",
            "params": {
                "protocolVersion": HANDSHAKE,
                "capabilities": {},
                "clientInfo": {"name": "warden-eras-e2e", "version": "0"},
            },
        }
        response = await self.http.post(
            self.stack.endpoint, json=message, headers=self.headers(initialize=True)
        )
        answer = Answer(
            self.era, message, response.status_code, response.headers, parse_answer(response)
        )
        return answer, response.headers.get("mcp-session-id")

    async def open(self) -> str:
        answer, session = await self.initialize()
        answer.result()
        assert session, answer.headers
        self.session = session
        initialized = await self.http.post(
            self.stack.endpoint,
            json={"jsonrpc": "2.0", "method": "notifications/initialized"},
            headers=self.headers(),
        )
        assert initialized.status_code == 202, initialized.text
        return session

    async def request(self, method: str, params: dict[str, Any] | None = None) -> Answer:
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": self.next_id(), "method": method}
        if params is not None:
            message["params"] = params
        response = await self.http.post(self.stack.endpoint, json=message, headers=self.headers())
        return Answer(
            self.era,
            message,
            response.status_code,
            response.headers,
            parse_answer(response),
            response.text,
        )

    async def delete(self) -> httpx.Response:
        return await self.http.delete(self.stack.endpoint, headers=self.headers())


@dataclass
class Raw2024(RawBase):
    """MCP 2024-11-05 HTTP+SSE: a GET stream names the message endpoint; POSTs get 202 and
    their answers arrive on the stream."""

    endpoint: str | None = None
    status: int | None = None
    stream_headers: httpx.Headers | None = None
    events: list[tuple[str, str]] = field(default_factory=list)
    ended: bool = False
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None

    def messages(self) -> list[dict[str, Any]]:
        return [json.loads(data) for kind, data in self.events if kind == "message" and data]

    async def _read(self, ready: asyncio.Future[None]) -> None:
        headers = self.base_headers()
        headers["accept"] = "text/event-stream"
        headers.pop("content-type")
        try:
            async with self.http.stream(
                "GET", self.stack.sse_url, headers=headers, timeout=httpx.Timeout(30.0, read=None)
            ) as response:
                self.status = response.status_code
                self.stream_headers = response.headers
                if response.status_code != 200:
                    await response.aread()
                    self.events.append(("refused", response.text))
                    ready.set_result(None)
                    return
                kind, data = "message", list[str]()
                async for line in response.aiter_lines():
                    if line == "":
                        if data:
                            self._dispatch(kind, "\n".join(data), ready)
                        kind, data = "message", []
                    elif line.startswith(":"):
                        continue
                    else:
                        name, _, value = line.partition(":")
                        value = value.removeprefix(" ")
                        if name == "event":
                            kind = value
                        elif name == "data":
                            data.append(value)
        finally:
            self.ended = True
            self._arrived.set()
            if not ready.done():
                ready.set_result(None)

    def _dispatch(self, kind: str, data: str, ready: asyncio.Future[None]) -> None:
        self.events.append((kind, data))
        if kind == "endpoint" and self.endpoint is None:
            self.endpoint = urljoin(self.stack.sse_url, data)
            if not ready.done():
                ready.set_result(None)
        self._arrived.set()

    async def connect(self) -> None:
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._read(ready))
        await asyncio.wait_for(ready, 10.0)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError, httpx.HTTPError):
                await self._task

    async def answer(self, request_id: Any, within: float = 10.0) -> dict[str, Any]:
        """The response with this id, as it arrives on the stream."""
        deadline = time.monotonic() + within
        while True:
            found = [
                m
                for m in self.messages()
                if m.get("id") == request_id and ("result" in m or "error" in m)
            ]
            if found:
                assert len(found) == 1, found
                return found[0]
            left = deadline - time.monotonic()
            if left <= 0 or self.ended:
                pytest.fail(f"no answer to id {request_id!r} on the stream: {self.events}")
            self._arrived.clear()
            with suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), left)

    async def post(
        self, message: dict[str, Any], headers: Mapping[str, str] | None = None
    ) -> httpx.Response:
        assert self.endpoint is not None, self.events
        merged = {**self.base_headers(), **(headers or {})}
        return await self.http.post(self.endpoint, json=message, headers=merged)

    async def request(self, method: str, params: dict[str, Any] | None = None) -> Answer:
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": self.next_id(), "method": method}
        if params is not None:
            message["params"] = params
        response = await self.post(message)
        answer = await self.answer(message["id"])
        return Answer(self.era, message, response.status_code, response.headers, answer)

    async def initialize(self) -> Answer:
        return await self.request(
            "initialize",
            {
                "protocolVersion": SSE_VERSION,
                "capabilities": {},
                "clientInfo": {"name": "warden-eras-e2e", "version": "0"},
            },
        )

    async def open(self) -> None:
        await self.connect()
        assert self.status == 200, self.events
        assert self.endpoint is not None, self.events
        (await self.initialize()).result()
        initialized = await self.post({"jsonrpc": "2.0", "method": "notifications/initialized"})
        assert initialized.status_code == 202, initialized.text


@asynccontextmanager
async def raw_session(
    era: str, stack: Stack, http: httpx.AsyncClient, agent: str | None
) -> AsyncIterator[RawBase]:
    """A live raw session of the era: a window (2026, auto), an initialized 2025 session
    (deleted at the end), or an initialized 2024 stream (closed at the end)."""
    if era in ("2026", "auto"):
        raw26 = Raw2026(http, stack, agent, era)
        if era == "auto":
            probe = await raw26.request("server/discover")
            assert MODERN in probe.result()["supportedVersions"], probe.message
        yield raw26
    elif era == "2025":
        raw25 = Raw2025(http, stack, agent, era)
        await raw25.open()
        try:
            yield raw25
        finally:
            await raw25.delete()
    else:
        raw24 = Raw2024(http, stack, agent, era)
        try:
            await raw24.open()
            yield raw24
        finally:
            await raw24.close()


# --- the official client, one per era -------------------------------------------------------


@asynccontextmanager
async def sdk_client(era: str, stack: Stack, agent: str | None) -> AsyncIterator[Client]:
    """The official client of the era, connected through the proxy as `agent`."""
    headers = {MARKER: uuid.uuid4().hex}
    if agent is not None:
        headers[AGENT] = agent
    async with AsyncExitStack() as stack_:
        if era == "2024":
            transport: Any = sse_client(stack.sse_url, headers=headers, timeout=10.0)
        else:
            http = await stack_.enter_async_context(
                httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30.0))
            )
            transport = streamable_http_client(stack.endpoint, http_client=http)
        client = await stack_.enter_async_context(
            Client(transport, mode=CLIENT_MODE[era], cache=None, read_timeout_seconds=15.0)
        )
        yield client


def mcp_error_in(exc: BaseException, seen: set[int] | None = None) -> MCPError | None:
    """The MCPError in an exception (group, or its cause chain), if any."""
    seen = set() if seen is None else seen
    if id(exc) in seen:
        return None
    seen.add(id(exc))
    if isinstance(exc, MCPError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = mcp_error_in(inner, seen)
            if found is not None:
                return found
    cause = exc.__cause__ or exc.__context__
    return mcp_error_in(cause, seen) if cause is not None else None


async def client_error(action: Awaitable[Any]) -> MCPError:
    """The MCPError an awaited client action raises (fails if it succeeds)."""
    try:
        value = await action
    except BaseException as exc:  # an ExceptionGroup may carry it
        found = mcp_error_in(exc)
        if found is None:
            raise
        return found
    pytest.fail(f"the client action succeeded: {value!r}", pytrace=False)


async def refused_client(era: str, stack: Stack, agent: str) -> MCPError:
    """The MCPError raised while the client of the era connects."""

    async def connect() -> None:
        async with sdk_client(era, stack, agent):
            pass

    return await client_error(asyncio.wait_for(connect(), 20.0))


def check_client_error(exc: MCPError, reason: str, *, code: int | None = None) -> None:
    error = {"code": exc.code, "message": exc.error.message, "data": exc.error.data}
    check_error(error, reason, code=code)


def texts(result: Any) -> str:
    return str(result.content[0].text)


# --- 1. no policy: every client lists and calls --------------------------------------------


@pytest.mark.parametrize("era", ERAS)
async def test_no_policy_client_lists_and_calls(era: str, plain: Stacks) -> None:
    stack = plain.of(era)
    async with sdk_client(era, stack, fresh("open")) as client:
        tools = await client.list_tools()
        added = await client.call_tool("add", {"a": 2, "b": 40})
        echoed = await client.call_tool("echo", {"text": "h\u00e9llo"})
        version = client.protocol_version
    assert sorted(t.name for t in tools.tools) == sorted(TOOL_NAMES)
    assert texts(added) == "42"
    assert texts(echoed) == "h\u00e9llo"
    if era in ("2026", "auto"):
        assert version == MODERN
    else:
        assert version != MODERN


async def test_auto_mode_is_not_downgraded(plain: Stacks) -> None:
    """Against a 2026-capable upstream, auto mode stays modern through the proxy: the
    upstream sees `server/discover` and never `initialize`."""
    stack = plain.streamable
    marker = uuid.uuid4().hex
    http = httpx2.AsyncClient(headers={MARKER: marker, AGENT: fresh("auto")})
    async with http, Client(streamable_http_client(stack.endpoint, http_client=http)) as client:
        assert client.protocol_version == MODERN
        await client.call_tool("add", {"a": 1, "b": 1})
    seen = stack.marked(marker)
    methods = [r.rpc_method for r in seen if r.method == "POST"]
    assert methods[0] == "server/discover", methods
    assert "initialize" not in methods, methods
    assert "tools/call" in methods
    assert all(r.method == "POST" for r in seen), [(r.method, r.path) for r in seen]
    assert all("mcp-session-id" not in r.headers for r in seen)
    assert all(r.headers.get("mcp-protocol-version") == MODERN for r in seen)
    assert all(r.status == 200 for r in seen), [(r.rpc_method, r.status) for r in seen]


async def test_auto_mode_falls_back_through_the_proxy(
    run_proxy_module: RunProxy, legacy_only_upstream: ThreadedServer
) -> None:
    """Against a 2025-only upstream (bare 400 to a 2026 request), auto mode still finds
    the handshake era through the proxy: the upstream's 400 keeps its status, and its
    body, made a JSON-RPC error, is not a modern error that would stop the fallback."""
    stack = Stack(run_proxy_module(legacy_only_upstream.url), legacy_only_upstream)
    marker = uuid.uuid4().hex
    statuses: list[tuple[str, int, str]] = []

    async def on_response(response: httpx2.Response) -> None:
        content_type = response.headers.get("content-type", "")
        statuses.append((response.request.method, response.status_code, content_type))

    http = httpx2.AsyncClient(
        headers={MARKER: marker, AGENT: fresh("fallback")},
        event_hooks={"response": [on_response]},
    )
    async with http, Client(streamable_http_client(stack.endpoint, http_client=http)) as client:
        assert client.protocol_version != MODERN
        assert texts(await client.call_tool("add", {"a": 20, "b": 22})) == "42"
    methods = [(r.rpc_method, r.status) for r in stack.marked(marker) if r.method == "POST"]
    assert methods[0] == ("server/discover", 400), methods
    assert ("initialize", 200) in methods, methods
    # What the client saw of the refused probe: the upstream's 400, in a JSON-RPC body.
    assert statuses[0][1:] == (400, "application/json"), statuses


# --- 2. every condition of a policy, in every era ---------------------------------------------


@pytest.mark.parametrize("era", ERAS)
async def test_call_budget(era: str, policed: Stacks, web: httpx.AsyncClient) -> None:
    stack = policed.of(era)
    async with raw_session(era, stack, web, fresh("budget")) as raw:
        assert len((await raw.request("tools/list")).result()["tools"]) == len(TOOL_NAMES)
        assert (await raw.echo("one")).tool_text() == "one"
        assert (await raw.call_tool("add", a=1, b=2)).tool_text() == "3"
        denied = await raw.echo("four")
        info = denied.denied("SESSION_BUDGET_EXCEEDED")
        assert info["metadata"].get("tool") == "echo", info
        # A denied request is not forwarded (and not counted: still denied, same reason).
        (await raw.request("tools/list")).denied("SESSION_BUDGET_EXCEEDED")
        assert raw.upstream_methods().count("tools/call") == 2, raw.upstream_methods()
        listed = await sessions_of(stack.proxy, raw.agent or "")
        assert [s["calls_used"] for s in listed] == [3], listed

    async with sdk_client(era, stack, fresh("budget")) as client:
        await client.list_tools()
        await client.call_tool("echo", {"text": "a"})
        await client.call_tool("echo", {"text": "b"})
        exc = await client_error(client.call_tool("echo", {"text": "c"}))
    check_client_error(exc, "SESSION_BUDGET_EXCEEDED")


@pytest.mark.parametrize("era", ERAS)
async def test_per_tool_budget(era: str, policed: Stacks, web: httpx.AsyncClient) -> None:
    stack = policed.of(era)
    async with raw_session(era, stack, web, fresh("quota")) as raw:
        assert (await raw.call_tool("add", a=1, b=1)).tool_text() == "2"
        assert (await raw.call_tool("add", a=2, b=2)).tool_text() == "4"
        info = (await raw.call_tool("add", a=3, b=3)).denied("SESSION_BUDGET_EXCEEDED")
        assert info["metadata"].get("tool") == "add", info
        # Other tools are not limited.
        assert (await raw.echo("still")).tool_text() == "still"

    async with sdk_client(era, stack, fresh("quota")) as client:
        await client.list_tools()
        await client.call_tool("add", {"a": 1, "b": 1})
        await client.call_tool("add", {"a": 1, "b": 1})
        exc = await client_error(client.call_tool("add", {"a": 1, "b": 1}))
        assert texts(await client.call_tool("echo", {"text": "x"})) == "x"
    check_client_error(exc, "SESSION_BUDGET_EXCEEDED")


@pytest.mark.parametrize("era", ERAS)
async def test_tool_deny(era: str, policed: Stacks, web: httpx.AsyncClient) -> None:
    stack = policed.of(era)
    async with raw_session(era, stack, web, fresh("guard")) as raw:
        denied = await raw.call_tool("delete_admin", user="root")
        assert denied.denied("TOOL_NOT_AUTHORIZED")["metadata"].get("tool") == "delete_admin"
        # Not in the allow list either.
        (await raw.call_tool("refund_payment", payment_id="p", amount=1.0)).denied(
            "TOOL_NOT_AUTHORIZED"
        )
        assert (await raw.echo("ok")).tool_text() == "ok"
        calls = [
            r.json()["params"]["name"] for r in raw.upstream_saw() if r.rpc_method == "tools/call"
        ]
        assert calls == ["echo"], calls

    async with sdk_client(era, stack, fresh("guard")) as client:
        exc = await client_error(client.call_tool("delete_admin", {"user": "root"}))
    check_client_error(exc, "TOOL_NOT_AUTHORIZED")


@pytest.mark.parametrize("era", ERAS)
async def test_method_deny(era: str, policed: Stacks, web: httpx.AsyncClient) -> None:
    stack = policed.of(era)
    async with raw_session(era, stack, web, fresh("methods")) as raw:
        (await raw.request("prompts/list")).denied("METHOD_NOT_AUTHORIZED")
        denied = await raw.request("prompts/get", {"name": "greeting", "arguments": {"who": "x"}})
        assert denied.denied("METHOD_NOT_AUTHORIZED")["metadata"].get("method") == "prompts/get"
        (await raw.request("resources/list")).denied("METHOD_NOT_AUTHORIZED")
        assert (await raw.echo("fine")).tool_text() == "fine"
        assert not {"prompts/list", "prompts/get", "resources/list"} & set(raw.upstream_methods())

    async with sdk_client(era, stack, fresh("methods")) as client:
        exc = await client_error(client.list_prompts())
    check_client_error(exc, "METHOD_NOT_AUTHORIZED")


@pytest.mark.parametrize("era", ERAS)
async def test_rate_limit(era: str, policed: Stacks, web: httpx.AsyncClient) -> None:
    stack = policed.of(era)
    async with raw_session(era, stack, web, fresh("rate")) as raw:
        assert (await raw.echo("1")).tool_text() == "1"
        assert (await raw.echo("2")).tool_text() == "2"
        denied = await raw.echo("3")
        denied.denied("SESSION_RATE_LIMITED")  # RetryInfo in whole seconds, and Retry-After
        assert 1 <= retry_seconds(denied.message["error"]) <= 60

    async with sdk_client(era, stack, fresh("rate")) as client:
        await client.list_tools()
        await client.call_tool("echo", {"text": "a"})
        exc = await client_error(client.call_tool("echo", {"text": "b"}))
    check_client_error(exc, "SESSION_RATE_LIMITED")


async def _ttl_raw(era: str, stack: Stack, http: httpx.AsyncClient, prefix: str) -> None:
    agent = fresh(prefix)
    async with raw_session(era, stack, http, agent) as raw:
        assert (await raw.echo("before")).tool_text() == "before"
        before = await sessions_of(stack.proxy, agent)
        assert len(before) == 1, before
        await asyncio.sleep(EXPIRY_WAIT)
        after = await raw.echo("after")
        if era in ("2026", "auto"):
            # A window that ended is not an error: the next request opens a new one.
            assert after.tool_text() == "after"
            now = await sessions_of(stack.proxy, agent)
            assert [s["kind"] for s in now] == ["window"], now
            assert now[0]["id"] != before[0]["id"], (before, now)
            assert now[0]["calls_used"] == 1, now
        else:
            after.denied("SESSION_EXPIRED")
            assert await sessions_of(stack.proxy, agent) == []


async def _ttl_client(era: str, stack: Stack, prefix: str) -> None:
    async with sdk_client(era, stack, fresh(prefix)) as client:
        await client.call_tool("echo", {"text": "before"})
        await asyncio.sleep(EXPIRY_WAIT)
        if era in ("2026", "auto"):
            assert texts(await client.call_tool("echo", {"text": "after"})) == "after"
            return
        exc = await client_error(client.call_tool("echo", {"text": "after"}))
    code = MCP_SESSION_GONE if era == "2025" else None
    check_client_error(exc, "SESSION_EXPIRED", code=code)


@pytest.mark.parametrize("era", ERAS)
async def test_ttl_expiry(era: str, policed: Stacks, web: httpx.AsyncClient) -> None:
    stack = policed.of(era)
    await asyncio.gather(_ttl_raw(era, stack, web, "ttl"), _ttl_client(era, stack, "ttl"))


@pytest.mark.parametrize("era", ERAS)
async def test_idle_expiry(era: str, policed: Stacks, web: httpx.AsyncClient) -> None:
    stack = policed.of(era)
    await asyncio.gather(_ttl_raw(era, stack, web, "idle"), _ttl_client(era, stack, "idle"))


async def test_cap_2025(policed: Stacks, web: httpx.AsyncClient) -> None:
    stack = policed.streamable
    agent = fresh("cap")
    first = Raw2025(web, stack, agent, "2025")
    await first.open()
    second = Raw2025(web, stack, agent, "2025")
    refused, session = await second.initialize()
    refused.denied("TOO_MANY_SESSIONS")
    assert session is None, refused.headers
    # The refused initialize never reached the upstream.
    assert second.upstream_saw() == []
    # Through the official client: refused while it connects.
    exc = await refused_client("2025", stack, agent)
    check_client_error(exc, "TOO_MANY_SESSIONS")
    # Windows are not capped: the same agent's stateless requests still pass.
    async with raw_session("2026", stack, web, agent) as modern:
        assert (await modern.echo("window")).tool_text() == "window"
    async with sdk_client("2026", stack, agent) as client:
        assert texts(await client.call_tool("echo", {"text": "w"})) == "w"
    # DELETE frees the place.
    assert (await first.delete()).status_code == 200
    third = Raw2025(web, stack, agent, "2025")
    await third.open()
    await third.delete()


async def test_cap_2024(policed: Stacks, web: httpx.AsyncClient) -> None:
    stack = policed.sse
    agent = fresh("cap")
    first = Raw2024(web, stack, agent, "2024")
    second = Raw2024(web, stack, agent, "2024")
    try:
        await first.open()
        await second.connect()
        assert second.status == 200, second.events
        refused = await second.initialize()
        refused.denied("TOO_MANY_SESSIONS")
        assert "initialize" not in second.upstream_methods()
        exc = await refused_client("2024", stack, agent)
        check_client_error(exc, "TOO_MANY_SESSIONS")
    finally:
        await first.close()
        await second.close()
    # The end of the stream closed the session: a new one fits under the cap.
    await eventually(lambda: _no_sessions(stack.proxy, agent))
    async with sdk_client("2024", stack, agent) as client:
        assert texts(await client.call_tool("echo", {"text": "again"})) == "again"


async def _no_sessions(proxy: Proxy, agent: str) -> bool:
    return await sessions_of(proxy, agent) == []


async def test_windows_are_not_capped(policed: Stacks, web: httpx.AsyncClient) -> None:
    """A capped agent (max_per_agent 1) with several concurrent stateless clients."""
    stack = policed.streamable
    agent = fresh("cap")
    async with (
        sdk_client("2026", stack, agent) as one,
        sdk_client("auto", stack, agent) as two,
        sdk_client("2026", stack, agent) as three,
    ):
        results = await asyncio.gather(
            *(c.call_tool("echo", {"text": str(i)}) for i, c in enumerate((one, two, three)))
        )
    assert [texts(r) for r in results] == ["0", "1", "2"]
    listed = await sessions_of(stack.proxy, agent)
    assert [s["kind"] for s in listed] == ["window"], listed


async def test_agent_mismatch_2025(policed: Stacks, web: httpx.AsyncClient) -> None:
    stack = policed.streamable
    owner = Raw2025(web, stack, fresh("owner"), "2025")
    session = await owner.open()
    intruder = Raw2025(web, stack, fresh("intruder"), "2025", session=session)
    denied = await intruder.echo("not yours")
    info = denied.denied("AGENT_MISMATCH")
    assert info["metadata"].get("sessionId") == session, info
    assert intruder.upstream_saw() == []
    # The owner's session is untouched.
    assert (await owner.echo("mine")).tool_text() == "mine"
    listed = await sessions_of(stack.proxy, owner.agent or "")
    assert [s["calls_used"] for s in listed] == [1], listed
    await owner.delete()


async def test_agent_mismatch_2024(policed: Stacks, web: httpx.AsyncClient) -> None:
    """Another agent POSTing to a 2024 message endpoint: refused and never forwarded.

    The refusal goes to the one who sent the request: the stream belongs to the session's
    owner, who did not send it (an error event there, under an id the owner may be using,
    would be an injection into another agent's session).
    """
    stack = policed.sse
    owner = Raw2024(web, stack, fresh("owner"), "2024")
    try:
        await owner.open()
        seen_before = len(owner.messages())
        intruder = Raw2024(web, stack, fresh("intruder"), "2024", endpoint=owner.endpoint)
        message = {
            "jsonrpc": "2.0",
            "id": 1,  # the owner's own initialize used id 1 too
            "method": "tools/call",
            "params": {"name": "echo", "arguments": {"text": "not yours"}},
        }
        response = await intruder.post(message)
        assert intruder.upstream_saw() == [], "the intruder's POST reached the upstream"
        # The owner's session still works, and its stream got nothing it did not ask for.
        assert (await owner.echo("mine")).tool_text() == "mine"
        foreign = [m for m in owner.messages()[seen_before:] if m.get("id") == 1]
        assert foreign == [], f"the owner's stream carried the intruder's answer: {foreign}"
        assert response.status_code in (200, 403), (response.status_code, response.text)
        body = response.json()
        assert body["id"] == 1, body
        check_error(body["error"], "AGENT_MISMATCH")
    finally:
        await owner.close()


async def test_a_path_under_a_message_endpoint_is_no_way_around_it(
    policed: Stacks, web: httpx.AsyncClient
) -> None:
    """Review finding: SDK servers mount the message endpoint as a prefix, so a POST to a
    path under it with the owner's session_id reaches the owner's session upstream. The
    proxy refuses it (SESSION_NOT_FOUND): it names no stream it relays."""
    stack = policed.sse
    owner = Raw2024(web, stack, fresh("owner"), "2024")
    try:
        await owner.open()
        seen_before = len(owner.messages())
        sideways = owner.endpoint.replace("/messages/", "/messages/x")
        intruder = Raw2024(web, stack, fresh("intruder"), "2024", endpoint=sideways)
        message = {
            "jsonrpc": "2.0",
            "id": 77,
            "method": "tools/call",
            "params": {"name": "echo", "arguments": {"text": "not yours"}},
        }
        response = await intruder.post(message)
        assert intruder.upstream_saw() == [], "the sideways POST reached the upstream"
        check_error(response.json()["error"], "SESSION_NOT_FOUND")
        assert (await owner.echo("mine")).tool_text() == "mine"
        foreign = [m for m in owner.messages()[seen_before:] if m.get("id") == 77]
        assert foreign == [], foreign
    finally:
        await owner.close()


# --- 3. tools/list filtered in every era -------------------------------------------------------


@pytest.mark.parametrize("era", ERAS)
async def test_tools_list_filtered(
    era: str, policed: Stacks, plain: Stacks, web: httpx.AsyncClient
) -> None:
    async with raw_session(era, policed.of(era), web, fresh("guard")) as raw:
        result = (await raw.request("tools/list")).result()
    assert {t["name"] for t in result["tools"]} == GUARD_VISIBLE
    if era in ("2026", "auto"):
        # The upstream calls its list public; filtered per caller, it is private.
        assert result.get("cacheScope") == "private", result
        async with raw_session(era, plain.of(era), web, fresh("guard")) as open_raw:
            unfiltered = (await open_raw.request("tools/list")).result()
        assert unfiltered.get("cacheScope") == "public", unfiltered
        assert len(unfiltered["tools"]) == len(TOOL_NAMES)

    async with sdk_client(era, policed.of(era), fresh("guard")) as client:
        listed = await client.list_tools()
    assert {t.name for t in listed.tools} == GUARD_VISIBLE


# --- 4. Mcp-Method / Mcp-Name against the body ------------------------------------------------


async def test_header_mismatch(plain: Stacks, web: httpx.AsyncClient) -> None:
    stack = plain.streamable
    raw = Raw2026(web, stack, fresh("headers"), "2026")

    async def refused(message: dict[str, Any], headers: dict[str, str]) -> None:
        response = await raw.send(message, headers)
        assert response.status_code == 400, (headers, response.status_code, response.text)
        body = response.json()
        assert body["id"] == message["id"], body
        check_error(body["error"], "HEADER_MISMATCH")

    call = raw.message("tools/call", {"name": "add", "arguments": {"a": 1, "b": 2}})
    await refused(call, {"mcp-method": "tools/list"})
    await refused(call, {"mcp-name": "echo"})
    listing = raw.message("tools/list", None)
    await refused(listing, {"mcp-method": "tools/call"})
    assert raw.upstream_saw() == [], [r.rpc_method for r in raw.upstream_saw()]

    # Matching headers pass, base64-sentinel spelling included; unknown Mcp-Param-* too.
    call = raw.message("tools/call", {"name": "add", "arguments": {"a": 1, "b": 2}})
    encoded = "=?base64?" + base64.b64encode(b"add").decode() + "?="
    passed = await raw.send(call, {"mcp-name": encoded, "mcp-param-warden-probe": "hello"})
    assert passed.status_code == 200, passed.text
    assert parse_answer(passed)["result"]["content"][0]["text"] == "3"
    plain_call = await raw.call_tool("add", a=20, b=22)
    assert plain_call.tool_text() == "42"
    seen = raw.upstream_saw()
    assert len(seen) == 2, [r.headers for r in seen]
    assert seen[0].headers.get("mcp-param-warden-probe") == "hello", seen[0].headers
    assert seen[0].headers.get("mcp-name") == encoded


# --- 5. Origin ---------------------------------------------------------------------------------

BAD_ORIGIN = {"origin": "http://evil.example"}


@pytest.mark.parametrize("era", ["2026", "2025", "2024-stream", "2024-post"])
async def test_bad_origin_refused(era: str, policed: Stacks, web: httpx.AsyncClient) -> None:
    """An Origin that is neither the request's own host nor listed: 403 ORIGIN_NOT_ALLOWED
    (MCP transports: an invalid Origin MUST get 403), and nothing reaches the upstream."""
    if era == "2026":
        modern = Raw2026(web, policed.streamable, fresh("origin"), era, extra=BAD_ORIGIN)
        answer = await modern.request("tools/list")
        assert answer.status == 403, answer.message
        check_error(answer.message["error"], "ORIGIN_NOT_ALLOWED")
        assert modern.upstream_saw() == []
    elif era == "2025":
        legacy = Raw2025(web, policed.streamable, fresh("origin"), era, extra=BAD_ORIGIN)
        init, session = await legacy.initialize()
        assert init.status == 403, init.message
        check_error(init.message["error"], "ORIGIN_NOT_ALLOWED")
        assert session is None
        assert legacy.upstream_saw() == []
    elif era == "2024-stream":
        stream = Raw2024(web, policed.sse, fresh("origin"), "2024", extra=BAD_ORIGIN)
        try:
            await stream.connect()
        finally:
            await stream.close()
        assert stream.status == 403, stream.events
        [(kind, body)] = stream.events
        assert kind == "refused"
        doc = json.loads(body)
        error = doc["error"]
        if "reason" in json.dumps(error.get("details", [])):  # AIP-193 (not JSON-RPC)
            assert error["code"] == 403, doc
            assert error["details"][0]["reason"] == "ORIGIN_NOT_ALLOWED", doc
        else:
            check_error(error, "ORIGIN_NOT_ALLOWED")
        assert stream.upstream_saw() == []
    else:
        # A POST with a bad Origin to a live session's message endpoint.
        owner = Raw2024(web, policed.sse, fresh("origin"), "2024")
        try:
            await owner.open()
            before = len(owner.events)
            message = {"jsonrpc": "2.0", "id": 77, "method": "tools/list"}
            response = await owner.post(message, BAD_ORIGIN)
            await asyncio.sleep(0.2)  # an event on the stream would have arrived by now
            on_stream = owner.events[before:]
            assert response.status_code == 403, (response.status_code, response.text, on_stream)
            check_error(response.json()["error"], "ORIGIN_NOT_ALLOWED")
            assert "tools/list" not in owner.upstream_methods()
            assert on_stream == [], on_stream
        finally:
            await owner.close()


async def test_a_rebinding_page_meets_the_upstreams_own_defence(
    policed: Stacks, web: httpx.AsyncClient
) -> None:
    """DNS rebinding (the conformance suite's dns-rebinding-protection): a page on
    evil.example resolved to the proxy sends `Host` and `Origin` of its own name. The proxy
    passes such a same-host Origin on as it came, so the SDK upstream's loopback check still
    refuses it, and its 403 keeps its status through the proxy."""
    rebound = {"host": "evil.example", "origin": "http://evil.example"}
    modern = Raw2026(web, policed.streamable, fresh("rebind"), "2026", extra=rebound)
    answer = await modern.request("tools/list")
    assert answer.status == 403, answer.message


async def _first_exchange(
    era: str, stack: Stack, http: httpx.AsyncClient, agent: str
) -> tuple[RawBase, int, Any]:
    """The era's opening request: (session, HTTP status, JSON-RPC answer or error body)."""
    if era == "2026":
        modern = Raw2026(http, stack, agent, era)
        answer = await modern.request("tools/list")
        return modern, answer.status, answer.message
    if era == "auto":
        probe = Raw2026(http, stack, agent, era)
        answer = await probe.request("server/discover")
        return probe, answer.status, answer.message
    if era == "2025":
        legacy = Raw2025(http, stack, agent, era)
        answer, _ = await legacy.initialize()
        return legacy, answer.status, answer.message
    stream = Raw2024(http, stack, agent, era)
    try:
        await stream.connect()
        if stream.status != 200:
            return stream, stream.status or 0, stream.events
        init = await stream.initialize()
        return stream, init.status, init.message
    finally:
        await stream.close()


@pytest.mark.parametrize("origin", ["same-host", "listed"])
@pytest.mark.parametrize("era", ERAS)
async def test_good_origin_passes(era: str, origin: str, policed: Stacks) -> None:
    """The request's own host, or an origin `origins.allow` lists: served end to end by an
    SDK upstream with its default (loopback) DNS-rebinding protection."""
    stack = policed.of(era)
    value = stack.proxy.url if origin == "same-host" else ALLOWED_ORIGIN
    async with httpx.AsyncClient(timeout=30.0, headers={"origin": value}) as http:
        raw, status, answer = await _first_exchange(era, stack, http, fresh("origin"))
    # The proxy let it through ...
    assert "ORIGIN_NOT_ALLOWED" not in json.dumps(answer), answer
    assert raw.upstream_saw(), "the proxy did not forward the request"
    # ... and the upstream served it.
    assert status == (202 if era == "2024" else 200), (status, answer)
    assert "result" in answer, answer
    upstream_origins = {r.headers.get("origin") for r in raw.upstream_saw()}
    assert upstream_origins, upstream_origins


# --- 6. an MCP upstream's own 4xx keeps its status ------------------------------------------


@pytest.mark.parametrize("status", [400, 403, 409, 422, 429])
async def test_upstream_4xx_status_kept(
    status: int, status_stack: Stack, web: httpx.AsyncClient
) -> None:
    raw = Raw2026(web, status_stack, fresh("upstream"), "2026")
    message = raw.message("tools/call", {"name": "add", "arguments": {"a": 1, "b": 2}})
    response = await raw.send(message, {"x-want-status": str(status)})
    assert response.status_code == status, (response.status_code, response.text)
    body = response.json()
    assert set(body) == {"jsonrpc", "id", "error"}, body
    assert body["id"] == message["id"], body
    assert body["error"]["code"] == UPSTREAM_ERROR_CODE, body
    assert "hunter2" not in response.text
    assert "/srv/app.py" not in response.text
    # A conformant JSON-RPC error body passes unchanged, status and all.
    message = raw.message("tools/list", None)
    response = await raw.send(message, {"x-want-status": str(status), "x-want-jsonrpc": "1"})
    assert response.status_code == status, response.text
    assert response.json()["error"] == {"code": -32602, "message": "upstream says no"}


async def test_sdk_upstream_405_kept(plain: Stacks, web: httpx.AsyncClient) -> None:
    """The SDK answers a GET with a 2026 version header 405 (POST only)."""
    response = await web.get(
        plain.streamable.endpoint,
        headers={"accept": ACCEPT, "mcp-protocol-version": MODERN, AGENT: fresh("get")},
    )
    assert response.status_code == 405, response.text
    assert response.headers.get("allow") == "POST", response.headers


# --- 7. no policy: transparent ------------------------------------------------------------------


async def test_transparent_default_never_refuses(plain: Stacks, web: httpx.AsyncClient) -> None:
    """30 sessions of one anonymous agent in each era, and 60 calls in its window."""
    stack = plain.streamable
    legacy = [Raw2025(web, stack, None, "2025") for _ in range(30)]
    await asyncio.gather(*(r.open() for r in legacy))
    streams = [Raw2024(web, plain.sse, None, "2024") for _ in range(30)]
    try:
        await asyncio.gather(*(s.open() for s in streams))
        answers = await asyncio.gather(*(s.echo(str(i)) for i, s in enumerate(streams)))
        assert [a.tool_text() for a in answers] == [str(i) for i in range(30)]
        answers = await asyncio.gather(*(r.echo(str(i)) for i, r in enumerate(legacy)))
        assert [a.tool_text() for a in answers] == [str(i) for i in range(30)]
        modern = Raw2026(web, stack, None, "2026")
        for i in range(60):
            assert (await modern.echo(str(i))).tool_text() == str(i)
        listed = await sessions_of(stack.proxy, "anonymous")
        protocol = [s for s in listed if s["kind"] == "protocol"]
        windows = [s for s in listed if s["kind"] == "window"]
        assert len(protocol) >= 30, listed
        assert len(windows) == 1, windows
        assert windows[0]["calls_used"] >= 60, windows
        sse_listed = await sessions_of(plain.sse.proxy, "anonymous")
        assert len([s for s in sse_listed if s["kind"] == "protocol"]) >= 30
    finally:
        await asyncio.gather(*(s.close() for s in streams))
        await asyncio.gather(*(r.delete() for r in legacy))


# --- 8. /sessions shows the kind of each --------------------------------------------------------


async def test_admin_sessions_show_kinds(policed: Stacks, web: httpx.AsyncClient) -> None:
    stack = policed.streamable
    modern = Raw2026(web, stack, fresh("kinds"), "2026")
    assert (await modern.echo()).tool_text() == "hi"
    legacy = Raw2025(web, stack, fresh("kinds"), "2025")
    session = await legacy.open()
    assert (await legacy.echo()).tool_text() == "hi"
    stream = Raw2024(web, policed.sse, fresh("kinds"), "2024")
    try:
        await stream.open()
        assert (await stream.echo()).tool_text() == "hi"
        [window] = await sessions_of(stack.proxy, modern.agent or "")
        [protocol] = await sessions_of(stack.proxy, legacy.agent or "")
        [sse] = await sessions_of(policed.sse.proxy, stream.agent or "")
    finally:
        await stream.close()
    assert (window["kind"], window["protocol"], window["calls_used"]) == ("window", "mcp", 1)
    assert (protocol["kind"], protocol["protocol"], protocol["calls_used"]) == (
        "protocol",
        "mcp",
        1,
    )
    assert protocol["id"] == session
    assert (sse["kind"], sse["protocol"], sse["calls_used"]) == ("protocol", "mcp", 1)
    # The stream's end closed its session.
    await eventually(lambda: _no_sessions(policed.sse.proxy, stream.agent or ""))
    # DELETE ended the 2025 session; a later request with its id is gone (404, -32005).
    assert (await legacy.delete()).status_code == 200
    (await legacy.echo()).denied("SESSION_CLOSED")


async def test_closed_window_reopens_never_404(policed: Stacks, web: httpx.AsyncClient) -> None:
    """An operator closes an agent's window: its next request opens a new one (HTTP 200)."""
    stack = policed.streamable
    modern = Raw2026(web, stack, fresh("budget"), "2026")
    assert (await modern.echo("1")).tool_text() == "1"
    [window] = await sessions_of(stack.proxy, modern.agent or "")
    closed = await web.delete(f"{stack.proxy.admin_url}/sessions/{window['id']}")
    assert closed.status_code == 204, closed.text
    after = await modern.echo("2")
    assert after.status == 200
    assert after.tool_text() == "2"
    [reopened] = await sessions_of(stack.proxy, modern.agent or "")
    assert reopened["id"] != window["id"]
    assert reopened["calls_used"] == 1  # a new window, a new budget
