"""Session state and counters behind one interface (``base.SessionStore``)."""

from __future__ import annotations

from proxy.sessions.base import DEFAULT_MAX_SESSIONS, SessionStore, StoreUnavailable
from proxy.sessions.memory import MemoryStore

__all__ = ["MemoryStore", "SessionStore", "StoreUnavailable", "open_store"]


def open_store(url: str, *, max_sessions: int = DEFAULT_MAX_SESSIONS) -> SessionStore:
    """``memory``, or ``redis://[user:password@]host:port/db[?prefix=...]`` (``rediss://``: TLS)."""
    if url == "memory":
        return MemoryStore(max_sessions=max_sessions)
    from proxy.sessions.redis import RedisStore  # imported only when asked for

    return RedisStore.from_url(url, max_sessions=max_sessions)
