"""The session store's cost: decision latency and proxy overhead, Redis against memory.

    .venv/bin/python bench/store.py [--requests N] [--concurrency C] [--sessions N]
                                    [--redis-sessions N] [--memory-only]

Starts its own redis-server (persistence off) on a free loopback port, an aiohttp
upstream answering a static JSON-RPC result, and agent-warden with each store in turn.
Prints a Markdown table, then what a session, a tombstone and a task link cost in memory
(the memory store under tracemalloc; Redis by its ``used_memory``), which sizes the
proxy-wide bounds (``max_sessions``, ``max_tombstones``, ``max_task_links``).
``--memory-only`` prints the memory store's section alone. Never part of the tests;
talks only to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
import urllib.request
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import ClientSession, TCPConnector, web

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from proxy.policy.limits import Call, Limits  # noqa: E402
from proxy.sessions import open_store  # noqa: E402
from proxy.sessions.base import Kind, SessionStore  # noqa: E402
from proxy.sessions.memory import MemoryStore  # noqa: E402
from proxy.sessions.redis import RedisStore  # noqa: E402

RESULT = b'{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"ok"}]}}'
POLICY = """version: 1
defaults:
  budget: {calls: 1000000000}
  rate_limit: {per_minute: 1000000000}
"""
# What the footprint's sessions look like: a budgeted tool counted once, a typical grant.
FOOTPRINT_LIMITS = Limits(
    ttl=86400.0, idle_timeout=900.0, max_per_agent=1000, tool_calls={"refund": 5}, per_minute=600
)
FOOTPRINT_CALLS = (Call(counted=True, tool="refund"), Call(counted=True))
MIXED = "live session: ⅓ protocol, ⅓ minted with a grant, ⅓ windows; a tool budget counted"
TOMBSTONE = "ended session (tombstone, for tombstone_ttl)"
LINK = "A2A task link (uuid task id, its context known)"
GRANT = json.dumps({"budget": {"calls": 20}, "tools": {"allow": ["lookup_*", "refund"]}})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def timed(n: int, op: Callable[[int], Awaitable[object]]) -> list[float]:
    samples = []
    for i in range(n):
        start = time.perf_counter()
        await op(i)
        samples.append(time.perf_counter() - start)
    return samples


async def decisions(store: SessionStore, n: int) -> dict[str, list[float]]:
    limits = Limits(calls=10**9, per_minute=10**9)
    now = time.time()
    token = await store.reserve("bench", limits, now)
    assert isinstance(token, str)
    await store.bind(token, "bench-session", "bench", "mcp", limits, now)
    call = (Call(counted=True, tool="echo"),)

    async def check(_: int) -> object:
        return await store.check("bench-session", "bench", call, limits, time.time())

    async def open_one(i: int) -> object:
        held = await store.reserve(f"agent-{i}", limits, time.time())
        assert isinstance(held, str)
        await store.bind(held, f"s-{i}", f"agent-{i}", "mcp", limits, time.time())
        return held

    return {"check": await timed(n, check), "reserve + bind": await timed(n // 5, open_one)}


async def load(url: str, n: int, concurrency: int) -> list[float]:
    headers = {"Content-Type": "application/json", "X-Agent-Id": "bench"}
    samples: list[float] = []
    async with ClientSession(connector=TCPConnector(limit=concurrency)) as http:
        init = {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {}}
        async with http.post(url, json=init, headers=headers) as resp:
            headers["Mcp-Session-Id"] = resp.headers["Mcp-Session-Id"]
        body = json.dumps(
            {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "echo"}}
        ).encode()

        async def one() -> None:
            start = time.perf_counter()
            async with http.post(url, data=body, headers=headers) as resp:
                await resp.read()
                assert resp.status == 200, resp.status
            samples.append(time.perf_counter() - start)

        async def worker(count: int) -> None:
            for _ in range(count):
                await one()

        await asyncio.gather(*(worker(n // concurrency) for _ in range(concurrency)))
    return samples


# --- memory per session ---------------------------------------------------------------------


async def open_mixed(store: SessionStore, i: int, agent: str, now: float) -> str:
    """Session ``i`` of a mix: a third protocol sessions, a third minted sessions with a
    grant, a third agent windows (one per agent, so their agents are their own)."""
    kind = i % 3
    if kind == 2:
        window = await store.window(f"{agent}-w{i}", "mcp", FOOTPRINT_LIMITS, now)
        assert isinstance(window, str), window
        session_id, agent = window, f"{agent}-w{i}"
    else:
        token = await store.reserve(agent, FOOTPRINT_LIMITS, now)
        assert isinstance(token, str), token
        if kind == 0:
            session_id = str(uuid.uuid4())
            await store.bind(token, session_id, agent, "mcp", FOOTPRINT_LIMITS, now)
        else:
            session_id = "awm-" + uuid.uuid4().hex + uuid.uuid4().hex[:11]  # 43 chars, as minted
            await store.bind(
                token, session_id, agent, "any", FOOTPRINT_LIMITS, now,
                proxy_issued=True, kind=Kind.MINTED, grant=GRANT,
            )  # fmt: skip
    outcome = await store.check(session_id, agent, FOOTPRINT_CALLS, FOOTPRINT_LIMITS, now + 1)
    assert outcome.allowed, outcome
    return session_id


async def traced(build: Callable[[], Awaitable[None]]) -> int:
    """Bytes ``build`` leaves allocated (tracemalloc)."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        await build()
        gc.collect()
        return tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()


async def memory_footprint(n: int) -> list[tuple[str, float]]:
    """Bytes each in the memory store: live sessions, tombstones, task links."""
    now = time.time()
    rows: list[tuple[str, float]] = []
    bounds = {"max_sessions": 2 * n, "max_tombstones": 2 * n, "max_task_links": 2 * n}
    store = MemoryStore(**bounds)

    async def mixed() -> None:
        for i in range(n):
            await open_mixed(store, i, f"agent-{i % 1000:04d}", now)

    used = await traced(mixed)
    rows.append((MIXED, used / n))
    ended = MemoryStore(**bounds)

    async def tombstones() -> None:  # what is left of each once closed and swept
        for i in range(n):
            session_id = await open_mixed(ended, i, f"agent-{i % 1000:04d}", now)
            assert await ended.close(session_id, now + 2)
        await ended.sweep(now + 1000)  # past the deadlines, within the hour: tombstones only

    used = await traced(tombstones)
    rows.append((TOMBSTONE, used / n))
    rotating = MemoryStore(**bounds)

    async def one_agent_each() -> None:
        for i in range(n):
            await open_mixed(rotating, 3 * i, f"rotating-{uuid.uuid4()}", now)

    used = await traced(one_agent_each)
    rows.append(("live protocol session, a new agent id each (rotating identities)", used / n))
    linked = MemoryStore(**bounds)
    contexts = [await open_mixed(linked, 3 * i, "a2a-agent", now) for i in range(1000)]

    async def links() -> None:
        for i in range(n):
            assert await linked.link_task(str(uuid.uuid4()), contexts[i % 1000], now) is None

    used = await traced(links)
    rows.append((LINK, used / n))
    return rows


def redis_used_memory(store: RedisStore) -> int:
    import redis as sync_redis

    kwargs = store._redis.connection_pool.connection_kwargs
    client = sync_redis.Redis(host=kwargs["host"], port=kwargs["port"], db=kwargs.get("db", 0))
    try:
        return int(client.info("memory")["used_memory"])
    finally:
        client.close()


async def redis_footprint(url: str, n: int) -> list[tuple[str, float]]:
    """Bytes each in Redis (``used_memory`` before and after), every key included."""
    now = time.time()
    bounds = {"max_sessions": 2 * n, "max_tombstones": 2 * n, "max_task_links": 2 * n}
    rows: list[tuple[str, float]] = []
    store = RedisStore.from_url(url.replace("prefix=bench:", "prefix=footprint:"), **bounds)
    try:
        before = redis_used_memory(store)
        ids = [await open_mixed(store, i, f"agent-{i % 1000:04d}", now) for i in range(n)]
        after = redis_used_memory(store)
        rows.append((MIXED, (after - before) / n))
        for session_id in ids:
            assert await store.close(session_id, now + 2)
        await store.sweep(now + 1000)
        ended = redis_used_memory(store)
        rows.append((TOMBSTONE, (ended - before) / n))
        contexts = [await open_mixed(store, 3 * i, "a2a-agent", now) for i in range(100)]
        linked_from = redis_used_memory(store)
        for i in range(n):
            assert await store.link_task(str(uuid.uuid4()), contexts[i % 100], now) is None
        rows.append((LINK, (redis_used_memory(store) - linked_from) / n))
    finally:
        await store.aclose()
    return rows


def print_footprint(rows: list[tuple[str, str, int, float]]) -> None:
    print()
    print("| store | memory per | sessions measured | bytes each |")
    print("|---|---|--:|--:|")
    for store, what, n, each in rows:
        print(f"| {store} | {what} | {n} | {each:.0f} |")


def spawn(argv: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL)


def wait_ready(admin: str, proc: subprocess.Popen[bytes]) -> None:
    for _ in range(200):
        if proc.poll() is not None:
            raise SystemExit(f"agent-warden exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(admin + "/readyz", timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise SystemExit("agent-warden did not become ready")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--sessions", type=int, default=100_000, help="memory store footprint")
    parser.add_argument("--redis-sessions", type=int, default=20_000, help="Redis footprint")
    parser.add_argument("--memory-only", action="store_true", help="the memory footprint only")
    args = parser.parse_args()
    footprint = [
        ("memory", what, args.sessions, each)
        for what, each in await memory_footprint(args.sessions)
    ]
    if args.memory_only:
        print_footprint(footprint)
        return
    if shutil.which("redis-server") is None:
        raise SystemExit("redis-server not found: sh scripts/system-deps.sh installs it")
    tmp = Path(tempfile.mkdtemp(prefix="aw-store-bench-"))
    redis_port = free_port()
    redis = spawn(
        ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(tmp)],
    )  # fmt: skip
    upstream_app = web.Application()

    async def answer(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(
            body=RESULT, content_type="application/json", headers={"Mcp-Session-Id": "up-1"}
        )

    upstream_app.router.add_post("/mcp", answer)
    runner = web.AppRunner(upstream_app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    policy = tmp / "policy.yaml"
    policy.write_text(POLICY)
    stores = {"memory": "memory", "redis": f"redis://127.0.0.1:{redis_port}/0?prefix=bench:"}
    rows: list[str] = []
    try:
        await asyncio.sleep(0.3)
        for name, url in stores.items():
            store = open_store(url)
            try:
                for op, samples in (await decisions(store, args.requests)).items():
                    us = [s * 1e6 for s in samples]
                    rows.append(
                        f"| {name} | decision: {op} | {percentile(us, 0.5):.0f} µs | "
                        f"{percentile(us, 0.99):.0f} µs | — |"
                    )
            finally:
                await store.aclose()
        footprint += [
            ("redis", what, args.redis_sessions, each)
            for what, each in await redis_footprint(stores["redis"], args.redis_sessions)
        ]
        for name, url in stores.items():
            port, admin = free_port(), free_port()
            proc = spawn(
                [sys.executable, "-m", "proxy", "run", "--upstream", f"http://127.0.0.1:{site.port}",
                 "--listen", f"127.0.0.1:{port}", "--admin", f"127.0.0.1:{admin}",
                 "--policy", str(policy), "--store", url, "--log-level", "error"],
            )  # fmt: skip
            try:
                wait_ready(f"http://127.0.0.1:{admin}", proc)
                await load(f"http://127.0.0.1:{port}/mcp", 500, args.concurrency)  # warm up
                before = cpu_seconds(proc.pid)
                samples = await load(
                    f"http://127.0.0.1:{port}/mcp", args.requests, args.concurrency
                )
                cpu = (cpu_seconds(proc.pid) - before) / len(samples) * 1000
                ms = [s * 1e3 for s in samples]
                rows.append(
                    f"| {name} | request through the proxy (c={args.concurrency}) | "
                    f"{statistics.median(ms):.2f} ms | {percentile(ms, 0.99):.2f} ms | "
                    f"{cpu:.3f} |"
                )
            finally:
                proc.terminate()
                proc.wait(30)
    finally:
        await runner.cleanup()
        redis.terminate()
        redis.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)
    print("| store | what | p50 | p99 | proxy CPU s per 1000 req |")
    print("|---|---|--:|--:|--:|")
    print("\n".join(rows))
    print_footprint(footprint)


if __name__ == "__main__":
    asyncio.run(main())
