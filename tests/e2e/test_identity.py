"""Verified identity end to end (contract: "Identity of the calling agent", "Admin listener").

Everything is real and on 127.0.0.1: an identity provider in a thread (a JWKS of RSA and
EC keys generated here, RFC 8414 metadata, dynamic registration and a token endpoint),
tokens minted with PyJWT (and forged by hand where PyJWT refuses to), the official MCP
SDK on both sides, the a2a-sdk agent and client, and the proxy as a process with its
policy in a temporary directory.

- JWT: the official clients (2026-07-28 and legacy) with `Authorization: Bearer`; the
  upstream sees the token's `sub` as `X-Agent-Id` whatever the client wrote there; policies
  judge the verified agent; `forward_credentials: false`.
- Every way a token is refused, on the wire: 401, JSON-RPC -31068, the RFC 6750/9728
  challenge; key rotation and an identity provider down at start, polled with deadlines.
- OAuth discovery: the RFC 9728 document served without credentials, and the SDK's
  `OAuthClientProvider` driven from the proxy's 401 through discovery, registration and
  the token endpoint to a call that passes.
- `require_scopes` and matching on scopes and claims; API keys (both headers, file
  reload); the admin lock (token file, rotation, loopback, the 403 of a foreign peer);
  A2A cards advertising the proxy's scheme.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import itertools
import json
import os
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import httpx2
import jwt
import pytest
from a2a.client import A2ACardResolver, ClientConfig, ClientFactory
from a2a.helpers.proto_helpers import get_artifact_text
from a2a.types import Message, Part, Role, SendMessageRequest
from a2a.utils.constants import AGENT_CARD_WELL_KNOWN_PATH, TransportProtocol
from aiohttp import web as aioweb
from cryptography.hazmat.primitives import serialization
from mcp import Client
from mcp.client.auth import OAuthClientProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import (
    AuthorizationCodeResult,
    OAuthClientInformationFull,
    OAuthClientMetadata,
    OAuthToken,
)
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from yarl import URL

from proxy.admin_token import AdminLock
from proxy.app import Runtime, build_admin_app
from proxy.config import Address, Settings
from proxy.policy import DEFAULT_POLICY
from tests.conftest import Proxy, RunProxy, free_port
from tests.e2e.test_mcp_eras import (
    META,
    MODERN,
    check_client_error,
    client_error,
    parse_answer,
)
from tests.unit.test_identity_jwks import Signer, ec_key, rsa_key
from tests.upstreams import mcp_eras
from tests.upstreams.a2a_server import JSONRPC_PATH, REST_PREFIX, echo_text
from tests.upstreams.mcp_eras import MCP_PATH, Seen
from tests.upstreams.serve import LOOPBACK, HeaderRecorder, ThreadedServer

pytestmark = pytest.mark.timeout(60)

ISSUER = "https://idp.example.com/"
AUDIENCE = "https://agents.example.com/billing"
WELL_KNOWN = "/.well-known/oauth-protected-resource"
HANDSHAKE = "2025-11-25"
MARKER = "x-warden-test"
AGENT = "x-agent-id"
DOMAIN = "agent-warden.dev"
ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"
ACCEPT = "application/json, text/event-stream"
SCOPES_SUPPORTED = ["tools.read", "tools.call"]
ROTATION_DEADLINE = 15.0  # contract: a rotated key is accepted within 15 s of appearing
RELOAD_DEADLINE = 5.0  # API key file: "reloaded within a second"; a margin for slow machines

RSA = Signer("rsa-1", "RS256", rsa_key(1))
EC = Signer("ec-1", "ES256", ec_key(1))
ROTATED = Signer("rsa-2", "RS256", rsa_key(2))
IMPOSTOR = Signer("rsa-1", "RS256", rsa_key(3))  # the published kid, another key


def fresh(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


# --- tokens -----------------------------------------------------------------------------------


def claims_for(sub: str, **claims: Any) -> dict[str, Any]:
    """Valid for 5 minutes from now; a claim given as None is left out."""
    now = int(time.time())
    payload = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": sub,
        "iat": now,
        "nbf": now,
        "exp": now + 300,
        **claims,
    }
    return {k: v for k, v in payload.items() if v is not None}


def mint(signer: Signer, sub: str, *, alg: str | None = None, **claims: Any) -> str:
    return jwt.encode(
        claims_for(sub, **claims),
        signer.private,
        algorithm=alg or signer.alg,
        headers={"kid": signer.kid},
    )


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(
    header: Mapping[str, Any], payload: Mapping[str, Any], sign: Callable[[bytes], bytes]
) -> str:
    """A compact JWS built by hand (PyJWT refuses to make these)."""
    head = b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(payload).encode())
    return head + "." + b64url(sign(head.encode()))


def unsigned_token(sub: str) -> str:
    return forge({"alg": "none", "typ": "JWT", "kid": RSA.kid}, claims_for(sub), lambda _: b"")


def rsa_public_pem() -> bytes:
    return RSA.private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def hs256_with_the_public_key(sub: str) -> str:
    """The classic confusion attack: HMAC keyed with the RSA public key's PEM."""
    pem = rsa_public_pem()
    return forge(
        {"alg": "HS256", "typ": "JWT", "kid": RSA.kid},
        claims_for(sub),
        lambda data: hmac.new(pem, data, hashlib.sha256).digest(),
    )


# --- the identity provider ----------------------------------------------------------------------


class IdentityProvider:
    """A JWKS endpoint and a minimal OAuth 2.1 authorization server, recording what it is asked.

    The token endpoint issues a JWT signed with the first published key, for the `resource`
    the client asked for (RFC 8707), to `subject`.
    """

    def __init__(self, *keys: Signer) -> None:
        self.keys = list(keys)
        self.subject = fresh("oauth")
        self.url = ""
        self.asked: list[str] = []
        self.registrations: list[dict[str, Any]] = []
        self.token_forms: list[dict[str, str]] = []
        self.delay = 0.0
        """Seconds the JWKS endpoint waits before it answers (a slow identity provider)."""
        self.grants: dict[str, str] = {}
        """Authorization code -> the scope the user approved (the authorize step is
        simulated by the test: no browser)."""
        self._lock = threading.Lock()

    @property
    def issuer(self) -> str:
        return self.url + "/"

    def publish(self, *keys: Signer) -> None:
        self.keys = list(keys)

    def was_asked(self, path: str) -> bool:
        with self._lock:
            return any(p.endswith(" " + path) for p in self.asked)

    def app(self, url: str) -> Callable[..., Awaitable[None]]:
        self.url = url
        inner = Starlette(
            routes=[
                Route("/jwks.json", self._jwks),
                Route("/.well-known/oauth-authorization-server", self._metadata),
                Route("/register", self._register, methods=["POST"]),
                Route("/token", self._token, methods=["POST"]),
            ]
        )

        async def recording(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] == "http":
                with self._lock:
                    self.asked.append(f"{scope['method']} {scope['path']}")
            await inner(scope, receive, send)

        return recording

    async def _jwks(self, _: Request) -> Response:
        if self.delay:
            await asyncio.sleep(self.delay)
        body = {"keys": [k.jwk() for k in self.keys]}
        return JSONResponse(body, media_type="application/jwk-set+json")

    async def _metadata(self, _: Request) -> Response:
        return JSONResponse(
            {
                "issuer": self.issuer,
                "authorization_endpoint": self.url + "/authorize",
                "token_endpoint": self.url + "/token",
                "registration_endpoint": self.url + "/register",
                "response_types_supported": ["code"],
                "grant_types_supported": ["authorization_code", "refresh_token"],
                "code_challenge_methods_supported": ["S256"],
                "token_endpoint_auth_methods_supported": ["none"],
                "scopes_supported": SCOPES_SUPPORTED,
            }
        )

    async def _register(self, request: Request) -> Response:
        body = await request.json()
        with self._lock:
            self.registrations.append(body)
        return JSONResponse(
            {
                "client_id": "warden-test-client",
                "client_id_issued_at": int(time.time()),
                "redirect_uris": body["redirect_uris"],
                "token_endpoint_auth_method": "none",
                "grant_types": ["authorization_code", "refresh_token"],
                "response_types": ["code"],
            },
            status_code=201,
        )

    async def _token(self, request: Request) -> Response:
        form = {k: v[0] for k, v in parse_qs((await request.body()).decode()).items()}
        with self._lock:
            self.token_forms.append(form)
        if form.get("grant_type") != "authorization_code" or not form.get("code_verifier"):
            return JSONResponse({"error": "invalid_request"}, status_code=400)
        scope = self.grants.pop(form.get("code", ""), None)
        if scope is None:
            return JSONResponse({"error": "invalid_grant"}, status_code=400)
        claims = {"iss": self.issuer, "aud": form.get("resource", AUDIENCE), "scope": scope}
        token = mint(self.keys[0], self.subject, **claims)
        return JSONResponse({"access_token": token, "token_type": "Bearer", "expires_in": 300})


# --- upstream, proxies and policies -----------------------------------------------------------


@dataclass
class Stack:
    """A proxy in front of the official MCP upstream, and what that upstream received."""

    proxy: Proxy
    upstream: ThreadedServer

    @property
    def endpoint(self) -> str:
        return self.proxy.url + MCP_PATH

    @property
    def metadata_url(self) -> str:
        """Where the challenge sends clients: the RFC 9728 document of `/mcp`."""
        return self.proxy.url + WELL_KNOWN + MCP_PATH

    def marked(self, marker: str) -> list[Seen]:
        app = self.upstream.app
        assert isinstance(app, mcp_eras.WireRecorder)
        return app.marked(MARKER, marker)


def start_at(run: RunProxy, upstream: str, url: str, *args: str) -> Proxy:
    """A proxy listening at `url`, known before it starts (so its policy can name it).
    The launcher picks a port of its own; a second --listen wins (argparse keeps the last)."""
    proxy = run(upstream, "--listen", url.removeprefix("http://"), *args)
    return replace(proxy, url=url)


def jwt_identity(idp_url: str, *, required: bool, extra: str = "", audiences: str = "") -> str:
    return f"""\
identity:
  required: {"true" if required else "false"}
  header: X-Agent-Id
{extra}  jwt:
    issuers: ["{ISSUER}", "{idp_url}/"]
    audiences: ["{AUDIENCE}"{audiences}]
    jwks_url: {idp_url}/jwks.json
    algorithms: [RS256, ES256]
    agent_claim: sub
    leeway: 5s
"""


def main_policy(idp_url: str, proxy_url: str) -> str:
    resource = proxy_url + MCP_PATH
    return f"""\
version: 1
{jwt_identity(idp_url, required=True, audiences=f', "{resource}"')}\
  resource_metadata:
    resource: {resource}
    authorization_servers: ["{idp_url}/"]
    scopes_supported: [tools.read, tools.call]
policies:
  - name: billing
    match: {{agents: ["billing-*"]}}
    budget: {{tools: {{echo: 2}}}}
  - name: payments
    match: {{claims: {{team: "pay-*"}}}}
    require_scopes: [payments.write]
  - name: callers
    match: {{agents: ["scoped-*"], scopes: [tools.call]}}
    tools: {{allow: ["echo"]}}
  - name: step-up
    match: {{agents: ["stepup-*"]}}
    require_scopes: [tools.call, tools.read]
"""


@pytest.fixture(scope="module")
def idp() -> Iterator[IdentityProvider]:
    provider = IdentityProvider(RSA, EC)
    with ThreadedServer(provider.app):
        yield provider


@pytest.fixture(scope="module")
def upstream() -> Iterator[ThreadedServer]:
    with ThreadedServer(lambda _: mcp_eras.streamable_app()) as server:
        yield server


@pytest.fixture(scope="module")
def policies(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("identity")


@pytest.fixture(scope="module")
def main(
    run_proxy_module: RunProxy, upstream: ThreadedServer, idp: IdentityProvider, policies: Path
) -> Stack:
    """jwt, required, credentials forwarded, RFC 9728 metadata, and the policies above."""
    url = f"http://{LOOPBACK}:{free_port()}"
    path = policies / "main.yaml"
    path.write_text(main_policy(idp.url, url))
    return Stack(start_at(run_proxy_module, upstream.url, url, "--policy", str(path)), upstream)


@pytest.fixture(scope="module")
def optional(
    run_proxy_module: RunProxy, upstream: ThreadedServer, idp: IdentityProvider, policies: Path
) -> Stack:
    """jwt, not required, `forward_credentials: false`, no metadata."""
    path = policies / "optional.yaml"
    extra = "  forward_credentials: false\n"
    path.write_text("version: 1\n" + jwt_identity(idp.url, required=False, extra=extra))
    return Stack(run_proxy_module(upstream.url, "--policy", str(path)), upstream)


@pytest.fixture
async def web() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=httpx.Timeout(30.0)) as client:
        yield client


# --- raw requests and what their answers must be ------------------------------------------------


@dataclass
class Reply:
    sent: dict[str, Any]
    response: httpx.Response

    @property
    def status(self) -> int:
        return self.response.status_code

    def message(self) -> dict[str, Any]:
        return parse_answer(self.response)

    def tool_text(self) -> str:
        assert self.status == 200, (self.status, self.response.text)
        message = self.message()
        assert "result" in message, message
        result = message["result"]
        assert result.get("isError") is not True, result
        return str(result["content"][0]["text"])

    def error(self, reason: str, code: int) -> dict[str, Any]:
        """The JSON-RPC error of a proxy denial (its id echoed); returns its ErrorInfo."""
        assert self.response.headers["content-type"].startswith("application/json")
        body = self.response.json()
        assert set(body) == {"jsonrpc", "id", "error"}, body
        assert body["id"] == self.sent["id"], body
        error = body["error"]
        assert error["code"] == code, error
        [info] = [d for d in error["data"] if d.get("@type") == ERROR_INFO]
        assert (info["reason"], info["domain"]) == (reason, DOMAIN), info
        return dict(info)

    def challenge(self) -> dict[str, str]:
        return challenge_params(self.response.headers.get("www-authenticate", ""))

    def unauthenticated(self, metadata_url: str | None, *, invalid: bool) -> None:
        """401 UNAUTHENTICATED (-31068) with the RFC 6750 / RFC 9728 challenge."""
        assert self.status == 401, (self.status, self.response.text)
        error = self.response.json()["error"]
        assert error["message"] == "unauthenticated", error
        self.error("UNAUTHENTICATED", -31068)
        expected = {}
        if metadata_url is not None:
            expected["resource_metadata"] = metadata_url
        if invalid:
            expected["error"] = "invalid_token"
        assert self.challenge() == expected, self.response.headers.get("www-authenticate")

    def insufficient_scope(self, metadata_url: str, scope: str) -> None:
        """403 INSUFFICIENT_SCOPE (-31072) with the step-up challenge."""
        assert self.status == 403, (self.status, self.response.text)
        assert self.response.json()["error"]["message"] == "insufficient scope"
        self.error("INSUFFICIENT_SCOPE", -31072)
        params = self.challenge()
        assert params.pop("error", None) == "insufficient_scope", params
        assert params.pop("scope", None) == scope, params
        assert params in ({}, {"resource_metadata": metadata_url}), params


_PARAM = re.compile(r'\s*([A-Za-z0-9_.-]+)\s*=\s*"((?:[^"\\]|\\.)*)"\s*(?:,|$)')


def challenge_params(value: str) -> dict[str, str]:
    """The auth-params of a `Bearer` challenge (each a quoted string)."""
    scheme, _, rest = value.strip().partition(" ")
    assert scheme == "Bearer", value
    params: dict[str, str] = {}
    rest = rest.strip()
    pos = 0
    while pos < len(rest):
        found = _PARAM.match(rest, pos)
        assert found is not None, f"not an auth-param list: {value!r}"
        assert found[1] not in params, f"{found[1]} twice: {value!r}"
        params[found[1]] = re.sub(r"\\(.)", r"\1", found[2])
        pos = found.end()
    return params


@dataclass
class Wire:
    """Raw MCP 2026-07-28 requests to one proxy, each tagged with this client's marker."""

    http: httpx.AsyncClient
    stack: Stack
    marker: str = field(default_factory=lambda: uuid.uuid4().hex)
    _ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    async def post(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        *,
        token: str | None = None,
        headers: Mapping[str, str] | list[tuple[str, str]] | None = None,
    ) -> Reply:
        message = {
            "jsonrpc": "2.0",
            "id": next(self._ids),
            "method": method,
            "params": {**(params or {}), "_meta": META},
        }
        sent = [
            ("accept", ACCEPT),
            ("content-type", "application/json"),
            ("mcp-protocol-version", MODERN),
            ("mcp-method", method),
            (MARKER, self.marker),
        ]
        if method == "tools/call":
            sent.append(("mcp-name", message["params"]["name"]))
        if token is not None:
            sent.append(("authorization", f"Bearer {token}"))
        extra = headers.items() if isinstance(headers, Mapping) else headers or []
        sent.extend(extra)
        response = await self.http.post(
            self.stack.endpoint, content=json.dumps(message).encode(), headers=sent
        )
        return Reply(message, response)

    async def echo(self, text: str = "hi", **kwargs: Any) -> Reply:
        return await self.post(
            "tools/call", {"name": "echo", "arguments": {"text": text}}, **kwargs
        )

    async def legacy(
        self, method: str, params: dict[str, Any], *, token: str, session: str | None = None
    ) -> Reply:
        """One request of the 2025 era (an `Mcp-Session-Id` session; none for initialize)."""
        message = {"jsonrpc": "2.0", "id": next(self._ids), "method": method, "params": params}
        headers = {
            "accept": ACCEPT,
            "content-type": "application/json",
            "authorization": f"Bearer {token}",
            MARKER: self.marker,
        }
        if session is not None:
            headers |= {"mcp-session-id": session, "mcp-protocol-version": HANDSHAKE}
        response = await self.http.post(self.stack.endpoint, json=message, headers=headers)
        return Reply(message, response)

    async def open_session(self, token: str) -> str:
        init = await self.legacy(
            "initialize",
            {
                "protocolVersion": HANDSHAKE,
                "capabilities": {},
                "clientInfo": {"name": "warden-identity-e2e", "version": "0"},
            },
            token=token,
        )
        assert init.status == 200, init.response.text
        session = init.response.headers.get("mcp-session-id")
        assert session, init.response.headers
        return session

    async def add(self, a: int, b: int, **kwargs: Any) -> Reply:
        return await self.post(
            "tools/call", {"name": "add", "arguments": {"a": a, "b": b}}, **kwargs
        )

    def upstream_saw(self) -> list[Seen]:
        return self.stack.marked(self.marker)


async def eventually(probe: Callable[[], Awaitable[bool]], what: str, within: float) -> float:
    """Await `probe()` every 250 ms until it is true; fail after `within` s. Returns the wait."""
    start = time.monotonic()
    while not await probe():
        if time.monotonic() - start > within:
            pytest.fail(f"not within {within} s: {what}", pytrace=False)
        await asyncio.sleep(0.25)
    return time.monotonic() - start


# --- the official MCP client --------------------------------------------------------------------


@asynccontextmanager
async def sdk_client(
    stack: Stack,
    mode: str,
    headers: Mapping[str, str],
    *,
    auth: httpx2.Auth | None = None,
    hooks: list[Callable[[httpx2.Response], Awaitable[None]]] | None = None,
) -> AsyncIterator[Client]:
    async with AsyncExitStack() as exits:
        http = await exits.enter_async_context(
            httpx2.AsyncClient(
                headers=dict(headers),
                timeout=httpx2.Timeout(30.0),
                auth=auth,
                event_hooks={"response": hooks or []},
            )
        )
        transport = streamable_http_client(stack.endpoint, http_client=http)
        client = await exits.enter_async_context(
            Client(transport, mode=mode, cache=None, read_timeout_seconds=15.0)
        )
        yield client


def texts(result: Any) -> str:
    return str(result.content[0].text)


CLIENT_MODES = [MODERN, "legacy"]


# === 1. JWT end to end with the official client ===============================================


@pytest.mark.parametrize("signer", [RSA, EC], ids=["RS256", "ES256"])
@pytest.mark.parametrize("mode", CLIENT_MODES)
async def test_sdk_client_with_a_token_gets_its_verified_id_upstream(
    main: Stack, mode: str, signer: Signer
) -> None:
    agent = fresh("agent")
    token = mint(signer, agent)
    marker = uuid.uuid4().hex
    headers = {MARKER: marker, "Authorization": f"Bearer {token}", AGENT: "someone-else"}
    async with sdk_client(main, mode, headers) as client:
        assert texts(await client.call_tool("add", {"a": 20, "b": 22})) == "42"
        assert texts(await client.call_tool("echo", {"text": "h\u00e9llo"})) == "h\u00e9llo"
        tools = await client.list_tools()
    assert "echo" in {t.name for t in tools.tools}
    seen = main.marked(marker)
    methods = [s.json().get("method") for s in seen if s.method == "POST" and s.json()]
    assert methods.count("tools/call") == 2, methods
    for request in seen:
        # Replaced, not appended: one value, the token's subject.
        assert request.headers.get(AGENT) == agent, request.headers
        # forward_credentials defaults to true: the upstream may check the token itself.
        assert request.headers.get("authorization") == f"Bearer {token}", request.headers


async def test_identity_header_smuggling_is_overwritten(main: Stack, web: httpx.AsyncClient):
    """Sent twice and named in Connection (hop by hop): the upstream still sees one value."""
    agent = fresh("agent")
    wire = Wire(web, main)
    reply = await wire.echo(
        "twice",
        token=mint(RSA, agent),
        headers=[(AGENT, "billing-1"), (AGENT, "ops-2"), ("connection", "X-Agent-Id")],
    )
    assert reply.tool_text() == "twice"
    [seen] = wire.upstream_saw()
    assert seen.headers.get(AGENT) == agent, seen.headers


async def admin_sessions(proxy: Proxy, **headers: str) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(timeout=10.0) as client:
        response = await client.get(proxy.admin_url + "/sessions", headers=headers)
    assert response.status_code == 200, response.text
    return list(response.json()["sessions"])


@pytest.mark.parametrize("mode", CLIENT_MODES)
async def test_budget_follows_the_verified_agent_not_the_header(main: Stack, mode: str) -> None:
    """billing-* may call echo twice per session (a per-tool budget: the client's own
    `tools/list` does not eat into it): a billing token claiming another id gets 2 of 4."""
    billing = fresh("billing")
    marker = uuid.uuid4().hex
    headers = {
        MARKER: marker,
        "Authorization": f"Bearer {mint(RSA, billing)}",
        AGENT: "not-billing",
    }
    async with sdk_client(main, mode, headers) as client:
        assert texts(await client.call_tool("echo", {"text": "1"})) == "1"
        assert texts(await client.call_tool("echo", {"text": "2"})) == "2"
        for text in ("3", "4"):
            exc = await client_error(client.call_tool("echo", {"text": text}))
            check_client_error(exc, "SESSION_BUDGET_EXCEEDED")
        # Loopback, no admin token file: the admin API answers (the tests' normal case).
        listed = [s for s in await admin_sessions(main.proxy) if s["agent"] == billing]
        assert len(listed) == 1, listed
        assert not [s for s in await admin_sessions(main.proxy) if s["agent"] == "not-billing"]
    calls = [s for s in main.marked(marker) if s.rpc_method == "tools/call"]
    assert len(calls) == 2, [s.rpc_method for s in main.marked(marker)]

    # The converse: a token of another agent claiming to be billing is not limited.
    other = fresh("free")
    headers = {MARKER: uuid.uuid4().hex, "Authorization": f"Bearer {mint(EC, other)}"}
    async with sdk_client(main, mode, {**headers, AGENT: billing}) as client:
        for n in range(4):
            assert texts(await client.call_tool("echo", {"text": str(n)})) == str(n)


async def test_forward_credentials_false_keeps_authorization_from_the_upstream(
    optional: Stack,
) -> None:
    agent = fresh("quiet")
    marker = uuid.uuid4().hex
    headers = {MARKER: marker, "Authorization": f"Bearer {mint(RSA, agent)}", AGENT: "x"}
    async with sdk_client(optional, MODERN, headers) as client:
        assert texts(await client.call_tool("add", {"a": 1, "b": 2})) == "3"
    seen = optional.marked(marker)
    assert seen
    for request in seen:
        assert "authorization" not in request.headers, request.headers
        assert request.headers.get(AGENT) == agent, request.headers


# === 2. every rejection, on the wire ===========================================================


def _expired(sub: str) -> str:
    now = int(time.time())
    return mint(RSA, sub, iat=now - 3600, nbf=now - 3600, exp=now - 600)


def _not_yet_valid(sub: str) -> str:
    now = int(time.time())
    return mint(RSA, sub, nbf=now + 3600, exp=now + 7200)


REFUSED_TOKENS: dict[str, Callable[[str], str]] = {
    "expired": _expired,
    "not-yet-valid": _not_yet_valid,
    "wrong-aud": lambda sub: mint(RSA, sub, aud="https://agents.example.com/other"),
    "wrong-iss": lambda sub: mint(EC, sub, iss="https://evil.example.com/"),
    "bad-signature": lambda sub: mint(IMPOSTOR, sub),
    "tampered": lambda sub: _tamper(mint(RSA, fresh("agent")), sub),
    "alg-none": unsigned_token,
    "hs256-keyed-with-rsa-public-pem": hs256_with_the_public_key,
    "alg-not-configured-rs384": lambda sub: mint(RSA, sub, alg="RS384"),
    "alg-not-configured-es384": lambda sub: jwt.encode(
        claims_for(sub), ec_key(2, "P-384"), algorithm="ES384", headers={"kid": "ec-1"}
    ),
    "unknown-kid": lambda sub: mint(ROTATED, sub),
    "kid-of-another-key-type": lambda sub: jwt.encode(
        claims_for(sub), EC.private, algorithm="ES256", headers={"kid": RSA.kid}
    ),
    "no-exp": lambda sub: mint(RSA, sub, exp=None),
    "no-sub": lambda sub: _with_sub(RSA, None),
    "sub-not-a-string": lambda sub: _with_sub(EC, 12345),
    "sub-with-a-newline": lambda sub: _with_sub(RSA, sub + "\r\nX-Agent-Id: root"),
    "malformed-scope": lambda sub: mint(RSA, sub, scope=7),
    "unknown-crit-extension": lambda sub: jwt.encode(
        claims_for(sub),
        RSA.private,
        algorithm="RS256",
        headers={"kid": RSA.kid, "crit": ["urn:example:must-understand"]},
    ),
    "not-a-jwt": lambda sub: "not-a-jwt",
}


def _with_sub(signer: Signer, sub: object) -> str:
    """A token whose `sub` (the agent claim) is absent (None) or not a usable agent id."""
    claims = {k: v for k, v in {**claims_for("x"), "sub": sub}.items() if v is not None}
    return jwt.encode(claims, signer.private, algorithm=signer.alg, headers={"kid": signer.kid})


def _tamper(token: str, sub: str) -> str:
    """A valid token whose payload was swapped for another subject's, signature kept."""
    head, _, rest = token.partition(".")
    _, _, signature = rest.partition(".")
    return f"{head}.{b64url(json.dumps(claims_for(sub)).encode())}.{signature}"


@pytest.mark.parametrize("case", list(REFUSED_TOKENS))
async def test_invalid_token_is_refused(main: Stack, web: httpx.AsyncClient, case: str) -> None:
    token = REFUSED_TOKENS[case](fresh("billing"))
    wire = Wire(web, main)
    reply = await wire.echo("never", token=token)
    reply.unauthenticated(main.metadata_url, invalid=True)
    assert wire.upstream_saw() == []


async def test_invalid_token_is_refused_even_when_identity_is_optional(
    optional: Stack, web: httpx.AsyncClient
) -> None:
    wire = Wire(web, optional)
    for token in (_expired(fresh("a")), unsigned_token(fresh("a")), "garbage"):
        (await wire.echo("never", token=token)).unauthenticated(None, invalid=True)
    # A scheme other than Bearer is a credential presented, and not believed either.
    reply = await wire.echo("never", headers={"authorization": "Basic dXNlcjpwYXNz"})
    reply.unauthenticated(None, invalid=True)
    assert wire.upstream_saw() == []


async def test_missing_token_when_required(main: Stack, web: httpx.AsyncClient) -> None:
    wire = Wire(web, main)
    reply = await wire.echo("never", headers={AGENT: "billing-1"})
    reply.unauthenticated(main.metadata_url, invalid=False)
    # The GET stream and DELETE of the streamable transport are refused alike.
    for method in ("GET", "DELETE"):
        response = await web.request(
            method,
            main.endpoint,
            headers={"accept": "text/event-stream", MARKER: wire.marker, AGENT: "billing-1"},
        )
        assert response.status_code == 401, (method, response.status_code, response.text)
        params = challenge_params(response.headers["www-authenticate"])
        assert params == {"resource_metadata": main.metadata_url}, (method, params)
    assert wire.upstream_saw() == []


async def test_missing_token_when_optional_is_anonymous(
    optional: Stack, web: httpx.AsyncClient
) -> None:
    wire = Wire(web, optional)
    assert (await wire.echo("anon", headers={AGENT: "billing-1"})).tool_text() == "anon"
    [seen] = wire.upstream_saw()
    assert seen.headers.get(AGENT) == "anonymous", seen.headers


async def test_authorization_header_forms(main: Stack, web: httpx.AsyncClient) -> None:
    """The scheme is case-insensitive (RFC 9110); two Authorization headers are not believed,
    even when one of them carries a valid token."""
    agent = fresh("forms")
    token = mint(RSA, agent)
    wire = Wire(web, main)
    assert (await wire.echo("lower", headers={"authorization": f"bearer {token}"})).status == 200
    twice = [("authorization", f"Bearer {token}"), ("authorization", f"Bearer {token}x")]
    (await wire.echo("twice", headers=twice)).unauthenticated(main.metadata_url, invalid=True)
    same = [("authorization", f"Bearer {token}"), ("authorization", f"Bearer {token}")]
    (await wire.echo("same", headers=same)).unauthenticated(main.metadata_url, invalid=True)
    assert [s.headers.get(AGENT) for s in wire.upstream_saw()] == [agent]


async def test_another_agent_cannot_use_a_protocol_session(
    main: Stack, web: httpx.AsyncClient
) -> None:
    """A 2025-era session belongs to the token that opened it: another verified agent (even
    one claiming the owner's id in the header) gets AGENT_MISMATCH, cannot close it, and
    a request with no token is refused before the session is looked at."""
    owner, intruder = fresh("owner"), fresh("intruder")
    owner_token, intruder_token = mint(RSA, owner), mint(EC, intruder)
    wire = Wire(web, main)
    session = await wire.open_session(owner_token)
    echo = {"name": "echo", "arguments": {"text": "mine"}}
    mine = await wire.legacy("tools/call", echo, token=owner_token, session=session)
    assert mine.tool_text() == "mine"

    theirs = Wire(web, main)
    denied = await theirs.legacy("tools/call", echo, token=intruder_token, session=session)
    denied.error("AGENT_MISMATCH", -31067)
    closed = await web.delete(
        main.endpoint,
        headers={
            "authorization": f"Bearer {intruder_token}",
            "mcp-session-id": session,
            "mcp-protocol-version": HANDSHAKE,
            AGENT: owner,
            MARKER: theirs.marker,
        },
    )
    assert closed.status_code == 403, closed.text
    Reply({"id": None}, closed).error("AGENT_MISMATCH", -31067)
    anonymous = await web.post(
        main.endpoint,
        json={"jsonrpc": "2.0", "id": 9, "method": "tools/call", "params": echo},
        headers={"accept": ACCEPT, "mcp-session-id": session, MARKER: theirs.marker, AGENT: owner},
    )
    Reply({"id": 9}, anonymous).unauthenticated(main.metadata_url, invalid=False)
    assert theirs.upstream_saw() == []
    # The owner's session is intact.
    again = await wire.legacy("tools/call", echo, token=owner_token, session=session)
    assert again.tool_text() == "mine"
    [listed] = [s for s in await admin_sessions(main.proxy) if s["id"] == session]
    assert (listed["agent"], listed["calls_used"]) == (owner, 2), listed


async def test_a_minted_session_belongs_to_its_verified_agent(
    main: Stack, web: httpx.AsyncClient
) -> None:
    owner = fresh("minted")
    minted = await web.post(main.proxy.admin_url + "/sessions", json={"agent": owner})
    assert minted.status_code == 201, minted.text
    sid = minted.json()["id"]
    wire = Wire(web, main)
    grant = {"warden-session": sid}
    assert (await wire.echo("mine", token=mint(RSA, owner), headers=grant)).tool_text() == "mine"
    other = Wire(web, main)
    denied = await other.echo(
        "yours", token=mint(RSA, fresh("other")), headers={**grant, AGENT: owner}
    )
    denied.error("AGENT_MISMATCH", -31067)
    (await other.echo("anon", headers=grant)).unauthenticated(main.metadata_url, invalid=False)
    assert other.upstream_saw() == []
    [seen] = wire.upstream_saw()
    assert "warden-session" not in seen.headers


async def test_a_rotated_key_is_accepted_after_a_refresh(
    run_proxy: RunProxy, upstream: ThreadedServer, tmp_path: Path, web: httpx.AsyncClient
) -> None:
    """The IdP starts signing with a new key: unknown at first, accepted once refetched
    (an unknown kid refetches at most every 10 s); the retired key then stops working."""
    provider = IdentityProvider(RSA, EC)
    with ThreadedServer(provider.app):
        path = tmp_path / "rotate.yaml"
        path.write_text("version: 1\n" + jwt_identity(provider.url, required=True))
        stack = Stack(run_proxy(upstream.url, "--policy", str(path)), upstream)
        wire = Wire(web, stack)
        old = mint(RSA, fresh("rot"))
        assert (await wire.echo("old key", token=old)).tool_text() == "old key"
        new = mint(ROTATED, fresh("rot"))
        (await wire.echo("too early", token=new)).unauthenticated(None, invalid=True)

        provider.publish(ROTATED, EC)  # rsa-1 retired, rsa-2 in

        async def accepted() -> bool:
            reply = await wire.echo("rotated", token=new)
            assert reply.status in (200, 401), (reply.status, reply.response.text)
            return reply.status == 200

        await eventually(accepted, "a token of the rotated key accepted", ROTATION_DEADLINE)
        # The key set changed: the verified-token cache no longer vouches for the old key.
        (await wire.echo("retired", token=old)).unauthenticated(None, invalid=True)
        assert (await wire.echo("ec", token=mint(EC, fresh("rot")))).tool_text() == "ec"
        fetched = [p for p in provider.asked if p == "GET /jwks.json"]
        assert 2 <= len(fetched) <= 3, provider.asked  # no fetch per request


async def test_jwks_down_at_start_refuses_then_recovers(
    run_proxy: RunProxy, upstream: ThreadedServer, tmp_path: Path, web: httpx.AsyncClient
) -> None:
    """No keys can be had: every token is refused with 401 (never a 5xx, never let
    through); once the IdP answers, tokens are accepted without a restart."""
    provider = IdentityProvider(RSA, EC)
    port = free_port()
    url = f"http://{LOOPBACK}:{port}"
    path = tmp_path / "down.yaml"
    path.write_text("version: 1\n" + jwt_identity(url, required=True))
    stack = Stack(run_proxy(upstream.url, "--policy", str(path)), upstream)
    wire = Wire(web, stack)
    token = mint(RSA, fresh("early"))
    for _ in range(3):
        (await wire.echo("refused", token=token)).unauthenticated(None, invalid=True)
    (await wire.echo("refused", token=mint(EC, fresh("early")))).unauthenticated(None, invalid=True)
    assert wire.upstream_saw() == []

    with ThreadedServer(provider.app, port=port):

        async def accepted() -> bool:
            reply = await wire.echo("up", token=token)
            assert reply.status in (200, 401), (reply.status, reply.response.text)
            if reply.status == 401:
                reply.unauthenticated(None, invalid=True)
            return reply.status == 200

        await eventually(accepted, "a token accepted once the JWKS is up", ROTATION_DEADLINE)
    assert [s.headers.get(AGENT) for s in wire.upstream_saw()] == [claims_of(token)["sub"]]
    assert provider.asked.count("GET /jwks.json") == 1, provider.asked  # not once per request
    # Down again: the known set is kept (new tokens of its keys pass), an unknown kid is
    # refused with 401, never a 5xx.
    later = mint(EC, fresh("later"))
    assert (await wire.echo("stale", token=later)).tool_text() == "stale"
    (await wire.echo("unknown", token=mint(ROTATED, fresh("later")))).unauthenticated(
        None, invalid=True
    )


def claims_of(token: str) -> dict[str, Any]:
    return dict(jwt.decode(token, options={"verify_signature": False}))


# === 3. OAuth discovery through the proxy =====================================================


async def test_protected_resource_metadata_is_served_without_credentials(
    main: Stack, idp: IdentityProvider, web: httpx.AsyncClient
) -> None:
    expected = {
        "resource": main.endpoint,
        "authorization_servers": [idp.issuer],
        "scopes_supported": SCOPES_SUPPORTED,
        "bearer_methods_supported": ["header"],
    }
    marker = uuid.uuid4().hex
    for path in (WELL_KNOWN, WELL_KNOWN + MCP_PATH):
        for auth in ({}, {"authorization": "Bearer not-a-token"}):
            response = await web.get(main.proxy.url + path, headers={MARKER: marker, **auth})
            assert response.status_code == 200, (path, response.status_code, response.text)
            assert response.headers["content-type"].startswith("application/json")
            assert response.json() == expected, path
    # The document is the proxy's: nothing of it reached the upstream.
    assert main.marked(marker) == []


class MemoryStorage:
    def __init__(self) -> None:
        self.tokens: OAuthToken | None = None
        self.client: OAuthClientInformationFull | None = None

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client = client_info


async def test_sdk_oauth_provider_discovers_through_the_proxy(
    main: Stack, idp: IdentityProvider
) -> None:
    """The SDK's `mcp.client.auth.OAuthClientProvider`, with no token: the proxy's 401
    points it to the RFC 9728 document (served by the proxy), which names the authorization
    server; the client reads the server's RFC 8414 metadata, registers, is "redirected"
    (the callback is answered here, no browser), exchanges the code for a token for this
    resource (RFC 8707), and its retried call passes as the token's subject. The whole
    flow runs non-interactively."""
    authorized: list[dict[str, list[str]]] = []

    async def redirect(url: str) -> None:
        authorized.append(parse_qs(urlsplit(url).query))

    async def callback() -> AuthorizationCodeResult:
        [state] = authorized[-1]["state"]
        code = "code-" + uuid.uuid4().hex
        idp.grants[code] = authorized[-1]["scope"][0]  # the user approved what was asked
        return AuthorizationCodeResult(code=code, state=state)

    provider = OAuthClientProvider(
        server_url=main.endpoint,
        client_metadata=OAuthClientMetadata(
            client_name="warden-identity-test",
            redirect_uris=["http://127.0.0.1:1/callback"],
            token_endpoint_auth_method="none",
        ),
        storage=MemoryStorage(),
        redirect_handler=redirect,
        callback_handler=callback,
    )
    exchanges: list[tuple[str, str, int]] = []

    async def on_response(response: httpx2.Response) -> None:
        request = response.request
        exchanges.append((request.method, str(request.url), response.status_code))

    marker = uuid.uuid4().hex
    async with sdk_client(main, MODERN, {MARKER: marker}, auth=provider, hooks=[on_response]) as c:
        assert texts(await c.call_tool("add", {"a": 2, "b": 3})) == "5"

    # What the client did, in order: refused, discovery through the proxy, the AS.
    assert exchanges[0] == ("POST", main.endpoint, 401), exchanges
    assert exchanges[1] == ("GET", main.metadata_url, 200), exchanges
    assert exchanges[2] == ("GET", idp.url + "/.well-known/oauth-authorization-server", 200), (
        exchanges
    )
    assert idp.was_asked("/.well-known/oauth-authorization-server"), idp.asked
    assert ("POST", idp.url + "/register", 201) in exchanges, exchanges
    [registered] = idp.registrations
    assert registered["redirect_uris"] == ["http://127.0.0.1:1/callback"], registered
    assert ("POST", idp.url + "/token", 200) in exchanges, exchanges
    assert exchanges[-1] == ("POST", main.endpoint, 200), exchanges
    # The authorization and token requests name this resource (RFC 8707) and the
    # scopes the metadata lists; the token the AS issued for it is what passed.
    assert authorized[-1]["resource"] == [main.endpoint], authorized
    form = idp.token_forms[-1]
    assert form["resource"] == main.endpoint, form
    calls = [s for s in main.marked(marker) if s.rpc_method == "tools/call"]
    assert len(calls) == 1, [(s.rpc_method, s.status) for s in main.marked(marker)]
    assert calls[0].headers.get(AGENT) == idp.subject
    token = calls[0].headers["authorization"].removeprefix("Bearer ")
    assert claims_of(token)["aud"] == main.endpoint
    assert set(claims_of(token)["scope"].split()) == set(SCOPES_SUPPORTED)


# === 4. scopes and claims ======================================================================


async def test_claims_glob_selects_a_policy_that_requires_a_scope(
    main: Stack, web: httpx.AsyncClient
) -> None:
    wire = Wire(web, main)
    # team pay-eu matches "pay-*": payments.write is required and missing.
    lacking = mint(RSA, fresh("payer"), team="pay-eu", scope="tools.call")
    (await wire.echo("no", token=lacking)).insufficient_scope(main.metadata_url, "payments.write")
    assert wire.upstream_saw() == []
    holding = mint(RSA, fresh("payer"), team="pay-eu", scope="tools.call payments.write")
    assert (await wire.echo("yes", token=holding)).tool_text() == "yes"
    # scp as a list works the same.
    listed = mint(EC, fresh("payer"), team="pay-us", scp=["payments.write"])
    assert (await wire.echo("scp", token=listed)).tool_text() == "scp"
    # Other teams, a non-string team, or no team: the policy does not apply.
    for claims in ({"team": "ops"}, {"team": 7}, {"team": ["pay-eu"]}, {}):
        other = mint(RSA, fresh("other"), **claims)
        assert (await wire.echo("free", token=other)).tool_text() == "free", claims


async def test_scopes_match_selects_a_policy(main: Stack, web: httpx.AsyncClient) -> None:
    """`callers` matches scoped-* holding tools.call, and allows only echo."""
    wire = Wire(web, main)
    for claims in ({"scope": "tools.read tools.call"}, {"scp": ["tools.call"]}):
        token = mint(RSA, fresh("scoped"), **claims)
        assert (await wire.echo("ok", token=token)).tool_text() == "ok"
        denied = await wire.add(1, 2, token=token)
        assert denied.status == 200, denied.response.text
        info = denied.error("TOOL_NOT_AUTHORIZED", -31064)
        assert info["metadata"].get("tool") == "add", info
    # Without the scope (or with a scope merely prefixed alike) the policy does not match.
    for claims in ({}, {"scope": "tools.read"}, {"scope": "tools.callx"}):
        token = mint(RSA, fresh("scoped"), **claims)
        assert (await wire.add(1, 2, token=token)).tool_text() == "3", claims


async def test_require_scopes_answers_the_step_up_challenge(
    main: Stack, web: httpx.AsyncClient
) -> None:
    wire = Wire(web, main)
    for claims in ({}, {"scope": "tools.call"}, {"scp": ["tools.read"]}):
        token = mint(RSA, fresh("stepup"), **claims)
        reply = await wire.echo("no", token=token)
        reply.insufficient_scope(main.metadata_url, "tools.call tools.read")
    assert wire.upstream_saw() == []
    token = mint(RSA, fresh("stepup"), scope="tools.read tools.call extra")
    assert (await wire.echo("yes", token=token)).tool_text() == "yes"


# === 5. API keys =================================================================================


def write_keys(path: Path, keys: Mapping[str, str]) -> None:
    """The key file, replaced atomically: {sha256 hex of the key: agent id}."""
    lines = [f"{hashlib.sha256(k.encode()).hexdigest()}: {a}" for k, a in keys.items()]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("# api keys\n" + "".join(line + "\n" for line in lines))
    os.replace(tmp, path)


@dataclass
class KeyedStacks:
    bearer: Stack
    header: Stack
    key_file: Path


@pytest.fixture(scope="module")
def keyed(run_proxy_module: RunProxy, upstream: ThreadedServer, policies: Path) -> KeyedStacks:
    key_file = policies / "keys.yaml"
    write_keys(key_file, {"k-billing-secret": "billing-key", "k-ops-secret": "ops-key"})
    bearer = policies / "keys-bearer.yaml"
    bearer.write_text(
        f"version: 1\nidentity:\n  required: true\n  api_keys:\n    file: {key_file}\n"
        "policies:\n  - name: billing\n    match: {agents: [billing-*]}\n"
        "    budget: {calls: 2}\n"
    )
    header = policies / "keys-header.yaml"
    header.write_text(
        "version: 1\nidentity:\n  required: true\n  forward_credentials: false\n"
        f"  api_keys:\n    file: {key_file}\n    header: X-Api-Key\n"
    )
    return KeyedStacks(
        Stack(run_proxy_module(upstream.url, "--policy", str(bearer)), upstream),
        Stack(run_proxy_module(upstream.url, "--policy", str(header)), upstream),
        key_file,
    )


async def test_api_key_as_bearer(keyed: KeyedStacks, web: httpx.AsyncClient) -> None:
    wire = Wire(web, keyed.bearer)
    auth = {"authorization": "Bearer k-ops-secret", AGENT: "billing-1"}
    assert (await wire.echo("ops", headers=auth)).tool_text() == "ops"
    [seen] = wire.upstream_saw()
    assert seen.headers.get(AGENT) == "ops-key", seen.headers
    assert seen.headers.get("authorization") == "Bearer k-ops-secret"  # forwarded by default

    # The key's agent is what policies judge: billing-key has 2 calls whatever it claims.
    billing = Wire(web, keyed.bearer)
    auth = {"authorization": "Bearer k-billing-secret", AGENT: "ops-key"}
    assert (await billing.echo("1", headers=auth)).tool_text() == "1"
    assert (await billing.echo("2", headers=auth)).tool_text() == "2"
    (await billing.echo("3", headers=auth)).error("SESSION_BUDGET_EXCEEDED", -31063)

    wrong = Wire(web, keyed.bearer)
    for value in ("Bearer k-ops-secreT", "Bearer " + hashlib.sha256(b"k-ops-secret").hexdigest()):
        reply = await wrong.echo("no", headers={"authorization": value})
        reply.unauthenticated(None, invalid=True)
    # The key belongs in Authorization here: elsewhere it is no credential at all.
    (await wrong.echo("no", headers={"x-api-key": "k-ops-secret"})).unauthenticated(
        None, invalid=False
    )
    assert wrong.upstream_saw() == []


async def test_api_key_in_its_own_header(keyed: KeyedStacks, web: httpx.AsyncClient) -> None:
    wire = Wire(web, keyed.header)
    assert (await wire.echo("raw", headers={"x-api-key": "k-ops-secret"})).tool_text() == "raw"
    [seen] = wire.upstream_saw()
    assert seen.headers.get(AGENT) == "ops-key", seen.headers
    assert "x-api-key" not in seen.headers  # forward_credentials: false

    wrong = Wire(web, keyed.header)
    for value in ("k-ops-secreT", "Bearer k-ops-secret", ""):
        reply = await wrong.echo("no", headers={"x-api-key": value})
        reply.unauthenticated(None, invalid=True)
    (await wrong.echo("no", headers={"authorization": "Bearer k-ops-secret"})).unauthenticated(
        None, invalid=False
    )
    assert wrong.upstream_saw() == []


async def test_api_key_file_is_reloaded(keyed: KeyedStacks, web: httpx.AsyncClient) -> None:
    wire = Wire(web, keyed.bearer)
    added = {"authorization": "Bearer k-new-secret"}
    (await wire.echo("before", headers=added)).unauthenticated(None, invalid=True)
    keys = {"k-billing-secret": "billing-key", "k-ops-secret": "ops-key"}
    write_keys(keyed.key_file, {**keys, "k-new-secret": "new-key"})

    async def works() -> bool:
        reply = await wire.echo("added", headers=added)
        return reply.status == 200

    await eventually(works, "an added key accepted", RELOAD_DEADLINE)
    assert wire.upstream_saw()[-1].headers.get(AGENT) == "new-key"

    write_keys(keyed.key_file, keys)

    async def refused() -> bool:
        reply = await wire.echo("removed", headers=added)
        if reply.status == 200:
            return False
        reply.unauthenticated(None, invalid=True)
        return True

    await eventually(refused, "a removed key refused", RELOAD_DEADLINE)
    # The other keys were never interrupted.
    assert (await wire.echo("ops", headers={"authorization": "Bearer k-ops-secret"})).status == 200


# === 6. the admin lock ===========================================================================


def check_aip193(response: httpx.Response | Any, status: int, code: str, reason: str) -> None:
    assert response.status_code == status, (response.status_code, response.text)
    body = response.json()
    error = body["error"]
    assert (error["code"], error["status"]) == (status, code), error
    [info] = [d for d in error["details"] if d.get("@type") == ERROR_INFO]
    assert (info["reason"], info["domain"]) == (reason, DOMAIN), info


@dataclass
class Admin:
    proxy: Proxy
    token_file: Path


@pytest.fixture(scope="module")
def locked(run_proxy_module: RunProxy, upstream: ThreadedServer, policies: Path) -> Admin:
    token_file = policies / "admin-token"
    token_file.write_text("first-admin-token\n")
    proxy = run_proxy_module(upstream.url, "--admin-token-file", str(token_file))
    return Admin(proxy, token_file)


async def test_admin_sessions_need_the_token(locked: Admin) -> None:
    good = {"authorization": "Bearer first-admin-token"}
    bad_headers: list[dict[str, str]] = [
        {},
        {"authorization": "Bearer second-admin-token"},
        {"authorization": "Bearer first-admin-token-and-more"},
        {"authorization": "Basic Zmlyc3QtYWRtaW4tdG9rZW4="},
        {"authorization": "first-admin-token"},
        {"authorization": "Bearer"},
    ]
    async with httpx.AsyncClient(base_url=locked.proxy.admin_url, timeout=10.0) as admin:
        for headers in bad_headers:
            for method, path, body in (
                ("GET", "/sessions", None),
                ("POST", "/sessions", {"agent": "minted-1"}),
                ("DELETE", "/sessions/awm-whatever", None),
            ):
                response = await admin.request(method, path, json=body, headers=headers)
                check_aip193(response, 401, "UNAUTHENTICATED", "UNAUTHENTICATED")
                assert response.headers.get("www-authenticate", "").startswith("Bearer")

        assert (await admin.get("/sessions", headers=good)).status_code == 200
        minted = await admin.post("/sessions", json={"agent": "minted-1"}, headers=good)
        assert minted.status_code == 201, minted.text
        sid = minted.json()["id"]
        listed = (await admin.get("/sessions", headers=good)).json()["sessions"]
        assert sid in {s["id"] for s in listed}

        # A protocol session too (trusted-header mode here), then the open paths: no
        # token needed, and no session id or credential in them.
        init = await admin.post(
            locked.proxy.url + MCP_PATH,
            json={
                "jsonrpc": "2.0",
                "id": 1,
                "method": "initialize",
                "params": {
                    "protocolVersion": HANDSHAKE,
                    "capabilities": {},
                    "clientInfo": {"name": "warden-identity-e2e", "version": "0"},
                },
            },
            headers={"accept": ACCEPT, AGENT: "metrics-agent"},
        )
        protocol_sid = init.headers.get("mcp-session-id")
        assert init.status_code == 200, init.text
        assert protocol_sid, init.headers
        listed = (await admin.get("/sessions", headers=good)).json()["sessions"]
        assert protocol_sid in {s["id"] for s in listed}
        for path in ("/livez", "/readyz", "/metrics"):
            assert (await admin.get(path)).status_code == 200, path
        metrics = (await admin.get("/metrics")).text
        assert "agent_warden_sessions_live" in metrics
        assert sid not in metrics
        assert protocol_sid not in metrics
        assert "awm-" not in metrics
        assert "first-admin-token" not in metrics

        assert (await admin.delete(f"/sessions/{sid}", headers=good)).status_code == 204
        assert sid not in {
            s["id"] for s in (await admin.get("/sessions", headers=good)).json()["sessions"]
        }


async def raw_admin(proxy: Proxy, request_line: str, headers: str = "") -> tuple[int, bytes]:
    """One request written byte for byte (no client-side path normalisation)."""
    host, port = proxy.admin_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(f"{request_line}\r\nHost: x\r\n{headers}Connection: close\r\n\r\n".encode())
    await writer.drain()
    data = await reader.read()
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), body


async def test_admin_lock_is_not_bypassed_by_spelling_the_path_otherwise(locked: Admin) -> None:
    for target in (
        "/sessions",
        "/sessions/",
        "//sessions",
        "/./sessions",
        "/livez/../sessions",
        "/%73essions",
        "/sessions%2F",
        "/sessions;x",
        "/sessions?x=1",
        "/SESSIONS",
        "http://x/sessions",
    ):
        for method in ("GET", "HEAD", "POST", "DELETE", "OPTIONS"):
            status, body = await raw_admin(locked.proxy, f"{method} {target} HTTP/1.1")
            assert status in (401, 404, 405), (method, target, status, body)


async def test_admin_token_rotation(locked: Admin) -> None:
    async with httpx.AsyncClient(base_url=locked.proxy.admin_url, timeout=10.0) as admin:
        old = {"authorization": "Bearer first-admin-token"}
        new = {"authorization": "Bearer rotated-admin-token-2"}
        assert (await admin.get("/sessions", headers=old)).status_code == 200
        tmp = locked.token_file.with_suffix(".new")
        tmp.write_text("  rotated-admin-token-2 \n")
        os.replace(tmp, locked.token_file)
        try:
            assert (await admin.get("/sessions", headers=new)).status_code == 200
            response = await admin.get("/sessions", headers=old)
            check_aip193(response, 401, "UNAUTHENTICATED", "UNAUTHENTICATED")
        finally:
            locked.token_file.write_text("first-admin-token\n")
        assert (await admin.get("/sessions", headers=old)).status_code == 200


def test_admin_lock_without_a_token_file_is_loopback_only(tmp_path: Path) -> None:
    open_lock = AdminLock(None)
    assert open_lock.allows(None, "10.0.0.5") is None
    assert open_lock.allows("Bearer anything", "10.0.0.5") is None
    assert open_lock.allows(None, "192.168.1.20") is None
    assert open_lock.allows(None, None) is None
    assert open_lock.allows(None, "localhost") is None  # not an address
    for peer in ("127.0.0.1", "127.3.4.5", "::1"):
        assert open_lock.allows(None, peer) is True, peer

    token_file = tmp_path / "token"
    token_file.write_text("s3cret\n")
    with_token = AdminLock(str(token_file))
    with_token.load()
    assert with_token.allows("Bearer s3cret", "10.0.0.5") is True
    assert with_token.allows("bearer  s3cret ", "10.0.0.5") is True
    assert with_token.allows("Bearer s3cre", "127.0.0.1") is False  # a token file: no loopback pass
    assert with_token.allows(None, "127.0.0.1") is False


async def test_admin_forbidden_for_a_foreign_peer_in_process() -> None:
    """The admin app as the proxy builds it, its requests seen as from 10.0.0.5."""
    runtime = Runtime(
        settings=Settings(upstream=URL("http://127.0.0.1:9"), listen=Address(LOOPBACK, 0)),
        policy=DEFAULT_POLICY,
    )
    runtime.set_policy(DEFAULT_POLICY)
    runtime.ready = True
    app = build_admin_app(runtime)

    @aioweb.middleware
    async def from_afar(
        request: aioweb.Request,
        handler: Callable[[aioweb.Request], Awaitable[aioweb.StreamResponse]],
    ) -> aioweb.StreamResponse:
        return await handler(request.clone(remote="10.0.0.5"))

    app.middlewares.insert(0, from_afar)
    runner = aioweb.AppRunner(app, access_log=None)
    await runner.setup()
    site = aioweb.TCPSite(runner, LOOPBACK, 0)
    await site.start()
    try:
        base = f"http://{LOOPBACK}:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
        async with httpx.AsyncClient(base_url=base, timeout=10.0) as admin:
            for method, path in (
                ("GET", "/sessions"),
                ("POST", "/sessions"),
                ("DELETE", "/sessions/x"),
            ):
                response = await admin.request(
                    method, path, json={"agent": "a"} if method == "POST" else None
                )
                check_aip193(response, 403, "PERMISSION_DENIED", "ADMIN_FORBIDDEN")
                assert response.json()["error"]["message"] == "forbidden"
            for path in ("/livez", "/readyz", "/metrics"):
                assert (await admin.get(path)).status_code == 200, path
    finally:
        await runner.cleanup()


# === 7. A2A ======================================================================================


@pytest.fixture(scope="module")
def a2a_stack(
    run_proxy_module: RunProxy, a2a_upstream: str, idp: IdentityProvider, policies: Path
) -> Proxy:
    url = f"http://{LOOPBACK}:{free_port()}"
    path = policies / "a2a.yaml"
    path.write_text("version: 1\n" + jwt_identity(idp.url, required=True))
    return start_at(run_proxy_module, a2a_upstream, url, "--policy", str(path), "--public-url", url)


def a2a_message(text: str) -> SendMessageRequest:
    return SendMessageRequest(
        message=Message(message_id=uuid.uuid4().hex, role=Role.ROLE_USER, parts=[Part(text=text)])
    )


@pytest.mark.parametrize("binding", [TransportProtocol.JSONRPC, TransportProtocol.HTTP_JSON])
async def test_a2a_card_advertises_the_scheme_and_calls_need_the_token(
    a2a_stack: Proxy, a2a_upstream_seen: HeaderRecorder, binding: str
) -> None:
    agent = fresh("a2a")
    token = mint(RSA, agent)
    marker = uuid.uuid4().hex
    headers = {MARKER: marker, "Authorization": f"Bearer {token}", AGENT: "someone-else"}
    async with httpx.AsyncClient(headers=headers, timeout=30.0) as http:
        raw = await http.get(a2a_stack.url + AGENT_CARD_WELL_KNOWN_PATH)
        assert raw.status_code == 200, raw.text
        doc = raw.json()
        assert "agentWarden" in doc["securitySchemes"], doc
        assert doc["securityRequirements"], doc
        card = await A2ACardResolver(http, a2a_stack.url).get_agent_card()
        assert {urlsplit(i.url).netloc for i in card.supported_interfaces} == {
            a2a_stack.url.removeprefix("http://")
        }
        scheme = card.security_schemes["agentWarden"]
        assert scheme.WhichOneof("scheme") == "http_auth_security_scheme", scheme
        assert scheme.http_auth_security_scheme.scheme.lower() == "bearer"
        assert scheme.http_auth_security_scheme.bearer_format == "JWT"
        names = {name for req in card.security_requirements for name in req.schemes}
        assert names == {"agentWarden"}, card.security_requirements

        config = ClientConfig(
            streaming=False,
            supported_protocol_bindings=[binding],
            httpx_client=http,
        )
        client = ClientFactory(config).create(card)
        try:
            events = [e async for e in client.send_message(a2a_message("with a token"))]
        finally:
            await client.close()
    [event] = events
    assert [get_artifact_text(a) for a in event.task.artifacts] == [echo_text("with a token")]
    seen = [r for r in a2a_upstream_seen.requests("POST") if r.headers.get(MARKER) == marker]
    assert seen, "the call never reached the upstream"
    assert {r.headers.get(AGENT) for r in seen} == {agent}

    # Without the token: 401 on the JSON-RPC binding, nothing forwarded.
    quiet = uuid.uuid4().hex
    async with httpx.AsyncClient(timeout=30.0) as http:
        sent = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "SendMessage",
            "params": {
                "message": {
                    "messageId": uuid.uuid4().hex,
                    "role": "ROLE_USER",
                    "parts": [{"text": "no token"}],
                }
            },
        }
        response = await http.post(
            a2a_stack.url + JSONRPC_PATH,
            json=sent,
            headers={MARKER: quiet, "A2A-Version": "1.0", AGENT: agent},
        )
        Reply(sent, response).unauthenticated(None, invalid=False)
        rest = await http.post(
            a2a_stack.url + REST_PREFIX + "/message:send",
            json={"message": sent["params"]["message"]},
            headers={MARKER: quiet, "A2A-Version": "1.0", "authorization": "Bearer nope"},
        )
        check_aip193(rest, 401, "UNAUTHENTICATED", "UNAUTHENTICATED")
        assert challenge_params(rest.headers["www-authenticate"]) == {"error": "invalid_token"}
    assert not [r for r in a2a_upstream_seen.requests() if r.headers.get(MARKER) == quiet]


# === policy reloads that change the identity source ==========================================


async def policy_reloads(proxy: Proxy) -> int:
    async with httpx.AsyncClient(timeout=10.0) as client:
        text = (await client.get(proxy.admin_url + "/metrics")).text
    found = re.search(r'^agent_warden_policy_reloads_total\{result="success"\} (\S+)$', text, re.M)
    return int(float(found[1])) if found else 0


async def test_identity_follows_the_last_policy_reload(
    run_proxy: RunProxy, upstream: ThreadedServer, tmp_path: Path, web: httpx.AsyncClient
) -> None:
    """api_keys -> jwt (its identity provider slow to answer) -> api_keys again, the second
    edit made while the first one's keys are still being fetched. The file says api_keys:
    once every fetch has finished, decisions must follow it (contract, Policy file: a valid
    change applies to new decisions within 2 seconds), not whichever switch ended last."""
    slow = IdentityProvider(RSA, EC)
    slow.delay = 4.0  # under the 5 s fetch timeout: the fetch succeeds, late
    with ThreadedServer(slow.app):
        key_file = tmp_path / "keys.yaml"
        write_keys(key_file, {"k-reload-secret": "reload-key"})
        keys_policy = (
            f"version: 1\nidentity:\n  required: true\n  api_keys:\n    file: {key_file}\n"
        )
        jwt_policy = "version: 1\n" + jwt_identity(slow.url, required=True)
        path = tmp_path / "reload.yaml"
        path.write_text(keys_policy)
        stack = Stack(run_proxy(upstream.url, "--policy", str(path)), upstream)
        wire = Wire(web, stack)
        key = {"authorization": "Bearer k-reload-secret"}
        token = mint(RSA, fresh("reload"))
        assert (await wire.echo("key", headers=key)).status == 200
        (await wire.echo("jwt", token=token)).unauthenticated(None, invalid=True)

        before = await policy_reloads(stack.proxy)
        path.write_text(jwt_policy)

        def reloaded(n: int) -> Callable[[], Awaitable[bool]]:
            async def probe() -> bool:
                return await policy_reloads(stack.proxy) >= n

            return probe

        await eventually(reloaded(before + 1), "the jwt policy loaded", 5.0)
        path.write_text(keys_policy + "# edited again\n")
        await eventually(reloaded(before + 2), "the api_keys policy loaded", 5.0)
        await asyncio.sleep(slow.delay + 1.0)  # the jwt switch's fetch has ended by now
        for _ in range(3):
            by_key = await wire.echo("key", headers=key)
            by_jwt = await wire.echo("jwt", token=token)
            assert (by_key.status, by_jwt.status) == (200, 401), (
                "the policy file says api_keys, yet the API key got "
                f"{by_key.status} and a JWT of the replaced identity provider {by_jwt.status}"
            )
            by_jwt.unauthenticated(None, invalid=True)
            await asyncio.sleep(0.5)


async def test_what_a_client_reads_before_holding_a_credential(
    main: Stack, web: httpx.AsyncClient
) -> None:
    """Identity required: a CORS preflight and the agent card pass without a credential (a
    client learns the scheme from the card), as anonymous; an invalid credential presented
    there is still refused; a path merely starting like the metadata path is not it."""
    preflight = await web.request(
        "OPTIONS",
        main.endpoint,
        headers={"origin": main.proxy.url, "access-control-request-method": "POST"},
    )
    assert preflight.status_code != 401, preflight.text
    card = await web.get(main.proxy.url + "/.well-known/agent-card.json")
    assert card.status_code != 401, card.text  # the MCP upstream has no card: its own 404
    bad = await web.get(
        main.proxy.url + "/.well-known/agent-card.json",
        headers={"authorization": "Bearer not-a-token"},
    )
    assert bad.status_code == 401, bad.text
    lookalike = await web.get(main.proxy.url + WELL_KNOWN + "-evil")
    assert lookalike.status_code == 401, lookalike.text  # not the document: identity applies
