"""Spans (and OTLP metrics) from the standard OTEL_* environment, wired explicitly.

No exporter configured means no tracer at all: every request gets the shared no-op
trace, whose methods do nothing. With one, each request gets a SERVER span parented on
the incoming W3C ``traceparent`` and one CLIENT span for the upstream call, whose
context is what the upstream receives.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from yarl import URL

from proxy import __version__
from proxy.config import ConfigError
from proxy.gate import Admission, Refusal
from proxy.metrics import Kind, Metrics
from proxy.protocols import a2a, mcp
from proxy.protocols.classify import Binding, Classified

log = logging.getLogger("agent_warden.telemetry")

Attributes = dict[str, str | int | float | bool]


def _env_true(environ: Mapping[str, str], name: str) -> bool:
    return environ.get(name, "").strip().lower() == "true"


def _exporter_protocol(environ: Mapping[str, str], signal: str) -> str:
    value = environ.get(f"OTEL_EXPORTER_OTLP_{signal}_PROTOCOL") or environ.get(
        "OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"
    )
    return value.strip().lower()


def _wants(environ: Mapping[str, str], signal: str) -> bool:
    """An OTLP exporter is configured for ``signal`` (TRACES or METRICS)."""
    chosen = environ.get(f"OTEL_{signal}_EXPORTER", "otlp").strip().lower()
    if chosen in ("none", ""):
        return False
    if chosen != "otlp":
        raise ConfigError(
            f"OTEL_{signal}_EXPORTER: only otlp or none are supported, got {chosen!r}"
        )
    return bool(
        environ.get(f"OTEL_EXPORTER_OTLP_{signal}_ENDPOINT")
        or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    )


def _span_exporter(environ: Mapping[str, str]) -> SpanExporter:
    protocol = _exporter_protocol(environ, "TRACES")
    if protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    if protocol == "grpc":
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (  # type: ignore[import-not-found]
                OTLPSpanExporter as GrpcSpanExporter,
            )
        except ImportError:
            raise ConfigError(
                "OTEL_EXPORTER_OTLP_PROTOCOL=grpc needs the grpc extra: "
                "pip install 'agent-warden[grpc]'"
            ) from None
        exporter: SpanExporter = GrpcSpanExporter()
        return exporter
    raise ConfigError(
        f"OTEL_EXPORTER_OTLP_PROTOCOL: expected http/protobuf or grpc, got {protocol!r}"
    )


class Telemetry:
    """The process's tracer (or none) and the OTLP bridge for the metrics registry."""

    def __init__(
        self,
        provider: TracerProvider | None = None,
        meter_provider: Any = None,
    ) -> None:
        self._provider = provider
        self._meter_provider = meter_provider
        self._tracer = provider.get_tracer("agent-warden", __version__) if provider else None

    @classmethod
    def from_env(cls, metrics: Metrics) -> Telemetry:
        """From the standard OTEL_* environment (the SDK's exporters and sampler read it too)."""
        env = os.environ
        if _env_true(env, "OTEL_SDK_DISABLED"):
            return cls()
        provider = None
        if _wants(env, "TRACES"):
            provider = TracerProvider(resource=_resource())
            provider.add_span_processor(BatchSpanProcessor(_span_exporter(env)))
        meter_provider = _meter_provider(metrics, env) if _wants(env, "METRICS") else None
        return cls(provider, meter_provider)

    @classmethod
    def with_processor(cls, processor: SpanProcessor) -> Telemetry:
        """A tracer exporting through ``processor`` (tests: an in-memory exporter)."""
        provider = TracerProvider(resource=_resource())
        provider.add_span_processor(processor)
        return cls(provider)

    @property
    def tracing(self) -> bool:
        return self._tracer is not None

    def begin(
        self, method: str, path: str, scheme: str, host: str, headers: Mapping[str, str]
    ) -> Trace:
        if self._tracer is None:
            return NOOP
        return RequestTrace(self._tracer, method, path, scheme, host, headers)

    def shutdown(self) -> None:
        """Flush and stop the exporters (on the way out)."""
        if self._provider is not None:
            self._provider.shutdown()
        if self._meter_provider is not None:
            self._meter_provider.shutdown()


def _resource() -> Resource:
    # Resource.create reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES; ours is the fallback.
    resource = Resource.create({"service.version": __version__})
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": "agent-warden"}))
    return resource


class Trace:
    """What the forwarder tells a request's trace. This base class is the no-op."""

    __slots__ = ()

    def classified(self, attributes: Attributes, name: str | None) -> None: ...

    def decided(self, attributes: Attributes) -> None: ...

    def upstream(self, method: str, url: str, headers: MutableMapping[str, str]) -> None: ...

    def upstream_answered(self, status: int | None, error_type: str | None = None) -> None: ...

    def results(self, results: Iterable[Any]) -> None: ...

    def rpc_error(self, code: int | str) -> None: ...

    def end(self, status: int, error_type: str | None = None) -> None: ...


NOOP = Trace()


class RequestTrace(Trace):
    """One request's SERVER span and its upstream CLIENT span."""

    __slots__ = ("_client", "_error_type", "_server", "_token", "_tool_call", "_tracer")

    def __init__(
        self,
        tracer: trace.Tracer,
        method: str,
        path: str,
        scheme: str,
        host: str,
        headers: Mapping[str, str],
    ) -> None:
        self._tracer = tracer
        parent = propagate.extract(headers)
        address, _, port = host.rpartition(":") if ":" in host else (host, "", "")
        attributes: Attributes = {
            "http.request.method": method,
            "url.path": path,
            "url.scheme": scheme,
            "server.address": address or host,
            "network.transport": "tcp",
            "network.protocol.name": "http",
            "network.protocol.version": "1.1",
        }
        if port.isdigit():
            attributes["server.port"] = int(port)
        self._server: Span = tracer.start_span(
            method, context=parent, kind=SpanKind.SERVER, attributes=attributes
        )
        self._token = otel_context.attach(trace.set_span_in_context(self._server, parent))
        self._client: Span | None = None
        self._error_type: str | None = None
        self._tool_call = False

    def classified(self, attributes: Attributes, name: str | None) -> None:
        self._server.set_attributes(attributes)
        self._tool_call = attributes.get("mcp.method.name") == mcp.TOOLS_CALL
        if name:
            self._server.update_name(name)

    def decided(self, attributes: Attributes) -> None:
        self._server.set_attributes(attributes)

    def upstream(self, method: str, url: str, headers: MutableMapping[str, str]) -> None:
        host, port = _host_port(url)
        attributes: Attributes = {
            "http.request.method": method,
            "server.address": host,
            "url.full": url,
        }
        if port is not None:
            attributes["server.port"] = port
        self._client = self._tracer.start_span(method, kind=SpanKind.CLIENT, attributes=attributes)
        # The upstream's span is the child of this CLIENT span, not of the SERVER span.
        propagate.inject(headers, context=trace.set_span_in_context(self._client))

    def upstream_answered(self, status: int | None, error_type: str | None = None) -> None:
        client = self._client
        if client is None:
            return
        if status is not None:
            client.set_attribute("http.response.status_code", status)
            if status >= 400:
                error_type = error_type or str(status)
        if error_type is not None:
            client.set_attribute("error.type", error_type)
            client.set_status(Status(StatusCode.ERROR))
        client.end()
        self._client = None

    def results(self, results: Iterable[Any]) -> None:
        if self._tool_call and any(mcp.result_is_tool_error(r) for r in results):
            self._error_type = "tool_error"

    def rpc_error(self, code: int | str) -> None:
        self._server.set_attribute("rpc.response.status_code", str(code))
        if self._error_type is None:
            self._error_type = str(code)

    def end(self, status: int, error_type: str | None = None) -> None:
        server = self._server
        if self._client is not None:  # the relay ended without a word from the upstream
            self.upstream_answered(None, "cancelled")
        server.set_attribute("http.response.status_code", status)
        error = error_type or self._error_type or (str(status) if status >= 500 else None)
        if error is not None:
            server.set_attribute("error.type", error)
        if status >= 500:  # server spans: only 5xx are errors (HTTP semantic conventions)
            server.set_status(Status(StatusCode.ERROR))
        server.end()
        otel_context.detach(self._token)


def _host_port(url: str) -> tuple[str, int | None]:
    parsed = URL(url)
    return parsed.host or "", parsed.explicit_port or parsed.port


def _meter_provider(metrics: Metrics, environ: Mapping[str, str]) -> Any:
    """Export the registry's instruments over OTLP: observed from its snapshot each cycle."""
    from opentelemetry.metrics import CallbackOptions, Observation
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

    protocol = _exporter_protocol(environ, "METRICS")
    exporter: Any
    if protocol == "grpc":
        try:
            from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (  # type: ignore[import-not-found]
                OTLPMetricExporter as GrpcMetricExporter,
            )
        except ImportError:
            raise ConfigError(
                "OTEL_EXPORTER_OTLP_PROTOCOL=grpc needs the grpc extra: "
                "pip install 'agent-warden[grpc]'"
            ) from None
        exporter = GrpcMetricExporter()
    elif protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

        exporter = OTLPMetricExporter()
    else:
        raise ConfigError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL: expected http/protobuf or grpc, got {protocol!r}"
        )
    reader = PeriodicExportingMetricReader(exporter)
    provider = MeterProvider(metric_readers=[reader], resource=_resource())
    meter = provider.get_meter("agent-warden", __version__)

    def observer(name: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def observe(_: CallbackOptions) -> Iterable[Observation]:
            for family in metrics.registry.collect():
                if family.name == name:
                    for sample in family.samples:
                        labels = dict(zip(family.label_names, sample.labels, strict=True))
                        yield Observation(sample.value, labels)

        return observe

    for family in metrics.registry.collect():
        callbacks = [observer(family.name)]
        if family.kind is Kind.COUNTER:
            name = family.name.removesuffix("_total")
            meter.create_observable_counter(name, callbacks, description=family.help)
        elif family.kind is Kind.GAUGE:
            meter.create_observable_gauge(family.name, callbacks, description=family.help)
    # Histograms cannot be observed from a snapshot: each observation is recorded twice.
    latency = metrics.upstream_latency
    histogram = meter.create_histogram(
        latency.name,
        unit="s",
        description=latency.help,
        explicit_bucket_boundaries_advisory=list(latency.bounds),
    )
    names = latency.label_names
    latency.mirror = lambda value, labels: histogram.record(
        value, dict(zip(names, labels, strict=True))
    )
    return provider


def span_attributes(info: Classified, headers: Mapping[str, str]) -> tuple[Attributes, str | None]:
    """The SERVER span's protocol attributes and name, from what the request is."""
    attributes: Attributes = {}
    name: str | None = None
    body = info.body
    if info.binding is Binding.JSONRPC:
        attributes["rpc.system.name"] = "jsonrpc"
        attributes["jsonrpc.protocol.version"] = "2.0"
    message = None
    if body is not None:
        message = next((m for m in body.messages if m.method is not None), None)
        if message is not None:
            if message.has_id and message.id is not None:
                attributes["jsonrpc.request.id"] = str(message.id)
            attributes["rpc.method"] = message.method or ""
            name = message.method
    if info.protocol == "mcp":
        session = headers.get(mcp.SESSION_HEADER)
        if session:
            attributes["mcp.session.id"] = session
        version = headers.get(mcp.PROTOCOL_VERSION_HEADER) or (
            mcp.meta_protocol_version(message.params) if message is not None else None
        )
        if version:
            attributes["mcp.protocol.version"] = version
        if message is not None and message.method is not None:
            method = message.method
            params = message.params if isinstance(message.params, dict) else {}
            attributes["mcp.method.name"] = method
            tool = mcp.tool_name(method, params)
            if tool is not None:
                attributes["gen_ai.tool.name"] = tool
                attributes["gen_ai.operation.name"] = "execute_tool"
                name = f"{method} {tool}"
            elif method == "prompts/get" and isinstance(params.get("name"), str):
                attributes["gen_ai.prompt.name"] = params["name"]
                name = f"{method} {params['name']}"
            elif method.startswith("resources/") and isinstance(params.get("uri"), str):
                attributes["mcp.resource.uri"] = params["uri"]
    elif info.protocol == "a2a":
        op = info.a2a_op
        if op is not None:
            attributes["a2a.method"] = message.method if message and message.method else op.name
            name = str(attributes["a2a.method"])
            params = message.params if message is not None else info.rest_doc
            context = a2a.context_id(op, params)
            task = (info.rest.task_id if info.rest else None) or a2a.task_id(op, params)
            if context:
                attributes["a2a.context.id"] = context
            if task:
                attributes["a2a.task.id"] = task
    return attributes, name


def decision_attributes(verdict: Admission | Refusal) -> Attributes:
    """What the policy decided, and about whom (the proxy's own attributes)."""
    adm = verdict.admission if isinstance(verdict, Refusal) else verdict
    attributes: Attributes = {
        "agent_warden.agent.id": adm.agent,
        "agent_warden.policy": adm.policy,
        "agent_warden.decision": adm.decision,
    }
    if adm.reason is not None:
        attributes["agent_warden.reason"] = adm.reason.value.reason
    if adm.kind is not None:
        attributes["agent_warden.session.kind"] = adm.kind.value
    return attributes


def trace_response(trace: Trace, doc: Any) -> None:
    """A JSON-RPC response's error code and tool results, for the SERVER span."""
    items = doc if isinstance(doc, list) else [doc]
    for item in items:
        if not isinstance(item, dict):
            continue
        error = item.get("error")
        if isinstance(error, dict) and "code" in error:
            trace.rpc_error(error["code"])
        elif "result" in item:
            trace.results([item["result"]])
