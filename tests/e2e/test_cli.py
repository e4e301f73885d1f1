"""The program as operators run it: flags, environment, bad configuration, graceful drain."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from aiohttp import ClientConnectionError, ClientSession, web

from tests.conftest import RunProxy, free_port
from tests.e2e.conftest import StartUpstream

REPO = Path(__file__).resolve().parents[2]


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("AGENT_WARDEN_")}
    return subprocess.run(
        [sys.executable, "-m", "proxy", *args],
        cwd=REPO,
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["run"], "--upstream is required"),
        (["run", "--upstream", "ftp://x"], "http:// or https://"),
        (["run", "--upstream", "http://"], "no host"),
        (["run", "--upstream", "http://127.0.0.1:1", "--listen", "nope"], "--listen"),
        (["run", "--upstream", "http://127.0.0.1:1", "--protocol", "grpc"], "--protocol"),
        (["run", "--upstream", "http://127.0.0.1:1", "--grace-period", "soon"], "--grace-period"),
        (["run", "--upstream", "http://127.0.0.1:1", "--max-body-size", "-3"], "--max-body-size"),
        (["run", "--upstream", "http://127.0.0.1:1", "--policy", "/nonexistent.yaml"], "nonexist"),
        (["run", "--bogus"], "unrecognized arguments"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_configuration_is_one_line_and_non_zero(args: list[str], needle: str) -> None:
    result = run_cli(*args)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert needle in lines[0]
    assert "Traceback" not in result.stderr


def test_invalid_policy_names_file_and_line(tmp_path: Path) -> None:
    policy = tmp_path / "bad.yaml"
    policy.write_text("version: 1\ndefaults:\n  budget:\n    calls: -4\n")
    result = run_cli("run", "--upstream", "http://127.0.0.1:1", "--policy", str(policy))
    assert result.returncode != 0
    line = result.stderr.strip().splitlines()[0]
    assert line.startswith(f"agent-warden: error: {policy}:4: ")
    assert "calls" in line


def test_environment_variables_configure_and_flags_win(run_proxy: RunProxy, tmp_path: Path) -> None:
    env_result = run_cli("run", env={"AGENT_WARDEN_UPSTREAM": "ftp://from-env"})
    assert "ftp://from-env" in env_result.stderr  # the env value was read
    flag_wins = run_cli(
        "run",
        "--upstream",
        "gopher://from-flag",
        env={"AGENT_WARDEN_UPSTREAM": "http://127.0.0.1:1"},
    )
    assert "gopher://from-flag" in flag_wins.stderr


def test_help_lists_env_names() -> None:
    result = run_cli("run", "--help")
    assert result.returncode == 0
    for name in (
        "AGENT_WARDEN_UPSTREAM",
        "AGENT_WARDEN_LISTEN",
        "AGENT_WARDEN_ADMIN",
        "AGENT_WARDEN_POLICY",
        "AGENT_WARDEN_PROTOCOL",
    ):
        assert name in result.stdout


def test_check_command_exit_codes(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("version: 1\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\ndefaults:\n  rate_limit:\n    per_minit: 5\n")
    ok = run_cli("check", str(good))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    failed = run_cli("check", str(good), str(bad))
    assert failed.returncode == 1
    assert f"{bad}:4: " in failed.stdout
    assert "per_minute" in failed.stdout  # did you mean


# Valid, with one mistake of each kind `check` warns of: a policy shadowed by an earlier
# catch-all, a budget for a tool the same policy denies.
SHADOWED = """\
version: 1
policies:
  - name: everyone
    match: {agents: ["*"]}
  - name: billing
    match: {agents: ["billing-*"]}
    budget: {tools: {delete_admin: 1}}
    tools: {deny: ["*_admin"]}
"""


def test_check_prints_warnings_and_exits_zero_strict_exits_one(tmp_path: Path) -> None:
    warned = tmp_path / "warned.yaml"
    warned.write_text(SHADOWED)
    good = tmp_path / "good.yaml"
    good.write_text("version: 1\n")
    expected = [
        f"{warned}:6: warning: policies[1].match: policy 'billing' can never apply: policy "
        "'everyone' (line 3) comes first and matches every caller 'billing' matches",
        f"{warned}:7: warning: policies[1].budget.tools.delete_admin: policy 'billing' sets a "
        "budget for tool 'delete_admin', which it never lets through: tools.deny '*_admin' "
        "denies it",
        f"{good}: ok",
    ]

    plain = run_cli("check", str(warned), str(good))
    assert plain.returncode == 0, plain.stdout + plain.stderr
    assert plain.stdout.splitlines() == expected
    assert plain.stderr == ""

    strict = run_cli("check", "--strict", str(warned), str(good))
    assert strict.returncode == 1
    assert strict.stdout.splitlines() == expected

    clean = run_cli("check", "--strict", str(good))
    assert clean.returncode == 0
    assert clean.stdout.splitlines() == [f"{good}: ok"]


def test_check_keeps_errors_and_warnings_apart(tmp_path: Path) -> None:
    warned = tmp_path / "warned.yaml"
    warned.write_text(SHADOWED)
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\ndefaults:\n  rate_limit:\n    per_minit: 5\n")
    result = run_cli("check", str(bad), str(warned))
    assert result.returncode == 1  # an error, whatever the warnings
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"{bad}:4: defaults.rate_limit.per_minit: unknown key")
    assert [line.split(": ")[1] for line in lines[1:]] == ["warning", "warning"]
    assert all(line.startswith(f"{warned}:") for line in lines[1:])


def test_run_logs_the_policy_warnings_at_start(run_proxy: RunProxy, tmp_path: Path) -> None:
    policy = tmp_path / "warned.yaml"
    policy.write_text(SHADOWED)
    proxy = run_proxy("http://127.0.0.1:1", "--policy", str(policy))
    warned = [line for line in proxy.log_lines() if line.get("msg") == "policy warning"]
    assert [(w["level"], w["path"], w["line"]) for w in warned] == [
        ("warning", str(policy), 6),
        ("warning", str(policy), 7),
    ]
    assert warned[0]["warning"].startswith(f"{policy}:6: warning: policies[1].match: ")


def test_module_and_console_script_are_the_same_program() -> None:
    script = Path(sys.executable).with_name("agent-warden")
    if not script.exists():
        pytest.skip("console script not installed in this environment")
    result = subprocess.run([str(script), "--version"], capture_output=True, text=True, check=False)
    assert result.returncode == 0
    assert result.stdout == run_cli("--version").stdout


def test_port_in_use_is_a_clean_error() -> None:
    import socket

    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        result = run_cli(
            "run",
            "--upstream",
            "http://127.0.0.1:1",
            "--listen",
            f"127.0.0.1:{port}",
            "--admin",
            f"127.0.0.1:{free_port()}",
        )
    assert result.returncode != 0
    assert "cannot listen" in result.stderr
    assert "Traceback" not in result.stderr


async def _status(session: ClientSession, url: str) -> int | None:
    try:
        async with session.get(url) as resp:
            return resp.status
    except ClientConnectionError:
        return None


async def test_sigterm_drains_in_flight_requests_then_exits_zero(
    run_proxy: RunProxy, start_upstream: StartUpstream
) -> None:
    arrived, release = asyncio.Event(), asyncio.Event()

    async def held(request: web.Request) -> web.Response:
        body = await request.json()
        arrived.set()
        await release.wait()
        return web.json_response({"jsonrpc": "2.0", "id": body["id"], "result": {"done": True}})

    app = web.Application()
    app.router.add_post("/mcp", held)
    upstream = await start_upstream(app)
    proxy = await asyncio.to_thread(run_proxy, upstream, "--grace-period", "20s")

    async with ClientSession() as session:
        body = {"jsonrpc": "2.0", "id": 11, "method": "work/slow", "params": {}}
        in_flight = asyncio.ensure_future(session.post(f"{proxy.url}/mcp", json=body))
        await asyncio.wait_for(arrived.wait(), 10)
        proxy.proc.send_signal(signal.SIGTERM)
        for _ in range(200):
            if await _status(session, f"{proxy.admin_url}/readyz") == 503:
                break
            await asyncio.sleep(0.02)
        assert await _status(session, f"{proxy.admin_url}/readyz") == 503
        async with ClientSession() as fresh:  # a new connection is no longer accepted
            assert await _status(fresh, f"{proxy.url}/mcp") is None
        assert proxy.proc.poll() is None  # still draining
        release.set()
        resp = await asyncio.wait_for(in_flight, 10)
        assert resp.status == 200
        assert (await resp.json())["result"] == {"done": True}
        resp.release()
    code = await asyncio.to_thread(proxy.proc.wait, 30)  # exits on its own once drained
    assert code == 0
    logged = [line.get("msg") for line in proxy.log_lines()]
    assert "draining" in logged
    assert "stopped" in logged
    assert json.dumps(proxy.log_lines())  # every stderr line was JSON-parseable


def test_run_reports_every_problem_of_a_bad_policy(tmp_path: Path) -> None:
    """Contract, Command line: `run` reports every problem of a bad policy, as `check` does."""
    policy = tmp_path / "bad.yaml"
    policy.write_text(
        "version: 1\ndefaults:\n  budget:\n    calls: -4\n  rate_limit: {per_minute: 0}\n"
    )
    result = run_cli("run", "--upstream", "http://127.0.0.1:1", "--policy", str(policy))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert [line.split(": ")[2].split(":")[0] for line in lines] == [str(policy)] * 2, lines
    assert f"{policy}:4: " in lines[0]
    assert f"{policy}:5: " in lines[1]
    assert "Traceback" not in result.stderr
