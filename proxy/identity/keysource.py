"""Where signing keys come from: a JWKS file, watched; the URL source is in remote.py."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

from proxy.identity.files import WatchedFile
from proxy.identity.jwks import KeySet, parse_jwks

__all__ = ["FileKeys", "KeySource"]

log = logging.getLogger("agent_warden.identity")


class KeySource(Protocol):
    @property
    def generation(self) -> int:
        """Incremented whenever the keys in force change (verified tokens are then forgotten)."""
        ...

    async def current(self) -> KeySet | None:
        """The keys in force; None while none could be had (every token is then refused)."""
        ...

    async def refresh(self) -> KeySet | None:
        """The keys after a look for new ones (a token named an unknown kid), where the
        source's rate limit allows one; else the keys in force."""
        ...

    async def start(self) -> None: ...

    async def aclose(self) -> None: ...


class FileKeys:
    """A JWKS file, re-read when it changes (looked at at most once a second)."""

    def __init__(self, path: str, algorithms: tuple[str, ...], clock: Callable[[], float]) -> None:
        def parse(data: bytes) -> KeySet:
            keys = parse_jwks(data, algorithms)
            for reason in keys.skipped:
                log.warning("JWKS key skipped: %s", reason, extra={"path": path})
            return keys

        self._file = WatchedFile(path, parse, "JWKS file", clock)

    @property
    def generation(self) -> int:
        return self._file.generation

    async def current(self) -> KeySet | None:
        return await self._file.get()

    async def refresh(self) -> KeySet | None:
        return await self._file.get()

    async def start(self) -> None:
        await self._file.start()

    async def aclose(self) -> None:
        return None
