"""A small MCP server (official `mcp` SDK, streamable HTTP, stateful) for agent-warden demos.

    python examples/mcp_server.py --port 9000

Its tools fit policies/example.yaml: `lookup_customer` is allowed to everyone,
`refund_payment` is budgeted for billing agents, `delete_admin` is denied by default.

It binds its port before anything else and says "listening" only once it serves, so a
port in use is one line on stderr and exit 1, never a server that seems to run. `GET
/healthz` answers `{"server": "agent-warden-example", "pid": <its pid>}`: how `make demo`
knows the server on the port is the one it started.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys

import uvicorn
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from starlette.requests import Request
from starlette.responses import JSONResponse

NAME = "agent-warden-example"

CUSTOMERS = {
    "c-1": {"id": "c-1", "name": "Ada Lovelace", "balance": 120.0},
    "c-2": {"id": "c-2", "name": "Alan Turing", "balance": 42.5},
}

server = MCPServer(NAME, instructions="A toy billing back office.", log_level="WARNING")


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


@server.custom_route("/healthz", methods=["GET"])
async def healthz(_: Request) -> JSONResponse:
    """Who answers on this port: this server, and which process."""
    return JSONResponse({"server": NAME, "pid": os.getpid()})


class _Server(uvicorn.Server):
    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:  # the lifespan ran and the listener accepts
            host, port = self.config.host, self.config.port
            print(f"example MCP server listening on http://{host}:{port}/mcp", flush=True)


def _bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound now; a port in use ends the program with one line."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn would
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        print(
            f"example MCP server: cannot listen on {host}:{port}: {exc.strerror or exc}",
            file=sys.stderr,
        )
        sys.exit(1)
    return sock


def main() -> None:
    parser = argparse.ArgumentParser(description="Example MCP server for agent-warden.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    args = parser.parse_args()
    sock = _bind(args.host, args.port)
    # The SDK's DNS-rebinding guard accepts only loopback Host headers when bound to loopback.
    app = server.streamable_http_app(host=args.host)
    config = uvicorn.Config(
        app, host=args.host, port=args.port, log_level="warning", timeout_graceful_shutdown=2
    )
    _Server(config).run(sockets=[sock])


if __name__ == "__main__":
    main()
