"""proxy.errors.normalize: upstream A2A errors made conformant (errors.md sections 3 to 5).

Conformant documents come from the installed a2a-sdk 1.x (its JSON-RPC and REST error
builders), legacy ones from its v0.3 models and from the hand-written legacy upstream,
which is also checked here to serve what it claims.
"""

from __future__ import annotations

import copy
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from a2a.client.transports.rest import _parse_rest_error
from a2a.compat.v0_3 import a2a_v0_3_pb2 as pb03
from a2a.compat.v0_3 import types as v03
from a2a.server.request_handlers.response_helpers import build_error_response
from a2a.utils import errors as sdk_errors
from a2a.utils.error_handlers import build_rest_error_payload
from aiohttp.test_utils import TestServer
from google.protobuf.json_format import ParseDict
from pydantic import BaseModel

from proxy.errors import A2A_BY_JSONRPC_CODE, A2A_DOMAIN, ERROR_INFO_TYPE, E
from proxy.errors.normalize import (
    VALUE_TYPE,
    complete_aip193,
    is_aip193,
    legacy_rest_reason,
    normalize_jsonrpc_error,
    rest_reason_for_jsonrpc_code,
)
from proxy.protocols.a2a import classify_rest
from tests.upstreams import legacy_a2a
from tests.upstreams.serve import LOOPBACK, free_port

A2A_CODES = sorted(A2A_BY_JSONRPC_CODE, reverse=True)
# The v0.3 error models by code (v0.3 stops at -32007), dumped as a 0.3 server did.
LEGACY_ERRORS: dict[int, type[BaseModel]] = {
    cls.model_fields["code"].default: cls
    for cls in vars(v03).values()
    if isinstance(cls, type)
    and issubclass(cls, BaseModel)
    and cls.__name__.endswith("Error")
    and "code" in cls.model_fields
    and cls.model_fields["code"].default in A2A_BY_JSONRPC_CODE
}
OTHER_CODES = [-32700, -32600, -32601, -32602, -32603, -32000, -32010, -31060, -32099, 0, 42]


def info(reason: str, domain: str = A2A_DOMAIN) -> dict[str, Any]:
    return {"@type": ERROR_INFO_TYPE, "reason": reason, "domain": domain, "metadata": {}}


def rpc_error(code: int, **extra: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": 7, "error": {"code": code, "message": "upstream says", **extra}}


def normalized_twice_is_once(doc: object) -> None:
    once = normalize_jsonrpc_error(doc)
    assert normalize_jsonrpc_error(doc if once is None else once) is None


# --- JSON-RPC: every A2A code -------------------------------------------------------


@pytest.mark.parametrize("code", A2A_CODES)
def test_a2a_code_without_data_gets_error_info(code: int) -> None:
    doc = rpc_error(code)
    before = copy.deepcopy(doc)
    out = normalize_jsonrpc_error(doc)
    reason = A2A_BY_JSONRPC_CODE[code].value.reason
    assert out == {
        "jsonrpc": "2.0",
        "id": 7,
        "error": {"code": code, "message": "upstream says", "data": [info(reason)]},
    }
    assert doc == before  # the input is not mutated
    normalized_twice_is_once(doc)


@pytest.mark.parametrize("code", A2A_CODES)
def test_a2a_code_with_null_data_gets_error_info(code: int) -> None:
    out = normalize_jsonrpc_error(rpc_error(code, data=None))
    assert isinstance(out, dict)
    assert out["error"]["data"] == [info(A2A_BY_JSONRPC_CODE[code].value.reason)]


@pytest.mark.parametrize("code", A2A_CODES)
def test_single_object_data_becomes_an_array_with_error_info(code: int) -> None:
    detail = {"taskId": "t-1", "state": "completed"}
    out = normalize_jsonrpc_error(rpc_error(code, data=detail))
    assert isinstance(out, dict)
    assert out["error"]["data"] == [detail, info(A2A_BY_JSONRPC_CODE[code].value.reason)]
    assert out["error"]["code"] == code
    assert out["error"]["message"] == "upstream says"
    normalized_twice_is_once(rpc_error(code, data=detail))


@pytest.mark.parametrize("code", A2A_CODES)
def test_single_error_info_object_is_only_wrapped(code: int) -> None:
    own = {**info("SOMETHING_ELSE", "agent.example"), "metadata": {"k": "v"}}
    out = normalize_jsonrpc_error(rpc_error(code, data=own))
    assert isinstance(out, dict)
    assert out["error"]["data"] == [own]


@pytest.mark.parametrize("code", A2A_CODES)
def test_array_without_error_info_gets_it_appended(code: int) -> None:
    retry = {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "2s"}
    out = normalize_jsonrpc_error(rpc_error(code, data=[retry]))
    assert isinstance(out, dict)
    assert out["error"]["data"] == [retry, info(A2A_BY_JSONRPC_CODE[code].value.reason)]


@pytest.mark.parametrize("code", A2A_CODES)
def test_array_with_any_error_info_passes_unchanged(code: int) -> None:
    own = info("AGENT_OWN_REASON", "agent.example")
    assert normalize_jsonrpc_error(rpc_error(code, data=[{"x": 1}, own])) is None


@pytest.mark.parametrize("value", ["a traceback line", 3, 2.5, True, False])
def test_primitive_data_is_kept_as_a_typed_value(value: object) -> None:
    out = normalize_jsonrpc_error(rpc_error(-32004, data=value))
    assert isinstance(out, dict)
    assert out["error"]["data"] == [
        {"@type": VALUE_TYPE, "value": value},
        info("UNSUPPORTED_OPERATION"),
    ]
    normalized_twice_is_once(rpc_error(-32004, data=value))


@pytest.mark.parametrize("code", A2A_CODES)
def test_sdk_1x_error_is_already_conformant(code: int) -> None:
    error_cls = next(c for c, n in sdk_errors.JSON_RPC_ERROR_CODE_MAP.items() if n == code)
    assert normalize_jsonrpc_error(build_error_response(3, error_cls())) is None


@pytest.mark.parametrize("code", sorted(LEGACY_ERRORS, reverse=True))
def test_legacy_sdk_error_becomes_what_sdk_1x_sends(code: int) -> None:
    legacy_cls = LEGACY_ERRORS[code]
    legacy = v03.JSONRPCErrorResponse(id=3, error=legacy_cls()).model_dump(
        mode="json", by_alias=True, exclude_none=True
    )
    out = normalize_jsonrpc_error(legacy)
    assert isinstance(out, dict)
    error_cls = next(c for c, n in sdk_errors.JSON_RPC_ERROR_CODE_MAP.items() if n == code)
    assert out["error"]["data"] == build_error_response(3, error_cls())["error"]["data"]
    assert out["error"]["message"] == legacy["error"]["message"]


def test_reasons_agree_with_the_sdk() -> None:
    assert sorted(LEGACY_ERRORS) == list(range(-32007, -32000))
    for code, row in A2A_BY_JSONRPC_CODE.items():
        error_cls = sdk_errors.A2A_REASON_TO_ERROR[row.value.reason]
        assert sdk_errors.JSON_RPC_ERROR_CODE_MAP[error_cls] == code


# --- JSON-RPC: what is left alone ---------------------------------------------------


@pytest.mark.parametrize("code", OTHER_CODES)
@pytest.mark.parametrize("data", [None, {"detail": "x"}, "text", [{"x": 1}]])
def test_other_codes_pass_unchanged(code: int, data: object) -> None:
    doc = rpc_error(code) if data is None else rpc_error(code, data=data)
    assert normalize_jsonrpc_error(doc) is None


@pytest.mark.parametrize(
    "doc",
    [
        {"jsonrpc": "2.0", "id": 1, "result": {"kind": "task"}},
        {"jsonrpc": "2.0", "id": 1, "error": {"code": "-32001", "message": "x"}},
        {"jsonrpc": "2.0", "id": 1, "error": {"code": True, "message": "x"}},
        {"jsonrpc": "2.0", "id": 1, "error": {"code": -32001}},
        {"jsonrpc": "2.0", "id": 1, "error": "Task not found"},
        {"error": {"code": 404, "status": "NOT_FOUND", "message": "x"}},
        [],
        [1, "two", None],
        "text",
        None,
        42,
    ],
)
def test_non_a2a_errors_and_non_responses_pass_unchanged(doc: object) -> None:
    assert normalize_jsonrpc_error(doc) is None


def test_batch_only_the_a2a_errors_change() -> None:
    result = {"jsonrpc": "2.0", "id": 1, "result": {}}
    bare = rpc_error(-32001)
    other = rpc_error(-32602, data={"field": "x"})
    done = rpc_error(-32002, data=[info("TASK_NOT_CANCELABLE")])
    single = rpc_error(-32003, data={"why": "no push"})
    batch: list[object] = [result, bare, other, done, single]
    before = copy.deepcopy(batch)
    out = normalize_jsonrpc_error(batch)
    assert isinstance(out, list)
    assert out[0] is result
    assert out[2] is other
    assert out[3] is done
    assert out[1]["error"]["data"] == [info("TASK_NOT_FOUND")]
    assert out[4]["error"]["data"] == [
        {"why": "no push"},
        info("PUSH_NOTIFICATION_NOT_SUPPORTED"),
    ]
    assert batch == before
    normalized_twice_is_once(batch)


def test_batch_without_a2a_errors_is_none() -> None:
    batch = [{"jsonrpc": "2.0", "id": 1, "result": {}}, rpc_error(-32601)]
    assert normalize_jsonrpc_error(batch) is None


def test_other_keys_of_the_response_and_error_are_kept() -> None:
    error = {"code": -32001, "message": "m", "x": 1}
    doc = {"jsonrpc": "2.0", "id": "abc", "error": error, "extra": True}
    out = normalize_jsonrpc_error(doc)
    assert out == {
        "jsonrpc": "2.0",
        "id": "abc",
        "extra": True,
        "error": {"code": -32001, "message": "m", "x": 1, "data": [info("TASK_NOT_FOUND")]},
    }


# --- REST: errors.md section 5, row by row ------------------------------------------


def reason_of(status: int, http_method: str, path: str) -> E | None:
    return legacy_rest_reason(status, classify_rest(http_method, path), path)


@pytest.mark.parametrize(
    ("status", "http_method", "path", "expected"),
    [
        # 404 on a task path
        (404, "GET", "/v1/tasks/abc", E.TASK_NOT_FOUND),
        (404, "POST", "/v1/tasks/abc:cancel", E.TASK_NOT_FOUND),
        (404, "GET", "/v1/tasks/abc:subscribe", E.TASK_NOT_FOUND),
        (404, "GET", "/v1/tasks/abc/pushNotificationConfigs", E.TASK_NOT_FOUND),
        (404, "GET", "/v1/tasks/abc/pushNotificationConfigs/c1", E.TASK_NOT_FOUND),
        (404, "GET", "/agents/x/v1/tasks/abc", E.TASK_NOT_FOUND),
        (404, "GET", "/tasks/abc", E.TASK_NOT_FOUND),
        (404, "DELETE", "/v1/tasks/abc", E.TASK_NOT_FOUND),  # no route: the path decides
        # 404 elsewhere
        (404, "GET", "/v1/tasks", E.METHOD_NOT_FOUND),  # ListTasks: absent from v0.3
        (404, "POST", "/v1/message:send", E.METHOD_NOT_FOUND),
        (404, "GET", "/v1/card", E.METHOD_NOT_FOUND),
        (404, "GET", "/v1/nothing/here", E.METHOD_NOT_FOUND),
        (404, "GET", "/", E.METHOD_NOT_FOUND),
        # the other rows
        (409, "POST", "/v1/tasks/abc:cancel", E.TASK_NOT_CANCELABLE),
        (409, "POST", "/v1/message:send", E.TASK_NOT_CANCELABLE),
        (415, "POST", "/v1/message:send", E.CONTENT_TYPE_NOT_SUPPORTED),
        (422, "POST", "/v1/message:send", E.INVALID_PARAMS),
        (422, "POST", "/v1/tasks/abc/pushNotificationConfigs", E.INVALID_PARAMS),
        (501, "POST", "/v1/tasks/abc/pushNotificationConfigs", E.PUSH_NOTIFICATION_NOT_SUPPORTED),
        (501, "GET", "/v1/tasks/abc/pushNotificationConfigs", E.PUSH_NOTIFICATION_NOT_SUPPORTED),
        (501, "GET", "/v1/tasks/a/pushNotificationConfigs/c", E.PUSH_NOTIFICATION_NOT_SUPPORTED),
        (501, "DELETE", "/v1/tasks/a/pushNotificationConfigs/c", E.PUSH_NOTIFICATION_NOT_SUPPORTED),
        (501, "PUT", "/v1/tasks/a/pushNotificationConfigs/c", E.PUSH_NOTIFICATION_NOT_SUPPORTED),
        (501, "POST", "/v1/message:stream", E.UNSUPPORTED_OPERATION),
        (501, "GET", "/v1/tasks/abc:subscribe", E.UNSUPPORTED_OPERATION),
        (501, "GET", "/v1/card", E.UNSUPPORTED_OPERATION),
        (502, "POST", "/v1/message:send", E.INVALID_AGENT_RESPONSE),
        (502, "GET", "/v1/tasks/abc", E.INVALID_AGENT_RESPONSE),
    ],
)
def test_legacy_rest_table(status: int, http_method: str, path: str, expected: E) -> None:
    assert reason_of(status, http_method, path) is expected


@pytest.mark.parametrize("status", [200, 204, 400, 401, 403, 405, 408, 429, 500, 503, 504])
def test_statuses_outside_the_table_are_none(status: int) -> None:
    assert reason_of(status, "GET", "/v1/tasks/abc") is None
    assert reason_of(status, "POST", "/v1/message:send") is None


# --- REST: standard JSON-RPC codes --------------------------------------------------


@pytest.mark.parametrize(
    ("code", "expected", "reason", "http"),
    [
        (-32700, E.PARSE_ERROR, "INVALID_REQUEST", 400),
        (-32600, E.INVALID_REQUEST, "INVALID_REQUEST", 400),
        (-32602, E.INVALID_PARAMS, "INVALID_PARAMS", 400),
        (-32601, E.METHOD_NOT_FOUND, "METHOD_NOT_FOUND", 404),
        (-32603, E.INTERNAL_ERROR, "INTERNAL_ERROR", 500),
    ],
)
def test_standard_codes_on_rest(code: int, expected: E, reason: str, http: int) -> None:
    row = rest_reason_for_jsonrpc_code(code)
    assert row is expected
    assert (row.value.reason, row.value.http_status) == (reason, http)


@pytest.mark.parametrize("code", A2A_CODES)
def test_a2a_codes_on_rest(code: int) -> None:
    assert rest_reason_for_jsonrpc_code(code) is A2A_BY_JSONRPC_CODE[code]


@pytest.mark.parametrize("code", [-32000, -32010, -32005 - 100, -31060, -32099, 0, 1])
def test_other_codes_on_rest_are_none(code: int) -> None:
    assert rest_reason_for_jsonrpc_code(code) is None


# --- REST: AIP-193 bodies -----------------------------------------------------------


@pytest.mark.parametrize(
    "doc",
    [
        {"error": {"code": 404, "status": "NOT_FOUND", "message": "x"}},
        {"error": {"code": 404, "status": "NOT_FOUND", "message": "x", "details": []}},
        {"error": {"code": 404, "status": "NOT_FOUND", "message": "x", "details": None}},
        {"error": {"code": 404, "status": "NOT_FOUND", "message": "x", "details": {"a": 1}}},
        build_rest_error_payload(sdk_errors.TaskNotFoundError()),
        build_rest_error_payload(ValueError("boom")),
    ],
)
def test_is_aip193(doc: object) -> None:
    assert is_aip193(doc)


@pytest.mark.parametrize(
    "doc",
    [
        {"message": "Task not found"},
        {"error": "Task not found"},
        {"error": {"code": 404, "message": "x"}},
        {"error": {"code": "404", "status": "NOT_FOUND", "message": "x"}},
        {"error": {"code": True, "status": "NOT_FOUND", "message": "x"}},
        {"error": {"code": 404, "status": 5, "message": "x"}},
        {"error": {"code": 404, "status": "NOT_FOUND", "message": None}},
        {"error": {"code": 404, "status": "NOT_FOUND", "message": "x", "details": "text"}},
        {"jsonrpc": "2.0", "id": 1, "error": {"code": -32001, "message": "x"}},
        [{"error": {"code": 404, "status": "NOT_FOUND", "message": "x"}}],
        "text",
        None,
    ],
)
def test_is_not_aip193(doc: object) -> None:
    assert not is_aip193(doc)
    assert complete_aip193(doc, E.UPSTREAM_ERROR) is None


@pytest.mark.parametrize("error", [sdk_errors.TaskNotFoundError(), sdk_errors.InternalError()])
def test_sdk_1x_rest_error_is_complete(error: Exception) -> None:
    assert complete_aip193(build_rest_error_payload(error), E.UPSTREAM_ERROR) is None


def test_sdk_1x_unknown_exception_gets_the_proxy_reason() -> None:
    doc = build_rest_error_payload(ValueError("boom"))
    before = copy.deepcopy(doc)
    out = complete_aip193(doc, E.UPSTREAM_ERROR, domain="warden.example")
    assert out == {
        "error": {
            "code": 500,
            "status": "INTERNAL",
            "message": "unknown exception",
            "details": [info("UPSTREAM_ERROR", "warden.example")],
        }
    }
    assert doc == before
    assert complete_aip193(out, E.UPSTREAM_ERROR, domain="warden.example") is None


@pytest.mark.parametrize("reason", list(A2A_BY_JSONRPC_CODE.values()))
def test_a2a_reason_uses_the_a2a_domain_and_the_sdk_client_reads_it(reason: E) -> None:
    doc = {"error": {"code": 400, "status": "FAILED_PRECONDITION", "message": "from agent"}}
    out = complete_aip193(doc, reason, domain="warden.example")
    assert out is not None
    assert out["error"]["details"] == [info(reason.value.reason)]
    parsed = _parse_rest_error(out, "fallback")  # what an a2a-sdk REST client raises
    assert type(parsed) is sdk_errors.A2A_REASON_TO_ERROR[reason.value.reason]
    assert str(parsed) == "from agent"


@pytest.mark.parametrize(
    ("details", "expected"),
    [
        ({"a": 1}, [{"a": 1}, info("TASK_NOT_FOUND")]),
        ([{"a": 1}], [{"a": 1}, info("TASK_NOT_FOUND")]),
        ([], [info("TASK_NOT_FOUND")]),
        (info("OTHER", "x.example"), [info("OTHER", "x.example")]),
    ],
)
def test_aip193_details_shapes(details: object, expected: list[object]) -> None:
    doc = {"error": {"code": 404, "status": "NOT_FOUND", "message": "m", "details": details}}
    out = complete_aip193(doc, E.TASK_NOT_FOUND)
    assert out is not None
    assert out["error"]["details"] == expected
    assert {k: v for k, v in out["error"].items() if k != "details"} == {
        "code": 404,
        "status": "NOT_FOUND",
        "message": "m",
    }
    assert complete_aip193(out, E.TASK_NOT_FOUND) is None


def test_aip193_with_error_info_passes_even_when_two() -> None:
    details = [info("A", "x.example"), info("B", "y.example")]
    doc = {"error": {"code": 400, "status": "INVALID_ARGUMENT", "message": "m", "details": details}}
    assert complete_aip193(doc, E.INVALID_PARAMS) is None


# --- the legacy upstream ------------------------------------------------------------


@pytest.fixture
async def legacy() -> AsyncIterator[tuple[str, aiohttp.ClientSession]]:
    port = free_port()
    base = f"http://{LOOPBACK}:{port}"
    server = TestServer(legacy_a2a.build_app(base), host=LOOPBACK, port=port)
    await server.start_server()
    try:
        async with aiohttp.ClientSession(base) as session:
            yield base, session
    finally:
        await server.close()


def send_params(text: str, context_id: str | None = None) -> dict[str, Any]:
    message: dict[str, Any] = {
        "kind": "message",
        "messageId": "m-1",
        "role": "user",
        "parts": [{"kind": "text", "text": text}],
    }
    if context_id is not None:
        message["contextId"] = context_id
    return {"message": message}


async def rpc(session: aiohttp.ClientSession, method: str, params: object) -> Any:
    body = {"jsonrpc": "2.0", "id": 11, "method": method, "params": params}
    async with session.post("/", json=body) as resp:
        assert resp.status == 200
        return await resp.json()


async def test_legacy_send_and_get(legacy: tuple[str, aiohttp.ClientSession]) -> None:
    _, session = legacy
    sent = await rpc(session, "message/send", send_params("hi", "ctx-1"))
    v03.SendMessageSuccessResponse.model_validate(sent)
    task = sent["result"]
    assert (task["kind"], task["contextId"], task["status"]["state"]) == (
        "task",
        "ctx-1",
        "completed",
    )
    assert task["artifacts"][0]["parts"] == [{"kind": "text", "text": "echo: hi"}]
    got = await rpc(session, "tasks/get", {"id": task["id"]})
    v03.GetTaskSuccessResponse.model_validate(got)
    assert got["result"]["id"] == task["id"]


async def test_legacy_jsonrpc_errors(legacy: tuple[str, aiohttp.ClientSession]) -> None:
    _, session = legacy
    missing = await rpc(session, "tasks/get", {"id": "nope"})
    v03.JSONRPCErrorResponse.model_validate(missing)
    assert missing["error"] == {"code": -32001, "message": "Task not found"}
    out = normalize_jsonrpc_error(missing)
    assert isinstance(out, dict)
    assert out["error"]["data"] == [info("TASK_NOT_FOUND")]

    cancel = await rpc(session, "tasks/cancel", {"id": "any"})
    assert cancel["error"]["code"] == -32002
    assert isinstance(cancel["error"]["data"], dict)
    out = normalize_jsonrpc_error(cancel)
    assert isinstance(out, dict)
    assert out["error"]["data"] == [cancel["error"]["data"], info("TASK_NOT_CANCELABLE")]

    unknown = await rpc(session, "tasks/list", {})
    assert unknown["error"]["code"] == -32601
    assert normalize_jsonrpc_error(unknown) is None
    bad = await rpc(session, "message/send", {"message": "not an object"})
    assert bad["error"]["code"] == -32602
    async with session.post("/", data=b"{nope", headers={"Content-Type": "application/json"}) as r:
        assert (await r.json())["error"]["code"] == -32700


def sse_events(raw: bytes) -> list[Any]:
    events = [chunk for chunk in raw.split(b"\r\n\r\n") if chunk]
    assert all(e.startswith(b"data: ") for e in events)
    return [json.loads(e[len(b"data: ") :]) for e in events]


async def test_legacy_stream(legacy: tuple[str, aiohttp.ClientSession]) -> None:
    _, session = legacy
    body = {"jsonrpc": "2.0", "id": "s", "method": "message/stream", "params": send_params("yo")}
    async with session.post("/", json=body) as resp:
        assert resp.content_type == "text/event-stream"
        raw = await resp.read()
    assert raw.endswith(b"\r\n\r\n")
    events = sse_events(raw)
    for event in events:
        v03.SendStreamingMessageSuccessResponse.model_validate(event)
        assert event["id"] == "s"
    kinds = [e["result"]["kind"] for e in events]
    assert kinds == ["task", "status-update", "artifact-update", "status-update"]
    assert [e["result"].get("final") for e in events] == [None, False, None, True]


async def read_into(resp: aiohttp.ClientResponse, chunks: list[bytes]) -> None:
    async for chunk in resp.content.iter_any():
        chunks.append(chunk)


async def test_legacy_cut_stream(legacy: tuple[str, aiohttp.ClientSession]) -> None:
    _, session = legacy
    body = {"jsonrpc": "2.0", "id": 5, "method": legacy_a2a.CUT_METHOD, "params": send_params("x")}
    received: list[bytes] = []
    async with session.post("/", json=body) as resp:
        with pytest.raises(aiohttp.ClientPayloadError):
            await read_into(resp, received)
    events = sse_events(b"".join(received))
    assert [e["result"]["kind"] for e in events] == ["task", "status-update"]
    assert all(e["result"].get("final") is not True for e in events)


async def test_legacy_garbage(legacy: tuple[str, aiohttp.ClientSession]) -> None:
    _, session = legacy
    body = {"jsonrpc": "2.0", "id": 1, "method": legacy_a2a.GARBAGE_METHOD}
    async with session.post("/", json=body) as resp:
        assert resp.status == 200
        assert await resp.read() == legacy_a2a.GARBAGE_BODY


async def test_legacy_rest_send_and_get(legacy: tuple[str, aiohttp.ClientSession]) -> None:
    _, session = legacy
    body = {"message": {"messageId": "m", "role": "ROLE_USER", "content": [{"text": "hey"}]}}
    ParseDict(body, pb03.SendMessageRequest())
    async with session.post("/v1/message:send", json=body) as resp:
        assert resp.status == 200
        sent = await resp.json()
    ParseDict(sent, pb03.SendMessageResponse())
    task_id = sent["task"]["id"]
    async with session.get(f"/v1/tasks/{task_id}") as resp:
        assert resp.status == 200
        got = await resp.json()
    assert ParseDict(got, pb03.Task()).artifacts[0].parts[0].text == "echo: hey"


@pytest.mark.parametrize(
    ("http_method", "path", "kwargs", "status", "expected"),
    [
        ("GET", "/v1/tasks/unknown", {}, 404, E.TASK_NOT_FOUND),
        ("GET", "/v1/tasks", {}, 404, E.METHOD_NOT_FOUND),
        ("GET", "/v1/not/a/route", {}, 404, E.METHOD_NOT_FOUND),
        ("POST", "/v1/tasks/t1:cancel", {"json": {}}, 409, E.TASK_NOT_CANCELABLE),
        ("POST", "/v1/message:send", {"data": b"{}"}, 415, E.CONTENT_TYPE_NOT_SUPPORTED),
        ("POST", "/v1/message:send", {"json": {"message": 1}}, 422, E.INVALID_PARAMS),
        (
            "POST",
            "/v1/message:send",
            {"data": b"{", "headers": {"Content-Type": "application/json"}},
            422,
            E.INVALID_PARAMS,
        ),
        (
            "POST",
            "/v1/tasks/t1/pushNotificationConfigs",
            {"json": {}},
            501,
            E.PUSH_NOTIFICATION_NOT_SUPPORTED,
        ),
        (
            "GET",
            "/v1/tasks/t1/pushNotificationConfigs/c1",
            {},
            501,
            E.PUSH_NOTIFICATION_NOT_SUPPORTED,
        ),
        (
            "GET",
            f"/v1/tasks/{legacy_a2a.BAD_GATEWAY_TASK}",
            {},
            502,
            E.INVALID_AGENT_RESPONSE,
        ),
    ],
)
async def test_legacy_rest_errors(
    legacy: tuple[str, aiohttp.ClientSession],
    http_method: str,
    path: str,
    kwargs: dict[str, Any],
    status: int,
    expected: E,
) -> None:
    _, session = legacy
    async with session.request(http_method, path, **kwargs) as resp:
        assert resp.status == status
        doc = await resp.json()
    assert set(doc) == {"message"}
    assert isinstance(doc["message"], str)
    assert not is_aip193(doc)
    assert legacy_rest_reason(status, classify_rest(http_method, path), path) is expected
