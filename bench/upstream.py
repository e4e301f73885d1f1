"""Client CPU per request: aiohttp's ClientSession against proxy.dataplane.UpstreamPool.

Starts an upstream on loopback in its own process (nginx when installed, else a small
aiohttp app; ``--server`` picks), then drives it from this process with each client:
10k sequential requests and 10k spread over 10 concurrent workers, GET (a JSON answer)
and POST (a 97-byte ``tools/call`` body, a 91-byte JSON answer). Only this process's CPU
is measured (``time.process_time``); the upstream's is not. Each cell is the best of
``--repeat`` runs. Prints a Markdown table.

    .venv/bin/python bench/upstream.py [--requests 10000] [--repeat 3] [--server nginx]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

REPO_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_DIR))

from aiohttp import ClientSession, ClientTimeout, TCPConnector, web  # noqa: E402
from yarl import URL  # noqa: E402

from proxy.dataplane import UpstreamPool  # noqa: E402

REQUEST_BODY = (
    b'{"jsonrpc":"2.0","id":1,"method":"tools/call",'
    b'"params":{"name":"echo","arguments":{"text":"hi"}}}'
)
RESPONSE_BODY = (
    b'{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"ok"}],"isError":false}}'
)
HEADERS = (
    ("Content-Type", "application/json"),
    ("Accept", "application/json, text/event-stream"),
    ("X-Agent-Id", "bench"),
    ("Mcp-Session-Id", "0123456789abcdef0123456789abcdef"),
    ("X-Forwarded-For", "127.0.0.1"),
)
CONCURRENCY = 10
HEAD_TIMEOUT = 30.0

NGINX_CONF = """daemon off;
master_process off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    server_tokens off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            default_type application/json;
            return 200 '{response}';
        }}
    }}
}}
"""


# ---------------------------------------------------------------- the upstream


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def serve_aiohttp(port: int) -> None:
    """The upstream as an aiohttp app (run in a child process)."""

    async def answer(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=RESPONSE_BODY, content_type="application/json")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


@contextlib.contextmanager
def upstream(kind: str) -> Iterator[str]:
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="upstream-bench-") as tmp:
        if kind == "nginx":
            conf = Path(tmp) / "nginx.conf"
            conf.write_text(
                NGINX_CONF.format(prefix=tmp, port=port, response=RESPONSE_BODY.decode())
            )
            nginx = shutil.which("nginx") or "/usr/sbin/nginx"
            cmd = [nginx, "-p", tmp, "-c", str(conf), "-e", f"{tmp}/error.log"]
        else:
            cmd = [sys.executable, __file__, "--serve-aiohttp", str(port)]
        proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 15
            while True:
                if proc.poll() is not None:
                    raise SystemExit(f"the {kind} upstream exited with {proc.returncode}")
                try:
                    socket.create_connection(("127.0.0.1", port), 0.5).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise SystemExit(f"the {kind} upstream did not listen") from None
                    time.sleep(0.05)
            yield f"http://127.0.0.1:{port}"
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(10)


# ---------------------------------------------------------------- the clients

Call = Callable[[str, bytes | None], Awaitable[bytes]]


class AiohttpClient:
    """As proxy/app.py builds it and proxy/dataplane/line.py calls it (a deadline per call)."""

    def __init__(self, base: str) -> None:
        self.base = base

    async def __aenter__(self) -> Call:
        connector = TCPConnector(limit=100, keepalive_timeout=30.0, ttl_dns_cache=60)
        self.session = ClientSession(
            connector=connector,
            timeout=ClientTimeout(total=None, sock_connect=5.0, sock_read=300.0),
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Content-Type"),
            cookie_jar=None,
        )
        session = self.session
        base = self.base

        async def call(method: str, body: bytes | None) -> bytes:
            url = URL(base + "/mcp", encoded=True)
            async with asyncio.timeout(HEAD_TIMEOUT):
                resp = await session.request(
                    method, url, headers=HEADERS, data=body, allow_redirects=False
                )
            try:
                return await resp.read()
            finally:
                resp.release()

        return call

    async def __aexit__(self, *exc_info: object) -> None:
        await self.session.close()


class PoolClient:
    def __init__(self, base: str) -> None:
        self.pool = UpstreamPool(
            base, max_connections=100, connect_timeout=5.0, keepalive=30.0, read_timeout=300.0
        )

    async def __aenter__(self) -> Call:
        pool = self.pool

        async def call(method: str, body: bytes | None) -> bytes:
            resp = await pool.request(
                method,
                "/mcp",
                HEADERS,
                body,
                head_timeout=HEAD_TIMEOUT,
                retry_idempotent=body is None,
            )
            try:
                return await resp.read()
            finally:
                resp.release()

        return call

    async def __aexit__(self, *exc_info: object) -> None:
        await self.pool.close()


CLIENTS: dict[str, Callable[[str], AiohttpClient | PoolClient]] = {
    "aiohttp ClientSession": AiohttpClient,
    "UpstreamPool": PoolClient,
}


# ---------------------------------------------------------------- the runs


@dataclass(frozen=True, slots=True)
class Cell:
    cpu_s: float
    wall_s: float


async def drive(call: Call, method: str, requests: int, concurrency: int) -> None:
    body = REQUEST_BODY if method == "POST" else None

    async def worker(count: int) -> None:
        for _ in range(count):
            data = await call(method, body)
            if data != RESPONSE_BODY:
                raise SystemExit(f"unexpected answer: {data[:100]!r}")

    share, extra = divmod(requests, concurrency)
    await asyncio.gather(*(worker(share + (i < extra)) for i in range(concurrency)))


async def measure(
    base: str, client: str, method: str, requests: int, concurrency: int, repeat: int
) -> Cell:
    best: Cell | None = None
    async with CLIENTS[client](base) as call:
        await drive(call, method, min(1000, requests), concurrency)  # warm: pool, caches
        for _ in range(repeat):
            gc.collect()
            cpu, wall = time.process_time(), time.perf_counter()
            await drive(call, method, requests, concurrency)
            cell = Cell(time.process_time() - cpu, time.perf_counter() - wall)
            if best is None or cell.cpu_s < best.cpu_s:
                best = cell
    assert best is not None
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--server",
        choices=("nginx", "aiohttp"),
        default="nginx" if shutil.which("nginx") or Path("/usr/sbin/nginx").exists() else "aiohttp",
    )
    parser.add_argument("--serve-aiohttp", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_aiohttp:
        serve_aiohttp(args.serve_aiohttp)
        return
    per = args.requests / 1000  # µs per request = CPU-s per 1k requests x 1000
    rows: list[str] = []
    with upstream(args.server) as base:
        for shape, concurrency in (("sequential", 1), (f"{CONCURRENCY} concurrent", CONCURRENCY)):
            for method in ("GET", "POST"):
                cells = {
                    client: asyncio.run(
                        measure(base, client, method, args.requests, concurrency, args.repeat)
                    )
                    for client in CLIENTS
                }
                old, new = cells["aiohttp ClientSession"], cells["UpstreamPool"]
                rows.append(
                    f"| {shape} | {method} | {old.cpu_s:.3f} | {new.cpu_s:.3f} "
                    f"| {old.cpu_s / new.cpu_s:.2f}x | {old.cpu_s / per * 1e3:.0f} "
                    f"| {new.cpu_s / per * 1e3:.0f} | {args.requests / old.wall_s:,.0f} "
                    f"| {args.requests / new.wall_s:,.0f} |"
                )
                print(f"measured: {shape} {method}", file=sys.stderr, flush=True)
    n = f"{args.requests // 1000}k" if args.requests % 1000 == 0 else str(args.requests)
    print(
        f"\nClient CPU, {n} requests against {args.server} on loopback "
        f"(best of {args.repeat}; Python {sys.version.split()[0]}, {os.cpu_count()} CPUs)\n"
    )
    print(
        f"| shape | method | aiohttp CPU-s/{n} | pool CPU-s/{n} | aiohttp/pool "
        "| aiohttp µs/req | pool µs/req | aiohttp req/s | pool req/s |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
