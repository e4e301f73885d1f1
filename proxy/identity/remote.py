"""A JWKS fetched over HTTP: cached, refreshed, served stale for a while, never stormed.

Decisions:

- Fresh for the response's ``Cache-Control: max-age`` (less ``Age``), bounded to
  [``MIN_MAX_AGE``, ``MAX_MAX_AGE``]; ``DEFAULT_MAX_AGE`` without one, ``MIN_MAX_AGE``
  with ``no-cache`` or ``no-store``.
- At most one fetch starts per ``MIN_INTERVAL`` seconds, whatever asks (expiry, an
  unknown kid, a verification with no keys), and every caller shares the fetch in
  flight: a flood of tokens with made-up kids costs one fetch per 10 s. With a fetch
  timeout of ``TIMEOUT``, a key that appears at the IdP is seen within 15 s.
- On expiry the keys in force keep verifying while the fetch runs; only a caller with
  no keys, or with a kid the keys lack, waits for it.
- A failed fetch (connection, timeout, status other than 200, a body too big or not a
  JWK Set) keeps the last good set, until ``MAX_STALE`` seconds past its freshness;
  then the set is dropped and every token refused until a fetch succeeds. Never open.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
from collections.abc import Callable

import aiohttp
from multidict import CIMultiDictProxy

from proxy.identity.jwks import KeySet, parse_jwks

__all__ = [
    "DEFAULT_MAX_AGE",
    "MAX_JWKS_BYTES",
    "MAX_MAX_AGE",
    "MAX_STALE",
    "MIN_INTERVAL",
    "MIN_MAX_AGE",
    "TIMEOUT",
    "RemoteKeys",
    "max_age",
]

log = logging.getLogger("agent_warden.identity")

MIN_MAX_AGE = 60.0
MAX_MAX_AGE = 3600.0
DEFAULT_MAX_AGE = 300.0
MIN_INTERVAL = 10.0
"""Seconds between the starts of two fetches, at least."""
TIMEOUT = 5.0
"""Seconds a fetch may take in all (connect, headers, body)."""
MAX_STALE = 3600.0
"""Seconds past its freshness a set is still used while fetches fail."""
MAX_JWKS_BYTES = 1 << 20

_ACCEPT = "application/jwk-set+json, application/json;q=0.9"


def max_age(headers: CIMultiDictProxy[str]) -> float:
    """How long a response with these headers stays fresh, in seconds, within the bounds."""
    seconds: float | None = None
    for value in headers.getall("Cache-Control", ()):
        for directive in value.split(","):
            name, _, arg = directive.strip().partition("=")
            name = name.strip().lower()
            if name in ("no-cache", "no-store"):
                return MIN_MAX_AGE
            arg = arg.strip().strip('"')
            if name == "max-age" and arg.isdigit():
                seconds = float(arg)
    if seconds is None:
        return DEFAULT_MAX_AGE
    age = headers.get("Age", "").strip()
    if age.isdigit():
        seconds -= float(age)
    return min(max(seconds, MIN_MAX_AGE), MAX_MAX_AGE)


class RemoteKeys:
    """The JWKS at ``url``, fetched with ``client``."""

    def __init__(
        self,
        url: str,
        client: aiohttp.ClientSession,
        algorithms: tuple[str, ...],
        clock: Callable[[], float],
    ) -> None:
        self.url = url
        self.generation = 0
        self._client = client
        self._algorithms = algorithms
        self._clock = clock
        self._keys: KeySet | None = None
        self._sha256: str | None = None
        self._fresh_until = -math.inf
        self._stale_until = -math.inf
        self._attempted = -math.inf
        self._inflight: asyncio.Task[None] | None = None
        self._closed = False
        self._timeout = aiohttp.ClientTimeout(total=TIMEOUT)

    async def start(self) -> None:
        """The first fetch; the proxy starts without keys when it fails (tokens refused)."""
        task = self._fetch(self._clock())
        if task is not None:
            await asyncio.wait([task])

    async def aclose(self) -> None:
        self._closed = True  # a verification still under way must not fetch with a closed client
        task, self._inflight = self._inflight, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def current(self) -> KeySet | None:
        now = self._clock()
        if self._keys is not None and now >= self._stale_until:
            self._drop()
        if self._keys is None or now >= self._fresh_until:
            task = self._fetch(now)
            if task is not None and self._keys is None:
                await asyncio.wait([task])  # nothing to verify with meanwhile
        return self._keys

    async def refresh(self) -> KeySet | None:
        task = self._fetch(self._clock())
        if task is not None:
            # Not awaited directly: a waiter cancelled must not cancel the others' fetch,
            # and a fetch cancelled by aclose must not raise in its waiters.
            await asyncio.wait([task])
        return self._keys

    def _fetch(self, now: float) -> asyncio.Task[None] | None:
        """The fetch in flight, else a new one if the rate limit allows, else None."""
        if self._inflight is None:
            if self._closed or 0 <= now - self._attempted < MIN_INTERVAL:
                return None
            self._attempted = now
            self._inflight = asyncio.create_task(self._run(), name=f"jwks {self.url}")
        return self._inflight

    async def _run(self) -> None:
        try:
            body, fresh_for = await self._download()
            keys = parse_jwks(body, self._algorithms)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            self._failed(f"{type(exc).__name__}: {exc}")
        except Exception as exc:  # a bug must not end verification: reported, keys kept
            log.error("JWKS fetch failed", extra={"url": self.url}, exc_info=exc)
            self._failed(type(exc).__name__)
        else:
            self._install(keys, hashlib.sha256(body).hexdigest(), fresh_for)
        finally:
            self._inflight = None

    async def _download(self) -> tuple[bytes, float]:
        headers = {"Accept": _ACCEPT}
        async with self._client.get(self.url, headers=headers, timeout=self._timeout) as resp:
            if resp.status != 200:
                raise ValueError(f"HTTP status {resp.status}")
            if resp.content_length is not None and resp.content_length > MAX_JWKS_BYTES:
                raise ValueError(f"body of {resp.content_length} bytes")
            chunks: list[bytes] = []
            size = 0
            async for chunk in resp.content.iter_chunked(1 << 16):
                size += len(chunk)
                if size > MAX_JWKS_BYTES:
                    raise ValueError(f"body of more than {MAX_JWKS_BYTES} bytes")
                chunks.append(chunk)
            return b"".join(chunks), max_age(resp.headers)

    def _install(self, keys: KeySet, sha256: str, fresh_for: float) -> None:
        now = self._clock()
        self._fresh_until = now + fresh_for
        self._stale_until = self._fresh_until + MAX_STALE
        if sha256 == self._sha256:
            return
        self._keys, self._sha256 = keys, sha256
        self.generation += 1
        for reason in keys.skipped:
            log.warning("JWKS key skipped: %s", reason, extra={"url": self.url})
        log.info(
            "JWKS loaded",
            extra={"url": self.url, "kids": keys.kids, "max_age": fresh_for, "sha256": sha256},
        )

    def _failed(self, reason: str) -> None:
        if self._keys is None:
            log.error(
                "JWKS fetch failed; no signing keys, every token is refused: %s",
                reason,
                extra={"url": self.url},
            )
        else:
            left = max(0.0, self._stale_until - self._clock())
            log.warning(
                "JWKS fetch failed; the last good set is kept for %.0f s more: %s",
                left,
                reason,
                extra={"url": self.url},
            )

    def _drop(self) -> None:
        log.error(
            "JWKS stale for more than %.0f s; dropped, every token is refused until a fetch "
            "succeeds",
            MAX_STALE,
            extra={"url": self.url},
        )
        self._keys, self._sha256 = None, None
        self.generation += 1
