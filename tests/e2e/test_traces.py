"""Traces and metrics end to end: the proxy process exports over OTLP/HTTP to a real receiver.

The receiver (`tests/upstreams/otlp.py`) decodes what the proxy's own exporters send; the
proxy runs as `python -m proxy run` in front of the official MCP SDK server, configured
only by the standard `OTEL_*` environment.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest
from aiohttp import ClientSession

from proxy.metrics import Metrics
from tests.conftest import Proxy, RunProxy
from tests.unit.test_telemetry import (
    DENY_POLICY,
    Mcp,
    parse_traceparent,
    traceparent,
    upstream_seen,
)
from tests.upstreams.mcp_server import MCP_PATH
from tests.upstreams.otlp import OtlpReceiver, ReceivedMetric, ReceivedSpan
from tests.upstreams.serve import LOOPBACK, REPO_ROOT, HeaderRecorder, free_port

pytestmark = pytest.mark.timeout(90)

SERVICE = "warden-test"


def otel_env(receiver: OtlpReceiver, **extra: str) -> dict[str, str]:
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "OTEL_SERVICE_NAME": SERVICE,
        "OTEL_METRIC_EXPORT_INTERVAL": "500",
        **extra,
    }


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as started:
        yield started


@pytest.fixture(scope="module")
def proxy(
    run_proxy_module: RunProxy,
    receiver: OtlpReceiver,
    mcp_upstream: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Proxy:
    policy = tmp_path_factory.mktemp("traces") / "deny.yaml"
    policy.write_text(DENY_POLICY)
    return run_proxy_module(mcp_upstream, "--policy", str(policy), env=otel_env(receiver))


def by_kind(spans: list[ReceivedSpan], kind: str) -> list[ReceivedSpan]:
    return [s for s in spans if s.kind == kind]


def fresh(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


async def test_a_tool_call_is_traced_from_the_callers_parent_to_the_upstream(
    proxy: Proxy,
    receiver: OtlpReceiver,
    http: ClientSession,
    mcp_upstream_seen: HeaderRecorder,
) -> None:
    agent = fresh("agent")
    mcp = await Mcp(http, proxy.url + MCP_PATH, agent).open()
    header, trace_id, parent_id = traceparent()
    reply = await mcp.call("echo", header, text="traced")
    assert reply.answer["result"]["content"][0]["text"] == "traced"

    spans = receiver.trace(trace_id, count=2)
    assert sorted(s.kind for s in spans) == ["CLIENT", "SERVER"], spans
    [server], [client] = by_kind(spans, "SERVER"), by_kind(spans, "CLIENT")
    assert server.parent_span_id == parent_id
    assert client.parent_span_id == server.span_id
    assert server.name == "tools/call echo"
    assert client.name == "POST"
    assert server.status == "UNSET"
    assert server.attributes["mcp.method.name"] == "tools/call"
    assert server.attributes["gen_ai.tool.name"] == "echo"
    assert server.attributes["gen_ai.operation.name"] == "execute_tool"
    assert server.attributes["mcp.session.id"] == mcp.session
    assert server.attributes["jsonrpc.request.id"] == "2"
    assert server.attributes["rpc.system.name"] == "jsonrpc"
    assert server.attributes["agent_warden.agent.id"] == agent
    assert server.attributes["agent_warden.decision"] == "allow"
    assert server.attributes["http.response.status_code"] == 200
    assert client.attributes["http.response.status_code"] == 200
    for span in spans:
        assert span.resource["service.name"] == SERVICE
        assert span.scope == "agent-warden"

    # The upstream received the CLIENT span as its parent, in the caller's trace.
    [seen] = upstream_seen(mcp_upstream_seen, mcp.marker, trace_id)
    assert parse_traceparent(seen.headers["traceparent"]) == (trace_id, client.span_id, "01")
    assert receiver.rejected == []  # every export was protobuf and decoded


async def test_a_denied_tool_is_traced_with_the_policys_reason(
    proxy: Proxy,
    receiver: OtlpReceiver,
    http: ClientSession,
    mcp_upstream_seen: HeaderRecorder,
) -> None:
    agent = fresh("guarded")
    mcp = await Mcp(http, proxy.url + MCP_PATH, agent).open()
    header, trace_id, parent_id = traceparent()
    reply = await mcp.call("delete_admin", header, user="root")
    assert reply.answer["error"]["data"][0]["reason"] == "TOOL_NOT_AUTHORIZED"

    [server] = receiver.trace(trace_id, count=1)
    assert server.kind == "SERVER"
    assert server.parent_span_id == parent_id
    assert server.name == "tools/call delete_admin"
    assert server.attributes["agent_warden.agent.id"] == agent
    assert server.attributes["agent_warden.policy"] == "tool-guard"
    assert server.attributes["agent_warden.decision"] == "deny"
    assert server.attributes["agent_warden.reason"] == "TOOL_NOT_AUTHORIZED"
    assert server.attributes["rpc.response.status_code"] == "-31064"
    # The CLIENT span, had there been one, ends before the SERVER span and is exported first.
    assert receiver.spans(lambda s: s.trace_id == trace_id) == [server]
    assert upstream_seen(mcp_upstream_seen, mcp.marker, trace_id) == []

    # The operator's log line of the denial points at the same span.
    lines = [line for line in proxy.log_lines() if line.get("agent") == agent]
    [denial] = [line for line in lines if line.get("msg") == "request denied"]
    assert denial["trace_id"] == trace_id
    assert denial["span_id"] == server.span_id


def _has_point(metric: ReceivedMetric, **attributes: str) -> bool:
    return any(p.attributes == attributes for p in metric.points)


async def test_the_metrics_are_exported_over_otlp(
    proxy: Proxy, receiver: OtlpReceiver, http: ClientSession
) -> None:
    mcp = await Mcp(http, proxy.url + MCP_PATH, fresh("agent")).open()
    assert (await mcp.call("add", a=1, b=2)).status == 200

    def counted(metric: ReceivedMetric) -> bool:
        return metric.name == "agent_warden_requests" and any(
            p.attributes == {"protocol": "mcp", "method": "tools/call", "outcome": "allowed"}
            and (p.value or 0) >= 1
            for p in metric.points
        )

    [requests, *_] = receiver.wait_metrics(counted)
    assert requests.kind == "sum"
    assert requests.monotonic is True
    assert requests.resource["service.name"] == SERVICE

    def timed(metric: ReceivedMetric) -> bool:
        return metric.name == "agent_warden_upstream_latency_seconds" and any(
            p.attributes == {"protocol": "mcp"} and (p.count or 0) >= 1 for p in metric.points
        )

    [latency, *_] = receiver.wait_metrics(timed)
    assert latency.kind == "histogram"
    assert latency.unit == "s"
    [point] = [p for p in latency.points if p.attributes == {"protocol": "mcp"}]
    assert point.bounds == tuple(Metrics().upstream_latency.bounds)  # not the SDK's defaults
    assert len(point.bucket_counts) == len(point.bounds) + 1
    assert sum(point.bucket_counts) == point.count


async def test_spans_still_buffered_are_flushed_on_sigterm(
    run_proxy: RunProxy,
    receiver: OtlpReceiver,
    http: ClientSession,
    mcp_upstream: str,
) -> None:
    # A schedule far beyond the test: only the shutdown flush can deliver these spans.
    env = otel_env(receiver, OTEL_BSP_SCHEDULE_DELAY="600000", OTEL_METRICS_EXPORTER="none")
    proxy = run_proxy(mcp_upstream, env=env)
    header, trace_id, _ = traceparent()
    await Mcp(http, proxy.url + MCP_PATH, fresh("agent")).open(header)
    assert receiver.spans(lambda s: s.trace_id == trace_id) == []

    assert proxy.stop() == 0, proxy.stderr()
    spans = receiver.trace(trace_id, count=2)
    assert sorted(s.kind for s in spans) == ["CLIENT", "SERVER"]
    [server] = by_kind(spans, "SERVER")
    assert server.name == "initialize"


def test_grpc_without_its_extra_stops_start_up_with_one_line() -> None:
    if importlib.util.find_spec("opentelemetry.exporter.otlp.proto.grpc") is not None:
        pytest.skip("the grpc exporter is installed here")
    argv = [
        sys.executable,
        "-m",
        "proxy",
        "run",
        "--upstream",
        f"http://{LOOPBACK}:{free_port()}",
        "--listen",
        f"{LOOPBACK}:{free_port()}",
        "--admin",
        f"{LOOPBACK}:{free_port()}",
    ]
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("OTEL_")},
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://{LOOPBACK}:{free_port()}",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
    }
    done = subprocess.run(
        argv, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("agent-warden: error: OTEL_EXPORTER_OTLP_PROTOCOL=grpc"), lines
