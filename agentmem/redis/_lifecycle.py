"""The session lifecycle on Redis: the owner index, info, retention and history pages.

Besides a session's two keys (see :mod:`agentmem.redis.session`), a session with an owner is
indexed in two sorted sets of that owner, kept by the same script as every write::

    {session_prefix}:owner:{user}          member: session id, score: updated_at (Unix seconds)
    {session_prefix}:owner-expiry:{user}   member: session id, score: expiry (Unix ms; inf)

so a user's sessions are listed newest first without scanning the keyspace. Expiry stays native
(the session's keys carry a TTL); the index forgets an expired session lazily (before every
listing or count of that owner) and in ``purge_expired``. The owner's keys have their own hash
tag, so on Redis Cluster the writes of a session with an owner touch two slots: the owner index
needs a single Redis (or a cluster proxy that runs such scripts).

The session hash holds, besides ``created_at`` and ``updated_at``: ``user_id``, ``title``,
``metadata`` (JSON) when given, and ``trimmed``: how many items retention dropped from the head
of the list, so that a position in the history (a page cursor) stays valid across appends.
"""

from __future__ import annotations

from typing import Final

from agentmem._batch import BATCH_ID_LENGTH
from agentmem.redis._lock import LOCK_LOST
from agentmem.redis.client import Script

# Lua's unpack() has a stack limit (~8000 values): push long batches in chunks.
RPUSH_CHUNK: Final = 1000

# The ids of the newest batches a session holds, kept in its hash (field "batches"): a retried
# add_items whose first attempt was applied (its reply lost) is applied once.
RECENT_BATCHES: Final = 32


def fence(token: int) -> str:
    """Refuses a write made under a lock that is no longer the caller's (KEYS[3]: the lock
    key, present only while the caller holds the session's lock; ARGV[token]: its token)."""
    return f"""
if KEYS[3] and redis.call('GET', KEYS[3]) ~= ARGV[{token}] then
  return redis.error_reply('{LOCK_LOST} the session lock of this writer was lost')
end
"""


_TAG = """
local function tag(s)
  return (s:gsub('%%', '%%25'):gsub('{', '%%7B'):gsub('}', '%%7D'))
end
"""

# index(prefix, session id, updated_at, expiry ms or 0, owner): the owner's two sorted sets.
_INDEX = (
    _TAG
    + """
local function index(prefix, id, updated, expires, owner)
  if not owner then return end
  local t = '{' .. tag(owner) .. '}'
  redis.call('ZADD', prefix .. ':owner:' .. t, updated, id)
  redis.call('ZADD', prefix .. ':owner-expiry:' .. t, expires > 0 and expires or '+inf', id)
end
local function unindex(prefix, id, owner)
  if not owner then return end
  local t = '{' .. tag(owner) .. '}'
  redis.call('ZREM', prefix .. ':owner:' .. t, id)
  redis.call('ZREM', prefix .. ':owner-expiry:' .. t, id)
end
local function expire(keys, ttl)
  for _, key in ipairs(keys) do
    if ttl > 0 then redis.call('PEXPIRE', key, ttl) else redis.call('PERSIST', key) end
  end
end
"""
)

ADD_SOURCE: Final = (
    _INDEX
    + fence(10)
    + f"""
-- KEYS[1] item list, KEYS[2] session hash[, KEYS[3] the lock key while the writer holds it]
-- ARGV[1] now (Unix seconds), ARGV[2] ttl ms (0: none), ARGV[3] max items (0: none),
-- ARGV[4] session prefix, ARGV[5] session id, ARGV[6..8] owner, title, metadata of a new
-- session ('' : none), ARGV[9] batch id, ARGV[10] lock token, ARGV[11..] items.
-- Returns 1 when added, 0 when the batch id was already applied.
local meta_type = redis.call('TYPE', KEYS[2]).ok
if meta_type ~= 'none' and meta_type ~= 'hash' then
  return redis.error_reply('WRONGTYPE ' .. KEYS[2] .. ' holds a ' .. meta_type .. ', not a hash')
end
local list_type = redis.call('TYPE', KEYS[1]).ok
if list_type ~= 'none' and list_type ~= 'list' then
  return redis.error_reply('WRONGTYPE ' .. KEYS[1] .. ' holds a ' .. list_type .. ', not a list')
end
local recent = redis.call('HGET', KEYS[2], 'batches') or ''
local batch = ARGV[9] .. ','
if string.find(recent, batch, 1, true) then return 0 end
for i = 11, #ARGV, {RPUSH_CHUNK} do
  redis.call('RPUSH', KEYS[1], unpack(ARGV, i, math.min(i + {RPUSH_CHUNK - 1}, #ARGV)))
end
recent = recent .. batch
local keep = {RECENT_BATCHES * (BATCH_ID_LENGTH + 1)}
if #recent > keep then recent = string.sub(recent, -keep) end
redis.call('HSETNX', KEYS[2], 'created_at', ARGV[1])
redis.call('HSET', KEYS[2], 'updated_at', ARGV[1], 'batches', recent)
if ARGV[6] ~= '' then redis.call('HSETNX', KEYS[2], 'user_id', ARGV[6]) end
if ARGV[7] ~= '' then redis.call('HSETNX', KEYS[2], 'title', ARGV[7]) end
if ARGV[8] ~= '' then redis.call('HSETNX', KEYS[2], 'metadata', ARGV[8]) end
local most = tonumber(ARGV[3])
if most > 0 then
  local over = redis.call('LLEN', KEYS[1]) - most
  if over > 0 then
    redis.call('LTRIM', KEYS[1], over, -1)
    redis.call('HINCRBY', KEYS[2], 'trimmed', over)
  end
end
local ttl = tonumber(ARGV[2])
expire({{KEYS[1], KEYS[2]}}, ttl)
local expires = 0
if ttl > 0 then expires = math.floor(tonumber(ARGV[1]) * 1000) + ttl end
index(ARGV[4], ARGV[5], ARGV[1], expires, redis.call('HGET', KEYS[2], 'user_id'))
return 1
"""
)

POP_SOURCE: Final = (
    _INDEX
    + fence(5)
    + """
-- KEYS[1] item list, KEYS[2] session hash[, KEYS[3] the lock key while the writer holds it]
-- ARGV[1] now, ARGV[2] ttl ms (0: none), ARGV[3] session prefix, ARGV[4] session id,
-- ARGV[5] lock token. Returns the popped item or nil.
local item = redis.call('RPOP', KEYS[1])
if item then
  redis.call('HSET', KEYS[2], 'updated_at', ARGV[1])
  local ttl = tonumber(ARGV[2])
  expire({KEYS[1], KEYS[2]}, ttl)
  local expires = 0
  if ttl > 0 then expires = math.floor(tonumber(ARGV[1]) * 1000) + ttl end
  index(ARGV[3], ARGV[4], ARGV[1], expires, redis.call('HGET', KEYS[2], 'user_id'))
end
return item
"""
)

DROP_SOURCE: Final = (
    _INDEX
    + fence(3)
    + """
-- KEYS[1] item list, KEYS[2] session hash[, KEYS[3] the lock key while the writer holds it];
-- ARGV[1] session prefix, ARGV[2] session id[, ARGV[3] lock token].
-- Deletes the session and its index entries; returns how many of its keys existed.
unindex(ARGV[1], ARGV[2], redis.call('HGET', KEYS[2], 'user_id'))
return redis.call('DEL', KEYS[1], KEYS[2])
"""
)

UPDATE_SOURCE: Final = (
    _INDEX
    + """
-- KEYS[1] item list, KEYS[2] session hash
-- ARGV[1] now, ARGV[2] ttl ms (0: none), ARGV[3] session prefix, ARGV[4] session id,
-- ARGV[5..] triples: field, 's' (set), 'n' (set unless present) or 'd' (delete), value.
-- Returns 1.
local old_owner = redis.call('HGET', KEYS[2], 'user_id')
redis.call('HSETNX', KEYS[2], 'created_at', ARGV[1])
redis.call('HSETNX', KEYS[2], 'updated_at', ARGV[1])
for i = 5, #ARGV, 3 do
  if ARGV[i + 1] == 's' then
    redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 2])
  elseif ARGV[i + 1] == 'n' then
    redis.call('HSETNX', KEYS[2], ARGV[i], ARGV[i + 2])
  else
    redis.call('HDEL', KEYS[2], ARGV[i])
  end
end
local owner = redis.call('HGET', KEYS[2], 'user_id')
if old_owner ~= owner then unindex(ARGV[3], ARGV[4], old_owner) end
local ttl = tonumber(ARGV[2])
expire(KEYS, ttl)
local expires = 0
if ttl > 0 then expires = math.floor(tonumber(ARGV[1]) * 1000) + ttl end
index(ARGV[3], ARGV[4], redis.call('HGET', KEYS[2], 'updated_at'), expires, owner)
return 1
"""
)

TOUCH_READ_SOURCE: Final = (
    _INDEX
    + """
-- KEYS[1] item list, KEYS[2] session hash
-- ARGV[1] now, ARGV[2] ttl ms, ARGV[3] session prefix, ARGV[4] session id, ARGV[5] start.
-- Slides the expiry of a stored session, then returns its items from index ARGV[5].
if redis.call('EXISTS', KEYS[2]) == 1 then
  local ttl = tonumber(ARGV[2])
  expire(KEYS, ttl)
  local owner = redis.call('HGET', KEYS[2], 'user_id')
  if owner then
    redis.call('ZADD', ARGV[3] .. ':owner-expiry:{' .. tag(owner) .. '}',
      math.floor(tonumber(ARGV[1]) * 1000) + ttl, ARGV[4])
  end
end
return redis.call('LRANGE', KEYS[1], tonumber(ARGV[5]), -1)
"""
)

PAGE_SOURCE: Final = """
-- KEYS[1] item list, KEYS[2] session hash; ARGV[1] position before which (-1: the end),
-- ARGV[2] limit. Returns {position of the first item, position of the history's first, items}.
local trimmed = tonumber(redis.call('HGET', KEYS[2], 'trimmed') or '0')
local stop = trimmed + redis.call('LLEN', KEYS[1])
local before = tonumber(ARGV[1])
if before >= 0 and before < stop then stop = before end
local start = math.max(trimmed, stop - tonumber(ARGV[2]))
if stop <= start then return {start, trimmed, {}} end
return {start, trimmed, redis.call('LRANGE', KEYS[1], start - trimmed, stop - trimmed - 1)}
"""

CLEAN_SOURCE: Final = """
-- KEYS[1] an owner's activity index, KEYS[2] its expiry index; ARGV[1] now (Unix ms),
-- ARGV[2] most members to drop. Drops members whose expiry has passed; returns how many.
local gone = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
if #gone > 0 then
  redis.call('ZREM', KEYS[1], unpack(gone))
  redis.call('ZREM', KEYS[2], unpack(gone))
end
return #gone
"""

INFOS_SOURCE: Final = """
-- KEYS: pairs of session hash, item list. Returns, per session, {the hash's created_at,
-- updated_at, user_id, title and metadata, the list's length, the hash's PTTL, whether any
-- of its keys exists}: one reply for a listing page (an owner's sessions).
local out = {}
for i = 1, #KEYS, 2 do
  out[#out + 1] = {
    redis.call('HMGET', KEYS[i], 'created_at', 'updated_at', 'user_id', 'title', 'metadata'),
    redis.call('LLEN', KEYS[i + 1]),
    redis.call('PTTL', KEYS[i]),
    redis.call('EXISTS', KEYS[i], KEYS[i + 1]),
  }
end
return out
"""

ADD = Script(ADD_SOURCE)
INFOS = Script(INFOS_SOURCE)
POP = Script(POP_SOURCE)
DROP = Script(DROP_SOURCE)
UPDATE = Script(UPDATE_SOURCE)
TOUCH_READ = Script(TOUCH_READ_SOURCE)
PAGE = Script(PAGE_SOURCE)
CLEAN = Script(CLEAN_SOURCE)
