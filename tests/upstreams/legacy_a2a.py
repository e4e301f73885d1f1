"""A hand-written legacy A2A agent (a2a-sdk 0.3 style, aiohttp) whose errors need normalizing.

JSON-RPC at `/` with the v0.3 method names and shapes (`kind`, kebab-case states, `final`):
- `message/send`: a completed Task echoing the text (`echo: <text>`).
- `message/stream`: SSE (CRLF line ends, as sse-starlette writes them): the Task
  (submitted), a status-update (working), an artifact-update, a status-update
  (completed, `final: true`).
- `tasks/get`: the task; an unknown id gets -32001 without `data`.
- `tasks/cancel`: always -32002 (every task here is already terminal), `data` a single
  object, as some 0.3 agents send it.
- `test/cut`: the first two stream events, then the connection is aborted.
- `test/garbage`: HTTP 200 with a body that is not JSON.
- other methods -32601; a body that is not JSON -32700; bad params -32602.

REST under `/v1`, errors shaped `{"message": ...}` as a2a-sdk 0.3 answered them:
- `POST /v1/message:send`: `{"task": ...}` in v0.3 ProtoJSON; 415 unless the content
  type is JSON; 422 unless the body is `{"message": {"content": [...]}}`.
- `GET /v1/tasks/{id}`: the task, 404 for an unknown id; the id `bad-gateway` gets 502.
- `POST /v1/tasks/{id}:cancel`: 409.
- `/v1/tasks/{id}/pushNotificationConfigs[/{configId}]`: 501.
- any other path under `/v1` (`GET /v1/tasks` included: 0.3 had no ListTasks): 404.

The v0.3 agent card is at the legacy `/.well-known/agent.json`; its `url` and
`additionalInterfaces` point at `base_url`, the agent's own address.

    python -m tests.upstreams.legacy_a2a --port 8003 [--public-url http://host:port]
"""

from __future__ import annotations

import argparse
import json
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from aiohttp import web

from tests.upstreams.serve import LOOPBACK

CARD_PATH: Final = "/.well-known/agent.json"
BAD_GATEWAY_TASK: Final = "bad-gateway"
CUT_METHOD: Final = "test/cut"
GARBAGE_METHOD: Final = "test/garbage"
GARBAGE_BODY: Final = b"this is not json"

# a2a-sdk 0.3 error messages (a2a/types.py defaults).
TASK_NOT_FOUND: Final = (-32001, "Task not found")
TASK_NOT_CANCELABLE: Final = (-32002, "Task cannot be canceled")
METHOD_NOT_FOUND: Final = (-32601, "Method not found")
INVALID_PARAMS: Final = (-32602, "Invalid parameters")
PARSE_ERROR: Final = (-32700, "Invalid JSON payload")
INVALID_REQUEST: Final = (-32600, "Request payload validation error")

_JSON_TYPES: Final = frozenset({"application/json", "application/a2a+json"})
_SSE_HEADERS: Final = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}


def echo_text(text: str) -> str:
    return f"echo: {text}"


def _now() -> str:
    return datetime.now(UTC).isoformat()


@dataclass(frozen=True, slots=True)
class LegacyTask:
    """What the agent remembers of a task; rendered in either wire shape on demand."""

    id: str
    context_id: str
    message_id: str
    text: str

    def jsonrpc(self, state: str = "completed", *, artifacts: bool = True) -> dict[str, Any]:
        """v0.3 JSON-RPC (pydantic model_dump by alias): `kind`, kebab-case state."""
        task: dict[str, Any] = {
            "kind": "task",
            "id": self.id,
            "contextId": self.context_id,
            "status": {"state": state, "timestamp": _now()},
            "history": [
                {
                    "kind": "message",
                    "messageId": self.message_id,
                    "role": "user",
                    "parts": [{"kind": "text", "text": self.text}],
                    "contextId": self.context_id,
                    "taskId": self.id,
                }
            ],
        }
        if artifacts:
            task["artifacts"] = [self.artifact()]
        return task

    def artifact(self) -> dict[str, Any]:
        return {
            "artifactId": f"{self.id}-echo",
            "name": "echo",
            "parts": [{"kind": "text", "text": echo_text(self.text)}],
        }

    def rest(self) -> dict[str, Any]:
        """v0.3 ProtoJSON (the REST binding): `TASK_STATE_*`, `ROLE_*`, parts as `content`."""
        return {
            "id": self.id,
            "contextId": self.context_id,
            "status": {"state": "TASK_STATE_COMPLETED", "timestamp": _now()},
            "artifacts": [
                {
                    "artifactId": f"{self.id}-echo",
                    "name": "echo",
                    "parts": [{"text": echo_text(self.text)}],
                }
            ],
            "history": [
                {
                    "messageId": self.message_id,
                    "contextId": self.context_id,
                    "taskId": self.id,
                    "role": "ROLE_USER",
                    "content": [{"text": self.text}],
                }
            ],
        }


def _texts(parts: object, key: str = "text") -> str | None:
    if not isinstance(parts, list):
        return None
    return " ".join(p[key] for p in parts if isinstance(p, dict) and isinstance(p.get(key), str))


def _rpc_result(rid: object, result: object) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": rid, "result": result}


def _rpc_error(rid: object, error: tuple[int, str], data: object = None) -> web.Response:
    body: dict[str, Any] = {"code": error[0], "message": error[1]}
    if data is not None:
        body["data"] = data
    return web.json_response({"jsonrpc": "2.0", "id": rid, "error": body})


def _sse(doc: object) -> bytes:
    return b"data: " + json.dumps(doc).encode() + b"\r\n\r\n"


def _rest_error(status: int, message: str) -> web.Response:
    return web.json_response({"message": message}, status=status)


@dataclass
class LegacyAgent:
    """The agent's state: its own address (for the card) and the tasks it created."""

    base_url: str
    tasks: dict[str, LegacyTask] = field(default_factory=dict)

    def app(self) -> web.Application:
        app = web.Application()
        app[AGENT] = self
        app.router.add_post("/", self.jsonrpc)
        app.router.add_get(CARD_PATH, self.card)
        app.router.add_post("/v1/message:send", self.rest_send)
        app.router.add_post("/v1/tasks/{id:[^/:]+}:cancel", self.rest_cancel)
        app.router.add_route("*", "/v1/tasks/{id:[^/]+}/pushNotificationConfigs", self.rest_push)
        app.router.add_route(
            "*", "/v1/tasks/{id:[^/]+}/pushNotificationConfigs/{config:[^/]+}", self.rest_push
        )
        app.router.add_get("/v1/tasks/{id:[^/:]+}", self.rest_get_task)
        app.router.add_route("*", "/v1/{tail:.*}", self.rest_not_found)
        return app

    def card_doc(self) -> dict[str, Any]:
        """The v0.3 agent card (a2a/compat/v0_3/types.py AgentCard, by alias)."""
        base = self.base_url.rstrip("/")
        return {
            "protocolVersion": "0.3.0",
            "name": "legacy echo agent",
            "description": "Echoes text back; speaks A2A 0.3 only.",
            "url": f"{base}/",
            "preferredTransport": "JSONRPC",
            "additionalInterfaces": [
                {"url": f"{base}/", "transport": "JSONRPC"},
                {"url": base, "transport": "HTTP+JSON"},
            ],
            "provider": {"organization": "agent-warden tests", "url": "https://example.com/legacy"},
            "version": "0.3.0",
            "capabilities": {"streaming": True, "pushNotifications": False},
            "defaultInputModes": ["text/plain"],
            "defaultOutputModes": ["text/plain"],
            "skills": [
                {"id": "echo", "name": "echo", "description": "Echoes text.", "tags": ["echo"]}
            ],
        }

    def _new_task(self, text: str, context_id: object) -> LegacyTask:
        ctx = context_id if isinstance(context_id, str) and context_id else str(uuid.uuid4())
        task = LegacyTask(str(uuid.uuid4()), ctx, str(uuid.uuid4()), text)
        self.tasks[task.id] = task
        return task

    # --- JSON-RPC ---------------------------------------------------------------------

    async def jsonrpc(self, request: web.Request) -> web.StreamResponse:
        try:
            doc = json.loads(await request.read())
        except ValueError:
            return _rpc_error(None, PARSE_ERROR)
        if not isinstance(doc, dict) or not isinstance(doc.get("method"), str):
            return _rpc_error(None, INVALID_REQUEST)
        rid, method, params = doc.get("id"), doc["method"], doc.get("params")
        if method == "message/send":
            return self._send(rid, params)
        if method in ("message/stream", CUT_METHOD):
            return await self._stream(request, rid, params, cut=method == CUT_METHOD)
        if method == "tasks/get":
            return self._get(rid, params)
        if method == "tasks/cancel":
            task = params.get("id") if isinstance(params, dict) else None
            return _rpc_error(rid, TASK_NOT_CANCELABLE, {"taskId": task, "state": "completed"})
        if method == GARBAGE_METHOD:
            return web.Response(body=GARBAGE_BODY, content_type="application/json")
        return _rpc_error(rid, METHOD_NOT_FOUND)

    def _message_text(self, params: object) -> tuple[str, object] | None:
        message = params.get("message") if isinstance(params, dict) else None
        if not isinstance(message, dict):
            return None
        text = _texts(message.get("parts"))
        return None if text is None else (text, message.get("contextId"))

    def _send(self, rid: object, params: object) -> web.Response:
        found = self._message_text(params)
        if found is None:
            return _rpc_error(rid, INVALID_PARAMS)
        task = self._new_task(*found)
        return web.json_response(_rpc_result(rid, task.jsonrpc()))

    def _get(self, rid: object, params: object) -> web.Response:
        task_id = params.get("id") if isinstance(params, dict) else None
        task = self.tasks.get(task_id) if isinstance(task_id, str) else None
        if task is None:
            return _rpc_error(rid, TASK_NOT_FOUND)
        return web.json_response(_rpc_result(rid, task.jsonrpc()))

    async def _stream(
        self, request: web.Request, rid: object, params: object, *, cut: bool
    ) -> web.StreamResponse:
        found = self._message_text(params)
        if found is None:
            return _rpc_error(rid, INVALID_PARAMS)
        task = self._new_task(*found)
        ids = {"taskId": task.id, "contextId": task.context_id}
        events: list[dict[str, Any]] = [
            task.jsonrpc("submitted", artifacts=False),
            {"kind": "status-update", **ids, "status": {"state": "working"}, "final": False},
            {
                "kind": "artifact-update",
                **ids,
                "artifact": task.artifact(),
                "append": False,
                "lastChunk": True,
            },
            {
                "kind": "status-update",
                **ids,
                "status": {"state": "completed", "timestamp": _now()},
                "final": True,
            },
        ]
        out = web.StreamResponse(headers=_SSE_HEADERS)
        await out.prepare(request)
        for event in events[:2] if cut else events:
            await out.write(_sse(_rpc_result(rid, event)))
        if cut:
            await out.drain()
            assert request.transport is not None
            request.transport.abort()
            return out
        await out.write_eof()
        return out

    # --- REST -------------------------------------------------------------------------

    async def rest_send(self, request: web.Request) -> web.Response:
        raw = await request.read()
        if request.content_type not in _JSON_TYPES:
            return _rest_error(415, "Unsupported content type")
        try:
            doc = json.loads(raw)
        except ValueError:
            return _rest_error(422, "Invalid request body")
        message = doc.get("message") if isinstance(doc, dict) else None
        if not isinstance(message, dict) or (text := _texts(message.get("content"))) is None:
            return _rest_error(422, "Invalid request body")
        task = self._new_task(text, message.get("contextId"))
        return web.json_response({"task": task.rest()})

    async def rest_get_task(self, request: web.Request) -> web.Response:
        task_id = request.match_info["id"]
        if task_id == BAD_GATEWAY_TASK:
            return _rest_error(502, "Bad gateway")
        task = self.tasks.get(task_id)
        if task is None:
            return _rest_error(404, "Task not found")
        return web.json_response(task.rest())

    async def rest_cancel(self, request: web.Request) -> web.Response:
        await request.read()
        return _rest_error(409, "Task cannot be canceled")

    async def rest_push(self, request: web.Request) -> web.Response:
        await request.read()
        return _rest_error(501, "Push notifications are not supported")

    async def rest_not_found(self, request: web.Request) -> web.Response:
        await request.read()
        return _rest_error(404, "Not Found")

    # --- card -------------------------------------------------------------------------

    async def card(self, request: web.Request) -> web.Response:
        return web.json_response(self.card_doc())


AGENT: Final = web.AppKey("legacy_agent", LegacyAgent)


def build_app(base_url: str) -> web.Application:
    """The legacy agent; its card advertises `base_url` (normally its own address)."""
    return LegacyAgent(base_url).app()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default=LOOPBACK)
    parser.add_argument("--public-url", help="base URL the card advertises (default: own)")
    args = parser.parse_args(argv)
    public_url = args.public_url or f"http://{args.host}:{args.port}"
    web.run_app(build_app(public_url), host=args.host, port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
