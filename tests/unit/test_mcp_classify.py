"""proxy.protocols.mcp: method names, tool names and tool errors, against the mcp SDK's types."""

from __future__ import annotations

import typing
from typing import Any

import mcp_types
import pydantic
import pytest
from mcp.types import (
    CallToolRequest,
    CallToolRequestParams,
    CallToolResult,
    ListToolsRequest,
    TextContent,
)

from proxy.protocols import mcp
from proxy.protocols.mcp import (
    METHODS,
    PROTOCOL_VERSION_HEADER,
    SESSION_HEADER,
    UNCOUNTED_METHODS,
    is_mcp_method,
    result_is_tool_error,
    tool_name,
)


def _wire(model: pydantic.BaseModel) -> Any:
    return model.model_dump(mode="json", by_alias=True, exclude_none=True)


def _sdk_method_names() -> set[str]:
    """Every `method` literal of the SDK's message models (all protocol revisions)."""
    names: set[str] = set()
    for attr in dir(mcp_types):
        cls = getattr(mcp_types, attr)
        if isinstance(cls, type) and issubclass(cls, pydantic.BaseModel):
            field = cls.model_fields.get("method")
            if field is not None and typing.get_origin(field.annotation) is typing.Literal:
                names.update(typing.get_args(field.annotation))
    return names


def test_methods_are_the_sdks() -> None:
    assert _sdk_method_names() == set(METHODS)


def test_method_groups() -> None:
    assert (
        mcp.CLIENT_REQUEST_METHODS | mcp.SERVER_REQUEST_METHODS | mcp.NOTIFICATION_METHODS
        == METHODS
    )
    assert all(m.startswith("notifications/") for m in mcp.NOTIFICATION_METHODS)
    assert not any(m.startswith("notifications/") for m in mcp.CLIENT_REQUEST_METHODS)


def test_headers() -> None:
    assert SESSION_HEADER == "Mcp-Session-Id"
    assert PROTOCOL_VERSION_HEADER == "MCP-Protocol-Version"


def test_uncounted_methods() -> None:
    assert sorted(UNCOUNTED_METHODS) == ["initialize", "ping", "server/discover"]


@pytest.mark.parametrize(
    ("method", "expected"),
    [
        *[(m, True) for m in sorted(METHODS)],
        ("notifications/some/future_thing", True),
        ("", False),
        ("tools/Call", False),
        ("tools/call/", False),
        ("tool/call", False),
        ("notifications", False),
        ("SendMessage", False),
        ("message/send", False),
        ("tasks/resubscribe", False),
    ],
)
def test_is_mcp_method(method: str, expected: bool) -> None:
    assert is_mcp_method(method) is expected


@pytest.mark.parametrize(
    ("method", "params", "expected"),
    [
        (
            "tools/call",
            _wire(
                CallToolRequest(
                    params=CallToolRequestParams(name="refund_payment", arguments={"a": 1})
                )
            )["params"],
            "refund_payment",
        ),
        ("tools/call", _wire(CallToolRequestParams(name="lookup_order")), "lookup_order"),
        ("tools/call", {"name": ""}, ""),
        ("tools/call", {"name": 7}, None),
        ("tools/call", {}, None),
        ("tools/call", None, None),
        ("tools/call", ["lookup"], None),
        ("tools/list", _wire(ListToolsRequest()).get("params", {}), None),
        ("tools/list", {"name": "lookup_order"}, None),
        ("prompts/get", {"name": "greeting"}, None),
    ],
)
def test_tool_name(method: str, params: object, expected: str | None) -> None:
    assert tool_name(method, params) == expected


@pytest.mark.parametrize(
    ("result", "expected"),
    [
        (
            _wire(CallToolResult(content=[TextContent(type="text", text="boom")], is_error=True)),
            True,
        ),
        (_wire(CallToolResult(content=[TextContent(type="text", text="ok")])), False),
        (_wire(CallToolResult(content=[], is_error=False)), False),
        ({"content": [], "isError": "true"}, False),
        ({"content": [], "isError": 1}, False),
        ({"content": [], "is_error": True}, False),
        (None, False),
        ([{"isError": True}], False),
    ],
)
def test_result_is_tool_error(result: object, expected: bool) -> None:
    assert result_is_tool_error(result) is expected
