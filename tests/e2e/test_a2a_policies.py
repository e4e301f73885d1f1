"""Session policies on A2A traffic: contexts as sessions, on both bindings, through the proxy.

The official a2a-sdk agent is the upstream (JSON-RPC at `/`, REST under `/rest`). One proxy
serves the module: `tests/data/e2e/a2a.yaml` gives each behaviour its own policy, picked by
the agent-id prefix, and every test uses fresh agent ids. Requests come from the official
client where it is natural, and from raw HTTP where statuses and bodies must be exact. A
hand-written aiohttp agent cuts streams and answers garbage, which the official one never does.
Every denial is checked whole, opacity included: no digit of a limit, no policy name, and
metadata keys only among sessionId, method and tool.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from a2a.client import A2ACardResolver, A2AClientError, Client, ClientConfig, ClientFactory
from a2a.helpers.proto_helpers import get_artifact_text
from a2a.types import (
    AgentCapabilities,
    AgentCard,
    AgentInterface,
    GetTaskRequest,
    Message,
    Part,
    Role,
    SendMessageRequest,
    StreamResponse,
    Task,
    TaskState,
)
from a2a.utils.constants import (
    AGENT_CARD_WELL_KNOWN_PATH,
    PROTOCOL_VERSION_CURRENT,
    TransportProtocol,
)
from a2a.utils.errors import InternalError
from aiohttp import web

from proxy.policy import parse_policy
from tests.conftest import Proxy, RunProxy, free_port
from tests.e2e.conftest import StartProxy, StartUpstream
from tests.e2e.test_a2a_sdk import through
from tests.e2e.test_policies import (
    AGENT_HEADER,
    DATA,
    DEFAULT_DOMAIN,
    ERROR_INFO,
    MARKER,
    METADATA_KEYS,
    REASONS,
    RETRY_INFO,
    admin_sessions,
    check_opaque,
    denial_records,
    fresh,
    seconds_of,
)
from tests.upstreams.a2a_server import JSONRPC_PATH, REST_PREFIX, chunk_text, echo_text
from tests.upstreams.serve import LOOPBACK, HeaderRecorder, SeenRequest

pytestmark = pytest.mark.timeout(60)

A2A_POLICY = DATA / "a2a.yaml"
IDENTITY_POLICY = DATA / "identity_required.yaml"
VERSION_HEADERS = {"A2A-Version": "1.0"}
A2A_DOMAIN = "a2a-protocol.org"

# errors.md section 2, the AIP-193 column: reason -> (HTTP status, google.rpc.Code).
REST_STATUS: dict[str, tuple[int, str]] = {
    "SESSION_NOT_FOUND": (404, "NOT_FOUND"),
    "SESSION_EXPIRED": (404, "NOT_FOUND"),
    "SESSION_CLOSED": (404, "NOT_FOUND"),
    "SESSION_BUDGET_EXCEEDED": (429, "RESOURCE_EXHAUSTED"),
    "SESSION_RATE_LIMITED": (429, "RESOURCE_EXHAUSTED"),
    "TOO_MANY_SESSIONS": (429, "RESOURCE_EXHAUSTED"),
    "AGENT_MISMATCH": (403, "PERMISSION_DENIED"),
    "METHOD_NOT_AUTHORIZED": (403, "PERMISSION_DENIED"),
    "UNAUTHENTICATED": (401, "UNAUTHENTICATED"),
}

# What a2a.yaml configures and a client must never be told (errors.md section 2).
A2A_POLICY_SECRETS = (
    "a2a-budget-pair",
    "a2a-cap-single",
    "a2a-send-guard",
    "a2a-stream-guard",
    "a2a-task-guard",
    "a2a-rate-pair",
    "a2a-ttl-short",
    "per_minute",
    "max_per_agent",
)


# --- what an A2A denial must look like -----------------------------------------------------------


def check_opaque_a2a(message: str, info: Mapping[str, Any]) -> None:
    """No digit of a limit and no policy name in what the client is told."""
    check_opaque({"message": message, "data": [info]})
    shown = {k: v for k, v in info["metadata"].items() if k != "sessionId"}
    whole = json.dumps([message, shown])
    for secret in A2A_POLICY_SECRETS:
        assert secret not in whole, f"{secret!r} reached the client: {whole}"


def check_info(
    info: Mapping[str, Any], reason: str, *, session: str | None, method: str, domain: str
) -> None:
    """The ErrorInfo of a proxy denial; a `method` it tells is the one sent (REST: the op's)."""
    assert set(info) == {"@type", "reason", "domain", "metadata"}, info
    assert info["@type"] == ERROR_INFO
    assert info["reason"] == reason
    assert info["domain"] == domain
    metadata = info["metadata"]
    assert set(metadata) <= METADATA_KEYS - {"tool"}, metadata
    assert metadata.get("sessionId") == session, (metadata, session)
    assert metadata.get("method", method) == method, (metadata, method)


def check_details(details: list[Any], reason: str, response: httpx.Response) -> None:
    """ErrorInfo first; RetryInfo and `Retry-After` exactly when rate limited."""
    if reason == "SESSION_RATE_LIMITED":
        assert len(details) == 2, details
        assert set(details[1]) == {"@type", "retryDelay"}, details[1]
        assert details[1]["@type"] == RETRY_INFO
        delay = seconds_of(details[1]["retryDelay"])
        assert delay > 0
        assert response.headers.get("retry-after") == str(math.ceil(delay)), response.headers
    else:
        assert len(details) == 1, details
        assert "retry-after" not in response.headers, response.headers


@dataclass
class RpcReply:
    """One JSON-RPC request to the proxy and its answer."""

    sent: dict[str, Any]
    response: httpx.Response

    def result(self) -> dict[str, Any]:
        response = self.response
        assert response.status_code == 200, (response.status_code, response.text)
        body = response.json()
        assert "result" in body, body
        assert body["id"] == self.sent["id"]
        result: dict[str, Any] = body["result"]
        return result

    def task(self) -> dict[str, Any]:
        task: dict[str, Any] = self.result()["task"]
        return task

    def denied(
        self, reason: str, *, session: str | None = None, domain: str = DEFAULT_DOMAIN
    ) -> Mapping[str, Any]:
        """A proxy denial on the JSON-RPC binding: HTTP 200 (401 for UNAUTHENTICATED), its own
        code (errors.md 1, 2)."""
        response = self.response
        status = 401 if reason == "UNAUTHENTICATED" else 200
        assert response.status_code == status, (response.status_code, response.text)
        assert response.headers["content-type"].startswith("application/json")
        body = response.json()
        assert set(body) == {"jsonrpc", "id", "error"}, body
        assert (body["jsonrpc"], body["id"]) == ("2.0", self.sent["id"])
        error = body["error"]
        message, code = REASONS[reason]
        assert set(error) == {"code", "message", "data"}, error
        assert (error["code"], error["message"]) == (code, message), error
        assert isinstance(error["data"], list), error
        info: Mapping[str, Any] = error["data"][0]
        check_info(info, reason, session=session, method=self.sent["method"], domain=domain)
        check_details(error["data"], reason, response)
        check_opaque_a2a(error["message"], info)
        return info


@dataclass
class RestReply:
    """One REST request to the proxy and its answer; `op` is the operation it maps to."""

    op: str
    response: httpx.Response

    def doc(self) -> dict[str, Any]:
        response = self.response
        assert response.status_code == 200, (response.status_code, response.text)
        doc: dict[str, Any] = response.json()
        return doc

    def task(self) -> dict[str, Any]:
        doc = self.doc()
        task: dict[str, Any] = doc.get("task", doc)  # SendMessage wraps it, GetTask does not
        return task

    def denied(
        self, reason: str, *, session: str | None = None, domain: str = DEFAULT_DOMAIN
    ) -> Mapping[str, Any]:
        """A proxy denial on the REST binding: AIP-193 with the status of errors.md 2."""
        response = self.response
        status, code = REST_STATUS[reason]
        assert response.status_code == status, (response.status_code, response.text)
        content_type = response.headers["content-type"]
        assert content_type.startswith(("application/json", "application/a2a+json"))
        body = response.json()
        assert set(body) == {"error"}, body
        error = body["error"]
        assert set(error) == {"code", "status", "message", "details"}, error
        assert (error["code"], error["status"]) == (status, code), error
        assert error["message"] == REASONS[reason][0]
        info: Mapping[str, Any] = error["details"][0]
        check_info(info, reason, session=session, method=self.op, domain=domain)
        check_details(error["details"], reason, response)
        check_opaque_a2a(error["message"], info)
        return info


def wire_message(
    text: str, *, context: str | None = None, task: str | None = None
) -> dict[str, Any]:
    """A v1.0 ProtoJSON user message."""
    message: dict[str, Any] = {
        "messageId": uuid.uuid4().hex,
        "role": "ROLE_USER",
        "parts": [{"text": text}],
    }
    if context is not None:
        message["contextId"] = context
    if task is not None:
        message["taskId"] = task
    return message


@dataclass
class RawA2a:
    """Raw HTTP to the proxy, as one agent, on either binding."""

    http: httpx.AsyncClient
    base: str
    agent: str | None
    marker: str = field(default_factory=lambda: uuid.uuid4().hex)
    rest_prefix: str = REST_PREFIX
    agent_header: str = AGENT_HEADER
    _ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def headers(self) -> dict[str, str]:
        headers = {**VERSION_HEADERS, MARKER: self.marker}
        if self.agent is not None:
            headers[self.agent_header] = self.agent
        return headers

    async def rpc(self, method: str, params: dict[str, Any]) -> RpcReply:
        sent = {"jsonrpc": "2.0", "id": next(self._ids), "method": method, "params": params}
        response = await self.http.post(self.base + JSONRPC_PATH, json=sent, headers=self.headers())
        return RpcReply(sent, response)

    async def send(
        self, text: str = "hello", *, context: str | None = None, method: str = "SendMessage"
    ) -> RpcReply:
        return await self.rpc(method, {"message": wire_message(text, context=context)})

    async def get_task(self, task: str) -> RpcReply:
        return await self.rpc("GetTask", {"id": task})

    async def rest(
        self, op: str, http_method: str, path: str, body: dict[str, Any] | None = None
    ) -> RestReply:
        response = await self.http.request(
            http_method, self.base + self.rest_prefix + path, json=body, headers=self.headers()
        )
        return RestReply(op, response)

    async def rest_send(self, text: str = "hello", *, context: str | None = None) -> RestReply:
        body = {"message": wire_message(text, context=context)}
        return await self.rest("SendMessage", "POST", "/message:send", body)

    async def rest_stream(self, text: str, *, context: str | None = None) -> RestReply:
        body = {"message": wire_message(text, context=context)}
        return await self.rest("SendStreamingMessage", "POST", "/message:stream", body)

    async def rest_get_task(self, task: str) -> RestReply:
        return await self.rest("GetTask", "GET", f"/tasks/{task}")


# --- the proxies under test ----------------------------------------------------------------------


@dataclass
class Target:
    """A proxy in front of the official A2A agent, and what that agent received."""

    proxy: Proxy
    seen: HeaderRecorder

    def raw(self, http: httpx.AsyncClient, agent: str | None) -> RawA2a:
        return RawA2a(http, self.proxy.url, agent)

    def seen_by(self, marker: str) -> list[SeenRequest]:
        """What one test's marker brought to the shared upstream (the card excluded)."""
        return [
            r
            for r in self.seen.requests()
            if r.headers.get(MARKER) == marker and r.path != AGENT_CARD_WELL_KNOWN_PATH
        ]

    async def sessions(self) -> dict[str, dict[str, Any]]:
        return await admin_sessions(self.proxy)

    async def close(self, context: str) -> None:
        async with httpx.AsyncClient(timeout=10.0) as client:
            response = await client.delete(f"{self.proxy.admin_url}/sessions/{context}")
        assert response.status_code == 204, (response.status_code, response.text)


@pytest.fixture(scope="module")
def warden(
    run_proxy_module: RunProxy, a2a_upstream: str, a2a_upstream_seen: HeaderRecorder
) -> Target:
    return Target(run_proxy_module(a2a_upstream, "--policy", str(A2A_POLICY)), a2a_upstream_seen)


@pytest.fixture(scope="module")
def identity_required(
    run_proxy_module: RunProxy, a2a_upstream: str, a2a_upstream_seen: HeaderRecorder
) -> Target:
    proxy = run_proxy_module(a2a_upstream, "--policy", str(IDENTITY_POLICY))
    return Target(proxy, a2a_upstream_seen)


@pytest.fixture
async def web_client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=30.0) as client:
        yield client


@asynccontextmanager
async def official(
    base_url: str, agent: str, binding: str, *, streaming: bool = False, move: bool = True
) -> AsyncIterator[tuple[Client, str]]:
    """The official client for one binding, its card fetched through the proxy.

    `move`: the card's interface URLs are moved onto `base_url` by the test (the proxy
    leaves them alone without `--public-url`).
    """
    marker = uuid.uuid4().hex
    headers = {MARKER: marker, AGENT_HEADER: agent}
    async with httpx.AsyncClient(headers=headers, timeout=30.0) as http:
        card = await A2ACardResolver(http, base_url).get_agent_card()
        if move:
            card = through(card, base_url)
        config = ClientConfig(
            streaming=streaming, supported_protocol_bindings=[binding], httpx_client=http
        )
        client = ClientFactory(config).create(card)
        try:
            yield client, marker
        finally:
            await client.close()


def request(text: str, *, context: str | None = None) -> SendMessageRequest:
    message = Message(message_id=uuid.uuid4().hex, role=Role.ROLE_USER, parts=[Part(text=text)])
    if context is not None:
        message.context_id = context
    return SendMessageRequest(message=message)


async def send(client: Client, text: str, *, context: str | None = None) -> list[StreamResponse]:
    return [event async for event in client.send_message(request(text, context=context))]


def only_task(events: list[StreamResponse]) -> Task:
    assert len(events) == 1, events
    assert events[0].HasField("task"), events[0]
    return events[0].task


# --- 1. a session's life -------------------------------------------------------------------------


async def test_a_conversation_is_a_session_counted_on_both_bindings(warden: Target) -> None:
    agent = fresh("talker")
    async with official(warden.proxy.url, agent, TransportProtocol.JSONRPC) as (client, marker):
        first = only_task(await send(client, "hello"))
        context = first.context_id
        listed = (await warden.sessions())[context]
        assert (listed["agent"], listed["protocol"], listed["calls_used"]) == (agent, "a2a", 1)
        second = only_task(await send(client, "again", context=context))
    assert second.context_id == context
    assert [get_artifact_text(a) for a in second.artifacts] == [echo_text("again")]
    assert (await warden.sessions())[context]["calls_used"] == 2
    assert [r.path for r in warden.seen_by(marker)] == [JSONRPC_PATH] * 2

    async with official(warden.proxy.url, agent, TransportProtocol.HTTP_JSON) as (rest, marker):
        fetched = await rest.get_task(GetTaskRequest(id=first.id))
    assert (fetched.id, fetched.context_id) == (first.id, context)
    listed = (await warden.sessions())[context]
    assert (listed["agent"], listed["calls_used"]) == (agent, 3)
    assert [r.path for r in warden.seen_by(marker)] == [f"{REST_PREFIX}/tasks/{first.id}"]
    # One conversation, one session: the agent has no other.
    assert [s for s in (await warden.sessions()).values() if s["agent"] == agent] == [listed]


async def test_a_rest_conversation_and_a_jsonrpc_task_lookup_share_the_session(
    warden: Target, web_client: httpx.AsyncClient
) -> None:
    raw = warden.raw(web_client, fresh("talker"))
    task = (await raw.rest_send("over rest")).task()
    context = task["contextId"]
    assert (await raw.get_task(task["id"])).result()["contextId"] == context
    listed = (await warden.sessions())[context]
    assert (listed["agent"], listed["protocol"], listed["calls_used"]) == (raw.agent, "a2a", 2)


# --- 2. budget -----------------------------------------------------------------------------------


async def test_budget_on_the_jsonrpc_binding(warden: Target, web_client: httpx.AsyncClient) -> None:
    raw = warden.raw(web_client, fresh("budget"))
    context = (await raw.send("one")).task()["contextId"]  # the first request counts
    task = (await raw.send("two", context=context)).task()
    assert task["contextId"] == context
    (await raw.send("three", context=context)).denied("SESSION_BUDGET_EXCEEDED", session=context)
    (await raw.get_task(task["id"])).denied("SESSION_BUDGET_EXCEEDED", session=context)
    assert (await warden.sessions())[context]["calls_used"] == 2
    assert len(warden.seen_by(raw.marker)) == 2
    # The operator's log says what the client is not told.
    records = await denial_records(warden.proxy, 2, session=context)
    assert {(r["reason"], r["policy"], r["limit_value"], r["used"]) for r in records} == {
        ("SESSION_BUDGET_EXCEEDED", "a2a-budget-pair", 2, 2)
    }


async def test_budget_on_the_rest_binding(warden: Target, web_client: httpx.AsyncClient) -> None:
    raw = warden.raw(web_client, fresh("budget"))
    task = (await raw.rest_send("one")).task()
    context = task["contextId"]
    assert (await raw.rest_get_task(task["id"])).task()["id"] == task["id"]
    (await raw.rest_get_task(task["id"])).denied("SESSION_BUDGET_EXCEEDED", session=context)
    (await raw.rest_send("three", context=context)).denied(
        "SESSION_BUDGET_EXCEEDED", session=context
    )
    assert (await warden.sessions())[context]["calls_used"] == 2
    assert [r.method for r in warden.seen_by(raw.marker)] == ["POST", "GET"]


async def test_budget_through_the_official_client(warden: Target) -> None:
    agent = fresh("budget")
    async with official(warden.proxy.url, agent, TransportProtocol.JSONRPC) as (client, marker):
        context = only_task(await send(client, "one")).context_id
        only_task(await send(client, "two", context=context))
        with pytest.raises(A2AClientError) as caught:
            await send(client, "three", context=context)
    # The SDK keeps only the code and the message of errors it has no class for.
    assert str(caught.value) == "JSON-RPC Error -31063: session budget exceeded"
    assert len(warden.seen_by(marker)) == 2

    async with official(warden.proxy.url, agent, TransportProtocol.HTTP_JSON) as (rest, marker):
        context = only_task(await send(rest, "one")).context_id
        only_task(await send(rest, "two", context=context))
        with pytest.raises(A2AClientError) as caught_rest:
            await send(rest, "three", context=context)
    assert "HTTP Error 429" in str(caught_rest.value)
    assert len(warden.seen_by(marker)) == 2


# --- 3. the per-agent cap ------------------------------------------------------------------------


async def test_cap_refuses_a_second_conversation_until_the_first_is_closed(
    warden: Target, web_client: httpx.AsyncClient
) -> None:
    raw = warden.raw(web_client, fresh("solo"))
    first = (await raw.send("first")).task()["contextId"]
    (await raw.send("second")).denied("TOO_MANY_SESSIONS")
    (await raw.rpc("SendStreamingMessage", {"message": wire_message("stream 1")})).denied(
        "TOO_MANY_SESSIONS"
    )
    (await raw.rest_send("second")).denied("TOO_MANY_SESSIONS")
    (await raw.rest_stream("stream 1")).denied("TOO_MANY_SESSIONS")
    # The conversation under way goes on.
    assert (await raw.send("more", context=first)).task()["contextId"] == first
    assert len(warden.seen_by(raw.marker)) == 2

    await warden.close(first)
    second = (await raw.rest_send("room again")).task()["contextId"]
    assert second != first
    (await raw.send("old", context=first)).denied("SESSION_CLOSED", session=first)
    mine = {k: v for k, v in (await warden.sessions()).items() if v["agent"] == raw.agent}
    assert list(mine) == [second]
    assert mine[second]["calls_used"] == 1

    # Other agents of the same policy have caps of their own.
    assert (await warden.raw(web_client, fresh("solo")).rest_send()).task()["contextId"]
    records = await denial_records(warden.proxy, 4, agent=raw.agent, reason="TOO_MANY_SESSIONS")
    assert {(r["policy"], r["limit_value"]) for r in records} == {("a2a-cap-single", 1)}


# --- 4. methods, by either generation's name -----------------------------------------------------


async def test_a_denied_method_is_refused_on_both_bindings_and_not_counted(
    warden: Target, web_client: httpx.AsyncClient
) -> None:
    agent = fresh("notask")  # methods.deny: ["GetTask", "tasks/get"]
    raw = warden.raw(web_client, agent)
    task = (await raw.send("sends pass")).task()
    context = task["contextId"]
    (await raw.get_task(task["id"])).denied("METHOD_NOT_AUTHORIZED", session=context)
    (await raw.rpc("tasks/get", {"id": task["id"]})).denied(
        "METHOD_NOT_AUTHORIZED", session=context
    )
    (await raw.rest_get_task(task["id"])).denied("METHOD_NOT_AUTHORIZED", session=context)
    # A task the proxy does not know: no session to name.
    (await raw.rest_get_task(uuid.uuid4().hex)).denied("METHOD_NOT_AUTHORIZED")
    assert (await warden.sessions())[context]["calls_used"] == 1
    assert len(warden.seen_by(raw.marker)) == 1

    async with official(warden.proxy.url, agent, TransportProtocol.HTTP_JSON) as (rest, marker):
        with pytest.raises(A2AClientError) as caught:
            await rest.get_task(GetTaskRequest(id=task["id"]))
    assert "HTTP Error 403" in str(caught.value)
    assert warden.seen_by(marker) == []
    records = await denial_records(warden.proxy, 5, agent=agent)
    assert {(r["reason"], r["policy"]) for r in records} == {
        ("METHOD_NOT_AUTHORIZED", "a2a-task-guard")
    }


async def test_a_legacy_method_glob_denies_the_operation_under_every_name(
    warden: Target, web_client: httpx.AsyncClient
) -> None:
    raw = warden.raw(web_client, fresh("nosend"))  # methods.deny: ["message/send"]
    (await raw.send("v0.3 name", method="message/send")).denied("METHOD_NOT_AUTHORIZED")
    (await raw.send("v1.0 name")).denied("METHOD_NOT_AUTHORIZED")
    (await raw.rest_send("rest")).denied("METHOD_NOT_AUTHORIZED")
    assert warden.seen_by(raw.marker) == []


async def test_a_current_method_glob_denies_the_operation_under_every_name(
    warden: Target, web_client: httpx.AsyncClient
) -> None:
    agent = fresh("nostream")  # methods.deny: ["SendStreamingMessage"]
    raw = warden.raw(web_client, agent)
    params = {"message": wire_message("stream 2")}
    (await raw.rpc("SendStreamingMessage", params)).denied("METHOD_NOT_AUTHORIZED")
    (await raw.rpc("message/stream", params)).denied("METHOD_NOT_AUTHORIZED")
    (await raw.rest_stream("stream 2")).denied("METHOD_NOT_AUTHORIZED")
    async with official(warden.proxy.url, agent, TransportProtocol.JSONRPC, streaming=True) as (
        client,
        marker,
    ):
        with pytest.raises(A2AClientError) as caught:
            await send(client, "stream 1")
    assert str(caught.value) == "JSON-RPC Error -31069: method not authorized in session"
    assert warden.seen_by(marker) == warden.seen_by(raw.marker) == []


# --- 5. agent mismatch ---------------------------------------------------------------------------


async def test_another_agent_cannot_use_a_context_or_its_tasks(
    warden: Target, web_client: httpx.AsyncClient
) -> None:
    owner = warden.raw(web_client, fresh("owner"))
    task = (await owner.send("mine")).task()
    context, task_id = task["contextId"], task["id"]
    intruder = RawA2a(web_client, warden.proxy.url, fresh("intruder"), marker=owner.marker)
    (await intruder.send("yours?", context=context)).denied("AGENT_MISMATCH", session=context)
    (await intruder.get_task(task_id)).denied("AGENT_MISMATCH", session=context)
    (await intruder.rest_send("yours?", context=context)).denied("AGENT_MISMATCH", session=context)
    (await intruder.rest_get_task(task_id)).denied("AGENT_MISMATCH", session=context)
    anonymous = RawA2a(web_client, warden.proxy.url, None, marker=owner.marker)
    (await anonymous.rest_get_task(task_id)).denied("AGENT_MISMATCH", session=context)
    # The owner's session is untouched, and none of the others' requests left the proxy.
    assert (await owner.rest_get_task(task_id)).task()["id"] == task_id
    listed = (await warden.sessions())[context]
    assert (listed["agent"], listed["calls_used"]) == (owner.agent, 2)
    assert len(warden.seen_by(owner.marker)) == 2


async def test_the_official_client_of_another_agent_is_refused(warden: Target) -> None:
    owner = fresh("owner")
    async with official(warden.proxy.url, owner, TransportProtocol.JSONRPC) as (client, _):
        created = only_task(await send(client, "mine"))
    async with official(warden.proxy.url, fresh("intruder"), TransportProtocol.HTTP_JSON) as (
        rest,
        marker,
    ):
        with pytest.raises(A2AClientError) as caught:
            await rest.get_task(GetTaskRequest(id=created.id))
    assert "HTTP Error 403" in str(caught.value)
    assert warden.seen_by(marker) == []


# --- 6. admin close ------------------------------------------------------------------------------


async def test_admin_close_ends_the_session_on_both_bindings(
    warden: Target, web_client: httpx.AsyncClient
) -> None:
    raw = warden.raw(web_client, fresh("closer"))
    task = (await raw.rest_send("before")).task()
    context = task["contextId"]
    await warden.close(context)
    assert context not in await warden.sessions()
    (await raw.send("after", context=context)).denied("SESSION_CLOSED", session=context)
    (await raw.get_task(task["id"])).denied("SESSION_CLOSED", session=context)
    (await raw.rest_send("after", context=context)).denied("SESSION_CLOSED", session=context)
    (await raw.rest_get_task(task["id"])).denied("SESSION_CLOSED", session=context)
    assert len(warden.seen_by(raw.marker)) == 1
    # A closed context stays closed: it is not adopted again.
    assert context not in await warden.sessions()


# --- 7. rate limit -------------------------------------------------------------------------------


async def test_rate_limit_on_rest_carries_retry_after(
    warden: Target, web_client: httpx.AsyncClient
) -> None:
    raw = warden.raw(web_client, fresh("rate"))  # rate_limit.per_minute: 2
    task = (await raw.rest_send("one")).task()
    context = task["contextId"]
    assert (await raw.rest_get_task(task["id"])).task()["id"] == task["id"]
    limited = await raw.rest_get_task(task["id"])
    limited.denied("SESSION_RATE_LIMITED", session=context)
    delay = seconds_of(limited.response.json()["error"]["details"][1]["retryDelay"])
    # Two a minute: one call every 30 s refills an empty bucket.
    assert 0 < delay <= 30
    # The JSON-RPC binding: HTTP 200, the same RetryInfo and Retry-After.
    (await raw.send("three", context=context)).denied("SESSION_RATE_LIMITED", session=context)
    assert (await warden.sessions())[context]["calls_used"] == 2
    assert len(warden.seen_by(raw.marker)) == 2
    records = await denial_records(warden.proxy, 2, session=context)
    assert {(r["reason"], r["policy"], r["limit_value"]) for r in records} == {
        ("SESSION_RATE_LIMITED", "a2a-rate-pair", 2)
    }


# --- 8. contexts and tasks the proxy has not seen ------------------------------------------------


async def test_an_unseen_context_is_adopted_for_the_caller(
    warden: Target, web_client: httpx.AsyncClient
) -> None:
    raw = warden.raw(web_client, fresh("adopter"))
    context = f"made-up-{uuid.uuid4().hex}"
    # The upstream decides the answer (the SDK agent accepts the id) ...
    assert (await raw.send("adopt me", context=context)).task()["contextId"] == context
    # ... the proxy lists the context as the caller's session, the request counted.
    listed = (await warden.sessions())[context]
    assert (listed["agent"], listed["protocol"], listed["calls_used"]) == (raw.agent, "a2a", 1)
    assert (await raw.rest_send("again", context=context)).task()["contextId"] == context
    assert (await warden.sessions())[context]["calls_used"] == 2
    intruder = RawA2a(web_client, warden.proxy.url, fresh("adopter"), marker=raw.marker)
    (await intruder.send("mine now?", context=context)).denied("AGENT_MISMATCH", session=context)

    rest_context = f"made-up-{uuid.uuid4().hex}"
    assert (await raw.rest_send("adopt me", context=rest_context)).task()[
        "contextId"
    ] == rest_context
    assert (await warden.sessions())[rest_context]["agent"] == raw.agent


async def test_an_unseen_context_at_the_cap_is_refused(
    warden: Target, web_client: httpx.AsyncClient
) -> None:
    raw = warden.raw(web_client, fresh("solo"))
    first = (await raw.send("first")).task()["contextId"]
    made_up = f"made-up-{uuid.uuid4().hex}"
    (await raw.send("adopt?", context=made_up)).denied("TOO_MANY_SESSIONS", session=made_up)
    (await raw.rest_send("adopt?", context=made_up)).denied("TOO_MANY_SESSIONS", session=made_up)
    sessions = await warden.sessions()
    assert made_up not in sessions
    assert sessions[first]["calls_used"] == 1
    assert len(warden.seen_by(raw.marker)) == 1


async def test_an_unseen_task_is_forwarded_and_binds_its_context(
    warden: Target, a2a_upstream: str, web_client: httpx.AsyncClient
) -> None:
    # A task made behind the proxy's back, straight at the upstream.
    direct = await web_client.post(
        a2a_upstream + REST_PREFIX + "/message:send",
        json={"message": wire_message("made elsewhere")},
        headers=VERSION_HEADERS,
    )
    assert direct.status_code == 200, direct.text
    task = direct.json()["task"]
    raw = warden.raw(web_client, fresh("finder"))
    assert (await raw.rest_get_task(task["id"])).task()["contextId"] == task["contextId"]
    listed = (await warden.sessions())[task["contextId"]]
    assert (listed["agent"], listed["protocol"], listed["calls_used"]) == (raw.agent, "a2a", 1)
    (await warden.raw(web_client, fresh("finder")).get_task(task["id"])).denied(
        "AGENT_MISMATCH", session=task["contextId"]
    )

    # An unknown task gets the upstream's own answer and binds nothing.
    missing = await raw.rest_get_task(uuid.uuid4().hex)
    assert missing.response.status_code == 404, missing.response.text
    assert missing.response.json()["error"]["details"][0]["reason"] == "TASK_NOT_FOUND"
    mine = [s for s, v in (await warden.sessions()).items() if v["agent"] == raw.agent]
    assert mine == [task["contextId"]]


# --- identity ---------------------------------------------------------------------------------


async def test_identity_and_error_domain_apply_to_a2a(
    identity_required: Target, web_client: httpx.AsyncClient
) -> None:
    domain = "policies.warden.example"  # identity: X-Caller-Id, required; budget.calls: 2
    anonymous = identity_required.raw(web_client, None)
    (await anonymous.send()).denied("UNAUTHENTICATED", domain=domain)
    (await anonymous.rest_send()).denied("UNAUTHENTICATED", domain=domain)
    wrong_header = identity_required.raw(web_client, fresh("caller"))
    (await wrong_header.rest_send()).denied("UNAUTHENTICATED", domain=domain)
    assert identity_required.seen_by(anonymous.marker) == []
    assert identity_required.seen_by(wrong_header.marker) == []

    caller = identity_required.raw(web_client, fresh("caller"))
    caller.agent_header = "x-caller-id"
    task = (await caller.send("known")).task()
    context = task["contextId"]
    assert (await caller.rest_get_task(task["id"])).task()["id"] == task["id"]
    (await caller.rest_get_task(task["id"])).denied(
        "SESSION_BUDGET_EXCEEDED", session=context, domain=domain
    )
    (await caller.send("three", context=context)).denied(
        "SESSION_BUDGET_EXCEEDED", session=context, domain=domain
    )
    listed = (await identity_required.sessions())[context]
    assert (listed["agent"], listed["calls_used"]) == (caller.agent, 2)


# --- ttl -----------------------------------------------------------------------------------------


async def test_ttl_expires_a_context(warden: Target, web_client: httpx.AsyncClient) -> None:
    raw = warden.raw(web_client, fresh("ttl"))  # session.ttl: 1s
    task = (await raw.send("young")).task()
    context = task["contextId"]
    await asyncio.sleep(1.3)
    (await raw.send("old", context=context)).denied("SESSION_EXPIRED", session=context)
    (await raw.rest_get_task(task["id"])).denied("SESSION_EXPIRED", session=context)
    assert len(warden.seen_by(raw.marker)) == 1


# --- 9. streaming --------------------------------------------------------------------------------


@pytest.mark.parametrize("binding", [TransportProtocol.JSONRPC, TransportProtocol.HTTP_JSON])
async def test_a_stream_binds_its_session_from_the_first_event(
    warden: Target, binding: str
) -> None:
    agent = fresh("streamer")
    async with official(warden.proxy.url, agent, binding, streaming=True) as (client, marker):
        events = await send(client, "stream 3")
    kinds = [event.WhichOneof("payload") for event in events]
    assert kinds == ["task", "status_update", *["artifact_update"] * 3, "status_update"]
    chunks = [
        get_artifact_text(e.artifact_update.artifact)
        for e in events
        if e.HasField("artifact_update")
    ]
    assert chunks == [chunk_text(i, 3) for i in range(1, 4)]
    assert events[-1].status_update.status.state == TaskState.TASK_STATE_COMPLETED
    task = events[0].task
    listed = (await warden.sessions())[task.context_id]
    assert (listed["agent"], listed["protocol"], listed["calls_used"]) == (agent, "a2a", 1)
    [post] = warden.seen_by(marker)
    assert post.response_headers["content-type"].startswith("text/event-stream")

    # The streamed task is linked to its context.
    async with official(warden.proxy.url, agent, TransportProtocol.HTTP_JSON) as (rest, _):
        fetched = await rest.get_task(GetTaskRequest(id=task.id))
    assert fetched.status.state == TaskState.TASK_STATE_COMPLETED
    assert (await warden.sessions())[task.context_id]["calls_used"] == 2


class CuttingAgent:
    """Just enough A2A v1.0 to fail: streams cut after their first event, sends get junk."""

    def __init__(self) -> None:
        self.contexts: list[str] = []

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/", self.jsonrpc)
        app.router.add_post("/message:stream", self.rest_stream)
        app.router.add_post("/message:send", self.junk)
        return app

    def _events(self) -> list[dict[str, Any]]:
        context = uuid.uuid4().hex
        self.contexts.append(context)
        task = {
            "id": uuid.uuid4().hex,
            "contextId": context,
            "status": {"state": "TASK_STATE_WORKING"},
        }
        return [{"task": task}]

    async def _cut(
        self, request: web.Request, payloads: list[dict[str, Any]]
    ) -> web.StreamResponse:
        out = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await out.prepare(request)
        for payload in payloads:
            await out.write(f"data: {json.dumps(payload)}\n\n".encode())
        await out.write(b'data: {"statusUpdate": {"taskId"')  # half an event, then nothing
        await out.drain()
        assert request.transport is not None
        request.transport.abort()
        return out

    async def jsonrpc(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if body.get("method") in ("SendStreamingMessage", "message/stream"):
            wrapped = [{"jsonrpc": "2.0", "id": body["id"], "result": e} for e in self._events()]
            return await self._cut(request, wrapped)
        return await self.junk(request)

    async def rest_stream(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        return await self._cut(request, self._events())

    async def junk(self, request: web.Request) -> web.Response:
        await request.read()
        return web.Response(
            status=200, text="<html>not an A2A answer</html>", content_type="text/html"
        )


def sse_events(body: str) -> list[tuple[str, dict[str, Any]]]:
    """(event name, parsed data) of each event in an SSE body."""
    out: list[tuple[str, dict[str, Any]]] = []
    for block in body.replace("\r\n", "\n").split("\n\n"):
        name, data = "message", []
        for line in block.split("\n"):
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].lstrip())
        if data:
            out.append((name, json.loads("\n".join(data))))
    return out


def cutting_card(proxy_url: str) -> AgentCard:
    return AgentCard(
        name="cutting-agent",
        version="1.0.0",
        supported_interfaces=[
            AgentInterface(
                url=proxy_url + "/",
                protocol_binding=TransportProtocol.JSONRPC,
                protocol_version=PROTOCOL_VERSION_CURRENT,
            ),
            AgentInterface(
                url=proxy_url,
                protocol_binding=TransportProtocol.HTTP_JSON,
                protocol_version=PROTOCOL_VERSION_CURRENT,
            ),
        ],
        capabilities=AgentCapabilities(streaming=True),
        default_input_modes=["text/plain"],
        default_output_modes=["text/plain"],
    )


def check_interrupted_info(info: Mapping[str, Any]) -> None:
    assert info["@type"] == ERROR_INFO
    assert (info["reason"], info["domain"]) == ("UPSTREAM_STREAM_INTERRUPTED", DEFAULT_DOMAIN)


async def test_a_cut_stream_ends_with_an_error_event_on_both_bindings(
    run_proxy: RunProxy, start_upstream: StartUpstream, web_client: httpx.AsyncClient
) -> None:
    agent = CuttingAgent()
    proxy = run_proxy(await start_upstream(agent.app()))
    agent_id = fresh("streamer")
    raw = RawA2a(web_client, proxy.url, agent_id, rest_prefix="")

    rpc = await raw.rpc("SendStreamingMessage", {"message": wire_message("stream 9")})
    assert rpc.response.status_code == 200
    events = sse_events(rpc.response.text)
    assert [next(iter(e["result"])) for _, e in events[:-1]] == ["task"]
    name, last = events[-1]
    assert name == "message"
    assert set(last) == {"jsonrpc", "id", "error"}, last
    assert last["id"] == rpc.sent["id"]
    error = last["error"]
    assert (error["code"], error["message"]) == (-32603, "upstream stream interrupted")
    check_interrupted_info(error["data"][0])
    # The half event never reached the client.
    assert '"statusUpdate"' not in rpc.response.text, rpc.response.text
    # The session was bound from the first event, the only one the stream delivered.
    listed = (await admin_sessions(proxy))[agent.contexts[-1]]
    assert (listed["agent"], listed["calls_used"]) == (raw.agent, 1)

    rest = await raw.rest_stream("stream 9")
    assert rest.response.status_code == 200
    events = sse_events(rest.response.text)
    assert [next(iter(e)) for _, e in events[:-1]] == ["task"]
    name, last = events[-1]
    assert name == "error"
    assert set(last) == {"error"}, last
    aip = last["error"]
    assert (aip["code"], aip["status"], aip["message"]) == (
        503,
        "UNAVAILABLE",
        "upstream stream interrupted",
    )
    check_interrupted_info(aip["details"][0])
    assert (await admin_sessions(proxy))[agent.contexts[-1]]["agent"] == raw.agent

    # The official clients see the events, then the error.
    card = cutting_card(proxy.url)
    async with httpx.AsyncClient(headers={AGENT_HEADER: agent_id}, timeout=30.0) as http:
        received, failure = await stream_until_failure(http, card, TransportProtocol.JSONRPC)
        assert received == ["task"]
        assert isinstance(failure, InternalError), repr(failure)
        assert failure.message == "upstream stream interrupted"
        received, failure = await stream_until_failure(http, card, TransportProtocol.HTTP_JSON)
        assert received == ["task"]
        # The SDK has no class for the reason: it hands over the event's data.
        assert isinstance(failure, A2AClientError), repr(failure)
        assert json.loads(str(failure))["error"]["status"] == "UNAVAILABLE"


async def stream_until_failure(
    http: httpx.AsyncClient, card: AgentCard, binding: str
) -> tuple[list[str | None], Exception]:
    """The kinds of events an official streaming client received before it raised."""
    config = ClientConfig(streaming=True, supported_protocol_bindings=[binding], httpx_client=http)
    client = ClientFactory(config).create(card)
    received: list[str | None] = []
    try:
        async for event in client.send_message(request("stream 9")):
            received.append(event.WhichOneof("payload"))
    except Exception as exc:  # the caller checks the type
        return received, exc
    pytest.fail(f"the stream ended without an error after {received}")


# --- errors.a2a_spec -----------------------------------------------------------------------------


@pytest.mark.parametrize(("a2a_spec", "status"), [("1.0.1", 500), ("1.0.0", 502)])
async def test_a2a_spec_selects_the_http_column_on_rest(
    start_proxy: StartProxy,
    start_upstream: StartUpstream,
    web_client: httpx.AsyncClient,
    a2a_spec: str,
    status: int,
) -> None:
    policy = parse_policy(f'version: 1\nerrors: {{a2a_spec: "{a2a_spec}"}}\n', "inline.yaml")
    proxy = await start_proxy(await start_upstream(CuttingAgent().app()), policy=policy)
    raw = RawA2a(web_client, proxy, fresh("caller"), rest_prefix="")
    rest = await raw.rest_send("junk please")
    assert rest.response.status_code == status, rest.response.text
    error = rest.response.json()["error"]
    assert (error["code"], error["status"]) == (status, "INTERNAL")
    info = error["details"][0]
    assert (info["reason"], info["domain"]) == ("INVALID_AGENT_RESPONSE", A2A_DOMAIN)
    # The JSON-RPC binding answers HTTP 200 with -32006 under either revision.
    rpc = await raw.send("junk please")
    assert rpc.response.status_code == 200, rpc.response.text
    assert rpc.response.json()["error"]["code"] == -32006


# --- 10. the agent card --------------------------------------------------------------------------


async def test_agent_card_is_untouched_without_a_public_url(
    warden: Target, a2a_upstream: str, web_client: httpx.AsyncClient
) -> None:
    direct = await web_client.get(a2a_upstream + AGENT_CARD_WELL_KNOWN_PATH)
    proxied = await web_client.get(warden.proxy.url + AGENT_CARD_WELL_KNOWN_PATH)
    assert proxied.status_code == 200
    assert proxied.content == direct.content
    assert proxied.headers["etag"] == direct.headers["etag"]


PUBLIC_URL = "https://agents.example.test:8443/warden"


@pytest.fixture(scope="module")
def published(run_proxy_module: RunProxy, a2a_upstream: str) -> Proxy:
    """A proxy told its public URL by the environment."""
    return run_proxy_module(a2a_upstream, env={"AGENT_WARDEN_PUBLIC_URL": PUBLIC_URL})


@pytest.fixture(scope="module")
def self_published(
    run_proxy_module: RunProxy, a2a_upstream: str, a2a_upstream_seen: HeaderRecorder
) -> Target:
    """A proxy whose public URL is its own address (the flag, on a port fixed in advance)."""
    url = f"http://{LOOPBACK}:{free_port()}"
    # The launcher picks a port of its own; a second --listen wins (argparse keeps the last).
    proxy = run_proxy_module(a2a_upstream, "--listen", url[len("http://") :], "--public-url", url)
    return Target(replace(proxy, url=url), a2a_upstream_seen)


async def test_public_url_moves_the_card_interfaces(
    published: Proxy, a2a_upstream: str, web_client: httpx.AsyncClient
) -> None:
    direct = await web_client.get(a2a_upstream + AGENT_CARD_WELL_KNOWN_PATH)
    proxied = await web_client.get(published.url + AGENT_CARD_WELL_KNOWN_PATH)
    assert proxied.status_code == 200, proxied.text
    assert proxied.headers["content-type"].startswith("application/json")
    assert "etag" not in proxied.headers  # the representation changed
    card, original = proxied.json(), direct.json()
    assert [i["url"] for i in card["supportedInterfaces"]] == [
        PUBLIC_URL + JSONRPC_PATH,
        PUBLIC_URL + REST_PREFIX,
    ]
    # Only the interface URLs moved.
    for moved, kept in zip(
        card["supportedInterfaces"], original["supportedInterfaces"], strict=True
    ):
        assert {**moved, "url": kept["url"]} == kept
    assert {k: v for k, v in card.items() if k != "supportedInterfaces"} == {
        k: v for k, v in original.items() if k != "supportedInterfaces"
    }
    parsed = await A2ACardResolver(web_client, published.url).get_agent_card()
    assert {urlsplit(i.url).netloc for i in parsed.supported_interfaces} == {
        "agents.example.test:8443"
    }


@pytest.mark.parametrize("binding", [TransportProtocol.JSONRPC, TransportProtocol.HTTP_JSON])
async def test_a_client_following_the_card_stays_behind_the_proxy(
    self_published: Target, binding: str
) -> None:
    agent = fresh("follower")
    url = self_published.proxy.url
    async with official(url, agent, binding, move=False) as (client, marker):
        task = only_task(await send(client, "followed the card"))
    listed = (await self_published.sessions())[task.context_id]
    assert (listed["agent"], listed["calls_used"]) == (agent, 1)
    [seen] = self_published.seen_by(marker)
    assert seen.headers.get("x-forwarded-host") == url.removeprefix("http://")


# --- the method a session denial names ------------------------------------------------------------


async def test_session_denials_echo_the_legacy_method_name_sent(
    warden: Target, web_client: httpx.AsyncClient
) -> None:
    owner = warden.raw(web_client, fresh("solo"))
    context = (await owner.send("mine")).task()["contextId"]
    # Budget denials already echo "message/send"; these must too.
    (await owner.send("another", method="message/send")).denied("TOO_MANY_SESSIONS")
    intruder = RawA2a(web_client, warden.proxy.url, fresh("solo"), marker=owner.marker)
    (await intruder.send("yours?", context=context, method="message/send")).denied(
        "AGENT_MISMATCH", session=context
    )
    await warden.close(context)
    (await owner.send("after", context=context, method="message/send")).denied(
        "SESSION_CLOSED", session=context
    )
