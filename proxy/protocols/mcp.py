"""What an MCP message is: method names, the tool of a call, tool errors in results.

Pure functions over already-parsed JSON values; no I/O. The method names are those
the installed `mcp` SDK knows (mcp_types: `_types.py` method literals and
`methods.py` maps), through protocol revisions 2024-11-05 .. 2026-07-28.
"""

from __future__ import annotations

from typing import Final

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
UNCOUNTED_METHODS: Final = frozenset({INITIALIZE, PING})

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
