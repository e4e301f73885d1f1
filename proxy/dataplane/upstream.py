"""A pooled HTTP/1.1 keep-alive client for the one upstream; llhttp (httptools) parses.

One request per connection at a time (no pipelining). Idle connections wait on a LIFO
list, so the most recently used one is reused and the surplus ages out after
``keepalive`` seconds (or a little before the upstream's own ``Keep-Alive: timeout``).
The request head is serialised once and goes out with a small body in one write; larger
and streamed bodies follow with flow control. Every deadline is a loop timer
(``loop.call_at``): the response head (``head_timeout``, which also bounds waiting for a
free connection), the connect, each wait for body data (``read_timeout``) and the idle
sweep. A reused connection that the upstream closed while it was idle (nothing received
when the write or the first read fails) is retried once on a fresh connection, and only
when the caller says the request may be repeated.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl as _ssl
from collections import deque
from collections.abc import AsyncIterable, Iterable, Mapping
from typing import cast
from urllib.parse import urlsplit

import httptools
from multidict import CIMultiDict, CIMultiDictProxy, istr

from proxy.dataplane.chunks import HIGH_WATER, LOW_WATER, take_joined

__all__ = [
    "UpstreamConnectTimeout",
    "UpstreamCut",
    "UpstreamError",
    "UpstreamPool",
    "UpstreamReadTimeout",
    "UpstreamResponse",
    "UpstreamTimeout",
    "UpstreamUnavailable",
]

SMALL_BODY = 64 * 1024  # a bytes body up to this size goes out in the head's write

_CONTENT_LENGTH = istr("Content-Length")
_CONTENT_TYPE = istr("Content-Type")
_TRANSFER_ENCODING = istr("Transfer-Encoding")
_KEEP_ALIVE = istr("Keep-Alive")
# aiohttp sends Content-Length: 0 for a bodiless request of any other method.
_NO_BODY_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
_BYTES_TYPES = (bytes, bytearray, memoryview)


class UpstreamError(Exception):
    """Base of the pool's errors."""


class UpstreamUnavailable(UpstreamError):
    """Connect refused or failed, or the connection closed (or sent garbage) before a
    response head."""


class UpstreamTimeout(UpstreamError):
    """No response head within ``head_timeout`` (free connection, connect and head)."""


class UpstreamConnectTimeout(UpstreamTimeout):
    """The connect (TCP and TLS) took longer than ``connect_timeout``."""


class UpstreamCut(UpstreamError):
    """The body broke after the head: closed short, a malformed chunk, or stalled."""


class UpstreamReadTimeout(UpstreamCut):
    """No body data for ``read_timeout`` seconds while the caller waited for some."""


class _Stale(UpstreamUnavailable):
    """A reused connection lost with nothing received: the upstream closed it while idle."""


def _decode(raw: bytes) -> str:
    # As aiohttp's parser: the bytes survive a round trip through str.
    return raw.decode("utf-8", "surrogateescape")


def _keep_alive_timeout(value: str) -> float | None:
    """``timeout=N`` of a ``Keep-Alive`` response header, if any."""
    for part in value.split(","):
        key, _, number = part.partition("=")
        if key.strip().lower() == "timeout":
            try:
                seconds = float(number.strip())
            except ValueError:
                return None
            return seconds if seconds >= 0 else None
    return None


class UpstreamResponse:
    """A response head and its (de-chunked) body, read as it arrives.

    The body buffer is bounded: above ``HIGH_WATER`` bytes the connection stops being read
    until ``readany`` takes it below ``LOW_WATER``. Call ``release()`` (or ``close()``)
    when done: a connection whose response arrived whole goes back to the pool.
    """

    __slots__ = (
        "_chunks",
        "_conn",
        "_eof",
        "_exc",
        "_loop",
        "_read_timeout",
        "_request",
        "_request_headers",
        "_size",
        "_waiter",
        "content_length",
        "content_type",
        "headers",
        "reason",
        "status",
        "version",
    )

    def __init__(
        self,
        conn: _Conn,
        status: int,
        reason: str,
        headers: CIMultiDictProxy[str],
        content_length: int | None,
        version: str,
    ) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self.content_length = content_length
        self.version = version
        ctype = headers.get(_CONTENT_TYPE)
        self.content_type = ctype.partition(";")[0].strip().lower() if ctype else ""
        self._conn: _Conn | None = conn
        self._loop = conn.loop
        self._read_timeout = conn.pool.read_timeout
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self._eof = False
        self._exc: UpstreamCut | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._request: tuple[str, Iterable[tuple[str, str]], str | None] | None = None
        self._request_headers: CIMultiDictProxy[str] | None = None

    def __repr__(self) -> str:
        return f"<UpstreamResponse {self.status} {self.reason!r}>"

    @property
    def request_headers(self) -> CIMultiDictProxy[str]:
        """The headers sent upstream (Host and the framing header included)."""
        if self._request_headers is None:
            out: CIMultiDict[str] = CIMultiDict()
            if self._request is not None:
                host, items, framing = self._request
                out.add("Host", host)
                out.extend(items)
                if framing is not None:
                    name, _, value = framing.partition(": ")
                    out.add(name, value.rstrip("\r\n"))
            self._request_headers = CIMultiDictProxy(out)
        return self._request_headers

    @property
    def complete(self) -> bool:
        """The whole body has arrived (it may still be buffered here)."""
        return self._eof

    # -- reading -------------------------------------------------------------------------

    async def readany(self) -> bytes:
        """The next piece of the body; ``b""`` at its end. Raises ``UpstreamCut`` when the
        body broke (after handing out what arrived before), ``UpstreamReadTimeout`` when no
        data came for ``read_timeout`` seconds."""
        while True:
            if self._chunks:
                return self._take()
            if self._eof:
                return b""
            exc = self._exc
            if exc is not None:
                raise type(exc)(*exc.args)
            conn = self._conn
            if conn is None:
                raise UpstreamCut("response closed before its end")
            loop = self._loop
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiter = waiter
            timer = loop.call_at(loop.time() + self._read_timeout, self._read_expired, waiter)
            try:
                await waiter
            finally:
                timer.cancel()
                self._waiter = None

    async def read(self) -> bytes:
        """The whole (rest of the) body."""
        parts: list[bytes] = []
        while chunk := await self.readany():
            parts.append(chunk)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _take(self) -> bytes:
        data = take_joined(self._chunks)
        self._size -= len(data)
        conn = self._conn
        if conn is not None and conn.read_paused and self._size < LOW_WATER:
            conn.resume()
        return data

    # -- fed by the connection -----------------------------------------------------------

    def _feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self._size += len(data)
        conn = self._conn
        if self._size > HIGH_WATER and conn is not None and not conn.read_paused:
            conn.pause()
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _finish(self) -> None:
        self._eof = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, exc: UpstreamCut) -> None:
        if self._eof or self._exc is not None:
            return
        self._exc = exc
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _read_expired(self, waiter: asyncio.Future[None]) -> None:
        if waiter.done():
            return
        self._fail(UpstreamReadTimeout(f"no body data for {self._read_timeout:g}s"))
        conn = self._conn
        self._conn = None
        if conn is not None:
            conn.abort()

    # -- the end -------------------------------------------------------------------------

    def release(self) -> None:
        """Done with the response. Its connection goes back to the pool when the body
        arrived whole and HTTP/1.1 allows reuse; otherwise it is closed."""
        conn = self._conn
        if conn is None:
            return
        self._conn = None
        if self._eof and conn.reusable():
            conn.pool._put(conn)
        elif self._eof:
            conn.close()
        else:
            conn.abort()
            self._fail(UpstreamCut("response released before its end"))

    def close(self) -> None:
        """Close the connection, whatever was read."""
        conn = self._conn
        if conn is None:
            return
        self._conn = None
        conn.abort()
        self._fail(UpstreamCut("response closed before its end"))

    async def __aenter__(self) -> UpstreamResponse:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.release()


class _Conn(asyncio.Protocol):
    """One upstream connection: the transport's protocol and the llhttp callbacks."""

    __slots__ = (
        "_body_sent",
        "_body_task",
        "_done",
        "_drain",
        "_head",
        "_headers",
        "_interim",
        "_interrupted",
        "_is_head",
        "_keep",
        "_parser",
        "_read_to_close",
        "_reading_body",
        "_reason",
        "_received",
        "_resp",
        "_write_paused",
        "alive",
        "broken",
        "counted",
        "idle",
        "idle_until",
        "keep_for",
        "loop",
        "pool",
        "read_paused",
        "reused",
        "transport",
    )

    def __init__(self, pool: UpstreamPool, loop: asyncio.AbstractEventLoop) -> None:
        self.pool = pool
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self._parser: httptools.HttpResponseParser | None = None
        self.alive = True
        self.broken = False
        self.counted = True  # holds one of the pool's max_connections places
        self.idle = False
        self.idle_until = 0.0
        self.keep_for = pool.keepalive
        self.reused = False
        self.read_paused = False
        self._write_paused = False
        self._drain: asyncio.Future[None] | None = None
        # the exchange in flight
        self._head: asyncio.Future[UpstreamResponse] | None = None
        self._resp: UpstreamResponse | None = None
        self._is_head = False
        self._received = False
        self._interim = False
        self._done = False
        self._keep = False
        self._body_sent = False
        self._read_to_close = False
        self._body_task: asyncio.Task[object] | None = None  # awaiting a streamed body
        self._reading_body = False
        self._interrupted = False
        self._headers: list[tuple[bytes, bytes]] = []
        self._reason = b""

    # -- transport callbacks -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        parser = self._parser
        if self._head is None or parser is None:
            self.abort()  # nothing asked: bytes on an idle connection make it unusable
            return
        self._received = True
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.broken = True  # 101: what follows is not HTTP
        except httptools.HttpParserError as exc:
            self._malformed(exc)

    def eof_received(self) -> bool | None:
        return None  # the transport closes; connection_lost sorts out what it means

    def connection_lost(self, exc: Exception | None) -> None:
        self.alive = False
        self.pool._forget(self)
        self._wake_drain()
        self._interrupt_body()
        head = self._head
        resp = self._resp
        if head is not None and not head.done():
            if self.reused and not self._received:
                head.set_exception(_Stale("pooled connection closed by the upstream"))
            else:
                head.set_exception(
                    UpstreamUnavailable("upstream closed the connection before a response head")
                )
        elif resp is not None and not self._done:
            self._done = True
            if self._read_to_close and exc is None:
                resp._finish()  # a body without length ends with the connection
            else:
                resp._fail(UpstreamCut("upstream closed the connection mid-body"))
        # No cycles left for the collector: the parser holds this protocol's methods.
        self._parser = None
        self._head = None
        self._resp = None

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake_drain()

    # -- llhttp callbacks ----------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._headers = []
        self._reason = b""

    def on_status(self, status: bytes) -> None:
        self._reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        parser = self._parser
        if parser is None:  # a second answer after a HEAD one
            self.broken = True
            return
        status = parser.get_status_code()
        if status < 200 and status != 101:
            self._interim = True  # 100 Continue, 102, 103: the final answer follows
            return
        head = self._head
        if head is None or head.done() or self._resp is not None:
            self.broken = True
            return
        raw = self._headers
        headers = CIMultiDictProxy(CIMultiDict([(_decode(n), _decode(v)) for n, v in raw]))
        te: list[str] = headers.getall(_TRANSFER_ENCODING, [])
        chunked = bool(te) and te[-1].rsplit(",", 1)[-1].strip().lower() == "chunked"
        length: int | None = None
        if not te and (cl := headers.get(_CONTENT_LENGTH)) is not None:
            try:
                length = int(cl)
            except ValueError:
                length = None
        keep_alive = headers.get(_KEEP_ALIVE)
        if keep_alive is not None:
            hint = _keep_alive_timeout(keep_alive)
            if hint is not None:
                self.keep_for = min(self.pool.keepalive, hint - min(1.0, hint / 2))
        resp = UpstreamResponse(
            self, status, _decode(self._reason), headers, length, parser.get_http_version()
        )
        self._resp = resp
        if self._is_head or status in (204, 304) or status == 101:
            # No body: llhttp would wait for a HEAD answer's Content-Length bytes, so the
            # parser is not reused after one.
            self._done = True
            self._keep = status != 101 and parser.should_keep_alive()
            if self._is_head:
                self._parser = None
            resp._finish()
        else:
            self._read_to_close = not chunked and length is None
        self._wake_drain()
        self._interrupt_body()
        head.set_result(resp)

    def on_body(self, body: bytes) -> None:
        resp = self._resp
        if resp is None or self._done:
            self.broken = True
            return
        resp._feed(body)

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        if self._done:
            return
        resp = self._resp
        if resp is None:
            self.broken = True
            return
        self._done = True
        parser = self._parser
        self._keep = parser is not None and parser.should_keep_alive()
        resp._finish()

    # -- the pool's side -----------------------------------------------------------------

    def _malformed(self, exc: Exception) -> None:
        self.broken = True
        head = self._head
        if head is not None and not head.done():
            head.set_exception(UpstreamUnavailable(f"malformed response head: {exc}"))
        elif self._resp is not None and not self._done:
            self._done = True
            self._resp._fail(UpstreamCut(f"malformed response body: {exc}"))
        self.abort()

    def _head_expired(self, head: asyncio.Future[UpstreamResponse], timeout: float) -> None:
        if head.done():
            return
        head.set_exception(UpstreamTimeout(f"no response head within {timeout:g}s"))
        self._interrupt_body()
        self.abort()

    def _interrupt_body(self) -> None:
        """Stop waiting for the next piece of a streamed body: the upstream answered, the
        head deadline passed, or the connection is gone (the task is cancelled and the
        cancellation taken back in ``_stream``, as ``asyncio.timeout`` does)."""
        task = self._body_task
        if task is not None and self._reading_body and not self._interrupted:
            self._interrupted = True
            task.cancel()

    def _wake_drain(self) -> None:
        drain = self._drain
        if drain is not None and not drain.done():
            drain.set_result(None)

    async def _drained(self) -> None:
        if not self._write_paused or not self.alive:
            return
        drain: asyncio.Future[None] = self.loop.create_future()
        self._drain = drain
        try:
            await drain
        finally:
            self._drain = None

    def pause(self) -> None:
        if self.transport is not None and not self.read_paused:
            self.read_paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.transport is not None and self.read_paused:
            self.read_paused = False
            self.transport.resume_reading()

    def reusable(self) -> bool:
        return (
            self._done
            and self._keep
            and self._body_sent
            and self.alive
            and not self.broken
            and self.transport is not None
            and not self.transport.is_closing()
        )

    def reset(self) -> None:
        """Between exchanges: nothing in flight, the socket read again."""
        self._head = None
        self._resp = None
        self.resume()

    def abort(self) -> None:
        """Drop the connection now (mid-exchange: a reset, nothing more is sent)."""
        self.broken = True
        if self.transport is not None:
            self.transport.abort()
        self.pool._forget(self)

    def close(self) -> None:
        """Close politely; a reset instead when unsent bytes would keep it open."""
        self.broken = True
        transport = self.transport
        if transport is not None:
            if transport.get_write_buffer_size():
                transport.abort()
            else:
                transport.close()
        self.pool._forget(self)

    async def exchange(
        self,
        head: bytes,
        body: bytes | bytearray | memoryview | AsyncIterable[bytes] | None,
        length: int | None,
        is_head: bool,
        deadline: float,
        head_timeout: float,
    ) -> UpstreamResponse:
        """Send one request; return once its response head arrived."""
        loop = self.loop
        transport = self.transport
        if transport is None or not self.alive:
            raise UpstreamUnavailable("upstream closed the connection before the request")
        future: asyncio.Future[UpstreamResponse] = loop.create_future()
        self._head = future
        self._resp = None
        self._is_head = is_head
        self._received = self._interim = self._done = self._keep = False
        self._body_sent = self._read_to_close = False
        if self._parser is None:
            self._parser = httptools.HttpResponseParser(self)
        timer = loop.call_at(deadline, self._head_expired, future, head_timeout)
        try:
            if body is None:
                transport.write(head)
                self._body_sent = True
            elif isinstance(body, _BYTES_TYPES):
                if len(body) <= SMALL_BODY:
                    transport.write(head + body)
                else:
                    transport.write(head)
                    transport.write(body)
                self._body_sent = True
            else:
                await self._stream(transport, head, body, length, future)
            return await future
        except BaseException:
            if not future.done():
                future.cancel()  # nobody waits for it any more
            elif not future.cancelled():
                future.exception()  # retrieved: no "never retrieved" warning
            self.abort()
            raise
        finally:
            timer.cancel()

    async def _stream(
        self,
        transport: asyncio.Transport,
        head: bytes,
        body: AsyncIterable[bytes],
        length: int | None,
        answered: asyncio.Future[UpstreamResponse],
    ) -> None:
        """A streamed body: chunked when its length is unknown, flow-controlled. Stops
        early, even while waiting for the next piece, when the upstream answered (or
        failed, or the head deadline passed) before taking it all."""
        transport.write(head)
        sent = 0
        iterator = aiter(body)
        task = asyncio.current_task()
        self._body_task = task
        self._interrupted = False
        try:
            while not answered.done() and self.alive:
                self._reading_body = True
                try:
                    chunk = await anext(iterator)
                except StopAsyncIteration:
                    if length is None:
                        transport.write(b"0\r\n\r\n")
                    elif sent != length:
                        raise ValueError("request body shorter than its Content-Length") from None
                    self._body_sent = True
                    return
                except asyncio.CancelledError:
                    if self._interrupted and task is not None and task.uncancel() == 0:
                        return  # ours: the body's source saw it and is finished
                    raise
                finally:
                    self._reading_body = False
                if self._interrupted:  # the source swallowed the cancellation
                    if task is not None:
                        task.uncancel()
                    break
                if not chunk:
                    continue
                size = len(chunk)
                sent += size
                if length is None:
                    transport.write(b"".join((b"%x\r\n" % size, chunk, b"\r\n")))
                else:
                    if sent > length:
                        raise ValueError("request body longer than its Content-Length")
                    transport.write(chunk)
                if self._write_paused:
                    await self._drained()
        finally:
            self._body_task = None
            self._reading_body = False
        aclose = getattr(iterator, "aclose", None)
        if aclose is not None:
            await aclose()


class UpstreamPool:
    """Pooled HTTP/1.1 keep-alive connections to one upstream (``http`` or ``https``)."""

    def __init__(
        self,
        base: str,
        *,
        max_connections: int,
        connect_timeout: float,
        keepalive: float,
        read_timeout: float,
        ssl: _ssl.SSLContext | None = None,
    ) -> None:
        parts = urlsplit(base)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https"):
            raise ValueError(f"upstream must be http:// or https://, not {base!r}")
        if not parts.hostname or parts.query or parts.fragment or parts.username:
            raise ValueError(f"upstream needs a host and no query, fragment or userinfo: {base!r}")
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        default_port = 443 if scheme == "https" else 80
        self.host = parts.hostname
        self.port = parts.port or default_port
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.host_header = host if self.port == default_port else f"{host}:{self.port}"
        self.prefix = parts.path.rstrip("/")
        self.ssl: _ssl.SSLContext | None = None
        if scheme == "https":
            self.ssl = ssl if ssl is not None else _ssl.create_default_context()
        self.max_connections = max_connections
        self.connect_timeout = connect_timeout
        self.keepalive = keepalive
        self.read_timeout = read_timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._open = 0  # places taken: connections open or being opened
        self._conns: set[_Conn] = set()
        self._idle: deque[_Conn] = deque()  # LIFO: append and pop on the right
        self._waiters: deque[asyncio.Future[_Conn | None]] = deque()
        self._sweep: asyncio.TimerHandle | None = None
        self._closed = False

    def __repr__(self) -> str:
        return (
            f"<UpstreamPool {self.host_header}{self.prefix} open={self._open} "
            f"idle={len(self._idle)} waiting={len(self._waiters)}>"
        )

    @property
    def open_connections(self) -> int:
        return self._open

    @property
    def idle_connections(self) -> int:
        return len(self._idle)

    # -- requests ------------------------------------------------------------------------

    async def request(
        self,
        method: str,
        target: str,
        headers: Iterable[tuple[str, str]] | Mapping[str, str],
        body: bytes | bytearray | memoryview | AsyncIterable[bytes] | None = None,
        *,
        head_timeout: float,
        retry_idempotent: bool = False,
        body_length: int | None = None,
    ) -> UpstreamResponse:
        """Send ``method`` ``target`` (the raw path?query, appended to the base's path) and
        return the response once its head arrived.

        ``headers``: pairs (or a multidict), already without Host, Content-Length,
        Transfer-Encoding and hop-by-hop headers; the pool sets Host from the base,
        Content-Length for a bytes body, and chunked framing for an iterable body unless
        ``body_length`` gives its exact length. ``head_timeout`` bounds everything up to
        the response head: a free connection, the connect, the request and the head.
        ``retry_idempotent``: a reused connection found closed is retried once on a fresh
        one (never with an iterable body, which cannot be replayed).
        """
        if self._closed:
            raise UpstreamUnavailable("upstream pool closed")
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        deadline = loop.time() + head_timeout
        items: Iterable[tuple[str, str]]
        if isinstance(headers, list | tuple):
            items = headers
        elif isinstance(headers, Mapping):
            items = headers.items()  # a multidict's items keep repeated names
        else:
            items = list(headers)
        lines = [f"{name}: {value}\r\n" for name, value in items]
        streamed = body is not None and not isinstance(body, _BYTES_TYPES)
        length: int | None
        framing: str | None
        if body is None:
            length = None
            framing = None if method in _NO_BODY_METHODS else "Content-Length: 0\r\n"
        elif streamed:
            length = body_length
            framing = (
                "Transfer-Encoding: chunked\r\n"
                if length is None
                else f"Content-Length: {length}\r\n"
            )
        else:
            length = len(cast(bytes, body))
            framing = f"Content-Length: {length}\r\n"
        path = self.prefix + target if target else self.prefix or "/"
        text = (
            f"{method} {path} HTTP/1.1\r\nHost: {self.host_header}\r\n"
            f"{''.join(lines)}{framing or ''}\r\n"
        )
        newlines = len(lines) + (4 if framing else 3)
        if text.count("\n") != newlines or text.count("\r") != newlines or " " in path:
            raise ValueError("CR, LF or a space in the request target or a header")
        head = text.encode("utf-8", "surrogateescape")
        is_head = method == "HEAD"
        attempts = 2 if retry_idempotent and not streamed else 1
        for attempt in range(attempts):
            conn = await self._acquire(loop, deadline, head_timeout, fresh=attempt > 0)
            try:
                resp = await conn.exchange(head, body, length, is_head, deadline, head_timeout)
            except _Stale as exc:
                if attempt + 1 < attempts:
                    continue
                raise UpstreamUnavailable(str(exc)) from None
            resp._request = (self.host_header, items, framing)
            return resp
        raise AssertionError("unreachable")  # pragma: no cover

    async def close(self) -> None:
        """Close every connection; waiting requests fail with ``UpstreamUnavailable``."""
        self._closed = True
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(UpstreamUnavailable("upstream pool closed"))
        for conn in list(self._conns):
            if conn.idle:
                conn.close()
            else:
                conn.abort()
        await asyncio.sleep(0)  # let the transports finish closing

    # -- connections ---------------------------------------------------------------------

    async def _acquire(
        self, loop: asyncio.AbstractEventLoop, deadline: float, head_timeout: float, *, fresh: bool
    ) -> _Conn:
        if not fresh:
            idle = self._idle
            now = loop.time()
            while idle:
                conn = idle.pop()
                conn.idle = False
                if conn.idle_until > now and conn.alive:
                    return conn
                conn.close()
        if self._open < self.max_connections:
            self._open += 1
            return await self._connect(loop, deadline)
        waiter: asyncio.Future[_Conn | None] = loop.create_future()
        self._waiters.append(waiter)
        timer = loop.call_at(deadline, self._waiter_expired, waiter, head_timeout)
        try:
            got = await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self._hand_back(waiter.result())  # cancelled just after being served
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            raise
        finally:
            timer.cancel()
        if got is None:  # a place was freed and reserved for this request
            return await self._connect(loop, deadline)
        return got

    def _hand_back(self, got: _Conn | None) -> None:
        if got is None:
            self._slot_freed()
        else:
            self._put(got)

    @staticmethod
    def _waiter_expired(waiter: asyncio.Future[_Conn | None], timeout: float) -> None:
        if not waiter.done():
            waiter.set_exception(
                UpstreamTimeout(f"no free upstream connection within {timeout:g}s")
            )

    async def _connect(self, loop: asyncio.AbstractEventLoop, deadline: float) -> _Conn:
        """A new connection, in a place already reserved (freed again on failure)."""
        timeout = min(self.connect_timeout, deadline - loop.time())
        try:
            if timeout <= 0:
                raise TimeoutError
            async with asyncio.timeout_at(loop.time() + timeout):
                _, conn = await loop.create_connection(
                    lambda: _Conn(self, loop),
                    self.host,
                    self.port,
                    ssl=self.ssl,
                    server_hostname=self.host if self.ssl is not None else None,
                )
        except TimeoutError:
            self._slot_freed()
            raise UpstreamConnectTimeout(
                f"connect to {self.host_header} took over {timeout:g}s"
            ) from None
        except OSError as exc:
            self._slot_freed()
            raise UpstreamUnavailable(f"connect to {self.host_header} failed: {exc}") from exc
        except BaseException:
            self._slot_freed()
            raise
        if self._closed:
            conn.counted = False
            conn.close()
            self._slot_freed()
            raise UpstreamUnavailable("upstream pool closed")
        self._conns.add(conn)
        return conn

    def _put(self, conn: _Conn) -> None:
        """A connection whose exchange ended cleanly: to a waiting request, or idle."""
        conn.reset()
        if self._closed or self.keepalive <= 0 or conn.keep_for <= 0:
            conn.close()
            return
        conn.reused = True
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        loop = conn.loop
        conn.idle_until = loop.time() + conn.keep_for
        conn.idle = True
        self._idle.append(conn)
        if self._sweep is None:
            self._sweep = loop.call_at(conn.idle_until, self._sweep_idle)

    def _sweep_idle(self) -> None:
        """Close idle connections past their time; the timer follows the next one due."""
        self._sweep = None
        idle = self._idle
        if not idle:
            return
        loop = idle[0].loop
        now = loop.time()
        for conn in [c for c in idle if c.idle_until <= now]:
            conn.close()  # leaves the idle list through _forget
        if idle:
            self._sweep = loop.call_at(min(c.idle_until for c in idle), self._sweep_idle)

    def _forget(self, conn: _Conn) -> None:
        """A connection closed (by either side): its place in the pool is free."""
        if conn.idle:
            conn.idle = False
            with contextlib.suppress(ValueError):
                self._idle.remove(conn)
        if conn.counted:
            conn.counted = False
            self._conns.discard(conn)
            self._slot_freed()

    def _slot_freed(self) -> None:
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the place passes to it, still counted
                return
        self._open -= 1
