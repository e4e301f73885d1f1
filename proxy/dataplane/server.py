"""An HTTP/1.1 listener on ``asyncio.Protocol``; llhttp (httptools) parses the requests.

One ``_Conn`` per client connection. Requests are answered one at a time and in order:
a pipelined request is parsed when it arrives but held until the one before it is
answered (at most ``PIPELINE_DEPTH`` are held; then the socket stops being read). Each
request runs ``handler(request, response)`` in its own task; the client leaving cancels
that task, so whatever it awaits (an upstream call) ends.

The listener's guards are built in: a cap on open connections (the oldest idle
connection makes room for a new one, or the newcomer is refused when all are busy), a
deadline from a request's first byte to its complete head (``header_timeout``), an idle
keep-alive deadline (``keepalive_timeout``), both loop timers; malformed requests, a
``Content-Length`` beside a ``Transfer-Encoding`` and a repeated ``Content-Length`` are
answered with the envelope ``on_error(status)`` returns (never an echo of the request)
and the connection is closed (a head above ``max_head_size`` gets 431; a handler that
fails before its head went out gets 500). After such an answer the listener ends its
side and drops what the client still sends for up to ``LINGER`` seconds, so that the
answer is not lost to a reset. No ``Server`` banner is added. ``on_limit(name)`` is
told of every guard that trips: ``header_timeout``, ``keepalive_timeout``,
``max_client_connections`` (the names the metrics use today).

Bodies flow with back-pressure both ways: above ``HIGH_WATER`` buffered request bytes the
socket stops being read until the handler's reads take it below ``LOW_WATER``, and
``ServerResponse.write`` waits while the transport's write buffer is above its limit. A
``Expect: 100-continue`` is answered when the handler first reads the body (and not at
all when it answers without reading). A response without a ``Content-Length`` is chunked
(HTTP/1.1) or delimited by closing the connection (HTTP/1.0); HEAD, 1xx, 204 and 304
responses never carry a body.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from http import HTTPStatus
from typing import cast

import httptools
from multidict import CIMultiDict, CIMultiDictProxy, istr

from proxy.dataplane.chunks import HIGH_WATER, LOW_WATER, take_joined

__all__ = [
    "BodyTooLarge",
    "ClientGone",
    "ErrorRenderer",
    "Handler",
    "HttpServer",
    "ServerRequest",
    "ServerResponse",
]

log = logging.getLogger("agent_warden.dataplane.server")

PIPELINE_DEPTH = 8  # parsed requests held behind the running one before reading pauses
LINGER = 2.0  # seconds a refused client's further bytes are read and dropped
MAX_HEAD_SIZE = 64 * 1024  # request line and headers; larger heads are refused with 431

_CONTENT_LENGTH = istr("Content-Length")
_TRANSFER_ENCODING = istr("Transfer-Encoding")
_CONNECTION = istr("Connection")
_EXPECT = istr("Expect")
_HOST = istr("Host")
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_HOP_FRAMING = frozenset({"content-length", "transfer-encoding", "connection"})

ErrorRenderer = Callable[[int], tuple[int, list[tuple[str, str]], bytes]]


class ClientGone(ConnectionResetError):
    """The client closed the connection."""


class BodyTooLarge(Exception):
    """The request body is larger than ``max_body_size``."""


class _Refused(Exception):
    """A request head the listener will not serve (CL+TE, repeated CL)."""

    status = 400


class _HeadTooLarge(_Refused):
    status = 431


def _decode(raw: bytes) -> str:
    # As aiohttp's parser: the bytes survive a round trip through str.
    return raw.decode("utf-8", "surrogateescape")


class ServerRequest:
    """A request head and its (de-chunked) body, read as it arrives."""

    __slots__ = (
        "_chunks",
        "_conn",
        "_continue",
        "_eof",
        "_exc",
        "_size",
        "_waiter",
        "body_exists",
        "content_length",
        "headers",
        "keep_alive",
        "local",
        "method",
        "peer",
        "target",
        "version",
    )

    def __init__(
        self,
        conn: _Conn,
        method: str,
        target: str,
        version: str,
        headers: CIMultiDictProxy[str],
        content_length: int | None,
        body_exists: bool,
        keep_alive: bool,
        expect_continue: bool,
    ) -> None:
        self.method = method
        self.target = target  # path?query, as received (absolute-form reduced)
        self.version = version  # "1.1", "1.0"
        self.headers = headers
        self.content_length = content_length
        self.body_exists = body_exists
        self.keep_alive = keep_alive
        self.peer = conn.peer
        self.local = conn.local  # host:port this request arrived on
        self._conn = conn
        self._continue = expect_continue
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self._eof = not body_exists
        self._exc: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None

    def __repr__(self) -> str:
        return f"<ServerRequest {self.method} {self.target!r}>"

    @property
    def complete(self) -> bool:
        """The whole body has arrived (it may still be buffered here)."""
        return self._eof

    @property
    def buffered(self) -> int:
        """Body bytes received and not yet read."""
        return self._size

    # -- fed by the connection --------------------------------------------------------

    def _feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self._size += len(data)
        self._continue = False  # the client sent the body anyway
        self._wake()

    def _end(self) -> None:
        self._eof = True
        self._wake()

    def _fail(self, exc: BaseException) -> None:
        if not self._eof and self._exc is None:
            self._exc = exc
            self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    # -- reading ----------------------------------------------------------------------

    async def readany(self) -> bytes:
        """The next piece of the body; ``b""`` at its end. Raises ``ClientGone`` when the
        client left before the end."""
        while True:
            if self._chunks:
                return self._take()
            if self._eof:
                return b""
            if self._exc is not None:
                raise ClientGone(*self._exc.args)
            if self._continue:
                self._continue = False
                self._conn.send_continue()
            waiter: asyncio.Future[None] = self._conn.loop.create_future()
            self._waiter = waiter
            try:
                await waiter
            finally:
                self._waiter = None

    async def read(self, limit: int | None = None) -> bytes:
        """The whole body; ``BodyTooLarge`` above ``limit`` (default ``max_body_size``)."""
        bound = self._conn.server.max_body_size if limit is None else limit
        if self.content_length is not None and self.content_length > bound:
            raise BodyTooLarge(self.content_length)
        parts: list[bytes] = []
        total = 0
        while True:
            piece = await self.readany()
            if not piece:
                return b"".join(parts)
            total += len(piece)
            if total > bound:
                raise BodyTooLarge(total)
            parts.append(piece)

    def _take(self) -> bytes:
        data = take_joined(self._chunks)
        self._size -= len(data)
        if self._size < LOW_WATER:
            self._conn.update_reading()
        return data


class ServerResponse:
    """Writes one response: ``start`` once, ``write`` the body, ``write_eof``."""

    __slots__ = (
        "_chunked",
        "_conn",
        "_head",
        "_left",
        "_no_body",
        "_request",
        "_version11",
        "close",
        "finished",
        "started",
        "status",
    )

    def __init__(self, conn: _Conn, request: ServerRequest) -> None:
        self._conn = conn
        self._request = request
        self._head: bytes | None = None
        self._chunked = False
        self._left: int | None = None  # body bytes still owed to the Content-Length
        self._no_body = request.method == "HEAD"
        self._version11 = request.version == "1.1"
        self.started = False
        self.finished = False
        self.close = not request.keep_alive  # the connection closes after this response
        self.status = 0

    @property
    def head_sent(self) -> bool:
        """The head went out: an error can no longer be answered with an envelope."""
        return self.started and self._head is None

    @property
    def aborted(self) -> bool:
        """The client left."""
        return self._conn.lost

    def abort(self) -> None:
        """Cut the connection: the client sees a broken response, never a complete one."""
        self.finished = True
        self._conn._abort()

    def start(self, status: int, reason: str, headers: Iterable[tuple[str, str]] = ()) -> None:
        """Serialise the head (sent with the first ``write`` or ``write_eof``). The
        handler's ``Transfer-Encoding`` and ``Connection`` are replaced by the listener's
        own framing; a ``Content-Length`` is kept and held to (a body that would overrun
        it raises; one that ends short aborts the connection, so the client sees the
        truncation)."""
        if self.started:
            raise RuntimeError("response already started")
        conn = self._conn
        self.started = True
        self.status = status
        no_body = self._no_body or status < 200 or status in (204, 304)
        self._no_body = no_body
        lines = [f"HTTP/1.1 {status} {reason}\r\n"]
        length = False
        for name, value in headers:
            lower = name.lower()
            if lower in _HOP_FRAMING:
                if lower != "content-length":
                    continue
                length = True
                if not no_body:
                    self._left = int(value)
            lines.append(f"{name}: {value}\r\n")
        if conn.server.draining or conn.closing or not self._request.keep_alive:
            self.close = True
        if not length and not no_body:
            if self._version11:
                self._chunked = True
                lines.append("Transfer-Encoding: chunked\r\n")
            else:
                self.close = True
        if self.close:
            lines.append("Connection: close\r\n")
        elif not self._version11:
            lines.append("Connection: keep-alive\r\n")
        lines.append("\r\n")
        text = "".join(lines)
        # Every line ends in the one CRLF added here: any other CR or LF came from a value.
        if text.count("\n") != len(lines) or text.count("\r") != len(lines):
            raise ValueError("header with a line break")
        self._head = text.encode("utf-8", "surrogateescape")

    async def write(self, data: bytes) -> None:
        """Send a piece of the body; waits while the client is slow to read."""
        if not self.started:
            raise RuntimeError("response not started")
        if self.finished:
            raise RuntimeError("response already finished")
        conn = self._conn
        if conn.lost:
            raise ClientGone("client left")
        if self._left is not None:
            self._owe(len(data))
        head = self._head
        self._head = None
        if self._no_body or not data:
            if head is not None:
                conn.transport_write(head)
            return
        if self._chunked:
            framed = b"%x\r\n%b\r\n" % (len(data), data)
            conn.transport_write(head + framed if head is not None else framed)
        elif head is not None:
            conn.transport_write(head + data)
        else:
            conn.transport_write(data)
        await conn.drain()

    def _owe(self, size: int) -> None:
        left = cast(int, self._left) - size
        if left < 0:
            raise RuntimeError("body longer than its Content-Length")
        self._left = left

    async def write_eof(self, data: bytes = b"") -> None:
        """End the body (with a last piece, which goes out in one write with the head)."""
        if self.finished:
            return
        if not self.started:
            raise RuntimeError("response not started")
        conn = self._conn
        self.finished = True
        if conn.lost:
            return
        left = self._left
        if left is not None and len(data) != left:
            self._left = None
            if len(data) > left:
                raise RuntimeError("body longer than its Content-Length")
            conn.transport_write((self._head or b"") + data)
            conn._abort()
            raise RuntimeError("body shorter than its Content-Length")
        head = self._head or b""
        self._head = None
        if self._no_body:
            out = head
        elif self._chunked:
            tail = b"%x\r\n%b\r\n0\r\n\r\n" % (len(data), data) if data else b"0\r\n\r\n"
            out = head + tail
        else:
            out = head + data
        if out:
            conn.transport_write(out)
        await conn.drain()


Handler = Callable[[ServerRequest, ServerResponse], Awaitable[None]]


class _Conn(asyncio.Protocol):
    """One client connection."""

    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.loop = server.loop
        self.transport: asyncio.Transport | None = None
        self.peer: tuple[str, int] | None = None
        self.local = ""
        self.lost = False
        self.closing = False  # no further request is served on this connection
        self._parser = httptools.HttpRequestParser(self)
        self._url = bytearray()
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_size = 0  # bytes of the head in progress
        self._feeding: ServerRequest | None = None  # the request whose body is arriving
        self._queue: deque[ServerRequest | int] = deque()  # held: requests, error statuses
        self._task: asyncio.Task[None] | None = None
        self._current: ServerRequest | None = None
        self._paused = False
        self._parse_error = False
        self._no_more = False  # a request that ends the connection was parsed
        self._last: ServerRequest | None = None
        # One loop timer for both deadlines (they never overlap); re-arming only moves
        # ``_deadline``, and a timer that fires early sets itself again.
        self._timer: asyncio.TimerHandle | None = None
        self._timer_kind: str | None = None  # "head", "idle" or None
        self._deadline = 0.0
        self._write_waiter: asyncio.Future[None] | None = None
        self._write_paused = False

    # -- state ------------------------------------------------------------------------

    @property
    def idle(self) -> bool:
        """Waiting for a request, with nothing of one received."""
        return (
            self._task is None
            and not self._queue
            and self._timer_kind != "head"
            and self._feeding is None
        )

    # -- asyncio.Protocol -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            self.peer = (str(peer[0]), int(peer[1]))
        local = transport.get_extra_info("sockname")
        if isinstance(local, tuple) and len(local) >= 2:
            host = str(local[0])
            self.local = f"[{host}]:{local[1]}" if ":" in host else f"{host}:{local[1]}"
        self.server.admitted(self)
        if not self.lost:
            self._arm_idle()

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost = True
        self.server.forget(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_kind = None
        gone = ClientGone("client left")
        if self._feeding is not None:
            self._feeding._fail(gone)
        if self._current is not None:
            self._current._fail(gone)
        self._queue.clear()
        waiter = self._write_waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(gone)
        self._write_waiter = None
        if self._task is not None:
            self._task.cancel()
        self.transport = None

    def data_received(self, data: bytes) -> None:
        if self._parse_error or self._no_more:
            return
        kind = self._timer_kind
        if kind == "idle":
            self._timer_kind = None
        elif kind == "head":  # llhttp buffers a head's parts whole: bound them here
            self._head_size += len(data)
            if self._head_size > self.server.max_head_size:
                self._refuse(431)
                return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # An upgrade is not relayed: the request is answered, then the connection closes.
            self._no_more = True
            if self._last is not None:
                self._last.keep_alive = False
            self._stop_reading()
        except httptools.HttpParserError as exc:
            # llhttp's own refusals and ours (_Refused, raised from a callback) alike
            cause = exc.__context__ or exc.__cause__
            self._refuse(cause.status if isinstance(cause, _Refused) else 400)
        if self._timer_kind is None and self.idle and not self.lost and not self.closing:
            self._arm_idle()  # bytes that began no request (stray line breaks)

    def eof_received(self) -> bool | None:
        return None  # the client's end closes the connection (and cancels its handler)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        waiter = self._write_waiter
        if waiter is not None:
            self._write_waiter = None
            if not waiter.done():
                waiter.set_result(None)

    # -- httptools callbacks ----------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url.clear()
        self._headers = []
        self._head_size = 0
        if self._timer_kind != "head":
            self._arm("head", self.server.header_timeout)

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._grow(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))
        self._grow(len(name) + len(value) + 4)

    def _grow(self, size: int) -> None:
        self._head_size += size
        if self._head_size > self.server.max_head_size:
            raise _HeadTooLarge("request head too large")

    def on_headers_complete(self) -> None:
        self._timer_kind = None
        if self._no_more:
            raise _Refused("request after the last one")
        parser = self._parser
        # One C-level construction (llhttp admits only ASCII token characters in names).
        headers: CIMultiDict[str] = CIMultiDict(
            [
                (n.decode("utf-8", "surrogateescape"), v.decode("utf-8", "surrogateescape"))
                for n, v in self._headers
            ]
        )
        lengths = len(headers.getall(_CONTENT_LENGTH, ()))
        chunked = _TRANSFER_ENCODING in headers
        if len(headers.getall(_HOST, ())) > 1:
            raise _Refused("Host sent twice")  # RFC 9112 section 3.2: answered 400
        if lengths > 1 or (lengths and chunked):
            raise _Refused("ambiguous framing")
        content_length: int | None = None
        if lengths:
            try:
                content_length = int(headers[_CONTENT_LENGTH])
            except ValueError:
                raise _Refused("bad Content-Length") from None
        version = parser.get_http_version()
        target = self._target(bytes(self._url))
        expect = headers.get(_EXPECT, "")
        request = ServerRequest(
            self,
            parser.get_method().decode("ascii", "replace"),
            target,
            version,
            CIMultiDictProxy(headers),
            content_length,
            chunked or bool(content_length),
            parser.should_keep_alive() and not self.closing,
            version == "1.1" and expect.lower() == "100-continue",
        )
        self._feeding = request if request.body_exists else None
        self._last = request
        if self._task is None and not self._queue:
            self._dispatch(request)
        else:
            self._queue.append(request)
            self.update_reading()

    def on_body(self, body: bytes) -> None:
        request = self._feeding
        if request is not None:
            request._feed(body)
            if request._size > HIGH_WATER:
                self._stop_reading()

    def on_message_complete(self) -> None:
        request = self._feeding
        if request is not None:
            self._feeding = None
            request._end()
        if not self._parser.should_keep_alive():
            self._no_more = True  # the last request this connection serves

    @staticmethod
    def _target(url: bytes) -> str:
        if url[:1] == b"/" or url == b"*":
            return _decode(url)
        try:
            parsed = httptools.parse_url(url)
        except httptools.HttpParserInvalidURLError:
            return _decode(url)
        path = parsed.path or b"/"
        if parsed.query:
            path += b"?" + parsed.query
        return _decode(path)

    # -- running handlers ---------------------------------------------------------------

    def _dispatch(self, request: ServerRequest) -> None:
        self._current = request
        response = ServerResponse(self, request)
        self._task = self.loop.create_task(self._run(request, response))

    async def _run(self, request: ServerRequest, response: ServerResponse) -> None:
        try:
            try:
                await self.server.handler(request, response)
                if not response.started:
                    self._send_error(500)
                    return
                if not response.finished:
                    await response.write_eof()
            except asyncio.CancelledError:
                self._abort()
                raise
            except ClientGone:
                self._abort()
                return
            except Exception:
                if response.head_sent:
                    log.exception("handler failed after its response started")
                    self._abort()
                else:
                    log.exception("handler failed")
                    self._send_error(500)
                return
        finally:
            self._task = None
            self._current = None
        if response.close or not request.keep_alive or not request.complete:
            self._close()
            return
        self._next()

    def _next(self) -> None:
        if self.lost:
            return
        if self._queue:
            item = self._queue.popleft()
            if isinstance(item, int):
                self._send_error(item)
                return
            self._dispatch(item)
            self.update_reading()
            return
        if self.closing:
            self._close()
            return
        self.update_reading()
        if self.idle:
            self._arm_idle()

    # -- errors and closing -------------------------------------------------------------

    def _refuse(self, status: int) -> None:
        """A malformed or refused request: answered in its turn, then the connection closes."""
        self._parse_error = True
        self._timer_kind = None
        if self._feeding is not None:
            self._feeding._fail(ClientGone("request body malformed"))
            self._feeding = None
        self._stop_reading()
        if self._task is None and not self._queue:
            self._send_error(status)
        else:
            self._queue.append(status)

    def _send_error(self, status: int) -> None:
        if self.lost or self.transport is None:
            return
        log.info("request refused", extra={"status": status})
        code, headers, body = self.server.on_error(status)
        lines = [f"HTTP/1.1 {code} {_reason(code)}\r\n"]
        for name, value in headers:
            if name.lower() in _HOP_FRAMING:
                continue
            lines.append(f"{name}: {value}\r\n")
        lines.append(f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
        self.transport.write("".join(lines).encode("latin-1") + body)
        self._linger()

    def _linger(self) -> None:
        """Close after a refusal without losing the answer: end our side, then read and
        drop what the client still sends (closing with unread data would reset the
        connection, and the client could lose the answer) for at most ``LINGER`` seconds."""
        transport = self.transport
        if transport is None or not transport.can_write_eof():
            self._close()
            return
        self.closing = True
        self._parse_error = True  # data_received drops everything from now on
        transport.write_eof()
        if self._paused:
            self._paused = False
            transport.resume_reading()
        self._arm("linger", LINGER)

    def _arm(self, kind: str, delay: float) -> None:
        at = self.loop.time() + delay
        self._timer_kind = kind
        self._deadline = at
        timer = self._timer
        if timer is not None:
            if timer.when() <= at:
                return  # it fires first and sets itself again
            timer.cancel()
        self._timer = self.loop.call_at(at, self._expired)

    def _expired(self) -> None:
        self._timer = None
        kind = self._timer_kind
        if kind is None or self.lost:
            return
        if self.loop.time() < self._deadline:
            self._timer = self.loop.call_at(self._deadline, self._expired)
            return
        self._timer_kind = None
        if kind == "head":
            self._head_expired()
        elif kind == "idle":
            self._idle_expired()
        else:
            self._abort()  # lingered long enough

    def _head_expired(self) -> None:
        if self._paused:  # not reading: the client is not the slow one
            self._arm("head", self.server.header_timeout)
            return
        self.server.tripped("header_timeout")
        log.info("client too slow to send a request head; connection closed")
        self._abort()

    def _arm_idle(self) -> None:
        if self._timer_kind is None:
            self._arm("idle", self.server.keepalive_timeout)

    def _idle_expired(self) -> None:
        if self.idle and not self.lost:
            self.server.tripped("keepalive_timeout")
            self._close()

    def _close(self) -> None:
        """Close after what is written went out."""
        self.closing = True
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def _abort(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.abort()

    def shutdown(self) -> None:
        """Serve no further request; close now when idle (drain)."""
        self.closing = True
        if self.idle:
            self._close()

    # -- flow control -------------------------------------------------------------------

    def update_reading(self) -> None:
        feeding = self._feeding
        pause = self._parse_error or len(self._queue) >= PIPELINE_DEPTH
        if not pause and feeding is not None:
            pause = feeding._size > (LOW_WATER if self._paused else HIGH_WATER)
        if pause:
            self._stop_reading()
        elif self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()

    def _stop_reading(self) -> None:
        if not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    def transport_write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def send_continue(self) -> None:
        if not self.lost:
            self.transport_write(_CONTINUE)

    async def drain(self) -> None:
        if self.lost:
            raise ClientGone("client left")
        if not self._write_paused:
            return
        waiter = self._write_waiter
        if waiter is None:
            waiter = self._write_waiter = self.loop.create_future()
        await waiter


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


class HttpServer:
    """The listener: ``start``, then ``drain`` or ``close``."""

    def __init__(
        self,
        handler: Handler,
        *,
        max_connections: int,
        header_timeout: float,
        keepalive_timeout: float,
        max_body_size: int,
        on_error: ErrorRenderer,
        on_limit: Callable[[str], None] | None = None,
        max_head_size: int = MAX_HEAD_SIZE,
    ) -> None:
        self.handler = handler
        self.max_connections = max_connections
        self.header_timeout = header_timeout
        self.keepalive_timeout = keepalive_timeout
        self.max_body_size = max_body_size
        self.max_head_size = max_head_size
        self.on_error = on_error
        self._on_limit = on_limit
        self.draining = False
        self.connections: dict[_Conn, None] = {}  # oldest first
        self._server: asyncio.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._gone: asyncio.Event | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise RuntimeError("server not started")
        return self._loop

    async def start(
        self, host: str, port: int, *, backlog: int = 1024, reuse_port: bool = False
    ) -> int:
        """Listen on ``host:port``; returns the port (useful with port 0). ``reuse_port``
        sets SO_REUSEPORT, so that several processes listen on the one port and the kernel
        spreads new connections over them."""
        self._loop = asyncio.get_running_loop()
        self._server = await self._loop.create_server(
            lambda: _Conn(self),
            host,
            port,
            backlog=backlog,
            reuse_address=True,
            reuse_port=reuse_port or None,
        )
        sockets = self._server.sockets
        return int(sockets[0].getsockname()[1]) if sockets else port

    # -- the live set -------------------------------------------------------------------

    def admitted(self, conn: _Conn) -> None:
        connections = self.connections
        connections[conn] = None
        if self.draining:
            conn.shutdown()
            conn._close()
            return
        if len(connections) <= self.max_connections:
            return
        self.tripped("max_client_connections")
        victim = next((c for c in connections if c is not conn and c.idle), conn)
        log.info("connection cap reached; a connection was closed")
        victim._close()
        if victim is conn:
            conn.lost = True  # nothing is served on it

    def forget(self, conn: _Conn) -> None:
        self.connections.pop(conn, None)
        if not self.connections and self._gone is not None:
            self._gone.set()

    def tripped(self, limit: str) -> None:
        if self._on_limit is not None:
            self._on_limit(limit)

    # -- shutting down ------------------------------------------------------------------

    async def drain(self, grace: float) -> None:
        """Stop accepting; let the requests in flight finish within ``grace`` seconds,
        then close what is left."""
        self.draining = True
        if self._server is not None:
            self._server.close()
        self._gone = asyncio.Event()
        for conn in list(self.connections):
            conn.shutdown()
        if self.connections:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._gone.wait(), grace)
        await self.close()

    async def close(self) -> None:
        """Close the listener and every connection now (handlers are cancelled)."""
        self.draining = True
        if self._server is not None:
            self._server.close()
        tasks = []
        for conn in list(self.connections):
            if conn._task is not None:
                tasks.append(conn._task)
            conn._abort()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
            self._server = None
