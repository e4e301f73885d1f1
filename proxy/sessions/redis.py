"""The Redis (or Valkey) session store: replicas share sessions, counters and caps.

Every decision is one round trip: a Lua script run with EVALSHA (redis-py reloads it on
NOSCRIPT), so a check and its count, a reservation against the cap, a bind, a close and
each sweep batch happen with no other client in between, whatever the number of
replicas. Time is the caller's ``now`` (an ARGV), never Redis ``TIME``: the answers are
the memory store's, to the float (Lua numbers are doubles; floats cross as strings, since
a number returned from Lua is truncated to an integer). Scripts build some key names
from the prefix (a session's agent set is known only once its hash is read), so the
store wants one Redis or Valkey primary, not a Cluster.

Keys, all under the prefix (default ``agent-warden:``):

``s:{session}``  hash: agent, protocol, kind (minted|protocol|window), grant (minted
                 sessions that have one: the JSON as given), created, last_used, used,
                 tokens, stamp, proxy_issued, ttl and idle_timeout (the limits it was
                 last judged by, for ``sweep``), and once it ends: ended
                 (closed|expired), ended_at. With task links: hold (until when they are
                 held: the longest the hash can last, created + ttl + the tombstone
                 hour, then its end plus the hour once it ends; pushed later only when
                 the hash would outlive it, a reload raising ``ttl``), and doubt (1) if a
                 link was refused for it. Expires at its deadline plus the tombstone
                 hour; an ended session keeps answering SESSION_CLOSED or
                 SESSION_EXPIRED until then.
``t:{session}``  hash: calls per budgeted tool. Same expiry; deleted when the session ends.
``a:{agent}``    sorted set: what counts against the agent's cap. ``s:{session}`` scored
                 by its deadline, ``r:{nonce}`` (a reservation) by when it lapses.
                 ``reserve`` drops lapsed reservations and ends the sessions expired by
                 the current limits; the key expires at its latest member's deadline.
                 Windows are never members: they are outside the cap.
``w:{agent}``    string: the id of the agent's current window (a session of kind
                 window, ids ``aww-...``). Same expiry as the window's ``s:`` hash;
                 deleted when that window ends, so the next ``window`` opens a new one.
``live``         sorted set: live session ids (windows too) by deadline, for
                 ``sessions``, ``live_count``, ``sweep`` and ``max_sessions``. Expires an
                 hour after its latest deadline.
``r``            sorted set: every pending reservation's nonce by when it lapses, for
                 ``max_sessions`` (live sessions plus pending reservations).
``e``            sorted set: every tombstone's id by when it is forgotten (its end plus
                 the tombstone hour), for ``max_tombstones``.
``k:{task}``     string: the A2A context of a task. Expires when its context's ``s:``
                 hash can no longer exist: the context's ``hold``; for a context with no
                 hash, ``task_ttl`` after the last link to it.
``x:{context}``  set: the tasks linked to a context; same expiry as its links.
``n``            sorted set: every task link by when it expires, for ``max_task_links``.
``d``            sorted set: contexts a link was refused for (the store is full), by
                 their ``hold``: while one is there, an unknown task is "unsure".
``u``            string: the same for refused links to contexts with no hash: unsure
                 until then (the caller's clock).
``q:{n}:{session}:{state}``  string: a remembered MCP requestState (``n`` is the length
                 of the session id, so ids with colons stay unambiguous); the value is
                 when it lapses (the caller's clock). Expires after the hour; taken
                 with GETDEL, so exactly one caller finds it.

Unset count limits arrive as ``UNLIMITED`` (2**53), exact as a Lua double; every number
a script writes goes through ``%.17g``, and a check with ``per_minute >= UNLIMITED``
leaves the bucket alone, as the memory store does.

Expiries are relative (PEXPIRE of the caller's deadline minus the caller's ``now``), so a
clock skew between replicas and Redis moves when memory is reclaimed, never a decision.
Index TTLs are only ever extended; a session's own TTL follows its deadline. The
proxy-wide counts (``r``, ``e``, ``n``, ``d``) count members scored after the caller's
now, so a member past its time counts for nothing before ``sweep`` removes it.

Faults: a connection error, a timeout, LOADING, READONLY, MASTERDOWN, OOM or BUSY raise
``StoreUnavailable``. A script whose pooled connection turns out closed (the server
restarted) is run once more on a fresh connection; nothing else is retried. Running a
script twice can only count a call twice or hold a place twice, so it errs on the strict
side and never lets one more call through. The pool reconnects by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from redis import exceptions as rx
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

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
    StoreUnavailable,
)
from proxy.sessions.memory import STATE_TTL, TASK_TTL, TOMBSTONE_TTL, WINDOW_PREFIX

if TYPE_CHECKING:
    from redis.commands.core import AsyncScript

    from proxy.sessions.base import SessionStore

DEFAULT_PREFIX = "agent-warden:"
RESERVATION_TTL = 60.0  # seconds an unbound reservation holds its place in the cap
SWEEP_BATCH = 500  # sessions examined per sweep script: Redis is never blocked for long

# Connection defaults; the URL's own query parameters (socket_timeout, ...) win.
_POOL_DEFAULTS: dict[str, Any] = {
    "socket_timeout": 1.0,
    "socket_connect_timeout": 1.0,
    "health_check_interval": 10,
    "max_connections": 64,
    "timeout": 1.0,  # waiting for a free pooled connection
    "retry": Retry(NoBackoff(), 0),
    "encoding_errors": "surrogateescape",  # agent ids decoded that way by aiohttp round-trip
    "decode_responses": True,
}

_FAULTS = (
    rx.ConnectionError,  # includes BusyLoadingError (LOADING) and authentication failures
    rx.TimeoutError,
    rx.ReadOnlyError,
    rx.ClusterDownError,  # includes MasterDownError
    rx.TryAgainError,
    rx.OutOfMemoryError,
    rx.NoPermissionError,
    OSError,
)

_DB_PATH = re.compile(r"/?(\d*)")

# --- the scripts ----------------------------------------------------------------------------

# Shared by every script. Floats are written with %.17g: tostring() keeps 14 digits only.
_LIB = (
    f"local UNLIMITED = {UNLIMITED}\n"
    + r"""
local function num(x) return string.format('%.17g', x) end
local function ms(seconds)
  local m = math.ceil(seconds * 1000)
  if m < 1 then return 1 end
  return m
end
local function extend(key, m)
  local left = redis.call('PTTL', key)
  if left == -1 or (left >= 0 and left < m) then redis.call('PEXPIRE', key, m) end
end
local function deadline(created, last, ttl, idle)
  return math.min(created + ttl, last + idle)
end
local function expiry(created, last, ttl, idle, now)
  local age = now - created
  if age >= ttl then return 'ttl', ttl, age end
  local idle_for = now - last
  if idle_for >= idle then return 'idle_timeout', idle, idle_for end
  return nil
end
local function refill(tokens, stamp, per_minute, now)
  if now > stamp then
    tokens = tokens + (now - stamp) * per_minute / 60.0
    stamp = now
  end
  if tokens > per_minute then tokens = per_minute end
  return tokens, stamp
end
-- Every task link of a context expires at `until` (the caller's clock).
local function hold_links(P, id, until_, now)
  local m = ms(until_ - now)
  local tasks = P .. 'x:' .. id
  for _, task in ipairs(redis.call('SMEMBERS', tasks)) do
    local link = P .. 'k:' .. task
    if redis.call('GET', link) == id then
      redis.call('PEXPIRE', link, m)
      redis.call('ZADD', P .. 'n', num(until_), task)
    else
      redis.call('SREM', tasks, task)
    end
  end
  redis.call('PEXPIRE', tasks, m)
  extend(P .. 'n', m)
end
-- A session's links, and a doubt about it, are held as long as its hash can last.
local function hold(P, id, until_, now)
  local key = P .. 's:' .. id
  redis.call('HSET', key, 'hold', num(until_))
  hold_links(P, id, until_, now)
  if redis.call('HEXISTS', key, 'doubt') == 1 then
    redis.call('ZADD', P .. 'd', num(until_), id)
    extend(P .. 'd', ms(until_ - now))
  end
end
local function finish(P, id, agent, reason, now, tomb)
  local key = P .. 's:' .. id
  redis.call('HSET', key, 'ended', reason, 'ended_at', num(now))
  redis.call('PEXPIRE', key, ms(tomb))
  redis.call('DEL', P .. 't:' .. id)
  redis.call('ZREM', P .. 'live', id)
  redis.call('ZREM', P .. 'a:' .. agent, 's:' .. id)
  local window = P .. 'w:' .. agent
  if redis.call('GET', window) == id then redis.call('DEL', window) end
  redis.call('ZADD', P .. 'e', num(now + tomb), id)
  extend(P .. 'e', ms(tomb))
  if redis.call('HEXISTS', key, 'hold') == 1 then hold(P, id, now + tomb, now) end
end
-- The proxy-wide bounds at `at` (the caller's now, as given): nil, or what is full.
local function full(P, at, max_sessions, max_tombstones)
  local after = '(' .. at
  local held = redis.call('ZCOUNT', P .. 'live', after, '+inf')
    + redis.call('ZCOUNT', P .. 'r', after, '+inf')
  if held >= max_sessions then return held, 'max_sessions' end
  local ended = redis.call('ZCOUNT', P .. 'e', after, '+inf')
  if ended >= max_tombstones then return ended, 'max_tombstones' end
  return nil
end
-- A window (kind 'window') is outside the cap: its agent's window key follows it instead.
local function touch(P, id, agent, due, now, tomb, kind)
  local life = ms(due + tomb - now)
  redis.call('PEXPIRE', P .. 's:' .. id, life)
  redis.call('PEXPIRE', P .. 't:' .. id, life)
  redis.call('ZADD', P .. 'live', num(due), id)
  extend(P .. 'live', life)
  if kind == 'window' then
    local window = P .. 'w:' .. agent
    if redis.call('GET', window) == id then redis.call('PEXPIRE', window, life) end
  else
    local mine = P .. 'a:' .. agent
    redis.call('ZADD', mine, num(due), 's:' .. id)
    extend(mine, ms(due - now))
  end
end
"""
)

# KEYS: agent set. ARGV: prefix, now, ttl, idle_timeout, max_per_agent, nonce,
# reservation ttl, tombstone ttl, agent, max_sessions, max_tombstones.
# Returns {1, held, ''} or {0, held, the limit: max_per_agent|max_sessions|max_tombstones}.
_RESERVE = (
    _LIB
    + r"""
local P, now = ARGV[1], tonumber(ARGV[2])
local ttl, idle, cap = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local rttl, tomb, agent = tonumber(ARGV[7]), tonumber(ARGV[8]), ARGV[9]
local held = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
for i = 1, #held, 2 do
  local member = held[i]
  if string.sub(member, 1, 2) == 'r:' then
    if tonumber(held[i + 1]) <= now then redis.call('ZREM', KEYS[1], member) end
  else
    local id = string.sub(member, 3)
    local h = redis.call('HMGET', P .. 's:' .. id, 'created', 'last_used', 'ended')
    if not h[1] or h[3] then
      redis.call('ZREM', KEYS[1], member)
    elseif expiry(tonumber(h[1]), tonumber(h[2]), ttl, idle, now) then
      finish(P, id, agent, 'expired', now, tomb)
    end
  end
end
local count = redis.call('ZCARD', KEYS[1])
if count >= cap then return {0, count, 'max_per_agent'} end
local used, limit = full(P, ARGV[2], tonumber(ARGV[10]), tonumber(ARGV[11]))
if used then return {0, used, limit} end
redis.call('ZADD', KEYS[1], num(now + rttl), 'r:' .. ARGV[6])
extend(KEYS[1], ms(rttl))
redis.call('ZADD', P .. 'r', num(now + rttl), ARGV[6])
extend(P .. 'r', ms(rttl))
return {1, count, ''}
"""
)

# KEYS: session hash, the reservation's agent set. ARGV: prefix, now, nonce, session id,
# agent, protocol, proxy_issued, counted, ttl, idle_timeout, per_minute, tombstone ttl,
# kind, has grant (1|0), grant.
# Returns 1 (born), 2 (an existing session of this agent, charged) or 0 (left alone).
_BIND = (
    _LIB
    + r"""
local P, now, id, agent = ARGV[1], tonumber(ARGV[2]), ARGV[4], ARGV[5]
local counted, per_minute, tomb = tonumber(ARGV[8]), tonumber(ARGV[11]), tonumber(ARGV[12])
if ARGV[3] ~= '' then
  redis.call('ZREM', KEYS[2], 'r:' .. ARGV[3])
  redis.call('ZREM', P .. 'r', ARGV[3])
end
local h = redis.call('HMGET', KEYS[1], 'agent', 'ended', 'created', 'last_used', 'used',
  'tokens', 'stamp', 'ttl', 'idle_timeout', 'kind', 'hold')
if h[1] then
  if h[2] or h[1] ~= agent then return 0 end
  local last = math.max(tonumber(h[4]), now)
  local tokens, stamp = refill(tonumber(h[6]), tonumber(h[7]), per_minute, now)
  redis.call('HSET', KEYS[1], 'last_used', num(last), 'tokens', num(tokens - counted),
    'stamp', num(stamp), 'used', num(tonumber(h[5]) + counted))
  local created, lttl = tonumber(h[3]), tonumber(h[8])
  local due = deadline(created, last, lttl, tonumber(h[9]))
  touch(P, id, agent, due, now, tomb, h[10])
  if h[11] and due + tomb > tonumber(h[11]) then hold(P, id, created + lttl + tomb, now) end
  return 2
end
local ttl, idle = tonumber(ARGV[9]), tonumber(ARGV[10])
redis.call('HSET', KEYS[1], 'agent', agent, 'protocol', ARGV[6], 'kind', ARGV[13],
  'created', ARGV[2], 'last_used', ARGV[2], 'used', num(counted),
  'tokens', num(math.min(per_minute, UNLIMITED) - counted), 'stamp', ARGV[2],
  'proxy_issued', ARGV[7], 'ttl', ARGV[9], 'idle_timeout', ARGV[10])
if ARGV[14] == '1' then redis.call('HSET', KEYS[1], 'grant', ARGV[15]) end
touch(P, id, agent, deadline(now, now, ttl, idle), now, tomb, ARGV[13])
-- Links made while the id was unknown are the session's now.
if redis.call('EXISTS', P .. 'x:' .. id) == 1 then hold(P, id, now + ttl + tomb, now) end
return 1
"""
)

# KEYS: session hash, its tool counts. ARGV: prefix, now, ttl, idle_timeout, calls,
# per_minute, tombstone ttl, agent, session id, then per call: counted (1|0), tool,
# the tool's budget ('' when none), the authorization denial ('' when none).
# Returns {'S', reason[, limit kind, limit, used]} for a session-level denial, or 'C'
# followed by five strings per call: reason ('' = allowed), kind, limit, used, retry.
_CHECK = (
    _LIB
    + r"""
local P, now, agent, id = ARGV[1], tonumber(ARGV[2]), ARGV[8], ARGV[9]
local ttl, idle, calls = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local per_minute, tomb = tonumber(ARGV[6]), tonumber(ARGV[7])
local h = redis.call('HMGET', KEYS[1], 'agent', 'ended', 'created', 'last_used', 'used',
  'tokens', 'stamp', 'ended_at', 'ttl', 'idle_timeout', 'kind', 'hold')
if not h[1] then return {'S', 'SESSION_NOT_FOUND'} end
if h[1] ~= agent then return {'S', 'AGENT_MISMATCH'} end
if h[2] == 'closed' then return {'S', 'SESSION_CLOSED'} end
local created, last = tonumber(h[3]), tonumber(h[4])
if h[2] then
  -- Which limit ended it, for the operator's log: judged as when it ended.
  local lttl, lidle = tonumber(h[9]), tonumber(h[10])
  local at = math.max(tonumber(h[8]), deadline(created, last, lttl, lidle))
  local kind, limit, used = expiry(created, last, lttl, lidle, at)
  if kind then return {'S', 'SESSION_EXPIRED', kind, num(limit), num(used)} end
  return {'S', 'SESSION_EXPIRED'}
end
local kind, limit, over = expiry(created, last, ttl, idle, now)
if kind then
  finish(P, id, agent, 'expired', now, tomb)
  return {'S', 'SESSION_EXPIRED', kind, num(limit), num(over)}
end
if now > last then last = now end
local used, tokens, stamp = tonumber(h[5]), tonumber(h[6]), tonumber(h[7])
local spent, changed = {}, {}
local out = {'C'}
local function verdict(reason, kind, limit, value, retry)
  out[#out + 1] = reason
  out[#out + 1] = kind or ''
  out[#out + 1] = limit and num(limit) or ''
  out[#out + 1] = value and num(value) or ''
  out[#out + 1] = retry and num(retry) or ''
end
local function decide(counted, tool, budget, denied)
  if counted ~= '1' then return verdict(denied) end
  if used >= calls then
    return verdict('SESSION_BUDGET_EXCEEDED', 'calls', calls, used)
  end
  local allowance = budget ~= '' and tonumber(budget)
  if allowance then
    if spent[tool] == nil then
      spent[tool] = tonumber(redis.call('HGET', KEYS[2], tool) or '0')
    end
    if spent[tool] >= allowance then
      return verdict('SESSION_BUDGET_EXCEEDED', 'tool_calls', allowance, spent[tool])
    end
  end
  if denied ~= '' then return verdict(denied) end
  if per_minute < UNLIMITED then  -- an unset rate limit keeps no bucket
    tokens, stamp = refill(tokens, stamp, per_minute, now)
    if tokens < 1.0 - 1e-9 then
      local wait = (1.0 - tokens) * 60.0 / per_minute
      return verdict('SESSION_RATE_LIMITED', 'per_minute', per_minute, per_minute - tokens, wait)
    end
    tokens = tokens - 1.0
  end
  used = used + 1
  if allowance then
    spent[tool] = spent[tool] + 1
    changed[tool] = true
  end
  return verdict('')
end
for i = 10, #ARGV, 4 do decide(ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]) end
redis.call('HSET', KEYS[1], 'last_used', num(last), 'used', num(used), 'tokens', num(tokens),
  'stamp', num(stamp), 'ttl', ARGV[3], 'idle_timeout', ARGV[4])
for tool in pairs(changed) do redis.call('HSET', KEYS[2], tool, spent[tool]) end
local due = deadline(created, last, ttl, idle)
touch(P, id, agent, due, now, tomb, h[11])
-- Its links outlast the hash; only a reload raising ttl can make this true.
if h[12] and due + tomb > tonumber(h[12]) then hold(P, id, created + ttl + tomb, now) end
return out
"""
)

# KEYS: session hash. ARGV: prefix, now, tombstone ttl, session id. Returns 1 if closed.
_CLOSE = (
    _LIB
    + r"""
local P, now, tomb, id = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local h = redis.call('HMGET', KEYS[1], 'agent', 'ended', 'created', 'last_used', 'ttl',
  'idle_timeout')
if not h[1] or h[2] then return 0 end
local due = deadline(tonumber(h[3]), tonumber(h[4]), tonumber(h[5]), tonumber(h[6]))
if due <= now then
  finish(P, id, h[1], 'expired', now, tomb)
  return 0
end
finish(P, id, h[1], 'closed', now, tomb)
return 1
"""
)

# KEYS: the agent's window key. ARGV: prefix, now, ttl, idle_timeout, per_minute,
# tombstone ttl, agent, protocol, a fresh id, max_sessions, max_tombstones. Returns
# {1, id} for the agent's live window: the current one, or the fresh id once the current
# one is gone or expired (ended here); {0, used, limit} when a new one would pass a bound.
_WINDOW = (
    _LIB
    + r"""
local P, now = ARGV[1], tonumber(ARGV[2])
local ttl, idle, per_minute = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local tomb, agent, id = tonumber(ARGV[6]), ARGV[7], ARGV[9]
local current = redis.call('GET', KEYS[1])
if current then
  local h = redis.call('HMGET', P .. 's:' .. current, 'agent', 'ended', 'created', 'last_used')
  if h[1] and not h[2] then
    if not expiry(tonumber(h[3]), tonumber(h[4]), ttl, idle, now) then return {1, current} end
    finish(P, current, h[1], 'expired', now, tomb)
  end
end
local used, limit = full(P, ARGV[2], tonumber(ARGV[10]), tonumber(ARGV[11]))
if used then return {0, used, limit} end
redis.call('HSET', P .. 's:' .. id, 'agent', agent, 'protocol', ARGV[8], 'kind', 'window',
  'created', ARGV[2], 'last_used', ARGV[2], 'used', '0',
  'tokens', num(math.min(per_minute, UNLIMITED)), 'stamp', ARGV[2], 'proxy_issued', '0',
  'ttl', ARGV[3], 'idle_timeout', ARGV[4])
redis.call('SET', KEYS[1], id)
touch(P, id, agent, deadline(now, now, ttl, idle), now, tomb, 'window')
return {1, id}
"""
)

# KEYS: the live set. ARGV: prefix, now, batch size, tombstone ttl.
# Returns {sessions ended, entries examined}; fewer examined than the batch: done.
# Also drops, a batch each, the members of the counting sets that are past their time.
_SWEEP = (
    _LIB
    + r"""
local P, now, tomb = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[4])
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[2], 'LIMIT', 0, ARGV[3])
local ended = 0
for _, id in ipairs(due) do
  local h = redis.call('HMGET', P .. 's:' .. id, 'agent', 'ended', 'created', 'last_used',
    'ttl', 'idle_timeout')
  if not h[1] or h[2] then
    redis.call('ZREM', KEYS[1], id)
  else
    local at = deadline(tonumber(h[3]), tonumber(h[4]), tonumber(h[5]), tonumber(h[6]))
    if at <= now then
      finish(P, id, h[1], 'expired', now, tomb)
      ended = ended + 1
    else
      redis.call('ZADD', KEYS[1], num(at), id)
    end
  end
end
local examined = #due
for _, name in ipairs({'r', 'e', 'n', 'd'}) do
  local past = redis.call('ZRANGEBYSCORE', P .. name, '-inf', ARGV[2], 'LIMIT', 0, ARGV[3])
  if #past > 0 then redis.call('ZREM', P .. name, unpack(past)) end
  if #past > examined then examined = #past end
end
return {ended, examined}
"""
)

# ARGV: prefix, now, task, context, max_task_links, task ttl, tombstone ttl.
# Returns {1} (linked), or {0, links} (refused: full; the context is doubted).
_LINK = (
    _LIB
    + r"""
local P, now, task, ctx = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]
local cap, orphan, tomb = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local link, key = P .. 'k:' .. task, P .. 's:' .. ctx
local current = redis.call('GET', link)
local h = redis.call('HMGET', key, 'agent', 'created', 'ttl', 'ended', 'ended_at', 'hold')
local until_ = nil  -- the longest the context's hash can last: its links last as long
if h[1] then
  if h[4] then
    until_ = tonumber(h[5]) + tomb
  else
    until_ = tonumber(h[2]) + tonumber(h[3]) + tomb
  end
  if h[6] and tonumber(h[6]) > until_ then until_ = tonumber(h[6]) end
end
if not current then
  local count = redis.call('ZCOUNT', P .. 'n', '(' .. ARGV[2], '+inf')
  if count >= cap then
    if h[1] then
      redis.call('HSET', key, 'doubt', '1')
      hold(P, ctx, until_, now)
    else
      local doubt = P .. 'u'
      if now + orphan > tonumber(redis.call('GET', doubt) or '0') then
        redis.call('SET', doubt, num(now + orphan), 'PX', ms(orphan))
      end
    end
    return {0, count}
  end
end
if current ~= ctx then
  if current then redis.call('SREM', P .. 'x:' .. current, task) end
  redis.call('SET', link, ctx)
  redis.call('SADD', P .. 'x:' .. ctx, task)
end
if not h[1] then
  hold_links(P, ctx, now + orphan, now)  -- all of an unknown context's links lapse together
elseif h[6] and tonumber(h[6]) >= until_ then
  local m = ms(until_ - now)  -- the others are held that long already
  redis.call('PEXPIRE', link, m)
  redis.call('PEXPIRE', P .. 'x:' .. ctx, m)
  redis.call('ZADD', P .. 'n', num(until_), task)
  extend(P .. 'n', m)
else
  hold(P, ctx, until_, now)
end
return {1}
"""
)

# ARGV: prefix, now, task. Returns {1, context}, {0} (unknown) or {2, links} (unsure).
_TASK = (
    _LIB
    + r"""
local P = ARGV[1]
local ctx = redis.call('GET', P .. 'k:' .. ARGV[3])
if ctx then return {1, ctx} end
local after = '(' .. ARGV[2]
local doubt = redis.call('GET', P .. 'u')
if redis.call('ZCOUNT', P .. 'd', after, '+inf') > 0
  or (doubt and tonumber(doubt) > tonumber(ARGV[2])) then
  return {2, redis.call('ZCOUNT', P .. 'n', after, '+inf')}
end
return {0}
"""
)

# --- decoding ---------------------------------------------------------------------------------

_INFO_FIELDS = (
    "agent",
    "protocol",
    "created",
    "last_used",
    "used",
    "ended",
    "proxy_issued",
    "kind",
    "grant",
)
_ENDED = _INFO_FIELDS.index("ended")
_KINDS = {kind.value: kind for kind in LimitKind}
_SOURCES = {kind.value: kind for kind in Kind}
_PLAIN = {reason.name: Denial(reason) for reason in E}
_ONE_ALLOWED = Outcome(calls=(None,))


def _number(text: str) -> float:
    """An integral value stays an int (budgets, counts); anything else is a float."""
    return int(text) if text.lstrip("-").isdigit() else float(text)


def _denial(
    reason: str, kind: str = "", limit: str = "", used: str = "", retry: str = ""
) -> Denial:
    if not kind:
        return _PLAIN[reason]
    return Denial(
        E[reason],
        _KINDS[kind],
        _number(limit),
        _number(used),
        float(retry) if retry else None,
    )


def _info(session_id: str, row: Sequence[str | None]) -> SessionInfo | None:
    agent, protocol, created, last_used, used, ended, proxy_issued, kind, grant = row
    if agent is None or created is None or last_used is None:
        return None
    return SessionInfo(
        id=session_id,
        agent=agent,
        protocol=protocol or "",
        created=float(created),
        last_used=float(last_used),
        calls_used=int(used or 0),
        closed=ended == "closed",
        proxy_issued=proxy_issued == "1",
        kind=_SOURCES.get(kind or "", Kind.PROTOCOL),  # hashes from before kinds: protocol
        grant=grant,
    )


@contextlib.contextmanager
def _unavailable() -> Iterator[None]:
    """Redis faults become ``StoreUnavailable``; anything else is a bug and propagates."""
    try:
        yield
    except _FAULTS as exc:
        raise StoreUnavailable(f"redis: {type(exc).__name__}: {exc}") from exc
    except rx.ResponseError as exc:
        if str(exc).startswith("BUSY"):  # a long script elsewhere: the server answers nothing
            raise StoreUnavailable(f"redis: {exc}") from exc
        raise


class RedisStore:
    """Sessions and counters in Redis or Valkey, shared by every replica that points there.

    Same answers as ``MemoryStore`` for the same calls (the shared suite proves it); the
    differences are of scale and clock: a tombstone or a link past its time goes when
    Redis expires its key (its clock), not at ``sweep``, and ``sessions`` reads the live
    set and then the hashes (a view, not a snapshot). The proxy-wide bounds count every
    replica's sessions: they are the same for all replicas (each passes its own).
    """

    def __init__(
        self,
        client: Redis,
        *,
        prefix: str = DEFAULT_PREFIX,
        max_sessions: int = DEFAULT_MAX_SESSIONS,
        max_tombstones: int = DEFAULT_MAX_TOMBSTONES,
        max_task_links: int = DEFAULT_MAX_TASK_LINKS,
        reservation_ttl: float = RESERVATION_TTL,
        tombstone_ttl: float = TOMBSTONE_TTL,
        task_ttl: float = TASK_TTL,
        sweep_batch: int = SWEEP_BATCH,
    ) -> None:
        self._redis = client
        self._prefix = prefix
        self._max_sessions = max_sessions
        self._max_tombstones = max_tombstones
        self._max_task_links = max_task_links
        self._reservation_ttl = reservation_ttl
        self._tombstone_ttl = tombstone_ttl
        self._task_ttl = task_ttl
        self._state_ttl_ms = max(1, round(STATE_TTL * 1000))
        self._sweep_batch = sweep_batch
        self._live = prefix + "live"
        timeout = client.connection_pool.connection_kwargs.get("socket_timeout")
        self._timeout = float(timeout) if timeout else 1.0
        self._reserve = client.register_script(_RESERVE)
        self._bind = client.register_script(_BIND)
        self._check = client.register_script(_CHECK)
        self._close = client.register_script(_CLOSE)
        self._window = client.register_script(_WINDOW)
        self._sweep = client.register_script(_SWEEP)
        self._link = client.register_script(_LINK)
        self._task = client.register_script(_TASK)

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        max_sessions: int = DEFAULT_MAX_SESSIONS,
        max_tombstones: int = DEFAULT_MAX_TOMBSTONES,
        max_task_links: int = DEFAULT_MAX_TASK_LINKS,
        reservation_ttl: float = RESERVATION_TTL,
        tombstone_ttl: float = TOMBSTONE_TTL,
        task_ttl: float = TASK_TTL,
        sweep_batch: int = SWEEP_BATCH,
    ) -> RedisStore:
        """``redis://[user:password@]host:port/db``, ``rediss://`` (TLS) or ``unix://path``.

        ``?prefix=`` sets the key prefix (default ``agent-warden:``); every other query
        parameter is redis-py's (``socket_timeout``, ``socket_connect_timeout``,
        ``health_check_interval``, ``max_connections``, ``ssl_ca_certs``, ...). Raises
        ValueError naming what is wrong; the password is never repeated.
        """
        clean, prefix = _split_url(url)
        try:
            pool = BlockingConnectionPool.from_url(clean, **_POOL_DEFAULTS)
            probe: Any = pool.make_connection  # untyped in redis-py
            probe()  # unknown query parameters fail here, not at first use
        except TypeError as exc:
            raise ValueError(f"store URL: unsupported query parameter ({exc})") from None
        except ValueError as exc:
            raise ValueError(f"store URL: {exc}") from None
        return cls(
            Redis.from_pool(pool),
            prefix=prefix,
            max_sessions=max_sessions,
            max_tombstones=max_tombstones,
            max_task_links=max_task_links,
            reservation_ttl=reservation_ttl,
            tombstone_ttl=tombstone_ttl,
            task_ttl=task_ttl,
            sweep_batch=sweep_batch,
        )

    @property
    def prefix(self) -> str:
        return self._prefix

    # --- keys -------------------------------------------------------------------------------

    def _session_key(self, session_id: str) -> str:
        return f"{self._prefix}s:{session_id}"

    def _tools_key(self, session_id: str) -> str:
        return f"{self._prefix}t:{session_id}"

    def _agent_key(self, agent: str) -> str:
        return f"{self._prefix}a:{agent}"

    def _window_key(self, agent: str) -> str:
        return f"{self._prefix}w:{agent}"

    def _state_key(self, session_id: str, state: str) -> str:
        return f"{self._prefix}q:{len(session_id)}:{session_id}:{state}"

    async def _run(self, script: AsyncScript, keys: list[str], args: list[Any]) -> Any:
        with _unavailable():
            try:
                return await script(keys, args)
            except rx.TimeoutError:
                raise
            except rx.ConnectionError:
                # A connection the server closed (a restart) fails once; the pool has
                # dropped it, and the next connection is new.
                return await script(keys, args)

    # --- the cap --------------------------------------------------------------------------

    async def reserve(self, agent: str, limits: Limits, now: float) -> str | Denial:
        nonce = secrets.token_hex(8)
        granted, held, limit = await self._run(
            self._reserve,
            [self._agent_key(agent)],
            [
                self._prefix,
                now,
                limits.ttl,
                limits.idle_timeout,
                limits.max_per_agent,
                nonce,
                self._reservation_ttl,
                self._tombstone_ttl,
                agent,
                self._max_sessions,
                self._max_tombstones,
            ],
        )
        if not granted:
            if limit == LimitKind.CAP.value:
                return Denial(E.TOO_MANY_SESSIONS, LimitKind.CAP, limits.max_per_agent, int(held))
            return self._overloaded(limit, int(held))
        # The token names its agent: ``release`` is given nothing else.
        return f"{nonce}:{agent}"

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
        nonce, _, held_by = reservation.partition(":")
        await self._run(
            self._bind,
            [self._session_key(session_id), self._agent_key(held_by)],
            [
                self._prefix,
                now,
                nonce if held_by else "",
                session_id,
                agent,
                protocol,
                "1" if proxy_issued else "0",
                counted,
                limits.ttl,
                limits.idle_timeout,
                limits.per_minute,
                self._tombstone_ttl,
                kind.value,
                "0" if grant is None else "1",
                grant or "",
            ],
        )

    async def release(self, reservation: str) -> None:
        nonce, _, agent = reservation.partition(":")
        if agent:
            with _unavailable():
                pipe = self._redis.pipeline(transaction=True)
                pipe.zrem(self._agent_key(agent), f"r:{nonce}")
                pipe.zrem(f"{self._prefix}r", nonce)
                await pipe.execute()

    async def window(self, agent: str, protocol: str, limits: Limits, now: float) -> str | Denial:
        opened = await self._run(
            self._window,
            [self._window_key(agent)],
            [
                self._prefix,
                now,
                limits.ttl,
                limits.idle_timeout,
                limits.per_minute,
                self._tombstone_ttl,
                agent,
                protocol,
                WINDOW_PREFIX + secrets.token_urlsafe(16),
                self._max_sessions,
                self._max_tombstones,
            ],
        )
        if opened[0]:
            return cast("str", opened[1])
        return self._overloaded(opened[2], int(opened[1]))

    def _overloaded(self, limit: str, used: int) -> Denial:
        if limit == LimitKind.SESSIONS.value:
            return Denial(E.OVERLOADED, LimitKind.SESSIONS, self._max_sessions, used)
        return Denial(E.OVERLOADED, LimitKind.TOMBSTONES, self._max_tombstones, used)

    async def remember_state(self, session_id: str, state: str, now: float) -> None:
        with _unavailable():
            await self._redis.set(
                self._state_key(session_id, state), repr(now + STATE_TTL), px=self._state_ttl_ms
            )

    async def take_state(self, session_id: str, state: str, now: float) -> bool:
        with _unavailable():
            lapse = await self._redis.getdel(self._state_key(session_id, state))
        return lapse is not None and float(cast("str", lapse)) > now

    # --- decisions ------------------------------------------------------------------------

    async def check(
        self,
        session_id: str,
        agent: str,
        calls: Sequence[Call],
        limits: Limits,
        now: float,
    ) -> Outcome:
        args: list[Any] = [
            self._prefix,
            now,
            limits.ttl,
            limits.idle_timeout,
            limits.calls,
            limits.per_minute,
            self._tombstone_ttl,
            agent,
            session_id,
        ]
        budgets = limits.tool_calls
        for call in calls:
            budget = budgets.get(call.tool) if call.tool is not None and budgets else None
            args += (
                "1" if call.counted else "0",
                call.tool or "",
                "" if budget is None else budget,
                "" if call.denied is None else call.denied.name,
            )
        keys = [self._session_key(session_id), self._tools_key(session_id)]
        reply: list[str] = await self._run(self._check, keys, args)
        if reply[0] == "S":
            return Outcome(session=_denial(*reply[1:]))
        if len(reply) == 6 and not reply[1]:
            return _ONE_ALLOWED
        return Outcome(
            calls=tuple(
                _denial(*reply[i : i + 5]) if reply[i] else None for i in range(1, len(reply), 5)
            )
        )

    async def close(self, session_id: str, now: float) -> bool:
        closed = await self._run(
            self._close,
            [self._session_key(session_id)],
            [self._prefix, now, self._tombstone_ttl, session_id],
        )
        return bool(closed)

    # --- views ----------------------------------------------------------------------------

    async def get(self, session_id: str) -> SessionInfo | None:
        with _unavailable():
            row = await self._redis.hmget(self._session_key(session_id), _INFO_FIELDS)
        return _info(session_id, cast("list[str | None]", row))

    async def link_task(self, task_id: str, context_id: str, now: float) -> Denial | None:
        reply = await self._run(
            self._link,
            [f"{self._prefix}k:{task_id}", self._session_key(context_id)],
            [
                self._prefix,
                now,
                task_id,
                context_id,
                self._max_task_links,
                self._task_ttl,
                self._tombstone_ttl,
            ],
        )
        if reply[0]:
            return None
        return Denial(E.OVERLOADED, LimitKind.TASK_LINKS, self._max_task_links, int(reply[1]))

    async def task_context(self, task_id: str, now: float) -> str | Denial | None:
        reply = await self._run(
            self._task, [f"{self._prefix}k:{task_id}"], [self._prefix, now, task_id]
        )
        if reply[0] == 1:
            return cast("str", reply[1])
        if reply[0] == 2:
            return Denial(E.OVERLOADED, LimitKind.TASK_LINKS, self._max_task_links, int(reply[1]))
        return None

    async def context_of(self, task_id: str) -> str | None:
        with _unavailable():
            found = await self._redis.get(f"{self._prefix}k:{task_id}")
        return cast("str | None", found)

    async def sessions(self, now: float) -> list[SessionInfo]:
        with _unavailable():
            found = await self._redis.zrangebyscore(self._live, f"({now!r}", "+inf")
            ids = cast("list[str]", found)
            if not ids:
                return []
            pipe = self._redis.pipeline(transaction=False)
            for session_id in ids:
                pipe.hmget(self._session_key(session_id), _INFO_FIELDS)
            rows: list[list[str | None]] = await pipe.execute()
        infos = [_info(sid, row) for sid, row in zip(ids, rows, strict=True) if row[_ENDED] is None]
        return [s for s in infos if s is not None]

    async def live_count(self, now: float) -> int:
        with _unavailable():
            return int(await self._redis.zcount(self._live, f"({now!r}", "+inf"))

    # --- housekeeping ---------------------------------------------------------------------

    async def sweep(self, now: float) -> int:
        """End what is due, in batches of one script each; reservations and tombstones expire."""
        total = 0
        while True:
            ended, examined = await self._run(
                self._sweep,
                [self._live],
                [self._prefix, now, self._sweep_batch, self._tombstone_ttl],
            )
            total += int(ended)
            if int(examined) < self._sweep_batch:
                return total

    async def healthy(self) -> bool:
        try:
            async with asyncio.timeout(self._timeout):
                return bool(await self._redis.ping())
        except (rx.RedisError, OSError):
            return False

    async def aclose(self) -> None:
        await self._redis.aclose()


def _split_url(url: str) -> tuple[str, str]:
    """Check the URL and take the ``prefix`` out of it; redis-py gets the rest."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("redis", "rediss", "unix"):
        raise ValueError(
            f"store URL: expected redis://, rediss:// or unix://, got {scheme or 'no'} scheme"
        )
    if scheme == "unix":
        if not parts.path:
            raise ValueError("store URL: unix:// needs a socket path, as in unix:///run/redis.sock")
    else:
        if not parts.hostname:
            raise ValueError(f"store URL: no host, expected {scheme}://host:port/db")
        try:
            parts.port  # noqa: B018  (urlsplit checks the port only when asked)
        except ValueError:
            raise ValueError("store URL: the port must be a number from 1 to 65535") from None
        if _DB_PATH.fullmatch(parts.path) is None:
            raise ValueError(
                f"store URL: the database must be a number, as in {scheme}://host:port/0"
            )
    query = parse_qsl(parts.query, keep_blank_values=True)
    prefixes = [value for key, value in query if key == "prefix"]
    prefix = prefixes[-1] if prefixes else DEFAULT_PREFIX
    if not prefix:
        raise ValueError("store URL: prefix must not be empty")
    rest = urlencode([(key, value) for key, value in query if key != "prefix"])
    return urlunsplit((parts.scheme, parts.netloc, parts.path, rest, parts.fragment)), prefix


if TYPE_CHECKING:
    _implements: SessionStore = RedisStore.from_url("redis://localhost")
