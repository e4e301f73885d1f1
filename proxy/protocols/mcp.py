"""What an MCP message is: method names, the tool of a call, tool errors in results.

Pure functions over already-parsed JSON values; no I/O. The method names are those
the installed `mcp` SDK knows (mcp_types: `_types.py` method literals and
`methods.py` maps), through protocol revisions 2024-11-05 .. 2026-07-28.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Sequence
from typing import Any, Final

SESSION_HEADER: Final = "Mcp-Session-Id"
PROTOCOL_VERSION_HEADER: Final = "MCP-Protocol-Version"

INITIALIZE: Final = "initialize"
PING: Final = "ping"
TOOLS_CALL: Final = "tools/call"

# Requests a client sends to a server.
CLIENT_REQUEST_METHODS: Final = frozenset(
    {
        INITIALIZE,
        PING,
        "tools/list",
        TOOLS_CALL,
        "resources/list",
        "resources/templates/list",
        "resources/read",
        "resources/subscribe",
        "resources/unsubscribe",
        "prompts/list",
        "prompts/get",
        "completion/complete",
        "logging/setLevel",
        # 2025-11-25 tasks (either side may be the receiver)
        "tasks/get",
        "tasks/result",
        "tasks/list",
        "tasks/cancel",
        # 2026-07-28
        "server/discover",
        "subscriptions/listen",
    }
)

# Requests a server sends to a client (over the SSE stream, answered by POST).
SERVER_REQUEST_METHODS: Final = frozenset(
    {
        PING,
        "sampling/createMessage",
        "elicitation/create",
        "roots/list",
    }
)

NOTIFICATION_METHODS: Final = frozenset(
    {
        "notifications/initialized",
        "notifications/cancelled",
        "notifications/progress",
        "notifications/message",
        "notifications/roots/list_changed",
        "notifications/resources/list_changed",
        "notifications/resources/updated",
        "notifications/prompts/list_changed",
        "notifications/tools/list_changed",
        "notifications/elicitation/complete",
        "notifications/tasks/status",
        "notifications/subscriptions/acknowledged",
    }
)

METHODS: Final = CLIENT_REQUEST_METHODS | SERVER_REQUEST_METHODS | NOTIFICATION_METHODS

# Contract: a counted request has an id and is neither of these.
UNCOUNTED_METHODS: Final = frozenset({INITIALIZE, PING, "server/discover"})

_NOTIFICATION_PREFIX: Final = "notifications/"


def is_mcp_method(method: str) -> bool:
    """True for a method name of any MCP revision; any `notifications/...` counts."""
    return method in METHODS or method.startswith(_NOTIFICATION_PREFIX)


def tool_name(method: str, params: object) -> str | None:
    """The tool a `tools/call` names (`params.name`), else None."""
    if method != TOOLS_CALL or not isinstance(params, dict):
        return None
    name = params.get("name")
    return name if isinstance(name, str) else None


def result_is_tool_error(result: object) -> bool:
    """True when a `tools/call` result reports a tool failure (`isError: true`)."""
    return isinstance(result, dict) and result.get("isError") is True


# --- MCP 2026-07-28: routing headers, multi-round-trip requests, list results ---------------

METHOD_HEADER: Final = "Mcp-Method"
NAME_HEADER: Final = "Mcp-Name"
TOOLS_LIST: Final = "tools/list"
INPUT_REQUIRED: Final = "input_required"

# Method -> the params key mirrored in Mcp-Name (basic/transports, "Routing headers").
NAME_BEARING: Final = {TOOLS_CALL: "name", "prompts/get": "name", "resources/read": "uri"}

_B64_SENTINEL: Final = re.compile(r"=\?base64\?(?P<payload>[A-Za-z0-9+/=]*)\?=")


def decode_header_value(value: str) -> str | None:
    """An ``Mcp-Name`` value: verbatim, or UTF-8 inside ``=?base64?...?=``; None if corrupt."""
    m = _B64_SENTINEL.fullmatch(value)
    if m is None:
        return value
    payload = m.group("payload")
    try:
        decoded = base64.b64decode(payload, validate=True)
        if base64.b64encode(decoded).decode("ascii") != payload:
            return None  # non-canonical: never equal to a body value by accident
        return decoded.decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None


def header_mismatch(
    method_header: str | None,
    name_header: str | None,
    messages: Sequence[tuple[str | None, object]],
) -> bool:
    """True when ``Mcp-Method`` / ``Mcp-Name`` disagree with the body they travel with.

    ``messages`` are (method, params) of the body's elements. A header that names one
    method cannot describe a batch of several: refused, as is a header without a method.
    """
    if method_header is None and name_header is None:
        return False
    if len(messages) != 1:
        return True
    method, params = messages[0]
    if method_header is not None and method_header.strip() != method:
        return True
    key = NAME_BEARING.get(method or "")
    if key is None:
        return False
    value = params.get(key) if isinstance(params, dict) else None
    if name_header is None:
        return method_header is not None and value is not None
    return value is None or decode_header_value(name_header.strip()) != value


def request_state(params: object) -> str | None:
    """The ``requestState`` a multi-round-trip retry echoes back, if any."""
    if not isinstance(params, dict):
        return None
    state = params.get("requestState")
    return state if isinstance(state, str) and state else None


def returned_state(result: object) -> str | None:
    """The ``requestState`` of an ``input_required`` result, to be redeemed once."""
    if not isinstance(result, dict) or result.get("resultType") != INPUT_REQUIRED:
        return None
    state = result.get("requestState")
    return state if isinstance(state, str) and state else None


def filter_tools(result: object, allows: Callable[[str], bool]) -> dict[str, Any] | None:
    """A ``tools/list`` result without the tools the caller may not call; None when
    nothing is removed. A filtered result is private to the caller (``cacheScope``)."""
    if not isinstance(result, dict):
        return None
    tools = result.get("tools")
    if not isinstance(tools, list):
        return None
    kept = [
        t
        for t in tools
        if isinstance(t, dict) and isinstance(t.get("name"), str) and allows(t["name"])
    ]
    if len(kept) == len(tools):
        return None
    filtered = {**result, "tools": kept}
    if "cacheScope" in result:
        filtered["cacheScope"] = "private"
    return filtered


def meta_traceparent(params: object) -> str | None:
    """``params._meta.traceparent``: MCP's trace context when there is no header."""
    meta = params.get("_meta") if isinstance(params, dict) else None
    value = meta.get("traceparent") if isinstance(meta, dict) else None
    return value if isinstance(value, str) else None


PROTOCOL_VERSION_META: Final = "io.modelcontextprotocol/protocolVersion"


def meta_protocol_version(params: object) -> str | None:
    """MCP 2026-07-28 requests name their revision in ``params._meta`` as well."""
    meta = params.get("_meta") if isinstance(params, dict) else None
    value = meta.get(PROTOCOL_VERSION_META) if isinstance(meta, dict) else None
    return value if isinstance(value, str) else None
