"""In-process fixtures: the proxy application and a hand-written upstream on the test's loop."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import Any

import pytest
from aiohttp import ClientSession, web
from yarl import URL

from proxy.app import ProxyListener, Runtime
from proxy.config import Address, Settings
from proxy.policy import DEFAULT_POLICY, PolicyFile

StartProxy = Callable[..., Awaitable[str]]
StartUpstream = Callable[..., Awaitable[str]]


async def _serve(app: web.Application, runners: list[web.AppRunner], port: int = 0) -> str:
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    runners.append(runner)
    return f"http://127.0.0.1:{site.port}"


@pytest.fixture
async def start_upstream() -> AsyncIterator[StartUpstream]:
    """Serves an aiohttp application on loopback (a free port by default); returns its URL."""
    runners: list[web.AppRunner] = []

    async def start(app: web.Application, port: int = 0) -> str:
        return await _serve(app, runners, port)

    yield start
    for runner in reversed(runners):
        await runner.cleanup()


@pytest.fixture
async def start_proxy() -> AsyncIterator[StartProxy]:
    """The proxy in this process: ``await start_proxy(upstream_url, **settings)``."""
    listeners: list[ProxyListener] = []

    async def start(upstream: str, policy: PolicyFile = DEFAULT_POLICY, **overrides: Any) -> str:
        settings = replace(
            Settings(upstream=URL(upstream), listen=Address("127.0.0.1", 0)), **overrides
        )
        runtime = Runtime(settings=settings, policy=policy)
        runtime.set_policy(policy)
        runtime.ready = True
        listener = ProxyListener(runtime)
        port = await listener.start("127.0.0.1", 0)
        listeners.append(listener)
        return f"http://127.0.0.1:{port}"

    yield start
    for listener in reversed(listeners):
        await listener.drain(0.5)


@pytest.fixture
async def http() -> AsyncIterator[ClientSession]:
    """A raw HTTP client that leaves bodies and headers exactly as they arrive."""
    async with ClientSession(auto_decompress=False) as session:
        yield session
