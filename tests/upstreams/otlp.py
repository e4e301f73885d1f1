"""A real OTLP/HTTP receiver for the tests: protobuf traces and metrics on loopback.

It runs in a thread with its own event loop, so a test may block (a synchronous client,
an exporter's blocking shutdown) while spans keep arriving. Every export is decoded with
`opentelemetry-proto` and kept; `wait_spans` and `wait_metrics` poll for what a test
expects, for a bounded time.

    with OtlpReceiver() as receiver:
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url}
        ...
        [server] = receiver.wait_spans(lambda s: s.trace_id == trace_id and s.kind == "SERVER")
"""

from __future__ import annotations

import asyncio
import gzip
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiohttp import web
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import Metric
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from tests.upstreams.serve import LOOPBACK

PROTOBUF = "application/x-protobuf"
TRACES_PATH = "/v1/traces"
METRICS_PATH = "/v1/metrics"
WAIT_TIMEOUT = 15.0
_SHOWN = 20  # items named in a failed wait

T = TypeVar("T")


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return attributes_of(value.kvlist_value.values)
    return getattr(value, kind)


def attributes_of(pairs: Iterable[KeyValue]) -> dict[str, Any]:
    """OTLP key-value pairs as a plain dict (arrays as lists, kvlists as dicts)."""
    return {kv.key: _value(kv.value) for kv in pairs}


@dataclass(frozen=True, slots=True)
class ReceivedSpan:
    """One span as the receiver decoded it; ids in lowercase hex, as in `traceparent`."""

    trace_id: str
    span_id: str
    parent_span_id: str | None
    name: str
    kind: str  # SERVER, CLIENT, INTERNAL, PRODUCER, CONSUMER
    status: str  # UNSET, OK, ERROR
    attributes: dict[str, Any]
    resource: dict[str, Any]
    scope: str


@dataclass(frozen=True, slots=True)
class Point:
    """One data point: `value` for sums and gauges; `count`, `sum`, buckets for histograms."""

    attributes: dict[str, Any]
    value: float | None = None
    count: int | None = None
    sum: float | None = None
    bucket_counts: tuple[int, ...] = ()
    bounds: tuple[float, ...] = ()


@dataclass(frozen=True, slots=True)
class ReceivedMetric:
    """One metric of one export: its kind (`sum`, `gauge`, `histogram`, ...) and points."""

    name: str
    kind: str
    unit: str
    points: tuple[Point, ...]
    resource: dict[str, Any]
    monotonic: bool | None = None


def _spans(request: ExportTraceServiceRequest) -> list[ReceivedSpan]:
    out: list[ReceivedSpan] = []
    for resource_spans in request.resource_spans:
        resource = attributes_of(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                out.append(
                    ReceivedSpan(
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex() or None,
                        name=span.name,
                        kind=Span.SpanKind.Name(span.kind).removeprefix("SPAN_KIND_"),
                        status=Status.StatusCode.Name(span.status.code).removeprefix(
                            "STATUS_CODE_"
                        ),
                        attributes=attributes_of(span.attributes),
                        resource=resource,
                        scope=scope_spans.scope.name,
                    )
                )
    return out


def _points(metric: Metric, kind: str) -> tuple[Point, ...]:
    if kind in ("sum", "gauge"):
        number_points = getattr(metric, kind).data_points
        return tuple(
            Point(
                attributes_of(p.attributes),
                value=float(getattr(p, p.WhichOneof("value") or "as_double")),
            )
            for p in number_points
        )
    if kind == "histogram":
        return tuple(
            Point(
                attributes_of(p.attributes),
                count=p.count,
                sum=p.sum,
                bucket_counts=tuple(p.bucket_counts),
                bounds=tuple(p.explicit_bounds),
            )
            for p in metric.histogram.data_points
        )
    return ()  # exponential histograms and summaries: not exported by the proxy


def _metrics(request: ExportMetricsServiceRequest) -> list[ReceivedMetric]:
    out: list[ReceivedMetric] = []
    for resource_metrics in request.resource_metrics:
        resource = attributes_of(resource_metrics.resource.attributes)
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                kind = metric.WhichOneof("data") or ""
                out.append(
                    ReceivedMetric(
                        name=metric.name,
                        kind=kind,
                        unit=metric.unit,
                        points=_points(metric, kind),
                        resource=resource,
                        monotonic=metric.sum.is_monotonic if kind == "sum" else None,
                    )
                )
    return out


@dataclass
class OtlpReceiver:
    """OTLP/HTTP (protobuf) on 127.0.0.1: `POST /v1/traces` and `POST /v1/metrics`."""

    port: int = 0
    _spans: list[ReceivedSpan] = field(default_factory=list)
    _metrics: list[ReceivedMetric] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _stopped: asyncio.Event | None = None
    rejected: list[str] = field(default_factory=list)  # why a request was refused

    @property
    def url(self) -> str:
        """The base URL, as `OTEL_EXPORTER_OTLP_ENDPOINT` takes it."""
        return f"http://{LOOPBACK}:{self.port}"

    def start(self, timeout: float = 10.0) -> OtlpReceiver:
        # Bound here, so the URL is known before the thread runs.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind((LOOPBACK, self.port))
        self.port = int(sock.getsockname()[1])
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._serve(sock, ready))
            except BaseException as exc:  # reported to start(), which is waiting
                failure.append(exc)
                ready.set()
            finally:
                loop.close()

        self._thread = threading.Thread(target=run, name="otlp-receiver", daemon=True)
        self._thread.start()
        if not ready.wait(timeout):
            raise TimeoutError(f"OTLP receiver did not start within {timeout}s")
        if failure:
            raise RuntimeError("OTLP receiver failed to start") from failure[0]
        return self

    def stop(self, timeout: float = 10.0) -> None:
        loop, stopped = self._loop, self._stopped
        if loop is not None and stopped is not None and not loop.is_closed():
            loop.call_soon_threadsafe(stopped.set)
        if self._thread is not None:
            self._thread.join(timeout)

    def __enter__(self) -> OtlpReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def _serve(self, sock: socket.socket, ready: threading.Event) -> None:
        self._stopped = asyncio.Event()
        app = web.Application()
        traces = ExportTraceServiceResponse().SerializeToString()
        metrics = ExportMetricsServiceResponse().SerializeToString()
        app.router.add_post(TRACES_PATH, self._endpoint(self._keep_spans, traces))
        app.router.add_post(METRICS_PATH, self._endpoint(self._keep_metrics, metrics))
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        await web.SockSite(runner, sock).start()
        ready.set()
        try:
            await self._stopped.wait()
        finally:
            await runner.cleanup()

    def _endpoint(
        self, keep: Callable[[bytes], None], reply: bytes
    ) -> Callable[[web.Request], Awaitable[web.Response]]:
        """A handler that decodes one export with `keep` and answers the empty `reply`."""

        async def handle(request: web.Request) -> web.Response:
            if request.content_type != PROTOBUF:
                reason = f"{request.path}: content type {request.content_type!r}"
                self.rejected.append(reason)
                return web.Response(status=415, text=reason)
            data = await request.read()
            if request.headers.get("Content-Encoding", "").lower() == "gzip":
                data = gzip.decompress(data)
            try:
                keep(data)
            except DecodeError as exc:
                self.rejected.append(f"{request.path}: {exc}")
                return web.Response(status=400, text=str(exc))
            return web.Response(body=reply, content_type=PROTOBUF)

        return handle

    def _keep_spans(self, data: bytes) -> None:
        spans = _spans(ExportTraceServiceRequest.FromString(data))
        with self._lock:
            self._spans.extend(spans)

    def _keep_metrics(self, data: bytes) -> None:
        metrics = _metrics(ExportMetricsServiceRequest.FromString(data))
        with self._lock:
            self._metrics.extend(metrics)

    # -- what arrived ----------------------------------------------------------------------

    def spans(self, predicate: Callable[[ReceivedSpan], bool] | None = None) -> list[ReceivedSpan]:
        with self._lock:
            return [s for s in self._spans if predicate is None or predicate(s)]

    def metrics(
        self, predicate: Callable[[ReceivedMetric], bool] | None = None
    ) -> list[ReceivedMetric]:
        with self._lock:
            return [m for m in self._metrics if predicate is None or predicate(m)]

    def wait_spans(
        self,
        predicate: Callable[[ReceivedSpan], bool],
        *,
        count: int = 1,
        timeout: float = WAIT_TIMEOUT,
    ) -> list[ReceivedSpan]:
        """The spans matching `predicate` once at least `count` arrived; AssertionError after
        `timeout` seconds, naming everything received."""
        return _wait(lambda: self.spans(predicate), count, timeout, self.spans)

    def wait_metrics(
        self,
        predicate: Callable[[ReceivedMetric], bool],
        *,
        count: int = 1,
        timeout: float = WAIT_TIMEOUT,
    ) -> list[ReceivedMetric]:
        """As `wait_spans`, for metrics (each export repeats cumulative metrics)."""
        return _wait(lambda: self.metrics(predicate), count, timeout, self.metrics)

    def trace(
        self, trace_id: str, *, count: int, timeout: float = WAIT_TIMEOUT
    ) -> list[ReceivedSpan]:
        """The spans of one trace, once `count` of them arrived."""
        return self.wait_spans(lambda s: s.trace_id == trace_id, count=count, timeout=timeout)


def _wait(
    probe: Callable[[], list[T]],
    count: int,
    timeout: float,
    everything: Callable[[], Sequence[object]],
) -> list[T]:
    deadline = time.monotonic() + timeout
    while True:
        found = probe()
        if len(found) >= count:
            return found
        if time.monotonic() > deadline:
            received = everything()
            shown = "\n".join(f"  {item}" for item in received[-_SHOWN:])
            raise AssertionError(
                f"{len(found)} of {count} expected items arrived within {timeout}s; "
                f"received {len(received)}, the last ones:\n{shown or '  (nothing)'}"
            )
        time.sleep(0.05)


__all__ = ["OtlpReceiver", "Point", "ReceivedMetric", "ReceivedSpan", "attributes_of"]
