"""Signing keys: JWKS parsing, a real JWKS server on loopback, and a watched JWKS file.

The helpers at the top (keys, tokens, the server, the fake clock) serve the JWT tests
too. The clock is fake: tests move it, never sleep; waits for background work are
bounded and never measure time.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.identity import Credential, Rejected, Verifier, build_verifier
from proxy.identity.jwks import MAX_KEYS, parse_jwks
from proxy.identity.remote import (
    DEFAULT_MAX_AGE,
    MAX_JWKS_BYTES,
    MAX_MAX_AGE,
    MAX_STALE,
    MIN_INTERVAL,
    MIN_MAX_AGE,
    max_age,
)
from proxy.policy.model import Identity, JwtConfig
from tests.upstreams.serve import LOOPBACK, free_port

ISSUER = "https://idp.example.com/"
AUDIENCE = "https://agents.example.com/billing"
AGENT = "billing-7"
WAIT = 10.0  # the bound of every wait for background work; never a measured timing
NO_KEYS = Rejected(True, "no signing keys available")


@dataclass
class Clock:
    now: float = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@cache
def rsa_key(n: int) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@cache
def ec_key(n: int, curve: str = "P-256") -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1() if curve == "P-384" else ec.SECP256R1())


@dataclass(frozen=True)
class Signer:
    """A private key that mints tokens, and its public JWK."""

    kid: str | None
    alg: str
    private: Any

    def jwk(self, **extra: Any) -> dict[str, Any]:
        public = self.private.public_key()
        if isinstance(public, rsa.RSAPublicKey):
            doc = RSAAlgorithm.to_jwk(public, as_dict=True)
        elif isinstance(public, ec.EllipticCurvePublicKey):
            doc = ECAlgorithm.to_jwk(public, as_dict=True)
        else:
            doc = OKPAlgorithm.to_jwk(public, as_dict=True)
        return {**doc, "kid": self.kid, "use": "sig", **extra}

    def token(self, clock: Clock, *, alg: str | None = None, **claims: Any) -> str:
        """A token valid for 5 minutes at ``clock``; a claim given as None is left out."""
        payload = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": AGENT,
            "iat": int(clock.now),
            "exp": int(clock.now) + 300,
            **claims,
        }
        payload = {k: v for k, v in payload.items() if v is not None}
        headers = {"kid": self.kid} if self.kid is not None else None
        return jwt.encode(payload, self.private, algorithm=alg or self.alg, headers=headers)


def rsa_signer(kid: str = "rsa-1", n: int = 1) -> Signer:
    return Signer(kid, "RS256", rsa_key(n))


def ec_signer(kid: str = "ec-1", n: int = 1) -> Signer:
    return Signer(kid, "ES256", ec_key(n))


def bearer(token: str) -> CIMultiDictProxy[str]:
    return headers(("Authorization", f"Bearer {token}"))


def headers(*pairs: tuple[str, str]) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict(pairs))


async def until(condition: Callable[[], bool], what: str) -> None:
    deadline = asyncio.get_running_loop().time() + WAIT
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"not within {WAIT} s: {what}")
        await asyncio.sleep(0.005)


@dataclass
class JwksServer:
    """An identity provider's JWKS endpoint on loopback that counts the fetches it answers."""

    keys: list[dict[str, Any]] = field(default_factory=list)
    cache_control: str | None = None
    status: int = 200
    body: bytes | None = None
    """Served instead of the keys when set."""
    hold: asyncio.Event | None = None
    """When set, every answer waits for it."""
    fetches: int = 0
    port: int = field(default_factory=free_port)
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}/jwks.json"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/jwks.json", self._serve)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, LOOPBACK, self.port, reuse_address=True).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _serve(self, request: web.Request) -> web.Response:
        self.fetches += 1
        if self.hold is not None:
            await self.hold.wait()
        body = self.body if self.body is not None else json.dumps({"keys": self.keys}).encode()
        extra = {"Cache-Control": self.cache_control} if self.cache_control else {}
        return web.Response(
            status=self.status, body=body, content_type="application/json", headers=extra
        )


Make = Callable[..., Awaitable[Verifier]]


@pytest.fixture
async def server() -> AsyncIterator[JwksServer]:
    """The IdP, up, publishing the RSA and EC keys of ``rsa_signer()`` and ``ec_signer()``."""
    idp = JwksServer(keys=[rsa_signer().jwk(), ec_signer().jwk()])
    await idp.start()
    yield idp
    await idp.stop()


@pytest.fixture
async def make() -> AsyncIterator[Make]:
    """``await make(clock, jwks_url=..., **jwt_config)``: a started verifier."""
    made: list[Verifier] = []
    async with aiohttp.ClientSession() as client:

        async def build(clock: Clock, **config: Any) -> Verifier:
            settings: dict[str, Any] = {"issuers": (ISSUER,), "audiences": (AUDIENCE,)}
            verifier = build_verifier(
                Identity(jwt=JwtConfig(**(settings | config))), client, clock=clock
            )
            assert verifier is not None
            await verifier.start()
            made.append(verifier)
            return verifier

        yield build
        for verifier in made:
            await verifier.aclose()


async def agent_of(verifier: Verifier, token: str) -> str | Rejected | None:
    outcome = await verifier.verify(bearer(token))
    return outcome.agent if isinstance(outcome, Credential) else outcome


# -- parsing -----------------------------------------------------------------------------


def _doc(*keys: dict[str, Any]) -> bytes:
    return json.dumps({"keys": list(keys)}).encode()


def test_a_key_is_kept_for_the_configured_algorithms_it_fits() -> None:
    ed = Signer("ed", "EdDSA", ed25519.Ed25519PrivateKey.generate())
    p384 = Signer("p384", "ES384", ec_key(1, "P-384"))
    configured = ("RS256", "PS256", "ES256", "ES384", "EdDSA")
    keys = parse_jwks(_doc(rsa_signer().jwk(), ec_signer().jwk(), p384.jwk(), ed.jwk()), configured)
    assert [(k.kid, k.algorithms) for k in keys.keys] == [
        ("rsa-1", ("RS256", "PS256")),
        ("ec-1", ("ES256",)),
        ("p384", ("ES384",)),
        ("ed", ("EdDSA",)),
    ]
    assert keys.skipped == ()
    declared = parse_jwks(_doc(rsa_signer().jwk(alg="PS256")), configured)
    assert declared.keys[0].algorithms == ("PS256",)
    assert keys.find("rsa-1", "PS256") == (keys.keys[0],)
    assert keys.find("rsa-1", "ES256") == ()
    assert keys.find(None, "ES256") == (keys.keys[1],)


@pytest.mark.parametrize(
    ("jwk", "reason"),
    [
        (ec_signer().jwk(), "fits none of the algorithms"),  # EC key, only RS256 configured
        (Signer("p384", "ES384", ec_key(1, "P-384")).jwk(), "fits none"),
        (rsa_signer().jwk(alg="RS512"), "fits none"),  # declares an algorithm not configured
        (rsa_signer().jwk(use="enc"), "use is 'enc'"),
        (rsa_signer().jwk(key_ops=["encrypt"]), "key_ops lack 'verify'"),
        (rsa_signer().jwk(d="AQAB"), "private"),
        ({"kty": "oct", "k": "c2VjcmV0", "kid": "hs"}, "private or symmetric"),
        ({"kty": "RSA", "kid": "x", "n": "AQAB"}, "cannot load"),
        ({"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"}, "cannot load"),
        ({"kty": "XYZ"}, "kty 'XYZ' not supported"),
        ({**rsa_signer().jwk(), "kid": 7}, "kid is not a string"),
        ("a string", "not an object"),
    ],
)
def test_a_key_that_cannot_verify_is_skipped_with_a_reason(jwk: Any, reason: str) -> None:
    keys = parse_jwks(_doc(jwk, rsa_signer("good").jwk()), ("RS256",))
    assert [k.kid for k in keys.keys] == ["good"]
    assert len(keys.skipped) == 1
    assert reason in keys.skipped[0]


def test_a_short_rsa_key_is_skipped() -> None:
    short = Signer("short", "RS256", rsa.generate_private_key(65537, 1024))
    keys = parse_jwks(_doc(short.jwk()), ("RS256",))
    assert keys.keys == ()
    assert "1024 bits" in keys.skipped[0]


@pytest.mark.parametrize(
    "data",
    [b"not json", b"[]", b'{"keys": {}}', b'{"other": []}', b"[" * 100_000, _doc(*[{}] * 257)],
)
def test_a_document_that_is_not_a_key_set_is_refused(data: bytes) -> None:
    assert MAX_KEYS == 256
    with pytest.raises(ValueError, match=r"not JSON|not a JWK Set|more than"):
        parse_jwks(data, ("RS256",))


@pytest.mark.parametrize(
    ("values", "seconds"),
    [
        ([], DEFAULT_MAX_AGE),
        (["public, max-age=600"], 600.0),
        (['max-age="900"'], 900.0),
        (["max-age=5"], MIN_MAX_AGE),
        (["max-age=86400"], MAX_MAX_AGE),
        (["max-age=600, no-cache"], MIN_MAX_AGE),
        (["no-store"], MIN_MAX_AGE),
        (["public", "max-age=1200"], 1200.0),
        (["max-age=nonsense"], DEFAULT_MAX_AGE),
    ],
)
def test_freshness_follows_cache_control_within_bounds(values: list[str], seconds: float) -> None:
    assert max_age(headers(*(("Cache-Control", v) for v in values))) == seconds


def test_freshness_counts_the_age_of_a_cached_answer() -> None:
    assert max_age(headers(("Cache-Control", "max-age=600"), ("Age", "100"))) == 500.0
    assert max_age(headers(("Cache-Control", "max-age=600"), ("Age", "590"))) == MIN_MAX_AGE


# -- a JWKS over HTTP ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cache_control", "fresh_for"),
    [(None, DEFAULT_MAX_AGE), ("max-age=120", 120.0), ("max-age=1", MIN_MAX_AGE)],
)
async def test_the_key_set_is_fetched_once_and_refreshed_when_it_expires(
    server: JwksServer, make: Make, cache_control: str | None, fresh_for: float
) -> None:
    server.cache_control = cache_control
    clock = Clock()
    verifier = await make(clock, jwks_url=server.url)
    token = rsa_signer().token(clock, exp=int(clock.now) + 86400)
    assert server.fetches == 1
    for _ in range(3):
        assert await agent_of(verifier, token) == AGENT
    clock.advance(fresh_for - 1)
    assert await agent_of(verifier, ec_signer().token(clock)) == AGENT
    assert server.fetches == 1

    clock.advance(2)  # expired: the set in force still verifies while the refresh runs
    assert await agent_of(verifier, token) == AGENT
    await until(lambda: server.fetches == 2, "the refresh on expiry")


async def test_freshness_is_at_most_an_hour(server: JwksServer, make: Make) -> None:
    server.cache_control = "max-age=31536000"
    clock = Clock()
    verifier = await make(clock, jwks_url=server.url)
    clock.advance(MAX_MAX_AGE - 1)
    assert await agent_of(verifier, rsa_signer().token(clock)) == AGENT
    assert server.fetches == 1
    clock.advance(2)
    assert await agent_of(verifier, rsa_signer().token(clock)) == AGENT
    await until(lambda: server.fetches == 2, "the refresh after an hour")


async def test_a_rotated_key_is_accepted_within_the_refresh_bound(
    server: JwksServer, make: Make
) -> None:
    clock = Clock()
    verifier = await make(clock, jwks_url=server.url)
    new = rsa_signer("rsa-2", n=2)
    server.keys.append(new.jwk())  # the IdP rotates right after the proxy fetched

    clock.advance(1)
    assert await agent_of(verifier, new.token(clock)) == Rejected(True, "unknown kid 'rsa-2'")
    clock.advance(MIN_INTERVAL - 2)
    assert await agent_of(verifier, new.token(clock)) == Rejected(True, "unknown kid 'rsa-2'")
    assert server.fetches == 1  # an unknown kid fetches at most once per MIN_INTERVAL

    clock.advance(1)
    assert await agent_of(verifier, new.token(clock)) == AGENT
    assert server.fetches == 2
    assert MIN_INTERVAL + 5.0 <= 15.0  # the next fetch starts within 10 s, ends within 5 s


async def test_fifty_concurrent_verifications_share_one_fetch(
    server: JwksServer, make: Make
) -> None:
    clock = Clock()
    verifier = await make(clock, jwks_url=server.url)
    new = ec_signer("ec-2", n=2)
    server.keys.append(new.jwk())
    clock.advance(MIN_INTERVAL)
    token = new.token(clock)
    server.hold = asyncio.Event()
    tasks = [asyncio.create_task(agent_of(verifier, token)) for _ in range(50)]
    await until(lambda: server.fetches == 2, "the refresh to reach the IdP")
    for _ in range(10):
        await asyncio.sleep(0)  # let every verification reach the fetch in flight
    server.hold.set()
    assert await asyncio.gather(*tasks) == [AGENT] * 50
    assert server.fetches == 2


async def test_made_up_kids_cost_one_fetch_per_interval(server: JwksServer, make: Make) -> None:
    clock = Clock()
    verifier = await make(clock, jwks_url=server.url)
    clock.advance(MIN_INTERVAL)
    forged = [rsa_signer(f"forged-{n}", n=2).token(clock) for n in range(50)]
    outcomes = await asyncio.gather(*(verifier.verify(bearer(t)) for t in forged))
    assert all(isinstance(o, Rejected) and o.detail.startswith("unknown kid") for o in outcomes)
    assert server.fetches == 2
    outcomes = await asyncio.gather(*(verifier.verify(bearer(t)) for t in forged))
    assert server.fetches == 2


async def test_an_idp_down_at_start_refuses_tokens_until_it_is_up(make: Make) -> None:
    idp = JwksServer(keys=[rsa_signer().jwk()])  # not started: connections are refused
    clock = Clock()
    verifier = await make(clock, jwks_url=idp.url)  # start() does not raise
    assert await agent_of(verifier, rsa_signer().token(clock)) == NO_KEYS

    await idp.start()
    try:
        clock.advance(MIN_INTERVAL - 1)
        assert await agent_of(verifier, rsa_signer().token(clock)) == NO_KEYS
        assert idp.fetches == 0  # still within the interval since the failed attempt
        clock.advance(1)
        assert await agent_of(verifier, rsa_signer().token(clock)) == AGENT
        assert idp.fetches == 1
    finally:
        await idp.stop()


async def test_a_set_is_served_stale_while_the_idp_is_down_then_dropped(
    server: JwksServer, make: Make, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="agent_warden.identity")
    clock = Clock()
    verifier = await make(clock, jwks_url=server.url)
    token = rsa_signer().token(clock, exp=int(clock.now) + 86400)
    assert await agent_of(verifier, token) == AGENT  # and cached
    await server.stop()

    def failures() -> int:
        return sum(r.getMessage().startswith("JWKS fetch failed") for r in caplog.records)

    clock.advance(DEFAULT_MAX_AGE + 1)
    assert await agent_of(verifier, token) == AGENT
    await until(lambda: failures() == 1, "the failed refresh logged")
    clock.advance(MAX_STALE - 2)
    assert await agent_of(verifier, token) == AGENT
    assert await agent_of(verifier, ec_signer().token(clock)) == AGENT
    await until(lambda: failures() == 2, "the second failed refresh logged")

    clock.advance(1)  # past the bound: dropped, and the cached token goes with it
    assert await agent_of(verifier, token) == NO_KEYS
    assert any("dropped" in r.getMessage() for r in caplog.records)

    await server.start()
    clock.advance(MIN_INTERVAL)
    assert await agent_of(verifier, token) == AGENT


@pytest.mark.parametrize(
    "fault",
    [
        {"status": 500},
        {"status": 404},
        {"body": b"<html>maintenance</html>"},
        {"body": b'{"keys": "none"}'},
        {"body": b" " * (MAX_JWKS_BYTES + 1)},
    ],
)
async def test_a_bad_answer_keeps_the_last_good_set(
    server: JwksServer, make: Make, fault: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="agent_warden.identity")
    clock = Clock()
    verifier = await make(clock, jwks_url=server.url)
    for name, value in fault.items():
        setattr(server, name, value)
    clock.advance(DEFAULT_MAX_AGE + 1)
    assert await agent_of(verifier, rsa_signer().token(clock)) == AGENT
    await until(lambda: server.fetches == 2, "the refresh")
    await until(lambda: "last good set is kept" in caplog.text, "the failure logged")
    assert await agent_of(verifier, rsa_signer().token(clock)) == AGENT


async def test_a_key_removed_from_the_set_stops_verifying_cached_tokens(
    server: JwksServer, make: Make, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="agent_warden.identity")
    clock = Clock()
    verifier = await make(clock, jwks_url=server.url)
    token = rsa_signer().token(clock, exp=int(clock.now) + 86400)
    assert await agent_of(verifier, token) == AGENT
    server.keys = [ec_signer().jwk()]  # the RSA key is revoked
    clock.advance(DEFAULT_MAX_AGE + 1)
    await verifier.verify(bearer(token))
    await until(lambda: caplog.text.count("JWKS loaded") == 2, "the new set installed")
    assert await agent_of(verifier, token) == Rejected(True, "unknown kid 'rsa-1'")


async def test_closing_ends_a_fetch_in_flight_without_raising_in_its_waiters(
    server: JwksServer, make: Make
) -> None:
    clock = Clock()
    verifier = await make(clock, jwks_url=server.url)
    clock.advance(MIN_INTERVAL)
    server.hold = asyncio.Event()
    waiting = asyncio.create_task(agent_of(verifier, rsa_signer("new", n=2).token(clock)))
    await until(lambda: server.fetches == 2, "the fetch in flight")
    await verifier.aclose()
    assert await waiting == Rejected(True, "unknown kid 'new'")
    server.hold.set()


# -- a JWKS file -----------------------------------------------------------------------------


def write(path: Path, data: bytes) -> None:
    """Replace the file atomically, as config tools do."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


async def test_a_jwks_file_is_read_again_when_it_changes(tmp_path: Path, make: Make) -> None:
    path = tmp_path / "jwks.json"
    write(path, _doc(rsa_signer().jwk()))
    clock = Clock()
    verifier = await make(clock, jwks_file=str(path))
    new = ec_signer("ec-2", n=2)
    assert await agent_of(verifier, rsa_signer().token(clock)) == AGENT
    assert await agent_of(verifier, new.token(clock)) == Rejected(True, "unknown kid 'ec-2'")

    write(path, _doc(rsa_signer().jwk(), new.jwk()))
    clock.advance(0.5)  # looked at no more than once a second
    assert await agent_of(verifier, new.token(clock)) == Rejected(True, "unknown kid 'ec-2'")
    clock.advance(0.5)
    assert await agent_of(verifier, new.token(clock)) == AGENT

    write(path, b'{"keys": [')  # unparseable: the last good set stays
    clock.advance(1)
    assert await agent_of(verifier, new.token(clock)) == AGENT
    path.unlink()
    clock.advance(1)
    assert await agent_of(verifier, new.token(clock)) == AGENT


async def test_a_missing_jwks_file_refuses_tokens_until_it_appears(
    tmp_path: Path, make: Make
) -> None:
    path = tmp_path / "jwks.json"
    clock = Clock()
    verifier = await make(clock, jwks_file=str(path))
    assert await agent_of(verifier, rsa_signer().token(clock)) == NO_KEYS
    write(path, _doc(rsa_signer().jwk()))
    clock.advance(1)
    assert await agent_of(verifier, rsa_signer().token(clock)) == AGENT
