"""Lua scripts of whole-pair/whole-turn windows and of forks on Redis: one round trip each.

The window script walks the item list from the newest back, in growing ``LRANGE`` chunks,
decoding each item it passes (``cjson``) to read its type, role and pairing field, and stops
where :func:`agentmem.windows.window_length` stops. The fork script copies a list prefix into
another session's keys.
"""

from __future__ import annotations

from typing import Final

from agentmem.redis._lifecycle import INDEX_LUA
from agentmem.redis.client import Script
from agentmem.windows import APPROVAL_REQUEST, APPROVAL_RESPONSE, CALL_TYPES, OUTPUT_TO_CALL

_RPUSH_CHUNK = 1000
FORK_TARGET_NOT_EMPTY: Final = "agentmem fork target holds items"

_OUTPUTS = ", ".join(f"{output} = '{call}'" for output, call in OUTPUT_TO_CALL.items())
_CALLS = ", ".join(f"{call} = true" for call in sorted(CALL_TYPES))

# KEYS: the item list. ARGV: limit (>= 1), "1" for whole turns. Returns the window's items,
# oldest first.
WINDOW: Final = Script(
    f"""
local OUTPUTS = {{{_OUTPUTS}}}
local CALLS = {{{_CALLS}}}
local function text(value)
  if type(value) == 'string' then return value end
  return nil
end
local function mark(raw)
  local ok, item = pcall(cjson.decode, raw)
  if not ok or type(item) ~= 'table' then return nil, false, nil, nil end
  local t = text(item['type'])
  local needs, gives
  if t and OUTPUTS[t] then
    local ref = text(item['call_id'])
    if ref then needs = OUTPUTS[t] .. ':' .. ref end
  elseif t and CALLS[t] then
    local ref = text(item['call_id'])
    if ref then gives = t .. ':' .. ref end
  elseif t == '{APPROVAL_RESPONSE}' then
    local ref = text(item['approval_request_id'])
    if ref then needs = '{APPROVAL_REQUEST}:' .. ref end
  elseif t == '{APPROVAL_REQUEST}' then
    local ref = text(item['id'])
    if ref then gives = '{APPROVAL_REQUEST}:' .. ref end
  end
  return t, item['role'] == 'user', needs, gives
end
local limit = tonumber(ARGV[1])
local turns = ARGV[2] == '1'
local last = redis.call('LLEN', KEYS[1]) - 1
local taken, missing, open, at_user = 0, 0, {{}}, false
local chunk = limit + 1
while last >= 0 do
  local first = math.max(0, last - chunk + 1)
  local part = redis.call('LRANGE', KEYS[1], first, last)
  for j = #part, 1, -1 do
    local t, user, needs, gives = mark(part[j])
    if taken >= limit and missing == 0 and t ~= 'reasoning' and (not turns or at_user) then
      return redis.call('LRANGE', KEYS[1], -taken, -1)
    end
    taken = taken + 1
    if gives and open[gives] then open[gives] = nil; missing = missing - 1 end
    if needs and not open[needs] then open[needs] = true; missing = missing + 1 end
    at_user = user
  end
  last = first - 1
  chunk = chunk * 2
end
return redis.call('LRANGE', KEYS[1], 0, -1)
"""
)

# KEYS: source list, new list, new hash. ARGV: now, ttl ms (0: none), how many items (-1:
# all), the source's id, session prefix, the new id, inline (see _lifecycle.indexed). Returns
# how many items were copied (wrapped by indexed()); an error when the new list holds items
# (nothing written).
FORK: Final = Script(
    INDEX_LUA
    + f"""
if redis.call('LLEN', KEYS[2]) > 0 then
  return redis.error_reply('ERR {FORK_TARGET_NOT_EMPTY}')
end
local count = tonumber(ARGV[3])
local items = {{}}
if count ~= 0 then items = redis.call('LRANGE', KEYS[1], 0, count < 0 and -1 or count - 1) end
for i = 1, #items, {_RPUSH_CHUNK} do
  redis.call('RPUSH', KEYS[2], unpack(items, i, math.min(i + {_RPUSH_CHUNK - 1}, #items)))
end
redis.call('HSETNX', KEYS[3], 'created_at', ARGV[1])
redis.call('HSET', KEYS[3], 'updated_at', ARGV[1], 'forked_from', ARGV[4], 'fork_point', #items)
local ttl = tonumber(ARGV[2])
expire({{KEYS[2], KEYS[3]}}, ttl)
local expires = 0
if ttl > 0 then expires = math.floor(tonumber(ARGV[1]) * 1000) + ttl end
return indexed(#items, ARGV[7], ARGV[5], ARGV[6], ARGV[1], expires,
  redis.call('HGET', KEYS[3], 'user_id'))
"""
)

# FORK's second half, for a Redis Cluster where the two sessions' keys live in different slots
# (the source's items were read by one LRANGE). KEYS: new list, new hash. ARGV: now, ttl ms (0:
# none), the source's id, session prefix, the new id, inline, then the items. Returns how many
# items were copied (wrapped by indexed()); an error when the new list holds items (nothing
# written).
FORK_INTO: Final = Script(
    INDEX_LUA
    + f"""
if redis.call('LLEN', KEYS[1]) > 0 then
  return redis.error_reply('ERR {FORK_TARGET_NOT_EMPTY}')
end
local count = #ARGV - 6
for i = 7, #ARGV, {_RPUSH_CHUNK} do
  redis.call('RPUSH', KEYS[1], unpack(ARGV, i, math.min(i + {_RPUSH_CHUNK - 1}, #ARGV)))
end
redis.call('HSETNX', KEYS[2], 'created_at', ARGV[1])
redis.call('HSET', KEYS[2], 'updated_at', ARGV[1], 'forked_from', ARGV[3], 'fork_point', count)
local ttl = tonumber(ARGV[2])
expire({{KEYS[1], KEYS[2]}}, ttl)
local expires = 0
if ttl > 0 then expires = math.floor(tonumber(ARGV[1]) * 1000) + ttl end
return indexed(count, ARGV[6], ARGV[4], ARGV[5], ARGV[1], expires,
  redis.call('HGET', KEYS[2], 'user_id'))
"""
)
