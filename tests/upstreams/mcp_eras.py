"""Official-SDK MCP upstreams for every protocol era, each recording what it received.

- ``streamable_app()``: the SDK's dual-era streamable HTTP endpoint at ``/mcp`` (MCP
  2026-07-28 stateless requests and 2025-era ``Mcp-Session-Id`` sessions, SSE answers).
  Its ``tools/list`` results carry the cache hint ``public`` so that a filtered answer
  visibly turns ``private``.
- ``sse_app()``: the SDK's MCP 2024-11-05 HTTP+SSE server: ``GET /sse`` names the message
  endpoint ``/messages/?session_id=...`` in its ``endpoint`` event.
- ``legacy_only_app()``: the streamable app answering any 2026-07-28 request with a bare
  400, like a server of the 2025 era only.
- ``status_app()``: a tiny non-MCP upstream answering every POST with a plain-text
  error (status from the ``x-want-status`` header, 400 by default), or with a JSON-RPC
  error body when ``x-want-jsonrpc`` is set.

Every app is wrapped in ``WireRecorder``: method, path, query, headers and body of each
request, and the status it was answered with.

    python -m tests.upstreams.mcp_eras --port 8001 [--kind streamable|sse|legacy-only|status]
"""

from __future__ import annotations

import argparse
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from mcp.server.caching import CacheHint
from mcp.server.mcpserver import MCPServer

from tests.upstreams.serve import LOOPBACK, ASGIApp, Message, Receive, Scope, Send

MCP_PATH = "/mcp"
SSE_PATH = "/sse"
MESSAGE_PATH = "/messages/"
SERVER_NAME = "warden-eras-upstream"
TOOL_NAMES = ("echo", "add", "lookup_customer", "refund_payment", "delete_admin")
PROMPT_NAMES = ("greeting",)


@dataclass(frozen=True, slots=True)
class Seen:
    """One request as the upstream received it."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    status: int | None

    def json(self) -> Any:
        """The parsed body (None when it is empty or not JSON)."""
        try:
            return json.loads(self.body) if self.body else None
        except ValueError:
            return None

    @property
    def rpc_method(self) -> str | None:
        doc = self.json()
        return doc.get("method") if isinstance(doc, dict) else None


def _headers(raw: Any) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in raw:
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        out[key] = f"{out[key]}, {text}" if key in out else text
    return out


@dataclass(slots=True)
class WireRecorder:
    """ASGI middleware keeping every HTTP request (headers and body) and its status.

    A request is recorded when its answer starts (an SSE stream may stay open for long),
    with the body read so far: the SDK reads a POST body whole before it answers.
    """

    app: ASGIApp
    seen: list[Seen] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = _headers(scope["headers"])
        chunks: list[bytes] = []
        recorded = False

        def record(status: int | None) -> None:
            nonlocal recorded
            if recorded:
                return
            recorded = True
            entry = Seen(
                scope["method"],
                scope["path"],
                scope.get("query_string", b"").decode("latin-1"),
                headers,
                b"".join(chunks),
                status,
            )
            with self._lock:
                self.seen.append(entry)

        async def receive_wrapper() -> Message:
            message: Message = await receive()
            if message["type"] == "http.request":
                chunks.append(message.get("body", b""))
            return message

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                record(int(message["status"]))
            await send(message)

        try:
            await self.app(scope, receive_wrapper, send_wrapper)
        finally:
            record(None)

    def requests(self, where: Callable[[Seen], bool] | None = None) -> list[Seen]:
        with self._lock:
            return [r for r in self.seen if where is None or where(r)]

    def marked(self, header: str, value: str) -> list[Seen]:
        """The requests carrying ``header: value`` (a test's own marker)."""
        return self.requests(lambda r: r.headers.get(header) == value)


def build_server(name: str = SERVER_NAME) -> MCPServer:
    """A fresh MCPServer with the test tools and one prompt."""
    server = MCPServer(
        name,
        log_level="WARNING",
        cache_hints={"tools/list": CacheHint(ttl_ms=60_000, scope="public")},
    )

    @server.tool()
    def echo(text: str) -> str:
        """Return the text unchanged."""
        return text

    @server.tool()
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    @server.tool()
    def lookup_customer(customer_id: str) -> dict[str, Any]:
        """Look a customer up (fixed fake data)."""
        return {"id": customer_id, "name": "Ada Lovelace"}

    @server.tool()
    def refund_payment(payment_id: str, amount: float) -> str:
        """Pretend to refund a payment."""
        return f"refunded {amount:.2f} on {payment_id}"

    @server.tool()
    def delete_admin(user: str) -> str:
        """Pretend to delete an administrator (harmless; for policy tests)."""
        return f"deleted admin {user}"

    @server.prompt()
    def greeting(who: str) -> str:
        """A greeting prompt (for method rules on prompts/*)."""
        return f"Hello, {who}!"

    return server


def streamable_app() -> WireRecorder:
    """Dual-era streamable HTTP at /mcp: 2026-07-28 stateless and 2025-era sessions."""
    return WireRecorder(build_server().streamable_http_app(streamable_http_path=MCP_PATH))


def sse_app() -> WireRecorder:
    """MCP 2024-11-05 HTTP+SSE: GET /sse, POST /messages/?session_id=<hex>."""
    return WireRecorder(build_server().sse_app(sse_path=SSE_PATH, message_path=MESSAGE_PATH))


async def _status_app(scope: Scope, receive: Receive, send: Send) -> None:
    """Every request: the status ``x-want-status`` asks for (400), plain text or JSON-RPC."""
    if scope["type"] != "http":
        return
    while True:  # drain the body
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body"):
            break
    headers = _headers(scope["headers"])
    status = int(headers.get("x-want-status", "400"))
    if "x-want-jsonrpc" in headers:
        body = json.dumps(
            {"jsonrpc": "2.0", "id": 1, "error": {"code": -32602, "message": "upstream says no"}}
        ).encode()
        content_type = b"application/json"
    else:
        body = b"upstream trace: /srv/app.py line 12 secret=hunter2"
        content_type = b"text/plain; charset=utf-8"
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def status_app() -> WireRecorder:
    return WireRecorder(_status_app)


def _legacy_only(app: ASGIApp) -> ASGIApp:
    """A server of the 2025 era only: a 2026-07-28 request gets a bare 400 (no JSON-RPC
    body), as a pre-2026 server answers what it does not understand."""

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            version = dict(scope["headers"]).get(b"mcp-protocol-version", b"")
            if version.startswith(b"2026"):
                while True:  # read the request (the recorder keeps it)
                    message = await receive()
                    if message["type"] != "http.request" or not message.get("more_body"):
                        break
                body = b"Bad Request"
                await send(
                    {
                        "type": "http.response.start",
                        "status": 400,
                        "headers": [
                            (b"content-type", b"text/plain"),
                            (b"content-length", str(len(body)).encode()),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": body})
                return
        await app(scope, receive, send)

    return wrapped


def legacy_only_app() -> WireRecorder:
    """Streamable HTTP at /mcp that speaks only the 2025 era (sessions, initialize)."""
    app = build_server().streamable_http_app(streamable_http_path=MCP_PATH)
    return WireRecorder(_legacy_only(app))


APPS: dict[str, Callable[[], WireRecorder]] = {
    "streamable": streamable_app,
    "sse": sse_app,
    "status": status_app,
    "legacy-only": legacy_only_app,
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--kind", choices=sorted(APPS), default="streamable")
    args = parser.parse_args(argv)
    uvicorn.run(APPS[args.kind](), host=LOOPBACK, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
