"""Streaming pass-through to the upstream: bodies, SSE, headers; upstream failures as envelopes."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from aiohttp import (
    ClientConnectionError,
    ClientConnectorError,
    ClientPayloadError,
    ClientResponse,
    ClientResponseError,
    ClientSession,
    ConnectionTimeoutError,
    ServerDisconnectedError,
    hdrs,
    web,
)
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from proxy.config import Settings
from proxy.errors import (
    E,
    Rendered,
    WardenError,
    code_for_upstream_status,
    jsonrpc_error_object,
    render_aip193,
    render_jsonrpc,
    render_sse_aip193,
    render_sse_jsonrpc,
)
from proxy.errors.normalize import (
    complete_aip193,
    is_aip193,
    legacy_rest_reason,
    normalize_jsonrpc_error,
    rest_reason_for_jsonrpc_code,
)
from proxy.errors.render import jsonrpc_code
from proxy.gate import Admission, Gate, Refusal
from proxy.metrics import HTTP_METHODS, OTHER, Metrics, RequestOutcome
from proxy.protocols import a2a, jsonrpc, mcp
from proxy.protocols.card import card_is_signed, rewrite_card
from proxy.protocols.classify import Binding, Classified, Protocol, classify, reads_body
from proxy.protocols.events import StreamWatch
from proxy.protocols.mcp import SESSION_HEADER
from proxy.protocols.sse import EventSplitter
from proxy.telemetry import (
    NOOP,
    Telemetry,
    Trace,
    decision_attributes,
    span_attributes,
    trace_response,
)

log = logging.getLogger("agent_warden.forward")

# RFC 9110 section 7.6.1, plus the legacy Proxy-Connection and Keep-Alive.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# Set by the proxy itself on the way up.
_REQUEST_DROP = HOP_BY_HOP | {"host", "content-length", "expect", "accept-encoding"}
_RESPONSE_DROP = HOP_BY_HOP | {"content-length"}
# Kept when an upstream error body is rewritten: they still mean something to the client.
_KEPT_ON_REWRITE = ("Retry-After", "WWW-Authenticate", "Allow", SESSION_HEADER)
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "DELETE", "PUT"})
_UPSTREAM_MESSAGE_MAX = 200
_CHUNK = 64 * 1024


@dataclass(frozen=True, slots=True)
class ErrorStyle:
    """What the policy file says about rendering errors."""

    domain: str = "agent-warden.dev"
    a2a_spec: str = "1.0.1"


class BodyTooLarge(Exception):
    pass


def _connection_tokens(headers: CIMultiDictProxy[str]) -> frozenset[str]:
    values = headers.getall(hdrs.CONNECTION, ())
    if not values:
        return frozenset()
    return frozenset(t.strip().lower() for v in values for t in v.split(",") if t.strip())


def filter_headers(headers: CIMultiDictProxy[str], drop: frozenset[str]) -> CIMultiDict[str]:
    """A copy without hop-by-hop headers, including those named in ``Connection``."""
    named = _connection_tokens(headers)
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in headers.items():
        low = name.lower()
        if low in drop or low in named:
            continue
        out.add(name, value)
    return out


def upstream_failure(exc: BaseException) -> E:
    """The aiohttp client exception tree as a table, most specific first."""
    if isinstance(exc, ConnectionTimeoutError | ClientConnectorError):
        return E.UPSTREAM_UNAVAILABLE
    if isinstance(exc, TimeoutError):  # our header deadline, or a socket read timeout
        return E.UPSTREAM_TIMEOUT
    return E.UPSTREAM_UNAVAILABLE


class Forwarder:
    """One handler for every method and path; holds the pooled upstream client."""

    def __init__(
        self,
        settings: Settings,
        client: ClientSession,
        error_style: Callable[[], ErrorStyle],
        gate: Gate,
        metrics: Metrics,
        telemetry: Telemetry | None = None,
    ) -> None:
        self._metrics = metrics
        self._telemetry = telemetry or Telemetry()
        self._settings = settings
        self._client = client
        self._style = error_style
        self._gate = gate
        self._hint: Protocol = "unknown"  # what earlier requests revealed about the upstream
        self._base = str(settings.upstream).rstrip("/")
        self._public_url = settings.public_url

    # -- request side -------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Answer one request; counts it by protocol, method and outcome."""
        metrics = self._metrics
        metrics.in_flight.inc()
        request[_OUTCOME] = RequestOutcome.ALLOWED
        trace = request[_TRACE] = self._telemetry.begin(
            request.method, request.path, request.scheme, request.host, request.headers
        )
        status = 500
        try:
            response = await self._handle(request)
            status = response.status
            return response
        except asyncio.CancelledError:
            status = 499  # the client went away
            raise
        finally:
            trace.end(status)
            metrics.in_flight.dec()
            info = request.get(_INFO)
            if info is None:
                metrics.requests.inc("unknown", _http_label(request.method), request[_OUTCOME])
            else:
                metrics.requests.inc(
                    info.protocol, _method_label(info, request.method), request[_OUTCOME]
                )

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        settings = self._settings
        body: bytes | None = None
        if reads_body(request.method):
            length = request.content_length
            if length is not None and length > settings.max_body_size:
                return self._too_large(request)
            try:
                body = await self._read_request(request)
            except BodyTooLarge:
                return self._too_large(request)
        info = classify(
            request.method, request.path, request.headers, body, settings.protocol, self._hint
        )
        request[_INFO] = info
        trace = request[_TRACE]
        if trace is not NOOP:
            trace.classified(*span_attributes(info, request.headers))
        if info.invalid is not None:
            request[_OUTCOME] = RequestOutcome.INVALID
            err = E.PARSE_ERROR if info.invalid.parse_error else E.INVALID_REQUEST
            return self._error(info, WardenError(err), trace)
        if info.protocol != "unknown" and info.binding is not Binding.OPAQUE:
            self._hint = info.protocol
        verdict = await self._gate.admit(request.method, request.headers, info)
        if trace is not NOOP:
            trace.decided(decision_attributes(verdict))
        if isinstance(verdict, Refusal):
            request[_OUTCOME] = RequestOutcome.DENIED
            return self._error(info, verdict.error, trace)
        if verdict.decision != "allow":
            request[_OUTCOME] = (
                RequestOutcome.AUDIT_DENIED
                if verdict.decision == "audit-deny"
                else RequestOutcome.DENIED  # part of a batch refused
            )
        if verdict.forwards_nothing:
            return _json_response(verdict.denied_errors)
        if verdict.strip_session and request.method == "DELETE":
            # A session the proxy issued ends here: the stateless upstream never knew it.
            await self._gate.settle(verdict, 200, None)
            return web.Response(status=200)
        try:
            return await self._forward(request, info, body, verdict)
        finally:
            # Whatever happened (the client left, the upstream failed): no place stays held.
            await self._gate.finish(verdict)

    async def _read_request(self, request: web.Request) -> bytes:
        limit = self._settings.max_body_size
        parts: list[bytes] = []
        size = 0
        while True:
            chunk = await request.content.readany()
            if not chunk:
                return b"".join(parts)
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge
            parts.append(chunk)

    def _too_large(self, request: web.Request) -> web.Response:
        # The body was not read: a JSON-RPC id cannot be echoed, so the envelope follows the path.
        info = classify(
            request.method, request.path, request.headers, None, self._settings.protocol
        )
        if info.binding is Binding.OPAQUE and request.content_type in ("application/json", ""):
            info = Classified(info.protocol, Binding.JSONRPC)
        resp = self._error(info, WardenError(E.REQUEST_TOO_LARGE))
        resp.force_close()  # the unread body must not be parsed as the next request
        return resp

    def _upstream_headers(self, request: web.Request) -> CIMultiDict[str]:
        headers = filter_headers(request.headers, _REQUEST_DROP)
        peer = request.remote or ""
        prior = request.headers.get("X-Forwarded-For")
        headers["X-Forwarded-For"] = f"{prior}, {peer}" if prior else peer
        if "X-Forwarded-Proto" not in headers:
            headers["X-Forwarded-Proto"] = request.scheme
        if "X-Forwarded-Host" not in headers and request.host:
            headers["X-Forwarded-Host"] = request.host
        # The proxy reads upstream bodies to validate and rewrite them: ask for them plain.
        headers[hdrs.ACCEPT_ENCODING] = "identity"
        return headers

    async def _streamed_request_body(self, request: web.Request, overflow: list[bool]) -> Any:
        limit = self._settings.max_body_size
        size = 0
        while True:
            chunk = await request.content.readany()
            if not chunk:
                return
            size += len(chunk)
            if size > limit:
                overflow.append(True)  # aiohttp wraps what the body raises: flag it instead
                raise BodyTooLarge
            yield chunk

    async def _forward(
        self, request: web.Request, info: Classified, body: bytes | None, verdict: Admission
    ) -> web.StreamResponse:
        headers = self._upstream_headers(request)
        if verdict.strip_session:
            headers.popall(SESSION_HEADER, None)
        url = URL(self._base + request.raw_path, encoded=True)
        data: Any = verdict.forward_body if verdict.forward_body is not None else body
        overflow: list[bool] = []
        if body is None and request.body_exists:
            if request.content_length is not None:
                if request.content_length > self._settings.max_body_size:
                    return self._too_large(request)
                headers[hdrs.CONTENT_LENGTH] = str(request.content_length)
            data = self._streamed_request_body(request, overflow)
        attempts = 2 if request.method in _IDEMPOTENT and not request.body_exists else 1
        trace = request[_TRACE]
        trace.upstream(request.method, str(url), headers)
        started = time.perf_counter()
        for attempt in range(attempts):
            try:
                async with asyncio.timeout(self._settings.response_timeout):
                    resp = await self._client.request(
                        request.method,
                        url,
                        headers=headers,
                        data=data,
                        allow_redirects=False,
                        auto_decompress=False,
                    )
                break
            except BodyTooLarge:
                await self._gate.settle(verdict, None, None)
                trace.upstream_answered(None, "request_too_large")
                return self._too_large(request)
            except ServerDisconnectedError as exc:
                # A pooled keep-alive connection closed under us: retry idempotent requests once.
                if attempt + 1 < attempts:
                    continue
                await self._gate.settle(verdict, None, None)
                return self._upstream_error(request, info, exc)
            except (ClientConnectionError, ClientResponseError, TimeoutError) as exc:
                await self._gate.settle(verdict, None, None)
                if overflow:
                    trace.upstream_answered(None, "request_too_large")
                    return self._too_large(request)
                return self._upstream_error(request, info, exc)
        self._metrics.upstream_latency.observe(time.perf_counter() - started, info.protocol)
        if resp.status >= 500:
            request[_OUTCOME] = RequestOutcome.UPSTREAM_ERROR
        try:
            extra = await self._gate.settle(verdict, resp.status, resp.headers)
            return await self._respond(request, info, resp, extra, verdict)
        finally:
            resp.release()
            trace.upstream_answered(resp.status)  # after the body: the whole upstream call

    # -- response side ------------------------------------------------------------------

    async def _respond(
        self,
        request: web.Request,
        info: Classified,
        resp: ClientResponse,
        extra: dict[str, str],
        verdict: Admission,
    ) -> web.StreamResponse:
        status = resp.status
        headers = filter_headers(resp.headers, _RESPONSE_DROP)
        headers.update(extra)
        streaming = resp.content_type == "text/event-stream"
        if verdict.denied_errors and 200 <= status < 300:
            return await self._merge_batch(request, info, resp, headers, verdict, streaming)
        if request.method == "HEAD" or status in (204, 304) or status < 200:
            return web.Response(status=status, reason=resp.reason, headers=headers)
        if status >= 400:
            return await self._error_status(request, info, resp, headers)
        if status >= 300:
            return await self._relay(request, resp, headers)
        ids = info.request_ids
        if info.binding is Binding.JSONRPC and ids:
            if streaming:
                return await self._relay_events(request, info, resp, headers, verdict, set(ids))
            return await self._checked_jsonrpc(request, info, resp, headers, verdict)
        if streaming:
            return await self._relay_events(request, info, resp, headers, verdict, None)
        if self._public_url is not None and _is_card_request(request, info):
            return await self._card(request, info, resp, headers)
        if info.binding is Binding.REST and verdict.learns:
            return await self._checked_rest(request, info, resp, headers, verdict)
        return await self._relay(request, resp, headers)

    async def _merge_batch(
        self,
        request: web.Request,
        info: Classified,
        resp: ClientResponse,
        headers: CIMultiDict[str],
        verdict: Admission,
        streaming: bool,
    ) -> web.StreamResponse:
        """A batch of which some elements were denied: their errors join the upstream's answer."""
        denied = verdict.denied_errors
        if streaming:
            out = web.StreamResponse(status=resp.status, reason=resp.reason, headers=headers)
            await out.prepare(request)
            for error in denied:
                payload = json.dumps(error, separators=(",", ":"))
                await out.write(f"event: message\ndata: {payload}\n\n".encode())
            pending = {i for i in info.request_ids if i not in {e["id"] for e in denied}}
            return await self._relay_events(request, info, resp, headers, verdict, pending, out)
        read = await self._read_json(request, info, resp)
        if isinstance(read, web.Response):
            return read
        _, doc, _ = read
        answered = doc if isinstance(doc, list) else [doc] if isinstance(doc, dict) else []
        return _json_response([*answered, *denied])

    async def _read_json(
        self, request: web.Request, info: Classified, resp: ClientResponse
    ) -> tuple[bytes, Any, bool] | web.Response:
        """``(body, parsed JSON or None, readable)`` of a body the proxy must inspect, or the
        envelope when the upstream failed mid-body. Not readable: too large or encoded."""
        try:
            data, whole = await self._read_bounded(resp)
        except (ClientPayloadError, ClientConnectionError, TimeoutError) as exc:
            return self._upstream_error(request, info, exc)
        readable = whole and not _encoded(resp)
        return data, _json_or_none(data) if readable else None, readable

    async def _read_bounded(self, resp: ClientResponse) -> tuple[bytes, bool]:
        """The body if it fits the inspection limit; ``(prefix, False)`` when it does not."""
        limit = self._settings.max_body_size
        length = resp.content_length
        if length is not None and length <= limit:
            return await resp.read(), True
        parts: list[bytes] = []
        size = 0
        while True:
            chunk = await resp.content.readany()
            if not chunk:
                return b"".join(parts), True
            parts.append(chunk)
            size += len(chunk)
            if size > limit:
                return b"".join(parts), False

    async def _checked_jsonrpc(
        self,
        request: web.Request,
        info: Classified,
        resp: ClientResponse,
        headers: CIMultiDict[str],
        verdict: Admission,
    ) -> web.StreamResponse:
        read = await self._read_json(request, info, resp)
        if isinstance(read, web.Response):
            return read
        data, doc, readable = read
        if not readable:  # too large or encoded to inspect: trusted as it is
            return await self._relay(request, resp, headers, prefix=data)
        if doc is None or not jsonrpc.is_response(doc):
            return self._invalid_response(request, info, resp)
        if info.protocol == "a2a" and (fixed := normalize_jsonrpc_error(doc)) is not None:
            data = _dumps(fixed)
        trace = request[_TRACE]
        if trace is not NOOP:
            trace_response(trace, doc)
        if verdict.learns:
            items = doc if isinstance(doc, list) else [doc]
            await self._gate.learn(verdict, [i["result"] for i in items if "result" in i])
            if (
                self._public_url is not None
                and info.a2a_op is a2a.GET_EXTENDED_AGENT_CARD
                and isinstance(doc, dict)
                and (card := self._moved_card(doc.get("result"))) is not None
            ):
                data = _dumps({**doc, "result": card})
        return web.Response(body=data, status=resp.status, reason=resp.reason, headers=headers)

    async def _card(
        self,
        request: web.Request,
        info: Classified,
        resp: ClientResponse,
        headers: CIMultiDict[str],
    ) -> web.StreamResponse:
        """An agent card whose interface URLs point at the upstream: moved to the proxy."""
        read = await self._read_json(request, info, resp)
        if isinstance(read, web.Response):
            return read
        data, doc, _ = read
        card = self._moved_card(doc) if doc is not None else None
        if card is None:
            return web.Response(body=data, status=resp.status, reason=resp.reason, headers=headers)
        headers.popall(hdrs.ETAG, None)  # the representation changed
        return web.Response(
            body=_dumps(card), status=resp.status, reason=resp.reason, headers=headers
        )

    def _moved_card(self, doc: Any) -> dict[str, object] | None:
        assert self._public_url is not None
        card = rewrite_card(doc, self._base, self._public_url)
        if card is not None and card_is_signed(doc):
            log.warning("agent card signatures no longer match its rewritten URLs")
        return card

    async def _checked_rest(
        self,
        request: web.Request,
        info: Classified,
        resp: ClientResponse,
        headers: CIMultiDict[str],
        verdict: Admission,
    ) -> web.StreamResponse:
        """An A2A REST answer: must be JSON; what it reveals binds the session."""
        read = await self._read_json(request, info, resp)
        if isinstance(read, web.Response):
            return read
        data, doc, readable = read
        if not readable:
            return await self._relay(request, resp, headers, prefix=data)
        if doc is None and data.strip():
            return self._invalid_response(request, info, resp)
        if doc is not None:
            await self._gate.learn(verdict, [doc])
        return web.Response(body=data, status=resp.status, reason=resp.reason, headers=headers)

    def _invalid_response(
        self, request: web.Request, info: Classified, resp: ClientResponse
    ) -> web.Response:
        log.warning(
            "upstream answered with a body that does not fit the request's protocol",
            extra={"status": resp.status, "path": request.path, "binding": info.binding.value},
        )
        request[_OUTCOME] = RequestOutcome.UPSTREAM_ERROR
        err = E.INVALID_AGENT_RESPONSE if info.protocol == "a2a" else E.UPSTREAM_INVALID_RESPONSE
        return self._error(info, WardenError(err))

    async def _error_status(
        self,
        request: web.Request,
        info: Classified,
        resp: ClientResponse,
        headers: CIMultiDict[str],
    ) -> web.StreamResponse:
        read = await self._read_json(request, info, resp)
        if isinstance(read, web.Response):
            return read
        data, doc, _ = read
        status = resp.status
        a2a_side = info.protocol == "a2a"
        if info.binding is Binding.JSONRPC and doc is not None and jsonrpc.is_error_response(doc):
            if a2a_side and (fixed := normalize_jsonrpc_error(doc)) is not None:
                data = _dumps(fixed)
            trace_response(request[_TRACE], doc)
            return web.Response(body=data, status=status, reason=resp.reason, headers=headers)
        # The A2A reason a legacy REST answer means (errors.md section 5), if any.
        reason = legacy_rest_reason(status, info.rest, request.path) if a2a_side else None
        if info.binding is not Binding.JSONRPC and is_aip193(doc):
            style = self._style()
            fixed = complete_aip193(doc, reason or E.UPSTREAM_ERROR, domain=style.domain)
            if fixed is not None:
                data = _dumps(fixed)
            return web.Response(body=data, status=status, reason=resp.reason, headers=headers)
        log.warning(
            "upstream error status with a non-conformant body rewritten",
            extra={"status": status, "content_type": resp.content_type},
        )
        if (
            info.binding is Binding.JSONRPC
            and info.protocol == "mcp"
            and status == 404
            and SESSION_HEADER in resp.request_info.headers
        ):
            # MCP: a 404 to a request carrying a session id means the session is gone.
            rendered = self._render(info, WardenError(E.SESSION_NOT_FOUND))
        else:
            if a2a_side and reason is None:
                reason = _rest_reason_of_jsonrpc_body(doc)
            if reason is not None:
                err = WardenError(reason)
            else:
                err = WardenError(
                    E.UPSTREAM_ERROR,
                    message=_upstream_message(doc),
                    status_override=code_for_upstream_status(status),
                )
            rendered = self._render(info, err)
            if status == 401 and info.binding is Binding.JSONRPC:
                # An auth challenge must reach the client as one (MCP authorization).
                rendered = Rendered(401, rendered.headers, rendered.body)
        out = _to_response(rendered)
        for name in _KEPT_ON_REWRITE:
            for value in resp.headers.getall(name, ()):
                out.headers.add(name, value)
        return out

    async def _relay(
        self,
        request: web.Request,
        resp: ClientResponse,
        headers: CIMultiDict[str],
        prefix: bytes = b"",
    ) -> web.StreamResponse:
        """Pass a body through unchanged, chunk by chunk as it arrives."""
        length = resp.content_length
        if not prefix and length is not None and length <= _CHUNK:
            try:
                data = await resp.read()
            except (ClientPayloadError, ClientConnectionError, TimeoutError):
                return self._abort(request)
            return web.Response(body=data, status=resp.status, reason=resp.reason, headers=headers)
        out = web.StreamResponse(status=resp.status, reason=resp.reason, headers=headers)
        if length is not None:
            out.content_length = length
        await out.prepare(request)
        try:
            if prefix:
                await out.write(prefix)
            while True:
                try:
                    chunk = await resp.content.readany()
                except (ClientPayloadError, ClientConnectionError, TimeoutError):
                    # Headers are gone already: a cut connection is the only honest signal.
                    return self._abort(request, out)
                if not chunk:
                    break
                await out.write(chunk)
            await out.write_eof()
        except ConnectionResetError:
            resp.close()  # the client left; do not reuse a half-read upstream connection
        return out

    async def _relay_events(
        self,
        request: web.Request,
        info: Classified,
        resp: ClientResponse,
        headers: CIMultiDict[str],
        verdict: Admission,
        pending: set[jsonrpc.JsonRpcId] | None,
        out: web.StreamResponse | None = None,
    ) -> web.StreamResponse:
        """Relay an SSE stream event by event; a stream cut before its end gets an error event."""
        if out is None:
            out = web.StreamResponse(status=resp.status, reason=resp.reason, headers=headers)
            await out.prepare(request)
        splitter = EventSplitter()
        op = info.a2a_op
        watch = StreamWatch(
            pending,
            jsonrpc_binding=info.binding is Binding.JSONRPC,
            a2a_stream=op is not None and op.streaming,
        )
        owes = pending is not None or (op is not None and op.streaming)
        interrupted = False
        trace = request[_TRACE]
        try:
            while True:
                try:
                    chunk = await resp.content.readany()
                except (ClientPayloadError, ClientConnectionError, TimeoutError) as exc:
                    log.warning(
                        "upstream event stream interrupted",
                        extra={"path": request.path, "error": type(exc).__name__},
                    )
                    interrupted = True
                    break
                if not chunk:
                    break
                ready = splitter.feed(chunk)
                if ready:
                    results = watch.feed(ready)
                    for code in watch.take_error_codes():
                        trace.rpc_error(code)
                    if results:
                        trace.results(results)
                        if verdict.learns:
                            await self._gate.learn(verdict, results)
                    await out.write(ready)
            if owes and (interrupted or not watch.complete):
                # Ended before its final event: tell the client in the stream's own terms.
                log.warning(
                    "upstream event stream ended before its final event",
                    extra={"path": request.path, "cut": interrupted},
                )
                await out.write(self._interrupted_events(info, watch.pending or info.request_ids))
            elif splitter.pending:
                await out.write(splitter.pending)
            await out.write_eof()
        except ConnectionResetError:
            resp.close()
        return out

    def _interrupted_events(
        self, info: Classified, pending: Iterable[jsonrpc.JsonRpcId] | None
    ) -> bytes:
        style = self._style()
        err = WardenError(E.UPSTREAM_STREAM_INTERRUPTED)
        if info.binding is Binding.JSONRPC:
            ids = list(pending) if pending else [None]
            return b"".join(
                render_sse_jsonrpc(
                    err,
                    i,
                    domain=style.domain,
                    a2a_spec=style.a2a_spec,
                    mcp=info.protocol == "mcp",
                )
                for i in ids
            )
        return render_sse_aip193(err, domain=style.domain, a2a_spec=style.a2a_spec)

    def _abort(
        self, request: web.Request, out: web.StreamResponse | None = None
    ) -> web.StreamResponse:
        if request.transport is not None:
            request.transport.close()
        return out if out is not None else web.Response(status=502)

    # -- errors -------------------------------------------------------------------------

    def _upstream_error(
        self, request: web.Request, info: Classified, exc: BaseException
    ) -> web.Response:
        """No (whole) answer from the upstream: counted, traced, and answered in an envelope."""
        reason = upstream_failure(exc)
        request[_OUTCOME] = RequestOutcome.UPSTREAM_ERROR
        self._metrics.upstream_failures.inc(reason.name)
        trace = request[_TRACE]
        trace.upstream_answered(None, reason.name)
        log.warning(
            "upstream request failed",
            extra={"reason": reason.name, "error": type(exc).__name__, "detail": str(exc)[:200]},
        )
        return self._error(info, WardenError(reason), trace)

    def _render(self, info: Classified, err: WardenError) -> Rendered:
        style = self._style()
        mcp = info.protocol == "mcp"
        if info.binding is not Binding.JSONRPC:
            if mcp:  # the MCP endpoint speaks JSON-RPC, even to GET and DELETE
                return render_jsonrpc(
                    err,
                    None,
                    domain=style.domain,
                    a2a_spec=style.a2a_spec,
                    mcp=True,
                    notification=True,
                )
            return render_aip193(err, domain=style.domain, a2a_spec=style.a2a_spec)
        if info.invalid is not None:
            return render_jsonrpc(
                err, info.invalid.id, domain=style.domain, a2a_spec=style.a2a_spec, mcp=mcp
            )
        ids = info.request_ids
        if info.body is None:  # body unread (too large)
            return render_jsonrpc(err, None, domain=style.domain, a2a_spec=style.a2a_spec, mcp=mcp)
        if not ids:
            return render_jsonrpc(
                err, None, domain=style.domain, a2a_spec=style.a2a_spec, mcp=mcp, notification=True
            )
        single = render_jsonrpc(err, ids[0], domain=style.domain, a2a_spec=style.a2a_spec, mcp=mcp)
        if not info.body.batch:
            return single
        batch = [
            jsonrpc_error_object(err, i, domain=style.domain, a2a_spec=style.a2a_spec, mcp=mcp)
            for i in ids
        ]
        body = json.dumps(batch, separators=(",", ":")).encode()
        return Rendered(single.status, single.headers, body)

    def _error(self, info: Classified, err: WardenError, trace: Trace = NOOP) -> web.Response:
        if trace is not NOOP:
            trace.rpc_error(jsonrpc_code(err, mcp=info.protocol == "mcp"))
        return _to_response(self._render(info, err))


_OUTCOME = web.RequestKey("agent_warden.outcome", RequestOutcome)
_TRACE = web.RequestKey("agent_warden.trace", Trace)
_INFO = web.RequestKey("agent_warden.info", Classified)


def _http_label(method: str) -> str:
    return method if method in HTTP_METHODS else OTHER


def _method_label(info: Classified, http_method: str) -> str:
    """A bounded label: a known JSON-RPC method or A2A operation, else the HTTP method."""
    if info.rest is not None:
        return info.rest.op.name
    if info.body is not None:
        method = info.body.first_method
        if method is not None and (method in mcp.METHODS or a2a.op_for_method(method)):
            return method
        return OTHER
    return _http_label(http_method)


def _dumps(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


def _is_card_request(request: web.Request, info: Classified) -> bool:
    if request.method != "GET":
        return False
    return a2a.is_agent_card_path(request.path) or info.a2a_op is a2a.GET_EXTENDED_AGENT_CARD


def _json_response(doc: Any) -> web.Response:
    body = json.dumps(doc, separators=(",", ":")).encode()
    return web.Response(status=200, body=body, content_type="application/json")


def _to_response(rendered: Rendered) -> web.Response:
    return web.Response(
        status=rendered.status, body=rendered.body, headers=CIMultiDict(rendered.headers)
    )


def _encoded(resp: ClientResponse) -> bool:
    encoding = resp.headers.get(hdrs.CONTENT_ENCODING, "identity").strip().lower()
    return encoding not in ("", "identity")


def _json_or_none(data: bytes) -> Any:
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        return None


def _rest_reason_of_jsonrpc_body(doc: Any) -> E | None:
    """A REST error body shaped like a JSON-RPC error object: its code names the reason."""
    error = doc.get("error") if isinstance(doc, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    return rest_reason_for_jsonrpc_code(code) if isinstance(code, int) else None


def _upstream_message(doc: Any) -> str | None:
    """The upstream's own one-line message, from the usual JSON shapes; never HTML or traces."""
    if not isinstance(doc, dict):
        return None
    for key in ("message", "error", "detail"):
        value = doc.get(key)
        if isinstance(value, dict):
            value = value.get("message")
        if isinstance(value, str) and value.strip():
            line = value.strip().splitlines()[0]
            return line[:_UPSTREAM_MESSAGE_MAX]
    return None


__all__ = ["HOP_BY_HOP", "ErrorStyle", "Forwarder", "filter_headers", "upstream_failure"]
