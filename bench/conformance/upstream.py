"""MCP upstream for the official conformance suite's server scenarios.

Written from the scenario descriptions of ``@modelcontextprotocol/conformance`` (the
version pinned in ``run.py``), on the installed ``mcp`` SDK's low-level ``Server``, so
every tool schema and result is exactly what the suite asks for. Streamable HTTP at
``/mcp``, stateful sessions, an in-memory event store (SSE resumability, SEP-1699) and
the SDK's DNS-rebinding protection for a loopback host.

    .venv/bin/python bench/conformance/upstream.py --port 8123
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import re
import warnings
from typing import Any

import uvicorn
from mcp import types
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.server.streamable_http import EventCallback, EventMessage, EventStore
from mcp.shared.exceptions import MCPError

warnings.filterwarnings("ignore")  # the SDK flags logging and sampling as deprecated
log = logging.getLogger("conformance-upstream")

# 1x1 PNG and a 1-sample 8 kHz mono WAV, base64.
PNG = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIA"
    "X8jx0gAAAABJRU5ErkJggg=="
)
WAV = "UklGRiYAAABXQVZFZm10IBAAAAABAAEAQB8AAAB9AAACABAAZGF0YQIAAAA="

Ctx = ServerRequestContext[Any, Any]


# --- SSE resumability -------------------------------------------------------------


class MemoryEventStore(EventStore):
    """Keeps every event of every stream; replays one stream after a given event id."""

    def __init__(self) -> None:
        self._events: list[tuple[str, int, types.JSONRPCMessage | None]] = []

    async def store_event(self, stream_id: str, message: types.JSONRPCMessage | None) -> str:
        seq = len(self._events) + 1
        self._events.append((stream_id, seq, message))
        return str(seq)

    async def replay_events_after(
        self, last_event_id: str, send_callback: EventCallback
    ) -> str | None:
        try:
            after = int(last_event_id)
        except ValueError:
            return None
        if not 1 <= after <= len(self._events):
            return None
        stream_id = self._events[after - 1][0]
        for sid, seq, message in self._events[after:]:
            if sid == stream_id and message is not None:
                await send_callback(EventMessage(message, str(seq)))
        return stream_id


# --- tools ----------------------------------------------------------------------

NO_ARGS: dict[str, Any] = {"type": "object", "properties": {}}


def _tool(name: str, description: str, schema: dict[str, Any] | None = None) -> types.Tool:
    return types.Tool(name=name, description=description, input_schema=schema or NO_ARGS)


TOOLS = [
    _tool("test_simple_text", "Returns simple text content"),
    _tool("test_image_content", "Returns image content (base64 PNG)"),
    _tool("test_audio_content", "Returns audio content (base64 WAV)"),
    _tool("test_embedded_resource", "Returns an embedded resource"),
    _tool("test_multiple_content_types", "Returns text, image and resource content"),
    _tool("test_tool_with_logging", "Sends three info log notifications while running"),
    _tool("test_tool_with_progress", "Reports progress 0, 50, 100 of 100"),
    _tool("test_error_handling", "Always fails with isError: true"),
    _tool(
        "test_sampling",
        "Asks the client for an LLM completion (sampling/createMessage)",
        {
            "type": "object",
            "properties": {"prompt": {"type": "string", "description": "Prompt for the LLM"}},
            "required": ["prompt"],
        },
    ),
    _tool(
        "test_elicitation",
        "Asks the client for user input (elicitation/create)",
        {
            "type": "object",
            "properties": {"message": {"type": "string", "description": "Message to show"}},
            "required": ["message"],
        },
    ),
    _tool("test_elicitation_sep1034_defaults", "Elicitation with defaults (SEP-1034)"),
    _tool("test_elicitation_sep1330_enums", "Elicitation with every enum form (SEP-1330)"),
    _tool("test_reconnection", "Closes its SSE stream mid-call, answers after reconnect"),
    _tool(
        "json_schema_2020_12_tool",
        "Tool with JSON Schema 2020-12 features",
        {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "$defs": {
                "address": {
                    "type": "object",
                    "properties": {"street": {"type": "string"}, "city": {"type": "string"}},
                }
            },
            "properties": {"name": {"type": "string"}, "address": {"$ref": "#/$defs/address"}},
            "additionalProperties": False,
        },
    ),
]

SEP1034_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "description": "User name", "default": "John Doe"},
        "age": {"type": "integer", "description": "User age", "default": 30},
        "score": {"type": "number", "description": "User score", "default": 95.5},
        "status": {
            "type": "string",
            "description": "User status",
            "enum": ["active", "inactive", "pending"],
            "default": "active",
        },
        "verified": {"type": "boolean", "description": "Verified", "default": True},
    },
}

SEP1330_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "untitledSingle": {"type": "string", "enum": ["option1", "option2", "option3"]},
        "titledSingle": {
            "type": "string",
            "oneOf": [
                {"const": "value1", "title": "First Option"},
                {"const": "value2", "title": "Second Option"},
                {"const": "value3", "title": "Third Option"},
            ],
        },
        "legacyEnum": {
            "type": "string",
            "enum": ["opt1", "opt2", "opt3"],
            "enumNames": ["Option One", "Option Two", "Option Three"],
        },
        "untitledMulti": {
            "type": "array",
            "items": {"type": "string", "enum": ["option1", "option2", "option3"]},
        },
        "titledMulti": {
            "type": "array",
            "items": {
                "anyOf": [
                    {"const": "value1", "title": "First Choice"},
                    {"const": "value2", "title": "Second Choice"},
                    {"const": "value3", "title": "Third Choice"},
                ]
            },
        },
    },
}


def _text(text: str, *, error: bool = False) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(text=text)], is_error=error)


async def _elicit(ctx: Ctx, message: str, schema: dict[str, Any]) -> types.CallToolResult:
    result = await ctx.session.elicit_form(message, schema, related_request_id=ctx.request_id)
    content = json.dumps(result.content)
    return _text(f"Elicitation completed: action={result.action}, content={content}")


async def list_tools(
    ctx: Ctx, params: types.PaginatedRequestParams | None
) -> types.ListToolsResult:
    return types.ListToolsResult(tools=TOOLS)


async def call_tool(ctx: Ctx, params: types.CallToolRequestParams) -> types.CallToolResult:
    name, args = params.name, params.arguments or {}
    rid = ctx.request_id
    if name == "test_simple_text":
        return _text("This is a simple text response for testing.")
    if name == "test_image_content":
        return types.CallToolResult(content=[types.ImageContent(data=PNG, mime_type="image/png")])
    if name == "test_audio_content":
        return types.CallToolResult(content=[types.AudioContent(data=WAV, mime_type="audio/wav")])
    if name == "test_embedded_resource":
        resource = types.TextResourceContents(
            uri="test://embedded-resource",
            mime_type="text/plain",
            text="This is an embedded resource content.",
        )
        return types.CallToolResult(content=[types.EmbeddedResource(resource=resource)])
    if name == "test_multiple_content_types":
        resource = types.TextResourceContents(
            uri="test://mixed-content-resource",
            mime_type="application/json",
            text=json.dumps({"test": "data", "value": 123}),
        )
        return types.CallToolResult(
            content=[
                types.TextContent(text="Multiple content types test:"),
                types.ImageContent(data=PNG, mime_type="image/png"),
                types.EmbeddedResource(resource=resource),
            ]
        )
    if name == "test_tool_with_logging":
        for i, line in enumerate(
            ("Tool execution started", "Tool processing data", "Tool execution completed")
        ):
            if i:
                await asyncio.sleep(0.05)
            await ctx.session.send_log_message("info", line, related_request_id=rid)
        return _text("Tool with logging executed successfully")
    if name == "test_tool_with_progress":
        for i, value in enumerate((0, 50, 100)):
            if i:
                await asyncio.sleep(0.05)
            await ctx.session.report_progress(value, 100)
        return _text("Tool with progress executed successfully")
    if name == "test_error_handling":
        return _text("This tool intentionally returns an error for testing", error=True)
    if name == "test_sampling":
        reply = await ctx.session.create_message(
            [
                types.SamplingMessage(
                    role="user", content=types.TextContent(text=str(args.get("prompt", "")))
                )
            ],
            max_tokens=100,
            related_request_id=rid,
        )
        content = reply.content
        answer = content.text if isinstance(content, types.TextContent) else str(content)
        return _text(f"LLM response: {answer}")
    if name == "test_elicitation":
        schema = {
            "type": "object",
            "properties": {
                "username": {"type": "string", "description": "User's response"},
                "email": {"type": "string", "description": "User's email address"},
            },
            "required": ["username", "email"],
        }
        return await _elicit(ctx, str(args.get("message", "")), schema)
    if name == "test_elicitation_sep1034_defaults":
        return await _elicit(ctx, "Please review and update the form fields", SEP1034_SCHEMA)
    if name == "test_elicitation_sep1330_enums":
        return await _elicit(ctx, "Please select options from the enum fields", SEP1330_SCHEMA)
    if name == "test_reconnection":
        await asyncio.sleep(0.1)
        if ctx.close_sse_stream is not None:
            await ctx.close_sse_stream()
            await asyncio.sleep(0.2)  # the answer lands in the event store meanwhile
        return _text("Reconnection test completed successfully")
    if name == "json_schema_2020_12_tool":
        return _text(f"Received: {json.dumps(args)}")
    raise MCPError(code=-32602, message=f"Unknown tool: {name}")


# --- resources ------------------------------------------------------------------

RESOURCES = [
    types.Resource(
        uri="test://static-text",
        name="Static text",
        description="A static text resource",
        mime_type="text/plain",
    ),
    types.Resource(
        uri="test://static-binary",
        name="Static binary",
        description="A static binary resource (PNG)",
        mime_type="image/png",
    ),
    types.Resource(
        uri="test://watched-resource",
        name="Watched resource",
        description="A resource that can be subscribed to",
        mime_type="text/plain",
    ),
]
TEMPLATE = re.compile(r"^test://template/([^/]+)/data$")
subscriptions: set[str] = set()


async def list_resources(
    ctx: Ctx, params: types.PaginatedRequestParams | None
) -> types.ListResourcesResult:
    return types.ListResourcesResult(resources=RESOURCES)


async def list_templates(
    ctx: Ctx, params: types.PaginatedRequestParams | None
) -> types.ListResourceTemplatesResult:
    template = types.ResourceTemplate(
        uri_template="test://template/{id}/data",
        name="Template data",
        description="Data for one id",
        mime_type="application/json",
    )
    return types.ListResourceTemplatesResult(resource_templates=[template])


async def read_resource(
    ctx: Ctx, params: types.ReadResourceRequestParams
) -> types.ReadResourceResult:
    uri = str(params.uri)
    contents: types.TextResourceContents | types.BlobResourceContents
    if uri == "test://static-text":
        text = "This is the content of the static text resource."
        contents = types.TextResourceContents(uri=uri, mime_type="text/plain", text=text)
    elif uri == "test://static-binary":
        contents = types.BlobResourceContents(uri=uri, mime_type="image/png", blob=PNG)
    elif uri == "test://watched-resource":
        contents = types.TextResourceContents(uri=uri, mime_type="text/plain", text="Watched")
    elif match := TEMPLATE.match(uri):
        rid = match.group(1)
        text = json.dumps({"id": rid, "templateTest": True, "data": f"Data for ID: {rid}"})
        contents = types.TextResourceContents(uri=uri, mime_type="application/json", text=text)
    else:
        raise MCPError(code=-32002, message=f"Resource not found: {uri}")
    return types.ReadResourceResult(contents=[contents])


async def subscribe(ctx: Ctx, params: types.SubscribeRequestParams) -> types.EmptyResult:
    subscriptions.add(str(params.uri))
    return types.EmptyResult()


async def unsubscribe(ctx: Ctx, params: types.UnsubscribeRequestParams) -> types.EmptyResult:
    subscriptions.discard(str(params.uri))
    return types.EmptyResult()


# --- prompts, completion, logging -----------------------------------------------

PROMPTS = [
    types.Prompt(name="test_simple_prompt", description="A prompt without arguments"),
    types.Prompt(
        name="test_prompt_with_arguments",
        description="A prompt with two arguments",
        arguments=[
            types.PromptArgument(name="arg1", description="First argument", required=True),
            types.PromptArgument(name="arg2", description="Second argument", required=True),
        ],
    ),
    types.Prompt(
        name="test_prompt_with_embedded_resource",
        description="A prompt that embeds a resource",
        arguments=[
            types.PromptArgument(name="resourceUri", description="URI to embed", required=True)
        ],
    ),
    types.Prompt(name="test_prompt_with_image", description="A prompt with an image"),
]


def _user(content: types.ContentBlock) -> types.PromptMessage:
    return types.PromptMessage(role="user", content=content)


async def list_prompts(
    ctx: Ctx, params: types.PaginatedRequestParams | None
) -> types.ListPromptsResult:
    return types.ListPromptsResult(prompts=PROMPTS)


async def get_prompt(ctx: Ctx, params: types.GetPromptRequestParams) -> types.GetPromptResult:
    args = params.arguments or {}
    if params.name == "test_simple_prompt":
        messages = [_user(types.TextContent(text="This is a simple prompt for testing."))]
    elif params.name == "test_prompt_with_arguments":
        text = f"Prompt with arguments: arg1='{args.get('arg1')}', arg2='{args.get('arg2')}'"
        messages = [_user(types.TextContent(text=text))]
    elif params.name == "test_prompt_with_embedded_resource":
        resource = types.TextResourceContents(
            uri=args.get("resourceUri", "test://example-resource"),
            mime_type="text/plain",
            text="Embedded resource content for testing.",
        )
        messages = [
            _user(types.EmbeddedResource(resource=resource)),
            _user(types.TextContent(text="Please process the embedded resource above.")),
        ]
    elif params.name == "test_prompt_with_image":
        messages = [
            _user(types.ImageContent(data=PNG, mime_type="image/png")),
            _user(types.TextContent(text="Please analyze the image above.")),
        ]
    else:
        raise MCPError(code=-32602, message=f"Unknown prompt: {params.name}")
    return types.GetPromptResult(messages=messages)


async def complete(ctx: Ctx, params: types.CompleteRequestParams) -> types.CompleteResult:
    words = ["paris", "park", "party", "test", "testing", "tested"]
    prefix = params.argument.value
    values = [w for w in words if w.startswith(prefix)]
    return types.CompleteResult(
        completion=types.Completion(values=values, total=len(values), has_more=False)
    )


async def set_level(ctx: Ctx, params: types.SetLevelRequestParams) -> types.EmptyResult:
    return types.EmptyResult()


def build_server() -> Server[Any]:
    server: Server[Any] = Server(
        "agent-warden-conformance-upstream",
        version="1.0.0",
        on_list_tools=list_tools,
        on_call_tool=call_tool,
        on_list_resources=list_resources,
        on_list_resource_templates=list_templates,
        on_read_resource=read_resource,
        on_subscribe_resource=subscribe,
        on_unsubscribe_resource=unsubscribe,
        on_list_prompts=list_prompts,
        on_get_prompt=get_prompt,
        on_completion=complete,
    )
    server.add_request_handler("logging/setLevel", types.SetLevelRequestParams, set_level)
    return server


class LegacyVersionUpgrade:
    """ASGI wrapper: ``MCP-Protocol-Version: 2025-03-26`` becomes ``2025-11-25``.

    The suite's SSE scenarios (server-sse-polling, server-sse-multiple-streams) send their
    raw requests with 2025-03-26, and the SDK mints priming events and lets a tool close
    its stream only from 2025-11-25 on; upgraded, the close/reconnect/replay path
    (SEP-1699) really runs. ``--no-upgrade-legacy-version`` turns this off.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope.get("type") == "http":
            headers = [
                (k, b"2025-11-25")
                if k.lower() == b"mcp-protocol-version" and v == b"2025-03-26"
                else (k, v)
                for k, v in scope.get("headers", [])
            ]
            scope = {**scope, "headers": headers}
        await self.app(scope, receive, send)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8123)
    parser.add_argument("--retry-ms", type=int, default=500, help="SSE retry field")
    parser.add_argument("--log-level", default="warning")
    parser.add_argument(
        "--no-upgrade-legacy-version",
        action="store_true",
        help="serve 2025-03-26 requests as they come (no SSE priming, no stream close)",
    )
    opts = parser.parse_args()
    logging.basicConfig(level=opts.log_level.upper())
    app = build_server().streamable_http_app(
        event_store=MemoryEventStore(), retry_interval=opts.retry_ms, host=opts.host
    )
    asgi: Any = app if opts.no_upgrade_legacy_version else LegacyVersionUpgrade(app)
    uvicorn.run(asgi, host=opts.host, port=opts.port, log_level=opts.log_level)


if __name__ == "__main__":
    main()
