"""Bearer JWTs: every way a token is refused, what a good one yields, and the cache.

Keys come from the JWKS server on loopback (tests/unit/test_identity_jwks.py); tokens
are minted here with PyJWT; the clock is fake.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from proxy.identity import Credential, Rejected, Verifier
from tests.unit import test_identity_jwks as jwks
from tests.unit.test_identity_jwks import (
    AGENT,
    AUDIENCE,
    ISSUER,
    Clock,
    JwksServer,
    Make,
    Signer,
    bearer,
    ec_key,
    ec_signer,
    headers,
    rsa_key,
    rsa_signer,
    write,
)

server, make = jwks.server, jwks.make  # the fixtures, shared

SECRET = b"a shared secret of more than thirty-two bytes"


CLOCK = Clock()
"""The verifiers' clock; each test starts it at the same instant."""


@pytest.fixture(autouse=True)
def _reset_clock() -> None:
    CLOCK.now = Clock().now


@pytest.fixture
async def verifier(server: JwksServer, make: Make) -> Verifier:
    """RS256 and ES256 from the loopback JWKS, leeway 30 s, agent from ``sub``."""
    return await make(CLOCK, jwks_url=server.url)


async def refused(verifier: Verifier, token: str) -> str:
    outcome = await verifier.verify(bearer(token))
    assert isinstance(outcome, Rejected), outcome
    assert outcome.presented
    return outcome.detail


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(header: dict[str, Any], claims: dict[str, Any], sign: Any = None) -> str:
    """A token assembled by hand: ``sign(signing_input) -> signature`` (none: empty)."""
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    signature = sign(signing_input.encode()) if sign is not None else b""
    return f"{signing_input}.{_b64(signature)}"


def claims(**extra: Any) -> dict[str, Any]:
    base = {"iss": ISSUER, "aud": AUDIENCE, "sub": AGENT, "exp": int(CLOCK.now) + 300}
    return {k: v for k, v in (base | extra).items() if v is not None}


# -- good tokens ---------------------------------------------------------------------------


@pytest.mark.parametrize("signer", [rsa_signer(), ec_signer()], ids=["RS256", "ES256"])
async def test_a_valid_token_names_the_agent(verifier: Verifier, signer: Signer) -> None:
    outcome = await verifier.verify(bearer(signer.token(CLOCK)))
    assert isinstance(outcome, Credential)
    assert (outcome.agent, outcome.source, outcome.scopes) == (AGENT, "jwt", frozenset())
    assert outcome.claims["iss"] == ISSUER
    with pytest.raises(TypeError):
        outcome.claims["sub"] = "someone-else"  # type: ignore[index]


@pytest.mark.parametrize(
    ("extra", "scopes"),
    [
        ({"scope": "tools.read tools.call"}, {"tools.read", "tools.call"}),
        ({"scope": "  tools.read   "}, {"tools.read"}),
        ({"scp": ["tools.read", "tools.call"]}, {"tools.read", "tools.call"}),
        ({"scp": "tools.read tools.call"}, {"tools.read", "tools.call"}),
        ({"scope": "tools.read", "scp": ["ignored"]}, {"tools.read"}),
        ({"scope": ""}, set()),
    ],
)
async def test_scopes_come_from_scope_or_scp(
    verifier: Verifier, extra: dict[str, Any], scopes: set[str]
) -> None:
    outcome = await verifier.verify(bearer(rsa_signer().token(CLOCK, **extra)))
    assert isinstance(outcome, Credential)
    assert outcome.scopes == scopes


@pytest.mark.parametrize("extra", [{"scope": 7}, {"scp": ["a", 1]}, {"scope": {"a": 1}}])
async def test_a_malformed_scope_claim_is_refused(
    verifier: Verifier, extra: dict[str, Any]
) -> None:
    detail = await refused(verifier, rsa_signer().token(CLOCK, **extra))
    assert detail == "scope claim is neither a string nor a list of strings"


async def test_an_audience_list_needs_one_configured_audience(verifier: Verifier) -> None:
    token = rsa_signer().token(CLOCK, aud=["https://other.example.com", AUDIENCE])
    assert isinstance(await verifier.verify(bearer(token)), Credential)


async def test_the_agent_comes_from_the_configured_claim(server: JwksServer, make: Make) -> None:
    verifier = await make(CLOCK, jwks_url=server.url, agent_claim="azp")
    outcome = await verifier.verify(bearer(rsa_signer().token(CLOCK, azp="client-42")))
    assert isinstance(outcome, Credential)
    assert outcome.agent == "client-42"
    detail = await refused(verifier, rsa_signer().token(CLOCK))
    assert detail == "claim 'azp' not a non-empty string"


async def test_a_token_without_kid_is_verified_by_the_one_key_that_fits(
    verifier: Verifier,
) -> None:
    token = Signer(None, "ES256", ec_key(1)).token(CLOCK)  # one EC key is published
    assert isinstance(await verifier.verify(bearer(token)), Credential)


async def test_a_token_without_kid_is_refused_when_several_keys_fit(
    server: JwksServer,
    make: Make,
) -> None:
    server.keys.append(rsa_signer("rsa-2", n=2).jwk())
    verifier = await make(CLOCK, jwks_url=server.url)
    detail = await refused(verifier, Signer(None, "RS256", rsa_key(1)).token(CLOCK))
    assert detail == "token has no kid and 2 keys fit RS256"


# -- nothing presented, or not a Bearer token ------------------------------------------------


async def test_no_authorization_header_is_nothing_presented(verifier: Verifier) -> None:
    assert await verifier.verify(headers()) is None
    assert await verifier.verify(headers(("X-Agent-Id", "billing-7"))) is None


@pytest.mark.parametrize(
    ("pairs", "detail"),
    [
        ((("Authorization", "Basic YWxhZGRpbjpvcGVuc2VzYW1l"),), "scheme 'Basic' is not Bearer"),
        ((("Authorization", ""),), "scheme '' is not Bearer"),
        ((("Authorization", "Bearer"),), "empty Bearer credentials"),
        ((("Authorization", "Bearer a b"),), "Bearer credentials hold white space"),
        ((("Authorization", "Bearer " + "a" * 20000),), "longer than 16384 characters"),
        ((("Authorization", "Bearer a"), ("Authorization", "Bearer b")), "more than one"),
    ],
)
async def test_what_is_not_one_bearer_token_is_refused(
    verifier: Verifier, pairs: tuple[tuple[str, str], ...], detail: str
) -> None:
    outcome = await verifier.verify(headers(*pairs))
    assert isinstance(outcome, Rejected)
    assert outcome.presented
    assert detail in outcome.detail


async def test_the_scheme_is_case_insensitive(verifier: Verifier) -> None:
    token = rsa_signer().token(CLOCK)
    outcome = await verifier.verify(headers(("authorization", f"bEaReR  {token} ")))
    assert isinstance(outcome, Credential)


@pytest.mark.parametrize("token", ["abc", "a.b.c", "....", "e30.e30.", "eyJhbGciOiJSUzI1NiJ9"])
async def test_a_malformed_token_is_refused(verifier: Verifier, token: str) -> None:
    detail = await refused(verifier, token)
    assert detail.startswith(("malformed token", "algorithm"))


# -- times ---------------------------------------------------------------------------------


async def test_an_expired_token_is_refused_past_the_leeway(verifier: Verifier) -> None:
    token = rsa_signer().token(CLOCK, exp=int(CLOCK.now) - 29)
    assert isinstance(await verifier.verify(bearer(token)), Credential)  # within 30 s leeway
    token = rsa_signer().token(CLOCK, exp=int(CLOCK.now) - 30)
    assert await refused(verifier, token) == "token expired"


async def test_a_token_not_yet_valid_is_refused_past_the_leeway(verifier: Verifier) -> None:
    soon = rsa_signer().token(CLOCK, nbf=int(CLOCK.now) + 30)
    assert isinstance(await verifier.verify(bearer(soon)), Credential)
    later = rsa_signer().token(CLOCK, nbf=int(CLOCK.now) + 31)
    assert await refused(verifier, later) == "token not yet valid (nbf in the future)"
    issued = rsa_signer().token(CLOCK, iat=int(CLOCK.now) + 31)
    assert await refused(verifier, issued) == "token not yet valid (iat in the future)"
    CLOCK.advance(1)
    assert isinstance(await verifier.verify(bearer(later)), Credential)


@pytest.mark.parametrize(
    ("extra", "detail"),
    [
        ({"exp": None}, 'Token is missing the "exp" claim'),
        ({"exp": "tomorrow"}, "exp is not a number"),
        ({"exp": True}, "exp is not a number"),
        ({"nbf": "now"}, "nbf is not a number"),
        ({"iat": [1]}, "iat is not a number"),
    ],
)
async def test_times_must_be_numbers_and_exp_is_required(
    verifier: Verifier, extra: dict[str, Any], detail: str
) -> None:
    assert detail in await refused(verifier, rsa_signer().token(CLOCK, **extra))


# -- issuer, audience, agent ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "detail"),
    [
        ({"aud": "https://agents.example.com/other"}, "Audience doesn't match"),
        ({"aud": ["https://a.example.com", "https://b.example.com"]}, "Audience doesn't match"),
        ({"aud": None}, 'Token is missing the "aud" claim'),
        ({"iss": "https://evil.example.com/"}, "Invalid issuer"),
        ({"iss": None}, 'Token is missing the "iss" claim'),
        ({"sub": None}, "claim 'sub' not a non-empty string"),
        ({"sub": ""}, "claim 'sub' not a non-empty string"),
        ({"sub": "   "}, "claim 'sub' not a non-empty string"),
        ({"sub": "agent\r\nX-Injected: 1"}, "claim 'sub' holds control characters"),
        ({"sub": "a" * 257}, "claim 'sub' longer than 256 characters"),
    ],
)
async def test_a_token_for_someone_else_or_naming_no_agent_is_refused(
    verifier: Verifier, extra: dict[str, Any], detail: str
) -> None:
    assert detail in await refused(verifier, rsa_signer().token(CLOCK, **extra))


# -- signatures and algorithms -------------------------------------------------------------


async def test_a_bad_signature_is_refused(verifier: Verifier) -> None:
    impostor = Signer("rsa-1", "RS256", rsa_key(9))  # the published kid, another private key
    assert (
        await refused(verifier, impostor.token(CLOCK))
        == "invalid token: Signature verification failed"
    )
    head, _, signature = rsa_signer().token(CLOCK).rpartition(".")
    header, _ = head.split(".")
    tampered = f"{header}.{_b64(json.dumps(claims(sub='admin')).encode())}.{signature}"
    assert await refused(verifier, tampered) == "invalid token: Signature verification failed"


async def test_alg_none_is_refused(verifier: Verifier) -> None:
    token = forge({"alg": "none", "typ": "JWT", "kid": "rsa-1"}, claims())
    assert await refused(verifier, token) == "algorithm 'none' is not accepted"


async def test_hs256_signed_with_the_public_key_pem_is_refused(
    verifier: Verifier,
    tmp_path: Path,
    make: Make,
) -> None:
    pem = (
        rsa_key(1)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )

    def sign(data: bytes) -> bytes:
        return hmac.new(pem, data, hashlib.sha256).digest()

    token = forge({"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}, claims(), sign)
    assert await refused(verifier, token) == "algorithm 'HS256' is not accepted"

    secret = tmp_path / "secret"
    secret.write_bytes(SECRET + b"\n")
    hs = await make(CLOCK, secret_file=str(secret), algorithms=("HS256",))
    assert await refused(hs, token) == "invalid token: Signature verification failed"
    rs = rsa_signer().token(CLOCK)  # and an RS256 token is no good to an HS verifier
    assert await refused(hs, rs) == "algorithm 'RS256' is not accepted"


@pytest.mark.parametrize(
    ("signer", "alg", "detail"),
    [
        (rsa_signer(), "PS256", "algorithm 'PS256' is not accepted"),
        (rsa_signer(), "RS512", "algorithm 'RS512' is not accepted"),
        (Signer("ec-1", "ES384", ec_key(1, "P-384")), "ES384", "algorithm 'ES384' is not accepted"),
        (Signer("ec-1", "RS256", rsa_key(1)), "RS256", "key 'ec-1' does not fit algorithm RS256"),
        (Signer("rsa-1", "ES256", ec_key(1)), "ES256", "key 'rsa-1' does not fit algorithm ES256"),
    ],
)
async def test_an_algorithm_not_configured_or_not_fitting_the_key_is_refused(
    verifier: Verifier, signer: Signer, alg: str, detail: str
) -> None:
    assert await refused(verifier, signer.token(CLOCK, alg=alg)) == detail


async def test_an_algorithm_is_accepted_once_configured(server: JwksServer, make: Make) -> None:
    verifier = await make(CLOCK, jwks_url=server.url, algorithms=("PS256",))
    assert isinstance(
        await verifier.verify(bearer(rsa_signer().token(CLOCK, alg="PS256"))), Credential
    )
    assert await refused(verifier, rsa_signer().token(CLOCK)) == "algorithm 'RS256' is not accepted"


async def test_a_kid_that_is_not_a_string_is_refused(verifier: Verifier) -> None:
    token = forge({"alg": "RS256", "kid": 7}, claims())
    assert (await refused(verifier, token)).startswith("malformed token")


async def test_an_unknown_kid_is_refused(verifier: Verifier) -> None:
    token = rsa_signer("who-knows", n=2).token(CLOCK)
    assert await refused(verifier, token) == "unknown kid 'who-knows'"


# -- the HMAC secret file ------------------------------------------------------------------


async def test_hs256_verifies_with_the_secret_file_and_follows_its_changes(
    tmp_path: Path,
    make: Make,
) -> None:
    path = tmp_path / "secret"
    write(path, SECRET + b"\n")
    verifier = await make(CLOCK, secret_file=str(path), algorithms=("HS256",))
    token = jwt.encode(claims(), SECRET, algorithm="HS256")
    assert isinstance(await verifier.verify(bearer(token)), Credential)

    other = b"another shared secret, also long enough!"
    write(path, other)
    CLOCK.advance(1)  # the cache is emptied with the secret that verified the token
    assert await refused(verifier, token) == "invalid token: Signature verification failed"
    assert isinstance(
        await verifier.verify(bearer(jwt.encode(claims(), other, algorithm="HS256"))), Credential
    )
    write(path, b"short")  # refused: the last good secret stays
    CLOCK.advance(1)
    assert isinstance(
        await verifier.verify(bearer(jwt.encode(claims(), other, algorithm="HS256"))), Credential
    )


async def test_a_short_or_missing_secret_refuses_every_token(tmp_path: Path, make: Make) -> None:
    path = tmp_path / "secret"
    path.write_bytes(b"too short\n")
    short = await make(CLOCK, secret_file=str(path), algorithms=("HS256",))
    token = jwt.encode(claims(), SECRET, algorithm="HS256")
    assert await refused(short, token) == "no HMAC secret available"
    missing = await make(CLOCK, secret_file=str(tmp_path / "none"), algorithms=("HS256",))
    assert await refused(missing, token) == "no HMAC secret available"


# -- the cache -----------------------------------------------------------------------------


async def test_a_repeated_token_is_answered_from_the_cache_until_it_expires(
    server: JwksServer,
    make: Make,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    verifier = await make(CLOCK, jwks_url=server.url, leeway=0.0)
    token = rsa_signer().token(CLOCK, exp=int(CLOCK.now) + 60)
    first = await verifier.verify(bearer(token))
    assert isinstance(first, Credential)

    decodes: list[str] = []
    real = jwt.PyJWT.decode

    def counting(self: jwt.PyJWT, token: str, *args: Any, **kwargs: Any) -> Any:
        decodes.append(token)
        return real(self, token, *args, **kwargs)

    monkeypatch.setattr(jwt.PyJWT, "decode", counting)
    CLOCK.advance(59)
    assert await verifier.verify(bearer(token)) is first
    assert decodes == []
    CLOCK.advance(1)  # at exp the entry is dropped, and the token is verified again
    assert await refused(verifier, token) == "token expired"
    assert decodes == [token]
