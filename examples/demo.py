"""`make demo` (examples/demo.sh): the example MCP server, agent-warden in front, what to try.

    DEMO_UPSTREAM_PORT (9000)  the example MCP server, examples/mcp_server.py
    DEMO_PORT          (8080)  agent-warden, with policies/example.yaml
    DEMO_ADMIN_PORT    (9901)  agent-warden's admin listener (/readyz, /metrics, /sessions)

All on 127.0.0.1. What to try is printed only once both are ready: the example server
answers `GET /healthz` with the pid of the process started here (not merely some server
on the port), and agent-warden's `/readyz` is 200 while the process started here runs. A
port in use, a process that exits or is not ready within DEMO_WAIT seconds (30) ends the
demo: one line on stderr saying what and what to do, exit 1, nothing left running.
Ctrl-C (or SIGTERM) stops both and exits 0. Standard library only.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import FrameType

ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
POLICY = "policies/example.yaml"
SERVER_NAME = "agent-warden-example"  # what examples/mcp_server.py's /healthz says
STOP_WAIT = 10.0  # seconds a child gets to exit on SIGTERM before SIGKILL


class Failed(Exception):
    """The demo cannot go on; the message is the one line the operator sees."""


class Stop(Exception):
    """Ctrl-C or SIGTERM: stop both and exit 0."""


def _stop(signum: int, _: FrameType | None) -> None:
    raise Stop


def _port(name: str, default: int) -> int:
    text = os.environ.get(name) or str(default)
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= 65535:
        raise Failed(f"{name}={text!r} is not a port (1-65535)")
    return int(text)


def _in_use(port: int) -> bool:
    """Something listens on ``port`` (on 127.0.0.1 or every address): binding fails the
    way it will for the server (SO_REUSEADDR, as uvicorn and aiohttp set it)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return True
    return False


def _get(url: str) -> tuple[int, bytes] | None:
    """Status and body of a GET; None when nothing answers (yet)."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (OSError, ValueError):
        return None


def _wait(
    proc: subprocess.Popen[bytes], what: str, ready: str, probe: Callable[[], bool], wait: float
) -> None:
    """Until ``probe()`` is true; Failed when ``proc`` exits or ``wait`` seconds pass."""
    deadline = time.monotonic() + wait
    while True:
        code = proc.poll()
        if code is not None:
            raise Failed(f"{what} exited (code {code}) before it was ready; its error is above")
        if probe():
            return
        if time.monotonic() > deadline:
            raise Failed(f"{what} was not ready within {wait:g} s ({ready})")
        time.sleep(0.1)


def _example_server_ready(port: int, pid: int) -> bool:
    answer = _get(f"http://{HOST}:{port}/healthz")
    if answer is None:
        return False
    status, body = answer
    try:
        said = json.loads(body)
    except ValueError:
        said = None
    if status == 200 and isinstance(said, dict) and said.get("server") == SERVER_NAME:
        if said.get("pid") == pid:
            return True
        other = f"another example MCP server (pid {said.get('pid')}) listens there"
    else:
        other = "something else listens there"
    raise Failed(
        f"port {port} answers, but not as the example MCP server this demo started "
        f"(pid {pid}): {other}; stop it or set DEMO_UPSTREAM_PORT"
    )


def _proxy_ready(admin: int) -> bool:
    answer = _get(f"http://{HOST}:{admin}/readyz")
    return answer is not None and answer[0] == 200


def _try_this(port: int, up: int, admin: int) -> str:
    url = f"http://{HOST}:{port}/mcp"
    head = (
        "-H 'Content-Type: application/json' -H 'Accept: application/json, text/event-stream' \\\n"
        "    -H 'X-Agent-Id: demo-agent'"
    )
    init = (
        '{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18",'
        '"capabilities":{},"clientInfo":{"name":"curl","version":"1"}}}'
    )
    deny = (
        '{"jsonrpc":"2.0","id":2,"method":"tools/call",'
        '"params":{"name":"delete_admin","arguments":{"user":"root"}}}'
    )
    return f"""
agent-warden is ready on http://{HOST}:{port}, in front of the example MCP server on
{HOST}:{up}, with {POLICY}. Try (in another terminal):

  # a session: the answer carries the example server's Mcp-Session-Id
  curl -si -X POST {url} \\
    {head} \\
    -d '{init}'

  # a denial: {POLICY} denies every *_admin tool; the answer is a JSON-RPC error
  # (TOOL_NOT_AUTHORIZED) and this terminal logs "request denied" with the policy and why
  curl -s -X POST {url} \\
    {head} \\
    -d '{deny}'

  # why: which policy met demo-agent, its limits, and the verdict for that tool
  .venv/bin/agent-warden explain --policy {POLICY} --agent demo-agent --tool delete_admin

  curl -s http://{HOST}:{admin}/readyz

Stop with Ctrl-C.
"""


def _terminate(procs: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM each child still running, wait, SIGKILL what is left: nothing outlives us."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_WAIT
    for proc in procs:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run() -> int:
    up = _port("DEMO_UPSTREAM_PORT", 9000)
    port = _port("DEMO_PORT", 8080)
    admin = _port("DEMO_ADMIN_PORT", 9901)
    try:
        wait = float(os.environ.get("DEMO_WAIT") or 30)
    except ValueError:
        raise Failed(f"DEMO_WAIT={os.environ['DEMO_WAIT']!r} is not a number of seconds") from None
    roles = [
        ("DEMO_UPSTREAM_PORT", up, "the example MCP server"),
        ("DEMO_PORT", port, "agent-warden"),
        ("DEMO_ADMIN_PORT", admin, "agent-warden's admin listener"),
    ]
    if len({up, port, admin}) < 3:
        raise Failed(f"the three ports must differ: {', '.join(f'{n}={p}' for n, p, _ in roles)}")
    taken = [(name, p, what) for name, p, what in roles if _in_use(p)]
    if taken:
        lines = [
            f"port {p} on {HOST} (for {what}) is already in use: stop what listens there "
            f"or pick another port, e.g. {name}={p + 1000} make demo"
            for name, p, what in taken
        ]
        raise Failed("\nmake demo: ".join(lines))

    python = sys.executable
    procs: list[subprocess.Popen[bytes]] = []
    try:
        server = subprocess.Popen([python, "examples/mcp_server.py", "--port", str(up)], cwd=ROOT)
        procs.append(server)
        _wait(
            server,
            "the example MCP server",
            f"http://{HOST}:{up}/healthz",
            lambda: _example_server_ready(up, server.pid),
            wait,
        )
        argv = [python, "-m", "proxy", "run", "--upstream", f"http://{HOST}:{up}"]
        argv += ["--listen", f"{HOST}:{port}", "--admin", f"{HOST}:{admin}", "--policy", POLICY]
        argv += ["--grace-period", "2s"]
        proxy = subprocess.Popen(argv, cwd=ROOT)
        procs.append(proxy)
        _wait(
            proxy,
            "agent-warden",
            f"http://{HOST}:{admin}/readyz",
            lambda: _proxy_ready(admin),
            wait,
        )
        print(_try_this(port, up, admin), flush=True)
        while True:
            for proc, what in ((server, "the example MCP server"), (proxy, "agent-warden")):
                code = proc.poll()
                if code is not None:
                    raise Failed(f"{what} exited (code {code}); the demo stops")
            time.sleep(0.2)
    finally:
        # Ctrl-C or a failure: neither child is left behind (signals held meanwhile).
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        _terminate(procs)


def main() -> int:
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        return run()
    except Stop:
        return 0
    except Failed as exc:
        print(f"make demo: {exc}", file=sys.stderr, flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
