"""Issue 11 ("Hardening"): POST bodies are judged exactly as the upstream parses them, or
refused. Each test names the finding it guards; all go through `classify()`, the way the
forwarder sees a request. The SDKs' own parsers (`json.loads(bytes)` as Starlette's
`request.json()` runs it, protobuf `json_format`, the v0.3 pydantic models) show what the
upstream would have done with the body.
"""

from __future__ import annotations

import base64
import codecs
import json
from typing import Any

import pytest
from a2a.compat.v0_3 import types as v03
from a2a.types import a2a_pb2 as pb
from google.protobuf import json_format
from multidict import CIMultiDict

from proxy.protocols import a2a, jsonrpc
from proxy.protocols.classify import Binding, Classified, classify

MCP_PATH = "/mcp"
A2A_PATH = "/"


def headers(content_type: str | None = None, **extra: str) -> CIMultiDict[str]:
    h: CIMultiDict[str] = CIMultiDict()
    if content_type is not None:
        h["Content-Type"] = content_type
    for key, value in extra.items():
        h[key.replace("_", "-")] = value
    return h


def rpc(method: str, params: Any = None, rid: Any = 1) -> dict[str, Any]:
    msg: dict[str, Any] = {"jsonrpc": "2.0", "id": rid, "method": method}
    if params is not None:
        msg["params"] = params
    return msg


def send(context: str = "mine") -> dict[str, Any]:
    return rpc(
        "SendMessage",
        {"message": {"messageId": "m1", "role": "ROLE_USER", "parts": [], "contextId": context}},
    )


def judged(info: Classified) -> jsonrpc.Body:
    assert info.invalid is None, info.invalid
    assert info.binding is Binding.JSONRPC
    assert info.body is not None
    return info.body


def refused(info: Classified) -> jsonrpc.Invalid:
    assert info.invalid is not None, info
    assert info.body is None
    return info.invalid


# --- finding 1: opaque bodies pass unjudged ----------------------------------------------

ENCODINGS = ["utf-8-sig", "utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le", "utf-32-be"]


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("content_type", [None, "text/plain", "application/octet-stream"])
def test_bom_and_utf16_32_bodies_are_judged_whatever_the_content_type(
    encoding: str, content_type: str | None
) -> None:
    """Finding 1: a JSON-RPC body with a BOM, or in UTF-16/32, sent as text/plain or with no
    Content-Type, was forwarded unjudged; the A2A SDK's `json.loads(bytes)` runs it."""
    raw = json.dumps(send("victim")).encode(encoding)
    assert json.loads(raw)["method"] == "SendMessage"  # what the upstream runs
    info = classify("POST", A2A_PATH, headers(content_type), raw)
    body = judged(info)
    assert info.protocol == "a2a"
    assert body.first_method == "SendMessage"
    assert info.a2a_op is a2a.SEND_MESSAGE
    assert a2a.context_id(a2a.SEND_MESSAGE, body.messages[0].params) == "victim"


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_forced_a2a_judges_encoded_bodies_too(encoding: str) -> None:
    """Finding 1, "even with --protocol a2a": a BOM/UTF-16/32 body was OPAQUE there too."""
    raw = json.dumps(rpc("GetTask", {"id": "someone-elses"})).encode(encoding)
    info = classify("POST", A2A_PATH, headers("text/plain"), raw, forced="a2a")
    assert judged(info).first_method == "GetTask"
    assert a2a.task_id(a2a.GET_TASK, info.body.messages[0].params if info.body else None) == (
        "someone-elses"
    )


def test_bom_body_declared_json_is_read_like_the_upstream() -> None:
    """Finding 1: `application/json` with a UTF-8 BOM is what `json.loads(bytes)` accepts."""
    raw = codecs.BOM_UTF8 + json.dumps(rpc("tools/call", {"name": "rm"})).encode()
    info = classify("POST", MCP_PATH, headers("application/json"), raw)
    assert judged(info).messages[0].params == {"name": "rm"}
    assert info.protocol == "mcp"


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16-le", "utf-16-be", "utf-32-be"])
def test_rest_bodies_are_judged_whatever_the_content_type(encoding: str) -> None:
    """Finding 1 on the REST binding: the context of a send was not read from such a body."""
    doc = {"message": {"messageId": "m", "role": "ROLE_USER", "contextId": "victim"}}
    raw = json.dumps(doc).encode(encoding)
    info = classify("POST", "/message:send", headers("text/plain"), raw)
    assert info.binding is Binding.REST
    assert info.invalid is None
    assert a2a.context_id(a2a.SEND_MESSAGE, info.rest_doc) == "victim"


@pytest.mark.parametrize(
    "raw",
    [
        b'\x00{\x00"\x00j',  # UTF-16-BE, broken
        '{"jsonrpc": "2.0", "id": 1, "method": '.encode("utf-32-be"),  # truncated
        codecs.BOM_UTF8 + b'{"jsonrpc": "2.0",',
        b'\xef\xbb\xbf\xef\xbb\xbf{"jsonrpc":"2.0","id":1,"method":"SendMessage"}',  # 2 BOMs
        b' \x0c\r\n[{"jsonrpc"',
    ],
)
@pytest.mark.parametrize("content_type", [None, "text/plain"])
def test_json_looking_bodies_that_do_not_parse_are_refused(
    raw: bytes, content_type: str | None
) -> None:
    """Finding 1, fail closed: a body that might be JSON but cannot be read exactly is refused
    (-32700), never forwarded unjudged."""
    invalid = refused(classify("POST", A2A_PATH, headers(content_type), raw))
    assert invalid.parse_error
    assert not invalid.unsupported


@pytest.mark.parametrize(
    "raw",
    [
        b'{"jsonrpc":"2.0","id":1,"method":"SendMessage","params":{"x":"\xed\xa0\x80"}}',
        b'{"jsonrpc":"2.0","id":1,"method":"SendMessage","params":{"x":"\xff"}}',
    ],
)
def test_invalid_utf8_stays_refused(raw: bytes) -> None:
    """Finding 1's decoding rule: a lone surrogate, which `json.loads` lets through
    ('surrogatepass'), and invalid UTF-8 are refused (-32700). (Refused at HEAD as well.)"""
    invalid = refused(classify("POST", A2A_PATH, headers("text/plain"), raw))
    assert invalid.parse_error


@pytest.mark.parametrize("raw", [b'"SendMessage"', b"42", b"NaN", b"1e400", b"null"])
def test_json_scalars_are_judged_not_opaque(raw: bytes) -> None:
    """Finding 1: whatever `json.loads(bytes)` accepts is judged as JSON (here: refused, a
    JSON-RPC message must be an object), never forwarded as opaque."""
    refused(classify("POST", A2A_PATH, headers("text/plain"), raw))


@pytest.mark.parametrize(
    "raw",
    [
        b"grant_type=client_credentials&scope=a",
        b"hello",
        b"\x89PNG\r\n\x1a\n\x00\x00",
        b"",
    ],
)
def test_clearly_not_json_stays_opaque(raw: bytes) -> None:
    """Finding 1's rule keeps what is clearly not JSON opaque (form posts, files)."""
    info = classify("POST", "/token", headers("application/x-www-form-urlencoded"), raw)
    assert info.binding is Binding.OPAQUE
    assert info.invalid is None


@pytest.mark.parametrize("coding", ["gzip", "br", "identity"])
def test_content_coding_is_not_read_the_body_is(coding: str) -> None:
    """The body classify() sees is what goes up: aiohttp inflated it and the forwarder drops
    Content-Encoding (finding 16), so the header changes nothing here."""
    raw = json.dumps(send("victim")).encode("utf-16")
    info = classify("POST", A2A_PATH, headers("text/plain", Content_Encoding=coding), raw)
    assert judged(info).first_method == "SendMessage"


@pytest.mark.parametrize(
    ("charset", "encoding"),
    [
        ("utf-16", "utf-8"),
        ("utf-8", "utf-16-le"),
        ("utf-7", "utf-8"),
        ("x-unknown-charset", "utf-8"),
        ("base64", "utf-8"),
        ("latin-1", "utf-8"),  # non-ASCII text reads differently
    ],
)
def test_declared_charset_that_reads_differently_is_refused_415(
    charset: str, encoding: str
) -> None:
    """Finding 1: a server honouring the Content-Type charset would read other text."""
    raw = json.dumps(rpc("tools/call", {"name": "café"}), ensure_ascii=False).encode(encoding)
    info = classify("POST", MCP_PATH, headers(f"application/json; charset={charset}"), raw)
    assert refused(info).unsupported


@pytest.mark.parametrize("charset", ["utf-8", "UTF8", '"utf-8"', "us-ascii", "iso-8859-1"])
def test_declared_charset_that_reads_the_same_is_judged(charset: str) -> None:
    raw = json.dumps(rpc("tools/call", {"name": "rm"})).encode()
    info = classify("POST", MCP_PATH, headers(f"application/json; charset={charset}"), raw)
    judged(info)


def test_utf7_smuggled_json_is_refused() -> None:
    """Finding 1: `+AHs-` is `{` in UTF-7: refused 415, not passed as opaque text."""
    text = json.dumps(send())
    raw = b"+" + base64.b64encode(text.encode("utf-16-be")).rstrip(b"=") + b"-"
    assert raw.startswith(b"+AHs")
    assert raw.decode("utf-7") == text
    info = classify("POST", A2A_PATH, headers("text/plain; charset=utf-7"), raw)
    assert refused(info).unsupported


# --- finding 19: NaN, Infinity, 1e400 ---------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b'{"jsonrpc":"2.0","id":NaN,"method":"tools/call","params":{"name":"t"}}',
        b'{"jsonrpc":"2.0","id":Infinity,"method":"tools/call"}',
        b'{"jsonrpc":"2.0","id":-Infinity,"method":"tools/call"}',
        b'{"jsonrpc":"2.0","id":1e400,"method":"tools/call"}',
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"n":-1e400}}',
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"a":[NaN]}}',
        b'[{"jsonrpc":"2.0","id":1,"method":"ping","params":{"x":Infinity}}]',
    ],
)
def test_non_finite_numbers_are_invalid_json(raw: bytes) -> None:
    """Finding 19: `NaN`, `Infinity`, `1e400` were accepted in ids and params."""
    json.loads(raw)  # the stdlib takes them
    invalid = refused(classify("POST", MCP_PATH, headers("application/json"), raw))
    assert invalid.parse_error


def test_big_integers_and_small_floats_are_fine() -> None:
    big = 10**60
    raw = json.dumps(rpc("tools/call", {"name": "t", "n": big, "f": 1e-400, "g": 1e308}, big))
    body = judged(classify("POST", MCP_PATH, headers("application/json"), raw.encode()))
    assert body.request_ids == (big,)
    assert body.messages[0].params["n"] == big


# --- finding 2: field aliases ------------------------------------------------------------


def _v1_context(params: dict[str, Any]) -> str:
    """What the v1.0 SDK's JSON-RPC dispatcher reads: ParseDict, unknown fields ignored."""
    request = json_format.ParseDict(params, pb.SendMessageRequest(), ignore_unknown_fields=True)
    return request.message.context_id


ALIASED = [
    ({"contextId": "mine", "context_id": "victim"}, "contextId"),
    ({"context_id": "victim", "contextId": "mine"}, "contextId"),
    ({"contextId": "mine", "context_id": None}, "contextId"),
    ({"contextId": "", "context_id": "victim"}, "contextId"),
    ({"taskId": "mine", "task_id": "victim"}, "taskId"),
]


@pytest.mark.parametrize(("message_fields", "_name"), ALIASED)
@pytest.mark.parametrize("method", ["SendMessage", "SendStreamingMessage", "message/send"])
def test_message_fields_in_both_spellings_are_refused(
    message_fields: dict[str, Any], _name: str, method: str
) -> None:
    """Finding 2: the proxy read `contextId`, protobuf's parser the last spelling (pydantic
    the alias), so the task ran in the victim's context."""
    message = {"messageId": "m", "role": "ROLE_USER", "parts": [], **message_fields}
    raw = json.dumps(rpc(method, {"message": message})).encode()
    invalid = refused(classify("POST", A2A_PATH, headers("application/json"), raw))
    assert not invalid.parse_error
    assert invalid.id == 1  # echoed: the body is JSON-RPC, the request is invalid


def test_the_upstream_really_reads_the_last_spelling() -> None:
    """Finding 2's premise, on the installed SDK: ProtoJSON takes the last spelling."""
    params = {"message": {"messageId": "m", "contextId": "mine", "context_id": "victim"}}
    assert _v1_context(params) == "victim"
    v03_params = {
        "message": {
            "messageId": "m",
            "role": "user",
            "parts": [],
            "context_id": "victim",
            "contextId": "mine",
        }
    }
    assert v03.MessageSendParams.model_validate(v03_params).message.context_id == "mine"


@pytest.mark.parametrize(
    ("method", "params"),
    [
        ("ListTasks", {"contextId": "mine", "context_id": "victim"}),
        ("CreateTaskPushNotificationConfig", {"taskId": "mine", "task_id": "victim"}),
        ("tasks/pushNotificationConfig/set", {"taskId": "mine", "task_id": "victim"}),
        ("GetTaskPushNotificationConfig", {"taskId": "mine", "task_id": "victim", "id": "c"}),
        ("ListTaskPushNotificationConfigs", {"task_id": "victim", "taskId": "mine"}),
        ("DeleteTaskPushNotificationConfig", {"taskId": "mine", "task_id": "victim", "id": "c"}),
        # v0.3 names the task `id` here; `taskId` is what the proxy would read instead.
        ("tasks/pushNotificationConfig/get", {"taskId": "mine", "id": "victim"}),
        ("tasks/pushNotificationConfig/list", {"task_id": "mine", "id": "victim"}),
        ("tasks/pushNotificationConfig/delete", {"taskId": "mine", "id": "victim"}),
        # `request` is a field of the v0.3 REST binding only; elsewhere the upstream ignores it.
        ("SendMessage", {"request": {"messageId": "m", "contextId": "victim"}}),
        ("message/send", {"request": {"messageId": "m", "contextId": "victim"}}),
    ],
)
def test_every_judged_field_in_two_spellings_is_refused(method: str, params: Any) -> None:
    """Finding 2, "more generally": every field the proxy extracts matches the upstream."""
    raw = json.dumps(rpc(method, params)).encode()
    invalid = refused(classify("POST", A2A_PATH, headers("application/json"), raw))
    assert not invalid.parse_error


def test_one_spelling_each_is_judged() -> None:
    msg = {"messageId": "m", "context_id": "c1", "taskId": "t1"}
    raw = json.dumps(rpc("SendMessage", {"message": msg})).encode()
    body = judged(classify("POST", A2A_PATH, headers("application/json"), raw))
    params = body.messages[0].params
    assert a2a.context_id(a2a.SEND_MESSAGE, params) == "c1" == _v1_context({"message": msg})
    assert a2a.task_id(a2a.SEND_MESSAGE, params) == "t1"


@pytest.mark.parametrize(
    ("path", "doc"),
    [
        ("/message:send", {"message": {"contextId": "mine", "context_id": "victim"}}),
        ("/message:stream", {"message": {"taskId": "mine", "task_id": "victim"}}),
        ("/message:send", {"request": {"contextId": "victim"}}),  # v1.0 proto has no `request`
        ("/v1/message:send", {"message": {"contextId": "mine"}, "request": {"contextId": "v"}}),
        ("/v1/message:send", {"request": {"contextId": "mine", "context_id": "victim"}}),
    ],
)
def test_rest_bodies_with_two_spellings_are_refused(path: str, doc: Any) -> None:
    """Finding 2 on the REST binding (v0.3's proto names the message `request` as well)."""
    info = classify("POST", path, headers("application/json"), json.dumps(doc).encode())
    assert info.binding is Binding.REST
    assert refused(info)


def test_v03_rest_send_is_read_through_request_too() -> None:
    """Finding 2: the v0.3 REST proto reads `request` as the message; so does the proxy."""
    from a2a.compat.v0_3 import a2a_v0_3_pb2 as pb03

    doc = {"request": {"messageId": "m", "contextId": "victim", "taskId": "t9"}}
    upstream = json_format.ParseDict(doc, pb03.SendMessageRequest(), ignore_unknown_fields=True)
    assert upstream.request.context_id == "victim"
    info = classify(
        "POST", "/v1/message:send", headers("application/json"), json.dumps(doc).encode()
    )
    assert info.invalid is None
    assert a2a.context_id(info.a2a_op or a2a.SEND_MESSAGE, info.rest_doc) == "victim"
    assert a2a.task_id(a2a.SEND_MESSAGE, info.rest_doc) == "t9"


def test_extractors_refuse_rather_than_pick_a_spelling() -> None:
    """Finding 2, defence in depth: the extractors never silently choose one spelling."""
    with pytest.raises(jsonrpc.DuplicateKeyError):
        a2a.context_id(a2a.LIST_TASKS, {"contextId": "a", "context_id": "b"})
    with pytest.raises(jsonrpc.DuplicateKeyError):
        a2a.task_id(a2a.SEND_MESSAGE, {"message": {"taskId": "a", "task_id": "b"}})


# --- finding 4: protocol detection by hint ------------------------------------------------


def _batch(*methods: str) -> bytes:
    return json.dumps([rpc(m, {"name": "t"}, i) for i, m in enumerate(methods)]).encode()


@pytest.mark.parametrize("hint", ["mcp", "a2a", "unknown"])
def test_hint_is_ignored(hint: Any) -> None:
    """Finding 4: a process-wide hint that any client flips decided other clients' protocol."""
    raw = _batch("demo/unknown", "demo/other")
    info = classify("POST", MCP_PATH, headers("application/json"), raw, hint=hint)
    assert info.protocol == "unknown"
    assert judged(info).batch


@pytest.mark.parametrize("hint", ["a2a", "unknown"])
def test_any_mcp_method_in_a_batch_makes_it_mcp(hint: Any) -> None:
    """Finding 4: a batch led by an unknown method was "neither protocol": no session."""
    raw = _batch("demo/unknown", "tools/call", "notifications/x")
    info = classify("POST", MCP_PATH, headers("application/json"), raw, hint=hint)
    assert info.protocol == "mcp"
    assert [m.method for m in judged(info).messages] == [
        "demo/unknown",
        "tools/call",
        "notifications/x",
    ]


def test_any_a2a_method_in_a_batch_makes_it_a2a_and_a2a_takes_no_batches() -> None:
    """Finding 4: the A2A method behind an unknown one decides; an A2A batch is refused
    (the SDK refuses batches, and the proxy judges an A2A request by one context)."""
    raw = _batch("demo/unknown", "SendMessage")
    info = classify("POST", A2A_PATH, headers("application/json"), raw)
    assert info.protocol == "a2a"
    assert not refused(info).parse_error


def test_single_a2a_batch_is_refused() -> None:
    info = classify("POST", A2A_PATH, headers("application/json"), json.dumps([send()]).encode())
    assert info.protocol == "a2a"
    refused(info)


@pytest.mark.parametrize(
    "methods",
    [("tools/call", "SendMessage"), ("message/send", "ping"), ("initialize", "GetTask")],
)
def test_mcp_and_a2a_in_one_batch_is_refused(methods: tuple[str, ...]) -> None:
    """Finding 4: a batch naming both protocols is an invalid request."""
    info = classify("POST", MCP_PATH, headers("application/json"), _batch(*methods))
    invalid = refused(info)
    assert not invalid.parse_error


@pytest.mark.parametrize("method", ["tasks/get", "tasks/cancel"])
def test_shared_method_naming_the_task_both_ways_is_refused(method: str) -> None:
    """Finding 4: `tasks/get` is MCP with `taskId`, A2A 0.3 with `id`; the proxy called
    `{"taskId": "mine", "id": "victim"}` MCP, an A2A upstream reads the victim's task."""
    raw = json.dumps(rpc(method, {"taskId": "mine", "id": "victim"})).encode()
    refused(classify("POST", A2A_PATH, headers("application/json"), raw))


def test_shared_method_in_a_batch_with_mcp_is_mcp() -> None:
    raw = json.dumps([rpc("tools/list"), rpc("tasks/get", {"taskId": "t"}, 2)]).encode()
    assert classify("POST", MCP_PATH, headers("application/json"), raw).protocol == "mcp"


def test_headers_decide_only_without_a_known_method() -> None:
    raw = _batch("demo/a", "demo/b")
    info = classify("POST", MCP_PATH, headers("application/json", Mcp_Session_Id="s"), raw)
    assert info.protocol == "mcp"
    raw = json.dumps(rpc("demo/a")).encode()
    info = classify("POST", A2A_PATH, headers("application/json", A2A_Version="1.0"), raw)
    assert info.protocol == "a2a"
    assert judged(info)


def test_forced_protocol_still_wins() -> None:
    raw = _batch("demo/unknown", "tools/call")
    assert classify("POST", MCP_PATH, headers(), raw, forced="mcp").protocol == "mcp"
    info = classify("POST", MCP_PATH, headers(), _batch("tools/call", "SendMessage"), "mcp")
    assert info.protocol == "mcp"  # names only: the upstream is MCP
    assert judged(info)


def _spellings(descriptor: Any, field: str) -> list[str]:
    found = descriptor.fields_by_name[field]
    return sorted({found.name, found.json_name})


# (op, the SDK model its params parse into, the path to the field, what the proxy reads)
JUDGED_FIELDS: list[tuple[Any, Any, list[str], str]] = [
    (a2a.SEND_MESSAGE, pb.SendMessageRequest, ["message", "context_id"], "context"),
    (a2a.SEND_MESSAGE, pb.SendMessageRequest, ["message", "task_id"], "task"),
    (a2a.LIST_TASKS, pb.ListTasksRequest, ["context_id"], "context"),
    (a2a.CREATE_PUSH_CONFIG, pb.TaskPushNotificationConfig, ["task_id"], "task"),
    (a2a.GET_PUSH_CONFIG, pb.GetTaskPushNotificationConfigRequest, ["task_id"], "task"),
    (a2a.LIST_PUSH_CONFIGS, pb.ListTaskPushNotificationConfigsRequest, ["task_id"], "task"),
    (a2a.DELETE_PUSH_CONFIG, pb.DeleteTaskPushNotificationConfigRequest, ["task_id"], "task"),
    (a2a.GET_TASK, pb.GetTaskRequest, ["id"], "task"),
]


@pytest.mark.parametrize(("op", "model", "path", "kind"), JUDGED_FIELDS)
def test_every_spelling_the_sdk_parses_is_read_and_two_are_refused(
    op: a2a.A2aOp, model: Any, path: list[str], kind: str
) -> None:
    """Finding 2, from the SDK's descriptors: each spelling ProtoJSON accepts for a judged
    field (and for the message holding it) is read; two spellings at once are refused."""
    descriptor = model.DESCRIPTOR
    outer = _spellings(descriptor, path[0])
    read = a2a.context_id if kind == "context" else a2a.task_id
    if len(path) == 1:
        for name in outer:
            params = {name: "x"}
            assert getattr(json_format.ParseDict(params, model()), path[0]) == "x"
            assert read(op, params) == "x"
        if len(outer) == 2:
            with pytest.raises(a2a.AmbiguousFieldError):
                a2a.check_request(op, dict.fromkeys(outer, "x"))
        return
    inner = _spellings(descriptor.fields_by_name[path[0]].message_type, path[1])
    assert len(inner) == 2
    for name in inner:
        params = {"message": {name: "x"}}
        assert read(op, params) == "x"
    with pytest.raises(a2a.AmbiguousFieldError):
        a2a.check_request(op, {"message": dict.fromkeys(inner, "x")})
