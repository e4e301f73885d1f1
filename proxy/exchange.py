"""What flows down the request line, as values: the ``Exchange`` (one request as judged),
the ``Answer`` the proxy gives when it answers itself, the header rules both directions
share, and the bounded labels a request is recorded under. Pure: no sockets, no stores."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from multidict import CIMultiDict, CIMultiDictProxy, MultiMapping

from proxy.errors import Rendered
from proxy.identity import Credential
from proxy.metrics import HTTP_METHODS, OTHER
from proxy.protocols import a2a, mcp
from proxy.protocols.classify import Classified

__all__ = [
    "HOP_BY_HOP",
    "MINTED_HEADER",
    "REQUEST_DROP",
    "RESPONSE_DROP",
    "Answer",
    "Exchange",
    "accepted",
    "connection_tokens",
    "filter_headers",
    "http_label",
    "json_answer",
    "method_label",
    "repeated",
    "to_answer",
]

MINTED_HEADER = "Warden-Session"  # names a minted session: the proxy's, never the upstream's

# RFC 9110 section 7.6.1, plus the legacy Proxy-Connection and Keep-Alive.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# Set by the proxy itself on the way up.
REQUEST_DROP = HOP_BY_HOP | {
    "host",
    "content-length",
    "expect",
    "accept-encoding",
    # Request bodies are inflated: what goes up is the inflated bytes the proxy judged.
    "content-encoding",
    MINTED_HEADER.lower(),
    # The proxy says who the client is; a client's own claims are not passed on.
    "forwarded",
    "x-real-ip",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-forwarded-prefix",
}
RESPONSE_DROP = HOP_BY_HOP | {"content-length"}


@dataclass(frozen=True, slots=True)
class Exchange:
    """One request as the decide step sees it: what it is, who sent it, which session it
    names. Made once the body is classified; never changed afterwards."""

    method: str
    target: str  # path?query as sent
    path: str  # percent-decoded, as the upstream's router reads it
    headers: CIMultiDictProxy[str]
    caller: Credential
    info: Classified
    query: MultiMapping[str] | None = None  # an A2A REST operation's query string
    metadata_url: str | None = None  # where a 401 challenge points the client


def connection_tokens(headers: CIMultiDictProxy[str]) -> frozenset[str]:
    values = headers.getall("Connection", ())
    if not values:
        return frozenset()
    return frozenset(t.strip().lower() for v in values for t in v.split(",") if t.strip())


def filter_headers(headers: CIMultiDictProxy[str], drop: frozenset[str]) -> CIMultiDict[str]:
    """A copy without hop-by-hop headers, including those named in ``Connection``."""
    named = connection_tokens(headers)
    if named:
        drop = drop | named
    return CIMultiDict([(k, v) for k, v in headers.items() if k.lower() not in drop])


def repeated(headers: CIMultiDictProxy[str], names: Iterable[str]) -> bool:
    """Whether any of ``names`` was sent more than once."""
    for name in names:  # noqa: SIM110  (a loop: no generator per request)
        if len(headers.getall(name, ())) > 1:
            return True
    return False


class Answer:
    """A whole response the proxy gives, its body known: an envelope, a rewritten body, or a
    small upstream body read at once."""

    __slots__ = ("body", "close", "headers", "reason", "status")

    def __init__(
        self,
        *,
        status: int = 200,
        body: bytes = b"",
        reason: str = "",
        headers: CIMultiDict[str] | Iterable[tuple[str, str]] | None = None,
        text: str | None = None,
        content_type: str | None = None,
    ) -> None:
        self.status = status
        self.reason = reason
        if isinstance(headers, CIMultiDict):
            self.headers = headers
        else:
            self.headers = CIMultiDict(headers or ())
        if text is not None:
            body = text.encode()
            self.headers["Content-Type"] = f"{content_type or 'text/plain'}; charset=utf-8"
        elif content_type is not None:
            self.headers["Content-Type"] = content_type
        self.body = body
        self.close = False

    def set_status(self, status: int) -> None:
        self.status = status

    def force_close(self) -> None:
        """The connection closes after this answer."""
        self.close = True


def accepted() -> Answer:
    """What an MCP 2024-11-05 message endpoint answers a POST whose answer is on the stream."""
    return Answer(status=202, text="Accepted")


def json_answer(body: bytes, status: int = 200) -> Answer:
    return Answer(status=status, body=body, content_type="application/json")


def to_answer(rendered: Rendered) -> Answer:
    return Answer(status=rendered.status, body=rendered.body, headers=rendered.headers)


# -- the labels a request is recorded under ----------------------------------------------------


def http_label(method: str) -> str:
    return method if method in HTTP_METHODS else OTHER


def method_label(info: Classified, http_method: str) -> str:
    """A bounded label: a known JSON-RPC method or A2A operation, else the HTTP method."""
    if info.rest is not None:
        return info.rest.op.name
    if info.body is not None:
        method = info.body.first_method
        if method is not None and (method in mcp.METHODS or a2a.op_for_method(method)):
            return method
        return OTHER
    return http_label(http_method)
