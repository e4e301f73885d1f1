"""A deliberately unhelpful upstream (aiohttp): every way an agent server can fail a proxy."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

# Bytes a re-serializer would change: odd spacing, key order, escapes, non-ASCII.
FAITHFUL_JSONRPC = (
    b'{ "result" : {"text":"caf\\u00e9 \xe2\x98\x95", "n": 1.50, "z":null},'
    b'"id":7,   "jsonrpc":"2.0" }\n'
)
SSE_FIRST = (
    b'event: message\ndata: {"jsonrpc":"2.0","method":"notifications/progress","params":{}}\n\n'
)
SSE_SECOND_TEMPLATE = 'event: message\ndata: {{"jsonrpc":"2.0","id":{id},"result":{{}}}}\n\n'


@dataclass
class Broken:
    """State the tests read or drive: requests seen, and a gate for the SSE test."""

    seen: list[dict[str, Any]] = field(default_factory=list)
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    second_sent: asyncio.Event = field(default_factory=asyncio.Event)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/echo/{tail:.*}", self.echo)
        app.router.add_route("*", "/echo", self.echo)
        app.router.add_post("/html500", self.html500)
        app.router.add_get("/html500", self.html500)
        app.router.add_route("*", "/text503", self.text503)
        app.router.add_route("*", "/msg400", self.msg400)
        app.router.add_route("*", "/garbage", self.garbage)
        app.router.add_route("*", "/notrpc", self.notrpc)
        app.router.add_route("*", "/empty200", self.empty200)
        app.router.add_route("*", "/faithful", self.faithful)
        app.router.add_get("/blob", self.blob)
        app.router.add_route("*", "/sse", self.sse)
        app.router.add_route("*", "/cut", self.cut)
        app.router.add_route("*", "/cut-body", self.cut_body)
        app.router.add_route("*", "/slow", self.slow)
        app.router.add_route("*", "/rpc-error", self.rpc_error)
        app.router.add_route("*", "/aip-error", self.aip_error)
        app.router.add_route("*", "/auth", self.auth)
        app.router.add_route("*", "/gone", self.gone)
        app.router.add_route("*", "/hop", self.hop)
        app.router.add_route("*", "/accepted", self.accepted)
        app.router.add_post("/session-init", self.session_init)
        app.router.add_post("/held", self.held)
        return app

    async def echo(self, request: web.Request) -> web.Response:
        body = await request.read()
        entry = {
            "method": request.method,
            "path_qs": request.raw_path,
            "headers": [[k, v] for k, v in request.headers.items()],
            "body": body.decode("latin-1"),
        }
        self.seen.append(entry)
        doc: dict[str, Any] = {"jsonrpc": "2.0", "id": None, "result": entry}
        try:
            sent = json.loads(body) if body else None
        except ValueError:
            sent = None
        if isinstance(sent, dict):
            doc["id"] = sent.get("id")
        elif isinstance(sent, list):
            batch = [
                {"jsonrpc": "2.0", "id": m.get("id"), "result": entry}
                for m in sent
                if isinstance(m, dict) and "id" in m
            ]
            return web.json_response(batch)
        return web.json_response(doc)

    async def html500(self, request: web.Request) -> web.Response:
        await request.read()
        return web.Response(
            status=500,
            text="<html><body><h1>500</h1>Traceback (most recent call last): x.py</body></html>",
            content_type="text/html",
        )

    async def text503(self, request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=503, text="backend overloaded", content_type="text/plain")

    async def msg400(self, request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"message": "the thing was wrong\nat line 3"}, status=400)

    async def garbage(self, request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=200, body=b"<<not json>>", content_type="application/json")

    async def notrpc(self, request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"hello": "world"})

    async def empty200(self, request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=200)

    async def faithful(self, request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=FAITHFUL_JSONRPC, content_type="application/json")

    async def blob(self, request: web.Request) -> web.StreamResponse:
        size = int(request.query.get("size", "1048576"))
        out = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        out.enable_chunked_encoding()
        await out.prepare(request)
        sent = 0
        while sent < size:
            n = min(65536, size - sent)
            await out.write(bytes((sent + i) % 251 for i in range(n)))
            sent += n
        await out.write_eof()
        return out

    async def sse(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        rid = json.loads(body).get("id", 1) if body else 1
        out = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await out.prepare(request)
        await out.write(SSE_FIRST)
        await self.gate.wait()  # the test opens it once the client holds the first event
        await out.write(SSE_SECOND_TEMPLATE.format(id=json.dumps(rid)).encode())
        self.second_sent.set()
        await out.write_eof()
        return out

    async def cut(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        out = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await out.prepare(request)
        await out.write(SSE_FIRST)
        await out.write(b'event: message\ndata: {"jsonrpc":"2.0","id"')  # half an event
        await out.drain()
        assert request.transport is not None
        request.transport.abort()
        return out

    async def cut_body(self, request: web.Request) -> web.StreamResponse:
        out = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        out.content_length = 1_000_000
        await out.prepare(request)
        await out.write(b"x" * 100_000)
        await out.drain()
        assert request.transport is not None
        request.transport.abort()
        return out

    async def slow(self, request: web.Request) -> web.Response:
        await request.read()
        await asyncio.sleep(float(request.query.get("s", "5")))
        return web.json_response({"jsonrpc": "2.0", "id": 1, "result": {}})

    async def rpc_error(self, request: web.Request) -> web.Response:
        body = json.loads(await request.read())
        doc = {"jsonrpc": "2.0", "id": body["id"], "error": {"code": -32602, "message": "bad"}}
        return web.Response(
            status=400, body=json.dumps(doc).encode(), content_type="application/json"
        )

    async def aip_error(self, request: web.Request) -> web.Response:
        await request.read()
        doc = {"error": {"code": 403, "status": "PERMISSION_DENIED", "message": "nope"}}
        return web.json_response(doc, status=403)

    async def auth(self, request: web.Request) -> web.Response:
        await request.read()
        return web.Response(
            status=401,
            text="Unauthorized",
            headers={"WWW-Authenticate": 'Bearer resource_metadata="http://x/.well-known/r"'},
        )

    async def gone(self, request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=404, text="Not Found")

    async def hop(self, request: web.Request) -> web.Response:
        self.seen.append({"headers": [[k, v] for k, v in request.headers.items()]})
        return web.Response(
            text="ok",
            headers={
                "Connection": "X-Secret-Hop",
                "X-Secret-Hop": "1",
                "Keep-Alive": "timeout=5",
                "X-End-To-End": "kept",
            },
        )

    async def accepted(self, request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=202)

    async def session_init(self, request: web.Request) -> web.Response:
        body = json.loads(await request.read())
        result = {"protocolVersion": "2025-06-18", "capabilities": {}, "serverInfo": {}}
        doc = {"jsonrpc": "2.0", "id": body["id"], "result": result}
        return web.json_response(doc, headers={"Mcp-Session-Id": "up-1"})

    async def held(self, request: web.Request) -> web.Response:
        await request.read()
        await self.gate.wait()  # never opened by the tests that use it
        return web.json_response({"jsonrpc": "2.0", "id": 1, "result": {}})
