"""An official-SDK MCP server used as the proxy's upstream in end-to-end tests.

Stateful mode answers with SSE streams and issues `Mcp-Session-Id`; stateless mode
(`stateless_http=True, json_response=True`) answers plain JSON and issues no id.
Every request's headers are recorded (see `serve.HeaderRecorder`).

    python -m tests.upstreams.mcp_server --port 8001 [--stateless] [--any-loopback-host]
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import mcp.types as mt
import uvicorn
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.transport_security import TransportSecuritySettings

from tests.upstreams.serve import LOOPBACK, HeaderRecorder

MCP_PATH = "/mcp"
TOOL_NAMES = (
    "echo",
    "add",
    "fail",
    "slow",
    "count_events",
    "lookup_customer",
    "refund_payment",
    "delete_admin",
)


def build_server(name: str = "warden-test-upstream") -> MCPServer:
    """A fresh MCPServer with the test tools (one per app: its session manager runs once)."""
    server = MCPServer(name, log_level="WARNING")

    @server.tool()
    def echo(text: str) -> str:
        """Return the text unchanged."""
        return text

    @server.tool()
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    @server.tool()
    def fail(reason: str) -> mt.CallToolResult:
        """Answer with a tool result flagged isError (not a JSON-RPC error)."""
        return mt.CallToolResult(
            content=[mt.TextContent(type="text", text=f"failed: {reason}")], is_error=True
        )

    @server.tool()
    async def slow(seconds: float) -> str:
        """Sleep, then answer."""
        await asyncio.sleep(seconds)
        return f"slept {seconds}"

    @server.tool()
    async def count_events(n: int, ctx: Context) -> str:
        """Send n log notifications (and n progress ones if asked) before the result."""
        for i in range(1, n + 1):
            await ctx.report_progress(i, n, f"step {i}")
            # send_notification, not ctx.log, which warns (logging is deprecated in 2026-07-28).
            await ctx.session.send_notification(
                mt.LoggingMessageNotification(
                    params=mt.LoggingMessageNotificationParams(level="info", data=f"event {i}")
                ),
                related_request_id=ctx.request_id,
            )
        return f"sent {n}"

    @server.tool()
    def lookup_customer(customer_id: str) -> dict[str, Any]:
        """Look a customer up (fixed fake data)."""
        return {"id": customer_id, "name": "Ada Lovelace", "tier": "gold"}

    @server.tool()
    def refund_payment(payment_id: str, amount: float) -> str:
        """Pretend to refund a payment."""
        return f"refunded {amount:.2f} on {payment_id}"

    @server.tool()
    def delete_admin(user: str) -> str:
        """Pretend to delete an administrator (harmless; for policy tests)."""
        return f"deleted admin {user}"

    return server


def build_app(*, stateless: bool = False, own_host: str | None = None) -> HeaderRecorder:
    """The streamable-HTTP ASGI app at /mcp, wrapped in a header recorder.

    The SDK's DNS-rebinding guard answers 421 to a foreign Host header. By default it
    allows any loopback Host (127.0.0.1:*, localhost:*, [::1]:*); with `own_host`
    ("127.0.0.1:8001") it allows only that one, so a proxy on loopback that forgot to
    rewrite Host is refused just as it would be on a pod IP.
    """
    security = None
    if own_host is not None:
        security = TransportSecuritySettings(
            allowed_hosts=[own_host], allowed_origins=[f"http://{own_host}"]
        )
    server = build_server()
    app = server.streamable_http_app(
        streamable_http_path=MCP_PATH,
        stateless_http=stateless,
        json_response=stateless,
        transport_security=security,
    )
    return HeaderRecorder(app)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default=LOOPBACK)
    parser.add_argument("--stateless", action="store_true")
    args = parser.parse_args(argv)
    uvicorn.run(
        build_app(stateless=args.stateless), host=args.host, port=args.port, log_level="warning"
    )


if __name__ == "__main__":
    main()
