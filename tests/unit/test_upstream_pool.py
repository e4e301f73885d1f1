"""proxy.dataplane.upstream: the pooled HTTP/1.1 client, against real servers on loopback.

An aiohttp app plays the well-behaved upstream (and counts its connections by the
client's port); a raw asyncio server answers scripted bytes for the malformed cases.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from proxy.dataplane import (
    UpstreamCut,
    UpstreamPool,
    UpstreamReadTimeout,
    UpstreamResponse,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from proxy.dataplane.upstream import HIGH_WATER

LOOPBACK = "127.0.0.1"
HEAD_TIMEOUT = 5.0
SHORT = 0.2  # for the tests about a deadline
SSE_EVENTS = (b"event: message\ndata: one\n\n", b"event: message\ndata: two\n\n")
LARGE = bytes(range(256)) * (32 * 1024 * 1024 // 256)  # 32 MiB: more than socket buffers hold


# --- the aiohttp upstream -----------------------------------------------------------------


class Upstream:
    """An aiohttp app on loopback that notes which client port every request came on."""

    def __init__(self) -> None:
        self.peers: list[int] = []
        self.transports: dict[int, asyncio.Transport] = {}
        self.seen: list[dict[str, Any]] = []
        self.drop_reused = False  # next request on a used connection: closed, unanswered
        self.sse_gate = asyncio.Event()
        self.release = asyncio.Event()  # ends the handlers that wait
        self.url = ""
        self._runner: web.AppRunner | None = None

    @property
    def connections(self) -> int:
        return len(set(self.peers))

    async def start(self, ssl_context: ssl.SSLContext | None = None) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.middlewares.append(self._note)
        app.router.add_get("/json", self._json)
        app.router.add_route("*", "/echo", self._echo)
        app.router.add_route("*", "/prefix/echo", self._echo)
        app.router.add_get("/sse", self._sse)
        app.router.add_get("/large", self._large)
        app.router.add_get("/large-chunked", self._large_chunked)
        app.router.add_get("/nocontent", self._no_content)
        app.router.add_get("/notmodified", self._not_modified)
        app.router.add_get("/close", self._close)
        app.router.add_get("/slow", self._slow)
        app.router.add_post("/early", self._early)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, LOOPBACK, 0, ssl_context=ssl_context)
        await site.start()
        server = site._server
        assert isinstance(server, asyncio.Server)
        port = server.sockets[0].getsockname()[1]
        self.url = f"{'https' if ssl_context else 'http'}://{LOOPBACK}:{port}"

    async def stop(self) -> None:
        self.release.set()
        self.sse_gate.set()
        if self._runner is not None:
            await self._runner.cleanup()

    @web.middleware
    async def _note(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        transport = request.transport
        assert transport is not None
        port = transport.get_extra_info("peername")[1]
        reused = port in self.peers
        self.peers.append(port)
        self.transports[port] = transport  # type: ignore[assignment]
        if self.drop_reused and reused:
            self.drop_reused = False
            transport.abort()  # as if closed while idle, just as the request went out
            return web.Response()
        return await handler(request)

    async def _json(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "path": request.raw_path})

    async def _echo(self, request: web.Request) -> web.Response:
        try:
            body = await request.read()
        except ConnectionError:
            return web.Response(status=400)  # the client gave up mid-body
        self.seen.append(
            {
                "method": request.method,
                "path": request.raw_path,
                "headers": list(request.raw_headers),
                "body": body,
            }
        )
        return web.Response(body=body, content_type="application/octet-stream")

    async def _sse(self, request: web.Request) -> web.StreamResponse:
        out = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await out.prepare(request)
        await out.write(SSE_EVENTS[0])
        await self.sse_gate.wait()  # the client has read the first event by now
        await out.write(SSE_EVENTS[1])
        await out.write_eof()
        return out

    async def _large(self, request: web.Request) -> web.Response:
        return web.Response(body=LARGE, content_type="application/octet-stream")

    async def _large_chunked(self, request: web.Request) -> web.StreamResponse:
        out = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        await out.prepare(request)
        view = memoryview(LARGE)
        for start in range(0, len(LARGE), 256 * 1024):
            await out.write(view[start : start + 256 * 1024])
        await out.write_eof()
        return out

    async def _no_content(self, request: web.Request) -> web.Response:
        return web.Response(status=204)

    async def _not_modified(self, request: web.Request) -> web.Response:
        return web.Response(status=304, headers={"ETag": '"v1"'})

    async def _close(self, request: web.Request) -> web.Response:
        resp = web.Response(text="bye")
        resp.force_close()
        return resp

    async def _slow(self, request: web.Request) -> web.Response:
        await self.release.wait()
        return web.Response(text="late")

    async def _early(self, request: web.Request) -> web.Response:
        resp = web.Response(status=413, text="too large")  # answered unread
        resp.force_close()
        return resp


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    server = Upstream()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def make_pool() -> AsyncIterator[Callable[..., UpstreamPool]]:
    pools: list[UpstreamPool] = []

    def make(base: str, **kwargs: Any) -> UpstreamPool:
        options: dict[str, Any] = {
            "max_connections": 10,
            "connect_timeout": 2.0,
            "keepalive": 30.0,
            "read_timeout": 5.0,
        }
        options.update(kwargs)
        pool = UpstreamPool(base, **options)
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        await pool.close()


async def get(pool: UpstreamPool, target: str, **kwargs: Any) -> UpstreamResponse:
    kwargs.setdefault("head_timeout", HEAD_TIMEOUT)
    kwargs.setdefault("retry_idempotent", True)
    return await pool.request("GET", target, [("Accept", "*/*")], None, **kwargs)


async def fetch(pool: UpstreamPool, method: str, target: str, body: Any = None) -> bytes:
    resp = await pool.request(
        method, target, [], body, head_timeout=HEAD_TIMEOUT, retry_idempotent=False
    )
    try:
        return await resp.read()
    finally:
        resp.release()


async def until(condition: Callable[[], bool], spins: int = 10_000) -> None:
    """Let the loop run until ``condition`` holds (no wall-clock wait)."""
    for _ in range(spins):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition not reached")


async def pieces(data: bytes, size: int = 16 * 1024) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


# --- the well-behaved upstream ------------------------------------------------------------


async def test_json_and_keep_alive_reuse(upstream: Upstream, make_pool: Any) -> None:
    pool = make_pool(upstream.url)
    for i in range(5):
        resp = await get(pool, f"/json?i={i}")
        assert resp.status == 200
        assert resp.reason == "OK"
        assert resp.content_type == "application/json"
        assert len(await resp.read()) == resp.content_length
        resp.release()
    assert upstream.connections == 1
    assert pool.open_connections == 1
    assert pool.idle_connections == 1


async def test_body_and_headers(upstream: Upstream, make_pool: Any) -> None:
    pool = make_pool(upstream.url)
    resp = await get(pool, "/json?a=1&b=%20")
    assert json.loads(await resp.read()) == {"ok": True, "path": "/json?a=1&b=%20"}
    assert resp.headers["Content-Type"].startswith("application/json")
    assert resp.content_length == int(resp.headers["Content-Length"])
    assert resp.request_headers["Host"] == upstream.url.removeprefix("http://")
    assert resp.request_headers["accept"] == "*/*"
    resp.release()


async def test_request_bodies_and_framing(upstream: Upstream, make_pool: Any) -> None:
    pool = make_pool(upstream.url)
    small = b'{"jsonrpc":"2.0","id":1,"method":"ping"}'
    assert await fetch(pool, "POST", "/echo", small) == small
    big = LARGE[: 3 * 1024 * 1024]
    assert await fetch(pool, "PUT", "/echo", big) == big
    assert await fetch(pool, "POST", "/echo", pieces(big)) == big  # chunked
    resp = await pool.request(
        "POST",
        "/echo",
        [("X-Trace", "1")],
        pieces(small, 7),
        head_timeout=HEAD_TIMEOUT,
        retry_idempotent=False,
        body_length=len(small),
    )
    assert await resp.read() == small
    assert resp.request_headers["Content-Length"] == str(len(small))
    resp.release()
    assert await fetch(pool, "POST", "/echo") == b""
    framing = [
        {k.decode().lower(): v.decode() for k, v in seen["headers"]} for seen in upstream.seen
    ]
    assert framing[0]["content-length"] == str(len(small))
    assert framing[1]["content-length"] == str(len(big))
    assert framing[2]["transfer-encoding"] == "chunked"
    assert "content-length" not in framing[2]
    assert framing[3]["content-length"] == str(len(small))
    assert framing[3]["x-trace"] == "1"
    assert framing[4]["content-length"] == "0"
    assert upstream.connections == 1


async def test_base_path_prefix_and_raw_target(upstream: Upstream, make_pool: Any) -> None:
    pool = make_pool(upstream.url + "/prefix/")
    assert await fetch(pool, "GET", "/echo?x=%2F&y") == b""
    assert upstream.seen[0]["path"] == "/prefix/echo?x=%2F&y"


async def test_sse_streams_event_by_event(upstream: Upstream, make_pool: Any) -> None:
    pool = make_pool(upstream.url)
    resp = await get(pool, "/sse")
    assert resp.content_type == "text/event-stream"
    assert resp.headers["Transfer-Encoding"] == "chunked"
    assert resp.content_length is None
    # The second event is written only once the first one has been read here.
    assert await resp.readany() == SSE_EVENTS[0]
    upstream.sse_gate.set()
    assert await resp.read() == SSE_EVENTS[1]
    assert await resp.readany() == b""
    resp.release()
    resp = await get(pool, "/json")
    await resp.read()
    resp.release()
    assert upstream.connections == 1


@pytest.mark.parametrize("path", ["/large", "/large-chunked"])
async def test_large_body_with_back_pressure(upstream: Upstream, make_pool: Any, path: str) -> None:
    pool = make_pool(upstream.url)
    resp = await get(pool, path)
    conn = resp._conn
    assert conn is not None
    # Nothing read: the pool stops reading the socket instead of buffering 32 MiB.
    await until(lambda: conn.read_paused)
    for _ in range(100):
        await asyncio.sleep(0)
    assert resp._size <= HIGH_WATER + 256 * 1024
    got = bytearray()
    while chunk := await resp.readany():
        assert len(chunk) <= 256 * 1024
        got += chunk
    assert got == LARGE
    resp.release()
    resp = await get(pool, "/json")
    await resp.read()
    resp.release()
    assert upstream.connections == 1


async def test_head_204_304_have_no_body(upstream: Upstream, make_pool: Any) -> None:
    pool = make_pool(upstream.url)
    resp = await pool.request(
        "HEAD", "/json", [], None, head_timeout=HEAD_TIMEOUT, retry_idempotent=True
    )
    assert resp.status == 200
    assert resp.content_length is not None
    assert resp.content_length > 0
    assert await resp.read() == b""
    resp.release()
    for path, status in (("/nocontent", 204), ("/notmodified", 304)):
        resp = await get(pool, path)
        assert resp.status == status
        assert await resp.read() == b""
        resp.release()
    resp = await get(pool, "/json")
    assert json.loads(await resp.read())["ok"] is True
    resp.release()
    assert upstream.connections == 1  # each answer ended where it should


async def test_connection_close_is_honoured(upstream: Upstream, make_pool: Any) -> None:
    pool = make_pool(upstream.url)
    resp = await get(pool, "/close")
    assert await resp.read() == b"bye"
    resp.release()
    assert pool.idle_connections == 0
    await until(lambda: pool.open_connections == 0)
    resp = await get(pool, "/json")
    await resp.read()
    resp.release()
    assert upstream.connections == 2


async def test_lifo_reuses_the_most_recent(upstream: Upstream, make_pool: Any) -> None:
    pool = make_pool(upstream.url)
    first, second = await asyncio.gather(get(pool, "/json"), get(pool, "/json"))
    assert upstream.connections == 2
    ports = []
    for resp in (first, second):
        await resp.read()
        assert resp._conn is not None
        assert resp._conn.transport is not None
        ports.append(resp._conn.transport.get_extra_info("sockname")[1])
    first.release()
    second.release()  # the most recent idle one
    assert pool.idle_connections == 2
    for _ in range(3):
        resp = await get(pool, "/json")
        await resp.read()
        resp.release()
        assert upstream.peers[-1] == ports[1]
    assert upstream.connections == 2


async def test_max_connections_bounds_and_queues(upstream: Upstream, make_pool: Any) -> None:
    pool = make_pool(upstream.url, max_connections=3)

    async def one(i: int) -> bytes:
        resp = await get(pool, f"/json?i={i}")
        try:
            return await resp.read()
        finally:
            resp.release()

    bodies = await asyncio.gather(*(one(i) for i in range(30)))
    assert len(bodies) == 30
    assert upstream.connections <= 3
    assert pool.open_connections <= 3


async def test_waiting_for_a_connection_is_bounded(upstream: Upstream, make_pool: Any) -> None:
    pool = make_pool(upstream.url, max_connections=1)
    held = await get(pool, "/sse")  # the only connection, busy
    with pytest.raises(UpstreamTimeout):
        await get(pool, "/json", head_timeout=SHORT)
    upstream.sse_gate.set()
    await held.read()
    held.release()
    resp = await get(pool, "/json")  # the place is free again
    assert resp.status == 200
    resp.release()


async def test_slow_head_times_out(upstream: Upstream, make_pool: Any) -> None:
    pool = make_pool(upstream.url)
    with pytest.raises(UpstreamTimeout):
        await get(pool, "/slow", head_timeout=SHORT)
    await until(lambda: pool.open_connections == 0)  # that connection is not reused


async def test_cancelled_request_closes_its_connection(upstream: Upstream, make_pool: Any) -> None:
    pool = make_pool(upstream.url)
    task = asyncio.create_task(get(pool, "/slow"))
    await until(lambda: len(upstream.peers) == 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert pool.open_connections == 0  # the upstream call ends with its caller
    await until(lambda: all(t.is_closing() for t in upstream.transports.values()))


async def test_cancelled_waiter_gives_its_place_back(upstream: Upstream, make_pool: Any) -> None:
    pool = make_pool(upstream.url, max_connections=1)
    held = await get(pool, "/json")
    waiting = asyncio.create_task(get(pool, "/json"))
    await until(lambda: len(pool._waiters) == 1)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await held.read()
    held.release()
    assert pool.idle_connections == 1
    assert not pool._waiters
    resp = await get(pool, "/json")
    await resp.read()
    resp.release()
    assert upstream.connections == 1


async def test_stale_connection_retried_for_idempotent(upstream: Upstream, make_pool: Any) -> None:
    pool = make_pool(upstream.url)
    resp = await get(pool, "/json")
    await resp.read()
    resp.release()
    upstream.drop_reused = True
    resp = await get(pool, "/json", retry_idempotent=True)
    assert resp.status == 200
    assert json.loads(await resp.read())["ok"] is True
    resp.release()
    assert len(upstream.peers) == 3  # the dropped request, then its retry
    assert upstream.connections == 2  # ... on a fresh connection


async def test_stale_connection_not_retried_otherwise(upstream: Upstream, make_pool: Any) -> None:
    pool = make_pool(upstream.url)
    assert await fetch(pool, "POST", "/echo", b"one") == b"one"
    upstream.drop_reused = True
    with pytest.raises(UpstreamUnavailable):
        await pool.request(
            "POST", "/echo", [], b"two", head_timeout=HEAD_TIMEOUT, retry_idempotent=False
        )
    assert [seen["body"] for seen in upstream.seen] == [b"one"]
    assert upstream.connections == 1


async def test_idle_connection_closed_by_upstream_is_dropped(
    upstream: Upstream, make_pool: Any
) -> None:
    pool = make_pool(upstream.url)
    resp = await get(pool, "/json")
    await resp.read()
    resp.release()
    for transport in upstream.transports.values():
        transport.close()
    await until(lambda: pool.open_connections == 0)
    resp = await get(pool, "/json", retry_idempotent=False)
    assert resp.status == 200
    resp.release()
    assert upstream.connections == 2


async def test_idle_connections_closed_after_keepalive(upstream: Upstream, make_pool: Any) -> None:
    pool = make_pool(upstream.url, keepalive=SHORT)
    resp = await get(pool, "/json")
    await resp.read()
    resp.release()
    assert pool.idle_connections == 1
    for _ in range(50):  # this test is about the idle deadline
        if pool.open_connections == 0:
            break
        await asyncio.sleep(SHORT / 4)
    assert pool.idle_connections == 0
    assert pool.open_connections == 0


async def test_early_answer_stops_a_streamed_body(upstream: Upstream, make_pool: Any) -> None:
    pool = make_pool(upstream.url)

    async def endless() -> AsyncIterator[bytes]:
        while True:
            yield b"x" * 65536

    resp = await pool.request(
        "POST", "/early", [], endless(), head_timeout=HEAD_TIMEOUT, retry_idempotent=False
    )
    assert resp.status == 413
    assert await resp.read() == b"too large"
    resp.release()
    assert pool.idle_connections == 0  # the body was not all sent: not reusable
    await until(lambda: all(t.is_closing() for t in upstream.transports.values()))


async def test_early_answer_while_the_body_stalls(upstream: Upstream, make_pool: Any) -> None:
    pool = make_pool(upstream.url)
    stalled = asyncio.Event()
    finished: list[BaseException] = []

    async def slow_client() -> AsyncIterator[bytes]:
        yield b"x"
        try:
            stalled.set()
            await asyncio.Event().wait()  # the client stops sending
            yield b"y"
        except BaseException as exc:
            finished.append(exc)
            raise

    resp = await pool.request(
        "POST", "/early", [], slow_client(), head_timeout=HEAD_TIMEOUT, retry_idempotent=False
    )
    assert resp.status == 413  # answered at once, not when the body would have ended
    assert await resp.read() == b"too large"
    resp.release()
    assert stalled.is_set()
    assert [type(exc) for exc in finished] == [asyncio.CancelledError]
    current = asyncio.current_task()
    assert current is not None
    assert current.cancelling() == 0  # the interruption was taken back


async def test_head_deadline_while_the_body_stalls(scripted: Any, make_pool: Any) -> None:
    url = await scripted(answer(keep_open=True))  # reads the head, never answers

    async def slow_client() -> AsyncIterator[bytes]:
        yield b"x"
        await asyncio.Event().wait()
        yield b"y"

    pool = make_pool(url)
    with pytest.raises(UpstreamTimeout):
        await pool.request(
            "POST", "/", [], slow_client(), head_timeout=SHORT, retry_idempotent=False
        )
    current = asyncio.current_task()
    assert current is not None
    assert current.cancelling() == 0
    await until(lambda: pool.open_connections == 0)


async def test_caller_cancellation_while_streaming_wins(upstream: Upstream, make_pool: Any) -> None:
    pool = make_pool(upstream.url)
    started = asyncio.Event()

    async def slow_client() -> AsyncIterator[bytes]:
        yield b"x"
        started.set()
        await asyncio.Event().wait()
        yield b"y"

    task = asyncio.create_task(
        pool.request(
            "POST", "/echo", [], slow_client(), head_timeout=HEAD_TIMEOUT, retry_idempotent=False
        )
    )
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await until(lambda: pool.open_connections == 0)


async def test_body_iterator_errors_propagate(upstream: Upstream, make_pool: Any) -> None:
    pool = make_pool(upstream.url)

    class Overflow(Exception):
        pass

    async def too_big() -> AsyncIterator[bytes]:
        yield b"a"
        raise Overflow

    with pytest.raises(Overflow):
        await pool.request(
            "POST", "/echo", [], too_big(), head_timeout=HEAD_TIMEOUT, retry_idempotent=False
        )
    await until(lambda: pool.open_connections == 0)


async def test_release_before_the_end_closes(upstream: Upstream, make_pool: Any) -> None:
    pool = make_pool(upstream.url)
    resp = await get(pool, "/large")
    await resp.readany()
    resp.release()
    assert pool.idle_connections == 0
    with pytest.raises(UpstreamCut):
        await resp.read()
    await until(lambda: pool.open_connections == 0)


async def test_headers_with_line_breaks_refused(upstream: Upstream, make_pool: Any) -> None:
    pool = make_pool(upstream.url)
    with pytest.raises(ValueError, match="CR, LF"):
        await pool.request(
            "GET", "/json", [("X-A", "1\r\nX-B: 2")], None, head_timeout=1, retry_idempotent=True
        )
    with pytest.raises(ValueError, match="CR, LF"):
        await pool.request("GET", "/a b", [], None, head_timeout=1, retry_idempotent=True)


async def test_connect_refused(make_pool: Any) -> None:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        port = sock.getsockname()[1]  # bound, never listening: refused
        pool = make_pool(f"http://{LOOPBACK}:{port}")
        with pytest.raises(UpstreamUnavailable):
            await get(pool, "/json")
    assert pool.open_connections == 0


async def test_closed_pool_refuses(upstream: Upstream, make_pool: Any) -> None:
    pool = make_pool(upstream.url)
    resp = await get(pool, "/json")
    await resp.read()
    resp.release()
    await pool.close()
    assert pool.open_connections == 0
    with pytest.raises(UpstreamUnavailable):
        await get(pool, "/json")


# --- https ----------------------------------------------------------------------------------


def _self_signed(directory: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "upstream")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(LOOPBACK))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert_path, key_path)
    return server, ssl.create_default_context(cafile=str(cert_path))


async def test_https_upstream(tmp_path: Path, make_pool: Any) -> None:
    server_ctx, client_ctx = _self_signed(tmp_path)
    upstream = Upstream()
    await upstream.start(server_ctx)
    try:
        pool = make_pool(upstream.url, ssl=client_ctx)
        for _ in range(3):
            resp = await get(pool, "/json")
            assert json.loads(await resp.read())["ok"] is True
            resp.release()
        assert await fetch(pool, "POST", "/echo", pieces(LARGE[:300_000])) == LARGE[:300_000]
        assert upstream.connections == 1
        untrusted = make_pool(upstream.url)  # the system store does not know this cert
        with pytest.raises(UpstreamUnavailable):
            await get(untrusted, "/json")
    finally:
        await upstream.stop()


# --- scripted (malformed) upstreams ---------------------------------------------------------


Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture
async def scripted() -> AsyncIterator[Callable[[Script], Awaitable[str]]]:
    servers: list[asyncio.Server] = []
    writers: list[asyncio.StreamWriter] = []

    async def start(script: Script) -> str:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writers.append(writer)
            try:
                await script(reader, writer)
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.close()

        server = await asyncio.start_server(handle, LOOPBACK, 0)
        servers.append(server)
        return f"http://{LOOPBACK}:{server.sockets[0].getsockname()[1]}"

    yield start
    for writer in writers:
        writer.close()
    for server in servers:
        server.close()
        await server.wait_closed()


def answer(*parts: bytes, keep_open: bool = False) -> Script:
    """Read one request head, send ``parts`` one write each, then close (or stay open)."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        for part in parts:
            writer.write(part)
            await writer.drain()
        if keep_open:
            await reader.read()  # until the client closes

    return script


async def test_bad_chunk_size_is_a_cut(scripted: Any, make_pool: Any) -> None:
    url = await scripted(
        answer(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
            b"zz\r\nworld\r\n0\r\n\r\n",
            keep_open=True,
        )
    )
    pool = make_pool(url)
    resp = await get(pool, "/")
    assert await resp.readany() == b"hello"
    with pytest.raises(UpstreamCut):
        await resp.readany()
    resp.release()
    await until(lambda: pool.open_connections == 0)


async def test_cut_mid_body(scripted: Any, make_pool: Any) -> None:
    url = await scripted(answer(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789"))
    pool = make_pool(url)
    resp = await get(pool, "/")
    with pytest.raises(UpstreamCut):
        await resp.read()
    resp.release()


async def test_cut_mid_chunked_body(scripted: Any, make_pool: Any) -> None:
    url = await scripted(
        answer(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
    )
    pool = make_pool(url)
    resp = await get(pool, "/")
    assert await resp.readany() == b"hello"
    with pytest.raises(UpstreamCut):
        await resp.readany()
    resp.release()


async def test_no_length_reads_to_close(scripted: Any, make_pool: Any) -> None:
    url = await scripted(
        answer(b"HTTP/1.1 200 OK\r\nContent-Type: Text/Plain; charset=utf-8\r\n\r\nab", b"cd")
    )
    pool = make_pool(url)
    resp = await get(pool, "/")
    assert resp.content_length is None
    assert resp.content_type == "text/plain"
    assert await resp.read() == b"abcd"
    resp.release()
    assert pool.open_connections == 0
    assert pool.idle_connections == 0


async def test_interim_100_continue_skipped(scripted: Any, make_pool: Any) -> None:
    url = await scripted(
        answer(
            b"HTTP/1.1 100 Continue\r\n\r\n",
            b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\n",
            b"Content-Length: 2\r\n\r\nok",
            keep_open=True,
        )
    )
    pool = make_pool(url)
    resp = await pool.request(
        "POST", "/", [], b"{}", head_timeout=HEAD_TIMEOUT, retry_idempotent=False
    )
    assert resp.status == 200
    assert "Link" not in resp.headers
    assert await resp.read() == b"ok"
    resp.release()
    assert pool.idle_connections == 1


async def test_malformed_head_unavailable(scripted: Any, make_pool: Any) -> None:
    url = await scripted(answer(b"HTTP/1.1 2x0 Nope\r\n\r\n", keep_open=True))
    pool = make_pool(url)
    with pytest.raises(UpstreamUnavailable):
        await get(pool, "/")


async def test_closed_before_head_unavailable(scripted: Any, make_pool: Any) -> None:
    url = await scripted(answer())
    pool = make_pool(url)
    with pytest.raises(UpstreamUnavailable):
        await get(pool, "/")  # a fresh connection: never retried


async def test_body_stall_read_timeout(scripted: Any, make_pool: Any) -> None:
    url = await scripted(
        answer(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n01234", keep_open=True)
    )
    pool = make_pool(url, read_timeout=SHORT)
    resp = await get(pool, "/")
    assert await resp.readany() == b"01234"
    with pytest.raises(UpstreamReadTimeout):
        await resp.readany()
    with pytest.raises(UpstreamCut):  # and it stays broken
        await resp.readany()
    resp.release()
    await until(lambda: pool.open_connections == 0)


async def test_http10_and_keep_alive_hint(scripted: Any, make_pool: Any) -> None:
    async def two(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nKeep-Alive: timeout=5\r\n\r\na")
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\nb")
        await reader.read()

    pool = make_pool(await scripted(two), keepalive=30.0)
    resp = await get(pool, "/")
    assert await resp.read() == b"a"
    conn = resp._conn
    resp.release()
    assert conn is not None
    assert conn.keep_for == 4.0
    assert pool.idle_connections == 1
    resp = await get(pool, "/")
    assert resp.version == "1.0"
    assert await resp.read() == b"b"
    resp.release()
    assert pool.idle_connections == 0  # HTTP/1.0 without keep-alive: closed


async def test_unsolicited_bytes_close_an_idle_connection(scripted: Any, make_pool: Any) -> None:
    async def chatty(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na")
        await writer.drain()
        await reader.readuntil(b"\r\n\r\n")  # never comes: the client drops the connection

    url = await scripted(chatty)
    pool = make_pool(url)
    resp = await get(pool, "/")
    await resp.read()
    conn = resp._conn
    resp.release()
    assert conn is not None
    assert pool.idle_connections == 1
    conn.data_received(b"HTTP/1.1 200 OK\r\n\r\n")  # as if the upstream had sent more
    assert pool.idle_connections == 0
    assert pool.open_connections == 0
