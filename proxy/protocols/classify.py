"""What a request is: protocol, binding and the parsed JSON-RPC body. Pure, no I/O.

Every POST body is read by `jsonrpc.read_body`: judged as JSON whenever it parses,
whatever its Content-Type, refused when it might be JSON but cannot be read as the
upstream would, and opaque only when it is clearly not JSON (issue 11, finding 1).

The protocol of a JSON-RPC body follows from this request alone (finding 4): `--protocol`
when forced; else any MCP method in the body (every element of a batch counts) makes it
MCP and any A2A method A2A. A body naming both is refused (invalid request), and so is
`tasks/get` or `tasks/cancel` (MCP 2025-11-25 and A2A 0.3 alike) whose params name the
task both ways (`taskId` and `id`). Only a body without a method of either protocol falls
back to the request's headers. Nothing earlier requests revealed plays a part.

An A2A body is a single message: the A2A SDK refuses batches, and the proxy judges an
A2A request by its one context and task. Its fields are checked by `a2a.check_request`
(finding 2): a field in two spellings is refused like a duplicate key.
"""

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


is_json_type = jsonrpc.is_json_type


def reads_body(method: str) -> bool:
    """POST bodies are read whole (bounded) to be classified; other bodies stream."""
    return method == "POST"


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
        """The A2A operation: of the REST route, or of the JSON-RPC method (A2A bodies
        are single messages)."""
        if self.protocol != "a2a":
            return None
        if self.rest is not None:
            return self.rest.op
        method = self.body.first_method if self.body is not None else None
        return a2a.op_for_method(method) if method is not None else None


def _protocol_of_method(method: str, params: Any) -> Protocol | Literal["conflict"]:
    is_mcp = mcp.is_mcp_method(method)
    is_a2a = a2a.op_for_method(method) is not None
    if is_mcp and is_a2a:  # tasks/get and tasks/cancel: MCP 2025-11-25 and A2A 0.3 alike
        # MCP names the task `taskId`, A2A 0.3 `id`; naming both reads differently upstream.
        if isinstance(params, dict):
            if "taskId" in params:
                return "conflict" if "id" in params else "mcp"
            if "id" in params:
                return "a2a"
        return "unknown"
    if is_mcp:
        return "mcp"
    return "a2a" if is_a2a else "unknown"


def _protocol_of_messages(messages: tuple[jsonrpc.Message, ...]) -> Protocol | None:
    """The protocol every method of the body names; None when they disagree."""
    found: set[Protocol] = set()
    for message in messages:
        if message.method is None:
            continue
        protocol = _protocol_of_method(message.method, message.params)
        if protocol == "conflict":
            return None
        if protocol != "unknown":
            found.add(protocol)
    if len(found) > 1:
        return None
    return found.pop() if found else "unknown"


def _protocol_of_headers(headers: Mapping[str, str]) -> Protocol:
    if mcp.SESSION_HEADER in headers or mcp.PROTOCOL_VERSION_HEADER in headers:
        return "mcp"
    if "A2A-Version" in headers:
        return "a2a"
    return "unknown"


def _values(headers: Mapping[str, str], name: str) -> list[str]:
    """Every value of a header: an upstream may read any of them."""
    getall = getattr(headers, "getall", None)
    if getall is not None:
        return [str(v) for v in getall(name, ())]
    value = headers.get(name)
    return [] if value is None else [value]


def _read(headers: Mapping[str, str], body: bytes) -> jsonrpc.Json | jsonrpc.Invalid | None:
    # The body is what goes up: the forwarder inflated a gzip/deflate coding (and refused
    # any other) and drops Content-Encoding, so the coding is not read here.
    return jsonrpc.read_body(body, _values(headers, "Content-Type"))


def _a2a_problem(body: jsonrpc.Body) -> jsonrpc.Invalid | None:
    """Why an A2A JSON-RPC body cannot be judged as the upstream reads it, if it cannot."""
    if body.batch:
        return jsonrpc.Invalid(False, None, "A2A does not take batches")
    message = body.messages[0]
    op = a2a.op_for_method(message.method) if message.method is not None else None
    if op is None:
        return None
    try:
        a2a.check_request(op, message.params, message.method)
    except a2a.AmbiguousFieldError as exc:
        return jsonrpc.Invalid(False, message.id, str(exc))
    return None


def _classify_rest(
    rest: a2a.RestMatch, headers: Mapping[str, str], body: bytes | None
) -> Classified:
    if not body:
        return Classified("a2a", Binding.REST, rest=rest)
    read = _read(headers, body)
    if read is None:  # not JSON; a wrong content type is the agent's to refuse
        return Classified("a2a", Binding.REST, rest=rest)
    if isinstance(read, jsonrpc.Invalid):
        return Classified("a2a", Binding.REST, invalid=read, rest=rest)
    if rest.task_id is None:  # otherwise the path names the task and the body is not read
        try:
            a2a.check_request(rest.op, read.value, legacy_rest=rest.legacy)
        except a2a.AmbiguousFieldError as exc:
            invalid = jsonrpc.Invalid(False, None, str(exc))
            return Classified("a2a", Binding.REST, invalid=invalid, rest=rest)
    return Classified("a2a", Binding.REST, rest=rest, rest_doc=read.value)


def classify(
    method: str,
    path: str,
    headers: Mapping[str, str],
    body: bytes | None,
    forced: Literal["auto", "mcp", "a2a"] = "auto",
    hint: Protocol = "unknown",
) -> Classified:
    """Classify one request; ``headers`` must be case-insensitive (a CIMultiDict).

    ``hint`` is accepted for compatibility and ignored: what other requests revealed
    never decides how this one is judged (issue 11, finding 4).
    """
    del hint
    if forced != "mcp":
        rest = a2a.classify_rest(method, path)
        if rest is not None:
            return _classify_rest(rest, headers, body)
    if body is not None:
        read = _read(headers, body)
        if read is None and not body and any(map(is_json_type, _values(headers, "Content-Type"))):
            read = jsonrpc.Invalid(True, None, "body is not valid JSON")  # empty JSON body
        if read is not None:
            return _classify_jsonrpc(read, headers, forced)
    if forced != "auto":
        return Classified(forced, Binding.OPAQUE)
    protocol = _protocol_of_headers(headers)
    if protocol == "unknown" and a2a.is_agent_card_path(path):
        protocol = "a2a"
    return Classified(protocol, Binding.OPAQUE)


def _classify_jsonrpc(
    read: jsonrpc.Json | jsonrpc.Invalid,
    headers: Mapping[str, str],
    forced: Literal["auto", "mcp", "a2a"],
) -> Classified:
    fallback: Protocol = forced if forced != "auto" else _protocol_of_headers(headers)
    parsed = jsonrpc.parse_doc(read.value) if isinstance(read, jsonrpc.Json) else read
    if isinstance(parsed, jsonrpc.Invalid):
        return Classified(fallback, Binding.JSONRPC, invalid=parsed)
    protocol: Protocol | None = (
        forced if forced != "auto" else _protocol_of_messages(parsed.messages)
    )
    if protocol is None:
        invalid = jsonrpc.Invalid(False, None, "a body MCP and A2A would read differently")
        return Classified(fallback, Binding.JSONRPC, invalid=invalid)
    if protocol == "unknown":
        protocol = fallback
    if protocol == "a2a":
        problem = _a2a_problem(parsed)
        if problem is not None:
            return Classified("a2a", Binding.JSONRPC, invalid=problem)
    return Classified(protocol, Binding.JSONRPC, body=parsed)
