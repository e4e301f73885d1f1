"""The session store's cost: decision latency and proxy overhead, Redis against memory.

    .venv/bin/python bench/store.py [--requests N] [--concurrency C]

Starts its own redis-server (persistence off) on a free loopback port, an aiohttp
upstream answering a static JSON-RPC result, and agent-warden with each store in turn.
Prints a Markdown table; never part of the tests; talks only to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import ClientSession, TCPConnector, web

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from proxy.sessions import open_store  # noqa: E402
from proxy.sessions.base import Call, Limits, SessionStore  # noqa: E402

RESULT = b'{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"ok"}]}}'
POLICY = """version: 1
defaults:
  budget: {calls: 1000000000}
  rate_limit: {per_minute: 1000000000}
"""


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
    args = parser.parse_args()
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


if __name__ == "__main__":
    asyncio.run(main())
