"""Files the verifiers trust (JWKS, API keys, HMAC secret): read bounded, re-read on change.

Decisions:

- Checked on use, at most once per ``interval`` seconds of the injected clock: a stat
  when nothing changed, no background task to leak or to forget to stop.
- The fingerprint (inode, device, mtime, ctime, size, resolved path) says the file may
  have changed; the content is parsed again only when its SHA-256 differs.
- A file that is missing, unreadable, not a regular file, too big or unparseable leaves
  the last good version in force; each distinct bad version is logged once.
- Reading and parsing run in a worker thread; callers due for a check while one runs
  wait for it (one read at a time), so a change is seen by the first request after it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from proxy.files import Fingerprint, fingerprint
from proxy.files import read_bounded as _read_bounded

__all__ = ["MAX_FILE_BYTES", "WatchedFile", "read_bounded"]

log = logging.getLogger("agent_warden.identity")

T = TypeVar("T")

MAX_FILE_BYTES = 4 << 20
"""The largest file read (4 MiB: some 50,000 API keys, or a JWKS of hundreds of keys)."""


@dataclass(frozen=True, slots=True)
class _Bad:
    problem: str


def read_bounded(path: str, limit: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of the regular file at ``path``; OSError if unreadable, ValueError if it
    is not a regular file or holds more than ``limit`` bytes. Never blocks on a FIFO."""
    return _read_bounded(path, limit)


def _load(path: str, parse: Callable[[bytes], T]) -> tuple[str, T | _Bad]:
    """A key for the content (its SHA-256, or why it was not read) and what it parses to."""
    try:
        data = read_bounded(path)
    except OSError as exc:
        reason = f"cannot read: {exc.strerror or exc}"
        return reason, _Bad(reason)
    except ValueError as exc:
        return f"refused: {exc}", _Bad(f"refused: {exc}")
    digest = hashlib.sha256(data).hexdigest()
    try:
        return digest, parse(data)
    except ValueError as exc:
        return digest, _Bad(str(exc))
    except Exception as exc:  # a parser bug: reported like a bad file, never a crash
        log.error("identity file could not be parsed", extra={"path": path}, exc_info=exc)
        return digest, _Bad(f"cannot parse: {type(exc).__name__}")


class WatchedFile(Generic[T]):
    """The content of ``path`` as ``parse`` makes it (raising ValueError when it cannot);
    ``get`` re-reads it when it has changed, looking at most once per ``interval``."""

    def __init__(
        self,
        path: str,
        parse: Callable[[bytes], T],
        what: str,
        clock: Callable[[], float],
        interval: float = 1.0,
    ) -> None:
        self.path = path
        self.what = what
        self.value: T | None = None
        """The last good version; None until one has loaded."""
        self.generation = 0
        """Incremented whenever ``value`` changes."""
        self._parse = parse
        self._clock = clock
        self._interval = interval
        self._checked = -math.inf
        self._seen: Fingerprint | None = None
        self._sha256: str | None = None
        self._rejected: str | None = None
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        async with self._lock:
            await self._check(self._clock())

    async def get(self) -> T | None:
        """The current version, after a check for changes when one is due."""
        if self._due(self._clock()):
            async with self._lock:
                now = self._clock()
                if self._due(now):  # not already done by the caller we waited for
                    await self._check(now)
        return self.value

    def _due(self, now: float) -> bool:
        return not 0 <= now - self._checked < self._interval

    async def _check(self, now: float) -> None:
        self._checked = now
        fp = fingerprint(self.path)
        if fp is not None and fp == self._seen:
            return
        key, result = await asyncio.to_thread(_load, self.path, self._parse)
        self._seen = fp
        extra = {"path": self.path, "file": self.what}
        if isinstance(result, _Bad):
            if key != self._rejected:
                self._rejected = key
                kept = "keeping the last good version" if self.value is not None else "none loaded"
                log.error("%s rejected (%s): %s", self.what, kept, result.problem, extra=extra)
            return
        self._rejected = None
        if key == self._sha256:
            return
        self._sha256, self.value = key, result
        self.generation += 1
        log.info("%s loaded", self.what, extra={**extra, "sha256": key})
