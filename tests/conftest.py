"""Shared fixtures: official-SDK upstreams on loopback and the proxy as a subprocess."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pytest

from tests.redis_server import RedisServer, RedisServerMissing
from tests.upstreams import a2a_server, mcp_server
from tests.upstreams.serve import (
    LOOPBACK,
    REPO_ROOT,
    HeaderRecorder,
    ThreadedServer,
    free_port,
    http_status,
)

READY_TIMEOUT = 15.0
STOP_TIMEOUT = 30.0


__all__ = ["Proxy", "ProxyLauncher", "RunProxy", "free_port"]

# --- upstreams (threads in this process, one event loop each) -------------------------


def _host(url: str) -> str:
    return url.removeprefix("http://")


def _serve(make_app: Callable[[str], HeaderRecorder]) -> Iterator[ThreadedServer]:
    server = ThreadedServer(make_app)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def mcp_upstream_server() -> Iterator[ThreadedServer]:
    """Stateful official-SDK MCP server (SSE answers, session ids); endpoint `/mcp`.

    It accepts only its own `Host` (421 otherwise), like the SDK off loopback.
    """
    yield from _serve(lambda url: mcp_server.build_app(stateless=False, own_host=_host(url)))


@pytest.fixture(scope="session")
def mcp_stateless_upstream_server() -> Iterator[ThreadedServer]:
    """Stateless official-SDK MCP server (JSON answers, no session ids); endpoint `/mcp`."""
    yield from _serve(lambda url: mcp_server.build_app(stateless=True, own_host=_host(url)))


@pytest.fixture(scope="session")
def a2a_upstream_server() -> Iterator[ThreadedServer]:
    """Official a2a-sdk echo agent: JSON-RPC at `/`, REST under `/rest`, card at well-known."""
    yield from _serve(a2a_server.build_app)


@pytest.fixture(scope="session")
def mcp_upstream(mcp_upstream_server: ThreadedServer) -> str:
    """Base URL of the stateful MCP upstream (the MCP endpoint is `{url}/mcp`)."""
    return mcp_upstream_server.url


@pytest.fixture(scope="session")
def mcp_stateless_upstream(mcp_stateless_upstream_server: ThreadedServer) -> str:
    """Base URL of the stateless MCP upstream (the MCP endpoint is `{url}/mcp`)."""
    return mcp_stateless_upstream_server.url


@pytest.fixture(scope="session")
def a2a_upstream(a2a_upstream_server: ThreadedServer) -> str:
    """Base URL of the A2A upstream."""
    return a2a_upstream_server.url


def _recorder(server: ThreadedServer) -> HeaderRecorder:
    assert isinstance(server.app, HeaderRecorder)
    return server.app


@pytest.fixture(scope="session")
def mcp_upstream_seen(mcp_upstream_server: ThreadedServer) -> HeaderRecorder:
    """Requests the stateful MCP upstream received (shared: filter by a marker header)."""
    return _recorder(mcp_upstream_server)


@pytest.fixture(scope="session")
def mcp_stateless_upstream_seen(mcp_stateless_upstream_server: ThreadedServer) -> HeaderRecorder:
    """Requests the stateless MCP upstream received (shared: filter by a marker header)."""
    return _recorder(mcp_stateless_upstream_server)


@pytest.fixture(scope="session")
def a2a_upstream_seen(a2a_upstream_server: ThreadedServer) -> HeaderRecorder:
    """Requests the A2A upstream received (shared: filter by a marker header)."""
    return _recorder(a2a_upstream_server)


# --- the proxy under test, as a subprocess -----------------------------------------------


@dataclass
class Proxy:
    """A running `python -m proxy run` process."""

    url: str
    admin_url: str
    proc: subprocess.Popen[bytes]
    stderr_path: Path
    argv: list[str] = field(default_factory=list)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> int:
        """Send `sig`, wait for the exit (killing after `timeout`), return the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return int(self.proc.returncode)

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def log_lines(self) -> list[dict[str, Any]]:
        """The JSON objects the proxy logged to stderr so far (other lines skipped)."""
        out: list[dict[str, Any]] = []
        for line in self.stderr().splitlines():
            try:
                value = json.loads(line)
            except ValueError:
                continue
            if isinstance(value, dict):
                out.append(value)
        return out


class RunProxy(Protocol):
    def __call__(
        self, upstream_url: str, *extra_args: str, env: dict[str, str] | None = None
    ) -> Proxy: ...


class ProxyLauncher:
    """Starts proxies, waits for `/readyz`, and stops whatever it started."""

    def __init__(self, tmp_dir: Path) -> None:
        self._tmp_dir = tmp_dir
        self._started: list[Proxy] = []

    def __call__(
        self, upstream_url: str, *extra_args: str, env: dict[str, str] | None = None
    ) -> Proxy:
        port, admin_port = free_port(), free_port()
        argv = [
            sys.executable,
            "-m",
            "proxy",
            "run",
            "--upstream",
            upstream_url,
            "--listen",
            f"{LOOPBACK}:{port}",
            "--admin",
            f"{LOOPBACK}:{admin_port}",
            *extra_args,
        ]
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        fd, name = tempfile.mkstemp(prefix="proxy-", suffix=".stderr", dir=self._tmp_dir)
        stderr_path = Path(name)
        with os.fdopen(fd, "wb") as stderr_file:
            proc = subprocess.Popen(
                argv, cwd=REPO_ROOT, env=full_env, stdout=subprocess.DEVNULL, stderr=stderr_file
            )
        proxy = Proxy(
            url=f"http://{LOOPBACK}:{port}",
            admin_url=f"http://{LOOPBACK}:{admin_port}",
            proc=proc,
            stderr_path=stderr_path,
            argv=argv,
        )
        self._started.append(proxy)
        self._wait_ready(proxy)
        return proxy

    def _wait_ready(self, proxy: Proxy) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if proxy.proc.poll() is not None:
                pytest.fail(
                    f"proxy exited with {proxy.proc.returncode} before /readyz answered 200\n"
                    f"argv: {proxy.argv}\nstderr:\n{proxy.stderr()}",
                    pytrace=False,
                )
            if http_status(proxy.admin_url + "/readyz") == 200:
                return
            time.sleep(0.05)
        proxy.stop(signal.SIGKILL)
        pytest.fail(
            f"proxy /readyz not 200 within {READY_TIMEOUT}s\n"
            f"argv: {proxy.argv}\nstderr:\n{proxy.stderr()}",
            pytrace=False,
        )

    def stop_all(self) -> None:
        for proxy in self._started:
            proxy.stop()
        self._started.clear()


@pytest.fixture
def run_proxy(tmp_path: Path) -> Iterator[RunProxy]:
    """`run_proxy(upstream_url, *extra_args, env=None) -> Proxy`; all stopped at teardown."""
    launcher = ProxyLauncher(tmp_path)
    try:
        yield launcher
    finally:
        launcher.stop_all()


@pytest.fixture(scope="module")
def run_proxy_module(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunProxy]:
    """`run_proxy` for module-scoped fixtures: one proxy shared by a module's tests."""
    launcher = ProxyLauncher(tmp_path_factory.mktemp("proxy"))
    try:
        yield launcher
    finally:
        launcher.stop_all()


# --- a real Redis, for the shared session store -------------------------------------------


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A `redis-server` on a free loopback port, persistence off, for the whole test run.

    `.url` is `redis://127.0.0.1:<port>/0`; give each test its own key prefix. Tests that
    stop the server start their own `RedisServer` instead of stopping this one.
    """
    try:
        server = RedisServer()
    except RedisServerMissing as exc:
        pytest.fail(str(exc), pytrace=False)
    with server:
        yield server
