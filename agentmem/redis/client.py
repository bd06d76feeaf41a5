"""What every Redis user in agentmem shares (:mod:`agentmem.redis.session` and
:mod:`agentmem.cache.session`).

- Keys: :func:`tagged_key` (``prefix:{session id}``, the id percent-encoded by
  :func:`encode_tag` so that the braces stay a Redis Cluster hash tag), :func:`decode_tag`,
  :func:`glob_escape`, :func:`validate_prefix`, :func:`validate_prefixes`.
- Expiry: :data:`TTL` and :func:`ttl_to_ms`.
- Lua: :class:`Script` (EVALSHA, then EVAL when the server lacks the script) and
  :data:`LUA_EXPIRE`, the expiry loop every script that writes a session's keys shares (given
  the keys to expire: a script's KEYS may hold a lock key after them).
- Clients agentmem owns: :class:`ConnectionOptions` (the six connection keywords),
  :class:`Connection` (a URL and its options, checked), one client per
  event loop (:class:`LoopClients`), shared by every session with the same URL and options
  (:data:`shared_clients`); :func:`connection_unless_given` checks a ``client=`` or a URL.
- :func:`settled`: awaits one redis-py call without losing a cancel (Python 3.11).
- The redis-py errors agentmem lets through (``RedisError``, ``RedisConnectionError``...).

Importing this module does not need redis-py; building a connection does.
"""

from __future__ import annotations

import asyncio
import hashlib
import select
import sys
import threading
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Final, TypeAlias, TypeVar, cast

from agentmem import _forks
from agentmem._deps import missing

# Without redis-py this module still imports (so do the backends built on it, and
# ``help(agentmem)``); building a connection or taking a client raises MissingDependencyError.
try:
    from redis.asyncio import BlockingConnectionPool, Redis, RedisCluster
    from redis.asyncio.connection import (
        AbstractConnection,
        SSLConnection,
        UnixDomainSocketConnection,
        parse_url,
    )
    from redis.asyncio.connection import Connection as _RedisConnection
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import NoScriptError, OutOfMemoryError, RedisError, ResponseError
    from redis.exceptions import TimeoutError as RedisTimeoutError
except ImportError:
    _REDIS_INSTALLED = False
else:
    _REDIS_INSTALLED = True


if TYPE_CHECKING:
    RedisClient: TypeAlias = "Redis | RedisCluster"
    """A client of one Redis server or of a Redis Cluster."""


def _require_redis() -> None:
    if not _REDIS_INSTALLED:
        raise missing("redis", "redis")


__all__ = [
    "DEFAULT_URL",
    "LUA_EXPIRE",
    "TTL",
    "Connection",
    "ConnectionOptions",
    "LoopClients",
    "OutOfMemoryError",
    "Redis",
    "RedisCluster",
    "RedisConnectionError",
    "RedisError",
    "RedisTimeoutError",
    "ResponseError",
    "Script",
    "SharedClients",
    "connection_unless_given",
    "decode_tag",
    "encode_tag",
    "glob_escape",
    "settled",
    "shared_clients",
    "tagged_key",
    "ttl_to_ms",
    "validate_prefix",
    "validate_prefixes",
]

DEFAULT_URL: Final = "redis://localhost:6379"

CLUSTER_SCHEMES: Final = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
"""URL schemes naming a node of a Redis Cluster, and the scheme redis-py knows them by."""

TTL = int | timedelta
"""Seconds (``int``) or a ``timedelta``."""


T = TypeVar("T")

# Python 3.11's asyncio.wait_for, under which redis-py sends every command, returns the result
# instead of raising when a cancel arrives as the command completes (CPython gh-86296).
_WAIT_FOR_LOSES_CANCELS: Final = sys.version_info < (3, 12)


async def settled(call: Awaitable[T]) -> T:
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


class Script:
    """A Lua script run with EVALSHA, and with EVAL when the server does not know it yet."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    async def __call__(
        self, client: RedisClient, keys: Sequence[str], args: Sequence[str | int | bytes]
    ) -> Any:
        try:
            return await client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            return await client.eval(self.source, len(keys), *keys, *args)


LUA_EXPIRE: Final = """
-- expire(keys, ttl): set each of keys (a session's own, named by the caller: never a lock key)
-- to expire in ttl ms, or to never expire when ttl is 0 (a missing key is left missing).
local function expire(keys, ttl)
  for _, key in ipairs(keys) do
    if ttl > 0 then redis.call('PEXPIRE', key, ttl) else redis.call('PERSIST', key) end
  end
end
"""
"""A Lua function ``expire(keys, ttl)`` for scripts to start with (after any ``#!lua`` line):
the one expiry loop of every script that writes a session's keys."""


# --- keys --------------------------------------------------------------------------------------


def encode_tag(session_id: str) -> str:
    """``session_id`` with ``%``, ``{`` and ``}`` percent-encoded: usable as a hash tag."""
    # No braces inside keeps the tag a tag; encoding '%' too keeps the mapping one-to-one.
    return session_id.replace("%", "%25").replace("{", "%7B").replace("}", "%7D")


def decode_tag(tag: str) -> str:
    """The session id that :func:`encode_tag` turned into ``tag``."""
    return tag.replace("%7D", "}").replace("%7B", "{").replace("%25", "%")


def glob_escape(text: str) -> str:
    """``text`` matched literally in a SCAN ``MATCH`` pattern."""
    return "".join("\\" + c if c in "\\*?[]" else c for c in text)


def validate_prefix(name: str, prefix: object) -> str:
    """``prefix`` (the argument ``name``), checked: a non-empty str without braces.

    Raises:
        TypeError, ValueError: it is not.
    """
    if not isinstance(prefix, str):
        raise TypeError(f"{name} must be a str, got {type(prefix).__name__}")
    if not prefix:
        raise ValueError(f"{name} must not be empty")
    if "{" in prefix or "}" in prefix:
        raise ValueError(f"{name} must not contain '{{' or '}}' (they delimit the hash tag)")
    return prefix


def validate_prefixes(session_prefix: object, messages_prefix: object) -> tuple[str, str]:
    """Both prefixes of a Redis session, checked as :func:`validate_prefix` does, and distinct."""
    session_prefix = validate_prefix("session_prefix", session_prefix)
    messages_prefix = validate_prefix("messages_prefix", messages_prefix)
    if session_prefix == messages_prefix:
        raise ValueError("session_prefix and messages_prefix must differ")
    return session_prefix, messages_prefix


def tagged_key(prefix: str, session_id: str) -> str:
    """``prefix:{session_id}``: every key of one session shares its hash tag (one slot)."""
    return f"{prefix}:{{{encode_tag(session_id)}}}"


def ttl_to_ms(ttl: object, name: str = "ttl") -> int:
    """``ttl`` (seconds, a ``timedelta`` or ``None``) in milliseconds; 0 means no expiry.

    Raises:
        TypeError, ValueError: a bad ``ttl`` (named ``name`` in the message).
    """
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


@dataclass(frozen=True)
class ConnectionOptions:
    """The six connection keywords of every agentmem Redis user, in one place (each public
    signature keeps its own defaults): see :class:`agentmem.RedisSession` for their meaning;
    ``extra_options`` are further redis-py connection options (password, ssl_*, ...)."""

    redis_url: str
    db: int | None
    max_connections: int
    socket_timeout: float | None
    socket_connect_timeout: float | None
    pool_timeout: float | None
    extra_options: dict[str, Any] | None = None


class Connection:
    """How to reach one Redis: a URL plus connection options, checked up front."""

    def __init__(self, options: ConnectionOptions) -> None:
        _require_redis()
        redis_url, db, max_connections = options.redis_url, options.db, options.max_connections
        if not isinstance(redis_url, str):
            raise TypeError(f"redis_url must be a str, got {type(redis_url).__name__}")
        scheme, sep, rest = redis_url.partition("://")
        self.cluster = sep != "" and scheme in CLUSTER_SCHEMES
        url = f"{CLUSTER_SCHEMES[scheme]}://{rest}" if self.cluster else redis_url
        url_db = parse_url(url).get("db")
        if db is not None and url_db is not None and db != url_db:
            raise ValueError(f"db={db} contradicts the database {url_db} named in redis_url")
        if self.cluster and (db or url_db):
            raise ValueError("a Redis Cluster has only database 0")
        if not isinstance(max_connections, int) or max_connections < 1:
            raise ValueError(f"max_connections must be a positive int, got {max_connections!r}")
        self.url = redis_url
        self._client_url = url
        self.options: dict[str, Any] = {
            **(options.extra_options or {}),
            "db": db or 0,
            "max_connections": max_connections,
            "timeout": options.pool_timeout,
            "socket_timeout": options.socket_timeout,
            "socket_connect_timeout": options.socket_connect_timeout,
        }

    @property
    def key(self) -> tuple[str, str]:
        """What two connections to the same Redis with the same options share."""
        return self.url, repr(sorted(self.options.items()))

    def build(self) -> RedisClient:
        """A new client on a new blocking pool, or a new cluster client (for the running event
        loop)."""
        # No automatic retries: a write whose reply was lost could otherwise be applied twice
        # (or a pop lose an item), so the error goes to the caller.
        if self.cluster:
            options = dict(self.options)
            del options["db"]
            pool_timeout = options.pop("timeout")
            cluster = _QueueingCluster.from_url(
                self._client_url, retry=Retry(NoBackoff(), 0), **options
            )
            assert isinstance(cluster, _QueueingCluster)
            cluster.queue(options["max_connections"], pool_timeout)
            # Before any connection opens: every node's connections check for a server close.
            nodes = cluster.nodes_manager
            checked = _CHECKED[nodes.connection_kwargs["connection_class"]]
            nodes.connection_kwargs["connection_class"] = checked
            for node in nodes.startup_nodes.values():
                node.connection_class = cast("type[_RedisConnection]", checked)
            return cluster
        # A blocking pool queues callers when every connection is busy, where the default pool
        # raises MaxConnectionsError.
        pool = BlockingConnectionPool.from_url(
            self.url,
            retry=Retry(NoBackoff(), 0),
            connection_class=_CHECKED[
                parse_url(self.url).get("connection_class", _RedisConnection)
            ],
            **self.options,
        )
        return Redis.from_pool(pool)


# poll() flags of a socket the other end closed or reset (POLLRDHUP: Linux only).
_HUNG_UP: Final = sum(getattr(select, flag, 0) for flag in ("POLLHUP", "POLLERR", "POLLRDHUP"))


if _REDIS_INSTALLED:

    class _PeerChecked(AbstractConnection):
        """A connection that, before each command, drops its socket if the server has closed it
        (``CLIENT KILL``, ``timeout``, a restart): the command then goes out on a new
        connection instead of failing on the dead one.

        The server closed it before the command was sent, so the command was never run: this
        is safe for writes too. (redis-py checks a pooled connection only through the event
        loop's view of the socket, which may not have seen the close yet; this asks the
        kernel.)
        """

        async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
            if self.is_connected and _closed_by_peer(self._writer):
                await self.disconnect()
            await super().send_packed_command(command, check_health)

    class _CheckedConnection(_PeerChecked, _RedisConnection):
        pass

    class _CheckedSSLConnection(_PeerChecked, SSLConnection):
        pass

    class _CheckedUnixConnection(_PeerChecked, UnixDomainSocketConnection):
        pass

    _CHECKED: dict[type[AbstractConnection], type[AbstractConnection]] = {
        _RedisConnection: _CheckedConnection,
        SSLConnection: _CheckedSSLConnection,
        UnixDomainSocketConnection: _CheckedUnixConnection,
    }

    def _closed_by_peer(writer: Any) -> bool:
        """Whether the kernel reports the connection closed (or reset) by the other end."""
        sock = writer.transport.get_extra_info("socket")
        if sock is None or not hasattr(select, "poll"):
            return False
        poller = select.poll()
        poller.register(sock.fileno(), _HUNG_UP)
        return bool(poller.poll(0))

    class _QueueingCluster(RedisCluster):
        """A ``RedisCluster`` whose callers wait for a free connection, as on a blocking pool.

        redis-py's cluster client raises ``MaxConnectionsError`` when a node's connections are
        all busy; here at most ``max_connections`` commands are under way at once (so never more
        than that many connections to a node), and callers beyond wait up to ``pool_timeout``.
        """

        _slots: asyncio.Semaphore | None = None
        _pool_timeout: float | None = None

        def queue(self, max_connections: int, pool_timeout: float | None) -> None:
            self._slots = asyncio.Semaphore(max_connections)
            self._pool_timeout = pool_timeout

        async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
            # Learn the topology before the command, under redis-py's lock (a no-op once
            # known): commands that begin while it is unknown would each discover it, closing
            # one another's connections.
            await self.initialize()
            if self._slots is None:
                return await super().execute_command(*args, **kwargs)
            try:
                async with asyncio.timeout(self._pool_timeout):
                    await self._slots.acquire()
            except TimeoutError:
                raise RedisConnectionError(
                    f"no free Redis Cluster connection within {self._pool_timeout} s"
                ) from None
            try:
                return await super().execute_command(*args, **kwargs)
            finally:
                self._slots.release()


def connection_unless_given(client: object, options: ConnectionOptions) -> Connection | None:
    """How to connect when no ``client`` was given (``None`` when one was); checks both.

    Raises:
        TypeError: ``client`` is not a ``redis.asyncio.Redis``.
        MissingDependencyError: redis-py is not installed.
    """
    _require_redis()
    if client is not None:
        if not isinstance(client, Redis | RedisCluster):
            raise TypeError(
                f"client must be a redis.asyncio.Redis or RedisCluster, got {type(client).__name__}"
            )
        return None
    return Connection(options)


class LoopClients:
    """One client per event loop: redis.asyncio connections belong to the loop that opened them.

    Threads (each with its own loop) share it: a lock guards the mapping, never across an await.
    A forked child starts without clients: it never uses the parent's pooled sockets.
    """

    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        self._lock = threading.Lock()
        self._clients: dict[asyncio.AbstractEventLoop, RedisClient] = {}
        _forks.reset_in_child(self)

    def get(self) -> RedisClient:
        """The running event loop's client, built on first use."""
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
        """Close the clients (those of other, finished loops are dropped unawaited)."""
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
        _forks.keep(self._clients)
        self._clients = {}


class SharedClients:
    """Clients of sessions built from a URL: shared by every session with the same URL and
    options, closed when the last of them closes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[tuple[str, str], tuple[LoopClients, int]] = {}
        _forks.reset_in_child(self)

    def acquire(self, connection: Connection) -> LoopClients:
        """The clients of ``connection``, counted once more."""
        with self._lock:
            clients, refs = self._entries.get(connection.key, (None, 0))
            if clients is None:
                clients = LoopClients(connection)
            self._entries[connection.key] = (clients, refs + 1)
            return clients

    async def release(self, connection: Connection) -> None:
        """Count one user less; the last one closes the clients."""
        with self._lock:
            clients, refs = self._entries[connection.key]
            if refs > 1:
                self._entries[connection.key] = (clients, refs - 1)
                return
            del self._entries[connection.key]
        await clients.aclose()

    def after_fork(self) -> None:
        self._lock = threading.Lock()


shared_clients = SharedClients()
"""The clients of every session built from a URL in this process."""
