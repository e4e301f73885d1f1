"""proxy.protocols.a2a: operations, REST routes and ids, checked against the a2a-sdk wire format.

Payloads are built with the installed a2a-sdk types and serialized the way its servers
and clients do (ProtoJSON `MessageToDict` for v1.0 and v0.3 REST, pydantic
`model_dump(by_alias=True)` for v0.3 JSON-RPC), so these tests follow the real wire.
"""

from __future__ import annotations

import functools
import re
from typing import Any

import pytest
from a2a.compat.v0_3 import a2a_v0_3_pb2 as pb03
from a2a.compat.v0_3 import proto_utils as proto03
from a2a.compat.v0_3 import types as v03
from a2a.compat.v0_3.jsonrpc_adapter import JSONRPC03Adapter
from a2a.server.request_handlers import DefaultRequestHandler
from a2a.server.routes import create_rest_routes
from a2a.server.routes.jsonrpc_dispatcher import JsonRpcDispatcher
from a2a.server.tasks import InMemoryTaskStore
from a2a.types import a2a_pb2 as pb
from google.api import annotations_pb2
from google.protobuf.json_format import MessageToDict
from starlette.routing import Mount, Route

from proxy.protocols import a2a
from proxy.protocols.a2a import (
    CANCEL_TASK,
    CREATE_PUSH_CONFIG,
    DELETE_PUSH_CONFIG,
    GET_EXTENDED_AGENT_CARD,
    GET_PUSH_CONFIG,
    GET_TASK,
    LIST_PUSH_CONFIGS,
    LIST_TASKS,
    OPS,
    SEND_MESSAGE,
    SEND_STREAMING_MESSAGE,
    SUBSCRIBE_TO_TASK,
    A2aOp,
    RestMatch,
    classify_rest,
    context_id,
    ids_from_result,
    is_agent_card_path,
    is_terminal_event,
    method_names,
    op_for_method,
    task_id,
)
from tests.upstreams.a2a_server import EchoExecutor, build_agent_card

# --- operations and JSON-RPC names -------------------------------------------------

# (op, v1.0 name, v0.3 name, streaming, takes_task_id): the table.
OP_TABLE: list[tuple[A2aOp, str, str | None, bool, bool]] = [
    (SEND_MESSAGE, "SendMessage", "message/send", False, False),
    (SEND_STREAMING_MESSAGE, "SendStreamingMessage", "message/stream", True, False),
    (GET_TASK, "GetTask", "tasks/get", False, True),
    (LIST_TASKS, "ListTasks", None, False, False),
    (CANCEL_TASK, "CancelTask", "tasks/cancel", False, True),
    (SUBSCRIBE_TO_TASK, "SubscribeToTask", "tasks/resubscribe", True, True),
    (
        CREATE_PUSH_CONFIG,
        "CreateTaskPushNotificationConfig",
        "tasks/pushNotificationConfig/set",
        False,
        True,
    ),
    (
        GET_PUSH_CONFIG,
        "GetTaskPushNotificationConfig",
        "tasks/pushNotificationConfig/get",
        False,
        True,
    ),
    (
        LIST_PUSH_CONFIGS,
        "ListTaskPushNotificationConfigs",
        "tasks/pushNotificationConfig/list",
        False,
        True,
    ),
    (
        DELETE_PUSH_CONFIG,
        "DeleteTaskPushNotificationConfig",
        "tasks/pushNotificationConfig/delete",
        False,
        True,
    ),
    (
        GET_EXTENDED_AGENT_CARD,
        "GetExtendedAgentCard",
        "agent/getAuthenticatedExtendedCard",
        False,
        False,
    ),
]


@pytest.mark.parametrize(("op", "name", "legacy", "streaming", "takes_task"), OP_TABLE)
def test_op_table(
    op: A2aOp, name: str, legacy: str | None, streaming: bool, takes_task: bool
) -> None:
    assert (op.name, op.legacy_name, op.streaming, op.takes_task_id) == (
        name,
        legacy,
        streaming,
        takes_task,
    )
    assert op_for_method(name) is op
    if legacy is None:
        assert method_names(op) == (name,)
    else:
        assert op_for_method(legacy) is op
        assert method_names(op) == (name, legacy)


def test_ops_cover_the_table_once() -> None:
    assert list(OPS) == [row[0] for row in OP_TABLE]


def test_v1_names_are_the_sdk_dispatchers() -> None:
    assert {op.name for op in OPS} == set(JsonRpcDispatcher.METHOD_TO_MODEL)


def test_v03_names_are_the_sdk_compat_adapters() -> None:
    legacy = {op.legacy_name for op in OPS if op.legacy_name is not None}
    assert legacy == set(JSONRPC03Adapter.METHOD_TO_MODEL)


def test_streaming_flags_follow_the_proto_service() -> None:
    service = pb.DESCRIPTOR.services_by_name["A2AService"]
    assert {m.name: m.server_streaming for m in service.methods} == {
        op.name: op.streaming for op in OPS
    }


@pytest.mark.parametrize(
    "method",
    [
        "",
        "sendMessage",
        "SendMessage ",
        "message/Send",
        "message/send/",
        "tasks/list",  # not an A2A 0.3 method (MCP has it)
        "tasks/send",  # pre-0.2 name
        "tasks/pushNotificationConfig",
        "tools/call",
        "initialize",
        "GetAuthenticatedExtendedCard",
    ],
)
def test_unknown_methods(method: str) -> None:
    assert op_for_method(method) is None


# --- REST ---------------------------------------------------------------------------

T = "3f2c9a1e-task"
C = "cfg-7"


def _m(
    op: A2aOp,
    task: str | None = None,
    tenant: str | None = None,
    prefix: str = "",
    legacy: bool = False,
) -> RestMatch:
    return RestMatch(op, task, tenant, prefix, legacy)


# (HTTP method, path relative to a mount, expected match at the root)
SHAPES: list[tuple[str, str, A2aOp, bool]] = [
    ("POST", "/message:send", SEND_MESSAGE, False),
    ("POST", "/message:stream", SEND_STREAMING_MESSAGE, False),
    ("GET", f"/tasks/{T}", GET_TASK, True),
    ("HEAD", f"/tasks/{T}", GET_TASK, True),
    ("GET", "/tasks", LIST_TASKS, False),
    ("POST", f"/tasks/{T}:cancel", CANCEL_TASK, True),
    ("GET", f"/tasks/{T}:subscribe", SUBSCRIBE_TO_TASK, True),
    ("POST", f"/tasks/{T}:subscribe", SUBSCRIBE_TO_TASK, True),
    ("POST", f"/tasks/{T}/pushNotificationConfigs", CREATE_PUSH_CONFIG, True),
    ("GET", f"/tasks/{T}/pushNotificationConfigs", LIST_PUSH_CONFIGS, True),
    ("GET", f"/tasks/{T}/pushNotificationConfigs/{C}", GET_PUSH_CONFIG, True),
    ("DELETE", f"/tasks/{T}/pushNotificationConfigs/{C}", DELETE_PUSH_CONFIG, True),
    ("GET", "/extendedAgentCard", GET_EXTENDED_AGENT_CARD, False),
]


@pytest.mark.parametrize(("method", "path", "op", "has_task"), SHAPES)
def test_rest_shapes_at_root_with_tenant_and_mounts(
    method: str, path: str, op: A2aOp, has_task: bool
) -> None:
    task = T if has_task else None
    assert classify_rest(method, path) == _m(op, task)
    # spec and SDK client: {interface url}/{tenant}/...
    assert classify_rest(method, "/acme" + path) == _m(op, task, "acme")
    assert classify_rest(method, "/a2a/acme" + path, base="/a2a") == _m(op, task, "acme", "/a2a")
    # the SDK server mounts tenants outside its path_prefix: /{tenant}{prefix}/...
    assert classify_rest(method, "/acme/a2a" + path, base="/a2a") == _m(op, task, "acme", "/a2a")
    assert classify_rest(method, "/a2a" + path, base="/a2a") == _m(op, task, None, "/a2a")
    assert classify_rest(method, "/x/y/z" + path, base="/x/y/z") == _m(op, task, None, "/x/y/z")
    # unknown deep mount: reported whole, no tenant guessed
    assert classify_rest(method, "/x/y" + path) == _m(op, task, None, "/x/y")
    assert classify_rest(method, "/x/y" + path, base="/q") == _m(op, task, None, "/x/y")


LEGACY_SHAPES: list[tuple[str, str, A2aOp, bool]] = [
    *[row for row in SHAPES if row[2] is not GET_EXTENDED_AGENT_CARD],
    ("GET", "/card", GET_EXTENDED_AGENT_CARD, False),
]


@pytest.mark.parametrize(("method", "path", "op", "has_task"), LEGACY_SHAPES)
def test_rest_v03_shapes_under_v1(method: str, path: str, op: A2aOp, has_task: bool) -> None:
    task = T if has_task else None
    assert classify_rest(method, "/v1" + path) == _m(op, task, legacy=True)
    assert classify_rest(method, "/rest/v1" + path) == _m(op, task, None, "/rest", True)
    assert classify_rest(method, "/rest/v1" + path, base="/rest") == _m(
        op, task, None, "/rest", True
    )


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/message:send"),
        ("PUT", "/message:send"),
        ("POST", "/message:sendx"),
        ("POST", "/message:cancel"),
        ("POST", "/tasks"),
        ("DELETE", f"/tasks/{T}"),
        ("POST", f"/tasks/{T}"),
        ("POST", f"/tasks/{T}:cancel:x"),
        ("POST", f"/tasks/{T}:unknown"),
        ("DELETE", f"/tasks/{T}:cancel"),
        ("PUT", f"/tasks/{T}/pushNotificationConfigs"),
        ("POST", f"/tasks/{T}/pushNotificationConfigs/{C}"),
        ("GET", f"/tasks/{T}/pushNotificationConfigs/{C}/x"),
        ("GET", f"/tasks/{T}/other"),
        ("GET", "/tasks/"),
        ("GET", "/tasks//pushNotificationConfigs"),
        ("POST", "/extendedAgentCard"),
        ("GET", "/card"),  # only v0.3 has /card, and only under /v1
        ("GET", "/acme/card"),
        ("POST", "/"),
        ("POST", "/mcp"),
        ("GET", "/.well-known/agent-card.json"),
        ("GET", ""),
        ("GET", "tasks"),
    ],
)
def test_rest_non_matches(method: str, path: str) -> None:
    assert classify_rest(method, path) is None


def test_rest_task_id_with_colon_is_get_task() -> None:
    # Starlette: GET /tasks/a:cancel falls through to GET /tasks/{id} with id "a:cancel".
    assert classify_rest("GET", "/tasks/a:cancel") == _m(GET_TASK, "a:cancel")
    assert classify_rest("POST", "/tasks/a:b:cancel") == _m(CANCEL_TASK, "a:b")


def _fill(template: str) -> str:
    path = re.sub(r"\{tenant\}", "acme", template)
    path = re.sub(
        r"\{(?:id|task_id)(?:=\*)?\}/pushNotificationConfigs/\{(?:id|push_id)(?:=\*)?\}",
        f"{T}/pushNotificationConfigs/{C}",
        path,
    )
    return re.sub(r"\{(?:id|task_id)(?:=\*)?\}", T, path)


def _proto_bindings() -> list[tuple[str, str, str]]:
    """(operation, HTTP method, path) of every google.api.http binding of A2AService."""
    out = []
    for m in pb.DESCRIPTOR.services_by_name["A2AService"].methods:
        rule = m.GetOptions().Extensions[annotations_pb2.http]
        for r in (rule, *rule.additional_bindings):
            verb = r.WhichOneof("pattern")
            out.append((m.name, verb.upper(), getattr(r, verb)))
    return out


@pytest.mark.parametrize(("name", "method", "template"), _proto_bindings())
def test_every_v1_proto_http_binding(name: str, method: str, template: str) -> None:
    match = classify_rest(method, _fill(template))
    assert match is not None
    assert match.op.name == name
    assert match.tenant == ("acme" if "{tenant}" in template else None)
    assert match.task_id == (T if "{id" in template or "{task_id" in template else None)
    assert not match.legacy


_V03_VERBS = {"post", "get", "delete"}


def _proto03_bindings() -> list[tuple[str, str, str]]:
    out = []
    for m in pb03.DESCRIPTOR.services_by_name["A2AService"].methods:
        rule = m.GetOptions().Extensions[annotations_pb2.http]
        verb = rule.WhichOneof("pattern")
        assert verb in _V03_VERBS
        path = re.sub(
            r"\{name=tasks/\*/pushNotificationConfigs/\*\}",
            f"tasks/{T}/pushNotificationConfigs/{C}",
            getattr(rule, verb),
        )
        path = re.sub(
            r"\{parent=tasks/\*/pushNotificationConfigs\}",
            f"tasks/{T}/pushNotificationConfigs",
            path,
        )
        path = re.sub(r"\{(?:name|parent)=tasks/\*\}", f"tasks/{T}", path)
        out.append((m.name, verb.upper(), path))
    return out


_V03_PROTO_TO_V1 = {
    "SendMessage": "SendMessage",
    "SendStreamingMessage": "SendStreamingMessage",
    "GetTask": "GetTask",
    "CancelTask": "CancelTask",
    "TaskSubscription": "SubscribeToTask",
    "CreateTaskPushNotificationConfig": "CreateTaskPushNotificationConfig",
    "GetTaskPushNotificationConfig": "GetTaskPushNotificationConfig",
    "ListTaskPushNotificationConfig": "ListTaskPushNotificationConfigs",
    "DeleteTaskPushNotificationConfig": "DeleteTaskPushNotificationConfig",
    "GetAgentCard": "GetExtendedAgentCard",
}


@pytest.mark.parametrize(("name", "method", "path"), _proto03_bindings())
def test_every_v03_proto_http_binding(name: str, method: str, path: str) -> None:
    match = classify_rest(method, path)
    assert match is not None
    assert match.op.name == _V03_PROTO_TO_V1[name]
    assert match.legacy
    assert match.task_id == (T if "/tasks/" in path else None)


# Endpoint names of the SDK's REST dispatcher and its v0.3 adapter -> operation.
_ENDPOINTS = {
    "on_message_send": SEND_MESSAGE,
    "on_message_send_stream": SEND_STREAMING_MESSAGE,
    "on_cancel_task": CANCEL_TASK,
    "on_subscribe_to_task": SUBSCRIBE_TO_TASK,
    "on_get_task": GET_TASK,
    "get_push_notification": GET_PUSH_CONFIG,
    "delete_push_notification": DELETE_PUSH_CONFIG,
    "set_push_notification": CREATE_PUSH_CONFIG,
    "list_push_notifications": LIST_PUSH_CONFIGS,
    "list_tasks": LIST_TASKS,
    "handle_authenticated_agent_card": GET_EXTENDED_AGENT_CARD,
    "on_get_extended_agent_card": GET_EXTENDED_AGENT_CARD,
}


def _endpoint_name(endpoint: Any) -> str:
    if isinstance(endpoint, functools.partial):  # v0.3 adapter: partial(_handle, handler.fn)
        return str(endpoint.args[0].__name__)
    return str(endpoint.__name__)


def _sdk_routes(prefix: str) -> list[tuple[str, str, str]]:
    """(endpoint name, HTTP method, concrete path) of every route the SDK mounts."""
    handler = DefaultRequestHandler(
        agent_executor=EchoExecutor(),
        task_store=InMemoryTaskStore(),
        agent_card=build_agent_card("http://127.0.0.1:1"),
    )
    out = []
    for route in create_rest_routes(handler, enable_v0_3_compat=True, path_prefix=prefix):
        inner = route.routes if isinstance(route, Mount) else [route]
        mount = route.path if isinstance(route, Mount) else ""
        for r in inner:
            assert isinstance(r, Route)
            path = (mount + r.path).replace("{tenant}", "acme")
            path = path.replace("{push_id}", C).replace("{id}", T)
            for method in sorted(r.methods or ()):
                out.append((_endpoint_name(r.endpoint), method, path))
    return out


@pytest.mark.parametrize("prefix", ["", "/rest", "/api/a2a"])
def test_every_sdk_rest_route(prefix: str) -> None:
    routes = _sdk_routes(prefix)
    assert len(routes) > 30
    for endpoint, method, path in routes:
        match = classify_rest(method, path, base=prefix)
        assert match is not None, (method, path)
        assert match.op is _ENDPOINTS[endpoint], (endpoint, method, path)
        assert match.prefix == prefix
        assert match.legacy == ("/v1/" in path), path
        assert match.tenant == ("acme" if path.startswith("/acme") else None), path
        assert match.task_id == (T if f"/tasks/{T}" in path else None), path


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/.well-known/agent-card.json", True),
        ("/.well-known/agent.json", True),
        ("/rest/.well-known/agent-card.json", True),
        ("/.well-known/agent-card.jsonx", False),
        ("/.well-known/agent", False),
        ("/agent-card.json", False),
        ("/", False),
    ],
)
def test_agent_card_path(path: str, expected: bool) -> None:
    assert is_agent_card_path(path) is expected


# --- ids in requests ------------------------------------------------------------------


def _pb_message(**kw: str) -> pb.Message:
    return pb.Message(message_id="m1", role=pb.ROLE_USER, parts=[pb.Part(text="hi")], **kw)


def _v03_message(**kw: str) -> v03.Message:
    return v03.Message(
        message_id="m1", role=v03.Role.user, parts=[v03.Part(root=v03.TextPart(text="hi"))], **kw
    )


def _v03(model: Any) -> Any:
    return model.model_dump(mode="json", by_alias=True, exclude_none=True)


def _v03_rest_send(msg: v03.Message) -> dict[str, Any]:
    return MessageToDict(pb03.SendMessageRequest(request=proto03.ToProto.message(msg)))


def _pb_status_event(state: int) -> dict[str, Any]:
    status = pb.TaskStatus(state=state)  # type: ignore[arg-type]
    update = pb.TaskStatusUpdateEvent(task_id="t1", context_id="c1", status=status)
    return MessageToDict(pb.StreamResponse(status_update=update))


def _v03_push_config() -> v03.TaskPushNotificationConfig:
    return v03.TaskPushNotificationConfig(
        task_id="t1",
        push_notification_config=v03.PushNotificationConfig(id="cfg", url="http://h/x"),
    )


# (op, params as sent on the wire, contextId, taskId)
REQUESTS: list[tuple[str, A2aOp, Any, str | None, str | None]] = [
    # v1.0 JSON-RPC params / REST bodies (ProtoJSON)
    (
        "v1 send new",
        SEND_MESSAGE,
        MessageToDict(pb.SendMessageRequest(message=_pb_message())),
        None,
        None,
    ),
    (
        "v1 send ctx",
        SEND_MESSAGE,
        MessageToDict(pb.SendMessageRequest(message=_pb_message(context_id="c1"))),
        "c1",
        None,
    ),
    (
        "v1 stream ctx task",
        SEND_STREAMING_MESSAGE,
        MessageToDict(pb.SendMessageRequest(message=_pb_message(context_id="c1", task_id="t1"))),
        "c1",
        "t1",
    ),
    ("v1 get", GET_TASK, MessageToDict(pb.GetTaskRequest(id="t1", history_length=2)), None, "t1"),
    ("v1 cancel", CANCEL_TASK, MessageToDict(pb.CancelTaskRequest(id="t1")), None, "t1"),
    (
        "v1 subscribe",
        SUBSCRIBE_TO_TASK,
        MessageToDict(pb.SubscribeToTaskRequest(id="t1")),
        None,
        "t1",
    ),
    ("v1 list filter", LIST_TASKS, MessageToDict(pb.ListTasksRequest(context_id="c1")), "c1", None),
    ("v1 list all", LIST_TASKS, MessageToDict(pb.ListTasksRequest(page_size=5)), None, None),
    (
        "v1 create push",
        CREATE_PUSH_CONFIG,
        MessageToDict(pb.TaskPushNotificationConfig(task_id="t1", id="cfg", url="http://h/x")),
        None,
        "t1",
    ),
    (
        "v1 get push",
        GET_PUSH_CONFIG,
        MessageToDict(pb.GetTaskPushNotificationConfigRequest(task_id="t1", id="cfg")),
        None,
        "t1",
    ),
    (
        "v1 list push",
        LIST_PUSH_CONFIGS,
        MessageToDict(pb.ListTaskPushNotificationConfigsRequest(task_id="t1")),
        None,
        "t1",
    ),
    (
        "v1 delete push",
        DELETE_PUSH_CONFIG,
        MessageToDict(pb.DeleteTaskPushNotificationConfigRequest(task_id="t1", id="cfg")),
        None,
        "t1",
    ),
    (
        "v1 card",
        GET_EXTENDED_AGENT_CARD,
        MessageToDict(pb.GetExtendedAgentCardRequest()),
        None,
        None,
    ),
    # ProtoJSON parsers also take the proto field names
    ("v1 snake", SEND_MESSAGE, {"message": {"context_id": "c1", "task_id": "t1"}}, "c1", "t1"),
    # v0.3 JSON-RPC params (pydantic, camelCase aliases)
    (
        "v03 send",
        SEND_MESSAGE,
        _v03(v03.MessageSendParams(message=_v03_message(context_id="c1", task_id="t1"))),
        "c1",
        "t1",
    ),
    (
        "v03 stream new",
        SEND_STREAMING_MESSAGE,
        _v03(v03.MessageSendParams(message=_v03_message())),
        None,
        None,
    ),
    ("v03 get", GET_TASK, _v03(v03.TaskQueryParams(id="t1", history_length=1)), None, "t1"),
    ("v03 cancel", CANCEL_TASK, _v03(v03.TaskIdParams(id="t1")), None, "t1"),
    ("v03 resubscribe", SUBSCRIBE_TO_TASK, _v03(v03.TaskIdParams(id="t1")), None, "t1"),
    (
        "v03 set push",
        CREATE_PUSH_CONFIG,
        _v03(_v03_push_config()),
        None,
        "t1",
    ),
    (
        "v03 get push",
        GET_PUSH_CONFIG,
        _v03(v03.GetTaskPushNotificationConfigParams(id="t1", push_notification_config_id="cfg")),
        None,
        "t1",
    ),
    (
        "v03 list push",
        LIST_PUSH_CONFIGS,
        _v03(v03.ListTaskPushNotificationConfigParams(id="t1")),
        None,
        "t1",
    ),
    (
        "v03 delete push",
        DELETE_PUSH_CONFIG,
        _v03(
            v03.DeleteTaskPushNotificationConfigParams(id="t1", push_notification_config_id="cfg")
        ),
        None,
        "t1",
    ),
    # v0.3 REST bodies (its proto: `message` is the json_name of `request`)
    (
        "v03 rest send",
        SEND_MESSAGE,
        _v03_rest_send(_v03_message(context_id="c1", task_id="t1")),
        "c1",
        "t1",
    ),
    (
        "v03 rest cancel",
        CANCEL_TASK,
        MessageToDict(pb03.CancelTaskRequest(name="tasks/t1")),
        None,
        "t1",
    ),
    # malformed
    ("no params", SEND_MESSAGE, None, None, None),
    ("list params", GET_TASK, ["t1"], None, None),
    ("message not object", SEND_MESSAGE, {"message": "c1"}, None, None),
    ("non-str ids", GET_TASK, {"id": 7}, None, None),
    ("empty ids", SEND_MESSAGE, {"message": {"contextId": "", "taskId": ""}}, None, None),
]


@pytest.mark.parametrize(
    ("op", "params", "ctx", "task"), [r[1:] for r in REQUESTS], ids=[r[0] for r in REQUESTS]
)
def test_request_ids(op: A2aOp, params: Any, ctx: str | None, task: str | None) -> None:
    assert context_id(op, params) == ctx
    assert task_id(op, params) == task


# --- ids and stream ends in results ------------------------------------------------------


def _pb_task(state: int) -> pb.Task:
    return pb.Task(id="t1", context_id="c1", status=pb.TaskStatus(state=state))  # type: ignore[arg-type]


def _v03_task(state: v03.TaskState) -> v03.Task:
    return v03.Task(id="t1", context_id="c1", status=v03.TaskStatus(state=state))


_V03_STATUS = v03.TaskStatusUpdateEvent(
    task_id="t1", context_id="c1", status=v03.TaskStatus(state=v03.TaskState.working), final=False
)
_V03_FINAL = v03.TaskStatusUpdateEvent(
    task_id="t1", context_id="c1", status=v03.TaskStatus(state=v03.TaskState.completed), final=True
)
_V03_ARTIFACT = v03.TaskArtifactUpdateEvent(
    task_id="t1",
    context_id="c1",
    artifact=v03.Artifact(artifact_id="a1", parts=[v03.Part(root=v03.TextPart(text="x"))]),
)
_PB_ARTIFACT = pb.TaskArtifactUpdateEvent(
    task_id="t1",
    context_id="c1",
    artifact=pb.Artifact(artifact_id="a1", parts=[pb.Part(text="x")]),
    last_chunk=True,
)

# (label, result or event payload, contextId, taskId, stream ends after it)
RESULTS: list[tuple[str, Any, str | None, str | None, bool]] = [
    # v1.0 (JSON-RPC result and REST body/SSE data are the same ProtoJSON)
    (
        "v1 send -> task",
        MessageToDict(pb.SendMessageResponse(task=_pb_task(pb.TASK_STATE_COMPLETED))),
        "c1",
        "t1",
        True,
    ),
    (
        "v1 send -> message",
        MessageToDict(pb.SendMessageResponse(message=_pb_message(context_id="c1"))),
        "c1",
        None,
        True,
    ),
    (
        "v1 send -> message in task",
        MessageToDict(pb.SendMessageResponse(message=_pb_message(context_id="c1", task_id="t1"))),
        "c1",
        "t1",
        True,
    ),
    (
        "v1 event task submitted",
        MessageToDict(pb.StreamResponse(task=_pb_task(pb.TASK_STATE_SUBMITTED))),
        "c1",
        "t1",
        False,
    ),
    (
        "v1 event status working",
        _pb_status_event(pb.TASK_STATE_WORKING),
        "c1",
        "t1",
        False,
    ),
    (
        "v1 event status completed",
        _pb_status_event(pb.TASK_STATE_COMPLETED),
        "c1",
        "t1",
        True,
    ),
    (
        "v1 event artifact",
        MessageToDict(pb.StreamResponse(artifact_update=_PB_ARTIFACT)),
        "c1",
        "t1",
        False,
    ),
    ("v1 get task", MessageToDict(_pb_task(pb.TASK_STATE_WORKING)), "c1", "t1", False),
    (
        "v1 push config",
        MessageToDict(pb.TaskPushNotificationConfig(task_id="t1", id="cfg", url="http://h/x")),
        None,
        "t1",
        False,
    ),
    (
        "v1 list tasks",
        MessageToDict(pb.ListTasksResponse(tasks=[_pb_task(pb.TASK_STATE_WORKING)])),
        None,
        None,
        False,
    ),
    ("v1 card", MessageToDict(build_agent_card("http://127.0.0.1:1")), None, None, False),
    # v0.3 JSON-RPC (bare objects with `kind`)
    ("v03 task", _v03(_v03_task(v03.TaskState.working)), "c1", "t1", False),
    ("v03 task done", _v03(_v03_task(v03.TaskState.completed)), "c1", "t1", True),
    ("v03 message", _v03(_v03_message(context_id="c1")), "c1", None, True),
    ("v03 message in task", _v03(_v03_message(context_id="c1", task_id="t1")), "c1", "t1", True),
    ("v03 status", _v03(_V03_STATUS), "c1", "t1", False),
    ("v03 status final", _v03(_V03_FINAL), "c1", "t1", True),
    ("v03 artifact", _v03(_V03_ARTIFACT), "c1", "t1", False),
    (
        "v03 push config",
        _v03(_v03_push_config()),
        None,
        "t1",
        False,
    ),
    # v0.3 REST (its ProtoJSON: wrapped, TASK_STATE_CANCELLED, resource names)
    (
        "v03 rest send -> task",
        MessageToDict(proto03.ToProto.task_or_message(_v03_task(v03.TaskState.submitted))),
        "c1",
        "t1",
        False,
    ),
    (
        "v03 rest event canceled",
        MessageToDict(proto03.ToProto.stream_response(_v03_task(v03.TaskState.canceled))),
        "c1",
        "t1",
        True,
    ),
    (
        "v03 rest status final",
        MessageToDict(proto03.ToProto.stream_response(_V03_FINAL)),
        "c1",
        "t1",
        True,
    ),
    (
        "v03 rest artifact",
        MessageToDict(proto03.ToProto.stream_response(_V03_ARTIFACT)),
        "c1",
        "t1",
        False,
    ),
    (
        "v03 rest message",
        MessageToDict(proto03.ToProto.stream_response(_v03_message(context_id="c1"))),
        "c1",
        None,
        True,
    ),
    (
        "v03 rest push config",
        MessageToDict(proto03.ToProto.task_push_notification_config(_v03_push_config())),
        None,
        "t1",
        False,
    ),
    # not results
    ("null", None, None, None, False),
    ("list", [{"contextId": "c1"}], None, None, False),
    ("string", "c1", None, None, False),
    ("empty", {}, None, None, False),
    ("bad types", {"contextId": 1, "id": 2, "status": {"state": 3}}, None, None, False),
]


@pytest.mark.parametrize(
    ("result", "ctx", "task", "ends"), [r[1:] for r in RESULTS], ids=[r[0] for r in RESULTS]
)
def test_result_ids_and_stream_end(
    result: Any, ctx: str | None, task: str | None, ends: bool
) -> None:
    assert ids_from_result(result) == (ctx, task)
    assert is_terminal_event(result) is ends


_ENDS_STREAM = {
    "COMPLETED",
    "FAILED",
    "CANCELED",
    "CANCELLED",
    "REJECTED",
    "INPUT_REQUIRED",
    "AUTH_REQUIRED",
}


@pytest.mark.parametrize("name", pb.TaskState.keys())
def test_every_v1_state(name: str) -> None:
    state = pb.TaskState.Value(name)
    ends = name.removeprefix("TASK_STATE_") in _ENDS_STREAM
    assert is_terminal_event(_pb_status_event(state)) is ends
    assert is_terminal_event(MessageToDict(pb.StreamResponse(task=_pb_task(state)))) is ends
    assert is_terminal_event(MessageToDict(_pb_task(state))) is ends


@pytest.mark.parametrize("name", pb03.TaskState.keys())
def test_every_v03_rest_state(name: str) -> None:
    task = pb03.Task(
        id="t1", context_id="c1", status=pb03.TaskStatus(state=pb03.TaskState.Value(name))
    )
    ends = name.removeprefix("TASK_STATE_") in _ENDS_STREAM
    assert is_terminal_event(MessageToDict(pb03.StreamResponse(task=task))) is ends


@pytest.mark.parametrize("state", list(v03.TaskState))
def test_every_v03_jsonrpc_state(state: v03.TaskState) -> None:
    ends = state.value.upper().replace("-", "_") in _ENDS_STREAM
    event = v03.TaskStatusUpdateEvent(
        task_id="t1", context_id="c1", status=v03.TaskStatus(state=state), final=False
    )
    assert is_terminal_event(_v03(event)) is ends
    assert is_terminal_event(_v03(_v03_task(state))) is ends


def test_state_sets_are_disjoint_and_exported() -> None:
    assert not (a2a.TERMINAL_STATES & a2a.INTERRUPTED_STATES)
    assert "TASK_STATE_CANCELED" in a2a.TERMINAL_STATES
    assert "input-required" in a2a.INTERRUPTED_STATES
