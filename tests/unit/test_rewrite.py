"""The rewrite step alone: pure functions from what the upstream sent to what the client
gets, tested without sockets, stores or clocks (proxy/rewrite.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.dataplane import (
    UpstreamConnectTimeout,
    UpstreamCut,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from proxy.dataplane.line import upstream_failure
from proxy.errors import E, WardenError
from proxy.policy.model import ErrorsConfig
from proxy.protocols.classify import Classified, classify
from proxy.rewrite import (
    error_status,
    filter_tools_doc,
    filter_tools_events,
    header_mismatch,
    interrupted_events,
    listing_contexts,
    merged_batch,
    own_listing,
    render,
    tools_list_ids,
)

STYLE = ErrorsConfig()
JSON = {"Content-Type": "application/json"}


def headers(**values: str) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict({k.replace("_", "-"): v for k, v in values.items()}))


def classified(body: Any, path: str = "/mcp", **head: str) -> Classified:
    raw = json.dumps(body).encode()
    return classify("POST", path, headers(**{"Content_Type": "application/json", **head}), raw)


def rest(method: str, path: str) -> Classified:
    return classify(method, path, headers(A2A_Version="1.0"), None)


MCP_CALL = {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "echo"}}


def reason_of(body: bytes) -> str:
    doc = json.loads(body)
    error = doc["error"]
    details = error.get("details") or error.get("data") or []
    (info,) = [d for d in details if d["@type"].endswith("ErrorInfo")]
    return str(info["reason"])


# -- failures without an answer --------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (UpstreamConnectTimeout("x"), E.UPSTREAM_UNAVAILABLE),
        (UpstreamTimeout("x"), E.UPSTREAM_TIMEOUT),
        (TimeoutError(), E.UPSTREAM_TIMEOUT),
        (UpstreamUnavailable("x"), E.UPSTREAM_UNAVAILABLE),
        (UpstreamCut("x"), E.UPSTREAM_UNAVAILABLE),
    ],
)
def test_upstream_failures_name_their_row(exc: BaseException, reason: E) -> None:
    assert upstream_failure(exc) is reason


# -- the proxy's own envelope follows the request -------------------------------------------------


def test_render_echoes_the_request_id_on_json_rpc() -> None:
    rendered = render(classified(MCP_CALL), WardenError(E.TOOL_NOT_AUTHORIZED), STYLE)
    doc = json.loads(rendered.body)
    assert doc["id"] == 7
    assert doc["jsonrpc"] == "2.0"
    assert reason_of(rendered.body) == "TOOL_NOT_AUTHORIZED"


def test_render_a_batch_answers_every_request_id() -> None:
    batch = [{**MCP_CALL, "id": 1}, {**MCP_CALL, "id": 2}, {"jsonrpc": "2.0", "method": "n"}]
    rendered = render(classified(batch), WardenError(E.SESSION_BUDGET_EXCEEDED), STYLE)
    assert [e["id"] for e in json.loads(rendered.body)] == [1, 2]


def test_render_rest_is_aip193() -> None:
    rendered = render(rest("GET", "/tasks/t1"), WardenError(E.SESSION_NOT_FOUND), STYLE)
    doc = json.loads(rendered.body)
    assert set(doc) == {"error"}
    assert doc["error"]["status"] == "NOT_FOUND"
    assert rendered.status == 404


def test_interrupted_streams_owe_one_event_per_pending_request() -> None:
    events = interrupted_events(classified(MCP_CALL), [3, 4], STYLE)
    assert events.count(b"event: message") == 2
    assert b'"id":3' in events
    assert b'"id":4' in events
    assert b"UPSTREAM_STREAM_INTERRUPTED" in events


# -- upstream error statuses ----------------------------------------------------------------------


def rewrite(
    info: Classified,
    status: int,
    body: bytes,
    upstream: dict[str, str] | None = None,
    session_sent: bool = False,
) -> tuple[int, CIMultiDict[str], bytes]:
    sent = CIMultiDictProxy(CIMultiDict(upstream or {}))
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    answer = error_status(
        info,
        status,
        "",
        CIMultiDict(sent),
        sent,
        body,
        doc,
        path="/mcp",
        session_sent=session_sent,
        style=STYLE,
    )
    return answer.status, answer.headers, answer.body


def test_a_conformant_json_rpc_error_passes_unchanged() -> None:
    body = b'{"jsonrpc":"2.0","id":7,"error":{"code":-32602,"message":"bad params"}}'
    assert rewrite(classified(MCP_CALL), 400, body)[2] == body


def test_an_html_500_becomes_an_envelope_without_the_upstreams_text() -> None:
    body = b"<html>Traceback (most recent call last): secret.py</html>"
    status, _, out = rewrite(classified(MCP_CALL), 500, body)
    assert status == 200  # JSON-RPC: errors travel in a 200 (errors.md section 3)
    assert b"Traceback" not in out
    assert b"secret" not in out
    assert reason_of(out) == "UPSTREAM_ERROR"
    assert json.loads(out)["id"] == 7


def test_a_rest_502_becomes_aip193_internal() -> None:
    status, _, out = rewrite(Classified("unknown", rest("GET", "/x").binding), 502, b"bad gateway")
    assert status == 500
    assert json.loads(out)["error"]["status"] == "INTERNAL"


def test_mcp_404_to_a_session_means_the_session_is_gone() -> None:
    status, _, out = rewrite(classified(MCP_CALL), 404, b"no such session", session_sent=True)
    assert status == 404
    assert json.loads(out)["error"]["code"] == -32005


def test_mcp_4xx_keeps_its_status_and_a_challenge_survives() -> None:
    challenge = 'Bearer resource_metadata="https://x/.well-known/oauth-protected-resource"'
    status, out_headers, out = rewrite(
        classified(MCP_CALL), 401, b"no", {"WWW-Authenticate": challenge, "X-Other": "1"}
    )
    assert status == 401
    assert out_headers.getall("WWW-Authenticate") == [challenge]
    assert "X-Other" not in out_headers
    assert json.loads(out)["id"] == 7


def test_an_aip193_body_is_completed_with_its_error_info() -> None:
    body = json.dumps({"error": {"code": 404, "message": "gone", "status": "NOT_FOUND"}})
    status, _, out = rewrite(rest("GET", "/tasks/t1"), 404, body.encode())
    assert status == 404
    assert reason_of(out)  # an ErrorInfo was added


# -- what callers may see -------------------------------------------------------------------------

TOOLS = {"tools": [{"name": "echo"}, {"name": "secret"}, {"name": "echo2"}]}


def allows(name: str) -> bool:
    return name.startswith("echo")


def test_tools_list_answers_lose_what_the_caller_may_not_call() -> None:
    info = classified({"jsonrpc": "2.0", "id": 5, "method": "tools/list"})
    ids = tools_list_ids(info)
    assert ids == {5}
    doc = {"jsonrpc": "2.0", "id": 5, "result": TOOLS}
    filtered = filter_tools_doc(doc, ids, allows)
    assert [t["name"] for t in filtered["result"]["tools"]] == ["echo", "echo2"]
    assert filter_tools_doc({**doc, "id": 6}, ids, allows) is None  # another request's answer
    assert filter_tools_doc(doc, ids, lambda _: True) is None  # nothing to hide: unchanged


def test_tools_list_events_are_filtered_event_by_event() -> None:
    other = b'event: message\ndata: {"jsonrpc":"2.0","method":"notifications/x"}\n\n'
    answer = json.dumps({"jsonrpc": "2.0", "id": 5, "result": TOOLS})
    ready = other + f"event: message\nid: 9\ndata: {answer}\n\n".encode()
    out = filter_tools_events(ready, {5}, allows)
    assert out.startswith(other)
    assert b"secret" not in out
    assert b"id: 9" in out
    assert filter_tools_events(other, {5}, allows) is other


def test_a_task_listing_keeps_the_callers_contexts_and_its_count() -> None:
    listing = {
        "tasks": [{"id": "a", "contextId": "mine"}, {"id": "b", "context_id": "theirs"}],
        "totalSize": 2,
    }
    assert listing_contexts(listing) == {"mine", "theirs"}
    assert listing_contexts({"tasks": "no"}) is None
    assert own_listing(listing, {"mine"}) == {
        "tasks": [{"id": "a", "contextId": "mine"}],
        "totalSize": 1,
    }
    assert own_listing(listing, {"mine", "theirs"}) is None


def test_a_trimmed_batch_answer_carries_the_denied_elements_errors() -> None:
    denied = [{"jsonrpc": "2.0", "id": 2, "error": {"code": -31061, "message": "x"}}]
    answered = [{"jsonrpc": "2.0", "id": 1, "result": {}}]
    assert json.loads(merged_batch(answered, denied)) == [*answered, *denied]
    assert json.loads(merged_batch(answered[0], denied)) == [*answered, *denied]
    assert json.loads(merged_batch(None, denied)) == denied


def test_mcp_method_headers_must_match_the_body() -> None:
    info = classified(MCP_CALL)
    assert not header_mismatch(headers(), info)
    assert not header_mismatch(headers(Mcp_Method="tools/call", Mcp_Name="echo"), info)
    assert header_mismatch(headers(Mcp_Method="tools/list"), info)
    assert header_mismatch(headers(Mcp_Method="tools/call", Mcp_Name="other"), info)
    twice = CIMultiDict([("Mcp-Method", "tools/call"), ("Mcp-Method", "tools/call")])
    assert header_mismatch(CIMultiDictProxy(twice), info)
