"""The request line: every request through the proxy, in the order it meets the steps.

    listen    proxy/dataplane/server.py     llhttp on asyncio.Protocol: heads, bodies, guards
    identify  proxy/gate.py  Gate.caller    the verified caller, before any body is read
    classify  proxy/protocols/classify.py   MCP or A2A, JSON-RPC or REST, what it asks
    decide    proxy/gate.py  Gate.admit     the session policy on an Exchange: a Verdict
    forward   proxy/dataplane/upstream.py   the pooled keep-alive upstream client
    rewrite   proxy/rewrite.py              upstream failures and what callers may not see
    record    proxy/exchange.py labels, proxy/metrics.py, proxy/telemetry.py, logs

``RequestLine.handle`` runs them in that order for one request; this module holds only
the sequencing and the I/O between the steps (reading bodies, relaying streams). The
values passed along are in proxy/exchange.py (pure); the request in flight in
proxy/dataplane/flight.py, each agent's in-flight places in proxy/dataplane/inflight.py,
the MCP 2024-11-05 endpoint registry in proxy/dataplane/legacy.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable, Container, Mapping
from typing import Any

from aiohttp import hdrs
from multidict import CIMultiDict
from yarl import URL

from proxy.config import Settings
from proxy.dataplane import (
    UpstreamConnectTimeout,
    UpstreamError,
    UpstreamPool,
    UpstreamResponse,
    UpstreamTimeout,
)
from proxy.dataplane.coding import CodingError, Inflater, UnsupportedCoding, inflater_for
from proxy.dataplane.flight import Flight, Stream, http_date, reason_phrase
from proxy.dataplane.inflight import InFlight, Slot
from proxy.dataplane.legacy import LegacyEndpoints, LegacyStream
from proxy.dataplane.server import BodyTooLarge, ServerRequest, ServerResponse
from proxy.errors import E, WardenError, render_aip193, render_sse_jsonrpc
from proxy.errors.normalize import normalize_jsonrpc_error
from proxy.errors.render import jsonrpc_code
from proxy.exchange import (
    MINTED_HEADER,
    REQUEST_DROP,
    RESPONSE_DROP,
    Answer,
    Exchange,
    accepted,
    connection_tokens,
    filter_headers,
    http_label,
    json_answer,
    method_label,
    repeated,
    to_answer,
)
from proxy.gate import LEGACY_SESSION_PREFIX, Admission, Gate, LegacySession, Refusal
from proxy.identity import Credential, metadata_document
from proxy.identity.metadata import WELL_KNOWN
from proxy.listener import BANNER
from proxy.metrics import Metrics, RequestOutcome
from proxy.policy.decide import ANONYMOUS
from proxy.policy.model import ErrorsConfig, Identity, ResourceMetadata
from proxy.protocols import a2a, jsonrpc, mcp
from proxy.protocols.card import advertise_security, card_is_signed, rewrite_card
from proxy.protocols.classify import Binding, Classified, classify, reads_body
from proxy.protocols.events import StreamWatch
from proxy.protocols.mcp import SESSION_HEADER
from proxy.protocols.sse import (
    EventSplitter,
    EventTooLarge,
    build_event,
    event_fields,
    split_events,
)
from proxy.record import DecisionLog, decisions_of
from proxy.rewrite import (
    ANY_ID,
    dumps,
    encoded,
    error_status,
    filter_tools_doc,
    filter_tools_events,
    header_mismatch,
    interrupted_events,
    is_card_request,
    json_or_none,
    listing_contexts,
    merged_batch,
    own_listing,
    render,
    tools_list_ids,
)
from proxy.telemetry import (
    NOOP,
    Telemetry,
    Trace,
    decision_attributes,
    span_attributes,
    trace_response,
)

log = logging.getLogger("agent_warden.forward")

__all__ = ["RequestLine"]

_ACAO = hdrs.ACCESS_CONTROL_ALLOW_ORIGIN
# MCP 2024-11-05: refusals about the sender, not the session, answer the POST itself (another
# agent must never write into a session's stream).
_SENDER_ERRORS = frozenset({E.AGENT_MISMATCH, E.ORIGIN_NOT_ALLOWED, E.UNAUTHENTICATED})
# The agent card's well-known paths (A2A 1.0 and 0.3), exactly: what a client reads to learn
# which credential to present.
_CARD_PATHS = frozenset({"/.well-known/agent-card.json", "/.well-known/agent.json"})
_SMALL_BODY = 64 * 1024  # read before refusing an unidentified caller, to echo its id
# Headers naming a session or a protocol revision: more than one is refused.
_ONCE_ONLY = (SESSION_HEADER, mcp.PROTOCOL_VERSION_HEADER, MINTED_HEADER)
_SSE_HEADERS = {"X-Accel-Buffering": "no"}  # nginx and kin in front must not buffer events
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "DELETE", "PUT"})
_CHUNK = 64 * 1024
_NOBODY = Credential(ANONYMOUS, "anonymous")


def upstream_failure(exc: BaseException) -> E:
    """The upstream pool's failures as the errors.md section 3 rows, most specific first."""
    if isinstance(exc, UpstreamConnectTimeout):
        return E.UPSTREAM_UNAVAILABLE  # nothing answered at all
    if isinstance(exc, UpstreamTimeout | TimeoutError):  # no response head in time
        return E.UPSTREAM_TIMEOUT
    return E.UPSTREAM_UNAVAILABLE


class RequestLine:
    """Every request, whatever its method and path, in the order of the line: identify,
    classify, decide, forward, rewrite, record. Holds the upstream pool."""

    def __init__(
        self,
        settings: Settings,
        client: UpstreamPool,
        errors: Callable[[], ErrorsConfig],
        gate: Gate,
        metrics: Metrics,
        telemetry: Telemetry | None = None,
        decisions: DecisionLog | None = None,
    ) -> None:
        self._decisions = decisions
        self._metrics = metrics
        self._telemetry = telemetry or Telemetry()
        self._settings = settings
        self._client = client
        self._errors = errors
        self._gate = gate
        self._base = str(settings.upstream).rstrip("/")
        self._upstream_origin = str(URL(self._base).origin())
        self._public_url = settings.public_url
        self._legacy = LegacyEndpoints(self._base, settings.public_url)
        self._body_bytes = 0  # request bodies being buffered, all requests together
        self._in_flight = InFlight(settings.max_inflight_per_agent, settings.max_streams_per_agent)
        self._drop_cache: tuple[Identity, frozenset[str], frozenset[str]] | None = None
        # MCP 2025 resumption: tools/list ids a closed stream still owes, by session.

    # -- request side -------------------------------------------------------------------

    async def handle(self, incoming: ServerRequest, response: ServerResponse) -> None:
        """Answer one request; counts it by protocol, method and outcome."""
        metrics = self._metrics
        metrics.in_flight.inc()
        request = Flight(incoming, response)
        status = 500
        try:
            if not request.target.startswith("/"):
                # Targets no resource has (``CONNECT host:443``, ``OPTIONS *``): refused.
                log.info("request target refused", extra={"method": request.method})
                request.outcome = RequestOutcome.INVALID
                answer: Answer | Stream = self._aip193(WardenError(E.INVALID_REQUEST))
            else:
                answer = await self._handle(request)
            status = answer.status
            if isinstance(answer, Answer):
                await self._send(request, answer)
        except asyncio.CancelledError:
            status = 499  # the client went away
            raise
        except Exception:
            # A bug must still answer with an envelope and never show a traceback.
            log.exception("unhandled error while proxying", extra={"path": request.path})
            if response.started:
                response.abort()  # the answer has begun: a second one would corrupt it
            else:
                status = 500
                await self._send(request, self._aip193(WardenError(E.INTERNAL_ERROR)))
        finally:
            trace = request.trace
            if trace is not None:
                trace.end(status)
            metrics.in_flight.dec()
            info = request.info
            if info is None:
                metrics.requests.inc("unknown", http_label(request.method), request.outcome)
            else:
                metrics.requests.inc(
                    info.protocol, method_label(info, request.method), request.outcome
                )

    async def _handle(self, request: Flight) -> Answer | Stream:
        # Who is calling comes first: nothing of a body is read for a caller refused anyway.
        identity = self._gate.identity()
        meta = identity.resource_metadata
        path = request.path
        if (
            meta is not None
            and request.method == "GET"
            and (path == WELL_KNOWN or path.startswith(WELL_KNOWN + "/"))
        ):
            return self._metadata(request, meta)
        metadata_url = self._metadata_url(request, meta)
        # What a client reads before it can hold a credential: the agent card (it names the
        # scheme to use) and CORS preflights. Without a credential these pass as anonymous.
        public = request.method == "OPTIONS" or (
            request.method in ("GET", "HEAD") and path in _CARD_PATHS
        )
        caller = await self._gate.caller(request.headers, metadata_url, public=public)
        refused: WardenError | None = None
        if isinstance(caller, WardenError):
            request.outcome = RequestOutcome.DENIED
            length = request.content_length
            if request.body_exists and (length is None or length > _SMALL_BODY):
                return self._unread(request, caller)
            refused, caller = caller, _NOBODY  # a small body is read: its id is echoed
        request.caller = caller
        slot = self._take_slot(request, caller.agent)
        if slot is None:
            request.outcome = RequestOutcome.DENIED
            return self._unread(request, WardenError(E.OVERLOADED, retry_after=1.0))
        try:
            body: bytes | None = None
            if reads_body(request.method) and request.body_exists:
                length = request.content_length
                if length is not None and length > self._settings.max_body_size:
                    return self._too_large(request)
                # Bodies are read whole to be judged: all of them together stay bounded
                # while they are read (a body without a length counts as the largest).
                held = length if length is not None else self._settings.max_body_size
                if hdrs.CONTENT_ENCODING in request.headers:
                    held = self._settings.max_body_size  # inflated, it may grow to the limit
                if self._body_bytes + held > self._settings.max_inflight_body_bytes:
                    self._metrics.limits_tripped.inc("max_inflight_body_bytes")
                    request.outcome = RequestOutcome.DENIED
                    return self._unread(request, WardenError(E.OVERLOADED, retry_after=1.0))
                self._body_bytes += held
                try:
                    body = await self._read_request(request)
                except BodyTooLarge:
                    return self._too_large(request)
                except CodingError as exc:
                    return self._undecodable(request, exc)
                finally:
                    self._body_bytes -= held
            elif reads_body(request.method):
                body = b""
            return await self._judge(request, refused, body)
        finally:
            slot.release()

    def _metadata(self, request: Flight, meta: ResourceMetadata) -> Answer:
        """RFC 9728 Protected Resource Metadata, served without credentials."""
        base = self._public_url or f"{request.scheme}://{request.host}"
        doc = metadata_document(meta, base.rstrip("/") + request.path[len(WELL_KNOWN) :])
        answer = _json_response(doc)
        answer.headers["Cache-Control"] = "max-age=300"
        return answer

    async def _send(self, request: Flight, answer: Answer) -> None:
        """Write a whole answer: one write, head and body together."""
        out = request.response
        if answer.close:
            out.close = True
        headers = answer.headers
        status = answer.status
        if (
            status >= 200
            and status not in (204, 304)
            and (request.method != "HEAD" or hdrs.CONTENT_LENGTH not in headers)
        ):
            headers[hdrs.CONTENT_LENGTH] = str(len(answer.body))
        if hdrs.DATE not in headers:
            headers[hdrs.DATE] = http_date()
        if hdrs.SERVER not in headers:
            headers[hdrs.SERVER] = BANNER
        out.start(status, answer.reason or reason_phrase(status), headers.items())
        await out.write_eof(answer.body)

    def _aip193(self, err: WardenError) -> Answer:
        style = self._errors()
        answer = to_answer(render_aip193(err, domain=style.domain, a2a_spec=style.a2a_spec))
        answer.force_close()
        return answer

    def _metadata_url(self, request: Flight, meta: ResourceMetadata | None) -> str | None:
        """Where the challenge points clients: the metadata of the resource they asked for."""
        if meta is None:
            return None
        base = (self._public_url or f"{request.scheme}://{request.host}").rstrip("/")
        resource_path = URL(meta.resource).path.rstrip("/") if meta.resource else ""
        return base + WELL_KNOWN + resource_path

    def _take_slot(self, request: Flight, agent: str) -> Slot | None:
        """A place among the agent's calls (or streams) in flight; None past the limit.
        The anonymous agent is many clients: counted per client address."""
        key = agent if agent != ANONYMOUS else f"{agent}@{request.remote}"
        stream = request.method == "GET" and "text/event-stream" in request.headers.get(
            hdrs.ACCEPT, ""
        )
        slot = self._in_flight.slot(key, stream)
        if slot is None:
            self._metrics.limits_tripped.inc(
                "max_streams_per_agent" if stream else "max_inflight_per_agent"
            )
            log.warning("agent over its in-flight limit", extra={"agent": agent, "stream": stream})
            return None
        request.slot = slot
        return slot

    def _unread(self, request: Flight, err: WardenError) -> Answer:
        """An answer given before the body is read: the envelope follows the path (no
        JSON-RPC id can be echoed), and the connection closes (the unread body must not be
        parsed as the next request)."""
        info = classify(
            request.method, request.path, request.headers, None, self._settings.protocol
        )
        if info.binding is Binding.OPAQUE and request.content_type in ("application/json", ""):
            info = Classified(info.protocol, Binding.JSONRPC)
        resp = self._error(info, err)
        if err.spec is E.INVALID_REQUEST:
            resp.set_status(400)  # contract, Identity: an identity header not to be believed
        if request.body_exists:
            resp.force_close()
        return resp

    async def _judge(
        self, request: Flight, refused: WardenError | None, body: bytes | None
    ) -> Answer | Stream:
        settings = self._settings
        info = classify(request.method, request.path, request.headers, body, settings.protocol)
        request.info = info
        trace = self._trace(request, info)
        if trace is not NOOP:
            trace.classified(*span_attributes(info, request.headers))
        if refused is not None:
            resp = self._error(info, refused, trace)
            if refused.spec is E.INVALID_REQUEST:
                resp.set_status(400)  # contract, Identity: an identity header not believed
            return resp
        if info.invalid is not None:
            request.outcome = RequestOutcome.INVALID
            if info.invalid.unsupported:  # a charset that reads the body otherwise: 415
                if info.protocol == "a2a":
                    return self._error(info, WardenError(E.CONTENT_TYPE_NOT_SUPPORTED), trace)
                resp = self._error(info, WardenError(E.INVALID_REQUEST), trace)
                resp.set_status(415)
                return resp
            err = E.PARSE_ERROR if info.invalid.parse_error else E.INVALID_REQUEST
            return self._error(info, WardenError(err), trace)
        if info.body is not None and len(info.body.messages) > settings.max_batch:
            # Refused whole, before any element is judged: one request, one answer.
            request.outcome = RequestOutcome.INVALID
            self._metrics.limits_tripped.inc("max_batch")
            log.warning("batch over the length limit", extra={"elements": len(info.body.messages)})
            too_long = Classified(info.protocol, Binding.JSONRPC)
            return self._error(too_long, WardenError(E.INVALID_REQUEST), trace)
        if (
            info.protocol == "mcp"
            and info.body is not None
            and header_mismatch(request.headers, info)
        ):
            request.outcome = RequestOutcome.INVALID
            return self._error(info, WardenError(E.HEADER_MISMATCH), trace)
        if repeated(request.headers, _ONCE_ONLY):
            # A session header sent twice: the upstream may read the copy the proxy did not.
            request.outcome = RequestOutcome.INVALID
            resp = self._error(info, WardenError(E.INVALID_REQUEST), trace)
            resp.set_status(400)
            return resp
        legacy: LegacyStream | None = None
        if request.method == "POST" and self._legacy:
            legacy, known = self._legacy.find(request.target, request.path)
            if legacy is None and known:
                # At or under a message endpoint, but of no stream here (servers mount the
                # endpoint as a prefix): nothing to judge it in.
                request.outcome = RequestOutcome.DENIED
                return self._error(info, WardenError(E.SESSION_NOT_FOUND), trace)
        exchange = Exchange(
            request.method,
            request.target,
            request.path,
            request.headers,
            request.caller or _NOBODY,
            info,
            request.query if info.rest is not None else None,
            self._metadata_url(request, self._gate.identity().resource_metadata),
        )
        verdict = await self._gate.admit(exchange, legacy.session if legacy is not None else None)
        if self._decisions is None:
            return await self._decided(request, info, body, trace, verdict, legacy)
        if isinstance(verdict, Refusal):
            self._log_decisions(exchange, verdict, time.time())
            return await self._decided(request, info, body, trace, verdict, legacy)
        decided_at = time.time()
        try:
            return await self._decided(request, info, body, trace, verdict, legacy)
        finally:
            # Logged once answered: an A2A context the answer revealed names the session.
            self._log_decisions(exchange, verdict, decided_at)

    def _log_decisions(
        self, exchange: Exchange, verdict: Admission | Refusal, decided_at: float
    ) -> None:
        """The decision log's lines for this request; a fault there never fails it."""
        assert self._decisions is not None
        try:
            self._decisions.write(decisions_of(exchange, verdict, decided_at))
        except Exception:
            log.exception("decision log entry not written")

    async def _decided(
        self,
        request: Flight,
        info: Classified,
        body: bytes | None,
        trace: Trace,
        verdict: Admission | Refusal,
        legacy: LegacyStream | None,
    ) -> Answer | Stream:
        """Act on the verdict: answer a refusal, or forward (perhaps trimmed)."""
        if trace is not NOOP:
            trace.decided(decision_attributes(verdict))
        if isinstance(verdict, Refusal):
            request.outcome = RequestOutcome.DENIED
            if (
                legacy is not None
                and verdict.admission.agent == legacy.session.agent
                and verdict.error.spec not in _SENDER_ERRORS
            ):
                return await self._answer_on_stream(legacy, info, verdict.error)
            return self._error(info, verdict.error, trace)
        if verdict.decision != "allow":
            request.outcome = (
                RequestOutcome.AUDIT_DENIED
                if verdict.decision == "audit-deny"
                else RequestOutcome.DENIED  # part of a batch refused
            )
        if legacy is not None:
            self._note_legacy_calls(legacy, info, verdict)
            if verdict.denied_errors:
                await self._inject(legacy, verdict.denied_errors)
            if verdict.forwards_nothing:
                return accepted()
        elif verdict.forwards_nothing:
            return _json_response(verdict.denied_errors)
        if verdict.strip_session and request.method == "DELETE":
            # A session the proxy issued ends here: the stateless upstream never knew it.
            await self._gate.settle(verdict, 200, None)
            return Answer(status=200)
        try:
            return await self._forward(request, info, body, verdict, legacy)
        finally:
            # Whatever happened (the client left, the upstream failed): no place stays held.
            await self._gate.finish(verdict)

    # -- MCP 2024-11-05 HTTP+SSE -----------------------------------------------------------

    async def _answer_on_stream(
        self, legacy: LegacyStream, info: Classified, err: WardenError
    ) -> Answer | Stream:
        """A denial where that transport delivers answers: on the session's event stream."""
        style = self._errors()
        ids = info.request_ids
        for request_id in ids:
            event = render_sse_jsonrpc(
                err, request_id, domain=style.domain, a2a_spec=style.a2a_spec
            )
            await self._write_event(legacy, event)
        if not ids and info.body is None:  # not even JSON-RPC: nothing to answer there
            return self._error(info, err)
        return accepted()

    async def _inject(self, legacy: LegacyStream, errors: list[dict[str, Any]]) -> None:
        for error in errors:
            payload = json.dumps(error, separators=(",", ":"))
            await self._write_event(legacy, f"event: message\ndata: {payload}\n\n".encode())

    @staticmethod
    async def _write_event(legacy: LegacyStream, event: bytes) -> None:
        try:
            await legacy.out.write(event)  # one write, one whole event: never interleaved
        except (ConnectionResetError, RuntimeError):
            log.info("event stream gone before a denial could be delivered")

    def _note_legacy_calls(
        self, legacy: LegacyStream, info: Classified, verdict: Admission
    ) -> None:
        """Remember what the stream's answers must be judged by (tools/list, requestState)."""
        if info.body is None:
            return
        legacy.remembers = verdict
        if not verdict.filters_tools:
            return
        for message in info.body.messages:
            # Bounded: lists never answered are forgotten with the stream.
            if (
                message.method == mcp.TOOLS_LIST
                and message.has_id
                and len(legacy.tools_lists) < 1024
            ):
                legacy.tools_lists[message.id] = verdict

    async def _legacy_events(
        self,
        request: Flight,
        verdict: Admission,
        ready: bytes,
        state: list[LegacyStream | None],
        out: Stream,
    ) -> bytes:
        """Events of an MCP HTTP+SSE stream: the endpoint registers the session; answers to
        a tools/list are filtered; input_required states are remembered."""
        legacy = state[0]
        if legacy is None and b"endpoint" not in ready:
            return ready
        parts: list[bytes] = []
        changed = False
        for block in split_events(ready):
            kind, data, event_id = event_fields(block)
            if kind == "endpoint" and data is not None and legacy is None:
                found = self._legacy.endpoint(data, request.target)
                if found is not None:
                    shown, key = found
                    session = LegacySession(
                        LEGACY_SESSION_PREFIX + secrets.token_urlsafe(24), verdict.agent
                    )
                    legacy = LegacyStream(session, out, {})
                    state[0] = legacy
                    self._legacy.register(key, legacy)
                    if shown != data.strip():
                        block, changed = build_event(kind, shown, event_id), True
            elif legacy is not None and kind == "message" and data is not None:
                rewritten = await self._legacy_message(legacy, data)
                if rewritten is not None:
                    block, changed = build_event(kind, rewritten, event_id), True
            parts.append(block)
        return b"".join(parts) if changed else ready

    async def _legacy_message(self, legacy: LegacyStream, data: str) -> str | None:
        try:
            doc = json.loads(data)
        except (ValueError, RecursionError):
            return None
        if not isinstance(doc, dict) or "method" in doc or "result" not in doc:
            return None
        result = doc["result"]
        if legacy.remembers is not None:
            await self._gate.learn(legacy.remembers, [result])
        caller = legacy.tools_lists.pop(doc.get("id"), None)
        if caller is None:
            return None
        filtered = mcp.filter_tools(result, caller.allows_tool)
        return None if filtered is None else dumps({**doc, "result": filtered}).decode()

    async def _end_legacy(self, legacy: LegacyStream) -> None:
        """The stream ended: so did its session."""
        self._legacy.forget(legacy)
        if legacy.session.bound:
            await self._gate.end_session(legacy.session.session_id)

    def _trace(self, request: Flight, info: Classified | None = None) -> Trace:
        """The request's trace, begun once the body is classified: MCP may carry its parent
        in ``params._meta.traceparent`` when there is no header."""
        if request.trace is not None:
            return request.trace
        carrier: Mapping[str, str] = request.headers
        if (
            info is not None
            and info.protocol == "mcp"
            and info.body is not None
            and "traceparent" not in request.headers
        ):
            first = info.body.messages[0]
            parent = mcp.meta_traceparent(first.params)
            if parent is not None:
                carrier = {"traceparent": parent}
        trace = request.trace = self._telemetry.begin(
            request.method, request.path, request.scheme, request.host, carrier
        )
        return trace

    async def _read_request(self, request: Flight) -> bytes:
        limit = self._settings.max_body_size
        inflater = self._inflater(request)
        if inflater is None and request.content_length is not None:
            return await request.content.read(limit)
        parts: list[bytes] = []
        async for chunk in self._body_chunks(request, inflater, limit):
            parts.append(chunk)
        return b"".join(parts)

    def _inflater(self, request: Flight) -> Inflater | None:
        values = request.headers.getall(hdrs.CONTENT_ENCODING, ())
        if not values:
            return None
        return inflater_for(values, self._settings.max_body_size)

    @staticmethod
    async def _body_chunks(
        request: Flight, inflater: Inflater | None, limit: int
    ) -> AsyncIterator[bytes]:
        """The body as it arrives, inflated when it is compressed; ``BodyTooLarge`` past
        ``limit`` bytes (inflated)."""
        size = 0
        while True:
            chunk = await request.content.readany()
            if not chunk:
                if inflater is not None:
                    inflater.finish()
                return
            if inflater is not None:
                try:
                    chunk = inflater.feed(chunk)
                except OverflowError:
                    raise BodyTooLarge from None
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge
            if chunk:
                yield chunk

    def _undecodable(self, request: Flight, exc: CodingError) -> Answer:
        """A body in a coding the proxy cannot read: it cannot be judged, so it is refused
        (415 for a coding it does not read, 400 for one that does not inflate)."""
        log.warning("request body coding refused", extra={"problem": str(exc)[:200]})
        request.outcome = RequestOutcome.INVALID
        answer = self._unread(request, WardenError(E.INVALID_REQUEST))
        answer.set_status(415 if isinstance(exc, UnsupportedCoding) else 400)
        answer.force_close()
        return answer

    def _too_large(self, request: Flight) -> Answer:
        self._metrics.limits_tripped.inc("max_body_size")
        resp = self._unread(request, WardenError(E.REQUEST_TOO_LARGE))
        resp.force_close()
        return resp

    def _dropped(self, identity: Identity, strip_session: bool) -> frozenset[str]:
        """The client headers that never go up, for this identity setting (kept until it
        changes)."""
        cached = self._drop_cache
        if cached is None or cached[0] is not identity:
            drop = set(REQUEST_DROP)
            if not identity.forward_credentials:
                drop.add("authorization")
                if identity.api_keys is not None:
                    drop.add(identity.api_keys.header.lower())
            plain = frozenset(drop)
            cached = self._drop_cache = (identity, plain, plain | {SESSION_HEADER.lower()})
        return cached[2] if strip_session else cached[1]

    def _upstream_headers(self, request: Flight, strip_session: bool) -> list[tuple[str, str]]:
        """What goes up, in one pass: the client's headers less the hop-by-hop ones, those
        the proxy owns, and (per the identity settings) credentials; then the proxy's own."""
        identity = self._gate.identity()
        drop = self._dropped(identity, strip_session)
        named = connection_tokens(request.headers)
        if named:
            drop = drop | named
        # The verified agent replaces whatever the client wrote there, also under a
        # spelling some servers read as the same name (X_Agent_Id for X-Agent-Id).
        folded = _fold(identity.header) if request.caller is not None else None
        out: list[tuple[str, str]] = []
        origin: str | None = None
        for name, value in request.headers.items():
            low = name.lower()
            if low in drop or (folded is not None and low.replace("_", "-") == folded):
                continue
            if low == "origin" and origin is None:
                origin = value
            out.append((name, value))
        if request.caller is not None:
            out.append((identity.header, request.caller.agent))
        out.append(("X-Forwarded-For", request.remote or ""))
        out.append(("X-Forwarded-Proto", request.scheme))
        if request.host:
            out.append(("X-Forwarded-Host", request.host))
        # The proxy reads upstream bodies to validate and rewrite them: ask for them plain.
        out.append(("Accept-Encoding", "identity"))
        if origin is not None and self._gate.vouches_for(origin):
            # An origin the operator listed: the upstream's own DNS-rebinding check must see
            # one that matches the Host it receives. Any other origin goes up as it came, so
            # the upstream's check still applies (a rebinding page names its own host).
            out = [(n, v) for n, v in out if n.lower() != "origin"]
            out.append(("Origin", self._upstream_origin))
        return out

    async def _forward(
        self,
        request: Flight,
        info: Classified,
        body: bytes | None,
        verdict: Admission,
        legacy: LegacyStream | None = None,
    ) -> Answer | Stream:
        headers = self._upstream_headers(request, verdict.strip_session)
        target = request.target
        data: Any = verdict.forward_body if verdict.forward_body is not None else body
        length: int | None = None
        if body is None and request.body_exists:
            length = request.content_length
            if length is not None and length > self._settings.max_body_size:
                return self._too_large(request)
            try:
                inflater = self._inflater(request)
            except CodingError as exc:
                return self._undecodable(request, exc)
            if inflater is not None:
                length = None  # inflated: its length is known only at its end
            data = self._body_chunks(request, inflater, self._settings.max_body_size)
        trace = self._trace(request)
        if trace is not NOOP:
            carrier = CIMultiDict(headers)  # the trace context goes up with the request
            trace.upstream(request.method, self._base + target, carrier)
            headers = list(carrier.items())
        started = time.perf_counter()
        try:
            resp = await self._client.request(
                request.method,
                target,
                headers,
                data,
                head_timeout=self._settings.response_timeout,
                # A pooled keep-alive connection closed under us: idempotent requests, once.
                retry_idempotent=request.method in _IDEMPOTENT and not request.body_exists,
                body_length=length,
            )
        except BodyTooLarge:
            await self._gate.settle(verdict, None, None)
            trace.upstream_answered(None, "request_too_large")
            return self._too_large(request)
        except CodingError as exc:
            await self._gate.settle(verdict, None, None)
            trace.upstream_answered(None, "request_undecodable")
            return self._undecodable(request, exc)
        except UpstreamError as exc:
            await self._gate.settle(verdict, None, None)
            return self._upstream_error(request, info, exc)
        self._metrics.upstream_latency.observe(time.perf_counter() - started, info.protocol)
        if resp.status >= 500:
            request.outcome = RequestOutcome.UPSTREAM_ERROR
        try:
            extra = await self._gate.settle(verdict, resp.status, resp.headers)
            if legacy is not None and 200 <= resp.status < 300:
                # The answer travels on the session's stream; the POST gets the transport's 202.
                return await self._relay(request, resp, filter_headers(resp.headers, RESPONSE_DROP))
            return await self._respond(request, info, resp, extra, verdict)
        finally:
            resp.release()
            trace.upstream_answered(resp.status)  # after the body: the whole upstream call

    # -- response side ------------------------------------------------------------------

    async def _respond(
        self,
        request: Flight,
        info: Classified,
        resp: UpstreamResponse,
        extra: dict[str, str],
        verdict: Admission,
    ) -> Answer | Stream:
        status = resp.status
        headers = filter_headers(resp.headers, RESPONSE_DROP)
        headers.update(extra)
        origin = request.headers.get(hdrs.ORIGIN)
        if origin is not None and headers.get(_ACAO) == self._upstream_origin:
            headers[_ACAO] = origin  # CORS answers the origin the browser sent
        streaming = resp.content_type == "text/event-stream"
        if verdict.denied_errors and 200 <= status < 300:
            return await self._merge_batch(request, info, resp, headers, verdict, streaming)
        if request.method == "HEAD" or status in (204, 304) or status < 200:
            length = resp.headers.get(hdrs.CONTENT_LENGTH)
            if length is not None and (request.method == "HEAD" or status == 304):
                headers[hdrs.CONTENT_LENGTH] = length  # the size a GET would have had
            return Answer(status=status, reason=resp.reason, headers=headers)
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
        if self._public_url is not None and is_card_request(request.method, request.path, info):
            return await self._card(request, info, resp, headers)
        if info.binding is Binding.REST and verdict.learns:
            return await self._checked_rest(request, info, resp, headers, verdict)
        return await self._relay(request, resp, headers)

    async def _merge_batch(
        self,
        request: Flight,
        info: Classified,
        resp: UpstreamResponse,
        headers: CIMultiDict[str],
        verdict: Admission,
        streaming: bool,
    ) -> Answer | Stream:
        """A batch of which some elements were denied: their errors join the upstream's answer."""
        denied = verdict.denied_errors
        if streaming:
            out = Stream(status=resp.status, reason=resp.reason, headers=headers)
            await out.prepare(request)
            for error in denied:
                payload = json.dumps(error, separators=(",", ":"))
                await out.write(f"event: message\ndata: {payload}\n\n".encode())
            pending = {i for i in info.request_ids if i not in {e["id"] for e in denied}}
            return await self._relay_events(request, info, resp, headers, verdict, pending, out)
        read = await self._read_json(request, info, resp)
        if isinstance(read, Answer):
            return read
        _, doc, _ = read
        return json_answer(merged_batch(doc, denied))

    async def _inspected(
        self,
        request: Flight,
        info: Classified,
        resp: UpstreamResponse,
        headers: CIMultiDict[str],
        verdict: Admission,
    ) -> tuple[bytes, Any] | Answer | Stream:
        """``(body, parsed JSON or None)`` of an answer the proxy inspects; or, when it
        cannot be read, the answer already given: an envelope (the upstream failed
        mid-body, or a filtered listing cannot be filtered) or the body relayed as it is
        (too large or encoded to inspect: trusted as it is)."""
        read = await self._read_json(request, info, resp)
        if isinstance(read, Answer):
            return read
        data, doc, readable = read
        if readable:
            return data, doc
        if verdict.own_tasks_only:  # what cannot be filtered is not shown
            return self._invalid_response(request, info, resp)
        return await self._relay(request, resp, headers, prefix=data)

    async def _read_json(
        self, request: Flight, info: Classified, resp: UpstreamResponse
    ) -> tuple[bytes, Any, bool] | Answer:
        """``(body, parsed JSON or None, readable)`` of a body the proxy must inspect, or the
        envelope when the upstream failed mid-body. Not readable: too large or encoded."""
        try:
            data, whole = await self._read_bounded(resp)
        except UpstreamError as exc:
            return self._upstream_error(request, info, exc)
        readable = whole and not encoded(resp.headers)
        return data, json_or_none(data) if readable else None, readable

    async def _read_bounded(self, resp: UpstreamResponse) -> tuple[bytes, bool]:
        """The body if it fits the inspection limit; ``(prefix, False)`` when it does not."""
        limit = self._settings.max_body_size
        length = resp.content_length
        if length is not None and length <= limit:
            return await resp.read(), True
        parts: list[bytes] = []
        size = 0
        while True:
            chunk = await resp.readany()
            if not chunk:
                return b"".join(parts), True
            parts.append(chunk)
            size += len(chunk)
            if size > limit:
                return b"".join(parts), False

    async def _checked_jsonrpc(
        self,
        request: Flight,
        info: Classified,
        resp: UpstreamResponse,
        headers: CIMultiDict[str],
        verdict: Admission,
    ) -> Answer | Stream:
        read = await self._inspected(request, info, resp, headers, verdict)
        if not isinstance(read, tuple):
            return read
        data, doc = read
        if doc is None or not jsonrpc.is_response(doc):
            return self._invalid_response(request, info, resp)
        if info.protocol == "a2a" and (fixed := normalize_jsonrpc_error(doc)) is not None:
            data = dumps(fixed)
        trace = self._trace(request)
        if trace is not NOOP:
            trace_response(trace, doc)
        if verdict.learns or verdict.remembers:
            items = doc if isinstance(doc, list) else [doc]
            await self._gate.learn(verdict, [i["result"] for i in items if "result" in i])
        if verdict.own_tasks_only and isinstance(doc, dict) and "result" in doc:
            mine = await self._own_tasks(verdict, doc["result"])
            if mine is not None:
                data = dumps({**doc, "result": mine})
        if verdict.filters_tools and (lists := tools_list_ids(info)):
            filtered = filter_tools_doc(doc, lists, verdict.allows_tool)
            if filtered is not None:
                data = dumps(filtered)
        if (
            self._public_url is not None
            and info.a2a_op is a2a.GET_EXTENDED_AGENT_CARD
            and isinstance(doc, dict)
            and (card := self._moved_card(doc.get("result"))) is not None
        ):
            data = dumps({**doc, "result": card})
        return Answer(body=data, status=resp.status, reason=resp.reason, headers=headers)

    async def _card(
        self,
        request: Flight,
        info: Classified,
        resp: UpstreamResponse,
        headers: CIMultiDict[str],
    ) -> Answer | Stream:
        """An agent card whose interface URLs point at the upstream: moved to the proxy."""
        read = await self._read_json(request, info, resp)
        if isinstance(read, Answer):
            return read
        data, doc, _ = read
        card = self._moved_card(doc) if doc is not None else None
        if card is None:
            return Answer(body=data, status=resp.status, reason=resp.reason, headers=headers)
        headers.popall(hdrs.ETAG, None)  # the representation changed
        return Answer(body=dumps(card), status=resp.status, reason=resp.reason, headers=headers)

    def _moved_card(self, doc: Any) -> dict[str, object] | None:
        assert self._public_url is not None
        card = rewrite_card(doc, self._base, self._public_url)
        if card is not None and card_is_signed(doc):
            log.warning("agent card signatures no longer match its rewritten URLs")
        identity = self._gate.identity()
        if card is not None and not identity.trusted_header:
            # Clients learn from the card what the proxy verifies (identity issue 7).
            keys = identity.api_keys
            card = advertise_security(
                card,
                bearer_jwt=identity.jwt is not None,
                api_key_header=keys.header if keys is not None else None,
            )
        return card

    async def _checked_rest(
        self,
        request: Flight,
        info: Classified,
        resp: UpstreamResponse,
        headers: CIMultiDict[str],
        verdict: Admission,
    ) -> Answer | Stream:
        """An A2A REST answer: must be JSON; what it reveals binds the session."""
        read = await self._inspected(request, info, resp, headers, verdict)
        if not isinstance(read, tuple):
            return read
        data, doc = read
        if doc is None and data.strip():
            return self._invalid_response(request, info, resp)
        if doc is not None:
            await self._gate.learn(verdict, [doc])
            if verdict.own_tasks_only and (mine := await self._own_tasks(verdict, doc)):
                data = dumps(mine)
        return Answer(body=data, status=resp.status, reason=resp.reason, headers=headers)

    def _invalid_response(
        self, request: Flight, info: Classified, resp: UpstreamResponse
    ) -> Answer:
        log.warning(
            "upstream answered with a body that does not fit the request's protocol",
            extra={"status": resp.status, "path": request.path, "binding": info.binding.value},
        )
        request.outcome = RequestOutcome.UPSTREAM_ERROR
        err = E.INVALID_AGENT_RESPONSE if info.protocol == "a2a" else E.UPSTREAM_INVALID_RESPONSE
        return self._error(info, WardenError(err))

    async def _error_status(
        self,
        request: Flight,
        info: Classified,
        resp: UpstreamResponse,
        headers: CIMultiDict[str],
    ) -> Answer | Stream:
        read = await self._read_json(request, info, resp)
        if isinstance(read, Answer):
            return read
        data, doc, _ = read
        if info.binding is Binding.JSONRPC and jsonrpc.is_error_response(doc):
            trace_response(self._trace(request), doc)
        return error_status(
            info,
            resp.status,
            resp.reason,
            headers,
            resp.headers,
            data,
            doc,
            path=request.path,
            session_sent=SESSION_HEADER in resp.request_headers,
            style=self._errors(),
        )

    async def _relay(
        self,
        request: Flight,
        resp: UpstreamResponse,
        headers: CIMultiDict[str],
        prefix: bytes = b"",
    ) -> Answer | Stream:
        """Pass a body through unchanged, chunk by chunk as it arrives."""
        length = resp.content_length
        if not prefix and length is not None and length <= _CHUNK:
            try:
                data = await resp.read()
            except UpstreamError:
                return self._abort(request)
            return Answer(body=data, status=resp.status, reason=resp.reason, headers=headers)
        out = Stream(status=resp.status, reason=resp.reason, headers=headers)
        if length is not None:
            out.content_length = length
        await out.prepare(request)
        try:
            if prefix:
                await out.write(prefix)
            while True:
                try:
                    chunk = await resp.readany()
                except UpstreamError:
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
        request: Flight,
        info: Classified,
        resp: UpstreamResponse,
        headers: CIMultiDict[str],
        verdict: Admission,
        pending: set[jsonrpc.JsonRpcId] | None,
        out: Stream | None = None,
    ) -> Answer | Stream:
        """Relay an SSE stream event by event; a stream cut before its end gets an error event."""
        if request.slot is not None:
            request.slot.to_stream()
        if out is None:
            headers.update(_SSE_HEADERS)
            out = Stream(status=resp.status, reason=resp.reason, headers=headers)
            await out.prepare(request)
        splitter = EventSplitter(max_event=self._settings.max_event_size)
        # An MCP 2024-11-05 stream names its message endpoint in its first event.
        legacy: list[LegacyStream | None] | None = (
            [None]
            if request.method == "GET"
            and info.protocol != "a2a"
            and SESSION_HEADER not in request.headers
            else None
        )
        lists = self._lists_to_filter(request, info, verdict)
        op = info.a2a_op
        watch = StreamWatch(
            pending,
            jsonrpc_binding=info.binding is Binding.JSONRPC,
            a2a_stream=op is not None and op.streaming,
        )
        owes = pending is not None or (op is not None and op.streaming)
        interrupted = too_large = False
        trace = self._trace(request)

        async def relay(ready: bytes) -> None:
            """Whole events out: read for what they reveal, rewritten where they must be."""
            if legacy is not None:
                ready = await self._legacy_events(request, verdict, ready, legacy, out)
            elif lists:
                ready = filter_tools_events(ready, lists, verdict.allows_tool)
            results = watch.feed(ready)
            for code in watch.take_error_codes():
                trace.rpc_error(code)
            if results:
                trace.results(results)
                if verdict.learns or verdict.remembers:
                    await self._gate.learn(verdict, results)
            await out.write(ready)

        try:
            while True:
                try:
                    chunk = await resp.readany()
                except UpstreamError as exc:
                    log.warning(
                        "upstream event stream interrupted",
                        extra={"path": request.path, "error": type(exc).__name__},
                    )
                    interrupted = True
                    break
                if not chunk:
                    break
                try:
                    ready = splitter.feed(chunk)
                except EventTooLarge as exc:
                    ready, too_large = exc.ready, True
                if ready:
                    await relay(ready)
                if too_large:
                    # An event past the limit: the stream ends here, with the error event.
                    self._metrics.limits_tripped.inc("max_event_size")
                    log.warning(
                        "upstream event over the size limit",
                        extra={"limit": self._settings.max_event_size},
                    )
                    resp.close()
                    interrupted = True
                    break
            if not interrupted and (ready := splitter.finish()):
                await relay(ready)  # a last event ended by a bare CR
            resumable = watch.last_event_id is not None
            if owes and not interrupted and resumable and info.protocol == "mcp":
                # MCP resumption: the client resumes with Last-Event-ID, no error of ours.
                log.info("upstream closed a resumable event stream", extra={"path": request.path})
            elif too_large or (owes and (interrupted or not watch.complete)):
                # Ended before its final event: tell the client in the stream's own terms.
                log.warning(
                    "upstream event stream ended before its final event",
                    extra={"path": request.path, "cut": interrupted},
                )
                await out.write(
                    interrupted_events(info, watch.pending or info.request_ids, self._errors())
                )
            elif interrupted:
                # Nothing owed, but cut: the client must see a broken stream, not an end.
                self._abort(request, out)
                return out
            elif splitter.pending:
                await out.write(splitter.pending)
            await out.write_eof()
        except ConnectionResetError:
            resp.close()
        finally:
            if legacy is not None and legacy[0] is not None:
                await self._end_legacy(legacy[0])
        return out

    async def _own_tasks(self, verdict: Admission, listing: Any) -> dict[str, Any] | None:
        """An unfiltered ListTasks answer limited to the caller's contexts; None: unchanged."""
        contexts = listing_contexts(listing)
        if contexts is None:
            return None
        return own_listing(listing, await self._gate.own_contexts(verdict, contexts))

    def _lists_to_filter(
        self, request: Flight, info: Classified, verdict: Admission
    ) -> Container[jsonrpc.JsonRpcId] | None:
        """The ids of the tools/list answers this stream may carry, when the caller's rules
        filter tools: the request's own; on a GET of a session (a resumed stream, or the
        session's own stream) any answer at all, since the request it answers may have gone
        through another process: every result shaped like a tools list is filtered."""
        if not verdict.filters_tools:
            return None
        if request.method == "GET" and SESSION_HEADER in request.headers:
            return ANY_ID
        return tools_list_ids(info)

    def _abort(self, request: Flight, out: Stream | None = None) -> Answer | Stream:
        request.response.abort()
        return out if out is not None else Answer(status=502)

    # -- errors -------------------------------------------------------------------------

    def _upstream_error(self, request: Flight, info: Classified, exc: BaseException) -> Answer:
        """No (whole) answer from the upstream: counted, traced, and answered in an envelope."""
        reason = upstream_failure(exc)
        request.outcome = RequestOutcome.UPSTREAM_ERROR
        self._metrics.upstream_failures.inc(reason.name)
        trace = self._trace(request)
        trace.upstream_answered(None, reason.name)
        log.warning(
            "upstream request failed",
            extra={"reason": reason.name, "error": type(exc).__name__, "detail": str(exc)[:200]},
        )
        return self._error(info, WardenError(reason), trace)

    def _error(self, info: Classified, err: WardenError, trace: Trace = NOOP) -> Answer:
        if trace is not NOOP:
            trace.rpc_error(jsonrpc_code(err))
        return to_answer(render(info, err, self._errors()))


def _json_response(doc: Any) -> Answer:
    body = json.dumps(doc, separators=(",", ":")).encode()
    return Answer(status=200, body=body, content_type="application/json")


def _fold(name: str) -> str:
    """A header name as CGI/WSGI-style servers see it: case and ``_``/``-`` folded."""
    return name.lower().replace("_", "-")
