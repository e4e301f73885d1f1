"""What an A2A request or response is, for both bindings and both spec generations.

Pure functions over already-parsed JSON values and (HTTP method, path) strings; no I/O.

Wire facts, from a2a-sdk 1.3 as installed:
- v1.0 JSON-RPC names and REST routes: the `google.api.http` options of
  `a2a/types/a2a_pb2.py` (A2AService) and `a2a/server/routes/rest_routes.py`.
- v0.3 JSON-RPC names: `a2a/compat/v0_3/jsonrpc_adapter.py` METHOD_TO_MODEL; v0.3 REST
  routes: `a2a/compat/v0_3/a2a_v0_3.proto` and `rest_adapter.py` (all under `/v1`).
- Field names: v1.0 ProtoJSON of `a2a_pb2` (camelCase, no `kind`, results wrapped as
  `{"task"|"message"|"statusUpdate"|"artifactUpdate": ...}`, states `TASK_STATE_*`);
  v0.3 JSON-RPC pydantic models (`kind` discriminator, kebab-case states, `final`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, NamedTuple

from proxy.protocols.jsonrpc import DuplicateKeyError

AGENT_CARD_PATH: Final = "/.well-known/agent-card.json"
LEGACY_AGENT_CARD_PATH: Final = "/.well-known/agent.json"


@dataclass(frozen=True, slots=True)
class A2aOp:
    """One A2A operation.

    `takes_task_id`: the operation addresses an existing task (GetTask, CancelTask,
    SubscribeToTask, the push-config operations); a message may name one optionally.
    """

    name: str  # v1.0 JSON-RPC method, also the proto rpc name
    legacy_name: str | None  # v0.3 JSON-RPC method; None where 0.3 had no such operation
    streaming: bool
    takes_task_id: bool


SEND_MESSAGE: Final = A2aOp("SendMessage", "message/send", False, False)
SEND_STREAMING_MESSAGE: Final = A2aOp("SendStreamingMessage", "message/stream", True, False)
GET_TASK: Final = A2aOp("GetTask", "tasks/get", False, True)
LIST_TASKS: Final = A2aOp("ListTasks", None, False, False)  # absent from 0.3 (a2a-sdk #1043)
CANCEL_TASK: Final = A2aOp("CancelTask", "tasks/cancel", False, True)
SUBSCRIBE_TO_TASK: Final = A2aOp("SubscribeToTask", "tasks/resubscribe", True, True)
CREATE_PUSH_CONFIG: Final = A2aOp(
    "CreateTaskPushNotificationConfig", "tasks/pushNotificationConfig/set", False, True
)
GET_PUSH_CONFIG: Final = A2aOp(
    "GetTaskPushNotificationConfig", "tasks/pushNotificationConfig/get", False, True
)
LIST_PUSH_CONFIGS: Final = A2aOp(
    "ListTaskPushNotificationConfigs", "tasks/pushNotificationConfig/list", False, True
)
DELETE_PUSH_CONFIG: Final = A2aOp(
    "DeleteTaskPushNotificationConfig", "tasks/pushNotificationConfig/delete", False, True
)
GET_EXTENDED_AGENT_CARD: Final = A2aOp(
    "GetExtendedAgentCard", "agent/getAuthenticatedExtendedCard", False, False
)

OPS: Final[tuple[A2aOp, ...]] = (
    SEND_MESSAGE,
    SEND_STREAMING_MESSAGE,
    GET_TASK,
    LIST_TASKS,
    CANCEL_TASK,
    SUBSCRIBE_TO_TASK,
    CREATE_PUSH_CONFIG,
    GET_PUSH_CONFIG,
    LIST_PUSH_CONFIGS,
    DELETE_PUSH_CONFIG,
    GET_EXTENDED_AGENT_CARD,
)

_BY_NAME: Final[dict[str, A2aOp]] = {op.name: op for op in OPS}
_BY_LEGACY_NAME: Final[dict[str, A2aOp]] = {
    op.legacy_name: op for op in OPS if op.legacy_name is not None
}
_BY_METHOD: Final[dict[str, A2aOp]] = {**_BY_NAME, **_BY_LEGACY_NAME}
_NAMES: Final[dict[str, tuple[str, ...]]] = {
    op.name: (op.name,) if op.legacy_name is None else (op.name, op.legacy_name) for op in OPS
}


def op_for_method(method: str) -> A2aOp | None:
    """The operation a JSON-RPC method names, by its v1.0 or its v0.3 name."""
    return _BY_METHOD.get(method)


def method_names(op: A2aOp) -> tuple[str, ...]:
    """Every JSON-RPC name of `op` (v1.0 first); policy `methods` globs match any."""
    return _NAMES[op.name]


# --- REST (HTTP+JSON) ---------------------------------------------------------------


class RestMatch(NamedTuple):
    """A REST request's operation (a NamedTuple: built per request, cheaper than a dataclass).

    `prefix` is the mount path before the operation (without tenant and `/v1`);
    `legacy` is True for the v0.3 routes under `/v1`.
    """

    op: A2aOp
    task_id: str | None
    tenant: str | None
    prefix: str
    legacy: bool = False


# Everything before the operation: a lazy mount prefix (tenant included), then the
# v0.3 `/v1` segment if present. `/v1/...` is read as v0.3, as the SDK routes it (its
# v0.3 adapter comes before its /{tenant} mount). `++`: a segment never backtracks.
_HEAD: Final = r"(?P<head>(?:/[^/]++)*?)(?P<v1>/v1)?"
_ID: Final = r"[^/]+"

_RE_SEND: Final = re.compile(_HEAD + r"/message:send")
_RE_STREAM: Final = re.compile(_HEAD + r"/message:stream")
_RE_TASKS: Final = re.compile(_HEAD + r"/tasks")
_RE_TASK: Final = re.compile(_HEAD + rf"/tasks/(?P<task>{_ID})")
_RE_CANCEL: Final = re.compile(_HEAD + rf"/tasks/(?P<task>{_ID}):cancel")
_RE_SUBSCRIBE: Final = re.compile(_HEAD + rf"/tasks/(?P<task>{_ID}):subscribe")
_RE_PUSH_CONFIGS: Final = re.compile(_HEAD + rf"/tasks/(?P<task>{_ID})/pushNotificationConfigs")
_RE_PUSH_CONFIG: Final = re.compile(
    _HEAD + rf"/tasks/(?P<task>{_ID})/pushNotificationConfigs/(?P<config>{_ID})"
)
_RE_EXTENDED_CARD: Final = re.compile(_HEAD + r"/extendedAgentCard")
_RE_LEGACY_CARD: Final = re.compile(r"(?P<head>(?:/[^/]++)*?)(?P<v1>/v1)/card")

# (shape, HTTP method) -> operation. HEAD rides with GET, as Starlette routes it.
_ROUTES: Final[dict[tuple[str, str], A2aOp]] = {
    ("send", "POST"): SEND_MESSAGE,
    ("stream", "POST"): SEND_STREAMING_MESSAGE,
    ("tasks", "GET"): LIST_TASKS,
    ("tasks", "HEAD"): LIST_TASKS,
    ("task", "GET"): GET_TASK,
    ("task", "HEAD"): GET_TASK,
    ("cancel", "POST"): CANCEL_TASK,
    ("subscribe", "GET"): SUBSCRIBE_TO_TASK,
    ("subscribe", "HEAD"): SUBSCRIBE_TO_TASK,
    ("subscribe", "POST"): SUBSCRIBE_TO_TASK,
    ("configs", "POST"): CREATE_PUSH_CONFIG,
    ("configs", "GET"): LIST_PUSH_CONFIGS,
    ("configs", "HEAD"): LIST_PUSH_CONFIGS,
    ("config", "GET"): GET_PUSH_CONFIG,
    ("config", "HEAD"): GET_PUSH_CONFIG,
    ("config", "DELETE"): DELETE_PUSH_CONFIG,
    ("extendedAgentCard", "GET"): GET_EXTENDED_AGENT_CARD,
    ("extendedAgentCard", "HEAD"): GET_EXTENDED_AGENT_CARD,
    ("card", "GET"): GET_EXTENDED_AGENT_CARD,
    ("card", "HEAD"): GET_EXTENDED_AGENT_CARD,
}

_Candidates = tuple[tuple[re.Pattern[str], str], ...]
# The shapes a path may have, picked by its last segment so most paths run one regex.
# Ties follow Starlette's order: GET /tasks/a:cancel is GetTask of "a:cancel".
_TASK_ITEM: Final[_Candidates] = ((_RE_PUSH_CONFIG, "config"), (_RE_TASK, "task"))
_TASK_ONLY: Final[_Candidates] = ((_RE_TASK, "task"),)
_BY_LAST_SEGMENT: Final[dict[str, _Candidates]] = {
    "message:send": ((_RE_SEND, "send"),),
    "message:stream": ((_RE_STREAM, "stream"),),
    "tasks": ((_RE_TASKS, "tasks"),),
    "extendedAgentCard": ((_RE_EXTENDED_CARD, "extendedAgentCard"),),
    "card": ((_RE_LEGACY_CARD, "card"),),
    "pushNotificationConfigs": ((_RE_PUSH_CONFIGS, "configs"),),
}
_CANCEL: Final[_Candidates] = ((_RE_CANCEL, "cancel"), *_TASK_ITEM)
_SUBSCRIBE: Final[_Candidates] = ((_RE_SUBSCRIBE, "subscribe"), *_TASK_ITEM)


def _candidates(path: str) -> _Candidates:
    found = _BY_LAST_SEGMENT.get(path[path.rfind("/") + 1 :])
    if found is not None:
        return found
    if "/tasks/" not in path:
        return ()
    if path.endswith(":cancel"):
        return _CANCEL
    if path.endswith(":subscribe"):
        return _SUBSCRIBE
    return _TASK_ITEM if "/pushNotificationConfigs/" in path else _TASK_ONLY


def _split_head(head: str, base: str) -> tuple[str | None, str]:
    """(tenant, prefix) from what precedes the operation, given the known mount `base`."""
    if head == base:
        return None, base
    if head.startswith(base):
        rest = head[len(base) :]  # spec and SDK client order: {base}/{tenant}/...
        if rest.startswith("/") and rest.find("/", 1) < 0:
            return rest[1:], base
    if base and head.endswith(base):
        rest = head[: len(head) - len(base)]  # SDK server order: /{tenant}{base}/...
        if rest.startswith("/") and rest.find("/", 1) < 0:
            return rest[1:], base
    return None, head


def classify_rest(http_method: str, path: str, base: str = "") -> RestMatch | None:
    """The A2A operation of a REST request, or None.

    `path` is the URL path without query. `base` is the REST mount path when the
    caller knows it ("" = root); a single segment between it and the operation is
    the tenant. With an unknown mount, a deeper head is reported whole as `prefix`.
    """
    for pattern, shape in _candidates(path):
        m = pattern.fullmatch(path)
        if m is None:
            continue
        op = _ROUTES.get((shape, http_method))
        if op is None:
            continue
        head: str = m.group("head")
        legacy = m.group("v1") is not None
        task: str | None = m.group("task") if "task" in pattern.groupindex else None
        if legacy:
            return RestMatch(op, task, None, head, True)
        tenant, prefix = _split_head(head, base)
        return RestMatch(op, task, tenant, prefix, False)
    return None


def is_agent_card_path(path: str) -> bool:
    """The well-known agent card (`agent-card.json`, or the legacy `agent.json`)."""
    return path.endswith(AGENT_CARD_PATH) or path.endswith(LEGACY_AGENT_CARD_PATH)


# --- ids in params, bodies and results ----------------------------------------------
#
# The proxy reads a request's context and task as the upstream's parsers do, or refuses
# it (issue 11, finding 2). Those parsers, in a2a-sdk 1.3:
# - v1.0 JSON-RPC params and REST bodies: ProtoJSON (`json_format.ParseDict`/`Parse`,
#   unknown fields ignored). A field is found by its lowerCamel json_name or its proto
#   name (`contextId` or `context_id`); given both, the LAST one in the object wins and
#   a null clears the field.
# - v0.3 JSON-RPC params: pydantic models with `validate_by_name` and camelCase aliases;
#   given both spellings, the ALIAS wins.
# - v0.3 REST bodies: the v0.3 proto, whose SendMessageRequest names the message
#   `request` (json_name `message`): both keys reach the same field.
# A mapping that names one of the fields the proxy reads in two spellings is therefore
# refused (`AmbiguousFieldError`, a `DuplicateKeyError`: invalid request), as is a field
# the proxy would read but the upstream's generation ignores: `request` outside the v0.3
# REST binding, `taskId` in the v0.3 push-config get/list/delete (v0.3 names the task
# `id` there). `check_request` applies these rules; `context_id` and `task_id` raise the
# same error rather than pick a spelling, so an unchecked request never reads as one.


class AmbiguousFieldError(DuplicateKeyError):
    """A request names a field the upstream may read differently from the proxy: in two
    spellings (`contextId` and `context_id`), or where the upstream does not look."""


def _str(obj: Mapping[str, object], camel: str, snake: str) -> str | None:
    # ProtoJSON parsers (v1.0) and the v0.3 pydantic models accept both spellings.
    if camel in obj:
        if snake in obj:
            raise AmbiguousFieldError(f"{camel} and {snake} in one object")
        value = obj[camel]
    else:
        value = obj.get(snake)
    return value if isinstance(value, str) and value else None


def _message(params: Mapping[str, object]) -> object:
    # `request` is the v0.3 REST proto's name for the field whose json_name is `message`.
    if "message" in params:
        if "request" in params:
            raise AmbiguousFieldError("message and request in one object")
        return params["message"]
    return params.get("request")


def _task_from_name(name: object) -> str | None:
    # v0.3 proto resource names: "tasks/{id}" and "tasks/{id}/pushNotificationConfigs/{cid}".
    if isinstance(name, str) and name.startswith("tasks/"):
        task = name[6:].split("/", 1)[0]
        return task or None
    return None


_MESSAGE_OPS: Final = frozenset({SEND_MESSAGE.name, SEND_STREAMING_MESSAGE.name})
_TASK_ID_AS_ID_OPS: Final = frozenset({GET_TASK.name, CANCEL_TASK.name, SUBSCRIBE_TO_TASK.name})
# v1.0 names the task `taskId` (and the config `id`); v0.3 names the task `id`.
_PUSH_OPS: Final = frozenset(
    {GET_PUSH_CONFIG.name, LIST_PUSH_CONFIGS.name, DELETE_PUSH_CONFIG.name}
)
_LEGACY_PUSH_METHODS: Final = frozenset(
    name
    for op in (GET_PUSH_CONFIG, LIST_PUSH_CONFIGS, DELETE_PUSH_CONFIG)
    if (name := op.legacy_name) is not None
)


def context_id(op: A2aOp, params: object) -> str | None:
    """The contextId a request names: `message.contextId` of a send, `contextId` of
    ListTasks (its filter). Works on JSON-RPC params and REST bodies alike.

    Raises `AmbiguousFieldError` when a field it reads has two spellings in `params`."""
    if not isinstance(params, dict):
        return None
    if op.name in _MESSAGE_OPS:
        message = _message(params)
        return _str(message, "contextId", "context_id") if isinstance(message, dict) else None
    if op.name == LIST_TASKS.name:
        return _str(params, "contextId", "context_id")
    return None


def task_id(op: A2aOp, params: object) -> str | None:
    """The taskId a request names, in either generation's spelling.

    Sends: `message.taskId`. GetTask, CancelTask, SubscribeToTask: `id` (both
    generations). Create/set push config: `taskId`. Get/list/delete push config:
    `taskId` (v1.0) else `id` (v0.3). REST requests carry the task in the path instead.
    Raises `AmbiguousFieldError` when a field it reads has two spellings in `params`.
    """
    if not isinstance(params, dict):
        return None
    name = op.name
    if name in _MESSAGE_OPS:
        message = _message(params)
        return _str(message, "taskId", "task_id") if isinstance(message, dict) else None
    if name in _TASK_ID_AS_ID_OPS:
        found = params.get("id")
        if isinstance(found, str) and found:
            return found
        return _task_from_name(params.get("name"))
    if name == CREATE_PUSH_CONFIG.name:
        return _str(params, "taskId", "task_id")
    if name in _PUSH_OPS:
        found_task = _str(params, "taskId", "task_id")
        if found_task is not None:
            return found_task
        found = params.get("id")
        return found if isinstance(found, str) and found else None
    return None


def check_request(
    op: A2aOp, params: object, method: str | None = None, *, legacy_rest: bool = False
) -> None:
    """Raise `AmbiguousFieldError` unless the upstream reads `params` as `context_id` and
    `task_id` do (see above). `method` is the JSON-RPC method as sent (None for REST);
    `legacy_rest` marks a body of the v0.3 REST binding."""
    context_id(op, params)
    task_id(op, params)
    if not isinstance(params, dict):
        return
    if op.name in _MESSAGE_OPS and "request" in params and not legacy_rest:
        raise AmbiguousFieldError("request is a field of the v0.3 REST binding only")
    if method in _LEGACY_PUSH_METHODS and ("taskId" in params or "task_id" in params):
        raise AmbiguousFieldError("v0.3 names the task id; taskId is not read upstream")


_WRAPPERS: Final = ("task", "message", "statusUpdate", "artifactUpdate")


def _unwrap(result: dict[str, object]) -> tuple[dict[str, object], str | None]:
    """The payload object and its v1.0 wrapper key (None for a bare v0.3/v1.0 object)."""
    for key in _WRAPPERS:
        inner = result.get(key)
        if isinstance(inner, dict):
            return inner, key
    return result, None


def ids_from_result(result: object) -> tuple[str | None, str | None]:
    """(contextId, taskId) revealed by a result or stream event.

    Handles a Task, a Message, a status or artifact update and a push config, bare
    (v0.3 JSON-RPC with `kind`, v1.0 GetTask/CancelTask) or wrapped (v1.0 and v0.3
    REST `{"task": ...}`, `{"message": ...}`, `{"statusUpdate": ...}`, ...).
    """
    if not isinstance(result, dict):
        return None, None
    obj, _ = _unwrap(result)
    ctx = obj.get("contextId")
    ctx_id = ctx if isinstance(ctx, str) and ctx else None
    tid = obj.get("taskId")
    if isinstance(tid, str) and tid:
        return ctx_id, tid
    if "messageId" in obj:
        return ctx_id, None
    if ctx_id is not None or "status" in obj or obj.get("kind") == "task":
        own = obj.get("id")
        return ctx_id, own if isinstance(own, str) and own else None
    return ctx_id, _task_from_name(obj.get("name"))


TERMINAL_STATES: Final = frozenset(
    {
        # v0.3 JSON-RPC
        "completed",
        "failed",
        "canceled",
        "rejected",
        # v1.0 ProtoJSON, and v0.3 REST (its proto spells CANCELLED)
        "TASK_STATE_COMPLETED",
        "TASK_STATE_FAILED",
        "TASK_STATE_CANCELED",
        "TASK_STATE_CANCELLED",
        "TASK_STATE_REJECTED",
    }
)
INTERRUPTED_STATES: Final = frozenset(
    {"input-required", "auth-required", "TASK_STATE_INPUT_REQUIRED", "TASK_STATE_AUTH_REQUIRED"}
)
_STREAM_END_STATES: Final = TERMINAL_STATES | INTERRUPTED_STATES


def is_terminal_event(result: object) -> bool:
    """True when a stream legitimately ends after this event.

    v0.3: `final: true`. Both: a Message, or a Task or status update in a terminal or
    interrupted state (the SDK closes the stream there too; default_request_handler_v2).
    """
    if not isinstance(result, dict):
        return False
    obj, wrapper = _unwrap(result)
    if wrapper == "message" or obj.get("kind") == "message" or "messageId" in obj:
        return True
    if obj.get("final") is True:
        return True
    status = obj.get("status")
    if isinstance(status, dict):
        state = status.get("state")
        return isinstance(state, str) and state in _STREAM_END_STATES
    return False
