"""Run ASGI upstreams on loopback for the tests: in a thread, or as a subprocess."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import uvicorn

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Any]
Send = Callable[[Message], Any]
ASGIApp = Callable[[Scope, Receive, Send], Any]

LOOPBACK = "127.0.0.1"
DEBUG_HEADERS_PATH = "/_debug/headers"
REPO_ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A TCP port free on loopback right now (the OS may hand it out again later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True, slots=True)
class SeenRequest:
    """One request as the upstream received it, and the headers it answered with."""

    method: str
    path: str
    headers: dict[str, str]
    response_status: int | None
    response_headers: dict[str, str]

    def as_json(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "path": self.path,
            "headers": self.headers,
            "response_status": self.response_status,
            "response_headers": self.response_headers,
        }


def _decode_headers(raw: Any) -> dict[str, str]:
    # Repeated headers are joined as RFC 9110 allows for list-valued fields.
    out: dict[str, str] = {}
    for name, value in raw:
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        out[key] = f"{out[key]}, {text}" if key in out else text
    return out


@dataclass(slots=True)
class HeaderRecorder:
    """ASGI middleware keeping every HTTP request's headers (and its response headers).

    In-process tests read `.seen`; a subprocess upstream serves the same list as JSON
    at `GET /_debug/headers` (`DELETE` clears it). The debug path itself is not recorded.
    """

    app: ASGIApp
    seen: list[SeenRequest] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["path"] == DEBUG_HEADERS_PATH:
            await self._serve_debug(scope, send)
            return
        request_headers = _decode_headers(scope["headers"])
        status: int | None = None
        response_headers: dict[str, str] = {}
        recorded = False

        def record() -> None:
            nonlocal recorded
            if recorded:
                return
            recorded = True
            entry = SeenRequest(
                scope["method"], scope["path"], request_headers, status, response_headers
            )
            with self._lock:
                self.seen.append(entry)

        async def send_wrapper(message: Message) -> None:
            nonlocal status, response_headers
            if message["type"] == "http.response.start":
                status = int(message["status"])
                response_headers = _decode_headers(message.get("headers", []))
                # Record at the start of the answer: a stream may stay open for long.
                record()
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            record()

    def requests(self, method: str | None = None) -> list[SeenRequest]:
        with self._lock:
            return [r for r in self.seen if method is None or r.method == method]

    def clear(self) -> None:
        with self._lock:
            self.seen.clear()

    async def _serve_debug(self, scope: Scope, send: Send) -> None:
        if scope["method"] == "DELETE":
            self.clear()
            body = b"[]"
        else:
            with self._lock:
                body = json.dumps([r.as_json() for r in self.seen]).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


class ThreadedServer:
    """A uvicorn server on 127.0.0.1 in a daemon thread with its own event loop.

    `make_app` gets the server's base URL (the socket is bound first), for apps that
    advertise their own address, such as an A2A agent card.
    """

    def __init__(self, make_app: Callable[[str], ASGIApp], *, port: int = 0) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((LOOPBACK, port))
        self.port = int(self._sock.getsockname()[1])
        self.url = f"http://{LOOPBACK}:{self.port}"
        self.app = make_app(self.url)
        config = uvicorn.Config(
            self.app,
            log_level="warning",
            lifespan="on",
            # Open SSE streams must not hold the test session's teardown hostage.
            timeout_graceful_shutdown=2,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True
        )

    def start(self, timeout: float = 15.0) -> ThreadedServer:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError(f"upstream on port {self.port} died while starting")
            if time.monotonic() > deadline:
                raise TimeoutError(f"upstream on port {self.port} did not start in {timeout}s")
            time.sleep(0.01)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._server.should_exit = True
        self._thread.join(timeout)
        self._sock.close()

    def __enter__(self) -> ThreadedServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def http_status(url: str) -> int | None:
    """The status of `GET url`, or None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as err:
        return int(err.code)
    except OSError:
        return None


def wait_http(url: str, timeout: float = 15.0, proc: subprocess.Popen[bytes] | None = None) -> int:
    """Poll `url` until it answers with any HTTP status; return that status."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        status = http_status(url)
        if status is not None:
            return status
        time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer within {timeout}s")


class SubprocessServer:
    """`python -m <module> --port N [args]` from the repository root, until it answers."""

    def __init__(self, module: str, *args: str, probe_path: str = DEBUG_HEADERS_PATH) -> None:
        self.port = free_port()
        self.url = f"http://{LOOPBACK}:{self.port}"
        self._argv = [sys.executable, "-m", module, "--port", str(self.port), *args]
        self._probe_path = probe_path
        self.proc: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None

    def start(self, timeout: float = 15.0) -> SubprocessServer:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        # A file, not a pipe: nobody reads a pipe while the server runs, and a full one blocks it.
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 (closed in __exit__)
        self.proc = subprocess.Popen(
            self._argv, cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=self._stderr
        )
        try:
            wait_http(self.url + self._probe_path, timeout, self.proc)
        except Exception as err:
            self.stop()
            raise RuntimeError(f"{self._argv} did not start:\n{self.stderr()}") from err
        return self

    def stderr(self) -> str:
        if self._stderr is None or self._stderr.closed:
            return ""
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")

    def stop(self, timeout: float = 10.0) -> int | None:
        """Terminate (SIGTERM, then SIGKILL after `timeout`); return the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def __enter__(self) -> SubprocessServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        if self._stderr is not None:
            self._stderr.close()
