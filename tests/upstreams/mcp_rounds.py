"""An official-SDK MCP server for multi-round-trip calls and SSE resumption tests.

One dual-era streamable-HTTP app at `/mcp` (2026-07-28 requests are served statelessly,
`initialize` opens a 2025-era session with `Mcp-Session-Id`), with an in-memory event
store and a short `retry` interval, so that on the 2025-11-25 path every SSE answer
starts with a priming event (an `id:` and empty data) and a handler may close its POST
stream for the client to resume with `GET` + `Last-Event-ID`.

Tools:
- `confirm(item)`: MCP 2026-07-28 multi-round-trip. The first round answers
  `{"resultType": "input_required", "inputRequests": {"ok": elicitation/create},
  "requestState": ...}`; a retry carrying the answer (and the state) completes.
- `poll(text)`: closes its own SSE stream right after the priming event, waits, then
  answers; the result reaches the client only through the resuming GET.
- `echo(text)`, `lookup_customer(customer_id)`, `refund_payment(payment_id)`,
  `delete_admin(user)`.

`build_polled_lists_app_for` is a second, low-level server (tools `echo` and
`delete_admin`) whose `tools/list` answer arrives only on the resumed stream.

Every request's headers are recorded (see `serve.HeaderRecorder`).

    python -m tests.upstreams.mcp_rounds --port 8003
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import mcp.types as mt
import uvicorn
from mcp.server import Server
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.streamable_http import EventCallback, EventId, EventMessage, EventStore, StreamId
from mcp.server.transport_security import TransportSecuritySettings
from mcp_types import ElicitRequest, ElicitRequestFormParams, InputRequiredResult, JSONRPCMessage

from tests.upstreams.serve import LOOPBACK, HeaderRecorder

MCP_PATH = "/mcp"
RETRY_MS = 200
POLL_DELAY = 0.3
ELICIT_KEY = "ok"
FIRST_ROUND_STATE = "round-1"
TOOL_NAMES = ("confirm", "poll", "echo", "lookup_customer", "refund_payment", "delete_admin")


def confirmed_text(item: str, yes: object) -> str:
    """What `confirm` answers once the client has answered the elicitation."""
    return f"confirmed {item}: yes={yes}"


def polled_text(text: str) -> str:
    """What `poll` answers after its stream was closed and resumed."""
    return f"polled {text}"


class MemoryEventStore(EventStore):
    """The SDK ships only the ABC: every event kept in order, replayed per stream."""

    def __init__(self) -> None:
        self.events: list[tuple[EventId, StreamId, JSONRPCMessage | None]] = []
        self._lock = asyncio.Lock()

    async def store_event(self, stream_id: StreamId, message: JSONRPCMessage | None) -> EventId:
        async with self._lock:
            event_id = str(len(self.events) + 1)
            self.events.append((event_id, stream_id, message))
            return event_id

    async def replay_events_after(
        self, last_event_id: EventId, send_callback: EventCallback
    ) -> StreamId | None:
        async with self._lock:
            events = list(self.events)
        index = next((i for i, e in enumerate(events) if e[0] == last_event_id), None)
        if index is None:
            return None
        stream_id = events[index][1]
        for event_id, stream, message in events[index + 1 :]:
            if stream == stream_id and message is not None:
                await send_callback(EventMessage(message, event_id))
        return stream_id


def build_server(name: str = "warden-rounds-upstream") -> MCPServer:
    """A fresh MCPServer with the tools above (one per app: its session manager runs once)."""
    server = MCPServer(name, log_level="WARNING")

    @server.tool()
    async def confirm(item: str, ctx: Context) -> mt.CallToolResult | InputRequiredResult:
        """Ask the client to confirm (MCP 2026-07-28 multi-round-trip), then answer."""
        answer = (ctx.input_responses or {}).get(ELICIT_KEY)
        if answer is None:
            schema = {
                "type": "object",
                "properties": {"yes": {"type": "boolean"}},
                "required": ["yes"],
            }
            return InputRequiredResult(
                input_requests={
                    ELICIT_KEY: ElicitRequest(
                        params=ElicitRequestFormParams(
                            message=f"Confirm {item}?", requested_schema=schema
                        )
                    )
                },
                request_state=FIRST_ROUND_STATE,
            )
        content = getattr(answer, "content", None) or {}
        text = confirmed_text(item, content.get("yes") if isinstance(content, dict) else None)
        return mt.CallToolResult(content=[mt.TextContent(type="text", text=text)])

    @server.tool()
    async def poll(text: str, ctx: Context) -> str:
        """Close this request's SSE stream (2025-11-25 polling), then answer on the resumed one."""
        await ctx.close_sse_stream()
        await asyncio.sleep(POLL_DELAY)
        return polled_text(text)

    @server.tool()
    def echo(text: str) -> str:
        """Return the text unchanged."""
        return text

    @server.tool()
    def lookup_customer(customer_id: str) -> str:
        """Look a customer up (fixed fake data)."""
        return f"customer {customer_id}"

    @server.tool()
    def refund_payment(payment_id: str) -> str:
        """Pretend to refund a payment."""
        return f"refunded {payment_id}"

    @server.tool()
    def delete_admin(user: str) -> str:
        """Pretend to delete an administrator (harmless; for policy tests)."""
        return f"deleted admin {user}"

    return server


def build_app(*, own_host: str | None = None) -> HeaderRecorder:
    """The ASGI app at /mcp with the event store, wrapped in a header recorder.

    With `own_host` ("127.0.0.1:8003") the SDK's DNS-rebinding guard accepts only that
    Host, so a proxy that forgot to rewrite Host is refused (421).
    """
    security = None
    if own_host is not None:
        security = TransportSecuritySettings(
            allowed_hosts=[own_host], allowed_origins=[f"http://{own_host}"]
        )
    app = build_server().streamable_http_app(
        streamable_http_path=MCP_PATH,
        event_store=MemoryEventStore(),
        retry_interval=RETRY_MS,
        transport_security=security,
    )
    return HeaderRecorder(app)


def build_app_for(url: str) -> HeaderRecorder:
    """`ThreadedServer` factory: the app for a server bound at `url`."""
    return build_app(own_host=url.removeprefix("http://"))


# --- a server whose tools/list answer comes only on the resumed stream ------------------------

LISTED_TOOLS = ("echo", "delete_admin")


def build_polled_lists_server(name: str = "warden-polled-lists") -> Server[Any]:
    """A low-level server whose `tools/list` closes its SSE stream after the priming event
    and answers on the stream the client resumes (`GET` + `Last-Event-ID`)."""
    tools = [
        mt.Tool(
            name=tool,
            description=f"{tool} (test)",
            input_schema={"type": "object", "properties": {"text": {"type": "string"}}},
        )
        for tool in LISTED_TOOLS
    ]

    async def list_tools(ctx: Any, params: Any) -> mt.ListToolsResult:
        if ctx.close_sse_stream is not None:
            await ctx.close_sse_stream()
            await asyncio.sleep(POLL_DELAY)
        return mt.ListToolsResult(tools=tools)

    async def call_tool(ctx: Any, params: Any) -> mt.CallToolResult:
        text = f"{params.name}: {(params.arguments or {}).get('text', '')}"
        return mt.CallToolResult(content=[mt.TextContent(type="text", text=text)])

    return Server(name, version="1.0", on_list_tools=list_tools, on_call_tool=call_tool)


def build_polled_lists_app_for(url: str) -> HeaderRecorder:
    """`ThreadedServer` factory for `build_polled_lists_server` at `url` (event store on)."""
    own_host = url.removeprefix("http://")
    security = TransportSecuritySettings(
        allowed_hosts=[own_host], allowed_origins=[f"http://{own_host}"]
    )
    app = build_polled_lists_server().streamable_http_app(
        streamable_http_path=MCP_PATH,
        event_store=MemoryEventStore(),
        retry_interval=RETRY_MS,
        transport_security=security,
    )
    return HeaderRecorder(app)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default=LOOPBACK)
    args = parser.parse_args(argv)
    uvicorn.run(build_app(), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
