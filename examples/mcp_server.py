"""A small MCP server (official `mcp` SDK, streamable HTTP, stateful) for agent-warden demos.

    python examples/mcp_server.py --port 9000

Its tools fit policies/example.yaml: `lookup_customer` is allowed to everyone,
`refund_payment` is budgeted for billing agents, `delete_admin` is denied by default.
"""

from __future__ import annotations

import argparse

import uvicorn
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

CUSTOMERS = {
    "c-1": {"id": "c-1", "name": "Ada Lovelace", "balance": 120.0},
    "c-2": {"id": "c-2", "name": "Alan Turing", "balance": 42.5},
}

server = MCPServer(
    "agent-warden-example", instructions="A toy billing back office.", log_level="WARNING"
)


@server.tool()
def lookup_customer(customer_id: str) -> dict[str, object]:
    """Look up a customer by id (c-1 or c-2)."""
    customer = CUSTOMERS.get(customer_id)
    if customer is None:
        # ToolError's message reaches the caller as a tool result with isError: true.
        raise ToolError(f"no customer {customer_id!r}")
    return customer


@server.tool()
def refund_payment(customer_id: str, amount: float) -> str:
    """Refund an amount to a customer (nothing real happens)."""
    return f"refunded {amount:.2f} to {customer_id}"


@server.tool()
def delete_admin(user: str) -> str:
    """Delete an administrator account (nothing real happens; policies deny it)."""
    return f"deleted admin {user}"


def main() -> None:
    parser = argparse.ArgumentParser(description="Example MCP server for agent-warden.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    args = parser.parse_args()
    # The SDK's DNS-rebinding guard accepts only loopback Host headers when bound to loopback.
    app = server.streamable_http_app(host=args.host)
    print(f"example MCP server listening on http://{args.host}:{args.port}/mcp", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
