"""What identifying a caller costs: µs per verification, first time and cached.

    .venv/bin/python bench/identity.py [--tokens N] [--keys N]

Verifies N distinct tokens (RS256 with a 2048-bit key, ES256 on P-256) through the
verifier the proxy builds, keys from a JWKS file (the source does not change the cost
of a verification), then the same N tokens again (answered by the cache). API keys are
looked up in a file of ``--keys`` keys; they are never cached (a SHA-256 and a table
lookup each time). Prints a Markdown table with the median and the 99th percentile.
Never part of the tests; no network.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from multidict import CIMultiDict, CIMultiDictProxy

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from proxy.identity import Credential, Verifier, build_verifier  # noqa: E402
from proxy.policy.model import ApiKeysConfig, Identity, JwtConfig  # noqa: E402

ISSUER = "https://idp.example.com/"
AUDIENCE = "https://agents.example.com/billing"


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


async def timed(verifier: Verifier, presented: list[CIMultiDictProxy[str]]) -> list[float]:
    """Seconds each verification took; every one must succeed."""
    samples = []
    for headers in presented:
        start = time.perf_counter()
        outcome = await verifier.verify(headers)
        samples.append(time.perf_counter() - start)
        assert isinstance(outcome, Credential), outcome
    return samples


def bearer(credential: str) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict([("Authorization", f"Bearer {credential}")]))


def tokens(alg: str, private: Any, n: int) -> list[CIMultiDictProxy[str]]:
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + 3600, "scope": "a b"}
    return [
        bearer(jwt.encode(claims | {"sub": f"agent-{i}"}, private, alg, headers={"kid": alg}))
        for i in range(n)
    ]


async def bench_jwt(
    client: aiohttp.ClientSession, tmp: Path, n: int
) -> list[tuple[str, list[float], list[float] | None]]:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    jwks = {
        "keys": [
            RSAAlgorithm.to_jwk(rsa_key.public_key(), as_dict=True) | {"kid": "RS256"},
            ECAlgorithm.to_jwk(ec_key.public_key(), as_dict=True) | {"kid": "ES256"},
        ]
    }
    path = tmp / "jwks.json"
    path.write_text(json.dumps(jwks))
    config = JwtConfig(
        issuers=(ISSUER,), audiences=(AUDIENCE,), jwks_file=str(path), algorithms=("RS256", "ES256")
    )
    rows: list[tuple[str, list[float], list[float] | None]] = []
    for alg, private in (("ES256", ec_key), ("RS256", rsa_key)):
        verifier = build_verifier(Identity(jwt=config), client)
        assert verifier is not None
        await verifier.start()
        presented = tokens(alg, private, n)
        first = await timed(verifier, presented)
        cached = await timed(verifier, presented)
        await verifier.aclose()
        rows.append((f"JWT {alg}", first, cached))
    return rows


async def bench_api_keys(
    client: aiohttp.ClientSession, tmp: Path, n: int, keys: int
) -> tuple[str, list[float], list[float] | None]:
    raw = [f"sk-bench-{i:08d}-{'x' * 24}" for i in range(keys)]
    path = tmp / "keys.yaml"
    path.write_text(
        "".join(f"{hashlib.sha256(k.encode()).hexdigest()}: agent-{i}\n" for i, k in enumerate(raw))
    )
    verifier = build_verifier(Identity(api_keys=ApiKeysConfig(file=str(path))), client)
    assert verifier is not None
    await verifier.start()
    samples = await timed(verifier, [bearer(raw[i % keys]) for i in range(n)])
    await verifier.aclose()
    return (f"API key ({keys} in the file)", samples, None)


def cell(samples: list[float] | None) -> str:
    if samples is None:
        return "not cached"
    median = statistics.median(samples) * 1e6
    return f"{median:.1f} (p99 {percentile(samples, 0.99) * 1e6:.1f})"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=2000, help="verifications per row")
    parser.add_argument("--keys", type=int, default=1000, help="keys in the API key file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        async with aiohttp.ClientSession() as client:
            rows = await bench_jwt(client, tmp, args.tokens)
            rows.append(await bench_api_keys(client, tmp, args.tokens, args.keys))
    print(f"µs per verification, median (p99), {args.tokens} verifications per cell\n")
    print("| credential | first verification | cached |")
    print("|---|---:|---:|")
    for name, first, cached in rows:
        print(f"| {name} | {cell(first)} | {cell(cached)} |")


if __name__ == "__main__":
    asyncio.run(main())
