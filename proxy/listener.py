"""The data-plane listener's connection guards, on aiohttp's server protocol.

aiohttp parses HTTP (llhttp) and runs one ``RequestHandler`` per connection. This
module adds what a sidecar facing unknown clients needs and aiohttp lacks: a cap on
open connections that fits the open-file limit (the oldest idle connection makes room
for a new one), a deadline from a request's first byte to its complete head
(slowloris), and fixed envelopes instead of aiohttp's own plain-text errors, which echo
request bytes. The idle keep-alive timeout is aiohttp's own (``keepalive_timeout``).

It reaches into aiohttp's ``RequestHandler`` (``_waiter``, ``_messages``), pinned below
aiohttp 4; the tests in tests/e2e/test_hardening.py hold it to its word.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from typing import Any

from aiohttp import web
from aiohttp.http import SERVER_SOFTWARE
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from proxy.errors import E, WardenError, render_aip193
from proxy.metrics import Metrics

log = logging.getLogger("agent_warden.listener")

# File descriptors kept free for the upstream pool, the admin listener, the store, logs.
FD_HEADROOM = 128
BANNER = "agent-warden"


def connection_cap(wanted: int, upstream_pool: int) -> int:
    """``wanted`` client connections, lowered so that they, the upstream pool and some
    headroom fit the soft open-file limit."""
    try:
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (OSError, ValueError):
        return wanted
    if soft == resource.RLIM_INFINITY:
        return wanted
    return max(16, min(wanted, soft - upstream_pool - FD_HEADROOM))


class _Guarded(RequestHandler):
    """One client connection, with the proxy's guards."""

    _guard: _Guard
    _head_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._guard.admitted(self)

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        waiting = not self._messages
        super().data_received(data)
        if self._messages:  # a whole head arrived: its deadline is met
            if self._head_deadline is not None:
                self._head_deadline.cancel()
                self._head_deadline = None
        elif waiting and self._head_deadline is None and data:
            loop = asyncio.get_running_loop()
            self._head_deadline = loop.call_later(self._guard.header_timeout, self._too_slow)

    def _too_slow(self) -> None:
        self._head_deadline = None
        if not self._messages:
            self._guard.tripped("header_timeout")
            log.info("client too slow to send a request head; connection closed")
            self.force_close()
            if self.transport is not None:
                self.transport.close()

    def _process_keepalive(self) -> None:
        closing = self._force_close
        super()._process_keepalive()
        if self._force_close and not closing:
            self._guard.tripped("keepalive_timeout")

    @property
    def idle(self) -> bool:
        """Waiting for a request, with nothing of one received."""
        return self._waiter is not None and not self._messages and self._head_deadline is None

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """aiohttp's own errors (malformed requests, a bug): a fixed envelope, no echo."""
        if request.writer.output_size > 0:
            raise ConnectionError("response already started")  # aiohttp closes the connection
        log.info("malformed request refused", extra={"status": status})
        spec = E.INVALID_REQUEST if 400 <= status < 500 else E.INTERNAL_ERROR
        rendered = render_aip193(WardenError(spec), domain=self._guard.domain)
        response = web.Response(
            status=rendered.status, body=rendered.body, headers=dict(rendered.headers)
        )
        response.headers["Server"] = BANNER
        response.force_close()
        return response


class _Guard:
    """What every connection of one listener shares: the limits and the live set."""

    def __init__(
        self,
        server: web.Server,
        metrics: Metrics,
        max_connections: int,
        header_timeout: float,
        domain: str,
    ) -> None:
        self._server = server
        self._metrics = metrics
        self.max_connections = max_connections
        self.header_timeout = header_timeout
        self.domain = domain

    def admitted(self, handler: _Guarded) -> None:
        connections = self._server.connections
        if len(connections) <= self.max_connections:
            return
        self.tripped("max_client_connections")
        victim = next((c for c in connections if isinstance(c, _Guarded) and c.idle), None)
        if victim is None:
            victim = handler  # every other connection is busy: the newcomer is refused
        log.info("connection cap reached; a connection was closed")
        victim.force_close()
        if victim.transport is not None:
            victim.transport.close()

    def tripped(self, limit: str) -> None:
        self._metrics.limits_tripped.inc(limit)


class GuardedRunner(web.AppRunner):
    """An ``AppRunner`` whose connections are guarded (see the module docstring)."""

    def __init__(
        self,
        app: web.Application,
        *,
        metrics: Metrics,
        max_connections: int,
        header_timeout: float,
        domain: str = "agent-warden.dev",
        **kwargs: Any,
    ) -> None:
        super().__init__(app, **kwargs)
        self._guard_args = (metrics, max_connections, header_timeout, domain)

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        guard = _Guard(server, *self._guard_args)
        # aiohttp makes one RequestHandler per connection in Server.__call__ (a special
        # method, looked up on the type): a subclass made here builds guarded ones.
        server.__class__ = type(
            "GuardedServer", (type(server),), {"__call__": _make_guarded, "_guard": guard}
        )
        return server


def _make_guarded(server: Any) -> RequestHandler:
    handler = _Guarded(server, loop=server._loop, **server._kwargs)
    handler._guard = server._guard
    return handler


async def no_banner(_: web.Request, response: web.StreamResponse) -> None:
    """No version banner: aiohttp would announce itself and its version."""
    if response.headers.get("Server", SERVER_SOFTWARE) == SERVER_SOFTWARE:
        response.headers["Server"] = BANNER
