"""A legacy (a2a-sdk 0.3 style) agent behind the proxy looks like a conformant A2A agent."""

from __future__ import annotations

import json
from typing import Any

import pytest
from aiohttp import ClientSession, web

from proxy.policy import DEFAULT_POLICY, PolicyFile, parse_policy
from tests.e2e.conftest import StartProxy, StartUpstream
from tests.upstreams import legacy_a2a
from tests.upstreams.serve import free_port

ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"
SPEC_100 = parse_policy('version: 1\nerrors: {a2a_spec: "1.0.0"}\n', "a2a-100.yaml")
JSON = {"Content-Type": "application/json", "X-Agent-Id": "legacy-client"}


def rpc(method: str, rid: Any = 1, **params: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": rid, "method": method, "params": params}


def message(text: str, **extra: Any) -> dict[str, Any]:
    return {
        "message": {
            "kind": "message",
            "role": "user",
            "messageId": "m-1",
            "parts": [{"kind": "text", "text": text}],
            **extra,
        }
    }


def infos(details: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in details if d.get("@type") == ERROR_INFO]


async def start(
    start_upstream: StartUpstream,
    start_proxy: StartProxy,
    policy: PolicyFile = DEFAULT_POLICY,
    **settings: Any,
) -> str:
    port = free_port()
    upstream = await start_upstream(legacy_a2a.build_app(f"http://127.0.0.1:{port}"), port)
    return await start_proxy(upstream, policy=policy, **settings)


@pytest.fixture
async def proxy(start_upstream: StartUpstream, start_proxy: StartProxy) -> str:
    return await start(start_upstream, start_proxy)


async def test_task_not_found_gets_its_error_info(proxy: str, http: ClientSession) -> None:
    async with http.post(f"{proxy}/", json=rpc("tasks/get", 4, id="nope"), headers=JSON) as resp:
        assert resp.status == 200
        doc = await resp.json()
    assert doc["id"] == 4
    error = doc["error"]
    assert (error["code"], error["message"]) == legacy_a2a.TASK_NOT_FOUND  # unchanged
    [info] = infos(error["data"])
    assert info["reason"] == "TASK_NOT_FOUND"
    assert info["domain"] == "a2a-protocol.org"


async def test_single_object_data_becomes_an_array(proxy: str, http: ClientSession) -> None:
    body = rpc("tasks/cancel", "c", id="t-1")
    async with http.post(f"{proxy}/", json=body, headers=JSON) as resp:
        doc = await resp.json()
    error = doc["error"]
    assert error["code"] == -32002
    assert isinstance(error["data"], list)
    assert len(error["data"]) == 2  # the agent's own object kept, then the ErrorInfo
    assert error["data"][0].get("taskId") == "t-1"
    assert infos(error["data"])[0]["reason"] == "TASK_NOT_CANCELABLE"


async def test_send_passes_and_garbage_is_invalid_agent_response(
    proxy: str, http: ClientSession
) -> None:
    async with http.post(
        f"{proxy}/", json=rpc("message/send", 1, **message("hi")), headers=JSON
    ) as resp:
        doc = await resp.json()
    assert doc["result"]["kind"] == "task"
    assert doc["result"]["contextId"]
    # A method of neither protocol: no earlier request makes it A2A (hardening 4: no state
    # shared between clients in classification), so the MCP/plain JSON-RPC reason applies.
    async with http.post(f"{proxy}/", json=rpc(legacy_a2a.GARBAGE_METHOD, 9), headers=JSON) as r:
        assert r.status == 200
        bad = await r.json()
    assert bad["id"] == 9
    assert bad["error"]["code"] == -32603
    assert infos(bad["error"]["data"])[0]["reason"] == "UPSTREAM_INVALID_RESPONSE"
    # The same with A2A named by its header: the A2A reason.
    headers = {**JSON, "A2A-Version": "0.3"}
    async with http.post(
        f"{proxy}/", json=rpc(legacy_a2a.GARBAGE_METHOD, 10), headers=headers
    ) as r:
        bad = await r.json()
    assert bad["error"]["code"] == -32006
    assert infos(bad["error"]["data"])[0]["reason"] == "INVALID_AGENT_RESPONSE"


async def test_stream_passes_whole_and_a_cut_stream_ends_with_an_error(
    start_upstream: StartUpstream, start_proxy: StartProxy, http: ClientSession
) -> None:
    # test/cut is no A2A method: the operator says what the upstream speaks.
    proxy = await start(start_upstream, start_proxy, protocol="a2a")
    headers = {**JSON, "Accept": "text/event-stream"}
    body = rpc("message/stream", "s1", **message("hello"))
    async with http.post(f"{proxy}/", json=body, headers=headers) as resp:
        text = (await resp.read()).decode()
    events = [json.loads(line[5:]) for line in text.splitlines() if line.startswith("data:")]
    assert events[-1]["result"]["final"] is True
    assert all("error" not in e for e in events)

    async with http.post(
        f"{proxy}/", json=rpc(legacy_a2a.CUT_METHOD, "s2", **message("x")), headers=headers
    ) as resp:
        text = (await resp.read()).decode()
    events = [json.loads(line[5:]) for line in text.splitlines() if line.startswith("data:")]
    last = events[-1]
    assert last["id"] == "s2"
    assert last["error"]["code"] == -32603
    assert infos(last["error"]["data"])[0]["reason"] == "UPSTREAM_STREAM_INTERRUPTED"


# errors.md sections 4 and 5: each legacy REST answer, under both columns.
REST_CASES = [
    # (method, path, body, content type, reason, (status, code) 1.0.1, (status, code) 1.0.0)
    ("GET", "/v1/tasks/unknown", None, None, "TASK_NOT_FOUND",
     (404, "NOT_FOUND"), (404, "NOT_FOUND")),
    ("GET", "/v1/tasks", None, None, "METHOD_NOT_FOUND", (404, "NOT_FOUND"), (404, "NOT_FOUND")),
    ("POST", "/v1/tasks/t-1:cancel", b"{}", "application/json", "TASK_NOT_CANCELABLE",
     (400, "FAILED_PRECONDITION"), (409, "ABORTED")),
    ("POST", "/v1/message:send", b"hello", "text/plain", "CONTENT_TYPE_NOT_SUPPORTED",
     (400, "INVALID_ARGUMENT"), (415, "INVALID_ARGUMENT")),
    ("POST", "/v1/message:send", b'{"nope": 1}', "application/json", "INVALID_PARAMS",
     (400, "INVALID_ARGUMENT"), (400, "INVALID_ARGUMENT")),
    ("GET", "/v1/tasks/t-1/pushNotificationConfigs", None, None,
     "PUSH_NOTIFICATION_NOT_SUPPORTED", (400, "FAILED_PRECONDITION"), (400, "UNIMPLEMENTED")),
    ("GET", f"/v1/tasks/{legacy_a2a.BAD_GATEWAY_TASK}", None, None, "INVALID_AGENT_RESPONSE",
     (500, "INTERNAL"), (502, "INTERNAL")),
]  # fmt: skip


@pytest.mark.parametrize("spec", ["1.0.1", "1.0.0"])
@pytest.mark.parametrize(
    ("method", "path", "body", "ctype", "reason", "v101", "v100"),
    REST_CASES,
    ids=[c[4] for c in REST_CASES],
)
async def test_legacy_rest_errors_become_aip193(
    spec: str,
    method: str,
    path: str,
    body: bytes | None,
    ctype: str | None,
    reason: str,
    v101: tuple[int, str],
    v100: tuple[int, str],
    start_upstream: StartUpstream,
    start_proxy: StartProxy,
    http: ClientSession,
) -> None:
    policy = SPEC_100 if spec == "1.0.0" else DEFAULT_POLICY
    proxy = await start(start_upstream, start_proxy, policy)
    headers = {"X-Agent-Id": "legacy-client"}
    if ctype:
        headers["Content-Type"] = ctype
    async with http.request(method, f"{proxy}{path}", data=body, headers=headers) as resp:
        doc = await resp.json()
        status = resp.status
    expected_status, expected_code = v100 if spec == "1.0.0" else v101
    assert status == expected_status
    error = doc["error"]
    assert (error["code"], error["status"]) == (expected_status, expected_code)
    [info] = infos(error["details"])
    assert info["reason"] == reason
    assert info["domain"] == "a2a-protocol.org"


async def test_legacy_card_is_rewritten_to_the_public_url(
    start_upstream: StartUpstream, start_proxy: StartProxy, http: ClientSession
) -> None:
    port = free_port()
    upstream = await start_upstream(legacy_a2a.build_app(f"http://127.0.0.1:{port}"), port)
    plain = await start_proxy(upstream)
    async with http.get(f"{plain}{legacy_a2a.CARD_PATH}") as resp:
        original = await resp.read()
    card = json.loads(original)
    assert card["url"].startswith(upstream)

    public = "https://agents.example.test/billing"
    proxy = await start_proxy(upstream, public_url=public)
    async with http.get(f"{proxy}{legacy_a2a.CARD_PATH}") as resp:
        assert resp.status == 200
        assert "ETag" not in resp.headers
        moved = await resp.json()
    assert moved["url"] == public + card["url"].removeprefix(upstream)
    assert {k: v for k, v in moved.items() if k not in ("url", "additionalInterfaces")} == {
        k: v for k, v in card.items() if k not in ("url", "additionalInterfaces")
    }


async def test_the_extended_card_over_json_rpc_is_moved_to_the_public_url(
    start_upstream: StartUpstream, start_proxy: StartProxy, http: ClientSession
) -> None:
    """GetExtendedAgentCard answered over JSON-RPC names the same interfaces as the public
    card: with --public-url they move too (they did not: the rewrite sat behind the
    tools/list filter)."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"

    async def extended(request: web.Request) -> web.Response:
        sent = await request.json()
        card = {
            "name": "billing",
            "supportedInterfaces": [{"url": base + "/a2a", "protocolBinding": "JSONRPC"}],
            "provider": {"url": base + "/about"},
        }
        return web.json_response({"jsonrpc": "2.0", "id": sent["id"], "result": card})

    app = web.Application()
    app.router.add_post("/a2a", extended)
    upstream = await start_upstream(app, port)
    call = {"jsonrpc": "2.0", "id": 4, "method": "GetExtendedAgentCard", "params": {}}
    headers = {"Content-Type": "application/json", "A2A-Version": "1.0"}
    public = "https://agents.example.test/billing"
    for proxy, url in (
        (await start_proxy(upstream), base + "/a2a"),
        (await start_proxy(upstream, public_url=public), public + "/a2a"),
    ):
        async with http.post(f"{proxy}/a2a", json=call, headers=headers) as resp:
            assert resp.status == 200, await resp.text()
            doc = await resp.json()
        assert doc["id"] == 4
        assert doc["result"]["supportedInterfaces"][0]["url"] == url
        assert doc["result"]["provider"]["url"] == base + "/about"  # only interfaces move
