"""MCP calls that take more than one HTTP exchange, through the proxy.

1. MCP 2026-07-28 multi-round-trip requests (MRTR): a `tools/call` answered with
   `{"resultType": "input_required", "requestState": ...}` is retried by the client with
   that `requestState` (and its `inputResponses`). Contract, "Policy file": the retry
   "continues the counted call and is not counted again" - the proxy accepts each state
   the upstream returned to the session once; a replay of the same state is counted.
2. MCP 2025-11-25 resumption (SSE polling): the upstream closes a POST's event stream
   right after its priming event (an `id:` with empty data and a `retry:`); the client
   resumes with `GET` + `Last-Event-ID`. errors.md 3: that clean close is not a broken
   stream, so the proxy adds no UPSTREAM_STREAM_INTERRUPTED event, and relays the GET.
   MCP 2026-07-28 transports: SSE responses carry `X-Accel-Buffering: no`.

The upstream is tests/upstreams/mcp_rounds.py (official SDK, in-memory event store). The
proxy runs as a process, once transparent (no --policy) and once with the policy below.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import httpx2
import mcp.types as mt
import pytest
from mcp import Client, MCPError
from mcp.client.streamable_http import streamable_http_client

from tests.conftest import RunProxy
from tests.e2e.test_minted_sessions import (
    ACCEPT,
    AGENT_HEADER,
    MARKER,
    MINTED_HEADER,
    Admin,
    Modern,
    Reply,
    Target,
    check_sdk_error,
    fresh,
    text_of,
)
from tests.redis_server import RedisServer
from tests.upstreams import mcp_rounds
from tests.upstreams.mcp_rounds import ELICIT_KEY, confirmed_text, polled_text
from tests.upstreams.serve import HeaderRecorder, SeenRequest, ThreadedServer

pytestmark = pytest.mark.timeout(60)

LEGACY = "2025-11-25"
ELICITATION = {"elicitation": {"form": {}}}
ACCEPTED = {ELICIT_KEY: {"action": "accept", "content": {"yes": True}}}

POLICY = """\
version: 1
identity: {header: X-Agent-Id}
policies:
  - name: rounds-pair
    match: {agents: ["pair-*"]}
    budget: {calls: 2}
  - name: rounds-sdk
    match: {agents: ["sdk-*"]}
    budget: {calls: 3}
  - name: rounds-single
    match: {agents: ["single-*"]}
    budget: {calls: 1}
  - name: rounds-tool
    match: {agents: ["tool-*"]}
    budget: {calls: 10, tools: {confirm: 1}}
  - name: rounds-resume
    match: {agents: ["resume-*"]}
    budget: {calls: 5}
"""


# --- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rounds_upstream() -> Iterator[ThreadedServer]:
    server = ThreadedServer(mcp_rounds.build_app_for)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _target(proxy_launcher: RunProxy, upstream: ThreadedServer, *args: str) -> Target:
    seen = upstream.app
    assert isinstance(seen, HeaderRecorder)
    return Target(proxy_launcher(upstream.url, *args), seen)


@pytest.fixture(scope="module")
def warden(
    run_proxy_module: RunProxy,
    rounds_upstream: ThreadedServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Target:
    path: Path = tmp_path_factory.mktemp("rounds") / "rounds.yaml"
    path.write_text(POLICY)
    return _target(run_proxy_module, rounds_upstream, "--policy", str(path))


@pytest.fixture(scope="module")
def transparent(run_proxy_module: RunProxy, rounds_upstream: ThreadedServer) -> Target:
    return _target(run_proxy_module, rounds_upstream)


@pytest.fixture
async def web() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=30.0) as client:
        yield client


async def accept(ctx: Any, params: Any) -> mt.ElicitResult:
    """The official client's elicitation callback: always yes."""
    return mt.ElicitResult(action="accept", content={"yes": True})


@asynccontextmanager
async def sdk_client(
    endpoint: str, agent: str, *, mode: str, session: str | None = None
) -> AsyncIterator[tuple[Client, str]]:
    marker = uuid.uuid4().hex
    headers = {MARKER: marker, AGENT_HEADER: agent}
    if session is not None:
        headers[MINTED_HEADER] = session
    async with (
        httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30.0)) as http,
        Client(
            streamable_http_client(endpoint, http_client=http),
            mode=mode,
            elicitation_callback=accept,
            cache=None,
        ) as client,
    ):
        yield client, marker


def calls_of(seen: list[SeenRequest], tool: str) -> list[SeenRequest]:
    """The tools/call POSTs (2026-07-28: routing headers) naming `tool`."""
    return [
        r
        for r in seen
        if r.method == "POST"
        and r.headers.get("mcp-method") == "tools/call"
        and r.headers.get("mcp-name") == tool
    ]


async def window_of(admin: Admin, agent: str) -> dict[str, Any]:
    """The agent's window (MCP 2026-07-28 requests without a session are judged there)."""
    windows = [s for s in (await admin.of_agent(agent)).values() if s["kind"] == "window"]
    assert len(windows) == 1, windows
    return windows[0]


# --- raw MRTR rounds -----------------------------------------------------------------------------


@dataclass
class Rounds:
    """One client's view of the `confirm` tool over raw MCP 2026-07-28."""

    raw: Modern
    item: str = "invoice-7"

    async def first(self) -> str:
        """Round 1: the upstream asks for input; returns the requestState it handed out."""
        reply = await self.raw.call("confirm", item=self.item)
        result = reply.result()
        assert result["resultType"] == "input_required", result
        assert set(result["inputRequests"]) == {ELICIT_KEY}, result
        assert result["inputRequests"][ELICIT_KEY]["method"] == "elicitation/create", result
        state = result["requestState"]
        assert isinstance(state, str), result
        assert state, result
        return state

    async def retry(self, state: str) -> Reply:
        """Round 2: a new request id, the same call, the answers and the state echoed."""
        return await self.raw.request(
            "tools/call",
            {
                "name": "confirm",
                "arguments": {"item": self.item},
                "inputResponses": ACCEPTED,
                "requestState": state,
            },
        )

    async def completed(self, state: str) -> None:
        reply = await self.retry(state)
        result = reply.result()
        assert result.get("resultType", "complete") == "complete", result
        assert reply.tool_text() == confirmed_text(self.item, True)


def modern(
    target: Target, web: httpx.AsyncClient, agent: str, session: str | None = None
) -> Modern:
    return Modern(web, target.endpoint, agent, session, capabilities=ELICITATION)


async def test_retry_with_the_state_is_not_counted(warden: Target, web: httpx.AsyncClient) -> None:
    agent = fresh("pair")  # budget: 2 calls
    raw = modern(warden, web, agent)
    rounds = Rounds(raw)
    state = await rounds.first()  # counted: 1
    assert (await window_of(warden.admin, agent))["calls_used"] == 1
    await rounds.completed(state)  # continues the counted call
    assert (await window_of(warden.admin, agent))["calls_used"] == 1
    assert (await raw.echo("second")).tool_text() == "second"  # counted: 2
    (await raw.echo("third")).denied("SESSION_BUDGET_EXCEEDED")
    assert (await window_of(warden.admin, agent))["calls_used"] == 2
    seen = warden.seen_by(raw.marker)
    assert len(calls_of(seen, "confirm")) == 2
    assert len(calls_of(seen, "echo")) == 1


async def test_the_retry_is_not_counted_against_a_tool_budget(
    warden: Target, web: httpx.AsyncClient
) -> None:
    agent = fresh("tool")  # budget: confirm 1
    rounds = Rounds(modern(warden, web, agent))
    state = await rounds.first()
    await rounds.completed(state)
    (await rounds.raw.call("confirm", item="again")).denied("SESSION_BUDGET_EXCEEDED")
    (await rounds.retry(state)).denied("SESSION_BUDGET_EXCEEDED")  # a replay: a new call
    assert (await rounds.raw.echo("free")).tool_text() == "free"


async def test_replaying_a_request_state_is_counted(warden: Target, web: httpx.AsyncClient) -> None:
    agent = fresh("pair")  # budget: 2 calls
    raw = modern(warden, web, agent)
    rounds = Rounds(raw)
    state = await rounds.first()  # counted: 1
    await rounds.completed(state)  # not counted
    assert (await window_of(warden.admin, agent))["calls_used"] == 1
    replay = await rounds.retry(state)  # the same state again: counted, 2
    assert replay.response.status_code == 200, replay.response.text
    assert "error" not in replay.response.json(), replay.response.text
    assert (await window_of(warden.admin, agent))["calls_used"] == 2
    # The budget is spent: a third replay, and any other call, is refused.
    (await rounds.retry(state)).denied("SESSION_BUDGET_EXCEEDED")
    (await raw.echo("over")).denied("SESSION_BUDGET_EXCEEDED")
    assert len(calls_of(warden.seen_by(raw.marker), "confirm")) == 3


async def test_the_retry_continues_a_call_that_spent_the_last_of_the_budget(
    warden: Target, web: httpx.AsyncClient
) -> None:
    agent = fresh("single")  # budget: 1 call
    raw = modern(warden, web, agent)
    rounds = Rounds(raw)
    state = await rounds.first()
    await rounds.completed(state)
    assert (await window_of(warden.admin, agent))["calls_used"] == 1
    (await raw.echo("over")).denied("SESSION_BUDGET_EXCEEDED")
    (await rounds.retry(state)).denied("SESSION_BUDGET_EXCEEDED")  # a replay is a new call


async def test_concurrent_retries_with_one_state_are_let_off_once(
    warden: Target, web: httpx.AsyncClient
) -> None:
    agent = fresh("pair")  # budget: 2 calls
    raw = modern(warden, web, agent)
    rounds = Rounds(raw)
    state = await rounds.first()  # 1
    replies = await asyncio.gather(*(rounds.retry(state) for _ in range(4)))
    allowed = [r for r in replies if "result" in r.response.json()]
    refused = [r for r in replies if "error" in r.response.json()]
    # One retry continues the call; one more is a new call (the 2nd); the rest are over.
    assert (len(allowed), len(refused)) == (2, 2), [r.response.text for r in replies]
    for reply in refused:
        reply.denied("SESSION_BUDGET_EXCEEDED")
    assert (await window_of(warden.admin, agent))["calls_used"] == 2


async def test_a_state_the_upstream_never_returned_is_counted(
    warden: Target, web: httpx.AsyncClient
) -> None:
    agent = fresh("pair")
    raw = modern(warden, web, agent)
    rounds = Rounds(raw)
    forged = await rounds.retry("v1.forged-by-the-client")
    assert forged.response.status_code in (200, 400), forged.response.text
    assert (await window_of(warden.admin, agent))["calls_used"] == 1


async def test_a_state_counts_only_in_the_session_it_was_returned_to(
    warden: Target, web: httpx.AsyncClient
) -> None:
    agent = fresh("pair")
    window = Rounds(modern(warden, web, agent))
    state = await window.first()  # returned to the agent's window: counted there, 1
    admin = warden.admin
    minted = await admin.minted(agent)
    elsewhere = Rounds(modern(warden, web, agent, minted))
    await elsewhere.completed(state)  # another session: a new call, counted there
    assert (await admin.sessions())[minted]["calls_used"] == 1
    await window.completed(state)  # still redeemable once where it was returned
    assert (await window_of(admin, agent))["calls_used"] == 1


async def test_rounds_in_a_minted_session(warden: Target, web: httpx.AsyncClient) -> None:
    agent = fresh("pair")
    admin = warden.admin
    sid = await admin.minted(agent, budget={"calls": 2})
    raw = modern(warden, web, agent, sid)
    rounds = Rounds(raw)
    state = await rounds.first()
    await rounds.completed(state)
    assert (await admin.sessions())[sid]["calls_used"] == 1
    assert (await raw.echo("two")).tool_text() == "two"
    (await raw.echo("three")).denied("SESSION_BUDGET_EXCEEDED")
    (await rounds.retry(state)).denied("SESSION_BUDGET_EXCEEDED")
    assert (await admin.sessions())[sid]["calls_used"] == 2
    assert not any(MINTED_HEADER.lower() in r.headers for r in warden.seen_by(raw.marker))


# --- MRTR through the official client ----------------------------------------------------------


@pytest.mark.parametrize("in_minted", [False, True], ids=["window", "minted"])
async def test_official_client_completes_the_rounds_and_the_retry_is_not_counted(
    warden: Target, in_minted: bool
) -> None:
    agent = fresh("sdk")  # budget: 3 calls
    sid = await warden.admin.minted(agent, budget={"calls": 3}) if in_minted else None

    async def used() -> int:
        if sid is not None:
            return int((await warden.admin.sessions())[sid]["calls_used"])
        return int((await window_of(warden.admin, agent))["calls_used"])

    async with sdk_client(warden.endpoint, agent, mode="2026-07-28", session=sid) as (
        client,
        marker,
    ):
        # Listed first: the SDK would list before its first call anyway (output schemas).
        names = {t.name for t in (await client.list_tools()).tools}  # 1
        assert names == set(mcp_rounds.TOOL_NAMES)
        result = await client.call_tool("confirm", {"item": "sdk-item"})  # 2, its retry free
        assert text_of(result) == confirmed_text("sdk-item", True)
        assert await used() == 2
        assert text_of(await client.call_tool("echo", {"text": "three"})) == "three"  # 3
        with pytest.raises(MCPError) as over:
            await client.call_tool("echo", {"text": "four"})
        check_sdk_error(over.value, "SESSION_BUDGET_EXCEEDED", sid)
    seen = warden.seen_by(marker)
    confirms = calls_of(seen, "confirm")
    assert len(confirms) == 2, [r.headers for r in seen]
    # The retry carried the state and the answers, unchanged arguments (the SDK upstream
    # binds its sealed state to them and completed the call).
    assert len(calls_of(seen, "echo")) == 1
    assert await used() == 3
    if sid is not None:
        assert [s["kind"] for s in (await warden.admin.of_agent(agent)).values()] == ["minted"]


async def test_official_client_rounds_through_a_transparent_proxy(transparent: Target) -> None:
    async with sdk_client(transparent.endpoint, fresh("any"), mode="2026-07-28") as (client, _):
        for n in range(3):
            result = await client.call_tool("confirm", {"item": f"item-{n}"})
            assert text_of(result) == confirmed_text(f"item-{n}", True)


# --- 2025-11-25 resumption ---------------------------------------------------------------------


@dataclass
class Event:
    id: str | None
    event: str | None
    data: str
    retry: str | None


def sse_events(text: str) -> list[Event]:
    """Every event of an SSE body (comments skipped), in order."""
    events: list[Event] = []
    for block in text.replace("\r\n", "\n").replace("\r", "\n").split("\n\n"):
        fields: dict[str, list[str]] = {}
        for line in block.split("\n"):
            if not line or line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            fields.setdefault(name, []).append(value.removeprefix(" "))
        if not fields:
            continue
        events.append(
            Event(
                id=fields.get("id", [None])[-1],
                event=fields.get("event", [None])[-1],
                data="\n".join(fields.get("data", [])),
                retry=fields.get("retry", [None])[-1],
            )
        )
    return events


def messages_of(events: list[Event]) -> list[dict[str, Any]]:
    return [json.loads(e.data) for e in events if e.data.strip()]


async def legacy_session(
    web: httpx.AsyncClient, endpoint: str, base: dict[str, str], version: str = LEGACY
) -> dict[str, str]:
    """A 2025-era session opened on the raw wire: the headers of its later requests."""
    init = await web.post(
        endpoint,
        headers=base,
        json={
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": version,
                "capabilities": {},
                "clientInfo": {"name": "warden-rounds-e2e", "version": "0"},
            },
        },
    )
    assert init.status_code == 200, init.text
    follow = {**base, "mcp-session-id": init.headers["mcp-session-id"]}
    follow["mcp-protocol-version"] = version
    initialized = await web.post(
        endpoint, headers=follow, json={"jsonrpc": "2.0", "method": "notifications/initialized"}
    )
    assert initialized.status_code == 202, initialized.text
    return follow


async def resume(
    web: httpx.AsyncClient, endpoint: str, follow: dict[str, str], last_id: str, request_id: int
) -> tuple[httpx.Headers, dict[str, Any]]:
    """GET with Last-Event-ID until the answer to `request_id` arrives."""
    headers = {**follow, "accept": "text/event-stream", "last-event-id": last_id}
    text = ""
    async with web.stream("GET", endpoint, headers=headers) as resumed:
        assert resumed.status_code == 200
        async for chunk in resumed.aiter_text():
            text += chunk
            got = [m for m in messages_of(sse_events(text)) if m.get("id") == request_id]
            if got and text.endswith(("\n\n", "\r\n\r\n")):
                return resumed.headers, got[0]
    pytest.fail(f"the resumed stream ended without the answer: {text!r}", pytrace=False)


@pytest.mark.parametrize("which", ["transparent", "warden"])
async def test_official_client_resumes_a_stream_the_upstream_closed(
    which: str, request: pytest.FixtureRequest
) -> None:
    target: Target = request.getfixturevalue(which)
    agent = fresh("resume")  # warden: budget 5
    async with sdk_client(target.endpoint, agent, mode="legacy") as (client, marker):
        assert client.protocol_version == LEGACY
        assert len((await client.list_tools()).tools) == len(mcp_rounds.TOOL_NAMES)
        result = await client.call_tool("poll", {"text": "sdk"})
        assert text_of(result) == polled_text("sdk")
        assert text_of(await client.call_tool("echo", {"text": "after"})) == "after"
        if which == "warden":
            mine = await target.admin.of_agent(agent)
            [session] = [s for s in mine.values() if s["kind"] == "protocol"]
            # tools/list, poll (once, resumed or not), echo: the GETs are not counted.
            assert session["calls_used"] == 3, mine
    seen = target.seen_by(marker)
    resumed = [r for r in seen if r.method == "GET" and "last-event-id" in r.headers]
    assert len(resumed) >= 1, [(r.method, r.headers) for r in seen]
    assert all(r.headers.get("mcp-session-id") for r in resumed)


async def test_resumption_on_the_wire(transparent: Target, web: httpx.AsyncClient) -> None:
    marker = uuid.uuid4().hex
    base = {"accept": ACCEPT, MARKER: marker, AGENT_HEADER: fresh("resume")}
    follow = await legacy_session(web, transparent.endpoint, base)
    session = follow["mcp-session-id"]
    init = next(r for r in transparent.seen_by(marker) if r.method == "POST")
    assert init.response_headers["content-type"].startswith("text/event-stream")

    # The upstream closes this stream right after its priming event.
    call = await web.post(
        transparent.endpoint,
        headers=follow,
        json={
            "jsonrpc": "2.0",
            "id": 2,
            "method": "tools/call",
            "params": {"name": "poll", "arguments": {"text": "wire"}},
        },
    )
    assert call.status_code == 200, call.text
    assert call.headers["content-type"].startswith("text/event-stream"), call.headers
    assert call.headers.get("x-accel-buffering") == "no", call.headers
    events = sse_events(call.text)
    assert events, call.text
    # Only the priming event: an id, empty data, the retry interval. No error of the proxy.
    assert messages_of(events) == [], call.text
    assert "UPSTREAM_STREAM_INTERRUPTED" not in call.text
    assert all(e.id for e in events), events
    assert any(e.retry == str(mcp_rounds.RETRY_MS) for e in events), events
    last_id = events[-1].id
    assert last_id is not None

    # The client resumes: GET with Last-Event-ID, relayed to the upstream.
    headers, answer = await resume(web, transparent.endpoint, follow, last_id, 2)
    assert headers["content-type"].startswith("text/event-stream"), headers
    assert headers.get("x-accel-buffering") == "no", headers
    assert "error" not in answer, answer
    assert answer["result"]["content"][0]["text"] == polled_text("wire")

    seen = transparent.seen_by(marker)
    gets = [r for r in seen if r.method == "GET" and "last-event-id" in r.headers]
    assert len(gets) == 1, [(r.method, r.headers) for r in seen]
    assert gets[0].headers["last-event-id"] == last_id
    assert gets[0].headers["mcp-session-id"] == session
    assert gets[0].headers["mcp-protocol-version"] == LEGACY
    closed = await web.delete(transparent.endpoint, headers=follow)
    assert closed.status_code in (200, 204), closed.text


async def test_sse_answers_carry_x_accel_buffering_no(
    transparent: Target, web: httpx.AsyncClient
) -> None:
    base = {"accept": ACCEPT, MARKER: uuid.uuid4().hex, AGENT_HEADER: fresh("resume")}
    init = await web.post(
        transparent.endpoint,
        headers=base,
        json={
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": LEGACY,
                "capabilities": {},
                "clientInfo": {"name": "warden-rounds-e2e", "version": "0"},
            },
        },
    )
    assert init.status_code == 200, init.text
    assert init.headers["content-type"].startswith("text/event-stream"), init.headers
    assert init.headers.get("x-accel-buffering") == "no", init.headers
    [answer] = messages_of(sse_events(init.text))
    assert answer["result"]["protocolVersion"] == LEGACY


# --- a tools/list answered on the resumed stream is filtered like any other ---------------------

LISTS_POLICY = """\
version: 1
identity: {header: X-Agent-Id}
defaults:
  tools: {deny: ["delete_admin"]}
"""


@pytest.fixture(scope="module")
def lists_warden(
    run_proxy_module: RunProxy, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Target]:
    """The proxy (tools: deny delete_admin) before a server whose tools/list answer comes
    only on the resumed stream."""
    server = ThreadedServer(mcp_rounds.build_polled_lists_app_for)
    server.start()
    path: Path = tmp_path_factory.mktemp("lists") / "lists.yaml"
    path.write_text(LISTS_POLICY)
    try:
        yield _target(run_proxy_module, server, "--policy", str(path))
    finally:
        server.stop()


async def test_control_the_same_tools_list_on_its_own_stream_is_filtered(
    lists_warden: Target, web: httpx.AsyncClient
) -> None:
    """Before 2025-11-25 there is no priming event and the upstream cannot close the
    stream early: the answer comes on the POST's own stream, and the proxy filters it."""
    base = {"accept": ACCEPT, MARKER: uuid.uuid4().hex, AGENT_HEADER: fresh("lists")}
    follow = await legacy_session(web, lists_warden.endpoint, base, "2025-06-18")
    listing = await web.post(
        lists_warden.endpoint,
        headers=follow,
        json={"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
    )
    assert listing.status_code == 200, listing.text
    [answer] = [m for m in messages_of(sse_events(listing.text)) if m.get("id") == 2]
    assert [t["name"] for t in answer["result"]["tools"]] == ["echo"]


async def test_a_resumed_tools_list_is_filtered_on_the_wire(
    lists_warden: Target, web: httpx.AsyncClient
) -> None:
    marker = uuid.uuid4().hex
    base = {"accept": ACCEPT, MARKER: marker, AGENT_HEADER: fresh("lists")}
    follow = await legacy_session(web, lists_warden.endpoint, base)
    listing = await web.post(
        lists_warden.endpoint,
        headers=follow,
        json={"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
    )
    assert listing.status_code == 200, listing.text
    events = sse_events(listing.text)
    assert messages_of(events) == [], listing.text  # the answer comes on the resumed stream
    last_id = events[-1].id
    assert last_id is not None, listing.text
    _, answer = await resume(web, lists_warden.endpoint, follow, last_id, 2)
    names = [t["name"] for t in answer["result"]["tools"]]
    assert names == ["echo"], f"tools/list answered on the resumed GET was not filtered: {names}"


async def test_a_resumed_tools_list_is_filtered_for_the_official_client(
    lists_warden: Target,
) -> None:
    async with sdk_client(lists_warden.endpoint, fresh("lists"), mode="legacy") as (client, marker):
        listed = await client.list_tools()
    resumed = [
        r
        for r in lists_warden.seen_by(marker)
        if r.method == "GET" and "last-event-id" in r.headers
    ]
    assert resumed, "the tools/list answer came on a resumed stream"
    names = [t.name for t in listed.tools]
    assert names == ["echo"], f"tools/list answered on the resumed GET was not filtered: {names}"


async def test_a_tools_list_resumed_through_another_replica_is_filtered(
    run_proxy: RunProxy,
    redis_server: RedisServer,
    tmp_path: Path,
    web: httpx.AsyncClient,
) -> None:
    """The POST goes through one replica, the resuming GET through another (or another
    worker of --workers): the second never saw the request, and still filters every
    tools list on a session's GET for a caller whose rules filter tools."""
    server = ThreadedServer(mcp_rounds.build_polled_lists_app_for)
    server.start()
    try:
        path = tmp_path / "lists.yaml"
        path.write_text(LISTS_POLICY)
        store = f"{redis_server.url}?prefix=rr-{uuid.uuid4().hex[:10]}:"
        args = ("--policy", str(path), "--store", store)
        first, second = _target(run_proxy, server, *args), _target(run_proxy, server, *args)
        base = {"accept": ACCEPT, MARKER: uuid.uuid4().hex, AGENT_HEADER: fresh("lists")}
        follow = await legacy_session(web, first.endpoint, base)
        listing = await web.post(
            first.endpoint,
            headers=follow,
            json={"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
        )
        assert listing.status_code == 200, listing.text
        events = sse_events(listing.text)
        assert messages_of(events) == [], listing.text  # the answer comes on the resumed GET
        last_id = events[-1].id
        assert last_id is not None, listing.text
        _, answer = await resume(web, second.endpoint, follow, last_id, 2)
        names = [t["name"] for t in answer["result"]["tools"]]
        assert names == ["echo"], f"resumed through another replica, not filtered: {names}"
    finally:
        server.stop()
