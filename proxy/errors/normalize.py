"""Upstream A2A errors made conformant (docs/spec/errors.md sections 3 to 5). Pure: no aiohttp.

Every function that rewrites returns a normalized copy, or None when the upstream's
document needs no change, so that the caller forwards the original bytes untouched.
Inputs are never mutated; untouched sub-objects are shared with the copy.

Decisions:
- Only A2A codes -32001..-32009 are completed on the JSON-RPC binding (errors.md section 3
  names them alone). Any other code, standard or the agent's own, passes through as is,
  `data` included. The caller applies this to A2A responses only: MCP's -32005 is no
  ContentTypeNotSupported.
- A `data` (JSON-RPC) or `details` (AIP-193) that is a single object becomes a
  one-element array; a primitive (string, number, boolean) is kept as a typed detail
  `{"@type": "type.googleapis.com/google.protobuf.Value", "value": ...}`, the ProtoJSON
  form of a packed Value, so nothing the agent said is lost and the array stays typed.
- The added ErrorInfo goes last, after the agent's own details, with empty metadata:
  ErrorInfo metadata is a string map and an upstream object cannot be assumed to be one.
  A2A SDK clients look for the first ErrorInfo wherever it is.
- An AIP-193 body whose `details` lacks an ErrorInfo is completed rather than passed
  through (errors.md section 1: exactly one ErrorInfo); code, status and message stay.
  More than one ErrorInfo is the agent's own doing and is left alone: the proxy cannot
  tell which one is meant.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Final, TypeGuard

from proxy.errors.render import ERROR_INFO_TYPE, WardenError, error_details
from proxy.errors.table import A2A_BY_JSONRPC_CODE, DEFAULT_DOMAIN, E
from proxy.protocols import a2a
from proxy.protocols.jsonrpc import is_error_object

VALUE_TYPE: Final = "type.googleapis.com/google.protobuf.Value"

# errors.md section 4, last bullet, plus the A2A codes of its table.
_REST_BY_JSONRPC_CODE: Final[Mapping[int, E]] = MappingProxyType(
    {
        -32700: E.PARSE_ERROR,
        -32600: E.INVALID_REQUEST,
        -32602: E.INVALID_PARAMS,
        -32601: E.METHOD_NOT_FOUND,
        -32603: E.INTERNAL_ERROR,
        **A2A_BY_JSONRPC_CODE,
    }
)

# errors.md section 5, the rows that do not depend on the path.
_LEGACY_REST_BY_STATUS: Final[Mapping[int, E]] = MappingProxyType(
    {
        409: E.TASK_NOT_CANCELABLE,
        415: E.CONTENT_TYPE_NOT_SUPPORTED,
        422: E.INVALID_PARAMS,
        502: E.INVALID_AGENT_RESPONSE,
    }
)

_PUSH_CONFIG_OPS: Final = frozenset(
    {a2a.CREATE_PUSH_CONFIG, a2a.GET_PUSH_CONFIG, a2a.LIST_PUSH_CONFIGS, a2a.DELETE_PUSH_CONFIG}
)
# For paths no route matched (say, an HTTP method the route lacks).
_TASK_PATH: Final = re.compile(r"/tasks/[^/]+")
_PUSH_CONFIG_PATH: Final = re.compile(r"/tasks/[^/]+/pushNotificationConfigs(?:/|$)")


def _error_info(reason: E, domain: str) -> dict[str, Any]:
    return error_details(WardenError(reason), domain=domain)[0]


def _has_error_info(details: list[object]) -> bool:
    return any(isinstance(d, dict) and d.get("@type") == ERROR_INFO_TYPE for d in details)


def _completed_details(details: object, reason: E, domain: str) -> list[object] | None:
    """`details` as an array holding an ErrorInfo, or None when it already is one."""
    if isinstance(details, list):
        if _has_error_info(details):
            return None
        items = list(details)
    elif details is None:
        items = []
    elif isinstance(details, dict):
        if details.get("@type") == ERROR_INFO_TYPE:
            return [details]
        items = [details]
    else:
        items = [{"@type": VALUE_TYPE, "value": details}]
    items.append(_error_info(reason, domain))
    return items


# --- JSON-RPC binding ---------------------------------------------------------------


def _normalized_response(item: object) -> dict[str, Any] | None:
    if not isinstance(item, dict):
        return None
    error = item.get("error")
    if not isinstance(error, dict) or not is_error_object(error):
        return None
    reason = A2A_BY_JSONRPC_CODE.get(error["code"])
    if reason is None:
        return None
    # Every A2A row renders its ErrorInfo with a2a-protocol.org, whatever domain is passed.
    data = _completed_details(error.get("data"), reason, DEFAULT_DOMAIN)
    if data is None:
        return None
    return {**item, "error": {**error, "data": data}}


def normalize_jsonrpc_error(doc: object) -> dict[str, Any] | list[Any] | None:
    """A parsed JSON-RPC response (object or batch) with its A2A errors completed.

    For each error whose code is an A2A one (-32001..-32009): `data` becomes an array
    (a single object its one element) holding an ErrorInfo (domain a2a-protocol.org,
    the row's reason, metadata {}) if it held none. Code and message are kept.
    Results, other codes and non-responses are untouched. None: nothing to change.
    Idempotent: a normalized document normalizes to None.
    """
    if isinstance(doc, list):
        changed = False
        out: list[Any] = []
        for item in doc:
            fixed = _normalized_response(item)
            changed = changed or fixed is not None
            out.append(item if fixed is None else fixed)
        return out if changed else None
    return _normalized_response(doc)


# --- HTTP+JSON (REST) binding -------------------------------------------------------


def _is_task_path(match: a2a.RestMatch | None, path: str) -> bool:
    if match is not None:
        return match.task_id is not None
    return _TASK_PATH.search(path) is not None


def _is_push_config_path(match: a2a.RestMatch | None, path: str) -> bool:
    if match is not None:
        return match.op in _PUSH_CONFIG_OPS
    return _PUSH_CONFIG_PATH.search(path) is not None


def legacy_rest_reason(status: int, match: a2a.RestMatch | None, path: str) -> E | None:
    """The A2A reason of a legacy REST error status (errors.md section 5), or None.

    404 on a task path: TASK_NOT_FOUND, elsewhere METHOD_NOT_FOUND (a v0.3 agent has no
    such route, e.g. `GET /v1/tasks`); 409 TASK_NOT_CANCELABLE; 415
    CONTENT_TYPE_NOT_SUPPORTED; 422 INVALID_PARAMS; 501 PUSH_NOTIFICATION_NOT_SUPPORTED on
    a push-config path, else UNSUPPORTED_OPERATION; 502 INVALID_AGENT_RESPONSE.
    `match` is `classify_rest` of the request; when it is None the `path` (no query)
    decides what a task or push-config path is. Other statuses: None (UPSTREAM_ERROR).
    """
    if status == 404:
        return E.TASK_NOT_FOUND if _is_task_path(match, path) else E.METHOD_NOT_FOUND
    if status == 501:
        if _is_push_config_path(match, path):
            return E.PUSH_NOTIFICATION_NOT_SUPPORTED
        return E.UNSUPPORTED_OPERATION
    return _LEGACY_REST_BY_STATUS.get(status)


def rest_reason_for_jsonrpc_code(code: int) -> E | None:
    """The row for a JSON-RPC error code on the REST binding, or None for other codes.

    The A2A codes -32001..-32009 (errors.md section 4) and the standard ones (its last
    bullet): -32700 and -32600 INVALID_REQUEST, -32602 INVALID_PARAMS (400
    INVALID_ARGUMENT), -32601 METHOD_NOT_FOUND (404), -32603 INTERNAL_ERROR (500).
    """
    return _REST_BY_JSONRPC_CODE.get(code)


def is_aip193(doc: object) -> TypeGuard[dict[str, Any]]:
    """An AIP-193 error body: `{"error": {"code": int, "message": str, "status": str}}`.

    `details`, if present, must be null, an object or an array: anything else is not
    an envelope `complete_aip193` can repair.
    """
    if not isinstance(doc, dict):
        return False
    error = doc.get("error")
    if not isinstance(error, dict):
        return False
    code = error.get("code")
    details = error.get("details")
    return (
        isinstance(code, int)
        and not isinstance(code, bool)
        and isinstance(error.get("message"), str)
        and isinstance(error.get("status"), str)
        and (details is None or isinstance(details, dict | list))
    )


def complete_aip193(
    doc: object, reason: E, *, domain: str = DEFAULT_DOMAIN
) -> dict[str, Any] | None:
    """An AIP-193 body given the ErrorInfo it lacks, or None when complete (or no AIP-193).

    `reason` is the caller's pick for this status, usually
    `legacy_rest_reason(status, match, path) or E.UPSTREAM_ERROR`; an A2A row gets
    domain a2a-protocol.org, any other `domain` (the policy's errors.domain). A single
    object `details` becomes a one-element array. Code, status and message are kept.
    """
    if not is_aip193(doc):
        return None
    error = doc["error"]
    details = _completed_details(error.get("details"), reason, domain)
    if details is None:
        return None
    return {**doc, "error": {**error, "details": details}}
