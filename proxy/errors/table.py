"""The error taxonomy: one table holding every error the proxy writes (docs/spec/errors.md).

Pure data: no I/O, no aiohttp. ``render.py`` turns a row into bytes on the wire.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final


class Code(enum.Enum):
    """google.rpc.Code (google/rpc/code.proto)."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16

    @property
    def http(self) -> int:
        """The canonical HTTP status of this code (errors.md, "Canonical HTTP mapping")."""
        return _CANONICAL_HTTP[self]


_CANONICAL_HTTP: Final[Mapping[Code, int]] = MappingProxyType(
    {
        Code.OK: 200,
        Code.CANCELLED: 499,
        Code.UNKNOWN: 500,
        Code.INVALID_ARGUMENT: 400,
        Code.DEADLINE_EXCEEDED: 504,
        Code.NOT_FOUND: 404,
        Code.ALREADY_EXISTS: 409,
        Code.PERMISSION_DENIED: 403,
        Code.RESOURCE_EXHAUSTED: 429,
        Code.FAILED_PRECONDITION: 400,
        Code.ABORTED: 409,
        Code.OUT_OF_RANGE: 400,
        Code.UNIMPLEMENTED: 501,
        Code.INTERNAL: 500,
        Code.UNAVAILABLE: 503,
        Code.DATA_LOSS: 500,
        Code.UNAUTHENTICATED: 401,
    }
)


A2A_DOMAIN: Final = "a2a-protocol.org"
DEFAULT_DOMAIN: Final = "agent-warden.dev"
A2A_SPEC_1_0_0: Final = "1.0.0"
DEFAULT_A2A_SPEC: Final = "1.0.1"


class Domain(enum.Enum):
    """Whose name goes into ErrorInfo.domain."""

    PROXY = "proxy"  # rendered as the policy file's errors.domain (default DEFAULT_DOMAIN)
    A2A = A2A_DOMAIN


@dataclass(frozen=True, slots=True)
class ErrorSpec:
    """One row of the table: everything about an error except its occurrence."""

    reason: str
    message: str
    code: Code
    http_status: int
    jsonrpc_code: int
    domain: Domain
    code_v100: Code | None = None
    http_status_v100: int | None = None

    def http_for(self, a2a_spec: str) -> tuple[Code, int]:
        """(status name, HTTP status) under the A2A spec revision; only "1.0.0" differs."""
        if a2a_spec == A2A_SPEC_1_0_0:
            return (
                self.code if self.code_v100 is None else self.code_v100,
                self.http_status if self.http_status_v100 is None else self.http_status_v100,
            )
        return self.code, self.http_status


def _row(
    reason: str,
    message: str,
    code: Code,
    jsonrpc_code: int,
    domain: Domain = Domain.PROXY,
    *,
    v100: tuple[Code, int] | None = None,
) -> ErrorSpec:
    # Every row's HTTP status is its code's canonical one; only the 1.0.0 column strays.
    code_v100, http_v100 = (None, None) if v100 is None else v100
    return ErrorSpec(reason, message, code, code.http, jsonrpc_code, domain, code_v100, http_v100)


_JSONRPC_INTERNAL: Final = -32603


class E(enum.Enum):
    """Every error the proxy writes. ``E.X.value`` is the row."""

    # errors.md section 2: the proxy's own errors.
    SESSION_NOT_FOUND = _row("SESSION_NOT_FOUND", "session not found", Code.NOT_FOUND, -31060)
    SESSION_EXPIRED = _row("SESSION_EXPIRED", "session expired", Code.NOT_FOUND, -31061)
    SESSION_CLOSED = _row("SESSION_CLOSED", "session already closed", Code.NOT_FOUND, -31062)
    SESSION_BUDGET_EXCEEDED = _row(
        "SESSION_BUDGET_EXCEEDED", "session budget exceeded", Code.RESOURCE_EXHAUSTED, -31063
    )
    TOOL_NOT_AUTHORIZED = _row(
        "TOOL_NOT_AUTHORIZED", "tool not authorized in session", Code.PERMISSION_DENIED, -31064
    )
    SESSION_RATE_LIMITED = _row(
        "SESSION_RATE_LIMITED", "session rate limit exceeded", Code.RESOURCE_EXHAUSTED, -31065
    )
    TOO_MANY_SESSIONS = _row(
        "TOO_MANY_SESSIONS", "too many concurrent sessions", Code.RESOURCE_EXHAUSTED, -31066
    )
    AGENT_MISMATCH = _row("AGENT_MISMATCH", "agent mismatch", Code.PERMISSION_DENIED, -31067)
    UNAUTHENTICATED = _row("UNAUTHENTICATED", "unauthenticated", Code.UNAUTHENTICATED, -31068)
    METHOD_NOT_AUTHORIZED = _row(
        "METHOD_NOT_AUTHORIZED", "method not authorized in session", Code.PERMISSION_DENIED, -31069
    )
    POLICY_STORE_UNAVAILABLE = _row(
        "POLICY_STORE_UNAVAILABLE", "policy store unavailable", Code.UNAVAILABLE, -31070
    )
    ORIGIN_NOT_ALLOWED = _row(
        "ORIGIN_NOT_ALLOWED", "origin not allowed", Code.PERMISSION_DENIED, -31071
    )
    INSUFFICIENT_SCOPE = _row(
        "INSUFFICIENT_SCOPE", "insufficient scope", Code.PERMISSION_DENIED, -31072
    )
    OVERLOADED = _row("OVERLOADED", "proxy overloaded", Code.RESOURCE_EXHAUSTED, -31073)
    # MCP 2026-07-28's own HeaderMismatch code: Mcp-Method / Mcp-Name disagree with the body.
    HEADER_MISMATCH = _row("HEADER_MISMATCH", "header mismatch", Code.INVALID_ARGUMENT, -32020)

    # errors.md section 3: upstream failures rewritten by the proxy.
    UPSTREAM_UNAVAILABLE = _row(
        "UPSTREAM_UNAVAILABLE", "upstream unavailable", Code.UNAVAILABLE, _JSONRPC_INTERNAL
    )
    UPSTREAM_TIMEOUT = _row(
        "UPSTREAM_TIMEOUT", "upstream timeout", Code.DEADLINE_EXCEEDED, _JSONRPC_INTERNAL
    )
    # Default INTERNAL 500; an occurrence carries code_for_upstream_status() as its override.
    UPSTREAM_ERROR = _row("UPSTREAM_ERROR", "upstream error", Code.INTERNAL, _JSONRPC_INTERNAL)
    UPSTREAM_INVALID_RESPONSE = _row(
        "UPSTREAM_INVALID_RESPONSE", "invalid upstream response", Code.INTERNAL, _JSONRPC_INTERNAL
    )
    UPSTREAM_STREAM_INTERRUPTED = _row(
        "UPSTREAM_STREAM_INTERRUPTED",
        "upstream stream interrupted",
        Code.UNAVAILABLE,
        _JSONRPC_INTERNAL,
    )

    # errors.md section 4: the A2A errors (also the A2A side of section 3's invalid response).
    TASK_NOT_FOUND = _row("TASK_NOT_FOUND", "task not found", Code.NOT_FOUND, -32001, Domain.A2A)
    TASK_NOT_CANCELABLE = _row(
        "TASK_NOT_CANCELABLE",
        "task not cancelable",
        Code.FAILED_PRECONDITION,
        -32002,
        Domain.A2A,
        v100=(Code.ABORTED, 409),
    )
    PUSH_NOTIFICATION_NOT_SUPPORTED = _row(
        "PUSH_NOTIFICATION_NOT_SUPPORTED",
        "push notification not supported",
        Code.FAILED_PRECONDITION,
        -32003,
        Domain.A2A,
        v100=(Code.UNIMPLEMENTED, 400),
    )
    UNSUPPORTED_OPERATION = _row(
        "UNSUPPORTED_OPERATION",
        "unsupported operation",
        Code.FAILED_PRECONDITION,
        -32004,
        Domain.A2A,
        v100=(Code.UNIMPLEMENTED, 400),
    )
    CONTENT_TYPE_NOT_SUPPORTED = _row(
        "CONTENT_TYPE_NOT_SUPPORTED",
        "content type not supported",
        Code.INVALID_ARGUMENT,
        -32005,
        Domain.A2A,
        v100=(Code.INVALID_ARGUMENT, 415),
    )
    INVALID_AGENT_RESPONSE = _row(
        "INVALID_AGENT_RESPONSE",
        "invalid agent response",
        Code.INTERNAL,
        -32006,
        Domain.A2A,
        v100=(Code.INTERNAL, 502),
    )
    EXTENDED_AGENT_CARD_NOT_CONFIGURED = _row(
        "EXTENDED_AGENT_CARD_NOT_CONFIGURED",
        "extended agent card not configured",
        Code.FAILED_PRECONDITION,
        -32007,
        Domain.A2A,
    )
    EXTENSION_SUPPORT_REQUIRED = _row(
        "EXTENSION_SUPPORT_REQUIRED",
        "extension support required",
        Code.FAILED_PRECONDITION,
        -32008,
        Domain.A2A,
    )
    VERSION_NOT_SUPPORTED = _row(
        "VERSION_NOT_SUPPORTED",
        "version not supported",
        Code.FAILED_PRECONDITION,
        -32009,
        Domain.A2A,
        v100=(Code.UNIMPLEMENTED, 400),
    )

    # errors.md section 4, standard JSON-RPC errors on the REST binding.
    # decision: the proxy raises parse / invalid-request errors itself, so they carry its domain.
    PARSE_ERROR = _row("INVALID_REQUEST", "parse error", Code.INVALID_ARGUMENT, -32700)
    INVALID_REQUEST = _row("INVALID_REQUEST", "invalid request", Code.INVALID_ARGUMENT, -32600)
    INVALID_PARAMS = _row(
        "INVALID_PARAMS", "invalid params", Code.INVALID_ARGUMENT, -32602, Domain.A2A
    )
    METHOD_NOT_FOUND = _row(
        "METHOD_NOT_FOUND", "method not found", Code.NOT_FOUND, -32601, Domain.A2A
    )
    INTERNAL_ERROR = _row(
        "INTERNAL_ERROR", "internal error", Code.INTERNAL, _JSONRPC_INTERNAL, Domain.A2A
    )

    # decision: the admin API refuses a peer that is neither loopback nor holding the token
    # file's token (contract, Admin listener: 403 when no token file is configured).
    ADMIN_FORBIDDEN = _row("ADMIN_FORBIDDEN", "forbidden", Code.PERMISSION_DENIED, -31074)

    # decision: the request body limit gets its own reason, shaped like an invalid request.
    REQUEST_TOO_LARGE = _row(
        "REQUEST_TOO_LARGE", "request too large", Code.INVALID_ARGUMENT, -32600
    )


# Project decisions: rows that errors.md does not list.
DECISIONS: Final[frozenset[E]] = frozenset({E.REQUEST_TOO_LARGE, E.ADMIN_FORBIDDEN})

# tower-mcp's SessionNotFound; MCP clients re-initialize on HTTP 404 (errors.md section 2).
MCP_SESSION_GONE_CODE: Final = -32005
SESSION_GONE: Final[frozenset[E]] = frozenset(
    {E.SESSION_NOT_FOUND, E.SESSION_EXPIRED, E.SESSION_CLOSED}
)

# Denials whose HTTP status a specification requires even on JSON-RPC (errors.md section 1).
KEEPS_STATUS: Final[frozenset[E]] = frozenset(
    {E.UNAUTHENTICATED, E.ORIGIN_NOT_ALLOWED, E.INSUFFICIENT_SCOPE, E.HEADER_MISMATCH}
)

# The A2A errors by JSON-RPC code, to add a missing ErrorInfo to a passed-through error.
A2A_BY_JSONRPC_CODE: Final[Mapping[int, E]] = MappingProxyType(
    {e.value.jsonrpc_code: e for e in E if -32009 <= e.value.jsonrpc_code <= -32001}
)


# google/rpc/code.proto's HTTP mapping read backwards: one code per status.
_UPSTREAM_CANONICAL: Final[Mapping[int, Code]] = MappingProxyType(
    {
        400: Code.INVALID_ARGUMENT,
        401: Code.UNAUTHENTICATED,
        403: Code.PERMISSION_DENIED,
        404: Code.NOT_FOUND,
        409: Code.ABORTED,
        429: Code.RESOURCE_EXHAUSTED,
        499: Code.CANCELLED,
        500: Code.INTERNAL,
        501: Code.UNIMPLEMENTED,
        503: Code.UNAVAILABLE,
        504: Code.DEADLINE_EXCEEDED,
    }
)

# decision: 4xx statuses without a canonical code keep their status, with the nearest name.
_UPSTREAM_NEAREST_4XX: Final[Mapping[int, Code]] = MappingProxyType(
    {
        402: Code.FAILED_PRECONDITION,
        405: Code.UNIMPLEMENTED,
        406: Code.INVALID_ARGUMENT,
        407: Code.UNAUTHENTICATED,
        408: Code.DEADLINE_EXCEEDED,
        410: Code.NOT_FOUND,
        411: Code.INVALID_ARGUMENT,
        412: Code.FAILED_PRECONDITION,
        413: Code.INVALID_ARGUMENT,
        414: Code.INVALID_ARGUMENT,
        415: Code.INVALID_ARGUMENT,
        416: Code.OUT_OF_RANGE,
        417: Code.FAILED_PRECONDITION,
        421: Code.FAILED_PRECONDITION,
        422: Code.INVALID_ARGUMENT,
        423: Code.FAILED_PRECONDITION,
        424: Code.FAILED_PRECONDITION,
        425: Code.UNAVAILABLE,
        426: Code.FAILED_PRECONDITION,
        428: Code.FAILED_PRECONDITION,
        431: Code.INVALID_ARGUMENT,
        451: Code.PERMISSION_DENIED,
    }
)

_INTERNAL_500: Final = (Code.INTERNAL, 500)


def code_for_upstream_status(status: int) -> tuple[Code, int]:
    """The (google.rpc.Code, HTTP status) answering an upstream error status whose body is
    not a conformant envelope (errors.md section 3).

    - A status with a canonical code (google/rpc/code.proto) keeps its status:
      400 INVALID_ARGUMENT, 401 UNAUTHENTICATED, 403 PERMISSION_DENIED, 404 NOT_FOUND,
      409 ABORTED, 429 RESOURCE_EXHAUSTED, 499 CANCELLED, 500 INTERNAL, 501 UNIMPLEMENTED,
      503 UNAVAILABLE, 504 DEADLINE_EXCEEDED.
    - 502 and every other 5xx: (INTERNAL, 500).
    - decision: any other 4xx keeps its HTTP status (clients rely on e.g. MCP's 405 for
      GET) under the nearest code name: 405 UNIMPLEMENTED, 406/411/413/414/415/422/431
      INVALID_ARGUMENT, 407 UNAUTHENTICATED, 408 DEADLINE_EXCEEDED, 410 NOT_FOUND,
      416 OUT_OF_RANGE, 425 UNAVAILABLE, 451 PERMISSION_DENIED; the rest (402, 412, 417,
      421, 423, 424, 426, 428, unassigned) FAILED_PRECONDITION.
    - decision: a status outside 400-599 is no error status; the upstream misbehaved,
      so (INTERNAL, 500).
    """
    code = _UPSTREAM_CANONICAL.get(status)
    if code is not None:
        return code, status
    if 400 <= status < 500:
        return _UPSTREAM_NEAREST_4XX.get(status, Code.FAILED_PRECONDITION), status
    return _INTERNAL_500
