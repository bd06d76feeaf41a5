"""What the Redis backends share: hash-tagged keys, TTLs, Lua scripts, and the clients they own
(one blocking pool per URL, options and event loop)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
import threading
import weakref
from collections.abc import Awaitable, Sequence
from datetime import timedelta
from typing import Any, Final, TypeVar

from agentmem._deps import missing

# Without redis-py this module still imports (so do the backends built on it, and
# ``help(agentmem)``); building a connection or taking a client raises MissingDependencyError.
try:
    from redis.asyncio import BlockingConnectionPool, Redis
    from redis.asyncio.connection import parse_url
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import NoScriptError, OutOfMemoryError, RedisError
    from redis.exceptions import TimeoutError as RedisTimeoutError
except ImportError:
    _REDIS_INSTALLED = False
else:
    _REDIS_INSTALLED = True


def _require_redis() -> None:
    if not _REDIS_INSTALLED:
        raise missing("redis", "redis")


__all__ = [
    "DEFAULT_URL",
    "TTL",
    "Redis",
    "OutOfMemoryError",
    "RedisConnectionError",
    "RedisError",
    "RedisTimeoutError",
    "_Connection",
    "_connection_unless_given",
    "_LoopClients",
    "_Script",
    "_SharedClients",
    "_decode_tag",
    "_encode_tag",
    "_glob_escape",
    "_key",
    "_settled",
    "_shared",
    "_ttl_ms",
    "_validate_prefix",
    "_validate_prefixes",
]

DEFAULT_URL: Final = "redis://localhost:6379"

TTL = int | timedelta
"""Seconds (``int``) or a ``timedelta``."""


T = TypeVar("T")

# Python 3.11's asyncio.wait_for, under which redis-py sends every command, returns the result
# instead of raising when a cancel arrives as the command completes (CPython gh-86296).
_WAIT_FOR_LOSES_CANCELS: Final = sys.version_info < (3, 12)


async def _settled(call: Awaitable[T]) -> T:
    """Await one redis-py call; a cancel of the calling task that arrived during it and was
    swallowed (Python 3.11) is raised as ``CancelledError`` once the call is over."""
    task = asyncio.current_task() if _WAIT_FOR_LOSES_CANCELS else None
    if task is None:
        return await call
    before = task.cancelling()
    try:
        result = await call
    except asyncio.CancelledError:
        raise
    except BaseException as exc:
        if task.cancelling() > before:
            raise asyncio.CancelledError from exc
        raise
    if task.cancelling() > before:
        raise asyncio.CancelledError
    return result


class _Script:
    """A Lua script run with EVALSHA, and with EVAL when the server does not know it yet."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    async def __call__(self, client: Redis, keys: Sequence[str], args: Sequence[str | int]) -> Any:
        try:
            return await client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            return await client.eval(self.source, len(keys), *keys, *args)


# --- keys --------------------------------------------------------------------------------------


def _encode_tag(session_id: str) -> str:
    # No braces inside keeps the tag a tag; encoding '%' too keeps the mapping one-to-one.
    return session_id.replace("%", "%25").replace("{", "%7B").replace("}", "%7D")


def _decode_tag(tag: str) -> str:
    return tag.replace("%7D", "}").replace("%7B", "{").replace("%25", "%")


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "\\*?[]" else c for c in text)


def _validate_prefix(name: str, prefix: object) -> str:
    if not isinstance(prefix, str):
        raise TypeError(f"{name} must be a str, got {type(prefix).__name__}")
    if not prefix:
        raise ValueError(f"{name} must not be empty")
    if "{" in prefix or "}" in prefix:
        raise ValueError(f"{name} must not contain '{{' or '}}' (they delimit the hash tag)")
    return prefix


def _validate_prefixes(session_prefix: object, messages_prefix: object) -> tuple[str, str]:
    session_prefix = _validate_prefix("session_prefix", session_prefix)
    messages_prefix = _validate_prefix("messages_prefix", messages_prefix)
    if session_prefix == messages_prefix:
        raise ValueError("session_prefix and messages_prefix must differ")
    return session_prefix, messages_prefix


def _key(prefix: str, session_id: str) -> str:
    return f"{prefix}:{{{_encode_tag(session_id)}}}"


def _ttl_ms(ttl: object, name: str = "ttl") -> int:
    """``ttl`` in milliseconds; 0 means no expiry."""
    if ttl is None:
        return 0
    if isinstance(ttl, timedelta):
        ms = ttl // timedelta(milliseconds=1)
    elif isinstance(ttl, int) and not isinstance(ttl, bool):
        ms = ttl * 1000
    else:
        raise TypeError(f"{name} must be an int (seconds), a timedelta or None")
    if ms <= 0:
        raise ValueError(f"{name} must be at least one millisecond, got {ttl!r}")
    return ms


# --- clients -----------------------------------------------------------------------------------


class _Connection:
    """How to reach one Redis: a URL plus connection options, checked up front."""

    def __init__(
        self,
        redis_url: str,
        db: int | None,
        *,
        max_connections: int,
        socket_timeout: float | None,
        socket_connect_timeout: float | None,
        pool_timeout: float | None,
        extra_options: dict[str, Any] | None = None,
    ) -> None:
        _require_redis()
        if not isinstance(redis_url, str):
            raise TypeError(f"redis_url must be a str, got {type(redis_url).__name__}")
        url_db = parse_url(redis_url).get("db")
        if db is not None and url_db is not None and db != url_db:
            raise ValueError(f"db={db} contradicts the database {url_db} named in redis_url")
        if not isinstance(max_connections, int) or max_connections < 1:
            raise ValueError(f"max_connections must be a positive int, got {max_connections!r}")
        self.url = redis_url
        self.options: dict[str, Any] = {
            **(extra_options or {}),  # redis-py connection options (password, ssl_*, ...)
            "db": db or 0,
            "max_connections": max_connections,
            "timeout": pool_timeout,
            "socket_timeout": socket_timeout,
            "socket_connect_timeout": socket_connect_timeout,
        }

    @property
    def key(self) -> tuple[str, str]:
        return self.url, repr(sorted(self.options.items()))

    def build(self) -> Redis:
        # A blocking pool queues callers when every connection is busy, where the default pool
        # raises MaxConnectionsError. No automatic retries: a write whose reply was lost could
        # otherwise be applied twice (or a pop lose an item), so the error goes to the caller.
        pool = BlockingConnectionPool.from_url(
            self.url, retry=Retry(NoBackoff(), 0), **self.options
        )
        return Redis.from_pool(pool)


def _connection_unless_given(
    client: object,
    redis_url: str,
    db: int | None,
    *,
    max_connections: int,
    socket_timeout: float | None,
    socket_connect_timeout: float | None,
    pool_timeout: float | None,
    extra_options: dict[str, Any] | None = None,
) -> _Connection | None:
    """How to connect when no ``client`` was given (``None`` when one was); checks both.

    Raises:
        MissingDependencyError: redis-py is not installed.
    """
    _require_redis()
    if client is not None:
        if not isinstance(client, Redis):
            raise TypeError(f"client must be a redis.asyncio.Redis, got {type(client).__name__}")
        return None
    return _Connection(
        redis_url,
        db,
        max_connections=max_connections,
        socket_timeout=socket_timeout,
        socket_connect_timeout=socket_connect_timeout,
        pool_timeout=pool_timeout,
        extra_options=extra_options,
    )


class _LoopClients:
    """One client per event loop: redis.asyncio connections belong to the loop that opened them.

    Threads (each with its own loop) share it: a lock guards the mapping, never across an await.
    A forked child starts without clients: it never uses the parent's pooled sockets.
    """

    def __init__(self, connection: _Connection) -> None:
        self._connection = connection
        self._lock = threading.Lock()
        self._clients: dict[asyncio.AbstractEventLoop, Redis] = {}
        _all_loop_clients.add(self)

    def get(self) -> Redis:
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            with self._lock:
                client = self._clients.get(loop)
                if client is None:
                    for stale in [other for other in self._clients if other.is_closed()]:
                        del self._clients[stale]
                    client = self._clients[loop] = self._connection.build()
        return client

    async def aclose(self) -> None:
        with self._lock:
            clients, self._clients = self._clients, {}
        loop = asyncio.get_running_loop()
        for client_loop, client in clients.items():
            # A client of another (finished) loop cannot be awaited from here; its sockets go
            # with it.
            if client_loop is loop:
                await client.aclose()

    def after_fork(self) -> None:
        """In a forked child: the parent's clients stay referenced (so that no finalizer closes
        the parent's sockets from here) and are never used again."""
        self._lock = threading.Lock()
        _inherited.append(self._clients)
        self._clients = {}


class _SharedClients:
    """Clients of sessions built from a URL: shared by every session with the same URL and
    options, closed when the last of them closes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[tuple[str, str], tuple[_LoopClients, int]] = {}

    def acquire(self, connection: _Connection) -> _LoopClients:
        with self._lock:
            clients, refs = self._entries.get(connection.key, (None, 0))
            if clients is None:
                clients = _LoopClients(connection)
            self._entries[connection.key] = (clients, refs + 1)
            return clients

    async def release(self, connection: _Connection) -> None:
        with self._lock:
            clients, refs = self._entries[connection.key]
            if refs > 1:
                self._entries[connection.key] = (clients, refs - 1)
                return
            del self._entries[connection.key]
        await clients.aclose()

    def after_fork(self) -> None:
        self._lock = threading.Lock()


_all_loop_clients: weakref.WeakSet[_LoopClients] = weakref.WeakSet()
_inherited: list[Any] = []


_shared = _SharedClients()


def _after_fork_in_child() -> None:
    _shared.after_fork()
    for clients in list(_all_loop_clients):
        clients.after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)
