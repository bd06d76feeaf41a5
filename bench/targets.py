"""The benchmark's targets: agentmem's sessions, the OpenAI Agents SDK's, raw-driver floors.

Every target hands out session objects with the four history operations through ``make()``; the
workloads call nothing else. A target owns its database (a file, a PostgreSQL table set, a Redis
key space) for the whole run and releases it in ``stop()``.

The floors do the four operations as thinly as each driver allows: one thread hop and one
transaction per operation on SQLite, one statement (one round trip) per operation on PostgreSQL,
one command per operation on Redis, JSON through orjson.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from queue import SimpleQueue
from typing import Any, Protocol, TypeVar

import orjson

_T = TypeVar("_T")

# The same pool sizes for every target of a server, so that no target queues more than another.
POSTGRES_POOL_SIZE = 10
REDIS_POOL_SIZE = 50


class BenchSession(Protocol):
    async def get_items(self, limit: int | None = None) -> list[Any]: ...

    async def add_items(self, items: list[Any]) -> None: ...

    async def pop_item(self) -> Any | None: ...

    async def clear_session(self) -> None: ...


@dataclass(frozen=True)
class Env:
    """What the run shares with its targets: a scratch directory and the servers' URLs."""

    tag: str  # unique per run: names the PostgreSQL database, is part of every Redis key
    workdir: Path
    postgres_url: str  # postgresql://... of the run's own database
    redis_url: str


class Target(ABC):
    """One implementation on one database."""

    kind: str  # "agentmem", "sdk", "floor" or "bound"
    backend: str  # "sqlite-memory", "sqlite-file", "sqlalchemy-sqlite", "postgres", "redis", ...
    family: str  # the server the target needs, for --targets: "sqlite", "postgres", "redis"

    @property
    def name(self) -> str:
        return f"{self.kind}/{self.backend}"

    @abstractmethod
    async def start(self, env: Env) -> None:
        """Open the database and create the schema. ImportError means "not available"."""

    @abstractmethod
    async def make(self, session_id: str) -> BenchSession: ...

    @abstractmethod
    async def release(self, session: BenchSession) -> None:
        """Close what ``make`` opened for ``session``."""

    @abstractmethod
    async def stop(self) -> None: ...


# --- agentmem --------------------------------------------------------------------------------


class Agentmem(Target):
    """An agentmem backend, opened through the tests' registry of backends (tests/_backends.py):
    one engine and one Redis client shared by every session of the run."""

    kind = "agentmem"

    def __init__(self, backend: str, family: str) -> None:
        self.backend, self.family = backend, family

    async def start(self, env: Env) -> None:
        from agentmem.migrate import upgrade
        from tests._backends import Backend

        stores = {
            "sqlite-memory": Backend("sqlite-memory"),
            "sqlite-file": Backend("sqlite-file", str(env.workdir / "agentmem.db")),
            "sqlalchemy-sqlite": Backend(
                "sqlalchemy-sqlite", str(env.workdir / "agentmem-sqlalchemy.db")
            ),
            "postgres": Backend("postgres", env.postgres_url, pool_size=POSTGRES_POOL_SIZE),
            "redis": Backend("redis", redis_url=env.redis_url),
            # Its own tables: the session ids of a run are the same for every target.
            "cached": Backend(
                "cached",
                env.postgres_url,
                env.redis_url,
                prefix=env.tag,
                pool_size=POSTGRES_POOL_SIZE,
                table_prefix="cached_",
            ),
        }
        self._store = stores[self.backend]
        self._engine = self._store.create_engine() if self._store.uses_engine else None
        if self._engine is not None:
            await upgrade(self._engine, table_prefix=self._store.table_prefix)
        needs_redis = self.backend in ("redis", "cached")
        self._client = _redis_client(env) if needs_redis else None

    async def make(self, session_id: str) -> BenchSession:
        return self._store.open(session_id, engine=self._engine, client=self._client)

    async def release(self, session: BenchSession) -> None:
        await session.close()  # type: ignore[attr-defined]

    async def stop(self) -> None:
        if self._client is not None:
            await self._client.aclose()
        if self._engine is not None:
            await self._engine.dispose()


class AgentmemEncrypted(Target):
    """EncryptedSession (AES-256-GCM per item) around agentmem's session on one backend, in a
    store of its own (a file, a table prefix, a Redis key prefix)."""

    kind = "agentmem"
    INNER_BACKENDS = ("sqlite-file", "postgres", "redis")

    def __init__(self, inner_backend: str) -> None:
        self.inner_backend = inner_backend
        self.backend = f"enc-{inner_backend}"
        self.family = "sqlite" if inner_backend == "sqlite-file" else inner_backend

    async def start(self, env: Env) -> None:
        from agentmem import EncryptedSession
        from agentmem.wrappers import generate_key

        self._wrap = EncryptedSession
        self._keys = {"bench": generate_key()}
        if self.inner_backend == "sqlite-file":
            from agentmem import SQLiteSession

            path = str(env.workdir / "agentmem-encrypted.db")
            self._inner: Callable[[str], Any] = lambda sid: SQLiteSession(sid, db_path=path)
        elif self.inner_backend == "postgres":
            from agentmem import SQLAlchemySession
            from agentmem.migrate import upgrade

            self._engine = _engine(env, True, "")
            await upgrade(self._engine, table_prefix="enc_")
            engine = self._engine
            self._inner = lambda sid: SQLAlchemySession(engine, sid, table_prefix="enc_")
        else:
            from agentmem import RedisSession

            self._client = client = _redis_client(env)
            self._inner = lambda sid: RedisSession(
                sid, client=client, session_prefix="enc:session", messages_prefix="enc:messages"
            )

    async def make(self, session_id: str) -> BenchSession:
        return self._wrap(self._inner(session_id), keys=self._keys, current="bench")

    async def release(self, session: BenchSession) -> None:
        await session.close()  # type: ignore[attr-defined]

    async def stop(self) -> None:
        if self.inner_backend == "postgres":
            await self._engine.dispose()
        elif self.inner_backend == "redis":
            await self._client.aclose()


# --- OpenAI Agents SDK -------------------------------------------------------------------------


class SdkSQLite(Target):
    kind, family = "sdk", "sqlite"

    def __init__(self, on_file: bool) -> None:
        self.backend = "sqlite-file" if on_file else "sqlite-memory"
        self._on_file = on_file

    async def start(self, env: Env) -> None:
        from agents.memory import SQLiteSession

        self._cls = SQLiteSession
        self._path = str(env.workdir / "sdk.db") if self._on_file else ":memory:"

    async def make(self, session_id: str) -> BenchSession:
        return self._cls(session_id, db_path=self._path)

    async def release(self, session: BenchSession) -> None:
        session.close()  # type: ignore[attr-defined]

    async def stop(self) -> None:
        pass


class SdkSQLAlchemy(Target):
    kind = "sdk"

    def __init__(self, on_postgres: bool) -> None:
        self.backend = "postgres" if on_postgres else "sqlalchemy-sqlite"
        self.family = "postgres" if on_postgres else "sqlite"
        self._on_postgres = on_postgres

    async def start(self, env: Env) -> None:
        from agents.extensions.memory.sqlalchemy_session import SQLAlchemySession

        self._cls = SQLAlchemySession
        self._engine = _engine(env, self._on_postgres, "sdk-sqlalchemy.db")
        # Tables are created once here, as a deployment would; sessions then skip the check.
        await SQLAlchemySession("setup", engine=self._engine, create_tables=True).get_items()

    async def make(self, session_id: str) -> BenchSession:
        return self._cls(session_id, engine=self._engine)

    async def release(self, session: BenchSession) -> None:
        pass  # the SDK's SQLAlchemySession holds nothing of its own

    async def stop(self) -> None:
        await self._engine.dispose()


class SdkRedis(Target):
    kind, backend, family = "sdk", "redis", "redis"

    async def start(self, env: Env) -> None:
        from agents.extensions.memory.redis_session import RedisSession

        self._cls = RedisSession
        self._client = _redis_client(env)
        self._prefix = f"{env.tag}:sdk"

    async def make(self, session_id: str) -> BenchSession:
        return self._cls(session_id, redis_client=self._client, key_prefix=self._prefix)

    async def release(self, session: BenchSession) -> None:
        await session.close()  # type: ignore[attr-defined]

    async def stop(self) -> None:
        await self._client.aclose()


# --- raw-driver floors -------------------------------------------------------------------------


class _Hop:
    """One thread that runs the calls queued to it, in order, each call's outcome set in the
    event loop through ``call_soon_threadsafe``: the hop agentmem's ``SQLiteSession`` makes to
    its database's thread (agentmem/sql/sqlite.py), without its cancel handling."""

    def __init__(self) -> None:
        self._queue: SimpleQueue[Callable[[], None] | None] = SimpleQueue()
        threading.Thread(target=self._serve, name="bench-sqlite", daemon=True).start()

    def _serve(self) -> None:
        while (job := self._queue.get()) is not None:
            job()

    async def run(self, fn: Callable[..., _T], *args: Any) -> _T:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[_T] = loop.create_future()

        def job() -> None:
            try:
                result = fn(*args)
            except BaseException as exc:
                loop.call_soon_threadsafe(future.set_exception, exc)
            else:
                loop.call_soon_threadsafe(future.set_result, result)

        self._queue.put(job)
        return await future

    def stop(self) -> None:
        self._queue.put(None)


class _FloorSession:
    """A session id bound to a floor store: the store does the work."""

    __slots__ = ("_id", "_store")

    def __init__(self, store: _FloorStore, session_id: str) -> None:
        self._store = store
        self._id = session_id

    async def get_items(self, limit: int | None = None) -> list[Any]:
        return await self._store.get(self._id, limit)

    async def add_items(self, items: list[Any]) -> None:
        await self._store.add(self._id, items)

    async def pop_item(self) -> Any | None:
        return await self._store.pop(self._id)

    async def clear_session(self) -> None:
        await self._store.clear(self._id)


class _FloorStore(Target):
    kind = "floor"

    async def make(self, session_id: str) -> BenchSession:
        return _FloorSession(self, session_id)

    async def release(self, session: BenchSession) -> None:
        pass

    @abstractmethod
    async def get(self, session_id: str, limit: int | None) -> list[Any]: ...

    @abstractmethod
    async def add(self, session_id: str, items: list[Any]) -> None: ...

    @abstractmethod
    async def pop(self, session_id: str) -> Any | None: ...

    @abstractmethod
    async def clear(self, session_id: str) -> None: ...


_SQLITE_SCHEMA = (
    "CREATE TABLE messages (id INTEGER PRIMARY KEY, session_id TEXT NOT NULL, "
    "message_data TEXT NOT NULL)",
    "CREATE INDEX messages_session ON messages (session_id, id)",
)


class SQLiteFloor(_FloorStore):
    """sqlite3, one transaction per operation. On a file the connection is owned by one thread,
    one hop per operation (``_Hop``, as agentmem's SQLiteSession; aiosqlite hops once per
    statement); in memory the operations run inline."""

    family = "sqlite"

    def __init__(self, on_file: bool) -> None:
        self.backend = "sqlite-file" if on_file else "sqlite-memory"
        self._on_file = on_file

    async def start(self, env: Env) -> None:
        self._thread = _Hop()
        path = str(env.workdir / "floor.db") if self._on_file else ":memory:"
        self._conn = await self._run(
            lambda: sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        )
        await self._run(self._create_schema)

    def _create_schema(self) -> None:
        if self._on_file:  # the durability agentmem's SQLiteSession has
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
        for statement in _SQLITE_SCHEMA:
            self._conn.execute(statement)

    async def _run(self, fn: Callable[[], _T]) -> _T:
        if not self._on_file:  # never waits on I/O or a lock: inline is cheaper than a hop
            return fn()
        return await self._thread.run(fn)

    async def get(self, session_id: str, limit: int | None) -> list[Any]:
        if limit is None:
            rows = await self._run(
                lambda: self._conn.execute(
                    "SELECT message_data FROM messages WHERE session_id = ? ORDER BY id",
                    (session_id,),
                ).fetchall()
            )
            return [orjson.loads(row[0]) for row in rows]
        rows = await self._run(
            lambda: self._conn.execute(
                "SELECT message_data FROM messages WHERE session_id = ? ORDER BY id DESC LIMIT ?",
                (session_id, limit),
            ).fetchall()
        )
        return [orjson.loads(row[0]) for row in reversed(rows)]

    async def add(self, session_id: str, items: list[Any]) -> None:
        rows = [(session_id, orjson.dumps(item).decode()) for item in items]

        def insert() -> None:
            self._conn.execute("BEGIN")
            try:
                self._conn.executemany(
                    "INSERT INTO messages (session_id, message_data) VALUES (?, ?)", rows
                )
            except BaseException:
                self._conn.rollback()
                raise
            self._conn.commit()

        await self._run(insert)

    async def pop(self, session_id: str) -> Any | None:
        row = await self._run(
            lambda: self._conn.execute(
                "DELETE FROM messages WHERE id = (SELECT id FROM messages WHERE session_id = ? "
                "ORDER BY id DESC LIMIT 1) RETURNING message_data",
                (session_id,),
            ).fetchone()
        )
        return None if row is None else orjson.loads(row[0])

    async def clear(self, session_id: str) -> None:
        await self._run(
            lambda: self._conn.execute("DELETE FROM messages WHERE session_id = ?", (session_id,))
        )

    async def stop(self) -> None:
        await self._run(self._conn.close)
        self._thread.stop()


class PostgresFloor(_FloorStore):
    """asyncpg pool, one statement (one round trip, one transaction) per operation. The pool's
    reset on release is skipped: it would be a second round trip per call."""

    backend, family = "postgres", "postgres"

    async def start(self, env: Env) -> None:
        import asyncpg

        self._pool = await asyncpg.create_pool(
            env.postgres_url,
            min_size=POSTGRES_POOL_SIZE,
            max_size=POSTGRES_POOL_SIZE,
            reset=_no_reset,
        )
        await self._pool.execute(
            "CREATE TABLE floor_messages (id bigserial PRIMARY KEY, session_id text NOT NULL, "
            "message_data text NOT NULL);"
            "CREATE INDEX floor_messages_session ON floor_messages (session_id, id)"
        )

    async def get(self, session_id: str, limit: int | None) -> list[Any]:
        if limit is None:
            rows = await self._pool.fetch(
                "SELECT message_data FROM floor_messages WHERE session_id = $1 ORDER BY id",
                session_id,
            )
            return [orjson.loads(row[0]) for row in rows]
        rows = await self._pool.fetch(
            "SELECT message_data FROM floor_messages WHERE session_id = $1 "
            "ORDER BY id DESC LIMIT $2",
            session_id,
            limit,
        )
        return [orjson.loads(row[0]) for row in reversed(rows)]

    async def add(self, session_id: str, items: list[Any]) -> None:
        await self._pool.execute(
            "INSERT INTO floor_messages (session_id, message_data) SELECT $1, i.data "
            "FROM unnest($2::text[]) WITH ORDINALITY AS i(data, n) ORDER BY i.n",
            session_id,
            [orjson.dumps(item).decode() for item in items],
        )

    async def pop(self, session_id: str) -> Any | None:
        data = await self._pool.fetchval(
            "DELETE FROM floor_messages WHERE id = (SELECT id FROM floor_messages "
            "WHERE session_id = $1 ORDER BY id DESC LIMIT 1) RETURNING message_data",
            session_id,
        )
        return None if data is None else orjson.loads(data)

    async def clear(self, session_id: str) -> None:
        await self._pool.execute("DELETE FROM floor_messages WHERE session_id = $1", session_id)

    async def stop(self) -> None:
        await self._pool.close()


async def _no_reset(connection: Any) -> None:
    pass


async def _newest_of_list(client: Any, key: str, limit: int | None) -> list[Any]:
    """The newest ``limit`` items (all with ``None``) of a Redis list of JSON texts: one
    ``LRANGE``."""
    if limit == 0:
        return []
    start = 0 if limit is None else -limit
    return [orjson.loads(data) for data in await client.lrange(key, start, -1)]


class RedisFloor(_FloorStore):
    """redis.asyncio, one list per session, one command (one round trip) per operation, with
    redis-py's default reply parser (hiredis's, which the ``redis`` extra installs, as for
    agentmem's target), or with its pure-Python parser (``backend`` ``redis-pyparser``: the
    floor where hiredis is not installed, reported beside the other)."""

    family = "redis"

    def __init__(self, hiredis: bool = True) -> None:
        self.backend = "redis" if hiredis else "redis-pyparser"
        self._hiredis = hiredis

    async def start(self, env: Env) -> None:
        self._client = _redis_client(env, hiredis=self._hiredis)
        self._prefix = f"{env.tag}:floor-{self.backend}:"

    async def get(self, session_id: str, limit: int | None) -> list[Any]:
        return await _newest_of_list(self._client, self._prefix + session_id, limit)

    async def add(self, session_id: str, items: list[Any]) -> None:
        await self._client.rpush(self._prefix + session_id, *map(orjson.dumps, items))

    async def pop(self, session_id: str) -> Any | None:
        data = await self._client.rpop(self._prefix + session_id)
        return None if data is None else orjson.loads(data)

    async def clear(self, session_id: str) -> None:
        await self._client.delete(self._prefix + session_id)

    async def stop(self) -> None:
        await self._client.aclose()


# --- bounds: agentmem's own statements and scripts, straight through the driver ------------------


class _BoundStore(_FloorStore):
    """A floor that does agentmem's work instead of the bare minimum: items validated and encoded
    by agentmem (role and type columns), written by agentmem's statements or scripts on
    agentmem's schema (session row, item count, expiry, batch id, indexes), as thinly as the
    driver allows (one hop or one round trip per operation, like the floors). The bound runs
    agentmem's own inner layer: what that layer costs is in the bound, not in agentmem/bound.
    agentmem over this bound is what the session layer around it costs; this bound over the
    floor is what the inner layer (statements, schema, validation) and a caller's pool cost."""

    kind = "bound"


class _SQLiteOperationsBound(_BoundStore):
    """The four operations as agentmem's SQLite functions (``agentmem.sql._statements``), each
    run by ``_on`` on the session's connection, however the subclass reaches it."""

    def _load(self) -> None:
        from agentmem._batch import new_batch_id
        from agentmem.items import encode_items
        from agentmem.sql import _statements as ops

        self._ops, self._encode, self._batch_id = ops, encode_items, new_batch_id
        self._sql = ops.sqlite_statements("")

    @abstractmethod
    async def _on(self, session_id: str, fn: Callable[..., _T], *args: Any) -> _T:
        """``fn(connection, statements, session_id, *args)`` on the session's connection."""

    async def get(self, session_id: str, limit: int | None) -> list[Any]:
        rows = await self._on(session_id, self._ops.sqlite_get, limit)
        return [orjson.loads(row) for row in rows]

    async def add(self, session_id: str, items: list[Any]) -> None:
        encoded = self._encode(items)
        await self._on(session_id, self._ops.sqlite_add, encoded, self._batch_id())

    async def pop(self, session_id: str) -> Any | None:
        row = await self._on(session_id, self._ops.sqlite_pop)
        return None if row is None else orjson.loads(row)

    async def clear(self, session_id: str) -> None:
        await self._on(session_id, self._ops.sqlite_clear)


class SQLiteBound(_SQLiteOperationsBound):
    """agentmem's SQLite operations (``agentmem.sql._statements``) on sqlite3 connections with
    agentmem's settings: in memory, a private database per session (as agentmem's in-memory
    sessions have), copied from a migrated one on first use, operations inline after a yield to
    the event loop; on a file, one connection and one hop to one thread per operation."""

    family = "sqlite"

    def __init__(self, on_file: bool) -> None:
        self.backend = "sqlite-file" if on_file else "sqlite-memory"
        self._on_file = on_file

    async def start(self, env: Env) -> None:
        from agentmem.sql import _sqlite_schema

        self._load()
        ops = self._ops
        self._thread = _Hop()
        path = str(env.workdir / "bound.db") if self._on_file else ":memory:"

        def connect() -> sqlite3.Connection:
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            if self._on_file:
                ops.sqlite_settings(conn.cursor())
            conn.execute("PRAGMA foreign_keys=ON")
            _sqlite_schema.sqlite_upgrade(conn)
            return conn

        self._conn = await self._run(connect)
        self._private: dict[str, sqlite3.Connection] = {}

    async def release(self, session: BenchSession) -> None:
        conn = self._private.pop(session._id, None)  # type: ignore[attr-defined]
        if conn is not None:
            conn.close()

    def _db(self, session_id: str) -> sqlite3.Connection:
        if self._on_file:
            return self._conn
        conn = self._private.get(session_id)
        if conn is None:  # on first use, as agentmem opens a session's private database
            conn = sqlite3.connect(":memory:", isolation_level=None)
            conn.execute("PRAGMA foreign_keys=ON")
            self._conn.backup(conn)
            self._private[session_id] = conn
        return conn

    async def _run(self, fn: Callable[..., _T], *args: Any) -> _T:
        if not self._on_file:
            # Each call lets other tasks run first, as agentmem's in-memory calls do: every
            # call is a point where a cancel lands, at most one call per turn of the event
            # loop (tests/reliability/test_faults.py::test_a_cancelled_caller_is_cancelled).
            await asyncio.sleep(0)
            return fn(*args)
        return await self._thread.run(fn, *args)

    async def _on(self, session_id: str, fn: Callable[..., _T], *args: Any) -> _T:
        return await self._run(fn, self._db(session_id), self._sql, session_id, *args)

    async def stop(self) -> None:
        await self._run(self._conn.close)
        self._thread.stop()


async def _pooled(engine: Any, use: Callable[[Any], Any]) -> Any:
    """``use(driver_connection)`` on a connection of ``engine``'s pool: checked out and in
    through SQLAlchemy's async API (two greenlet switches), as a session on a caller's engine
    must; nothing else (no call timeout, no retry). An aiosqlite connection whose transaction
    is over skips the pool's rollback on check-in (one more thread hop), as agentmem does."""
    from sqlalchemy.util import greenlet_spawn

    pooled = await engine.raw_connection()
    driver = pooled.driver_connection
    try:
        return await use(driver)
    finally:
        conn = getattr(driver, "_conn", None)
        if isinstance(conn, sqlite3.Connection) and not conn.in_transaction:
            await greenlet_spawn(pooled._checkin, True)
        else:
            await greenlet_spawn(pooled.close)


class AiosqliteBound(_SQLiteOperationsBound):
    """agentmem's SQLite operations on a connection of an aiosqlite engine's pool, one hop into
    aiosqlite's thread per operation (its queue of callables, as agentmem/sql/_retry.py uses
    it)."""

    backend, family = "sqlalchemy-sqlite", "sqlite"

    async def start(self, env: Env) -> None:
        from agentmem.sql import _sqlite_schema
        from agentmem.sql.sqlalchemy import use_sqlite_settings

        self._load()
        self._engine = _engine(env, False, "bound-aiosqlite.db")
        use_sqlite_settings(self._engine)  # on every pooled connection, as agentmem does
        await self._run(_sqlite_schema.sqlite_upgrade)

    async def _run(self, fn: Callable[..., _T], *args: Any) -> _T:
        def use(driver: Any) -> Any:
            return driver._execute(lambda: fn(driver._conn, *args))

        result: _T = await _pooled(self._engine, use)
        return result

    async def _on(self, session_id: str, fn: Callable[..., _T], *args: Any) -> _T:
        return await self._run(fn, self._sql, session_id, *args)

    async def stop(self) -> None:
        await self._engine.dispose()


class PostgresBound(_BoundStore):
    """agentmem's PostgreSQL statements (one per operation) on its migrated tables, each on a
    connection of an asyncpg engine's pool (the engine a caller hands agentmem)."""

    backend, family = "postgres", "postgres"
    TABLE_PREFIX = "bound_"

    async def start(self, env: Env) -> None:
        from agentmem._batch import new_batch_id
        from agentmem.items import encode_items
        from agentmem.migrate import upgrade
        from agentmem.sql._statements import postgres_statements

        self._engine = _engine(env, True, "")
        await upgrade(self._engine, table_prefix=self.TABLE_PREFIX)
        self._sql = postgres_statements(self.TABLE_PREFIX)
        self._encode, self._batch_id = encode_items, new_batch_id

    async def _rows(self, session_id: str, limit: int | None) -> list[str]:
        """The newest ``limit`` items' JSON texts (all with ``None``), oldest first."""
        sql = self._sql
        if limit is None:
            rows = await _pooled(self._engine, lambda c: c.fetch(sql.select_all, session_id))
            return [row[0] for row in rows]
        rows = await _pooled(self._engine, lambda c: c.fetch(sql.select_newest, session_id, limit))
        return [row[0] for row in reversed(rows)]

    async def get(self, session_id: str, limit: int | None) -> list[Any]:
        sql = self._sql
        if limit is None:
            rows = await _pooled(self._engine, lambda c: c.fetch(sql.select_all, session_id))
            return [orjson.loads(row[0]) for row in rows]
        rows = await _pooled(self._engine, lambda c: c.fetch(sql.select_newest, session_id, limit))
        return [orjson.loads(row[0]) for row in reversed(rows)]

    async def _add(self, session_id: str, encoded: list[Any]) -> None:
        data, roles, types = zip(*encoded, strict=True)
        args = (session_id, data, roles, types, None, None, None, None, self._batch_id())
        await _pooled(self._engine, lambda c: c.execute(self._sql.add, *args))

    async def add(self, session_id: str, items: list[Any]) -> None:
        await self._add(session_id, self._encode(items))

    async def pop(self, session_id: str) -> Any | None:
        data = await _pooled(self._engine, lambda c: c.fetchval(self._sql.pop, session_id, None))
        return None if data is None else orjson.loads(data)

    async def clear(self, session_id: str) -> None:
        await _pooled(self._engine, lambda c: c.execute(self._sql.clear, session_id))

    async def stop(self) -> None:
        await self._engine.dispose()


class RedisBound(_BoundStore):
    """agentmem's Redis add and pop scripts (one EVALSHA each) with the arguments agentmem
    sends, and its read (one LRANGE), on the floor's client."""

    backend, family = "redis", "redis"

    async def start(self, env: Env) -> None:
        from agentmem._batch import new_raw_batch_id
        from agentmem.items import encode_items
        from agentmem.redis import _lifecycle as lua
        from agentmem.redis.client import tagged_key

        self._client = _redis_client(env)
        self._encode, self._batch_id, self._key = encode_items, new_raw_batch_id, tagged_key
        self._session_prefix = f"{env.tag}:bound-session"
        self._messages_prefix = f"{env.tag}:bound-messages"
        self._add = await self._client.script_load(lua.ADD_SOURCE)
        self._pop = await self._client.script_load(lua.POP_SOURCE)
        self._drop = await self._client.script_load(lua.DROP_SOURCE)
        self._inline = lua.inline(self._client)

    def _keys(self, session_id: str) -> list[str]:
        return [
            self._key(self._messages_prefix, session_id),
            self._key(self._session_prefix, session_id),
        ]

    async def get(self, session_id: str, limit: int | None) -> list[Any]:
        key = self._key(self._messages_prefix, session_id)
        return await _newest_of_list(self._client, key, limit)

    async def add(self, session_id: str, items: list[Any]) -> None:
        args: list[Any] = [f"{time.time():.6f}", 0, 0, self._session_prefix, session_id]
        args += ["", "", "", self._batch_id(), "", self._inline]
        args += [item.json.encode() for item in self._encode(items)]
        await self._client.evalsha(self._add, 2, *self._keys(session_id), *args)

    async def pop(self, session_id: str) -> Any | None:
        args = [f"{time.time():.6f}", 0, self._session_prefix, session_id, "", self._inline]
        data = await self._client.evalsha(self._pop, 2, *self._keys(session_id), *args)
        return None if data is None else orjson.loads(data)

    async def clear(self, session_id: str) -> None:
        args = [self._session_prefix, session_id, "", self._inline]
        await self._client.evalsha(self._drop, 2, *self._keys(session_id), *args)

    async def stop(self) -> None:
        await self._client.aclose()


class CachedBound(PostgresBound):
    """agentmem's cache protocol in front of agentmem's PostgreSQL statements on the engine's
    pool: the Lua scripts of ``agentmem.cache.session`` with the arguments ``CachedSession``
    sends, in the same round trips, without its fault handling (no timeouts, no outage
    tracking, no invalidation owed after a failure).

    A write is one script (the write's mark, after the ends the session still owes), then the
    SQL statement; its end is owed, carried by the session's next call, or delivered by a task
    (created with the write, as ``CachedSession`` creates it) when no call comes first. A full
    read is one ``GET`` (pipelined after owed ends); a read with a limit is one script. A miss
    reads SQL and fills the copy. This is the cache that never serves a stale read, as thinly
    as redis-py allows."""

    backend = "cached"
    TABLE_PREFIX = "bound_cached_"

    async def start(self, env: Env) -> None:
        from agentmem.cache import session as cache
        from agentmem.redis.client import tagged_key

        await super().start(env)
        self._cache, self._key = cache, tagged_key
        self._client = _redis_client(env)
        self._prefix = f"{env.tag}:bound-cached"
        self._ttl_ms = 3_600_000  # CachedSession's default ttl
        self._max = cache.DEFAULT_MAX_CACHED_ITEMS
        # Per session: the arguments of the ends it owes (_END's), oldest first; the task that
        # delivers them when no call comes first; its keys.
        self._owed: dict[str, list[list[Any]]] = {}
        self._enders: dict[str, asyncio.Task[None]] = {}
        self._session_keys: dict[str, list[str]] = {}
        scripts = [cache._BEGIN, cache._READ, cache._FILL, cache._END, cache._END_OOM]
        for script in [*scripts, *cache._AFTER_ENDS.values()]:
            await self._client.script_load(script.source)

    def _keys(self, session_id: str) -> list[str]:
        keys = self._session_keys.get(session_id)
        if keys is None:
            base = self._key(self._prefix, session_id)
            keys = self._session_keys[session_id] = [f"{base}:items", f"{base}:state"]
        return keys

    async def _script(self, session_id: str, script: Any, args: list[Any]) -> Any:
        """``script``, after the ends the session owes in the same script when it owes any."""
        keys = self._keys(session_id)
        ends = self._owed.pop(session_id, None)
        if not ends:
            return await self._client.evalsha(script.sha, 2, *keys, *args)
        packed: list[Any] = [len(ends)]
        for end in ends:
            packed += [len(end), *end]
        combined = self._cache._AFTER_ENDS[script]
        return await self._client.evalsha(combined.sha, 2, *keys, *packed, *args)

    async def _whole(self, session_id: str) -> Any:
        """The cached string: one ``GET``, pipelined after the ends the session owes."""
        keys = self._keys(session_id)
        ends = self._owed.pop(session_id, None)
        if not ends:
            return await self._client.get(keys[0])
        pipe = self._client.pipeline(transaction=False)
        for end in ends:
            pipe.evalsha(self._cache._END.sha, 2, *keys, *end)
        pipe.get(keys[0])
        return (await pipe.execute())[-1]

    async def get(self, session_id: str, limit: int | None) -> list[Any]:
        cache = self._cache
        if limit is None:
            whole = await self._whole(session_id)
            if whole is not None and whole[:1] == b"c":
                items: list[Any] = cache._array(whole, skip=1)
                return items
        args = [-1 if limit is None else limit, cache._token(), self._ttl_ms]
        reply = await self._script(session_id, cache._READ, args)
        if reply[0] == 1:
            hit: list[Any] = cache._array(reply[1])
            return hit
        if reply[0] == 0:  # a write in flight: SQL, no fill
            return [orjson.loads(row) for row in await self._rows(session_id, limit)]
        rows = await self._rows(session_id, None if limit is None else max(limit, self._max + 1))
        header = "c" if len(rows) <= self._max else "p"
        joined, ends = cache._joined(rows[-self._max :], start=1)
        fill = [reply[1], self._ttl_ms, header, header + joined, ends]
        await self._client.evalsha(cache._FILL.sha, 2, *self._keys(session_id), *fill)
        if limit is not None:
            rows = rows[-limit:]
        return [orjson.loads(row) for row in rows]

    async def _write(
        self, session_id: str, sql: Callable[[], Any], op: str, payload: list[Any]
    ) -> Any:
        cache = self._cache
        gen = cache._token()
        await self._script(session_id, cache._BEGIN, [gen, cache.WRITE_LEASE_MS])
        result = await sql()
        end = ["1", gen, cache._token(), self._ttl_ms, self._max, op, *payload]
        self._owed.setdefault(session_id, []).append(end)
        ender = self._enders.get(session_id)
        if ender is None or ender.done():
            self._enders[session_id] = asyncio.get_running_loop().create_task(
                self._deliver(session_id)
            )
        return result

    async def _deliver(self, session_id: str) -> None:
        keys = self._keys(session_id)
        for end in self._owed.pop(session_id, []):
            await self._client.evalsha(self._cache._END.sha, 2, *keys, *end)

    async def add(self, session_id: str, items: list[Any]) -> None:
        encoded = self._encode(items)
        payload = list(self._cache._joined([item.json for item in encoded]))
        await self._write(session_id, lambda: self._add(session_id, encoded), "add", payload)

    async def pop(self, session_id: str) -> Any | None:
        pop = super().pop
        return await self._write(session_id, lambda: pop(session_id), "pop", [])

    async def clear(self, session_id: str) -> None:
        clear = super().clear
        await self._write(session_id, lambda: clear(session_id), "clear", [])

    async def release(self, session: BenchSession) -> None:
        session_id: str = session._id  # type: ignore[attr-defined]
        ender = self._enders.pop(session_id, None)
        if ender is not None:
            await ender
        await self._deliver(session_id)
        self._session_keys.pop(session_id, None)

    async def stop(self) -> None:
        await super().stop()
        await self._client.aclose()


class CachedRpushBound(PostgresBound):
    """The thinnest cache in front of agentmem's PostgreSQL statements on the engine's pool: an
    add is one Redis command (the items pushed onto the session's list), then the SQL
    statement; a pop or a clear, the SQL statement, then one Redis command; a read is one
    ``LRANGE``. Not a safe cache (a failed SQL write leaves Redis ahead, a reader may see a
    write before its commit): the lower bound of any cache whose write must reach Redis before
    its SQL commit (bench/RESULTS.md, "The cached mode's writes: one Redis round trip, and why
    not fewer"). Reported beside ``bound/cached``, not judged."""

    backend = "cached-rpush"
    TABLE_PREFIX = "bound_rpush_"

    async def start(self, env: Env) -> None:
        await super().start(env)
        self._client = _redis_client(env)
        self._prefix = f"{env.tag}:bound-rpush:"

    async def get(self, session_id: str, limit: int | None) -> list[Any]:
        return await _newest_of_list(self._client, self._prefix + session_id, limit)

    async def add(self, session_id: str, items: list[Any]) -> None:
        encoded = self._encode(items)
        await self._client.rpush(self._prefix + session_id, *(i.json.encode() for i in encoded))
        await self._add(session_id, encoded)

    async def pop(self, session_id: str) -> Any | None:
        data = await super().pop(session_id)
        await self._client.rpop(self._prefix + session_id)
        return data

    async def clear(self, session_id: str) -> None:
        await super().clear(session_id)
        await self._client.delete(self._prefix + session_id)

    async def stop(self) -> None:
        await super().stop()
        await self._client.aclose()


# --- shared plumbing ---------------------------------------------------------------------------


def _engine(env: Env, on_postgres: bool, sqlite_file: str) -> Any:
    from sqlalchemy.ext.asyncio import create_async_engine

    if on_postgres:
        url = env.postgres_url.replace("postgresql://", "postgresql+asyncpg://", 1)
        return create_async_engine(url, pool_size=POSTGRES_POOL_SIZE, max_overflow=0)
    return create_async_engine(f"sqlite+aiosqlite:///{env.workdir / sqlite_file}")


def _redis_client(env: Env, hiredis: bool = True) -> Any:
    import redis.asyncio as redis
    from redis._parsers import _AsyncRESP2Parser
    from redis.asyncio.connection import DefaultParser

    # A blocking pool: at 200 concurrent sessions load queues instead of failing. The default
    # parser is hiredis's when it is installed (the run's header says whether it is).
    pool = redis.BlockingConnectionPool.from_url(
        env.redis_url,
        max_connections=REDIS_POOL_SIZE,
        parser_class=DefaultParser if hiredis else _AsyncRESP2Parser,
    )
    return redis.Redis(connection_pool=pool)


def all_targets() -> list[Target]:
    """Every target, agentmem's first."""
    return [
        Agentmem("sqlite-memory", "sqlite"),
        Agentmem("sqlite-file", "sqlite"),
        Agentmem("sqlalchemy-sqlite", "sqlite"),
        Agentmem("postgres", "postgres"),
        Agentmem("redis", "redis"),
        Agentmem("cached", "postgres"),
        *(AgentmemEncrypted(backend) for backend in AgentmemEncrypted.INNER_BACKENDS),
        SdkSQLite(on_file=False),
        SdkSQLite(on_file=True),
        SdkSQLAlchemy(on_postgres=False),
        SdkSQLAlchemy(on_postgres=True),
        SdkRedis(),
        SQLiteFloor(on_file=False),
        SQLiteFloor(on_file=True),
        PostgresFloor(),
        RedisFloor(),
        RedisFloor(hiredis=False),
        SQLiteBound(on_file=False),
        SQLiteBound(on_file=True),
        AiosqliteBound(),
        PostgresBound(),
        RedisBound(),
        CachedBound(),
        CachedRpushBound(),
    ]


# For each agentmem backend: the SDK session, the floor and the bound it is compared with. The
# SQLAlchemy provider on SQLite is held to the sqlite3 floor on a file (the same database
# underneath) and to agentmem's statements in aiosqlite's thread (the caller's driver).
COMPARISONS: dict[str, tuple[str, str, str]] = {
    "sqlite-memory": ("sdk/sqlite-memory", "floor/sqlite-memory", "bound/sqlite-memory"),
    "sqlite-file": ("sdk/sqlite-file", "floor/sqlite-file", "bound/sqlite-file"),
    "sqlalchemy-sqlite": ("sdk/sqlalchemy-sqlite", "floor/sqlite-file", "bound/sqlalchemy-sqlite"),
    "postgres": ("sdk/postgres", "floor/postgres", "bound/postgres"),
    "redis": ("sdk/redis", "floor/redis", "bound/redis"),
    "cached": ("sdk/postgres", "floor/postgres", "bound/cached"),
}
