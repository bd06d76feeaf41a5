"""``CachedSession``: a SQL session (the store of record) with a Redis read cache in front.

Every write goes to SQL first; Redis holds a copy of the newest items of recently used sessions.
Two keys per session (``store`` = a hash of the SQL store's kind, database and table prefix;
``id`` = the session id, percent-encoded as in :mod:`agentmem.redis.session`; ``{id}`` is
their shared hash tag)::

    {key_prefix}:{store}:{id}:items   string: a header byte ("c": the whole history, "p":
                                      only its newest items, "w": a write in flight), then
                                      the items' JSON texts joined by ","
    {key_prefix}:{store}:{id}:state   hash: g = generation (a random token, replaced by every
                                      write), w = writers in flight, c = the header, e = where
                                      each item ends in the string (4-byte big-endian offsets)

A full read is one native ``GET`` whose reply is parsed as one JSON array; a read with a
limit is one Lua script that returns only the newest items' bytes. Bulk data never passes
through Lua on the read path (Lua copies cost ~2 µs per KB).

Protocol:

- Read: serve the cached items when they cover the request and no write is in flight.
  Otherwise hand out the current generation, read SQL, then fill the cache only if the
  generation is still the one handed out: any write that began in between replaced it, so a
  stale fill is refused. No generation is handed out while a write is in flight.
- Write: *begin* (count the writer, new generation, header "w", shorten the keys' expiry to a
  lease), the SQL write, *end* (uncount, new generation; apply the change to the cached items
  in place only when this writer was the only one from begin to end, else drop them). A writer
  whose *end* never arrives leaves the header "w": readers bypass the cache until the lease
  expires the keys or a later call finds the writer gone and drops the orphan.
- One sequential Redis round trip per write: the write returns once SQL has committed, and its
  *end* is owed. The session's next cache call carries the ends it owes in its first round
  trip, run before its own work: with a *begin* or a read script, one script that runs the
  ends then that script's body (one command, atomic); with a ``GET``, or when Redis is over
  its maxmemory, a pipeline on one connection (the ends, then the call; on a Redis Cluster,
  whose pipelines refuse scripts, the ends go first, one round trip each); when no call
  comes first, a task of the session delivers them one event-loop turn later, and
  ``close()`` waits for them. Why a late end is never stale: while
  a writer is counted no reader serves the copy and no generation is handed out, so a
  write's visibility never depends on its end, only the copy's return to readers does (the
  protocol already survives ends that come late or never: a process killed after its commit).
  Once a write returns, its *begin* has run (it was awaited before SQL), so a reader anywhere
  either finds it counted and reads SQL, which holds it, or finds its end run, which updated
  the copy in place or dropped it. An owed end delivered just before a *begin* or a read is an
  end that arrived just before them; one delivered after another writer's *begin* is the case
  of two overlapping writers (the copy is dropped). An end that fails (over ``maxmemory``, not
  loaded) is sent again alone, as a drop if need be; when its round trip fails the process
  owes the session an invalidation, as below. Only a marked write's end is owed: a write that
  went on unmarked invalidates before it returns.
- Why not fewer: the mark must be in Redis before the SQL commit (a process killed after its
  commit, writes paused, a full Redis: above and below), so a write is at least one Redis round
  trip then the SQL write's round trip(s), one after the other. Sending the mark concurrently
  with the SQL statement would need the commit held back until the mark is acknowledged: one
  more SQL round trip (``BEGIN`` ... ``COMMIT``) than the single-statement write it overlaps.
- No write reaches SQL unmarked while Redis answers: *begin* runs even over ``maxmemory``
  (``allow-oom``: it adds a few bytes; *end* then drops the copy instead of updating it), and
  when Redis replies with an error or not at all within ``socket_timeout`` (writes paused by
  ``CLIENT PAUSE WRITE`` or ``FAILOVER``, a stopped server, a read-only replica) the write
  raises that error before touching SQL. Only when no connection can be had (refused, reset,
  no free pooled connection) does it go on unmarked; its process then owes the invalidation.
- A failed or cancelled SQL write may have committed. On a SQLite file it is over when it
  raises (the thread is waited for: ``over_when_raised`` of the SQL session), so *end* drops
  the copy; on a server it may still commit, so *end* keeps the writer counted and readers
  stay on SQL until the lease ends.
- Only fills and writes set the keys' expiry; a hit leaves it. A copy that a write missed
  (the unmarked case above) is gone ``ttl`` after its fill or last write, however often read.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import struct
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final, Self, TypeVar

import orjson

from agentmem._lock import SessionLock
from agentmem.forks import ForkOrigin, ItemCursor, validate_upto
from agentmem.manager import (
    DEFAULT_PAGE_SIZE,
    Conversation,
    SessionInfo,
    SessionManagerABC,
    SessionOptions,
    SessionPage,
)
from agentmem.records import ItemPage
from agentmem.redis import client as _redis
from agentmem.redis.client import (
    DEFAULT_URL,
    LUA_EXPIRE,
    TTL,
    ConnectionOptions,
    Script,
    connection_unless_given,
    settled,
    shared_clients,
    tagged_key,
    ttl_to_ms,
    validate_prefix,
)
from agentmem.session import (
    EncodedItem,
    SessionABC,
    SessionItem,
    decode_item,
    decode_stored,
    encode_items,
    validate_session_id,
)
from agentmem.sql.base import SQLSessionBase, SQLSessionManagerABC
from agentmem.windows import mark_of, resolve_window_mode, window_length

if TYPE_CHECKING:
    from agentmem.redis.client import RedisClient

__all__ = ["CachedSession", "CachedSessionManager"]

DEFAULT_KEY_PREFIX: Final = "agentmem-cache"
DEFAULT_MAX_CACHED_ITEMS: Final = 1000
# How long the keys of a session outlive a writer that began and never ended (a crash, Redis
# unreachable after the SQL commit): readers bypass the cache until then.
WRITE_LEASE_MS: Final = 60_000

logger = logging.getLogger("agentmem")

T = TypeVar("T")

# The functions every script below but _BEGIN starts with. KEYS: items, state.
_COMMON = (
    LUA_EXPIRE
    + """
-- ends_at(e, i): where item i ends in the items string, from the packed offsets e.
local function ends_at(e, i)
  return (struct.unpack('>I4', e, (i - 1) * 4 + 1))
end
-- Whether the string holds exactly the items that the offsets describe.
local function intact(e)
  local n = #e / 4
  return redis.call('STRLEN', KEYS[1]) == (n > 0 and ends_at(e, n) or 1)
end
"""
)

# KEYS: items, state. ARGV: limit (-1 = all), a fresh token, ttl ms. Returns {1, the newest
# items' joined JSON} (hit; the expiry is left as the last fill or write set it), {2,
# generation} (miss: fill with it) or {0} (a write in flight: read SQL, fill nothing).
_READ_BODY = """
local st = redis.call('HMGET', KEYS[2], 'w', 'c', 'e')
if tonumber(st[1] or '0') > 0 then return {0} end
local ttl = tonumber(ARGV[3])
local head = redis.call('GETRANGE', KEYS[1], 0, 0)
if head == 'w' then
  redis.call('DEL', KEYS[1])  -- left by a writer that never ended
elseif head ~= '' and head == st[2] and intact(st[3]) then
  local n = #st[3] / 4
  local limit = tonumber(ARGV[1])
  if head == 'c' or (limit >= 0 and limit <= n) then
    local start = (limit < 0 or limit >= n) and 1 or ends_at(st[3], n - limit) + 1
    return {1, redis.call('GETRANGE', KEYS[1], start, -1)}
  end
end
local gen = redis.call('HGET', KEYS[2], 'g')
if not gen then
  gen = ARGV[2]
  redis.call('HSET', KEYS[2], 'g', gen)
  if ttl > 0 then redis.call('PEXPIRE', KEYS[2], ttl) end
end
return {2, gen}
"""
_READ = Script(_COMMON + _READ_BODY)

# KEYS: items, state. ARGV: generation handed out, ttl ms, header, the string, its offsets.
# Returns 1 (filled), or 0 (refused: a write began since the generation was handed out).
_FILL = Script(
    _COMMON
    + """
if redis.call('HGET', KEYS[2], 'g') ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[4])
redis.call('HSET', KEYS[2], 'c', ARGV[3], 'e', ARGV[5])
expire({KEYS[1], KEYS[2]}, tonumber(ARGV[2]))
return 1
"""
)

# KEYS: items, state. ARGV: new generation, lease ms. Returns 1. Runs when Redis is over its
# maxmemory (allow-oom; it adds a few bytes at most): a full cache never keeps a writer from
# marking it.
_BEGIN_BODY = """
local writers = redis.call('HINCRBY', KEYS[2], 'w', 1)
redis.call('HSET', KEYS[2], 'g', ARGV[1])
local lease = tonumber(ARGV[2])
for _, key in ipairs(KEYS) do
  local left = redis.call('PTTL', key)
  if left == -1 or left > lease then redis.call('PEXPIRE', key, lease) end
end
local head = redis.call('GETRANGE', KEYS[1], 0, 0)
if head == 'w' and writers == 1 then
  redis.call('DEL', KEYS[1])  -- left by a writer that never ended
elseif head ~= '' then
  redis.call('SETRANGE', KEYS[1], 0, 'w')
end
return 1
"""
_BEGIN = Script("#!lua flags=allow-oom" + _BEGIN_BODY)

# KEYS: items, state. ARGV: began ("1": uncount this writer; "0": it never began; "h": keep
# it counted, so readers bypass the cache until the lease ends: a failed SQL write that may
# still commit), the generation begin set, a new generation, ttl ms, max cached items, op
# ("add", "pop", "clear" or "" = drop the cached items); for "add": the new items joined, their
# offsets in that text. Refused as a whole when Redis is over its maxmemory (an update in place
# may add much); _END_OOM is the same script for op "" (drop), which runs then. Returns 1.
_END_BODY = """
local sole = false
if ARGV[1] == '1' then
  local writers = redis.call('HINCRBY', KEYS[2], 'w', -1)
  if writers <= 0 then redis.call('HDEL', KEYS[2], 'w') end
  sole = writers == 0 and redis.call('HGET', KEYS[2], 'g') == ARGV[2]
end
redis.call('HSET', KEYS[2], 'g', ARGV[3])
local op = ARGV[6]
local st = redis.call('HMGET', KEYS[2], 'c', 'e')
local c, e = st[1], st[2]
if sole and op == 'clear' then
  redis.call('SET', KEYS[1], 'c')
  redis.call('HSET', KEYS[2], 'c', 'c', 'e', '')
elseif sole and (op == 'add' or op == 'pop') and c
    and redis.call('GETRANGE', KEYS[1], 0, 0) == 'w' and intact(e) then
  local n = #e / 4
  if op == 'pop' and n > 0 then
    local size = n > 1 and ends_at(e, n - 1) or 1
    redis.call('SET', KEYS[1], redis.call('GETRANGE', KEYS[1], 0, size - 1))
    e = string.sub(e, 1, (n - 1) * 4)
  elseif op == 'add' then
    local base = redis.call('STRLEN', KEYS[1])
    if n > 0 then
      redis.call('APPEND', KEYS[1], ',')
      base = base + 1
    end
    redis.call('APPEND', KEYS[1], ARGV[7])
    local ends = {e}
    for i = 1, #ARGV[8] / 4 do ends[#ends + 1] = struct.pack('>I4', base + ends_at(ARGV[8], i)) end
    e = table.concat(ends)
    n = #e / 4
    local max = tonumber(ARGV[5])
    if n > max + math.floor(max / 4) then  -- trim with slack: a rewrite per max/4 adds
      local cut = ends_at(e, n - max)
      redis.call('SET', KEYS[1], 'p' .. redis.call('GETRANGE', KEYS[1], cut + 1, -1))
      local kept = {}
      for i = n - max + 1, n do kept[#kept + 1] = struct.pack('>I4', ends_at(e, i) - cut) end
      c, e = 'p', table.concat(kept)
    end
  end
  redis.call('SETRANGE', KEYS[1], 0, c)
  redis.call('HSET', KEYS[2], 'c', c, 'e', e)
else
  redis.call('DEL', KEYS[1])
  redis.call('HDEL', KEYS[2], 'c', 'e')
end
if redis.call('HEXISTS', KEYS[2], 'w') == 0 then
  expire({KEYS[1], KEYS[2]}, tonumber(ARGV[4]))
end
return 1
"""
_END_SOURCE = _COMMON + _END_BODY
_END = Script("#!lua\n" + _END_SOURCE)
_END_OOM = Script("#!lua flags=allow-oom\n" + _END_SOURCE)


def _after_ends(body: str) -> Script:
    """A script that runs a session's owed ends (:data:`_END`'s body), then ``body``: one
    command rather than a pipeline of several. KEYS: items, state. ARGV: the number of ends;
    for each end, the number of its arguments, then _END's arguments; then ``body``'s. Refused
    as a whole when Redis is over its maxmemory (as _END is: nothing runs); the caller then
    pipelines them, each end dropping the copy. Returns what ``body`` returns."""
    return Script(
        "#!lua\n"
        + _COMMON
        + "local function finish(ARGV)"
        + _END_BODY
        + "end\nlocal function run(ARGV)"
        + body
        + """end
local at = 2
for _ = 1, tonumber(ARGV[1]) do
  local n = tonumber(ARGV[at])
  finish({unpack(ARGV, at + 1, at + n)})
  at = at + n + 1
end
return run({unpack(ARGV, at)})
"""
    )


# _BEGIN and _READ after the ends a session owes.
_AFTER_ENDS: Final = {_BEGIN: _after_ends(_BEGIN_BODY), _READ: _after_ends(_READ_BODY)}


def _joined(texts: list[str], start: int = 0) -> tuple[str, bytes]:
    """``texts`` joined by "," and where each ends (counting from ``start``), packed."""
    ends = []
    end = start - 1
    for text in texts:
        end += 1 + (len(text) if text.isascii() else len(text.encode()))
        ends.append(end)
    return ",".join(texts), struct.pack(f">{len(ends)}I", *ends)


def _array(joined: bytes | str, skip: int = 0) -> list[SessionItem]:
    """Decode items joined by "," (after ``skip`` header characters) as one JSON array."""
    if isinstance(joined, str):
        items: list[SessionItem] = orjson.loads(f"[{joined[skip:]}]")
        return items
    buffer = bytearray(b"[")
    buffer += memoryview(joined)[skip:]
    buffer.append(0x5D)  # "]"
    items = orjson.loads(buffer)
    return items


def _store_tag(store: SQLSessionBase) -> str:
    """A short hash naming the store of record: its kind, database and table prefix
    (``store_identity``, spelled the same by every process on that database)."""
    return hashlib.sha256("\0".join(store.store_identity).encode()).hexdigest()[:12]


def _refuse_private(store: SQLSessionBase | SQLSessionManagerABC[Any]) -> None:
    if store.process_private:
        raise ValueError(
            "an in-memory SQLite database is private to its process and cannot sit behind a "
            "shared cache; use a database file"
        )


def _checked_options(max_cached_items: object, ttl: object, key_prefix: object) -> tuple[int, str]:
    """Check the options of a cached session (and of a cached manager's sessions): the ttl in
    milliseconds (0: none) and the key prefix."""
    if not isinstance(max_cached_items, int) or max_cached_items < 1:
        raise ValueError(f"max_cached_items must be a positive int, got {max_cached_items!r}")
    return ttl_to_ms(ttl), validate_prefix("key_prefix", key_prefix)


def _unreachable(error: BaseException) -> bool:
    """Whether ``error`` says no connection to Redis could be had (nothing was sent)."""
    return isinstance(error, _redis.RedisConnectionError) or (
        isinstance(error, _redis.RedisTimeoutError) and "connecting" in str(error)
    )


def _token() -> str:
    return secrets.token_hex(8)


@dataclass
class _Health:
    """What this process knows about one Redis server."""

    down: bool = False
    # State keys of sessions written while their cache could not be invalidated: every call on
    # them bypasses the cache until an invalidation succeeds.
    pending: set[str] = field(default_factory=set)


_servers: dict[tuple[Any, ...], _Health] = {}


@dataclass(frozen=True)
class _End:
    """The *end* of one write (the arguments of :data:`_END`), owed to the cache."""

    began: str
    gen: str
    op: str
    payload: list[Any]
    ttl_ms: int


def _server_of(client: RedisClient, url: str | None) -> tuple[Any, ...]:
    if isinstance(client, _redis.RedisCluster):
        # Its nodes change with the topology: a cluster is named by its URL (or its client).
        return "cluster", url or id(client)
    kwargs = client.connection_pool.connection_kwargs
    return kwargs.get("host"), kwargs.get("port"), kwargs.get("path"), kwargs.get("db", 0)


class CachedSession(SessionABC):
    """A SQL session with a Redis read cache in front: SQL durability, Redis-speed reads.

    The SQL session is the store of record: every write is committed there before the cache is
    touched, and a read that misses the cache loads from it. Redis holds the newest
    ``max_cached_items`` items of recently used sessions for ``ttl``. A read never returns a
    state older than a write that has returned, in any process; when Redis is unreachable every
    call is served by SQL (one warning on the ``agentmem`` logger per outage) and the cache
    refills once Redis is back.

    Example::

        store = SQLAlchemySession(engine, "user_123")
        async with CachedSession(store, redis_url="redis://localhost:6379", ttl=3600) as session:
            await Runner.run(agent, "Hello", session=session)

    The cached session owns ``store``: ``close()`` closes it too (the store still leaves the
    engine it was given open). A Redis client passed as ``client`` is never closed; one built
    from ``redis_url`` is shared by every session with the same URL and options (one blocking
    pool per event loop) and released by ``close()``.

    Every writer of the sessions must go through a ``CachedSession`` on the same Redis and
    ``key_prefix``: a write made with the bare SQL session leaves the cached copy as it was.

    Attributes:
        session_id: The wrapped session's id.
        session_settings: OpenAI Agents SDK ``SessionSettings`` (``limit`` is the default of
            ``get_items()``); the wrapped session's unless given.
        store: The wrapped SQL session.
        ttl: How long a copy stays cached after its fill or last write (reads do not extend
            it), or ``None`` for no expiry.
        store_tag: A short hash of the store's kind, database name (a SQLite file's path) and
            table prefix, part of every key.
        items_key: The Redis key of the cached items (a string).
        state_key: The Redis key of the cache's state (a hash).
    """

    store: SQLSessionBase
    ttl: timedelta | None
    store_tag: str
    items_key: str
    state_key: str

    def __init__(
        self,
        store: SQLSessionBase,
        redis_url: str = DEFAULT_URL,
        db: int | None = None,
        *,
        client: RedisClient | None = None,
        ttl: TTL | None = 3600,
        key_prefix: str = DEFAULT_KEY_PREFIX,
        max_cached_items: int = DEFAULT_MAX_CACHED_ITEMS,
        session_settings: Any = None,
        max_connections: int = 50,
        socket_timeout: float | None = 2.0,
        socket_connect_timeout: float | None = 1.0,
        pool_timeout: float | None = 10.0,
        whole_pairs: bool | None = None,
        whole_turns: bool | None = None,
    ) -> None:
        """Wrap ``store``; nothing is read or written until the first operation.

        Args:
            store: The SQL session of record: a ``SQLAlchemySession`` or a ``SQLiteSession`` on
                a file (an in-memory SQLite database is private to its object, so it cannot
                sit behind a shared cache).
            redis_url: ``redis://``, ``rediss://`` or ``unix://`` URL of the cache, or
                ``redis+cluster://`` naming a node of a Redis Cluster. Ignored when ``client``
                is given.
            db: The Redis database number, if the URL does not name one (default 0).
            client: A ``redis.asyncio.Redis`` or ``RedisCluster`` to use instead of connecting
                from ``redis_url``; never closed by the session.
            ttl: How long (seconds or ``timedelta``) a copy stays cached after it was filled or
                last written (reads do not extend it); ``None`` never expires.
            key_prefix: Prefix of the cache's keys. The keys also name the store (see
                ``store_tag``), so two table prefixes or two databases of different names never
                share cached copies; two servers holding databases of the same name need a
                ``key_prefix`` each.
            max_cached_items: How many of a session's newest items a fill caches (appends let
                the window grow a quarter beyond it before trimming it back); a read of more
                than the window from a longer history goes to SQL.
            session_settings: OpenAI Agents SDK ``SessionSettings`` (or a dict of them); the
                store's by default.
            max_connections: Size of the Redis connection pool; callers beyond it wait.
            socket_timeout: Seconds to wait for a Redis reply before falling back to SQL.
            socket_connect_timeout: Seconds to wait for a Redis connection to open.
            pool_timeout: Seconds to wait for a free pooled Redis connection.
            whole_pairs, whole_turns: The default window of ``get_items`` calls with a limit
                (see :mod:`agentmem.windows`); neither given: the store's.

        Raises:
            TypeError, ValueError: a bad store, URL, client, ttl, prefix or size.
            MissingDependencyError: redis-py is not installed (the ``redis`` extra).
        """
        if not isinstance(store, SQLSessionBase):
            raise TypeError(
                "store must be an agentmem SQL session (SQLAlchemySession or SQLiteSession), "
                f"got {type(store).__name__}"
            )
        _refuse_private(store)
        ttl_ms, prefix = _checked_options(max_cached_items, ttl, key_prefix)
        connection = connection_unless_given(
            client,
            ConnectionOptions(
                redis_url, db, max_connections, socket_timeout, socket_connect_timeout, pool_timeout
            ),
        )
        super().__init__(
            store.session_id,
            store.session_settings if session_settings is None else session_settings,
        )
        self.window_mode = resolve_window_mode(whole_pairs, whole_turns, store.window_mode)
        self._options: dict[str, Any] = {
            "redis_url": redis_url,
            "db": db,
            "client": client,
            "ttl": ttl,
            "key_prefix": key_prefix,
            "max_cached_items": max_cached_items,
            "max_connections": max_connections,
            "socket_timeout": socket_timeout,
            "socket_connect_timeout": socket_connect_timeout,
            "pool_timeout": pool_timeout,
        }
        self.store = store
        self.lifecycle = store.lifecycle
        self._ttl_ms = ttl_ms
        self.ttl = timedelta(milliseconds=self._ttl_ms) if self._ttl_ms else None
        self.max_cached_items = max_cached_items
        self.store_tag = _store_tag(store)
        base = tagged_key(f"{prefix}:{self.store_tag}", self.session_id)
        self.items_key = f"{base}:items"
        self.state_key = f"{base}:state"
        self._keys = [self.items_key, self.state_key]
        self._client_given = client
        self._connection = connection
        self._clients = None if connection is None else shared_clients.acquire(connection)
        self._health: _Health | None = None
        # Ends of writes that returned with their mark in place, not delivered yet.
        self._ends: list[_End] = []
        self._ender: asyncio.Task[None] | None = None

    # --- Redis plumbing ----------------------------------------------------------------------

    def _client(self) -> RedisClient:
        if self._client_given is not None:
            return self._client_given
        assert self._clients is not None
        return self._clients.get()

    def _server(self, client: RedisClient) -> _Health:
        if self._health is None:
            self._health = _servers.setdefault(
                _server_of(client, None if self._connection is None else self._connection.url),
                _Health(),
            )
        return self._health

    async def _redis(
        self, client: RedisClient, call: Callable[[], Awaitable[T]]
    ) -> tuple[BaseException | None, T | None]:
        """Run one cache call: ``(None, result)``, or ``(the error, None)`` when Redis failed."""
        health = self._server(client)
        try:
            result = await settled(call())
        except (_redis.RedisError, OSError) as exc:
            return self._failed(health, exc), None
        if health.down:
            health.down = False
            logger.info("Redis cache reachable again; CachedSession uses it")
        return None, result

    @staticmethod
    def _failed(health: _Health, error: BaseException) -> BaseException:
        """Note that a cache call failed (one warning per outage); returns ``error``."""
        if not health.down:
            health.down = True
            logger.warning(
                "Redis cache unavailable (%s: %s); CachedSession serves every call from "
                "the SQL store until it is back",
                type(error).__name__,
                error,
            )
        return error

    async def _round_trip(
        self, client: RedisClient, ends: list[_End], script: Script | None, args: list[Any]
    ) -> tuple[BaseException | None, Any]:
        """One cache call as :meth:`_redis` runs it: ``script`` (``None``: a ``GET`` of the
        items), preceded in the same round trip by the owed ``ends``: one script that runs
        them, then ``script``'s body (:func:`_after_ends`); for a ``GET``, or over maxmemory,
        :meth:`_pipelined`. When that one script fails the ends, which may or may not have
        run, are owed as an invalidation."""
        combined = _AFTER_ENDS.get(script) if ends and script is not None else None
        if combined is None:
            return await self._pipelined(client, ends, script, args)
        packed: list[Any] = [len(ends)]
        for end in ends:
            end_args = self._end_call(end)[1]
            packed += [len(end_args), *end_args]
        packed += args
        error, reply = await self._carrying_ends(
            client, lambda: combined(client, self._keys, packed)
        )
        if isinstance(error, _redis.OutOfMemoryError):  # refused before it ran
            return await self._pipelined(client, ends, script, args)
        if error is not None:
            self._server(client).pending.add(self.state_key)
        return error, reply

    async def _carrying_ends(
        self, client: RedisClient, call: Callable[[], Awaitable[Any]]
    ) -> tuple[BaseException | None, Any]:
        """:meth:`_redis` of a ``call`` that carries owed ends: when it is cancelled, the ends
        may or may not have run, and the process owes the session an invalidation."""
        try:
            return await self._redis(client, call)
        except BaseException:
            self._server(client).pending.add(self.state_key)
            raise

    async def _pipelined(
        self, client: RedisClient, ends: list[_End], script: Script | None, args: list[Any]
    ) -> tuple[BaseException | None, Any]:
        """:meth:`_round_trip` in a pipeline: the ``ends`` then ``script`` (``None``: a ``GET``),
        run in order on one connection (on a Redis Cluster, which pipelines no scripts, each
        end first in a round trip of its own). An end that fails is sent again by
        :meth:`_finish`."""

        def alone() -> Awaitable[Any]:
            return self._get_whole(client) if script is None else script(client, self._keys, args)

        if ends and isinstance(client, _redis.RedisCluster):
            # A cluster pipeline refuses scripts: one round trip per end, first.
            for end in ends:
                await self._finish(client, end)
            ends = []
        if not ends:
            return await self._redis(client, alone)

        async def pipelined() -> list[Any]:
            pipe = client.pipeline(transaction=False)
            for end in ends:
                end_script, end_args = self._end_call(end)
                pipe.evalsha(end_script.sha, len(self._keys), *self._keys, *end_args)
            if script is None:
                pipe.get(self.items_key)
            else:
                pipe.evalsha(script.sha, len(self._keys), *self._keys, *args)
            replies: list[Any] = await pipe.execute(raise_on_error=False)
            return replies

        error, replies = await self._carrying_ends(client, pipelined)
        if replies is None:  # the ends may or may not have run: owed, as after a failed end
            self._server(client).pending.add(self.state_key)
            return error, None
        for end, reply in zip(ends, replies, strict=False):
            if isinstance(reply, Exception):  # e.g. not loaded yet, over maxmemory: resent
                await self._finish(client, end)
        last = replies[-1]
        if isinstance(last, _redis.ResponseError) and str(last).startswith("NOSCRIPT"):
            return await self._redis(client, alone)
        if isinstance(last, Exception):
            return self._failed(self._server(client), last), None
        return None, last

    async def _owed(self, client: RedisClient) -> BaseException | None:
        """Perform the invalidation this process owes for the session, if any: ``None`` when
        none is owed (any more), else why Redis refused it."""
        health = self._server(client)
        if self.state_key not in health.pending:
            return None
        end = _End("0", "", "", [], self._ttl_ms)
        error, _ = await self._redis(client, lambda: self._end(client, end))
        if error is None:
            health.pending.discard(self.state_key)
        return error

    async def _settle(self, client: RedisClient) -> bool:
        """Whether the cache may be used for this call: true unless this session's cache still
        waits for an invalidation (retried here) that Redis refuses."""
        return await self._owed(client) is None

    async def _begin(self, client: RedisClient, gen: str, ends: list[_End]) -> bool:
        """Mark a write in flight before it goes to SQL, in one round trip with the ``ends``
        this session still owes: true when marked, false when Redis cannot be reached (the
        write goes on; this process owes the invalidation).

        Raises:
            RedisError: Redis answered with an error or gave no reply in ``socket_timeout``
                (writes paused, a stopped server, a read-only replica): it may serve this
                session's copy to other processes later, so the write must not go on unmarked.
        """
        error = await self._owed(client)
        if error is None:
            error, _ = await self._round_trip(client, ends, _BEGIN, [gen, WRITE_LEASE_MS])
        else:
            self._owe(ends)  # still owed, after the invalidation
        if error is None:
            return True
        if isinstance(error, _redis.RedisError) and not _unreachable(error):
            logger.warning(
                "CachedSession refused a write to session %r: Redis did not accept its cache "
                "mark (%s: %s); nothing was written",
                self.session_id,
                type(error).__name__,
                error,
            )
            raise error
        return False

    def _end_call(self, end: _End, drop: bool = False) -> tuple[Script, list[Any]]:
        """The script and arguments of ``end`` (``drop``: drop the cached items instead)."""
        op = "" if drop else end.op
        args: list[Any] = [end.began, end.gen, _token(), end.ttl_ms, self.max_cached_items, op]
        if op:
            args += end.payload
        # A drop adds nothing: it may run over maxmemory (the invalidation a process owes too).
        return (_END_OOM if op == "" else _END), args

    def _end(self, client: RedisClient, end: _End, drop: bool = False) -> Awaitable[Any]:
        script, args = self._end_call(end, drop)
        return script(client, self._keys, args)

    def _copy_ttl_ms(self, started: float) -> int:
        """How long a copy written now may live: the cache's ``ttl``, and never past the
        session's expiry in SQL, which its write begun at ``started`` (monotonic) set."""
        session_ttl = self.store.lifecycle.ttl
        if session_ttl is None:
            return self._ttl_ms
        left = max(1, int((session_ttl - (time.monotonic() - started)) * 1000))
        return min(self._ttl_ms, left) if self._ttl_ms else left

    async def _fill_ttl_ms(self, rows: list[str]) -> int | None:
        """How long a copy filled now may live (``None``: do not fill): never past the
        session's expiry in SQL."""
        if self.store.lifecycle.ttl is None:
            return self._ttl_ms
        info = await self.store.info()
        if info is None:
            return None if rows else self._ttl_ms  # expired since the load: no copy
        if info.expires_at is None:
            return self._ttl_ms
        left = int((info.expires_at - datetime.now(UTC)).total_seconds() * 1000)
        if left <= 0:
            return None
        return min(self._ttl_ms, left) if self._ttl_ms else left

    async def _write(self, write: Callable[[], Awaitable[T]], op: str, payload: list[Any]) -> T:
        """SQL first, the cache around it (see the module docstring)."""
        client = self._client()
        started = time.monotonic()
        gen = _token()
        began = await self._begin(client, gen, self._take_ends())
        try:
            result = await write()
        except BaseException:
            # It may have committed. Where the call is over when it raises (a SQLite file), drop
            # the copy; where it may still commit (a server), keep it counted, so readers stay
            # on SQL until the lease ends.
            held = "1" if self.store.over_when_raised else "h"
            await self._finish(client, _End(held if began else "0", gen, "", [], self._ttl_ms))
            raise
        end = _End("1" if began else "0", gen, op, payload, self._copy_ttl_ms(started))
        if began:
            self._owe([end])  # marked: readers bypass the copy until the end lands
        else:
            await self._finish(client, end)  # unmarked: invalidate before returning
        return result

    def _take_ends(self) -> list[_End]:
        """The ends this session owes, handed to the caller to deliver."""
        ends, self._ends = self._ends, []
        return ends

    def _owe(self, ends: list[_End]) -> None:
        """Owe ``ends``: the next cache call of this session carries them in its round trip;
        if none comes first, a task of its own delivers them (one event-loop turn later)."""
        if not ends:
            return
        self._ends.extend(ends)
        if self._ender is None or self._ender.done():
            self._ender = asyncio.get_running_loop().create_task(self._deliver_ends())

    async def _deliver_ends(self) -> None:
        """Deliver the ends this session owes, if any, each in its own round trip."""
        if not self._ends or (self._clients is None and self._client_given is None):
            return  # nothing owed, or released by close(): the lease ends the marks
        client = self._client()
        while self._ends:
            for end in self._take_ends():
                await self._finish(client, end)

    async def _finish(self, client: RedisClient, end: _End) -> None:
        """Deliver one end; until an end succeeds, this process bypasses the session's cache."""
        pending = self._server(client).pending
        try:
            error, _ = await self._redis(client, lambda: self._end(client, end))
            if isinstance(error, _redis.OutOfMemoryError):  # no update in place: drop the copy
                error, _ = await self._redis(client, lambda: self._end(client, end, drop=True))
        except BaseException:
            pending.add(self.state_key)
            raise
        if error is None:
            pending.discard(self.state_key)
        else:
            pending.add(self.state_key)

    async def _get_whole(self, client: RedisClient) -> bytes | str | None:
        """The cached string (header first), in one native command (its expiry left as is)."""
        whole: bytes | str | None = await client.get(self.items_key)
        return whole

    async def _load(self, limit: int | None) -> list[str]:
        """The newest ``limit`` items' JSON from the store (all with ``None``), oldest first."""
        # The store's own operations, on stored JSON text: what the cache holds.
        return await self.store.get_stored_items(limit)

    # --- the Session interface ---------------------------------------------------------------

    async def get_items(
        self,
        limit: int | None = None,
        *,
        whole_pairs: bool | None = None,
        whole_turns: bool | None = None,
    ) -> list[SessionItem]:
        """Return the history oldest first: from Redis when cached, else from SQL (then cached).

        Args:
            limit: Return only the newest ``limit`` items. ``None`` means the
                ``session_settings`` limit if one is set, else everything.
            whole_pairs, whole_turns: Widen a limited read to whole pairs or turns (see
                :mod:`agentmem.windows`): the window is cut from the newest
                ``max(limit + 1, max_cached_items)`` items, read as a plain read is (one
                round trip on a hit); when it reaches past them, it is read from SQL.

        Raises:
            TypeError, ValueError: a bad ``limit``.
            SessionClosedError: the session was closed.
        """
        self._check_open()
        limit = self._resolve_limit(limit)
        window = self._resolve_window(whole_pairs, whole_turns)
        if limit == 0:
            return []
        if limit is None or window == "items":
            return await self._read(limit)
        span = max(limit + 1, self.max_cached_items)
        items = await self._read(span)
        taken = window_length((mark_of(item) for item in reversed(items)), limit, window)
        if taken < len(items) or len(items) < span:
            return items[len(items) - taken :]
        rows = await self.store.get_stored_items(limit, window=window)
        return [decode_item(row) for row in rows]

    async def _read(self, limit: int | None) -> list[SessionItem]:
        """The newest ``limit`` items (all with ``None``): the cache protocol's read."""
        if self.lifecycle.touch_on_read:  # a read slides the expiry in SQL: it goes there
            return [decode_item(data) for data in await self._load(limit)]
        client = self._client()
        reply: Any = None
        if await self._settle(client):
            owed = self._take_ends()  # carried by this call's first round trip
            if limit is None:
                error, whole = await self._round_trip(client, owed, None, [])
                if whole is not None and whole[:1] in (b"c", "c"):
                    return _array(whole, skip=1)
                if error is not None:
                    return await self._read_valid(self._load, None)
                owed = []
            args: list[str | int] = [-1 if limit is None else limit, _token(), self._ttl_ms]
            _, reply = await self._round_trip(client, owed, _READ, args)
        if reply is not None and reply[0] == 1:
            return _array(reply[1])
        if reply is None or reply[0] == 0:
            return await self._read_valid(self._load, limit)
        # A miss: load enough to fill the cache's window too, and learn whether it is complete.
        window = self.max_cached_items
        rows = await self._load(None if limit is None else max(limit, window + 1))
        if decode_stored(rows, self.session_id)[1]:
            # Rows that are not JSON (written by another program) are never cached: the
            # cache's pops would no longer mirror the store's.
            return await self._read_valid(self._load, limit)
        header = "c" if len(rows) <= window else "p"
        joined, ends = _joined(rows[-window:], start=1)
        fill_ttl = await self._fill_ttl_ms(rows)
        if fill_ttl is not None:
            fill: list[Any] = [reply[1], fill_ttl, header, header + joined, ends]
            await self._redis(client, lambda: _FILL(client, self._keys, fill))
        if limit is not None:
            rows = rows[-limit:]
        return [decode_item(data) for data in rows]

    async def add_items(self, items: list[SessionItem]) -> None:
        """Append ``items`` in order, atomically: committed to SQL, then added to the cache.

        Raises:
            TypeError, ValueError: an item is not a JSON object; nothing is written.
            redis.RedisError: Redis answered with an error or not in time and did not take the
                cache's write mark (writes paused, a read-only replica); nothing is written.
                ``pop_item`` and ``clear_session`` raise the same.
            SessionClosedError: the session was closed.
        """
        self._check_open()
        encoded = encode_items(items)
        if not encoded:
            return
        if self.lifecycle.max_items is not None:  # SQL may drop the oldest: drop the copy
            await self._write(lambda: self.store.add_encoded_items(encoded), "", [])
            return
        await self._write(
            lambda: self.store.add_encoded_items(encoded),
            "add",
            list(_joined([i.json for i in encoded])),
        )

    async def pop_item(self) -> SessionItem | None:
        """Remove and return the newest item (from SQL); ``None`` when the history is empty."""
        self._check_open()
        return await self._pop_valid(lambda: self._write(self.store.pop_stored_item, "pop", []))

    async def clear_session(self) -> None:
        """Remove every item of this session from SQL, then cache it as empty."""
        self._check_open()
        await self._write(self.store.clear_session, "clear", [])

    def with_id(self, session_id: str) -> Self:
        """A cached session for ``session_id`` over the same store, Redis and options."""
        self._check_open()
        session = type(self)(
            self.store.with_id(session_id), session_settings=self.session_settings, **self._options
        )
        session.window_mode = self.window_mode
        return session

    async def fork(self, session_id: str, upto: ItemCursor | str | None = None) -> Self:
        """Copy this history into session ``session_id`` in SQL (the store's fork: one
        statement) under the new session's cache write protocol, so no process reads a cached
        copy of ``session_id`` from before it; returns the new cached session."""
        self._check_open()
        target = self._check_fork_target(session_id)
        cursor = validate_upto(upto)
        forked = self.with_id(target)
        try:
            await forked._write(lambda: self.store.copy_to(target, cursor), "", [])
        except BaseException:
            await forked.close()
            raise
        return forked

    async def fork_origin(self) -> ForkOrigin | None:
        """Where this session was forked from (read from SQL); ``None`` if it was not."""
        self._check_open()
        return await self.store.fork_origin()

    def _session_lock(self) -> SessionLock:
        """The lock of the SQL store of record (the cache holds none of its own)."""
        return self.store._session_lock()

    async def info(self) -> SessionInfo | None:
        """What the SQL store knows of this session (see :meth:`SessionABC.info`)."""
        self._check_open()
        return await self.store.info()

    async def _update_info(self, changes: dict[str, Any]) -> SessionInfo:
        # Through the write protocol: a write to an expired session starts a fresh history.
        return await self._write(lambda: self.store.update_info(**changes), "", [])

    async def get_page(self, limit: int = 50, before: str | None = None) -> ItemPage:
        """One page of the history, from SQL (see :meth:`SessionABC.get_page`)."""
        self._check_open()
        return await self.store.get_page(limit, before)

    async def _replace(
        self, items: list[EncodedItem], newest: int | None, expected: list[SessionItem] | None
    ) -> bool:
        """Replaced in SQL; the cached copy is dropped (the next read refills it)."""
        return await self._write(
            lambda: self.store.replace_encoded_items(items, newest=newest, if_newest=expected),
            "",
            [],
        )

    async def _close(self) -> None:
        try:
            try:
                if self._ender is not None and not self._ender.done():
                    await self._ender
                await self._deliver_ends()
            finally:
                await self.store.close()
        finally:
            if self._connection is not None:
                self._clients = None
                await shared_clients.release(self._connection)


# --- the manager -------------------------------------------------------------------------------


class CachedSessionManager(SessionManagerABC[CachedSession]):
    """Hands out ``CachedSession`` objects over the sessions of a SQL manager (the store of
    record), all behind one Redis cache, and manages the store as a whole.

    Listing and reading whole conversations come from SQL; deleting a session and writing a
    whole conversation go through the cache's write protocol, so no process reads a cached
    copy from before them.

    Example:
        >>> store = SQLAlchemySessionManager(engine)
        >>> async with CachedSessionManager(store, redis_url="redis://localhost:6379") as manager:
        ...     session = manager.get_session("user_123")

    The manager owns ``store``: ``close()`` closes it (and the sessions handed out). A Redis
    client passed as ``client`` is never closed; one built from ``redis_url`` is shared by the
    manager's sessions and released with the last of them.

    Args:
        store: An ``SQLAlchemySessionManager``, or an ``SQLiteSessionManager`` on a file.
        redis_url, db, client, ttl, key_prefix, max_cached_items, max_connections,
        socket_timeout, socket_connect_timeout, pool_timeout: As for :class:`CachedSession`,
            for every session of the manager.

    Raises:
        TypeError, ValueError: a bad store or option.
    """

    def __init__(
        self,
        store: SQLSessionManagerABC[SQLSessionBase],
        redis_url: str = DEFAULT_URL,
        db: int | None = None,
        *,
        client: RedisClient | None = None,
        ttl: TTL | None = 3600,
        key_prefix: str = DEFAULT_KEY_PREFIX,
        max_cached_items: int = DEFAULT_MAX_CACHED_ITEMS,
        max_connections: int = 50,
        socket_timeout: float | None = 2.0,
        socket_connect_timeout: float | None = 1.0,
        pool_timeout: float | None = 10.0,
    ) -> None:
        if not isinstance(store, SQLSessionManagerABC):
            raise TypeError(
                "store must be an agentmem SQL manager (SQLAlchemySessionManager or "
                f"SQLiteSessionManager), got {type(store).__name__}"
            )
        _refuse_private(store)
        _checked_options(max_cached_items, ttl, key_prefix)
        # Checked here as the sessions will; holding the shared clients keeps their pool open
        # between sessions.
        options = ConnectionOptions(
            redis_url, db, max_connections, socket_timeout, socket_connect_timeout, pool_timeout
        )
        self._connection = connection_unless_given(client, options)
        if self._connection is not None:
            shared_clients.acquire(self._connection)
        self.store = store
        self._options: dict[str, Any] = {
            "client": client,
            "ttl": ttl,
            "key_prefix": key_prefix,
            "max_cached_items": max_cached_items,
            **asdict(options),
        }
        del self._options["extra_options"]  # RedisSession's alone: CachedSession has none
        self._closed = False

    @property
    def default_ttl(self) -> float | None:
        """The store manager's ``default_ttl`` (the sessions' expiry in SQL)."""
        return self.store.default_ttl

    @default_ttl.setter
    def default_ttl(self, value: float | None) -> None:
        self.store.default_ttl = value

    @property
    def default_max_items(self) -> int | None:
        """The store manager's ``default_max_items``."""
        return self.store.default_max_items

    @default_max_items.setter
    def default_max_items(self, value: int | None) -> None:
        self.store.default_max_items = value

    @property
    def touch_on_read(self) -> bool:
        """The store manager's ``touch_on_read`` (such reads go to SQL)."""
        return self.store.touch_on_read

    @touch_on_read.setter
    def touch_on_read(self, value: bool) -> None:
        self.store.touch_on_read = value

    def _make_session(self, session_id: str, options: SessionOptions) -> CachedSession:
        """A cached session over the store manager's session of ``session_id``, which takes
        the lifecycle options (``ttl`` is the session's expiry in SQL, not the cache's)."""
        sql_session = self.store.get_session(session_id, **options.keywords())
        return CachedSession(
            sql_session, session_settings=options.session_settings, **self._options
        )

    async def list_sessions(self) -> list[str]:
        """The ids of every stored session (from SQL), sorted."""
        self._check_open()
        return await self.store.list_sessions()

    async def session_info(self, session_id: str) -> SessionInfo | None:
        """Item count and timestamps of one session (from SQL); ``None`` if it is not stored."""
        self._check_open()
        return await self.store.session_info(session_id)

    async def find_sessions(
        self,
        *,
        user_id: str | None = None,
        metadata: dict[str, Any] | None = None,
        limit: int = DEFAULT_PAGE_SIZE,
        cursor: str | None = None,
    ) -> SessionPage:
        """One page of the live sessions (from SQL), most recently updated first."""
        self._check_open()
        return await self.store.find_sessions(
            user_id=user_id, metadata=metadata, limit=limit, cursor=cursor
        )

    async def count_sessions(self, user_id: str | None = None) -> int:
        """How many live sessions the store holds (from SQL)."""
        self._check_open()
        return await self.store.count_sessions(user_id)

    async def purge_expired(
        self, batch_size: int = 1000, *, on_batch: Callable[[int], None] | None = None
    ) -> int:
        """Delete the expired sessions from SQL (see :meth:`SessionManagerABC.purge_expired`);
        their cached copies, which never outlive a session's expiry, need no purge."""
        self._check_open()
        return await self.store.purge_expired(batch_size, on_batch=on_batch)

    async def existing_sessions(self, session_ids: Iterable[str]) -> set[str]:
        """Those of ``session_ids`` that are stored (in SQL)."""
        self._check_open()
        return await self.store.existing_sessions(session_ids)

    async def read_conversation(self, session_id: str) -> Conversation | None:
        """One whole conversation, read from SQL; ``None`` if it is not stored."""
        self._check_open()
        return await self.store.read_conversation(session_id)

    async def _through_cache(self, session_id: str, write: Callable[[], Awaitable[T]]) -> T:
        """Run a write of the store under the cache's write protocol: the copy is dropped."""
        session = self.get_session(session_id)
        try:
            return await session._write(write, "", [])
        finally:
            await session.close()

    async def delete_session(self, session_id: str) -> bool:
        """Delete one session and its history (in SQL, its cached copy dropped); whether it
        existed."""
        self._check_open()
        session_id = validate_session_id(session_id)
        return await self._through_cache(session_id, lambda: self.store.delete_session(session_id))

    async def write_conversation(self, conversation: Conversation) -> None:
        """Store ``conversation`` whole with its lifecycle in SQL, replacing any session of
        the same id, in one transaction; its cached copy is dropped."""
        self._check_open()
        conversation = conversation.validated()
        await self._through_cache(
            conversation.session_id, lambda: self.store.write_conversation(conversation)
        )

    async def _release(self) -> None:
        try:
            await self.store.close()
        finally:
            if self._connection is not None:
                await shared_clients.release(self._connection)
