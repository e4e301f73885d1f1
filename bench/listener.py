"""Server CPU per request: aiohttp's low-level ``web.Server`` against
proxy.dataplane.server.HttpServer, each answering with a trivial handler.

Each server runs in its own process; this process drives it with h2load (HTTP/1.1,
when ``command -v h2load`` finds it; bench/install.sh installs it) or else an aiohttp
client, ``--requests`` requests over 10 keep-alive connections, GET and POST (a 97-byte
``tools/call`` body, a 91-byte JSON answer), and also with 10 pipelined requests per
connection when h2load drives. Only the server's CPU is measured (its utime + stime from
/proc, before and after); each cell is the best of ``--repeat`` runs, in CPU-seconds
per 10k requests. Prints a Markdown table.

    .venv/bin/python bench/listener.py [--requests 10000] [--repeat 3] [--client aiohttp]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_DIR))

from aiohttp import ClientSession, TCPConnector, web  # noqa: E402
from aiohttp.web_request import BaseRequest  # noqa: E402

from proxy.dataplane.server import HttpServer, ServerRequest, ServerResponse  # noqa: E402

REQUEST_BODY = (
    b'{"jsonrpc":"2.0","id":1,"method":"tools/call",'
    b'"params":{"name":"echo","arguments":{"text":"hi"}}}'
)
RESPONSE_BODY = (
    b'{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"ok"}],"isError":false}}'
)
CONCURRENCY = 10
SERVERS = ("aiohttp web.Server", "HttpServer")


# --- the servers (in a child process) -------------------------------------------------------


async def _serve_aiohttp(port: int) -> None:
    async def handler(request: BaseRequest) -> web.StreamResponse:
        if request.body_exists:
            await request.read()
        return web.Response(body=RESPONSE_BODY, content_type="application/json")

    server = web.Server(handler, access_log=None)
    loop = asyncio.get_running_loop()
    await loop.create_server(server, "127.0.0.1", port, backlog=1024)
    await asyncio.Event().wait()


async def _serve_warden(port: int) -> None:
    length = str(len(RESPONSE_BODY))

    async def handler(request: ServerRequest, response: ServerResponse) -> None:
        if request.body_exists:
            await request.read()
        response.start(
            200, "OK", [("Content-Type", "application/json"), ("Content-Length", length)]
        )
        await response.write_eof(RESPONSE_BODY)

    def on_error(status: int) -> tuple[int, list[tuple[str, str]], bytes]:
        return status, [], b""

    server = HttpServer(
        handler,
        max_connections=1000,
        header_timeout=10.0,
        keepalive_timeout=75.0,
        max_body_size=1 << 20,
        on_error=on_error,
    )
    await server.start("127.0.0.1", port)
    await asyncio.Event().wait()


def serve(kind: str, port: int) -> None:
    gc.freeze()
    asyncio.run(_serve_aiohttp(port) if kind == "aiohttp" else _serve_warden(port))


# --- the driver -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_listening(port: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError("server did not start")


def drive_h2load(port: int, method: str, requests: int, pipeline: int, body: str) -> float:
    command = [
        "h2load",
        "--h1",
        "-n",
        str(requests),
        "-c",
        str(CONCURRENCY),
        "-m",
        str(pipeline),
        "-H",
        "Content-Type: application/json",
    ]
    if method == "POST":
        command += ["-d", body]
    command.append(f"http://127.0.0.1:{port}/mcp")
    started = time.monotonic()
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    elapsed = time.monotonic() - started
    ok = re.search(r"(\d+) succeeded", out)
    twos = re.search(r"status codes: (\d+) 2xx", out)
    if not ok or not twos or int(ok.group(1)) != requests or int(twos.group(1)) != requests:
        raise RuntimeError(f"not every request answered 2xx:\n{out}")
    return elapsed


async def _drive_aiohttp(port: int, method: str, requests: int) -> None:
    url = f"http://127.0.0.1:{port}/mcp"
    connector = TCPConnector(limit=CONCURRENCY)
    async with ClientSession(connector=connector) as session:

        async def worker(count: int) -> None:
            for _ in range(count):
                data = REQUEST_BODY if method == "POST" else None
                async with session.request(method, url, data=data) as resp:
                    await resp.read()

        share = requests // CONCURRENCY
        await asyncio.gather(*(worker(share) for _ in range(CONCURRENCY)))


def measure(kind: str, method: str, requests: int, pipeline: int, client: str, body: str) -> float:
    port = free_port()
    child = subprocess.Popen(
        [sys.executable, __file__, "--serve", kind, "--port", str(port)],
        stdout=subprocess.DEVNULL,
    )
    try:
        wait_listening(port)
        if client == "h2load":  # warm up
            drive_h2load(port, method, 1000, pipeline, body)
        else:
            asyncio.run(_drive_aiohttp(port, method, 1000))
        before = cpu_seconds(child.pid)
        if client == "h2load":
            drive_h2load(port, method, requests, pipeline, body)
        else:
            asyncio.run(_drive_aiohttp(port, method, requests))
        spent = cpu_seconds(child.pid) - before
    finally:
        child.terminate()
        child.wait()
    return spent * 10_000 / requests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--client", choices=("h2load", "aiohttp"), default=None)
    parser.add_argument("--serve", choices=("aiohttp", "warden"), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.port)
        return
    client = args.client or ("h2load" if shutil.which("h2load") else "aiohttp")
    shapes = [(1, "GET"), (1, "POST")]
    if client == "h2load":
        shapes += [(10, "GET"), (10, "POST")]
    with tempfile.NamedTemporaryFile(suffix=".json") as body_file:
        body_file.write(REQUEST_BODY)
        body_file.flush()
        rows = []
        for pipeline, method in shapes:
            cells = []
            for kind in ("aiohttp", "warden"):
                best = min(
                    measure(kind, method, args.requests, pipeline, client, body_file.name)
                    for _ in range(args.repeat)
                )
                cells.append(best)
            label = f"{method}, {CONCURRENCY} conns" + (
                f", pipelined x{pipeline}" if pipeline > 1 else ""
            )
            ratio = cells[1] / cells[0] if cells[0] else float("nan")
            rows.append(f"| {label} | {cells[0]:.3f} | {cells[1]:.3f} | {ratio:.2f} |")
            print(f"measured: {label}", file=sys.stderr, flush=True)
    print(
        f"\nServer CPU-seconds per 10k requests (client: {client}, "
        f"best of {args.repeat}, {args.requests} requests)\n"
    )
    print(f"| shape | {SERVERS[0]} | {SERVERS[1]} | ratio |")
    print("|---|---:|---:|---:|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
