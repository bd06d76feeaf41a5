"""``RedisSession`` and ``RedisSessionManager``: agentmem's history in Redis.

Key layout (one session, ``id`` = the session id with ``%``, ``{`` and ``}`` percent-encoded)::

    {session_prefix}:{id}    hash: created_at, updated_at (Unix seconds)
    {messages_prefix}:{id}   list: one JSON item per element, oldest first

Both keys share the hash tag ``{id}``, so they live in one Redis Cluster slot and every operation
is a single-slot command or Lua script: ``add_items``, ``pop_item``, ``get_items`` and
``clear_session`` are one round trip each (EVALSHA, falling back to EVAL when the server does not
have the script yet).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final, Self, TypeVar

import orjson

from agentmem._batch import new_raw_batch_id
from agentmem._lock import SessionLock
from agentmem.errors import SessionLockLost
from agentmem.forks import ForkOrigin, ItemCursor, fork_origin_of, validate_upto
from agentmem.manager import (
    DEFAULT_PAGE_SIZE,
    Conversation,
    SessionInfo,
    SessionManagerABC,
    SessionPage,
    page_of,
    page_request,
    validate_page_size,
)
from agentmem.records import TTL as SessionTTL
from agentmem.records import (
    UNSET,
    ItemPage,
    Lifecycle,
    Unset,
    encode_position,
    validate_metadata_filter,
    validate_user_id,
)
from agentmem.redis import _lifecycle as _lua
from agentmem.redis import _windows
from agentmem.redis import client as _redis
from agentmem.redis._lock import LOCK_LOST, RedisSessionLock
from agentmem.redis.client import (
    DEFAULT_URL,
    TTL,
    Connection,
    ConnectionOptions,
    LoopClients,
    Script,
    connection_unless_given,
    decode_tag,
    glob_escape,
    settled,
    shared_clients,
    tagged_key,
    ttl_to_ms,
    validate_prefixes,
)
from agentmem.session import (
    EncodedItem,
    SessionABC,
    SessionClosedError,
    SessionItem,
    decode_item,
    decode_stored,
    encode_items,
    validate_session_id,
)
from agentmem.windows import WindowMode, resolve_window_mode

if TYPE_CHECKING:
    from agentmem.redis.client import RedisClient

__all__ = ["RedisSession", "RedisSessionManager"]

DEFAULT_SESSION_PREFIX: Final = "agentmem:session"
DEFAULT_MESSAGES_PREFIX: Final = "agentmem:messages"

T = TypeVar("T")

_SCAN_COUNT = 1000
_PIPELINE_CHUNK = 500

logger = logging.getLogger("agentmem")
_RPUSH_CHUNK = _lua.RPUSH_CHUNK

# KEYS: list, hash[, lock]. ARGV: now, ttl ms, lock token, newest (-1: the whole list), k (-1:
# no check), session prefix, session id, inline, the k expected texts, then the new items.
# Returns 1 (wrapped by indexed(): the index entries' activity moves as on any write), or 0
# (nothing changed) when the newest items are not the expected ones.
_REPLACE_SOURCE = (
    _lua.INDEX_LUA
    + _lua.fence(3)
    + f"""
local list_type = redis.call('TYPE', KEYS[1]).ok
if list_type ~= 'none' and list_type ~= 'list' then
  return redis.error_reply('WRONGTYPE ' .. KEYS[1] .. ' holds a ' .. list_type .. ', not a list')
end
local newest = tonumber(ARGV[4])
local k = tonumber(ARGV[5])
if newest < 0 then
  redis.call('DEL', KEYS[1])
elseif newest > 0 then
  local tail = redis.call('LRANGE', KEYS[1], -newest, -1)
  if k >= 0 then
    if #tail ~= k then return 0 end
    for i = 1, k do
      if tail[i] ~= ARGV[8 + i] then return 0 end
    end
  end
  if #tail >= redis.call('LLEN', KEYS[1]) then
    redis.call('DEL', KEYS[1])
  else
    redis.call('LTRIM', KEYS[1], 0, -(#tail + 1))
  end
end
local first = 9 + math.max(k, 0)
for i = first, #ARGV, {_RPUSH_CHUNK} do
  redis.call('RPUSH', KEYS[1], unpack(ARGV, i, math.min(i + {_RPUSH_CHUNK - 1}, #ARGV)))
end
redis.call('HSETNX', KEYS[2], 'created_at', ARGV[1])
redis.call('HSET', KEYS[2], 'updated_at', ARGV[1])
local ttl = tonumber(ARGV[2])
expire({{KEYS[1], KEYS[2]}}, ttl)
local expires = 0
if ttl > 0 then expires = math.floor(tonumber(ARGV[1]) * 1000) + ttl end
return indexed(1, ARGV[8], ARGV[6], ARGV[7], ARGV[1], expires,
  redis.call('HGET', KEYS[2], 'user_id'))
"""
)

_REPLACE = Script(_REPLACE_SOURCE)

_POOL_OPTIONS = ("db", "max_connections", "socket_timeout", "socket_connect_timeout")


# --- the session -------------------------------------------------------------------------------


class RedisSession(SessionABC):
    """A conversation history in Redis: a list of JSON items plus a metadata hash.

    Built from a URL, the session connects lazily over a blocking connection pool that every
    session with the same URL and options shares (one per event loop), released by ``close()``.
    Built with ``client=``, it uses that ``redis.asyncio.Redis`` (or ``RedisCluster``) as is and
    never closes it.

    Example::

        async with RedisSession("user_123", ttl=3600) as session:
            await session.add_items([{"role": "user", "content": "Hi"}])

    Attributes:
        session_id: The conversation's id.
        session_settings: The OpenAI Agents SDK ``SessionSettings`` (``limit`` is the default for
            ``get_items()``), or ``None``.
        ttl: The expiry every write sets on the session's keys, or ``None`` for no expiry.
        session_key: The Redis key of the metadata hash.
        messages_key: The Redis key of the item list.
    """

    ttl: timedelta | None
    session_key: str
    messages_key: str
    _fence: tuple[str, str] | None = None  # (lock key, token) while exclusive() holds the lock

    def __init__(
        self,
        session_id: str,
        redis_url: str = DEFAULT_URL,
        db: int | None = None,
        *,
        client: RedisClient | None = None,
        redis_client: RedisClient | None = None,
        session_prefix: str | None = None,
        messages_prefix: str | None = None,
        key_prefix: str | None = None,
        ttl: TTL | None = None,
        session_settings: Any = None,
        whole_pairs: bool = False,
        whole_turns: bool = False,
        max_items: int | None = None,
        touch_on_read: bool = False,
        user_id: str | None = None,
        title: str | None = None,
        metadata: dict[str, Any] | None = None,
        max_connections: int = 50,
        socket_timeout: float | None = 10.0,
        socket_connect_timeout: float | None = 5.0,
        pool_timeout: float | None = 10.0,
        redis_options: dict[str, Any] | None = None,
    ) -> None:
        """Create a session; nothing is read or written until the first operation.

        Args:
            session_id: The conversation's id: any string of 1 to 255 characters.
            redis_url: ``redis://``, ``rediss://`` or ``unix://`` URL, with an optional password
                and database (``redis://:secret@host:6379/2``), or ``redis+cluster://`` (or
                ``rediss+cluster://``) naming a node of a Redis Cluster. Ignored when ``client``
                is given.
            db: The database number, if the URL does not name one (default 0).
            client: A ``redis.asyncio.Redis`` or ``RedisCluster`` to use instead of connecting
                from ``redis_url``; the session never closes it.
            redis_client: The OpenAI Agents SDK's name of ``client``.
            session_prefix: Prefix of the metadata hash key (default ``agentmem:session``).
            messages_prefix: Prefix of the item list key (default ``agentmem:messages``).
            key_prefix: The SDK's single prefix: ``P`` stands for the session prefix
                ``P:session`` and the messages prefix ``P:messages`` (the defaults are
                ``key_prefix="agentmem"``).
            ttl: Expiry (seconds or ``timedelta``) that every write sets on all of the session's
                keys; ``None`` never expires.
            session_settings: OpenAI Agents SDK ``SessionSettings`` (or a dict of them).
            whole_pairs: Make whole-pair windows the default of ``get_items`` calls with a
                limit (the Runner's ``session_settings.limit`` too); see
                :mod:`agentmem.windows`.
            whole_turns: Make whole-turn windows that default.
            max_items: The longest history kept; a write beyond it drops the oldest items.
            touch_on_read: Whether reads slide the expiry too.
            user_id: The owner stored with the first write (or filled in if absent).
            title: The title, likewise.
            metadata: The metadata (a JSON object), likewise.
            max_connections: Size of the connection pool; callers beyond it wait for a connection.
            socket_timeout: Seconds to wait for a reply before raising ``redis.TimeoutError``.
            socket_connect_timeout: Seconds to wait for a connection to open.
            pool_timeout: Seconds to wait for a free pooled connection before raising
                ``redis.ConnectionError``.
            redis_options: Other redis-py connection options (``password``, ``ssl_*``...)
                for the pool built from ``redis_url``.

        Raises:
            TypeError, ValueError: a bad id, prefix, ttl, URL or client; a client or a prefix
                given twice.
            MissingDependencyError: redis-py is not installed (the ``redis`` extra).
        """
        if redis_client is not None:
            if client is not None:
                raise TypeError("give the Redis client once: client= or redis_client=")
            client = redis_client
        session_prefix, messages_prefix = _prefixes(key_prefix, session_prefix, messages_prefix)
        connection = connection_unless_given(
            client,
            ConnectionOptions(
                redis_url,
                db,
                max_connections,
                socket_timeout,
                socket_connect_timeout,
                pool_timeout,
                extra_options=redis_options,
            ),
        )
        self._setup(session_id, session_settings, ttl, session_prefix, messages_prefix)
        self.window_mode = resolve_window_mode(whole_pairs, whole_turns)
        self.lifecycle = Lifecycle.checked(
            ttl=None if self.ttl is None else self.ttl.total_seconds(),
            max_items=max_items,
            touch_on_read=touch_on_read,
            user_id=user_id,
            title=title,
            metadata=metadata,
        )
        self._client_given = client
        self._manager: RedisSessionManager | None = None
        self._connection = connection
        self._clients = None if connection is None else shared_clients.acquire(connection)

    @classmethod
    def from_url(
        cls,
        session_id: str,
        *,
        url: str,
        redis_kwargs: dict[str, Any] | None = None,
        session_settings: Any = None,
        **kwargs: Any,
    ) -> RedisSession:
        """The OpenAI Agents SDK's constructor: a session connecting to ``url``.

        The session owns its connection pool (shared with the other sessions of the same URL
        and options) and releases it on ``close()``.

        Args:
            session_id: The conversation's id.
            url: ``redis://``, ``rediss://`` or ``unix://`` URL.
            redis_kwargs: redis-py connection options; ``db``, ``max_connections``,
                ``socket_timeout`` and ``socket_connect_timeout`` set the pool's, the others
                (``password``, ``ssl_*``...) go to each connection.
            session_settings: OpenAI Agents SDK ``SessionSettings`` (or a dict of them).
            **kwargs: The constructor's other keyword arguments (``key_prefix``, ``ttl``...).
        """
        options = dict(redis_kwargs or {})
        pool = {name: options.pop(name) for name in _POOL_OPTIONS if name in options}
        return cls(
            session_id,
            url,
            session_settings=session_settings,
            redis_options=options,
            **pool,
            **kwargs,
        )

    async def ping(self) -> bool:
        """Whether Redis answers a PING (``False`` when it cannot be reached), as the SDK's
        ``RedisSession.ping``.

        Raises:
            SessionClosedError: the session (or its manager) was closed.
        """
        from redis.exceptions import RedisError

        client = self._client()
        try:
            return bool(await settled(client.ping()))
        except (RedisError, OSError):
            return False

    def _setup(
        self,
        session_id: str,
        session_settings: Any,
        ttl: object,
        session_prefix: str,
        messages_prefix: str,
    ) -> None:
        super().__init__(session_id, session_settings)
        session_prefix, messages_prefix = validate_prefixes(session_prefix, messages_prefix)
        self._prefixes = (session_prefix, messages_prefix)
        self._ttl_ms = ttl_to_ms(ttl)
        self.ttl = timedelta(milliseconds=self._ttl_ms) if self._ttl_ms else None
        self._session_prefix = session_prefix
        self.session_key = tagged_key(session_prefix, self.session_id)
        self.messages_key = tagged_key(messages_prefix, self.session_id)
        self._keys = [self.messages_key, self.session_key]

    @classmethod
    def _from_manager(
        cls,
        manager: RedisSessionManager,
        session_id: str,
        ttl: object,
        session_settings: Any,
        lifecycle: Lifecycle,
        window_mode: WindowMode = "items",
    ) -> RedisSession:
        session = cls.__new__(cls)
        session._setup(
            session_id, session_settings, ttl, manager.session_prefix, manager.messages_prefix
        )
        session.window_mode = window_mode
        session.lifecycle = lifecycle
        session._client_given = None
        session._manager = manager
        session._connection = None
        session._clients = manager._clients
        return session

    def _client(self) -> RedisClient:
        self._check_open()
        if self._client_given is not None:
            return self._client_given
        if self._manager is not None and self._manager.closed:
            raise SessionClosedError(
                f"the RedisSessionManager of session {self.session_id!r} is closed"
            )
        assert self._clients is not None
        return self._clients.get()

    def with_id(self, session_id: str) -> Self:
        """A session for ``session_id`` on this session's client, prefixes, ttl and settings."""
        self._check_open()
        session = type(self).__new__(type(self))
        ttl = None if self.ttl is None else self.ttl
        session._setup(session_id, self.session_settings, ttl, *self._prefixes)
        session.window_mode = self.window_mode
        session._client_given = self._client_given
        session._manager = self._manager
        session._connection = self._connection
        session._clients = (
            self._clients if self._connection is None else shared_clients.acquire(self._connection)
        )
        return session

    async def get_items(
        self,
        limit: int | None = None,
        *,
        whole_pairs: bool | None = None,
        whole_turns: bool | None = None,
    ) -> list[SessionItem]:
        """Return the history oldest first (one LRANGE; a whole-pair or whole-turn window is
        one Lua script).

        Args:
            limit: Return only the newest ``limit`` items. ``None`` means the
                ``session_settings`` limit if one is set, else everything.
            whole_pairs, whole_turns: Widen a limited read to whole pairs or turns (see
                :meth:`agentmem.SessionABC.get_items` and :mod:`agentmem.windows`).

        Raises:
            TypeError, ValueError: a bad ``limit``.
            SessionClosedError: the session (or its manager) was closed.
        """
        client = self._client()
        limit = self._resolve_limit(limit)
        window = self._resolve_window(whole_pairs, whole_turns)
        if limit == 0:
            return []
        if limit is not None and window != "items":
            turns = "1" if window == "turns" else "0"
            items: list[bytes | str] = await settled(
                _windows.WINDOW(client, [self.messages_key], [limit, turns])
            )
            return decode_stored(items, self.session_id)[0]

        async def fetch(window: int | None) -> list[bytes | str]:
            start = 0 if window is None else -window
            raw: list[bytes | str]
            if self.lifecycle.touch_on_read and self._ttl_ms:
                args: list[str | int] = [
                    _now(),
                    self._ttl_ms,
                    self._session_prefix,
                    self.session_id,
                    start,
                    _lua.inline(client),
                ]
                raw = await settled(_lua.TOUCH_READ(client, self._keys, args))
            else:
                raw = await settled(client.lrange(self.messages_key, start, -1))
            return raw

        return await self._read_valid(fetch, limit)

    async def add_items(self, items: list[SessionItem]) -> None:
        """Append ``items`` in order, atomically, in one round trip (a Lua script).

        The script also stamps ``updated_at`` and sets (or, with ``ttl=None``, removes) the
        expiry of every key of the session. The call's batch id is kept with the session's
        newest 32: after a connection error the call is sent once more, and a script that
        finds its batch id already applied adds nothing.

        Raises:
            TypeError, ValueError: an item is not a JSON object; nothing is written.
            SessionLockLost: this object holds the session's lock (``exclusive()``) and the
                lock was lost; nothing is written.
            SessionClosedError: the session (or its manager) was closed.
        """
        client = self._client()
        encoded = encode_items(items)
        if not encoded:
            return
        life = self.lifecycle
        keys, token = self._fenced_keys()
        args: list[str | int | bytes] = [
            _now(),
            self._ttl_ms,
            life.max_items or 0,
            self._session_prefix,
            self.session_id,
            life.user_id or "",
            life.title or "",
            life.metadata_json or "",
            new_raw_batch_id(),
            token,
            _lua.inline(client),
        ]
        # UTF-8 bytes, as reads decode them: redis-py's encoding of a str argument costs more.
        args.extend([item.json.encode() for item in encoded])
        try:
            reply = await self._fenced(_lua.ADD(client, keys, args))
        except (_redis.RedisConnectionError, _redis.RedisTimeoutError):
            # The reply may be lost after the script ran: the batch id makes the retry a no-op.
            reply = await self._fenced(_lua.ADD(client, keys, args))
        await _lua.indexed(client, self._session_prefix, self.session_id, reply)

    async def pop_item(self) -> SessionItem | None:
        """Remove and return the newest item, atomically, in one round trip (a Lua script).

        Never retried: after a lost reply the caller gets the connection error (the item may
        have been removed), so a pop never removes more than one item.

        Returns:
            The newest item, or ``None`` when the history is empty.
        """
        client = self._client()
        keys, token = self._fenced_keys()
        args: list[str | int] = [
            _now(),
            self._ttl_ms,
            self._session_prefix,
            self.session_id,
            token,
            _lua.inline(client),
        ]

        async def pop() -> bytes | str | None:
            reply = await self._fenced(_lua.POP(client, keys, args))
            data: bytes | str | None = await _lua.indexed(
                client, self._session_prefix, self.session_id, reply
            )
            return data

        return await self._pop_valid(pop)

    async def clear_session(self) -> None:
        """Delete every key of this session (other sessions are untouched); never retried."""
        client = self._client()
        keys, token = self._fenced_keys()
        args = [self._session_prefix, self.session_id, token, _lua.inline(client)]
        reply = await self._fenced(_lua.DROP(client, keys, args))
        await _lua.dropped(client, self._session_prefix, self.session_id, reply)

    def _session_lock(self) -> SessionLock:
        """A Redis lock key with an expiry, renewed while held; it fences this object's
        writes (see :mod:`agentmem.redis._lock`)."""
        lock_key = f"{self.session_key}:lock"
        return RedisSessionLock(("redis", lock_key), self._client, lock_key, self._set_fence)

    def _set_fence(self, fence: tuple[str, str] | None) -> None:
        self._fence = fence

    def _fenced_keys(self) -> tuple[list[str], str]:
        """The keys of a write script (with the lock key while this object holds the lock)
        and the lock's token ("" without)."""
        if self._fence is None:
            return self._keys, ""
        return [*self._keys, self._fence[0]], self._fence[1]

    async def _fenced(self, call: Awaitable[T]) -> T:
        """Await a write script; a refusal for a lost lock raises SessionLockLost."""
        try:
            return await settled(call)
        except _redis.ResponseError as exc:
            if str(exc).startswith(LOCK_LOST):
                raise SessionLockLost(
                    f"session {self.session_id!r}: the lock held by exclusive() was lost "
                    "(expired or taken over); the write was refused"
                ) from None
            raise

    async def fork(self, session_id: str, upto: ItemCursor | str | None = None) -> Self:
        """Copy this history into session ``session_id`` (same prefixes) and return a session
        for it, with this session's ttl (see :meth:`agentmem.SessionABC.fork`).

        One Lua script; its hash records ``forked_from`` and ``fork_point``. On a Redis Cluster
        where the two sessions' keys live in different slots, two round trips: the source's
        items are read (one ``LRANGE``), then written by one script on the new session's slot.
        """
        from redis.asyncio import RedisCluster

        client = self._client()
        target = self._check_fork_target(session_id)
        cursor = validate_upto(upto)
        forked = self.with_id(target)
        count = -1 if cursor is None else cursor.count
        prefix, inline = self._session_prefix, _lua.inline(client)
        args: list[str | int] = [_now(), self._ttl_ms, count, self.session_id]
        args.extend([prefix, target, inline])
        try:
            if isinstance(client, RedisCluster) and client.keyslot(
                self.messages_key
            ) != client.keyslot(forked.messages_key):
                stop = -1 if count < 0 else count - 1
                items = (
                    [] if count == 0 else await settled(client.lrange(self.messages_key, 0, stop))
                )
                into: list[str | int | bytes] = [
                    *(_now(), self._ttl_ms, self.session_id, prefix, target, inline),
                    *items,
                ]
                keys = [forked.messages_key, forked.session_key]
                reply = await settled(_windows.FORK_INTO(client, keys, into))
            else:
                keys = [self.messages_key, forked.messages_key, forked.session_key]
                reply = await settled(_windows.FORK(client, keys, args))
            await _lua.indexed(client, prefix, target, reply)
        except BaseException as exc:
            await forked.close()
            if _windows.FORK_TARGET_NOT_EMPTY in str(exc):  # the script's refusal
                raise ValueError(
                    f"session {target!r} already holds items; a fork needs a new id"
                ) from None
            raise
        return forked

    async def fork_origin(self) -> ForkOrigin | None:
        """Where this session was forked from (its hash's ``forked_from`` and ``fork_point``);
        ``None`` if it was not."""
        client = self._client()
        parent, point = await settled(client.hmget(self.session_key, ["forked_from", "fork_point"]))
        return fork_origin_of(parent, point)

    async def info(self) -> SessionInfo | None:
        """Owner, title, metadata, item count, times and expiry; ``None`` when not stored."""
        client = self._client()
        return (
            await _read_infos(client, [(self.session_id, self.session_key, self.messages_key)])
        )[0]

    async def _update_info(self, changes: dict[str, Any]) -> SessionInfo:
        client = self._client()
        args: list[str | int] = [
            _now(),
            self._ttl_ms,
            self._session_prefix,
            self.session_id,
            _lua.inline(client),
        ]
        for name, value in changes.items():
            if name == "metadata":
                value = orjson.dumps(value).decode() if value else None
            args.extend([name, "d", ""] if value is None else [name, "s", value])
        life = self.lifecycle
        given = {"user_id": life.user_id, "title": life.title, "metadata": life.metadata_json}
        for name, value in given.items():  # the session's own, as its first write stores them
            if name not in changes and value is not None:
                args.extend([name, "n", value])
        reply = await settled(_lua.UPDATE(client, self._keys, args))
        await _lua.indexed(client, self._session_prefix, self.session_id, reply)
        info = await self.info()
        assert info is not None  # just written (a TTL shorter than this call aside)
        return info

    async def _page(self, limit: int, before: int | None) -> ItemPage:
        client = self._client()
        args: list[str | int] = [-1 if before is None else before, limit]
        start, first, raw = await settled(_lua.PAGE(client, self._keys, args))
        items = [decode_item(data) for data in raw]
        at_start = not items or int(start) <= int(first)
        return ItemPage(items, None if at_start else encode_position(int(start)))

    async def _replace(
        self, items: list[EncodedItem], newest: int | None, expected: list[SessionItem] | None
    ) -> bool:
        """One Lua script; with ``expected``, the newest texts are read first and compared
        here, and the script replaces them only if they are still the newest."""
        client = self._client()
        texts: list[bytes | str] = []
        if expected is not None and newest:
            texts = await settled(client.lrange(self.messages_key, -newest, -1))
            if not _sql_same(texts, expected):
                return False
        keys, token = self._fenced_keys()
        args: list[Any] = [
            _now(),
            self._ttl_ms,
            token,
            -1 if newest is None else newest,
            -1 if expected is None else len(texts),
            self._session_prefix,
            self.session_id,
            _lua.inline(client),
            *texts,
            *(item.json for item in items),
        ]
        reply = await self._fenced(_REPLACE(client, keys, args))
        return bool(await _lua.indexed(client, self._session_prefix, self.session_id, reply))

    async def _close(self) -> None:
        if self._connection is not None:
            self._clients = None
            await shared_clients.release(self._connection)


def _now() -> str:
    return f"{time.time():.6f}"


def _sql_same(texts: list[bytes | str], expected: list[SessionItem]) -> bool:
    """Whether stored texts hold exactly the items ``expected``, oldest first."""
    if len(texts) != len(expected):
        return False
    try:
        return all(decode_item(t) == item for t, item in zip(texts, expected, strict=True))
    except ValueError:  # not valid JSON
        return False


def _prefixes(
    key_prefix: str | None, session_prefix: str | None, messages_prefix: str | None
) -> tuple[str, str]:
    """The session and messages prefixes, from agentmem's two or the SDK's ``key_prefix``."""
    if key_prefix is None:
        return (
            DEFAULT_SESSION_PREFIX if session_prefix is None else session_prefix,
            DEFAULT_MESSAGES_PREFIX if messages_prefix is None else messages_prefix,
        )
    if session_prefix is not None or messages_prefix is not None:
        raise ValueError("give key_prefix or session_prefix/messages_prefix, not both")
    if not isinstance(key_prefix, str) or not key_prefix:
        raise ValueError(f"key_prefix must be a non-empty str, got {key_prefix!r}")
    return f"{key_prefix}:session", f"{key_prefix}:messages"


# --- the manager -------------------------------------------------------------------------------


class RedisSessionManager(SessionManagerABC[RedisSession]):
    """Hands out ``RedisSession`` objects that share one blocking connection pool.

    Sessions from a manager never close the pool; ``close()`` on the manager does, after which
    its sessions raise ``SessionClosedError``. The pool is per event loop (like every
    redis.asyncio connection), with at most ``max_connections`` connections each; callers beyond
    that wait up to ``pool_timeout`` seconds for a free connection.

    Example::

        async with RedisSessionManager(default_ttl=7200, max_connections=10) as manager:
            session = manager.get_session("user_123")
            await session.add_items([{"role": "user", "content": "Hi"}])
            print(await manager.list_sessions())

    Attributes:
        skipped_keys: How many keys under ``session_prefix`` the last ``list_sessions()``
            skipped as not agentmem's.
    """

    skipped_keys: int

    def __init__(
        self,
        redis_url: str = DEFAULT_URL,
        db: int | None = None,
        *,
        default_ttl: TTL | None = None,
        max_connections: int = 50,
        session_prefix: str = DEFAULT_SESSION_PREFIX,
        messages_prefix: str = DEFAULT_MESSAGES_PREFIX,
        socket_timeout: float | None = 10.0,
        socket_connect_timeout: float | None = 5.0,
        pool_timeout: float | None = 10.0,
    ) -> None:
        """Configure the manager; connections open on first use.

        Args:
            redis_url: ``redis://``, ``rediss://`` or ``unix://`` URL, with an optional password
                and database, or ``redis+cluster://`` naming a node of a Redis Cluster.
            db: The database number, if the URL does not name one (default 0).
            default_ttl: The ``ttl`` of sessions from ``get_session`` (seconds or ``timedelta``);
                ``None`` never expires.
            max_connections: Size of the shared connection pool.
            session_prefix: Prefix of the metadata hash keys.
            messages_prefix: Prefix of the item list keys.
            socket_timeout: Seconds to wait for a reply.
            socket_connect_timeout: Seconds to wait for a connection to open.
            pool_timeout: Seconds to wait for a free pooled connection.

        Raises:
            TypeError, ValueError: a bad URL, prefix, ttl or pool size.
            MissingDependencyError: redis-py is not installed (the ``redis`` extra).
        """
        self.session_prefix, self.messages_prefix = validate_prefixes(
            session_prefix, messages_prefix
        )
        ttl_to_ms(default_ttl, "default_ttl")
        self._set_lifecycle_defaults(default_ttl, None, False)
        connection = Connection(
            ConnectionOptions(
                redis_url, db, max_connections, socket_timeout, socket_connect_timeout, pool_timeout
            )
        )
        self._clients = LoopClients(connection)
        self.skipped_keys = 0
        self._closed = False

    def get_session(
        self,
        session_id: str,
        *,
        user_id: str | None = None,
        title: str | None = None,
        metadata: dict[str, Any] | None = None,
        ttl: SessionTTL | Unset | None = UNSET,
        max_items: int | Unset | None = UNSET,
        session_settings: Any = None,
        whole_pairs: bool = False,
        whole_turns: bool = False,
    ) -> RedisSession:
        """Return a session on the manager's pool.

        Args:
            session_id: The conversation's id.
            ttl: Expiry for this session; defaults to the manager's ``default_ttl``, ``None``
                never expires.
            session_settings: OpenAI Agents SDK ``SessionSettings`` (or a dict of them).
            whole_pairs, whole_turns: The session's default window (see
                :class:`RedisSession`).

        Raises:
            SessionClosedError: the manager was closed.
        """
        self._check_open()
        lifecycle = self._lifecycle(
            ttl=ttl, max_items=max_items, user_id=user_id, title=title, metadata=metadata
        )
        seconds = lifecycle.ttl
        expiry = None if seconds is None else timedelta(seconds=seconds)
        window = resolve_window_mode(whole_pairs, whole_turns)
        return self._handed_out(
            RedisSession._from_manager(
                self, session_id, expiry, session_settings, lifecycle, window
            )
        )

    async def list_sessions(self) -> list[str]:
        """Return the ids of the sessions under this manager's ``session_prefix``, sorted.

        Uses SCAN (never KEYS), so it does not block the server however many keys it holds.
        Expired and deleted sessions are not listed. Keys under the prefix that agentmem did
        not write (a name that is not UTF-8 or not a valid session id) are skipped, counted in
        ``skipped_keys`` and reported by one warning on the ``agentmem`` logger.
        """
        self._check_open()
        head = f"{self.session_prefix}:{{"
        pattern = f"{glob_escape(self.session_prefix)}:{{*}}"
        ids: set[str] = set()
        keys: AsyncIterator[bytes | str] = self._clients.get().scan_iter(
            match=pattern, count=_SCAN_COUNT, _type="hash"
        )
        skipped = 0
        async for raw in keys:
            try:
                key = raw.decode() if isinstance(raw, bytes) else raw
            except UnicodeDecodeError:
                skipped += 1  # not a name agentmem writes
                continue
            tag = key[len(head) : -1]
            if key.startswith(head) and key.endswith("}") and "{" not in tag and "}" not in tag:
                try:
                    ids.add(validate_session_id(decode_tag(tag)))
                except (TypeError, ValueError):
                    skipped += 1
        self.skipped_keys = skipped
        if skipped:
            logger.warning(
                "list_sessions skipped %d key(s) under %r that are not agentmem session keys "
                "(not UTF-8, or not a valid session id)",
                skipped,
                f"{self.session_prefix}:",
            )
        return sorted(ids)

    async def delete_session(self, session_id: str) -> bool:
        """Delete every key of one session.

        Returns:
            Whether the session existed.
        """
        self._check_open()
        session_id = validate_session_id(session_id)
        keys = [
            tagged_key(self.messages_prefix, session_id),
            tagged_key(self.session_prefix, session_id),
        ]
        client = self._clients.get()
        args = [self.session_prefix, session_id, "", _lua.inline(client)]
        reply = await settled(_lua.DROP(client, keys, args))
        return await _lua.dropped(client, self.session_prefix, session_id, reply) > 0

    async def ping(self) -> bool:
        """Whether Redis answers (raises ``redis.ConnectionError`` naming the address when it
        cannot be reached)."""
        self._check_open()
        return bool(await self._clients.get().ping())

    async def _release(self) -> None:
        await self._clients.aclose()

    def _keys_of(self, session_id: str) -> tuple[str, str]:
        """The metadata hash and item list keys of a session."""
        return tagged_key(self.session_prefix, session_id), tagged_key(
            self.messages_prefix, session_id
        )

    async def _infos(self, session_ids: list[str]) -> list[SessionInfo | None]:
        """What is stored of each session (``None``: not stored), a pipeline per 500 ids."""
        triples = [(i, *self._keys_of(i)) for i in session_ids]
        return await _read_infos(self._clients.get(), triples)

    async def session_info(self, session_id: str) -> SessionInfo | None:
        """Item count and timestamps of one session; ``None`` if it is not stored."""
        self._check_open()
        return (await self._infos([validate_session_id(session_id)]))[0]

    async def find_sessions(
        self,
        *,
        user_id: str | None = None,
        metadata: dict[str, Any] | None = None,
        limit: int = DEFAULT_PAGE_SIZE,
        cursor: str | None = None,
    ) -> SessionPage:
        """One page of the stored sessions, most recently updated first.

        A page is a range of an index by activity (a sorted set: the owner's with ``user_id``,
        every session's without), cleaned of expired sessions first; each entry is checked
        against the session's own keys (stored, same owner) before it is listed.
        """
        self._check_open()
        owner = validate_user_id(user_id)
        wanted = validate_metadata_filter(metadata)
        size, after = page_request(limit, cursor)
        activity, expiry = _lua.index_keys(self.session_prefix, owner)
        await self._clean(activity, expiry)
        client = self._clients.get()
        top: float | str = "+inf" if after is None else after[0].timestamp() + 1e-6
        chunk = size + 1 + 8  # ties at the chunk's edge are rare: microsecond scores
        found: list[SessionInfo] = []
        offset = 0
        while len(found) <= size:
            rows: list[Any] = await settled(
                client.zrevrangebyscore(
                    activity, top, "-inf", start=offset, num=chunk, withscores=True
                )
            )
            offset += len(rows)
            ids = [r.decode() if isinstance(r, bytes) else r for r, _ in rows]
            infos = await self._checked_infos(client, ids)
            # deleted, or no longer this owner's: forget them (unless written again since)
            stale = [
                (session_id, repr(score))
                for session_id, (_, score), info in zip(ids, rows, infos, strict=True)
                if info is None or (owner is not None and info.user_id != owner)
            ]
            if stale:
                await settled(_lua.UNINDEX(client, [activity, expiry], _flat(stale)))
            for info in sorted((i for i in infos if i is not None), key=_newest_first):
                if owner is not None and info.user_id != owner:
                    continue
                if not _matches(info, wanted):
                    continue
                if after is not None and _newest_first(info) <= (
                    -after[0].timestamp(),
                    after[1],
                ):
                    continue
                found.append(info)
            if len(rows) < chunk:
                break
        return page_of(found[: size + 1], size)

    async def _checked_infos(
        self, client: RedisClient, session_ids: list[str]
    ) -> list[SessionInfo | None]:
        """What is stored of each session of an index page: on one Redis in one script call
        (one reply, where a pipeline would parse four per session); on a Redis Cluster, where
        the sessions live in many slots, a pipeline (a round trip per node)."""
        if not session_ids:
            return []
        if _lua.is_cluster(client):
            return await self._infos(session_ids)
        keys = [key for i in session_ids for key in self._keys_of(i)]
        replies = await settled(_lua.INFOS(client, keys, []))
        return [
            _info(session_id, fields, length, expires) if exists else None
            for session_id, (fields, length, expires, exists) in zip(
                session_ids, replies, strict=True
            )
        ]

    async def _clean(
        self,
        activity: str,
        expiry: str,
        batch: int = _PIPELINE_CHUNK,
        report: Callable[[int], None] | None = None,
    ) -> int:
        """Forget the expired sessions of one index, ``batch`` at a time; how many went.

        On one Redis the expiry index is exact (kept by every write's script): one script drops
        what it says has expired. On a Redis Cluster it is a hint (a read that slides the
        expiry does not update it): each entry past its expiry is checked against the
        session's keys; a live one gets its expiry back from them, a gone one is dropped.
        """
        client = self._clients.get()
        total = 0
        while True:
            now_ms = int(time.time() * 1000)
            if _lua.is_cluster(client):
                gone, seen = await self._clean_checked(client, activity, expiry, now_ms, batch)
            else:
                gone = seen = int(
                    await settled(_lua.CLEAN(client, [activity, expiry], [now_ms, batch]))
                )
            total += gone
            if report is not None and gone:
                report(gone)
            if seen < batch:
                return total

    async def _clean_checked(
        self, client: RedisClient, activity: str, expiry: str, now_ms: int, batch: int
    ) -> tuple[int, int]:
        """One batch of a Redis Cluster's clean: (entries dropped, entries past expiry seen)."""
        raw: list[Any] = await settled(
            client.zrangebyscore(expiry, "-inf", now_ms, start=0, num=batch)
        )
        if not raw:
            return 0, 0
        ids = [r.decode() if isinstance(r, bytes) else r for r in raw]
        # the activity first: a session written again after its check keeps its entry
        scores: list[float | None] = await settled(client.zmscore(activity, ids))
        infos = await self._infos(ids)
        gone = [
            (session_id, repr(score))
            for session_id, score, info in zip(ids, scores, infos, strict=True)
            if info is None and score is not None
        ]
        orphans = [i for i, score in zip(ids, scores, strict=True) if score is None]
        live = {
            info.session_id: (
                "+inf"
                if info.expires_at is None
                else max(now_ms + 1, int(info.expires_at.timestamp() * 1000))
            )
            for info in infos
            if info is not None
        }
        dropped = 0
        if gone:
            dropped = int(await settled(_lua.UNINDEX(client, [activity, expiry], _flat(gone))))
        if orphans:  # an expiry entry without its activity entry (a half-applied unindex)
            await settled(client.zrem(expiry, *orphans))
        if live:
            await settled(client.zadd(expiry, live, xx=True))
        return dropped, len(ids)

    async def count_sessions(self, user_id: str | None = None) -> int:
        """How many live sessions: the size of an index (the owner's, or every session's),
        cleaned of expired sessions first."""
        self._check_open()
        owner = validate_user_id(user_id)
        activity, expiry = _lua.index_keys(self.session_prefix, owner)
        await self._clean(activity, expiry)
        count: int = await settled(self._clients.get().zcard(activity))
        return count

    async def purge_expired(
        self, batch_size: int = 1000, *, on_batch: Callable[[int], None] | None = None
    ) -> int:
        """Redis deletes an expired session's keys itself (native TTL): this forgets expired
        sessions in every index (every session's, then each owner's), ``batch_size`` at a time.

        Returns:
            How many expired sessions were forgotten (entries of every session's index;
            ``on_batch`` is called with each batch of them).
        """
        self._check_open()
        size = validate_page_size(batch_size)
        client = self._clients.get()
        total = await self._clean(*_lua.index_keys(self.session_prefix, None), size, on_batch)
        head = f"{self.session_prefix}:owner-expiry:"
        pattern = f"{glob_escape(head)}{{*}}"
        async for raw in client.scan_iter(match=pattern, count=_SCAN_COUNT, _type="zset"):
            expiry = raw.decode() if isinstance(raw, bytes) else raw
            activity = f"{self.session_prefix}:owner:{expiry[len(head) :]}"
            await self._clean(activity, expiry, size)
        return total

    async def reindex(self) -> int:
        """Add every stored session that the indexes lack (one written by a version before the
        index of every session) to them: to every session's index and to its owner's.

        Walks the keyspace once (``list_sessions``); safe while sessions are written (an
        entry is added only where there is none, so a newer write's entry is kept).

        Returns:
            How many sessions were added to the index of every session.
        """
        self._check_open()
        client = self._clients.get()
        ids = await self.list_sessions()
        added = 0
        for start in range(0, len(ids), _PIPELINE_CHUNK):
            infos = await self._infos(ids[start : start + _PIPELINE_CHUNK])
            counted: list[bool] = []  # per command: an addition to the index of every session?
            async with client.pipeline(transaction=False) as pipe:
                for info in infos:
                    if info is None:  # deleted or expired since it was listed
                        continue
                    expires: float | str = (
                        "+inf" if info.expires_at is None else info.expires_at.timestamp() * 1000
                    )
                    for owner in (None, info.user_id) if info.user_id else (None,):
                        activity, expiry = _lua.index_keys(self.session_prefix, owner)
                        score = info.updated_at.timestamp()
                        pipe.zadd(activity, {info.session_id: score}, nx=True)
                        pipe.zadd(expiry, {info.session_id: expires}, nx=True)
                        counted.extend([owner is None, False])
                replies = await settled(pipe.execute())
            added += sum(int(r) for r, c in zip(replies, counted, strict=True) if c)
        return added

    async def iter_sessions(self, *, page_size: int = 500) -> AsyncIterator[SessionInfo]:
        """Every stored session, most recently updated first, from one walk of the keyspace
        (``page_size`` sessions read per pipeline)."""
        self._check_open()
        validate_page_size(page_size)
        infos = [info for info in await self._infos(await self.list_sessions()) if info]
        infos.sort(key=_newest_first)
        for info in infos:
            yield info

    async def existing_sessions(self, session_ids: Iterable[str]) -> set[str]:
        """Those of ``session_ids`` that are stored."""
        self._check_open()
        ids = [validate_session_id(i) for i in session_ids]
        return {info.session_id for info in await self._infos(ids) if info is not None}

    async def read_conversation(self, session_id: str) -> Conversation | None:
        """One whole conversation, read atomically (MULTI/EXEC); ``None`` if it is not stored."""
        self._check_open()
        session_key, messages_key = self._keys_of(validate_session_id(session_id))
        async with self._clients.get().pipeline(transaction=True) as pipe:
            pipe.hmget(session_key, [*_INFO_FIELDS, "forked_from", "fork_point"])
            pipe.lrange(messages_key, 0, -1)
            pipe.exists(session_key, messages_key)
            pipe.pexpiretime(session_key)
            fields, raw, exists, expires = await pipe.execute()
        if not exists:
            return None
        items = [decode_item(data) for data in raw]
        info = _info(session_id, fields[: len(_INFO_FIELDS)], len(items), expires)
        return Conversation.of(info, items, fork_origin_of(*fields[len(_INFO_FIELDS) :]))

    async def write_conversation(self, conversation: Conversation) -> None:
        """Store ``conversation`` whole with its timestamps and lifecycle (see
        :class:`Conversation`), replacing any session of the same id, atomically (MULTI/EXEC);
        the manager's ``default_ttl`` applies to one that carries no expiry. The session (and
        its owner's) indexes are updated in the same transaction on one Redis, right after it
        on a Redis Cluster."""
        self._check_open()
        checked, encoded, created, updated = conversation.prepared()
        session_id = checked.session_id
        keys = self._keys_of(session_id)
        stamp = _to_unix(updated)
        fields: dict[Any, Any] = {"created_at": _to_unix(created), "updated_at": stamp}
        stored = {"user_id": checked.user_id, "title": checked.title}
        stored["metadata"] = checked.metadata_json
        if checked.fork_origin is not None:
            stored["forked_from"] = checked.fork_origin.parent_id
            stored["fork_point"] = str(checked.fork_origin.fork_point.count)
        fields.update({name: value for name, value in stored.items() if value is not None})
        expires_ms = 0  # none
        if checked.expires_at is not None:
            expires_ms = round(checked.expires_at.timestamp() * 1000)
        elif self.default_ttl is not None:
            expires_ms = round((time.time() + self.default_ttl) * 1000)
        client = self._clients.get()
        inline = _lua.inline(client)
        indexes = [_lua.index_keys(self.session_prefix, None)]
        if checked.user_id is not None:
            indexes.append(_lua.index_keys(self.session_prefix, checked.user_id))
        async with client.pipeline(transaction=True) as pipe:
            pipe.eval(_lua.DROP_SOURCE, 2, *keys[::-1], self.session_prefix, session_id, "", inline)
            for start in range(0, len(encoded), _RPUSH_CHUNK):
                pipe.rpush(keys[1], *(item.json for item in encoded[start : start + _RPUSH_CHUNK]))
            pipe.hset(keys[0], mapping=fields)
            if expires_ms:
                for key in keys:
                    pipe.pexpireat(key, expires_ms)
            if inline == "1":  # one Redis: indexed in the same transaction
                for activity, expiry in indexes:
                    pipe.zadd(activity, {session_id: float(stamp)})
                    pipe.zadd(expiry, {session_id: expires_ms or "+inf"})
            replies = await pipe.execute()
        if inline == "0":  # the old session unindexed, then the new one indexed
            await _lua.dropped(client, self.session_prefix, session_id, replies[0])
            index: list[str | int] = [session_id, stamp, expires_ms]
            await settled(
                asyncio.gather(*(_lua.INDEX(client, list(pair), index) for pair in indexes))
            )


async def _read_infos(
    client: RedisClient, sessions: list[tuple[str, str, str]]
) -> list[SessionInfo | None]:
    """What is stored of each ``(session id, hash key, list key)`` (``None``: not stored), a
    pipeline per 500 sessions."""
    infos: list[SessionInfo | None] = []
    for start in range(0, len(sessions), _PIPELINE_CHUNK):
        chunk = sessions[start : start + _PIPELINE_CHUNK]
        async with client.pipeline(transaction=False) as pipe:
            for _, session_key, messages_key in chunk:
                pipe.hmget(session_key, list(_INFO_FIELDS))
                pipe.llen(messages_key)
                pipe.exists(session_key, messages_key)
                pipe.pexpiretime(session_key)
            replies = await settled(pipe.execute())
        for index, (session_id, _, _) in enumerate(chunk):
            fields, length, exists, expires = replies[4 * index : 4 * index + 4]
            infos.append(_info(session_id, fields, length, expires) if exists else None)
    return infos


_INFO_FIELDS = ("created_at", "updated_at", "user_id", "title", "metadata")


def _info(session_id: str, fields: list[Any], length: int, expires_ms: int) -> SessionInfo:
    """``expires_ms``: the hash's PEXPIRETIME (the server's absolute expiry, so two reads of
    one expiry agree; negative: none)."""
    created, updated, user_id, title, metadata = (
        value.decode() if isinstance(value, bytes) else value for value in fields
    )
    return SessionInfo(
        session_id,
        int(length),
        _from_unix(created),
        _from_unix(updated),
        user_id=user_id,
        title=title,
        metadata={} if metadata is None else orjson.loads(metadata),
        expires_at=None if expires_ms < 0 else datetime.fromtimestamp(expires_ms / 1000, UTC),
    )


def _matches(info: SessionInfo, metadata: dict[str, Any] | None) -> bool:
    """Whether ``info``'s metadata holds every key of the filter with an equal value (a bool
    never equals a number, as in JSON)."""
    for key, value in (metadata or {}).items():
        if key not in info.metadata:
            return False
        held = info.metadata[key]
        if held != value or isinstance(held, bool) != isinstance(value, bool):
            return False
    return True


def _flat(pairs: list[tuple[str, str]]) -> list[str]:
    return [value for pair in pairs for value in pair]


def _newest_first(info: SessionInfo) -> tuple[float, str]:
    return -info.updated_at.timestamp(), info.session_id


def _to_unix(value: datetime) -> str:
    return f"{value.timestamp():.6f}"  # the format of _now(): Unix seconds, microseconds


def _from_unix(value: bytes | str | None) -> datetime:
    """A stored Unix time as UTC (the epoch when the field is missing)."""
    return datetime.fromtimestamp(0.0 if value is None else float(value), UTC)
