"""Classification under generated MCP and A2A traffic, both bindings (issue 11, findings 1, 2
and 4).

Properties: ``classify`` never raises; a JSON body is never opaque, whatever its encoding
or Content-Type; any MCP (A2A) method in a body makes it MCP (A2A), both refuse it, and no
earlier request changes the answer (``hint`` is ignored); a batch is judged element by
element, each element's method and tool those the MCP SDK's models read; the context and
task the proxy judges in an A2A request are those the a2a SDK's own parsers extract
(protobuf ``json_format`` for v1.0 JSON-RPC and both REST generations, the v0.3 pydantic
models for v0.3 JSON-RPC), or the request is refused.
"""

from __future__ import annotations

import json
from typing import Any

import mcp_types
import pydantic
import pytest
from a2a.compat.v0_3 import a2a_v0_3_pb2 as pb03
from a2a.compat.v0_3.jsonrpc_adapter import JSONRPC03Adapter
from a2a.server.routes.jsonrpc_dispatcher import JsonRpcDispatcher
from a2a.types import a2a_pb2 as pb
from google.protobuf import json_format
from hypothesis import assume, event, given
from hypothesis import strategies as st
from multidict import CIMultiDict

from proxy.protocols import a2a, mcp
from proxy.protocols.classify import Binding, Classified, classify
from tests.fuzz.strategies import CONTENT_TYPES, ENCODINGS, json_values

V1_MODELS: dict[str, Any] = JsonRpcDispatcher.METHOD_TO_MODEL
V03_MODELS: dict[str, Any] = JSONRPC03Adapter.METHOD_TO_MODEL
A2A_METHODS = sorted({*V1_MODELS, *V03_MODELS})
SHARED = sorted(m for m in A2A_METHODS if mcp.is_mcp_method(m))
MCP_ONLY = sorted(m for m in mcp.METHODS if m not in SHARED)
UNKNOWN = ["demo/x", "Tasks/get", "tools", "", "notification/x"]


def _headers(content_type: str | None, extra: dict[str, str]) -> CIMultiDict[str]:
    headers: CIMultiDict[str] = CIMultiDict(extra)
    if content_type is not None:
        headers["Content-Type"] = content_type
    return headers


header_sets = st.sampled_from(
    [
        {},
        {"Mcp-Session-Id": "s1"},
        {"MCP-Protocol-Version": "2025-11-25"},
        {"A2A-Version": "1.0"},
        {"Mcp-Session-Id": "s1", "A2A-Version": "0.3"},
    ]
)
wire = st.tuples(st.sampled_from(ENCODINGS), st.sampled_from(CONTENT_TYPES), header_sets)
hints = st.sampled_from(["mcp", "a2a", "unknown"])


def _classify(
    path: str, raw: bytes, how: tuple[str, str | None, dict[str, str]], forced: Any = "auto"
) -> Classified:
    _, content_type, extra = how
    return classify("POST", path, _headers(content_type, extra), raw, forced)


# --- MCP (and mixed) JSON-RPC bodies, single and batched ---------------------------------

ids = st.integers(-(2**40), 2**40) | st.text(max_size=6)


@st.composite
def mcp_params(draw: st.DrawFn, method: str) -> Any:
    if method == mcp.TOOLS_CALL:
        params: dict[str, Any] = {"name": draw(st.text(max_size=8))}
        if draw(st.booleans()):
            params["arguments"] = draw(
                st.dictionaries(st.text(max_size=4), json_values, max_size=2)
            )
        return params
    if method in SHARED:
        keys = draw(st.sets(st.sampled_from(["taskId", "id", "task_id"])))
        return {k: draw(st.text(min_size=1, max_size=4)) for k in keys}
    return draw(st.none() | st.dictionaries(st.text(max_size=4), json_values, max_size=2))


@st.composite
def rpc_elements(draw: st.DrawFn) -> dict[str, Any]:
    method = draw(
        st.sampled_from(MCP_ONLY)
        | st.sampled_from(SHARED)
        | st.sampled_from(UNKNOWN)
        | st.sampled_from(A2A_METHODS)
    )
    element: dict[str, Any] = {"jsonrpc": "2.0"}
    if draw(st.integers(0, 4)) > 0:
        element["id"] = draw(ids)
    element["method"] = method
    params = draw(mcp_params(method))
    if params is not None:
        element["params"] = params
    return element


def _kind(method: str, params: Any) -> str:
    """The protocol a method names, from the SDKs' method tables."""
    in_a2a = method in V1_MODELS or method in V03_MODELS
    in_mcp = mcp.is_mcp_method(method)
    if in_a2a and in_mcp:
        has_task, has_id = "taskId" in params, "id" in params
        if has_task and has_id:
            return "conflict"
        return "mcp" if has_task else "a2a" if has_id else "unknown"
    return "a2a" if in_a2a else "mcp" if in_mcp else "unknown"


def _by_headers(extra: dict[str, str]) -> str:
    if "Mcp-Session-Id" in extra or "MCP-Protocol-Version" in extra:
        return "mcp"
    return "a2a" if "A2A-Version" in extra else "unknown"


@given(st.lists(rpc_elements(), min_size=1, max_size=5), st.booleans(), wire, hints)
def test_jsonrpc_bodies_are_judged_element_by_element(
    batch: list[dict[str, Any]],
    as_batch: bool,
    how: tuple[str, str | None, dict[str, str]],
    hint: Any,
) -> None:
    doc: Any = batch if as_batch or len(batch) > 1 else batch[0]
    raw = json.dumps(doc).encode(how[0])
    info = _classify("/mcp", raw, how)
    # No cross-client state: what any earlier request could have set changes nothing.
    _, content_type, extra = how
    assert classify("POST", "/mcp", _headers(content_type, extra), raw, "auto", hint) == info
    assert info.binding is Binding.JSONRPC  # JSON is never opaque, whatever its encoding
    kinds = {_kind(e["method"], e.get("params") or {}) for e in batch}
    if "conflict" in kinds or {"mcp", "a2a"} <= kinds:
        assert info.invalid is not None
        assert not info.invalid.parse_error
        return
    expected = "mcp" if "mcp" in kinds else "a2a" if "a2a" in kinds else _by_headers(extra)
    assert info.protocol == expected
    if expected == "a2a" and isinstance(doc, list):
        assert info.invalid is not None  # the A2A SDK takes no batches
        return
    if info.invalid is not None:
        assert expected == "a2a"
        assert not info.invalid.parse_error
        return
    assert info.body is not None
    assert info.body.batch is isinstance(doc, list)
    assert len(info.body.messages) == len(batch)
    for message, element in zip(info.body.messages, batch, strict=True):
        assert message.method == element["method"]
        assert message.params == element.get("params")
        assert message.has_id is ("id" in element)
        if element["method"] == mcp.TOOLS_CALL:
            ref = mcp_types.client_request_adapter.validate_python(
                {"method": element["method"], "params": element["params"]}, by_name=False
            )
            assert mcp.tool_name(message.method or "", message.params) == ref.params.name


@given(st.lists(rpc_elements(), min_size=1, max_size=4), wire, st.sampled_from(["mcp", "a2a"]))
def test_forced_protocol_is_the_protocol(
    batch: list[dict[str, Any]], how: tuple[str, str | None, dict[str, str]], forced: Any
) -> None:
    raw = json.dumps(batch).encode(how[0])
    info = _classify("/mcp", raw, how, forced)
    assert info.binding is Binding.JSONRPC
    assert info.protocol == forced
    if forced == "mcp":
        assert info.invalid is None
        assert info.body is not None
        assert len(info.body.messages) == len(batch)
    else:
        assert info.invalid is not None  # an A2A upstream takes no batches


# --- A2A JSON-RPC: the judged context and task are the SDK's ------------------------------

_names = st.sampled_from(["mine", "victim"])
field_values = _names | _names | _names | st.none() | st.just("") | st.integers(0, 2)


@st.composite
def spelled(draw: st.DrawFn, camel: str, snake: str) -> tuple[list[tuple[str, Any]], bool]:
    """Pairs naming one field: absent, either spelling, or both (then ambiguous)."""
    choice = draw(st.sampled_from(["none", "camel", "camel", "snake", "snake", "both"]))
    names = {"none": [], "camel": [camel], "snake": [snake], "both": [camel, snake]}[choice]
    names = draw(st.permutations(names))
    return [(name, draw(field_values)) for name in names], choice == "both"


@st.composite
def a2a_request(draw: st.DrawFn, methods: list[str]) -> tuple[str, dict[str, Any], bool]:
    """(method, params, ambiguous): params of an A2A operation with its ids spelled freely;
    ambiguous when a JSON-RPC upstream may read them otherwise than the proxy (a field in
    both spellings, `request`, or `taskId` where v0.3 reads `id`)."""
    sends = [m for m in methods if a2a.op_for_method(m) in (a2a.SEND_MESSAGE, a2a.LIST_TASKS)]
    method = draw(
        st.sampled_from(sends) | st.sampled_from(methods) if sends else st.sampled_from(methods)
    )
    op = a2a.op_for_method(method)
    assert op is not None
    legacy = method == op.legacy_name
    pairs: list[tuple[str, Any]] = []
    ambiguous = False
    if op in (a2a.SEND_MESSAGE, a2a.SEND_STREAMING_MESSAGE):
        ctx, ctx_both = draw(spelled("contextId", "context_id"))
        task, task_both = draw(spelled("taskId", "task_id"))
        message_pairs = [
            ("messageId", "m1"),
            ("role", "user" if legacy else "ROLE_USER"),
            ("parts", [{"kind": "text", "text": "hi"}] if legacy else [{"text": "hi"}]),
            *ctx,
            *task,
        ]
        message = dict(draw(st.permutations(message_pairs)))
        keys = draw(st.sampled_from([["message"]] * 4 + [["request"], ["message", "request"]]))
        pairs = [(key, message) for key in keys]
        ambiguous = ctx_both or task_both or "request" in keys
    elif op in (a2a.GET_TASK, a2a.CANCEL_TASK, a2a.SUBSCRIBE_TO_TASK):
        pairs = [("id", draw(field_values))]
        if draw(st.booleans()):
            pairs.append(("name", "tasks/" + draw(st.sampled_from(["mine", "victim"]))))
    elif op is a2a.LIST_TASKS:
        pairs, ambiguous = draw(spelled("contextId", "context_id"))
    elif op.takes_task_id:
        pairs, ambiguous = draw(spelled("taskId", "task_id"))
        if draw(st.booleans()):
            pairs.append(("id", draw(field_values)))
        if (
            legacy
            and op is not a2a.CREATE_PUSH_CONFIG
            and any(k in ("taskId", "task_id") for k, _ in pairs)
        ):
            ambiguous = True  # v0.3 names the task `id` there
    return method, dict(draw(st.permutations(pairs))), ambiguous


def _none(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _v1_reference(method: str, params: dict[str, Any]) -> tuple[str | None, str | None] | None:
    """(context, task) as the v1.0 JSON-RPC dispatcher reads them; None if it refuses."""
    try:
        req: Any = json_format.ParseDict(params, V1_MODELS[method](), ignore_unknown_fields=True)
    except json_format.ParseError:
        return None
    if method in ("SendMessage", "SendStreamingMessage"):
        return _none(req.message.context_id), _none(req.message.task_id)
    if method in ("GetTask", "CancelTask", "SubscribeToTask"):
        return None, _none(req.id)
    if method == "ListTasks":
        return _none(req.context_id), None
    if method == "GetExtendedAgentCard":
        return None, None
    return None, _none(req.task_id)


def _v03_reference(body: dict[str, Any]) -> tuple[str | None, str | None] | None:
    """(context, task) as the v0.3 JSON-RPC adapter reads them; None if it refuses."""
    method = body["method"]
    if method == "agent/getAuthenticatedExtendedCard":
        return None, None
    try:
        req: Any = V03_MODELS[method].model_validate(body)
    except pydantic.ValidationError:
        return None
    p = req.params
    if method in ("message/send", "message/stream"):
        return _none(p.message.context_id), _none(p.message.task_id)
    if method == "tasks/pushNotificationConfig/set":
        return None, _none(p.task_id)
    return None, _none(p.id)


# The proxy reads a fallback where the upstream reads nothing (then the upstream acts on
# no task at all): `name` for these, the config `id` for the v1.0 push-config operations.
_FALLBACK_OPS = {a2a.GET_TASK, a2a.CANCEL_TASK, a2a.SUBSCRIBE_TO_TASK, a2a.GET_PUSH_CONFIG}
_FALLBACK_OPS |= {a2a.LIST_PUSH_CONFIGS, a2a.DELETE_PUSH_CONFIG}


def _check_a2a(
    info: Classified,
    op: a2a.A2aOp,
    params: Any,
    ref: tuple[str | None, str | None] | None,
    ambiguous: bool,
) -> None:
    if ambiguous:
        event("refused: ambiguous")
        assert info.invalid is not None, info
        assert not info.invalid.parse_error
        return
    assert info.invalid is None, info.invalid
    if ref is None:
        event("the upstream refuses it")
        return  # the upstream refuses it: whatever the proxy judged, nothing runs
    ref_ctx, ref_task = ref
    event(f"compared: context {ref_ctx is not None}, task {ref_task is not None}")
    ctx, task = a2a.context_id(op, params), a2a.task_id(op, params)
    assert ctx == ref_ctx
    if ref_task is not None or op not in _FALLBACK_OPS:
        assert task == ref_task


@given(a2a_request(sorted(V1_MODELS)), wire, st.sampled_from(["auto", "a2a"]), st.integers(0, 9))
def test_v1_jsonrpc_ids_are_the_sdks(
    request: tuple[str, dict[str, Any], bool],
    how: tuple[str, str | None, dict[str, str]],
    forced: Any,
    rid: int,
) -> None:
    method, params, ambiguous = request
    body = {"jsonrpc": "2.0", "id": rid, "method": method, "params": params}
    info = _classify("/", json.dumps(body).encode(how[0]), how, forced)
    assert info.protocol == "a2a"
    op = a2a.op_for_method(method)
    assert op is not None
    if info.invalid is None:
        assert info.a2a_op is op
        assert info.body is not None
        assert info.body.messages[0].params == params
    _check_a2a(info, op, params, _v1_reference(method, params), ambiguous)


@given(a2a_request(sorted(V03_MODELS)), wire, st.sampled_from(["auto", "a2a"]))
def test_v03_jsonrpc_ids_are_the_sdks(
    request: tuple[str, dict[str, Any], bool],
    how: tuple[str, str | None, dict[str, str]],
    forced: Any,
) -> None:
    method, params, ambiguous = request
    body = {"jsonrpc": "2.0", "id": "r1", "method": method, "params": params}
    if forced == "auto" and method in SHARED:
        # tasks/get and tasks/cancel name A2A only by `id`; without it they are no protocol's.
        assume("id" in params and "taskId" not in params)
    info = _classify("/", json.dumps(body).encode(how[0]), how, forced)
    assert info.protocol == "a2a"
    op = a2a.op_for_method(method)
    assert op is not None
    _check_a2a(info, op, params, _v03_reference(body), ambiguous)


# --- A2A REST: sends read from the body, everything else from the path -----------------

REST_SENDS = [
    ("/message:send", False),
    ("/message:stream", False),
    ("/tenant-a/message:send", False),
    ("/v1/message:send", True),
    ("/v1/message:stream", True),
]


@given(
    a2a_request(["SendMessage", "message/send"]),
    st.sampled_from(REST_SENDS),
    wire,
)
def test_rest_send_ids_are_the_sdks(
    request: tuple[str, dict[str, Any], bool],
    route: tuple[str, bool],
    how: tuple[str, str | None, dict[str, str]],
) -> None:
    _, params, _ = request
    path, legacy = route
    info = _classify(path, json.dumps(params).encode(how[0]), how)
    assert info.binding is Binding.REST
    assert info.rest is not None
    assert info.rest.legacy is legacy
    op = info.rest.op
    message = next(iter(params.values()))
    ambiguous = {"contextId", "context_id"} <= message.keys() or {"taskId", "task_id"} <= (
        message.keys()
    )
    if legacy:  # v0.3's proto: `request` is the field, `message` its json_name
        ambiguous = ambiguous or len(params) > 1
        model: Any = pb03.SendMessageRequest()
        field = "request"
    else:
        ambiguous = ambiguous or "request" in params
        model, field = pb.SendMessageRequest(), "message"
    if ambiguous:
        assert info.invalid is not None
        assert not info.invalid.parse_error
        return
    assert info.invalid is None, info.invalid
    try:
        req = json_format.ParseDict(params, model, ignore_unknown_fields=True)
    except json_format.ParseError:
        return
    sent = getattr(req, field)
    assert a2a.context_id(op, info.rest_doc) == _none(sent.context_id)
    assert a2a.task_id(op, info.rest_doc) == _none(sent.task_id)


@pytest.mark.parametrize(
    "path", ["/tasks/t1:cancel", "/v1/tasks/t1:cancel", "/tasks/t1/pushNotificationConfigs"]
)
@given(body=st.binary(max_size=40) | json_values.map(lambda v: json.dumps(v).encode()), how=wire)
def test_rest_task_routes_take_the_task_from_the_path(
    path: str, body: bytes, how: tuple[str, str | None, dict[str, str]]
) -> None:
    info = _classify(path, body, how)
    assert info.binding is Binding.REST
    assert info.rest is not None
    assert info.rest.task_id == "t1"
    assert info.rest.task_id or a2a.task_id(info.rest.op, info.rest_doc)  # the gate's read


@given(
    st.binary(max_size=80),
    st.sampled_from(["/", "/mcp", "/message:send", "/v1/message:send", "/tasks/x"]),
    wire,
    st.sampled_from(["auto", "mcp", "a2a"]),
    st.sampled_from(["POST", "GET", "DELETE"]),
)
def test_classify_never_raises(
    raw: bytes, path: str, how: tuple[str, str | None, dict[str, str]], forced: Any, method: str
) -> None:
    _, content_type, extra = how
    body = raw if method == "POST" else None
    info = classify(method, path, _headers(content_type, extra), body, forced)
    if info.binding is Binding.OPAQUE and body:
        assert not json_loads_container(body)


def json_loads_container(raw: bytes) -> bool:
    try:
        return isinstance(json.loads(raw), dict | list)
    except (ValueError, RecursionError):
        return False
