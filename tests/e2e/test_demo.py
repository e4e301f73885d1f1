"""`make demo` (examples/demo.sh) as an operator runs it, on free loopback ports.

It comes up, the two printed commands do what the text says (a session; a denial), and
SIGTERM stops everything; a port in use is one clear line, exit 1, nothing left running.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest
from aiohttp import web

from tests.conftest import free_port
from tests.e2e.conftest import StartUpstream

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "examples" / "demo.sh"
WAIT = 60.0  # the bound of every wait; never a measured timing

pytestmark = pytest.mark.timeout(120)


def three_ports() -> tuple[int, int, int]:
    ports: set[int] = set()
    while len(ports) < 3:
        ports.add(free_port())
    up, port, admin = sorted(ports)
    return up, port, admin


def demo_env(up: int, port: int, admin: int) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("AGENT_WARDEN_", "DEMO_"))}
    return {
        **clean,
        "DEMO_UPSTREAM_PORT": str(up),
        "DEMO_PORT": str(port),
        "DEMO_ADMIN_PORT": str(admin),
        "PYTHONUNBUFFERED": "1",
    }


def listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def group_gone(pgid: int) -> bool:
    """No process is left in the demo's process group (its session, started for it)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {WAIT} s: {what}")
        time.sleep(0.05)


@pytest.fixture
def held_socket() -> Iterator[list[socket.socket]]:
    held: list[socket.socket] = []
    yield held
    for sock in held:
        sock.close()


@pytest.mark.parametrize(
    ("role", "what"),
    [
        ("DEMO_UPSTREAM_PORT", "the example MCP server"),
        ("DEMO_PORT", "agent-warden"),
        ("DEMO_ADMIN_PORT", "agent-warden's admin listener"),
    ],
)
def test_a_port_in_use_fails_loudly_and_leaves_nothing_running(
    role: str, what: str, held_socket: list[socket.socket]
) -> None:
    up, port, admin = three_ports()
    taken = {"DEMO_UPSTREAM_PORT": up, "DEMO_PORT": port, "DEMO_ADMIN_PORT": admin}[role]
    occupant = socket.socket()
    held_socket.append(occupant)
    occupant.bind(("127.0.0.1", taken))
    occupant.listen()

    proc = subprocess.Popen(
        ["sh", str(DEMO)],
        env=demo_env(up, port, admin),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        text=True,
    )
    try:
        out, err = proc.communicate(timeout=WAIT)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    assert proc.returncode == 1, out + err
    assert err.splitlines() == [
        f"make demo: port {taken} on 127.0.0.1 (for {what}) is already in use: stop what "
        f"listens there or pick another port, e.g. {role}={taken + 1000} make demo"
    ]
    assert "Try" not in out
    assert group_gone(proc.pid)
    assert [p for p in (up, port, admin) if p != taken and listening(p)] == []


def test_the_example_server_refuses_a_port_in_use(held_socket: list[socket.socket]) -> None:
    occupant = socket.socket()
    held_socket.append(occupant)
    occupant.bind(("127.0.0.1", 0))
    occupant.listen()
    port = occupant.getsockname()[1]
    result = subprocess.run(
        [sys.executable, "examples/mcp_server.py", "--port", str(port)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=WAIT,
    )
    assert result.returncode == 1
    assert result.stdout == ""  # never "listening"
    assert result.stderr.splitlines() == [
        f"example MCP server: cannot listen on 127.0.0.1:{port}: Address already in use"
    ]


def load_demo() -> ModuleType:
    spec = importlib.util.spec_from_file_location("warden_demo", REPO / "examples" / "demo.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def test_the_demo_tells_the_example_server_from_another_on_its_port(
    start_upstream: StartUpstream,
) -> None:
    demo = load_demo()

    async def another_example(_: web.Request) -> web.Response:
        return web.json_response({"server": "agent-warden-example", "pid": 1})

    app = web.Application()
    app.router.add_get("/healthz", another_example)
    other = int((await start_upstream(app)).rsplit(":", 1)[1])
    with pytest.raises(demo.Failed, match=r"another example MCP server \(pid 1\) listens there"):
        await asyncio.to_thread(demo._example_server_ready, other, os.getpid())

    stranger = int((await start_upstream(web.Application())).rsplit(":", 1)[1])  # 404 everywhere
    with pytest.raises(demo.Failed, match=r"not as the example MCP server.*something else"):
        await asyncio.to_thread(demo._example_server_ready, stranger, os.getpid())

    nobody = free_port()
    assert await asyncio.to_thread(demo._example_server_ready, nobody, os.getpid()) is False


def printed_command(text: str, comment: str) -> list[str]:
    """The command printed under the comment line that starts with ``comment``, as argv."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith(comment))
    body = [line for line in lines[start:] if not line.strip().startswith("#")]
    command: list[str] = []
    for line in body:
        if not line.strip():
            break
        command.append(line.strip().removesuffix("\\"))
    return shlex.split(" ".join(command))


def test_the_demo_comes_up_and_its_denial_command_shows_a_denial(tmp_path: Path) -> None:
    up, port, admin = three_ports()
    stdout, stderr = tmp_path / "stdout", tmp_path / "stderr"
    with stdout.open("w") as out, stderr.open("w") as err:
        proc = subprocess.Popen(
            ["sh", str(DEMO)],
            env=demo_env(up, port, admin),
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
    try:
        wait_for(
            lambda: "Stop with Ctrl-C." in stdout.read_text() or proc.poll() is not None,
            "the demo's text",
        )
        assert proc.poll() is None, stderr.read_text()
        text = stdout.read_text()
        # Printed only once both answer: the example server before the proxy started.
        assert listening(up)
        assert listening(port)

        session = printed_command(text, "# a session")
        assert session[0] == "curl"
        initialized = subprocess.run(session, capture_output=True, text=True, timeout=WAIT)
        head, _, _ = initialized.stdout.partition("\r\n\r\n")
        assert head.startswith("HTTP/1.1 200"), initialized.stdout
        assert "mcp-session-id:" in head.lower()

        denial = printed_command(text, "# a denial")
        denied = subprocess.run(denial, capture_output=True, text=True, timeout=WAIT)
        answer = json.loads(denied.stdout)
        assert answer["error"]["message"] == "tool not authorized in session"
        [info] = answer["error"]["data"]
        assert info["reason"] == "TOOL_NOT_AUTHORIZED"
        assert info["metadata"]["tool"] == "delete_admin"

        def logged_denial() -> bool:
            for line in stderr.read_text().splitlines():
                if line.startswith("{") and json.loads(line).get("msg") == "request denied":
                    return True
            return False

        wait_for(logged_denial, 'the "request denied" line in the demo terminal')

        why = printed_command(text, "# why")
        assert why[0] == ".venv/bin/agent-warden"
        explained = subprocess.run(
            why, capture_output=True, text=True, timeout=WAIT, cwd=DEMO.parent.parent
        )
        assert explained.returncode == 0, explained.stderr
        assert "decision: deny (TOOL_NOT_AUTHORIZED)" in explained.stdout
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # the demo itself: it stops what it started
        try:
            code = proc.wait(timeout=WAIT)
        finally:
            if not group_gone(proc.pid):
                os.killpg(proc.pid, signal.SIGKILL)
    assert code == 0, stderr.read_text()
    assert group_gone(proc.pid)
    assert [p for p in (up, port, admin) if listening(p)] == []
