"""proxy.dataplane.server: the httptools listener, against real sockets on loopback.

Raw asyncio clients send scripted bytes (pipelining, malformed heads, slow clients) and
read the answers with llhttp; aiohttp and httpx clients play the well-behaved ones.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import httptools
import httpx
import pytest

from proxy.dataplane.server import (
    HIGH_WATER,
    BodyTooLarge,
    HttpServer,
    ServerRequest,
    ServerResponse,
)

LOOPBACK = "127.0.0.1"
SHORT = 0.2  # for the tests about a deadline
LARGE = bytes(range(256)) * (16 * 1024 * 1024 // 256)  # 16 MiB: more than socket buffers
ENVELOPE = b'{"error":{"code":400}}'


def envelope(status: int) -> tuple[int, list[tuple[str, str]], bytes]:
    body = json.dumps({"error": {"code": status}}, separators=(",", ":")).encode()
    return status, [("Content-Type", "application/json")], body


class App:
    """The handler: routes on the target; notes what it saw."""

    def __init__(self) -> None:
        self.seen: list[ServerRequest] = []
        self.cancelled = asyncio.Event()
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.written = 0
        self.buffered: list[int] = []

    async def __call__(self, request: ServerRequest, response: ServerResponse) -> None:
        self.seen.append(request)
        path = request.target.partition("?")[0]
        if path == "/echo":
            body = await request.read()
            response.start(
                200,
                "OK",
                [
                    ("X-Method", request.method),
                    ("X-Target", request.target),
                    ("X-Version", request.version),
                    ("X-Body-Exists", str(request.body_exists)),
                    ("X-Content-Length", str(request.content_length)),
                    ("X-Peer", str(request.peer[0] if request.peer else None)),
                    ("Content-Length", str(len(body))),
                ],
            )
            await response.write_eof(body)
        elif path == "/chunked":
            response.start(200, "OK", [("Content-Type", "text/plain")])
            for piece in (b"one,", b"two,", b"three"):
                await response.write(piece)
            await response.write_eof()
        elif path == "/nocontent":
            response.start(204, "No Content")
            await response.write_eof(b"dropped")
        elif path == "/notmodified":
            response.start(304, "Not Modified", [("ETag", '"x"')])
            await response.write(b"dropped")
        elif path.startswith("/delay/"):
            await asyncio.sleep(float(path.rsplit("/", 1)[1]))
            response.start(200, "OK", [("Content-Length", str(len(path)))])
            await response.write_eof(path.encode())
        elif path == "/wait":
            self.started.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.cancelled.set()
                raise
        elif path == "/big":
            response.start(200, "OK", [("Content-Length", str(len(LARGE)))])
            view = memoryview(LARGE)
            for start in range(0, len(LARGE), 64 * 1024):
                await response.write(bytes(view[start : start + 64 * 1024]))
                self.written += 64 * 1024
            await response.write_eof()
        elif path == "/hold":
            self.started.set()
            await self.release.wait()
            self.buffered.append(request.buffered)
            digest = hashlib.sha256()
            total = 0
            while piece := await request.readany():
                digest.update(piece)
                total += len(piece)
            out = f"{total} {digest.hexdigest()}".encode()
            response.start(200, "OK", [("Content-Length", str(len(out)))])
            await response.write_eof(out)
        elif path == "/unread":
            response.start(413, "Payload Too Large", [("Content-Length", "0")])
        elif path == "/limited":
            try:
                await request.read(limit=10)
            except BodyTooLarge:
                response.start(413, "Payload Too Large", [("Content-Length", "3")])
                await response.write_eof(b"big")
        elif path == "/sse":
            response.start(200, "OK", [("Content-Type", "text/event-stream")])
            await response.write(b"event: message\ndata: one\n\n")
            await self.release.wait()
            await response.write(b"event: message\ndata: two\n\n")
            await response.write_eof()
        elif path == "/short":
            response.start(200, "OK", [("Content-Length", "10")])
            await response.write(b"abc")
        elif path == "/long":
            response.start(200, "OK", [("Content-Length", "2")])
            await response.write(b"abc")
        elif path == "/boom":
            raise RuntimeError("a bug")
        else:
            response.start(404, "Not Found", [("Content-Length", "0")])


@pytest.fixture
def app() -> App:
    return App()


@pytest.fixture
async def make_server(app: App) -> AsyncIterator[Callable[..., Any]]:
    servers: list[HttpServer] = []

    async def make(**kwargs: Any) -> tuple[HttpServer, int]:
        options: dict[str, Any] = {
            "max_connections": 100,
            "header_timeout": 5.0,
            "keepalive_timeout": 30.0,
            "max_body_size": 64 * 1024 * 1024,
            "on_error": envelope,
        }
        options.update(kwargs)
        server = HttpServer(app, **options)
        port = await server.start(LOOPBACK, 0)
        servers.append(server)
        return server, port

    yield make
    for server in servers:
        await server.close()


@pytest.fixture
async def served(make_server: Any) -> tuple[HttpServer, int]:
    result: tuple[HttpServer, int] = await make_server()
    return result


class Answer:
    def __init__(self) -> None:
        self.status = 0
        self.headers: dict[str, str] = {}
        self.body = b""
        self.done = False


class Reader:
    """Reads responses off a raw connection with llhttp."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self._reader = reader
        self._parser = httptools.HttpResponseParser(self)
        self.answers: list[Answer] = []

    def on_message_begin(self) -> None:
        self.answers.append(Answer())

    def on_header(self, name: bytes, value: bytes) -> None:
        self.answers[-1].headers[name.decode().lower()] = value.decode()

    def on_headers_complete(self) -> None:
        self.answers[-1].status = self._parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self.answers[-1].body += body

    def on_message_complete(self) -> None:
        self.answers[-1].done = True

    async def take(self, count: int = 1) -> list[Answer]:
        while sum(a.done for a in self.answers) < count:
            data = await asyncio.wait_for(self._reader.read(65536), 5)
            if not data:
                break
            self._parser.feed_data(data)
        return self.answers


async def raw(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(LOOPBACK, port)


async def closed(reader: asyncio.StreamReader, within: float = 5.0) -> bytes:
    """Everything until the server closes the connection."""
    return await asyncio.wait_for(reader.read(), within)


async def until(condition: Callable[[], bool], within: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not condition():
        if loop.time() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.005)


# --- well-behaved clients -----------------------------------------------------------------


async def test_get_and_post_with_aiohttp(served: tuple[HttpServer, int]) -> None:
    _, port = served
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://{LOOPBACK}:{port}/echo?a=1&b=%20") as resp:
            assert resp.status == 200
            assert resp.headers["X-Method"] == "GET"
            assert resp.headers["X-Target"] == "/echo?a=1&b=%20"
            assert resp.headers["X-Body-Exists"] == "False"
            assert resp.headers["X-Peer"] == LOOPBACK
            assert "Server" not in resp.headers
            assert await resp.read() == b""
        body = bytes(range(256)) * 100
        async with session.post(f"http://{LOOPBACK}:{port}/echo", data=body) as resp:
            assert resp.headers["X-Content-Length"] == str(len(body))
            assert await resp.read() == body

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(10):
                yield b"x" * 1000

        async with session.post(f"http://{LOOPBACK}:{port}/echo", data=chunks()) as resp:
            assert resp.headers["X-Body-Exists"] == "True"
            assert resp.headers["X-Content-Length"] == "None"
            assert await resp.read() == b"x" * 10_000
        async with session.get(f"http://{LOOPBACK}:{port}/chunked") as resp:
            assert resp.headers["Transfer-Encoding"] == "chunked"
            assert await resp.read() == b"one,two,three"


async def test_keep_alive_with_httpx(served: tuple[HttpServer, int]) -> None:
    server, port = served
    async with httpx.AsyncClient(base_url=f"http://{LOOPBACK}:{port}") as client:
        for i in range(5):
            resp = await client.post("/echo", content=b"n%d" % i)
            assert resp.content == b"n%d" % i
        resp = await client.get("/chunked")
        assert resp.content == b"one,two,three"
        assert len(server.connections) == 1


async def test_http10_close_delimited(served: tuple[HttpServer, int]) -> None:
    _, port = served
    reader, writer = await raw(port)
    writer.write(b"GET /chunked HTTP/1.0\r\n\r\n")
    data = await closed(reader)
    head, _, body = data.partition(b"\r\n\r\n")
    assert b"Connection: close" in head
    assert b"chunked" not in head
    assert body == b"one,two,three"
    writer.close()


async def test_large_request_body_byte_faithful(served: tuple[HttpServer, int]) -> None:
    _, port = served
    url = f"http://{LOOPBACK}:{port}/echo"
    async with aiohttp.ClientSession() as session, session.post(url, data=LARGE) as resp:
        assert hashlib.sha256(await resp.read()).digest() == hashlib.sha256(LARGE).digest()


async def test_body_limit(served: tuple[HttpServer, int]) -> None:
    _, port = served
    async with httpx.AsyncClient(base_url=f"http://{LOOPBACK}:{port}") as client:
        assert (await client.post("/limited", content=b"x" * 11)).status_code == 413

        async def stream() -> AsyncIterator[bytes]:
            yield b"x" * 8
            yield b"x" * 8

        assert (await client.post("/limited", content=stream())).status_code == 413


async def test_sse_relayed_event_by_event(served: tuple[HttpServer, int], app: App) -> None:
    _, port = served
    url = f"http://{LOOPBACK}:{port}/sse"
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        assert resp.headers["Transfer-Encoding"] == "chunked"
        first = await asyncio.wait_for(resp.content.readuntil(b"\n\n"), 5)
        assert first == b"event: message\ndata: one\n\n"  # before the second exists
        app.release.set()
        assert await resp.read() == b"event: message\ndata: two\n\n"


async def test_stray_line_breaks_do_not_keep_a_connection(make_server: Any) -> None:
    server, port = await make_server(keepalive_timeout=SHORT)
    reader, writer = await raw(port)
    writer.write(b"\r\n\r\n")
    assert await closed(reader, 2.0) == b""
    await until(lambda: not server.connections)
    writer.close()


# --- pipelining, 100-continue, bodiless answers ---------------------------------------------


async def test_pipelining_answered_in_order(served: tuple[HttpServer, int]) -> None:
    _, port = served
    reader, writer = await raw(port)
    writer.write(
        b"GET /delay/0.1 HTTP/1.1\r\nHost: x\r\n\r\n"
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
        b"GET /delay/0 HTTP/1.1\r\nHost: x\r\n\r\n"
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    )
    answers = await Reader(reader).take(4)
    assert [a.body for a in answers] == [b"/delay/0.1", b"hello", b"/delay/0", b"abcde"]
    writer.close()


async def test_100_continue_when_the_body_is_read(served: tuple[HttpServer, int]) -> None:
    _, port = served
    reader, writer = await raw(port)
    writer.write(
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n"
    )
    line = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert line == b"HTTP/1.1 100 Continue\r\n\r\n"
    writer.write(b"ping")
    answers = await Reader(reader).take(1)
    assert answers[0].status == 200
    assert answers[0].body == b"ping"
    writer.close()


async def test_no_100_continue_when_answered_unread(served: tuple[HttpServer, int]) -> None:
    _, port = served
    reader, writer = await raw(port)
    writer.write(
        b"POST /unread HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n"
    )
    data = await closed(reader)
    assert data.startswith(b"HTTP/1.1 413 ")
    assert b"100 Continue" not in data
    writer.close()


async def test_aiohttp_expect_100(served: tuple[HttpServer, int]) -> None:
    _, port = served
    async with aiohttp.ClientSession() as session:
        url = f"http://{LOOPBACK}:{port}/echo"
        async with session.post(url, data=b"body", expect100=True) as resp:
            assert await resp.read() == b"body"


async def test_head_204_304_have_no_body(served: tuple[HttpServer, int]) -> None:
    _, port = served
    reader, writer = await raw(port)
    writer.write(b"HEAD /chunked HTTP/1.1\r\nHost: x\r\n\r\n")
    await asyncio.sleep(0.05)
    writer.write(b"GET /nocontent HTTP/1.1\r\nHost: x\r\n\r\nGET /notmodified HTTP/1.1\r\n\r\n")
    writer.write(b"GET /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    data = await closed(reader)
    heads = data.split(b"\r\n\r\n")
    assert heads[0].startswith(b"HTTP/1.1 200 ")
    assert b"Transfer-Encoding" not in heads[0]
    assert heads[1].startswith(b"HTTP/1.1 204 ")
    assert heads[2].startswith(b"HTTP/1.1 304 ")
    assert b'ETag: "x"' in heads[2]
    assert heads[3].startswith(b"HTTP/1.1 200 ")
    assert b"dropped" not in data
    assert heads[4] == b""
    writer.close()


# --- refusals -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"POST /echo HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
        b"GET /<script>alert(1)</script> HTTP/1.1 extra\r\n\r\n",
        b"<script>alert(1)</script>\r\n\r\n",
        b"GET / HTTP/1.1\r\nBad<script> Header: x\r\n\r\n",
        # RFC 9112 section 3.2: two Host headers are answered 400.
        b"GET /echo HTTP/1.1\r\nHost: a\r\nHost: <script>b\r\n\r\n",
    ],
)
async def test_refused_with_the_envelope(
    served: tuple[HttpServer, int], app: App, request_bytes: bytes
) -> None:
    _, port = served
    reader, writer = await raw(port)
    writer.write(request_bytes)
    data = await closed(reader)
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ")
    assert b"Connection: close" in head
    assert body == ENVELOPE
    assert b"script" not in data
    assert app.seen == []
    writer.close()


@pytest.mark.parametrize("split", [False, True])
async def test_large_head_refused(served: tuple[HttpServer, int], app: App, split: bool) -> None:
    _, port = served
    reader, writer = await raw(port)
    head = b"GET /echo HTTP/1.1\r\nX-Big: " + b"a" * (100 * 1024) + b"\r\n\r\n"
    if split:  # the head arrives in many pieces
        for start in range(0, len(head), 1000):
            writer.write(head[start : start + 1000])
            await asyncio.sleep(0)
    else:
        writer.write(head)
    data = await closed(reader)
    assert data.startswith(b"HTTP/1.1 431 ")
    assert data.endswith(b'{"error":{"code":431}}')
    assert app.seen == []
    writer.close()


async def test_upgrade_is_answered_then_closed(served: tuple[HttpServer, int]) -> None:
    _, port = served
    reader, writer = await raw(port)
    writer.write(
        b"GET /echo HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
        b"\x81\x05hello"
    )
    data = await closed(reader)
    assert data.startswith(b"HTTP/1.1 200 ")
    assert b"Connection: close" in data
    writer.close()


async def test_refusal_after_a_good_request_keeps_order(served: tuple[HttpServer, int]) -> None:
    _, port = served
    reader, writer = await raw(port)
    writer.write(b"GET /delay/0.05 HTTP/1.1\r\nHost: x\r\n\r\nGARBAGE\r\n\r\n")
    data = await closed(reader)
    assert data.startswith(b"HTTP/1.1 200 ")
    assert data.endswith(ENVELOPE)
    writer.close()


async def test_handler_failure_is_an_envelope(served: tuple[HttpServer, int]) -> None:
    _, port = served
    reader, writer = await raw(port)
    writer.write(b"GET /boom HTTP/1.1\r\nHost: x\r\n\r\n")
    data = await closed(reader)
    assert data.startswith(b"HTTP/1.1 500 ")
    assert data.endswith(b'{"error":{"code":500}}')
    writer.close()


async def test_content_length_held_to(served: tuple[HttpServer, int]) -> None:
    _, port = served
    reader, writer = await raw(port)
    writer.write(b"GET /short HTTP/1.1\r\nHost: x\r\n\r\n")
    data = await closed(reader)  # cut short: the client sees the truncation
    assert data.startswith(b"HTTP/1.1 200 ")
    assert data.endswith(b"\r\n\r\nabc")
    writer.close()
    reader, writer = await raw(port)
    writer.write(b"GET /long HTTP/1.1\r\nHost: x\r\n\r\n")
    data = await closed(reader)  # refused before anything went out
    assert data.startswith(b"HTTP/1.1 500 ")
    writer.close()


async def test_absolute_form_target(served: tuple[HttpServer, int]) -> None:
    _, port = served
    reader, writer = await raw(port)
    writer.write(b"GET http://example.com:8080/echo?q=1 HTTP/1.1\r\nHost: example.com\r\n\r\n")
    answers = await Reader(reader).take(1)
    assert answers[0].headers["x-target"] == "/echo?q=1"
    writer.close()


# --- deadlines and the connection cap -----------------------------------------------------


async def test_slow_head_is_closed(make_server: Any, app: App) -> None:
    limits: list[str] = []
    _, port = await make_server(header_timeout=SHORT, on_limit=limits.append)
    reader, writer = await raw(port)
    writer.write(b"GET /echo HTTP/1.1\r\nHost: x\r\n")  # never finished
    assert await closed(reader, 2.0) == b""
    assert app.seen == []
    assert limits == ["header_timeout"]
    writer.close()


async def test_idle_keep_alive_is_closed(make_server: Any) -> None:
    limits: list[str] = []
    server, port = await make_server(keepalive_timeout=SHORT, on_limit=limits.append)
    reader, writer = await raw(port)
    writer.write(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
    answers = await Reader(reader).take(1)
    assert answers[0].status == 200
    assert await closed(reader, 2.0) == b""
    assert limits == ["keepalive_timeout"]
    await until(lambda: not server.connections)
    writer.close()


async def test_cap_closes_the_oldest_idle(make_server: Any, app: App) -> None:
    server, port = await make_server(max_connections=2)
    _, writer1 = await raw(port)
    writer1.write(b"GET /wait HTTP/1.1\r\nHost: x\r\n\r\n")  # busy
    await asyncio.wait_for(app.started.wait(), 5)
    reader2, writer2 = await raw(port)  # idle
    await until(lambda: len(server.connections) == 2)
    reader3, writer3 = await raw(port)
    assert await closed(reader2, 2.0) == b""  # the idle one made room
    writer3.write(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
    answers = await Reader(reader3).take(1)
    assert answers[0].status == 200
    assert not app.cancelled.is_set()  # the busy one lives on
    # all busy now but for the newcomer's keep-alive: a fourth closes the idle third
    _, writer4 = await raw(port)
    assert await closed(reader3, 2.0) == b""
    for writer in (writer1, writer2, writer3, writer4):
        writer.close()


async def test_cap_refuses_the_newcomer_when_all_are_busy(make_server: Any, app: App) -> None:
    _, port = await make_server(max_connections=1)
    _, writer1 = await raw(port)
    writer1.write(b"GET /wait HTTP/1.1\r\nHost: x\r\n\r\n")
    await asyncio.wait_for(app.started.wait(), 5)
    reader2, writer2 = await raw(port)
    assert await closed(reader2, 2.0) == b""
    assert not app.cancelled.is_set()
    writer1.close()
    writer2.close()


# --- the client leaving, back-pressure, drain ---------------------------------------------


async def test_client_disconnect_cancels_the_handler(
    served: tuple[HttpServer, int], app: App
) -> None:
    server, port = served
    _, writer = await raw(port)
    writer.write(b"GET /wait HTTP/1.1\r\nHost: x\r\n\r\n")
    await asyncio.wait_for(app.started.wait(), 5)
    writer.close()
    await asyncio.wait_for(app.cancelled.wait(), 5)
    await until(lambda: not server.connections)


async def test_slow_reader_does_not_grow_the_write_buffer(
    served: tuple[HttpServer, int], app: App
) -> None:
    server, port = served
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (LOOPBACK, port))
    reader, writer = await asyncio.open_connection(sock=sock)
    writer.write(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
    await until(lambda: app.written > 0)
    await asyncio.sleep(0.3)  # the client reads nothing
    stalled = app.written
    assert stalled < len(LARGE) // 2
    conn = next(iter(server.connections))
    assert conn.transport is not None
    assert conn.transport.get_write_buffer_size() <= 256 * 1024
    answers = await Reader(reader).take(1)  # now it reads everything
    assert hashlib.sha256(answers[0].body).digest() == hashlib.sha256(LARGE).digest()
    writer.close()


async def test_large_upload_pauses_reading(served: tuple[HttpServer, int], app: App) -> None:
    _, port = served
    reader, writer = await raw(port)
    writer.write(b"POST /hold HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(LARGE))
    send = asyncio.create_task(_send(writer, LARGE))
    await asyncio.wait_for(app.started.wait(), 5)
    await asyncio.sleep(0.3)
    assert not send.done()  # the server stopped reading: the client is held back
    app.release.set()
    answers = await Reader(reader).take(1)
    await send
    assert app.buffered[0] <= HIGH_WATER + 256 * 1024
    expected = f"{len(LARGE)} {hashlib.sha256(LARGE).hexdigest()}".encode()
    assert answers[0].body == expected
    writer.close()


async def _send(writer: asyncio.StreamWriter, data: bytes) -> None:
    writer.write(data)
    await writer.drain()


async def test_drain_lets_in_flight_finish(make_server: Any, app: App) -> None:
    server, port = await make_server()
    idle_reader, idle_writer = await raw(port)
    reader, writer = await raw(port)
    writer.write(b"GET /delay/0.2 HTTP/1.1\r\nHost: x\r\n\r\n")
    await until(lambda: len(app.seen) == 1)
    await server.drain(grace=5.0)
    data = await closed(reader)
    assert data.startswith(b"HTTP/1.1 200 ")
    assert b"Connection: close" in data
    assert await closed(idle_reader) == b""
    with pytest.raises(ConnectionRefusedError):
        await raw(port)
    writer.close()
    idle_writer.close()


async def test_drain_grace_cancels_the_rest(make_server: Any, app: App) -> None:
    server, port = await make_server()
    _, writer = await raw(port)
    writer.write(b"GET /wait HTTP/1.1\r\nHost: x\r\n\r\n")
    await asyncio.wait_for(app.started.wait(), 5)
    await server.drain(grace=SHORT)
    assert app.cancelled.is_set()
    assert not server.connections or all(c.lost for c in server.connections)
    writer.close()
