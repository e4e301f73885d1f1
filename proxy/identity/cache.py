"""Verified tokens remembered until they expire: a repeated token costs a dict lookup."""

from __future__ import annotations

from collections import OrderedDict

from proxy.identity.credential import Credential

__all__ = ["DEFAULT_SIZE", "TokenCache"]

DEFAULT_SIZE = 10_000


class TokenCache:
    """A bounded LRU of token -> credential; an entry is dropped at its token's ``exp``."""

    def __init__(self, size: int = DEFAULT_SIZE) -> None:
        self._size = size
        self._entries: OrderedDict[str, tuple[float, Credential]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, token: str, now: float) -> Credential | None:
        entry = self._entries.get(token)
        if entry is None:
            return None
        if now >= entry[0]:
            del self._entries[token]
            return None
        self._entries.move_to_end(token)
        return entry[1]

    def put(self, token: str, credential: Credential, expires: float, now: float) -> None:
        if now >= expires:
            return
        self._entries[token] = (expires, credential)
        self._entries.move_to_end(token)
        if len(self._entries) > self._size:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()
