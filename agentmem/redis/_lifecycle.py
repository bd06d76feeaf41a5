"""The session lifecycle on Redis: the indexes by activity, info, retention and history pages.

Besides a session's two keys (see :mod:`agentmem.redis.session`), every session is indexed in
two sorted sets of every session and, when it has an owner, in two of that owner's::

    {session_prefix}:all:{all}             member: session id, score: updated_at (Unix seconds)
    {session_prefix}:all-expiry:{all}      member: session id, score: expiry (Unix ms; inf)
    {session_prefix}:owner:{user}          likewise, the owner's sessions
    {session_prefix}:owner-expiry:{user}

so sessions are listed newest first, and counted, without scanning the keyspace. Expiry stays
native (the session's keys carry a TTL); an index forgets an expired session lazily (before
every listing or count) and in ``purge_expired``. A listing checks every entry against the
session's keys (stored, same owner) and drops stale ones with UNINDEX, which leaves an entry
that a write indexed since.

On a single Redis the write scripts keep the indexes themselves (atomic with the write). On a
Redis Cluster the indexes' hash tags put them in other slots than the session's: a write script
(ARGV "inline" ``'0'``) returns the index update instead, and :func:`indexed` applies it with
INDEX (the newest activity wins) on each index's slot; the expiry indexes are then a hint,
checked against the session's keys before an entry is dropped.

The session hash holds, besides ``created_at`` and ``updated_at``: ``user_id``, ``title``,
``metadata`` (JSON) when given, and ``trimmed``: how many items retention dropped from the head
of the list, so that a position in the history (a page cursor) stays valid across appends.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, Final

from agentmem._batch import BATCH_ID_BYTES
from agentmem.redis import client as _redis
from agentmem.redis._lock import LOCK_LOST
from agentmem.redis.client import LUA_EXPIRE, Script, encode_tag, settled

if TYPE_CHECKING:
    from agentmem.redis.client import RedisClient

# Lua's unpack() has a stack limit (~8000 values): push long batches in chunks.
RPUSH_CHUNK: Final = 1000

# The ids of the newest batches a session holds, kept in its hash (field "batches": their
# bytes, newest last): a retried add_items whose first attempt was applied (its reply lost) is
# applied once. Raw bytes, not hex: the ring is copied into and out of Lua on every write, and
# its length is most of that cost (measured: bench/RESULTS.md, issue 18, second pass).
RECENT_BATCHES: Final = 32
RING_BYTES: Final = RECENT_BATCHES * BATCH_ID_BYTES


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

# The index pairs (activity, expiry) a session is listed in: every session's, and its owner's.
# index(...) and unindex_owner(...) keep them on a single Redis, in the write's own script; with
# ARGV's "inline" flag '0' (a Redis Cluster, where they live in other slots) indexed() returns
# what the caller then applies with INDEX and UNINDEX on their slots.
INDEX_LUA: Final = (
    LUA_EXPIRE
    + _TAG
    + """
local function index_pairs(prefix, owner)
  local out = {{prefix .. ':all:{all}', prefix .. ':all-expiry:{all}'}}
  if owner then
    local t = '{' .. tag(owner) .. '}'
    out[2] = {prefix .. ':owner:' .. t, prefix .. ':owner-expiry:' .. t}
  end
  return out
end
local function index(prefix, id, updated, expires, owner)
  for _, pair in ipairs(index_pairs(prefix, owner)) do
    redis.call('ZADD', pair[1], updated, id)
    redis.call('ZADD', pair[2], expires > 0 and expires or '+inf', id)
  end
end
local function unindex_owner(prefix, id, owner)
  if not owner then return end
  local t = '{' .. tag(owner) .. '}'
  redis.call('ZREM', prefix .. ':owner:' .. t, id)
  redis.call('ZREM', prefix .. ':owner-expiry:' .. t, id)
end
local function indexed(reply, inline, prefix, id, updated, expires, owner, old_owner)
  if inline == '1' then
    if old_owner and old_owner ~= owner then unindex_owner(prefix, id, old_owner) end
    index(prefix, id, updated, expires, owner)
    return reply
  end
  return {reply, owner or '', tostring(updated), expires, old_owner or ''}
end
"""
)

ADD_SOURCE: Final = (
    INDEX_LUA
    + fence(10)
    + f"""
-- KEYS[1] item list, KEYS[2] session hash[, KEYS[3] the lock key while the writer holds it]
-- ARGV[1] now (Unix seconds), ARGV[2] ttl ms (0: none), ARGV[3] max items (0: none),
-- ARGV[4] session prefix, ARGV[5] session id, ARGV[6..8] owner, title, metadata of a new
-- session ('' : none), ARGV[9] batch id ({BATCH_ID_BYTES} bytes), ARGV[10] lock token,
-- ARGV[11] inline ('1': index here; '0': return the index update), ARGV[12..] items.
-- Returns 1 when added, 0 when the batch id was already applied (wrapped by indexed()).
-- A key of another type fails the first command on it (redis.pcall), before any write.
local function refused(reply, key, wanted)
  if not (type(reply) == 'table' and reply.err) then return nil end
  if string.sub(reply.err, 1, 9) ~= 'WRONGTYPE' then return reply end
  local held = redis.call('TYPE', key).ok
  return redis.error_reply('WRONGTYPE ' .. key .. ' holds a ' .. held .. ', not a ' .. wanted)
end
local held = redis.pcall('HMGET', KEYS[2], 'batches', 'created_at', 'user_id')
local err = refused(held, KEYS[2], 'hash')
if err then return err end
local ttl = tonumber(ARGV[2])
local expires = 0
if ttl > 0 then expires = math.floor(tonumber(ARGV[1]) * 1000) + ttl end
local recent = held[1] or ''
local owner = held[3]
if string.find(recent, ARGV[9], 1, true) then
  -- applied before (its reply lost): on a cluster, the caller's index update may not have been
  if ARGV[11] == '1' then return 0 end
  return indexed(0, ARGV[11], ARGV[4], ARGV[5], ARGV[1], expires, owner)
end
local length = redis.pcall('RPUSH', KEYS[1], unpack(ARGV, 12, math.min({11 + RPUSH_CHUNK}, #ARGV)))
err = refused(length, KEYS[1], 'list')
if err then return err end
for i = {12 + RPUSH_CHUNK}, #ARGV, {RPUSH_CHUNK} do
  length = redis.call('RPUSH', KEYS[1], unpack(ARGV, i, math.min(i + {RPUSH_CHUNK - 1}, #ARGV)))
end
recent = recent .. ARGV[9]
if #recent > {RING_BYTES} then recent = string.sub(recent, -{RING_BYTES}) end
local fields = {{'updated_at', ARGV[1], 'batches', recent}}
if not held[2] then
  fields[5], fields[6] = 'created_at', ARGV[1]
end
if not owner and ARGV[6] ~= '' then
  owner = ARGV[6]
  fields[#fields + 1], fields[#fields + 2] = 'user_id', owner
end
redis.call('HSET', KEYS[2], unpack(fields))
if ARGV[7] ~= '' then redis.call('HSETNX', KEYS[2], 'title', ARGV[7]) end
if ARGV[8] ~= '' then redis.call('HSETNX', KEYS[2], 'metadata', ARGV[8]) end
local most = tonumber(ARGV[3])
if most > 0 and length > most then
  redis.call('LTRIM', KEYS[1], length - most, -1)
  redis.call('HINCRBY', KEYS[2], 'trimmed', length - most)
end
expire({{KEYS[1], KEYS[2]}}, ttl)
return indexed(1, ARGV[11], ARGV[4], ARGV[5], ARGV[1], expires, owner)
"""
)

POP_SOURCE: Final = (
    INDEX_LUA
    + fence(5)
    + """
-- KEYS[1] item list, KEYS[2] session hash[, KEYS[3] the lock key while the writer holds it]
-- ARGV[1] now, ARGV[2] ttl ms (0: none), ARGV[3] session prefix, ARGV[4] session id,
-- ARGV[5] lock token, ARGV[6] inline. Returns the popped item or nil (wrapped by indexed()).
local item = redis.call('RPOP', KEYS[1])
if not item then return nil end
redis.call('HSET', KEYS[2], 'updated_at', ARGV[1])
local ttl = tonumber(ARGV[2])
expire({KEYS[1], KEYS[2]}, ttl)
local expires = 0
if ttl > 0 then expires = math.floor(tonumber(ARGV[1]) * 1000) + ttl end
return indexed(item, ARGV[6], ARGV[3], ARGV[4], ARGV[1], expires,
  redis.call('HGET', KEYS[2], 'user_id'))
"""
)

DROP_SOURCE: Final = (
    INDEX_LUA
    + fence(3)
    + """
-- KEYS[1] item list, KEYS[2] session hash[, KEYS[3] the lock key while the writer holds it];
-- ARGV[1] session prefix, ARGV[2] session id, ARGV[3] lock token, ARGV[4] inline.
-- Deletes the session (and, inline, its index entries); returns how many of its keys existed,
-- or (not inline) {that, owner or '', updated_at or ''}: the caller unindexes it.
local owner = redis.call('HGET', KEYS[2], 'user_id')
local updated = redis.call('HGET', KEYS[2], 'updated_at')
local deleted = redis.call('DEL', KEYS[1], KEYS[2])
if ARGV[4] ~= '1' then return {deleted, owner or '', updated or ''} end
for _, pair in ipairs(index_pairs(ARGV[1], owner)) do
  redis.call('ZREM', pair[1], ARGV[2])
  redis.call('ZREM', pair[2], ARGV[2])
end
return deleted
"""
)

UPDATE_SOURCE: Final = (
    INDEX_LUA
    + """
-- KEYS[1] item list, KEYS[2] session hash
-- ARGV[1] now, ARGV[2] ttl ms (0: none), ARGV[3] session prefix, ARGV[4] session id,
-- ARGV[5] inline, ARGV[6..] triples: field, 's' (set), 'n' (set unless present) or 'd'
-- (delete), value. Returns 1 (wrapped by indexed()).
local old_owner = redis.call('HGET', KEYS[2], 'user_id')
redis.call('HSETNX', KEYS[2], 'created_at', ARGV[1])
redis.call('HSETNX', KEYS[2], 'updated_at', ARGV[1])
for i = 6, #ARGV, 3 do
  if ARGV[i + 1] == 's' then
    redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 2])
  elseif ARGV[i + 1] == 'n' then
    redis.call('HSETNX', KEYS[2], ARGV[i], ARGV[i + 2])
  else
    redis.call('HDEL', KEYS[2], ARGV[i])
  end
end
local ttl = tonumber(ARGV[2])
expire({KEYS[1], KEYS[2]}, ttl)
local expires = 0
if ttl > 0 then expires = math.floor(tonumber(ARGV[1]) * 1000) + ttl end
return indexed(1, ARGV[5], ARGV[3], ARGV[4], redis.call('HGET', KEYS[2], 'updated_at'), expires,
  redis.call('HGET', KEYS[2], 'user_id'), old_owner)
"""
)

TOUCH_READ_SOURCE: Final = (
    INDEX_LUA
    + """
-- KEYS[1] item list, KEYS[2] session hash
-- ARGV[1] now, ARGV[2] ttl ms, ARGV[3] session prefix, ARGV[4] session id, ARGV[5] start,
-- ARGV[6] inline. Slides the expiry of a stored session (and, inline, its index entries'),
-- then returns its items from index ARGV[5]. On a cluster the expiry indexes are not touched:
-- their entries are checked against the session's keys before one is dropped (clean_checked).
if redis.call('EXISTS', KEYS[2]) == 1 then
  local ttl = tonumber(ARGV[2])
  expire({KEYS[1], KEYS[2]}, ttl)
  if ARGV[6] == '1' then
    local expires = math.floor(tonumber(ARGV[1]) * 1000) + ttl
    for _, pair in ipairs(index_pairs(ARGV[3], redis.call('HGET', KEYS[2], 'user_id'))) do
      redis.call('ZADD', pair[2], expires, ARGV[4])
    end
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

INDEX_SOURCE: Final = """
-- On a Redis Cluster, after a write: KEYS[1] an activity index, KEYS[2] its expiry index;
-- ARGV[1] session id, ARGV[2] updated_at, ARGV[3] expiry (Unix ms; 0: none). The newest
-- activity wins: an update older than the entry (a concurrent writer's, applied first) is
-- dropped. Returns 1 when applied.
local held = redis.call('ZSCORE', KEYS[1], ARGV[1])
if held and tonumber(held) > tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
local expires = tonumber(ARGV[3])
redis.call('ZADD', KEYS[2], expires > 0 and expires or '+inf', ARGV[1])
return 1
"""

UNINDEX_SOURCE: Final = """
-- KEYS[1] an activity index, KEYS[2] its expiry index; ARGV: pairs of session id, score.
-- Drops each entry whose activity is at most that score: one that a write indexed since
-- (a session written again after it was found gone) stays. Returns how many went.
local gone = 0
for i = 1, #ARGV, 2 do
  local held = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if held and tonumber(held) <= tonumber(ARGV[i + 1]) then
    redis.call('ZREM', KEYS[1], ARGV[i])
    redis.call('ZREM', KEYS[2], ARGV[i])
    gone = gone + 1
  end
end
return gone
"""

INFOS_SOURCE: Final = """
-- KEYS: pairs of session hash, item list. Returns, per session, {the hash's created_at,
-- updated_at, user_id, title and metadata, the list's length, the hash's PEXPIRETIME, whether any
-- of its keys exists}: one reply for a listing page (one Redis: the keys of many slots).
local out = {}
for i = 1, #KEYS, 2 do
  out[#out + 1] = {
    redis.call('HMGET', KEYS[i], 'created_at', 'updated_at', 'user_id', 'title', 'metadata'),
    redis.call('LLEN', KEYS[i + 1]),
    redis.call('PEXPIRETIME', KEYS[i]),
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
INDEX = Script(INDEX_SOURCE)
UNINDEX = Script(UNINDEX_SOURCE)


def index_keys(prefix: str, owner: str | None) -> tuple[str, str]:
    """The activity and expiry indexes of every session (``owner`` ``None``) or of an owner's."""
    if owner is None:
        return f"{prefix}:all:{{all}}", f"{prefix}:all-expiry:{{all}}"
    tag = encode_tag(owner)
    return f"{prefix}:owner:{{{tag}}}", f"{prefix}:owner-expiry:{{{tag}}}"


# By client class: isinstance() against RedisCluster (whose metaclass is typing's protocol
# metaclass) costs 0.5 µs, twice per write.
_CLUSTER_CLASSES: dict[type, bool] = {}


def is_cluster(client: RedisClient) -> bool:
    """Whether ``client`` talks to a Redis Cluster (the indexes live in other slots)."""
    kind = type(client)
    known = _CLUSTER_CLASSES.get(kind)
    if known is None:  # (redis-py is installed: a client exists)
        known = _CLUSTER_CLASSES[kind] = isinstance(client, _redis.RedisCluster)
    return known


def inline(client: RedisClient) -> str:
    """The write scripts' "inline" argument: ``'1'`` (index in the script) on one Redis."""
    return "0" if is_cluster(client) else "1"


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def indexed(client: RedisClient, prefix: str, session_id: str, reply: Any) -> Any:
    """A write script's own reply; on a Redis Cluster, after applying the index update it
    returned (INDEX on every session's index and the owner's, UNINDEX on a former owner's)."""
    if not is_cluster(client) or not isinstance(reply, list):
        return reply  # one Redis indexed in the script; or nothing was written
    result, owner, updated, expires, old_owner = reply
    owner, updated, old_owner = _text(owner), _text(updated), _text(old_owner)
    args = [session_id, updated, expires]
    calls: list[Awaitable[Any]] = [INDEX(client, index_keys(prefix, None), args)]
    if owner:
        calls.append(INDEX(client, index_keys(prefix, owner), args))
    if old_owner and old_owner != owner:
        calls.append(UNINDEX(client, index_keys(prefix, old_owner), [session_id, updated]))
    await settled(asyncio.gather(*calls))
    return result


async def dropped(client: RedisClient, prefix: str, session_id: str, reply: Any) -> int:
    """How many keys DROP deleted; on a Redis Cluster, after unindexing the session (entries
    no newer than the deleted session's activity)."""
    if not is_cluster(client):
        return int(reply)
    deleted, owner, updated = reply
    owner, updated = _text(owner), _text(updated)
    if updated:
        calls = [UNINDEX(client, index_keys(prefix, None), [session_id, updated])]
        if owner:
            calls.append(UNINDEX(client, index_keys(prefix, owner), [session_id, updated]))
        await settled(asyncio.gather(*calls))
    return int(deleted)
