"""What a request is: protocol, binding and the parsed JSON-RPC body. Pure, no I/O."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from proxy.protocols import a2a, jsonrpc, mcp

Protocol = Literal["mcp", "a2a", "unknown"]


class Binding(enum.Enum):
    JSONRPC = "jsonrpc"  # errors are JSON-RPC error objects
    REST = "rest"  # A2A HTTP+JSON: errors are AIP-193 bodies
    OPAQUE = "opaque"  # anything else (MCP GET streams, DELETE, static files): AIP-193


_JSON_TYPES = ("application/json", "application/a2a+json", "application/json-rpc")


def is_json_type(content_type: str) -> bool:
    base = content_type.partition(";")[0].strip().lower()
    return base in _JSON_TYPES or base.endswith("+json")


def reads_body(method: str) -> bool:
    """POST bodies are read whole (bounded) to be classified; other bodies stream."""
    return method == "POST"


def looks_like_json(body: bytes) -> bool:
    return body.lstrip(b" \t\r\n")[:1] in (b"{", b"[")


@dataclass(frozen=True, slots=True)
class Classified:
    protocol: Protocol
    binding: Binding
    body: jsonrpc.Body | None = None
    invalid: jsonrpc.Invalid | None = None
    rest: a2a.RestMatch | None = None
    rest_doc: Any = None  # the parsed JSON body of an A2A REST request

    @property
    def request_ids(self) -> tuple[jsonrpc.JsonRpcId, ...]:
        return self.body.request_ids if self.body is not None else ()

    @property
    def a2a_op(self) -> a2a.A2aOp | None:
        """The A2A operation: of the REST route, or of the (first) JSON-RPC method."""
        if self.protocol != "a2a":
            return None
        if self.rest is not None:
            return self.rest.op
        method = self.body.first_method if self.body is not None else None
        return a2a.op_for_method(method) if method is not None else None


def _protocol_of_method(method: str | None, params: Any) -> Protocol:
    if method is None:
        return "unknown"
    is_mcp = mcp.is_mcp_method(method)
    is_a2a = a2a.op_for_method(method) is not None
    if is_mcp and is_a2a:  # tasks/get and tasks/cancel: MCP 2025-11-25 and A2A 0.3 alike
        # MCP names the task `taskId`, A2A 0.3 `id`.
        if isinstance(params, dict):
            if "taskId" in params:
                return "mcp"
            if "id" in params:
                return "a2a"
        return "unknown"
    if is_mcp:
        return "mcp"
    return "a2a" if is_a2a else "unknown"


def _protocol_of_headers(headers: Mapping[str, str]) -> Protocol:
    if mcp.SESSION_HEADER in headers or mcp.PROTOCOL_VERSION_HEADER in headers:
        return "mcp"
    if "A2A-Version" in headers:
        return "a2a"
    return "unknown"


def classify(
    method: str,
    path: str,
    headers: Mapping[str, str],
    body: bytes | None,
    forced: Literal["auto", "mcp", "a2a"] = "auto",
    hint: Protocol = "unknown",
) -> Classified:
    """Classify one request; ``headers`` must be case-insensitive (a CIMultiDict).

    ``hint`` is what earlier requests revealed about the upstream; it settles
    method names that both protocols use.
    """
    if forced != "mcp":
        rest = a2a.classify_rest(method, path)
        if rest is not None:
            if not body or not (
                is_json_type(headers.get("Content-Type", "")) or looks_like_json(body)
            ):  # nothing to read; a wrong content type is the agent's to refuse
                return Classified("a2a", Binding.REST, rest=rest)
            try:
                doc = jsonrpc.loads_strict(body)
            except jsonrpc.DuplicateKeyError:
                invalid = jsonrpc.Invalid(False, None, "duplicate key in JSON object")
                return Classified("a2a", Binding.REST, invalid=invalid, rest=rest)
            except (ValueError, RecursionError):
                invalid = jsonrpc.Invalid(True, None, "body is not valid JSON")
                return Classified("a2a", Binding.REST, invalid=invalid, rest=rest)
            return Classified("a2a", Binding.REST, rest=rest, rest_doc=doc)
    if body is not None and (
        is_json_type(headers.get("Content-Type", "")) or looks_like_json(body)
    ):
        parsed = jsonrpc.parse(body)
        if isinstance(parsed, jsonrpc.Invalid):
            protocol: Protocol = forced if forced != "auto" else _protocol_of_headers(headers)
            return Classified(protocol, Binding.JSONRPC, invalid=parsed)
        if forced != "auto":
            protocol = forced
        else:
            params = next((m.params for m in parsed.messages if m.method is not None), None)
            protocol = _protocol_of_method(parsed.first_method, params)
            if protocol == "unknown":
                protocol = _protocol_of_headers(headers)
            if protocol == "unknown":
                protocol = hint
        return Classified(protocol, Binding.JSONRPC, body=parsed)
    if forced != "auto":
        return Classified(forced, Binding.OPAQUE)
    protocol = _protocol_of_headers(headers)
    if protocol == "unknown" and a2a.is_agent_card_path(path):
        protocol = "a2a"
    return Classified(protocol, Binding.OPAQUE)
