"""One request in flight through the data plane: the listener's request and response,
and what the request line learnt of it as it went. The values it carries are in
proxy/exchange.py."""

from __future__ import annotations

import time
from email.utils import formatdate
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from aiohttp import hdrs
from multidict import CIMultiDict, MultiDictProxy
from yarl import URL

from proxy.dataplane.server import ServerRequest, ServerResponse
from proxy.identity import Credential
from proxy.metrics import RequestOutcome
from proxy.protocols.classify import Classified
from proxy.telemetry import Trace

if TYPE_CHECKING:
    from proxy.dataplane.inflight import Slot

__all__ = ["Flight", "Stream", "http_date", "reason_phrase"]


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
        # No Host (HTTP/1.0): the address the request arrived on, as aiohttp answered.
        self.host = request.headers.get(hdrs.HOST) or request.local
        raw, _, query = target.partition("#")[0].partition("?")
        # The path as the upstream's router reads it: percent-decoded (%2F included), exactly
        # as aiohttp's parser decodes it; the target goes up as it came.
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
