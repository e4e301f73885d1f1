"""The two envelopes (docs/spec/errors.md section 1): AIP-193 and JSON-RPC 2.0.

Pure: returns status, headers and bytes; the I/O layer writes them. Hot path: the fixed
part of every (row, domain, spec revision) is serialized once and cached.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from json.encoder import encode_basestring_ascii as _str_json
from typing import Final

from proxy.errors.table import (
    A2A_DOMAIN,
    DEFAULT_A2A_SPEC,
    KEEPS_STATUS,
    MCP_SESSION_GONE_CODE,
    SESSION_GONE,
    Code,
    Domain,
    E,
)

JsonRpcId = str | int | float | None

ERROR_INFO_TYPE: Final = "type.googleapis.com/google.rpc.ErrorInfo"
RETRY_INFO_TYPE: Final = "type.googleapis.com/google.rpc.RetryInfo"
# errors.md section 2: the only metadata that may appear; nothing from the policy.
METADATA_KEYS: Final = frozenset({"sessionId", "method", "tool"})
MAX_UPSTREAM_MESSAGE: Final = 200

_JSON: Final = "application/json"
_NANOS: Final = 1_000_000_000

# One encoder: json.dumps with any non-default argument builds a new one per call.
_dumps = json.JSONEncoder(separators=(",", ":")).encode


@dataclass(frozen=True, slots=True)
class WardenError:
    """One occurrence of an error: a table row plus what varies per request."""

    spec: E
    metadata: Mapping[str, str] = field(default_factory=dict)
    retry_after: float | None = None  # seconds: RetryInfo + HTTP Retry-After
    message: str | None = None  # UPSTREAM_ERROR only: the upstream's own message
    status_override: tuple[Code, int] | None = None  # UPSTREAM_ERROR only
    # A gone 2025-era MCP protocol session: HTTP 404 and -32005 on JSON-RPC (errors.md
    # section 2). Minted sessions and agent windows keep HTTP 200 and their own codes.
    mcp_session: bool = False
    # UNAUTHENTICATED / INSUFFICIENT_SCOPE: the WWW-Authenticate challenge (MCP authorization).
    challenge: str | None = None

    def __post_init__(self) -> None:
        if self.metadata and not METADATA_KEYS.issuperset(self.metadata):
            raise ValueError(f"metadata keys not allowed: {sorted(self.metadata)}")
        if self.retry_after is not None and not (
            math.isfinite(self.retry_after) and self.retry_after >= 0
        ):
            raise ValueError(f"retry_after must be finite and >= 0: {self.retry_after!r}")
        if (
            self.message is not None or self.status_override is not None
        ) and self.spec is not E.UPSTREAM_ERROR:
            raise ValueError(f"message/status override not allowed for {self.spec.name}")
        if self.message is not None:
            # One line, cut short: an upstream message must not smuggle a page into the body.
            cut = " ".join(self.message.split())[:MAX_UPSTREAM_MESSAGE]
            object.__setattr__(self, "message", cut or None)

    @property
    def wire_message(self) -> str:
        """The message on the wire: the row's, or UPSTREAM_ERROR's kept upstream message."""
        return self.spec.value.message if self.message is None else self.message

    def http_for(self, a2a_spec: str = DEFAULT_A2A_SPEC) -> tuple[Code, int]:
        """(status name, HTTP status) of the AIP-193 column, honouring the override."""
        if self.status_override is not None:
            return self.status_override
        return self.spec.value.http_for(a2a_spec)


@dataclass(frozen=True, slots=True)
class Rendered:
    """A complete HTTP answer."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes


@dataclass(frozen=True, slots=True)
class _Fixed:
    """The per-(row, domain, revision) parts, serialized once."""

    code: Code
    http: int
    message_json: str
    info_head: str  # the ErrorInfo object up to its metadata value


@functools.lru_cache(maxsize=1024)
def _fixed(spec: E, domain: str, a2a_spec: str) -> _Fixed:
    row = spec.value
    code, http = row.http_for(a2a_spec)
    resolved = A2A_DOMAIN if row.domain is Domain.A2A else domain
    head = (
        f'{{"@type":"{ERROR_INFO_TYPE}","reason":{_dumps(row.reason)},'
        f'"domain":{_dumps(resolved)},"metadata":'
    )
    return _Fixed(code, http, _dumps(row.message), head)


def retry_delay(seconds: float) -> str:
    """ProtoJSON duration: "12s", "0.500s", "1.000001s" (0, 3, 6 or 9 fraction digits)."""
    if not (math.isfinite(seconds) and seconds >= 0):
        raise ValueError(f"duration must be finite and >= 0: {seconds!r}")
    whole, nanos = divmod(round(seconds * _NANOS), _NANOS)
    if nanos == 0:
        return f"{whole}s"
    if nanos % 1_000_000 == 0:
        return f"{whole}.{nanos // 1_000_000:03d}s"
    if nanos % 1_000 == 0:
        return f"{whole}.{nanos // 1_000:06d}s"
    return f"{whole}.{nanos:09d}s"


def _retry_after_header(seconds: float) -> str:
    return str(math.ceil(seconds))


def _headers(content_type: str, err: WardenError) -> tuple[tuple[str, str], ...]:
    headers: tuple[tuple[str, str], ...] = (("Content-Type", content_type),)
    if err.retry_after is not None:
        headers += (("Retry-After", _retry_after_header(err.retry_after)),)
    if err.challenge is not None:
        headers += (("WWW-Authenticate", err.challenge),)
    return headers


def _message_json(err: WardenError, fixed: _Fixed) -> str:
    return fixed.message_json if err.message is None else _dumps(err.message)


def _details_json(err: WardenError, fixed: _Fixed) -> str:
    meta = _metadata_json(err.metadata) if err.metadata else "{}"
    if err.retry_after is None:
        return f"{fixed.info_head}{meta}}}"
    delay = retry_delay(math.ceil(err.retry_after))  # whole seconds: no rate can be read off
    return f'{fixed.info_head}{meta}}},{{"@type":"{RETRY_INFO_TYPE}","retryDelay":"{delay}"}}'


def _metadata_json(metadata: Mapping[str, str]) -> str:
    # Keys are checked against METADATA_KEYS (plain ASCII), so only values need escaping.
    return "{" + ",".join([f'"{key}":{_str_json(value)}' for key, value in metadata.items()]) + "}"


def _id_json(request_id: JsonRpcId) -> str:
    if isinstance(request_id, str):
        return _str_json(request_id)
    if type(request_id) is int:  # exactly int: bool goes through the encoder
        return str(request_id)
    if request_id is None or (isinstance(request_id, float) and not math.isfinite(request_id)):
        return "null"  # NaN/Infinity are not JSON; such an id cannot be echoed
    return _dumps(request_id)


def jsonrpc_code(err: WardenError) -> int:
    """The JSON-RPC code of ``err`` as rendered (2025-era MCP session gone: -32005)."""
    if err.mcp_session and err.spec in SESSION_GONE:
        return MCP_SESSION_GONE_CODE
    return err.spec.value.jsonrpc_code


def error_details(err: WardenError, *, domain: str) -> list[dict[str, object]]:
    """The typed detail objects: one ErrorInfo, then RetryInfo when there is a delay."""
    row = err.spec.value
    details: list[dict[str, object]] = [
        {
            "@type": ERROR_INFO_TYPE,
            "reason": row.reason,
            "domain": A2A_DOMAIN if row.domain is Domain.A2A else domain,
            "metadata": dict(err.metadata),
        }
    ]
    if err.retry_after is not None:
        details.append(
            {"@type": RETRY_INFO_TYPE, "retryDelay": retry_delay(math.ceil(err.retry_after))}
        )
    return details


def _aip193_json(err: WardenError, domain: str, a2a_spec: str) -> str:
    fixed = _fixed(err.spec, domain, a2a_spec)
    code, http = (fixed.code, fixed.http) if err.status_override is None else err.status_override
    return (
        f'{{"error":{{"code":{http},"status":"{code.name}",'
        f'"message":{_message_json(err, fixed)},"details":[{_details_json(err, fixed)}]}}}}'
    )


def _jsonrpc_json(err: WardenError, request_id: JsonRpcId, domain: str, a2a_spec: str) -> str:
    fixed = _fixed(err.spec, domain, a2a_spec)
    return (
        f'{{"jsonrpc":"2.0","id":{_id_json(request_id)},"error":{{'
        f'"code":{jsonrpc_code(err)},"message":{_message_json(err, fixed)},'
        f'"data":[{_details_json(err, fixed)}]}}}}'
    )


def render_aip193(
    err: WardenError,
    *,
    domain: str,
    a2a_spec: str = DEFAULT_A2A_SPEC,
    content_type: str = _JSON,
) -> Rendered:
    """The AIP-193 answer: HTTP status of the row, body {"error": {...}}."""
    _, http = err.http_for(a2a_spec)
    body = _aip193_json(err, domain, a2a_spec).encode()
    return Rendered(http, _headers(content_type, err), body)


def render_jsonrpc(
    err: WardenError,
    request_id: JsonRpcId,
    *,
    domain: str,
    a2a_spec: str = DEFAULT_A2A_SPEC,
    notification: bool = False,
) -> Rendered:
    """The JSON-RPC answer: HTTP 200, except a gone 2025-era MCP session (404, -32005), the
    statuses a specification requires (UNAUTHENTICATED 401, ORIGIN_NOT_ALLOWED 403,
    INSUFFICIENT_SCOPE 403, HEADER_MISMATCH 400) and a denied notification (the AIP-193
    column's status, id null)."""
    if err.spec in SESSION_GONE:
        # 404 is the 2025-era MCP re-initialize signal, and means "unknown method" on
        # 2026-07-28: every other gone session is HTTP 200 (errors.md section 2).
        status = 404 if err.mcp_session else 200
        request_id = None if notification else request_id
    elif notification:
        request_id = None
        _, status = err.http_for(a2a_spec)
    elif err.spec in KEEPS_STATUS:
        _, status = err.http_for(a2a_spec)
    else:
        status = 200
    body = _jsonrpc_json(err, request_id, domain, a2a_spec).encode()
    return Rendered(status, _headers(_JSON, err), body)


def jsonrpc_error_object(
    err: WardenError,
    request_id: JsonRpcId,
    *,
    domain: str,
    a2a_spec: str = DEFAULT_A2A_SPEC,
) -> dict[str, object]:
    """The JSON-RPC error response as a fresh dict, for batches (a2a_spec: for symmetry; a
    JSON-RPC body does not depend on it)."""
    if isinstance(request_id, float) and not math.isfinite(request_id):
        request_id = None
    return {
        "jsonrpc": "2.0",
        "id": request_id,
        "error": {
            "code": jsonrpc_code(err),
            "message": err.wire_message,
            "data": error_details(err, domain=domain),
        },
    }


def render_sse_jsonrpc(
    err: WardenError,
    request_id: JsonRpcId,
    *,
    domain: str,
    a2a_spec: str = DEFAULT_A2A_SPEC,
) -> bytes:
    """A final SSE event carrying a JSON-RPC error (JSON never holds a raw newline)."""
    payload = _jsonrpc_json(err, request_id, domain, a2a_spec)
    return f"event: message\ndata: {payload}\n\n".encode()


def render_sse_aip193(err: WardenError, *, domain: str, a2a_spec: str = DEFAULT_A2A_SPEC) -> bytes:
    """A final SSE event carrying an AIP-193 error body."""
    return f"event: error\ndata: {_aip193_json(err, domain, a2a_spec)}\n\n".encode()
