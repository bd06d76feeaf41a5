"""The engines of the SQLAlchemy backend: shared engines built from URLs (one per URL, options
and event loop), the schema readiness of each engine, and agentmem's SQLite connection settings.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from agentmem import _forks
from agentmem.errors import SchemaError
from agentmem.sql import _statements as _sql
from agentmem.sql import migrate


class SchemaCache:
    """Prepares each engine on first use: SQLite connection settings once, then the schema check
    (or upgrade) once per table prefix.

    Preparation runs one engine at a time per event loop: concurrent first calls on an engine
    whose pool has one connection (an in-memory SQLite database) would otherwise interleave
    their transactions on it, and Alembic's migration context is global to the process.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()  # around mutations only, never across an await
        _forks.reset_in_child(self)
        self._ready: weakref.WeakKeyDictionary[Any, set[str]] = weakref.WeakKeyDictionary()
        self._locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
            weakref.WeakKeyDictionary()
        )

    async def ensure(self, engine: AsyncEngine, table_prefix: str, create: bool) -> None:
        with self._lock:
            ready = self._ready.get(engine.sync_engine)
        if ready is not None and table_prefix in ready:
            return
        loop = asyncio.get_running_loop()
        lock = self._locks.setdefault(loop, asyncio.Lock())
        async with lock:
            await self._prepare(engine, table_prefix, create)

    async def _prepare(self, engine: AsyncEngine, table_prefix: str, create: bool) -> None:
        ready = self._ready.get(engine.sync_engine)
        if ready is not None and table_prefix in ready:
            return
        if ready is None:
            if engine.dialect.name == "sqlite":
                await _configure_sqlite_engine(engine)
            with self._lock:
                ready = self._ready.setdefault(engine.sync_engine, set())
        if create:
            await migrate.upgrade(engine, table_prefix=table_prefix)
        else:
            try:
                await migrate.check(engine, table_prefix=table_prefix)
            except migrate.SchemaError as exc:
                raise SchemaError(
                    f"{exc}; or let SQLAlchemySession create them: create_tables=True"
                ) from None
        ready.add(table_prefix)

    def forget(self, engine: AsyncEngine) -> None:
        with self._lock:
            self._ready.pop(engine.sync_engine, None)

    def after_fork(self) -> None:
        self._lock = threading.Lock()


schemas = SchemaCache()


class SharedEngines:
    """Engines built from URLs: one per (URL, options, event loop), shared by every session made
    from that URL in that loop, disposed when the last of those sessions closes.

    Pooled async connections belong to the loop that opened them, so a session used from a new
    loop (a second ``asyncio.run``) gets that loop's engine. Threads (each with its own loop)
    share the registry: a lock guards its mutations. A forked child starts with an empty
    registry and a new lock: it never uses (nor closes) the parent's pooled connections.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()  # around dict mutations only, never across an await
        self._engines: dict[tuple[asyncio.AbstractEventLoop, str, str], list[Any]] = {}
        _forks.reset_in_child(self)

    def acquire(self, url: str, options: dict[str, Any]) -> tuple[Any, AsyncEngine]:
        loop = asyncio.get_running_loop()
        key = (loop, url, repr(sorted(options.items())))
        with self._lock:
            entry = self._engines.get(key)
            if entry is None:
                kwargs = dict(options)
                if url.startswith("sqlite"):
                    # Every operation ends its own transaction: skip the pool's rollback on return.
                    kwargs.setdefault("pool_reset_on_return", None)
                entry = self._engines[key] = [create_async_engine(url, **kwargs), 0]
                stale = [k for k in self._engines if k[0].is_closed()]
                evicted = [self._engines.pop(k)[0] for k in stale]
            else:
                evicted = []
            entry[1] += 1
        for engine in evicted:
            schemas.forget(engine)
            engine.sync_engine.dispose(close=False)
        return key, entry[0]

    def unshare(self, key: Any) -> None:
        """Drop a reference counted twice by one holder (never the last one)."""
        with self._lock:
            self._engines[key][1] -= 1

    async def release(self, key: Any) -> None:
        with self._lock:
            entry = self._engines.get(key)
            if entry is None:
                return
            entry[1] -= 1
            if entry[1] > 0:
                return
            del self._engines[key]
        engine: AsyncEngine = entry[0]
        schemas.forget(engine)
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if key[0] is running:
            await engine.dispose()
        else:  # its loop is gone: drop the pool without touching its connections
            await asyncio.to_thread(engine.sync_engine.dispose, close=False)

    def after_fork(self) -> None:
        """In a forked child: the parent's engines stay referenced (so that no finalizer closes
        the parent's sockets from here) and are never used again."""
        self._lock = threading.Lock()
        _forks.keep(self._engines)
        self._engines = {}


shared_engines = SharedEngines()


async def _configure_sqlite_engine(engine: AsyncEngine) -> None:
    """Apply :func:`_configure_sqlite` to the engine's future connections and, through one of
    its present ones, switch the database file to WAL (a lasting property of the file)."""
    use_sqlite_settings(engine)
    async with engine.connect() as connection:
        raw = await connection.get_raw_connection()
        await connection.run_sync(lambda _: _configure_sqlite(raw.dbapi_connection, None))


def use_sqlite_settings(engine: AsyncEngine) -> None:
    """Give the connections ``engine`` (``sqlite+aiosqlite``) opens from now on the settings of
    agentmem's own SQLite connections: WAL, ``synchronous=NORMAL`` and a 30 s busy timeout."""
    if not event.contains(engine.sync_engine, "connect", _configure_sqlite):
        event.listen(engine.sync_engine, "connect", _configure_sqlite)


def _configure_sqlite(dbapi_connection: Any, _record: Any) -> None:
    """The settings of agentmem's SQLite connections (:func:`_statements.sqlite_settings`)."""
    cursor = dbapi_connection.cursor()
    _sql.sqlite_settings(cursor)
    cursor.close()


async def engine_of(
    engine: AsyncEngine | None, url: str | None, options: dict[str, Any], keys: list[Any]
) -> AsyncEngine:
    """The engine given, or this event loop's shared engine of ``url``, counted once in ``keys``
    (the holder's references, released by :func:`release_engines`)."""
    if engine is not None:
        return engine
    assert url is not None
    return _engine_now(url, options, keys)


def _engine_now(url: str, options: dict[str, Any], keys: list[Any]) -> AsyncEngine:
    """This event loop's shared engine of ``url``, counted once in ``keys``."""
    key, shared = shared_engines.acquire(url, options)
    if key in keys:
        shared_engines.unshare(key)  # already counted for this holder
    else:
        keys.append(key)
    return shared


def loop_engine(
    engine: AsyncEngine | None, url: str | None, options: dict[str, Any], keys: list[Any]
) -> AsyncEngine:
    """The ``engine`` attribute: the engine given, or the running loop's engine of ``url``."""
    if engine is not None:
        return engine
    assert url is not None
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        raise RuntimeError(
            "the engine of a from_url session or manager belongs to an event loop: read "
            "`engine` from async code"
        ) from None
    return _engine_now(url, options, keys)


async def release_engines(keys: list[Any]) -> None:
    taken = list(keys)
    keys.clear()
    for key in taken:
        await shared_engines.release(key)


def server_name(engine: AsyncEngine | None, url: str | None) -> str:
    """``host:port/database`` of an engine, or of the URL it will be built from."""
    parsed = engine.url if engine is not None else make_url(url or "")
    return f"{parsed.host or 'localhost'}:{parsed.port or 5432}/{parsed.database or ''}"
