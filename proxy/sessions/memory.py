"""The in-memory session store: one process, one event loop, O(1) per decision."""

from __future__ import annotations

import heapq
import itertools
import secrets
from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING

from proxy.errors import E
from proxy.policy.limits import UNLIMITED, Call, Limits
from proxy.sessions.base import (
    DEFAULT_MAX_SESSIONS,
    DEFAULT_MAX_TASK_LINKS,
    DEFAULT_MAX_TOMBSTONES,
    Denial,
    Kind,
    LimitKind,
    Outcome,
    SessionInfo,
)

if TYPE_CHECKING:
    from proxy.sessions.base import SessionStore

RESERVATION_TTL = 60.0  # seconds an unbound reservation holds its place in the cap
TOMBSTONE_TTL = 3600.0  # seconds an ended session is remembered (never fewer: see base)
TASK_TTL = 3600.0  # seconds a link to a context the store does not know is remembered
STATE_TTL = 3600.0  # seconds an MCP requestState stays redeemable
STATES = 100_000  # requestStates remembered, oldest forgotten first
WINDOW_PREFIX = "aww-"  # agent windows: ids the proxy makes, never seen by an upstream

# Float slack: 0.1 s at 10 tokens/s must refill one whole token, not 0.9999999.
_EPSILON = 1e-9

# Verdicts that carry nothing of the session are shared, never rebuilt.
_NOT_FOUND = Outcome(session=Denial(E.SESSION_NOT_FOUND))
_MISMATCH = Outcome(session=Denial(E.AGENT_MISMATCH))
_CLOSED = Outcome(session=Denial(E.SESSION_CLOSED))
_EXPIRED = Outcome(session=Denial(E.SESSION_EXPIRED))
_NO_CALLS = Outcome()
_ONE_ALLOWED = Outcome(calls=(None,))
_PLAIN = {reason: Denial(reason) for reason in E}
_GONE = 0.0  # what an ended session's bucket and heap deadline become: one shared float


class _Session:
    """One session. Slotted: a dict per session would cost more than the whole record."""

    __slots__ = (
        "agent",
        "created",
        "due",
        "ended",
        "ended_at",
        "grant",
        "id",
        "kind",
        "last_used",
        "limits",
        "protocol",
        "proxy_issued",
        "stamp",
        "tasks",
        "tokens",
        "tools",
        "used",
    )

    def __init__(
        self,
        session_id: str,
        agent: str,
        protocol: str,
        limits: Limits,
        now: float,
        proxy_issued: bool,
        counted: int,
        kind: Kind = Kind.PROTOCOL,
        grant: str | None = None,
    ) -> None:
        self.id = session_id
        self.kind = kind
        self.grant = grant
        self.agent = agent
        self.protocol = protocol
        self.created = now
        self.last_used = now
        self.used = counted
        self.tools: dict[str, int] | None = None  # counts of budgeted tools only
        self.tokens = float(min(limits.per_minute, UNLIMITED) - counted)
        self.stamp = now  # when the bucket was last refilled
        self.limits = limits  # the last limits seen: sweep has no other
        self.due = now  # the deadline of this session's current heap entry
        self.ended: E | None = None  # SESSION_CLOSED or SESSION_EXPIRED once a tombstone
        self.ended_at = now
        self.proxy_issued = proxy_issued
        self.tasks: list[str] | None = None  # A2A tasks linked to it: forgotten with it

    def info(self) -> SessionInfo:
        return SessionInfo(
            id=self.id,
            agent=self.agent,
            protocol=self.protocol,
            created=self.created,
            last_used=self.last_used,
            calls_used=self.used,
            closed=self.ended is E.SESSION_CLOSED,
            proxy_issued=self.proxy_issued,
            kind=self.kind,
            grant=self.grant,
        )


class _Agent:
    """What counts against one agent's cap: its live sessions and pending reservations."""

    __slots__ = ("name", "pending", "sessions")

    def __init__(self, name: str) -> None:
        self.name = name
        self.sessions: set[_Session] = set()
        self.pending: dict[str, float] = {}  # reservation token -> when it lapses


def _expiry(s: _Session, limits: Limits, now: float) -> Denial | None:
    age = now - s.created
    if age >= limits.ttl:
        return Denial(E.SESSION_EXPIRED, LimitKind.TTL, limits.ttl, age)
    idle = now - s.last_used
    if idle >= limits.idle_timeout:
        return Denial(E.SESSION_EXPIRED, LimitKind.IDLE, limits.idle_timeout, idle)
    return None


def _deadline(s: _Session, limits: Limits) -> float:
    return min(s.created + limits.ttl, s.last_used + limits.idle_timeout)


def _refill(s: _Session, per_minute: int, now: float) -> float:
    tokens = s.tokens
    if now > s.stamp:
        tokens += (now - s.stamp) * per_minute / 60.0
        s.stamp = now
    return per_minute if tokens > per_minute else tokens


class _Orphans:
    """Task links to a context the store does not know (yet), until ``lapse``."""

    __slots__ = ("lapse", "tasks")

    def __init__(self, lapse: float) -> None:
        self.lapse = lapse
        self.tasks: list[str] = []


class MemoryStore:
    """Sessions and counters in this process's memory.

    Atomic by construction: the store runs on the single event loop and no method awaits
    between reading a counter and writing it, so a decision and its count happen with no
    other coroutine in between (40 concurrent checks against a budget of 10 let exactly
    10 through). Never call it from another thread.

    Costs: a check is O(1) per call element; ``reserve`` prunes the agent's own sessions
    and reservations, O(cap). A session is a slotted record (well under 1 KB). Expiry is
    judged by the limits passed to each call, so the current policy decides; ``sweep``
    has no limits, so it uses the last ones each session was judged by, and finds what
    is due with a heap of deadlines (an idle deadline moves later with use: a popped
    entry that is not yet due is pushed back at its new deadline). An ended session
    leaves a tombstone, so later requests get SESSION_CLOSED or SESSION_EXPIRED (and
    AGENT_MISMATCH for another agent) rather than SESSION_NOT_FOUND; a tombstone is
    forgotten ``tombstone_ttl`` after the end, never sooner (by ``sweep``, or by a
    ``reserve``, ``window`` or ``link_task`` that finds a bound reached).

    The cap counts an agent's live sessions plus its pending reservations; the
    proxy-wide ``max_sessions`` counts every live session and window plus every pending
    reservation, ``max_tombstones`` the tombstones (see ``base.SessionStore``). Closing
    frees a place at once; expiry frees it at the agent's next ``reserve`` or at
    ``sweep`` (a proxy-wide place also at a ``reserve`` or new ``window`` that finds the
    bound reached: only then does it end what is due, so answers below the bounds are
    the Redis store's); a reservation never bound nor released lapses after a minute.
    Binding an id that already exists keeps the existing session (a race adopted it
    first): the reservation is freed and, for the same agent, the ``counted`` calls are
    charged to it. A closed or expired id is never reborn while its tombstone lasts.

    A2A task links belong to their context's session record (``_Session.tasks``) and
    are forgotten with its tombstone; links to a context with no record are kept apart
    (``_orphans``) for ``task_ttl``. None is ever dropped to make room: past
    ``max_task_links`` a new link is refused and its context noted as doubted
    (``_doubted``; ``_doubt_until`` for a context with no record), and ``task_context``
    answers "unsure" for unknown tasks until that context is forgotten.
    """

    def __init__(
        self,
        *,
        max_sessions: int = DEFAULT_MAX_SESSIONS,
        max_tombstones: int = DEFAULT_MAX_TOMBSTONES,
        max_task_links: int = DEFAULT_MAX_TASK_LINKS,
        reservation_ttl: float = RESERVATION_TTL,
        tombstone_ttl: float = TOMBSTONE_TTL,
        task_ttl: float = TASK_TTL,
    ) -> None:
        self._max_sessions = max_sessions
        self._max_tombstones = max_tombstones
        self._max_task_links = max_task_links
        self._reservation_ttl = reservation_ttl
        self._tombstone_ttl = tombstone_ttl
        self._task_ttl = task_ttl
        self._live: dict[str, _Session] = {}
        self._ended: OrderedDict[str, _Session] = OrderedDict()  # in the order they ended
        self._agents: dict[str, _Agent] = {}  # only agents holding a session or reservation
        self._pending: OrderedDict[str, _Agent] = OrderedDict()  # in the order they lapse
        self._heap: list[tuple[float, str]] = []  # (deadline, session id)
        self._tasks: dict[str, str] = {}  # A2A task id -> context id
        self._orphans: OrderedDict[str, _Orphans] = OrderedDict()  # context -> in lapse order
        self._doubted: set[str] = set()  # contexts with a record that a link was refused for
        self._doubt_until = 0.0  # ... and for contexts with none: unsure until then
        self._windows: dict[str, _Session] = {}  # agent -> its current window
        self._states: OrderedDict[tuple[str, str], float] = OrderedDict()  # -> when it lapses
        self._serial = itertools.count(1)
        self._unreported = 0  # sessions ``live_count`` ended, for the next ``sweep`` to report

    # --- the cap ------------------------------------------------------------------------

    async def reserve(self, agent: str, limits: Limits, now: float) -> str | Denial:
        record = self._agents.get(agent)
        if record is not None:
            self._prune(record, limits, now)
            record = self._agents.get(agent)  # pruning drops a record left empty
        held = 0 if record is None else len(record.sessions) + len(record.pending)
        if held >= limits.max_per_agent:
            return Denial(E.TOO_MANY_SESSIONS, LimitKind.CAP, limits.max_per_agent, held)
        full = self._full(now)
        if full is not None:
            return full
        record = self._agents.get(agent)  # making room may have ended its last session
        if record is None:
            record = self._agents[agent] = _Agent(agent)
        token = f"r{next(self._serial)}"
        record.pending[token] = now + self._reservation_ttl
        self._pending[token] = record
        return token

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
        self._unreserve(reservation)
        known = self._live.get(session_id)
        if known is not None:
            if known.agent == agent:
                known.last_used = max(known.last_used, now)
                known.tokens = _refill(known, limits.per_minute, now) - counted
                known.used += counted
            return
        if session_id in self._ended:
            return
        s = _Session(session_id, agent, protocol, limits, now, proxy_issued, counted, kind, grant)
        self._live[session_id] = s
        orphans = self._orphans.pop(session_id, None)
        if orphans is not None:  # links made while the id was unknown: the session's now
            s.tasks = orphans.tasks
        if kind is not Kind.WINDOW:  # a window is outside the cap, however it was born
            record = self._agents.get(agent)
            if record is None:
                record = self._agents[agent] = _Agent(agent)
            record.sessions.add(s)
        self._push(s, _deadline(s, limits))

    async def release(self, reservation: str) -> None:
        self._unreserve(reservation)

    async def window(self, agent: str, protocol: str, limits: Limits, now: float) -> str | Denial:
        s = self._windows.get(agent)
        if s is not None and s.ended is None and _expiry(s, limits, now) is None:
            return s.id
        if s is not None and s.ended is None:
            self._end(s, E.SESSION_EXPIRED, now)
        full = self._full(now)
        if full is not None:
            return full
        session_id = WINDOW_PREFIX + secrets.token_urlsafe(16)
        s = _Session(session_id, agent, protocol, limits, now, False, 0, Kind.WINDOW)
        self._live[session_id] = s
        self._windows[agent] = s  # not in the agent's record: windows are outside the cap
        self._push(s, _deadline(s, limits))
        return session_id

    async def remember_state(self, session_id: str, state: str, now: float) -> None:
        states = self._states
        key = (session_id, state)
        states.pop(key, None)
        states[key] = now + STATE_TTL
        while len(states) > STATES:  # bounded: the oldest go first
            states.popitem(last=False)

    async def take_state(self, session_id: str, state: str, now: float) -> bool:
        lapse = self._states.pop((session_id, state), None)
        return lapse is not None and lapse > now

    # --- decisions ----------------------------------------------------------------------

    async def check(
        self,
        session_id: str,
        agent: str,
        calls: Sequence[Call],
        limits: Limits,
        now: float,
    ) -> Outcome:
        s = self._live.get(session_id)
        if s is None:
            gone = self._ended.get(session_id)
            if gone is None:
                return _NOT_FOUND
            if gone.agent != agent:
                return _MISMATCH
            if gone.ended is E.SESSION_CLOSED:
                return _CLOSED
            # Which limit ended it, for the operator's log: judged as when it ended.
            why = _expiry(gone, gone.limits, max(gone.ended_at, _deadline(gone, gone.limits)))
            return _EXPIRED if why is None else Outcome(session=why)
        if s.agent != agent:
            return _MISMATCH
        expired = _expiry(s, limits, now)
        if expired is not None:
            self._end(s, E.SESSION_EXPIRED, now)
            return Outcome(session=expired)
        if now > s.last_used:
            s.last_used = now
        if limits is not s.limits:
            self._adopt(s, limits)
        if len(calls) == 1:
            verdict = self._decide(s, calls[0], limits, now)
            return _ONE_ALLOWED if verdict is None else Outcome(calls=(verdict,))
        if not calls:
            return _NO_CALLS
        return Outcome(calls=tuple([self._decide(s, call, limits, now) for call in calls]))

    def _decide(self, s: _Session, call: Call, limits: Limits, now: float) -> Denial | None:
        """One element in the reference order: budget, tool budget, authorization, rate."""
        if not call.counted:
            return None if call.denied is None else _PLAIN[call.denied]
        if s.used >= limits.calls:
            return Denial(E.SESSION_BUDGET_EXCEEDED, LimitKind.CALLS, limits.calls, s.used)
        budgeted: str | None = None
        spent = 0
        if call.tool is not None and limits.tool_calls:
            budget = limits.tool_calls.get(call.tool)
            if budget is not None:
                budgeted = call.tool
                spent = s.tools.get(budgeted, 0) if s.tools is not None else 0
                if spent >= budget:
                    return Denial(E.SESSION_BUDGET_EXCEEDED, LimitKind.TOOL_CALLS, budget, spent)
        if call.denied is not None:
            return _PLAIN[call.denied]
        per_minute = limits.per_minute
        if per_minute < UNLIMITED:  # an unset rate limit keeps no bucket
            tokens = _refill(s, per_minute, now)
            if tokens < 1.0 - _EPSILON:
                s.tokens = tokens
                wait = (1.0 - tokens) * 60.0 / per_minute
                return Denial(
                    E.SESSION_RATE_LIMITED, LimitKind.RATE, per_minute, per_minute - tokens, wait
                )
            s.tokens = tokens - 1.0
        s.used += 1
        if budgeted is not None:
            if s.tools is None:
                s.tools = {}
            s.tools[budgeted] = spent + 1
        return None

    async def close(self, session_id: str, now: float) -> bool:
        s = self._live.get(session_id)
        if s is None:
            return False
        if _deadline(s, s.limits) <= now:
            self._end(s, E.SESSION_EXPIRED, now)
            return False
        self._end(s, E.SESSION_CLOSED, now)
        return True

    # --- views --------------------------------------------------------------------------

    async def get(self, session_id: str) -> SessionInfo | None:
        s = self._live.get(session_id) or self._ended.get(session_id)
        return None if s is None else s.info()

    async def link_task(self, task_id: str, context_id: str, now: float) -> Denial | None:
        tasks = self._tasks
        known = tasks.get(task_id)
        if known is None and len(tasks) >= self._max_task_links:
            self._forget(now)  # what is past its time goes first: nothing else ever does
            if len(tasks) >= self._max_task_links:
                if context_id in self._live or context_id in self._ended:
                    self._doubted.add(context_id)
                else:
                    self._doubt_until = max(self._doubt_until, now + self._task_ttl)
                return Denial(E.OVERLOADED, LimitKind.TASK_LINKS, self._max_task_links, len(tasks))
        if known is not None and known != context_id:
            self._unlink(task_id, known)
        holder = self._live.get(context_id) or self._ended.get(context_id)
        if holder is not None:
            if known != context_id:
                if holder.tasks is None:
                    holder.tasks = [task_id]
                else:
                    holder.tasks.append(task_id)
        else:  # a context the store does not know: all its links lapse together
            orphans = self._orphans.pop(context_id, None)
            if orphans is None:
                orphans = _Orphans(now + self._task_ttl)
            orphans.lapse = max(orphans.lapse, now + self._task_ttl)
            self._orphans[context_id] = orphans  # at the end: the latest to lapse
            if known != context_id:
                orphans.tasks.append(task_id)
        tasks[task_id] = context_id
        return None

    async def task_context(self, task_id: str, now: float) -> str | Denial | None:
        found = self._tasks.get(task_id)
        if found is not None:
            return found
        if self._doubted:
            self._forget(now)  # a doubted context past its time takes the doubt with it
        if self._doubted or now < self._doubt_until:
            return Denial(
                E.OVERLOADED, LimitKind.TASK_LINKS, self._max_task_links, len(self._tasks)
            )
        return None

    async def context_of(self, task_id: str) -> str | None:
        return self._tasks.get(task_id)

    async def sessions(self, now: float) -> list[SessionInfo]:
        return [s.info() for s in self._live.values() if _deadline(s, s.limits) > now]

    async def live_count(self, now: float) -> int:
        """Exact by the limits each session was last judged by: what is due ends first.

        The sessions it ends are reported by the next ``sweep``, as if it had ended them.
        """
        self._unreported += self._expire_due(now)
        return len(self._live)

    # --- housekeeping -------------------------------------------------------------------

    async def sweep(self, now: float) -> int:
        ended = self._expire_due(now) + self._unreported
        self._unreported = 0
        self._forget(now)
        return ended

    async def healthy(self) -> bool:
        return True

    async def aclose(self) -> None:
        return None

    # --- internals ----------------------------------------------------------------------

    def _full(self, now: float) -> Denial | None:
        """The proxy-wide bounds. Only at a bound does it end what is due and forget what
        is past its time (the sessions it ends are reported by the next ``sweep``)."""
        if not self._at_bound():
            return None
        self._unreported += self._expire_due(now)
        self._forget(now)
        held = len(self._live) + len(self._pending)
        if held >= self._max_sessions:
            return Denial(E.OVERLOADED, LimitKind.SESSIONS, self._max_sessions, held)
        ended = len(self._ended)
        if ended >= self._max_tombstones:
            return Denial(E.OVERLOADED, LimitKind.TOMBSTONES, self._max_tombstones, ended)
        return None

    def _at_bound(self) -> bool:
        return (
            len(self._live) + len(self._pending) >= self._max_sessions
            or len(self._ended) >= self._max_tombstones
        )

    def _forget(self, now: float) -> None:
        """Drop what is past its time, oldest first: lapsed reservations, requestStates,
        tombstones (and their task links), links to unknown contexts. O(1) amortized."""
        while self._pending:
            token, record = next(iter(self._pending.items()))
            if record.pending[token] > now:
                break
            self._unreserve(token)
        states = self._states
        while states and next(iter(states.values())) <= now:
            states.popitem(last=False)
        horizon = now - self._tombstone_ttl
        ended = self._ended
        while ended and next(iter(ended.values())).ended_at <= horizon:
            _, s = ended.popitem(last=False)
            self._drop_links(s.id, s.tasks)
            self._doubted.discard(s.id)
        orphans = self._orphans
        while orphans and next(iter(orphans.values())).lapse <= now:
            context_id, gone = orphans.popitem(last=False)
            self._drop_links(context_id, gone.tasks)

    def _drop_links(self, context_id: str, held: list[str] | None) -> None:
        if held is not None:
            tasks = self._tasks
            for task_id in held:
                if tasks.get(task_id) == context_id:
                    del tasks[task_id]

    def _unlink(self, task_id: str, context_id: str) -> None:
        """Take a task out of its old context's list: it is being linked elsewhere."""
        holder = self._live.get(context_id) or self._ended.get(context_id)
        if holder is not None:
            if holder.tasks is not None and task_id in holder.tasks:
                holder.tasks.remove(task_id)
            return
        orphans = self._orphans.get(context_id)
        if orphans is not None and task_id in orphans.tasks:
            orphans.tasks.remove(task_id)
            if not orphans.tasks:
                del self._orphans[context_id]

    def _push(self, s: _Session, deadline: float) -> None:
        s.due = deadline
        heapq.heappush(self._heap, (deadline, s.id))

    def _adopt(self, s: _Session, limits: Limits) -> None:
        """New limits for this session (a policy reload): a shorter life needs an earlier entry."""
        s.limits = limits
        deadline = _deadline(s, limits)
        if deadline < s.due:
            self._push(s, deadline)

    def _expire_due(self, now: float) -> int:
        heap = self._heap
        ended = 0
        while heap and heap[0][0] <= now:
            due, session_id = heapq.heappop(heap)
            s = self._live.get(session_id)
            # Identity, not equality: only the entry pushed last for this session counts.
            if s is None or s.due is not due:
                continue
            deadline = _deadline(s, s.limits)
            if deadline <= now:
                self._end(s, E.SESSION_EXPIRED, now)
                ended += 1
            else:
                self._push(s, deadline)
        return ended

    def _prune(self, record: _Agent, limits: Limits, now: float) -> None:
        """Expire the agent's sessions by the current limits and drop its lapsed reservations."""
        for s in [s for s in record.sessions if _expiry(s, limits, now) is not None]:
            self._end(s, E.SESSION_EXPIRED, now)
        for token in [t for t, lapse in record.pending.items() if lapse <= now]:
            self._unreserve(token)

    def _unreserve(self, token: str) -> None:
        record = self._pending.pop(token, None)
        if record is not None:
            del record.pending[token]
            self._drop_if_empty(record)

    def _end(self, s: _Session, reason: E, now: float) -> None:
        del self._live[s.id]
        if s.kind is Kind.WINDOW:
            if self._windows.get(s.agent) is s:
                del self._windows[s.agent]
        else:
            record = self._agents[s.agent]
            record.sessions.discard(s)
            self._drop_if_empty(record)
        s.ended = reason
        s.ended_at = now
        s.tools = None
        s.tokens = s.stamp = s.due = _GONE  # a tombstone keeps what check and get show
        self._ended[s.id] = s  # never evicted: forgotten tombstone_ttl after the end only

    def _drop_if_empty(self, record: _Agent) -> None:
        if not record.sessions and not record.pending:
            del self._agents[record.name]


if TYPE_CHECKING:
    _implements: SessionStore = MemoryStore()  # mypy proves the protocol is met
