"""The official a2a-sdk client through the proxy to an a2a-sdk agent (JSON-RPC and REST)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx
import pytest
from a2a.client import A2ACardResolver, Client, ClientConfig, ClientFactory
from a2a.helpers.proto_helpers import get_artifact_text
from a2a.types import (
    AgentCard,
    GetTaskRequest,
    Message,
    Part,
    Role,
    SendMessageRequest,
    StreamResponse,
    Task,
    TaskState,
)
from a2a.utils.constants import AGENT_CARD_WELL_KNOWN_PATH, TransportProtocol

from tests.conftest import Proxy, RunProxy
from tests.upstreams.a2a_server import JSONRPC_PATH, REST_PREFIX, chunk_text, echo_text
from tests.upstreams.serve import HeaderRecorder, SeenRequest

pytestmark = pytest.mark.timeout(60)

# Each test tags its requests so it can pick them out of the shared upstream's record.
MARKER = "x-warden-test"


@dataclass
class Target:
    proxy: Proxy
    upstream_url: str
    seen: HeaderRecorder

    def requests(self, marker: str, method: str | None = None) -> list[SeenRequest]:
        return [r for r in self.seen.requests(method) if r.headers.get(MARKER) == marker]


@pytest.fixture(scope="module")
def a2a(run_proxy_module: RunProxy, a2a_upstream: str, a2a_upstream_seen: HeaderRecorder) -> Target:
    return Target(run_proxy_module(a2a_upstream), a2a_upstream, a2a_upstream_seen)


def through(card: AgentCard, proxy_url: str) -> AgentCard:
    """The card with every interface URL moved onto the proxy (same path)."""
    moved = AgentCard()
    moved.CopyFrom(card)
    for interface in moved.supported_interfaces:
        interface.url = proxy_url + urlsplit(interface.url).path
    return moved


@asynccontextmanager
async def a2a_client(
    target: Target, binding: str, *, streaming: bool
) -> AsyncIterator[tuple[Client, str]]:
    """An official client for one binding, its card fetched through the proxy."""
    marker = uuid.uuid4().hex
    async with httpx.AsyncClient(headers={MARKER: marker}, timeout=30.0) as http:
        card = await A2ACardResolver(http, target.proxy.url).get_agent_card()
        config = ClientConfig(
            streaming=streaming, supported_protocol_bindings=[binding], httpx_client=http
        )
        client = ClientFactory(config).create(through(card, target.proxy.url))
        try:
            yield client, marker
        finally:
            await client.close()


def user_message(text: str) -> SendMessageRequest:
    return SendMessageRequest(
        message=Message(message_id=uuid.uuid4().hex, role=Role.ROLE_USER, parts=[Part(text=text)])
    )


async def send(client: Client, text: str) -> list[StreamResponse]:
    return [event async for event in client.send_message(user_message(text))]


def only_task(events: list[StreamResponse]) -> Task:
    assert len(events) == 1, events
    assert events[0].HasField("task"), events[0]
    return events[0].task


async def test_agent_card_through_the_proxy(a2a: Target) -> None:
    async with httpx.AsyncClient(timeout=10.0) as http:
        direct = await http.get(a2a.upstream_url + AGENT_CARD_WELL_KNOWN_PATH)
        proxied = await http.get(
            a2a.proxy.url + AGENT_CARD_WELL_KNOWN_PATH, headers={MARKER: "card"}
        )
        card = await A2ACardResolver(http, a2a.proxy.url).get_agent_card()
    assert proxied.status_code == 200
    assert proxied.content == direct.content
    assert proxied.headers["etag"] == direct.headers["etag"]
    assert card.name == "warden-test-echo"
    assert card.capabilities.streaming is True
    bindings = {i.protocol_binding: urlsplit(i.url).path for i in card.supported_interfaces}
    assert bindings == {
        TransportProtocol.JSONRPC: JSONRPC_PATH,
        TransportProtocol.HTTP_JSON: REST_PREFIX,
    }
    assert [r.path for r in a2a.requests("card", "GET")][-1:] == [AGENT_CARD_WELL_KNOWN_PATH]


async def test_send_message_over_jsonrpc(a2a: Target) -> None:
    async with a2a_client(a2a, TransportProtocol.JSONRPC, streaming=False) as (client, marker):
        task = only_task(await send(client, "hello through the warden"))
    assert task.status.state == TaskState.TASK_STATE_COMPLETED
    assert [get_artifact_text(a) for a in task.artifacts] == [echo_text("hello through the warden")]
    assert task.context_id
    posts = a2a.requests(marker, "POST")
    assert [r.path for r in posts] == [JSONRPC_PATH]
    assert posts[0].headers["a2a-version"] == "1.0"
    assert posts[0].headers["host"] == a2a.upstream_url.removeprefix("http://")


async def test_get_task_over_rest(a2a: Target) -> None:
    async with a2a_client(a2a, TransportProtocol.JSONRPC, streaming=False) as (client, _):
        created = only_task(await send(client, "remember me"))
    async with a2a_client(a2a, TransportProtocol.HTTP_JSON, streaming=False) as (rest, marker):
        fetched = await rest.get_task(GetTaskRequest(id=created.id))
    assert fetched.id == created.id
    assert fetched.context_id == created.context_id
    assert fetched.status.state == TaskState.TASK_STATE_COMPLETED
    assert [get_artifact_text(a) for a in fetched.artifacts] == [echo_text("remember me")]
    gets = a2a.requests(marker, "GET")
    assert [(r.path, r.response_status) for r in gets if r.path != AGENT_CARD_WELL_KNOWN_PATH] == [
        (f"{REST_PREFIX}/tasks/{created.id}", 200)
    ]


async def test_streaming_message_over_jsonrpc_receives_every_event(a2a: Target) -> None:
    async with a2a_client(a2a, TransportProtocol.JSONRPC, streaming=True) as (client, marker):
        events = await send(client, "stream 4")
    kinds = [event.WhichOneof("payload") for event in events]
    assert kinds == ["task", "status_update", *["artifact_update"] * 4, "status_update"]
    task_id = events[0].task.id
    for event, kind in zip(events[1:], kinds[1:], strict=True):
        assert getattr(event, kind).task_id == task_id
    chunks = [
        get_artifact_text(e.artifact_update.artifact)
        for e in events
        if e.HasField("artifact_update")
    ]
    assert chunks == [chunk_text(i, 4) for i in range(1, 5)]
    assert events[1].status_update.status.state == TaskState.TASK_STATE_WORKING
    assert events[-1].status_update.status.state == TaskState.TASK_STATE_COMPLETED
    posts = a2a.requests(marker, "POST")
    assert len(posts) == 1
    assert posts[0].response_headers["content-type"].startswith("text/event-stream")
