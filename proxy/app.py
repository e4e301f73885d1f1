"""Builds the aiohttp applications (proxy and admin): wiring only, no logic."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import ClientSession, ClientTimeout, TCPConnector, web

from proxy import __version__
from proxy.config import Settings
from proxy.errors import E, WardenError, render_aip193
from proxy.forward import ErrorStyle, Forwarder
from proxy.policy import PolicyFile

log = logging.getLogger("agent_warden")


@dataclass(slots=True)
class Runtime:
    """What the running process knows: settings, the current policy, its lifecycle."""

    settings: Settings
    policy: PolicyFile
    ready: bool = False
    draining: bool = False
    error_style: ErrorStyle = field(default_factory=ErrorStyle)

    def set_policy(self, policy: PolicyFile) -> None:
        self.policy = policy
        self.error_style = ErrorStyle(policy.errors.domain, policy.errors.a2a_spec)


RUNTIME = web.AppKey("runtime", Runtime)
FORWARDER = web.AppKey("forwarder", Forwarder)


def _error_response(runtime: Runtime, err: WardenError) -> web.Response:
    style = runtime.error_style
    rendered = render_aip193(err, domain=style.domain, a2a_spec=style.a2a_spec)
    return web.Response(status=rendered.status, body=rendered.body, headers=dict(rendered.headers))


async def _upstream_client(app: web.Application) -> AsyncIterator[None]:
    runtime = app[RUNTIME]
    settings = runtime.settings
    connector = TCPConnector(
        limit=settings.max_connections,
        keepalive_timeout=settings.upstream_keepalive,
        ttl_dns_cache=60,
    )
    timeout = ClientTimeout(
        total=None, sock_connect=settings.connect_timeout, sock_read=settings.stream_idle_timeout
    )
    client = ClientSession(
        connector=connector,
        timeout=timeout,
        auto_decompress=False,
        skip_auto_headers=("User-Agent", "Content-Type"),
        cookie_jar=None,
    )
    app[FORWARDER] = Forwarder(settings, client, lambda: runtime.error_style)
    try:
        yield
    finally:
        await client.close()


def build_proxy_app(runtime: Runtime) -> web.Application:
    app = web.Application(client_max_size=runtime.settings.max_body_size, handler_args=None)
    app[RUNTIME] = runtime
    app.cleanup_ctx.append(_upstream_client)

    async def handle(request: web.Request) -> web.StreamResponse:
        try:
            return await app[FORWARDER].handle(request)
        except web.HTTPException:
            raise
        except Exception:
            # A bug must still answer with an envelope and never show a traceback to a client.
            log.exception("unhandled error while proxying", extra={"path": request.path})
            return _error_response(runtime, WardenError(E.INTERNAL_ERROR))

    app.router.add_route("*", "/{tail:.*}", handle)
    return app


def build_admin_app(runtime: Runtime) -> web.Application:
    app = web.Application()
    app[RUNTIME] = runtime

    async def livez(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        if runtime.draining:
            return web.json_response({"status": "draining"}, status=503)
        if not runtime.ready:
            return web.json_response({"status": "starting"}, status=503)
        return web.json_response({"status": "ready"})

    async def metrics(_: web.Request) -> web.Response:
        text = f'agent_warden_build_info{{version="{__version__}"}} 1\n'
        return web.Response(text=text, content_type="text/plain", charset="utf-8")

    @web.middleware
    async def envelopes(
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPNotFound:
            return _error_response(runtime, WardenError(E.METHOD_NOT_FOUND))
        except web.HTTPMethodNotAllowed:
            return _error_response(runtime, WardenError(E.METHOD_NOT_FOUND))

    app.middlewares.append(envelopes)
    app.router.add_get("/livez", livez)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    return app
