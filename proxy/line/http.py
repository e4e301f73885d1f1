"""The request line's HTTP values: one request in flight, the answers it may get, and the
header rules both directions share. No decisions here; the listener and the upstream pool
(proxy/dataplane/) do the reading and writing."""

from __future__ import annotations

import time
from collections.abc import Iterable
from email.utils import formatdate
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from aiohttp import hdrs
from multidict import CIMultiDict, CIMultiDictProxy, MultiDictProxy
from yarl import URL

from proxy.dataplane.server import ServerRequest, ServerResponse
from proxy.errors import Rendered
from proxy.gate import MINTED_HEADER
from proxy.identity import Credential
from proxy.metrics import RequestOutcome
from proxy.protocols.classify import Classified
from proxy.telemetry import Trace

if TYPE_CHECKING:
    from proxy.line.inflight import Slot

__all__ = [
    "HOP_BY_HOP",
    "REQUEST_DROP",
    "RESPONSE_DROP",
    "Answer",
    "Flight",
    "Stream",
    "accepted",
    "connection_tokens",
    "filter_headers",
    "http_date",
    "json_answer",
    "reason_phrase",
    "repeated",
    "to_answer",
]

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
# Warden-Session names a minted session: the proxy's business, never the upstream's.
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


def connection_tokens(headers: CIMultiDictProxy[str]) -> frozenset[str]:
    values = headers.getall(hdrs.CONNECTION, ())
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
            self.headers[hdrs.CONTENT_TYPE] = f"{content_type or 'text/plain'}; charset=utf-8"
        elif content_type is not None:
            self.headers[hdrs.CONTENT_TYPE] = content_type
        self.body = body
        self.close = False

    def set_status(self, status: int) -> None:
        self.status = status

    def force_close(self) -> None:
        """The connection closes after this answer."""
        self.close = True


class Stream:
    """A response whose body is relayed as it arrives (the head goes out at once)."""

    __slots__ = ("_out", "content_length", "headers", "reason", "status")

    def __init__(self, *, status: int, reason: str, headers: CIMultiDict[str]) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self.content_length: int | None = None
        self._out: ServerResponse | None = None

    async def prepare(self, request: Flight) -> None:
        out = self._out = request.response
        headers = self.headers
        if self.content_length is not None:
            headers[hdrs.CONTENT_LENGTH] = str(self.content_length)
        if hdrs.DATE not in headers:
            headers[hdrs.DATE] = http_date()
        out.start(self.status, self.reason or reason_phrase(self.status), headers.items())
        await out.write(b"")  # the head, now: a stream's first event may be far off

    async def write(self, data: bytes) -> None:
        assert self._out is not None
        await self._out.write(data)

    async def write_eof(self) -> None:
        assert self._out is not None
        await self._out.write_eof()


class Flight:
    """One request on its way through the proxy: what arrived, and what was learnt of it
    as it went (its caller, its classification, its outcome, its trace)."""

    __slots__ = (
        "_query",
        "body_exists",
        "caller",
        "content",
        "content_length",
        "headers",
        "host",
        "info",
        "method",
        "outcome",
        "path",
        "query_string",
        "remote",
        "response",
        "slot",
        "target",
        "trace",
    )

    scheme = "http"

    def __init__(self, request: ServerRequest, response: ServerResponse) -> None:
        self.content = request
        self.response = response
        self.method = request.method
        self.target = target = request.target  # path?query as sent
        self.headers = request.headers
        self.body_exists = request.body_exists
        self.content_length = request.content_length
        self.remote = request.peer[0] if request.peer is not None else None
        self.host = request.headers.get(hdrs.HOST, "")
        raw, _, query = target.partition("#")[0].partition("?")
        # The path as the upstream's router reads it: percent-decoded (an encoded slash
        # stays encoded), exactly as aiohttp's parser decodes it.
        self.path = URL.build(path=raw, encoded=True).path if "%" in raw else raw
        self.query_string = query
        self._query: MultiDictProxy[str] | None = None
        self.outcome = RequestOutcome.ALLOWED
        self.trace: Trace | None = None
        self.info: Classified | None = None
        self.slot: Slot | None = None
        self.caller: Credential | None = None

    @property
    def query(self) -> MultiDictProxy[str]:
        if self._query is None:
            self._query = URL.build(query_string=self.query_string, encoded=True).query
        return self._query

    @property
    def content_type(self) -> str:
        raw = self.headers.get(hdrs.CONTENT_TYPE)
        if raw is None:
            return "application/octet-stream"
        return raw.partition(";")[0].strip().lower()


_date: list[Any] = [0, ""]


def http_date() -> str:
    """The Date header value, made once a second."""
    now = int(time.time())
    if _date[0] != now:
        _date[0], _date[1] = now, formatdate(now, usegmt=True)
    return str(_date[1])


def reason_phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def accepted() -> Answer:
    """What an MCP 2024-11-05 message endpoint answers a POST whose answer is on the stream."""
    return Answer(status=202, text="Accepted")


def json_answer(body: bytes, status: int = 200) -> Answer:
    return Answer(status=status, body=body, content_type="application/json")


def to_answer(rendered: Rendered) -> Answer:
    return Answer(status=rendered.status, body=rendered.body, headers=rendered.headers)
