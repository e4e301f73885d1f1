"""Rewrite: what the client gets instead of what the upstream sent, as pure functions.

Each takes what was read (status, headers, bytes, the parsed document) and the request's
classification, and returns the answer or the rewritten bytes; nothing here reads a
socket or a store, so every rule is tested without either (tests/unit/test_rewrite.py).
The request line (proxy/dataplane/line.py) reads, calls these, and writes.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Container, Iterable, Mapping
from typing import Any

from multidict import CIMultiDict, CIMultiDictProxy

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
from proxy.exchange import Answer, to_answer
from proxy.policy.model import ErrorsConfig
from proxy.protocols import a2a, jsonrpc, mcp
from proxy.protocols.classify import Binding, Classified
from proxy.protocols.mcp import SESSION_HEADER
from proxy.protocols.sse import build_event, event_fields, split_events

log = logging.getLogger("agent_warden.forward")

__all__ = [
    "ANY_ID",
    "KEPT_ON_REWRITE",
    "dumps",
    "encoded",
    "error_status",
    "filter_tools_doc",
    "filter_tools_events",
    "header_mismatch",
    "interrupted_events",
    "is_card_request",
    "json_or_none",
    "listing_contexts",
    "merged_batch",
    "own_listing",
    "render",
    "task_context",
    "tools_list_ids",
]

# Kept when an upstream error body is rewritten: they still mean something to the client.
KEPT_ON_REWRITE = ("Retry-After", "WWW-Authenticate", "Allow", SESSION_HEADER)
_UPSTREAM_MESSAGE_MAX = 200

ToolRule = Callable[[str], bool]


class _AnyId:
    """Every JSON-RPC id: a stream whose requests are not known here."""

    def __contains__(self, _: object) -> bool:
        return True


ANY_ID: Container[jsonrpc.JsonRpcId] = _AnyId()


# -- the proxy's own errors, in the request's envelope ---------------------------------------


def render(info: Classified, err: WardenError, style: ErrorsConfig) -> Rendered:
    """``err`` in the envelope the request's binding expects, echoing its ids."""
    domain, spec = style.domain, style.a2a_spec
    if info.binding is not Binding.JSONRPC:
        if info.protocol == "mcp":  # the MCP endpoint speaks JSON-RPC, even to GET and DELETE
            return render_jsonrpc(err, None, domain=domain, a2a_spec=spec, notification=True)
        return render_aip193(err, domain=domain, a2a_spec=spec)
    if info.invalid is not None:
        return render_jsonrpc(err, info.invalid.id, domain=domain, a2a_spec=spec)
    ids = info.request_ids
    if info.body is None:  # body unread (too large)
        return render_jsonrpc(err, None, domain=domain, a2a_spec=spec)
    if not ids:
        return render_jsonrpc(err, None, domain=domain, a2a_spec=spec, notification=True)
    single = render_jsonrpc(err, ids[0], domain=domain, a2a_spec=spec)
    if not info.body.batch:
        return single
    batch = [jsonrpc_error_object(err, i, domain=domain, a2a_spec=spec) for i in ids]
    body = json.dumps(batch, separators=(",", ":")).encode()
    return Rendered(single.status, single.headers, body)


def interrupted_events(
    info: Classified, pending: Iterable[jsonrpc.JsonRpcId] | None, style: ErrorsConfig
) -> bytes:
    """The error events that end a stream cut before its final event: one per request
    still owed an answer (JSON-RPC), or one AIP-193 event."""
    err = WardenError(E.UPSTREAM_STREAM_INTERRUPTED)
    if info.binding is Binding.JSONRPC:
        ids = list(pending) if pending else [None]
        return b"".join(
            render_sse_jsonrpc(err, i, domain=style.domain, a2a_spec=style.a2a_spec) for i in ids
        )
    return render_sse_aip193(err, domain=style.domain, a2a_spec=style.a2a_spec)


# -- upstream error statuses -----------------------------------------------------------------


def error_status(
    info: Classified,
    status: int,
    reason: str,
    headers: CIMultiDict[str],
    upstream_headers: CIMultiDictProxy[str],
    data: bytes,
    doc: Any,
    *,
    path: str,
    session_sent: bool,
    style: ErrorsConfig,
) -> Answer:
    """An upstream 4xx/5xx for the client: a conformant error body passes (completed where
    it lacks what errors.md requires); anything else becomes the proxy's envelope, the
    upstream's own text withheld. ``headers``: the response headers to send (hop-by-hop
    already removed); ``session_sent``: the request carried an MCP session id."""
    a2a_side = info.protocol == "a2a"
    if info.binding is Binding.JSONRPC and doc is not None and jsonrpc.is_error_response(doc):
        if a2a_side and (fixed := normalize_jsonrpc_error(doc)) is not None:
            data = dumps(fixed)
        return Answer(body=data, status=status, reason=reason, headers=headers)
    # The A2A reason a legacy REST answer means (errors.md section 5), if any.
    a2a_reason = legacy_rest_reason(status, info.rest, path) if a2a_side else None
    if info.binding is not Binding.JSONRPC and is_aip193(doc):
        fixed = complete_aip193(doc, a2a_reason or E.UPSTREAM_ERROR, domain=style.domain)
        if fixed is not None:
            data = dumps(fixed)
        return Answer(body=data, status=status, reason=reason, headers=headers)
    log.warning(
        "upstream error status with a non-conformant body rewritten",
        extra={"status": status, "content_type": headers.get("Content-Type")},
    )
    if (
        info.binding is Binding.JSONRPC
        and info.protocol == "mcp"
        and status == 404
        and session_sent
    ):
        # MCP: a 404 to a request carrying a session id means the session is gone.
        rendered = render(info, WardenError(E.SESSION_NOT_FOUND, mcp_session=True), style)
    else:
        if a2a_side and a2a_reason is None:
            a2a_reason = _rest_reason_of_jsonrpc_body(doc)
        if a2a_reason is not None:
            err = WardenError(a2a_reason)
        else:
            # The upstream's own text (stack traces, paths, secrets) is for the log only.
            log.warning(
                "upstream error text withheld from the client",
                extra={"status": status, "upstream_message": _upstream_message(doc)},
            )
            err = WardenError(E.UPSTREAM_ERROR, status_override=code_for_upstream_status(status))
        rendered = render(info, err, style)
        if info.binding is Binding.JSONRPC and (
            status == 401 or (info.protocol == "mcp" and 400 <= status < 500)
        ):
            # An auth challenge must reach the client as one (MCP authorization); an MCP
            # upstream's own 4xx keeps its status (clients and conformance suites read it).
            rendered = Rendered(status, rendered.headers, rendered.body)
    out = to_answer(rendered)
    for name in KEPT_ON_REWRITE:
        for value in upstream_headers.getall(name, ()):
            out.headers.add(name, value)
    return out


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


# -- what a response reveals, filtered for its caller -----------------------------------------


def tools_list_ids(info: Classified) -> set[jsonrpc.JsonRpcId]:
    if info.body is None:
        return set()
    return {m.id for m in info.body.messages if m.method == mcp.TOOLS_LIST and m.has_id}


def filter_tools_doc(doc: Any, ids: Container[jsonrpc.JsonRpcId], allows: ToolRule) -> Any:
    """A JSON-RPC response (or batch) with its tools/list results filtered; None: unchanged."""
    items = doc if isinstance(doc, list) else [doc]
    changed = False
    out: list[Any] = []
    for item in items:
        if isinstance(item, dict) and item.get("id") in ids and "result" in item:
            filtered = mcp.filter_tools(item["result"], allows)
            if filtered is not None:
                item, changed = {**item, "result": filtered}, True
        out.append(item)
    if not changed:
        return None
    return out if isinstance(doc, list) else out[0]


def filter_tools_events(ready: bytes, ids: Container[jsonrpc.JsonRpcId], allows: ToolRule) -> bytes:
    """Whole SSE events with any tools/list answer among them filtered."""
    if b"tools" not in ready:
        return ready
    parts: list[bytes] = []
    changed = False
    for block in split_events(ready):
        kind, data, event_id = event_fields(block)
        if data is not None and kind == "message":
            doc = json_or_none(data.encode())
            filtered = filter_tools_doc(doc, ids, allows) if doc is not None else None
            if filtered is not None:
                block, changed = build_event(kind, dumps(filtered).decode(), event_id), True
        parts.append(block)
    return b"".join(parts) if changed else ready


def task_context(task: Any) -> str | None:
    if not isinstance(task, dict):
        return None
    ctx = task.get("contextId", task.get("context_id"))
    return ctx if isinstance(ctx, str) else None


def listing_contexts(listing: Any) -> set[str] | None:
    """The contexts a ListTasks answer names; None when it is no listing."""
    if not isinstance(listing, dict) or not isinstance(listing.get("tasks"), list):
        return None
    return {c for t in listing["tasks"] if isinstance(c := task_context(t), str)}


def own_listing(listing: dict[str, Any], owned: set[str]) -> dict[str, Any] | None:
    """A ListTasks answer limited to the tasks of ``owned`` contexts; None: unchanged."""
    tasks: list[Any] = listing["tasks"]
    kept = [t for t in tasks if task_context(t) in owned]
    if len(kept) == len(tasks):
        return None
    mine = {**listing, "tasks": kept}
    for key in ("totalSize", "total_size"):
        if key in mine:
            mine[key] = len(kept)  # the whole count would tell of others' tasks
    return mine


def merged_batch(doc: Any, denied: list[dict[str, Any]]) -> bytes:
    """A batch's answer: the upstream's responses, then the errors of its denied elements."""
    answered = doc if isinstance(doc, list) else [doc] if isinstance(doc, dict) else []
    return json.dumps([*answered, *denied], separators=(",", ":")).encode()


# -- request facts the rewrite rules read ----------------------------------------------------


def header_mismatch(headers: CIMultiDictProxy[str], info: Classified) -> bool:
    """MCP 2026-07-28: ``Mcp-Method``/``Mcp-Name`` that disagree with the body (or are sent
    twice: the upstream may read either)."""
    method = headers.get(mcp.METHOD_HEADER)
    name = headers.get(mcp.NAME_HEADER)
    if method is None and name is None:
        return False
    if (
        len(headers.getall(mcp.METHOD_HEADER, ())) > 1
        or len(headers.getall(mcp.NAME_HEADER, ())) > 1
    ):
        return True
    assert info.body is not None
    return mcp.header_mismatch(method, name, [(m.method, m.params) for m in info.body.messages])


def is_card_request(method: str, path: str, info: Classified) -> bool:
    if method != "GET":
        return False
    return a2a.is_agent_card_path(path) or info.a2a_op is a2a.GET_EXTENDED_AGENT_CARD


def encoded(headers: Mapping[str, str]) -> bool:
    """A body in a content coding: not readable as it is."""
    encoding = headers.get("Content-Encoding", "identity").strip().lower()
    return encoding not in ("", "identity")


def dumps(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


def json_or_none(data: bytes) -> Any:
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        return None
