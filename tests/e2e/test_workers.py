"""`run --workers N`: one supervisor, N data-plane processes on one port, one Redis.

Real processes on 127.0.0.1: the proxy as a subprocess (`run_proxy`), the session's
`redis_server` (each proxy on a key prefix of its own), the stateful official-SDK MCP
upstream or an aiohttp upstream in the test. Requests go over fresh connections, so the
kernel (SO_REUSEPORT) spreads them over the workers; which worker served what is read
from the merged `/metrics` (`agent_warden_worker_requests_total{worker}`) and from the
`worker` field of the log lines. Nothing sleeps to synchronise: every wait polls with a
deadline (`eventually`).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import socket
import uuid
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web

from proxy.record import read_decisions
from tests.conftest import Proxy, RunProxy
from tests.e2e.conftest import StartUpstream
from tests.e2e.test_cli import run_cli
from tests.e2e.test_policies import (
    Exposition,
    RawMcp,
    admin_sessions,
    eventually,
    fresh,
    log_records,
    scrape,
    upstream_posts,
)
from tests.redis_server import RedisServer
from tests.upstreams.mcp_server import MCP_PATH
from tests.upstreams.serve import LOOPBACK, HeaderRecorder, free_port

pytestmark = pytest.mark.timeout(60)

POLICY = Path(__file__).resolve().parents[1] / "data" / "e2e" / "replicas.yaml"
WORKERS = 2

StoreUrl = Callable[[], str]


# --- fixtures and helpers -------------------------------------------------------------------


def _store_urls(server: RedisServer) -> Iterator[StoreUrl]:
    prefixes: list[str] = []

    def url() -> str:
        prefix = f"wk-{uuid.uuid4().hex[:12]}:"
        prefixes.append(prefix)
        return f"{server.url}?prefix={prefix}"

    yield url
    for prefix in prefixes:
        server.flush(prefix)


@pytest.fixture
def store_url(redis_server: RedisServer) -> Iterator[StoreUrl]:
    """A store URL on a fresh key prefix of the session's Redis; its keys go at teardown."""
    yield from _store_urls(redis_server)


@pytest.fixture(scope="module")
def module_store_url(redis_server: RedisServer) -> Iterator[StoreUrl]:
    yield from _store_urls(redis_server)


@pytest.fixture(scope="module")
def workers(run_proxy_module: RunProxy, mcp_upstream: str, module_store_url: StoreUrl) -> Proxy:
    """Two workers in front of the stateful MCP upstream, shared by the module's tests
    (each uses agents of its own and compares before and after)."""
    args = ("--workers", str(WORKERS), "--policy", str(POLICY), "--store", module_store_url())
    return run_proxy_module(mcp_upstream, *args)


def fresh_connections() -> httpx.AsyncClient:
    """A client that opens a new connection per request (no keep-alive): the kernel picks
    a worker for each."""
    return httpx.AsyncClient(
        timeout=30.0, limits=httpx.Limits(max_keepalive_connections=0, max_connections=100)
    )


def total(exposition: Exposition, name: str) -> float:
    return sum(value for _, value in exposition.series(name))


def per_worker(exposition: Exposition) -> dict[str, float]:
    return {
        labels["worker"]: value
        for labels, value in exposition.series("agent_warden_worker_requests_total")
    }


def grown(before: Exposition, after: Exposition) -> dict[str, float]:
    """Requests each worker served between two scrapes (a replaced worker restarts at 0)."""
    old, new = per_worker(before), per_worker(after)
    return {worker: new[worker] - old.get(worker, 0) for worker in new}


async def requests_counted(proxy: Proxy, want: float) -> Exposition | None:
    """The scrape once `agent_warden_requests_total` reached `want` (counts land after the
    answer is sent)."""
    now = await scrape(proxy)
    return now if total(now, "agent_warden_requests_total") >= want else None


def worker_pids(proxy: Proxy) -> dict[int, list[int]]:
    """The pids the supervisor logged as ready, per worker index, oldest first."""
    pids: dict[int, list[int]] = {}
    for record in log_records(proxy, "worker ready"):
        pids.setdefault(record["worker"], []).append(record["pid"])
    return pids


def gone(pid: int) -> bool:
    """No such process any more (a zombie waiting for its reaper counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


async def admin_status(proxy: Proxy, path: str) -> int | None:
    async with httpx.AsyncClient(timeout=5.0) as client:
        try:
            return (await client.get(proxy.admin_url + path)).status_code
        except httpx.TransportError:
            return None


async def status_is(proxy: Proxy, path: str, status: int) -> bool:
    return await admin_status(proxy, path) == status


def mcp_clients(http: httpx.AsyncClient, proxy: Proxy, agent: str, n: int) -> list[RawMcp]:
    """`n` raw clients of one agent sharing a marker and one id sequence."""
    ids, marker = itertools.count(1), uuid.uuid4().hex
    return [RawMcp(http, proxy.url + MCP_PATH, agent, marker=marker, _ids=ids) for _ in range(n)]


# --- configuration -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "env", "needle"),
    [
        (["--workers", "2"], {}, "--workers 2 needs a shared session store (--store redis://"),
        ([], {"AGENT_WARDEN_WORKERS": "3"}, "--workers 3 needs a shared session store"),
        (["--workers", "0"], {}, "--workers: expected an integer from 1 to 64, got '0'"),
        (["--workers", "65"], {}, "--workers: expected an integer from 1 to 64, got '65'"),
        (["--workers", "two"], {}, "--workers: expected an integer from 1 to 64"),
        (["--workers", "²"], {}, "--workers: expected an integer from 1 to 64"),
        (
            ["--workers", "2", "--store", "redis://127.0.0.1:1/0", "--listen", "127.0.0.1:0"],
            {},
            "--workers 2 needs a fixed --listen port",
        ),
    ],
)
def test_bad_workers_configuration_is_one_line_and_exit_2(
    args: list[str], env: dict[str, str], needle: str
) -> None:
    result = run_cli("run", "--upstream", "http://127.0.0.1:1", *args, env=env)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("agent-warden: error: ")
    assert needle in lines[0]
    assert "Traceback" not in result.stderr


def test_help_lists_the_workers_flag() -> None:
    result = run_cli("run", "--help")
    assert result.returncode == 0
    assert "--workers" in result.stdout
    assert "AGENT_WARDEN_WORKERS" in result.stdout


def test_port_in_use_stops_start_up_with_one_line(store_url: StoreUrl) -> None:
    with socket.socket() as held:
        held.bind((LOOPBACK, 0))
        held.listen()
        port = held.getsockname()[1]
        result = run_cli(
            "run",
            "--upstream",
            "http://127.0.0.1:1",
            "--listen",
            f"{LOOPBACK}:{port}",
            "--admin",
            f"{LOOPBACK}:{free_port()}",
            "--workers",
            "2",
            "--store",
            store_url(),
        )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "cannot listen" in lines[0]
    assert "Traceback" not in result.stderr


# --- serving ---------------------------------------------------------------------------------


async def test_requests_spread_over_the_workers_and_metrics_are_their_sum(
    workers: Proxy, mcp_upstream_seen: HeaderRecorder
) -> None:
    async with fresh_connections() as http:
        [raw, *calls] = mcp_clients(http, workers, fresh("spread"), 41)
        session = await raw.initialize()
        before = await eventually(partial(requests_counted, workers, 2))
        baseline = total(before, "agent_warden_requests_total")
        replies = await asyncio.gather(*(c.echo(session, f"n{i}") for i, c in enumerate(calls)))
    for i, reply in enumerate(replies):
        assert reply.tool_text() == f"n{i}"
    assert len(upstream_posts(mcp_upstream_seen, raw.marker)) == 2 + 40
    after = await eventually(partial(requests_counted, workers, baseline + 40))

    assert total(after, "agent_warden_requests_total") == baseline + 40
    served = grown(before, after)
    assert set(served) == {"0", "1"}, served
    assert sum(served.values()) == 40, served
    assert all(n > 0 for n in served.values()), served  # both workers served some
    # The sum over workers, series by series: the 40 echoes are tools/call, allowed.
    series = {"protocol": "mcp", "method": "tools/call", "outcome": "allowed"}
    assert (
        after.value("agent_warden_requests_total", **series)
        - before.value("agent_warden_requests_total", **series)
        == 40
    )
    latency = "agent_warden_upstream_latency_seconds_count"
    assert after.value(latency, protocol="mcp") - before.value(latency, protocol="mcp") == 40
    # Per-process gauges summed; the same-everywhere ones taken once.
    assert after.value("agent_warden_requests_in_flight") == 0
    assert after.series("agent_warden_build_info")[0][1] == 1
    [(info, value)] = after.series("agent_warden_policy_info")
    assert (info["source"], value) == (str(POLICY), 1)
    assert after.value("agent_warden_policy_reloads_total", result="success") == 0
    [(_, live)] = after.series("agent_warden_sessions_live")
    assert live == len(await admin_sessions(workers))  # read once, from the shared store
    for worker in ("0", "1"):
        assert after.value("agent_warden_worker_up", worker=worker) == 1
        assert after.value("agent_warden_worker_restarts_total", worker=worker) == 0
    for name, kind in after.types.items():
        assert name.startswith("agent_warden_"), name
        assert kind in ("counter", "gauge", "histogram"), (name, kind)


async def test_a_budget_holds_across_workers(
    workers: Proxy, mcp_upstream_seen: HeaderRecorder
) -> None:
    agent = fresh("burst")  # replicas.yaml: budget.calls 10
    async with fresh_connections() as http:
        [raw, *calls] = mcp_clients(http, workers, agent, 41)
        session = await raw.initialize()
        before = await eventually(partial(requests_counted, workers, 2))
        baseline = total(before, "agent_warden_requests_total")
        replies = await asyncio.gather(*(c.echo(session, f"b{i}") for i, c in enumerate(calls)))
    allowed = [r for r in replies if "result" in r.message]
    denied = [r for r in replies if "error" in r.message]
    assert (len(allowed), len(denied)) == (10, 30)
    for reply in denied:
        reply.denied("SESSION_BUDGET_EXCEEDED")
    assert len(upstream_posts(mcp_upstream_seen, raw.marker)) == 2 + 10
    # Both workers judged some of the calls: their log lines carry their index.
    await eventually(lambda: len(log_records(workers, "request denied", agent=agent)) >= 30)
    records = log_records(workers, "request denied", agent=agent)
    assert len(records) == 30
    assert {r["session"] for r in records} == {session}
    after = await eventually(partial(requests_counted, workers, baseline + 40))
    served = grown(before, after)
    assert sum(served.values()) == 40, served
    assert all(n > 0 for n in served.values()), served
    assert {r["worker"] for r in records} == {0, 1}
    # The supervisor's /sessions reads the shared store; closing there closes everywhere.
    assert (await admin_sessions(workers))[session]["calls_used"] == 10
    async with httpx.AsyncClient(timeout=10.0) as admin:
        closed = await admin.delete(f"{workers.admin_url}/sessions/{session}")
    assert closed.status_code == 204, closed.text
    async with fresh_connections() as http:
        late = await asyncio.gather(
            *(c.echo(session) for c in mcp_clients(http, workers, agent, 10))
        )
    for reply in late:
        reply.denied("SESSION_CLOSED")
    assert session not in await admin_sessions(workers)


async def test_every_worker_logs_with_its_index(workers: Proxy) -> None:
    started = log_records(workers, "worker started")
    assert sorted(r["worker"] for r in started) == list(range(WORKERS))
    assert len({r["pid"] for r in started}) == WORKERS
    assert workers.proc.pid not in {r["pid"] for r in started}
    [supervisor] = log_records(workers, "agent-warden started")
    assert supervisor["workers"] == WORKERS
    assert "worker" not in supervisor


# --- lifecycle -------------------------------------------------------------------------------


async def test_sigterm_drains_every_worker_then_exits_zero(
    run_proxy: RunProxy, start_upstream: StartUpstream, store_url: StoreUrl
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
    args = ("--workers", "2", "--store", store_url(), "--grace-period", "20s")
    proxy = await asyncio.to_thread(run_proxy, upstream, *args)
    pids = [p for ps in worker_pids(proxy).values() for p in ps]
    assert len(pids) == 2

    async with httpx.AsyncClient(timeout=30.0) as http:
        body = {"jsonrpc": "2.0", "id": 11, "method": "work/slow", "params": {}}
        in_flight = asyncio.ensure_future(http.post(f"{proxy.url}/mcp", json=body))
        await asyncio.wait_for(arrived.wait(), 10)
        proxy.proc.send_signal(signal.SIGTERM)
        await eventually(partial(status_is, proxy, "/readyz", 503))

        async def refused() -> bool:  # every worker closed its listener
            async with fresh_connections() as fresh_client:
                try:  # a GET: the upstream answers it at once (405) while one still listens
                    await fresh_client.get(f"{proxy.url}/mcp")
                except httpx.ConnectError:
                    return True
                return False

        await eventually(refused)
        assert proxy.proc.poll() is None  # still draining
        release.set()
        response = await asyncio.wait_for(in_flight, 10)
    assert response.status_code == 200
    assert response.json()["result"] == {"done": True}
    code = await asyncio.to_thread(proxy.proc.wait, 30)
    assert code == 0
    for pid in pids:
        assert gone(pid), pid
    for msg in ("draining", "stopped"):
        assert sorted(r.get("worker", -1) for r in log_records(proxy, msg)) == [-1, 0, 1]


async def test_a_killed_worker_is_restarted_and_counts_never_go_down(
    run_proxy: RunProxy, mcp_upstream: str, store_url: StoreUrl
) -> None:
    args = ("--workers", "2", "--policy", str(POLICY), "--store", store_url())
    proxy = await asyncio.to_thread(run_proxy, mcp_upstream, *args)
    async with fresh_connections() as http:
        agent = fresh("restart")
        [raw, *calls] = mcp_clients(http, proxy, agent, 21)
        session = await raw.initialize()
        await asyncio.gather(*(c.echo(session) for c in calls))
        before = await eventually(partial(requests_counted, proxy, 22))
        [victim] = worker_pids(proxy)[1]
        os.kill(victim, signal.SIGKILL)
        await eventually(partial(status_is, proxy, "/readyz", 503))
        await eventually(partial(status_is, proxy, "/readyz", 200))
        assert await admin_status(proxy, "/livez") == 200
        [old, new] = worker_pids(proxy)[1]
        assert (old, gone(old)) == (victim, True)
        assert new != victim
        [exited] = log_records(proxy, "worker exited; restarting", worker=1)
        assert (exited["pid"], exited["exit"]) == (victim, "signal SIGKILL")
        after_kill = await scrape(proxy)
        assert after_kill.value("agent_warden_worker_restarts_total", worker="1") == 1
        assert after_kill.value("agent_warden_worker_restarts_total", worker="0") == 0
        # What the dead worker counted stays in the sums.
        for name in ("agent_warden_requests_total", "agent_warden_upstream_latency_seconds_count"):
            assert total(after_kill, name) >= total(before, name), name
        replies = await asyncio.gather(
            *(c.echo(session, "again") for c in mcp_clients(http, proxy, agent, 20))
        )
    for reply in replies:
        assert reply.tool_text() == "again"
    # The session lived on in Redis through the restart; the new worker counts too.
    want = total(after_kill, "agent_warden_requests_total") + 20
    await eventually(partial(requests_counted, proxy, want))


async def test_workers_leave_when_the_supervisor_is_killed(
    run_proxy: RunProxy, mcp_upstream: str, store_url: StoreUrl
) -> None:
    proxy = await asyncio.to_thread(
        run_proxy, mcp_upstream, "--workers", "2", "--store", store_url()
    )
    pids = [p for ps in worker_pids(proxy).values() for p in ps]
    assert len(pids) == 2
    proxy.proc.kill()
    await asyncio.to_thread(proxy.proc.wait, 10)
    await eventually(lambda: all(gone(pid) for pid in pids))
    assert sorted(r["worker"] for r in log_records(proxy, "supervisor gone; draining")) == [0, 1]


async def test_sighup_reloads_the_policy_in_every_worker(
    run_proxy: RunProxy, mcp_upstream: str, store_url: StoreUrl, tmp_path: Path
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY.read_text())
    args = ("--workers", "2", "--policy", str(policy), "--store", store_url())
    proxy = await asyncio.to_thread(run_proxy, mcp_upstream, *args)
    loads = len(log_records(proxy, "policy reloaded"))
    proxy.proc.send_signal(signal.SIGHUP)

    def reloaded() -> list[dict[str, Any]]:
        records = [r for r in log_records(proxy, "policy reloaded") if r.get("reason") == "sighup"]
        return records if len(records) >= 3 else []

    records = await eventually(reloaded)
    assert sorted(r.get("worker", -1) for r in records) == [-1, 0, 1]  # supervisor, workers
    assert len(log_records(proxy, "policy reloaded")) == loads + 3
    metrics = await scrape(proxy)
    assert metrics.value("agent_warden_policy_reloads_total", result="success") == 1
    assert await admin_status(proxy, "/readyz") == 200


async def test_each_worker_writes_its_own_decision_log(
    run_proxy: RunProxy, mcp_upstream: str, store_url: StoreUrl, tmp_path: Path
) -> None:
    """With --workers, FILE.w<index> per worker (rotation renames files, which processes
    cannot share); together they hold one line per counted call."""
    log = tmp_path / "decisions.jsonl"
    args = ("--workers", str(WORKERS), "--store", store_url(), "--decision-log", str(log))
    proxy = run_proxy(mcp_upstream, *args)
    async with fresh_connections() as http:
        [raw, *calls] = mcp_clients(http, proxy, fresh("logged"), 21)
        session = await raw.initialize()
        await asyncio.gather(*(c.echo(session, f"n{i}") for i, c in enumerate(calls)))

    def written() -> list[str] | None:
        files = sorted(tmp_path.glob("decisions.jsonl.w*"))
        lines = [line for f in files for line in f.read_text().splitlines()]
        return lines if len(lines) == 20 else None

    lines = await eventually(written)
    assert lines is not None
    found = await asyncio.to_thread(lambda: list(tmp_path.iterdir()))
    names = {p.name for p in found if p.name.startswith("decisions")}
    assert names <= {"decisions.jsonl.w0", "decisions.jsonl.w1"}, names  # no shared FILE
    records, problems = read_decisions(lines)
    assert problems == []
    assert {(r.method, r.tool, r.decision) for r in records} == {("tools/call", "echo", "allow")}
    exposition = await scrape(proxy)  # the workers' counts, summed by the supervisor
    assert exposition.value("agent_warden_decision_log_lines_total", result="written") == 20
    assert exposition.value("agent_warden_decision_log_lines_total", result="failed") == 0
