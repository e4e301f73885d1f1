"""Issue 11 ("Hardening"): regression tests, one or a few per finding, through the proxy process.

The proxy runs as a subprocess (its flags and its own listener are under test), in front of
an aiohttp upstream served on this test's event loop (or the official a2a-sdk agent, or a
raw asyncio server that breaks HTTP on purpose). Requests whose bytes matter are written on
raw sockets. Nothing waits on a bare sleep: tests poll a condition (the upstream's record,
a metric) under a deadline, and every read of a socket has a deadline too.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web
from multidict import CIMultiDict

from tests.conftest import Proxy, RunProxy
from tests.e2e.conftest import StartUpstream
from tests.e2e.test_a2a_policies import RawA2a
from tests.e2e.test_policies import (
    ERROR_INFO,
    RETRY_INFO,
    denial_records,
    eventually,
    scrape,
    seconds_of,
)
from tests.upstreams import a2a_server
from tests.upstreams.serve import LOOPBACK, ThreadedServer

pytestmark = pytest.mark.timeout(60)

AGENT = "X-Agent-Id"
JSON_HEADERS = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
READ_DEADLINE = 10.0  # a socket read that should succeed; only a broken proxy reaches it
LIMITS = "agent_warden_limits_tripped_total"
OVERLOADED = -31073
INVALID_REQUEST = -32600
BANNER = "agent-warden"


def fresh(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def policy_file(tmp_path: Path, text: str) -> str:
    path = tmp_path / f"policy-{uuid.uuid4().hex[:8]}.yaml"
    path.write_text(text)
    return str(path)


def call(tool: str, rid: int = 1) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": rid,
        "method": "tools/call",
        "params": {"name": tool, "arguments": {}},
    }


async def tripped(proxy: Proxy, limit: str) -> float:
    return (await scrape(proxy)).value(LIMITS, limit=limit)


def error_info(details: list[dict[str, Any]]) -> dict[str, Any]:
    infos = [d for d in details if d.get("@type") == ERROR_INFO]
    assert len(infos) == 1, details
    return infos[0]


def check_aip193(status: int, headers: CIMultiDict[str], body: bytes, reason: str) -> None:
    """A proxy-made AIP-193 envelope: JSON, the status in the body, the ErrorInfo reason."""
    assert headers.get("Content-Type", "").startswith("application/json"), (headers, body)
    doc = json.loads(body)
    assert set(doc) == {"error"}, doc
    assert doc["error"]["code"] == status, doc
    assert error_info(doc["error"]["details"])["reason"] == reason, doc


def check_overloaded(status: int, headers: CIMultiDict[str], doc: dict[str, Any]) -> None:
    """OVERLOADED (errors.md 2): -31073 on JSON-RPC, RetryInfo and `Retry-After` (seconds)."""
    assert status == 200, (status, doc)  # JSON-RPC denials travel with 200 (errors.md 1)
    assert doc["jsonrpc"] == "2.0", doc
    assert doc["id"] is None, doc
    error = doc["error"]
    assert error["code"] == OVERLOADED, doc
    assert error["message"] == "proxy overloaded", doc
    assert error_info(error["data"])["reason"] == "OVERLOADED", doc
    retry = [d for d in error["data"] if d.get("@type") == RETRY_INFO]
    assert len(retry) == 1, doc
    delay = seconds_of(retry[0]["retryDelay"])
    assert delay > 0
    after = headers.get("Retry-After", "")
    assert after.isdigit(), headers
    assert int(after) >= delay, headers


# --- raw HTTP/1.1 on a socket --------------------------------------------------------------


@dataclass
class RawResponse:
    status: int
    reason: str
    headers: CIMultiDict[str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def parse_head(head: bytes) -> tuple[int, str, CIMultiDict[str]]:
    lines = head.decode("latin-1").split("\r\n")
    version, status, reason = [*lines[0].split(" ", 2), ""][:3]
    assert version.startswith("HTTP/1."), head
    headers: CIMultiDict[str] = CIMultiDict()
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers.add(name.strip(), value.strip())
    return int(status), reason, headers


class Raw:
    """One client connection written byte by byte."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, url: str) -> Raw:
        host, _, port = url.removeprefix("http://").partition(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def response(self) -> RawResponse:
        """One whole response (Content-Length, chunked, or up to EOF)."""
        return await asyncio.wait_for(self._response(), READ_DEADLINE)

    async def _response(self) -> RawResponse:
        head = await self.reader.readuntil(b"\r\n\r\n")
        status, reason, headers = parse_head(head[:-4])
        if "Content-Length" in headers:
            body = await self.reader.readexactly(int(headers["Content-Length"]))
        elif "chunked" in headers.get("Transfer-Encoding", "").lower():
            parts: list[bytes] = []
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                data = await self.reader.readexactly(size + 2)
                parts.append(data[:size])
                if size == 0:
                    break
            body = b"".join(parts)
        else:
            body = await self.reader.read()
        return RawResponse(status, reason, headers, body)

    async def closed_by_peer(self) -> bytes:
        """Wait for the proxy to close the connection; what it sent before EOF."""

        async def drain() -> bytes:
            got = b""
            try:
                while chunk := await self.reader.read(65536):
                    got += chunk
            except ConnectionResetError:
                pass
            return got

        return await asyncio.wait_for(drain(), READ_DEADLINE)

    def close(self) -> None:
        self.writer.close()


@pytest.fixture
async def raws() -> AsyncIterator[Callable[[str], Awaitable[Raw]]]:
    """`await raws(url)` opens a raw connection, closed at teardown."""
    opened: list[Raw] = []

    async def open_raw(url: str) -> Raw:
        raw = await Raw.open(url)
        opened.append(raw)
        return raw

    yield open_raw
    for raw in opened:
        raw.close()


def host_of(url: str) -> str:
    return url.removeprefix("http://")


# --- an upstream that records, holds calls and streams -------------------------------------


@dataclass
class Seen:
    method: str
    raw_path: str
    headers: CIMultiDict[str]
    body: bytes


@dataclass
class Upstream:
    """Records every request; `/hang*` holds calls and `/events*` streams until `release`."""

    seen: list[Seen] = field(default_factory=list)
    held: int = 0  # calls to /hang that reached the upstream
    release: asyncio.Event = field(default_factory=asyncio.Event)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        # Any path at all, newlines included: the upstream, not the proxy, decides what exists.
        app.router.add_route("*", r"/{tail:[\s\S]*}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.seen.append(Seen(request.method, request.raw_path, CIMultiDict(request.headers), body))
        if request.path.startswith("/hang"):
            self.held += 1
            await self.release.wait()
        if request.path.startswith("/events"):
            out = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await out.prepare(request)
            await out.write(b"event: message\ndata: first\n\n")
            await self.release.wait()
            await out.write_eof()
            return out
        try:
            doc = json.loads(body) if body else None
        except ValueError:
            doc = None
        if isinstance(doc, list):
            return web.json_response(
                [{"jsonrpc": "2.0", "id": m.get("id"), "result": {}} for m in doc if "id" in m]
            )
        if isinstance(doc, dict) and "id" in doc:
            return web.json_response({"jsonrpc": "2.0", "id": doc["id"], "result": {}})
        return web.json_response({"path": request.raw_path})

    def paths(self) -> list[str]:
        return [s.raw_path for s in self.seen]


@pytest.fixture
async def upstream(start_upstream: StartUpstream) -> AsyncIterator[tuple[Upstream, str]]:
    up = Upstream()
    url = await start_upstream(up.app())
    yield up, url
    up.release.set()  # nothing stays held into the teardown


# ==== 3. ListTasks shows, and filters on, other agents' contexts ===============================


@pytest.fixture(scope="module")
def private_a2a() -> Iterator[ThreadedServer]:
    """The official a2a-sdk agent with a task store of this module's own."""
    server = ThreadedServer(a2a_server.build_app)
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def test_list_tasks_is_limited_to_the_callers_contexts(
    run_proxy: RunProxy, private_a2a: ThreadedServer
) -> None:
    """Finding 3: REST ListTasks filtered on another agent's context is refused
    (AGENT_MISMATCH), on an unknown context SESSION_NOT_FOUND, with two context filters
    INVALID_REQUEST; unfiltered ListTasks (REST and JSON-RPC) shows the caller's tasks only
    and is counted in the caller's window."""
    proxy = run_proxy(private_a2a.url)
    async with httpx.AsyncClient(timeout=30.0) as http:
        alice = RawA2a(http, proxy.url, fresh("alice"))
        bob = RawA2a(http, proxy.url, fresh("bob"))
        a_ctx = (await alice.rest_send("alice's secret")).task()["contextId"]
        b_task = (await bob.rest_send("bob's own")).task()
        b_ctx = b_task["contextId"]
        assert a_ctx != b_ctx

        # Filtered on alice's context, by bob.
        reply = await bob.rest("ListTasks", "GET", f"/tasks?contextId={a_ctx}")
        assert reply.response.status_code == 403, reply.response.text
        assert "alice's secret" not in reply.response.text
        check_aip193(
            403, CIMultiDict(reply.response.headers), reply.response.content, "AGENT_MISMATCH"
        )
        reply = await bob.rest("ListTasks", "GET", f"/tasks?context_id={a_ctx}")
        assert reply.response.status_code == 403, reply.response.text

        # Filtered on a context the proxy does not know.
        unknown = str(uuid.uuid4())
        reply = await bob.rest("ListTasks", "GET", f"/tasks?contextId={unknown}")
        check_aip193(
            404, CIMultiDict(reply.response.headers), reply.response.content, "SESSION_NOT_FOUND"
        )

        # Two filters the upstream may read either way.
        reply = await bob.rest("ListTasks", "GET", f"/tasks?contextId={b_ctx}&context_id={a_ctx}")
        assert reply.response.status_code == 400, reply.response.text
        assert "alice's secret" not in reply.response.text
        check_aip193(
            400, CIMultiDict(reply.response.headers), reply.response.content, "INVALID_REQUEST"
        )

        # Unfiltered, on both bindings: bob's tasks only (alice's exist upstream).
        listing = (await bob.rest("ListTasks", "GET", "/tasks")).doc()
        assert [t["contextId"] for t in listing["tasks"]] == [b_ctx], listing
        assert listing.get("totalSize", 1) == 1, listing
        rpc = await bob.rpc("ListTasks", {})
        result = rpc.result()
        assert [t["contextId"] for t in result["tasks"]] == [b_ctx], result
        assert "alice's secret" not in rpc.response.text
        # Alice, unfiltered, sees hers and not bob's.
        mine = (await alice.rest("ListTasks", "GET", "/tasks")).doc()
        assert [t["contextId"] for t in mine["tasks"]] == [a_ctx], mine

        # Filtered on its own context, bob is answered.
        own = (await bob.rest("ListTasks", "GET", f"/tasks?contextId={b_ctx}")).doc()
        assert [t["id"] for t in own["tasks"]] == [b_task["id"]], own

    # The two unfiltered listings were counted in bob's window.
    async with httpx.AsyncClient(timeout=10.0) as admin:
        sessions = (await admin.get(proxy.admin_url + "/sessions")).json()["sessions"]
    bobs = {s["id"]: s for s in sessions if s["agent"] == bob.agent}
    assert bobs[b_ctx]["calls_used"] == 2, bobs  # the send and the own-context listing
    windows = [s for sid, s in bobs.items() if sid != b_ctx]
    assert [w["calls_used"] for w in windows] == [2], bobs


# ==== 5. batches ===============================================================================


async def test_a_batch_over_max_batch_is_one_invalid_request(
    run_proxy: RunProxy, upstream: tuple[Upstream, str]
) -> None:
    """Finding 5: a batch of max_batch + 1 elements is refused whole (-32600, id null),
    never reaches the upstream, and trips `max_batch`."""
    up, url = upstream
    proxy = run_proxy(url, "--max-batch", "10")
    headers = {**JSON_HEADERS, AGENT: fresh("batcher")}
    async with httpx.AsyncClient(timeout=30.0) as http:
        ok = await http.post(
            proxy.url + "/mcp", json=[call("echo", i) for i in range(10)], headers=headers
        )
        assert ok.status_code == 200, ok.text
        assert len(ok.json()) == 10
        assert len(up.seen) == 1
        response = await http.post(
            proxy.url + "/mcp", json=[call("echo", i) for i in range(11)], headers=headers
        )
    doc = response.json()
    assert isinstance(doc, dict), doc  # one answer, not one per element
    assert (doc["jsonrpc"], doc["id"], doc["error"]["code"]) == ("2.0", None, INVALID_REQUEST)
    assert len(up.seen) == 1
    assert await tripped(proxy, "max_batch") == 1


async def test_a_batch_of_denials_is_one_log_line(
    run_proxy: RunProxy, upstream: tuple[Upstream, str], tmp_path: Path
) -> None:
    """Finding 5: a batch of 1000 denied calls is answered element by element, but logged
    once, the line carrying `batch_denied`."""
    up, url = upstream
    policy = policy_file(tmp_path, "version: 1\ndefaults:\n  tools: {deny: [forbidden]}\n")
    proxy = run_proxy(url, "--policy", policy, "--max-batch", "2000")
    agent = fresh("flooder")
    async with httpx.AsyncClient(timeout=30.0) as http:
        response = await http.post(
            proxy.url + "/mcp",
            json=[call("forbidden", i) for i in range(1000)],
            headers={**JSON_HEADERS, AGENT: agent},
        )
    answers = response.json()
    assert isinstance(answers, list), response.text[:500]
    assert len(answers) == 1000
    assert {a["error"]["code"] for a in answers} == {-31064}
    assert sorted(a["id"] for a in answers) == list(range(1000))
    assert up.seen == []
    (record,) = await denial_records(proxy, 1, agent=agent)
    assert record["batch_denied"] == 1000, record
    assert record["reason"] == "TOOL_NOT_AUTHORIZED", record


# ==== 6. bodies are read only for callers that may send them, within a global budget ===========


async def test_an_unidentified_large_body_is_refused_unread(
    run_proxy: RunProxy,
    upstream: tuple[Upstream, str],
    tmp_path: Path,
    raws: Callable[[str], Awaitable[Raw]],
) -> None:
    """Finding 6: with identity required, a 5 MiB POST without an agent id is answered 401
    while most of its body was never sent, and the connection is closed."""
    up, url = upstream
    policy = policy_file(tmp_path, "version: 1\nidentity: {header: X-Agent-Id, required: true}\n")
    proxy = run_proxy(url, "--policy", policy)
    raw = await raws(proxy.url)
    size = 5 * 1024 * 1024
    await raw.send(
        f"POST /mcp HTTP/1.1\r\nHost: {host_of(proxy.url)}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {size}\r\n\r\n".encode()
        + b"["
        + b" " * 8191
    )
    answer = await raw.response()  # the other 5 MiB - 8 KiB are never sent
    assert answer.status == 401, answer
    doc = answer.json()
    assert doc["error"]["code"] == -31068, doc
    assert error_info(doc["error"]["data"])["reason"] == "UNAUTHENTICATED", doc
    # The unread body is never parsed as a next request.
    assert answer.headers.get("Connection", "").lower() == "close", answer.headers
    assert up.seen == []


async def test_bodies_in_flight_share_one_budget(
    run_proxy: RunProxy,
    upstream: tuple[Upstream, str],
    raws: Callable[[str], Awaitable[Raw]],
) -> None:
    """Finding 6: with --max-inflight-body-bytes 1MiB, while a 900 KiB upload is under way a
    200 KiB POST is OVERLOADED (Retry-After) and `max_inflight_body_bytes` trips; the slow
    upload itself completes, and its bytes are given back."""
    up, url = upstream
    proxy = run_proxy(url, "--max-inflight-body-bytes", "1MiB")
    host = host_of(proxy.url)
    ping = b'{"jsonrpc":"2.0","id":1,"method":"demo/ping"}'
    big = ping + b" " * (900 * 1024 - len(ping))
    slow = await raws(proxy.url)
    await slow.send(
        f"POST /slow HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(big)}\r\n\r\n".encode()
        + big[: 16 * 1024]
    )
    # The proxy is handling the slow upload (its bytes are reserved before any is read).
    await eventually(
        lambda: _in_flight(proxy, 1),
    )

    second = await raws(proxy.url)
    await second.send(
        f"POST /second HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {200 * 1024}\r\n\r\n".encode()
    )
    refused = await second.response()
    check_overloaded(refused.status, refused.headers, refused.json())
    assert await tripped(proxy, "max_inflight_body_bytes") == 1

    await slow.send(big[16 * 1024 :])
    done = await slow.response()
    assert done.status == 200, done
    assert up.paths() == ["/slow"]

    # Given back: a 200 KiB body now goes through.
    small = ping + b" " * (200 * 1024 - len(ping))
    async with httpx.AsyncClient(timeout=30.0) as http:
        ok = await http.post(proxy.url + "/after", content=small, headers=JSON_HEADERS)
    assert ok.status_code == 200, ok.text
    assert up.paths() == ["/slow", "/after"]


async def _in_flight(proxy: Proxy, n: int) -> bool:
    return (await scrape(proxy)).value("agent_warden_requests_in_flight") == n


# ==== 8. connections ===========================================================================


async def test_a_slow_request_head_is_cut(
    run_proxy: RunProxy, upstream: tuple[Upstream, str], raws: Callable[[str], Awaitable[Raw]]
) -> None:
    """Finding 8: --header-timeout 1s closes a connection whose request head never ends,
    and trips `header_timeout`."""
    up, url = upstream
    proxy = run_proxy(url, "--header-timeout", "1s")
    raw = await raws(proxy.url)
    await raw.send(b"GET / HTTP/1.1\r\nHost: x\r\n")
    await raw.closed_by_peer()
    assert await tripped(proxy, "header_timeout") == 1
    assert up.seen == []


async def test_an_idle_keepalive_connection_is_closed(
    run_proxy: RunProxy, upstream: tuple[Upstream, str], raws: Callable[[str], Awaitable[Raw]]
) -> None:
    """Finding 8: --keepalive-timeout 1s closes a kept-alive connection left idle, and one
    that never sends a byte."""
    _, url = upstream
    proxy = run_proxy(url, "--keepalive-timeout", "1s")
    silent = await raws(proxy.url)
    raw = await raws(proxy.url)
    await raw.send(f"GET /first HTTP/1.1\r\nHost: {host_of(proxy.url)}\r\n\r\n".encode())
    answer = await raw.response()
    assert answer.status == 200, answer
    assert "close" not in answer.headers.get("Connection", "").lower(), answer.headers
    assert await raw.closed_by_peer() == b""
    assert await silent.closed_by_peer() == b""


async def test_a_new_connection_past_the_cap_closes_the_oldest_idle_one(
    run_proxy: RunProxy, upstream: tuple[Upstream, str], raws: Callable[[str], Awaitable[Raw]]
) -> None:
    """Finding 8: with --max-client-connections 20 and 20 idle connections open, a 21st is
    served; the oldest idle one is closed to make room (`max_client_connections` trips)."""
    up, url = upstream
    proxy = run_proxy(url, "--max-client-connections", "20", "--max-connections", "10")
    host = host_of(proxy.url)
    idle: list[Raw] = []
    for i in range(20):
        raw = await raws(proxy.url)
        await raw.send(f"GET /idle/{i} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        assert (await raw.response()).status == 200  # accepted, answered, now idle
        idle.append(raw)
    assert await tripped(proxy, "max_client_connections") == 0

    newcomer = await raws(proxy.url)
    await newcomer.send(f"GET /newcomer HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    answer = await newcomer.response()
    assert answer.status == 200, answer
    assert await idle[0].closed_by_peer() == b""
    assert await tripped(proxy, "max_client_connections") == 1
    # The others are still open.
    await idle[1].send(f"GET /still HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    assert (await idle[1].response()).status == 200
    assert up.paths()[-2:] == ["/newcomer", "/still"]


# ==== 9. one agent's calls in flight ===========================================================


async def test_an_agents_calls_in_flight_are_capped_but_not_by_streams(
    run_proxy: RunProxy, upstream: tuple[Upstream, str]
) -> None:
    """Finding 9: with --max-inflight-per-agent 2, agent A's third concurrent call is
    OVERLOADED while agent B's goes through; A's open event streams (a GET stream, and a
    POST answered with a stream) hold no call place."""
    up, url = upstream
    proxy = run_proxy(url, "--max-inflight-per-agent", "2")
    alice, bob = fresh("alice"), fresh("bob")
    async with httpx.AsyncClient(timeout=30.0) as http, AsyncExitStack() as streams:

        async def post(agent: str, path: str, rid: int) -> httpx.Response:
            return await http.post(
                proxy.url + path,
                json={"jsonrpc": "2.0", "id": rid, "method": "demo/call"},
                headers={**JSON_HEADERS, AGENT: agent},
            )

        get_stream = http.stream(
            "GET", proxy.url + "/events", headers={AGENT: alice, "Accept": "text/event-stream"}
        )
        post_stream = http.stream(
            "POST",
            proxy.url + "/events-post",
            json={"jsonrpc": "2.0", "id": 0, "method": "demo/watch"},
            headers={**JSON_HEADERS, AGENT: alice},
        )
        for opening in (get_stream, post_stream):
            stream = await streams.enter_async_context(opening)
            assert stream.status_code == 200, stream.headers
            first = await asyncio.wait_for(anext(stream.aiter_lines()), READ_DEADLINE)
            assert first == "event: message"

        calls = [asyncio.create_task(post(alice, "/hang", i)) for i in (1, 2)]
        await eventually(lambda: up.held == 2)

        third = await post(alice, "/hang", 3)
        check_overloaded(third.status_code, CIMultiDict(third.headers), third.json())
        plain = await http.get(proxy.url + "/hang", headers={AGENT: alice})
        assert plain.status_code == 429, plain.text  # the AIP-193 column (errors.md 2)
        check_aip193(429, CIMultiDict(plain.headers), plain.content, "OVERLOADED")
        assert plain.headers.get("Retry-After", "").isdigit(), plain.headers
        assert up.held == 2

        calls.append(asyncio.create_task(post(bob, "/hang", 4)))
        await eventually(lambda: up.held == 3)
        assert await tripped(proxy, "max_inflight_per_agent") == 2

        up.release.set()
        answers = await asyncio.gather(*calls)
        assert [r.status_code for r in answers] == [200, 200, 200]
        assert [r.json()["id"] for r in answers] == [1, 2, 4]
        await streams.aclose()

        # Places given back: A calls again.
        again = await post(alice, "/after", 5)
        assert again.status_code == 200, again.text
        assert again.json()["result"] == {}, again.text


# ==== 15. the identity header ==================================================================


@pytest.mark.parametrize(
    ("extra", "status"),
    [
        pytest.param(
            "Connection: close, X-Agent-Id\r\nX-Agent-Id: alice\r\n", 400, id="named-in-connection"
        ),
        pytest.param("X-Agent-Id: alice\r\nX-Agent-Id: mallory\r\n", 400, id="two-values"),
        pytest.param("X-Agent-Id: alice\r\nX-Agent-Id: alice\r\n", 200, id="same-value-twice"),
    ],
)
async def test_an_identity_header_that_cannot_be_believed_is_refused(
    run_proxy: RunProxy,
    upstream: tuple[Upstream, str],
    raws: Callable[[str], Awaitable[Raw]],
    extra: str,
    status: int,
) -> None:
    """Finding 15: an identity header named in `Connection`, or sent twice with different
    values, is refused 400 (INVALID_REQUEST) before the upstream; the same value twice is
    one identity."""
    up, url = upstream
    proxy = run_proxy(url)
    body = json.dumps(call("echo", 7)).encode()
    raw = await raws(proxy.url)
    await raw.send(
        f"POST /mcp HTTP/1.1\r\nHost: {host_of(proxy.url)}\r\nContent-Type: application/json\r\n"
        f"Accept: application/json, text/event-stream\r\n{extra}"
        f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    answer = await raw.response()
    assert answer.status == status, answer
    doc = answer.json()
    assert doc["id"] == 7, doc
    if status == 400:
        assert doc["error"]["code"] == INVALID_REQUEST, doc
        assert error_info(doc["error"]["data"])["reason"] == "INVALID_REQUEST", doc
        assert up.seen == []
    else:
        assert doc["result"] == {}, doc
        (seen,) = up.seen
        assert set(seen.headers.getall(AGENT)) == {"alice"}, seen.headers


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param("Mcp-Session-Id: a\r\nMcp-Session-Id: b\r\n", id="two-session-ids"),
        pytest.param(
            "MCP-Protocol-Version: 2025-06-18\r\nMCP-Protocol-Version: 2026-07-28\r\n",
            id="two-protocol-versions",
        ),
        pytest.param("Warden-Session: a\r\nWarden-Session: b\r\n", id="two-minted-sessions"),
    ],
)
async def test_a_session_header_sent_twice_is_refused(
    run_proxy: RunProxy,
    upstream: tuple[Upstream, str],
    raws: Callable[[str], Awaitable[Raw]],
    extra: str,
) -> None:
    """Review of this session: the gate reads one copy of a session header, the upstream
    may read the other; a request carrying two is refused (400) before the upstream."""
    up, url = upstream
    proxy = run_proxy(url)
    body = json.dumps(call("echo", 8)).encode()
    raw = await raws(proxy.url)
    await raw.send(
        f"POST /mcp HTTP/1.1\r\nHost: {host_of(proxy.url)}\r\nContent-Type: application/json\r\n"
        f"Accept: application/json, text/event-stream\r\nX-Agent-Id: alice\r\n{extra}"
        f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    answer = await raw.response()
    assert answer.status == 400, answer
    assert answer.json()["error"]["code"] == INVALID_REQUEST
    assert up.seen == []


async def test_an_identity_header_under_another_spelling_never_reaches_the_upstream(
    run_proxy: RunProxy,
    upstream: tuple[Upstream, str],
    raws: Callable[[str], Awaitable[Raw]],
) -> None:
    """Review of this session: `X_Agent_Id` is the same variable as `X-Agent-Id` to CGI and
    WSGI servers; only the proxy's own identity header goes up."""
    up, url = upstream
    proxy = run_proxy(url)
    body = json.dumps(call("echo", 9)).encode()
    raw = await raws(proxy.url)
    await raw.send(
        f"POST /mcp HTTP/1.1\r\nHost: {host_of(proxy.url)}\r\nContent-Type: application/json\r\n"
        f"Accept: application/json, text/event-stream\r\nX-Agent-Id: alice\r\n"
        f"X_Agent_Id: mallory\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    answer = await raw.response()
    assert answer.status == 200, answer
    (seen,) = up.seen
    assert [v for k, v in seen.headers.items() if k.lower().replace("_", "-") == "x-agent-id"] == [
        "alice"
    ], seen.headers


# ==== 16. compressed request bodies ============================================================


async def test_a_gzip_body_is_judged_and_forwarded_inflated(
    run_proxy: RunProxy, upstream: tuple[Upstream, str], tmp_path: Path
) -> None:
    """Finding 16: a gzip-encoded JSON-RPC body is judged (a denied tool is denied) and what
    goes up is the inflated body the proxy judged, without Content-Encoding."""
    up, url = upstream
    policy = policy_file(tmp_path, "version: 1\ndefaults:\n  tools: {deny: [forbidden]}\n")
    proxy = run_proxy(url, "--policy", policy)
    headers = {**JSON_HEADERS, "Content-Encoding": "gzip", AGENT: fresh("zipper")}
    async with httpx.AsyncClient(timeout=30.0) as http:
        denied = await http.post(
            proxy.url + "/mcp",
            content=gzip.compress(json.dumps(call("forbidden", 1)).encode()),
            headers=headers,
        )
        assert denied.status_code == 200, denied.text
        assert denied.json()["error"]["code"] == -31064, denied.text
        assert up.seen == []

        sent = json.dumps(call("echo", 2)).encode()
        allowed = await http.post(proxy.url + "/mcp", content=gzip.compress(sent), headers=headers)
    assert allowed.status_code == 200, allowed.text
    assert allowed.json() == {"jsonrpc": "2.0", "id": 2, "result": {}}
    (seen,) = up.seen
    assert "Content-Encoding" not in seen.headers, seen.headers
    assert seen.body == sent


# ==== 17. absolute-form request targets ========================================================


async def test_an_absolute_form_target_is_forwarded_to_its_path(
    run_proxy: RunProxy, upstream: tuple[Upstream, str], raws: Callable[[str], Awaitable[Raw]]
) -> None:
    """Finding 17: `GET http://host:port/path?q HTTP/1.1` reaches the upstream as /path?q."""
    up, url = upstream
    proxy = run_proxy(url)
    host = host_of(proxy.url)
    raw = await raws(proxy.url)
    await raw.send(f"GET http://{host}/abs/path?q=1 HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    answer = await raw.response()
    assert answer.status == 200, answer
    assert answer.json() == {"path": "/abs/path?q=1"}
    assert up.paths() == ["/abs/path?q=1"]


# ==== 18. what the listener itself answers =====================================================


@pytest.mark.parametrize(
    "request_bytes",
    [
        pytest.param(
            b"GET /x HTTP/1.1\r\nHost: x\r\nBad zq7echo: v\r\n\r\n", id="bad-header-token"
        ),
        pytest.param(b"GET /zq7echo\x7f HTTP/1.1\r\nHost: x\r\n\r\n", id="bad-target-byte"),
        pytest.param(b"ZQ7ECHO\r\n\r\n", id="malformed-request-line"),
        pytest.param(b"CONNECT zq7echo.example:443 HTTP/1.1\r\nHost: x\r\n\r\n", id="connect"),
        pytest.param(b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n", id="options-asterisk"),
    ],
)
async def test_requests_no_route_takes_get_an_envelope(
    run_proxy: RunProxy,
    upstream: tuple[Upstream, str],
    raws: Callable[[str], Awaitable[Raw]],
    request_bytes: bytes,
) -> None:
    """Finding 18: malformed requests, `CONNECT` and `OPTIONS *` get a JSON AIP-193
    envelope (400 INVALID_REQUEST) that echoes nothing of the request, from `agent-warden`."""
    up, url = upstream
    proxy = run_proxy(url)
    raw = await raws(proxy.url)
    await raw.send(request_bytes)
    answer = await raw.response()
    assert answer.status == 400, answer
    check_aip193(400, answer.headers, answer.body, "INVALID_REQUEST")
    assert b"zq7echo" not in answer.body.lower(), answer.body
    assert answer.headers.get("Server") == BANNER, answer.headers
    assert up.seen == []


async def test_a_newline_in_the_path_is_the_upstreams_to_judge(
    run_proxy: RunProxy, upstream: tuple[Upstream, str]
) -> None:
    """Finding 18: a path with %0A is forwarded as sent, not refused as an unknown route;
    proxy-made answers (and the admin's) say `Server: agent-warden`, no aiohttp version."""
    up, url = upstream
    proxy = run_proxy(url)
    async with httpx.AsyncClient(timeout=30.0) as http:
        response = await http.get(proxy.url + "/a%0Ab")
        assert response.status_code == 200, response.text
        assert up.paths() == ["/a%0Ab"]
        refused = await http.post(proxy.url + "/mcp", content=b"{not json", headers=JSON_HEADERS)
        assert refused.json()["error"]["code"] == -32700, refused.text
        assert refused.headers.get("Server") == BANNER, refused.headers
        livez = await http.get(proxy.admin_url + "/livez")
        assert livez.headers.get("Server") == BANNER, livez.headers
    assert up.paths() == ["/a%0Ab"]


# ==== 21. errors after a streamed answer began ================================================

SSE_EVENT = b'event: message\ndata: {"jsonrpc":"2.0","method":"notifications/progress"}\n\n'
TERMINAL_CHUNK = b"0\r\n\r\n"


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


# What the upstream sends once the client holds the first event.
BREAKAGES = {
    # An MCP 2024-11-05 endpoint event naming no URL the proxy can parse: the proxy's own
    # error, raised while relaying (6a31cf7 then wrote a 500 envelope into the stream).
    "bad-endpoint-event": _chunk(b"event: endpoint\ndata: http://[::1\n\n") + TERMINAL_CHUNK,
    "cut-mid-chunk": b"100\r\n" + b"event: message\ndata: {",
    "bad-chunk-size": b"zz-not-hex\r\nmore\r\n",
}


@dataclass
class BrokenStreams:
    """A raw HTTP upstream: every answer is an event stream that breaks after one event."""

    breakage: bytes
    requests: int = 0
    go: asyncio.Event = field(default_factory=asyncio.Event)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.split(b"\r\n")
            _, _, headers = parse_head(b"HTTP/1.1 0 x\r\n" + b"\r\n".join(lines[1:]))
            await reader.readexactly(int(headers.get("Content-Length", "0")))
            self.requests += 1
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n" + _chunk(SSE_EVENT)
            )
            await writer.drain()
            await self.go.wait()
            writer.write(self.breakage)
            await writer.drain()
        finally:
            writer.close()


async def _read_stream(raw: Raw, broken: BrokenStreams) -> tuple[bytes, bool]:
    """Everything the proxy writes on the connection, and whether its stream ended cleanly
    (the terminal chunk) rather than being cut."""
    got = b""
    while SSE_EVENT not in got:
        chunk = await raw.reader.read(65536)
        assert chunk, f"closed before the first event: {got!r}"
        got += chunk
    broken.go.set()
    while not got.endswith(TERMINAL_CHUNK):
        try:
            chunk = await raw.reader.read(65536)
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            return got, False
        got += chunk
    # Ended cleanly: the client's EOF closes the connection; anything written after shows.
    raw.writer.write_eof()
    return got + await raw.closed_by_peer(), True


@pytest.mark.parametrize(
    ("method", "breakage"),
    [
        ("GET", "bad-endpoint-event"),
        ("POST", "cut-mid-chunk"),
        ("GET", "cut-mid-chunk"),
        ("POST", "bad-chunk-size"),
    ],
)
async def test_a_stream_broken_after_it_began_is_never_answered_twice(
    run_proxy: RunProxy, raws: Callable[[str], Awaitable[Raw]], method: str, breakage: str
) -> None:
    """Finding 21: when an event stream breaks after its first event (the upstream cuts it
    or garbles it, or the proxy fails relaying it), the client gets that event and then the
    proxy's error event or a cut connection; never a second status line or an envelope in
    the stream, never half an event."""
    broken = BrokenStreams(BREAKAGES[breakage])
    server = await asyncio.start_server(broken.serve, LOOPBACK, 0)
    port = server.sockets[0].getsockname()[1]
    try:
        proxy = run_proxy(f"http://{LOOPBACK}:{port}", "--stream-idle-timeout", "2s")
        body = json.dumps(call("echo", 1)).encode() if method == "POST" else b""
        raw = await raws(proxy.url)
        await raw.send(
            f"{method} /mcp HTTP/1.1\r\nHost: {host_of(proxy.url)}\r\n"
            f"Content-Type: application/json\r\nAccept: application/json, text/event-stream\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        try:
            got, clean = await asyncio.wait_for(_read_stream(raw, broken), READ_DEADLINE)
        except TimeoutError:
            pytest.fail(
                f"{READ_DEADLINE}s after the upstream broke the stream the client has neither "
                "an error event nor a cut connection",
                pytrace=False,
            )
    finally:
        server.close()
    assert broken.requests == 1
    assert got.count(b"HTTP/1.1 ") == 1, got
    head, _, rest = got.partition(b"\r\n\r\n")
    status, _, headers = parse_head(head)
    assert status == 200, got
    assert headers["Content-Type"].startswith("text/event-stream"), headers
    assert "chunked" in headers.get("Transfer-Encoding", ""), headers
    stream = dechunk(rest)
    assert stream.startswith(SSE_EVENT), got
    after = stream[len(SSE_EVENT) :]
    for line in after.decode("utf-8", "replace").splitlines():
        # Only SSE fields: an envelope or a status line would be a second answer.
        assert line == "" or line.split(":", 1)[0] in ("event", "data", "id", "retry", ""), got
    assert after == b"" or after.endswith(b"\n\n"), f"half an event relayed: {got!r}"
    if breakage == "bad-endpoint-event":
        # An endpoint the proxy cannot parse names no session: relayed as it came, and the
        # upstream's clean end stays clean (6a31cf7 wrote a second response into the stream).
        assert after == b"event: endpoint\ndata: http://[::1\n\n", got
    elif clean:  # a stream that ends, rather than being cut, ends with the proxy's error event
        assert b"UPSTREAM_STREAM_INTERRUPTED" in after, f"a broken stream ended as whole: {got!r}"


def dechunk(data: bytes) -> bytes:
    """The chunks' payloads, as far as they go (the stream may be cut)."""
    out = b""
    while data:
        size_line, sep, data = data.partition(b"\r\n")
        if not sep:
            break
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out += data[:size]
        data = data[size + 2 :]
    return out


async def test_a_bug_after_the_answer_began_cuts_the_connection(
    start_upstream: StartUpstream,
    start_proxy: Callable[..., Awaitable[str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Finding 21: the catch-all error handler never writes a fresh envelope into a response
    already started (aiohttp's own handler checks ``output_size``): the client sees the
    stream's head, then a cut connection, and no second status line."""

    async def events(request: web.Request) -> web.StreamResponse:
        out = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await out.prepare(request)
        await out.write(b"event: message\ndata: {}\n\n")
        await asyncio.sleep(3600)  # held open: only the proxy ends this stream
        return out

    app = web.Application()
    app.router.add_get("/mcp", events)
    proxy = await start_proxy(await start_upstream(app))

    def bug(*_: Any) -> Any:
        raise RuntimeError("a bug while relaying")

    monkeypatch.setattr("proxy.dataplane.line.StreamWatch.feed", bug)
    reader, writer = await asyncio.open_connection(*proxy.removeprefix("http://").split(":"))
    writer.write(b"GET /mcp HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n")
    await writer.drain()
    got = await asyncio.wait_for(reader.read(), 10)  # to the end: the proxy cut it
    writer.close()
    assert got.count(b"HTTP/1.1 ") == 1, got
    assert got.startswith(b"HTTP/1.1 200"), got
    assert b'"error"' not in got, got
