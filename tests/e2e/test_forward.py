"""The forwarder against a hand-written upstream: fidelity, streaming, headers, failures.

Requests use JSON-RPC methods of neither MCP nor A2A unless a test is about one of them:
MCP messages need a session, which the session-policy tests cover.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import zlib
from typing import Any

import pytest
from aiohttp import ClientSession

from tests.e2e.conftest import StartProxy, StartUpstream
from tests.upstreams.broken import FAITHFUL_JSONRPC, SSE_FIRST, Broken

JSON = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}


def rpc(method: str = "demo/call", rid: Any = 1, **params: Any) -> bytes:
    doc: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "params": params or {"name": "x"}}
    if rid is not ...:
        doc["id"] = rid
    return json.dumps(doc).encode()


@pytest.fixture
async def broken() -> Broken:
    return Broken()


@pytest.fixture
async def proxy(broken: Broken, start_upstream: StartUpstream, start_proxy: StartProxy) -> str:
    upstream = await start_upstream(broken.app())
    return await start_proxy(upstream, response_timeout=1.0)


def error_info(details: list[dict[str, Any]]) -> dict[str, Any]:
    infos = [d for d in details if d["@type"] == "type.googleapis.com/google.rpc.ErrorInfo"]
    assert len(infos) == 1
    return infos[0]


# -- fidelity ---------------------------------------------------------------------------


async def test_jsonrpc_response_is_byte_for_byte(proxy: str, http: ClientSession) -> None:
    async with http.post(f"{proxy}/faithful", data=rpc(rid=7), headers=JSON) as resp:
        assert resp.status == 200
        assert await resp.read() == FAITHFUL_JSONRPC


async def test_large_chunked_body_streams_unchanged(proxy: str, http: ClientSession) -> None:
    size = 3 * 1024 * 1024 + 17
    async with http.get(f"{proxy}/blob?size={size}") as resp:
        assert resp.status == 200
        body = await resp.read()
    assert len(body) == size
    assert body == bytes(i % 251 for i in range(size))


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
async def test_every_method_and_path_and_query_reach_upstream(
    method: str, proxy: str, http: ClientSession, broken: Broken
) -> None:
    payload = b"opaque \x00 bytes" if method in ("PUT", "PATCH") else None
    headers = {"Content-Type": "application/octet-stream"} if payload else {}
    url = f"{proxy}/echo/a%2Fb/c?x=1&y=%20z"
    async with http.request(method, url, data=payload, headers=headers) as resp:
        assert resp.status == 200
    seen = broken.seen[-1]
    assert seen["method"] == method
    assert seen["path_qs"] == "/echo/a%2Fb/c?x=1&y=%20z"
    if payload:
        assert seen["body"].encode("latin-1") == payload


async def test_head_has_no_body(proxy: str, http: ClientSession) -> None:
    async with http.get(f"{proxy}/echo") as got:
        size = len(await got.read())
    async with http.head(f"{proxy}/echo") as resp:
        assert resp.status == 200
        assert await resp.read() == b""
        # The upstream's own Content-Length (its echo says "HEAD", one letter more).
        assert resp.headers["Content-Length"] == str(size + 1), resp.headers
        assert size > 100


# -- content codings ----------------------------------------------------------------------


@pytest.mark.parametrize("coding", ["gzip", "x-gzip", "deflate"])
async def test_compressed_bodies_are_inflated_judged_and_forwarded_plain(
    coding: str, proxy: str, http: ClientSession, broken: Broken
) -> None:
    sent = rpc(rid=3)
    packed = gzip.compress(sent) if "gzip" in coding else zlib.compress(sent)
    headers = {**JSON, "Content-Encoding": coding}
    async with http.post(f"{proxy}/echo", data=packed, headers=headers) as resp:
        assert resp.status == 200
        assert (await resp.json())["id"] == 3
    # A streamed (non-POST) body is inflated on its way up as well.
    async with http.put(f"{proxy}/echo", data=packed, headers=headers) as resp:
        assert resp.status == 200
    for seen in broken.seen:
        assert seen["body"].encode("latin-1") == sent
        names = {name.lower() for name, _ in seen["headers"]}
        assert "content-encoding" not in names


@pytest.mark.parametrize(
    ("coding", "body", "status"),
    [
        pytest.param("br", b"\x0b\x02\x80{}\x03", 415, id="unsupported"),
        pytest.param("gzip, gzip", gzip.compress(gzip.compress(b"{}")), 415, id="twice"),
        pytest.param("gzip", b"\x1f\x8b not really gzip", 400, id="corrupt"),
        pytest.param("gzip", gzip.compress(rpc())[:-6], 400, id="truncated"),
    ],
)
async def test_bodies_the_proxy_cannot_read_are_refused(
    coding: str, body: bytes, status: int, proxy: str, http: ClientSession, broken: Broken
) -> None:
    headers = {**JSON, "Content-Encoding": coding}
    for method in ("POST", "PUT"):
        async with http.request(method, f"{proxy}/echo", data=body, headers=headers) as resp:
            assert resp.status == status, await resp.text()
            doc = await resp.json()
        assert "error" in doc, doc
    assert broken.seen == []


async def test_a_small_body_that_inflates_past_the_limit_is_too_large(
    broken: Broken, start_upstream: StartUpstream, start_proxy: StartProxy, http: ClientSession
) -> None:
    proxy = await start_proxy(await start_upstream(broken.app()), max_body_size=64 * 1024)
    bomb = gzip.compress(rpc(name="x", arguments={"blob": "a" * (8 * 1024 * 1024)}))
    assert len(bomb) < 64 * 1024
    headers = {**JSON, "Content-Encoding": "gzip"}
    async with http.post(f"{proxy}/echo", data=bomb, headers=headers) as resp:
        doc = await resp.json()
    assert error_info(doc["error"]["data"])["reason"] == "REQUEST_TOO_LARGE"
    assert broken.seen == []


# -- SSE ----------------------------------------------------------------------------------


async def test_sse_events_arrive_as_written(
    proxy: str, http: ClientSession, broken: Broken
) -> None:
    async with http.post(f"{proxy}/sse", data=rpc(rid=3), headers=JSON) as resp:
        assert resp.status == 200
        assert resp.content_type == "text/event-stream"
        first = await resp.content.readuntil(b"\n\n")
        # The first event is here while the upstream still holds the second one back.
        assert first == SSE_FIRST
        assert not broken.second_sent.is_set()
        broken.gate.set()
        rest = await resp.read()
    assert rest == b'event: message\ndata: {"jsonrpc":"2.0","id":3,"result":{}}\n\n'


async def test_sse_cut_ends_with_error_event_for_the_request_id(
    proxy: str, http: ClientSession
) -> None:
    async with http.post(f"{proxy}/cut", data=rpc(rid="req-9"), headers=JSON) as resp:
        assert resp.status == 200
        body = await resp.read()
    assert body.startswith(SSE_FIRST)
    tail = body[len(SSE_FIRST) :]
    # Half an event is never delivered; the proxy's own event follows whole.
    assert tail.startswith(b"event: message\ndata: ")
    assert tail.endswith(b"\n\n")
    doc = json.loads(tail[len(b"event: message\ndata: ") : -2])
    assert doc["id"] == "req-9"
    assert doc["error"]["code"] == -32603
    assert error_info(doc["error"]["data"])["reason"] == "UPSTREAM_STREAM_INTERRUPTED"


async def test_opaque_body_cut_is_a_cut_connection(proxy: str, http: ClientSession) -> None:
    async with http.get(f"{proxy}/cut-body") as resp:
        assert resp.status == 200
        with pytest.raises(Exception, match=r"(?i)payload|connection|closed"):
            await resp.read()


# -- headers ------------------------------------------------------------------------------


async def test_hop_by_hop_dropped_both_ways_and_forwarding_headers_set(
    proxy: str, http: ClientSession, broken: Broken
) -> None:
    init = rpc("initialize", rid=1, protocolVersion="2025-06-18", capabilities={})
    owner = {**JSON, "X-Agent-Id": "agent-1"}
    async with http.post(f"{proxy}/session-init", data=init, headers=owner) as resp:
        assert resp.status == 200
    sent = {
        "Connection": "keep-alive, X-Private",
        "X-Private": "secret",
        "Keep-Alive": "timeout=9",
        "TE": "trailers",
        "Proxy-Authorization": "Basic eDp5",
        "Upgrade": "h2c",
        "Mcp-Session-Id": "up-1",
        "MCP-Protocol-Version": "2025-06-18",
        "Last-Event-ID": "ev-4",
        "A2A-Version": "1.0",
        "A2A-Extensions": "https://x/ext",
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "X-Agent-Id": "agent-1",
    }
    async with http.get(f"{proxy}/hop", headers=sent) as resp:
        assert resp.status == 200
        got_back = {k.lower() for k in resp.headers}
        assert resp.headers["X-End-To-End"] == "kept"
    assert "x-secret-hop" not in got_back
    assert "keep-alive" not in got_back
    seen = {k.lower(): v for k, v in broken.seen[-1]["headers"]}
    for name in ("x-private", "keep-alive", "te", "proxy-authorization", "upgrade"):
        assert name not in seen, name
    for name in (
        "Mcp-Session-Id",
        "MCP-Protocol-Version",
        "Last-Event-ID",
        "A2A-Version",
        "A2A-Extensions",
        "traceparent",
        "X-Agent-Id",
    ):
        assert seen[name.lower()] == sent[name], name
    upstream_port = proxy  # the proxy URL differs from the upstream's: Host must be rewritten
    assert seen["host"] != upstream_port.removeprefix("http://")
    assert seen["x-forwarded-for"] == "127.0.0.1"
    assert seen["x-forwarded-proto"] == "http"
    assert seen["x-forwarded-host"] == proxy.removeprefix("http://")


async def test_client_forwarding_claims_are_replaced(
    proxy: str, http: ClientSession, broken: Broken
) -> None:
    """Hardening 20: the client's own X-Forwarded-*, Forwarded and X-Real-IP never reach the
    upstream; the proxy says who the client is."""
    claims = {
        "X-Forwarded-For": "10.0.0.1",
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "victim.example",
        "Forwarded": "for=10.0.0.1;proto=https",
        "X-Real-IP": "10.0.0.1",
    }
    async with http.get(f"{proxy}/hop", headers=claims) as resp:
        assert resp.status == 200
    seen = {k.lower(): v for k, v in broken.seen[-1]["headers"]}
    assert seen["x-forwarded-for"] == "127.0.0.1"
    assert seen["x-forwarded-proto"] == "http"
    assert seen["x-forwarded-host"] == proxy.removeprefix("http://")
    assert "forwarded" not in seen
    assert "x-real-ip" not in seen


# -- what the proxy refuses itself ----------------------------------------------------------


async def test_malformed_json_is_a_parse_error(proxy: str, http: ClientSession) -> None:
    async with http.post(f"{proxy}/echo", data=b'{"jsonrpc": "2.0",', headers=JSON) as resp:
        assert resp.status == 200
        doc = await resp.json()
    assert doc["id"] is None
    assert doc["error"]["code"] == -32700


async def test_duplicate_keys_are_refused(proxy: str, http: ClientSession, broken: Broken) -> None:
    body = b'{"jsonrpc":"2.0","id":1,"method":"demo/call","method":"demo/list"}'
    async with http.post(f"{proxy}/echo", data=body, headers=JSON) as resp:
        doc = await resp.json()
    assert doc["error"]["code"] == -32600
    assert doc["id"] is None
    assert broken.seen == []  # never reached the upstream


async def test_body_over_limit_gets_an_envelope(
    broken: Broken, start_upstream: StartUpstream, start_proxy: StartProxy, http: ClientSession
) -> None:
    proxy = await start_proxy(await start_upstream(broken.app()), max_body_size=1024)
    big = rpc(name="x", arguments={"blob": "a" * 4096})
    async with http.post(f"{proxy}/echo", data=big, headers=JSON) as resp:
        doc = await resp.json()
    assert error_info(doc["error"]["data"])["reason"] == "REQUEST_TOO_LARGE"

    async def chunks() -> Any:
        for _ in range(8):
            yield b"z" * 512

    headers = {"Content-Type": "application/octet-stream"}
    async with http.put(f"{proxy}/echo", data=chunks(), headers=headers) as resp:
        assert resp.status == 400
        doc = await resp.json()
    assert doc["error"]["details"][0]["reason"] == "REQUEST_TOO_LARGE"
    assert broken.seen == []


async def test_batch_elements_pass_and_ids_echo(proxy: str, http: ClientSession) -> None:
    batch = [
        {"jsonrpc": "2.0", "id": 1, "method": "demo/list"},
        {"jsonrpc": "2.0", "method": "demo/notify"},
        {"jsonrpc": "2.0", "id": "two", "method": "demo/ping"},
    ]
    async with http.post(f"{proxy}/echo", data=json.dumps(batch), headers=JSON) as resp:
        assert resp.status == 200
        doc = await resp.json()
    assert [m["id"] for m in doc] == [1, "two"]


# -- upstream failures, rewritten ------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "status", "code_name"),
    [
        ("/html500", 500, "INTERNAL"),
        ("/text503", 503, "UNAVAILABLE"),
        ("/msg400", 400, "INVALID_ARGUMENT"),
        ("/gone", 404, "NOT_FOUND"),
    ],
)
async def test_error_status_on_plain_paths_becomes_aip193(
    path: str, status: int, code_name: str, proxy: str, http: ClientSession
) -> None:
    async with http.get(f"{proxy}{path}") as resp:
        assert resp.status == status
        assert resp.content_type == "application/json"
        doc = await resp.json()
    err = doc["error"]
    assert err["code"] == status
    assert err["status"] == code_name
    info = error_info(err["details"])
    assert info["reason"] == "UPSTREAM_ERROR"
    assert info["domain"] == "agent-warden.dev"
    assert "Traceback" not in json.dumps(doc)
    assert "<html>" not in json.dumps(doc)


async def test_upstream_message_is_withheld(
    proxy: str, http: ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    """Hardening 14: an upstream's own error text (traces, paths, secrets) never reaches the
    client; the message is the fixed one and the text goes to the operator's log."""
    with caplog.at_level(logging.WARNING, logger="agent_warden.forward"):
        async with http.get(f"{proxy}/msg400") as resp:
            doc = await resp.json()
    assert doc["error"]["message"] == "upstream error"
    assert "the thing was wrong" not in json.dumps(doc)
    withheld = [r for r in caplog.records if r.getMessage().startswith("upstream error text")]
    assert [getattr(r, "upstream_message", None) for r in withheld] == ["the thing was wrong"]


@pytest.mark.parametrize("path", ["/html500", "/text503", "/msg400"])
async def test_error_status_on_jsonrpc_becomes_jsonrpc_error(
    path: str, proxy: str, http: ClientSession
) -> None:
    async with http.post(f"{proxy}{path}", data=rpc(rid=41), headers=JSON) as resp:
        assert resp.status == 200
        doc = await resp.json()
    assert doc["jsonrpc"] == "2.0"
    assert doc["id"] == 41
    assert doc["error"]["code"] == -32603
    assert error_info(doc["error"]["data"])["reason"] == "UPSTREAM_ERROR"


@pytest.mark.parametrize("path", ["/garbage", "/notrpc", "/empty200"])
async def test_invalid_2xx_for_jsonrpc_is_rewritten(
    path: str, proxy: str, http: ClientSession
) -> None:
    async with http.post(f"{proxy}{path}", data=rpc(rid="a"), headers=JSON) as resp:
        assert resp.status == 200
        doc = await resp.json()
    assert doc["id"] == "a"
    assert doc["error"]["code"] == -32603
    assert error_info(doc["error"]["data"])["reason"] == "UPSTREAM_INVALID_RESPONSE"


async def test_invalid_2xx_for_a2a_is_invalid_agent_response(
    proxy: str, http: ClientSession
) -> None:
    body = rpc("message/send", rid=5, message={"role": "user", "parts": []})
    async with http.post(f"{proxy}/garbage", data=body, headers=JSON) as resp:
        doc = await resp.json()
    assert doc["error"]["code"] == -32006
    info = error_info(doc["error"]["data"])
    assert info["reason"] == "INVALID_AGENT_RESPONSE"
    assert info["domain"] == "a2a-protocol.org"


async def test_conformant_errors_pass_through_unchanged(proxy: str, http: ClientSession) -> None:
    async with http.post(f"{proxy}/rpc-error", data=rpc(rid=3), headers=JSON) as resp:
        assert resp.status == 400
        assert await resp.json() == {
            "jsonrpc": "2.0",
            "id": 3,
            "error": {"code": -32602, "message": "bad"},
        }
    async with http.get(f"{proxy}/aip-error") as resp:
        assert resp.status == 403
        assert (await resp.json())["error"]["message"] == "nope"


async def test_auth_challenge_survives_the_rewrite(proxy: str, http: ClientSession) -> None:
    async with http.post(f"{proxy}/auth", data=rpc(rid=1), headers=JSON) as resp:
        assert resp.status == 401
        assert resp.headers["WWW-Authenticate"].startswith("Bearer ")
        doc = await resp.json()
    assert doc["id"] == 1
    assert doc["error"]["code"] == -32603


async def test_mcp_404_with_session_means_session_gone(proxy: str, http: ClientSession) -> None:
    init = rpc("initialize", rid=1, protocolVersion="2025-06-18", capabilities={})
    async with http.post(f"{proxy}/session-init", data=init, headers=JSON) as resp:
        assert resp.status == 200
        sid = resp.headers["Mcp-Session-Id"]
    assert sid == "up-1"  # the upstream's own id: the proxy bound its session to it
    headers = {**JSON, "Mcp-Session-Id": sid}
    body = rpc("tools/call", rid=2, name="echo", arguments={})
    async with http.post(f"{proxy}/gone", data=body, headers=headers) as resp:
        assert resp.status == 404
        doc = await resp.json()
    assert doc["error"]["code"] == -32005
    assert error_info(doc["error"]["data"])["reason"] == "SESSION_NOT_FOUND"


async def test_notification_failure_uses_http_status(proxy: str, http: ClientSession) -> None:
    body = rpc("demo/notify", rid=...)
    async with http.post(f"{proxy}/text503", data=body, headers=JSON) as resp:
        assert resp.status == 503
        doc = await resp.json()
    assert doc["id"] is None
    async with http.post(f"{proxy}/accepted", data=body, headers=JSON) as resp:
        assert resp.status == 202


async def test_dead_upstream_is_unavailable(start_proxy: StartProxy, http: ClientSession) -> None:
    from tests.upstreams.serve import free_port

    proxy = await start_proxy(f"http://127.0.0.1:{free_port()}")
    async with http.post(f"{proxy}/mcp", data=rpc(rid=8), headers=JSON) as resp:
        assert resp.status == 200
        doc = await resp.json()
    assert doc["id"] == 8
    assert doc["error"]["code"] == -32603
    assert error_info(doc["error"]["data"])["reason"] == "UPSTREAM_UNAVAILABLE"
    async with http.get(f"{proxy}/anything") as resp:
        assert resp.status == 503
        doc = await resp.json()
    assert doc["error"]["status"] == "UNAVAILABLE"


async def test_slow_upstream_times_out(proxy: str, http: ClientSession) -> None:
    async with http.post(f"{proxy}/slow?s=5", data=rpc(rid=9), headers=JSON) as resp:
        doc = await resp.json()
    assert doc["id"] == 9
    assert error_info(doc["error"]["data"])["reason"] == "UPSTREAM_TIMEOUT"
    async with http.get(f"{proxy}/slow?s=5") as resp:
        assert resp.status == 504
        doc = await resp.json()
    assert doc["error"]["status"] == "DEADLINE_EXCEEDED"


async def test_keepalive_connections_are_reused_safely(proxy: str, http: ClientSession) -> None:
    results = await asyncio.gather(
        *(http.post(f"{proxy}/echo", data=rpc(rid=i), headers=JSON) for i in range(50))
    )
    ids = []
    for resp in results:
        ids.append((await resp.json())["id"])
        resp.release()
    assert sorted(ids) == list(range(50))


async def test_a_client_that_leaves_frees_its_place_under_the_cap(
    broken: Broken, start_upstream: StartUpstream, start_proxy: StartProxy, http: ClientSession
) -> None:
    from aiohttp import ClientTimeout

    from proxy.policy import parse_policy

    policy = parse_policy("version: 1\ndefaults: {session: {max_per_agent: 1}}\n", "cap.yaml")
    proxy = await start_proxy(await start_upstream(broken.app()), policy=policy)
    init = rpc("initialize", rid=1, protocolVersion="2025-06-18", capabilities={})
    headers = {**JSON, "X-Agent-Id": "leaver"}
    with pytest.raises(asyncio.TimeoutError):  # the upstream never answers: the client gives up
        await http.post(f"{proxy}/held", data=init, headers=headers, timeout=ClientTimeout(0.3))
    for _ in range(100):  # the proxy notices the client left and frees the reserved place
        async with http.post(f"{proxy}/session-init", data=init, headers=headers) as resp:
            doc = await resp.json()
        if "result" in doc:
            break
        assert error_info(doc["error"]["data"])["reason"] == "TOO_MANY_SESSIONS"
        await asyncio.sleep(0.05)
    assert doc["result"]["protocolVersion"] == "2025-06-18"


async def test_a_request_without_host_names_the_address_it_came_to(
    proxy: str, broken: Broken
) -> None:
    """HTTP/1.0 needs no Host: X-Forwarded-Host is then the address the proxy listens on,
    never empty (as aiohttp answered before the listener was the proxy's own)."""
    host, port = proxy.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"GET /echo HTTP/1.0\r\n\r\n")
    data = await reader.read()
    writer.close()
    assert data.startswith(b"HTTP/1.1 200"), data[:100]
    seen = dict((k.lower(), v) for k, v in broken.seen[-1]["headers"])
    assert seen["x-forwarded-host"] == f"{host}:{port}"


async def test_a_compressed_body_counts_as_the_largest_while_it_is_read(
    broken: Broken, start_upstream: StartUpstream, start_proxy: StartProxy, http: ClientSession
) -> None:
    """max_inflight_body_bytes holds inflated bodies: a compressed one may grow to the body
    limit, so it holds that much while it is read (not its compressed length)."""
    proxy = await start_proxy(
        await start_upstream(broken.app()),
        max_body_size=1024 * 1024,
        max_inflight_body_bytes=512 * 1024,
    )
    packed = gzip.compress(rpc())
    headers = {**JSON, "Content-Encoding": "gzip"}
    async with http.post(f"{proxy}/echo", data=packed, headers=headers) as resp:
        doc = await resp.json()
    assert error_info(doc["error"]["data"])["reason"] == "OVERLOADED"
    async with http.post(f"{proxy}/echo", data=rpc(), headers=JSON) as resp:
        assert resp.status == 200  # a plain body of the same size passes
    assert len(broken.seen) == 1
