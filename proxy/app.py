"""Builds the aiohttp applications (proxy and admin) and the process's services: wiring only."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from aiohttp import ClientSession, ClientTimeout, DummyCookieJar, web

from proxy.admin_token import AdminLock
from proxy.config import ConfigError, Settings
from proxy.dataplane import UpstreamPool
from proxy.dataplane.line import RequestLine
from proxy.dataplane.server import HttpServer
from proxy.errors import E, WardenError, render_aip193
from proxy.gate import Gate
from proxy.identity import Verifier, build_verifier
from proxy.listener import BANNER, connection_cap, no_banner
from proxy.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from proxy.metrics import CloseCause, Metrics, ReloadResult
from proxy.policy import PolicyError, PolicyFile
from proxy.policy.grant import GrantError, parse_grant
from proxy.policy.model import Identity
from proxy.policy.watch import PolicyWatcher
from proxy.protocols import jsonrpc
from proxy.record import DecisionLog
from proxy.sessions.base import SessionStore, StoreUnavailable
from proxy.sessions.memory import MemoryStore
from proxy.telemetry import Telemetry

log = logging.getLogger("agent_warden")

SWEEP_INTERVAL = 1.0


@dataclass(slots=True)
class Runtime:
    """What the running process knows: settings, the current policy, its services."""

    settings: Settings
    policy: PolicyFile
    store: SessionStore = field(default_factory=MemoryStore)
    metrics: Metrics = field(default_factory=Metrics)
    telemetry: Telemetry = field(default_factory=Telemetry)
    ready: bool = False
    draining: bool = False
    admin_lock: AdminLock = field(default_factory=lambda: AdminLock(None))
    identity: IdentityService = field(default_factory=lambda: IdentityService())

    def set_policy(self, policy: PolicyFile, sha256: str = "") -> None:
        self.policy = policy
        self.metrics.set_policy(policy.source or "(built-in)", sha256)
        self.identity.follow(policy.identity)

    def gate(self) -> Gate:
        return Gate(
            lambda: self.policy,
            self.store,
            self.metrics,
            lambda: self.policy.errors,
            verifier=lambda: self.identity.verifier,
        )


class IdentityService:
    """The verifier of the policy's identity source (JWT, API keys), rebuilt when a reload
    changes ``identity``; its own HTTP client talks to the identity provider."""

    def __init__(self) -> None:
        self.verifier: Verifier | None = None
        self._identity: Identity | None = None
        self._client: ClientSession | None = None
        self._switching: set[asyncio.Task[None]] = set()

    async def open(self, identity: Identity) -> None:
        self._client = ClientSession(timeout=ClientTimeout(total=10), cookie_jar=DummyCookieJar())
        self._identity = identity
        self.verifier = build_verifier(identity, self._client)
        if self.verifier is not None:
            await self.verifier.start()  # never raises: without keys, tokens wait or are refused

    def follow(self, identity: Identity) -> None:
        """The verifier of ``identity`` takes over at once (the newest reload wins by
        construction); it fetches its keys in the background, and a verification that
        needs them before they arrive waits for that one fetch or is refused."""
        if self._client is None or identity == self._identity:
            return
        self._switch(identity)

    def _switch(self, identity: Identity) -> None:
        assert self._client is not None
        self._identity = identity
        old, self.verifier = self.verifier, build_verifier(identity, self._client)
        for work in (
            self.verifier.start() if self.verifier else None,
            old.aclose() if old else None,
        ):
            if work is not None:
                task = asyncio.get_running_loop().create_task(work)
                self._switching.add(task)
                task.add_done_callback(self._switching.discard)

    async def close(self) -> None:
        for task in list(self._switching):
            task.cancel()
        if self.verifier is not None:
            await self.verifier.aclose()
            self.verifier = None
        if self._client is not None:
            await self._client.close()
            self._client = None


RUNTIME = web.AppKey("runtime", Runtime)


def _error_response(runtime: Runtime, err: WardenError) -> web.Response:
    style = runtime.policy.errors
    rendered = render_aip193(err, domain=style.domain, a2a_spec=style.a2a_spec)
    return web.Response(status=rendered.status, body=rendered.body, headers=dict(rendered.headers))


class ProxyListener:
    """The data plane: the listener (llhttp on ``asyncio.Protocol``), the upstream pool and
    the forwarder between them; the identity service's lifetime is the listener's."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        settings = runtime.settings
        self._pool = UpstreamPool(
            str(settings.upstream),
            max_connections=settings.max_connections,
            connect_timeout=settings.connect_timeout,
            keepalive=settings.upstream_keepalive,
            read_timeout=settings.stream_idle_timeout,
        )
        self._decisions = (
            DecisionLog(
                settings.decision_log,
                settings.decision_log_max_bytes,
                lambda result, lines: runtime.metrics.decision_log.inc(result, amount=lines),
            )
            if settings.decision_log
            else None
        )
        self.forwarder = RequestLine(
            settings,
            self._pool,
            lambda: runtime.policy.errors,
            runtime.gate(),
            runtime.metrics,
            runtime.telemetry,
            self._decisions,
        )
        self._server = HttpServer(
            self.forwarder.handle,
            max_connections=connection_cap(
                settings.max_client_connections, settings.max_connections
            ),
            header_timeout=settings.header_timeout,
            keepalive_timeout=settings.keepalive_timeout,
            max_body_size=settings.max_body_size,
            on_error=self._refusal,
            on_limit=runtime.metrics.limits_tripped.inc,
        )
        self.port = 0

    def _refusal(self, status: int) -> tuple[int, list[tuple[str, str]], bytes]:
        """What the listener answers a request it cannot parse or serve: an envelope that
        echoes nothing of the request."""
        style = self._runtime.policy.errors
        spec = E.INVALID_REQUEST if 400 <= status < 500 else E.INTERNAL_ERROR
        rendered = render_aip193(WardenError(spec), domain=style.domain, a2a_spec=style.a2a_spec)
        code = status if spec is E.INVALID_REQUEST else rendered.status
        return code, [*rendered.headers, ("Server", BANNER)], rendered.body

    async def start(self, host: str, port: int, *, reuse_port: bool = False) -> int:
        """Open the identity service, then listen; returns the port. ``reuse_port``: the
        port is shared with the other workers (SO_REUSEPORT)."""
        try:
            if self._decisions is not None:
                try:
                    self._decisions.open()
                except OSError as exc:
                    raise ConfigError(f"--decision-log: {exc.strerror or exc}") from None
            await self._runtime.identity.open(self._runtime.policy.identity)
            self.port = await self._server.start(host, port, backlog=1024, reuse_port=reuse_port)
        except BaseException:
            await self._shut()  # whatever opened closes again
            raise
        return self.port

    async def drain(self, grace: float) -> None:
        """Stop accepting; let requests and streams in flight end within ``grace``."""
        await self._server.drain(grace)
        await self._shut()

    async def close(self) -> None:
        await self._server.close()
        await self._shut()

    async def _shut(self) -> None:
        if self._decisions is not None:
            self._decisions.close()
        await self._runtime.identity.close()
        await self._pool.close()


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Workers(Protocol):
    """The data-plane processes a supervisor runs (``--workers N``, proxy/workers.py), as
    its admin listener sees them."""

    def unready(self) -> str | None:
        """Why not every worker serves now ("worker 1 restarting"), or None."""
        ...

    async def exposition(self) -> bytes:
        """The Prometheus text of this process and every worker, merged."""
        ...


def build_admin_app(runtime: Runtime, *, workers: Workers | None = None) -> web.Application:
    """The admin listener. With ``workers`` (a supervisor), ``/readyz`` also waits for
    every worker and ``/metrics`` reports them all, merged."""
    app = web.Application()
    app[RUNTIME] = runtime
    live = [0.0]
    runtime.metrics.set_live_sessions(lambda: live[0])

    async def livez(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        if runtime.draining:
            return web.json_response({"status": "draining"}, status=503)
        if not runtime.ready:
            return web.json_response({"status": "starting"}, status=503)
        if workers is not None and (problem := workers.unready()) is not None:
            return web.json_response({"status": problem}, status=503)
        # Failing open, a pod without its store still serves: it stays in the Service.
        if runtime.policy.store_failure == "closed" and not await _healthy(runtime.store):
            return web.json_response({"status": "store unavailable"}, status=503)
        return web.json_response({"status": "ready"})

    async def metrics(_: web.Request) -> web.Response:
        try:
            live[0] = float(await runtime.store.live_count(time.time()))
        except StoreUnavailable:
            live[0] = float("nan")  # unknown while the store is away; the scrape still works
        body = runtime.metrics.render() if workers is None else await workers.exposition()
        return web.Response(body=body, headers={"Content-Type": METRICS_CONTENT_TYPE})

    async def sessions(_: web.Request) -> web.Response:
        found = await runtime.store.sessions(time.time())
        listed = [
            {
                "id": s.id,
                "agent": s.agent,
                "kind": s.kind.value,
                "protocol": s.protocol,
                "created": _iso(s.created),
                "last_used": _iso(s.last_used),
                "calls_used": s.calls_used,
            }
            for s in sorted(found, key=lambda s: s.created)
        ]
        return web.json_response({"sessions": listed, "count": len(listed)})

    async def mint_session(request: web.Request) -> web.Response:
        try:
            doc = jsonrpc.loads_strict(await request.read())
            grant = parse_grant(doc)
        except (ValueError, RecursionError, GrantError) as exc:
            problem = str(exc) if isinstance(exc, GrantError) else "body: expected a JSON object"
            log.info("mint refused", extra={"problem": problem})
            rendered = render_aip193(
                WardenError(E.INVALID_REQUEST),
                domain=runtime.policy.errors.domain,
                a2a_spec=runtime.policy.errors.a2a_spec,
            )
            body = json.loads(rendered.body)
            body["error"]["message"] = f"invalid request: {problem}"
            return web.json_response(body, status=rendered.status)
        minted = await runtime.gate().mint(grant)
        if not isinstance(minted, tuple):
            return _error_response(runtime, WardenError(minted.reason))
        sid, expires = minted
        log.info("session minted", extra={"session": sid, "agent": grant.agent})
        return web.json_response(
            {"id": sid, "agent": grant.agent, "kind": "minted", "expires_at": _iso(expires)},
            status=201,
        )

    async def close_session(request: web.Request) -> web.Response:
        sid = request.match_info["id"]
        if await runtime.store.close(sid, time.time()):
            runtime.metrics.sessions_closed.inc(CloseCause.ADMIN)
            log.info("session closed by operator", extra={"session": sid})
            return web.Response(status=204)
        known = await runtime.store.get(sid)
        reason = E.SESSION_CLOSED if known is not None and known.closed else E.SESSION_NOT_FOUND
        return _error_response(runtime, WardenError(reason, metadata={"sessionId": sid}))

    lock = runtime.admin_lock

    @web.middleware
    async def locked(
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        """/sessions holds session ids and agents: the token, or loopback without one."""
        if not request.path.startswith("/sessions"):
            return await handler(request)
        allowed = lock.allows(request.headers.get("Authorization"), request.remote)
        if allowed:
            return await handler(request)
        log.warning(
            "admin request refused",
            extra={"path": request.path, "peer": request.remote, "token_file": bool(lock.path)},
        )
        if allowed is None:
            return _error_response(runtime, WardenError(E.ADMIN_FORBIDDEN))
        return _error_response(runtime, WardenError(E.UNAUTHENTICATED, challenge="Bearer"))

    @web.middleware
    async def envelopes(
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        try:
            return await handler(request)
        except (web.HTTPNotFound, web.HTTPMethodNotAllowed):
            return _error_response(runtime, WardenError(E.METHOD_NOT_FOUND))
        except StoreUnavailable as exc:
            log.error("session store unavailable", extra={"error": str(exc)[:200]})
            return _error_response(runtime, WardenError(E.POLICY_STORE_UNAVAILABLE))

    app.middlewares.append(envelopes)
    app.middlewares.append(locked)
    app.on_response_prepare.append(no_banner)
    app.router.add_get("/livez", livez)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/sessions", sessions)
    app.router.add_post("/sessions", mint_session)
    app.router.add_delete("/sessions/{id}", close_session)
    return app


async def _healthy(store: SessionStore) -> bool:
    try:
        return await store.healthy()
    except StoreUnavailable:
        return False


async def _sweep(runtime: Runtime) -> None:
    while True:
        await asyncio.sleep(SWEEP_INTERVAL)
        try:
            ended = await runtime.store.sweep(time.time())
        except Exception:  # a store fault must not end the sweeper
            log.exception("session sweep failed")
            continue
        if ended:
            runtime.metrics.sessions_closed.inc(CloseCause.EXPIRED, amount=ended)


@contextlib.asynccontextmanager
async def services(runtime: Runtime) -> AsyncIterator[None]:
    """The process's background work: session sweeping and policy hot reload."""
    watcher: PolicyWatcher | None = None
    path = runtime.settings.policy
    if path is not None:
        started = False

        def changed(policy: PolicyFile) -> None:
            runtime.set_policy(policy, watcher.sha256 or "" if watcher else "")
            if started:  # the first load at start-up is not a reload
                runtime.metrics.policy_reloads.inc(ReloadResult.SUCCESS)

        def failed(_: PolicyError) -> None:
            runtime.metrics.policy_reloads.inc(ReloadResult.FAILURE)

        watcher = current = PolicyWatcher(path, changed, failed)
        # Read from the watcher, not counted in the callbacks: a bad edit reverted to the
        # content in force is no reload (no callback), yet it clears ``last_error``.
        runtime.metrics.policy_file_valid.set_function(
            lambda: 0.0 if current.last_error is not None else 1.0
        )
        await watcher.start()
        started = True
        runtime.set_policy(runtime.policy, watcher.sha256 or "")
        with contextlib.suppress(NotImplementedError, RuntimeError):
            watcher.install_sighup(asyncio.get_running_loop())
    sweeper = asyncio.create_task(_sweep(runtime))
    try:
        yield
    finally:
        sweeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sweeper
        if watcher is not None:
            await watcher.stop()
        await runtime.store.aclose()
        # Flushes the span and metric exporters (blocking, bounded by their own timeouts).
        await asyncio.to_thread(runtime.telemetry.shutdown)


__all__ = ["RUNTIME", "ProxyListener", "Runtime", "Workers", "build_admin_app", "services"]
