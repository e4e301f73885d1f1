"""Session policies enforced through the proxy: every reason of errors.md section 2 on MCP.

The official MCP SDK server is the upstream; requests come from the official client and
from raw HTTP. One proxy per upstream serves the module: `tests/data/e2e/sessions.yaml`
gives each behaviour its own policy, picked by the agent-id prefix, and every test uses
fresh agent ids so caps and counters never meet. The helpers at the top are shared with
`test_policy_reload.py` and `test_admin.py`.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import re
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import httpx2
import pytest
from mcp import ClientSession, MCPError
from mcp.client.streamable_http import streamable_http_client
from mcp_types.version import LATEST_HANDSHAKE_VERSION

from tests.conftest import Proxy, RunProxy
from tests.e2e.test_mcp_sdk import text_of
from tests.upstreams.mcp_server import MCP_PATH
from tests.upstreams.serve import REPO_ROOT, HeaderRecorder, SeenRequest

pytestmark = pytest.mark.timeout(60)

DATA = REPO_ROOT / "tests" / "data" / "e2e"
SESSIONS_POLICY = DATA / "sessions.yaml"
IDENTITY_POLICY = DATA / "identity_required.yaml"

# Each test tags its requests so it can pick them out of the shared upstream's record.
MARKER = "x-warden-test"
AGENT_HEADER = "x-agent-id"
SESSION_HEADER = "mcp-session-id"
ACCEPT = "application/json, text/event-stream"

DEFAULT_DOMAIN = "agent-warden.dev"
ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"
RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo"
MCP_SESSION_GONE = -32005
SESSION_GONE = frozenset({"SESSION_NOT_FOUND", "SESSION_EXPIRED", "SESSION_CLOSED"})
METADATA_KEYS = frozenset({"sessionId", "method", "tool"})
PROXY_SESSION_PREFIX = "awp-"

# errors.md section 2: reason -> (message, JSON-RPC code). Stated here, not imported.
REASONS: dict[str, tuple[str, int]] = {
    "SESSION_NOT_FOUND": ("session not found", -31060),
    "SESSION_EXPIRED": ("session expired", -31061),
    "SESSION_CLOSED": ("session already closed", -31062),
    "SESSION_BUDGET_EXCEEDED": ("session budget exceeded", -31063),
    "TOOL_NOT_AUTHORIZED": ("tool not authorized in session", -31064),
    "SESSION_RATE_LIMITED": ("session rate limit exceeded", -31065),
    "TOO_MANY_SESSIONS": ("too many concurrent sessions", -31066),
    "AGENT_MISMATCH": ("agent mismatch", -31067),
    "UNAUTHENTICATED": ("unauthenticated", -31068),
    "METHOD_NOT_AUTHORIZED": ("method not authorized in session", -31069),
}

# What the policy files configure and a client must never be told (errors.md section 2).
POLICY_SECRETS = (
    "ordering-broad",
    "ordering-narrow",
    "pick-narrow-first",
    "pick-broad-second",
    "budget-trio",
    "refund-quota",
    "tool-guard",
    "method-guard",
    "rate-pair",
    "cap-pair",
    "cap-single",
    "ttl-short",
    "idle-short",
    "burst-ten",
    "audit-trial",
    "lookup_",
    "*_admin",
    "prompts/*",
    "resources/*",
)
PROTO_DURATION = re.compile(r"(\d+)(?:\.(\d{3}|\d{6}|\d{9}))?s")


def fresh(prefix: str) -> str:
    """A new agent id under `prefix` (the policy file selects by prefix)."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def seconds_of(duration: str) -> float:
    """A ProtoJSON duration ("12s", "0.500s") in seconds; fails on anything else."""
    match = PROTO_DURATION.fullmatch(duration)
    assert match is not None, f"not a ProtoJSON duration: {duration!r}"
    whole, fraction = match.groups()
    return int(whole) + (int(fraction) / 10 ** len(fraction) if fraction else 0.0)


async def eventually(probe: Callable[[], Any], *, within: float = 10.0) -> Any:
    """Call (and await) `probe()` every 0.1 s until it is truthy; fail after `within` s."""
    deadline = time.monotonic() + within
    while True:
        value = probe()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {within}s", pytrace=False)
        await asyncio.sleep(0.1)


# --- what a denial must look like -------------------------------------------------------


@dataclass(frozen=True)
class Sent:
    """What the caller itself sent: the only values error metadata may echo."""

    method: str | None
    session: str | None = None
    tool: str | None = None


def check_error(
    error: Mapping[str, Any], reason: str, sent: Sent, *, domain: str = DEFAULT_DOMAIN
) -> Mapping[str, Any]:
    """The JSON-RPC `error` object of a proxy denial, field by field; returns its ErrorInfo."""
    message, code = REASONS[reason]
    assert set(error) == {"code", "message", "data"}, error
    assert error["code"] == (MCP_SESSION_GONE if reason in SESSION_GONE else code), error
    assert error["message"] == message, error
    data = error["data"]
    assert isinstance(data, list), error
    info: Mapping[str, Any] = data[0]
    assert set(info) == {"@type", "reason", "domain", "metadata"}, info
    assert info["@type"] == ERROR_INFO
    assert info["reason"] == reason
    assert info["domain"] == domain
    metadata = info["metadata"]
    assert set(metadata) <= METADATA_KEYS, metadata
    told = {"sessionId": sent.session, "method": sent.method, "tool": sent.tool}
    for key, value in metadata.items():
        assert value == told[key], (key, metadata, sent)
    if reason == "SESSION_RATE_LIMITED":
        assert len(data) == 2, data
        assert set(data[1]) == {"@type", "retryDelay"}, data[1]
        assert data[1]["@type"] == RETRY_INFO
        assert seconds_of(data[1]["retryDelay"]) > 0
    else:
        assert len(data) == 1, data
    check_opaque(error)
    return info


def check_opaque(error: Mapping[str, Any]) -> None:
    """No limit, count, cap, tool list or policy name in the message or the metadata."""
    metadata = dict(error["data"][0]["metadata"])
    metadata.pop("sessionId", None)  # the caller's own id, digits and all
    shown = [error["message"], *metadata.values()]
    for text in shown:
        assert not any(ch.isdigit() for ch in text), f"a digit reached the client: {text!r}"
    whole = json.dumps([error["message"], metadata])
    for secret in POLICY_SECRETS:
        assert secret not in whole, f"{secret!r} reached the client: {whole}"


def error_of(exc: MCPError) -> dict[str, Any]:
    """The JSON-RPC error object the official client received."""
    return {"code": exc.code, "message": exc.message, "data": exc.data}


# --- raw HTTP ------------------------------------------------------------------------------


def sse_messages(body: str) -> list[dict[str, Any]]:
    """The JSON-RPC messages in the `data:` lines of an SSE body."""
    return [
        json.loads(line[5:])
        for line in body.splitlines()
        if line.startswith("data:") and line[5:].strip()
    ]


@dataclass
class Reply:
    """One raw request and the proxy's answer."""

    sent: dict[str, Any]
    session: str | None
    response: httpx.Response

    @property
    def message(self) -> dict[str, Any]:
        """The single JSON-RPC response in the body (plain JSON or an SSE stream)."""
        if self.response.headers.get("content-type", "").startswith("text/event-stream"):
            messages = sse_messages(self.response.text)
        else:
            messages = [self.response.json()]
        answers = [m for m in messages if "result" in m or "error" in m]
        assert len(answers) == 1, self.response.text
        return answers[0]

    def result(self) -> Any:
        """The result of an allowed request (fails with the whole answer otherwise)."""
        assert self.response.status_code == 200, (self.response.status_code, self.response.text)
        message = self.message
        assert "result" in message, message
        assert message["id"] == self.sent["id"]
        return message["result"]

    def tool_text(self) -> str:
        result = self.result()
        assert result.get("isError") is not True, result
        return str(result["content"][0]["text"])

    def denied(self, reason: str, *, domain: str = DEFAULT_DOMAIN) -> Mapping[str, Any]:
        """Check the whole denial (status, headers, envelope); returns its ErrorInfo."""
        response = self.response
        status = 404 if reason in SESSION_GONE else 401 if reason == "UNAUTHENTICATED" else 200
        assert response.status_code == status, (response.status_code, response.text)
        assert response.headers["content-type"].startswith("application/json")
        body = response.json()
        assert set(body) == {"jsonrpc", "id", "error"}, body
        assert body["jsonrpc"] == "2.0"
        assert body["id"] == self.sent.get("id")
        params = self.sent.get("params") or {}
        tool = params.get("name") if self.sent.get("method") == "tools/call" else None
        sent = Sent(self.sent.get("method"), self.session, tool)
        info = check_error(body["error"], reason, sent, domain=domain)
        if reason == "SESSION_RATE_LIMITED":
            delay = seconds_of(body["error"]["data"][1]["retryDelay"])
            assert response.headers.get("retry-after") == str(math.ceil(delay)), response.headers
        else:
            assert "retry-after" not in response.headers, response.headers
        return info


@dataclass
class RawMcp:
    """JSON-RPC over plain HTTP to the proxy's MCP endpoint, as one agent."""

    http: httpx.AsyncClient
    endpoint: str
    agent: str | None
    marker: str = field(default_factory=lambda: uuid.uuid4().hex)
    agent_header: str = AGENT_HEADER
    _ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def headers(self, session: str | None, *, initialize: bool = False) -> dict[str, str]:
        headers = {"accept": ACCEPT, MARKER: self.marker}
        if not initialize:
            headers["mcp-protocol-version"] = LATEST_HANDSHAKE_VERSION
        if self.agent is not None:
            headers[self.agent_header] = self.agent
        if session is not None:
            headers[SESSION_HEADER] = session
        return headers

    async def send(self, message: dict[str, Any], session: str | None) -> Reply:
        initialize = message.get("method") == "initialize"
        response = await self.http.post(
            self.endpoint, json=message, headers=self.headers(session, initialize=initialize)
        )
        return Reply(message, session, response)

    async def request(
        self, method: str, params: dict[str, Any] | None = None, *, session: str | None
    ) -> Reply:
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": next(self._ids), "method": method}
        if params is not None:
            message["params"] = params
        return await self.send(message, session)

    async def call_tool(self, session: str | None, name: str, **arguments: Any) -> Reply:
        return await self.request(
            "tools/call", {"name": name, "arguments": arguments}, session=session
        )

    async def echo(self, session: str | None, text: str = "hi") -> Reply:
        return await self.call_tool(session, "echo", text=text)

    async def start(self) -> Reply:
        """Send `initialize` (the answer may be a denial)."""
        params = {
            "protocolVersion": LATEST_HANDSHAKE_VERSION,
            "capabilities": {},
            "clientInfo": {"name": "warden-policy-e2e", "version": "0"},
        }
        return await self.request("initialize", params, session=None)

    async def initialize(self) -> str:
        """A live session: `initialize` allowed, then `notifications/initialized`."""
        reply = await self.start()
        reply.result()
        session = str(reply.response.headers.get(SESSION_HEADER, ""))
        assert session, reply.response.headers
        initialized = await self.send(
            {"jsonrpc": "2.0", "method": "notifications/initialized"}, session
        )
        assert initialized.response.status_code == 202, initialized.response.text
        return session

    async def delete(self, session: str) -> httpx.Response:
        return await self.http.delete(self.endpoint, headers=self.headers(session))


@pytest.fixture
async def web() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=30.0) as client:
        yield client


def upstream_posts(seen: HeaderRecorder, marker: str) -> list[SeenRequest]:
    """The POSTs one test's marker brought to the shared upstream."""
    return [r for r in seen.requests("POST") if r.headers.get(MARKER) == marker]


# --- the official client -------------------------------------------------------------------


@dataclass
class Official:
    """An official client session and the HTTP responses it received."""

    session: ClientSession
    responses: list[httpx2.Response]
    marker: str

    @property
    def session_id(self) -> str:
        ids = {r.headers[SESSION_HEADER] for r in self.responses if SESSION_HEADER in r.headers}
        assert len(ids) == 1, ids
        return ids.pop()


@asynccontextmanager
async def official_client(endpoint: str, agent: str) -> AsyncIterator[Official]:
    """The official client, connected but not initialized; on exit it sends its DELETE."""
    marker = uuid.uuid4().hex
    responses: list[httpx2.Response] = []

    async def on_response(response: httpx2.Response) -> None:
        responses.append(response)

    client = httpx2.AsyncClient(
        headers={MARKER: marker, AGENT_HEADER: agent},
        timeout=httpx2.Timeout(30.0),
        event_hooks={"response": [on_response]},
    )
    async with (
        client,
        streamable_http_client(endpoint, http_client=client) as (read, write),
        ClientSession(read, write) as session,
    ):
        yield Official(session, responses, marker)


# --- metrics and logs ------------------------------------------------------------------------

_SAMPLE = re.compile(
    r"(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>[^}]*)\})? (?P<value>\S+)(?: -?\d+)?"
)
_LABEL = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*"'
_LABELS = re.compile(rf"(?:{_LABEL}(?:,{_LABEL})*,?)?")
_LABEL_PAIR = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"')
_TYPES = frozenset({"counter", "gauge", "histogram", "summary", "untyped"})
_SUFFIXES = ("_bucket", "_sum", "_count", "_total", "_created")

Labels = frozenset[tuple[str, str]]


@dataclass
class Exposition:
    """A parsed Prometheus text exposition (version 0.0.4)."""

    types: dict[str, str]
    samples: dict[tuple[str, Labels], float]

    def value(self, name: str, **labels: str) -> float:
        """A series' value; 0 when the series is absent (a counter never incremented)."""
        return self.samples.get((name, frozenset(labels.items())), 0.0)

    def series(self, name: str) -> list[tuple[dict[str, str], float]]:
        return [(dict(labels), v) for (n, labels), v in self.samples.items() if n == name]


def parse_prometheus(text: str) -> Exposition:
    """Parse strictly: every line a comment or a sample of a family typed before it."""
    types: dict[str, str] = {}
    samples: dict[tuple[str, Labels], float] = {}
    assert text.endswith("\n"), "an exposition ends with a newline"
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        if line.startswith("#"):
            parts = line.split(maxsplit=3)
            if len(parts) >= 3 and parts[1] == "TYPE":
                assert len(parts) == 4, f"line {number}: {line!r}"
                assert parts[3] in _TYPES, f"line {number}: {line!r}"
                assert parts[2] not in types, f"line {number}: family typed twice"
                types[parts[2]] = parts[3]
            continue
        match = _SAMPLE.fullmatch(line)
        assert match is not None, f"line {number}: not a sample: {line!r}"
        name, raw_labels, raw_value = match.group("name", "labels", "value")
        families = [name, *(name.removesuffix(s) for s in _SUFFIXES if name.endswith(s))]
        assert any(f in types for f in families), f"line {number}: {name} has no # TYPE before it"
        raw_labels = raw_labels or ""
        assert _LABELS.fullmatch(raw_labels), f"line {number}: bad labels {raw_labels!r}"
        labels = frozenset(_LABEL_PAIR.findall(raw_labels))
        key = (name, labels)
        assert key not in samples, f"line {number}: duplicate series {line!r}"
        samples[key] = float(raw_value)
    return Exposition(types, samples)


async def scrape(proxy: Proxy) -> Exposition:
    async with httpx.AsyncClient(timeout=10.0) as client:
        response = await client.get(proxy.admin_url + "/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain"), response.headers
    return parse_prometheus(response.text)


def log_records(proxy: Proxy, msg: str, **fields: Any) -> list[dict[str, Any]]:
    """The proxy's JSON log lines with message `msg` and the given field values."""
    return [
        line
        for line in proxy.log_lines()
        if line.get("msg") == msg and all(line.get(k) == v for k, v in fields.items())
    ]


async def denial_records(proxy: Proxy, count: int, **fields: Any) -> list[dict[str, Any]]:
    """Wait for `count` "request denied" lines matching `fields` (no more appear after)."""
    await eventually(lambda: len(log_records(proxy, "request denied", **fields)) >= count)
    records = log_records(proxy, "request denied", **fields)
    assert len(records) == count, records
    return records


async def admin_sessions(proxy: Proxy) -> dict[str, dict[str, Any]]:
    """`GET /sessions` on the admin listener, by session id."""
    async with httpx.AsyncClient(timeout=10.0) as client:
        response = await client.get(proxy.admin_url + "/sessions")
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"sessions", "count"}, body
    assert body["count"] == len(body["sessions"])
    return {s["id"]: s for s in body["sessions"]}


# --- the proxies under test ---------------------------------------------------------------


@dataclass
class Target:
    """A proxy in front of an MCP upstream, and what that upstream received."""

    proxy: Proxy
    seen: HeaderRecorder

    @property
    def endpoint(self) -> str:
        return self.proxy.url + MCP_PATH

    def raw(self, http: httpx.AsyncClient, agent: str | None) -> RawMcp:
        return RawMcp(http, self.endpoint, agent)

    def posts(self, client: RawMcp | Official) -> list[SeenRequest]:
        return upstream_posts(self.seen, client.marker)


@pytest.fixture(scope="module")
def stateful(
    run_proxy_module: RunProxy, mcp_upstream: str, mcp_upstream_seen: HeaderRecorder
) -> Target:
    proxy = run_proxy_module(mcp_upstream, "--policy", str(SESSIONS_POLICY))
    return Target(proxy, mcp_upstream_seen)


@pytest.fixture(scope="module")
def stateless(
    run_proxy_module: RunProxy,
    mcp_stateless_upstream: str,
    mcp_stateless_upstream_seen: HeaderRecorder,
) -> Target:
    proxy = run_proxy_module(mcp_stateless_upstream, "--policy", str(SESSIONS_POLICY))
    return Target(proxy, mcp_stateless_upstream_seen)


@pytest.fixture(scope="module")
def identity_required(
    run_proxy_module: RunProxy, mcp_upstream: str, mcp_upstream_seen: HeaderRecorder
) -> Target:
    proxy = run_proxy_module(mcp_upstream, "--policy", str(IDENTITY_POLICY))
    return Target(proxy, mcp_upstream_seen)


# --- SESSION_NOT_FOUND, SESSION_EXPIRED, SESSION_CLOSED -------------------------------------


async def test_unknown_session_id_is_not_found(stateful: Target, web: httpx.AsyncClient) -> None:
    raw = stateful.raw(web, fresh("nobody"))
    unknown = uuid.uuid4().hex
    reply = await raw.request("tools/list", session=unknown)
    reply.denied("SESSION_NOT_FOUND")
    call = await raw.echo(unknown)
    call.denied("SESSION_NOT_FOUND")
    assert stateful.posts(raw) == []


async def test_request_without_session_id_is_judged_in_the_agent_window(
    stateful: Target, web: httpx.AsyncClient
) -> None:
    """No Mcp-Session-Id: the agent's window judges it (contract, Sessions), and the 2025
    upstream's own 400 reaches the client with its status and JSON-RPC body."""
    raw = stateful.raw(web, fresh("nobody"))
    listing = await raw.request("tools/list", session=None)
    assert listing.response.status_code == 400, listing.response.text
    assert listing.message["error"]["code"] == -32600
    assert len(stateful.posts(raw)) == 1
    windows = [
        s
        for s in (await admin_sessions(stateful.proxy)).values()
        if s["agent"] == raw.agent and s["kind"] == "window"
    ]
    assert len(windows) == 1
    assert windows[0]["calls_used"] == 1


async def test_ttl_expires_the_session(stateful: Target, web: httpx.AsyncClient) -> None:
    raw = stateful.raw(web, fresh("ttl"))
    session = await raw.initialize()
    assert (await raw.echo(session, "young")).tool_text() == "young"
    await asyncio.sleep(1.3)  # past ttl: 1s
    (await raw.echo(session)).denied("SESSION_EXPIRED")
    # Expired stays expired: the answer does not turn into "not found".
    (await raw.request("tools/list", session=session)).denied("SESSION_EXPIRED")
    records = await denial_records(stateful.proxy, 2, session=session)
    assert {(r["reason"], r["policy"]) for r in records} == {("SESSION_EXPIRED", "ttl-short")}


async def test_idle_timeout_expires_the_session(stateful: Target, web: httpx.AsyncClient) -> None:
    raw = stateful.raw(web, fresh("idle"))
    session = await raw.initialize()
    assert (await raw.echo(session, "awake")).tool_text() == "awake"
    await asyncio.sleep(1.3)  # past idle_timeout: 1s
    (await raw.echo(session)).denied("SESSION_EXPIRED")
    [record] = await denial_records(stateful.proxy, 1, session=session)
    assert (record["reason"], record["policy"]) == ("SESSION_EXPIRED", "idle-short")


async def test_expiry_log_line_names_the_limit_after_the_sweep(
    stateful: Target, web: httpx.AsyncClient
) -> None:
    sessions = {}
    for prefix, limit in [("ttl", "ttl"), ("idle", "idle_timeout")]:
        raw = stateful.raw(web, fresh(prefix))
        sessions[limit] = (raw, await raw.initialize())
    # Two sweeps (one a second) pass the 1 s deadlines: the sessions are swept, not found
    # expired by a request; the operator's log must still say which limit ended them.
    await asyncio.sleep(2.2)
    for limit, (raw, session) in sessions.items():
        (await raw.echo(session)).denied("SESSION_EXPIRED")
        [record] = await denial_records(stateful.proxy, 1, session=session)
        assert (record["limit"], record["limit_value"]) == (limit, 1), record


async def test_delete_closes_the_session(stateful: Target, web: httpx.AsyncClient) -> None:
    raw = stateful.raw(web, fresh("closer"))
    session = await raw.initialize()
    assert (await raw.echo(session, "before")).tool_text() == "before"
    deleted = await raw.delete(session)
    assert deleted.status_code == 200, deleted.text
    (await raw.echo(session)).denied("SESSION_CLOSED")
    (await raw.request("tools/list", session=session)).denied("SESSION_CLOSED")
    assert session not in await admin_sessions(stateful.proxy)
    # Only initialize, notifications/initialized and the one echo reached the upstream.
    assert len(stateful.posts(raw)) == 3


async def test_official_client_exit_closes_the_session(
    stateful: Target, web: httpx.AsyncClient
) -> None:
    agent = fresh("closer")
    async with official_client(stateful.endpoint, agent) as client:
        await client.session.initialize()
        await client.session.call_tool("echo", {"text": "bye"})
        session = client.session_id
    raw = stateful.raw(web, agent)
    (await raw.request("tools/list", session=session)).denied("SESSION_CLOSED")


# --- SESSION_BUDGET_EXCEEDED ----------------------------------------------------------------


async def test_budget_counts_requests_not_pings_notifications_or_denials(
    stateful: Target, web: httpx.AsyncClient
) -> None:
    raw = stateful.raw(web, fresh("budget"))
    session = await raw.initialize()
    assert (await raw.request("ping", session=session)).result() == {}
    # Denied: not counted.
    (await raw.call_tool(session, "delete_admin", user="root")).denied("TOOL_NOT_AUTHORIZED")
    # tools/list hides the denied tool (delete_admin): 7 of the upstream's 8.
    listed = (await raw.request("tools/list", session=session)).result()["tools"]
    assert len(listed) == 7
    assert "delete_admin" not in {t["name"] for t in listed}
    assert (await raw.echo(session, "two")).tool_text() == "two"
    notified = await raw.send(
        {"jsonrpc": "2.0", "method": "notifications/roots/list_changed"}, session
    )
    assert notified.response.status_code == 202, notified.response.text
    assert (await raw.request("ping", session=session)).result() == {}
    assert (await raw.echo(session, "three")).tool_text() == "three"
    # budget.calls: 3 is spent.
    (await raw.echo(session, "four")).denied("SESSION_BUDGET_EXCEEDED")
    (await raw.request("tools/list", session=session)).denied("SESSION_BUDGET_EXCEEDED")
    # Budget comes before tool authorization in the reference order.
    (await raw.call_tool(session, "delete_admin", user="root")).denied("SESSION_BUDGET_EXCEEDED")
    assert (await raw.request("ping", session=session)).result() == {}

    assert (await admin_sessions(stateful.proxy))[session]["calls_used"] == 3
    records = await denial_records(stateful.proxy, 4, session=session)
    budget = [r for r in records if r["reason"] == "SESSION_BUDGET_EXCEEDED"]
    assert len(budget) == 3
    assert {(r["policy"], r["limit"], r["limit_value"], r["used"]) for r in budget} == {
        ("budget-trio", "calls", 3, 3)
    }


async def spend_budget_officially(target: Target, agent: str) -> Official:
    """With budget.calls: 3, the official client's third tool call is refused."""
    async with official_client(target.endpoint, agent) as client:
        await client.session.initialize()
        # Counted too: the client lists the tools to learn their output schemas (the denied
        # delete_admin is not listed).
        assert len((await client.session.list_tools()).tools) == 7
        for a in range(2):
            result = await client.session.call_tool("add", {"a": a, "b": 1})
            assert result.structured_content == {"result": a + 1}
        with pytest.raises(MCPError) as caught:
            await client.session.call_tool("add", {"a": 1, "b": 1})
        listed = (await admin_sessions(target.proxy))[client.session_id]
    assert (listed["agent"], listed["protocol"], listed["calls_used"]) == (agent, "mcp", 3)
    sent = Sent("tools/call", client.session_id, "add")
    check_error(error_of(caught.value), "SESSION_BUDGET_EXCEEDED", sent)
    # initialize, notifications/initialized, tools/list and two calls; the third stayed here.
    assert len(target.posts(client)) == 5
    return client


async def test_budget_through_the_official_client(stateful: Target) -> None:
    await spend_budget_officially(stateful, fresh("budget"))


async def test_tool_budget(stateful: Target, web: httpx.AsyncClient) -> None:
    raw = stateful.raw(web, fresh("quota"))
    session = await raw.initialize()
    for n in range(2):
        refund = await raw.call_tool(session, "refund_payment", payment_id=f"p{n}", amount=1.5)
        assert refund.tool_text() == f"refunded 1.50 on p{n}"
    info = (await raw.call_tool(session, "refund_payment", payment_id="p9", amount=1)).denied(
        "SESSION_BUDGET_EXCEEDED"
    )
    assert info["metadata"].get("tool", "refund_payment") == "refund_payment"
    # The session budget is far from spent: other tools still run.
    assert (await raw.echo(session, "other tools")).tool_text() == "other tools"
    [record] = await denial_records(stateful.proxy, 1, session=session)
    assert (record["policy"], record["limit_value"], record["used"]) == ("refund-quota", 2, 2)
    assert record["tool"] == "refund_payment"


# --- TOOL_NOT_AUTHORIZED, METHOD_NOT_AUTHORIZED -----------------------------------------------


async def test_tool_allow_and_deny_globs(stateful: Target, web: httpx.AsyncClient) -> None:
    agent = fresh("guard")
    async with official_client(stateful.endpoint, agent) as client:
        await client.session.initialize()
        found = await client.session.call_tool("lookup_customer", {"customer_id": "c-1"})
        assert json.loads(text_of(found))["id"] == "c-1"
        echoed = await client.session.call_tool("echo", {"text": "allowed"})
        assert text_of(echoed) == "allowed"
        # tools/list shows only what the caller may call (contract: results are filtered).
        listed = await client.session.list_tools()
        assert {t.name for t in listed.tools} == {"echo", "lookup_customer"}
        assert listed.cache_scope == "private"
        refused: list[tuple[str, dict[str, Any]]] = [
            ("refund_payment", {"payment_id": "p", "amount": 1}),  # not in allow
            ("add", {"a": 1, "b": 2}),  # not in allow
            ("delete_admin", {"user": "root"}),  # allowed by no glob, denied by "*_admin"
        ]
        errors = {}
        for tool, args in refused:
            with pytest.raises(MCPError) as caught:
                await client.session.call_tool(tool, args)
            errors[tool] = caught.value
        session = client.session_id
    for tool, exc in errors.items():
        check_error(error_of(exc), "TOOL_NOT_AUTHORIZED", Sent("tools/call", session, tool))

    # The same denial on the wire: HTTP 200, a JSON-RPC error echoing the id.
    raw = stateful.raw(web, agent)
    other = await raw.initialize()
    (await raw.call_tool(other, "delete_admin", user="root")).denied("TOOL_NOT_AUTHORIZED")
    assert len(stateful.posts(raw)) == 2
    records = await denial_records(stateful.proxy, 3, session=session)
    assert {r["tool"] for r in records} == set(errors)
    assert {(r["reason"], r["policy"]) for r in records} == {("TOOL_NOT_AUTHORIZED", "tool-guard")}


async def test_method_deny_globs(stateful: Target, web: httpx.AsyncClient) -> None:
    agent = fresh("methods")
    async with official_client(stateful.endpoint, agent) as client:
        await client.session.initialize()
        with pytest.raises(MCPError) as caught:
            await client.session.list_prompts()
        assert len((await client.session.list_tools()).tools) == 8
        session = client.session_id
    check_error(error_of(caught.value), "METHOD_NOT_AUTHORIZED", Sent("prompts/list", session))

    raw = stateful.raw(web, agent)
    other = await raw.initialize()
    (await raw.request("resources/list", session=other)).denied("METHOD_NOT_AUTHORIZED")
    reading = await raw.request("resources/read", {"uri": "file:///etc/passwd"}, session=other)
    reading.denied("METHOD_NOT_AUTHORIZED")
    assert (await raw.echo(other, "tools still work")).tool_text() == "tools still work"
    # initialize, notifications/initialized, echo: the denied methods never left the proxy.
    assert len(stateful.posts(raw)) == 3


# --- SESSION_RATE_LIMITED -----------------------------------------------------------------------


async def test_rate_limit_carries_retry_after(stateful: Target, web: httpx.AsyncClient) -> None:
    raw = stateful.raw(web, fresh("rate"))
    session = await raw.initialize()
    assert (await raw.echo(session, "one")).tool_text() == "one"
    assert (await raw.echo(session, "two")).tool_text() == "two"
    limited = await raw.echo(session, "three")
    limited.denied("SESSION_RATE_LIMITED")
    delay = seconds_of(limited.response.json()["error"]["data"][1]["retryDelay"])
    # per_minute: 2 refills one call every 30 s; the bucket is empty, so the wait is at most that.
    assert 0 < delay <= 30
    # A rate-limited request is not counted against the budget.
    assert (await admin_sessions(stateful.proxy))[session]["calls_used"] == 2
    [record] = await denial_records(stateful.proxy, 1, session=session)
    assert (record["reason"], record["policy"]) == ("SESSION_RATE_LIMITED", "rate-pair")
    assert (record["limit"], record["limit_value"]) == ("per_minute", 2)


# --- TOO_MANY_SESSIONS, and the cap freed on close -------------------------------------------


async def test_third_session_over_the_cap_is_refused_before_the_upstream(
    stateful: Target, web: httpx.AsyncClient
) -> None:
    agent = fresh("cap")
    raw = stateful.raw(web, agent)
    first, second = await raw.initialize(), await raw.initialize()
    assert first != second
    third = await raw.start()
    info = third.denied("TOO_MANY_SESSIONS")
    assert "sessionId" not in info["metadata"]
    assert SESSION_HEADER not in third.response.headers
    initializes = [r for r in stateful.posts(raw) if SESSION_HEADER not in r.headers]
    assert len(initializes) == 2

    # The official client is refused the same way.
    async with official_client(stateful.endpoint, agent) as client:
        with pytest.raises(MCPError) as caught:
            await client.session.initialize()
    check_error(error_of(caught.value), "TOO_MANY_SESSIONS", Sent("initialize"))
    assert upstream_posts(stateful.seen, client.marker) == []

    # Other agents of the same policy have caps of their own.
    assert await stateful.raw(web, fresh("cap")).initialize()
    records = await denial_records(stateful.proxy, 2, agent=agent)
    assert {(r["reason"], r["policy"], r["limit_value"]) for r in records} == {
        ("TOO_MANY_SESSIONS", "cap-pair", 2)
    }


async def test_closing_a_session_frees_its_place(stateful: Target, web: httpx.AsyncClient) -> None:
    raw = stateful.raw(web, fresh("solo"))
    first = await raw.initialize()
    (await raw.start()).denied("TOO_MANY_SESSIONS")
    assert (await raw.delete(first)).status_code == 200
    second = await raw.initialize()
    assert second != first
    assert (await raw.echo(second, "room again")).tool_text() == "room again"
    (await raw.echo(first)).denied("SESSION_CLOSED")


# --- AGENT_MISMATCH ------------------------------------------------------------------------


async def test_another_agent_cannot_use_or_close_a_session(
    stateful: Target, web: httpx.AsyncClient
) -> None:
    owner = stateful.raw(web, fresh("owner"))
    session = await owner.initialize()
    intruder = RawMcp(web, stateful.endpoint, fresh("intruder"), marker=owner.marker)
    (await intruder.echo(session)).denied("AGENT_MISMATCH")
    (await intruder.request("tools/list", session=session)).denied("AGENT_MISMATCH")
    anonymous = RawMcp(web, stateful.endpoint, None, marker=owner.marker)
    (await anonymous.echo(session)).denied("AGENT_MISMATCH")
    closing = await intruder.delete(session)
    assert closing.status_code == 403, closing.text
    assert "AGENT_MISMATCH" in closing.text
    # The owner's session is untouched, and none of the intruder's requests counted.
    assert (await owner.echo(session, "still mine")).tool_text() == "still mine"
    listed = (await admin_sessions(stateful.proxy))[session]
    assert (listed["agent"], listed["calls_used"]) == (owner.agent, 1)
    # initialize, notifications/initialized, the owner's echo.
    assert len(stateful.posts(owner)) == 3


# --- first match wins ------------------------------------------------------------------------


async def test_first_matching_policy_wins(stateful: Target, web: httpx.AsyncClient) -> None:
    async def calls_allowed(agent: str, attempts: int) -> tuple[int, str]:
        raw = stateful.raw(web, agent)
        session = await raw.initialize()
        for n in range(attempts):
            reply = await raw.echo(session, str(n))
            if "error" in reply.message:
                reply.denied("SESSION_BUDGET_EXCEEDED")
                [record] = await denial_records(stateful.proxy, 1, session=session)
                return n, record["policy"]
            assert reply.tool_text() == str(n)
        return attempts, "none"

    # "order-*" (calls: 2) comes before the more specific "order-special-*" (calls: 5).
    assert await calls_allowed(fresh("order-special"), 6) == (2, "ordering-broad")
    assert await calls_allowed(fresh("order-plain"), 6) == (2, "ordering-broad")
    # Listed the other way round, the specific entry is reached first.
    assert await calls_allowed(fresh("pick-special"), 6) == (3, "pick-narrow-first")
    assert await calls_allowed(fresh("pick-plain"), 6) == (1, "pick-broad-second")
    # No entry matches: the defaults (calls: 1000).
    assert await calls_allowed(fresh("unmatched"), 6) == (6, "none")


# --- UNAUTHENTICATED, and a custom ErrorInfo domain ---------------------------------------


async def test_missing_identity_is_unauthenticated(
    identity_required: Target, web: httpx.AsyncClient
) -> None:
    domain = "policies.warden.example"
    anonymous = identity_required.raw(web, None)
    (await anonymous.start()).denied("UNAUTHENTICATED", domain=domain)
    # The policy names another header: X-Agent-Id does not identify anyone here.
    wrong_header = identity_required.raw(web, fresh("caller"))
    (await wrong_header.start()).denied("UNAUTHENTICATED", domain=domain)
    assert identity_required.posts(anonymous) == []
    assert identity_required.posts(wrong_header) == []

    caller = identity_required.raw(web, fresh("caller"))
    caller.agent_header = "x-caller-id"
    session = await caller.initialize()
    assert (await caller.echo(session, "known")).tool_text() == "known"
    # Identity is checked on every request, not only at initialize.
    dropped = RawMcp(web, identity_required.endpoint, None, marker=caller.marker)
    (await dropped.echo(session)).denied("UNAUTHENTICATED", domain=domain)
    # Every proxy error of this policy carries its domain.
    assert (await caller.echo(session, "two")).tool_text() == "two"
    (await caller.echo(session, "three")).denied("SESSION_BUDGET_EXCEEDED", domain=domain)
    (await caller.echo(uuid.uuid4().hex)).denied("SESSION_NOT_FOUND", domain=domain)


async def test_denied_notification_gets_an_error_status_and_null_id(
    identity_required: Target, web: httpx.AsyncClient
) -> None:
    anonymous = identity_required.raw(web, None)
    reply = await anonymous.send({"jsonrpc": "2.0", "method": "notifications/initialized"}, None)
    # errors.md 1: a denied notification gets the AIP-193 column's status and id null.
    assert reply.response.status_code == 401, reply.response.text
    body = reply.response.json()
    assert body["id"] is None
    check_error(
        body["error"],
        "UNAUTHENTICATED",
        Sent("notifications/initialized"),
        domain="policies.warden.example",
    )


# --- concurrency -----------------------------------------------------------------------------


async def test_concurrent_calls_spend_the_budget_exactly(
    stateful: Target, web: httpx.AsyncClient
) -> None:
    raw = stateful.raw(web, fresh("burst"))
    session = await raw.initialize()
    replies = await asyncio.gather(*(raw.echo(session, f"c{n}") for n in range(40)))
    allowed = [r for r in replies if "result" in r.message]
    denied = [r for r in replies if "error" in r.message]
    assert (len(allowed), len(denied)) == (10, 30)
    for reply in allowed:
        assert reply.tool_text() == reply.sent["params"]["arguments"]["text"]
    for reply in denied:
        reply.denied("SESSION_BUDGET_EXCEEDED")
    assert (await admin_sessions(stateful.proxy))[session]["calls_used"] == 10
    # initialize, notifications/initialized and exactly ten calls reached the upstream.
    assert len(stateful.posts(raw)) == 12


# --- audit mode ----------------------------------------------------------------------------------


async def test_audit_mode_records_but_never_blocks(
    stateful: Target, web: httpx.AsyncClient
) -> None:
    before = await scrape(stateful.proxy)
    agent = fresh("audit")
    raw = stateful.raw(web, agent)
    session = await raw.initialize()
    for n in range(3):  # budget.calls: 1
        assert (await raw.echo(session, f"a{n}")).tool_text() == f"a{n}"
    assert len(stateful.posts(raw)) == 5

    audit_msg = "request would be denied (audit)"
    await eventually(lambda: len(log_records(stateful.proxy, audit_msg, session=session)) >= 2)
    records = log_records(stateful.proxy, audit_msg, session=session)
    assert len(records) == 2, records
    for record in records:
        assert record["reason"] == "SESSION_BUDGET_EXCEEDED"
        assert (record["agent"], record["policy"]) == (agent, "audit-trial")
        assert record["limit_value"] == 1
    assert log_records(stateful.proxy, "request denied", session=session) == []

    after = await scrape(stateful.proxy)
    series = {"reason": "SESSION_BUDGET_EXCEEDED", "mode": "audit"}
    counted = after.value("agent_warden_denials_total", **series)
    assert counted - before.value("agent_warden_denials_total", **series) == 2


# --- a stateless upstream: the proxy issues the session id -----------------------------------


async def test_stateless_upstream_gets_a_proxy_session(
    stateless: Target, web: httpx.AsyncClient
) -> None:
    agent = fresh("budget")
    client = await spend_budget_officially(stateless, agent)
    session = client.session_id
    assert session.startswith(PROXY_SESSION_PREFIX)
    assert len(session) >= len(PROXY_SESSION_PREFIX) + 20, session  # unguessable

    seen = [r for r in stateless.seen.requests() if r.headers.get(MARKER) == client.marker]
    assert [r.headers.get(SESSION_HEADER) for r in seen] == [None] * len(seen)
    assert all(session not in json.dumps(r.headers) for r in seen)

    # The client's DELETE on leaving closed the proxy's session.
    raw = stateless.raw(web, agent)
    (await raw.echo(session)).denied("SESSION_CLOSED")
    (await raw.echo(PROXY_SESSION_PREFIX + uuid.uuid4().hex)).denied("SESSION_NOT_FOUND")


async def test_stateless_session_rules_apply(stateless: Target, web: httpx.AsyncClient) -> None:
    owner = stateless.raw(web, fresh("guard"))
    session = await owner.initialize()
    assert session.startswith(PROXY_SESSION_PREFIX)
    assert (await owner.echo(session, "ok")).tool_text() == "ok"
    (await owner.call_tool(session, "delete_admin", user="x")).denied("TOOL_NOT_AUTHORIZED")
    intruder = RawMcp(web, stateless.endpoint, fresh("guard"), marker=owner.marker)
    (await intruder.echo(session)).denied("AGENT_MISMATCH")
    assert (await owner.delete(session)).status_code in (200, 204)
    (await owner.echo(session)).denied("SESSION_CLOSED")
    seen = [r for r in stateless.seen.requests() if r.headers.get(MARKER) == owner.marker]
    assert [r.headers.get(SESSION_HEADER) for r in seen] == [None] * len(seen)
    # initialize, notifications/initialized, echo.
    assert len(upstream_posts(stateless.seen, owner.marker)) == 3


# --- the shipped policies ------------------------------------------------------------------


def test_shipped_and_fixture_policies_check_clean() -> None:
    files = sorted(str(p) for p in (REPO_ROOT / "policies").glob("*.yaml"))
    files += sorted(str(p) for p in DATA.glob("*.yaml"))
    assert len(files) >= 5, files
    result = subprocess.run(
        [sys.executable, "-m", "proxy", "check", *files],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
