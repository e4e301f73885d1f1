"""Session state behind one small async interface: every decision is one atomic operation.

The store knows nothing of HTTP, YAML or the protocols. The gate computes what is pure
(identity, policy resolution, tool and method authorization) and hands the store the
rest, which must be decided and counted atomically: existence, owner, closed, expiry,
budgets, rate limit and the per-agent cap. A Redis store implements the same interface
with one Lua script per call.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Protocol

from proxy.errors import E
from proxy.policy.limits import Call, Limits

DEFAULT_MAX_SESSIONS: Final = 100_000
"""Live sessions (windows included) plus pending reservations, proxy-wide: past it a new
session or window is refused with OVERLOADED (``LimitKind.SESSIONS``)."""

DEFAULT_MAX_TOMBSTONES: Final = 1_000_000
"""Ended sessions still remembered (for ``tombstone_ttl``), proxy-wide: past it a new
session or window is refused with OVERLOADED (``LimitKind.TOMBSTONES``). A tombstone is
never forgotten early: another agent would find the id unknown and could adopt it."""

DEFAULT_MAX_TASK_LINKS: Final = 1_000_000
"""A2A task-to-context links, proxy-wide: past it ``link_task`` refuses a new task with
OVERLOADED (``LimitKind.TASK_LINKS``) rather than forget a link still in force."""


class LimitKind(enum.Enum):
    """Which limit a denial hit: for the operator's log line, never for the client."""

    CALLS = "calls"
    TOOL_CALLS = "tool_calls"
    RATE = "per_minute"
    CAP = "max_per_agent"
    TTL = "ttl"
    IDLE = "idle_timeout"
    SESSIONS = "max_sessions"  # the proxy-wide cap on live sessions: OVERLOADED
    TOMBSTONES = "max_tombstones"  # the proxy-wide bound on ended sessions remembered
    TASK_LINKS = "max_task_links"  # the proxy-wide bound on A2A task links


@dataclass(frozen=True, slots=True)
class Denial:
    reason: E
    limit: LimitKind | None = None
    limit_value: float | None = None
    used: float | None = None
    retry_after: float | None = None  # seconds; set for SESSION_RATE_LIMITED


@dataclass(frozen=True, slots=True)
class Outcome:
    """The verdict on a request against an existing session.

    ``session`` is set when the whole request is refused at the session level (not found,
    agent mismatch, closed, expired); otherwise ``calls`` holds one entry per element,
    ``None`` meaning allowed (and counted when counted).
    """

    session: Denial | None = None
    calls: tuple[Denial | None, ...] = ()

    @property
    def allowed(self) -> bool:
        return self.session is None and all(c is None for c in self.calls)


class Kind(enum.Enum):
    """Where a session comes from (contract, Sessions): the first source that applies."""

    MINTED = "minted"  # POST /sessions on the admin listener; presented as Warden-Session
    PROTOCOL = "protocol"  # MCP Mcp-Session-Id, MCP HTTP+SSE endpoint, A2A contextId
    WINDOW = "window"  # the agent's current window: everything else


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """What ``GET /sessions`` shows of one session."""

    id: str
    agent: str
    protocol: str
    created: float  # unix seconds
    last_used: float
    calls_used: int
    closed: bool = False
    proxy_issued: bool = False
    kind: Kind = Kind.PROTOCOL
    grant: str | None = None  # a minted session's narrowing, as JSON (see ``policy.grant``)


class SessionStore(Protocol):
    """Session state and counters. ``now`` is unix time in seconds, passed in for testing.

    Proxy-wide bounds (set when the store is made, defaults above), none of which ever
    forgets something still in force to make room; each refuses what is new instead:

    - ``max_sessions``: live sessions (windows too) plus pending reservations. ``reserve``
      and a ``window`` that would open a new one answer OVERLOADED (``LimitKind.SESSIONS``)
      at the bound. Closing, expiry, ``release`` and a lapsed reservation free a place.
    - ``max_tombstones``: ended sessions remembered for ``tombstone_ttl`` (so their id
      keeps answering SESSION_CLOSED / SESSION_EXPIRED / AGENT_MISMATCH). At the bound
      ``reserve`` and a new ``window`` answer OVERLOADED (``LimitKind.TOMBSTONES``); a
      tombstone goes only when its time is up, so there are at most ``max_tombstones``
      plus ``max_sessions`` of them.
    - ``max_task_links``: A2A task-to-context links. A link lasts as long as its
      context's session is remembered (live, then its tombstone); a link to a context
      the store does not know lasts ``task_ttl``. At the bound ``link_task`` refuses a
      new task (OVERLOADED, ``LimitKind.TASK_LINKS``) and, until the context it was
      refused for is forgotten, ``task_context`` answers OVERLOADED for any task it does
      not know: it can no longer tell a task never seen from the one it refused.
    """

    async def reserve(self, agent: str, limits: Limits, now: float) -> str | Denial:
        """Hold one of the agent's ``max_per_agent`` places before a session is born.

        Returns a reservation token, or a denial: TOO_MANY_SESSIONS (``LimitKind.CAP``,
        the agent's cap, judged first), else OVERLOADED (``LimitKind.SESSIONS`` or
        ``LimitKind.TOMBSTONES``: the proxy-wide bounds, whatever ``max_per_agent`` says,
        so an uncapped retry can still be refused). The place is freed by ``bind`` (it
        becomes the session) or ``release``; an unbound reservation lapses by itself after
        a short while (the store's choice, about a minute). A reservation counts against
        both the agent's cap and ``max_sessions``.
        """
        ...

    async def bind(
        self,
        reservation: str,
        session_id: str,
        agent: str,
        protocol: str,
        limits: Limits,
        now: float,
        *,
        proxy_issued: bool = False,
        counted: int = 0,
        kind: Kind = Kind.PROTOCOL,
        grant: str | None = None,
    ) -> None:
        """Turn a reservation into a live session; ``counted`` calls are charged at birth.

        ``grant`` (minted sessions) is kept as given and returned by ``get``. Never
        refuses: the place was counted when it was reserved (a reservation that lapsed
        before its bind still binds, so ``max_sessions`` can be passed by the binds of
        reservations lapsed within the upstream's timeout). Task links made earlier to
        this id, while the store did not know it, become the session's.
        """
        ...

    async def window(self, agent: str, protocol: str, limits: Limits, now: float) -> str | Denial:
        """The id of the agent's current window, opened now when it has none live.

        A window ends after ``ttl`` or ``idle_timeout`` like any session (later checks of
        its id answer SESSION_EXPIRED); the agent's next call here opens a new one. Windows
        do not count against ``max_per_agent`` but do count against ``max_sessions``:
        opening one past the proxy-wide bounds answers OVERLOADED (``LimitKind.SESSIONS``
        or ``LimitKind.TOMBSTONES``), as ``reserve`` does; a live window is returned
        whatever the bounds. Atomic: concurrent callers share one window.
        """
        ...

    async def remember_state(self, session_id: str, state: str, now: float) -> None:
        """An MCP ``requestState`` (a digest of it) the upstream returned in this session."""
        ...

    async def take_state(self, session_id: str, state: str, now: float) -> bool:
        """Forget a remembered state; True only for the one caller that found it."""
        ...

    async def release(self, reservation: str) -> None:
        """Free a reservation that will not become a session (the upstream refused)."""
        ...

    async def check(
        self,
        session_id: str,
        agent: str,
        calls: Sequence[Call],
        limits: Limits,
        now: float,
    ) -> Outcome:
        """Decide and count one request, atomically, in the reference order.

        Session level, for the whole request: exists, agent matches, not closed, not
        expired. Then for each call in order: budget (session calls, then the tool's
        budget), authorization (``call.denied``), rate limit; an allowed counted call is
        counted at once, so a later element of the same batch sees it. A denied call is
        not counted. Any request that passes the session level refreshes ``last_used``.
        """
        ...

    async def close(self, session_id: str, now: float) -> bool:
        """Close a live session; later requests get SESSION_CLOSED. False if unknown."""
        ...

    async def get(self, session_id: str) -> SessionInfo | None: ...

    async def link_task(self, task_id: str, context_id: str, now: float) -> Denial | None:
        """Remember that an A2A task belongs to a context (a session), as a response said.

        None when remembered (or re-linked: the last context said wins). The link lasts
        as long as the context's session is remembered, live or as a tombstone, however
        long that turns out to be; a link to a context the store does not know lasts
        ``task_ttl`` (and becomes the session's if that id is bound meanwhile). A new task
        past ``max_task_links`` is refused: OVERLOADED (``LimitKind.TASK_LINKS``), and
        the store is unsure of unknown tasks until that context is forgotten (see
        ``task_context``). Never forgets another link to make room.
        """
        ...

    async def task_context(self, task_id: str, now: float) -> str | Denial | None:
        """The context a task is linked to; None for a task the store has never been told
        of (or whose context it has forgotten too); OVERLOADED (``LimitKind.TASK_LINKS``)
        when it does not know the task and cannot be sure it was never told of it: a link
        was refused for a context still remembered (or, for an unknown context, within
        ``task_ttl``). The gate refuses such a request rather than treat it as new."""
        ...

    async def context_of(self, task_id: str) -> str | None:
        """The context a task was linked to, if the store knows it. Cannot say "unsure":
        prefer ``task_context``."""
        ...

    async def sessions(self, now: float) -> list[SessionInfo]:
        """Live sessions (not closed, not expired)."""
        ...

    async def live_count(self, now: float) -> int: ...

    async def sweep(self, now: float) -> int:
        """Forget what has expired; returns how many sessions ended. Called periodically."""
        ...

    async def healthy(self) -> bool: ...

    async def aclose(self) -> None: ...


class StoreUnavailable(Exception):
    """The store cannot be reached or timed out; the gate answers POLICY_STORE_UNAVAILABLE."""
