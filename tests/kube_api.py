"""A stand-in for the Kubernetes API server: the two GET paths the webhook's lookup uses.

A kube-apiserver cannot run here, so this real HTTP(S) server on loopback answers what the
webhook asks (``GET /api/v1/namespaces/{ns}/configmaps|secrets/{name}``) the way the API
server does: the object as JSON, or a ``Status`` body with 404, 401 (a wrong bearer
token) or 403 (a name outside ``allowed_names``, as a ClusterRole with ``resourceNames``
answers). ``fail`` and ``delay`` stand for an API server in trouble.
"""

from __future__ import annotations

import base64
import json
import re
import ssl
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_PATH = re.compile(r"/api/v1/namespaces/([^/]+)/(configmaps|secrets)/([^/?]+)")
KINDS = {"ConfigMap": "configmaps", "Secret": "secrets"}


def status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


@dataclass
class FakeKubeAPI:
    token: str | None = "test-token"
    tls: ssl.SSLContext | None = None
    # (resource, namespace, name) -> the object
    objects: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)
    # resource -> names a ClusterRole with resourceNames would let the webhook get; None: all
    allowed_names: dict[str, set[str]] | None = None
    fail: int | None = None  # answer every request with this status
    delay: float = 0.0  # seconds before answering
    requests: list[tuple[str, str | None]] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None

    def put(self, kind: str, namespace: str, name: str, data: dict[str, str]) -> None:
        """Create or replace a ConfigMap or Secret (a Secret's data given as plain text)."""
        resource = KINDS[kind]
        if kind == "Secret":
            data = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
        self.objects[(resource, namespace, name)] = {
            "apiVersion": "v1",
            "kind": kind,
            "metadata": {"name": name, "namespace": namespace, "resourceVersion": "1"},
            "data": data,
            **({"type": "Opaque"} if kind == "Secret" else {}),
        }

    def delete(self, kind: str, namespace: str, name: str) -> None:
        self.objects.pop((KINDS[kind], namespace, name), None)

    @property
    def url(self) -> str:
        assert self._server is not None
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> FakeKubeAPI:
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _send(self, code: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                auth = self.headers.get("Authorization")
                api.requests.append((self.path, auth))
                if api.delay:
                    time.sleep(api.delay)
                if api.fail is not None:
                    self._send(api.fail, status(api.fail, "InternalError", "failing on purpose"))
                    return
                if api.token is not None and auth != f"Bearer {api.token}":
                    self._send(401, status(401, "Unauthorized", "Unauthorized"))
                    return
                match = _PATH.fullmatch(self.path)
                if match is None:
                    self._send(404, status(404, "NotFound", "the server could not find it"))
                    return
                namespace, resource, name = match.groups()
                if api.allowed_names is not None and name not in api.allowed_names.get(
                    resource, set()
                ):
                    message = (
                        f'{resource} "{name}" is forbidden: User "system:serviceaccount:'
                        f'agent-warden:warden" cannot get resource "{resource}" in API group '
                        f'"" in the namespace "{namespace}"'
                    )
                    self._send(403, status(403, "Forbidden", message))
                    return
                obj = api.objects.get((resource, namespace, name))
                if obj is None:
                    self._send(404, status(404, "NotFound", f'{resource} "{name}" not found'))
                    return
                self._send(200, obj)

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        if self.tls is not None:
            server.socket = self.tls.wrap_socket(server.socket, server_side=True)
        self._server = server
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def paths(self) -> list[str]:
        return [path for path, _ in self.requests]
