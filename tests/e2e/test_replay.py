"""The decision log and replay, end to end: traffic recorded by a running proxy under policy
A, replayed under policy B, predicts exactly what a proxy running B decides on the same
traffic (call by call); `agent-warden replay` exits 0 when nothing changes and 3 when
verdicts change."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession

from proxy.policy import PolicyFile, parse_policy
from proxy.record import Decision, read_decisions
from proxy.replay import compare, recorded, replay
from tests.e2e.conftest import StartProxy, StartUpstream
from tests.upstreams import legacy_a2a
from tests.upstreams.broken import Broken
from tests.upstreams.serve import free_port

REPO = Path(__file__).resolve().parents[2]

POLICY_A = """\
version: 1
defaults:
  budget: {calls: 100}
"""
# B: a smaller budget, a per-tool budget, a denied tool, and a stricter policy for bob.
POLICY_B = """\
version: 1
defaults:
  budget: {calls: 6, tools: {slow: 2}}
  tools: {deny: ["danger"]}
policies:
  - name: bobs
    match: {agents: ["bob"]}
    budget: {calls: 3}
    methods: {deny: ["resources/*"]}
"""
JSON = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}


def policy(text: str, name: str) -> PolicyFile:
    return parse_policy(text, name)


def call(rid: int, method: str = "tools/call", tool: str | None = None) -> bytes:
    params: dict[str, Any] = {"name": tool, "arguments": {}} if tool else {}
    return json.dumps({"jsonrpc": "2.0", "id": rid, "method": method, "params": params}).encode()


async def traffic(http: ClientSession, proxy: str) -> None:
    """The same calls, in the same order, whatever the proxy: alice in her window (no
    session header, as a 2026-07-28 client), bob in an MCP session he opens."""
    alice = {**JSON, "X-Agent-Id": "alice"}
    for i, tool in enumerate(["echo", "slow", "danger", "slow", "echo", "slow", "echo", "echo"]):
        async with http.post(f"{proxy}/echo", data=call(i + 1, tool=tool), headers=alice) as r:
            assert r.status == 200
    bob = {**JSON, "X-Agent-Id": "bob"}
    init = json.dumps(
        {
            "jsonrpc": "2.0",
            "id": 100,
            "method": "initialize",
            "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {}},
        }
    ).encode()
    async with http.post(f"{proxy}/echo", data=init, headers=bob) as r:
        assert r.status == 200
        bob["Mcp-Session-Id"] = r.headers["Mcp-Session-Id"]
    for i, method in enumerate(["tools/list", "resources/read", "tools/list", "tools/list"]):
        async with http.post(f"{proxy}/echo", data=call(200 + i, method), headers=bob) as r:
            assert r.status == 200
    # A batch: each element is a call of its own in the log.
    batch = b"[" + call(300, tool="echo") + b"," + call(301, tool="danger") + b"]"
    async with http.post(f"{proxy}/echo", data=batch, headers=alice) as r:
        assert r.status == 200


async def record_under(
    text: str,
    tmp_path: Path,
    name: str,
    start_upstream: StartUpstream,
    start_proxy: StartProxy,
    http: ClientSession,
) -> list[Decision]:
    log = tmp_path / f"{name}.jsonl"
    upstream = await start_upstream(Broken().app())
    proxy = await start_proxy(upstream, policy=policy(text, name), decision_log=str(log))
    await traffic(http, proxy)
    decisions, problems = read_decisions(log.read_text().splitlines())
    assert problems == []
    return decisions


async def test_replay_predicts_what_the_candidate_decides(
    tmp_path: Path, start_upstream: StartUpstream, start_proxy: StartProxy, http: ClientSession
) -> None:
    under_a = await record_under(POLICY_A, tmp_path, "a", start_upstream, start_proxy, http)
    under_b = await record_under(POLICY_B, tmp_path, "b", start_upstream, start_proxy, http)
    assert len(under_a) == len(under_b) == 14  # counted calls only: no initialize
    assert all(d.decision == "allow" for d in under_a)
    assert {d.kind for d in under_a} == {"window", "protocol"}
    assert [d.reason for d in under_b if d.decision == "deny"], "B must deny something"

    predicted = await replay(under_a, policy(POLICY_B, "b"))
    actual = recorded(under_b)
    assert [(p.decision, p.reason, p.policy) for p in predicted] == [
        (a.decision, a.reason, a.policy) for a in actual
    ]
    report = compare(under_a, recorded(under_a), predicted)
    assert report.changed == sum(1 for d in under_b if d.decision == "deny")
    assert set(report.by_kind) == {"allow->deny"}
    assert {key for (_, key) in report.by_reason} >= {
        "TOOL_NOT_AUTHORIZED",
        "SESSION_BUDGET_EXCEEDED",
        "METHOD_NOT_AUTHORIZED",
    }
    # The same policy replayed over its own log changes nothing.
    same = await replay(under_a, policy(POLICY_A, "a"))
    assert compare(under_a, recorded(under_a), same).changed == 0


async def test_the_cli_exit_codes_and_json(
    tmp_path: Path, start_upstream: StartUpstream, start_proxy: StartProxy, http: ClientSession
) -> None:
    under_a = await record_under(POLICY_A, tmp_path, "a", start_upstream, start_proxy, http)
    assert under_a
    (tmp_path / "a.yaml").write_text(POLICY_A)
    (tmp_path / "b.yaml").write_text(POLICY_B)
    log = str(tmp_path / "a.jsonl")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "proxy", "replay", *args],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO,
        )

    same = cli("--policy", str(tmp_path / "a.yaml"), log)
    assert same.returncode == 0, same.stdout + same.stderr
    assert "0 verdicts change" in same.stdout
    changed = cli("--policy", str(tmp_path / "b.yaml"), log, "--json")
    assert changed.returncode == 3, changed.stdout + changed.stderr
    doc = json.loads(changed.stdout)
    assert doc["changed"] > 0
    assert doc["by_change"] == {"allow->deny": doc["changed"]}
    assert doc["examples"]["allow->deny"][0]["after"]["decision"] == "deny"
    against = cli("--policy", str(tmp_path / "b.yaml"), log, "--against", str(tmp_path / "b.yaml"))
    assert against.returncode == 0, against.stdout  # B against B: nothing changes
    broken = cli("--policy", str(tmp_path / "nope.yaml"), log)
    assert broken.returncode == 2
    assert "Traceback" not in broken.stderr


def test_a_million_calls_replay_in_well_under_a_minute() -> None:
    """Not a timing assertion: the size is what `make bench` measures (bench/replay.py);
    here a small run proves the path works on synthetic records of every kind."""
    now = time.time()
    records = [
        Decision(
            now + i / 1000,
            f"agent-{i % 7}",
            None,
            "window",
            "mcp",
            "tools/call",
            "echo",
            "default",
            "enforce",
            "allow",
            None,
        )
        for i in range(2000)
    ]
    import asyncio

    verdicts = asyncio.run(replay(records, policy(POLICY_B, "b")))
    denied = sum(1 for v in verdicts if v.decision == "deny")
    assert denied == 2000 - 7 * 6  # each agent's window: 6 calls, then the budget


@pytest.mark.parametrize("line", ["{", "[]", '{"agent": "a"}', '{"ts": "x", "agent": 1}'])
def test_unreadable_log_lines_are_reported_not_fatal(line: str) -> None:
    good = Decision(
        1.0, "a", None, "window", "mcp", "ping", None, "default", "enforce", "allow", None
    ).to_json()
    found, problems = read_decisions([good, line])
    assert len(found) == 1
    assert len(problems) == 1
    assert problems[0].startswith("line 2:")


async def test_the_log_holds_no_bodies_or_credentials(
    tmp_path: Path, start_upstream: StartUpstream, start_proxy: StartProxy, http: ClientSession
) -> None:
    log = tmp_path / "d.jsonl"
    proxy = await start_proxy(await start_upstream(Broken().app()), decision_log=str(log))
    body = json.dumps(
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "tools/call",
            "params": {"name": "echo", "arguments": {"text": "hunter2-secret"}},
        }
    ).encode()
    headers = {**JSON, "X-Agent-Id": "carol", "Authorization": "Bearer tok-9f8e7d"}
    async with http.post(f"{proxy}/echo", data=body, headers=headers) as r:
        assert r.status == 200
    text = log.read_text()
    assert "hunter2" not in text
    assert "tok-9f8e7d" not in text
    [line] = text.splitlines()
    assert json.loads(line)["tool"] == "echo"


def test_the_log_rotates_by_size(tmp_path: Path) -> None:
    from proxy.record import DecisionLog

    path = tmp_path / "d.jsonl"
    log = DecisionLog(str(path), max_bytes=1000)
    log.open()
    one = Decision(
        1.0, "a", None, "window", "mcp", "tools/call", "t", "default", "enforce", "allow", None
    )
    for _ in range(100):
        log.write([one])
    log.close()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["d.jsonl", "d.jsonl.1", "d.jsonl.2", "d.jsonl.3"]
    for p in tmp_path.iterdir():
        assert p.stat().st_size <= 1000
        read, problems = read_decisions(p.read_text().splitlines())
        assert problems == []
        assert read
    assert log.written == 100


# --- A2A: contexts are sessions -----------------------------------------------------------

A2A_POLICY_A = """\
version: 1
defaults:
  budget: {calls: 100}
"""
A2A_POLICY_B = """\
version: 1
defaults:
  session: {max_per_agent: 1}
  budget: {calls: 3}
policies:
  - name: ana
    match: {agents: ["ana"]}
    budget: {calls: 4}
    methods: {deny: ["GetTask"]}
"""


async def a2a_traffic(http: ClientSession, proxy: str) -> None:
    """Ana in one context (sends, then reads its task), Ben in two contexts."""
    ids = iter(range(1, 100))

    async def send(agent: str, ctx: str | None = None) -> dict[str, Any]:
        message: dict[str, Any] = {
            "role": "user",
            "parts": [{"kind": "text", "text": "hi"}],
            "messageId": f"m{next(ids)}",
            "kind": "message",
        }
        if ctx is not None:
            message["contextId"] = ctx
        doc = {
            "jsonrpc": "2.0",
            "id": next(ids),
            "method": "message/send",
            "params": {"message": message},
        }
        headers = {"Content-Type": "application/json", "X-Agent-Id": agent}
        async with http.post(f"{proxy}/", json=doc, headers=headers) as r:
            assert r.status == 200
            answer: dict[str, Any] = await r.json()
        return answer

    async def get(agent: str, task: str) -> None:
        doc = {"jsonrpc": "2.0", "id": next(ids), "method": "tasks/get", "params": {"id": task}}
        headers = {"Content-Type": "application/json", "X-Agent-Id": agent}
        async with http.post(f"{proxy}/", json=doc, headers=headers) as r:
            assert r.status == 200

    first = (await send("ana"))["result"]
    ctx, task = first["contextId"], first["id"]
    for _ in range(4):
        await send("ana", ctx)
    await get("ana", task)
    await get("ana", task)
    ben = (await send("ben"))["result"]["contextId"]
    await send("ben", ben)
    await send("ben", ben)
    await send("ben")  # a second context: over B's cap of one


async def test_replay_predicts_a2a_decisions_in_their_contexts(
    tmp_path: Path, start_upstream: StartUpstream, start_proxy: StartProxy, http: ClientSession
) -> None:
    runs: dict[str, list[Decision]] = {}
    for name, text in (("a", A2A_POLICY_A), ("b", A2A_POLICY_B)):
        port = free_port()
        upstream = await start_upstream(legacy_a2a.build_app(f"http://127.0.0.1:{port}"), port)
        log = tmp_path / f"a2a-{name}.jsonl"
        proxy = await start_proxy(upstream, policy=policy(text, name), decision_log=str(log))
        await a2a_traffic(http, proxy)
        runs[name], problems = read_decisions(log.read_text().splitlines())
        assert problems == []
    under_a, under_b = runs["a"], runs["b"]
    assert len(under_a) == len(under_b) == 11
    assert all(d.decision == "allow" for d in under_a)
    assert all(d.session for d in under_a), "every call names the context it was judged in"
    reasons = {d.reason for d in under_b if d.decision == "deny"}
    assert reasons >= {"SESSION_BUDGET_EXCEEDED", "TOO_MANY_SESSIONS"}, reasons

    predicted = await replay(sorted(under_a, key=lambda d: d.ts), policy(A2A_POLICY_B, "b"))
    actual = recorded(sorted(under_b, key=lambda d: d.ts))
    assert [(p.decision, p.reason, p.policy) for p in predicted] == [
        (a.decision, a.reason, a.policy) for a in actual
    ]


# --- review findings: the log never fails a request, bad lines never a replay -------------


async def test_undecodable_names_are_logged_and_never_fail_the_request(
    tmp_path: Path, start_upstream: StartUpstream, start_proxy: StartProxy, http: ClientSession
) -> None:
    log = tmp_path / "d.jsonl"
    proxy = await start_proxy(await start_upstream(Broken().app()), decision_log=str(log))
    # A lone surrogate in the tool name (a JSON escape) and in the agent id (a header byte
    # that is not UTF-8): both must be written, as ASCII escapes.
    body = b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"\\udcff"}}'
    reader, writer = await asyncio.open_connection(*proxy.removeprefix("http://").split(":"))
    head = (
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"X-Agent-Id: al\xffice\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n"
    )
    writer.write(head + body)
    status = await reader.readline()
    writer.close()
    assert status.startswith(b"HTTP/1.1 200"), status
    [line] = log.read_text().splitlines()
    assert line.isascii()
    decision = Decision.from_json(line)
    assert decision.tool == "\udcff"
    assert decision.agent == "al\udcffice"


def test_a_log_on_a_pipe_is_written_and_never_rotated(tmp_path: Path) -> None:
    from proxy.record import DecisionLog

    read_end, write_end = os.pipe()
    try:
        log = DecisionLog(f"/proc/self/fd/{write_end}", max_bytes=10)
        log.open()
        one = Decision(
            1.0, "a", None, "window", "mcp", "tools/call", "t", "default", "enforce", "allow", None
        )
        log.write([one, one])
        assert log.written == 2
        assert os.read(read_end, 65536).count(b"\n") == 2
        log.close()
    finally:
        os.close(read_end)
        os.close(write_end)


def test_hostile_lines_are_problems_not_tracebacks() -> None:
    good = json.loads(
        Decision(
            1.0, "a", None, "window", "mcp", "ping", None, "default", "enforce", "allow", None
        ).to_json()
    )
    huge = json.dumps({**good, "ts": 10**400})
    lines = ["[" * 100_000, huge, json.dumps({**good, "ts": "1e999"})]
    found, problems = read_decisions(lines)
    assert found == []
    assert len(problems) == 3


def test_a_whole_request_audit_denial_marks_every_element() -> None:
    from multidict import CIMultiDict, CIMultiDictProxy

    from proxy.errors import E
    from proxy.exchange import Exchange
    from proxy.gate import Admission
    from proxy.identity import Credential
    from proxy.protocols.classify import classify
    from proxy.record import decisions_of

    batch = b"[" + call(1, tool="echo") + b"," + call(2, tool="danger") + b"]"
    headers = CIMultiDictProxy(CIMultiDict({"Content-Type": "application/json"}))
    info = classify("POST", "/mcp", headers, batch)
    exchange = Exchange("POST", "/mcp", "/mcp", headers, Credential("a", "jwt"), info)
    adm = Admission("a", "p", "audit", decision="audit-deny", reason=E.TOOL_NOT_AUTHORIZED)
    adm.whole_reason = E.INSUFFICIENT_SCOPE  # require_scopes, recorded in audit mode
    adm.element_reasons = (None, E.TOOL_NOT_AUTHORIZED)
    logged = decisions_of(exchange, adm, 1.0)
    assert [(d.decision, d.reason) for d in logged] == [
        ("audit-deny", "INSUFFICIENT_SCOPE"),
        ("audit-deny", "TOOL_NOT_AUTHORIZED"),
    ]
